//! The deterministic command parser. Numbers written as words become digits first
//! ("five" -> 5, "twenty five" -> 25), punctuation noise at the ends is dropped, and a
//! table of case-insensitive patterns (synonyms and word orders included) maps the text
//! to one typed command. Text matching nothing is answered with the closest supported
//! commands, ranked by shared words.

use adflow_domain::pb::{self, agent_command::Command};
use regex::Regex;
use std::sync::LazyLock;

/// The text was not understood.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("not understood: {text:?}; closest supported commands: {}", suggestions.join(" | "))]
pub struct NotUnderstood {
    /// The text.
    pub text: String,
    /// Up to three supported phrasings, closest first.
    pub suggestions: Vec<String>,
}

/// Example phrasings of every command (also the suggestion list).
pub const EXAMPLES: &[&str] = &[
    "change priority to 5 for all ads in the RPG-Fantasy family",
    "set priority 4 for ads older than 30 minutes",
    "move all Puzzle ads to high priority",
    "show the next 10 ads to be processed",
    "find ads waiting longer than 15 minutes",
    "enable starvation mode",
    "disable starvation mode",
    "set maximum wait time to 10 minutes",
    "scale workers to 4",
    "set batch size to 4096",
    "current queue distribution by priority",
    "queue performance summary",
    "performance report for the last hour",
    "processing statistics by game family",
    "predict when ad <id> will be processed",
    "recommend priority changes",
    "capacity utilization report",
    "pause priority 2",
    "resume priority 2",
    "show dead letters",
    "requeue dead letters",
];

const UNITS: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const TENS: [&str; 10] =
    ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"];

/// Replaces number words with digits ("twenty five" -> "25", "a hundred" stays words).
fn numbers_to_digits(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut out: Vec<String> = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        let w = words[i].to_lowercase();
        let (core, tail) = split_punct(&w);
        if let Some(t) = TENS.iter().position(|x| !x.is_empty() && *x == core) {
            let mut v = t * 10;
            let mut used = 1;
            if tail.is_empty()
                && let Some(next) = words.get(i + 1)
            {
                let n = next.to_lowercase();
                let (ncore, _) = split_punct(&n);
                if let Some(u) = UNITS[1..10].iter().position(|x| *x == ncore) {
                    v += u + 1;
                    used = 2;
                }
            }
            if let Some((a, b)) = core.split_once('-')
                && let (Some(t), Some(u)) =
                    (TENS.iter().position(|x| *x == a), UNITS.iter().position(|x| *x == b))
            {
                v = t * 10 + u;
            }
            out.push(format!("{v}{tail}"));
            i += used;
            continue;
        }
        if let Some((a, b)) = core.split_once('-')
            && let (Some(t), Some(u)) =
                (TENS.iter().position(|x| !x.is_empty() && *x == a), UNITS.iter().position(|x| *x == b))
        {
            out.push(format!("{}{tail}", t * 10 + u));
            i += 1;
            continue;
        }
        match UNITS.iter().position(|x| *x == core) {
            Some(u) => out.push(format!("{u}{tail}")),
            None => out.push(words[i].to_string()),
        }
        i += 1;
    }
    out.join(" ")
}

fn split_punct(w: &str) -> (&str, &str) {
    let end = w.trim_end_matches([',', '.', '!', '?', ';', ':']).len();
    (&w[..end], &w[end..])
}

fn normalise(text: &str) -> String {
    let t = numbers_to_digits(text.trim());
    let t = t.trim_matches(|c: char| {
        matches!(c, '.' | '!' | '?' | ',' | ';' | ':' | '"' | '\'') || c.is_whitespace()
    });
    let t = t.replace(['"', '\''], "");
    t.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn level(word: &str) -> Option<u32> {
    match word.to_lowercase().as_str() {
        "high" | "highest" | "top" | "max" | "maximum" | "urgent" => Some(5),
        "low" | "lowest" | "bottom" | "min" | "minimum" => Some(1),
        "medium" | "normal" | "default" => Some(3),
        d => d.parse().ok(),
    }
}

fn minutes(n: u32, unit: &str) -> u32 {
    let u = unit.to_lowercase();
    if u.starts_with('h') {
        n.saturating_mul(60)
    } else if u.starts_with('s') {
        n.div_ceil(60)
    } else {
        n
    }
}

fn seconds(n: u32, unit: &str) -> u32 {
    let u = unit.to_lowercase();
    if u.starts_with('h') {
        n.saturating_mul(3600)
    } else if u.starts_with('m') {
        n.saturating_mul(60)
    } else {
        n
    }
}

type Build = fn(&regex::Captures<'_>) -> Option<Command>;

fn num(c: &regex::Captures<'_>, i: usize) -> Option<u32> {
    c.get(i)?.as_str().parse().ok()
}

fn s(c: &regex::Captures<'_>, i: usize) -> String {
    c.get(i).map(|m| m.as_str().to_string()).unwrap_or_default()
}

const FAM: &str = r"([A-Za-z0-9][\w-]*)";
const UNIT: &str = r"(seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h)";

static RULES: LazyLock<Vec<(Regex, Build)>> = LazyLock::new(|| {
    let r = |p: &str| Regex::new(&format!("(?i)^{p}$")).expect("valid pattern");
    let rules: Vec<(String, Build)> = vec![
        // Family priority, priority first.
        (format!(r"(?:please )?(?:change|set|update|make) (?:the )?priority (?:to |= ?|of )?(\w+) for (?:all )?(?:the )?(?:ads? )?(?:in|of|from) (?:the )?(?:family |game family )?{FAM}(?: game)?(?: family)?(?: ads)?"),
         |c| Some(Command::SetFamilyPriority(pb::SetFamilyPriority { game_family: s(c, 2), priority: level(&s(c, 1))? }))),
        // Family priority, family first.
        (format!(r"(?:please )?(?:change|set|update) (?:the )?priority (?:of|for) (?:all )?(?:the )?(?:ads in (?:the )?)?{FAM}(?: game)?(?: family)?(?: ads)? to (\w+)"),
         |c| Some(Command::SetFamilyPriority(pb::SetFamilyPriority { game_family: s(c, 1), priority: level(&s(c, 2))? }))),
        (format!(r"(?:please )?(?:move|bump|put|send|push|shift) (?:all )?(?:the )?(?:ads (?:in|of|from) (?:the )?)?{FAM}(?: game)?(?: family)?(?: ads)? to (?:the )?(\w+)(?: priority)?"),
         |c| Some(Command::SetFamilyPriority(pb::SetFamilyPriority { game_family: s(c, 1), priority: level(&s(c, 2))? }))),
        (format!(r"(?:set|change|make) (?:the )?priority (?:to )?(\w+) for (?:all )?(?:the )?(?:ads|items)? ?(?:older than|waiting (?:longer|more) than|that waited (?:longer|more) than) (\d+) ?{UNIT}"),
         |c| Some(Command::SetPriorityOlderThan(pb::SetPriorityOlderThan { priority: level(&s(c, 1))?, older_than_minutes: minutes(num(c, 2)?, &s(c, 3)) }))),
        (format!(r"(?:set|change|make) (?:all )?(?:the )?ads (?:older than|waiting (?:longer|more) than) (\d+) ?{UNIT} to (?:priority )?(\w+)(?: priority)?"),
         |c| Some(Command::SetPriorityOlderThan(pb::SetPriorityOlderThan { priority: level(&s(c, 3))?, older_than_minutes: minutes(num(c, 1)?, &s(c, 2)) }))),
        (r"(?:please )?(?:show|list|display|peek at|give|get|what are)(?: me)? (?:the )?next (\d+)(?: ads| items)?(?: (?:to be|that will be|in line to be) (?:processed|served|analy[sz]ed))?(?: in (?:the )?queue)?".into(),
         |c| Some(Command::ShowNext(pb::Count { value: num(c, 1)? }))),
        (format!(r"(?:please )?(?:find|list|show|which are|get)(?: me)? (?:all )?(?:the )?ads (?:that )?(?:have )?(?:been )?(?:waiting|queued|waited|in (?:the )?queue) (?:for )?(?:longer|more) than (\d+) ?{UNIT}"),
         |c| Some(Command::FindWaiting(pb::Minutes { minutes: minutes(num(c, 1)?, &s(c, 2)) }))),
        (r"(enable|disable|turn on|turn off|activate|deactivate|switch on|switch off|start|stop) (?:the )?(?:anti[- ]?)?starvation(?: mode| protection| prevention)?".into(),
         |c| {
            let w = s(c, 1).to_lowercase();
            Some(Command::SetAntiStarvation(pb::Toggle { enabled: ["enable", "turn on", "activate", "switch on", "start"].contains(&w.as_str()) }))
         }),
        (r"(?:set )?(?:the )?(?:anti[- ]?)?starvation(?: mode| protection)? (?:to )?(on|off|enabled|disabled)".into(),
         |c| Some(Command::SetAntiStarvation(pb::Toggle { enabled: ["on", "enabled"].contains(&s(c, 1).to_lowercase().as_str()) }))),
        (format!(r"(?:set|change|make) (?:the )?(?:default )?(?:max(?:imum)?|max\.) ?wait(?:ing)?(?: time)? (?:to |= ?)?(\d+) ?{UNIT}"),
         |c| Some(Command::SetMaxWait(pb::Seconds { seconds: seconds(num(c, 1)?, &s(c, 2)) }))),
        (r"(?:set|change) (?:the )?(?:worker count|number of workers|workers|in-process workers) to (\d+)".into(),
         |c| Some(Command::ScaleWorkers(pb::Count { value: num(c, 1)? }))),
        (r"scale (?:the )?(?:in-process )?workers (?:to|up to|down to) (\d+)".into(),
         |c| Some(Command::ScaleWorkers(pb::Count { value: num(c, 1)? }))),
        (r"(?:set|change) (?:the )?(?:ingest )?batch ?size to (\d+)(?: events)?".into(),
         |c| Some(Command::SetBatchSize(pb::Count { value: num(c, 1)? }))),
        (r"(?:show )?(?:the )?(?:current )?(?:queue )?distribution(?: of the queue)? (?:by|per) priority|how many ads (?:are )?(?:queued )?(?:per|by|at each) priority".into(),
         |_| Some(Command::QueueDistribution(pb::NoArgs {}))),
        (r"(?:show |give me )?(?:a |the )?queue performance summary|summari[sz]e (?:the )?queue(?: performance)?|queue summary".into(),
         |_| Some(Command::PerformanceSummary(pb::NoArgs {}))),
        (r"(?:show |give me )?(?:a |the )?performance report(?: for (?:the )?last (?:1 )?hour)?|how did (?:we|the queue) do in the last hour".into(),
         |_| Some(Command::PerformanceReport(pb::NoArgs {}))),
        (r"(?:show )?(?:the )?(?:processing )?stat(?:istic)?s (?:by|per) (?:game )?family".into(),
         |_| Some(Command::FamilyStats(pb::NoArgs {}))),
        (r"(?:predict|estimate) when (?:ad )?(?:id )?([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}) will be (?:processed|served|done|analy[sz]ed)|when will (?:ad )?([0-9a-f-]{36}) be (?:processed|done|analy[sz]ed)".into(),
         |c| Some(Command::Predict(pb::AdArg { ad_id: c.get(1).or(c.get(2))?.as_str().to_lowercase() }))),
        (r"(?:please )?(?:recommend|suggest)(?: some)? priority changes|what priorities should (?:i|we) change".into(),
         |_| Some(Command::RecommendPriorities(pb::NoArgs {}))),
        (r"(?:show )?(?:the |a )?capacity(?: utili[sz]ation)?(?: report)?|how busy are (?:the )?workers".into(),
         |_| Some(Command::CapacityReport(pb::NoArgs {}))),
        (r"(pause|stop|hold|freeze) (?:the )?(?:priority|partition|priority partition) (\w+)(?: partition)?".into(),
         |c| Some(Command::PausePriority(pb::PriorityArg { priority: level(&s(c, 2))? }))),
        (r"(resume|unpause|restart|unfreeze|continue) (?:the )?(?:priority|partition|priority partition) (\w+)(?: partition)?".into(),
         |c| Some(Command::ResumePriority(pb::PriorityArg { priority: level(&s(c, 2))? }))),
        (r"(?:show|list|display|get)(?: me)? (?:the |all )?(?:dead[- ]?letters?|dead[- ]?letter queue|dlq|failed ads)".into(),
         |_| Some(Command::ShowDeadLetters(pb::NoArgs {}))),
        (r"(?:requeue|re-queue|retry|replay|resubmit) (?:all )?(?:the )?(?:dead[- ]?letters?|dead[- ]?letter queue|dlq|failed ads)".into(),
         |_| Some(Command::RequeueDeadLetters(pb::NoArgs {}))),
    ];
    rules.into_iter().map(|(p, b)| (r(&p), b)).collect()
});

fn words(s: &str) -> std::collections::HashSet<String> {
    s.to_lowercase().split(|c: char| !c.is_alphanumeric()).filter(|w| w.len() > 1).map(String::from).collect()
}

/// Parses `text` into a typed command.
pub fn parse(text: &str) -> Result<pb::AgentCommand, NotUnderstood> {
    let norm = normalise(text);
    for (re, build) in RULES.iter() {
        if let Some(c) = re.captures(&norm)
            && let Some(cmd) = build(&c)
        {
            return Ok(pb::AgentCommand { command: Some(cmd) });
        }
    }
    let mine = words(&norm);
    let mut scored: Vec<(f64, &str)> = EXAMPLES
        .iter()
        .map(|e| {
            let theirs = words(e);
            let shared = mine.intersection(&theirs).count() as f64;
            (shared / (mine.union(&theirs).count().max(1) as f64), *e)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    Err(NotUnderstood {
        text: text.to_owned(),
        suggestions: scored.iter().take(3).map(|(_, e)| e.to_string()).collect(),
    })
}

#[cfg(test)]
mod tests;
