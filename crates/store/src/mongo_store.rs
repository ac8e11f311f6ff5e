//! The `mongodb` event backend: one document per event, `_id` = event id, so replaying
//! a batch after a failure is harmless: duplicate-key errors (code 11000) mean "already
//! stored" and are not errors. Batches go in with one unordered `insert_many`. Scans
//! page in (receive time, id) order, with an index on the receive time. Each document
//! also carries the event's time, ad, campaign, type, revenue and video position, which
//! the analytics aggregations (`MongoCounters`) group over.
//!
//! Reading the log back (`log_*`, `group_*`): see `log` for the (receive time, id) order,
//! its cursors and their limits, polling follow mode and consumer groups.

mod log;

use crate::counters::CounterSource;
use crate::eventlog::{GroupPosition, LogPage, Start};
use crate::{Cursor, EventStore, Health, Page, Result, StoreError, StoredEvent};
use adflow_domain::analytics::{Counters, Kind, Retention, Scope};
use adflow_proto::raw::Facts;
use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{Binary, Bson, Document, doc, spec::BinarySubtype};
use mongodb::{Client, Collection, IndexModel};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// Settings of the mongodb backend (`[storage.mongodb]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MongoConfig {
    /// Connection string (default "mongodb://127.0.0.1:27017/?directConnection=true").
    pub uri: String,
    /// Database (default "adflow").
    pub database: String,
    /// Collection (default "events").
    pub collection: String,
    /// Log reads (`EventLog.Read`) leave out events received in the last this-many ms
    /// (default 1000), so a reader cannot pass batches still being inserted (several
    /// commits in flight, several gateways) and skip them; follow-mode lag is at least
    /// this. 0: no hold-back (lowest lag; a reader may skip events inserted out of order).
    pub log_settle_ms: u64,
}

impl Default for MongoConfig {
    fn default() -> Self {
        Self {
            uri: "mongodb://127.0.0.1:27017/?directConnection=true".into(),
            database: "adflow".into(),
            collection: "events".into(),
            log_settle_ms: 1000,
        }
    }
}

fn err(op: &'static str) -> impl FnOnce(mongodb::error::Error) -> StoreError {
    move |e| StoreError::Backend { backend: "mongodb", op, message: e.to_string() }
}

/// Analytics counters computed by aggregations over the event documents.
pub struct MongoCounters {
    coll: Collection<Document>,
    retention: Retention,
}

fn num(d: &Document, k: &str) -> f64 {
    match d.get(k) {
        Some(Bson::Int32(n)) => *n as f64,
        Some(Bson::Int64(n)) => *n as f64,
        Some(Bson::Double(n)) => *n,
        _ => 0.0,
    }
}

/// Adds one `$group` row (count, revenue, video ms of one event type) to `c`.
fn add_row(c: &mut Counters, t: i64, d: &Document) {
    let Ok(i) = usize::try_from(t) else { return };
    if i == 0 || i >= c.by_type.len() {
        return;
    }
    c.by_type[i] += num(d, "n") as u64;
    c.revenue_usd += num(d, "rev");
    if (5..=7).contains(&i) {
        c.video_ms += num(d, "vid") as u64;
    }
}

impl MongoCounters {
    /// The event-time filter of [from, to) with the same bucket resolution as the other
    /// backends: whole hours before the minute floor, whole minutes after it.
    /// (Two disjoint ranges, queried one after the other rather than with `$or`.)
    fn range(&self, from: i64, to: i64, now_ms: i64) -> Vec<Document> {
        let (hours, minutes) = self.retention.plan(from, to, now_ms);
        let (h, m) = (3_600_000, 60_000);
        [(hours.start * h, hours.end * h), (minutes.start * m, minutes.end * m)]
            .into_iter()
            .filter(|(a, b)| a < b)
            .map(|(a, b)| doc! {"ts": {"$gte": a, "$lt": b}})
            .collect()
    }
}

#[async_trait]
impl CounterSource for MongoCounters {
    async fn sum(&self, scope: Scope<'_>, from: i64, to: i64, now_ms: i64) -> Result<Counters> {
        let mut c = Counters::default();
        for mut m in self.range(from, to, now_ms) {
            match scope {
                Scope::All => {}
                Scope::Ad(id) => {
                    m.insert("ad", id);
                }
                Scope::Campaign(id) => {
                    m.insert("cmp", id);
                }
            }
            let pipeline = vec![
                doc! {"$match": m},
                doc! {"$group": {"_id": "$t", "n": {"$sum": 1}, "rev": {"$sum": "$rev"}, "vid": {"$sum": "$vid"}}},
            ];
            let mut cur = self.coll.aggregate(pipeline).await.map_err(err("aggregate"))?;
            while let Some(d) = cur.try_next().await.map_err(err("aggregate"))? {
                add_row(&mut c, num(&d, "_id") as i64, &d);
            }
        }
        Ok(c)
    }

    async fn per_key(&self, kind: Kind, from: i64, to: i64, now_ms: i64) -> Result<Vec<(String, Counters)>> {
        let field = if kind == Kind::Campaign { "$cmp" } else { "$ad" };
        let mut out: HashMap<String, Counters> = HashMap::new();
        for mut m in self.range(from, to, now_ms) {
            for t in 1..=7 {
                m.insert("t", t);
                self.group_by_id(m.clone(), field, t, &mut out).await?;
            }
        }
        out.remove("");
        Ok(out.into_iter().collect())
    }

    async fn recent_for_ads(&self, ids: &[&str], now_ms: i64) -> Result<Vec<Counters>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut by: HashMap<String, Counters> = HashMap::new();
        for mut m in self.range(now_ms - 86_400_000, now_ms + 1, now_ms) {
            m.insert("ad", doc! {"$in": ids.to_vec()});
            for t in 1..=3 {
                m.insert("t", t);
                self.group_by_id(m.clone(), "$ad", t, &mut by).await?;
            }
        }
        Ok(ids.iter().map(|id| by.remove(*id).unwrap_or_default()).collect())
    }
}

impl MongoCounters {
    /// Adds the counts of events of type `t` matching `m`, grouped by `field`, to `out`.
    /// (One group key per aggregation: a plain field path, the most portable `$group`.)
    async fn group_by_id(
        &self,
        m: Document,
        field: &str,
        t: i64,
        out: &mut HashMap<String, Counters>,
    ) -> Result<()> {
        let pipeline = vec![
            doc! {"$match": m},
            doc! {"$group": {"_id": field, "n": {"$sum": 1}, "rev": {"$sum": "$rev"}, "vid": {"$sum": "$vid"}}},
        ];
        let mut cur = self.coll.aggregate(pipeline).await.map_err(err("aggregate"))?;
        while let Some(d) = cur.try_next().await.map_err(err("aggregate"))? {
            let id = d.get_str("_id").unwrap_or_default().to_owned();
            add_row(out.entry(id).or_default(), t, &d);
        }
        Ok(())
    }
}

/// The MongoDB-backed event store.
pub struct MongoStore {
    client: Client,
    coll: Collection<Document>,
    /// Consumer group positions (`<collection>_groups`).
    groups: Collection<Document>,
    /// See `MongoConfig::log_settle_ms`.
    settle_ms: i64,
}

impl MongoStore {
    /// Connects and makes sure the indexes exist: (receive time, id) for scans and log
    /// reads, event time (alone, by ad, by campaign) for the analytics aggregations.
    pub async fn open(cfg: MongoConfig) -> Result<Self> {
        let client = Client::with_uri_str(&cfg.uri).await.map_err(err("connect"))?;
        let coll = client.database(&cfg.database).collection::<Document>(&cfg.collection);
        let db = client.database(&cfg.database);
        let order = if log::compound_id_index_works(&db, &cfg.collection).await {
            doc! {"r": 1, "_id": 1}
        } else {
            tracing::warn!(
                collection = %cfg.collection,
                "this MongoDB-wire server cannot index _id in a compound index: indexing the receive time \
                 only (log reads sort the ids of one millisecond in memory)"
            );
            doc! {"r": 1}
        };
        for keys in [order, doc! {"ts": 1}, doc! {"ad": 1, "ts": 1}, doc! {"cmp": 1, "ts": 1}] {
            coll.create_index(IndexModel::builder().keys(keys).build()).await.map_err(err("create index"))?;
        }
        let groups = client.database(&cfg.database).collection(&format!("{}_groups", cfg.collection));
        let settle_ms = i64::try_from(cfg.log_settle_ms).unwrap_or(i64::MAX);
        Ok(Self { client, coll, groups, settle_ms })
    }

    /// Counters computed from this store's documents.
    pub fn counters(&self, retention: Retention) -> Arc<MongoCounters> {
        Arc::new(MongoCounters { coll: self.coll.clone(), retention })
    }
}

/// True when every write error of `e` is a duplicate key (the event is already stored).
fn only_duplicates(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        mongodb::error::ErrorKind::InsertMany(f) => {
            f.write_concern_error.is_none()
                && f.write_errors.as_ref().is_some_and(|w| w.iter().all(|x| x.code == 11000))
        }
        _ => false,
    }
}

#[async_trait]
impl EventStore for MongoStore {
    fn backend(&self) -> &'static str {
        "mongodb"
    }

    async fn append(&self, events: &[StoredEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut docs = Vec::with_capacity(events.len());
        for e in events {
            let corrupt = |m: String| StoreError::Corrupt {
                path: "mongodb".into(),
                offset: 0,
                reason: format!("unparseable event: {m}"),
            };
            let id = e.view().map(|v| v.event_id.to_owned()).map_err(|m| corrupt(m.to_string()))?;
            let f = Facts::parse(&e.raw).map_err(|m| corrupt(m.to_string()))?;
            // The analytics fields sit next to the raw event, for the counter aggregations.
            let mut d = doc! {
                "_id": &id,
                "r": e.received_at_ms,
                "e": Binary { subtype: BinarySubtype::Generic, bytes: e.raw.to_vec() },
                "ts": f.timestamp_ms,
                "ad": String::from_utf8_lossy(f.ad_id).into_owned(),
                "cmp": String::from_utf8_lossy(f.campaign_id).into_owned(),
                "t": f.r#type,
                "rev": f.revenue_usd.unwrap_or(0.0),
                "vid": f.video_position_ms.max(0),
            };
            // Ids too long for a 64-character log cursor are found by a hash of them.
            if log::needs_hash(e.received_at_ms, &id) {
                d.insert("h", log::id_hash(&id));
            }
            docs.push(d);
        }
        match self.coll.insert_many(docs).ordered(false).await {
            Ok(_) => Ok(()),
            Err(e) if only_duplicates(&e) => Ok(()),
            Err(e) => Err(err("insert_many")(e)),
        }
    }

    async fn scan(&self, from: Option<Cursor>, limit: usize) -> Result<Page> {
        self.scan_since(i64::MIN, from, limit).await
    }

    async fn scan_since(&self, since_ms: i64, from: Option<Cursor>, limit: usize) -> Result<Page> {
        let filter = match &from {
            None if since_ms > i64::MIN => doc! {"r": {"$gte": since_ms}},
            None => doc! {},
            Some(c) => {
                let (r, id) = c.0.split_once(':').ok_or_else(|| StoreError::BadCursor(c.0.clone()))?;
                let r: i64 = r.parse().map_err(|_| StoreError::BadCursor(c.0.clone()))?;
                doc! {"$or": [{"r": {"$gt": r}}, {"r": r, "_id": {"$gt": id}}]}
            }
        };
        let limit = limit.max(1);
        let mut cur = self
            .coll
            .find(filter)
            .sort(doc! {"r": 1, "_id": 1})
            .limit(limit as i64)
            .await
            .map_err(err("find"))?;
        let mut page = Page::default();
        let mut last = None;
        while let Some(d) = cur.try_next().await.map_err(err("find"))? {
            let e = log::event(&d);
            last = Some(format!("{}:{}", e.received_at_ms, d.get_str("_id").unwrap_or_default()));
            page.events.push(e);
        }
        if page.events.len() == limit {
            page.next = last.map(Cursor);
        }
        Ok(page)
    }

    /// "<r>:<id>" or "<r>~<hash>": see `log`.
    fn check_cursor(&self, cursor: &Cursor) -> Result<()> {
        log::check(cursor)
    }

    async fn log_start(&self, start: &Start) -> Result<Cursor> {
        self.start(start).await
    }

    async fn log_read(&self, from: &Cursor, limit: usize) -> Result<LogPage> {
        self.read(from, limit).await
    }

    async fn log_wait(&self, after: &Cursor, timeout: std::time::Duration) {
        self.wait(after, timeout).await
    }

    async fn group_commit(&self, group: &str, cursor: &Cursor) -> Result<()> {
        self.commit_group(group, cursor).await
    }

    async fn group_get(&self, group: &str) -> Result<Option<GroupPosition>> {
        self.get_group(group).await
    }

    async fn health(&self) -> Health {
        match self.client.database("admin").run_command(doc! {"ping": 1}).await {
            Ok(_) => Health { ok: true, detail: "ok".into(), degraded: false },
            Err(e) => Health { ok: false, detail: format!("mongodb: {e}"), degraded: true },
        }
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}
