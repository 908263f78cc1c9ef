//! Connection caps: in total and per source address, so that one noisy or
//! hostile client (slowloris, connection floods) cannot starve the others.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

/// Tracks open client connections.
pub struct ConnLimiter {
    max_total: usize,
    max_per_source: u32,
    state: Mutex<(usize, HashMap<IpAddr, u32>)>,
    /// Told of every refusal (the metrics' rejection counter).
    on_full: Option<Box<dyn Fn(Full) + Send + Sync>>,
}

impl std::fmt::Debug for ConnLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnLimiter")
            .field("max_total", &self.max_total)
            .field("max_per_source", &self.max_per_source)
            .field("open", &self.open())
            .finish_non_exhaustive()
    }
}

/// One admitted connection; releases its slot when dropped.
#[derive(Debug)]
pub struct Slot {
    limiter: Arc<ConnLimiter>,
    ip: IpAddr,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `max_connections` reached.
    Total,
    /// `max_connections_per_source` reached for this address.
    PerSource,
}

impl ConnLimiter {
    /// A limiter with the given caps.
    pub fn new(max_total: u32, max_per_source: u32) -> Arc<ConnLimiter> {
        Arc::new(ConnLimiter {
            max_total: max_total as usize,
            max_per_source,
            state: Mutex::new((0, HashMap::new())),
            on_full: None,
        })
    }

    /// A limiter that calls `on_full` with the cap each refused connection
    /// hit (to count rejections).
    pub fn with_hook(
        max_total: u32,
        max_per_source: u32,
        on_full: impl Fn(Full) + Send + Sync + 'static,
    ) -> Arc<ConnLimiter> {
        Arc::new(ConnLimiter {
            max_total: max_total as usize,
            max_per_source,
            state: Mutex::new((0, HashMap::new())),
            on_full: Some(Box::new(on_full)),
        })
    }

    /// Admits a connection from `ip`, or says which cap it hit.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Full> {
        let admitted = self.try_admit(ip);
        if let (Err(full), Some(hook)) = (&admitted, &self.on_full) {
            hook(*full);
        }
        admitted
    }

    fn try_admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Full> {
        let Ok(mut st) = self.state.lock() else {
            return Err(Full::Total);
        };
        if st.0 >= self.max_total {
            return Err(Full::Total);
        }
        let n = st.1.entry(ip).or_insert(0);
        if *n >= self.max_per_source {
            return Err(Full::PerSource);
        }
        *n += 1;
        st.0 += 1;
        Ok(Slot {
            limiter: self.clone(),
            ip,
        })
    }

    /// Open connections in total.
    pub fn open(&self) -> usize {
        self.state.lock().map_or(0, |s| s.0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut st) = self.limiter.state.lock() {
            st.0 = st.0.saturating_sub(1);
            if let Some(n) = st.1.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    st.1.remove(&self.ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_total_and_per_source() {
        let l = ConnLimiter::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = l.admit(a).unwrap();
        let _s2 = l.admit(a).unwrap();
        assert_eq!(l.admit(a).unwrap_err(), Full::PerSource);
        let _s3 = l.admit(b).unwrap();
        assert_eq!(l.admit(b).unwrap_err(), Full::Total);
        drop(s1);
        let _again = l.admit(a).unwrap();
        assert_eq!(l.open(), 3);
    }
}
