//! Connection admission: a peer that never sends the HTTP/2 preface is closed after the
//! handshake timeout, and beyond `server.max_connections` new connections are closed
//! while the admitted ones keep working.

mod common;

use common::*;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Reads until the server closes the connection; true when it did within `limit`
/// (a safety bound for a hung test, not a performance assertion).
async fn closed_by_server(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 256];
    let read = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read).await.is_ok()
}

#[tokio::test]
async fn a_connection_that_never_sends_the_preface_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.server.handshake_timeout_ms = 300;
    let gw = TestGateway::start(cfg).await;
    let _ = gw.channel().await; // the gateway is up
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    assert!(closed_by_server(&mut silent, Duration::from_secs(20)).await, "a silent peer is dropped");
    // Half a preface and then silence: dropped too.
    let mut half = TcpStream::connect(gw.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut half, b"PRI * HTTP/2.0").await.unwrap();
    assert!(closed_by_server(&mut half, Duration::from_secs(20)).await, "a partial preface is dropped");
    // A real client is served.
    let r = gw
        .ingest()
        .await
        .send_events(batch(vec![event("c-1", "ad-1", adflow_domain::pb::EventType::Click)]))
        .await;
    assert_eq!(r.unwrap().into_inner().accepted, 1);
    gw.stop().await;
}

#[tokio::test]
async fn beyond_max_connections_new_connections_are_closed_and_admitted_ones_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.server.max_connections = 3;
    cfg.workers.in_process = 0;
    let gw = TestGateway::start(cfg).await;
    let mut c = gw.ingest().await; // connection 1
    let mut idle = Vec::new();
    for _ in 0..2 {
        // Connections 2 and 3: silent, holding their slots until the handshake timeout.
        idle.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(gw.addr).await.unwrap();
    assert!(closed_by_server(&mut extra, Duration::from_secs(5)).await, "the fourth connection is closed");
    let r = c.send_events(batch(vec![event("m-1", "ad-1", adflow_domain::pb::EventType::Click)])).await;
    assert_eq!(r.unwrap().into_inner().accepted, 1, "the admitted connection still works");
    drop(idle);
    // Slots come back once the silent connections are gone.
    let mut ok = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(ch) =
            tonic::transport::Channel::from_shared(format!("http://{}", gw.addr)).unwrap().connect().await
        {
            let mut c2 = adflow_domain::pb::event_ingest_client::EventIngestClient::new(ch);
            if c2
                .send_events(batch(vec![event("m-2", "ad-1", adflow_domain::pb::EventType::Click)]))
                .await
                .is_ok()
            {
                ok = true;
                break;
            }
        }
    }
    assert!(ok, "a new client is admitted once slots are free");
    gw.stop().await;
}
