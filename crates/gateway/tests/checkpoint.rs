//! Checkpoints through a real gateway (issue 16): a restart loads the last checkpoint and
//! reads back only the records committed after it, with analytics and the dedup window
//! exactly as if the whole store had been read; a damaged checkpoint is refused and the
//! gateway rebuilds from the whole store instead. The start-up log is captured to see
//! which path was taken. (Crashes at random moments with checkpoints every second are
//! covered by the crash suite in `crash_events.rs`.)

mod common;

use adflow_domain::pb::EventType;
use common::{Ingest, TestGateway, batch, config, event};
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Every log line of this test binary (one global subscriber; tests run one at a time).
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Tee(w.clone()))
            .finish();
        tracing::subscriber::set_global_default(sub).expect("one subscriber");
        buf
    })
}

struct Tee(Arc<Mutex<Vec<u8>>>);

impl Write for Tee {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Log lines written since `from` bytes.
fn lines_since(from: usize) -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()[from..]).into_owned()
}

fn log_len() -> usize {
    logs().lock().unwrap().len()
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn send(c: &mut Ingest, ids: std::ops::Range<usize>) -> (u32, u32) {
    let (mut accepted, mut duplicates) = (0, 0);
    let ids: Vec<usize> = ids.collect();
    for chunk in ids.chunks(100) {
        let events = chunk.iter().map(|i| event(&format!("cp-{i}"), "ad-cp", EventType::Click)).collect();
        let r = c.send_events(batch(events)).await.unwrap().into_inner();
        assert_eq!(r.rejected, 0);
        accepted += r.accepted;
        duplicates += r.duplicates;
    }
    (accepted, duplicates)
}

async fn total(gw: &TestGateway) -> u64 {
    common::day_total(gw, "ad-cp").await
}

/// The "rebuilt" start-up line's `events=` value.
fn replayed(log: &str) -> u64 {
    let line = log.lines().find(|l| l.contains("rebuilt from the event store")).expect("rebuild line");
    let v = line.split("events=").nth(1).expect("events field");
    v.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reads_only_what_was_committed_after_the_checkpoint() {
    let _one = SERIAL.lock().await;
    logs();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.checkpoint.interval_secs = 1;
    let cp = cfg.storage.file.dir.join("checkpoint.bin");

    let gw = TestGateway::start(cfg.clone()).await;
    let mut c = gw.ingest().await;
    assert_eq!(send(&mut c, 0..400).await, (400, 0));
    // Wait for a scheduled checkpoint, keep it, then commit more: a crash right now would
    // leave exactly this checkpoint and 300 later records.
    let t0 = std::time::Instant::now();
    while !cp.exists() {
        assert!(t0.elapsed() < Duration::from_secs(20), "no checkpoint was written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let early = std::fs::read(&cp).unwrap();
    assert_eq!(send(&mut c, 400..700).await, (300, 0));
    gw.stop().await;

    // A clean stop checkpoints everything: nothing is read back.
    let mark = log_len();
    let gw = TestGateway::start(cfg.clone()).await;
    assert_eq!(total(&gw).await, 700);
    let log = lines_since(mark);
    assert!(log.contains("checkpoint loaded"), "{log}");
    assert_eq!(replayed(&log), 0, "{log}");
    gw.stop().await;

    // Back to the early checkpoint (as after kill -9): the 300 later records are read back
    // and counted once; every id is still a duplicate.
    std::fs::write(&cp, &early).unwrap();
    let mark = log_len();
    let gw = TestGateway::start(cfg.clone()).await;
    assert_eq!(total(&gw).await, 700);
    let log = lines_since(mark);
    assert!(log.contains("checkpoint loaded"), "{log}");
    assert_eq!(replayed(&log), 300, "{log}");
    assert_eq!(send(&mut gw.ingest().await, 0..700).await, (0, 700));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_checkpoint_is_refused_and_the_whole_store_is_read_instead() {
    let _one = SERIAL.lock().await;
    logs();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let cp = cfg.storage.file.dir.join("checkpoint.bin");
    let gw = TestGateway::start(cfg.clone()).await;
    assert_eq!(send(&mut gw.ingest().await, 0..500).await, (500, 0));
    gw.stop().await;

    let mut bytes = std::fs::read(&cp).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&cp, &bytes).unwrap();
    let mark = log_len();
    let gw = TestGateway::start(cfg.clone()).await;
    assert_eq!(total(&gw).await, 500);
    let log = lines_since(mark);
    assert!(log.contains("checkpoint not used") && log.contains("CRC"), "{log}");
    assert_eq!(replayed(&log), 500, "{log}");
    assert_eq!(send(&mut gw.ingest().await, 0..500).await, (0, 500));
    gw.stop().await;
}
