//! The operator agent and access control, end to end.

mod common;

use adflow_client::{Client, ClientConfig, TlsOptions};
use adflow_domain::pb::{self, agent_command::Command};
use adflow_gateway::auth::{ApiKey, Role, hash_key};
use common::*;
use std::time::Duration;
use tonic::Code;

/// Polls the ad until it completes (or 5 s pass); returns its last status.
async fn final_status(client: &Client, id: &str) -> i32 {
    let mut status = 0;
    for _ in 0..100 {
        status = client.get_ad(id).await.unwrap().status;
        if status == pb::AdStatus::Completed as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    status
}

fn spec(title: &str, family: &str, priority: u32) -> pb::AdSpec {
    pb::AdSpec { title: title.into(), game_family: family.into(), priority, ..Default::default() }
}

async fn exec(c: &Client, text: &str, dry: bool) -> Result<pb::ExecuteResponse, tonic::Status> {
    pb::agent_service_client::AgentServiceClient::new(c.channel())
        .execute(pb::ExecuteRequest { text: text.into(), dry_run: dry })
        .await
        .map(|r| r.into_inner())
}

async fn peek(c: &Client) -> Vec<(String, u32)> {
    let mut q = pb::queue_control_client::QueueControlClient::new(c.channel());
    q.peek(pb::PeekRequest { limit: 10 })
        .await
        .unwrap()
        .into_inner()
        .ads
        .into_iter()
        .map(|a| (a.title, a.priority))
        .collect()
}

#[tokio::test]
async fn commands_change_the_queue_dry_runs_do_not_and_the_audit_log_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.workers.in_process = 0;
    let gw = TestGateway::start(cfg.clone()).await;
    let c = Client::connect_to(format!("http://{}", gw.addr)).await.unwrap();
    for (t, f, p) in [("rpg-a", "RPG-Fantasy", 1), ("puzzle", "Puzzle", 2), ("rpg-b", "RPG-Fantasy", 1)] {
        c.submit_ad(spec(t, f, p)).await.unwrap();
    }
    let before = peek(&c).await;
    let dry = exec(&c, "change priority to 5 for all ads in the RPG-Fantasy family", true).await.unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.interpreted_by, pb::Interpreter::Parser as i32);
    let r = dry.result.unwrap();
    assert_eq!(r.affected, 2);
    assert!(r.message.starts_with("would change 2 of 2"), "{}", r.message);
    assert_eq!(peek(&c).await, before, "a dry run changes nothing");

    let done =
        exec(&c, "Change priority to FIVE for all ads in the rpg-fantasy family!", false).await.unwrap();
    assert_eq!(
        done.command.unwrap().command,
        Some(Command::SetFamilyPriority(pb::SetFamilyPriority {
            game_family: "rpg-fantasy".into(),
            priority: 5
        }))
    );
    assert_eq!(done.result.unwrap().affected, 2);
    assert_eq!(peek(&c).await, vec![("rpg-a".into(), 5), ("rpg-b".into(), 5), ("puzzle".into(), 2)]);

    exec(&c, "disable starvation mode", false).await.unwrap();
    let mut q = pb::queue_control_client::QueueControlClient::new(c.channel());
    assert!(!q.get_policy(pb::GetPolicyRequest {}).await.unwrap().into_inner().anti_starvation);
    let paused = exec(&c, "pause priority 2", true).await.unwrap();
    assert_eq!(paused.result.unwrap().affected, 1);
    exec(&c, "pause priority two", false).await.unwrap();
    let stats = q.get_stats(pb::GetStatsRequest {}).await.unwrap().into_inner();
    assert!(stats.partitions.iter().any(|p| p.priority == 2 && p.paused));
    let next = exec(&c, "show me the next ten ads", false).await.unwrap().result.unwrap();
    assert_eq!((next.rows.len(), next.columns[1].as_str()), (2, "id"), "the paused partition is not served");
    let dist = exec(&c, "current queue distribution by priority", false).await.unwrap().result.unwrap();
    assert_eq!(dist.rows.len(), 5);
    let fams = exec(&c, "processing statistics by game family", false).await.unwrap().result.unwrap();
    assert_eq!(fams.rows[0].cells[0..2], ["RPG-Fantasy".to_string(), "2".to_string()]);
    exec(&c, "scale workers to 1", false).await.unwrap();
    let mut seen = 0;
    for _ in 0..50 {
        seen = q.list_workers(pb::ListWorkersRequest {}).await.unwrap().into_inner().workers.len();
        if seen == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, 1, "the agent started an in-process worker");
    let batch = exec(&c, "set batch size to 123", false).await.unwrap().result.unwrap();
    assert!(batch.message.contains("123"), "{}", batch.message);
    let cap = exec(&c, "capacity utilization report", false).await.unwrap().result.unwrap();
    assert!(cap.message.contains("1 workers"), "{}", cap.message);

    let e = exec(&c, "make me a sandwich", false).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("closest supported commands"), "{}", e.message());
    let e = exec(&c, "set priority 9 for ads older than 5 minutes", false).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    gw.stop().await;

    let gw = TestGateway::start(cfg).await;
    let c = Client::connect_to(format!("http://{}", gw.addr)).await.unwrap();
    let mut a = pb::agent_service_client::AgentServiceClient::new(c.channel());
    let page = a
        .list_commands(pb::ListCommandsRequest { page_size: 4, page_token: String::new() })
        .await
        .unwrap()
        .into_inner();
    let texts: Vec<_> = page.commands.iter().map(|e| e.text.as_str()).collect();
    assert_eq!(
        texts,
        vec![
            "capacity utilization report",
            "set batch size to 123",
            "scale workers to 1",
            "processing statistics by game family"
        ]
    );
    assert!(page.commands.iter().all(|e| e.caller == "anonymous" && e.result.is_some()));
    let rest = a
        .list_commands(pb::ListCommandsRequest { page_size: 50, page_token: page.next_page_token })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.commands.len(), 7, "11 executions audited in all (refused texts are not executions)");
    assert!(rest.commands.last().unwrap().dry_run);
    // What the agent changed at run time outlives the restart: the policy and the pause.
    let mut q = pb::queue_control_client::QueueControlClient::new(c.channel());
    assert!(!q.get_policy(pb::GetPolicyRequest {}).await.unwrap().into_inner().anti_starvation);
    assert!(peek(&c).await.is_empty(), "priority 2 is still paused");
    exec(&c, "resume priority 2", false).await.unwrap();
    assert_eq!(
        peek(&c).await,
        vec![("puzzle".to_string(), 2)],
        "the worker the agent started analysed the two priority-5 ads"
    );
    gw.stop().await;
}

/// A fake OpenAI-compatible endpoint answering with `content` (or HTTP 500 when None).
async fn fake_llm(content: Option<&'static str>) -> String {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    let resp = match content {
                        Some(c) => {
                            let body = serde_json::json!({"choices": [{"message": {"role": "assistant", "content": c}}]});
                            hyper::Response::new(Full::new(Bytes::from(body.to_string())))
                        }
                        None => hyper::Response::builder()
                            .status(500)
                            .body(Full::new(Bytes::from_static(b"boom")))
                            .unwrap(),
                    };
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}/v1/chat/completions")
}

#[tokio::test]
async fn the_llm_translates_when_it_answers_well_and_the_parser_decides_otherwise() {
    for (content, want) in [
        (Some(r#"{"command": "set_anti_starvation", "enabled": false}"#), pb::Interpreter::Llm),
        (None, pb::Interpreter::Parser),
        (Some(r#"{"command": "pause_priority", "priority": 9}"#), pb::Interpreter::Parser),
        (Some("not json at all"), pb::Interpreter::Parser),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.workers.in_process = 0;
        cfg.agent.llm_url = fake_llm(content).await;
        let gw = TestGateway::start(cfg).await;
        let c = Client::connect_to(format!("http://{}", gw.addr)).await.unwrap();
        let r = exec(&c, "please stop the starvation thing", false).await;
        match want {
            pb::Interpreter::Llm => {
                let r = r.unwrap();
                assert_eq!(r.interpreted_by, pb::Interpreter::Llm as i32);
                assert_eq!(
                    r.command.unwrap().command,
                    Some(Command::SetAntiStarvation(pb::Toggle { enabled: false }))
                );
            }
            _ => {
                // The parser does not know this phrasing: the fallback is visible as its refusal.
                assert_eq!(r.unwrap_err().code(), Code::InvalidArgument, "{content:?}");
                let ok = exec(&c, "disable starvation mode", false).await.unwrap();
                assert_eq!(ok.interpreted_by, pb::Interpreter::Parser as i32, "{content:?}");
            }
        }
        gw.stop().await;
    }
}

fn key(name: &str, role: Role, k: &str) -> ApiKey {
    ApiKey { name: name.into(), role, sha256: hash_key(k) }
}

#[tokio::test]
async fn every_role_reaches_only_its_services_and_health_and_reflection_stay_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.workers.in_process = 1;
    cfg.auth.enabled = true;
    cfg.auth.keys = vec![
        key("game", Role::Client, "c-key"),
        key("wk", Role::Worker, "w-key"),
        key("ops", Role::Operator, "o-key"),
    ];
    let gw = TestGateway::start(cfg).await;
    let connect = |k: Option<&str>| {
        let mut cc = ClientConfig::new(format!("http://{}", gw.addr));
        cc.api_key = k.map(String::from);
        Client::connect(cc)
    };
    async fn probe(c: &Client) -> Vec<Code> {
        let code = |r: Result<(), tonic::Status>| match r {
            Ok(()) => Code::Ok,
            Err(s) if s.code() == Code::NotFound => Code::Ok, // reached the service
            Err(s) => s.code(),
        };
        let ev = pb::AdEvent { event_id: "x".into(), r#type: 1, ad_id: "a".into(), ..Default::default() };
        let ingest =
            c.ingest().send_event(pb::SendEventRequest { event: Some(ev), ack_mode: 0 }).await.map(|_| ());
        let ads = c
            .ads()
            .get_ad(pb::GetAdRequest { id: "01890000-0000-7000-8000-000000000000".into() })
            .await
            .map(|_| ());
        let analytics = c.analytics().get_ad_stats(pb::GetAdStatsRequest::default()).await.map(|_| ());
        let control = pb::queue_control_client::QueueControlClient::new(c.channel())
            .get_stats(pb::GetStatsRequest {})
            .await
            .map(|_| ());
        let agent = pb::agent_service_client::AgentServiceClient::new(c.channel())
            .list_commands(pb::ListCommandsRequest::default())
            .await
            .map(|_| ());
        let hello = pb::WorkerMessage {
            kind: Some(pb::worker_message::Kind::Hello(pb::Hello {
                worker_id: "probe".into(),
                partitions: vec![],
                credits: 1,
            })),
        };
        let worker = c.workers().subscribe(tokio_stream::iter(vec![hello])).await.map(|_| ());
        vec![code(ingest), code(ads), code(analytics), code(worker), code(control), code(agent)]
    }
    use Code::{Ok as Y, PermissionDenied as N, Unauthenticated as U};
    assert_eq!(probe(&connect(Some("c-key")).await.unwrap()).await, vec![Y, Y, Y, N, N, N]);
    assert_eq!(probe(&connect(Some("w-key")).await.unwrap()).await, vec![N, N, N, Y, N, N]);
    assert_eq!(probe(&connect(Some("o-key")).await.unwrap()).await, vec![Y, Y, Y, Y, Y, Y]);
    assert_eq!(probe(&connect(None).await.unwrap()).await, vec![U; 6]);
    assert_eq!(probe(&connect(Some("wrong")).await.unwrap()).await, vec![U; 6]);

    let open = connect(None).await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(open.channel());
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    let req = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient::new(open.channel())
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap();

    // The in-process worker authenticates with its own key: a client's ad gets analysed.
    let client = connect(Some("c-key")).await.unwrap();
    let id = client.submit_ad(spec("Raid the keep tonight", "RPG", 3)).await.unwrap().id;
    let status = final_status(&client, &id).await;
    assert_eq!(status, pb::AdStatus::Completed as i32);
    // The audit log names the caller.
    let ops = connect(Some("o-key")).await.unwrap();
    exec(&ops, "queue performance summary", false).await.unwrap();
    let log = pb::agent_service_client::AgentServiceClient::new(ops.channel())
        .list_commands(pb::ListCommandsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(log.commands[0].caller, "ops");
    gw.stop().await;
}

#[tokio::test]
async fn a_key_over_its_rate_limit_gets_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.workers.in_process = 0;
    cfg.auth.enabled = true;
    cfg.auth.keys = vec![key("game", Role::Client, "c-key")];
    cfg.auth.rate_limit_per_second = 1;
    cfg.auth.rate_limit_burst = 3;
    let gw = TestGateway::start(cfg).await;
    let mut cc = ClientConfig::new(format!("http://{}", gw.addr));
    cc.api_key = Some("c-key".into());
    let c = Client::connect(cc).await.unwrap();
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(match c.analytics().get_ad_stats(pb::GetAdStatsRequest::default()).await {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        });
    }
    assert_eq!(codes, vec![Code::Ok, Code::Ok, Code::Ok, Code::ResourceExhausted, Code::ResourceExhausted]);
    gw.stop().await;
}

#[tokio::test]
async fn tls_serves_clients_and_in_process_workers() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let mut cfg = config(dir.path());
    cfg.workers.in_process = 1;
    cfg.server.tls_cert_path = cert_path.display().to_string();
    cfg.server.tls_key_path = key_path.display().to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(adflow_gateway::serve(listener, cfg, async {
        let _ = rx.await;
    }));
    let mut cc = ClientConfig::new(format!("https://localhost:{port}"));
    cc.tls =
        Some(TlsOptions { ca_pem: Some(cert.cert.pem().into_bytes()), domain: Some("localhost".into()) });
    let mut client = None;
    for _ in 0..50 {
        if let Ok(c) = Client::connect(cc.clone()).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = client.expect("TLS connection");
    let id = client.submit_ad(spec("Raid the keep tonight", "RPG", 3)).await.unwrap().id;
    let status = final_status(&client, &id).await;
    assert_eq!(status, pb::AdStatus::Completed as i32, "the in-process worker connected over TLS");
    let plain = Client::connect_to(format!("http://127.0.0.1:{port}")).await;
    let refused = match plain {
        Err(_) => true,
        Ok(c) => c.get_ad(&id).await.is_err(),
    };
    assert!(refused, "plain text is refused by a TLS gateway");
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
