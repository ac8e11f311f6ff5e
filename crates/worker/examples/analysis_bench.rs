//! Micro-benchmark of the analysis: microseconds per ad.
use adflow_proto::v1 as pb;
use adflow_worker::analysis::{AnalysisConfig, Analyzer};
use std::time::Instant;

fn main() {
    let mut an = Analyzer::new(AnalysisConfig::default());
    let n = 50_000u64;
    let ads: Vec<pb::Ad> = (0..n)
        .map(|i| pb::Ad {
            id: format!("ad-{i}"),
            spec: Some(pb::AdSpec {
                title: format!("Slay dragons in Eldoria #{i}"),
                description: format!(
                    "Season {} is here. Team up, collect rare rewards and climb the ladder. New map {}.",
                    i % 12,
                    i % 97
                ),
                game_family: "RPG-Fantasy".into(),
                genre: "rpg".into(),
                target_audience: vec!["core".into(), "casual".into()],
                visual_elements: vec!["gameplay-footage".into(), "characters".into()],
                call_to_action: "Play free now".into(),
                duration_seconds: 15,
                priority: 3,
                max_wait_seconds: 0,
            }),
            ..Default::default()
        })
        .collect();
    let t = Instant::now();
    let mut dups = 0;
    for ad in &ads {
        let r = an.analyze(ad, None, "bench", 0);
        dups += usize::from(!r.near_duplicate_of.is_empty());
    }
    println!("{:.1} us/ad over {n} ads ({dups} near duplicates)", t.elapsed().as_micros() as f64 / n as f64);
}
