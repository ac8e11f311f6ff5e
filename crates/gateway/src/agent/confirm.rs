//! Previews waiting for confirmation. A wide or disruptive command is planned, and the
//! plan (the exact list of changes the operator saw) is kept here under a random token;
//! a second call with the token runs that plan, once, for the caller it was shown to,
//! before it expires. Nothing else can run it: the token is 122 random bits, single use,
//! and bound to the caller and the previewed text.
//!
//! Kept in this gateway's memory (a std Mutex: no await while it is held): a token is
//! confirmed on the gateway that issued it; anywhere else it is refused as unknown, never
//! run. At most `MAX_PENDING` previews wait; the oldest goes first.

use super::executor::Plan;
use adflow_domain::pb;
use std::collections::HashMap;
use std::sync::Mutex;

/// Previews waiting at most.
pub const MAX_PENDING: usize = 1024;

/// A previewed command waiting for its confirmation.
#[derive(Clone, Debug)]
pub struct Pending {
    /// Who saw the preview.
    pub caller: String,
    /// The text as typed.
    pub text: String,
    /// The typed command.
    pub command: pb::AgentCommand,
    /// The sentence said back.
    pub understood_as: String,
    /// Who understood the text.
    pub interpreted_by: pb::Interpreter,
    /// The plan shown as the preview.
    pub plan: Plan,
    /// The audit id of the preview.
    pub preview_id: String,
    /// When the token expires, Unix ms.
    pub expires_at_ms: i64,
}

/// Pending previews by token.
pub struct Confirmations {
    ttl_ms: i64,
    pending: Mutex<HashMap<String, Pending>>,
}

impl Confirmations {
    /// Tokens valid for `ttl_seconds` (at least 1).
    pub fn new(ttl_seconds: u64) -> Self {
        let ttl_ms = i64::try_from(ttl_seconds.max(1)).unwrap_or(i64::MAX / 2_000).saturating_mul(1000);
        Self { ttl_ms, pending: Mutex::new(HashMap::new()) }
    }

    /// Keeps `p` until it is confirmed or expires; returns its token and expiry.
    pub fn issue(&self, mut p: Pending, now_ms: i64) -> (String, i64) {
        let token = uuid::Uuid::new_v4().simple().to_string();
        p.expires_at_ms = now_ms.saturating_add(self.ttl_ms);
        let expires = p.expires_at_ms;
        let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, v| v.expires_at_ms > now_ms);
        while map.len() >= MAX_PENDING {
            let Some(oldest) = map.iter().min_by_key(|(_, v)| v.expires_at_ms).map(|(k, _)| k.clone()) else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(token.clone(), p);
        (token, expires)
    }

    /// The preview `token` confirms, taken out (it runs once). `text`, when not empty,
    /// must be the previewed text. A token shown to another caller is left in place.
    pub fn take(&self, token: &str, caller: &str, text: &str, now_ms: i64) -> Result<Pending, String> {
        let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = map.get(token) else {
            return Err("unknown confirmation token: already used, expired, or issued by another gateway; nothing was run".into());
        };
        if p.expires_at_ms <= now_ms {
            map.remove(token);
            return Err(
                "the confirmation token expired; nothing was run. Send the command again for a new preview"
                    .into(),
            );
        }
        if p.caller != caller {
            return Err("this confirmation token was issued to another caller; nothing was run".into());
        }
        if !text.trim().is_empty() && text.trim() != p.text.trim() {
            return Err(format!("the token confirms {:?}, not {:?}; nothing was run", p.text, text));
        }
        Ok(map.remove(token).expect("checked above"))
    }
}
