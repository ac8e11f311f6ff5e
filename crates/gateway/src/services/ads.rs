//! `adflow.v1.AdService`: submission, lookup, listing, cancel and WatchAd.

use crate::status::from_queue;
use adflow_domain::validate::trunc;
use adflow_domain::{ads, now_ms, pb};
use adflow_queue::Ads;
use pb::ad_service_server::AdService;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

const MAX_BATCH: usize = 1000;

/// Longest ad id (or ListAds page token, which is an ad id) that is parsed at all: a
/// UUID is 36 characters (45 as a URN). A longer one is refused before parsing, so no
/// error carries a huge input (a 100 KB id echoed in `grpc-message` exceeded the
/// client's metadata limit and turned INVALID_ARGUMENT into RESOURCE_EXHAUSTED).
pub(crate) const MAX_AD_ID: usize = 64;

/// Longest game family filter: the longest family an ad can have.
pub(crate) const MAX_FAMILY: usize = 64;

/// Refuses an over-long ad id; the error quotes only its start (`trunc`).
pub(crate) fn check_ad_id(field: &str, id: &str) -> Result<(), Status> {
    if id.len() > MAX_AD_ID {
        return Err(Status::invalid_argument(format!(
            "{field} is {} bytes; an ad id is a UUID of 36 characters (got {:?}...)",
            id.len(),
            trunc(id)
        )));
    }
    Ok(())
}

/// Refuses a game family filter longer than any ad's family.
pub(crate) fn check_family(field: &str, family: &str) -> Result<(), Status> {
    let n = family.chars().count();
    if n > MAX_FAMILY {
        return Err(Status::invalid_argument(format!(
            "{field} is {n} characters, the limit is {MAX_FAMILY}"
        )));
    }
    Ok(())
}

/// The AdService.
pub struct AdsService {
    queue: Arc<dyn Ads>,
}

impl AdsService {
    /// A service over `queue`.
    pub fn new(queue: Arc<dyn Ads>) -> Self {
        Self { queue }
    }
}

#[tonic::async_trait]
impl AdService for AdsService {
    #[tracing::instrument(level = "debug", skip_all, name = "SubmitAd")]
    async fn submit_ad(
        &self,
        req: Request<pb::SubmitAdRequest>,
    ) -> Result<Response<pb::SubmitAdResponse>, Status> {
        let spec = req.into_inner().ad.ok_or_else(|| Status::invalid_argument("ad is required"))?;
        ads::check(&spec).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut out = self
            .queue
            .submit(vec![spec], &adflow_telemetry::current_traceparent(), now_ms())
            .await
            .map_err(from_queue)?;
        Ok(Response::new(out.remove(0)))
    }

    #[tracing::instrument(level = "debug", skip_all, name = "SubmitAds")]
    async fn submit_ads(
        &self,
        req: Request<pb::SubmitAdsRequest>,
    ) -> Result<Response<pb::SubmitAdsResponse>, Status> {
        let specs = req.into_inner().ads;
        if specs.is_empty() || specs.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "ads has {} entries; send 1..={MAX_BATCH}",
                specs.len()
            )));
        }
        let mut results: Vec<pb::SubmitAdResult> = Vec::with_capacity(specs.len());
        let mut valid = Vec::new();
        for (i, spec) in specs.into_iter().enumerate() {
            let mut r = pb::SubmitAdResult { index: i as u32, ..Default::default() };
            match ads::check(&spec) {
                Ok(()) => valid.push((i, spec)),
                Err(e) => (r.field, r.error) = (e.field.to_owned(), e.message),
            }
            results.push(r);
        }
        let (idx, specs): (Vec<usize>, Vec<pb::AdSpec>) = valid.into_iter().unzip();
        let accepted = if specs.is_empty() {
            Vec::new()
        } else {
            self.queue
                .submit(specs, &adflow_telemetry::current_traceparent(), now_ms())
                .await
                .map_err(from_queue)?
        };
        let n = accepted.len() as u32;
        for (i, a) in idx.into_iter().zip(accepted) {
            results[i].accepted = Some(a);
        }
        Ok(Response::new(pb::SubmitAdsResponse { results, accepted: n }))
    }

    #[tracing::instrument(level = "debug", skip_all, name = "GetAd")]
    async fn get_ad(&self, req: Request<pb::GetAdRequest>) -> Result<Response<pb::Ad>, Status> {
        let id = req.into_inner().id;
        check_ad_id("id", &id)?;
        Ok(Response::new(self.queue.get(&id, now_ms()).await.map_err(from_queue)?))
    }

    #[tracing::instrument(level = "debug", skip_all, name = "ListAds")]
    async fn list_ads(
        &self,
        req: Request<pb::ListAdsRequest>,
    ) -> Result<Response<pb::ListAdsResponse>, Status> {
        let r = req.into_inner();
        if pb::AdStatus::try_from(r.status).is_err() {
            return Err(Status::invalid_argument(format!("status {} is not a known AdStatus", r.status)));
        }
        if r.priority > 5 {
            return Err(Status::invalid_argument(format!("priority {} is outside 0..=5", r.priority)));
        }
        check_family("game_family", &r.game_family)?;
        check_ad_id("page_token", &r.page_token)?;
        Ok(Response::new(self.queue.list(&r, now_ms()).await.map_err(from_queue)?))
    }

    #[tracing::instrument(level = "debug", skip_all, name = "CancelAd")]
    async fn cancel_ad(&self, req: Request<pb::CancelAdRequest>) -> Result<Response<pb::Ad>, Status> {
        let id = req.into_inner().id;
        check_ad_id("id", &id)?;
        Ok(Response::new(self.queue.cancel(&id, now_ms()).await.map_err(from_queue)?))
    }

    type WatchAdStream = ReceiverStream<Result<pb::Ad, Status>>;

    #[tracing::instrument(level = "debug", skip_all, name = "WatchAd")]
    async fn watch_ad(
        &self,
        req: Request<pb::WatchAdRequest>,
    ) -> Result<Response<Self::WatchAdStream>, Status> {
        let id = req.into_inner().id;
        check_ad_id("id", &id)?;
        let (first, mut updates) = self.queue.watch(&id, now_ms()).await.map_err(from_queue)?;
        let (tx, rx) = mpsc::channel(16);
        crate::panic_layer::spawn_stream("/adflow.v1.AdService/WatchAd", tx.clone(), async move {
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            while let Some(ad) = updates.recv().await {
                if tx.send(Ok(ad)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
