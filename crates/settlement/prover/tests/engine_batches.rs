//! The circuit against batches the real engine produced: random histories (options and a
//! perpetual, oracle updates, orders, L1 deposits and withdrawals, liquidations, expiry and
//! settlement) run through the engine and the batcher; every batch whose ops the circuit covers
//! satisfies it with the batcher's new root, and the others are named (op type or size).

#[path = "../../state/tests/support/mod.rs"]
mod support;

use optio_prover::keys::check;
use optio_prover::{Shape, WitnessError, witness};
use optio_state::{SettlementState, decode};

const SHAPE: Shape = Shape {
    slots: 16,
    accounts: 16,
    positions: 24,
    instruments: 8,
    listings: 16,
    expiries: 8,
    settlements: 3,
    holders: 16,
    marks: 8,
    risk_chunks: 11,
};

#[test]
fn covered_engine_batches_satisfy_the_circuit_with_the_batchers_roots() {
    let (mut covered, mut uncovered, mut other) = (0, 0, Vec::new());
    let mut kinds = std::collections::BTreeSet::new();
    for seed in 0..3u64 {
        let inputs = support::history(seed, 400);
        let (batches, _, _) = support::run(&inputs, 12);
        let mut state = SettlementState::new();
        for b in &batches {
            let (_, ops) = decode(&b.blob).expect("decodes");
            match witness(&state, &ops, SHAPE) {
                Ok(w) => {
                    assert_eq!(
                        w.public.new_root, b.header.new_root,
                        "seed {seed} batch {}",
                        b.header.number
                    );
                    check(&w)
                        .unwrap_or_else(|e| panic!("seed {seed} batch {}: {e}", b.header.number));
                    covered += 1;
                    for op in &ops {
                        kinds.insert(
                            format!("{:?}", op)
                                .split([' ', '{'])
                                .next()
                                .unwrap_or("")
                                .to_owned(),
                        );
                    }
                }
                Err(WitnessError::Unsupported { what, .. }) => {
                    uncovered += 1;
                    kinds.insert(format!("(uncovered) {what}"));
                }
                Err(e) => {
                    let at = match e {
                        WitnessError::Invalid(i) => format!(
                            " ({:?} after {:?})",
                            ops[i],
                            &ops[..i].iter().rev().take(3).collect::<Vec<_>>()
                        ),
                        _ => String::new(),
                    };
                    other.push(format!("seed {seed} batch {}: {e}{at}", b.header.number))
                }
            }
            state.apply_batch(&ops).expect("applies");
            state.commit();
        }
    }
    println!("covered {covered}, uncovered {uncovered}, other {other:?}; op kinds {kinds:?}");
    assert!(covered >= 20, "only {covered} batches covered");
    for k in [
        "Fill",
        "Mark",
        "SettlePosition",
        "ListInstrument",
        "L1Deposit",
    ] {
        assert!(kinds.contains(k), "no covered batch has a {k}: {kinds:?}");
    }
}
