//! Unmodified `ccxt.derive` (Python, ccxt 4.5.90) against a live devnet: load markets, time,
//! accounts, ticker and Greeks, place / list / fetch / cancel, take liquidity, trades,
//! positions, balance, a tampered order refused; every order signature ccxt sent is re-checked
//! with eth-account. Needs `pip install -r tools/ccxt/requirements.txt` (`.ci/run` does it).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn ccxt_derive_trades_on_the_devnet() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..");
    let mut node = Command::new(env!("CARGO_BIN_EXE_optio"))
        .args([
            "devnet",
            "--no-l1",
            "--listen",
            "127.0.0.1:0",
            "--duration-s",
            "60",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("devnet starts");
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let mut url = String::new();
    let mut key = String::new();
    let mut address = String::new();
    for line in lines.by_ref().map_while(Result::ok) {
        if let Some(u) = line.trim().strip_prefix("JSON-RPC  http://") {
            url = format!("http://{}", u.trim_end_matches("/api/v2"));
        }
        if line.contains("demo key") {
            let words: Vec<&str> = line.split_whitespace().collect();
            key = words[2].to_owned();
            address = words[4].to_owned();
        }
        if line.contains("[   1s]") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    // Let the market makers quote for a moment.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let out = Command::new("python3")
        .arg(root.join("tools/ccxt/flow.py"))
        .args([&url, &key, &address])
        .output()
        .expect("python3 runs");
    node.kill().expect("stop the devnet");
    let _ = node.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ccxt flow ok"),
        "ccxt flow failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
