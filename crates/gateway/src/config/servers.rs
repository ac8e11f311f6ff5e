//! `[redis]` and `[mongodb]`: the one place to name the Redis server (or cluster) and
//! the MongoDB database that every user of them shares: the event store, the analytics
//! counters, the shared dedup and the ad queue. Before these sections each user had its
//! own copy (`storage.redis.url`, `queue.redis.url`, ...); those old keys still work when
//! the new section leaves a value unset, and a config that sets both differently is
//! refused with an error naming the new key, so no two users silently disagree.

use super::{ConfigError, invalid};
use adflow_queue::QueueConfig;
use adflow_store::StorageConfig;
use serde::{Deserialize, Serialize};

/// `[redis]`: the Redis server every Redis user connects to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisServer {
    /// Server URL, e.g. "redis://127.0.0.1:6379/" (unset: `storage.redis.url` and
    /// `queue.redis.url` apply, each defaulting to "redis://127.0.0.1:6379/").
    pub url: Option<String>,
    /// Seed nodes of a Redis Cluster; when set, `url` is ignored (unset: the old keys).
    pub cluster_nodes: Option<Vec<String>>,
}

/// `[mongodb]`: the MongoDB database every MongoDB user connects to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MongoServer {
    /// Connection string (unset: `storage.mongodb.uri` and `queue.mongodb.uri` apply,
    /// each defaulting to "mongodb://127.0.0.1:27017/?directConnection=true").
    pub uri: Option<String>,
    /// Database (unset: `storage.mongodb.database` and `queue.mongodb.database`, "adflow").
    pub database: Option<String>,
}

/// Sets `old` (found at `old_key`, whose default is `default`) to `new` (the value of
/// `new_key`), refusing a different explicit old value.
fn adopt<T: PartialEq + Clone + std::fmt::Debug>(
    new_key: &'static str,
    new: &Option<T>,
    old_key: &str,
    old: &mut T,
    default: &T,
) -> Result<(), ConfigError> {
    let Some(new) = new else { return Ok(()) };
    if old != default && old != new {
        return Err(invalid(
            new_key,
            format!(
                "is {new:?} but {old_key} (its old place) is {old:?}: the server is set once now, in \
                 {new_key}; remove {old_key}"
            ),
        ));
    }
    *old = new.clone();
    Ok(())
}

/// Copies the shared server settings into every user's section.
pub(super) fn apply(
    redis: &RedisServer,
    mongodb: &MongoServer,
    storage: &mut StorageConfig,
    queue: &mut QueueConfig,
) -> Result<(), ConfigError> {
    let (ds, dq) = (StorageConfig::default(), QueueConfig::default());
    adopt("redis.url", &redis.url, "storage.redis.url", &mut storage.redis.url, &ds.redis.url)?;
    adopt("redis.url", &redis.url, "queue.redis.url", &mut queue.redis.url, &dq.redis.url)?;
    let nodes = "redis.cluster_nodes";
    adopt(
        nodes,
        &redis.cluster_nodes,
        "storage.redis.cluster_nodes",
        &mut storage.redis.cluster_nodes,
        &ds.redis.cluster_nodes,
    )?;
    adopt(
        nodes,
        &redis.cluster_nodes,
        "queue.redis.cluster_nodes",
        &mut queue.redis.cluster_nodes,
        &dq.redis.cluster_nodes,
    )?;
    adopt("mongodb.uri", &mongodb.uri, "storage.mongodb.uri", &mut storage.mongodb.uri, &ds.mongodb.uri)?;
    adopt("mongodb.uri", &mongodb.uri, "queue.mongodb.uri", &mut queue.mongodb.uri, &dq.mongodb.uri)?;
    let db = "mongodb.database";
    adopt(
        db,
        &mongodb.database,
        "storage.mongodb.database",
        &mut storage.mongodb.database,
        &ds.mongodb.database,
    )?;
    adopt(
        db,
        &mongodb.database,
        "queue.mongodb.database",
        &mut queue.mongodb.database,
        &dq.mongodb.database,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};
    use figment::Figment;
    use figment::providers::{Format, Serialized, Toml};

    fn load(toml: &str) -> Result<Config, ConfigError> {
        Config::from_figment(Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(toml)))
    }

    #[test]
    fn one_redis_section_reaches_every_redis_user() {
        let cfg =
            load("[redis]\nurl = \"redis://10.0.0.5:6379/\"\ncluster_nodes = [\"redis://10.0.0.5:7000/\"]")
                .unwrap();
        assert_eq!(cfg.storage.redis.url, "redis://10.0.0.5:6379/", "events, counters and dedup");
        assert_eq!(cfg.queue.redis.url, "redis://10.0.0.5:6379/", "the queue");
        assert_eq!(cfg.storage.redis.cluster_nodes, ["redis://10.0.0.5:7000/"]);
        assert_eq!(cfg.queue.redis.cluster_nodes, ["redis://10.0.0.5:7000/"]);
    }

    #[test]
    fn one_mongodb_section_reaches_every_mongodb_user() {
        let cfg = load("[mongodb]\nuri = \"mongodb://db:27017/\"\ndatabase = \"ads\"").unwrap();
        assert_eq!(
            (cfg.storage.mongodb.uri.as_str(), cfg.storage.mongodb.database.as_str()),
            ("mongodb://db:27017/", "ads")
        );
        assert_eq!(
            (cfg.queue.mongodb.uri.as_str(), cfg.queue.mongodb.database.as_str()),
            ("mongodb://db:27017/", "ads")
        );
    }

    #[test]
    fn the_old_keys_still_work_alone_and_agreeing_ones_are_fine() {
        let cfg = load("[storage.redis]\nurl = \"redis://old:6379/\"").unwrap();
        assert_eq!(cfg.storage.redis.url, "redis://old:6379/");
        let same = "[redis]\nurl = \"redis://a:6379/\"\n[storage.redis]\nurl = \"redis://a:6379/\"";
        assert_eq!(load(same).unwrap().queue.redis.url, "redis://a:6379/");
    }

    #[test]
    fn an_old_key_that_disagrees_is_refused_naming_the_new_key() {
        let e =
            load("[redis]\nurl = \"redis://a:6379/\"\n[queue.redis]\nurl = \"redis://b:6379/\"").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("redis.url") && msg.contains("queue.redis.url"), "{msg}");
        assert!(msg.contains("remove queue.redis.url"), "{msg}");
    }
}
