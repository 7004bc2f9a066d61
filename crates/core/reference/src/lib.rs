//! A naive reference model of the engine: slow and obviously right, written separately to check
//! the fast one.
//!
//! Owns: a flat list of orders (best order found by scanning), margin recomputed from scratch on
//! every check, and transactional commands by cloning the whole state and restoring it on
//! rejection. It shares with the engine only the specification in `optio-types` (instrument
//! terms, the margin model, fee rounding, the canonical state), never its data structures.
//!
//! Must not: be used outside tests and tools; it is quadratic on purpose.

use std::collections::BTreeMap;

use optio_types::fixed::{Rounding, mul_div};
use optio_types::margin::fee_reserve;
use optio_types::state::{AccountRecord, InstrumentRecord, OrderRecord, PositionRecord, Totals};
use optio_types::{
    AccountId, Address, Amount, CanonicalState, Command, EngineLimits, Exposure, Input,
    InstrumentId, InstrumentSpec, InstrumentStatus, MarginModel, NewOrder, OrderId, OrderRef,
    OrderType, Price, QTY_SCALE, Qty, Quote, RejectCode, SelfTradePrevention, Side, TimeInForce,
    WorstCaseMargin,
};

const MAX_TOTAL_COLLATERAL: i128 = (i64::MAX / 4) as i128;

#[derive(Clone)]
struct Inst {
    spec: InstrumentSpec,
    status: InstrumentStatus,
    settlement_price: Option<Price>,
}

#[derive(Clone, Default)]
struct Pos {
    qty: i64,
    cost: i64,
    realized: i64,
}

#[derive(Clone)]
struct Acct {
    owner: Address,
    balance: i64,
    positions: BTreeMap<InstrumentId, Pos>,
}

#[derive(Clone)]
struct Ord {
    rec: OrderRecord,
    /// Time priority: a counter bumped whenever an order joins the back of a level.
    seq: u64,
}

/// The reference model.
#[derive(Clone)]
pub struct Reference {
    limits: EngineLimits,
    time: u64,
    next_order_id: u64,
    next_seq: u64,
    totals: Totals,
    instruments: Vec<Inst>,
    accounts: Vec<Acct>,
    orders: Vec<Ord>,
}

impl Reference {
    /// Empty state.
    pub fn new(limits: EngineLimits) -> Self {
        Self {
            limits,
            time: 0,
            next_order_id: 1,
            next_seq: 0,
            totals: Totals::default(),
            instruments: vec![],
            accounts: vec![],
            orders: vec![],
        }
    }

    /// Applies an input: time first, then the command, all of it or none of it.
    pub fn apply(&mut self, input: &Input) -> Result<(), RejectCode> {
        if input.time_ms < self.time {
            return Err(RejectCode::TimeWentBackwards);
        }
        self.advance_time(input.time_ms);
        let backup = self.clone();
        let result = self.command(&input.command);
        if result.is_err() {
            *self = backup;
        }
        result
    }

    /// Moves time forward: option expiries first, then good-till-time orders.
    pub fn advance_time(&mut self, t: u64) {
        if t <= self.time {
            return;
        }
        self.time = t;
        let mut expiring: Vec<(u64, usize)> = self
            .instruments
            .iter()
            .enumerate()
            .filter(|(_, i)| {
                matches!(
                    i.status,
                    InstrumentStatus::Listed | InstrumentStatus::Active
                )
            })
            .filter_map(|(n, i)| i.spec.expiry_ms().filter(|e| *e <= t).map(|e| (e, n)))
            .collect();
        expiring.sort();
        for (_, n) in expiring {
            self.orders.retain(|o| o.rec.instrument.0 as usize != n);
            self.instruments[n].status = InstrumentStatus::Expired;
        }
        self.orders
            .retain(|o| !matches!(o.rec.time_in_force, TimeInForce::GoodTillTime(g) if g <= t));
    }

    fn next_priority(&mut self, priority: u64) -> Result<(), RejectCode> {
        if priority != self.totals.priority_served {
            return Err(RejectCode::PriorityOutOfOrder);
        }
        self.totals.priority_served += 1;
        Ok(())
    }

    fn command(&mut self, c: &Command) -> Result<(), RejectCode> {
        match c {
            Command::ListInstrument { spec } => {
                spec.validate()
                    .map_err(|_| RejectCode::InvalidInstrumentSpec)?;
                if self.instruments.len() >= self.limits.max_instruments as usize {
                    return Err(RejectCode::TooManyInstruments);
                }
                // The windows of the ids not settled, the new one's included.
                let w = self.limits.mark_windows;
                let mut runs: Vec<u32> = (0..=self.instruments.len())
                    .filter(|&k| {
                        self.instruments
                            .get(k)
                            .is_none_or(|i| i.status != InstrumentStatus::Settled)
                    })
                    .map(|k| (k as u64 >> w.bits) as u32)
                    .collect();
                runs.dedup();
                if runs.len() > w.windows as usize {
                    return Err(RejectCode::TooManyInstruments);
                }
                if self.instruments.iter().any(|i| i.spec.name == spec.name) {
                    return Err(RejectCode::DuplicateInstrument);
                }
                if spec.expiry_ms().is_some_and(|e| e <= self.time) {
                    return Err(RejectCode::ExpiryInPast);
                }
                self.instruments.push(Inst {
                    spec: spec.clone(),
                    status: InstrumentStatus::Listed,
                    settlement_price: None,
                });
                Ok(())
            }
            Command::ActivateInstrument { instrument } => {
                let inst = self
                    .instruments
                    .get_mut(instrument.0 as usize)
                    .ok_or(RejectCode::UnknownInstrument)?;
                if inst.status != InstrumentStatus::Listed {
                    return Err(RejectCode::InvalidStatusTransition);
                }
                inst.status = InstrumentStatus::Active;
                Ok(())
            }
            Command::SettleInstrument {
                instrument,
                settlement_price,
            } => self.settle(*instrument, *settlement_price),
            Command::OpenAccount { owner } => {
                if self.accounts.len() >= self.limits.max_accounts as usize {
                    return Err(RejectCode::TooManyAccounts);
                }
                self.accounts.push(Acct {
                    owner: *owner,
                    balance: 0,
                    positions: BTreeMap::new(),
                });
                Ok(())
            }
            Command::Deposit { account, amount } => {
                self.acct(*account)?;
                self.check_amount(*amount)?;
                let held: i128 = self
                    .accounts
                    .iter()
                    .map(|a| i128::from(a.balance))
                    .sum::<i128>()
                    + i128::from(self.totals.fee_pool.0)
                    + i128::from(self.totals.insurance.0);
                if held + i128::from(amount.0) > MAX_TOTAL_COLLATERAL {
                    return Err(RejectCode::AmountTooLarge);
                }
                self.totals.deposits += i128::from(amount.0);
                self.accounts[account.0 as usize].balance += amount.0;
                Ok(())
            }
            // L1 priority operations: in queue order; once in order always served.
            Command::L1Deposit {
                priority,
                owner,
                account,
                amount,
            } => {
                self.next_priority(*priority)?;
                let to = if self.acct(*account).is_ok() {
                    Some(*account)
                } else {
                    self.command(&Command::OpenAccount { owner: *owner })
                        .ok()
                        .map(|()| AccountId(self.accounts.len() as u32 - 1))
                };
                if let Some(to) = to {
                    let _ = self.command(&Command::Deposit {
                        account: to,
                        amount: *amount,
                    });
                }
                Ok(())
            }
            Command::L1Withdrawal {
                priority,
                owner,
                account,
            } => {
                self.next_priority(*priority)?;
                if self.acct(*account).is_ok_and(|a| a.owner == *owner) {
                    self.orders.retain(|o| o.rec.account != *account);
                    // All that leaves the account covering what its shorts can owe at worst,
                    // less a micro-USDC per open position (all of a flat account's).
                    let acct = &self.accounts[account.0 as usize];
                    let (mut liability, mut open) = (0i128, 0u32);
                    for (i, p) in acct.positions.iter().filter(|(_, p)| p.qty != 0) {
                        let spec = &self.instruments[i.0 as usize].spec;
                        liability += optio_types::short_liability(spec, Qty(p.qty))
                            .expect("a listed spec's payoff fits");
                        open += 1;
                    }
                    let free = optio_types::forced_withdrawal(acct.balance, liability, open);
                    self.totals.withdrawals += i128::from(free);
                    self.accounts[account.0 as usize].balance -= free;
                }
                Ok(())
            }
            Command::Withdraw { account, amount } => {
                self.acct(*account)?;
                self.check_amount(*amount)?;
                if amount.0 > self.free(*account) {
                    return Err(RejectCode::InsufficientFreeCollateral);
                }
                self.totals.withdrawals += i128::from(amount.0);
                self.accounts[account.0 as usize].balance -= amount.0;
                Ok(())
            }
            Command::Transfer { from, to, amount } => {
                let owner_from = self.acct(*from)?.owner;
                let owner_to = self.acct(*to)?.owner;
                self.check_amount(*amount)?;
                if from == to {
                    return Err(RejectCode::SameAccount);
                }
                if owner_from != owner_to {
                    return Err(RejectCode::NotSameOwner);
                }
                if amount.0 > self.free(*from) {
                    return Err(RejectCode::InsufficientFreeCollateral);
                }
                self.accounts[from.0 as usize].balance -= amount.0;
                self.accounts[to.0 as usize].balance += amount.0;
                Ok(())
            }
            Command::PlaceOrder(o) if o.session_key.is_some() => {
                panic!("the reference model does not model session keys")
            }
            Command::PlaceOrder(o) => self.place(o),
            Command::Amend {
                account,
                order,
                price,
                qty,
            } => self.amend(*account, *order, *price, *qty),
            Command::Cancel { account, order } => {
                self.acct(*account)?;
                let i = self.find(*account, *order)?;
                self.orders.remove(i);
                Ok(())
            }
            Command::Replace { order, .. } if order.session_key.is_some() => {
                panic!("the reference model does not model session keys")
            }
            Command::Replace { cancel, order } => {
                self.acct(order.account)?;
                let i = self.find(order.account, *cancel)?;
                self.orders.remove(i);
                // The new order on its own: refused, it leaves the state after the cancel.
                let cancelled = self.clone();
                if self.place(order).is_err() {
                    *self = cancelled;
                }
                Ok(())
            }
            Command::CancelAll {
                account,
                instrument,
            } => {
                self.acct(*account)?;
                if let Some(id) = instrument {
                    self.inst(*id)?;
                }
                self.orders.retain(|o| {
                    !(o.rec.account == *account && instrument.is_none_or(|i| o.rec.instrument == i))
                });
                Ok(())
            }
            Command::MassQuote { account, quotes } => self.mass_quote(*account, quotes),
            Command::SetProofLimits(proof) => {
                if !proof.is_valid() {
                    return Err(RejectCode::InvalidLimits);
                }
                self.limits = self.limits.with_proof(*proof);
                Ok(())
            }
            // The reference models the fully collateralized core; oracle-driven margin is
            // checked by its own tests (never generated for the comparison).
            Command::OracleUpdate(_)
            | Command::SetMarginMode { .. }
            | Command::Liquidate { .. }
            | Command::Deleverage { .. }
            | Command::L1Close { .. }
            | Command::SetSessionKey { .. } => {
                panic!("the reference model does not model oracle updates or margin modes")
            }
        }
    }

    fn acct(&self, id: AccountId) -> Result<&Acct, RejectCode> {
        self.accounts
            .get(id.0 as usize)
            .ok_or(RejectCode::UnknownAccount)
    }

    fn inst(&self, id: InstrumentId) -> Result<&Inst, RejectCode> {
        self.instruments
            .get(id.0 as usize)
            .ok_or(RejectCode::UnknownInstrument)
    }

    fn active(&self, id: InstrumentId) -> Result<&Inst, RejectCode> {
        let i = self.inst(id)?;
        if i.status == InstrumentStatus::Active {
            Ok(i)
        } else {
            Err(RejectCode::InstrumentNotActive)
        }
    }

    fn check_amount(&self, a: Amount) -> Result<(), RejectCode> {
        if a.0 <= 0 {
            Err(RejectCode::InvalidAmount)
        } else if a > self.limits.max_amount {
            Err(RejectCode::AmountTooLarge)
        } else {
            Ok(())
        }
    }

    fn check_price(spec: &InstrumentSpec, p: Price) -> Result<(), RejectCode> {
        if p.0 <= 0 || p.0 % spec.tick_size.0 != 0 {
            return Err(RejectCode::InvalidPrice);
        }
        if p > spec.max_price().map_err(|_| RejectCode::Overflow)? {
            return Err(RejectCode::PriceOutOfBand);
        }
        Ok(())
    }

    fn check_qty(&self, spec: &InstrumentSpec, q: Qty) -> Result<(), RejectCode> {
        if q.0 <= 0 || q.0 % spec.amount_step.0 != 0 {
            return Err(RejectCode::InvalidQty);
        }
        if q > self.limits.max_order_qty {
            return Err(RejectCode::QtyTooLarge);
        }
        if q < spec.min_size {
            return Err(RejectCode::BelowMinSize);
        }
        Ok(())
    }

    fn pos_qty(&self, a: AccountId, i: InstrumentId) -> i64 {
        self.accounts[a.0 as usize]
            .positions
            .get(&i)
            .map_or(0, |p| p.qty)
    }

    fn reduce_room(&self, a: AccountId, i: InstrumentId, side: Side) -> i64 {
        let q = self.pos_qty(a, i);
        if side == Side::Sell {
            q.max(0)
        } else {
            (-q).max(0)
        }
    }

    /// The account's requirement, from scratch, optionally with one more hypothetical order.
    fn requirement(
        &self,
        a: AccountId,
        extra: Option<(InstrumentId, Side, Price, Qty)>,
    ) -> Result<i128, RejectCode> {
        let mut instruments: Vec<InstrumentId> = self.accounts[a.0 as usize]
            .positions
            .keys()
            .copied()
            .collect();
        instruments.extend(
            self.orders
                .iter()
                .filter(|o| o.rec.account == a)
                .map(|o| o.rec.instrument),
        );
        instruments.extend(extra.map(|e| e.0));
        instruments.sort();
        instruments.dedup();
        let mut total = 0i128;
        for i in instruments {
            let spec = &self.instruments[i.0 as usize].spec;
            let mut e = Exposure {
                position: Qty(self.pos_qty(a, i)),
                ..Exposure::default()
            };
            let mine = self
                .orders
                .iter()
                .filter(|o| o.rec.account == a && o.rec.instrument == i)
                .map(|o| (o.rec.side, o.rec.price, o.rec.remaining));
            for (side, price, qty) in
                mine.chain(extra.filter(|e| e.0 == i).map(|e| (e.1, e.2, e.3)))
            {
                e.fee_reserve.0 = e
                    .fee_reserve
                    .0
                    .checked_add(fee_reserve(spec, price, qty)?.0)
                    .ok_or(RejectCode::Overflow)?;
                if side == Side::Buy {
                    e.buy_qty.0 = e.buy_qty.0.checked_add(qty.0).ok_or(RejectCode::Overflow)?;
                    e.buy_cost.0 = e
                        .buy_cost
                        .0
                        .checked_add(price.notional(qty)?.0)
                        .ok_or(RejectCode::Overflow)?;
                } else {
                    e.sell_qty.0 = e
                        .sell_qty
                        .0
                        .checked_add(qty.0)
                        .ok_or(RejectCode::Overflow)?;
                }
            }
            total += i128::from(WorstCaseMargin.requirement(spec, &e)?.0);
        }
        Ok(total)
    }

    fn free(&self, a: AccountId) -> i64 {
        let req = self
            .requirement(a, None)
            .expect("requirements of the current state fit");
        (i128::from(self.accounts[a.0 as usize].balance) - req) as i64
    }

    fn find(&self, a: AccountId, r: OrderRef) -> Result<usize, RejectCode> {
        self.orders
            .iter()
            .position(|o| {
                o.rec.account == a
                    && match r {
                        OrderRef::Id(id) => o.rec.id == id,
                        OrderRef::Client(c) => c != 0 && o.rec.client_order_id == c,
                    }
            })
            .ok_or(RejectCode::UnknownOrder)
    }

    fn level_count(&self, i: InstrumentId, side: Side) -> usize {
        let mut prices: Vec<Price> = self
            .orders
            .iter()
            .filter(|o| o.rec.instrument == i && o.rec.side == side)
            .map(|o| o.rec.price)
            .collect();
        prices.sort();
        prices.dedup();
        prices.len()
    }

    fn level_blocked(&self, i: InstrumentId, side: Side, price: Price) -> bool {
        let exists = self
            .orders
            .iter()
            .any(|o| o.rec.instrument == i && o.rec.side == side && o.rec.price == price);
        !exists && self.level_count(i, side) >= self.limits.max_price_levels_per_side as usize
    }

    /// Index of the best order on `side` of instrument `i`.
    fn best(&self, i: InstrumentId, side: Side) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (n, o) in self.orders.iter().enumerate() {
            if o.rec.instrument != i || o.rec.side != side {
                continue;
            }
            let better = match best {
                None => true,
                Some(b) => {
                    let b = &self.orders[b];
                    let price_better = if side == Side::Buy {
                        o.rec.price > b.rec.price
                    } else {
                        o.rec.price < b.rec.price
                    };
                    price_better || (o.rec.price == b.rec.price && o.seq < b.seq)
                }
            };
            if better {
                best = Some(n);
            }
        }
        best
    }

    fn crosses(&self, i: InstrumentId, side: Side, price: Price) -> bool {
        self.best(i, side.opposite()).is_some_and(|b| {
            let p = self.orders[b].rec.price;
            if side == Side::Buy {
                price >= p
            } else {
                price <= p
            }
        })
    }

    fn trade(&mut self, a: AccountId, i: InstrumentId, signed: i64, price: Price) {
        let pos = self.accounts[a.0 as usize].positions.entry(i).or_default();
        let mut left = signed;
        // Close against the open position first, releasing cost pro rata.
        if pos.qty != 0 && (pos.qty > 0) != (signed > 0) {
            let closing = signed.abs().min(pos.qty.abs());
            let released = mul_div(
                i128::from(pos.cost),
                i128::from(closing),
                i128::from(pos.qty.abs()),
                Rounding::TowardSystem,
            )
            .expect("fits") as i64;
            let value = price.notional(Qty(closing)).expect("exact").0;
            pos.realized += if pos.qty > 0 {
                value - released
            } else {
                -value - released
            };
            pos.cost -= released;
            pos.qty += signed.signum() * closing;
            left -= signed.signum() * closing;
        }
        if left != 0 {
            pos.cost += left.signum() * price.notional(Qty(left.abs())).expect("exact").0;
            pos.qty += left;
        }
    }

    fn fill(&mut self, maker_idx: usize, taker: AccountId, taker_side: Side, qty: i64) {
        let m = self.orders[maker_idx].rec;
        let spec = self.instruments[m.instrument.0 as usize].spec.clone();
        let notional = m.price.notional(Qty(qty)).expect("exact");
        let maker_fee = spec.maker_fee.fee_on(notional).expect("fits").0;
        let taker_fee = spec.taker_fee.fee_on(notional).expect("fits").0;
        let (buyer, seller) = if taker_side == Side::Buy {
            (taker, m.account)
        } else {
            (m.account, taker)
        };
        self.accounts[buyer.0 as usize].balance -= notional.0;
        self.accounts[seller.0 as usize].balance += notional.0;
        self.accounts[m.account.0 as usize].balance -= maker_fee;
        self.accounts[taker.0 as usize].balance -= taker_fee;
        self.totals.fee_pool.0 += maker_fee + taker_fee;
        self.trade(m.account, m.instrument, m.side.sign() * qty, m.price);
        self.trade(taker, m.instrument, taker_side.sign() * qty, m.price);
        let o = &mut self.orders[maker_idx].rec;
        o.remaining.0 -= qty;
        o.filled.0 += qty;
        if o.remaining.0 == 0 {
            self.orders.remove(maker_idx);
        }
    }

    /// Whether a batch of `fills` fills between `accounts` (each named once) fits the
    /// fill budget: its fills and accounts. The model's accounts are all fully collateralized
    /// (`WorstCase`), which a proof prices nowhere, so they take no solvency or price window
    /// whatever else they hold.
    fn within_budget(&self, fills: u32, accounts: &[AccountId]) -> bool {
        let b = &self.limits.fill_budget;
        fills <= b.fills && accounts.len() as u64 <= u64::from(b.accounts)
    }

    /// Matches a taker; returns (filled, ended by self-trade prevention or the fill budget).
    fn match_taker(
        &mut self,
        a: AccountId,
        i: InstrumentId,
        side: Side,
        limit: Price,
        qty: i64,
        stp: SelfTradePrevention,
    ) -> (i64, bool) {
        let owner = self.accounts[a.0 as usize].owner;
        let mut remaining = qty;
        // Who filled so far, the taker first, and how many fills.
        let (mut filled_by, mut fills) = (vec![a], 0u32);
        while remaining > 0 {
            let Some(b) = self.best(i, side.opposite()) else {
                break;
            };
            let m = self.orders[b].rec;
            if (side == Side::Buy && m.price > limit) || (side == Side::Sell && m.price < limit) {
                break;
            }
            if self.accounts[m.account.0 as usize].owner == owner {
                match stp {
                    SelfTradePrevention::CancelTaker => return (qty - remaining, true),
                    SelfTradePrevention::CancelMaker => {
                        self.orders.remove(b);
                        continue;
                    }
                    SelfTradePrevention::CancelBoth => {
                        self.orders.remove(b);
                        return (qty - remaining, true);
                    }
                }
            }
            let mut available = m.remaining.0;
            if m.reduce_only {
                let room = self.reduce_room(m.account, i, m.side);
                if room == 0 {
                    self.orders.remove(b);
                    continue;
                }
                available = available.min(room);
            }
            let mut with = filled_by.clone();
            if !with.contains(&m.account) {
                with.push(m.account);
            }
            if !self.within_budget(fills + 1, &with) {
                return (qty - remaining, true);
            }
            (filled_by, fills) = (with, fills + 1);
            let f = remaining.min(available);
            self.fill(b, a, side, f);
            remaining -= f;
            if m.reduce_only && f < m.remaining.0 && self.reduce_room(m.account, i, m.side) == 0 {
                let idx = self
                    .orders
                    .iter()
                    .position(|o| o.rec.id == m.id)
                    .expect("partially filled maker is still open");
                self.orders.remove(idx);
            }
        }
        (qty - remaining, false)
    }

    fn place(&mut self, o: &NewOrder) -> Result<(), RejectCode> {
        self.acct(o.account)?;
        let spec = self.active(o.instrument)?.spec.clone();
        self.check_qty(&spec, o.qty)?;
        let market = matches!(o.order_type, OrderType::Market { .. });
        let immediate = matches!(
            o.time_in_force,
            TimeInForce::ImmediateOrCancel | TimeInForce::FillOrKill
        );
        let invalid = if market {
            o.post_only || !immediate
        } else {
            o.post_only && immediate
        };
        if invalid {
            return Err(RejectCode::InvalidOrderCombination);
        }
        if matches!(o.time_in_force, TimeInForce::GoodTillTime(t) if t <= self.time) {
            return Err(RejectCode::GoodTillInPast);
        }
        let limit = match o.order_type {
            OrderType::Limit { price }
            | OrderType::Market {
                protection_price: Some(price),
            } => {
                Self::check_price(&spec, price)?;
                price
            }
            OrderType::Market {
                protection_price: None,
            } => {
                let best = self
                    .best(o.instrument, o.side.opposite())
                    .ok_or(RejectCode::NoLiquidity)?;
                let best = i128::from(self.orders[best].rec.price.0);
                let bps = i128::from(spec.market_protection_bps.min(10_000));
                let tick = i128::from(spec.tick_size.0);
                let max = i128::from(spec.max_price().map_err(|_| RejectCode::Overflow)?.0);
                let p = if o.side == Side::Buy {
                    let raw = (best * (10_000 + bps) / 10_000).min(max);
                    raw / tick * tick
                } else {
                    let raw = (best * (10_000 - bps) + 9_999) / 10_000;
                    ((raw + tick - 1) / tick).max(1) * tick
                };
                Price(p as i64)
            }
        };
        let acct = self.acct(o.account)?;
        let open = self
            .orders
            .iter()
            .filter(|x| x.rec.account == o.account)
            .count();
        if o.client_order_id != 0
            && self
                .orders
                .iter()
                .any(|x| x.rec.account == o.account && x.rec.client_order_id == o.client_order_id)
        {
            return Err(RejectCode::DuplicateClientOrderId);
        }
        if !immediate && open >= self.limits.max_open_orders_per_account as usize {
            return Err(RejectCode::TooManyOpenOrders);
        }
        if o.reduce_only && o.qty.0 > self.reduce_room(o.account, o.instrument, o.side) {
            return Err(RejectCode::ReduceOnlyWouldIncrease);
        }
        if o.post_only && self.crosses(o.instrument, o.side, limit) {
            return Err(RejectCode::PostOnlyWouldCross);
        }
        let balance = acct.balance;
        if i128::from(balance)
            < self.requirement(o.account, Some((o.instrument, o.side, limit, o.qty)))?
        {
            return Err(RejectCode::InsufficientMargin);
        }
        let id = OrderId(self.next_order_id);
        self.next_order_id += 1;
        let (filled, ended) = self.match_taker(
            o.account,
            o.instrument,
            o.side,
            limit,
            o.qty.0,
            o.self_trade,
        );
        if o.time_in_force == TimeInForce::FillOrKill && filled < o.qty.0 {
            return Err(RejectCode::FokNotFillable);
        }
        let remaining = o.qty.0 - filled;
        if !immediate && remaining > 0 && !ended {
            if self.level_blocked(o.instrument, o.side, limit) {
                return Err(RejectCode::TooManyPriceLevels);
            }
            self.push(OrderRecord {
                id,
                account: o.account,
                instrument: o.instrument,
                side: o.side,
                price: limit,
                remaining: Qty(remaining),
                filled: Qty(filled),
                client_order_id: o.client_order_id,
                time_in_force: o.time_in_force,
                post_only: o.post_only,
                reduce_only: o.reduce_only,
                self_trade: o.self_trade,
                is_quote: false,
                session_key: None,
            });
        }
        Ok(())
    }

    fn push(&mut self, rec: OrderRecord) {
        self.orders.push(Ord {
            rec,
            seq: self.next_seq,
        });
        self.next_seq += 1;
    }

    fn amend(
        &mut self,
        a: AccountId,
        r: OrderRef,
        price: Price,
        qty: Qty,
    ) -> Result<(), RejectCode> {
        self.acct(a)?;
        let idx = self.find(a, r)?;
        let o = self.orders[idx].rec;
        let spec = self.instruments[o.instrument.0 as usize].spec.clone();
        Self::check_price(&spec, price)?;
        if qty.0 <= 0 || qty.0 % spec.amount_step.0 != 0 {
            return Err(RejectCode::InvalidQty);
        }
        if qty > self.limits.max_order_qty {
            return Err(RejectCode::QtyTooLarge);
        }
        if qty != o.remaining && qty < spec.min_size {
            return Err(RejectCode::BelowMinSize);
        }
        if price == o.price && qty == o.remaining {
            return Err(RejectCode::InvalidAmend);
        }
        if o.reduce_only && qty > o.remaining && qty.0 > self.reduce_room(a, o.instrument, o.side) {
            return Err(RejectCode::ReduceOnlyWouldIncrease);
        }
        if price == o.price && qty < o.remaining {
            self.orders[idx].rec.remaining = qty;
            return Ok(());
        }
        if o.post_only && self.crosses(o.instrument, o.side, price) {
            return Err(RejectCode::PostOnlyWouldCross);
        }
        let removed = self.orders.remove(idx);
        if i128::from(self.accounts[a.0 as usize].balance)
            < self.requirement(a, Some((o.instrument, o.side, price, qty)))?
        {
            return Err(RejectCode::InsufficientMargin);
        }
        let (filled, ended) = self.match_taker(a, o.instrument, o.side, price, qty.0, o.self_trade);
        let remaining = qty.0 - filled;
        if remaining > 0 && !ended {
            if self.level_blocked(o.instrument, o.side, price) {
                return Err(RejectCode::TooManyPriceLevels);
            }
            let mut rec = removed.rec;
            rec.price = price;
            rec.remaining = Qty(remaining);
            rec.filled = Qty(rec.filled.0 + filled);
            self.push(rec);
        }
        Ok(())
    }

    fn mass_quote(&mut self, a: AccountId, quotes: &[Quote]) -> Result<(), RejectCode> {
        self.acct(a)?;
        if quotes.is_empty() || quotes.len() > self.limits.max_mass_quote_entries as usize {
            return Err(RejectCode::MassQuoteSize);
        }
        for (n, q) in quotes.iter().enumerate() {
            if quotes[..n].iter().any(|p| p.instrument == q.instrument) {
                return Err(RejectCode::MassQuoteDuplicateInstrument);
            }
        }
        // Replace: pull the old quotes in the named instruments, then post the new ones.
        self.orders.retain(|o| {
            !(o.rec.account == a
                && o.rec.is_quote
                && quotes.iter().any(|q| q.instrument == o.rec.instrument))
        });
        let mut new = Vec::new();
        for q in quotes {
            let spec = self.active(q.instrument)?.spec.clone();
            for (p, s) in q.bid.iter().chain(q.ask.iter()) {
                Self::check_price(&spec, *p)?;
                self.check_qty(&spec, *s)?;
            }
            if let (Some((b, _)), Some((x, _))) = (q.bid, q.ask)
                && b >= x
            {
                return Err(RejectCode::QuoteCrossed);
            }
            for (side, entry) in [(Side::Buy, q.bid), (Side::Sell, q.ask)] {
                let Some((price, qty)) = entry else { continue };
                if self.crosses(q.instrument, side, price) {
                    return Err(RejectCode::PostOnlyWouldCross);
                }
                if self.level_blocked(q.instrument, side, price) {
                    return Err(RejectCode::TooManyPriceLevels);
                }
                new.push((q.instrument, side, price, qty));
            }
        }
        let open = self.orders.iter().filter(|o| o.rec.account == a).count() + new.len();
        if open > self.limits.max_open_orders_per_account as usize {
            return Err(RejectCode::TooManyOpenOrders);
        }
        for (instrument, side, price, qty) in new {
            let id = OrderId(self.next_order_id);
            self.next_order_id += 1;
            self.push(OrderRecord {
                id,
                account: a,
                instrument,
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
        }
        if i128::from(self.accounts[a.0 as usize].balance) < self.requirement(a, None)? {
            return Err(RejectCode::InsufficientMargin);
        }
        Ok(())
    }

    fn settle(&mut self, i: InstrumentId, s: Price) -> Result<(), RejectCode> {
        if self.inst(i)?.status != InstrumentStatus::Expired {
            return Err(RejectCode::InvalidStatusTransition);
        }
        if s.0 <= 0 {
            return Err(RejectCode::InvalidSettlementPrice);
        }
        let value = self.instruments[i.0 as usize]
            .spec
            .settlement_value_numerator(s);
        let denom = i128::from(QTY_SCALE) * i128::from(QTY_SCALE);
        let mut paid = 0i128;
        for acct in &mut self.accounts {
            let Some(pos) = acct.positions.get_mut(&i) else {
                continue;
            };
            if pos.qty == 0 {
                continue;
            }
            let exact = value * i128::from(pos.qty);
            // Longs are paid rounded down, shorts pay rounded up: the remainder stays in the system.
            let cash = if pos.qty > 0 {
                exact.div_euclid(denom)
            } else {
                -((-exact + denom - 1) / denom)
            } as i64;
            acct.balance += cash;
            pos.realized += cash - pos.cost;
            pos.qty = 0;
            pos.cost = 0;
            paid += i128::from(cash);
        }
        self.totals.insurance.0 += (-paid) as i64;
        let inst = &mut self.instruments[i.0 as usize];
        inst.status = InstrumentStatus::Settled;
        inst.settlement_price = Some(s);
        Ok(())
    }

    /// The canonical state, for comparison with the engine by hash.
    pub fn canonical(&self) -> CanonicalState {
        let mut orders: Vec<&Ord> = self.orders.iter().collect();
        orders.sort_by_key(|o| {
            let price_key = if o.rec.side == Side::Buy {
                -o.rec.price.0
            } else {
                o.rec.price.0
            };
            (o.rec.instrument, o.rec.side, price_key, o.seq)
        });
        CanonicalState {
            time_ms: self.time,
            next_order_id: self.next_order_id,
            limits: self.limits,
            risk: optio_types::RiskConfig::default(),
            oracles: vec![],
            totals: self.totals,
            instruments: self
                .instruments
                .iter()
                .map(|i| InstrumentRecord {
                    spec: i.spec.clone(),
                    status: i.status,
                    settlement_price: i.settlement_price,
                    // The model has no oracle: a settled instrument's mark is one contract's
                    // settlement value, the same in every scenario.
                    mark: i.settlement_price.map(|s| {
                        let value = i.spec.settlement_value_numerator(s) / i128::from(QTY_SCALE);
                        (
                            Price(value as i64),
                            vec![
                                Amount::ZERO;
                                optio_types::RiskConfig::default().scenarios as usize
                            ],
                        )
                    }),
                })
                .collect(),
            accounts: self
                .accounts
                .iter()
                .map(|a| AccountRecord {
                    owner: a.owner,
                    balance: Amount(a.balance),
                    positions: a
                        .positions
                        .iter()
                        .filter(|(_, p)| p.qty != 0 || p.realized != 0)
                        .map(|(i, p)| PositionRecord {
                            instrument: *i,
                            qty: Qty(p.qty),
                            cost: Amount(p.cost),
                            realized_pnl: Amount(p.realized),
                        })
                        .collect(),
                    margin_mode: optio_types::MarginMode::WorstCase,
                    liquidating_since: None,
                    session_keys: vec![],
                })
                .collect(),
            orders: orders.into_iter().map(|o| o.rec).collect(),
            unposted_expiries: Vec::new(),
        }
    }
}
