//! The engine's settings, taken from the configuration once: thresholds
//! (`detect.*`, `dns.tunnel_*`) and what each zone says (`countries`,
//! `detect: off`), the latter replaceable on reload.

use std::collections::HashMap;

use sluice_policy::model::{
    BeaconingDetect, Config, DeniedBurstDetect, GeoDetect, NewDestinationDetect, Switch,
    VolumeDetect,
};

use crate::tunnel::TunnelSettings;

/// Everything the engine needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `detect.learn`, milliseconds.
    pub learn_ms: i64,
    /// `detect.max_sources`.
    pub max_sources: usize,
    /// `detect.volume`.
    pub volume: VolumeDetect,
    /// `detect.new-destination`.
    pub new_destination: NewDestinationDetect,
    /// `detect.geo`.
    pub geo: GeoDetect,
    /// `detect.beaconing`.
    pub beaconing: BeaconingDetect,
    /// `detect.dns-tunnel.enabled` with `dns.tunnel_*`.
    pub dns_tunnel: Option<TunnelSettings>,
    /// `detect.denied-burst`.
    pub denied_burst: DeniedBurstDetect,
    /// Per zone.
    pub zones: ZoneSettings,
}

/// What each zone says about detection.
#[derive(Debug, Clone, Default)]
pub struct ZoneSettings {
    by_name: HashMap<String, Zone>,
}

#[derive(Debug, Clone)]
struct Zone {
    off: bool,
    countries: Option<Vec<String>>,
}

// === impl Settings ===

impl Settings {
    /// The settings `config` gives.
    pub fn from_config(config: &Config) -> Settings {
        let d = &config.detect;
        Settings {
            learn_ms: i64::try_from(d.learn.as_millis()).unwrap_or(i64::MAX),
            max_sources: d.max_sources as usize,
            volume: d.volume.clone(),
            new_destination: d.new_destination.clone(),
            geo: d.geo.clone(),
            beaconing: d.beaconing.clone(),
            dns_tunnel: d.dns_tunnel.enabled.then_some(TunnelSettings {
                threshold: config.dns.tunnel_threshold,
                window: config.dns.tunnel_window,
                min_queries: config.dns.tunnel_min_queries,
            }),
            denied_burst: d.denied_burst.clone(),
            zones: ZoneSettings::from_config(config),
        }
    }
}

impl Default for Settings {
    fn default() -> Settings {
        Settings::from_config(&Config::default())
    }
}

// === impl ZoneSettings ===

impl ZoneSettings {
    /// Each zone's `countries` and `detect`.
    pub fn from_config(config: &Config) -> ZoneSettings {
        ZoneSettings {
            by_name: config
                .zones
                .iter()
                .map(|z| {
                    (
                        z.name.clone(),
                        Zone {
                            off: z.detect == Switch::Off,
                            countries: z.countries.clone(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// Whether `zone` said `detect: off`.
    pub fn off(&self, zone: &str) -> bool {
        self.by_name.get(zone).is_some_and(|z| z.off)
    }

    /// The countries `zone` allows; `None` when it names none.
    pub fn countries(&self, zone: &str) -> Option<&[String]> {
        self.by_name.get(zone)?.countries.as_deref()
    }
}
