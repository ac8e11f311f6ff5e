//! Persistence of ad records in redb (an embedded, crash-safe B-tree store), written by
//! one thread that commits everything queued since its last commit in a single write
//! transaction: many ad state changes share one fsync (group commit). Callers that must
//! not answer before their write is durable (submissions) wait on a barrier; other
//! changes are write-behind and only need to be durable eventually, because the queue's
//! recovery rules (leased -> queued) already cover a crash between change and commit.

use adflow_proto::v1::Ad;
use prost::Message;
use redb::{Database, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::mpsc;
use tokio::sync::oneshot;

/// ad id (16 bytes, UUIDv7 so keys sort by creation time) -> encoded `Ad`.
const ADS: TableDefinition<u128, &[u8]> = TableDefinition::new("ads");
/// audit entry id (UUIDv7) -> encoded `AuditEntry` of the operator agent.
const AUDIT: TableDefinition<u128, &[u8]> = TableDefinition::new("audit");
/// Run-time settings that outlive a restart: "policy" (encoded Policy), "paused" (5 flags).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Page cache of the database.
const CACHE_BYTES: usize = 32 << 20;

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// redb reported an error.
    #[error("queue database: {0}")]
    Db(String),
    /// The writer thread is gone.
    #[error("queue database writer stopped")]
    Stopped,
}

fn db<E: std::fmt::Display>(e: E) -> JournalError {
    JournalError::Db(e.to_string())
}

enum Op {
    Put(u128, Vec<u8>),
    Audit(u128, Vec<u8>),
    Meta(&'static str, Vec<u8>),
    Barrier(oneshot::Sender<Result<(), String>>),
}

/// The journal: a database handle for reads and a channel to the writer thread.
pub struct Journal {
    db: std::sync::Arc<Database>,
    tx: std::sync::Mutex<Option<mpsc::Sender<Op>>>,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Journal {
    /// Opens (or creates) the database at `path` and starts the writer thread.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(db)?;
        }
        // redb caches up to 1 GiB by default; the queue reads little (start-up, old ads).
        let database =
            std::sync::Arc::new(Database::builder().set_cache_size(CACHE_BYTES).create(path).map_err(db)?);
        {
            let w = database.begin_write().map_err(db)?;
            w.open_table(ADS).map_err(db)?;
            w.open_table(AUDIT).map_err(db)?;
            w.open_table(META).map_err(db)?;
            w.commit().map_err(db)?;
        }
        let (tx, rx) = mpsc::channel();
        let d = database.clone();
        let writer = std::thread::Builder::new()
            .name("adflow-queue-journal".into())
            .spawn(move || write_loop(&d, rx))
            .map_err(db)?;
        Ok(Self {
            db: database,
            tx: std::sync::Mutex::new(Some(tx)),
            writer: std::sync::Mutex::new(Some(writer)),
        })
    }

    fn send(&self, op: Op) -> Result<(), JournalError> {
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().ok_or(JournalError::Stopped)?.send(op).map_err(|_| JournalError::Stopped)
    }

    /// Queues a write of `ad` (write-behind).
    pub fn put(&self, key: u128, ad: &Ad) {
        if self.send(Op::Put(key, ad.encode_to_vec())).is_err() {
            tracing::error!("queue journal is stopped; an ad state change was not persisted");
        }
    }

    /// Queues an audit entry (make it durable with `barrier`).
    pub fn audit(&self, key: u128, entry: Vec<u8>) -> Result<(), JournalError> {
        self.send(Op::Audit(key, entry))
    }

    /// Audit entries with keys below `before` (all when None), newest first, at most `limit`.
    pub fn audit_newest(
        &self,
        before: Option<u128>,
        limit: usize,
    ) -> Result<Vec<(u128, Vec<u8>)>, JournalError> {
        let r = self.db.begin_read().map_err(db)?;
        let t = r.open_table(AUDIT).map_err(db)?;
        let range = match before {
            Some(b) => t.range(..b).map_err(db)?,
            None => t.range::<u128>(..).map_err(db)?,
        };
        let mut out = Vec::new();
        for item in range.rev().take(limit) {
            let (k, v) = item.map_err(db)?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Resolves once every write queued before it is committed.
    pub fn barrier(&self) -> Result<oneshot::Receiver<Result<(), String>>, JournalError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Barrier(tx))?;
        Ok(rx)
    }

    /// Queues a write of a run-time setting (write-behind).
    pub fn set_meta(&self, key: &'static str, value: Vec<u8>) {
        if self.send(Op::Meta(key, value)).is_err() {
            tracing::error!(key, "queue journal writer stopped; setting not persisted");
        }
    }

    /// Reads a run-time setting.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, JournalError> {
        let r = self.db.begin_read().map_err(db)?;
        let t = r.open_table(META).map_err(db)?;
        Ok(t.get(key).map_err(db)?.map(|v| v.value().to_vec()))
    }

    /// Reads one ad.
    pub fn get(&self, key: u128) -> Result<Option<Ad>, JournalError> {
        let r = self.db.begin_read().map_err(db)?;
        let t = r.open_table(ADS).map_err(db)?;
        let Some(v) = t.get(key).map_err(db)? else { return Ok(None) };
        Ad::decode(v.value()).map(Some).map_err(db)
    }

    /// Calls `f` on every stored ad (used at start).
    pub fn for_each(&self, mut f: impl FnMut(u128, Ad)) -> Result<(), JournalError> {
        let r = self.db.begin_read().map_err(db)?;
        let t = r.open_table(ADS).map_err(db)?;
        for item in t.iter().map_err(db)? {
            let (k, v) = item.map_err(db)?;
            f(k.value(), Ad::decode(v.value()).map_err(db)?);
        }
        Ok(())
    }

    /// Ads with keys below `before` (all when None), newest first, while `f` returns true.
    pub fn scan_newest(
        &self,
        before: Option<u128>,
        mut f: impl FnMut(u128, Ad) -> bool,
    ) -> Result<(), JournalError> {
        let r = self.db.begin_read().map_err(db)?;
        let t = r.open_table(ADS).map_err(db)?;
        let range = match before {
            Some(b) => t.range(..b).map_err(db)?,
            None => t.range::<u128>(..).map_err(db)?,
        };
        for item in range.rev() {
            let (k, v) = item.map_err(db)?;
            if !f(k.value(), Ad::decode(v.value()).map_err(db)?) {
                break;
            }
        }
        Ok(())
    }

    /// Commits what is queued and stops the writer.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = w.join();
        }
    }
}

fn write_loop(db: &Database, rx: mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        ops.extend(rx.try_iter().take(65_536));
        let res = commit(db, &mut ops);
        if let Err(e) = &res {
            tracing::error!(error = %e, "queue journal commit failed");
        }
        for op in ops {
            if let Op::Barrier(tx) = op {
                let _ = tx.send(res.clone().map_err(|e| e.to_string()));
            }
        }
    }
}

fn commit(db: &Database, ops: &mut [Op]) -> Result<(), String> {
    let w = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut t = w.open_table(ADS).map_err(|e| e.to_string())?;
        let mut a = w.open_table(AUDIT).map_err(|e| e.to_string())?;
        let mut m = w.open_table(META).map_err(|e| e.to_string())?;
        for op in ops.iter() {
            match op {
                Op::Put(k, v) => {
                    t.insert(*k, v.as_slice()).map_err(|e| e.to_string())?;
                }
                Op::Audit(k, v) => {
                    a.insert(*k, v.as_slice()).map_err(|e| e.to_string())?;
                }
                Op::Meta(k, v) => {
                    m.insert(*k, v.as_slice()).map_err(|e| e.to_string())?;
                }
                Op::Barrier(_) => {}
            }
        }
    }
    w.commit().map_err(|e| e.to_string())
}
