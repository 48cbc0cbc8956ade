//! The timestamp of the oldest record a group still owes, from the bytes a Fetch returned at its
//! committed offset. Batches are walked by their headers (Kafka's v2 record batch: base offset,
//! length, ..., attributes, last offset delta, first and max timestamp); the one holding the
//! offset is decoded for the record's own timestamp. A batch compressed with a codec levee does
//! not carry (lz4, zstd), or cut short by the fetch's byte bound, gives its first timestamp, the
//! oldest in the batch: the latency then errs by at most the batch's spread (the producer's
//! linger), towards older.

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;

/// A v2 batch's header is 61 bytes; the fields levee reads lie within it.
const HEADER: usize = 61;
const LOG_APPEND_TIME: i16 = 1 << 3;
const CONTROL: i16 = 1 << 5;
const CODEC: i16 = 0b111;
/// none, gzip and snappy are decoded; lz4 (3) and zstd (4) are not compiled in.
const DECODED_CODECS: [i16; 3] = [0, 1, 2];

/// One batch header's fields.
#[derive(Debug)]
struct BatchHeader {
    last_offset: i64,
    attributes: i16,
    first_timestamp: i64,
    max_timestamp: i64,
}

fn header(bytes: &[u8]) -> Option<BatchHeader> {
    let i64_at = |at: usize| i64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let i32_at = |at: usize| i32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if bytes.len() < HEADER || bytes[16] != 2 {
        return None;
    }
    Some(BatchHeader {
        last_offset: i64_at(0) + i64::from(i32_at(23)),
        attributes: i16::from_be_bytes([bytes[21], bytes[22]]),
        first_timestamp: i64_at(27),
        max_timestamp: i64_at(35),
    })
}

/// The timestamp (ms since the epoch) of the first data record at or after `offset` in
/// `records`, or `None` when they hold none (the offset is at the log's end, or past the
/// records the fetch returned).
pub fn timestamp_at(records: &Bytes, offset: i64) -> Option<i64> {
    let mut at = 0usize;
    while records.len() - at >= 12 {
        let length = i32::from_be_bytes(records[at + 8..at + 12].try_into().expect("4 bytes"));
        let end = at + 12 + usize::try_from(length).ok()?;
        let batch = records.slice(at..end.min(records.len()));
        let header = header(&batch)?;
        at = end;
        if header.last_offset < offset || header.attributes & CONTROL != 0 {
            continue;
        }
        if header.attributes & LOG_APPEND_TIME != 0 {
            // Every record of the batch was stamped by the broker with the same time.
            return Some(header.max_timestamp);
        }
        let whole = end <= records.len();
        if whole && DECODED_CODECS.contains(&(header.attributes & CODEC)) {
            let mut buffer = batch.clone();
            if let Ok(set) = RecordBatchDecoder::decode(&mut buffer) {
                if let Some(record) = set.records.iter().find(|r| r.offset >= offset) {
                    return Some(record.timestamp);
                }
                continue;
            }
        }
        return Some(header.first_timestamp);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn record(offset: i64, timestamp: i64) -> Record {
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset,
            // The encoder keeps records in one batch while offset − sequence stays the same.
            sequence: i32::try_from(offset).unwrap(),
            timestamp,
            key: None,
            value: Some(Bytes::from_static(b"job")),
            headers: Default::default(),
        }
    }

    fn batch(records: &[Record], compression: Compression) -> Bytes {
        let mut buffer = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression,
        };
        RecordBatchEncoder::encode(&mut buffer, records, &options).unwrap();
        buffer.freeze()
    }

    #[test]
    fn the_record_at_the_offset_gives_its_own_timestamp() {
        let records = [record(10, 1_000), record(11, 1_500), record(12, 2_000)];
        for compression in [Compression::None, Compression::Gzip, Compression::Snappy] {
            let bytes = batch(&records, compression);
            assert_eq!(timestamp_at(&bytes, 11), Some(1_500), "{compression:?}");
            assert_eq!(timestamp_at(&bytes, 10), Some(1_000));
            assert_eq!(timestamp_at(&bytes, 13), None, "past the last record");
        }
    }

    #[test]
    fn later_batches_are_found_and_a_truncated_one_gives_its_first_timestamp() {
        let mut bytes = BytesMut::new();
        bytes.extend_from_slice(&batch(&[record(0, 100), record(1, 200)], Compression::None));
        let second = batch(&[record(2, 300), record(3, 400)], Compression::None);
        bytes.extend_from_slice(&second);
        let bytes = bytes.freeze();
        assert_eq!(timestamp_at(&bytes, 3), Some(400));
        let cut = bytes.slice(..bytes.len() - 5);
        assert_eq!(timestamp_at(&cut, 3), Some(300), "the batch's first timestamp");
        assert_eq!(timestamp_at(&bytes.slice(..20), 0), None, "not even a header");
    }
}
