//! Crash suite for the embedded ad queue, driving the real `adflow-gateway` binary as a
//! child process (issue 11): ads submitted, analysed by a streaming worker (this test),
//! followed with GetAd and WatchAd, and the gateway killed with `kill -9` right after a
//! reply reported an ad COMPLETED; then restarted, in rounds.
//!
//! Promises checked:
//! - an ad reported finished stays finished and is analysed once: every ad GetAd or
//!   WatchAd reported COMPLETED before a kill is COMPLETED after the restart with the
//!   analysis it was acked with, and is never leased again;
//! - lease ids never repeat, across restarts too, and an ack naming a lease from before
//!   the crash is refused (FAILED_PRECONDITION) on the restarted gateway;
//! - attempts survive a crash: an ad whose lease the worker holds through every kill is
//!   leased with attempt 1, 2, 3 in rounds 1, 2, 3 and is a dead letter with 3 attempts
//!   after the third crash (`max_attempts = 3`); a redelivered ad never shows fewer
//!   attempts than the leases the worker saw.
//!
//! `ADFLOW_CRASH_KEEP=1` keeps the data directory and the gateway logs.

use adflow_domain::pb::{self, AdStatus, gateway_message, worker_message};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

type Ads = pb::ad_service_client::AdServiceClient<Channel>;

/// Kill-and-restart rounds; the held ad is dead-lettered after the last one.
const ROUNDS: u32 = 3;
/// Fresh ads submitted each round.
const ADS_PER_ROUND: usize = 400;
/// A round ends (kill -9) once GetAd has reported this many of its ads COMPLETED.
const REPORTS_PER_ROUND: usize = 25;
/// Ads followed with WatchAd each round.
const WATCHED_PER_ROUND: usize = 5;
const CREDITS: u32 = 16;
const HELD_TITLE: &str = "crashes the worker every time";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);

/// What the test knows.
#[derive(Default)]
struct Book {
    /// Ads GetAd or WatchAd reported COMPLETED, with the analysis reported.
    reported: HashMap<String, pb::AnalysisResult>,
    /// Reports in the current round (GetAd, WatchAd).
    round_reports: (usize, usize),
    /// Analyses sent in acks, by ad.
    acked: HashMap<String, pb::AnalysisResult>,
    /// Ads acked in the current round, newest last (GetAd samples them).
    round_acked: Vec<String>,
    /// Every lease id handed out.
    lease_ids: HashSet<u64>,
    /// Lease ids of the current round: the held ad's first, then the others in order.
    round_leases: Vec<u64>,
    /// Leases seen per ad.
    leases_seen: HashMap<String, u32>,
    /// The held ad's id and the attempt of each of its leases.
    held: Option<String>,
    held_attempts: Vec<u32>,
    /// Refusals received: (lease id, code).
    refusals: Vec<(u64, i32)>,
    /// Broken promises.
    violations: Vec<String>,
}

type Shared = Arc<Mutex<Book>>;

fn book(b: &Shared) -> std::sync::MutexGuard<'_, Book> {
    b.lock().unwrap_or_else(|e| e.into_inner())
}

/// The analysis of an ad in a round: a second analysis would differ from the first.
fn analysis(id: &str, round: u32) -> pb::AnalysisResult {
    let n: u32 = id.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    let verdict = if round % 2 == 1 { pb::Verdict::Approved } else { pb::Verdict::NeedsReview };
    pb::AnalysisResult {
        score: (n % 90) + round,
        verdict: verdict as i32,
        near_duplicate_of: format!("analysed in round {round}"),
        ..Default::default()
    }
}

fn spec(title: String, priority: u32) -> pb::AdSpec {
    pb::AdSpec { title, game_family: "Puzzle".into(), priority, ..Default::default() }
}

/// A gateway child process; killed with SIGKILL when dropped.
struct Gateway {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Gateway {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits until grpc.health.v1 says AdService is SERVING.
    async fn serving(&mut self) {
        let t0 = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("the gateway exited ({st}) before serving; log:\n{}", self.log_tail());
            }
            assert!(t0.elapsed() < START_TIMEOUT, "the gateway did not serve; log:\n{}", self.log_tail());
            if let Ok(ch) = connect(&self.url()).await {
                let req = HealthCheckRequest { service: "adflow.v1.AdService".into() };
                if let Ok(Ok(r)) =
                    tokio::time::timeout(Duration::from_secs(2), HealthClient::new(ch).check(req)).await
                    && r.into_inner().status() == ServingStatus::Serving
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
    }
}

async fn connect(url: &str) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(url.to_string()).unwrap().connect_timeout(Duration::from_secs(2)).connect().await
}

/// Writes the config and starts gateways on the data directory.
struct Harness {
    dir: PathBuf,
    config: PathBuf,
    starts: usize,
}

impl Harness {
    fn new(dir: &Path) -> Self {
        let config = dir.join("gateway.toml");
        let toml = format!(
            "[server]\nworker_threads = 2\nshutdown_grace_ms = 5000\n\
             [storage]\nbackend = \"file\"\n\
             [storage.file]\ndir = {:?}\n\
             [storage.resilience]\nspill_dir = {:?}\n\
             [queue]\nbackend = \"embedded\"\npath = {:?}\nmax_attempts = 3\nlease_seconds = 600\n\
             [workers]\nin_process = 0\n\
             [metrics]\nlisten = \"\"\n\
             [log]\nlevel = \"info\"\n",
            dir.join("events").to_str().unwrap(),
            dir.join("spill").to_str().unwrap(),
            dir.join("queue.redb").to_str().unwrap(),
        );
        File::create(&config).unwrap().write_all(toml.as_bytes()).unwrap();
        Self { dir: dir.to_path_buf(), config, starts: 0 }
    }

    fn spawn(&mut self) -> Gateway {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = self.dir.join(format!("gateway-{:02}.log", self.starts));
        self.starts += 1;
        let out = File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_adflow-gateway"));
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("ADFLOW_") && k.contains("__") {
                cmd.env_remove(k);
            }
        }
        cmd.env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .env("ADFLOW_SERVER__LISTEN", addr.to_string())
            .arg("--config")
            .arg(&self.config)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        Gateway { child: cmd.spawn().expect("starting adflow-gateway"), addr, log }
    }
}

/// One worker session: analyses every lease except the held ad's, acks in batches and
/// grants the credits back; records and checks every lease. First acks `stale` (lease
/// ids from before the crash), which must be refused.
async fn work(url: String, round: u32, stale: Vec<u64>, b: Shared) {
    let Ok(ch) = connect(&url).await else { return };
    let mut client = pb::worker_service_client::WorkerServiceClient::new(ch);
    let (tx, rx) = mpsc::channel(64);
    let msg = |k| pb::WorkerMessage { kind: Some(k) };
    let hello = pb::Hello { worker_id: format!("crash-round-{round}"), partitions: vec![], credits: CREDITS };
    let _ = tx.send(msg(worker_message::Kind::Hello(hello))).await;
    let Ok(resp) = client.subscribe(ReceiverStream::new(rx)).await else { return };
    let mut inbound = resp.into_inner();
    let mut stale = Some(stale);
    while let Ok(Some(m)) = inbound.message().await {
        match m.kind {
            Some(gateway_message::Kind::Leases(batch)) => {
                let mut acks = Vec::new();
                {
                    let mut bk = book(&b);
                    for l in batch.leases {
                        let ad = l.ad.unwrap_or_default();
                        if !bk.lease_ids.insert(l.lease_id) {
                            bk.violations.push(format!("lease id {} handed out twice", l.lease_id));
                        }
                        if bk.reported.contains_key(&ad.id) {
                            bk.violations.push(format!("ad {} reported completed was leased again", ad.id));
                        }
                        let seen = bk.leases_seen.entry(ad.id.clone()).or_default();
                        *seen += 1;
                        if l.attempt < *seen {
                            let v = format!(
                                "ad {} leased with attempt {} after {} leases",
                                ad.id, l.attempt, seen
                            );
                            bk.violations.push(v);
                        }
                        if ad.spec.as_ref().is_some_and(|s| s.title == HELD_TITLE) {
                            bk.held = Some(ad.id.clone());
                            bk.held_attempts.push(l.attempt);
                            bk.round_leases.insert(0, l.lease_id);
                            continue;
                        }
                        let result = analysis(&ad.id, round);
                        bk.acked.insert(ad.id.clone(), result.clone());
                        bk.round_acked.push(ad.id);
                        bk.round_leases.push(l.lease_id);
                        acks.push(pb::Ack { lease_id: l.lease_id, result: Some(result) });
                    }
                }
                // The stale acks go out once this session holds leases of its own (which
                // is when reused lease ids would have matched them).
                if let Some(s) = stale.take().filter(|s| !s.is_empty()) {
                    let old = s.into_iter().map(|lease_id| pb::Ack { lease_id, result: None }).collect();
                    let _ = tx.send(msg(worker_message::Kind::Acks(pb::AckBatch { acks: old }))).await;
                }
                let n = acks.len() as u32;
                if n > 0 {
                    let _ = tx.send(msg(worker_message::Kind::Acks(pb::AckBatch { acks }))).await;
                    let _ = tx.send(msg(worker_message::Kind::Credits(pb::CreditGrant { credits: n }))).await;
                }
            }
            Some(gateway_message::Kind::Refusals(r)) => {
                book(&b).refusals.extend(r.refusals.into_iter().map(|x| (x.lease_id, x.code)));
            }
            _ => {}
        }
    }
}

/// Samples the newest acked ads with GetAd and records those reported COMPLETED; wakes
/// `enough` once the round has its reports.
async fn poll_reports(url: String, b: Shared, enough: Arc<Notify>, stale: usize) {
    let Ok(ch) = connect(&url).await else { return };
    let mut ads = Ads::new(ch);
    loop {
        let sample: Vec<String> = {
            let bk = book(&b);
            bk.round_acked.iter().rev().take(8).filter(|id| !bk.reported.contains_key(*id)).cloned().collect()
        };
        for id in sample {
            let Ok(r) = ads.get_ad(pb::GetAdRequest { id: id.clone() }).await else { return };
            let ad = r.into_inner();
            if ad.status == AdStatus::Completed as i32 {
                let mut bk = book(&b);
                bk.reported.insert(id, ad.analysis.unwrap_or_default());
                bk.round_reports.0 += 1;
                let refused = bk.refusals.len() >= stale;
                if bk.round_reports.0 >= REPORTS_PER_ROUND && bk.round_reports.1 > 0 && refused {
                    enough.notify_one();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Follows one ad with WatchAd and records a COMPLETED report.
async fn watch(url: String, id: String, b: Shared) {
    let Ok(ch) = connect(&url).await else { return };
    let Ok(r) = Ads::new(ch).watch_ad(pb::WatchAdRequest { id: id.clone() }).await else { return };
    let mut s = r.into_inner();
    while let Ok(Some(ad)) = s.message().await {
        if ad.status == AdStatus::Completed as i32 {
            let mut bk = book(&b);
            bk.reported.insert(id, ad.analysis.unwrap_or_default());
            bk.round_reports.1 += 1;
            return;
        }
    }
}

/// After a restart: every reported ad is still COMPLETED with its analysis.
async fn check_reported(ads: &mut Ads, b: &Shared) {
    let reported: Vec<(String, pb::AnalysisResult)> =
        book(b).reported.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (id, want) in reported {
        let ad = ads.get_ad(pb::GetAdRequest { id: id.clone() }).await.expect("GetAd").into_inner();
        let mut bk = book(b);
        if ad.status != AdStatus::Completed as i32 {
            bk.violations
                .push(format!("ad {id} was reported completed, is {:?} after the crash", ad.status()));
        } else if ad.analysis.as_ref() != Some(&want) {
            bk.violations.push(format!("ad {id} has another analysis after the crash"));
        }
        if bk.acked.get(&id) != Some(&want) {
            bk.violations.push(format!("ad {id} was reported with an analysis it was not acked with"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_ads_lease_ids_and_attempts_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = Harness::new(tmp.path());
    let b: Shared = Arc::default();
    let mut stale = Vec::new();
    for round in 1..=ROUNDS {
        let mut gw = h.spawn();
        gw.serving().await;
        let mut ads = Ads::new(connect(&gw.url()).await.unwrap());
        check_reported(&mut ads, &b).await;
        if round == 1 {
            let r =
                ads.submit_ads(pb::SubmitAdsRequest { ads: vec![spec(HELD_TITLE.into(), 5)] }).await.unwrap();
            assert_eq!(r.into_inner().accepted, 1);
        } else {
            let held = book(&b).held.clone().expect("the held ad was leased");
            let ad = ads.get_ad(pb::GetAdRequest { id: held }).await.unwrap().into_inner();
            assert_eq!(
                (ad.status(), ad.attempts),
                (AdStatus::Queued, round - 1),
                "the held ad is back with the attempts taken before the crash"
            );
        }
        let specs =
            (0..ADS_PER_ROUND).map(|i| spec(format!("round {round} ad {i}"), 1 + (i % 4) as u32)).collect();
        let r = ads.submit_ads(pb::SubmitAdsRequest { ads: specs }).await.unwrap().into_inner();
        let fresh: Vec<String> = r.results.into_iter().filter_map(|x| x.accepted.map(|a| a.id)).collect();
        assert_eq!(fresh.len(), ADS_PER_ROUND);
        {
            let mut bk = book(&b);
            bk.round_reports = (0, 0);
            bk.round_acked.clear();
            bk.refusals.clear();
        }
        let mut tasks = tokio::task::JoinSet::new();
        // Watch the newest ads (served last in their partitions): still queued now.
        for id in fresh.iter().rev().take(WATCHED_PER_ROUND) {
            tasks.spawn(watch(gw.url(), id.clone(), b.clone()));
        }
        let enough = Arc::new(Notify::new());
        tasks.spawn(work(gw.url(), round, stale.clone(), b.clone()));
        tasks.spawn(poll_reports(gw.url(), b.clone(), enough.clone(), stale.len()));
        let reached = tokio::time::timeout(ROUND_TIMEOUT, enough.notified()).await;
        // kill -9 right after a reply reported an ad COMPLETED.
        gw.kill9();
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        let bk = book(&b);
        assert!(
            reached.is_ok(),
            "round {round} did not get its reports (GetAd, WatchAd: {:?}; refusals of old leases {:?} of {:?}; violations {:#?}); log:\n{}",
            bk.round_reports,
            bk.refusals,
            stale,
            bk.violations,
            gw.log_tail()
        );
        for id in &stale {
            assert!(
                bk.refusals
                    .iter()
                    .any(|&(l, code)| l == *id && code == tonic::Code::FailedPrecondition as i32),
                "an ack of lease {id} from before the crash is refused as stale: {:?}",
                bk.refusals
            );
        }
        assert!(bk.violations.is_empty(), "round {round}: {:#?}", bk.violations);
        // Next round, the held lease and some acked ones are named again.
        stale = bk.round_leases.iter().copied().take(10).collect();
        drop(bk);
        book(&b).round_leases.clear();
    }
    // The last restart: reports hold, and the held ad, leased in every round and lost in
    // every crash, is a dead letter with its attempts counted.
    let mut gw = h.spawn();
    gw.serving().await;
    let mut ads = Ads::new(connect(&gw.url()).await.unwrap());
    check_reported(&mut ads, &b).await;
    let (held, attempts) = {
        let bk = book(&b);
        (bk.held.clone().unwrap(), bk.held_attempts.clone())
    };
    assert_eq!(attempts, (1..=ROUNDS).collect::<Vec<_>>(), "the held ad's leases count every crash");
    let ad = ads.get_ad(pb::GetAdRequest { id: held }).await.unwrap().into_inner();
    assert_eq!(
        (ad.status(), ad.attempts),
        (AdStatus::DeadLetter, ROUNDS),
        "dead-lettered after max_attempts"
    );
    let bk = book(&b);
    assert!(bk.violations.is_empty(), "{:#?}", bk.violations);
    eprintln!(
        "{} rounds: {} ads reported completed and kept, {} lease ids, none reused",
        ROUNDS,
        bk.reported.len(),
        bk.lease_ids.len()
    );
    drop(bk);
    gw.kill9();
    if std::env::var_os("ADFLOW_CRASH_KEEP").is_some() {
        eprintln!("kept {}", tmp.keep().display());
    }
}
