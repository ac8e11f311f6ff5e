//! Saving the analytics counters to a checkpoint and loading them back, so a restart
//! does not recount every stored event.
//!
//! Only buckets inside the retention exist (`Analytics::prune`), so a snapshot is as big
//! as the counters in memory: per scope (everything, each ad, each campaign) its minute
//! and hour buckets, 88 bytes each. Layout (little-endian): `recorded u64`, the `all`
//! series, then ads and campaigns as `count u32, [name_len u32, name, series]*`; a series
//! is `minutes u32, [bucket]*, hours u32, [bucket]*`, a bucket `index i64, by_type [u64; 8],
//! revenue f64, video_ms u64`. Integrity (CRC, truncation) is the caller's framing.

use super::HashMap;
use super::{Analytics, Counters, Retention, Series};
use std::collections::BTreeMap;
use std::io::{Read, Write};

/// Longest scope name a snapshot may hold (ids are validated far shorter).
const MAX_NAME: usize = 1 << 16;

fn get<const N: usize>(r: &mut impl Read) -> std::io::Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn bad(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

fn write_buckets(w: &mut impl Write, b: &BTreeMap<i64, Counters>) -> std::io::Result<()> {
    w.write_all(&(b.len() as u32).to_le_bytes())?;
    for (k, c) in b {
        w.write_all(&k.to_le_bytes())?;
        for t in c.by_type {
            w.write_all(&t.to_le_bytes())?;
        }
        w.write_all(&c.revenue_usd.to_le_bytes())?;
        w.write_all(&c.video_ms.to_le_bytes())?;
    }
    Ok(())
}

fn read_buckets(r: &mut impl Read) -> std::io::Result<BTreeMap<i64, Counters>> {
    let n = u32::from_le_bytes(get::<4>(r)?);
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let k = i64::from_le_bytes(get::<8>(r)?);
        let mut c = Counters::default();
        for t in c.by_type.iter_mut() {
            *t = u64::from_le_bytes(get::<8>(r)?);
        }
        c.revenue_usd = f64::from_le_bytes(get::<8>(r)?);
        c.video_ms = u64::from_le_bytes(get::<8>(r)?);
        out.insert(k, c);
    }
    Ok(out)
}

fn write_series(w: &mut impl Write, s: &Series) -> std::io::Result<()> {
    write_buckets(w, &s.minutes)?;
    write_buckets(w, &s.hours)
}

fn read_series(r: &mut impl Read) -> std::io::Result<Series> {
    Ok(Series { minutes: read_buckets(r)?, hours: read_buckets(r)? })
}

fn write_map(w: &mut impl Write, m: &HashMap<Box<[u8]>, Series>) -> std::io::Result<()> {
    w.write_all(&(m.len() as u32).to_le_bytes())?;
    for (name, s) in m {
        w.write_all(&(name.len() as u32).to_le_bytes())?;
        w.write_all(name)?;
        write_series(w, s)?;
    }
    Ok(())
}

fn read_map(r: &mut impl Read) -> std::io::Result<HashMap<Box<[u8]>, Series>> {
    let n = u32::from_le_bytes(get::<4>(r)?) as usize;
    let mut out = HashMap::default();
    out.reserve(n.min(1 << 20));
    for _ in 0..n {
        let len = u32::from_le_bytes(get::<4>(r)?) as usize;
        if len > MAX_NAME {
            return Err(bad(format!("scope name of {len} bytes")));
        }
        let mut name = vec![0u8; len];
        r.read_exact(&mut name)?;
        out.insert(name.into_boxed_slice(), read_series(r)?);
    }
    Ok(out)
}

impl Analytics {
    /// Writes every bucket to `w`.
    pub fn write_snapshot(&self, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(&self.recorded.to_le_bytes())?;
        write_series(w, &self.all)?;
        write_map(w, &self.ads)?;
        write_map(w, &self.campaigns)
    }

    /// Analytics with `retention` holding the buckets of a snapshot read from `r`
    /// (buckets that fell out of the retention since are pruned at `now_ms`).
    pub fn read_snapshot(retention: Retention, r: &mut impl Read, now_ms: i64) -> std::io::Result<Self> {
        let recorded = u64::from_le_bytes(get::<8>(r)?);
        let all = read_series(r)?;
        let ads = read_map(r)?;
        let campaigns = read_map(r)?;
        let mut a = Self { retention, all, ads, campaigns, recorded };
        a.prune(now_ms);
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Retention, Scope};
    use super::*;
    use crate::StoredEvent;
    use crate::pb::{AdEvent, EventType};

    fn event(ad: &str, campaign: &str, t: EventType, ts: i64, revenue: Option<f64>) -> StoredEvent {
        let e = AdEvent {
            event_id: format!("{ad}-{ts}-{}", t as i32),
            ad_id: ad.into(),
            campaign_id: campaign.into(),
            r#type: t as i32,
            timestamp_ms: ts,
            revenue_usd: revenue,
            ..Default::default()
        };
        StoredEvent::encode(ts, &e)
    }

    #[test]
    fn a_snapshot_answers_every_query_as_the_original_did() {
        let now = 1_800_000_000_000;
        let mut a = Analytics::new(Retention::default());
        let mut events = Vec::new();
        for i in 0..2_000i64 {
            let ts = now - i * 37_000;
            events.push(event(
                &format!("ad-{}", i % 13),
                &format!("c-{}", i % 3),
                EventType::Impression,
                ts,
                None,
            ));
            if i % 5 == 0 {
                events.push(event(&format!("ad-{}", i % 13), "c-0", EventType::Conversion, ts, Some(1.25)));
            }
        }
        a.record(&events, now);
        let mut buf = Vec::new();
        a.write_snapshot(&mut buf).unwrap();
        let b = Analytics::read_snapshot(Retention::default(), &mut buf.as_slice(), now).unwrap();
        for (from, to) in [(0, now + 1), (now - 3_600_000, now), (now - 90_000, now - 30_000)] {
            assert_eq!(a.sum(Scope::All, from, to, now), b.sum(Scope::All, from, to, now));
            assert_eq!(a.sum(Scope::Ad("ad-4"), from, to, now), b.sum(Scope::Ad("ad-4"), from, to, now));
            assert_eq!(
                a.sum(Scope::Campaign("c-0"), from, to, now),
                b.sum(Scope::Campaign("c-0"), from, to, now)
            );
            assert_eq!(a.ads_in(from, to, now).len(), b.ads_in(from, to, now).len());
        }
        assert!(Analytics::read_snapshot(Retention::default(), &mut &buf[..buf.len() - 1], now).is_err());
    }
}
