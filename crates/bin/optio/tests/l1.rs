//! The node posts its batches to L1: against anvil (from npm) with the contracts deployed, the
//! first batch of the devnet and of a configured node is committed on chain with the root its
//! header names, and the watchtower's check from L1 alone agrees. A devnet on a rollup that
//! finalizes quickly prunes the finalized batches' files behind checkpoints.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alloy::primitives::U256;
use alloy::providers::{DynProvider, Provider};

mod common;

const KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// anvil with the contracts deployed for an empty genesis state.
async fn chain() -> (
    optio_contracts::Anvil,
    DynProvider,
    optio_settler::Deployment,
) {
    chain_finalizing_after(3_600).await
}

/// `chain` with the rollup finalizing a batch `delay_s` seconds after it is committed.
async fn chain_finalizing_after(
    delay_s: u64,
) -> (
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
    let d = optio_settler::deploy(
        &provider,
        operator,
        genesis,
        &optio_settler::RollupConfig::new(delay_s, 6 * 3_600),
    )
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

/// A devnet process, killed when dropped (also when a test fails half way).
struct Devnet(std::process::Child);

impl Devnet {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Devnet {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts the devnet on `dir`, posting to `rollup` on `url`; returns it, its demo subaccount
/// and its API address.
fn start_devnet(url: &str, rollup: &str, dir: &std::path::Path) -> (Devnet, u32, String) {
    start_devnet_with(url, rollup, dir, &[])
}

/// `start_devnet` with more arguments.
fn start_devnet_with(
    url: &str,
    rollup: &str,
    dir: &std::path::Path,
    more: &[&str],
) -> (Devnet, u32, String) {
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
        .args(more)
        .env("OPTIO_L1_KEY", KEY)
        .stdout(Stdio::piped())
        .spawn()
        .expect("devnet starts");
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let (mut demo, mut addr) = (None, None);
    for line in lines.by_ref().map_while(Result::ok) {
        if let Some(url) = line.trim().strip_prefix("JSON-RPC  http://") {
            addr = url.strip_suffix("/api/v2").map(str::to_owned);
        }
        if line.contains("demo key") {
            demo = line.rsplit(' ').next().and_then(|s| s.parse::<u32>().ok());
        }
        if line.contains("instruments:") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    (
        Devnet(node),
        demo.expect("the devnet prints the demo subaccount"),
        addr.expect("the devnet prints its API address"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_devnet_commits_its_batches_on_l1() {
    let (anvil, provider, d) = chain().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut node, _, _) = start_devnet(&anvil.url, &d.rollup.to_string(), dir.path());
    first_batch_on_l1(&provider, &d, dir.path()).await;
    node.kill();
    // The watchtower's command agrees with every committed batch.
    verify_agrees(&anvil.url, &d);
}

/// `optio verify` agrees with every batch committed on L1, from L1 data alone.
/// On a rollup that finalizes a batch a second after its commit, the devnet (its oracle feed
/// only: a batch about every second) deletes the files of
/// the finalized batches behind a checkpoint of the state (every two batches here) as it goes:
/// the metrics say how far, `optio rebuild` goes on from the checkpoint to the last batch's
/// committed root, and the watchtower, which reads L1, agrees with every batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_devnet_prunes_the_batches_l1_finalized() {
    let (anvil, provider, d) = chain_finalizing_after(1).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let batches = dir.path().join("batches");
    let (mut node, _, api) = start_devnet_with(
        &anvil.url,
        &d.rollup.to_string(),
        dir.path(),
        &["--oracle-feed", "--checkpoint-batches", "2"],
    );
    let metric = |text: &str, name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let through = loop {
        let text = common::get_text(&api, "/metrics").unwrap_or_default();
        match metric(&text, "optio_batches_pruned_through") {
            Some(n) if n >= 4 => {
                assert!(metric(&text, "optio_batches_finalized").is_some_and(|f| f >= n));
                assert_eq!(metric(&text, "optio_batches_prune_failed"), Some(0));
                break n;
            }
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "nothing pruned within two minutes: {text}"
        );
        // anvil mines only on a transaction: a block now and then moves L1's time past the
        // finalization delay (the devnet without its flow sends few).
        let _: serde_json::Value = provider
            .raw_request("evm_mine".into(), ())
            .await
            .expect("mines");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    node.kill();
    assert!(through % 2 == 0, "a checkpoint's batch: {through}");
    assert!(!batches.join("00000001.blob").exists());
    assert!(!batches.join(format!("{through:08}.blob")).exists());
    assert!(batches.join(format!("{through:08}.checkpoint")).exists());
    let out = Command::new(env!("CARGO_BIN_EXE_optio"))
        .args(["rebuild", "--batches"])
        .arg(&batches)
        .output()
        .expect("optio rebuild runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("from the checkpoint of batch {through} ")),
        "{text}"
    );
    let last = optio_gateway::batching::blob_files(&batches)
        .expect("blobs")
        .pop()
        .expect("the last batch stays");
    let header: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(last.with_extension("json")).expect("header"),
    )
    .expect("JSON");
    let root = header["new_root"].as_str().expect("root");
    assert!(
        text.lines()
            .any(|l| l.starts_with("rebuilt ") && l.ends_with(&format!("root {root}"))),
        "the rebuild ends at the last batch's root {root}: {text}"
    );
    assert!(!text.contains("DIFFERS"), "{text}");
    verify_agrees(&anvil.url, &d);
}

fn verify_agrees(url: &str, d: &optio_settler::Deployment) {
    let out = Command::new(env!("CARGO_BIN_EXE_optio"))
        .args(["verify", "--rpc", url, "--rollup", &d.rollup.to_string()])
        .output()
        .expect("optio verify runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("committed batches verified from L1 data"),
        "{text}"
    );
    // On anvil too the deployment is the audited build (no verifier: this rollup has none).
    assert!(
        text.contains(
            "deployment: rollup, judge, trees, 4 Poseidon hashers run this tree's audited build"
        ) && text.contains("verifier: none"),
        "{text}"
    );
    // And the vault pays what the state owes: the devnet's faucet credits, paid in at commit.
    assert!(
        text.contains("which are what the state rebuilt from L1 owes") && !text.contains("ALERT"),
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
    let mut node = Devnet(
        Command::new(env!("CARGO_BIN_EXE_optio"))
            .args(["node", "--config"])
            .arg(&config)
            .args(["--duration-s", "60", "--l1-rpc", &anvil.url])
            .env("OPTIO_SEQUENCER_KEY", format!("0x{}", "11".repeat(32)))
            .env("OPTIO_LISTEN", "127.0.0.1:0")
            .env("OPTIO_L1_KEY", KEY)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node starts"),
    );
    first_batch_on_l1(&provider, &d, &data).await;
    node.kill();
}

/// Waits until the batches on disk cover sequence number `seq` and L1 has committed all of
/// them; returns how many there are.
async fn committed_through(
    provider: &DynProvider,
    d: &optio_settler::Deployment,
    data: &std::path::Path,
    seq: u64,
) -> u64 {
    let settler = optio_settler::Settler::new(provider.clone(), d.rollup, &data.join("batches"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let files = optio_gateway::batching::blob_files(&data.join("batches")).expect("blobs");
        let last = files.last().and_then(|f| {
            let header: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(f.with_extension("json")).ok()?)
                    .ok()?;
            header["last_seq"].as_u64()
        });
        let committed = settler.committed().await.expect("reads");
        if last.is_some_and(|l| l >= seq) && committed == files.len() as u64 {
            return committed;
        }
        assert!(
            Instant::now() < deadline,
            "sequence {seq} not committed on L1 within two minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each user's deposit on L1 (20,000 USDC of the 50,000 minted for it).
const DEPOSIT: u64 = 20_000_000_000;
const MINTED: u64 = 50_000_000_000;

/// `n` users on L1 (keys `0x0101..`, `0x0202..`, ...): gas money, USDC, one deposit each into a
/// new account. Returns their keys and addresses.
async fn l1_users(
    url: &str,
    provider: &DynProvider,
    d: &optio_settler::Deployment,
    n: usize,
) -> (Vec<String>, Vec<alloy::primitives::Address>) {
    use optio_settler::{OptioRollup, TestUSDC, connect, transact};
    let keys: Vec<String> = (1..=n)
        .map(|i| format!("0x{}", format!("{i:02x}").repeat(32)))
        .collect();
    let addresses: Vec<alloy::primitives::Address> = keys
        .iter()
        .map(|k| optio_settler::signer_address(k).expect("address"))
        .collect();
    let new_account = OptioRollup::new(d.rollup, provider)
        .NEW_ACCOUNT()
        .call()
        .await
        .expect("reads");
    for (key, address) in keys.iter().zip(&addresses) {
        let _: serde_json::Value = provider
            .raw_request(
                "anvil_setBalance".into(),
                (*address, U256::from(10u64).pow(U256::from(18u64))),
            )
            .await
            .expect("gas money");
        let user = connect(url, key).expect("provider");
        transact(TestUSDC::new(d.usdc, &user).mint(*address, U256::from(MINTED)))
            .await
            .expect("mint");
        transact(TestUSDC::new(d.usdc, &user).approve(d.rollup, U256::MAX))
            .await
            .expect("approve");
        transact(OptioRollup::new(d.rollup, &user).deposit(new_account, U256::from(DEPOSIT)))
            .await
            .expect("deposit");
    }
    (keys, addresses)
}

/// Each address's first account in `state`, if any.
fn accounts_of(
    state: &optio_state::SettlementState,
    addresses: &[alloy::primitives::Address],
) -> Vec<Option<u32>> {
    addresses
        .iter()
        .map(|a| {
            state
                .accounts()
                .iter()
                .position(|x| x.owner.0 == a.into_array())
                .map(|i| i as u32)
        })
        .collect()
}

/// The node's blobs on disk, in batch order.
fn blobs_on_disk(data: &std::path::Path) -> Vec<Vec<u8>> {
    optio_gateway::batching::blob_files(&data.join("batches"))
        .expect("blobs")
        .iter()
        .map(|f| std::fs::read(f).expect("blob"))
        .collect()
}

/// The settlement state the node's blobs on disk give, rebuilt independently.
fn state_on_disk(data: &std::path::Path) -> optio_state::SettlementState {
    let blobs = blobs_on_disk(data);
    let mut state = optio_state::SettlementState::new();
    optio_state::rebuild(blobs.iter().map(Vec::as_slice), &mut state, |_| {}).expect("rebuilds");
    state
}

/// Waits until every address has an account in the batches on disk; returns their ids.
async fn sequenced(data: &std::path::Path, addresses: &[alloy::primitives::Address]) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let found = accounts_of(&state_on_disk(data), addresses);
        if found.iter().all(Option::is_some) {
            return found.into_iter().flatten().collect();
        }
        assert!(
            Instant::now() < deadline,
            "the deposits were not sequenced and batched"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The devnet's ETH 3000 put: its name and id.
fn eth_put(addr: &str) -> (String, u32) {
    let instruments = common::post(addr, r#"{"jsonrpc":"2.0","id":1,"method":"public/get_instruments","params":{"currency":"ETH","kind":"option"}}"#)
        .expect("instruments");
    let put = instruments["result"]
        .as_array()
        .expect("list")
        .iter()
        .find(|i| {
            i["instrument_name"]
                .as_str()
                .is_some_and(|n| n.ends_with("-3000-P"))
        })
        .expect("an ETH 3000 put")
        .clone();
    (
        put["instrument_name"].as_str().expect("name").to_owned(),
        put["instrument_id"].as_u64().expect("id") as u32,
    )
}

/// User `k` (of `l1_users`) orders one `put` at 50 from `account`, signed for the rollup (the
/// devnet's native domain names it).
fn order(
    addr: &str,
    d: &optio_settler::Deployment,
    put: &(String, u32),
    k: usize,
    account: u32,
    direction: &str,
    time_in_force: &str,
) {
    use optio_gateway::client::{OrderRequest, order_params};
    let key = secp256k1::SecretKey::from_secret_bytes([(k + 1) as u8; 32]).expect("key");
    let params = order_params(
        &key,
        31_337,
        d.rollup.into_array(),
        &OrderRequest {
            subaccount: u64::from(account),
            instrument_id: put.1,
            instrument_name: &put.0,
            direction,
            price: "50",
            amount: "1",
            max_fee: "100",
            nonce: optio_gateway::dated_nonce(optio_gateway::now_ms(), 1),
            expiry: optio_gateway::now_ms() / 1_000 + 3_600,
            time_in_force,
        },
    )
    .expect("signs");
    let reply = common::post(
        addr,
        &serde_json::json!({"jsonrpc":"2.0","id":1,"method":"private/order","params":params})
            .to_string(),
    )
    .expect("reply");
    assert!(reply.get("error").is_none(), "user {k}: {reply}");
}

/// `optio force` with `key` for `account`: a forced withdrawal, or the close of its position in
/// instrument `close`.
fn optio_force(
    url: &str,
    d: &optio_settler::Deployment,
    key: &str,
    account: u32,
    close: Option<&str>,
) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_optio"));
    cmd.args(["force", "--rpc", url, "--rollup", &d.rollup.to_string()])
        .args(["--account", &account.to_string()]);
    if let Some(instrument) = close {
        cmd.args(["--close", instrument]);
    }
    cmd.env("OPTIO_EXIT_KEY", key)
        .output()
        .expect("optio force runs")
}

/// Waits until the last batch committed on L1 has served the priority queue through `n`.
async fn served_through(provider: &DynProvider, d: &optio_settler::Deployment, n: u64) {
    let rollup = optio_settler::OptioRollup::new(d.rollup, provider);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let last = rollup.committedBatches().call().await.expect("reads");
        let batch = rollup.batches(last).call().await.expect("reads");
        if batch.priorityServed >= n {
            return;
        }
        assert!(Instant::now() < deadline, "not served on L1 in two minutes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A forced close end to end through the binaries (docs/settlement.md, "Forced close"): the
/// devnet opens its backstop (the operator's first account, margined) and L1 records it; two
/// users deposit on L1 and trade an ETH put; the seller asks L1 to close the buyer's position
/// (served: nothing moves), then the buyer asks for its own with `optio force --close` (served:
/// the whole long moves to the backstop at the committed mark); L1 takes the batches serving both (it checks each
/// against its queue), and the watchtower's check from L1 alone agrees. Requests for the
/// backstop itself, an account or an instrument L1 has not seen are refused on L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_close_moves_the_position_to_the_backstop_through_l1() {
    use optio_settler::{OptioRollup, connect, transact};
    let (anvil, provider, d) = chain().await;
    let dir = tempfile::tempdir().expect("temp dir");
    // Marks: the oracle feed runs (without market makers or takers).
    let (mut node, _, addr) = start_devnet_with(
        &anvil.url,
        &d.rollup.to_string(),
        dir.path(),
        &["--oracle-feed"],
    );
    let rollup = OptioRollup::new(d.rollup, &provider);
    let (keys, addresses) = l1_users(&anvil.url, &provider, &d, 2).await;
    let accounts = sequenced(dir.path(), &addresses).await;
    let put = eth_put(&addr);
    order(&addr, &d, &put, 0, accounts[0], "sell", "gtc");
    order(&addr, &d, &put, 1, accounts[1], "buy", "ioc");
    let health = common::get(&addr, "/health").expect("health");
    committed_through(
        &provider,
        &d,
        dir.path(),
        health["next_seq"].as_u64().expect("next_seq") - 1,
    )
    .await;
    let state = state_on_disk(dir.path());
    let operator = optio_settler::signer_address(KEY).expect("address");
    let backstop = state
        .accounts()
        .iter()
        .position(|a| a.owner.0 == operator.into_array())
        .expect("the backstop is opened") as u32;
    assert_eq!(
        rollup.backstop().call().await.expect("reads"),
        backstop,
        "L1 records the operator's first account"
    );
    let held = |state: &optio_state::SettlementState, account: u32| {
        state.accounts()[account as usize]
            .positions
            .get(&put.1)
            .map_or(0, |q| q.0)
    };
    assert_eq!(
        held(&state, accounts[1]),
        100_000_000,
        "the buyer holds the put"
    );

    // Refused on L1: the backstop itself, an account and an instrument L1 has not seen.
    let seller = connect(&anvil.url, &keys[0]).expect("provider");
    let as_seller = OptioRollup::new(d.rollup, &seller);
    assert!(
        transact(as_seller.requestClose(backstop, put.1))
            .await
            .is_err()
    );
    let opened = rollup.accountsOpened().call().await.expect("reads");
    let listed = rollup.instrumentsListed().call().await.expect("reads");
    assert!(
        transact(as_seller.requestClose(opened, put.1))
            .await
            .is_err()
    );
    assert!(
        transact(as_seller.requestClose(accounts[1], listed))
            .await
            .is_err()
    );

    // The seller asks to close the buyer's position: served, nothing moves.
    transact(as_seller.requestClose(accounts[1], put.1))
        .await
        .expect("requested");
    let queued = u64::try_from(rollup.priorityCount().call().await.expect("reads")).expect("u64");
    served_through(&provider, &d, queued).await;
    let state = state_on_disk(dir.path());
    assert_eq!(
        held(&state, accounts[1]),
        100_000_000,
        "a stranger's request moves nothing"
    );

    // The buyer's own request: the whole long moves to the backstop at the committed mark.
    let before = state.accounts()[accounts[1] as usize].collateral.0;
    let taken = held(&state, backstop);
    // With `optio force` (the buyer's key, the put by name, looked up in the state L1's data
    // builds).
    let force = |account: u32| optio_force(&anvil.url, &d, &keys[1], account, Some(&put.0));
    assert!(
        !force(opened).status.success(),
        "an account L1 has not seen is refused"
    );
    let out = force(accounts[1]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains(&format!(
                "forced close of account {} in instrument {} ({}) queued: priority operation {queued}",
                accounts[1], put.1, put.0
            )),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    served_through(&provider, &d, queued + 1).await;
    node.kill();
    let state = state_on_disk(dir.path());
    assert_eq!(held(&state, accounts[1]), 0, "closed");
    assert_eq!(
        held(&state, backstop) - taken,
        100_000_000,
        "to the backstop"
    );
    // The closes as posted: the stranger's moved nothing, the owner's one contract at the mark
    // the state held before its batch.
    let mut replay = optio_state::SettlementState::new();
    let mut closes = Vec::new();
    for blob in blobs_on_disk(dir.path()) {
        let (_, ops) = optio_state::decode(&blob).expect("decodes");
        for op in &ops {
            if let optio_state::Op::L1Close {
                qty,
                price,
                requester,
                ..
            } = op
            {
                let mark = replay.instruments()[put.1 as usize].mark;
                closes.push((qty.0, price.0, mark.0, *requester));
            }
        }
        replay.apply_batch(&ops).expect("applies");
        replay.commit();
    }
    let address = |a: alloy::primitives::Address| optio_types::Address(a.into_array());
    assert_eq!(closes.len(), 2, "{closes:?}");
    assert_eq!(
        closes[0],
        (0, 0, closes[0].2, address(addresses[0])),
        "the stranger's"
    );
    let (qty, price, mark, requester) = closes[1];
    assert_eq!((qty, requester), (-100_000_000, address(addresses[1])));
    assert!(
        price > 0 && price == mark,
        "at the committed mark: {price} {mark}"
    );
    let paid = state.accounts()[accounts[1] as usize].collateral.0 - before;
    assert_eq!(paid, price, "one contract at the mark, no fee");

    // The watchtower's command agrees with every committed batch, the closes included.
    verify_agrees(&anvil.url, &d);
}

/// The escape hatch end to end through the binaries, for `OPTIO_ESCAPE_USERS` users (50 by
/// default; README: the 200-user run): each deposits on L1 (a new account, sequenced from the L1
/// queue by the devnet's settler) and trades an ETH put with another over the API; the batches
/// reach L1; the operator disappears; the batches finalize; every user requests a forced
/// withdrawal, which goes unserved; after the deadline anyone freezes; every user exits with
/// `optio exit` (their key and L1 data alone) and receives exactly what the last finalized
/// state owes them; a deposit one user made after the operator left (never served) comes back
/// to them with the same command. A second exit, an exit for someone else's account and an exit
/// against a stale root all revert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_user_escapes_with_what_the_finalized_state_owes_after_the_operator_disappears() {
    use optio_settler::{OptioRollup, TestUSDC, connect, transact};
    let users: usize = std::env::var("OPTIO_ESCAPE_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    assert!(
        (2..=200).contains(&users) && users.is_multiple_of(2),
        "an even number of users up to 200"
    );
    let (anvil, provider, d) = chain().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut node, _, addr) = start_devnet(&anvil.url, &d.rollup.to_string(), dir.path());
    let rollup = OptioRollup::new(d.rollup, &provider);
    let usdc = TestUSDC::new(d.usdc, &provider);

    // Users on L1: gas money, USDC, one deposit each into a new account.
    let (keys, addresses) = l1_users(&anvil.url, &provider, &d, users).await;
    // The devnet sequences the deposits; each user's account id from the batches it writes.
    let accounts_of = |state: &optio_state::SettlementState| accounts_of(state, &addresses);
    let blobs_on_disk = || blobs_on_disk(dir.path());
    let on_disk = || state_on_disk(dir.path());
    let accounts = sequenced(dir.path(), &addresses).await;

    // Pairs trade one ETH put: the first sells (resting), the second buys it.
    let put = eth_put(&addr);
    for pair in 0..users / 2 {
        for (k, direction, tif) in [(2 * pair, "sell", "gtc"), (2 * pair + 1, "buy", "ioc")] {
            order(&addr, &d, &put, k, accounts[k], direction, tif);
        }
    }
    let health = common::get(&addr, "/health").expect("health");
    let last_seq = health["next_seq"].as_u64().expect("next_seq") - 1;
    let committed = committed_through(&provider, &d, dir.path(), last_seq).await;
    // The operator disappears; user 0 deposits once more, which nobody will serve.
    node.kill();
    const LATE: u64 = 7_000_000;
    let user0 = connect(&anvil.url, &keys[0]).expect("provider");
    transact(OptioRollup::new(d.rollup, &user0).deposit(accounts[0], U256::from(LATE)))
        .await
        .expect("a late deposit");

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
    while rollup.lastFinalized().call().await.expect("reads") < U256::from(committed) {
        transact(rollup.finalize()).await.expect("anyone finalizes");
    }
    // User 0 with `optio force`, the others calling the contract.
    let out = optio_force(&anvil.url, &d, &keys[0], accounts[0], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains(&format!(
                "forced withdrawal of account {} queued",
                accounts[0]
            )),
        "{text}"
    );
    for (key, account) in keys.iter().zip(&accounts).skip(1) {
        let user = connect(&anvil.url, key).expect("provider");
        transact(OptioRollup::new(d.rollup, &user).requestWithdrawal(*account))
            .await
            .expect("forced withdrawal requested");
    }
    assert!(
        transact(rollup.freeze()).await.is_err(),
        "nothing overdue yet"
    );
    advance(6 * 3_600 + 1).await;
    transact(rollup.freeze()).await.expect("anyone freezes");

    // What the finalized state owes each user, rebuilt independently from the node's blobs.
    let state = on_disk();
    let owed = |account: u32| -> i64 {
        let a = &state.accounts()[account as usize];
        a.positions
            .iter()
            .fold(a.collateral.0, |sum, (instrument, qty)| {
                let mark = state.instruments()[*instrument as usize].mark.0;
                sum + (i128::from(qty.0) * i128::from(mark)).div_euclid(100_000_000) as i64
            })
    };
    let traded = accounts
        .iter()
        .filter(|a| !state.accounts()[**a as usize].positions.is_empty())
        .count();
    assert_eq!(traded, users, "every user holds the put");
    let exit = |key: &str, account: Option<u32>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_optio"));
        cmd.args([
            "exit",
            "--rpc",
            &anvil.url,
            "--rollup",
            &d.rollup.to_string(),
        ]);
        if let Some(a) = account {
            cmd.args(["--account", &a.to_string()]);
        }
        cmd.env("OPTIO_EXIT_KEY", key)
            .output()
            .expect("optio exit runs")
    };
    // Someone else's account: refused.
    let other = exit(&keys[0], Some(accounts[1]));
    assert!(
        !other.status.success(),
        "an exit for someone else's account reverts"
    );
    // Its deposit that nobody served came back first, once.
    let text = String::from_utf8_lossy(&other.stdout);
    assert!(
        text.contains(&format!("returned: {LATE} micro-USDC")),
        "{text}"
    );
    // A proof against a stale root (the state before the trades): refused.
    let stale = {
        let blobs = blobs_on_disk();
        let mut older = optio_state::SettlementState::new();
        let (mut found, mut after) = (None, (0, 0));
        for blob in &blobs {
            after = optio_state::rebuild_after([blob.as_slice()], &mut older, after, |_| {})
                .expect("rebuilds");
            if accounts_of(&older)[0].is_some() {
                found = older.exit_proof(optio_types::AccountId(accounts[0]));
                break;
            }
        }
        found.expect("user 0's account in an older state")
    };
    assert_ne!(
        stale.leaf.collateral.0,
        owed(accounts[0]),
        "the older state differs"
    );
    assert!(
        transact(OptioRollup::new(d.rollup, &user0).exit(optio_settler::exit_call(&stale)))
            .await
            .is_err(),
        "an exit against a stale root reverts"
    );
    let mut total = 0u64;
    for (k, (key, account)) in keys.iter().zip(&accounts).enumerate() {
        let out = exit(key, None);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "user {k}: {text}");
        let expected = owed(*account);
        assert!(expected > 0, "user {k} is owed something");
        assert!(
            text.contains(&format!("paid {expected} micro-USDC")),
            "user {k}: {text}"
        );
        // User 0's late deposit came back with the first `optio exit` (above): the balance
        // below holds it.
        assert_eq!(
            usdc.balanceOf(addresses[k]).call().await.expect("balance"),
            U256::from(MINTED - DEPOSIT + expected as u64),
            "user {k} holds exactly what the state owed"
        );
        total += expected as u64;
    }
    assert!(
        !exit(&keys[0], None).status.success(),
        "a second exit reverts"
    );
    assert!(
        total <= users as u64 * DEPOSIT,
        "users take out no more than they put in and traded between themselves"
    );
    // The auditor's view of the frozen rollup, after every user left: the vault still covers
    // what it pays from the last finalized state (the accounts that did not exit).
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
    eprintln!(
        "{}",
        text.lines()
            .find(|l| l.starts_with("vault:"))
            .unwrap_or_default()
    );
    assert!(
        out.status.success()
            && text.contains("frozen, it covers what it still pays from the last finalized state")
            && !text.contains("ALERT"),
        "{text}"
    );
}
