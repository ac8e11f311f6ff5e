//! `adflow.v1.Analytics`: reads of the counters fed by committed batches (this gateway's
//! memory, or the backend's counters shared by every gateway).

use adflow_domain::analytics::{Counters, Kind, Scope};
use adflow_domain::now_ms;
use adflow_domain::pb::analytics_server::Analytics as AnalyticsRpc;
use adflow_domain::pb::{self, EventType, Metric, period};
use adflow_store::counters::CounterSource;
use std::sync::Arc;
use tonic::{Request, Response, Status};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const MAX_ID: usize = 256;

/// The Analytics service.
pub struct AnalyticsService {
    counters: Arc<dyn CounterSource>,
}

impl AnalyticsService {
    /// A service reading `state`.
    pub fn new(counters: Arc<dyn CounterSource>) -> Self {
        Self { counters }
    }

    async fn sum(&self, scope: Scope<'_>, from: i64, to: i64, now: i64) -> Result<Counters, Status> {
        self.counters.sum(scope, from, to, now).await.map_err(crate::status::from_store)
    }

    /// Stats with the last-hour and last-day totals of the scope.
    async fn full_stats(
        &self,
        id: &str,
        scope: Scope<'_>,
        c: &Counters,
        now: i64,
    ) -> Result<pb::Stats, Status> {
        let end = now + 1;
        let hour = self.sum(scope, end - HOUR, end, now).await?.total();
        let day = self.sum(scope, end - DAY, end, now).await?.total();
        Ok(to_stats(id, c, hour, day))
    }
}

/// Resolves a request's period to [from, to); windows end just after `now`.
fn resolve(p: Option<pb::Period>, now: i64) -> Result<(i64, i64), Status> {
    let end = now + 1;
    match p.and_then(|p| p.period) {
        None => Ok((end - HOUR, end)),
        Some(period::Period::Window(w)) => match pb::Window::try_from(w) {
            Ok(pb::Window::Unspecified | pb::Window::LastHour) => Ok((end - HOUR, end)),
            Ok(pb::Window::LastDay) => Ok((end - DAY, end)),
            Ok(pb::Window::LastWeek) => Ok((end - 7 * DAY, end)),
            Err(_) => Err(Status::invalid_argument(format!("period.window {w} is not a known Window"))),
        },
        Some(period::Period::Range(r)) if r.from_ms < r.to_ms => Ok((r.from_ms, r.to_ms)),
        Some(period::Period::Range(r)) => Err(Status::invalid_argument(format!(
            "period.range.from_ms ({}) must be less than to_ms ({})",
            r.from_ms, r.to_ms
        ))),
    }
}

fn check_id(field: &str, id: &str) -> Result<(), Status> {
    if id.len() > MAX_ID {
        return Err(Status::invalid_argument(format!(
            "{field} is {} bytes, the limit is {MAX_ID}",
            id.len()
        )));
    }
    Ok(())
}

fn to_stats(id: &str, c: &Counters, last_hour: u64, last_day: u64) -> pb::Stats {
    pb::Stats {
        id: id.to_owned(),
        counts: Some(pb::EventCounts {
            impressions: c.count(EventType::Impression),
            clicks: c.count(EventType::Click),
            conversions: c.count(EventType::Conversion),
            installs: c.count(EventType::Install),
            video_starts: c.count(EventType::VideoStart),
            video_progress: c.count(EventType::VideoProgress),
            video_completes: c.count(EventType::VideoComplete),
            total: c.total(),
        }),
        ctr: c.ctr(),
        conversion_rate: c.conversion_rate(),
        revenue_usd: c.revenue_usd,
        video_ms: c.video_ms,
        last_hour_events: last_hour,
        last_day_events: last_day,
    }
}

/// Stats of `scope` with its counters over the period and its last hour / day totals.
fn range(from: i64, to: i64) -> Option<pb::TimeRange> {
    Some(pb::TimeRange { from_ms: from, to_ms: to })
}

#[tonic::async_trait]
impl AnalyticsRpc for AnalyticsService {
    #[tracing::instrument(level = "debug", skip_all, name = "GetAdStats")]
    async fn get_ad_stats(
        &self,
        req: Request<pb::GetAdStatsRequest>,
    ) -> Result<Response<pb::GetAdStatsResponse>, Status> {
        let r = req.into_inner();
        check_id("ad_id", &r.ad_id)?;
        let now = now_ms();
        let (from, to) = resolve(r.period, now)?;
        let scope = if r.ad_id.is_empty() { Scope::All } else { Scope::Ad(&r.ad_id) };
        let c = self.sum(scope, from, to, now).await?;
        let stats = self.full_stats(&r.ad_id, scope, &c, now).await?;
        Ok(Response::new(pb::GetAdStatsResponse { stats: Some(stats), range: range(from, to) }))
    }

    #[tracing::instrument(level = "debug", skip_all, name = "TopAds")]
    async fn top_ads(&self, req: Request<pb::TopAdsRequest>) -> Result<Response<pb::TopAdsResponse>, Status> {
        let r = req.into_inner();
        let metric = Metric::try_from(r.metric)
            .map_err(|_| Status::invalid_argument(format!("metric {} is not a known Metric", r.metric)))?;
        let limit = match r.limit {
            0 => 10,
            n @ 1..=1000 => n as usize,
            n => {
                return Err(Status::invalid_argument(format!("limit {n} is above the maximum of 1000")));
            }
        };
        let now = now_ms();
        let (from, to) = resolve(r.period, now)?;
        let mut ads: Vec<_> = self
            .counters
            .per_key(Kind::Ad, from, to, now)
            .await
            .map_err(crate::status::from_store)?
            .into_iter()
            .filter(|(_, c)| c.denominator(metric) >= r.min_denominator)
            .collect();
        ads.sort_by(|x, y| y.1.metric(metric).total_cmp(&x.1.metric(metric)).then_with(|| x.0.cmp(&y.0)));
        let mut out = Vec::with_capacity(limit.min(ads.len()));
        for (id, c) in ads.iter().take(limit) {
            out.push(self.full_stats(id, Scope::Ad(id), c, now).await?);
        }
        let ads = out;
        Ok(Response::new(pb::TopAdsResponse { ads, range: range(from, to) }))
    }

    #[tracing::instrument(level = "debug", skip_all, name = "EventsByCampaign")]
    async fn events_by_campaign(
        &self,
        req: Request<pb::EventsByCampaignRequest>,
    ) -> Result<Response<pb::EventsByCampaignResponse>, Status> {
        let r = req.into_inner();
        check_id("campaign_id", &r.campaign_id)?;
        let limit = match r.limit {
            0 => 100,
            n @ 1..=10_000 => n as usize,
            n => {
                return Err(Status::invalid_argument(format!("limit {n} is above the maximum of 10000")));
            }
        };
        let now = now_ms();
        let (from, to) = resolve(r.period, now)?;
        let mut camps =
            self.counters.per_key(Kind::Campaign, from, to, now).await.map_err(crate::status::from_store)?;
        if !r.campaign_id.is_empty() {
            camps.retain(|(id, _)| *id == r.campaign_id);
        }
        camps.sort_by(|x, y| y.1.total().cmp(&x.1.total()).then_with(|| x.0.cmp(&y.0)));
        let mut campaigns = Vec::with_capacity(limit.min(camps.len()));
        for (id, c) in camps.iter().take(limit) {
            campaigns.push(self.full_stats(id, Scope::Campaign(id), c, now).await?);
        }
        Ok(Response::new(pb::EventsByCampaignResponse { campaigns, range: range(from, to) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_resolve_and_bad_ranges_are_refused() {
        let now = 10 * DAY;
        assert_eq!(resolve(None, now).unwrap(), (now + 1 - HOUR, now + 1));
        let week = pb::Period { period: Some(period::Period::Window(pb::Window::LastWeek as i32)) };
        assert_eq!(resolve(Some(week), now).unwrap().0, now + 1 - 7 * DAY);
        let bad = pb::Period { period: Some(period::Period::Range(pb::TimeRange { from_ms: 5, to_ms: 5 })) };
        assert_eq!(resolve(Some(bad), now).unwrap_err().code(), tonic::Code::InvalidArgument);
        let unknown = pb::Period { period: Some(period::Period::Window(99)) };
        assert_eq!(resolve(Some(unknown), now).unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
