//! One Redis connection type for a single server and for a Redis Cluster, so every Redis
//! user (event stream, queue, dedup) runs on both. A single server goes through the
//! `ConnectionManager` (reconnects by itself); a cluster through the crate's async
//! cluster client (follows slot moves and failovers). Both are cheap to clone.

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::time::Duration;

/// Where Redis is: one URL, or the seed nodes of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// A single server's URL (used when `cluster_nodes` is empty).
    pub url: String,
    /// Seed node URLs of a Redis Cluster; non-empty selects the cluster client.
    pub cluster_nodes: Vec<String>,
}

impl Target {
    /// The URL of one node, for connections that any node can serve (pub/sub: a
    /// cluster forwards PUBLISH to every node).
    pub fn any_node(&self) -> &str {
        self.cluster_nodes.first().map(String::as_str).unwrap_or(&self.url)
    }
}

/// A connection to a single server or to a cluster.
#[derive(Clone)]
pub enum RedisConn {
    /// One server.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

/// Connects with short timeouts: a dead server must fail fast so callers can fall back.
pub async fn connect(target: &Target) -> redis::RedisResult<RedisConn> {
    if target.cluster_nodes.is_empty() {
        let client = redis::Client::open(target.url.as_str())?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        Ok(RedisConn::Single(ConnectionManager::new_with_config(client, cfg).await?))
    } else {
        let client = ClusterClient::builder(target.cluster_nodes.iter().map(String::as_str))
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(Duration::from_secs(2))
            .retries(2)
            .build()?;
        Ok(RedisConn::Cluster(client.get_async_connection().await?))
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}
