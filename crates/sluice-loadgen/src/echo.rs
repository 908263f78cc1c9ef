//! `echo`: the TCP echo origin of the tunnel and idle-tunnel measures. One
//! listener per port (bench/proxy.sh gives each column its own, so that no
//! two columns share TIME_WAIT 4-tuples), every connection echoes what it
//! reads until the peer closes. Accepted sockets get TCP_NODELAY, as the
//! asyncio origin's did.

use std::{io, net::ToSocketAddrs, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    task::JoinSet,
};

/// Listen backlog: 32 clients reconnecting as fast as they can.
const BACKLOG: u32 = 4096;

/// Binds every port on `host`, prints "ready", serves until killed.
pub async fn run(host: &str, ports: &[u16]) -> io::Result<()> {
    let mut servers = JoinSet::new();
    for &port in ports {
        let addr = (host, port).to_socket_addrs()?.next().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no address for {host}"))
        })?;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket
            .bind(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
        servers.spawn(serve(socket.listen(BACKLOG)?));
    }
    println!("ready");
    while servers.join_next().await.is_some() {}
    Ok(())
}

/// The accept loop of one port; the caller binds.
pub async fn serve(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(echo(stream));
            }
            // Out of descriptors or a connection reset before accept: back
            // off briefly instead of spinning; the client counts the error.
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn echo(mut stream: TcpStream) {
    // Errors end the connection, as a reset would; nothing to report.
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn echoes_until_the_peer_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener));
        let mut s = TcpStream::connect(addr).await.unwrap();
        for msg in [&b"ping"[..], b"x", &[7u8; 10_000]] {
            s.write_all(msg).await.unwrap();
            let mut got = vec![0u8; msg.len()];
            s.read_exact(&mut got).await.unwrap();
            assert_eq!(got, msg);
        }
        s.shutdown().await.unwrap();
        assert_eq!(
            s.read(&mut [0u8; 1]).await.unwrap(),
            0,
            "closes after our FIN"
        );
    }
}
