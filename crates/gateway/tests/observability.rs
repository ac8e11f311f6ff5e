//! Traces reach an OTLP receiver with the right parent/child links, and /metrics
//! answers in the Prometheus text format with the expected series. One test per
//! process-global concern (subscriber, recorder), so both live in this binary only.

mod common;

use adflow_domain::pb::{self, EventType};
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Parses the Prometheus text format into (series with labels) -> value.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        out.insert(series.to_string(), value.parse::<f64>().expect("numeric value"));
    }
    out
}

async fn scrape(addr: &str) -> String {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let resp = client.get(format!("http://{addr}/metrics").parse().unwrap()).await.expect("scrape");
    assert_eq!(resp.status(), 200);
    String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_link_client_gateway_queue_worker_and_metrics_are_scraped() {
    // An OTLP receiver, and telemetry pointed at it.
    let spans = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(spans.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let tcfg = adflow_telemetry::TracingConfig {
        otlp_endpoint: format!("http://{otlp}"),
        service_name: "adflow-test".into(),
        sampling_ratio: 1.0,
    };
    let guard = adflow_telemetry::init(false, "info", &tcfg).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.workers.in_process = 1;
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_addr = probe.local_addr().unwrap().to_string();
    drop(probe);
    cfg.metrics.listen = metrics_addr.clone();
    let gw = TestGateway::start(cfg).await;
    let ch = gw.channel().await;

    // The client's own span: trace 0af7651916cd43dd8448eb211c80319c, span b7ad6b7169203331.
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let client_span = "b7ad6b7169203331";
    let mut req = tonic::Request::new(pb::SubmitAdRequest {
        ad: Some(pb::AdSpec {
            title: "Raid the keep tonight".into(),
            game_family: "RPG".into(),
            priority: 3,
            ..Default::default()
        }),
    });
    req.metadata_mut().insert("traceparent", format!("00-{trace_id}-{client_span}-01").parse().unwrap());
    let mut ads = pb::ad_service_client::AdServiceClient::new(ch.clone());
    let id = ads.submit_ad(req).await.unwrap().into_inner().id;
    let mut watch = ads.watch_ad(pb::WatchAdRequest { id: id.clone() }).await.unwrap().into_inner();
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(10), watch.message()).await.unwrap() {}

    // Some ingest traffic for the metrics: 3 valid, 1 duplicate, 1 rejected.
    let mut ingest = pb::event_ingest_client::EventIngestClient::new(ch);
    let mut evs: Vec<_> = (0..3).map(|i| event(&format!("m{i}"), "ad-m", EventType::Click)).collect();
    evs.push(event("m0", "ad-m", EventType::Click));
    evs.push(event("m-bad", "", EventType::Click));
    ingest.send_events(batch(evs)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await; // one gauge refresh
    let m = parse_metrics(&scrape(&metrics_addr).await);
    assert_eq!(m.get("events_received_total{type=\"click\"}"), Some(&5.0), "{m:?}");
    assert_eq!(m.get("events_duplicate_total"), Some(&1.0));
    assert_eq!(m.get("events_rejected_total{reason=\"missing_field\"}"), Some(&1.0));
    assert_eq!(m.get("events_processed_total"), Some(&3.0));
    assert_eq!(m.get("batches_processed_total{backend=\"file\"}"), Some(&1.0));
    assert_eq!(m.get("workers_connected"), Some(&1.0));
    assert_eq!(m.get("backend_up{backend=\"file\"}"), Some(&1.0));
    assert_eq!(m.get("queue_size{priority=\"3\"}"), Some(&0.0));
    assert_eq!(
        m.get("ads_processed_total{outcome=\"needs_review\"}")
            .or(m.get("ads_processed_total{outcome=\"rejected\"}")),
        Some(&1.0)
    );
    assert!(
        m.contains_key("rpc_duration_seconds_count{method=\"/adflow.v1.AdService/SubmitAd\",code=\"Ok\"}"),
        "{m:?}"
    );
    assert!(m.contains_key("batch_flush_seconds_bucket{le=\"0.1\"}"));
    assert_eq!(m.get("queue_wait_seconds_count"), Some(&1.0));
    assert_eq!(
        m.get("queue_oldest_wait_seconds"),
        Some(&0.0),
        "{:?}",
        m.keys().filter(|k| k.contains("wait")).collect::<Vec<_>>()
    );
    assert_eq!(m.get("spill_buffer_events"), Some(&0.0));

    gw.stop().await;
    guard.shutdown();

    let spans = spans.0.lock().unwrap().clone();
    let ours: Vec<&Span> = spans.iter().filter(|s| hex(&s.trace_id) == trace_id).collect();
    let find = |name: &str| {
        ours.iter().find(|s| s.name == name).unwrap_or_else(|| {
            panic!("no {name} span in {:?}", ours.iter().map(|s| &s.name).collect::<Vec<_>>())
        })
    };
    let rpc = find("adflow.v1.AdService/SubmitAd");
    assert_eq!(hex(&rpc.parent_span_id), client_span, "the RPC span is a child of the client's span");
    for name in ["lease", "analyze", "ack"] {
        let s = find(name);
        assert_eq!(hex(&s.parent_span_id), hex(&rpc.span_id), "{name} continues the submission's trace");
    }
}
