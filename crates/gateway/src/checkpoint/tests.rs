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
        for e in batch {
            self.dedup.insert(key(e.view().unwrap().event_id), NOW);
        }
        record_commit(&self.analytics, Some(&self.mark), &self.store, batch, NOW);
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
    let saved = f.cp.save(&f.analytics, &f.mark, Some(&f.dedup), NOW).unwrap().unwrap();
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
    f.cp.save(&f.analytics, &f.mark, Some(&f.dedup), NOW).unwrap().unwrap();
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
    f.cp.save(&f.analytics, &f.mark, Some(&f.dedup), NOW).unwrap().unwrap();
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
