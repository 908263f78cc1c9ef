//! The `Router` seam: how a dial leaves. Today every flow leaves
//! [`Direct`]ly from this host; source-pinned egress, parent proxies and
//! failover between them plug in here, and the chosen route's name is the
//! record's `route` (null when nothing was dialed).

use std::sync::Arc;

use crate::flow::Flow;

/// How a dial leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// A connection from this host to the destination's address.
    Direct,
}

/// A route chosen for one flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The name recorded in the flow's `route`.
    pub name: Arc<str>,
    /// How it leaves.
    pub via: Via,
}

/// Chooses the route of each dial. Called once per dial, after the policy
/// allowed the flow and before anything is connected; must not block.
pub trait Router: Send + Sync {
    /// The route for `flow`.
    fn route(&self, flow: &Flow) -> Route;
}

/// Every flow leaves directly (the default without `routes`).
#[derive(Debug, Clone)]
pub struct Direct {
    route: Route,
}

impl Default for Direct {
    fn default() -> Direct {
        Direct {
            route: Route {
                name: Arc::from("direct"),
                via: Via::Direct,
            },
        }
    }
}

impl Router for Direct {
    fn route(&self, _: &Flow) -> Route {
        self.route.clone()
    }
}
