//! Country databases and the upload that crosses a border: what the
//! detection tests (geo alert, its sinks, the dashboard panel) share.
//! Every `.mmdb` is built here with PyPI `mmdb-writer`; nothing is
//! downloaded.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{Curl, Origin, Sluice, TempDir, curl};

/// Writes a GeoLite2-Country-layout database at `path` placing each CIDR
/// in its ISO country (`[("127.0.0.0/8", "KP")]`).
pub fn write_mmdb(path: &Path, nets: &[(&str, &str)]) {
    let script = r#"
import json, sys
try:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet
except ImportError:
    sys.exit("the Python package mmdb-writer is missing: python3 -m pip install mmdb-writer")
w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-Country",
               languages=["en"], description="sluice test")
for net, iso in json.loads(sys.argv[2]):
    w.insert_network(IPSet([net]), {"country": {"iso_code": iso, "names": {"en": iso}}})
w.to_db_file(sys.argv[1])
"#;
    let nets = serde_json::to_string(nets).unwrap();
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .arg(nets)
        .output()
        .expect("python3 is missing: apt-get install python3");
    assert!(
        out.status.success(),
        "cannot write {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An origin on loopback that the scenario's database places in North
/// Korea (`KP`), and a zone `lan` (127.0.0.0/8) whose `countries` are
/// only `DE` and `FR`: any upload to the origin leaves the zone's
/// countries.
pub struct GeoScenario {
    /// The origin (127.0.0.1).
    pub origin: Origin,
    /// The country database.
    pub mmdb: PathBuf,
    /// Keeps the database.
    pub dir: TempDir,
}

impl GeoScenario {
    /// The country the database gives loopback.
    pub const COUNTRY: &'static str = "KP";

    /// Starts the origin and writes the database.
    pub fn new() -> GeoScenario {
        let dir = TempDir::new("geo");
        let mmdb = dir.path("countries.mmdb");
        write_mmdb(
            &mmdb,
            &[("127.0.0.0/8", Self::COUNTRY), ("::1/128", Self::COUNTRY)],
        );
        GeoScenario {
            origin: Origin::start("127.0.0.1"),
            mmdb,
            dir,
        }
    }

    /// The configuration: zone `lan` allowed to reach the origin, its
    /// countries `DE` and `FR`, `detect.geoip` the database, and `detect`
    /// lines of the caller's (indented two spaces, e.g. `"  state_dir: x\n"`)
    /// and top-level text after it.
    pub fn yaml(&self, detect: &str, more: &str) -> String {
        format!(
            "detect:\n  geoip: {}\n{detect}zones:\n  - name: lan\n    sources: [127.0.0.0/8]\n    countries: [DE, FR]\n    allow:\n      - cidr: 127.0.0.1/32\n        ports: any\n{more}",
            self.mmdb.display()
        )
    }

    /// Uploads `bytes` bytes to the origin through `s`'s HTTP proxy (a
    /// POST with curl).
    pub fn upload(&self, s: &Sluice, bytes: usize) -> Curl {
        let body = self.dir.path("upload.bin");
        std::fs::write(&body, vec![b'u'; bytes]).unwrap();
        curl(&[
            "-x",
            &s.proxy_url(),
            "--data-binary",
            &format!("@{}", body.display()),
            &format!("{}/upload", self.origin.url()),
        ])
    }
}

impl Default for GeoScenario {
    fn default() -> Self {
        Self::new()
    }
}
