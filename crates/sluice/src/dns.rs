//! Wiring of the DNS listener (`listen.dns`): bind UDP and TCP on one
//! address, pick the upstreams, start the forwarder's loops.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use anyhow::{Context, Result, bail};
use sluice_dns::{Forwarder, GrantStore, Shared};
use sluice_net::Gateway;
use sluice_observe::RecordSink;
use sluice_policy::Config;
use tokio::{
    net::{TcpListener, UdpSocket},
    task::JoinHandle,
};

/// UDP and TCP bound on the same address (port 0: the kernel picks one
/// that is free for both).
pub struct Bound {
    udp: UdpSocket,
    tcp: TcpListener,
}

impl Bound {
    /// Binds `addr` for UDP and TCP.
    pub async fn bind(addr: SocketAddr) -> Result<Bound> {
        for _ in 0..20 {
            let udp = UdpSocket::bind(addr)
                .await
                .with_context(|| format!("cannot bind the DNS listener (UDP) on {addr}"))?;
            let at = udp.local_addr()?;
            match sluice_serve::bind(at).await {
                Ok(tcp) => return Ok(Bound { udp, tcp }),
                Err(_) if addr.port() == 0 => continue,
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot bind the DNS listener (TCP) on {addr}"));
                }
            }
        }
        bail!("cannot bind the DNS listener on {addr}: no port free for both UDP and TCP")
    }

    /// The address bound.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.udp.local_addr()?)
    }

    /// Starts the forwarder on both sockets: it asks the gateway's policy
    /// in force and records through `recorder`, and stops with the
    /// gateway's drain.
    pub fn serve(
        self,
        gw: Arc<Gateway>,
        recorder: Arc<dyn RecordSink>,
        config: &Config,
        grants: Arc<GrantStore>,
    ) -> Result<Vec<JoinHandle<()>>> {
        let own = self.local_addr()?;
        let upstreams = upstreams(config, own);
        if upstreams.is_empty() {
            bail!("listen.dns: no upstream resolver; set dns.upstreams");
        }
        tracing::info!(upstreams = ?upstreams, "DNS forwarder upstreams");
        let drain = gw.drain().clone();
        let shared = Shared {
            metrics: gw.metrics().clone(),
            policy: Arc::new(move || gw.version().policy.clone()),
            recorder,
        };
        let fwd = Arc::new(Forwarder::new(shared, &config.dns, upstreams, grants));
        Ok(vec![
            tokio::spawn(sluice_dns::serve_udp(self.udp, fwd.clone(), drain.clone())),
            tokio::spawn(sluice_dns::serve_tcp(self.tcp, fwd, drain)),
        ])
    }
}

/// `dns.upstreams`, or the name servers of `/etc/resolv.conf`; never the
/// forwarder's own address.
fn upstreams(config: &Config, own: SocketAddr) -> Vec<SocketAddr> {
    let mut list = config.dns.upstreams.clone();
    if list.is_empty() {
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        list = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .filter_map(|v| v.trim().split('%').next()?.parse::<IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, 53))
            .collect();
    }
    list.retain(|a| {
        *a != own && !(own.ip().is_unspecified() && a.port() == own.port() && a.ip().is_loopback())
    });
    list
}

/// The DNS forwarder's grant store as the transparent listener asks it.
pub struct DnsGrants(pub Arc<GrantStore>);

impl sluice_net::Grants for DnsGrants {
    fn lookup(&self, zone: &str, ip: IpAddr) -> Option<String> {
        self.0.lookup(zone, ip)
    }
}
