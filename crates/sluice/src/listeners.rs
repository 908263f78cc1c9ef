//! The listeners `listen:` names: bound once at start (a change needs a
//! restart), announced on stderr, then served on the gateway.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use sluice_dns::GrantStore;
use sluice_net::Gateway;
use sluice_observe::RecordSink;
use sluice_policy::Config;
use tokio::{
    net::{TcpListener, UdpSocket},
    task::JoinHandle,
};

use crate::{admin::Status, dns};

/// Every configured listener, bound.
pub struct Listeners {
    http: Option<TcpListener>,
    admin: Option<TcpListener>,
    transparent: Option<TcpListener>,
    socks5: Option<TcpListener>,
    dns: Option<dns::Bound>,
    netflow: Option<UdpSocket>,
}

impl Listeners {
    /// Binds every listener the configuration names (`validate::runnable`
    /// has made sure that one of the data-path listeners is named).
    pub async fn bind(config: &Config) -> Result<Listeners> {
        let l = &config.listen;
        Ok(Listeners {
            http: tcp(l.http, "the HTTP proxy").await?,
            admin: tcp(l.admin, "admin").await?,
            transparent: tcp(l.transparent, "the transparent listener").await?,
            socks5: tcp(l.socks5, "the SOCKS5 proxy").await?,
            dns: match l.dns {
                Some(a) => Some(dns::Bound::bind(a).await?),
                None => None,
            },
            netflow: match l.netflow {
                Some(a) => Some(netflow_socket(a).await?),
                None => None,
            },
        })
    }

    /// Whether a DNS listener is bound (it provides grants).
    pub fn has_dns(&self) -> bool {
        self.dns.is_some()
    }

    /// The proxy listeners that run (the DNS listener counts apart).
    pub fn proxies(&self) -> Vec<sluice_observe::Listener> {
        use sluice_observe::Listener;
        [
            (self.http.is_some(), Listener::Http),
            (self.socks5.is_some(), Listener::Socks5),
            (self.transparent.is_some(), Listener::Transparent),
        ]
        .into_iter()
        .filter_map(|(on, l)| on.then_some(l))
        .collect()
    }

    /// The addresses bound, with what each is, in announcement order.
    fn bound(&self) -> Result<Vec<(&'static str, SocketAddr)>> {
        let mut out = Vec::new();
        for (what, l) in [
            ("http", &self.http),
            ("admin", &self.admin),
            ("transparent", &self.transparent),
            ("socks5", &self.socks5),
        ] {
            if let Some(l) = l {
                out.push((what, l.local_addr()?));
            }
        }
        if let Some(d) = &self.dns {
            out.push(("dns", d.local_addr()?));
        }
        if let Some(n) = &self.netflow {
            out.push(("netflow", n.local_addr()?));
        }
        Ok(out)
    }

    /// Sluice's own addresses (never dialed: `guard/self`).
    pub fn own_addrs(&self) -> Result<Vec<SocketAddr>> {
        Ok(self.bound()?.into_iter().map(|(_, a)| a).collect())
    }

    /// The "listening" lines on stderr that supervisors and tests wait for.
    pub fn announce(&self) -> Result<()> {
        for (what, a) in self.bound()? {
            match what {
                "http" => crate::log::line(&format!("HTTP proxy listening on {a}")),
                "admin" => crate::log::line(&format!(
                    "admin listening on http://{a}/ (dashboard, /api/v1/, /metrics, /healthz, /readyz)"
                )),
                "transparent" => crate::log::line(&format!("transparent listener on {a}")),
                "socks5" => crate::log::line(&format!("SOCKS5 proxy listening on {a}")),
                "netflow" => crate::log::line(&format!("NetFlow collector listening on {a}")),
                _ => crate::log::line(&format!("DNS listening on {a}")),
            }
        }
        Ok(())
    }

    /// Serves every listener; returns the data-path tasks, which end when
    /// the gateway's drain begins (the admin server keeps serving).
    pub fn serve(
        self,
        gw: &Arc<Gateway>,
        recorder: Arc<dyn RecordSink>,
        status: Arc<Status>,
        config: &Config,
        grants: Arc<GrantStore>,
    ) -> Result<Vec<JoinHandle<()>>> {
        let mut tasks = Vec::new();
        let has_dns = self.dns.is_some();
        if let Some(l) = self.http {
            tasks.push(tokio::spawn(sluice_net::http::serve(l, gw.clone())));
        }
        if let Some(l) = self.socks5 {
            tasks.push(tokio::spawn(sluice_net::socks5::serve(l, gw.clone())));
        }
        if let Some(l) = self.transparent {
            tasks.push(tokio::spawn(sluice_net::transparent::serve(l, gw.clone())));
        }
        if let Some(l) = self.admin {
            crate::admin::spawn(l, gw.clone(), status)?;
        }
        if let Some(socket) = self.netflow {
            tasks.push(netflow(
                socket,
                gw,
                recorder.clone(),
                config,
                &grants,
                has_dns,
            ));
        }
        if let Some(d) = self.dns {
            tasks.extend(d.serve(gw.clone(), recorder, config, grants)?);
        }
        Ok(tasks)
    }
}

/// The receive buffer asked for the NetFlow socket (the kernel caps it at
/// `net.core.rmem_max`): exporters send their datagrams in bursts, and the
/// default (208 KiB) lost 21 of 922 paced datagrams to a debug build in
/// `tests/netflow.rs`'s malformed scenario.
const NETFLOW_RCVBUF: usize = 4 << 20;

async fn netflow_socket(a: SocketAddr) -> Result<UdpSocket> {
    let socket = UdpSocket::bind(a)
        .await
        .with_context(|| format!("cannot bind the NetFlow collector on {a}"))?;
    if let Err(e) = rustix::net::sockopt::set_socket_recv_buffer_size(&socket, NETFLOW_RCVBUF) {
        tracing::warn!(error = %e, "cannot enlarge the NetFlow socket's receive buffer");
    }
    Ok(socket)
}

/// The NetFlow collector on `socket`: it judges by the gateway's policy in
/// force, names destinations by the DNS listener's grants (when it runs),
/// records through `recorder` and stops with the gateway's drain.
fn netflow(
    socket: UdpSocket,
    gw: &Arc<Gateway>,
    recorder: Arc<dyn RecordSink>,
    config: &Config,
    grants: &Arc<GrantStore>,
    has_dns: bool,
) -> JoinHandle<()> {
    let n = &config.netflow;
    let limits = sluice_netflow::Limits {
        max_templates: n.max_templates as usize,
        template_timeout: n.template_timeout,
        pending_sets: n.pending_sets as usize,
    };
    let policy_gw = gw.clone();
    let mut collector = sluice_netflow::Collector::new(
        limits,
        Arc::new(move || policy_gw.version().policy.clone()),
        recorder,
        gw.metrics().clone(),
    );
    if has_dns {
        let grants = grants.clone();
        collector = collector.with_names(Arc::new(move |zone, ip| grants.lookup(zone, ip)));
    }
    tokio::spawn(Arc::new(collector).serve(socket, gw.drain().clone()))
}

async fn tcp(addr: Option<SocketAddr>, what: &str) -> Result<Option<TcpListener>> {
    match addr {
        Some(a) => Ok(Some(
            sluice_serve::bind(a)
                .await
                .with_context(|| format!("cannot bind {what} on {a}"))?,
        )),
        None => Ok(None),
    }
}
