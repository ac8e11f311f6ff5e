//! The client library against a real gateway on 127.0.0.1.

use adflow_client::{Client, ClientConfig, SenderConfig, TlsOptions, pb};
use adflow_gateway::Config;
use adflow_store::EventStore;
use adflow_store::file::{FileConfig, FileStore};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
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
    cfg.metrics.listen = String::new(); // tests run many gateways at once; the metrics test sets its own
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

async fn stored_ids(dir: &Path) -> Vec<String> {
    let s = FileStore::open(FileConfig { dir: dir.join("events"), ..FileConfig::default() }).await.unwrap();
    let mut out = Vec::new();
    let mut cur = None;
    loop {
        let p = s.scan(cur, 10_000).await.unwrap();
        out.extend(p.events.iter().map(|e| e.event().unwrap().event_id));
        match p.next {
            Some(c) => cur = Some(c),
            None => break,
        }
    }
    s.close().await.unwrap();
    out
}

fn event(ad: &str) -> pb::AdEvent {
    pb::AdEvent { r#type: pb::EventType::Impression as i32, ad_id: ad.into(), ..Default::default() }
}

#[tokio::test]
async fn events_sent_one_by_one_arrive_in_batches_with_generated_ids() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(config(dir.path()), "127.0.0.1:0").await;
    let client = Client::connect_to(format!("http://{}", gw.addr)).await.unwrap();
    let sender = client.event_sender(SenderConfig { max_batch: 100, ..Default::default() });
    for _ in 0..1000 {
        sender.send(event("ad-1")).unwrap();
    }
    sender.flush().await;
    let c = sender.counters();
    assert_eq!(c.acked.load(Ordering::Relaxed), 1000);
    let batches = c.batches.load(Ordering::Relaxed);
    assert!((10..=30).contains(&batches), "{batches} batches for 1000 events");
    assert!(sender.close().await.is_empty());
    gw.stop().await;
    let ids = stored_ids(dir.path()).await;
    assert_eq!(ids.len(), 1000);
    assert!(ids.iter().all(|i| uuid::Uuid::parse_str(i).is_ok_and(|u| u.get_version_num() == 7)));
}

#[tokio::test]
async fn a_gateway_restart_mid_stream_loses_nothing_acked_and_stores_no_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(config(dir.path()), "127.0.0.1:0").await;
    let addr = gw.addr;
    let client = Client::connect_to(format!("http://{addr}")).await.unwrap();
    let sender = client.event_sender(SenderConfig {
        max_batch: 50,
        retry_base: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
        max_attempts: 100,
        ..Default::default()
    });
    let mut sent = HashSet::new();
    let mut gw = Some(gw);
    for i in 0..3000 {
        let mut e = event("ad-r");
        e.event_id = format!("restart-{i}");
        sent.insert(e.event_id.clone());
        sender.send_wait(e).await.unwrap();
        if i == 1000 {
            gw.take().unwrap().stop().await; // the gateway goes away mid-stream
        }
        if i == 1500 {
            gw = Some(start(config(dir.path()), &addr.to_string()).await);
        }
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let undelivered = sender.close().await;
    assert!(undelivered.is_empty(), "{:?}", undelivered.iter().map(|u| &u.error).collect::<Vec<_>>());
    gw.unwrap().stop().await;
    let ids = stored_ids(dir.path()).await;
    let unique: HashSet<_> = ids.iter().cloned().collect();
    assert_eq!(unique.len(), ids.len(), "no event stored twice");
    assert_eq!(unique, sent, "every acked event is stored");
}

#[tokio::test]
async fn resource_exhausted_makes_the_sender_back_off_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.ingest.queue_capacity_events = 100;
    cfg.ingest.max_events_per_request = 100;
    cfg.ingest.max_batch_events = 1_000_000;
    cfg.ingest.max_batch_delay_ms = 200;
    let gw = start(cfg, "127.0.0.1:0").await;
    let client = Client::connect_to(format!("http://{}", gw.addr)).await.unwrap();
    let sender = client.event_sender(SenderConfig { max_batch: 100, max_in_flight: 4, ..Default::default() });
    for _ in 0..1000 {
        sender.send(event("ad-busy")).unwrap();
    }
    sender.flush().await;
    let c = sender.counters();
    assert_eq!(c.acked.load(Ordering::Relaxed), 1000);
    assert!(c.retried.load(Ordering::Relaxed) > 0, "the full pipeline answered RESOURCE_EXHAUSTED");
    assert!(sender.close().await.is_empty());
    gw.stop().await;
    assert_eq!(stored_ids(dir.path()).await.len(), 1000);
}

#[tokio::test]
async fn invalid_events_come_back_with_reasons_and_are_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(config(dir.path()), "127.0.0.1:0").await;
    let client = Client::connect_to(format!("http://{}", gw.addr)).await.unwrap();
    let sender = client.event_sender(SenderConfig::default());
    sender.send(event("ad-ok")).unwrap();
    sender.send(event("")).unwrap();
    let mut bad_country = event("ad-x");
    bad_country.country = "Germany".into();
    sender.send(bad_country).unwrap();
    sender.flush().await;
    let rejected = sender.take_rejected();
    let mut fields: Vec<_> = rejected.iter().map(|r| r.field.as_str()).collect();
    fields.sort();
    assert_eq!(fields, vec!["ad_id", "country"]);
    assert!(rejected.iter().all(|r| !r.message.is_empty() && !r.event.event_id.is_empty()));
    let c = sender.counters();
    assert_eq!((c.acked.load(Ordering::Relaxed), c.rejected.load(Ordering::Relaxed)), (1, 2));
    assert_eq!(c.retried.load(Ordering::Relaxed), 0);
    sender.close().await;
    gw.stop().await;
}

#[tokio::test]
async fn close_drains_what_is_buffered() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(config(dir.path()), "127.0.0.1:0").await;
    let client = Client::connect_to(format!("http://{}", gw.addr)).await.unwrap();
    // A long max delay: nothing leaves the buffer on its own before close().
    let sender = client.event_sender(SenderConfig {
        max_batch: 10_000,
        max_delay: Duration::from_secs(60),
        ..Default::default()
    });
    for _ in 0..500 {
        sender.send(event("ad-c")).unwrap();
    }
    assert_eq!(sender.counters().acked.load(Ordering::Relaxed), 0);
    assert!(sender.close().await.is_empty());
    gw.stop().await;
    assert_eq!(stored_ids(dir.path()).await.len(), 500);
}

#[tokio::test]
async fn a_stopped_gateway_gives_the_events_back_after_the_last_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(config(dir.path()), "127.0.0.1:0").await;
    let client = Client::connect_to(format!("http://{}", gw.addr)).await.unwrap();
    gw.stop().await;
    let sender = client.event_sender(SenderConfig {
        max_attempts: 3,
        retry_base: Duration::from_millis(5),
        busy_pause: Duration::from_millis(5),
        ..Default::default()
    });
    for _ in 0..7 {
        sender.send(event("ad-lost")).unwrap();
    }
    let undelivered = sender.close().await;
    assert_eq!(undelivered.iter().map(|u| u.events.len()).sum::<usize>(), 7);
    assert!(undelivered[0].error.contains("Unavailable"), "{}", undelivered[0].error);
}

#[tokio::test]
async fn typed_helpers_submit_watch_and_read_analytics() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.workers.in_process = 1;
    let gw = start(cfg, "127.0.0.1:0").await;
    let client = Client::connect_to(format!("http://{}", gw.addr)).await.unwrap();
    let ad = pb::AdSpec {
        title: "Raid the keep tonight".into(),
        game_family: "RPG-Fantasy".into(),
        priority: 3,
        ..Default::default()
    };
    let id = client.submit_ad(ad).await.unwrap().id;
    use futures::StreamExt;
    let mut watch = client.watch_ad(&id).await.unwrap();
    let mut last = None;
    while let Some(Ok(a)) = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.unwrap() {
        last = Some(a.status);
    }
    assert_eq!(last, Some(pb::AdStatus::Completed as i32));
    assert!(client.get_ad(&id).await.unwrap().analysis.is_some());
    let sender = client.event_sender(SenderConfig::default());
    for _ in 0..3 {
        sender.send(event(&id)).unwrap();
    }
    sender.close().await;
    let stats = client.ad_stats(&id, pb::Window::LastHour).await.unwrap();
    assert_eq!(stats.counts.unwrap().impressions, 3);
    let top = client.top_ads(pb::Metric::Impressions, 5, pb::Window::LastHour).await.unwrap();
    assert_eq!(top[0].id, id);
    gw.stop().await;
}

#[tokio::test]
async fn tls_with_a_private_ca_an_api_key_and_a_traceparent() {
    // A TLS gRPC server (health only) with a certificate made for this test.
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let identity = tonic::transport::Identity::from_pem(&cert_pem, &key_pem);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let seen = std::sync::Arc::new(std::sync::Mutex::new((None::<String>, None::<String>)));
    let seen2 = seen.clone();
    let check = move |req: tonic::Request<()>| {
        let get = |k: &str| req.metadata().get(k).and_then(|v| v.to_str().ok()).map(String::from);
        *seen2.lock().unwrap() = (get("authorization"), get("traceparent"));
        Ok(req)
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .unwrap()
            .layer(tonic::service::interceptor::InterceptorLayer::new(check))
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut cfg = ClientConfig::new(format!("https://localhost:{}", addr.port()));
    cfg.tls = Some(TlsOptions { ca_pem: Some(cert_pem.into_bytes()), domain: Some("localhost".into()) });
    cfg.api_key = Some("k-123".into());
    cfg.trace_calls = true;
    let client = Client::connect(cfg).await.unwrap();
    let mut h = tonic_health::pb::health_client::HealthClient::new(client.channel());
    let r =
        h.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(r.status(), tonic_health::pb::health_check_response::ServingStatus::Serving);
    let (auth, trace) = seen.lock().unwrap().clone();
    assert_eq!(auth.as_deref(), Some("Bearer k-123"));
    let trace = trace.expect("a traceparent was sent");
    assert!(trace.starts_with("00-") && trace.ends_with("-01") && trace.len() == 55, "{trace}");
}
