//! Where analytics reads its counters. One gateway alone reads its in-memory counters
//! (`Local`, rebuilt from the store at start). Gateways sharing a remote backend read the
//! backend's counters, which every gateway's commits feed, so each gateway answers with
//! the totals of all of them:
//! - Redis: per-minute and per-hour bucket hashes, incremented in the same MULTI/EXEC as
//!   the batch's XADDs (counted exactly when the events are stored), expiring with the
//!   retention. Field `<tag>:<slot>:<id>`: tag `*` all, `a` ad, `c` campaign; slot 1-7 the
//!   event type, `u` revenue in micro-dollars (`r`: in dollars, as a float, written by
//!   earlier versions and still read), `v` video ms.
//! - MongoDB: an aggregation (`$match` on the event time, `$group` by id and type) over
//!   the event documents, which carry those fields next to the raw event.

use crate::redis_conn::RedisConn;
use crate::{Result, StoreError, StoredEvent};
use adflow_domain::analytics::{Analytics, Counters, Kind, MINUTES_PER_HOUR, Retention, Scope, aggregate};
use async_trait::async_trait;
use std::collections::HashMap;
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

const DAY: i64 = 86_400_000;

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
    match (key.find('{'), key.find('}')) {
        (Some(a), Some(b)) if b > a + 1 => &key[a..=b],
        _ => key,
    }
}

const SLOTS: [&str; 10] = ["1", "2", "3", "4", "5", "6", "7", "u", "r", "v"];

/// Counters kept in Redis bucket hashes.
pub struct RedisCounters {
    con: RedisConn,
    prefix: String,
    retention: Retention,
}

impl RedisCounters {
    /// Counters under `<hash tag of stream_key>:an`, so they share the stream's slot.
    pub fn new(con: RedisConn, stream_key: &str, retention: Retention) -> Self {
        Self { con, prefix: format!("{}:an", hash_tag(stream_key)), retention }
    }

    fn minute_key(&self, m: i64) -> String {
        format!("{}:m:{m}", self.prefix)
    }

    fn hour_key(&self, h: i64) -> String {
        format!("{}:h:{h}", self.prefix)
    }

    fn day_key(&self, d: i64) -> String {
        format!("{}:d:{d}", self.prefix)
    }

    /// Adds the increments of `events` to a (MULTI) pipeline.
    pub fn add_to(&self, p: &mut redis::Pipeline, events: &[StoredEvent]) {
        let mut expiries: HashMap<String, i64> = HashMap::new();
        for ((kind, id, minute), c) in aggregate(events) {
            let id = String::from_utf8_lossy(id);
            let hour = minute.div_euclid(MINUTES_PER_HOUR);
            let (mk, hk) = (self.minute_key(minute), self.hour_key(hour));
            for key in [&mk, &hk] {
                for (t, n) in c.by_type.iter().enumerate().skip(1) {
                    if *n > 0 {
                        p.cmd("HINCRBY").arg(key).arg(format!("{}:{t}:{id}", kind.tag())).arg(*n).ignore();
                    }
                }
                // Whole micro-dollars: HINCRBY costs a third of HINCRBYFLOAT in Redis.
                let micros = (c.revenue_usd * 1e6).round() as i64;
                if micros != 0 {
                    p.cmd("HINCRBY").arg(key).arg(format!("{}:u:{id}", kind.tag())).arg(micros).ignore();
                }
                if c.video_ms > 0 {
                    p.cmd("HINCRBY").arg(key).arg(format!("{}:v:{id}", kind.tag())).arg(c.video_ms).ignore();
                }
            }
            if kind == Kind::Ad {
                // Per-ad day buckets of the counts leases carry: two reads per ad.
                let day = minute.div_euclid(MINUTES_PER_HOUR * 24);
                let dk = self.day_key(day);
                for t in 1..=3 {
                    if c.by_type[t] > 0 {
                        p.cmd("HINCRBY").arg(&dk).arg(format!("{t}:{id}")).arg(c.by_type[t]).ignore();
                    }
                }
                expiries.insert(dk, (day + 2) * DAY);
            }
            expiries.insert(mk, self.retention.minute_expiry(minute));
            expiries.insert(hk, self.retention.hour_expiry(hour));
        }
        for (k, at) in expiries {
            p.cmd("PEXPIREAT").arg(k).arg(at).ignore();
        }
    }

    fn keys(&self, from: i64, to: i64, now_ms: i64) -> Vec<String> {
        let (hours, minutes) = self.retention.plan(from, to, now_ms);
        hours.map(|h| self.hour_key(h)).chain(minutes.map(|m| self.minute_key(m))).collect()
    }
}

fn redis_err(op: &'static str) -> impl FnOnce(redis::RedisError) -> StoreError {
    move |e| StoreError::Backend { backend: "redis", op, message: e.to_string() }
}

/// Adds one stored counter value to `c`.
fn put(c: &mut Counters, slot: &str, value: &str) {
    match slot {
        "u" => c.revenue_usd += value.parse::<i64>().unwrap_or(0) as f64 / 1e6,
        // Dollars as a float: counters written before revenue moved to micro-dollars.
        "r" => c.revenue_usd += value.parse::<f64>().unwrap_or(0.0),
        "v" => c.video_ms += value.parse::<u64>().unwrap_or(0),
        t => {
            if let (Ok(i), Ok(n)) = (t.parse::<usize>(), value.parse::<u64>())
                && i < c.by_type.len()
            {
                c.by_type[i] += n;
            }
        }
    }
}

#[async_trait]
impl CounterSource for RedisCounters {
    async fn sum(&self, scope: Scope<'_>, from: i64, to: i64, now_ms: i64) -> Result<Counters> {
        let (kind, id) = Kind::of(scope);
        let keys = self.keys(from, to, now_ms);
        let mut c = Counters::default();
        if keys.is_empty() {
            return Ok(c);
        }
        let fields: Vec<String> = SLOTS.iter().map(|s| format!("{}:{s}:{id}", kind.tag())).collect();
        let mut p = redis::pipe();
        for k in &keys {
            p.cmd("HMGET").arg(k).arg(&fields);
        }
        let mut con = self.con.clone();
        let rows: Vec<Vec<Option<String>>> = p.query_async(&mut con).await.map_err(redis_err("HMGET"))?;
        for row in rows {
            for (slot, v) in SLOTS.iter().zip(row) {
                if let Some(v) = v {
                    put(&mut c, slot, &v);
                }
            }
        }
        Ok(c)
    }

    async fn per_key(&self, kind: Kind, from: i64, to: i64, now_ms: i64) -> Result<Vec<(String, Counters)>> {
        let keys = self.keys(from, to, now_ms);
        let mut out: HashMap<String, Counters> = HashMap::new();
        let mut con = self.con.clone();
        for chunk in keys.chunks(32) {
            let mut p = redis::pipe();
            for k in chunk {
                p.cmd("HGETALL").arg(k);
            }
            let rows: Vec<HashMap<String, String>> =
                p.query_async(&mut con).await.map_err(redis_err("HGETALL"))?;
            for row in rows {
                for (field, v) in row {
                    let mut it = field.splitn(3, ':');
                    let (Some(tag), Some(slot), Some(id)) = (it.next(), it.next(), it.next()) else {
                        continue;
                    };
                    if tag.len() == 1 && tag.starts_with(kind.tag()) {
                        put(out.entry(id.to_owned()).or_default(), slot, &v);
                    }
                }
            }
        }
        Ok(out.into_iter().filter(|(_, c)| c.total() > 0).collect())
    }

    /// Today's and yesterday's (UTC) counts, from the day buckets.
    async fn recent_for_ads(&self, ids: &[&str], now_ms: i64) -> Result<Vec<Counters>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let today = now_ms.div_euclid(DAY);
        let mut p = redis::pipe();
        for id in ids {
            let fields: Vec<String> = (1..=3).map(|t| format!("{t}:{id}")).collect();
            p.cmd("HMGET").arg(self.day_key(today)).arg(&fields);
            p.cmd("HMGET").arg(self.day_key(today - 1)).arg(&fields);
        }
        let mut con = self.con.clone();
        let rows: Vec<Vec<Option<u64>>> = p.query_async(&mut con).await.map_err(redis_err("HMGET"))?;
        Ok(rows
            .chunks(2)
            .map(|days| {
                let mut c = Counters::default();
                for row in days {
                    for (t, v) in row.iter().enumerate() {
                        c.by_type[t + 1] += v.unwrap_or(0);
                    }
                }
                c
            })
            .collect())
    }
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
    fn stored_values_land_in_their_slot() {
        let mut c = Counters::default();
        put(&mut c, "1", "3");
        put(&mut c, "2", "1");
        put(&mut c, "r", "0.5");
        put(&mut c, "u", "250000");
        put(&mut c, "v", "1200");
        put(&mut c, "9", "5");
        assert_eq!((c.by_type[1], c.by_type[2], c.revenue_usd, c.video_ms, c.total()), (3, 1, 0.75, 1200, 4));
    }
}
