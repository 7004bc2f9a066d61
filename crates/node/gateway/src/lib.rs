//! The gateway: where requests from the outside become sequenced inputs.
//!
//! Owns: the HTTP JSON-RPC 2.0 surface (bounded: 64 KiB bodies, batches of at most 32, bounded strings),
//! request parsing, order-signature verification (EIP-712 `Action`, Optio's native domain and,
//! where configured, the Derive-compatible domain ccxt signs), header authentication for reads
//! and cancels (EIP-191 `personal_sign` of a fresh timestamp), per-owner nonces, and the views the
//! API returns (instruments, books, tickers with mark, implied volatility and Greeks, orders,
//! positions, collateral), plus `/health` and Prometheus `/metrics`.
//! Also: WebSocket subscriptions (`ws`), session keys (registered by the owner; orders they sign
//! carry the key to the engine, which ends them with it), per-IP and per-owner rate limits
//! (`limits`), the Derive method names and envelopes ccxt expects (`derive`), one writer thread
//! that commits the requests queued meanwhile as one fsync group, and the batcher thread beside
//! it (`batching`).
//! Must not: change engine state except by submitting inputs to the sequencer.

pub mod batching;
pub mod client;
pub mod derive;
pub mod history;
pub mod limits;
pub mod rpc;
mod views;
pub mod ws;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use optio_intents::{Action, Address, TradeData, parse_address, parse_hex, recover};
use optio_sequencer::Sequencer;
use optio_types::{
    AccountId, Address as EngineAddress, Amount, Command, Input, InstrumentId, NewOrder, OrderId,
    OrderRef, OrderType, Price, Qty, SelfTradePrevention, Side, TimeInForce,
};
use serde_json::{Value, json};

pub use rpc::{CallError, GatewayError};

/// Largest request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Longest string parameter.
pub const MAX_STRING: usize = 256;

/// The names `private/set_margin_mode` takes for the margin modes.
pub const MARGIN_MODES: [(&str, optio_types::MarginMode); 3] = [
    ("worst_case", optio_types::MarginMode::WorstCase),
    ("standard", optio_types::MarginMode::Standard),
    ("portfolio", optio_types::MarginMode::Portfolio),
];

/// The least life (seconds) an owner's signature of an account change must have left when the
/// gateway takes it: the rollup judges it at its batch's time (`auth::ChangeAttestation::check`),
/// so it must outlive the change's own sequencing.
pub const CHANGE_MIN_LIFE_S: u64 = 10;

/// How far a nonce's date may be from the node's clock by default: 10 minutes.
pub const DEFAULT_NONCE_WINDOW_MS: u64 = 600_000;

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Chain id of Optio's native signing domain.
    pub chain_id: u64,
    /// Optio's settlement contract (native domain's verifying contract).
    pub verifying_contract: Address,
    /// Also accept orders signed under the Derive-compatible domain (`Some(sandbox)`).
    pub compat_domain: Option<bool>,
    /// Longest accepted signature lifetime (ccxt signs for 90 days).
    pub max_signature_lifetime_s: u64,
    /// How far a nonce's date (its leading 13 digits, milliseconds: `nonce_date_ms`) may be from
    /// the node's clock, either way (6010 beyond). Nonces are remembered only that long, so
    /// replay protection holds the nonces of one window, not of every live signature.
    pub nonce_window_ms: u64,
    /// Header authentication: how far a timestamp may be from the node's clock.
    pub auth_window_ms: u64,
    /// Requests per second per client IP (burst: twice that).
    pub ip_requests_per_second: u64,
    /// Signed orders per second per owner (burst: twice that).
    pub owner_orders_per_second: u64,
    /// The risk oracle's public key: oracle updates are sequenced only with its signature.
    pub oracle_key: Option<secp256k1::PublicKey>,
    /// A settlement batch is cut at this many ops ...
    pub batch_max_ops: usize,
    /// ... or this long after its first op.
    pub batch_max_age_ms: u64,
    /// ... or before an input that would make it too large to prove (the circuit's shape;
    /// `None`: no such limit).
    pub batch_capacity: Option<optio_state::Capacity>,
    /// A checkpoint of the settlement state after every this many batches
    /// (`optio_state::checkpoint`); once L1 has finalized a batch with one, the files of that
    /// batch and every earlier one are deleted (0: no checkpoints, every batch's files kept).
    pub checkpoint_every_batches: u64,
    /// The most batches whose files one pass of the batcher deletes: the first prune of a long
    /// history goes over several passes, batching going on between them.
    pub prune_batches_per_pass: usize,
    /// Where the node reads the time (the simulator moves a manual clock).
    pub clock: Clock,
    /// A snapshot (engine and views) after about this many inputs, so that a restart replays
    /// only the log after it (0: never).
    pub snapshot_every: u64,
    /// A new log segment starts once the one written holds this many bytes; segments a
    /// snapshot covers, with every input in them batched, are deleted.
    pub log_segment_bytes: u64,
    /// The rollup judges every fill by its orders' posted signatures (deployed with
    /// `authorizations`): refuse what the operator could not justify there, an edit that
    /// loosens an order beyond what was signed (6008). Orders signed by a session key are
    /// justifiable: the engine ends them with their key and the batcher cuts batches so that
    /// each is judged while its key is live.
    pub signed_terms_only: bool,
}

/// The node's clock: the system's, or a manual one that only moves when told (the simulator's
/// simulated time). Everything the node stamps or compares with "now" (sequencing time,
/// signature expiry, header authentication, rate limits, batch ages, intent status times)
/// reads it.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// Wall-clock milliseconds since the epoch.
    #[default]
    System,
    /// Milliseconds since the epoch as set by the owner of the shared counter.
    Manual(Arc<std::sync::atomic::AtomicU64>),
}

impl Clock {
    /// A manual clock at `start_ms`.
    pub fn manual(start_ms: u64) -> Self {
        Self::Manual(Arc::new(std::sync::atomic::AtomicU64::new(start_ms)))
    }

    /// Milliseconds since the epoch.
    pub fn now_ms(&self) -> u64 {
        match self {
            Self::System => now_ms(),
            Self::Manual(t) => t.load(std::sync::atomic::Ordering::Acquire),
        }
    }

    /// Moves a manual clock forward by `ms` (the system clock moves by itself: no effect).
    pub fn advance(&self, ms: u64) {
        if let Self::Manual(t) = self {
            t.fetch_add(ms, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

/// Batches between checkpoints of the settlement state by default (`Config.
/// checkpoint_every_batches`): the batches directory keeps at most about this many finalized
/// batches' files.
pub const DEFAULT_CHECKPOINT_EVERY_BATCHES: u64 = 1_024;

/// Batches pruned in one pass of the batcher by default (`Config.prune_batches_per_pass`).
pub const DEFAULT_PRUNE_BATCHES_PER_PASS: usize = 256;

impl Default for Config {
    fn default() -> Self {
        Self {
            chain_id: 31_337,
            verifying_contract: [0x0a; 20],
            compat_domain: Some(false),
            max_signature_lifetime_s: 100 * 86_400,
            nonce_window_ms: DEFAULT_NONCE_WINDOW_MS,
            auth_window_ms: 30_000,
            ip_requests_per_second: 100_000,
            owner_orders_per_second: 50_000,
            oracle_key: None,
            batch_max_ops: 10_000,
            batch_max_age_ms: 2_000,
            batch_capacity: None,
            checkpoint_every_batches: DEFAULT_CHECKPOINT_EVERY_BATCHES,
            prune_batches_per_pass: DEFAULT_PRUNE_BATCHES_PER_PASS,
            clock: Clock::System,
            snapshot_every: 100_000,
            log_segment_bytes: optio_sequencer::DEFAULT_SEGMENT_BYTES,
            signed_terms_only: false,
        }
    }
}

/// The date a nonce carries: its leading 13 decimal digits, a millisecond time (Derive's and
/// ccxt's nonces are that time followed by 3 or 6 random digits). `None` for a nonce shorter
/// than 13 digits, which carries none.
pub fn nonce_date_ms(nonce: u64) -> Option<u64> {
    let digits = nonce.checked_ilog10()? + 1;
    (digits >= 13).then(|| nonce / 10u64.pow(digits - 13))
}

/// A nonce a client makes at `now_ms`: that time followed by six digits (`k` modulo a million),
/// the form ccxt sends.
pub fn dated_nonce(now_ms: u64, k: u64) -> u64 {
    now_ms * 1_000_000 + k % 1_000_000
}

/// The nonce a client sends after `last` at `now_ms`: dated (`dated_nonce`), and above `last`
/// so that one client's nonces never repeat within a millisecond.
pub fn next_nonce(last: u64, now_ms: u64) -> u64 {
    (last + 1).max(dated_nonce(now_ms, 0))
}

/// Used nonces per owner, and the same by the second until which each must be remembered, so
/// that those past it are dropped from the front instead of scanning every nonce on every order.
/// A nonce is remembered until its signature expires or its date leaves the window, whichever
/// comes first: after that it is refused for its expiry or its date, so at most the nonces of
/// one window are held, whatever the signatures' lives (ccxt signs for 90 days). Behind its own
/// lock: checking a nonce never waits for the writer's commit.
#[derive(Default)]
struct Nonces {
    used: BTreeMap<Address, std::collections::BTreeSet<u64>>,
    by_until: std::collections::BTreeSet<(u64, Address, u64)>,
}

/// Why a nonce was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NonceRefusal {
    /// Its date is missing or further than the window from the clock.
    Date,
    /// The owner used it and it is still remembered.
    Used,
}

impl Nonces {
    /// Every nonce still remembered at `now_s`: (owner, nonce, the second until which it is).
    fn live(&self, now_s: u64) -> Vec<(Address, u64, u64)> {
        self.by_until
            .range((now_s, [0; 20], 0)..)
            .map(|&(until, owner, nonce)| (owner, nonce, until))
            .collect()
    }

    /// How many nonces are remembered at `now_s`.
    fn count(&mut self, now_s: u64) -> usize {
        self.forget_before(now_s);
        self.by_until.len()
    }

    /// Forgets the nonces remembered until before `now_s`.
    fn forget_before(&mut self, now_s: u64) {
        while let Some(&(until, who, n)) = self.by_until.first() {
            if until >= now_s {
                break;
            }
            self.by_until.pop_first();
            if let Some(set) = self.used.get_mut(&who) {
                set.remove(&n);
                if set.is_empty() {
                    self.used.remove(&who);
                }
            }
        }
    }

    /// Records `owner`'s `nonce`, whose signature lives until `expiry` (seconds), at `now_ms`
    /// with dates accepted within `window_ms` of it. Nonces past their time are forgotten first.
    fn take(
        &mut self,
        owner: Address,
        nonce: u64,
        expiry: u64,
        now_ms: u64,
        window_ms: u64,
    ) -> Result<(), NonceRefusal> {
        let date = nonce_date_ms(nonce)
            .filter(|d| d.abs_diff(now_ms) <= window_ms)
            .ok_or(NonceRefusal::Date)?;
        self.forget_before(now_ms / 1_000);
        if !self.used.entry(owner).or_default().insert(nonce) {
            return Err(NonceRefusal::Used);
        }
        let until = expiry.min((date + window_ms).div_ceil(1_000));
        self.by_until.insert((until, owner, nonce));
        Ok(())
    }
}

/// Mutable node state behind the gateway.
pub(crate) struct Node {
    pub(crate) sequencer: Sequencer,
    /// Client labels of orders (the engine keeps a 64-bit hash of them).
    labels: BTreeMap<u64, String>,
    /// Orders and trades, from events.
    pub(crate) history: history::History,
    /// Engine time of the last input (inputs never go back in time).
    last_ms: u64,
    /// Group commits and the inputs they carried (for the metrics).
    groups: u64,
    grouped_inputs: u64,
    /// Statuses of recent signed intents in the order they were first recorded (bounded,
    /// oldest forgotten first)...
    intent_order: std::collections::VecDeque<IntentStatus>,
    /// ... and where each is in it, by EIP-712 digest: its position counted from the first
    /// intent ever recorded (`intents_forgotten` of them are gone from the front).
    intents: BTreeMap<[u8; 32], u64>,
    intents_forgotten: u64,
    /// How far L1 has come: each time the committed (proven, finalized) batches reached
    /// further, the last sequence number they cover and when (ms). Kept in memory: after a
    /// restart the settler reports it again on its first round.
    committed: Vec<(u64, u64)>,
    proven: Vec<(u64, u64)>,
    finalized: Vec<(u64, u64)>,
    /// When this node opened (ms): where the wait for L1 counts from before the first report.
    opened_ms: u64,
    /// Seconds (L1 time) until the oldest L1 priority operation no finalized batch has served
    /// is overdue, as the settler last read it; `None` when none waits.
    priority_deadline_s: Option<i64>,
    /// The token balance the rollup holds and its books (deposited less paid out), micro-USDC,
    /// as the settler last read them.
    vault: Option<(u128, u128)>,
}

/// How far L1 has come, as last sequence numbers covered (`Gateway::record_l1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct L1Progress {
    /// By the committed batches.
    pub committed_seq: u64,
    /// By the batches proven on L1, with every batch before them.
    pub proven_seq: u64,
    /// By the finalized batches.
    pub finalized_seq: u64,
}

/// When the watermark first covered `seq` (ms), from a list of (watermark, time) rises.
fn covered_at(rises: &[(u64, u64)], seq: u64) -> Option<u64> {
    rises
        .get(rises.partition_point(|(upto, _)| *upto < seq))
        .map(|(_, at)| *at)
}

/// Signed intents whose status the gateway remembers.
const MAX_INTENTS: usize = 1_000_000;
/// Intent statuses a snapshot keeps (the most recent).
const SNAPSHOT_INTENTS: usize = 20_000;
/// Finished orders and trades a snapshot keeps (the most recent, each; open orders all).
const SNAPSHOT_RECENT: usize = 10_000;

impl Node {
    /// A copy of the views a snapshot keeps beside the engine, bounded so that taking it under
    /// the lock stays short: every open order and the most recent `SNAPSHOT_RECENT` finished
    /// orders and trades, their labels, and the most recent `SNAPSHOT_INTENTS` intent statuses
    /// (oldest first). After a restart the views hold that plus everything the log replays
    /// after the snapshot.
    fn views(&self) -> Views {
        let skip = self.intent_order.len().saturating_sub(SNAPSHOT_INTENTS);
        let intents = self.intent_order.iter().skip(skip).copied().collect();
        let history = self.history.recent(SNAPSHOT_RECENT);
        let labels = history
            .orders
            .keys()
            .filter_map(|id| self.labels.get(id).map(|l| (*id, l.clone())))
            .collect();
        (history, labels, intents)
    }
}

/// The bytes of a snapshot's views and of the nonces still in use (what `restore_views`
/// reads), written straight into one string (a `Value` tree per order cost several times more,
/// on the cores that answer orders). The nonces keep replay protection once the log segments
/// that held their intents are deleted.
fn encode_views((history, labels, intents): &Views, nonces: &[(Address, u64, u64)]) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(
        64 * (history.orders.len() + intents.len()) + 32 * nonces.len() + 1_024,
    );
    out.push_str("{\"version\":2,\"history\":");
    history.write_json(&mut out);
    out.push_str(",\"labels\":[");
    for (i, (id, label)) in labels.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(out, "{sep}[{id},{}]", Value::String(label.clone()));
    }
    out.push_str("],\"intents\":[");
    for (i, (digest, seq, time, code)) in intents.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let code = code.map_or_else(|| "null".to_owned(), |c| (c as u16).to_string());
        let _ = write!(out, "{sep}[\"{}\",{seq},{time},{code}]", views::hex(digest));
    }
    // Per owner, its nonces and their expiries as one flat list: [owner, [nonce, expiry, ...]]
    // (a third of the bytes of a triple a nonce; an account's quotes all carry one owner).
    out.push_str("],\"nonces\":[");
    let mut by_owner: BTreeMap<&Address, Vec<(u64, u64)>> = BTreeMap::new();
    for (owner, nonce, expiry) in nonces {
        by_owner.entry(owner).or_default().push((*nonce, *expiry));
    }
    for (i, (owner, list)) in by_owner.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(out, "{sep}[\"{}\",[", views::hex(*owner));
        for (k, (nonce, expiry)) in list.iter().enumerate() {
            let sep = if k == 0 { "" } else { "," };
            let _ = write!(out, "{sep}{nonce},{expiry}");
        }
        out.push_str("]]");
    }
    out.push_str("]}");
    out.into_bytes()
}

/// An intent's status: digest, sequence number, time, and its rejection if refused.
type IntentStatus = ([u8; 32], u64, u64, Option<optio_types::RejectCode>);

/// Views restored from a snapshot: history, labels, intent statuses (oldest first).
type Views = (history::History, BTreeMap<u64, String>, Vec<IntentStatus>);

/// Nonces in use: owner, nonce, the signature's expiry (seconds).
type LiveNonces = Vec<(Address, u64, u64)>;

/// The views and nonces `encode_views` wrote; `None` if they are malformed. (Version 1, before
/// the log was trimmed, kept no nonces: its log holds every intent.)
fn restore_views(bytes: &[u8]) -> Option<(Views, LiveNonces)> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let version = v["version"].as_u64()?;
    if !(1..=2).contains(&version) {
        return None;
    }
    let mut nonces = Vec::new();
    if version == 2 {
        for n in v["nonces"].as_array()? {
            let owner: Address = optio_intents::parse_hex(n.get(0)?.as_str()?)?
                .try_into()
                .ok()?;
            let list = n.get(1)?.as_array()?;
            if list.len() % 2 != 0 {
                return None;
            }
            for pair in list.chunks(2) {
                nonces.push((owner, pair[0].as_u64()?, pair[1].as_u64()?));
            }
        }
    }
    let history = history::History::from_json(&v["history"])?;
    let mut labels = BTreeMap::new();
    for l in v["labels"].as_array()? {
        labels.insert(l.get(0)?.as_u64()?, l.get(1)?.as_str()?.to_owned());
    }
    let mut intents = Vec::new();
    for i in v["intents"].as_array()? {
        let digest: [u8; 32] = optio_intents::parse_hex(i.get(0)?.as_str()?)?
            .try_into()
            .ok()?;
        let code = match i.get(3)? {
            Value::Null => None,
            c => Some(optio_types::RejectCode::from_code(
                u16::try_from(c.as_u64()?).ok()?,
            )?),
        };
        intents.push((digest, i.get(1)?.as_u64()?, i.get(2)?.as_u64()?, code));
    }
    Some(((history, labels, intents), nonces))
}

impl Node {
    fn remember_intent(
        &mut self,
        digest: [u8; 32],
        seq: u64,
        time_ms: u64,
        result: Option<optio_types::RejectCode>,
    ) {
        let status = (digest, seq, time_ms, result);
        if let Some(at) = self.intents.get(&digest) {
            self.intent_order[(at - self.intents_forgotten) as usize] = status;
            return;
        }
        let at = self.intents_forgotten + self.intent_order.len() as u64;
        self.intents.insert(digest, at);
        self.intent_order.push_back(status);
        if self.intent_order.len() > MAX_INTENTS
            && let Some((old, ..)) = self.intent_order.pop_front()
        {
            self.intents.remove(&old);
            self.intents_forgotten += 1;
        }
    }

    /// The status of the intent with this digest: sequence number, time, rejection.
    fn intent_status(
        &self,
        digest: &[u8; 32],
    ) -> Option<(u64, u64, Option<optio_types::RejectCode>)> {
        let at = self.intents.get(digest)?;
        let (_, seq, time, result) = self.intent_order[(at - self.intents_forgotten) as usize];
        Some((seq, time, result))
    }
}

/// One signed order waiting for the writer: sequenced with whatever else is waiting, in one
/// log write and one fsync (group commit).
struct Job {
    input: Command,
    /// The user's signed intent (none for operator inputs).
    intent: Option<optio_sequencer::Intent>,
    /// What an order placed (for the history), if the input places one.
    placed: Option<(Side, Price, Qty, String, Option<u64>)>,
    reply: Reply,
}

type Answer = Result<(optio_sequencer::Outcome, u64), GatewayError>;

/// Where the writer answers: an async waiter or a blocked thread.
enum Reply {
    Async(tokio::sync::oneshot::Sender<Answer>),
    Blocking(std::sync::mpsc::SyncSender<Answer>),
}

impl Reply {
    fn send(self, answer: Answer) {
        match self {
            Reply::Async(tx) => {
                let _ = tx.send(answer);
            }
            Reply::Blocking(tx) => {
                let _ = tx.send(answer);
            }
        }
    }
}

/// What a prepared order needs to become an answer.
pub(crate) struct OrderCtx {
    name: String,
    side: Side,
    price: Price,
    amount: Qty,
    label: String,
    expiry: u64,
    signer: Address,
    signature: Value,
    max_fee: Price,
}

/// Largest group the writer commits at once.
const MAX_GROUP: usize = 4_096;

/// What the writer needs of the configuration.
struct WriterSettings {
    clock: Clock,
    snapshot_every: u64,
    /// The nonces in use, kept in each snapshot.
    nonces: Arc<Mutex<Nonces>>,
    /// The batcher's progress: the log is kept from the last snapshot whose inputs were all
    /// batched (`None`: no batcher, so none is ever deleted).
    batch_stats: Option<Arc<Mutex<batching::BatchStats>>>,
    /// Log bytes the snapshots' trims freed.
    trimmed: Arc<std::sync::atomic::AtomicU64>,
    crash_before_sync: Arc<std::sync::atomic::AtomicBool>,
}

/// The snapshot thread: writes one snapshot at a time, off the writer's path.
struct Snapshots {
    queue: Option<std::sync::mpsc::SyncSender<(optio_sequencer::PendingSnapshot, Views)>>,
    busy: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Snapshots {
    /// Starts the thread. Each snapshot keeps the views and the nonces in use; the one it
    /// replaces becomes the base if every input up to it was batched, and the log segments the
    /// base covers are deleted (`PendingSnapshot::write_keeping`).
    fn start(settings: &WriterSettings) -> Option<Self> {
        let (queue, rx) =
            std::sync::mpsc::sync_channel::<(optio_sequencer::PendingSnapshot, Views)>(1);
        let busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = busy.clone();
        let (nonces, stats, clock, trimmed) = (
            settings.nonces.clone(),
            settings.batch_stats.clone(),
            settings.clock.clone(),
            settings.trimmed.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("optio-snapshot".into())
            .spawn(move || {
                for (pending, views) in rx {
                    let seq = pending.seq();
                    let live = nonces
                        .lock()
                        .map(|n| n.live(clock.now_ms() / 1_000))
                        .unwrap_or_default();
                    let batched = stats
                        .as_ref()
                        .and_then(|s| s.lock().ok().map(|s| s.cut_seq))
                        .unwrap_or(0);
                    match pending.write_keeping(&encode_views(&views, &live), batched) {
                        Ok((base, freed)) => {
                            trimmed.fetch_add(freed, std::sync::atomic::Ordering::Relaxed);
                            if freed > 0 {
                                tracing::info!(seq, base, freed, "snapshot; log trimmed");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, seq, "snapshot failed"),
                    }
                    flag.store(false, std::sync::atomic::Ordering::Release);
                }
            })
            .ok()?;
        Some(Self {
            queue: Some(queue),
            busy,
            thread: Some(thread),
        })
    }

    /// Whether the last snapshot is on disk (or failed).
    fn idle(&self) -> bool {
        !self.busy.load(std::sync::atomic::Ordering::Acquire)
    }

    fn write(&mut self, pending: optio_sequencer::PendingSnapshot, views: Views) {
        self.busy.store(true, std::sync::atomic::Ordering::Release);
        if let Some(q) = &self.queue
            && q.send((pending, views)).is_err()
        {
            self.busy.store(false, std::sync::atomic::Ordering::Release);
        }
    }
}

impl Drop for Snapshots {
    /// Finishes the snapshot being written.
    fn drop(&mut self) {
        self.queue.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The writer: takes every order waiting, sequences them as one group, answers each; now and
/// then hands a snapshot to the snapshot thread.
fn writer(
    settings: WriterSettings,
    node: Arc<Mutex<Node>>,
    signer: optio_sequencer::ReceiptSigner,
    jobs: std::sync::mpsc::Receiver<Job>,
    events: tokio::sync::broadcast::Sender<ws::Published>,
    mut batches: Option<batching::Feed>,
) {
    let mut snapshots = if settings.snapshot_every > 0 {
        Snapshots::start(&settings)
    } else {
        None
    };
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        // Write the group under the lock, make it durable without the lock (readers and
        // request handlers go on meanwhile), then apply it and answer.
        let staged = {
            let Ok(mut n) = node.lock() else { return };
            let t = settings.clock.now_ms().max(n.last_ms);
            n.last_ms = t;
            let inputs: Vec<(Input, Option<optio_sequencer::Intent>)> = group
                .iter()
                .map(|j| {
                    (
                        Input {
                            time_ms: t,
                            command: j.input.clone(),
                        },
                        j.intent,
                    )
                })
                .collect();
            n.sequencer
                .stage(inputs)
                .and_then(|staged| Ok((staged, n.sequencer.syncer()?, t)))
        };
        if settings
            .crash_before_sync
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            // The injected crash: the group is in the log's file, not synced, unanswered.
            return;
        }
        let committed = staged.and_then(|(staged, syncer, t)| {
            syncer.sync()?;
            let Ok(mut n) = node.lock() else {
                return Err(optio_sequencer::SequencerError::GroupPending);
            };
            let outcomes = n.sequencer.commit(staged)?;
            Ok((n, outcomes, t))
        });
        match committed {
            Ok((mut n, mut outcomes, t)) => {
                n.groups += 1;
                n.grouped_inputs += outcomes.len() as u64;
                for (job, outcome) in group.iter().zip(&outcomes) {
                    let placed = if outcome.result.is_ok() {
                        job.placed.clone()
                    } else {
                        None
                    };
                    if let Some((_, _, _, label, _)) = &placed
                        && !label.is_empty()
                        && let Some(id) = outcome.events.iter().find_map(|e| match e {
                            optio_types::Event::OrderAccepted { order, .. } => Some(order.0),
                            _ => None,
                        })
                    {
                        n.labels.insert(id, label.clone());
                    }
                    n.history.record(&outcome.events, t, placed);
                    if let Some(intent) = job.intent {
                        n.remember_intent(
                            intent.digest,
                            outcome.receipt.seq,
                            t,
                            outcome.result.err(),
                        );
                    }
                }
                drop(n);
                // The batcher and the subscribers get the group outside the lock: one hand-off
                // to the batcher per group.
                let published: Vec<Arc<Vec<optio_types::Event>>> = outcomes
                    .iter()
                    .map(|o| Arc::new(o.events.clone()))
                    .collect();
                if let Some(feed) = batches.as_mut() {
                    feed.send(
                        group
                            .iter()
                            .zip(&outcomes)
                            .zip(&published)
                            .map(|((job, outcome), events)| batching::Item {
                                seq: outcome.receipt.seq,
                                input: Input {
                                    time_ms: t,
                                    command: job.input.clone(),
                                },
                                signed: signed_of(&job.input, job.intent.as_ref()),
                                events: events.clone(),
                            })
                            .collect(),
                    );
                }
                if events.receiver_count() > 0 {
                    for (outcome, published) in outcomes.iter().zip(published) {
                        let _ = events.send(ws::Published {
                            seq: outcome.receipt.seq,
                            time_ms: t,
                            events: published,
                        });
                    }
                }
                // One signature seals the whole group, outside the lock.
                signer.seal(outcomes.iter_mut().map(|o| &mut o.receipt));
                for (job, outcome) in group.into_iter().zip(outcomes) {
                    job.reply.send(Ok((outcome, t)));
                }
                // (No snapshot thread without `snapshot_every`, and none while one is written.)
                if let Some(s) = snapshots.as_mut().filter(|s| s.idle()) {
                    let Ok(mut n) = node.lock() else { return };
                    let at = n.sequencer.next_seq() - 1;
                    if at - n.sequencer.snapshot_seq() >= settings.snapshot_every {
                        // Copies under the lock; encoding and the fsyncs happen on the
                        // snapshot thread. The log stays the record: a failed snapshot only
                        // means a longer replay at the next start.
                        match n.sequencer.take_snapshot() {
                            Ok(pending) => {
                                let views = n.views();
                                drop(n);
                                s.write(pending, views);
                            }
                            Err(e) => tracing::warn!(error = %e, seq = at, "snapshot failed"),
                        }
                    }
                }
            }
            Err(_) => {
                // The log could not be written or made durable: nothing was acknowledged; the
                // node must stop.
                for job in group {
                    job.reply.send(Err(GatewayError::Internal));
                }
                return;
            }
        }
    }
}

/// An account id parameter (`key`): a JSON integer that fits an account id.
pub(crate) fn account_param(params: &Value, key: &str) -> Result<AccountId, CallError> {
    Ok(AccountId(
        u32::try_from(uint(params, key)?).map_err(|_| GatewayError::InvalidParams(key.into()))?,
    ))
}

/// What an input places, for the order history: side, limit (or protection) price, size, label
/// and nonce; `None` if it places no order.
fn placed_by(
    command: &Command,
    nonce: Option<u64>,
) -> Option<(Side, Price, Qty, String, Option<u64>)> {
    let p = command.placed_order()?;
    Some((
        p.side,
        match p.order_type {
            OrderType::Limit { price } => price,
            OrderType::Market { protection_price } => protection_price.unwrap_or(Price::ZERO),
        },
        p.qty,
        String::new(),
        nonce,
    ))
}

/// The gateway.
pub struct Gateway {
    node: Arc<Mutex<Node>>,
    nonces: Arc<Mutex<Nonces>>,
    /// Log bytes deleted after snapshots since start.
    log_trimmed: Arc<std::sync::atomic::AtomicU64>,
    ip_limits: limits::Buckets<std::net::IpAddr>,
    owner_limits: limits::Buckets<Address>,
    /// Every sequenced input's events, for WebSocket subscribers (bounded: laggards are dropped).
    pub(crate) events: tokio::sync::broadcast::Sender<ws::Published>,
    jobs: std::sync::mpsc::SyncSender<Job>,
    pub(crate) config: Config,
    /// The domains orders may be signed under (native first), with their `auth::domain` byte.
    domains: Vec<(u8, [u8; 32])>,
    /// The batcher's progress (nodes opened on a data directory).
    batch_stats: Option<Arc<Mutex<batching::BatchStats>>>,
    /// Live WebSocket sessions.
    pub(crate) ws_sessions: std::sync::atomic::AtomicU64,
    /// How far L1 has come (last sequence number committed, finalized), for the `settlement`
    /// WebSocket channel.
    pub(crate) l1: tokio::sync::watch::Sender<L1Progress>,
    /// The writer thread, joined when the gateway is dropped.
    writer: Option<std::thread::JoinHandle<()>>,
    /// Fault injection (the simulator): the writer dies after writing its next group, unsynced.
    crash_before_sync: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Gateway {
    /// Stops the node's threads: closes the writer's queue and waits for the writer, which
    /// drops the batcher's feed and so waits for the batcher. Once dropped, the data directory
    /// is free for the next `open`.
    fn drop(&mut self) {
        let (closed, _) = std::sync::mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.jobs, closed));
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Wall-clock milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether `command` is an owner's account change (a session key or margin mode change): the
/// owner signs it, and a rollup that judges signatures judges it by that signature.
fn is_account_change(command: &Command) -> bool {
    matches!(
        command,
        Command::SetSessionKey { .. } | Command::SetMarginMode { .. }
    )
}

/// What the batcher posts beside an order's fills (its signature and the signed fields the
/// engine's order does not carry) or beside an account change (the owner's signature).
fn signed_of(
    command: &Command,
    intent: Option<&optio_sequencer::Intent>,
) -> Option<optio_state::auth::Signed> {
    let i = intent?;
    if is_account_change(command) {
        return Some(optio_state::auth::Signed {
            nonce: i.nonce,
            expiry_s: i.expiry,
            signer: EngineAddress(i.owner),
            domain: optio_state::auth::domain::OPTIO,
            max_fee: 0,
            signature: i.signature,
        });
    }
    let o = i.order?;
    Some(optio_state::auth::Signed {
        nonce: i.nonce,
        expiry_s: i.expiry,
        signer: EngineAddress(o.signer),
        domain: o.domain,
        max_fee: o.max_fee,
        signature: i.signature,
    })
}

fn to_engine(a: Address) -> EngineAddress {
    EngineAddress(a)
}

fn param<'a>(params: &'a Value, key: &str) -> Result<&'a Value, GatewayError> {
    params
        .get(key)
        .ok_or_else(|| GatewayError::InvalidParams(format!("missing {key}")))
}

fn string<'a>(params: &'a Value, key: &str) -> Result<&'a str, GatewayError> {
    let s = param(params, key)?
        .as_str()
        .ok_or_else(|| GatewayError::InvalidParams(format!("{key} must be a string")))?;
    if s.len() > MAX_STRING {
        return Err(GatewayError::InvalidParams(format!("{key} too long")));
    }
    Ok(s)
}

pub(crate) fn uint(params: &Value, key: &str) -> Result<u64, GatewayError> {
    let v = param(params, key)?;
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .ok_or_else(|| GatewayError::InvalidParams(format!("{key} must be a non-negative integer")))
}

/// A decimal string or number as fixed point with `decimals` places; NaN, infinities, negatives
/// where not allowed and excess precision are refused.
fn decimal(params: &Value, key: &str, decimals: u32) -> Result<i64, GatewayError> {
    let v = param(params, key)?;
    let text = match v {
        Value::String(s) if s.len() <= 40 => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => {
            return Err(GatewayError::InvalidParams(format!(
                "{key} must be a decimal string"
            )));
        }
    };
    let parsed = if decimals == 6 {
        Price::parse_decimal(&text).map(|p| p.0)
    } else {
        Qty::parse_decimal(&text).map(|q| q.0)
    };
    let value = parsed.map_err(|e| GatewayError::InvalidParams(format!("{key}: {e}")))?;
    if value < 0 {
        return Err(GatewayError::InvalidParams(format!(
            "{key} must not be negative"
        )));
    }
    Ok(value)
}

pub(crate) fn label_id(label: &str) -> u64 {
    let h = blake3::hash(label.as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes")).max(1)
}

impl Gateway {
    /// Opens the sequencer in `dir` and rebuilds the order and trade history, the orders'
    /// labels and the intent statuses from its log.
    pub fn open(
        dir: &std::path::Path,
        key: [u8; 32],
        limits: optio_types::EngineLimits,
        config: Config,
    ) -> Result<Self, optio_sequencer::SequencerError> {
        let mut history = history::History::default();
        let mut labels = BTreeMap::new();
        let mut intents = Vec::new();
        let mut saved_nonces = Vec::new();
        // The batcher resumes from its blobs; every input after the last batched one is fed
        // again, in order.
        let (feed, stats, batched) = batching::start(
            &dir.join("batches"),
            config.batch_max_ops,
            config.batch_max_age_ms,
            config.batch_capacity.clone(),
            batching::Checkpoints {
                every: config.checkpoint_every_batches,
                prune_per_pass: config.prune_batches_per_pass.max(1),
            },
            config.clock.clone(),
        )
        .map_err(|e| optio_sequencer::SequencerError::Startup {
            code: e.code,
            message: format!("batches: {}", e.message),
        })?;
        // The views at the snapshot, if there is one; the log after it is folded in below.
        if let Some(extra) = Sequencer::read_snapshot_extra(dir)? {
            let ((h, l, i), n) =
                restore_views(&extra).ok_or(optio_sequencer::SequencerError::SnapshotFormat)?;
            history = h;
            labels = l;
            intents = i;
            saved_nonces = n;
        }
        // Every log starts from the same limits; a proof's limits come through it
        // (`Command::SetProofLimits`, below), so a replay from genesis gives the same engine.
        let genesis = limits.with_proof(optio_types::ProofLimits::UNBOUNDED);
        let mut backlog: Vec<batching::Item> = Vec::new();
        let mut first_replayed = None;
        let sequencer = Sequencer::open_observed(dir, key, genesis, &mut |r| {
            first_replayed.get_or_insert(r.seq);
            if r.seq > batched {
                backlog.push(batching::Item {
                    seq: r.seq,
                    input: r.input.clone(),
                    signed: signed_of(&r.input.command, r.intent),
                    events: Arc::new(r.events.to_vec()),
                });
            }
            let mut placed = placed_by(&r.input.command, r.intent.map(|i| i.nonce));
            // Labels come back from the log with their signed intents.
            if let (Some((_, _, _, label, _)), Some(intent)) = (placed.as_mut(), r.intent) {
                label.push_str(intent.label.as_str());
                if !label.is_empty()
                    && let Some(order) = r.events.iter().find_map(|e| match e {
                        optio_types::Event::OrderAccepted { order, .. } => Some(order.0),
                        _ => None,
                    })
                {
                    labels.insert(order, label.clone());
                }
            }
            history.record(r.events, r.input.time_ms, placed);
            if let Some(intent) = r.intent {
                let rejected = r.events.iter().find_map(|e| match e {
                    optio_types::Event::Rejected { code } => Some(*code),
                    _ => None,
                });
                intents.push((intent.digest, r.seq, r.input.time_ms, rejected));
            }
        })?;
        // A snapshot newer than the last batch: the inputs between come from the log, replayed
        // for their events on a scratch engine, from the base snapshot (one whose inputs were
        // all batched: the log is kept from it on) or else from genesis.
        let resume_from = first_replayed.unwrap_or(sequencer.next_seq());
        if resume_from > batched + 1 {
            let (from, mut scratch) = match Sequencer::read_base(dir)? {
                Some((seq, engine)) if seq <= batched => (seq, engine),
                _ => (0, optio_engine::Engine::new(genesis)),
            };
            let mut gap = Vec::new();
            for (seq, input, intent) in Sequencer::read_log_between(dir, from, resume_from)? {
                let mut events = Vec::new();
                let _ = scratch.apply(&input, &mut events);
                if seq > batched {
                    let intent = intent.as_deref().and_then(optio_sequencer::Intent::decode);
                    gap.push(batching::Item {
                        seq,
                        signed: signed_of(&input.command, intent.as_ref()),
                        input,
                        events: Arc::new(events),
                    });
                }
            }
            gap.append(&mut backlog);
            backlog = gap;
        }
        let mut feed = feed;
        while !backlog.is_empty() {
            let rest = backlog.split_off(backlog.len().min(MAX_GROUP));
            feed.send(std::mem::replace(&mut backlog, rest));
        }
        let gateway = Self::build(sequencer, config, Some((feed, stats)), &saved_nonces);
        {
            let mut node = gateway.lock();
            node.history = history;
            node.labels = labels;
            for (digest, seq, time, rejected) in intents {
                node.remember_intent(digest, seq, time, rejected);
            }
        }
        // Limits from another shape (new prover keys), or none yet: sequenced for what follows.
        let current = gateway.lock().sequencer.engine().limits().proof();
        if current != limits.proof() {
            let set = gateway
                .submit_admin(vec![Command::SetProofLimits(limits.proof())])
                .map_err(|e| std::io::Error::other(format!("setting the proof's limits: {e}")))?;
            if let Some(Err(code)) = set.first() {
                return Err(std::io::Error::other(format!(
                    "the proof's limits were refused: {}",
                    code.message()
                ))
                .into());
            }
            tracing::info!(limits = ?limits.proof(), "the proof's limits sequenced");
        }
        Ok(gateway)
    }

    /// A gateway over `sequencer` (history starts empty; see `open`).
    pub fn new(sequencer: Sequencer, config: Config) -> Self {
        Self::build(sequencer, config, None, &[])
    }

    /// The gateway over `sequencer`, with the batcher's feed if it has one, and the nonces a
    /// snapshot kept.
    fn build(
        mut sequencer: Sequencer,
        config: Config,
        batches: Option<(batching::Feed, Arc<Mutex<batching::BatchStats>>)>,
        saved_nonces: &[(Address, u64, u64)],
    ) -> Self {
        sequencer.set_segment_bytes(config.log_segment_bytes);
        let (feed, batch_stats) = batches.map_or((None, None), |(f, s)| (Some(f), Some(s)));
        use optio_state::auth::{Venue, domain};
        let venue = Venue {
            chain_id: config.chain_id,
            rollup: to_engine(config.verifying_contract),
        };
        let compat = config.compat_domain.map(|sandbox| {
            if sandbox {
                domain::COMPAT_SANDBOX
            } else {
                domain::COMPAT
            }
        });
        let domains = [Some(domain::OPTIO), compat]
            .into_iter()
            .flatten()
            .map(|d| (d, venue.separator(d).expect("a domain the rollup knows")))
            .collect();
        let last_ms = sequencer.engine().time_ms();
        let receipt_signer = sequencer.receipt_signer();
        // Replay protection survives restarts: the log holds every signed intent since the base
        // snapshot, and the snapshot the nonces of those before.
        // Those whose signature expired or whose date left the window are refused without them.
        let mut nonces = Nonces::default();
        let now_ms = config.clock.now_ms();
        let logged = sequencer
            .recovered_intents()
            .iter()
            .map(|i| (i.owner, i.nonce, i.expiry));
        for (owner, nonce, expiry) in logged.chain(saved_nonces.iter().copied()) {
            if expiry >= now_ms / 1_000 {
                let _ = nonces.take(owner, nonce, expiry, now_ms, config.nonce_window_ms);
            }
        }
        let nonces = Arc::new(Mutex::new(nonces));
        let node = Arc::new(Mutex::new(Node {
            sequencer,
            labels: BTreeMap::new(),
            history: history::History::default(),
            last_ms,
            groups: 0,
            grouped_inputs: 0,
            intents: BTreeMap::new(),
            intents_forgotten: 0,
            intent_order: Default::default(),
            committed: Vec::new(),
            proven: Vec::new(),
            finalized: Vec::new(),
            opened_ms: config.clock.now_ms(),
            priority_deadline_s: None,
            vault: None,
        }));
        let (jobs, queue) = std::sync::mpsc::sync_channel(65_536);
        let (events, _) = tokio::sync::broadcast::channel(ws::STREAM_CAPACITY);
        let (shared, stream) = (node.clone(), events.clone());
        let crash_before_sync = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let trimmed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let settings = WriterSettings {
            clock: config.clock.clone(),
            snapshot_every: config.snapshot_every,
            nonces: nonces.clone(),
            batch_stats: batch_stats.clone(),
            trimmed: trimmed.clone(),
            crash_before_sync: crash_before_sync.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("optio-writer".into())
            .spawn(move || writer(settings, shared, receipt_signer, queue, stream, feed))
            .expect("spawn the writer thread");
        let ip_limits = limits::Buckets::new(
            config.ip_requests_per_second,
            2 * config.ip_requests_per_second,
        );
        let owner_limits = limits::Buckets::new(
            config.owner_orders_per_second,
            2 * config.owner_orders_per_second,
        );
        Self {
            node,
            nonces,
            log_trimmed: trimmed,
            ip_limits,
            owner_limits,
            events,
            jobs,
            config,
            domains,
            batch_stats,
            ws_sessions: std::sync::atomic::AtomicU64::new(0),
            l1: tokio::sync::watch::Sender::new(L1Progress::default()),
            writer: Some(writer),
            crash_before_sync,
        }
    }

    /// Fault injection for the simulator: the writer stops, as if the process died, right after
    /// it has written its next group to the log and before that group's fsync; nothing of the
    /// group is applied or answered (its callers get an internal error), and every later call
    /// fails. What a power loss keeps of the unsynced bytes is the caller's to choose (it cuts
    /// the log file) before it drops this gateway and opens the directory again.
    pub fn crash_before_next_fsync(&self) {
        self.crash_before_sync
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Log bytes the node's snapshots deleted since it started.
    pub fn log_trimmed(&self) -> u64 {
        self.log_trimmed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The sequence number of the node's last snapshot (0: none yet).
    pub fn snapshot_seq(&self) -> u64 {
        self.lock().sequencer.snapshot_seq()
    }

    /// The next sequence number.
    pub fn next_seq(&self) -> u64 {
        self.lock().sequencer.next_seq()
    }

    /// The batcher's progress (`None` for a gateway built without a data directory).
    pub fn batch_stats(&self) -> Option<batching::BatchStats> {
        self.batch_stats
            .as_ref()
            .and_then(|s| s.lock().ok().map(|s| s.clone()))
    }

    /// Live WebSocket sessions.
    pub fn ws_sessions(&self) -> u64 {
        self.ws_sessions.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Node> {
        // A panic while holding the lock means an invariant stopped the engine: stay stopped.
        self.node
            .lock()
            .expect("the engine halted on a violated invariant")
    }

    /// Submits operator inputs (listing, oracle updates, deposits) at the current time. On a
    /// node with an oracle, an operator's settlement price is refused before anything is
    /// sequenced: its prices come signed in the oracle's updates, and L1 judges a settlement
    /// without the oracle's signature unattested (the batch would be reverted and the bond
    /// slashed). So is an account change on a node in front of a rollup that judges
    /// signatures (6009): it must come signed by the account's owner (`change_as_owner`).
    pub fn submit_admin(
        &self,
        commands: Vec<Command>,
    ) -> Result<Vec<Result<(), optio_types::RejectCode>>, GatewayError> {
        if self.config.oracle_key.is_some()
            && commands
                .iter()
                .any(|c| matches!(c, Command::SettleInstrument { .. }))
        {
            return Err(GatewayError::InvalidParams(
                "settlement prices come from the oracle's signed updates on this node: \
                 L1 would judge an operator's unattested"
                    .into(),
            ));
        }
        if self.config.signed_terms_only && commands.iter().any(is_account_change) {
            return Err(GatewayError::UnsignedChange);
        }
        let waits = commands
            .into_iter()
            .map(|command| {
                let placed = placed_by(&command, None);
                self.enqueue(command, None, placed)
            })
            .collect::<Result<Vec<_>, _>>()?;
        waits
            .into_iter()
            .map(|rx| {
                rx.recv()
                    .map_err(|_| GatewayError::Internal)?
                    .map(|(o, _)| o.result)
            })
            .collect()
    }

    /// Queues one input for the writer; the answer arrives on the returned channel.
    fn enqueue(
        &self,
        input: Command,
        intent: Option<optio_sequencer::Intent>,
        placed: Option<(Side, Price, Qty, String, Option<u64>)>,
    ) -> Result<std::sync::mpsc::Receiver<Answer>, GatewayError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.jobs
            .send(Job {
                input,
                intent,
                placed,
                reply: Reply::Blocking(tx),
            })
            .map_err(|_| GatewayError::Internal)?;
        Ok(rx)
    }

    /// Optio's signing domain for this rollup (the configured chain and contract): the oracle
    /// signs each mark under it.
    pub fn optio_domain(&self) -> [u8; 32] {
        // Native first (`open`).
        self.domains[0].1
    }

    /// Sequences an oracle update if the configured oracle key signed it and each of its marks
    /// under Optio's domain, as the rollup judges a batch's marks.
    pub fn submit_oracle(&self, signed: &optio_oracle::SignedUpdate) -> Result<(), CallError> {
        let key = self.config.oracle_key.ok_or(GatewayError::BadSignature)?;
        optio_oracle::verify(signed, &key, &self.optio_domain())
            .map_err(|_| GatewayError::BadSignature)?;
        self.sequence(Command::OracleUpdate(signed.update.clone()))
            .map(|_| ())
    }

    /// The engine's auction clock (`Engine::oracle_time_ms`): when an auction has run its
    /// course and deleveraging may begin.
    pub fn auction_clock_ms(&self) -> u64 {
        self.lock().sequencer.engine().oracle_time_ms()
    }

    /// The engine's canonical state (tests, the simulator, the settlement check).
    pub fn canonical_state(&self) -> optio_types::CanonicalState {
        self.lock().sequencer.engine().canonical()
    }

    /// The engine's invariants, checked in full now; and the engine's snapshot bytes now
    /// restore, by the path a restart reads them (`Engine::restore_bytes`), to the same bytes,
    /// so that a restart can load them (a held position at no cost once passed the first check
    /// and failed only at the next restart).
    pub fn check_invariants(&self) -> Result<(), String> {
        let inner = self.lock();
        let engine = inner.sequencer.engine();
        engine.check_invariants().map_err(|e| format!("{e:?}"))?;
        let bytes = engine.snapshot();
        let restored = optio_engine::Engine::restore_bytes(&bytes, optio_types::WorstCaseMargin)
            .map_err(|e| format!("the state would not restore from a snapshot: {e}"))?;
        if restored.snapshot() != bytes {
            return Err("the state restores from a snapshot to another state".into());
        }
        Ok(())
    }

    /// Accounts opened so far (the next one gets this id).
    pub fn account_count(&self) -> usize {
        self.lock().sequencer.engine().account_count()
    }

    /// L1 priority operations the engine has served: the queue id it takes next.
    pub fn priority_served(&self) -> u64 {
        self.lock().sequencer.engine().priority_served()
    }

    /// Sequences one L1 priority operation (`Command::L1Deposit`, `Command::L1Withdrawal` or
    /// `Command::L1Close`, from the settler's watch of the rollup contract). Returns `false`,
    /// sequencing nothing, for one already served, so feeding the same operation twice (after
    /// a restart, or from two watchers) credits it once; one that skips ahead of the queue is
    /// refused with `PriorityOutOfOrder` and changes nothing (a forced close whose backstop
    /// cannot take it, with `BackstopUnfit`: the operator must fix the backstop before the
    /// request's deadline).
    pub fn submit_l1(&self, command: Command) -> Result<bool, CallError> {
        let (Command::L1Deposit { priority, .. }
        | Command::L1Withdrawal { priority, .. }
        | Command::L1Close { priority, .. }) = command
        else {
            return Err(GatewayError::InvalidParams("not an L1 priority operation".into()).into());
        };
        if priority < self.priority_served() {
            return Ok(false);
        }
        self.sequence(command).map(|_| true)
    }

    /// Records how far L1 has come: the last sequence number covered by the committed batches,
    /// by the proven ones (a validity proof verified on L1, every batch before proven too) and
    /// by the finalized ones. Intents at or below move to `committed` / `proven` /
    /// `finalized`.
    pub fn record_l1(&self, progress: L1Progress) {
        let now = self.config.clock.now_ms();
        let mut guard = self.lock();
        let node = &mut *guard;
        for (rises, seq) in [
            (&mut node.committed, progress.committed_seq),
            (&mut node.proven, progress.proven_seq),
            (&mut node.finalized, progress.finalized_seq),
        ] {
            if rises.last().is_none_or(|(upto, _)| seq > *upto) {
                rises.push((seq, now));
            }
        }
        let latest = |rises: &[(u64, u64)]| rises.last().map_or(0, |(seq, _)| *seq);
        let progress = L1Progress {
            committed_seq: latest(&node.committed),
            proven_seq: latest(&node.proven),
            finalized_seq: latest(&node.finalized),
        };
        self.l1
            .send_if_modified(|p| std::mem::replace(p, progress) != progress);
    }

    /// Records the last batch L1 has finalized: the batcher deletes the files of the batches
    /// up to the newest checkpoint at or before it (`Config.checkpoint_every_batches`).
    pub fn record_finalized_batch(&self, number: u64) {
        if let Some(stats) = &self.batch_stats
            && let Ok(mut s) = stats.lock()
        {
            s.finalized = s.finalized.max(number);
        }
    }

    /// Records how long (seconds of L1 time) the oldest L1 priority operation no finalized
    /// batch has served has until it is overdue and anyone may freeze the rollup (negative:
    /// overdue), or that none waits (`None`). The settler reports it every round.
    pub fn record_priority_deadline(&self, seconds: Option<i64>) {
        self.lock().priority_deadline_s = seconds;
    }

    /// Records the token balance the rollup holds and its books (`totalDeposited - totalPaid`),
    /// micro-USDC. The settler reports them every round.
    pub fn record_vault(&self, held: u128, books: u128) {
        self.lock().vault = Some((held, books));
    }

    /// Opens a subaccount for `owner` and credits `amount` (devnet faucet, deposits from L1).
    pub fn fund(&self, owner: Address, amount: Amount) -> Result<u64, GatewayError> {
        let id = self.account_count() as u32;
        let results = self.submit_admin(vec![
            Command::OpenAccount {
                owner: to_engine(owner),
            },
            Command::Deposit {
                account: AccountId(id),
                amount,
            },
        ])?;
        if results.iter().any(Result::is_err) {
            return Err(GatewayError::Internal);
        }
        Ok(u64::from(id))
    }

    /// Handles one JSON-RPC call.
    pub fn call(
        &self,
        method: &str,
        params: &Value,
        headers: &HeaderMap,
    ) -> Result<Value, CallError> {
        match method {
            "public/get_time" => Ok(json!(self.config.clock.now_ms())),
            "public/get_instruments" => Ok(views::instruments(&self.lock().sequencer, params)),
            "public/get_intent_status" => {
                let hash: [u8; 32] = parse_hex(string(params, "intent_hash")?)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| {
                        GatewayError::InvalidParams("intent_hash must be 32 bytes of hex".into())
                    })?;
                let node = self.lock();
                let (seq, time, result) = node
                    .intent_status(&hash)
                    .ok_or_else(|| GatewayError::InvalidParams("unknown intent".into()))?;
                // Committed, proven and finalized come from the settler's view of L1 (proven:
                // the batch's validity proof verified there; a rollup without a verifier
                // proves nothing, and its intents go from committed to finalized).
                let (committed_at, proven_at, finalized_at) = if result.is_some() {
                    (None, None, None)
                } else {
                    (
                        covered_at(&node.committed, seq),
                        covered_at(&node.proven, seq),
                        covered_at(&node.finalized, seq),
                    )
                };
                let status = match (result, committed_at, proven_at, finalized_at) {
                    (Some(_), ..) => "rejected",
                    (None, _, _, Some(_)) => "finalized",
                    (None, _, Some(_), None) => "proven",
                    (None, Some(_), None, None) => "committed",
                    (None, None, None, None) => "executed",
                };
                Ok(json!({
                    "intent_hash": params["intent_hash"],
                    "status": status,
                    "code": result.map(|c| c.code()),
                    "seq": seq,
                    "received_at": time, "sequenced_at": time, "executed_at": time,
                    "committed_at": committed_at, "proven_at": proven_at, "finalized_at": finalized_at,
                }))
            }
            "oracle/submit_update" => {
                // The oracle's canonical update bytes and its signature over them.
                let bytes = parse_hex(
                    params
                        .get("update")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                )
                .ok_or_else(|| GatewayError::InvalidParams("update".into()))?;
                let update = optio_types::OracleUpdate::decode(
                    &bytes,
                    optio_types::UpdateFormat::Current,
                    100_000,
                    1_024,
                )
                .map_err(|e| GatewayError::InvalidParams(format!("update: {e}")))?;
                let signature: [u8; 64] = parse_hex(string(params, "signature")?)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(GatewayError::BadSignature)?;
                self.submit_oracle(&optio_oracle::SignedUpdate { update, signature })?;
                Ok(json!("ok"))
            }
            "public/get_order_book" => Ok(views::order_book(&self.lock().sequencer, params)?),
            "public/ticker" => Ok(views::ticker(
                &self.lock().sequencer,
                params,
                self.config.clock.now_ms(),
            )?),
            "private/order" => self.order(params),
            "private/buy" | "private/sell" => {
                let mut params = params.clone();
                params["direction"] = json!(method.trim_start_matches("private/"));
                self.order(&params)
            }
            "private/replace" => {
                // Cancel-and-replace as one input (header-authenticated like a cancel, the new
                // order signed as any): a cancel refused places nothing; a new order refused
                // leaves the old one cancelled, its code in `replace_error`.
                // (The headers' wallet owns the account, as the signed order's owner must.)
                self.authorized(params, headers)?;
                let cancel = OrderId(uint(params, "order_id_to_cancel")?);
                let (placed, refused) =
                    self.replace_signed_order(params, None, OrderRef::Id(cancel))?;
                // As `private/order`'s result (`order` null when refused), with the cancel's.
                let mut out = match refused {
                    None => placed.result(),
                    Some(_) => json!({"order": null, "trades": [], "receipt": placed.receipt}),
                };
                out["cancelled_order_id"] = json!(cancel.0.to_string());
                out["replace_error"] = json!(
                    refused.map(|code| json!({"code": code.code(), "message": code.to_string()}))
                );
                Ok(out)
            }
            "private/cancel" => {
                let account = self.authorized(params, headers)?;
                let order = OrderId(uint(params, "order_id")?);
                self.sequence(Command::Cancel {
                    account,
                    order: OrderRef::Id(order),
                })
                .map(|_| json!({"order_id": order.0.to_string(), "order_status": "cancelled", "cancel_reason": history::cancel_reason(optio_types::DoneReason::Cancelled)}))
            }
            "private/edit" => {
                // Header-authenticated like Deribit's edit; replaying the same edit is refused
                // by the engine as a no-op amend (4017).
                let account = self.authorized(params, headers)?;
                let order = OrderId(uint(params, "order_id")?);
                let price = Price(decimal(params, "price", 6)?);
                let qty = Qty(decimal(params, "amount", 8)?);
                // Only tightening keeps every later fill within what was signed: by induction
                // the order's terms stay within its signature.
                if self.config.signed_terms_only
                    && let Some(o) = self.lock().sequencer.engine().open_order(order)
                    && o.account == account
                {
                    let looser = match o.side {
                        Side::Buy => price > o.price,
                        Side::Sell => price < o.price,
                    };
                    if looser || qty > o.remaining {
                        return Err(GatewayError::BeyondSignedTerms.into());
                    }
                }
                let events = self.sequence(Command::Amend {
                    account,
                    order: OrderRef::Id(order),
                    price,
                    qty,
                })?;
                let kept = events.iter().any(|e| {
                    matches!(
                        e,
                        optio_types::Event::OrderAmended {
                            kept_priority: true,
                            ..
                        }
                    )
                });
                Ok(
                    json!({"order_id": order.0.to_string(), "price": price.to_string(), "amount": qty.to_string(), "kept_priority": kept}),
                )
            }
            "private/cancel_all" => {
                let account = self.authorized(params, headers)?;
                let instrument = match params.get("instrument_name") {
                    Some(_) => Some(views::instrument_id(
                        &self.lock().sequencer,
                        string(params, "instrument_name")?,
                    )?),
                    None => None,
                };
                let outcome = self.sequence(Command::CancelAll {
                    account,
                    instrument,
                })?;
                let cancelled = outcome
                    .iter()
                    .filter(|e| matches!(e, optio_types::Event::OrderDone { .. }))
                    .count();
                Ok(json!(cancelled))
            }
            "private/get_open_orders" => {
                let account = self.authorized(params, headers)?;
                let node = self.lock();
                Ok(views::open_orders(&node.sequencer, account, &node.labels))
            }
            "private/get_positions" => {
                let account = self.authorized(params, headers)?;
                Ok(views::positions(&self.lock().sequencer, account))
            }
            "private/register_session_key" => {
                // Only the owner (header authentication) registers or revokes session keys.
                let account = self.authorized(params, headers)?;
                let key = parse_address(string(params, "public_session_key")?)
                    .ok_or_else(|| GatewayError::InvalidParams("public_session_key".into()))?;
                let expiry_s = uint(params, "expiry_sec")?;
                let expiry_ms = expiry_s
                    .checked_mul(1_000)
                    .ok_or_else(|| GatewayError::InvalidParams("expiry_sec".into()))?;
                let change = optio_intents::SessionKeyChange { key, expiry_ms };
                let signed = self.signed_change(
                    params,
                    account,
                    optio_intents::AccountChange::SessionKey(change),
                )?;
                self.sequence_intent(
                    Command::SetSessionKey {
                        account,
                        key: to_engine(key),
                        expiry_ms,
                    },
                    signed,
                )?;
                Ok(
                    json!({"subaccount_id": account.0, "public_session_key": params["public_session_key"], "expiry_sec": expiry_s}),
                )
            }
            "private/set_margin_mode" => {
                // The owner chooses how the account is margined (header authentication); the
                // engine refuses a mode whose initial requirement the account would not meet.
                let account = self.authorized(params, headers)?;
                let name = string(params, "margin_mode")?;
                let (_, mode) = MARGIN_MODES
                    .into_iter()
                    .find(|(n, _)| *n == name)
                    .ok_or_else(|| GatewayError::InvalidParams("margin_mode".into()))?;
                let change = optio_intents::MarginModeChange { mode: mode.code() };
                let signed = self.signed_change(
                    params,
                    account,
                    optio_intents::AccountChange::MarginMode(change),
                )?;
                self.sequence_intent(Command::SetMarginMode { account, mode }, signed)?;
                Ok(json!({"subaccount_id": account.0, "margin_mode": params["margin_mode"]}))
            }
            "private/liquidate" => {
                // A liquidator (header authentication: the wallet owns `subaccount_id`) takes
                // `amount` contracts of a liquidating account's position at the auction's
                // current price; the engine checks the auction step and the liquidator's margin.
                let liquidator = self.authorized(params, headers)?;
                let account = account_param(params, "account_id")?;
                let instrument = views::instrument_id(
                    &self.lock().sequencer,
                    string(params, "instrument_name")?,
                )?;
                let qty = Qty(decimal(params, "amount", 8)?);
                let events = self.sequence(Command::Liquidate {
                    liquidator,
                    account,
                    instrument,
                    qty,
                })?;
                let (price, fee) = events
                    .iter()
                    .find_map(|e| match e {
                        optio_types::Event::LiquidationTransfer { price, fee, .. } => {
                            Some((price.to_string(), fee.to_string()))
                        }
                        _ => None,
                    })
                    .unwrap_or_default();
                Ok(
                    json!({"account_id": account.0, "instrument_name": params["instrument_name"], "amount": qty.to_string(), "price": price, "fee": fee}),
                )
            }
            "private/get_subaccount" => {
                let account = self.authorized(params, headers)?;
                Ok(views::subaccount(&self.lock().sequencer, account))
            }
            _ => Err(GatewayError::MethodNotFound.into()),
        }
    }

    /// An account change made by its owner through the private API, as a client makes it
    /// (header authentication and the owner's signature of the change under this node's
    /// domain, `client::change_params`, a nonce from the clock, the signature living five
    /// minutes): how the operator changes its own accounts (the backstop's margin mode) on a
    /// node whose rollup judges every change by its owner's signature.
    pub fn change_as_owner(
        &self,
        key: &secp256k1::SecretKey,
        account: AccountId,
        change: client::Change,
    ) -> Result<Value, CallError> {
        let now_ms = self.config.clock.now_ms();
        let params = client::change_params(
            key,
            self.config.chain_id,
            self.config.verifying_contract,
            u64::from(account.0),
            change,
            now_ms,
            now_ms / 1_000 + 300,
        );
        let method = match change {
            client::Change::SessionKey { .. } => "private/register_session_key",
            client::Change::MarginMode(_) => "private/set_margin_mode",
        };
        let mut headers = HeaderMap::new();
        for (name, value) in client::auth_headers(key, now_ms) {
            headers.insert(name, value.parse().map_err(|_| GatewayError::Internal)?);
        }
        self.call(method, &params, &headers)
    }

    /// Sequences one command; returns its events or the engine's rejection (with the receipt).
    pub(crate) fn sequence(&self, command: Command) -> Result<Vec<optio_types::Event>, CallError> {
        self.sequence_intent(command, None)
    }

    /// `sequence` with the user's signed intent for it, logged with the input.
    fn sequence_intent(
        &self,
        command: Command,
        intent: Option<optio_sequencer::Intent>,
    ) -> Result<Vec<optio_types::Event>, CallError> {
        let (outcome, _) = self
            .enqueue(command, intent, None)?
            .recv()
            .map_err(|_| GatewayError::Internal)??;
        match outcome.result {
            Ok(()) => Ok(outcome.events),
            Err(code) => Err(CallError::Engine(
                code,
                Some(views::receipt(&outcome.receipt)),
            )),
        }
    }

    /// Header authentication: `X-OptioWallet`, `X-OptioTimestamp` (ms) and `X-OptioSignature`
    /// (EIP-191 personal_sign of the timestamp's decimal string by the wallet); the wallet must
    /// own `subaccount_id`.
    fn authorized(&self, params: &Value, headers: &HeaderMap) -> Result<AccountId, CallError> {
        let wallet = self.wallet(headers, "x-optio")?;
        self.owned_by(account_param(params, "subaccount_id")?, wallet)
    }

    /// The subaccount, if `wallet` owns it.
    pub(crate) fn owned_by(
        &self,
        account: AccountId,
        wallet: Address,
    ) -> Result<AccountId, CallError> {
        match self.lock().sequencer.engine().account_owner(account) {
            Some(owner) if owner.0 == wallet => Ok(account),
            Some(_) => Err(GatewayError::NotOwner.into()),
            None => Err(CallError::Engine(
                optio_types::RejectCode::UnknownAccount,
                None,
            )),
        }
    }

    /// Header authentication with headers `{prefix}wallet`, `{prefix}timestamp`,
    /// `{prefix}signature`: the wallet that signed a fresh timestamp.
    pub(crate) fn wallet(&self, headers: &HeaderMap, prefix: &str) -> Result<Address, CallError> {
        let h = |name: &str| {
            headers
                .get(format!("{prefix}{name}"))
                .and_then(|v| v.to_str().ok())
                .ok_or(GatewayError::Unauthorized)
        };
        let wallet = parse_address(h("wallet")?).ok_or(GatewayError::Unauthorized)?;
        let timestamp = h("timestamp")?;
        let ts: u64 = timestamp.parse().map_err(|_| GatewayError::Unauthorized)?;
        if self.config.clock.now_ms().abs_diff(ts) > self.config.auth_window_ms {
            return Err(GatewayError::Unauthorized.into());
        }
        let signature = parse_hex(h("signature")?).ok_or(GatewayError::Unauthorized)?;
        let mut message = format!("\x19Ethereum Signed Message:\n{}", timestamp.len()).into_bytes();
        message.extend_from_slice(timestamp.as_bytes());
        let signer = recover(&optio_intents::keccak(&message), &signature)
            .map_err(|_| GatewayError::Unauthorized)?;
        if signer != wallet {
            return Err(GatewayError::Unauthorized.into());
        }
        Ok(wallet)
    }

    /// The owner's signature of `change` of `account` (a session key or margin mode change),
    /// from the request's `signature`, `nonce` (a decimal
    /// string) and `signature_expiry_sec`: an `Action` under Optio's domain signed by the
    /// account's owner, which the batch posts beside the change and the rollup judges
    /// (`OptioJudge.changeSigned`). The signature must live at least `CHANGE_MIN_LIFE_S` more
    /// (L1 judges it at its batch's time, and the batcher cuts before a later input that would
    /// outlive it), and the nonce is the owner's, unused. Without a signature: `None`, refused
    /// (6009) on a rollup that judges signatures.
    fn signed_change(
        &self,
        params: &Value,
        account: AccountId,
        change: optio_intents::AccountChange,
    ) -> Result<Option<optio_sequencer::Intent>, CallError> {
        if params.get("signature").is_none() {
            if self.config.signed_terms_only {
                return Err(GatewayError::UnsignedChange.into());
            }
            return Ok(None);
        }
        let signature: [u8; 65] = parse_hex(string(params, "signature")?)
            .and_then(|s| s.try_into().ok())
            .ok_or(GatewayError::BadSignature)?;
        let nonce: u64 = string(params, "nonce")?
            .parse()
            .map_err(|_| GatewayError::InvalidParams("nonce must be a decimal string".into()))?;
        let expiry = uint(params, "signature_expiry_sec")?;
        let owner = self
            .lock()
            .sequencer
            .engine()
            .account_owner(account)
            .ok_or(CallError::Engine(
                optio_types::RejectCode::UnknownAccount,
                None,
            ))?;
        let digest = change
            .action(u64::from(account.0), nonce, expiry, owner.0)
            .digest(&self.optio_domain());
        if !recover(&digest, &signature).is_ok_and(|who| who == owner.0) {
            return Err(GatewayError::BadSignature.into());
        }
        let now_ms = self.config.clock.now_ms();
        let now_s = now_ms / 1_000;
        if expiry < now_s + CHANGE_MIN_LIFE_S
            || expiry > now_s + self.config.max_signature_lifetime_s
        {
            return Err(GatewayError::SignatureExpiry.into());
        }
        self.take_nonce(owner.0, nonce, expiry, now_ms)?;
        Ok(Some(optio_sequencer::Intent {
            digest,
            owner: owner.0,
            nonce,
            expiry,
            signature,
            label: optio_sequencer::Label::new("").expect("empty"),
            order: None,
        }))
    }

    /// Takes `owner`'s `nonce` for its signature's life (`expiry`, seconds): nonces are unique
    /// per owner, orders and account changes alike, while they are remembered (6003 for one in
    /// use), and carry their date within `nonce_window_ms` of the node's clock (6010).
    fn take_nonce(
        &self,
        owner: Address,
        nonce: u64,
        expiry: u64,
        now_ms: u64,
    ) -> Result<(), GatewayError> {
        let window_ms = self.config.nonce_window_ms;
        self.nonces
            .lock()
            .map_err(|_| GatewayError::Internal)?
            .take(owner, nonce, expiry, now_ms, window_ms)
            .map_err(|refusal| match refusal {
                NonceRefusal::Used => GatewayError::ReplayedNonce,
                NonceRefusal::Date => GatewayError::NonceDate(window_ms / 1_000),
            })
    }

    /// A signed order: rebuild the signed `Action` from the request, check signature, owner,
    /// expiry, max fee and nonce, then sequence it.
    fn order(&self, params: &Value) -> Result<Value, CallError> {
        Ok(self.place_signed_order(params, None)?.result())
    }

    /// Verifies and sequences a signed order. `owner` is the wallet the caller authenticated as
    /// (the Derive-compatible API signs it; the native API takes the subaccount's owner).
    pub(crate) fn place_signed_order(
        &self,
        params: &Value,
        owner_wallet: Option<Address>,
    ) -> Result<PlacedOrder, CallError> {
        let (ctx, rx) = self.prepare_signed_order(params, owner_wallet, None)?;
        let (outcome, t) = rx.blocking_recv().map_err(|_| GatewayError::Internal)??;
        self.finish_order(ctx, outcome, t)
    }

    /// Verifies a signed order as `place_signed_order` does and sequences it as a replace of
    /// the account's order `cancel` (one input: the cancel, then the order). A cancel refused
    /// (an unknown order, another account's) places nothing: the engine's error. A new order
    /// refused leaves the old one cancelled: `Ok`, with its code in `replace_refused`.
    pub(crate) fn replace_signed_order(
        &self,
        params: &Value,
        owner_wallet: Option<Address>,
        cancel: OrderRef,
    ) -> Result<(PlacedOrder, Option<optio_types::RejectCode>), CallError> {
        let (ctx, rx) = self.prepare_signed_order(params, owner_wallet, Some(cancel))?;
        let (outcome, t) = rx.blocking_recv().map_err(|_| GatewayError::Internal)??;
        let refused = outcome.events.iter().find_map(|e| match e {
            optio_types::Event::ReplaceRefused { code } => Some(*code),
            _ => None,
        });
        Ok((self.finish_order(ctx, outcome, t)?, refused))
    }

    /// `place_signed_order` without blocking a thread while the group commits.
    pub(crate) async fn place_signed_order_async(
        &self,
        params: &Value,
        owner_wallet: Option<Address>,
    ) -> Result<PlacedOrder, CallError> {
        let (ctx, rx) = self.prepare_signed_order(params, owner_wallet, None)?;
        let (outcome, t) = rx.await.map_err(|_| GatewayError::Internal)??;
        self.finish_order(ctx, outcome, t)
    }

    /// Verifies and sequences many signed orders (each `private/order` params), queued together
    /// so that they share the writer's group commits (one fsync for as many as it takes),
    /// as a market maker's concurrent requests would: each order's outcome, in order, its
    /// engine rejection or bad input as an error. A simulated participant's path
    /// (`optio devnet`'s market makers), the same verification as the API's.
    pub async fn place_signed_orders(&self, orders: &[Value]) -> Vec<Result<u64, CallError>> {
        let queued: Vec<_> = orders
            .iter()
            .map(|params| self.prepare_signed_order(params, None, None))
            .collect();
        let mut placed = Vec::with_capacity(queued.len());
        for q in queued {
            placed.push(match q {
                Ok((ctx, rx)) => match rx.await {
                    Ok(Ok((outcome, t))) => self.finish_order(ctx, outcome, t).map(|p| p.order_id),
                    Ok(Err(e)) => Err(e.into()),
                    Err(_) => Err(GatewayError::Internal.into()),
                },
                Err(e) => Err(e),
            });
        }
        placed
    }

    /// Parses, verifies and queues a signed order for the writer (as a replace of `cancel`
    /// if given).
    #[allow(clippy::type_complexity)]
    fn prepare_signed_order(
        &self,
        params: &Value,
        owner_wallet: Option<Address>,
        cancel: Option<OrderRef>,
    ) -> Result<
        (
            OrderCtx,
            tokio::sync::oneshot::Receiver<Result<(optio_sequencer::Outcome, u64), GatewayError>>,
        ),
        CallError,
    > {
        let subaccount = uint(params, "subaccount_id")?;
        let account = AccountId(
            u32::try_from(subaccount)
                .map_err(|_| GatewayError::InvalidParams("subaccount_id".into()))?,
        );
        let name = string(params, "instrument_name")?;
        let side = match string(params, "direction")? {
            "buy" => Side::Buy,
            "sell" => Side::Sell,
            _ => {
                return Err(
                    GatewayError::InvalidParams("direction must be buy or sell".into()).into(),
                );
            }
        };
        let order_type = string(params, "order_type").unwrap_or("limit");
        let tif = params
            .get("time_in_force")
            .and_then(Value::as_str)
            .unwrap_or("gtc");
        let price = decimal(params, "limit_price", 6)?;
        let amount = decimal(params, "amount", 8)?;
        let max_fee = decimal(params, "max_fee", 6)?;
        let nonce: u64 = string(params, "nonce")?
            .parse()
            .map_err(|_| GatewayError::InvalidParams("nonce must be a decimal string".into()))?;
        let expiry = uint(params, "signature_expiry_sec")?;
        let signer = parse_address(string(params, "signer")?)
            .ok_or_else(|| GatewayError::InvalidParams("signer".into()))?;
        let signature =
            parse_hex(string(params, "signature")?).ok_or(GatewayError::BadSignature)?;
        let label = params.get("label").and_then(Value::as_str).unwrap_or("");
        if label.len() > 64 {
            return Err(GatewayError::InvalidParams("label longer than 64".into()).into());
        }
        let reduce_only = params
            .get("reduce_only")
            .and_then(Value::as_bool)
            .unwrap_or(false);

        let (instrument, owner, fee_rate, step, max_price, may_trade) = {
            let node = self.lock();
            let engine = node.sequencer.engine();
            let instrument = views::instrument_id(&node.sequencer, name)?;
            let owner = engine.account_owner(account).ok_or(CallError::Engine(
                optio_types::RejectCode::UnknownAccount,
                None,
            ))?;
            // The owner, or a session key the owner registered (the signature is checked to
            // recover to this signer below).
            let may_trade = engine.may_trade(account, to_engine(signer));
            let view = engine
                .instruments()
                .nth(instrument.0 as usize)
                .ok_or(GatewayError::Internal)?;
            (
                instrument,
                owner,
                view.spec.taker_fee.0.max(view.spec.maker_fee.0),
                view.spec.amount_step.0,
                view.spec.max_price().map_err(|_| GatewayError::Internal)?.0,
                may_trade,
            )
        };
        if let Some(wallet) = owner_wallet
            && wallet != owner.0
        {
            return Err(GatewayError::NotOwner.into());
        }
        // Off-step amounts are refused before the signature: ccxt signs the amount truncated to
        // the step but sends it as given, so the signature could not match anyway.
        if amount % step != 0 {
            return Err(CallError::Engine(optio_types::RejectCode::InvalidQty, None));
        }
        // What the user signed, rebuilt from the request (18-decimal fixed point).
        let data = TradeData::from_engine_units(
            self.config.verifying_contract,
            instrument.0,
            price,
            amount,
            max_fee,
            subaccount,
            side == Side::Buy,
        );
        let action = Action {
            subaccount_id: subaccount,
            nonce,
            module: optio_intents::DERIVE_TRADE_MODULE,
            data: data.encode(),
            expiry,
            owner: owner.0,
            signer,
        };
        let (domain, digest) = self
            .domains
            .iter()
            .map(|(domain, separator)| (*domain, action.digest(separator)))
            .find(|(_, digest)| recover(digest, &signature).is_ok_and(|who| who == signer))
            .ok_or(GatewayError::BadSignature)?;
        if !may_trade {
            return Err(GatewayError::NotOwner.into());
        }
        if !self.owner_limits.take(&owner.0, self.config.clock.now_ms()) {
            return Err(GatewayError::RateLimited.into());
        }
        let now_ms = self.config.clock.now_ms();
        let now_s = now_ms / 1_000;
        if expiry <= now_s || expiry > now_s + self.config.max_signature_lifetime_s {
            return Err(GatewayError::SignatureExpiry.into());
        }
        // The most fee the order can pay must fit the signed maximum. What the maximum bounds
        // follows from what was signed, whichever API brought it: under Derive's domains the fee
        // per contract (Derive's meaning of `max_fee`), under Optio's the order's fees in
        // total. Fees are a rate of the fill's notional: a buy fills at its limit or below, a
        // sell at its limit or above, up to the instrument's maximum price (a taker sell sweeps
        // bids above its limit), at the higher of the instrument's two rates (a resting order
        // fills as a maker). So the fills never pass the cap as L1 judges it
        // (`optio_state::auth::overcharged`, the order challenge).
        let worst_price = match side {
            Side::Buy => price,
            Side::Sell => max_price,
        };
        let worst_fee = optio_state::auth::fee_cap_needed(worst_price, amount, fee_rate, domain);
        if worst_fee > i128::from(max_fee) {
            return Err(GatewayError::MaxFeeTooLow(
                Price(i64::try_from(worst_fee).unwrap_or(i64::MAX)).to_string(),
            )
            .into());
        }
        let (order_type, time_in_force, post_only) = match (order_type, tif) {
            ("limit", "gtc") => (
                OrderType::Limit {
                    price: Price(price),
                },
                TimeInForce::GoodTillCancelled,
                false,
            ),
            ("limit", "post_only") => (
                OrderType::Limit {
                    price: Price(price),
                },
                TimeInForce::GoodTillCancelled,
                true,
            ),
            ("limit", "ioc") => (
                OrderType::Limit {
                    price: Price(price),
                },
                TimeInForce::ImmediateOrCancel,
                false,
            ),
            ("limit", "fok") => (
                OrderType::Limit {
                    price: Price(price),
                },
                TimeInForce::FillOrKill,
                false,
            ),
            ("market", "ioc" | "gtc") => (
                OrderType::Market {
                    protection_price: Some(Price(price)),
                },
                TimeInForce::ImmediateOrCancel,
                false,
            ),
            ("market", "fok") => (
                OrderType::Market {
                    protection_price: Some(Price(price)),
                },
                TimeInForce::FillOrKill,
                false,
            ),
            _ => {
                return Err(
                    GatewayError::InvalidParams("order_type / time_in_force".into()).into(),
                );
            }
        };
        self.take_nonce(owner.0, nonce, expiry, now_ms)?;
        let client_order_id = if label.is_empty() { 0 } else { label_id(label) };
        let order = NewOrder {
            account,
            instrument,
            side,
            qty: Qty(amount),
            order_type,
            time_in_force,
            post_only,
            reduce_only,
            self_trade: SelfTradePrevention::CancelTaker,
            client_order_id,
            // The engine holds a key's order to the key's life (and refuses it once the key is
            // gone, whatever this check saw).
            session_key: (signer != owner.0).then_some(to_engine(signer)),
        };
        let command = match cancel {
            Some(cancel) => Command::Replace { cancel, order },
            None => Command::PlaceOrder(order),
        };
        let intent = optio_sequencer::Intent {
            digest,
            owner: owner.0,
            nonce,
            expiry,
            signature: signature
                .as_slice()
                .try_into()
                .map_err(|_| GatewayError::BadSignature)?,
            label: optio_sequencer::Label::new(label)
                .ok_or_else(|| GatewayError::InvalidParams("label longer than 64".into()))?,
            order: Some(optio_sequencer::OrderSigning {
                signer,
                max_fee,
                domain,
            }),
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let placed = Some((
            side,
            Price(price),
            Qty(amount),
            label.to_owned(),
            Some(nonce),
        ));
        self.jobs
            .send(Job {
                input: command,
                intent: Some(intent),
                placed,
                reply: Reply::Async(reply),
            })
            .map_err(|_| GatewayError::Internal)?;
        let ctx = OrderCtx {
            name: name.to_owned(),
            side,
            price: Price(price),
            amount: Qty(amount),
            label: label.to_owned(),
            expiry,
            signer,
            signature: params.get("signature").cloned().unwrap_or(Value::Null),
            max_fee: Price(max_fee),
        };
        Ok((ctx, answer))
    }

    fn finish_order(
        &self,
        ctx: OrderCtx,
        outcome: optio_sequencer::Outcome,
        t: u64,
    ) -> Result<PlacedOrder, CallError> {
        let receipt = views::receipt(&outcome.receipt);
        if let Err(code) = outcome.result {
            return Err(CallError::Engine(code, Some(receipt)));
        }
        let order_id = outcome.events.iter().find_map(|e| match e {
            optio_types::Event::OrderAccepted { order, .. } => Some(order.0),
            _ => None,
        });
        Ok(PlacedOrder {
            order_id: order_id.unwrap_or(0),
            name: ctx.name,
            side: ctx.side,
            price: ctx.price,
            amount: ctx.amount,
            label: ctx.label,
            events: outcome.events,
            receipt,
            time_ms: t,
            expiry: ctx.expiry,
            signer: ctx.signer,
            signature: ctx.signature,
            max_fee: ctx.max_fee,
        })
    }

    /// The engine's state hash (tests and operators compare it across replicas and restarts).
    pub fn state_hash(&self) -> [u8; 32] {
        self.lock().sequencer.engine().state_hash()
    }

    /// Prometheus text exposition.
    pub fn metrics(&self) -> String {
        // Read before taking the node's lock: the provers' files are on disk.
        let batch_stats = self
            .batch_stats
            .as_ref()
            .and_then(|s| s.lock().ok().map(|s| s.clone()));
        let proving = batch_stats
            .as_ref()
            .map(|s| batching::proving_progress(&s.dir, s.pruned.through));
        // The nonces behind their own lock, also before the node's.
        let remembered = self
            .nonces
            .lock()
            .map_or(0, |mut n| n.count(self.config.clock.now_ms() / 1_000));
        let node = self.lock();
        let engine = node.sequencer.engine();
        let now = self.config.clock.now_ms();
        let mut out = String::new();
        out.push_str(
            "# HELP optio_sequence Next sequence number.\n# TYPE optio_sequence counter\n",
        );
        out.push_str(&format!("optio_sequence {}\n", node.sequencer.next_seq()));
        out.push_str(
            "# HELP optio_engine_rules The engine rules version this node applies (and its log was written under).\n# TYPE optio_engine_rules gauge\n",
        );
        out.push_str(&format!("optio_engine_rules {}\n", optio_engine::RULES));
        out.push_str("# HELP optio_wal_groups_total Group commits (one fsync each).\n# TYPE optio_wal_groups_total counter\n");
        out.push_str(&format!("optio_wal_groups_total {}\n", node.groups));
        out.push_str("# HELP optio_wal_group_inputs_total Signed orders carried by group commits.\n# TYPE optio_wal_group_inputs_total counter\n");
        out.push_str(&format!(
            "optio_wal_group_inputs_total {}\n",
            node.grouped_inputs
        ));
        // (Listing the log's segments: a few directory entries.)
        let (segments, bytes) = node.sequencer.log_size().unwrap_or((0, 0));
        out.push_str("# HELP optio_wal_segments Log segment files on disk.\n# TYPE optio_wal_segments gauge\n");
        out.push_str(&format!("optio_wal_segments {segments}\n"));
        out.push_str("# HELP optio_wal_bytes Log bytes on disk (segments a snapshot covers, with every input batched, are deleted).\n# TYPE optio_wal_bytes gauge\n");
        out.push_str(&format!("optio_wal_bytes {bytes}\n"));
        out.push_str("# HELP optio_wal_trimmed_bytes_total Log bytes deleted after snapshots since start.\n# TYPE optio_wal_trimmed_bytes_total counter\n");
        out.push_str(&format!(
            "optio_wal_trimmed_bytes_total {}\n",
            self.log_trimmed()
        ));
        out.push_str("# HELP optio_nonces_remembered Nonces held for replay protection (those whose date is within the window and whose signature lives).\n# TYPE optio_nonces_remembered gauge\n");
        out.push_str(&format!("optio_nonces_remembered {remembered}\n"));
        out.push_str("# HELP optio_l1_priority_served L1 priority operations (deposits, forced withdrawals) sequenced.\n# TYPE optio_l1_priority_served counter\n");
        out.push_str(&format!(
            "optio_l1_priority_served {}\n",
            engine.priority_served()
        ));
        let l1 = *self.l1.borrow();
        for (name, seq, help) in [
            ("committed", l1.committed_seq, "committed on L1"),
            (
                "proven",
                l1.proven_seq,
                "proven on L1 (validity proof verified, with every batch before it)",
            ),
            ("finalized", l1.finalized_seq, "finalized on L1"),
        ] {
            out.push_str(&format!("# HELP optio_l1_{name}_seq Last sequence number {help}.\n# TYPE optio_l1_{name}_seq gauge\n"));
            out.push_str(&format!("optio_l1_{name}_seq {seq}\n"));
        }
        // Inputs wait for L1 since the committed batches last reached further (or since this
        // node opened), while any sequenced input is beyond them.
        let waiting = node.sequencer.next_seq().saturating_sub(1) > l1.committed_seq;
        let since = node.committed.last().map_or(node.opened_ms, |(_, at)| *at);
        out.push_str("# HELP optio_l1_commit_wait_seconds How long sequenced inputs have waited for L1 to commit further (0 when all are committed; counted from this node's start before its first L1 report): alert well before the rollup's maxBatchLag (24 h by default), past which a cut batch can no longer be committed.\n# TYPE optio_l1_commit_wait_seconds gauge\n");
        out.push_str(&format!(
            "optio_l1_commit_wait_seconds {}\n",
            if waiting {
                now.saturating_sub(since) / 1_000
            } else {
                0
            }
        ));
        if let Some(seconds) = node.priority_deadline_s {
            out.push_str("# HELP optio_l1_priority_deadline_seconds Seconds (L1 time) until the oldest L1 priority operation (deposit, forced withdrawal or close) that no finalized batch has served is overdue: at 0 anyone may freeze the rollup. Absent when none waits. Alert well above the finalization delay: a refused operation (a forced close the backstop cannot take, code 6002) stalls the queue.\n# TYPE optio_l1_priority_deadline_seconds gauge\n");
            out.push_str(&format!("optio_l1_priority_deadline_seconds {seconds}\n"));
        }
        if let Some((held, books)) = node.vault {
            out.push_str("# HELP optio_l1_vault_held_micro_usdc The token balance the rollup holds.\n# TYPE optio_l1_vault_held_micro_usdc gauge\n");
            out.push_str(&format!("optio_l1_vault_held_micro_usdc {held}\n"));
            out.push_str("# HELP optio_l1_vault_shortfall_micro_usdc How far the token balance the rollup holds is below its books (every token taken in less every one paid out): above 0 the token took money from the vault (a fee on transfer, a rebase, a seizure), and the last users to withdraw or exit would not be paid. Alert on any value above 0; `optio verify` also compares the books with the state.\n# TYPE optio_l1_vault_shortfall_micro_usdc gauge\n");
            out.push_str(&format!(
                "optio_l1_vault_shortfall_micro_usdc {}\n",
                books.saturating_sub(held)
            ));
        }
        if let (Some(stats), Some((proven, unprovable, seconds))) = (batch_stats, proving) {
            let pruned = &stats.pruned;
            out.push_str("# HELP optio_batches_proven_total Batches with a validity proof (optio prove run), pruned ones included.\n# TYPE optio_batches_proven_total counter\n");
            out.push_str(&format!(
                "optio_batches_proven_total {}\n",
                pruned.proofs + proven
            ));
            out.push_str("# HELP optio_batches_unprovable_total Batches the circuit cannot prove (too large for the shape, or ops in an order it does not keep), pruned ones included.\n# TYPE optio_batches_unprovable_total counter\n");
            out.push_str(&format!(
                "optio_batches_unprovable_total {}\n",
                pruned.unprovable + unprovable
            ));
            out.push_str("# HELP optio_proving_lag_batches Written batches neither proven nor marked unprovable.\n# TYPE optio_proving_lag_batches gauge\n");
            out.push_str(&format!(
                "optio_proving_lag_batches {}\n",
                stats
                    .number
                    .saturating_sub(pruned.through + proven + unprovable)
            ));
            out.push_str("# HELP optio_batches_pruned_through The files of the batches up to this one are deleted (finalized on L1, behind a checkpoint of the state after it); 0 if none.\n# TYPE optio_batches_pruned_through gauge\n");
            out.push_str(&format!(
                "optio_batches_pruned_through {}\n",
                pruned.through
            ));
            out.push_str("# HELP optio_batches_finalized The last batch L1 has finalized, as the settler reported it.\n# TYPE optio_batches_finalized gauge\n");
            out.push_str(&format!("optio_batches_finalized {}\n", stats.finalized));
            out.push_str("# HELP optio_batches_prune_failed 1 if the last checkpoint or prune of the batches directory failed (see the logs: the files stay, the batcher goes on).\n# TYPE optio_batches_prune_failed gauge\n");
            out.push_str(&format!(
                "optio_batches_prune_failed {}\n",
                u8::from(pruned.failed.is_some())
            ));
            if let Some(seconds) = seconds {
                out.push_str("# HELP optio_prove_seconds Proving time of the newest proof.\n# TYPE optio_prove_seconds gauge\n");
                out.push_str(&format!("optio_prove_seconds {seconds}\n"));
            }
            out.push_str("# HELP optio_batches_total Settlement batches written.\n# TYPE optio_batches_total counter\n");
            out.push_str(&format!("optio_batches_total {}\n", stats.number));
            out.push_str("# HELP optio_batch_lag_inputs Sequenced inputs the batcher has not taken yet.\n# TYPE optio_batch_lag_inputs gauge\n");
            out.push_str(&format!(
                "optio_batch_lag_inputs {}\n",
                node.sequencer
                    .next_seq()
                    .saturating_sub(1)
                    .saturating_sub(stats.last_seq)
            ));
            out.push_str("# HELP optio_batch_queue_overflow Inputs waiting beyond the batcher's full queue (backpressure).\n# TYPE optio_batch_queue_overflow gauge\n");
            out.push_str(&format!("optio_batch_queue_overflow {}\n", stats.overflow));
            out.push_str("# HELP optio_batch_blob_bytes_total Data blob bytes written.\n# TYPE optio_batch_blob_bytes_total counter\n");
            out.push_str(&format!("optio_batch_blob_bytes_total {}\n", stats.bytes));
            out.push_str("# HELP optio_batch_fills_total Fills in written batches.\n# TYPE optio_batch_fills_total counter\n");
            out.push_str(&format!("optio_batch_fills_total {}\n", stats.fills));
            out.push_str("# HELP optio_batcher_failed 1 if the batcher stopped (see the logs).\n# TYPE optio_batcher_failed gauge\n");
            out.push_str(&format!(
                "optio_batcher_failed {}\n",
                u8::from(stats.failed.is_some())
            ));
        }
        out.push_str(
            "# HELP optio_ws_sessions Live WebSocket sessions.\n# TYPE optio_ws_sessions gauge\n",
        );
        out.push_str(&format!("optio_ws_sessions {}\n", self.ws_sessions()));
        out.push_str(
            "# HELP optio_open_orders Open orders on all books.\n# TYPE optio_open_orders gauge\n",
        );
        out.push_str(&format!("optio_open_orders {}\n", engine.open_orders()));
        out.push_str(
            "# HELP optio_oracle_index Accepted index price.\n# TYPE optio_oracle_index gauge\n",
        );
        out.push_str("# HELP optio_oracle_age_seconds Age of the accepted index.\n# TYPE optio_oracle_age_seconds gauge\n");
        out.push_str("# HELP optio_oracle_held 1 while the circuit breaker holds a jump.\n# TYPE optio_oracle_held gauge\n");
        for u in engine.underlyings() {
            if let Some(o) = engine.oracle(u) {
                out.push_str(&format!(
                    "optio_oracle_index{{underlying=\"{u}\"}} {}\n",
                    o.index_price
                ));
                out.push_str(&format!(
                    "optio_oracle_age_seconds{{underlying=\"{u}\"}} {:.3}\n",
                    now.saturating_sub(o.published_ms) as f64 / 1e3
                ));
                out.push_str(&format!(
                    "optio_oracle_held{{underlying=\"{u}\"}} {}\n",
                    u8::from(o.held.is_some())
                ));
            }
        }
        out
    }
}

async fn rpc_body(State(g): State<Arc<Gateway>>, headers: HeaderMap, body: Bytes) -> Response {
    dispatch(g, headers, body, None).await
}

async fn rpc_path(
    State(g): State<Arc<Gateway>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    dispatch(g, headers, body, Some(method)).await
}

/// Most requests in one JSON-RPC batch.
pub const MAX_BATCH: usize = 32;

/// A JSON-RPC request's id, method and params, or the error envelope to answer with.
fn parse_request(
    mut request: Value,
    path_method: Option<&String>,
) -> Result<(Value, String, Value), Value> {
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let Some(object) = request.as_object_mut() else {
        return Err(rpc::err(
            &id,
            &GatewayError::InvalidRequest("request must be an object").into(),
        ));
    };
    let (method, params) = match path_method {
        Some(m) => {
            let params = object.remove("params");
            (m.clone(), params.unwrap_or(request))
        }
        None => {
            if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
                return Err(rpc::err(
                    &id,
                    &GatewayError::InvalidRequest("jsonrpc must be \"2.0\"").into(),
                ));
            }
            match object.get("method").and_then(Value::as_str) {
                Some(m) if m.len() <= 64 => (
                    m.to_owned(),
                    object
                        .remove("params")
                        .unwrap_or(Value::Object(Default::default())),
                ),
                _ => {
                    return Err(rpc::err(
                        &id,
                        &GatewayError::InvalidRequest("method must be a string").into(),
                    ));
                }
            }
        }
    };
    if !params.is_object() {
        return Err(rpc::err(
            &id,
            &GatewayError::InvalidParams("params must be an object".into()).into(),
        ));
    }
    Ok((id, method, params))
}

async fn dispatch(
    g: Arc<Gateway>,
    headers: HeaderMap,
    body: Bytes,
    path_method: Option<String>,
) -> Response {
    let reply = match serde_json::from_slice::<Value>(&body) {
        Err(_) => rpc::err(&Value::Null, &GatewayError::Parse.into()),
        // A JSON-RPC 2.0 batch (on /api/v2 only): answered in order, its signed orders verified
        // concurrently and sequenced in the same group commits.
        Ok(Value::Array(requests)) if path_method.is_none() => {
            if requests.is_empty() || requests.len() > MAX_BATCH {
                rpc::err(
                    &Value::Null,
                    &GatewayError::InvalidRequest("a batch holds 1 to 32 requests").into(),
                )
            } else {
                let handles: Vec<_> = requests
                    .into_iter()
                    .map(|r| tokio::spawn(answer(g.clone(), headers.clone(), r, None)))
                    .collect();
                let mut replies = Vec::with_capacity(handles.len());
                for h in handles {
                    replies.push(h.await.unwrap_or_else(|_| {
                        rpc::err(&Value::Null, &GatewayError::Internal.into())
                    }));
                }
                Value::Array(replies)
            }
        }
        Ok(request) => answer(g, headers, request, path_method).await,
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        reply.to_string(),
    )
        .into_response()
}

/// Answers one JSON-RPC request.
async fn answer(
    g: Arc<Gateway>,
    headers: HeaderMap,
    request: Value,
    path_method: Option<String>,
) -> Value {
    let (id, method, mut params) = match parse_request(request, path_method.as_ref()) {
        Ok(parsed) => parsed,
        Err(envelope) => return envelope,
    };
    // Signed orders: verify on this task and wait for the group commit without holding a thread,
    // so that many orders share one fsync.
    if matches!(
        method.as_str(),
        "private/order" | "private/buy" | "private/sell"
    ) {
        // Deribit-style `private/buy` and `private/sell` are `private/order` with the direction
        // in the method name (it is still part of what the user signed).
        if let Some(direction) = method.strip_prefix("private/").filter(|d| *d != "order") {
            params["direction"] = json!(direction);
        }
        return match g.place_signed_order_async(&params, None).await {
            Ok(placed) => rpc::ok(
                &id,
                views::order_result(
                    &placed.name,
                    placed.side,
                    placed.price,
                    placed.amount,
                    &placed.label,
                    &placed.events,
                    placed.receipt,
                    placed.time_ms,
                ),
            ),
            Err(e) => rpc::err(&id, &e),
        };
    }
    tokio::task::spawn_blocking(move || match g.call(&method, &params, &headers) {
        Ok(result) => rpc::ok(&id, result),
        Err(e) => rpc::err(&id, &e),
    })
    .await
    .unwrap_or_else(|_| rpc::err(&Value::Null, &GatewayError::Internal.into()))
}

async fn metrics(State(g): State<Arc<Gateway>>) -> Response {
    let text = tokio::task::spawn_blocking(move || g.metrics())
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn health(State(g): State<Arc<Gateway>>) -> Response {
    let (seq, hash, key) = tokio::task::spawn_blocking(move || {
        let node = g.lock();
        let hash = views::hex(&node.sequencer.engine().state_hash())[2..].to_owned();
        let key = views::hex(&node.sequencer.public_key().serialize());
        (node.sequencer.next_seq(), hash, key)
    })
    .await
    .unwrap_or_default();
    let body =
        json!({"status": "ok", "next_seq": seq, "state_hash": hash, "sequencer_public_key": key});
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Refuses requests beyond the client IP's rate (when the server provides peer addresses).
async fn ip_limit(
    State(g): State<Arc<Gateway>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let ip = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    if let Some(ip) = ip
        && !g.ip_limits.take(&ip, g.config.clock.now_ms())
    {
        let body = rpc::err(&Value::Null, &GatewayError::RateLimited.into()).to_string();
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
    }
    next.run(request).await
}

/// Serves `router(gateway)` on `listener` with peer addresses (for per-IP limits).
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Arc<Gateway>,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(gateway).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .await
}

/// The HTTP router: `POST /api/v2` (JSON-RPC 2.0 body), `POST /api/v2/{method}` (params body),
/// `GET /ws`, `GET /health`, `GET /metrics`, and the Derive-compatible `/public/*`, `/private/*`.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .merge(derive::routes())
        .route("/api/v2", post(rpc_body))
        .route("/api/v2/{*method}", post(rpc_path))
        .route("/health", get(health))
        .route("/ws", get(ws::upgrade))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            gateway.clone(),
            ip_limit,
        ))
        .with_state(gateway)
}

/// A signed order that was sequenced and accepted.
pub(crate) struct PlacedOrder {
    pub order_id: u64,
    pub name: String,
    pub side: Side,
    pub price: Price,
    pub amount: Qty,
    pub label: String,
    pub events: Vec<optio_types::Event>,
    pub receipt: Value,
    pub time_ms: u64,
    pub expiry: u64,
    pub signer: Address,
    pub signature: Value,
    pub max_fee: Price,
}

impl PlacedOrder {
    /// The native API's result for it (`private/order`'s).
    fn result(self) -> Value {
        views::order_result(
            &self.name,
            self.side,
            self.price,
            self.amount,
            &self.label,
            &self.events,
            self.receipt,
            self.time_ms,
        )
    }
}

/// Which instrument a name is.
pub fn instrument_of(gateway: &Gateway, name: &str) -> Option<InstrumentId> {
    views::instrument_id(&gateway.lock().sequencer, name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot's nonces come back owner by owner, each with its expiry; a list cut short,
    /// or an owner that is no address, is malformed; a version 1 snapshot has none.
    #[test]
    fn a_snapshot_keeps_the_nonces_in_use() {
        let views: Views = (history::History::default(), BTreeMap::new(), Vec::new());
        let nonces = vec![
            ([1; 20], 1_765_000_000_001, 1_765_003_600),
            ([2; 20], 7, 1_765_000_060),
            ([1; 20], 1_765_000_000_002, 1_765_003_601),
        ];
        let bytes = encode_views(&views, &nonces);
        let (_, mut back) = restore_views(&bytes).expect("restores");
        let mut want = nonces.clone();
        back.sort();
        want.sort();
        assert_eq!(back, want);
        let text = String::from_utf8(bytes).expect("utf-8");
        let odd = text.replace(",1765003601]", "]");
        assert!(odd != text && restore_views(odd.as_bytes()).is_none());
        let short = text.replace(&views::hex(&[2; 20]), "0x0202");
        assert!(restore_views(short.as_bytes()).is_none());
        let v1 = text.replace("\"version\":2", "\"version\":1").replace(
            &format!(
                ",\"nonces\":{}",
                &text[text.find("[[\"0x").expect("nonces")..text.len() - 1]
            ),
            "",
        );
        assert!(!v1.contains("nonces"), "{v1}");
        let (_, none) = restore_views(v1.as_bytes()).expect("a version 1 snapshot restores");
        assert!(none.is_empty());
    }

    /// A nonce's date is its leading 13 digits, whatever follows (ccxt's 6 digits, Derive's
    /// documented 3); a shorter one has none.
    #[test]
    fn a_nonce_is_dated_by_its_leading_13_digits() {
        let ms = 1_795_609_712_925;
        assert_eq!(nonce_date_ms(1_795_609_712_925_298_321), Some(ms));
        assert_eq!(nonce_date_ms(1_795_609_712_925_298), Some(ms));
        assert_eq!(nonce_date_ms(ms), Some(ms));
        assert_eq!(nonce_date_ms(dated_nonce(ms, 1_234_567)), Some(ms));
        for short in [0, 7, 179_560_971_292] {
            assert_eq!(nonce_date_ms(short), None, "{short}");
        }
        assert_eq!(next_nonce(0, ms), dated_nonce(ms, 0));
        assert_eq!(next_nonce(dated_nonce(ms, 5), ms), dated_nonce(ms, 6));
    }

    /// Replay protection holds a nonce only while it could be taken: until its date leaves the
    /// window or its signature expires, whichever is first. A replay inside is refused as used,
    /// after it for its date; the count falls to zero with nothing else arriving.
    #[test]
    fn a_nonce_is_remembered_only_while_its_date_is_in_the_window() {
        let (owner, window) = ([1; 20], 600_000);
        let t = 1_795_609_712_000;
        let long_life = t / 1_000 + 90 * 86_400;
        let mut nonces = Nonces::default();
        let ccxt = dated_nonce(t, 42);
        assert_eq!(nonces.take(owner, ccxt, long_life, t, window), Ok(()));
        let short = dated_nonce(t, 43);
        assert_eq!(nonces.take(owner, short, t / 1_000 + 60, t, window), Ok(()));
        assert_eq!(nonces.count(t / 1_000), 2);
        // The 60 s signature is forgotten after its expiry, the 90-day one after its window.
        assert_eq!(nonces.count(t / 1_000 + 61), 1);
        let late = t + window;
        assert_eq!(
            nonces.take(owner, ccxt, long_life, late, window),
            Err(NonceRefusal::Used)
        );
        assert_eq!(nonces.count(late / 1_000 + 1), 0);
        assert_eq!(
            nonces.take(owner, ccxt, long_life, late + 1_000, window),
            Err(NonceRefusal::Date)
        );
        // Dates ahead of the clock: within the window taken, beyond it refused; undated refused.
        assert_eq!(
            nonces.take(owner, dated_nonce(t + window, 0), long_life, t, window),
            Ok(())
        );
        for undated in [dated_nonce(t + window + 1, 0), 7] {
            assert_eq!(
                nonces.take(owner, undated, long_life, t, window),
                Err(NonceRefusal::Date)
            );
        }
        // Another owner's nonce of the same value is its own.
        assert_eq!(nonces.take([2; 20], ccxt, long_life, t, window), Ok(()));
    }
}
