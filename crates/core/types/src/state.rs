//! The canonical form of the engine's state: plain sorted lists, independent of how any
//! implementation stores them. Its encoding is the snapshot format; blake3 of the encoding is
//! the state hash. The engine and the reference model both produce it, so comparing hashes
//! compares everything that matters, down to time priority within a price level.

use crate::codec::{DecodeError, Reader, Writer};
use crate::fixed::{Amount, FeeRate, Price, Qty};
use crate::ids::{AccountId, Address, InstrumentId, OrderId};
use crate::input::{SelfTradePrevention, Side, TimeInForce};
use crate::instrument::{InstrumentName, InstrumentSpec, InstrumentStatus};
use crate::oracle::{MAX_UNDERLYING_LEN, MarginMode, RiskConfig};

const MAGIC: &[u8; 8] = b"OPTIOST\0";
const VERSION: u32 = 9;
/// The last version whose fill budget does not bound `Portfolio` accounts' registers.
const VERSION_WITHOUT_PORTFOLIO_BUDGET: u32 = 8;
/// The last version whose proof limits have no settlement budget.
const VERSION_WITHOUT_SETTLE_BUDGET: u32 = 7;
/// The last version without mark windows in its limits (still decoded: unbounded).
const VERSION_WITHOUT_MARK_WINDOWS: u32 = 6;
/// The last version without a fill budget in its limits (still decoded: unbounded).
const VERSION_WITHOUT_FILL_BUDGET: u32 = 5;
/// The last version whose oracle records carry index samples (still decoded).
const VERSION_WITH_SAMPLES: u32 = 4;

/// Bounds the engine enforces, each with its own rejection code. Part of the state: replicas
/// must agree on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    /// Open orders per account.
    pub max_open_orders_per_account: u32,
    /// Price levels per side of one book.
    pub max_price_levels_per_side: u32,
    /// Entries in one mass quote.
    pub max_mass_quote_entries: u32,
    /// Listed instruments.
    pub max_instruments: u32,
    /// Accounts.
    pub max_accounts: u32,
    /// Size of one order, in `Qty` units.
    pub max_order_qty: Qty,
    /// One deposit, withdrawal or transfer.
    pub max_amount: Amount,
    /// Open positions an account may hold while money leaves it at its holder's request (a
    /// withdrawal, a transfer): the validity proof prices every one, and its circuit's shape
    /// holds only so many (`optio node` sets it from the prover's shape). A forced withdrawal
    /// is not held to it (`crate::forced_withdrawal` needs no mark).
    pub max_positions_to_withdraw: u32,
    /// What the fills of one order may touch: a batch holding only that order's input must fit
    /// the validity proof's circuit (`optio node` sets it from the prover's shape). The fills
    /// past it are not made, and the order's rest is cancelled (`DoneReason::FillLimit`).
    pub fill_budget: FillBudget,
    /// The mark windows one proven batch holds: an instrument is listed only while those not
    /// yet settled, it included, lie in that many windows (`optio node` sets it from the
    /// prover's shape), so that any oracle update's marks fit a batch. Refused otherwise with
    /// `TooManyInstruments`.
    pub mark_windows: MarkWindows,
    /// What one input's expiry settlements may post: an instrument with more holders than one
    /// settlement holds settles in balanced parts, and settlements past the budget wait, each
    /// part at a later oracle update (`optio node` sets it from the prover's shape).
    pub settle_budget: SettleBudget,
}

/// The limits a validity proof's circuit shape sets (`EngineLimits`' last three). `optio node`
/// sequences them from its prover keys (`Command::SetProofLimits`), so that they change only
/// through the log: a restart, a snapshot or a replay from genesis gives the same engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProofLimits {
    /// `EngineLimits::max_positions_to_withdraw`.
    pub max_positions_to_withdraw: u32,
    /// `EngineLimits::fill_budget`.
    pub fill_budget: FillBudget,
    /// `EngineLimits::mark_windows`.
    pub mark_windows: MarkWindows,
    /// `EngineLimits::settle_budget`.
    pub settle_budget: SettleBudget,
}

impl ProofLimits {
    /// No bound (a node without prover keys; every node's genesis).
    pub const UNBOUNDED: ProofLimits = ProofLimits {
        max_positions_to_withdraw: u32::MAX,
        fill_budget: FillBudget::UNBOUNDED,
        mark_windows: MarkWindows::UNBOUNDED,
        settle_budget: SettleBudget::UNBOUNDED,
    };

    /// Whether its windows span at most 2^32 instrument ids (what a snapshot holds).
    pub fn is_valid(&self) -> bool {
        self.fill_budget.window_bits <= 32 && self.mark_windows.bits <= 32
    }
}

impl EngineLimits {
    /// The limits a proof's shape sets.
    pub fn proof(&self) -> ProofLimits {
        ProofLimits {
            max_positions_to_withdraw: self.max_positions_to_withdraw,
            fill_budget: self.fill_budget,
            mark_windows: self.mark_windows,
            settle_budget: self.settle_budget,
        }
    }

    /// These limits with `proof`'s.
    pub fn with_proof(self, proof: ProofLimits) -> Self {
        Self {
            max_positions_to_withdraw: proof.max_positions_to_withdraw,
            fill_budget: proof.fill_budget,
            mark_windows: proof.mark_windows,
            settle_budget: proof.settle_budget,
            ..self
        }
    }
}

/// What one input's expiries and settlements may post (the prover's `Shape::expiries` slots, and
/// its `Shape::settlements` slots, each paying at most `Shape::holders` positions, with an
/// account register for each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettleBudget {
    /// Expiries (the rest are posted by the next inputs; the engine expires them on time).
    pub expiries: u32,
    /// Settlements (each an instrument's, or a part of one).
    pub slots: u32,
    /// Positions one settlement pays, the accounts of one input's settlements together.
    pub holders: u32,
}

impl SettleBudget {
    /// No bound: every settlement pays every holder at once.
    pub const UNBOUNDED: SettleBudget = SettleBudget {
        expiries: u32::MAX,
        slots: u32::MAX,
        holders: u32::MAX,
    };
}

/// Aligned runs of `2^bits` instrument ids, `windows` of them: what one proven batch can mark
/// (the prover's `Shape::marks` windows of `Shape::mark_window` ids). The oracle marks the
/// instruments not yet settled (a settled one keeps its settlement value as its mark), so the
/// engine keeps those within the windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkWindows {
    /// Windows.
    pub windows: u32,
    /// A window spans `2^bits` ids.
    pub bits: u32,
}

impl MarkWindows {
    /// No bound.
    pub const UNBOUNDED: MarkWindows = MarkWindows {
        windows: u32::MAX,
        bits: 0,
    };

    /// The window `instrument` lies in.
    pub fn run(&self, instrument: InstrumentId) -> u32 {
        instrument.0.checked_shr(self.bits).unwrap_or(0)
    }
}

/// What the fills of one order (or amendment) may touch, so that its input alone fits one
/// proven batch. An order trades one instrument: each account it fills touches one position.
/// An account that fills in `Portfolio` or `Standard` (a liquidation's counterparty: a
/// trader's positions are all in registers) and holds a position in another instrument is
/// priced at the batch's end from its positions, in one solvency window per aligned run of `2^window_bits`
/// instrument ids they lie in, the traded one's included, and each run's marks in one price
/// window (the prover's `Shape::solvency_window`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FillBudget {
    /// Fills (each takes one op slot).
    pub fills: u32,
    /// Accounts, the taker's included (each with its one position).
    pub accounts: u32,
    /// Solvency windows, summed over the accounts that fill in `Portfolio` or `Standard` and
    /// hold positions in other instruments (a `WorstCase` account takes none: a proof prices it
    /// nowhere).
    pub windows: u32,
    /// Price windows: distinct runs among those.
    pub prices: u32,
    /// A window spans `2^window_bits` instrument ids.
    pub window_bits: u32,
    /// Margin slots: one per `Portfolio` or `Standard` account a fill names as maker or taker
    /// (the proof checks its maintenance after the batch).
    pub margins: u32,
    /// Position registers: one per account for the traded instrument, and one for every other
    /// position of a `Portfolio` or `Standard` account that trades (its maintenance prices them
    /// all).
    pub positions: u32,
    /// Instrument registers: the traded one, and those of a `Portfolio` or `Standard` account's
    /// positions.
    pub instruments: u32,
}

impl FillBudget {
    /// No bound.
    pub const UNBOUNDED: FillBudget = FillBudget {
        fills: u32::MAX,
        accounts: u32::MAX,
        windows: u32::MAX,
        prices: u32::MAX,
        window_bits: 0,
        margins: u32::MAX,
        positions: u32::MAX,
        instruments: u32::MAX,
    };

    /// The most positions a liquidated account may hold at a batch's start for the proof to
    /// price it (`SettlementState::below_maintenance` before each of its liquidations, with a
    /// margin slot each): all of them in the registers with its counterparty's position, so
    /// one fewer than the position registers, and no more than the instrument registers; none
    /// without margin slots. An account holding more is liquidated unpriced (the proof checks
    /// only that it could default).
    pub fn liquidation_priced(&self) -> u32 {
        if self.margins == 0 {
            0
        } else {
            self.positions.saturating_sub(1).min(self.instruments)
        }
    }

    /// The aligned run of window ids `instrument` lies in.
    pub fn run(&self, instrument: InstrumentId) -> u32 {
        instrument.0.checked_shr(self.window_bits).unwrap_or(0)
    }
}

impl Default for EngineLimits {
    fn default() -> Self {
        Self {
            max_open_orders_per_account: 2_000,
            max_price_levels_per_side: 10_000,
            max_mass_quote_entries: 100,
            max_instruments: 100_000,
            max_accounts: 10_000_000,
            max_order_qty: Qty(1_000_000 * crate::fixed::QTY_SCALE),
            max_amount: Amount(1_000_000_000_000 * crate::fixed::MONEY_SCALE),
            max_positions_to_withdraw: u32::MAX,
            fill_budget: FillBudget::UNBOUNDED,
            settle_budget: SettleBudget::UNBOUNDED,
            mark_windows: MarkWindows::UNBOUNDED,
        }
    }
}

/// Money that is not in any account balance, and the flows that conservation is checked by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// All deposits ever credited.
    pub deposits: i128,
    /// All withdrawals ever debited.
    pub withdrawals: i128,
    /// Fees collected net of rebates.
    pub fee_pool: Amount,
    /// Insurance fund (settlement rounding remainders; later liquidation surplus).
    pub insurance: Amount,
    /// L1 priority operations (deposits, forced withdrawals) served, in queue order: the next
    /// one the engine accepts has this id.
    pub priority_served: u64,
}

/// One instrument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstrumentRecord {
    /// Terms.
    pub spec: InstrumentSpec,
    /// Lifecycle.
    pub status: InstrumentStatus,
    /// Set when settled (or taken and waiting for the settlement budget, still expired).
    pub settlement_price: Option<Price>,
    /// Latest accepted mark and risk array, if the oracle has priced it.
    pub mark: Option<(Price, Vec<Amount>)>,
}

/// The accepted oracle state of one underlying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OracleRecord {
    /// Underlying symbol.
    pub underlying: String,
    /// Last accepted index price.
    pub index_price: Price,
    /// When the last accepted update was published.
    pub published_ms: u64,
    /// A jump held by the circuit breaker: (price, published).
    pub held: Option<(Price, u64)>,
}

/// One position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PositionRecord {
    /// Instrument.
    pub instrument: InstrumentId,
    /// Signed size.
    pub qty: Qty,
    /// Signed cost of the open position (sum of `price * qty` of the fills that opened it, net
    /// of what was closed); the average entry is `cost / qty`.
    pub cost: Amount,
    /// P&L realized by closing (and by settlement).
    pub realized_pnl: Amount,
}

/// One account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    /// Owner wallet.
    pub owner: Address,
    /// Collateral in micro-USDC.
    pub balance: Amount,
    /// Positions with a non-zero size or realized P&L, by instrument id.
    pub positions: Vec<PositionRecord>,
    /// How the account is margined.
    pub margin_mode: MarginMode,
    /// Engine time its liquidation started, while it lasts.
    pub liquidating_since: Option<u64>,
    /// Session keys the owner registered: (key, expiry in ms), by key. A session key may trade
    /// for the account until it expires, never withdraw.
    pub session_keys: Vec<(Address, u64)>,
}

/// One open order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderRecord {
    /// Id.
    pub id: OrderId,
    /// Owner.
    pub account: AccountId,
    /// Instrument.
    pub instrument: InstrumentId,
    /// Side.
    pub side: Side,
    /// Limit price.
    pub price: Price,
    /// Size left.
    pub remaining: Qty,
    /// Size filled so far.
    pub filled: Qty,
    /// Client's id (0: none).
    pub client_order_id: u64,
    /// GTC or GTT (resting orders are never IOC/FOK).
    pub time_in_force: TimeInForce,
    /// Post-only.
    pub post_only: bool,
    /// Reduce-only.
    pub reduce_only: bool,
    /// STP mode.
    pub self_trade: SelfTradePrevention,
    /// Placed by a mass quote (replaced by the next one).
    pub is_quote: bool,
    /// The session key that signed it (`None`: the owner, or not signed). It lives no longer
    /// than the key, and a change that shortens the key's life cancels it.
    pub session_key: Option<Address>,
}

/// The whole engine state in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalState {
    /// Engine time.
    pub time_ms: u64,
    /// Next order id to assign.
    pub next_order_id: u64,
    /// Limits.
    pub limits: EngineLimits,
    /// Risk parameters.
    pub risk: RiskConfig,
    /// Fee pool, insurance, deposit and withdrawal totals.
    pub totals: Totals,
    /// By id.
    pub instruments: Vec<InstrumentRecord>,
    /// By id.
    pub accounts: Vec<AccountRecord>,
    /// By underlying symbol.
    pub oracles: Vec<OracleRecord>,
    /// Open orders in book priority: by instrument id; bids best price first, then asks best
    /// price first; within a price level in time priority.
    pub orders: Vec<OrderRecord>,
    /// Expired instruments whose expiry is not yet posted (`Event::InstrumentExpired`, the
    /// settlement state's expiry op), past their input's expiry budget
    /// (`EngineLimits::settle_budget`): the next inputs post them first. By id.
    pub unposted_expiries: Vec<InstrumentId>,
}

impl CanonicalState {
    /// The snapshot bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes.extend_from_slice(MAGIC);
        w.u32(VERSION);
        w.u64(self.time_ms);
        w.u64(self.next_order_id);
        encode_limits(&mut w, &self.limits);
        encode_risk(&mut w, &self.risk);
        w.i128(self.totals.deposits);
        w.i128(self.totals.withdrawals);
        w.amount(self.totals.fee_pool);
        w.amount(self.totals.insurance);
        w.u64(self.totals.priority_served);
        w.len(self.instruments.len());
        for i in &self.instruments {
            encode_spec(&mut w, &i.spec);
            w.u8(i.status as u8);
            match i.settlement_price {
                None => w.u8(0),
                Some(p) => {
                    w.u8(1);
                    w.price(p);
                }
            }
            match &i.mark {
                None => w.u8(0),
                Some((mark, risk_array)) => {
                    w.u8(1);
                    w.price(*mark);
                    w.amounts(risk_array);
                }
            }
        }
        w.len(self.accounts.len());
        for a in &self.accounts {
            w.address(a.owner);
            w.amount(a.balance);
            w.len(a.positions.len());
            for p in &a.positions {
                w.instrument(p.instrument);
                w.qty(p.qty);
                w.amount(p.cost);
                w.amount(p.realized_pnl);
            }
            w.u8(a.margin_mode.code());
            match a.liquidating_since {
                None => w.u8(0),
                Some(t) => {
                    w.u8(1);
                    w.u64(t);
                }
            }
            w.len(a.session_keys.len());
            for (key, expiry) in &a.session_keys {
                w.address(*key);
                w.u64(*expiry);
            }
        }
        w.len(self.oracles.len());
        for o in &self.oracles {
            w.bytes(o.underlying.as_bytes());
            w.price(o.index_price);
            w.u64(o.published_ms);
            match o.held {
                None => w.u8(0),
                Some((p, t)) => {
                    w.u8(1);
                    w.price(p);
                    w.u64(t);
                }
            }
        }
        w.len(self.orders.len());
        for o in &self.orders {
            w.order(o.id);
            w.account(o.account);
            w.instrument(o.instrument);
            w.side(o.side);
            w.price(o.price);
            w.qty(o.remaining);
            w.qty(o.filled);
            w.u64(o.client_order_id);
            w.time_in_force(o.time_in_force);
            w.bool(o.post_only);
            w.bool(o.reduce_only);
            w.self_trade(o.self_trade);
            w.bool(o.is_quote);
            match o.session_key {
                None => w.u8(0),
                Some(key) => {
                    w.u8(1);
                    w.address(key);
                }
            }
        }
        w.len(self.unposted_expiries.len());
        for &i in &self.unposted_expiries {
            w.instrument(i);
        }
        w.bytes
    }

    /// The state hash: blake3 of the canonical encoding.
    pub fn hash(&self) -> [u8; 32] {
        *blake3::hash(&self.encode()).as_bytes()
    }

    /// Decodes a snapshot. Structure only: the engine's restore checks the invariants.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let magic: [u8; 8] = std::array::from_fn(|_| r.u8().unwrap_or(0));
        let version = r.u32()?;
        if &magic != MAGIC || !(VERSION_WITH_SAMPLES..=VERSION).contains(&version) {
            return Err(DecodeError::Version);
        }
        let time_ms = r.u64()?;
        let next_order_id = r.u64()?;
        let limits = decode_limits(&mut r, version)?;
        let risk = decode_risk(&mut r)?;
        let totals = Totals {
            deposits: r.i128()?,
            withdrawals: r.i128()?,
            fee_pool: r.amount()?,
            insurance: r.amount()?,
            priority_served: r.u64()?,
        };
        let n = r.len(limits.max_instruments as usize)?;
        let mut instruments = Vec::with_capacity(n);
        for _ in 0..n {
            let spec = decode_spec(&mut r)?;
            let status = match r.u8()? {
                0 => InstrumentStatus::Listed,
                1 => InstrumentStatus::Active,
                2 => InstrumentStatus::Expired,
                3 => InstrumentStatus::Settled,
                tag => {
                    return Err(DecodeError::BadTag {
                        what: "instrument status",
                        tag,
                    });
                }
            };
            let settlement_price = match r.u8()? {
                0 => None,
                1 => Some(r.price()?),
                tag => {
                    return Err(DecodeError::BadTag {
                        what: "option",
                        tag,
                    });
                }
            };
            let mark = match r.u8()? {
                0 => None,
                1 => {
                    let mark = r.price()?;
                    Some((mark, r.amounts(risk.scenarios as usize)?))
                }
                tag => {
                    return Err(DecodeError::BadTag {
                        what: "option",
                        tag,
                    });
                }
            };
            instruments.push(InstrumentRecord {
                spec,
                status,
                settlement_price,
                mark,
            });
        }
        let n = r.len(limits.max_accounts as usize)?;
        let mut accounts = Vec::with_capacity(n);
        for _ in 0..n {
            let owner = r.address()?;
            let balance = r.amount()?;
            let m = r.len(limits.max_instruments as usize)?;
            let mut positions = Vec::with_capacity(m);
            for _ in 0..m {
                positions.push(PositionRecord {
                    instrument: r.instrument()?,
                    qty: r.qty()?,
                    cost: r.amount()?,
                    realized_pnl: r.amount()?,
                });
            }
            let tag = r.u8()?;
            let margin_mode = MarginMode::from_code(tag).ok_or(DecodeError::BadTag {
                what: "margin mode",
                tag,
            })?;
            let liquidating_since = match r.u8()? {
                0 => None,
                1 => Some(r.u64()?),
                tag => {
                    return Err(DecodeError::BadTag {
                        what: "option",
                        tag,
                    });
                }
            };
            let k = r.len(crate::oracle::MAX_SESSION_KEYS)?;
            let mut session_keys = Vec::with_capacity(k);
            for _ in 0..k {
                session_keys.push((r.address()?, r.u64()?));
            }
            accounts.push(AccountRecord {
                owner,
                balance,
                positions,
                margin_mode,
                liquidating_since,
                session_keys,
            });
        }
        let n = r.len(limits.max_instruments as usize)?;
        let mut oracles = Vec::with_capacity(n);
        for _ in 0..n {
            let underlying = std::str::from_utf8(r.bytes(MAX_UNDERLYING_LEN)?)
                .map_err(|_| DecodeError::Invalid("underlying is not UTF-8"))?
                .to_owned();
            let index_price = r.price()?;
            let published_ms = r.u64()?;
            let held = match r.u8()? {
                0 => None,
                1 => Some((r.price()?, r.u64()?)),
                tag => {
                    return Err(DecodeError::BadTag {
                        what: "option",
                        tag,
                    });
                }
            };
            if version == VERSION_WITH_SAMPLES {
                // The index samples the engine kept for the settlement TWAP, which the oracle
                // now computes and signs: read past.
                for _ in 0..r.len(usize::MAX)? {
                    r.u64()?;
                    r.price()?;
                }
            }
            oracles.push(OracleRecord {
                underlying,
                index_price,
                published_ms,
                held,
            });
        }
        let n = r.len(usize::MAX)?;
        let mut orders = Vec::with_capacity(n);
        for _ in 0..n {
            let id = r.order()?;
            let account = r.account()?;
            let instrument = r.instrument()?;
            let side = r.side()?;
            let price = r.price()?;
            let remaining = r.qty()?;
            let filled = r.qty()?;
            let client_order_id = r.u64()?;
            let time_in_force = r.time_in_force()?;
            let post_only = r.bool()?;
            let reduce_only = r.bool()?;
            let self_trade = r.self_trade()?;
            let is_quote = r.bool()?;
            let session_key = if r.bool()? { Some(r.address()?) } else { None };
            orders.push(OrderRecord {
                id,
                account,
                instrument,
                side,
                price,
                remaining,
                filled,
                client_order_id,
                time_in_force,
                post_only,
                reduce_only,
                self_trade,
                is_quote,
                session_key,
            });
        }
        let mut unposted_expiries = Vec::new();
        if version > VERSION_WITHOUT_SETTLE_BUDGET {
            let n = r.len(instruments.len())?;
            for _ in 0..n {
                unposted_expiries.push(r.instrument()?);
            }
        }
        r.finish()?;
        Ok(Self {
            time_ms,
            next_order_id,
            limits,
            risk,
            totals,
            instruments,
            accounts,
            oracles,
            orders,
            unposted_expiries,
        })
    }
}

fn encode_limits(w: &mut Writer, l: &EngineLimits) {
    w.u32(l.max_open_orders_per_account);
    w.u32(l.max_price_levels_per_side);
    w.u32(l.max_mass_quote_entries);
    w.u32(l.max_instruments);
    w.u32(l.max_accounts);
    w.qty(l.max_order_qty);
    w.amount(l.max_amount);
    encode_proof_limits(w, &l.proof());
}

/// The proof's limits, as a snapshot's limits end and as `Command::SetProofLimits` carries them.
pub(crate) fn encode_proof_limits(w: &mut Writer, p: &ProofLimits) {
    w.u32(p.max_positions_to_withdraw);
    let b = &p.fill_budget;
    for n in [b.fills, b.accounts, b.windows, b.prices, b.window_bits] {
        w.u32(n);
    }
    w.u32(p.mark_windows.windows);
    w.u32(p.mark_windows.bits);
    w.u32(p.settle_budget.expiries);
    w.u32(p.settle_budget.slots);
    w.u32(p.settle_budget.holders);
    w.u32(b.margins);
    w.u32(b.positions);
    w.u32(b.instruments);
}

/// What `encode_proof_limits` wrote (windows not checked: `ProofLimits::is_valid`).
/// Before the settlement budget (a snapshot of version 7, a `SetProofLimits` record of tag 22),
/// `settle_budget` is absent: unbounded; before the `Portfolio` part of the fill budget (version
/// 8, tag 23), its margins, positions and instruments: unbounded.
pub(crate) fn decode_proof_limits(
    r: &mut Reader<'_>,
    settle_budget: bool,
    portfolio: bool,
) -> Result<ProofLimits, DecodeError> {
    let mut limits = ProofLimits {
        max_positions_to_withdraw: r.u32()?,
        fill_budget: FillBudget {
            fills: r.u32()?,
            accounts: r.u32()?,
            windows: r.u32()?,
            prices: r.u32()?,
            window_bits: r.u32()?,
            ..FillBudget::UNBOUNDED
        },
        mark_windows: MarkWindows {
            windows: r.u32()?,
            bits: r.u32()?,
        },
        settle_budget: SettleBudget::UNBOUNDED,
    };
    if settle_budget {
        limits.settle_budget = SettleBudget {
            expiries: r.u32()?,
            slots: r.u32()?,
            holders: r.u32()?,
        };
    }
    if portfolio {
        limits.fill_budget.margins = r.u32()?;
        limits.fill_budget.positions = r.u32()?;
        limits.fill_budget.instruments = r.u32()?;
    }
    Ok(limits)
}

fn encode_risk(w: &mut Writer, c: &RiskConfig) {
    w.u32(c.scenarios);
    w.u64(c.max_update_delay_ms);
    w.u64(c.mark_max_age_ms);
    w.u32(c.circuit_breaker_bps);
    w.u32(c.confirm_tolerance_bps);
    w.u32(c.perp_initial_bps);
    w.u32(c.perp_maintenance_bps);
    w.u32(c.pm_short_option_floor_bps);
    w.u32(c.pm_maintenance_bps);
    w.u64(c.settlement_window_ms);
    w.u32(c.liquidation_start_bps);
    w.u32(c.liquidation_max_bps);
    w.u64(c.liquidation_duration_ms);
    w.u32(c.liquidation_step_bps);
    w.u32(c.liquidation_fee_bps);
}

fn decode_risk(r: &mut Reader<'_>) -> Result<RiskConfig, DecodeError> {
    let risk = RiskConfig {
        scenarios: r.u32()?,
        max_update_delay_ms: r.u64()?,
        mark_max_age_ms: r.u64()?,
        circuit_breaker_bps: r.u32()?,
        confirm_tolerance_bps: r.u32()?,
        perp_initial_bps: r.u32()?,
        perp_maintenance_bps: r.u32()?,
        pm_short_option_floor_bps: r.u32()?,
        pm_maintenance_bps: r.u32()?,
        settlement_window_ms: r.u64()?,
        liquidation_start_bps: r.u32()?,
        liquidation_max_bps: r.u32()?,
        liquidation_duration_ms: r.u64()?,
        liquidation_step_bps: r.u32()?,
        liquidation_fee_bps: r.u32()?,
    };
    match risk.unprovable() {
        Some(why) => Err(DecodeError::Invalid(why)),
        None => Ok(risk),
    }
}

fn decode_limits(r: &mut Reader<'_>, version: u32) -> Result<EngineLimits, DecodeError> {
    let mut limits = EngineLimits {
        max_open_orders_per_account: r.u32()?,
        max_price_levels_per_side: r.u32()?,
        max_mass_quote_entries: r.u32()?,
        max_instruments: r.u32()?,
        max_accounts: r.u32()?,
        max_order_qty: r.qty()?,
        max_amount: r.amount()?,
        max_positions_to_withdraw: r.u32()?,
        fill_budget: FillBudget::UNBOUNDED,
        mark_windows: MarkWindows::UNBOUNDED,
        settle_budget: SettleBudget::UNBOUNDED,
    };
    if version > VERSION_WITHOUT_FILL_BUDGET {
        limits.fill_budget = FillBudget {
            fills: r.u32()?,
            accounts: r.u32()?,
            windows: r.u32()?,
            prices: r.u32()?,
            window_bits: r.u32()?,
            ..FillBudget::UNBOUNDED
        };
        if limits.fill_budget.window_bits > 32 {
            return Err(DecodeError::Invalid("fill budget window above 2^32 ids"));
        }
    }
    if version > VERSION_WITHOUT_MARK_WINDOWS {
        limits.mark_windows = MarkWindows {
            windows: r.u32()?,
            bits: r.u32()?,
        };
        if limits.mark_windows.bits > 32 {
            return Err(DecodeError::Invalid("mark window above 2^32 ids"));
        }
    }
    if version > VERSION_WITHOUT_SETTLE_BUDGET {
        limits.settle_budget = SettleBudget {
            expiries: r.u32()?,
            slots: r.u32()?,
            holders: r.u32()?,
        };
    }
    if version > VERSION_WITHOUT_PORTFOLIO_BUDGET {
        limits.fill_budget.margins = r.u32()?;
        limits.fill_budget.positions = r.u32()?;
        limits.fill_budget.instruments = r.u32()?;
    }
    Ok(limits)
}

/// Encodes an instrument spec (the name as its canonical text).
pub fn encode_spec(w: &mut Writer, s: &InstrumentSpec) {
    w.bytes(s.name.to_string().as_bytes());
    w.qty(s.contract_multiplier);
    w.price(s.tick_size);
    w.qty(s.min_size);
    w.qty(s.amount_step);
    w.price(s.underlying_cap);
    w.u32(s.maker_fee.0 as u32);
    w.u32(s.taker_fee.0 as u32);
    w.u32(s.market_protection_bps);
}

/// Decodes an instrument spec; the name must parse.
pub fn decode_spec(r: &mut Reader<'_>) -> Result<InstrumentSpec, DecodeError> {
    let name = std::str::from_utf8(r.bytes(64)?)
        .map_err(|_| DecodeError::Invalid("instrument name is not UTF-8"))?;
    let name: InstrumentName = name
        .parse()
        .map_err(|_| DecodeError::Invalid("instrument name"))?;
    Ok(InstrumentSpec {
        name,
        contract_multiplier: r.qty()?,
        tick_size: r.price()?,
        min_size: r.qty()?,
        amount_step: r.qty()?,
        underlying_cap: r.price()?,
        maker_fee: FeeRate(r.u32()? as i32),
        taker_fee: FeeRate(r.u32()? as i32),
        market_protection_bps: r.u32()?,
    })
}
