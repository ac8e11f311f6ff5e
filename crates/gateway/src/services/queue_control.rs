//! `adflow.v1.QueueControl`: the operator's view and levers on the ad queue.

use super::ads::{check_ad_id, check_family};
use super::workers::WorkerHub;
use crate::status::from_queue;
use adflow_domain::{now_ms, pb};
use adflow_queue::{Operator, Priority};
use pb::queue_control_server::QueueControl;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The QueueControl service.
pub struct QueueControlService {
    queue: Arc<dyn Operator>,
    hub: Arc<WorkerHub>,
}

impl QueueControlService {
    /// A service over `queue`, reporting the workers of `hub`.
    pub fn new(queue: Arc<dyn Operator>, hub: Arc<WorkerHub>) -> Self {
        Self { queue, hub }
    }
}

/// Most ids in one RequeueDeadLetters request.
const MAX_REQUEUE_IDS: usize = 1000;

fn priority(p: u32) -> Result<u8, Status> {
    Priority::new(p).map(u8::from).map_err(|e| Status::invalid_argument(format!("priority {e}")))
}

fn limit(n: u32, default: usize, max: usize) -> Result<usize, Status> {
    match n as usize {
        0 => Ok(default),
        n if n <= max => Ok(n),
        n => Err(Status::invalid_argument(format!("limit {n} is above {max}"))),
    }
}

#[tonic::async_trait]
impl QueueControl for QueueControlService {
    async fn get_stats(&self, _: Request<pb::GetStatsRequest>) -> Result<Response<pb::QueueStats>, Status> {
        let mut s = self.queue.stats(now_ms()).await.map_err(from_queue)?;
        s.workers = self.hub.count() as u32;
        Ok(Response::new(s))
    }

    async fn peek(&self, req: Request<pb::PeekRequest>) -> Result<Response<pb::PeekResponse>, Status> {
        let n = limit(req.into_inner().limit, 10, 1000)?;
        Ok(Response::new(pb::PeekResponse { ads: self.queue.peek(n, now_ms()).await.map_err(from_queue)? }))
    }

    async fn set_priority(
        &self,
        req: Request<pb::SetPriorityRequest>,
    ) -> Result<Response<pb::SetPriorityResponse>, Status> {
        let r = req.into_inner();
        check_ad_id("id", &r.id)?;
        let (old, new) =
            self.queue.set_priority(&r.id, priority(r.priority)?, now_ms()).await.map_err(from_queue)?;
        Ok(Response::new(pb::SetPriorityResponse {
            id: r.id,
            old_priority: old as u32,
            new_priority: new as u32,
        }))
    }

    async fn reprioritize(
        &self,
        req: Request<pb::ReprioritizeRequest>,
    ) -> Result<Response<pb::ReprioritizeResponse>, Status> {
        let r = req.into_inner();
        let p = priority(r.new_priority)?;
        let f = r.filter.unwrap_or_default();
        check_family("filter.game_family", &f.game_family)?;
        if f.current_priority > 5 {
            return Err(Status::invalid_argument(format!(
                "filter.current_priority {} is outside 0..=5",
                f.current_priority
            )));
        }
        let (changed, matched) =
            self.queue.reprioritize(&f, p, r.dry_run, now_ms()).await.map_err(from_queue)?;
        Ok(Response::new(pb::ReprioritizeResponse { changed, matched }))
    }

    async fn pause_partition(
        &self,
        req: Request<pb::PartitionRequest>,
    ) -> Result<Response<pb::PartitionState>, Status> {
        let p = priority(req.into_inner().priority)?;
        Ok(Response::new(self.queue.set_paused(p, true).await.map_err(from_queue)?))
    }

    async fn resume_partition(
        &self,
        req: Request<pb::PartitionRequest>,
    ) -> Result<Response<pb::PartitionState>, Status> {
        let p = priority(req.into_inner().priority)?;
        Ok(Response::new(self.queue.set_paused(p, false).await.map_err(from_queue)?))
    }

    async fn get_policy(&self, _: Request<pb::GetPolicyRequest>) -> Result<Response<pb::Policy>, Status> {
        Ok(Response::new(self.queue.policy().await.map_err(from_queue)?))
    }

    async fn set_policy(&self, req: Request<pb::SetPolicyRequest>) -> Result<Response<pb::Policy>, Status> {
        Ok(Response::new(self.queue.set_policy(&req.into_inner()).await.map_err(from_queue)?))
    }

    async fn list_dead_letters(
        &self,
        req: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let n = limit(req.into_inner().limit, 100, 1000)?;
        let (dead_letters, total) = self.queue.dead_letters(n).await.map_err(from_queue)?;
        Ok(Response::new(pb::ListDeadLettersResponse { dead_letters, total }))
    }

    async fn requeue_dead_letters(
        &self,
        req: Request<pb::RequeueDeadLettersRequest>,
    ) -> Result<Response<pb::RequeueDeadLettersResponse>, Status> {
        let ids = req.into_inner().ids;
        if ids.len() > MAX_REQUEUE_IDS {
            return Err(Status::invalid_argument(format!(
                "ids has {} entries, the limit is {MAX_REQUEUE_IDS} (send none to requeue every dead letter)",
                ids.len()
            )));
        }
        for (i, id) in ids.iter().enumerate() {
            check_ad_id(&format!("ids[{i}]"), id)?;
        }
        let requeued = self.queue.requeue_dead(&ids, now_ms()).await.map_err(from_queue)?;
        Ok(Response::new(pb::RequeueDeadLettersResponse { requeued }))
    }

    async fn purge_partition(
        &self,
        req: Request<pb::PurgePartitionRequest>,
    ) -> Result<Response<pb::PurgePartitionResponse>, Status> {
        let r = req.into_inner();
        let p = priority(r.priority)?;
        if !r.confirm {
            return Err(Status::failed_precondition(format!(
                "purging partition {p} cancels every ad queued in it and cannot be undone; send confirm: true"
            )));
        }
        Ok(Response::new(pb::PurgePartitionResponse {
            purged: self.queue.purge(p, now_ms()).await.map_err(from_queue)?,
        }))
    }

    async fn list_workers(
        &self,
        _: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        Ok(Response::new(pb::ListWorkersResponse { workers: self.hub.list() }))
    }
}
