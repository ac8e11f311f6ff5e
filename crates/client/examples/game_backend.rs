//! A game backend in miniature: it reports ad events from its game loop one at a time,
//! submits a new creative for analysis and follows it to completion.
//!
//!     cargo run --release -p adflow-gateway &            # a gateway on 127.0.0.1:50051
//!     cargo run -p adflow-client --example game_backend

use adflow_client::{Client, ClientConfig, SendError, SenderConfig, pb};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::var("ADFLOW_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let mut cfg = ClientConfig::new(endpoint);
    cfg.api_key = std::env::var("ADFLOW_API_KEY").ok();
    let client = Client::connect(cfg).await?;

    // Submit a creative; the gateway queues it by priority and a worker analyses it.
    let ad = pb::AdSpec {
        title: "Slay dragons in Eldoria".into(),
        description: "Build your guild. Fight epic bosses with friends. Collect rare armor.".into(),
        game_family: "RPG-Fantasy".into(),
        genre: "rpg".into(),
        target_audience: vec!["core".into(), "fantasy-fans".into()],
        visual_elements: vec!["dragon".into(), "castle".into()],
        call_to_action: "Play free now".into(),
        duration_seconds: 15,
        priority: 4,
        max_wait_seconds: 0,
    };
    let submitted = client.submit_ad(ad).await?;
    println!("submitted ad {} (position {})", submitted.id, submitted.queue_position);

    // The game loop reports events one at a time; the sender batches and retries.
    let sender = client.event_sender(SenderConfig::default());
    for i in 0..10_000u32 {
        let kind = match i % 50 {
            0 => pb::EventType::Click,
            7 => pb::EventType::VideoStart,
            _ => pb::EventType::Impression,
        };
        let event = pb::AdEvent {
            r#type: kind as i32,
            ad_id: submitted.id.clone(),
            campaign_id: "spring-launch".into(),
            game_family: "RPG-Fantasy".into(),
            user_id: format!("player-{}", i % 700),
            country: "DE".into(),
            ..Default::default() // event_id: a UUIDv7 is generated; timestamp: receive time
        };
        match sender.send(event) {
            Ok(()) => {}
            Err(SendError::Full(e)) => sender.send_wait(*e).await?, // backpressure: wait for room
            Err(e) => return Err(e.into()),
        }
    }
    let rejected = sender.take_rejected();
    let undelivered = sender.close().await;
    println!("events: {} rejected, {} undelivered", rejected.len(), undelivered.len());

    let mut watch = client.watch_ad(&submitted.id).await?;
    while let Some(ad) = watch.next().await {
        let ad = ad?;
        println!("ad {} is {:?}", ad.id, pb::AdStatus::try_from(ad.status).unwrap_or_default());
        if let Some(a) = ad.analysis {
            println!("  score {} {:?}", a.score, pb::Verdict::try_from(a.verdict).unwrap_or_default());
            for c in a.components {
                println!("  {:<15} {:>3}  {}", c.name, c.score, c.reasons.join("; "));
            }
        }
    }
    let stats = client.ad_stats(&submitted.id, pb::Window::LastHour).await?;
    let counts = stats.counts.unwrap_or_default();
    println!(
        "last hour: {} impressions, {} clicks, CTR {:.2}%",
        counts.impressions,
        counts.clicks,
        stats.ctr * 100.0
    );
    Ok(())
}
