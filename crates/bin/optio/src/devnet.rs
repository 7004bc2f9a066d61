//! `optio devnet`: everything in one process. A sequencer with its write-ahead log, the gateway
//! on 127.0.0.1, a risk oracle fed by a simulated index (a seeded random walk) that publishes
//! signed updates every second, two simulated market makers quoting every listed instrument from
//! the oracle's marks, and a light taker flow. Funds a demo key and any `--fund` address.
//!
//! It settles on an L1 chain: by default an embedded one (`optio-chain`: revm behind the
//! Ethereum JSON-RPC on 127.0.0.1, a block per transaction and one every second, the contracts
//! deployed at start, the operator, demo and `--fund` addresses given ETH for gas); with
//! `--l1-rpc` and `--rollup`, the given chain (anvil, a testnet). Batches are posted and
//! finalized, and every participant is funded by a real L1 deposit (the operator mints test
//! USDC and deposits it for their accounts), so the vault always holds what the state owes. With `--no-l1` there is no chain
//! and the faucet credits accounts directly.
//!
//! On the embedded chain every batch is proven (unless `--no-prove`): batches are cut so that
//! the circuit shape of the keys holds each, a prover worker runs in the process (its threads in
//! the idle scheduling class), the settler submits the proofs, and the embedded rollup is deployed with
//! the verifier, so that a batch finalizes only once proven (intents go executed, committed,
//! proven, finalized). The keys are `--prove-keys DIR` (from `optio prove setup`), or else the
//! devnet's own for `Shape::DEVNET`, generated into `--keys-cache` at the first start that
//! finds none there and reused after.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use optio_gateway::{Config, Gateway};
use optio_oracle::{OracleSigner, SettlementFeed, build_update};
use optio_pricing::risk::default_scenarios;
use optio_pricing::svi::{Slice, Surface, Svi};
use optio_types::{
    AccountId, Amount, Command, InstrumentId, InstrumentSpec, MONEY_SCALE, Price, QTY_SCALE, Side,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `optio devnet` arguments.
#[derive(clap::Args, Debug)]
pub struct DevnetArgs {
    /// Address to serve the API on (loopback by default).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Data directory (a fresh temporary one if not given).
    #[arg(long)]
    pub data: Option<std::path::PathBuf>,
    /// Ethereum addresses to fund with 1,000,000 USDC each.
    #[arg(long)]
    pub fund: Vec<String>,
    /// Seed of the simulated index and flow.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Stop after this many seconds (runs until Ctrl-C if not given).
    #[arg(long)]
    pub duration_s: Option<u64>,
    /// Serve the API only: no oracle feed, market makers or takers.
    #[arg(long)]
    pub no_flow: bool,
    /// With `--no-flow`: the oracle feed still publishes marks every second (no market makers
    /// or takers).
    #[arg(long, requires = "no_flow")]
    pub oracle_feed: bool,
    /// Cut a settlement batch at most this long after its first op (ms; default 30,000 when
    /// proving, a proof taking seconds on a laptop; 2,000 otherwise).
    #[arg(long)]
    pub batch_age_ms: Option<u64>,
    /// Prove every batch with the keys in this directory (`optio prove setup --keys DIR`, one
    /// shape) instead of the devnet's own (`--keys-cache`).
    #[arg(long, conflicts_with_all = ["no_l1", "l1_rpc"])]
    pub prove_keys: Option<std::path::PathBuf>,
    /// Where the devnet keeps the keys of its circuit shape (`Shape::DEVNET`) when it proves
    /// without `--prove-keys`, generated at the first start that finds none of this circuit
    /// version there (default: `$XDG_CACHE_HOME/optio/keys`, or `~/.cache/optio/keys`).
    #[arg(long, env = "OPTIO_KEYS_CACHE")]
    pub keys_cache: Option<std::path::PathBuf>,
    /// Prove nothing: batches are cut every `--batch-age-ms` (2 s by default) and the embedded
    /// rollup, deployed without a verifier, finalizes each 60 s after its commitment. (With
    /// `--no-l1` or `--l1-rpc` nothing is proven either.)
    #[arg(long, conflicts_with = "prove_keys")]
    pub no_prove: bool,
    /// Snapshot the engine and views after this many inputs (0: never).
    #[arg(long, default_value_t = 100_000)]
    pub snapshot_every: u64,
    /// Start a new log segment at this many MiB; segments a snapshot covers, with every input
    /// in them batched, are deleted.
    #[arg(long, default_value_t = optio_sequencer::DEFAULT_SEGMENT_BYTES >> 20,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub log_segment_mb: u64,
    /// How far a nonce's date (its leading 13 digits, milliseconds) may be from the node's
    /// clock; nonces are remembered only that long.
    #[arg(long, default_value_t = optio_gateway::DEFAULT_NONCE_WINDOW_MS / 1_000,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub nonce_window_s: u64,
    /// A checkpoint of the settlement state every this many batches; the files of the batches
    /// L1 has finalized up to the newest one are deleted (0: keep every batch's files).
    #[arg(long, default_value_t = optio_gateway::DEFAULT_CHECKPOINT_EVERY_BATCHES)]
    pub checkpoint_batches: u64,
    /// Post batches to this Ethereum JSON-RPC endpoint (with --rollup and OPTIO_L1_KEY) instead
    /// of a local chain.
    #[arg(long, requires = "rollup", conflicts_with = "no_l1")]
    pub l1_rpc: Option<String>,
    /// No L1 chain at all: the faucet credits accounts directly and batches stay on disk.
    #[arg(long)]
    pub no_l1: bool,
    /// The rollup contract the batches go to.
    #[arg(long, requires = "l1_rpc")]
    pub rollup: Option<String>,
    /// The operator's L1 key (hex), the rollup's `operator`.
    #[arg(long, env = "OPTIO_L1_KEY", hide_env_values = true)]
    pub l1_key: Option<String>,
    /// Blocks an L1 deposit or forced withdrawal must be deep before it is sequenced (a
    /// devnet chain does not reorg).
    #[arg(long, default_value_t = 0)]
    pub l1_confirmations: u64,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];

/// Civil date of a day count since 1970-01-01 (H. Hinnant).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Day `day` (since 1970-01-01) as a Deribit date code, e.g. `27DEC24`.
pub(crate) fn date_code(day: i64) -> String {
    let (y, m, d) = civil(day);
    format!("{d}{}{:02}", MONTHS[(m - 1) as usize], y % 100)
}

/// The next two Fridays (at least a day away), as Deribit date codes.
fn expiries(now_ms: u64) -> Vec<String> {
    let today = (now_ms / 86_400_000) as i64;
    // 1970-01-01 was a Thursday: Friday is day % 7 == 1.
    let mut out = Vec::new();
    let mut day = today + 2;
    while out.len() < 2 {
        if day.rem_euclid(7) == 1 {
            out.push(date_code(day));
        }
        day += 1;
    }
    out
}

struct Market {
    underlying: &'static str,
    spot: f64,
    cap: i64,
    strike_step: f64,
}

fn specs(now_ms: u64) -> Vec<InstrumentSpec> {
    let markets = [
        Market {
            underlying: "BTC",
            spot: 90_000.0,
            cap: 400_000,
            strike_step: 5_000.0,
        },
        Market {
            underlying: "ETH",
            spot: 3_000.0,
            cap: 15_000,
            strike_step: 100.0,
        },
    ];
    let mut out = Vec::new();
    for m in &markets {
        let perp = InstrumentSpec::with_defaults(
            format!("{}-PERPETUAL", m.underlying)
                .parse()
                .expect("valid"),
            Price(m.cap * MONEY_SCALE),
        );
        out.push(perp);
        for date in expiries(now_ms) {
            for k in -3..=3 {
                let strike = ((m.spot + f64::from(k) * m.strike_step) / m.strike_step).round()
                    * m.strike_step;
                for right in ["C", "P"] {
                    let name = format!("{}-{date}-{}-{right}", m.underlying, strike as i64);
                    out.push(InstrumentSpec::with_defaults(
                        name.parse().expect("valid"),
                        Price(m.cap * MONEY_SCALE),
                    ));
                }
            }
        }
    }
    out
}

pub(crate) fn surface(spot: f64) -> Surface {
    let svi = Svi {
        a: 0.0008,
        b: 0.02,
        rho: -0.25,
        m: 0.0,
        sigma: 0.15,
    };
    Surface::new(
        spot,
        0.0,
        vec![
            Slice { t: 0.02, svi },
            Slice {
                t: 0.2,
                svi: Svi {
                    a: 0.008,
                    b: 0.06,
                    ..svi
                },
            },
        ],
    )
    .expect("a fixed arbitrage-free surface")
}

fn tick(p: i64, tick: i64) -> i64 {
    (p - p % tick).max(tick)
}

/// The local chain's operator key (anvil's first default key: a well-known test key, never for
/// real funds).
const LOCAL_OPERATOR_KEY: &str =
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// Starts the embedded L1 chain (`optio-chain`: revm behind the Ethereum JSON-RPC, a block per
/// transaction and an empty one every second), funds the operator and `users` with 100 ETH at
/// genesis, and deploys the contracts for an empty state (finalization after 60 s, priority
/// deadline 1 h, marks judged against the oracle at `oracle`); returns the chain and the
/// rollup's address.
async fn local_chain_up(
    users: &[[u8; 20]],
    keys: Option<&optio_prover::Keys>,
    oracle: [u8; 20],
) -> Result<(optio_chain::Chain, String)> {
    use optio_settler::U256;
    let operator = optio_settler::signer_address(LOCAL_OPERATOR_KEY).map_err(anyhow::Error::msg)?;
    let ether = U256::from(100u64) * U256::from(10u64).pow(U256::from(18u64));
    let funded: Vec<(optio_settler::Address, U256)> = std::iter::once(operator)
        .chain(users.iter().map(|u| optio_settler::Address::from(*u)))
        .map(|a| (a, ether))
        .collect();
    let chain = optio_chain::Chain::start(31_337, &funded, Duration::from_secs(1))
        .await
        .context("starting the embedded L1 chain")?;
    optio_contracts::forge_build().map_err(|e| {
        anyhow::anyhow!(
            "building the contracts: {e} (run `npm ci --prefix contracts`, or start with --no-l1)"
        )
    })?;
    let provider = optio_settler::connect(&chain.url, LOCAL_OPERATOR_KEY)?;
    let genesis = U256::from_be_bytes(optio_state::poseidon::to_bytes(
        &optio_state::SettlementState::new().root(),
    ));
    let verifier = match keys {
        Some(k) => {
            let vk = optio_prover::solidity::verifying_key(&k.vk);
            let words: [U256; 30] = std::array::from_fn(|i| U256::from_be_bytes(vk[i]));
            optio_settler::deploy_verifier(&provider, words)
                .await
                .context("deploying the batch-proof verifier")?
        }
        None => optio_settler::Address::ZERO,
    };
    let d = optio_settler::deploy(
        &provider,
        operator,
        genesis,
        &optio_settler::RollupConfig {
            verifier,
            // Every fill's orders are signed (its makers' and taker's too) and posted with its
            // batch, and judged on L1; so is every mark, against the devnet's oracle.
            authorizations: true,
            oracle: optio_settler::Address::from(oracle),
            ..optio_settler::RollupConfig::new(60, 3_600)
        },
    )
    .await
    .context("deploying the contracts on the embedded chain")?;
    println!(
        "  L1 chain  {} (embedded EVM, chain id 31337, a block per transaction and one a second): rollup {} usdc {}",
        chain.url, d.rollup, d.usdc
    );
    Ok((chain, d.rollup.to_string()))
}

/// How the devnet funds its participants: the faucet credits directly; on an L1 every account
/// is funded by a deposit the operator makes on chain for it, sequenced like any user's.
enum Funder {
    Faucet(Arc<Gateway>),
    L1 {
        gateway: Arc<Gateway>,
        provider: optio_settler::DynProvider,
        rollup: optio_settler::Address,
        usdc: optio_settler::Address,
        operator: optio_settler::Address,
        /// Deposits queued so far (the queue id after the last one).
        last_queued: std::sync::atomic::AtomicU64,
    },
}

impl Funder {
    async fn l1(
        gateway: Arc<Gateway>,
        rpc: &str,
        key: &str,
        rollup: optio_settler::Address,
    ) -> Result<Self> {
        use optio_settler::{OptioRollup, TestUSDC, transact};
        let provider = optio_settler::connect(rpc, key)?;
        let operator = optio_settler::signer_address(key).map_err(anyhow::Error::msg)?;
        let usdc = OptioRollup::new(rollup, &provider)
            .usdc()
            .call()
            .await
            .context("reading the rollup's USDC")?;
        transact(TestUSDC::new(usdc, &provider).approve(rollup, optio_settler::U256::MAX)).await?;
        Ok(Funder::L1 {
            gateway,
            provider,
            rollup,
            usdc,
            operator,
            last_queued: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Opens an account for `owner` holding `amount`; returns its id.
    async fn fund(&self, owner: [u8; 20], amount: Amount) -> Result<u64> {
        use optio_settler::{OptioRollup, TestUSDC, U256, transact};
        let (gateway, provider, rollup, usdc, operator) = match self {
            Funder::Faucet(gateway) => return Ok(gateway.fund(owner, amount)?),
            Funder::L1 {
                gateway,
                provider,
                rollup,
                usdc,
                operator,
                ..
            } => (gateway, provider, *rollup, *usdc, *operator),
        };
        let id = gateway.account_count() as u32;
        let opened = gateway.submit_admin(vec![Command::OpenAccount {
            owner: optio_types::Address(owner),
        }])?;
        anyhow::ensure!(
            opened.iter().all(Result::is_ok),
            "opening an account: {opened:?}"
        );
        let units = U256::from(amount.0 as u64);
        transact(TestUSDC::new(usdc, provider).mint(operator, units)).await?;
        let receipt = transact(OptioRollup::new(rollup, provider).deposit(id, units)).await?;
        let queued = receipt
            .decoded_log::<OptioRollup::Deposit>()
            .context("the deposit's event")?
            .priorityId;
        let queued = u64::try_from(queued).context("priority id")?;
        if let Funder::L1 { last_queued, .. } = self {
            last_queued.store(queued + 1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(u64::from(id))
    }

    /// Waits until the node has sequenced every deposit made so far (the settler must be
    /// running: it feeds them).
    async fn settled(&self) -> Result<()> {
        let Funder::L1 {
            gateway,
            last_queued,
            ..
        } = self
        else {
            return Ok(());
        };
        let want = last_queued.load(std::sync::atomic::Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while gateway.priority_served() < want {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the devnet's L1 deposits were not sequenced within a minute"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// The devnet's keys cache when `--keys-cache` is not given: `$XDG_CACHE_HOME/optio/keys`, or
/// `$HOME/.cache/optio/keys`.
fn default_keys_cache() -> Option<std::path::PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| std::path::PathBuf::from(h).join(".cache"))
        })?;
    Some(cache.join("optio").join("keys"))
}

/// Moves the calling thread to the idle scheduling class (Linux's `SCHED_IDLE`: a thread of
/// any other class that wakes takes its core at once, where niceness 19 only lowers its
/// share), or, where that is refused or not Linux, to the lowest priority of its class
/// (niceness 19 on Unix); a platform that refuses both leaves it as it was.
fn lowest_priority() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
            set_thread_priority_and_policy, thread_native_id,
        };
        if set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Min,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
        )
        .is_ok()
        {
            return;
        }
    }
    let _ = thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min);
}

/// Runs the devnet until Ctrl-C or the duration ends.
pub fn run(args: DevnetArgs) -> Result<()> {
    // Warnings (an L1 round that failed, a batcher that stopped) on stderr; RUST_LOG for more.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(devnet(args))
}

async fn devnet(args: DevnetArgs) -> Result<()> {
    let temp = tempfile::tempdir().context("temporary data directory")?;
    let dir = args.data.clone().unwrap_or_else(|| temp.path().to_owned());
    let oracle = OracleSigner::from_bytes([0x0c; 32]).context("oracle key")?;
    // The shape (named by the key files) is checked, and the data directory against it, before
    // keys that may take gigabytes are read or a minute to generate.
    let bad_keys = |e| anyhow::anyhow!("--prove-keys: {e}");
    let shape = match &args.prove_keys {
        None if args.no_prove || args.no_l1 || args.l1_rpc.is_some() => None,
        None => Some(optio_prover::Shape::DEVNET),
        Some(keys) => {
            let shape = optio_prover::Keys::shape_in(keys).map_err(bad_keys)?;
            shape
                .check()
                .map_err(|e| anyhow::anyhow!("--prove-keys: shape_unusable: {e}"))?;
            optio_prover::Keys::check_version(keys, shape).map_err(bad_keys)?;
            Some(shape)
        }
    };
    crate::prove::check_prove_shape(&dir, shape)?;
    // Where the keys are: the operator's, or the cache the devnet makes them in.
    let keys_dir = match (&args.prove_keys, shape) {
        (_, None) => None,
        (Some(keys), Some(_)) => Some(keys.clone()),
        (None, Some(_)) => Some(
            args.keys_cache
                .clone()
                .or_else(default_keys_cache)
                .unwrap_or_else(|| dir.join("keys")),
        ),
    };
    let keys = match (&args.prove_keys, shape, &keys_dir) {
        (Some(keys), Some(shape), _) => {
            Some(optio_prover::Keys::read(keys, shape).map_err(bad_keys)?)
        }
        (None, Some(shape), Some(cache)) => {
            Some(crate::prove::cached_keys(cache, shape, |line| {
                println!("optio devnet: {line}")
            })?)
        }
        _ => None,
    }
    .map(Arc::new);
    let capacity = keys.as_ref().map(|k| crate::prove::capacity(k.shape));
    let demo_key = secp256k1::SecretKey::from_secret_bytes([0xde; 32]).context("demo key")?;
    let demo_address = optio_intents::address_of(&secp256k1::PublicKey::from_secret_key(&demo_key));
    let fund: Vec<(&String, [u8; 20])> = args
        .fund
        .iter()
        .map(|a| {
            optio_intents::parse_address(a)
                .map(|address| (a, address))
                .with_context(|| format!("--fund {a}: not a 0x address"))
        })
        .collect::<Result<_>>()?;
    // The local chain lives as long as the devnet.
    let mut local_chain = None;
    let chain = match (&args.l1_rpc, &args.rollup, args.no_l1) {
        (Some(rpc), Some(rollup), _) => Some((
            rpc.clone(),
            rollup.clone(),
            args.l1_key
                .clone()
                .context("--l1-rpc needs the operator key in OPTIO_L1_KEY")?,
        )),
        (_, _, false) => {
            let users: Vec<[u8; 20]> = std::iter::once(demo_address)
                .chain(fund.iter().map(|(_, address)| *address))
                .collect();
            let oracle = optio_intents::address_of(&oracle.public_key());
            let (chain, rollup) = local_chain_up(&users, keys.as_deref(), oracle).await?;
            let rpc = chain.url.clone();
            local_chain = Some(chain);
            Some((rpc, rollup, LOCAL_OPERATOR_KEY.to_owned()))
        }
        _ => None,
    };
    // Orders and the oracle's marks are signed for the rollup (Optio's domain names its chain
    // and address); without an L1, for the default placeholder.
    let domain = match &chain {
        Some((rpc, rollup, _)) => Some((
            optio_settler::chain_id(&crate::settle::alloy_reader(rpc)?)
                .await
                .context("the L1's chain id")?,
            optio_intents::parse_address(rollup).context("--rollup: not a 0x address")?,
        )),
        None => None,
    };
    let defaults = Config::default();
    let (chain_id, verifying_contract) =
        domain.unwrap_or((defaults.chain_id, defaults.verifying_contract));
    let config = Config {
        chain_id,
        verifying_contract,
        oracle_key: Some(oracle.public_key()),
        batch_max_age_ms: args
            .batch_age_ms
            .unwrap_or(if keys.is_some() { 30_000 } else { 2_000 }),
        batch_capacity: capacity,
        snapshot_every: args.snapshot_every,
        log_segment_bytes: args.log_segment_mb << 20,
        nonce_window_ms: args.nonce_window_s * 1_000,
        checkpoint_every_batches: args.checkpoint_batches,
        ..Config::default()
    };
    let gateway = Arc::new(
        Gateway::open(
            &dir,
            [0x5e; 32],
            crate::prove::limits(keys.as_ref().map(|k| k.shape)),
            config,
        )
        .map_err(crate::node::start_refused)?,
    );
    let now = optio_gateway::now_ms();
    let specs = specs(now);
    let fresh = optio_gateway::instrument_of(&gateway, &specs[0].name.to_string()).is_none();
    if fresh {
        let mut admin: Vec<Command> = specs
            .iter()
            .map(|spec| Command::ListInstrument { spec: spec.clone() })
            .collect();
        admin.extend(
            (0..specs.len() as u32).map(|i| Command::ActivateInstrument {
                instrument: InstrumentId(i),
            }),
        );
        gateway.submit_admin(admin).context("listing instruments")?;
    }
    let ids: Vec<InstrumentId> = specs
        .iter()
        .filter_map(|s| optio_gateway::instrument_of(&gateway, &s.name.to_string()))
        .collect();
    // Everyone is funded before the settler starts: both send from the operator key, and
    // two senders of one key race for its nonces.
    let funder = match &chain {
        Some((rpc, rollup, key)) => {
            let rollup = rollup.parse().context("rollup address")?;
            Funder::l1(gateway.clone(), rpc, key, rollup).await?
        }
        None => Funder::Faucet(gateway.clone()),
    };
    // On an L1, the operator's backstop first: the first account opened for its address, which
    // L1 records and forced closes move positions to (docs/settlement.md, "Forced close"). It
    // is margined (a fully collateralized one could be forced below full collateral).
    if let Funder::L1 { operator, .. } = &funder
        && fresh
    {
        let backstop = funder
            .fund(operator.into_array(), Amount(100_000_000 * MONEY_SCALE))
            .await?;
        // Its mode is the operator's signed change, as any owner's (L1 judges each).
        let key = chain
            .as_ref()
            .map(|(_, _, key)| key.as_str())
            .unwrap_or_default();
        let key = crate::settle::secret_key(key).context("the operator's key")?;
        gateway
            .change_as_owner(
                &key,
                AccountId(backstop as u32),
                optio_gateway::client::Change::MarginMode(optio_types::MarginMode::Standard),
            )
            .map_err(|e| anyhow::anyhow!("the backstop's margin: {e:?}"))?;
        println!(
            "  backstop  account {backstop} (the operator's: forced closes move positions to it)"
        );
    }
    // Simulated participants: two market makers and a taker, fully collateralized, each with
    // its own key: they sign every order as any client does, so that every fill's orders are
    // posted with its batch and judged on L1.
    let mut makers = Vec::new();
    for (seed, amount) in [(0xa1, 2_000_000_000), (0xa2, 2_000_000_000)] {
        let mut maker = Participant::new(seed)?;
        maker.account = funder
            .fund(maker.address, Amount(amount * MONEY_SCALE))
            .await?;
        makers.push(maker);
    }
    let mut taker = Participant::new(0xb1)?;
    taker.account = funder
        .fund(taker.address, Amount(50_000_000 * MONEY_SCALE))
        .await?;
    let demo = funder
        .fund(demo_address, Amount(1_000_000 * MONEY_SCALE))
        .await?;
    let mut funded = Vec::new();
    for (a, address) in &fund {
        funded.push((
            (*a).clone(),
            funder
                .fund(*address, Amount(1_000_000 * MONEY_SCALE))
                .await?,
        ));
    }
    let l1 = match chain {
        Some((rpc, rollup, key)) => {
            let rollup = crate::settle::spawn_settler(
                gateway.clone(),
                &rpc,
                &rollup,
                &key,
                &dir.join("batches"),
                args.l1_confirmations,
            )?;
            Some((rpc, key, rollup))
        }
        None => None,
    };
    funder.settled().await?;
    if let Some(keys) = keys.clone() {
        let batches = dir.join("batches");
        // The prover's threads run in the idle class, so that the exchange's come first
        // (what proving still costs the order path: `optio-bench devnet`). The thread below
        // only waits for the pool, which runs the work.
        let pool = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("optio-prover-{i}"))
            .start_handler(|_| lowest_priority())
            .build()
            .context("starting the prover's threads")?;
        std::thread::Builder::new()
            .name("optio-prover".into())
            .spawn(move || {
                let worked = pool.install(|| {
                    crate::prove::work(
                        &batches,
                        &keys,
                        Duration::from_secs(600),
                        false,
                        "  prover: ",
                    )
                });
                if let Err(e) = worked {
                    eprintln!("prover stopped: {e}");
                }
            })
            .context("starting the prover")?;
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("optio devnet");
    println!("  JSON-RPC  http://{addr}/api/v2");
    println!("  health    http://{addr}/health    metrics http://{addr}/metrics");
    println!(
        "  data      {}  (engine rules {})",
        dir.display(),
        optio_engine::RULES
    );
    println!(
        "  batches   {} (optio rebuild --batches ...)",
        dir.join("batches").display()
    );
    println!(
        "  demo key  0x{}  address 0x{}  subaccount {demo}",
        demo_key
            .to_secret_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        demo_address
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    for (a, id) in &funded {
        println!("  funded    {a} subaccount {id}");
    }
    println!(
        "  instruments: {} (BTC and ETH perpetuals and two weekly option chains)",
        ids.len()
    );
    let api = gateway.clone();
    tokio::spawn(async move {
        if let Err(e) = optio_gateway::serve(listener, api).await {
            eprintln!("api server stopped: {e}");
        }
    });
    if let Some((rpc, _, rollup)) = &l1 {
        println!(
            "  L1        {rpc} rollup {rollup}: batches posted as they are cut; deposits, forced withdrawals and forced closes sequenced {} blocks deep",
            args.l1_confirmations
        );
        // The watchtower's command: the deployment's code, the verifier's key, every batch.
        let vk = keys_dir
            .as_ref()
            .map(|d| format!(" --vk {}", d.display()))
            .unwrap_or_default();
        println!("  audit     optio verify --rpc {rpc} --rollup {rollup}{vk}");
    }
    if let Some(k) = &keys {
        println!(
            "  prover    circuit {}: batches cut to fit it, proven in this process, proofs verified on L1; a batch finalizes 60 s after its proof",
            k.shape.name()
        );
    }

    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut spots = [90_000.0f64, 3_000.0];
    // Each underlying's settlement prices, from the index the oracle publishes.
    let window = optio_types::RiskConfig::default().settlement_window_ms;
    let mut feeds = [SettlementFeed::new(window), SettlementFeed::new(window)];
    let deadline = args
        .duration_s
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut second = tokio::time::interval(Duration::from_secs(1));
    let mut rounds = 0u64;
    loop {
        tokio::select! {
            _ = second.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
        rounds += 1;
        if args.no_flow && !args.oracle_feed {
            continue;
        }
        let now = optio_gateway::now_ms();
        // Each instrument's new mark, for the quotes.
        let mut marks: Vec<(InstrumentId, &InstrumentSpec, i64)> = Vec::new();
        for (u, underlying) in ["BTC", "ETH"].iter().enumerate() {
            spots[u] *= 1.0 + rng.random_range(-0.002..0.002);
            let list: Vec<(InstrumentId, &InstrumentSpec)> = ids
                .iter()
                .zip(&specs)
                .filter(|(_, s)| s.name.underlying == *underlying)
                .map(|(i, s)| (*i, s))
                .collect();
            let mut update = build_update(
                underlying,
                &surface(spots[u]),
                &default_scenarios(),
                &list,
                now,
            )
            .context("oracle update")?;
            feeds[u].attach(&mut update, &list);
            // The gateway sequences oracle updates only with the oracle's signature (and that
            // of each mark and settlement price).
            let signed = oracle.sign(update, &gateway.optio_domain());
            match gateway.submit_oracle(&signed) {
                Ok(()) => feeds[u].taken(&signed.update),
                Err(e) => eprintln!("oracle update refused: {e:?}"),
            }
            if args.no_flow {
                continue;
            }
            for (id, spec) in &list {
                let Some(mark) = signed
                    .update
                    .marks
                    .iter()
                    .find(|m| m.instrument == *id)
                    .map(|m| m.mark.0)
                else {
                    continue;
                };
                marks.push((*id, *spec, mark));
            }
        }
        if args.no_flow {
            continue;
        }
        // Each maker pulls its quotes and quotes every instrument again around its new mark
        // (a signed post-only order a side); pulled first, a new quote never meets another
        // maker's stale one. Then, every other second, the taker crosses one book (a signed
        // limit order at 10% through the mark, immediate or cancel). All the orders go in
        // together, sharing the writer's group commits.
        for maker in &makers {
            maker.cancel_all(&gateway, now)?;
        }
        let mut orders = Vec::new();
        for (id, spec, mark) in &marks {
            let t = spec.tick_size.0;
            let size = QTY_SCALE / if spec.name.underlying == "BTC" { 10 } else { 1 };
            for (n, maker) in makers.iter_mut().enumerate() {
                let width = 150 + 100 * n as i64;
                let bid = tick(mark * (10_000 - width) / 10_000, t);
                let ask = tick(mark * (10_000 + width) / 10_000 + t, t).max(bid + t);
                for (side, price) in [(Side::Buy, bid), (Side::Sell, ask)] {
                    orders.push(maker.order(
                        (chain_id, verifying_contract),
                        *id,
                        spec,
                        side,
                        price,
                        size,
                        "post_only",
                        now,
                    ));
                }
            }
        }
        if rounds.is_multiple_of(2) && !marks.is_empty() {
            let (id, spec, mark) = marks[rng.random_range(0..marks.len())];
            let side = if rng.random_bool(0.5) {
                Side::Buy
            } else {
                Side::Sell
            };
            let t = spec.tick_size.0;
            let limit = match side {
                Side::Buy => tick(mark * 11 / 10, t) + t,
                Side::Sell => tick(mark * 9 / 10, t),
            };
            let qty = spec.amount_step.0 * rng.random_range(1..=5);
            orders.push(taker.order(
                (chain_id, verifying_contract),
                id,
                spec,
                side,
                limit,
                qty,
                "ioc",
                now,
            ));
        }
        let results = gateway.place_signed_orders(&orders).await;
        let refused = results.iter().filter(|r| r.is_err()).count();
        if rounds % 10 == 1 {
            println!(
                "[{rounds:>4}s] BTC {:.2} ETH {:.2}  inputs {} ({} refused)",
                spots[0],
                spots[1],
                results.len(),
                refused,
            );
        }
    }
    println!("devnet stopped after {rounds} s");
    // The local chain stops with the devnet.
    drop(local_chain);
    Ok(())
}

/// A simulated participant: its key, the address it owns its subaccount by, the subaccount, and
/// its last nonce. It signs its orders under Optio's domain as any client does, and pulls its
/// quotes with the owner's header authentication.
struct Participant {
    key: secp256k1::SecretKey,
    address: [u8; 20],
    account: u64,
    nonce: u64,
}

impl Participant {
    /// The participant whose key is 32 bytes of `seed`.
    fn new(seed: u8) -> Result<Self> {
        let key =
            secp256k1::SecretKey::from_secret_bytes([seed; 32]).context("a participant's key")?;
        Ok(Self {
            address: optio_intents::address_of(&secp256k1::PublicKey::from_secret_key(&key)),
            key,
            account: 0,
            nonce: 0,
        })
    }

    /// A signed order's `private/order` params: `qty` (1e-8 contracts) of `instrument` at limit
    /// `price` (micro-USDC), its fee capped at 1,000 USDC, its signature good for an hour from
    /// `now_ms`. The nonce is dated at that time (`optio_gateway::next_nonce`), or one past the
    /// last (unique across restarts).
    #[allow(clippy::too_many_arguments)]
    fn order(
        &mut self,
        (chain_id, contract): (u64, [u8; 20]),
        instrument: InstrumentId,
        spec: &InstrumentSpec,
        side: Side,
        price: i64,
        qty: i64,
        time_in_force: &str,
        now_ms: u64,
    ) -> serde_json::Value {
        self.nonce = optio_gateway::next_nonce(self.nonce, now_ms);
        let decimal =
            |v: i64, scale: i64, digits: usize| format!("{}.{:0digits$}", v / scale, v % scale);
        let request = optio_gateway::client::OrderRequest {
            subaccount: self.account,
            instrument_id: instrument.0,
            instrument_name: &spec.name.to_string(),
            direction: match side {
                Side::Buy => "buy",
                Side::Sell => "sell",
            },
            price: &decimal(price, MONEY_SCALE, 6),
            amount: &decimal(qty, QTY_SCALE, 8),
            max_fee: "1000",
            nonce: self.nonce,
            expiry: now_ms / 1_000 + 3_600,
            time_in_force,
        };
        optio_gateway::client::order_params(&self.key, chain_id, contract, &request)
            .unwrap_or_default()
    }

    /// Pulls all its resting orders (`private/cancel_all`, header-authenticated).
    fn cancel_all(&self, gateway: &Gateway, now_ms: u64) -> Result<()> {
        let mut headers = axum::http::HeaderMap::new();
        for (name, value) in optio_gateway::client::auth_headers(&self.key, now_ms) {
            headers.insert(name, value.parse().context("a header")?);
        }
        gateway
            .call(
                "private/cancel_all",
                &serde_json::json!({ "subaccount_id": self.account }),
                &headers,
            )
            .map_err(|e| anyhow::anyhow!("pulling a maker's quotes: {e:?}"))?;
        Ok(())
    }
}
