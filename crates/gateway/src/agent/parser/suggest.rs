//! Suggestions for a refused text: the supported commands that share the most concepts
//! with it, filled in with the values it named (its family, priority, duration, number,
//! ad id), so the operator can send one back as it stands.

use super::lexer::{Kind, Tok};
use super::vocab::*;
use crate::agent::Live;

/// A command template: `{P}` priority, `{F}` family, `{D}` duration, `{N}` count, `{ID}`
/// ad id, `{Q}` partition.
struct Template {
    text: &'static str,
    concepts: Flags,
}

const TEMPLATES: &[Template] = &[
    Template {
        text: "change priority to {P} for all ads in the {F} family",
        concepts: CHANGE | PRIO | LEVEL | FAM,
    },
    Template { text: "set priority {P} for ads older than {D}", concepts: CHANGE | PRIO | WAIT | MORE },
    Template {
        text: "change priority to {P} for all {F} ads older than {D}",
        concepts: CHANGE | PRIO | FAM | WAIT,
    },
    Template { text: "move all queued ads to priority {P}", concepts: CHANGE | ALL | LEVEL },
    Template { text: "set the priority of ad {ID} to {P}", concepts: CHANGE | PRIO },
    Template { text: "show the next {N} ads to be processed", concepts: NEXT | SHOW },
    Template { text: "find ads waiting longer than {D}", concepts: WAIT | MORE | SHOW | STUCK },
    Template { text: "enable starvation mode", concepts: STARV | ON | MODE },
    Template { text: "disable starvation mode", concepts: STARV | OFF | MODE },
    Template { text: "set maximum wait time to {D}", concepts: MAXW | LIMIT },
    Template { text: "scale workers to {N}", concepts: WORKERS | SCALE | PLUS | MINUS },
    Template { text: "set batch size to {N}", concepts: BATCH },
    Template { text: "what's the current queue distribution by priority?", concepts: DIST | QUEUE },
    Template { text: "show queue performance summary", concepts: PERF },
    Template { text: "generate performance report for the last hour", concepts: REPORT | RECENT },
    Template { text: "show processing statistics by game family", concepts: FAM | PERF },
    Template { text: "predict when ad {ID} will be processed", concepts: PREDICT },
    Template { text: "recommend priority changes", concepts: RECO },
    Template { text: "optimize queue for minimum wait time", concepts: OPTIM | WEAKOPT },
    Template { text: "show capacity utilization report", concepts: CAP | WORKERS },
    Template { text: "pause priority {Q}", concepts: PAUSE | PART },
    Template { text: "resume priority {Q}", concepts: RESUME | PART },
    Template { text: "purge priority {Q}", concepts: PURGE | PART },
    Template { text: "show dead letters", concepts: DEAD },
    Template { text: "requeue dead letters", concepts: DEAD | REQUEUE },
    Template { text: "show the settings", concepts: SETTINGS },
];

fn pretty(secs: f64) -> String {
    let s = secs as u64;
    if secs.fract() != 0.0 {
        format!("{secs} seconds")
    } else if s > 0 && s.is_multiple_of(3600) {
        format!("{} hour{}", s / 3600, if s == 3600 { "" } else { "s" })
    } else if s > 0 && s.is_multiple_of(60) {
        format!("{} minute{}", s / 60, if s == 60 { "" } else { "s" })
    } else {
        format!("{s} second{}", if s == 1 { "" } else { "s" })
    }
}

/// The values a text named, for filling templates.
#[derive(Default)]
struct Values {
    priority: Option<u32>,
    family: Option<String>,
    duration: Option<String>,
    number: Option<String>,
    id: Option<String>,
}

fn values(toks: &[Tok], live: &Live, unknown_family: Option<String>) -> Values {
    let mut v = Values::default();
    for (i, t) in toks.iter().enumerate() {
        match &t.kind {
            Kind::Family(f) => v.family = v.family.take().or(Some(live.families[*f].clone())),
            Kind::Dur(s) => v.duration = v.duration.take().or(Some(pretty(*s))),
            Kind::Id(id) => v.id = v.id.take().or(Some(id.clone())),
            Kind::Num(n) => {
                let after_prio = i > 0 && toks[i - 1].is(PRIO | TO);
                if after_prio && (1.0..=5.0).contains(n) && n.fract() == 0.0 {
                    v.priority = v.priority.or(Some(*n as u32));
                } else if v.number.is_none() {
                    v.number = Some(t.raw.clone());
                }
            }
            Kind::Word if t.is(LEVEL) => v.priority = v.priority.or(level(&t.w)),
            _ => {}
        }
    }
    if v.family.is_none() {
        v.family = unknown_family;
    }
    v
}

fn fill(t: &str, v: &Values) -> String {
    let p = v.priority.map(|p| p.to_string());
    t.replace("{P}", p.as_deref().unwrap_or("<1-5>"))
        .replace("{F}", v.family.as_deref().unwrap_or("<family>"))
        .replace("{D}", v.duration.as_deref().unwrap_or("<N> minutes"))
        .replace("{N}", v.number.as_deref().unwrap_or("<N>"))
        .replace("{ID}", v.id.as_deref().unwrap_or("<ad id>"))
        .replace("{Q}", p.as_deref().or(v.number.as_deref()).unwrap_or("<1-5>"))
}

/// Up to three commands closest to `toks`, `first` ahead of the ranked ones.
pub(crate) fn suggestions(
    toks: &[Tok],
    live: &Live,
    unknown_family: Option<String>,
    first: &[String],
) -> Vec<String> {
    let v = values(toks, live, unknown_family);
    let mut scored: Vec<(usize, usize)> = TEMPLATES
        .iter()
        .enumerate()
        .map(|(k, t)| {
            let words = toks.iter().filter(|x| x.is(t.concepts & !FILLER)).count() * 2;
            let has = |p: &str, ok: bool| usize::from(t.text.contains(p) && ok) * 2;
            let slots = has("{F}", v.family.is_some())
                + has("{D}", v.duration.is_some())
                + has("{ID}", v.id.is_some()) * 2
                + has("{N}", v.number.is_some()) / 2
                + has("{Q}", v.priority.is_some() || v.number.is_some()) / 2;
            let score = if words == 0 { 0 } else { words + slots };
            (score, k)
        })
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut out: Vec<String> = first.to_vec();
    for (score, k) in scored {
        if out.len() >= 3 {
            break;
        }
        if score == 0 && !out.is_empty() {
            break;
        }
        let s = fill(TEMPLATES[k].text, &v);
        if !out.contains(&s) {
            out.push(s);
        }
    }
    for fallback in ["show the next 10 ads to be processed", "queue performance summary", "show dead letters"]
    {
        if out.len() >= 3 {
            break;
        }
        if !out.iter().any(|s| s == fallback) {
            out.push(fallback.to_string());
        }
    }
    out.truncate(3.max(first.len()));
    out
}
