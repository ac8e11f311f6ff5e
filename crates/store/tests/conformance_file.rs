//! The shared conformance suite, run against the file backend.

use adflow_store::EventStore;
use adflow_store::conformance::{Harness, run_all};
use adflow_store::file::{FileConfig, FileStore};
use async_trait::async_trait;
use std::sync::{Arc, Mutex};

struct FileHarness {
    dirs: Mutex<Vec<tempfile::TempDir>>,
}

impl FileHarness {
    fn cfg(dir: &std::path::Path) -> FileConfig {
        // Small segments so the suite also crosses segment boundaries.
        FileConfig { dir: dir.to_path_buf(), segment_bytes: 1024, ..FileConfig::default() }
    }
}

#[async_trait]
impl Harness for FileHarness {
    async fn fresh(&self) -> Arc<dyn EventStore> {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::open(Self::cfg(dir.path())).await.expect("open");
        self.dirs.lock().unwrap().push(dir);
        Arc::new(store)
    }

    async fn reopen(&self, store: Arc<dyn EventStore>) -> Arc<dyn EventStore> {
        store.close().await.expect("close");
        let dir = self.dirs.lock().unwrap().last().expect("a fresh store first").path().to_path_buf();
        Arc::new(FileStore::open(Self::cfg(&dir)).await.expect("reopen"))
    }
}

#[tokio::test]
async fn file_backend_passes_the_conformance_suite() {
    run_all(&FileHarness { dirs: Mutex::new(Vec::new()) }).await;
}
