//! The batch witness: what the circuit needs to re-run a batch, taken from the settlement state
//! before the batch and the batch's ops. The native side of the shared specification: it applies
//! the same transition as `SettlementState::apply_batch` (tests hold the two to the same root),
//! records every leaf and Merkle path, and computes the public inputs.
//!
//! Accounts, positions and instruments a batch touches are loaded once into registers (an
//! account traded sixteen times in a batch is read and written once, not sixteen times): the
//! ops work on the registers, and the registers are written back at the end, accounts in id
//! order, positions in (account, instrument) order, each path taken from the tree as the
//! previous write-backs left it.
//!
//! It does not judge the batch: a batch that breaks a rule still gets a witness, and the circuit
//! is what refuses it (the tests rely on that).

use std::collections::{BTreeMap, BTreeSet};

use optio_state::leaf::{
    self, ACCOUNT_DEPTH, INSTRUMENT_DEPTH, InstrumentLeaf, RISK_CHUNK, status,
};
use optio_state::poseidon::{Fr, from_address, hash};
use optio_state::smt::{Proof, SparseMerkleTree};
use optio_state::{Op, SettlementState};
use optio_types::{
    AccountId, Address, InstrumentId, InstrumentSpec, MarginMode, Price, QTY_SCALE, Qty,
};

/// Op kinds as the circuit numbers them (the blob's, `optio_state::blob::kind`).
pub mod kind {
    pub use optio_state::blob::kind::*;

    /// An unused slot.
    pub const PAD: u64 = 0;
    /// The kinds of the op slots, in the order the circuit's selector flags follow.
    pub const SLOT_KINDS: [u64; 13] = [
        OPEN,
        DEPOSIT,
        L1_DEPOSIT,
        WITHDRAW,
        L1_WITHDRAWAL,
        TRANSFER,
        FILL,
        LIQUIDATION,
        LOSS_SHARED,
        DEFICIT,
        L1_CLOSE,
        LIQUIDATION_START,
        LIQUIDATION_END,
    ];
}

/// The fixed shape of a circuit: how many op slots, registers and mark windows a batch may use,
/// and how long a risk array may be (in chunks of `RISK_CHUNK`). Keys are generated per shape.
/// `Shape::default()` has every size zero (it holds only an empty batch): a base to name the
/// sizes a shape uses on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shape {
    /// Op slots (every op but marks takes one).
    pub slots: usize,
    /// Distinct accounts a batch may touch.
    pub accounts: usize,
    /// Distinct (account, instrument) positions its fills may change.
    pub positions: usize,
    /// Distinct instruments its fills may trade.
    pub instruments: usize,
    /// Listing and activation slots (applied before the op slots).
    pub listings: usize,
    /// Expiry slots (applied after the op slots).
    pub expiries: usize,
    /// Settlement slots (after the expiry slots).
    pub settlements: usize,
    /// Positions each settlement slot may pay out.
    pub holders: usize,
    /// Mark windows: each commits the marks of the instruments in one aligned run of
    /// `2^mark_window_bits` ids (with 0, one mark per window).
    pub marks: usize,
    /// Capacity of what a mark hashes (the index, then the risk array), in chunks of
    /// `RISK_CHUNK` (11) values: a risk array of up to `11 * risk_chunks - 1` scenarios.
    pub risk_chunks: usize,
    /// Account slots, applied after the op slots: each registers or revokes a session key, or
    /// changes an account's margin mode.
    pub keys: usize,
    /// A mark window spans `2^mark_window_bits` instrument ids: its marks share one path of the
    /// instruments tree (from the window's subtree root up) instead of one path each.
    pub mark_window_bits: usize,
    /// Margin slots: each proves the stress rule for one op that takes money out of an account
    /// at its holder's request (a withdrawal, a transfer), or that a deficit cover's account
    /// holds no position, every position of the account loaded in the registers. (A forced
    /// withdrawal needs none: its rule reads the account leaf only.)
    pub margins: usize,
    /// Price windows: each opens the committed marks of one aligned run of
    /// `2^solvency_bits` instrument ids, for the solvency windows.
    pub prices: usize,
    /// Solvency windows: each opens one account's positions in one run after the batch. Every
    /// account that filled in the batch and ends it in `Portfolio` or `Standard`, unless the
    /// registers price it, has one per run its positions lie in, and is proven to end the batch
    /// with equity at the committed marks of at least zero (one in `WorstCase` needs none: it
    /// covers its shorts' worst case, and every committed mark lies in `[0, W]`).
    pub solvency: usize,
    /// A price or solvency window spans `2^solvency_bits` instrument ids (the devnet's 58
    /// instruments fit one run of 64, so a market maker quoting all of them takes one window).
    pub solvency_bits: usize,
    /// Read-only position registers: each loads one position that no op of the batch changes
    /// (an untraded position a margin slot or the solvency check prices), along one path
    /// instead of a read and a write-back, and no op slot can select it.
    pub readonly: usize,
}

impl Shape {
    /// The shape `optio devnet` proves its batches in unless told otherwise: `optio prove
    /// setup`'s defaults with one mark window of 64 ids (`--marks 1 --mark-window 64`: the
    /// devnet's instruments, listed at once, fit one run of 64), 33 risk scenarios (the default
    /// set's 31 and room), in a 2^20 evaluation domain.
    pub const DEVNET: Shape = Shape {
        slots: 16,
        accounts: 16,
        positions: 16,
        instruments: 12,
        listings: 4,
        expiries: 4,
        settlements: 2,
        holders: 16,
        marks: 1,
        risk_chunks: 33_usize.div_ceil(optio_state::leaf::RISK_CHUNK),
        keys: 4,
        mark_window_bits: 6,
        margins: 2,
        prices: 2,
        solvency: 4,
        solvency_bits: 6,
        readonly: 0,
    };

    /// The name of its key files:
    /// `quad-<slots>x<accounts>x<positions>x<instruments>x<listings>x<expiries>x<settlements>x<holders>x<marks>x<risk_chunks>x<keys>x<mark_window_bits>x<margins>x<prices>x<solvency>x<solvency_bits>`,
    /// then `x<readonly>` when it has read-only position registers (a shape without any is
    /// named, and lays out its circuit, as before they existed).
    pub fn name(&self) -> String {
        let mut fields = self.fields().map(|n| n.to_string()).to_vec();
        if self.readonly > 0 {
            fields.push(self.readonly.to_string());
        }
        format!("quad-{}", fields.join("x"))
    }

    /// The shape a `name()` names.
    pub fn from_name(name: &str) -> Option<Shape> {
        let n: Vec<usize> = name
            .strip_prefix("quad-")?
            .split('x')
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        // (A shape without read-only registers has one name: no trailing `x0`.)
        if !(16..=17).contains(&n.len()) || n.get(16) == Some(&0) {
            return None;
        }
        // A window is a whole subtree of the arity-4 tree: an even number of id bits.
        if [n[11], n[15]]
            .iter()
            .any(|&b| b > INSTRUMENT_DEPTH as usize || !b.is_multiple_of(2))
        {
            return None;
        }
        Some(Shape {
            slots: n[0],
            accounts: n[1],
            positions: n[2],
            instruments: n[3],
            listings: n[4],
            expiries: n[5],
            settlements: n[6],
            holders: n[7],
            marks: n[8],
            risk_chunks: n[9],
            keys: n[10],
            mark_window_bits: n[11],
            margins: n[12],
            prices: n[13],
            solvency: n[14],
            solvency_bits: n[15],
            readonly: n.get(16).copied().unwrap_or(0),
        })
    }

    /// Whether a node cut to this shape can prove everything its engine does, for the sizes
    /// the engine's limits cannot make up for: a settlement pays its holders in balanced parts,
    /// each at least a long and a short, so a shape with settlement slots needs two holders a
    /// slot (with one, the engine's budget could not settle anything, and the first expiry with
    /// holders would make a batch no proof of the shape holds). A shape without settlement slots
    /// is one for perpetuals only. `Err` says what to change.
    pub fn check(&self) -> Result<(), String> {
        if self.settlements > 0 && self.holders.min(self.accounts).min(self.positions) < 2 {
            return Err(format!(
                "a settlement slot pays at least a long and a short: {} holders a slot ({} accounts, {} positions) cannot settle an instrument with holders (use at least 2 of each, or no settlement slots)",
                self.holders, self.accounts, self.positions
            ));
        }
        Ok(())
    }

    /// Its sizes in the order of its name.
    fn fields(&self) -> [usize; 16] {
        [
            self.slots,
            self.accounts,
            self.positions,
            self.instruments,
            self.listings,
            self.expiries,
            self.settlements,
            self.holders,
            self.marks,
            self.risk_chunks,
            self.keys,
            self.mark_window_bits,
            self.margins,
            self.prices,
            self.solvency,
            self.solvency_bits,
        ]
    }

    /// Instrument ids a price or solvency window spans.
    pub fn solvency_window(&self) -> usize {
        1 << self.solvency_bits
    }

    /// The run of price and solvency windows an instrument falls in.
    pub fn solvency_run(&self, instrument: u32) -> u64 {
        u64::from(instrument) >> self.solvency_bits
    }

    /// The engine's fill budget for batches of this shape (`EngineLimits::fill_budget`): the
    /// fills of one order, alone in a batch, fit it (one op slot, one account and one position
    /// register each account, the solvency and price windows of the accounts priced in them; a
    /// `Portfolio` or `Standard` account's margin slot and registers for all its positions), so
    /// that no order makes an input that cannot be proven.
    pub fn fill_budget(&self) -> optio_types::FillBudget {
        let bound = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        optio_types::FillBudget {
            fills: if self.instruments == 0 {
                0
            } else {
                bound(self.slots)
            },
            accounts: bound(self.accounts.min(self.positions)),
            windows: bound(self.solvency),
            prices: bound(self.prices),
            window_bits: bound(self.solvency_bits),
            margins: bound(self.margins),
            positions: bound(self.positions),
            instruments: bound(self.instruments),
        }
    }

    /// The engine's mark windows for batches of this shape (`EngineLimits::mark_windows`): the
    /// instruments not yet settled lie in at most `marks` windows, so that the marks of any
    /// batch fit its mark windows (a settled instrument takes no mark). A shape without mark
    /// windows proves no mark whatever is listed: it does not hold the listings (unbounded).
    pub fn mark_windows(&self) -> optio_types::MarkWindows {
        if self.marks == 0 {
            return optio_types::MarkWindows::UNBOUNDED;
        }
        optio_types::MarkWindows {
            windows: u32::try_from(self.marks).unwrap_or(u32::MAX),
            bits: u32::try_from(self.mark_window_bits).unwrap_or(u32::MAX),
        }
    }

    /// The engine's settlement budget for batches of this shape (`EngineLimits::settle_budget`):
    /// an input's expiries fit its expiry slots, and its settlements its settlement slots, each
    /// paying at most as many positions as a slot holds and the registers hold, the input's
    /// settlements together. A shape without expiry slots proves no expiry whatever the engine
    /// does, and one that cannot settle a balanced pair (no slot, or fewer than two holders) no
    /// settlement with holders: it does not hold them (unbounded).
    pub fn settle_budget(&self) -> optio_types::SettleBudget {
        let bound = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let holders = self.holders.min(self.accounts).min(self.positions);
        let settles = self.settlements > 0 && holders >= 2;
        optio_types::SettleBudget {
            expiries: if self.expiries == 0 {
                u32::MAX
            } else {
                bound(self.expiries)
            },
            slots: if settles {
                bound(self.settlements)
            } else {
                u32::MAX
            },
            holders: if settles { bound(holders) } else { u32::MAX },
        }
    }

    /// Instrument ids a mark window spans.
    pub fn mark_window(&self) -> usize {
        1 << self.mark_window_bits
    }

    /// The mark window an instrument's mark falls in, and the instrument's place in it.
    pub fn mark_window_of(&self, instrument: u32) -> (u64, usize) {
        let id = u64::from(instrument);
        (
            id >> self.mark_window_bits,
            (id & (self.mark_window() as u64 - 1)) as usize,
        )
    }
}

/// Why no witness could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WitnessError {
    /// More ops, marks or risk scenarios than the shape holds.
    #[error("the batch does not fit the circuit's shape: {0}")]
    TooLarge(&'static str),
    /// An op names an account or instrument that does not exist, or a mark comes before an op.
    #[error("op {0}: names what does not exist, or is out of place")]
    Invalid(usize),
}

/// An account register: the account's leaf as the batch finds it, and the path its write-back
/// takes (against the accounts root as the earlier write-backs left it).
#[derive(Debug, Clone, Default)]
pub struct AccountReg {
    /// In use.
    pub enabled: bool,
    /// Opened by this batch (its leaf is empty before).
    pub opened: bool,
    /// Account id (registers in use: strictly increasing).
    pub id: u32,
    /// Leaf fields before the batch (zero, and the empty positions root, when opened).
    pub owner: Fr,
    /// Margin mode (in the leaf's third field).
    pub mode: MarginMode,
    /// Hash of its session keys.
    pub keys_hash: Fr,
    /// Withdrawals processed.
    pub nonce: Fr,
    /// Open positions (non-zero leaves of its positions tree).
    pub open_positions: u64,
    /// What its shorts can owe at worst (`Account::liability`).
    pub liability: Fr,
    /// Collateral.
    pub collateral: Fr,
    /// Root of its positions tree.
    pub positions_root: Fr,
    /// The committed oracle time its latest liquidation auction started at (0: none did).
    pub since: u64,
    /// Money leaves it in the batch: every position it holds before is in a position register
    /// (the margin slots price them all).
    pub margined: bool,
    /// It filled and ends the batch in `Portfolio` or `Standard`, and every position it holds
    /// before the batch is in a position register
    /// whose instrument has an instrument register: its solvency is priced from the registers,
    /// with no solvency window.
    pub registers_price: bool,
    /// Path of its write-back.
    pub siblings: Vec<Fr>,
}

/// A position register: one account's position in one instrument, and the path its write-back
/// takes in that account's positions tree.
#[derive(Debug, Clone, Default)]
pub struct PositionReg {
    /// In use.
    pub enabled: bool,
    /// Index of the account register it belongs to.
    pub account: usize,
    /// Instrument id.
    pub instrument: u32,
    /// Quantity before the batch.
    pub qty: Fr,
    /// Path of its write-back.
    pub siblings: Vec<Fr>,
}

/// An instrument register: the leaf of an instrument the batch's fills trade (read only), the
/// opening of its spec hash, and its path against the instruments root before the batch.
#[derive(Debug, Clone, Default)]
pub struct InstrumentReg {
    /// In use.
    pub enabled: bool,
    /// Instrument id.
    pub id: u32,
    /// Its leaf.
    pub leaf: InstrumentLeaf,
    /// The opening of its spec hash.
    pub spec: SpecOpening,
    /// The underlying's index committed with its mark (0 without a mark).
    pub index: Fr,
    /// Its committed risk array (with the index, hashing to the leaf's `risk_hash`),
    /// zero-padded to the shape's capacity less the index's place.
    pub risk: Vec<Fr>,
    /// Chunks of `RISK_CHUNK` the index and the array hash in.
    pub chunks: usize,
    /// The scenarios of the low and high ends of its stress range (`optio_types::stress_range`;
    /// none: the no-move one), which bound its liquidations' prices.
    pub low: Option<usize>,
    /// (High end.)
    pub high: Option<usize>,
    /// Its path.
    pub siblings: Vec<Fr>,
}

/// A margin slot: the op slot whose money leaves an account, and the account's register. The
/// circuit prices the account's positions as they stand right after that op; or, for a deficit
/// cover (`flat`), proves that the account holds none; or, for an account that traded and ends
/// the batch in `Portfolio` or `Standard` (`end`, with no op slot), prices them as the batch
/// leaves them against its mode's maintenance rule.
#[derive(Debug, Clone, Default)]
pub struct MarginSlot {
    /// Used.
    pub enabled: bool,
    /// A deficit cover's: the account holds no position.
    pub flat: bool,
    /// A `Portfolio` or `Standard` account's maintenance after the batch.
    pub end: bool,
    /// A liquidated account's shortfall of its maintenance before the liquidation.
    pub below: bool,
    /// An auction's end: its account meets its maintenance before the op.
    pub cured: bool,
    /// Of a below slot: the total short of its bound (0 the no-move one, `1 + s` scenario
    /// `s`: `SettlementState::below_maintenance`).
    pub scenario: Option<usize>,
    /// The op slot (none for an end slot).
    pub slot: Option<usize>,
    /// The account register.
    pub account: Option<usize>,
}

/// A price window: the instrument leaves of one aligned run of `2^solvency_bits` ids as the
/// batch's marks find them (their marks are the committed ones), opened for the solvency
/// windows.
#[derive(Debug, Clone, Default)]
pub struct PriceWindow {
    /// Used.
    pub enabled: bool,
    /// Which run.
    pub index: u64,
    /// The path of the run's subtree root.
    pub siblings: Vec<Fr>,
    /// Each id's leaf, and whether an instrument is listed there (the leaf is zero where none
    /// is).
    pub leaves: Vec<(bool, InstrumentLeaf)>,
}

/// A solvency window: an account's positions in one run after the batch (the leaves of its
/// positions tree there), priced by the price window of that run.
#[derive(Debug, Clone, Default)]
pub struct SolvencyWindow {
    /// Used.
    pub enabled: bool,
    /// The account register.
    pub account: Option<usize>,
    /// The price window of its run.
    pub price: Option<usize>,
    /// The quantities, one per id of the run.
    pub qty: Vec<Fr>,
    /// The path of the run's subtree root in the account's positions tree.
    pub siblings: Vec<Fr>,
}

/// The inputs of an instrument's `spec_hash` (`optio_state::leaf::spec_hash`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SpecOpening {
    /// `hash_bytes` of the canonical spec.
    pub bytes_hash: Fr,
    /// Maker fee rate.
    pub maker_rate: Fr,
    /// Taker fee rate.
    pub taker_rate: Fr,
    /// 0 perpetual, 1 call, 2 put.
    pub payoff: u64,
    /// Strike (0 for a perpetual).
    pub strike: Fr,
    /// Underlying cap.
    pub cap: Fr,
    /// Contract multiplier.
    pub multiplier: Fr,
}

impl SpecOpening {
    /// The opening of `spec`'s hash.
    pub fn of(spec: &InstrumentSpec) -> Self {
        let (payoff, strike) = leaf::payoff_terms(spec);
        Self {
            bytes_hash: leaf::spec_bytes_hash(spec),
            maker_rate: fr(i128::from(spec.maker_fee.0)),
            taker_rate: fr(i128::from(spec.taker_fee.0)),
            payoff,
            strike: fr(i128::from(strike)),
            cap: fr(i128::from(spec.underlying_cap.0)),
            multiplier: fr(i128::from(spec.contract_multiplier.0)),
        }
    }
}

/// A settlement slot: an expired instrument settled at `price`, and the positions it pays out
/// (each a holder: account and position registers, and the cash it gets).
#[derive(Debug, Clone, Default)]
pub struct SettleSlot {
    /// Used.
    pub enabled: bool,
    /// Instrument.
    pub instrument: u32,
    /// Its leaf before.
    pub before: InstrumentLeaf,
    /// The opening of its spec hash.
    pub spec: SpecOpening,
    /// Its path.
    pub siblings: Vec<Fr>,
    /// Settlement price of the underlying.
    pub price: Fr,
    /// To the insurance fund (the rounding remainder).
    pub insurance_credit: Fr,
    /// The price is above the cap.
    pub capped: bool,
    /// The option is in the money (always for a perpetual).
    pub in_money: bool,
    /// Holders settled, padded to the shape's capacity.
    pub holders: Vec<Holder>,
}

/// One position paid out by a settlement slot.
#[derive(Debug, Clone, Default)]
pub struct Holder {
    /// Account register.
    pub account: Option<usize>,
    /// Position register.
    pub position: Option<usize>,
    /// Account id (for the record).
    pub account_id: u32,
    /// The quantity settled (of the position's sign, at most all of it).
    pub qty: Fr,
    /// The position is short.
    pub short: bool,
    /// Cash paid (+) or taken (-).
    pub cash: Fr,
}

/// An op slot: the op's fields and which registers it works on.
#[derive(Debug, Clone, Default)]
pub struct Slot {
    /// One of `kind::*`.
    pub kind: u64,
    /// Register of the account (maker of a fill, sender of a transfer, the opened account).
    pub a: Option<usize>,
    /// Register of the second account (taker of a fill, receiver of a transfer).
    pub b: Option<usize>,
    /// Position registers of a fill's maker and taker.
    pub pa: Option<usize>,
    /// Taker's.
    pub pb: Option<usize>,
    /// Instrument register of a fill.
    pub i: Option<usize>,
    /// Account ids (for the record).
    pub a_id: u32,
    /// Second account id.
    pub b_id: u32,
    /// Instrument of a fill.
    pub instrument: u32,
    /// Amount of a cash op.
    pub amount: Fr,
    /// Fill price.
    pub price: Fr,
    /// Fill quantity.
    pub qty: Fr,
    /// The taker bought.
    pub taker_buys: bool,
    /// L1 queue id of a priority op.
    pub priority: Fr,
    /// Owner of an opened account.
    pub owner: Fr,
    /// Fill notional.
    pub notional: Fr,
    /// Maker fee.
    pub maker_fee: Fr,
    /// Taker fee.
    pub taker_fee: Fr,
    /// A forced close's rounding: `notional * 1e8 - price * qty`, of the buyer's sign (the
    /// account pays the ceiling, gets the floor), in `0..1e8`.
    pub rounding: Fr,
    /// A liquidation whose account held more positions at the batch's start than the shape
    /// prices for a liquidation (`FillBudget::liquidation_priced`): no below slot (an
    /// auction's start or end too: no below or cured slot).
    pub unpriced: bool,
    /// An auction's end whose account covers what its shorts can owe at worst: no cured slot.
    pub by_cover: bool,
}

/// Most session keys an account holds (`optio_types::oracle::MAX_SESSION_KEYS`): the length of
/// a session-key slot's lists.
pub const KEYS: usize = optio_types::oracle::MAX_SESSION_KEYS;

/// An account slot: a session key, `key` registered until `expiry` (0: revoked) on the account
/// of register `account`, the keys expired at `at` dropped first (the account's key list before
/// and after, each sorted by address and padded with zeros to `KEYS`, and where each entry
/// after comes from); or a change of the account's margin mode (`mode`).
#[derive(Debug, Clone, Default)]
pub struct KeySlot {
    /// Used.
    pub enabled: bool,
    /// A margin mode's change instead of a session key's: the account's new mode (the key
    /// fields zero, the lists empty).
    pub mode: Option<MarginMode>,
    /// Account register.
    pub account: Option<usize>,
    /// Account id (for the record).
    pub account_id: u32,
    /// The key (an address).
    pub key: Fr,
    /// Its expiry, ms (0 revokes).
    pub expiry: u64,
    /// The time keys expire against, ms.
    pub at: u64,
    /// Keys before: (address, expiry), the first `old_len` in use.
    pub old: Vec<(Fr, u64)>,
    /// Entries in use before.
    pub old_len: usize,
    /// Keys after.
    pub new: Vec<(Fr, u64)>,
    /// Entries in use after.
    pub new_len: usize,
    /// For each entry after: the index of the entry before it keeps, or `None` for the
    /// registered key.
    pub sources: Vec<Option<usize>>,
}

/// A mark window: the aligned run of `2^mark_window_bits` instrument ids from
/// `index << mark_window_bits`, with the marks the batch commits among them. The circuit rebuilds
/// the run's subtree from its leaves before and after, and proves one path from the subtree's
/// root up.
#[derive(Debug, Clone, Default)]
pub struct MarkWindow {
    /// Used.
    pub enabled: bool,
    /// Which run.
    pub index: u64,
    /// The path of the run's subtree root (the instruments tree's levels above the window).
    pub siblings: Vec<Fr>,
    /// One per id of the run, in order.
    pub entries: Vec<MarkEntry>,
}

/// One instrument id of a mark window.
#[derive(Debug, Clone, Default)]
pub struct MarkEntry {
    /// The batch commits its mark.
    pub marked: bool,
    /// Its leaf's hash before (zero where no instrument is listed).
    pub leaf: Fr,
    /// Its leaf before (marked entries).
    pub before: InstrumentLeaf,
    /// New mark.
    pub mark: Fr,
    /// The underlying's index committed with it.
    pub index: Fr,
    /// When the oracle published it (ms; 0 unmarked).
    pub published_ms: u64,
    /// New risk array, zero-padded to the shape's capacity (its last place stays empty: the
    /// index takes one in the hash).
    pub risk: Vec<Fr>,
    /// Its length.
    pub len: usize,
    /// Chunks of `RISK_CHUNK` the index and the array hash in.
    pub chunks: usize,
    /// The opening of its spec hash (marked entries): the mark is held to its worst-case
    /// payoff.
    pub spec: SpecOpening,
}

/// `leaf::risk_hash` of a mark's index and risk array as the witness holds them (`chunks` of
/// the index followed by the array).
fn mark_hash(index: Fr, risk: &[Fr], chunks: usize) -> Fr {
    let values: Vec<Fr> = std::iter::once(index)
        .chain(risk.iter().copied())
        .chain(std::iter::repeat(Fr::from(0u64)))
        .take(chunks * RISK_CHUNK)
        .collect();
    leaf::risk_hash_of(&values)
}

/// Chunks of `RISK_CHUNK` a mark's index and a risk array of `len` scenarios hash in.
fn hash_chunks(len: usize) -> usize {
    (len + 1).div_ceil(RISK_CHUNK)
}

/// An instrument-op slot: a listing or activation (before the op slots) or an expiry (after).
#[derive(Debug, Clone, Default)]
pub struct InstrumentOp {
    /// `kind::LIST`, `ACTIVATE`, `EXPIRE`, or `PAD`.
    pub kind: u64,
    /// Instrument id.
    pub instrument: u32,
    /// Its leaf before (all zero before a listing).
    pub before: InstrumentLeaf,
    /// Its path.
    pub siblings: Vec<Fr>,
    /// The listed spec's hash (listings only).
    pub spec_hash: Fr,
    /// The listed spec's opening (listings only).
    pub spec: SpecOpening,
    /// Length of the listed spec's canonical bytes (listings only).
    pub spec_len: usize,
    /// Those bytes, 31 to a field element (`poseidon::hash_bytes`), zero-padded to `SPEC_CHUNKS`.
    pub spec_chunks: Vec<Fr>,
}

/// Most 31-byte chunks a spec's canonical bytes take (a 64-byte name and the fixed fields: 120
/// bytes).
pub const SPEC_CHUNKS: usize = 4;

/// The public inputs, in the verifier's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicInputs {
    /// State root before the batch.
    pub old_root: Fr,
    /// State root after it.
    pub new_root: Fr,
    /// Commitment to the batch's ops (`commitment`).
    pub commitment: Fr,
    /// L1 priority operations served before the batch.
    pub priority_before: u64,
    /// And after.
    pub priority_after: u64,
    /// The point the posted words are evaluated at (`optio_state::blob::binding`).
    pub z: Fr,
    /// Their evaluation there.
    pub y: Fr,
}

impl PublicInputs {
    /// How many there are.
    pub const COUNT: usize = 7;

    /// As field elements, in order.
    pub fn to_vec(&self) -> Vec<Fr> {
        vec![
            self.old_root,
            self.new_root,
            self.commitment,
            Fr::from(self.priority_before),
            Fr::from(self.priority_after),
            self.z,
            self.y,
        ]
    }
}

/// Everything the circuit needs.
#[derive(Debug, Clone)]
pub struct BatchWitness {
    /// The shape it fills.
    pub shape: Shape,
    /// Accounts root before.
    pub accounts_root: Fr,
    /// Instruments root before.
    pub instruments_root: Fr,
    /// Insurance fund (unchanged by the covered ops).
    pub insurance: Fr,
    /// Fee pool before.
    pub fee_pool: Fr,
    /// Accounts opened, instruments listed (the next ids) and the committed oracle time,
    /// before (`leaf::Counts`).
    pub counts: leaf::Counts,
    /// Account registers.
    pub accounts: Vec<AccountReg>,
    /// Position registers.
    pub positions: Vec<PositionReg>,
    /// Instrument registers.
    pub instruments: Vec<InstrumentReg>,
    /// Listing and activation slots.
    pub listings: Vec<InstrumentOp>,
    /// Op slots.
    pub slots: Vec<Slot>,
    /// Session-key slots.
    pub keys: Vec<KeySlot>,
    /// Expiry slots.
    pub expiries: Vec<InstrumentOp>,
    /// Settlement slots.
    pub settlements: Vec<SettleSlot>,
    /// Insurance fund after the settlements.
    pub insurance_after: Fr,
    /// Mark windows.
    pub marks: Vec<MarkWindow>,
    /// Margin slots.
    pub margins: Vec<MarginSlot>,
    /// Price windows.
    pub prices: Vec<PriceWindow>,
    /// Solvency windows.
    pub solvency: Vec<SolvencyWindow>,
    /// What the circuit's public inputs must be.
    pub public: PublicInputs,
}

impl BatchWitness {
    /// How many positions it holds in read-only registers (those after the writable ones).
    pub fn read_only_in_use(&self) -> usize {
        self.positions[self.shape.positions..]
            .iter()
            .filter(|p| p.enabled)
            .count()
    }
}

/// An integer as a field element (negatives as `p - |v|`).
pub fn fr(v: i128) -> Fr {
    if v >= 0 {
        Fr::from(v as u128)
    } else {
        -Fr::from(v.unsigned_abs())
    }
}

/// The ten fields of an op slot's record in the commitment.
pub fn slot_record(s: &Slot) -> [Fr; 10] {
    [
        Fr::from(s.kind),
        Fr::from(s.a_id),
        Fr::from(s.b_id),
        Fr::from(s.instrument),
        s.amount,
        s.price,
        s.qty,
        Fr::from(u64::from(s.taker_buys)),
        s.priority,
        s.owner,
    ]
}

/// The ten fields of an account slot's record (a session key's, or a margin mode's).
pub fn key_record(k: &KeySlot) -> [Fr; 10] {
    let z = Fr::from(0u64);
    if !k.enabled {
        return [z; 10];
    }
    if let Some(mode) = k.mode {
        let mut record = [z; 10];
        record[0] = Fr::from(kind::MARGIN_MODE);
        record[1] = Fr::from(k.account_id);
        record[4] = Fr::from(mode.code());
        return record;
    }
    [
        Fr::from(kind::SESSION_KEY),
        Fr::from(k.account_id),
        z,
        z,
        Fr::from(k.expiry),
        Fr::from(k.at),
        z,
        z,
        z,
        k.key,
    ]
}

/// The records of a mark window: one per marked entry, in id order (all zero when unmarked).
pub fn mark_records(w: &MarkWindow) -> Vec<[Fr; 10]> {
    let z = Fr::from(0u64);
    let base = w.index << w.entries.len().trailing_zeros();
    w.entries
        .iter()
        .enumerate()
        .map(|(j, e)| {
            if !e.marked {
                return [z; 10];
            }
            [
                Fr::from(kind::MARK),
                Fr::from(e.published_ms),
                z,
                Fr::from(base + j as u64),
                z,
                e.mark,
                e.index,
                z,
                z,
                mark_hash(e.index, &e.risk, e.chunks),
            ]
        })
        .collect()
}

/// The ten fields of an instrument-op slot's record.
pub fn instrument_op_record(o: &InstrumentOp) -> [Fr; 10] {
    let z = Fr::from(0u64);
    [
        Fr::from(o.kind),
        z,
        z,
        Fr::from(o.instrument),
        z,
        z,
        z,
        z,
        z,
        o.spec_hash,
    ]
}

/// The records of a settlement slot: the instrument's, then one per holder (all zero when
/// unused).
pub fn settle_records(o: &SettleSlot) -> Vec<[Fr; 10]> {
    let z = Fr::from(0u64);
    let mut out = vec![if o.enabled {
        [
            Fr::from(kind::SETTLE),
            z,
            z,
            Fr::from(o.instrument),
            o.insurance_credit,
            o.price,
            z,
            z,
            z,
            z,
        ]
    } else {
        [z; 10]
    }];
    out.extend(o.holders.iter().map(|h| match h.account {
        Some(_) => [
            Fr::from(kind::SETTLE_POSITION),
            Fr::from(h.account_id),
            z,
            Fr::from(o.instrument),
            h.cash,
            z,
            h.qty,
            z,
            z,
            z,
        ],
        None => [z; 10],
    }));
    out
}

/// The commitment to a batch's ops: `h = Poseidon(h, record)` over the listing slots, the op
/// slots, the account slots, the expiry slots, the settlement slots and the marks (by
/// instrument id, whatever windows hold them) in that order, from 0, skipping unused slots.
pub fn commitment(w: &BatchWitness) -> Fr {
    let records = w
        .listings
        .iter()
        .map(instrument_op_record)
        .chain(w.slots.iter().map(slot_record))
        .chain(w.keys.iter().map(key_record))
        .chain(w.expiries.iter().map(instrument_op_record))
        .chain(w.settlements.iter().flat_map(settle_records))
        .chain(w.marks.iter().flat_map(mark_records))
        // Unused slots (all-zero records, kind 0) are skipped: the commitment is the ops'.
        .filter(|r| r[0] != Fr::from(0u64));
    records.fold(Fr::from(0u64), |h, r| {
        let mut inputs = vec![h];
        inputs.extend_from_slice(&r);
        hash(&inputs)
    })
}

/// An account as the batch leaves it so far.
struct Acct {
    owner: Fr,
    mode: MarginMode,
    /// Open positions before the batch.
    open: u64,
    keys: BTreeMap<Address, u64>,
    nonce: i128,
    collateral: i128,
    positions: BTreeMap<u32, i128>,
    since: u64,
    /// Its whole positions tree (as before the batch until the write-back).
    tree: SparseMerkleTree,
}

/// Which total of `account` (its register `acct`, as the ops before op `index` left it) falls
/// short of its maintenance, in the mode the batch found it in: the scenario a below slot
/// names. (None: it meets its maintenance, which the circuit refuses at the slot, naming the
/// rule: 0 is named.)
fn shortfall(
    state: &SettlementState,
    accounts: &[optio_state::ledger::Account],
    acct: &Acct,
    account: AccountId,
    index: usize,
) -> Result<usize, WitnessError> {
    let positions = acct
        .positions
        .iter()
        .map(|(i, q)| Ok((*i, Qty(i64::try_from(*q)?))))
        .collect::<Result<BTreeMap<u32, Qty>, std::num::TryFromIntError>>()
        .map_err(|_| WitnessError::Invalid(index))?;
    let collateral = optio_types::Amount(
        i64::try_from(acct.collateral).map_err(|_| WitnessError::Invalid(index))?,
    );
    let mode = accounts
        .get(account.0 as usize)
        .map_or(MarginMode::WorstCase, |a| a.mode);
    Ok(state
        .below_maintenance(mode, collateral, &positions)
        .unwrap_or(0))
}

impl Acct {
    /// What its shorts can owe at worst, `payoffs` by instrument id (`Account::liability`).
    fn liability(&self, payoffs: &[i64]) -> u128 {
        let positions = self
            .positions
            .iter()
            .map(|(id, q)| (*id, Qty(i64::try_from(*q).expect("a position fits i64"))));
        leaf::liability(positions, |id| {
            payoffs.get(id as usize).copied().unwrap_or(0)
        })
    }

    fn leaf(&self, payoffs: &[i64]) -> Fr {
        let open = self.positions.values().filter(|q| **q != 0).count();
        hash(&[
            self.owner,
            leaf::keys_hash(&self.keys),
            leaf::nonce_word(
                u64::try_from(self.nonce).expect("a u64 nonce"),
                open as u32,
                self.mode,
                self.liability(payoffs),
            ),
            fr(self.collateral),
            self.tree.root(),
            Fr::from(self.since),
        ])
    }
}

fn path(tree: &SparseMerkleTree, index: u64) -> Vec<Fr> {
    tree.prove(index).expect("ids fit the depth").siblings
}

/// A tree holding only the paths of `ids`, seeded from proofs against the state's tree: enough
/// to update those leaves and prove them again.
fn overlay(depth: u8, ids: &[(u64, Fr, Proof)]) -> SparseMerkleTree {
    let mut tree = SparseMerkleTree::new(depth);
    for (_, leaf, proof) in ids {
        tree.seed(*leaf, proof).expect("ids fit the depth");
    }
    for (id, leaf, _) in ids {
        tree.set(*id, *leaf).expect("ids fit the depth");
    }
    tree
}

/// An instrument's settlement in a batch: instrument, price, insurance credit, and the holders
/// paid (account, cash).
type Settlement = (u32, i64, i64, Vec<(u32, i64, i64)>);

/// The (zero) siblings of a path through `bits` index bits: three per level of two bits.
fn zeros(bits: u8) -> Vec<Fr> {
    vec![Fr::from(0u64); 3 * bits as usize / 2]
}

/// What a batch touches and which slots its ops take (the witness's first pass).
struct Plan<'a> {
    /// Specs by instrument id, those the batch lists included.
    specs: Vec<&'a InstrumentSpec>,
    /// Accounts after the batch (the next id an opening would take).
    accounts_after: u32,
    account_ids: BTreeSet<u32>,
    position_keys: BTreeSet<(u32, u32)>,
    /// Those of `position_keys` an op changes (the others are only priced).
    changed_keys: BTreeSet<(u32, u32)>,
    instrument_ids: BTreeSet<u32>,
    marks: Vec<(usize, &'a Op)>,
    /// Op slots: the op's index in the batch, the op, and the id an opening takes.
    slot_ops: Vec<(usize, &'a Op, u32)>,
    leading: Vec<(u64, u32, Option<&'a InstrumentSpec>)>,
    trailing: Vec<(u64, u32, Option<&'a InstrumentSpec>)>,
    settles: Vec<Settlement>,
    /// The account slots' ops: the session keys, then the margin modes (the circuit's order).
    key_ops: Vec<&'a Op>,
    /// Op slots (indices into `slot_ops`) whose money leaves an account, that cover its deficit
    /// (it must hold no position), or that liquidate it (it must be below maintenance), and
    /// that account.
    margin_slots: Vec<(usize, u32, SlotRule)>,
    /// The ops (indices into the batch) that end an auction of an account covering its shorts'
    /// worst case: proven by the op slot's cover, with no cured slot (`ends_by_cover`).
    ends_by_cover: BTreeSet<usize>,
    /// Accounts that traded (a fill's maker or taker) and end the batch in `Portfolio` or
    /// `Standard`: an end slot each, after the margin slots.
    maintained: BTreeSet<u32>,
    /// Accounts that filled and end the batch in `Portfolio` or `Standard` (checked solvent at
    /// the batch's end: one in `WorstCase` covers its shorts' worst case instead), and those of
    /// them whose positions the registers price.
    priced_accounts: BTreeSet<u32>,
    registers_price: BTreeSet<u32>,
    /// Solvency windows (account, run) and price windows (run) the batch may need: the runs of
    /// the positions those accounts held before and of those the batch changes.
    solvency_runs: BTreeSet<(u32, u64)>,
    price_runs: BTreeSet<u64>,
}

/// What a margin slot at an op proves of its account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotRule {
    /// Money left it: covered in every stress scenario.
    Out,
    /// A deficit cover: it holds no position.
    Flat,
    /// A liquidation or an auction's start: below maintenance before the op.
    Below,
    /// An auction's end: at its maintenance before the op (unused when the account covers
    /// what its shorts can owe at worst, which the op slot proves alone).
    Cured,
}

/// The commitment any proof of `ops` applied to `state` has as its third public input, whatever
/// the circuit's shape (unused slots do not enter it): what a watchtower compares with the
/// commitment a batch was proven with on L1 (`optio verify`).
pub fn data_commitment(state: &SettlementState, ops: &[Op]) -> Result<Fr, WitnessError> {
    let unbounded = Shape {
        slots: usize::MAX,
        accounts: usize::MAX,
        positions: usize::MAX,
        instruments: usize::MAX,
        listings: usize::MAX,
        expiries: usize::MAX,
        settlements: usize::MAX,
        holders: usize::MAX,
        marks: usize::MAX,
        risk_chunks: usize::MAX,
        keys: usize::MAX,
        mark_window_bits: 0,
        margins: usize::MAX,
        prices: usize::MAX,
        solvency: usize::MAX,
        solvency_bits: 0,
        readonly: 0,
    };
    let p = plan(state, ops, unbounded)?;
    let risk = p
        .marks
        .iter()
        .map(|(_, op)| match op {
            Op::Mark { risk, .. } => hash_chunks(risk.len()),
            _ => 0,
        })
        .max()
        .unwrap_or(0)
        .max(register_risk(state, &p.instrument_ids));
    // The smallest shape that holds the batch.
    let shape = Shape {
        slots: p.slot_ops.len(),
        accounts: p.account_ids.len(),
        positions: p.position_keys.len(),
        instruments: p.instrument_ids.len(),
        listings: p.leading.len(),
        expiries: p.trailing.len(),
        settlements: p.settles.len(),
        holders: p.settles.iter().map(|s| s.3.len()).max().unwrap_or(0),
        marks: p.marks.len(),
        risk_chunks: risk,
        keys: p.key_ops.len(),
        mark_window_bits: 0,
        margins: p.margin_slots.len() + p.maintained.len(),
        prices: p.price_runs.len(),
        solvency: p.solvency_runs.len(),
        solvency_bits: 0,
        readonly: 0,
    };
    Ok(commitment(&witness(state, ops, shape)?))
}

/// The most chunks of `RISK_CHUNK` any of `instruments` hashes with its committed mark (the
/// index and the risk array; none without a mark, as for those the batch lists).
fn register_risk(state: &SettlementState, instruments: &BTreeSet<u32>) -> usize {
    let existing = state.instruments();
    instruments
        .iter()
        .filter_map(|&id| existing.get(id as usize))
        .map(register_chunks)
        .max()
        .unwrap_or(0)
}

/// Chunks of `RISK_CHUNK` an instrument's committed index and risk array hash in.
fn register_chunks(x: &optio_state::ledger::Instrument) -> usize {
    if x.index.0 == 0 && x.risk.is_empty() {
        0
    } else {
        hash_chunks(x.risk.len())
    }
}

/// Scenarios an instrument register holds: the shape's capacity less the index's place.
fn register_capacity(shape: Shape) -> usize {
    (shape.risk_chunks * RISK_CHUNK).saturating_sub(1)
}

/// Whether a circuit of `shape` has room for `ops` applied to `state`, in the order it applies
/// them: the witness's first pass alone (no hashing), cheap enough for a batcher to ask before
/// each input it adds (`optio devnet --prove` cuts batches so that each can be proven).
pub fn fits(state: &SettlementState, ops: &[Op], shape: Shape) -> Result<(), WitnessError> {
    plan(state, ops, shape).map(|_| ())
}

fn plan<'a>(
    state: &'a SettlementState,
    ops: &'a [Op],
    shape: Shape,
) -> Result<Plan<'a>, WitnessError> {
    let accounts = state.accounts();
    // Specs by instrument id, those the batch lists included.
    let mut specs: Vec<&InstrumentSpec> = state.instruments().iter().map(|x| &x.spec).collect();
    // What the batch touches. Opened accounts and listed instruments take the next ids.
    let mut next_account = accounts.len() as u32;
    let (mut account_ids, mut position_keys, mut instrument_ids) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    // The positions an op changes (the others of `position_keys` are only priced: each may
    // take a read-only register).
    let mut changed_keys = BTreeSet::new();
    let mut marks = Vec::new();
    // Op slots: the op's index in the batch, the op, and the id an opening takes.
    let mut slot_ops: Vec<(usize, &Op, u32)> = Vec::new();
    // Listings and activations are applied before the op slots, expiries after: a fill in an
    // instrument may not come before its listing or activation, nor after its expiry.
    let (mut leading, mut trailing) = (Vec::new(), Vec::new());
    let mut filled: BTreeSet<u32> = BTreeSet::new();
    let mut settled_accounts: BTreeSet<u32> = BTreeSet::new();
    // A settlement in the batch credits insurance.
    let mut credited = false;
    let mut pending: BTreeMap<u32, Vec<(u32, i64, i64)>> = BTreeMap::new();
    let mut settles: Vec<Settlement> = Vec::new();
    let mut key_ops: Vec<&Op> = Vec::new();
    let mut mode_ops: Vec<&Op> = Vec::new();
    let mut margin_slots: Vec<(usize, u32, SlotRule)> = Vec::new();
    let liquidation_priced = shape.fill_budget().liquidation_priced() as usize;
    let mut filled_accounts: BTreeSet<u32> = BTreeSet::new();
    // Accounts that traded, and the margin modes the batch leaves its accounts in.
    let mut traded: BTreeSet<u32> = BTreeSet::new();
    let mut modes: BTreeMap<u32, MarginMode> = BTreeMap::new();
    let ends_by_cover = ends_by_cover(state, ops);
    for (i, op) in ops.iter().enumerate() {
        let known = |a: &AccountId| a.0 < next_account;
        let listed = specs.len();
        match op {
            Op::Mark { instrument, .. } => {
                // Marks come last, one per instrument, by id (the order the circuit's windows
                // commit them in).
                let after_previous = marks.last().is_none_or(|(_, m): &(usize, &Op)| {
                    matches!(m, Op::Mark { instrument: p, .. } if p.0 < instrument.0)
                });
                if instrument.0 as usize >= listed || !after_previous {
                    return Err(WitnessError::Invalid(i));
                }
                marks.push((i, op));
                continue;
            }
            _ if !marks.is_empty() => return Err(WitnessError::Invalid(i)),
            Op::ListInstrument { spec } => {
                leading.push((kind::LIST, listed as u32, Some(spec)));
                specs.push(spec);
                continue;
            }
            Op::ActivateInstrument { instrument } | Op::ExpireInstrument { instrument } => {
                let activation = matches!(op, Op::ActivateInstrument { .. });
                if instrument.0 as usize >= listed || (activation && filled.contains(&instrument.0))
                {
                    return Err(WitnessError::Invalid(i));
                }
                if activation {
                    leading.push((kind::ACTIVATE, instrument.0, None));
                } else {
                    trailing.push((kind::EXPIRE, instrument.0, None));
                }
                continue;
            }
            Op::SessionKey { account, .. } | Op::SetMarginMode { account, .. } => {
                if !known(account) {
                    return Err(WitnessError::Invalid(i));
                }
                account_ids.insert(account.0);
                match op {
                    Op::SetMarginMode { mode, .. } => {
                        modes.insert(account.0, *mode);
                        mode_ops.push(op);
                    }
                    _ => key_ops.push(op),
                }
                continue;
            }
            Op::OpenAccount { .. } => {
                account_ids.insert(next_account);
                slot_ops.push((i, op, next_account));
                next_account += 1;
                continue;
            }
            // Settlements apply after the op slots: a position settled here must not be
            // followed by another op of its account in the batch (the circuit would see that
            // op before the settlement's cash).
            Op::SettlePosition {
                account,
                instrument,
                qty,
                cash,
            } => {
                if !known(account) || instrument.0 as usize >= listed {
                    return Err(WitnessError::Invalid(i));
                }
                account_ids.insert(account.0);
                position_keys.insert((account.0, instrument.0));
                changed_keys.insert((account.0, instrument.0));
                settled_accounts.insert(account.0);
                pending
                    .entry(instrument.0)
                    .or_default()
                    .push((account.0, qty.0, cash.0));
                continue;
            }
            Op::SettleInstrument {
                instrument,
                price,
                insurance_credit,
            } => {
                if instrument.0 as usize >= listed {
                    return Err(WitnessError::Invalid(i));
                }
                let holders = pending.remove(&instrument.0).unwrap_or_default();
                settles.push((instrument.0, price.0, insurance_credit.0, holders));
                credited |= insurance_credit.0 != 0;
                continue;
            }
            // A deficit cover reads insurance as the op slots leave it, before the settlements'
            // credits (which the engine had already added): one after a settlement that
            // credits insurance belongs to the next batch.
            Op::DeficitCovered { .. } if credited => return Err(WitnessError::Invalid(i)),
            _ if op
                .accounts()
                .iter()
                .any(|a| settled_accounts.contains(&a.0)) =>
            {
                return Err(WitnessError::Invalid(i));
            }
            Op::Deposit { account, .. }
            | Op::Withdraw { account, .. }
            | Op::L1Deposit { account, .. }
            | Op::L1Withdrawal { account, .. }
            | Op::LossShared { account, .. }
            | Op::LiquidationStart { account }
            | Op::LiquidationEnd { account }
            | Op::DeficitCovered { account, .. } => {
                if !known(account) {
                    return Err(WitnessError::Invalid(i));
                }
                account_ids.insert(account.0);
            }
            Op::Transfer { from, to, .. } => {
                if !known(from) || !known(to) {
                    return Err(WitnessError::Invalid(i));
                }
                account_ids.extend([from.0, to.0]);
            }
            Op::Liquidation {
                account,
                counterparty,
                instrument,
                ..
            }
            | Op::L1Close {
                account,
                backstop: counterparty,
                instrument,
                ..
            } => {
                let expired = trailing.iter().any(|(_, x, _)| *x == instrument.0);
                if !known(account)
                    || !known(counterparty)
                    || instrument.0 as usize >= listed
                    || expired
                {
                    return Err(WitnessError::Invalid(i));
                }
                filled.insert(instrument.0);
                // The counterparty (or a forced close's backstop) took a position: checked
                // solvent as a fill's accounts are.
                filled_accounts.insert(counterparty.0);
                account_ids.extend([account.0, counterparty.0]);
                position_keys.extend([(account.0, instrument.0), (counterparty.0, instrument.0)]);
                changed_keys.extend([(account.0, instrument.0), (counterparty.0, instrument.0)]);
                instrument_ids.insert(instrument.0);
            }
            Op::Fill {
                instrument,
                maker,
                taker,
                ..
            } => {
                let expired = trailing.iter().any(|(_, x, _)| *x == instrument.0);
                if !known(maker) || !known(taker) || instrument.0 as usize >= listed || expired {
                    return Err(WitnessError::Invalid(i));
                }
                filled.insert(instrument.0);
                filled_accounts.extend([maker.0, taker.0]);
                traded.extend([maker.0, taker.0]);
                account_ids.extend([maker.0, taker.0]);
                position_keys.extend([(maker.0, instrument.0), (taker.0, instrument.0)]);
                changed_keys.extend([(maker.0, instrument.0), (taker.0, instrument.0)]);
                instrument_ids.insert(instrument.0);
            }
        }
        // Money leaving an account is priced against all its positions: those it held before
        // the batch join the registers (those the batch opens are there already).
        // So is a liquidated account, unless it held more positions at the batch's start than
        // the shape prices for a liquidation.
        // So is an auction's end's account, by a cured slot, unless it covers what its shorts
        // can owe at worst (the op slot's `by_cover`, with no margin slot nor registers for
        // its positions, as engine rules 6 budget it).
        let within = |account: &AccountId| {
            accounts
                .get(account.0 as usize)
                .is_none_or(|a| a.positions.len() <= liquidation_priced)
        };
        let liquidated = match op {
            Op::Liquidation { account, .. } | Op::LiquidationStart { account }
                if within(account) =>
            {
                Some((*account, SlotRule::Below))
            }
            Op::LiquidationEnd { account } if within(account) && !ends_by_cover.contains(&i) => {
                Some((*account, SlotRule::Cured))
            }
            _ => None,
        };
        let priced = optio_state::money_out_of(op).map(|a| (a, SlotRule::Out));
        if let Some((AccountId(account), rule)) = priced
            .or(optio_state::flat_for(op)
                .filter(|a| {
                    accounts
                        .get(a.0 as usize)
                        .is_some_and(|x| !x.positions.is_empty())
                })
                .map(|a| (a, SlotRule::Flat)))
            .or(liquidated)
        {
            margin_slots.push((slot_ops.len(), account, rule));
            if let Some(a) = accounts.get(account as usize) {
                for &instrument in a.positions.keys() {
                    position_keys.insert((account, instrument));
                    instrument_ids.insert(instrument);
                }
            }
        }
        slot_ops.push((i, op, 0));
    }
    if let Some((&instrument, _)) = pending.iter().next() {
        // Positions settled without their instrument's settlement in the batch.
        return Err(WitnessError::Invalid(
            ops.iter()
                .position(
                    |o| matches!(o, Op::SettlePosition { instrument: x, .. } if x.0 == instrument),
                )
                .unwrap_or(0),
        ));
    }
    // Whether an account ends the batch in `Portfolio` or `Standard`.
    let margined_after = |a: &u32| {
        let before = accounts
            .get(*a as usize)
            .map_or(MarginMode::WorstCase, |x| x.mode);
        modes.get(a).copied().unwrap_or(before) != MarginMode::WorstCase
    };
    // A Portfolio or Standard account that traded is priced after the batch against its mode's
    // maintenance rule, all its positions in the registers.
    let maintained: BTreeSet<u32> = traded.into_iter().filter(margined_after).collect();
    // An account that filled and ends the batch in WorstCase covers its shorts' worst case
    // there, so it is solvent at any committed marks (each lies in `[0, W]`): only the others
    // are priced.
    let priced_accounts: BTreeSet<u32> =
        filled_accounts.into_iter().filter(margined_after).collect();
    for &account in &maintained {
        if let Some(a) = accounts.get(account as usize) {
            for &instrument in a.positions.keys() {
                position_keys.insert((account, instrument));
                instrument_ids.insert(instrument);
            }
        }
    }
    // An account that filled is priced at the batch's end from the registers when every
    // position it held before is in one, with its instrument's register; otherwise in every
    // run its positions may lie in: those of the positions it held before and of those the
    // batch changes.
    let registers_price: BTreeSet<u32> = priced_accounts
        .iter()
        .copied()
        .filter(|&a| {
            accounts.get(a as usize).is_none_or(|x| {
                x.positions
                    .keys()
                    .all(|i| position_keys.contains(&(a, *i)) && instrument_ids.contains(i))
            })
        })
        .collect();
    let mut solvency_runs: BTreeSet<(u32, u64)> = BTreeSet::new();
    for &a in priced_accounts.difference(&registers_price) {
        let held = accounts
            .get(a as usize)
            .into_iter()
            .flat_map(|x| x.positions.keys().copied());
        let changed = position_keys.range((a, 0)..(a + 1, 0)).map(|&(_, i)| i);
        solvency_runs.extend(held.chain(changed).map(|i| (a, shape.solvency_run(i))));
    }
    let price_runs: BTreeSet<u64> = solvency_runs.iter().map(|&(_, run)| run).collect();
    let most_holders = settles.iter().map(|s| s.3.len()).max().unwrap_or(0);
    let windows = marks
        .iter()
        .filter_map(|(_, op)| match op {
            Op::Mark { instrument, .. } => Some(shape.mark_window_of(instrument.0).0),
            _ => None,
        })
        .collect::<BTreeSet<u64>>()
        .len();
    for (what, used, room) in [
        ("settlement slots", settles.len(), shape.settlements),
        ("holders of a settlement", most_holders, shape.holders),
        ("listing slots", leading.len(), shape.listings),
        ("expiry slots", trailing.len(), shape.expiries),
        ("op slots", slot_ops.len(), shape.slots),
        ("account slots", key_ops.len() + mode_ops.len(), shape.keys),
        ("account registers", account_ids.len(), shape.accounts),
        // Those an op changes take the writable registers; the others the read-only ones, and
        // what the read-only ones cannot hold writable ones too.
        (
            "position registers",
            changed_keys
                .len()
                .max(position_keys.len().saturating_sub(shape.readonly)),
            shape.positions,
        ),
        (
            "instrument registers",
            instrument_ids.len(),
            shape.instruments,
        ),
        ("mark windows", windows, shape.marks),
        (
            "margin slots",
            margin_slots.len() + maintained.len(),
            shape.margins,
        ),
        ("price windows", price_runs.len(), shape.prices),
        ("solvency windows", solvency_runs.len(), shape.solvency),
        (
            "risk chunks (index and scenarios) of a register's instrument",
            register_risk(state, &instrument_ids),
            shape.risk_chunks,
        ),
    ] {
        if used > room {
            return Err(WitnessError::TooLarge(what));
        }
    }

    Ok(Plan {
        specs,
        accounts_after: next_account,
        account_ids,
        position_keys,
        changed_keys,
        instrument_ids,
        marks,
        slot_ops,
        leading,
        trailing,
        settles,
        key_ops: key_ops.into_iter().chain(mode_ops).collect(),
        margin_slots,
        ends_by_cover,
        maintained,
        priced_accounts,
        registers_price,
        solvency_runs,
        price_runs,
    })
}

/// The ops (by index) that end an auction of an account covering what its shorts can owe at
/// worst right before them, as the native ledger applies the batch op by op: each is proven by
/// its op slot's cover (`Slot::by_cover`), no cured slot. A batch the ledger refuses stops the
/// search there; the witness then refuses it by its own rules.
fn ends_by_cover(state: &SettlementState, ops: &[Op]) -> BTreeSet<usize> {
    let mut covered = BTreeSet::new();
    // (Most batches end no auction: no pass then.)
    if !ops.iter().any(|op| matches!(op, Op::LiquidationEnd { .. })) {
        return covered;
    }
    let mut batch = state.begin();
    for (i, op) in ops.iter().enumerate() {
        if let Op::LiquidationEnd { account } = op
            && batch.covers_shorts(state, *account)
        {
            covered.insert(i);
        }
        if batch.push(state, std::slice::from_ref(op)).is_err() {
            break;
        }
    }
    covered
}

/// The witness of `ops` applied to `state` (as of its last commit), for a circuit of `shape`.
pub fn witness(
    state: &SettlementState,
    ops: &[Op],
    shape: Shape,
) -> Result<BatchWitness, WitnessError> {
    let Plan {
        specs,
        accounts_after,
        account_ids,
        position_keys,
        changed_keys,
        instrument_ids,
        marks,
        slot_ops,
        leading,
        trailing,
        settles,
        key_ops,
        margin_slots,
        ends_by_cover,
        maintained,
        priced_accounts,
        registers_price,
        ..
    } = plan(state, ops, shape)?;
    let accounts = state.accounts();
    // Each instrument's worst-case payoff per contract, those the batch lists included: what an
    // account leaf's liability weighs a short by.
    let payoffs: Vec<i64> = specs.iter().map(|spec| leaf::payoff(spec)).collect();

    // Registers, with the values before the batch.
    let account_ids: Vec<u32> = account_ids.into_iter().collect();
    let reg_of: BTreeMap<u32, usize> = account_ids
        .iter()
        .enumerate()
        .map(|(r, id)| (*id, r))
        .collect();
    let mut accts: Vec<Acct> = Vec::with_capacity(account_ids.len());
    let mut account_regs: Vec<AccountReg> = Vec::with_capacity(shape.accounts);
    for &id in &account_ids {
        let acct = match accounts.get(id as usize) {
            Some(a) => {
                let positions: BTreeMap<u32, i128> = a
                    .positions
                    .iter()
                    .map(|(i, q)| (*i, i128::from(q.0)))
                    .collect();
                let mut tree = SparseMerkleTree::new(INSTRUMENT_DEPTH);
                let leaves: Vec<(u64, Fr)> = positions
                    .iter()
                    .map(|(i, q)| (u64::from(*i), fr(*q)))
                    .collect();
                tree.set_many(&leaves)
                    .expect("instrument ids fit the depth");
                Acct {
                    owner: from_address(&a.owner.0),
                    mode: a.mode,
                    open: a.positions.len() as u64,
                    keys: a.keys.clone(),
                    nonce: i128::from(a.nonce),
                    collateral: i128::from(a.collateral.0),
                    positions,
                    since: a.since,
                    tree,
                }
            }
            None => Acct {
                owner: Fr::from(0u64),
                mode: MarginMode::WorstCase,
                open: 0,
                keys: BTreeMap::new(),
                nonce: 0,
                collateral: 0,
                positions: BTreeMap::new(),
                since: 0,
                tree: SparseMerkleTree::new(INSTRUMENT_DEPTH),
            },
        };
        account_regs.push(AccountReg {
            enabled: true,
            opened: id as usize >= accounts.len(),
            id,
            owner: acct.owner,
            mode: acct.mode,
            keys_hash: leaf::keys_hash(&acct.keys),
            nonce: fr(acct.nonce),
            open_positions: acct.open,
            liability: Fr::from(acct.liability(&payoffs)),
            collateral: fr(acct.collateral),
            positions_root: acct.tree.root(),
            since: acct.since,
            margined: margin_slots.iter().any(|(_, a, _)| *a == id) || maintained.contains(&id),
            registers_price: registers_price.contains(&id),
            siblings: Vec::new(),
        });
        accts.push(acct);
    }
    // Position registers: the writable ones (in key order, then those unused), then the
    // read-only ones (positions no op changes, as many as they hold, in key order, then those
    // unused).
    let (mut readonly_keys, mut writable_keys) = (Vec::new(), Vec::new());
    for key in position_keys {
        if !changed_keys.contains(&key) && readonly_keys.len() < shape.readonly {
            readonly_keys.push(key);
        } else {
            writable_keys.push(key);
        }
    }
    let pos_of: BTreeMap<(u32, u32), usize> = writable_keys
        .iter()
        .enumerate()
        .chain(
            readonly_keys
                .iter()
                .enumerate()
                .map(|(j, k)| (shape.positions + j, k)),
        )
        .map(|(p, k)| (*k, p))
        .collect();
    let register = |&(account, instrument): &(u32, u32)| PositionReg {
        enabled: true,
        account: reg_of[&account],
        instrument,
        qty: fr(accts[reg_of[&account]]
            .positions
            .get(&instrument)
            .copied()
            .unwrap_or(0)),
        siblings: Vec::new(),
    };
    let unused = || PositionReg {
        siblings: zeros(INSTRUMENT_DEPTH),
        ..PositionReg::default()
    };
    let mut position_regs: Vec<PositionReg> = writable_keys.iter().map(register).collect();
    position_regs.resize_with(shape.positions, unused);
    position_regs.extend(readonly_keys.iter().map(register));
    position_regs.resize_with(shape.positions + shape.readonly, unused);
    let instrument_ids: Vec<u32> = instrument_ids.into_iter().collect();
    let inst_of: BTreeMap<u32, usize> = instrument_ids
        .iter()
        .enumerate()
        .map(|(r, id)| (*id, r))
        .collect();

    // The ops, on the registers.
    let (insurance, fee_pool_before) = state.funds();
    // Insurance moved by the op slots (liquidation fees in, deficit covers out).
    let mut liquidation_fees: i128 = 0;
    let mut fee_pool = i128::from(fee_pool_before.0);
    // Loss shares since the last deficit cover.
    let mut shared: i128 = 0;
    let mut priority = state.priority_served();
    let mut slots = Vec::with_capacity(shape.slots);
    // The op slots whose liquidated account the plan prices (the others are unpriced), and
    // the total each such account falls short with.
    let priced: BTreeSet<usize> = margin_slots
        .iter()
        .filter(|(_, _, rule)| matches!(rule, SlotRule::Below | SlotRule::Cured))
        .map(|(k, _, _)| *k)
        .collect();
    let mut shortfalls: BTreeMap<usize, usize> = BTreeMap::new();
    for &(index, op, opened_id) in &slot_ops {
        let mut slot = Slot::default();
        match op {
            Op::OpenAccount { owner } => {
                let r = reg_of[&opened_id];
                slot.kind = kind::OPEN;
                slot.owner = from_address(&owner.0);
                slot.a = Some(r);
                slot.a_id = opened_id;
                accts[r].owner = slot.owner;
            }
            Op::Deposit { account, amount }
            | Op::Withdraw {
                account, amount, ..
            }
            | Op::L1Deposit {
                account, amount, ..
            }
            | Op::L1Withdrawal {
                account, amount, ..
            } => {
                let debit = matches!(op, Op::Withdraw { .. } | Op::L1Withdrawal { .. });
                slot.kind = match op {
                    Op::Deposit { .. } => kind::DEPOSIT,
                    Op::Withdraw { .. } => kind::WITHDRAW,
                    Op::L1Deposit { .. } => kind::L1_DEPOSIT,
                    _ => kind::L1_WITHDRAWAL,
                };
                if let Op::L1Deposit { priority: p, .. } | Op::L1Withdrawal { priority: p, .. } = op
                {
                    slot.priority = Fr::from(*p);
                    priority += 1;
                }
                if let Op::Withdraw { owner: to, .. } | Op::L1Withdrawal { requester: to, .. } = op
                {
                    slot.owner = from_address(&to.0);
                }
                let r = reg_of[&account.0];
                slot.a = Some(r);
                slot.a_id = account.0;
                slot.amount = fr(i128::from(amount.0));
                let amount = i128::from(amount.0);
                if debit {
                    accts[r].collateral -= amount;
                    accts[r].nonce += i128::from(amount != 0);
                } else {
                    accts[r].collateral += amount;
                }
            }
            Op::LiquidationStart { account } => {
                slot.kind = kind::LIQUIDATION_START;
                let r = reg_of[&account.0];
                (slot.a, slot.a_id) = (Some(r), account.0);
                // (Marks apply after the op slots: the committed time is the old root's.)
                accts[r].since = state.oracle_ms();
                if priced.contains(&slots.len()) {
                    let short = shortfall(state, accounts, &accts[r], *account, index)?;
                    shortfalls.insert(slots.len(), short);
                } else {
                    slot.unpriced = true;
                }
            }
            Op::LiquidationEnd { account } => {
                slot.kind = kind::LIQUIDATION_END;
                let r = reg_of[&account.0];
                (slot.a, slot.a_id) = (Some(r), account.0);
                // Covering its shorts, as the plan found it: no cured slot.
                slot.by_cover = ends_by_cover.contains(&index);
                if !slot.by_cover && !priced.contains(&slots.len()) {
                    slot.unpriced = true;
                }
                accts[r].since = 0;
            }
            Op::LossShared { account, amount } => {
                slot.kind = kind::LOSS_SHARED;
                let r = reg_of[&account.0];
                (slot.a, slot.a_id) = (Some(r), account.0);
                slot.amount = fr(i128::from(amount.0));
                accts[r].collateral -= i128::from(amount.0);
                shared += i128::from(amount.0);
            }
            Op::DeficitCovered {
                account,
                insurance,
                fee_pool: from_fees,
                socialized,
            } => {
                if i128::from(socialized.0) != shared {
                    return Err(WitnessError::Invalid(index));
                }
                slot.kind = kind::DEFICIT;
                let r = reg_of[&account.0];
                (slot.a, slot.a_id) = (Some(r), account.0);
                slot.amount = fr(i128::from(insurance.0));
                slot.price = fr(i128::from(from_fees.0));
                accts[r].collateral += i128::from(insurance.0) + i128::from(from_fees.0) + shared;
                liquidation_fees -= i128::from(insurance.0);
                fee_pool -= i128::from(from_fees.0);
                shared = 0;
            }
            Op::Transfer { from, to, amount } => {
                slot.kind = kind::TRANSFER;
                slot.amount = fr(i128::from(amount.0));
                let (ra, rb) = (reg_of[&from.0], reg_of[&to.0]);
                (slot.a, slot.b, slot.a_id, slot.b_id) = (Some(ra), Some(rb), from.0, to.0);
                accts[ra].collateral -= i128::from(amount.0);
                accts[rb].collateral += i128::from(amount.0);
            }
            Op::Fill { .. } | Op::Liquidation { .. } | Op::L1Close { .. } => {
                // A liquidation is a trade between the counterparty and the liquidated account,
                // a forced close between the backstop and the account it names
                // (`optio_state::blob::Trade`).
                let t = optio_state::blob::trade(op).expect("a trade");
                let (k, instrument, a_id, b_id, buys) =
                    (t.kind, t.instrument, t.a, t.b, t.taker_buys);
                let (price, q, liquidation_fee) =
                    (t.price, i128::from(t.qty).abs(), t.fee.map(i128::from));
                let spec = specs[instrument as usize];
                slot.kind = k;
                slot.instrument = instrument;
                slot.price = fr(i128::from(price));
                slot.qty = fr(q);
                slot.taker_buys = buys;
                let (ra, rb) = (reg_of[&a_id], reg_of[&b_id]);
                (slot.a, slot.b, slot.a_id, slot.b_id) = (Some(ra), Some(rb), a_id, b_id);
                slot.pa = Some(pos_of[&(a_id, instrument)]);
                slot.pb = Some(pos_of[&(b_id, instrument)]);
                slot.i = Some(inst_of[&instrument]);
                let mut notional = i128::from(price) * q / i128::from(QTY_SCALE);
                if let Op::L1Close {
                    priority: p,
                    requester,
                    qty,
                    ..
                } = op
                {
                    // The value rounded against the account: `notional * 1e8 - price * qty` is
                    // the rounding, of the buyer's sign.
                    let cash = optio_state::close_cash(*qty, Price(price))
                        .ok_or(WitnessError::Invalid(index))?;
                    notional = i128::from(cash).abs();
                    let sign: i128 = if buys { 1 } else { -1 };
                    slot.rounding =
                        fr(sign * (notional * i128::from(QTY_SCALE) - i128::from(price) * q));
                    slot.priority = Fr::from(*p);
                    slot.owner = from_address(&requester.0);
                    priority += 1;
                }
                // The engine's fee rule (the circuit checks the same rounding).
                let fee = |rate: optio_types::FeeRate| {
                    i64::try_from(notional)
                        .ok()
                        .and_then(|n| rate.fee_on(optio_types::Amount(n)).ok())
                        .map(|f| i128::from(f.0))
                        .ok_or(WitnessError::Invalid(index))
                };
                let (maker_fee, taker_fee) = (fee(spec.maker_fee)?, fee(spec.taker_fee)?);
                slot.notional = fr(notional);
                slot.maker_fee = fr(maker_fee);
                slot.taker_fee = fr(taker_fee);
                let (a_fee, b_fee) = match liquidation_fee {
                    Some(f) => {
                        slot.amount = fr(f);
                        liquidation_fees += f;
                        (0, f)
                    }
                    // A forced close pays no fee.
                    None if k == kind::L1_CLOSE => (0, 0),
                    None => {
                        fee_pool += maker_fee + taker_fee;
                        (maker_fee, taker_fee)
                    }
                };
                // A liquidated account the shape prices falls short of its maintenance before
                // the op, in the mode the batch found it in.
                if let Op::Liquidation { account, .. } = op {
                    if !priced.contains(&slots.len()) {
                        slot.unpriced = true;
                    } else {
                        let short = shortfall(state, accounts, &accts[rb], *account, index)?;
                        shortfalls.insert(slots.len(), short);
                    }
                }
                let sign: i128 = if buys { 1 } else { -1 };
                for (r, cash, moved) in [
                    (ra, sign * notional - a_fee, -sign * q),
                    (rb, -sign * notional - b_fee, sign * q),
                ] {
                    accts[r].collateral += cash;
                    let p = accts[r].positions.entry(instrument).or_insert(0);
                    *p += moved;
                    if *p == 0 {
                        accts[r].positions.remove(&instrument);
                    }
                }
            }
            _ => unreachable!("only covered ops reach the slots"),
        }
        slots.push(slot);
    }
    if shared != 0 {
        // Loss shares no deficit cover claimed.
        return Err(WitnessError::Invalid(ops.len().saturating_sub(1)));
    }
    slots.resize_with(shape.slots, Slot::default);

    // Session keys and margin modes, after the op slots (which neither read nor write them).
    let mut key_slots = Vec::with_capacity(shape.keys);
    let empty = vec![(Fr::from(0u64), 0); KEYS];
    for op in key_ops {
        let (account, key, expiry_ms, at_ms) = match op {
            Op::SessionKey {
                account,
                key,
                expiry_ms,
                at_ms,
            } => (account, key, expiry_ms, at_ms),
            Op::SetMarginMode { account, mode } => {
                let r = reg_of[&account.0];
                accts[r].mode = *mode;
                key_slots.push(KeySlot {
                    enabled: true,
                    account: Some(r),
                    account_id: account.0,
                    mode: Some(*mode),
                    old: empty.clone(),
                    new: empty.clone(),
                    ..KeySlot::default()
                });
                continue;
            }
            _ => unreachable!("collected session keys and margin modes"),
        };
        let r = reg_of[&account.0];
        let before = accts[r].keys.clone();
        let keys = &mut accts[r].keys;
        keys.retain(|_, until| *until > *at_ms);
        if *expiry_ms == 0 {
            keys.remove(key);
        } else {
            keys.insert(*key, *expiry_ms);
        }
        if before.len() > KEYS || keys.len() > KEYS {
            return Err(WitnessError::TooLarge("session keys of an account"));
        }
        let list = |m: &BTreeMap<Address, u64>| {
            let mut v: Vec<(Fr, u64)> = m.iter().map(|(k, e)| (from_address(&k.0), *e)).collect();
            v.resize(KEYS, (Fr::from(0u64), 0));
            v
        };
        let sources = keys
            .keys()
            .map(|k| {
                if k == key {
                    None
                } else {
                    before.keys().position(|b| b == k)
                }
            })
            .collect();
        key_slots.push(KeySlot {
            enabled: true,
            account: Some(r),
            account_id: account.0,
            mode: None,
            key: from_address(&key.0),
            expiry: *expiry_ms,
            at: *at_ms,
            old: list(&before),
            old_len: before.len(),
            new: list(keys),
            new_len: keys.len(),
            sources,
        });
    }
    key_slots.resize_with(shape.keys, || KeySlot {
        old: empty.clone(),
        new: empty.clone(),
        ..KeySlot::default()
    });

    // Settlements' cash and positions (their instrument leaves follow with the instruments).
    let mut insurance_after = i128::from(insurance.0) + liquidation_fees;
    let mut settle_holders = Vec::with_capacity(settles.len());
    for (instrument, _, credit, holders) in &settles {
        let mut out: Vec<Holder> = holders
            .iter()
            .map(|&(account, qty, cash)| {
                let r = reg_of[&account];
                accts[r].collateral += i128::from(cash);
                let left =
                    accts[r].positions.get(instrument).copied().unwrap_or(0) - i128::from(qty);
                if left == 0 {
                    accts[r].positions.remove(instrument);
                } else {
                    accts[r].positions.insert(*instrument, left);
                }
                Holder {
                    account: Some(r),
                    position: Some(pos_of[&(account, *instrument)]),
                    account_id: account,
                    qty: fr(i128::from(qty)),
                    short: qty < 0,
                    cash: fr(i128::from(cash)),
                }
            })
            .collect();
        out.resize_with(shape.holders, Holder::default);
        settle_holders.push(out);
        insurance_after += i128::from(*credit);
    }

    // Write-backs: positions in register order (a read-only one rereads its leaf), then
    // accounts in id order.
    for reg in position_regs.iter_mut().filter(|r| r.enabled) {
        let acct = &mut accts[reg.account];
        reg.siblings = path(&acct.tree, u64::from(reg.instrument));
        let q = acct.positions.get(&reg.instrument).copied().unwrap_or(0);
        acct.tree
            .set(u64::from(reg.instrument), fr(q))
            .expect("instrument ids fit the depth");
    }
    let seeds: Vec<(u64, Fr, Proof)> = account_ids
        .iter()
        .zip(&account_regs)
        .map(|(&id, reg)| {
            let before = if reg.opened {
                Fr::from(0u64)
            } else {
                accounts[id as usize].leaf(&payoffs).hash()
            };
            (u64::from(id), before, state.account_proof(AccountId(id)))
        })
        .collect();
    let mut account_tree = overlay(ACCOUNT_DEPTH, &seeds);
    for (reg, acct) in account_regs.iter_mut().zip(&accts) {
        reg.siblings = path(&account_tree, u64::from(reg.id));
        account_tree
            .set(u64::from(reg.id), acct.leaf(&payoffs))
            .expect("ids fit the depth");
    }
    account_regs.resize_with(shape.accounts, || AccountReg {
        siblings: zeros(ACCOUNT_DEPTH),
        ..AccountReg::default()
    });

    // Solvency windows: each account priced (it filled and ends the batch in a margin mode) that
    // the registers do not price, over the runs
    // its positions end the batch in, by account and run; and a price window per run they use.
    let solvency_bits = shape.solvency_bits;
    let solvency_span = shape.solvency_window() as u32;
    let mut windows: Vec<(usize, u64)> = Vec::new();
    for &a in priced_accounts.difference(&registers_price) {
        let r = reg_of[&a];
        let runs: BTreeSet<u64> = accts[r]
            .positions
            .iter()
            .filter(|(_, q)| **q != 0)
            .map(|(&i, _)| shape.solvency_run(i))
            .collect();
        windows.extend(runs.into_iter().map(|run| (r, run)));
    }
    let price_runs: Vec<u64> = windows
        .iter()
        .map(|&(_, run)| run)
        .collect::<BTreeSet<u64>>()
        .into_iter()
        .collect();
    let mut solvency: Vec<SolvencyWindow> = windows
        .iter()
        .map(|&(r, run)| {
            let base = (run << solvency_bits) as u32;
            SolvencyWindow {
                enabled: true,
                account: Some(r),
                price: price_runs.binary_search(&run).ok(),
                qty: (base..base + solvency_span)
                    .map(|i| fr(accts[r].positions.get(&i).copied().unwrap_or(0)))
                    .collect(),
                siblings: accts[r].tree.siblings_from(solvency_bits as u8 / 2, run),
            }
        })
        .collect();
    solvency.resize_with(shape.solvency, || SolvencyWindow {
        qty: vec![Fr::from(0u64); solvency_span as usize],
        siblings: zeros(INSTRUMENT_DEPTH - solvency_bits as u8),
        ..SolvencyWindow::default()
    });

    // Instruments: listings and activations, the fills' reads, expiries, then the marks, each
    // on the leaves as the previous left them.
    let existing = state.instruments();
    let mut touched: BTreeSet<u32> = instrument_ids.iter().copied().collect();
    touched.extend(leading.iter().chain(&trailing).map(|(_, id, _)| *id));
    touched.extend(settles.iter().map(|s| s.0));
    // Every id of a price window.
    for &run in &price_runs {
        let base = (run << solvency_bits) as u32;
        touched.extend(base..base + solvency_span);
    }
    // Every id of a mark window: the circuit rebuilds the window's subtree from all its leaves.
    let span = shape.mark_window() as u32;
    for (_, op) in &marks {
        if let Op::Mark { instrument, .. } = op {
            let base = instrument.0 - shape.mark_window_of(instrument.0).1 as u32;
            touched.extend(base..base + span);
        }
    }
    let mut leaves: BTreeMap<u32, InstrumentLeaf> = BTreeMap::new();
    let mut instrument_seeds: Vec<(u64, Fr, Proof)> = Vec::new();
    for &id in &touched {
        let proof = state
            .instrument_proof(InstrumentId(id))
            .ok_or(WitnessError::TooLarge("instrument id"))?;
        let leaf = existing
            .get(id as usize)
            .map(|x| x.leaf())
            .unwrap_or_default();
        let hashed = if (id as usize) < existing.len() {
            leaf.hash()
        } else {
            Fr::from(0u64)
        };
        leaves.insert(id, leaf);
        instrument_seeds.push((u64::from(id), hashed, proof));
    }
    let mut instrument_tree = overlay(INSTRUMENT_DEPTH, &instrument_seeds);
    fn instrument_op(
        (k, id, spec): (u64, u32, Option<&InstrumentSpec>),
        tree: &mut SparseMerkleTree,
        leaves: &mut BTreeMap<u32, InstrumentLeaf>,
    ) -> InstrumentOp {
        let before = if k == kind::LIST {
            InstrumentLeaf::default()
        } else {
            leaves[&id]
        };
        let siblings = path(tree, u64::from(id));
        let spec_hash = spec.map_or(Fr::from(0u64), leaf::spec_hash);
        let bytes = spec.map(optio_state::blob::spec_bytes).unwrap_or_default();
        let mut spec_chunks: Vec<Fr> = bytes
            .chunks(31)
            .map(<Fr as ark_ff::PrimeField>::from_be_bytes_mod_order)
            .collect();
        spec_chunks.resize(SPEC_CHUNKS.max(spec_chunks.len()), Fr::from(0u64));
        let after = match k {
            kind::LIST => InstrumentLeaf {
                spec_hash,
                ..InstrumentLeaf::default()
            },
            kind::ACTIVATE => InstrumentLeaf {
                status: status::ACTIVE,
                ..before
            },
            _ => InstrumentLeaf {
                status: status::EXPIRED,
                ..before
            },
        };
        leaves.insert(id, after);
        tree.set(u64::from(id), after.hash())
            .expect("ids fit the depth");
        InstrumentOp {
            kind: k,
            instrument: id,
            before,
            siblings,
            spec_hash,
            spec: spec.map(SpecOpening::of).unwrap_or_default(),
            spec_len: bytes.len(),
            spec_chunks,
        }
    }
    let pad = || InstrumentOp {
        siblings: zeros(INSTRUMENT_DEPTH),
        spec_chunks: vec![Fr::from(0u64); SPEC_CHUNKS],
        ..InstrumentOp::default()
    };
    let mut listing_slots: Vec<InstrumentOp> = leading
        .iter()
        .map(|o| instrument_op(*o, &mut instrument_tree, &mut leaves))
        .collect();
    listing_slots.resize_with(shape.listings, pad);
    let mut instrument_regs: Vec<InstrumentReg> = instrument_ids
        .iter()
        .map(|&id| {
            let spec = specs[id as usize];
            let x = existing.get(id as usize);
            let risk = x.map_or(&[][..], |x| &x.risk[..]);
            let chunks = x.map_or(0, register_chunks);
            let mut values: Vec<Fr> = risk.iter().map(|a| fr(i128::from(a.0))).collect();
            values.resize(register_capacity(shape), Fr::from(0u64));
            // A scenario of the lowest and of the highest value, unless the no-move one is as
            // low (high).
            let by_value = || risk.iter().enumerate().map(|(s, v)| (v.0, s));
            let low = by_value().min().filter(|&(v, _)| v < 0).map(|(_, s)| s);
            let high = by_value().max().filter(|&(v, _)| v > 0).map(|(_, s)| s);
            InstrumentReg {
                enabled: true,
                id,
                leaf: leaves[&id],
                spec: SpecOpening::of(spec),
                index: x.map_or(Fr::from(0u64), |x| fr(i128::from(x.index.0))),
                risk: values,
                chunks,
                low,
                high,
                siblings: path(&instrument_tree, u64::from(id)),
            }
        })
        .collect();
    instrument_regs.resize_with(shape.instruments, || InstrumentReg {
        siblings: zeros(INSTRUMENT_DEPTH),
        risk: vec![Fr::from(0u64); register_capacity(shape)],
        ..InstrumentReg::default()
    });
    let mut expiry_slots: Vec<InstrumentOp> = trailing
        .iter()
        .map(|o| instrument_op(*o, &mut instrument_tree, &mut leaves))
        .collect();
    expiry_slots.resize_with(shape.expiries, pad);
    let mut settle_slots = Vec::with_capacity(shape.settlements);
    for ((instrument, price, credit, _), holders) in settles.iter().zip(settle_holders) {
        let before = leaves[instrument];
        let siblings = path(&instrument_tree, u64::from(*instrument));
        let spec = specs[*instrument as usize];
        let (payoff, strike) = leaf::payoff_terms(spec);
        let cap = spec.underlying_cap.0;
        let clamped = (*price).clamp(0, cap);
        let per_unit = match payoff {
            1 => clamped - strike,
            2 => strike - clamped,
            _ => clamped,
        };
        let after = InstrumentLeaf {
            status: status::SETTLED,
            // A value past 63 bits (no listed spec has one) cannot be proven either way.
            mark: spec
                .settled_mark(optio_types::Price(*price))
                .unwrap_or(optio_types::Price::ZERO),
            risk_hash: Fr::from(0u64),
            settlement_price: optio_types::Price(*price),
            ..before
        };
        instrument_tree
            .set(u64::from(*instrument), after.hash())
            .expect("ids fit the depth");
        leaves.insert(*instrument, after);
        settle_slots.push(SettleSlot {
            enabled: true,
            instrument: *instrument,
            before,
            spec: SpecOpening::of(spec),
            siblings,
            price: fr(i128::from(*price)),
            insurance_credit: fr(i128::from(*credit)),
            capped: *price > cap,
            in_money: payoff == 0 || per_unit > 0,
            holders,
        });
    }
    settle_slots.resize_with(shape.settlements, || SettleSlot {
        siblings: zeros(INSTRUMENT_DEPTH),
        holders: vec![Holder::default(); shape.holders],
        ..SettleSlot::default()
    });
    // The price windows, as the marks find the leaves.
    let mut prices: Vec<PriceWindow> = price_runs
        .iter()
        .map(|&run| {
            let base = (run << solvency_bits) as u32;
            PriceWindow {
                enabled: true,
                index: run,
                siblings: instrument_tree.siblings_from(solvency_bits as u8 / 2, run),
                leaves: (base..base + solvency_span)
                    .map(|id| ((id as usize) < specs.len(), leaves[&id]))
                    .collect(),
            }
        })
        .collect();
    prices.resize_with(shape.prices, || PriceWindow {
        siblings: zeros(INSTRUMENT_DEPTH - solvency_bits as u8),
        leaves: vec![(false, InstrumentLeaf::default()); solvency_span as usize],
        ..PriceWindow::default()
    });
    let bits = shape.mark_window_bits;
    let empty_entry = || MarkEntry {
        risk: vec![Fr::from(0u64); shape.risk_chunks * RISK_CHUNK],
        ..MarkEntry::default()
    };
    let mut mark_windows: Vec<MarkWindow> = Vec::with_capacity(shape.marks);
    for (_, op) in &marks {
        let Op::Mark {
            instrument,
            mark,
            index: underlying,
            risk,
            published_ms,
        } = op
        else {
            unreachable!("collected marks")
        };
        let chunks = hash_chunks(risk.len());
        if chunks > shape.risk_chunks {
            return Err(WitnessError::TooLarge("risk array"));
        }
        let id = u64::from(instrument.0);
        let (index, place) = shape.mark_window_of(instrument.0);
        if mark_windows.last().is_none_or(|w| w.index != index) {
            // The window's leaves and path as the earlier slots left them.
            let base = index << bits;
            let entries = (0..shape.mark_window() as u64)
                .map(|j| MarkEntry {
                    leaf: instrument_tree.leaf(base + j).expect("ids fit the depth"),
                    ..empty_entry()
                })
                .collect();
            mark_windows.push(MarkWindow {
                enabled: true,
                index,
                siblings: instrument_tree.siblings_from(bits as u8 / 2, index),
                entries,
            });
        }
        let before = leaves[&instrument.0];
        let mut values: Vec<Fr> = risk.iter().map(|a| fr(i128::from(a.0))).collect();
        values.resize(shape.risk_chunks * RISK_CHUNK, Fr::from(0u64));
        let after = InstrumentLeaf {
            mark: *mark,
            risk_hash: leaf::risk_hash(*underlying, risk),
            ..before
        };
        instrument_tree
            .set(id, after.hash())
            .expect("ids fit the depth");
        leaves.insert(instrument.0, after);
        let entry = &mut mark_windows.last_mut().expect("pushed above").entries[place];
        *entry = MarkEntry {
            marked: true,
            leaf: entry.leaf,
            before,
            mark: fr(i128::from(mark.0)),
            index: fr(i128::from(underlying.0)),
            published_ms: *published_ms,
            risk: values,
            len: risk.len(),
            chunks,
            spec: SpecOpening::of(specs[instrument.0 as usize]),
        };
    }
    mark_windows.resize_with(shape.marks, || MarkWindow {
        siblings: zeros(INSTRUMENT_DEPTH - bits as u8),
        entries: vec![empty_entry(); shape.mark_window()],
        ..MarkWindow::default()
    });

    let accounts_root = if account_ids.is_empty() {
        state.accounts_root()
    } else {
        account_tree.root()
    };
    let instruments_root = if touched.is_empty() {
        state.instruments_root()
    } else {
        instrument_tree.root()
    };
    let counts = state.counts();
    let oracle_after = marks.iter().fold(counts.oracle_ms, |t, (_, op)| match op {
        Op::Mark { published_ms, .. } => t.max(*published_ms),
        _ => t,
    });
    let new_root = leaf::state_root(
        accounts_root,
        instruments_root,
        hash(&[
            fr(insurance_after),
            fr(fee_pool),
            leaf::Counts {
                accounts: accounts_after,
                instruments: specs.len() as u32,
                oracle_ms: oracle_after,
            }
            .word(),
        ]),
    );
    let mut margins: Vec<MarginSlot> = margin_slots
        .iter()
        .map(|&(slot, account, rule)| {
            Ok(MarginSlot {
                enabled: true,
                flat: rule == SlotRule::Flat,
                end: false,
                below: rule == SlotRule::Below,
                cured: rule == SlotRule::Cured,
                scenario: match rule {
                    SlotRule::Below => Some(
                        *shortfalls
                            .get(&slot)
                            .ok_or(WitnessError::Invalid(slot_ops[slot].0))?,
                    ),
                    _ => None,
                },
                slot: Some(slot),
                account: Some(reg_of[&account]),
            })
        })
        .chain(maintained.iter().map(|account| {
            Ok(MarginSlot {
                enabled: true,
                end: true,
                account: Some(reg_of[account]),
                ..MarginSlot::default()
            })
        }))
        .collect::<Result<_, WitnessError>>()?;
    margins.resize_with(shape.margins, MarginSlot::default);
    let mut w = BatchWitness {
        shape,
        accounts_root: state.accounts_root(),
        instruments_root: state.instruments_root(),
        insurance: fr(i128::from(insurance.0)),
        fee_pool: fr(i128::from(fee_pool_before.0)),
        counts,
        accounts: account_regs,
        positions: position_regs,
        instruments: instrument_regs,
        listings: listing_slots,
        slots,
        keys: key_slots,
        expiries: expiry_slots,
        settlements: settle_slots,
        insurance_after: fr(insurance_after),
        marks: mark_windows,
        margins,
        prices,
        solvency,
        public: PublicInputs {
            old_root: state.root(),
            new_root,
            commitment: Fr::from(0u64),
            priority_before: state.priority_served(),
            priority_after: priority,
            z: Fr::from(0u64),
            y: Fr::from(0u64),
        },
    };
    w.public.commitment = commitment(&w);
    // The words the blob posts for these ops, and the point the contract evaluates them at.
    let meta = optio_state::blob::BlobMeta {
        accounts: counts.accounts,
        instruments: counts.instruments,
        ..optio_state::blob::BlobMeta::default()
    };
    let encoded = optio_state::blob::encode_ops(&meta, ops).map_err(|e| match e {
        optio_state::BlobError::Unencodable { op, .. } => WitnessError::Invalid(op),
        _ => WitnessError::Invalid(0),
    })?;
    let words: Vec<Fr> = encoded.into_iter().flat_map(|e| e.words).collect();
    (w.public.z, w.public.y) = optio_state::blob::binding(w.public.commitment, &words);
    Ok(w)
}

/// The witness of an empty batch of `shape` (what key generation synthesizes).
pub fn empty(shape: Shape) -> BatchWitness {
    let state = SettlementState::new();
    witness(&state, &[], shape).expect("an empty batch fits every shape")
}
