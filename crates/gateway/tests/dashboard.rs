//! The dashboard's HTTP side: its JSON API answers what the gRPC calls answer (it calls
//! the same service objects), with the gRPC server's access control, safe headers, and a
//! clear 4xx for bad input. The page itself is driven in a real browser by
//! `tests/browser/dashboard_test.py`.

mod common;

use adflow_domain::pb;
use adflow_gateway::auth::{ApiKey, Role, hash_key};
use common::*;
use serde_json::{Value, json};
use std::time::Duration;
use tonic::transport::Channel;

type Ads = pb::ad_service_client::AdServiceClient<Channel>;
type Control = pb::queue_control_client::QueueControlClient<Channel>;

struct Dash {
    gw: TestGateway,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// A gateway without in-process workers (the queue holds still) and its dashboard on a
/// free port.
async fn start(auth: Option<Vec<ApiKey>>) -> Dash {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.workers.in_process = 0;
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    cfg.dashboard.listen = addr.to_string();
    if let Some(keys) = auth {
        cfg.auth.enabled = true;
        cfg.auth.keys = keys;
    }
    let gw = TestGateway::start(cfg).await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let base = format!("http://{addr}");
    for _ in 0..200 {
        if http.get(format!("{base}/api/session")).send().await.is_ok() {
            return Dash { gw, base, http, _dir: dir };
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("dashboard at {base} did not come up");
}

impl Dash {
    /// `POST /api{path}` with `body`; the status and the JSON answer.
    async fn call(&self, path: &str, body: Value, key: Option<&str>) -> (u16, Value) {
        let mut r = self
            .http
            .post(format!("{}/api{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        let resp = r.send().await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    async fn ok(&self, path: &str, body: Value) -> Value {
        let (status, v) = self.call(path, body, None).await;
        assert_eq!(status, 200, "{path}: {v}");
        v
    }
}

fn spec(title: &str, family: &str, priority: u32) -> pb::AdSpec {
    pb::AdSpec { title: title.into(), game_family: family.into(), priority, ..Default::default() }
}

/// 15 ads over the partitions and 70 events over 5 ads and 3 campaigns.
async fn seed(gw: &TestGateway) {
    let mut ads = Ads::new(gw.channel().await);
    let specs = (0..15).map(|i| spec(&format!("ad {i}"), ["Puzzle", "Racing"][i % 2], 1 + i as u32 % 5));
    ads.submit_ads(pb::SubmitAdsRequest { ads: specs.collect() }).await.unwrap();
    let types = [
        pb::EventType::Impression,
        pb::EventType::Impression,
        pb::EventType::Click,
        pb::EventType::Conversion,
    ];
    let events = (0..70)
        .map(|i| {
            let mut e = event(&format!("e{i}"), &format!("ad-{}", i % 5), types[i % 4]);
            e.campaign_id = format!("cmp-{}", i % 3);
            if types[i % 4] == pb::EventType::Conversion {
                e.revenue_usd = Some(2.5);
            }
            e
        })
        .collect();
    gw.ingest().await.send_events(batch(events)).await.unwrap();
}

#[tokio::test]
async fn the_api_answers_what_the_grpc_calls_answer() {
    let d = start(None).await;
    seed(&d.gw).await;
    let mut control = Control::new(d.gw.channel().await);
    let mut analytics = d.gw.analytics().await;
    let mut ads = Ads::new(d.gw.channel().await);

    let s = control.get_stats(pb::GetStatsRequest {}).await.unwrap().into_inner();
    let v = d.ok("/adflow.v1.QueueControl/GetStats", json!({})).await;
    assert_eq!(v["total_queued"], 15);
    for (field, want) in [
        ("total_queued", s.total_queued),
        ("in_flight", s.in_flight),
        ("dead_letters", s.dead_letters),
        ("completed_total", s.completed_total),
        ("workers", s.workers as u64),
    ] {
        assert_eq!(v[field], want, "{field}");
    }
    let parts: Vec<(u64, u64, bool)> =
        s.partitions.iter().map(|p| (p.priority as u64, p.queued, p.paused)).collect();
    let json_parts: Vec<(u64, u64, bool)> = v["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (p["priority"].as_u64().unwrap(), p["queued"].as_u64().unwrap(), p["paused"].as_bool().unwrap())
        })
        .collect();
    assert_eq!(json_parts, parts);

    let req = pb::TopAdsRequest { metric: pb::Metric::Clicks as i32, limit: 3, ..Default::default() };
    let top = analytics.top_ads(req).await.unwrap().into_inner();
    let v = d.ok("/adflow.v1.Analytics/TopAds", json!({"metric": "METRIC_CLICKS", "limit": 3})).await;
    let ids: Vec<&str> = v["ads"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids, top.ads.iter().map(|a| a.id.as_str()).collect::<Vec<_>>());
    assert_eq!(ids.len(), 3);
    for (j, g) in v["ads"].as_array().unwrap().iter().zip(&top.ads) {
        let c = g.counts.as_ref().unwrap();
        assert_eq!(j["counts"]["clicks"], c.clicks);
        assert_eq!(j["counts"]["impressions"], c.impressions);
        assert_eq!(j["revenue_usd"].as_f64().unwrap(), g.revenue_usd);
        assert_eq!(j["ctr"].as_f64().unwrap(), g.ctr);
    }

    let camp =
        analytics.events_by_campaign(pb::EventsByCampaignRequest::default()).await.unwrap().into_inner();
    let v = d.ok("/adflow.v1.Analytics/EventsByCampaign", json!({})).await;
    let totals: Vec<(String, u64)> = v["campaigns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_str().unwrap().to_owned(), c["counts"]["total"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        totals,
        camp.campaigns.iter().map(|c| (c.id.clone(), c.counts.unwrap().total)).collect::<Vec<_>>()
    );
    assert_eq!(totals.len(), 3);

    let req = pb::ListAdsRequest { page_size: 4, ..Default::default() };
    let page = ads.list_ads(req).await.unwrap().into_inner();
    let v = d.ok("/adflow.v1.AdService/ListAds", json!({"page_size": 4})).await;
    assert_eq!(v["next_page_token"], page.next_page_token);
    let first = &page.ads[0];
    assert_eq!(v["ads"][0]["id"], first.id);
    let v = d.ok("/adflow.v1.AdService/GetAd", json!({"id": first.id})).await;
    assert_eq!(v["spec"]["title"], first.spec.as_ref().unwrap().title);
    assert_eq!(v["status"], "AD_STATUS_QUEUED");

    let w = d.ok("/adflow.v1.QueueControl/ListWorkers", json!({})).await;
    assert_eq!(w["workers"], json!([]));
    d.gw.stop().await;
}

#[tokio::test]
async fn the_agent_previews_and_only_its_confirmation_runs_the_change() {
    let d = start(None).await;
    seed(&d.gw).await;
    let paused = |v: &Value| {
        v["partitions"].as_array().unwrap().iter().any(|p| p["priority"] == 2 && p["paused"] == true)
    };
    let preview =
        d.ok("/adflow.v1.AgentService/Execute", json!({"text": "pause priority 2", "dry_run": true})).await;
    assert_eq!(preview["outcome"], "OUTCOME_DRY_RUN", "{preview}");
    let token = preview["confirmation_token"].as_str().unwrap();
    assert!(!token.is_empty(), "{preview}");
    assert!(!paused(&d.ok("/adflow.v1.QueueControl/GetStats", json!({})).await));
    let run = d
        .ok(
            "/adflow.v1.AgentService/Execute",
            json!({"text": "pause priority 2", "confirmation_token": token}),
        )
        .await;
    assert_eq!(run["outcome"], "OUTCOME_EXECUTED", "{run}");
    assert!(paused(&d.ok("/adflow.v1.QueueControl/GetStats", json!({})).await));
    // The token was single-use: the agent refuses a second run, with its message.
    let (status, again) = d
        .call(
            "/adflow.v1.AgentService/Execute",
            json!({"text": "pause priority 2", "confirmation_token": token}),
            None,
        )
        .await;
    assert_eq!((status, again["code"].as_str()), (400, Some("FAILED_PRECONDITION")), "{again}");
    let log = d.ok("/adflow.v1.AgentService/ListCommands", json!({"page_size": 10})).await;
    let outcomes: Vec<&str> =
        log["commands"].as_array().unwrap().iter().map(|c| c["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["OUTCOME_REFUSED", "OUTCOME_EXECUTED", "OUTCOME_DRY_RUN"]);
    assert_eq!(log["commands"][1]["caller"], "anonymous");
    d.gw.stop().await;
}

#[tokio::test]
async fn the_ingest_view_moves_with_the_events_sent() {
    let d = start(None).await;
    let get = || async {
        let r = d.http.get(format!("{}/api/ingest", d.base)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()
    };
    assert_eq!(get().await["totals"]["accepted"], 0);
    seed(&d.gw).await;
    let mut bad = event("bad-1", "", pb::EventType::Impression);
    bad.ad_id.clear();
    let reply = d.gw.ingest().await.send_events(batch(vec![bad])).await.unwrap().into_inner();
    assert_eq!(reply.rejected, 1);
    // The view ends with a fresh point once half a second has passed since the last sample.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let v = get().await;
    assert_eq!(v["totals"]["accepted"], 70);
    assert!(v["rejected_by_reason"]["missing_field"].as_u64().unwrap() >= 1, "{v}");
    let points = v["points"].as_array().unwrap();
    assert!(points.iter().any(|p| p["accepted_per_s"].as_f64().unwrap() > 0.0), "{v}");
    d.gw.stop().await;
}

fn keys() -> Vec<ApiKey> {
    let key = |name: &str, role, k: &str| ApiKey { name: name.into(), role, sha256: hash_key(k) };
    vec![
        key("game", Role::Client, "c-key"),
        key("w", Role::Worker, "w-key"),
        key("ops", Role::Operator, "o-key"),
    ]
}

#[tokio::test]
async fn roles_are_the_grpc_servers_no_key_no_data_client_no_operator_views() {
    let d = start(Some(keys())).await;
    let stats = "/adflow.v1.QueueControl/GetStats";
    let top = "/adflow.v1.Analytics/TopAds";
    let session = |key: Option<&'static str>| {
        let mut r = d.http.get(format!("{}/api/session", d.base));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        async move {
            let resp = r.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    // No key: the page is told to ask for one; no RPC answers with data.
    let (status, v) = session(None).await;
    assert_eq!((status, v["auth_enabled"].as_bool(), v["role"].is_null()), (200, Some(true), true), "{v}");
    for path in [stats, top, "/adflow.v1.AgentService/ListCommands"] {
        let (status, v) = d.call(path, json!({}), None).await;
        assert_eq!((status, v["code"].as_str()), (401, Some("UNAUTHENTICATED")), "{path}: {v}");
        assert_eq!(v.as_object().unwrap().len(), 2, "only code and message: {v}");
    }
    let r = d.http.get(format!("{}/api/ingest", d.base)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(d.call(stats, json!({}), Some("wrong")).await.0, 401);

    // A client key: analytics and ingest, not the operator views.
    assert_eq!(session(Some("c-key")).await.1["role"], "client");
    assert_eq!(d.call(top, json!({}), Some("c-key")).await.0, 200);
    let r = d.http.get(format!("{}/api/ingest", d.base)).bearer_auth("c-key").send().await.unwrap();
    assert_eq!(r.status(), 200);
    for path in [stats, "/adflow.v1.QueueControl/ListWorkers", "/adflow.v1.AgentService/Execute"] {
        let (status, v) = d.call(path, json!({"text": "pause priority 2"}), Some("c-key")).await;
        assert_eq!((status, v["code"].as_str()), (403, Some("PERMISSION_DENIED")), "{path}: {v}");
    }
    // A worker key cannot use the dashboard; an operator key sees everything, and the
    // agent audits the key's name.
    assert_eq!(session(Some("w-key")).await.0, 403);
    assert_eq!(session(Some("o-key")).await.1["role"], "operator");
    assert_eq!(d.call(stats, json!({}), Some("o-key")).await.0, 200);
    let (status, v) = d
        .call(
            "/adflow.v1.AgentService/Execute",
            json!({"text": "show the queue distribution"}),
            Some("o-key"),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let (_, log) = d.call("/adflow.v1.AgentService/ListCommands", json!({}), Some("o-key")).await;
    assert_eq!(log["commands"][0]["caller"], "ops");
    d.gw.stop().await;
}

#[tokio::test]
async fn pages_and_answers_carry_a_strict_policy_and_nosniff() {
    let d = start(None).await;
    for (path, ct) in [("/", "text/html"), ("/app.js", "text/javascript"), ("/app.css", "text/css")] {
        let r = d.http.get(format!("{}{path}", d.base)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert!(h["content-type"].to_str().unwrap().starts_with(ct), "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("default-src 'none'"), "{csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
    }
    let html = d.http.get(format!("{}/", d.base)).send().await.unwrap().text().await.unwrap();
    assert!(html.contains(r#"<script src="/app.js" defer></script>"#));
    assert!(!html.contains("<script>") && !html.contains("style="), "no inline code");
    let r = d.http.post(format!("{}/api/adflow.v1.QueueControl/GetStats", d.base));
    let r = r.header("content-type", "application/json").body("{}").send().await.unwrap();
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(d.http.get(format!("{}/nope.js", d.base)).send().await.unwrap().status(), 404);
    // A DNS-rebound name is refused; so is a call from another origin.
    let r = d.http.get(format!("{}/", d.base)).header("host", "evil.example.com").send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = d
        .http
        .post(format!("{}/api/adflow.v1.QueueControl/GetStats", d.base))
        .header("content-type", "application/json")
        .header("origin", "http://evil.example.com")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    d.gw.stop().await;
}

#[tokio::test]
async fn bad_input_answers_a_clear_4xx_with_its_reason() {
    let d = start(None).await;
    let cases: [(&str, Value, u16, &str); 7] = [
        (
            "/adflow.v1.Analytics/TopAds",
            json!({"limit": 5000}),
            400,
            "limit 5000 is above the maximum of 1000",
        ),
        ("/adflow.v1.Analytics/TopAds", json!({"limt": 5}), 400, "limt"),
        ("/adflow.v1.Analytics/TopAds", json!({"metric": "METRIC_FAME"}), 400, "METRIC_FAME"),
        ("/adflow.v1.AdService/GetAd", json!({"id": "x".repeat(100)}), 400, "an ad id is a UUID"),
        ("/adflow.v1.AdService/GetAd", json!({"id": "01a22000-0000-7000-8000-000000000000"}), 404, ""),
        (
            "/adflow.v1.QueueControl/PurgePartition",
            json!({"priority": 2, "confirm": true}),
            404,
            "AgentService/Execute",
        ),
        ("/adflow.v1.Nope/Nothing", json!({}), 404, "no RPC"),
    ];
    for (path, body, want, says) in cases {
        let (status, v) = d.call(path, body, None).await;
        assert_eq!(status, want, "{path}: {v}");
        assert!(v["message"].as_str().unwrap().contains(says), "{path}: {v}");
    }
    let post = |body: &'static str, ct: &'static str| {
        d.http
            .post(format!("{}/api/adflow.v1.Analytics/TopAds", d.base))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let r = post("{not json", "application/json").await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("adflow.v1.TopAdsRequest"));
    assert_eq!(post("{}", "text/plain").await.unwrap().status(), 415, "a form cannot post to the API");
    let big = d
        .http
        .post(format!("{}/api/adflow.v1.AgentService/Execute", d.base))
        .header("content-type", "application/json")
        .body(format!("{{\"text\": \"{}\"}}", "a".repeat(100_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    let r = d.http.get(format!("{}/api/adflow.v1.QueueControl/GetStats", d.base)).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("POST"));
    d.gw.stop().await;
}
