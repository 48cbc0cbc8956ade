//! The names of the labels, annotations and conditions levee writes or reads on other objects:
//! the marks on a producer, the consent and hosts on a Secret, and the Kubernetes labels it
//! relies on. One place, below every layer that uses them.

/// Annotation with the circuit's state (`Closed`, `HalfOpen`, `Open`).
pub const ANNOTATION_STATE: &str = "levee.dev/circuit-state";
/// Annotation `"true"` / `"false"`: whether this producer should accept work.
pub const ANNOTATION_ACCEPTING: &str = "levee.dev/accepting";
/// Annotation naming the policy that sets the other two.
pub const ANNOTATION_POLICY: &str = "levee.dev/policy";
/// The pod condition a readiness gate waits for.
pub const CONDITION_ACCEPTING: &str = "levee.dev/accepting";
/// Label naming the policy that marked a producer; a released producer loses it.
pub const LABEL_POLICY: &str = "levee.dev/policy";
/// The policy annotation whose new value forces the circuit Closed.
pub const ANNOTATION_RESET: &str = "levee.dev/reset";

/// The label a Secret carries to let levee read it, for every backend.
pub const LABEL_SECRET_CONSENT: &str = "levee.dev/secret";
/// The consent label from before there were other backends than Redis; still honoured.
pub const LABEL_SECRET_CONSENT_LEGACY: &str = "levee.dev/redis-secret";

/// The annotation with which a credentials Secret names the only hosts its password may be sent
/// to: comma-separated `host`, `host:port` or `*.domain` entries. Without it, any policy of the
/// Secret's namespace may send it wherever its URL points.
pub const ANNOTATION_SECRET_HOSTS: &str = "levee.dev/secret-hosts";
/// The hosts annotation's name from before there were other backends; still honoured.
pub const ANNOTATION_SECRET_HOSTS_LEGACY: &str = "levee.dev/redis-hosts";

/// The label the Deployment controller puts on a ReplicaSet's pods, the end of the ReplicaSet's
/// name.
pub const LABEL_POD_TEMPLATE_HASH: &str = "pod-template-hash";
