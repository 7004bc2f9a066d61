//! The settler against a real EVM (anvil from npm, on 127.0.0.1): the contracts deploy, the
//! batches the Rust side wrote (test-vectors/settlement.json) are committed in order with the
//! same roots, posting again posts nothing, and after a reorg drops a commitment the settler
//! posts it again.

use alloy::primitives::U256;
use alloy::providers::Provider;
use optio_settler::{RollupConfig, Settler, connect, deploy};

mod support;

/// anvil's first default account.
const KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

fn forge_build() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| optio_contracts::forge_build().expect("forge build"));
}

/// Writes the vectors' two batches as the node would.
fn write_batches(dir: &std::path::Path) -> (serde_json::Value, Vec<U256>) {
    let vectors: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            optio_contracts::contracts_dir().join("../test-vectors/settlement.json"),
        )
        .expect("vectors"),
    )
    .expect("JSON");
    let ranges = [(1u64, 7u64), (8, 20)];
    let mut roots = Vec::new();
    for (i, b) in vectors["batches"]
        .as_array()
        .expect("batches")
        .iter()
        .enumerate()
    {
        let number = i as u64 + 1;
        let header = serde_json::json!({
            "number": number,
            "previous_root": b["previous_root"],
            "new_root": b["new_root"],
            "first_seq": ranges[i].0,
            "last_seq": ranges[i].1,
            "withdrawals_hash": b["withdrawals_hash"],
            "ops_commitment": b["commitment"],
            "priority_served": 0,
        });
        let blob = b["blob"].as_str().expect("hex").trim_start_matches("0x");
        let bytes: Vec<u8> = (0..blob.len())
            .step_by(2)
            .map(|k| u8::from_str_radix(&blob[k..k + 2], 16).expect("hex"))
            .collect();
        std::fs::write(dir.join(format!("{number:08}.json")), header.to_string()).expect("writes");
        std::fs::write(dir.join(format!("{number:08}.blob")), bytes).expect("writes");
        roots.push(b["new_root"].as_str().expect("root").parse().expect("U256"));
    }
    (vectors, roots)
}

/// The vectors' genesis root (the empty state's).
fn genesis_root(vectors: &serde_json::Value) -> U256 {
    vectors["genesis_root"]
        .as_str()
        .expect("root")
        .parse()
        .expect("U256")
}

/// anvil with the contracts deployed and the vectors' batches written to a batches directory.
struct Chain {
    _anvil: optio_contracts::Anvil,
    url: String,
    dir: tempfile::TempDir,
    vectors: serde_json::Value,
    roots: Vec<U256>,
    provider: alloy::providers::DynProvider,
    operator: alloy::primitives::Address,
    deployment: optio_settler::Deployment,
}

/// L1's time at the start: the vectors' batches are cut at engine time 1,800,000,000,000 ms (and
/// 2 s later), and a rollup takes a batch only within its time bounds of the block's time.
const GENESIS_S: &str = "1800000000";

/// Moves anvil's time on by `seconds` and mines a block.
async fn advance(provider: &alloy::providers::DynProvider, seconds: u64) {
    let _: serde_json::Value = provider
        .raw_request("evm_increaseTime".into(), (seconds,))
        .await
        .expect("time");
    let _: serde_json::Value = provider
        .raw_request("evm_mine".into(), ())
        .await
        .expect("mine");
}

/// Commits batch 1 as written (its operator deposits paid in first) with `commitment` as its
/// ops commitment, without a proof.
async fn commit_first(
    provider: &alloy::providers::DynProvider,
    rollup: alloy::primitives::Address,
    first: &optio_settler::PostedBatch,
    commitment: U256,
) -> Result<alloy::rpc::types::TransactionReceipt, optio_settler::SettlerError> {
    let (_, ops) = optio_state::decode(&first.blob).expect("decodes");
    optio_settler::back_operator_deposits(provider, rollup, &ops).await?;
    optio_settler::transact(
        optio_settler::OptioRollup::new(rollup, provider).commitBatch(
            U256::from(1u64),
            first.previous_root,
            first.new_root,
            first.first_seq,
            first.last_seq,
            first.priority_served,
            first.withdrawals_hash,
            commitment,
            first.blob.clone(),
            Default::default(),
        ),
    )
    .await
}

async fn chain(bond: U256) -> Chain {
    let anvil = optio_contracts::Anvil::start_with(&["--timestamp", GENESIS_S]).expect("anvil");
    let url = anvil.url.clone();
    forge_build();
    let dir = tempfile::tempdir().expect("temp dir");
    let (vectors, roots) = write_batches(dir.path());
    let provider = connect(&url, KEY).expect("provider");
    let operator = provider.get_accounts().await.expect("accounts")[0];
    let genesis = genesis_root(&vectors);
    let deployment = deploy(
        &provider,
        operator,
        genesis,
        &RollupConfig {
            bond,
            ..RollupConfig::new(3_600, 6 * 3_600)
        },
    )
    .await
    .expect("deploys");
    Chain {
        _anvil: anvil,
        url,
        dir,
        vectors,
        roots,
        provider,
        operator,
        deployment,
    }
}

/// Batch 2's files, taken off the batches directory (`Chain::hold_second`).
struct HeldBatch {
    paths: [std::path::PathBuf; 2],
    bytes: [Vec<u8>; 2],
}

impl HeldBatch {
    /// Writes them back, for the settler to post.
    fn put_back(self) {
        for (path, bytes) in self.paths.iter().zip(self.bytes) {
            std::fs::write(path, bytes).expect("writes");
        }
    }
}

impl Chain {
    /// Takes batch 2 off disk, so that only batch 1 posts until it is put back.
    fn hold_second(&self) -> HeldBatch {
        let paths = ["00000002.json", "00000002.blob"].map(|f| self.dir.path().join(f));
        let bytes = paths.clone().map(|p| std::fs::read(p).expect("reads"));
        for p in &paths {
            std::fs::remove_file(p).expect("removes");
        }
        HeldBatch { paths, bytes }
    }

    /// Posts the vectors' two batches.
    async fn post_both(&self) {
        let settler = Settler::new(
            self.provider.clone(),
            self.deployment.rollup,
            self.dir.path(),
        );
        assert_eq!(settler.post_pending().await.expect("posts"), 2);
    }

    /// Finalizes both batches once their delay has passed and pays batch 2's withdrawal (1,000
    /// USDC to account 1's owner).
    async fn finalize_and_pay(&self) {
        use optio_settler::{OptioRollup, transact};
        advance(&self.provider, 3_601).await;
        let rollup = OptioRollup::new(self.deployment.rollup, &self.provider);
        transact(rollup.finalize()).await.expect("batch 1 final");
        transact(rollup.finalize()).await.expect("batch 2 final");
        let list = vec![OptioRollup::Withdrawal {
            account: 1,
            owner: "0x2222222222222222222222222222222222222222"
                .parse()
                .expect("address"),
            amount: U256::from(1_000_000_000u64),
        }];
        transact(rollup.withdraw(U256::from(2u64), list, U256::ZERO))
            .await
            .expect("pays the withdrawal");
    }

    /// The operator deposits 400,000 USDC on L1 for account 9, which no batch serves.
    async fn deposit_unserved(&self) {
        use optio_settler::{OptioRollup, TestUSDC, transact};
        let d = &self.deployment;
        let usdc = TestUSDC::new(d.usdc, &self.provider);
        transact(usdc.mint(self.operator, U256::from(400_000_000_000u64)))
            .await
            .expect("mint");
        transact(usdc.approve(d.rollup, U256::MAX))
            .await
            .expect("approve");
        transact(
            OptioRollup::new(d.rollup, &self.provider).deposit(9, U256::from(400_000_000_000u64)),
        )
        .await
        .expect("deposit");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_committed_in_order_and_reposted_after_a_reorg() {
    let c = chain(U256::from(10u64).pow(U256::from(18u64))).await;
    let (provider, dir, roots) = (&c.provider, &c.dir, &c.roots);
    let settler = Settler::new(provider.clone(), c.deployment.rollup, dir.path());

    // Only batch 1 on disk at first; a snapshot to reorg back to afterwards.
    let second = c.hold_second();
    assert_eq!(settler.post_pending().await.expect("posts"), 1);
    let snapshot: U256 = provider
        .raw_request("evm_snapshot".into(), ())
        .await
        .expect("snapshot");
    second.put_back();
    assert_eq!(settler.post_pending().await.expect("posts"), 1);
    assert_eq!(settler.committed().await.expect("reads"), 2);
    for (i, root) in roots.iter().enumerate() {
        assert_eq!(
            settler.root(i as u64 + 1).await.expect("reads"),
            *root,
            "batch {} root on L1",
            i + 1
        );
    }
    assert_eq!(
        settler.post_pending().await.expect("posts"),
        0,
        "nothing is posted twice"
    );

    // A reorg drops batch 2's commitment: the settler asks the chain and posts it again.
    let reverted: bool = provider
        .raw_request("evm_revert".into(), (snapshot,))
        .await
        .expect("revert");
    assert!(reverted);
    assert_eq!(settler.committed().await.expect("reads"), 1);
    assert_eq!(settler.post_pending().await.expect("posts"), 1);
    assert_eq!(settler.committed().await.expect("reads"), 2);
    assert_eq!(settler.root(2).await.expect("reads"), roots[1]);
}

/// The escape hatch from L1 data alone: the operator commits both batches and then leaves a
/// deposit unserved; after the deadline anyone freezes; the account's owner rebuilds the state
/// from the blobs in the commitment transactions' calldata, proves its account against the last
/// finalized root and is paid exactly what the state owes it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_exits_from_l1_data_alone_after_a_freeze() {
    use optio_settler::{OptioRollup, TestUSDC, exit_from_l1, transact};
    let c = chain(U256::ZERO).await;
    let (operator_provider, d, vectors, url) = (&c.provider, c.deployment, &c.vectors, &c.url);
    c.post_both().await;
    let rollup = OptioRollup::new(d.rollup, operator_provider);
    let usdc = TestUSDC::new(d.usdc, operator_provider);
    advance(operator_provider, 3_601).await;
    transact(rollup.finalize()).await.expect("batch 1 final");
    transact(rollup.finalize()).await.expect("batch 2 final");
    // Users' money in the vault, and a deposit the operator never serves.
    c.deposit_unserved().await;
    assert!(
        transact(rollup.freeze()).await.is_err(),
        "nothing is overdue yet"
    );
    advance(operator_provider, 6 * 3_600 + 1).await;
    transact(rollup.freeze())
        .await
        .expect("anyone freezes once a deposit is overdue");
    // Frozen, the vault covers what it still pays: every account's exit, batch 2's withdrawal
    // and the deposit no batch served.
    let frozen = vault(operator_provider, d.rollup).await;
    assert!(frozen.problems().is_empty(), "{:?}", frozen.problems());
    let before = frozen.after_freeze.expect("frozen");
    assert_eq!(before.unpaid_withdrawals, (1_000_000_000, 1));
    assert_eq!(before.reclaimable_deposits, (400_000_000_000, 1));
    assert!(before.exits.1 > 0);

    // The owner (impersonated on anvil: the vectors' key is not known) exits with nothing but L1.
    let owner: alloy::primitives::Address = vectors["exit_proof"]["owner"]
        .as_str()
        .expect("owner")
        .parse()
        .expect("address");
    let as_owner = support::impersonated(operator_provider, url, owner).await;
    let paid = exit_from_l1(&as_owner, d.rollup, 0, owner)
        .await
        .expect("exits");
    let collateral = vectors["exit_proof"]["collateral"]
        .as_i64()
        .expect("collateral");
    let expected = U256::from(collateral as u64 + 2_523_000_000);
    assert_eq!(paid, expected);
    assert_eq!(
        usdc.balanceOf(owner).call().await.expect("balance"),
        expected,
        "received exactly what the state owes"
    );
    assert!(
        exit_from_l1(&as_owner, d.rollup, 0, owner).await.is_err(),
        "a second exit reverts"
    );
    // The exit is out of what the vault still pays, exactly, and the rest is still covered.
    let after = vault(operator_provider, d.rollup).await;
    assert!(after.problems().is_empty(), "{:?}", after.problems());
    let still = after.after_freeze.expect("frozen");
    assert_eq!(
        (still.exits.0, still.exits.1),
        (
            before.exits.0 - u128::try_from(paid).expect("fits"),
            before.exits.1 - 1
        )
    );
    assert_eq!(
        after.held.clone().expect("answers"),
        frozen.held.clone().expect("answers") - paid
    );
    // So is the deposit once reclaimed (anyone may ask; it goes to its depositor).
    transact(rollup.reclaimDeposit(U256::ZERO))
        .await
        .expect("reclaims");
    let reclaimed = vault(operator_provider, d.rollup).await;
    assert!(
        reclaimed.problems().is_empty(),
        "{:?}",
        reclaimed.problems()
    );
    assert_eq!(
        reclaimed.after_freeze.expect("frozen").reclaimable_deposits,
        (0, 0)
    );
}

/// The watchtower names a batch posted with an ops commitment its data does not give (no proof
/// can verify against it, so it would never finalize on a rollup with a verifier).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchtower_flags_a_commitment_the_data_does_not_give() {
    use optio_settler::{Verdict, verify_l1};
    let c = chain(U256::ZERO).await;
    let first = optio_settler::read_batch(c.dir.path(), 1)
        .expect("reads")
        .expect("batch 1");
    let wrong: U256 = c.vectors["batches"][1]["commitment"]
        .as_str()
        .expect("hex")
        .parse()
        .expect("U256");
    assert_ne!(wrong, first.commitment);
    commit_first(&c.provider, c.deployment.rollup, &first, wrong)
        .await
        .expect("the contract cannot tell before a proof");
    assert_eq!(
        verify_l1(&c.provider, c.deployment.rollup)
            .await
            .expect("verifies"),
        vec![Verdict::CommitmentMismatch {
            number: 1,
            posted: wrong,
            data: first.commitment
        }]
    );
}

/// The watchtower from L1 alone: honest batches agree; a batch whose committed root is not what
/// its posted data gives is reported, and so is one whose data does not decode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchtower_flags_a_root_the_data_does_not_give() {
    use optio_settler::{OptioRollup, Verdict, transact, verify_l1};
    let c = chain(U256::ZERO).await;
    let settler = Settler::new(c.provider.clone(), c.deployment.rollup, c.dir.path());
    assert_eq!(settler.post_pending().await.expect("posts"), 2);
    assert_eq!(
        verify_l1(&c.provider, c.deployment.rollup)
            .await
            .expect("verifies"),
        vec![Verdict::Agrees(1), Verdict::Agrees(2)]
    );
    // A rogue operator commits batch 3: valid data (no ops) under an invented root.
    let rollup = OptioRollup::new(c.deployment.rollup, &c.provider);
    let second = optio_settler::read_batch(c.dir.path(), 2)
        .expect("reads")
        .expect("batch 2");
    let (meta, ops) = optio_state::decode(&second.blob).expect("decodes");
    let count = |f: fn(&optio_state::Op) -> bool| ops.iter().filter(|o| f(o)).count() as u32;
    let blob = optio_state::encode(
        &optio_state::blob::BlobMeta {
            number: 3,
            first_seq: 21,
            last_seq: 21,
            time_ms: meta.time_ms,
            accounts: meta.accounts + count(|o| matches!(o, optio_state::Op::OpenAccount { .. })),
            instruments: meta.instruments
                + count(|o| matches!(o, optio_state::Op::ListInstrument { .. })),
        },
        &[],
    )
    .expect("encodes");
    let invented = U256::from(12_345u64);
    transact(rollup.commitBatch(
        U256::from(3u64),
        c.roots[1],
        invented,
        21,
        21,
        0,
        optio_state::withdrawals_hash(&[]).into(),
        U256::ZERO,
        blob.into(),
        Default::default(),
    ))
    .await
    .expect("commits");
    let verdicts = verify_l1(&c.provider, c.deployment.rollup)
        .await
        .expect("verifies");
    assert_eq!(verdicts.len(), 3);
    assert!(
        matches!(verdicts[2], Verdict::Differs { number: 3, committed, rebuilt } if committed == invented && rebuilt == c.roots[1]),
        "{verdicts:?}"
    );
    // And batch 4 with data that does not decode (whole words, so the contract takes it: no
    // words at all, after a header that is not a blob's, dated as batch 3).
    let mut undecodable = vec![1u8; 49];
    undecodable[29..37].copy_from_slice(&meta.time_ms.to_be_bytes());
    transact(rollup.commitBatch(
        U256::from(4u64),
        invented,
        U256::from(1u64),
        22,
        22,
        0,
        optio_state::withdrawals_hash(&[]).into(),
        U256::ZERO,
        undecodable.into(),
        Default::default(),
    ))
    .await
    .expect("commits");
    let verdicts = verify_l1(&c.provider, c.deployment.rollup)
        .await
        .expect("verifies");
    assert!(
        matches!(&verdicts[3], Verdict::BadData { number: 4, .. }),
        "{verdicts:?}"
    );
}

/// A settler that was down longer than the rollup's lag finds its next batch too old for L1: it
/// sends nothing, commits nothing, and says which bound and what follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_outside_the_time_bounds_is_not_sent_and_the_error_says_why() {
    let c = chain(U256::ZERO).await;
    let settler = Settler::new(c.provider.clone(), c.deployment.rollup, c.dir.path());
    let rollup = optio_settler::OptioRollup::new(c.deployment.rollup, &c.provider);
    // Both vectors' batches are dated at L1's genesis (and 2 s after); L1 moves a day and an
    // hour on.
    advance(&c.provider, 25 * 3_600).await;
    let err = settler.post_pending().await.expect_err("too old");
    let text = err.to_string();
    assert!(
        text.starts_with("batch 1: dated ") && text.contains("past the rollup's 86400 s lag"),
        "{text}"
    );
    assert_eq!(
        rollup.committedBatches().call().await.expect("reads"),
        U256::ZERO
    );
}

/// The deployment audit `optio verify` runs: an honest deployment's every contract is the
/// audited build, created as the audited build with the arguments its getters read; a rollup
/// whose verifier accepts every proof (it proves a batch with a proof of zeros) is named by its
/// verifier; a genesis other than the empty state's by the rollup's creation; an address that is
/// no rollup by its code.
/// Deploys a verifier that returns true to every call (`PUSH1 1 PUSH1 0 MSTORE PUSH1 32 PUSH1 0
/// RETURN` behind a prelude that deploys it): a rollup with it proves any batch with any words.
async fn accepts_all(provider: &alloy::providers::DynProvider) -> alloy::primitives::Address {
    use alloy::network::TransactionBuilder;
    let code: alloy::primitives::Bytes = "0x600a600c600039600a6000f3600160005260206000f3"
        .parse()
        .expect("hex");
    let tx = alloy::rpc::types::TransactionRequest::default().with_deploy_code(code);
    // (Waiting for the receipt: right after sending, anvil may not have one yet.)
    provider
        .send_transaction(tx)
        .await
        .expect("sends")
        .get_receipt()
        .await
        .expect("mined")
        .contract_address
        .expect("deployed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployment_audit_names_the_contract_that_is_not_the_audited_build() {
    use optio_settler::{OptioRollup, audit_deployment, deploy_verifier, transact};
    let c = chain(U256::ZERO).await;
    let (provider, operator) = (&c.provider, c.operator);
    let empty = genesis_root(&c.vectors);
    let config = |verifier| RollupConfig {
        verifier,
        ..RollupConfig::new(3_600, 6 * 3_600)
    };

    let key: [U256; 30] = std::array::from_fn(|i| U256::from(i as u64 + 1));
    let verifier = deploy_verifier(provider, key).await.expect("verifier");
    let honest = deploy(provider, operator, empty, &config(verifier))
        .await
        .expect("deploys");
    let audit = audit_deployment(provider, honest.rollup)
        .await
        .expect("audits");
    let names: Vec<&str> = audit.contracts.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "OptioRollup",
            "OptioJudge",
            "OptioTrees",
            "Poseidon(3)",
            "Poseidon(4)",
            "Poseidon(5)",
            "Poseidon(6)",
            "OptioRollup creation",
            "OptioTrees creation",
            "Groth16Verifier"
        ]
    );
    assert_eq!(audit.differing().count(), 0, "{audit:?}");
    assert_eq!(audit.verifier, Some(verifier));
    assert_eq!(audit.verifying_key, Some(key));
    // Deployed through a factory (`CREATE` of its call's input, with its call's value, as a
    // multisig or a deterministic deployer would), with a bond: the creations are no
    // transactions of their own, and are found in the calls' traces, checked the same way.
    let factory = alloy::primitives::Address::repeat_byte(0xfa);
    // CALLDATACOPY(0, 0, CALLDATASIZE) CREATE(CALLVALUE, 0, CALLDATASIZE), REVERT if it created
    // nothing (so that gas estimation covers the creation), else RETURN the address.
    support::set_code(
        provider,
        factory,
        vec![
            0x36, 0x60, 0, 0x60, 0, 0x37, 0x36, 0x60, 0, 0x34, 0xf0, 0x80, 0x15, 0x60, 24, 0x57,
            0x60, 0, 0x52, 0x60, 0x20, 0x60, 0, 0xf3, 0x5b, 0x60, 0, 0x60, 0, 0xfd,
        ],
    )
    .await;
    let through_factory = deploy(
        provider,
        operator,
        empty,
        &RollupConfig {
            factory,
            bond: U256::from(1_000_000_000_000_000u64),
            ..config(verifier)
        },
    )
    .await
    .expect("deploys through the factory");
    assert_eq!(through_factory.rollup, factory.create(1));
    let audit = audit_deployment(provider, through_factory.rollup)
        .await
        .expect("audits");
    assert_eq!(audit.differing().count(), 0, "{audit:?}");
    assert_eq!(audit.contracts.len(), 10, "{audit:?}");
    // The block where each creation's code appeared is traced whole, one call a creation
    // searched; through an endpoint without block traces, transaction by transaction.
    for block_traces in [true, false] {
        let endpoint = Endpoint::start(
            &c.url,
            Limits {
                block_traces,
                ..Limits::NONE
            },
        )
        .await;
        let audit = audit_deployment(&endpoint.provider(), through_factory.rollup)
            .await
            .expect("audits");
        assert_eq!(audit.differing().count(), 0, "{audit:?}");
        assert_eq!(audit.contracts.len(), 10, "{audit:?}");
        let counted = |n: &std::sync::Arc<std::sync::atomic::AtomicU64>| {
            n.load(std::sync::atomic::Ordering::Relaxed)
        };
        let (blocks, txs) = (
            counted(&endpoint.counts.block_traces),
            counted(&endpoint.counts.tx_traces),
        );
        if block_traces {
            assert!(
                blocks > 0 && txs == 0,
                "{blocks} blocks, {txs} transactions traced"
            );
        } else {
            assert!(
                blocks == 0 && txs > 0,
                "{blocks} blocks, {txs} transactions traced"
            );
        }
    }

    // The chain's own rollup, deployed without a verifier: audited, and said to have none.
    let audit = audit_deployment(provider, c.deployment.rollup)
        .await
        .expect("audits");
    assert_eq!(audit.differing().count(), 0, "{audit:?}");
    assert_eq!((audit.verifier, audit.verifying_key), (None, None));

    let accepts_all = accepts_all(provider).await;
    let forged = deploy(provider, operator, empty, &config(accepts_all))
        .await
        .expect("deploys");
    let first = optio_settler::read_batch(c.dir.path(), 1)
        .expect("reads")
        .expect("batch 1");
    commit_first(provider, forged.rollup, &first, first.commitment)
        .await
        .expect("commits");
    let rollup = OptioRollup::new(forged.rollup, provider);
    transact(rollup.verifyBatch(U256::from(1u64), first.commitment, [U256::ZERO; 8]))
        .await
        .expect("a proof of zeros passes this verifier");
    assert!(rollup.proven(U256::from(1u64)).call().await.expect("reads"));
    let audit = audit_deployment(provider, forged.rollup)
        .await
        .expect("audits");
    let differing: Vec<(&str, _, &str)> = audit
        .differing()
        .map(|c| {
            let why = c.differs.as_deref().expect("differs");
            (c.name.as_str(), c.address, why)
        })
        .collect();
    assert_eq!(
        differing,
        [(
            "Groth16Verifier",
            accepts_all,
            format!(
                "10 bytes of code, the audited build's has {}",
                optio_settler::AuditedCode::of_artifact(
                    &optio_contracts::contracts_dir(),
                    "Groth16Verifier"
                )
                .expect("the artifact")
                .code
                .len()
            )
            .as_str()
        )]
    );
    assert_eq!(audit.verifying_key, None);

    // A genesis root other than the empty state's: the rollup's creation says so.
    let other = deploy(
        provider,
        operator,
        empty + U256::from(1u64),
        &config(verifier),
    )
    .await
    .expect("deploys");
    let audit = audit_deployment(provider, other.rollup)
        .await
        .expect("audits");
    let differing: Vec<(&str, Option<&str>)> = audit
        .differing()
        .map(|c| (c.name.as_str(), c.differs.as_deref()))
        .collect();
    assert_eq!(differing.len(), 1, "{differing:?}");
    assert_eq!(differing[0].0, "OptioRollup creation");
    assert!(
        differing[0]
            .1
            .is_some_and(|w| w.contains("is not the empty state's")),
        "{differing:?}"
    );

    // The token's address is no rollup: its code says so, and nothing it would name is read.
    let audit = audit_deployment(provider, honest.usdc)
        .await
        .expect("audits");
    assert_eq!(audit.contracts.len(), 1, "{audit:?}");
    assert_eq!(audit.contracts[0].name, "OptioRollup");
    assert!(audit.contracts[0].differs.is_some());
}

/// The vault as `optio verify` reads it (`verify_l1_rebuilt`, `audit_vault`).
async fn vault(
    provider: &alloy::providers::DynProvider,
    rollup: alloy::primitives::Address,
) -> optio_settler::VaultAudit {
    let (_, rebuilt) = optio_settler::verify_l1_rebuilt(provider, rollup)
        .await
        .expect("verifies");
    assert!(rebuilt.complete);
    optio_settler::audit_vault(provider, rollup, &rebuilt)
        .await
        .expect("audits")
}

/// The vault audit: after the vectors' two batches (their faucet credits paid into the vault at
/// commit, a withdrawal of 1,000 USDC in batch 2) the token holds the rollup's books and the
/// books are what the state rebuilt from L1 owes, through a deposit queued and not served and
/// the withdrawal's payment; a token that moves money out of the rollup's balance is named,
/// short by exactly what it moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vault_audit_holds_the_token_to_the_books_and_the_books_to_the_state() {
    let c = chain(U256::ZERO).await;
    let (provider, operator, d) = (&c.provider, c.operator, c.deployment);
    c.post_both().await;
    const WITHDRAWN: u64 = 1_000_000_000;

    let v = vault(provider, d.rollup).await;
    assert!(v.problems().is_empty(), "{:?}", v.problems());
    let owed = v.owed.expect("compared with the state");
    assert_eq!(owed.unpaid_withdrawals, (u128::from(WITHDRAWN), 1));
    assert_eq!(owed.queued_deposits, (0, 0));
    assert!(owed.in_state > 0);
    assert_eq!(v.held, Ok(v.deposited), "nothing paid out yet");
    assert_eq!(owed.total(), v.books());

    // A deposit queued and not served yet is owed too.
    c.deposit_unserved().await;
    let v = vault(provider, d.rollup).await;
    assert!(v.problems().is_empty(), "{:?}", v.problems());
    assert_eq!(
        v.owed.expect("compared").queued_deposits,
        (400_000_000_000, 1)
    );

    // Once paid, the withdrawal is out of the books and no longer owed.
    c.finalize_and_pay().await;
    let v = vault(provider, d.rollup).await;
    assert!(v.problems().is_empty(), "{:?}", v.problems());
    assert_eq!(v.paid, U256::from(WITHDRAWN));
    assert_eq!(v.owed.expect("compared").unpaid_withdrawals, (0, 0));

    // A token whose owner can move the rollup's balance takes 5 micro-USDC.
    support::take_from_vault(provider, &c.url, d.usdc, d.rollup, operator, 5).await;
    let v = vault(provider, d.rollup).await;
    let problems = v.problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("5 short of its books"), "{problems:?}");
}

/// A JSON-RPC endpoint on 127.0.0.1 in front of anvil, as public endpoints are (`Limits`);
/// every call it does not refuse passes through. It counts the `eth_getLogs` queries it was
/// asked (answered or refused), the blocks read by number and the calls it refused for their
/// rate; the task serving it stops when the endpoint is dropped.
struct Endpoint {
    url: String,
    counts: Counts,
    task: tokio::task::JoinHandle<()>,
}

/// What an `Endpoint` refuses.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// An `eth_getLogs` over more blocks than this is refused outright (Infura's and Alchemy's
    /// caps are 10,000 blocks).
    cap: u64,
    /// Without traces, `debug_*` calls are refused as methods it does not have.
    traces: bool,
    /// Without block traces, `debug_traceBlockByNumber` is (as some providers disable it).
    block_traces: bool,
    /// Every this many calls one is refused for the caller's rate (0: none), alternately as
    /// Alchemy does (HTTP 429, with a `Retry-After` header) and as Infura does (-32005 "project
    /// ID request rate exceeded", with how long to wait in its message).
    rate_every: u64,
}

impl Limits {
    const NONE: Limits = Limits {
        cap: u64::MAX,
        traces: true,
        block_traces: true,
        rate_every: 0,
    };
}

#[derive(Debug, Clone, Default)]
struct Counts {
    calls: std::sync::Arc<std::sync::atomic::AtomicU64>,
    log_queries: std::sync::Arc<std::sync::atomic::AtomicU64>,
    block_reads: std::sync::Arc<std::sync::atomic::AtomicU64>,
    rate_refusals: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Blocks traced whole, and transactions traced one by one.
    block_traces: std::sync::Arc<std::sync::atomic::AtomicU64>,
    tx_traces: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Endpoint {
    async fn start(upstream: &str, limits: Limits) -> Self {
        use axum::{Json, extract::State, http::StatusCode, response::IntoResponse, routing::post};
        use serde_json::{Value, json};
        use std::sync::atomic::Ordering::Relaxed;
        let upstream = alloy::providers::ProviderBuilder::new()
            .connect_http(upstream.parse().expect("url"))
            .erased();
        async fn serve(
            State((upstream, limits, counts)): State<(
                alloy::providers::DynProvider,
                Limits,
                Counts,
            )>,
            Json(call): Json<Value>,
        ) -> axum::response::Response {
            let method = call["method"].as_str().unwrap_or_default().to_owned();
            let params = call["params"].clone();
            let answer = |result: Result<Value, (i64, String)>| {
                Json(match result {
                    Ok(v) => json!({"jsonrpc": "2.0", "id": call["id"], "result": v}),
                    Err((code, e)) => {
                        json!({"jsonrpc": "2.0", "id": call["id"], "error": {"code": code, "message": e}})
                    }
                })
                .into_response()
            };
            let n = counts.calls.fetch_add(1, Relaxed) + 1;
            if limits.rate_every > 0 && n % limits.rate_every == 0 {
                let k = counts.rate_refusals.fetch_add(1, Relaxed);
                if k % 2 == 0 {
                    let mut refused = answer(Err((
                        429,
                        "Your app has exceeded its compute units per second capacity".into(),
                    )));
                    *refused.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                    refused
                        .headers_mut()
                        .insert("retry-after", axum::http::HeaderValue::from_static("0"));
                    return refused;
                }
                return answer(Err((
                    -32005,
                    "project ID request rate exceeded, try again in 20ms".into(),
                )));
            }
            if method == "eth_getBlockByNumber" {
                counts.block_reads.fetch_add(1, Relaxed);
            }
            if method.starts_with("debug_") && !limits.traces
                || method == "debug_traceBlockByNumber" && !limits.block_traces
            {
                return answer(Err((-32601, format!("the method {method} does not exist"))));
            }
            match method.as_str() {
                "debug_traceBlockByNumber" => counts.block_traces.fetch_add(1, Relaxed),
                "debug_traceTransaction" => counts.tx_traces.fetch_add(1, Relaxed),
                _ => 0,
            };
            if method == "eth_getLogs" {
                counts.log_queries.fetch_add(1, Relaxed);
                let head = upstream.get_block_number().await.expect("head");
                let block = |v: &Value| match v.as_str() {
                    None | Some("latest" | "pending" | "safe" | "finalized") => head,
                    Some("earliest") => 0,
                    Some(hex) => {
                        u64::from_str_radix(hex.trim_start_matches("0x"), 16).expect("hex")
                    }
                };
                let (from, to) = (block(&params[0]["fromBlock"]), block(&params[0]["toBlock"]));
                if to.saturating_sub(from) + 1 > limits.cap {
                    // (Infura's code for it, the same as for its rate limit.)
                    return answer(Err((
                        -32005,
                        format!("query exceeds the {}-block range limit", limits.cap),
                    )));
                }
            }
            answer(
                upstream
                    .raw_request::<_, Value>(method.into(), params)
                    .await
                    .map_err(|e| (-32000, e.to_string())),
            )
        }
        let counts = Counts::default();
        let app = axum::Router::new().route("/", post(serve)).with_state((
            upstream,
            limits,
            counts.clone(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serves");
        });
        Endpoint { url, counts, task }
    }

    /// A provider through it as `optio verify` and `optio exit` make theirs.
    fn provider(&self) -> alloy::providers::DynProvider {
        optio_settler::reader(&self.url).expect("provider")
    }

    fn log_queries(&self) -> u64 {
        self.counts
            .log_queries
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn block_reads(&self) -> u64 {
        self.counts
            .block_reads
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn rate_refusals(&self) -> u64 {
        self.counts
            .rate_refusals
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The watchtower, the vault audit and the rebuild the escape hatch runs read L1's logs through
/// an endpoint that caps how many blocks one query spans: the batches' commitments and the
/// withdrawal's payment lie hundreds of blocks apart, a query over all of them is refused, and
/// every batch is still found, in order, with the same data as through an uncapped endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_data_is_read_through_an_endpoint_that_caps_its_log_ranges() {
    use alloy::rpc::types::Filter;
    use optio_settler::Verdict;
    let c = chain(U256::ZERO).await;
    let (provider, d) = (&c.provider, c.deployment);
    let settler = Settler::new(provider.clone(), d.rollup, c.dir.path());
    let mine = |blocks: u64| async move {
        let _: serde_json::Value = provider
            .raw_request("anvil_mine".into(), (U256::from(blocks),))
            .await
            .expect("mines");
    };
    // Batch 1, 300 blocks, batch 2, 300 blocks, the withdrawal paid, 300 blocks.
    let second = c.hold_second();
    assert_eq!(settler.post_pending().await.expect("posts"), 1);
    mine(300).await;
    second.put_back();
    assert_eq!(settler.post_pending().await.expect("posts"), 1);
    mine(300).await;
    c.finalize_and_pay().await;
    mine(300).await;

    let endpoint = Endpoint::start(
        &c.url,
        Limits {
            cap: 100,
            ..Limits::NONE
        },
    )
    .await;
    let capped = endpoint.provider();
    assert!(
        capped
            .get_logs(&Filter::new().address(d.rollup).from_block(0u64))
            .await
            .is_err(),
        "the endpoint refuses a query over every block"
    );
    let before = endpoint.log_queries();
    let (verdicts, rebuilt) = optio_settler::verify_l1_rebuilt(&capped, d.rollup)
        .await
        .expect("reads through the cap");
    assert_eq!(verdicts, vec![Verdict::Agrees(1), Verdict::Agrees(2)]);
    // One scan of about 915 blocks: the whole range and its halvings refused down to 115
    // blocks, then 58-block windows answered and kept (about 20 queries in all), not halved
    // again from the whole range after each answer (about 80).
    let scan = endpoint.log_queries() - before;
    let head = provider.get_block_number().await.expect("head");
    eprintln!("one scan of blocks up to {head} through a 100-block cap: {scan} queries");
    // At most a query a window of more than half the cap, and the halvings (four here).
    assert!(scan <= head / 50 + 6, "{scan} queries for {head} blocks");
    // The scan found the rollup's creation block once, by a binary search over block times
    // (log2 of the head's number in header reads, plus the head); the vault's scan starts there
    // without searching again.
    let searched = endpoint.block_reads();
    assert!((9..=13).contains(&searched), "{searched} block reads");
    let vault = optio_settler::audit_vault(&capped, d.rollup, &rebuilt)
        .await
        .expect("audits through the cap");
    assert_eq!(
        endpoint.block_reads(),
        searched,
        "the vault's scan searched again"
    );
    // (The payment's log lies 300 blocks after the batches'.)
    reads_as_directly(&capped, provider, d.rollup, vault).await;
}

/// What the vault audit through an endpoint found agrees with the vectors' batches after the
/// withdrawal's payment (no problem, nothing unpaid: the payment's log was found), and the
/// batches' data read through it is what anvil gives directly.
async fn reads_as_directly(
    through: &alloy::providers::DynProvider,
    direct: &alloy::providers::DynProvider,
    rollup: alloy::primitives::Address,
    vault: optio_settler::VaultAudit,
) {
    assert!(vault.problems().is_empty(), "{:?}", vault.problems());
    assert_eq!(
        vault.owed.expect("compared").unpaid_withdrawals,
        (0, 0),
        "the payment's log is found"
    );
    assert_eq!(
        optio_settler::blobs_from_l1(through, rollup, 2)
            .await
            .expect("reads through the endpoint"),
        optio_settler::blobs_from_l1(direct, rollup, 2)
            .await
            .expect("reads")
    );
}

/// The watchtower, the vault audit and the escape hatch's rebuild read L1 through an endpoint
/// that refuses every fourth call for the caller's rate, as public endpoints do under load (when
/// the operator has gone, every user's exit reads the whole history through them): the refused
/// calls are sent again after the wait the endpoint asks for, and everything is read as through
/// anvil directly. A provider without the retries stops at the first refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_data_is_read_through_an_endpoint_that_limits_its_rate() {
    use optio_settler::Verdict;
    let c = chain(U256::ZERO).await;
    let (provider, d) = (&c.provider, c.deployment);
    c.post_both().await;
    c.finalize_and_pay().await;
    let endpoint = Endpoint::start(
        &c.url,
        Limits {
            rate_every: 4,
            ..Limits::NONE
        },
    )
    .await;
    let limited = endpoint.provider();
    let (verdicts, rebuilt) = optio_settler::verify_l1_rebuilt(&limited, d.rollup)
        .await
        .expect("reads through the rate limit");
    assert_eq!(verdicts, vec![Verdict::Agrees(1), Verdict::Agrees(2)]);
    let vault = optio_settler::audit_vault(&limited, d.rollup, &rebuilt)
        .await
        .expect("audits through the rate limit");
    reads_as_directly(&limited, provider, d.rollup, vault).await;
    let refused = endpoint.rate_refusals();
    eprintln!("{refused} calls refused for their rate and sent again");
    assert!(refused >= 10, "{refused}");
    // Without the retries: stopped at the first refusal.
    let plain = alloy::providers::ProviderBuilder::new()
        .connect_http(endpoint.url.parse().expect("url"))
        .erased();
    let error = optio_settler::verify_l1_rebuilt(&plain, d.rollup)
        .await
        .err()
        .expect("a refusal stops it")
        .to_string();
    assert!(
        error.contains("429") || error.contains("rate exceeded"),
        "{error}"
    );
}

/// The runtime code of a forwarder: it calls the address in its input's first 20 bytes with the
/// rest of its input, and returns or reverts with what that call returned (45 bytes). It stands
/// for an operator that is a contract, a multisig or a smart account, without their checks.
const FORWARDER: &str =
    "6014360380601460003760006000826000600060003560601c5af13d600060003e6028573d6000fd5b3d6000f3";

/// The runtime code of a contract that calls `target` with `call`, bytes it keeps in its own
/// code (copied to memory, then `CALL`), and reverts if that call does: an operator that builds
/// its call itself, so that its transaction's input does not carry it.
fn builder(target: alloy::primitives::Address, call: &[u8]) -> Vec<u8> {
    let len = u16::try_from(call.len())
        .expect("a call under 64 KiB")
        .to_be_bytes();
    let mut code = vec![0x61, len[0], len[1], 0x61, 0, 54, 0x60, 0, 0x39]; // CODECOPY(0, 54, len)
    code.extend([
        0x60, 0, 0x60, 0, 0x61, len[0], len[1], 0x60, 0, 0x60, 0, 0x73,
    ]);
    code.extend(target.as_slice());
    // GAS CALL ISZERO PUSH1 48 JUMPI STOP JUMPDEST REVERT(0, 0)
    code.extend([
        0x5a, 0xf1, 0x15, 0x60, 48, 0x57, 0x00, 0x5b, 0x60, 0, 0x60, 0, 0xfd,
    ]);
    assert_eq!(code.len(), 54);
    code.extend(call);
    code
}

/// An operator that commits through a contract: each commitment's transaction is a call to the
/// forwarder, whose input carries the `commitBatch` call after the rollup's address. The
/// watchtower and the escape hatch read every batch from inside those transactions, the same
/// bytes the node wrote (before, they decoded the transaction's input as the call and stopped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_committed_through_a_contract_are_read_from_inside_its_transactions() {
    use alloy::network::TransactionBuilder;
    use alloy::sol_types::SolCall;
    use optio_settler::{OptioRollup, TestUSDC, Verdict, transact};
    let anvil = optio_contracts::Anvil::start_with(&["--timestamp", GENESIS_S]).expect("anvil");
    forge_build();
    let dir = tempfile::tempdir().expect("temp dir");
    let (vectors, _) = write_batches(dir.path());
    let provider = connect(&anvil.url, KEY).expect("provider");
    let forwarder = alloy::primitives::Address::repeat_byte(0x0f);
    let forwarder_code: Vec<u8> = (0..FORWARDER.len())
        .step_by(2)
        .map(|k| u8::from_str_radix(&FORWARDER[k..k + 2], 16).expect("hex"))
        .collect();
    let set_code = |code: Vec<u8>| support::set_code(&provider, forwarder, code);
    set_code(forwarder_code.clone()).await;
    let genesis = genesis_root(&vectors);
    // (A verifier that takes any proof: the proofs below are read back, not checked.)
    let config = RollupConfig {
        verifier: accepts_all(&provider).await,
        ..RollupConfig::new(3_600, 6 * 3_600)
    };
    let d = deploy(&provider, forwarder, genesis, &config)
        .await
        .expect("deploys");
    let through_input = |input: Vec<u8>| {
        let provider = provider.clone();
        async move {
            let tx = alloy::rpc::types::TransactionRequest::default()
                .with_to(forwarder)
                .with_input(input);
            let receipt = provider
                .send_transaction(tx)
                .await
                .expect("sends")
                .get_receipt()
                .await
                .expect("mined");
            assert!(receipt.status(), "the forwarded call succeeds");
        }
    };
    let through = |target: alloy::primitives::Address, call: Vec<u8>| {
        through_input([target.as_slice(), &call].concat())
    };
    // The forwarder holds the USDC the faucet's credits need and lets the rollup take it.
    transact(TestUSDC::new(d.usdc, &provider).mint(forwarder, U256::from(u64::MAX)))
        .await
        .expect("mints");
    through(
        d.usdc,
        TestUSDC::approveCall {
            spender: d.rollup,
            amount: U256::MAX,
        }
        .abi_encode(),
    )
    .await;
    let (mut blobs, mut commitments) = (Vec::new(), Vec::new());
    for number in 1..=2 {
        let b = optio_settler::read_batch(dir.path(), number)
            .expect("reads")
            .expect("written");
        blobs.push(b.blob.to_vec());
        commitments.push(b.commitment);
        let call = OptioRollup::commitBatchCall {
            number: U256::from(number),
            previousRoot: b.previous_root,
            newRoot: b.new_root,
            firstSeq: b.first_seq,
            lastSeq: b.last_seq,
            priorityServed: b.priority_served,
            withdrawalsHash: b.withdrawals_hash,
            commitment: b.commitment,
            data: b.blob,
            authorizations: b.authorizations,
        };
        if number == 1 {
            through(d.rollup, call.abi_encode()).await;
        } else {
            // Batch 2 from a contract that builds the call itself (here from its own code):
            // the transaction's input is empty, and only its trace shows the call.
            set_code(builder(d.rollup, &call.abi_encode())).await;
            through_input(Vec::new()).await;
            set_code(forwarder_code.clone()).await;
        }
    }
    assert_eq!(
        OptioRollup::new(d.rollup, &provider)
            .committedBatches()
            .call()
            .await
            .expect("reads"),
        U256::from(2u64)
    );
    let (verdicts, rebuilt) = optio_settler::verify_l1_rebuilt(&provider, d.rollup)
        .await
        .expect("reads the batches from inside the operator's transactions");
    assert_eq!(verdicts, vec![Verdict::Agrees(1), Verdict::Agrees(2)]);
    assert!(rebuilt.complete);
    assert_eq!(
        optio_settler::blobs_from_l1(&provider, d.rollup, 2)
            .await
            .expect("reads"),
        blobs
    );
    // Through an endpoint that gives no trace, batch 2 cannot be read, and the error says why.
    let untraced = Endpoint::start(
        &anvil.url,
        Limits {
            traces: false,
            ..Limits::NONE
        },
    )
    .await;
    let error = optio_settler::verify_l1_rebuilt(&untraced.provider(), d.rollup)
        .await
        .err()
        .expect("batch 2 unread")
        .to_string();
    assert!(
        error.contains("batch 2: its commitment's transaction")
            && error.contains("needs an endpoint that traces transactions"),
        "{error}"
    );

    // Both batches proven through the forwarder too: batch 1's call with a second one for the
    // same batch appended (the rollup decodes the first and ignores the rest), batch 2's alone.
    // An auditor's check of each proof reads exactly the one the rollup ran from the
    // transaction's trace; through an endpoint without traces, from the input where it is the
    // only one, and batch 1's is said to be unread (two different proofs there), not guessed.
    let proof = |k: u64| -> [U256; 8] { std::array::from_fn(|i| U256::from(k * 100 + i as u64)) };
    let prove = |number: u64, proof: [U256; 8]| {
        OptioRollup::verifyBatchCall {
            number: U256::from(number),
            commitment: commitments[number as usize - 1],
            proof,
        }
        .abi_encode()
    };
    through(d.rollup, [prove(1, proof(1)), prove(1, proof(9))].concat()).await;
    through(d.rollup, prove(2, proof(2))).await;
    let read = |accepted: Vec<optio_settler::AcceptedProof>| {
        accepted
            .into_iter()
            .map(|p| (p.number, p.proof, p.read, p.inputs.is_some()))
            .collect::<Vec<_>>()
    };
    use optio_settler::ProofRead;
    assert_eq!(
        read(
            optio_settler::accepted_proofs(&provider, d.rollup, rebuilt.created)
                .await
                .expect("reads")
        ),
        [
            (1, Some(proof(1)), ProofRead::Traced, true),
            (2, Some(proof(2)), ProofRead::Traced, true)
        ]
    );
    let accepted = read(
        optio_settler::accepted_proofs(&untraced.provider(), d.rollup, rebuilt.created)
            .await
            .expect("reads without traces"),
    );
    assert_eq!(accepted[1..], [(2, Some(proof(2)), ProofRead::Input, true)]);
    assert!(
        matches!(&accepted[0], (1, None, ProofRead::Unread(why), true)
            if why.contains("carries 2 different proofs of it")),
        "{accepted:?}"
    );
}
