//! The node posts its batches to L1: against anvil (from npm) with the contracts deployed, the
//! first batch of the devnet and of a configured node is committed on chain with the root its
//! header names, and the watchtower's check from L1 alone agrees.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alloy::primitives::U256;
use alloy::providers::{DynProvider, Provider};

const KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// anvil with the contracts deployed for an empty genesis state.
async fn chain() -> (
    optio_contracts::Anvil,
    DynProvider,
    optio_settler::Deployment,
) {
    static BUILD: std::sync::Once = std::sync::Once::new();
    let anvil = optio_contracts::Anvil::start().expect("anvil");
    BUILD.call_once(|| optio_contracts::forge_build().expect("forge build"));
    let provider = optio_settler::connect(&anvil.url, KEY).expect("provider");
    let operator = provider.get_accounts().await.expect("accounts")[0];
    let genesis = U256::from_be_bytes(optio_state::poseidon::to_bytes(
        &optio_state::SettlementState::new().root(),
    ));
    let d = optio_settler::deploy(&provider, operator, genesis, 3_600, 6 * 3_600, U256::ZERO)
        .await
        .expect("deploys");
    (anvil, provider, d)
}

/// Waits until the rollup holds a batch, then checks it against the node's header and the
/// watchtower.
async fn first_batch_on_l1(
    provider: &DynProvider,
    d: &optio_settler::Deployment,
    data: &std::path::Path,
) {
    let settler = optio_settler::Settler::new(provider.clone(), d.rollup, &data.join("batches"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while settler.committed().await.expect("reads") < 1 {
        assert!(
            Instant::now() < deadline,
            "no batch reached L1 within a minute"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let header: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data.join("batches/00000001.json")).expect("header"),
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
    let verdicts = optio_settler::verify_l1(provider, d.rollup)
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

/// Starts the devnet on `dir`, posting to `rollup` on `url`; returns it and its demo subaccount.
fn start_devnet(url: &str, rollup: &str, dir: &std::path::Path) -> (std::process::Child, u32) {
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
        .arg(dir)
        .args(["--l1-rpc", url, "--rollup", rollup])
        .env("OPTIO_L1_KEY", KEY)
        .stdout(Stdio::piped())
        .spawn()
        .expect("devnet starts");
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let mut demo = None;
    for line in lines.by_ref().map_while(Result::ok) {
        if line.contains("demo key") {
            demo = line.rsplit(' ').next().and_then(|s| s.parse::<u32>().ok());
        }
        if line.contains("instruments:") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    (node, demo.expect("the devnet prints the demo subaccount"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_devnet_commits_its_batches_on_l1() {
    let (anvil, provider, d) = chain().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut node, _) = start_devnet(&anvil.url, &d.rollup.to_string(), dir.path());
    first_batch_on_l1(&provider, &d, dir.path()).await;
    let _ = node.kill();
    let _ = node.wait();
    // The watchtower's command agrees with every committed batch.
    let out = Command::new(env!("CARGO_BIN_EXE_optio"))
        .args([
            "verify",
            "--rpc",
            &anvil.url,
            "--rollup",
            &d.rollup.to_string(),
        ])
        .output()
        .expect("optio verify runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("committed batches verified from L1 data"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_node_commits_its_batches_on_l1() {
    let (anvil, provider, d) = chain().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("optio.toml");
    let data = dir.path().join("data");
    let toml = format!(
        "data = \"{}\"\nrollup = \"{}\"\n\n[[instrument]]\nname = \"BTC-PERPETUAL\"\nunderlying_cap = \"400000\"\n",
        data.display(),
        d.rollup
    );
    std::fs::write(&config, toml).expect("writes");
    let mut node = Command::new(env!("CARGO_BIN_EXE_optio"))
        .args(["node", "--config"])
        .arg(&config)
        .args(["--duration-s", "60", "--l1-rpc", &anvil.url])
        .env("OPTIO_SEQUENCER_KEY", format!("0x{}", "11".repeat(32)))
        .env("OPTIO_LISTEN", "127.0.0.1:0")
        .env("OPTIO_L1_KEY", KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node starts");
    first_batch_on_l1(&provider, &d, &data).await;
    let _ = node.kill();
    let _ = node.wait();
}

/// The whole escape hatch through the binaries: the devnet funds its demo account and commits
/// that batch on L1, then the operator disappears; the batch finalizes, a deposit goes unserved,
/// anyone freezes, and `optio exit` (L1 data alone, the demo key) pays the demo account exactly
/// its committed collateral.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optio_exit_pays_the_demo_account_after_the_operator_disappears() {
    use optio_settler::{OptioRollup, TestUSDC, transact};
    let (anvil, provider, d) = chain().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut node, demo) = start_devnet(&anvil.url, &d.rollup.to_string(), dir.path());
    first_batch_on_l1(&provider, &d, dir.path()).await;
    // The operator disappears.
    let _ = node.kill();
    let _ = node.wait();

    let rollup = OptioRollup::new(d.rollup, &provider);
    let advance = |seconds: u64| {
        let p = provider.clone();
        async move {
            let _: serde_json::Value = p
                .raw_request("evm_increaseTime".into(), (seconds,))
                .await
                .expect("time");
            let _: serde_json::Value = p.raw_request("evm_mine".into(), ()).await.expect("mine");
        }
    };
    advance(3_601).await;
    let committed =
        optio_settler::Settler::new(provider.clone(), d.rollup, &dir.path().join("batches"))
            .committed()
            .await
            .expect("reads");
    for _ in 0..committed {
        transact(rollup.finalize()).await.expect("finalizes");
    }
    let usdc = TestUSDC::new(d.usdc, &provider);
    let operator = provider.get_accounts().await.expect("accounts")[0];
    transact(usdc.mint(operator, U256::from(10u64).pow(U256::from(13u64))))
        .await
        .expect("mint");
    transact(usdc.approve(d.rollup, U256::MAX))
        .await
        .expect("approve");
    transact(rollup.deposit(0, U256::from(10u64).pow(U256::from(13u64))))
        .await
        .expect("an unserved deposit");
    advance(6 * 3_600 + 1).await;
    transact(rollup.freeze()).await.expect("anyone freezes");

    // What the finalized state owes the demo account, rebuilt independently from the blobs.
    let blobs: Vec<Vec<u8>> = (1..=committed)
        .map(|n| std::fs::read(dir.path().join(format!("batches/{n:08}.blob"))).expect("blob"))
        .collect();
    let mut state = optio_state::SettlementState::new();
    optio_state::rebuild(blobs.iter().map(Vec::as_slice), &mut state, |_| {}).expect("rebuilds");
    let owed = state.accounts()[demo as usize].collateral.0;
    assert!(owed > 0, "the devnet funded the demo account");
    let demo_key = format!("0x{}", "de".repeat(32));
    let demo_address = optio_settler::signer_address(&demo_key).expect("address");
    let _: serde_json::Value = provider
        .raw_request(
            "anvil_setBalance".into(),
            (demo_address, U256::from(10u64).pow(U256::from(18u64))),
        )
        .await
        .expect("gas money");
    let exit = || {
        Command::new(env!("CARGO_BIN_EXE_optio"))
            .args([
                "exit",
                "--rpc",
                &anvil.url,
                "--rollup",
                &d.rollup.to_string(),
                "--account",
                &demo.to_string(),
            ])
            .env("OPTIO_EXIT_KEY", &demo_key)
            .output()
            .expect("optio exit runs")
    };
    let out = exit();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("paid {owed} micro-USDC")), "{text}");
    assert_eq!(
        usdc.balanceOf(demo_address).call().await.expect("balance"),
        U256::from(owed as u64)
    );
    let again = exit();
    assert!(!again.status.success(), "a second exit fails");
}
