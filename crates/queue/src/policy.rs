//! The scheduling policy and the queue's configuration (`[queue]`).

use adflow_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The queue backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueBackend {
    /// Follows `storage.backend` (file: embedded) and uses its server settings.
    #[default]
    Auto,
    /// redb file in the gateway process.
    Embedded,
    /// Redis (or Redis Cluster), shared by every gateway.
    Redis,
    /// MongoDB, shared by every gateway.
    Mongodb,
}

/// Queue settings: where it persists and the policy it starts with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Where the queue lives: "auto" (default: where the events are, on the same server),
    /// "embedded" (redb file, one gateway), "redis" or "mongodb" (shared by every gateway).
    pub backend: QueueBackend,
    /// Settings of the redis queue.
    pub redis: crate::redis_queue::RedisQueueConfig,
    /// Settings of the mongodb queue.
    pub mongodb: crate::mongo_queue::MongoQueueConfig,
    /// The redb database file (default "data/queue.redb").
    pub path: PathBuf,
    /// Serve overdue ads first and age waiting ads (default true).
    pub anti_starvation: bool,
    /// Max wait for ads that set none, seconds (default 300).
    pub max_wait_seconds: u32,
    /// One effective priority level per this many seconds waited (default 60; 0: no aging).
    pub aging_step_seconds: u32,
    /// Leases per ad before it is dead-lettered (default 5).
    pub max_attempts: u32,
    /// Lease duration, seconds (default 30).
    pub lease_seconds: u32,
    /// Finished ads kept in memory for fast reads (default 16384; older ones come from disk).
    pub recent_finished: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            backend: QueueBackend::Auto,
            redis: Default::default(),
            mongodb: Default::default(),
            path: PathBuf::from("data/queue.redb"),
            anti_starvation: true,
            max_wait_seconds: 300,
            aging_step_seconds: 60,
            max_attempts: 5,
            lease_seconds: 30,
            recent_finished: 16_384,
        }
    }
}

impl QueueConfig {
    /// The policy these settings start with.
    pub fn policy(&self) -> pb::Policy {
        pb::Policy {
            anti_starvation: self.anti_starvation,
            max_wait_seconds: self.max_wait_seconds,
            aging_step_seconds: self.aging_step_seconds,
            max_attempts: self.max_attempts,
            lease_seconds: self.lease_seconds,
        }
    }
}

/// The scheduling rules of a policy.
pub fn rules(p: &pb::Policy) -> crate::index::Rules {
    crate::index::Rules {
        anti_starvation: p.anti_starvation,
        aging_step_ms: p.aging_step_seconds as i64 * 1000,
    }
}

/// Checks a policy; the error names the field.
pub fn check(p: &pb::Policy) -> Result<(), (&'static str, String)> {
    if !(1..=86_400).contains(&p.max_wait_seconds) {
        return Err(("max_wait_seconds", format!("{} is outside 1..=86400", p.max_wait_seconds)));
    }
    if p.aging_step_seconds > 86_400 {
        return Err(("aging_step_seconds", format!("{} is above 86400", p.aging_step_seconds)));
    }
    if !(1..=100).contains(&p.max_attempts) {
        return Err(("max_attempts", format!("{} is outside 1..=100", p.max_attempts)));
    }
    if !(1..=3_600).contains(&p.lease_seconds) {
        return Err(("lease_seconds", format!("{} is outside 1..=3600", p.lease_seconds)));
    }
    Ok(())
}

/// Applies the set fields of `u` to `p`.
pub fn apply(p: &pb::Policy, u: &pb::SetPolicyRequest) -> pb::Policy {
    pb::Policy {
        anti_starvation: u.anti_starvation.unwrap_or(p.anti_starvation),
        max_wait_seconds: u.max_wait_seconds.unwrap_or(p.max_wait_seconds),
        aging_step_seconds: u.aging_step_seconds.unwrap_or(p.aging_step_seconds),
        max_attempts: u.max_attempts.unwrap_or(p.max_attempts),
        lease_seconds: u.lease_seconds.unwrap_or(p.lease_seconds),
    }
}
