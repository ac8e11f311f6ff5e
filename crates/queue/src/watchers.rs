//! The local watchers of ads (WatchAd), for every backend: who watches which ad, and
//! which status each last saw. The shared backends (Redis, MongoDB) `deliver` each status
//! once and in order even when the ad read back has already moved on; the embedded queue
//! `take`s the channels when it changes an ad and sends once the change is committed.

use adflow_proto::v1 as pb;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::mpsc;

/// Per watched ad: the last status sent, and the channels of its watchers.
type ByAd = HashMap<String, (i32, Vec<mpsc::Sender<pb::Ad>>)>;

/// Watchers by ad id, with the last status sent to them.
#[derive(Default)]
pub(crate) struct Watchers(Mutex<ByAd>);

impl Watchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, ByAd> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A channel of the later states of `ad` (closed at once when it is final).
    pub(crate) fn register(&self, ad: &pb::Ad) -> mpsc::Receiver<pb::Ad> {
        let (tx, rx) = mpsc::channel(64);
        if !crate::status::is_final(ad.status) {
            self.lock().entry(ad.id.clone()).or_insert_with(|| (ad.status, Vec::new())).1.push(tx);
        }
        rx
    }

    /// True when someone watches `id` and has not seen `status` yet.
    pub(crate) fn wants(&self, id: &str, status: i32) -> bool {
        matches!(self.lock().get(id), Some((last, _)) if *last != status)
    }

    /// The watched ad ids.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Sends `ad` (with the status to report) to its watchers, once per status; a final
    /// status ends the watch.
    pub(crate) fn deliver(&self, id: &str, ad: pb::Ad) {
        let mut w = self.lock();
        if let Some((last, ws)) = w.get_mut(id) {
            if *last == ad.status {
                return;
            }
            *last = ad.status;
            let done = crate::status::is_final(ad.status);
            ws.retain(|tx| tx.try_send(ad.clone()).is_ok() || !tx.is_closed());
            if done || ws.is_empty() {
                w.remove(id);
            }
        }
    }

    /// Whether anyone watches `id`.
    pub(crate) fn watching(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// The open channels of `id`'s watchers, for a change to `status` that the caller
    /// sends itself (every change, not once per status); a final status, or no open
    /// channel left, ends the watch.
    pub(crate) fn take(&self, id: &str, status: i32) -> Vec<mpsc::Sender<pb::Ad>> {
        let mut w = self.lock();
        let Some((last, ws)) = w.get_mut(id) else { return Vec::new() };
        *last = status;
        ws.retain(|tx| !tx.is_closed());
        if crate::status::is_final(status) || ws.is_empty() {
            w.remove(id).map(|(_, ws)| ws).unwrap_or_default()
        } else {
            ws.clone()
        }
    }
}
