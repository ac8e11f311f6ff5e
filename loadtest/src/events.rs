//! Realistic ad events: ad popularity follows a Zipf law (a few ads get most traffic),
//! event types follow a typical funnel mix, every event id is a fresh random UUID, and a
//! configurable share of sends re-uses a recent id to exercise dedup.
//!
//! To keep the load generator's own CPU low (it shares the machine with the gateway),
//! each generator pre-draws a pool of event bodies and sends clones of them, each with a
//! fresh id and the current time, the way the ceiling client clones from its pool.

use adflow_proto::v1::{AdEvent, EventType, Platform};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use std::collections::{BTreeMap, VecDeque};

const COUNTRIES: [&str; 6] = ["US", "DE", "BR", "JP", "IN", "FR"];
const DEVICES: [&str; 3] = ["phone", "tablet", "desktop"];
const FAMILIES: [&str; 5] = ["RPG-Fantasy", "Puzzle", "Shooter", "Strategy", "Casual"];
const RECENT: usize = 1024;
const POOL: usize = 4096;

/// Shape of the generated traffic.
#[derive(Clone, Debug)]
pub struct Shape {
    /// Number of distinct ads.
    pub ads: u64,
    /// Zipf exponent of ad popularity.
    pub zipf: f64,
    /// Number of campaigns (ads map onto them round-robin).
    pub campaigns: u64,
    /// Share of events that resend a recent event id (0..1).
    pub duplicate_ratio: f64,
}

/// A per-task event generator.
pub struct Generator {
    rng: SmallRng,
    zipf: Zipf<f64>,
    shape: Shape,
    recent: VecDeque<String>,
    pool: Vec<AdEvent>,
    next: usize,
}

impl Generator {
    /// A generator seeded for task `seed`.
    pub fn new(shape: Shape, seed: u64) -> Self {
        let zipf = Zipf::new(shape.ads.max(1) as f64, shape.zipf).expect("valid zipf parameters");
        let mut g = Self {
            rng: SmallRng::seed_from_u64(seed),
            zipf,
            shape,
            recent: VecDeque::with_capacity(RECENT),
            pool: Vec::new(),
            next: 0,
        };
        g.pool = (0..POOL).map(|_| g.draw()).collect();
        g
    }

    fn event_id(&mut self) -> String {
        if !self.recent.is_empty() && self.rng.random_bool(self.shape.duplicate_ratio) {
            let i = self.rng.random_range(0..self.recent.len());
            return self.recent[i].clone();
        }
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let uuid = uuid::Builder::from_random_bytes(self.rng.random()).into_uuid();
        let id = uuid.hyphenated().encode_lower(&mut buf).to_owned();
        if self.shape.duplicate_ratio > 0.0 {
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(id.clone());
        }
        id
    }

    /// The next event, stamped with `now_ms`.
    pub fn event(&mut self, now_ms: i64) -> AdEvent {
        self.next = (self.next + 1) % POOL;
        let mut e = self.pool[self.next].clone();
        e.event_id = self.event_id();
        e.timestamp_ms = now_ms;
        e
    }

    /// A freshly drawn event body (id and time are set per send).
    fn draw(&mut self) -> AdEvent {
        let ad = self.zipf.sample(&mut self.rng) as u64;
        let roll = self.rng.random_range(0..1000);
        let ty = match roll {
            0..800 => EventType::Impression,
            800..920 => EventType::Click,
            920..950 => EventType::VideoStart,
            950..970 => EventType::VideoComplete,
            970..985 => EventType::Install,
            _ => EventType::Conversion,
        };
        let revenue_usd = match ty {
            EventType::Conversion => Some(self.rng.random_range(99..10_000) as f64 / 100.0),
            EventType::Impression => Some(0.002),
            _ => None,
        };
        let video_position_ms = match ty {
            EventType::VideoStart => 0,
            EventType::VideoComplete => 30_000,
            _ => 0,
        };
        let mut attributes = BTreeMap::new();
        attributes.insert("placement".to_string(), "feed-top".to_string());
        attributes.insert("app_ver".to_string(), "4.12.3".to_string());
        AdEvent {
            event_id: String::new(),
            r#type: ty as i32,
            ad_id: format!("ad-{ad:06}"),
            campaign_id: format!("cmp-{:04}", ad % self.shape.campaigns.max(1)),
            game_id: String::new(),
            game_family: FAMILIES[(ad % FAMILIES.len() as u64) as usize].to_string(),
            user_id: format!("u-{:012x}", self.rng.random::<u64>() >> 16),
            timestamp_ms: 0,
            revenue_usd,
            video_position_ms,
            platform: if ad.is_multiple_of(2) { Platform::Android } else { Platform::Ios } as i32,
            country: COUNTRIES[self.rng.random_range(0..COUNTRIES.len())].to_string(),
            device: DEVICES[self.rng.random_range(0..DEVICES.len())].to_string(),
            attributes,
        }
    }

    /// `n` events.
    pub fn batch(&mut self, n: usize, now_ms: i64) -> Vec<AdEvent> {
        (0..n).map(|_| self.event(now_ms)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn shape(dup: f64) -> Shape {
        Shape { ads: 1000, zipf: 1.1, campaigns: 10, duplicate_ratio: dup }
    }

    #[test]
    fn ids_are_unique_without_duplicates_requested() {
        let mut g = Generator::new(shape(0.0), 1);
        let ids: HashSet<_> = g.batch(10_000, 0).into_iter().map(|e| e.event_id).collect();
        assert_eq!(ids.len(), 10_000);
    }

    #[test]
    fn the_duplicate_share_is_close_to_the_ratio() {
        let mut g = Generator::new(shape(0.1), 2);
        let ids: Vec<_> = g.batch(20_000, 0).into_iter().map(|e| e.event_id).collect();
        let unique: HashSet<_> = ids.iter().collect();
        let dup = 1.0 - unique.len() as f64 / ids.len() as f64;
        assert!((0.08..0.12).contains(&dup), "duplicate share {dup}");
    }

    #[test]
    fn popular_ads_get_most_traffic() {
        let mut g = Generator::new(shape(0.0), 3);
        let evs = g.batch(20_000, 0);
        let top = evs.iter().filter(|e| e.ad_id == "ad-000001").count();
        let tail = evs.iter().filter(|e| e.ad_id == "ad-000900").count();
        assert!(top > 20 * tail.max(1), "top {top} tail {tail}");
    }
}
