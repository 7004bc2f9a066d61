//! The engine's rules version (`optio_engine::RULES`) names its results: a fingerprint of the
//! state after fixed histories sits beside it, so that a change of results that does not bump
//! the version fails here, and no node replays a log written under other rules without knowing
//! (the sequencer refuses a log recorded under other rules).

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

use optio_engine::Engine;

use crate::liquidation::{
    covers_within_one_margin_slot, cured_then_ended, liquidation_history, step,
};
use crate::model::{budgeted_limits, check_against_reference, op, test_limits};

/// The state hashes after fixed histories: the reference model's (matching, amends, cancels,
/// self-trade prevention, fill budgets) and the liquidation ones' (margin in every mode,
/// liquidations, deleveraging, deficits, expiry and settlement at the oracle's TWAP), and a
/// fixed one whose auction ends (`cured_then_ended`: the end's timing, which no random history
/// of these observes) and one whose covers and ends share a margin slot a batch
/// (`covers_within_one_margin_slot`: what an end takes of the fill budget).
fn fingerprint() -> String {
    let mut runner = TestRunner::deterministic();
    let mut hasher = blake3::Hasher::new();
    for n in 0..8u8 {
        let ops = prop::collection::vec(op(), 250)
            .new_tree(&mut runner)
            .expect("strategy")
            .current();
        let limits = if n % 2 == 1 {
            budgeted_limits(n / 2)
        } else {
            test_limits()
        };
        let mut engine = Engine::new(limits);
        let mut events = Vec::new();
        for input in check_against_reference(limits, &ops) {
            let _ = engine.apply(&input, &mut events);
        }
        hasher.update(&engine.state_hash());
    }
    for k in 0..16 {
        let steps = prop::collection::vec(step(), 80)
            .new_tree(&mut runner)
            .expect("strategy")
            .current();
        let (_, hash) = liquidation_history(&steps, k % 2 == 1).expect("history holds");
        hasher.update(&hash);
    }
    for hash in cured_then_ended()
        .into_iter()
        .chain(covers_within_one_margin_slot().1)
    {
        hasher.update(&hash);
    }
    hasher.finalize().to_hex().to_string()
}

/// A change of the fingerprint is a change of the engine's results on the same inputs (bump
/// `RULES` with the new fingerprint), or of the histories or the state's encoding alone (record
/// the new fingerprint without bumping).
#[test]
fn the_engine_rules_version_names_its_results() {
    assert_eq!(
        (optio_engine::RULES, fingerprint().as_str()),
        (
            8,
            "6bf4b1a9f895589429857dff5c63692ebe439891a49a7978904376ab1eb29ded"
        ),
        "the engine's results on the fixed histories changed: if its rules did, bump \
         optio_engine::RULES; record the new fingerprint beside it"
    );
}
