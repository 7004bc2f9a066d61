//! Validity proofs of settlement batches (issue #9, the third tier of DESIGN.md): the batch
//! circuit, Groth16 over BN254 with arkworks, its witness from the settlement state, keys,
//! proofs, and the Solidity verifier generated from the verifying key.
//!
//! Owns: the circuit (`circuit`), its gadgets (`gadgets`: Poseidon and Merkle paths equal to
//! `optio_state`'s), the native side of the shared specification (`witness`), key generation,
//! proving and verification (`keys`, its group sums in `msm`), and the verifier contract
//! (`solidity`).
//! Must not: change the settlement state (it reads it), or accept a batch the circuit refuses.

pub mod circuit;
pub mod gadgets;
pub mod keys;
pub mod msm;
pub mod solidity;
pub mod witness;
pub mod worker;

pub use circuit::BatchCircuit;

/// A batch circuit's verifying key.
pub type VerifyingKey = ark_groth16::VerifyingKey<ark_bn254::Bn254>;
pub use keys::{CIRCUIT_VERSION, Keys, ProveError, prove, read_verifying_key, verify};
pub use witness::{
    BatchWitness, PublicInputs, Shape, WitnessError, data_commitment, fits, witness,
};
