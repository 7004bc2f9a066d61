//! The deterministic simulation in CI: a fixed set of seeds, each a stream of signed orders,
//! cancels, hostile inputs and L1 deposits with crashes and torn WAL tails, runs without a
//! violation. (The canary build that shows the simulator can fail runs from `.ci/run`:
//! `cargo run -p optio --features canary -- sim ... --expect-violation`.)

use std::process::Command;

#[test]
fn fixed_seeds_run_without_a_violation() {
    let out = Command::new(env!("CARGO_BIN_EXE_optio"))
        .args([
            "sim",
            "--seed",
            "1",
            "--seeds",
            "4",
            "--ops",
            "1500",
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
        text.contains("all 4 seeds x 1500 inputs: no violation"),
        "{text}"
    );
    // Faults were injected: the line reports crashes and torn tails.
    assert!(!text.contains("(0 crashes"), "{text}");
}
