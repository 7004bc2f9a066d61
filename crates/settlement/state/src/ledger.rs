//! The settlement state: accounts, instruments and funds as the ops leave them, with their
//! trees. `apply_batch` applies a whole batch or nothing; `commit` rehashes what the batch
//! touched and returns the new root.

use std::collections::{BTreeMap, BTreeSet};

use optio_types::{
    AccountId, Address, Amount, CanonicalState, InstrumentId, InstrumentKind, InstrumentSpec,
    InstrumentStatus, MarginMode, Price, QTY_SCALE, Qty, max_liquidation_fee, stress_range,
    within_liquidation_schedule,
};

use crate::leaf::{self, ACCOUNT_DEPTH, AccountLeaf, INSTRUMENT_DEPTH, InstrumentLeaf, status};
use crate::ops::Op;
use crate::poseidon::Fr;
use crate::smt::{Proof, SparseMerkleTree};
use crate::store::{Records, RedbStore, StoreError, TreeStore};
use ark_ff::PrimeField;

type Tree = SparseMerkleTree<TreeStore>;

/// Namespaces of the trees in the store: 0 accounts, 1 instruments, 2 + id an account's
/// positions.
const ACCOUNTS_NS: u32 = 0;
const INSTRUMENTS_NS: u32 = 1;
const POSITIONS_NS: u32 = 2;

/// Why a batch does not apply (nothing was applied).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Op `index` names an account that does not exist.
    #[error("op {0}: unknown account")]
    UnknownAccount(usize),
    /// Op `index` names an instrument that does not exist.
    #[error("op {0}: unknown instrument")]
    UnknownInstrument(usize),
    /// Op `index` would overflow an amount or exceed the trees' capacity.
    #[error("op {0}: out of range")]
    OutOfRange(usize),
    /// Op `op` serves an L1 priority operation out of queue order.
    #[error("op {op}: L1 priority operation {got} served, {expected} is next")]
    PriorityOutOfOrder {
        /// Index of the op.
        op: usize,
        /// The next id in the queue.
        expected: u64,
        /// The id the op names.
        got: u64,
    },
    /// Op `index` breaks loss sharing: a share that is not positive, a deficit cover taking a
    /// negative amount or whose `socialized` differs from the shares since the previous cover,
    /// or shares left unclaimed at the end of the batch.
    #[error("op {0}: loss shares do not match the deficit they cover")]
    SharesUnbalanced(usize),
    /// Op `index` breaks an expiry settlement: a position settled that the account does not
    /// hold, or whose cash is not `floor(value * qty / 1e16)` at the settlement price; an
    /// instrument settled that is neither expired nor settled at that price, or whose insurance
    /// credit is not minus its payouts or exceeds a micro-USDC per holder paid; or a position
    /// settled with no settlement of its instrument after it.
    #[error("op {0}: the settlement does not pay the committed value")]
    Settlement(usize),
    /// Op `index` marks a settled instrument (its mark is its settlement value for good).
    #[error("op {0}: a mark of a settled instrument")]
    MarkSettled(usize),
    /// Op `index` marks an instrument below zero or above its worst-case payoff per contract
    /// (`leaf::payoff`): every committed mark lies in `[0, payoff]`, so an account covering what
    /// its shorts can owe at worst is solvent at any committed marks.
    #[error("op {0}: a mark below zero or above the instrument's worst-case payoff")]
    MarkBeyondPayoff(usize),
    /// Op `index` pays a withdrawal to someone other than the account's owner (a forced
    /// withdrawal requested by someone else moves nothing).
    #[error("op {0}: the withdrawal names another owner than the account's")]
    WrongOwner(usize),
    /// Op `index` breaks the loss waterfall: a loss share that leaves its account below zero,
    /// or a deficit cover of an account that holds a position, that leaves insurance or the fee
    /// pool below zero or the account above zero, takes from the fee pool while insurance holds
    /// something, or claims shares while either does.
    #[error(
        "op {0}: the deficit cover breaks the waterfall (insurance, the fee pool, then shares)"
    )]
    Waterfall(usize),
    /// Op `index` serves its owner's forced withdrawal with another amount than all that leaves
    /// the account covering what its shorts can owe at worst, less a micro-USDC a position it
    /// held when the batch started (`optio_types::forced_withdrawal` of its collateral, its
    /// leaf's liability and count): all of a flat account's collateral.
    #[error("op {0}: the forced withdrawal does not take what the account is owed")]
    ShortExit(usize),
    /// Op `index` liquidates at a price outside the stress range of the instrument's committed
    /// mark and risk array (`optio_types::stress_range`) on the liquidated account's side: a
    /// long sold below the low end, or a short bought back above the high end; or further from
    /// the committed mark than the proven schedule's discount of the contract's value at the
    /// committed index, from the account's auction's start (its leaf's `since`) to the
    /// committed oracle time (`optio_types::within_liquidation_schedule`).
    #[error("op {0}: the liquidation's price is beyond the committed stress range or schedule")]
    LiquidationPrice(usize),
    /// Op `index` liquidates an account whose auction never started: its leaf's `since` is 0
    /// (the engine posts a start, `Op::LiquidationStart`, before any step).
    #[error("op {0}: the liquidated account's auction has not started")]
    LiquidationNotStarted(usize),
    /// Op `index` ends the auction of an account that could default and falls short of its
    /// margin mode's maintenance at the committed marks (`Op::LiquidationEnd`: the engine ends
    /// an auction only once its account is cured, flat and solvent, or covers its shorts).
    #[error("op {0}: the auction's account is still below maintenance and could default")]
    LiquidationNotCured(usize),
    /// Op `index` has an account in liquidation (its leaf's `since` is not 0) fill an order,
    /// withdraw, transfer out or change its margin mode (the account is frozen until its
    /// auction's end is posted, `Op::LiquidationEnd`; a margin mode's change is checked with the
    /// `since` the batch leaves).
    #[error("op {0}: the account is in liquidation (frozen until its auction ends)")]
    Frozen(usize),
    /// Op `index` charges a liquidation fee below zero or above `optio_types::
    /// max_liquidation_fee` (the fee at `MAX_LIQUIDATION_FEE_BPS` of the contracts' value at
    /// the index committed with the instrument's mark, clamped to its cap).
    #[error("op {0}: the liquidation's fee is above its bound")]
    LiquidationFee(usize),
    /// Op `index` liquidates more than the account holds, or in the direction that would open
    /// or grow its position: a liquidation only reduces one.
    #[error("op {0}: the liquidation does not reduce the account's position")]
    LiquidationSize(usize),
    /// Op `index` trades an account with itself (a fill whose maker is its taker, a
    /// liquidation to the liquidated account): the engine's self-trade prevention and its
    /// liquidations never do, and the circuit tracks a trade's two sides apart.
    #[error("op {0}: a trade between an account and itself")]
    SelfTrade(usize),
    /// Op `index` liquidates an account whose collateral covers what its shorts can owe at
    /// worst (`collateral * 1e8 >= liability`, the leaf's `sum |q| * W`): it can pay all it may
    /// ever owe, and the engine never liquidates it.
    #[error("op {0}: the liquidated account covers its shorts' worst case")]
    LiquidationCovered(usize),
    /// Op `index` liquidates an account that, right before the op, meets its margin mode's
    /// proven maintenance rule at the committed marks within the engine's rounding
    /// (`SettlementState::below_maintenance`, with the mode the batch started with: a
    /// `WorstCase` account is never liquidated); the engine liquidates only accounts below its
    /// maintenance.
    #[error("op {0}: the liquidated account is not below maintenance at the committed marks")]
    LiquidationMaintained(usize),
    /// Op `index` charges a liquidation fee that leaves the liquidated account with equity
    /// below zero at the committed marks (`SettlementState::equity` after the op): the engine
    /// caps the fee at the account's equity after the position moved (none once it is gone).
    #[error("op {0}: the liquidation's fee is above the account's equity at the committed marks")]
    LiquidationFeeBeyondEquity(usize),
    /// Op `index`, the last fill of an account in the batch (or liquidation that moved a
    /// position to it), leaves that account with equity below zero at the committed marks
    /// (those before the batch's): `collateral * 1e8 + sum_i q_i * mark_i < 0` over every
    /// position it holds after the batch's other ops (`SettlementState::equity`; a missing
    /// mark counts 0).
    #[error("op {0}: the fill leaves its account with equity below zero at the committed marks")]
    Insolvent(usize),
    /// Op `index`, the last fill of a `WorstCase` account in the batch (or liquidation that
    /// moved a position to it, or change of its margin mode), leaves that account in
    /// `WorstCase` with collateral short of what its shorts can owe at worst: `collateral * 1e8
    /// < liability` (the leaf's `sum |q| * W`). The engine keeps a `WorstCase` account's balance
    /// at or above its requirement, which rounds each short's payoff up, always.
    #[error("op {0}: the account's collateral falls short of its shorts' worst case in WorstCase")]
    Uncovered(usize),
    /// Op `index`, the last fill of a `Portfolio` or `Standard` account in the batch (as maker
    /// or taker), leaves that account in that mode below the proven maintenance rule of the
    /// mode at the committed marks, indices and risk arrays (those before the batch's):
    /// `SettlementState::maintained`. The engine fills a maker only at or above its maintenance
    /// and a taker at its initial margin, either of which implies the rule.
    #[error("op {0}: the fill leaves its account below maintenance at the committed marks")]
    Unmaintained(usize),
    /// Op `index` serves a forced close with another quantity or price than the rule's: when
    /// the requester owns the account and the instrument is active and marked, all of the
    /// account's position at the committed mark; otherwise, or when it holds none, nothing at
    /// a price of 0. Or it follows its instrument's expiry or settlement in the batch (the
    /// circuit applies those after the op slots: such a close starts the next batch). A close
    /// between an account and itself is a `SelfTrade`.
    #[error("op {0}: the forced close does not move the whole position at the committed mark")]
    ForcedClose(usize),
    /// Op `index` covers the deficit of an account that filled earlier in the batch: the cover
    /// would hide what the fill left.
    #[error("op {0}: the deficit cover follows a fill of the same account in the batch")]
    CoverAfterFill(usize),
}

/// One account.
#[derive(Debug, Clone)]
pub struct Account {
    /// Owner.
    pub owner: Address,
    /// Margin mode (an opening's is `WorstCase`, as the engine's).
    pub mode: MarginMode,
    /// Session keys and their expiry (ms).
    pub keys: BTreeMap<Address, u64>,
    /// Withdrawals processed.
    pub nonce: u64,
    /// Collateral.
    pub collateral: Amount,
    /// Open positions by instrument id.
    pub positions: BTreeMap<u32, Qty>,
    /// The committed oracle time (ms) its latest liquidation auction started at; 0 if none
    /// ever did (`Op::LiquidationStart`).
    pub since: u64,
    tree: Tree,
    dirty_positions: BTreeSet<u32>,
}

/// One instrument.
#[derive(Debug, Clone)]
pub struct Instrument {
    /// Spec.
    pub spec: InstrumentSpec,
    spec_hash: Fr,
    /// One of `leaf::status::*`.
    pub status: u64,
    /// Last committed mark.
    pub mark: Price,
    /// The underlying's index committed with the last mark (0 before the first and once
    /// settled).
    pub index: Price,
    /// Last committed risk array.
    pub risk: Vec<Amount>,
    /// Settlement price.
    pub settlement_price: Price,
}

impl Instrument {
    /// Its leaf's fields.
    pub fn leaf(&self) -> InstrumentLeaf {
        InstrumentLeaf {
            spec_hash: self.spec_hash,
            status: self.status,
            mark: self.mark,
            risk_hash: leaf::risk_hash(self.index, &self.risk),
            settlement_price: self.settlement_price,
        }
    }
}

/// The settlement state.
#[derive(Debug, Clone)]
pub struct SettlementState {
    accounts: Vec<Account>,
    instruments: Vec<Instrument>,
    insurance: Amount,
    fee_pool: Amount,
    /// The latest publication time of the oracle updates whose marks were committed
    /// (`leaf::Counts::oracle_ms`).
    oracle_ms: u64,
    /// L1 priority operations served so far (the next one served has this id). Not in the
    /// root: each batch header carries it, and `optio verify` checks it against the L1 queue.
    priority_served: u64,
    account_tree: Tree,
    instrument_tree: Tree,
    dirty_accounts: BTreeSet<u32>,
    dirty_instruments: BTreeSet<u32>,
    /// The file the state persists to (`None`: in memory only), and what changed since the
    /// last `persist`.
    store: Option<RedbStore>,
    unsaved_accounts: BTreeSet<u32>,
    unsaved_instruments: BTreeSet<u32>,
    /// Order authorizations to write with the next `persist`.
    unsaved_orders: BTreeMap<u64, Option<[u8; crate::auth::RECORD_BYTES]>>,
    /// Meta values staged for the next `persist` (`stage_meta`).
    unsaved_meta: Vec<(&'static str, Vec<u8>)>,
}

impl Default for SettlementState {
    fn default() -> Self {
        Self::new()
    }
}

/// What an account can take to L1 to exit: its leaf, its positions and the instruments' leaves,
/// each with its Merkle proof, against one state root (the layout of docs/settlement.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitProof {
    /// The state root the proofs are against.
    pub root: Fr,
    /// Root of the accounts tree.
    pub accounts_root: Fr,
    /// Root of the instruments tree.
    pub instruments_root: Fr,
    /// Insurance fund.
    pub insurance: Amount,
    /// Fee pool.
    pub fee_pool: Amount,
    /// Accounts opened (the next account id).
    pub accounts: u32,
    /// Instruments listed (the next instrument id).
    pub instruments: u32,
    /// The committed oracle time (`leaf::Counts::oracle_ms`).
    pub oracle_ms: u64,
    /// The account's id.
    pub account: AccountId,
    /// Its leaf.
    pub leaf: AccountLeaf,
    /// Its proof in the accounts tree.
    pub account_proof: Proof,
    /// Each open position: instrument, quantity, proof in the account's positions tree, the
    /// instrument's leaf and its proof in the instruments tree.
    pub positions: Vec<(InstrumentId, Qty, Proof, InstrumentLeaf, Proof)>,
}

impl ExitProof {
    /// One proof for the instrument leaves of `positions` (indices into `self.positions`, by
    /// instrument id) against the instruments root, as L1 takes it (`ExitProof.
    /// instrumentSiblings`, `InstrumentsOpening.siblings`): the nodes the leaves do not give,
    /// level by level from the leaves up, within a level by parent, within a parent in slot
    /// order, taken from the leaves' own proofs (for each parent, the path of a leaf below it).
    pub fn instrument_siblings(&self, positions: &[usize]) -> Vec<Fr> {
        let id = |k: usize| u64::from(self.positions[k].0.0);
        // Per node of the current level: its index, and a leaf below it (whose path passes it).
        let mut level: Vec<(u64, usize)> = positions.iter().map(|&k| (id(k), k)).collect();
        let mut siblings = Vec::new();
        for h in 0..usize::from(leaf::INSTRUMENT_DEPTH / 2) {
            let mut up = Vec::with_capacity(level.len());
            let mut i = 0;
            while i < level.len() {
                let (first, below) = level[i];
                let parent = first >> 2;
                let slot = ((id(below) >> (2 * h)) & 3) as usize;
                let path = &self.positions[below].4.siblings;
                for j in 0..4 {
                    if i < level.len() && level[i].0 == 4 * parent + j as u64 {
                        i += 1;
                    } else {
                        siblings.push(path[3 * h + if j < slot { j } else { j - 1 }]);
                    }
                }
                up.push((parent, below));
            }
            level = up;
        }
        siblings
    }

    /// Every proof checks against `root` (what the L1 exit function checks).
    pub fn verify(&self) -> bool {
        leaf::state_root(
            self.accounts_root,
            self.instruments_root,
            leaf::funds_hash(
                self.insurance,
                self.fee_pool,
                leaf::Counts {
                    accounts: self.accounts,
                    instruments: self.instruments,
                    oracle_ms: self.oracle_ms,
                },
            ),
        ) == self.root
            && self.account_proof.index == u64::from(self.account.0)
            && crate::smt::verify(self.accounts_root, self.leaf.hash(), &self.account_proof)
            && self
                .positions
                .iter()
                .all(|(instrument, qty, proof, inst, inst_proof)| {
                    proof.index == u64::from(instrument.0)
                        && inst_proof.index == u64::from(instrument.0)
                        && crate::smt::verify(
                            self.leaf.positions_root,
                            leaf::position_leaf(*qty),
                            proof,
                        )
                        && crate::smt::verify(self.instruments_root, inst.hash(), inst_proof)
                })
    }
}

/// The cash a forced close moves to the account whose position changes by `qty` at `price`: the
/// value `|qty| * price / 1e8` rounded against the account, paid (the ceiling) when it buys back
/// a short, received (the floor) when it sells a long. `None` past an `i64`.
pub fn close_cash(qty: Qty, price: Price) -> Option<i64> {
    let value = i128::from(qty.0) * i128::from(price.0);
    // Buying (`qty > 0`) pays `ceil(value / 1e8)`; selling gets `floor(-value / 1e8)`: both are
    // `floor(-value / 1e8)`.
    i64::try_from((-value).div_euclid(i128::from(QTY_SCALE))).ok()
}

fn add(a: Amount, b: i64, op: usize) -> Result<Amount, StateError> {
    a.0.checked_add(b)
        .map(Amount)
        .ok_or(StateError::OutOfRange(op))
}

impl SettlementState {
    /// The empty state (genesis).
    pub fn new() -> Self {
        Self {
            accounts: Vec::new(),
            instruments: Vec::new(),
            insurance: Amount::ZERO,
            oracle_ms: 0,
            fee_pool: Amount::ZERO,
            priority_served: 0,
            account_tree: Tree::with_store(ACCOUNT_DEPTH, TreeStore::default()),
            instrument_tree: Tree::with_store(INSTRUMENT_DEPTH, TreeStore::default()),
            dirty_accounts: BTreeSet::new(),
            dirty_instruments: BTreeSet::new(),
            store: None,
            unsaved_accounts: BTreeSet::new(),
            unsaved_instruments: BTreeSet::new(),
            unsaved_orders: BTreeMap::new(),
            unsaved_meta: Vec::new(),
        }
    }

    fn tree_store(&self, namespace: u32) -> TreeStore {
        self.store.as_ref().map_or_else(TreeStore::default, |s| {
            TreeStore::Redb(s.namespace(namespace))
        })
    }

    /// Opens the state persisted at `path` (an empty one if the file is new): the state, the
    /// batch it is the state after, and that batch's last sequence number. The stored root must
    /// be what the stored nodes give.
    pub fn open(path: &std::path::Path) -> Result<(Self, u64, u64), StoreError> {
        let store = RedbStore::open(path)?;
        let mut state = Self::new();
        let meta_u64 = |name: &str| -> Result<u64, StoreError> {
            Ok(store
                .meta(name)?
                .map(|v| {
                    v.try_into()
                        .map(u64::from_le_bytes)
                        .map_err(|_| StoreError::Corrupt("meta"))
                })
                .transpose()?
                .unwrap_or(0))
        };
        let (batch, last_seq) = (meta_u64("batch")?, meta_u64("last_seq")?);
        state.insurance = Amount(meta_u64("insurance")? as i64);
        state.fee_pool = Amount(meta_u64("fee_pool")? as i64);
        state.oracle_ms = meta_u64("oracle_ms")?;
        state.priority_served = meta_u64("priority_served")?;
        state.account_tree =
            Tree::with_store(ACCOUNT_DEPTH, TreeStore::Redb(store.namespace(ACCOUNTS_NS)));
        state.instrument_tree = Tree::with_store(
            INSTRUMENT_DEPTH,
            TreeStore::Redb(store.namespace(INSTRUMENTS_NS)),
        );
        let (accounts, instruments) = store.records()?;
        for (i, (id, bytes)) in instruments.iter().enumerate() {
            if *id as usize != i {
                return Err(StoreError::Corrupt("instrument ids"));
            }
            state
                .instruments
                .push(decode_instrument(bytes).ok_or(StoreError::Corrupt("instrument record"))?);
        }
        for (i, (id, bytes)) in accounts.iter().enumerate() {
            if *id as usize != i {
                return Err(StoreError::Corrupt("account ids"));
            }
            let tree = Tree::with_store(
                INSTRUMENT_DEPTH,
                TreeStore::Redb(store.namespace(POSITIONS_NS + id)),
            );
            state
                .accounts
                .push(decode_account(bytes, tree).ok_or(StoreError::Corrupt("account record"))?);
        }
        state.store = Some(store);
        if batch > 0 {
            let root = state
                .store
                .as_ref()
                .map(|s| s.meta("root"))
                .transpose()?
                .flatten();
            if root.as_deref() != Some(&crate::poseidon::to_bytes(&state.root())[..]) {
                return Err(StoreError::Corrupt(
                    "the stored root is not what the stored nodes give",
                ));
            }
        }
        Ok((state, batch, last_seq))
    }

    /// Writes what the batches since the last `persist` changed (tree nodes and records) to the
    /// file in one durable transaction, as the state after `batch` (ending at `last_seq`).
    /// Nothing to do for a state in memory. Call after `commit`.
    pub fn persist(&mut self, batch: u64, last_seq: u64) -> Result<(), StoreError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let records = Records {
            meta: vec![
                ("batch", batch.to_le_bytes().to_vec()),
                ("last_seq", last_seq.to_le_bytes().to_vec()),
                (
                    "insurance",
                    (self.insurance.0 as u64).to_le_bytes().to_vec(),
                ),
                ("fee_pool", (self.fee_pool.0 as u64).to_le_bytes().to_vec()),
                ("oracle_ms", self.oracle_ms.to_le_bytes().to_vec()),
                (
                    "priority_served",
                    self.priority_served.to_le_bytes().to_vec(),
                ),
                ("root", crate::poseidon::to_bytes(&self.root()).to_vec()),
            ]
            .into_iter()
            .chain(std::mem::take(&mut self.unsaved_meta))
            .collect(),
            accounts: self
                .unsaved_accounts
                .iter()
                .map(|id| (*id, encode_account(&self.accounts[*id as usize])))
                .collect(),
            instruments: self
                .unsaved_instruments
                .iter()
                .map(|id| (*id, encode_instrument(&self.instruments[*id as usize])))
                .collect(),
            orders: std::mem::take(&mut self.unsaved_orders)
                .into_iter()
                .map(|(id, r)| (id, r.map(|r| r.to_vec())))
                .collect(),
        };
        store.commit(&records)?;
        self.unsaved_accounts.clear();
        self.unsaved_instruments.clear();
        Ok(())
    }

    /// The state as a checkpoint (`crate::checkpoint`): the state after `batch` (ending at
    /// `last_seq`) in memory-independent form, its records and funds with its root, from which
    /// `from_checkpoint` rebuilds the trees; then what the batcher keeps beside it in the same
    /// file (its signed orders that may still fill, and its kept values, `CARRIED_META`), as
    /// persisted, so that `restore` can make a lost state file again. Call after `persist` (a
    /// state in memory carries none).
    pub fn checkpoint_bytes(&self, batch: u64, last_seq: u64) -> Result<Vec<u8>, StoreError> {
        let mut w = optio_types::codec::Writer::default();
        w.bytes.extend_from_slice(CHECKPOINT_MAGIC);
        w.bytes
            .extend_from_slice(&crate::poseidon::to_bytes(&self.root()));
        w.u64(batch);
        w.u64(last_seq);
        w.i64(self.insurance.0);
        w.i64(self.fee_pool.0);
        w.u64(self.oracle_ms);
        w.u64(self.priority_served);
        w.len(self.instruments.len());
        for x in &self.instruments {
            w.bytes(&encode_instrument(x));
        }
        w.len(self.accounts.len());
        for a in &self.accounts {
            w.bytes(&encode_account(a));
        }
        let orders = self.stored_orders()?;
        w.len(orders.len());
        for (id, record) in &orders {
            w.u64(*id);
            w.bytes(record);
        }
        let mut kept = Vec::new();
        for name in CARRIED_META {
            if let Some(value) = self.stored_meta(name)? {
                kept.push((*name, value));
            }
        }
        w.len(kept.len());
        for (name, value) in &kept {
            w.bytes(name.as_bytes());
            w.bytes(value);
        }
        let sum = checkpoint_sum(&w.bytes);
        w.bytes.extend_from_slice(&sum);
        Ok(w.bytes)
    }

    /// The state a checkpoint holds (in memory), the batch it is the state after and that
    /// batch's last sequence number. The trees are rebuilt from the records, and their root
    /// must be the one the checkpoint names. Reads both formats (1 carried no batcher values).
    pub fn from_checkpoint(bytes: &[u8]) -> Result<(Self, u64, u64), StoreError> {
        let (state, batch, last_seq, _) = Self::new().read_checkpoint(bytes)?;
        Ok((state, batch, last_seq))
    }

    /// Makes the state file at `path` again from a checkpoint of it (`checkpoint_bytes` of a
    /// file-backed state): the records and trees, and the batcher's signed orders and kept
    /// values, persisted as the state after the checkpoint's batch. The checkpoint is read in
    /// memory first; a damaged one, one of format 1 (no signed orders in it) or an existing
    /// file is refused and nothing is created (a failure while writing removes the file).
    pub fn restore(path: &std::path::Path, bytes: &[u8]) -> Result<(Self, u64, u64), StoreError> {
        if path.exists() {
            return Err(StoreError::Corrupt(
                "a state file is there: restore makes a missing one",
            ));
        }
        if Self::new().read_checkpoint(bytes)?.3.is_none() {
            return Err(StoreError::Corrupt(
                "the checkpoint is of format 1, which holds no signed orders",
            ));
        }
        let made = (|| {
            let (fresh, _, _) = Self::open(path)?;
            let (mut state, batch, last_seq, carried) = fresh.read_checkpoint(bytes)?;
            let carried = carried.unwrap_or_default();
            state.unsaved_accounts = (0..state.accounts.len() as u32).collect();
            state.unsaved_instruments = (0..state.instruments.len() as u32).collect();
            let orders: Vec<_> = carried
                .orders
                .into_iter()
                .map(|(id, r)| (id, Some(r)))
                .collect();
            state.stage_orders(&orders);
            for (name, value) in carried.meta {
                state.stage_meta(name, value);
            }
            state.persist(batch, last_seq)?;
            Ok((state, batch, last_seq))
        })();
        if made.is_err() {
            let _ = std::fs::remove_file(path);
        }
        made
    }

    /// Reads a checkpoint into `self` (empty: in memory, or a new file's), its account
    /// positions' trees in `self`'s store; commits and checks the root. Also the batcher's
    /// values it carries (none for format 1).
    fn read_checkpoint(
        mut self,
        bytes: &[u8],
    ) -> Result<(Self, u64, u64, Option<Carried>), StoreError> {
        let corrupt = |_| StoreError::Corrupt("checkpoint truncated or malformed");
        // Damage anywhere (the funds and counts too, and the priority operations served, which
        // no root covers) fails the checksum.
        let (body, _) = bytes
            .split_last_chunk::<32>()
            .filter(|(body, sum)| checkpoint_sum(body) == **sum)
            .ok_or(StoreError::Corrupt("checkpoint checksum"))?;
        let (rest, carries) = match body.split_first_chunk::<8>() {
            Some((magic, rest)) if magic == CHECKPOINT_MAGIC => (rest, true),
            Some((magic, rest)) if magic == CHECKPOINT_MAGIC_1 => (rest, false),
            _ => return Err(StoreError::Corrupt("not a checkpoint (magic)")),
        };
        let (root, rest) = rest
            .split_first_chunk::<32>()
            .ok_or(StoreError::Corrupt("checkpoint truncated or malformed"))?;
        let mut r = optio_types::codec::Reader::new(rest);
        let (batch, last_seq) = (r.u64().map_err(corrupt)?, r.u64().map_err(corrupt)?);
        self.insurance = Amount(r.i64().map_err(corrupt)?);
        self.fee_pool = Amount(r.i64().map_err(corrupt)?);
        self.oracle_ms = r.u64().map_err(corrupt)?;
        self.priority_served = r.u64().map_err(corrupt)?;
        for id in 0..r.len(1usize << INSTRUMENT_DEPTH).map_err(corrupt)? {
            let bytes = r.bytes(1 << 20).map_err(corrupt)?;
            self.instruments
                .push(decode_instrument(bytes).ok_or(StoreError::Corrupt("instrument record"))?);
            self.dirty_instruments.insert(id as u32);
        }
        for id in 0..r.len(1usize << ACCOUNT_DEPTH).map_err(corrupt)? {
            let bytes = r.bytes(1 << 20).map_err(corrupt)?;
            let tree =
                Tree::with_store(INSTRUMENT_DEPTH, self.tree_store(POSITIONS_NS + id as u32));
            let mut account =
                decode_account(bytes, tree).ok_or(StoreError::Corrupt("account record"))?;
            account.dirty_positions = account.positions.keys().copied().collect();
            self.accounts.push(account);
            self.dirty_accounts.insert(id as u32);
        }
        let carried = if carries {
            let mut carried = Carried::default();
            for _ in 0..r.len(1 << 32).map_err(corrupt)? {
                let id = r.u64().map_err(corrupt)?;
                let record = r.bytes(crate::auth::RECORD_BYTES).map_err(corrupt)?;
                carried.orders.push((
                    id,
                    record
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("order record"))?,
                ));
            }
            for _ in 0..r.len(CARRIED_META.len()).map_err(corrupt)? {
                let name = r.bytes(64).map_err(corrupt)?;
                let name = CARRIED_META
                    .iter()
                    .find(|n| n.as_bytes() == name)
                    .ok_or(StoreError::Corrupt("a kept value of an unknown name"))?;
                carried
                    .meta
                    .push((name, r.bytes(1 << 24).map_err(corrupt)?.to_vec()));
            }
            Some(carried)
        } else {
            None
        };
        r.finish().map_err(corrupt)?;
        if crate::poseidon::to_bytes(&self.commit()) != *root {
            return Err(StoreError::Corrupt(
                "the checkpoint's records do not give the root it names",
            ));
        }
        Ok((self, batch, last_seq, carried))
    }

    /// Stages changes to the batcher's signed orders (`auth::Orders::take_changes`), written
    /// with the state by the next `persist` (the orders are not settlement state: no root
    /// covers them; they are kept in the same file so that both are as of the same batch).
    pub fn stage_orders(&mut self, changes: &[(u64, Option<[u8; crate::auth::RECORD_BYTES]>)]) {
        if self.store.is_some() {
            self.unsaved_orders.extend(changes.iter().copied());
        }
    }

    /// Stages a value the batcher keeps beside the state (not settlement state: no root covers
    /// it), written under `name` by the next `persist`, as of the same batch.
    pub fn stage_meta(&mut self, name: &'static str, value: Vec<u8>) {
        if self.store.is_some() {
            self.unsaved_meta.retain(|(n, _)| *n != name);
            self.unsaved_meta.push((name, value));
        }
    }

    /// The value persisted under `name` by `stage_meta` (none for a state in memory).
    pub fn stored_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match &self.store {
            Some(store) => store.meta(name),
            None => Ok(None),
        }
    }

    /// The signed orders persisted with the state (none for a state in memory).
    pub fn stored_orders(&self) -> Result<Vec<(u64, [u8; crate::auth::RECORD_BYTES])>, StoreError> {
        let Some(store) = &self.store else {
            return Ok(Vec::new());
        };
        store
            .orders()?
            .into_iter()
            .map(|(id, bytes)| {
                Ok((
                    id,
                    bytes
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("order record"))?,
                ))
            })
            .collect()
    }

    /// Accounts by id.
    pub fn accounts(&self) -> &[Account] {
        &self.accounts
    }

    /// Instruments by id.
    pub fn instruments(&self) -> &[Instrument] {
        &self.instruments
    }

    /// Insurance fund and fee pool.
    pub fn funds(&self) -> (Amount, Amount) {
        (self.insurance, self.fee_pool)
    }

    /// L1 priority operations served so far (the id of the next one).
    pub fn priority_served(&self) -> u64 {
        self.priority_served
    }

    /// Root of the accounts tree as of the last `commit`.
    pub fn accounts_root(&self) -> Fr {
        self.account_tree.root()
    }

    /// Root of the instruments tree as of the last `commit`.
    pub fn instruments_root(&self) -> Fr {
        self.instrument_tree.root()
    }

    /// Proof of account `id`'s leaf in the accounts tree (as of the last `commit`; an id not yet
    /// opened proves the empty leaf).
    pub fn account_proof(&self, id: AccountId) -> Proof {
        self.account_tree
            .prove(u64::from(id.0))
            .expect("a u32 id fits the accounts tree")
    }

    /// Proof of instrument `id`'s leaf in the instruments tree (as of the last `commit`; an id
    /// not yet listed proves the empty leaf).
    pub fn instrument_proof(&self, id: InstrumentId) -> Option<Proof> {
        self.instrument_tree.prove(u64::from(id.0)).ok()
    }

    /// What the stress rule lets leave `account` at the committed marks and risk arrays
    /// (docs/risk.md, "Withdrawals"; the engine's `stress_free`, the circuit's margin slot):
    /// `floor(min_s (collateral * 1e8 + sum_i q_i * (mark_i + RA_i[s])) / 1e8)` over every
    /// scenario and the no-move one, an array shorter than the longest counting 0 past its end.
    /// Negative when the account is short of it in some scenario; `None` for an unknown account.
    pub fn stress_free(&self, account: AccountId) -> Option<i128> {
        let a = self.accounts.get(account.0 as usize)?;
        let instruments = a
            .positions
            .iter()
            .filter_map(|(id, q)| Some((q.0, self.instruments.get(*id as usize)?)));
        let scenarios = instruments
            .clone()
            .map(|(_, x)| x.risk.len())
            .max()
            .unwrap_or(0);
        let mut totals = vec![i128::from(a.collateral.0) * i128::from(QTY_SCALE); scenarios + 1];
        for (q, x) in instruments {
            for (s, total) in totals.iter_mut().enumerate() {
                let ra = x.risk.get(s).map_or(0, |v| v.0);
                *total += i128::from(q) * (i128::from(x.mark.0) + i128::from(ra));
            }
        }
        let lowest = totals.into_iter().min().unwrap_or(0);
        Some(lowest.div_euclid(i128::from(QTY_SCALE)))
    }

    /// Each instrument's worst-case payoff per contract, by id
    /// (`InstrumentSpec::max_payoff_per_contract`, 0 for a spec without one, which listing
    /// refuses): what an account leaf's liability weighs each short by.
    pub fn payoffs(&self) -> Vec<i64> {
        self.instruments
            .iter()
            .map(|x| leaf::payoff(&x.spec))
            .collect()
    }

    /// The root as of the last `commit`.
    pub fn root(&self) -> Fr {
        leaf::state_root(
            self.account_tree.root(),
            self.instrument_tree.root(),
            leaf::funds_hash(self.insurance, self.fee_pool, self.counts()),
        )
    }

    /// The funds leaf's counts: accounts opened, instruments listed, the committed oracle time.
    pub fn counts(&self) -> leaf::Counts {
        leaf::Counts {
            accounts: self.accounts.len() as u32,
            instruments: self.instruments.len() as u32,
            oracle_ms: self.oracle_ms,
        }
    }

    /// The latest publication time (ms) of the oracle updates whose marks the state committed
    /// (0 before the first mark).
    pub fn oracle_ms(&self) -> u64 {
        self.oracle_ms
    }

    /// Checks that every op names what exists (counting what the batch itself creates), so that
    /// `apply_batch` either applies all or nothing.
    fn validate(&self, ops: &[Op]) -> Result<(), StateError> {
        let (mut accounts, mut instruments) =
            (self.accounts.len() as u64, self.instruments.len() as u64);
        // Loss shares since the last deficit cover, and the index of the last one.
        let (mut shared, mut last_share) = (0i128, 0);
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::LossShared { amount, .. } => {
                    if amount.0 <= 0 {
                        return Err(StateError::SharesUnbalanced(i));
                    }
                    shared += i128::from(amount.0);
                    last_share = i;
                }
                Op::DeficitCovered {
                    insurance,
                    fee_pool,
                    socialized,
                    ..
                } => {
                    if insurance.0 < 0 || fee_pool.0 < 0 || i128::from(socialized.0) != shared {
                        return Err(StateError::SharesUnbalanced(i));
                    }
                    shared = 0;
                }
                _ => {}
            }
            let account = |a: &AccountId| {
                if u64::from(a.0) < accounts {
                    Ok(())
                } else {
                    Err(StateError::UnknownAccount(i))
                }
            };
            let instrument = |x: &InstrumentId| {
                if u64::from(x.0) < instruments {
                    Ok(())
                } else {
                    Err(StateError::UnknownInstrument(i))
                }
            };
            match op {
                Op::ListInstrument { .. } => {
                    instruments += 1;
                    if instruments > 1 << INSTRUMENT_DEPTH {
                        return Err(StateError::OutOfRange(i));
                    }
                }
                Op::OpenAccount { .. } => {
                    accounts += 1;
                    if accounts > 1 << ACCOUNT_DEPTH {
                        return Err(StateError::OutOfRange(i));
                    }
                }
                Op::ActivateInstrument { instrument: x }
                | Op::ExpireInstrument { instrument: x }
                | Op::SettleInstrument { instrument: x, .. }
                | Op::Mark { instrument: x, .. } => instrument(x)?,
                Op::SettlePosition {
                    account: a,
                    instrument: x,
                    ..
                } => {
                    account(a)?;
                    instrument(x)?;
                }
                Op::Deposit { account: a, .. }
                | Op::Withdraw { account: a, .. }
                | Op::L1Deposit { account: a, .. }
                | Op::L1Withdrawal { account: a, .. }
                | Op::LossShared { account: a, .. }
                | Op::DeficitCovered { account: a, .. }
                | Op::SessionKey { account: a, .. }
                | Op::LiquidationStart { account: a }
                | Op::LiquidationEnd { account: a }
                | Op::SetMarginMode { account: a, .. } => account(a)?,
                Op::Transfer { from, to, .. } => {
                    account(from)?;
                    account(to)?;
                }
                Op::Fill {
                    instrument: x,
                    maker,
                    taker,
                    ..
                } => {
                    instrument(x)?;
                    account(maker)?;
                    account(taker)?;
                }
                Op::Liquidation {
                    account: a,
                    counterparty,
                    instrument: x,
                    ..
                }
                | Op::L1Close {
                    account: a,
                    backstop: counterparty,
                    instrument: x,
                    ..
                } => {
                    instrument(x)?;
                    account(a)?;
                    account(counterparty)?;
                }
            }
        }
        if shared != 0 {
            return Err(StateError::SharesUnbalanced(last_share));
        }
        Ok(())
    }

    /// Applies a batch's ops in order: all of them, or (on error) none.
    pub fn apply_batch(&mut self, ops: &[Op]) -> Result<(), StateError> {
        self.validate(ops)?;
        // The batch runs on copies of what it touches; an op out of range drops the copies.
        let mut batch = self.begin();
        batch.push(self, ops)?;
        if let Some(&(.., op)) = batch.scratch.settling.first() {
            return Err(StateError::Settlement(op));
        }
        batch.scratch.write_back(self);
        Ok(())
    }

    /// A batch over this state, to gather input by input (`Pending::push`).
    pub fn begin(&self) -> Pending {
        Pending {
            scratch: Scratch {
                accounts: BTreeMap::new(),
                instruments: BTreeMap::new(),
                new_accounts: Vec::new(),
                new_instruments: Vec::new(),
                first_new_account: self.accounts.len() as u32,
                first_new_instrument: self.instruments.len() as u32,
                insurance: self.insurance,
                fee_pool: self.fee_pool,
                oracle_ms: self.oracle_ms,
                priority_served: self.priority_served,
                settling: Vec::new(),
                open_at_start: BTreeMap::new(),
            },
            filled: BTreeMap::new(),
            switched: BTreeMap::new(),
            traded: BTreeMap::new(),
            expired: BTreeSet::new(),
            ops: 0,
        }
    }

    /// `account`'s equity at the committed marks, times 1e8: `collateral * 1e8 + sum_i q_i *
    /// mark_i` over every position it holds (a missing mark counts 0); the no-move scenario of
    /// the stress rule. `None` for an unknown account.
    pub fn equity(&self, account: AccountId) -> Option<i128> {
        Some(self.equity_of(self.accounts.get(account.0 as usize)?))
    }

    /// Whether `account` meets the maintenance rule of its margin mode that the validity
    /// circuit proves of an account that traded, at the committed marks, indices and risk
    /// arrays (a missing mark, index or scenario counts 0). In 1e-12 micro-USDC, a total must
    /// be non-negative and cover `ceil(rate * sum |q_i| * index_i * multiplier_i / 1e12)` over
    /// its short calls and puts (the index committed with each one's mark: none once settled):
    /// - `Portfolio`: every total `collateral * 1e8 * 1e4 + sum_i q_i * (mark_i * 1e4 + RA_i[s] *
    ///   PROVEN_PM_MAINTENANCE_BPS)`, each scenario `s` and the no-move one, at the rate
    ///   `PROVEN_PM_SHORT_OPTION_FLOOR_BPS * PROVEN_PM_MAINTENANCE_BPS`;
    /// - `Standard`: the one total `collateral * 1e8 * 1e4 + sum_perpetuals (q * 1e4 - |q| *
    ///   PROVEN_STANDARD_PERP_MAINTENANCE_BPS) * mark - sum_short_options |q| * mark * 1e4 * (2,
    ///   or 1 once settled)`, at the rate `STANDARD_SHORT_OPTION_MAINTENANCE_BPS * 1e4` (a long
    ///   option counts nothing);
    /// - `WorstCase`: true (that mode is held to full collateral instead, `StateError::Uncovered`).
    ///
    /// `None` for an unknown account.
    pub fn maintained(&self, account: AccountId) -> Option<bool> {
        Some(self.maintained_at(self.accounts.get(account.0 as usize)?))
    }

    fn maintained_at(&self, a: &Account) -> bool {
        self.maintained_in(a.mode, a.collateral, &a.positions)
    }

    /// Whether an account in `mode` (not `WorstCase`: no totals) with `collateral` and
    /// `positions` meets that mode's proven maintenance rule at the committed marks.
    fn maintained_in(
        &self,
        mode: MarginMode,
        collateral: Amount,
        positions: &BTreeMap<u32, Qty>,
    ) -> bool {
        let rule = self.maintenance_rule(mode, collateral, positions);
        rule.totals.iter().all(|t| rule.covers(*t))
    }

    /// Whether an account in `mode` with `collateral` and `positions` falls short of that
    /// mode's proven maintenance rule (`maintained`) by more than the engine's rounding, at the
    /// committed marks, indices and risk arrays: `Some` of the first total short of its bound
    /// once `liquidation_rounding` of each position is taken off it (0 the no-move one, `1 + s` scenario `s`;
    /// `Standard` has only the first), `None` if every total covers it or the mode is
    /// `WorstCase` (never liquidated). The engine liquidates only accounts below its own
    /// maintenance, which rounds each position's part against the account by less than that
    /// allowance (at the proven rates, which `RiskConfig::unprovable` pins), so every account
    /// it liquidates is short of the rule; the validity proof checks it of every liquidation,
    /// before the op, with the mode the batch started with (`StateError::LiquidationMaintained`).
    pub fn below_maintenance(
        &self,
        mode: MarginMode,
        collateral: Amount,
        positions: &BTreeMap<u32, Qty>,
    ) -> Option<usize> {
        if mode == MarginMode::WorstCase {
            return None;
        }
        let rule = self.maintenance_rule(mode, collateral, positions);
        let allowance = positions
            .values()
            .filter(|q| q.0 != 0)
            .map(|q| liquidation_rounding(q.0))
            .sum::<i128>();
        rule.totals
            .iter()
            .position(|t| !rule.covers(*t - allowance))
    }

    /// `mode`'s proven maintenance rule (not `WorstCase`'s: no totals) for `collateral` and
    /// `positions` at the committed marks, indices and risk arrays (a missing mark, index or
    /// scenario counts 0). In 1e-12 micro-USDC, each total must be non-negative and cover
    /// `ceil(rate * sum |q_i| * index_i * multiplier_i / 1e12)` over the short calls and puts
    /// (the index committed with each one's mark: none once settled). See `maintained`.
    fn maintenance_rule(
        &self,
        mode: MarginMode,
        collateral: Amount,
        positions: &BTreeMap<u32, Qty>,
    ) -> MaintenanceRule {
        const BPS: i128 = 10_000;
        let held: Vec<(i128, Option<&Instrument>)> = positions
            .iter()
            .map(|(id, q)| (i128::from(q.0), self.instruments.get(*id as usize)))
            .collect();
        let option = |x: &Instrument| matches!(x.spec.name.kind, InstrumentKind::Option { .. });
        let mark = |x: Option<&Instrument>| x.map_or(0, |x| i128::from(x.mark.0));
        // The short options' `sum |q| * index * multiplier`, exactly in the field (terms below
        // 2^196, times a rate below 2^23 below 2^219).
        let shorts = held
            .iter()
            .filter_map(|(q, x)| match x {
                Some(x) if *q < 0 && option(x) => Some(
                    Fr::from(q.unsigned_abs())
                        * Fr::from(x.index.0.unsigned_abs())
                        * Fr::from(x.spec.contract_multiplier.0.unsigned_abs()),
                ),
                _ => None,
            })
            .sum::<Fr>();
        let cash = i128::from(collateral.0) * i128::from(QTY_SCALE) * BPS;
        match mode {
            MarginMode::WorstCase => MaintenanceRule {
                totals: Vec::new(),
                owed: Fr::from(0u64),
            },
            MarginMode::Standard => {
                let perp = i128::from(optio_types::PROVEN_STANDARD_PERP_MAINTENANCE_BPS);
                let total = held.iter().fold(cash, |acc, (q, x)| match x {
                    Some(x) if option(x) => {
                        let owed = if x.status == status::SETTLED { 1 } else { 2 };
                        acc - (-q).max(0) * mark(Some(x)) * BPS * owed
                    }
                    x => acc + (q * BPS - q.abs() * perp) * mark(*x),
                });
                let rate =
                    u64::from(optio_types::STANDARD_SHORT_OPTION_MAINTENANCE_BPS) * BPS as u64;
                MaintenanceRule {
                    totals: vec![total],
                    owed: shorts * Fr::from(rate),
                }
            }
            MarginMode::Portfolio => {
                let weight = i128::from(optio_types::PROVEN_PM_MAINTENANCE_BPS);
                let rate = u64::from(optio_types::PROVEN_PM_SHORT_OPTION_FLOOR_BPS)
                    * u64::from(optio_types::PROVEN_PM_MAINTENANCE_BPS);
                let scenarios = held
                    .iter()
                    .filter_map(|(_, x)| x.map(|x| x.risk.len()))
                    .max()
                    .unwrap_or(0);
                let base = held
                    .iter()
                    .fold(cash, |acc, (q, x)| acc + q * mark(*x) * BPS);
                let moved = (0..scenarios).map(|s| {
                    base + held.iter().fold(0i128, |acc, (q, x)| {
                        let ra = x.and_then(|x| x.risk.get(s)).map_or(0, |r| i128::from(r.0));
                        acc + q * ra * weight
                    })
                });
                MaintenanceRule {
                    totals: std::iter::once(base).chain(moved).collect(),
                    owed: shorts * Fr::from(rate),
                }
            }
        }
    }

    fn equity_of(&self, a: &Account) -> i128 {
        let marked = a.positions.iter().map(|(id, q)| {
            let mark = self.instruments.get(*id as usize).map_or(0, |x| x.mark.0);
            i128::from(q.0) * i128::from(mark)
        });
        i128::from(a.collateral.0) * i128::from(QTY_SCALE) + marked.sum::<i128>()
    }

    /// Rehashes what changed since the last commit (positions trees and account leaves on all
    /// cores, then each tree once per touched node) and returns the new root.
    pub fn commit(&mut self) -> Fr {
        let dirty: Vec<u32> = std::mem::take(&mut self.dirty_accounts)
            .into_iter()
            .collect();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let payoffs = self.payoffs();
        let payoffs = &payoffs;
        let mut touched: Vec<&mut Account> = Vec::with_capacity(dirty.len());
        {
            let mut rest = &mut self.accounts[..];
            let mut offset = 0u32;
            for &id in &dirty {
                let (_, tail) = rest.split_at_mut((id - offset) as usize);
                let (one, after) = tail.split_at_mut(1);
                touched.push(&mut one[0]);
                rest = after;
                offset = id + 1;
            }
        }
        let leaves: Vec<Fr> = if touched.len() >= 64 && threads > 1 {
            let chunk = touched.len().div_ceil(threads);
            std::thread::scope(|scope| {
                let handles: Vec<_> = touched
                    .chunks_mut(chunk)
                    .map(|c| {
                        scope.spawn(move || {
                            c.iter_mut().map(|a| a.rehash(payoffs)).collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().expect("hashing does not panic"))
                    .collect()
            })
        } else {
            touched.iter_mut().map(|a| a.rehash(payoffs)).collect()
        };
        let updates: Vec<(u64, Fr)> = dirty.iter().map(|a| u64::from(*a)).zip(leaves).collect();
        self.account_tree
            .set_many(&updates)
            .expect("account ids were validated against the depth");
        let instruments: Vec<(u64, Fr)> = std::mem::take(&mut self.dirty_instruments)
            .into_iter()
            .map(|i| (u64::from(i), self.instruments[i as usize].leaf().hash()))
            .collect();
        self.instrument_tree
            .set_many(&instruments)
            .expect("instrument ids were validated against the depth");
        self.root()
    }

    /// The exit proof of `account` against the last committed root.
    pub fn exit_proof(&self, account: AccountId) -> Option<ExitProof> {
        let a = self.accounts.get(account.0 as usize)?;
        let positions = a
            .positions
            .iter()
            .map(|(i, q)| {
                let inst = &self.instruments[*i as usize];
                let proof = a
                    .tree
                    .prove(u64::from(*i))
                    .expect("instrument ids fit the depth");
                let inst_proof = self
                    .instrument_tree
                    .prove(u64::from(*i))
                    .expect("instrument ids fit the depth");
                (InstrumentId(*i), *q, proof, inst.leaf(), inst_proof)
            })
            .collect();
        Some(ExitProof {
            root: self.root(),
            accounts_root: self.account_tree.root(),
            instruments_root: self.instrument_tree.root(),
            insurance: self.insurance,
            fee_pool: self.fee_pool,
            accounts: self.accounts.len() as u32,
            instruments: self.instruments.len() as u32,
            oracle_ms: self.oracle_ms,
            account,
            leaf: a.leaf(&self.payoffs()),
            account_proof: self
                .account_tree
                .prove(u64::from(account.0))
                .expect("account ids fit the depth"),
            positions,
        })
    }

    /// Where this state differs from the engine's (collateral, positions, owners, keys, funds, L1
    /// priority operations served, instrument status, marks and settlement prices); `None` when
    /// they agree. Tests check it after every batch of random histories, and `optio sim` at the
    /// end of every seed.
    pub fn diff_engine(&self, engine: &CanonicalState) -> Option<String> {
        if engine.accounts.len() != self.accounts.len()
            || engine.instruments.len() != self.instruments.len()
        {
            return Some(format!(
                "{} accounts and {} instruments, the engine has {} and {}",
                self.accounts.len(),
                self.instruments.len(),
                engine.accounts.len(),
                engine.instruments.len()
            ));
        }
        if engine.totals.priority_served != self.priority_served {
            return Some(format!(
                "{} L1 priority operations served, the engine has {}",
                self.priority_served, engine.totals.priority_served
            ));
        }
        if (engine.totals.insurance, engine.totals.fee_pool) != (self.insurance, self.fee_pool) {
            return Some(format!(
                "funds {:?}, the engine has {:?}",
                (self.insurance, self.fee_pool),
                (engine.totals.insurance, engine.totals.fee_pool)
            ));
        }
        for (i, (mine, theirs)) in self.accounts.iter().zip(&engine.accounts).enumerate() {
            let positions: BTreeMap<u32, Qty> = theirs
                .positions
                .iter()
                .filter(|p| p.qty.0 != 0)
                .map(|p| (p.instrument.0, p.qty))
                .collect();
            let keys: BTreeMap<Address, u64> = theirs.session_keys.iter().copied().collect();
            if mine.owner != theirs.owner
                || mine.mode != theirs.margin_mode
                || mine.collateral != theirs.balance
                || mine.positions != positions
                || mine.keys != keys
            {
                return Some(format!(
                    "account {i}: {:?} {:?} {:?} {:?}, the engine has {:?} {:?} {:?} {:?}",
                    mine.mode,
                    mine.collateral,
                    mine.positions,
                    mine.keys,
                    theirs.margin_mode,
                    theirs.balance,
                    positions,
                    keys
                ));
            }
        }
        for (i, (mine, theirs)) in self.instruments.iter().zip(&engine.instruments).enumerate() {
            let st = match theirs.status {
                InstrumentStatus::Listed => status::LISTED,
                InstrumentStatus::Active => status::ACTIVE,
                InstrumentStatus::Expired => status::EXPIRED,
                InstrumentStatus::Settled => status::SETTLED,
            };
            // A settled instrument's mark is its settlement value (the engine's too, but one
            // restored from a snapshot taken before it set that mark holds the oracle's last).
            let settled = theirs
                .settlement_price
                .and_then(|p| theirs.spec.settled_mark(p).ok());
            let mark = match settled {
                Some(m) => (m, Vec::new()),
                None => theirs
                    .mark
                    .as_ref()
                    .map_or((Price::ZERO, Vec::new()), |(p, r)| (*p, r.clone())),
            };
            if mine.spec != theirs.spec
                || mine.status != st
                || (mine.mark, mine.risk.clone()) != mark
                || Some(mine.settlement_price).filter(|p| p.0 != 0) != theirs.settlement_price
            {
                return Some(format!(
                    "instrument {i}: status {} mark {:?} settlement {:?}, the engine has {st} {:?} {:?}",
                    mine.status, mine.mark, mine.settlement_price, mark.0, theirs.settlement_price
                ));
            }
        }
        None
    }
}

/// One margin mode's proven maintenance totals (1e-12 micro-USDC) and what each must cover
/// (`owed / 1e12`, rounded up; `owed` exactly in the field).
struct MaintenanceRule {
    totals: Vec<i128>,
    owed: Fr,
}

impl MaintenanceRule {
    /// Whether `total` is non-negative and covers the bound: a total below 2^150 times 1e12
    /// is below 2^190, and `owed` below 2^219, so both compare as integers.
    fn covers(&self, total: i128) -> bool {
        total >= 0
            && (Fr::from(total.unsigned_abs()) * Fr::from(1_000_000_000_000u64)).into_bigint()
                >= self.owed.into_bigint()
    }
}

/// What the engine's rounding of one position's maintenance may add over the proven rule's
/// exact terms, in the rule's unit (1e-12 micro-USDC): less than 4 micro-USDC a position (its
/// value rounded down, its requirement, its scenario's move and its floor each rounded up by
/// less than one) and, for a short of `|q|` (1e-8 contracts), less than a micro-USDC a contract
/// (the per-contract rate of the index rounded up before it is multiplied by the size):
/// `ROUNDING_PER_POSITION + max(-q, 0) * ROUNDING_PER_SHORT`.
pub fn liquidation_rounding(q: i64) -> i128 {
    i128::from(ROUNDING_PER_POSITION) + i128::from(q.min(0)).abs() * i128::from(ROUNDING_PER_SHORT)
}

/// `liquidation_rounding`'s allowance per position held, 1e-12 micro-USDC: 4 micro-USDC.
pub const ROUNDING_PER_POSITION: u64 = 4_000_000_000_000;

/// `liquidation_rounding`'s allowance per short contract unit (1e-8 contracts), 1e-12
/// micro-USDC: a micro-USDC a contract.
pub const ROUNDING_PER_SHORT: u64 = 10_000;

impl Account {
    fn new(owner: Address, store: TreeStore) -> Self {
        Self {
            owner,
            mode: MarginMode::WorstCase,
            keys: BTreeMap::new(),
            nonce: 0,
            collateral: Amount::ZERO,
            positions: BTreeMap::new(),
            since: 0,
            tree: Tree::with_store(INSTRUMENT_DEPTH, store),
            dirty_positions: BTreeSet::new(),
        }
    }

    /// Whether it holds a position (a non-zero one).
    pub fn holds_position(&self) -> bool {
        self.positions.values().any(|q| q.0 != 0)
    }

    /// A copy without the positions tree (batches work on these; `write_back` moves the
    /// changes into the real account).
    fn light_clone(&self) -> Account {
        Account {
            owner: self.owner,
            mode: self.mode,
            keys: self.keys.clone(),
            nonce: self.nonce,
            collateral: self.collateral,
            positions: self.positions.clone(),
            since: self.since,
            tree: Tree::with_store(2, TreeStore::default()),
            dirty_positions: BTreeSet::new(),
        }
    }

    /// What its shorts can owe at worst, in 1e-8 micro-USDC (`leaf::liability`), `payoffs[id]`
    /// instrument `id`'s worst-case payoff per contract (`SettlementState::payoffs`).
    pub fn liability(&self, payoffs: &[i64]) -> u128 {
        leaf::liability(self.positions.iter().map(|(id, q)| (*id, *q)), |id| {
            payoffs.get(id as usize).copied().unwrap_or(0)
        })
    }

    /// Its leaf's fields (the positions root as of the last `commit`), `payoffs` as for
    /// `liability`.
    pub fn leaf(&self, payoffs: &[i64]) -> AccountLeaf {
        AccountLeaf {
            owner: self.owner,
            mode: self.mode,
            keys_hash: leaf::keys_hash(&self.keys),
            nonce: self.nonce,
            positions: self.positions.len() as u32,
            liability: self.liability(payoffs),
            collateral: self.collateral,
            positions_root: self.tree.root(),
            since: self.since,
        }
    }

    fn rehash(&mut self, payoffs: &[i64]) -> Fr {
        let updates: Vec<(u64, Fr)> = std::mem::take(&mut self.dirty_positions)
            .into_iter()
            .map(|i| {
                (
                    u64::from(i),
                    leaf::position_leaf(self.positions.get(&i).copied().unwrap_or(Qty::ZERO)),
                )
            })
            .collect();
        self.tree
            .set_many(&updates)
            .expect("instrument ids were validated against the depth");
        self.leaf(payoffs).hash()
    }

    fn move_position(&mut self, instrument: u32, delta: i64, op: usize) -> Result<(), StateError> {
        let q = self
            .positions
            .get(&instrument)
            .map_or(0, |q| q.0)
            .checked_add(delta)
            .ok_or(StateError::OutOfRange(op))?;
        if q == 0 {
            self.positions.remove(&instrument);
        } else {
            self.positions.insert(instrument, Qty(q));
        }
        self.dirty_positions.insert(instrument);
        Ok(())
    }
}

/// A batch being gathered over a state (`SettlementState::begin`): the accounts and
/// instruments as its ops so far leave them. A batcher pushes each input's ops and cuts the
/// batch before an input that does not apply, for example one whose fill leaves an account
/// insolvent at the committed marks (`StateError::Insolvent`), which the proof refuses.
pub struct Pending {
    scratch: Scratch,
    /// Accounts that filled in the batch or took a liquidated position, with the index of the
    /// last such op.
    filled: BTreeMap<u32, usize>,
    /// Accounts whose margin mode changed in the batch, with the index of the last change.
    switched: BTreeMap<u32, usize>,
    /// Accounts that traded in the batch (a fill's maker or taker), with the index of the last
    /// such fill.
    traded: BTreeMap<u32, usize>,
    /// Instruments the batch expired or settled so far (ops the circuit applies after the op
    /// slots).
    expired: BTreeSet<u32>,
    /// Ops pushed so far.
    ops: usize,
}

impl Pending {
    /// Applies the next `ops` of the batch to `state`, the state the batch started from (as of
    /// its last `commit`). On error the batch is spoiled: start another.
    ///
    /// Besides each op's own rules: every account that filled in the batch, or took a position
    /// from a liquidated account (a liquidator, or a holder deleveraged against it), is left
    /// with equity at the committed marks of at least zero by the ops that touch it
    /// (`SettlementState::equity`), and no deficit cover follows a fill of its account. Such an
    /// account, or one whose margin mode changed, that is left in `WorstCase` is left with
    /// collateral covering what its shorts can owe at worst (`collateral * 1e8 >= liability`).
    /// One that traded (a fill's maker or taker) and is left in `Portfolio` or `Standard` is
    /// left meeting that mode's proven maintenance rule (`SettlementState::maintained`).
    pub fn push(&mut self, state: &SettlementState, ops: &[Op]) -> Result<(), StateError> {
        let mut touched = BTreeSet::new();
        for (i, op) in (self.ops..).zip(ops) {
            self.scratch.load(state, op, i)?;
            // A frozen account (in liquidation) fills no order and moves no money out.
            let frozen = |a: &AccountId| {
                self.scratch
                    .accounts
                    .get(&a.0)
                    .is_some_and(|x| x.since != 0)
            };
            match op {
                Op::Fill { maker, taker, .. } if frozen(maker) || frozen(taker) => {
                    return Err(StateError::Frozen(i));
                }
                Op::Withdraw { account: a, .. } | Op::Transfer { from: a, .. } if frozen(a) => {
                    return Err(StateError::Frozen(i));
                }
                _ => {}
            }
            match op {
                Op::DeficitCovered { account, .. } if self.filled.contains_key(&account.0) => {
                    return Err(StateError::CoverAfterFill(i));
                }
                Op::Fill { maker, taker, .. } => {
                    if maker == taker {
                        return Err(StateError::SelfTrade(i));
                    }
                    self.filled.extend([(maker.0, i), (taker.0, i)]);
                    self.traded.extend([(maker.0, i), (taker.0, i)]);
                }
                Op::Liquidation {
                    account,
                    counterparty,
                    ..
                } => {
                    if account == counterparty {
                        return Err(StateError::SelfTrade(i));
                    }
                    self.filled.insert(counterparty.0, i);
                    self.liquidatable(state, *account, i)?;
                }
                Op::LiquidationStart { account } => self.liquidatable(state, *account, i)?,
                Op::LiquidationEnd { account } => self.cured(state, *account, i)?,
                Op::SetMarginMode { account, .. } => {
                    self.switched.insert(account.0, i);
                }
                Op::ExpireInstrument { instrument }
                | Op::SettleInstrument { instrument, .. }
                | Op::SettlePosition { instrument, .. } => {
                    self.expired.insert(instrument.0);
                }
                // A forced close moves the owner's whole position at the committed mark, or
                // nothing; the backstop takes it as any account that fills.
                Op::L1Close {
                    backstop,
                    account,
                    instrument,
                    qty,
                    price,
                    requester,
                    ..
                } => {
                    if backstop == account {
                        return Err(StateError::SelfTrade(i));
                    }
                    // The circuit serves it before the batch's expiries and settlements, at the
                    // status the batch starts with: one after them starts the next batch.
                    if self.expired.contains(&instrument.0) {
                        return Err(StateError::ForcedClose(i));
                    }
                    self.filled.insert(backstop.0, i);
                    let x = self.scratch.instrument(*instrument);
                    let (active, mark) = (x.status == status::ACTIVE, x.mark);
                    let a = self.scratch.account(*account);
                    let held = if a.owner == *requester && active && mark != Price::ZERO {
                        a.positions.get(&instrument.0).map_or(0, |q| q.0)
                    } else {
                        0
                    };
                    let mark = if held == 0 { Price::ZERO } else { mark };
                    if qty.0 != -held || *price != mark {
                        return Err(StateError::ForcedClose(i));
                    }
                }
                // The owner's forced withdrawal takes all that leaves the account covering what
                // its shorts can owe at worst, less a micro-USDC a position it held when the
                // batch started (`optio_types::forced_withdrawal`).
                Op::L1Withdrawal {
                    account,
                    amount,
                    requester,
                    ..
                } if self.scratch.account(*account).owner == *requester => {
                    let liability = self.scratch.liability(state, *account);
                    let collateral = self.scratch.account(*account).collateral.0;
                    let open = self.scratch.open_at_start.get(&account.0).copied();
                    let owed = optio_types::forced_withdrawal(
                        collateral,
                        liability as i128,
                        open.unwrap_or(0),
                    );
                    if amount.0 != owed {
                        return Err(StateError::ShortExit(i));
                    }
                }
                _ => {}
            }
            self.scratch.apply(i, op)?;
            // A liquidation fee is at most the account's equity after the position moved.
            if let Op::Liquidation { account, fee, .. } = op
                && fee.0 > 0
                && state.equity_of(self.scratch.account(*account)) < 0
            {
                return Err(StateError::LiquidationFeeBeyondEquity(i));
            }
            touched.extend(op.accounts().into_iter().map(|a| a.0));
        }
        self.ops += ops.len();
        for a in touched {
            // A margin mode's change, with the `since` the batch leaves (the circuit's account
            // slots come after its op slots).
            if let Some(&i) = self.switched.get(&a)
                && self.scratch.account(AccountId(a)).since != 0
            {
                return Err(StateError::Frozen(i));
            }
            let filled = self.filled.get(&a).copied();
            if let Some(i) = filled
                && state.equity_of(self.scratch.account(AccountId(a))) < 0
            {
                return Err(StateError::Insolvent(i));
            }
            let last = filled.max(self.switched.get(&a).copied());
            if let Some(i) = last
                && self.scratch.account(AccountId(a)).mode == MarginMode::WorstCase
                && !self.scratch.covers_shorts(state, AccountId(a))
            {
                return Err(StateError::Uncovered(i));
            }
            if let Some(&i) = self.traded.get(&a) {
                let account = self.scratch.account(AccountId(a));
                if !state.maintained_at(account) {
                    return Err(StateError::Unmaintained(i));
                }
            }
        }
        Ok(())
    }
}

impl Pending {
    /// Whether `account`, as the ops pushed so far leave it, covers what its shorts can owe at
    /// worst (`collateral * 1e8 >= liability`): an auction's end of such an account is proven
    /// by its op slot alone, with no margin slot (engine rules 6 budget it so). False for an
    /// account neither the state nor the batch holds.
    pub fn covers_shorts(&mut self, state: &SettlementState, account: AccountId) -> bool {
        self.scratch
            .load(state, &Op::LiquidationEnd { account }, 0)
            .is_ok()
            && self.scratch.covers_shorts(state, account)
    }

    /// Whether `account`, right before op `i`, may be liquidated (a liquidation step, or its
    /// auction's start): it could default (its collateral does not cover what its shorts can
    /// owe at worst), and it is below maintenance at the committed marks, in the mode it
    /// started the batch with (the circuit applies mode changes after the op slots).
    /// An auction's end: it started, and its account holds nothing, or covers what its shorts
    /// can owe at worst, or meets the maintenance rule of the mode the batch found it in at
    /// the committed marks, before the op (`StateError::LiquidationNotCured`).
    fn cured(
        &mut self,
        state: &SettlementState,
        account: AccountId,
        i: usize,
    ) -> Result<(), StateError> {
        if self.scratch.account(account).since == 0 {
            return Err(StateError::LiquidationNotStarted(i));
        }
        if self.scratch.covers_shorts(state, account) {
            return Ok(());
        }
        let mode = state
            .accounts
            .get(account.0 as usize)
            .map_or(MarginMode::WorstCase, |a| a.mode);
        let a = self.scratch.account(account);
        if mode == MarginMode::WorstCase || !state.maintained_in(mode, a.collateral, &a.positions) {
            return Err(StateError::LiquidationNotCured(i));
        }
        Ok(())
    }

    fn liquidatable(
        &mut self,
        state: &SettlementState,
        account: AccountId,
        i: usize,
    ) -> Result<(), StateError> {
        if self.scratch.covers_shorts(state, account) {
            return Err(StateError::LiquidationCovered(i));
        }
        let mode = state
            .accounts
            .get(account.0 as usize)
            .map_or(MarginMode::WorstCase, |a| a.mode);
        let a = self.scratch.account(account);
        if state
            .below_maintenance(mode, a.collateral, &a.positions)
            .is_none()
        {
            return Err(StateError::LiquidationMaintained(i));
        }
        Ok(())
    }
}

/// A batch in progress: copies of what it touches, written back only when every op applied.
struct Scratch {
    accounts: BTreeMap<u32, Account>,
    instruments: BTreeMap<u32, Instrument>,
    new_accounts: Vec<Account>,
    new_instruments: Vec<Instrument>,
    first_new_account: u32,
    first_new_instrument: u32,
    insurance: Amount,
    fee_pool: Amount,
    oracle_ms: u64,
    priority_served: u64,
    /// Positions settled whose instrument's settlement op has not come yet: (instrument, qty,
    /// cash, op index).
    settling: Vec<(u32, i64, i64, usize)>,
    /// The open positions of each account the batch loaded, as the batch started (its leaf's
    /// count; an account the batch opens held none).
    open_at_start: BTreeMap<u32, u32>,
}

impl Scratch {
    /// Copies what `op` (index `i`) names from `state` on first use.
    fn load(&mut self, state: &SettlementState, op: &Op, i: usize) -> Result<(), StateError> {
        for AccountId(a) in op.accounts() {
            if a >= self.first_new_account {
                if (a - self.first_new_account) as usize >= self.new_accounts.len() {
                    return Err(StateError::UnknownAccount(i));
                }
            } else if let std::collections::btree_map::Entry::Vacant(e) = self.accounts.entry(a) {
                let x = state
                    .accounts
                    .get(a as usize)
                    .ok_or(StateError::UnknownAccount(i))?;
                self.open_at_start.insert(a, x.positions.len() as u32);
                e.insert(x.light_clone());
            }
        }
        if let Some(InstrumentId(x)) = op.instrument() {
            if x >= self.first_new_instrument {
                if (x - self.first_new_instrument) as usize >= self.new_instruments.len() {
                    return Err(StateError::UnknownInstrument(i));
                }
            } else if let std::collections::btree_map::Entry::Vacant(e) = self.instruments.entry(x)
            {
                let spec = state
                    .instruments
                    .get(x as usize)
                    .ok_or(StateError::UnknownInstrument(i))?;
                e.insert(spec.clone());
            }
        }
        Ok(())
    }

    fn account(&mut self, id: AccountId) -> &mut Account {
        if id.0 >= self.first_new_account {
            &mut self.new_accounts[(id.0 - self.first_new_account) as usize]
        } else {
            self.accounts.get_mut(&id.0).expect("loaded")
        }
    }

    fn instrument(&mut self, id: InstrumentId) -> &mut Instrument {
        if id.0 >= self.first_new_instrument {
            &mut self.new_instruments[(id.0 - self.first_new_instrument) as usize]
        } else {
            self.instruments.get_mut(&id.0).expect("loaded")
        }
    }

    /// `account`'s liability as the batch leaves it so far (`Account::liability`), its
    /// instruments' payoffs from `state` or from the batch's listings.
    fn liability(&mut self, state: &SettlementState, account: AccountId) -> u128 {
        let positions: Vec<(u32, Qty)> = self
            .account(account)
            .positions
            .iter()
            .map(|(id, q)| (*id, *q))
            .collect();
        let first_new = self.first_new_instrument;
        leaf::liability(positions, |id| {
            let spec = if id >= first_new {
                self.new_instruments
                    .get((id - first_new) as usize)
                    .map(|x| &x.spec)
            } else {
                state.instruments.get(id as usize).map(|x| &x.spec)
            };
            spec.map_or(0, leaf::payoff)
        })
    }

    /// Whether `account`'s collateral, as the batch leaves it so far, covers what its shorts
    /// can owe at worst: `collateral * 1e8 >= liability`.
    fn covers_shorts(&mut self, state: &SettlementState, account: AccountId) -> bool {
        let liability = self.liability(state, account);
        let collateral = i128::from(self.account(account).collateral.0);
        collateral * i128::from(QTY_SCALE) >= liability as i128
    }

    fn spec(&mut self, id: InstrumentId) -> InstrumentSpec {
        self.instrument(id).spec.clone()
    }

    fn credit(&mut self, id: AccountId, amount: i64, op: usize) -> Result<(), StateError> {
        let a = self.account(id);
        a.collateral = add(a.collateral, amount, op)?;
        Ok(())
    }

    fn apply(&mut self, i: usize, op: &Op) -> Result<(), StateError> {
        let range = |_| StateError::OutOfRange(i);
        match op {
            Op::ListInstrument { spec } => self.new_instruments.push(Instrument {
                spec: spec.clone(),
                spec_hash: leaf::spec_hash(spec),
                status: status::LISTED,
                mark: Price::ZERO,
                index: Price::ZERO,
                risk: Vec::new(),
                settlement_price: Price::ZERO,
            }),
            Op::ActivateInstrument { instrument } => {
                self.instrument(*instrument).status = status::ACTIVE
            }
            Op::ExpireInstrument { instrument } => {
                self.instrument(*instrument).status = status::EXPIRED
            }
            Op::SettleInstrument {
                instrument,
                price,
                insurance_credit,
            } => {
                let inst = self.instrument(*instrument);
                // An expired instrument settles; a settled one settles the holders its
                // settlement left out, at its price.
                let again = inst.status == status::SETTLED && inst.settlement_price == *price;
                if !(inst.status == status::EXPIRED || again) || !price.is_positive() {
                    return Err(StateError::Settlement(i));
                }
                // Every holder is paid the value rounded down (a short pays it rounded up).
                let spec = inst.spec.clone();
                let (mut paid, mut holders) = (0i128, 0i128);
                let mut wrong = None;
                self.settling.retain(|&(x, qty, cash, op)| {
                    if x != instrument.0 {
                        return true;
                    }
                    if spec.settlement_cash(*price, Qty(qty)) != Ok(Amount(cash)) {
                        wrong.get_or_insert(op);
                    }
                    paid += i128::from(cash);
                    holders += 1;
                    false
                });
                if let Some(op) = wrong {
                    return Err(StateError::Settlement(op));
                }
                // The credit is the rounding remainder: at most a micro-USDC per holder paid.
                // Paying a holder out of insurance, or charging one into it, is refused.
                let credit = i128::from(insurance_credit.0);
                if paid + credit != 0 || !(0..=holders).contains(&credit) {
                    return Err(StateError::Settlement(i));
                }
                let mark = spec
                    .settled_mark(*price)
                    .map_err(|_| StateError::OutOfRange(i))?;
                let inst = self.instrument(*instrument);
                inst.status = status::SETTLED;
                inst.settlement_price = *price;
                // A position left open is worth its settlement value: the mark, with no risk.
                inst.mark = mark;
                inst.risk = Vec::new();
                inst.index = Price::ZERO;
                self.insurance = add(self.insurance, insurance_credit.0, i)?;
            }
            Op::SettlePosition {
                account,
                instrument,
                qty,
                cash,
            } => {
                let a = self.account(*account);
                let held = a
                    .positions
                    .get(&instrument.0)
                    .ok_or(StateError::Settlement(i))?
                    .0;
                // All of the position or a part of it, never more, never the other side.
                let part =
                    qty.0 != 0 && held.signum() == qty.0.signum() && qty.0.abs() <= held.abs();
                if !part {
                    return Err(StateError::Settlement(i));
                }
                if held == qty.0 {
                    a.positions.remove(&instrument.0);
                } else {
                    a.positions.insert(instrument.0, Qty(held - qty.0));
                }
                a.dirty_positions.insert(instrument.0);
                a.collateral = add(a.collateral, cash.0, i)?;
                self.settling.push((instrument.0, qty.0, cash.0, i));
            }
            Op::OpenAccount { owner } => self
                .new_accounts
                .push(Account::new(*owner, TreeStore::default())),
            Op::Deposit { account, amount } => self.credit(*account, amount.0, i)?,
            Op::Withdraw {
                account,
                amount,
                owner,
            } => {
                self.check_owner(*account, *owner, i)?;
                self.debit(*account, *amount, i)?;
            }
            Op::L1Deposit {
                priority,
                account,
                amount,
            } => {
                self.serve(*priority, i)?;
                if amount.0 < 0 {
                    return Err(StateError::OutOfRange(i));
                }
                self.credit(*account, amount.0, i)?;
            }
            Op::L1Withdrawal {
                priority,
                account,
                amount,
                requester,
            } => {
                self.serve(*priority, i)?;
                // Someone else's request moves nothing; the owner's takes what `Pending::push`
                // checked.
                if self.account(*account).owner != *requester {
                    return match amount.0 {
                        0 => Ok(()),
                        _ => Err(StateError::WrongOwner(i)),
                    };
                }
                if amount.0 != 0 {
                    self.debit(*account, *amount, i)?;
                }
            }
            Op::L1Close {
                priority,
                backstop,
                account,
                instrument,
                qty,
                price,
                ..
            } => {
                self.serve(*priority, i)?;
                let cash = close_cash(*qty, *price).ok_or(StateError::OutOfRange(i))?;
                self.credit(*account, cash, i)?;
                self.credit(*backstop, -cash, i)?;
                if qty.0 != 0 {
                    self.account(*account)
                        .move_position(instrument.0, qty.0, i)?;
                    self.account(*backstop)
                        .move_position(instrument.0, -qty.0, i)?;
                }
            }
            Op::Transfer { from, to, amount } => {
                self.credit(
                    *from,
                    amount.0.checked_neg().ok_or(StateError::OutOfRange(i))?,
                    i,
                )?;
                self.credit(*to, amount.0, i)?;
            }
            Op::Fill {
                instrument,
                maker,
                taker,
                taker_side,
                price,
                qty,
            } => {
                let spec = self.spec(*instrument);
                let notional = price.notional(*qty).map_err(range)?;
                let maker_fee = spec.maker_fee.fee_on(notional).map_err(range)?;
                let taker_fee = spec.taker_fee.fee_on(notional).map_err(range)?;
                let sign = taker_side.sign();
                // The taker pays (buying) or receives (selling) the premium; the maker opposite.
                self.credit(*taker, -sign * notional.0 - taker_fee.0, i)?;
                self.credit(*maker, sign * notional.0 - maker_fee.0, i)?;
                self.fee_pool = add(self.fee_pool, maker_fee.0 + taker_fee.0, i)?;
                self.account(*taker)
                    .move_position(instrument.0, sign * qty.0, i)?;
                self.account(*maker)
                    .move_position(instrument.0, -sign * qty.0, i)?;
            }
            Op::Liquidation {
                account,
                counterparty,
                instrument,
                qty,
                price,
                fee,
            } => {
                // Of an account whose auction started, this long ago by the committed clock.
                let since = self.account(*account).since;
                if since == 0 {
                    return Err(StateError::LiquidationNotStarted(i));
                }
                let elapsed = self.oracle_ms.saturating_sub(since);
                // The liquidated account's position changes by `qty`; cash moves the other way,
                // at a price inside the stress range of the committed mark and risk array on the
                // liquidated account's side.
                let x = self.instrument(*instrument);
                let (low, high) = stress_range(x.mark, x.risk.iter().map(|v| v.0));
                let price_ok = if qty.0 > 0 {
                    i128::from(price.0) <= high
                } else {
                    i128::from(price.0) >= low
                };
                // And within the proven schedule's discount of the committed index's value, from
                // the account's auction's start to the committed oracle time: the schedule reads
                // only times the oracle signed.
                let long = qty.0 < 0;
                if !price_ok
                    || !within_liquidation_schedule(&x.spec, x.index, x.mark, *price, long, elapsed)
                {
                    return Err(StateError::LiquidationPrice(i));
                }
                // Its fee is at most the fee at the provable rate at the committed index.
                let most = max_liquidation_fee(&x.spec, x.index, *qty);
                if fee.0 < 0 || i128::from(fee.0) > most {
                    return Err(StateError::LiquidationFee(i));
                }
                // It only reduces the liquidated account's position.
                let held = self
                    .account(*account)
                    .positions
                    .get(&instrument.0)
                    .map_or(0, |q| q.0);
                let reduces = if qty.0 > 0 {
                    held <= -qty.0
                } else {
                    held >= -qty.0
                };
                if !reduces {
                    return Err(StateError::LiquidationSize(i));
                }
                let notional = price.notional(Qty(qty.0.abs())).map_err(range)?;
                let sign = qty.0.signum();
                self.credit(*account, -sign * notional.0 - fee.0, i)?;
                self.credit(*counterparty, sign * notional.0, i)?;
                self.insurance = add(self.insurance, fee.0, i)?;
                self.account(*account)
                    .move_position(instrument.0, qty.0, i)?;
                self.account(*counterparty)
                    .move_position(instrument.0, -qty.0, i)?;
            }
            Op::LiquidationStart { account } => {
                let at = self.oracle_ms;
                self.account(*account).since = at;
            }
            Op::LiquidationEnd { account } => self.account(*account).since = 0,
            Op::LossShared { account, amount } => {
                self.credit(*account, -amount.0, i)?;
                if self.account(*account).collateral.0 < 0 {
                    return Err(StateError::Waterfall(i));
                }
            }
            Op::DeficitCovered {
                account,
                insurance,
                fee_pool,
                socialized,
            } => {
                if self.account(*account).holds_position() {
                    return Err(StateError::Waterfall(i));
                }
                self.insurance = add(self.insurance, -insurance.0, i)?;
                self.fee_pool = add(self.fee_pool, -fee_pool.0, i)?;
                self.credit(*account, insurance.0 + fee_pool.0 + socialized.0, i)?;
                let (left, fees) = (self.insurance.0, self.fee_pool.0);
                if left < 0
                    || fees < 0
                    || self.account(*account).collateral.0 > 0
                    || (fee_pool.0 != 0 && left != 0)
                    || (socialized.0 != 0 && (left != 0 || fees != 0))
                {
                    return Err(StateError::Waterfall(i));
                }
            }
            Op::SetMarginMode { account, mode } => self.account(*account).mode = *mode,
            Op::SessionKey {
                account,
                key,
                expiry_ms,
                at_ms,
            } => {
                let a = self.account(*account);
                a.keys.retain(|_, until| *until > *at_ms);
                if *expiry_ms == 0 {
                    a.keys.remove(key);
                } else {
                    a.keys.insert(*key, *expiry_ms);
                }
            }
            Op::Mark {
                instrument,
                mark,
                index,
                risk,
                published_ms,
            } => {
                if index.0 <= 0 {
                    return Err(StateError::OutOfRange(i));
                }
                let inst = self.instrument(*instrument);
                if inst.status == status::SETTLED {
                    return Err(StateError::MarkSettled(i));
                }
                if mark.0 < 0 || mark.0 > leaf::payoff(&inst.spec) {
                    return Err(StateError::MarkBeyondPayoff(i));
                }
                inst.mark = *mark;
                inst.index = *index;
                inst.risk = risk.clone();
                self.oracle_ms = self.oracle_ms.max(*published_ms);
            }
        }
        Ok(())
    }

    fn write_back(self, state: &mut SettlementState) {
        for (id, a) in self.accounts {
            let real = &mut state.accounts[id as usize];
            real.mode = a.mode;
            real.keys = a.keys;
            real.nonce = a.nonce;
            real.collateral = a.collateral;
            real.positions = a.positions;
            real.since = a.since;
            real.dirty_positions.extend(a.dirty_positions);
            state.dirty_accounts.insert(id);
            state.unsaved_accounts.insert(id);
        }
        for mut a in self.new_accounts {
            let id = state.accounts.len() as u32;
            // Its positions tree lives in the state's store (it holds no node yet).
            a.tree = Tree::with_store(INSTRUMENT_DEPTH, state.tree_store(POSITIONS_NS + id));
            state.dirty_accounts.insert(id);
            state.unsaved_accounts.insert(id);
            state.accounts.push(a);
        }
        for (id, x) in self.instruments {
            state.instruments[id as usize] = x;
            state.dirty_instruments.insert(id);
            state.unsaved_instruments.insert(id);
        }
        for x in self.new_instruments {
            let id = state.instruments.len() as u32;
            state.dirty_instruments.insert(id);
            state.unsaved_instruments.insert(id);
            state.instruments.push(x);
        }
        state.insurance = self.insurance;
        state.fee_pool = self.fee_pool;
        state.oracle_ms = self.oracle_ms;
        state.priority_served = self.priority_served;
    }

    /// Takes L1 priority operation `priority`, which must be the next in the queue.
    fn serve(&mut self, priority: u64, i: usize) -> Result<(), StateError> {
        if priority != self.priority_served {
            return Err(StateError::PriorityOutOfOrder {
                op: i,
                expected: self.priority_served,
                got: priority,
            });
        }
        self.priority_served += 1;
        Ok(())
    }

    /// A withdrawal names the account's owner, whom L1 pays.
    fn check_owner(
        &mut self,
        account: AccountId,
        owner: Address,
        i: usize,
    ) -> Result<(), StateError> {
        if self.account(account).owner != owner {
            return Err(StateError::WrongOwner(i));
        }
        Ok(())
    }

    /// A withdrawal to L1: a positive amount out; the account's nonce advances.
    fn debit(&mut self, account: AccountId, amount: Amount, i: usize) -> Result<(), StateError> {
        if amount.0 <= 0 {
            return Err(StateError::OutOfRange(i));
        }
        self.credit(account, -amount.0, i)?;
        self.account(account).nonce += 1;
        Ok(())
    }
}

/// A checkpoint's first bytes (`SettlementState::checkpoint_bytes`), with its format version:
/// 2 carries the batcher's values after the records.
const CHECKPOINT_MAGIC: &[u8; 8] = b"OPTIOCK2";

/// Format 1's: the records alone (read by `from_checkpoint`, refused by `restore`).
const CHECKPOINT_MAGIC_1: &[u8; 8] = b"OPTIOCK1";

/// The values the batcher keeps beside the state (`stage_meta`) that a checkpoint carries.
const CARRIED_META: &[&str] = &[crate::batcher::SETTLEMENT_PRICES];

/// What a checkpoint carries of the batcher's besides the state: its signed orders that may
/// still fill and its kept values.
#[derive(Debug, Default)]
struct Carried {
    orders: Vec<(u64, [u8; crate::auth::RECORD_BYTES])>,
    meta: Vec<(&'static str, Vec<u8>)>,
}

/// A checkpoint's trailer: keccak-256 of what precedes it.
fn checkpoint_sum(body: &[u8]) -> [u8; 32] {
    use sha3::Digest;
    sha3::Keccak256::digest(body).into()
}

fn encode_account(a: &Account) -> Vec<u8> {
    let mut w = optio_types::codec::Writer::default();
    w.address(a.owner);
    w.u64(a.nonce);
    w.i64(a.collateral.0);
    w.u32(a.keys.len() as u32);
    for (k, e) in &a.keys {
        w.address(*k);
        w.u64(*e);
    }
    w.u32(a.positions.len() as u32);
    for (i, q) in &a.positions {
        w.u32(*i);
        w.i64(q.0);
    }
    w.u8(a.mode.code());
    w.u64(a.since);
    w.bytes
}

fn decode_account(bytes: &[u8], tree: Tree) -> Option<Account> {
    let mut r = optio_types::codec::Reader::new(bytes);
    let owner = r.address().ok()?;
    let nonce = r.u64().ok()?;
    let collateral = Amount(r.i64().ok()?);
    let keys = (0..r.u32().ok()?)
        .map(|_| Some((r.address().ok()?, r.u64().ok()?)))
        .collect::<Option<BTreeMap<_, _>>>()?;
    let positions = (0..r.u32().ok()?)
        .map(|_| Some((r.u32().ok()?, Qty(r.i64().ok()?))))
        .collect::<Option<BTreeMap<_, _>>>()?;
    let mode = MarginMode::from_code(r.u8().ok()?)?;
    let since = r.u64().ok()?;
    r.finish().ok()?;
    Some(Account {
        owner,
        mode,
        keys,
        nonce,
        collateral,
        positions,
        since,
        tree,
        dirty_positions: BTreeSet::new(),
    })
}

fn encode_instrument(x: &Instrument) -> Vec<u8> {
    let mut w = optio_types::codec::Writer::default();
    optio_types::state::encode_spec(&mut w, &x.spec);
    w.u64(x.status);
    w.i64(x.mark.0);
    w.i64(x.settlement_price.0);
    w.amounts(&x.risk);
    w.i64(x.index.0);
    w.bytes
}

fn decode_instrument(bytes: &[u8]) -> Option<Instrument> {
    let mut r = optio_types::codec::Reader::new(bytes);
    let spec = optio_types::state::decode_spec(&mut r).ok()?;
    let status = r.u64().ok()?;
    let mark = Price(r.i64().ok()?);
    let settlement_price = Price(r.i64().ok()?);
    let risk = r.amounts(crate::blob::MAX_RISK).ok()?;
    let index = Price(r.i64().ok()?);
    r.finish().ok()?;
    Some(Instrument {
        spec_hash: leaf::spec_hash(&spec),
        spec,
        status,
        mark,
        index,
        risk,
        settlement_price,
    })
}
