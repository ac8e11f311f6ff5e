//! The queue's settings (`[queue]`): which backend, each backend's own section, and the
//! policy the queue starts with. `resolved` turns `backend = "auto"` into a concrete
//! backend from the storage settings; `crate::open` builds it.

use adflow_proto::v1 as pb;
use adflow_store::{Backend, StorageConfig};
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
    pub redis: RedisQueueConfig,
    /// Settings of the mongodb queue.
    pub mongodb: MongoQueueConfig,
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

    /// These settings with `auto` resolved: the queue lives where the events do, on the
    /// same server (so several gateways on one backend share everything).
    pub fn resolved(&self, storage: &StorageConfig) -> QueueConfig {
        let mut q = self.clone();
        if q.backend == QueueBackend::Auto {
            match storage.backend {
                Backend::File => q.backend = QueueBackend::Embedded,
                Backend::Redis => {
                    q.backend = QueueBackend::Redis;
                    q.redis.url = storage.redis.url.clone();
                    q.redis.cluster_nodes = storage.redis.cluster_nodes.clone();
                }
                Backend::Mongodb => {
                    q.backend = QueueBackend::Mongodb;
                    q.mongodb.uri = storage.mongodb.uri.clone();
                    q.mongodb.database = storage.mongodb.database.clone();
                }
            }
        }
        q
    }
}

/// Settings of the Redis queue (`[queue.redis]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisQueueConfig {
    /// Server URL (default "redis://127.0.0.1:6379/").
    pub url: String,
    /// Seed nodes of a Redis Cluster; when set, `url` is ignored.
    pub cluster_nodes: Vec<String>,
    /// Key prefix with its hash tag (default "{adflow:q}").
    pub prefix: String,
    /// How long finished (completed, cancelled) ads stay readable, seconds (default 7 days).
    pub finished_ttl_seconds: u64,
    /// Queue shards, 1..=64 (default 1). Shard 0 uses `prefix` as it is (the layout of a
    /// one-shard queue); shard i > 0 appends `:i` (or `:i.j`) inside the hash tag, chosen
    /// so the K tags fall in K different equal slot ranges and a Redis Cluster with K
    /// primaries puts one shard on each. An ad's shard is the FNV-1a hash of its id
    /// modulo K. Every gateway of one queue must use the same value; it can be raised
    /// from 1 at any time, other changes only while shards 1.. hold no queued, leased or
    /// dead ad (the gateway refuses to start otherwise).
    pub shards: u32,
    /// Across shards, how much later (ms) an ad of the same effective priority may have
    /// been enqueued and still be served before the head of another shard (default 100;
    /// see `redis_queue` "Across shards"). Larger: fewer round trips per claim.
    pub shard_fifo_slack_ms: u32,
}

impl Default for RedisQueueConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/".into(),
            cluster_nodes: Vec::new(),
            prefix: "{adflow:q}".into(),
            finished_ttl_seconds: 7 * 86_400,
            shards: 1,
            shard_fifo_slack_ms: 100,
        }
    }
}

/// The most queue shards `queue.redis.shards` may name (lease ids carry the shard in 6 bits).
pub const MAX_SHARDS: u32 = 64;

impl RedisQueueConfig {
    /// Checks the values types cannot express; the error names the key.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !(1..=MAX_SHARDS).contains(&self.shards) {
            return Err(("queue.redis.shards", format!("must be 1..={MAX_SHARDS}, got {}", self.shards)));
        }
        if !self.prefix.contains('{') || !self.prefix.contains('}') {
            return Err((
                "queue.redis.prefix",
                format!("{:?} needs a hash tag like {{adflow:q}}", self.prefix),
            ));
        }
        if self.shard_fifo_slack_ms > 3_600_000 {
            return Err(("queue.redis.shard_fifo_slack_ms", "must be at most 3600000 (1 h)".into()));
        }
        Ok(())
    }

    /// Where the server (or cluster) is.
    pub fn target(&self) -> adflow_store::redis_conn::Target {
        adflow_store::redis_conn::Target { url: self.url.clone(), cluster_nodes: self.cluster_nodes.clone() }
    }
}

/// Settings of the MongoDB queue (`[queue.mongodb]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MongoQueueConfig {
    /// Connection string (default "mongodb://127.0.0.1:27017/?directConnection=true").
    pub uri: String,
    /// Database (default "adflow").
    pub database: String,
}

impl Default for MongoQueueConfig {
    fn default() -> Self {
        Self { uri: "mongodb://127.0.0.1:27017/?directConnection=true".into(), database: "adflow".into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_the_event_store_onto_its_server() {
        let mut storage = StorageConfig::default();
        assert_eq!(QueueConfig::default().resolved(&storage).backend, QueueBackend::Embedded);
        storage.backend = Backend::Redis;
        storage.redis.url = "redis://10.0.0.9:6379/".into();
        let q = QueueConfig::default().resolved(&storage);
        assert_eq!((q.backend, q.redis.url.as_str()), (QueueBackend::Redis, "redis://10.0.0.9:6379/"));
        storage.backend = Backend::Mongodb;
        storage.mongodb.database = "ads".into();
        let q = QueueConfig::default().resolved(&storage);
        assert_eq!((q.backend, q.mongodb.database.as_str()), (QueueBackend::Mongodb, "ads"));
        let pinned = QueueConfig { backend: QueueBackend::Embedded, ..Default::default() };
        assert_eq!(pinned.resolved(&storage).backend, QueueBackend::Embedded, "a set backend is kept");
    }

    #[test]
    fn shard_counts_outside_1_to_64_are_refused_by_name() {
        let ok = RedisQueueConfig::default();
        assert_eq!(ok.shards, 1, "one shard by default");
        assert!(ok.check().is_ok());
        for bad in [0, 65, 1000] {
            let (key, msg) = RedisQueueConfig { shards: bad, ..Default::default() }.check().unwrap_err();
            assert_eq!(key, "queue.redis.shards");
            assert!(msg.contains("1..=64"), "{msg}");
        }
        assert!(RedisQueueConfig { shards: 64, ..Default::default() }.check().is_ok());
        let (key, _) =
            RedisQueueConfig { prefix: "adflow:q".into(), ..Default::default() }.check().unwrap_err();
        assert_eq!(key, "queue.redis.prefix");
    }
}
