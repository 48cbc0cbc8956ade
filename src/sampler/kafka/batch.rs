//! Policies on one cluster that tick together share one cluster tick: the first to ask opens a
//! batch for `WINDOW`, those that ask meanwhile join it, and one `Tick` reads all their queues
//! (one OffsetFetch per coordinator for all their groups, one ListOffsets per leader for all their
//! partitions, one Fetch per leader for all their latencies). The controller gives the policies of
//! one cluster one phase, so with one interval they all ask in the same instant.

use super::PreparedKafkaQueue;
use crate::sampler::{QueueReading, Sample};
use std::time::Duration;
use tokio::sync::oneshot;

/// How long a batch waits for the other policies of its cluster: their ticks fire in the same
/// instant, so the policies that reach the sampler within 2 ms (the timer's 1 ms resolution
/// makes it 2-3 ms) share the tick; with very many, those that come later open the next batch.
/// Every Kafka tick takes this much longer (docs/benchmarks.md#kafka).
pub const WINDOW: Duration = Duration::from_millis(2);

/// The queues of the policies that joined, in order, and where each policy's sample goes.
#[derive(Default)]
pub(super) struct Batch {
    pub queues: Vec<PreparedKafkaQueue>,
    /// Each policy's queue count and its sample's way back.
    waiters: Vec<(usize, oneshot::Sender<Sample>)>,
}

impl Batch {
    /// Adds one policy's queues; its sample arrives on the receiver.
    pub fn join(&mut self, queues: &[PreparedKafkaQueue]) -> oneshot::Receiver<Sample> {
        let (sender, receiver) = oneshot::channel();
        let policy = self.waiters.len();
        // A name is unique within its policy only: prefixed within the batch, restored after.
        self.queues.extend(queues.iter().cloned().map(|mut queue| {
            queue.name = format!("{policy}/{}", queue.name);
            queue
        }));
        self.waiters.push((queues.len(), sender));
        receiver
    }

    /// Hands each policy its own readings under their own names. The tick's requests are counted
    /// once, on the first policy's sample, so that summed over the policies they are the
    /// cluster's.
    pub fn deliver(self, sample: Sample) {
        let mut readings = sample.queues.into_iter();
        for (index, (count, sender)) in self.waiters.into_iter().enumerate() {
            let queues = readings.by_ref().take(count).map(unprefixed).collect();
            let _ = sender.send(Sample {
                at: sample.at,
                queues,
                round_trips: if index == 0 { sample.round_trips } else { 0 },
                unreachable: sample.unreachable.clone(),
                memory: None,
                duration: sample.duration,
            });
        }
    }
}

fn unprefixed(mut reading: QueueReading) -> QueueReading {
    if let Some((_, name)) = reading.name.split_once('/') {
        reading.name = name.to_string();
    }
    reading
}

/// A sample whose batch ended without one (its task panicked): every queue failed, saying so.
pub(super) fn lost(queues: &[PreparedKafkaQueue]) -> Sample {
    let why = "the cluster tick ended without a reading".to_string();
    Sample {
        at: jiff::Timestamp::now(),
        queues: queues
            .iter()
            .map(|queue| QueueReading {
                name: queue.name.clone(),
                weight: queue.weight,
                depth: Err(why.clone()),
                latency: None,
                partitions: None,
            })
            .collect(),
        round_trips: 0,
        unreachable: Some(why),
        memory: None,
        duration: Duration::ZERO,
    }
}
