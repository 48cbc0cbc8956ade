//! What a policy's status may hold at most. A status that grew past what the API server stores
//! (etcd takes about 1.5 MiB an object; a condition message at most 32 KiB) would fail to write,
//! and producers follow only a *saved* decision: levee would fail open. So every message is cut
//! to a length, at most `MAX_STATUS_QUEUES` queues are listed (all are sampled; the rest are
//! counted in `queuesOmitted`), and `decision_only` is what is written when even that is refused.

use super::BackpressurePolicyStatus;

/// Queues listed in status at most; a policy may sample 64 named and 10,000 discovered ones.
pub const MAX_STATUS_QUEUES: usize = 500;
/// Characters kept of a condition's or discovery's message.
pub const MAX_MESSAGE_CHARS: usize = 1024;
/// Characters kept of a queue's `error` and `latencyError`.
pub const MAX_QUEUE_ERROR_CHARS: usize = 256;

/// `text` cut to `max` characters, ending in "…" when cut.
fn cut(text: &mut String, max: usize) {
    if let Some((at, _)) = text.char_indices().nth(max.saturating_sub(1)) {
        text.truncate(at);
        text.push('…');
    }
}

impl BackpressurePolicyStatus {
    /// The status within the bounds above: at most 500 queues (name ≤ 253, errors ≤ 256
    /// characters each: ~400 KB at worst), messages ≤ 1,024 characters.
    pub fn bounded(mut self) -> Self {
        let omitted = self.queues.len().saturating_sub(MAX_STATUS_QUEUES);
        self.queues.truncate(MAX_STATUS_QUEUES);
        self.queues_omitted = (omitted > 0).then_some(omitted as u64);
        for queue in &mut self.queues {
            for error in [&mut queue.error, &mut queue.latency_error].into_iter().flatten() {
                cut(error, MAX_QUEUE_ERROR_CHARS);
            }
        }
        for condition in &mut self.conditions {
            cut(&mut condition.message, MAX_MESSAGE_CHARS);
        }
        if let Some(message) = self.discovery.as_mut().and_then(|d| d.message.as_mut()) {
            cut(message, MAX_MESSAGE_CHARS);
        }
        if let Some(memory) = self.memory.as_mut() {
            for text in [&mut memory.error, &mut memory.eviction_policy, &mut memory.node]
                .into_iter()
                .flatten()
            {
                cut(text, MAX_MESSAGE_CHARS);
            }
        }
        self
    }

    /// The decision alone (state, level, their times and counts, conditions): what is written
    /// when the API server refuses the whole status, so producers still follow the circuit.
    pub fn decision_only(&self) -> Self {
        Self {
            queues: Vec::new(),
            queues_omitted: None,
            discovery: None,
            forecast: None,
            memory: None,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::QueueStatus;
    use crate::api::status::{ConditionValue, condition};

    fn queue(i: usize, error: Option<String>) -> QueueStatus {
        QueueStatus {
            name: format!("q{i}"),
            depth: error.is_none().then_some(i as u64),
            error,
            latency_seconds: None,
            latency_error: None,
            partitions: None,
            max_partition_lag: None,
        }
    }

    #[test]
    fn a_status_keeps_500_queues_and_short_messages() {
        let mut status = BackpressurePolicyStatus {
            queues: (0..10_000).map(|i| queue(i, Some("é".repeat(100_000)))).collect(),
            ..Default::default()
        };
        let now = jiff::Timestamp::now();
        status.set_condition(
            condition::READY,
            ConditionValue::new(false, "QueueUnreadable", &"x".repeat(1 << 20), now),
        );
        let bounded = status.bounded();
        assert_eq!(bounded.queues.len(), MAX_STATUS_QUEUES);
        assert_eq!(bounded.queues_omitted, Some(9_500));
        assert_eq!(bounded.queues[0].name, "q0", "the first ones, in order");
        let error = bounded.queues[0].error.as_deref().unwrap();
        assert_eq!(error.chars().count(), MAX_QUEUE_ERROR_CHARS);
        assert!(error.ends_with('…'));
        let ready = bounded.condition(condition::READY).unwrap();
        assert_eq!(ready.message.chars().count(), MAX_MESSAGE_CHARS);
        let bytes = serde_json::to_vec(&bounded).unwrap().len();
        assert!(bytes < 1024 * 1024, "well under what etcd stores: {bytes} bytes");
    }

    #[test]
    fn a_small_status_is_unchanged_and_the_decision_keeps_the_state() {
        let status = BackpressurePolicyStatus {
            state: Some(crate::circuit::State::Open),
            transitions: 3,
            queues: vec![queue(1, None), queue(2, Some("short".into()))],
            ..Default::default()
        };
        assert_eq!(status.clone().bounded(), status);
        let decision = status.decision_only();
        assert_eq!((decision.state, decision.transitions), (status.state, 3));
        assert!(decision.queues.is_empty());
    }
}
