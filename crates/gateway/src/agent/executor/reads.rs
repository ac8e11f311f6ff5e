//! The read commands: each answers with a message and a table, and changes nothing (so a
//! dry run of a read is the read itself).

use super::{Ctx, optimize_changes, secs, table};
use adflow_domain::analytics::Scope;
use adflow_domain::now_ms;
use adflow_domain::pb::queue_control_server::QueueControl;
use adflow_domain::pb::{self, EventType, agent_command::Command};
use tonic::{Request, Status};

/// Answers a read command.
pub(super) async fn read(ctx: &Ctx, c: &Command) -> Result<pb::CommandResult, Status> {
    let now = now_ms();
    match c {
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
        Command::FindWaiting(m) => find_waiting(ctx, m.minutes.saturating_mul(60), now).await,
        Command::FindWaitingOver(s) => find_waiting(ctx, s.seconds, now).await,
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
                .map_err(crate::status::from_store)?;
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
            let (changes, ads, policy) = optimize_changes(ctx).await?;
            let rows = super::change_rows(&changes, &ads);
            let msg = format!(
                "rule: an ad below priority 5 that has waited at least half the max wait ({} s of {} s) should move up one level; {} ads match{} (recommendation only, nothing changed; 'optimize queue for minimum wait time' applies it)",
                policy.max_wait_seconds / 2,
                policy.max_wait_seconds,
                changes.len(),
                super::listed(changes.len()),
            );
            Ok(table(msg, super::CHANGE_COLUMNS, rows))
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
        Command::ShowSettings(_) => {
            let p = ctx.control.get_policy(Request::new(pb::GetPolicyRequest {})).await?.into_inner();
            let rows = vec![
                vec!["anti_starvation".into(), p.anti_starvation.to_string()],
                vec!["max_wait_seconds".into(), p.max_wait_seconds.to_string()],
                vec!["aging_step_seconds".into(), p.aging_step_seconds.to_string()],
                vec!["max_attempts".into(), p.max_attempts.to_string()],
                vec!["lease_seconds".into(), p.lease_seconds.to_string()],
                vec!["in_process_workers".into(), ctx.pool.size().await.to_string()],
                vec!["ingest_batch_size".into(), ctx.pipeline.max_batch().to_string()],
            ];
            let msg = format!(
                "anti-starvation {}, max wait {} s",
                if p.anti_starvation { "on" } else { "off" },
                p.max_wait_seconds
            );
            Ok(table(msg, &["setting", "value"], rows))
        }
        other => Err(Status::internal(format!("{other:?} is not a read"))),
    }
}

async fn find_waiting(ctx: &Ctx, seconds: u32, now: i64) -> Result<pb::CommandResult, Status> {
    let min_ms = i64::from(seconds) * 1000;
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
    let f = pb::AdFilter { older_than_seconds: seconds, ..Default::default() };
    let total = ctx.queue.reprioritize(&f, 5, true, now).await.map_err(crate::status::from_queue)?.1;
    Ok(table(
        format!(
            "{total} queued ads have waited longer than {} (listed: the first {} in serving order)",
            super::super::duration(seconds),
            rows.len()
        ),
        &["id", "priority", "wait_s", "title", "family"],
        rows,
    ))
}
