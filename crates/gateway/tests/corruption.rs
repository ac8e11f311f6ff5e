//! A flipped bit on disk costs only the damaged record, through the real gateway: it
//! starts and serves. With its checkpoint it reads nothing back at start and the
//! background scrub finds and reports the damage; without one it rebuilds its dedup
//! window and analytics from every other record. One test per binary: it reads the
//! process-global metrics recorder.

mod common;

use adflow_domain::pb::EventType;
use common::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Header bytes of a record (format 2: magic, length, payload CRC, header CRC).
const HEADER: usize = 16;

/// Segment files of `dir`, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    out.sort();
    out
}

/// Start offsets of the records of a (valid) segment file.
fn record_starts(path: &Path) -> Vec<usize> {
    let b = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        out.push(at);
        at += HEADER + u32::from_le_bytes(b[at + 4..at + 8].try_into().unwrap()) as usize;
    }
    assert_eq!(at, b.len(), "{} ends inside a record", path.display());
    out
}

fn flip(path: &Path, at: usize, mask: u8) {
    let mut b = std::fs::read(path).unwrap();
    b[at] ^= mask;
    std::fs::write(path, b).unwrap();
}

async fn scrape(addr: &str) -> HashMap<String, f64> {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let resp = client.get(format!("http://{addr}/metrics").parse().unwrap()).await.expect("scrape");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec())
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse().unwrap())
        })
        .collect()
}

async fn send_all(c: &mut Ingest, ids: &[String]) -> (u32, u32) {
    let (mut accepted, mut duplicates) = (0, 0);
    for chunk in ids.chunks(50) {
        let events = chunk.iter().map(|id| event(id, "ad-c", EventType::Impression)).collect();
        let r = c.send_events(batch(events)).await.unwrap().into_inner();
        assert_eq!(r.rejected, 0);
        accepted += r.accepted;
        duplicates += r.duplicates;
    }
    (accepted, duplicates)
}

async fn total(gw: &TestGateway) -> u64 {
    common::day_total(gw, "ad-c").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bits_in_a_sealed_and_the_newest_segment_cost_only_their_records() {
    const N: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.storage.file.segment_bytes = 8 << 10;
    let ids: Vec<String> = (0..N).map(|i| format!("corrupt-{i:04}")).collect();

    let gw = TestGateway::start(cfg.clone()).await;
    assert_eq!(send_all(&mut gw.ingest().await, &ids).await, (N as u32, 0));
    let events_dir = gw.events_dir();
    gw.stop().await;

    // Records in commit order across segments, and the events they hold.
    let stored_ids: Vec<_> =
        stored(&events_dir).await.into_iter().map(|e| e.event().unwrap().event_id).collect();
    assert_eq!(stored_ids, ids);
    let segs = segments(&events_dir);
    assert!(segs.len() >= 4, "{} segments", segs.len());
    let mut index = 0;
    let mut records = Vec::new(); // (segment file, offset, event index)
    for s in &segs {
        for at in record_starts(s) {
            records.push((s.clone(), at, index));
            index += 1;
        }
    }
    assert_eq!(index, N);
    let in_seg = |s: &PathBuf| records.iter().filter(|r| &r.0 == s).cloned().collect::<Vec<_>>();
    // A payload bit in the middle of sealed segment 2, a length bit in the middle of the newest.
    let sealed = in_seg(&segs[1]);
    let (sealed_path, sealed_at, sealed_idx) = sealed[sealed.len() / 2].clone();
    flip(&sealed_path, sealed_at + HEADER + 30, 0x08);
    let newest = in_seg(segs.last().unwrap());
    assert!(newest.len() >= 3);
    let (newest_path, newest_at, newest_idx) = newest[newest.len() / 2].clone();
    let newest_len = std::fs::metadata(&newest_path).unwrap().len();
    flip(&newest_path, newest_at + 5, 0x01);
    let damaged = [ids[sealed_idx].clone(), ids[newest_idx].clone()];

    // With the checkpoint of the clean stop: it starts and serves at once, recovery cuts
    // nothing valid, and the background scrub finds and reports both damaged records.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_addr = probe.local_addr().unwrap().to_string();
    drop(probe);
    cfg.metrics.listen = metrics_addr.clone();
    let gw = TestGateway::start(cfg.clone()).await;
    let mut health = HealthClient::new(gw.channel().await);
    let status = health.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(status.status, ServingStatus::Serving as i32);
    assert_eq!(
        std::fs::metadata(&newest_path).unwrap().len(),
        newest_len,
        "recovery must not cut the valid records after the damage"
    );
    let t0 = std::time::Instant::now();
    loop {
        let m = scrape(&metrics_addr).await;
        if m.get("store_corrupt_records_total") == Some(&2.0) {
            assert_eq!(m.get("backend_up{backend=\"file\"}"), Some(&1.0));
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the scrub did not report the damage: {m:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The checkpoint's counts include the two (they were accepted and counted); their ids
    // are still known (see README, "The event log").
    assert_eq!(total(&gw).await, N as u64);
    gw.stop().await;

    // Without a checkpoint: the dedup window and analytics are rebuilt from every record
    // but the damaged two.
    std::fs::remove_file(events_dir.join("checkpoint.bin")).unwrap();
    let gw = TestGateway::start(cfg.clone()).await;
    assert_eq!(total(&gw).await, (N - 2) as u64);
    let undamaged: Vec<_> = ids.iter().filter(|id| !damaged.contains(id)).cloned().collect();
    let mut c = gw.ingest().await;
    assert_eq!(send_all(&mut c, &undamaged).await, (0, (N - 2) as u32));

    // The two lost events can be sent again; then every acked id is stored exactly once.
    assert_eq!(send_all(&mut c, &damaged).await, (2, 0));
    assert_eq!(total(&gw).await, N as u64);
    gw.stop().await;
    let mut after: Vec<_> =
        stored(&events_dir).await.into_iter().map(|e| e.event().unwrap().event_id).collect();
    after.sort();
    assert_eq!(after, ids);

    // Both damaged records are in quarantine, and the store's health names them.
    let q: Vec<_> = std::fs::read_dir(events_dir.join("quarantine")).unwrap().map(|e| e.unwrap()).collect();
    assert_eq!(q.len(), 2, "{q:?}");
    let s = adflow_store::file::FileStore::open(adflow_store::file::FileConfig {
        dir: events_dir.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    adflow_store::conformance::read_all(&s, 1000).await;
    let h = adflow_store::EventStore::health(&s).await;
    assert!(h.ok && h.detail.contains("2 damaged ranges"), "{h:?}");
}
