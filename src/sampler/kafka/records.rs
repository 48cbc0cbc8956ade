//! The timestamp of the oldest record a group still owes, from the bytes a Fetch returned at its
//! committed offset. Batches are walked by their headers (Kafka's v2 record batch: base offset,
//! length, ..., attributes, last offset delta, first and max timestamp, record count); the one
//! holding the offset is walked record by record for that record's own timestamp, reading only
//! each record's length and its timestamp and offset deltas (nothing is allocated per record).
//!
//! Every byte is the broker's, so every count is checked against the bytes present before it is
//! used: a record count above what the batch's bytes could hold, a record length past its batch,
//! is a malformed batch. A compressed batch is inflated to at most `MAX_INFLATED_BYTES`
//! (`inflate.rs`). A batch levee does not walk (over that bound, cut short by the fetch's byte
//! bound, malformed, or compressed with lz4 or zstd, which levee does not carry) gives its first
//! timestamp, the oldest in the batch: the latency then errs by at most the batch's spread (the
//! producer's linger), towards older.

use super::inflate;
use bytes::Bytes;

/// A v2 batch's header is 61 bytes; the fields levee reads lie within it.
const HEADER: usize = 61;
const LOG_APPEND_TIME: i16 = 1 << 3;
const CONTROL: i16 = 1 << 5;
const CODEC: i16 = 0b111;
const GZIP: i16 = 1;
const SNAPPY: i16 = 2;
/// The smallest a v2 record can be: its length, attributes, timestamp delta, offset delta, key
/// length, value length and header count, one byte each.
const MIN_RECORD_BYTES: usize = 7;
/// The most a compressed batch is inflated to. A latency fetch asks 64 KiB of each partition
/// (`FETCH_PARTITION_BYTES`); 1 MiB is the producer's default largest request, and 16 times the
/// bytes asked, more than job payloads compress by. The fetch's partitions are walked one after
/// the other, so this is also what one tick's latency reads hold inflated at once.
pub const MAX_INFLATED_BYTES: usize = 1 << 20;

/// One batch header's fields.
#[derive(Debug)]
struct BatchHeader {
    base_offset: i64,
    last_offset: i64,
    attributes: i16,
    first_timestamp: i64,
    max_timestamp: i64,
    record_count: i32,
}

fn header(bytes: &[u8]) -> Option<BatchHeader> {
    let i64_at = |at: usize| i64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let i32_at = |at: usize| i32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if bytes.len() < HEADER || bytes[16] != 2 {
        return None;
    }
    Some(BatchHeader {
        base_offset: i64_at(0),
        last_offset: i64_at(0).saturating_add(i64::from(i32_at(23))),
        attributes: i16::from_be_bytes([bytes[21], bytes[22]]),
        first_timestamp: i64_at(27),
        max_timestamp: i64_at(35),
        record_count: i32_at(57),
    })
}

/// The timestamp (ms since the epoch) of the first data record at or after `offset` in
/// `records`, or `None` when they hold none (the offset is at the log's end, or past the
/// records the fetch returned).
pub fn timestamp_at(records: &Bytes, offset: i64) -> Option<i64> {
    let mut at = 0usize;
    // `at` passes the end when a batch's length claims more than was returned.
    while records.len().saturating_sub(at) >= 12 {
        let length = i32::from_be_bytes(records[at + 8..at + 12].try_into().expect("4 bytes"));
        let end = at.checked_add(12 + usize::try_from(length).ok()?)?;
        let batch = &records[at..end.min(records.len())];
        let header = header(batch)?;
        at = end;
        if header.last_offset < offset || header.attributes & CONTROL != 0 {
            continue;
        }
        if header.attributes & LOG_APPEND_TIME != 0 {
            // Every record of the batch was stamped by the broker with the same time.
            return Some(header.max_timestamp);
        }
        let whole = end <= records.len();
        let found = if whole {
            walk_batch(&header, &batch[HEADER..], offset)
        } else {
            Walk::Unread
        };
        match found {
            Walk::Found(timestamp) => return Some(timestamp),
            Walk::Past => continue,
            Walk::Unread => return Some(header.first_timestamp),
        }
    }
    None
}

/// What walking one batch's records found.
#[derive(Debug, PartialEq, Eq)]
enum Walk {
    /// The timestamp of the first record at or after the offset.
    Found(i64),
    /// No record at or after the offset in this batch.
    Past,
    /// The batch could not be walked (compressed beyond the bound or with a codec levee does not
    /// carry, or malformed).
    Unread,
}

fn walk_batch(header: &BatchHeader, body: &[u8], offset: i64) -> Walk {
    let inflated = match header.attributes & CODEC {
        0 => return walk_records(header, body, offset),
        GZIP => inflate::gzip(body, MAX_INFLATED_BYTES),
        SNAPPY => inflate::snappy(body, MAX_INFLATED_BYTES),
        _ => return Walk::Unread,
    };
    match inflated {
        Ok(records) => walk_records(header, &records, offset),
        Err(_) => Walk::Unread,
    }
}

/// The records of a batch, uncompressed, walked by their lengths.
fn walk_records(header: &BatchHeader, mut records: &[u8], offset: i64) -> Walk {
    let Ok(count) = usize::try_from(header.record_count) else {
        return Walk::Unread;
    };
    if count > records.len() / MIN_RECORD_BYTES {
        return Walk::Unread;
    }
    for _ in 0..count {
        let Some(length) = varint(&mut records).and_then(|l| usize::try_from(l).ok()) else {
            return Walk::Unread;
        };
        let Some(mut record) = records.get(..length) else {
            return Walk::Unread;
        };
        records = &records[length..];
        let _attributes = record.first();
        record = record.get(1..).unwrap_or_default();
        let (Some(timestamp_delta), Some(offset_delta)) = (varint(&mut record), varint(&mut record)) else {
            return Walk::Unread;
        };
        if header.base_offset.saturating_add(offset_delta) >= offset {
            return Walk::Found(header.first_timestamp.saturating_add(timestamp_delta));
        }
    }
    Walk::Past
}

/// A zigzag varint (Kafka's varint and varlong alike), at most ten bytes; `None` when the bytes
/// end first or it runs on.
fn varint(bytes: &mut &[u8]) -> Option<i64> {
    let mut value = 0u64;
    for (index, byte) in bytes.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            *bytes = &bytes[index + 1..];
            let magnitude = i64::try_from(value >> 1).expect("63 bits");
            return Some(if value & 1 == 0 { magnitude } else { -magnitude - 1 });
        }
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

    /// A batch header with `codec`, `records` declared and `body` after it.
    fn forged(codec: i16, records: i32, first_timestamp: i64, body: &[u8]) -> Bytes {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&100i64.to_be_bytes());
        bytes.extend_from_slice(&i32::try_from(HEADER - 12 + body.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(&0i32.to_be_bytes());
        bytes.push(2);
        bytes.extend_from_slice(&0u32.to_be_bytes());
        bytes.extend_from_slice(&codec.to_be_bytes());
        bytes.extend_from_slice(&(records.max(1) - 1).to_be_bytes());
        bytes.extend_from_slice(&first_timestamp.to_be_bytes());
        bytes.extend_from_slice(&first_timestamp.to_be_bytes());
        bytes.extend_from_slice(&[0u8; 14]);
        bytes.extend_from_slice(&records.to_be_bytes());
        assert_eq!(bytes.len(), HEADER);
        bytes.extend_from_slice(body);
        Bytes::from(bytes)
    }

    /// The 94-byte batch of issue 39: snappy, declaring 4 GiB of output. Before the bound, the
    /// decoder made room for all of it (4,087 MiB resident in 4 s).
    #[test]
    fn a_snappy_batch_declaring_gigabytes_is_not_inflated() {
        let liar = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00, 0x00, 0x00];
        let bytes = forged(SNAPPY, 1, 5_000, &liar);
        assert!(bytes.len() < 100);
        assert_eq!(
            timestamp_at(&bytes, 100),
            Some(5_000),
            "the batch's first timestamp"
        );
    }

    #[test]
    fn a_gzip_batch_inflating_past_the_bound_is_not_walked() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![0u8; MAX_INFLATED_BYTES + 1]).unwrap();
        let bomb = encoder.finish().unwrap();
        assert_eq!(timestamp_at(&forged(GZIP, 1, 7_000, &bomb), 100), Some(7_000));
    }

    #[test]
    fn a_record_count_the_bytes_cannot_hold_is_not_believed() {
        // Two billion records declared, seven bytes present: before, the decoder reserved room
        // for every one of them.
        let one = [12u8, 0, 20, 0, 1, 1, 0];
        assert_eq!(
            timestamp_at(&forged(0, 1, 9_000, &one), 100),
            Some(9_010),
            "walked"
        );
        assert_eq!(timestamp_at(&forged(0, i32::MAX, 9_000, &one), 100), Some(9_000));
        // A record whose length runs past its batch.
        let long = [0x7e, 0, 0, 0];
        assert_eq!(timestamp_at(&forged(0, 1, 9_000, &long), 100), Some(9_000));
        // A varint that never ends.
        let endless = [0xffu8; 40];
        assert_eq!(timestamp_at(&forged(0, 1, 9_000, &endless), 100), Some(9_000));
    }

    /// Found by `cargo fuzz run kafka_records`: a batch before the offset whose length claims
    /// more bytes than the fetch returned put the walk past the end, and the next turn's
    /// `len - at` overflowed (a panic in a debug build; in a release one, an index past the end).
    #[test]
    fn a_batch_before_the_offset_claiming_more_than_was_returned_ends_the_walk() {
        let mut short = vec![0u8; HEADER];
        short[8..12].copy_from_slice(&1_000i32.to_be_bytes());
        short[16] = 2;
        assert_eq!(timestamp_at(&Bytes::from(short), 5), None);
    }

    #[test]
    fn zigzag_varints_read_as_kafka_writes_them() {
        for (bytes, value) in [
            (&[0x00][..], 0),
            (&[0x01][..], -1),
            (&[0x02][..], 1),
            (&[0xac, 0x02][..], 150),
            (&[0xff, 0xff, 0xff, 0xff, 0x0f][..], i64::from(i32::MIN)),
        ] {
            let mut rest = bytes;
            assert_eq!(varint(&mut rest), Some(value), "{bytes:?}");
            assert!(rest.is_empty());
        }
    }
}
