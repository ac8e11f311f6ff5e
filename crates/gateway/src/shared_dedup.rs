//! Dedup shared by every gateway: accepted event ids live in Redis as `SET <prefix><id> 1
//! NX EX <window>`, one pipeline per request, so a retry that reaches another gateway is
//! still a duplicate. If Redis cannot answer, events are accepted (availability first;
//! the MongoDB backend is idempotent by `_id` anyway) and a warning is logged.

use redis::aio::ConnectionManager;

/// The Redis-backed dedup set.
pub struct SharedDedup {
    con: ConnectionManager,
    prefix: String,
    ttl_secs: u64,
}

impl SharedDedup {
    /// Connects to `url`; ids are kept for `ttl_secs`.
    pub async fn connect(url: &str, prefix: &str, ttl_secs: u64) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(1)))
            .set_response_timeout(Some(std::time::Duration::from_secs(2)));
        let con = ConnectionManager::new_with_config(client, cfg).await?;
        Ok(Self { con, prefix: prefix.to_owned(), ttl_secs: ttl_secs.max(1) })
    }

    /// For each id, true when it was not seen before (and is now claimed).
    pub async fn claim(&self, ids: &[String]) -> Result<Vec<bool>, redis::RedisError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        for id in ids {
            p.cmd("SET").arg(format!("{}{id}", self.prefix)).arg(1).arg("NX").arg("EX").arg(self.ttl_secs);
        }
        let mut con = self.con.clone();
        let answers: Vec<Option<String>> = p.query_async(&mut con).await?;
        Ok(answers.into_iter().map(|a| a.is_some()).collect())
    }

    /// Forgets ids whose write failed, so a client's retry is accepted.
    pub async fn forget(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let mut p = redis::pipe();
        for id in ids {
            p.cmd("DEL").arg(format!("{}{id}", self.prefix)).ignore();
        }
        let mut con = self.con.clone();
        if let Err(e) = p.query_async::<()>(&mut con).await {
            tracing::warn!(error = %e, ids = ids.len(), "could not forget dedup ids after a failed write");
        }
    }
}
