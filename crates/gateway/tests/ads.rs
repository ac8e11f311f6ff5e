//! Ads, the priority queue and streaming workers, end to end through the generated clients.

mod common;

use adflow_domain::pb::{self, AdStatus, gateway_message, worker_message};
use common::*;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

type Ads = pb::ad_service_client::AdServiceClient<Channel>;
type Control = pb::queue_control_client::QueueControlClient<Channel>;

fn spec(title: &str, family: &str, priority: u32) -> pb::AdSpec {
    pb::AdSpec {
        title: title.into(),
        description: "Build your guild. Fight epic bosses with friends.".into(),
        game_family: family.into(),
        genre: "rpg".into(),
        target_audience: vec!["core".into()],
        visual_elements: vec!["dragon".into()],
        call_to_action: "Play free now".into(),
        duration_seconds: 15,
        priority,
        max_wait_seconds: 0,
    }
}

async fn submit(ads: &mut Ads, s: pb::AdSpec) -> String {
    ads.submit_ad(pb::SubmitAdRequest { ad: Some(s) }).await.unwrap().into_inner().id
}

/// A hand-driven worker session.
struct TestWorker {
    tx: mpsc::Sender<pb::WorkerMessage>,
    rx: tonic::Streaming<pb::GatewayMessage>,
}

impl TestWorker {
    async fn connect(ch: Channel, id: &str, credits: u32, partitions: Vec<u32>) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let hello = pb::Hello { worker_id: id.into(), partitions, credits };
        tx.send(pb::WorkerMessage { kind: Some(worker_message::Kind::Hello(hello)) }).await.unwrap();
        let mut c = pb::worker_service_client::WorkerServiceClient::new(ch);
        let rx = c.subscribe(ReceiverStream::new(rx)).await.unwrap().into_inner();
        let mut w = Self { tx, rx };
        assert!(matches!(w.next().await, Some(gateway_message::Kind::Welcome(_))));
        w
    }

    async fn next(&mut self) -> Option<gateway_message::Kind> {
        match tokio::time::timeout(Duration::from_secs(5), self.rx.message()).await {
            Ok(Ok(Some(m))) => m.kind,
            _ => None,
        }
    }

    /// Leases received within `wait`.
    async fn leases(&mut self, want: usize, wait: Duration) -> Vec<pb::Lease> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while out.len() < want {
            match tokio::time::timeout_at(deadline, self.rx.message()).await {
                Ok(Ok(Some(pb::GatewayMessage { kind: Some(gateway_message::Kind::Leases(b)) }))) => {
                    out.extend(b.leases)
                }
                Ok(Ok(Some(_))) => {}
                _ => break,
            }
        }
        out
    }

    async fn send(&self, kind: worker_message::Kind) {
        self.tx.send(pb::WorkerMessage { kind: Some(kind) }).await.unwrap();
    }

    async fn ack(&self, lease_id: u64) {
        let result =
            pb::AnalysisResult { score: 77, verdict: pb::Verdict::Approved as i32, ..Default::default() };
        self.send(worker_message::Kind::Acks(pb::AckBatch {
            acks: vec![pb::Ack { lease_id, result: Some(result) }],
        }))
        .await;
    }

    async fn credits(&self, n: u32) {
        self.send(worker_message::Kind::Credits(pb::CreditGrant { credits: n })).await;
    }
}

fn no_workers(dir: &std::path::Path) -> adflow_gateway::Config {
    let mut cfg = config(dir);
    cfg.workers.in_process = 0;
    cfg
}

#[tokio::test]
async fn an_ad_is_analysed_by_the_in_process_workers_and_watch_sees_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(config(dir.path())).await;
    let ch = gw.channel().await;
    let mut ads = Ads::new(ch.clone());
    let mut control = Control::new(ch.clone());
    // Pause the partition so the watch can start before the workers take the ad.
    control.pause_partition(pb::PartitionRequest { priority: 4 }).await.unwrap();
    let id = submit(&mut ads, spec("Slay dragons in Eldoria", "RPG-Fantasy", 4)).await;
    let mut watch = ads.watch_ad(pb::WatchAdRequest { id: id.clone() }).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, AdStatus::Queued as i32);
    control.resume_partition(pb::PartitionRequest { priority: 4 }).await.unwrap();
    let mut seen = vec![first.status];
    while let Ok(Some(ad)) = tokio::time::timeout(Duration::from_secs(10), watch.message()).await.unwrap() {
        seen.push(ad.status);
    }
    assert_eq!(seen, vec![AdStatus::Queued as i32, AdStatus::Processing as i32, AdStatus::Completed as i32]);
    let done = ads.get_ad(pb::GetAdRequest { id }).await.unwrap().into_inner();
    let a = done.analysis.unwrap();
    assert!(a.worker_id.starts_with("in-process-"), "{}", a.worker_id);
    assert!(a.components.iter().any(|c| c.name == "call_to_action" && !c.reasons.is_empty()));
    assert_eq!(done.attempts, 1);
    gw.stop().await;
}

#[tokio::test]
async fn invalid_ads_are_refused_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(no_workers(dir.path())).await;
    let mut ads = Ads::new(gw.channel().await);
    for (s, field) in [
        (spec("ok", "F", 0), "ad.priority"),
        (spec("ok", "F", 6), "ad.priority"),
        (spec("", "F", 3), "ad.title"),
        (pb::AdSpec { description: "d".repeat(2001), ..spec("ok", "F", 3) }, "ad.description"),
        (pb::AdSpec { visual_elements: vec!["v".into(); 33], ..spec("ok", "F", 3) }, "ad.visual_elements"),
    ] {
        let e = ads.submit_ad(pb::SubmitAdRequest { ad: Some(s) }).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }
    let batch = pb::SubmitAdsRequest { ads: vec![spec("a", "F", 3), spec("b", "F", 9)] };
    let r = ads.submit_ads(batch).await.unwrap().into_inner();
    assert_eq!(r.accepted, 1);
    assert!(r.results[0].accepted.is_some());
    assert_eq!(r.results[1].field, "ad.priority");
    let e = ads.get_ad(pb::GetAdRequest { id: "nope".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = ads.get_ad(pb::GetAdRequest { id: uuid_like() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    gw.stop().await;
}

fn uuid_like() -> String {
    "01890000-0000-7000-8000-000000000000".into()
}

#[tokio::test]
async fn a_worker_never_holds_more_leases_than_its_credits() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(no_workers(dir.path())).await;
    let ch = gw.channel().await;
    let mut ads = Ads::new(ch.clone());
    for i in 0..10 {
        submit(&mut ads, spec(&format!("ad {i}"), "F", 3)).await;
    }
    let mut w = TestWorker::connect(ch, "w1", 3, vec![]).await;
    let first = w.leases(10, Duration::from_millis(500)).await;
    assert_eq!(first.len(), 3, "exactly the credits granted");
    w.ack(first[0].lease_id).await;
    assert!(w.leases(1, Duration::from_millis(300)).await.is_empty(), "an ack alone grants nothing");
    w.credits(2).await;
    assert_eq!(w.leases(10, Duration::from_millis(500)).await.len(), 2);
    gw.stop().await;
}

#[tokio::test]
async fn a_dropped_worker_stream_sends_its_ads_to_another_worker() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(no_workers(dir.path())).await;
    let ch = gw.channel().await;
    let mut ads = Ads::new(ch.clone());
    let id = submit(&mut ads, spec("resilient", "F", 2)).await;
    let mut a = TestWorker::connect(ch.clone(), "a", 5, vec![]).await;
    let l = a.leases(1, Duration::from_secs(2)).await;
    assert_eq!(l[0].ad.as_ref().unwrap().id, id);
    drop(a); // the worker crashes mid-lease
    let mut b = TestWorker::connect(ch, "b", 5, vec![]).await;
    let l = b.leases(1, Duration::from_secs(3)).await;
    assert_eq!((l[0].ad.as_ref().unwrap().id.as_str(), l[0].attempt), (id.as_str(), 2));
    b.ack(l[0].lease_id).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ad = ads.get_ad(pb::GetAdRequest { id }).await.unwrap().into_inner();
    assert_eq!(ad.status, AdStatus::Completed as i32);
    gw.stop().await;
}

#[tokio::test]
async fn expiry_redelivers_refuses_the_late_ack_and_dead_letters_after_max_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = no_workers(dir.path());
    cfg.queue.lease_seconds = 1;
    cfg.queue.max_attempts = 2;
    let gw = TestGateway::start(cfg).await;
    let ch = gw.channel().await;
    let mut ads = Ads::new(ch.clone());
    let mut control = Control::new(ch.clone());
    let id = submit(&mut ads, spec("slow", "F", 3)).await;
    let mut a = TestWorker::connect(ch.clone(), "a", 1, vec![]).await;
    let first = a.leases(1, Duration::from_secs(2)).await.remove(0);
    let mut b = TestWorker::connect(ch.clone(), "b", 1, vec![]).await;
    let second = b.leases(1, Duration::from_secs(4)).await.remove(0);
    assert_eq!(second.attempt, 2, "redelivered after the 1 s lease expired");
    a.ack(first.lease_id).await;
    match a.next().await {
        Some(gateway_message::Kind::Refusals(r)) => {
            assert_eq!(r.refusals[0].code, Code::FailedPrecondition as i32);
            assert_eq!(r.refusals[0].lease_id, first.lease_id);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        ads.get_ad(pb::GetAdRequest { id: id.clone() }).await.unwrap().into_inner().status,
        AdStatus::Processing as i32
    );
    // b never answers: the second expiry exhausts max_attempts = 2.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let ad = ads.get_ad(pb::GetAdRequest { id: id.clone() }).await.unwrap().into_inner();
    assert_eq!(ad.status, AdStatus::DeadLetter as i32);
    let dead = control.list_dead_letters(pb::ListDeadLettersRequest::default()).await.unwrap().into_inner();
    assert_eq!((dead.total, dead.dead_letters[0].id.as_str()), (1, id.as_str()));
    assert!(dead.dead_letters[0].last_error.contains("expired"));
    let r =
        control.requeue_dead_letters(pb::RequeueDeadLettersRequest::default()).await.unwrap().into_inner();
    assert_eq!(r.requeued, 1);
    a.credits(1).await;
    let again = a.leases(1, Duration::from_secs(2)).await.remove(0);
    assert_eq!(again.attempt, 1);
    a.ack(again.lease_id).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        ads.get_ad(pb::GetAdRequest { id }).await.unwrap().into_inner().status,
        AdStatus::Completed as i32
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_low_priority_ad_under_a_flood_is_served_within_its_max_wait() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(no_workers(dir.path())).await;
    let ch = gw.channel().await;
    let mut ads = Ads::new(ch.clone());
    let low = submit(&mut ads, pb::AdSpec { max_wait_seconds: 1, ..spec("patient", "F", 1) }).await;
    let flood: Vec<_> = (0..300).map(|i| spec(&format!("urgent {i}"), "F", 5)).collect();
    for chunk in flood.chunks(100) {
        ads.submit_ads(pb::SubmitAdsRequest { ads: chunk.to_vec() }).await.unwrap();
    }
    // A slow worker: one lease at a time, 10 ms each, so 300 urgent ads take ~3 s.
    let mut w = TestWorker::connect(ch, "slow", 1, vec![]).await;
    let mut served = Vec::new();
    loop {
        let l = w.leases(1, Duration::from_secs(3)).await;
        let Some(l) = l.into_iter().next() else { break };
        let ad = l.ad.unwrap();
        served.push(ad.id.clone());
        tokio::time::sleep(Duration::from_millis(10)).await;
        w.ack(l.lease_id).await;
        w.credits(1).await;
        if ad.id == low {
            assert!(ad.wait_ms <= 1_500, "waited {} ms", ad.wait_ms);
            break;
        }
    }
    let pos = served.iter().position(|x| *x == low).expect("the low-priority ad was served");
    assert!(pos < 250, "served after {pos} urgent ads, before the flood was drained");
    gw.stop().await;
}

#[tokio::test]
async fn operators_reorder_pause_cancel_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(no_workers(dir.path())).await;
    let ch = gw.channel().await;
    let mut ads = Ads::new(ch.clone());
    let mut c = Control::new(ch.clone());
    let rpg = submit(&mut ads, spec("rpg", "RPG-Fantasy", 1)).await;
    let puzzle = submit(&mut ads, spec("puzzle", "Puzzle", 3)).await;
    let gone = submit(&mut ads, spec("to cancel", "Puzzle", 2)).await;
    let filter = pb::AdFilter { game_family: "rpg-fantasy".into(), ..Default::default() };
    let r = c
        .reprioritize(pb::ReprioritizeRequest { filter: Some(filter), new_priority: 5, dry_run: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.changed, r.matched), (1, 1));
    let peek = c.peek(pb::PeekRequest { limit: 10 }).await.unwrap().into_inner().ads;
    assert_eq!(
        peek.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        vec![rpg.as_str(), puzzle.as_str(), gone.as_str()]
    );
    let cancelled = ads.cancel_ad(pb::CancelAdRequest { id: gone.clone() }).await.unwrap().into_inner();
    assert_eq!(cancelled.status, AdStatus::Cancelled as i32);
    let e = ads.cancel_ad(pb::CancelAdRequest { id: gone }).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    c.pause_partition(pb::PartitionRequest { priority: 5 }).await.unwrap();
    let stats = c.get_stats(pb::GetStatsRequest {}).await.unwrap().into_inner();
    assert_eq!(stats.total_queued, 2);
    assert!(stats.partitions.iter().any(|p| p.priority == 5 && p.paused && p.queued == 1));
    let mut w = TestWorker::connect(ch.clone(), "w", 5, vec![]).await;
    let got = w.leases(5, Duration::from_millis(500)).await;
    assert_eq!(
        got.iter().map(|l| l.ad.clone().unwrap().id).collect::<Vec<_>>(),
        vec![puzzle],
        "the paused partition is skipped"
    );
    let e = c.purge_partition(pb::PurgePartitionRequest { priority: 5, confirm: false }).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let p = c
        .purge_partition(pb::PurgePartitionRequest { priority: 5, confirm: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.purged, 1);
    let workers = c.list_workers(pb::ListWorkersRequest {}).await.unwrap().into_inner().workers;
    assert_eq!((workers.len(), workers[0].worker_id.as_str(), workers[0].in_flight), (1, "w", 1));
    let bad =
        c.set_policy(pb::SetPolicyRequest { max_attempts: Some(0), ..Default::default() }).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let pol = c
        .set_policy(pb::SetPolicyRequest { anti_starvation: Some(false), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(!pol.anti_starvation);
    let list = ads
        .list_ads(pb::ListAdsRequest { status: AdStatus::Cancelled as i32, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.ads.len(), 2, "the cancelled and the purged ad");
    gw.stop().await;
}

#[tokio::test]
async fn queued_ads_survive_a_gateway_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = no_workers(dir.path());
    let gw = TestGateway::start(cfg.clone()).await;
    let mut ads = Ads::new(gw.channel().await);
    let ids: Vec<_> = [1, 5, 3].iter().map(|p| spec(&format!("p{p}"), "F", *p)).collect();
    let mut out = Vec::new();
    for s in ids {
        out.push(submit(&mut ads, s).await);
    }
    gw.stop().await;
    let gw = TestGateway::start(cfg).await;
    let ch = gw.channel().await;
    let mut c = Control::new(ch.clone());
    let peek = c.peek(pb::PeekRequest { limit: 10 }).await.unwrap().into_inner().ads;
    assert_eq!(peek.iter().map(|a| a.title.as_str()).collect::<Vec<_>>(), vec!["p5", "p3", "p1"]);
    let mut ads = Ads::new(ch);
    let ad = ads.get_ad(pb::GetAdRequest { id: out[0].clone() }).await.unwrap().into_inner();
    assert_eq!((ad.status, ad.queue_position), (AdStatus::Queued as i32, 2));
    gw.stop().await;
}
