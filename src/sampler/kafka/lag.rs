//! A queue's depth from its partitions' offsets, as Kafka's own `kafka-consumer-groups.sh
//! --describe` counts it: per partition, the high watermark − the group's committed offset; a
//! partition the group never committed to counts by the queue's `offsetReset` (latest: nothing is
//! owed, as a consumer starting there would owe nothing; earliest: every record the log still
//! keeps, log end − log start, never those retention deleted).

use crate::api::OffsetReset;

/// What the brokers said about one partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// The high watermark (ListOffsets latest, read uncommitted).
    pub end: i64,
    /// The group's committed offset; `None` when it has committed none.
    pub committed: Option<i64>,
    /// The log start offset, read only for `earliest` partitions with no commit.
    pub start: Option<i64>,
}

impl PartitionOffsets {
    /// What the group owes on this partition.
    pub fn lag(&self, reset: OffsetReset) -> u64 {
        let from = match (self.committed, reset) {
            (Some(committed), _) => committed,
            (None, OffsetReset::Latest) => self.end,
            (None, OffsetReset::Earliest) => self.start.unwrap_or(self.end),
        };
        u64::try_from(self.end.saturating_sub(from)).unwrap_or(0)
    }

    /// The offset of the oldest record owed, when one is.
    pub fn first_owed(&self, reset: OffsetReset) -> Option<i64> {
        (self.lag(reset) > 0).then(|| self.end - i64::try_from(self.lag(reset)).unwrap_or(0))
    }
}

/// A committed offset as OffsetFetch writes it (-1: none).
pub fn committed(offset: i64) -> Option<i64> {
    (offset >= 0).then_some(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_watermark_less_the_commit_and_never_negative() {
        let p = PartitionOffsets {
            end: 100,
            committed: Some(30),
            start: None,
        };
        assert_eq!(p.lag(OffsetReset::Latest), 70);
        assert_eq!(p.first_owed(OffsetReset::Latest), Some(30));
        let ahead = PartitionOffsets {
            end: 10,
            committed: Some(12),
            start: None,
        };
        assert_eq!(ahead.lag(OffsetReset::Earliest), 0);
        assert_eq!(ahead.first_owed(OffsetReset::Earliest), None);
    }

    #[test]
    fn a_partition_never_committed_counts_by_the_reset() {
        let p = PartitionOffsets {
            end: 100,
            committed: committed(-1),
            start: Some(40),
        };
        assert_eq!(p.lag(OffsetReset::Latest), 0);
        assert_eq!(p.lag(OffsetReset::Earliest), 60, "never what retention deleted");
        assert_eq!(p.first_owed(OffsetReset::Earliest), Some(40));
    }
}
