//! The settlement state (issue #6): what each batch commits to L1, and what anyone can rebuild
//! from the posted data alone.
//!
//! Owns: the circom-compatible Poseidon hash over BN254 (the same hash the circuits and the L1
//! contracts use; shared vectors keep them equal), the leaf layouts, a sparse Merkle tree with
//! membership and non-membership proofs, the settlement ops derived from engine events, the
//! settlement ledger they update (all of a batch or none), the versioned data blob, the batcher
//! that cuts batches, rebuild from blobs and exit proofs, and a `redb` store for tree nodes.
//! Must not: run the engine (it consumes the engine's events) or block it.

pub mod auth;
pub mod batcher;
pub mod blob;
pub mod checkpoint;
pub mod leaf;
pub mod ledger;
pub mod ops;
pub mod poseidon;
pub mod smt;
pub mod store;

pub use batcher::{
    Batch, BatchHeader, Batcher, Capacity, Withdrawal, blob_files, flat_for, money_out_of, rebuild,
    rebuild_after, withdrawals, withdrawals_hash,
};
pub use blob::{BlobError, decode, encode};
pub use ledger::{
    ExitProof, Pending, SettlementState, StateError, close_cash, liquidation_rounding,
};
pub use ops::{Op, ops_from};
pub use poseidon::{Fr, hash1, hash2, hash4};
pub use smt::{Node, NodeStore, Proof, SparseMerkleTree, sparse_nodes, verify};
pub use store::{RedbStore, StoreError};
