//! Country lookups in a MaxMind DB (`detect.geoip`: GeoLite2-Country,
//! DB-IP Country Lite, or any database with `country.iso_code`). The file
//! is read into memory once; a lookup walks its tree and decodes one path.

use std::{net::IpAddr, path::Path};

use maxminddb::{PathElement, Reader};

/// Why a database cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    /// Not readable or not a MaxMind DB.
    #[error("cannot read the country database {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// What failed.
        source: maxminddb::MaxMindDbError,
    },
}

/// A country database.
pub struct GeoDb {
    reader: Reader<Vec<u8>>,
}

impl std::fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoDb")
            .field("type", &self.reader.metadata().database_type)
            .finish()
    }
}

// === impl GeoDb ===

impl GeoDb {
    /// Reads the database at `path`.
    pub fn open(path: &Path) -> Result<GeoDb, GeoError> {
        let reader = Reader::open_readfile(path).map_err(|source| GeoError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Ok(GeoDb { reader })
    }

    /// The ISO code of `ip`'s country (`country`, else
    /// `registered_country`), if the database knows it.
    pub fn country(&self, ip: IpAddr) -> Option<String> {
        let found = self.reader.lookup(ip).ok()?;
        if !found.has_data() {
            return None;
        }
        for top in ["country", "registered_country"] {
            let path = [PathElement::Key(top), PathElement::Key("iso_code")];
            if let Ok(Some(code)) = found.decode_path::<String>(&path) {
                return Some(code);
            }
        }
        None
    }
}
