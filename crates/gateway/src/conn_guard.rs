//! Admission of TCP connections for the gRPC server: a bound on open connections and a
//! handshake deadline, so silent or half-open peers cannot hold resources forever.
//!
//! The accept loop hands a connection to tonic only once the peer has sent its first
//! bytes (the 24-byte HTTP/2 preface, or as much of a TLS ClientHello) within
//! `server.handshake_timeout_ms`; a peer that connects and says nothing is closed then.
//! At most `server.max_connections` connections are open at once (each holds a permit for
//! its whole life); beyond that a new connection is closed at once, so the limit bounds
//! file descriptors and per-connection HTTP/2 buffers. Live but idle connections are
//! checked by HTTP/2 keepalive pings (set on the server builder); dead ones are dropped.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Bytes a peer must send before its connection is served (the HTTP/2 client preface).
const PREFACE: usize = 24;

/// Limits applied to incoming connections.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// How long a new connection may take to send its first bytes.
    pub handshake_timeout: Duration,
}

/// A connection admitted by the guard; its permit is released when it closes.
pub struct Guarded {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo { local_addr: self.io.local_addr().ok(), remote_addr: self.io.peer_addr().ok() }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Waits until the peer has sent `PREFACE` bytes (without consuming them).
async fn first_bytes(s: &TcpStream) -> io::Result<()> {
    let mut buf = [0u8; PREFACE];
    loop {
        s.readable().await?;
        match s.peek(&mut buf).await? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n if n >= PREFACE => return Ok(()),
            // Part of it arrived: wait a little for the rest instead of spinning.
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// The stream of admitted connections from `listener`, for `serve_with_incoming`.
pub fn incoming(listener: TcpListener, limits: Limits) -> ReceiverStream<io::Result<Guarded>> {
    let (tx, rx) = mpsc::channel(256);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::spawn(async move {
        let mut refused_logged = 0u64;
        loop {
            let (stream, peer) = tokio::select! {
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                metrics::counter!("connections_refused_total", "reason" => "limit").increment(1);
                refused_logged += 1;
                if refused_logged.is_power_of_two() {
                    tracing::warn!(
                        %peer,
                        max_connections = limits.max_connections,
                        refused = refused_logged,
                        "connection limit reached (server.max_connections); closing new connections"
                    );
                }
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(limits.handshake_timeout, first_bytes(&stream)).await {
                    Ok(Ok(())) => {
                        metrics::gauge!("connections_open").increment(1.0);
                        let _ = tx.send(Ok(Guarded { io: stream, _permit: permit })).await;
                    }
                    Ok(Err(_)) => {} // closed before saying anything
                    Err(_) => {
                        metrics::counter!("connections_refused_total", "reason" => "handshake_timeout")
                            .increment(1);
                        tracing::debug!(%peer, "connection sent nothing within the handshake timeout; closed");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

impl Drop for Guarded {
    fn drop(&mut self) {
        metrics::gauge!("connections_open").decrement(1.0);
    }
}
