//! `adflow.v1.AgentService`: plain-language operator commands, executed through the
//! QueueControl operations and written to the audit log.

use crate::agent::executor::{self, Ctx};
use crate::agent::llm::Llm;
use crate::agent::{describe, parser, validate};
use crate::auth::Caller;
use adflow_domain::pb::agent_service_server::AgentService;
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
}

impl AgentSvc {
    /// A service running commands on `ctx`, translating with `llm` when configured.
    pub fn new(ctx: Ctx, llm: Option<Llm>) -> Self {
        let queue = ctx.queue.clone();
        Self { ctx, queue, llm }
    }

    async fn interpret(&self, text: &str) -> Result<(pb::AgentCommand, pb::Interpreter), Status> {
        if let Some(llm) = &self.llm {
            match llm.translate(text).await {
                Ok(c) => return Ok((c, pb::Interpreter::Llm)),
                Err(e) => tracing::warn!(error = %e, "LLM translation failed; the parser decides"),
            }
        }
        let cmd = parser::parse(text).map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok((cmd, pb::Interpreter::Parser))
    }
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
        let n = r.text.chars().count();
        if r.text.trim().is_empty() || n > 500 {
            return Err(Status::invalid_argument(format!("text must be 1..=500 characters (got {n})")));
        }
        let started = Instant::now();
        let (command, by) = self.interpret(&r.text).await?;
        validate(&command).map_err(Status::invalid_argument)?;
        let understood_as = describe(&command);
        let outcome = executor::execute(&self.ctx, &command, r.dry_run).await;
        let result = match &outcome {
            Ok(res) => res.clone(),
            Err(s) => pb::CommandResult { message: format!("failed: {}", s.message()), ..Default::default() },
        };
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        let entry = pb::AuditEntry {
            command_id: uuid::Uuid::now_v7().to_string(),
            caller,
            text: r.text.clone(),
            command: Some(command.clone()),
            understood_as: understood_as.clone(),
            interpreted_by: by as i32,
            result: Some(result.clone()),
            dry_run: r.dry_run,
            at_ms: now_ms(),
            duration_ms,
        };
        self.queue.audit_append(&entry).await.map_err(crate::status::from_queue)?;
        tracing::info!(caller = %entry.caller, text = %entry.text, command = %understood_as, dry_run = r.dry_run, "agent command");
        outcome?;
        Ok(Response::new(pb::ExecuteResponse {
            command_id: entry.command_id,
            command: Some(command),
            understood_as,
            interpreted_by: by as i32,
            result: Some(result),
            dry_run: r.dry_run,
            duration_ms,
        }))
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
