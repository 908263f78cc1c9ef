//! Baselines across restarts (`detect.state_dir`): one redb file,
//! `detect.redb`, with a table of zones and a table of sources, each value
//! the engine's own serde form of that zone or source — the same state the
//! engine keeps in memory, so live and offline runs read each other's.
//! Bounded like the engine: evicted sources are deleted here too.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableDefinition};

use crate::engine::Engine;

const ZONES: TableDefinition<&str, &[u8]> = TableDefinition::new("zones");
const SOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("sources");

/// The file inside `detect.state_dir`.
pub const FILE: &str = "detect.redb";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The folder could not be made.
    #[error("cannot create detect.state_dir {path}: {source}")]
    Dir {
        /// The folder.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The database failed.
    #[error("detection state {path}: {source}")]
    Db {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: Box<redb::Error>,
    },
}

/// An open store.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// What [`Store::load`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Zones read back.
    pub zones: usize,
    /// Sources read back.
    pub sources: usize,
    /// Entries that could not be read (skipped).
    pub skipped: usize,
}

// === impl Store ===

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(FILE);
        let db = Database::create(&path).map_err(|e| db_err(&path, e))?;
        let store = Store { db, path };
        // Both tables exist from the start, so that reading never meets a
        // missing one.
        let tx = store.db.begin_write().map_err(|e| store.err(e))?;
        tx.open_table(ZONES).map_err(|e| store.err(e))?;
        tx.open_table(SOURCES).map_err(|e| store.err(e))?;
        tx.commit().map_err(|e| store.err(e))?;
        Ok(store)
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        db_err(&self.path, e)
    }

    /// Reads every zone and source into `engine`.
    pub(crate) fn load(&self, engine: &mut Engine) -> Result<Loaded, StoreError> {
        let mut loaded = Loaded::default();
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let zones = tx.open_table(ZONES).map_err(|e| self.err(e))?;
        for entry in zones.iter().map_err(|e| self.err(e))? {
            let (k, v) = entry.map_err(|e| self.err(e))?;
            if engine.load_zone(k.value(), v.value()) {
                loaded.zones += 1;
            } else {
                loaded.skipped += 1;
            }
        }
        let sources = tx.open_table(SOURCES).map_err(|e| self.err(e))?;
        for entry in sources.iter().map_err(|e| self.err(e))? {
            let (_, v) = entry.map_err(|e| self.err(e))?;
            if engine.load_source(v.value()) {
                loaded.sources += 1;
            } else {
                loaded.skipped += 1;
            }
        }
        Ok(loaded)
    }

    /// Writes what changed in one transaction.
    pub(crate) fn save(
        &self,
        zones: &[(String, Vec<u8>)],
        sources: &[(String, Vec<u8>)],
        removed: &[String],
    ) -> Result<(), StoreError> {
        if zones.is_empty() && sources.is_empty() && removed.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(ZONES).map_err(|e| self.err(e))?;
            for (k, v) in zones {
                t.insert(k.as_str(), v.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            let mut t = tx.open_table(SOURCES).map_err(|e| self.err(e))?;
            for (k, v) in sources {
                t.insert(k.as_str(), v.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            for k in removed {
                t.remove(k.as_str()).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(())
    }
}

fn db_err(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db {
        path: path.to_owned(),
        source: Box::new(e.into()),
    }
}
