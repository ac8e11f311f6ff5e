//! The deterministic command parser: an intent and slot grammar, no network.
//!
//! `lexer` normalises the text (ids, case, punctuation, families that exist, keyword
//! typos, number words, exact durations); `intents` classifies it by its keywords, in a
//! fixed order, and fills typed slots (`slots`) validated against the live queue. The
//! rule that keeps it safe: a text runs only when it clearly names one command with valid
//! arguments. Negations, exceptions, future times, two commands in one text, a question
//! about a change ("should I pause priority 2?"), and any number, family, id or (in a
//! changing command) word that no slot used are refused, never guessed. A refusal says
//! why and suggests the closest commands filled in with the text's own values
//! (`suggest`). Every reading that is not literal (a corrected typo, a default count,
//! "stop starvation") is said back in the notes.

mod intents;
mod lexer;
mod slots;
mod suggest;
mod vocab;

use super::Live;
use adflow_domain::pb::{self, agent_command::Command};
use intents::{ACTIONS, Claim, INTENTS};
use lexer::{Kind, Lexed, Tok};
use slots::{Refusal, S, unknown_family};
use vocab::*;

/// The text was not run: why, and what to type instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}; closest supported commands: {}", suggestions.join(" | "))]
pub struct NotUnderstood {
    /// The text.
    pub text: String,
    /// Why it was not run.
    pub reason: String,
    /// Up to three supported commands, closest first, filled in with the text's values.
    pub suggestions: Vec<String>,
}

/// A text understood as one command.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The typed command (its arguments validated).
    pub command: pb::AgentCommand,
    /// Readings that were not literal, said back ("read 'priorty' as 'priority'").
    pub notes: Vec<String>,
}

/// Parses `text` against the live queue.
pub fn parse(text: &str, live: &Live) -> Result<Parsed, NotUnderstood> {
    let lexed = lexer::lex(text, &live.families);
    let refused = |r: Refusal| {
        let s = S::new(&lexed.toks, live);
        let fam = unknown_family(&s);
        NotUnderstood {
            text: text.to_string(),
            reason: r.reason,
            suggestions: suggest::suggestions(&lexed.toks, live, fam, &r.first),
        }
    };
    let (cmd, mut notes) = understand(&lexed, live).map_err(refused)?;
    let command = pb::AgentCommand { command: Some(cmd) };
    super::validate(&command).map_err(|e| refused(Refusal::new(e)))?;
    let mut all: Vec<String> =
        lexed.corrected.iter().map(|(from, to)| format!("read '{from}' as '{to}'")).collect();
    all.append(&mut notes);
    Ok(Parsed { command, notes: all })
}

fn understand(lx: &Lexed, live: &Live) -> Result<(Command, Vec<String>), Refusal> {
    let t = &lx.toks;
    if t.iter().all(|x| x.is(FILLER) || x.kind == Kind::Sep) {
        return Err(Refusal::new("nothing to do in this text"));
    }
    let word = |f: Flags| t.iter().find(|x| x.is(f));
    if word(HELP).is_some() {
        return Err(Refusal::new("supported commands are listed in the README section 'Operator agent'"));
    }
    if let Some(x) = word(CONFIRM) {
        return Err(Refusal::new(format!(
            "'{}': a preview is confirmed by sending its confirmation_token back (ExecuteRequest.confirmation_token), not by text",
            x.raw
        )));
    }
    if let Some(x) = word(NEG) {
        return Err(Refusal::new(format!(
            "'{}' negates the command; say what to do, not what not to do",
            x.raw
        )));
    }
    if let Some(x) = word(EXCEPT) {
        return Err(Refusal::new(format!(
            "exceptions ('{}') cannot be expressed; name the family, age or priority of the ads instead",
            x.raw
        )));
    }
    if let Some(x) = word(FUTURE) {
        return Err(Refusal::new(format!("'{}' is a time in the future; commands run now", x.raw)));
    }
    for (i, x) in t.iter().enumerate() {
        let next = t.get(i + 1).map(|n| n.w.as_str()).unwrap_or("");
        if x.is(OR) && !matches!(next, "more" | "longer" | "older" | "above" | "greater") {
            return Err(Refusal::new("'or' leaves the choice open; say one command with one value"));
        }
    }
    let segments: Vec<&[Tok]> =
        t.split(|x| x.is(AND) || x.kind == Kind::Sep).filter(|s| !s.is_empty()).collect();
    if segments.len() > 1 {
        let found: Vec<String> = segments
            .iter()
            .filter_map(|seg| match classify(seg, live) {
                Some(Ok((c, _))) => Some(super::describe(&pb::AgentCommand { command: Some(c.cmd) })),
                _ => None,
            })
            .collect();
        if found.len() > 1 {
            return Err(Refusal::new(format!(
                "one command at a time; this text holds {}",
                found.join(" / ")
            ))
            .suggest(found));
        }
    }
    let (claim, s) = match classify(t, live) {
        None => return Err(Refusal::new("not understood as any supported command")),
        Some(r) => r?,
    };
    let said = super::describe(&pb::AgentCommand { command: Some(claim.cmd.clone()) });
    if claim.write && s.question {
        return Err(Refusal::new(format!(
            "that reads as a question; nothing was changed. To do it, say it as a command ('{said}')"
        ))
        .suggest([said]));
    }
    leftovers(&claim, &s, &said)?;
    Ok((claim.cmd, s.notes))
}

/// The first intent that claims the sentence.
fn classify<'a>(t: &'a [Tok], live: &'a Live) -> Option<Result<(Claim, S<'a>), Refusal>> {
    for intent in INTENTS {
        let mut s = S::new(t, live);
        if let Some(r) = intent(&mut s) {
            return Some(r.map(|c| (c, s)));
        }
    }
    None
}

/// Refuses a claim that left a value unused, or (changing commands) an unknown word or a
/// keyword of something else; reads ignore unknown words but not other actions.
fn leftovers(c: &Claim, s: &S<'_>, said: &str) -> Result<(), Refusal> {
    for (i, x) in s.t.iter().enumerate() {
        if s.used[i] {
            continue;
        }
        match &x.kind {
            Kind::Sep => {}
            // "and"/"or" left here joined nothing else: two commands and open choices were
            // refused before.
            Kind::Word if x.is(FILLER | Q | AUX | AND | OR) || x.f & c.allowed != 0 => {}
            Kind::Word if x.f == 0 && !c.write => {}
            Kind::Word if x.f == 0 => {
                if let Some(name) = unknown_family(s) {
                    return Err(Refusal::new(format!(
                        "no family '{name}'; known families: {}",
                        s.live.families.join(", ")
                    )));
                }
                return Err(Refusal::new(format!(
                    "'{}' is not a word I know in '{said}'; nothing was run",
                    x.raw
                )));
            }
            Kind::Word if !c.write && x.f & ACTIONS == 0 => {}
            _ => {
                return Err(Refusal::new(format!("'{}' does not fit '{said}'; nothing was run", x.raw)));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
