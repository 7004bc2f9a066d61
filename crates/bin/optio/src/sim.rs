//! `optio sim --seed S --ops N`: the node's real components in one process, on simulated time,
//! driven by a seeded RNG, under faults, with what must hold checked after every step; any
//! failure names its seed and step.
//!
//! Components: the gateway (real signatures, nonces, rate limits, the JSON-RPC methods and the
//! HTTP/WebSocket server on 127.0.0.1), the sequencer with its WAL on disk, the engine, the
//! batcher writing blobs, the risk oracle's signed updates (with the settlement prices of two
//! puts, ETH's and BTC's, that expire half way through a run of 3,000 steps), and the settler posting and
//! finalizing batches and feeding the L1 priority queue from the embedded EVM chain, where the
//! rollup contract runs. Time: the node reads a manual clock the simulator moves (milliseconds
//! per step, sometimes a minute or two at once); L1 time moves when blocks are mined.
//!
//! Clients: traders (signed orders for the ETH and BTC perpetuals, each underlying with its own
//! index and signed update, and, while they trade, each underlying's put, about half
//! of them by a session key while the trader's key is live; header-authenticated cancels and session key registrations, extensions, shortenings
//! and revocations; some margined from marks, trading large on little collateral, and so
//! liquidatable), liquidators bidding in liquidation auctions (now and then away for a while),
//! the operator deleveraging what an auction could not place, depositors, forced withdrawals
//! and forced closes on L1, WebSocket subscribers
//! (one that reads and checks the book stream for gaps, some that never read), and hostile
//! clients (flipped, foreign-chain and replayed signatures, nonces dated outside the window or
//! not at all, malformed and out-of-range values, unknown instruments and accounts).
//!
//! Faults: crash and restart at random points; a torn record at the WAL's tail; a crash between
//! writing a group and its fsync, after which the power loss keeps none, part or all of the
//! unsynced bytes; oracle stalls (no update for minutes: marks go stale) and jumps (up to a
//! quarter of the price at once: the circuit breaker and liquidations); L1 delays (blocks come
//! late, the settler runs rarely) and reorgs (up to `L1_CONFIRMATIONS - 1` blocks, taking back
//! deposits, batches and finalizations); clock jumps; slow subscribers.
//!
//! Checks: after each signed input, its receipt verifies against the sequencer's key; a hostile
//! input is refused and changes nothing; the reading subscriber sees every book change in order
//! (or is told it was too slow); no step waits on a subscriber; after oracle, liquidation and L1
//! steps, the engine's invariants in full and the state restoring from its canonical form (what
//! a snapshot holds) to itself; after each restart (from the node's latest snapshot,
//! taken every 400 inputs, plus the log after it), the state equals the state before the crash
//! (plus the unacknowledged group, if the power loss kept all of it), every
//! acknowledged intent is there with its sequence number, and the L1 queue fed again credits
//! nothing twice; at the end, the blobs rebuild to the batcher's root and to the engine's state,
//! every batch is posted and finalized, the watchtower agrees with every batch (every fill side
//! authorized by its posted signed order as the contract judges it, session keys included;
//! every settlement price and mark signed by the oracle, marks in order), the
//! state rebuilt from L1 data alone equals the engine's (every balance and position), and the L1
//! vault holds exactly the deposits the engine credited. With `--circuit SHAPE` the node runs
//! with the engine's limits and batch cuts for that shape, as `optio node --prove-keys` does,
//! and every batch's witness must satisfy the circuit.
//!
//! Reproducibility: a seed's run repeats exactly. Inputs, faults and time are functions of the
//! seed, and so is everything that feeds back into the inputs: batches are cut by size (the
//! last one by a final clock jump), each settler round waits until the batcher has taken every
//! input, and L1 blocks are stamped with logical time (a second per block). Only how far a
//! subscriber gets before it is dropped depends on thread timing, and nothing else depends on
//! that.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use optio_gateway::client::{
    OrderRequest, auth_headers, order_params, parse_receipt, signed_order_for,
};
use optio_gateway::{Clock, Config, Gateway};
use optio_oracle::{OracleSigner, SettlementFeed, build_update};
use optio_settler::{OptioRollup, Settler, TestUSDC, U256, transact};
use optio_types::{AccountId, Command, InstrumentSpec, MONEY_SCALE, RejectCode};
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
    /// Run the node as `optio node --prove-keys` does for keys of this circuit shape (a key
    /// file's name, `quad-…`: `optio prove setup` prints it): the engine's limits for the
    /// shape, batches cut to fit it; and at the end, check that every batch's witness
    /// satisfies the circuit with the batcher's new root (no keys needed, no proof made).
    #[arg(long, value_parser = parse_shape)]
    pub circuit: Option<optio_prover::Shape>,
    /// With `--circuit`: run the node without the shape's limits and cuts (as a node without
    /// prover keys runs), still checking every batch against the circuit; with
    /// `--expect-violation`, shows that the check can fail.
    #[arg(long, requires = "circuit")]
    pub uncut: bool,
}

fn parse_shape(name: &str) -> Result<optio_prover::Shape, String> {
    let shape = optio_prover::Shape::from_name(name)
        .ok_or_else(|| format!("{name} is not a circuit shape's name (quad-<16 sizes, or 17 with read-only position registers>)"))?;
    shape
        .check()
        .map(|()| shape)
        .map_err(|e| format!("shape_unusable: {e}"))
}

/// What one seed did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    orders: u64,
    accepted: u64,
    cancels: u64,
    hostile: u64,
    oracle_updates: u64,
    oracle_stalls: u64,
    oracle_jumps: u64,
    settlement_prices: u64,
    liquidations: u64,
    deleverages: u64,
    /// Deleverages the engine refused because the auction had not run its course by its
    /// clock (`AuctionNotOver`): the operator's job reads the same clock, so none.
    deleverages_early: u64,
    deposits: u64,
    forced_withdrawals: u64,
    forced_closes: u64,
    positions_closed: u64,
    /// Fills of the puts, and their positions settled at expiry (and of those, BTC's put's), in
    /// the posted batches.
    put_fills: u64,
    put_settled: u64,
    btc_put_settled: u64,
    /// Fills of BTC's instruments (its perpetual and its put) in the posted batches.
    btc_fills: u64,
    /// Fills with the `Portfolio` trader on a side, in the posted batches.
    portfolio_fills: u64,
    /// Auctions' starts and ends in the posted batches.
    auction_starts: u64,
    auction_ends: u64,
    settler_rounds: u64,
    reorgs: u64,
    reorged_txs: u64,
    crashes: u64,
    from_snapshot: u64,
    log_trimmed: u64,
    torn: u64,
    lost_unsynced: u64,
    kept_unsynced: u64,
    slow_subscribers: u64,
    book_changes_checked: u64,
    batches: u64,
    /// Batches whose witness was checked against the circuit (`--circuit`).
    circuit_checked: u64,
    /// Positions their witnesses held in read-only registers.
    read_only: u64,
    key_changes: u64,
    key_orders: u64,
    /// The engine's state hash at the end (a rerun of the seed must end on the same one).
    state: [u8; 32],
}

impl Stats {
    fn add(&mut self, s: &Stats) {
        self.orders += s.orders;
        self.accepted += s.accepted;
        self.cancels += s.cancels;
        self.hostile += s.hostile;
        self.oracle_updates += s.oracle_updates;
        self.oracle_stalls += s.oracle_stalls;
        self.oracle_jumps += s.oracle_jumps;
        self.settlement_prices += s.settlement_prices;
        self.liquidations += s.liquidations;
        self.deleverages += s.deleverages;
        self.deleverages_early += s.deleverages_early;
        self.deposits += s.deposits;
        self.forced_withdrawals += s.forced_withdrawals;
        self.forced_closes += s.forced_closes;
        self.positions_closed += s.positions_closed;
        self.put_fills += s.put_fills;
        self.put_settled += s.put_settled;
        self.btc_fills += s.btc_fills;
        self.btc_put_settled += s.btc_put_settled;
        self.portfolio_fills += s.portfolio_fills;
        self.auction_starts += s.auction_starts;
        self.auction_ends += s.auction_ends;
        self.settler_rounds += s.settler_rounds;
        self.reorgs += s.reorgs;
        self.reorged_txs += s.reorged_txs;
        self.crashes += s.crashes;
        self.from_snapshot += s.from_snapshot;
        self.log_trimmed += s.log_trimmed;
        self.torn += s.torn;
        self.lost_unsynced += s.lost_unsynced;
        self.kept_unsynced += s.kept_unsynced;
        self.slow_subscribers += s.slow_subscribers;
        self.book_changes_checked += s.book_changes_checked;
        self.batches += s.batches;
        self.circuit_checked += s.circuit_checked;
        self.read_only += s.read_only;
        self.key_changes += s.key_changes;
        self.key_orders += s.key_orders;
    }

    fn line(&self) -> String {
        format!(
            "{} orders ({} accepted), {} cancels, {} hostile refused, {} oracle updates ({} stalls, {} jumps, {} settlement prices), {} put fills ({} put positions settled, {} of BTC's), {} BTC fills, {} fills of the Portfolio trader, {} auctions started ({} ended), {} liquidation bids filled, {} deleverages ({} refused as early), {} L1 deposits, {} forced withdrawals, {} forced closes ({} positions moved), {} settler rounds, {} L1 reorgs ({} txs dropped), {} crashes ({} restarts from a snapshot, {} log bytes deleted by snapshots, {} torn tails, {} unsynced groups lost, {} kept), {} slow subscribers, {} book changes checked, {} batches ({} checked against the circuit, {} positions in read-only registers), {} session key changes, {} orders signed by a session key",
            self.orders,
            self.accepted,
            self.cancels,
            self.hostile,
            self.oracle_updates,
            self.oracle_stalls,
            self.oracle_jumps,
            self.settlement_prices,
            self.put_fills,
            self.put_settled,
            self.btc_put_settled,
            self.btc_fills,
            self.portfolio_fills,
            self.auction_starts,
            self.auction_ends,
            self.liquidations,
            self.deleverages,
            self.deleverages_early,
            self.deposits,
            self.forced_withdrawals,
            self.forced_closes,
            self.positions_closed,
            self.settler_rounds,
            self.reorgs,
            self.reorged_txs,
            self.crashes,
            self.from_snapshot,
            self.log_trimmed,
            self.torn,
            self.lost_unsynced,
            self.kept_unsynced,
            self.slow_subscribers,
            self.book_changes_checked,
            self.batches,
            self.circuit_checked,
            self.read_only,
            self.key_changes,
            self.key_orders
        )
    }
}

const CHAIN: u64 = 31_337;
const INSTRUMENT: &str = "ETH-PERPETUAL";
/// The second underlying's perpetual (listed third, after the put): its own index, oracle
/// update, risk array and marks, so that every check also sees two underlyings side by side.
const BTC_INSTRUMENT: &str = "BTC-PERPETUAL";
const BTC_PERP: u32 = 2;
/// An underlying of the run: it lists a perpetual and a put struck at its starting index.
struct Underlying {
    name: &'static str,
    /// The index at the start (and the put's strike).
    start: f64,
    /// The range the index moves in (within the cap).
    range: (f64, f64),
    /// The underlying cap (the most a perpetual is worth), USDC.
    cap: i64,
}

/// The underlyings, in the order the oracle publishes them (and their instruments are listed:
/// ETH's perpetual and put are ids 0 and 1, BTC's 2 and 3).
const UNDERLYINGS: [Underlying; 2] = [
    Underlying {
        name: "ETH",
        start: 3_000.0,
        range: (500.0, 12_000.0),
        cap: 15_000,
    },
    Underlying {
        name: "BTC",
        start: 90_000.0,
        range: (15_000.0, 320_000.0),
        cap: 400_000,
    },
];
/// A day, ms.
const DAY_MS: u64 = 86_400_000;
/// When the simulator's put expires: 08:00 UTC, ms into its day.
const PUT_EXPIRY_HOUR_MS: u64 = 8 * 3_600_000;
const TRADERS: usize = 6;
/// Traders margined from marks (liquidatable); the others are fully collateralized.
const MARGINED: usize = 3;
/// The last traders also bid in liquidation auctions.
const LIQUIDATORS: std::ops::Range<usize> = 4..6;
/// How deep an L1 priority operation must be before it is sequenced; reorgs stay shallower.
const L1_CONFIRMATIONS: u64 = 3;
/// Seconds after its commitment a batch may be finalized.
const FINALIZATION_DELAY_S: u64 = 5;
/// The oracle publishes when its last update is this old (simulated time), unless stalled.
const ORACLE_EVERY_MS: u64 = 1_000;
/// Sequencer key and oracle key.
const SEQUENCER_KEY: [u8; 32] = [0x51; 32];
const ORACLE_KEY: [u8; 32] = [0x0c; 32];
/// The ETH put's instrument id (listed second).
const PUT: u32 = 1;
/// BTC's put (listed fourth), expiring with ETH's.
const BTC_PUT: u32 = 3;
/// The puts, ETH's first: their underlyings in the order of the oracle's updates.
const PUTS: [u32; 2] = [PUT, BTC_PUT];
/// The operator's backstop account (opened first).
const BACKSTOP: u32 = 0;

/// The operator's L1 key (anvil's first default key: a well-known test key).
const OPERATOR_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
/// Wall-clock time any step may take before the simulator calls the node stalled.
const STALL: Duration = Duration::from_secs(20);

struct Trader {
    key: secp256k1::SecretKey,
    address: [u8; 20],
    account: u64,
    nonce: u64,
    /// A session key the trader registers, extends, shortens and revokes now and then, and
    /// signs about half its orders with while it is live.
    session: secp256k1::SecretKey,
    /// When the session key expires (ms; 0: not registered).
    session_until_ms: u64,
    l1: optio_settler::DynProvider,
}

/// The L1 side: the embedded chain, the deployed contracts and the settler.
struct L1 {
    chain: optio_chain::Chain,
    rollup: optio_settler::Address,
    usdc: optio_settler::Address,
    settler: Settler,
}

/// What the reading WebSocket subscriber found.
#[derive(Default)]
struct Watch {
    violation: Option<String>,
    changes: u64,
}

/// The API server of the current node life (its runtime ends with the node), and its
/// subscribers.
struct Api {
    runtime: tokio::runtime::Runtime,
    watch: Arc<Mutex<Watch>>,
}

struct World {
    dir: tempfile::TempDir,
    config: Config,
    /// The circuit shape batches are cut to (`--circuit`), with the engine's limits for it.
    shape: Option<optio_prover::Shape>,
    gateway: Option<Arc<Gateway>>,
    api: Option<Api>,
    /// The simulator's own runtime: the chain, the settler, the WebSocket clients.
    runtime: tokio::runtime::Runtime,
    l1: L1,
    rng: ChaCha8Rng,
    clock: Clock,
    traders: Vec<Trader>,
    instrument: optio_types::InstrumentId,
    oracle: OracleSigner,
    /// The oracle's settlement prices for each underlying's put (ETH's, BTC's), from the index
    /// it publishes.
    feeds: [SettlementFeed; 2],
    /// Each underlying's index (`UNDERLYINGS` order), moving (and jumping) on its own.
    indices: [f64; 2],
    last_oracle_ms: u64,
    stalled_until_ms: u64,
    /// No liquidator bids before this time (ms).
    liquidators_away_until_ms: u64,
    /// Acknowledged intents: EIP-712 digest (hex) and sequence number.
    acked: Vec<(String, u64)>,
    /// Params of accepted orders (replayed by hostile clients).
    sent: Vec<Value>,
    public_key: secp256k1::PublicKey,
    stats: Stats,
}

/// The log segment the node appends to (the newest).
fn active_log(dir: &Path) -> Result<PathBuf> {
    let segments = optio_sequencer::log::segments(dir)?;
    Ok(segments
        .last()
        .context("the node's log has no segment")?
        .1
        .clone())
}

fn open(dir: &Path, config: &Config, shape: Option<optio_prover::Shape>) -> Result<Arc<Gateway>> {
    Ok(Arc::new(
        Gateway::open(
            dir,
            SEQUENCER_KEY,
            crate::prove::limits(shape),
            config.clone(),
        )
        .context("opening the node")?,
    ))
}

fn key_hex(key: &secp256k1::SecretKey) -> String {
    optio_state::poseidon::hex(&key.to_secret_bytes())
}

/// Starts the API server for `gateway` on 127.0.0.1 with one reading subscriber and `slow`
/// subscribers that never read.
fn serve(gateway: &Arc<Gateway>, slow: usize, client: &tokio::runtime::Runtime) -> Result<Api> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    runtime.spawn(optio_gateway::serve(listener, gateway.clone()));
    let watch = Arc::new(Mutex::new(Watch::default()));
    let url = format!("ws://{addr}/ws");
    let subscribe = json!({"jsonrpc": "2.0", "id": 1, "method": "public/subscribe", "params": {"channels": [format!("book.{INSTRUMENT}"), format!("trades.{INSTRUMENT}"), format!("ticker.{INSTRUMENT}")]}}).to_string();
    for _ in 0..slow {
        let (url, subscribe) = (url.clone(), subscribe.clone());
        client.spawn(async move {
            if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await {
                let _ = ws.send(subscribe.into()).await;
                // Never reads: holds the socket until the server drops it or the node stops.
                std::future::pending::<()>().await;
                drop(ws);
            }
        });
    }
    let (reader, url) = (watch.clone(), url.clone());
    client.block_on(async move {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .context("connecting the reading subscriber")?;
        ws.send(subscribe.into()).await?;
        tokio::spawn(async move {
            let mut last: Option<u64> = None;
            while let Some(Ok(message)) = ws.next().await {
                let tokio_tungstenite::tungstenite::Message::Text(text) = message else {
                    continue;
                };
                let Ok(m) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if m["method"] == "disconnect" {
                    // Told it fell behind: a clean end, not a gap.
                    return;
                }
                let data = &m["params"]["data"];
                if !m["params"]["channel"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("book."))
                {
                    continue;
                }
                let id = data["change_id"].as_u64();
                let mut w = reader.lock().expect("watch");
                if data["type"] == "change" {
                    if data["prev_change_id"].as_u64() != last {
                        w.violation.get_or_insert(format!(
                            "book stream gap: prev_change_id {} after {last:?}",
                            data["prev_change_id"]
                        ));
                    }
                    w.changes += 1;
                }
                last = id;
            }
        });
        anyhow::Ok(())
    })?;
    Ok(Api { runtime, watch })
}

impl World {
    fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("the node is up between steps")
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn new(seed: u64, shape: Option<optio_prover::Shape>) -> Result<World> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let operator = optio_settler::signer_address(OPERATOR_KEY).map_err(anyhow::Error::msg)?;
        let keys: Vec<secp256k1::SecretKey> = (0..TRADERS)
            .map(|i| secp256k1::SecretKey::from_secret_bytes([0x30 + i as u8; 32]))
            .collect::<Result<_, _>>()?;
        let addresses: Vec<[u8; 20]> = keys
            .iter()
            .map(|k| optio_intents::address_of(&secp256k1::PublicKey::from_secret_key(k)))
            .collect();
        let ether = U256::from(1_000u64) * U256::from(10u64).pow(U256::from(18u64));
        let funded: Vec<(optio_settler::Address, U256)> = std::iter::once(operator)
            .chain(addresses.iter().map(|a| optio_settler::Address::from(*a)))
            .map(|a| (a, ether))
            .collect();
        // Blocks only when the simulator mines them (or a transaction arrives).
        let chain = runtime
            .block_on(optio_chain::Chain::start(
                CHAIN,
                &funded,
                Duration::from_secs(365 * 86_400),
            ))
            .context("starting the embedded chain")?;
        chain.logical_time(1);
        optio_contracts::forge_build().map_err(|e| {
            anyhow::anyhow!("building the contracts: {e} (npm ci --prefix contracts)")
        })?;
        let provider = optio_settler::connect(&chain.url, OPERATOR_KEY)?;
        let genesis = U256::from_be_bytes(optio_state::poseidon::to_bytes(
            &optio_state::SettlementState::new().root(),
        ));
        let oracle = OracleSigner::from_bytes(ORACLE_KEY).context("oracle key")?;
        let deployment = runtime
            .block_on(optio_settler::deploy(
                &provider,
                operator,
                genesis,
                &optio_settler::RollupConfig {
                    // Every fill posts its signed orders and every mark the oracle's
                    // signature: the watchtower checks them at the end.
                    authorizations: true,
                    oracle: optio_settler::Address::from(optio_intents::address_of(
                        &oracle.public_key(),
                    )),
                    ..optio_settler::RollupConfig::new(FINALIZATION_DELAY_S, 10_000_000)
                },
            ))
            .context("deploying the contracts")?;
        // `OPTIO_SIM_KEEP` keeps the node's directory (log, snapshots, batches) for inspection.
        let dir = tempfile::Builder::new()
            .prefix("optio-sim-")
            .disable_cleanup(std::env::var_os("OPTIO_SIM_KEEP").is_some())
            .tempdir()?;
        // Forty minutes before 08:00 UTC on some day: the put listed below expires then, about
        // half way through a run of 3,000 steps (1.3 s of engine time a step on average), and
        // is settled at the oracle's price.
        let drawn = 1_800_000_000_000u64 + rng.random_range(0..1_000_000_000);
        let start_ms = drawn - drawn % DAY_MS + PUT_EXPIRY_HOUR_MS - 40 * 60_000;
        let clock = Clock::manual(start_ms);
        // L1 time never falls behind the engine's (a rollup refuses a batch dated more than
        // `RollupConfig::MAX_BATCH_LEAD_S` after its block), and stays within a mined block a
        // second of it otherwise.
        let l1_clock = clock.clone();
        chain.logical_floor(move || l1_clock.now_ms() / 1_000);
        let config = Config {
            chain_id: CHAIN,
            verifying_contract: deployment.rollup.into_array(),
            oracle_key: Some(oracle.public_key()),
            batch_max_ops: 100,
            // Batches are cut by size (their cut points a function of the sequence alone) until
            // the end, where the clock jumps past this age to cut the last one: longer than any
            // batch stays open in a run (steps move the clock by at most two minutes), and
            // shorter than the rollup's `MAX_BATCH_LAG_S`, so that the last batch, dated by
            // its last input before the jump, is still taken.
            batch_max_age_ms: 20 * 3_600_000,
            snapshot_every: 400,
            // Small log segments, so that snapshots delete some between crashes.
            log_segment_bytes: 32 << 10,
            // Every batch's files kept: the end of a run checks each against the circuit.
            checkpoint_every_batches: 0,
            clock: clock.clone(),
            // The rollup judges fills by their signatures.
            signed_terms_only: true,
            batch_capacity: shape.map(crate::prove::capacity),
            ..Config::default()
        };
        let gateway = open(dir.path(), &config, shape)?;
        let settler = Settler::new(provider, deployment.rollup, &dir.path().join("batches"));
        // In id order, each underlying's perpetual and put (both puts expire at 08:00 on the
        // run's day).
        let day = crate::devnet::date_code((start_ms / DAY_MS) as i64);
        let specs = UNDERLYINGS
            .iter()
            .flat_map(|u| {
                [
                    format!("{}-PERPETUAL", u.name),
                    format!("{}-{day}-{}-P", u.name, u.start as i64),
                ]
                .map(|name| (name, u.cap))
            })
            .map(|(name, cap)| {
                Ok(InstrumentSpec::with_defaults(
                    name.parse().context("name")?,
                    optio_types::Price(cap * MONEY_SCALE),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let expiry = start_ms - start_ms % DAY_MS + PUT_EXPIRY_HOUR_MS;
        ensure!(
            PUTS.iter()
                .all(|&id| specs[id as usize].expiry_ms() == Some(expiry))
        );
        ensure!(
            specs[0].name.to_string() == INSTRUMENT
                && specs[BTC_PERP as usize].name.to_string() == BTC_INSTRUMENT
        );
        let listed = gateway.submit_admin(
            specs
                .into_iter()
                .enumerate()
                .flat_map(|(id, spec)| {
                    [
                        Command::ListInstrument { spec },
                        Command::ActivateInstrument {
                            instrument: optio_types::InstrumentId(id as u32),
                        },
                    ]
                })
                .collect(),
        )?;
        ensure!(listed.iter().all(Result::is_ok), "listing: {listed:?}");
        let traders = keys
            .into_iter()
            .zip(addresses)
            .map(|(key, address)| {
                Ok(Trader {
                    l1: optio_settler::connect(&chain.url, &key_hex(&key))?,
                    key,
                    address,
                    account: 0,
                    nonce: 0,
                    session: secp256k1::SecretKey::from_secret_bytes(optio_intents::keccak(
                        &key.to_secret_bytes(),
                    ))
                    .expect("a valid key"),
                    session_until_ms: 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut w = World {
            dir,
            config,
            shape,
            gateway: Some(gateway),
            api: None,
            runtime,
            l1: L1 {
                chain,
                rollup: deployment.rollup,
                usdc: deployment.usdc,
                settler,
            },
            rng,
            clock,
            traders,
            instrument: optio_types::InstrumentId(0),
            oracle,
            feeds: [(); 2].map(|()| {
                SettlementFeed::new(optio_types::RiskConfig::default().settlement_window_ms)
            }),
            indices: UNDERLYINGS.map(|u| u.start),
            last_oracle_ms: 0,
            stalled_until_ms: 0,
            liquidators_away_until_ms: 0,
            acked: Vec::new(),
            sent: Vec::new(),
            public_key: secp256k1::PublicKey::from_secret_key(
                &secp256k1::SecretKey::from_secret_bytes(SEQUENCER_KEY)?,
            ),
            stats: Stats::default(),
        };
        // The operator's backstop first (account 0, the first opened for its address: L1
        // records it, and forced closes move positions to it), margined and funded by the
        // operator's own L1 deposit.
        let opened = w.gateway().submit_admin(vec![Command::OpenAccount {
            owner: optio_types::Address(operator.into_array()),
        }])?;
        ensure!(opened.iter().all(Result::is_ok), "the backstop: {opened:?}");
        // Its mode is the operator's signed change, as any owner's (L1 judges each).
        let operator_key = crate::settle::secret_key(OPERATOR_KEY)?;
        w.gateway()
            .change_as_owner(
                &operator_key,
                AccountId(BACKSTOP),
                optio_gateway::client::Change::MarginMode(optio_types::MarginMode::Standard),
            )
            .map_err(|e| anyhow::anyhow!("the backstop's margin mode: {e:?}"))?;
        w.runtime.block_on(async {
            let operator_l1 = optio_settler::connect(&w.l1.chain.url, OPERATOR_KEY)?;
            let usdc = TestUSDC::new(w.l1.usdc, &operator_l1);
            let units = U256::from(10_000_000 * MONEY_SCALE as u64);
            transact(usdc.mint(operator, units)).await?;
            transact(usdc.approve(w.l1.rollup, U256::MAX)).await?;
            transact(OptioRollup::new(w.l1.rollup, &operator_l1).deposit(BACKSTOP, units)).await
        })?;
        // Every trader is funded by its own L1 deposit to a new account, sequenced from the
        // queue: the margined ones with little, the others with plenty.
        for t in 0..TRADERS {
            let amount = if t < MARGINED { 5_000 } else { 1_000_000 };
            let trader = &w.traders[t];
            let (usdc, rollup) = (
                TestUSDC::new(w.l1.usdc, &trader.l1),
                OptioRollup::new(w.l1.rollup, &trader.l1),
            );
            w.runtime.block_on(async {
                transact(usdc.mint(
                    trader.address.into(),
                    U256::from(10u64).pow(U256::from(30u64)),
                ))
                .await?;
                transact(usdc.approve(w.l1.rollup, U256::MAX)).await?;
                transact(rollup.deposit(u32::MAX, U256::from(amount * MONEY_SCALE as u64))).await
            })?;
        }
        w.l1.chain.mine(L1_CONFIRMATIONS);
        w.settler_round()?;
        let accounts = w.gateway().canonical_state().accounts;
        for t in &mut w.traders {
            t.account = accounts
                .iter()
                .position(|a| a.owner.0 == t.address)
                .context("a trader's deposit opened no account")? as u64;
        }
        w.oracle_update([false; 2])?;
        // The last margined trader in `Portfolio` (scenarios on the risk arrays), the others
        // in `Standard`.
        for t in 0..MARGINED {
            let mode = if t + 1 == MARGINED {
                optio_types::MarginMode::Portfolio
            } else {
                optio_types::MarginMode::Standard
            };
            let params = w.change_params(t, optio_gateway::client::Change::MarginMode(mode));
            w.header_call(t, "private/set_margin_mode", params)
                .map_err(|e| anyhow::anyhow!("setting the margin mode: {e:?}"))?;
        }
        let slow = w.rng.random_range(0..3);
        w.stats.slow_subscribers += slow as u64;
        w.api = Some(serve(w.gateway.as_ref().expect("up"), slow, &w.runtime)?);
        Ok(w)
    }

    /// `params` for account change `change` of trader `t`, signed by the owner under Optio's
    /// domain, as the rollup judges every posted change: a fresh nonce and a signature that
    /// lives five minutes.
    fn change_params(&mut self, t: usize, change: optio_gateway::client::Change) -> Value {
        let now_ms = self.clock.now_ms();
        let expiry = now_ms / 1_000 + 300;
        let trader = &mut self.traders[t];
        trader.nonce = optio_gateway::next_nonce(trader.nonce, now_ms);
        optio_gateway::client::change_params(
            &trader.key,
            CHAIN,
            self.config.verifying_contract,
            trader.account,
            change,
            trader.nonce,
            expiry,
        )
    }

    /// A header-authenticated call by trader `t`.
    fn header_call(
        &self,
        t: usize,
        method: &str,
        params: Value,
    ) -> Result<Value, optio_gateway::CallError> {
        let mut headers = axum::http::HeaderMap::new();
        for (k, v) in auth_headers(&self.traders[t].key, self.now_ms()) {
            headers.insert(k, v.parse().expect("an ASCII header"));
        }
        self.gateway().call(method, &params, &headers)
    }

    fn order(&mut self, t: usize) -> Value {
        self.signed(t).map_or(Value::Null, |(params, _)| params)
    }

    /// Put `id`'s name and mark (micro-USDC) while it trades and the oracle has marked it.
    fn put_quote(&self, id: u32) -> Option<(String, i64)> {
        let state = self.gateway().canonical_state();
        let put = state.instruments.get(id as usize)?;
        match (&put.status, &put.mark) {
            (optio_types::InstrumentStatus::Active, Some((mark, _))) => {
                Some((put.spec.name.to_string(), mark.0))
            }
            _ => None,
        }
    }

    /// A signed order by trader `t`, for BTC's instruments one time in three and ETH's the
    /// others: about one in three while the underlying's put trades near its mark, otherwise
    /// near the index for the perpetual; and its digest.
    fn signed(&mut self, t: usize) -> Option<(Value, [u8; 32])> {
        let btc = self.rng.random_bool(1.0 / 3.0);
        let put_id = PUTS[usize::from(btc)];
        let put = self.put_quote(put_id).filter(|_| self.rng.random_bool(0.3));
        let now_ms = self.clock.now_ms();
        let trader = &mut self.traders[t];
        trader.nonce = optio_gateway::next_nonce(trader.nonce, now_ms);
        // The margined traders lean one way (even ones buy, odd ones sell, two times in
        // three), so that their positions build up and the scheduled shocks (`shock`) find
        // some of them on the losing side; the others trade both ways alike.
        let buys = match t {
            _ if t >= MARGINED => 0.5,
            _ if t.is_multiple_of(2) => 2.0 / 3.0,
            _ => 1.0 / 3.0,
        };
        let side = if self.rng.random_bool(buys) {
            "buy"
        } else {
            "sell"
        };
        let (instrument_id, instrument_name, price) = match put {
            Some((name, mark)) => {
                // Within 20% of the mark, in whole ticks of 0.1 USDC.
                let offset = self.rng.random_range(-200i64..=200);
                let tenths = (mark as f64 * (1.0 + offset as f64 / 1_000.0) / 100_000.0)
                    .round()
                    .max(1.0) as i64;
                (put_id, name, format!("{}.{}", tenths / 10, tenths % 10))
            }
            None => {
                let offset = self.rng.random_range(-20i64..=20);
                let index = self.indices[usize::from(btc)];
                let price = ((index * (1.0 + offset as f64 / 1_000.0)) as i64 / 5 * 5).max(5);
                let (id, name) = if btc {
                    (BTC_PERP, BTC_INSTRUMENT)
                } else {
                    (self.instrument.0, INSTRUMENT)
                };
                (id, name.to_owned(), price.to_string())
            }
        };
        // The margined traders trade larger, up to about twice their collateral's worth at
        // the default price (ETH's; a thirtieth of the contracts in BTC, its price thirty
        // times ETH's), so that jumps leave some below maintenance.
        let amount = if btc {
            let hundredths = self
                .rng
                .random_range(if t < MARGINED { 1..21 } else { 1..10 });
            format!("0.{hundredths:02}")
        } else {
            let whole = if t < MARGINED { 0..6 } else { 0..3 };
            format!(
                "{}.{}",
                self.rng.random_range(whole),
                self.rng.random_range(1..10)
            )
        };
        let request = OrderRequest {
            subaccount: trader.account,
            instrument_id,
            instrument_name: &instrument_name,
            direction: side,
            price: &price,
            amount: &amount,
            max_fee: "100",
            nonce: trader.nonce,
            expiry: self.clock.now_ms() / 1_000 + 3_600,
            time_in_force: if self.rng.random_bool(0.3) {
                "ioc"
            } else {
                "gtc"
            },
        };
        let now_ms = self.clock.now_ms();
        let key = if trader.session_until_ms > now_ms && self.rng.random_bool(0.5) {
            self.stats.key_orders += 1;
            &trader.session
        } else {
            &trader.key
        };
        signed_order_for(
            key,
            trader.address,
            CHAIN,
            self.config.verifying_contract,
            &request,
        )
    }

    /// Trader `t` registers its session key (or extends or shortens its life: half a minute to
    /// five minutes from now), or revokes it. Header-authenticated and signed by the owner; the
    /// engine cancels the key's orders that would outlive the change.
    fn session_key_change(&mut self, t: usize) -> Result<()> {
        let now_ms = self.clock.now_ms();
        let expiry_s = if self.traders[t].session_until_ms > now_ms && self.rng.random_bool(0.25) {
            0
        } else {
            now_ms / 1_000 + self.rng.random_range(30..300)
        };
        let trader = &self.traders[t];
        let key =
            optio_intents::address_of(&secp256k1::PublicKey::from_secret_key(&trader.session));
        let params = self.change_params(
            t,
            optio_gateway::client::Change::SessionKey { key, expiry_s },
        );
        self.header_call(t, "private/register_session_key", params)
            .map_err(|e| anyhow::anyhow!("a session key change by the owner refused: {e:?}"))?;
        self.traders[t].session_until_ms = expiry_s * 1_000;
        self.stats.key_changes += 1;
        Ok(())
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
        let t = self.rng.random_range(0..TRADERS);
        self.stats.cancels += 1;
        self.header_call(
            t,
            "private/cancel_all",
            json!({"subaccount_id": self.traders[t].account}),
        )
        .map_err(|e| anyhow::anyhow!("cancel_all by the owner refused: {e:?}"))?;
        Ok(())
    }

    /// Trader `t`'s bid for 0.1 at 3,000 signed for chain `chain` under `nonce` (a hostile
    /// input's body).
    fn plain_bid(&self, t: usize, chain: u64, nonce: u64) -> Value {
        let trader = &self.traders[t];
        order_params(
            &trader.key,
            chain,
            self.config.verifying_contract,
            &OrderRequest {
                subaccount: trader.account,
                instrument_id: self.instrument.0,
                instrument_name: INSTRUMENT,
                direction: "buy",
                price: "3000",
                amount: "0.1",
                max_fee: "100",
                nonce,
                expiry: self.clock.now_ms() / 1_000 + 3_600,
                time_in_force: "gtc",
            },
        )
        .unwrap_or(Value::Null)
    }

    /// A hostile input: refused before sequencing, nothing changes.
    fn hostile(&mut self) -> Result<()> {
        let t = self.rng.random_range(0..TRADERS);
        let kind = self.rng.random_range(0..9);
        // A nonce out of its window: refused for it (6010).
        let mut undated = false;
        let (method, params, headers) = match kind {
            // A byte of the signature flipped.
            0 => {
                let mut p = self.order(t);
                let sig = p["signature"].as_str().unwrap_or_default().to_owned();
                let flipped = if sig.ends_with('1') { "2" } else { "1" };
                p["signature"] = json!(format!("{}{flipped}", &sig[..sig.len() - 1]));
                ("private/order", p, None)
            }
            // Signed for another chain; every other time instead signed with a nonce dated 11
            // minutes back, or one that carries no date (chosen without drawing from the
            // generator, so that the runs' random streams stay those of the fixed seeds).
            1 if self.stats.hostile.is_multiple_of(2) => {
                let now_ms = self.clock.now_ms();
                let trader = &mut self.traders[t];
                trader.nonce = optio_gateway::next_nonce(trader.nonce, now_ms);
                let nonce = trader.nonce;
                ("private/order", self.plain_bid(t, 1, nonce), None)
            }
            1 => {
                undated = true;
                let nonce = if self.stats.hostile % 4 == 1 {
                    optio_gateway::dated_nonce(self.clock.now_ms() - 660_000, 1)
                } else {
                    7 + self.stats.hostile
                };
                ("private/order", self.plain_bid(t, CHAIN, nonce), None)
            }
            // A replay of an accepted order.
            2 if !self.sent.is_empty() => {
                let p = self.sent[self.rng.random_range(0..self.sent.len())].clone();
                ("private/order", p, None)
            }
            // Values out of range or malformed.
            3 => {
                let mut p = self.order(t);
                p["amount"] =
                    json!(["NaN", "-1", "1e400", "", "0x10"][self.rng.random_range(0..5)]);
                ("private/order", p, None)
            }
            4 => {
                let mut p = self.order(t);
                p["instrument_name"] = json!("DOGE-PERPETUAL");
                ("private/order", p, None)
            }
            // A liquidation bid or a margin mode for someone else's account.
            5 => {
                let victim = (t + 1) % TRADERS;
                let p = json!({"subaccount_id": self.traders[victim].account, "account_id": self.traders[t].account, "instrument_name": INSTRUMENT, "amount": "0.1"});
                ("private/liquidate", p, Some(t))
            }
            6 => {
                let victim = (t + 1) % TRADERS;
                let mode = ["portfolio", "cross", ""][self.rng.random_range(0..3)];
                let p = json!({"subaccount_id": self.traders[victim].account, "margin_mode": mode});
                ("private/set_margin_mode", p, Some(t))
            }
            // The owner's own account change, unsigned, or signed for another change (its
            // session key registered for longer than signed).
            7 => {
                let key = optio_intents::address_of(&secp256k1::PublicKey::from_secret_key(
                    &self.traders[t].session,
                ));
                let expiry_s = self.clock.now_ms() / 1_000 + 120;
                let mut p = self.change_params(
                    t,
                    optio_gateway::client::Change::SessionKey { key, expiry_s },
                );
                if self.rng.random_bool(0.5) {
                    p.as_object_mut().map(|o| o.remove("signature"));
                } else {
                    p["expiry_sec"] = json!(expiry_s + 3_600);
                }
                ("private/register_session_key", p, Some(t))
            }
            _ => {
                let mut p = self.order(t);
                p["subaccount_id"] = json!(u64::MAX);
                ("private/order", p, None)
            }
        };
        self.stats.hostile += 1;
        let (seq, hash) = (self.gateway().next_seq(), self.gateway().state_hash());
        let reply = match headers {
            Some(t) => self.header_call(t, method, params.clone()),
            None => self.gateway().call(method, &params, &Default::default()),
        };
        ensure!(
            reply.is_err(),
            "hostile input {kind} was accepted: {params}"
        );
        if let (true, Err(optio_gateway::CallError::Gateway(e))) = (undated, &reply) {
            ensure!(
                e.code() == 6_010,
                "a nonce out of its window refused as {e:?}"
            );
        }
        ensure!(
            self.gateway().next_seq() == seq && self.gateway().state_hash() == hash,
            "hostile input {kind} changed the state"
        );
        Ok(())
    }

    /// The risk oracle: publishes on time unless stalled; sometimes the index jumps.
    fn oracle_tick(&mut self) -> Result<()> {
        let now = self.now_ms();
        if now < self.stalled_until_ms || now < self.last_oracle_ms + ORACLE_EVERY_MS {
            return Ok(());
        }
        if self.rng.random_range(0..100) == 0 {
            // A stall: nothing for one to five minutes (marks go stale after 30 s).
            self.stalled_until_ms = now + self.rng.random_range(60_000..300_000);
            self.stats.oracle_stalls += 1;
            return Ok(());
        }
        // Each underlying's index jumps one time in twenty, on its own.
        let jumps = [(); 2].map(|()| self.rng.random_range(0..20) == 0);
        self.oracle_update(jumps)
    }

    /// A scheduled shock: both indices move by `moved` at once and the oracle publishes now,
    /// stalled or not, with the liquidators away for `away_ms` from now. The run schedules a
    /// fall a quarter of the way through, the liquidators away for twenty minutes (the leaning
    /// longs' auctions run their course and are deleveraged), and a rise past half way, the
    /// liquidators there (the leaning short's auction is bid), so that every seed liquidates
    /// both ways besides what its random jumps do.
    fn shock(&mut self, moved: f64, away_ms: u64) -> Result<()> {
        for u in 0..UNDERLYINGS.len() {
            self.move_index(u, moved);
        }
        self.stats.oracle_jumps += 2;
        self.stalled_until_ms = 0;
        self.liquidators_away_until_ms = self.now_ms() + away_ms;
        self.oracle_update([false; 2])
    }

    /// Moves underlying `u`'s index by `moved` (a fraction), within its range; the new index.
    fn move_index(&mut self, u: usize, moved: f64) -> f64 {
        let (low, high) = UNDERLYINGS[u].range;
        self.indices[u] = (self.indices[u] * (1.0 + moved)).clamp(low, high);
        self.indices[u]
    }

    /// One signed update per underlying, ETH's then BTC's, both published now; an index whose
    /// `jumps` entry is set (ETH's first) jumps by 5% to 25%, up or down.
    fn oracle_update(&mut self, jumps: [bool; 2]) -> Result<()> {
        let now = self.now_ms();
        let specs: Vec<InstrumentSpec> = self
            .gateway()
            .canonical_state()
            .instruments
            .into_iter()
            .map(|i| i.spec)
            .collect();
        for (u, jump) in jumps.into_iter().enumerate() {
            let underlying = UNDERLYINGS[u].name;
            let moved = if jump {
                self.stats.oracle_jumps += 1;
                let size = self.rng.random_range(0.05..0.25);
                if self.rng.random_bool(0.5) {
                    size
                } else {
                    -size
                }
            } else {
                self.rng.random_range(-0.003..0.003)
            };
            let index = self.move_index(u, moved);
            let list: Vec<_> = optio_oracle::numbered(&specs)
                .into_iter()
                .filter(|(_, spec)| spec.name.underlying == underlying)
                .collect();
            let mut update = build_update(
                underlying,
                &crate::devnet::surface(index),
                &optio_pricing::risk::default_scenarios(),
                &list,
                now,
            )
            .context("oracle update")?;
            // Once its put has expired: the settlement price, until an update with it is
            // taken (each underlying's feed keeps its own index history).
            self.feeds[u].attach(&mut update, &list);
            let signed = self.oracle.sign(update, &self.gateway().optio_domain());
            self.gateway().submit_oracle(&signed).map_err(|e| {
                anyhow::anyhow!("a signed {underlying} oracle update refused: {e:?}")
            })?;
            self.feeds[u].taken(&signed.update);
            self.stats.settlement_prices += signed.update.settlements.len() as u64;
            self.stats.oracle_updates += 1;
            self.gateway()
                .check_invariants()
                .map_err(anyhow::Error::msg)?;
        }
        self.last_oracle_ms = now;
        Ok(())
    }

    /// Liquidators bid on every liquidating account's position; once an auction has run its
    /// course by the engine's clock (the oracle's signed time: the latest accepted update that
    /// marked something), the operator deleverages what is left.
    fn liquidate(&mut self) -> Result<()> {
        // This step comes about twice a minute of simulated time: one in 200 is about once
        // in an hour and a half (one in 20 kept them away most of a long run).
        if self.rng.random_range(0..200) == 0 {
            // The liquidators go away for ten to thirty minutes: auctions run their course.
            self.liquidators_away_until_ms =
                self.now_ms() + self.rng.random_range(600_000..1_800_000);
        }
        let away = self.now_ms() < self.liquidators_away_until_ms;
        let state = self.gateway().canonical_state();
        let duration = state.risk.liquidation_duration_ms;
        let step = state.risk.liquidation_step_bps;
        let oracle_ms = self.gateway().auction_clock_ms();
        for (id, account) in state.accounts.iter().enumerate() {
            let Some(since) = account.liquidating_since else {
                continue;
            };
            for p in account.positions.iter().filter(|p| p.qty.0 != 0) {
                let name = state.instruments[p.instrument.0 as usize]
                    .spec
                    .name
                    .to_string();
                if oracle_ms >= since + duration {
                    let done = self.gateway().submit_admin(vec![Command::Deleverage {
                        account: AccountId(id as u32),
                        instrument: p.instrument,
                    }])?;
                    if done.iter().all(Result::is_ok) {
                        self.stats.deleverages += 1;
                    }
                    if done.contains(&Err(RejectCode::AuctionNotOver)) {
                        self.stats.deleverages_early += 1;
                    }
                    continue;
                }
                if away {
                    continue;
                }
                let lot = optio_types::QTY_SCALE / 100;
                let qty = (p.qty.0.abs() * i64::from(step) / 10_000 / lot * lot).max(lot);
                let t = self.rng.random_range(LIQUIDATORS);
                let reply = self.header_call(
                    t,
                    "private/liquidate",
                    json!({"subaccount_id": self.traders[t].account, "account_id": id, "instrument_name": name, "amount": optio_types::Qty(qty).to_string()}),
                );
                match reply {
                    Ok(_) => self.stats.liquidations += 1,
                    // The engine may refuse (too large, the liquidator's margin, no fresh mark).
                    Err(optio_gateway::CallError::Engine(..)) => {}
                    Err(e) => bail!("a liquidation bid refused before sequencing: {e:?}"),
                }
            }
        }
        self.gateway()
            .check_invariants()
            .map_err(anyhow::Error::msg)
    }

    /// An L1 deposit by a trader to its account (sequenced once it is deep enough).
    fn deposit(&mut self) -> Result<()> {
        let t = self.rng.random_range(0..TRADERS);
        // The margined traders top up a little: enough to go on trading, not to stop
        // being liquidatable.
        let most = if t < MARGINED { 500 } else { 5_000 };
        let amount = self.rng.random_range(1..most) * MONEY_SCALE as u64;
        let trader = &self.traders[t];
        let rollup = OptioRollup::new(self.l1.rollup, &trader.l1);
        self.runtime
            .block_on(transact(
                rollup.deposit(trader.account as u32, U256::from(amount)),
            ))
            .context("an L1 deposit")?;
        self.stats.deposits += 1;
        Ok(())
    }

    /// A forced withdrawal requested on L1 (rare: it takes the trader's free collateral), once
    /// a committed batch has opened the trader's account (L1 refuses a request naming an
    /// account it has not seen).
    fn forced_withdrawal(&mut self) -> Result<()> {
        let t = self.rng.random_range(0..TRADERS);
        let trader = &self.traders[t];
        let rollup = OptioRollup::new(self.l1.rollup, &trader.l1);
        self.runtime.block_on(async {
            let opened = rollup.accountsOpened().call().await?;
            if u64::from(opened) <= trader.account {
                return anyhow::Ok(());
            }
            transact(rollup.requestWithdrawal(trader.account as u32))
                .await
                .context("an L1 forced withdrawal")?;
            self.stats.forced_withdrawals += 1;
            Ok(())
        })
    }

    /// A forced close requested on L1 (rare): a trader asks to close its own position in one
    /// of the four instruments, now and then someone else's (served, nothing moves), once L1 has
    /// recorded the backstop and seen the account.
    fn forced_close(&mut self) -> Result<()> {
        let t = self.rng.random_range(0..TRADERS);
        let whose = if self.rng.random_bool(0.8) {
            t
        } else {
            self.rng.random_range(0..TRADERS)
        };
        let instrument = self.rng.random_range(0..4u32);
        let account = self.traders[whose].account;
        let rollup = OptioRollup::new(self.l1.rollup, &self.traders[t].l1);
        self.runtime.block_on(async {
            let opened = rollup.accountsOpened().call().await?;
            if rollup.backstop().call().await? != BACKSTOP || u64::from(opened) <= account {
                return anyhow::Ok(());
            }
            transact(rollup.requestClose(account as u32, instrument))
                .await
                .context("an L1 forced close")?;
            self.stats.forced_closes += 1;
            Ok(())
        })
    }

    /// One settler round: post, finalize what is due, feed the queue `L1_CONFIRMATIONS` deep.
    /// It starts once the batcher has taken every input so far, so that what it posts (and so
    /// the blocks it mines) depends on the sequence alone, not on the batcher thread's timing.
    fn settler_round(&mut self) -> Result<()> {
        self.batcher_caught_up()?;
        let link: Arc<dyn optio_settler::NodeLink> =
            Arc::new(crate::settle::Link(self.gateway.clone().expect("up")));
        self.runtime
            .block_on(optio_settler::round(
                &self.l1.settler,
                &link,
                L1_CONFIRMATIONS,
            ))
            .context("a settler round")?;
        self.stats.settler_rounds += 1;
        self.gateway()
            .check_invariants()
            .map_err(anyhow::Error::msg)
    }

    /// Waits until the batcher has taken every input sequenced so far.
    fn batcher_caught_up(&self) -> Result<()> {
        let last = self.gateway().next_seq() - 1;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .gateway()
            .batch_stats()
            .is_some_and(|s| s.caught_up(last))
        {
            ensure!(
                Instant::now() < deadline,
                "the batcher did not take the inputs up to {last}: {:?}",
                self.gateway().batch_stats()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    fn reorg(&mut self) -> Result<()> {
        let depth = self.rng.random_range(1..L1_CONFIRMATIONS);
        if self.l1.chain.head() <= depth + 1 {
            return Ok(());
        }
        let gone = self.l1.chain.reorg(depth).map_err(anyhow::Error::msg)?;
        self.stats.reorgs += 1;
        self.stats.reorged_txs += gone.len() as u64;
        Ok(())
    }

    /// The subscriber that reads found no gap.
    fn watch(&mut self) -> Result<()> {
        if let Some(api) = &self.api {
            let mut w = api.watch.lock().expect("watch");
            if let Some(v) = w.violation.take() {
                bail!("{v}");
            }
            self.stats.book_changes_checked += std::mem::take(&mut w.changes);
        }
        Ok(())
    }

    /// Stops the node's API and the node; the data directory is free afterwards.
    fn stop(&mut self) -> Result<()> {
        self.watch()?;
        if let Some(api) = self.api.take() {
            api.runtime.shutdown_timeout(Duration::from_secs(5));
        }
        let gateway = self.gateway.take().expect("up");
        ensure!(
            Arc::strong_count(&gateway) == 1,
            "the node is still referenced after its server stopped"
        );
        // Dropping the node stops its threads and frees its files.
        drop(gateway);
        Ok(())
    }

    /// Crash and restart: sometimes with a torn record at the WAL's tail, sometimes between a
    /// group's write and its fsync (the power loss keeps none, part or all of it); then the
    /// checks.
    fn crash(&mut self) -> Result<()> {
        // What the node's snapshots deleted of its log before this crash.
        self.stats.log_trimmed += self.gateway().log_trimmed();
        let mut wal = active_log(self.dir.path())?;
        let (mut hash, mut seq) = (self.gateway().state_hash(), self.gateway().next_seq());
        let mut unsynced: Option<String> = None;
        if self.rng.random_bool(0.3) {
            // The writer dies after writing the next group (one signed order), before fsync.
            let mut synced = std::fs::metadata(&wal)?.len();
            let t = self.rng.random_range(0..TRADERS);
            let (params, digest) = self.signed(t).context("signing")?;
            self.gateway().crash_before_next_fsync();
            let reply = self
                .gateway()
                .call("private/order", &params, &Default::default());
            ensure!(
                reply.is_err(),
                "an order was answered although its group never reached the disk"
            );
            self.stop()?;
            // (The group may have begun a new segment: none of it was synced.)
            let active = active_log(self.dir.path())?;
            if active != wal {
                (wal, synced) = (active, 0);
            }
            let written = std::fs::metadata(&wal)?.len();
            ensure!(written > synced, "the crashed group was not written");
            let keep = match self.rng.random_range(0..3) {
                0 => 0,
                1 => self.rng.random_range(1..written - synced),
                _ => written - synced,
            };
            std::fs::OpenOptions::new()
                .write(true)
                .open(&wal)?
                .set_len(synced + keep)?;
            if keep == written - synced {
                self.stats.kept_unsynced += 1;
                unsynced = Some(optio_state::poseidon::hex(&digest));
            } else {
                self.stats.lost_unsynced += 1;
            }
        } else {
            self.stop()?;
        }
        self.stats.crashes += 1;
        if self.rng.random_bool(0.5) {
            // A write that never completed: a record header and part of its body.
            let len = self.rng.random_range(1..60usize);
            let torn: Vec<u8> = (0..len).map(|_| self.rng.random()).collect();
            use std::io::Write;
            std::fs::OpenOptions::new()
                .append(true)
                .open(&wal)?
                .write_all(&torn)?;
            self.stats.torn += 1;
        }
        let gateway = open(self.dir.path(), &self.config, self.shape)?;
        if gateway.snapshot_seq() > 0 {
            self.stats.from_snapshot += 1;
        }
        if let Some(digest) = &unsynced {
            // The whole group survived the power loss: it is there, never acknowledged.
            let status = gateway
                .call(
                    "public/get_intent_status",
                    &json!({"intent_hash": digest}),
                    &Default::default(),
                )
                .map_err(|e| anyhow::anyhow!("the kept unsynced order is missing: {e:?}"))?;
            ensure!(
                status["seq"].as_u64() == Some(seq),
                "the kept unsynced order has sequence {}, not {seq}",
                status["seq"]
            );
            seq += 1;
            hash = gateway.state_hash();
        }
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
        // Every L1 operation served so far, fed again: nothing is credited twice.
        let ops = self
            .runtime
            .block_on(optio_settler::priority_ops(
                &optio_settler::reader(&self.l1.chain.url).map_err(anyhow::Error::msg)?,
                self.l1.rollup,
                0,
                L1_CONFIRMATIONS,
            ))
            .context("reading the L1 queue")?;
        for op in ops.iter().filter(|op| op.id < served) {
            let fresh = gateway
                .submit_l1(op.command())
                .map_err(|e| anyhow::anyhow!("L1 operation refused after restart: {e:?}"))?;
            ensure!(!fresh, "L1 operation {} was credited twice", op.id);
        }
        ensure!(gateway.priority_served() == served);
        let slow = self.rng.random_range(0..3);
        self.stats.slow_subscribers += slow as u64;
        self.api = Some(serve(&gateway, slow, &self.runtime)?);
        self.gateway = Some(gateway);
        Ok(())
    }

    /// At the end: every queued L1 operation is served; the blobs rebuild to the batcher's root
    /// and to the engine's state; every batch is posted and finalized; L1 agrees.
    fn settle(&mut self) -> Result<()> {
        self.l1.chain.mine(L1_CONFIRMATIONS);
        self.settler_round()?;
        // The last batch is cut once it is old enough. The round may have sequenced L1
        // operations: the batcher takes them first, or each would be cut into a batch of its
        // own after the jump, as many as the batcher thread lagged (a race seen under load).
        self.batcher_caught_up()?;
        self.clock.advance(self.config.batch_max_age_ms + 1);
        let last = self.gateway().next_seq() - 1;
        let batches = self.dir.path().join("batches");
        let deadline = Instant::now() + Duration::from_secs(60);
        let count = loop {
            let files = optio_gateway::batching::blob_files(&batches)?;
            let blobs: Vec<Vec<u8>> = files.iter().map(std::fs::read).collect::<Result<_, _>>()?;
            let mut state = optio_state::SettlementState::new();
            // A directory listing taken while the batcher writes can miss a file created during
            // it (readdir's order is not creation order): a rebuild that fails is retried until
            // the batcher is quiet, and reported only if it still fails then.
            let rebuilt = optio_state::rebuild(blobs.iter().map(Vec::as_slice), &mut state, |_| {});
            let (number, covered) = match rebuilt {
                Ok(end) => end,
                Err(e) if Instant::now() >= deadline => bail!("the blobs do not rebuild: {e}"),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if covered >= last {
                let stats = self.gateway().batch_stats().context("batcher")?;
                ensure!(
                    stats.root == optio_state::poseidon::to_hex(&state.root()),
                    "the rebuilt root differs from the batcher's"
                );
                if let Some(diff) = state.diff_engine(&self.gateway().canonical_state()) {
                    bail!("the settlement state differs from the engine: {diff}");
                }
                break number;
            }
            ensure!(
                Instant::now() < deadline,
                "the batcher did not catch up: blobs cover {covered} of {last}; {:?}",
                self.gateway().batch_stats()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        self.stats.batches = count;
        self.stats.state = self.gateway().state_hash();
        // Post everything and let it finalize.
        for _ in 0..10 {
            self.settler_round()?;
            let progress = self.runtime.block_on(self.l1.settler.progress())?;
            if progress.finalized == count {
                break;
            }
            self.l1.chain.mine(FINALIZATION_DELAY_S + 1);
        }
        let reader = optio_settler::reader(&self.l1.chain.url).map_err(anyhow::Error::msg)?;
        let progress = self.runtime.block_on(self.l1.settler.progress())?;
        ensure!(
            progress.committed == count && progress.finalized == count,
            "L1 holds {} batches, {} final, of {count}",
            progress.committed,
            progress.finalized
        );
        let (verdicts, rebuilt) = self
            .runtime
            .block_on(optio_settler::verify_l1_rebuilt(&reader, self.l1.rollup))?;
        if let Some(bad) = verdicts
            .iter()
            .find(|v| !matches!(v, optio_settler::Verdict::Agrees(_)))
        {
            bail!("the watchtower disagrees: {bad:?}");
        }
        // And the deployment is still the audited one, its creation found after the reorgs.
        let audit = self
            .runtime
            .block_on(optio_settler::audit_deployment(&reader, self.l1.rollup))?;
        if let Some(c) = audit.differing().next() {
            bail!(
                "the deployment audit: {} at {} is not the audited build: {}",
                c.name,
                c.address,
                c.differs.as_deref().unwrap_or_default()
            );
        }
        // And the vault holds what the state owes: every deposit, withdrawal and forced
        // withdrawal of the run, across its crashes and reorgs, accounted on both sides.
        let vault = self.runtime.block_on(optio_settler::audit_vault(
            &reader,
            self.l1.rollup,
            &rebuilt,
        ))?;
        if let Some(why) = vault.problems().first() {
            bail!("the vault audit: {why}");
        }
        ensure!(vault.owed.is_some(), "the vault audit compared nothing");
        // The state rebuilt from L1 data alone (by the watchtower above, from every committed
        // batch: the vault's comparison needs it whole) is the engine's, balance for balance.
        let (blobs, from_l1) = (&rebuilt.blobs, &rebuilt.state);
        for blob in blobs {
            let (_, ops) = optio_state::decode(blob.as_ref())?;
            self.stats.positions_closed += ops
                .iter()
                .filter(|op| matches!(op, optio_state::Op::L1Close { qty, .. } if qty.0 != 0))
                .count() as u64;
            for op in &ops {
                match op {
                    optio_state::Op::Fill {
                        instrument,
                        maker,
                        taker,
                        ..
                    } => {
                        let portfolio = self.traders[MARGINED - 1].account;
                        self.stats.portfolio_fills +=
                            u64::from([maker.0, taker.0].contains(&(portfolio as u32)));
                        self.stats.put_fills += u64::from(PUTS.contains(&instrument.0));
                        self.stats.btc_fills +=
                            u64::from([BTC_PERP, BTC_PUT].contains(&instrument.0));
                    }
                    optio_state::Op::LiquidationStart { .. } => self.stats.auction_starts += 1,
                    optio_state::Op::LiquidationEnd { .. } => self.stats.auction_ends += 1,
                    optio_state::Op::SettlePosition { instrument, .. } => {
                        self.stats.put_settled += u64::from(PUTS.contains(&instrument.0));
                        self.stats.btc_put_settled += u64::from(instrument.0 == BTC_PUT);
                    }
                    _ => {}
                }
            }
        }
        let engine = self.gateway().canonical_state();
        if let Some(diff) = from_l1.diff_engine(&engine) {
            bail!("the state rebuilt from L1 differs from the engine: {diff}");
        }
        // Every deposit still on L1 was credited exactly once: the vault holds what the engine
        // credited (no withdrawal has been paid out).
        let ops =
            self.runtime
                .block_on(optio_settler::priority_ops(&reader, self.l1.rollup, 0, 0))?;
        ensure!(
            engine.totals.priority_served == ops.len() as u64,
            "the engine served {} L1 operations, L1 holds {}",
            engine.totals.priority_served,
            ops.len()
        );
        let queued: u128 = ops
            .iter()
            .filter(|op| op.kind == optio_settler::PriorityKind::Deposit)
            .map(|op| op.amount.to::<u128>())
            .sum();
        let vault = self.runtime.block_on(async {
            TestUSDC::new(self.l1.usdc, &reader)
                .balanceOf(self.l1.rollup)
                .call()
                .await
        })?;
        ensure!(
            u128::try_from(engine.totals.deposits).ok() == Some(queued)
                && vault == U256::from(queued),
            "deposits: engine {}, L1 queue {queued}, vault {vault}",
            engine.totals.deposits
        );
        self.watch()
    }
}

/// Every batch in `batches`, in order, fits `shape`, and its witness satisfies the circuit
/// with the native new root (`World::settle` has checked the last against the batcher's): a
/// prover worker with keys of the shape would prove each. Returns how many were checked, and
/// how many positions their witnesses held in read-only registers.
fn check_circuit(batches: &Path, shape: optio_prover::Shape) -> Result<(u64, u64)> {
    let mut read_only = 0;
    let mut state = optio_state::SettlementState::new();
    let files = optio_gateway::batching::blob_files(batches)?;
    for file in &files {
        let blob = std::fs::read(file)?;
        let (header, ops) = optio_state::decode(&blob)?;
        let number = header.number;
        let w = optio_prover::witness(&state, &ops, shape)
            .map_err(|e| anyhow::anyhow!("batch {number} does not fit the circuit: {e}"))?;
        optio_prover::keys::check(&w)
            .map_err(|e| anyhow::anyhow!("batch {number} does not satisfy the circuit: {e}"))?;
        read_only += w.read_only_in_use() as u64;
        state
            .apply_batch(&ops)
            .map_err(|e| anyhow::anyhow!("batch {number} does not apply: {e}"))?;
        state.commit();
        ensure!(
            w.public.new_root == state.root(),
            "batch {number}: the witness's new root differs from the state's"
        );
    }
    Ok((files.len() as u64, read_only))
}

/// Runs one seed; `Err` names the first violation.
pub fn run_seed(
    seed: u64,
    ops: u64,
    crash_every: u64,
    shape: Option<optio_prover::Shape>,
    uncut: bool,
) -> Result<Stats> {
    let mut w = World::new(seed, shape.filter(|_| !uncut))
        .with_context(|| format!("seed {seed}, setup"))?;
    for step in 0..ops {
        let started = Instant::now();
        // Simulated time: a few milliseconds per step, now and then a minute or two.
        let dt = if w.rng.random_range(0..50) == 0 {
            w.rng.random_range(1_000..120_000)
        } else {
            w.rng.random_range(1..100)
        };
        w.clock.advance(dt);
        let roll = w.rng.random_range(0..1_000);
        let kind = match roll {
            0..=569 => "a signed order",
            570..=599 => "a session key change",
            600..=659 => "a cancel_all",
            660..=809 => "a hostile input",
            810..=859 => "liquidation bids",
            860..=899 => "an L1 deposit",
            900..=901 => "an L1 forced withdrawal",
            902 => "an L1 forced close",
            903..=949 => "a settler round",
            950..=989 => "L1 blocks",
            _ => "an L1 reorg",
        };
        let shocked = match step {
            _ if step == ops / 4 => w.shock(-0.2, 20 * 60_000),
            _ if step == ops * 11 / 20 => w.shock(0.25, 0),
            _ => Ok(()),
        };
        let result = shocked
            .and_then(|()| w.oracle_tick())
            .and_then(|()| match roll {
                0..=569 => w.trade(),
                570..=599 => {
                    let t = w.rng.random_range(0..TRADERS);
                    w.session_key_change(t)
                }
                600..=659 => w.cancel_all(),
                660..=809 => w.hostile(),
                810..=859 => w.liquidate(),
                860..=899 => w.deposit(),
                900..=901 => w.forced_withdrawal(),
                902 => w.forced_close(),
                903..=949 => w.settler_round(),
                950..=989 => {
                    w.l1.chain.mine(w.rng.random_range(1..4));
                    Ok(())
                }
                _ => w.reorg(),
            });
        result
            .and_then(|()| w.watch())
            .with_context(|| format!("seed {seed}, input {step} ({kind})"))?;
        if w.rng.random_range(0..crash_every.max(1)) == 0 {
            w.crash()
                .with_context(|| format!("seed {seed}, restart after input {step}"))?;
        }
        ensure!(
            started.elapsed() < STALL,
            "seed {seed}, input {step}: the step took {:?}; the node stalled",
            started.elapsed()
        );
    }
    w.settle()
        .with_context(|| format!("seed {seed}, final settlement check"))?;
    if let Some(shape) = shape {
        (w.stats.circuit_checked, w.stats.read_only) =
            check_circuit(&w.dir.path().join("batches"), shape)
                .with_context(|| format!("seed {seed}, final settlement check"))?;
    }
    w.stop()?;
    Ok(w.stats)
}

/// `optio sim`.
pub fn run(args: SimArgs) -> Result<()> {
    let mut total = Stats::default();
    for seed in args.seed..args.seed + args.seeds {
        let s = match run_seed(seed, args.ops, args.crash_every, args.circuit, args.uncut) {
            Ok(s) => s,
            Err(e) if args.expect_violation => {
                println!("violation found, as expected: {e:#}");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        println!(
            "seed {seed}: {} inputs: {}: ok, final state {}",
            args.ops,
            s.line(),
            optio_state::poseidon::hex(&s.state)
        );
        total.add(&s);
    }
    println!(
        "all {} seeds x {} inputs: no violation; {}",
        args.seeds,
        args.ops,
        total.line()
    );
    if args.expect_violation {
        bail!("a violation was expected (the canary build) and none was found");
    }
    Ok(())
}
