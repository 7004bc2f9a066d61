//! Tree nodes (and the settlement ledger's records) persisted in one `redb` file: the trees
//! compute, this store keeps their nodes. Every tree has its own namespace in the file (the
//! accounts tree, the instruments tree, one positions tree per account). Writes gather in
//! memory and reach the file in one transaction at `commit`: one fsync per batch, atomic (after
//! a crash the file holds the state of the last committed batch, never half of one).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::poseidon::{Fr, from_bytes, to_bytes};
use crate::smt::NodeStore;

const NODES: TableDefinition<u128, [u8; 32]> = TableDefinition::new("nodes");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const ACCOUNTS: TableDefinition<u32, &[u8]> = TableDefinition::new("accounts");
const INSTRUMENTS: TableDefinition<u32, &[u8]> = TableDefinition::new("instruments");
/// The batcher's signed orders that may still fill (`auth::Orders`), by order id.
const ORDERS: TableDefinition<u64, &[u8]> = TableDefinition::new("orders");

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database.
    #[error("store: {0}")]
    Db(String),
    /// A stored value does not decode, or the stored root is not what the stored nodes give.
    #[error("store: corrupt ({0})")]
    Corrupt(&'static str),
}

fn db_err<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

/// Records to write with the nodes at a commit.
#[derive(Debug, Default)]
pub struct Records {
    /// Meta values by name.
    pub meta: Vec<(&'static str, Vec<u8>)>,
    /// Account records by id.
    pub accounts: Vec<(u32, Vec<u8>)>,
    /// Instrument records by id.
    pub instruments: Vec<(u32, Vec<u8>)>,
    /// Order authorizations by order id (`None`: removed).
    pub orders: Vec<(u64, Option<Vec<u8>>)>,
}

struct Shared {
    db: Database,
    /// Written since the last commit (`None`: removed).
    pending: Mutex<BTreeMap<u128, Option<Fr>>>,
    /// Read failures, reported at the next commit (reads cannot return errors).
    failed: Mutex<Option<String>>,
}

/// One tree's view of the store (cheap to clone; clones share the file and pending writes).
#[derive(Clone)]
pub struct RedbStore {
    shared: Arc<Shared>,
    namespace: u32,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedbStore(namespace {})", self.namespace)
    }
}

impl RedbStore {
    /// Opens (or creates) the store at `path`, namespace 0.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(NODES).map_err(db_err)?;
        txn.open_table(META).map_err(db_err)?;
        txn.open_table(ACCOUNTS).map_err(db_err)?;
        txn.open_table(INSTRUMENTS).map_err(db_err)?;
        txn.open_table(ORDERS).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(Self {
            shared: Arc::new(Shared {
                db,
                pending: Mutex::new(BTreeMap::new()),
                failed: Mutex::new(None),
            }),
            namespace: 0,
        })
    }

    /// The same file under another namespace.
    pub fn namespace(&self, namespace: u32) -> Self {
        Self {
            shared: self.shared.clone(),
            namespace,
        }
    }

    fn key(&self, height: u8, index: u64) -> u128 {
        (u128::from(self.namespace) << 72) | (u128::from(height) << 64) | u128::from(index)
    }

    /// Writes every namespace's nodes since the last commit and `records` in one durable
    /// transaction.
    pub fn commit(&self, records: &Records) -> Result<(), StoreError> {
        if let Some(e) = self
            .shared
            .failed
            .lock()
            .map_err(|_| StoreError::Corrupt("lock"))?
            .take()
        {
            return Err(StoreError::Db(e));
        }
        let mut pending = self
            .shared
            .pending
            .lock()
            .map_err(|_| StoreError::Corrupt("lock"))?;
        let txn = self.shared.db.begin_write().map_err(db_err)?;
        {
            let mut nodes = txn.open_table(NODES).map_err(db_err)?;
            for (k, v) in pending.iter() {
                match v {
                    Some(v) => {
                        nodes.insert(*k, to_bytes(v)).map_err(db_err)?;
                    }
                    None => {
                        nodes.remove(*k).map_err(db_err)?;
                    }
                }
            }
            let mut meta = txn.open_table(META).map_err(db_err)?;
            for (name, value) in &records.meta {
                meta.insert(*name, value.as_slice()).map_err(db_err)?;
            }
            let mut accounts = txn.open_table(ACCOUNTS).map_err(db_err)?;
            for (id, value) in &records.accounts {
                accounts.insert(*id, value.as_slice()).map_err(db_err)?;
            }
            let mut instruments = txn.open_table(INSTRUMENTS).map_err(db_err)?;
            for (id, value) in &records.instruments {
                instruments.insert(*id, value.as_slice()).map_err(db_err)?;
            }
            let mut orders = txn.open_table(ORDERS).map_err(db_err)?;
            for (id, value) in &records.orders {
                match value {
                    Some(v) => orders.insert(*id, v.as_slice()).map_err(db_err)?,
                    None => orders.remove(*id).map_err(db_err)?,
                };
            }
        }
        txn.commit().map_err(db_err)?;
        pending.clear();
        Ok(())
    }

    /// A committed meta value.
    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.shared.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(META).map_err(db_err)?;
        Ok(table.get(name).map_err(db_err)?.map(|v| v.value().to_vec()))
    }

    /// Every committed account and instrument record, in id order.
    #[allow(clippy::type_complexity)]
    pub fn records(&self) -> Result<(Vec<(u32, Vec<u8>)>, Vec<(u32, Vec<u8>)>), StoreError> {
        Ok((self.table(ACCOUNTS)?, self.table(INSTRUMENTS)?))
    }

    /// Every committed order authorization, by order id.
    pub fn orders(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.table(ORDERS)
    }

    /// A committed table of records, in key order.
    fn table<K>(&self, def: TableDefinition<K, &[u8]>) -> Result<Vec<(K, Vec<u8>)>, StoreError>
    where
        K: redb::Key + 'static + for<'a> redb::Value<SelfType<'a> = K>,
    {
        let txn = self.shared.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(def).map_err(db_err)?;
        table
            .iter()
            .map_err(db_err)?
            .map(|r| {
                r.map(|(k, v)| (k.value(), v.value().to_vec()))
                    .map_err(db_err)
            })
            .collect()
    }

    /// Nodes written and not yet committed (all namespaces).
    pub fn pending(&self) -> usize {
        self.shared.pending.lock().map_or(0, |p| p.len())
    }

    fn read(&self, k: u128) -> Result<Option<Fr>, StoreError> {
        let txn = self.shared.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(NODES).map_err(db_err)?;
        match table.get(k).map_err(db_err)? {
            Some(v) => from_bytes(&v.value())
                .map(Some)
                .ok_or(StoreError::Corrupt("a node is not a field element")),
            None => Ok(None),
        }
    }
}

impl NodeStore for RedbStore {
    fn get(&self, height: u8, index: u64) -> Option<Fr> {
        let k = self.key(height, index);
        if let Some(v) = self
            .shared
            .pending
            .lock()
            .ok()
            .and_then(|p| p.get(&k).copied())
        {
            return v;
        }
        match self.read(k) {
            Ok(v) => v,
            Err(e) => {
                // Reported by the next commit: the batch that read it is not committed.
                if let Ok(mut f) = self.shared.failed.lock() {
                    f.get_or_insert(e.to_string());
                }
                None
            }
        }
    }

    fn put(&mut self, height: u8, index: u64, value: Option<Fr>) {
        let k = self.key(height, index);
        if let Ok(mut p) = self.shared.pending.lock() {
            p.insert(k, value);
        }
    }
}

/// Where a tree of the settlement state keeps its nodes: in memory, or in the `redb` file.
#[derive(Debug, Clone)]
pub enum TreeStore {
    /// In memory.
    Memory(BTreeMap<(u8, u64), Fr>),
    /// In the file.
    Redb(RedbStore),
}

impl Default for TreeStore {
    fn default() -> Self {
        TreeStore::Memory(BTreeMap::new())
    }
}

impl NodeStore for TreeStore {
    fn get(&self, height: u8, index: u64) -> Option<Fr> {
        match self {
            TreeStore::Memory(m) => NodeStore::get(m, height, index),
            TreeStore::Redb(r) => r.get(height, index),
        }
    }

    fn put(&mut self, height: u8, index: u64, value: Option<Fr>) {
        match self {
            TreeStore::Memory(m) => m.put(height, index, value),
            TreeStore::Redb(r) => r.put(height, index, value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smt::{SparseMerkleTree, verify};

    #[test]
    fn a_tree_on_redb_survives_reopening_and_uncommitted_writes_do_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tree.redb");
        let leaves: Vec<(u64, Fr)> = (0..300u64)
            .map(|i| (i * 7919 % 100_000, Fr::from(i + 1)))
            .collect();
        let mut memory = SparseMerkleTree::new(20);
        memory.set_many(&leaves).expect("in range");
        let committed = {
            let store = RedbStore::open(&path).expect("opens");
            let mut tree = SparseMerkleTree::with_store(20, store.namespace(7));
            tree.set_many(&leaves).expect("in range");
            // Another namespace in the same file does not disturb it.
            let mut other = SparseMerkleTree::with_store(20, store.namespace(8));
            other.set(5, Fr::from(1u64)).expect("in range");
            assert_eq!(tree.root(), memory.root());
            store
                .commit(&Records {
                    meta: vec![("batch", 1u64.to_le_bytes().to_vec())],
                    ..Records::default()
                })
                .expect("commits");
            // Written after the commit and never committed: lost, as in a crash.
            tree.set(5, Fr::from(99u64)).expect("in range");
            assert_ne!(tree.root(), memory.root());
            memory.root()
        };
        let store = RedbStore::open(&path).expect("reopens");
        let tree = SparseMerkleTree::with_store(20, store.namespace(7));
        assert_eq!(tree.root(), committed);
        assert_eq!(
            store.meta("batch").expect("reads"),
            Some(1u64.to_le_bytes().to_vec())
        );
        for (i, v) in leaves.iter().take(20) {
            let proof = tree.prove(*i).expect("in range");
            assert!(verify(committed, *v, &proof));
            assert_eq!(proof, memory.prove(*i).expect("in range"));
        }
    }
}
