//! The shared conformance suite, run against the file backend.

use adflow_store::EventStore;
use adflow_store::conformance::{Harness, run_all};
use adflow_store::file::{FileConfig, FileStore};
use async_trait::async_trait;
use std::sync::{Arc, Mutex};

struct FileHarness {
    dirs: Mutex<Vec<tempfile::TempDir>>,
    /// The in-memory tail of the newest commits (0: every read goes to disk).
    tail_cache_mb: u64,
}

impl FileHarness {
    fn new(tail_cache_mb: u64) -> Self {
        Self { dirs: Mutex::new(Vec::new()), tail_cache_mb }
    }

    fn cfg(&self, dir: &std::path::Path) -> FileConfig {
        // Small segments so the suite also crosses segment boundaries.
        FileConfig {
            dir: dir.to_path_buf(),
            segment_bytes: 1024,
            tail_cache_mb: self.tail_cache_mb,
            ..FileConfig::default()
        }
    }
}

#[async_trait]
impl Harness for FileHarness {
    async fn fresh(&self) -> Arc<dyn EventStore> {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::open(self.cfg(dir.path())).await.expect("open");
        self.dirs.lock().unwrap().push(dir);
        Arc::new(store)
    }

    async fn reopen(&self, store: Arc<dyn EventStore>) -> Arc<dyn EventStore> {
        store.close().await.expect("close");
        let dir = self.dirs.lock().unwrap().last().expect("a fresh store first").path().to_path_buf();
        Arc::new(FileStore::open(self.cfg(&dir)).await.expect("reopen"))
    }
}

#[tokio::test]
async fn file_backend_passes_the_conformance_suite() {
    run_all(&FileHarness::new(FileConfig::default().tail_cache_mb)).await;
}

#[tokio::test]
async fn file_backend_passes_the_conformance_suite_reading_only_from_disk() {
    run_all(&FileHarness::new(0)).await;
}
