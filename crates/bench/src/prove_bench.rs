//! Validity proofs: constraints per op slot and per mark (a path each, or a window of 64 ids
//! sharing one), key generation and proving time
//! per trade and peak memory on this machine, side by side with the measured anchor of a
//! straightforward prototype (about 96k constraints and 1.6 to 2.9 s per trade on 2 cores); L1
//! gas of the verifier on a real EVM (the embedded chain), one proof per transaction and many
//! per transaction, per batch and per trade at 16, 64 and 256 trades per batch; and how many
//! prover cores keep up with 100 trades/s.

use std::time::{Duration, Instant};

use alloy::primitives::U256;
use ark_ec::VariableBaseMSM;
use ark_ff::{PrimeField, UniformRand};
use ark_std::rand::SeedableRng;
use ark_std::rand::rngs::StdRng;
use optio_prover::keys::{Msm, check};
use optio_prover::solidity::{self, Word};
use optio_prover::witness::{KEYS, empty};
use optio_prover::{Keys, Shape, prove, verify, witness};
use optio_settler::{Groth16Verifier, connect, deploy_verifier, transact};
use optio_state::{Op, SettlementState};
use optio_types::{
    AccountId, Address, Amount, InstrumentId, InstrumentSpec, MONEY_SCALE, Price, QTY_SCALE, Qty,
    Side,
};

/// The prototype's figures (task text): constraints per trade, seconds per trade on 2 cores.
const ANCHOR_CONSTRAINTS: f64 = 96_000.0;
const ANCHOR_SECONDS: (f64, f64) = (1.6, 2.9);

/// anvil's first default key (the embedded chain funds it).
const KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Fills in the proved batch (op slots of the circuit).
    #[arg(long, default_value_t = 4)]
    slots: usize,
    /// Accounts the proved batch's fills are spread among (each fills with the next).
    #[arg(long, default_value_t = 2)]
    accounts: usize,
    /// Skip proving (constraint counts and gas only need one small proof).
    #[arg(long)]
    no_prove: bool,
    /// Also prove a devnet batch (16 fills and the marks of 58 instruments) in the devnet's
    /// shape, with a path per mark and with one mark window of 64 ids (minutes: two key
    /// generations of about 1.5M and 0.9M constraints).
    #[arg(long)]
    devnet: bool,
    /// Also prove the worst-case margin trade (two `Standard` accounts, each holding a
    /// position the batch does not touch) with those positions in writable and in read-only
    /// position registers, side by side.
    #[arg(long)]
    read_only: bool,
    /// Also prove the devnet batch (one mark window) with arkworks' own prover, which lays the
    /// circuit out (every combination, then the matrices) for every proof, with optio's values
    /// and arkworks' multi-scalar multiplications, and with optio's prover, side by side (a
    /// minute for the keys, then six proofs); and the batch of `--slots` fills with arkworks'
    /// multi-scalar multiplications beside optio's, two rounds each.
    #[arg(long)]
    arkworks: bool,
}

fn constraints(shape: Shape) -> anyhow::Result<usize> {
    check(&empty(shape)).map_err(|e| anyhow::anyhow!("{e}"))
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Resets the process's peak resident memory to what it holds now (Linux: `clear_refs` 5), so
/// that the next `peak_rss_mib` is the peak of what runs in between.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// A state with two funded accounts and an instrument, and a batch of `n` fills between them.
fn fills(n: usize) -> (SettlementState, Vec<Op>) {
    fills_among(n, 2)
}

/// A state with `accounts` funded accounts and an instrument, and a batch of `n` fills, each
/// account's maker the next account's taker in turn.
fn fills_among(n: usize, accounts: usize) -> (SettlementState, Vec<Op>) {
    let mut state = SettlementState::new();
    let spec = InstrumentSpec::with_defaults(
        "BTC-PERPETUAL".parse().expect("name"),
        Price(200_000 * MONEY_SCALE),
    );
    let mut genesis = vec![
        Op::ListInstrument { spec },
        Op::ActivateInstrument {
            instrument: InstrumentId(0),
        },
    ];
    for i in 0..accounts as u32 {
        genesis.push(Op::OpenAccount {
            owner: Address([i as u8 + 1; 20]),
        });
        genesis.push(Op::Deposit {
            account: AccountId(i),
            amount: Amount(10_000_000 * MONEY_SCALE),
        });
    }
    state.apply_batch(&genesis).expect("genesis applies");
    state.commit();
    let ops = (0..n)
        .map(|i| Op::Fill {
            instrument: InstrumentId(0),
            maker: AccountId((i % accounts) as u32),
            taker: AccountId(((i + 1) % accounts) as u32),
            taker_side: if i % 3 == 0 { Side::Sell } else { Side::Buy },
            price: Price((95_000 + i as i64) * MONEY_SCALE),
            qty: Qty(QTY_SCALE / 10),
        })
        .collect();
    (state, ops)
}

fn words<const N: usize>(ws: &[Word]) -> [U256; N] {
    std::array::from_fn(|i| U256::from_be_bytes(ws[i]))
}

/// Runs the benchmark.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let risk_chunks = optio_pricing::risk::default_scenarios()
        .len()
        .div_ceil(optio_state::leaf::RISK_CHUNK);
    // Registers sized for the benchmark's batches: fills between a few accounts in one
    // instrument.
    let shape = |slots, accounts, positions, instruments, marks| Shape {
        slots,
        accounts,
        positions,
        instruments,
        listings: 0,
        expiries: 0,
        settlements: 0,
        holders: 0,
        marks,
        risk_chunks,
        keys: 0,
        mark_window_bits: 0,
        margins: 0,
        prices: 0,
        solvency: 0,
        solvency_bits: 0,
        readonly: 0,
    };
    let with_listing = Shape {
        listings: 1,
        ..shape(1, 1, 1, 1, 0)
    };
    let base = constraints(shape(1, 1, 1, 1, 0))?;
    let per_slot = constraints(shape(2, 16, 16, 4, 0))? - constraints(shape(1, 16, 16, 4, 0))?;
    let per_account = constraints(shape(1, 2, 1, 1, 0))? - base;
    let per_position = constraints(shape(1, 1, 2, 1, 0))? - base;
    let per_read_only = constraints(Shape {
        readonly: 1,
        ..shape(1, 1, 1, 1, 0)
    })? - base;
    let per_instrument = constraints(shape(1, 1, 1, 2, 0))? - base;
    let per_mark = constraints(shape(1, 1, 1, 1, 1))? - base;
    let per_listing = constraints(with_listing)? - base;
    let settle = |holders| Shape {
        settlements: 1,
        holders,
        ..shape(1, 16, 16, 1, 0)
    };
    let per_settlement = constraints(settle(0))? - constraints(shape(1, 16, 16, 1, 0))?;
    let per_holder = constraints(settle(2))? - constraints(settle(1))?;
    let per_key = constraints(Shape {
        keys: 1,
        ..shape(1, 1, 1, 1, 0)
    })? - base;
    // A margin slot at the devnet's register counts (16 op slots, 16 accounts, 16 positions, 12
    // instruments): it reads every position register as of its op (or, an end slot, as the
    // batch leaves it).
    let devnet_regs = shape(16, 16, 16, 12, 0);
    let per_margin = constraints(Shape {
        margins: 1,
        ..devnet_regs
    })? - constraints(devnet_regs)?;
    println!("Batch circuit (Groth16, BN254): constraints");
    println!("  per op slot (16 account, 16 position, 4 instrument registers) {per_slot:>8}");
    println!("  per account register (read and written once per batch)       {per_account:>8}");
    println!("  per position register (read and written once per batch)      {per_position:>8}");
    println!(
        "  per read-only position register (read once: a position only priced) {per_read_only:>8}   ratio {:.2}",
        per_read_only as f64 / per_position as f64
    );
    println!("  per instrument register (read once per batch)                 {per_instrument:>8}");
    println!(
        "  per mark slot ({} scenarios, once per instrument per batch; its spec opened, the mark held to [0, W]) {per_mark:>8}",
        risk_chunks * optio_state::leaf::RISK_CHUNK
    );
    // The devnet's marks: 58 instruments (ids 0 to 57) each batch, one path each against
    // one window of 64 ids sharing a path.
    let marks_alone = |marks, mark_window_bits| {
        constraints(Shape {
            mark_window_bits,
            ..shape(1, 1, 1, 1, marks)
        })
        .map(|n| n - base)
    };
    let (one_path_each, windowed) = (marks_alone(64, 0)?, marks_alone(1, 6)?);
    println!(
        "  58 to 64 marks with one path each (64 windows of one id)         {one_path_each:>8}"
    );
    println!(
        "  the same in one window of 64 ids (one path, the subtree rebuilt) {windowed:>8}   ratio {:.2}",
        windowed as f64 / one_path_each as f64
    );
    println!("  per listing, activation or expiry slot                        {per_listing:>8}");
    println!(
        "  per settlement slot, and per position it pays (16/16 regs)  {per_settlement:>8} {per_holder:>6}"
    );
    println!(
        "  per account slot (a session key, {KEYS} keys an account may hold; or a margin mode) {per_key:>8}"
    );
    println!(
        "  per margin slot (a withdrawal or transfer priced, or a Portfolio or Standard account after its fills; 16/16/16/12 regs) {per_margin:>8}"
    );
    // Solvency after fills: an account in WorstCase is priced nowhere (it covers its shorts'
    // worst case, and every committed mark lies in [0, W]); one in Portfolio or Standard whose
    // every position is in a register is priced from the registers (in the register costs
    // above); one holding a position the batch does not touch (a liquidation's counterparty:
    // a trader in those modes has every position in the registers) takes a solvency window per
    // run of ids its positions lie in, and the batch a price window per such run.
    let plain = shape(1, 16, 16, 1, 0);
    let windows = |prices, solvency, solvency_bits| {
        constraints(Shape {
            prices,
            solvency,
            solvency_bits,
            ..plain
        })
    };
    let per_price = |bits| windows(1, 0, bits).and_then(|n| Ok(n - constraints(plain)?));
    let per_solvency = |bits| Ok::<_, anyhow::Error>(windows(1, 1, bits)? - windows(1, 0, bits)?);
    let (price_1, price_64) = (per_price(0)?, per_price(6)?);
    let (solvency_1, solvency_64) = (per_solvency(0)?, per_solvency(6)?);
    println!(
        "  per price window (once per batch and run of ids), 1 id / 64 ids   {price_1:>8} {price_64:>8}"
    );
    println!(
        "  per solvency window (per Portfolio or Standard account that filled and run), 1 / 64 {solvency_1:>8} {solvency_64:>8}"
    );
    let worst = per_slot + 2 * per_account + 2 * per_position + per_instrument;
    println!(
        "  per trade, worst case (two accounts, two positions and an instrument of its own): {worst}   anchor {ANCHOR_CONSTRAINTS:.0}   ratio {:.2}   of the 40,000 goal {:.2}",
        worst as f64 / ANCHOR_CONSTRAINTS,
        worst as f64 / 40_000.0
    );
    for (fills, accounts) in [(16usize, 4usize), (64, 8), (256, 16)] {
        let total = fills * per_slot + accounts * (per_account + per_position) + per_instrument;
        println!(
            "  per trade, {fills} fills among {accounts} accounts in one instrument: {:>7}   anchor ratio {:.2}   of the goal {:.2}",
            total / fills,
            (total / fills) as f64 / ANCHOR_CONSTRAINTS,
            (total / fills) as f64 / 40_000.0
        );
    }
    // Proving time steps with the evaluation domain, the next power of two.
    let devnet = constraints(devnet_shape(1, 6))?;
    println!(
        "  the devnet's shape (16/16/16/12 registers, a mark window, 2 price and 4 solvency windows, all of 64 ids) {devnet:>8}   of its 2^20 evaluation domain {:.2}",
        devnet as f64 / f64::from(1u32 << 20)
    );
    println!(
        "  per trade, worst case, both accounts (WorstCase) also holding a position the batch does not touch: {worst}   of the goal {:.2} (no window: priced nowhere)",
        worst as f64 / 40_000.0
    );

    // A Portfolio or Standard account that trades is proven at its maintenance after the batch:
    // an end margin slot (at the devnet's register counts), and every position it holds in a
    // register with its instrument's, untraded ones included (no window prices maintenance).
    let margined = worst + 2 * per_margin;
    println!(
        "  per trade, worst case between two Portfolio or Standard accounts (an end margin slot each): {margined}   anchor {ANCHOR_CONSTRAINTS:.0}   ratio {:.2}   of the goal {:.2}",
        margined as f64 / ANCHOR_CONSTRAINTS,
        margined as f64 / 40_000.0
    );
    let margined_holding = margined + 2 * (per_position + per_instrument);
    println!(
        "  the same, each account also holding an untraded position (a position and an instrument register each): {margined_holding}   anchor ratio {:.2}   of the goal {:.2}",
        margined_holding as f64 / ANCHOR_CONSTRAINTS,
        margined_holding as f64 / 40_000.0
    );
    let margined_read_only = margined + 2 * (per_read_only + per_instrument);
    println!(
        "  the same, the untraded positions in read-only registers: {margined_read_only}   anchor ratio {:.2}   of the goal {:.2}",
        margined_read_only as f64 / ANCHOR_CONSTRAINTS,
        margined_read_only as f64 / 40_000.0
    );

    if args.devnet {
        devnet_batch()?;
    }
    if args.read_only {
        read_only_batch(risk_chunks)?;
    }
    if args.arkworks {
        arkworks_batch()?;
    }

    let mut rng = StdRng::seed_from_u64(1);
    let slots = if args.no_prove { 1 } else { args.slots.max(1) };
    let accounts = args.accounts.clamp(2, 200);
    let proved = Shape {
        prices: 1,
        solvency: 2,
        ..shape(slots, accounts, accounts, 1, 1)
    };
    let t = Instant::now();
    let keys = Keys::generate(proved, &mut rng).map_err(|e| anyhow::anyhow!("{e}"))?;
    let keygen = t.elapsed();
    let (state, ops) = fills_among(slots, accounts);
    let w = witness(&state, &ops, proved).map_err(|e| anyhow::anyhow!("{e}"))?;
    let public = w.public;
    // With --arkworks, the same batch is also proven with arkworks' multi-scalar
    // multiplications, alternating, two rounds each; the faster round of each counts.
    let rounds = if args.arkworks { 2 } else { 1 };
    let (mut proving, mut theirs) = (Duration::MAX, Duration::MAX);
    let mut proof = None;
    for _ in 0..rounds {
        if args.arkworks {
            theirs = theirs.min(timed_proof(&keys, &w, &mut rng, Msm::Arkworks)?.0);
        }
        let (seconds, ours) = timed_proof(&keys, &w, &mut rng, Msm::AffineBuckets)?;
        proving = proving.min(seconds);
        proof = Some(ours);
    }
    let proof = proof.expect("one round at least");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_trade = proving.as_secs_f64() / slots as f64;
    println!(
        "\nProving a batch of {slots} fills among {accounts} accounts in one instrument, and one mark ({} constraints) on {cores} cores",
        constraints(proved)?
    );
    println!(
        "  key generation {:>8.1} s   proving {:>8.1} s   peak memory {:>7.0} MiB",
        keygen.as_secs_f64(),
        proving.as_secs_f64(),
        peak_rss_mib()
    );
    println!(
        "  per trade {:>6.2} s   anchor {:.1}-{:.1} s   ratio {:.2}-{:.2}",
        per_trade,
        ANCHOR_SECONDS.0,
        ANCHOR_SECONDS.1,
        per_trade / ANCHOR_SECONDS.1,
        per_trade / ANCHOR_SECONDS.0
    );
    let core_seconds = per_trade * cores as f64;
    println!(
        "  100 trades/s in batches like this one needs {:.0} prover cores like these ({:.2} core-s per trade); the batch lags {:.1} s on {cores} cores",
        100.0 * core_seconds,
        core_seconds,
        proving.as_secs_f64()
    );
    if args.arkworks {
        let their_core_seconds = theirs.as_secs_f64() / slots as f64 * cores as f64;
        println!(
            "  with arkworks' multi-scalar multiplications: proving {:.1} s, {:.0} prover cores for 100 trades/s; ratio {:.2}",
            theirs.as_secs_f64(),
            100.0 * their_core_seconds,
            proving.as_secs_f64() / theirs.as_secs_f64()
        );
    }

    let gas = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(verifier_gas(&keys, &proof, &public))?;
    println!(
        "\nL1 gas of verification (embedded EVM, gas used by the transaction, 21,000 and calldata included)"
    );
    println!(
        "  {:>24} {:>10} {:>16} {:>16} {:>16}",
        "", "per batch", "16 trades/batch", "64 trades/batch", "256 trades/batch"
    );
    for (label, per_batch) in [
        ("one proof per tx".to_string(), gas[0] as f64),
        ("4 proofs per tx".to_string(), gas[1] as f64 / 4.0),
        ("16 proofs per tx".to_string(), gas[2] as f64 / 16.0),
    ] {
        println!(
            "  {label:>24} {per_batch:>10.0} {:>16.0} {:>16.0} {:>16.0}",
            per_batch / 16.0,
            per_batch / 64.0,
            per_batch / 256.0
        );
    }
    println!(
        "  aggregation saves {:.0}% per batch at 16 proofs per transaction",
        100.0 * (1.0 - gas[2] as f64 / 16.0 / gas[0] as f64)
    );
    // The physical floor: the precompiles' prices alone (EIP-1108) plus the transaction's base.
    let floor_one = precompile_floor(1);
    println!(
        "  floor (21,000 + pairing 45,000 + 34,000 per pair + 6,150 per scalar multiply and add): one proof {floor_one}, ratio {:.2}; 16 proofs {} per batch, ratio {:.2}",
        gas[0] as f64 / floor_one as f64,
        precompile_floor(16) / 16,
        gas[2] as f64 / precompile_floor(16) as f64
    );
    Ok(())
}

/// A proof of `w` made with `msm`, verified, and how long it took.
fn timed_proof(
    keys: &Keys,
    w: &optio_prover::BatchWitness,
    rng: &mut StdRng,
    msm: Msm,
) -> anyhow::Result<(Duration, ark_groth16::Proof<ark_bn254::Bn254>)> {
    let t = Instant::now();
    let proof = optio_prover::keys::prove_with(keys, w.clone(), rng, msm)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let seconds = t.elapsed();
    anyhow::ensure!(verify(&keys.vk, &w.public, &proof), "the proof verifies");
    Ok((seconds, proof))
}

/// The devnet's shape (`optio prove setup`'s defaults) with `marks` mark windows of
/// `2^mark_window_bits` ids.
fn devnet_shape(marks: usize, mark_window_bits: usize) -> Shape {
    Shape {
        marks,
        mark_window_bits,
        ..Shape::DEVNET
    }
}

/// The devnet's batch: 16 fills and the marks of its 58 instruments (33 scenarios each), and
/// the state before it.
fn devnet_ops() -> anyhow::Result<(SettlementState, Vec<Op>)> {
    let (mut state, mut ops) = fills(16);
    let listings: Vec<Op> = (1..58u32)
        .flat_map(|k| {
            let name = format!("BTC-26MAR27-{}-C", 40_000 + 1_000 * k);
            let spec = InstrumentSpec::with_defaults(
                name.parse().expect("name"),
                Price(200_000 * MONEY_SCALE),
            );
            [
                Op::ListInstrument { spec },
                Op::ActivateInstrument {
                    instrument: InstrumentId(k),
                },
            ]
        })
        .collect();
    state
        .apply_batch(&listings)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    state.commit();
    let scenarios = optio_pricing::risk::default_scenarios().len();
    ops.extend((0..58u32).map(|k| {
        Op::Mark {
            instrument: InstrumentId(k),
            mark: Price((1_000 + i64::from(k)) * MONEY_SCALE),
            index: Price(60_000 * MONEY_SCALE),
            risk: (0..scenarios)
                .map(|s| Amount((s as i64 - 16) * 1_000 * MONEY_SCALE))
                .collect(),
            published_ms: 1_800_000_000_000,
        }
    }));
    Ok((state, ops))
}

/// The devnet's batch proven in the devnet's shape with a path per mark (64 mark slots) and with
/// one window of 64 ids.
fn devnet_batch() -> anyhow::Result<()> {
    let (state, ops) = devnet_ops()?;
    let scenarios = optio_pricing::risk::default_scenarios().len();
    println!(
        "\nA devnet batch (16 fills, 58 marks of {scenarios} scenarios) in the devnet's shape"
    );
    let mut seconds = Vec::new();
    for (label, shape) in [
        ("one window of 64 ids", devnet_shape(1, 6)),
        ("a path per mark     ", devnet_shape(64, 0)),
    ] {
        let (keygen, proving, _) = keys_and_proof(&state, &ops, shape, 2)?;
        println!(
            "  {label} ({}): {:>9} constraints   keys {keygen:>6.1} s   proving {proving:>6.1} s   peak memory so far {:>6.0} MiB",
            shape.name(),
            constraints(shape)?,
            peak_rss_mib()
        );
        seconds.push(proving);
    }
    println!(
        "  proving time, window / path per mark: {:.2}",
        seconds[0] / seconds[1]
    );
    Ok(())
}

/// The devnet's batch in the devnet's shape (one mark window), proven three ways, alternating,
/// two rounds, the same keys and witness, every proof verified: by arkworks' own prover
/// (`Groth16::prove`: every combination built, then the matrices, for every proof); by optio's
/// values-only synthesis with arkworks' multi-scalar multiplications (the prover before
/// `optio_prover::msm`); and by optio's `prove` (values only, affine buckets). Then the largest
/// multi-scalar multiplication alone, B's in G2 over the proving key's query, arkworks' and
/// optio's on the same random full-size scalars.
fn arkworks_batch() -> anyhow::Result<()> {
    let (state, ops) = devnet_ops()?;
    let shape = devnet_shape(1, 6);
    let err = |e: optio_prover::ProveError| anyhow::anyhow!("{e}");
    let mut rng = StdRng::seed_from_u64(3);
    let t = Instant::now();
    let keys = Keys::generate(shape, &mut rng).map_err(err)?;
    let keygen = t.elapsed().as_secs_f64();
    let w = witness(&state, &ops, shape).map_err(|e| anyhow::anyhow!("{e}"))?;
    let public = w.public;
    let t = Instant::now();
    let count = check(&w).map_err(err)?;
    let values = t.elapsed().as_secs_f64();
    // Seconds and peak memory (the peak reset before each proof), the least of the rounds.
    let mut best = [(f64::INFINITY, f64::INFINITY); 3];
    let least = |best: &mut (f64, f64), seconds: f64| {
        *best = (best.0.min(seconds), best.1.min(peak_rss_mib()));
    };
    for _ in 0..2 {
        for (k, best) in best.iter_mut().enumerate() {
            reset_peak_rss();
            let t = Instant::now();
            let proof = match k {
                0 => optio_prover::keys::prove_laying_out(&keys, w.clone(), &mut rng),
                1 => optio_prover::keys::prove_with(&keys, w.clone(), &mut rng, Msm::Arkworks),
                _ => prove(&keys, w.clone(), &mut rng),
            }
            .map_err(err)?;
            least(best, t.elapsed().as_secs_f64());
            anyhow::ensure!(verify(&keys.vk, &public, &proof), "proof {k} verifies");
        }
    }
    let [arkworks, values_only, optio] = best;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "\nThe devnet batch ({}, {count} constraints) proven three ways, on {cores} cores (the faster of two rounds each)",
        shape.name()
    );
    println!("  keys {keygen:.1} s; the batch's values alone (a check) {values:.1} s");
    println!(
        "  a proof: arkworks' Groth16::prove {:.1} s   values only, arkworks' MSM {:.1} s   optio's prove (affine buckets) {:.1} s",
        arkworks.0, values_only.0, optio.0
    );
    println!(
        "  ratios: optio's prove / Groth16::prove {:.2}   / values only with arkworks' MSM {:.2}",
        optio.0 / arkworks.0,
        optio.0 / values_only.0
    );
    println!(
        "  peak memory while proving (keys and witness included): {:.0} / {:.0} / {:.0} MiB   ratio to Groth16::prove {:.2}",
        arkworks.1,
        values_only.1,
        optio.1,
        optio.1 / arkworks.1
    );
    let query = &keys.pk.b_g2_query[1..];
    let scalars: Vec<_> = (0..query.len())
        .map(|_| ark_bn254::Fr::rand(&mut rng).into_bigint())
        .collect();
    let (mut theirs, mut ours) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..2 {
        let t = Instant::now();
        let expected = ark_bn254::G2Projective::msm_bigint(query, &scalars);
        theirs = theirs.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let sum = optio_prover::msm::msm(query, &scalars);
        ours = ours.min(t.elapsed().as_secs_f64());
        anyhow::ensure!(
            sum == expected,
            "the two multi-scalar multiplications agree"
        );
    }
    println!(
        "  B's query in G2, {} bases, random full-size scalars: arkworks' MSM {theirs:.2} s   optio's {ours:.2} s   ratio {:.2}",
        query.len(),
        ours / theirs
    );
    Ok(())
}

/// Keys of `shape` (from `seed`), then a proof of `ops` applied to `state`, verified: the
/// seconds each took, and how many positions the witness held in read-only registers.
fn keys_and_proof(
    state: &SettlementState,
    ops: &[Op],
    shape: Shape,
    seed: u64,
) -> anyhow::Result<(f64, f64, usize)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let t = Instant::now();
    let keys = Keys::generate(shape, &mut rng).map_err(|e| anyhow::anyhow!("{e}"))?;
    let keygen = t.elapsed().as_secs_f64();
    let w = witness(state, ops, shape).map_err(|e| anyhow::anyhow!("{e}"))?;
    let read_only = w.read_only_in_use();
    let public = w.public;
    let t = Instant::now();
    let proof = prove(&keys, w, &mut rng).map_err(|e| anyhow::anyhow!("{e}"))?;
    let proving = t.elapsed().as_secs_f64();
    anyhow::ensure!(verify(&keys.vk, &public, &proof), "the proof verifies");
    Ok((keygen, proving, read_only))
}

/// Two `Standard` accounts, each holding a call the other wrote (marked, with scenarios), and a
/// batch of one perpetual fill between them: each account's end margin slot prices its call too.
fn margined_pair(risk_chunks: usize) -> (SettlementState, Vec<Op>) {
    let scenarios = risk_chunks * optio_state::leaf::RISK_CHUNK - 1;
    let mut state = SettlementState::new();
    let mut genesis = Vec::new();
    for (k, name) in ["BTC-PERPETUAL", "BTC-26MAR27-100000-C"].iter().enumerate() {
        let spec = InstrumentSpec::with_defaults(
            name.parse().expect("name"),
            Price(200_000 * MONEY_SCALE),
        );
        genesis.push(Op::ListInstrument { spec });
        genesis.push(Op::ActivateInstrument {
            instrument: InstrumentId(k as u32),
        });
    }
    for i in 0..2u32 {
        genesis.push(Op::OpenAccount {
            owner: Address([i as u8 + 1; 20]),
        });
        genesis.push(Op::Deposit {
            account: AccountId(i),
            amount: Amount(10_000_000 * MONEY_SCALE),
        });
        genesis.push(Op::SetMarginMode {
            account: AccountId(i),
            mode: optio_types::MarginMode::Standard,
        });
    }
    for (k, mark) in [(0u32, 100_000), (1, 5_000)] {
        genesis.push(Op::Mark {
            instrument: InstrumentId(k),
            mark: Price(mark * MONEY_SCALE),
            index: Price(100_000 * MONEY_SCALE),
            risk: (0..scenarios)
                .map(|s| Amount((s as i64 - scenarios as i64 / 2) * 100 * MONEY_SCALE))
                .collect(),
            published_ms: 0,
        });
    }
    let fill = |instrument, taker_side| Op::Fill {
        instrument: InstrumentId(instrument),
        maker: AccountId(0),
        taker: AccountId(1),
        taker_side,
        price: Price(if instrument == 0 { 100_000 } else { 5_000 } * MONEY_SCALE),
        qty: Qty(QTY_SCALE),
    };
    for batch in [
        genesis,
        vec![fill(1, Side::Buy), fill(1, Side::Sell), fill(1, Side::Buy)],
    ] {
        state.apply_batch(&batch).expect("the setup applies");
        state.commit();
    }
    (state, vec![fill(0, Side::Buy)])
}

/// The worst-case margin trade with its accounts' untraded positions in writable and in
/// read-only position registers: constraints, keys, proving, side by side.
fn read_only_batch(risk_chunks: usize) -> anyhow::Result<()> {
    let (state, ops) = margined_pair(risk_chunks);
    let base = Shape {
        slots: 1,
        accounts: 2,
        positions: 4,
        instruments: 2,
        risk_chunks,
        margins: 2,
        ..Shape::default()
    };
    println!(
        "\nOne perpetual fill between two Standard accounts, each also holding a call the batch does not touch"
    );
    let shapes = [
        ("4 writable registers      ", base),
        (
            "2 writable and 2 read-only",
            Shape {
                positions: 2,
                readonly: 2,
                ..base
            },
        ),
    ];
    // Two rounds, alternating (the machine is shared: the fastest of each is compared).
    let counts = [constraints(shapes[0].1)?, constraints(shapes[1].1)?];
    let mut seconds = [(0.0, f64::MAX, f64::MAX); 2];
    for (k, (label, shape)) in shapes.iter().cycle().take(4).enumerate() {
        let (keygen, proving, read_only) = keys_and_proof(&state, &ops, *shape, 3)?;
        let n = counts[k % 2];
        println!(
            "  {label} ({read_only} positions read-only): {n:>7} constraints   keys {keygen:>5.1} s   proving {proving:>5.1} s"
        );
        let best = &mut seconds[k % 2];
        *best = (n as f64, best.1.min(keygen), best.2.min(proving));
    }
    println!(
        "  ratio read-only / writable: constraints {:.2}   keys {:.2}   proving {:.2}",
        seconds[1].0 / seconds[0].0,
        seconds[1].1 / seconds[0].1,
        seconds[1].2 / seconds[0].2
    );
    Ok(())
}

/// Gas of the precompile calls `k` proofs need at the least, plus 21,000: one proof is a
/// pairing of 4 pairs and one multiply-add per public input (times its IC point, added to IC0);
/// `k` aggregated are one pairing of k + 3 pairs, 2(k - 1) multiply-adds (r A, r C; the first
/// proof's weight is 1) and one per input plus one (alpha).
fn precompile_floor(k: u64) -> u64 {
    const PAIRING: u64 = 45_000;
    const PAIR: u64 = 34_000;
    const MUL_ADD: u64 = 6_150;
    let inputs = optio_prover::PublicInputs::COUNT as u64;
    if k == 1 {
        21_000 + PAIRING + 4 * PAIR + inputs * MUL_ADD
    } else {
        21_000 + PAIRING + (k + 3) * PAIR + (2 * (k - 1) + inputs + 2) * MUL_ADD
    }
}

async fn verifier_gas(
    keys: &Keys,
    proof: &ark_groth16::Proof<ark_bn254::Bn254>,
    public: &optio_prover::PublicInputs,
) -> anyhow::Result<[u64; 3]> {
    optio_contracts::forge_build().map_err(anyhow::Error::msg)?;
    let operator = optio_settler::signer_address(KEY).map_err(anyhow::Error::msg)?;
    let chain = optio_chain::Chain::start(
        31_337,
        &[(operator, U256::from(10u64).pow(U256::from(21u64)))],
        Duration::from_secs(3_600),
    )
    .await?;
    let provider = connect(&chain.url, KEY)?;
    let address = deploy_verifier(&provider, words(&solidity::verifying_key(&keys.vk))).await?;
    let verifier = Groth16Verifier::new(address, &provider);
    let p: [U256; 8] = words(&solidity::proof(proof));
    let i: [U256; 7] = words(&solidity::inputs(public));
    anyhow::ensure!(
        verifier.verify(p, i).call().await?,
        "the L1 verifier accepts"
    );
    // Sent as transactions: the receipts' gas used.
    let one = transact(verifier.verify(p, i)).await?.gas_used;
    let mut many = [0u64; 2];
    for (slot, k) in [(0, 4usize), (1, 16)] {
        let call = verifier.verifyMany(vec![p; k], vec![i; k]);
        anyhow::ensure!(call.call().await?, "the L1 verifier accepts {k} proofs");
        many[slot] = transact(call).await?.gas_used;
    }
    Ok([one, many[0], many[1]])
}
