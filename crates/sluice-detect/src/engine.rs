//! The engine: per-zone and per-source state, and the six detectors that
//! read and update it, one record at a time in record time.
//!
//! What each detector looks for (README "Detection" says the same for
//! operators):
//!
//! - `volume`: bytes out per source per `detect.volume.window`, against
//!   that source's own peak for the same hour of week (from two weeks of
//!   history; before that the same hour of day, weekday or weekend), or
//!   its zone's when the source is new. Bytes to a destination are counted
//!   only beyond twice the most this source ever sent it in one window
//!   (200 times, once that peak reached a twentieth of the floor at least
//!   12 hours earlier: an established upload destination, vouched for by
//!   an earlier transfer, never by the one being judged), so a nightly backup to its usual
//!   bucket or a push to a developer's git host stays quiet. Below
//!   `detect.volume.floor` nothing is raised; `bytes_in` never counts.
//! - `new-destination`: a registrable domain or bare address the zone never
//!   used, once it is significant (`min_bytes` out or `min_flows` flows
//!   within a day of its first flow).
//! - `geo`: a destination country outside the zone's `countries`, once
//!   `detect.geo.min_bytes` went there (warning); a country new for the source but allowed, or any new
//!   country in a zone without a list, is `info`.
//! - `beaconing`: `min_repeats` intervals in a row between connection
//!   starts of one source to one destination whose standard deviation is
//!   at most `max_jitter` of their mean, with small mean payloads; not for
//!   destinations the zone used that way while learning.
//! - `dns-tunnel`: [`crate::tunnel`], on DNS records.
//! - `denied-burst`: `min_distinct` distinct denied destinations from one
//!   source within `window`.
//!
//! Nothing but `geo`, `dns-tunnel` and `denied-burst` is judged while a
//! zone is learning (`detect.learn` from its first record).

// hashbrown's maps (foldhash, seeded per process) rather than std's
// (SipHash): the engine looks a source, its pair and its zone's
// destination up for every record, and SipHash with std's entry API was
// the largest single share of NetFlow ingest (perf, bench/netflow.sh:
// `rustc_entry` 9.5 % of the collector's CPU).
use hashbrown::{HashMap, HashSet};
use std::{collections::VecDeque, net::IpAddr, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::json;
use sluice_observe::{Alert, AlertKind, Listener, Severity, ip_string};
use sluice_policy::model::VolumeDetect;

use crate::{
    geo::GeoDb,
    obs::{Obs, time_of},
    settings::{Settings, ZoneSettings},
    tunnel::{TunnelDetector, fnv, round3},
};

/// Destinations kept per source (least recently seen evicted).
const MAX_PAIRS: usize = 1024;
/// Destinations a zone remembers having used.
const MAX_ZONE_DSTS: usize = 200_000;
/// Destinations summed separately in one volume window.
const MAX_WINDOW_DSTS: usize = 64;
/// Denials kept per source for the burst window.
const MAX_DENIALS: usize = 1024;
/// Intervals kept per destination for beaconing.
const MAX_INTERVALS: usize = 64;
/// Countries remembered per source.
const MAX_COUNTRIES: usize = 64;
/// A new destination stays watched for significance this long.
const NEW_DST_WATCH_MS: i64 = 24 * 3_600_000;
/// A source younger than this is judged against its zone's volume baseline.
const YOUNG_MS: i64 = 24 * 3_600_000;
/// From this much history a source's hour-of-week baseline is used.
const WEEKLY_MS: i64 = 14 * 24 * 3_600_000;
/// Beacons slower than this are not looked for; faster ones are
/// connection reuse, not calling home.
const BEACON_MIN_MS: f64 = 10_000.0;
const BEACON_MAX_MS: f64 = 6.0 * 3_600_000.0;
/// A destination this source once sent a twentieth of the volume floor
/// in one window (5 MB by default) is an established upload destination…
const ESTABLISHED_SHARE: u64 = 20;
/// …and only bytes past this many times that peak are unusual there…
const ESTABLISHED_FACTOR: u64 = 200;
/// …once that peak is this old: trust comes from an earlier transfer, not
/// from the first minutes of the one being judged (an exfiltration's own
/// first window would otherwise vouch for the rest of it).
const ESTABLISHED_AGE_MS: i64 = 12 * 3_600_000;
/// Geo lookups cached (cleared when full).
const GEO_CACHE: usize = 65_536;

/// How long repeats only raise an alert's count, per kind.
fn window_of(kind: AlertKind) -> Duration {
    let h = |n: u64| Duration::from_secs(n * 3600);
    match kind {
        AlertKind::Volume | AlertKind::Geo => h(1),
        AlertKind::NewDestination => h(24),
        AlertKind::Beaconing => h(6),
        AlertKind::DeniedBurst => Duration::from_secs(1800),
        _ => sluice_observe::DEFAULT_WINDOW,
    }
}

/// The detectors and their state.
pub struct Engine {
    settings: Settings,
    geo: Option<Arc<GeoDb>>,
    geo_cache: HashMap<IpAddr, Option<Box<str>>>,
    tunnel: Option<TunnelDetector>,
    zones: HashMap<String, ZoneState>,
    sources: HashMap<(u64, IpAddr), SrcState>,
    evictions: u64,
    reported: u64,
    /// Keys changed since [`Engine::take_changes`], when a store wants them.
    dirty: Option<Dirty>,
}

#[derive(Debug, Default)]
struct Dirty {
    sources: HashSet<(u64, IpAddr)>,
    zones: HashSet<String>,
    removed: Vec<String>,
}

/// What a zone learned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ZoneState {
    first_ms: i64,
    /// Peak window bytes of any source, by weekday/weekend hour of day.
    peak_hod: Vec<u64>,
    /// Destinations used: hash to last seen.
    dsts: HashMap<u64, i64>,
    /// Destinations used as beacons while learning.
    beacons: HashSet<u64>,
}

/// What a source learned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SrcState {
    zone: String,
    src: IpAddr,
    first_ms: i64,
    last_ms: i64,
    win: i64,
    win_total: u64,
    win_dsts: Vec<(u64, u64)>,
    win_alerted: bool,
    peak_hod: Vec<u64>,
    peak_how: Vec<u64>,
    denied: VecDeque<(i64, u64)>,
    denied_names: VecDeque<String>,
    burst_until: i64,
    countries: Vec<String>,
    pairs: HashMap<u64, Pair>,
}

/// One source's use of one destination.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Pair {
    last_ms: i64,
    /// Most bytes out in one volume window.
    peak: u64,
    /// Start of the window whose bytes first made this an established
    /// upload destination (0: before this was recorded, or never).
    #[serde(default)]
    established_ms: i64,
    last_start: i64,
    intervals: VecDeque<u32>,
    bytes_avg: f64,
    beacon_learned: bool,
    beacon_alerted: bool,
    /// Bytes out while outside the zone's countries.
    #[serde(default)]
    geo_bytes: u64,
    new: Option<NewDst>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NewDst {
    first_ms: i64,
    bytes: u64,
    flows: u32,
    alerted: bool,
}

/// A destination as alerts name it.
struct Dest {
    hash: u64,
    name: String,
}

// === impl Engine ===

impl Engine {
    /// An engine with `settings`, looking countries up in `geo`.
    pub fn new(settings: Settings, geo: Option<Arc<GeoDb>>) -> Engine {
        Engine {
            tunnel: settings.dns_tunnel.map(TunnelDetector::new),
            settings,
            geo,
            geo_cache: HashMap::new(),
            zones: HashMap::new(),
            sources: HashMap::new(),
            evictions: 0,
            reported: 0,
            dirty: None,
        }
    }

    /// Replaces what zones say (`countries`, `detect`), on reload.
    pub fn set_zones(&mut self, zones: ZoneSettings) {
        self.settings.zones = zones;
    }

    /// Baselines evicted so far to stay within bounds.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Evictions since the last call (for a counter).
    pub fn take_evictions(&mut self) -> u64 {
        let new = self.evictions - self.reported;
        self.reported = self.evictions;
        new
    }

    /// Sources with state.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    /// The country of `ip` from the database, if there is one.
    pub fn country(&mut self, ip: IpAddr) -> Option<Box<str>> {
        let geo = self.geo.as_ref()?;
        if let Some(c) = self.geo_cache.get(&ip) {
            return c.clone();
        }
        if self.geo_cache.len() >= GEO_CACHE {
            self.geo_cache.clear();
        }
        let c = geo.country(ip).map(String::into_boxed_str);
        self.geo_cache.insert(ip, c.clone());
        c
    }

    /// Runs every detector on one record at its own time; the alerts it
    /// raises (repeats included: the caller's ring folds them).
    pub fn observe(&mut self, o: &Obs<'_>) -> Vec<Alert> {
        let mut out = Vec::new();
        let zone = o.zone.unwrap_or("");
        if !zone.is_empty() && self.settings.zones.off(zone) {
            return out;
        }
        if o.listener == Listener::Dns && !zone.is_empty() {
            if let (Some(t), Some(name)) = (self.tunnel.as_mut(), o.dst_host) {
                if let Some(sig) = t.observe(zone, o.src, name, o.qtype.unwrap_or(""), o.at_ms) {
                    out.push(sig.alert(o.src, o.id, time_of(o.at_ms)));
                }
            }
        }
        let judges_burst = self.settings.denied_burst.enabled && o.denied();
        let judges_flow = !zone.is_empty() && o.listener != Listener::Dns && o.left();
        if !judges_burst && !judges_flow {
            return out;
        }
        let Some(dst) = Dest::of(o) else {
            return out;
        };
        let zkey = fnv(&[zone.as_bytes()]);
        let skey = (zkey, o.src);
        self.make_room();
        let learn_ms = self.settings.learn_ms;
        // Looked up by `&str` first: the key is allocated only for a new
        // zone, not once a record (perf: a visible share of NetFlow ingest).
        let first_ms = match self.zones.get(zone) {
            Some(z) => z.first_ms,
            None => {
                self.zones.insert(zone.to_owned(), ZoneState::new(o.at_ms));
                o.at_ms
            }
        };
        let learning = o.at_ms < first_ms.saturating_add(learn_ms);
        let s = self
            .sources
            .entry(skey)
            .or_insert_with(|| SrcState::new(zone, o.src, o.at_ms));
        s.last_ms = s.last_ms.max(o.at_ms);
        if let Some(d) = self.dirty.as_mut() {
            d.sources.insert(skey);
            if !zone.is_empty() {
                d.zones.insert(zone.to_owned());
            }
        }
        if judges_burst {
            denied_burst(&self.settings, s, o, &dst, &mut out);
        }
        if !judges_flow {
            return out;
        }
        let country = match o.country {
            Some(c) => Some(Box::from(c)),
            None => o.dst_ip.and_then(|ip| self.country(ip)),
        };
        let Some(z) = self.zones.get_mut(zone) else {
            return out;
        };
        let Some(s) = self.sources.get_mut(&skey) else {
            return out;
        };
        let st = &self.settings;
        let evicted = s.touch_pair(dst.hash, o.at_ms);
        self.evictions += evicted;
        if st.geo.enabled {
            geo(st, zone, s, o, &dst, country.as_deref(), learning, &mut out);
        }
        if st.new_destination.enabled {
            let evicted =
                new_destination(st, z, s, o, &dst, country.as_deref(), learning, &mut out);
            self.evictions += evicted;
        }
        if st.volume.enabled {
            volume(st, z, s, o, &dst, learning, &mut out);
        }
        if st.beaconing.enabled {
            beaconing(st, z, s, o, &dst, learning, &mut out);
        }
        out
    }

    /// Keeps the sources within `detect.max_sources`: the least recently
    /// seen sixteenth goes when full.
    fn make_room(&mut self) {
        let max = self.settings.max_sources.max(1);
        if self.sources.len() < max {
            return;
        }
        let n = (max / 16).max(1);
        let mut ages: Vec<i64> = self.sources.values().map(|s| s.last_ms).collect();
        let k = n.min(ages.len() - 1);
        let cut = *ages.select_nth_unstable(k).1;
        let mut gone = Vec::new();
        self.sources.retain(|_, s| {
            let keep = s.last_ms > cut;
            if !keep {
                gone.push(s.store_key());
            }
            keep
        });
        self.evictions += gone.len() as u64;
        if let Some(d) = self.dirty.as_mut() {
            d.removed.extend(gone);
            d.sources.retain(|k| self.sources.contains_key(k));
        }
    }

    // --- state for the store ---

    /// From now on, remember which keys change for [`Engine::take_changes`].
    pub(crate) fn track_changes(&mut self) {
        self.dirty = Some(Dirty::default());
    }

    /// The zones and sources changed since the last call, serialized, and
    /// the sources evicted: `(zones, sources, removed)`.
    #[allow(clippy::type_complexity)]
    pub(crate) fn take_changes(
        &mut self,
    ) -> (Vec<(String, Vec<u8>)>, Vec<(String, Vec<u8>)>, Vec<String>) {
        let Some(d) = self.dirty.as_mut() else {
            return (Vec::new(), Vec::new(), Vec::new());
        };
        let d = std::mem::take(d);
        let zones = d
            .zones
            .into_iter()
            .filter_map(|name| {
                let z = self.zones.get(&name)?;
                Some((name, serde_json::to_vec(z).ok()?))
            })
            .collect();
        let sources = d
            .sources
            .into_iter()
            .filter_map(|k| {
                let s = self.sources.get(&k)?;
                Some((s.store_key(), serde_json::to_vec(s).ok()?))
            })
            .collect();
        (zones, sources, d.removed)
    }

    /// Takes a zone's stored state back; bad bytes are skipped.
    pub(crate) fn load_zone(&mut self, name: &str, bytes: &[u8]) -> bool {
        match serde_json::from_slice::<ZoneState>(bytes) {
            Ok(z) => {
                self.zones.insert(name.to_owned(), z);
                true
            }
            Err(_) => false,
        }
    }

    /// Takes a source's stored state back; bad bytes are skipped.
    pub(crate) fn load_source(&mut self, bytes: &[u8]) -> bool {
        match serde_json::from_slice::<SrcState>(bytes) {
            Ok(s) => {
                let key = (fnv(&[s.zone.as_bytes()]), s.src);
                self.sources.insert(key, s);
                true
            }
            Err(_) => false,
        }
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("zones", &self.zones.len())
            .field("sources", &self.sources.len())
            .field("evictions", &self.evictions)
            .finish_non_exhaustive()
    }
}

// === the detectors ===

/// A new alert about `o`'s source.
fn alert(
    kind: AlertKind,
    severity: Severity,
    o: &Obs<'_>,
    dst: Option<&str>,
    country: Option<&str>,
    summary: String,
    evidence: serde_json::Value,
) -> Alert {
    let mut a = Alert::new(kind, severity, time_of(o.at_ms), summary).with_window(window_of(kind));
    a.zone = o.zone.map(str::to_owned);
    a.src = Some(ip_string(o.src));
    a.user = o.user.map(str::to_owned);
    a.dst = dst.map(str::to_owned);
    a.country = country.map(str::to_owned);
    a.evidence = evidence;
    a.flows = vec![o.id.to_owned()];
    a
}

fn denied_burst(st: &Settings, s: &mut SrcState, o: &Obs<'_>, dst: &Dest, out: &mut Vec<Alert>) {
    let window_ms = i64::try_from(st.denied_burst.window.as_millis()).unwrap_or(i64::MAX);
    s.denied.push_back((o.at_ms, dst.hash));
    while s.denied.len() > MAX_DENIALS
        || s.denied
            .front()
            .is_some_and(|(t, _)| o.at_ms.saturating_sub(*t) > window_ms)
    {
        s.denied.pop_front();
    }
    if !s.denied_names.contains(&dst.name) {
        s.denied_names.push_back(dst.name.clone());
        if s.denied_names.len() > 5 {
            s.denied_names.pop_front();
        }
    }
    if o.at_ms < s.burst_until {
        return;
    }
    let mut distinct: Vec<u64> = s.denied.iter().map(|(_, h)| *h).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let n = distinct.len();
    let min = st.denied_burst.min_distinct as usize;
    if n < min {
        return;
    }
    s.burst_until = o.at_ms.saturating_add(window_ms);
    let severity = if n >= 4 * min {
        Severity::Critical
    } else {
        Severity::Warning
    };
    let secs = st.denied_burst.window.as_secs();
    let src = ip_string(o.src);
    let summary = format!(
        "{src} was denied {n} distinct destinations within {secs}s (malware trying its list, a scanner, or a misconfigured host): check the host"
    );
    let names: Vec<&String> = s.denied_names.iter().collect();
    out.push(alert(
        AlertKind::DeniedBurst,
        severity,
        o,
        None,
        None,
        summary,
        json!({ "baseline": { "min_distinct": min, "window_s": secs }, "observed": { "distinct": n, "denials": s.denied.len(), "recent": names } }),
    ));
}

#[allow(clippy::too_many_arguments)]
fn geo(
    st: &Settings,
    zone: &str,
    s: &mut SrcState,
    o: &Obs<'_>,
    dst: &Dest,
    country: Option<&str>,
    learning: bool,
    out: &mut Vec<Alert>,
) {
    let Some(c) = country else {
        return;
    };
    let allowed = st.zones.countries(zone);
    let new_here = !s.countries.iter().any(|k| k == c);
    if new_here && s.countries.len() < MAX_COUNTRIES {
        s.countries.push(c.to_owned());
    }
    let src = ip_string(o.src);
    match allowed {
        Some(list) if !list.iter().any(|k| k == c) => {
            // A page fetched from a site hosted abroad sends a few
            // kilobytes; an upload sends more. Nothing until `min_bytes`
            // went there (summed over the source's flows to it).
            let Some(p) = s.pairs.get_mut(&dst.hash) else {
                return;
            };
            p.geo_bytes = p.geo_bytes.saturating_add(o.bytes_out);
            if p.geo_bytes < st.geo.min_bytes {
                return;
            }
            let sent = p.geo_bytes;
            let severity = if sent >= st.geo.min_bytes.saturating_mul(10) {
                Severity::Critical
            } else {
                Severity::Warning
            };
            let summary = format!(
                "{src} sent {sent} bytes to {} in {c}, outside zone {zone}'s countries ({}): check the host and the destination",
                dst.name,
                list.join(", ")
            );
            out.push(alert(
                AlertKind::Geo,
                severity,
                o,
                Some(&dst.name),
                Some(c),
                summary,
                json!({ "baseline": { "countries": list, "min_bytes": st.geo.min_bytes }, "observed": { "country": c, "bytes_out": sent } }),
            ));
        }
        _ if new_here && !learning => {
            let summary = format!("{src} reached {c} for the first time ({})", dst.name);
            out.push(alert(
                AlertKind::Geo,
                Severity::Info,
                o,
                Some(&dst.name),
                Some(c),
                summary,
                json!({ "baseline": { "countries_seen": s.countries.len() - 1 }, "observed": { "country": c } }),
            ));
        }
        _ => {}
    }
}

/// Returns destinations evicted from the zone's memory.
#[allow(clippy::too_many_arguments)]
fn new_destination(
    st: &Settings,
    z: &mut ZoneState,
    s: &mut SrcState,
    o: &Obs<'_>,
    dst: &Dest,
    country: Option<&str>,
    learning: bool,
    out: &mut Vec<Alert>,
) -> u64 {
    let mut evicted = 0;
    let seen = z.dsts.insert(dst.hash, o.at_ms).is_some();
    if !seen && z.dsts.len() > MAX_ZONE_DSTS {
        evicted = evict_oldest(&mut z.dsts, MAX_ZONE_DSTS / 8);
    }
    let Some(p) = s.pairs.get_mut(&dst.hash) else {
        return evicted;
    };
    if !seen && !learning {
        p.new = Some(NewDst {
            first_ms: o.at_ms,
            bytes: 0,
            flows: 0,
            alerted: false,
        });
    }
    let Some(nd) = p.new.as_mut() else {
        return evicted;
    };
    if o.at_ms.saturating_sub(nd.first_ms) > NEW_DST_WATCH_MS {
        p.new = None;
        return evicted;
    }
    nd.bytes = nd.bytes.saturating_add(o.bytes_out);
    if !o.interim {
        nd.flows = nd.flows.saturating_add(1);
    }
    let nd_cfg = &st.new_destination;
    if nd.alerted || (nd.bytes < nd_cfg.min_bytes && nd.flows < nd_cfg.min_flows) {
        return evicted;
    }
    nd.alerted = true;
    let severity = if nd.bytes >= st.volume.floor {
        Severity::Critical
    } else {
        Severity::Warning
    };
    let src = ip_string(o.src);
    let mins = o.at_ms.saturating_sub(nd.first_ms) / 60_000;
    let summary = format!(
        "{src} started using {}, never seen in zone {} before: {} bytes out in {} flows over {mins} min; check whether it is expected",
        dst.name,
        o.zone.unwrap_or(""),
        nd.bytes,
        nd.flows
    );
    out.push(alert(
        AlertKind::NewDestination,
        severity,
        o,
        Some(&dst.name),
        country,
        summary,
        json!({ "baseline": { "seen_in_zone": false, "min_bytes": nd_cfg.min_bytes, "min_flows": nd_cfg.min_flows }, "observed": { "bytes_out": nd.bytes, "flows": nd.flows, "first_seen": sluice_observe::rfc3339(time_of(nd.first_ms)) } }),
    ));
    evicted
}

/// Hour-of-day slot (weekday 0..24, weekend 24..48) and hour-of-week slot
/// (Monday 00:00 UTC = 0) of unix milliseconds `ms`.
fn slots(ms: i64) -> (usize, usize) {
    let hours = ms.div_euclid(3_600_000);
    let hour = hours.rem_euclid(24) as usize;
    // 1970-01-01 was a Thursday: day 0 is weekday 3 counted from Monday.
    let weekday = (hours.div_euclid(24) + 3).rem_euclid(7) as usize;
    let hod = if weekday >= 5 { 24 + hour } else { hour };
    (hod, weekday * 24 + hour)
}

/// Raises `peaks[slot]` to `v`, first giving `peaks` its `len` slots
/// if it has none yet (an empty baseline reads as zeros, `around`).
fn raise(peaks: &mut Vec<u64>, len: usize, slot: usize, v: u64) {
    if peaks.len() < len {
        peaks.resize(len, 0);
    }
    if let Some(p) = peaks.get_mut(slot) {
        *p = (*p).max(v);
    }
}

/// The most of `peaks` at `slot` and its neighbours (wrapping within `span`).
fn around(peaks: &[u64], slot: usize, base: usize, span: usize) -> u64 {
    let at = |i: usize| peaks.get(base + i % span).copied().unwrap_or(0);
    let i = slot - base;
    at(i + span - 1).max(at(i)).max(at(i + 1))
}

/// What a volume window is compared with: the usual peak at this hour, and
/// which baseline gave it (the alert's `baseline.basis`).
struct VolumeBaseline {
    bytes: u64,
    basis: &'static str,
}

fn volume(
    st: &Settings,
    z: &mut ZoneState,
    s: &mut SrcState,
    o: &Obs<'_>,
    dst: &Dest,
    learning: bool,
    out: &mut Vec<Alert>,
) {
    let cfg = &st.volume;
    let window_ms = i64::try_from(cfg.window.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    let w = o.at_ms.div_euclid(window_ms);
    if w > s.win {
        s.close_window(z, window_ms, cfg.floor / ESTABLISHED_SHARE);
        s.win = w;
    }
    if o.bytes_out == 0 {
        return;
    }
    s.add_to_window(dst.hash, o.bytes_out);
    if learning || s.win_alerted || s.win_total < cfg.floor {
        return;
    }
    let excess = s.unusual_bytes(cfg.floor, o.at_ms);
    if excess < cfg.floor {
        return;
    }
    let baseline = volume_baseline(z, s, window_ms, o.at_ms);
    if (s.win_total as f64) < cfg.factor * baseline.bytes as f64 {
        return;
    }
    s.win_alerted = true;
    out.push(volume_alert(cfg, s, o, dst, &baseline, excess));
}

/// The baseline of source `s`'s current window: the zone's while the
/// source is young, then the source's own by hour of day, and by hour of
/// week once it has two weeks of history.
fn volume_baseline(z: &ZoneState, s: &SrcState, window_ms: i64, at_ms: i64) -> VolumeBaseline {
    let (hod, how) = slots(s.win.saturating_mul(window_ms));
    let age = at_ms.saturating_sub(s.first_ms);
    let (bytes, basis) = if age < YOUNG_MS {
        (
            around(&z.peak_hod, hod, hod / 24 * 24, 24),
            "zone, same hour of day",
        )
    } else if age >= WEEKLY_MS {
        (
            around(&s.peak_how, how, 0, 168),
            "source, same hour of week",
        )
    } else {
        (
            around(&s.peak_hod, hod, hod / 24 * 24, 24),
            "source, same hour of day",
        )
    };
    VolumeBaseline { bytes, basis }
}

/// The volume alert for source `s`'s current window, which sent `excess`
/// bytes more than its destinations' peaks allow.
fn volume_alert(
    cfg: &VolumeDetect,
    s: &SrcState,
    o: &Obs<'_>,
    dst: &Dest,
    baseline: &VolumeBaseline,
    excess: u64,
) -> Alert {
    let top = s
        .win_dsts
        .iter()
        .max_by_key(|(_, b)| *b)
        .map(|(h, _)| *h)
        .unwrap_or(dst.hash);
    let top_name = if top == dst.hash {
        dst.name.as_str()
    } else {
        "several destinations"
    };
    let severity = if s.win_total >= cfg.floor.saturating_mul(10) {
        Severity::Critical
    } else {
        Severity::Warning
    };
    let src = ip_string(o.src);
    let mins = cfg.window.as_secs() / 60;
    let summary = format!(
        "{src} sent {} MB in {mins} min (baseline {} MB), mostly to {top_name}: check for exfiltration",
        megabytes(s.win_total),
        megabytes(baseline.bytes)
    );
    let dst_name = (top == dst.hash).then_some(dst.name.as_str());
    alert(
        AlertKind::Volume,
        severity,
        o,
        dst_name,
        None,
        summary,
        json!({ "baseline": { "bytes_out": baseline.bytes, "basis": baseline.basis, "factor": cfg.factor, "floor": cfg.floor }, "observed": { "bytes_out": s.win_total, "unusual_bytes_out": excess, "window_s": cfg.window.as_secs() } }),
    )
}

/// Bytes as megabytes for a summary: one decimal below 10 MB, whole above.
fn megabytes(b: u64) -> String {
    let mb = b as f64 / 1e6;
    if mb < 10.0 {
        format!("{mb:.1}")
    } else {
        format!("{mb:.0}")
    }
}

fn beaconing(
    st: &Settings,
    z: &mut ZoneState,
    s: &mut SrcState,
    o: &Obs<'_>,
    dst: &Dest,
    learning: bool,
    out: &mut Vec<Alert>,
) {
    if o.interim {
        return;
    }
    let cfg = &st.beaconing;
    let Some(p) = s.pairs.get_mut(&dst.hash) else {
        return;
    };
    let size = o.bytes_out.saturating_add(o.bytes_in) as f64;
    p.bytes_avg = if p.last_start == 0 {
        size
    } else {
        0.8 * p.bytes_avg + 0.2 * size
    };
    if p.last_start != 0 {
        let gap = o.start_ms.saturating_sub(p.last_start);
        // Connections opened together (a page's parallel fetches) are one.
        if gap < 1000 {
            return;
        }
        p.intervals
            .push_back(u32::try_from(gap).unwrap_or(u32::MAX));
        if p.intervals.len() > MAX_INTERVALS {
            p.intervals.pop_front();
        }
    }
    p.last_start = p.last_start.max(o.start_ms);
    let n = cfg.min_repeats as usize;
    if p.intervals.len() < n || p.beacon_alerted {
        return;
    }
    let last = p.intervals.iter().rev().take(n).map(|&v| f64::from(v));
    let mean = last.clone().sum::<f64>() / n as f64;
    let var = last.map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
    let jitter = var.sqrt() / mean;
    if !(BEACON_MIN_MS..=BEACON_MAX_MS).contains(&mean)
        || jitter > cfg.max_jitter
        || p.bytes_avg > cfg.max_bytes as f64
    {
        return;
    }
    if learning {
        p.beacon_learned = true;
        z.beacons.insert(dst.hash);
        return;
    }
    if p.beacon_learned || z.beacons.contains(&dst.hash) {
        return;
    }
    p.beacon_alerted = true;
    let src = ip_string(o.src);
    let summary = format!(
        "{src} connects to {} every {:.0}s (jitter {:.1}%, {} bytes each) over {n} connections: typical of an implant calling home",
        dst.name,
        mean / 1000.0,
        jitter * 100.0,
        p.bytes_avg.round()
    );
    out.push(alert(
        AlertKind::Beaconing,
        Severity::Warning,
        o,
        Some(&dst.name),
        None,
        summary,
        json!({ "baseline": { "used_as_beacon_while_learning": false, "max_jitter": cfg.max_jitter, "min_repeats": n }, "observed": { "interval_s": round3(mean / 1000.0), "jitter": round3(jitter), "repeats": n, "mean_bytes": p.bytes_avg.round() } }),
    ));
}

/// Drops the `n` least recently seen entries of `map`; how many went.
fn evict_oldest<K: std::hash::Hash + Eq + Copy>(map: &mut HashMap<K, i64>, n: usize) -> u64 {
    if map.is_empty() || n == 0 {
        return 0;
    }
    let mut ages: Vec<i64> = map.values().copied().collect();
    let k = n.min(ages.len() - 1);
    let cut = *ages.select_nth_unstable(k).1;
    let before = map.len();
    map.retain(|_, t| *t > cut);
    (before - map.len()) as u64
}

// === impl Dest ===

impl Dest {
    /// The registrable domain of the name the flow asked for (or its SNI),
    /// else its address.
    fn of(o: &Obs<'_>) -> Option<Dest> {
        let name = o.dst_host.or(o.sni);
        if let Some(n) = name {
            let n = n.trim_end_matches('.');
            if let Ok(ip) = n
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
            {
                return Some(Dest::ip(ip));
            }
            let d = psl::domain_str(n).unwrap_or(n);
            return Some(Dest {
                hash: fnv(&[d.as_bytes()]),
                name: d.to_owned(),
            });
        }
        o.dst_ip.map(Dest::ip)
    }

    fn ip(ip: IpAddr) -> Dest {
        let name = ip_string(ip.to_canonical());
        Dest {
            hash: fnv(&[name.as_bytes()]),
            name,
        }
    }
}

// === impl ZoneState ===

impl ZoneState {
    fn new(first_ms: i64) -> ZoneState {
        ZoneState {
            first_ms,
            peak_hod: vec![0; 48],
            dsts: HashMap::new(),
            beacons: HashSet::new(),
        }
    }
}

// === impl SrcState ===

impl SrcState {
    fn new(zone: &str, src: IpAddr, at_ms: i64) -> SrcState {
        SrcState {
            zone: zone.to_owned(),
            src,
            first_ms: at_ms,
            last_ms: at_ms,
            win: i64::MIN,
            win_total: 0,
            win_dsts: Vec::new(),
            win_alerted: false,
            // Filled when the first window closes (`raise`): a source
            // seen once costs no baseline (1.7 kB each, and their zeroed
            // pages were 9 % of NetFlow ingest with many new sources).
            peak_hod: Vec::new(),
            peak_how: Vec::new(),
            denied: VecDeque::new(),
            denied_names: VecDeque::new(),
            burst_until: i64::MIN,
            countries: Vec::new(),
            pairs: HashMap::new(),
        }
    }

    /// The key it is stored under: `zone NUL address`.
    fn store_key(&self) -> String {
        format!("{}\0{}", self.zone, self.src)
    }

    /// The pair for `hash`, created if new; how many pairs were evicted to
    /// make room.
    fn touch_pair(&mut self, hash: u64, at_ms: i64) -> u64 {
        if let Some(p) = self.pairs.get_mut(&hash) {
            p.last_ms = p.last_ms.max(at_ms);
            return 0;
        }
        let mut evicted = 0;
        if self.pairs.len() >= MAX_PAIRS {
            let mut ages: Vec<i64> = self.pairs.values().map(|p| p.last_ms).collect();
            let k = (MAX_PAIRS / 8).min(ages.len() - 1);
            let cut = *ages.select_nth_unstable(k).1;
            let before = self.pairs.len();
            self.pairs.retain(|_, p| p.last_ms > cut);
            evicted = (before - self.pairs.len()) as u64;
        }
        self.pairs.insert(
            hash,
            Pair {
                last_ms: at_ms,
                ..Pair::default()
            },
        );
        evicted
    }

    /// Adds `bytes` out to destination `hash` in the current window; past
    /// the bound the rest counts as one unknown destination.
    fn add_to_window(&mut self, hash: u64, bytes: u64) {
        self.win_total = self.win_total.saturating_add(bytes);
        let full = self.win_dsts.len() >= MAX_WINDOW_DSTS;
        let key = if full { 0 } else { hash };
        match self
            .win_dsts
            .iter_mut()
            .find(|(h, _)| *h == hash || (full && *h == 0))
        {
            Some((_, b)) => *b = b.saturating_add(bytes),
            None => self.win_dsts.push((key, bytes)),
        }
    }

    /// Bytes of the current window beyond what each destination is trusted
    /// with at `at_ms`, summed.
    fn unusual_bytes(&self, floor: u64, at_ms: i64) -> u64 {
        self.win_dsts
            .iter()
            .map(|(h, b)| {
                let (peak, since) = self
                    .pairs
                    .get(h)
                    .map_or((0, 0), |p| (p.peak, p.established_ms));
                // A destination this source already uploaded to in earnest
                // (its backup bucket, its git host) takes far more before it
                // is unusual; any other, twice its peak.
                let established = peak >= floor / ESTABLISHED_SHARE
                    && at_ms.saturating_sub(since) >= ESTABLISHED_AGE_MS;
                let trusted = if established {
                    peak.saturating_mul(ESTABLISHED_FACTOR)
                } else {
                    peak.saturating_mul(2)
                };
                b.saturating_sub(trusted)
            })
            .sum()
    }

    /// Folds the finished window into the baselines (unless it alerted:
    /// an exfiltration must not become normal); a destination whose peak
    /// first reaches `established` is marked with the window's start.
    fn close_window(&mut self, z: &mut ZoneState, window_ms: i64, established: u64) {
        if self.win != i64::MIN && !self.win_alerted && self.win_total > 0 {
            let (hod, how) = slots(self.win.saturating_mul(window_ms));
            raise(&mut self.peak_hod, 48, hod, self.win_total);
            raise(&mut self.peak_how, 168, how, self.win_total);
            raise(&mut z.peak_hod, 48, hod, self.win_total);
            let start = self.win.saturating_mul(window_ms);
            for (h, b) in &self.win_dsts {
                if let Some(p) = self.pairs.get_mut(h) {
                    if p.peak < established && *b >= established {
                        p.established_ms = start;
                    }
                    p.peak = p.peak.max(*b);
                }
            }
        }
        self.win_total = 0;
        self.win_dsts.clear();
        self.win_alerted = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_show_small_volumes_with_a_decimal() {
        assert_eq!(megabytes(300_092), "0.3");
        assert_eq!(megabytes(9_950_000), "9.9");
        assert_eq!(megabytes(1_234_567_890), "1235");
    }

    #[test]
    fn slots_count_from_monday_utc() {
        // 2026-01-05 was a Monday.
        let monday = crate::obs::parse_ts_ms("2026-01-05T10:30:00Z").unwrap();
        assert_eq!(slots(monday), (10, 10));
        let sunday = crate::obs::parse_ts_ms("2026-01-11T23:00:00Z").unwrap();
        assert_eq!(slots(sunday), (47, 6 * 24 + 23));
        assert_eq!(around(&[5, 0, 0, 9], 0, 0, 4), 9);
    }
}
