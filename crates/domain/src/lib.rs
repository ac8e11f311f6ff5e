//! adflow's domain logic, free of I/O: what makes an ad event valid, how the dedup
//! window remembers event ids, and how committed events become analytics counters.
//! Everything here is synchronous and unit-tested in place; the gateway wires it up.

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

/// An accepted event as the store keeps it: the event plus the gateway's receive time.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    /// When the gateway accepted the event, Unix milliseconds.
    pub received_at_ms: i64,
    /// The event, with `timestamp_ms` filled in (receive time when the client sent 0).
    pub event: pb::AdEvent,
}
