//! The embedded chain runs the real contracts through the same client code as anvil: deploy,
//! ERC-20 mint/approve, a deposit into the rollup's priority queue read back by the settler, a
//! revert with its decoded reason, the Poseidon hashers agreeing with Rust, events by filter,
//! calldata by transaction hash, bad input refused with its code (no transaction, another
//! chain's, an unknown method) and nothing mined for it, and blocks that keep coming on their
//! own; logical time with a floor.

use std::time::Duration;

use alloy::primitives::U256;
use alloy::providers::Provider;
use optio_chain::Chain;
use optio_settler::{
    OptioRollup, PriorityKind, RollupConfig, TestUSDC, connect, deploy, priority_ops, transact,
};

/// anvil's first default key (any key works: the chain funds it at genesis).
const KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// A chain with `KEY`'s account funded at genesis and an empty block every `block_time`; the
/// operator's address and a provider signing with `KEY`.
async fn start(
    block_time: Duration,
) -> (
    Chain,
    alloy::primitives::Address,
    optio_settler::DynProvider,
) {
    let operator = optio_settler::signer_address(KEY).expect("address");
    let chain = Chain::start(
        31_337,
        &[(operator, U256::from(10u64).pow(U256::from(21u64)))],
        block_time,
    )
    .await
    .expect("starts");
    let provider = connect(&chain.url, KEY).expect("provider");
    (chain, operator, provider)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollup_runs_on_the_embedded_chain() {
    optio_contracts::forge_build().expect("forge build");
    let (chain, operator, provider) = start(Duration::from_millis(200)).await;
    assert_eq!(provider.get_chain_id().await.expect("chain id"), 31_337);
    let genesis = U256::from_be_bytes(optio_state::poseidon::to_bytes(
        &optio_state::SettlementState::new().root(),
    ));
    let d = deploy(&provider, operator, genesis, &RollupConfig::new(60, 3_600))
        .await
        .expect("deploys");
    let rollup = OptioRollup::new(d.rollup, &provider);
    let usdc = TestUSDC::new(d.usdc, &provider);
    transact(usdc.mint(operator, U256::from(5_000_000u64)))
        .await
        .expect("mint");
    transact(usdc.approve(d.rollup, U256::MAX))
        .await
        .expect("approve");
    let receipt = transact(rollup.deposit(u32::MAX, U256::from(2_000_000u64)))
        .await
        .expect("deposit");
    let event = receipt
        .decoded_log::<OptioRollup::Deposit>()
        .expect("the Deposit event in the receipt");
    assert_eq!(event.owner, operator);
    assert_eq!(
        usdc.balanceOf(d.rollup).call().await.expect("reads"),
        U256::from(2_000_000u64)
    );

    // The settler's view of the queue, at the head and one block deep.
    let ops = priority_ops(&provider, d.rollup, 0, 0)
        .await
        .expect("reads");
    assert_eq!(ops.len(), 1);
    assert_eq!(
        (ops[0].kind, ops[0].owner, ops[0].amount),
        (PriorityKind::Deposit, operator, U256::from(2_000_000u64))
    );

    // A revert comes back with the contract's reason, and changes nothing.
    let err = rollup
        .deposit(1, U256::ZERO)
        .call()
        .await
        .expect_err("zero deposits revert");
    let selector = &alloy::primitives::keccak256("ZeroAmount()")[..4];
    assert!(
        err.as_revert_data()
            .is_some_and(|d| d.starts_with(selector)),
        "{err}"
    );
    assert!(transact(rollup.deposit(1, U256::ZERO)).await.is_err());
    assert_eq!(
        rollup.priorityCount().call().await.expect("reads"),
        U256::from(1u64)
    );

    // Poseidon on this EVM agrees with Rust: the genesis root went through the constructor's
    // zero-subtree hashing, and freeze is refused until a deadline passes.
    assert!(transact(rollup.freeze()).await.is_err(), "nothing overdue");

    // Events by filter and calldata by hash, as the watchtower reads them.
    let logs = provider
        .get_logs(
            &alloy::rpc::types::Filter::new()
                .address(d.rollup)
                .event_signature(
                    <OptioRollup::Deposit as alloy::sol_types::SolEvent>::SIGNATURE_HASH,
                )
                .from_block(0u64),
        )
        .await
        .expect("logs");
    assert_eq!(logs.len(), 1);
    let tx = provider
        .get_transaction_by_hash(logs[0].transaction_hash.expect("hash"))
        .await
        .expect("reads")
        .expect("found");
    assert_eq!(alloy::consensus::Transaction::to(&tx), Some(d.rollup));

    // Bad input is refused with its code and mines nothing: bytes that are no transaction, a
    // transaction for another chain, an unknown method.
    let head = provider.get_block_number().await.expect("head");
    let garbage = provider
        .raw_request::<_, serde_json::Value>("eth_sendRawTransaction".into(), ("0x1234",))
        .await
        .expect_err("not a transaction");
    assert!(garbage.to_string().contains("-32602"), "{garbage}");
    let unknown = provider
        .raw_request::<_, serde_json::Value>("eth_mineAndPray".into(), ())
        .await
        .expect_err("unknown method");
    assert!(unknown.to_string().contains("-32601"), "{unknown}");
    let foreign = alloy::providers::ProviderBuilder::new()
        .wallet(alloy::network::EthereumWallet::from(
            KEY.parse::<alloy::signers::local::PrivateKeySigner>()
                .expect("key"),
        ))
        .with_chain_id(1)
        .connect_http(chain.url.parse().expect("url"));
    let sent = foreign
        .send_transaction(
            alloy::rpc::types::TransactionRequest::default()
                .to(operator)
                .value(U256::from(1u64)),
        )
        .await;
    assert!(
        sent.is_err_and(|e| e.to_string().contains("chain id")),
        "a transaction for another chain is refused"
    );
    // Only the timer's empty blocks came since.
    for n in head + 1..=provider.get_block_number().await.expect("head") {
        let block = provider
            .get_block_by_number(n.into())
            .await
            .expect("reads")
            .expect("exists");
        assert!(
            block.transactions.is_empty(),
            "block {n} holds a refused transaction"
        );
    }

    // Blocks keep coming with nobody sending.
    let before = provider.get_block_number().await.expect("head");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(provider.get_block_number().await.expect("head") > before);
}

/// A reorg the chain's owner asks for: the replaced blocks' transaction is gone (no receipt,
/// its transfer undone, the sender's nonce free again), the fork is one block longer with a new
/// hash at every replaced height, and a reorg deeper than the kept states is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reorg_drops_the_replaced_blocks_transactions() {
    use alloy::network::TransactionBuilder;
    let (chain, _, provider) = start(Duration::from_secs(3_600)).await;
    chain.mine(3);
    let to = alloy::primitives::Address::repeat_byte(0x77);
    let tx = alloy::rpc::types::TransactionRequest::default()
        .with_to(to)
        .with_value(U256::from(12_345u64));
    let hash = *provider
        .send_transaction(tx.clone())
        .await
        .expect("sends")
        .tx_hash();
    assert!(
        provider
            .get_transaction_receipt(hash)
            .await
            .expect("reads")
            .is_some()
    );
    assert_eq!(
        provider.get_balance(to).await.expect("reads"),
        U256::from(12_345u64)
    );
    let head = chain.head();
    let replaced = provider
        .get_block_by_number(head.into())
        .await
        .expect("reads")
        .expect("the block")
        .header
        .hash;

    let gone = chain.reorg(2).expect("reorgs");
    assert_eq!(gone, vec![hash]);
    assert_eq!(chain.head(), head + 1);
    assert!(
        provider
            .get_transaction_receipt(hash)
            .await
            .expect("reads")
            .is_none()
    );
    assert_eq!(provider.get_balance(to).await.expect("reads"), U256::ZERO);
    let fork = provider
        .get_block_by_number(head.into())
        .await
        .expect("reads")
        .expect("the block")
        .header
        .hash;
    assert_ne!(fork, replaced);
    // The sender's nonce is free again: the same transfer goes through once more.
    let _sent = provider.send_transaction(tx).await.expect("sends again");
    assert_eq!(
        provider.get_balance(to).await.expect("reads"),
        U256::from(12_345u64)
    );

    assert!(chain.reorg(0).is_err());
    assert!(chain.reorg(64).is_err());
    assert!(chain.reorg(chain.head()).is_err());
}

/// Logical time: each block one step after the one before, never behind the floor clock (a
/// simulator's), which may jump ahead; the chain then steps on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_time_steps_and_never_falls_behind_its_floor() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let (chain, _, _) = start(Duration::from_secs(3_600)).await;
    chain.logical_time(2);
    let clock = Arc::new(AtomicU64::new(0));
    let floor = clock.clone();
    chain.logical_floor(move || floor.load(Ordering::Acquire));
    let start = chain.head_time();
    chain.mine(3);
    assert_eq!(chain.head_time(), start + 6, "steps of 2 s below the floor");
    clock.store(start + 1_000, Ordering::Release);
    chain.mine(1);
    assert_eq!(chain.head_time(), start + 1_000, "the floor, once ahead");
    chain.mine(2);
    assert_eq!(chain.head_time(), start + 1_004, "steps from there");
}
