//! Keeping the file store within its disk: retention by age and by total size, and the
//! free-space watermark below which ingest is refused before the filesystem is full.
//!
//! A sweep removes sealed segments oldest first, never the active one:
//! - by age, a segment whose last write (its mtime: sealed segments are never written
//!   again) is older than `retention_hours`, but only once every consumer group has read
//!   past it, so age never costs a group data;
//! - by size, while all segments together exceed `max_bytes`, even ones a group has not
//!   read: the disk comes first. Each such group is moved to the next segment and told
//!   (`lost_events` in its position, a WARN, `eventlog_group_lost_events_total`) how many
//!   events it lost, counted from its position before the segment is removed.
//!
//! The watermark (`min_free_mb`) is checked every second; below it the store asks
//! (`EventStore::refuse_writes`) that new events be refused with "disk nearly full".
//! Metrics: `store_bytes`, `store_segments`, `store_oldest_record_age_seconds`,
//! `store_segments_removed_total`, `store_disk_free_bytes`.

use super::groups::Groups;
use super::log::TimeIndex;
use super::reader::{Item, SegmentReader};
use super::{FileConfig, io, list_segments, parse_cursor, segment_path, sync_dir};
use crate::Cursor;
use crate::Result;
use crate::eventlog::GroupPosition;
use std::fs::File;
use std::path::Path;

/// One segment as the sweep sees it.
struct Seg {
    n: u64,
    len: u64,
    modified_ms: i64,
}

fn segments(dir: &Path) -> Result<Vec<Seg>> {
    let mut out = Vec::new();
    for n in list_segments(dir)? {
        let path = segment_path(dir, n);
        let Ok(m) = std::fs::metadata(&path) else { continue };
        let modified_ms = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        out.push(Seg { n, len: m.len(), modified_ms });
    }
    Ok(out)
}

/// Valid records in segment `n` from `from` on.
fn count_records(dir: &Path, n: u64, from: u64, len: u64) -> Result<u64> {
    let path = segment_path(dir, n);
    let f = File::open(&path).map_err(io("open", &path))?;
    let mut r = SegmentReader::new(f, &path, from, len, Vec::new());
    let mut count = 0;
    while let Some(item) = r.next_item()? {
        if matches!(item, Item::Record(_)) {
            count += 1;
        }
    }
    Ok(count)
}

/// Removes what the retention settings say must go; returns the segments removed.
pub(super) fn sweep(
    cfg: &FileConfig,
    active: u64,
    now_ms: i64,
    groups: &Groups,
    index: &TimeIndex,
) -> Result<u64> {
    let dir = &cfg.dir;
    let segs = segments(dir)?;
    let mut total: u64 = segs.iter().map(|s| s.len).sum();
    let mut positions: Vec<(String, GroupPosition, (u64, u64))> = Vec::new();
    for (name, pos) in groups.all()? {
        if let Ok(at) = parse_cursor(&pos.cursor) {
            positions.push((name, pos, at));
        }
    }
    let max_age_ms = cfg.retention_hours.saturating_mul(3_600_000) as i64;
    let mut removed = 0u64;
    for s in segs.iter().filter(|s| s.n < active) {
        let read_by_all = positions.iter().all(|(_, _, at)| at.0 > s.n || (at.0 == s.n && at.1 >= s.len));
        let too_old = cfg.retention_hours > 0 && s.modified_ms < now_ms.saturating_sub(max_age_ms);
        let too_big = cfg.max_bytes > 0 && total > cfg.max_bytes;
        if !(too_big || (too_old && read_by_all)) {
            break;
        }
        for (name, pos, at) in positions.iter_mut().filter(|(_, _, at)| at.0 <= s.n) {
            let lost = count_records(dir, s.n, if at.0 == s.n { at.1 } else { 0 }, s.len)?;
            pos.lost_events += lost;
            pos.cursor = Cursor(format!("{}:0", s.n + 1));
            *at = (s.n + 1, 0);
            groups.put(name, pos)?;
            metrics::counter!("eventlog_group_lost_events_total", "group" => name.clone()).increment(lost);
            tracing::warn!(
                group = %name,
                segment = s.n,
                lost_events = lost,
                max_bytes = cfg.max_bytes,
                "storage.file.max_bytes forced the removal of a segment this consumer group had not read"
            );
        }
        let path = segment_path(dir, s.n);
        std::fs::remove_file(&path).map_err(io("remove", &path))?;
        total -= s.len;
        removed += 1;
        metrics::counter!("store_segments_removed_total").increment(1);
        tracing::info!(
            segment = s.n,
            bytes = s.len,
            reason = if too_big { "max_bytes" } else { "retention_hours" },
            "retention removed a segment"
        );
        index.forget_below(s.n + 1);
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    metrics::gauge!("store_bytes").set(total as f64);
    metrics::gauge!("store_segments").set((segs.len() as u64 - removed) as f64);
    Ok(removed)
}

/// Free bytes on the filesystem holding `dir` (for unprivileged writers).
pub(super) fn free_bytes(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The refusal to give while free space is under the watermark, or None.
pub(super) fn watermark(cfg: &FileConfig) -> Option<String> {
    if cfg.min_free_mb == 0 {
        return None;
    }
    let free = free_bytes(&cfg.dir)?;
    metrics::gauge!("store_disk_free_bytes").set(free as f64);
    let floor = cfg.min_free_mb.saturating_mul(1 << 20);
    (free < floor).then(|| {
        format!(
            "disk nearly full: {} MiB free under {}, below storage.file.min_free_mb = {}",
            free >> 20,
            cfg.dir.display(),
            cfg.min_free_mb
        )
    })
}
