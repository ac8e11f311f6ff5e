//! A commit's counter delta: its counters summed per (kind, id, minute), in a compact
//! binary form for the Redis delta stream (see `redis_counters`).
//!
//! Layout: a version byte (1), then per row: the kind's tag byte, the minute (zigzag
//! varint), the id (varint length, bytes), the seven event-type counts (varints), revenue
//! in micro-dollars (zigzag varint) and video ms (varint).

use adflow_domain::analytics::{Counters, Kind};

const VERSION: u8 = 1;

/// One decoded row: kind, id, minute index, counters.
pub type Row = (Kind, Vec<u8>, i64, Counters);

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Revenue as whole micro-dollars (what the buckets add up).
pub fn micros(usd: f64) -> i64 {
    (usd * 1e6).round() as i64
}

/// Encodes rows (as `aggregate` yields them).
pub fn encode<'a>(rows: impl Iterator<Item = (Kind, &'a [u8], i64, &'a Counters)>) -> Vec<u8> {
    let mut out = vec![VERSION];
    for (kind, id, minute, c) in rows {
        out.push(kind.tag() as u8);
        put_varint(&mut out, zigzag(minute));
        put_varint(&mut out, id.len() as u64);
        out.extend_from_slice(id);
        for n in &c.by_type[1..] {
            put_varint(&mut out, *n);
        }
        put_varint(&mut out, zigzag(micros(c.revenue_usd)));
        put_varint(&mut out, c.video_ms);
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        if n > self.0.len() {
            return None;
        }
        let (a, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(a)
    }
}

/// Decodes a delta; None when it is damaged (a wrong version or a truncated row).
pub fn decode(b: &[u8]) -> Option<Vec<Row>> {
    let mut r = Reader(b);
    if r.byte()? != VERSION {
        return None;
    }
    let mut rows = Vec::new();
    while !r.0.is_empty() {
        let kind = match r.byte()? {
            b'*' => Kind::All,
            b'a' => Kind::Ad,
            b'c' => Kind::Campaign,
            _ => return None,
        };
        let minute = unzigzag(r.varint()?);
        let len = usize::try_from(r.varint()?).ok()?;
        let id = r.bytes(len)?.to_vec();
        let mut c = Counters::default();
        for t in 1..c.by_type.len() {
            c.by_type[t] = r.varint()?;
        }
        c.revenue_usd = unzigzag(r.varint()?) as f64 / 1e6;
        c.video_ms = r.varint()?;
        rows.push((kind, id, minute, c));
    }
    Some(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_damage_is_refused() {
        let mut c = Counters::default();
        c.by_type[1] = 300;
        c.by_type[7] = 1;
        c.revenue_usd = 12.345678;
        c.video_ms = 30_000;
        let rows = [(Kind::Ad, &b"ad-1"[..], -5i64, &c), (Kind::All, &b""[..], 29_000_000, &c)];
        let b = encode(rows.iter().map(|(k, i, m, c)| (*k, *i, *m, *c)));
        let back = decode(&b).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!((back[0].0, back[0].1.as_slice(), back[0].2), (Kind::Ad, &b"ad-1"[..], -5));
        assert_eq!(back[1].3.by_type, c.by_type);
        assert_eq!(micros(back[1].3.revenue_usd), 12_345_678);
        assert_eq!(back[1].3.video_ms, 30_000);
        // A cut inside a row is refused; at a row boundary it is a shorter valid delta.
        let first_row_end = encode(rows[..1].iter().map(|(k, i, m, c)| (*k, *i, *m, *c))).len();
        for cut in 1..b.len() {
            let whole = cut == 1 || cut == first_row_end;
            assert_eq!(decode(&b[..cut]).is_some(), whole, "a delta cut at {cut}");
        }
        assert!(decode(&[2]).is_none(), "another version");
    }
}
