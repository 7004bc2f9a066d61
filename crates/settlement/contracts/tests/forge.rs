//! Runs the Solidity suite (unit, fuzz and invariant tests in contracts/test) with the real
//! Foundry binary; fails with the failing tests' output.

use std::process::Command;

#[test]
fn the_solidity_suite_passes() {
    let dir = optio_contracts::contracts_dir();
    let forge = optio_contracts::forge().unwrap_or_else(|| {
        panic!("Foundry is not installed: run `npm ci --prefix contracts` (see README)")
    });
    let out = Command::new(&forge)
        .arg("test")
        .current_dir(&dir)
        .env("FOUNDRY_SOLC", dir.join("tools/solc"))
        .output()
        .expect("forge runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "forge test failed:\n{text}");
    assert!(text.contains(" passed, 0 failed"), "{text}");
}
