//! The field names under which the shared backends store an ad: the same short codes
//! are the keys of a Redis hash (`P:ad:<id>`) and of a MongoDB document, so they are
//! defined once here and the Lua prelude and the MongoDB filters are built from them.

/// The encoded `pb::Ad` (id, spec, creation time).
pub const PB: &str = "pb";
/// Status (`AdStatus` as a number).
pub const ST: &str = "st";
/// Priority, 1..=5.
pub const PR: &str = "pr";
/// FIFO sequence inside the queue.
pub const SEQ: &str = "seq";
/// Enqueue time, Unix ms.
pub const ENQ: &str = "enq";
/// The ad's own max wait, s (0: the policy's).
pub const MW: &str = "mw";
/// Max-wait deadline, Unix ms.
pub const DL: &str = "dl";
/// Attempts so far.
pub const ATT: &str = "att";
/// When the current or last lease started, Unix ms.
pub const START: &str = "start";
/// When the ad was finished or dead-lettered, Unix ms.
pub const FIN: &str = "fin";
/// The last error.
pub const ERR: &str = "err";
/// The encoded `AnalysisResult`.
pub const AN: &str = "an";
/// The current lease id.
pub const LEASE: &str = "lease";
/// The worker session holding the lease.
pub const SESS: &str = "sess";
/// Lease deadline, Unix ms (MongoDB; Redis keeps it in the `P:leases` zset).
pub const LDL: &str = "ldl";
/// W3C trace context of the submission.
pub const TRACE: &str = "trace";
/// Lower-case game family.
pub const FAM: &str = "fam";

/// The fields an ad is read back from, in the order `AdFields` (Redis) decodes them.
pub const READ: [&str; 10] = [PB, ST, PR, ENQ, START, FIN, ATT, ERR, AN, TRACE];
