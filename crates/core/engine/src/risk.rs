//! Marks, oracle updates and mark-based margin (standard and portfolio), and settlement at the
//! oracle's signed price (the index TWAP it computes).
//!
//! Every margin figure is kept *net of position values*: an account may take risk while
//! `balance >= requirement` and is liquidatable once `balance < maintenance`. With cash accounting
//! (balances already paid for what was bought) this is the same as `equity >= margin` with
//! `equity = balance + sum(q * mark)`.

use optio_types::{
    AccountId, Amount, Event, Exposure, InstrumentId, InstrumentKind, InstrumentStatus, MarginMode,
    MarginModel, OptionRight, OracleUpdate, Price, QTY_SCALE, RejectCode,
    STANDARD_SHORT_OPTION_INITIAL_BPS, STANDARD_SHORT_OPTION_MAINTENANCE_BPS,
    STANDARD_SHORT_OPTION_MIN_INITIAL_BPS,
};

use crate::engine::{Engine, InstrumentState};

/// Accepted oracle state of one underlying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OracleState {
    pub index_price: Price,
    /// When the latest accepted update that marked an instrument was published (0 before
    /// one): the auction's clock, and what the settlement state commits with the marks.
    pub published_ms: u64,
    pub held: Option<(Price, u64)>,
}

/// One instrument's portfolio-margin contribution: per scenario (the configured ones plus an
/// implicit no-move scenario last) the worst account value change over the order endpoints, and
/// the short-option floor; for initial (orders included) and maintenance (position only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Contribution {
    pub initial: Vec<i64>,
    pub maintenance: Vec<i64>,
    pub floor_initial: i64,
    pub floor_maintenance: i64,
}

impl Contribution {
    pub(crate) fn zero(n: usize) -> Self {
        Self {
            initial: vec![0; n],
            maintenance: vec![0; n],
            floor_initial: 0,
            floor_maintenance: 0,
        }
    }

    /// Adds `c` in, scenario by scenario and floor by floor.
    pub(crate) fn add(&mut self, c: &Contribution) {
        for (sum, x) in self.initial.iter_mut().zip(&c.initial) {
            *sum += x;
        }
        for (sum, x) in self.maintenance.iter_mut().zip(&c.maintenance) {
            *sum += x;
        }
        self.floor_initial += c.floor_initial;
        self.floor_maintenance += c.floor_maintenance;
    }
}

/// An account's summed contributions.
pub(crate) type PortfolioSums = Contribution;

const BPS: i128 = 10_000;
const Q: i128 = QTY_SCALE as i128;

pub(crate) fn floor_div(n: i128, d: i128) -> i128 {
    n.div_euclid(d)
}

pub(crate) fn ceil_div(n: i128, d: i128) -> i128 {
    -(-n).div_euclid(d)
}

fn to_amount(v: i128) -> Result<i64, RejectCode> {
    i64::try_from(v).map_err(|_| RejectCode::Overflow)
}

/// The order endpoints of an exposure: (position, cash) if nothing fills, if all buys fill, if
/// all sells fill.
fn endpoints(e: &Exposure) -> [(i128, i128); 3] {
    let q = i128::from(e.position.0);
    [
        (q, 0),
        (q + i128::from(e.buy_qty.0), -i128::from(e.buy_cost.0)),
        (q - i128::from(e.sell_qty.0), i128::from(e.sell_proceeds.0)),
    ]
}

/// Position margin under a mark-based mode.
pub(crate) struct Marked {
    pub initial: i64,
    pub maintenance: i64,
    pub scenario: Option<Contribution>,
}

impl<M: MarginModel> Engine<M> {
    /// The latest accepted index of `inst`'s underlying.
    pub(crate) fn index_of(&self, inst: &InstrumentState) -> Option<Price> {
        self.oracles
            .get(&inst.spec.name.underlying)
            .map(|o| o.index_price)
    }

    /// Refuses mark-based margining of an instrument without a fresh mark.
    pub(crate) fn check_fresh(&self, instrument: InstrumentId) -> Result<(), RejectCode> {
        let inst = &self.instruments[instrument.0 as usize];
        if inst.mark.is_none() {
            return Err(RejectCode::NoMark);
        }
        let oracle = self
            .oracles
            .get(&inst.spec.name.underlying)
            .ok_or(RejectCode::NoMark)?;
        if self.time_ms.saturating_sub(oracle.published_ms) > self.risk.mark_max_age_ms {
            return Err(RejectCode::OracleStale);
        }
        Ok(())
    }

    /// Every live instrument of a mark-margined account must have a fresh mark.
    pub(crate) fn check_account_fresh(&self, account: AccountId) -> Result<(), RejectCode> {
        let acct = &self.accounts[account.0 as usize];
        if acct.mode == MarginMode::WorstCase {
            return Ok(());
        }
        for (&instrument, &slot) in &acct.positions {
            let p = &self.positions[slot as usize];
            let settled =
                self.instruments[instrument.0 as usize].status == InstrumentStatus::Settled;
            if !settled && (p.exposure.position.0 != 0 || p.open_orders > 0) {
                self.check_fresh(instrument)?;
            }
        }
        Ok(())
    }

    /// Margin of one exposure under a mark-based mode. Instruments without a mark (only
    /// possible for flat, order-free entries, or settled ones) need nothing.
    pub(crate) fn marked_margin(
        &self,
        mode: MarginMode,
        instrument: InstrumentId,
        e: &Exposure,
    ) -> Result<Marked, RejectCode> {
        let inst = &self.instruments[instrument.0 as usize];
        if mode == MarginMode::WorstCase {
            let r = self.margin.requirement(&inst.spec, e)?.0;
            return Ok(Marked {
                initial: r,
                maintenance: r,
                scenario: None,
            });
        }
        let n = self.risk.scenarios as usize + 1;
        let fee = i128::from(e.fee_reserve.0);
        let (Some((mark, risk_array)), Some(index)) = (&inst.mark, self.index_of(inst)) else {
            let flat = e.position.0 == 0 && e.buy_qty.0 == 0 && e.sell_qty.0 == 0;
            if !flat && inst.status != InstrumentStatus::Settled {
                return Err(RejectCode::NoMark);
            }
            let scenario = (mode == MarginMode::Portfolio).then(|| Contribution::zero(n));
            return Ok(Marked {
                initial: 0,
                maintenance: 0,
                scenario,
            });
        };
        let (m, s, mult) = (
            i128::from(mark.0),
            i128::from(index.0),
            i128::from(inst.spec.contract_multiplier.0),
        );
        // Value of q contracts at the mark, rounded toward the system.
        let value = |q: i128| floor_div(q * m, Q);
        if inst.status == InstrumentStatus::Settled {
            // Settled in parts and not yet paid: the position is worth exactly its settlement
            // value (the mark, with no risk) and has no orders, so it needs what it owes and
            // nothing for the index (Standard, like its long options, counts no value it is
            // owed).
            let q = i128::from(e.position.0);
            return Ok(match mode {
                MarginMode::Standard => {
                    let owed = to_amount((-value(q)).max(0))?;
                    Marked {
                        initial: owed + to_amount(fee)?,
                        maintenance: owed,
                        scenario: None,
                    }
                }
                _ => {
                    let mut c = Contribution::zero(n);
                    let worth = to_amount(value(q))?;
                    c.initial.fill(worth);
                    c.maintenance.fill(worth);
                    c.floor_initial = to_amount(fee)?;
                    Marked {
                        initial: 0,
                        maintenance: 0,
                        scenario: Some(c),
                    }
                }
            });
        }
        let option = match inst.spec.name.kind {
            InstrumentKind::Option { strike, right, .. } => Some((i128::from(strike.0), right)),
            InstrumentKind::Perpetual => None,
        };
        // Short-option floor of q contracts (portfolio margin), against the account.
        let floor = |q: i128| -> i128 {
            if option.is_some() && q < 0 {
                ceil_div(
                    -q * s * mult * i128::from(self.risk.pm_short_option_floor_bps),
                    BPS * Q * Q,
                )
            } else {
                0
            }
        };
        match mode {
            MarginMode::Standard => {
                // Net requirement of a position of q contracts: IM(q) - value(q).
                let net = |q: i128, maintenance: bool| -> i128 {
                    match option {
                        Some((k, right)) => {
                            if q >= 0 {
                                return 0;
                            }
                            let otm = match right {
                                OptionRight::Call => (k - s).max(0),
                                OptionRight::Put => (s - k).max(0),
                            };
                            // Rates of the index, rounded up (toward the system): the
                            // maintenance rate per contract in one step, so that it is within
                            // a micro-USDC of the proven rule's (which the validity proof holds
                            // a liquidated account below).
                            let rate = |bps: u32| ceil_div(s * i128::from(bps), BPS);
                            let per_contract = if maintenance {
                                ceil_div(
                                    s * i128::from(STANDARD_SHORT_OPTION_MAINTENANCE_BPS) * mult,
                                    BPS * Q,
                                )
                            } else {
                                let per_unit = (rate(STANDARD_SHORT_OPTION_INITIAL_BPS) - otm)
                                    .max(rate(STANDARD_SHORT_OPTION_MIN_INITIAL_BPS));
                                ceil_div(per_unit * mult, Q)
                            } + 2 * m;
                            ceil_div(-q * per_contract, Q)
                        }
                        None => {
                            let bps = i128::from(if maintenance {
                                self.risk.perp_maintenance_bps
                            } else {
                                self.risk.perp_initial_bps
                            });
                            ceil_div(q.abs() * m * bps, BPS * Q) - value(q)
                        }
                    }
                };
                let initial = endpoints(e)
                    .iter()
                    .map(|&(q, cash)| net(q, false) - cash)
                    .max()
                    .unwrap_or(0)
                    + fee;
                Ok(Marked {
                    initial: to_amount(initial)?,
                    maintenance: to_amount(net(i128::from(e.position.0), true))?,
                    scenario: None,
                })
            }
            MarginMode::Portfolio => {
                let mut c = Contribution::zero(n);
                let q0 = i128::from(e.position.0);
                let mm = i128::from(self.risk.pm_maintenance_bps);
                for sc in 0..n {
                    let ra = if sc + 1 == n {
                        0
                    } else {
                        i128::from(risk_array[sc])
                    };
                    let worst = endpoints(e)
                        .iter()
                        .map(|&(q, cash)| cash + floor_div(q * (m + ra), Q))
                        .min()
                        .unwrap_or(0);
                    c.initial[sc] = to_amount(worst)?;
                    c.maintenance[sc] = to_amount(value(q0) + floor_div(q0 * ra * mm, Q * BPS))?;
                }
                c.floor_initial = to_amount(
                    endpoints(e)
                        .iter()
                        .map(|&(q, _)| floor(q))
                        .max()
                        .unwrap_or(0)
                        + fee,
                )?;
                c.floor_maintenance = to_amount(ceil_div(floor(q0) * mm, BPS))?;
                Ok(Marked {
                    initial: 0,
                    maintenance: 0,
                    scenario: Some(c),
                })
            }
            MarginMode::WorstCase => unreachable!("handled above"),
        }
    }

    /// Worst scenario of summed contributions plus floors: (initial, maintenance).
    pub(crate) fn portfolio_requirement(sums: &PortfolioSums) -> (i64, i64) {
        let worst = |v: &[i64]| v.iter().map(|x| -x).max().unwrap_or(0);
        (
            worst(&sums.initial) + sums.floor_initial,
            worst(&sums.maintenance) + sums.floor_maintenance,
        )
    }

    /// A mark-margined account's maintenance requirement if its position in `instrument`
    /// became `position` (maintenance counts positions only, not orders).
    pub(crate) fn maintenance_with(
        &self,
        account: AccountId,
        instrument: InstrumentId,
        position: optio_types::Qty,
    ) -> Result<i128, RejectCode> {
        let acct = &self.accounts[account.0 as usize];
        let old = self
            .position_index
            .get(&(account.0, instrument.0))
            .map(|p| &self.positions[p as usize]);
        let e = Exposure {
            position,
            ..Exposure::default()
        };
        let new = self.marked_margin(acct.mode, instrument, &e)?;
        match (&acct.portfolio, new.scenario) {
            (Some(sums), Some(c)) => {
                let old = old.and_then(|p| p.scenario.as_ref());
                let mut sums = sums.clone();
                for s in 0..sums.maintenance.len() {
                    sums.maintenance[s] += c.maintenance[s] - old.map_or(0, |o| o.maintenance[s]);
                }
                sums.floor_maintenance +=
                    c.floor_maintenance - old.map_or(0, |o| o.floor_maintenance);
                Ok(i128::from(Self::portfolio_requirement(&sums).1))
            }
            _ => Ok(i128::from(acct.maintenance.0)
                - old.map_or(0, |p| i128::from(p.maintenance.0))
                + i128::from(new.maintenance)),
        }
    }

    /// The account's initial requirement if its exposure in `instrument` became `e`.
    pub(crate) fn requirement_with_marks(
        &self,
        account: AccountId,
        instrument: InstrumentId,
        position: Option<u32>,
        e: &Exposure,
    ) -> Result<i128, RejectCode> {
        self.requirement_with_many_marked(account, &[(instrument, position, *e)])
    }

    fn requirement_with_many_marked(
        &self,
        account: AccountId,
        changes: &[(InstrumentId, Option<u32>, Exposure)],
    ) -> Result<i128, RejectCode> {
        let acct = &self.accounts[account.0 as usize];
        match (&acct.portfolio, acct.mode) {
            (Some(sums), MarginMode::Portfolio) => {
                let mut sums = sums.clone();
                for (instrument, position, e) in changes {
                    let new = self
                        .marked_margin(MarginMode::Portfolio, *instrument, e)?
                        .scenario
                        .expect("portfolio contribution");
                    let old = position.and_then(|p| self.positions[p as usize].scenario.as_ref());
                    for s in 0..sums.initial.len() {
                        sums.initial[s] += new.initial[s] - old.map_or(0, |o| o.initial[s]);
                    }
                    sums.floor_initial += new.floor_initial - old.map_or(0, |o| o.floor_initial);
                }
                Ok(i128::from(Self::portfolio_requirement(&sums).0))
            }
            _ => {
                let mut total = i128::from(acct.requirement.0);
                for (instrument, position, e) in changes {
                    let new = self.marked_margin(acct.mode, *instrument, e)?.initial;
                    total += i128::from(new)
                        - position
                            .map_or(0, |p| i128::from(self.positions[p as usize].requirement.0));
                }
                Ok(total)
            }
        }
    }

    /// Initial requirement with several instruments' exposures replaced (mass quotes).
    pub(crate) fn requirement_with_many(
        &self,
        account: AccountId,
        changes: &[(InstrumentId, Exposure)],
    ) -> Result<i128, RejectCode> {
        let with_slots: Vec<(InstrumentId, Option<u32>, Exposure)> = changes
            .iter()
            .map(|(i, e)| (*i, self.position_index.get(&(account.0, i.0)), *e))
            .collect();
        if self.accounts[account.0 as usize].mode == MarginMode::WorstCase {
            let acct = &self.accounts[account.0 as usize];
            let mut total = i128::from(acct.requirement.0);
            for (instrument, position, e) in &with_slots {
                total += i128::from(
                    self.margin
                        .requirement(&self.instruments[instrument.0 as usize].spec, e)?
                        .0,
                ) - position
                    .map_or(0, |p| i128::from(self.positions[p as usize].requirement.0));
            }
            return Ok(total);
        }
        for (instrument, _) in changes {
            self.check_fresh(*instrument)?;
        }
        self.requirement_with_many_marked(account, &with_slots)
    }

    /// Recomputes one position of a mark-margined account and the account's totals.
    pub(crate) fn refresh_marked(
        &mut self,
        account: AccountId,
        slot: u32,
    ) -> Result<(), RejectCode> {
        let mode = self.accounts[account.0 as usize].mode;
        let (instrument, exposure) = {
            let p = &self.positions[slot as usize];
            (p.instrument, p.exposure)
        };
        let new = self.marked_margin(mode, instrument, &exposure)?;
        let pos = &mut self.positions[slot as usize];
        let acct = &mut self.accounts[account.0 as usize];
        match (mode, acct.portfolio.as_mut(), new.scenario) {
            (MarginMode::Portfolio, Some(sums), Some(c)) => {
                let old = pos
                    .scenario
                    .take()
                    .unwrap_or_else(|| Contribution::zero(c.initial.len()));
                for s in 0..c.initial.len() {
                    sums.initial[s] += c.initial[s] - old.initial[s];
                    sums.maintenance[s] += c.maintenance[s] - old.maintenance[s];
                }
                sums.floor_initial += c.floor_initial - old.floor_initial;
                sums.floor_maintenance += c.floor_maintenance - old.floor_maintenance;
                pos.scenario = Some(c);
                let (initial, maintenance) = Self::portfolio_requirement(sums);
                acct.requirement = Amount(initial);
                acct.maintenance = Amount(maintenance);
            }
            _ => {
                acct.requirement = Amount(acct.requirement.0 - pos.requirement.0 + new.initial);
                acct.maintenance = Amount(acct.maintenance.0 - pos.maintenance.0 + new.maintenance);
                pos.requirement = Amount(new.initial);
                pos.maintenance = Amount(new.maintenance);
            }
        }
        Ok(())
    }

    /// Re-margins every position of an account from scratch under its current mode.
    pub(crate) fn remargin_account(&mut self, account: AccountId) -> Result<(), RejectCode> {
        let n = self.risk.scenarios as usize + 1;
        let acct = &mut self.accounts[account.0 as usize];
        acct.requirement = Amount::ZERO;
        acct.maintenance = Amount::ZERO;
        acct.portfolio = (acct.mode == MarginMode::Portfolio).then(|| Contribution::zero(n));
        let slots: Vec<u32> = acct.positions.values().copied().collect();
        for &slot in &slots {
            let p = &mut self.positions[slot as usize];
            p.requirement = Amount::ZERO;
            p.maintenance = Amount::ZERO;
            p.scenario = None;
        }
        for slot in slots {
            self.refresh_requirement_checked(account, slot)?;
        }
        Ok(())
    }

    pub(crate) fn set_margin_mode(
        &mut self,
        account: AccountId,
        mode: MarginMode,
        events: &mut Vec<Event>,
    ) -> Result<(), RejectCode> {
        let acct = self.account_ref(account)?;
        if self.in_liquidation(account) {
            return Err(RejectCode::AccountInLiquidation);
        }
        let previous = acct.mode;
        if previous == mode {
            return Ok(());
        }
        // Try the new mode on a copy of the account's margin state; keep it only if covered.
        let saved_account = (
            acct.mode,
            acct.requirement,
            acct.maintenance,
            acct.portfolio.clone(),
        );
        let slots: Vec<u32> = acct.positions.values().copied().collect();
        let saved_positions: Vec<_> = slots
            .iter()
            .map(|&s| {
                let p = &self.positions[s as usize];
                (p.requirement, p.maintenance, p.scenario.clone())
            })
            .collect();
        self.accounts[account.0 as usize].mode = mode;
        let outcome = self
            .check_account_fresh(account)
            .and_then(|()| self.remargin_account(account))
            .and_then(|()| {
                let a = &self.accounts[account.0 as usize];
                if a.balance < a.requirement {
                    Err(RejectCode::InsufficientMargin)
                } else {
                    Ok(())
                }
            });
        if let Err(code) = outcome {
            let a = &mut self.accounts[account.0 as usize];
            (a.mode, a.requirement, a.maintenance, a.portfolio) = saved_account;
            for (slot, (r, m, c)) in slots.into_iter().zip(saved_positions) {
                let p = &mut self.positions[slot as usize];
                (p.requirement, p.maintenance, p.scenario) = (r, m, c);
            }
            return Err(code);
        }
        events.push(Event::MarginModeChanged { account, mode });
        Ok(())
    }

    fn account_ref(&self, account: AccountId) -> Result<&crate::ledger::Account, RejectCode> {
        self.accounts
            .get(account.0 as usize)
            .ok_or(RejectCode::UnknownAccount)
    }

    pub(crate) fn oracle_update(
        &mut self,
        u: &OracleUpdate,
        events: &mut Vec<Event>,
    ) -> Result<(), RejectCode> {
        let symbol_ok = !u.underlying.is_empty()
            && u.underlying.len() <= optio_types::oracle::MAX_UNDERLYING_LEN
            && u.underlying
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !symbol_ok
            || !self
                .instruments
                .iter()
                .any(|i| i.spec.name.underlying == u.underlying)
        {
            return Err(RejectCode::OracleBadInstrument);
        }
        if !u.index_price.is_positive() {
            return Err(RejectCode::InvalidMark);
        }
        if u.published_ms > self.time_ms
            || self.time_ms - u.published_ms > self.risk.max_update_delay_ms
        {
            return Err(RejectCode::OracleStale);
        }
        if let Some(o) = self.oracles.get(&u.underlying)
            && (u.published_ms <= o.published_ms
                || o.held.is_some_and(|(_, t)| u.published_ms <= t))
        {
            return Err(RejectCode::OracleOutOfOrder);
        }
        if u.marks.len() > self.instruments.len() {
            return Err(RejectCode::OracleBadInstrument);
        }
        let mut seen: Vec<u32> = Vec::with_capacity(u.marks.len());
        for mark in &u.marks {
            let inst = self
                .instruments
                .get(mark.instrument.0 as usize)
                .ok_or(RejectCode::OracleBadInstrument)?;
            if inst.spec.name.underlying != u.underlying {
                return Err(RejectCode::OracleBadInstrument);
            }
            seen.push(mark.instrument.0);
            if mark.risk_array.len() != self.risk.scenarios as usize {
                return Err(RejectCode::RiskArrayLength);
            }
            if !mark.mark.is_positive() || mark.mark > inst.max_price {
                return Err(RejectCode::InvalidMark);
            }
            // Bound each scenario P&L (the larger of ~2.1e12 micro-USDC and four times the
            // contract's maximum price), so sums of positions times risk arrays cannot overflow.
            let bound = (i64::from(i32::MAX) * 1_000).max(inst.max_price.0.saturating_mul(4));
            if mark.risk_array.iter().any(|a| a.0.abs() > bound) {
                return Err(RejectCode::InvalidMark);
            }
        }
        seen.sort_unstable();
        if seen.windows(2).any(|w| w[0] == w[1]) {
            return Err(RejectCode::OracleBadInstrument);
        }
        let settling = self.check_settlements(u)?;
        // Every instrument of the underlying not settled (nor settled by this update) is marked.
        let unmarked = self.instruments.iter().enumerate().any(|(id, i)| {
            i.spec.name.underlying == u.underlying
                && i.status != InstrumentStatus::Settled
                && seen.binary_search(&(id as u32)).is_err()
                && !settling.iter().any(|(x, _)| x.0 as usize == id)
        });
        if unmarked {
            return Err(RejectCode::OracleMissingMark);
        }
        // Auctions due start before the update's settlements and marks (engine rules 4).
        self.start_due_liquidations(events);
        for (instrument, price) in settling {
            self.take_settlement_price(instrument, price)?;
        }
        // This update's settlements, and those an earlier one's budget left.
        self.settle_due(events);

        // Circuit breaker: a jump beyond the bound is held until confirmed by a later update.
        if let Some(o) = self.oracles.get_mut(&u.underlying) {
            let last = i128::from(o.index_price.0);
            let moved = (i128::from(u.index_price.0) - last).abs() * BPS
                > i128::from(self.risk.circuit_breaker_bps) * last;
            let confirms = o.held.is_some_and(|(p, _)| {
                (i128::from(u.index_price.0) - i128::from(p.0)).abs() * BPS
                    <= i128::from(self.risk.confirm_tolerance_bps) * i128::from(p.0)
            });
            if moved && !confirms {
                o.held = Some((u.index_price, u.published_ms));
                events.push(Event::OracleHeld {
                    underlying: u.underlying.clone(),
                    index_price: u.index_price,
                });
                return Ok(());
            }
        }
        // The auction's clock (`oracle_time_ms`) reads the publication times of the updates that
        // marked something: those a batch commits the marks of, and with them their time (the
        // settlement state's `oracle_ms`). An update that marks nothing (every instrument of its
        // underlying settled, perhaps by it) leaves the time where it was.
        let marks_any = u
            .marks
            .iter()
            .any(|m| self.instruments[m.instrument.0 as usize].status != InstrumentStatus::Settled);
        let oracle = self
            .oracles
            .entry(u.underlying.clone())
            .or_insert_with(|| OracleState {
                index_price: u.index_price,
                published_ms: 0,
                held: None,
            });
        oracle.index_price = u.index_price;
        if marks_any {
            oracle.published_ms = u.published_ms;
        }
        oracle.held = None;
        // A settled instrument keeps its settlement value (this update may have settled it).
        for mark in &u.marks {
            let inst = &mut self.instruments[mark.instrument.0 as usize];
            if inst.status != InstrumentStatus::Settled {
                inst.mark = Some((mark.mark, mark.risk_array.iter().map(|a| a.0).collect()));
            }
        }
        events.push(Event::OracleAccepted {
            underlying: u.underlying.clone(),
            index_price: u.index_price,
        });
        self.remargin_underlying(&u.underlying);
        Ok(())
    }

    /// Re-margins every mark-margined participant of the underlying's instruments.
    fn remargin_underlying(&mut self, underlying: &str) {
        let mut todo: Vec<(AccountId, u32)> = Vec::new();
        for inst in &self.instruments {
            if inst.spec.name.underlying == underlying {
                todo.extend(
                    inst.participants
                        .iter()
                        .filter(|(a, _)| self.accounts[a.0 as usize].mode != MarginMode::WorstCase),
                );
            }
        }
        for (account, slot) in todo {
            self.refresh_marked(account, slot)
                .expect("validated marks give finite margins");
            self.touch_account(account);
        }
    }

    /// The settlement prices of update `u` to apply, checked before anything changes: each
    /// names an instrument of the update's underlying, once, with a positive price; an
    /// instrument past its expiry settles when the update was published no earlier than the
    /// expiry (the price averages the index before it), one already settled (or taken) is passed over
    /// (the oracle may repeat a price until it sees it applied), any other refuses the update.
    fn check_settlements(
        &self,
        u: &OracleUpdate,
    ) -> Result<Vec<(InstrumentId, Price)>, RejectCode> {
        let mut settling = Vec::with_capacity(u.settlements.len());
        let mut seen: Vec<u32> = Vec::with_capacity(u.settlements.len());
        for p in &u.settlements {
            let inst = self
                .instruments
                .get(p.instrument.0 as usize)
                .ok_or(RejectCode::OracleBadInstrument)?;
            if inst.spec.name.underlying != u.underlying || seen.contains(&p.instrument.0) {
                return Err(RejectCode::OracleBadInstrument);
            }
            seen.push(p.instrument.0);
            if !p.price.is_positive() {
                return Err(RejectCode::InvalidSettlementPrice);
            }
            match inst.status {
                // Taken already, waiting for the settlement budget: passed over too.
                InstrumentStatus::Expired if inst.settlement_price.is_some() => {}
                InstrumentStatus::Expired
                    if inst
                        .spec
                        .expiry_ms()
                        .is_some_and(|expiry| u.published_ms >= expiry) =>
                {
                    settling.push((p.instrument, p.price))
                }
                InstrumentStatus::Expired => return Err(RejectCode::InvalidSettlementPrice),
                InstrumentStatus::Settled => {}
                _ => return Err(RejectCode::InvalidStatusTransition),
            }
        }
        Ok(settling)
    }
}

impl<M: MarginModel> Engine<M> {
    /// What the account may withdraw or transfer out under the stress rule the validity circuit
    /// proves (docs/risk.md, "Withdrawals"): after the money leaves, its collateral plus the
    /// value of its positions stays non-negative at the marks and in every scenario of their
    /// risk arrays, `balance + sum_i q_i * (mark_i + RA_i[s]) / 1e8 >= 0` for each `s` and for
    /// the no-move scenario, whatever its margin mode. An instrument without a mark counts
    /// nothing. Rounded down; negative when the account is already short of it.
    pub(crate) fn stress_free(&self, account: AccountId) -> i128 {
        let acct = &self.accounts[account.0 as usize];
        let n = self.risk.scenarios as usize;
        let mut totals = vec![i128::from(acct.balance.0) * Q; n + 1];
        for (&instrument, &slot) in &acct.positions {
            let q = i128::from(self.positions[slot as usize].exposure.position.0);
            let Some((mark, risk_array)) = &self.instruments[instrument.0 as usize].mark else {
                continue;
            };
            let m = i128::from(mark.0);
            for (total, ra) in totals.iter_mut().zip(risk_array.iter().chain([&0])) {
                *total += q * (m + i128::from(*ra));
            }
        }
        floor_div(totals.into_iter().min().unwrap_or(0), Q)
    }

    /// What `account`'s balance holds above what its shorts can owe at worst, exactly, in 1e-8
    /// micro-USDC (`balance * 1e8 - liability`, orders aside), whatever its margin mode; marks
    /// play no part. At or above zero the account can pay all it may ever owe and is never
    /// liquidated.
    pub(crate) fn short_cover(&self, account: AccountId) -> i128 {
        let balance = self.accounts[account.0 as usize].balance.0;
        (i128::from(balance) * Q).saturating_sub(self.liability(account))
    }

    /// What `account`'s shorts can owe at worst, in 1e-8 micro-USDC: the sum of
    /// `optio_types::short_liability` over its positions (the settlement state's account leaf
    /// holds the same number).
    pub(crate) fn liability(&self, account: AccountId) -> i128 {
        let acct = &self.accounts[account.0 as usize];
        acct.positions
            .iter()
            .fold(0i128, |sum, (&instrument, &slot)| {
                let position = self.positions[slot as usize].exposure.position;
                let spec = &self.instruments[instrument.0 as usize].spec;
                // (A spec whose payoff overflows was refused at listing.)
                sum.saturating_add(
                    optio_types::short_liability(spec, position).unwrap_or(i128::MAX / 4),
                )
            })
    }

    /// Open (nonzero) positions of `account`.
    pub(crate) fn open_positions(&self, account: AccountId) -> u32 {
        self.accounts[account.0 as usize]
            .positions
            .values()
            .filter(|&&slot| self.positions[slot as usize].exposure.position.0 != 0)
            .count() as u32
    }

    /// Refuses money out of an account holding more open positions than a validity proof can
    /// price (`EngineLimits::max_positions_to_withdraw`).
    pub(crate) fn check_positions_to_withdraw(&self, account: AccountId) -> Result<(), RejectCode> {
        if self.open_positions(account) > self.limits.max_positions_to_withdraw {
            return Err(RejectCode::TooManyPositionsToWithdraw);
        }
        Ok(())
    }
}
