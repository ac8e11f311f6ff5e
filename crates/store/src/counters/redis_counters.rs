//! Analytics counters in Redis, shared by every gateway.
//!
//! **Write** (per commit, inside the commit's MULTI/EXEC): one XADD of the commit's
//! counters, summed per (kind, id, minute), to the delta stream `<tag>:an:delta`. A commit
//! costs Redis one command for its counters instead of one HINCRBY per counter it touches
//! (2.5 per event with the load tester's mix: that was most of the shared-mode cost).
//!
//! **Fold** (in the background, every gateway, every `FOLD_EVERY`): read the deltas after
//! the folded position `<tag>:an:folded`, sum them, and add the sums to the bucket hashes
//! in one script that first checks the position is still the one read (compare and set):
//! when two gateways fold the same deltas, one adds them and the other's script does
//! nothing, so every delta is added exactly once. Folded deltas are then trimmed. Summing
//! a fold's worth of commits first means one HINCRBY per distinct counter per fold, not
//! per commit.
//!
//! **Buckets**: per-minute `<tag>:an:m:<minute>`, per-hour `<tag>:an:h:<hour>` and, for
//! the counts leases carry, per-day `<tag>:an:d:<day>` hashes expiring with the retention.
//! Field `<tag>:<slot>:<id>`: tag `*` all, `a` ad, `c` campaign; slot 1-7 the event type,
//! `u` revenue in micro-dollars (`r`: dollars as a float, written by earlier versions and
//! still read), `v` video ms. Day fields are `<type>:<ad id>` for types 1-3.
//!
//! **Read**: `sum` and `per_key` read, in one MULTI/EXEC, the folded position, the
//! buckets the range needs and the delta stream, and add the deltas after the position
//! whose minute the range covers: exact whatever the folds are doing. `recent_for_ads`
//! (the context leases carry) reads the day buckets only, so it lags by up to one fold.

use super::delta;
use super::{CounterSource, DAY};
use crate::redis_conn::RedisConn;
use crate::{Result, StoreError, StoredEvent};
use adflow_domain::analytics::{Counters, Kind, MINUTES_PER_HOUR, Retention, Scope, aggregate};
use async_trait::async_trait;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often each gateway folds the deltas. A fold costs one HINCRBY per distinct counter
/// the deltas touch, and at full load every fold touches nearly the whole counter set
/// (the load tester's 5,000 Zipf-distributed ads: ~13k increments per 250 ms fold), so
/// a longer interval cuts that cost proportionally. Queries stay exact (they add the
/// unfolded deltas); only the lease context (`recent_for_ads`) lags by up to one interval.
const FOLD_EVERY: Duration = Duration::from_millis(1000);
/// Delta entries read per fold step.
const FOLD_ENTRIES: usize = 512;
/// A fold script stops taking delta entries once their sums need this many bucket
/// increments (it blocks Redis while it runs: ~1.5 µs each), so a script makes at most
/// this many plus one entry's worth.
const FOLD_MAX_OPS: usize = 6000;

const SLOTS: [&str; 10] = ["1", "2", "3", "4", "5", "6", "7", "u", "r", "v"];

/// Moves the folded position KEYS[1] from ARGV[1] to ARGV[2], only if it still is ARGV[1],
/// and then adds the increments (key index, field, amount) and expiries (key index, at) in
/// ARGV to the buckets in KEYS[2..]. ARGV[3] = number of increments. The position moves
/// first and each increment is a `pcall`: an increment Redis refuses (a counter past
/// 2^63) is skipped and counted in the reply, and never makes the deltas fold again.
const FOLD: &str = r#"
if (redis.call('GET', KEYS[1]) or '0-0') ~= ARGV[1] then return -1 end
redis.call('SET', KEYS[1], ARGV[2])
local n, failed = tonumber(ARGV[3]), 0
local i = 4
for _ = 1, n do
  local r = redis.pcall('HINCRBY', KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2])
  if type(r) == 'table' and r.err then failed = failed + 1 end
  i = i + 3
end
while i <= #ARGV do
  redis.pcall('PEXPIREAT', KEYS[tonumber(ARGV[i])], ARGV[i + 1])
  i = i + 2
end
return failed
"#;

/// Most delta entries a query adds (the fold keeps far fewer pending; past this the
/// query answers from what is folded plus these, and says so in the log).
const READ_DELTAS: usize = 20_000;

/// Counters kept in Redis (see the module docs).
pub struct RedisCounters {
    con: RedisConn,
    prefix: String,
    retention: Retention,
    fold: redis::Script,
}

fn redis_err(op: &'static str) -> impl FnOnce(redis::RedisError) -> StoreError {
    move |e| StoreError::Backend { backend: "redis", op, message: e.to_string() }
}

/// Adds one stored counter value to `c`.
fn put(c: &mut Counters, slot: &str, value: &str) {
    match slot {
        "u" => c.revenue_usd += value.parse::<i64>().unwrap_or(0) as f64 / 1e6,
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

/// The bucket increments a fold makes for one sum (what `fold_step` emits for it): per
/// minute and hour bucket, one per event type seen, revenue and video; ads add up to three
/// day counts.
fn increments(kind: Kind, c: &Counters) -> usize {
    let types = c.by_type.iter().skip(1).filter(|n| **n > 0).count();
    let extra = usize::from(delta::micros(c.revenue_usd) != 0) + usize::from(c.video_ms > 0);
    let day = if kind == Kind::Ad { c.by_type[1..=3].iter().filter(|n| **n > 0).count() } else { 0 };
    2 * (types + extra) + day
}

/// A counter increment as Redis takes it (at most i64::MAX).
fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A stream entry id, ordered.
fn sid(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// One delta stream entry as XRANGE returns it.
type Entry = (String, Vec<(String, Vec<u8>)>);

/// The rows of one delta entry; a damaged delta is skipped (and logged).
fn entry_rows(id: &str, fields: Vec<(String, Vec<u8>)>) -> Vec<delta::Row> {
    let mut rows = Vec::new();
    for (k, v) in fields {
        if k != "d" {
            continue;
        }
        match delta::decode(&v) {
            Some(r) => rows.extend(r),
            None => tracing::error!(entry = %id, "damaged counter delta skipped"),
        }
    }
    rows
}

/// The rows of the entries after `folded`.
fn pending_rows(entries: Vec<Entry>, folded: &str) -> Vec<delta::Row> {
    let after = sid(folded);
    entries
        .into_iter()
        .filter(|(id, _)| sid(id) > after)
        .flat_map(|(id, fields)| entry_rows(&id, fields))
        .collect()
}

/// Whether a range planned as (hours, minutes) covers `minute`.
fn covers(hours: &Range<i64>, minutes: &Range<i64>, minute: i64) -> bool {
    minutes.contains(&minute) || hours.contains(&minute.div_euclid(MINUTES_PER_HOUR))
}

impl RedisCounters {
    /// Counters under `<hash tag of stream_key>:an`, so they share the stream's slot.
    pub fn new(con: RedisConn, stream_key: &str, retention: Retention) -> Self {
        Self {
            con,
            prefix: format!("{}:an", super::hash_tag(stream_key)),
            retention,
            fold: redis::Script::new(FOLD),
        }
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

    fn delta_key(&self) -> String {
        format!("{}:delta", self.prefix)
    }

    fn folded_key(&self) -> String {
        format!("{}:folded", self.prefix)
    }

    /// Adds the counters of `events` to a (MULTI) pipeline: one delta entry.
    pub fn add_to(&self, p: &mut redis::Pipeline, events: &[StoredEvent]) {
        let agg = aggregate(events);
        if agg.is_empty() {
            return;
        }
        let blob = delta::encode(agg.iter().map(|((k, id, m), c)| (*k, *id, *m, c)));
        p.cmd("XADD").arg(self.delta_key()).arg("*").arg("d").arg(blob).ignore();
    }

    /// Starts folding in the background until the last handle on these counters is gone.
    pub fn start_folding(self: &Arc<Self>) {
        let me: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::time::sleep(FOLD_EVERY).await;
                let Some(c) = me.upgrade() else { return };
                match c.fold_all().await {
                    Ok(_) => failing = false,
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "folding analytics deltas failed; retrying (queries stay exact)");
                    }
                    Err(_) => {}
                }
            }
        });
    }

    /// Folds every pending delta; returns how many entries were folded.
    pub async fn fold_all(&self) -> Result<usize> {
        let mut total = 0;
        loop {
            match self.fold_page().await? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    }

    /// Reads up to `FOLD_ENTRIES` pending deltas once and folds them in as many script
    /// steps as their increments need (`FOLD_MAX_OPS` each); returns how many this call
    /// folded (it stops when another gateway folded them first).
    async fn fold_page(&self) -> Result<usize> {
        let mut con = self.con.clone();
        let folded: Option<String> =
            redis::cmd("GET").arg(self.folded_key()).query_async(&mut con).await.map_err(redis_err("GET"))?;
        let mut position = folded.unwrap_or_else(|| "0-0".into());
        let entries: Vec<Entry> = redis::cmd("XRANGE")
            .arg(self.delta_key())
            .arg(format!("({position}"))
            .arg("+")
            .arg("COUNT")
            .arg(FOLD_ENTRIES)
            .query_async(&mut con)
            .await
            .map_err(redis_err("XRANGE"))?;
        let mut entries = entries.into_iter().peekable();
        let mut total = 0;
        while entries.peek().is_some() {
            // Sum entry by entry until the sums need a script's worth of increments.
            let mut sums: HashMap<(Kind, Vec<u8>, i64), Counters> = HashMap::new();
            let (mut ops, mut n, mut last) = (0, 0, position.clone());
            while ops < FOLD_MAX_OPS {
                let Some((id, fields)) = entries.next() else { break };
                // XRANGE started after the folded position: every entry is pending.
                for (kind, key, minute, c) in entry_rows(&id, fields) {
                    let sum = sums.entry((kind, key, minute)).or_default();
                    let before = increments(kind, sum);
                    sum.add(&c);
                    ops += increments(kind, sum) - before;
                }
                last = id;
                n += 1;
            }
            if !self.fold_step(&mut con, &position, &last, &sums).await? {
                return Ok(total); // another gateway folded these first
            }
            position = last;
            total += n;
        }
        Ok(total)
    }

    /// Adds `sums` to the buckets and moves the folded position from `from` to `to`, in
    /// one compare-and-set script; false when the position was no longer `from`. Then
    /// trims the folded deltas.
    async fn fold_step(
        &self,
        con: &mut RedisConn,
        from: &str,
        to: &str,
        sums: &HashMap<(Kind, Vec<u8>, i64), Counters>,
    ) -> Result<bool> {
        let mut keys: Vec<String> = vec![self.folded_key()];
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut key_of = |k: String, keys: &mut Vec<String>| -> usize {
            *index.entry(k.clone()).or_insert_with(|| {
                keys.push(k);
                keys.len()
            })
        };
        let mut ops: Vec<(usize, String, i64)> = Vec::new();
        let mut expiries: HashMap<usize, i64> = HashMap::new();
        for ((kind, id, minute), c) in sums {
            let id = String::from_utf8_lossy(id);
            let hour = minute.div_euclid(MINUTES_PER_HOUR);
            let mk = key_of(self.minute_key(*minute), &mut keys);
            let hk = key_of(self.hour_key(hour), &mut keys);
            for k in [mk, hk] {
                for (t, n) in c.by_type.iter().enumerate().skip(1) {
                    if *n > 0 {
                        ops.push((k, format!("{}:{t}:{id}", kind.tag()), clamp(*n)));
                    }
                }
                let micros = delta::micros(c.revenue_usd);
                if micros != 0 {
                    ops.push((k, format!("{}:u:{id}", kind.tag()), micros));
                }
                if c.video_ms > 0 {
                    ops.push((k, format!("{}:v:{id}", kind.tag()), clamp(c.video_ms)));
                }
            }
            if *kind == Kind::Ad {
                let day = minute.div_euclid(MINUTES_PER_HOUR * 24);
                let dk = key_of(self.day_key(day), &mut keys);
                for t in 1..=3 {
                    if c.by_type[t] > 0 {
                        ops.push((dk, format!("{t}:{id}"), clamp(c.by_type[t])));
                    }
                }
                expiries.insert(dk, day.saturating_add(2).saturating_mul(DAY));
            }
            expiries.insert(mk, self.retention.minute_expiry(*minute));
            expiries.insert(hk, self.retention.hour_expiry(hour));
        }
        let mut inv = self.fold.prepare_invoke();
        for k in &keys {
            inv.key(k);
        }
        inv.arg(from).arg(to).arg(ops.len());
        for (k, field, n) in &ops {
            // KEYS is 1-based in Lua and starts with the folded position.
            inv.arg(k).arg(field).arg(n);
        }
        for (k, at) in &expiries {
            inv.arg(k).arg(at);
        }
        let failed: i64 = inv.invoke_async(con).await.map_err(redis_err("fold"))?;
        if failed < 0 {
            return Ok(false);
        }
        if failed > 0 {
            tracing::error!(increments = failed, "analytics counters past 2^63 were not increased");
        }
        // Folded deltas are no longer needed (readers skip them by position anyway).
        let (ms, seq) = sid(to);
        let _: redis::RedisResult<i64> = redis::cmd("XTRIM")
            .arg(self.delta_key())
            .arg("MINID")
            .arg(format!("{ms}-{}", seq.saturating_add(1)))
            .query_async(con)
            .await;
        Ok(true)
    }

    fn keys(&self, from: i64, to: i64, now_ms: i64) -> (Vec<String>, Range<i64>, Range<i64>) {
        let (hours, minutes) = self.retention.plan(from, to, now_ms);
        let keys = hours
            .clone()
            .map(|h| self.hour_key(h))
            .chain(minutes.clone().map(|m| self.minute_key(m)))
            .collect();
        (keys, hours, minutes)
    }

    /// The folded position, one reply per bucket command, and the pending delta rows,
    /// read in one transaction.
    async fn snapshot<T: redis::FromRedisValue>(
        &self,
        bucket_cmds: impl Fn(&mut redis::Pipeline),
    ) -> Result<(Vec<T>, Vec<delta::Row>)> {
        let mut p = redis::pipe();
        p.atomic();
        p.cmd("GET").arg(self.folded_key());
        p.cmd("XRANGE").arg(self.delta_key()).arg("-").arg("+").arg("COUNT").arg(READ_DELTAS);
        bucket_cmds(&mut p);
        let mut con = self.con.clone();
        let mut replies: Vec<redis::Value> = p.query_async(&mut con).await.map_err(redis_err("MULTI"))?;
        if replies.len() < 2 {
            return Err(redis_err("MULTI")(redis::RedisError::from((
                redis::ErrorKind::Parse,
                "short reply",
            ))));
        }
        let rest = replies.split_off(2);
        let mut it = replies.into_iter();
        let bad = |e: redis::ParsingError| StoreError::Backend {
            backend: "redis",
            op: "MULTI",
            message: e.to_string(),
        };
        let folded: Option<String> =
            redis::from_redis_value(it.next().unwrap_or(redis::Value::Nil)).map_err(bad)?;
        let entries: Vec<Entry> =
            redis::from_redis_value(it.next().unwrap_or(redis::Value::Nil)).map_err(bad)?;
        let rows = pending_rows(entries, folded.as_deref().unwrap_or("0-0"));
        let buckets = rest
            .into_iter()
            .map(redis::from_redis_value)
            .collect::<std::result::Result<Vec<T>, _>>()
            .map_err(bad)?;
        Ok((buckets, rows))
    }
}

#[async_trait]
impl CounterSource for RedisCounters {
    async fn sum(&self, scope: Scope<'_>, from: i64, to: i64, now_ms: i64) -> Result<Counters> {
        let (kind, id) = Kind::of(scope);
        let (keys, hours, minutes) = self.keys(from, to, now_ms);
        let mut c = Counters::default();
        if keys.is_empty() {
            return Ok(c);
        }
        let fields: Vec<String> = SLOTS.iter().map(|s| format!("{}:{s}:{id}", kind.tag())).collect();
        let (rows, pending): (Vec<Vec<Option<String>>>, _) = self
            .snapshot(|p| {
                for k in &keys {
                    p.cmd("HMGET").arg(k).arg(&fields);
                }
            })
            .await?;
        for row in rows {
            for (slot, v) in SLOTS.iter().zip(row) {
                if let Some(v) = v {
                    put(&mut c, slot, &v);
                }
            }
        }
        for (k, key, minute, d) in pending {
            if k == kind && key == id.as_bytes() && covers(&hours, &minutes, minute) {
                c.add(&d);
            }
        }
        Ok(c)
    }

    async fn per_key(&self, kind: Kind, from: i64, to: i64, now_ms: i64) -> Result<Vec<(String, Counters)>> {
        let (keys, hours, minutes) = self.keys(from, to, now_ms);
        let mut out: HashMap<String, Counters> = HashMap::new();
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let (rows, pending): (Vec<HashMap<String, String>>, _) = self
            .snapshot(|p| {
                for k in &keys {
                    p.cmd("HGETALL").arg(k);
                }
            })
            .await?;
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
        for (k, key, minute, d) in pending {
            if k == kind && covers(&hours, &minutes, minute) {
                out.entry(String::from_utf8_lossy(&key).into_owned()).or_default().add(&d);
            }
        }
        Ok(out.into_iter().filter(|(_, c)| c.total() > 0).collect())
    }

    /// Today's and yesterday's (UTC) counts, from the day buckets (folded deltas only).
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

    #[test]
    fn stream_ids_order_numerically() {
        assert!(sid("1700000000000-9") < sid("1700000000000-10"));
        assert!(sid("999-5") < sid("1000-0"));
        assert_eq!(sid("0-0"), (0, 0));
    }

    #[test]
    fn a_delta_row_counts_where_the_plan_reads_its_minute() {
        let (hours, minutes) = (10..12, 720..725);
        assert!(
            covers(&hours, &minutes, 600) && covers(&hours, &minutes, 719) && covers(&hours, &minutes, 724)
        );
        assert!(!covers(&hours, &minutes, 599) && !covers(&hours, &minutes, 725));
    }
}
