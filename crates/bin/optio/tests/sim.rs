//! The deterministic simulation in CI: a fixed set of seeds, each a stream of signed orders,
//! cancels, hostile inputs, oracle updates with stalls and jumps, liquidation bids, L1 deposits,
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

#[test]
fn fixed_seeds_run_without_a_violation() {
    let out = Command::new(env!("CARGO_BIN_EXE_optio"))
        .args([
            "sim",
            "--seed",
            "1",
            "--seeds",
            "6",
            "--ops",
            "3000",
            "--crash-every",
            "250",
        ])
        .output()
        .expect("optio sim runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("all 6 seeds x 3000 inputs: no violation"),
        "{text}"
    );
    for label in [
        "hostile refused",
        "liquidation bids filled",
        "jumps",
        "settlement prices",
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
