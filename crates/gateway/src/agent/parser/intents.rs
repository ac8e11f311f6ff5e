//! The intents, tried in this order; the first whose keywords are present claims the
//! sentence, then fills its typed slots or refuses with the reason. The order settles the
//! overlaps: an ad id decides first (predict or set its priority), then the named
//! settings and objects (dead letters, starvation, max wait, batch, workers, capacity,
//! optimize, recommend, a partition), then a priority change (which needs a target
//! priority), then the reads. A changing command claims only with every argument valid;
//! reads fall back to defaults they say back ("no count given: 10").

use super::lexer::Kind;
use super::slots::{Refusal, S, age, close_families, partitions, priorities, single, unknown_family};
use super::vocab::*;
use adflow_domain::pb::{self, agent_command::Command};

/// A claimed sentence: the command, the concepts its words may carry, and whether it
/// changes anything.
pub(crate) struct Claim {
    pub cmd: Command,
    pub allowed: Flags,
    pub write: bool,
}

/// What an intent says of a sentence: not mine (None), mine but refused, or mine.
pub(crate) type R = Option<Result<Claim, Refusal>>;

/// Concepts that act: left over in a read, they mean the text asked for more than a read.
pub(crate) const ACTIONS: Flags =
    CHANGE | PAUSE | RESUME | PURGE | REQUEUE | ON | OFF | STOP | SCALE | PLUS | MINUS | LIMIT | NEG;
const READ: Flags = !ACTIONS;

/// The intents in the order they are tried.
pub(crate) const INTENTS: &[fn(&mut S<'_>) -> R] = &[
    ad_id,
    dead_letters,
    starvation,
    max_wait,
    batch,
    workers,
    capacity,
    optimize,
    recommend,
    partition,
    change,
    report,
    families,
    distribution,
    summary,
    next,
    waiting,
    settings,
    queue_show,
];

fn read(cmd: Command) -> R {
    Some(Ok(Claim { cmd, allowed: READ, write: false }))
}

/// A read that may also carry the words of the setting it reads ("is starvation mode on?").
fn read_about(cmd: Command, words: Flags) -> R {
    Some(Ok(Claim { cmd, allowed: READ | words, write: false }))
}

fn write(cmd: Command, allowed: Flags) -> R {
    Some(Ok(Claim { cmd, allowed, write: true }))
}

fn refuse(reason: impl Into<String>) -> R {
    Some(Err(Refusal::new(reason)))
}

const NONE: pb::NoArgs = pb::NoArgs {};

fn ad_id(s: &mut S<'_>) -> R {
    let ids = s.ids();
    if ids.is_empty() {
        for i in 0..s.t.len() {
            let next = s.t.get(i + 1);
            let bad = next.is_some_and(|x| matches!(x.kind, Kind::Num(_)) || x.unknown());
            let wants_id = s.has(PREDICT | CHANGE | PRIO);
            if s.t[i].eq("ad") && bad && wants_id {
                return refuse(format!(
                    "'{}' is not an ad id; ad ids are UUIDs (e.g. from 'show the next 10 ads')",
                    next.map(|x| x.raw.as_str()).unwrap_or_default()
                ));
            }
        }
        return None;
    }
    if ids.len() > 1 {
        return refuse(format!("one ad at a time: the text names {} ad ids", ids.len()));
    }
    s.take(ids[0]);
    let Kind::Id(id) = s.t[ids[0]].kind.clone() else { return None };
    let p = priorities(s);
    if !p.target.is_empty() || p.relative || s.has(CHANGE) && s.has(PRIO) {
        if p.relative {
            return refuse("relative changes ('by one level') are not supported; say the new priority");
        }
        if !p.current.is_empty() {
            return refuse("a single ad needs only its new priority");
        }
        return match single(&p.target, "priority") {
            Ok(Some(priority)) => write(
                Command::SetAdPriority(pb::AdPriority { ad_id: id, priority }),
                CHANGE | PRIO | LEVEL | ADS | TO | FROM | SHOW,
            ),
            Ok(None) => refuse(format!("to which priority? e.g. 'set the priority of ad {id} to 5'")),
            Err(e) => Some(Err(e)),
        };
    }
    read(Command::Predict(pb::AdArg { ad_id: id }))
}

fn dead_letters(s: &mut S<'_>) -> R {
    if !s.has(DEAD) {
        return None;
    }
    if s.has(REQUEUE) || s.has(BACK) && s.has(CHANGE) {
        let allowed = DEAD | REQUEUE | BACK | CHANGE | ADS | ALL | QUEUE | SHOW;
        return write(Command::RequeueDeadLetters(NONE), allowed);
    }
    if s.has(PURGE) {
        return refuse("dead letters can be shown or requeued; removing them is not supported");
    }
    read(Command::ShowDeadLetters(NONE))
}

fn both_toggles() -> Vec<String> {
    vec!["enable starvation mode".into(), "disable starvation mode".into()]
}

fn starvation(s: &mut S<'_>) -> R {
    if !s.has(STARV) {
        return None;
    }
    if s.question {
        return read_about(Command::ShowSettings(NONE), ON | OFF | STOP | CHANGE);
    }
    let (on, off, stop) = (s.has(ON), s.has(OFF), s.has(STOP));
    let feature = ["antistarvation", "protection", "prevention", "guard"].iter().any(|w| s.has_w(w));
    let toggle = |enabled| Command::SetAntiStarvation(pb::Toggle { enabled });
    let allowed = STARV | MODE | ON | OFF | STOP | CHANGE | SETTINGS | TO;
    match (on, off, stop) {
        (true, false, false) => write(toggle(true), allowed),
        (false, true, false) => write(toggle(false), allowed),
        (false, false, true) if feature => write(toggle(false), allowed),
        (false, false, true) if !s.has_w("mode") => {
            s.notes.push(
                "read as: stop ads from starving, so anti-starvation stays on (to turn it off: 'disable starvation mode')"
                    .into(),
            );
            write(toggle(true), allowed)
        }
        (false, false, true) => Some(Err(Refusal::new(
            "'stop starvation mode' can mean two opposite things: serve starving ads first (anti-starvation on) or turn the mode off; say which",
        )
        .suggest(both_toggles()))),
        (false, false, false) if s.has(SHOW | SETTINGS) => read(Command::ShowSettings(NONE)),
        (false, false, false) => {
            Some(Err(Refusal::new("turn anti-starvation on or off? say which").suggest(both_toggles())))
        }
        _ => Some(Err(Refusal::new("the text says both on and off; say one").suggest(both_toggles()))),
    }
}

fn max_wait(s: &mut S<'_>) -> R {
    if !(s.has(MAXW) || s.has(LIMIT) && s.has(WAIT)) {
        return None;
    }
    if s.question {
        return read_about(Command::ShowSettings(NONE), LIMIT | CHANGE);
    }
    let (durs, nums) = (s.durs(), s.nums());
    match (durs.as_slice(), nums.as_slice()) {
        ([d], []) => {
            let Kind::Dur(secs) = s.t[*d].kind else { return None };
            if secs.fract() != 0.0 || secs < 0.0 || secs > u32::MAX as f64 {
                return refuse(format!("'{}' is not a whole number of seconds", s.t[*d].raw));
            }
            s.take(*d);
            let cmd = Command::SetMaxWait(pb::Seconds { seconds: secs as u32 });
            write(cmd, MAXW | LIMIT | WAIT | CHANGE | TO)
        }
        ([], [n]) => {
            let v = &s.t[*n].raw;
            Some(Err(Refusal::new(format!("'{v}' what? say the unit")).suggest([
                format!("set maximum wait time to {v} seconds"),
                format!("set maximum wait time to {v} minutes"),
            ])))
        }
        ([], []) if s.has(SHOW) => read(Command::ShowSettings(NONE)),
        ([], []) => refuse("to what? e.g. 'set maximum wait time to 5 minutes'"),
        _ => refuse("more than one value for the max wait; say one"),
    }
}

fn batch(s: &mut S<'_>) -> R {
    if !s.has(BATCH) {
        return None;
    }
    if s.question {
        return read_about(Command::ShowSettings(NONE), CHANGE | SCALE);
    }
    let nums = s.nums();
    match nums.as_slice() {
        [n] => match s.count(*n) {
            Ok(v) => {
                s.take(*n);
                write(Command::SetBatchSize(pb::Count { value: v }), BATCH | CHANGE | SCALE | TO)
            }
            Err(e) => Some(Err(e)),
        },
        [] if !s.durs().is_empty() => refuse("the batch size is a number of events, not a time"),
        [] if s.has(SHOW) => read(Command::ShowSettings(NONE)),
        [] => refuse("to how many events? e.g. 'set batch size to 1000'"),
        _ => refuse("more than one number for the batch size; say one"),
    }
}

fn workers(s: &mut S<'_>) -> R {
    if !(s.has(WORKERS) || s.has_w("scale") || s.has_w("resize")) {
        return None;
    }
    if s.has(CAP) || s.question {
        return read(Command::CapacityReport(NONE));
    }
    let allowed = WORKERS | SCALE | PLUS | MINUS | CHANGE | TO | SHOW;
    let nums = s.nums();
    let current = s.live.workers;
    let relative = !s.has(TO) && (s.has(PLUS) || s.has(MINUS));
    let n = match nums.as_slice() {
        [n] => match s.count(*n) {
            Ok(v) => {
                s.take(*n);
                Some(v)
            }
            Err(e) => return Some(Err(e)),
        },
        [] if relative && (s.has_w("another") || s.has_w("a")) => Some(1),
        [] => None,
        _ => return refuse("more than one number for the workers; say one"),
    };
    let Some(n) = n else {
        return Some(Err(Refusal::new("how many workers? ('scale workers to 0' stops them all)")
            .suggest([format!("scale workers to {}", current.max(1))])));
    };
    let value = if relative && s.has(PLUS) {
        s.notes.push(format!("{n} more than the {current} running"));
        current.saturating_add(n)
    } else if relative {
        let Some(v) = current.checked_sub(n) else {
            return refuse(format!("only {current} workers are running; cannot remove {n}"));
        };
        s.notes.push(format!("{n} fewer than the {current} running"));
        v
    } else {
        n
    };
    write(Command::ScaleWorkers(pb::Count { value }), allowed)
}

fn capacity(s: &mut S<'_>) -> R {
    s.has(CAP).then_some(Ok(Claim { cmd: Command::CapacityReport(NONE), allowed: READ, write: false }))
}

fn optimize(s: &mut S<'_>) -> R {
    if !(s.has(OPTIM) || s.has(WEAKOPT) && s.has(WAIT) && !s.has(PRIO)) {
        return None;
    }
    if s.question {
        return Some(Err(Refusal::new(
            "that is a question; 'recommend priority changes' shows what optimizing would change",
        )
        .suggest([
            "recommend priority changes".to_string(),
            "optimize queue for minimum wait time".to_string(),
        ])));
    }
    write(Command::OptimizeWaitTime(NONE), OPTIM | WEAKOPT | WAIT | QUEUE | LEVEL | CHANGE | SERVE)
}

fn recommend(s: &mut S<'_>) -> R {
    let strong = s.t.iter().any(|x| x.is(RECO) && !x.eq("should"));
    // A question about changing priorities asks for advice ("what should I reprioritize?",
    // "what would you change about priorities?").
    let should =
        s.question && s.has(CHANGE) && (s.has_w("should") || s.has(PRIO) && priorities(s).target.is_empty());
    (strong || should).then_some(Ok(Claim {
        cmd: Command::RecommendPriorities(NONE),
        allowed: READ | CHANGE,
        write: false,
    }))
}

fn partition(s: &mut S<'_>) -> R {
    let kinds = [PAUSE, RESUME, PURGE].map(|k| s.t.iter().any(|x| x.is(k) && (k != PURGE || !x.is(CHANGE))));
    if !kinds.iter().any(|k| *k) {
        return None;
    }
    let parts = partitions(s);
    if parts.is_empty() {
        return None;
    }
    let state = ["paused", "frozen", "suspended", "resumed", "unpaused"].iter().any(|w| s.has_w(w));
    if s.question && state && !s.has_w("should") && !s.has_w("if") {
        // "is priority 2 paused?": the distribution says which partitions are paused.
        for (_, i) in parts {
            s.take(i);
        }
        return read_about(Command::QueueDistribution(NONE), PAUSE | RESUME | PURGE);
    }
    if kinds.iter().filter(|k| **k).count() > 1 {
        return refuse("pause, resume or purge? say one");
    }
    let values: Vec<f64> = parts.iter().map(|(v, _)| *v).collect();
    let p = match single(&values, "priority") {
        Ok(Some(p)) => p,
        Ok(None) => return None,
        Err(e) => return Some(Err(Refusal::new(format!("one partition at a time ({})", e.reason)))),
    };
    for (_, i) in parts {
        s.take(i);
    }
    let arg = pb::PriorityArg { priority: p };
    let cmd = if kinds[0] {
        Command::PausePriority(arg)
    } else if kinds[1] {
        Command::ResumePriority(arg)
    } else {
        Command::PurgePriority(arg)
    };
    write(cmd, PAUSE | RESUME | PURGE | PRIO | PART | QUEUE | ADS | ALL | SERVE | LEVEL | STOP | ON)
}

fn change(s: &mut S<'_>) -> R {
    let p = priorities(s);
    if p.target.is_empty() {
        if s.has(CHANGE) && (s.has(PRIO) || p.relative) && !s.question {
            if p.relative {
                return refuse("relative changes ('by one level') are not supported; say the new priority");
            }
            return refuse("to which priority (1..=5, 5 is the highest)?");
        }
        return None;
    }
    if p.relative {
        return refuse("relative changes ('by one level') are not supported; say the new priority");
    }
    let target = match single(&p.target, "priority") {
        Ok(Some(t)) => t,
        Ok(None) => return None,
        Err(e) => return Some(Err(e)),
    };
    let current = match single(&p.current, "current priority") {
        Ok(c) => c.unwrap_or(0),
        Err(e) => return Some(Err(e)),
    };
    let fams = s.fams();
    if fams.len() > 1 {
        let names: Vec<String> = fams.iter().map(|&i| s.family(i)).collect();
        return refuse(format!("one family at a time (the text names {})", names.join(" and ")));
    }
    let older = match age(s) {
        Ok(a) => a.unwrap_or(0),
        Err(e) => return Some(Err(e)),
    };
    if let Some(x) = s.t.iter().find(|x| x.is(VAGUE)) {
        return refuse(format!(
            "'{}' does not say which ads; name a family, an age ('older than 10 minutes') or 'all ads'",
            x.raw
        ));
    }
    if let Some(name) = unknown_family(s) {
        let close = close_families(&name, s.live);
        let mut r = Refusal::new(format!(
            "no family '{name}'; known families: {}",
            if s.live.families.is_empty() {
                "none (no ads are queued)".to_string()
            } else {
                s.live.families.join(", ")
            }
        ));
        r.first = close
            .iter()
            .map(|f| format!("change priority to {target} for all ads in the {f} family"))
            .collect();
        return Some(Err(r));
    }
    let family = fams.first().map(|&i| {
        s.take(i);
        s.family(i)
    });
    let all = s.has(ALL) || s.has(QUEUE);
    if family.is_none() && older == 0 && current == 0 && !all {
        return refuse("which ads? name a family, an age ('older than 10 minutes') or 'all ads'");
    }
    let cmd = match (family, older, current) {
        (Some(game_family), 0, 0) => {
            Command::SetFamilyPriority(pb::SetFamilyPriority { game_family, priority: target })
        }
        (None, secs, 0) if secs > 0 => Command::SetPriorityOlderThan(pb::SetPriorityOlderThan {
            older_than_minutes: if secs.is_multiple_of(60) { secs / 60 } else { 0 },
            priority: target,
            older_than_seconds: secs,
        }),
        (f, secs, cur) => Command::SetPriorityWhere(pb::SetPriorityWhere {
            game_family: f.unwrap_or_default(),
            older_than_seconds: secs,
            current_priority: cur,
            priority: target,
        }),
    };
    let allowed = CHANGE | PRIO | LEVEL | ADS | ALL | FAM | WAIT | MORE | QUEUE | TO | FROM | SHOW | AUX;
    write(cmd, allowed)
}

fn report(s: &mut S<'_>) -> R {
    if !s.has(REPORT) {
        return None;
    }
    for d in s.durs() {
        match s.t[d].kind {
            Kind::Dur(3600.0) => s.take(d),
            _ => {
                return Some(Err(Refusal::new(format!(
                    "the performance report covers the last hour; '{}' is another window",
                    s.t[d].raw
                ))
                .suggest(["generate performance report for the last hour".to_string()])));
            }
        }
    }
    read(Command::PerformanceReport(NONE))
}

fn families(s: &mut S<'_>) -> R {
    // "how many Puzzle ads are queued?": the family table has the count.
    let count_of_family = !s.fams().is_empty() && s.has_w("howmany");
    if !s.has(FAM) && !count_of_family {
        return None;
    }
    for i in s.fams() {
        s.take(i);
    }
    read(Command::FamilyStats(NONE))
}

fn distribution(s: &mut S<'_>) -> R {
    let count_q = s.has_w("howmany") && s.has(ADS | QUEUE | WAIT | PRIO);
    let per_priority =
        s.has(PRIO) && ["per", "by", "each", "across"].iter().any(|w| s.has_w(w)) && !s.has(CHANGE);
    let dist = s.t.iter().any(|x| x.is(DIST) && !x.eq("howmany"));
    if !(dist || count_q || per_priority) || !s.durs().is_empty() {
        return None;
    }
    read(Command::QueueDistribution(NONE))
}

fn summary(s: &mut S<'_>) -> R {
    // "how is the queue (doing)?": its state, not its contents.
    (s.has(PERF) || s.has_w("how") && s.has(QUEUE)).then_some(Ok(Claim {
        cmd: Command::PerformanceSummary(NONE),
        allowed: READ,
        write: false,
    }))
}

fn next(s: &mut S<'_>) -> R {
    let top_n = (0..s.t.len()).any(|i| s.t[i].eq("top") && s.num(i + 1).is_some() && s.is(i + 2, ADS));
    if !(s.has(NEXT) || top_n) {
        return None;
    }
    let nums = s.nums();
    let value = match nums.as_slice() {
        [n] => match s.count(*n) {
            Ok(v) => {
                s.take(*n);
                v
            }
            Err(e) => return Some(Err(e)),
        },
        [] => {
            s.notes.push("no count given: 10".into());
            10
        }
        _ => return refuse("more than one count; say how many ads to show"),
    };
    read(Command::ShowNext(pb::Count { value }))
}

fn waiting(s: &mut S<'_>) -> R {
    // "max"/"limit" with a wait is the max-wait setting, not a search ("wait time 10
    // minutes max" is refused rather than answered with a list).
    if !s.has(WAIT) || s.has(LIMIT) || s.has_w("max") || s.has_w("maximum") {
        return None;
    }
    let secs = match age(s) {
        Ok(Some(secs)) => secs,
        Ok(None) if s.has(STUCK) => {
            let m = s.live.max_wait_seconds;
            s.notes.push(format!("'stuck' read as: waiting longer than the policy's max wait ({m} s)"));
            m
        }
        Ok(None) => return None,
        Err(e) => return Some(Err(e)),
    };
    read(Command::FindWaitingOver(pb::Seconds { seconds: secs }))
}

fn settings(s: &mut S<'_>) -> R {
    s.has(SETTINGS).then_some(Ok(Claim { cmd: Command::ShowSettings(NONE), allowed: READ, write: false }))
}

fn queue_show(s: &mut S<'_>) -> R {
    if !(s.has(QUEUE) && s.has(SHOW | Q)) || s.has_w("how") {
        return None;
    }
    s.notes.push("the queue in serving order, first 10".into());
    read(Command::ShowNext(pb::Count { value: 10 }))
}
