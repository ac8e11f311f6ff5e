//! Analytics counters built from committed events: per ad, per campaign and for all ads,
//! in minute buckets (recent, exact to the minute) and hour buckets (older, up to the
//! retention). A query over [from, to) sums minute buckets for the part after the
//! "minute floor" (the hour boundary where minute buckets start) and hour buckets before
//! it, so every event is counted exactly once. A bucket belongs to a range when its start
//! lies inside the range; ranges are therefore resolved to whole minutes (recent part)
//! or whole hours (older part). The whole structure is rebuilt from the event store at
//! start, which is why it needs no persistence of its own.

use crate::StoredEvent;
use crate::pb::{EventType, Metric};
use adflow_proto::raw::Facts;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap as StdHashMap};
use std::hash::BuildHasherDefault;

/// Id-keyed maps hash with xxh3: ids come from our own clients, and SipHash's DoS
/// resistance costs more than it buys on this per-event path.
type HashMap<K, V> = StdHashMap<K, V, BuildHasherDefault<xxhash_rust::xxh3::Xxh3>>;

mod snapshot;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;

/// Retention of the counters (`[analytics]` in the config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// With a redis or mongodb backend: keep the counters in the backend, shared by every
    /// gateway, instead of in memory (default true; ignored with the file backend).
    pub shared: bool,
    /// Hours of minute-resolution buckets (default 2).
    pub minute_retention_hours: u32,
    /// Days of hour-resolution buckets (default 8; queries beyond return zero).
    pub retention_days: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Self { shared: true, minute_retention_hours: 2, retention_days: 8 }
    }
}

/// Counters of one bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counters {
    /// Events by `EventType` value (index 0 unused).
    pub by_type: [u64; 8],
    /// Sum of revenue in US dollars.
    pub revenue_usd: f64,
    /// Sum of video positions of video events, in milliseconds.
    pub video_ms: u64,
}

impl Counters {
    fn add_event(&mut self, e: &Facts<'_>) {
        let t = e.r#type as usize;
        if t < self.by_type.len() {
            self.by_type[t] = self.by_type[t].saturating_add(1);
        }
        self.revenue_usd += e.revenue_usd.unwrap_or(0.0);
        if matches!(
            EventType::try_from(e.r#type),
            Ok(EventType::VideoStart | EventType::VideoProgress | EventType::VideoComplete)
        ) {
            // Validation only requires >= 0: three events at i64::MAX would overflow a sum.
            self.video_ms = self.video_ms.saturating_add(e.video_position_ms.max(0) as u64);
        }
    }

    fn merge(&mut self, o: &Counters) {
        for (a, b) in self.by_type.iter_mut().zip(o.by_type) {
            *a = a.saturating_add(b);
        }
        self.revenue_usd += o.revenue_usd;
        self.video_ms = self.video_ms.saturating_add(o.video_ms);
    }

    /// Number of events of type `t`.
    pub fn count(&self, t: EventType) -> u64 {
        self.by_type[t as usize]
    }

    /// All events.
    pub fn total(&self) -> u64 {
        self.by_type.iter().fold(0u64, |a, b| a.saturating_add(*b))
    }

    /// clicks / impressions, 0 without impressions.
    pub fn ctr(&self) -> f64 {
        ratio(self.count(EventType::Click), self.count(EventType::Impression))
    }

    /// conversions / clicks, 0 without clicks.
    pub fn conversion_rate(&self) -> f64 {
        ratio(self.count(EventType::Conversion), self.count(EventType::Click))
    }

    /// The value of `metric` (impressions by default).
    pub fn metric(&self, metric: Metric) -> f64 {
        match metric {
            Metric::Unspecified | Metric::Impressions => self.count(EventType::Impression) as f64,
            Metric::Clicks => self.count(EventType::Click) as f64,
            Metric::Conversions => self.count(EventType::Conversion) as f64,
            Metric::Revenue => self.revenue_usd,
            Metric::Ctr => self.ctr(),
            Metric::ConversionRate => self.conversion_rate(),
        }
    }

    /// The denominator of a rate metric (impressions for CTR, clicks for conversion rate).
    pub fn denominator(&self, metric: Metric) -> u64 {
        match metric {
            Metric::Ctr => self.count(EventType::Impression),
            Metric::ConversionRate => self.count(EventType::Click),
            _ => u64::MAX,
        }
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

#[derive(Default)]
struct Series {
    minutes: BTreeMap<i64, Counters>,
    hours: BTreeMap<i64, Counters>,
}

impl Series {
    fn add(&mut self, e: &Facts<'_>) {
        let ts = e.timestamp_ms;
        bump(&mut self.minutes, ts.div_euclid(MINUTE), e);
        bump(&mut self.hours, ts.div_euclid(HOUR), e);
    }

    fn sum(&self, from: i64, to: i64, minute_floor: i64) -> Counters {
        let mut c = Counters::default();
        let (hours, minutes) = split(from, to, minute_floor);
        for (_, b) in self.hours.range(hours) {
            c.merge(b);
        }
        for (_, b) in self.minutes.range(minutes) {
            c.merge(b);
        }
        c
    }

    fn prune(&mut self, minute_floor: i64, hour_floor: i64) {
        self.minutes = self.minutes.split_off(&minute_floor.div_euclid(MINUTE));
        self.hours = self.hours.split_off(&hour_floor.div_euclid(HOUR));
    }

    fn is_empty(&self) -> bool {
        self.hours.is_empty()
    }
}

/// Adds `e` to bucket `k`; the newest bucket, where nearly every event lands, is O(1).
fn bump(buckets: &mut BTreeMap<i64, Counters>, k: i64, e: &Facts<'_>) {
    if let Some(mut last) = buckets.last_entry()
        && *last.key() == k
    {
        last.get_mut().add_event(e);
        return;
    }
    buckets.entry(k).or_default().add_event(e);
}

/// The hour buckets and minute buckets (by index) that make up [from, to): hours (whose
/// start lies in the range) before the minute floor, minutes after it, so each event is
/// counted once.
fn split(from: i64, to: i64, minute_floor: i64) -> (std::ops::Range<i64>, std::ops::Range<i64>) {
    if from >= to {
        return (0..0, 0..0);
    }
    let (hour_to, minute_from) = (to.min(minute_floor), from.max(minute_floor));
    let hours = if from < hour_to { ceil_div(from, HOUR)..ceil_div(hour_to, HOUR) } else { 0..0 };
    let minutes = if minute_from < to { ceil_div(minute_from, MINUTE)..ceil_div(to, MINUTE) } else { 0..0 };
    (hours, minutes)
}

/// The start of the hour `hours` before the hour holding `now_ms` (saturating: the
/// retention settings are u32 and a clock may be anywhere).
fn hours_back(now_ms: i64, hours: i64) -> i64 {
    now_ms.div_euclid(HOUR).saturating_sub(hours).saturating_mul(HOUR)
}

/// Which scope a shared counter belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Every event.
    All,
    /// One ad.
    Ad,
    /// One campaign.
    Campaign,
}

impl Kind {
    /// The one-letter tag used in stored counter names.
    pub fn tag(self) -> char {
        match self {
            Kind::All => '*',
            Kind::Ad => 'a',
            Kind::Campaign => 'c',
        }
    }

    /// The kind and id of a scope.
    pub fn of<'a>(scope: Scope<'a>) -> (Kind, &'a str) {
        match scope {
            Scope::All => (Kind::All, ""),
            Scope::Ad(id) => (Kind::Ad, id),
            Scope::Campaign(id) => (Kind::Campaign, id),
        }
    }
}

/// Counters of one batch, summed per (kind, id, minute index): what a shared backend adds
/// to its minute bucket and to the hour bucket holding that minute.
/// Ids are borrowed from the events (no allocation per event).
pub fn aggregate(events: &[StoredEvent]) -> HashMap<(Kind, &[u8], i64), Counters> {
    let mut out: HashMap<(Kind, &[u8], i64), Counters> = HashMap::default();
    for s in events {
        let Ok(e) = Facts::parse(&s.raw) else { continue };
        let minute = e.timestamp_ms.div_euclid(MINUTE);
        out.entry((Kind::All, &[][..], minute)).or_default().add_event(&e);
        out.entry((Kind::Ad, e.ad_id, minute)).or_default().add_event(&e);
        if !e.campaign_id.is_empty() {
            out.entry((Kind::Campaign, e.campaign_id, minute)).or_default().add_event(&e);
        }
    }
    out
}

/// How far ahead of the current hour a shared backend looks for buckets: events are at
/// most `validation.max_future_skew_secs` (at most a day, checked at start) in the future.
pub const FUTURE_HORIZON_HOURS: i64 = 25;

/// Minutes per hour bucket.
pub const MINUTES_PER_HOUR: i64 = HOUR / MINUTE;

impl Retention {
    /// Hour and minute bucket indexes a shared backend sums for [from, to) at `now_ms`.
    /// Both ends are clipped to where buckets can exist (the retention behind, the
    /// [`FUTURE_HORIZON_HOURS`] ahead), so a request for `[i64::MIN, i64::MAX)` names at
    /// most `(minute_retention_hours + 25) * 60` minute and `retention_days * 24` hour buckets.
    pub fn plan(&self, from: i64, to: i64, now_ms: i64) -> (std::ops::Range<i64>, std::ops::Range<i64>) {
        let oldest = hours_back(now_ms, self.retention_days as i64 * 24);
        let newest = hours_back(now_ms, -FUTURE_HORIZON_HOURS);
        split(from.max(oldest), to.min(newest), self.minute_floor(now_ms))
    }

    /// Where minute buckets start at `now_ms`: the hour boundary `minute_retention_hours` back.
    fn minute_floor(&self, now_ms: i64) -> i64 {
        hours_back(now_ms, self.minute_retention_hours as i64)
    }

    /// When a minute bucket may be dropped, Unix ms.
    pub fn minute_expiry(&self, minute: i64) -> i64 {
        let keep = (self.minute_retention_hours as i64 + 1) * HOUR;
        minute.saturating_add(1).saturating_mul(MINUTE).saturating_add(keep)
    }

    /// When an hour bucket may be dropped, Unix ms.
    pub fn hour_expiry(&self, hour: i64) -> i64 {
        let keep = self.retention_days as i64 * 24 * HOUR;
        hour.saturating_add(1).saturating_mul(HOUR).saturating_add(keep)
    }
}

impl Counters {
    /// Adds another set of counters.
    pub fn add(&mut self, o: &Counters) {
        self.merge(o);
    }
}

/// `a / b` rounded up, for `b > 0`; defined for every `a` (negating `a` would overflow
/// at `i64::MIN`, a value a query range may carry).
fn ceil_div(a: i64, b: i64) -> i64 {
    a.div_euclid(b) + i64::from(a.rem_euclid(b) != 0)
}

/// Which series a query reads.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    /// All ads together.
    All,
    /// One ad.
    Ad(&'a str),
    /// One campaign.
    Campaign(&'a str),
}

/// The analytics state of a gateway.
#[derive(Default)]
pub struct Analytics {
    retention: Retention,
    all: Series,
    ads: HashMap<Box<[u8]>, Series>,
    campaigns: HashMap<Box<[u8]>, Series>,
    recorded: u64,
}

impl Analytics {
    /// Empty analytics with the given retention.
    pub fn new(retention: Retention) -> Self {
        Self { retention, ..Default::default() }
    }

    fn minute_floor(&self, now_ms: i64) -> i64 {
        self.retention.minute_floor(now_ms)
    }

    fn hour_floor(&self, now_ms: i64) -> i64 {
        hours_back(now_ms, self.retention.retention_days as i64 * 24)
    }

    /// Counts committed events; events older than the retention are skipped.
    pub fn record<'a>(&mut self, events: impl IntoIterator<Item = &'a StoredEvent>, now_ms: i64) {
        let hour_floor = self.hour_floor(now_ms);
        for s in events {
            // Stored events passed validation; one that does not parse is skipped, not fatal.
            let Ok(e) = Facts::parse(&s.raw) else { continue };
            if e.timestamp_ms < hour_floor {
                continue;
            }
            self.all.add(&e);
            add_to(&mut self.ads, e.ad_id, &e);
            if !e.campaign_id.is_empty() {
                add_to(&mut self.campaigns, e.campaign_id, &e);
            }
            self.recorded += 1;
            // Amortised pruning: once per ~million events keeps memory flat without a timer.
            if self.recorded.is_multiple_of(1 << 20) {
                self.prune(now_ms);
            }
        }
    }

    /// Drops buckets that fell out of the retention.
    pub fn prune(&mut self, now_ms: i64) {
        let (mf, hf) = (self.minute_floor(now_ms), self.hour_floor(now_ms));
        self.all.prune(mf, hf);
        for map in [&mut self.ads, &mut self.campaigns] {
            map.retain(|_, s| {
                s.prune(mf, hf);
                !s.is_empty()
            });
        }
    }

    /// Counters of `scope` over [from, to).
    pub fn sum(&self, scope: Scope<'_>, from: i64, to: i64, now_ms: i64) -> Counters {
        let floor = self.minute_floor(now_ms);
        let s = match scope {
            Scope::All => Some(&self.all),
            Scope::Ad(id) => self.ads.get(id.as_bytes()),
            Scope::Campaign(id) => self.campaigns.get(id.as_bytes()),
        };
        s.map(|s| s.sum(from, to, floor)).unwrap_or_default()
    }

    /// Each ad with events in [from, to), with its counters.
    pub fn ads_in(&self, from: i64, to: i64, now_ms: i64) -> Vec<(&str, Counters)> {
        per_key(&self.ads, from, to, self.minute_floor(now_ms))
    }

    /// Each campaign with events in [from, to), with its counters.
    pub fn campaigns_in(&self, from: i64, to: i64, now_ms: i64) -> Vec<(&str, Counters)> {
        per_key(&self.campaigns, from, to, self.minute_floor(now_ms))
    }
}

/// Adds `e` to the series of `id` (one hash lookup when the series exists).
fn add_to(map: &mut HashMap<Box<[u8]>, Series>, id: &[u8], e: &Facts<'_>) {
    match map.get_mut(id) {
        Some(s) => s.add(e),
        None => {
            let mut s = Series::default();
            s.add(e);
            map.insert(id.into(), s);
        }
    }
}

fn per_key(map: &HashMap<Box<[u8]>, Series>, from: i64, to: i64, floor: i64) -> Vec<(&str, Counters)> {
    map.iter()
        // Keys come from validated events, so they are UTF-8.
        .filter_map(|(k, s)| Some((std::str::from_utf8(k).ok()?, s.sum(from, to, floor))))
        .filter(|(_, c)| c.total() > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn ev(ad: &str, camp: &str, t: EventType, ts: i64, revenue: Option<f64>) -> StoredEvent {
        StoredEvent::encode(
            ts,
            &crate::pb::AdEvent {
                event_id: format!("{ad}-{ts}"),
                ad_id: ad.into(),
                campaign_id: camp.into(),
                r#type: t as i32,
                timestamp_ms: ts,
                revenue_usd: revenue,
                ..Default::default()
            },
        )
    }

    #[test]
    fn windows_count_each_event_once() {
        let mut a = Analytics::new(Retention::default());
        let evs = vec![
            ev("a", "c1", EventType::Impression, NOW - 5 * MINUTE, None),
            ev("a", "c1", EventType::Click, NOW - 30 * MINUTE, None),
            ev("a", "c1", EventType::Conversion, NOW - 3 * HOUR, Some(2.5)),
            ev("b", "c2", EventType::Impression, NOW - 2 * 86_400_000, None),
        ];
        a.record(&evs, NOW);
        let hour = a.sum(Scope::Ad("a"), NOW - HOUR, NOW, NOW);
        assert_eq!((hour.count(EventType::Impression), hour.count(EventType::Click)), (1, 1));
        assert_eq!(hour.count(EventType::Conversion), 0);
        let day = a.sum(Scope::Ad("a"), NOW - 24 * HOUR, NOW, NOW);
        assert_eq!(day.total(), 3);
        assert_eq!(day.revenue_usd, 2.5);
        assert_eq!(day.ctr(), 1.0);
        assert_eq!(day.conversion_rate(), 1.0);
        assert_eq!(a.sum(Scope::All, NOW - 7 * 24 * HOUR, NOW, NOW).total(), 4);
        assert_eq!(a.sum(Scope::Campaign("c2"), NOW - 24 * HOUR, NOW, NOW).total(), 0);
        assert_eq!(a.sum(Scope::Campaign("c2"), NOW - 7 * 24 * HOUR, NOW, NOW).total(), 1);
    }

    #[test]
    fn minute_and_hour_parts_do_not_overlap() {
        let mut a = Analytics::new(Retention::default());
        // One event per minute for the last 5 hours.
        let evs: Vec<_> =
            (1..=300).map(|m| ev("a", "", EventType::Impression, NOW - m * MINUTE, None)).collect();
        a.record(&evs, NOW);
        let all = a.sum(Scope::Ad("a"), NOW - 10 * HOUR, NOW + MINUTE, NOW);
        assert_eq!(all.total(), 300);
    }

    #[test]
    fn prune_keeps_what_queries_can_still_see() {
        let mut a = Analytics::new(Retention::default());
        a.record(&[ev("a", "", EventType::Click, NOW - 3 * HOUR, None)], NOW);
        a.prune(NOW);
        assert_eq!(a.sum(Scope::Ad("a"), NOW - 24 * HOUR, NOW, NOW).total(), 1);
        a.prune(NOW + 9 * 24 * HOUR);
        assert!(a.ads_in(0, i64::MAX, NOW).is_empty());
    }

    #[test]
    fn ceil_div_is_defined_for_every_value() {
        assert_eq!(ceil_div(i64::MIN, HOUR), i64::MIN.div_euclid(HOUR) + 1);
        assert_eq!(ceil_div(i64::MAX, MINUTE), i64::MAX / MINUTE + 1);
        assert_eq!((ceil_div(-1, HOUR), ceil_div(0, HOUR), ceil_div(1, HOUR)), (0, 0, 1));
        assert_eq!((ceil_div(-HOUR, HOUR), ceil_div(HOUR, HOUR), ceil_div(-HOUR - 1, HOUR)), (-1, 1, -1));
    }

    #[test]
    fn extreme_ranges_are_answered_not_panicked() {
        let mut a = Analytics::new(Retention::default());
        a.record(&[ev("a", "c", EventType::Click, NOW - 3 * HOUR, None)], NOW);
        a.record(&[ev("a", "c", EventType::Click, NOW - 5 * MINUTE, None)], NOW);
        let cases = [
            (i64::MIN, i64::MAX, 2),
            (i64::MIN, NOW, 2),
            (i64::MIN, i64::MIN + 1, 0),
            (i64::MAX - 1, i64::MAX, 0),
            (i64::MIN, NOW - 2 * HOUR, 1),
            (NOW - HOUR, i64::MAX, 1),
            (-1, 1, 0),
        ];
        for (from, to, n) in cases {
            assert_eq!(a.sum(Scope::Ad("a"), from, to, NOW).total(), n, "[{from}, {to})");
            assert_eq!(a.sum(Scope::All, from, to, NOW).total(), n, "[{from}, {to})");
            assert_eq!(a.ads_in(from, to, NOW).len(), usize::from(n > 0), "[{from}, {to})");
            assert_eq!(a.campaigns_in(from, to, NOW).len(), usize::from(n > 0), "[{from}, {to})");
        }
        // Any clock, any retention: the plan of a shared backend is computed too.
        let wide = Retention { shared: true, minute_retention_hours: u32::MAX, retention_days: u32::MAX };
        for now in [i64::MIN, 0, i64::MAX] {
            for r in [Retention::default(), wide.clone()] {
                let (h, m) = r.plan(i64::MIN, i64::MAX, now);
                assert!(h.start <= h.end && m.start <= m.end, "{h:?} {m:?}");
                if r == Retention::default() && now == 0 {
                    // Bounded by the retention and the horizon, not by the request.
                    assert_eq!(h.end - h.start, 8 * 24 - 2, "{h:?}");
                    assert_eq!(m.end - m.start, (2 + FUTURE_HORIZON_HOURS) * 60, "{m:?}");
                }
                let mut x = Analytics::new(r.clone());
                x.record(&[ev("a", "", EventType::Click, NOW, None)], now);
                let _ = x.sum(Scope::All, i64::MIN, i64::MAX, now);
                x.prune(now);
            }
        }
        assert_eq!(Retention::default().minute_expiry(i64::MAX), i64::MAX);
        assert_eq!(Retention::default().hour_expiry(i64::MAX), i64::MAX);
    }

    #[test]
    fn video_sums_saturate_instead_of_overflowing() {
        let mut c = Counters::default();
        let e = crate::pb::AdEvent {
            r#type: EventType::VideoProgress as i32,
            video_position_ms: i64::MAX,
            ..Default::default()
        };
        let raw = prost::Message::encode_to_vec(&e);
        let f = Facts::parse(&raw).unwrap();
        for _ in 0..3 {
            c.add_event(&f);
        }
        assert_eq!(c.video_ms, u64::MAX);
        c.merge(&c.clone());
        assert_eq!((c.video_ms, c.total()), (u64::MAX, 6));
    }

    #[test]
    fn rates_are_zero_without_denominator() {
        let c = Counters::default();
        assert_eq!((c.ctr(), c.conversion_rate()), (0.0, 0.0));
    }
}
