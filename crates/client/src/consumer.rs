//! Reading stored events back (`adflow.v1.EventLog`) as a consumer: [`Consumer`] opens a
//! `Read` for a consumer group (resuming at the group's committed cursor), hands out one
//! batch at a time, reopens the stream with backoff when it breaks (a gateway restart, a
//! network cut), resuming just after the last batch it handed out, and commits the
//! group's cursor when the caller says it has processed what it got.
//!
//! ```no_run
//! # async fn f(client: adflow_client::Client) -> Result<(), adflow_client::ClientError> {
//! use adflow_client::{Consumer, ConsumerConfig};
//! let mut c = Consumer::new(&client, ConsumerConfig::group("billing"))?;
//! while let Some(batch) = c.next_batch().await? {
//!     for e in &batch.events {
//!         // process e.event (idempotently by event_id: delivery is at-least-once)
//!     }
//!     c.commit().await?; // the group resumes after this batch from now on
//! }
//! # Ok(()) }
//! ```
//!
//! Delivery is at-least-once: after a restart of the consumer the events after the last
//! committed cursor come again. Within one `Consumer`, a reconnect resumes after the last
//! batch handed out, so nothing is repeated or skipped.

use crate::{Client, ClientError, pb};
use futures::StreamExt;
use std::time::Duration;
use tonic::{Code, Status, Streaming};

/// Where a read begins when the consumer has no group or its group never committed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest event still stored.
    #[default]
    Oldest,
    /// Only events committed from now on.
    Newest,
    /// The first event received at or after this time (ms since the epoch).
    Time(i64),
    /// After a cursor from an earlier batch.
    Cursor(String),
}

/// Consumer settings.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// Consumer group whose committed cursor the read resumes from (None: no group;
    /// `commit` is then refused).
    pub group: Option<String>,
    /// Where to begin when there is no group or it never committed (default oldest).
    pub start: StartAt,
    /// Only events of these ads (empty: all).
    pub ad_ids: Vec<String>,
    /// Only events of these campaigns (empty: all).
    pub campaign_ids: Vec<String>,
    /// Only events of these types (empty: all).
    pub event_types: Vec<pb::EventType>,
    /// Most events per batch, 1..=10000 (0: the gateway's default, 1000).
    pub max_batch_events: u32,
    /// Keep waiting for new commits after catching up (default true). Off, `next_batch`
    /// returns `None` once the log's end is reached.
    pub follow: bool,
    /// First reconnect delay, doubled per failed attempt with jitter (default 100 ms).
    pub retry_base: Duration,
    /// Longest reconnect delay (default 5 s).
    pub retry_max: Duration,
    /// Failed attempts in a row before `next_batch` gives up with the last error (0:
    /// never, the default).
    pub max_attempts: u32,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            group: None,
            start: StartAt::Oldest,
            ad_ids: Vec::new(),
            campaign_ids: Vec::new(),
            event_types: Vec::new(),
            max_batch_events: 0,
            follow: true,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            max_attempts: 0,
        }
    }
}

impl ConsumerConfig {
    /// Defaults for consumer group `name`.
    pub fn group(name: impl Into<String>) -> Self {
        Self { group: Some(name.into()), ..Self::default() }
    }
}

/// Attempts of one commit before its error is returned.
const COMMIT_ATTEMPTS: u32 = 5;

/// True for errors a new attempt may not meet (the gateway restarting, a network cut).
fn transient(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Aborted
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
    )
}

/// A consumer of the event log (see the module docs).
pub struct Consumer {
    client: Client,
    cfg: ConsumerConfig,
    stream: Option<Streaming<pb::ReadBatch>>,
    /// The cursor of the last batch handed out.
    delivered: Option<String>,
    /// A non-following read reached the end.
    done: bool,
    /// Failed attempts in a row.
    failures: u32,
    reconnects: u64,
}

impl Consumer {
    /// A consumer on `client`'s connection; nothing is sent before the first `next_batch`.
    pub fn new(client: &Client, cfg: ConsumerConfig) -> Result<Self, ClientError> {
        if let Some(g) = &cfg.group
            && (g.is_empty() || g.len() > 64)
        {
            return Err(Status::invalid_argument("group name must be 1 to 64 characters").into());
        }
        Ok(Self {
            client: client.clone(),
            cfg,
            stream: None,
            delivered: None,
            done: false,
            failures: 0,
            reconnects: 0,
        })
    }

    fn log(&self) -> pb::event_log_client::EventLogClient<crate::AuthChannel> {
        pb::event_log_client::EventLogClient::new(self.client.channel()).max_decoding_message_size(64 << 20)
    }

    /// The request that (re)opens the read: after the last delivered batch, else at the
    /// group's committed cursor (the gateway's default when a group is named and no start
    /// is given), else at `start`.
    async fn request(&self) -> Result<pb::ReadRequest, Status> {
        use pb::read_request::Start;
        let start = match (&self.delivered, &self.cfg.group) {
            (Some(c), _) => Some(Start::Cursor(c.clone())),
            (None, Some(g)) if self.cfg.start != StartAt::Oldest => {
                let req = pb::GetCursorRequest { group: g.clone() };
                match self.log().get_cursor(req).await {
                    Ok(_) => None, // the gateway resumes the group (and reports its lost events)
                    Err(s) if s.code() == Code::NotFound => self.start(),
                    Err(s) => return Err(s),
                }
            }
            (None, Some(_)) => None, // committed cursor, else the oldest
            (None, None) => self.start(),
        };
        Ok(pb::ReadRequest {
            start,
            group: self.cfg.group.clone().unwrap_or_default(),
            ad_ids: self.cfg.ad_ids.clone(),
            campaign_ids: self.cfg.campaign_ids.clone(),
            event_types: self.cfg.event_types.iter().map(|t| *t as i32).collect(),
            max_batch_events: self.cfg.max_batch_events,
            follow: self.cfg.follow,
        })
    }

    fn start(&self) -> Option<pb::read_request::Start> {
        use pb::read_request::Start;
        Some(match &self.cfg.start {
            StartAt::Oldest => Start::Position(pb::StartPosition::Oldest as i32),
            StartAt::Newest => Start::Position(pb::StartPosition::Newest as i32),
            StartAt::Time(t) => Start::FromTimeMs(*t),
            StartAt::Cursor(c) => Start::Cursor(c.clone()),
        })
    }

    async fn open(&mut self) -> Result<(), Status> {
        let req = self.request().await?;
        self.stream = Some(self.log().read(req).await?.into_inner());
        Ok(())
    }

    /// Counts a failure; waits before the next attempt, or gives up with `s`.
    async fn backoff(&mut self, s: Status) -> Result<(), ClientError> {
        self.stream = None;
        self.failures += 1;
        if !transient(&s) || (self.cfg.max_attempts > 0 && self.failures >= self.cfg.max_attempts) {
            return Err(s.into());
        }
        let exp = self.cfg.retry_base.saturating_mul(1 << self.failures.min(16).saturating_sub(1));
        let cap = exp.min(self.cfg.retry_max);
        // Full jitter over the upper half, so many consumers do not reconnect in step.
        let nanos = cap.as_nanos() as u64;
        let jitter = uuid::Uuid::new_v4().as_u128() as u64 % (nanos / 2 + 1);
        tracing::debug!(error = %s, attempt = self.failures, "event log read broke; reconnecting");
        tokio::time::sleep(Duration::from_nanos(nanos / 2 + jitter)).await;
        self.reconnects += 1;
        Ok(())
    }

    /// The next batch (with `follow`, waits for new commits). `None` once a non-following
    /// read reached the end of the log. A batch may hold no events (a filter skipped them,
    /// or it marks the end of the log) while its cursor still moves: committing it is
    /// still worth it. Errors are returned only when reconnecting cannot help (bad
    /// arguments, permissions) or after `max_attempts`.
    pub async fn next_batch(&mut self) -> Result<Option<pb::ReadBatch>, ClientError> {
        loop {
            if self.done {
                return Ok(None);
            }
            if self.stream.is_none()
                && let Err(s) = self.open().await
            {
                self.backoff(s).await?;
                continue;
            }
            let next = self.stream.as_mut().expect("opened above").next().await;
            match next {
                Some(Ok(b)) => {
                    self.failures = 0;
                    self.delivered = Some(b.cursor.clone());
                    if b.caught_up && !self.cfg.follow {
                        self.done = true;
                        self.stream = None;
                    }
                    return Ok(Some(b));
                }
                Some(Err(s)) => self.backoff(s).await?,
                // A read that does not follow ends when it reaches the end of the log (a
                // gateway going away ends it with an error instead).
                None if !self.cfg.follow => {
                    self.done = true;
                    self.stream = None;
                }
                None => self.backoff(Status::unavailable("the read ended while following")).await?,
            }
        }
    }

    /// Commits the cursor of the last batch handed out as the group's position (call it
    /// after processing). Nothing to do before the first batch.
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        match self.delivered.clone() {
            Some(c) => self.commit_cursor(&c).await,
            None => Ok(()),
        }
    }

    /// Commits `cursor` (from a batch this consumer handed out) as the group's position,
    /// e.g. when batches are processed out of order and only some are done. Transient
    /// errors (the gateway restarting) are retried a few times with backoff.
    pub async fn commit_cursor(&self, cursor: &str) -> Result<(), ClientError> {
        let Some(group) = &self.cfg.group else {
            return Err(Status::failed_precondition("this consumer has no group to commit for").into());
        };
        let req = pb::CommitCursorRequest { group: group.clone(), cursor: cursor.to_owned() };
        // A few quick retries ride out a reconnect; a commit is idempotent.
        let mut delay = self.cfg.retry_base;
        for attempt in 1.. {
            match self.log().commit_cursor(req.clone()).await {
                Ok(_) => break,
                Err(s) if transient(&s) && attempt < COMMIT_ATTEMPTS => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.cfg.retry_max);
                }
                Err(s) => return Err(s.into()),
            }
        }
        Ok(())
    }

    /// The cursor of the last batch handed out.
    pub fn cursor(&self) -> Option<&str> {
        self.delivered.as_deref()
    }

    /// How often the read was reopened after breaking.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }
}
