//! A gateway started on 127.0.0.1:0 for a test, and helpers to talk to it through the
//! generated clients exactly as a user would.
#![allow(dead_code, missing_docs)]

use adflow_domain::pb::{self, AdEvent, EventType};
use adflow_gateway::Config;
use adflow_store::file::{FileConfig, FileStore};
use adflow_store::{EventStore, StoredEvent};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub type Ingest = pb::event_ingest_client::EventIngestClient<Channel>;
pub type AnalyticsClient = pb::analytics_client::AnalyticsClient<Channel>;

pub struct TestGateway {
    pub addr: SocketAddr,
    pub cfg: Config,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// A config storing events under `dir`, with default everything else.
pub fn config(dir: &Path) -> Config {
    let mut cfg = Config::default();
    // No free-space watermark: a test must not fail because the machine's disk is small
    // (the watermark has its own test).
    cfg.storage.file = FileConfig { dir: dir.join("events"), min_free_mb: 0, ..FileConfig::default() };
    cfg.queue.path = dir.join("queue.redb");
    cfg.metrics.listen = String::new(); // tests run many gateways at once; the metrics test sets its own
    cfg.dashboard.listen = String::new(); // likewise; the dashboard tests set their own
    cfg
}

impl TestGateway {
    pub async fn start(cfg: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = oneshot::channel::<()>();
        let c = cfg.clone();
        let task = tokio::spawn(adflow_gateway::serve(listener, c, async {
            let _ = rx.await;
        }));
        Self { addr, cfg, stop: Some(stop), task }
    }

    pub async fn channel(&self) -> Channel {
        let url = format!("http://{}", self.addr);
        for _ in 0..100 {
            if let Ok(ch) = Channel::from_shared(url.clone()).unwrap().connect().await {
                return ch;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("gateway at {url} did not come up");
    }

    pub async fn ingest(&self) -> Ingest {
        Ingest::new(self.channel().await)
    }

    pub async fn analytics(&self) -> AnalyticsClient {
        AnalyticsClient::new(self.channel().await)
    }

    /// Stops the gateway as SIGTERM would and waits for a clean exit.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.expect("gateway task").expect("gateway exited with an error");
    }

    pub fn events_dir(&self) -> PathBuf {
        self.cfg.storage.file.dir.clone()
    }
}

/// Every event in the store at `dir` (the gateway must be stopped).
pub async fn stored(dir: &Path) -> Vec<StoredEvent> {
    let s = FileStore::open(FileConfig { dir: dir.to_path_buf(), ..FileConfig::default() }).await.unwrap();
    let mut out = Vec::new();
    let mut cur = None;
    loop {
        let p = s.scan(cur, 1000).await.unwrap();
        out.extend(p.events);
        match p.next {
            Some(c) => cur = Some(c),
            None => break,
        }
    }
    s.close().await.unwrap();
    out
}

pub fn now_ms() -> i64 {
    adflow_domain::now_ms()
}

pub fn event(id: &str, ad: &str, t: EventType) -> AdEvent {
    AdEvent {
        event_id: id.into(),
        r#type: t as i32,
        ad_id: ad.into(),
        campaign_id: "cmp-1".into(),
        game_id: "g-1".into(),
        game_family: "RPG-Fantasy".into(),
        user_id: "u-1".into(),
        timestamp_ms: now_ms() - 1000,
        country: "US".into(),
        device: "phone".into(),
        platform: pb::Platform::Android as i32,
        ..Default::default()
    }
}

pub fn batch(events: Vec<AdEvent>) -> pb::SendEventsRequest {
    pb::SendEventsRequest { events, ..Default::default() }
}

/// Events of `ad` counted over the last day, as GetAdStats reports them.
pub async fn day_total(gw: &TestGateway, ad: &str) -> u64 {
    let window = pb::period::Period::Window(pb::Window::LastDay as i32);
    let req = pb::GetAdStatsRequest { ad_id: ad.into(), period: Some(pb::Period { period: Some(window) }) };
    gw.analytics().await.get_ad_stats(req).await.unwrap().into_inner().stats.unwrap().counts.unwrap().total
}
