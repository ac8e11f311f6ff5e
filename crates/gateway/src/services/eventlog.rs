//! `adflow.v1.EventLog`: stored events read back in commit order, with filters, follow
//! mode (woken by the store's commits) and consumer group positions, on any backend
//! through `EventStore`'s log methods.
//!
//! One task per Read fills a channel of two batches; tonic takes from it only as fast as
//! HTTP/2 flow control lets the reply out, so a slow reader holds at most two batches in
//! the gateway. Filters are applied here, on the fields of the encoded event (the raw
//! `Facts` reader, no full decode); the cursor of a batch moves past everything read,
//! matched or not, so a narrow filter never rereads what it skipped.

use crate::status::from_store;
use adflow_domain::pb::{self, EventType};
use adflow_proto::raw::Facts;
use adflow_proto::raw::log::{RawLoggedEvent, RawReadBatch};
use adflow_proto::raw_eventlog::event_log_server::EventLog;
use adflow_store::eventlog::{LogPage, Start, check_group_name};
use adflow_store::{Cursor, EventStore, StoredEvent};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Most events per batch a reader may ask for.
pub const MAX_BATCH: u32 = 10_000;
/// Events per batch when the reader does not say.
const DEFAULT_BATCH: u32 = 1_000;
/// Most ids in one filter list.
const MAX_FILTER_IDS: usize = 100;
/// Longest cursor accepted.
const MAX_CURSOR: usize = 64;
/// How long follow mode waits for a commit before checking that the reader is still there.
const FOLLOW_WAIT: Duration = Duration::from_secs(1);

/// The EventLog service.
pub struct EventLogService {
    store: Arc<dyn EventStore>,
    stop: watch::Receiver<bool>,
}

impl EventLogService {
    /// A service reading `store`; open reads end when `stop` turns true.
    pub fn new(store: Arc<dyn EventStore>, stop: watch::Receiver<bool>) -> Self {
        Self { store, stop }
    }
}

/// What a reader wants to see.
struct Filter {
    ads: Vec<Vec<u8>>,
    campaigns: Vec<Vec<u8>>,
    types: Vec<i32>,
}

impl Filter {
    fn from(req: &pb::ReadRequest) -> Result<Self, Status> {
        for (name, list) in [("ad_ids", &req.ad_ids), ("campaign_ids", &req.campaign_ids)] {
            if list.len() > MAX_FILTER_IDS {
                return Err(Status::invalid_argument(format!(
                    "{name} holds {} ids, at most {MAX_FILTER_IDS}",
                    list.len()
                )));
            }
            if let Some(id) = list.iter().find(|id| id.is_empty() || id.len() > 256) {
                return Err(Status::invalid_argument(format!(
                    "{name} entries must be 1 to 256 bytes, got {}",
                    id.len()
                )));
            }
        }
        if let Some(t) = req.event_types.iter().find(|&&t| EventType::try_from(t).is_err() || t == 0) {
            return Err(Status::invalid_argument(format!("event_types holds {t}, not an event type")));
        }
        Ok(Self {
            ads: req.ad_ids.iter().map(|s| s.as_bytes().to_vec()).collect(),
            campaigns: req.campaign_ids.iter().map(|s| s.as_bytes().to_vec()).collect(),
            types: req.event_types.clone(),
        })
    }

    fn all(&self) -> bool {
        self.ads.is_empty() && self.campaigns.is_empty() && self.types.is_empty()
    }

    fn keeps(&self, e: &StoredEvent) -> bool {
        if self.all() {
            return true;
        }
        let Ok(f) = Facts::parse(&e.raw) else { return false };
        (self.ads.is_empty() || self.ads.iter().any(|a| a == f.ad_id))
            && (self.campaigns.is_empty() || self.campaigns.iter().any(|c| c == f.campaign_id))
            && (self.types.is_empty() || self.types.contains(&f.r#type))
    }
}

fn cursor_arg(c: &str) -> Result<Cursor, Status> {
    if c.is_empty() || c.len() > MAX_CURSOR {
        return Err(Status::invalid_argument(format!(
            "cursor must be 1 to {MAX_CURSOR} characters, got {}",
            c.len()
        )));
    }
    Ok(Cursor(c.to_owned()))
}

fn group_arg(g: &str) -> Result<(), Status> {
    check_group_name(g).map_err(Status::invalid_argument)
}

/// One open Read.
struct Reader {
    store: Arc<dyn EventStore>,
    filter: Filter,
    batch: usize,
    follow: bool,
    tx: mpsc::Sender<Result<RawReadBatch, Status>>,
    stop: watch::Receiver<bool>,
}

impl Reader {
    async fn run(mut self, mut cursor: Cursor, mut lost_events: u64) {
        let mut first = true;
        // When follow mode was last woken by a commit: the time to deliver what that
        // commit made readable is the follow mode's own lag.
        let mut woken: Option<std::time::Instant> = None;
        loop {
            if *self.stop.borrow() {
                let _ = self
                    .tx
                    .send(Err(Status::unavailable(
                        "the gateway is shutting down; resume from the last cursor",
                    )))
                    .await;
                return;
            }
            let page: LogPage = match self.store.log_read(&cursor, self.batch).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = self.tx.send(Err(from_store(e))).await;
                    return;
                }
            };
            let next = page.next.clone().unwrap_or_else(|| cursor.clone());
            let moved = next != cursor;
            let caught_up = page.events.len() < self.batch;
            let events: Vec<RawLoggedEvent> = page
                .events
                .into_iter()
                .filter(|e| self.filter.keeps(e))
                .map(|e| RawLoggedEvent { event: e.raw, received_at_ms: e.received_at_ms })
                .collect();
            let n = events.len();
            // Send what matched; a caught-up reader also hears where the log ends once.
            if n > 0 || first || (caught_up && moved) {
                let b = RawReadBatch {
                    events,
                    cursor: next.0.clone(),
                    lost_events: std::mem::take(&mut lost_events),
                    gap: first && page.gap,
                    caught_up,
                };
                if self.tx.send(Ok(b)).await.is_err() {
                    return; // the reader went away
                }
                metrics::counter!("eventlog_read_events_total").increment(n as u64);
                if let Some(at) = woken.take()
                    && n > 0
                {
                    metrics::histogram!("eventlog_follow_delivery_seconds")
                        .record(at.elapsed().as_secs_f64());
                }
                first = false;
            }
            cursor = next;
            if !caught_up {
                continue;
            }
            if !self.follow {
                return;
            }
            tokio::select! {
                _ = self.store.log_wait(&cursor, FOLLOW_WAIT) => woken = Some(std::time::Instant::now()),
                _ = self.tx.closed() => return,
                _ = self.stop.changed() => {}
            }
        }
    }
}

#[tonic::async_trait]
impl EventLog for EventLogService {
    type ReadStream = ReceiverStream<Result<RawReadBatch, Status>>;

    async fn read(&self, request: Request<pb::ReadRequest>) -> Result<Response<Self::ReadStream>, Status> {
        let req = request.into_inner();
        let filter = Filter::from(&req)?;
        let batch = match req.max_batch_events {
            0 => DEFAULT_BATCH,
            n if n > MAX_BATCH => {
                return Err(Status::invalid_argument(format!(
                    "max_batch_events is {n}, at most {MAX_BATCH}"
                )));
            }
            n => n,
        } as usize;
        if !req.group.is_empty() {
            group_arg(&req.group)?;
        }
        use pb::read_request::Start as S;
        let (start, lost) = match &req.start {
            Some(S::Position(p)) => match pb::StartPosition::try_from(*p) {
                Ok(pb::StartPosition::Oldest) => (Start::Oldest, 0),
                Ok(pb::StartPosition::Newest) => (Start::Newest, 0),
                _ => return Err(Status::invalid_argument(format!("position {p} is not OLDEST or NEWEST"))),
            },
            Some(S::Cursor(c)) => (Start::At(cursor_arg(c)?), 0),
            Some(S::FromTimeMs(t)) => (Start::Time(*t), 0),
            None if !req.group.is_empty() => {
                match self.store.group_get(&req.group).await.map_err(from_store)? {
                    Some(pos) => (Start::At(pos.cursor), pos.lost_events),
                    None => (Start::Oldest, 0),
                }
            }
            None => (Start::Oldest, 0),
        };
        let cursor = self.store.log_start(&start).await.map_err(from_store)?;
        let (tx, rx) = mpsc::channel(2);
        let reader = Reader {
            store: self.store.clone(),
            filter,
            batch,
            follow: req.follow,
            tx: tx.clone(),
            stop: self.stop.clone(),
        };
        metrics::gauge!("eventlog_readers").increment(1.0);
        crate::panic_layer::spawn_stream("/adflow.v1.EventLog/Read", tx, async move {
            reader.run(cursor, lost).await;
            metrics::gauge!("eventlog_readers").decrement(1.0);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn commit_cursor(
        &self,
        request: Request<pb::CommitCursorRequest>,
    ) -> Result<Response<pb::CommitCursorResponse>, Status> {
        let req = request.into_inner();
        group_arg(&req.group)?;
        let cursor = cursor_arg(&req.cursor)?;
        self.store.group_commit(&req.group, &cursor).await.map_err(from_store)?;
        Ok(Response::new(pb::CommitCursorResponse {}))
    }

    async fn get_cursor(
        &self,
        request: Request<pb::GetCursorRequest>,
    ) -> Result<Response<pb::GetCursorResponse>, Status> {
        let req = request.into_inner();
        group_arg(&req.group)?;
        match self.store.group_get(&req.group).await.map_err(from_store)? {
            Some(p) => {
                Ok(Response::new(pb::GetCursorResponse { cursor: p.cursor.0, lost_events: p.lost_events }))
            }
            None => {
                Err(Status::not_found(format!("consumer group {:?} has not committed a cursor", req.group)))
            }
        }
    }
}
