//! Engine events: everything an input changed, in order. Downstream stages (API, batcher,
//! market data) consume these and nothing else.

use crate::fixed::{Amount, Price, Qty};
use crate::ids::{AccountId, Address, InstrumentId, OrderId};
use crate::input::Side;
use crate::oracle::MarginMode;
use crate::reject::RejectCode;

/// Why an order left the book.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DoneReason {
    /// Fully filled.
    Filled,
    /// Cancelled by its owner (cancel, cancel-all, or replaced by a mass quote).
    Cancelled,
    /// The unfilled rest of an IOC or market order.
    UnfilledRemainder,
    /// Self-trade prevention.
    SelfTrade,
    /// A good-till-time order reached its time.
    Expired,
    /// A reduce-only order whose position is gone.
    ReduceOnly,
    /// Its instrument expired.
    InstrumentExpired,
    /// Its account went into liquidation.
    Liquidation,
    /// Its account's position in the instrument was auto-deleveraged against a liquidated
    /// account (orders there could rest on the position that was closed).
    Deleveraged,
    /// Filling it would have left its mark-margined account below maintenance at the current
    /// marks (a resting order placed against older marks): cancelled instead of filled.
    Margin,
    /// The order filled all the resting orders one input's proof has room for
    /// (`EngineLimits::fill_budget`): its rest, which would cross them, is cancelled. Or a
    /// resting order of a `Portfolio` account holding more positions than a proof can hold
    /// beside its taker's (its maintenance prices them all): cancelled instead of filled.
    FillLimit,
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The input was refused; nothing else changed.
    Rejected {
        /// Why.
        code: RejectCode,
    },
    /// A replace's new order was refused: its cancel stands, nothing else changed (the input
    /// itself was taken).
    ReplaceRefused {
        /// Why the new order was refused.
        code: RejectCode,
    },
    /// A new instrument.
    InstrumentListed {
        /// Assigned id.
        instrument: InstrumentId,
    },
    /// Now tradable.
    InstrumentActivated {
        /// Which.
        instrument: InstrumentId,
    },
    /// Reached expiry: trading stopped.
    InstrumentExpired {
        /// Which.
        instrument: InstrumentId,
    },
    /// Cash-settled: the positions settled since the last event (one settlement, or, within a
    /// settlement budget, one balanced part of one: `EngineLimits::settle_budget`).
    InstrumentSettled {
        /// Which.
        instrument: InstrumentId,
        /// Underlying settlement price used.
        settlement_price: Price,
        /// Rounding remainder moved to the insurance fund.
        insurance_credit: Amount,
    },
    /// One account's position settled into its balance.
    PositionSettled {
        /// Whose.
        account: AccountId,
        /// Which.
        instrument: InstrumentId,
        /// The quantity settled: the whole position, or a part of it when the settlement is
        /// paid in parts.
        qty: Qty,
        /// Cash paid (+) or taken (-).
        cash: Amount,
    },
    /// A share of a liquidated account's deficit charged to another account (pro rata by free
    /// collateral), before the `DeficitCovered` that sums the shares.
    LossShared {
        /// Charged.
        account: AccountId,
        /// Taken from its balance (positive).
        amount: Amount,
    },
    /// A new account.
    AccountOpened {
        /// Assigned id.
        account: AccountId,
        /// Owner.
        owner: Address,
    },
    /// An L1 priority operation served (after any `AccountOpened` / `BalanceChanged` it caused):
    /// `amount` credited (deposit) or withdrawn (forced withdrawal, negative), zero when
    /// nothing moved.
    PriorityServed {
        /// Queue id on L1.
        priority: u64,
        /// Account credited or debited (for a deposit to an unknown account: the new one).
        account: AccountId,
        /// Signed change.
        amount: Amount,
    },
    /// An L1 forced close served: `qty` (signed from `account`'s view, zero when nothing moved)
    /// moved to `counterparty` at `price` (the mark), `cash` (signed, to `account`) the other
    /// way: the exact value rounded against `account`.
    CloseServed {
        /// Queue id on L1.
        priority: u64,
        /// Account named.
        account: AccountId,
        /// The backstop account.
        counterparty: AccountId,
        /// Instrument named.
        instrument: InstrumentId,
        /// Change of `account`'s position.
        qty: Qty,
        /// The mark (0 when the instrument has none).
        price: Price,
        /// Change of `account`'s balance.
        cash: Amount,
    },
    /// Collateral moved in, out, or between accounts (`amount` signed from `account`'s view).
    BalanceChanged {
        /// Whose.
        account: AccountId,
        /// Change.
        amount: Amount,
        /// Balance after.
        balance: Amount,
    },
    /// An order was accepted (it may trade and/or rest next).
    OrderAccepted {
        /// Assigned id.
        order: OrderId,
        /// Owner.
        account: AccountId,
        /// Instrument.
        instrument: InstrumentId,
        /// Client's id.
        client_order_id: u64,
    },
    /// An order (or its rest) is on the book.
    OrderRested {
        /// Which.
        order: OrderId,
        /// At this price.
        price: Price,
        /// With this size left.
        remaining: Qty,
    },
    /// A resting order changed price and/or size.
    OrderAmended {
        /// Which.
        order: OrderId,
        /// New price.
        price: Price,
        /// New remaining size.
        remaining: Qty,
        /// Whether it kept its time priority.
        kept_priority: bool,
    },
    /// A trade.
    Fill {
        /// Instrument.
        instrument: InstrumentId,
        /// Resting order.
        maker_order: OrderId,
        /// Incoming order.
        taker_order: OrderId,
        /// Resting order's account.
        maker_account: AccountId,
        /// Incoming order's account.
        taker_account: AccountId,
        /// Side of the incoming order.
        taker_side: Side,
        /// Trade price (the maker's).
        price: Price,
        /// Size.
        qty: Qty,
        /// Fee paid by the maker (negative: rebate).
        maker_fee: Amount,
        /// Fee paid by the taker.
        taker_fee: Amount,
    },
    /// An oracle update was applied.
    OracleAccepted {
        /// Underlying.
        underlying: String,
        /// New index price.
        index_price: Price,
    },
    /// An oracle update moved the index beyond the circuit-breaker bound: held, not used, until
    /// a later update confirms it.
    OracleHeld {
        /// Underlying.
        underlying: String,
        /// The held price.
        index_price: Price,
    },
    /// An account fell below maintenance: its orders are cancelled and its positions auctioned.
    LiquidationStarted {
        /// Whose.
        account: AccountId,
    },
    /// A liquidator (or, when deleveraging, an opposite position holder) took over a position.
    LiquidationTransfer {
        /// Liquidated account.
        account: AccountId,
        /// Who took it.
        counterparty: AccountId,
        /// Instrument.
        instrument: InstrumentId,
        /// Contracts moved (signed from the liquidated account's view: negative = it sold).
        qty: Qty,
        /// Price per contract.
        price: Price,
        /// Fee the liquidated account paid to the insurance fund.
        fee: Amount,
        /// True for auto-deleveraging at the mark.
        deleverage: bool,
    },
    /// A bankrupt account's deficit was covered: by the insurance fund, the fee pool, and a loss
    /// shared pro rata by accounts with free collateral; `unresolved` is bad debt left.
    DeficitCovered {
        /// The bankrupt account.
        account: AccountId,
        /// From the insurance fund.
        insurance: Amount,
        /// From the fee pool.
        fee_pool: Amount,
        /// Shared by other accounts.
        socialized: Amount,
        /// Not covered (only if the whole system's free collateral was not enough).
        unresolved: Amount,
    },
    /// An account is no longer liquidating (cured, or all positions closed).
    LiquidationEnded {
        /// Whose.
        account: AccountId,
    },
    /// A session key was registered (expiry > 0) or revoked.
    SessionKeyChanged {
        /// Account.
        account: AccountId,
        /// Key.
        key: Address,
        /// Expiry (0: revoked).
        expiry_ms: u64,
    },
    /// An account's margin mode changed.
    MarginModeChanged {
        /// Whose.
        account: AccountId,
        /// New mode.
        mode: MarginMode,
    },
    /// An order left the book (or never rested).
    OrderDone {
        /// Which.
        order: OrderId,
        /// Owner.
        account: AccountId,
        /// Why.
        reason: DoneReason,
        /// Size not filled.
        unfilled: Qty,
    },
}
