use super::*;
use adflow_domain::analytics::Scope;
use adflow_domain::dedup::key;
use adflow_domain::pb::{AdEvent, EventType};
use adflow_store::StoredEvent;
use adflow_store::file::{FileConfig, FileStore};

const NOW: i64 = 1_800_000_000_000;

fn events(from: usize, n: usize) -> Vec<StoredEvent> {
    (from..from + n)
        .map(|i| {
            let e = AdEvent {
                event_id: format!("e{i}"),
                ad_id: format!("ad-{}", i % 7),
                r#type: EventType::Impression as i32,
                timestamp_ms: NOW - i as i64,
                ..Default::default()
            };
            StoredEvent::encode(NOW, &e)
        })
        .collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: FileStore,
    analytics: RwLock<Analytics>,
    mark: Mark,
    dedup: Window,
    cp: Checkpoints,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let cfg = FileConfig { dir: dir.path().to_path_buf(), ..Default::default() };
    let store = FileStore::open(cfg).await.unwrap();
    Fixture {
        cp: Checkpoints::new(dir.path().join("checkpoint.bin")),
        _dir: dir,
        store,
        analytics: RwLock::new(Analytics::new(Retention::default())),
        mark: Mark::default(),
        dedup: Window::new(600_000, 1_000_000),
    }
}

impl Fixture {
    async fn commit(&self, batch: &[StoredEvent]) {
        self.store.append(batch).await.unwrap();
        let keys: Vec<u64> = batch.iter().map(|e| key(e.view().unwrap().event_id)).collect();
        for &k in &keys {
            self.dedup.insert(k, NOW);
        }
        record_commit(&self.analytics, Some(&self.mark), &self.store, batch, keys, NOW);
    }
    /// Saves now; panics unless something was saved.
    fn save(&self) -> Saved {
        self.cp.save(&self.analytics, &self.mark, Some(&self.dedup), NOW).unwrap().unwrap()
    }
    fn total(a: &Analytics) -> u64 {
        a.sum(Scope::All, 0, NOW + 1, NOW).total()
    }
}

#[tokio::test]
async fn a_saved_checkpoint_gives_back_the_counters_the_dedup_ids_and_the_position() {
    let f = fixture().await;
    assert!(f.cp.save(&f.analytics, &f.mark, Some(&f.dedup), NOW).unwrap().is_none(), "nothing to save yet");
    f.commit(&events(0, 500)).await;
    f.commit(&events(500, 700)).await;
    let saved = f.save();
    assert_eq!(Some(saved.cursor.clone()), f.store.end_cursor());

    let fresh = Window::new(600_000, 1_000_000);
    let l = f.cp.load(&Retention::default(), Some(&fresh), &f.store, NOW).unwrap().unwrap();
    assert_eq!(l.cursor, saved.cursor);
    assert_eq!(Fixture::total(&l.analytics), 1_200);
    assert_eq!(l.dedup_ids, 1_200);
    assert!(!fresh.insert(key("e1199"), NOW), "a saved id is remembered");
    // Reading on from the position finds nothing more.
    assert!(f.store.scan(Some(l.cursor), 10).await.unwrap().events.is_empty());
}

#[tokio::test]
async fn a_damaged_or_truncated_checkpoint_is_refused_not_half_used() {
    let f = fixture().await;
    f.commit(&events(0, 300)).await;
    f.save();
    let good = std::fs::read(f.cp.path()).unwrap();
    for at in [3, 20, good.len() / 2, good.len() - 2] {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        std::fs::write(f.cp.path(), &bad).unwrap();
        let w = Window::new(600_000, 1_000_000);
        let e = f.cp.load(&Retention::default(), Some(&w), &f.store, NOW).err().expect("refused");
        assert!(e.to_string().contains("CRC"), "flip at {at}: {e}");
    }
    std::fs::write(f.cp.path(), &good[..good.len() - 100]).unwrap();
    assert!(f.cp.load(&Retention::default(), None, &f.store, NOW).is_err());
    std::fs::remove_file(f.cp.path()).unwrap();
    assert!(f.cp.load(&Retention::default(), None, &f.store, NOW).unwrap().is_none());
}

#[tokio::test]
async fn a_checkpoint_past_the_stores_end_or_for_another_window_is_refused() {
    let f = fixture().await;
    f.commit(&events(0, 300)).await;
    f.save();
    // Another (empty) store: the position is past its end.
    let other = tempfile::tempdir().unwrap();
    let empty =
        FileStore::open(FileConfig { dir: other.path().to_path_buf(), ..Default::default() }).await.unwrap();
    let e = f.cp.load(&Retention::default(), None, &empty, NOW).err().expect("refused");
    assert!(e.to_string().contains("past the end"), "{e}");
    // A different dedup window length.
    let w = Window::new(60_000, 1_000_000);
    assert!(f.cp.load(&Retention::default(), Some(&w), &f.store, NOW).is_err());
}

fn journal_len(f: &Fixture) -> u64 {
    std::fs::metadata(f.cp.journal_path()).map(|m| m.len()).unwrap_or(0)
}

fn load_fresh(f: &Fixture) -> (Loaded, Window) {
    let w = Window::new(600_000, 1_000_000);
    let l = f.cp.load(&Retention::default(), Some(&w), &f.store, NOW).unwrap().unwrap();
    (l, w)
}

#[tokio::test]
async fn later_saves_append_only_what_changed_and_a_restart_reads_base_and_journal() {
    let f = fixture().await;
    f.commit(&events(0, 3000)).await;
    let first = f.save();
    let base = std::fs::read(f.cp.path()).unwrap();
    assert_eq!(journal_len(&f), 0, "a base starts an empty journal");
    f.commit(&events(3000, 200)).await;
    let second = f.save();
    f.commit(&events(3200, 100)).await;
    let third = f.save();
    assert_eq!(std::fs::read(f.cp.path()).unwrap(), base, "the base is not rewritten");
    assert_eq!(journal_len(&f), second.bytes + third.bytes);
    assert!(
        second.bytes < first.bytes / 4,
        "a record holds the new ids only: {} vs {}",
        second.bytes,
        first.bytes
    );
    let (l, w) = load_fresh(&f);
    assert_eq!(Some(l.cursor.clone()), f.store.end_cursor());
    assert_eq!(l.cursor, third.cursor);
    assert_eq!(Fixture::total(&l.analytics), 3300);
    assert_eq!(l.dedup_ids, 3300);
    for id in ["e0", "e2999", "e3000", "e3199", "e3299"] {
        assert!(!w.insert(key(id), NOW), "{id} is remembered");
    }
}

#[tokio::test]
async fn a_torn_or_damaged_journal_record_costs_only_a_longer_replay() {
    let f = fixture().await;
    f.commit(&events(0, 300)).await;
    f.save();
    f.commit(&events(300, 200)).await;
    let second = f.save();
    f.commit(&events(500, 100)).await;
    f.save();
    let good = std::fs::read(f.cp.journal_path()).unwrap();
    let torn = &good[..good.len() - 5];
    let mut flipped = good.clone();
    flipped[good.len() - 30] ^= 0x08;
    for bad in [torn.to_vec(), flipped] {
        std::fs::write(f.cp.journal_path(), &bad).unwrap();
        let (l, w) = load_fresh(&f);
        // The last valid record's position: the store is read on from there.
        assert_eq!(l.cursor, second.cursor);
        assert_eq!(Fixture::total(&l.analytics), 500);
        assert!(!w.insert(key("e499"), NOW), "ids of valid records are remembered");
        assert!(w.insert(key("e550"), NOW), "ids after them come from the store replay");
        let rest = f.store.scan(Some(l.cursor.clone()), 1000).await.unwrap().events;
        assert_eq!(rest.len(), 100, "what the torn record covered is still read from the store");
    }
}

#[tokio::test]
async fn a_restart_writes_a_new_base_and_ignores_the_old_journal() {
    let f = fixture().await;
    f.commit(&events(0, 300)).await;
    f.save();
    f.commit(&events(300, 200)).await;
    f.save();
    let old_journal = std::fs::read(f.cp.journal_path()).unwrap();
    assert!(!old_journal.is_empty());
    // A restarted gateway's first save is a base; a crash right after its rename leaves
    // the old journal in place, whose records name the old base.
    let restarted = Checkpoints::new(f.cp.path().to_path_buf());
    f.commit(&events(500, 10)).await;
    let base = restarted.save(&f.analytics, &f.mark, Some(&f.dedup), NOW).unwrap().unwrap();
    assert_eq!(journal_len(&f), 0);
    std::fs::write(f.cp.journal_path(), &old_journal).unwrap();
    let (l, _) = load_fresh(&f);
    assert_eq!(l.cursor, base.cursor);
    assert_eq!(Fixture::total(&l.analytics), 510);
    assert_eq!(l.dedup_ids, 510);
}

#[tokio::test]
async fn after_a_failed_save_the_next_one_writes_a_whole_base() {
    let f = fixture().await;
    f.commit(&events(0, 300)).await;
    f.save();
    let base = std::fs::read(f.cp.path()).unwrap();
    f.commit(&events(300, 200)).await;
    // The journal cannot be appended to: this save's ids are lost to it...
    std::fs::remove_file(f.cp.journal_path()).unwrap();
    assert!(f.cp.save(&f.analytics, &f.mark, Some(&f.dedup), NOW).is_err());
    f.commit(&events(500, 100)).await;
    // ...so the next save writes the whole window again, which holds them.
    f.save();
    assert_ne!(std::fs::read(f.cp.path()).unwrap(), base, "a new base");
    let (l, w) = load_fresh(&f);
    assert_eq!(l.dedup_ids, 600);
    assert!(!w.insert(key("e350"), NOW), "the ids of the failed save are in the new base");
}

#[tokio::test]
async fn a_journal_missing_a_middle_record_is_used_only_up_to_the_gap() {
    let f = fixture().await;
    f.commit(&events(0, 300)).await;
    f.save();
    let mut sizes = Vec::new();
    let mut cursors = Vec::new();
    for i in 0..3 {
        f.commit(&events(300 + i * 100, 100)).await;
        let s = f.save();
        sizes.push(s.bytes as usize);
        cursors.push(s.cursor);
    }
    // An operator (or a broken disk) removes the second record whole: its framing and CRC
    // are intact around the gap, but the ids it held are not in the third.
    let j = std::fs::read(f.cp.journal_path()).unwrap();
    let cut = [&j[..sizes[0]], &j[sizes[0] + sizes[1]..]].concat();
    std::fs::write(f.cp.journal_path(), cut).unwrap();
    let (l, w) = load_fresh(&f);
    assert_eq!(l.cursor, cursors[0], "the position before the gap");
    assert_eq!(Fixture::total(&l.analytics), 400);
    assert!(w.insert(key("e450"), NOW), "the missing record's ids come from the store replay");
}
