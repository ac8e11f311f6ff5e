//! The event collection read back as a log (see `crate::eventlog`).
//!
//! **Order** is (receive time `r`, event id `_id`), the order `scan` already pages in,
//! served by the compound index `{r: 1, _id: 1}` created at open. (Some MongoDB-wire
//! servers, such as the CI's, cannot put `_id` in a compound index: inserts then fail. A
//! probe in a scratch collection at open finds that out, and such servers get `{r: 1}`.)
//!
//! **Cursors** name the last document read: `"<r>:<_id>"` (e.g.
//! `"1700000000000:0190f3a2-..."`), read as "every document after (r, _id)". Event ids may
//! be up to 128 bytes but the API allows 64-character cursors, so when `"<r>:<_id>"` would
//! be longer than 64 characters the cursor is `"<r>~<h>"` instead, `h` being the first 128
//! bits of SHA-256 of the id in hex; such documents carry `h` (written on insert, only
//! for them), and a read first looks up the id of `{r, h}` to continue from. Either form
//! is at most 64 characters (the hashed one at most 20 + 1 + 32 = 53). The oldest position is `"<i64::MIN>:"`, a time
//! start is `"<t>:"` (an empty id sorts before every id, so it reads everything received at
//! or after `t`, by the gateway's receive time), and the newest is the cursor of the last
//! document (the oldest position while the collection is empty).
//!
//! **Settling.** This order is the commit order only while documents are inserted in
//! (receive time, id) order, and they are not: the gateway keeps several commits in
//! flight on this backend, a batch can end in the middle of a millisecond, several
//! gateways insert at once. A reader that had passed a position would never see a
//! document inserted before it afterwards. So log reads (and `log_wait`) only return
//! documents received more than `log_settle_ms` (default 1000) ago: a batch inserted
//! within that time of its receive time is never skipped. The price is follow-mode lag
//! (at least the settle time) and a read "to the end" stopping that far behind the
//! newest commit. Still skipped: inserts later than that (a spill buffer replayed after
//! an outage, gateways whose clocks differ by more). The newest position is the last
//! document stored, settled or not.
//!
//! **Gaps.** MongoDB keeps events until someone deletes them (see README: retention). A
//! read from a position whose document is gone while the oldest document left sorts
//! after it says `gap`: something between them may have been removed (conservative: it
//! cannot tell whether anything was). There is no per-group lost-event count.
//!
//! **Follow.** Change streams need a replica set (the CI's MongoDB-wire server has none),
//! so `log_wait` polls: one indexed `find_one` for a document after the cursor every
//! `POLL` (100 ms) until one exists or the timeout passes. Follow-mode lag is therefore up
//! to 100 ms on this backend.
//!
//! **Consumer groups** are documents `{_id: <group>, cursor}` of the collection
//! `<collection>_groups` (default `events_groups`; one per event collection, so two event
//! collections in one database keep separate groups), written with an upsert at the
//! client's write concern.

use super::{MongoStore, err};
use crate::eventlog::{GroupPosition, LogPage, Start};
use crate::{Cursor, Result, StoreError, StoredEvent};
use bytes::Bytes;
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Longest cursor the API accepts.
const MAX_CURSOR: usize = 64;
/// How often `log_wait` looks for new documents.
const POLL: Duration = Duration::from_millis(100);

/// The first 128 bits of SHA-256 of `id`, in lowercase hex (32 characters).
pub(super) fn id_hash(id: &str) -> String {
    let d = Sha256::digest(id.as_bytes());
    d[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// True when documents received at `r` with id `id` need the hash field `h`.
pub(super) fn needs_hash(r: i64, id: &str) -> bool {
    r.to_string().len() + 1 + id.len() > MAX_CURSOR
}

/// The cursor just after document (r, id).
fn cursor_of(r: i64, id: &str) -> Cursor {
    if needs_hash(r, id) { Cursor(format!("{r}~{}", id_hash(id))) } else { Cursor(format!("{r}:{id}")) }
}

/// True when the server takes inserts into a collection indexed on `{r: 1, _id: 1}`
/// (tried on a scratch collection, dropped again).
pub(super) async fn compound_id_index_works(db: &mongodb::Database, coll: &str) -> bool {
    // A probe collection of this call only: gateways starting together on one database
    // must not drop each other's probe (a probe dropped between its index and its insert
    // would pass without the index, and the real collection would get an index this
    // server then refuses every insert under).
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let probe = db.collection::<Document>(&format!("{coll}_index_probe_{}_{nanos}", std::process::id()));
    let _ = probe.drop().await;
    let keys = mongodb::IndexModel::builder().keys(doc! {"r": 1, "_id": 1}).build();
    let ok = probe.create_index(keys).await.is_ok()
        && probe.insert_one(doc! {"_id": "probe", "r": 0}).await.is_ok();
    let _ = probe.drop().await;
    ok
}

/// A parsed cursor.
#[derive(Debug, PartialEq)]
enum Pos {
    /// After (r, id); an empty id is "before everything received at r".
    After(i64, String),
    /// After the document received at r whose id hashes to h.
    Hashed(i64, String),
}

fn parse(c: &Cursor) -> Result<Pos> {
    let bad = || StoreError::BadCursor(c.0.clone());
    let s = c.0.as_str();
    let i = s.find([':', '~']).ok_or_else(bad)?;
    let r: i64 = s[..i].parse().map_err(|_| bad())?;
    let rest = &s[i + 1..];
    if s.as_bytes()[i] == b':' {
        return Ok(Pos::After(r, rest.to_owned()));
    }
    if rest.len() != 32 || !rest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(bad());
    }
    Ok(Pos::Hashed(r, rest.to_owned()))
}

/// Checks a cursor's syntax.
pub(super) fn check(c: &Cursor) -> Result<()> {
    parse(c).map(|_| ())
}

/// The receive time of a document, whatever integer width the server returned.
pub(super) fn received(d: &Document) -> i64 {
    match d.get("r") {
        Some(Bson::Int64(v)) => *v,
        Some(Bson::Int32(v)) => i64::from(*v),
        Some(Bson::Double(v)) => *v as i64,
        Some(Bson::DateTime(v)) => v.timestamp_millis(),
        _ => 0,
    }
}

/// The stored event of a document.
pub(super) fn event(d: &Document) -> StoredEvent {
    let raw = match d.get("e") {
        Some(Bson::Binary(b)) => Bytes::from(b.bytes.clone()),
        _ => Bytes::new(),
    };
    StoredEvent { received_at_ms: received(d), raw }
}

fn after(r: i64, id: &str) -> Document {
    doc! {"$or": [{"r": {"$gt": r}}, {"r": r, "_id": {"$gt": id}}]}
}

impl MongoStore {
    /// `filter`, limited to documents received before the settle horizon.
    fn settled(&self, filter: Document) -> Document {
        if self.settle_ms == 0 {
            return filter;
        }
        let horizon = adflow_domain::now_ms().saturating_sub(self.settle_ms);
        doc! {"$and": [filter, {"r": {"$lt": horizon}}]}
    }

    /// The first or last document in log order.
    async fn end_doc(&self, oldest: bool) -> Result<Option<(i64, String)>> {
        let dir = if oldest { 1 } else { -1 };
        let d = self
            .coll
            .find_one(doc! {})
            .sort(doc! {"r": dir, "_id": dir})
            .projection(doc! {"r": 1})
            .await
            .map_err(err("find"))?;
        Ok(d.map(|d| (received(&d), d.get_str("_id").unwrap_or_default().to_owned())))
    }

    /// The filter of everything after `pos`, and whether retention may have removed
    /// documents right after it (`gap`).
    async fn resolve(&self, pos: &Pos, check_gap: bool) -> Result<(Document, bool)> {
        let (r, id) = match pos {
            Pos::After(r, id) if id.is_empty() => return Ok((after(*r, ""), false)),
            Pos::After(r, id) => (*r, Some(id.clone())),
            Pos::Hashed(r, h) => {
                let d = self
                    .coll
                    .find_one(doc! {"r": *r, "h": h.as_str()})
                    .projection(doc! {"_id": 1})
                    .await
                    .map_err(err("find"))?;
                (*r, d.and_then(|d| d.get_str("_id").ok().map(str::to_owned)))
            }
        };
        let Some(id) = id else {
            // The document is gone (removed by retention): go on after its millisecond.
            let gap = check_gap && self.end_doc(true).await?.is_some_and(|(fr, _)| fr > r);
            return Ok((doc! {"r": {"$gt": r}}, gap));
        };
        let mut gap = false;
        if check_gap {
            let exists = self
                .coll
                .find_one(doc! {"_id": id.as_str()})
                .projection(doc! {"_id": 1})
                .await
                .map_err(err("find"))?;
            if exists.is_none() {
                gap =
                    self.end_doc(true).await?.is_some_and(|(fr, fid)| (fr, fid.as_str()) > (r, id.as_str()));
            }
        }
        Ok((after(r, &id), gap))
    }

    pub(super) async fn start(&self, start: &Start) -> Result<Cursor> {
        Ok(match start {
            Start::Oldest => Cursor(format!("{}:", i64::MIN)),
            Start::Newest => match self.end_doc(false).await? {
                Some((r, id)) => cursor_of(r, &id),
                None => Cursor(format!("{}:", i64::MIN)),
            },
            Start::At(c) => {
                check(c)?;
                c.clone()
            }
            Start::Time(t) => Cursor(format!("{t}:")),
        })
    }

    pub(super) async fn read(&self, from: &Cursor, limit: usize) -> Result<LogPage> {
        let pos = parse(from)?;
        let (filter, gap) = self.resolve(&pos, true).await?;
        let filter = self.settled(filter);
        let limit = limit.max(1);
        let mut cur = self
            .coll
            .find(filter)
            .sort(doc! {"r": 1, "_id": 1})
            .projection(doc! {"r": 1, "e": 1})
            .limit(limit as i64)
            .await
            .map_err(err("find"))?;
        let mut page = LogPage { events: Vec::new(), next: None, gap };
        let mut last = None;
        while let Some(d) = cur.try_next().await.map_err(err("find"))? {
            let e = event(&d);
            last = Some((e.received_at_ms, d.get_str("_id").unwrap_or_default().to_owned()));
            page.events.push(e);
        }
        page.next = Some(match last {
            Some((r, id)) => cursor_of(r, &id),
            None => from.clone(),
        });
        Ok(page)
    }

    pub(super) async fn wait(&self, after: &Cursor, timeout: Duration) {
        let Ok(pos) = parse(after) else { return };
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let found = match self.resolve(&pos, false).await {
                Ok((filter, _)) => {
                    let filter = self.settled(filter);
                    self.coll.find_one(filter).projection(doc! {"_id": 1}).await.map(|d| d.is_some())
                }
                Err(_) => Ok(false),
            };
            if matches!(found, Ok(true)) {
                return;
            }
            let now = tokio::time::Instant::now();
            if now >= until {
                return;
            }
            tokio::time::sleep(POLL.min(until - now)).await;
        }
    }

    pub(super) async fn commit_group(&self, group: &str, cursor: &Cursor) -> Result<()> {
        check(cursor)?;
        self.groups
            .update_one(doc! {"_id": group}, doc! {"$set": {"cursor": cursor.0.as_str()}})
            .upsert(true)
            .await
            .map_err(err("update group"))?;
        Ok(())
    }

    pub(super) async fn get_group(&self, group: &str) -> Result<Option<GroupPosition>> {
        let d = self.groups.find_one(doc! {"_id": group}).await.map_err(err("find group"))?;
        Ok(d.and_then(|d| {
            d.get_str("cursor").ok().map(|c| GroupPosition { cursor: Cursor(c.into()), lost_events: 0 })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_fit_in_64_characters_and_parse_back() {
        let c = cursor_of(1_700_000_000_000, "0190f3a2-7b1c-7def-8123-456789abcdef");
        assert_eq!(
            parse(&c).unwrap(),
            Pos::After(1_700_000_000_000, "0190f3a2-7b1c-7def-8123-456789abcdef".into())
        );
        let long = "x".repeat(128);
        for r in [i64::MIN, -1, 0, 1_700_000_000_000, i64::MAX] {
            let c = cursor_of(r, &long);
            assert!(c.0.len() <= 64, "{} is {} long", c.0, c.0.len());
            assert_eq!(parse(&c).unwrap(), Pos::Hashed(r, id_hash(&long)));
        }
        // An id of exactly the room left keeps the plain form; one more byte hashes.
        let room = 64 - "1700000000000:".len();
        assert!(cursor_of(1_700_000_000_000, &"a".repeat(room)).0.contains(':'));
        assert!(cursor_of(1_700_000_000_000, &"a".repeat(room + 1)).0.contains('~'));
        assert_eq!(parse(&Cursor(format!("{}:", i64::MIN))).unwrap(), Pos::After(i64::MIN, String::new()));
        assert_eq!(parse(&Cursor("5:a:b~c".into())).unwrap(), Pos::After(5, "a:b~c".into()));
        for bad in ["", "abc", ":x", "x:1", "1~xyz", "1~", &format!("1~{}", "A".repeat(32)), "1.5:x"] {
            assert!(parse(&Cursor(bad.into())).is_err(), "{bad:?} was accepted");
        }
    }
}
