//! The deterministic simulation in CI: a fixed set of seeds, each a stream of signed orders,
//! cancels, hostile inputs, oracle updates of two underlyings with stalls, jumps and scheduled
//! shocks, liquidation bids, L1 deposits,
//! forced withdrawals and forced closes, settler rounds against the embedded chain with reorgs,
//! crashes (torn WAL tails, groups lost or kept by a power loss before their fsync) and slow
//! subscribers, runs without a violation, and every kind of fault was injected. (The canary
//! build that shows the simulator can fail runs from `.ci/run`: `tools/sim-canary`.)

use std::process::Command;

/// The count printed before `label` in the simulator's summary line.
fn count(text: &str, label: &str) -> u64 {
    let summary = text
        .lines()
        .find(|l| l.starts_with("all "))
        .unwrap_or_default();
    let at = summary
        .find(&format!(" {label}"))
        .unwrap_or_else(|| panic!("no {label} in {summary}"));
    let digits: String = summary[..at]
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("{label}: {summary}"))
}

/// `optio sim` with `args`: whether it succeeded, and what it printed (stdout, then stderr).
fn sim(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_optio"))
        .arg("sim")
        .args(args)
        .output()
        .expect("optio sim runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Seed 1's run of 3,000 inputs, a crash about every 250, cut to circuit shape `shape`: every
/// batch checked against the circuit. What it printed.
fn checked_against(shape: &str) -> String {
    let (ok, text) = sim(&[
        "--seed",
        "1",
        "--ops",
        "3000",
        "--crash-every",
        "250",
        "--circuit",
        shape,
    ]);
    assert!(ok, "{text}");
    let batches = count(&text, "batches");
    assert!(batches > 0, "{text}");
    assert_eq!(
        count(&text, "checked against the circuit"),
        batches,
        "{text}"
    );
    text
}

#[test]
fn fixed_seeds_run_without_a_violation() {
    let (ok, text) = sim(&[
        "--seed",
        "1",
        "--seeds",
        "6",
        "--ops",
        "3000",
        "--crash-every",
        "250",
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("all 6 seeds x 3000 inputs: no violation"),
        "{text}"
    );
    for label in [
        "hostile refused",
        "liquidation bids filled",
        "deleverages",
        "jumps",
        "settlement prices",
        "put fills",
        "put positions settled",
        "BTC fills",
        "of BTC's",
        "fills of the Portfolio trader",
        "auctions started",
        "ended)",
        "L1 deposits",
        "forced withdrawals",
        "forced closes",
        "positions moved",
        "L1 reorgs",
        "crashes",
        "torn tails",
        "unsynced groups lost",
        "slow subscribers",
        "book changes checked",
        "batches",
    ] {
        assert!(count(&text, label) > 0, "no {label}: {text}");
    }
    // The operator deleverages by the engine's clock, the oracle's signed time: never while
    // the auction has not run its course by it (the inputs' clock sent one of these seeds'
    // deleverages early, through an oracle stall).
    assert_eq!(count(&text, "refused as early"), 0, "{text}");
}

/// A seed's run repeats exactly: the same inputs, faults and outcomes, ending on the same state
/// hash (only how far the reading subscriber got may differ).
#[test]
fn a_seed_repeats_exactly() {
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_optio"))
            .args([
                "sim",
                "--seed",
                "77",
                "--ops",
                "1500",
                "--crash-every",
                "200",
            ])
            .output()
            .expect("optio sim runs");
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let line = text
            .lines()
            .find(|l| l.starts_with("seed 77:"))
            .unwrap_or_else(|| panic!("{text}"))
            .to_owned();
        assert!(line.contains("final state 0x"), "{line}");
        // Everything but the subscriber's progress.
        let (before, after) = line.split_once(" slow subscribers, ").expect("the summary");
        let after = after
            .split_once(" book changes checked")
            .expect("the summary")
            .1;
        format!("{before}{after}")
    };
    assert_eq!(run(), run());
}

/// The shape `optio prove setup` makes keys of by default.
const DEFAULT_SHAPE: &str = "quad-16x16x16x12x4x4x2x16x8x3x4x0x2x2x4x6";

/// The node cut to a circuit shape, as `optio node --prove-keys` runs it: every batch of a
/// seed's run (crashes, liquidations, deleveraging, the put traded and its holders settled at
/// expiry, forced closes included)
/// fits the shape and its witness satisfies the circuit with the native new root.
#[test]
fn every_batch_of_a_node_cut_to_a_shape_satisfies_the_circuit() {
    let text = checked_against(DEFAULT_SHAPE);
    for label in [
        "liquidation bids filled",
        "deleverages",
        "settlement prices",
        "put fills",
        "put positions settled",
        "BTC fills",
        "of BTC's",
        "fills of the Portfolio trader",
        "positions moved",
        "crashes",
    ] {
        assert!(count(&text, label) > 0, "no {label}: {text}");
    }
}

/// A shape smaller than the run needs (a settlement pays two positions, one settles a batch,
/// four mark slots, one for each instrument, eight op slots), with four read-only position
/// registers: the engine's limits for it settle the put's expiry in
/// parts at later oracle updates, and cut more batches. Every batch satisfies the circuit (the
/// positions a batch only prices in read-only registers), and
/// every part's price posts the oracle's signature of it (the watchtower's check at the end;
/// it found that a later part posted none, so that anyone could have reverted the honest batch
/// and slashed the operator).
#[test]
fn a_node_cut_to_a_small_shape_settles_in_parts_every_batch_proven_and_attested() {
    let text = checked_against("quad-8x8x8x4x2x2x1x2x4x3x2x0x2x2x4x6x4");
    // More positions settled than a settlement slot pays: in parts.
    assert!(count(&text, "put positions settled") > 2, "{text}");
    assert!(
        count(&text, "positions in read-only registers") > 0,
        "{text}"
    );
}

/// The check can fail: the same node without the shape's limits and cuts (as a node without
/// prover keys runs) cuts a batch the circuit does not hold, and the check names it.
#[test]
fn a_node_not_cut_to_the_shape_makes_a_batch_the_check_refuses() {
    let (ok, text) = sim(&[
        "--seed",
        "1",
        "--ops",
        "500",
        "--crash-every",
        "250",
        "--circuit",
        DEFAULT_SHAPE,
        "--uncut",
        "--expect-violation",
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("violation found, as expected") && text.contains("does not fit the circuit"),
        "{text}"
    );
    // A name that is no shape's is refused before anything runs.
    let (ok, text) = sim(&["--circuit", "quad-16x16"]);
    assert!(
        !ok && text.contains("quad-16x16 is not a circuit shape's name"),
        "{text}"
    );
    // So is one whose settlements could pay no part (one holder a slot): the seeds above found
    // that its node cuts a batch no proof holds at the put's expiry.
    let (ok, text) = sim(&["--circuit", "quad-4x4x4x2x1x1x1x1x1x3x1x2x1x1x2x2"]);
    assert!(
        !ok && text.contains("shape_unusable: a settlement slot"),
        "{text}"
    );
}
