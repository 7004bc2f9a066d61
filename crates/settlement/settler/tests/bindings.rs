//! The settler's contract bindings are written by hand (`sol!` in src/lib.rs); here they are
//! held to the compiled contracts: every function and event they declare exists in the
//! contract's ABI (forge's artifact) with the same signature. A signature spells out its
//! structs' fields as tuples, so a struct that drifts (a field added on one side only) fails
//! here, and not as a revert or an undecoded log on a live chain.

use std::collections::BTreeSet;

use alloy::json_abi::JsonAbi;
use optio_settler::{Groth16Verifier, OptioJudge, OptioRollup, OptioTrees, TestUSDC};

/// The ABI forge compiled for contract `name` (in `<name>.sol`).
fn compiled(name: &str) -> JsonAbi {
    let path = optio_contracts::contracts_dir()
        .join("out")
        .join(format!("{name}.sol"))
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("an artifact");
    serde_json::from_value(json["abi"].clone()).expect("an ABI")
}

/// The bindings' signatures that contract `name`'s compiled ABI lacks.
fn missing(name: &str, functions: &[&str], events: &[&str]) -> Vec<String> {
    let abi = compiled(name);
    let have: BTreeSet<String> = abi
        .functions()
        .map(|f| f.signature())
        .chain(abi.events().map(|e| e.signature()))
        .collect();
    functions
        .iter()
        .chain(events)
        .filter(|s| !have.contains(**s))
        .map(|s| (*s).to_owned())
        .collect()
}

#[test]
fn the_bindings_match_the_compiled_contracts() {
    optio_contracts::forge_build().expect("forge build");
    let checks = [
        (
            "OptioRollup",
            OptioRollup::OptioRollupCalls::SIGNATURES,
            OptioRollup::OptioRollupEvents::SIGNATURES,
        ),
        ("OptioTrees", OptioTrees::OptioTreesCalls::SIGNATURES, &[]),
        ("OptioJudge", OptioJudge::OptioJudgeCalls::SIGNATURES, &[]),
        ("TestUSDC", TestUSDC::TestUSDCCalls::SIGNATURES, &[]),
        (
            "Groth16Verifier",
            Groth16Verifier::Groth16VerifierCalls::SIGNATURES,
            &[],
        ),
    ]
    .map(|(name, functions, events)| (name, missing(name, functions, events)));
    for (contract, missing) in &checks {
        println!("{contract}: {} declared signatures missing", missing.len());
    }
    let wrong: Vec<_> = checks.iter().filter(|(_, m)| !m.is_empty()).collect();
    assert!(
        wrong.is_empty(),
        "bindings the compiled contracts lack: {wrong:#?}"
    );
}
