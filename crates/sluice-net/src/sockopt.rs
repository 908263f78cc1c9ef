//! The two socket options the transparent listener needs, behind safe
//! wrappers: the pre-redirect destination of an accepted connection
//! (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`, answered by conntrack) and
//! the `SO_MARK` that Sluice puts on its own outbound sockets so that a
//! redirect ruleset can exempt them (loop protection). `nix` wraps both
//! without `unsafe` here; on other systems they report `Unsupported`.

use std::{io, net::SocketAddr, os::fd::AsFd};

use tokio::net::TcpStream;

/// The destination a redirected connection was sent to before the
/// nftables `redirect` (iptables `REDIRECT`) rewrote it. A connection that
/// was not redirected answers its own local address (conntrack has no NAT
/// for it) or `ENOENT`.
#[cfg(target_os = "linux")]
pub fn original_dst(s: &TcpStream) -> io::Result<SocketAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use nix::sys::socket::{getsockopt, sockopt};

    let local = s.local_addr()?;
    // A dual-stack listener sees IPv4 clients as IPv4-mapped; conntrack keeps
    // them as IPv4, asked with the IPv4 option.
    let v4 = match local.ip() {
        IpAddr::V4(_) => true,
        IpAddr::V6(a) => a.to_ipv4_mapped().is_some(),
    };
    if v4 {
        let sa = getsockopt(s, sockopt::OriginalDst).map_err(io::Error::from)?;
        let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
        Ok(SocketAddr::new(IpAddr::V4(ip), u16::from_be(sa.sin_port)))
    } else {
        let sa = getsockopt(s, sockopt::Ip6tOriginalDst).map_err(io::Error::from)?;
        let ip = Ipv6Addr::from(sa.sin6_addr.s6_addr);
        Ok(SocketAddr::new(IpAddr::V6(ip), u16::from_be(sa.sin6_port)))
    }
}

/// Not available off Linux.
#[cfg(not(target_os = "linux"))]
pub fn original_dst(_s: &TcpStream) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "SO_ORIGINAL_DST needs Linux",
    ))
}

/// Sets `SO_MARK` on a socket before it connects (needs `CAP_NET_ADMIN`).
#[cfg(target_os = "linux")]
pub fn set_mark(s: &impl AsFd, mark: u32) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(s, sockopt::Mark, &mark).map_err(io::Error::from)
}

/// Not available off Linux.
#[cfg(not(target_os = "linux"))]
pub fn set_mark(_s: &impl AsFd, _mark: u32) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "SO_MARK needs Linux",
    ))
}

/// Binds a socket to a network interface (`SO_BINDTODEVICE`, needs
/// `CAP_NET_RAW`): its packets leave by that interface whatever the
/// routing table says.
#[cfg(target_os = "linux")]
pub fn bind_device(s: &impl AsFd, name: &str) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(s, sockopt::BindToDevice, &std::ffi::OsString::from(name)).map_err(io::Error::from)
}

/// Not available off Linux.
#[cfg(not(target_os = "linux"))]
pub fn bind_device(_s: &impl AsFd, _name: &str) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "SO_BINDTODEVICE needs Linux",
    ))
}

/// Asks the kernel to pick a bound socket's port at connect time
/// (`IP_BIND_ADDRESS_NO_PORT`), so that connections from one source
/// address to different destinations may share ports. Best effort.
#[cfg(target_os = "linux")]
pub fn bind_address_no_port(s: &impl AsFd) {
    use nix::sys::socket::{setsockopt, sockopt};
    let _ = setsockopt(s, sockopt::IpBindAddressNoPort, &true);
}

/// Not available off Linux.
#[cfg(not(target_os = "linux"))]
pub fn bind_address_no_port(_s: &impl AsFd) {}

/// Sets `TCP_NODELAY` on a listening socket, which Linux copies into every
/// socket it accepts: one `setsockopt` per listener instead of one per
/// connection. `false` where that is not so (the caller sets it on each
/// accepted socket then).
#[cfg(target_os = "linux")]
pub(crate) fn listener_nodelay(l: &tokio::net::TcpListener) -> bool {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(l, sockopt::TcpNoDelay, &true).is_ok()
}

/// Not inherited elsewhere (or not known to be).
#[cfg(not(target_os = "linux"))]
pub(crate) fn listener_nodelay(_: &tokio::net::TcpListener) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn not_redirected_is_not_an_original_destination() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        // Without conntrack NAT the answer is an error or the local address.
        if let Ok(a) = original_dst(&s) {
            assert_eq!(a, addr);
        }
    }

    #[tokio::test]
    async fn accepted_sockets_inherit_the_listeners_nodelay() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let inherited = listener_nodelay(&l);
        let _c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        if inherited {
            assert!(s.nodelay().unwrap(), "TCP_NODELAY not inherited");
        }
    }
}
