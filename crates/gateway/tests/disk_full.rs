//! A full disk under the file store, with a client retry racing the failing commit:
//! "duplicate" must mean "stored". The events directory is a small tmpfs (CI runs as
//! root); without root or `mount` the test says it was skipped.

mod common;

use adflow_domain::pb::EventType;
use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use tonic::Code;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Self(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Writes a file until the filesystem is full; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![7u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    path
}

fn batch_of(prefix: &str, n: usize) -> adflow_domain::pb::SendEventsRequest {
    batch((0..n).map(|i| event(&format!("{prefix}-{i}"), "ad-1", EventType::Impression)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_racing_a_commit_that_fails_on_a_full_disk_is_not_called_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&dir.path().join("events"), "2m") else {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    };
    let mut cfg = config(dir.path());
    // A slower retry budget so the second copy surely arrives while the first is failing.
    cfg.ingest.store_retry_attempts = 4;
    cfg.ingest.store_retry_base_ms = 100;
    let gw = TestGateway::start(cfg).await;
    let mut a = gw.ingest().await;
    let mut b = gw.ingest().await; // another connection, as a retrying client would open
    let r = a.send_events(batch_of("warm", 10)).await.unwrap().into_inner();
    assert_eq!(r.accepted, 10);

    let filler = fill(&fs.0);
    let first = tokio::spawn(async move { a.send_events(batch_of("x", 200)).await });
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let second = b.send_events(batch_of("x", 200)).await;
    let first = first.await.unwrap();
    let e1 = first.expect_err("the disk is full: the first copy cannot be stored");
    assert_eq!(e1.code(), Code::Unavailable, "{}", e1.message());
    match second {
        Ok(r) => panic!("the repeat was answered {:?} while no copy was stored", r.into_inner()),
        Err(e) => assert_eq!(e.code(), Code::Unavailable, "{}", e.message()),
    }

    // Space again: both clients retry; the batch is stored once.
    std::fs::remove_file(filler).unwrap();
    let mut a = gw.ingest().await;
    let r1 = a.send_events(batch_of("x", 200)).await.unwrap().into_inner();
    let r2 = b.send_events(batch_of("x", 200)).await.unwrap().into_inner();
    assert_eq!((r1.accepted, r1.duplicates), (200, 0));
    assert_eq!((r2.accepted, r2.duplicates), (0, 200));
    let events_dir = gw.events_dir();
    gw.stop().await;
    let ids: Vec<String> =
        stored(&events_dir).await.into_iter().map(|e| e.event().unwrap().event_id).collect();
    assert_eq!(ids.len(), 210);
    assert_eq!(ids.iter().filter(|i| i.starts_with("x-")).count(), 200);
    drop(fs);
}
