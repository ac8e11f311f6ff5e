//! The view must read what prost writes, and must never accept bytes prost would refuse.

use super::*;
use crate::v1::{AdEvent, SendEventRequest, SendEventsRequest};
use prost::Message;

/// xorshift64*: deterministic mutations without a dependency.
pub(super) struct Rng(pub(super) u64);
impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

pub(super) fn sample(i: u64) -> AdEvent {
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

#[test]
fn keys_follow_the_protobuf_encoding_rules() {
    // event_id = "x" with its key 0x0a padded to 5 bytes: accepted everywhere.
    let v = EventView::parse(&[0x8a, 0x80, 0x80, 0x80, 0x00, 0x01, b'x']).unwrap();
    assert_eq!(v.event_id, "x");
    // Padded to 6 bytes: prost reads it, upb and C++ protobuf refuse it; so do we.
    let e = EventView::parse(&[0x8a, 0x80, 0x80, 0x80, 0x80, 0x00, 0x01, b'x']).unwrap_err();
    assert!(e.0.contains("6 bytes"), "{e}");
    // Field number 0, and a key above 2^32 - 1 (field number above 2^29 - 1).
    assert!(EventView::parse(&[0x02, 0x00]).is_err());
    assert!(EventView::parse(&[0xfa, 0xff, 0xff, 0xff, 0x1f, 0x00]).is_err());
    // The largest field number, unknown here, is skipped.
    assert!(EventView::parse(&[0xfa, 0xff, 0xff, 0xff, 0x0f, 0x00]).is_ok());
    // Group wire types (3, 4) and the undefined 6 and 7, on unknown fields too.
    for wt in [3u8, 4, 6, 7] {
        assert!(EventView::parse(&[(20 << 3) | wt, 0x00]).is_err(), "wire type {wt}");
    }
    // Varints: 10 bytes at most, the 10th carrying only bit 63.
    let mut ten = vec![0x10];
    ten.extend([0xff; 9]);
    ten.push(0x01);
    assert!(EventView::parse(&ten).is_ok());
    *ten.last_mut().unwrap() = 0x02;
    assert!(EventView::parse(&ten).is_err());
    // A 6-byte key inside an attributes entry, and in a request envelope.
    assert!(EventView::parse(&[0x72, 0x08, 0x8a, 0x80, 0x80, 0x80, 0x80, 0x00, 0x01, b'k']).is_err());
    assert!(RawEvents::decode_raw(Bytes::from_static(&[0x98, 0x80, 0x80, 0x80, 0x80, 0x00, 0x01])).is_err());
}

#[test]
fn a_million_merged_event_parts_decode_in_one_pass() {
    // SendEventRequest { event } followed by 1M more parts of `event`, each `{type: 1}`
    // (4 bytes): protobuf merges them. Joining the parts one by one copied everything
    // so far each time (~10^12 bytes here); the parts are now joined once.
    const PARTS: usize = 1_000_000;
    let first = sample(7);
    let first_len = first.encoded_len();
    let mut req = SendEventRequest { event: Some(first), ack_mode: 1 }.encode_to_vec();
    req.reserve(4 * PARTS);
    for _ in 0..PARTS {
        req.extend_from_slice(&[0x0a, 0x02, 0x10, 0x01]);
    }
    let want = SendEventRequest::decode(&req[..]).unwrap();
    let raw = RawEvent::decode_raw(Bytes::from(req)).unwrap();
    let event = raw.event.unwrap();
    assert_eq!(event.len(), first_len + 2 * PARTS, "every part, each once");
    let v = EventView::parse(&event).unwrap();
    assert_eq!(v.r#type, 1);
    assert_eq!(AdEvent::decode(&event[..]).unwrap(), want.event.unwrap());
    // The same request with one part cut short is refused, as prost refuses it.
    let mut bad = SendEventRequest { event: Some(sample(8)), ack_mode: 0 }.encode_to_vec();
    bad.extend_from_slice(&[0x0a, 0x01, 0x0a, 0x0a, 0x02, 0x01, b'x']);
    assert!(SendEventRequest::decode(&bad[..]).is_err());
    assert!(RawEvent::decode_raw(Bytes::from(bad)).is_err());
}
