//! The view must read what prost writes, and must never accept bytes prost would refuse.

use super::*;
use crate::v1::{AdEvent, SendEventsRequest};
use prost::Message;

/// xorshift64*: deterministic mutations without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn sample(i: u64) -> AdEvent {
    let mut attributes = std::collections::BTreeMap::new();
    for k in 0..(i % 3) {
        attributes.insert(format!("k{k}"), format!("välue-{i}"));
    }
    AdEvent {
        event_id: format!("evt-{i}"),
        r#type: (i % 8) as i32,
        ad_id: format!("ad-{}", i % 13),
        campaign_id: if i.is_multiple_of(2) { String::new() } else { "cmp-1".into() },
        game_id: "g".into(),
        game_family: "RPG-Fantasy".into(),
        user_id: format!("u{i}"),
        timestamp_ms: 1_800_000_000_000 + i as i64,
        revenue_usd: (i % 4 == 1).then_some(i as f64 / 7.0),
        video_position_ms: if i.is_multiple_of(5) { -3 } else { i as i64 },
        platform: (i % 6) as i32,
        country: "DE".into(),
        device: "tablet".into(),
        attributes,
    }
}

fn view_equals(v: &EventView<'_>, e: &AdEvent) {
    assert_eq!(v.event_id, e.event_id);
    assert_eq!(v.r#type, e.r#type);
    assert_eq!(
        (v.ad_id, v.campaign_id, v.game_id),
        (e.ad_id.as_str(), e.campaign_id.as_str(), e.game_id.as_str())
    );
    assert_eq!((v.game_family, v.user_id), (e.game_family.as_str(), e.user_id.as_str()));
    assert_eq!(
        (v.timestamp_ms, v.revenue_usd, v.video_position_ms),
        (e.timestamp_ms, e.revenue_usd, e.video_position_ms)
    );
    assert_eq!((v.platform, v.country, v.device), (e.platform, e.country.as_str(), e.device.as_str()));
    let attrs: Vec<_> = v.attributes().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let want: Vec<_> = e.attributes.clone().into_iter().collect();
    assert_eq!(attrs, want);
    assert_eq!(v.attribute_count, e.attributes.len());
}

#[test]
fn the_view_reads_what_prost_writes() {
    for i in 0..200 {
        let e = sample(i);
        let bytes = e.encode_to_vec();
        view_equals(&EventView::parse(&bytes).unwrap(), &e);
    }
}

#[test]
fn facts_match_the_view() {
    for i in 0..50 {
        let e = sample(i);
        let bytes = e.encode_to_vec();
        let f = Facts::parse(&bytes).unwrap();
        assert_eq!(
            (f.r#type, f.ad_id, f.campaign_id),
            (e.r#type, e.ad_id.as_bytes(), e.campaign_id.as_bytes())
        );
        assert_eq!(
            (f.timestamp_ms, f.revenue_usd, f.video_position_ms),
            (e.timestamp_ms, e.revenue_usd, e.video_position_ms)
        );
    }
}

#[test]
fn a_batch_is_split_into_its_events_without_copying() {
    let req = SendEventsRequest { events: (0..5).map(sample).collect(), ack_mode: 2, sequence: 77 };
    let buf = Bytes::from(req.encode_to_vec());
    let raw = RawEvents::decode_raw(buf.clone()).unwrap();
    assert_eq!((raw.ack_mode, raw.sequence, raw.events.len()), (2, 77, 5));
    for (b, e) in raw.events.iter().zip(&req.events) {
        assert_eq!(AdEvent::decode(&b[..]).unwrap(), *e);
        let inside = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        assert!(inside.contains(&(b.as_ptr() as usize)), "event bytes were copied");
    }
}

#[test]
fn appending_a_timestamp_sets_it() {
    let mut e = sample(3);
    e.timestamp_ms = 0;
    let raw = with_timestamp(&e.encode_to_vec(), 1_234_567_890_123);
    e.timestamp_ms = 1_234_567_890_123;
    assert_eq!(AdEvent::decode(&raw[..]).unwrap(), e);
}

#[test]
fn whatever_the_view_accepts_prost_accepts_too() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut accepted = 0;
    for i in 0..4000u64 {
        let mut bytes = sample(i).encode_to_vec();
        match rng.next() % 3 {
            0 => bytes.truncate((rng.next() as usize) % (bytes.len() + 1)),
            1 => {
                for _ in 0..1 + rng.next() % 3 {
                    let p = (rng.next() as usize) % bytes.len();
                    bytes[p] = rng.next() as u8;
                }
            }
            _ => {
                let p = (rng.next() as usize) % bytes.len();
                bytes.insert(p, rng.next() as u8);
            }
        }
        if let Ok(v) = EventView::parse(&bytes) {
            accepted += 1;
            let e = AdEvent::decode(&bytes[..])
                .unwrap_or_else(|err| panic!("prost refused what the view took: {err}"));
            view_equals(&v, &e);
        }
    }
    assert!(accepted > 100, "the mutations should leave some inputs valid ({accepted})");
}

#[test]
fn wrong_wire_types_and_bad_utf8_are_refused() {
    // Field 1 (event_id) sent as a varint.
    assert!(EventView::parse(&[0x08, 0x01]).is_err());
    // Field 3 (ad_id) with invalid UTF-8.
    assert!(EventView::parse(&[0x1a, 0x02, 0xff, 0xfe]).is_err());
    // A length past the end.
    assert!(EventView::parse(&[0x0a, 0x05, b'a']).is_err());
    // Unknown fields are skipped, as prost does.
    let v = EventView::parse(&[0xa0, 0x06, 0x05, 0x0a, 0x01, b'x']).unwrap();
    assert_eq!(v.event_id, "x");
}
