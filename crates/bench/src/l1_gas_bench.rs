//! L1 gas, measured on a real EVM (anvil from npm, the contracts built by forge): commitBatch for
//! batches of the realistic flow (settlement_bench::Flow) at 100 and 1,000 fills, per trade; and
//! deposit, forced withdrawal and forced close requests and freeze. Each batch is posted with and without its
//! authorization section (a 126-byte signed-order record per fill side, for the challenge; the
//! flow's orders are all distinct, the worst case for a section that posts each record once).
//! The section's size is also measured on the engine benchmark's stream, where resting orders
//! fill several times and takers sweep levels: each record once against one per side. Printed
//! beside StarkEx's published figures, and per trade beside Loopring's and zkSync Lite's.
//! The commitment includes the evaluation of the posted words that binds the proof to them; the
//! proof's verification is measured apart (`optio-bench prove`), and the comparison says so.

use alloy::primitives::U256;
use alloy::providers::Provider;
use optio_settler::{OptioRollup, RollupConfig, TestUSDC, connect, deploy, transact};
use rand::SeedableRng;

use crate::settlement_bench::Flow;

/// anvil's first default account.
const KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// Arguments.
#[derive(clap::Args)]
pub struct Args {}

/// Runs the benchmark.
pub fn run(_: &Args) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(measure())
}

async fn measure() -> anyhow::Result<()> {
    optio_contracts::forge_build().map_err(anyhow::Error::msg)?;
    let flow = Flow::new()?;
    // L1 starts at the flow's engine time: the rollup takes a batch only within its time bounds
    // of the block's time.
    let genesis_s = (flow.now / 1_000).to_string();
    let anvil = optio_contracts::Anvil::start_with(&["--timestamp", &genesis_s])
        .map_err(anyhow::Error::msg)?;
    let provider = connect(&anvil.url, KEY)?;
    let operator = provider.get_accounts().await?[0];
    let d = deploy(
        &provider,
        operator,
        U256::ZERO,
        &RollupConfig::new(3_600, 6 * 3_600),
    )
    .await?;
    let rollup = OptioRollup::new(d.rollup, &provider);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    println!(
        "L1 gas on anvil of commitBatch (the words' evaluation included; the proof's verification is measured by `optio-bench prove`: add its share per batch)"
    );
    println!(
        "{:>8} {:>12} {:>14} {:>16} {:>20} {:>22}",
        "fills", "blob bytes", "commit gas", "gas per trade", "without signatures", "nor marks"
    );
    let (mut number, mut root, mut seq) = (1u64, U256::ZERO, 0u64);
    for n in [100u64, 1_000] {
        let fills = flow.fills(n, &mut rng);
        let mut with_marks = fills.clone();
        with_marks.extend(flow.marks());
        let mut gas = Vec::new();
        let records: Vec<Option<optio_state::auth::Authorization>> = (0..2 * n)
            .map(|k| Some(sample_record(k, &mut rng)))
            .collect();
        // Each mark op with the oracle's attestation (random bytes of the same size: calldata
        // gas depends on them only through zero bytes).
        let attested: Vec<Option<optio_state::auth::PriceAttestation>> = flow
            .marks()
            .iter()
            .map(|_| {
                let mut signature = [0u8; 65];
                rand::Rng::fill(&mut rng, &mut signature[..64]);
                signature[64] = 27;
                Some(optio_state::auth::PriceAttestation {
                    published_ms: 1_800_000_000_000,
                    signature,
                })
            })
            .collect();
        let section = optio_state::auth::section_of(&records, &[], &attested);
        for (ops, auths) in [
            (&with_marks, section.clone()),
            (&with_marks, Vec::new()),
            (&fills, Vec::new()),
        ] {
            let blob = flow.blob(ops);
            let (meta, decoded) = optio_state::decode(&blob).map_err(anyhow::Error::msg)?;
            let commitment = optio_state::blob::commitment(
                &optio_state::blob::encode_ops(&meta, &decoded).map_err(anyhow::Error::msg)?,
            );
            let next = U256::from(number + 1_000);
            let receipt = transact(rollup.commitBatch(
                U256::from(number),
                root,
                next,
                seq + 1,
                seq + n,
                0,
                optio_state::withdrawals_hash(&optio_state::withdrawals(&decoded)).into(),
                U256::from_be_bytes(optio_state::poseidon::to_bytes(&commitment)),
                blob.clone().into(),
                auths.into(),
            ))
            .await?;
            gas.push((receipt.gas_used, blob.len()));
            (number, root, seq) = (number + 1, next, seq + n);
        }
        println!(
            "{n:>8} {:>12} {:>14} {:>16.0} {:>20.0} {:>22.0}",
            gas[0].1,
            gas[0].0,
            gas[0].0 as f64 / n as f64,
            gas[1].0 as f64 / n as f64,
            gas[2].0 as f64 / n as f64
        );
    }
    section_sharing();
    // A batch opening the operator's backstop (account 0) and account 1 and listing an
    // instrument: L1 takes a priority request only for what committed batches opened or listed.
    let setup = [
        optio_state::Op::OpenAccount {
            owner: optio_types::Address(operator.into_array()),
        },
        optio_state::Op::OpenAccount {
            owner: optio_types::Address([7; 20]),
        },
        optio_state::Op::ListInstrument {
            spec: flow.specs[0].clone(),
        },
    ];
    let blob = flow.blob(&setup);
    let (meta, decoded) = optio_state::decode(&blob).map_err(anyhow::Error::msg)?;
    let commitment = optio_state::blob::commitment(
        &optio_state::blob::encode_ops(&meta, &decoded).map_err(anyhow::Error::msg)?,
    );
    transact(rollup.commitBatch(
        U256::from(number),
        root,
        U256::from(number + 1_000),
        seq + 1,
        seq + 1,
        0,
        optio_state::withdrawals_hash(&[]).into(),
        U256::from_be_bytes(optio_state::poseidon::to_bytes(&commitment)),
        blob.into(),
        Vec::new().into(),
    ))
    .await?;
    let usdc = TestUSDC::new(d.usdc, &provider);
    transact(usdc.mint(operator, U256::from(1_000_000_000u64))).await?;
    transact(usdc.approve(d.rollup, U256::MAX)).await?;
    let deposit = transact(rollup.deposit(1, U256::from(1_000_000u64)))
        .await?
        .gas_used;
    let forced = transact(rollup.requestWithdrawal(1)).await?.gas_used;
    let close = transact(rollup.requestClose(1, 0)).await?.gas_used;
    let _: serde_json::Value = provider
        .raw_request("evm_increaseTime".into(), (6 * 3_600 + 1,))
        .await?;
    let _: serde_json::Value = provider.raw_request("evm_mine".into(), ()).await?;
    let freeze = transact(rollup.freeze()).await?.gas_used;
    println!(
        "\n{:<28} {:>10} {:>32}",
        "operation", "Optio", "StarkEx (published, with proofs)"
    );
    println!(
        "{:<28} {:>10} {:>32}",
        "trade (1,000-fill batch)", "see above", "426 (spot trade)"
    );
    println!("{:<28} {:>10} {:>32}", "deposit", deposit, "10,000");
    println!(
        "{:<28} {:>10} {:>32}",
        "forced withdrawal request", forced, "86,185"
    );
    println!("{:<28} {:>10} {:>32}", "forced close request", close, "");
    println!("{:<28} {:>10} {:>32}", "freeze", freeze, "");
    println!(
        "{:<28} {:>10} {:>32}",
        "exit, two positions", "~3.1M (forge gas report)", ""
    );
    println!(
        "StarkEx: docs.starkware.co, 'Gas usage for transactions in StarkEx' (recursive proofs)."
    );
    println!(
        "Per trade, published: Loopring 3.x 375 gas in rollup mode, proof verification included \
         (Loopring/protocols, packages/loopring_v3/README.md); zkSync Lite ~400 gas per \
         transaction to publish the state, plus its SNARK verification per block (zkSync FAQ)."
    );
    Ok(())
}

/// What the gateway logs for a signed order: realistic field sizes, a random signature.
fn sample_record(k: u64, rng: &mut impl rand::Rng) -> optio_state::auth::Authorization {
    let mut signature = [0u8; 65];
    rng.fill(&mut signature[..64]);
    signature[64] = 27;
    optio_state::auth::Authorization {
        nonce: 1_700_000_000_000 + k,
        expiry_s: 1_800_000_000,
        signer: optio_types::Address([0x5a; 20]),
        domain: 0,
        limit_price: optio_types::Price(1_234_500_000),
        amount: optio_types::Qty(150_000_000),
        max_fee: 10_000_000,
        signature,
    }
}

/// Calldata gas of `bytes` at EIP-7623's floor price (10 per zero byte, 40 per other byte).
fn floor_gas(bytes: &[u8]) -> u64 {
    bytes.iter().map(|&b| if b == 0 { 10 } else { 40 }).sum()
}

/// The authorization section of the fills an engine makes (the engine benchmark's stream, its
/// orders each given a record with realistic field sizes and a random signature), cut in
/// batches of 100 and 1,000 fills: each record once (the posted layout) against one record per
/// fill side, in bytes and calldata gas per trade.
fn section_sharing() {
    use optio_state::auth::{Authorization, RECORD_BYTES, section_of};
    let (mut engine, inputs) = crate::engine_bench::default_stream(300_000);
    let mut sides = Vec::new();
    let mut events = Vec::new();
    for input in &inputs {
        events.clear();
        let _ = engine.apply(input, &mut events);
        for ev in &events {
            if let optio_types::Event::Fill {
                maker_order,
                taker_order,
                ..
            } = ev
            {
                sides.push(maker_order.0);
                sides.push(taker_order.0);
            }
        }
    }
    let record =
        |order: u64| sample_record(order, &mut rand_chacha::ChaCha8Rng::seed_from_u64(order));
    println!(
        "\nauthorization section on the engine benchmark's stream ({} fills of {} inputs), per trade:",
        sides.len() / 2,
        inputs.len()
    );
    println!(
        "{:>8} {:>14} {:>16} {:>18} {:>20} {:>8}",
        "fills", "orders/batch", "bytes, shared", "bytes, per side", "floor gas, shared", "ratio"
    );
    for n in [100usize, 1_000] {
        let (mut shared, mut each, mut gas_shared, mut gas_each, mut orders) = (0, 0, 0, 0, 0);
        let batches = sides.len() / (2 * n);
        for chunk in sides.chunks_exact(2 * n) {
            let records: Vec<Option<Authorization>> =
                chunk.iter().map(|&o| Some(record(o))).collect();
            let section = section_of(&records, &[], &[]);
            let one_per_side: Vec<u8> = records
                .iter()
                .flat_map(|r| r.expect("signed").encode())
                .collect();
            orders += (section.len() - 4 - 8 * n - 4) / RECORD_BYTES;
            shared += section.len();
            each += one_per_side.len();
            gas_shared += floor_gas(&section);
            gas_each += floor_gas(&one_per_side);
        }
        let per_trade = |v: usize| v as f64 / (batches * n) as f64;
        println!(
            "{n:>8} {:>14.0} {:>16.1} {:>18.1} {:>20.0} {:>8.2}   (one record per side: {:.0} gas)",
            orders as f64 / batches as f64,
            per_trade(shared),
            per_trade(each),
            per_trade(gas_shared as usize),
            gas_shared as f64 / gas_each as f64,
            per_trade(gas_each as usize),
        );
    }
}
