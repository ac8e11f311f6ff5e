//! Validation of incoming ad events against configurable limits. It runs before an event
//! touches the dedup window or the pipeline, so a refused event never reaches storage.
//! Each failure names the field and says what was wrong, for the reply's `Rejection`.

use crate::EventView;
use crate::pb::{EventType, Platform, RejectReason};
use serde::{Deserialize, Serialize};

/// Bounds an event must respect (`[validation]` in the config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Longest `event_id`, in bytes (default 128).
    pub max_event_id_len: usize,
    /// Longest id or label field (`ad_id`, `campaign_id`, `game_id`, ...), in bytes (default 128).
    pub max_field_len: usize,
    /// Most entries in `attributes` (default 32).
    pub max_attributes: usize,
    /// Longest attribute key, in bytes (default 64).
    pub max_attribute_key_len: usize,
    /// Longest attribute value, in bytes (default 256).
    pub max_attribute_value_len: usize,
    /// How far in the future a timestamp may lie, in seconds (default 300).
    pub max_future_skew_secs: u64,
    /// How old a timestamp may be, in days (default 30).
    pub max_age_days: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_event_id_len: 128,
            max_field_len: 128,
            max_attributes: 32,
            max_attribute_key_len: 64,
            max_attribute_value_len: 256,
            max_future_skew_secs: 300,
            max_age_days: 30,
        }
    }
}

/// Why an event was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// The offending field.
    pub field: &'static str,
    /// The machine-readable reason.
    pub reason: RejectReason,
    /// A sentence for humans.
    pub message: String,
}

fn invalid(field: &'static str, reason: RejectReason, message: String) -> Invalid {
    Invalid { field, reason, message }
}

fn bounded(field: &'static str, value: &str, max: usize, required: bool) -> Result<(), Invalid> {
    if required && value.is_empty() {
        return Err(invalid(field, RejectReason::MissingField, format!("{field} is required")));
    }
    if value.len() > max {
        return Err(invalid(
            field,
            RejectReason::OutOfRange,
            format!("{field} is {} bytes, the limit is {max}", value.len()),
        ));
    }
    Ok(())
}

impl Limits {
    /// Checks `event` as received at `now_ms`; the first problem found is returned.
    pub fn check(&self, e: &EventView<'_>, now_ms: i64) -> Result<(), Invalid> {
        bounded("event_id", e.event_id, self.max_event_id_len, true)?;
        match EventType::try_from(e.r#type) {
            Ok(EventType::Unspecified) => {
                return Err(invalid("type", RejectReason::MissingField, "type is required".into()));
            }
            Err(_) => {
                return Err(invalid(
                    "type",
                    RejectReason::Malformed,
                    format!("type {} is not a known EventType", e.r#type),
                ));
            }
            Ok(_) => {}
        }
        bounded("ad_id", e.ad_id, self.max_field_len, true)?;
        bounded("campaign_id", e.campaign_id, self.max_field_len, false)?;
        bounded("game_id", e.game_id, self.max_field_len, false)?;
        bounded("game_family", e.game_family, self.max_field_len, false)?;
        bounded("user_id", e.user_id, self.max_field_len, false)?;
        bounded("device", e.device, self.max_field_len, false)?;
        let iso_code = e.country.len() == 2 && e.country.bytes().all(|b| b.is_ascii_uppercase());
        if !e.country.is_empty() && !iso_code {
            return Err(invalid(
                "country",
                RejectReason::Malformed,
                format!("country {:?} is not an upper-case ISO 3166-1 alpha-2 code", trunc(e.country)),
            ));
        }
        if Platform::try_from(e.platform).is_err() {
            return Err(invalid(
                "platform",
                RejectReason::Malformed,
                format!("platform {} is not a known Platform", e.platform),
            ));
        }
        if let Some(r) = e.revenue_usd
            && !(r.is_finite() && r >= 0.0)
        {
            return Err(invalid(
                "revenue_usd",
                RejectReason::OutOfRange,
                format!("revenue_usd {r} must be a finite number >= 0"),
            ));
        }
        if e.video_position_ms < 0 {
            return Err(invalid(
                "video_position_ms",
                RejectReason::OutOfRange,
                format!("video_position_ms {} must be >= 0", e.video_position_ms),
            ));
        }
        self.check_timestamp(e.timestamp_ms, now_ms)?;
        self.check_attributes(e)
    }

    fn check_timestamp(&self, ts: i64, now_ms: i64) -> Result<(), Invalid> {
        if ts == 0 {
            return Ok(());
        }
        let future = now_ms.saturating_add(self.max_future_skew_secs as i64 * 1000);
        if ts > future {
            return Err(invalid(
                "timestamp_ms",
                RejectReason::BadTimestamp,
                format!(
                    "timestamp_ms {ts} is {} s in the future; at most {} s of clock skew is allowed",
                    (ts - now_ms) / 1000,
                    self.max_future_skew_secs
                ),
            ));
        }
        let oldest = now_ms.saturating_sub(self.max_age_days as i64 * 86_400_000);
        if ts < oldest {
            return Err(invalid(
                "timestamp_ms",
                RejectReason::BadTimestamp,
                format!("timestamp_ms {ts} is older than the max age of {} days", self.max_age_days),
            ));
        }
        Ok(())
    }

    fn check_attributes(&self, e: &EventView<'_>) -> Result<(), Invalid> {
        if e.attribute_count > self.max_attributes {
            return Err(invalid(
                "attributes",
                RejectReason::OutOfRange,
                format!("attributes has {} entries, the limit is {}", e.attribute_count, self.max_attributes),
            ));
        }
        let keys_ok = e.attribute_count == 0
            || (e.attribute_key_min > 0 && e.attribute_key_max <= self.max_attribute_key_len);
        if keys_ok && e.attribute_value_max <= self.max_attribute_value_len {
            return Ok(()); // the common case: no need to walk the entries again
        }
        for (k, v) in e.attributes() {
            if k.is_empty() || k.len() > self.max_attribute_key_len {
                return Err(invalid(
                    "attributes",
                    RejectReason::OutOfRange,
                    format!("attribute key {:?} must be 1..={} bytes", trunc(k), self.max_attribute_key_len),
                ));
            }
            if v.len() > self.max_attribute_value_len {
                return Err(invalid(
                    "attributes",
                    RejectReason::OutOfRange,
                    format!(
                        "attribute {:?} value is {} bytes, the limit is {}",
                        trunc(k),
                        v.len(),
                        self.max_attribute_value_len
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// At most 32 characters of `s`, for quoting user input in messages.
pub fn trunc(s: &str) -> &str {
    match s.char_indices().nth(32) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::AdEvent;
    use prost::Message;

    const NOW: i64 = 1_800_000_000_000;

    fn check(e: &AdEvent) -> Result<(), Invalid> {
        let bytes = e.encode_to_vec();
        Limits::default().check(&EventView::parse(&bytes).unwrap(), NOW)
    }

    fn ok_event() -> AdEvent {
        AdEvent {
            event_id: "e-1".into(),
            r#type: EventType::Click as i32,
            ad_id: "ad-1".into(),
            timestamp_ms: NOW - 1000,
            ..Default::default()
        }
    }

    fn field_of(e: AdEvent) -> &'static str {
        check(&e).unwrap_err().field
    }

    #[test]
    fn a_complete_event_passes() {
        let mut e = ok_event();
        e.country = "DE".into();
        e.revenue_usd = Some(1.5);
        e.attributes.insert("placement".into(), "feed".into());
        assert_eq!(check(&e), Ok(()));
    }

    #[test]
    fn each_broken_field_is_named() {
        assert_eq!(field_of(AdEvent { event_id: String::new(), ..ok_event() }), "event_id");
        assert_eq!(field_of(AdEvent { event_id: "x".repeat(129), ..ok_event() }), "event_id");
        assert_eq!(field_of(AdEvent { r#type: 0, ..ok_event() }), "type");
        assert_eq!(field_of(AdEvent { r#type: 99, ..ok_event() }), "type");
        assert_eq!(field_of(AdEvent { ad_id: String::new(), ..ok_event() }), "ad_id");
        assert_eq!(field_of(AdEvent { country: "usa".into(), ..ok_event() }), "country");
        assert_eq!(field_of(AdEvent { platform: 42, ..ok_event() }), "platform");
        assert_eq!(field_of(AdEvent { revenue_usd: Some(f64::NAN), ..ok_event() }), "revenue_usd");
        assert_eq!(field_of(AdEvent { revenue_usd: Some(-1.0), ..ok_event() }), "revenue_usd");
        assert_eq!(field_of(AdEvent { video_position_ms: -5, ..ok_event() }), "video_position_ms");
        assert_eq!(field_of(AdEvent { timestamp_ms: NOW + 301_000, ..ok_event() }), "timestamp_ms");
        assert_eq!(field_of(AdEvent { timestamp_ms: NOW - 31 * 86_400_000, ..ok_event() }), "timestamp_ms");
        let mut e = ok_event();
        for i in 0..33 {
            e.attributes.insert(format!("k{i}"), "v".into());
        }
        assert_eq!(field_of(e), "attributes");
        let mut e = ok_event();
        e.attributes.insert("k".into(), "v".repeat(257));
        assert_eq!(field_of(e), "attributes");
    }

    #[test]
    fn messages_state_the_limit() {
        let err = check(&AdEvent { event_id: "x".repeat(300), ..ok_event() });
        assert_eq!(err.unwrap_err().message, "event_id is 300 bytes, the limit is 128");
    }

    #[test]
    fn zero_timestamp_means_receive_time() {
        assert!(check(&AdEvent { timestamp_ms: 0, ..ok_event() }).is_ok());
    }
}
