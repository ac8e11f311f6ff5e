//! Where analytics reads its counters. One gateway alone reads its in-memory counters
//! (`Local`, rebuilt from the store at start). Gateways sharing a remote backend read the
//! backend's counters, which every gateway's commits feed, so each gateway answers with
//! the totals of all of them:
//! - Redis: each commit's counters go, summed, into a delta stream in the same MULTI/EXEC
//!   as its events (counted exactly when the events are stored), and are folded in the
//!   background into per-minute, per-hour and per-day bucket hashes; a query reads the
//!   buckets and the deltas not folded yet, in one transaction (`redis_counters`).
//! - MongoDB: an aggregation (`$match` on the event time, `$group` by id and type) over
//!   the event documents, which carry those fields next to the raw event.

pub mod delta;
mod redis_counters;

pub use redis_counters::RedisCounters;

use crate::Result;
use adflow_domain::analytics::{Analytics, Counters, Kind, Scope};
use async_trait::async_trait;
use std::sync::{Arc, RwLock};

/// Counter queries, answered from memory or from a shared backend.
#[async_trait]
pub trait CounterSource: Send + Sync {
    /// Counters of one scope over [from, to).
    async fn sum(&self, scope: Scope<'_>, from: i64, to: i64, now_ms: i64) -> Result<Counters>;
    /// Counters of every ad (`Kind::Ad`) or campaign (`Kind::Campaign`) with events in [from, to).
    async fn per_key(&self, kind: Kind, from: i64, to: i64, now_ms: i64) -> Result<Vec<(String, Counters)>>;
    /// Recent counters of each ad in `ids` (the last day; what leases carry to workers).
    async fn recent_for_ads(&self, ids: &[&str], now_ms: i64) -> Result<Vec<Counters>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.sum(Scope::Ad(id), now_ms - DAY, now_ms + 1, now_ms).await?);
        }
        Ok(out)
    }
}

pub(crate) const DAY: i64 = 86_400_000;

/// The in-memory counters of this gateway.
pub struct Local(pub Arc<RwLock<Analytics>>);

#[async_trait]
impl CounterSource for Local {
    async fn sum(&self, scope: Scope<'_>, from: i64, to: i64, now_ms: i64) -> Result<Counters> {
        Ok(self.0.read().unwrap_or_else(|p| p.into_inner()).sum(scope, from, to, now_ms))
    }

    async fn per_key(&self, kind: Kind, from: i64, to: i64, now_ms: i64) -> Result<Vec<(String, Counters)>> {
        let a = self.0.read().unwrap_or_else(|p| p.into_inner());
        let rows = match kind {
            Kind::Campaign => a.campaigns_in(from, to, now_ms),
            _ => a.ads_in(from, to, now_ms),
        };
        Ok(rows.into_iter().map(|(k, c)| (k.to_owned(), c)).collect())
    }
}

/// The hash tag of a key (`{adflow}` of `{adflow}:events`), or the key itself.
pub fn hash_tag(key: &str) -> &str {
    tag_of(key).unwrap_or(key)
}

/// The hash tag Redis Cluster hashes `key` by, braces included: the first `{` and the
/// first `}` after it, with at least one byte between them; None when it hashes the
/// whole key.
pub fn tag_of(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let len = key[open + 1..].find('}')?;
    (len > 0).then(|| &key[open..open + len + 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tags_are_found() {
        assert_eq!(hash_tag("{adflow}:events"), "{adflow}");
        assert_eq!(hash_tag("events"), "events");
        assert_eq!(hash_tag("{}x"), "{}x");
    }

    #[test]
    fn tags_are_read_as_redis_cluster_reads_them() {
        assert_eq!(tag_of("{adflow}:events"), Some("{adflow}"));
        assert_eq!(tag_of("x{a}y{b}"), Some("{a}"));
        assert_eq!(tag_of("a}b{c}"), Some("{c}"), "the first closing brace after the first opening one");
        assert_eq!(tag_of("events"), None);
        assert_eq!(tag_of("{}events"), None, "an empty tag hashes the whole key");
        assert_eq!(tag_of("ad{flow"), None);
        assert_eq!(tag_of("ad}flow{"), None);
    }
}
