//! Persistence of ad records in redb (an embedded, crash-safe B-tree store), written by
//! one thread that commits everything queued since its last commit in a single write
//! transaction: many ad state changes share one fsync (group commit).
//!
//! Every write gets a sequence number when it is queued (`written`); the writer publishes
//! the highest committed one (`synced` waits for it). The queue answers nothing and
//! reports nothing before the writes behind the answer are committed, so a kill -9 can
//! only lose changes nobody was told about. Work that must not happen before a commit
//! (telling watchers about a new state) is queued as an `after` callback: the writer runs
//! it once the writes queued before it are committed, in queue order, and never when the
//! commit does not happen.
//!
//! A failed commit is retried (with the writes queued meanwhile, backing off up to 5 s)
//! rather than reported: memory already holds the change, so the only consistent outcomes
//! are "committed later" or "lost with the process". Callers keep waiting meanwhile;
//! `close` gives up after one more attempt.

use adflow_proto::v1::Ad;
use prost::Message;
use redb::{Database, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;
use tokio::sync::watch;

/// ad id (16 bytes, UUIDv7 so keys sort by creation time) -> encoded `Ad`.
const ADS: TableDefinition<u128, &[u8]> = TableDefinition::new("ads");
/// audit entry id (UUIDv7) -> encoded `AuditEntry` of the operator agent.
const AUDIT: TableDefinition<u128, &[u8]> = TableDefinition::new("audit");
/// ad id -> attempt number of its lease (u32 little-endian), written when a lease is handed
/// out instead of the whole ad (a few bytes instead of ~1 KB per lease); removed by the
/// ad's next write. At start an entry marks a lease the last process did not settle.
const LEASED: TableDefinition<u128, u32> = TableDefinition::new("leased");
/// Run-time state that outlives a restart: "policy" (encoded Policy), "paused" (5 flags),
/// "lease_seq" (the highest lease id handed out, u64 little-endian).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Page cache of the database.
const CACHE_BYTES: usize = 32 << 20;
/// Most writes folded into one commit.
const MAX_BATCH: usize = 65_536;

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

/// Work run by the writer thread after a commit.
type After = Box<dyn FnOnce() + Send>;

enum Op {
    Put(u128, Vec<u8>),
    Leased(u128, u32),
    Audit(u128, Vec<u8>),
    Meta(&'static str, Vec<u8>),
    After(After),
}

/// The sending side: the channel and the sequence number of the last queued write.
struct Queue {
    tx: Option<mpsc::Sender<(u64, Op)>>,
    written: u64,
}

/// The journal: a database handle for reads and a channel to the writer thread.
pub struct Journal {
    db: Arc<Database>,
    queue: Mutex<Queue>,
    /// A copy of `queue.written`, readable without the lock.
    written: AtomicU64,
    committed: watch::Receiver<u64>,
    /// Why the writer gave up, when it did.
    failed: Arc<Mutex<Option<String>>>,
    /// Set to make the writer drop what it has not committed (a simulated kill -9).
    #[cfg_attr(not(feature = "conformance"), allow(dead_code))]
    abandon: Arc<AtomicBool>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Journal {
    /// Opens (or creates) the database at `path` and starts the writer thread.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        // Name the file and its setting: the OS error alone ("File exists") says neither.
        let at =
            |e: &dyn std::fmt::Display| JournalError::Db(format!("{} (queue.path): {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| at(&e))?;
        }
        // redb caches up to 1 GiB by default; the queue reads little (start-up, old ads).
        let database = Database::builder().set_cache_size(CACHE_BYTES).create(path).map_err(|e| match e {
            // redb's own words ("Database already open. Cannot acquire lock.") name neither
            // the file nor the way out.
            redb::DatabaseError::DatabaseAlreadyOpen => JournalError::Db(format!(
                "{} (queue.path) is already open in another process, most likely another gateway \
                 started with the same queue.path: stop that gateway, or give this one its own \
                 queue.path (or a shared queue backend: queue.backend = \"redis\" or \"mongodb\")",
                path.display()
            )),
            e => at(&e),
        })?;
        let database = Arc::new(database);
        {
            let w = database.begin_write().map_err(db)?;
            w.open_table(ADS).map_err(db)?;
            w.open_table(AUDIT).map_err(db)?;
            w.open_table(META).map_err(db)?;
            w.open_table(LEASED).map_err(db)?;
            w.commit().map_err(db)?;
        }
        let (tx, rx) = mpsc::channel();
        let (committed_tx, committed) = watch::channel(0);
        let failed = Arc::new(Mutex::new(None));
        let abandon = Arc::new(AtomicBool::new(false));
        let writer = {
            let (d, f, a) = (database.clone(), failed.clone(), abandon.clone());
            std::thread::Builder::new()
                .name("adflow-queue-journal".into())
                .spawn(move || write_loop(&d, &rx, &committed_tx, &f, &a))
                .map_err(db)?
        };
        Ok(Self {
            db: database,
            queue: Mutex::new(Queue { tx: Some(tx), written: 0 }),
            written: AtomicU64::new(0),
            committed,
            failed,
            abandon,
            writer: Mutex::new(Some(writer)),
        })
    }

    fn send(&self, op: Op) -> Result<(), JournalError> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let seq = q.written + 1;
        q.tx.as_ref().ok_or(JournalError::Stopped)?.send((seq, op)).map_err(|_| JournalError::Stopped)?;
        q.written = seq;
        self.written.store(seq, Ordering::Release);
        Ok(())
    }

    /// Writes queued and not yet committed.
    pub fn backlog(&self) -> u64 {
        self.written().saturating_sub(*self.committed.borrow())
    }

    /// The sequence number of the last queued write: once `synced` of it resolves, every
    /// write queued so far is committed.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Resolves once every write up to `seq` is committed.
    pub async fn synced(&self, seq: u64) -> Result<(), JournalError> {
        let mut rx = self.committed.clone();
        if *rx.borrow_and_update() >= seq {
            return Ok(());
        }
        match rx.wait_for(|&c| c >= seq).await {
            Ok(_) => Ok(()),
            Err(_) => Err(match self.failed.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                Some(e) => JournalError::Db(e),
                None => JournalError::Stopped,
            }),
        }
    }

    /// Resolves once everything queued so far is committed.
    pub async fn sync(&self) -> Result<(), JournalError> {
        self.synced(self.written()).await
    }

    /// Queues a write of `ad` (durable once `synced` says so).
    pub fn put(&self, key: u128, ad: &Ad) {
        if self.send(Op::Put(key, ad.encode_to_vec())).is_err() {
            tracing::error!("queue journal is stopped; an ad state change was not persisted");
        }
    }

    /// Queues an audit entry.
    pub fn audit(&self, key: u128, entry: Vec<u8>) -> Result<(), JournalError> {
        self.send(Op::Audit(key, entry))
    }

    /// Queues a write of a run-time setting.
    pub fn set_meta(&self, key: &'static str, value: Vec<u8>) {
        if self.send(Op::Meta(key, value)).is_err() {
            tracing::error!(key, "queue journal writer stopped; setting not persisted");
        }
    }

    /// Queues the record of a lease of `key` with attempt number `attempt` (durable once
    /// `synced` says so); the ad's next `put` removes it.
    pub fn leased(&self, key: u128, attempt: u32) {
        if self.send(Op::Leased(key, attempt)).is_err() {
            tracing::error!("queue journal is stopped; a lease was not persisted");
        }
    }

    /// Every lease record: ads whose lease the last process handed out and never settled.
    pub fn leases(&self) -> Result<Vec<(u128, u32)>, JournalError> {
        let r = self.db.begin_read().map_err(db)?;
        let t = r.open_table(LEASED).map_err(db)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(db)? {
            let (k, v) = item.map_err(db)?;
            out.push((k.value(), v.value()));
        }
        Ok(out)
    }

    /// Runs `f` on the writer thread once every write queued before it is committed
    /// (never, when that does not happen). Keep it short: the next commit waits for it.
    pub fn after(&self, f: impl FnOnce() + Send + 'static) {
        let _ = self.send(Op::After(Box::new(f)));
    }

    /// Writes ads and settings in one transaction on the calling thread (start-up only,
    /// before anything is queued).
    pub fn commit_now(
        &self,
        ads: &[(u128, Ad)],
        meta: &[(&'static str, Vec<u8>)],
    ) -> Result<(), JournalError> {
        if ads.is_empty() && meta.is_empty() {
            return Ok(());
        }
        let mut ops: Vec<(u64, Op)> = ads.iter().map(|(k, a)| (0, Op::Put(*k, a.encode_to_vec()))).collect();
        ops.extend(meta.iter().map(|(k, v)| (0, Op::Meta(k, v.clone()))));
        commit(&self.db, &ops).map_err(JournalError::Db)
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

    /// Reads a run-time setting (as committed).
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, JournalError> {
        let r = self.db.begin_read().map_err(db)?;
        let t = r.open_table(META).map_err(db)?;
        Ok(t.get(key).map_err(db)?.map(|v| v.value().to_vec()))
    }

    /// Reads one ad (as committed).
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
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).tx.take();
        if let Some(w) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = w.join();
        }
    }

    /// Stops the writer without committing what is queued, as a kill -9 would: only
    /// committed writes are on disk when the database is opened again. For crash tests.
    #[cfg(feature = "conformance")]
    pub fn abandon(&self) {
        self.abandon.store(true, Ordering::SeqCst);
        self.close();
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // The writer holds the database: let it finish so the file can be opened again.
        self.close();
    }
}

fn write_loop(
    db: &Database,
    rx: &mpsc::Receiver<(u64, Op)>,
    committed: &watch::Sender<u64>,
    failed: &Mutex<Option<String>>,
    abandon: &AtomicBool,
) {
    let mut ops: Vec<(u64, Op)> = Vec::new();
    let mut closed = false;
    let mut delay = Duration::from_millis(100);
    loop {
        if ops.is_empty() {
            match rx.recv() {
                Ok(op) => ops.push(op),
                Err(_) => return,
            }
        }
        while ops.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if abandon.load(Ordering::SeqCst) {
            return;
        }
        let writes = ops.iter().any(|(_, op)| !matches!(op, Op::After(_)));
        match if writes { commit(db, &ops) } else { Ok(()) } {
            Ok(()) => {
                delay = Duration::from_millis(100);
                let last = ops.last().map(|(s, _)| *s).unwrap_or(0);
                for (_, op) in ops.drain(..) {
                    if let Op::After(f) = op {
                        f();
                    }
                }
                committed.send_replace(last);
            }
            Err(e) if closed => {
                tracing::error!(error = %e, lost = ops.len(), "queue journal commit failed while closing; giving up");
                *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, pending = ops.len(), retry_in = ?delay, "queue journal commit failed; retrying");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn commit(db: &Database, ops: &[(u64, Op)]) -> Result<(), String> {
    let w = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut t = w.open_table(ADS).map_err(|e| e.to_string())?;
        let mut a = w.open_table(AUDIT).map_err(|e| e.to_string())?;
        let mut m = w.open_table(META).map_err(|e| e.to_string())?;
        let mut l = w.open_table(LEASED).map_err(|e| e.to_string())?;
        for (_, op) in ops {
            match op {
                Op::Put(k, v) => {
                    t.insert(*k, v.as_slice()).map_err(|e| e.to_string())?;
                    // The ad's own record now says how far it got.
                    l.remove(*k).map_err(|e| e.to_string())?;
                }
                Op::Leased(k, a) => {
                    l.insert(*k, *a).map_err(|e| e.to_string())?;
                }
                Op::Audit(k, v) => {
                    a.insert(*k, v.as_slice()).map_err(|e| e.to_string())?;
                }
                Op::Meta(k, v) => {
                    m.insert(*k, v.as_slice()).map_err(|e| e.to_string())?;
                }
                Op::After(_) => {}
            }
        }
    }
    w.commit().map_err(|e| e.to_string())
}
