//! Compares Sluice's relay with `tokio::io::copy_bidirectional` on loopback:
//! bulk throughput (1 GiB through each) and the memory held by idle tunnels.
//! Idle cost is measured first, in a fresh process per kind, so that freed
//! bulk buffers do not hide it.
//!
//!     cargo run --release -p sluice-net --example relay_compare
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Resident set size of this process, KiB.
fn rss_kib() -> isize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

async fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
    let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (b, _) = l.accept().await.unwrap();
    (a, b)
}

#[derive(Clone, Copy)]
enum Kind {
    Sluice,
    SluiceNoSplice,
    CopyBidirectional,
}

fn spawn_relay(kind: Kind, a: TcpStream, b: TcpStream) {
    tokio::spawn(async move {
        match kind {
            Kind::Sluice | Kind::SluiceNoSplice => {
                sluice_net::relay::relay(
                    a,
                    b,
                    sluice_net::relay::Preread::default(),
                    None,
                    sluice_net::relay::Timeouts {
                        idle: Duration::from_secs(600),
                        hello: Duration::from_secs(10),
                    },
                    std::future::pending(),
                )
                .await;
            }
            Kind::CopyBidirectional => {
                let (mut a, mut b) = (a, b);
                let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
            }
        }
    });
}

async fn bulk(kind: Kind, l: &TcpListener) -> f64 {
    const TOTAL: usize = 1 << 30;
    let (mut client, proxy_in) = pair(l).await;
    let (proxy_out, mut origin) = pair(l).await;
    spawn_relay(kind, proxy_in, proxy_out);
    let t = Instant::now();
    let writer = tokio::spawn(async move {
        let chunk = vec![0u8; 256 * 1024];
        let mut sent = 0;
        while sent < TOTAL {
            origin.write_all(&chunk).await.unwrap();
            sent += chunk.len();
        }
        origin.shutdown().await.unwrap();
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    loop {
        let n = client.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    writer.await.unwrap();
    assert_eq!(got, TOTAL);
    (TOTAL as f64 / (1 << 20) as f64) / t.elapsed().as_secs_f64()
}

async fn idle(kind: Kind, l: &TcpListener, n: usize) -> f64 {
    let mut keep = Vec::new();
    let before = rss_kib();
    for _ in 0..n {
        let (mut client, proxy_in) = pair(l).await;
        let (proxy_out, mut origin) = pair(l).await;
        spawn_relay(kind, proxy_in, proxy_out);
        client.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        origin.read_exact(&mut b).await.unwrap();
        origin.write_all(b"pong").await.unwrap();
        client.read_exact(&mut b).await.unwrap();
        keep.push((client, origin));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = rss_kib();
    drop(keep);
    tokio::time::sleep(Duration::from_millis(200)).await;
    (after - before) as f64 / n as f64
}

#[tokio::main]
async fn main() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let kinds = [
        ("sluice relay (splice)", Kind::Sluice),
        ("sluice relay (copy)", Kind::SluiceNoSplice),
        ("copy_bidirectional", Kind::CopyBidirectional),
    ];
    // Child mode: measure idle cost of one kind in a fresh process.
    if let Some(which) = std::env::args().nth(1) {
        let kind = match which.as_str() {
            "sluice" => Kind::Sluice,
            "nosplice" => Kind::SluiceNoSplice,
            _ => Kind::CopyBidirectional,
        };
        sluice_net::splice::set_enabled(!matches!(kind, Kind::SluiceNoSplice));
        println!("{:.1}", idle(kind, &l, 2000).await);
        return;
    }
    // Direct: the same transfer without a relay in between.
    let direct = {
        let (mut client, mut origin) = pair(&l).await;
        let t = Instant::now();
        let w = tokio::spawn(async move {
            let chunk = vec![0u8; 256 * 1024];
            for _ in 0..4096 {
                origin.write_all(&chunk).await.unwrap();
            }
        });
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0usize;
        while got < 1 << 30 {
            got += client.read(&mut buf).await.unwrap();
        }
        w.await.unwrap();
        1024.0 / t.elapsed().as_secs_f64()
    };
    println!("direct                 : {direct:8.0} MiB/s");
    for (name, kind) in kinds {
        sluice_net::splice::set_enabled(!matches!(kind, Kind::SluiceNoSplice));
        let mibs = bulk(kind, &l).await;
        let arg = match kind {
            Kind::Sluice => "sluice",
            Kind::SluiceNoSplice => "nosplice",
            Kind::CopyBidirectional => "copy",
        };
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .arg(arg)
            .output()
            .unwrap();
        let kib = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        println!(
            "{name:23}: {mibs:8.0} MiB/s ({:.2} of direct), RSS per idle tunnel {kib} KiB (both socket pairs in one process)",
            mibs / direct
        );
    }
}
