//! The scheduling policy as rules, independent of any backend: the `Rules` the index
//! schedules by, the bounds a policy must respect, how an update applies, and the short
//! codes under which the shared backends store it (the Lua prelude and the MongoDB
//! documents are built from `CODES`, so the codes are spelled once).

use crate::QueueError;
use adflow_proto::v1 as pb;

/// Storage code of `anti_starvation` (stored as 1/0, or a bool in MongoDB).
pub const ANTI_STARVATION: &str = "as";
/// Storage code of `max_wait_seconds`.
pub const MAX_WAIT: &str = "mw";
/// Storage code of `aging_step_seconds`.
pub const AGING_STEP: &str = "ag";
/// Storage code of `max_attempts`.
pub const MAX_ATTEMPTS: &str = "ma";
/// Storage code of `lease_seconds`.
pub const LEASE: &str = "ls";

/// Every storage code, in the order of `stored`.
pub const CODES: [&str; 5] = [ANTI_STARVATION, MAX_WAIT, AGING_STEP, MAX_ATTEMPTS, LEASE];

/// The policy as stored: (code, value) in the order of `CODES`, the flag as 1/0.
pub fn stored(p: &pb::Policy) -> [(&'static str, u32); 5] {
    [
        (ANTI_STARVATION, p.anti_starvation as u32),
        (MAX_WAIT, p.max_wait_seconds),
        (AGING_STEP, p.aging_step_seconds),
        (MAX_ATTEMPTS, p.max_attempts),
        (LEASE, p.lease_seconds),
    ]
}

/// A policy read back by code; a missing value is the default's.
pub fn from_stored(get: impl Fn(&'static str) -> Option<i64>) -> pb::Policy {
    let d = crate::QueueConfig::default().policy();
    let num = |code, dv: u32| get(code).map(|v| v.clamp(0, u32::MAX.into()) as u32).unwrap_or(dv);
    pb::Policy {
        anti_starvation: get(ANTI_STARVATION).map(|v| v != 0).unwrap_or(d.anti_starvation),
        max_wait_seconds: num(MAX_WAIT, d.max_wait_seconds),
        aging_step_seconds: num(AGING_STEP, d.aging_step_seconds),
        max_attempts: num(MAX_ATTEMPTS, d.max_attempts),
        lease_seconds: num(LEASE, d.lease_seconds),
    }
}

/// The scheduling rules of a policy.
pub fn rules(p: &pb::Policy) -> crate::index::Rules {
    crate::index::Rules {
        anti_starvation: p.anti_starvation,
        aging_step_ms: p.aging_step_seconds as i64 * 1000,
    }
}

/// Checks a policy; the error names the field.
pub fn check(p: &pb::Policy) -> Result<(), (&'static str, String)> {
    if !(1..=86_400).contains(&p.max_wait_seconds) {
        return Err(("max_wait_seconds", format!("{} is outside 1..=86400", p.max_wait_seconds)));
    }
    if p.aging_step_seconds > 86_400 {
        return Err(("aging_step_seconds", format!("{} is above 86400", p.aging_step_seconds)));
    }
    if !(1..=100).contains(&p.max_attempts) {
        return Err(("max_attempts", format!("{} is outside 1..=100", p.max_attempts)));
    }
    if !(1..=3_600).contains(&p.lease_seconds) {
        return Err(("lease_seconds", format!("{} is outside 1..=3600", p.lease_seconds)));
    }
    Ok(())
}

/// Applies the set fields of `u` to `p`.
pub fn apply(p: &pb::Policy, u: &pb::SetPolicyRequest) -> pb::Policy {
    pb::Policy {
        anti_starvation: u.anti_starvation.unwrap_or(p.anti_starvation),
        max_wait_seconds: u.max_wait_seconds.unwrap_or(p.max_wait_seconds),
        aging_step_seconds: u.aging_step_seconds.unwrap_or(p.aging_step_seconds),
        max_attempts: u.max_attempts.unwrap_or(p.max_attempts),
        lease_seconds: u.lease_seconds.unwrap_or(p.lease_seconds),
    }
}

/// `apply` then `check`: the policy an update leads to, or the field it breaks.
pub fn updated(p: &pb::Policy, u: &pb::SetPolicyRequest) -> Result<pb::Policy, QueueError> {
    let next = apply(p, u);
    check(&next).map_err(|(field, message)| QueueError::Invalid { field, message })?;
    Ok(next)
}

/// The backend choice lives in `config`; re-exported for the `policy::QueueBackend` path.
pub use crate::config::QueueBackend;
