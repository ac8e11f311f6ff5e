//! adflow's domain logic, free of I/O: what makes an ad event valid, how the dedup
//! window remembers event ids, and how committed events become analytics counters.
//! Everything here is synchronous and unit-tested in place; the gateway wires it up.
//!
//! # Layout
//! - `ads`: validation of submitted ads and the `Priority` type (1..=5, checked here only).
//! - `validate`: validation of ad events (the hot path works on the raw bytes).
//! - `dedup` (+ `dedup/table.rs`): the event-id window that makes client retries harmless.
//! - `analytics`: per-ad, per-minute counters of committed events and their sums.
//! - this file: `StoredEvent` (an accepted event as the store keeps it) and `now_ms`.

pub mod ads;
pub mod analytics;
pub mod dedup;
pub mod validate;

pub use adflow_proto::v1 as pb;

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub use adflow_proto::raw::{EventView, Malformed};
use bytes::Bytes;
use prost::Message;

/// An accepted event as the store keeps it: the encoded `AdEvent` exactly as the client
/// sent it (plus `timestamp_ms` when the client left it 0) and the gateway's receive time.
/// Keeping the bytes means the hot path never decodes into owned strings nor re-encodes.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    /// When the gateway accepted the event, Unix milliseconds.
    pub received_at_ms: i64,
    /// The encoded `AdEvent`.
    pub raw: Bytes,
}

impl StoredEvent {
    /// Encodes `event` (for tests, tools and backends that start from a decoded event).
    pub fn encode(received_at_ms: i64, event: &pb::AdEvent) -> Self {
        Self { received_at_ms, raw: event.encode_to_vec().into() }
    }

    /// The event's fields, borrowed.
    pub fn view(&self) -> Result<EventView<'_>, Malformed> {
        EventView::parse(&self.raw)
    }

    /// The event, decoded into owned fields.
    pub fn event(&self) -> Result<pb::AdEvent, prost::DecodeError> {
        pb::AdEvent::decode(&self.raw[..])
    }
}
