//! The MongoDB queue: ads are documents, shared by every gateway on the database. MongoDB
//! has no server-side scripts here, so every transition is a compare-and-set: an update
//! whose filter names the state it expects (`st: QUEUED` to claim, `lease: <id>` to settle),
//! and a transition that finds nothing was lost to another gateway (or a newer lease).
//!
//! Choosing the next ad reads the head of each partition and the most overdue ads, and
//! runs them through the same scheduling `Index` as the embedded queue; each pick is
//! then claimed with a CAS, skipping those another gateway took first.
//!
//! Collections: `ads` (indexes on status+priority+seq, status+deadline, status+lease
//! deadline, lease, session, family+status, seq, status+finished), `queue_meta` (policy,
//! paused partitions, counters: sequence, lease ids, version), `queue_done` (completions
//! per second), `audit` (agent audit log, by sequence). Without change streams, watches
//! and wake-ups poll: one small read every 100 ms per gateway.
//!
//! Files: this one connects, polls and holds the shared helpers (`Inner`); `document`
//! reads and writes documents (field names from `crate::fields`); `ads`, `leases`,
//! `reports` and `controls` implement the traits.

mod ads;
mod controls;
mod document;
mod leases;
mod reports;

use crate::error::BackendErrorKind;
use crate::fields::*;
use crate::index::MAX_PRIORITY;
use crate::status::{DEAD, PROCESSING, QUEUED};
use crate::watchers::Watchers;
use crate::{AdQueue, MongoQueueConfig, QueueConfig, QueueError, model, policy, status};
use adflow_proto::v1 as pb;
use async_trait::async_trait;
use document::{geti, number, stored_number, to_ad};
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, IndexModel};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// A MongoDB error with its kind: the server unreachable, a connection lost, no server
/// selectable or an error labelled retryable is transient (UNAVAILABLE); anything else
/// (a command refused, a reply or document it cannot decode) is a bug (INTERNAL).
fn mongo_error(e: mongodb::error::Error) -> QueueError {
    use mongodb::error::{ErrorKind, RETRYABLE_WRITE_ERROR, TRANSIENT_TRANSACTION_ERROR};
    let transient = matches!(
        *e.kind,
        ErrorKind::Io(_)
            | ErrorKind::ServerSelection { .. }
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::DnsResolve { .. }
            | ErrorKind::Shutdown
    ) || e.contains_label(RETRYABLE_WRITE_ERROR)
        || e.contains_label(TRANSIENT_TRANSACTION_ERROR);
    let kind = if transient { BackendErrorKind::Unavailable } else { BackendErrorKind::Internal };
    QueueError::Backend { kind, message: format!("mongodb: {e}") }
}

/// Stored data this code cannot read: a bug or damage, not worth a retry.
fn bad_data(what: impl std::fmt::Display) -> QueueError {
    QueueError::internal(format!("mongodb: {what}"))
}

/// The policy as stored in `queue_meta`: by `policy::CODES`, the flag as a bool.
fn policy_doc(p: &pb::Policy) -> Document {
    let mut d = Document::new();
    for (code, v) in policy::stored(p) {
        if code == policy::ANTI_STARVATION {
            d.insert(code, v != 0);
        } else {
            d.insert(code, v as i64);
        }
    }
    d
}

struct Inner {
    ads: Collection<Document>,
    meta: Collection<Document>,
    done: Collection<Document>,
    audit: Collection<Document>,
    instance: String,
    signal: watch::Sender<u64>,
    watchers: Watchers,
    /// When the per-second completion counts were last trimmed, Unix s.
    trimmed: std::sync::atomic::AtomicI64,
}

/// The queue shared through MongoDB.
pub struct MongoQueue {
    inner: Arc<Inner>,
    poller: tokio::task::JoinHandle<()>,
}

impl Inner {
    async fn counter(&self, field: &str, by: i64) -> Result<i64, QueueError> {
        let d = self
            .meta
            .find_one_and_update(doc! {"_id": "counters"}, doc! {"$inc": {field: by}})
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await
            .map_err(mongo_error)?
            .ok_or_else(|| bad_data("counters document missing after upsert"))?;
        Ok(geti(&d, field))
    }

    /// Tells every gateway (through the polled version) that work may be available.
    async fn bump(&self) {
        self.signal.send_modify(|v| *v = v.wrapping_add(1));
        if let Err(e) = self.counter("ver", 1).await {
            tracing::warn!(error = %e, "bumping the queue version failed");
        }
    }

    async fn policy(&self) -> Result<pb::Policy, QueueError> {
        let d = self.meta.find_one(doc! {"_id": "policy"}).await.map_err(mongo_error)?.unwrap_or_default();
        Ok(policy::from_stored(|code| stored_number(&d, code)))
    }

    async fn paused(&self) -> Result<Vec<u8>, QueueError> {
        let d = self.meta.find_one(doc! {"_id": "paused"}).await.map_err(mongo_error)?.unwrap_or_default();
        Ok(d.get_array("p")
            .map(|a| a.iter().filter_map(|b| number(Some(b))).map(|p| p as u8).collect())
            .unwrap_or_default())
    }

    async fn rate(&self, now: i64) -> Result<u64, QueueError> {
        let sec = now / 1000;
        let mut cur =
            self.done.find(doc! {"_id": {"$gt": sec - 60, "$lte": sec}}).await.map_err(mongo_error)?;
        let mut n = 0;
        while let Some(d) = cur.try_next().await.map_err(mongo_error)? {
            n += geti(&d, "n") as u64;
        }
        Ok(n)
    }

    /// Ads ahead of a queued ad under strict priority (an estimate when aging reorders;
    /// in a paused partition, every ad of every unpaused one is served first).
    async fn position(&self, ad: &pb::Ad, seq: i64) -> Result<u64, QueueError> {
        let paused = self.paused().await?;
        let own = ad.priority as u8;
        let first = if paused.contains(&own) { 1 } else { own + 1 };
        let higher: Vec<i64> =
            (first..=MAX_PRIORITY).filter(|p| *p != own && !paused.contains(p)).map(i64::from).collect();
        let mut n = 0;
        if !higher.is_empty() {
            n += self
                .ads
                .count_documents(doc! {ST: QUEUED, PR: {"$in": higher}})
                .await
                .map_err(mongo_error)?;
        }
        n += self
            .ads
            .count_documents(doc! {ST: QUEUED, PR: ad.priority as i64, SEQ: {"$lt": seq}})
            .await
            .map_err(mongo_error)?;
        Ok(n)
    }

    async fn snapshot(&self, d: &Document, now: i64) -> Result<pb::Ad, QueueError> {
        let pending = status::is_pending(geti(d, ST) as i32);
        let per_s = if pending { self.rate(now).await? as f64 / 60.0 } else { 0.0 };
        self.snapshot_at(d, per_s, now).await
    }

    /// `snapshot` with the completion rate already read (one read for a whole page).
    async fn snapshot_at(&self, d: &Document, per_s: f64, now: i64) -> Result<pb::Ad, QueueError> {
        let mut ad = to_ad(d);
        let position = if ad.status == QUEUED { self.position(&ad, geti(d, SEQ)).await? } else { 0 };
        model::fill_computed(&mut ad, position, per_s, now);
        Ok(ad)
    }

    async fn find(&self, id: &str) -> Result<Document, QueueError> {
        crate::parse_id(id)?;
        self.ads
            .find_one(doc! {"_id": id})
            .await
            .map_err(mongo_error)?
            .ok_or_else(|| QueueError::NotFound(id.to_owned()))
    }

    fn deadline(pol: &pb::Policy, d: &Document, enq: i64) -> i64 {
        let mw = match geti(d, MW) {
            0 => pol.max_wait_seconds as i64,
            n => n,
        };
        enq + mw * 1000
    }

    /// Settles a lease held by `filter` as retried (requeued) or dead. Returns the new
    /// status, or None when the lease was no longer current.
    async fn settle_retry(
        &self,
        d: &Document,
        retry: bool,
        error: &str,
        now: i64,
        pol: &pb::Policy,
    ) -> Result<Option<i32>, QueueError> {
        let lease = geti(d, LEASE);
        let filter = doc! {"_id": d.get_str("_id").unwrap_or_default(), LEASE: lease, ST: PROCESSING};
        let requeue = retry && (geti(d, ATT) as u32) < pol.max_attempts;
        let update = if requeue {
            doc! {"$set": {ST: QUEUED, ERR: error, DL: Self::deadline(pol, d, geti(d, ENQ))},
            "$unset": {LEASE: "", SESS: "", LDL: ""}}
        } else {
            doc! {"$set": {ST: DEAD, ERR: error, FIN: now}, "$unset": {LEASE: "", SESS: "", LDL: ""}}
        };
        let r = self.ads.update_one(filter, update).await.map_err(mongo_error)?;
        if r.modified_count == 0 {
            return Ok(None);
        }
        if requeue {
            self.bump().await;
        }
        let st = if requeue { QUEUED } else { DEAD };
        self.notify(d.get_str("_id").unwrap_or_default(), st).await;
        Ok(Some(st))
    }

    /// The live lease `lease_id` of `session`, or why not.
    async fn current(&self, session: &str, lease_id: u64) -> Result<Document, QueueError> {
        let d =
            self.ads.find_one(doc! {LEASE: lease_id as i64, ST: PROCESSING}).await.map_err(mongo_error)?;
        match d {
            Some(d) if d.get_str(SESS).unwrap_or_default() == session => Ok(d),
            Some(_) => Err(QueueError::StaleLease(lease_id)),
            None => {
                let issued = self.meta.find_one(doc! {"_id": "counters"}).await.map_err(mongo_error)?;
                let last = issued.map(|d| geti(&d, "lseq")).unwrap_or(0);
                if lease_id > 0 && lease_id as i64 <= last {
                    Err(QueueError::StaleLease(lease_id))
                } else {
                    Err(QueueError::UnknownLease(lease_id))
                }
            }
        }
    }

    /// Sends an ad's new status (from a change this gateway made) to its local watchers.
    async fn notify(&self, id: &str, status: i32) {
        if !self.watchers.wants(id, status) {
            return;
        }
        let Ok(Some(d)) = self.ads.find_one(doc! {"_id": id}).await else { return };
        let Ok(mut ad) = self.snapshot(&d, adflow_domain::now_ms()).await else { return };
        ad.status = status;
        self.watchers.deliver(id, ad);
    }

    /// Sends statuses changed by other gateways to this gateway's watchers.
    async fn poll_watchers(&self) {
        let ids = self.watchers.ids();
        if ids.is_empty() {
            return;
        }
        let Ok(mut cur) = self.ads.find(doc! {"_id": {"$in": &ids}}).await else { return };
        let now = adflow_domain::now_ms();
        while let Ok(Some(d)) = cur.try_next().await {
            let id = d.get_str("_id").unwrap_or_default().to_owned();
            let st = geti(&d, ST) as i32;
            if !self.watchers.wants(&id, st) {
                continue;
            }
            let Ok(ad) = self.snapshot(&d, now).await else { continue };
            self.watchers.deliver(&id, ad);
        }
    }
}

/// Polls the shared version (wake-ups from other gateways) and the watched ads.
async fn poll(inner: Weak<Inner>) {
    let mut last = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let Some(i) = inner.upgrade() else { return };
        if let Ok(Some(d)) = i.meta.find_one(doc! {"_id": "counters"}).await {
            let v = geti(&d, "ver");
            if last.is_some_and(|l| l != v) {
                i.signal.send_modify(|x| *x = x.wrapping_add(1));
            }
            last = Some(v);
        }
        i.poll_watchers().await;
    }
}

impl MongoQueue {
    /// Connects, creates the indexes, seeds the shared policy where none is stored.
    pub async fn open(cfg: &QueueConfig, mcfg: &MongoQueueConfig) -> Result<Self, QueueError> {
        let client = mongodb::Client::with_uri_str(&mcfg.uri).await.map_err(mongo_error)?;
        let db = client.database(&mcfg.database);
        let ads = db.collection::<Document>("ads");
        for keys in [
            doc! {ST: 1, PR: 1, SEQ: 1},
            doc! {ST: 1, DL: 1},
            doc! {ST: 1, LDL: 1},
            doc! {LEASE: 1},
            doc! {SESS: 1},
            doc! {FAM: 1, ST: 1},
            doc! {SEQ: -1},
            doc! {ST: 1, FIN: -1},
        ] {
            ads.create_index(IndexModel::builder().keys(keys).build()).await.map_err(mongo_error)?;
        }
        let audit = db.collection::<Document>("audit");
        audit
            .create_index(IndexModel::builder().keys(doc! {"seq": -1}).build())
            .await
            .map_err(mongo_error)?;
        let meta = db.collection::<Document>("queue_meta");
        let p = cfg.policy();
        let seed = policy_doc(&p);
        meta.update_one(doc! {"_id": "policy"}, doc! {"$setOnInsert": seed})
            .upsert(true)
            .await
            .map_err(mongo_error)?;
        let inner = Arc::new(Inner {
            ads,
            meta,
            done: db.collection("queue_done"),
            audit,
            instance: uuid::Uuid::new_v4().simple().to_string(),
            signal: watch::channel(0).0,
            watchers: Watchers::default(),
            trimmed: std::sync::atomic::AtomicI64::new(0),
        });
        let poller = tokio::spawn(poll(Arc::downgrade(&inner)));
        tracing::info!(database = %mcfg.database, "mongodb ad queue ready");
        Ok(Self { inner, poller })
    }

    /// A worker session as stored on a leased ad: scoped by this handle's random instance
    /// id, as gateways number their sessions from 1 in every process. (Lease ids come from
    /// the shared `lseq` counter, so they never repeat across gateways or restarts.)
    fn session(&self, s: u64) -> String {
        format!("{}-{s}", self.inner.instance)
    }
}

impl Drop for MongoQueue {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

#[async_trait]
impl AdQueue for MongoQueue {
    async fn close(&self) {
        self.poller.abort();
    }
}
