//! What to tell a person when levee cannot watch its BackpressurePolicies: the common causes (the
//! CRD is not installed, RBAC is missing) in words that say what to change.

use kube::runtime::watcher;

/// The message for a failed watch of `backpressurepolicies.levee.dev`.
pub fn describe(error: &watcher::Error) -> String {
    let status = match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => Some(status.as_ref()),
        watcher::Error::WatchError(status) => Some(status.as_ref()),
        _ => None,
    };
    match status {
        Some(status) if status.code == 404 => "the CRD backpressurepolicies.levee.dev is not installed: \
             kubectl apply --server-side -f crds/ (helm install does it)"
            .to_string(),
        Some(status) if status.code == 403 => format!(
            "levee's ServiceAccount may not list and watch backpressurepolicies.levee.dev: apply the \
             chart's RBAC (charts/levee/templates/rbac.yaml): {}",
            status.message
        ),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn listing(code: u16, message: &str) -> watcher::Error {
        let status = Status::failure(message, "Failure").with_code(code).boxed();
        watcher::Error::InitialListFailed(kube::Error::Api(status))
    }

    #[test]
    fn a_missing_crd_says_how_to_install_it() {
        let message = describe(&listing(404, "404 page not found"));
        assert!(
            message.contains("CRD backpressurepolicies.levee.dev is not installed"),
            "{message}"
        );
        assert!(
            message.contains("kubectl apply --server-side -f crds/"),
            "{message}"
        );
    }

    #[test]
    fn missing_rbac_points_at_the_charts_rbac_and_keeps_the_servers_words() {
        let message = describe(&listing(403, "backpressurepolicies.levee.dev is forbidden"));
        assert!(message.contains("charts/levee/templates/rbac.yaml"), "{message}");
        assert!(
            message.ends_with("backpressurepolicies.levee.dev is forbidden"),
            "{message}"
        );
    }

    #[test]
    fn other_errors_are_passed_on() {
        let message = describe(&listing(500, "etcdserver: request timed out"));
        assert!(message.contains("etcdserver: request timed out"), "{message}");
        assert!(!message.contains("CRD"), "{message}");
    }
}
