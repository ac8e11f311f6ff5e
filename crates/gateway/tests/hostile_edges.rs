//! Hostile and careless input at the edges of the gateway (issue 12 items 1, 6, 8, 12,
//! 13), each through the generated clients against a real gateway on 127.0.0.1:0:
//! extreme analytics ranges, over-long ids, unauthenticated calls to invented paths and
//! key guessing, the series a fresh gateway exposes, and the small operator-facing
//! answers (pause counts, queue positions, start-up errors, `--print-config`).
//!
//! The Prometheus recorder is global to this test process, so metric assertions are
//! about series that only the test making them can move.

mod common;

use adflow_domain::pb::{self, EventType, period};
use adflow_gateway::auth::{ApiKey, Role, hash_key};
use common::*;
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

type Ads = pb::ad_service_client::AdServiceClient<Channel>;
type Control = pb::queue_control_client::QueueControlClient<Channel>;

fn range(from_ms: i64, to_ms: i64) -> Option<pb::Period> {
    Some(pb::Period { period: Some(period::Period::Range(pb::TimeRange { from_ms, to_ms })) })
}

fn spec(title: &str, priority: u32) -> pb::AdSpec {
    pb::AdSpec {
        title: title.into(),
        description: "Build your guild. Fight epic bosses with friends.".into(),
        game_family: "RPG-Fantasy".into(),
        genre: "rpg".into(),
        call_to_action: "Play free now".into(),
        duration_seconds: 15,
        priority,
        ..Default::default()
    }
}

/// A gateway without in-process workers (nothing leases the test's ads).
async fn quiet_gateway(dir: &std::path::Path) -> TestGateway {
    let mut cfg = config(dir);
    cfg.workers.in_process = 0;
    TestGateway::start(cfg).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_ranges_at_the_i64_limits_are_answered_with_exact_counts() {
    let dir = tempfile::tempdir().unwrap();
    let gw = quiet_gateway(dir.path()).await;
    let mut ingest = gw.ingest().await;
    let reply = ingest
        .send_event(pb::SendEventRequest {
            event: Some(event("edge-1", "ad-edge", EventType::Click)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.accepted, 1);
    let mut a = gw.analytics().await;
    // (from, to, events in the range): the whole i64 line, and both ends of it.
    let cases =
        [(i64::MIN, i64::MAX, 1), (i64::MIN, i64::MIN + 1, 0), (i64::MAX - 1, i64::MAX, 0), (i64::MIN, 0, 0)];
    for (from, to, n) in cases {
        let what = format!("[{from}, {to})");
        let stats = a
            .get_ad_stats(pb::GetAdStatsRequest { ad_id: "ad-edge".into(), period: range(from, to) })
            .await
            .unwrap_or_else(|s| panic!("GetAdStats {what}: {s:?}"))
            .into_inner();
        assert_eq!(stats.stats.unwrap().counts.unwrap().total, n, "{what}");
        let all = a
            .get_ad_stats(pb::GetAdStatsRequest { ad_id: String::new(), period: range(from, to) })
            .await
            .unwrap_or_else(|s| panic!("GetAdStats (all) {what}: {s:?}"))
            .into_inner();
        assert_eq!(all.stats.unwrap().counts.unwrap().total, n, "{what}");
        assert_eq!(all.range.unwrap(), pb::TimeRange { from_ms: from, to_ms: to });
        let top = a
            .top_ads(pb::TopAdsRequest {
                metric: pb::Metric::Clicks as i32,
                period: range(from, to),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("TopAds {what}: {s:?}"))
            .into_inner();
        assert_eq!(top.ads.len() as u64, n, "{what}");
        let camps = a
            .events_by_campaign(pb::EventsByCampaignRequest { period: range(from, to), ..Default::default() })
            .await
            .unwrap_or_else(|s| panic!("EventsByCampaign {what}: {s:?}"))
            .into_inner();
        assert_eq!(
            camps.campaigns.iter().map(|c| c.counts.as_ref().unwrap().total).sum::<u64>(),
            n,
            "{what}"
        );
    }
    // An empty or reversed range is the caller's mistake, named.
    let e = a
        .get_ad_stats(pb::GetAdStatsRequest { ad_id: "ad-edge".into(), period: range(i64::MAX, i64::MIN) })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("period.range.from_ms"), "{}", e.message());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_ids_and_page_tokens_are_refused_invalid_argument_with_a_short_message() {
    let dir = tempfile::tempdir().unwrap();
    let gw = quiet_gateway(dir.path()).await;
    let ch = gw.channel().await;
    let (mut ads, mut control) = (Ads::new(ch.clone()), Control::new(ch));
    let huge = "7".repeat(100 * 1024);
    let mut answers: Vec<(&str, tonic::Status)> = vec![
        ("GetAd", ads.get_ad(pb::GetAdRequest { id: huge.clone() }).await.unwrap_err()),
        ("CancelAd", ads.cancel_ad(pb::CancelAdRequest { id: huge.clone() }).await.unwrap_err()),
        ("WatchAd", ads.watch_ad(pb::WatchAdRequest { id: huge.clone() }).await.unwrap_err()),
        (
            "ListAds",
            ads.list_ads(pb::ListAdsRequest { page_token: huge.clone(), ..Default::default() })
                .await
                .unwrap_err(),
        ),
        (
            "SetPriority",
            control.set_priority(pb::SetPriorityRequest { id: huge.clone(), priority: 3 }).await.unwrap_err(),
        ),
        (
            "RequeueDeadLetters",
            control
                .requeue_dead_letters(pb::RequeueDeadLettersRequest { ids: vec![huge.clone()] })
                .await
                .unwrap_err(),
        ),
    ];
    // Short but still not a UUID: the queue's own message, which quotes the id.
    let not_uuid = "x".repeat(64);
    answers
        .push(("GetAd (64 chars)", ads.get_ad(pb::GetAdRequest { id: not_uuid.clone() }).await.unwrap_err()));
    answers.push((
        "Reprioritize",
        control
            .reprioritize(pb::ReprioritizeRequest {
                filter: Some(pb::AdFilter { game_family: huge.clone(), ..Default::default() }),
                new_priority: 5,
                dry_run: true,
            })
            .await
            .unwrap_err(),
    ));
    answers.push((
        "RequeueDeadLetters (count)",
        control
            .requeue_dead_letters(pb::RequeueDeadLettersRequest { ids: vec![not_uuid.clone(); 1001] })
            .await
            .unwrap_err(),
    ));
    for (rpc, s) in &answers {
        assert_eq!(s.code(), Code::InvalidArgument, "{rpc}: {s:?}");
        assert!(s.message().len() <= 200, "{rpc}: a {}-byte message", s.message().len());
    }
    let msg = |i: usize| answers[i].1.message().to_owned();
    assert!(msg(0).starts_with("id is 102400 bytes; an ad id is a UUID"), "{}", msg(0));
    assert!(msg(3).starts_with("page_token is 102400 bytes"), "{}", msg(3));
    assert!(msg(5).starts_with("ids[0] is 102400 bytes"), "{}", msg(5));
    assert!(msg(6).contains("is not a valid ad id"), "{}", msg(6));
    assert!(msg(7).starts_with("filter.game_family is 102400 characters"), "{}", msg(7));
    assert!(msg(8).starts_with("ids has 1001 entries"), "{}", msg(8));
    gw.stop().await;
}

/// A codec that sends and receives raw bytes: calls to paths no generated client has.
#[derive(Clone, Copy, Default)]
struct RawBytes;

impl tonic::codec::Codec for RawBytes {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;
    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }
    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl tonic::codec::Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

async fn call_path(ch: Channel, path: &str) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_str(path).unwrap();
    grpc.unary(tonic::Request::new(Vec::new()), path, RawBytes).await.unwrap_err()
}

fn metrics_port() -> String {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().to_string()
}

async fn scrape(addr: &str) -> String {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    for _ in 0..100 {
        if let Ok(resp) = client.get(format!("http://{addr}/metrics").parse().unwrap()).await {
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            return String::from_utf8(body.to_vec()).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no /metrics at {addr}");
}

/// Series (name with labels) -> value, from the Prometheus text format.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("series and value");
            (series.to_owned(), value.parse().expect("numeric value"))
        })
        .collect()
}

fn auth_on(cfg: &mut adflow_gateway::Config, burst: u32) {
    cfg.auth.enabled = true;
    cfg.auth.keys = vec![ApiKey { name: "game".into(), role: Role::Client, sha256: hash_key("right-key") }];
    cfg.auth.failed_auth_burst = burst;
    cfg.auth.failed_auth_per_minute = 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_calls_to_invented_paths_share_one_method_label() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.workers.in_process = 0;
    auth_on(&mut cfg, 1000);
    let metrics = metrics_port();
    cfg.metrics.listen = metrics.clone();
    let gw = TestGateway::start(cfg).await;
    let ch = gw.channel().await;
    let before = parse_metrics(&scrape(&metrics).await);
    for i in 0..20 {
        let s = call_path(ch.clone(), &format!("/evil.v{i}.Invented/Method{i}")).await;
        assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    }
    let after = parse_metrics(&scrape(&metrics).await);
    let new: Vec<&String> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    assert!(new.iter().all(|k| !k.contains("Invented") && !k.contains("evil")), "{new:?}");
    let count = "rpc_duration_seconds_count{method=\"unknown\",code=\"Unauthenticated\"}";
    assert_eq!(after.get(count), Some(&20.0), "{new:?}");
    // One histogram (buckets, sum, count) for all 20 paths, not one per path.
    let buckets = new.iter().filter(|k| k.starts_with("rpc_duration_seconds_bucket{")).count();
    assert!(new.len() <= buckets + 2 + 2, "{} new series: {new:?}", new.len());
    assert!(
        after.get("auth_failures_total{reason=\"missing_key\"}").is_some_and(|n| *n >= 20.0),
        "{after:?}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_guessing_from_one_address_is_throttled_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.workers.in_process = 0;
    auth_on(&mut cfg, 5);
    let metrics = metrics_port();
    cfg.metrics.listen = metrics.clone();
    let gw = TestGateway::start(cfg).await;
    let ch = gw.channel().await;
    let guess = |key: &str| {
        let mut req = tonic::Request::new(pb::GetAdStatsRequest::default());
        req.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
        let mut a = pb::analytics_client::AnalyticsClient::new(ch.clone());
        async move { a.get_ad_stats(req).await }
    };
    assert!(guess("right-key").await.is_ok());
    let mut codes = Vec::new();
    for i in 0..8 {
        codes.push(guess(&format!("guess-{i}")).await.unwrap_err());
    }
    let unauthenticated = codes.iter().filter(|s| s.code() == Code::Unauthenticated).count();
    let throttled: Vec<_> = codes.iter().filter(|s| s.code() == Code::ResourceExhausted).collect();
    assert_eq!((unauthenticated, throttled.len()), (5, 3), "{codes:?}");
    assert!(
        throttled[0].message().starts_with("too many failed authentications from 127.0.0.1"),
        "{}",
        throttled[0].message()
    );
    assert!(throttled[0].metadata().get("grpc-retry-pushback-ms").is_some());
    // The right key is refused too while the address is throttled: a guess cannot tell.
    assert_eq!(guess("right-key").await.unwrap_err().code(), Code::ResourceExhausted);
    let m = parse_metrics(&scrape(&metrics).await);
    assert_eq!(m.get("auth_failures_total{reason=\"throttled\"}"), Some(&4.0), "{m:?}");
    assert_eq!(
        m.get("auth_failures_total{reason=\"unknown_key\"}"),
        Some(&6.0),
        "blocked requests are not looked at"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_gateway_exposes_every_documented_series_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.workers.in_process = 0;
    let metrics = metrics_port();
    cfg.metrics.listen = metrics.clone();
    let gw = TestGateway::start(cfg).await;
    let text = scrape(&metrics).await;
    let m = parse_metrics(&text);
    // Nothing in this test binary expires leases, fails store writes, spills, replays or
    // runs workers that could be refused: these are exactly 0.
    for name in [
        "leases_expired_total",
        "processing_errors_total",
        "spilled_events_total",
        "replayed_events_total",
        "worker_refusals_total",
        "rpc_panics_total",
    ] {
        assert_eq!(m.get(name), Some(&0.0), "{name} missing or not 0 in:\n{text}");
    }
    // The rest exist (other tests in this binary may have moved them).
    let present = [
        "events_processed_total",
        "events_duplicate_total",
        "events_received_total{type=\"click\"}",
        "events_received_total{type=\"video_complete\"}",
        "events_rejected_total{reason=\"missing_field\"}",
        "events_rejected_total{reason=\"bad_timestamp\"}",
        "batches_processed_total{backend=\"file\"}",
        "ads_processed_total{outcome=\"approved\"}",
        "ads_processed_total{outcome=\"nacked_dead_letter\"}",
        "auth_failures_total{reason=\"throttled\"}",
        "worker_leases_total",
        "worker_acks_total",
        "dead_letters",
        "workers_connected",
        "queue_oldest_wait_seconds",
        "spill_buffer_events",
        "queue_size{priority=\"1\"}",
        "queue_size{priority=\"5\"}",
    ];
    for name in present {
        assert!(m.contains_key(name), "{name} missing in:\n{text}");
    }
    for histogram in ["batch_flush_seconds", "queue_wait_seconds", "worker_analysis_seconds"] {
        assert!(m.contains_key(&format!("{histogram}_count")), "{histogram} missing in:\n{text}");
    }
    // Every documented metric has its help text.
    for help in ["leases_expired_total", "worker_refusals_total", "auth_failures_total"] {
        assert!(text.contains(&format!("# HELP {help} ")), "no HELP for {help}");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ad_in_a_paused_partition_counts_every_serving_ad_as_ahead_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let gw = quiet_gateway(dir.path()).await;
    let ch = gw.channel().await;
    let (mut ads, mut control) = (Ads::new(ch.clone()), Control::new(ch));
    let paused = control.pause_partition(pb::PartitionRequest { priority: 5 }).await.unwrap().into_inner();
    assert!(paused.paused);
    let submit = |s: pb::AdSpec| {
        let mut ads = ads.clone();
        async move { ads.submit_ad(pb::SubmitAdRequest { ad: Some(s) }).await.unwrap().into_inner() }
    };
    let high = submit(spec("Held at the top", 5)).await;
    let low = submit(spec("Served first", 1)).await;
    let second_high = submit(spec("Also held", 5)).await;
    assert_eq!((high.queue_position, low.queue_position), (0, 0));
    assert_eq!(second_high.queue_position, 2, "the serving ad and the one ahead in its partition");
    let position = |id: String| {
        let mut ads = ads.clone();
        async move { ads.get_ad(pb::GetAdRequest { id }).await.unwrap().into_inner().queue_position }
    };
    assert_eq!(position(high.id.clone()).await, 1, "the priority-1 ad is served before it");
    assert_eq!(position(low.id.clone()).await, 0);
    control.resume_partition(pb::PartitionRequest { priority: 5 }).await.unwrap();
    assert_eq!(position(high.id.clone()).await, 0);
    assert_eq!(position(second_high.id.clone()).await, 1);
    assert_eq!(position(low.id.clone()).await, 2);
    let _ = ads.list_ads(pb::ListAdsRequest::default()).await.unwrap();
    gw.stop().await;
}

/// The gateway binary, in `dir`, off every port, with `env` set.
fn run_gateway(
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_adflow-gateway"));
    cmd.current_dir(dir)
        .args(args)
        .env("ADFLOW_SERVER__LISTEN", "127.0.0.1:0")
        .env("ADFLOW_METRICS__LISTEN", "")
        .env("ADFLOW_WORKERS__IN_PROCESS", "0")
        .env("ADFLOW_STORAGE__FILE__DIR", dir.join("events"))
        .env("ADFLOW_QUEUE__PATH", dir.join("queue.redb"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run adflow-gateway")
}

#[test]
fn start_up_errors_name_the_bad_path_and_say_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let events = file.join("events");
    let out = run_gateway(dir.path(), &[], &[("ADFLOW_STORAGE__FILE__DIR", events.as_os_str())]);
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().find(|l| l.starts_with("adflow-gateway: ")).unwrap_or_else(|| panic!("{err}"));
    assert!(!out.status.success());
    assert!(line.contains(&events.display().to_string()), "{line}");
    assert_eq!(line.matches("os error 20").count(), 1, "{line}");

    let queue = file.join("queue.redb");
    let out = run_gateway(dir.path(), &[], &[("ADFLOW_QUEUE__PATH", queue.as_os_str())]);
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().find(|l| l.starts_with("adflow-gateway: ")).unwrap_or_else(|| panic!("{err}"));
    assert!(!out.status.success());
    assert!(line.contains(&format!("{} (queue.path)", queue.display())), "{line}");
    assert_eq!(line.matches("os error").count(), 1, "{line}");
}

#[test]
fn print_config_shows_where_each_value_came_from() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("my.toml"),
        "[ingest]\nmax_batch_events = \"many\"\nmax_batch_delay_ms = 2\n",
    )
    .unwrap();
    let env = [("ADFLOW_INGEST__MAX_BATCH_EVENTS", std::ffi::OsStr::new("4096"))];
    let out = run_gateway(dir.path(), &["--config", "my.toml", "--print-config"], &env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for line in [
        "ingest.max_batch_events = 4096  # from environment ADFLOW_INGEST__MAX_BATCH_EVENTS; overrides \"many\" from my.toml",
        "ingest.max_batch_delay_ms = 2  # from my.toml",
        "server.listen = \"127.0.0.1:0\"  # from environment ADFLOW_SERVER__LISTEN",
        "ingest.max_events_per_request = 10000  # from built-in default",
    ] {
        assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
    }
    // Without the override, the invalid value in the file is refused with its key named.
    let out = run_gateway(dir.path(), &["--config", "my.toml", "--print-config"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_batch_events"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_a_paused_partition_or_resuming_a_serving_one_affects_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let gw = quiet_gateway(dir.path()).await;
    let agent = pb::agent_service_client::AgentServiceClient::new(gw.channel().await);
    let exec = |text: &str, token: &str| {
        let req =
            pb::ExecuteRequest { text: text.into(), confirmation_token: token.into(), ..Default::default() };
        let mut agent = agent.clone();
        async move { agent.execute(req).await.unwrap().into_inner() }
    };
    let affected = |r: &pb::ExecuteResponse| r.result.as_ref().unwrap().affected;
    // The first pause asks for confirmation (it stops serving a partition), then pauses.
    let asked = exec("pause priority 3", "").await;
    assert_eq!(asked.outcome, pb::Outcome::ConfirmationRequired as i32);
    let done = exec("", &asked.confirmation_token).await;
    assert_eq!((done.outcome, affected(&done)), (pb::Outcome::Executed as i32, 1));
    let again = exec("pause priority 3", "").await;
    assert_eq!((again.outcome, affected(&again)), (pb::Outcome::Executed as i32, 0), "{again:?}");
    assert!(again.result.unwrap().message.contains("already"));
    let resumed = exec("resume priority 3", "").await;
    assert_eq!(affected(&resumed), 1, "{resumed:?}");
    let resumed_again = exec("resume priority 3", "").await;
    assert_eq!(affected(&resumed_again), 0, "{resumed_again:?}");
    gw.stop().await;
}
