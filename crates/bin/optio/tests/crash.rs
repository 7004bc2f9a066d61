//! kill -9 during bursts of signed orders, again and again: after every restart each
//! acknowledged intent is in the log at the sequence number its receipt names, a replayed
//! acknowledged order is refused (nonces survive restarts), and the node's state hash equals a
//! replay of the log from scratch.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use optio_gateway::client::{OrderRequest, order_params};
use optio_types::EngineLimits;
use rand::{Rng, SeedableRng};
use serde_json::Value;

mod common;
use common::{get, post};

/// Starts the node on `dir`; returns it, its address and the demo subaccount.
fn start(dir: &Path) -> (Child, String, u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_optio"))
        .args([
            "devnet",
            "--no-l1",
            "--no-flow",
            "--batch-age-ms",
            "50",
            "--listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (mut url, mut subaccount) = (String::new(), 0);
    for line in lines.by_ref().map_while(Result::ok) {
        if let Some(u) = line.trim().strip_prefix("JSON-RPC  http://") {
            url = u.trim_end_matches("/api/v2").to_owned();
        }
        if line.contains("demo key") {
            subaccount = line
                .rsplit(' ')
                .next()
                .and_then(|s| s.parse().ok())
                .expect("demo subaccount");
        }
        if line.contains("instruments:") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    (child, url, subaccount)
}

#[test]
fn kill_9_during_bursts_loses_no_acknowledged_intent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = secp256k1::SecretKey::from_secret_bytes([0xde; 32]).expect("demo key");
    let config = optio_gateway::Config::default();
    // (seq, intent hash, request, receipt) of every acknowledged order.
    type Acked = Vec<(u64, String, Value, Value)>;
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    // Dated nonces (the node refuses others), 400 a round.
    let mut nonce = optio_gateway::dated_nonce(optio_gateway::now_ms(), 0);
    for round in 0..6 {
        let (mut child, url, subaccount) = start(dir.path());
        let instruments = post(&url, r#"{"jsonrpc":"2.0","id":1,"method":"public/get_instruments","params":{"currency":"BTC","kind":"future"}}"#).expect("instruments");
        let perp = instruments["result"][0]["instrument_id"]
            .as_u64()
            .expect("perp id") as u32;
        let sender = {
            let (acked, url) = (acked.clone(), url.clone());
            let start_nonce = nonce;
            std::thread::spawn(move || {
                for i in 0..400u64 {
                    let (direction, price) = if i % 2 == 0 {
                        ("buy", format!("{}", 80_000 + i))
                    } else {
                        ("sell", format!("{}", 100_000 + i))
                    };
                    let request = OrderRequest {
                        subaccount,
                        instrument_id: perp,
                        instrument_name: "BTC-PERPETUAL",
                        direction,
                        price: &price,
                        amount: "0.01",
                        max_fee: "100",
                        nonce: start_nonce + i,
                        expiry: optio_gateway::now_ms() / 1_000 + 3_600,
                        time_in_force: "gtc",
                    };
                    let params =
                        order_params(&key, config.chain_id, config.verifying_contract, &request)
                            .expect("signs");
                    let body = serde_json::json!({"jsonrpc": "2.0", "id": i, "method": "private/order", "params": params}).to_string();
                    let Some(reply) = post(&url, &body) else {
                        break;
                    };
                    let receipt = reply["result"]["receipt"].clone();
                    let receipt = if receipt.is_null() {
                        reply["error"]["data"].clone()
                    } else {
                        receipt
                    };
                    if let (Some(seq), Some(hash)) =
                        (receipt["seq"].as_u64(), receipt["intent_hash"].as_str())
                    {
                        acked.lock().expect("lock").push((
                            seq,
                            hash.to_owned(),
                            body.parse().expect("json"),
                            receipt.clone(),
                        ));
                    }
                }
            })
        };
        nonce += 400;
        std::thread::sleep(Duration::from_millis(rng.random_range(150..600)));
        child.kill().expect("kill -9");
        child.wait().expect("reaped");
        sender.join().expect("sender stops when the node dies");
        assert!(
            !acked.lock().expect("lock").is_empty() || round > 0,
            "the burst got acknowledgements before the kill"
        );
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() > 50, "only {} acknowledgements", acked.len());
    // Restart once more: replayed acknowledged orders are refused, the state matches the log.
    let (mut child, url, _) = start(dir.path());
    for (_, _, body, _) in acked.iter().step_by(97) {
        let reply = post(&url, &body.to_string()).expect("reply");
        assert_eq!(
            reply["error"]["code"], 6_003,
            "a replayed acknowledged order must be refused: {reply}"
        );
    }
    // Intent statuses were rebuilt from the log: each acknowledged intent is known, at its seq.
    for (seq, hash, _, _) in acked.iter().step_by(53) {
        let status = post(&url, &format!(r#"{{"jsonrpc":"2.0","id":1,"method":"public/get_intent_status","params":{{"intent_hash":"{hash}"}}}}"#)).expect("reply");
        assert_eq!(status["result"]["seq"].as_u64(), Some(*seq), "{status}");
    }
    let health = get(&url, "/health").expect("health");
    child.kill().expect("kill");
    child.wait().expect("reaped");
    let records = optio_sequencer::log::read(dir.path()).expect("log reads");
    let mut engine = optio_engine::Engine::new(EngineLimits::default());
    let mut events = Vec::new();
    for (seq, input, intent) in &records {
        let _ = engine.apply(input, &mut events);
        events.clear();
        let intent = intent.as_deref().and_then(optio_sequencer::Intent::decode);
        let hash: String = optio_sequencer::intent_hash(input, intent.as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if let Some((_, want, _, _)) = acked.iter().find(|(s, _, _, _)| s == seq) {
            assert_eq!(
                &format!("0x{hash}"),
                want,
                "acknowledged intent at seq {seq} differs in the log"
            );
        }
    }
    // Every acknowledgement carries a receipt sealed by the sequencer's key (the same across
    // restarts).
    let key = health["sequencer_public_key"].as_str().and_then(|k| {
        let bytes: Option<Vec<u8>> = (2..k.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(k.get(i..i + 2)?, 16).ok())
            .collect();
        secp256k1::PublicKey::from_slice(&bytes?).ok()
    });
    let key = key.expect("health publishes the sequencer key");
    for (seq, _, _, receipt) in &acked {
        let parsed = optio_gateway::client::parse_receipt(receipt)
            .unwrap_or_else(|| panic!("malformed receipt {receipt}"));
        assert!(parsed.verify(&key), "receipt for seq {seq} does not verify");
    }
    for (seq, _, _, _) in &acked {
        assert!(
            *seq <= records.len() as u64,
            "acknowledged seq {seq} missing from a log of {}",
            records.len()
        );
    }
    let replayed: String = engine
        .state_hash()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(health["state_hash"].as_str(), Some(replayed.as_str()));
    // Settlement survived the kills: the blobs rebuild to the roots the batcher committed (every
    // batch, across restarts between and within batches), and the rebuilt state equals the
    // engine replayed to the last batched input.
    let rebuilt = Command::new(env!("CARGO_BIN_EXE_optio"))
        .args(["rebuild", "--batches"])
        .arg(dir.path().join("batches"))
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&rebuilt.stdout);
    assert!(
        rebuilt.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    assert!(
        text.contains("= committed") && !text.contains("DIFFERS"),
        "{text}"
    );
    let (state, batches, last_seq) =
        optio_gateway::batching::rebuild_dir(&dir.path().join("batches"), |_| {})
            .expect("rebuilds");
    assert!(batches >= 2, "only {batches} batches");
    let mut at_batch = optio_engine::Engine::new(EngineLimits::default());
    for (_, input, _) in records.iter().take_while(|(seq, _, _)| *seq <= last_seq) {
        let _ = at_batch.apply(input, &mut events);
        events.clear();
    }
    assert_eq!(state.diff_engine(&at_batch.canonical()), None);
}
