//! The Lua scripts of the Redis queue, loaded from `lua/*.lua`. Every state change of an
//! ad is one script, so it is atomic across gateways. `KEYS[1]` is the key prefix (it carries the hash tag, so
//! on a cluster every key a script touches is in the slot `KEYS[1]` routes to).
//!
//! Layout under prefix `P` (default `{adflow:q}`; each shard has all of it under its own
//! prefix, see `shards`):
//! - `P:ad:<id>` hash: `pb` (the encoded Ad: id, spec, created), `st` status, `pr`
//!   priority, `seq` FIFO sequence, `enq` enqueue ms, `mw` own max wait s (0 = policy),
//!   `dl` max-wait deadline ms, `att` attempts, `start`, `fin`, `err`, `an` (encoded
//!   AnalysisResult), `lease`, `sess`, `trace`, `fam` (lower-case family). Finished ads
//!   expire after the retention.
//! - `P:q:<1..5>` zsets (score seq): the queued ads of each partition, FIFO.
//! - `P:due` zset (score deadline): every queued ad, for max-wait jumping.
//! - `P:leases` zset (score deadline, member lease id), `P:lmap` hash lease -> ad,
//!   `P:sess:<session>` set of a worker session's leases, `P:lseq` lease counter.
//! - `P:dead` zset (score dead-at ms), `P:all` zset (score seq) of every ad for listing,
//!   `P:paused` set, `P:policy` hash, `P:fam` hash of per-family counters,
//!   `P:sumenq` sum of queued enqueue times, `P:done` and `P:done:<sec>` completions,
//!   `P:audit` zset + `P:auditdata` hash, `P:watch:<id>` while a gateway watches an ad,
//!   `P:watching` while any ad is watched (scripts skip the per-ad check without it).
//! - With K > 1 shards: `P:shards` on shard 0 (the most shards the queue was opened
//!   with), and a `ver` field in every shard's `P:policy` (the version of shard 0's
//!   policy and pauses that the shard holds).
//! - Channels: `P:wake` (new work), `P:ad` (`<id>:<status>` when a watched ad changed).

//!
//! Each script runs after a prelude: `BASE` (`ENQ_BASE_MS`) and `MAX_PRIORITY` (the
//! index's), then `lua/prelude.lua`
//! (shared helpers), then what is generated here from the Rust constants, so the stored
//! codes are spelled once: `policy()` reads the `P:policy` hash by `policy::CODES`, and
//! `fields(id)` (`AD_FIELDS`, `AD_FIELDS_FAM`) reads an ad in the order `AdFields` decodes.

use crate::index::MAX_PRIORITY;
use crate::{fields, policy};
use redis::Script;

/// Enqueue times are summed as offsets from this instant (Unix ms) so the sums of many
/// queued ads stay exact integers; the scripts get it as `BASE`.
pub(super) const ENQ_BASE_MS: i64 = 1_700_000_000_000;

/// The Lua helpers generated from the Rust constants (see the module comment).
fn generated() -> String {
    let quoted = |v: &[&str]| v.iter().map(|c| format!("'{c}'")).collect::<Vec<_>>().join(", ");
    let [anti, max_wait, aging, attempts, lease] = policy::CODES;
    format!(
        r#"
local function policy()
  local v = redis.call('HMGET', P .. ':policy', '{anti}', '{max_wait}', '{aging}', '{attempts}', '{lease}')
  return {{ anti_starvation = v[1] == '1', max_wait_s = num(v[2]), aging_ms = num(v[3]) * 1000,
    max_attempts = num(v[4]), lease_ms = num(v[5]) * 1000 }}
end
local MAX_WAIT_CODE = '{max_wait}'
local AD_FIELDS = {{ {read} }}
local AD_FIELDS_FAM = {{ {read}, '{fam}' }}
local function fields(id)
  return redis.call('HMGET', adk(id), unpack(AD_FIELDS))
end
"#,
        read = quoted(&fields::READ),
        fam = fields::FAM,
    )
}

/// Every script of the queue, each with the prelude in front.
pub(super) struct Scripts {
    pub(super) submit: Script,
    pub(super) lease: Script,
    pub(super) ack_many: Script,
    pub(super) nack: Script,
    pub(super) extend: Script,
    pub(super) release: Script,
    pub(super) expire: Script,
    pub(super) get: Script,
    pub(super) fetch: Script,
    pub(super) cancel: Script,
    pub(super) set_priority: Script,
    pub(super) reprioritize: Script,
    pub(super) requeue_dead: Script,
    pub(super) purge: Script,
    pub(super) stats: Script,
    pub(super) peek: Script,
    pub(super) redeadline: Script,
    pub(super) audit: Script,
    pub(super) sync: Script,
}

impl Scripts {
    /// Builds the scripts (their SHA1s are computed here; Redis loads them on first use).
    pub(super) fn new() -> Self {
        let prelude = format!(
            "local BASE = {ENQ_BASE_MS}\nlocal MAX_PRIORITY = {MAX_PRIORITY}\nlocal P = KEYS[1]\n{}{}",
            include_str!("lua/prelude.lua"),
            generated()
        );
        let s = |body: &str| Script::new(&format!("{prelude}{body}"));
        Self {
            submit: s(include_str!("lua/submit.lua")),
            lease: s(include_str!("lua/lease.lua")),
            ack_many: s(include_str!("lua/ack_many.lua")),
            nack: s(include_str!("lua/nack.lua")),
            extend: s(include_str!("lua/extend.lua")),
            release: s(include_str!("lua/release.lua")),
            expire: s(include_str!("lua/expire.lua")),
            get: s(include_str!("lua/get.lua")),
            fetch: s(include_str!("lua/fetch.lua")),
            cancel: s(include_str!("lua/cancel.lua")),
            set_priority: s(include_str!("lua/set_priority.lua")),
            reprioritize: s(include_str!("lua/reprioritize.lua")),
            requeue_dead: s(include_str!("lua/requeue_dead.lua")),
            purge: s(include_str!("lua/purge.lua")),
            stats: s(include_str!("lua/stats.lua")),
            peek: s(include_str!("lua/peek.lua")),
            redeadline: s(include_str!("lua/redeadline.lua")),
            audit: s(include_str!("lua/audit.lua")),
            sync: s(include_str!("lua/sync.lua")),
        }
    }
}
