//! The README's first command works: `optio demo` runs to the end and its audit passes.

use std::process::Command;

#[test]
fn demo_runs_and_audits() {
    let out = Command::new(env!("CARGO_BIN_EXE_optio"))
        .arg("demo")
        .output()
        .expect("runs the optio binary");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "TRADE BTC-27DEC24-90000-C 2 @ 2250",
        "REJECTED insufficient margin (4014)",
        "order 12 done: SelfTrade",
        "account 1: position 2 settled for 15000 USDC",
        "Full invariant audit passed",
    ] {
        assert!(text.contains(line), "demo output lacks {line:?}:\n{text}");
    }
}
