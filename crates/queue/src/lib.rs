//! The ad queue: priority partitions with anti-starvation, leases with expiry and
//! redelivery, dead letters, and persistence that survives a restart.
//!
//! `index` is the pure scheduling structure; `embedded` wraps it with the ad records,
//! leases, watchers and a redb-backed journal of ad states. The gateway talks to the
//! `AdQueue` trait so that other backends (Redis, issue 4) can replace the embedded one.

pub mod index;
