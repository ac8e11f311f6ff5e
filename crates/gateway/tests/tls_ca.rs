//! TLS with a certificate signed by a private CA: the in-process workers trust the CA
//! given in `server.tls_ca_path` and process ads; without it the cause of their failure
//! is named (not only "transport error").

mod common;

use adflow_client::{Client, ClientConfig, TlsOptions};
use adflow_domain::pb;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::time::Duration;

struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

/// A private CA and a "localhost" certificate it signed.
fn private_ca() -> Pki {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "adflow test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, &ca).unwrap();
    Pki { ca_pem: ca.pem(), cert_pem: leaf.pem(), key_pem: key.serialize_pem() }
}

/// A gateway config with TLS from `pki` (and its CA for the in-process workers when
/// `trust_ca`), storing under `dir`.
fn tls_config(dir: &std::path::Path, pki: &Pki, trust_ca: bool, workers: usize) -> adflow_gateway::Config {
    let path = |n: &str, body: &str| {
        let p = dir.join(n);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let mut cfg = common::config(dir);
    cfg.workers.in_process = workers;
    cfg.server.tls_cert_path = path("cert.pem", &pki.cert_pem);
    cfg.server.tls_key_path = path("key.pem", &pki.key_pem);
    if trust_ca {
        cfg.server.tls_ca_path = path("ca.pem", &pki.ca_pem);
    }
    cfg
}

/// A TLS client of the gateway at `port` that trusts `root_pem` for "localhost".
fn tls_client(port: u16, root_pem: &str) -> ClientConfig {
    let mut cc = ClientConfig::new(format!("https://localhost:{port}"));
    cc.tls =
        Some(TlsOptions { ca_pem: Some(root_pem.as_bytes().to_vec()), domain: Some("localhost".into()) });
    cc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_workers_trust_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = private_ca();
    let gw = common::TestGateway::start(tls_config(dir.path(), &pki, true, 1)).await;
    let cc = tls_client(gw.addr.port(), &pki.ca_pem);
    let mut client = None;
    for _ in 0..100 {
        if let Ok(c) = Client::connect(cc.clone()).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = client.expect("a client trusting the CA connects");
    let spec = pb::AdSpec {
        title: "Raid the keep tonight".into(),
        description: "Gather your guild and storm the castle walls.".into(),
        game_family: "RPG".into(),
        call_to_action: "Play now".into(),
        duration_seconds: 15,
        priority: 3,
        ..Default::default()
    };
    let id = client.submit_ad(spec).await.unwrap().id;
    let mut status = 0;
    for _ in 0..200 {
        status = client.get_ad(&id).await.unwrap().status;
        if status == pb::AdStatus::Completed as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, pb::AdStatus::Completed as i32, "the in-process worker connected through the CA");
    gw.stop().await;
}

#[tokio::test]
async fn a_certificate_problem_is_named_in_the_connection_error() {
    let dir = tempfile::tempdir().unwrap();
    let pki = private_ca();
    let gw = common::TestGateway::start(tls_config(dir.path(), &pki, false, 0)).await;
    // Trusting the leaf (what the workers did before tls_ca_path): the handshake fails.
    let cc = tls_client(gw.addr.port(), &pki.cert_pem);
    let mut last = String::new();
    for _ in 0..50 {
        match Client::connect(cc.clone()).await {
            Ok(c) => match c.get_ad("00000000-0000-7000-8000-000000000000").await {
                Err(s) => last = adflow_client::causes(&s),
                Ok(_) => panic!("a leaf certificate signed by a CA is not a trust anchor"),
            },
            Err(e) => last = e.to_string(),
        }
        if last.to_lowercase().contains("certificate") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(last.to_lowercase().contains("certificate"), "the cause is named: {last}");
    gw.stop().await;
}
