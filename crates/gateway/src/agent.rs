//! The operator agent: plain-language commands -> one typed `AgentCommand` -> the same
//! QueueControl (and config) operations an operator would call, audited.
//!
//! `parser` is deterministic and needs no network; `llm` optionally asks an
//! OpenAI-compatible endpoint first and falls back to the parser on any failure. Whoever
//! understood the text, the command then passes the same gate: `validate` (ranges),
//! `resolve` (families against the live queue), and `executor::plan`, which computes the
//! exact preview; a wide or disruptive plan is held in `confirm` until the operator sends
//! its token back.

pub mod confirm;
pub mod executor;
pub mod llm;
pub mod parser;

use adflow_domain::pb::{self, agent_command::Command};

/// What the parser checks arguments against: the queue as it is now.
#[derive(Clone, Debug, Default)]
pub struct Live {
    /// Families with active ads, as the queue spells them.
    pub families: Vec<String>,
    /// In-process workers running (for "add two workers").
    pub workers: u32,
    /// The policy's max wait, seconds (for "what's stuck?").
    pub max_wait_seconds: u32,
}

/// The minimum wait of a `SetPriorityOlderThan`, seconds (older clients send minutes).
pub fn older_than_seconds(x: &pb::SetPriorityOlderThan) -> u32 {
    if x.older_than_seconds > 0 { x.older_than_seconds } else { x.older_than_minutes.saturating_mul(60) }
}

/// Checks the arguments of a typed command (whoever produced it); the error names the field.
pub fn validate(c: &pb::AgentCommand) -> Result<(), String> {
    let prio = |p: u32, field: &str| {
        adflow_queue::Priority::new(p).map(drop).map_err(|e| format!("{field}: priority {e}"))
    };
    let family = |f: &str, required: bool| {
        if f.len() > 64 || required && f.trim().is_empty() {
            Err("game_family must be 1..=64 characters".to_string())
        } else {
            Ok(())
        }
    };
    let ad = |id: &str, field: &str| {
        uuid::Uuid::parse_str(id).map(|_| ()).map_err(|_| format!("{field}: {id:?} is not an ad id (a UUID)"))
    };
    match &c.command {
        None => Err("no command".into()),
        Some(Command::SetFamilyPriority(x)) => {
            family(&x.game_family, true)?;
            prio(x.priority, "priority")
        }
        Some(Command::SetPriorityOlderThan(x)) => {
            if x.older_than_seconds > 0
                && x.older_than_minutes > 0
                && x.older_than_minutes.saturating_mul(60) != x.older_than_seconds
            {
                return Err(format!(
                    "older_than_minutes {} and older_than_seconds {} disagree",
                    x.older_than_minutes, x.older_than_seconds
                ));
            }
            prio(x.priority, "priority")
        }
        Some(Command::SetPriorityWhere(x)) => {
            family(&x.game_family, false)?;
            if x.current_priority > 5 {
                return Err(format!("current_priority {} is outside 0..=5", x.current_priority));
            }
            prio(x.priority, "priority")
        }
        Some(Command::SetAdPriority(x)) => {
            ad(&x.ad_id, "set_ad_priority")?;
            prio(x.priority, "priority")
        }
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
        Some(Command::PausePriority(p) | Command::ResumePriority(p) | Command::PurgePriority(p)) => {
            prio(p.priority, "priority")
        }
        Some(Command::Predict(a)) => ad(&a.ad_id, "predict"),
        Some(_) => Ok(()),
    }
}

fn squash(s: &str) -> String {
    s.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect()
}

/// Checks the families a command names against the live queue (case, spaces and hyphens
/// ignored) and spells them as the queue does: "rpg fantasy" -> "RPG-Fantasy".
pub fn resolve(c: &mut pb::AgentCommand, live: &Live) -> Result<(), String> {
    let name = match &mut c.command {
        Some(Command::SetFamilyPriority(x)) => &mut x.game_family,
        Some(Command::SetPriorityWhere(x)) if !x.game_family.is_empty() => &mut x.game_family,
        _ => return Ok(()),
    };
    let want = squash(name);
    match live.families.iter().find(|f| squash(f) == want) {
        Some(f) => {
            *name = f.clone();
            Ok(())
        }
        None => Err(format!("no family '{name}'; known families: {}", live.families.join(", "))),
    }
}

/// A wait said in the largest whole unit: "90 seconds", "10 minutes", "2 hours".
pub fn duration(secs: u32) -> String {
    let plural = |n: u32, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    if secs > 0 && secs.is_multiple_of(3600) {
        plural(secs / 3600, "hour")
    } else if secs > 0 && secs.is_multiple_of(60) {
        plural(secs / 60, "minute")
    } else {
        plural(secs, "second")
    }
}

/// The command said back as a sentence.
pub fn describe(c: &pb::AgentCommand) -> String {
    match &c.command {
        None => "nothing".into(),
        Some(Command::SetFamilyPriority(x)) => {
            format!("set the priority of every queued {} ad to {}", x.game_family, x.priority)
        }
        Some(Command::SetPriorityOlderThan(x)) => format!(
            "set the priority of every ad queued for at least {} to {}",
            duration(older_than_seconds(x)),
            x.priority
        ),
        Some(Command::SetPriorityWhere(x)) => {
            let mut who = "every queued".to_string();
            if !x.game_family.is_empty() {
                who.push(' ');
                who.push_str(&x.game_family);
            }
            who.push_str(" ad");
            if x.current_priority > 0 {
                who.push_str(&format!(" at priority {}", x.current_priority));
            }
            if x.older_than_seconds > 0 {
                who.push_str(&format!(" queued for at least {}", duration(x.older_than_seconds)));
            }
            format!("set the priority of {who} to {}", x.priority)
        }
        Some(Command::SetAdPriority(x)) => format!("set the priority of ad {} to {}", x.ad_id, x.priority),
        Some(Command::ShowNext(n)) => format!("show the next {} ads in serving order", n.value),
        Some(Command::FindWaiting(m)) => {
            format!("find the ads that have waited longer than {}", duration(m.minutes.saturating_mul(60)))
        }
        Some(Command::FindWaitingOver(s)) => {
            format!("find the ads that have waited longer than {}", duration(s.seconds))
        }
        Some(Command::SetAntiStarvation(t)) => {
            format!("turn anti-starvation {}", if t.enabled { "on" } else { "off" })
        }
        Some(Command::SetMaxWait(s)) => format!("set the default maximum wait to {}", duration(s.seconds)),
        Some(Command::ScaleWorkers(n)) => format!("run {} in-process workers", n.value),
        Some(Command::SetBatchSize(n)) => format!("set the ingest batch size to {} events", n.value),
        Some(Command::QueueDistribution(_)) => "show the queue distribution by priority".into(),
        Some(Command::PerformanceSummary(_)) => "summarise queue performance".into(),
        Some(Command::PerformanceReport(_)) => "report performance for the last hour".into(),
        Some(Command::FamilyStats(_)) => "show processing statistics by game family".into(),
        Some(Command::Predict(a)) => format!("predict when ad {} will be processed", a.ad_id),
        Some(Command::RecommendPriorities(_)) => "recommend priority changes".into(),
        Some(Command::OptimizeWaitTime(_)) => {
            "optimize the queue for minimum wait time (every queued ad below priority 5 that has waited at least half the max wait moves up one level)".into()
        }
        Some(Command::CapacityReport(_)) => "report worker capacity utilization".into(),
        Some(Command::PausePriority(p)) => format!("pause priority {}", p.priority),
        Some(Command::ResumePriority(p)) => format!("resume priority {}", p.priority),
        Some(Command::PurgePriority(p)) => format!("purge priority {} (cancel its queued ads)", p.priority),
        Some(Command::ShowDeadLetters(_)) => "show the dead letters".into(),
        Some(Command::RequeueDeadLetters(_)) => "requeue every dead letter".into(),
        Some(Command::ShowSettings(_)) => "show the settings (policy, workers, batch size)".into(),
    }
}
