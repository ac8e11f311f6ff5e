//! Ad scenarios: `submit` (SubmitAd or SubmitAds throughput and latency) and `e2e`
//! (ads submitted, leased by remote streaming workers run here, analysed with the real
//! analyser and acked; submit-to-lease and submit-to-done latency from the ad's
//! creation time, which the gateway stamps on the same machine's clock).

use crate::report::Tally;
use crate::scenario::Plan;
use adflow_client::AuthChannel as Channel;
use adflow_proto::v1::ad_service_client::AdServiceClient;
use adflow_proto::v1::{self as pb, gateway_message, worker_message};
use adflow_worker::analysis::{AnalysisConfig, Analyzer};
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

const FAMILIES: [&str; 5] = ["RPG-Fantasy", "Puzzle", "Shooter", "Strategy", "Casual"];
const TITLES: [&str; 6] = [
    "Slay dragons in Eldoria",
    "Match gems and relax",
    "Squad up for the arena",
    "Build an empire that lasts",
    "Pop bubbles with friends",
    "Race the neon streets",
];

/// A realistic ad spec; `i` varies the content, priority follows a 10/20/40/20/10 mix.
pub fn spec(i: u64) -> pb::AdSpec {
    let priority = match i % 10 {
        0 => 1,
        1 | 2 => 2,
        3..=6 => 3,
        7 | 8 => 4,
        _ => 5,
    };
    pb::AdSpec {
        title: format!("{} #{i}", TITLES[(i % 6) as usize]),
        description: format!(
            "Season {} is here. Team up, collect rare rewards and climb the ladder. New map {}.",
            i % 12,
            i % 97
        ),
        game_family: FAMILIES[(i % 5) as usize].into(),
        genre: ["rpg", "puzzle", "shooter", "strategy", "casual"][(i % 5) as usize].into(),
        target_audience: vec!["core".into(), "casual".into()],
        visual_elements: vec!["gameplay-footage".into(), "characters".into()],
        call_to_action: "Play free now".into(),
        duration_seconds: 15,
        priority,
        max_wait_seconds: 0,
    }
}

/// One submitting task.
pub async fn submit_loop(mut client: AdServiceClient<Channel>, plan: Arc<Plan>, seed: u64) -> Tally {
    let mut t = Tally::default();
    let mut i = seed;
    loop {
        let n = plan.claim(plan.batch).await;
        if n == 0 {
            break;
        }
        let start = Instant::now();
        let res = if n == 1 {
            i += 1;
            client.submit_ad(pb::SubmitAdRequest { ad: Some(spec(i)) }).await.map(|_| 1)
        } else {
            let ads = (0..n).map(|_| {
                i += 1;
                spec(i)
            });
            client
                .submit_ads(pb::SubmitAdsRequest { ads: ads.collect() })
                .await
                .map(|r| r.into_inner().accepted as u64)
        };
        let end = Instant::now();
        plan.progress.fetch_add(n as u64, Ordering::Relaxed);
        if !plan.measured(start, end) {
            continue;
        }
        match res {
            Ok(accepted) => {
                t.latency_us.record((end - start).as_micros().max(1) as u64).ok();
                t.events += n as u64;
                t.accepted += accepted;
                t.rejected += n as u64 - accepted;
                t.code(tonic::Code::Ok);
            }
            Err(s) => t.code(s.code()),
        }
    }
    t
}

/// What the e2e workers measured.
pub struct WorkerTally {
    /// Ads acked inside the measured window.
    pub done: u64,
    /// Submit (creation) to lease receipt, us.
    pub to_lease: Histogram<u64>,
    /// Submit (creation) to ack sent, us.
    pub to_done: Histogram<u64>,
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// One remote streaming worker: leases, analyses, acks, re-grants credits.
pub async fn worker_loop(
    client: adflow_client::Client,
    id: String,
    credits: u32,
    plan: Arc<Plan>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<WorkerTally> {
    let mut tally = WorkerTally {
        done: 0,
        to_lease: Histogram::new_with_bounds(1, 120_000_000, 3)?,
        to_done: Histogram::new_with_bounds(1, 120_000_000, 3)?,
    };
    let mut analyzer = Analyzer::new(AnalysisConfig::default());
    let (tx, rx) = mpsc::channel(256);
    let msg = |k| pb::WorkerMessage { kind: Some(k) };
    tx.send(msg(worker_message::Kind::Hello(pb::Hello {
        worker_id: id.clone(),
        partitions: vec![],
        credits,
    })))
    .await?;
    let mut inbound = client.workers().subscribe(ReceiverStream::new(rx)).await?.into_inner();
    loop {
        let m = tokio::select! {
            _ = stop.changed() => break,
            m = inbound.message() => m?,
        };
        let Some(pb::GatewayMessage { kind: Some(gateway_message::Kind::Leases(b)) }) = m else {
            if m.is_none() {
                break;
            }
            continue;
        };
        let received = now_us();
        let n = b.leases.len();
        let mut acks = Vec::with_capacity(n);
        for l in b.leases {
            let ad = l.ad.unwrap_or_default();
            let created_us = ad.created_at_ms * 1000;
            let result = analyzer.analyze(&ad, l.performance.as_ref(), &id, received / 1000);
            acks.push(pb::Ack { lease_id: l.lease_id, result: Some(result) });
            let done = now_us();
            if Instant::now() >= plan.measure_from && Instant::now() <= plan.until {
                tally.done += 1;
                tally.to_lease.record((received - created_us).max(1) as u64).ok();
                tally.to_done.record((done - created_us).max(1) as u64).ok();
            }
        }
        plan.progress.fetch_add(n as u64, Ordering::Relaxed);
        tx.send(msg(worker_message::Kind::Acks(pb::AckBatch { acks }))).await?;
        tx.send(msg(worker_message::Kind::Credits(pb::CreditGrant { credits: n as u32 }))).await?;
    }
    Ok(tally)
}
