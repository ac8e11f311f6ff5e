//! Typed slots found in a lexed sentence: the priority to set (and a current-priority
//! filter), the age of ads ("older than 10 minutes"), a partition ("priority 2"), and
//! family names that do not exist. Each finder marks the tokens it used, so whatever is
//! left over can be checked: a number, duration, family or id that no slot took means the
//! sentence was not understood.

use super::lexer::{Kind, Tok};
use super::vocab::*;
use crate::agent::Live;

/// A refusal: why, and commands to suggest first (besides the ranked ones).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Refusal {
    /// Why the text was not run.
    pub reason: String,
    /// Suggestions to put first.
    pub first: Vec<String>,
}

impl Refusal {
    pub fn new(reason: impl Into<String>) -> Self {
        Refusal { reason: reason.into(), first: Vec::new() }
    }

    pub fn suggest(mut self, s: impl IntoIterator<Item = String>) -> Self {
        self.first.extend(s);
        self
    }
}

/// A sentence being understood.
pub(crate) struct S<'a> {
    /// Its tokens.
    pub t: &'a [Tok],
    /// Tokens a slot used.
    pub used: Vec<bool>,
    /// The live queue.
    pub live: &'a Live,
    /// It opens with a question word ("what", "is", "should").
    pub question: bool,
    /// Readings worth saying back ("no count given: 10").
    pub notes: Vec<String>,
}

impl<'a> S<'a> {
    pub fn new(t: &'a [Tok], live: &'a Live) -> Self {
        let start = t.iter().find(|x| !x.is(FILLER) || x.is(AUX) || x.is(Q));
        let question = start.is_some_and(|x| x.is(Q | AUX));
        S { t, used: vec![false; t.len()], live, question, notes: Vec::new() }
    }

    /// Any word with any of `f`.
    pub fn has(&self, f: Flags) -> bool {
        self.t.iter().any(|x| x.is(f))
    }

    /// This exact word.
    pub fn has_w(&self, w: &str) -> bool {
        self.t.iter().any(|x| x.eq(w))
    }

    /// The word at `i` (empty for values and out of range).
    pub fn w(&self, i: usize) -> &str {
        self.t.get(i).filter(|x| x.kind == Kind::Word).map(|x| x.w.as_str()).unwrap_or("")
    }

    /// True when the token at `i` is a word with any of `f`.
    pub fn is(&self, i: usize, f: Flags) -> bool {
        self.t.get(i).is_some_and(|x| x.is(f))
    }

    /// Indices of unused tokens of a kind.
    pub fn values(&self, pick: impl Fn(&Kind) -> bool) -> Vec<usize> {
        (0..self.t.len()).filter(|&i| !self.used[i] && pick(&self.t[i].kind)).collect()
    }

    pub fn nums(&self) -> Vec<usize> {
        self.values(|k| matches!(k, Kind::Num(_)))
    }

    pub fn durs(&self) -> Vec<usize> {
        self.values(|k| matches!(k, Kind::Dur(_)))
    }

    pub fn fams(&self) -> Vec<usize> {
        self.values(|k| matches!(k, Kind::Family(_)))
    }

    pub fn ids(&self) -> Vec<usize> {
        self.values(|k| matches!(k, Kind::Id(_)))
    }

    pub fn take(&mut self, i: usize) {
        self.used[i] = true;
    }

    pub fn num(&self, i: usize) -> Option<f64> {
        match self.t.get(i)?.kind {
            Kind::Num(n) => Some(n),
            _ => None,
        }
    }

    /// The number at `i` as a whole, non-negative count.
    pub fn count(&self, i: usize) -> Result<u32, Refusal> {
        let n = self.num(i).unwrap_or(-1.0);
        if n < 0.0 || n.fract() != 0.0 || n > u32::MAX as f64 {
            return Err(Refusal::new(format!("'{}' is not a whole number", self.t[i].raw)));
        }
        Ok(n as u32)
    }

    /// The family at `i`, as the queue spells it.
    pub fn family(&self, i: usize) -> String {
        match self.t[i].kind {
            Kind::Family(f) => self.live.families[f].clone(),
            _ => String::new(),
        }
    }

    /// The next index after `i` that is not "the"/"a"/"an".
    pub fn skip_articles(&self, mut i: usize) -> usize {
        while matches!(self.w(i), "the" | "a" | "an") {
            i += 1;
        }
        i
    }
}

/// A priority value at `i`: a number or a named level.
fn value(s: &S<'_>, i: usize) -> Option<f64> {
    if s.used.get(i).copied().unwrap_or(true) {
        return None;
    }
    match &s.t[i].kind {
        Kind::Num(n) => Some(*n),
        Kind::Word if s.t[i].is(LEVEL) => level(&s.t[i].w).map(f64::from),
        _ => None,
    }
}

/// The priorities a sentence names.
#[derive(Debug, Default)]
pub(crate) struct Priorities {
    /// Values to set.
    pub target: Vec<f64>,
    /// Current-priority filters ("from priority 1", "priority 1 ads").
    pub current: Vec<f64>,
    /// A relative change ("by one level").
    pub relative: bool,
}

/// Finds the priority to set and current-priority filters, marking the values used.
pub(crate) fn priorities(s: &mut S<'_>) -> Priorities {
    let mut p = Priorities::default();
    let n = s.t.len();
    let filter_before = |s: &S<'_>, i: usize| -> bool {
        let mut j = i;
        while j > 0 && matches!(s.w(j - 1), "the" | "a") {
            j -= 1;
        }
        j > 0 && (s.is(j - 1, FROM) || s.w(j - 1) == "in")
    };
    // "from priority 1", "with priority 2", "currently at high priority"
    for i in 0..n {
        if !s.is(i, FROM) && s.w(i) != "in" {
            continue;
        }
        let j = s.skip_articles(i + 1);
        if s.is(j, PRIO)
            && let Some(v) = value(s, j + 1)
        {
            p.current.push(v);
            s.take(j + 1);
        } else if let Some(v) = value(s, j)
            && (s.is(j + 1, PRIO) || s.w(i) == "from")
        {
            // "from low to high", "from 1 to 3": the value after "from" is where ads are.
            p.current.push(v);
            s.take(j);
        }
    }
    // "priority 1 ads", "low priority ads", "p2 ads"
    for i in 0..n {
        let ads_after = |k: usize| s.is(k, ADS);
        if s.is(i, PRIO)
            && let Some(v) = value(s, i + 1)
            && ads_after(i + 2)
        {
            p.current.push(v);
            s.take(i + 1);
        } else if let Some(v) = value(s, i)
            && s.is(i + 1, PRIO)
            && ads_after(i + 2)
        {
            p.current.push(v);
            s.take(i);
        }
    }
    // "to 5", "to priority 5", "to the highest priority", "into high"
    let named_priority = s.has(PRIO) || s.has(CHANGE);
    for i in 0..n {
        if !s.is(i, TO) {
            continue;
        }
        let mut j = s.skip_articles(i + 1);
        let prio_before = s.is(j, PRIO);
        if prio_before {
            j += 1;
        }
        let Some(v) = value(s, j) else { continue };
        let is_num = matches!(s.t[j].kind, Kind::Num(_));
        if is_num && !prio_before && !s.is(j + 1, PRIO) && !named_priority {
            continue;
        }
        p.target.push(v);
        s.take(j);
    }
    // "priority 4", "priority of 5", "high priority", and a bare "urgent" (only in a
    // sentence about priorities: "wait time 10 minutes max" names no priority)
    let about_priority = s.has(PRIO | CHANGE);
    for i in 0..n {
        if s.is(i, PRIO) && !filter_before(s, i) {
            let j = if matches!(s.w(i + 1), "of" | "to") { i + 2 } else { i + 1 };
            if let Some(v) = value(s, j)
                && !s.is(j + 1, PART)
            {
                p.target.push(v);
                s.take(j);
            }
        } else if s.is(i, LEVEL)
            && about_priority
            && !s.used[i]
            && !filter_before(s, i)
            && !matches!(s.t.get(i + 1).map(|t| &t.kind), Some(Kind::Num(_)))
        {
            p.target.push(f64::from(level(&s.t[i].w).unwrap_or(0)));
            s.take(i);
        }
    }
    for i in 0..n {
        if s.is(i, BY) && (value(s, i + 1).is_some() || s.is(i + 1, PRIO)) {
            p.relative = true;
        }
    }
    p
}

/// One value from several mentions, or a refusal naming them.
pub(crate) fn single(values: &[f64], what: &str) -> Result<Option<u32>, Refusal> {
    let plural = match what.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{what}s"),
    };
    let mut v: Vec<f64> = values.to_vec();
    v.dedup();
    v.sort_by(f64::total_cmp);
    v.dedup();
    match v.as_slice() {
        [] => Ok(None),
        [x] if *x >= 0.0 && x.fract() == 0.0 && *x <= 1000.0 => Ok(Some(*x as u32)),
        [x] => Err(Refusal::new(format!("{what} {x} is not a priority (1..=5, 5 is the highest)"))),
        _ => Err(Refusal::new(format!(
            "two different {plural} ({}); say one",
            v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" and ")
        ))),
    }
}

/// The age slot: a duration that says how long ads have waited ("older than 10 minutes",
/// "waiting over an hour", "15+ minutes", "30 minutes old"). Marks it used.
pub(crate) fn age(s: &mut S<'_>) -> Result<Option<u32>, Refusal> {
    let mut found: Option<(usize, u32)> = None;
    for i in s.durs() {
        let Kind::Dur(secs) = s.t[i].kind else { continue };
        let mut verdict = None;
        for k in (i.saturating_sub(4)..i).rev() {
            if s.is(k, LESS | RECENT) {
                verdict = Some(false);
                break;
            }
            if s.is(k, MORE) {
                verdict = Some(true);
                break;
            }
        }
        let wait_before = (i.saturating_sub(4)..i).any(|k| s.is(k, WAIT));
        let after = s.w(i + 1);
        let more_after = matches!(after, "old" | "older" | "ormore")
            || after == "or" && matches!(s.w(i + 2), "more" | "older" | "longer" | "above");
        if verdict == Some(false) {
            return Err(Refusal::new(format!(
                "only ads older than a time can be chosen ('{}' asks for newer ones)",
                s.t[i].raw
            )));
        }
        let future = i > 0 && matches!(s.w(i - 1), "in" | "after" | "within") && !wait_before;
        if future {
            return Err(Refusal::new(format!(
                "'{} {}' reads as a time in the future; commands run now and cannot be scheduled",
                s.w(i - 1),
                s.t[i].raw
            )));
        }
        if verdict == Some(true) || wait_before || more_after {
            if secs < 0.0 || secs.fract() != 0.0 || secs > u32::MAX as f64 {
                return Err(Refusal::new(format!("'{}' is not a whole number of seconds", s.t[i].raw)));
            }
            if found.is_some() {
                return Err(Refusal::new("two ages given; say one ('older than 10 minutes')"));
            }
            found = Some((i, secs as u32));
        }
    }
    Ok(found.map(|(i, secs)| {
        s.take(i);
        secs
    }))
}

/// Partitions named: "priority 2", "partition five", "p3", "the low priority queue".
/// A value after "to" is a target, not a partition.
pub(crate) fn partitions(s: &S<'_>) -> Vec<(f64, usize)> {
    let mut out = Vec::new();
    for i in 0..s.t.len() {
        let after_to = |k: usize| {
            let mut j = k;
            while j > 0 && matches!(s.w(j - 1), "the" | "a") {
                j -= 1;
            }
            j > 0 && s.is(j - 1, TO)
        };
        if s.is(i, PRIO | PART)
            && let Some(v) = value(s, i + 1)
            && matches!(s.t[i + 1].kind, Kind::Num(_))
            && !after_to(i)
        {
            out.push((v, i + 1));
        } else if s.is(i, LEVEL)
            && s.is(i + 1, PRIO)
            && s.is(i + 2, PART)
            && !after_to(i)
            && let Some(v) = value(s, i)
        {
            out.push((v, i));
        }
    }
    out
}

/// A word (or words) in the place of a family name that is not a family that exists:
/// right before "family"/"genre" ("the Queued family"), right after it ("family Foo"),
/// or unknown words right before "ads" ("all Foo ads", "Twenty-One ads").
pub(crate) fn unknown_family(s: &S<'_>) -> Option<String> {
    let plain = |i: usize| {
        s.t.get(i).is_some_and(|x| {
            let skip = FILLER | ALL | ADS | FAM | Q | AUX | CHANGE | TO | FROM | PRIO | AND | OR | BY | MORE;
            x.kind == Kind::Word && !x.is(skip) || matches!(x.kind, Kind::Num(_))
        })
    };
    for i in 0..s.t.len() {
        if s.is(i, FAM) && !s.eq_w(i, "game") && !s.eq_w(i, "games") {
            let mut j = i;
            while j > 0 && matches!(s.w(j - 1), "game") {
                j -= 1;
            }
            if j > 0 && plain(j - 1) {
                return Some(s.t[j - 1].raw.clone());
            }
            if s.t.get(i + 1).is_some_and(|x| x.unknown() || x.is(VAGUE)) {
                return Some(s.t[i + 1].raw.clone());
            }
        }
        if s.is(i, ADS) && i > 0 {
            let mut j = i;
            let mut words = Vec::new();
            while j > 0 && (s.t[j - 1].unknown() || matches!(s.t[j - 1].kind, Kind::Num(_)) && !s.used[j - 1])
            {
                words.insert(0, s.t[j - 1].raw.clone());
                j -= 1;
            }
            if !words.is_empty() {
                return Some(words.join(" "));
            }
        }
    }
    None
}

impl S<'_> {
    fn eq_w(&self, i: usize, w: &str) -> bool {
        self.w(i) == w
    }
}

/// Families that look like `name` (edit distance, or a word of the family): "did you mean".
pub(crate) fn close_families(name: &str, live: &Live) -> Vec<String> {
    let squash =
        |s: &str| s.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect::<String>();
    let n = squash(name);
    if n.is_empty() {
        return Vec::new();
    }
    live.families
        .iter()
        .filter(|f| {
            let fs = squash(f);
            let words_match =
                f.split(|c: char| !c.is_alphanumeric()).any(|w| !w.is_empty() && squash(w) == n);
            distance(&fs, &n) <= 2.min(n.len() / 3 + 1) || words_match || fs.starts_with(&n) && n.len() >= 3
        })
        .cloned()
        .collect()
}
