//! The command vocabulary: every word the grammar knows, with the concepts it carries
//! (a word may carry several: "drop" changes a priority or purges, "stop" pauses a
//! partition or turns something off). Words outside it are unknown: a changing command
//! with an unknown word is refused rather than guessed. Keyword typos are corrected
//! against this list by edit distance (see `correct`), so "priorty" reads as "priority"
//! and "slow" never reads as "low".

/// A set of concepts (bit flags).
pub(crate) type Flags = u64;

use std::collections::HashMap;
use std::sync::LazyLock;

macro_rules! concepts {
    ($($name:ident = $bit:expr, $doc:literal;)*) => {
        $(#[doc = $doc] pub(crate) const $name: Flags = 1 << $bit;)*
    };
}

concepts! {
    SHOW = 0, "a read verb: show, list, find, give";
    Q = 1, "a question word: what, which, how, is, are";
    NEXT = 2, "the serving order: next, upcoming, in line";
    CHANGE = 3, "a priority-change verb: set, move, bump, raise, lower";
    PRIO = 4, "the priority noun: priority, prio, level";
    LEVEL = 5, "a named priority level: high, low, urgent, medium";
    ADS = 6, "ads: ad, ads, items, them";
    ALL = 7, "every ad: all, every, everything, whole";
    FAM = 8, "the family noun: family, genre, category";
    WAIT = 9, "waiting: waiting, queued, older, stuck";
    MORE = 10, "a comparator up: longer, more, over, older, at least";
    LESS = 11, "a comparator down: less, under, younger, newer";
    STARV = 12, "starvation, anti-starvation, aging";
    MODE = 13, "a feature noun: mode, protection, prevention";
    ON = 14, "switch on: enable, activate, on";
    OFF = 15, "switch off: disable, deactivate, off";
    STOP = 16, "stop, prevent, avoid, end";
    MAXW = 17, "the max wait setting";
    LIMIT = 18, "a limit noun or verb: limit, cap, timeout";
    WORKERS = 19, "workers, processors, consumers";
    SCALE = 20, "scale, resize, run, use";
    PLUS = 21, "add, more, extra, another";
    MINUS = 22, "remove, fewer";
    BATCH = 23, "the ingest batch";
    DIST = 24, "distribution, breakdown, how many";
    PERF = 25, "performance, summary, overview, stats, status";
    REPORT = 26, "a report over the last hour";
    PREDICT = 27, "predict, eta, when, where, how long";
    RECO = 28, "recommend, suggest, advice";
    OPTIM = 29, "optimize, minimize";
    CAP = 30, "capacity, utilization, busy, load";
    PAUSE = 31, "pause, freeze, suspend, hold";
    RESUME = 32, "resume, unpause, unfreeze, continue";
    PART = 33, "a partition noun: partition, lane, tier, queue";
    PURGE = 34, "purge, clear, empty, delete, cancel";
    DEAD = 35, "dead letters, failed ads";
    REQUEUE = 36, "requeue, retry, replay";
    SETTINGS = 37, "policy, settings, config";
    QUEUE = 38, "the queue";
    NEG = 39, "a negation: not, never";
    EXCEPT = 40, "an exception: except, but, other than";
    FUTURE = 41, "a time in the future: tomorrow, later";
    AND = 42, "a conjunction between commands: and, then, also";
    OR = 43, "or";
    HELP = 44, "help";
    CONFIRM = 57, "confirm, approve, proceed (a confirmation needs its token)";
    FILLER = 45, "a word that changes nothing: please, the, to, me";
    VAGUE = 46, "a word that does not select ads: new, some, first, stuck";
    STUCK = 47, "overdue: stuck, overdue, starving, late";
    AUX = 48, "an auxiliary that opens a question: is, are, does, should";
    BACK = 49, "back (put back)";
    SERVE = 50, "serving, processed, handled";
    RECENT = 52, "last, past, previous";
    BY = 53, "by (a relative change), per";
    WEAKOPT = 54, "reduce, cut, shorten, improve, speed up (of waits)";
    TO = 55, "to, into";
    FROM = 56, "from, with, at, currently (a current-priority filter)";
}

/// Every word the grammar knows, grouped by its concepts (a word in two groups carries
/// both). Number and unit words are handled by the lexer (`NUMBER_WORDS`, `UNITS`).
pub(crate) const WORDS: &[(Flags, &str)] = &[
    // read verbs
    (
        SHOW,
        "show list display view see print find fetch check lookup tell generate create \
         produce compile prepare pull dump search look",
    ),
    (SHOW | CHANGE, "give get"),
    (SHOW | SCALE, "run"),
    // question words
    (Q, "what which how who why"),
    (Q | PREDICT, "when where howlong"),
    (Q | DIST, "howmany"),
    (AUX | FILLER, "is are was were do does did shall has have"),
    (AUX | RECO, "should"),
    // serving order
    (NEXT, "next upcoming coming line"),
    (NEXT | VAGUE, "first"),
    // priority change
    (
        CHANGE,
        "change changes set update make adjust adjustments adjustment modify move bump \
         raise lower push shift send put assign promote demote boost escalate upgrade \
         downgrade mark reprioritize reprioritise prioritize prioritise deprioritize \
         deprioritise elevate increase decrease lift bring switch turn flip",
    ),
    (CHANGE | PURGE, "drop"),
    (CHANGE | WEAKOPT, "reduce"),
    // priority nouns and levels
    (PRIO, "priority priorities prio pri level levels urgency importance"),
    (
        LEVEL,
        "high highest top max maximum urgent critical low lowest bottom min minimum \
         medium normal default mid middle standard",
    ),
    // ads and selections
    (
        ADS,
        "ad ads advert adverts advertisement advertisements item items creative creatives \
         job jobs entries",
    ),
    (ADS | FILLER, "them they those these ones"),
    (ALL, "all every each everything entire whole"),
    (FAM, "family families genre genres category categories game games"),
    // waiting and comparisons
    (
        WAIT,
        "wait waits waiting waited queued enqueued sitting pending idle old age aged \
         lingering",
    ),
    (WAIT | MORE, "older"),
    (WAIT | STUCK | VAGUE, "stuck overdue starving late delayed"),
    (MORE, "longer over above beyond exceeding exceed exceeded least greater ormore"),
    (MORE | PLUS, "more"),
    (MORE | RECENT, "past"),
    (FILLER, "than"),
    (LESS, "less under below within shorter"),
    (LESS | VAGUE, "younger newer most"),
    (LESS | MINUS, "fewer"),
    // anti-starvation
    (STARV, "starvation starve aging ageing"),
    (STARV | MODE, "antistarvation"),
    (MODE, "mode protection prevention guard feature logic mechanism"),
    (ON, "enable enabled activate activated true"),
    (ON | FILLER, "on"),
    (OFF, "disable disabled deactivate deactivated off false"),
    (STOP | PAUSE, "stop"),
    (STOP, "prevent avoid end fix eliminate shutdown"),
    // settings
    (MAXW, "maxwait"),
    (LIMIT, "limit cap ceiling timeout"),
    (SETTINGS, "policy policies settings setting config configuration parameters"),
    // workers
    (
        WORKERS,
        "worker workers processor processors consumer consumers instance instances \
         analyzer analyzers analyser analysers replicas",
    ),
    (SCALE, "scale resize"),
    (SCALE | FILLER, "use"),
    (PLUS, "add extra another"),
    (MINUS | PURGE, "remove"),
    (ON | RESUME, "start"),
    // ingest batch
    (BATCH, "batch batches batching batchsize"),
    // reads
    (DIST, "distribution distributed breakdown split spread histogram depth"),
    (
        PERF,
        "performance performing perform perf throughput summary summarize summarise \
         overview status health stats statistics metrics numbers kpis doing going",
    ),
    (REPORT, "report hourly lasthour"),
    (PREDICT, "predict prediction estimate eta forecast position until"),
    (
        RECO,
        "recommend recommendation recommendations recommended suggest suggestion \
         suggestions advice advise",
    ),
    (OPTIM, "optimize optimise optimization optimisation minimize minimise"),
    (OPTIM | WAIT, "minwait"),
    (WEAKOPT, "speedup cut shorten improve"),
    (
        CAP,
        "capacity utilization utilisation utilized busy load loaded saturation saturated \
         headroom",
    ),
    // partitions
    (PAUSE, "pause paused pausing freeze frozen suspend hold block"),
    (PAUSE | STOP, "halt"),
    (
        RESUME,
        "resume resumed resuming unpause unpaused unfreeze continue restart unblock \
         reopen unsuspend",
    ),
    (PART, "partition partitions lane lanes tier bucket"),
    (QUEUE | PART, "queue queues"),
    (QUEUE, "backlog"),
    (PURGE, "purge clear empty wipe nuke delete cancel discard erase"),
    (PURGE | OFF, "kill"),
    // dead letters
    (
        DEAD,
        "dead deadletters letters letter dlq failed failures failure failing poison \
         errored",
    ),
    (REQUEUE, "requeue retry replay resubmit reprocess redrive redeliver restore resend rerun"),
    (BACK, "back"),
    // refusals
    (NEG, "not never no without"),
    (EXCEPT, "except excluding exclude but besides apart other"),
    (FUTURE, "tomorrow tonight later schedule scheduled after"),
    (AND, "and then also plus"),
    (OR, "or"),
    (HELP, "help"),
    (CONFIRM, "confirm confirmed approve approved proceed"),
    // English words a letter or two from a keyword, known so that they are never
    // "corrected" into one ("delegate" is not "delete", "hole" is not "hold"): every word
    // of the system dictionary the corrector would otherwise change into another meaning
    // (test no_dictionary_word_is_corrected_into_another_meaning)
    (
        0,
        "result results rename passing oldest latest earliest sorted sort ayes bathed gages shorted sorter truce aback abed active \
         adjustor advertise agreeing alter angering anther arise avert averts avid baring bath \
         bathes bathing bating bedsides bellow bestrides black bloc blow boos boot boots boring \
         brig briny bum bumpy busby bush bushy bust buy buys caroming categorizes chancel \
         chancels chomping chroming cleat clomping coking combing conform conformed consume \
         consumed consumerism consumes crate creature cremate cremated cremates critic deaf \
         dear decease decree delegate denote deplete depleted depletes dept dialed ding \
         distributes doling doming doping dosing doting doze dozing drays dread drip droop \
         dumpy ease eat eery eighteenth eighth eleventh eluding entirety enviable est estate \
         excelled excerpt excerpts excreted exuding fetich fie fiend fife fifteenth fifth filed \
         filing fine fined fins firs fist flailed flailing flop flour fond forecastle forest \
         form forth fourteenth froze fund fur gaged gaging gamest gamey gene genera generative \
         genes gentries gents gibe given gods gong gores goring grater hat healthy heath hep \
         hod hole holed hood howling hundredth improvise info insane int intro isle jibs jogs \
         kilo lad laded lager lame lames lance lances lands latex lathe lather latte latter \
         layer lees lefter levelers lien linen linger loader loaf loafed loft lone loner longed \
         loom loser lost lowed lowliest lust mains male mar miens mines minims minis minks \
         mints minuet minuets minus minutest minutiae mire mist moat model modem moire moist \
         mos mote movie muddle nest net newsiest nineteenth noes none normalcy nuder opposition \
         overt part parturition pas pasta paste pasty pat pats pert pill pint plugs plums \
         police polices positional potion precious predicate predication predictor predilection \
         prevalent prior priories priory pro professor professors psst pulp pure pushy quartet \
         recommenced recreant relay relics repay replicates reply repress resented reticent \
         rise sale saturates saving sects seen settling seventeenth seventh shifty shirt shit \
         shitting shoe shown showy shrift sift sifting siting situating sixteenth sixth slit \
         slitting smuggest snow snuggest sop sow specs spend spilt spit spitting splint \
         splitting stags star stare staring stars startups state states statue statues statures \
         statutes stave staving stays stick stings stoats stomp stoop stratums string strop \
         struck suck summaries summarily tel thees theme thirsty thirteenth thousandth threw \
         throughout thy tied tiger tire tow tree tun unlock unused urn utilizes very vie vies \
         waif waifs waist waists waiter wen while width wile witch witching wits worked \
         writhing youngster",
    ),
    (WAIT, "await awaiting awaited awaits ages"),
    (BATCH, "batched"),
    (VAGUE, "new newest recent fresh young some few several inprogress progress"),
    (VAGUE | RECENT, "last"),
    (RECENT, "previous"),
    (BY, "by"),
    (FILLER, "per"),
    (TO | FILLER, "to"),
    (TO, "into"),
    (FROM, "from"),
    (FROM | FILLER, "with at currently"),
    (
        SERVE,
        "serving serve served processed processing process handled analyzed analysed done \
         finished complete completed picked",
    ),
    // words that change nothing
    (
        FILLER,
        "please pls plz kindly could can would will you u i we me us my our your want \
         need like wanna the a an of for in now right away asap immediately quickly just \
         go ahead let lets hey hi hello ok okay thanks thank thx cheers so that this it \
         its be been being had current there up down out onto as about mind sure yes yeah \
         time times exactly only again too really quick total number count size events \
         event any anything pool system am much many currently existing remaining across \
         between among today moment things stuff guys team if possible here via ingest \
         ingestion has having",
    ),
    (Q, "whats"),
    (CHANGE, "gets goes become becomes"),
    (PRIO, "level"),
];

/// Number words (the lexer turns them into numbers; listed for typo correction).
pub(crate) const NUMBER_WORDS: &[&str] = &[
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
    "twenty",
    "thirty",
    "forty",
    "fifty",
    "sixty",
    "seventy",
    "eighty",
    "ninety",
    "hundred",
    "thousand",
    "dozen",
    "half",
    "quarter",
];

/// Unit words and their length in seconds.
pub(crate) const UNITS: &[(&str, u64)] = &[
    ("s", 1),
    ("sec", 1),
    ("secs", 1),
    ("second", 1),
    ("seconds", 1),
    ("m", 60),
    ("min", 60),
    ("mins", 60),
    ("minute", 60),
    ("minutes", 60),
    ("h", 3600),
    ("hr", 3600),
    ("hrs", 3600),
    ("hour", 3600),
    ("hours", 3600),
    ("d", 86_400),
    ("day", 86_400),
    ("days", 86_400),
];

/// The concepts of a known word.
pub(crate) fn flags(word: &str) -> Option<Flags> {
    BY_WORD.get(word).copied()
}

/// `WORDS` by word, the concepts of every group a word is listed in.
static BY_WORD: LazyLock<HashMap<&'static str, Flags>> = LazyLock::new(|| {
    let mut m: HashMap<&'static str, Flags> = HashMap::new();
    for (f, words) in WORDS {
        for w in words.split_whitespace() {
            *m.entry(w).or_default() |= f;
        }
    }
    m
});

/// A named priority level.
pub(crate) fn level(word: &str) -> Option<u32> {
    match word {
        "high" | "highest" | "top" | "max" | "maximum" | "urgent" | "critical" => Some(5),
        "low" | "lowest" | "bottom" | "min" | "minimum" => Some(1),
        "medium" | "normal" | "default" | "mid" | "middle" | "standard" => Some(3),
        _ => None,
    }
}

/// The seconds of a unit word.
pub(crate) fn unit(word: &str) -> Option<u64> {
    UNITS.iter().find(|(w, _)| *w == word).map(|(_, s)| *s)
}

/// True for a word the lexer or the grammar knows (no correction needed).
pub(crate) fn known(word: &str) -> bool {
    flags(word).is_some() || NUMBER_WORDS.contains(&word) || unit(word).is_some()
}

/// Optimal-string-alignment distance (Levenshtein plus adjacent transpositions).
pub(crate) fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// True when two letters are neighbours on a QWERTY keyboard.
fn adjacent(a: char, b: char) -> bool {
    const ROWS: [&str; 3] = ["qwertyuiop", "asdfghjkl", "zxcvbnm"];
    let pos =
        |c: char| ROWS.iter().enumerate().find_map(|(r, row)| row.find(c).map(|i| (r as i32, i as i32)));
    match (pos(a), pos(b)) {
        // A lower row sits half a key to the right of the one above it.
        (Some((ra, ia)), Some((rb, ib))) => {
            let (dr, di) = (ra - rb, ia - ib);
            dr == 0 && di.abs() == 1 || dr == 1 && (di == 0 || di == -1) || dr == -1 && (di == 0 || di == 1)
        }
        _ => false,
    }
}

/// The keyword an unknown word is a typo of, if exactly one is close enough: one swapped,
/// missing or extra letter, or one wrong letter whose key is next to the right one; two
/// missing or extra letters in words of six letters or more. The first letter must match
/// (or be swapped with the second). Ties between words with different meanings correct
/// nothing, and English words are not typos (see the known English words in `WORDS`).
pub(crate) fn correct(word: &str) -> Option<&'static str> {
    let n = word.chars().count();
    if n < 3 || !word.chars().all(|c| c.is_ascii_alphabetic()) || known(word) {
        return None;
    }
    let max = if n >= 6 { 2 } else { 1 };
    let first: Vec<char> = word.chars().take(2).collect();
    // Known English words without a concept stop their own correction but are never
    // what a typo is corrected to.
    let candidates = BY_WORD
        .iter()
        .filter(|(_, f)| **f != 0)
        .map(|(w, _)| *w)
        .chain(NUMBER_WORDS.iter().copied())
        .chain(UNITS.iter().map(|(w, _)| *w).filter(|w| w.len() >= 3));
    let mut best: Vec<(usize, &'static str)> = Vec::new();
    for c in candidates {
        if c.len() < 3 || c.len().abs_diff(n) > max {
            continue;
        }
        let cf: Vec<char> = c.chars().take(2).collect();
        let same_start =
            cf[0] == first[0] || (cf.len() > 1 && first.len() > 1 && cf[0] == first[1] && cf[1] == first[0]);
        if !same_start {
            continue;
        }
        let d = distance(word, c);
        // Two edits only as two missing or extra letters ("prioty"): two wrong letters make
        // another word. A wrong letter counts only when its key is next to the right one
        // ("sise" -> "size", but "passed" is not "paused"), and a keyword of three letters
        // is reached only by a swap ("lwo" -> "low", but "lot" is not "low").
        if d == 0 || d > max || (d == 2 && (c.len() < 6 || c.len().abs_diff(n) != 2)) {
            continue;
        }
        let diff: Vec<(char, char)> = word.chars().zip(c.chars()).filter(|(a, b)| a != b).collect();
        let swap = d == 1 && n == c.len() && diff.len() == 2;
        let substitution = d == 1 && n == c.len() && !swap;
        let slip = substitution && diff.len() == 1 && adjacent(diff[0].0, diff[0].1);
        if substitution && (n <= 3 || !slip) || c.len() <= 3 && !swap {
            continue;
        }
        match best.first() {
            Some((bd, _)) if d > *bd => {}
            Some((bd, _)) if d < *bd => best = vec![(d, c)],
            _ => best.push((d, c)),
        }
    }
    // Deterministic whatever the map's order: the closest, then alphabetical.
    best.sort();
    best.dedup_by_key(|(_, w)| *w);
    let first = best.first()?.1;
    let same = |w: &str| flags(w) == flags(first) && level(w) == level(first) && unit(w) == unit(first);
    best.iter().all(|(_, w)| same(w)).then_some(first)
}
