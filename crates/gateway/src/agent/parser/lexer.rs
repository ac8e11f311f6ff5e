//! Normalisation: what the operator typed becomes a list of typed tokens.
//!
//! In this order, so that no step can damage what an earlier one recognised: ad ids
//! (UUIDs) are taken out first; the text is split into words (case, punctuation,
//! contractions and symbols like `>` or `15+` normalised); families that exist are
//! recognised as whole n-grams before anything else touches those words ("Twenty-One",
//! "Match 3", "rpg fantasy"); unknown words are corrected to a keyword when exactly one
//! is close (`vocab::correct`); a few multi-word keywords are joined ("max wait",
//! "dead letters"); number words become numbers ("twenty five", "a thousand", "half an
//! hour"); and a number with a unit becomes an exact duration in seconds.

use super::vocab::{self, Flags};
use regex::Regex;
use std::sync::LazyLock;

/// What a token is.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Kind {
    /// A word (see `Tok::w` and `Tok::f`).
    Word,
    /// A number without a unit.
    Num(f64),
    /// A duration, seconds (possibly fractional: then it is refused).
    Dur(f64),
    /// A family that exists (index into `Live::families`).
    Family(usize),
    /// An ad id (a UUID, lower-case).
    Id(String),
    /// A hard separator (`;`).
    Sep,
}

/// One token.
#[derive(Clone, Debug)]
pub(crate) struct Tok {
    /// What it is.
    pub kind: Kind,
    /// The normalised word (lower-case, corrected), or the number as text.
    pub w: String,
    /// As typed.
    pub raw: String,
    /// Concepts of a word (0 for an unknown word and for values).
    pub f: Flags,
}

impl Tok {
    fn word(w: impl Into<String>, raw: impl Into<String>) -> Self {
        let w = w.into();
        let f = vocab::flags(&w).unwrap_or(0);
        Tok { kind: Kind::Word, w, raw: raw.into(), f }
    }

    fn value(kind: Kind, raw: impl Into<String>) -> Self {
        let raw = raw.into();
        Tok { kind, w: raw.to_lowercase(), raw, f: 0 }
    }

    /// True for a word carrying any of `f`.
    pub fn is(&self, f: Flags) -> bool {
        self.kind == Kind::Word && self.f & f != 0
    }

    /// True for this exact word.
    pub fn eq(&self, w: &str) -> bool {
        self.kind == Kind::Word && self.w == w
    }

    /// True for an unknown word.
    pub fn unknown(&self) -> bool {
        self.kind == Kind::Word && self.f == 0
    }
}

/// The lexed text.
#[derive(Debug, Default)]
pub(crate) struct Lexed {
    /// Tokens in order.
    pub toks: Vec<Tok>,
    /// Typos corrected: (as typed, read as).
    pub corrected: Vec<(String, String)>,
}

static UUID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})\b")
        .expect("valid")
});
static THOUSANDS: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(\d),(\d{3})\b").expect("valid"));
static GLUED: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(\d+(?:\.\d+)?)([a-z]+)((?:\d+(?:\.\d+)?[a-z]+)*)$").expect("valid"));
static PLUS_UNIT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(\d+(?:\.\d+)?)\+\s*(seconds?|secs?|minutes?|mins?|hours?|hrs?|days?|[smhd])\b")
        .expect("valid")
});
static PREFIXED: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(p|prio|priority|partition|level|lvl)(\d+)$").expect("valid"));

/// The placeholder for the n-th id (a private-use character the tokenizer keeps).
const ID_MARK: char = '\u{E000}';

/// Lexes `text` against the `families` that exist.
pub(crate) fn lex(text: &str, families: &[String]) -> Lexed {
    let mut ids = Vec::new();
    let text = UUID.replace_all(text, |c: &regex::Captures<'_>| {
        ids.push(c[0].to_lowercase());
        format!(" {ID_MARK}{} ", ids.len() - 1)
    });
    let mut text = text.replace(['\u{2019}', '\u{2018}', '`'], "'");
    while THOUSANDS.is_match(&text) {
        text = THOUSANDS.replace_all(&text, "$1$2").into_owned();
    }
    let text = PLUS_UNIT.replace_all(&text, "$1 $2 ormore");
    let text = text.replace(">=", " at least ").replace("<=", " at most ");
    let mut raw_words: Vec<String> = Vec::new();
    let mut cur = String::new();
    let flush = |cur: &mut String, out: &mut Vec<String>| {
        if !cur.is_empty() {
            out.push(std::mem::take(cur));
        }
    };
    for c in text.chars() {
        match c {
            c if c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '\'' | '+' | ID_MARK) => cur.push(c),
            ';' => {
                flush(&mut cur, &mut raw_words);
                raw_words.push(";".into());
            }
            '>' => {
                flush(&mut cur, &mut raw_words);
                raw_words.extend(["more".to_string(), "than".to_string()]);
            }
            '<' => {
                flush(&mut cur, &mut raw_words);
                raw_words.extend(["less".to_string(), "than".to_string()]);
            }
            '=' => {
                flush(&mut cur, &mut raw_words);
                raw_words.push("to".into());
            }
            '&' => {
                flush(&mut cur, &mut raw_words);
                raw_words.push("and".into());
            }
            _ => flush(&mut cur, &mut raw_words),
        }
    }
    flush(&mut cur, &mut raw_words);

    // Words: trim, split contractions, ids back in.
    let mut toks: Vec<Tok> = Vec::new();
    for raw in raw_words {
        if raw == ";" {
            toks.push(Tok::value(Kind::Sep, ";"));
            continue;
        }
        let trimmed = trim_word(&raw);
        if trimmed.is_empty() {
            continue;
        }
        if let Some(n) = trimmed.strip_prefix(ID_MARK).and_then(|n| n.parse::<usize>().ok()) {
            toks.push(Tok::value(Kind::Id(ids[n].clone()), ids[n].clone()));
            continue;
        }
        for (w, r) in contractions(trimmed) {
            toks.push(Tok::word(w, r));
        }
    }
    let toks = families_in(toks, families);
    let toks = split_words(toks);
    let mut corrected = Vec::new();
    let toks: Vec<Tok> = toks
        .into_iter()
        .map(|t| match (&t.kind, vocab::correct(&t.w)) {
            (Kind::Word, Some(c)) => {
                corrected.push((t.raw.clone(), c.to_string()));
                Tok::word(c, t.raw)
            }
            _ => t,
        })
        .collect();
    let toks = compounds(toks);
    let toks = numbers(toks);
    let toks = durations(toks);
    Lexed { toks, corrected }
}

fn trim_word(w: &str) -> &str {
    let w = w.trim_start_matches(['.', '\'', '_', '+']);
    let w = if w.starts_with('-') && w[1..].starts_with(|c: char| c.is_ascii_digit()) {
        w
    } else {
        w.trim_start_matches('-')
    };
    w.trim_end_matches(['.', '\'', '-', '_'])
}

/// Splits contractions and possessives: "what's" -> "what is", "don't" -> "do not".
fn contractions(raw: &str) -> Vec<(String, String)> {
    let lower = raw.to_lowercase();
    let pair = |a: &str, b: &str| vec![(a.to_string(), raw.to_string()), (b.to_string(), raw.to_string())];
    let Some((head, tail)) = lower.split_once('\'') else {
        if let Some(n) = lower.strip_suffix('+') {
            return vec![(n.to_string(), raw.to_string()), ("ormore".into(), "+".into())];
        }
        return vec![(lower.clone(), raw.to_string())];
    };
    match (head, tail) {
        ("let", "s") => pair("let", "us"),
        ("won", "t") => pair("will", "not"),
        ("can", "t") => pair("can", "not"),
        (h, "t") if h.ends_with('n') => pair(&h[..h.len() - 1], "not"),
        (h, "s")
            if matches!(h, "what" | "how" | "where" | "when" | "who" | "that" | "it" | "there" | "here") =>
        {
            pair(h, "is")
        }
        (h, "re") => pair(h, "are"),
        (h, "d") => pair(h, "would"),
        (h, "ll") => pair(h, "will"),
        (h, "ve") => pair(h, "have"),
        (h, "m") => pair(h, "am"),
        (h, _) => vec![(h.to_string(), raw.to_string())],
    }
}

fn squash(s: &str) -> String {
    s.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect()
}

/// Replaces n-grams (up to four words) that spell a family that exists, whatever the case,
/// spaces, hyphens or underscores ("rpg fantasy", "tower-defense", "match3"), and a plain
/// plural of one ("puzzles").
fn families_in(toks: Vec<Tok>, families: &[String]) -> Vec<Tok> {
    let squashed: Vec<String> = families.iter().map(|f| squash(f)).collect();
    let find = |s: &str| -> Option<usize> {
        squashed.iter().position(|f| !f.is_empty() && f == s).or_else(|| {
            let single = s.strip_suffix('s')?;
            squashed.iter().position(|f| f.len() >= 4 && f == single)
        })
    };
    let mut out = Vec::with_capacity(toks.len());
    let mut i = 0;
    'outer: while i < toks.len() {
        for n in (1..=4).rev() {
            if i + n > toks.len() || toks[i..i + n].iter().any(|t| t.kind != Kind::Word) {
                continue;
            }
            let joined: String = toks[i..i + n].iter().map(|t| squash(&t.w)).collect();
            if let Some(f) = find(&joined) {
                let raw = toks[i..i + n].iter().map(|t| t.raw.as_str()).collect::<Vec<_>>().join(" ");
                out.push(Tok::value(Kind::Family(f), raw));
                i += n;
                continue 'outer;
            }
        }
        out.push(toks[i].clone());
        i += 1;
    }
    out
}

/// Splits hyphenated and underscored words that are not keywords ("per-family",
/// "max_wait"), glued numbers and units ("30s", "1h30m", "5k") and "p5" -> priority 5.
fn split_words(toks: Vec<Tok>) -> Vec<Tok> {
    let mut out = Vec::with_capacity(toks.len());
    for t in toks {
        if t.kind != Kind::Word || vocab::known(&t.w) {
            out.push(t);
            continue;
        }
        if t.w.parse::<f64>().is_ok() {
            out.push(t);
            continue;
        }
        if (t.w.contains('-') || t.w.contains('_')) && !t.w.starts_with('-') {
            let parts: Vec<&str> = t.w.split(['-', '_']).filter(|p| !p.is_empty()).collect();
            out.extend(split_words(parts.iter().map(|p| Tok::word(*p, t.raw.clone())).collect()));
            continue;
        }
        if let Some(c) = PREFIXED.captures(&t.w) {
            out.push(Tok::word("priority", t.raw.clone()));
            out.push(Tok::word(&c[2], t.raw.clone()));
            continue;
        }
        if GLUED.is_match(&t.w) {
            let mut pieces = Vec::new();
            let mut cur = String::new();
            let mut digit = None;
            for c in t.w.chars() {
                let d = c.is_ascii_digit() || c == '.';
                if digit.is_some_and(|x| x != d) {
                    pieces.push(std::mem::take(&mut cur));
                }
                digit = Some(d);
                cur.push(c);
            }
            pieces.push(cur);
            let ok = pieces.iter().all(|p| p.parse::<f64>().is_ok() || vocab::unit(p).is_some() || p == "k");
            if ok {
                out.extend(pieces.into_iter().map(|p| Tok::word(p, t.raw.clone())));
                continue;
            }
        }
        out.push(t);
    }
    out
}

/// Joins multi-word keywords into one token.
fn compounds(toks: Vec<Tok>) -> Vec<Tok> {
    let mut out: Vec<Tok> = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        let w =
            |k: usize| toks.get(i + k).filter(|t| t.kind == Kind::Word).map(|t| t.w.as_str()).unwrap_or("");
        let raw = |n: usize| join_raw(&toks[i..i + n]);
        let joined: Option<(&str, usize)> = match (w(0), w(1), w(2)) {
            ("anti", "starvation", _) => Some(("antistarvation", 2)),
            ("dead", "letter" | "letters" | "lettered", _) => Some(("deadletters", 2)),
            ("deadletter" | "deadlettered" | "dead-letter" | "dead-letters" | "dead-lettered", _, _) => {
                Some(("deadletters", 1))
            }
            ("re", "queue", _) => Some(("requeue", 2)),
            ("max" | "maximum" | "maximal", "wait" | "waiting", _) => Some(("maxwait", 2)),
            ("minimum" | "min" | "minimal" | "shortest" | "lowest" | "least", "wait" | "waiting", _) => {
                Some(("minwait", 2))
            }
            ("no", "more", _) => Some(("stop", 2)),
            ("in", "progress", _) => Some(("inprogress", 2)),
            ("how", "many" | "much", _) => Some(("howmany", 2)),
            ("how", "long", _) => Some(("howlong", 2)),
            ("shut", "down", _) => Some(("shutdown", 2)),
            ("speed", "up", _) => Some(("speedup", 2)),
            ("last" | "past" | "previous", "hour", _) => Some(("lasthour", 2)),
            ("other", "than", _) => Some(("except", 2)),
            _ => None,
        };
        match joined {
            Some((word, n)) => {
                out.push(Tok::word(word, raw(n)));
                i += n;
            }
            None => {
                out.push(toks[i].clone());
                i += 1;
            }
        }
    }
    out
}

/// The text a run of tokens was typed as (pieces of one typed word count once).
fn join_raw(toks: &[Tok]) -> String {
    let mut out: Vec<&str> = Vec::new();
    for t in toks {
        if out.last() != Some(&t.raw.as_str()) {
            out.push(&t.raw);
        }
    }
    out.join(" ")
}

fn small(w: &str) -> Option<u64> {
    vocab::NUMBER_WORDS[..20].iter().position(|x| *x == w).map(|v| v as u64)
}

fn tens(w: &str) -> Option<u64> {
    vocab::NUMBER_WORDS[20..28].iter().position(|x| *x == w).map(|v| (v as u64 + 2) * 10)
}

/// Turns number words and digits into numbers: "twenty five" 25, "two hundred and fifty"
/// 250, "four thousand ninety six" 4096, "a thousand" 1000, "5k" 5000, "1.5", "one and a
/// half" 1.5, "half an hour" (a duration, see `durations`).
fn numbers(toks: Vec<Tok>) -> Vec<Tok> {
    let mut out: Vec<Tok> = Vec::with_capacity(toks.len());
    let mut i = 0;
    let w = |k: usize| toks.get(k).filter(|t| t.kind == Kind::Word).map(|t| t.w.as_str()).unwrap_or("");
    while i < toks.len() {
        let start = i;
        let mut total: f64 = 0.0;
        let mut current: f64 = 0.0;
        let mut any = false;
        // 0: start, 1: after a unit/teen, 2: after a ten, 3: after hundred/thousand
        let mut state = 0;
        loop {
            let word = w(i);
            if let Ok(v) = word.parse::<f64>()
                && state == 0
                && !word.starts_with('+')
            {
                current = v;
                any = true;
                state = 1;
                i += 1;
                continue;
            }
            if let Some(v) = small(word)
                && (state == 0 || state == 2 || state == 3)
                && !(state == 2 && v >= 10)
            {
                current += v as f64;
                any = true;
                state = 1;
                i += 1;
                continue;
            }
            if let Some(v) = tens(word)
                && (state == 0 || state == 3)
            {
                current += v as f64;
                any = true;
                state = 2;
                i += 1;
                continue;
            }
            if matches!(word, "a" | "an")
                && state == 0
                && matches!(w(i + 1), "hundred" | "thousand" | "dozen")
            {
                current = 1.0;
                any = true;
                state = 1;
                i += 1;
                continue;
            }
            if any && matches!(word, "hundred" | "dozen") && state != 3 {
                current = current.max(1.0) * if word == "hundred" { 100.0 } else { 12.0 };
                state = 3;
                i += 1;
                continue;
            }
            if any && word == "thousand" {
                total += current.max(1.0) * 1000.0;
                current = 0.0;
                state = 3;
                i += 1;
                continue;
            }
            if any && word == "k" && state == 1 {
                current *= 1000.0;
                state = 3;
                i += 1;
                continue;
            }
            if any && word == "and" && state == 3 && (small(w(i + 1)).is_some() || tens(w(i + 1)).is_some()) {
                i += 1;
                continue;
            }
            if any && word == "and" && w(i + 1) == "a" && w(i + 2) == "half" {
                current += 0.5;
                i += 3;
                state = 4;
                continue;
            }
            break;
        }
        if any {
            out.push(Tok::value(Kind::Num(total + current), join_raw(&toks[start..i])));
        } else {
            out.push(toks[i].clone());
            i += 1;
        }
    }
    out
}

/// Turns a number and a unit into a duration in seconds, exactly ("90 seconds" is 90,
/// "1.5 minutes" 90, "an hour" 3600, "half an hour" 1800, "1 hour 30 minutes" 5400, "an
/// hour and a half" 5400). Consecutive durations (optionally joined by "and") add up.
fn durations(toks: Vec<Tok>) -> Vec<Tok> {
    let mut out: Vec<Tok> = Vec::with_capacity(toks.len());
    let mut i = 0;
    let w = |k: usize| toks.get(k).filter(|t| t.kind == Kind::Word).map(|t| t.w.as_str()).unwrap_or("");
    while i < toks.len() {
        let start = i;
        let mut secs: Option<f64> = None;
        loop {
            let one = if let Kind::Num(n) = toks.get(i).map(|t| &t.kind).unwrap_or(&Kind::Sep)
                && let Some(u) = vocab::unit(w(i + 1))
            {
                Some((n * u as f64, 2))
            } else if matches!(w(i), "a" | "an" | "one") && vocab::unit(w(i + 1)).is_some_and(|u| u > 1) {
                vocab::unit(w(i + 1)).map(|u| (u as f64, 2))
            } else if w(i) == "half" && matches!(w(i + 1), "a" | "an") && vocab::unit(w(i + 2)).is_some() {
                vocab::unit(w(i + 2)).map(|u| (u as f64 / 2.0, 3))
            } else if w(i) == "half" && vocab::unit(w(i + 1)).is_some() {
                vocab::unit(w(i + 1)).map(|u| (u as f64 / 2.0, 2))
            } else if matches!(w(i), "a" | "one") && w(i + 1) == "quarter" && w(i + 2) == "hour" {
                Some((900.0, 3))
            } else if w(i) == "quarter"
                && w(i + 1) == "of"
                && matches!(w(i + 2), "an" | "a")
                && w(i + 3) == "hour"
            {
                Some((900.0, 4))
            } else {
                None
            };
            match one {
                Some((s, n)) => {
                    let unit_len = vocab::unit(w(i + n - 1)).unwrap_or(1) as f64;
                    secs = Some(secs.unwrap_or(0.0) + s);
                    i += n;
                    if w(i) == "and" && w(i + 1) == "a" && w(i + 2) == "half" {
                        secs = secs.map(|v| v + unit_len / 2.0);
                        i += 3;
                    }
                    if w(i) == "and" && i + 1 < toks.len() && starts_duration(&toks, i + 1) {
                        i += 1;
                    }
                }
                None => break,
            }
        }
        match secs {
            Some(s) => {
                out.push(Tok::value(Kind::Dur(s), join_raw(&toks[start..i])));
            }
            None => {
                out.push(toks[i].clone());
                i += 1;
            }
        }
    }
    out
}

fn starts_duration(toks: &[Tok], i: usize) -> bool {
    let w = |k: usize| toks.get(k).filter(|t| t.kind == Kind::Word).map(|t| t.w.as_str()).unwrap_or("");
    matches!(toks[i].kind, Kind::Num(_)) && vocab::unit(w(i + 1)).is_some()
        || matches!(w(i), "a" | "an") && vocab::unit(w(i + 1)).is_some()
}
