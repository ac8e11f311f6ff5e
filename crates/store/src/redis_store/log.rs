//! The Redis stream read back as a log (see `crate::eventlog`).
//!
//! **Entries.** One stream entry holds one commit: its events in order, as field pairs
//! `e` = the encoded event, each preceded by `r` = its receive time where that changes
//! (earlier versions wrote one event per entry, `r` then `e`; both read the same). One XADD
//! per commit instead of one per event is what lets a commit cost Redis little more than
//! its bytes (BENCHMARKS.md, issue 15).
//!
//! **Cursors** are positions `<ms>-<seq>` (a stream entry id, e.g. "1700000000000-5"),
//! read as "after this entry", or `<ms>-<seq>:<i>`, "after event i (from 0) of this entry"
//! when a page ends inside an entry. A read is an exclusive XRANGE from the entry (an
//! inclusive one, skipping events 0..=i, for an event position). The oldest position is
//! "0-0"; the newest is the stream's last entry id ("0-0" while the stream is empty). Ids
//! are assigned by the Redis server when it appends (its clock in ms, then a sequence), so
//! a position is at most 48 characters, inside the 64 the API allows.
//!
//! **Time starts** use those ids: a read from time `t` starts at the first entry the
//! *server appended* at or after `t` (ms since the epoch by the Redis server's clock), not
//! at the gateway's receive time that every event also carries. The two differ by the
//! batching delay (a few ms: an event received just before `t` may be included) plus any
//! clock difference between the gateway hosts and Redis.
//!
//! **Gaps.** The stream is trimmed to about `max_len` events (XTRIM MAXLEN ~ on entries,
//! `max_len` divided by the recent events per entry), oldest
//! first, read or not. A cursor older than the stream's first entry, with room for entries
//! between them, reads on from the first entry and the page says `gap`. That is the only
//! loss accounting Redis offers: there are no per-group lost-event counts
//! (`GroupPosition::lost_events` is always 0), and trimming never waits for a lagging
//! group. Size `max_len` for the slowest consumer's worst lag.
//!
//! **Follow.** `log_wait` is `XREAD BLOCK <timeout> STREAMS <key> <after>`: it returns as
//! soon as an entry after the cursor exists (at once if one already does), woken by the
//! XADD itself. A blocked XREAD holds its connection, so waiters never use the shared
//! multiplexed connection: each takes a dedicated one from a small pool (a new one when
//! the pool is empty; at most `POOL_IDLE` are kept between waits). A wait that is
//! cancelled mid-XREAD drops its connection, which ends the server-side block.
//!
//! **Consumer groups** are fields of one hash, `<stream key>:groups` (same hash tag as
//! the stream, so same cluster slot): field = group name, value = cursor. HSET is as
//! durable as the server's persistence settings (AOF `appendfsync`) make it.

use super::{RedisStore, err};
use crate::eventlog::{GroupPosition, LogPage, Start};
use crate::{Cursor, Result, StoreError, StoredEvent};
use bytes::Bytes;
use redis::Value;
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

/// One stream entry as XRANGE returns it.
pub(super) type Row = (String, Vec<(String, Vec<u8>)>);

/// Decodes an entry's events (`r` = receive time of the events after it, `e` = an event).
pub(super) fn decode(fields: Vec<(String, Vec<u8>)>) -> Vec<StoredEvent> {
    let mut received_at_ms = 0;
    let mut out = Vec::with_capacity(fields.len() / 2 + 1);
    for (k, v) in fields {
        match k.as_str() {
            "r" => received_at_ms = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()).unwrap_or(0),
            "e" => out.push(StoredEvent { received_at_ms, raw: Bytes::from(v) }),
            _ => {}
        }
    }
    out
}

/// Adds `events` to an XADD as one entry (see the module docs for the layout).
pub(super) fn encode(cmd: &mut redis::Cmd, events: &[StoredEvent]) {
    let mut last = None;
    for e in events {
        if last != Some(e.received_at_ms) {
            cmd.arg("r").arg(e.received_at_ms);
            last = Some(e.received_at_ms);
        }
        cmd.arg("e").arg(e.raw.as_ref());
    }
}

/// A position in the log: after a whole entry, or after one event of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Pos {
    pub sid: Sid,
    /// Events 0..=i of the entry were read.
    pub event: Option<u32>,
}

impl Pos {
    /// Parses `<ms>-<seq>` or `<ms>-<seq>:<i>`; anything else is `BadCursor`.
    pub fn parse(s: &str) -> Result<Pos> {
        match s.split_once(':') {
            None => Ok(Pos { sid: Sid::parse(s)?, event: None }),
            Some((sid, i)) => {
                let bad = || StoreError::BadCursor(s.to_owned());
                if i.is_empty() || i.len() > 9 || !i.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                Ok(Pos {
                    sid: Sid::parse(sid).map_err(|_| bad())?,
                    event: Some(i.parse().map_err(|_| bad())?),
                })
            }
        }
    }

    /// The position as a cursor.
    pub fn cursor(self) -> Cursor {
        match self.event {
            None => self.sid.cursor(),
            Some(i) => Cursor(format!("{}:{i}", self.sid)),
        }
    }
}

/// Entries fetched by a page's first XRANGE (an entry holds a commit).
const ENTRIES_PER_FETCH: usize = 8;
/// Most entries one XRANGE fetches.
const MAX_ENTRIES_PER_FETCH: usize = 1024;

/// A stream entry id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Sid {
    ms: u64,
    seq: u64,
}

impl Sid {
    /// "0-0": before every entry.
    pub const ZERO: Sid = Sid { ms: 0, seq: 0 };

    /// Parses `<ms>-<seq>` (both decimal u64); anything else is `BadCursor`.
    pub fn parse(s: &str) -> Result<Sid> {
        let bad = || StoreError::BadCursor(s.to_owned());
        let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
        let digits = |x: &str| !x.is_empty() && x.len() <= 20 && x.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(bad());
        }
        Ok(Sid { ms: ms.parse().map_err(|_| bad())?, seq: seq.parse().map_err(|_| bad())? })
    }

    /// Just before the first id the server may assign at `ms`.
    pub fn before_ms(ms: i64) -> Sid {
        Sid { ms: ms.max(0) as u64, seq: 0 }.pred()
    }

    /// The next possible id.
    fn succ(self) -> Sid {
        match self.seq.checked_add(1) {
            Some(seq) => Sid { ms: self.ms, seq },
            None => Sid { ms: self.ms.saturating_add(1), seq: 0 },
        }
    }

    /// The previous possible id (ZERO stays ZERO).
    fn pred(self) -> Sid {
        match self.seq.checked_sub(1) {
            Some(seq) => Sid { ms: self.ms, seq },
            None if self.ms == 0 => Sid::ZERO,
            None => Sid { ms: self.ms - 1, seq: u64::MAX },
        }
    }

    fn cursor(self) -> Cursor {
        Cursor(self.to_string())
    }
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A connection that may block (XREAD BLOCK) without stalling anyone else.
enum WaitConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// Idle waiting connections kept for the next wait.
const POOL_IDLE: usize = 16;
/// Longest single XREAD BLOCK (a longer wait returns early, which callers allow).
const MAX_BLOCK: Duration = Duration::from_secs(300);

/// Dedicated connections for `log_wait`.
#[derive(Default)]
pub(super) struct Waiters {
    idle: Mutex<Vec<WaitConn>>,
}

impl Waiters {
    fn take(&self) -> Option<WaitConn> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn give_back(&self, c: WaitConn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < POOL_IDLE {
            idle.push(c);
        }
    }
}

impl RedisStore {
    fn groups_key(&self) -> String {
        format!("{}:groups", self.cfg.stream_key)
    }

    /// A new connection with no response timeout of its own (callers bound the wait).
    async fn wait_conn(&self) -> redis::RedisResult<WaitConn> {
        if self.cfg.cluster_nodes.is_empty() {
            let client = redis::Client::open(self.cfg.url.as_str())?;
            let c = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(None);
            Ok(WaitConn::Single(client.get_multiplexed_async_connection_with_config(&c).await?))
        } else {
            let client =
                redis::cluster::ClusterClient::builder(self.cfg.cluster_nodes.iter().map(String::as_str))
                    .connection_timeout(Duration::from_secs(1))
                    .response_timeout(MAX_BLOCK + Duration::from_secs(5))
                    .build()?;
            Ok(WaitConn::Cluster(client.get_async_connection().await?))
        }
    }

    /// The stream's first (`oldest`) or last entry id, if it has entries.
    async fn end_id(&self, oldest: bool) -> Result<Option<Sid>> {
        let (cmd, a, b) = if oldest { ("XRANGE", "-", "+") } else { ("XREVRANGE", "+", "-") };
        let mut con = self.con.clone();
        let rows: Vec<Row> = redis::cmd(cmd)
            .arg(&self.cfg.stream_key)
            .arg(a)
            .arg(b)
            .arg("COUNT")
            .arg(1)
            .query_async(&mut con)
            .await
            .map_err(err(cmd))?;
        rows.first().map(|(id, _)| Sid::parse(id)).transpose()
    }

    pub(super) async fn start(&self, start: &Start) -> Result<Cursor> {
        Ok(match start {
            Start::Oldest => Sid::ZERO.cursor(),
            Start::Newest => self.end_id(false).await?.unwrap_or(Sid::ZERO).cursor(),
            Start::At(c) => Pos::parse(&c.0)?.cursor(),
            Start::Time(t) => {
                // Just before the first entry appended at or after t (the newest when none).
                let mut con = self.con.clone();
                let rows: Vec<Row> = redis::cmd("XRANGE")
                    .arg(&self.cfg.stream_key)
                    .arg(format!("{}-0", (*t).max(0)))
                    .arg("+")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut con)
                    .await
                    .map_err(err("XRANGE"))?;
                match rows.first() {
                    Some((id, _)) => Sid::parse(id)?.pred().cursor(),
                    None => self.end_id(false).await?.unwrap_or(Sid::ZERO).cursor(),
                }
            }
        })
    }

    /// Up to `limit` events after `at`, the position after the last one, and the stream's
    /// first entry id (to tell a trimmed cursor). `since_ms` > 0 starts a cursorless read
    /// a minute before that time (entry ids are close to receive times).
    pub(super) async fn range(&self, at: Pos, limit: usize) -> Result<(Vec<StoredEvent>, Pos, Option<Sid>)> {
        let key = &self.cfg.stream_key;
        let limit = limit.max(1);
        let mut con = self.con.clone();
        let mut events = Vec::new();
        let mut pos = at;
        let mut first = None;
        let mut probe_first = true;
        // Entries per fetch follow the events per entry seen so far (commits hold
        // thousands; entries of the older layout one): pages cost few round trips and
        // fetch little beyond what they return.
        let (mut seen_entries, mut seen_events) = (0usize, 0usize);
        loop {
            // From inside an entry: that entry alone, inclusive; else after it.
            let (start, count) = match pos.event {
                Some(_) => (pos.sid.to_string(), 1),
                None => {
                    let per_entry = if seen_entries == 0 { 0 } else { seen_events.div_ceil(seen_entries) };
                    let count = match per_entry {
                        0 => ENTRIES_PER_FETCH,
                        n => ((limit - events.len()).div_ceil(n)).clamp(1, MAX_ENTRIES_PER_FETCH),
                    };
                    (format!("({}", pos.sid), count)
                }
            };
            let mut p = redis::pipe();
            if probe_first {
                p.cmd("XRANGE").arg(key).arg("-").arg("+").arg("COUNT").arg(1);
            }
            p.cmd("XRANGE").arg(key).arg(&start).arg("+").arg("COUNT").arg(count);
            let rows: Vec<Row> = if probe_first {
                let (f, rows): (Vec<Row>, Vec<Row>) = p.query_async(&mut con).await.map_err(err("XRANGE"))?;
                first = f.first().map(|(id, _)| Sid::parse(id)).transpose()?;
                rows
            } else {
                let (rows,): (Vec<Row>,) = p.query_async(&mut con).await.map_err(err("XRANGE"))?;
                rows
            };
            probe_first = false;
            let fetched = rows.len();
            if pos.event.is_some()
                && rows.first().map(|(id, _)| id.as_str()) != Some(pos.sid.to_string().as_str())
            {
                // The entry the position points into is not there (trimmed, or never
                // was): the position means "after it".
                pos.event = None;
            }
            for (id, fields) in rows {
                let sid = Sid::parse(&id)?;
                let mut evs = decode(fields);
                let n = evs.len();
                seen_entries += 1;
                seen_events += n;
                let skip = match pos.event {
                    // The entry the position is inside of: skip what was read.
                    Some(i) if sid == pos.sid => (i as usize).saturating_add(1).min(n),
                    _ => 0,
                };
                let end = skip + (n - skip).min(limit - events.len());
                events.extend(evs.drain(skip..end));
                // A page that ends inside the entry says how far; else the whole entry.
                pos = Pos { sid, event: (end < n).then(|| end as u32 - 1) };
                if events.len() >= limit {
                    return Ok((events, pos, first));
                }
            }
            if fetched < count && pos.event.is_none() {
                return Ok((events, pos, first));
            }
        }
    }

    pub(super) async fn read(&self, from: &Cursor, limit: usize) -> Result<LogPage> {
        let at = Pos::parse(&from.0)?;
        let (events, next, first) = self.range(at, limit).await?;
        // Entries may have existed between the cursor and the first one left: trimmed.
        let gap = at.sid != Sid::ZERO
            && first.is_some_and(|f| match at.event {
                None => f > at.sid.succ(),
                Some(_) => f > at.sid,
            });
        Ok(LogPage { events, next: Some(next.cursor()), gap })
    }

    pub(super) async fn wait(&self, after: &Cursor, timeout: Duration) {
        let Ok(pos) = Pos::parse(&after.0) else { return };
        if pos.event.is_some() {
            return; // inside an entry: the rest of it is already there
        }
        let at = pos.sid;
        let block = timeout.min(MAX_BLOCK);
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(1).arg("BLOCK").arg(block.as_millis().max(1) as u64);
        cmd.arg("STREAMS").arg(&self.cfg.stream_key).arg(at.to_string());
        let conn = match self.waiters.take() {
            Some(c) => Ok(c),
            None => self.wait_conn().await,
        };
        let res = match conn {
            Ok(mut c) => {
                let q = async {
                    match &mut c {
                        WaitConn::Single(s) => cmd.query_async::<Value>(s).await,
                        WaitConn::Cluster(s) => cmd.query_async::<Value>(s).await,
                    }
                };
                match tokio::time::timeout(block + Duration::from_secs(5), q).await {
                    Ok(Ok(_)) => {
                        self.waiters.give_back(c);
                        Ok(())
                    }
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("XREAD BLOCK did not return in time".into()),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = res {
            // The connection is dropped; don't spin while Redis is away.
            tracing::debug!(error = %e, "redis log wait failed");
            tokio::time::sleep(timeout.min(Duration::from_millis(200))).await;
        }
    }

    pub(super) async fn commit_group(&self, group: &str, cursor: &Cursor) -> Result<()> {
        let at = Pos::parse(&cursor.0)?.cursor().0;
        let mut con = self.con.clone();
        let _: () = redis::cmd("HSET")
            .arg(self.groups_key())
            .arg(group)
            .arg(at)
            .query_async(&mut con)
            .await
            .map_err(err("HSET"))?;
        Ok(())
    }

    pub(super) async fn get_group(&self, group: &str) -> Result<Option<GroupPosition>> {
        let mut con = self.con.clone();
        let c: Option<String> = redis::cmd("HGET")
            .arg(self.groups_key())
            .arg(group)
            .query_async(&mut con)
            .await
            .map_err(err("HGET"))?;
        Ok(c.map(|c| GroupPosition { cursor: Cursor(c), lost_events: 0 }))
    }
}

#[cfg(test)]
mod tests {
    use super::Sid;

    #[test]
    fn ids_parse_order_and_step() {
        let a = Sid::parse("1700000000000-5").unwrap();
        assert_eq!(a.to_string(), "1700000000000-5");
        assert!(a < Sid::parse("1700000000000-6").unwrap() && a < Sid::parse("1700000000001-0").unwrap());
        assert_eq!(a.succ().pred(), a);
        assert_eq!(Sid::parse("5-0").unwrap().pred().to_string(), format!("4-{}", u64::MAX));
        assert_eq!(Sid::parse("4-18446744073709551615").unwrap().succ().to_string(), "5-0");
        assert_eq!(Sid::ZERO.pred(), Sid::ZERO);
        for bad in
            ["", "-", "1-", "-1", "1:2", "a-1", "1-2-3", "+1-2", " 1-2", "99999999999999999999999-0", "$"]
        {
            assert!(Sid::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
