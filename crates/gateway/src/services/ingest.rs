//! `adflow.v1.EventIngest`: unary, batch and bidirectional-stream ingestion. Requests
//! arrive through `adflow_proto::raw`: each event is a zero-copy slice of the received
//! buffer, which the pipeline validates in place and the store writes as is.

use crate::pipeline::{Pipeline, WhenFull};
use adflow_domain::pb::{self, IngestReply};
use adflow_proto::codec::inbound_error;
use adflow_proto::raw::{RawEvent, RawEvents};
use adflow_proto::raw_ingest::event_ingest_server::EventIngest;
use futures::stream::{FuturesOrdered, Stream, StreamExt};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// The EventIngest service.
pub struct IngestService {
    pipeline: Arc<Pipeline>,
    max_inflight: usize,
    shutdown: watch::Receiver<bool>,
}

impl IngestService {
    /// A service feeding `pipeline`; open streams end when `shutdown` turns true.
    pub fn new(pipeline: Arc<Pipeline>, max_inflight: usize, shutdown: watch::Receiver<bool>) -> Self {
        Self { pipeline, max_inflight, shutdown }
    }
}

fn mode(m: i32) -> pb::AckMode {
    pb::AckMode::try_from(m).unwrap_or(pb::AckMode::Unspecified)
}

fn check_mode(m: i32) -> Result<(), Status> {
    pb::AckMode::try_from(m)
        .map(|_| ())
        .map_err(|_| Status::invalid_argument(format!("ack_mode {m} is not a known AckMode")))
}

#[tonic::async_trait]
impl EventIngest for IngestService {
    #[tracing::instrument(level = "debug", skip_all, name = "SendEvent")]
    async fn send_event(&self, req: Request<RawEvent>) -> Result<Response<IngestReply>, Status> {
        let r = req.into_inner();
        check_mode(r.ack_mode)?;
        let event = r.event.ok_or_else(|| Status::invalid_argument("event is required"))?;
        let pending = self.pipeline.enqueue(vec![event], mode(r.ack_mode), 0, WhenFull::Refuse).await?;
        let reply = pending.wait().await?;
        if let Some(bad) = reply.rejections.first() {
            return Err(Status::invalid_argument(format!("event rejected: {}: {}", bad.field, bad.message)));
        }
        Ok(Response::new(reply))
    }

    #[tracing::instrument(level = "debug", skip_all, name = "SendEvents")]
    async fn send_events(&self, req: Request<RawEvents>) -> Result<Response<IngestReply>, Status> {
        let r = req.into_inner();
        check_mode(r.ack_mode)?;
        let pending = self.pipeline.enqueue(r.events, mode(r.ack_mode), r.sequence, WhenFull::Refuse).await?;
        Ok(Response::new(pending.wait().await?))
    }

    type StreamEventsStream = ReceiverStream<Result<IngestReply, Status>>;

    #[tracing::instrument(level = "debug", skip_all, name = "StreamEvents")]
    async fn stream_events(
        &self,
        req: Request<Streaming<RawEvents>>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let (tx, rx) = mpsc::channel(self.max_inflight);
        let job = StreamJob {
            pipeline: self.pipeline.clone(),
            max_inflight: self.max_inflight,
            shutdown: self.shutdown.clone(),
            replies: tx.clone(),
        };
        crate::panic_layer::spawn_stream(
            "/adflow.v1.EventIngest/StreamEvents",
            tx,
            job.run(req.into_inner()),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One StreamEvents call: reads batches in order, keeps up to `max_inflight` awaiting
/// their commit, and sends replies in the order the batches came. A message that cannot
/// be received (malformed: INVALID_ARGUMENT, too large: RESOURCE_EXHAUSTED) ends the
/// stream with a status naming it, after the replies of the batches before it.
struct StreamJob {
    pipeline: Arc<Pipeline>,
    max_inflight: usize,
    shutdown: watch::Receiver<bool>,
    replies: mpsc::Sender<Result<IngestReply, Status>>,
}

impl StreamJob {
    async fn run(mut self, mut inbound: impl Stream<Item = Result<RawEvents, Status>> + Unpin) {
        let mut inflight = FuturesOrdered::new();
        let mut reading = true;
        let mut closing: Option<Status> = None;
        let mut received = 0u64;
        while reading || !inflight.is_empty() {
            tokio::select! {
                biased;
                Some(done) = inflight.next(), if !inflight.is_empty() => {
                    let done: Result<IngestReply, Status> = done;
                    let failed = done.is_err();
                    if self.replies.send(done).await.is_err() || failed {
                        return; // client gone, or a commit failed: the status ends the stream
                    }
                }
                _ = self.shutdown.changed(), if reading => {
                    reading = false;
                    closing = Some(Status::unavailable(
                        "the gateway is shutting down; batches without a reply were not taken, resend them",
                    ));
                }
                msg = inbound.next(), if reading && inflight.len() < self.max_inflight => match msg {
                    Some(Ok(batch)) => {
                        received += 1;
                        if let Err(e) = check_mode(batch.ack_mode) {
                            (reading, closing) = (false, Some(e));
                            continue;
                        }
                        let queued = self
                            .pipeline
                            .enqueue(batch.events, mode(batch.ack_mode), batch.sequence, WhenFull::Wait)
                            .await;
                        match queued {
                            Ok(p) => inflight.push_back(async move { p.wait().await.map_err(Status::from) }),
                            Err(e) => (reading, closing) = (false, Some(Status::from(e))),
                        }
                    }
                    Some(Err(status)) => {
                        // A message that does not decode or is over the size limit (or a
                        // broken connection): the batches before it still get their
                        // replies, then the stream ends with a status naming it. Ending
                        // with OK would tell the client everything sent was taken.
                        tracing::debug!(%status, "ingest stream: a message could not be received");
                        let what = format!("message {} of the stream", received + 1);
                        (reading, closing) = (false, Some(inbound_error(&status, &what)));
                    }
                    None => reading = false,
                },
            }
        }
        if let Some(status) = closing {
            let _ = self.replies.send(Err(status)).await;
        }
    }
}
