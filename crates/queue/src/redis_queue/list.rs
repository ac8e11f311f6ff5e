//! ListAds over several shards: newest first by ad id (UUIDv7, time-ordered), the page
//! token being the last id of the page. Each shard's `P:all` index is ordered by its own
//! sequence, which follows the ids except for ads that gateways submitted within the same
//! milliseconds; so each shard is entered a little above the token (found by a binary
//! search over ranks) and read until it gave a page and a margin of matches, and every
//! shard's matches are merged by id.

use super::fields::AdFields;
use super::{RedisQueue, redis_error};
use crate::QueueError;
use crate::model;
use adflow_proto::v1::{self as pb, AdStatus};

/// Ads read per round trip.
const CHUNK: isize = 500;
/// Ads a page may scan per shard before it ends with a token to go on.
const SCAN_CAP: usize = 20_000;
/// Extra matches read per shard, and ranks entered above the token, for ids that are
/// out of sequence order.
const MARGIN: usize = 64;

impl RedisQueue {
    /// How many of shard `shard`'s listing entries, newest first, come before the first
    /// id older than `token` (a binary search over ranks).
    async fn ranks_before(&self, shard: usize, token: &str) -> Result<usize, QueueError> {
        let mut con = self.inner.con.clone();
        let all = self.inner.key_on(shard, "all");
        let n: usize = redis::cmd("ZCARD").arg(&all).query_async(&mut con).await.map_err(redis_error)?;
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let at: Vec<String> = redis::cmd("ZREVRANGE")
                .arg(&all)
                .arg(mid)
                .arg(mid)
                .query_async(&mut con)
                .await
                .map_err(redis_error)?;
            match at.first() {
                Some(id) if id.as_str() >= token => lo = mid + 1,
                _ => hi = mid,
            }
        }
        Ok(lo)
    }

    /// Ads matching `req` on every shard, newest first by id.
    pub(super) async fn list_sharded(
        &self,
        req: &pb::ListAdsRequest,
        now: i64,
    ) -> Result<pb::ListAdsResponse, QueueError> {
        let size = model::page_size(req.page_size)?;
        let token = req.page_token.as_str();
        if !token.is_empty() {
            crate::parse_id(token)?;
        }
        let family = req.game_family.to_lowercase();
        let mut found: Vec<pb::Ad> = Vec::new();
        let mut capped = false;
        for shard in 0..self.inner.k() {
            let mut con = self.inner.con.clone();
            let all = self.inner.key_on(shard, "all");
            let mut start = if token.is_empty() {
                0
            } else {
                self.ranks_before(shard, token).await?.saturating_sub(MARGIN)
            };
            let (mut matched, mut scanned) = (0usize, 0usize);
            loop {
                let chunk: Vec<String> = redis::cmd("ZREVRANGE")
                    .arg(&all)
                    .arg(start as isize)
                    .arg(start as isize + CHUNK - 1)
                    .query_async(&mut con)
                    .await
                    .map_err(redis_error)?;
                if chunk.is_empty() {
                    break;
                }
                start += chunk.len();
                let rows: Vec<AdFields> =
                    self.inner.call_on(shard, &self.inner.scripts.fetch).arg(&chunk).run().await?;
                let mut gone = Vec::new();
                for (id, f) in chunk.iter().zip(rows) {
                    scanned += 1;
                    if !token.is_empty() && id.as_str() >= token {
                        continue;
                    }
                    let Some(ad) = f.into_ad(id) else {
                        gone.push(id.clone());
                        continue;
                    };
                    let fam_ok = family.is_empty()
                        || ad.spec.as_ref().is_some_and(|s| s.game_family.to_lowercase() == family);
                    if (req.status == 0 || ad.status == req.status)
                        && (req.priority == 0 || ad.priority == req.priority)
                        && fam_ok
                    {
                        found.push(ad);
                        matched += 1;
                    }
                }
                if !gone.is_empty() {
                    // Finished ads past their retention: drop them from the listing index.
                    let _: Result<(), _> =
                        redis::cmd("ZREM").arg(&all).arg(&gone).query_async(&mut con).await;
                    start -= gone.len();
                }
                if matched >= size + MARGIN || (chunk.len() as isize) < CHUNK {
                    break;
                }
                if scanned >= SCAN_CAP {
                    capped = true;
                    break;
                }
            }
        }
        found.sort_by(|a, b| b.id.cmp(&a.id));
        let more = found.len() >= size || capped;
        found.truncate(size);
        let next_page_token = match (more, found.last()) {
            (true, Some(a)) => a.id.clone(),
            _ => String::new(),
        };
        let mut ads = Vec::with_capacity(found.len());
        for ad in found {
            let ad = if ad.status == AdStatus::Queued as i32 {
                // With its queue position (one read each; pages are small).
                match self.inner.get(&ad.id, now).await {
                    Ok(fresh) => fresh,
                    Err(_) => self.inner.snapshot(ad, -1, now).await,
                }
            } else {
                self.inner.snapshot(ad, -1, now).await
            };
            ads.push(ad);
        }
        Ok(pb::ListAdsResponse { ads, next_page_token })
    }
}
