//! Runs typed agent commands. Queue commands go through the `QueueControlService`
//! methods themselves (the very code path of the QueueControl RPCs, not a copy); the
//! worker count and batch size go through the worker pool and the pipeline. On a dry
//! run, every changing command reports what it would change and changes nothing.

use crate::pipeline::Pipeline;
use crate::services::queue_control::QueueControlService;
use crate::worker_pool::WorkerPool;
use adflow_domain::analytics::Scope;
use adflow_domain::pb::queue_control_server::QueueControl;
use adflow_domain::pb::{self, agent_command::Command};
use adflow_domain::{now_ms, pb::EventType};
use adflow_queue::AdQueue;
use adflow_store::counters::CounterSource;
use std::sync::Arc;
use tonic::{Request, Status};

/// What the executor acts on.
pub struct Ctx {
    /// The QueueControl implementation (shared with the RPC service).
    pub control: Arc<QueueControlService>,
    /// The queue (for reads QueueControl has no RPC for).
    pub queue: Arc<dyn AdQueue>,
    /// The in-process workers.
    pub pool: Arc<WorkerPool>,
    /// The ingest pipeline.
    pub pipeline: Arc<Pipeline>,
    /// Event analytics.
    pub analytics: Arc<dyn CounterSource>,
}

fn res(affected: u64, message: impl Into<String>) -> pb::CommandResult {
    pb::CommandResult { affected, message: message.into(), columns: vec![], rows: vec![] }
}

fn table(message: String, columns: &[&str], rows: Vec<Vec<String>>) -> pb::CommandResult {
    pb::CommandResult {
        affected: 0,
        message,
        columns: columns.iter().map(|c| c.to_string()).collect(),
        rows: rows.into_iter().map(|cells| pb::Row { cells }).collect(),
    }
}

fn secs(ms: i64) -> String {
    format!("{:.1}", ms as f64 / 1000.0)
}

async fn reprioritize(
    ctx: &Ctx,
    filter: pb::AdFilter,
    priority: u32,
    dry: bool,
    what: &str,
) -> Result<pb::CommandResult, Status> {
    let r = ctx
        .control
        .reprioritize(Request::new(pb::ReprioritizeRequest {
            filter: Some(filter),
            new_priority: priority,
            dry_run: dry,
        }))
        .await?
        .into_inner();
    let verb = if dry { "would change" } else { "changed" };
    Ok(res(r.changed, format!("{verb} {} of {} queued {what} to priority {priority}", r.changed, r.matched)))
}

async fn set_policy(ctx: &Ctx, update: pb::SetPolicyRequest, dry: bool) -> Result<pb::CommandResult, Status> {
    let before = ctx.control.get_policy(Request::new(pb::GetPolicyRequest {})).await?.into_inner();
    let after = adflow_queue::policy::apply(&before, &update);
    let changed = u64::from(after != before);
    let describe =
        |p: &pb::Policy| format!("anti_starvation={}, max_wait={} s", p.anti_starvation, p.max_wait_seconds);
    if dry {
        return Ok(res(
            changed,
            format!("would change the policy from {} to {}", describe(&before), describe(&after)),
        ));
    }
    let now = ctx.control.set_policy(Request::new(update)).await?.into_inner();
    Ok(res(changed, format!("policy is now {} (was {})", describe(&now), describe(&before))))
}

/// Runs `cmd`.
pub async fn execute(ctx: &Ctx, cmd: &pb::AgentCommand, dry: bool) -> Result<pb::CommandResult, Status> {
    let Some(c) = &cmd.command else { return Err(Status::invalid_argument("no command")) };
    let now = now_ms();
    match c {
        Command::SetFamilyPriority(x) => {
            let f = pb::AdFilter { game_family: x.game_family.clone(), ..Default::default() };
            reprioritize(ctx, f, x.priority, dry, &format!("{} ads", x.game_family)).await
        }
        Command::SetPriorityOlderThan(x) => {
            let f = pb::AdFilter {
                older_than_seconds: x.older_than_minutes.saturating_mul(60),
                ..Default::default()
            };
            reprioritize(ctx, f, x.priority, dry, &format!("ads older than {} min", x.older_than_minutes))
                .await
        }
        Command::SetAntiStarvation(t) => {
            set_policy(
                ctx,
                pb::SetPolicyRequest { anti_starvation: Some(t.enabled), ..Default::default() },
                dry,
            )
            .await
        }
        Command::SetMaxWait(s) => {
            set_policy(
                ctx,
                pb::SetPolicyRequest { max_wait_seconds: Some(s.seconds), ..Default::default() },
                dry,
            )
            .await
        }
        Command::ScaleWorkers(n) => {
            let before = ctx.pool.size().await;
            if dry {
                return Ok(res(
                    u64::from(before != n.value as usize),
                    format!("would scale in-process workers from {before} to {}", n.value),
                ));
            }
            let (b, a) = ctx.pool.scale(n.value as usize).await;
            Ok(res(b.abs_diff(a) as u64, format!("scaled in-process workers from {b} to {a}")))
        }
        Command::SetBatchSize(n) => {
            let before = ctx.pipeline.max_batch();
            if dry {
                return Ok(res(
                    u64::from(before != n.value as usize),
                    format!("would change the ingest batch size from {before} to {}", n.value),
                ));
            }
            let old = ctx.pipeline.set_max_batch(n.value as usize);
            Ok(res(
                u64::from(old != n.value as usize),
                format!("ingest batch size is now {} events (was {old})", n.value),
            ))
        }
        Command::PausePriority(p) | Command::ResumePriority(p) => {
            let pause = matches!(c, Command::PausePriority(_));
            let verb = if pause { "pause" } else { "resume" };
            if dry {
                let stats = ctx.control.get_stats(Request::new(pb::GetStatsRequest {})).await?.into_inner();
                let part =
                    stats.partitions.iter().find(|x| x.priority == p.priority).cloned().unwrap_or_default();
                let change = u64::from(part.paused != pause);
                return Ok(res(
                    change,
                    format!("would {verb} priority {} ({} ads queued)", p.priority, part.queued),
                ));
            }
            let req = Request::new(pb::PartitionRequest { priority: p.priority });
            let st = if pause {
                ctx.control.pause_partition(req).await?
            } else {
                ctx.control.resume_partition(req).await?
            }
            .into_inner();
            Ok(res(
                1,
                format!(
                    "priority {} is {} ({} ads queued)",
                    st.priority,
                    if st.paused { "paused" } else { "serving" },
                    st.queued
                ),
            ))
        }
        Command::RequeueDeadLetters(_) => {
            if dry {
                let dl = ctx
                    .control
                    .list_dead_letters(Request::new(pb::ListDeadLettersRequest { limit: 1 }))
                    .await?
                    .into_inner();
                return Ok(res(dl.total, format!("would requeue {} dead letters", dl.total)));
            }
            let r = ctx
                .control
                .requeue_dead_letters(Request::new(pb::RequeueDeadLettersRequest { ids: vec![] }))
                .await?
                .into_inner();
            Ok(res(r.requeued, format!("requeued {} dead letters", r.requeued)))
        }
        Command::ShowNext(n) => {
            let ads =
                ctx.control.peek(Request::new(pb::PeekRequest { limit: n.value })).await?.into_inner().ads;
            let rows = ads
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    vec![
                        (i + 1).to_string(),
                        a.id.clone(),
                        a.priority.to_string(),
                        a.effective_priority.to_string(),
                        secs(a.wait_ms),
                        a.title.clone(),
                        a.game_family.clone(),
                    ]
                })
                .collect();
            Ok(table(
                format!("the next {} ads in serving order", ads.len()),
                &["order", "id", "priority", "effective", "wait_s", "title", "family"],
                rows,
            ))
        }
        Command::FindWaiting(m) => {
            let min_ms = m.minutes as i64 * 60_000;
            let ads = ctx.control.peek(Request::new(pb::PeekRequest { limit: 1000 })).await?.into_inner().ads;
            let rows: Vec<_> = ads
                .iter()
                .filter(|a| a.wait_ms >= min_ms)
                .map(|a| {
                    vec![
                        a.id.clone(),
                        a.priority.to_string(),
                        secs(a.wait_ms),
                        a.title.clone(),
                        a.game_family.clone(),
                    ]
                })
                .collect();
            let f = pb::AdFilter { older_than_seconds: m.minutes.saturating_mul(60), ..Default::default() };
            let total = ctx.queue.reprioritize(&f, 5, true, now).await.map_err(crate::status::from_queue)?.1;
            Ok(table(
                format!(
                    "{total} queued ads have waited longer than {} minutes (listed: the first {} in serving order)",
                    m.minutes,
                    rows.len()
                ),
                &["id", "priority", "wait_s", "title", "family"],
                rows,
            ))
        }
        Command::QueueDistribution(_) => {
            let s = ctx.control.get_stats(Request::new(pb::GetStatsRequest {})).await?.into_inner();
            let rows = s
                .partitions
                .iter()
                .map(|p| {
                    vec![
                        p.priority.to_string(),
                        p.queued.to_string(),
                        p.paused.to_string(),
                        secs(p.oldest_wait_ms),
                    ]
                })
                .collect();
            Ok(table(
                format!("{} ads queued, {} in flight", s.total_queued, s.in_flight),
                &["priority", "queued", "paused", "oldest_wait_s"],
                rows,
            ))
        }
        Command::PerformanceSummary(_) => {
            let s = ctx.control.get_stats(Request::new(pb::GetStatsRequest {})).await?.into_inner();
            let rows = vec![
                vec!["queued".into(), s.total_queued.to_string()],
                vec!["in_flight".into(), s.in_flight.to_string()],
                vec!["dead_letters".into(), s.dead_letters.to_string()],
                vec!["oldest_wait_s".into(), secs(s.oldest_wait_ms)],
                vec!["average_wait_s".into(), secs(s.average_wait_ms)],
                vec!["completed_last_minute".into(), s.completed_last_minute.to_string()],
                vec!["processing_rate_per_s".into(), format!("{:.2}", s.processing_rate_per_s)],
                vec!["completed_total".into(), s.completed_total.to_string()],
                vec!["workers".into(), s.workers.to_string()],
            ];
            Ok(table(
                format!(
                    "{} queued, {:.2} ads/s processed over the last minute",
                    s.total_queued, s.processing_rate_per_s
                ),
                &["metric", "value"],
                rows,
            ))
        }
        Command::PerformanceReport(_) => {
            let s = ctx.control.get_stats(Request::new(pb::GetStatsRequest {})).await?.into_inner();
            let hour = ctx
                .analytics
                .sum(Scope::All, now - 3_600_000, now + 1, now)
                .await
                .map_err(|e| Status::unavailable(format!("reading the analytics counters: {e}")))?;
            let c = ctx.pipeline.counters();
            use std::sync::atomic::Ordering::Relaxed;
            let rows = vec![
                vec!["events_last_hour".into(), hour.total().to_string()],
                vec!["impressions_last_hour".into(), hour.count(EventType::Impression).to_string()],
                vec!["clicks_last_hour".into(), hour.count(EventType::Click).to_string()],
                vec!["ctr_last_hour".into(), format!("{:.4}", hour.ctr())],
                vec!["revenue_usd_last_hour".into(), format!("{:.2}", hour.revenue_usd)],
                vec!["events_committed_since_start".into(), c.committed.load(Relaxed).to_string()],
                vec!["events_rejected_since_start".into(), c.rejected.load(Relaxed).to_string()],
                vec!["ads_completed_last_minute".into(), s.completed_last_minute.to_string()],
                vec!["ads_queued".into(), s.total_queued.to_string()],
                vec!["ads_dead_letters".into(), s.dead_letters.to_string()],
            ];
            Ok(table(
                format!("last hour: {} events, {} ads queued", hour.total(), s.total_queued),
                &["metric", "value"],
                rows,
            ))
        }
        Command::FamilyStats(_) => {
            let fams = ctx.queue.family_stats(now).await.map_err(crate::status::from_queue)?;
            let rows = fams
                .iter()
                .map(|f| {
                    vec![
                        f.family.clone(),
                        f.queued.to_string(),
                        f.processing.to_string(),
                        f.dead_letters.to_string(),
                        secs(f.average_wait_ms),
                    ]
                })
                .collect();
            Ok(table(
                format!("{} game families with active ads", fams.len()),
                &["family", "queued", "processing", "dead_letters", "average_wait_s"],
                rows,
            ))
        }
        Command::Predict(a) => {
            let ad = ctx.queue.get(&a.ad_id, now).await.map_err(crate::status::from_queue)?;
            let status = pb::AdStatus::try_from(ad.status).unwrap_or_default();
            let msg = match status {
                pb::AdStatus::Queued if ad.estimated_completion_ms > 0 => format!(
                    "ad {} is queued at position {}; expected done in about {} s at the last minute's rate",
                    ad.id,
                    ad.queue_position,
                    ad.estimated_completion_ms / 1000
                ),
                pb::AdStatus::Queued => format!(
                    "ad {} is queued at position {}; no processing rate yet to estimate from",
                    ad.id, ad.queue_position
                ),
                s => format!("ad {} is {:?}", ad.id, s),
            };
            let rows = vec![vec![
                ad.id.clone(),
                format!("{status:?}"),
                ad.queue_position.to_string(),
                secs(ad.wait_ms),
                secs(ad.estimated_completion_ms),
            ]];
            Ok(table(msg, &["id", "status", "position", "wait_s", "eta_s"], rows))
        }
        Command::RecommendPriorities(_) => {
            let policy = ctx.control.get_policy(Request::new(pb::GetPolicyRequest {})).await?.into_inner();
            let half = policy.max_wait_seconds as i64 * 500;
            let ads = ctx.control.peek(Request::new(pb::PeekRequest { limit: 1000 })).await?.into_inner().ads;
            let rows: Vec<_> = ads
                .iter()
                .filter(|a| a.priority < 5 && a.wait_ms >= half)
                .map(|a| {
                    vec![
                        a.id.clone(),
                        a.game_family.clone(),
                        a.priority.to_string(),
                        (a.priority + 1).to_string(),
                        secs(a.wait_ms),
                    ]
                })
                .collect();
            let msg = format!(
                "rule: an ad below priority 5 that has waited at least half the max wait ({} s of {} s) should move up one level; {} ads match (recommendation only, nothing changed)",
                half / 1000,
                policy.max_wait_seconds,
                rows.len()
            );
            Ok(table(msg, &["id", "family", "priority", "recommended", "wait_s"], rows))
        }
        Command::CapacityReport(_) => {
            let s = ctx.control.get_stats(Request::new(pb::GetStatsRequest {})).await?.into_inner();
            let workers =
                ctx.control.list_workers(Request::new(pb::ListWorkersRequest {})).await?.into_inner().workers;
            let held: u64 = workers.iter().map(|w| w.in_flight as u64).sum();
            let capacity: u64 = workers.iter().map(|w| (w.in_flight + w.credits) as u64).sum();
            let util = if capacity > 0 { 100.0 * held as f64 / capacity as f64 } else { 0.0 };
            let drain = if s.processing_rate_per_s > 0.0 {
                format!("{:.0}", s.total_queued as f64 / s.processing_rate_per_s)
            } else {
                "n/a".into()
            };
            let mut rows: Vec<Vec<String>> = workers
                .iter()
                .map(|w| {
                    vec![
                        w.worker_id.clone(),
                        w.in_flight.to_string(),
                        (w.in_flight + w.credits).to_string(),
                        w.processed.to_string(),
                    ]
                })
                .collect();
            rows.push(vec!["total".into(), held.to_string(), capacity.to_string(), String::new()]);
            let msg = format!(
                "{} workers, {held} of {capacity} lease slots in use ({util:.0}% utilization), {:.2} ads/s, {} queued, drain time {drain} s",
                workers.len(),
                s.processing_rate_per_s,
                s.total_queued
            );
            Ok(table(msg, &["worker", "in_flight", "capacity", "processed"], rows))
        }
        Command::ShowDeadLetters(_) => {
            let dl = ctx
                .control
                .list_dead_letters(Request::new(pb::ListDeadLettersRequest { limit: 100 }))
                .await?
                .into_inner();
            let rows = dl
                .dead_letters
                .iter()
                .map(|d| vec![d.id.clone(), d.attempts.to_string(), d.last_error.clone(), d.title.clone()])
                .collect();
            Ok(table(format!("{} dead letters", dl.total), &["id", "attempts", "last_error", "title"], rows))
        }
    }
}
