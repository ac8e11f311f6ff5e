//! Optional LLM translation: the text goes to an OpenAI-compatible chat-completions
//! endpoint with a JSON schema of the typed commands; the answer is parsed and then
//! validated like any other input. Any failure (HTTP, timeout, not JSON, unknown command,
//! bad arguments) is returned as an error so the caller falls back to the parser.

use crate::config::AgentConfig;
use adflow_domain::pb::{self, agent_command::Command};
use serde::Deserialize;
use std::time::Duration;

/// A configured endpoint.
pub struct Llm {
    url: String,
    model: String,
    key: Option<String>,
    http: reqwest::Client,
}

/// The command names and arguments the model may answer with.
#[derive(Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
enum Answer {
    SetFamilyPriority { game_family: String, priority: u32 },
    SetPriorityOlderThan { older_than_minutes: u32, priority: u32 },
    ShowNext { count: u32 },
    FindWaiting { minutes: u32 },
    SetAntiStarvation { enabled: bool },
    SetMaxWait { seconds: u32 },
    ScaleWorkers { count: u32 },
    SetBatchSize { count: u32 },
    QueueDistribution,
    PerformanceSummary,
    PerformanceReport,
    FamilyStats,
    Predict { ad_id: String },
    RecommendPriorities,
    CapacityReport,
    PausePriority { priority: u32 },
    ResumePriority { priority: u32 },
    ShowDeadLetters,
    RequeueDeadLetters,
}

impl From<Answer> for pb::AgentCommand {
    fn from(a: Answer) -> Self {
        let none = pb::NoArgs {};
        let c = match a {
            Answer::SetFamilyPriority { game_family, priority } => {
                Command::SetFamilyPriority(pb::SetFamilyPriority { game_family, priority })
            }
            Answer::SetPriorityOlderThan { older_than_minutes, priority } => {
                Command::SetPriorityOlderThan(pb::SetPriorityOlderThan { older_than_minutes, priority })
            }
            Answer::ShowNext { count } => Command::ShowNext(pb::Count { value: count }),
            Answer::FindWaiting { minutes } => Command::FindWaiting(pb::Minutes { minutes }),
            Answer::SetAntiStarvation { enabled } => Command::SetAntiStarvation(pb::Toggle { enabled }),
            Answer::SetMaxWait { seconds } => Command::SetMaxWait(pb::Seconds { seconds }),
            Answer::ScaleWorkers { count } => Command::ScaleWorkers(pb::Count { value: count }),
            Answer::SetBatchSize { count } => Command::SetBatchSize(pb::Count { value: count }),
            Answer::QueueDistribution => Command::QueueDistribution(none),
            Answer::PerformanceSummary => Command::PerformanceSummary(none),
            Answer::PerformanceReport => Command::PerformanceReport(none),
            Answer::FamilyStats => Command::FamilyStats(none),
            Answer::Predict { ad_id } => Command::Predict(pb::AdArg { ad_id }),
            Answer::RecommendPriorities => Command::RecommendPriorities(none),
            Answer::CapacityReport => Command::CapacityReport(none),
            Answer::PausePriority { priority } => Command::PausePriority(pb::PriorityArg { priority }),
            Answer::ResumePriority { priority } => Command::ResumePriority(pb::PriorityArg { priority }),
            Answer::ShowDeadLetters => Command::ShowDeadLetters(none),
            Answer::RequeueDeadLetters => Command::RequeueDeadLetters(none),
        };
        pb::AgentCommand { command: Some(c) }
    }
}

/// The JSON schema sent with every request.
fn schema() -> serde_json::Value {
    let obj = |name: &str, props: serde_json::Value| {
        let mut required = vec![serde_json::json!("command")];
        if let Some(m) = props.as_object() {
            required.extend(m.keys().map(|k| serde_json::json!(k)));
        }
        let mut p = props.as_object().cloned().unwrap_or_default();
        p.insert("command".into(), serde_json::json!({"const": name}));
        serde_json::json!({"type": "object", "properties": p, "required": required, "additionalProperties": false})
    };
    let int = serde_json::json!({"type": "integer", "minimum": 0});
    let prio = serde_json::json!({"type": "integer", "minimum": 1, "maximum": 5});
    let empty = serde_json::json!({});
    serde_json::json!({"oneOf": [
        obj("set_family_priority", serde_json::json!({"game_family": {"type": "string"}, "priority": prio})),
        obj("set_priority_older_than", serde_json::json!({"older_than_minutes": int, "priority": prio})),
        obj("show_next", serde_json::json!({"count": int})),
        obj("find_waiting", serde_json::json!({"minutes": int})),
        obj("set_anti_starvation", serde_json::json!({"enabled": {"type": "boolean"}})),
        obj("set_max_wait", serde_json::json!({"seconds": int})),
        obj("scale_workers", serde_json::json!({"count": int})),
        obj("set_batch_size", serde_json::json!({"count": int})),
        obj("queue_distribution", empty.clone()),
        obj("performance_summary", empty.clone()),
        obj("performance_report", empty.clone()),
        obj("family_stats", empty.clone()),
        obj("predict", serde_json::json!({"ad_id": {"type": "string"}})),
        obj("recommend_priorities", empty.clone()),
        obj("capacity_report", empty.clone()),
        obj("pause_priority", serde_json::json!({"priority": prio})),
        obj("resume_priority", serde_json::json!({"priority": prio})),
        obj("show_dead_letters", empty.clone()),
        obj("requeue_dead_letters", empty),
    ]})
}

const SYSTEM: &str = "You translate an ad-queue operator's request into exactly one command of the given JSON schema. \
Priorities are 1 (lowest) to 5 (highest); 'high' means 5 and 'low' means 1. Answer with the JSON object only.";

impl Llm {
    /// The endpoint of `cfg`, if one is configured.
    pub fn from_config(cfg: &AgentConfig) -> Option<Self> {
        if cfg.llm_url.is_empty() {
            return None;
        }
        let http =
            reqwest::Client::builder().timeout(Duration::from_millis(cfg.llm_timeout_ms)).build().ok()?;
        let key = std::env::var(&cfg.llm_api_key_env).ok().filter(|k| !k.is_empty());
        Some(Self { url: cfg.llm_url.clone(), model: cfg.llm_model.clone(), key, http })
    }

    /// Asks the model; any failure is an error (the caller falls back to the parser).
    pub async fn translate(&self, text: &str) -> Result<pb::AgentCommand, String> {
        let body = serde_json::json!({
            "model": self.model,
            "temperature": 0,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "agent_command", "schema": schema(), "strict": true}},
        });
        let mut req = self.http.post(&self.url).json(&body);
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.map_err(|e| format!("request failed: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("endpoint answered HTTP {}", resp.status()));
        }
        let v: serde_json::Value = resp.json().await.map_err(|e| format!("answer is not JSON: {e}"))?;
        let content = v["choices"][0]["message"]["content"]
            .as_str()
            .ok_or("answer has no choices[0].message.content")?;
        let answer: Answer =
            serde_json::from_str(content).map_err(|e| format!("content is not a known command: {e}"))?;
        let cmd = pb::AgentCommand::from(answer);
        super::validate(&cmd)?;
        Ok(cmd)
    }
}
