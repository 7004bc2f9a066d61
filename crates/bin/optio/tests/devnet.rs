//! The README's first command: `optio devnet` starts its embedded L1 chain, funds its
//! participants by L1 deposits, serves live market data on loopback with marks, implied
//! volatility and Greeks from its oracle, commits its batches on its chain (which the watchtower
//! verifies from the chain alone), and stops by itself.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

mod common;

fn post(addr: &str, body: &str) -> serde_json::Value {
    common::post(addr, body).expect("the node answers")
}

#[test]
fn devnet_serves_a_live_market_and_stops_by_itself() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_optio"))
        .args([
            "devnet",
            // Proving is `tests/prove.rs`'s (keys of the devnet's shape take a minute to make).
            "--no-prove",
            "--listen",
            "127.0.0.1:0",
            "--duration-s",
            "20",
            "--batch-age-ms",
            "500",
            "--fund",
            "0x1111111111111111111111111111111111111111",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    // The embedded chain's URL and the rollup's address.
    let (chain_url, rollup) =
        common::chain_of(lines.by_ref().map_while(Result::ok)).expect("starts its embedded chain");
    let url = common::api_url(lines.by_ref().map_while(Result::ok)).expect("prints the API URL");
    let mut seen_funded = false;
    for line in lines.by_ref().map_while(Result::ok) {
        if line.contains("funded    0x1111111111111111111111111111111111111111") {
            seen_funded = true;
        }
        if line.contains("[   1s]") {
            break;
        }
    }
    assert!(seen_funded);
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    let instruments = post(
        &url,
        r#"{"jsonrpc":"2.0","id":1,"method":"public/get_instruments","params":{"currency":"BTC","kind":"option"}}"#,
    );
    let list = instruments["result"].as_array().expect("instruments");
    assert!(list.len() >= 20, "{instruments}");
    let name = list[3]["instrument_name"]
        .as_str()
        .expect("name")
        .to_owned();
    let ticker = post(
        &url,
        &format!(
            r#"{{"jsonrpc":"2.0","id":2,"method":"public/ticker","params":{{"instrument_name":"{name}"}}}}"#
        ),
    );
    assert!(ticker["result"]["mark_price"].is_string(), "{ticker}");
    assert!(
        ticker["result"]["mark_iv"]
            .as_f64()
            .is_some_and(|v| v > 0.0),
        "{ticker}"
    );
    let book = post(
        &url,
        &format!(
            r#"{{"jsonrpc":"2.0","id":3,"method":"public/get_order_book","params":{{"instrument_name":"{name}"}}}}"#
        ),
    );
    assert!(
        !book["result"]["bids"].as_array().expect("bids").is_empty(),
        "market makers quote: {book}"
    );
    // The batches reach the local chain, and intents move to committed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let metrics = common::get_text(&url, "/metrics").expect("metrics");
        let committed = metrics
            .lines()
            .find_map(|l| l.strip_prefix("optio_l1_committed_seq "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("the L1 gauge");
        if committed > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no batch committed on the local chain"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The watchtower, from the chain alone, agrees with what was committed, every fill's
    // signed orders (the makers' and the taker's sign theirs as any client does) and every mark
    // the oracle's included.
    let verify = Command::new(env!("CARGO_BIN_EXE_optio"))
        .args(["verify", "--rpc", &chain_url, "--rollup", &rollup])
        .output()
        .expect("optio verify runs");
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success()
            && text.contains("committed batches verified from L1 data")
            && text.contains(
                "fills: each within what its orders' posted signatures authorize (signer, side"
            )
            && text.contains("settlement prices and marks: each signed by the oracle 0x")
            && text.contains("batch times: each at most 3600 s after and 86400 s before"),
        "{text}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // The simulated makers keep quoting at the moving marks: none of their signed orders is
    // refused (each pulls its quotes before quoting again, so a new quote never meets another
    // maker's stale one).
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let round = rest
        .iter()
        .find(|l| l.starts_with("[  11s]"))
        .expect("the 11 s line");
    assert!(round.contains("(0 refused"), "{round}");
    assert!(child.wait().expect("exits").success());
}
