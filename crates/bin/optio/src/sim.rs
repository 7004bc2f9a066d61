//! `optio sim --seed S --ops N`: the node's real components in one process (gateway logic with
//! real signatures, sequencer with its WAL on disk, engine, batcher writing blobs), driven by a
//! seeded RNG: traders sending signed orders and cancels, L1 deposits fed like the settler
//! feeds them, hostile clients (bad, foreign-chain and replayed signatures, malformed and
//! out-of-range values), and faults (crash and restart at random points, a torn record at the
//! WAL's tail). After every step it checks what must hold, and any failure names its seed.
//!
//! Checks: after each input, an accepted order has a receipt that verifies against the
//! sequencer's key, and a hostile input is refused without sequencing anything; after each
//! restart, the state hash and sequence number equal those before the crash (the torn record
//! was never acknowledged), every acknowledged intent is there with its sequence number, the
//! engine's invariants hold in full, and the L1 queue fed again credits nothing twice; at the
//! end, the blobs rebuild to the batcher's root and to the engine's state.
//!
//! Not yet (issue #8): simulated time (the node reads the wall clock), the oracle and
//! liquidations, the settler against the embedded chain with L1 delays and reorgs, storage that
//! loses writes the node fsynced, slow subscribers.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use optio_gateway::client::{OrderRequest, auth_headers, order_params, parse_receipt};
use optio_gateway::{Config, Gateway};
use optio_types::{AccountId, Address, Amount, Command, EngineLimits, InstrumentSpec, MONEY_SCALE};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

/// `optio sim` arguments.
#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// First seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Seeds to run, from `--seed` on.
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// Inputs per seed.
    #[arg(long, default_value_t = 2_000)]
    pub ops: u64,
    /// A crash about every this many inputs.
    #[arg(long, default_value_t = 500)]
    pub crash_every: u64,
    /// Succeed only if some seed finds a violation (for a build with the planted bug,
    /// `--features canary`: shows that the simulator can fail).
    #[arg(long)]
    pub expect_violation: bool,
}

/// What one seed did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    orders: u64,
    accepted: u64,
    cancels: u64,
    hostile: u64,
    deposits: u64,
    crashes: u64,
    torn: u64,
    batches: u64,
}

const CHAIN: u64 = 31_337;
const CONTRACT: [u8; 20] = [0x0a; 20];
const INSTRUMENT: &str = "ETH-PERPETUAL";
const TRADERS: usize = 6;

struct Trader {
    key: secp256k1::SecretKey,
    address: [u8; 20],
    account: u64,
    nonce: u64,
}

struct World {
    dir: tempfile::TempDir,
    gateway: Option<Gateway>,
    rng: ChaCha8Rng,
    traders: Vec<Trader>,
    instrument: u32,
    /// Acknowledged intents: EIP-712 digest (hex) and sequence number.
    acked: Vec<(String, u64)>,
    /// Params of accepted orders (replayed by hostile clients).
    sent: Vec<Value>,
    /// The simulated L1 priority queue (deposits), fed in order like the settler does.
    l1_queue: Vec<Command>,
    public_key: secp256k1::PublicKey,
    stats: Stats,
}

fn config() -> Config {
    Config {
        batch_max_ops: 300,
        batch_max_age_ms: 50,
        ..Config::default()
    }
}

fn open(dir: &Path) -> Result<Gateway> {
    Gateway::open(dir, [0x51; 32], EngineLimits::default(), config()).context("opening the node")
}

impl World {
    fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("the node is up between steps")
    }

    fn new(seed: u64) -> Result<World> {
        let dir = tempfile::tempdir()?;
        let gateway = open(dir.path())?;
        let spec = InstrumentSpec::with_defaults(
            INSTRUMENT.parse().context("name")?,
            optio_types::Price(15_000 * MONEY_SCALE),
        );
        let listed = gateway.submit_admin(vec![
            Command::ListInstrument { spec },
            Command::ActivateInstrument {
                instrument: optio_types::InstrumentId(0),
            },
        ])?;
        ensure!(listed.iter().all(Result::is_ok), "listing: {listed:?}");
        let mut traders = Vec::new();
        for i in 0..TRADERS {
            let key = secp256k1::SecretKey::from_secret_bytes([0x30 + i as u8; 32])?;
            let address = optio_intents::address_of(&secp256k1::PublicKey::from_secret_key(&key));
            let account = gateway.fund(address, Amount(1_000_000 * MONEY_SCALE))?;
            traders.push(Trader {
                key,
                address,
                account,
                nonce: 0,
            });
        }
        let public_key = secp256k1::PublicKey::from_secret_key(
            &secp256k1::SecretKey::from_secret_bytes([0x51; 32])?,
        );
        Ok(World {
            dir,
            gateway: Some(gateway),
            rng: ChaCha8Rng::seed_from_u64(seed),
            traders,
            instrument: 0,
            acked: Vec::new(),
            sent: Vec::new(),
            l1_queue: Vec::new(),
            public_key,
            stats: Stats::default(),
        })
    }

    fn order(&mut self, t: usize) -> Value {
        let trader = &mut self.traders[t];
        trader.nonce += 1;
        let side = if self.rng.random_bool(0.5) {
            "buy"
        } else {
            "sell"
        };
        let price = format!("{}", 2_950 + 5 * self.rng.random_range(0..20));
        let amount = format!("0.{}", self.rng.random_range(1..10));
        let request = OrderRequest {
            subaccount: trader.account,
            instrument_id: self.instrument,
            instrument_name: INSTRUMENT,
            direction: side,
            price: &price,
            amount: &amount,
            max_fee: "100",
            nonce: trader.nonce,
            expiry: optio_gateway::now_ms() / 1_000 + 3_600,
            time_in_force: if self.rng.random_bool(0.3) {
                "ioc"
            } else {
                "gtc"
            },
        };
        order_params(&trader.key, CHAIN, CONTRACT, &request).unwrap_or(Value::Null)
    }

    /// One honest signed order: accepted or refused by the engine, it is acknowledged with a
    /// receipt that verifies.
    fn trade(&mut self) -> Result<()> {
        let t = self.rng.random_range(0..TRADERS);
        let params = self.order(t);
        self.stats.orders += 1;
        let reply = self
            .gateway()
            .call("private/order", &params, &Default::default());
        let receipt = match &reply {
            Ok(v) => {
                self.stats.accepted += 1;
                v["receipt"].clone()
            }
            Err(e) => match e {
                optio_gateway::CallError::Engine(_, Some(receipt)) => receipt.clone(),
                other => bail!("an honest order was refused before sequencing: {other:?}"),
            },
        };
        let receipt = parse_receipt(&receipt).context("the order's receipt")?;
        ensure!(
            receipt.verify(&self.public_key),
            "the receipt for sequence {} does not verify",
            receipt.seq
        );
        let hash = optio_state::poseidon::hex(&receipt.intent_hash);
        self.acked.push((hash, receipt.seq));
        if reply.is_ok() {
            self.sent.push(params);
        }
        Ok(())
    }

    fn cancel_all(&mut self) -> Result<()> {
        let t = &self.traders[self.rng.random_range(0..TRADERS)];
        let mut headers = axum::http::HeaderMap::new();
        for (k, v) in auth_headers(&t.key, optio_gateway::now_ms()) {
            headers.insert(k, v.parse().context("header")?);
        }
        self.stats.cancels += 1;
        self.gateway()
            .call(
                "private/cancel_all",
                &json!({"subaccount_id": t.account}),
                &headers,
            )
            .map_err(|e| anyhow::anyhow!("cancel_all by the owner refused: {e:?}"))?;
        Ok(())
    }

    /// A hostile input: refused before sequencing, nothing changes.
    fn hostile(&mut self) -> Result<()> {
        let t = self.rng.random_range(0..TRADERS);
        let kind = self.rng.random_range(0..6);
        let params = match kind {
            // A byte of the signature flipped.
            0 => {
                let mut p = self.order(t);
                let sig = p["signature"].as_str().unwrap_or_default().to_owned();
                let flipped = if sig.ends_with('1') { "2" } else { "1" };
                p["signature"] = json!(format!("{}{flipped}", &sig[..sig.len() - 1]));
                p
            }
            // Signed for another chain.
            1 => {
                let trader = &mut self.traders[t];
                trader.nonce += 1;
                order_params(
                    &trader.key,
                    1,
                    CONTRACT,
                    &OrderRequest {
                        subaccount: trader.account,
                        instrument_id: self.instrument,
                        instrument_name: INSTRUMENT,
                        direction: "buy",
                        price: "3000",
                        amount: "0.1",
                        max_fee: "100",
                        nonce: trader.nonce,
                        expiry: optio_gateway::now_ms() / 1_000 + 3_600,
                        time_in_force: "gtc",
                    },
                )
                .unwrap_or(Value::Null)
            }
            // A replay of an accepted order.
            2 if !self.sent.is_empty() => {
                self.sent[self.rng.random_range(0..self.sent.len())].clone()
            }
            // Values out of range or malformed.
            3 => {
                let mut p = self.order(t);
                p["amount"] =
                    json!(["NaN", "-1", "1e400", "", "0x10"][self.rng.random_range(0..5)]);
                p
            }
            4 => {
                let mut p = self.order(t);
                p["instrument_name"] = json!("DOGE-PERPETUAL");
                p
            }
            _ => {
                let mut p = self.order(t);
                p["subaccount_id"] = json!(u64::MAX);
                p
            }
        };
        self.stats.hostile += 1;
        let (seq, hash) = (self.gateway().next_seq(), self.gateway().state_hash());
        let reply = self
            .gateway()
            .call("private/order", &params, &Default::default());
        ensure!(
            reply.is_err(),
            "hostile input {kind} was accepted: {params}"
        );
        ensure!(
            self.gateway().next_seq() == seq && self.gateway().state_hash() == hash,
            "hostile input {kind} changed the state"
        );
        Ok(())
    }

    /// An L1 deposit: queued on the simulated L1, then the queue is fed from where the node
    /// stands, as the settler does.
    fn deposit(&mut self) -> Result<()> {
        let t = &self.traders[self.rng.random_range(0..TRADERS)];
        self.l1_queue.push(Command::L1Deposit {
            priority: self.l1_queue.len() as u64,
            owner: Address(t.address),
            account: AccountId(t.account as u32),
            amount: Amount(self.rng.random_range(1..5_000) * MONEY_SCALE),
        });
        self.stats.deposits += 1;
        self.feed_l1()
    }

    fn feed_l1(&self) -> Result<()> {
        let from = self.gateway().priority_served() as usize;
        for op in &self.l1_queue[from..] {
            let fresh = self
                .gateway()
                .submit_l1(op.clone())
                .map_err(|e| anyhow::anyhow!("L1 operation refused: {e:?}"))?;
            ensure!(
                fresh,
                "an L1 operation past the served count was already served"
            );
        }
        Ok(())
    }

    /// Crash and restart, sometimes with a torn record at the WAL's tail; then the checks.
    fn crash(&mut self) -> Result<()> {
        let gateway = self.gateway.take().expect("up");
        let (hash, seq) = (gateway.state_hash(), gateway.next_seq());
        // Dropping the node stops its threads and frees its files.
        drop(gateway);
        self.stats.crashes += 1;
        if self.rng.random_bool(0.5) {
            // A write that never completed: a record header and part of its body.
            let len = self.rng.random_range(1..60usize);
            let torn: Vec<u8> = (0..len).map(|_| self.rng.random()).collect();
            use std::io::Write;
            std::fs::OpenOptions::new()
                .append(true)
                .open(self.dir.path().join("wal.log"))?
                .write_all(&torn)?;
            self.stats.torn += 1;
        }
        let gateway = open(self.dir.path())?;
        ensure!(
            gateway.next_seq() == seq,
            "after restart the next sequence number is {}, it was {seq}",
            gateway.next_seq()
        );
        ensure!(
            gateway.state_hash() == hash,
            "after restart the state differs from the acknowledged state"
        );
        gateway.check_invariants().map_err(anyhow::Error::msg)?;
        for (hash, seq) in &self.acked {
            let status = gateway
                .call(
                    "public/get_intent_status",
                    &json!({"intent_hash": hash}),
                    &Default::default(),
                )
                .map_err(|e| anyhow::anyhow!("acknowledged intent {hash} lost: {e:?}"))?;
            ensure!(
                status["seq"].as_u64() == Some(*seq),
                "acknowledged intent {hash} now has sequence {}, not {seq}",
                status["seq"]
            );
        }
        let served = gateway.priority_served();
        self.gateway = Some(gateway);
        // The L1 queue fed again from the start: nothing is credited twice.
        for op in &self.l1_queue {
            let fresh = self
                .gateway()
                .submit_l1(op.clone())
                .map_err(|e| anyhow::anyhow!("L1 operation refused after restart: {e:?}"))?;
            ensure!(!fresh, "an L1 operation was credited twice after a restart");
        }
        ensure!(self.gateway().priority_served() == served);
        Ok(())
    }

    /// At the end: the blobs rebuild to the batcher's root and to the engine's state.
    fn settle(&mut self) -> Result<()> {
        let gateway = self.gateway();
        let last = gateway.next_seq() - 1;
        let batches = self.dir.path().join("batches");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let files = optio_gateway::batching::blob_files(&batches)?;
            let blobs: Vec<Vec<u8>> = files.iter().map(std::fs::read).collect::<Result<_, _>>()?;
            let mut state = optio_state::SettlementState::new();
            // A directory listing taken while the batcher writes can miss a file created during
            // it (readdir's order is not creation order): a rebuild that fails is retried until
            // the batcher is quiet, and reported only if it still fails then.
            let rebuilt = optio_state::rebuild(blobs.iter().map(Vec::as_slice), &mut state, |_| {});
            let (number, covered) = match rebuilt {
                Ok(end) => end,
                Err(e) if std::time::Instant::now() >= deadline => {
                    bail!("the blobs do not rebuild: {e}")
                }
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if covered >= last {
                let stats = gateway.batch_stats().context("batcher")?;
                ensure!(
                    stats.root == optio_state::poseidon::to_hex(&state.root()),
                    "the rebuilt root differs from the batcher's"
                );
                if let Some(diff) = state.diff_engine(&gateway.canonical_state()) {
                    bail!("the settlement state differs from the engine: {diff}");
                }
                ensure!(
                    state.priority_served() == self.l1_queue.len() as u64,
                    "the batches served {} L1 operations, the queue holds {}",
                    state.priority_served(),
                    self.l1_queue.len()
                );
                self.stats.batches = number;
                return Ok(());
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "the batcher did not catch up: blobs cover {covered} of {last}; {:?}",
                gateway.batch_stats()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs one seed; `Err` names the first violation.
pub fn run_seed(seed: u64, ops: u64, crash_every: u64) -> Result<Stats> {
    let mut w = World::new(seed)?;
    for step in 0..ops {
        let roll = w.rng.random_range(0..100);
        let result = match roll {
            0..=69 => w.trade(),
            70..=76 => w.cancel_all(),
            77..=91 => w.hostile(),
            _ => w.deposit(),
        };
        result.with_context(|| format!("seed {seed}, input {step}"))?;
        if w.rng.random_range(0..crash_every.max(1)) == 0 {
            w.crash()
                .with_context(|| format!("seed {seed}, restart after input {step}"))?;
        }
    }
    w.settle()
        .with_context(|| format!("seed {seed}, final settlement check"))?;
    Ok(w.stats)
}

/// `optio sim`.
pub fn run(args: SimArgs) -> Result<()> {
    let mut total = Stats::default();
    for seed in args.seed..args.seed + args.seeds {
        let s = match run_seed(seed, args.ops, args.crash_every) {
            Ok(s) => s,
            Err(e) if args.expect_violation => {
                println!("violation found, as expected: {e:#}");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        println!(
            "seed {seed}: {} inputs ({} orders, {} accepted, {} cancels, {} hostile, {} L1 deposits), {} crashes ({} torn tails), {} batches: ok",
            args.ops,
            s.orders,
            s.accepted,
            s.cancels,
            s.hostile,
            s.deposits,
            s.crashes,
            s.torn,
            s.batches
        );
        total.orders += s.orders;
        total.hostile += s.hostile;
        total.crashes += s.crashes;
        total.torn += s.torn;
        total.deposits += s.deposits;
    }
    println!(
        "all {} seeds x {} inputs: no violation ({} crashes, {} torn tails, {} hostile inputs refused)",
        args.seeds, args.ops, total.crashes, total.torn, total.hostile
    );
    if args.expect_violation {
        bail!("a violation was expected (the canary build) and none was found");
    }
    Ok(())
}
