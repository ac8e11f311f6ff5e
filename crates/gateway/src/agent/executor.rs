//! Runs typed agent commands in two steps. `plan` computes exactly what a command would
//! change (the preview a dry run shows) without changing anything, and says whether the
//! change is wide or disruptive enough to need confirmation; `apply` makes that change and
//! nothing else. A plan that confirmation holds back therefore runs later exactly as it
//! was previewed: a wide priority change is planned as the list of the ads it changes (ads
//! that arrived since are not touched, ads that left are skipped and counted), a purge as
//! the ads it cancels.
//!
//! Queue commands go through the `QueueControlService` methods themselves (the code path
//! of the QueueControl RPCs, not a copy); the worker count and batch size go through the
//! worker pool and the pipeline; reads are in `reads`.

mod reads;

use crate::pipeline::Pipeline;
use crate::services::queue_control::QueueControlService;
use crate::worker_pool::WorkerPool;
use adflow_domain::now_ms;
use adflow_domain::pb::queue_control_server::QueueControl;
use adflow_domain::pb::{self, agent_command::Command};
use adflow_queue::AdQueue;
use adflow_store::counters::CounterSource;
use futures::StreamExt;
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

/// One ad's planned priority change.
#[derive(Clone, Debug)]
pub struct Change {
    /// The ad.
    pub id: String,
    /// Its priority when planned.
    pub from: u32,
    /// The priority to set.
    pub to: u32,
}

/// The change a plan makes when applied.
#[derive(Clone, Debug)]
enum Action {
    /// A read: the preview is the answer.
    None,
    /// QueueControl.Reprioritize with this filter (narrow changes, run at once).
    Reprioritize {
        filter: pb::AdFilter,
        priority: u32,
        what: String,
    },
    /// These ads, these priorities (wide changes and single ads: exactly the preview).
    SetPriorities {
        changes: Vec<Change>,
        what: String,
    },
    Policy(pb::SetPolicyRequest),
    Scale(u32),
    Batch(u32),
    Pause {
        priority: u32,
        pause: bool,
    },
    /// Cancel these queued ads of this partition.
    Purge {
        priority: u32,
        ids: Vec<String>,
    },
    Requeue {
        ids: Vec<String>,
    },
}

/// What a command would do, computed before it runs.
#[derive(Clone, Debug)]
pub struct Plan {
    /// What a dry run (or a confirmation request) shows; a read's answer.
    pub preview: pb::CommandResult,
    /// Why it needs confirmation before it runs (None: it runs at once).
    pub confirm: Option<String>,
    action: Action,
}

/// Rows a preview lists at most (the plan holds every change).
pub const PREVIEW_ROWS: usize = 100;

pub(crate) fn res(affected: u64, message: impl Into<String>) -> pb::CommandResult {
    pb::CommandResult { affected, message: message.into(), columns: vec![], rows: vec![] }
}

pub(crate) fn table(message: String, columns: &[&str], rows: Vec<Vec<String>>) -> pb::CommandResult {
    pb::CommandResult {
        affected: 0,
        message,
        columns: columns.iter().map(|c| c.to_string()).collect(),
        rows: rows.into_iter().map(|cells| pb::Row { cells }).collect(),
    }
}

pub(crate) fn secs(ms: i64) -> String {
    format!("{:.1}", ms as f64 / 1000.0)
}

fn change(preview: pb::CommandResult, action: Action) -> Plan {
    Plan { preview, confirm: None, action }
}

/// Every queued ad (optionally of one family and one priority), newest first.
pub(crate) async fn queued(ctx: &Ctx, family: &str, priority: u32) -> Result<Vec<pb::Ad>, Status> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let req = pb::ListAdsRequest {
            status: pb::AdStatus::Queued as i32,
            game_family: family.to_string(),
            priority,
            page_size: 1000,
            page_token,
        };
        let page = ctx.queue.list(&req, now_ms()).await.map_err(crate::status::from_queue)?;
        out.extend(page.ads);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

fn change_rows(changes: &[Change], ads: &[pb::Ad]) -> Vec<Vec<String>> {
    let find = |id: &str| ads.iter().find(|a| a.id == id);
    changes
        .iter()
        .take(PREVIEW_ROWS)
        .map(|c| {
            let ad = find(&c.id);
            vec![
                c.id.clone(),
                ad.and_then(|a| a.spec.as_ref()).map(|s| s.game_family.clone()).unwrap_or_default(),
                c.from.to_string(),
                c.to.to_string(),
                ad.map(|a| secs(a.wait_ms)).unwrap_or_default(),
            ]
        })
        .collect()
}

const CHANGE_COLUMNS: &[&str] = &["id", "family", "priority", "new_priority", "wait_s"];

fn listed(n: usize) -> String {
    if n > PREVIEW_ROWS { format!(" (listed: the first {PREVIEW_ROWS})") } else { String::new() }
}

async fn plan_filter(
    ctx: &Ctx,
    filter: pb::AdFilter,
    priority: u32,
    what: String,
    confirm_above: u64,
) -> Result<Plan, Status> {
    let dry = pb::ReprioritizeRequest { filter: Some(filter.clone()), new_priority: priority, dry_run: true };
    let r = ctx.control.reprioritize(Request::new(dry)).await?.into_inner();
    if r.changed <= confirm_above {
        let msg = format!("would change {} of {} queued {what} to priority {priority}", r.changed, r.matched);
        return Ok(change(res(r.changed, msg), Action::Reprioritize { filter, priority, what }));
    }
    // Wide: the plan is the list of ads, so a confirmation changes exactly these.
    let min_wait = i64::from(filter.older_than_seconds) * 1000;
    let ads: Vec<pb::Ad> = queued(ctx, &filter.game_family, filter.current_priority)
        .await?
        .into_iter()
        .filter(|a| a.wait_ms >= min_wait)
        .collect();
    let matched = ads.len();
    let changes: Vec<Change> = ads
        .iter()
        .filter(|a| a.priority != priority)
        .map(|a| Change { id: a.id.clone(), from: a.priority, to: priority })
        .collect();
    let n = changes.len();
    let mut preview = table(
        format!("would change {n} of {matched} queued {what} to priority {priority}{}", listed(n)),
        CHANGE_COLUMNS,
        change_rows(&changes, &ads),
    );
    preview.affected = n as u64;
    let mut plan =
        change(preview, Action::SetPriorities { changes, what: format!("{what} to priority {priority}") });
    if n as u64 > confirm_above {
        plan.confirm =
            Some(format!("it changes {n} ads, more than agent.confirm_above_ads ({confirm_above})"));
    }
    Ok(plan)
}

/// The optimize rule: every queued ad below priority 5 that has waited at least half the
/// policy's max wait moves up one level, longest waiting first.
pub(crate) async fn optimize_changes(ctx: &Ctx) -> Result<(Vec<Change>, Vec<pb::Ad>, pb::Policy), Status> {
    let policy = ctx.control.get_policy(Request::new(pb::GetPolicyRequest {})).await?.into_inner();
    let half = i64::from(policy.max_wait_seconds) * 500;
    let mut ads: Vec<pb::Ad> =
        queued(ctx, "", 0).await?.into_iter().filter(|a| a.priority < 5 && a.wait_ms >= half).collect();
    ads.sort_by_key(|a| std::cmp::Reverse(a.wait_ms));
    let changes =
        ads.iter().map(|a| Change { id: a.id.clone(), from: a.priority, to: a.priority + 1 }).collect();
    Ok((changes, ads, policy))
}

/// Computes what `cmd` would do; changes nothing.
pub async fn plan(ctx: &Ctx, cmd: &pb::AgentCommand, confirm_above: u64) -> Result<Plan, Status> {
    let Some(c) = &cmd.command else { return Err(Status::invalid_argument("no command")) };
    match c {
        Command::SetFamilyPriority(x) => {
            let f = pb::AdFilter { game_family: x.game_family.clone(), ..Default::default() };
            plan_filter(ctx, f, x.priority, format!("{} ads", x.game_family), confirm_above).await
        }
        Command::SetPriorityOlderThan(x) => {
            let secs = super::older_than_seconds(x);
            let f = pb::AdFilter { older_than_seconds: secs, ..Default::default() };
            let what = format!("ads older than {}", super::duration(secs));
            plan_filter(ctx, f, x.priority, what, confirm_above).await
        }
        Command::SetPriorityWhere(x) => {
            let f = pb::AdFilter {
                game_family: x.game_family.clone(),
                older_than_seconds: x.older_than_seconds,
                current_priority: x.current_priority,
            };
            let mut what =
                if x.game_family.is_empty() { "ads".to_string() } else { format!("{} ads", x.game_family) };
            if x.current_priority > 0 {
                what.push_str(&format!(" at priority {}", x.current_priority));
            }
            if x.older_than_seconds > 0 {
                what.push_str(&format!(" older than {}", super::duration(x.older_than_seconds)));
            }
            plan_filter(ctx, f, x.priority, what, confirm_above).await
        }
        Command::SetAdPriority(x) => {
            let ad = ctx.queue.get(&x.ad_id, now_ms()).await.map_err(crate::status::from_queue)?;
            if ad.status != pb::AdStatus::Queued as i32 {
                let status = pb::AdStatus::try_from(ad.status).unwrap_or_default();
                return Err(Status::failed_precondition(format!(
                    "ad {} is {status:?}; only queued ads can be reprioritized",
                    x.ad_id
                )));
            }
            let changes = vec![Change { id: ad.id.clone(), from: ad.priority, to: x.priority }];
            let n = u64::from(ad.priority != x.priority);
            let mut preview = table(
                format!("would change ad {} from priority {} to {}", ad.id, ad.priority, x.priority),
                CHANGE_COLUMNS,
                change_rows(&changes, std::slice::from_ref(&ad)),
            );
            preview.affected = n;
            Ok(change(preview, Action::SetPriorities { changes, what: format!("ad {}", ad.id) }))
        }
        Command::OptimizeWaitTime(_) => {
            let (changes, ads, policy) = optimize_changes(ctx).await?;
            let n = changes.len();
            let off = if policy.anti_starvation {
                ""
            } else {
                "; anti-starvation is off ('enable starvation mode' bounds every wait)"
            };
            let mut preview = table(
                format!(
                    "rule: every queued ad below priority 5 that has waited at least half the max wait ({} s of {} s) moves up one level, longest waiting first; would change {n} ads{}{off}",
                    policy.max_wait_seconds / 2,
                    policy.max_wait_seconds,
                    listed(n)
                ),
                CHANGE_COLUMNS,
                change_rows(&changes, &ads),
            );
            preview.affected = n as u64;
            let mut plan = change(
                preview,
                Action::SetPriorities { changes, what: "ads (optimize for minimum wait time)".into() },
            );
            if n as u64 > confirm_above {
                plan.confirm =
                    Some(format!("it changes {n} ads, more than agent.confirm_above_ads ({confirm_above})"));
            }
            Ok(plan)
        }
        Command::SetAntiStarvation(t) => {
            plan_policy(ctx, pb::SetPolicyRequest { anti_starvation: Some(t.enabled), ..Default::default() })
                .await
        }
        Command::SetMaxWait(s) => {
            plan_policy(ctx, pb::SetPolicyRequest { max_wait_seconds: Some(s.seconds), ..Default::default() })
                .await
        }
        Command::ScaleWorkers(n) => {
            let before = ctx.pool.size().await;
            let msg = format!("would scale in-process workers from {before} to {}", n.value);
            let mut plan = change(res(u64::from(before != n.value as usize), msg), Action::Scale(n.value));
            if n.value == 0 && before > 0 {
                plan.confirm = Some(format!("it stops all {before} in-process workers"));
            }
            Ok(plan)
        }
        Command::SetBatchSize(n) => {
            let before = ctx.pipeline.max_batch();
            let msg = format!("would change the ingest batch size from {before} to {}", n.value);
            Ok(change(res(u64::from(before != n.value as usize), msg), Action::Batch(n.value)))
        }
        Command::PausePriority(p) | Command::ResumePriority(p) => {
            let pause = matches!(c, Command::PausePriority(_));
            let stats = ctx.control.get_stats(Request::new(pb::GetStatsRequest {})).await?.into_inner();
            let part =
                stats.partitions.iter().find(|x| x.priority == p.priority).cloned().unwrap_or_default();
            let changes = part.paused != pause;
            let msg = match (pause, changes) {
                (true, true) => format!(
                    "would pause priority {}: its {} queued ads are not served until 'resume priority {}'",
                    p.priority, part.queued, p.priority
                ),
                (false, true) => format!("would resume priority {} ({} ads queued)", p.priority, part.queued),
                (true, false) => {
                    format!("priority {} is already paused ({} ads queued)", p.priority, part.queued)
                }
                (false, false) => {
                    format!("priority {} is already serving ({} ads queued)", p.priority, part.queued)
                }
            };
            let mut plan =
                change(res(u64::from(changes), msg), Action::Pause { priority: p.priority, pause });
            if pause && changes {
                plan.confirm = Some(format!("pausing stops serving {} queued ads", part.queued));
            }
            Ok(plan)
        }
        Command::PurgePriority(p) => {
            let ads = queued(ctx, "", p.priority).await?;
            let n = ads.len();
            if n == 0 {
                return Ok(change(
                    res(0, format!("priority {} has no queued ads; nothing to purge", p.priority)),
                    Action::None,
                ));
            }
            let rows = ads
                .iter()
                .take(PREVIEW_ROWS)
                .map(|a| {
                    let spec = a.spec.clone().unwrap_or_default();
                    vec![a.id.clone(), spec.game_family, secs(a.wait_ms), spec.title]
                })
                .collect();
            let mut preview = table(
                format!(
                    "would cancel {n} queued ads of priority {} (cannot be undone){}",
                    p.priority,
                    listed(n)
                ),
                &["id", "family", "wait_s", "title"],
                rows,
            );
            preview.affected = n as u64;
            let ids = ads.into_iter().map(|a| a.id).collect();
            let mut plan = change(preview, Action::Purge { priority: p.priority, ids });
            plan.confirm = Some(format!("purging cancels {n} ads and cannot be undone"));
            Ok(plan)
        }
        Command::RequeueDeadLetters(_) => {
            let dl = ctx
                .control
                .list_dead_letters(Request::new(pb::ListDeadLettersRequest { limit: 1000 }))
                .await?
                .into_inner();
            let ids: Vec<String> = dl.dead_letters.iter().map(|d| d.id.clone()).collect();
            let n = ids.len();
            if n == 0 {
                return Ok(change(res(0, "there are no dead letters to requeue"), Action::None));
            }
            let more = if dl.total > n as u64 {
                format!(" (the newest {n} of {})", dl.total)
            } else {
                String::new()
            };
            let rows = dl
                .dead_letters
                .iter()
                .take(PREVIEW_ROWS)
                .map(|d| vec![d.id.clone(), d.attempts.to_string(), d.last_error.clone(), d.title.clone()])
                .collect();
            let mut preview = table(
                format!("would requeue {n} dead letters{more}{}", listed(n)),
                &["id", "attempts", "last_error", "title"],
                rows,
            );
            preview.affected = n as u64;
            let mut plan = change(preview, Action::Requeue { ids });
            if n as u64 > confirm_above {
                plan.confirm =
                    Some(format!("it requeues {n} ads, more than agent.confirm_above_ads ({confirm_above})"));
            }
            Ok(plan)
        }
        read => Ok(change(reads::read(ctx, read).await?, Action::None)),
    }
}

async fn plan_policy(ctx: &Ctx, update: pb::SetPolicyRequest) -> Result<Plan, Status> {
    let before = ctx.control.get_policy(Request::new(pb::GetPolicyRequest {})).await?.into_inner();
    let after = adflow_queue::policy::apply(&before, &update);
    let msg =
        format!("would change the policy from {} to {}", describe_policy(&before), describe_policy(&after));
    Ok(change(res(u64::from(after != before), msg), Action::Policy(update)))
}

fn describe_policy(p: &pb::Policy) -> String {
    format!("anti_starvation={}, max_wait={} s", p.anti_starvation, p.max_wait_seconds)
}

/// Makes the change `plan` previewed, and nothing else.
pub async fn apply(ctx: &Ctx, plan: &Plan) -> Result<pb::CommandResult, Status> {
    match &plan.action {
        Action::None => Ok(plan.preview.clone()),
        Action::Reprioritize { filter, priority, what } => {
            let req = pb::ReprioritizeRequest {
                filter: Some(filter.clone()),
                new_priority: *priority,
                dry_run: false,
            };
            let r = ctx.control.reprioritize(Request::new(req)).await?.into_inner();
            Ok(res(
                r.changed,
                format!("changed {} of {} queued {what} to priority {priority}", r.changed, r.matched),
            ))
        }
        Action::SetPriorities { changes, what } => {
            let results: Vec<Result<bool, Status>> = futures::stream::iter(changes.iter().cloned())
                .map(|c| async move {
                    let req = pb::SetPriorityRequest { id: c.id, priority: c.to };
                    match ctx.control.set_priority(Request::new(req)).await {
                        Ok(r) => Ok(r.into_inner().old_priority != c.to),
                        Err(s)
                            if matches!(
                                s.code(),
                                tonic::Code::FailedPrecondition | tonic::Code::NotFound
                            ) =>
                        {
                            Ok(false)
                        }
                        Err(s) => Err(s),
                    }
                })
                .buffer_unordered(16)
                .collect()
                .await;
            let mut changed = 0u64;
            for r in results {
                changed += u64::from(r?);
            }
            let skipped = changes.len() as u64 - changed;
            let tail = if skipped > 0 {
                format!("; {skipped} had left the queue or were already there")
            } else {
                String::new()
            };
            Ok(res(changed, format!("changed {changed} of the {} previewed {what}{tail}", changes.len())))
        }
        Action::Policy(update) => {
            let before = ctx.control.get_policy(Request::new(pb::GetPolicyRequest {})).await?.into_inner();
            let now = ctx.control.set_policy(Request::new(*update)).await?.into_inner();
            let msg = format!("policy is now {} (was {})", describe_policy(&now), describe_policy(&before));
            Ok(res(u64::from(now != before), msg))
        }
        Action::Scale(n) => {
            let (b, a) = ctx.pool.scale(*n as usize).await;
            Ok(res(b.abs_diff(a) as u64, format!("scaled in-process workers from {b} to {a}")))
        }
        Action::Batch(n) => {
            let old = ctx.pipeline.set_max_batch(*n as usize);
            Ok(res(u64::from(old != *n as usize), format!("ingest batch size is now {n} events (was {old})")))
        }
        Action::Pause { priority, pause } => {
            // Affected is 1 only when the state changes (pausing a paused partition is 0).
            let stats = ctx.control.get_stats(Request::new(pb::GetStatsRequest {})).await?.into_inner();
            let was = stats.partitions.iter().any(|x| x.priority == *priority && x.paused);
            let req = Request::new(pb::PartitionRequest { priority: *priority });
            let st = if *pause {
                ctx.control.pause_partition(req).await?
            } else {
                ctx.control.resume_partition(req).await?
            }
            .into_inner();
            let state = if st.paused { "paused" } else { "serving" };
            let already = if was == *pause { " already" } else { "" };
            let msg = format!("priority {} is{already} {state} ({} ads queued)", st.priority, st.queued);
            Ok(res(u64::from(was != *pause), msg))
        }
        Action::Purge { priority, ids } => {
            let mut cancelled = 0u64;
            for id in ids {
                // Only what the preview listed and only while it is still queued there.
                let Ok(ad) = ctx.queue.get(id, now_ms()).await else { continue };
                if ad.status != pb::AdStatus::Queued as i32 || ad.priority != *priority {
                    continue;
                }
                if ctx.queue.cancel(id, now_ms()).await.is_ok() {
                    cancelled += 1;
                }
            }
            let skipped = ids.len() as u64 - cancelled;
            let tail =
                if skipped > 0 { format!("; {skipped} had left the partition") } else { String::new() };
            Ok(res(
                cancelled,
                format!(
                    "cancelled {cancelled} of the {} previewed ads of priority {priority}{tail}",
                    ids.len()
                ),
            ))
        }
        Action::Requeue { ids } => {
            let req = pb::RequeueDeadLettersRequest { ids: ids.clone() };
            let r = ctx.control.requeue_dead_letters(Request::new(req)).await?.into_inner();
            Ok(res(
                r.requeued,
                format!("requeued {} of the {} previewed dead letters", r.requeued, ids.len()),
            ))
        }
    }
}
