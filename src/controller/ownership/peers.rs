//! Only a policy's owner samples it (`--peer-url`, with either ownership): every
//! `--peer-sync-interval` each replica asks each live peer for the values of the policies that
//! peer owns (`GET /peer/values` on its metrics API port, `crate::values::peer_wire`) and
//! serves them as its own (only those: what a peer sends for a policy it does not own, as this
//! replica sees the ring or the leader Lease, is dropped), so the external metrics API, the KEDA external scaler and `/metrics`
//! answer for every policy on every replica while Redis is sampled once per policy per tick.
//!
//! The peer is known by its Lease (its ring Lease, or the leader Lease it holds): its URL, and the SHA-256 of its serving certificate,
//! the one certificate accepted (`crate::serving::pinned`). This replica presents the token in
//! `--peer-token-file` (a projected ServiceAccount token of audience `levee-peers`, which the
//! kubelet renews and the API server itself refuses), re-read at each round; the peer reviews
//! it and checks `get` on `/peer/values`. An answer is bounded in bytes, time and count.
//!
//! A replica that has no fresh values from a policy's owner while that owner does not answer
//! (killed, cut off, refusing this replica) samples the policy itself, as before peers
//! (`policy_task`): the metrics never stop while the owner is unreachable, at the cost of that
//! Redis load for that while. An owner that answers but is late with a policy (a busy start) is
//! left to it: standing in for it would add every replica's load to what made it late.

use crate::controller::Context;
use crate::controller::ownership::advert::{PeerAddress, PeerSettings, Peers};
use crate::controller::ownership::ring;
use crate::controller::ownership::shards::ShardView;
use crate::serving::pinned;
use crate::values::peer_wire::{self, PeerValues, Received};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The most bytes one peer's answer may hold: 10,000 policies of 10 queues are about 5 MB
/// (the first answer holds them all; the next, what was published since).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// The longest token file read (a ServiceAccount token is about 1 KiB).
const MAX_TOKEN_BYTES: u64 = 4096;

/// When each peer last answered this replica's round with values taken: the standby rule stands
/// in only for an owner that does not answer.
#[derive(Debug, Default)]
pub struct PeerAnswers(std::sync::Mutex<HashMap<String, Instant>>);

impl PeerAnswers {
    pub(in crate::controller) fn answered(&self, identity: &str, at: Instant) {
        let mut answers = self.0.lock().expect("peer answers lock");
        match answers.get_mut(identity) {
            Some(last) => *last = (*last).max(at),
            None => {
                answers.insert(identity.to_string(), at);
            }
        }
    }

    /// Whether `identity` answered at `since` or later.
    pub fn answered_since(&self, identity: &str, since: Instant) -> bool {
        let answers = self.0.lock().expect("peer answers lock");
        answers.get(identity).is_some_and(|at| *at >= since)
    }

    /// Whether any peer answered at `since` or later (a follower's one peer is the leader).
    pub fn any_answered_since(&self, since: Instant) -> bool {
        let answers = self.0.lock().expect("peer answers lock");
        answers.values().any(|at| *at >= since)
    }

    /// Forgets the peers no longer in `current`.
    fn keep_only(&self, current: &[(String, PeerAddress)]) {
        let mut answers = self.0.lock().expect("peer answers lock");
        answers.retain(|identity, _| current.iter().any(|(peer, _)| peer == identity));
    }
}

/// Where this replica learns who its peers are.
pub enum PeerSource {
    Shards(watch::Receiver<ShardView>),
    Leader(watch::Receiver<Peers>),
}

impl PeerSource {
    fn current(&self) -> Peers {
        match self {
            Self::Shards(view) => view.borrow().peers.clone(),
            Self::Leader(peers) => peers.borrow().clone(),
        }
    }

    /// Whether `peer` owns the policy at `key` (`crate::controller::ring_key`) as this replica sees it now:
    /// under shards the replica that wins it in the ring, under a leader the leader.
    fn owns(&self, peer: &str, key: &str) -> bool {
        match self {
            Self::Shards(view) => ring::owner(key, &view.borrow().members) == Some(peer),
            Self::Leader(leader) => leader.borrow().contains_key(peer),
        }
    }
}

/// What `peer` sent, less the policies it does not own: a replica that answers for a policy it
/// does not act on (a ring seen late, a replica serving stale values, or lying) changes no
/// figure here; the owner's own answer does.
fn from_owner(source: &PeerSource, peer: &str, mut received: Received) -> Received {
    let owned =
        |namespace: &str, policy: &str| source.owns(peer, &crate::controller::ring_key(namespace, policy));
    received
        .values
        .retain(|values| owned(&values.namespace, &values.policy));
    received
        .confirmed
        .retain(|confirmed| owned(&confirmed.namespace, &confirmed.policy));
    received
}

/// Asks the peers for their values every `settings.sync_every`, until dropped.
pub async fn sync(context: Arc<Context>, source: PeerSource, settings: PeerSettings) {
    let mut ticker = tokio::time::interval(settings.sync_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Time for one round, past which a peer counts as unreachable.
    let timeout = settings.sync_every.max(Duration::from_secs(2));
    let mut token_problem_logged = false;
    // Per peer: its process and the last of its publications taken.
    let mut seen: HashMap<String, (u64, u64)> = HashMap::new();
    loop {
        ticker.tick().await;
        let peers: Vec<(String, PeerAddress)> = source.current().into_iter().collect();
        if peers.is_empty() {
            continue;
        }
        let token = match read_token(&settings.token_file) {
            Ok(token) => {
                token_problem_logged = false;
                token
            }
            Err(error) => {
                if !token_problem_logged {
                    tracing::warn!(%error, "cannot ask the peers for their values; sampling every policy here");
                    token_problem_logged = true;
                }
                continue;
            }
        };
        let rounds = peers.iter().map(|(identity, address)| {
            let since = seen.get(identity).copied();
            fetch(&context, &source, identity, address, &token, since, timeout)
        });
        let results = futures::future::join_all(rounds).await;
        for ((identity, _), result) in peers.iter().zip(results) {
            if let Some(position) = result {
                seen.insert(identity.clone(), position);
            }
        }
        seen.retain(|identity, _| peers.iter().any(|(peer, _)| peer == identity));
        context.owners.peer_answers.keep_only(&peers);
    }
}

/// The token in `path` (a small local file: read in place).
fn read_token(path: &std::path::Path) -> Result<String, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("--peer-token-file {}: {e}", path.display()))?
        .len();
    if size > MAX_TOKEN_BYTES {
        return Err(format!(
            "--peer-token-file {} holds {size} bytes, over {MAX_TOKEN_BYTES}: give it a ServiceAccount token",
            path.display()
        ));
    }
    let token =
        std::fs::read_to_string(path).map_err(|e| format!("--peer-token-file {}: {e}", path.display()))?;
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(format!("--peer-token-file {} is empty", path.display()));
    }
    Ok(token)
}

/// One round with one peer, asking for what it published since `since` (its epoch and last
/// publication seen): its values taken for the policies this replica runs and does not own, and
/// that peer does.
/// Returns where the peer's publications now stand, when it answered.
async fn fetch(
    context: &Context,
    source: &PeerSource,
    identity: &str,
    address: &PeerAddress,
    token: &str,
    since: Option<(u64, u64)>,
    timeout: Duration,
) -> Option<(u64, u64)> {
    let asked = Instant::now();
    let url = match peer_url(&address.url, since) {
        Ok(url) => url,
        Err(error) => return count(context, identity, "invalid", &error),
    };
    let answer = match tokio::time::timeout(
        timeout,
        pinned::get(&url, &address.fingerprint, token, MAX_ANSWER_BYTES),
    )
    .await
    {
        Ok(Ok(answer)) => answer,
        Ok(Err(error)) => return count(context, identity, "unreachable", &error),
        Err(_) => {
            return count(
                context,
                identity,
                "unreachable",
                &format!("no answer within {timeout:?}"),
            );
        }
    };
    if answer.status != 200 {
        let said = String::from_utf8_lossy(&answer.body[..answer.body.len().min(512)]).into_owned();
        return count(
            context,
            identity,
            "refused",
            &format!("HTTP {}: {said}", answer.status),
        );
    }
    let answer = match serde_json::from_slice::<PeerValues>(&answer.body) {
        Ok(answer) => answer,
        Err(error) => return count(context, identity, "invalid", &error.to_string()),
    };
    let (epoch, upto) = (answer.epoch, answer.upto);
    let received = match peer_wire::decode(answer, asked) {
        Ok(received) => received,
        Err(error) => return count(context, identity, "invalid", &error),
    };
    let whole = context
        .policies
        .tasks
        .take_from_peers(context, from_owner(source, identity, received));
    context.owners.peer_answers.answered(identity, asked);
    count(context, identity, "ok", "");
    // A confirmation of values this replica does not hold: the whole answer next time.
    Some((epoch, if whole { upto } else { 0 }))
}

/// The peer path on `base`'s authority, asking for what was published since `since`.
fn peer_url(base: &http::Uri, since: Option<(u64, u64)>) -> Result<http::Uri, String> {
    let authority = base.authority().ok_or("no host")?;
    let query = since.map_or(String::new(), |(epoch, upto)| {
        format!("?epoch={epoch}&since={upto}")
    });
    format!(
        "https://{authority}{}{query}",
        crate::metrics_api::routes::PEER_PATH
    )
    .parse()
    .map_err(|e: http::uri::InvalidUri| e.to_string())
}

/// Counts a round's result (and logs a failure); `None`, for a round without an answer to take.
fn count(context: &Context, identity: &str, result: &str, error: &str) -> Option<(u64, u64)> {
    context
        .published
        .metrics
        .peer_fetches
        .with_label_values(&[identity, result])
        .inc();
    if result != "ok" {
        tracing::debug!(peer = %identity, result, %error, "asking a peer for its values failed");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::peer_wire::Confirmed;
    use crate::values::{PolicyValues, Source};
    use std::collections::BTreeMap;

    fn values(policy: &str, peer: &str) -> PolicyValues {
        PolicyValues {
            namespace: "jobs".into(),
            policy: policy.into(),
            pending: 42,
            queues: Vec::new(),
            latency: None,
            forecast: None,
            sampled_at: jiff::Timestamp::UNIX_EPOCH,
            sampled: Instant::now(),
            failed: false,
            interval: Duration::from_secs(1),
            circuit: None,
            memory: None,
            source: Source::Peer(peer.into()),
            published: 1,
            changed: 1,
        }
    }

    fn confirmed(policy: &str, peer: &str) -> Confirmed {
        Confirmed {
            namespace: "jobs".into(),
            policy: policy.into(),
            changed: 1,
            sampled_at: jiff::Timestamp::UNIX_EPOCH,
            sampled: Instant::now(),
            source: Source::Peer(peer.into()),
        }
    }

    fn policies(received: &Received) -> (Vec<&str>, Vec<&str>) {
        (
            received.values.iter().map(|v| v.policy.as_str()).collect(),
            received.confirmed.iter().map(|c| c.policy.as_str()).collect(),
        )
    }

    /// Issue 40: a replica took a policy's values from whichever peer sent them. Under shards,
    /// only the ring's owner of each policy is taken.
    #[test]
    fn under_shards_a_policys_values_are_taken_from_its_owner_only() {
        let members: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let names: Vec<String> = (0..12).map(|n| format!("p{n}")).collect();
        let owner = |policy: &str| {
            ring::owner(&format!("jobs/{policy}"), &members)
                .unwrap()
                .to_string()
        };
        let of_b: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|p| owner(p) == "b")
            .collect();
        assert!(!of_b.is_empty() && of_b.len() < names.len(), "{of_b:?}");
        let view = ShardView {
            members: members.clone(),
            acting_until: None,
            peers: BTreeMap::new(),
            run: 1,
        };
        let source = PeerSource::Shards(watch::channel(view).1);
        let sent = Received {
            values: names.iter().map(|p| values(p, "b")).collect(),
            confirmed: names.iter().map(|p| confirmed(p, "b")).collect(),
        };
        let taken = from_owner(&source, "b", sent);
        assert_eq!(policies(&taken), (of_b.clone(), of_b));
    }

    /// Under a leader, only the leader's values are taken (an old leader's answer, late, is not).
    #[test]
    fn under_a_leader_only_the_leaders_values_are_taken() {
        let address = PeerAddress {
            url: "https://10.0.0.1:6443".parse().unwrap(),
            fingerprint: "0".repeat(64),
        };
        let leader = Peers::from([("new".to_string(), address)]);
        let source = PeerSource::Leader(watch::channel(leader).1);
        let sent = || Received {
            values: vec![values("p0", "x")],
            confirmed: vec![confirmed("p1", "x")],
        };
        assert_eq!(
            policies(&from_owner(&source, "new", sent())),
            (vec!["p0"], vec!["p1"])
        );
        assert_eq!(policies(&from_owner(&source, "old", sent())), (vec![], vec![]));
    }

    #[test]
    fn the_peer_path_goes_on_the_peers_authority() {
        let base = "https://10.1.2.3:6443/anything".parse().unwrap();
        assert_eq!(
            peer_url(&base, None).unwrap().to_string(),
            "https://10.1.2.3:6443/peer/values"
        );
        assert_eq!(
            peer_url(&base, Some((7, 40))).unwrap().to_string(),
            "https://10.1.2.3:6443/peer/values?epoch=7&since=40"
        );
    }
}
