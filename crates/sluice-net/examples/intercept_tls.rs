//! Intercepted TLS handshakes a second, with the leaf-certificate cache
//! (the default) and with a forced miss (a new leaf signed for every
//! handshake): a rustls client trusting a fresh CA against the
//! interceptor's server side over an in-memory pipe, one thread, so the
//! figure is the CPU cost of Sluice's half plus the client's.
//!
//!   cargo run --release -p sluice-net --example intercept_tls [SECONDS]
//!
//! `bench/inspect-tls.sh` runs it; README "TLS interception" has results.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::{ClientConfig, RootCertStore, ServerConfig, pki_types::ServerName};
use sluice_net::intercept::{Interceptor, new_ca, pem_certs};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let (cert, key) = new_ca("bench CA").unwrap();
    let ic = Interceptor::new(cert.as_bytes(), key.as_bytes(), Vec::new()).unwrap();
    let mut roots = RootCertStore::empty();
    for c in pem_certs(cert.as_bytes()).unwrap() {
        roots.add(c).unwrap();
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    // No resumption: every handshake is a full one, as for new clients.
    client.resumption = rustls::client::Resumption::disabled();
    let client = Arc::new(client);
    for (label, miss) in [("cached", false), ("forced miss", true)] {
        let n = run(&ic, &client, miss, Duration::from_secs(secs)).await;
        println!(
            "{label:>12}: {:.0} handshakes/s ({n} in {secs} s)",
            n as f64 / secs as f64
        );
    }
}

async fn run(ic: &Interceptor, client: &Arc<ClientConfig>, miss: bool, d: Duration) -> u64 {
    let hosts: Vec<String> = (0..100).map(|i| format!("h{i}.bench.test")).collect();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < d {
        let host = &hosts[(n % 100) as usize];
        let server: Arc<ServerConfig> = if miss {
            ic.mint(host).unwrap()
        } else {
            ic.server_config(host).unwrap()
        };
        let (a, b) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from(host.clone()).unwrap();
        let connector = tokio_rustls::TlsConnector::from(client.clone());
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let (c, s) = tokio::join!(connector.connect(name, a), acceptor.accept(b));
        c.unwrap();
        s.unwrap();
        n += 1;
    }
    n
}
