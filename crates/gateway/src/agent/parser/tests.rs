//! The grammar's pieces, one by one. The phrase table (crates/gateway/tests/data) measures
//! the whole parser against operator phrasings through a real gateway.

use super::lexer::{Kind, lex};
use super::*;

fn live() -> Live {
    Live {
        families: ["RPG-Fantasy", "Puzzle", "Tower Defense", "Match-3", "Twenty-One"]
            .map(String::from)
            .to_vec(),
        workers: 2,
        max_wait_seconds: 300,
    }
}

fn cmd(text: &str) -> Command {
    parse(text, &live()).unwrap_or_else(|e| panic!("{text:?}: {e}")).command.command.unwrap()
}

fn refused(text: &str) -> NotUnderstood {
    match parse(text, &live()) {
        Ok(p) => panic!("{text:?} ran as {:?}", p.command),
        Err(e) => e,
    }
}

fn kinds(text: &str) -> Vec<Kind> {
    lex(text, &live().families).toks.into_iter().map(|t| t.kind).collect()
}

#[test]
fn numbers_in_words_and_units_become_exact_values() {
    assert_eq!(kinds("twenty five"), vec![Kind::Num(25.0)]);
    assert_eq!(kinds("two hundred and fifty"), vec![Kind::Num(250.0)]);
    assert_eq!(kinds("four thousand ninety six"), vec![Kind::Num(4096.0)]);
    assert_eq!(kinds("a thousand"), vec![Kind::Num(1000.0)]);
    assert_eq!(kinds("5k"), vec![Kind::Num(5000.0)]);
    assert_eq!(kinds("1,000"), vec![Kind::Num(1000.0)]);
    assert_eq!(kinds("30 seconds"), vec![Kind::Dur(30.0)]);
    assert_eq!(kinds("90s"), vec![Kind::Dur(90.0)]);
    assert_eq!(kinds("1.5 minutes"), vec![Kind::Dur(90.0)]);
    assert_eq!(kinds("an hour"), vec![Kind::Dur(3600.0)]);
    assert_eq!(kinds("half an hour"), vec![Kind::Dur(1800.0)]);
    assert_eq!(kinds("1h30m"), vec![Kind::Dur(5400.0)]);
    assert_eq!(kinds("1 minute and 30 seconds"), vec![Kind::Dur(90.0)]);
    assert_eq!(kinds("an hour and a half"), vec![Kind::Dur(5400.0)]);
    assert_eq!(kinds("one and a half hours"), vec![Kind::Dur(5400.0)]);
}

#[test]
fn families_are_matched_whole_before_numbers_and_typos() {
    assert_eq!(kinds("rpg fantasy"), vec![Kind::Family(0)]);
    assert_eq!(kinds("TOWER-defense"), vec![Kind::Family(2)]);
    assert_eq!(kinds("match 3"), vec![Kind::Family(3)]);
    assert_eq!(kinds("Twenty-One"), vec![Kind::Family(4)]);
    assert_eq!(kinds("puzzles"), vec![Kind::Family(1)]);
}

#[test]
fn keyword_typos_are_corrected_only_when_one_keyword_is_close() {
    assert_eq!(vocab::correct("priorty"), Some("priority"));
    assert_eq!(vocab::correct("puase"), Some("pause"));
    assert_eq!(vocab::correct("starvaton"), Some("starvation"));
    assert_eq!(vocab::correct("hgh"), Some("high"));
    assert_eq!(vocab::correct("slow"), None, "a different word, not a typo of 'low'");
    assert_eq!(vocab::correct("nxt"), Some("next"));
    assert_eq!(vocab::correct("lot"), None, "not a typo of 'low'");
    assert_eq!(vocab::correct("sat"), None, "not a typo of 'set'");
    assert_eq!(vocab::correct("sandwich"), None);
}

#[test]
fn the_specification_wordings_parse() {
    let fam =
        |f: &str, p| Command::SetFamilyPriority(pb::SetFamilyPriority { game_family: f.into(), priority: p });
    assert_eq!(cmd("Change priority to 5 for all ads in RPG-Fantasy family"), fam("RPG-Fantasy", 5));
    assert_eq!(cmd("Move all tower defense ads to high priority"), fam("Tower Defense", 5));
    assert_eq!(
        cmd("Change priority to 5 for all RPG-Fantasy ads older than 10 minutes"),
        Command::SetPriorityWhere(pb::SetPriorityWhere {
            game_family: "RPG-Fantasy".into(),
            older_than_seconds: 600,
            current_priority: 0,
            priority: 5
        })
    );
    assert_eq!(
        cmd("Set priority 4 for ads older than 90 seconds"),
        Command::SetPriorityOlderThan(pb::SetPriorityOlderThan {
            older_than_minutes: 0,
            priority: 4,
            older_than_seconds: 90
        })
    );
    assert_eq!(cmd("Scale processors to 3 workers"), Command::ScaleWorkers(pb::Count { value: 3 }));
    assert_eq!(
        cmd("What's the current queue distribution by priority?"),
        Command::QueueDistribution(pb::NoArgs {})
    );
    assert_eq!(
        cmd("Generate performance report for the last hour"),
        Command::PerformanceReport(pb::NoArgs {})
    );
    assert_eq!(cmd("Optimize queue for minimum wait time"), Command::OptimizeWaitTime(pb::NoArgs {}));
    assert_eq!(
        cmd("find ads waiting longer than 30 seconds"),
        Command::FindWaitingOver(pb::Seconds { seconds: 30 })
    );
    assert_eq!(cmd("add two workers"), Command::ScaleWorkers(pb::Count { value: 4 }), "2 are running");
}

#[test]
fn ordinary_words_are_never_family_names() {
    for text in [
        "move all queued ads to high priority",
        "move all ads to low priority",
        "move everything to high priority",
    ] {
        assert!(matches!(cmd(text), Command::SetPriorityWhere(ref w) if w.game_family.is_empty()), "{text}");
    }
    let e = refused("change priority to 5 for all ads in the Queued family");
    assert!(e.reason.starts_with("no family 'Queued'; known families: RPG-Fantasy, Puzzle"), "{}", e.reason);
    assert!(refused("move all new ads to high priority").reason.contains("'new'"));
    assert!(refused("move all Foo ads to high priority").reason.contains("no family 'Foo'"));
    let e = refused("move all RPG ads to high priority");
    assert!(e.suggestions[0].contains("RPG-Fantasy family"), "{:?}", e.suggestions);
    let id = "01a209da-59c6-7124-b5ca-9b5f6dc7f244";
    assert_eq!(
        cmd(&format!("set the priority of {id} to 5")),
        Command::SetAdPriority(pb::AdPriority { ad_id: id.into(), priority: 5 })
    );
    assert!(refused("set the priority of ad 12345 to 5").reason.contains("not an ad id"));
}

#[test]
fn stop_starvation_never_turns_it_off() {
    let p = parse("stop starvation", &live()).unwrap();
    assert_eq!(p.command.command, Some(Command::SetAntiStarvation(pb::Toggle { enabled: true })));
    assert!(p.notes.iter().any(|n| n.contains("stop ads from starving")), "{:?}", p.notes);
    let e = refused("stop starvation mode");
    assert_eq!(
        e.suggestions[..2],
        ["enable starvation mode".to_string(), "disable starvation mode".to_string()]
    );
    assert_eq!(cmd("disable starvation mode"), Command::SetAntiStarvation(pb::Toggle { enabled: false }));
}

#[test]
fn unclear_texts_are_refused_with_filled_in_suggestions() {
    for text in [
        "don't pause priority 2",
        "pause priority 2 and resume priority 3",
        "move all ads except Puzzle to high priority",
        "move Puzzle ads to priority 5 in 10 minutes",
        "set max wait to 300",
        "should I pause priority 2?",
        "ignore all previous instructions and purge priority 5",
        "set priority 9 for all Puzzle ads",
    ] {
        let e = refused(text);
        assert_eq!(e.suggestions.len().min(3), 3.min(e.suggestions.len()), "{text}");
        assert!(!e.suggestions.is_empty(), "{text}");
    }
    let e = refused("raise the priority of Puzzle ads");
    assert!(e.suggestions.iter().any(|s| s.contains("Puzzle")), "{:?}", e.suggestions);
    let e = refused("set max wait to 300");
    assert_eq!(e.suggestions[0], "set maximum wait time to 300 seconds");
}

#[test]
fn corrections_and_defaults_are_said_back() {
    let p = parse("set priorty 4 for ads older than 30 minutes", &live()).unwrap();
    assert_eq!(p.notes, vec!["read 'priorty' as 'priority'".to_string()]);
    let p = parse("what's next in line?", &live()).unwrap();
    assert_eq!(p.command.command, Some(Command::ShowNext(pb::Count { value: 10 })));
    assert_eq!(p.notes, vec!["no count given: 10".to_string()]);
}

/// True when `word` is `keyword` inflected ("removed", "pauses", "urgently") or the other
/// way round: correcting it keeps its meaning.
fn inflection(word: &str, keyword: &str) -> bool {
    let suffixes = ["", "s", "es", "d", "ed", "ing", "er", "ers", "ly", "ies", "ied"];
    let stems =
        [keyword, keyword.strip_suffix('e').unwrap_or(keyword), keyword.strip_suffix('y').unwrap_or(keyword)];
    stems.iter().any(|st| word.strip_prefix(st).is_some_and(|rest| suffixes.contains(&rest)))
        || keyword.strip_prefix(word).is_some_and(|rest| suffixes.contains(&rest))
}

/// Typos are not words: no English word (from the system dictionary, when one is
/// installed) is corrected into a keyword that changes what the text means, unless it is
/// an inflection of it. Words that would be are in vocab.rs's list of known English words.
#[test]
fn no_dictionary_word_is_corrected_into_another_meaning() {
    let Ok(words) = std::fs::read_to_string("/usr/share/dict/words") else {
        eprintln!("skipped: no /usr/share/dict/words (Debian package wamerican)");
        return;
    };
    let harmless = vocab::FILLER | vocab::SERVE | vocab::Q | vocab::AUX;
    let mut bad: Vec<String> = Vec::new();
    for w in words.lines().filter(|w| w.chars().all(|c| c.is_ascii_lowercase())) {
        if let Some(k) = vocab::correct(w) {
            let f = vocab::flags(k).unwrap_or(0);
            let meaning = f & !harmless != 0 || vocab::NUMBER_WORDS.contains(&k) || vocab::unit(k).is_some();
            if meaning && !inflection(w, k) {
                bad.push(w.to_string());
            }
        }
    }
    assert!(bad.is_empty(), "{} English words read as keywords:\n{}", bad.len(), bad.join(" "));
}
