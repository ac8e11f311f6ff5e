//! Replies of `EventLog.Read` as the server builds them: each event is the stored
//! `AdEvent` encoding, carried as bytes. On the wire a `bytes` field and an embedded
//! message field are the same (length-delimited), so clients decode these as the
//! `adflow.v1.ReadBatch` of `eventlog.proto` (checked in the tests below). Reading back
//! at the rate of ingest needs this: decoding and re-encoding every event would cost more
//! than reading it from disk.

use bytes::Bytes;

/// `adflow.v1.LoggedEvent` with the event kept encoded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RawLoggedEvent {
    /// The encoded `AdEvent`.
    #[prost(bytes = "bytes", tag = "1")]
    pub event: Bytes,
    /// When the gateway received it (ms since epoch).
    #[prost(int64, tag = "2")]
    pub received_at_ms: i64,
}

/// `adflow.v1.ReadBatch` with its events kept encoded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RawReadBatch {
    /// The events.
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<RawLoggedEvent>,
    /// The position just after this batch.
    #[prost(string, tag = "2")]
    pub cursor: String,
    /// Events retention removed before the group read them.
    #[prost(uint64, tag = "3")]
    pub lost_events: u64,
    /// The start position had been removed by retention.
    #[prost(bool, tag = "4")]
    pub gap: bool,
    /// This batch reaches the newest commit.
    #[prost(bool, tag = "5")]
    pub caught_up: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{AdEvent, EventType, ReadBatch};
    use prost::Message;

    #[test]
    fn a_raw_batch_decodes_as_the_contracts_read_batch() {
        let events: Vec<AdEvent> = (0..3)
            .map(|i| AdEvent {
                event_id: format!("e{i}"),
                ad_id: "ad".into(),
                r#type: EventType::Click as i32,
                timestamp_ms: 1_700_000_000_000 + i,
                ..Default::default()
            })
            .collect();
        let raw = RawReadBatch {
            events: events
                .iter()
                .enumerate()
                .map(|(i, e)| RawLoggedEvent { event: e.encode_to_vec().into(), received_at_ms: i as i64 })
                .collect(),
            cursor: "3:120".into(),
            lost_events: 7,
            gap: true,
            caught_up: true,
        };
        let typed = ReadBatch::decode(raw.encode_to_vec().as_slice()).unwrap();
        assert_eq!(typed.events.len(), 3);
        for (i, (got, want)) in typed.events.iter().zip(&events).enumerate() {
            assert_eq!(got.event.as_ref(), Some(want));
            assert_eq!(got.received_at_ms, i as i64);
        }
        assert_eq!(
            (typed.cursor.as_str(), typed.lost_events, typed.gap, typed.caught_up),
            ("3:120", 7, true, true)
        );
    }
}
