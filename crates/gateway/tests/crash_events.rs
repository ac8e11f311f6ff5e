//! Crash suite for event ingestion, driving the real `adflow-gateway` binary as a child
//! process (issue 11): durable load from several clients, `kill -9` at random moments in
//! a loop, restart, and in the end the segments read back with the store's own reader.
//!
//! Promises checked:
//! - acked = stored: every id whose batch got an OK reply (accepted or duplicate) is in the
//!   segments exactly once, through every crash and recovery;
//! - retry = harmless: no id is stored twice, whether its batch was acked, lost in the
//!   crash ("unknown": resent after the restart, as a client retries) or sent twice at
//!   the same time on two connections (a retry racing its own commit);
//! - duplicate = stored: a fresh id is never answered "duplicate", and after a restart
//!   every acked id resent answers duplicate (0 accepted) and stores nothing.
//!
//! The run is bounded (`MAX_ROUNDS` rounds or `TIME_BUDGET`, whichever comes first) and
//! random; the seed is printed and `ADFLOW_CRASH_SEED=<seed>` replays the same choices
//! (timing still differs between runs); `ADFLOW_CRASH_KEEP=1` keeps the data directory
//! and the gateway logs.
//!
//! Knobs for longer hunts outside CI (environment; none is set in CI):
//! - `ADFLOW_CRASH_ROUNDS`, `ADFLOW_CRASH_SECS` (round budget), `ADFLOW_CRASH_LOAD_MS_MIN`
//!   and `ADFLOW_CRASH_LOAD_MS` (load before each kill), `ADFLOW_CRASH_CLIENTS` (fresh
//!   batch clients), `ADFLOW_CRASH_RESENDERS` (acked-id resenders per resending round);
//! - `ADFLOW_CRASH_SEGMENT_BYTES` (>= 4096: small segments put most kills next to a
//!   rotation); `ADFLOW_CRASH_EXTRA_TOML` (appended to the gateway's config, `\n` for
//!   newlines);
//! - `ADFLOW_CRASH_EAGER=1`: load starts as soon as the port accepts TCP, so kills and
//!   SIGTERMs land during start-up; `ADFLOW_CRASH_TERM_THEN_KILL_MS=<ms>`: every stop is
//!   a SIGTERM followed by kill -9 within that many ms (mid-drain);
//! - `ADFLOW_CRASH_DISKFULL=1` (root): the events directory is a 64 MiB tmpfs that a
//!   filler file fills again and again during the load;
//! - `ADFLOW_CRASH_LIVE_READER=1`: the store is opened with the project's reader in a
//!   loop while the gateway writes; `ADFLOW_CRASH_INTRUDER_MS=<ms>`: a second gateway is
//!   started on the same data directory every <ms> (each is killed after 60 ms).

use adflow_domain::pb::{self, AckMode, AdEvent, EventType};
use adflow_store::EventStore;
use adflow_store::file::{FileConfig, FileStore};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

type Ingest = pb::event_ingest_client::EventIngestClient<Channel>;

/// Segments rotate at this size, so a run crosses many rotations (~2,000 events each).
const SEGMENT_BYTES: u64 = 256 << 10;
fn segment_bytes() -> u64 {
    knob("ADFLOW_CRASH_SEGMENT_BYTES", SEGMENT_BYTES)
}

/// Clients sending fresh batches, each on its own connection.
const CLIENTS: u64 = 3;
const MAX_ROUNDS: usize = 6;
/// Rounds stop being started after this; the final checks come on top.
const TIME_BUDGET: Duration = Duration::from_secs(45);
const MAX_BATCH: u64 = 200;
/// Batches a StreamEvents client keeps awaiting their reply.
const STREAM_WINDOW: usize = 8;
/// `name` from the environment, or `default`.
fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Longest wait for one RPC before it counts as failed.
const RPC_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for a (re)started gateway to serve.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// splitmix64: small, seedable, good enough to pick sizes and moments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// What the clients know about their ids.
#[derive(Default)]
struct Book {
    /// Ids of every batch that got an OK reply.
    acked: HashSet<String>,
    /// The same ids, in ack order (for random samples).
    acked_list: Vec<String>,
    /// Batches whose RPC failed: maybe stored, maybe not; resent after the next restart.
    pending: Vec<Vec<String>>,
    /// Every id that was ever in `pending`.
    unknown_ever: HashSet<String>,
    /// Ids of unknown batches that a retry found already stored (answered duplicate).
    unknown_found_stored: u64,
    /// Ids of unknown batches that a retry stored (answered accepted).
    unknown_stored_by_retry: u64,
    /// Acked ids resent while the gateway ran (each must answer duplicate).
    acked_resent: u64,
    /// Batches sent twice at once on two connections, both answered.
    twins_both_ok: u64,
    /// Batches refused UNAVAILABLE while the disk was full.
    refused_full: u64,
    /// Failed RPCs before the kill (not expected on a healthy gateway).
    early_errors: Vec<String>,
    /// Broken promises seen in replies.
    violations: Vec<String>,
}

impl Book {
    fn ack(&mut self, ids: &[String]) {
        for id in ids {
            if self.acked.insert(id.clone()) {
                self.acked_list.push(id.clone());
            }
        }
    }

    fn unknown(&mut self, ids: Vec<String>, err: String, killed: bool) {
        if !killed && diskfull() && err.contains("Unavailable") {
            self.refused_full += 1;
        } else if !killed {
            self.early_errors.push(format!("batch of {} ({}..): {err}", ids.len(), ids[0]));
        }
        self.unknown_ever.extend(ids.iter().cloned());
        self.pending.push(ids);
    }
}

type Shared = Arc<Mutex<Book>>;

fn book(b: &Shared) -> std::sync::MutexGuard<'_, Book> {
    b.lock().unwrap_or_else(|e| e.into_inner())
}

/// The event an id stands for; the same id always gives the same event.
fn event(id: &str, ts: i64) -> AdEvent {
    let n: u64 = id.bytes().fold(0, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    AdEvent {
        event_id: id.into(),
        r#type: [EventType::Impression, EventType::Click, EventType::Install][(n % 3) as usize] as i32,
        ad_id: format!("ad-{}", n % 50),
        campaign_id: format!("cmp-{}", n % 5),
        game_id: "g-1".into(),
        game_family: "RPG-Fantasy".into(),
        user_id: format!("u-{}", n % 1000),
        timestamp_ms: ts,
        country: "US".into(),
        device: "phone".into(),
        platform: pb::Platform::Android as i32,
        ..Default::default()
    }
}

async fn send(c: &mut Ingest, ids: &[String], ts: i64) -> Result<pb::IngestReply, String> {
    let req = pb::SendEventsRequest {
        events: ids.iter().map(|i| event(i, ts)).collect(),
        ack_mode: AckMode::Durable as i32,
        sequence: 0,
    };
    match tokio::time::timeout(RPC_TIMEOUT, c.send_events(req)).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => Err(format!("no reply within {RPC_TIMEOUT:?}")),
    }
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

    /// `kill -9`, then reap it.
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit (SIGKILL after 30 s).
    async fn terminate(&mut self) -> Option<ExitStatus> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill9();
        None
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits only until the port accepts TCP (bound before recovery).
    async fn bound(&mut self) -> Duration {
        let t0 = Instant::now();
        while tokio::net::TcpStream::connect(self.addr).await.is_err() {
            assert!(t0.elapsed() < START_TIMEOUT, "the gateway did not bind; log:\n{}", self.log_tail());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        t0.elapsed()
    }

    /// Waits until grpc.health.v1 says EventIngest is SERVING; panics if the process
    /// exits first or it takes longer than `START_TIMEOUT`. `None` when it exited because
    /// another process took its port first (the port is picked free, then released for
    /// the child to bind).
    async fn serving(&mut self) -> Option<Duration> {
        let t0 = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                if std::fs::read_to_string(&self.log).unwrap_or_default().contains("(server.listen)") {
                    return None;
                }
                panic!(
                    "the gateway exited ({st}) before serving; log {}:\n{}",
                    self.log.display(),
                    self.log_tail()
                );
            }
            assert!(
                t0.elapsed() < START_TIMEOUT,
                "the gateway did not serve within {START_TIMEOUT:?}; log:\n{}",
                self.log_tail()
            );
            if let Ok(ch) = connect(&self.url()).await {
                let req = HealthCheckRequest { service: "adflow.v1.EventIngest".into() };
                if let Ok(Ok(r)) =
                    tokio::time::timeout(Duration::from_secs(2), HealthClient::new(ch).check(req)).await
                    && r.into_inner().status() == ServingStatus::Serving
                {
                    return Some(t0.elapsed());
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

/// The data directory and how to start a gateway on it.
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
             [ingest]\nack_mode = \"durable\"\n\
             [storage]\nbackend = \"file\"\n\
             [storage.file]\ndir = {:?}\nsegment_bytes = {}\nfsync = true\nmin_free_mb = 0\n\
             [checkpoint]\ninterval_secs = 1\nmax_replay_events = 2000\n\
             [storage.resilience]\nspill_dir = {:?}\n\
             [queue]\nbackend = \"embedded\"\npath = {:?}\n\
             [workers]\nin_process = 0\n\
             [metrics]\nlisten = \"\"\n\
             [dashboard]\nlisten = \"\"\n\
             [log]\nlevel = \"info\"\n{}",
            dir.join("events").to_str().unwrap(),
            segment_bytes(),
            dir.join("spill").to_str().unwrap(),
            dir.join("queue.redb").to_str().unwrap(),
            std::env::var("ADFLOW_CRASH_EXTRA_TOML").unwrap_or_default().replace("\\n", "\n"),
        );
        File::create(&config).unwrap().write_all(toml.as_bytes()).unwrap();
        Self { dir: dir.to_path_buf(), config, starts: 0 }
    }

    fn events_dir(&self) -> PathBuf {
        self.dir.join("events")
    }

    /// Starts the binary on a free port (not yet serving: see `Gateway::serving`).
    fn spawn(&mut self) -> Gateway {
        let log = self.dir.join(format!("gateway-{:02}.log", self.starts));
        self.starts += 1;
        spawn_gateway(&self.dir, &self.config, log)
    }

    /// Starts a gateway and waits until it serves; returns it and how long that took.
    async fn start(&mut self) -> (Gateway, Duration) {
        for _ in 0..5 {
            let mut gw = self.spawn();
            if let Some(up) = gw.serving().await {
                return (gw, up);
            }
        }
        panic!("no free port could be bound in 5 attempts");
    }

    /// WARN and ERROR lines of every gateway run so far.
    fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in 0..self.starts {
            let text =
                std::fs::read_to_string(self.dir.join(format!("gateway-{n:02}.log"))).unwrap_or_default();
            out.extend(
                text.lines()
                    .filter(|l| {
                        (l.contains("WARN") || l.contains("ERROR")) && !l.contains("ACCESS CONTROL IS OFF")
                    })
                    .map(|l| format!("run {n}: {l}")),
            );
        }
        out
    }
}

/// `ADFLOW_CRASH_DISKFULL=1` (root only): the events directory is a small tmpfs that a
/// filler file fills now and then during the load.
fn diskfull() -> bool {
    knob("ADFLOW_CRASH_DISKFULL", 0) > 0
}

/// A tmpfs mounted at a path, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the disk for a random moment, again and again, until the kill.
async fn filler(dir: PathBuf, mut rng: Rng, killed: Arc<AtomicBool>) -> usize {
    let mut n = 0;
    while !killed.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(rng.range(50, 300))).await;
        let path = dir.join("filler");
        {
            let mut f = File::create(&path).unwrap();
            let chunk = vec![7u8; 64 << 10];
            while f.write_all(&chunk).is_ok() {}
            let chunk = vec![7u8; 512];
            while f.write_all(&chunk).is_ok() {}
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(rng.range(20, 400))).await;
        let _ = std::fs::remove_file(&path);
    }
    n
}

/// Starts the binary on a free port with `config`, in `dir`, logging to `log`.
fn spawn_gateway(dir: &Path, config: &Path, log: PathBuf) -> Gateway {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let out = File::create(&log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_adflow-gateway"));
    // Configuration from this test only: no ADFLOW_SECTION__KEY from the environment.
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
        .arg(config)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    let child = cmd.spawn().expect("starting adflow-gateway");
    Gateway { child, addr, log }
}

/// A second gateway started on the same data directory every `every_ms` while the first
/// one serves (an operator's mistake); each is killed 60 ms later (its store recovery
/// has run by then; it cannot serve while the first one holds the queue's lock).
async fn intruders(
    dir: PathBuf,
    config: PathBuf,
    every_ms: u64,
    round: usize,
    killed: Arc<AtomicBool>,
) -> usize {
    let mut n = 0;
    while !killed.load(Ordering::SeqCst) {
        let gw = spawn_gateway(&dir, &config, dir.join(format!("intruder-{round:02}-{n:03}.log")));
        n += 1;
        tokio::time::sleep(Duration::from_millis(60)).await;
        drop(gw);
        tokio::time::sleep(Duration::from_millis(every_ms)).await;
    }
    n
}

/// The store opened (and closed) with the project's reader in a loop while
/// the gateway writes, as an inspection or backup tool would; returns how many opens.
async fn live_reader(dir: PathBuf, killed: Arc<AtomicBool>) -> usize {
    let mut n = 0;
    while !killed.load(Ordering::SeqCst) {
        let s = FileStore::open(FileConfig {
            dir: dir.clone(),
            segment_bytes: segment_bytes(),
            min_free_mb: 0,
            ..FileConfig::default()
        })
        .await
        .expect("opening the live store");
        let d = s.damage();
        if !d.is_empty() {
            eprintln!("crash_events: live open {n}: {d:?}");
        }
        drop(s);
        n += 1;
    }
    n
}

/// Fresh batches of new ids until the kill.
async fn fresh_load(
    url: String,
    next: Arc<AtomicU64>,
    mut rng: Rng,
    b: Shared,
    killed: Arc<AtomicBool>,
    ts: i64,
) {
    let Ok(ch) = connect(&url).await else { return };
    let mut c = Ingest::new(ch);
    while !killed.load(Ordering::SeqCst) {
        let n = rng.range(1, MAX_BATCH);
        let ids: Vec<String> =
            (0..n).map(|_| format!("crash-{:09}", next.fetch_add(1, Ordering::SeqCst))).collect();
        match send(&mut c, &ids, ts).await {
            Ok(r) => {
                let mut b = book(&b);
                if r.rejected != 0 || r.accepted as u64 != n || r.duplicates != 0 {
                    b.violations.push(format!(
                        "fresh batch of {n} ({}..) answered accepted={} duplicates={} rejected={} \
                         (new ids must all be accepted)",
                        ids[0], r.accepted, r.duplicates, r.rejected
                    ));
                }
                b.ack(&ids);
            }
            Err(e) => {
                let k = killed.load(Ordering::SeqCst);
                book(&b).unknown(ids, e, k);
                if k {
                    return;
                }
            }
        }
    }
}

/// Each fresh batch sent twice at the same moment on two connections: the second copy
/// races the first one's commit. An OK reply on either side acks the ids.
async fn twin_load(
    url: String,
    next: Arc<AtomicU64>,
    mut rng: Rng,
    b: Shared,
    killed: Arc<AtomicBool>,
    ts: i64,
) {
    let (Ok(c1), Ok(c2)) = (connect(&url).await, connect(&url).await) else { return };
    let (mut c1, mut c2) = (Ingest::new(c1), Ingest::new(c2));
    while !killed.load(Ordering::SeqCst) {
        let n = rng.range(1, MAX_BATCH);
        let ids: Vec<String> =
            (0..n).map(|_| format!("twin-{:09}", next.fetch_add(1, Ordering::SeqCst))).collect();
        let (r1, r2) = tokio::join!(send(&mut c1, &ids, ts), send(&mut c2, &ids, ts));
        let k = killed.load(Ordering::SeqCst);
        let mut b = book(&b);
        match (&r1, &r2) {
            (Ok(a), Ok(z)) => {
                b.twins_both_ok += 1;
                if a.rejected + z.rejected != 0
                    || (a.accepted + z.accepted) as u64 != n
                    || (a.duplicates + z.duplicates) as u64 != n
                {
                    b.violations.push(format!(
                        "twin batch of {n} ({}..): replies {}+{} accepted, {}+{} duplicates \
                         (each id must be accepted exactly once)",
                        ids[0], a.accepted, z.accepted, a.duplicates, z.duplicates
                    ));
                }
                b.ack(&ids);
            }
            (Ok(r), Err(e)) | (Err(e), Ok(r)) => {
                if !k {
                    b.early_errors.push(format!("twin batch of {n} ({}..), one copy: {e}", ids[0]));
                }
                if r.rejected != 0 || (r.accepted + r.duplicates) as u64 != n {
                    b.violations.push(format!(
                        "twin batch of {n} ({}..): accepted={} duplicates={} rejected={}",
                        ids[0], r.accepted, r.duplicates, r.rejected
                    ));
                }
                b.ack(&ids);
            }
            (Err(e), Err(_)) => {
                let e = e.clone();
                b.unknown(ids, e, k);
                if k {
                    return;
                }
            }
        }
    }
}

/// Batches on one StreamEvents call, up to `STREAM_WINDOW` awaiting their reply: a reply
/// (in order, echoing the sequence) acks its batch; when the stream breaks, every batch
/// without a reply is unknown.
async fn stream_load(
    url: String,
    next: Arc<AtomicU64>,
    mut rng: Rng,
    b: Shared,
    killed: Arc<AtomicBool>,
    ts: i64,
) {
    let Ok(ch) = connect(&url).await else { return };
    let mut c = Ingest::new(ch);
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::SendEventsRequest>(STREAM_WINDOW);
    let mut inflight: VecDeque<(u64, Vec<String>)> = VecDeque::new();
    let mut seq = 0u64;
    let mut fill = |inflight: &mut VecDeque<(u64, Vec<String>)>| {
        let mut out = Vec::new();
        while inflight.len() < STREAM_WINDOW && !killed.load(Ordering::SeqCst) {
            let n = rng.range(1, MAX_BATCH);
            let ids: Vec<String> =
                (0..n).map(|_| format!("stream-{:09}", next.fetch_add(1, Ordering::SeqCst))).collect();
            seq += 1;
            out.push(pb::SendEventsRequest {
                events: ids.iter().map(|i| event(i, ts)).collect(),
                ack_mode: AckMode::Durable as i32,
                sequence: seq,
            });
            inflight.push_back((seq, ids));
        }
        out
    };
    for req in fill(&mut inflight) {
        let _ = tx.try_send(req);
    }
    let fail = |inflight: &mut VecDeque<(u64, Vec<String>)>, e: String| {
        let k = killed.load(Ordering::SeqCst);
        let mut b = book(&b);
        for (_, ids) in inflight.drain(..) {
            b.unknown(ids, e.clone(), k);
        }
    };
    let mut replies = match tokio::time::timeout(
        RPC_TIMEOUT,
        c.stream_events(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(e)) => return fail(&mut inflight, format!("stream: {:?}: {}", e.code(), e.message())),
        Err(_) => return fail(&mut inflight, "stream: no response headers".into()),
    };
    while !inflight.is_empty() {
        match tokio::time::timeout(RPC_TIMEOUT, replies.message()).await {
            Ok(Ok(Some(r))) => {
                let (s, ids) = inflight.pop_front().unwrap();
                let mut b = book(&b);
                if r.sequence != s || r.rejected != 0 || r.accepted as usize != ids.len() || r.duplicates != 0
                {
                    b.violations.push(format!(
                        "stream batch {s} of {} ({}..) answered sequence={} accepted={} duplicates={} rejected={}",
                        ids.len(),
                        ids[0],
                        r.sequence,
                        r.accepted,
                        r.duplicates,
                        r.rejected
                    ));
                }
                b.ack(&ids);
            }
            Ok(Ok(None)) => return fail(&mut inflight, "stream ended without replies".into()),
            Ok(Err(e)) => return fail(&mut inflight, format!("stream: {:?}: {}", e.code(), e.message())),
            Err(_) => return fail(&mut inflight, format!("stream: no reply within {RPC_TIMEOUT:?}")),
        }
        for req in fill(&mut inflight) {
            if tx.send(req).await.is_err() {
                break;
            }
        }
    }
}

/// Resends the batches that were in flight at the last crash, as a client retries them.
async fn retry_pending(url: String, batches: Vec<Vec<String>>, b: Shared, killed: Arc<AtomicBool>, ts: i64) {
    let mut left = batches.into_iter();
    if let Ok(ch) = connect(&url).await {
        let mut c = Ingest::new(ch);
        for ids in left.by_ref() {
            match send(&mut c, &ids, ts).await {
                Ok(r) => {
                    let mut b = book(&b);
                    if r.rejected != 0 || (r.accepted + r.duplicates) as usize != ids.len() {
                        b.violations.push(format!(
                            "retry of {} ({}..) answered accepted={} duplicates={} rejected={}",
                            ids.len(),
                            ids[0],
                            r.accepted,
                            r.duplicates,
                            r.rejected
                        ));
                    }
                    b.unknown_found_stored += r.duplicates as u64;
                    b.unknown_stored_by_retry += r.accepted as u64;
                    b.ack(&ids);
                }
                Err(e) => {
                    let k = killed.load(Ordering::SeqCst);
                    book(&b).unknown(ids, e, k);
                    if k {
                        break;
                    }
                }
            }
        }
    }
    // Whatever was not resent waits for the next restart.
    book(&b).pending.extend(left);
}

/// Up to `MAX_BATCH` distinct acked ids, half of them among the latest 5,000.
fn sample_acked(b: &Shared, rng: &mut Rng) -> Vec<String> {
    let b = book(b);
    let len = b.acked_list.len() as u64;
    if len == 0 {
        return Vec::new();
    }
    let n = rng.range(1, MAX_BATCH).min(len);
    let recent = len.min(5_000);
    let mut set = HashSet::new();
    for i in 0..n {
        let at = if i % 2 == 0 { len - 1 - rng.range(0, recent - 1) } else { rng.range(0, len - 1) };
        set.insert(b.acked_list[at as usize].clone());
    }
    set.into_iter().collect()
}

/// Resends random samples of acked ids (recent ones favoured) until the kill: every
/// reply must count them all as duplicates.
async fn resend_acked(url: String, mut rng: Rng, b: Shared, killed: Arc<AtomicBool>, ts: i64) {
    let Ok(ch) = connect(&url).await else { return };
    let mut c = Ingest::new(ch);
    while !killed.load(Ordering::SeqCst) {
        let ids = sample_acked(&b, &mut rng);
        if ids.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        match send(&mut c, &ids, ts).await {
            Ok(r) => {
                let mut b = book(&b);
                b.acked_resent += ids.len() as u64;
                if r.accepted != 0 || r.rejected != 0 || r.duplicates as usize != ids.len() {
                    b.violations.push(format!(
                        "resent acked batch of {} ({}..) answered accepted={} duplicates={} rejected={}",
                        ids.len(),
                        ids[0],
                        r.accepted,
                        r.duplicates,
                        r.rejected
                    ));
                }
            }
            Err(e) => {
                if !killed.load(Ordering::SeqCst) {
                    book(&b).early_errors.push(format!("resend of {} acked ids: {e}", ids.len()));
                }
                return;
            }
        }
    }
}

/// How many times each event id is in the segments, read with the store's reader (the
/// gateway must be stopped), and how many segment files there are.
async fn stored_ids(dir: &Path) -> (HashMap<String, u32>, usize) {
    let s = FileStore::open(FileConfig {
        dir: dir.to_path_buf(),
        segment_bytes: segment_bytes(),
        min_free_mb: 0,
        ..FileConfig::default()
    })
    .await
    .expect("opening the event store");
    let mut counts = HashMap::new();
    let mut cur = None;
    loop {
        let p = s.scan(cur, 5_000).await.expect("scanning the event store");
        for e in &p.events {
            *counts.entry(e.event().expect("a stored event decodes").event_id).or_insert(0) += 1;
        }
        match p.next {
            Some(c) => cur = Some(c),
            None => break,
        }
    }
    s.close().await.unwrap();
    let segments = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().starts_with("segment-")))
        .count();
    (counts, segments)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_durable_load_keeps_every_acked_event_exactly_once() {
    let seed = std::env::var("ADFLOW_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("crash_events: seed {seed} (ADFLOW_CRASH_SEED={seed} replays these choices)");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let mut h = Harness::new(tmp.path());
    let _tmpfs = diskfull().then(|| {
        std::fs::create_dir_all(h.events_dir()).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
            .arg(h.events_dir())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs");
        Tmpfs(h.events_dir())
    });
    let b: Shared = Arc::default();
    let next = Arc::new(AtomicU64::new(0));
    // One timestamp for every send, so a retry is byte-for-byte the same event.
    let ts = adflow_domain::now_ms() - 1_000;
    let t0 = Instant::now();
    let (mut rounds, mut startup_kills) = (0usize, 0usize);
    let mut failures = Vec::new();

    let max_rounds = knob("ADFLOW_CRASH_ROUNDS", MAX_ROUNDS as u64) as usize;
    let budget = Duration::from_secs(knob("ADFLOW_CRASH_SECS", TIME_BUDGET.as_secs()));
    while rounds < max_rounds && t0.elapsed() < budget {
        if rounds > 0 && rng.range(0, 2) == 0 {
            // Killed while it recovers and rebuilds its dedup window.
            let mut gw = h.spawn();
            tokio::time::sleep(Duration::from_millis(rng.range(0, 150))).await;
            gw.kill9();
            startup_kills += 1;
        }
        let (mut gw, up) = if knob("ADFLOW_CRASH_EAGER", 0) > 0 {
            let mut gw = h.spawn();
            let up = gw.bound().await;
            (gw, up)
        } else {
            h.start().await
        };
        let url = gw.url();
        let killed = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        let pending = std::mem::take(&mut book(&b).pending);
        let retried = pending.len();
        tasks.spawn(retry_pending(url.clone(), pending, b.clone(), killed.clone(), ts));
        for c in 0..knob("ADFLOW_CRASH_CLIENTS", CLIENTS) {
            let r = Rng(rng.next() ^ c);
            tasks.spawn(fresh_load(url.clone(), next.clone(), r, b.clone(), killed.clone(), ts));
        }
        tasks.spawn(twin_load(url.clone(), next.clone(), Rng(rng.next()), b.clone(), killed.clone(), ts));
        tasks.spawn(stream_load(url.clone(), next.clone(), Rng(rng.next()), b.clone(), killed.clone(), ts));
        let resending = rounds % 2 == 1 || rng.range(0, 1) == 0;
        if resending {
            for _ in 0..knob("ADFLOW_CRASH_RESENDERS", 1) {
                tasks.spawn(resend_acked(url.clone(), Rng(rng.next()), b.clone(), killed.clone(), ts));
            }
        }
        let intruder = (knob("ADFLOW_CRASH_INTRUDER_MS", 0) > 0).then(|| {
            tokio::spawn(intruders(
                h.dir.clone(),
                h.config.clone(),
                knob("ADFLOW_CRASH_INTRUDER_MS", 0),
                rounds,
                killed.clone(),
            ))
        });
        let fill = diskfull().then(|| tokio::spawn(filler(h.events_dir(), Rng(rng.next()), killed.clone())));
        let reader = (knob("ADFLOW_CRASH_LIVE_READER", 0) > 0)
            .then(|| tokio::spawn(live_reader(h.events_dir(), killed.clone())));
        let load_ms = rng.range(knob("ADFLOW_CRASH_LOAD_MS_MIN", 200), knob("ADFLOW_CRASH_LOAD_MS", 1500));
        tokio::time::sleep(Duration::from_millis(load_ms)).await;
        killed.store(true, Ordering::SeqCst);
        // Mostly kill -9; now and then the operator's SIGTERM, under the same load.
        let graceful = rng.range(0, 4) == 0;
        let term_kill = knob("ADFLOW_CRASH_TERM_THEN_KILL_MS", 0);
        let stop = if term_kill > 0 {
            "SIGTERM then kill -9"
        } else if graceful {
            "SIGTERM"
        } else {
            "kill -9"
        };
        if term_kill > 0 {
            // SIGTERM, then kill -9 in the middle of the drain.
            let _ = Command::new("kill").arg("-TERM").arg(gw.child.id().to_string()).status();
            tokio::time::sleep(Duration::from_millis(rng.range(0, term_kill))).await;
            gw.kill9();
        } else if graceful {
            let status = gw.terminate().await;
            if !status.is_some_and(|s| s.success()) {
                failures.push(format!(
                    "round {}: SIGTERM under load ended the gateway with {status:?}",
                    rounds + 1
                ));
            }
        } else {
            gw.kill9();
        }
        let drained = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(r) = tasks.join_next().await {
                r.expect("a client task panicked");
            }
        })
        .await;
        assert!(drained.is_ok(), "clients did not notice the kill within 60 s");
        if let Some(t) = fill {
            eprintln!("crash_events: round {}: disk filled {} times", rounds + 1, t.await.unwrap());
        }
        if let Some(t) = reader {
            eprintln!("crash_events: round {}: {} live opens", rounds + 1, t.await.unwrap());
        }
        if let Some(t) = intruder {
            eprintln!("crash_events: round {}: {} intruders started", rounds + 1, t.await.unwrap());
        }
        rounds += 1;
        let b = book(&b);
        eprintln!(
            "crash_events: round {rounds}: up in {} ms, load {load_ms} ms{}, {}, retried {retried} batches; \
             acked {} ids, {} batches pending",
            up.as_millis(),
            if resending { " + acked resends" } else { "" },
            stop,
            b.acked.len(),
            b.pending.len()
        );
    }

    let _ = std::fs::remove_file(h.events_dir().join("filler"));
    if diskfull() {
        eprintln!("crash_events: {} batches refused UNAVAILABLE on a full disk", book(&b).refused_full);
    }
    // Final start: every batch lost in a crash is retried and must now be answered.
    let (mut gw, _) = h.start().await;
    let pending = std::mem::take(&mut book(&b).pending);
    let never = Arc::new(AtomicBool::new(false));
    retry_pending(gw.url(), pending, b.clone(), never.clone(), ts).await;
    let status = gw.terminate().await;
    if !status.is_some_and(|s| s.success()) {
        failures.push(format!("SIGTERM: the gateway ended with {status:?}; log:\n{}", gw.log_tail()));
    }
    drop(gw);

    let (counts, segments) = stored_ids(&h.events_dir()).await;
    let (acked, unknown_ever) = {
        let b = book(&b);
        (b.acked.clone(), b.unknown_ever.clone())
    };
    let stored_total: u64 = counts.values().map(|&n| n as u64).sum();
    let missing: Vec<&String> = acked.iter().filter(|id| !counts.contains_key(*id)).collect();
    let twice: Vec<(&String, &u32)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let stray: Vec<&String> =
        counts.keys().filter(|id| !acked.contains(*id) && !unknown_ever.contains(*id)).collect();
    let unanswered = book(&b).pending.iter().map(Vec::len).sum::<usize>();

    // Restart and resend every acked id: all duplicates, nothing stored.
    let (mut gw, up) = h.start().await;
    let all: Vec<String> = acked.iter().cloned().collect();
    let chunks: Vec<Vec<String>> = all.chunks(MAX_BATCH as usize).map(<[String]>::to_vec).collect();
    let per = chunks.len().div_ceil(4).max(1);
    let mut tasks = JoinSet::new();
    for part in chunks.chunks(per).map(<[Vec<String>]>::to_vec) {
        let url = gw.url();
        tasks.spawn(async move {
            let mut c = Ingest::new(connect(&url).await.expect("connecting for the resend"));
            let (mut accepted, mut duplicates, mut errors) = (0u64, 0u64, Vec::new());
            for ids in part {
                match send(&mut c, &ids, ts).await {
                    Ok(r) => {
                        accepted += r.accepted as u64;
                        duplicates += r.duplicates as u64;
                    }
                    Err(e) => errors.push(e),
                }
            }
            (accepted, duplicates, errors)
        });
    }
    let (mut re_accepted, mut re_duplicates, mut re_errors) = (0u64, 0u64, Vec::new());
    while let Some(r) = tasks.join_next().await {
        let (a, d, e) = r.unwrap();
        re_accepted += a;
        re_duplicates += d;
        re_errors.extend(e);
    }
    let status = gw.terminate().await;
    if !status.is_some_and(|s| s.success()) {
        failures.push(format!("SIGTERM after the resend: the gateway ended with {status:?}"));
    }
    drop(gw);
    let (after, _) = stored_ids(&h.events_dir()).await;
    let after_total: u64 = after.values().map(|&n| n as u64).sum();

    let b = book(&b);
    eprintln!(
        "crash_events: {rounds} rounds ({startup_kills} extra kills during start-up, {} gateway starts) in {:.1} s",
        h.starts,
        t0.elapsed().as_secs_f64()
    );
    eprintln!(
        "crash_events: acked {} ids; unknown (in flight at a kill) {} ids, on retry {} found stored, {} stored \
         by the retry; twin batches both answered {}; acked ids resent during load {}",
        acked.len(),
        unknown_ever.len(),
        b.unknown_found_stored,
        b.unknown_stored_by_retry,
        b.twins_both_ok,
        b.acked_resent
    );
    eprintln!(
        "crash_events: stored {stored_total} records, {} distinct ids, in {segments} segments; after the last \
         restart (serving in {} ms) {} acked ids resent: accepted {re_accepted}, duplicates {re_duplicates}, \
         errors {}; stored afterwards {after_total}",
        counts.len(),
        up.as_millis(),
        all.len(),
        re_errors.len()
    );
    let warnings = h.warnings();
    eprintln!("crash_events: {} WARN/ERROR lines in the gateway logs", warnings.len());
    for w in warnings.iter().take(20) {
        eprintln!("  {w}");
    }

    if !b.early_errors.is_empty() {
        failures.push(format!(
            "{} RPCs failed while the gateway was up, e.g. {:?}",
            b.early_errors.len(),
            &b.early_errors[..b.early_errors.len().min(5)]
        ));
    }
    if !b.violations.is_empty() {
        failures.push(format!(
            "{} replies broke a promise, e.g. {:#?}",
            b.violations.len(),
            &b.violations[..b.violations.len().min(5)]
        ));
    }
    if unanswered != 0 {
        failures
            .push(format!("{unanswered} ids lost in a crash were still unanswered after the final retry"));
    }
    if !missing.is_empty() {
        failures.push(format!(
            "{} acked ids are not in the store, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        ));
    }
    if !twice.is_empty() {
        failures.push(format!(
            "{} ids are stored more than once, e.g. {:?}",
            twice.len(),
            &twice[..twice.len().min(10)]
        ));
    }
    if !stray.is_empty() {
        failures.push(format!(
            "{} stored ids were never sent, e.g. {:?}",
            stray.len(),
            &stray[..stray.len().min(10)]
        ));
    }
    if re_accepted != 0 || re_duplicates != all.len() as u64 || !re_errors.is_empty() {
        failures.push(format!(
            "resending {} acked ids after a restart answered accepted={re_accepted} duplicates={re_duplicates} \
             errors={:?}",
            all.len(),
            &re_errors[..re_errors.len().min(5)]
        ));
    }
    if after_total != stored_total {
        failures.push(format!(
            "the resend of acked ids changed the store: {stored_total} -> {after_total} records"
        ));
    }
    if std::env::var_os("ADFLOW_CRASH_KEEP").is_some() {
        eprintln!("crash_events: data and logs kept in {}", tmp.keep().display());
    }
    assert!(acked.len() > 1_000, "too little load to mean anything: {} acked ids", acked.len());
    assert!(segments > 2, "the run should rotate segments; {segments} segment files");
    assert!(failures.is_empty(), "seed {seed}:\n{}", failures.join("\n"));
}
