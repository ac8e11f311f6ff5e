//! Differential fuzz of the raw parser, run as ordinary tests (a few seconds in a debug
//! build, so it runs in CI with every `cargo test`).
//!
//! Payloads come from a structure-aware generator (fields of the real schema, unknown
//! fields, every wire type, padded keys and varints, bad lengths, groups, invalid UTF-8,
//! several parts of a merged message) with byte-level mutations on top. For each payload
//! the raw parser must accept exactly what both references accept:
//! - prost, decoding the same bytes as the generated message (`AdEvent`,
//!   `SendEventRequest`, `SendEventsRequest`): the schema (wire type per field, UTF-8);
//! - `rules_ok` below, the protobuf encoding rules that upb and C++ protobuf enforce and
//!   prost does not all enforce: a key is at most 5 bytes and at most 2^32 - 1 (field
//!   number 1..=2^29-1), wire types are 0, 1, 2 or 5 (no groups), a varint is at most 10
//!   bytes with only bit 63 in the 10th, a length stays inside its message.
//!
//! Whatever is accepted must read the same fields as prost. A fixed seed runs every time;
//! a second seed comes from the clock (or `ADFLOW_FUZZ_SEED`) and is printed on failure.

use super::tests::{Rng, sample};
use super::*;
use crate::v1::{AdEvent, SendEventRequest, SendEventsRequest};
use prost::Message;
use std::collections::BTreeMap;

/// What a length-delimited field holds, for the generator and for `rules_ok`.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Event,
    Entry,
    SendEvent,
    SendEvents,
    Str,
    Opaque,
}

/// The declared fields of a message kind: (number, wire type, what a LEN field holds).
fn schema(k: Kind) -> &'static [(u64, u8, Kind)] {
    const S: Kind = Kind::Str;
    match k {
        Kind::Event => &[
            (1, LEN, S),
            (2, VARINT, S),
            (3, LEN, S),
            (4, LEN, S),
            (5, LEN, S),
            (6, LEN, S),
            (7, LEN, S),
            (8, VARINT, S),
            (9, I64, S),
            (10, VARINT, S),
            (11, VARINT, S),
            (12, LEN, S),
            (13, LEN, S),
            (14, LEN, Kind::Entry),
        ],
        Kind::Entry => &[(1, LEN, S), (2, LEN, S)],
        Kind::SendEvent => &[(1, LEN, Kind::Event), (2, VARINT, S)],
        Kind::SendEvents => &[(1, LEN, Kind::Event), (2, VARINT, S), (3, VARINT, S)],
        Kind::Str | Kind::Opaque => &[],
    }
}

// ---- The reference rules (written from the encoding spec, independently of `Wire`). ----

fn spec_varint(b: &[u8], pos: &mut usize) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for i in 0..10 {
        let byte = *b.get(*pos + i)?;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if i == 9 && byte > 1 {
                return None;
            }
            *pos += i + 1;
            return Some((v, i + 1));
        }
    }
    None
}

/// Whether `b`, read as a message of kind `k`, follows the encoding rules (nested
/// messages that the parser reads are checked too; other LEN fields are opaque).
fn rules_ok(b: &[u8], k: Kind) -> bool {
    let mut p = 0;
    while p < b.len() {
        let Some((key, key_len)) = spec_varint(b, &mut p) else { return false };
        if key_len > 5 || key > u64::from(u32::MAX) || key >> 3 == 0 {
            return false;
        }
        match key & 7 {
            0 => {
                if spec_varint(b, &mut p).is_none() {
                    return false;
                }
            }
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                if b.len() - p < n {
                    return false;
                }
                p += n;
            }
            2 => {
                let Some((n, _)) = spec_varint(b, &mut p) else { return false };
                if n > (b.len() - p) as u64 {
                    return false;
                }
                let body = &b[p..p + n as usize];
                p += n as usize;
                let nested = schema(k).iter().find(|f| f.0 == key >> 3 && f.1 == LEN).map(|f| f.2);
                if let Some(nk @ (Kind::Event | Kind::Entry)) = nested
                    && !rules_ok(body, nk)
                {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

// ---- The generator. ----

fn chance(rng: &mut Rng, one_in: u64) -> bool {
    rng.next().is_multiple_of(one_in)
}

/// `v` as a varint of exactly `len` bytes (padded with continuation bytes when `len` is
/// longer than needed; `len` may exceed 10 to make an invalid one).
fn varint_padded(v: u64, len: usize, out: &mut Vec<u8>) {
    let mut v = v;
    for i in 0..len {
        let last = i + 1 == len;
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        out.push(if last { byte } else { byte | 0x80 });
    }
}

fn varint_len(v: u64) -> usize {
    (64 - v.max(1).leading_zeros() as usize).div_ceil(7)
}

/// A varint, usually minimal; now and then padded, 10 bytes, 11 bytes or overflowing.
fn varint(rng: &mut Rng, v: u64, out: &mut Vec<u8>) {
    let min = varint_len(v);
    match rng.next() % 40 {
        0 => varint_padded(v, min + 1 + (rng.next() % 3) as usize, out),
        1 => varint_padded(v, 10, out),
        2 => varint_padded(v, 11, out),
        3 => {
            varint_padded(v, 9, out);
            let last = out.len() - 1;
            out[last] |= 0x80;
            out.push(2 + (rng.next() % 126) as u8); // a 10th byte beyond bit 63
        }
        _ => varint_padded(v, min, out),
    }
}

fn value(rng: &mut Rng) -> u64 {
    match rng.next() % 6 {
        0 => 0,
        1 => rng.next() % 16,
        2 => (-(1 + (rng.next() % 1000) as i64)) as u64,
        3 => u64::MAX,
        4 => 1_800_000_000_000 + rng.next() % 1_000_000,
        _ => rng.next() >> (rng.next() % 64),
    }
}

fn text(rng: &mut Rng) -> Vec<u8> {
    let pick = ["", "ad-42", "RPG-Fantasy", "DE", "välue", "日本", "evt-0001"];
    let mut s = pick[(rng.next() % pick.len() as u64) as usize].as_bytes().to_vec();
    match rng.next() % 12 {
        0 => s.push(0xff),                             // never valid UTF-8
        1 => s.extend_from_slice(&[0xe6, 0x97]),       // a cut multi-byte character
        2 => s.extend_from_slice(&[0xed, 0xa0, 0x80]), // a surrogate
        _ => {}
    }
    s
}

/// One field of a message of kind `k`.
fn field(rng: &mut Rng, k: Kind, depth: u32, out: &mut Vec<u8>) {
    let declared = schema(k);
    let (number, wt, holds) = match rng.next() % 20 {
        _ if declared.is_empty() => {
            (1 + rng.next() % 30, [VARINT, I64, LEN, I32][(rng.next() % 4) as usize], Kind::Opaque)
        }
        0 | 1 => (15 + rng.next() % 100, [VARINT, I64, LEN, I32][(rng.next() % 4) as usize], Kind::Opaque),
        2 => {
            let f = declared[(rng.next() % declared.len() as u64) as usize];
            (f.0, (rng.next() % 8) as u8, f.2)
        }
        3 => {
            let n = [0, 1 << 29, (1 << 29) - 1, 1 << 32, 1 << 40, 19_000][(rng.next() % 6) as usize];
            (n, [VARINT, LEN, 3, 4][(rng.next() % 4) as usize], Kind::Opaque)
        }
        _ => declared[(rng.next() % declared.len() as u64) as usize],
    };
    let key = (number << 3) | u64::from(wt);
    if chance(rng, 25) {
        varint_padded(key, varint_len(key) + 1 + (rng.next() % 6) as usize, out); // up to 11 bytes
    } else {
        varint_padded(key, varint_len(key), out);
    }
    match wt {
        VARINT => {
            let v = value(rng);
            varint(rng, v, out)
        }
        I64 => out.extend_from_slice(&rng.next().to_le_bytes()),
        I32 => out.extend_from_slice(&rng.next().to_le_bytes()[..4]),
        LEN => {
            let body = match holds {
                Kind::Str => text(rng),
                Kind::Opaque => (0..rng.next() % 6).map(|_| rng.next() as u8).collect(),
                nested if depth < 3 => message(rng, nested, depth + 1),
                _ => Vec::new(),
            };
            let mut n = body.len() as u64;
            if chance(rng, 30) {
                n = n.wrapping_add(rng.next() % 5).wrapping_sub(2);
            }
            varint(rng, n, out);
            out.extend_from_slice(&body);
        }
        3 => {
            // A group: fields, then (usually) the matching end-group key.
            for _ in 0..rng.next() % 3 {
                field(rng, Kind::Opaque, depth + 1, out);
            }
            if !chance(rng, 4) {
                varint_padded((number << 3) | 4, varint_len((number << 3) | 4), out);
            }
        }
        _ => {} // 4 (a lone end-group), 6 and 7: no payload
    }
}

fn message(rng: &mut Rng, k: Kind, depth: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let n = match k {
        Kind::Event => rng.next() % 18,
        _ => rng.next() % 5,
    };
    for _ in 0..n {
        field(rng, k, depth, &mut out);
    }
    out
}

/// Byte-level damage on top, now and then.
fn mutate(rng: &mut Rng, b: &mut Vec<u8>) {
    if b.is_empty() || !chance(rng, 3) {
        return;
    }
    let p = (rng.next() as usize) % b.len();
    match rng.next() % 5 {
        0 => b.truncate(p),
        1 => b[p] = rng.next() as u8,
        2 => b[p] ^= 1 << (rng.next() % 8),
        3 => b.insert(p, rng.next() as u8),
        _ => {
            let q = p + (rng.next() as usize) % (b.len() - p + 1);
            let dup = b[p..q].to_vec();
            b.splice(p..p, dup);
        }
    }
}

/// An event payload: generated, or a real event from prost with damage.
fn event_payload(rng: &mut Rng, i: u64) -> Vec<u8> {
    let mut b = if chance(rng, 4) { sample(i).encode_to_vec() } else { message(rng, Kind::Event, 0) };
    mutate(rng, &mut b);
    b
}

// ---- The comparison. ----

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The view reads what prost read (attributes as prost merges them: the last entry of a
/// key wins).
fn same_fields(v: &EventView<'_>, e: &AdEvent) -> Result<(), String> {
    let got = (
        v.event_id,
        v.r#type,
        (v.ad_id, v.campaign_id, v.game_id, v.game_family, v.user_id),
        (v.timestamp_ms, v.revenue_usd.map(f64::to_bits), v.video_position_ms, v.platform),
        (v.country, v.device),
    );
    let want = (
        e.event_id.as_str(),
        e.r#type,
        (
            e.ad_id.as_str(),
            e.campaign_id.as_str(),
            e.game_id.as_str(),
            e.game_family.as_str(),
            e.user_id.as_str(),
        ),
        (e.timestamp_ms, e.revenue_usd.map(f64::to_bits), e.video_position_ms, e.platform),
        (e.country.as_str(), e.device.as_str()),
    );
    if got != want {
        return Err(format!("fields differ: view {got:?}, prost {want:?}"));
    }
    let entries: Vec<_> = v.attributes().collect();
    let merged: BTreeMap<String, String> =
        entries.iter().map(|(k, x)| (k.to_string(), x.to_string())).collect();
    if merged != e.attributes || entries.len() != v.attribute_count {
        return Err(format!(
            "attributes differ: view {entries:?} ({}), prost {:?}",
            v.attribute_count, e.attributes
        ));
    }
    let key_min = entries.iter().map(|(k, _)| k.len()).min().unwrap_or(0);
    let key_max = entries.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let value_max = entries.iter().map(|(_, x)| x.len()).max().unwrap_or(0);
    if (key_min, key_max, value_max) != (v.attribute_key_min, v.attribute_key_max, v.attribute_value_max) {
        return Err("attribute length summary differs from the entries".into());
    }
    Ok(())
}

/// Counts of (accepted, refused) payloads.
type Tally = (u32, u32);

fn check_event(b: &[u8], t: &mut Tally) -> Result<(), String> {
    let want = AdEvent::decode(b).ok().filter(|_| rules_ok(b, Kind::Event));
    match (EventView::parse(b), want) {
        (Ok(v), Some(e)) => {
            t.0 += 1;
            same_fields(&v, &e)
        }
        (Err(_), None) => {
            t.1 += 1;
            Ok(())
        }
        (Ok(_), None) => Err(format!(
            "the view accepted what the references refuse (prost: {:?}, rules: {})",
            AdEvent::decode(b).err(),
            rules_ok(b, Kind::Event)
        )),
        (Err(m), Some(_)) => Err(format!("the view refused what the references accept: {m}")),
    }
}

fn check_send_event(b: &[u8], t: &mut Tally) -> Result<(), String> {
    let want = SendEventRequest::decode(b).ok().filter(|_| rules_ok(b, Kind::SendEvent));
    let raw = RawEvent::decode_raw(Bytes::copy_from_slice(b));
    let got = raw.as_ref().map_err(|m| m.0.clone()).and_then(|r| match &r.event {
        Some(ev) => EventView::parse(ev).map(Some).map_err(|m| m.0),
        None => Ok(None),
    });
    match (got, want) {
        (Ok(v), Some(w)) => {
            t.0 += 1;
            let r = raw.as_ref().expect("decoded");
            if r.ack_mode != w.ack_mode {
                return Err(format!("ack_mode {} vs prost {}", r.ack_mode, w.ack_mode));
            }
            match (v, w.event) {
                (Some(v), Some(e)) => same_fields(&v, &e),
                (None, None) => Ok(()),
                (v, e) => Err(format!("event presence differs: view {v:?}, prost {e:?}")),
            }
        }
        (Err(_), None) => {
            t.1 += 1;
            Ok(())
        }
        (Ok(_), None) => Err("RawEvent accepted what the references refuse".into()),
        (Err(m), Some(_)) => Err(format!("RawEvent refused what the references accept: {m}")),
    }
}

fn check_send_events(b: &[u8], t: &mut Tally) -> Result<(), String> {
    let want = SendEventsRequest::decode(b).ok().filter(|_| rules_ok(b, Kind::SendEvents));
    let raw = RawEvents::decode_raw(Bytes::copy_from_slice(b));
    let views = raw.as_ref().map_err(|m| m.0.clone()).and_then(|r| {
        r.events.iter().map(|e| EventView::parse(e).map_err(|m| m.0)).collect::<Result<Vec<_>, _>>()
    });
    match (views, want) {
        (Ok(views), Some(w)) => {
            t.0 += 1;
            let r = raw.as_ref().expect("decoded");
            if (r.ack_mode, r.sequence, views.len()) != (w.ack_mode, w.sequence, w.events.len()) {
                return Err("ack_mode, sequence or event count differ".into());
            }
            views.iter().zip(&w.events).try_for_each(|(v, e)| same_fields(v, e))
        }
        (Err(_), None) => {
            t.1 += 1;
            Ok(())
        }
        (Ok(_), None) => Err("RawEvents accepted what the references refuse".into()),
        (Err(m), Some(_)) => Err(format!("RawEvents refused what the references accept: {m}")),
    }
}

/// An envelope of kind `k` whose `event` parts are mostly real events.
fn envelope(rng: &mut Rng, k: Kind, i: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.next() % 5 {
        if chance(rng, 3) {
            field(rng, k, 0, &mut out);
        } else {
            let e = if chance(rng, 2) {
                sample(i + rng.next() % 7).encode_to_vec()
            } else {
                event_payload(rng, i)
            };
            out.push(0x0a);
            varint_padded(e.len() as u64, varint_len(e.len() as u64), &mut out);
            out.extend_from_slice(&e);
        }
    }
    mutate(rng, &mut out);
    out
}

fn run(seed: u64, rounds: u64) {
    let mut rng = Rng(seed | 1);
    let mut tallies = [(0, 0); 3];
    for i in 0..rounds {
        let (which, b) = match i % 4 {
            0 | 1 => (0, event_payload(&mut rng, i)),
            2 => (1, envelope(&mut rng, Kind::SendEvent, i)),
            _ => (2, envelope(&mut rng, Kind::SendEvents, i)),
        };
        let t = &mut tallies[which];
        let r = match which {
            0 => check_event(&b, t),
            1 => check_send_event(&b, t),
            _ => check_send_events(&b, t),
        };
        if let Err(why) = r {
            panic!(
                "seed {seed:#x}, payload {i} ({}): {why}\nbytes: {}",
                ["AdEvent", "SendEventRequest", "SendEventsRequest"][which],
                hex(&b)
            );
        }
    }
    eprintln!("seed {seed:#x}: (accepted, refused) per message: {tallies:?}");
    for (name, (ok, refused)) in ["AdEvent", "SendEventRequest", "SendEventsRequest"].iter().zip(tallies) {
        // Both sides of the comparison must be well exercised.
        let n = ok + refused;
        assert!(ok * 8 > n && refused * 8 > n, "seed {seed:#x}: {name}: {ok} accepted, {refused} refused");
    }
}

#[test]
fn the_raw_parser_accepts_exactly_what_prost_and_the_encoding_rules_accept() {
    run(0x9E37_79B9_7F4A_7C15, 20_000);
}

#[test]
fn the_raw_parser_agrees_with_prost_and_the_rules_on_a_fresh_seed() {
    let seed = std::env::var("ADFLOW_FUZZ_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            t.as_nanos() as u64
        });
    run(seed, 20_000);
}

#[test]
fn the_rules_reference_refuses_what_it_should() {
    // The reference itself: a 6-byte key, field 0, a group, an 11-byte varint.
    assert!(rules_ok(&[0x8a, 0x80, 0x80, 0x80, 0x00, 0x00], Kind::Event));
    assert!(!rules_ok(&[0x8a, 0x80, 0x80, 0x80, 0x80, 0x00, 0x00], Kind::Event));
    assert!(!rules_ok(&[0x02, 0x00], Kind::Event));
    assert!(!rules_ok(&[0xa3, 0x01, 0xa4, 0x01], Kind::Event));
    let mut v = vec![0x10];
    varint_padded(1, 11, &mut v);
    assert!(!rules_ok(&v, Kind::Event));
    // Inside an attributes entry too.
    assert!(!rules_ok(&[0x72, 0x02, 0x02, 0x00], Kind::Event));
}
