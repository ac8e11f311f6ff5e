//! Record framing of the segment files. Each record is a 16-byte header and a payload:
//!
//! ```text
//! [magic: 4 bytes AD F1 0A D2][len: u32 LE][payload crc32: u32 LE][header crc32: u32 LE][payload: len bytes]
//! ```
//!
//! The payload is `[received_at_ms: i64 LE][AdEvent protobuf]`; the payload CRC covers it,
//! the header CRC covers the 12 header bytes before it (magic, length, payload CRC). Both
//! are CRC-32 (IEEE, `crc32fast`).
//!
//! Why a magic and a header CRC: a damaged record must cost only its own bytes, so a
//! reader has to find the next record without trusting anything in the damaged one
//! (its length field can lie). A reader resynchronises by searching forward for the next
//! offset where a whole record checks out ([`decode`] returns `Record`): the magic, then
//! the header CRC (so the length is trusted before the payload is read), then the payload
//! CRC, then the event must parse. The magic only makes the search fast; the CRCs make it
//! safe.
//!
//! False resynchronisation: at an offset of random (damaged) bytes, the magic matches with
//! probability 2^-32, the header CRC with 2^-32 and the payload CRC with 2^-32, so a
//! false record needs about 2^-96 per offset; over a whole 64 MiB segment of garbage
//! that is below 10^-20. Zeroed or 0xFF-filled ranges never match the magic. The one
//! non-random case: a client can put a complete, valid frame inside a string field of an
//! event; it can be taken for a record only when the record around it is itself
//! damaged, and it then yields an event that client could have sent directly.
//!
//! This is format 2. Segments of the first format (`[len][crc][payload]`, no magic) do
//! not decode: a reader treats them as damage (skipped and quarantined, see `file`).

use crate::StoredEvent;
use adflow_domain::EventView;
use bytes::Bytes;

/// Marks the start of every record (format 2); never all-zero or all-0xFF.
pub const MAGIC: [u8; 4] = [0xAD, 0xF1, 0x0A, 0xD2];
/// Header bytes before each payload.
pub const HEADER: usize = 16;
/// No payload is larger than this (an event is at most a few KiB).
pub const MAX_PAYLOAD: usize = 4 << 20;

/// Appends the framed record of `e` to `buf`.
pub fn encode(e: &StoredEvent, buf: &mut Vec<u8>) {
    let len = 8 + e.raw.len();
    buf.reserve(HEADER + len);
    let start = buf.len();
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 8]);
    buf.extend_from_slice(&e.received_at_ms.to_le_bytes());
    buf.extend_from_slice(&e.raw);
    let payload_crc = crc32fast::hash(&buf[start + HEADER..]);
    buf[start + 8..start + 12].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc32fast::hash(&buf[start..start + 12]);
    buf[start + 12..start + HEADER].copy_from_slice(&header_crc.to_le_bytes());
}

/// Outcome of decoding the record at the start of a byte slice.
#[derive(Debug)]
pub enum Decoded {
    /// A whole, valid record and its framed size.
    Record(Box<StoredEvent>, usize),
    /// The slice ends inside the record; the record needs this many bytes in all to
    /// decide (a torn write when the file ends there).
    Incomplete(usize),
    /// No valid record starts here.
    Bad(&'static str),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Decodes the record at the start of `b`. Checks the magic and the header before it
/// asks for the payload, so `Incomplete` only names a length that the header CRC vouches for.
pub fn decode(b: &[u8]) -> Decoded {
    let head = &b[..b.len().min(4)];
    if head != &MAGIC[..head.len()] {
        return Decoded::Bad("no record marker");
    }
    if b.len() < HEADER {
        return Decoded::Incomplete(HEADER);
    }
    if crc32fast::hash(&b[..12]) != u32_at(b, 12) {
        return Decoded::Bad("header checksum mismatch");
    }
    let len = u32_at(b, 4) as usize;
    if !(8..=MAX_PAYLOAD).contains(&len) {
        return Decoded::Bad("record length out of bounds");
    }
    let Some(payload) = b.get(HEADER..HEADER + len) else {
        return Decoded::Incomplete(HEADER + len);
    };
    if crc32fast::hash(payload) != u32_at(b, 8) {
        return Decoded::Bad("payload checksum mismatch");
    }
    let received_at_ms = i64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
    match EventView::parse(&payload[8..]) {
        Ok(_) => Decoded::Record(
            Box::new(StoredEvent { received_at_ms, raw: Bytes::copy_from_slice(&payload[8..]) }),
            HEADER + len,
        ),
        Err(_) => Decoded::Bad("undecodable event"),
    }
}

/// The offset in `b` of the first byte at or after `from` where the magic starts.
pub fn find_magic(b: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at + MAGIC.len() <= b.len() {
        let i = b[at..b.len() - (MAGIC.len() - 1)].iter().position(|&x| x == MAGIC[0])?;
        if b[at + i..at + i + MAGIC.len()] == MAGIC {
            return Some(at + i);
        }
        at += i + 1;
    }
    None
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
        assert_eq!(find_magic(&buf, 1), Some(n));
    }

    #[test]
    fn a_cut_record_is_incomplete_and_says_how_much_it_needs() {
        let mut buf = Vec::new();
        encode(&sample(1), &mut buf);
        for cut in 0..buf.len() {
            let want = if cut < HEADER { HEADER } else { buf.len() };
            assert!(matches!(decode(&buf[..cut]), Decoded::Incomplete(n) if n == want), "cut at {cut}");
        }
    }

    #[test]
    fn every_flipped_bit_makes_the_record_bad() {
        let mut buf = Vec::new();
        encode(&sample(1), &mut buf);
        for bit in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            // A flipped length can also claim more bytes than the slice holds: the header
            // CRC must catch it before the payload is asked for.
            assert!(matches!(decode(&b), Decoded::Bad(_)), "bit {bit}: {:?}", decode(&b));
        }
    }

    #[test]
    fn the_magic_is_found_anywhere_and_only_whole() {
        let mut b = vec![0xAD; 9];
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&MAGIC[..3]);
        assert_eq!(find_magic(&b, 0), Some(9));
        assert_eq!(find_magic(&b, 10), None);
        assert_eq!(find_magic(&b[..12], 0), None);
        assert_eq!(find_magic(&[], 0), None);
    }
}
