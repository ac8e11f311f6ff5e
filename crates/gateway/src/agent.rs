//! The operator agent: plain-language commands -> one typed `AgentCommand` -> the same
//! QueueControl (and config) operations an operator would call, audited.
//!
//! `parser` is deterministic and needs no network; `llm` optionally asks an
//! OpenAI-compatible endpoint first and falls back to the parser on any failure;
//! `executor` runs a command (or reports what it would change on a dry run).

pub mod executor;
pub mod llm;
pub mod parser;

use adflow_domain::pb::{self, agent_command::Command};

/// Checks the arguments of a typed command (whoever produced it); the error names the field.
pub fn validate(c: &pb::AgentCommand) -> Result<(), String> {
    let prio = |p: u32, field: &str| {
        if (1..=5).contains(&p) {
            Ok(())
        } else {
            Err(format!("{field}: priority {p} is outside 1..=5 (5 is the highest)"))
        }
    };
    match &c.command {
        None => Err("no command".into()),
        Some(Command::SetFamilyPriority(x)) => {
            if x.game_family.trim().is_empty() || x.game_family.len() > 64 {
                return Err("game_family must be 1..=64 characters".into());
            }
            prio(x.priority, "priority")
        }
        Some(Command::SetPriorityOlderThan(x)) => prio(x.priority, "priority"),
        Some(Command::ShowNext(n)) if !(1..=1000).contains(&n.value) => {
            Err(format!("show_next: {} is outside 1..=1000", n.value))
        }
        Some(Command::ScaleWorkers(n)) if n.value > 64 => {
            Err(format!("scale_workers: {} is above 64", n.value))
        }
        Some(Command::SetBatchSize(n)) if !(1..=100_000).contains(&n.value) => {
            Err(format!("set_batch_size: {} is outside 1..=100000", n.value))
        }
        Some(Command::SetMaxWait(s)) if !(1..=86_400).contains(&s.seconds) => {
            Err(format!("set_max_wait: {} s is outside 1..=86400", s.seconds))
        }
        Some(Command::PausePriority(p) | Command::ResumePriority(p)) => prio(p.priority, "priority"),
        Some(Command::Predict(a)) if uuid::Uuid::parse_str(&a.ad_id).is_err() => {
            Err(format!("predict: {:?} is not an ad id", a.ad_id))
        }
        Some(_) => Ok(()),
    }
}

/// The command said back as a sentence.
pub fn describe(c: &pb::AgentCommand) -> String {
    match &c.command {
        None => "nothing".into(),
        Some(Command::SetFamilyPriority(x)) => {
            format!("set the priority of every queued {} ad to {}", x.game_family, x.priority)
        }
        Some(Command::SetPriorityOlderThan(x)) => {
            format!(
                "set the priority of every ad queued for more than {} minutes to {}",
                x.older_than_minutes, x.priority
            )
        }
        Some(Command::ShowNext(n)) => format!("show the next {} ads in serving order", n.value),
        Some(Command::FindWaiting(m)) => {
            format!("find the ads that have waited longer than {} minutes", m.minutes)
        }
        Some(Command::SetAntiStarvation(t)) => {
            format!("turn anti-starvation {}", if t.enabled { "on" } else { "off" })
        }
        Some(Command::SetMaxWait(s)) => format!("set the default maximum wait to {} seconds", s.seconds),
        Some(Command::ScaleWorkers(n)) => format!("run {} in-process workers", n.value),
        Some(Command::SetBatchSize(n)) => format!("set the ingest batch size to {} events", n.value),
        Some(Command::QueueDistribution(_)) => "show the queue distribution by priority".into(),
        Some(Command::PerformanceSummary(_)) => "summarise queue performance".into(),
        Some(Command::PerformanceReport(_)) => "report performance for the last hour".into(),
        Some(Command::FamilyStats(_)) => "show processing statistics by game family".into(),
        Some(Command::Predict(a)) => format!("predict when ad {} will be processed", a.ad_id),
        Some(Command::RecommendPriorities(_)) => "recommend priority changes".into(),
        Some(Command::CapacityReport(_)) => "report worker capacity utilization".into(),
        Some(Command::PausePriority(p)) => format!("pause priority {}", p.priority),
        Some(Command::ResumePriority(p)) => format!("resume priority {}", p.priority),
        Some(Command::ShowDeadLetters(_)) => "show the dead letters".into(),
        Some(Command::RequeueDeadLetters(_)) => "requeue every dead letter".into(),
    }
}
