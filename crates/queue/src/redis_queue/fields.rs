//! An ad read back from its Redis hash: the fields `fields()` (Lua) returns, in the order
//! of `crate::fields::READ`, decoded into a named struct and then into a `pb::Ad`.

use crate::fields::READ;
use adflow_proto::v1 as pb;
use prost::Message;
use redis::{FromRedisValue, ParsingError, Value};

/// The stored fields of one ad (None: the field is missing, or the ad is gone).
#[derive(Debug, Default)]
pub(super) struct AdFields {
    /// The encoded ad (id, spec, creation time).
    pub(super) pb: Option<Vec<u8>>,
    /// Status.
    pub(super) status: Option<i32>,
    /// Priority.
    pub(super) priority: Option<u32>,
    /// Enqueue time, ms.
    pub(super) enqueued: Option<i64>,
    /// Lease start, ms.
    pub(super) started: Option<i64>,
    /// Finish time, ms.
    pub(super) finished: Option<i64>,
    /// Attempts.
    pub(super) attempts: Option<u32>,
    /// Last error.
    pub(super) error: Option<String>,
    /// The encoded analysis.
    pub(super) analysis: Option<Vec<u8>>,
    /// W3C trace context of the submission.
    pub(super) trace: Option<String>,
}

impl FromRedisValue for AdFields {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let items: Vec<Value> = FromRedisValue::from_redis_value(v)?;
        if items.len() != READ.len() {
            return Err(format!("an ad has {} fields, got {}", READ.len(), items.len()).into());
        }
        let mut it = items.into_iter();
        let mut next = || it.next().unwrap_or(Value::Nil);
        Ok(Self {
            pb: FromRedisValue::from_redis_value(next())?,
            status: FromRedisValue::from_redis_value(next())?,
            priority: FromRedisValue::from_redis_value(next())?,
            enqueued: FromRedisValue::from_redis_value(next())?,
            started: FromRedisValue::from_redis_value(next())?,
            finished: FromRedisValue::from_redis_value(next())?,
            attempts: FromRedisValue::from_redis_value(next())?,
            error: FromRedisValue::from_redis_value(next())?,
            analysis: FromRedisValue::from_redis_value(next())?,
            trace: FromRedisValue::from_redis_value(next())?,
        })
    }
}

impl AdFields {
    /// The ad `id` these fields describe (None when it is gone or undecodable).
    pub(super) fn into_ad(self, id: &str) -> Option<pb::Ad> {
        let mut ad = pb::Ad::decode(self.pb?.as_slice()).ok()?;
        ad.id = id.to_owned();
        ad.status = self.status.unwrap_or(0);
        ad.priority = self.priority.unwrap_or(ad.priority);
        ad.enqueued_at_ms = self.enqueued.unwrap_or(0);
        ad.started_at_ms = self.started.unwrap_or(0);
        ad.finished_at_ms = self.finished.unwrap_or(0);
        ad.attempts = self.attempts.unwrap_or(0);
        ad.last_error = self.error.unwrap_or_default();
        ad.analysis = self
            .analysis
            .filter(|b| !b.is_empty())
            .and_then(|b| pb::AnalysisResult::decode(b.as_slice()).ok());
        Some(ad)
    }
}
