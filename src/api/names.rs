//! Which names Kubernetes accepts, checked before a name is looked up, reviewed, cached or
//! written: a namespace and a policy are DNS labels (RFC 1123: at most 63 lower-case letters,
//! digits and '-', starting and ending with a letter or digit); a queue name may also hold '.'
//! (a discovered queue is `<entry>.<queue>`) and '_' and ':' (a library's queue name), up to 253.

/// The longest queue name levee keeps: a discovered name longer than this is refused.
pub const MAX_QUEUE_NAME: usize = 253;

/// `Ok` when `text` is a DNS label; else why not, naming `what`.
pub fn check_dns_label(what: &str, text: &str) -> Result<(), String> {
    if text.is_empty() || text.len() > 63 {
        return Err(format!("{what} must be 1 to 63 characters, not {}", text.len()));
    }
    let bytes = text.as_bytes();
    let inner = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.iter().all(inner) || !edge(&bytes[0]) || !edge(&bytes[bytes.len() - 1]) {
        return Err(format!(
            "{what} {:?} is not a DNS label (lower-case letters, digits and '-', starting and ending with a letter or digit)",
            text.escape_debug().to_string()
        ));
    }
    Ok(())
}

/// `Ok` when `text` can be an external metric's name (levee's `levee_pending`, an adapter's
/// `s0-redis-emails`): 1 to 253 letters, digits and `-._:`; else why not.
pub fn check_metric_name(text: &str) -> Result<(), String> {
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || b"-._:".contains(b);
    if text.is_empty() || text.len() > 253 || !text.as_bytes().iter().all(allowed) {
        return Err(format!(
            "the metric name must be 1 to 253 letters, digits and '-._:' (got {} bytes)",
            text.len()
        ));
    }
    Ok(())
}

/// `Ok` when `text` can name a queue in status, metrics and the scaler; else why not.
pub fn check_queue_name(text: &str) -> Result<(), String> {
    if text.is_empty() || text.len() > MAX_QUEUE_NAME {
        return Err(format!(
            "queue name must be 1 to {MAX_QUEUE_NAME} characters, not {}",
            text.len()
        ));
    }
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || b"-._:".contains(b);
    if !text.as_bytes().iter().all(allowed) {
        return Err(format!(
            "queue name {:?} holds characters other than letters, digits and '-._:'",
            text.escape_debug().to_string()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_checked_as_kubernetes_does() {
        for good in ["jobs", "a", "team-7", &"x".repeat(63)] {
            assert_eq!(check_dns_label("namespace", good), Ok(()), "{good}");
        }
        for bad in ["", "Jobs", "-a", "a-", "a.b", "a_b", &"x".repeat(64), "ä"] {
            assert!(check_dns_label("namespace", bad).is_err(), "{bad}");
        }
        assert!(
            check_dns_label("namespace", "A")
                .unwrap_err()
                .starts_with("namespace \"A\" is not a DNS label")
        );
    }

    #[test]
    fn metric_names_are_what_adapters_use() {
        for good in ["levee_pending", "s0-redis-emails", "a.b:c"] {
            assert_eq!(check_metric_name(good), Ok(()), "{good}");
        }
        for bad in ["", "a b", "a/b", &"m".repeat(254)] {
            assert!(check_metric_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn queue_names_may_hold_what_discovery_makes() {
        for good in ["events", "sk.billing", "bull.mail-eu", "rq:high", "a_b"] {
            assert_eq!(check_queue_name(good), Ok(()), "{good}");
        }
        for bad in ["", "a b", "a\nb", "a/b", "é", &"q".repeat(254)] {
            assert!(check_queue_name(bad).is_err(), "{bad}");
        }
    }
}
