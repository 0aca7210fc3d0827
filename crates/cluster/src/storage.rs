//! The node's sled database: format header, cluster identity, and the
//! durability helper.
//!
//! Layout under `<data_dir>/raft`: the sled database (named trees: `meta`
//! holds the on-disk format version, the cluster id and the node id; `raft`
//! holds the vote, the commit marker and the purge marker; `snapshot` holds
//! the current snapshot's metadata), snapshot data files beside it, and the
//! Raft log's segment files in `log/` (`wal.rs`).
//!
//! sled 0.34's `flush` does not fsync on Linux (sled #1452), so `sync`
//! also calls `sync_data` on sled's data file: nothing Starling
//! acknowledges depends on the page cache.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::on_disk::LogOnDisk;

/// Incremented whenever the on-disk layout changes incompatibly.
pub const FORMAT_VERSION: u32 = 3;

const FORMAT_KEY: &[u8] = b"format_version";
const CLUSTER_KEY: &[u8] = b"cluster_id";
const NODE_KEY: &[u8] = b"node_id";

/// An open node database.
#[derive(Clone)]
pub struct Store {
    pub db: sled::Db,
    pub meta: sled::Tree,
    pub raft: sled::Tree,
    pub snapshot: sled::Tree,
    pub dir: PathBuf,
    data_file: Arc<File>,
    /// What the state machine last wrote as its snapshot (see
    /// `SnapshotOnDisk`).
    pub snapshot_on_disk: Arc<tokio::sync::watch::Sender<SnapshotOnDisk>>,
    /// How far the Raft log is on disk (the log store reports it, the state
    /// machine and the replication to followers wait for it).
    pub log_on_disk: Arc<LogOnDisk>,
    /// This node's id (the data directory belongs to it).
    pub node_id: u64,
}

/// The snapshot on disk (file and metadata synced), as the state machine
/// reports it to the log. openraft purges the log as soon as it *starts*
/// installing a snapshot received from the leader, and a node that stopped
/// before that snapshot was written (a full disk) came back with neither
/// the entries nor a snapshot covering them: while one is being received,
/// `LogStore::purge` waits until the snapshot on disk covers what it
/// purges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotOnDisk {
    /// The last log id the snapshot covers.
    pub last: Option<crate::types::LogId>,
    /// A snapshot from the leader is being received or installed.
    pub receiving: bool,
    /// Writing a snapshot failed: the node is stopping.
    pub failed: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

/// Upper bound of sled's page cache.
const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl Store {
    /// Opens (or creates) the database under `dir/raft`, checking the
    /// format version and that it belongs to `node_id`.
    pub fn open(dir: &Path, node_id: u64) -> anyhow::Result<Store> {
        let path = dir.join("raft");
        std::fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        // The store holds the Raft log (purged after each snapshot) and a
        // few metadata keys; the replicated state itself lives in memory
        // and in snapshot files. sled's default page cache is 1 GiB; 64 MiB
        // covers the unpurged log many times over.
        let db = sled::Config::new()
            .path(&path)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(SLED_CACHE_BYTES)
            .open()
            .with_context(|| {
                format!("cannot open the database in {} (is another node using it?)", path.display())
            })?;
        let meta = db.open_tree("meta")?;
        match meta.get(FORMAT_KEY)? {
            None => {
                meta.insert(FORMAT_KEY, &FORMAT_VERSION.to_be_bytes())?;
            }
            Some(v) => {
                let found = u32::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 4]));
                if found != FORMAT_VERSION {
                    bail!(
                        "{} holds data in on-disk format {found}; this build reads format {FORMAT_VERSION} \
                         (see \"Upgrading one node at a time\" in docs/operations.md)",
                        path.display()
                    );
                }
            }
        }
        match meta.get(NODE_KEY)? {
            None => {
                meta.insert(NODE_KEY, &node_id.to_be_bytes())?;
            }
            Some(v) => {
                let found = u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]));
                if found != node_id {
                    bail!(
                        "{} belongs to node {found}, but this node is configured as node {node_id} (`node.id`)",
                        dir.display()
                    );
                }
            }
        }
        let data_file =
            File::open(path.join("db")).with_context(|| format!("cannot open {}/db", path.display()))?;
        let store = Store {
            raft: db.open_tree("raft")?,
            snapshot: db.open_tree("snapshot")?,
            meta,
            db,
            dir: dir.to_path_buf(),
            data_file: Arc::new(data_file),
            snapshot_on_disk: Arc::new(tokio::sync::watch::Sender::new(SnapshotOnDisk::default())),
            log_on_disk: Arc::new(LogOnDisk::new(None)),
            node_id,
        };
        store.sync()?;
        Ok(store)
    }

    /// Makes everything written so far durable: sled flush, then fsync.
    pub fn sync(&self) -> std::io::Result<()> {
        self.db.flush().map_err(std::io::Error::other)?;
        self.data_file.sync_data()
    }

    pub fn cluster_id(&self) -> anyhow::Result<Option<String>> {
        Ok(self.meta.get(CLUSTER_KEY)?.map(|v| String::from_utf8_lossy(&v).to_string()))
    }

    /// Records the cluster this data directory belongs to; refuses to
    /// change it.
    pub fn set_cluster_id(&self, id: &str) -> anyhow::Result<()> {
        if let Some(existing) = self.cluster_id()? {
            if existing != id {
                bail!("this data directory belongs to cluster {existing}, not {id}");
            }
            return Ok(());
        }
        self.meta.insert(CLUSTER_KEY, id.as_bytes())?;
        self.sync()?;
        Ok(())
    }

    /// Where snapshot data files live.
    pub fn snapshot_path(&self, id: &str) -> PathBuf {
        let safe: String =
            id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        self.dir.join("raft").join(format!("snapshot-{safe}.bin"))
    }

    /// Removes snapshot files other than `keep`: the temporary file of a
    /// snapshot whose writing was cut short (a full disk, a kill) and a
    /// snapshot file whose metadata was never recorded.
    pub fn remove_stale_snapshots(&self, keep: Option<&Path>) {
        let Ok(entries) = std::fs::read_dir(self.dir.join("raft")) else { return };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            let ours = name.starts_with("snapshot-") && (name.ends_with(".bin") || name.ends_with(".tmp"));
            if ours && Some(path.as_path()) != keep {
                match std::fs::remove_file(&path) {
                    Ok(()) => tracing::info!(path = %path.display(), "removed a stale snapshot file"),
                    Err(err) => {
                        tracing::warn!(path = %path.display(), %err, "cannot remove a stale snapshot file")
                    }
                }
            }
        }
    }

    /// Makes a rename or removal in the database directory durable.
    pub fn sync_dir(&self) -> std::io::Result<()> {
        File::open(self.dir.join("raft"))?.sync_all()
    }
}

/// A fresh cluster id: time and process entropy, hex.
pub fn new_cluster_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    let a = h.finish();
    let mut h2 = std::collections::hash_map::RandomState::new().build_hasher();
    h2.write_u64(a);
    format!("{:016x}{:016x}", a, h2.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_node_and_cluster_checks() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), 3).unwrap();
            assert_eq!(s.cluster_id().unwrap(), None);
            s.set_cluster_id("abc").unwrap();
            s.set_cluster_id("abc").unwrap();
            assert!(s.set_cluster_id("xyz").unwrap_err().to_string().contains("belongs to cluster abc"));
        }
        let e = Store::open(dir.path(), 4).err().unwrap().to_string();
        assert!(e.contains("belongs to node 3"), "{e}");
        {
            let s = Store::open(dir.path(), 3).unwrap();
            assert_eq!(s.cluster_id().unwrap().as_deref(), Some("abc"));
            s.meta.insert(FORMAT_KEY, &99u32.to_be_bytes()).unwrap();
            s.sync().unwrap();
        }
        let e = Store::open(dir.path(), 3).err().unwrap().to_string();
        assert!(e.contains("format 99"), "{e}");
        assert_ne!(new_cluster_id(), new_cluster_id());
    }
}
