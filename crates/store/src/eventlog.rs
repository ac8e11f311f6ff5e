//! Reading the event log back (issue 16): the types of the read contract every backend
//! implements through `EventStore` (`log_start`, `log_read`, `log_wait`) and of consumer
//! groups (`group_commit`, `group_get`).
//!
//! A read is a sequence of pages from a cursor; each page carries the cursor just after
//! it, opaque to clients, so a reader resumes exactly where its last processed page ended.
//! Delivery to a consumer group is at-least-once: a group resumes at its last committed
//! cursor, so events after it may be delivered again (idempotent by `event_id`).

use crate::{Cursor, StoredEvent};

/// Where a read of the log starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// The oldest event still stored.
    Oldest,
    /// After the newest committed event (only what is committed from now on).
    Newest,
    /// At a cursor from an earlier page.
    At(Cursor),
    /// At the first event received at or after this time (ms since the epoch).
    Time(i64),
}

/// One page read from the log.
#[derive(Debug, Default)]
pub struct LogPage {
    /// Events in commit order.
    pub events: Vec<StoredEvent>,
    /// The cursor just after this page (equal to where the read started when nothing new).
    pub next: Option<Cursor>,
    /// The read started at a position retention had already removed: it went on from the
    /// oldest event still stored, and what was in between is gone.
    pub gap: bool,
}

/// A consumer group's committed position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupPosition {
    /// Where the group resumes.
    pub cursor: Cursor,
    /// Events retention removed before the group read them (the size limit forced it),
    /// since the group last committed.
    pub lost_events: u64,
}

/// Longest consumer group name.
pub const MAX_GROUP_NAME: usize = 64;

/// Checks a group name: 1..=64 characters of `[A-Za-z0-9._-]`, not starting with '.'
/// (the file store keeps a group as a file named after it: no `.`, `..` or hidden names).
pub fn check_group_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_GROUP_NAME {
        return Err(format!("group name must be 1 to {MAX_GROUP_NAME} characters, got {}", name.len()));
    }
    if name.starts_with('.') {
        return Err(format!("group name may not start with '.', got {name:?}"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!("group name may hold only letters, digits, '.', '_' and '-', not {c:?}"));
    }
    Ok(())
}
