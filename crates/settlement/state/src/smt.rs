//! A sparse Merkle tree of fixed depth over Poseidon(2).
//!
//! Convention (the circuits and Solidity use the same): at level i, with `bit = (index >> i) & 1`,
//! `node = bit == 0 ? H(node, sibling) : H(sibling, node)`. An empty leaf is zero; an empty
//! subtree of height h hashes to `Z[h]` with `Z[0] = 0`, `Z[h+1] = H(Z[h], Z[h])`, so only
//! non-empty nodes are stored. Updates touch one path (O(depth) hashes).

use std::collections::BTreeMap;

use crate::poseidon::{Fr, hash2};

/// Below this many nodes in a level, hashing stays on one thread.
const PARALLEL_MIN: usize = 256;

/// Where non-empty nodes live: `(height, index at that height) -> hash`. The tree computes;
/// implementations of this trait persist.
pub trait NodeStore {
    /// A stored node.
    fn get(&self, height: u8, index: u64) -> Option<Fr>;
    /// Stores a node (or removes it when it equals the empty subtree's hash).
    fn put(&mut self, height: u8, index: u64, value: Option<Fr>);
}

impl NodeStore for BTreeMap<(u8, u64), Fr> {
    fn get(&self, height: u8, index: u64) -> Option<Fr> {
        BTreeMap::get(self, &(height, index)).copied()
    }
    fn put(&mut self, height: u8, index: u64, value: Option<Fr>) {
        match value {
            Some(v) => {
                self.insert((height, index), v);
            }
            None => {
                self.remove(&(height, index));
            }
        }
    }
}

/// A membership (or, for a zero leaf, non-membership) proof: the siblings from the leaf up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// Leaf index.
    pub index: u64,
    /// Sibling hashes, leaf level first.
    pub siblings: Vec<Fr>,
}

/// Why a tree operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// The index does not fit the tree's depth.
    #[error("leaf index out of range for the tree depth")]
    IndexOutOfRange,
}

/// A sparse Merkle tree of `depth` levels (at most 64).
#[derive(Debug, Clone)]
pub struct SparseMerkleTree<S: NodeStore = BTreeMap<(u8, u64), Fr>> {
    depth: u8,
    empty: Vec<Fr>,
    store: S,
}

impl SparseMerkleTree {
    /// An empty in-memory tree.
    pub fn new(depth: u8) -> Self {
        Self::with_store(depth, BTreeMap::new())
    }
}

/// Hashes of empty subtrees of height 0..=depth.
pub fn empty_hashes(depth: u8) -> Vec<Fr> {
    let mut z = vec![Fr::from(0u64)];
    for h in 0..depth as usize {
        z.push(hash2(z[h], z[h]));
    }
    z
}

impl<S: NodeStore> SparseMerkleTree<S> {
    /// A tree over `store`.
    pub fn with_store(depth: u8, store: S) -> Self {
        assert!((1..=64).contains(&depth), "depth 1..=64");
        Self {
            depth,
            empty: empty_hashes(depth),
            store,
        }
    }

    fn node(&self, height: u8, index: u64) -> Fr {
        self.store
            .get(height, index)
            .unwrap_or(self.empty[height as usize])
    }

    fn check(&self, index: u64) -> Result<(), TreeError> {
        if self.depth < 64 && index >> self.depth != 0 {
            Err(TreeError::IndexOutOfRange)
        } else {
            Ok(())
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, to commit it.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// The root.
    pub fn root(&self) -> Fr {
        self.node(self.depth, 0)
    }

    /// The leaf at `index` (zero if empty).
    pub fn leaf(&self, index: u64) -> Result<Fr, TreeError> {
        self.check(index)?;
        Ok(self.node(0, index))
    }

    /// Sets a leaf and rehashes its path.
    pub fn set(&mut self, index: u64, leaf: Fr) -> Result<(), TreeError> {
        self.check(index)?;
        let mut value = leaf;
        let mut i = index;
        for h in 0..self.depth {
            let stored = (value != self.empty[h as usize]).then_some(value);
            self.store.put(h, i, stored);
            let sibling = self.node(h, i ^ 1);
            value = if i & 1 == 0 {
                hash2(value, sibling)
            } else {
                hash2(sibling, value)
            };
            i >>= 1;
        }
        let stored = (value != self.empty[self.depth as usize]).then_some(value);
        self.store.put(self.depth, 0, stored);
        Ok(())
    }

    /// Sets many leaves, then rehashes each touched node once, level by level (a node shared
    /// by several paths is hashed once; at each level the nodes are independent and are hashed
    /// on all cores when there are many). Later updates of one index win. Nothing changes if an
    /// index is out of range.
    pub fn set_many(&mut self, updates: &[(u64, Fr)]) -> Result<(), TreeError>
    where
        S: Sync,
    {
        for (index, _) in updates {
            self.check(*index)?;
        }
        let mut level: BTreeMap<u64, Fr> = updates.iter().copied().collect();
        for h in 0..self.depth {
            for (i, v) in &level {
                let stored = (*v != self.empty[h as usize]).then_some(*v);
                self.store.put(h, *i, stored);
            }
            let parents: Vec<u64> = {
                let mut p: Vec<u64> = level.keys().map(|i| i >> 1).collect();
                p.dedup();
                p
            };
            let this = &*self;
            let hash_parent =
                |p: &u64| (*p, hash2(this.node(h, p << 1), this.node(h, (p << 1) | 1)));
            level = if parents.len() >= PARALLEL_MIN {
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                let chunk = parents.len().div_ceil(threads);
                std::thread::scope(|scope| {
                    let handles: Vec<_> = parents
                        .chunks(chunk)
                        .map(|c| scope.spawn(move || c.iter().map(hash_parent).collect::<Vec<_>>()))
                        .collect();
                    handles
                        .into_iter()
                        .flat_map(|h| h.join().expect("hashing does not panic"))
                        .collect()
                })
            } else {
                parents.iter().map(hash_parent).collect()
            };
        }
        for (i, v) in &level {
            let stored = (*v != self.empty[self.depth as usize]).then_some(*v);
            self.store.put(self.depth, *i, stored);
        }
        Ok(())
    }

    /// The proof for `index`.
    pub fn prove(&self, index: u64) -> Result<Proof, TreeError> {
        self.check(index)?;
        let siblings = (0..self.depth)
            .map(|h| self.node(h, (index >> h) ^ 1))
            .collect();
        Ok(Proof { index, siblings })
    }
}

/// Whether `leaf` sits at `proof.index` under `root` (a zero leaf proves absence).
pub fn verify(root: Fr, leaf: Fr, proof: &Proof) -> bool {
    let mut value = leaf;
    for (h, sibling) in proof.siblings.iter().enumerate() {
        value = if (proof.index >> h) & 1 == 0 {
            hash2(value, *sibling)
        } else {
            hash2(*sibling, value)
        };
    }
    value == root
}
