//! The operator agent against a phrase table written from how operators talk
//! (tests/data/agent_phrases.txt, and a holdout written after the grammar was frozen:
//! tests/data/agent_phrases_holdout.txt). Every phrase is sent as a dry run to a gateway
//! holding 200 queued ads of six families; the typed command that comes back must be the
//! expected one, or the text must be refused. Reports the accuracy per style; fails on any
//! wrong command (a text run as something else) and below 95% understood.

mod common;

use adflow_client::Client;
use adflow_domain::pb::{self, agent_command::Command};
use common::*;
use std::collections::BTreeMap;

const FAMILIES: [&str; 6] = ["RPG-Fantasy", "Puzzle", "Strategy", "Tower Defense", "Match-3", "Casual"];

/// The expected typed command of a table line (None: refuse).
fn expected(spec: &str, ad: &str) -> Option<Command> {
    let f: Vec<&str> = spec.split(';').collect();
    let n = |i: usize| -> u32 { f[i].parse().unwrap_or_else(|_| panic!("bad number in {spec:?}")) };
    let none = pb::NoArgs {};
    let id = |i: usize| f[i].replace("{ad}", ad);
    Some(match f[0] {
        "refuse" => return None,
        "family" => {
            Command::SetFamilyPriority(pb::SetFamilyPriority { game_family: f[1].into(), priority: n(2) })
        }
        "older" => Command::SetPriorityOlderThan(pb::SetPriorityOlderThan {
            older_than_minutes: if n(1).is_multiple_of(60) { n(1) / 60 } else { 0 },
            priority: n(2),
            older_than_seconds: n(1),
        }),
        "where" => Command::SetPriorityWhere(pb::SetPriorityWhere {
            game_family: f[1].into(),
            older_than_seconds: n(2),
            current_priority: n(3),
            priority: n(4),
        }),
        "ad" => Command::SetAdPriority(pb::AdPriority { ad_id: id(1), priority: n(2) }),
        "next" => Command::ShowNext(pb::Count { value: n(1) }),
        "waiting" => Command::FindWaitingOver(pb::Seconds { seconds: n(1) }),
        "maxwait" => Command::SetMaxWait(pb::Seconds { seconds: n(1) }),
        "workers" => Command::ScaleWorkers(pb::Count { value: n(1) }),
        "batch" => Command::SetBatchSize(pb::Count { value: n(1) }),
        "starvation" => Command::SetAntiStarvation(pb::Toggle { enabled: f[1] == "on" }),
        "pause" => Command::PausePriority(pb::PriorityArg { priority: n(1) }),
        "resume" => Command::ResumePriority(pb::PriorityArg { priority: n(1) }),
        "purge" => Command::PurgePriority(pb::PriorityArg { priority: n(1) }),
        "predict" => Command::Predict(pb::AdArg { ad_id: id(1) }),
        "distribution" => Command::QueueDistribution(none),
        "summary" => Command::PerformanceSummary(none),
        "report" => Command::PerformanceReport(none),
        "families" => Command::FamilyStats(none),
        "recommend" => Command::RecommendPriorities(none),
        "optimize" => Command::OptimizeWaitTime(none),
        "capacity" => Command::CapacityReport(none),
        "deadletters" => Command::ShowDeadLetters(none),
        "requeue" => Command::RequeueDeadLetters(none),
        "settings" => Command::ShowSettings(none),
        other => panic!("unknown expectation {other:?} in {spec:?}"),
    })
}

#[derive(Default)]
struct Tally {
    total: usize,
    correct: usize,
    refused: usize,
    wrong: usize,
}

/// Runs one table file; returns the tallies per section and every miss.
async fn run_table(c: &Client, file: &str, ad: &str) -> (BTreeMap<String, Tally>, Vec<String>) {
    let path = format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut agent = pb::agent_service_client::AgentServiceClient::new(c.channel());
    let mut section = String::from("?");
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    let mut misses = Vec::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            section = h.trim().to_string();
            continue;
        }
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (phrase, spec) = line.rsplit_once(" => ").unwrap_or_else(|| panic!("no ' => ' in {line:?}"));
        let phrase = phrase.replace("{ad}", ad).replace("{AD}", &ad.to_uppercase());
        let want = expected(spec.trim(), ad);
        let got = agent
            .execute(pb::ExecuteRequest { text: phrase.clone(), dry_run: true, ..Default::default() })
            .await;
        let t = tallies.entry(section.clone()).or_default();
        t.total += 1;
        match (got, &want) {
            (Ok(r), Some(w)) if r.get_ref().command.as_ref().and_then(|c| c.command.as_ref()) == Some(w) => {
                t.correct += 1
            }
            (Ok(r), _) => {
                t.wrong += 1;
                let r = r.into_inner();
                misses.push(format!(
                    "WRONG   {phrase:?}: ran as {} ({:?}), expected {spec}",
                    r.understood_as, r.command
                ));
            }
            (Err(e), None) => {
                assert!(
                    matches!(e.code(), tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition),
                    "{phrase:?}: {e:?}"
                );
                assert!(
                    e.message().contains("closest supported commands"),
                    "a refusal helps: {phrase:?}: {}",
                    e.message()
                );
                t.correct += 1;
            }
            (Err(e), Some(_)) => {
                t.refused += 1;
                misses.push(format!("REFUSED {phrase:?} (expected {spec}): {}", e.message()));
            }
        }
    }
    (tallies, misses)
}

fn report(name: &str, tallies: &BTreeMap<String, Tally>) -> Tally {
    let mut all = Tally::default();
    println!("\n{name}");
    println!("{:<70} {:>5} {:>8} {:>8} {:>6}", "style", "n", "correct", "refused", "WRONG");
    for (k, t) in tallies {
        println!(
            "{k:<70} {:>5} {:>7.1}% {:>8} {:>6}",
            t.total,
            100.0 * t.correct as f64 / t.total as f64,
            t.refused,
            t.wrong
        );
        all.total += t.total;
        all.correct += t.correct;
        all.refused += t.refused;
        all.wrong += t.wrong;
    }
    println!(
        "{:<70} {:>5} {:>7.1}% {:>8} {:>6}",
        "all",
        all.total,
        100.0 * all.correct as f64 / all.total as f64,
        all.refused,
        all.wrong
    );
    all
}

#[tokio::test]
async fn operator_phrasings_are_understood_and_never_run_as_another_command() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.workers.in_process = 0;
    let gw = TestGateway::start(cfg).await;
    let c = Client::connect_to(format!("http://{}", gw.addr)).await.unwrap();
    let mut first = String::new();
    for i in 0..200u32 {
        let spec = pb::AdSpec {
            title: format!("ad {i}"),
            game_family: FAMILIES[i as usize % 6].into(),
            priority: 1 + i % 5,
            ..Default::default()
        };
        let id = c.submit_ad(spec).await.unwrap().id;
        if first.is_empty() {
            first = id;
        }
    }
    let (tallies, misses) = run_table(&c, "agent_phrases.txt", &first).await;
    let main = report("phrase table (tests/data/agent_phrases.txt)", &tallies);
    let (holdout_tallies, holdout_misses) = run_table(&c, "agent_phrases_holdout.txt", &first).await;
    let holdout = report("holdout (tests/data/agent_phrases_holdout.txt)", &holdout_tallies);
    for m in misses.iter().chain(&holdout_misses) {
        println!("{m}");
    }
    assert!(main.total >= 250, "the table holds {} phrasings", main.total);
    assert_eq!(main.wrong + holdout.wrong, 0, "texts run as another command");
    let accuracy = (main.correct + holdout.correct) as f64 / (main.total + holdout.total) as f64;
    assert!(accuracy >= 0.95, "understood {:.1}% (< 95%)", 100.0 * accuracy);
    gw.stop().await;
}
