//! Dedup shared by every gateway: accepted event ids live in Redis as `SET <prefix><id> 1
//! NX EX <window>`, one pipeline per request, so a retry that reaches another gateway is
//! still a duplicate. If Redis cannot answer, events are accepted (availability first;
//! the MongoDB backend is idempotent by `_id` anyway) and a warning is logged.

use adflow_store::redis_conn::{RedisConn, Target, connect};

/// The Redis-backed dedup set.
pub struct SharedDedup {
    con: RedisConn,
    prefix: String,
    ttl_secs: u64,
}

impl SharedDedup {
    /// Connects to `target`; ids are kept for `ttl_secs`. On a cluster the prefix must
    /// carry a hash tag so one request's pipeline stays in one slot.
    pub async fn connect(target: &Target, prefix: &str, ttl_secs: u64) -> Result<Self, redis::RedisError> {
        let con = connect(target).await?;
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
