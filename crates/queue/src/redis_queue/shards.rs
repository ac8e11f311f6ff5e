//! Queue shards: which shard an ad lives in, which shard a lease id names, and how a
//! claim chooses between the shards' heads.
//!
//! - Prefixes: shard 0 is the configured prefix unchanged (a one-shard queue keeps the
//!   layout it always had); shard i > 0 appends `:i` (or `:i.j`, see `prefix`) inside
//!   the hash tag, so `{adflow:q}` with 3 shards gives `{adflow:q:1.4}` and
//!   `{adflow:q:2}`: one slot each, in three different thirds of the slot space.
//! - An ad's shard: FNV-1a (32 bit) of its id's text, modulo the shard count. Stable
//!   across processes and versions (no random seed).
//! - Lease ids: the shard's lease counter shifted left by 6 bits, plus the shard
//!   (`config::MAX_SHARDS` = 64), so an ack, nack or extend goes to one shard with no
//!   fan-out and ids of different shards never collide. Redis stores the counter value.
//! - Heads: each shard's LEASE script reports what it would serve next as a `Head`; the
//!   claim compares heads by class (overdue first), effective priority, then the earlier
//!   time (deadline when overdue, else enqueue time), then the higher priority, then
//!   the smaller ad id (UUIDv7: submitted first).

use crate::config::MAX_SHARDS;
use std::cmp::Ordering;

/// Bits of a lease id that name the shard.
const SHARD_BITS: u32 = MAX_SHARDS.trailing_zeros();

/// The Redis Cluster slot of a hash tag's content (CRC16/XMODEM, mod 16384).
pub(super) fn slot(tag: &str) -> u16 {
    let mut crc: u16 = 0;
    for b in tag.as_bytes() {
        crc ^= u16::from(*b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc & 16383
}

/// Which of `k` equal slot ranges `slot` falls in.
fn range(slot: u16, k: usize) -> usize {
    slot as usize * k / 16384
}

/// The key prefix of shard `i` of `k` for the queue whose shard 0 is `base` (which
/// `RedisQueueConfig::check` made sure has a hash tag). Shard i > 0 appends `:i` to the
/// tag, or `:i.j` with the smallest j that puts the tag's slot in range (r0 + i) mod k of
/// k equal slot ranges (r0: shard 0's range), so on a cluster whose primaries own equal
/// slot ranges (what `redis-cli --cluster create` makes) k shards land on k different
/// primaries when there are k of them. The names depend on k: see `sync` for changes.
pub(super) fn prefix(base: &str, i: usize, k: usize) -> String {
    let (Some(open), Some(close)) = (base.find('{'), base.find('}')) else { return format!("{base}:{i}") };
    if i == 0 || close < open {
        return base.to_owned();
    }
    let tag = &base[open + 1..close];
    let want = (range(slot(tag), k) + i) % k;
    let mut j = 0u32;
    loop {
        let t = if j == 0 { format!("{tag}:{i}") } else { format!("{tag}:{i}.{j}") };
        if range(slot(&t), k) == want {
            return format!("{}{t}{}", &base[..=open], &base[close..]);
        }
        j += 1;
    }
}

/// The shard of ad `id` among `k`.
pub(super) fn of(id: &str, k: usize) -> usize {
    if k <= 1 {
        return 0;
    }
    let mut h: u32 = 0x811c_9dc5;
    for b in id.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % k as u32) as usize
}

/// The public lease id of lease `seq` of shard `shard`.
pub(super) fn lease_id(shard: usize, seq: u64) -> u64 {
    (seq << SHARD_BITS) | shard as u64
}

/// The (shard, stored lease number) a public lease id names.
pub(super) fn split_lease(id: u64) -> (usize, u64) {
    ((id & (MAX_SHARDS as u64 - 1)) as usize, id >> SHARD_BITS)
}

/// What a shard would serve next, as its LEASE script reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Head {
    /// 2: past its max wait; 1: waiting.
    pub(super) class: i64,
    /// Effective priority (5 when overdue).
    pub(super) level: i64,
    /// Deadline when overdue, else enqueue time (ms).
    pub(super) time: i64,
    /// Priority.
    pub(super) priority: i64,
    /// Ad id (ties: the smaller, earlier UUIDv7 first).
    pub(super) id: String,
}

impl Head {
    /// Decodes `{class, level, time, priority, id}`; `{}` is no head.
    pub(super) fn from_reply(v: Vec<redis::Value>) -> Result<Option<Head>, redis::ParsingError> {
        if v.is_empty() {
            return Ok(None);
        }
        let (class, level, time, priority, id): (i64, i64, i64, i64, String) =
            redis::FromRedisValue::from_redis_value(redis::Value::Array(v))?;
        Ok(Some(Head { class, level, time, priority, id }))
    }

    /// Serving order: `Less` when `self` is served first.
    pub(super) fn order(&self, other: &Head) -> Ordering {
        other
            .class
            .cmp(&self.class)
            .then(other.level.cmp(&self.level))
            .then(self.time.cmp(&other.time))
            .then(other.priority.cmp(&self.priority))
            .then(self.id.cmp(&other.id))
    }
}

/// The bar a shard's claim must meet: the best head of the other shards, its time moved
/// later by `slack_ms`; (0, 0, 0) when no other shard has one.
pub(super) fn bar(heads: &[Option<Head>], except: usize, slack_ms: i64) -> (i64, i64, i64) {
    heads
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != except)
        .filter_map(|(_, h)| h.as_ref())
        .min_by(|a, b| a.order(b))
        .map(|h| (h.class, h.level, h.time.saturating_add(slack_ms)))
        .unwrap_or((0, 0, 0))
}

/// The shard whose head is served first.
pub(super) fn best(heads: &[Option<Head>]) -> Option<usize> {
    heads
        .iter()
        .enumerate()
        .filter_map(|(i, h)| h.as_ref().map(|h| (i, h)))
        .min_by(|a, b| a.1.order(b.1))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(class: i64, level: i64, time: i64, priority: i64, id: &str) -> Option<Head> {
        Some(Head { class, level, time, priority, id: id.into() })
    }

    #[test]
    fn shard_zero_keeps_the_prefix_and_others_get_their_own_hash_tag() {
        // Slots as `CLUSTER KEYSLOT` gives them.
        assert_eq!((slot("adflow:q"), slot("adflow:q:1"), slot("adflow:q:2")), (11509, 11141, 7142));
        assert_eq!(prefix("{adflow:q}", 0, 3), "{adflow:q}");
        assert_eq!(prefix("{adflow:q}", 2, 3), "{adflow:q:2}");
        assert_eq!(prefix("{adflow:q}", 1, 3), "{adflow:q:1.4}", "{{adflow:q:1}} is in shard 0's third");
        assert!(prefix("x{t}y", 2, 3).starts_with("x{t:2") && prefix("x{t}y", 2, 3).ends_with("}y"));
        for k in [2, 3, 4, 6, 64] {
            let mut ranges: Vec<usize> = (0..k)
                .map(|i| {
                    let p = prefix("{adflow:q}", i, k);
                    range(slot(&p[1..p.find('}').unwrap()]), k)
                })
                .collect();
            ranges.sort();
            ranges.dedup();
            assert_eq!(ranges.len(), k, "{k} shards in {k} different slot ranges");
        }
    }

    #[test]
    fn an_ads_shard_is_a_stable_hash_of_its_id() {
        // FNV-1a of "a" is 0xe40c292c; pinned so the placement never changes silently.
        assert_eq!(of("a", 1 << 16), 0x292c);
        assert_eq!(of("anything", 1), 0);
        let ids: Vec<String> = (0..3000).map(|_| uuid::Uuid::now_v7().to_string()).collect();
        let mut count = [0usize; 3];
        for id in &ids {
            count[of(id, 3)] += 1;
            assert_eq!(of(id, 3), of(id, 3));
        }
        assert!(count.iter().all(|&c| c > 800), "ids spread over the shards: {count:?}");
    }

    #[test]
    fn lease_ids_carry_their_shard() {
        for shard in [0, 1, 2, 63] {
            for seq in [1, 2, 1 << 40] {
                assert_eq!(split_lease(lease_id(shard, seq)), (shard, seq));
            }
        }
        assert_ne!(lease_id(0, 7), lease_id(1, 7), "shards never hand out the same id");
    }

    #[test]
    fn heads_order_overdue_then_level_then_time_then_priority_then_id() {
        let heads = vec![
            head(1, 5, 100, 5, "b"),
            head(1, 5, 100, 5, "a"),
            None,
            head(1, 5, 50, 2, "z"),
            head(2, 5, 900, 1, "y"),
            head(1, 4, 0, 4, "x"),
        ];
        assert_eq!(best(&heads), Some(4), "overdue first");
        assert_eq!(best(&heads[..4]), Some(3), "then the longest wait");
        assert_eq!(best(&heads[..2]), Some(1), "equal keys: the smaller id");
        assert_eq!(best(&[None, None]), None);
        assert_eq!(bar(&heads, 4, 10), (1, 5, 60), "the best other head, time plus slack");
        assert_eq!(bar(&heads[..1], 0, 10), (0, 0, 0), "no other head: no bar");
    }
}
