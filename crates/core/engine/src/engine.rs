//! The engine: `apply(input) -> events`, one input at a time, on one thread.
//!
//! Every command validates everything first and only then mutates, so a rejected input leaves
//! the state byte-for-byte unchanged. Matching is planned before it is applied (the plan reads
//! the book; applying it cannot fail), which is also how fill-or-kill knows it can fill in full.

use std::collections::{BTreeMap, BTreeSet};

use optio_types::fixed::{Rounding, mul_div};
use optio_types::margin::fee_reserve;
use optio_types::state::{OrderRecord, Totals};
use optio_types::{
    AccountId, Address, Amount, Command, DoneReason, EngineLimits, Event, Exposure, FillBudget,
    Input, InstrumentId, InstrumentKind, InstrumentName, InstrumentSpec, InstrumentStatus,
    MarginModel, MarkWindows, NewOrder, OrderId, OrderRef, OrderType, Price, Qty, Quote,
    RejectCode, RiskConfig, SelfTradePrevention, Side, TimeInForce, WorstCaseMargin,
};

use crate::book::index::SlotIndex;
use crate::book::{Book, NIL, Order, OrderStore};
use crate::ledger::{Account, Position};

/// The most money the system holds, so that no balance or sum can overflow.
pub const MAX_TOTAL_COLLATERAL: i64 = i64::MAX / 4;

pub(crate) struct InstrumentState {
    pub spec: InstrumentSpec,
    pub status: InstrumentStatus,
    pub settlement_price: Option<Price>,
    pub max_price: Price,
    pub book: Book,
    /// Sum of all positions (must stay zero).
    pub net_position: i128,
    /// Accounts with a non-zero position.
    pub holders: BTreeSet<AccountId>,
    /// Latest accepted mark per contract, and risk array (P&L per contract per scenario).
    pub mark: Option<(Price, Vec<i64>)>,
    /// Every (account, position slot) that ever had an entry here: re-margined when marks move.
    pub participants: Vec<(AccountId, u32)>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Step {
    Fill { slot: u32, qty: Qty },
    Cancel { slot: u32, reason: DoneReason },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlanEnd {
    /// The taker is filled in full.
    Filled,
    /// Nothing more crosses within the limit.
    Exhausted,
    /// Self-trade prevention cancels the taker's rest.
    SelfTrade,
    /// The next fill would pass the fill budget: the taker's rest is cancelled.
    FillLimit,
}

/// What the fills planned so far touch, counted against `EngineLimits::fill_budget` the way
/// the prover's plan counts a batch of them alone.
#[derive(Default)]
pub(crate) struct FillCount {
    fills: u32,
    accounts: Vec<AccountId>,
    windows: u32,
    runs: BTreeSet<u32>,
    margins: u32,
    positions: u32,
    instruments: BTreeSet<u32>,
}

/// A `FillCount` with one more op: the accounts and runs it adds, and the totals it leaves.
struct Added {
    accounts: Vec<AccountId>,
    windows: u32,
    new_runs: BTreeSet<u32>,
    margins: u32,
    positions: u32,
    instruments: BTreeSet<u32>,
}

impl FillCount {
    /// Op slots, accounts and margin slots counted.
    pub(crate) fn used(&self) -> (u32, u32, u32) {
        (self.fills, self.accounts.len() as u32, self.margins)
    }

    /// Counts one more op, adding `a`, if the budget has room for it; otherwise leaves the
    /// count as it was and says no.
    fn take(&mut self, budget: &FillBudget, a: Added) -> bool {
        let fits = self.fills < budget.fills
            && (self.accounts.len() + a.accounts.len()) as u64 <= u64::from(budget.accounts)
            && a.windows <= budget.windows
            && (self.runs.len() + a.new_runs.len()) as u64 <= u64::from(budget.prices)
            && a.margins <= budget.margins
            && a.positions <= budget.positions
            && a.instruments.len() as u64 <= u64::from(budget.instruments);
        if fits {
            self.fills += 1;
            self.accounts.extend(a.accounts);
            self.windows = a.windows;
            self.runs.extend(a.new_runs);
            self.margins = a.margins;
            self.positions = a.positions;
            self.instruments = a.instruments;
        }
        fits
    }
}

impl PlanEnd {
    /// Whether the taker's rest may rest on the book: not when it is cancelled, nor when it
    /// would cross the orders the budget left unfilled.
    fn lets_rest(self) -> bool {
        !matches!(self, PlanEnd::SelfTrade | PlanEnd::FillLimit)
    }
}

struct Taker {
    id: OrderId,
    account: AccountId,
    /// The taker's position entry.
    position: u32,
    instrument: InstrumentId,
    side: Side,
}

/// The deterministic exchange core. Generic over the margin model so that the risk work can
/// replace the conservative default without touching matching.
pub struct Engine<M: MarginModel = WorstCaseMargin> {
    pub(crate) margin: M,
    pub(crate) limits: EngineLimits,
    pub(crate) risk: RiskConfig,
    /// Accepted oracle state per underlying.
    pub(crate) oracles: BTreeMap<String, crate::risk::OracleState>,
    pub(crate) time_ms: u64,
    pub(crate) next_order_id: u64,
    pub(crate) totals: Totals,
    pub(crate) total_balances: i128,
    pub(crate) instruments: Vec<InstrumentState>,
    pub(crate) names: BTreeMap<InstrumentName, InstrumentId>,
    pub(crate) accounts: Vec<Account>,
    /// Position entries of all accounts (never freed), found by (account, instrument).
    pub(crate) positions: Vec<Position>,
    pub(crate) position_index: SlotIndex<(u32, u32)>,
    /// (account, client order id) -> order slot.
    pub(crate) client_index: SlotIndex<(u32, u64)>,
    pub(crate) store: OrderStore,
    /// Sum of the accounts' open-order counts.
    pub(crate) account_orders: usize,
    pub(crate) good_till: BTreeSet<(u64, OrderId)>,
    pub(crate) expiries: BTreeSet<(u64, InstrumentId)>,
    plan: Vec<Step>,
    scratch: Vec<u32>,
    touched_accounts: Vec<AccountId>,
    touched_instruments: Vec<InstrumentId>,
    /// Liquidating accounts an expiry settlement left with nothing: their deficits are covered
    /// at the end of the next input that settles nothing (a validity proof applies a batch's
    /// settlements after its other ops, so a cover cannot share its account's settlement's
    /// input). Derived: exactly the liquidating accounts that hold no position and owe more
    /// than they hold (a deficit nothing could cover yet stays due: engine rules 5).
    pub(crate) covers_due: BTreeSet<AccountId>,
    /// Liquidating accounts no longer below maintenance (cured, or flat and solvent): their
    /// auction ends at the next accepted oracle update, before its starts, settlements and
    /// marks (engine rules 5: a validity proof checks an end against the marks committed
    /// before it, as a start's). Until then they stay frozen, and no liquidator may bid (they
    /// are not below). Derived: the liquidating accounts not below maintenance.
    pub(crate) ends_due: BTreeSet<AccountId>,
    /// Accounts found below maintenance whose auction starts at the next accepted oracle update
    /// (engine rules 4: a validity proof checks a start against the marks committed before it,
    /// and a batch commits its marks after its ops, so an auction cannot start in the update
    /// whose marks put the account below). Their orders are cancelled and they act as
    /// liquidating ones, but no liquidator may bid yet. Derived: the mark-margined accounts
    /// below maintenance that are not liquidating.
    pub(crate) liquidations_due: BTreeSet<AccountId>,
    /// What the auctions the current input started take of the fill budget (its deficit
    /// covers take what is left).
    pub(crate) starts_now: FillCount,
    /// The current input settled an instrument.
    pub(crate) settled_now: bool,
    /// Instruments whose settlement price came and that still have holders to pay (or, before
    /// their first settlement, none): `settle_due` pays them within the settlement budget.
    /// Derived: the expired instruments with a settlement price and the settled ones with
    /// holders.
    pub(crate) settles_due: BTreeSet<InstrumentId>,
    /// Instruments expired (on time: orders cancelled, no trading) whose expiry is not yet
    /// posted (`Event::InstrumentExpired`, the settlement state's expiry op): past their
    /// input's expiry budget (`EngineLimits::settle_budget`), posted first by the next inputs.
    pub(crate) unposted_expiries: BTreeSet<InstrumentId>,
    /// Expiries the current input posted.
    expiries_posted_now: u32,
}

impl Engine<WorstCaseMargin> {
    /// An empty engine with the conservative margin model.
    pub fn new(limits: EngineLimits) -> Self {
        Self::with_margin(limits, WorstCaseMargin)
    }
}

impl<M: MarginModel> Engine<M> {
    /// An empty engine with the given margin model and default risk parameters.
    pub fn with_margin(limits: EngineLimits, margin: M) -> Self {
        Self::with_config(limits, RiskConfig::default(), margin)
    }

    /// An empty engine with the given limits, risk parameters and worst-case margin model.
    ///
    /// Panics if a validity proof could not hold an engine at `risk` (`RiskConfig::unprovable`:
    /// a liquidation fee or discount above its provable maximum, or a `Portfolio` weight or floor
    /// or a perpetual margin rate below the proven one, which would make some honest fills,
    /// liquidations or fees unprovable).
    pub fn with_config(limits: EngineLimits, risk: RiskConfig, margin: M) -> Self {
        if let Some(why) = risk.unprovable() {
            panic!("{why}: {risk:?}");
        }
        Self {
            margin,
            limits,
            risk,
            oracles: BTreeMap::new(),
            time_ms: 0,
            next_order_id: 1,
            totals: Totals::default(),
            total_balances: 0,
            instruments: Vec::new(),
            names: BTreeMap::new(),
            accounts: Vec::new(),
            positions: Vec::new(),
            position_index: SlotIndex::default(),
            client_index: SlotIndex::default(),
            store: OrderStore::default(),
            account_orders: 0,
            good_till: BTreeSet::new(),
            expiries: BTreeSet::new(),
            covers_due: BTreeSet::new(),
            ends_due: BTreeSet::new(),
            liquidations_due: BTreeSet::new(),
            starts_now: FillCount::default(),
            settled_now: false,
            settles_due: BTreeSet::new(),
            unposted_expiries: BTreeSet::new(),
            expiries_posted_now: 0,
            plan: Vec::new(),
            scratch: Vec::new(),
            touched_accounts: Vec::new(),
            touched_instruments: Vec::new(),
        }
    }

    /// Engine time (ms).
    pub fn time_ms(&self) -> u64 {
        self.time_ms
    }

    /// Limits in force.
    pub fn limits(&self) -> &EngineLimits {
        &self.limits
    }

    /// Number of open orders.
    pub fn open_orders(&self) -> usize {
        self.store.len()
    }

    /// Applies one input: first the passage of time up to `input.time_ms` (good-till-time orders
    /// and option expiries), then the command. Events are appended to `events`. On rejection the
    /// command changed nothing and the last event is `Rejected`.
    ///
    /// # Panics
    /// If an invariant that protects money is violated: better halted than wrong.
    pub fn apply(&mut self, input: &Input, events: &mut Vec<Event>) -> Result<(), RejectCode> {
        if input.time_ms < self.time_ms {
            events.push(Event::Rejected {
                code: RejectCode::TimeWentBackwards,
            });
            return Err(RejectCode::TimeWentBackwards);
        }
        self.touched_accounts.clear();
        self.touched_instruments.clear();
        self.settled_now = false;
        self.starts_now = FillCount::default();
        self.expiries_posted_now = 0;
        for id in std::mem::take(&mut self.unposted_expiries) {
            self.post_expiry(id, events);
        }
        self.advance_time(input.time_ms, events);
        let result = self.execute(&input.command, events);
        if let Err(code) = result {
            events.push(Event::Rejected { code });
        }
        let oracle_update = matches!(input.command, Command::OracleUpdate(_)) && result.is_ok();
        self.liquidation_checks(oracle_update, events);
        self.check_touched();
        result
    }

    /// Moves engine time forward to `time_ms` (no-op if not later): expires good-till-time
    /// orders whose time has come and options at their expiry.
    pub fn advance_time(&mut self, time_ms: u64, events: &mut Vec<Event>) {
        if time_ms <= self.time_ms {
            return;
        }
        self.time_ms = time_ms;
        while let Some(&(at, instrument)) = self.expiries.first() {
            if at > time_ms {
                break;
            }
            self.expiries.pop_first();
            self.expire_instrument(instrument, events);
        }
        while let Some(&(at, order)) = self.good_till.first() {
            if at > time_ms {
                break;
            }
            let slot = self
                .store
                .slot_of(order)
                .expect("good-till index holds open orders only");
            self.remove_order(slot, DoneReason::Expired, events);
        }
    }

    fn execute(&mut self, command: &Command, events: &mut Vec<Event>) -> Result<(), RejectCode> {
        match command {
            Command::ListInstrument { spec } => self.list_instrument(spec, events),
            Command::ActivateInstrument { instrument } => {
                self.activate_instrument(*instrument, events)
            }
            Command::SettleInstrument {
                instrument,
                settlement_price,
            } => self.settle_instrument(*instrument, *settlement_price, events),
            Command::OpenAccount { owner } => self.open_account(*owner, events),
            Command::Deposit { account, amount } => self.deposit(*account, *amount, events),
            Command::Withdraw { account, amount } => self.withdraw(*account, *amount, events),
            Command::L1Deposit {
                priority,
                owner,
                account,
                amount,
            } => self.l1_deposit(*priority, *owner, *account, *amount, events),
            Command::L1Withdrawal {
                priority,
                owner,
                account,
            } => self.l1_withdrawal(*priority, *owner, *account, events),
            Command::L1Close {
                priority,
                owner,
                account,
                instrument,
                counterparty,
            } => self.l1_close(
                *priority,
                *owner,
                *account,
                *instrument,
                *counterparty,
                events,
            ),
            Command::Transfer { from, to, amount } => self.transfer(*from, *to, *amount, events),
            Command::PlaceOrder(order) => self.place_order(order, events),
            Command::Amend {
                account,
                order,
                price,
                qty,
            } => self.amend(*account, *order, *price, *qty, events),
            Command::Cancel { account, order } => {
                self.account(*account)?;
                let slot = self.resolve(*account, *order)?;
                self.remove_order(slot, DoneReason::Cancelled, events);
                Ok(())
            }
            Command::Replace { cancel, order } => {
                self.account(order.account)?;
                let slot = self.resolve(order.account, *cancel)?;
                self.remove_order(slot, DoneReason::Cancelled, events);
                // A refused order changes nothing (as a refused `PlaceOrder`): the cancel
                // stands, and the refusal is told as an event of the taken input.
                let mut placed = Vec::new();
                match self.place_order(order, &mut placed) {
                    Ok(()) => events.append(&mut placed),
                    Err(code) => events.push(Event::ReplaceRefused { code }),
                }
                Ok(())
            }
            Command::CancelAll {
                account,
                instrument,
            } => self.cancel_all(*account, *instrument, events),
            Command::MassQuote { account, quotes } => self.mass_quote(*account, quotes, events),
            Command::OracleUpdate(update) => self.oracle_update(update, events),
            Command::SetMarginMode { account, mode } => {
                self.set_margin_mode(*account, *mode, events)
            }
            Command::Liquidate {
                liquidator,
                account,
                instrument,
                qty,
            } => self.liquidate(*liquidator, *account, *instrument, *qty, events),
            Command::Deleverage {
                account,
                instrument,
            } => self.deleverage(*account, *instrument, events),
            Command::SetSessionKey {
                account,
                key,
                expiry_ms,
            } => self.set_session_key(*account, *key, *expiry_ms, events),
            Command::SetProofLimits(proof) => {
                if !proof.is_valid() {
                    return Err(RejectCode::InvalidLimits);
                }
                self.limits = self.limits.with_proof(*proof);
                Ok(())
            }
        }
    }

    // ---- lookups and checks (no mutation) ----

    pub(crate) fn account(&self, id: AccountId) -> Result<&Account, RejectCode> {
        self.accounts
            .get(id.0 as usize)
            .ok_or(RejectCode::UnknownAccount)
    }

    pub(crate) fn instrument(&self, id: InstrumentId) -> Result<&InstrumentState, RejectCode> {
        self.instruments
            .get(id.0 as usize)
            .ok_or(RejectCode::UnknownInstrument)
    }

    fn active_instrument(&self, id: InstrumentId) -> Result<&InstrumentState, RejectCode> {
        let inst = self.instrument(id)?;
        if inst.status == InstrumentStatus::Active {
            Ok(inst)
        } else {
            Err(RejectCode::InstrumentNotActive)
        }
    }

    fn check_amount(&self, amount: Amount) -> Result<(), RejectCode> {
        if !amount.is_positive() {
            return Err(RejectCode::InvalidAmount);
        }
        if amount > self.limits.max_amount {
            return Err(RejectCode::AmountTooLarge);
        }
        Ok(())
    }

    fn check_price(inst: &InstrumentState, price: Price) -> Result<(), RejectCode> {
        if !price.is_positive() || price.0 % inst.spec.tick_size.0 != 0 {
            return Err(RejectCode::InvalidPrice);
        }
        if price > inst.max_price {
            return Err(RejectCode::PriceOutOfBand);
        }
        Ok(())
    }

    pub(crate) fn check_qty(&self, inst: &InstrumentState, qty: Qty) -> Result<(), RejectCode> {
        if !qty.is_positive() || qty.0 % inst.spec.amount_step.0 != 0 {
            return Err(RejectCode::InvalidQty);
        }
        if qty > self.limits.max_order_qty {
            return Err(RejectCode::QtyTooLarge);
        }
        if qty < inst.spec.min_size {
            return Err(RejectCode::BelowMinSize);
        }
        Ok(())
    }

    fn position(&self, account: AccountId, instrument: InstrumentId) -> Option<&Position> {
        self.position_index
            .get(&(account.0, instrument.0))
            .map(|slot| &self.positions[slot as usize])
    }

    /// The slot of the account's position entry in `instrument`, created if new.
    pub(crate) fn position_entry(&mut self, account: AccountId, instrument: InstrumentId) -> u32 {
        if let Some(slot) = self.position_index.get(&(account.0, instrument.0)) {
            return slot;
        }
        let slot = u32::try_from(self.positions.len())
            .expect("position entries are bounded by accounts x instruments");
        self.positions.push(Position::new(instrument));
        self.position_index.insert((account.0, instrument.0), slot);
        self.accounts[account.0 as usize]
            .positions
            .insert(instrument, slot);
        self.instruments[instrument.0 as usize]
            .participants
            .push((account, slot));
        if let Some(pm) = &self.accounts[account.0 as usize].portfolio {
            self.positions[slot as usize].scenario =
                Some(crate::risk::Contribution::zero(pm.initial.len()));
        }
        slot
    }

    pub(crate) fn position_qty(&self, account: AccountId, instrument: InstrumentId) -> i64 {
        self.position(account, instrument)
            .map_or(0, |p| p.exposure.position.0)
    }

    fn check_reduce_only(
        &self,
        account: AccountId,
        instrument: InstrumentId,
        side: Side,
        qty: Qty,
    ) -> Result<(), RejectCode> {
        let q = self.position_qty(account, instrument);
        let allowed = match side {
            Side::Sell => q.max(0),
            Side::Buy => (-q).max(0),
        };
        if qty.0 <= allowed {
            Ok(())
        } else {
            Err(RejectCode::ReduceOnlyWouldIncrease)
        }
    }

    /// The order whose id (or client id) is given, if it is open and belongs to `account`.
    fn resolve(&self, account: AccountId, order: OrderRef) -> Result<u32, RejectCode> {
        let slot = match order {
            OrderRef::Id(id) => self.store.slot_of(id),
            OrderRef::Client(cid) => self.client_index.get(&(account.0, cid)),
        }
        .ok_or(RejectCode::UnknownOrder)?;
        if self.store.get(slot).account == account {
            Ok(slot)
        } else {
            Err(RejectCode::UnknownOrder)
        }
    }

    fn default_protection(inst: &InstrumentState, side: Side) -> Result<Price, RejectCode> {
        let best = inst
            .book
            .best(side.opposite())
            .ok_or(RejectCode::NoLiquidity)?;
        let bps = i128::from(inst.spec.market_protection_bps.min(10_000));
        let tick = inst.spec.tick_size.0;
        Ok(match side {
            Side::Buy => {
                let p = (i128::from(best.0) * (10_000 + bps) / 10_000)
                    .min(i128::from(inst.max_price.0)) as i64;
                Price(p - p % tick)
            }
            Side::Sell => {
                let p = ((i128::from(best.0) * (10_000 - bps) + 9_999) / 10_000) as i64;
                Price((p.div_euclid(tick) + i64::from(p % tick != 0)).max(1) * tick)
            }
        })
    }

    /// Adds (or with `sign = -1` removes) an order's worst case to an exposure.
    fn exposure_order(
        spec: &InstrumentSpec,
        e: &mut Exposure,
        side: Side,
        price: Price,
        qty: Qty,
        sign: i64,
    ) -> Result<(), RejectCode> {
        // `total + sign * by`, refused on overflow.
        let bump = |total: i64, by: i64| total.checked_add(sign * by).ok_or(RejectCode::Overflow);
        e.fee_reserve = Amount(bump(e.fee_reserve.0, fee_reserve(spec, price, qty)?.0)?);
        let notional = price.notional(qty)?.0;
        match side {
            Side::Buy => {
                e.buy_qty = Qty(bump(e.buy_qty.0, qty.0)?);
                e.buy_cost = Amount(bump(e.buy_cost.0, notional)?);
            }
            Side::Sell => {
                e.sell_qty = Qty(bump(e.sell_qty.0, qty.0)?);
                e.sell_proceeds = Amount(bump(e.sell_proceeds.0, notional)?);
            }
        }
        Ok(())
    }

    /// The account's total initial requirement if its exposure in `instrument` (whose entry is
    /// `position`, if it has one) became `e`. In mark-based modes the instrument must have a
    /// fresh mark.
    pub(crate) fn requirement_with(
        &self,
        account: AccountId,
        instrument: InstrumentId,
        position: Option<u32>,
        e: &Exposure,
    ) -> Result<i128, RejectCode> {
        let acct = &self.accounts[account.0 as usize];
        if acct.mode != optio_types::MarginMode::WorstCase {
            self.check_fresh(instrument)?;
            return self.requirement_with_marks(account, instrument, position, e);
        }
        let old = position.map_or(0, |p| self.positions[p as usize].requirement.0);
        let new = self
            .margin
            .requirement(&self.instruments[instrument.0 as usize].spec, e)?;
        Ok(i128::from(acct.requirement.0) - i128::from(old) + i128::from(new.0))
    }

    /// Plans matching a taker against the opposite side into `self.plan`.
    #[allow(clippy::too_many_arguments)]
    fn plan_match(
        &mut self,
        taker: AccountId,
        instrument: InstrumentId,
        side: Side,
        limit: Price,
        qty: Qty,
        owner: Address,
        stp: SelfTradePrevention,
    ) -> (Qty, PlanEnd) {
        let mut plan = std::mem::take(&mut self.plan);
        plan.clear();
        let book = &self.instruments[instrument.0 as usize].book;
        let result = match side {
            Side::Buy => self.plan_levels(
                book.asks.iter().take_while(|(p, _)| **p <= limit),
                taker,
                instrument,
                qty,
                owner,
                stp,
                &mut plan,
            ),
            Side::Sell => self.plan_levels(
                book.bids.iter().rev().take_while(|(p, _)| **p >= limit),
                taker,
                instrument,
                qty,
                owner,
                stp,
                &mut plan,
            ),
        };
        self.plan = plan;
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn plan_levels<'a>(
        &self,
        levels: impl Iterator<Item = (&'a Price, &'a crate::book::Level)>,
        taker: AccountId,
        instrument: InstrumentId,
        qty: Qty,
        owner: Address,
        stp: SelfTradePrevention,
        plan: &mut Vec<Step>,
    ) -> (Qty, PlanEnd) {
        let mut remaining = qty.0;
        let bounded = self.limits.fill_budget != FillBudget::UNBOUNDED;
        let mut count = FillCount::default();
        for (_, level) in levels {
            let mut slot = level.head;
            while slot != NIL {
                let o = self.store.get(slot);
                let next = o.next();
                if self.accounts[o.account.0 as usize].owner == owner {
                    match stp {
                        SelfTradePrevention::CancelTaker => {
                            return (Qty(qty.0 - remaining), PlanEnd::SelfTrade);
                        }
                        SelfTradePrevention::CancelMaker => plan.push(Step::Cancel {
                            slot,
                            reason: DoneReason::SelfTrade,
                        }),
                        SelfTradePrevention::CancelBoth => {
                            plan.push(Step::Cancel {
                                slot,
                                reason: DoneReason::SelfTrade,
                            });
                            return (Qty(qty.0 - remaining), PlanEnd::SelfTrade);
                        }
                    }
                    slot = next;
                    continue;
                }
                let mut available = o.remaining.0;
                let mut allowance = i64::MAX;
                if o.reduce_only {
                    allowance = self.reduce_allowance(o.account, instrument, o.side, plan);
                    if allowance <= 0 {
                        plan.push(Step::Cancel {
                            slot,
                            reason: DoneReason::ReduceOnly,
                        });
                        slot = next;
                        continue;
                    }
                    available = available.min(allowance);
                }
                let fill = remaining.min(available);
                let accounts = [(taker, true), (o.account, true)];
                // A Portfolio or Standard maker whose positions no proof could hold beside the
                // taker's would block the book: its order is cancelled.
                if bounded
                    && self.accounts[o.account.0 as usize].mode
                        != optio_types::MarginMode::WorstCase
                    && !self.admit_fill(&mut FillCount::default(), accounts, instrument, true)
                    && self.admit_fill(
                        &mut FillCount::default(),
                        [(taker, true), (taker, true)],
                        instrument,
                        true,
                    )
                {
                    plan.push(Step::Cancel {
                        slot,
                        reason: DoneReason::FillLimit,
                    });
                    slot = next;
                    continue;
                }
                if !self.maker_keeps_maintenance(slot, fill, plan) {
                    plan.push(Step::Cancel {
                        slot,
                        reason: DoneReason::Margin,
                    });
                    slot = next;
                    continue;
                }
                if bounded && !self.admit_fill(&mut count, accounts, instrument, true) {
                    return (Qty(qty.0 - remaining), PlanEnd::FillLimit);
                }
                plan.push(Step::Fill {
                    slot,
                    qty: Qty(fill),
                });
                remaining -= fill;
                if o.reduce_only && fill == allowance && fill < o.remaining.0 {
                    plan.push(Step::Cancel {
                        slot,
                        reason: DoneReason::ReduceOnly,
                    });
                }
                if remaining == 0 {
                    return (qty, PlanEnd::Filled);
                }
                slot = next;
            }
        }
        (Qty(qty.0 - remaining), PlanEnd::Exhausted)
    }

    /// Counts one more fill in `instrument` between `accounts` into `count` if the fill budget
    /// has room for it; otherwise leaves `count` as it was and says no. An account is counted
    /// once. One a proof checks solvent (`true`: a fill's accounts, a liquidation's
    /// counterparty) in `Portfolio` or `Standard` is priced from its one position when that is
    /// all it holds (the traded instrument's, or none), otherwise in a window per run its
    /// nonzero positions and the traded one lie in (in `WorstCase` nowhere: it covers its
    /// shorts' worst case); a liquidated account takes registers only.
    pub(crate) fn admit_fill(
        &self,
        count: &mut FillCount,
        accounts: [(AccountId, bool); 2],
        instrument: InstrumentId,
        trade: bool,
    ) -> bool {
        let budget = &self.limits.fill_budget;
        // What this fill adds: accounts, windows, and runs not counted yet; margin slots,
        // position and instrument registers.
        let (mut added, mut windows, mut new_runs) = (0, count.windows, BTreeSet::new());
        let (mut margins, mut positions) = (count.margins, count.positions);
        let mut instruments = count.instruments.clone();
        instruments.insert(instrument.0);
        // A deleveraging's account (the first) is proven below maintenance before each transfer
        // when it holds no more positions than the shape prices for a liquidation
        // (`FillBudget::liquidation_priced`): a margin slot a transfer, and every position it
        // holds in the registers.
        let liquidated =
            !trade && self.open_positions(accounts[0].0) <= budget.liquidation_priced();
        if liquidated {
            margins += 1;
        }
        for (k, (account, priced)) in accounts.into_iter().enumerate() {
            if count.accounts.contains(&account) || (k == 1 && account == accounts[0].0) {
                continue;
            }
            added += 1;
            positions += 1;
            // The positions it holds in other instruments.
            let acct = &self.accounts[account.0 as usize];
            let others = acct.positions.iter().filter(|(i, slot)| {
                **i != instrument && self.positions[**slot as usize].exposure.position.0 != 0
            });
            // A fill's Portfolio or Standard account is proven maintained after the batch (the
            // prover's end slot): a margin slot, and every position it holds in the registers,
            // which also price its solvency (no window). A priced liquidated account's registers
            // too (its margin slots counted above, one a transfer).
            let margined = acct.mode != optio_types::MarginMode::WorstCase;
            let maintained = trade && margined;
            if maintained || (liquidated && k == 0) {
                margins += u32::from(maintained);
                for (i, _) in others {
                    positions += 1;
                    instruments.insert(i.0);
                }
                continue;
            }
            // A WorstCase account covers its shorts' worst case after the fill, so it is solvent
            // at any committed marks (each lies in `[0, W]`): the proof prices it nowhere.
            if !priced || !margined {
                continue;
            }
            // The runs of the positions it holds in other instruments.
            let mut held: BTreeSet<u32> = others.map(|(i, _)| budget.run(*i)).collect();
            if !held.is_empty() {
                held.insert(budget.run(instrument));
                windows += held.len() as u32;
                new_runs.extend(held.into_iter().filter(|r| !count.runs.contains(r)));
            }
        }
        let mut added_accounts = Vec::with_capacity(added);
        for (account, _) in accounts {
            if !count.accounts.contains(&account) && !added_accounts.contains(&account) {
                added_accounts.push(account);
            }
        }
        count.take(
            budget,
            Added {
                accounts: added_accounts,
                windows,
                new_runs,
                margins,
                positions,
                instruments,
            },
        )
    }

    /// Counts one more auction start of `account` into `count` if the fill budget has room
    /// for it, as the prover's plan counts one: an op slot and the account; and, when the
    /// account holds no more positions than the shape prices for a liquidation
    /// (`FillBudget::liquidation_priced`), a margin slot and a register for each position and
    /// its instrument (the proof prices it below maintenance). Otherwise leaves `count` as it
    /// was and says no.
    pub(crate) fn admit_start(&self, count: &mut FillCount, account: AccountId) -> bool {
        let held: Vec<u32> = self.accounts[account.0 as usize]
            .positions
            .iter()
            .filter(|(_, slot)| self.positions[**slot as usize].exposure.position.0 != 0)
            .map(|(i, _)| i.0)
            .collect();
        let priced = held.len() as u64 <= u64::from(self.limits.fill_budget.liquidation_priced());
        self.admit_account_op(count, account, priced.then_some(held))
    }

    /// Counts one more auction end of `account` into `count` if the fill budget has room for
    /// it, as the prover's plan counts one: an account that covers what its shorts can owe at
    /// worst (`short_cover` at or above zero: a flat and solvent one, or one whose owner
    /// deposited) is proven cured by its op slot alone (the slot's `by_cover`), so it takes an
    /// op slot and the account; any other takes what a start does (`admit_start`: a cured
    /// margin slot and its positions' registers). Since engine rules 6 (before, every end took
    /// what a start does).
    pub(crate) fn admit_end(&self, count: &mut FillCount, account: AccountId) -> bool {
        if self.short_cover(account) < 0 {
            return self.admit_start(count, account);
        }
        self.admit_account_op(count, account, None)
    }

    /// Counts one more op of `account` alone (an auction's start or end) into `count` if the
    /// fill budget has room for it: an op slot and the account; with `priced`, the instruments
    /// of the positions a margin slot prices, that slot and a register for each position and
    /// its instrument. Otherwise leaves `count` as it was and says no.
    fn admit_account_op(
        &self,
        count: &mut FillCount,
        account: AccountId,
        priced: Option<Vec<u32>>,
    ) -> bool {
        let (mut margins, mut positions) = (count.margins, count.positions);
        let mut instruments = count.instruments.clone();
        if let Some(held) = priced {
            margins += 1;
            positions += held.len() as u32;
            instruments.extend(held);
        }
        let accounts = if count.accounts.contains(&account) {
            Vec::new()
        } else {
            vec![account]
        };
        let (windows, new_runs) = (count.windows, BTreeSet::new());
        count.take(
            &self.limits.fill_budget,
            Added {
                accounts,
                windows,
                new_runs,
                margins,
                positions,
                instruments,
            },
        )
    }

    /// Whether filling `qty` of the resting order in `slot`, after the fills already planned
    /// for its account, leaves a mark-margined account at or above maintenance at the current
    /// marks. A resting order was margined against the marks of its placement; after they move
    /// it may no longer be covered, and filling it could leave its account liquidatable or
    /// bankrupt at the fill (its loss then falls on the insurance fund and, past it, on every
    /// other account). A fully collateralized account needs no check: its requirement does not
    /// move with the marks, and covered its orders.
    fn maker_keeps_maintenance(&self, slot: u32, qty: i64, plan: &[Step]) -> bool {
        let order = self.store.get(slot);
        let (account, instrument) = (order.account, order.instrument);
        let acct = &self.accounts[account.0 as usize];
        if acct.mode == optio_types::MarginMode::WorstCase {
            return true;
        }
        let spec = &self.instruments[instrument.0 as usize].spec;
        let mut position = i128::from(self.position_qty(account, instrument));
        let mut balance = i128::from(acct.balance.0);
        let planned = plan.iter().filter_map(|step| match *step {
            Step::Fill { slot, qty } if self.store.get(slot).account == account => {
                Some((slot, qty.0))
            }
            _ => None,
        });
        for (slot, qty) in planned.chain([(slot, qty)]) {
            let o = self.store.get(slot);
            let Ok(notional) = o.price.notional(Qty(qty)) else {
                return false;
            };
            let Ok(fee) = spec.maker_fee.fee_on(notional) else {
                return false;
            };
            let sign = i128::from(o.side.sign());
            position += sign * i128::from(qty);
            balance -= sign * i128::from(notional.0) + i128::from(fee.0);
        }
        i64::try_from(position).is_ok_and(|position| {
            self.maintenance_with(account, instrument, Qty(position))
                .is_ok_and(|maintenance| balance >= maintenance)
        })
    }

    /// How much a reduce-only order of `account` on `side` may still fill, counting the fills
    /// already planned for that account.
    fn reduce_allowance(
        &self,
        account: AccountId,
        instrument: InstrumentId,
        side: Side,
        plan: &[Step],
    ) -> i64 {
        let mut q = self.position_qty(account, instrument);
        for step in plan {
            if let Step::Fill { slot, qty } = *step {
                let o = self.store.get(slot);
                if o.account == account {
                    q += o.side.sign() * qty.0;
                }
            }
        }
        match side {
            Side::Sell => q.max(0),
            Side::Buy => (-q).max(0),
        }
    }

    /// Whether a new order at `price` on `side` would need a new level beyond the limit, given
    /// that the order in `leaving` (if any) leaves that side first.
    fn level_limit_hit(
        &self,
        inst: &InstrumentState,
        side: Side,
        price: Price,
        leaving: Option<u32>,
    ) -> bool {
        let levels = inst.book.side(side);
        if levels.len() < self.limits.max_price_levels_per_side as usize {
            return false;
        }
        let sole = |slot: u32| {
            let o = self.store.get(slot);
            levels.get(&o.price).is_some_and(|l| l.count == 1)
        };
        let exists_after = levels
            .get(&price)
            .is_some_and(|l| !(l.count == 1 && leaving.is_some_and(|s| l.head == s)));
        let count_after = levels.len() - usize::from(leaving.is_some_and(sole));
        !exists_after && count_after >= self.limits.max_price_levels_per_side as usize
    }

    // ---- commands ----

    /// Whether the instruments not yet settled, with `listed`, lie in no more mark windows than
    /// a proven batch holds (`EngineLimits::mark_windows`): the oracle marks each of them.
    fn marks_fit_with(&self, listed: InstrumentId) -> bool {
        let w = &self.limits.mark_windows;
        if *w == MarkWindows::UNBOUNDED {
            return true;
        }
        let runs: BTreeSet<u32> = (0..self.instruments.len() as u32)
            .map(InstrumentId)
            .filter(|id| self.instruments[id.0 as usize].status != InstrumentStatus::Settled)
            .chain([listed])
            .map(|id| w.run(id))
            .collect();
        runs.len() <= w.windows as usize
    }

    fn list_instrument(
        &mut self,
        spec: &InstrumentSpec,
        events: &mut Vec<Event>,
    ) -> Result<(), RejectCode> {
        spec.validate()
            .map_err(|_| RejectCode::InvalidInstrumentSpec)?;
        if self.instruments.len() >= self.limits.max_instruments as usize
            || !self.marks_fit_with(InstrumentId(self.instruments.len() as u32))
        {
            return Err(RejectCode::TooManyInstruments);
        }
        if self.names.contains_key(&spec.name) {
            return Err(RejectCode::DuplicateInstrument);
        }
        if spec.expiry_ms().is_some_and(|t| t <= self.time_ms) {
            return Err(RejectCode::ExpiryInPast);
        }
        let id = InstrumentId(self.instruments.len() as u32);
        self.insert_instrument(spec.clone(), InstrumentStatus::Listed, None);
        events.push(Event::InstrumentListed { instrument: id });
        Ok(())
    }

    pub(crate) fn insert_instrument(
        &mut self,
        spec: InstrumentSpec,
        status: InstrumentStatus,
        settlement_price: Option<Price>,
    ) {
        let id = InstrumentId(self.instruments.len() as u32);
        if let Some(t) = spec.expiry_ms()
            && matches!(status, InstrumentStatus::Listed | InstrumentStatus::Active)
        {
            self.expiries.insert((t, id));
        }
        self.names.insert(spec.name.clone(), id);
        let max_price = spec.max_price().expect("validated spec");
        self.instruments.push(InstrumentState {
            spec,
            status,
            settlement_price,
            max_price,
            book: Book::default(),
            net_position: 0,
            holders: BTreeSet::new(),
            mark: None,
            participants: Vec::new(),
        });
    }

    fn activate_instrument(
        &mut self,
        id: InstrumentId,
        events: &mut Vec<Event>,
    ) -> Result<(), RejectCode> {
        if self.instrument(id)?.status != InstrumentStatus::Listed {
            return Err(RejectCode::InvalidStatusTransition);
        }
        self.instruments[id.0 as usize].status = InstrumentStatus::Active;
        events.push(Event::InstrumentActivated { instrument: id });
        Ok(())
    }

    pub(crate) fn expire_instrument(&mut self, id: InstrumentId, events: &mut Vec<Event>) {
        self.touch_instrument(id);
        let mut slots = std::mem::take(&mut self.scratch);
        slots.clear();
        let inst = &self.instruments[id.0 as usize];
        inst.book.slots_in_priority(&self.store, &mut slots);
        for &slot in &slots {
            self.remove_order(slot, DoneReason::InstrumentExpired, events);
        }
        self.scratch = slots;
        self.instruments[id.0 as usize].status = InstrumentStatus::Expired;
        self.post_expiry(id, events);
    }

    /// Posts instrument `id`'s expiry (`Event::InstrumentExpired`: the settlement state's expiry
    /// op) within the input's expiry budget (`EngineLimits::settle_budget`), or keeps it for the
    /// next input. It has expired in the engine either way; its settlement waits for the post.
    fn post_expiry(&mut self, id: InstrumentId, events: &mut Vec<Event>) {
        if self.expiries_posted_now >= self.limits.settle_budget.expiries {
            self.unposted_expiries.insert(id);
            return;
        }
        self.expiries_posted_now += 1;
        events.push(Event::InstrumentExpired { instrument: id });
    }

    /// Takes an expired instrument's settlement price; its holders are paid by `settle_due`,
    /// in this input and, past the settlement budget, at later oracle updates.
    pub(crate) fn settle_instrument(
        &mut self,
        id: InstrumentId,
        settlement_price: Price,
        events: &mut Vec<Event>,
    ) -> Result<(), RejectCode> {
        self.take_settlement_price(id, settlement_price)?;
        self.settle_due(events);
        Ok(())
    }

    /// Records the settlement price of expired instrument `id` (once): it is due to settle.
    pub(crate) fn take_settlement_price(
        &mut self,
        id: InstrumentId,
        settlement_price: Price,
    ) -> Result<(), RejectCode> {
        let inst = self.instrument(id)?;
        if inst.status != InstrumentStatus::Expired || inst.settlement_price.is_some() {
            return Err(RejectCode::InvalidStatusTransition);
        }
        if !settlement_price.is_positive() {
            return Err(RejectCode::InvalidSettlementPrice);
        }
        self.instruments[id.0 as usize].settlement_price = Some(settlement_price);
        self.settles_due.insert(id);
        Ok(())
    }

    /// Settles the instruments due, in id order, within the settlement budget
    /// (`EngineLimits::settle_budget`): each settlement takes a slot and pays at most as many
    /// positions as the budget's holders, the input's settlements together. An instrument
    /// with more holders than that settles in balanced parts (`settlement_part`), one a slot;
    /// what the budget cannot hold waits for the next accepted oracle update. Unbounded, every
    /// instrument due settles whole at once.
    pub(crate) fn settle_due(&mut self, events: &mut Vec<Event>) {
        let budget = self.limits.settle_budget;
        let (mut slots, mut room) = (budget.slots, budget.holders as usize);
        let due: Vec<InstrumentId> = self.settles_due.iter().copied().collect();
        for id in due {
            // Its expiry, not yet posted, comes first in the settlement state.
            if self.unposted_expiries.contains(&id) {
                continue;
            }
            let holders = self.instruments[id.0 as usize].holders.len();
            // A part pays at least a long and a short (or nobody, when nobody holds any).
            if slots == 0 || (holders > 0 && room < 2) {
                break;
            }
            let part = self.settlement_part(id, room);
            slots -= 1;
            room -= part.len();
            self.pay_settlement_part(id, &part, events);
            if self.instruments[id.0 as usize].holders.is_empty() {
                self.settles_due.remove(&id);
            }
        }
    }

    /// The positions of instrument `id` one settlement pays, at most `room`: every holder's
    /// whole position when they fit (in account order), else a balanced part, longs and shorts
    /// in account order matched quantity for quantity until a next match would need a holder
    /// more (the last long or short may be paid a part of its position, the rest in the next
    /// part). Each part's quantities sum to zero, so its payouts net to its rounding only.
    fn settlement_part(&self, id: InstrumentId, room: usize) -> Vec<(AccountId, i64)> {
        let held = |account: AccountId| {
            let slot = self
                .position_index
                .get(&(account.0, id.0))
                .expect("holders have a position");
            self.positions[slot as usize].exposure.position.0
        };
        let holders = &self.instruments[id.0 as usize].holders;
        if holders.len() <= room {
            return holders.iter().map(|&a| (a, held(a))).collect();
        }
        let longs: Vec<(AccountId, i64)> = holders
            .iter()
            .map(|&a| (a, held(a)))
            .filter(|&(_, q)| q > 0)
            .collect();
        let shorts: Vec<(AccountId, i64)> = holders
            .iter()
            .map(|&a| (a, -held(a)))
            .filter(|&(_, q)| q > 0)
            .collect();
        let mut part: Vec<(AccountId, i64)> = Vec::with_capacity(room);
        let (mut i, mut j) = (0, 0);
        let (mut long_left, mut short_left) = (longs[0].1, shorts[0].1);
        // Where the current long's and short's entries are in `part`, once they have one.
        let (mut long_at, mut short_at): (Option<usize>, Option<usize>) = (None, None);
        loop {
            let new = usize::from(long_at.is_none()) + usize::from(short_at.is_none());
            if part.len() + new > room {
                break;
            }
            let m = long_left.min(short_left);
            for (at, account, q) in [
                (&mut long_at, longs[i].0, m),
                (&mut short_at, shorts[j].0, -m),
            ] {
                match *at {
                    Some(k) => part[k].1 += q,
                    None => {
                        *at = Some(part.len());
                        part.push((account, q));
                    }
                }
            }
            long_left -= m;
            short_left -= m;
            if long_left == 0 {
                i += 1;
                long_at = None;
            }
            if short_left == 0 {
                j += 1;
                short_at = None;
            }
            // Longs and shorts net to zero: they run out together.
            if i == longs.len() || j == shorts.len() {
                break;
            }
            if long_left == 0 {
                long_left = longs[i].1;
            }
            if short_left == 0 {
                short_left = shorts[j].1;
            }
        }
        part
    }

    /// Pays one settlement of instrument `id`: each position of `part` (account, quantity
    /// settled) is paid `settlement_cash` of its quantity, rounded down whatever the side, the
    /// remainder to insurance. The first part marks the instrument settled: its mark is one
    /// contract's settlement value from then on, in every scenario (the settlement state's,
    /// `InstrumentSpec::settled_mark`), the oracle's later marks for it passed over, so the
    /// positions a part leaves are worth what their settlement will pay.
    fn pay_settlement_part(
        &mut self,
        id: InstrumentId,
        part: &[(AccountId, i64)],
        events: &mut Vec<Event>,
    ) {
        self.touch_instrument(id);
        let settlement_price = self.instruments[id.0 as usize]
            .settlement_price
            .expect("a settlement due has its price");
        let first = self.instruments[id.0 as usize].status == InstrumentStatus::Expired;
        if first {
            let scenarios = self.risk.scenarios as usize;
            let inst = &mut self.instruments[id.0 as usize];
            inst.status = InstrumentStatus::Settled;
            let value = inst
                .spec
                .settled_mark(settlement_price)
                .expect("a settlement value is bounded by the cap");
            inst.mark = Some((value, vec![0; scenarios]));
        }
        let mut paid: i128 = 0;
        for &(account, q) in part {
            let slot = self
                .position_index
                .get(&(account.0, id.0))
                .expect("holders have a position");
            let cash = self.instruments[id.0 as usize]
                .spec
                .settlement_cash(settlement_price, Qty(q))
                .expect("a settlement value is bounded by the cap");
            let pos = &mut self.positions[slot as usize];
            let held = pos.exposure.position.0;
            // The cost of the quantity settled, released as a fill's closing part releases it.
            let released = if q == held {
                pos.cost.0
            } else {
                let share = mul_div(
                    i128::from(pos.cost.0),
                    i128::from(q.abs()),
                    i128::from(held.abs()),
                    Rounding::TowardSystem,
                )
                .expect("a cost share is at most the cost");
                i64::try_from(share).expect("a cost share is at most the cost")
            };
            pos.realized_pnl = Amount(pos.realized_pnl.0 + cash.0 - released);
            pos.cost = Amount(pos.cost.0 - released);
            pos.exposure.position = Qty(held - q);
            paid += i128::from(cash.0);
            self.credit(account, cash);
            if held == q {
                self.instruments[id.0 as usize].holders.remove(&account);
            }
            self.refresh_requirement(account, slot);
            events.push(Event::PositionSettled {
                account,
                instrument: id,
                qty: Qty(q),
                cash,
            });
        }
        if first {
            // The positions left are worth the settlement value now.
            let left: Vec<AccountId> = self.instruments[id.0 as usize]
                .holders
                .iter()
                .copied()
                .collect();
            for account in left {
                let slot = self
                    .position_index
                    .get(&(account.0, id.0))
                    .expect("holders have a position");
                self.refresh_requirement(account, slot);
                self.touch_account(account);
            }
        }
        let insurance_credit = Amount(i64::try_from(-paid).expect("bounded by total collateral"));
        self.totals.insurance = Amount(self.totals.insurance.0 + insurance_credit.0);
        events.push(Event::InstrumentSettled {
            instrument: id,
            settlement_price,
            insurance_credit,
        });
        // A liquidating account whose last position just settled in deficit is covered by a
        // later input.
        for &(account, _) in part {
            if self.cover_due(account) {
                self.covers_due.insert(account);
            }
        }
        self.settled_now = true;
    }

    fn set_session_key(
        &mut self,
        account: AccountId,
        key: Address,
        expiry_ms: u64,
        events: &mut Vec<Event>,
    ) -> Result<(), RejectCode> {
        let acct = self.account(account)?;
        let now = self.time_ms;
        let live = acct
            .session_keys
            .iter()
            .filter(|(k, until)| **until > now && **k != key)
            .count();
        let invalid = key == acct.owner
            || (expiry_ms == 0 && !acct.session_keys.contains_key(&key))
            || (expiry_ms != 0
                && (expiry_ms <= now || live >= optio_types::oracle::MAX_SESSION_KEYS));
        if invalid {
            return Err(RejectCode::InvalidSessionKey);
        }
        let keys = &mut self.accounts[account.0 as usize].session_keys;
        // Expired keys are dropped whenever the set changes, so it stays bounded.
        keys.retain(|_, until| *until > now);
        if expiry_ms == 0 {
            keys.remove(&key);
        } else {
            keys.insert(key, expiry_ms);
        }
        events.push(Event::SessionKeyChanged {
            account,
            key,
            expiry_ms,
        });
        // The key's orders that would outlive it now (all of them when it is revoked) go with
        // it: none fills after its signer stopped being one.
        self.remove_orders_where(
            account,
            |o| {
                let outlives = match o.time_in_force {
                    TimeInForce::GoodTillTime(t) => expiry_ms == 0 || t > expiry_ms,
                    _ => true,
                };
                o.session_key == Some(key) && outlives
            },
            DoneReason::Cancelled,
            events,
        );
        Ok(())
    }

    /// Whether `key` may trade for `account` now (its owner, or an unexpired session key).
    pub fn may_trade(&self, account: AccountId, key: Address) -> bool {
        self.accounts.get(account.0 as usize).is_some_and(|a| {
            a.owner == key
                || a.session_keys
                    .get(&key)
                    .is_some_and(|until| *until > self.time_ms)
        })
    }

    fn open_account(&mut self, owner: Address, events: &mut Vec<Event>) -> Result<(), RejectCode> {
        if self.accounts.len() >= self.limits.max_accounts as usize {
            return Err(RejectCode::TooManyAccounts);
        }
        let id = AccountId(self.accounts.len() as u32);
        self.accounts.push(Account::new(owner));
        events.push(Event::AccountOpened { account: id, owner });
        Ok(())
    }

    fn deposit(
        &mut self,
        account: AccountId,
        amount: Amount,
        events: &mut Vec<Event>,
    ) -> Result<(), RejectCode> {
        self.account(account)?;
        self.check_amount(amount)?;
        if self.total_balances
            + i128::from(amount.0)
            + i128::from(self.totals.fee_pool.0)
            + i128::from(self.totals.insurance.0)
            > i128::from(MAX_TOTAL_COLLATERAL)
        {
            return Err(RejectCode::AmountTooLarge);
        }
        self.totals.deposits += i128::from(amount.0);
        self.credit(account, amount);
        self.push_balance_event(account, amount, events);
        Ok(())
    }

    pub(crate) fn check_priority(&self, priority: u64) -> Result<(), RejectCode> {
        if priority != self.totals.priority_served {
            return Err(RejectCode::PriorityOutOfOrder);
        }
        Ok(())
    }

    /// Serves an L1 deposit. Out of order is the only refusal: once in order it is served, so
    /// the L1 queue always advances. A deposit the engine cannot credit (an account table that
    /// is full, an amount past the limits; unreachable with the contract's per-deposit cap and
    /// real USDC supply) is served with nothing credited, and says so in its event.
    fn l1_deposit(
        &mut self,
        priority: u64,
        owner: Address,
        account: AccountId,
        amount: Amount,
        events: &mut Vec<Event>,
    ) -> Result<(), RejectCode> {
        self.check_priority(priority)?;
        let target = if self.account(account).is_ok() {
            Some(account)
        } else {
            self.open_account(owner, events)
                .ok()
                .map(|()| AccountId(self.accounts.len() as u32 - 1))
        };
        let credited = match target {
            Some(to) if self.deposit(to, amount, events).is_ok() => amount,
            _ => Amount(0),
        };
        self.totals.priority_served += 1;
        events.push(Event::PriorityServed {
            priority,
            account: target.unwrap_or(account),
            amount: credited,
        });
        Ok(())
    }

    /// Serves an L1 forced withdrawal: when `owner` owns `account`, cancels its open orders and
    /// withdraws all that leaves it covering what its shorts can owe at worst
    /// (`optio_types::forced_withdrawal`: all of a flat account's collateral), whatever its
    /// margin mode, a liquidation under way, the marks or how many positions it holds: the
    /// validity proof holds the operator to exactly that. When someone else asks, nothing moves.
    fn l1_withdrawal(
        &mut self,
        priority: u64,
        owner: Address,
        account: AccountId,
        events: &mut Vec<Event>,
    ) -> Result<(), RejectCode> {
        self.check_priority(priority)?;
        let mut withdrawn = Amount(0);
        if self.account(account).is_ok_and(|a| a.owner == owner) {
            self.cancel_all(account, None, events)?;
            let free = optio_types::forced_withdrawal(
                self.accounts[account.0 as usize].balance.0,
                self.liability(account),
                self.open_positions(account),
            );
            if free > 0 {
                withdrawn = Amount(free);
                self.pay_out(account, withdrawn, events);
            }
        }
        self.totals.priority_served += 1;
        events.push(Event::PriorityServed {
            priority,
            account,
            amount: Amount(-withdrawn.0),
        });
        Ok(())
    }

    fn withdraw(
        &mut self,
        account: AccountId,
        amount: Amount,
        events: &mut Vec<Event>,
    ) -> Result<(), RejectCode> {
        let acct = self.account(account)?;
        let (free, liquidating) = (acct.free_collateral(), self.in_liquidation(account));
        self.check_amount(amount)?;
        if liquidating {
            return Err(RejectCode::AccountInLiquidation);
        }
        self.check_account_fresh(account)?;
        self.check_positions_to_withdraw(account)?;
        if amount > free || i128::from(amount.0) > self.stress_free(account) {
            return Err(RejectCode::InsufficientFreeCollateral);
        }
        self.pay_out(account, amount, events);
        Ok(())
    }

    /// Moves `amount` out of `account` to L1.
    fn pay_out(&mut self, account: AccountId, amount: Amount, events: &mut Vec<Event>) {
        self.totals.withdrawals += i128::from(amount.0);
        self.credit(account, Amount(-amount.0));
        self.push_balance_event(account, Amount(-amount.0), events);
    }

    /// Whether `account` is being liquidated or waits for its auction's start
    /// (`liquidations_due`): either way it may not trade, withdraw or change its mode.
    pub(crate) fn in_liquidation(&self, account: AccountId) -> bool {
        self.accounts[account.0 as usize]
            .liquidating_since
            .is_some()
            || self.liquidations_due.contains(&account)
    }

    /// Whether `account` holds no position.
    pub(crate) fn flat(&self, account: AccountId) -> bool {
        self.accounts[account.0 as usize]
            .positions
            .values()
            .all(|s| self.positions[*s as usize].exposure.position.0 == 0)
    }

    fn transfer(
        &mut self,
        from: AccountId,
        to: AccountId,
        amount: Amount,
        events: &mut Vec<Event>,
    ) -> Result<(), RejectCode> {
        let source = self.account(from)?;
        let destination = self.account(to)?;
        self.check_amount(amount)?;
        if from == to {
            return Err(RejectCode::SameAccount);
        }
        if source.owner != destination.owner {
            return Err(RejectCode::NotSameOwner);
        }
        if self.in_liquidation(from) {
            return Err(RejectCode::AccountInLiquidation);
        }
        self.check_account_fresh(from)?;
        self.check_positions_to_withdraw(from)?;
        if amount > source.free_collateral() || i128::from(amount.0) > self.stress_free(from) {
            return Err(RejectCode::InsufficientFreeCollateral);
        }
        self.credit(from, Amount(-amount.0));
        self.credit(to, amount);
        self.push_balance_event(from, Amount(-amount.0), events);
        self.push_balance_event(to, amount, events);
        Ok(())
    }

    fn place_order(&mut self, o: &NewOrder, events: &mut Vec<Event>) -> Result<(), RejectCode> {
        let acct = self.account(o.account)?;
        if self.in_liquidation(o.account) {
            return Err(RejectCode::AccountInLiquidation);
        }
        let inst = self.active_instrument(o.instrument)?;
        self.check_qty(inst, o.qty)?;
        let is_market = matches!(o.order_type, OrderType::Market { .. });
        let immediate = matches!(
            o.time_in_force,
            TimeInForce::ImmediateOrCancel | TimeInForce::FillOrKill
        );
        let invalid = if is_market {
            o.post_only || !immediate
        } else {
            o.post_only && immediate
        };
        if invalid {
            return Err(RejectCode::InvalidOrderCombination);
        }
        if let TimeInForce::GoodTillTime(t) = o.time_in_force
            && t <= self.time_ms
        {
            return Err(RejectCode::GoodTillInPast);
        }
        // An order signed by a session key needs the key live now and lives no longer than it,
        // so that every fill of it is one the key could still sign.
        let time_in_force = match o.session_key {
            None => o.time_in_force,
            Some(key) => {
                let until = acct
                    .session_keys
                    .get(&key)
                    .copied()
                    .filter(|until| *until > self.time_ms)
                    .ok_or(RejectCode::SessionKeyNotLive)?;
                match o.time_in_force {
                    TimeInForce::GoodTillCancelled => TimeInForce::GoodTillTime(until),
                    TimeInForce::GoodTillTime(t) => TimeInForce::GoodTillTime(t.min(until)),
                    immediate => immediate,
                }
            }
        };
        let limit = match o.order_type {
            OrderType::Limit { price }
            | OrderType::Market {
                protection_price: Some(price),
            } => {
                Self::check_price(inst, price)?;
                price
            }
            OrderType::Market {
                protection_price: None,
            } => Self::default_protection(inst, o.side)?,
        };
        if o.client_order_id != 0
            && self
                .client_index
                .get(&(o.account.0, o.client_order_id))
                .is_some()
        {
            return Err(RejectCode::DuplicateClientOrderId);
        }
        if !immediate && acct.open_orders >= self.limits.max_open_orders_per_account {
            return Err(RejectCode::TooManyOpenOrders);
        }
        if o.reduce_only {
            self.check_reduce_only(o.account, o.instrument, o.side, o.qty)?;
        }
        if o.post_only && inst.book.crosses(o.side, limit) {
            return Err(RejectCode::PostOnlyWouldCross);
        }
        let existing = self.position_index.get(&(o.account.0, o.instrument.0));
        let mut e = existing
            .map(|p| self.positions[p as usize].exposure)
            .unwrap_or_default();
        Self::exposure_order(&inst.spec, &mut e, o.side, limit, o.qty, 1)?;
        if i128::from(acct.balance.0)
            < self.requirement_with(o.account, o.instrument, existing, &e)?
        {
            return Err(RejectCode::InsufficientMargin);
        }
        let owner = acct.owner;
        let (filled, end) = self.plan_match(
            o.account,
            o.instrument,
            o.side,
            limit,
            o.qty,
            owner,
            o.self_trade,
        );
        if o.time_in_force == TimeInForce::FillOrKill && filled < o.qty {
            return Err(RejectCode::FokNotFillable);
        }
        let remaining = Qty(o.qty.0 - filled.0);
        let rests = !immediate && remaining.is_positive() && end.lets_rest();
        if rests
            && self.level_limit_hit(
                &self.instruments[o.instrument.0 as usize],
                o.side,
                limit,
                None,
            )
        {
            return Err(RejectCode::TooManyPriceLevels);
        }

        // Validated: from here on nothing fails.
        let id = OrderId(self.next_order_id);
        self.next_order_id += 1;
        self.touch_account(o.account);
        self.touch_instrument(o.instrument);
        events.push(Event::OrderAccepted {
            order: id,
            account: o.account,
            instrument: o.instrument,
            client_order_id: o.client_order_id,
        });
        let position = match existing {
            Some(slot) => slot,
            None => self.position_entry(o.account, o.instrument),
        };
        let taker = Taker {
            id,
            account: o.account,
            position,
            instrument: o.instrument,
            side: o.side,
        };
        self.execute_plan(&taker, events);
        if rests {
            let order = Order::new(OrderRecord {
                id,
                account: o.account,
                instrument: o.instrument,
                side: o.side,
                price: limit,
                remaining,
                filled,
                client_order_id: o.client_order_id,
                time_in_force,
                post_only: o.post_only,
                reduce_only: o.reduce_only,
                self_trade: o.self_trade,
                is_quote: false,
                session_key: o.session_key,
            });
            self.rest_order(order, events);
        } else {
            let reason = if remaining.0 == 0 {
                DoneReason::Filled
            } else if end == PlanEnd::SelfTrade {
                DoneReason::SelfTrade
            } else if end == PlanEnd::FillLimit {
                DoneReason::FillLimit
            } else {
                DoneReason::UnfilledRemainder
            };
            events.push(Event::OrderDone {
                order: id,
                account: o.account,
                reason,
                unfilled: remaining,
            });
        }
        self.refresh_requirement(o.account, position);
        Ok(())
    }

    fn amend(
        &mut self,
        account: AccountId,
        order: OrderRef,
        price: Price,
        qty: Qty,
        events: &mut Vec<Event>,
    ) -> Result<(), RejectCode> {
        self.account(account)?;
        if self.in_liquidation(account) {
            return Err(RejectCode::AccountInLiquidation);
        }
        let slot = self.resolve(account, order)?;
        let o = self.store.get(slot).clone();
        let inst = &self.instruments[o.instrument.0 as usize];
        Self::check_price(inst, price)?;
        if !qty.is_positive() || qty.0 % inst.spec.amount_step.0 != 0 {
            return Err(RejectCode::InvalidQty);
        }
        if qty > self.limits.max_order_qty {
            return Err(RejectCode::QtyTooLarge);
        }
        if qty != o.remaining && qty < inst.spec.min_size {
            return Err(RejectCode::BelowMinSize);
        }
        if price == o.price && qty == o.remaining {
            return Err(RejectCode::InvalidAmend);
        }
        if o.reduce_only && qty > o.remaining {
            self.check_reduce_only(account, o.instrument, o.side, qty)?;
        }
        if price == o.price && qty < o.remaining {
            self.touch_account(account);
            self.touch_instrument(o.instrument);
            let cut = Qty(o.remaining.0 - qty.0);
            let inst = &mut self.instruments[o.instrument.0 as usize];
            inst.book.reduce(&mut self.store, slot, cut);
            let pos = &mut self.positions[o.position as usize];
            Self::exposure_order(&inst.spec, &mut pos.exposure, o.side, o.price, cut, -1)
                .expect("removing what was added");
            self.refresh_requirement(account, o.position);
            events.push(Event::OrderAmended {
                order: o.id,
                price,
                remaining: qty,
                kept_priority: true,
            });
            return Ok(());
        }
        if o.post_only && inst.book.crosses(o.side, price) {
            return Err(RejectCode::PostOnlyWouldCross);
        }
        let mut e = self.positions[o.position as usize].exposure;
        Self::exposure_order(&inst.spec, &mut e, o.side, o.price, o.remaining, -1)?;
        Self::exposure_order(&inst.spec, &mut e, o.side, price, qty, 1)?;
        if i128::from(self.accounts[account.0 as usize].balance.0)
            < self.requirement_with(account, o.instrument, Some(o.position), &e)?
        {
            return Err(RejectCode::InsufficientMargin);
        }
        let owner = self.accounts[account.0 as usize].owner;
        let (filled, end) = self.plan_match(
            account,
            o.instrument,
            o.side,
            price,
            qty,
            owner,
            o.self_trade,
        );
        let remaining = Qty(qty.0 - filled.0);
        let rests = remaining.is_positive() && end.lets_rest();
        if rests
            && self.level_limit_hit(
                &self.instruments[o.instrument.0 as usize],
                o.side,
                price,
                Some(slot),
            )
        {
            return Err(RejectCode::TooManyPriceLevels);
        }

        // Validated: from here on nothing fails. The order leaves the book, trades as a taker,
        // and rests again at the back of its new level.
        self.touch_account(account);
        self.touch_instrument(o.instrument);
        let inst = &mut self.instruments[o.instrument.0 as usize];
        inst.book.unlink(&mut self.store, slot);
        let pos = &mut self.positions[o.position as usize];
        Self::exposure_order(
            &inst.spec,
            &mut pos.exposure,
            o.side,
            o.price,
            o.remaining,
            -1,
        )
        .expect("removing what was added");
        events.push(Event::OrderAmended {
            order: o.id,
            price,
            remaining: qty,
            kept_priority: false,
        });
        let taker = Taker {
            id: o.id,
            account,
            position: o.position,
            instrument: o.instrument,
            side: o.side,
        };
        self.execute_plan(&taker, events);
        let stored = self.store.get_mut(slot);
        stored.price = price;
        stored.remaining = remaining;
        stored.filled = Qty(stored.filled.0 + filled.0);
        if rests {
            let inst = &mut self.instruments[o.instrument.0 as usize];
            inst.book.push_back(&mut self.store, slot);
            let pos = &mut self.positions[o.position as usize];
            Self::exposure_order(&inst.spec, &mut pos.exposure, o.side, price, remaining, 1)
                .expect("margin-checked above");
            if filled.is_positive() {
                events.push(Event::OrderRested {
                    order: o.id,
                    price,
                    remaining,
                });
            }
        } else {
            let reason = if remaining.0 == 0 {
                DoneReason::Filled
            } else if end == PlanEnd::FillLimit {
                DoneReason::FillLimit
            } else {
                DoneReason::SelfTrade
            };
            self.forget_order(slot, events, reason);
        }
        self.refresh_requirement(account, o.position);
        Ok(())
    }

    fn cancel_all(
        &mut self,
        account: AccountId,
        instrument: Option<InstrumentId>,
        events: &mut Vec<Event>,
    ) -> Result<(), RejectCode> {
        self.account(account)?;
        if let Some(id) = instrument {
            self.instrument(id)?;
        }
        self.remove_orders_where(
            account,
            |o| instrument.is_none_or(|i| o.instrument == i),
            DoneReason::Cancelled,
            events,
        );
        Ok(())
    }

    /// Takes off the book, with `reason`, the account's open orders that `which` picks (in the
    /// account's order list's order).
    pub(crate) fn remove_orders_where(
        &mut self,
        account: AccountId,
        which: impl Fn(&OrderRecord) -> bool,
        reason: DoneReason,
        events: &mut Vec<Event>,
    ) {
        let mut slots = std::mem::take(&mut self.scratch);
        slots.clear();
        let mut slot = self.accounts[account.0 as usize].orders_head;
        while slot != NIL {
            let o = self.store.get(slot);
            if which(o) {
                slots.push(slot);
            }
            slot = o.account_next;
        }
        for &slot in &slots {
            self.remove_order(slot, reason, events);
        }
        self.scratch = slots;
    }

    fn mass_quote(
        &mut self,
        account: AccountId,
        quotes: &[Quote],
        events: &mut Vec<Event>,
    ) -> Result<(), RejectCode> {
        let acct = self.account(account)?;
        if self.in_liquidation(account) {
            return Err(RejectCode::AccountInLiquidation);
        }
        if quotes.is_empty() || quotes.len() > self.limits.max_mass_quote_entries as usize {
            return Err(RejectCode::MassQuoteSize);
        }
        let mut ids: Vec<u32> = quotes.iter().map(|q| q.instrument.0).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(RejectCode::MassQuoteDuplicateInstrument);
        }
        let mut open_after = acct.open_orders as usize;
        let mut exposures = Vec::with_capacity(quotes.len());
        for q in quotes {
            let inst = self.active_instrument(q.instrument)?;
            for (price, qty) in q.bid.iter().chain(q.ask.iter()) {
                Self::check_price(inst, *price)?;
                self.check_qty(inst, *qty)?;
            }
            if let (Some((bid, _)), Some((ask, _))) = (q.bid, q.ask)
                && bid >= ask
            {
                return Err(RejectCode::QuoteCrossed);
            }
            let pos = self.position(account, q.instrument);
            let old = pos.map_or([None, None], |p| p.quotes);
            let mut e = pos.map(|p| p.exposure).unwrap_or_default();
            for (i, side) in [Side::Buy, Side::Sell].into_iter().enumerate() {
                let old_slot = old[i].map(|id| {
                    self.store
                        .slot_of(id)
                        .expect("quote refs point at open orders")
                });
                if let Some(s) = old_slot {
                    let old_order = self.store.get(s);
                    Self::exposure_order(
                        &inst.spec,
                        &mut e,
                        side,
                        old_order.price,
                        old_order.remaining,
                        -1,
                    )?;
                    open_after -= 1;
                }
                let new = if side == Side::Buy { q.bid } else { q.ask };
                let Some((price, qty)) = new else { continue };
                if self.crosses_excluding(inst, side, price, old[1 - i]) {
                    return Err(RejectCode::PostOnlyWouldCross);
                }
                if self.level_limit_hit(inst, side, price, old_slot) {
                    return Err(RejectCode::TooManyPriceLevels);
                }
                Self::exposure_order(&inst.spec, &mut e, side, price, qty, 1)?;
                open_after += 1;
            }
            exposures.push((q.instrument, e));
        }
        let requirement = self.requirement_with_many(account, &exposures)?;
        if open_after > self.limits.max_open_orders_per_account as usize {
            return Err(RejectCode::TooManyOpenOrders);
        }
        if i128::from(acct.balance.0) < requirement {
            return Err(RejectCode::InsufficientMargin);
        }

        // Validated: replace.
        self.touch_account(account);
        for q in quotes {
            self.touch_instrument(q.instrument);
            let old = self
                .position(account, q.instrument)
                .map_or([None, None], |p| p.quotes);
            for id in old.into_iter().flatten() {
                let slot = self
                    .store
                    .slot_of(id)
                    .expect("quote refs point at open orders");
                self.remove_order(slot, DoneReason::Cancelled, events);
            }
            for (side, new) in [(Side::Buy, q.bid), (Side::Sell, q.ask)] {
                let Some((price, qty)) = new else { continue };
                let id = OrderId(self.next_order_id);
                self.next_order_id += 1;
                events.push(Event::OrderAccepted {
                    order: id,
                    account,
                    instrument: q.instrument,
                    client_order_id: 0,
                });
                let order = Order::new(OrderRecord {
                    id,
                    account,
                    instrument: q.instrument,
                    side,
                    price,
                    remaining: qty,
                    filled: Qty::ZERO,
                    client_order_id: 0,
                    time_in_force: TimeInForce::GoodTillCancelled,
                    post_only: true,
                    reduce_only: false,
                    self_trade: SelfTradePrevention::CancelTaker,
                    is_quote: true,
                    session_key: None,
                });
                self.rest_order(order, events);
            }
            if let Some(slot) = self.position_index.get(&(account.0, q.instrument.0)) {
                self.refresh_requirement(account, slot);
            }
        }
        Ok(())
    }

    /// Whether `price` on `side` crosses the best opposite order, ignoring the single order
    /// `ignore` (the account's own quote that is being replaced).
    fn crosses_excluding(
        &self,
        inst: &InstrumentState,
        side: Side,
        price: Price,
        ignore: Option<OrderId>,
    ) -> bool {
        let opposite = side.opposite();
        let ignore_slot = ignore.and_then(|id| self.store.slot_of(id));
        let best = inst
            .book
            .levels(opposite)
            .find(|(_, l)| !(l.count == 1 && ignore_slot == Some(l.head)))
            .map(|(p, _)| *p);
        match (side, best) {
            (_, None) => false,
            (Side::Buy, Some(ask)) => price >= ask,
            (Side::Sell, Some(bid)) => price <= bid,
        }
    }

    // ---- mutation helpers (cannot fail) ----

    fn execute_plan(&mut self, taker: &Taker, events: &mut Vec<Event>) {
        let plan = std::mem::take(&mut self.plan);
        for step in &plan {
            match *step {
                Step::Fill { slot, qty } => self.fill(slot, taker, qty, events),
                Step::Cancel { slot, reason } => self.remove_order(slot, reason, events),
            }
        }
        self.plan = plan;
    }

    fn fill(&mut self, maker_slot: u32, taker: &Taker, qty: Qty, events: &mut Vec<Event>) {
        let maker = self.store.get(maker_slot);
        let (maker_id, maker_account, maker_side, price, maker_position) = (
            maker.id,
            maker.account,
            maker.side,
            maker.price,
            maker.position,
        );
        let spec = &self.instruments[taker.instrument.0 as usize].spec;
        let notional = price
            .notional(qty)
            .expect("prices and sizes are whole ticks and steps");
        let maker_fee = spec
            .maker_fee
            .fee_on(notional)
            .expect("bounded by the notional");
        let taker_fee = spec
            .taker_fee
            .fee_on(notional)
            .expect("bounded by the notional");
        let (buyer, seller) = match taker.side {
            Side::Buy => (taker.account, maker_account),
            Side::Sell => (maker_account, taker.account),
        };
        self.credit(buyer, Amount(-notional.0));
        self.credit(seller, notional);
        self.credit(maker_account, Amount(-maker_fee.0));
        self.credit(taker.account, Amount(-taker_fee.0));
        self.totals.fee_pool = Amount(self.totals.fee_pool.0 + maker_fee.0 + taker_fee.0);
        self.touch_account(maker_account);
        self.position_fill(
            maker_account,
            maker_position,
            maker_side.sign() * qty.0,
            notional,
        );
        self.position_fill(
            taker.account,
            taker.position,
            taker.side.sign() * qty.0,
            notional,
        );

        let inst = &mut self.instruments[taker.instrument.0 as usize];
        inst.book.reduce(&mut self.store, maker_slot, qty);
        let maker = self.store.get_mut(maker_slot);
        maker.filled = Qty(maker.filled.0 + qty.0);
        let done = maker.remaining.0 == 0;
        let pos = &mut self.positions[maker_position as usize];
        Self::exposure_order(&inst.spec, &mut pos.exposure, maker_side, price, qty, -1)
            .expect("removing what was added");
        events.push(Event::Fill {
            instrument: taker.instrument,
            maker_order: maker_id,
            taker_order: taker.id,
            maker_account,
            taker_account: taker.account,
            taker_side: taker.side,
            price,
            qty,
            maker_fee,
            taker_fee,
        });
        if done {
            inst.book.unlink(&mut self.store, maker_slot);
            self.forget_order(maker_slot, events, DoneReason::Filled);
        }
        self.refresh_requirement(maker_account, maker_position);
    }

    pub(crate) fn position_fill(
        &mut self,
        account: AccountId,
        position: u32,
        signed_qty: i64,
        notional: Amount,
    ) {
        let pos = &mut self.positions[position as usize];
        let was_flat = pos.exposure.position.0 == 0;
        pos.apply_fill(signed_qty, notional);
        let now_flat = pos.exposure.position.0 == 0;
        let inst = &mut self.instruments[pos.instrument.0 as usize];
        inst.net_position += i128::from(signed_qty);
        if now_flat && !was_flat {
            inst.holders.remove(&account);
        } else if was_flat && !now_flat {
            inst.holders.insert(account);
        }
    }

    /// Puts a new order on the book and into the account's indexes and exposure.
    pub(crate) fn rest_order(&mut self, mut order: Order, events: &mut Vec<Event>) {
        let (id, account, instrument, side, price, remaining, cid, tif) = (
            order.id,
            order.account,
            order.instrument,
            order.side,
            order.price,
            order.remaining,
            order.client_order_id,
            order.time_in_force,
        );
        let is_quote = order.is_quote;
        let position = self.position_entry(account, instrument);
        order.position = position;
        let acct = &mut self.accounts[account.0 as usize];
        order.account_next = acct.orders_head;
        let slot = self.store.insert(order);
        if acct.orders_head != NIL {
            self.store.get_mut(acct.orders_head).account_prev = slot;
        }
        acct.orders_head = slot;
        acct.open_orders += 1;
        self.account_orders += 1;
        let inst = &mut self.instruments[instrument.0 as usize];
        inst.book.push_back(&mut self.store, slot);
        if cid != 0 {
            self.client_index.insert((account.0, cid), slot);
        }
        if let TimeInForce::GoodTillTime(t) = tif {
            self.good_till.insert((t, id));
        }
        let pos = &mut self.positions[position as usize];
        pos.open_orders += 1;
        if is_quote {
            pos.quotes[usize::from(side == Side::Sell)] = Some(id);
        }
        Self::exposure_order(&inst.spec, &mut pos.exposure, side, price, remaining, 1)
            .expect("margin-checked before resting");
        events.push(Event::OrderRested {
            order: id,
            price,
            remaining,
        });
    }

    /// Takes a booked order off the book and forgets it.
    pub(crate) fn remove_order(&mut self, slot: u32, reason: DoneReason, events: &mut Vec<Event>) {
        let o = self.store.get(slot);
        let (account, instrument, side, price, remaining, position) = (
            o.account,
            o.instrument,
            o.side,
            o.price,
            o.remaining,
            o.position,
        );
        let inst = &mut self.instruments[instrument.0 as usize];
        inst.book.unlink(&mut self.store, slot);
        let pos = &mut self.positions[position as usize];
        Self::exposure_order(&inst.spec, &mut pos.exposure, side, price, remaining, -1)
            .expect("removing what was added");
        self.touch_account(account);
        self.touch_instrument(instrument);
        self.forget_order(slot, events, reason);
        self.refresh_requirement(account, position);
    }

    /// Drops an order that is already off the book (and out of the exposure) from the store
    /// and the account's indexes.
    fn forget_order(&mut self, slot: u32, events: &mut Vec<Event>, reason: DoneReason) {
        let o = self.store.remove(slot);
        if o.account_prev != NIL {
            self.store.get_mut(o.account_prev).account_next = o.account_next;
        }
        if o.account_next != NIL {
            self.store.get_mut(o.account_next).account_prev = o.account_prev;
        }
        let acct = &mut self.accounts[o.account.0 as usize];
        if acct.orders_head == slot {
            acct.orders_head = o.account_next;
        }
        acct.open_orders -= 1;
        self.account_orders -= 1;
        if o.client_order_id != 0 {
            self.client_index.remove(&(o.account.0, o.client_order_id));
        }
        if let TimeInForce::GoodTillTime(t) = o.time_in_force {
            self.good_till.remove(&(t, o.id));
        }
        let pos = &mut self.positions[o.position as usize];
        pos.open_orders -= 1;
        if o.is_quote {
            pos.quotes[usize::from(o.side == Side::Sell)] = None;
        }
        events.push(Event::OrderDone {
            order: o.id,
            account: o.account,
            reason,
            unfilled: o.remaining,
        });
    }

    pub(crate) fn refresh_requirement(&mut self, account: AccountId, position: u32) {
        self.refresh_requirement_checked(account, position)
            .expect("requirements of accepted exposures fit");
    }

    /// Recomputes one position's requirement and the account's totals.
    pub(crate) fn refresh_requirement_checked(
        &mut self,
        account: AccountId,
        position: u32,
    ) -> Result<(), RejectCode> {
        if self.accounts[account.0 as usize].mode != optio_types::MarginMode::WorstCase {
            return self.refresh_marked(account, position);
        }
        let pos = &mut self.positions[position as usize];
        let spec = &self.instruments[pos.instrument.0 as usize].spec;
        let acct = &mut self.accounts[account.0 as usize];
        let new = self.margin.requirement(spec, &pos.exposure)?;
        acct.requirement = Amount(acct.requirement.0 - pos.requirement.0 + new.0);
        acct.maintenance = Amount(acct.maintenance.0 - pos.maintenance.0 + new.0);
        pos.requirement = new;
        pos.maintenance = new;
        Ok(())
    }

    pub(crate) fn credit(&mut self, account: AccountId, delta: Amount) {
        let acct = &mut self.accounts[account.0 as usize];
        acct.balance = Amount(acct.balance.0 + delta.0);
        self.total_balances += i128::from(delta.0);
        self.touch_account(account);
    }

    fn push_balance_event(&self, account: AccountId, amount: Amount, events: &mut Vec<Event>) {
        events.push(Event::BalanceChanged {
            account,
            amount,
            balance: self.accounts[account.0 as usize].balance,
        });
    }

    pub(crate) fn touch_account(&mut self, account: AccountId) {
        if self.touched_accounts.last() != Some(&account) {
            self.touched_accounts.push(account);
        }
    }

    pub(crate) fn touch_instrument(&mut self, instrument: InstrumentId) {
        if self.touched_instruments.last() != Some(&instrument) {
            self.touched_instruments.push(instrument);
        }
    }

    /// The invariants checked after every input, in release builds, at a cost proportional to
    /// what the input touched. [`Engine::check_invariants`] is the full audit.
    fn check_touched(&self) {
        let held = self.total_balances
            + i128::from(self.totals.fee_pool.0)
            + i128::from(self.totals.insurance.0);
        assert_eq!(
            self.totals.deposits - self.totals.withdrawals,
            held,
            "collateral conservation violated"
        );
        assert!(
            self.totals.fee_pool.0 >= 0 && self.totals.insurance.0 >= 0,
            "fee pool or insurance fund negative"
        );
        let stored = self.store.len();
        assert!(
            self.store.booked() == stored && self.account_orders == stored,
            "books, order store and account order lists disagree"
        );
        for &a in &self.touched_accounts {
            let acct = &self.accounts[a.0 as usize];
            if acct.mode == optio_types::MarginMode::WorstCase {
                assert!(
                    acct.balance >= acct.requirement && acct.requirement.0 >= 0,
                    "account {a} under-collateralized"
                );
            }
        }
        for &i in &self.touched_instruments {
            let inst = &self.instruments[i.0 as usize];
            assert_eq!(
                inst.net_position, 0,
                "positions of instrument {i} do not net to zero"
            );
            if let (Some(bid), Some(ask)) = (inst.book.best(Side::Buy), inst.book.best(Side::Sell))
            {
                assert!(bid < ask, "book of instrument {i} is crossed");
            }
        }
    }

    pub(crate) fn touched_accounts(&self) -> &[AccountId] {
        &self.touched_accounts
    }

    /// The kind of an instrument (for callers that only know its id).
    pub fn instrument_kind(&self, id: InstrumentId) -> Option<InstrumentKind> {
        self.instruments
            .get(id.0 as usize)
            .map(|i| i.spec.name.kind)
    }

    /// Id of the instrument with this name.
    pub fn instrument_id(&self, name: &InstrumentName) -> Option<InstrumentId> {
        self.names.get(name).copied()
    }

    /// Best bid and ask of an instrument.
    pub fn best_bid_ask(&self, id: InstrumentId) -> (Option<Price>, Option<Price>) {
        self.instruments
            .get(id.0 as usize)
            .map_or((None, None), |i| {
                (i.book.best(Side::Buy), i.book.best(Side::Sell))
            })
    }

    /// Balance, requirement and free collateral of an account.
    pub fn collateral(&self, id: AccountId) -> Option<(Amount, Amount, Amount)> {
        self.accounts
            .get(id.0 as usize)
            .map(|a| (a.balance, a.requirement, a.free_collateral()))
    }

    /// An account's maintenance requirement net of its positions' values, and what its balance
    /// holds above what its shorts can owe at worst, in 1e-8 micro-USDC (`short_cover`,
    /// `balance * 1e8 - sum optio_types::short_liability`): a mark-margined account is
    /// liquidated when its balance is below the first and the second is below zero.
    pub fn maintenance(&self, id: AccountId) -> Option<(Amount, i128)> {
        let a = self.accounts.get(id.0 as usize)?;
        Some((a.maintenance, self.short_cover(id)))
    }

    /// An account's position in an instrument: size, average entry price (cost / size, rounded
    /// toward zero; `None` when flat) and realized P&L.
    pub fn position_view(
        &self,
        account: AccountId,
        instrument: InstrumentId,
    ) -> Option<(Qty, Option<Price>, Amount)> {
        let p = self.position(account, instrument)?;
        let q = p.exposure.position.0;
        let entry = (q != 0).then(|| {
            Price(
                (i128::from(p.cost.0) * i128::from(optio_types::QTY_SCALE) / i128::from(q)) as i64,
            )
        });
        Some((p.exposure.position, entry, p.realized_pnl))
    }

    /// Fee pool and insurance fund.
    pub fn pools(&self) -> (Amount, Amount) {
        (self.totals.fee_pool, self.totals.insurance)
    }
}
