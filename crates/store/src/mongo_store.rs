//! The `mongodb` event backend: one document per event, `_id` = event id, so replaying
//! a batch after a failure is harmless: duplicate-key errors (code 11000) mean "already
//! stored" and are not errors. Batches go in with one unordered `insert_many`. Scans
//! page in (receive time, id) order, with an index on the receive time.

use crate::{Cursor, EventStore, Health, Page, Result, StoreError, StoredEvent};
use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use mongodb::bson::{Binary, Bson, Document, doc, spec::BinarySubtype};
use mongodb::{Client, Collection, IndexModel};
use serde::{Deserialize, Serialize};

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
}

impl Default for MongoConfig {
    fn default() -> Self {
        Self {
            uri: "mongodb://127.0.0.1:27017/?directConnection=true".into(),
            database: "adflow".into(),
            collection: "events".into(),
        }
    }
}

fn err(op: &'static str) -> impl FnOnce(mongodb::error::Error) -> StoreError {
    move |e| StoreError::Backend { backend: "mongodb", op, message: e.to_string() }
}

/// The MongoDB-backed event store.
pub struct MongoStore {
    client: Client,
    coll: Collection<Document>,
}

impl MongoStore {
    /// Connects and makes sure the scan index exists.
    pub async fn open(cfg: MongoConfig) -> Result<Self> {
        let client = Client::with_uri_str(&cfg.uri).await.map_err(err("connect"))?;
        let coll = client.database(&cfg.database).collection::<Document>(&cfg.collection);
        coll.create_index(IndexModel::builder().keys(doc! {"r": 1}).build())
            .await
            .map_err(err("create index"))?;
        Ok(Self { client, coll })
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
            let id = e.view().map(|v| v.event_id.to_owned()).map_err(|m| StoreError::Corrupt {
                path: "mongodb".into(),
                offset: 0,
                reason: format!("unparseable event: {m}"),
            })?;
            docs.push(doc! {
                "_id": id,
                "r": e.received_at_ms,
                "e": Binary { subtype: BinarySubtype::Generic, bytes: e.raw.to_vec() },
            });
        }
        match self.coll.insert_many(docs).ordered(false).await {
            Ok(_) => Ok(()),
            Err(e) if only_duplicates(&e) => Ok(()),
            Err(e) => Err(err("insert_many")(e)),
        }
    }

    async fn scan(&self, from: Option<Cursor>, limit: usize) -> Result<Page> {
        let filter = match &from {
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
            let r = d.get_i64("r").unwrap_or(0);
            let raw = match d.get("e") {
                Some(Bson::Binary(b)) => Bytes::from(b.bytes.clone()),
                _ => Bytes::new(),
            };
            last = Some(format!("{r}:{}", d.get_str("_id").unwrap_or_default()));
            page.events.push(StoredEvent { received_at_ms: r, raw });
        }
        if page.events.len() == limit {
            page.next = last.map(Cursor);
        }
        Ok(page)
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
