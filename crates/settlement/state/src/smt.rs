//! A sparse Merkle tree of arity 4 over Poseidon(4).
//!
//! A tree of `bits` index bits (even) has `bits / 2` levels. Convention (the circuits and
//! Solidity use the same): at level i the node's slot among its parent's four children is
//! `(index >> 2i) & 3`, and `parent = H(c0, c1, c2, c3)`; a proof lists, per level, the three
//! other children in slot order. An empty leaf is zero; an empty subtree of height h hashes to
//! `Z[h]` with `Z[0] = 0`, `Z[h+1] = H(Z[h], Z[h], Z[h], Z[h])`, so only non-empty nodes are
//! stored. Updates touch one path (O(levels) hashes). Four children per node halve the levels
//! of a binary tree for a hash about 1.25 times the cost, so a path costs about 0.62 of the
//! binary one in a circuit (and 0.8 natively).

use std::collections::BTreeMap;

use crate::poseidon::{Fr, hash4};

/// Children per node.
const ARITY: usize = 4;

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
    /// Sibling hashes, leaf level first, three per level (the other children in slot order).
    pub siblings: Vec<Fr>,
}

/// Why a tree operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// The index does not fit the tree's depth.
    #[error("leaf index out of range for the tree depth")]
    IndexOutOfRange,
}

/// A sparse Merkle tree of `bits` index bits (even, at most 64): `bits / 2` levels.
#[derive(Debug, Clone)]
pub struct SparseMerkleTree<S: NodeStore = BTreeMap<(u8, u64), Fr>> {
    bits: u8,
    /// `Z[0..=levels]`: the number of levels is `empty.len() - 1`.
    empty: Vec<Fr>,
    store: S,
}

impl SparseMerkleTree {
    /// An empty in-memory tree.
    pub fn new(bits: u8) -> Self {
        Self::with_store(bits, BTreeMap::new())
    }
}

/// Hashes of empty subtrees of height 0..=levels.
pub fn empty_hashes(levels: u8) -> Vec<Fr> {
    let mut z = vec![Fr::from(0u64)];
    for h in 0..levels as usize {
        z.push(hash4(z[h], z[h], z[h], z[h]));
    }
    z
}

/// The root of an empty tree of `bits` index bits.
pub fn empty_root(bits: u8) -> Fr {
    empty_hashes(bits / 2)[bits as usize / 2]
}

/// The parent of four children.
fn parent(children: [Fr; ARITY]) -> Fr {
    hash4(children[0], children[1], children[2], children[3])
}

/// The parent of `node` in slot `slot` (0..4) with the three other children `siblings` (in
/// slot order).
fn climb(node: Fr, slot: usize, siblings: &[Fr]) -> Fr {
    let mut children = [Fr::from(0u64); ARITY];
    let mut others = siblings.iter();
    for (c, child) in children.iter_mut().enumerate() {
        *child = if c == slot {
            node
        } else {
            *others.next().expect("three siblings")
        };
    }
    parent(children)
}

impl<S: NodeStore> SparseMerkleTree<S> {
    /// A tree over `store`.
    pub fn with_store(bits: u8, store: S) -> Self {
        assert!(
            (2..=64).contains(&bits) && bits.is_multiple_of(2),
            "index bits: even, 2..=64"
        );
        Self {
            bits,
            empty: empty_hashes(bits / 2),
            store,
        }
    }

    fn levels(&self) -> u8 {
        self.bits / 2
    }

    fn node(&self, height: u8, index: u64) -> Fr {
        self.store
            .get(height, index)
            .unwrap_or(self.empty[height as usize])
    }

    fn check(&self, index: u64) -> Result<(), TreeError> {
        if self.bits < 64 && index >> self.bits != 0 {
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
        self.node(self.levels(), 0)
    }

    /// The leaf at `index` (zero if empty).
    pub fn leaf(&self, index: u64) -> Result<Fr, TreeError> {
        self.check(index)?;
        Ok(self.node(0, index))
    }

    fn children(&self, height: u8, parent: u64) -> [Fr; ARITY] {
        std::array::from_fn(|c| self.node(height, (parent << 2) | c as u64))
    }

    /// Sets a leaf and rehashes its path.
    pub fn set(&mut self, index: u64, leaf: Fr) -> Result<(), TreeError> {
        self.check(index)?;
        let mut value = leaf;
        let mut i = index;
        for h in 0..self.levels() {
            let stored = (value != self.empty[h as usize]).then_some(value);
            self.store.put(h, i, stored);
            value = parent(self.children(h, i >> 2));
            i >>= 2;
        }
        let stored = (value != self.empty[self.levels() as usize]).then_some(value);
        self.store.put(self.levels(), 0, stored);
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
        for h in 0..self.levels() {
            for (i, v) in &level {
                let stored = (*v != self.empty[h as usize]).then_some(*v);
                self.store.put(h, *i, stored);
            }
            let parents: Vec<u64> = {
                let mut p: Vec<u64> = level.keys().map(|i| i >> 2).collect();
                p.dedup();
                p
            };
            let this = &*self;
            let hash_parent = |p: &u64| (*p, parent(this.children(h, *p)));
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
            let stored = (*v != self.empty[self.levels() as usize]).then_some(*v);
            self.store.put(self.levels(), *i, stored);
        }
        Ok(())
    }

    /// The proof for `index`.
    pub fn prove(&self, index: u64) -> Result<Proof, TreeError> {
        self.check(index)?;
        Ok(Proof {
            index,
            siblings: self.siblings_from(0, index),
        })
    }

    /// The siblings of node `index` at height `height` (in levels) up to the root, three per
    /// level: the path above a subtree.
    pub fn siblings_from(&self, height: u8, index: u64) -> Vec<Fr> {
        let mut siblings = Vec::with_capacity(3 * (self.levels() - height) as usize);
        let mut i = index;
        for h in height..self.levels() {
            let slot = (i & 3) as usize;
            let children = self.children(h, i >> 2);
            siblings.extend(
                children
                    .iter()
                    .enumerate()
                    .filter(|(c, _)| *c != slot)
                    .map(|(_, v)| *v),
            );
            i >>= 2;
        }
        siblings
    }

    /// Stores the path of `proof` (its leaf `leaf` and the siblings at every level), as another
    /// tree proved it: a tree seeded with the paths of some leaves can update those leaves and
    /// prove them again without holding the rest.
    pub fn seed(&mut self, leaf: Fr, proof: &Proof) -> Result<(), TreeError> {
        self.check(proof.index)?;
        for (h, three) in proof.siblings.chunks(3).enumerate() {
            let at = proof.index >> (2 * h);
            let others = (0..ARITY as u64).filter(|c| *c != at & 3);
            for (c, sibling) in others.zip(three) {
                self.store.put(h as u8, (at & !3) | c, Some(*sibling));
            }
        }
        self.store.put(0, proof.index, Some(leaf));
        Ok(())
    }
}

/// The root above `node` at `index` (its index at its own height), through `siblings` (three
/// per level).
fn root_from(node: Fr, index: u64, siblings: &[Fr]) -> Fr {
    siblings.chunks(3).enumerate().fold(node, |value, (h, s)| {
        climb(value, ((index >> (2 * h)) & 3) as usize, s)
    })
}

/// Whether `leaf` sits at `proof.index` under `root` (a zero leaf proves absence).
pub fn verify(root: Fr, leaf: Fr, proof: &Proof) -> bool {
    proof.siblings.len().is_multiple_of(3) && root_from(leaf, proof.index, &proof.siblings) == root
}

/// A non-empty node of a sparse tree with its children: what L1 builds, node by node, to know
/// a tree's root without one call that rebuilds it all (`OptioTrees.buildPositions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Height above the leaves (1: the children are leaves).
    pub height: u8,
    /// Index among the nodes of its height.
    pub index: u64,
    /// The four children in slot order (an empty child is the empty subtree's hash).
    pub children: [Fr; ARITY],
    /// `H(children)`.
    pub hash: Fr,
}

/// Every non-empty node of a tree of `bits` index bits holding exactly `leaves` (indices
/// strictly increasing, leaves nonzero), bottom up: each node after its children, the last the
/// root (none for an empty tree).
pub fn sparse_nodes(bits: u8, leaves: &[(u64, Fr)]) -> Result<Vec<Node>, TreeError> {
    let levels = bits / 2;
    if leaves.iter().any(|&(i, _)| bits < 64 && i >> bits != 0) {
        return Err(TreeError::IndexOutOfRange);
    }
    debug_assert!(
        leaves.windows(2).all(|w| w[0].0 < w[1].0),
        "indices increase"
    );
    let empty = empty_hashes(levels);
    let mut level: Vec<(u64, Fr)> = leaves.to_vec();
    let mut nodes = Vec::new();
    for height in 1..=levels {
        let z = empty[height as usize - 1];
        let mut up = Vec::with_capacity(level.len().div_ceil(ARITY));
        let mut k = 0;
        while k < level.len() {
            let index = level[k].0 >> 2;
            let mut children = [z; ARITY];
            while k < level.len() && level[k].0 >> 2 == index {
                children[(level[k].0 & 3) as usize] = level[k].1;
                k += 1;
            }
            let hash = parent(children);
            nodes.push(Node {
                height,
                index,
                children,
                hash,
            });
            up.push((index, hash));
        }
        level = up;
    }
    Ok(nodes)
}
