//! Validation of submitted ads. Each failure names the field (as `ad.<field>`) and the
//! bound, so clients can fix the request without reading the docs.

use crate::pb::AdSpec;

/// Why an ad was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidAd {
    /// The offending field, e.g. "ad.title".
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

/// An ad's priority: 1..=5, 5 the highest. The one place the range is checked: ad
/// validation, the queue, the operator controls and the worker partitions all build one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(u8);

/// A number that is not a priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0} is outside 1..=5 (5 is the highest)")]
pub struct NotAPriority(pub u64);

impl Priority {
    /// The lowest priority.
    pub const MIN: u8 = 1;
    /// The highest priority.
    pub const MAX: u8 = 5;

    /// Checks `p` (any integer type).
    pub fn new(p: impl Into<u64>) -> Result<Self, NotAPriority> {
        let p = p.into();
        if (Self::MIN as u64..=Self::MAX as u64).contains(&p) {
            Ok(Self(p as u8))
        } else {
            Err(NotAPriority(p))
        }
    }

    /// The number, 1..=5.
    pub fn get(self) -> u8 {
        self.0
    }

    /// Every priority, highest first.
    pub fn all_desc() -> impl Iterator<Item = Priority> {
        (Self::MIN..=Self::MAX).rev().map(Self)
    }
}

impl From<Priority> for u8 {
    fn from(p: Priority) -> u8 {
        p.0
    }
}

impl From<Priority> for u32 {
    fn from(p: Priority) -> u32 {
        p.0.into()
    }
}

fn bad(field: &'static str, message: String) -> Result<(), InvalidAd> {
    Err(InvalidAd { field, message })
}

fn text(field: &'static str, v: &str, max: usize, required: bool) -> Result<(), InvalidAd> {
    let n = v.chars().count();
    if required && v.trim().is_empty() {
        return bad(field, "is required".into());
    }
    if n > max {
        return bad(field, format!("is {n} characters, the limit is {max}"));
    }
    Ok(())
}

fn list(field: &'static str, v: &[String], max_items: usize, max_len: usize) -> Result<(), InvalidAd> {
    if v.len() > max_items {
        return bad(field, format!("has {} entries, the limit is {max_items}", v.len()));
    }
    for (i, s) in v.iter().enumerate() {
        if s.trim().is_empty() || s.chars().count() > max_len {
            return bad(field, format!("entry {i} must be 1..={max_len} characters"));
        }
    }
    Ok(())
}

/// Checks a submitted ad.
pub fn check(a: &AdSpec) -> Result<(), InvalidAd> {
    text("ad.title", &a.title, 120, true)?;
    text("ad.description", &a.description, 2000, false)?;
    text("ad.game_family", &a.game_family, 64, true)?;
    text("ad.genre", &a.genre, 64, false)?;
    list("ad.target_audience", &a.target_audience, 16, 64)?;
    list("ad.visual_elements", &a.visual_elements, 32, 64)?;
    text("ad.call_to_action", &a.call_to_action, 64, false)?;
    if a.duration_seconds > 600 {
        return bad("ad.duration_seconds", format!("{} is above 600", a.duration_seconds));
    }
    if let Err(e) = Priority::new(a.priority) {
        return bad("ad.priority", e.to_string());
    }
    if a.max_wait_seconds > 86_400 {
        return bad("ad.max_wait_seconds", format!("{} is above 86400", a.max_wait_seconds));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> AdSpec {
        AdSpec {
            title: "Raid the keep".into(),
            game_family: "RPG-Fantasy".into(),
            priority: 3,
            ..Default::default()
        }
    }

    #[test]
    fn each_bound_names_its_field() {
        assert_eq!(check(&ok()), Ok(()));
        let field = |a: AdSpec| check(&a).unwrap_err().field;
        assert_eq!(field(AdSpec { priority: 0, ..ok() }), "ad.priority");
        assert_eq!(field(AdSpec { priority: 6, ..ok() }), "ad.priority");
        assert_eq!(field(AdSpec { title: "  ".into(), ..ok() }), "ad.title");
        assert_eq!(field(AdSpec { title: "x".repeat(121), ..ok() }), "ad.title");
        assert_eq!(field(AdSpec { description: "x".repeat(2001), ..ok() }), "ad.description");
        assert_eq!(field(AdSpec { game_family: String::new(), ..ok() }), "ad.game_family");
        assert_eq!(field(AdSpec { target_audience: vec!["a".into(); 17], ..ok() }), "ad.target_audience");
        assert_eq!(field(AdSpec { visual_elements: vec![String::new()], ..ok() }), "ad.visual_elements");
        assert_eq!(field(AdSpec { duration_seconds: 601, ..ok() }), "ad.duration_seconds");
        assert_eq!(field(AdSpec { max_wait_seconds: 90_000, ..ok() }), "ad.max_wait_seconds");
    }
}
