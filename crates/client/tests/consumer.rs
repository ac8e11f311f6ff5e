//! The event log consumer against a real gateway on 127.0.0.1: group resume after a
//! commit, reconnecting through a gateway restart, filters, the end of a non-following read.

use adflow_client::{Client, Consumer, ConsumerConfig, SenderConfig, StartAt, pb};
use adflow_gateway::Config;
use adflow_store::file::FileConfig;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

struct Gw {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn config(dir: &Path) -> Config {
    let mut cfg = Config::default();
    cfg.storage.file = FileConfig { dir: dir.join("events"), ..FileConfig::default() };
    cfg.queue.path = dir.join("queue.redb");
    cfg.metrics.listen = String::new();
    cfg.workers.in_process = 0;
    cfg
}

async fn start(cfg: Config, addr: &str) -> Gw {
    let mut listener = None;
    for _ in 0..100 {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                listener = Some(l);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let listener = listener.expect("bind");
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(adflow_gateway::serve(listener, cfg, async {
        let _ = rx.await;
    }));
    Gw { addr, stop, task }
}

impl Gw {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// Sends events `prefix-<i>` for i in `ids` (every third one for ad "ad-b", else "ad-a"),
/// acked durably.
async fn send(client: &Client, prefix: &str, ids: std::ops::Range<usize>) {
    let sender = client.event_sender(SenderConfig { max_batch: 50, ..Default::default() });
    for i in ids {
        let ad = if i % 3 == 0 { "ad-b" } else { "ad-a" };
        let e = pb::AdEvent {
            event_id: format!("{prefix}-{i:04}"),
            r#type: pb::EventType::Impression as i32,
            ad_id: ad.into(),
            ..Default::default()
        };
        sender.send(e).unwrap();
    }
    assert!(sender.close().await.is_empty(), "events undelivered");
}

fn ids(b: &pb::ReadBatch) -> Vec<String> {
    b.events.iter().map(|e| e.event.as_ref().unwrap().event_id.clone()).collect()
}

/// Every id of a non-following consumer, to its end.
async fn drain(c: &mut Consumer) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(b) = tokio::time::timeout(Duration::from_secs(30), c.next_batch()).await.unwrap().unwrap()
    {
        out.extend(ids(&b));
    }
    out
}

/// The whole log in commit order.
async fn log(client: &Client) -> Vec<String> {
    let mut c = client.consumer(ConsumerConfig { follow: false, ..Default::default() }).unwrap();
    drain(&mut c).await
}

#[tokio::test]
async fn a_group_resumes_after_its_last_commit_and_sees_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(config(dir.path()), "127.0.0.1:0").await;
    let client = Client::connect_to(format!("http://{}", gw.addr)).await.unwrap();
    send(&client, "g", 0..450).await;
    let all = log(&client).await;
    assert_eq!(all.len(), 450);
    let cfg = ConsumerConfig { follow: false, max_batch_events: 100, ..ConsumerConfig::group("billing") };
    let mut first = client.consumer(cfg.clone()).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 200 {
        seen.extend(ids(&first.next_batch().await.unwrap().expect("a batch")));
    }
    first.commit().await.unwrap();
    // One more batch handed out but not committed: it comes again to the next consumer.
    let uncommitted = ids(&first.next_batch().await.unwrap().expect("a batch"));
    drop(first);
    let mut second = client.consumer(cfg.clone()).unwrap();
    let rest = drain(&mut second).await;
    assert_eq!(rest[..uncommitted.len()], uncommitted[..], "the uncommitted batch is delivered again first");
    seen.extend(rest);
    assert_eq!(seen, all, "the group skipped or repeated committed events");
    second.commit().await.unwrap();
    // Fully committed: a third consumer of the group has nothing left.
    let mut third = client.consumer(cfg).unwrap();
    assert!(drain(&mut third).await.is_empty());
    // A group that never committed starts where it is told to.
    let cfg = ConsumerConfig { follow: false, start: StartAt::Newest, ..ConsumerConfig::group("late") };
    assert!(drain(&mut client.consumer(cfg).unwrap()).await.is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn a_following_consumer_reconnects_through_a_gateway_restart_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(config(dir.path()), "127.0.0.1:0").await;
    let addr = gw.addr;
    let client = Client::connect_to(format!("http://{addr}")).await.unwrap();
    send(&client, "f", 0..300).await;
    let cfg = ConsumerConfig {
        max_batch_events: 64,
        retry_base: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
        ..ConsumerConfig::group("follower")
    };
    let mut c = client.consumer(cfg.clone()).unwrap();
    let mut got = Vec::new();
    while got.len() < 300 {
        let b =
            tokio::time::timeout(Duration::from_secs(30), c.next_batch()).await.unwrap().unwrap().unwrap();
        got.extend(ids(&b));
    }
    c.commit().await.unwrap();
    // The gateway goes away while the consumer follows, and comes back on the same port.
    gw.stop().await;
    let gw = start(config(dir.path()), &addr.to_string()).await;
    send(&client, "f", 300..600).await;
    while got.len() < 600 {
        let b =
            tokio::time::timeout(Duration::from_secs(30), c.next_batch()).await.unwrap().unwrap().unwrap();
        got.extend(ids(&b));
    }
    assert!(c.reconnects() >= 1, "the consumer never reconnected");
    let unique: HashSet<_> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "an event was delivered twice");
    assert_eq!(got, log(&client).await, "the consumer's events differ from the log");
    // The commit made before the restart survived it.
    let committed = client
        .event_log()
        .get_cursor(pb::GetCursorRequest { group: "follower".into() })
        .await
        .unwrap()
        .into_inner()
        .cursor;
    let mut again = client.consumer(ConsumerConfig { follow: false, ..cfg }).unwrap();
    assert_eq!(drain(&mut again).await, got[300..], "the group did not resume at its commit ({committed})");
    // A commit right after another restart rides it out (retried while reconnecting).
    gw.stop().await;
    let gw = start(config(dir.path()), &addr.to_string()).await;
    c.commit().await.unwrap();
    let get = pb::GetCursorRequest { group: "follower".into() };
    let committed = client.event_log().get_cursor(get).await.unwrap().into_inner().cursor;
    assert_eq!(Some(committed.as_str()), c.cursor());
    gw.stop().await;
}

#[tokio::test]
async fn filters_and_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(config(dir.path()), "127.0.0.1:0").await;
    let client = Client::connect_to(format!("http://{}", gw.addr)).await.unwrap();
    send(&client, "x", 0..30).await;
    let cfg = ConsumerConfig { follow: false, ad_ids: vec!["ad-b".into()], ..Default::default() };
    let got = drain(&mut client.consumer(cfg).unwrap()).await;
    let want: Vec<_> =
        log(&client).await.into_iter().filter(|id| id[2..].parse::<usize>().unwrap() % 3 == 0).collect();
    assert_eq!((got.len(), &got), (10, &want));
    // A bad cursor is not retried: it comes back as the gateway's error.
    let cfg = ConsumerConfig { start: StartAt::Cursor("nonsense".into()), ..Default::default() };
    let err = client.consumer(cfg).unwrap().next_batch().await.unwrap_err();
    assert!(err.to_string().contains("cursor"), "{err}");
    // No group: commit is refused.
    let mut c = client.consumer(ConsumerConfig { follow: false, ..Default::default() }).unwrap();
    c.next_batch().await.unwrap();
    assert!(c.commit().await.is_err());
    gw.stop().await;
}
