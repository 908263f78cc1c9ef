//! The listeners `listen:` names: bound once at start (a change needs a
//! restart), announced on stderr, then served on the gateway.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use sluice_dns::GrantStore;
use sluice_net::Gateway;
use sluice_observe::RecordSink;
use sluice_policy::Config;
use tokio::{net::TcpListener, task::JoinHandle};

use crate::{admin::Status, dns};

/// Every configured listener, bound.
pub struct Listeners {
    http: Option<TcpListener>,
    admin: Option<TcpListener>,
    transparent: Option<TcpListener>,
    socks5: Option<TcpListener>,
    dns: Option<dns::Bound>,
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
        if let Some(d) = self.dns {
            tasks.extend(d.serve(gw.clone(), recorder, config, grants)?);
        }
        Ok(tasks)
    }
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
