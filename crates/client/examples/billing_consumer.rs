//! A downstream consumer in miniature: a billing job reads the stored events of consumer
//! group "billing" (resuming where it last committed), totals revenue per campaign, and
//! commits after each processed batch. Stop it any time; the next run goes on from the
//! last commit (at-least-once: the batch in progress may come again, so dedup by id).
//!
//!     cargo run --release -p adflow-gateway &            # a gateway on 127.0.0.1:50051
//!     cargo run -p adflow-client --example billing_consumer

use adflow_client::{Client, ClientConfig, ConsumerConfig, pb};
use std::collections::{BTreeMap, HashSet};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::var("ADFLOW_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let mut cfg = ClientConfig::new(endpoint);
    cfg.api_key = std::env::var("ADFLOW_API_KEY").ok(); // a key with the reader role
    let client = Client::connect(cfg).await?;

    // Only revenue-bearing events; follow new commits after catching up.
    let mut consumer = client.consumer(ConsumerConfig {
        event_types: vec![pb::EventType::Conversion, pb::EventType::Install],
        max_batch_events: 5_000,
        ..ConsumerConfig::group("billing")
    })?;
    let mut revenue: BTreeMap<String, f64> = BTreeMap::new();
    let mut seen = HashSet::new();
    while let Some(batch) = consumer.next_batch().await? {
        if batch.lost_events > 0 || batch.gap {
            eprintln!("retention removed {} events this group had not read", batch.lost_events);
        }
        for e in batch.events.iter().filter_map(|l| l.event.as_ref()) {
            if seen.insert(e.event_id.clone()) {
                *revenue.entry(e.campaign_id.clone()).or_default() += e.revenue_usd.unwrap_or(0.0);
            }
        }
        consumer.commit().await?; // processed: resume after this batch from now on
        if batch.caught_up {
            println!("caught up at {}: {revenue:?}", batch.cursor);
        }
    }
    Ok(())
}
