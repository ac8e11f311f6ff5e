//! The ad analysis: deterministic, explainable rules, no randomness and no sleeps.
//!
//! Six components, each scored 0..=100 with the reasons behind the score: title,
//! description, readability (Flesch reading ease), call to action (action verb, urgency,
//! length), audience fit (target audiences and visual elements against the genre's
//! typical ones) and performance (CTR and conversion rate of the ad's ingested events,
//! skipped when it has none). The weighted mean is the score; a near duplicate of a
//! recently analysed ad costs 20 points. Policy flags come from a configurable list of
//! banned terms and claims; any flag rejects the ad.

pub mod minhash;

use adflow_proto::v1 as pb;
use serde::{Deserialize, Serialize};

/// Version of these rules, stored with every result.
pub const VERSION: &str = "adflow-rules-1";

/// Analysis settings (`[analysis]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalysisConfig {
    /// Terms and claims that break policy (matched case-insensitively as whole phrases).
    pub banned_terms: Vec<String>,
    /// Similarity from which an ad counts as a near duplicate (default 0.8).
    pub duplicate_threshold: f64,
    /// How many recent ads each worker compares against (default 10000).
    pub recent_ads: usize,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        Self {
            banned_terms: [
                "guaranteed win",
                "free money",
                "100% win",
                "get rich",
                "risk free",
                "miracle",
                "cure",
            ]
            .map(String::from)
            .to_vec(),
            duplicate_threshold: 0.8,
            recent_ads: 10_000,
        }
    }
}

const ACTION_VERBS: &[&str] = &[
    "play", "download", "install", "join", "start", "get", "try", "claim", "unlock", "build", "battle",
    "explore", "discover", "compete", "collect", "win", "create", "fight", "train",
];
const URGENCY: &[&str] = &["now", "today", "free", "limited", "tonight", "instantly"];

/// Typical audiences and visual motifs per genre keyword.
type Genre = (&'static str, &'static [&'static str], &'static [&'static str]);
const GENRES: &[Genre] = &[
    (
        "rpg",
        &["core", "midcore", "fantasy-fans", "adults", "roleplayers"],
        &["dragon", "sword", "castle", "magic", "hero", "armor", "gameplay-footage"],
    ),
    (
        "fantasy",
        &["core", "midcore", "fantasy-fans", "adults"],
        &["dragon", "castle", "magic", "elf", "wizard"],
    ),
    (
        "puzzle",
        &["casual", "all-ages", "families", "women-35+", "commuters"],
        &["gems", "candy", "tiles", "board", "bright-colors"],
    ),
    ("casual", &["casual", "all-ages", "families", "commuters"], &["bright-colors", "characters", "cartoon"]),
    (
        "shooter",
        &["core", "teens", "young-adults", "competitive"],
        &["gun", "soldier", "explosion", "gameplay-footage", "arena"],
    ),
    (
        "strategy",
        &["midcore", "adults", "history-fans", "competitive"],
        &["map", "army", "castle", "kingdom", "gameplay-footage"],
    ),
    ("racing", &["core", "teens", "car-fans"], &["car", "track", "speed", "gameplay-footage"]),
    (
        "sports",
        &["sports-fans", "teens", "young-adults", "competitive"],
        &["ball", "stadium", "player", "gameplay-footage"],
    ),
];

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric() && c != '%' && c != '\'')
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

fn syllables(word: &str) -> usize {
    let mut n = 0;
    let mut prev_vowel = false;
    for c in word.chars() {
        let v = "aeiouy".contains(c);
        if v && !prev_vowel {
            n += 1;
        }
        prev_vowel = v;
    }
    if word.ends_with('e') && n > 1 {
        n -= 1;
    }
    n.max(1)
}

fn component(name: &str, score: f64, weight: f64, reasons: Vec<String>) -> pb::ComponentScore {
    pb::ComponentScore { name: name.into(), score: score.clamp(0.0, 100.0).round() as u32, weight, reasons }
}

/// 100 inside [lo, hi], falling linearly to 0 at 0 and at 3*hi.
fn length_score(len: usize, lo: usize, hi: usize) -> f64 {
    if len < lo {
        100.0 * len as f64 / lo as f64
    } else if len <= hi {
        100.0
    } else {
        (100.0 * (1.0 - (len - hi) as f64 / (2 * hi) as f64)).max(0.0)
    }
}

fn title(spec: &pb::AdSpec) -> pb::ComponentScore {
    let t = spec.title.trim();
    let n = t.chars().count();
    let mut s = length_score(n, 15, 60);
    let mut why = vec![format!("{n} characters (best 15-60)")];
    let letters: Vec<char> = t.chars().filter(|c| c.is_alphabetic()).collect();
    if letters.len() >= 6 && letters.iter().all(|c| c.is_uppercase()) {
        s -= 25.0;
        why.push("all capitals reads as shouting (-25)".into());
    }
    if t.contains("!!") || t.contains("??") {
        s -= 15.0;
        why.push("repeated punctuation (-15)".into());
    }
    component("title", s, 0.2, why)
}

fn description(spec: &pb::AdSpec) -> pb::ComponentScore {
    let n = spec.description.trim().chars().count();
    if n == 0 {
        return component("description", 20.0, 0.15, vec!["no description (20)".into()]);
    }
    component("description", length_score(n, 50, 300), 0.15, vec![format!("{n} characters (best 50-300)")])
}

fn readability(spec: &pb::AdSpec) -> pb::ComponentScore {
    let text = if spec.description.trim().is_empty() { &spec.title } else { &spec.description };
    let w = words(text);
    if w.is_empty() {
        return component("readability", 50.0, 0.15, vec!["no text to read (50)".into()]);
    }
    let sentences = text.split(['.', '!', '?']).filter(|s| !s.trim().is_empty()).count().max(1);
    let syl: usize = w.iter().map(|x| syllables(x)).sum();
    let flesch = 206.835 - 1.015 * (w.len() as f64 / sentences as f64) - 84.6 * (syl as f64 / w.len() as f64);
    let grade = if flesch >= 70.0 {
        "easy"
    } else if flesch >= 50.0 {
        "fairly difficult"
    } else {
        "difficult"
    };
    component(
        "readability",
        flesch,
        0.15,
        vec![format!(
            "Flesch reading ease {flesch:.0} ({grade}): {} words, {sentences} sentences, {syl} syllables",
            w.len()
        )],
    )
}

fn call_to_action(spec: &pb::AdSpec) -> pb::ComponentScore {
    let w = words(&spec.call_to_action);
    if w.is_empty() {
        return component("call_to_action", 10.0, 0.2, vec!["no call to action (10)".into()]);
    }
    let mut s = 0.0;
    let mut why = Vec::new();
    match w.iter().find(|x| ACTION_VERBS.contains(&x.as_str())) {
        Some(v) => {
            s += 60.0;
            why.push(format!("action verb \"{v}\" (+60)"));
        }
        None => why.push("no action verb such as play, download or join (+0)".into()),
    }
    if let Some(u) = w.iter().find(|x| URGENCY.contains(&x.as_str())) {
        s += 20.0;
        why.push(format!("urgency word \"{u}\" (+20)"));
    }
    if (2..=5).contains(&w.len()) {
        s += 20.0;
        why.push(format!("{} words: short and direct (+20)", w.len()));
    } else {
        why.push(format!("{} words (best 2-5, +0)", w.len()));
    }
    component("call_to_action", s, 0.2, why)
}

fn audience_fit(spec: &pb::AdSpec) -> pb::ComponentScore {
    let key = format!("{} {}", spec.genre, spec.game_family).to_lowercase();
    let matched: Vec<_> = GENRES.iter().filter(|(g, _, _)| key.contains(g)).collect();
    if matched.is_empty() {
        return component(
            "audience_fit",
            50.0,
            0.15,
            vec![format!("genre \"{}\" has no audience profile (50)", key.trim())],
        );
    }
    let norm = |v: &[String]| v.iter().map(|x| x.trim().to_lowercase()).collect::<Vec<_>>();
    let (aud, vis) = (norm(&spec.target_audience), norm(&spec.visual_elements));
    let fits = |list: &[String], pick: fn(&Genre) -> &'static [&'static str]| {
        list.iter().filter(|x| matched.iter().any(|g| pick(g).contains(&x.as_str()))).count()
    };
    let a = fits(&aud, |g| g.1);
    let v = fits(&vis, |g| g.2);
    let a_share = if aud.is_empty() { 0.0 } else { a as f64 / aud.len() as f64 };
    let v_share = if vis.is_empty() { 0.0 } else { v as f64 / vis.len() as f64 };
    let genres: Vec<&str> = matched.iter().map(|g| g.0).collect();
    component(
        "audience_fit",
        40.0 + 30.0 * a_share + 30.0 * v_share,
        0.15,
        vec![
            format!("{a} of {} target audiences are typical for {}", aud.len(), genres.join("/")),
            format!("{v} of {} visual elements suit {}", vis.len(), genres.join("/")),
        ],
    )
}

fn performance(p: &pb::AdPerformance) -> Option<pb::ComponentScore> {
    if p.impressions == 0 {
        return None;
    }
    // 2% CTR and 10% conversion rate score full marks.
    let ctr_score = (p.ctr / 0.02).min(1.0) * 70.0;
    let cvr_score = (p.conversion_rate / 0.10).min(1.0) * 30.0;
    Some(component(
        "performance",
        ctr_score + cvr_score,
        0.15,
        vec![
            format!("CTR {:.2}% over {} impressions (2% scores 70)", p.ctr * 100.0, p.impressions),
            format!(
                "conversion rate {:.2}% over {} clicks (10% scores 30)",
                p.conversion_rate * 100.0,
                p.clicks
            ),
        ],
    ))
}

/// `text` as " word word " (lower case, punctuation dropped) for whole-phrase matching.
fn normalise(text: &str) -> String {
    format!(" {} ", words(text).join(" "))
}

fn flags(spec: &pb::AdSpec, banned: &[(String, String)]) -> Vec<pb::PolicyFlag> {
    let fields = [
        ("title", normalise(&spec.title)),
        ("description", normalise(&spec.description)),
        ("call_to_action", normalise(&spec.call_to_action)),
    ];
    let mut out = Vec::new();
    for (term, needle) in banned {
        for (name, hay) in &fields {
            if hay.contains(needle.as_str()) {
                out.push(pb::PolicyFlag { term: term.clone(), field: (*name).into() });
            }
        }
    }
    out
}

/// A worker's analyser: the rules plus its memory of recently analysed ads.
pub struct Analyzer {
    cfg: AnalysisConfig,
    banned: Vec<(String, String)>,
    recent: minhash::Recent,
}

impl Analyzer {
    /// An analyser with `cfg`.
    pub fn new(cfg: AnalysisConfig) -> Self {
        let recent = minhash::Recent::new(cfg.recent_ads);
        let banned = cfg
            .banned_terms
            .iter()
            .map(|t| (t.clone(), normalise(t)))
            .filter(|(_, n)| n.trim() != "")
            .collect();
        Self { cfg, banned, recent }
    }

    /// Analyses `ad` with its performance; `worker_id` and `now_ms` are recorded.
    pub fn analyze(
        &mut self,
        ad: &pb::Ad,
        perf: Option<&pb::AdPerformance>,
        worker_id: &str,
        now_ms: i64,
    ) -> pb::AnalysisResult {
        let spec = ad.spec.clone().unwrap_or_default();
        let mut components = vec![
            title(&spec),
            description(&spec),
            readability(&spec),
            call_to_action(&spec),
            audience_fit(&spec),
        ];
        if let Some(c) = perf.and_then(performance) {
            components.push(c);
        }
        let total_weight: f64 = components.iter().map(|c| c.weight).sum();
        for c in &mut components {
            c.weight /= total_weight;
        }
        let mut score: f64 = components.iter().map(|c| c.score as f64 * c.weight).sum();

        let sig = minhash::signature(&format!("{} {}", spec.title, spec.description));
        let dup = self
            .recent
            .check_and_insert(ad.id.clone(), sig)
            .filter(|(_, s)| *s >= self.cfg.duplicate_threshold);
        if dup.is_some() {
            score -= 20.0;
        }
        let flags = flags(&spec, &self.banned);
        let score = score.clamp(0.0, 100.0).round() as u32;
        let verdict = if !flags.is_empty() || score < 40 {
            pb::Verdict::Rejected
        } else if score < 65 || dup.is_some() {
            pb::Verdict::NeedsReview
        } else {
            pb::Verdict::Approved
        };
        let (near_duplicate_of, similarity) = dup.unwrap_or_default();
        pb::AnalysisResult {
            score,
            verdict: verdict as i32,
            components,
            flags,
            near_duplicate_of,
            similarity,
            performance: perf.cloned().filter(|p| p.impressions > 0),
            worker_id: worker_id.into(),
            analyzed_at_ms: now_ms,
            analyzer_version: VERSION.into(),
        }
    }
}

#[cfg(test)]
mod tests;
