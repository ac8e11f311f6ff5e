//! Builds and runs the gateway: opens the store, rebuilds analytics and the dedup window
//! from it, starts the pipeline, serves EventIngest, Analytics, grpc.health.v1 and
//! reflection (v1 and v1alpha, so grpcurl 1.8 works), and shuts down in order:
//! signal -> health NOT_SERVING -> stop accepting -> end open streams -> drain the
//! pipeline -> close the store.

use crate::checkpoint::{Checkpoints, Sources};
use crate::config::Config;
use crate::pipeline::{Pipeline, Window};
use crate::services::ads::AdsService;
use crate::services::agent::AgentSvc;
use crate::services::queue_control::QueueControlService;
use crate::services::workers::{WorkerHub, WorkersService};
use crate::services::{analytics::AnalyticsService, ingest::IngestService};
use crate::worker_pool::WorkerPool;
use adflow_domain::analytics::Analytics;
use adflow_domain::now_ms;
use adflow_domain::pb::ad_service_server::AdServiceServer;
use adflow_domain::pb::agent_service_server::AgentServiceServer;
use adflow_domain::pb::analytics_server::AnalyticsServer;
use adflow_domain::pb::queue_control_server::QueueControlServer;
use adflow_domain::pb::worker_service_server::WorkerServiceServer;
use adflow_proto::raw_ingest::event_ingest_server::EventIngestServer;
use adflow_queue::{AdQueue, Leases};
use adflow_store::EventStore;
use adflow_store::counters::{CounterSource, Local};
use adflow_worker::run::WorkerConfig;
use anyhow::Context;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The names health is reported under ("" is the whole server).
const SERVICES: [&str; 8] = [
    "",
    "adflow.v1.EventIngest",
    "adflow.v1.EventLog",
    "adflow.v1.Analytics",
    "adflow.v1.AdService",
    "adflow.v1.QueueControl",
    "adflow.v1.WorkerService",
    "adflow.v1.AgentService",
];

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    for s in SERVICES {
        reporter.set_service_status(s, status).await;
    }
}

/// Follows the store's health into grpc.health.v1 until `stop` turns true.
/// A stable token for this gateway's shared-dedup claims, kept beside its spill buffer
/// (a random one when the directory cannot be written).
fn node_token(spill_dir: &std::path::Path) -> String {
    let path = spill_dir.join("node.token");
    if let Ok(t) = std::fs::read_to_string(&path)
        && !t.trim().is_empty()
    {
        return t.trim().to_owned();
    }
    let t = uuid::Uuid::new_v4().simple().to_string();
    if let Err(e) = std::fs::create_dir_all(spill_dir).and_then(|_| std::fs::write(&path, &t)) {
        tracing::warn!(error = %e, path = %path.display(), "could not keep the dedup token; using a new one per run");
    }
    t
}

/// The dedup part of the health report, the effective window gauge, and a WARN when the
/// memory bound starts (or stops) cutting the window short.
fn dedup_health(w: &Window, warned: &mut bool) -> String {
    let now = now_ms();
    let eff = w.effective_window_ms(now);
    metrics::gauge!("dedup_effective_window_seconds").set(eff as f64 / 1000.0);
    metrics::gauge!("dedup_ids").set(w.len() as f64);
    metrics::gauge!("dedup_memory_bytes").set(w.memory_bytes() as f64);
    metrics::counter!("dedup_evicted_early_total").absolute(w.evicted_early());
    let short = eff < w.window_ms();
    if short && !*warned {
        tracing::warn!(
            effective_window_secs = eff / 1000,
            window_secs = w.window_ms() / 1000,
            capacity_ids = w.capacity(),
            "dedup window cut short by its memory budget (ingest.dedup.max_memory_mb): retries older than the effective window are stored again"
        );
    } else if !short && *warned {
        tracing::info!(window_secs = w.window_ms() / 1000, "dedup window holds its full length again");
    }
    *warned = short;
    format!(
        "dedup: {} ids, window {} s, effective {} s{}",
        w.len(),
        w.window_ms() / 1000,
        eff / 1000,
        if short { " (cut short by max_memory_mb)" } else { "" }
    )
}

async fn watch_health(
    store: Arc<dyn EventStore>,
    dedup: Option<Arc<Window>>,
    shared: Option<Arc<crate::shared_dedup::SharedDedup>>,
    text: adflow_telemetry::HealthText,
    reporter: HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    let mut last = None;
    let mut warned = false;
    loop {
        let h = store.health().await;
        let mut report = format!("store ({}): {}\n", store.backend(), h.detail);
        if let Some(w) = &dedup {
            report += &dedup_health(w, &mut warned);
            report.push('\n');
        }
        if let Some(s) = &shared {
            s.flush_backlog().await;
            let b = s.backlog();
            metrics::gauge!("dedup_backlog_ids").set(b as f64);
            report += &format!("shared dedup: {b} ids of stored events waiting to be recorded in Redis\n");
        }
        *text.write().unwrap_or_else(|p| p.into_inner()) = report;
        if last.as_ref() != Some(&h.ok) {
            if h.ok {
                tracing::info!(backend = store.backend(), detail = %h.detail, "event store healthy: SERVING");
            } else {
                tracing::warn!(backend = store.backend(), detail = %h.detail, "event store unhealthy: NOT_SERVING");
            }
            let status = if h.ok { ServingStatus::Serving } else { ServingStatus::NotServing };
            set_health(&reporter, status).await;
            last = Some(h.ok);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Redelivers or dead-letters expired leases, four times a second.
async fn expire_leases(queue: Arc<dyn Leases>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let expired = queue.expire(now_ms()).await;
                if expired.is_empty() {
                    continue;
                }
                metrics::counter!("leases_expired_total").increment(expired.len() as u64);
                let dead = expired.iter().filter(|e| e.dead_lettered).count();
                tracing::info!(expired = expired.len(), dead_lettered = dead, "leases expired; ads redelivered or dead-lettered");
                if adflow_telemetry::trace::enabled() {
                    for e in &expired {
                        let span = tracing::info_span!("lease_expired", ad.id = %e.ad_id, lease.id = e.lease_id, dead_lettered = e.dead_lettered);
                        adflow_telemetry::set_parent(&span, &e.traceparent);
                    }
                }
            }
            _ = stop.changed() => return,
        }
    }
}

/// The TLS identity when `server.tls_cert_path` is set.
fn load_tls(cfg: &Config) -> anyhow::Result<Option<tonic::transport::Identity>> {
    if cfg.server.tls_cert_path.is_empty() {
        return Ok(None);
    }
    let cert = std::fs::read(&cfg.server.tls_cert_path)
        .with_context(|| format!("reading {} (server.tls_cert_path)", cfg.server.tls_cert_path))?;
    let key = std::fs::read(&cfg.server.tls_key_path)
        .with_context(|| format!("reading {} (server.tls_key_path)", cfg.server.tls_key_path))?;
    Ok(Some(tonic::transport::Identity::from_pem(cert, key)))
}

/// How the in-process workers reach this gateway (loopback, its TLS, their own key).
fn worker_connection(cfg: &Config, addr: std::net::SocketAddr, key: &str) -> adflow_client::ClientConfig {
    let host = if addr.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let tls = !cfg.server.tls_cert_path.is_empty();
    let mut c = adflow_client::ClientConfig::new(format!("{}://{host}", if tls { "https" } else { "http" }));
    if tls {
        // Trust the CA that signed the certificate when given; a self-signed
        // certificate can be its own trust anchor.
        let ca = match cfg.server.tls_ca_path.as_str() {
            "" => &cfg.server.tls_cert_path,
            ca => ca,
        };
        c.tls = Some(adflow_client::TlsOptions {
            ca_pem: std::fs::read(ca).ok(),
            domain: Some(cfg.server.tls_domain.clone()),
        });
    }
    c.api_key = Some(key.to_owned());
    c
}

/// Runs the gateway on `listener` until `shutdown` completes, then stops cleanly.
pub async fn serve(
    listener: TcpListener,
    cfg: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    // Install the recorder before anything records (the store's recovery and the
    // start-up rebuild report damage; metrics recorded earlier would be lost).
    let prometheus = adflow_telemetry::prometheus();
    crate::metrics::describe();
    let (stop_tx, stop_rx) = watch::channel(false);
    // /metrics and /healthz answer from the start, during recovery and the rebuild too.
    let health_text: adflow_telemetry::HealthText = Default::default();
    *health_text.write().unwrap_or_else(|p| p.into_inner()) =
        "starting: opening the event store and rebuilding analytics and the dedup window\n".into();
    let metrics_task = if cfg.metrics.listen.is_empty() {
        None
    } else {
        let l = TcpListener::bind(&cfg.metrics.listen)
            .await
            .with_context(|| format!("binding {} (metrics.listen)", cfg.metrics.listen))?;
        tracing::info!(addr = %l.local_addr()?, "Prometheus metrics on /metrics");
        tracing::info!(addr = %l.local_addr()?, "health report on /healthz");
        Some(tokio::spawn(adflow_telemetry::serve_metrics_and_health(
            l,
            prometheus,
            Some(health_text.clone()),
            stop_rx.clone(),
        )))
    };
    let shared_counters = cfg.analytics.shared.then(|| cfg.analytics.clone());
    let opened =
        adflow_store::open(&cfg.storage, shared_counters).await.context("opening the event store")?;
    let (store, resilient) = (opened.store, opened.resilient);
    metrics::counter!("batches_processed_total", "backend" => store.backend()).increment(0);
    let analytics = Arc::new(RwLock::new(Analytics::new(cfg.analytics.clone())));
    // Shared counters live in the backend; otherwise this gateway's memory answers.
    let local_analytics = opened.counters.is_none().then(|| analytics.clone());
    let counters: Arc<dyn CounterSource> = match opened.counters {
        Some(c) => {
            tracing::info!(backend = store.backend(), "analytics counters are shared through the backend");
            c
        }
        None => Arc::new(Local(analytics.clone())),
    };
    let d = &cfg.ingest.dedup;
    let share_ids = d.shared.unwrap_or(cfg.storage.backend == adflow_store::Backend::Redis);
    let dedup = (d.enabled && !share_ids)
        .then(|| Arc::new(Window::with_budget(d.window_secs as i64 * 1000, d.max_memory_mb << 20)));
    if let Some(w) = &dedup {
        tracing::info!(
            window_secs = d.window_secs,
            max_memory_mb = d.max_memory_mb,
            capacity_ids = w.capacity(),
            "dedup window: holds window_secs up to capacity_ids / window_secs events per second"
        );
    }
    let shared = if d.enabled && share_ids {
        let s = crate::shared_dedup::SharedDedup::connect(
            &cfg.storage.redis.target(),
            "{adflow}:dedup:",
            d.window_secs,
        )
        .await
        .with_context(|| {
            format!("connecting the shared dedup to {} (storage.redis.url)", cfg.storage.redis.url)
        })?
        .with_token(&node_token(&cfg.storage.resilience.spill_dir))
        .with_claim_secs(d.claim_secs);
        // Events in the same Redis: commits settle their claims in their own transaction.
        let s = if cfg.storage.backend == adflow_store::Backend::Redis {
            s.with_events_stream(&cfg.storage.redis.stream_key)
        } else {
            s
        };
        tracing::info!(url = %cfg.storage.redis.url, "dedup ids are shared through Redis");
        let s = Arc::new(s);
        s.start_flusher();
        if let Some(r) = &resilient {
            r.set_replay_guard(s.clone());
        }
        Some(s)
    } else {
        None
    };
    let started = Instant::now();
    let checkpoints = (cfg.checkpoint.enabled
        && local_analytics.is_some()
        && cfg.storage.backend == adflow_store::Backend::File)
        .then(|| Arc::new(Checkpoints::new(cfg.storage.file.dir.join("checkpoint.bin"))));
    let (from, dedup) = match &checkpoints {
        Some(cp) => crate::startup::load_checkpoint(cp, &cfg, &*store, &analytics, dedup),
        None => (None, dedup),
    };
    let resumed = from.is_some();
    let replayed =
        crate::startup::rebuild(&*store, local_analytics.as_deref(), dedup.as_deref(), from).await?;
    tracing::info!(
        events = replayed,
        from_checkpoint = resumed,
        dedup_ids = dedup.as_ref().map(|d| d.len()).unwrap_or(0),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "analytics and dedup window rebuilt from the event store"
    );

    let pipeline = Arc::new(Pipeline::start(
        cfg.ingest.clone(),
        cfg.validation.clone(),
        store.clone(),
        local_analytics,
        dedup.clone(),
        shared.clone(),
        resilient.clone(),
    ));
    if resumed {
        tokio::spawn(crate::startup::scrub(store.clone(), stop_rx.clone()));
    }
    // The analytics now cover the whole store: a checkpoint taken before the next commit
    // (e.g. at an idle shutdown) is valid too.
    if let Some(m) = pipeline.mark() {
        m.lock().unwrap_or_else(|p| p.into_inner()).cursor = store.end_cursor();
    }
    let checkpoint_task = match (&checkpoints, pipeline.mark()) {
        (Some(cp), Some(mark)) => {
            let src = Sources { analytics: analytics.clone(), mark, dedup: dedup.clone() };
            let p = pipeline.clone();
            let committed = move || p.counters().committed.load(Ordering::Relaxed);
            let task = tokio::spawn(crate::checkpoint::run(
                cp.clone(),
                src.clone(),
                cfg.checkpoint.clone(),
                committed,
                stop_rx.clone(),
            ));
            Some((cp.clone(), src, task))
        }
        _ => None,
    };
    let queue: Arc<dyn AdQueue> =
        adflow_queue::open(&cfg.queue, &cfg.storage).await.context("opening the ad queue")?;
    // Remote backends: replay the spill buffer whenever the backend is reachable. It
    // keeps running until the pipeline has flushed (see the end of this function).
    let (drain_stop_tx, drain_stop_rx) = watch::channel(false);
    let drain =
        resilient.clone().map(|r| tokio::spawn(r.drain_loop(Duration::from_millis(250), drain_stop_rx)));
    let expiry = tokio::spawn(expire_leases(queue.clone(), stop_rx.clone()));
    let hub = Arc::new(WorkerHub::new(queue.clone(), counters.clone(), stop_rx.clone()));
    let sampler = tokio::spawn(crate::metrics::sample(
        queue.clone(),
        hub.clone(),
        store.clone(),
        resilient.clone(),
        stop_rx.clone(),
    ));
    let (reporter, health) = tonic_health::server::health_reporter();
    let health_task = tokio::spawn(watch_health(
        store.clone(),
        dedup.clone(),
        shared.clone(),
        health_text.clone(),
        reporter.clone(),
        stop_rx.clone(),
    ));

    let max = cfg.server.max_message_bytes;
    let eventlog_svc = adflow_proto::raw_eventlog::event_log_server::EventLogServer::new(
        crate::services::eventlog::EventLogService::new(store.clone(), stop_rx.clone()),
    )
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);
    let ingest =
        EventIngestServer::new(IngestService::new(pipeline.clone(), cfg.ingest.stream_max_inflight, stop_rx))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
    let analytics_impl = Arc::new(AnalyticsService::new(counters.clone()));
    let analytics_svc = AnalyticsServer::from_arc(analytics_impl.clone())
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let ads_impl = Arc::new(AdsService::new(queue.clone()));
    let ads_svc = AdServiceServer::from_arc(ads_impl.clone())
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let control = Arc::new(QueueControlService::new(queue.clone(), hub.clone()));
    let control_svc = QueueControlServer::from_arc(control.clone()).max_encoding_message_size(max);
    let workers_svc = WorkerServiceServer::new(WorkersService::new(hub.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(adflow_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().context("building reflection v1")?;
    let reflection_v1alpha = reflection().build_v1alpha().context("building reflection v1alpha")?;

    // In-process workers authenticate with a key made for this run only.
    let worker_key = uuid::Uuid::new_v4().simple().to_string();
    let template = WorkerConfig {
        gateway: worker_connection(&cfg, addr, &worker_key),
        worker_id: String::new(),
        partitions: cfg.workers.partitions.clone(),
        concurrency: cfg.workers.concurrency,
        analysis: cfg.analysis.clone(),
        max_backoff: Duration::from_secs(2),
    };
    let pool = WorkerPool::new(template);
    let (signalled_tx, mut signalled_rx) = watch::channel(false);
    let stop_reporter = reporter.clone();
    let signal_pool = pool.clone();
    let agent_ctx = crate::agent::executor::Ctx {
        control: control.clone(),
        queue: queue.clone(),
        pool: pool.clone(),
        pipeline: pipeline.clone(),
        analytics: counters.clone(),
    };
    let llm = crate::agent::llm::Llm::from_config(&cfg.agent);
    if llm.is_some() {
        tracing::info!(url = %cfg.agent.llm_url, model = %cfg.agent.llm_model, "agent translates with an LLM first, the parser as fallback");
    }
    let agent_impl = Arc::new(AgentSvc::new(agent_ctx, llm, &cfg.agent));
    let agent_svc = AgentServiceServer::from_arc(agent_impl.clone()).max_encoding_message_size(max);
    let signal = async move {
        shutdown.await;
        tracing::info!("shutdown requested: NOT_SERVING, no new connections, ending open streams");
        // In-process workers hand their leases back first, then every stream is closed.
        signal_pool.scale(0).await;
        let _ = stop_tx.send(true);
        set_health(&stop_reporter, ServingStatus::NotServing).await;
        let _ = signalled_tx.send(true);
    };
    let authz = Arc::new(crate::auth::Authz::new(
        &cfg.auth,
        &[("in-process-workers".into(), worker_key.clone(), crate::auth::Role::Worker)],
    ));
    // The web dashboard calls these same service objects, checked by the same Authz.
    let dashboard = crate::dashboard::start(
        &cfg.dashboard,
        crate::dashboard::Parts {
            services: crate::dashboard::api::Services {
                analytics: analytics_impl,
                ads: ads_impl,
                control,
                agent: agent_impl,
            },
            authz: authz.clone(),
            auth_enabled: cfg.auth.enabled,
            pipeline: pipeline.clone(),
        },
        signalled_rx.clone(),
    )
    .await?;
    if cfg.auth.enabled {
        tracing::info!(
            keys = cfg.auth.keys.len(),
            rate_limit_per_second = cfg.auth.rate_limit_per_second,
            "access control on"
        );
    } else {
        tracing::warn!(
            "ACCESS CONTROL IS OFF: every caller may use every RPC. Set [auth] enabled = true with keys before exposing this gateway."
        );
    }
    let tls = load_tls(&cfg)?;
    if tls.is_some() && !cfg.server.tls_ca_path.is_empty() {
        std::fs::metadata(&cfg.server.tls_ca_path)
            .with_context(|| format!("reading {} (server.tls_ca_path)", cfg.server.tls_ca_path))?;
    } else if tls.is_some() && cfg.workers.in_process > 0 {
        tracing::info!(
            "in-process workers trust server.tls_cert_path itself; if it is signed by a CA, set server.tls_ca_path"
        );
    }
    let incoming = crate::conn_guard::incoming(
        listener,
        crate::conn_guard::Limits {
            max_connections: cfg.server.max_connections,
            handshake_timeout: Duration::from_millis(cfg.server.handshake_timeout_ms),
        },
    );
    let mut builder = Server::builder();
    if let Some(identity) = tls {
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .context("TLS settings")?;
        tracing::info!(cert = %cfg.server.tls_cert_path, "TLS on");
    }
    let server = builder
        .layer(crate::rpc_layer::RpcLayer { spans: adflow_telemetry::trace::enabled() })
        .layer(crate::auth::AuthLayer(authz))
        .layer(crate::panic_layer::PanicLayer) // a handler panic becomes INTERNAL, logged
        .concurrency_limit_per_connection(cfg.server.concurrency_limit_per_connection)
        // Windows bound what a client can push ahead of us (memory during disk stalls and
        // overload): 1 MiB / 512 KiB keep loopback throughput and cut the 2x stream
        // overload's RSS by ~50 MB against 4 MiB / 2 MiB (BENCHMARKS.md, memory).
        .initial_connection_window_size(Some(cfg.server.http2_connection_window_kib << 10))
        .initial_stream_window_size(Some(cfg.server.http2_stream_window_kib << 10))
        .max_concurrent_streams(Some(cfg.server.max_concurrent_streams))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        // A peer that does not answer a keepalive ping within 20 s is dropped.
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(ingest)
        .add_service(eventlog_svc)
        .add_service(analytics_svc)
        .add_service(ads_svc)
        .add_service(control_svc)
        .add_service(agent_svc)
        .add_service(workers_svc)
        .serve_with_incoming_shutdown(incoming, signal);
    tracing::info!(%addr, backend = store.backend(), "adflow gateway listening");
    let mut server = tokio::spawn(server);
    pool.scale(cfg.workers.in_process).await;

    let grace = Duration::from_millis(cfg.server.shutdown_grace_ms);
    tokio::select! {
        res = &mut server => res.context("server task")?.context("gRPC server failed")?,
        _ = async { signalled_rx.wait_for(|s| *s).await.map(|_| ()) } => {
            match tokio::time::timeout(grace, &mut server).await {
                Ok(res) => res.context("server task")?.context("gRPC server failed")?,
                Err(_) => {
                    tracing::warn!(grace_ms = cfg.server.shutdown_grace_ms, "connections still open after the grace period; closing them");
                    server.abort();
                }
            }
        }
    }
    pool.scale(0).await;
    let _ = expiry.await;
    let _ = sampler.await;
    if let Some(m) = metrics_task {
        let _ = m.await;
    }
    if let Some(d) = dashboard {
        let _ = d.await;
    }
    pipeline.shutdown().await;
    if let Some((cp, src, task)) = checkpoint_task {
        let _ = task.await;
        // Everything accepted is committed: the next start reads nothing back.
        src.save(&cp, "shutdown").await;
    }
    let _ = drain_stop_tx.send(true);
    if let Some(d) = drain {
        let _ = d.await;
    }
    queue.close().await;
    let _ = health_task.await;
    store.close().await.context("closing the event store")?;
    let c = pipeline.counters();
    let abandoned = c.abandoned.load(Ordering::Relaxed);
    if abandoned > 0 {
        tracing::error!(
            abandoned,
            committed = c.committed.load(Ordering::Relaxed),
            "gateway stopped; accepted-mode events were NOT written: the event store kept failing during the shutdown"
        );
        return Ok(());
    }
    tracing::info!(
        received = c.received.load(Ordering::Relaxed),
        accepted = c.accepted.load(Ordering::Relaxed),
        duplicates = c.duplicates.load(Ordering::Relaxed),
        rejected = c.rejected.load(Ordering::Relaxed),
        committed = c.committed.load(Ordering::Relaxed),
        batches = c.batches.load(Ordering::Relaxed),
        "gateway stopped; everything accepted was written"
    );
    Ok(())
}
