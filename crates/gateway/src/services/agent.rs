//! `adflow.v1.AgentService`: plain-language operator commands, executed through the
//! QueueControl operations and written to the audit log.
//!
//! One gate for every command, whoever understood the text (the LLM or the parser):
//! validate the arguments, check families against the live queue, plan the exact change,
//! and hold a wide or disruptive plan back until the caller confirms it with its token.
//! Every attempt is audited, including refusals, failures and previews, with the reason.

use crate::agent::confirm::{Confirmations, Pending};
use crate::agent::executor::{self, Ctx};
use crate::agent::llm::Llm;
use crate::agent::{Live, describe, parser, resolve, validate};
use crate::auth::Caller;
use crate::config::AgentConfig;
use adflow_domain::pb::agent_service_server::AgentService;
use adflow_domain::pb::queue_control_server::QueueControl;
use adflow_domain::{now_ms, pb};
use adflow_queue::AdQueue;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};

/// The AgentService.
pub struct AgentSvc {
    ctx: Ctx,
    queue: Arc<dyn AdQueue>,
    llm: Option<Llm>,
    confirm_above: u64,
    confirmations: Confirmations,
}

/// One attempt, as the audit log records it.
struct Attempt {
    caller: String,
    text: String,
    started: Instant,
    dry_run: bool,
}

/// What an audit entry says of an attempt.
#[derive(Default)]
struct Record {
    command: Option<pb::AgentCommand>,
    understood_as: String,
    by: pb::Interpreter,
    result: Option<pb::CommandResult>,
    outcome: pb::Outcome,
    reason: String,
    confirms: String,
}

impl AgentSvc {
    /// A service running commands on `ctx`, translating with `llm` when configured.
    pub fn new(ctx: Ctx, llm: Option<Llm>, cfg: &AgentConfig) -> Self {
        let queue = ctx.queue.clone();
        Self {
            ctx,
            queue,
            llm,
            confirm_above: cfg.confirm_above_ads,
            confirmations: Confirmations::new(cfg.confirm_ttl_seconds),
        }
    }

    /// The queue as it is now: families, workers, the max wait.
    async fn live(&self) -> Result<Live, Status> {
        let families = self.queue.family_stats(now_ms()).await.map_err(crate::status::from_queue)?;
        let policy = self.ctx.control.get_policy(Request::new(pb::GetPolicyRequest {})).await?.into_inner();
        Ok(Live {
            families: families.into_iter().map(|f| f.family).collect(),
            workers: self.ctx.pool.size().await as u32,
            max_wait_seconds: policy.max_wait_seconds,
        })
    }

    /// The typed command, who understood it and the notes, or why nothing fits.
    async fn interpret(
        &self,
        text: &str,
        live: &Live,
    ) -> Result<(pb::AgentCommand, pb::Interpreter, Vec<String>), String> {
        if let Some(llm) = &self.llm {
            let answer = llm.translate(text, live).await.and_then(|mut c| {
                resolve(&mut c, live)?;
                Ok(c)
            });
            match answer {
                Ok(c) => return Ok((c, pb::Interpreter::Llm, Vec::new())),
                Err(e) => tracing::warn!(error = %e, "LLM translation not used; the parser decides"),
            }
        }
        let mut parsed = parser::parse(text, live).map_err(|e| e.to_string())?;
        resolve(&mut parsed.command, live)?;
        Ok((parsed.command, pb::Interpreter::Parser, parsed.notes))
    }

    /// Writes the audit entry `id` of attempt `a`.
    async fn audit(&self, id: String, a: &Attempt, r: Record) -> Result<pb::AuditEntry, Status> {
        let entry = pb::AuditEntry {
            command_id: id,
            caller: a.caller.clone(),
            text: a.text.clone(),
            command: r.command,
            understood_as: r.understood_as,
            interpreted_by: r.by as i32,
            result: r.result,
            dry_run: a.dry_run,
            at_ms: now_ms(),
            duration_ms: a.started.elapsed().as_secs_f64() * 1000.0,
            outcome: r.outcome as i32,
            reason: r.reason,
            confirms_command_id: r.confirms,
        };
        self.queue.audit_append(&entry).await.map_err(crate::status::from_queue)?;
        tracing::info!(caller = %entry.caller, text = %entry.text, command = %entry.understood_as,
            outcome = ?r.outcome, reason = %entry.reason, dry_run = a.dry_run, "agent command");
        Ok(entry)
    }

    /// Audits a refusal and returns the status to answer with.
    async fn refuse(&self, a: &Attempt, status: Status) -> Status {
        let r =
            Record { outcome: pb::Outcome::Refused, reason: status.message().into(), ..Default::default() };
        match self.audit(new_id(), a, r).await {
            Ok(_) => status,
            Err(e) => e,
        }
    }

    /// Runs the preview `token` was issued for.
    async fn confirm(&self, a: &Attempt, token: &str) -> Result<pb::ExecuteResponse, Status> {
        if a.dry_run {
            let s = Status::invalid_argument("a confirmation runs the preview; it cannot be a dry run");
            return Err(self.refuse(a, s).await);
        }
        let p = match self.confirmations.take(token, &a.caller, &a.text, now_ms()) {
            Ok(p) => p,
            Err(e) => return Err(self.refuse(a, Status::failed_precondition(e)).await),
        };
        let a =
            Attempt { caller: a.caller.clone(), text: p.text.clone(), started: a.started, dry_run: false };
        let outcome = executor::apply(&self.ctx, &p.plan).await;
        let (result, out, reason) = match &outcome {
            Ok(r) => (r.clone(), pb::Outcome::Executed, String::new()),
            Err(s) => (failed(s), pb::Outcome::Failed, s.message().to_string()),
        };
        let record = Record {
            command: Some(p.command.clone()),
            understood_as: p.understood_as.clone(),
            by: p.interpreted_by,
            result: Some(result.clone()),
            outcome: out,
            reason,
            confirms: p.preview_id.clone(),
        };
        let entry = self.audit(new_id(), &a, record).await?;
        outcome?;
        Ok(pb::ExecuteResponse {
            command_id: entry.command_id,
            command: Some(p.command),
            understood_as: p.understood_as,
            interpreted_by: p.interpreted_by as i32,
            result: Some(result),
            dry_run: false,
            duration_ms: entry.duration_ms,
            outcome: out as i32,
            ..Default::default()
        })
    }
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn failed(s: &Status) -> pb::CommandResult {
    pb::CommandResult { message: format!("failed: {}", s.message()), ..Default::default() }
}

#[tonic::async_trait]
impl AgentService for AgentSvc {
    #[tracing::instrument(level = "debug", skip_all, name = "Execute")]
    async fn execute(
        &self,
        req: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        let caller =
            req.extensions().get::<Caller>().map(|c| c.name.clone()).unwrap_or_else(|| "anonymous".into());
        let r = req.into_inner();
        let a = Attempt { caller, text: r.text.clone(), started: Instant::now(), dry_run: r.dry_run };
        let n = r.text.chars().count();
        if n > 500 || r.text.trim().is_empty() && r.confirmation_token.is_empty() {
            let s = Status::invalid_argument(format!("text must be 1..=500 characters (got {n})"));
            return Err(self.refuse(&a, s).await);
        }
        if !r.confirmation_token.is_empty() {
            return self.confirm(&a, &r.confirmation_token).await.map(Response::new);
        }
        let live = self.live().await?;
        let (command, by, notes) = match self.interpret(&r.text, &live).await {
            Ok(x) => x,
            Err(e) => return Err(self.refuse(&a, Status::invalid_argument(e)).await),
        };
        if let Err(e) = validate(&command) {
            return Err(self.refuse(&a, Status::invalid_argument(e)).await);
        }
        let mut understood_as = describe(&command);
        if !notes.is_empty() {
            understood_as = format!("{understood_as} ({})", notes.join("; "));
        }
        let id = new_id();
        let mut record = Record {
            command: Some(command.clone()),
            understood_as: understood_as.clone(),
            by,
            ..Default::default()
        };
        let plan = match executor::plan(&self.ctx, &command, self.confirm_above).await {
            Ok(p) => p,
            Err(s) => {
                record.result = Some(failed(&s));
                record.outcome = pb::Outcome::Failed;
                record.reason = s.message().to_string();
                self.audit(id, &a, record).await?;
                return Err(s);
            }
        };
        let mut resp = pb::ExecuteResponse {
            command_id: id.clone(),
            command: Some(command.clone()),
            understood_as: understood_as.clone(),
            interpreted_by: by as i32,
            dry_run: r.dry_run,
            ..Default::default()
        };
        let (outcome, result) = if let Some(why) = &plan.confirm {
            let pending = Pending {
                caller: a.caller.clone(),
                text: r.text.clone(),
                command,
                understood_as,
                interpreted_by: by,
                plan: plan.clone(),
                preview_id: id.clone(),
                expires_at_ms: 0,
            };
            let (token, expires) = self.confirmations.issue(pending, now_ms());
            resp.confirmation_token = token;
            resp.confirmation_expires_at_ms = expires;
            resp.confirmation_reason = format!("needs confirmation: {why}");
            record.reason = resp.confirmation_reason.clone();
            let outcome = if r.dry_run { pb::Outcome::DryRun } else { pb::Outcome::ConfirmationRequired };
            (outcome, Ok(plan.preview.clone()))
        } else if r.dry_run {
            (pb::Outcome::DryRun, Ok(plan.preview.clone()))
        } else {
            let out = executor::apply(&self.ctx, &plan).await;
            (if out.is_ok() { pb::Outcome::Executed } else { pb::Outcome::Failed }, out)
        };
        let res = match &result {
            Ok(res) => res.clone(),
            Err(s) => {
                record.reason = s.message().to_string();
                failed(s)
            }
        };
        record.result = Some(res.clone());
        record.outcome = outcome;
        let entry = self.audit(id, &a, record).await?;
        result?;
        resp.result = Some(res);
        resp.duration_ms = entry.duration_ms;
        resp.outcome = outcome as i32;
        Ok(Response::new(resp))
    }

    #[tracing::instrument(level = "debug", skip_all, name = "ListCommands")]
    async fn list_commands(
        &self,
        req: Request<pb::ListCommandsRequest>,
    ) -> Result<Response<pb::ListCommandsResponse>, Status> {
        let r = req.into_inner();
        let size = match r.page_size {
            0 => 50,
            n @ 1..=500 => n as usize,
            n => return Err(Status::invalid_argument(format!("page_size {n} is above 500"))),
        };
        let before = (!r.page_token.is_empty()).then_some(r.page_token.as_str());
        let mut commands =
            self.queue.audit_list(before, size + 1).await.map_err(crate::status::from_queue)?;
        let next_page_token = if commands.len() > size {
            commands.truncate(size);
            commands.last().map(|c| c.command_id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListCommandsResponse { commands, next_page_token }))
    }
}
