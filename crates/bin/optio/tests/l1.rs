//! The devnet posts its batches to L1: against anvil (from npm) with the contracts deployed, the
//! node's first batch is committed on chain with the root its header names, and the watchtower's
//! check from L1 alone agrees.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alloy::primitives::U256;
use alloy::providers::Provider;

const KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_devnet_commits_its_batches_on_l1() {
    let anvil = optio_contracts::Anvil::start().expect("anvil");
    optio_contracts::forge_build().expect("forge build");
    let provider = optio_settler::connect(&anvil.url, KEY).expect("provider");
    let operator = provider.get_accounts().await.expect("accounts")[0];
    let genesis = U256::from_be_bytes(optio_state::poseidon::to_bytes(
        &optio_state::SettlementState::new().root(),
    ));
    let d = optio_settler::deploy(&provider, operator, genesis, 3_600, 6 * 3_600, U256::ZERO)
        .await
        .expect("deploys");

    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = Command::new(env!("CARGO_BIN_EXE_optio"))
        .args([
            "devnet",
            "--no-flow",
            "--batch-age-ms",
            "100",
            "--listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(dir.path())
        .args(["--l1-rpc", &anvil.url, "--rollup", &d.rollup.to_string()])
        .env("OPTIO_L1_KEY", KEY)
        .stdout(Stdio::piped())
        .spawn()
        .expect("devnet starts");
    let lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});

    let settler =
        optio_settler::Settler::new(provider.clone(), d.rollup, &dir.path().join("batches"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while settler.committed().await.expect("reads") < 1 {
        assert!(
            Instant::now() < deadline,
            "no batch reached L1 within a minute"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = node.kill();
    let _ = node.wait();
    let header: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("batches/00000001.json")).expect("header"),
    )
    .expect("JSON");
    let root: U256 = header["new_root"]
        .as_str()
        .expect("root")
        .parse()
        .expect("U256");
    assert_eq!(
        settler.root(1).await.expect("reads"),
        root,
        "the committed root is the batcher's"
    );
    let verdicts = optio_settler::verify_l1(&provider, d.rollup)
        .await
        .expect("verifies");
    assert!(
        !verdicts.is_empty()
            && verdicts
                .iter()
                .all(|v| matches!(v, optio_settler::Verdict::Agrees(_))),
        "{verdicts:?}"
    );
}
