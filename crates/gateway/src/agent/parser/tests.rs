//! The phrase table: every supported command with synonyms, word-order variants,
//! numbers in words and case/punctuation noise.

use super::*;

fn fam(f: &str, p: u32) -> Command {
    Command::SetFamilyPriority(pb::SetFamilyPriority { game_family: f.into(), priority: p })
}

fn none() -> pb::NoArgs {
    pb::NoArgs {}
}

#[test]
fn every_phrase_maps_to_its_typed_command() {
    let id = "01a209da-59c6-7124-b5ca-9b5f6dc7f244";
    let table: Vec<(String, Command)> = vec![
        ("change priority to 5 for all ads in the RPG-Fantasy family".into(), fam("RPG-Fantasy", 5)),
        ("Change priority to five for all ads in family RPG-Fantasy!".into(), fam("RPG-Fantasy", 5)),
        ("set the priority to 2 for ads in Puzzle".into(), fam("Puzzle", 2)),
        (
            "please update priority to 4 for all the ads from the Shooter game family".into(),
            fam("Shooter", 4),
        ),
        ("set priority of all Strategy ads to 1".into(), fam("Strategy", 1)),
        ("change the priority for ads in the RPG-Fantasy family to three.".into(), fam("RPG-Fantasy", 3)),
        ("move all RPG-Fantasy ads to high priority".into(), fam("RPG-Fantasy", 5)),
        ("Move all Puzzle ads to LOW priority".into(), fam("Puzzle", 1)),
        ("bump the Casual ads to top priority".into(), fam("Casual", 5)),
        ("push all ads in Racing to highest".into(), fam("Racing", 5)),
        (
            "set priority 4 for ads older than 30 minutes".into(),
            Command::SetPriorityOlderThan(pb::SetPriorityOlderThan { priority: 4, older_than_minutes: 30 }),
        ),
        (
            "Set priority five for all ads waiting longer than two hours".into(),
            Command::SetPriorityOlderThan(pb::SetPriorityOlderThan { priority: 5, older_than_minutes: 120 }),
        ),
        (
            "set ads older than 45 min to priority 3".into(),
            Command::SetPriorityOlderThan(pb::SetPriorityOlderThan { priority: 3, older_than_minutes: 45 }),
        ),
        ("show the next 10 ads to be processed".into(), Command::ShowNext(pb::Count { value: 10 })),
        ("Show me the next ten ads".into(), Command::ShowNext(pb::Count { value: 10 })),
        ("list next 25 ads in the queue".into(), Command::ShowNext(pb::Count { value: 25 })),
        ("what are the next twenty-five ads?".into(), Command::ShowNext(pb::Count { value: 25 })),
        ("find ads waiting longer than 15 minutes".into(), Command::FindWaiting(pb::Minutes { minutes: 15 })),
        (
            "List all ads that have been waiting more than fifteen minutes".into(),
            Command::FindWaiting(pb::Minutes { minutes: 15 }),
        ),
        ("show ads queued for longer than 1 hour".into(), Command::FindWaiting(pb::Minutes { minutes: 60 })),
        ("enable starvation mode".into(), Command::SetAntiStarvation(pb::Toggle { enabled: true })),
        ("Disable anti-starvation.".into(), Command::SetAntiStarvation(pb::Toggle { enabled: false })),
        ("turn off starvation protection".into(), Command::SetAntiStarvation(pb::Toggle { enabled: false })),
        ("starvation mode on".into(), Command::SetAntiStarvation(pb::Toggle { enabled: true })),
        ("set maximum wait time to 10 minutes".into(), Command::SetMaxWait(pb::Seconds { seconds: 600 })),
        ("Set max wait to 90 seconds".into(), Command::SetMaxWait(pb::Seconds { seconds: 90 })),
        (
            "change the maximum waiting time to two hours".into(),
            Command::SetMaxWait(pb::Seconds { seconds: 7200 }),
        ),
        ("set worker count to 4".into(), Command::ScaleWorkers(pb::Count { value: 4 })),
        ("scale workers to eight".into(), Command::ScaleWorkers(pb::Count { value: 8 })),
        ("Scale the workers down to 0".into(), Command::ScaleWorkers(pb::Count { value: 0 })),
        ("change number of workers to 3".into(), Command::ScaleWorkers(pb::Count { value: 3 })),
        ("set batch size to 4096".into(), Command::SetBatchSize(pb::Count { value: 4096 })),
        ("Set the ingest batch size to 500 events".into(), Command::SetBatchSize(pb::Count { value: 500 })),
        ("current queue distribution by priority".into(), Command::QueueDistribution(none())),
        ("show the distribution per priority".into(), Command::QueueDistribution(none())),
        ("how many ads are queued per priority?".into(), Command::QueueDistribution(none())),
        ("queue performance summary".into(), Command::PerformanceSummary(none())),
        ("Summarize the queue performance".into(), Command::PerformanceSummary(none())),
        ("performance report for the last hour".into(), Command::PerformanceReport(none())),
        ("give me a performance report".into(), Command::PerformanceReport(none())),
        ("processing statistics by game family".into(), Command::FamilyStats(none())),
        ("show stats per family".into(), Command::FamilyStats(none())),
        (format!("predict when ad {id} will be processed"), Command::Predict(pb::AdArg { ad_id: id.into() })),
        (
            format!("When will {} be done?", id.to_uppercase()),
            Command::Predict(pb::AdArg { ad_id: id.into() }),
        ),
        ("recommend priority changes".into(), Command::RecommendPriorities(none())),
        ("Please suggest some priority changes".into(), Command::RecommendPriorities(none())),
        ("capacity utilization report".into(), Command::CapacityReport(none())),
        ("how busy are the workers?".into(), Command::CapacityReport(none())),
        ("pause priority 2".into(), Command::PausePriority(pb::PriorityArg { priority: 2 })),
        ("Pause partition five".into(), Command::PausePriority(pb::PriorityArg { priority: 5 })),
        ("resume priority 2".into(), Command::ResumePriority(pb::PriorityArg { priority: 2 })),
        ("unpause the priority partition 4".into(), Command::ResumePriority(pb::PriorityArg { priority: 4 })),
        ("show dead letters".into(), Command::ShowDeadLetters(none())),
        ("list the dead-letter queue".into(), Command::ShowDeadLetters(none())),
        ("requeue dead letters".into(), Command::RequeueDeadLetters(none())),
        ("Retry all the failed ads".into(), Command::RequeueDeadLetters(none())),
    ];
    for (text, want) in table {
        let got = parse(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(got.command, Some(want), "{text:?}");
    }
}

#[test]
fn unknown_text_lists_the_closest_commands() {
    let e = parse("make me a sandwich").unwrap_err();
    assert_eq!(e.suggestions.len(), 3);
    let e = parse("show dead ads please now").unwrap_err();
    assert!(e.suggestions.iter().any(|s| s.contains("dead letters")), "{:?}", e.suggestions);
}

#[test]
fn number_words_become_digits() {
    assert_eq!(numbers_to_digits("set it to twenty five now"), "set it to 25 now");
    assert_eq!(numbers_to_digits("Seventy-two, please"), "72, please");
    assert_eq!(numbers_to_digits("five."), "5.");
}
