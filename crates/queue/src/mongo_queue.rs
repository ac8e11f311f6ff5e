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

use crate::index::{Index, MAX_PRIORITY, PartitionMask, Rules};
use crate::policy::{self, QueueConfig};
use crate::watchers::Watchers;
use crate::{AdQueue, Expired, FamilyStats, Leased, QueueError};
use adflow_proto::v1::{self as pb, AdStatus};
use futures::TryStreamExt;
use mongodb::bson::{Binary, Bson, Document, doc, spec::BinarySubtype};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, IndexModel};
use prost::Message;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Settings of the MongoDB queue (`[queue.mongodb]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MongoQueueConfig {
    /// Connection string (default "mongodb://127.0.0.1:27017/?directConnection=true").
    pub uri: String,
    /// Database (default "adflow").
    pub database: String,
}

impl Default for MongoQueueConfig {
    fn default() -> Self {
        Self { uri: "mongodb://127.0.0.1:27017/?directConnection=true".into(), database: "adflow".into() }
    }
}

const QUEUED: i32 = AdStatus::Queued as i32;
const PROCESSING: i32 = AdStatus::Processing as i32;
const COMPLETED: i32 = AdStatus::Completed as i32;
const DEAD: i32 = AdStatus::DeadLetter as i32;
const CANCELLED: i32 = AdStatus::Cancelled as i32;

fn backend(e: impl std::fmt::Display) -> QueueError {
    QueueError::Backend(format!("mongodb: {e}"))
}

/// A stored number or flag as an integer, whichever BSON type the server returns it as:
/// MongoDB-wire servers differ (a `bool` or an `int64` written by `$set` can read back as
/// an int32, an int64 or a double), so every numeric and boolean field is read through
/// this one function. None when the field is missing or not a number.
fn number(v: Option<&Bson>) -> Option<i64> {
    match v? {
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Int64(n) => Some(*n),
        Bson::Double(n) if n.is_finite() => Some(*n as i64),
        Bson::Boolean(b) => Some(i64::from(*b)),
        Bson::Decimal128(d) => d.to_string().parse::<f64>().ok().map(|n| n as i64),
        _ => None,
    }
}

/// A stored number (0 when missing).
fn geti(d: &Document, k: &str) -> i64 {
    number(d.get(k)).unwrap_or(0)
}

/// A stored number, or `default` (with a warning when a value is there but unreadable).
fn get_or(d: &Document, k: &str, default: i64) -> i64 {
    match (d.get(k), number(d.get(k))) {
        (_, Some(n)) => n,
        (None, None) => default,
        (Some(v), None) => {
            tracing::warn!(field = k, value = %v, "unreadable stored queue setting; using the default");
            default
        }
    }
}

fn bin(bytes: Vec<u8>) -> Binary {
    Binary { subtype: BinarySubtype::Generic, bytes }
}

fn bytes<'a>(d: &'a Document, k: &str) -> &'a [u8] {
    match d.get(k) {
        Some(Bson::Binary(b)) => &b.bytes,
        _ => &[],
    }
}

/// The ad a document holds (computed fields left at zero).
fn to_ad(d: &Document) -> pb::Ad {
    let mut ad = pb::Ad::decode(bytes(d, "pb")).unwrap_or_default();
    ad.id = d.get_str("_id").unwrap_or_default().to_owned();
    ad.status = geti(d, "st") as i32;
    ad.priority = geti(d, "pr") as u32;
    ad.enqueued_at_ms = geti(d, "enq");
    ad.started_at_ms = geti(d, "start");
    ad.finished_at_ms = geti(d, "fin");
    ad.attempts = geti(d, "att") as u32;
    ad.last_error = d.get_str("err").unwrap_or_default().to_owned();
    let an = bytes(d, "an");
    ad.analysis = (!an.is_empty()).then(|| pb::AnalysisResult::decode(an).ok()).flatten();
    ad
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
            .map_err(backend)?
            .ok_or_else(|| backend("counters document missing after upsert"))?;
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
        let d = self.meta.find_one(doc! {"_id": "policy"}).await.map_err(backend)?.unwrap_or_default();
        let dflt = QueueConfig::default().policy();
        let get = |k: &str, dv: u32| get_or(&d, k, dv.into()).clamp(0, u32::MAX.into()) as u32;
        Ok(pb::Policy {
            // A bool, or 0/1 from servers that store booleans as numbers.
            anti_starvation: get_or(&d, "as", dflt.anti_starvation.into()) != 0,
            max_wait_seconds: get("mw", dflt.max_wait_seconds),
            aging_step_seconds: get("ag", dflt.aging_step_seconds),
            max_attempts: get("ma", dflt.max_attempts),
            lease_seconds: get("ls", dflt.lease_seconds),
        })
    }

    async fn paused(&self) -> Result<Vec<u8>, QueueError> {
        let d = self.meta.find_one(doc! {"_id": "paused"}).await.map_err(backend)?.unwrap_or_default();
        Ok(d.get_array("p")
            .map(|a| a.iter().filter_map(|b| number(Some(b))).map(|p| p as u8).collect())
            .unwrap_or_default())
    }

    async fn rate(&self, now: i64) -> Result<u64, QueueError> {
        let sec = now / 1000;
        let mut cur = self.done.find(doc! {"_id": {"$gt": sec - 60, "$lte": sec}}).await.map_err(backend)?;
        let mut n = 0;
        while let Some(d) = cur.try_next().await.map_err(backend)? {
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
                .count_documents(doc! {"st": QUEUED, "pr": {"$in": higher}})
                .await
                .map_err(backend)?;
        }
        n += self
            .ads
            .count_documents(doc! {"st": QUEUED, "pr": ad.priority as i64, "seq": {"$lt": seq}})
            .await
            .map_err(backend)?;
        Ok(n)
    }

    async fn snapshot(&self, d: &Document, now: i64) -> Result<pb::Ad, QueueError> {
        let pending = crate::is_pending(geti(d, "st") as i32);
        let per_s = if pending { self.rate(now).await? as f64 / 60.0 } else { 0.0 };
        self.snapshot_at(d, per_s, now).await
    }

    /// `snapshot` with the completion rate already read (one read for a whole page).
    async fn snapshot_at(&self, d: &Document, per_s: f64, now: i64) -> Result<pb::Ad, QueueError> {
        let mut ad = to_ad(d);
        let position = if ad.status == QUEUED { self.position(&ad, geti(d, "seq")).await? } else { 0 };
        crate::fill_computed(&mut ad, position, per_s, now);
        Ok(ad)
    }

    async fn find(&self, id: &str) -> Result<Document, QueueError> {
        crate::parse_id(id)?;
        self.ads
            .find_one(doc! {"_id": id})
            .await
            .map_err(backend)?
            .ok_or_else(|| QueueError::NotFound(id.to_owned()))
    }

    fn deadline(pol: &pb::Policy, d: &Document, enq: i64) -> i64 {
        let mw = match geti(d, "mw") {
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
        let lease = geti(d, "lease");
        let filter = doc! {"_id": d.get_str("_id").unwrap_or_default(), "lease": lease, "st": PROCESSING};
        let requeue = retry && (geti(d, "att") as u32) < pol.max_attempts;
        let update = if requeue {
            doc! {"$set": {"st": QUEUED, "err": error, "dl": Self::deadline(pol, d, geti(d, "enq"))},
            "$unset": {"lease": "", "sess": "", "ldl": ""}}
        } else {
            doc! {"$set": {"st": DEAD, "err": error, "fin": now}, "$unset": {"lease": "", "sess": "", "ldl": ""}}
        };
        let r = self.ads.update_one(filter, update).await.map_err(backend)?;
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
            self.ads.find_one(doc! {"lease": lease_id as i64, "st": PROCESSING}).await.map_err(backend)?;
        match d {
            Some(d) if d.get_str("sess").unwrap_or_default() == session => Ok(d),
            Some(_) => Err(QueueError::StaleLease(lease_id)),
            None => {
                let issued = self.meta.find_one(doc! {"_id": "counters"}).await.map_err(backend)?;
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
            let st = geti(&d, "st") as i32;
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
        let client = mongodb::Client::with_uri_str(&mcfg.uri).await.map_err(backend)?;
        let db = client.database(&mcfg.database);
        let ads = db.collection::<Document>("ads");
        for keys in [
            doc! {"st": 1, "pr": 1, "seq": 1},
            doc! {"st": 1, "dl": 1},
            doc! {"st": 1, "ldl": 1},
            doc! {"lease": 1},
            doc! {"sess": 1},
            doc! {"fam": 1, "st": 1},
            doc! {"seq": -1},
            doc! {"st": 1, "fin": -1},
        ] {
            ads.create_index(IndexModel::builder().keys(keys).build()).await.map_err(backend)?;
        }
        let audit = db.collection::<Document>("audit");
        audit.create_index(IndexModel::builder().keys(doc! {"seq": -1}).build()).await.map_err(backend)?;
        let meta = db.collection::<Document>("queue_meta");
        let p = cfg.policy();
        let seed = doc! {"as": p.anti_starvation, "mw": p.max_wait_seconds as i64, "ag": p.aging_step_seconds as i64,
        "ma": p.max_attempts as i64, "ls": p.lease_seconds as i64};
        meta.update_one(doc! {"_id": "policy"}, doc! {"$setOnInsert": seed})
            .upsert(true)
            .await
            .map_err(backend)?;
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

    /// Candidates (queued heads of each partition and the most overdue) in an Index.
    async fn candidates(
        &self,
        n: usize,
        now: i64,
        mask: PartitionMask,
    ) -> Result<(Index, Rules, HashMap<u128, Document>), QueueError> {
        let pol = self.inner.policy().await?;
        let paused = self.inner.paused().await?;
        let mut index = Index::default();
        for p in &paused {
            index.set_paused(*p, true);
        }
        let allowed: Vec<i64> =
            (1..=MAX_PRIORITY).filter(|p| mask & (1 << (p - 1)) != 0).map(i64::from).collect();
        let mut docs: HashMap<u128, Document> = HashMap::new();
        let mut add = |d: Document, index: &mut Index| {
            let Ok(key) = uuid::Uuid::parse_str(d.get_str("_id").unwrap_or_default()).map(|u| u.as_u128())
            else {
                return;
            };
            index.push(key, geti(&d, "pr") as u8, geti(&d, "seq") as u64, geti(&d, "enq"), geti(&d, "dl"));
            docs.insert(key, d);
        };
        if pol.anti_starvation {
            let mut cur = self
                .inner
                .ads
                .find(doc! {"st": QUEUED, "dl": {"$lte": now}, "pr": {"$in": &allowed}})
                .sort(doc! {"dl": 1})
                .limit(n as i64)
                .await
                .map_err(backend)?;
            while let Some(d) = cur.try_next().await.map_err(backend)? {
                add(d, &mut index);
            }
        }
        for p in &allowed {
            if paused.contains(&(*p as u8)) {
                continue;
            }
            let mut cur = self
                .inner
                .ads
                .find(doc! {"st": QUEUED, "pr": p})
                .sort(doc! {"seq": 1})
                .limit(n as i64)
                .await
                .map_err(backend)?;
            while let Some(d) = cur.try_next().await.map_err(backend)? {
                add(d, &mut index);
            }
        }
        Ok((index, policy::rules(&pol), docs))
    }

    async fn try_lease(
        &self,
        session: u64,
        mask: PartitionMask,
        n: usize,
        now: i64,
    ) -> Result<Vec<Leased>, QueueError> {
        let (mut index, rules, mut docs) = self.candidates(n, now, mask).await?;
        let pol = self.inner.policy().await?;
        let sess = self.session(session);
        let mut out = Vec::new();
        if index.is_empty() {
            return Ok(out);
        }
        // A block of lease ids for this call (unused ones are simply skipped).
        let last = self.inner.counter("lseq", n as i64).await?;
        let mut next_id = last - n as i64 + 1;
        while out.len() < n {
            let Some((key, _)) = index.pop(now, rules, mask) else { break };
            let Some(d) = docs.remove(&key) else { continue };
            let id = d.get_str("_id").unwrap_or_default().to_owned();
            let lease_id = next_id;
            next_id += 1;
            let deadline = now + pol.lease_seconds as i64 * 1000;
            let claimed = self
                .inner
                .ads
                .find_one_and_update(
                    doc! {"_id": &id, "st": QUEUED},
                    doc! {"$set": {"st": PROCESSING, "start": now, "lease": lease_id, "sess": &sess, "ldl": deadline},
                          "$inc": {"att": 1i64}},
                )
                .return_document(ReturnDocument::After)
                .await
                .map_err(backend)?;
            // None: another gateway claimed it first.
            let Some(d) = claimed else { continue };
            self.inner.notify(&id, PROCESSING).await;
            let mut ad = to_ad(&d);
            ad.wait_ms = (now - ad.enqueued_at_ms).max(0);
            out.push(Leased {
                lease_id: lease_id as u64,
                attempt: ad.attempts,
                deadline_ms: deadline,
                traceparent: d.get_str("trace").unwrap_or_default().to_owned(),
                ad,
            });
        }
        Ok(out)
    }
}

impl Drop for MongoQueue {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

#[async_trait::async_trait]
impl AdQueue for MongoQueue {
    async fn submit(
        &self,
        specs: Vec<pb::AdSpec>,
        traceparent: &str,
        now: i64,
    ) -> Result<Vec<pb::SubmitAdResponse>, QueueError> {
        if specs.is_empty() {
            return Ok(Vec::new());
        }
        let pol = self.inner.policy().await?;
        let paused = self.inner.paused().await?;
        let mut queued = [0u64; MAX_PRIORITY as usize + 1];
        for p in 1..=MAX_PRIORITY {
            queued[p as usize] =
                self.inner.ads.count_documents(doc! {"st": QUEUED, "pr": p as i64}).await.map_err(backend)?;
        }
        let last = self.inner.counter("seq", specs.len() as i64).await?;
        let first = last - specs.len() as i64 + 1;
        let mut docs = Vec::with_capacity(specs.len());
        let mut out = Vec::with_capacity(specs.len());
        for (i, spec) in specs.into_iter().enumerate() {
            let id = uuid::Uuid::now_v7().to_string();
            let pr = spec.priority as u8;
            let mw = spec.max_wait_seconds as i64;
            let fam = spec.game_family.to_lowercase();
            let dl = now + if mw > 0 { mw } else { pol.max_wait_seconds as i64 } * 1000;
            let ad =
                pb::Ad { spec: Some(spec), priority: pr as u32, created_at_ms: now, ..Default::default() };
            let from = if paused.contains(&pr) { 1 } else { pr + 1 };
            let higher: u64 = (from..=MAX_PRIORITY)
                .filter(|p| *p != pr && !paused.contains(p))
                .map(|p| queued[p as usize])
                .sum();
            out.push(pb::SubmitAdResponse {
                id: id.clone(),
                status: QUEUED,
                queue_position: higher + queued[pr as usize],
                estimated_completion_ms: 0,
            });
            queued[pr as usize] += 1;
            docs.push(doc! {
                "_id": id, "pb": bin(ad.encode_to_vec()), "st": QUEUED, "pr": pr as i64, "seq": first + i as i64,
                "enq": now, "mw": mw, "dl": dl, "att": 0i64, "start": 0i64, "fin": 0i64, "err": "",
                "trace": traceparent, "fam": fam, "created": now,
            });
        }
        self.inner.ads.insert_many(docs).await.map_err(backend)?;
        let per_s = self.inner.rate(now).await? as f64 / 60.0;
        if per_s > 0.0 {
            for r in &mut out {
                r.estimated_completion_ms = crate::eta_ms(r.queue_position, per_s);
            }
        }
        self.inner.bump().await;
        Ok(out)
    }

    async fn get(&self, id: &str, now: i64) -> Result<pb::Ad, QueueError> {
        let d = self.inner.find(id).await?;
        self.inner.snapshot(&d, now).await
    }

    async fn list(&self, req: &pb::ListAdsRequest, now: i64) -> Result<pb::ListAdsResponse, QueueError> {
        let size = crate::page_size(req.page_size)?;
        let mut filter = Document::new();
        if req.status != 0 {
            filter.insert("st", req.status);
        }
        if req.priority != 0 {
            filter.insert("pr", req.priority as i64);
        }
        if !req.game_family.is_empty() {
            filter.insert("fam", req.game_family.to_lowercase());
        }
        if !req.page_token.is_empty() {
            let d = self.inner.find(&req.page_token).await.map_err(|_| QueueError::Invalid {
                field: "page_token",
                message: format!("{} is not a token this listing returned", req.page_token),
            })?;
            filter.insert("seq", doc! {"$lt": geti(&d, "seq")});
        }
        let per_s = self.inner.rate(now).await? as f64 / 60.0;
        let mut cur = self
            .inner
            .ads
            .find(filter)
            .sort(doc! {"seq": -1})
            .limit(size as i64 + 1)
            .await
            .map_err(backend)?;
        let mut ads = Vec::new();
        let mut more = false;
        while let Some(d) = cur.try_next().await.map_err(backend)? {
            if ads.len() == size {
                more = true;
                break;
            }
            ads.push(self.inner.snapshot_at(&d, per_s, now).await?);
        }
        let next_page_token =
            if more { ads.last().map(|a| a.id.clone()).unwrap_or_default() } else { String::new() };
        Ok(pb::ListAdsResponse { ads, next_page_token })
    }

    async fn cancel(&self, id: &str, now: i64) -> Result<pb::Ad, QueueError> {
        let d = self.inner.find(id).await?;
        let st = geti(&d, "st") as i32;
        if crate::embedded::is_final(st) {
            return Err(QueueError::WrongState {
                id: id.into(),
                status: crate::embedded::status_name(st),
                what: "only unfinished ads can be cancelled",
            });
        }
        let done = self
            .inner
            .ads
            .find_one_and_update(
                doc! {"_id": id, "st": {"$in": [QUEUED, PROCESSING, DEAD]}},
                doc! {"$set": {"st": CANCELLED, "fin": now}, "$unset": {"lease": "", "sess": "", "ldl": ""}},
            )
            .return_document(ReturnDocument::After)
            .await
            .map_err(backend)?;
        match done {
            Some(d) => {
                self.inner.notify(id, CANCELLED).await;
                self.inner.snapshot(&d, now).await
            }
            None => {
                let d = self.inner.find(id).await?;
                Err(QueueError::WrongState {
                    id: id.into(),
                    status: crate::embedded::status_name(geti(&d, "st") as i32),
                    what: "only unfinished ads can be cancelled",
                })
            }
        }
    }

    async fn watch(&self, id: &str, now: i64) -> Result<(pb::Ad, mpsc::Receiver<pb::Ad>), QueueError> {
        let ad = self.get(id, now).await?;
        let rx = self.inner.watchers.register(&ad);
        Ok((ad, rx))
    }

    async fn lease(&self, session: u64, mask: PartitionMask, n: usize, now: i64) -> Vec<Leased> {
        if n == 0 {
            return Vec::new();
        }
        match self.try_lease(session, mask, n, now).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "leasing from the mongodb queue failed");
                Vec::new()
            }
        }
    }

    async fn ack(
        &self,
        session: u64,
        lease_id: u64,
        result: pb::AnalysisResult,
        now: i64,
    ) -> Result<String, QueueError> {
        let sess = self.session(session);
        let d = self
            .inner
            .ads
            .find_one_and_update(
                doc! {"lease": lease_id as i64, "sess": &sess, "st": PROCESSING},
                doc! {"$set": {"st": COMPLETED, "fin": now, "an": bin(result.encode_to_vec())},
                "$unset": {"lease": "", "sess": "", "ldl": ""}},
            )
            .await
            .map_err(backend)?;
        let Some(d) = d else {
            return Err(match self.inner.current(&sess, lease_id).await {
                Ok(_) => QueueError::StaleLease(lease_id),
                Err(e) => e,
            });
        };
        self.inner
            .done
            .update_one(doc! {"_id": now / 1000}, doc! {"$inc": {"n": 1i64}})
            .upsert(true)
            .await
            .map_err(backend)?;
        self.inner.counter("done", 1).await?;
        self.inner.notify(d.get_str("_id").unwrap_or_default(), COMPLETED).await;
        Ok(d.get_str("trace").unwrap_or_default().to_owned())
    }

    async fn nack(
        &self,
        session: u64,
        lease_id: u64,
        retry: bool,
        error: &str,
        now: i64,
    ) -> Result<(), QueueError> {
        let d = self.inner.current(&self.session(session), lease_id).await?;
        let pol = self.inner.policy().await?;
        match self.inner.settle_retry(&d, retry, error, now, &pol).await? {
            Some(_) => Ok(()),
            None => Err(QueueError::StaleLease(lease_id)),
        }
    }

    async fn extend(&self, session: u64, lease_id: u64, seconds: u32, now: i64) -> Result<i64, QueueError> {
        crate::check_extension(seconds)?;
        let sess = self.session(session);
        let deadline = now + seconds as i64 * 1000;
        let r = self
            .inner
            .ads
            .update_one(
                doc! {"lease": lease_id as i64, "sess": &sess, "st": PROCESSING},
                doc! {"$set": {"ldl": deadline}},
            )
            .await
            .map_err(backend)?;
        if r.matched_count == 0 {
            self.inner.current(&sess, lease_id).await?;
            return Err(QueueError::StaleLease(lease_id));
        }
        Ok(deadline)
    }

    async fn release_session(&self, session: u64, now: i64) -> usize {
        let sess = self.session(session);
        let run = async {
            let pol = self.inner.policy().await?;
            let mut cur =
                self.inner.ads.find(doc! {"sess": &sess, "st": PROCESSING}).await.map_err(backend)?;
            let mut held = Vec::new();
            while let Some(d) = cur.try_next().await.map_err(backend)? {
                held.push(d);
            }
            let mut n = 0;
            for d in held {
                let r = self.inner.settle_retry(
                    &d,
                    true,
                    "worker disconnected while holding the lease",
                    now,
                    &pol,
                );
                if r.await?.is_some() {
                    n += 1;
                }
            }
            Ok::<_, QueueError>(n)
        };
        match run.await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, session, "releasing a session's leases failed; they expire instead");
                0
            }
        }
    }

    async fn expire(&self, now: i64) -> Vec<Expired> {
        // Completions per second are only read for the last minute: trim once a minute.
        let sec = now / 1000;
        let last = self.inner.trimmed.load(std::sync::atomic::Ordering::Relaxed);
        if sec - last >= 60 {
            self.inner.trimmed.store(sec, std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = self.inner.done.delete_many(doc! {"_id": {"$lt": sec - 120}}).await {
                tracing::warn!(error = %e, "trimming old completion counts failed");
            }
        }
        let run = async {
            let pol = self.inner.policy().await?;
            let mut cur = self
                .inner
                .ads
                .find(doc! {"st": PROCESSING, "ldl": {"$lte": now}})
                .limit(1000)
                .await
                .map_err(backend)?;
            let mut due = Vec::new();
            while let Some(d) = cur.try_next().await.map_err(backend)? {
                due.push(d);
            }
            let mut out = Vec::new();
            for d in due {
                let lease = geti(&d, "lease");
                let msg = format!("lease {lease} expired after {} s", pol.lease_seconds);
                if let Some(st) = self.inner.settle_retry(&d, true, &msg, now, &pol).await? {
                    out.push(Expired {
                        ad_id: d.get_str("_id").unwrap_or_default().to_owned(),
                        lease_id: lease as u64,
                        dead_lettered: st == DEAD,
                        traceparent: d.get_str("trace").unwrap_or_default().to_owned(),
                    });
                }
            }
            Ok::<_, QueueError>(out)
        };
        match run.await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "expiring leases in the mongodb queue failed");
                Vec::new()
            }
        }
    }

    async fn stats(&self, now: i64) -> Result<pb::QueueStats, QueueError> {
        let paused = self.inner.paused().await?;
        let mut partitions = Vec::new();
        for p in (1..=MAX_PRIORITY).rev() {
            let f = doc! {"st": QUEUED, "pr": p as i64};
            let queued = self.inner.ads.count_documents(f.clone()).await.map_err(backend)?;
            let oldest = self.inner.ads.find_one(f).sort(doc! {"seq": 1}).await.map_err(backend)?;
            partitions.push(pb::PartitionStats {
                priority: p as u32,
                queued,
                paused: paused.contains(&p),
                oldest_wait_ms: oldest.map(|d| (now - geti(&d, "enq")).max(0)).unwrap_or(0),
            });
        }
        let total: u64 = partitions.iter().map(|p| p.queued).sum();
        let mut sum_enq = 0i128;
        let mut cur = self
            .inner
            .ads
            .aggregate(vec![
                doc! {"$match": {"st": QUEUED}},
                doc! {"$group": {"_id": "$st", "s": {"$sum": "$enq"}}},
            ])
            .await
            .map_err(backend)?;
        while let Some(d) = cur.try_next().await.map_err(backend)? {
            sum_enq += geti(&d, "s") as i128;
        }
        let in_flight = self.inner.ads.count_documents(doc! {"st": PROCESSING}).await.map_err(backend)?;
        let dead = self.inner.ads.count_documents(doc! {"st": DEAD}).await.map_err(backend)?;
        let minute = self.inner.rate(now).await?;
        let counters =
            self.inner.meta.find_one(doc! {"_id": "counters"}).await.map_err(backend)?.unwrap_or_default();
        Ok(pb::QueueStats {
            total_queued: total,
            oldest_wait_ms: partitions.iter().map(|p| p.oldest_wait_ms).max().unwrap_or(0),
            average_wait_ms: if total > 0 {
                (now as i128 - sum_enq / total as i128).max(0) as i64
            } else {
                0
            },
            partitions,
            in_flight,
            dead_letters: dead,
            completed_last_minute: minute,
            processing_rate_per_s: minute as f64 / 60.0,
            completed_total: geti(&counters, "done") as u64,
            workers: 0,
        })
    }

    async fn peek(&self, n: usize, now: i64) -> Result<Vec<pb::QueuedAd>, QueueError> {
        let (index, rules, docs) = self.candidates(n, now, crate::index::ALL_PARTITIONS).await?;
        Ok(index
            .peek(n, now, rules)
            .into_iter()
            .filter_map(|p| {
                let ad = to_ad(docs.get(&p.key)?);
                Some(crate::queued_ad(&p, ad.id, ad.spec.unwrap_or_default(), now))
            })
            .collect())
    }

    async fn set_priority(&self, id: &str, priority: u8, _now: i64) -> Result<(u8, u8), QueueError> {
        crate::embedded::check_priority(priority)?;
        let d = self.inner.find(id).await?;
        let r = self
            .inner
            .ads
            .find_one_and_update(doc! {"_id": id, "st": QUEUED}, doc! {"$set": {"pr": priority as i64}})
            .await
            .map_err(backend)?;
        match r {
            Some(old) => {
                self.inner.bump().await;
                Ok((geti(&old, "pr") as u8, priority))
            }
            None => Err(QueueError::WrongState {
                id: id.into(),
                status: crate::embedded::status_name(geti(&d, "st") as i32),
                what: "only queued ads can be reprioritized",
            }),
        }
    }

    async fn reprioritize(
        &self,
        filter: &pb::AdFilter,
        priority: u8,
        dry_run: bool,
        now: i64,
    ) -> Result<(u64, u64), QueueError> {
        crate::embedded::check_priority(priority)?;
        let mut f = doc! {"st": QUEUED, "enq": {"$lte": now - filter.older_than_seconds as i64 * 1000}};
        if filter.current_priority != 0 {
            f.insert("pr", filter.current_priority as i64);
        }
        if !filter.game_family.is_empty() {
            f.insert("fam", filter.game_family.to_lowercase());
        }
        let matched = self.inner.ads.count_documents(f.clone()).await.map_err(backend)?;
        // Changed: the matched ads not already at the new priority.
        match filter.current_priority {
            0 => {
                f.insert("pr", doc! {"$ne": priority as i64});
            }
            p if p as u8 == priority => return Ok((0, matched)),
            _ => {}
        }
        if dry_run {
            let changed = self.inner.ads.count_documents(f).await.map_err(backend)?;
            return Ok((changed, matched));
        }
        let r =
            self.inner.ads.update_many(f, doc! {"$set": {"pr": priority as i64}}).await.map_err(backend)?;
        if r.modified_count > 0 {
            self.inner.bump().await;
        }
        Ok((r.modified_count, matched))
    }

    async fn set_paused(&self, priority: u8, paused: bool) -> Result<pb::PartitionState, QueueError> {
        crate::embedded::check_priority(priority)?;
        let op = if paused { "$addToSet" } else { "$pull" };
        self.inner
            .meta
            .update_one(doc! {"_id": "paused"}, doc! {op: {"p": priority as i64}})
            .upsert(true)
            .await
            .map_err(backend)?;
        self.inner.bump().await;
        let queued = self
            .inner
            .ads
            .count_documents(doc! {"st": QUEUED, "pr": priority as i64})
            .await
            .map_err(backend)?;
        Ok(pb::PartitionState { priority: priority as u32, paused, queued })
    }

    async fn policy(&self) -> Result<pb::Policy, QueueError> {
        self.inner.policy().await
    }

    async fn set_policy(&self, update: &pb::SetPolicyRequest) -> Result<pb::Policy, QueueError> {
        let cur = self.inner.policy().await?;
        let next = policy::apply(&cur, update);
        policy::check(&next).map_err(|(field, message)| QueueError::Invalid { field, message })?;
        let set = doc! {"as": next.anti_starvation, "mw": next.max_wait_seconds as i64,
        "ag": next.aging_step_seconds as i64, "ma": next.max_attempts as i64,
        "ls": next.lease_seconds as i64};
        self.inner
            .meta
            .update_one(doc! {"_id": "policy"}, doc! {"$set": set})
            .upsert(true)
            .await
            .map_err(backend)?;
        if next.max_wait_seconds != cur.max_wait_seconds {
            // Queued ads that follow the policy's max wait get new deadlines.
            let mut c = self.inner.ads.find(doc! {"st": QUEUED, "mw": 0i64}).await.map_err(backend)?;
            let mut docs = Vec::new();
            while let Some(d) = c.try_next().await.map_err(backend)? {
                docs.push(d);
            }
            for d in docs {
                let dl = geti(&d, "enq") + next.max_wait_seconds as i64 * 1000;
                let id = d.get_str("_id").unwrap_or_default();
                self.inner
                    .ads
                    .update_one(doc! {"_id": id}, doc! {"$set": {"dl": dl}})
                    .await
                    .map_err(backend)?;
            }
        }
        self.inner.bump().await;
        Ok(next)
    }

    async fn dead_letters(&self, limit: usize) -> Result<(Vec<pb::DeadLetter>, u64), QueueError> {
        let total = self.inner.ads.count_documents(doc! {"st": DEAD}).await.map_err(backend)?;
        let mut items = Vec::new();
        if limit > 0 {
            let mut cur = self
                .inner
                .ads
                .find(doc! {"st": DEAD})
                .sort(doc! {"fin": -1})
                .limit(limit as i64)
                .await
                .map_err(backend)?;
            while let Some(d) = cur.try_next().await.map_err(backend)? {
                let ad = to_ad(&d);
                items.push(pb::DeadLetter {
                    id: ad.id,
                    attempts: ad.attempts,
                    last_error: ad.last_error,
                    dead_at_ms: ad.finished_at_ms,
                    title: ad.spec.map(|s| s.title).unwrap_or_default(),
                    priority: ad.priority,
                });
            }
        }
        Ok((items, total))
    }

    async fn requeue_dead(&self, ids: &[String], now: i64) -> Result<u64, QueueError> {
        for id in ids {
            crate::parse_id(id)?;
        }
        let pol = self.inner.policy().await?;
        let f = if ids.is_empty() {
            doc! {"st": DEAD}
        } else {
            doc! {"st": DEAD, "_id": {"$in": ids}}
        };
        let mut cur = self.inner.ads.find(f).sort(doc! {"fin": 1}).await.map_err(backend)?;
        let mut docs = Vec::new();
        while let Some(d) = cur.try_next().await.map_err(backend)? {
            docs.push(d);
        }
        let mut n = 0;
        for d in docs {
            let seq = self.inner.counter("seq", 1).await?;
            let id = d.get_str("_id").unwrap_or_default();
            let set = doc! {"st": QUEUED, "att": 0i64, "enq": now, "fin": 0i64, "seq": seq,
            "dl": Inner::deadline(&pol, &d, now)};
            let r = self
                .inner
                .ads
                .update_one(doc! {"_id": id, "st": DEAD}, doc! {"$set": set})
                .await
                .map_err(backend)?;
            n += r.modified_count;
            if r.modified_count > 0 {
                self.inner.notify(id, QUEUED).await;
            }
        }
        if n > 0 {
            self.inner.bump().await;
        }
        Ok(n)
    }

    async fn purge(&self, priority: u8, now: i64) -> Result<u64, QueueError> {
        crate::embedded::check_priority(priority)?;
        let r = self
            .inner
            .ads
            .update_many(
                doc! {"st": QUEUED, "pr": priority as i64},
                doc! {"$set": {"st": CANCELLED, "fin": now, "err": format!("purged from partition {priority}")}},
            )
            .await
            .map_err(backend)?;
        Ok(r.modified_count)
    }

    async fn family_stats(&self, now: i64) -> Result<Vec<FamilyStats>, QueueError> {
        let mut by: HashMap<String, (FamilyStats, i128)> = HashMap::new();
        for st in [QUEUED, PROCESSING, DEAD] {
            let pipeline = vec![
                doc! {"$match": {"st": st}},
                doc! {"$group": {"_id": "$fam", "n": {"$sum": 1}, "s": {"$sum": "$enq"}}},
            ];
            let mut cur = self.inner.ads.aggregate(pipeline).await.map_err(backend)?;
            while let Some(d) = cur.try_next().await.map_err(backend)? {
                let fam = d.get_str("_id").unwrap_or_default().to_owned();
                let e = by
                    .entry(fam.clone())
                    .or_insert_with(|| (FamilyStats { family: fam, ..Default::default() }, 0));
                let n = geti(&d, "n") as u64;
                match st {
                    QUEUED => {
                        e.0.queued = n;
                        e.1 = geti(&d, "s") as i128;
                    }
                    PROCESSING => e.0.processing = n,
                    _ => e.0.dead_letters = n,
                }
            }
        }
        let mut out: Vec<FamilyStats> = by
            .into_values()
            .map(|(mut f, sum)| {
                f.average_wait_ms =
                    if f.queued > 0 { (now as i128 - sum / f.queued as i128).max(0) as i64 } else { 0 };
                f
            })
            .collect();
        crate::sort_families(&mut out);
        Ok(out)
    }

    async fn audit_append(&self, entry: &pb::AuditEntry) -> Result<(), QueueError> {
        crate::parse_id(&entry.command_id)?;
        let seq = self.inner.counter("auditseq", 1).await?;
        self.inner
            .audit
            .insert_one(doc! {"_id": &entry.command_id, "seq": seq, "e": bin(entry.encode_to_vec())})
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn audit_list(
        &self,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<pb::AuditEntry>, QueueError> {
        let mut f = Document::new();
        if let Some(b) = before {
            crate::parse_id(b)?;
            let Some(d) = self.inner.audit.find_one(doc! {"_id": b}).await.map_err(backend)? else {
                return Ok(Vec::new());
            };
            f.insert("seq", doc! {"$lt": geti(&d, "seq")});
        }
        let mut cur =
            self.inner.audit.find(f).sort(doc! {"seq": -1}).limit(limit as i64).await.map_err(backend)?;
        let mut out = Vec::new();
        while let Some(d) = cur.try_next().await.map_err(backend)? {
            out.push(pb::AuditEntry::decode(bytes(&d, "e")).map_err(backend)?);
        }
        Ok(out)
    }

    fn work_signal(&self) -> watch::Receiver<u64> {
        self.inner.signal.subscribe()
    }

    async fn close(&self) {
        self.poller.abort();
    }
}
