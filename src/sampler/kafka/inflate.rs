//! Inflates a compressed record batch's records, bounded in output before a byte of it is
//! allocated: a broker's batch is untrusted, and a 94-byte snappy batch may declare 4 GiB of
//! output (snappy states its length up front; gzip states nothing and is read through a bound).
//! Kafka's two snappy framings are read: xerial's (a 16-byte magic, then length-prefixed raw
//! blocks, what the Java client writes) and raw snappy.

use std::io::Read;

/// Why a batch was not inflated.
#[derive(Debug, PartialEq, Eq)]
pub enum Inflate {
    /// The output would pass the bound.
    TooLarge,
    /// The bytes are not what their codec says.
    Malformed,
}

const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
/// The magic, then the framing's version and its compatible version.
const XERIAL_HEADER: usize = 16;

/// A gzip stream (one member or several, as Java's `GZIPInputStream` reads them), at most
/// `bound` bytes of output.
pub fn gzip(compressed: &[u8], bound: usize) -> Result<Vec<u8>, Inflate> {
    let mut out = Vec::new();
    let limit = u64::try_from(bound).unwrap_or(u64::MAX).saturating_add(1);
    flate2::read::MultiGzDecoder::new(compressed)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|_| Inflate::Malformed)?;
    if out.len() > bound {
        return Err(Inflate::TooLarge);
    }
    Ok(out)
}

/// A snappy stream (xerial-framed or raw), at most `bound` bytes of output.
pub fn snappy(compressed: &[u8], bound: usize) -> Result<Vec<u8>, Inflate> {
    let mut out = Vec::new();
    if compressed.len() >= XERIAL_HEADER && compressed[..8] == XERIAL_MAGIC[..] {
        let mut at = XERIAL_HEADER;
        while at < compressed.len() {
            let length = compressed
                .get(at..at + 4)
                .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
                .ok_or(Inflate::Malformed)?;
            let end = at
                .checked_add(4 + usize::try_from(length).map_err(|_| Inflate::Malformed)?)
                .filter(|end| *end <= compressed.len())
                .ok_or(Inflate::Malformed)?;
            raw_block(&compressed[at + 4..end], bound, &mut out)?;
            at = end;
        }
    } else {
        raw_block(compressed, bound, &mut out)?;
    }
    Ok(out)
}

/// One raw snappy block appended to `out`, its stated length checked against what `bound`
/// leaves before the room is made.
fn raw_block(block: &[u8], bound: usize, out: &mut Vec<u8>) -> Result<(), Inflate> {
    let length = snap::raw::decompress_len(block).map_err(|_| Inflate::Malformed)?;
    if length > bound.saturating_sub(out.len()) {
        return Err(Inflate::TooLarge);
    }
    let start = out.len();
    out.resize(start + length, 0);
    snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|_| Inflate::Malformed)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzipped(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn gzip_inflates_up_to_the_bound_and_no_further() {
        let data = vec![7u8; 10_000];
        assert_eq!(gzip(&gzipped(&data), 10_000).unwrap(), data);
        assert_eq!(gzip(&gzipped(&data), 9_999), Err(Inflate::TooLarge));
        assert_eq!(gzip(b"not gzip at all", 10_000), Err(Inflate::Malformed));
    }

    #[test]
    fn snappy_checks_the_stated_length_before_making_room() {
        let data = vec![3u8; 5_000];
        let raw = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        assert_eq!(snappy(&raw, 5_000).unwrap(), data);
        assert_eq!(snappy(&raw, 4_999), Err(Inflate::TooLarge));
        // A raw stream whose varint length says 4 GiB, and nothing else.
        let liar = [0xff, 0xff, 0xff, 0xff, 0x0f];
        assert_eq!(snappy(&liar, 1 << 20), Err(Inflate::TooLarge));
    }

    #[test]
    fn xerial_framing_is_read_block_by_block_under_one_bound() {
        let block = snap::raw::Encoder::new().compress_vec(&[1u8; 3_000]).unwrap();
        let mut framed = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
        for _ in 0..2 {
            framed.extend_from_slice(&u32::try_from(block.len()).unwrap().to_be_bytes());
            framed.extend_from_slice(&block);
        }
        assert_eq!(snappy(&framed, 6_000).unwrap().len(), 6_000);
        assert_eq!(snappy(&framed, 5_999), Err(Inflate::TooLarge));
        framed.truncate(framed.len() - 1);
        assert_eq!(snappy(&framed, 6_000), Err(Inflate::Malformed));
    }
}
