//! Engine inputs. The sequencer assigns each a sequence number and a time; the engine applies
//! them in that order and nothing else.

use crate::fixed::{Amount, Price, Qty};
use crate::ids::{AccountId, Address, InstrumentId, OrderId};
use crate::instrument::InstrumentSpec;
use crate::oracle::{MarginMode, OracleUpdate};
use crate::state::ProofLimits;

/// One sequenced input: engine time (ms since the Unix epoch, non-decreasing) and a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Engine time of this input. GTT orders and option expiries before it take effect first.
    pub time_ms: u64,
    /// What to do.
    pub command: Command,
}

/// Buy or sell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    /// Bid.
    Buy,
    /// Ask.
    Sell,
}

impl Side {
    /// The other side.
    pub const fn opposite(self) -> Side {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }
    /// +1 for buy, -1 for sell: the sign of a fill's effect on position.
    pub const fn sign(self) -> i64 {
        match self {
            Side::Buy => 1,
            Side::Sell => -1,
        }
    }
}

/// How long an order lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimeInForce {
    /// Good till cancelled.
    GoodTillCancelled,
    /// Immediate or cancel: fill what crosses, cancel the rest.
    ImmediateOrCancel,
    /// Fill or kill: fill in full now, or reject.
    FillOrKill,
    /// Good till the given engine time (ms), then expired by the engine.
    GoodTillTime(u64),
}

/// Self-trade prevention: what happens when an order would trade against an order of the same
/// owner (any of the owner's subaccounts). The taker's mode decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SelfTradePrevention {
    /// Cancel the rest of the incoming order.
    CancelTaker,
    /// Cancel the resting order and keep matching.
    CancelMaker,
    /// Cancel both.
    CancelBoth,
}

/// Limit or market.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderType {
    /// Trade at `price` or better.
    Limit {
        /// Limit price.
        price: Price,
    },
    /// Trade now at up to the protection price (a buy) or down to it (a sell); never rests.
    /// Without one, the band is the instrument's `market_protection_bps` from the best opposite
    /// price.
    Market {
        /// Worst acceptable price.
        protection_price: Option<Price>,
    },
}

/// A new order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// Who trades.
    pub account: AccountId,
    /// What.
    pub instrument: InstrumentId,
    /// Buy or sell.
    pub side: Side,
    /// Size.
    pub qty: Qty,
    /// Limit or market.
    pub order_type: OrderType,
    /// Lifetime.
    pub time_in_force: TimeInForce,
    /// Refuse if it would trade on entry.
    pub post_only: bool,
    /// Refuse if it would open or increase a position; a resting one is cancelled once the
    /// position is gone.
    pub reduce_only: bool,
    /// Self-trade prevention mode.
    pub self_trade: SelfTradePrevention,
    /// Client's id, unique among the account's open orders; 0 means none.
    pub client_order_id: u64,
    /// The session key that signed it, if not the owner: the engine refuses it unless the key
    /// is live, ends its life at the key's expiry at the latest, and cancels it when a change
    /// shortens the key's life (so that every fill of it is one the key could sign, judged at
    /// its batch: docs/settlement.md, "Authorization challenge").
    pub session_key: Option<Address>,
}

/// An order, by engine id or by the client's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderRef {
    /// Engine-assigned id.
    Id(OrderId),
    /// The client order id the account gave it.
    Client(u64),
}

/// One instrument's two-sided quote in a mass quote. A missing side pulls that side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quote {
    /// Instrument quoted.
    pub instrument: InstrumentId,
    /// Bid (price, size), if any.
    pub bid: Option<(Price, Qty)>,
    /// Ask (price, size), if any.
    pub ask: Option<(Price, Qty)>,
}

/// What an input asks the engine to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Operator: list an instrument (status Listed).
    ListInstrument {
        /// Terms.
        spec: InstrumentSpec,
    },
    /// Operator: open a listed instrument for trading.
    ActivateInstrument {
        /// Which.
        instrument: InstrumentId,
    },
    /// Operator: cash-settle an expired option at a settlement price of the underlying it names
    /// itself, for when no oracle publishes one (the oracle's signed prices come in
    /// `OracleUpdate::settlements`). Unsigned: a node with an oracle refuses it, as L1 would
    /// judge it unattested.
    SettleInstrument {
        /// Which.
        instrument: InstrumentId,
        /// Underlying settlement price.
        settlement_price: Price,
    },
    /// Open a new (sub)account for an owner.
    OpenAccount {
        /// Owner wallet.
        owner: Address,
    },
    /// Credit collateral (from an L1 deposit).
    Deposit {
        /// Credited account.
        account: AccountId,
        /// Amount.
        amount: Amount,
    },
    /// L1 priority operation `priority` (the rollup contract's queue id; the engine serves the
    /// queue in order): credit `amount` to `account`, or, when no such account exists, to a
    /// new account opened for `owner` (the depositor).
    L1Deposit {
        /// Queue id: must equal the count served so far.
        priority: u64,
        /// Depositor on L1.
        owner: Address,
        /// Account the deposit names.
        account: AccountId,
        /// Amount.
        amount: Amount,
    },
    /// L1 priority operation `priority`: a forced withdrawal. When `owner` owns `account`, its
    /// open orders are cancelled and all its free collateral is withdrawn (none while it is
    /// being liquidated); otherwise nothing moves. Served either way.
    L1Withdrawal {
        /// Queue id: must equal the count served so far.
        priority: u64,
        /// Requester on L1.
        owner: Address,
        /// Account named.
        account: AccountId,
    },
    /// L1 priority operation `priority`: a forced close. When `owner` owns `account`, the
    /// instrument is active and marked, and the account holds a position in it, the position
    /// moves whole to `counterparty` (the
    /// operator's backstop account) at the instrument's mark, with no fee, and the account's
    /// orders in the instrument are cancelled; otherwise nothing moves. Served either way, but
    /// refused (queue unserved) while the backstop could not take it: a fully collateralized
    /// backstop, or one the close would leave insolvent at the marks.
    L1Close {
        /// Queue id: must equal the count served so far.
        priority: u64,
        /// Requester on L1.
        owner: Address,
        /// Account named.
        account: AccountId,
        /// Instrument named.
        instrument: InstrumentId,
        /// The operator's backstop account, which takes the position.
        counterparty: AccountId,
    },
    /// Debit collateral for withdrawal, only from free collateral.
    Withdraw {
        /// Debited account.
        account: AccountId,
        /// Amount.
        amount: Amount,
    },
    /// Move free collateral between two subaccounts of one owner.
    Transfer {
        /// Debited.
        from: AccountId,
        /// Credited.
        to: AccountId,
        /// Amount.
        amount: Amount,
    },
    /// Place an order.
    PlaceOrder(NewOrder),
    /// Change a resting order's price and/or size. Keeps time priority only when the price is
    /// unchanged and the size does not grow.
    Amend {
        /// Owner of the order.
        account: AccountId,
        /// Which order.
        order: OrderRef,
        /// New limit price.
        price: Price,
        /// New total remaining size.
        qty: Qty,
    },
    /// Cancel one of an account's orders and place a new one in one input, nothing sequenced
    /// between them (Derive's `private/replace`): if the cancel is refused nothing changes and
    /// nothing is placed; if the new order is refused, the old one stays cancelled and
    /// `Event::ReplaceRefused` says why.
    Replace {
        /// The order to cancel, of the new order's account.
        cancel: OrderRef,
        /// The new order.
        order: NewOrder,
    },
    /// Cancel one order.
    Cancel {
        /// Owner of the order.
        account: AccountId,
        /// Which order.
        order: OrderRef,
    },
    /// Cancel all the account's orders, or all of them in one instrument.
    CancelAll {
        /// Whose.
        account: AccountId,
        /// Only this instrument, if given.
        instrument: Option<InstrumentId>,
    },
    /// Atomically replace the account's quotes in the named instruments (post-only).
    MassQuote {
        /// Market maker.
        account: AccountId,
        /// New quotes; all are applied or none.
        quotes: Vec<Quote>,
    },
    /// Oracle: index, marks and risk arrays for one underlying.
    OracleUpdate(OracleUpdate),
    /// A liquidator takes over part of a liquidating account's position at the auction price.
    Liquidate {
        /// Who takes the position (must meet its own initial margin afterwards).
        liquidator: AccountId,
        /// The account being liquidated.
        account: AccountId,
        /// Which position.
        instrument: InstrumentId,
        /// How much (contracts), at most the auction step unless the account is bankrupt.
        qty: Qty,
    },
    /// After the auction ran its full course, close what is left of a liquidating account's
    /// position against the most profitable opposite positions at the mark (auto-deleveraging).
    Deleverage {
        /// The account being liquidated.
        account: AccountId,
        /// Which position.
        instrument: InstrumentId,
    },
    /// Operator: the limits of the validity proof's circuit shape (`optio node` sequences them
    /// from its prover keys when the engine's differ), for what follows; refused
    /// (`InvalidLimits`) when a window would span more than 2^32 ids.
    SetProofLimits(ProofLimits),
    /// The owner registers (or, with expiry 0, revokes) a session key that may trade for the
    /// account until `expiry_ms`, never withdraw.
    SetSessionKey {
        /// Account.
        account: AccountId,
        /// The key's address.
        key: Address,
        /// Engine time it stops being valid (0 revokes it).
        expiry_ms: u64,
    },
    /// Choose how an account is margined (refused if the account would not meet the new
    /// mode's initial requirement).
    SetMarginMode {
        /// Whose.
        account: AccountId,
        /// New mode.
        mode: MarginMode,
    },
}

impl Command {
    /// The order this input places, if any: a `PlaceOrder`'s, or a `Replace`'s new one.
    pub fn placed_order(&self) -> Option<&NewOrder> {
        match self {
            Command::PlaceOrder(o) | Command::Replace { order: o, .. } => Some(o),
            _ => None,
        }
    }
}
