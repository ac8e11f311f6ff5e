//! An ad's status as the queue reasons about it: names for messages, which statuses are
//! final (never change again) and which count toward an estimated completion. Every
//! backend and the watchers use these, so they live in the core, not in a backend.

use adflow_proto::v1::AdStatus;

/// `AdStatus::Queued` as stored.
pub const QUEUED: i32 = AdStatus::Queued as i32;
/// `AdStatus::Processing` as stored.
pub const PROCESSING: i32 = AdStatus::Processing as i32;
/// `AdStatus::Completed` as stored.
pub const COMPLETED: i32 = AdStatus::Completed as i32;
/// `AdStatus::DeadLetter` as stored.
pub const DEAD: i32 = AdStatus::DeadLetter as i32;
/// `AdStatus::Cancelled` as stored.
pub const CANCELLED: i32 = AdStatus::Cancelled as i32;

/// The lower-case name of a status, for messages.
pub fn name(s: i32) -> &'static str {
    match AdStatus::try_from(s) {
        Ok(AdStatus::Queued) => "queued",
        Ok(AdStatus::Processing) => "processing",
        Ok(AdStatus::Completed) => "completed",
        Ok(AdStatus::DeadLetter) => "dead-lettered",
        Ok(AdStatus::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

/// Completed and cancelled ads never change again.
pub fn is_final(s: i32) -> bool {
    matches!(AdStatus::try_from(s), Ok(AdStatus::Completed | AdStatus::Cancelled))
}

/// Whether an ad's status counts toward an estimated completion (queued or leased).
pub fn is_pending(s: i32) -> bool {
    matches!(AdStatus::try_from(s), Ok(AdStatus::Queued | AdStatus::Processing))
}
