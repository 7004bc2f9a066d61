//! The settlement state's hashing and tree (issue #6, first part).
//!
//! Owns: the circom-compatible Poseidon hash over BN254 (the same hash the circuits and the L1
//! contracts use; shared vectors keep them equal), field-element encodings of the values that
//! enter leaves, and a sparse Merkle tree with membership and non-membership proofs.
//! Must not: know the disk (the tree computes; a store persists, behind `NodeStore`) or the
//! engine (the batcher turns engine events into leaves).
//!
//! Not built yet: the leaf layouts (accounts, instruments, insurance), the batcher, the data
//! blob, rebuild and exit proofs, and a persistent store.

pub mod poseidon;
pub mod smt;

pub use poseidon::{Fr, hash1, hash2, hash4};
pub use smt::{NodeStore, Proof, SparseMerkleTree, verify};
