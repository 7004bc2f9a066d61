//! The batch circuit's version (`optio_prover::CIRCUIT_VERSION`) names its constraints: a
//! fingerprint of a small shape's constraint matrices (every kind of slot, register and window
//! at least once) is recorded beside it, so a change of the constraints that does not bump the
//! version fails here. Keys record the version they were made for, and a node refuses keys of
//! another (`Keys::read`).

use ark_ff::{BigInteger, PrimeField};
use ark_relations::gr1cs::{ConstraintSynthesizer, ConstraintSystem, SynthesisMode};
use optio_prover::{BatchCircuit, CIRCUIT_VERSION, Shape, witness};
use optio_state::poseidon::Fr;
use sha3::{Digest, Keccak256};

/// Two of each register, one or two of each slot and window, windows of more than one id.
const SHAPE: Shape = Shape {
    slots: 2,
    accounts: 2,
    positions: 2,
    instruments: 2,
    listings: 1,
    expiries: 1,
    settlements: 1,
    holders: 1,
    marks: 1,
    risk_chunks: 1,
    keys: 1,
    mark_window_bits: 2,
    margins: 1,
    prices: 1,
    solvency: 1,
    solvency_bits: 2,
    readonly: 0,
};

/// keccak256 over the constraint system's sizes and its matrices, entry by entry (coefficient,
/// column), row by row, in the order arkworks lays them out for a proof.
fn fingerprint(shape: Shape) -> (usize, String) {
    let cs = ConstraintSystem::<Fr>::new_ref();
    cs.set_mode(SynthesisMode::Setup);
    BatchCircuit {
        witness: witness::empty(shape),
    }
    .generate_constraints(cs.clone())
    .expect("synthesizes");
    cs.finalize();
    let mut h = Keccak256::new();
    for n in [
        cs.num_instance_variables(),
        cs.num_witness_variables(),
        cs.num_constraints(),
    ] {
        h.update((n as u64).to_le_bytes());
    }
    for (label, matrices) in cs.to_matrices().expect("matrices") {
        h.update(label.as_bytes());
        for matrix in matrices {
            h.update((matrix.len() as u64).to_le_bytes());
            for row in matrix {
                h.update((row.len() as u64).to_le_bytes());
                for (coefficient, column) in row {
                    h.update(coefficient.into_bigint().to_bytes_le());
                    h.update((column as u64).to_le_bytes());
                }
            }
        }
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    (cs.num_constraints(), hex)
}

/// `shape`'s fingerprint is the one recorded for this circuit version.
fn recorded(shape: Shape, version: u32, constraints: usize, hash: &str) {
    let (n, h) = fingerprint(shape);
    assert_eq!(
        (CIRCUIT_VERSION, n, h.as_str()),
        (version, constraints, hash),
        "the circuit's constraints changed: if they did, bump optio_prover::CIRCUIT_VERSION \
         (keys made for the old ones must be refused) and record the new fingerprint beside it"
    );
}

#[test]
fn the_circuit_version_names_its_constraints() {
    recorded(
        SHAPE,
        5,
        125_341,
        "2efb7a8c6f7f82fd3096b2b3ea0e9ae9efb15b3ae31925e386f2b183816ac6ee",
    );
}

/// The same with two read-only position registers (a shape without any lays out the circuit it
/// did before they existed: the fingerprint above did not move when they came).
#[test]
fn the_circuit_version_names_its_read_only_registers() {
    recorded(
        Shape {
            readonly: 2,
            ..SHAPE
        },
        5,
        131_940,
        "c4d90319a9182a637b79eecf94241effd17d06be49273f6f44c8d085586d63e9",
    );
}
