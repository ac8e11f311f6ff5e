//! How a MongoDB queue document is read and written: numbers whatever BSON type the
//! server returns them as, binary fields, and the `pb::Ad` a document holds. The field
//! names are `crate::fields`, shared with the Redis queue.

use crate::fields::*;
use adflow_proto::v1 as pb;
use mongodb::bson::{Binary, Bson, Document, spec::BinarySubtype};
use prost::Message;

/// A stored number or flag as an integer, whichever BSON type the server returns it as:
/// MongoDB-wire servers differ (a `bool` or an `int64` written by `$set` can read back as
/// an int32, an int64 or a double), so every numeric and boolean field is read through
/// this one function. None when the field is missing or not a number.
pub(super) fn number(v: Option<&Bson>) -> Option<i64> {
    match v? {
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Int64(n) => Some(*n),
        Bson::Double(n) if n.is_finite() => Some(*n as i64),
        Bson::Boolean(b) => Some(i64::from(*b)),
        Bson::Decimal128(d) => d.to_string().parse::<f64>().ok().map(|n| n as i64),
        _ => None,
    }
}

/// A stored number (0 when missing).
pub(super) fn geti(d: &Document, k: &str) -> i64 {
    number(d.get(k)).unwrap_or(0)
}

/// A stored setting, or None (with a warning when a value is there but unreadable: the
/// caller uses the default).
pub(super) fn stored_number(d: &Document, k: &str) -> Option<i64> {
    match (d.get(k), number(d.get(k))) {
        (_, Some(n)) => Some(n),
        (None, None) => None,
        (Some(v), None) => {
            tracing::warn!(field = k, value = %v, "unreadable stored queue setting; using the default");
            None
        }
    }
}

/// Bytes as a BSON binary.
pub(super) fn bin(bytes: Vec<u8>) -> Binary {
    Binary { subtype: BinarySubtype::Generic, bytes }
}

/// A binary field's bytes (empty when missing).
pub(super) fn bytes<'a>(d: &'a Document, k: &str) -> &'a [u8] {
    match d.get(k) {
        Some(Bson::Binary(b)) => &b.bytes,
        _ => &[],
    }
}

/// The ad a document holds (computed fields left at zero).
pub(super) fn to_ad(d: &Document) -> pb::Ad {
    let mut ad = pb::Ad::decode(bytes(d, PB)).unwrap_or_default();
    ad.id = d.get_str("_id").unwrap_or_default().to_owned();
    ad.status = geti(d, ST) as i32;
    ad.priority = geti(d, PR) as u32;
    ad.enqueued_at_ms = geti(d, ENQ);
    ad.started_at_ms = geti(d, START);
    ad.finished_at_ms = geti(d, FIN);
    ad.attempts = geti(d, ATT) as u32;
    ad.last_error = d.get_str(ERR).unwrap_or_default().to_owned();
    let an = bytes(d, AN);
    ad.analysis = (!an.is_empty()).then(|| pb::AnalysisResult::decode(an).ok()).flatten();
    ad
}
