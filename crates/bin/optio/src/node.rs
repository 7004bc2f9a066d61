//! `optio node --config optio.toml`: a configured deployment of the node (sequencer, gateway,
//! API) without the devnet's simulated participants. Settings come from, in rising precedence,
//! defaults, the TOML file, `OPTIO_*` environment variables, and flags. On a fresh data
//! directory the instruments in the file are listed and activated.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! data = "/var/lib/optio"
//! chain_id = 1
//! verifying_contract = "0x…"        # Optio's settlement contract
//! compat_domain = "off"              # "off", "mainnet" or "sandbox" (ccxt's Derive domain)
//! oracle_public_key = "0x02…"        # compressed secp256k1 key of the risk oracle
//! sequencer_key = "0x…"              # better: OPTIO_SEQUENCER_KEY in the environment
//! ip_requests_per_second = 100000
//! owner_orders_per_second = 50000
//! snapshot_every = 100000        # inputs between snapshots (0: never)
//! log_segment_mb = 64            # the log's segment size; segments a snapshot covers, with
//!                                # every input in them batched, are deleted
//! nonce_window_s = 600           # how far a nonce's date (its leading 13 digits, ms) may be
//!                                # from the clock; nonces are remembered only that long
//! checkpoint_batches = 1024      # a checkpoint of the settlement state every this many
//!                                # batches; the files of the batches L1 has finalized up to
//!                                # the newest one are deleted (0: keep every batch's files)
//! l1_rpc = "http://127.0.0.1:8545"   # post batches to this chain (operator key: OPTIO_L1_KEY)
//! rollup = "0x…"                     # the OptioRollup contract
//! prove_keys = "/var/lib/optio-keys" # cut batches to fit this circuit (`optio prove setup`);
//!                                    # prove them with `optio prove run` workers
//!
//! [[instrument]]
//! name = "BTC-PERPETUAL"
//! underlying_cap = "400000"
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use optio_gateway::{Config, Gateway};
use optio_types::{Command, InstrumentId, InstrumentSpec, Price};
use serde::Deserialize;

/// `optio node` arguments; each also reads `OPTIO_<NAME>` from the environment.
#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// TOML configuration file.
    #[arg(long, env = "OPTIO_CONFIG")]
    pub config: Option<PathBuf>,
    /// API address (overrides the file).
    #[arg(long, env = "OPTIO_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Data directory (overrides the file).
    #[arg(long, env = "OPTIO_DATA")]
    pub data: Option<PathBuf>,
    /// Sequencer secret key, hex (overrides the file; prefer the environment).
    #[arg(long, env = "OPTIO_SEQUENCER_KEY", hide_env_values = true)]
    pub sequencer_key: Option<String>,
    /// Ethereum JSON-RPC endpoint to post batches to (overrides the file; with a rollup).
    #[arg(long, env = "OPTIO_L1_RPC")]
    pub l1_rpc: Option<String>,
    /// The rollup contract (overrides the file).
    #[arg(long, env = "OPTIO_ROLLUP")]
    pub rollup: Option<String>,
    /// The operator's L1 key, hex (environment only in practice).
    #[arg(long, env = "OPTIO_L1_KEY", hide_env_values = true)]
    pub l1_key: Option<String>,
    /// Blocks an L1 deposit or forced withdrawal must be deep before it is sequenced
    /// (overrides the file; default 2).
    #[arg(long, env = "OPTIO_L1_CONFIRMATIONS")]
    pub l1_confirmations: Option<u64>,
    /// Cut batches so that the circuit of the keys in this directory (`optio prove setup`)
    /// holds each, for `optio prove run` workers to prove (overrides the file).
    #[arg(long, env = "OPTIO_PROVE_KEYS")]
    pub prove_keys: Option<PathBuf>,
    /// Stop after this many seconds (tests).
    #[arg(long)]
    pub duration_s: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data: Option<PathBuf>,
    chain_id: Option<u64>,
    verifying_contract: Option<String>,
    compat_domain: Option<String>,
    oracle_public_key: Option<String>,
    sequencer_key: Option<String>,
    ip_requests_per_second: Option<u64>,
    owner_orders_per_second: Option<u64>,
    snapshot_every: Option<u64>,
    log_segment_mb: Option<u64>,
    nonce_window_s: Option<u64>,
    checkpoint_batches: Option<u64>,
    l1_rpc: Option<String>,
    rollup: Option<String>,
    l1_confirmations: Option<u64>,
    prove_keys: Option<PathBuf>,
    #[serde(default)]
    instrument: Vec<InstrumentEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstrumentEntry {
    name: String,
    underlying_cap: String,
}

fn hex32(text: &str, what: &str) -> Result<[u8; 32]> {
    optio_intents::parse_hex(text)
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{what} must be 32 bytes of 0x hex"))
}

/// Runs the node until Ctrl-C (or the duration ends).
pub fn run(args: NodeArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let file: FileConfig = match &args.config {
        Some(path) => toml::from_str(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("parsing {}", path.display()))?,
        None => FileConfig::default(),
    };
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let data = args
        .data
        .clone()
        .or(file.data.clone())
        .context("a data directory is required (--data, OPTIO_DATA or `data` in the file)")?;
    let key = args
        .sequencer_key
        .clone()
        .or(file.sequencer_key.clone())
        .context("a sequencer key is required (OPTIO_SEQUENCER_KEY)")?;
    let mut config = Config::default();
    if let Some(id) = file.chain_id {
        config.chain_id = id;
    }
    if let Some(c) = &file.verifying_contract {
        config.verifying_contract =
            optio_intents::parse_address(c).context("verifying_contract must be a 0x address")?;
    }
    config.compat_domain = match file.compat_domain.as_deref().unwrap_or("mainnet") {
        "off" => None,
        "mainnet" => Some(false),
        "sandbox" => Some(true),
        other => bail!("compat_domain must be off, mainnet or sandbox, not {other}"),
    };
    if let Some(k) = &file.oracle_public_key {
        let bytes = optio_intents::parse_hex(k).context("oracle_public_key must be hex")?;
        config.oracle_key = Some(
            secp256k1::PublicKey::from_slice(&bytes)
                .context("oracle_public_key is not a secp256k1 public key")?,
        );
    }
    if let Some(r) = file.ip_requests_per_second {
        config.ip_requests_per_second = r;
    }
    if let Some(n) = file.snapshot_every {
        config.snapshot_every = n;
    }
    if let Some(mb) = file.log_segment_mb {
        if mb == 0 {
            bail!("log_segment_mb must be at least 1");
        }
        config.log_segment_bytes = mb << 20;
    }
    if let Some(window) = file.nonce_window_s {
        if window == 0 || window > 86_400 {
            bail!("nonce_window_s must be 1 to 86400");
        }
        config.nonce_window_ms = window * 1_000;
    }
    if let Some(n) = file.checkpoint_batches {
        config.checkpoint_every_batches = n;
    }
    if let Some(r) = file.owner_orders_per_second {
        config.owner_orders_per_second = r;
    }
    let mut shape = None;
    if let Some(dir) = args.prove_keys.clone().or(file.prove_keys.clone()) {
        let s =
            optio_prover::Keys::shape_in(&dir).map_err(|e| anyhow::anyhow!("prove_keys: {e}"))?;
        s.check()
            .map_err(|e| anyhow::anyhow!("prove_keys: shape_unusable: {e}"))?;
        optio_prover::Keys::check_version(&dir, s)
            .map_err(|e| anyhow::anyhow!("prove_keys: {e}"))?;
        tracing::info!(shape = %s.name(), "batches cut to fit the circuit");
        config.batch_capacity = Some(crate::prove::capacity(s));
        shape = Some(s);
    }
    crate::prove::check_prove_shape(&data, shape)?;
    // A rollup that judges fills by their signatures: refuse what it could not justify.
    if let (Some(rpc), Some(rollup)) = (
        args.l1_rpc.clone().or(file.l1_rpc.clone()),
        args.rollup.clone().or(file.rollup.clone()),
    ) {
        config.signed_terms_only = crate::settle::judges_signatures(&rpc, &rollup)?;
    }
    let specs = file
        .instrument
        .iter()
        .map(|i| {
            let name = i
                .name
                .parse()
                .with_context(|| format!("instrument {}", i.name))?;
            let cap: Price = i
                .underlying_cap
                .parse()
                .with_context(|| format!("underlying_cap of {}", i.name))?;
            let spec = InstrumentSpec::with_defaults(name, cap);
            spec.validate()
                .map_err(|e| anyhow::anyhow!("instrument {}: {e}", i.name))?;
            Ok(spec)
        })
        .collect::<Result<Vec<_>>>()?;
    let gateway = Arc::new(
        Gateway::open(
            &data,
            hex32(&key, "sequencer_key")?,
            crate::prove::limits(shape),
            config,
        )
        .map_err(crate::node::start_refused)?,
    );
    let fresh = specs
        .first()
        .is_some_and(|s| optio_gateway::instrument_of(&gateway, &s.name.to_string()).is_none());
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
        tracing::info!(count = specs.len(), "listed configured instruments");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, data = %data.display(), rules = optio_engine::RULES, "optio node serving");
        println!("optio node on http://{addr}/api/v2");
        let l1 = (
            args.l1_rpc.clone().or(file.l1_rpc.clone()),
            args.rollup.clone().or(file.rollup.clone()),
        );
        if let (Some(rpc), Some(rollup)) = l1 {
            let key = args
                .l1_key
                .clone()
                .context("posting to L1 needs the operator key in OPTIO_L1_KEY")?;
            let confirmations = args.l1_confirmations.or(file.l1_confirmations).unwrap_or(2);
            let rollup = crate::settle::spawn_settler(
                gateway.clone(),
                &rpc,
                &rollup,
                &key,
                &data.join("batches"),
                confirmations,
            )?;
            tracing::info!(%rpc, %rollup, confirmations, "settling on L1");
        }
        let server = optio_gateway::serve(listener, gateway.clone());
        let stop = async {
            match args.duration_s {
                Some(s) => tokio::time::sleep(std::time::Duration::from_secs(s)).await,
                None => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        };
        tokio::select! {
            r = server => r.context("api server")?,
            () = stop => tracing::info!("stopping"),
        }
        Ok(())
    })
}

/// A node that would not open, named for the operator's logs and alerts: `start-up refused
/// (<code>): <message>`, the code stable (`docs/rejections.md`, "Start-up refusals").
pub(crate) fn start_refused(e: optio_sequencer::SequencerError) -> anyhow::Error {
    anyhow::anyhow!("start-up refused ({}): {e}", e.code())
}
