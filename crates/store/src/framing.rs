//! Record framing of the segment files: `[len: u32 LE][crc32: u32 LE][payload]`, where the
//! CRC covers the payload and the payload is `[received_at_ms: i64 LE][AdEvent protobuf]`.
//! A reader that meets a short header, a length past the end, an absurd length or a CRC
//! mismatch reports where the valid prefix ends, which is what recovery truncates to.

use crate::StoredEvent;
use adflow_domain::EventView;
use bytes::Bytes;

/// Header bytes before each payload.
pub const HEADER: usize = 8;
/// No record is larger than this; a bigger length means a torn or corrupt header.
pub const MAX_PAYLOAD: usize = 4 << 20;

/// Appends the framed record of `e` to `buf`.
pub fn encode(e: &StoredEvent, buf: &mut Vec<u8>) {
    let len = 8 + e.raw.len();
    buf.reserve(HEADER + len);
    let start = buf.len();
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&e.received_at_ms.to_le_bytes());
    buf.extend_from_slice(&e.raw);
    let crc = crc32fast::hash(&buf[start + HEADER..]);
    buf[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// Outcome of decoding the record at the start of a byte slice.
#[derive(Debug)]
pub enum Decoded {
    /// A whole, valid record and its framed size.
    Record(Box<StoredEvent>, usize),
    /// The slice ends inside the record (a torn write when at the end of a file).
    Incomplete,
    /// The record is damaged.
    Bad(String),
}

/// Decodes the record at the start of `b`.
pub fn decode(b: &[u8]) -> Decoded {
    if b.len() < HEADER {
        return Decoded::Incomplete;
    }
    let len = u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(b[4..8].try_into().expect("4 bytes"));
    if !(8..=MAX_PAYLOAD).contains(&len) {
        return Decoded::Bad(format!("record length {len} out of bounds"));
    }
    let Some(payload) = b.get(HEADER..HEADER + len) else {
        return Decoded::Incomplete;
    };
    if crc32fast::hash(payload) != crc {
        return Decoded::Bad("CRC mismatch".into());
    }
    let received_at_ms = i64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
    match EventView::parse(&payload[8..]) {
        Ok(_) => Decoded::Record(
            Box::new(StoredEvent { received_at_ms, raw: Bytes::copy_from_slice(&payload[8..]) }),
            HEADER + len,
        ),
        Err(e) => Decoded::Bad(format!("undecodable event: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use adflow_proto::v1::AdEvent;

    fn sample(i: i64) -> StoredEvent {
        StoredEvent::encode(
            i,
            &AdEvent { event_id: format!("e{i}"), ad_id: "a".into(), r#type: 1, ..Default::default() },
        )
    }

    #[test]
    fn round_trips() {
        let mut buf = Vec::new();
        encode(&sample(7), &mut buf);
        encode(&sample(8), &mut buf);
        let Decoded::Record(a, n) = decode(&buf) else { panic!("first") };
        assert_eq!(*a, sample(7));
        let Decoded::Record(b, m) = decode(&buf[n..]) else { panic!("second") };
        assert_eq!(*b, sample(8));
        assert_eq!(n + m, buf.len());
    }

    #[test]
    fn a_cut_record_is_incomplete_and_a_flipped_bit_is_bad() {
        let mut buf = Vec::new();
        encode(&sample(1), &mut buf);
        for cut in 0..buf.len() {
            assert!(matches!(decode(&buf[..cut]), Decoded::Incomplete), "cut at {cut}");
        }
        let last = buf.len() - 1;
        buf[last] ^= 1;
        assert!(matches!(decode(&buf), Decoded::Bad(_)));
    }
}
