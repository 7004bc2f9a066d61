//! Liquidation: below maintenance an account that is not fully collateralized (its collateral
//! short of the worst-case payoff of its shorts) has its orders cancelled and its positions sold
//! by a Dutch auction to liquidators; what the auction cannot place is deleveraged against the
//! most profitable opposite positions at the mark (their orders in that instrument cancelled); a deficit left on a bankrupt account is
//! covered by the pre-committed waterfall.
//!
//! Waterfall (in order): the account's own collateral (positions transferred at the auction
//! price, its fee capped at its remaining equity), the insurance fund, the fee pool, then a loss
//! shared pro rata by every other account's free collateral (balance above its initial
//! requirement). Anything still missing stays as the account's negative balance and is reported
//! as unresolved bad debt (conservation still holds exactly).

use optio_types::{
    AccountId, Address, Amount, DoneReason, Event, FillBudget, InstrumentId, InstrumentStatus,
    MarginMode, MarginModel, Price, QTY_SCALE, Qty, RejectCode,
};

use crate::engine::{Engine, FillCount};
use crate::risk::{ceil_div, floor_div};

const BPS: i128 = 10_000;
const Q: i128 = QTY_SCALE as i128;

impl<M: MarginModel> Engine<M> {
    /// Value of the account's positions at their marks (instruments without a mark count 0).
    pub(crate) fn position_value(&self, account: AccountId) -> i128 {
        self.accounts[account.0 as usize]
            .positions
            .iter()
            .map(|(instrument, slot)| {
                let q = i128::from(self.positions[*slot as usize].exposure.position.0);
                self.instruments[instrument.0 as usize]
                    .mark
                    .as_ref()
                    .map_or(0, |(m, _)| (q * i128::from(m.0)).div_euclid(Q))
            })
            .sum()
    }

    /// The account's equity at the marks (its balance and each position at its mark, rounded
    /// down, an instrument without a mark counting 0) were its position in `instrument` to
    /// change by `delta` contracts and its balance by `cash`. Rounded down, it is never above
    /// the exact equity a validity proof checks (`SettlementState::equity`).
    pub(crate) fn equity_after(
        &self,
        account: AccountId,
        instrument: InstrumentId,
        delta: i64,
        cash: i128,
    ) -> i128 {
        let value = |q: i128| {
            self.instruments[instrument.0 as usize]
                .mark
                .as_ref()
                .map_or(0, |(m, _)| (q * i128::from(m.0)).div_euclid(Q))
        };
        let held = i128::from(self.position_qty(account, instrument));
        i128::from(self.accounts[account.0 as usize].balance.0)
            + cash
            + self.position_value(account)
            - value(held)
            + value(held + i128::from(delta))
    }

    /// Whether `account` may be liquidated: below maintenance, and able to default (an account
    /// whose balance covers the worst-case payoff of every short it holds, `short_cover`,
    /// whatever the marks, can pay all it may ever owe, so it is never liquidated). A
    /// liquidation step or deleveraging transfer is made only while this holds before it,
    /// which a validity proof checks of each (`SettlementState::below_maintenance`, with this
    /// engine's rounding).
    pub(crate) fn below_maintenance(&self, account: AccountId) -> bool {
        let acct = &self.accounts[account.0 as usize];
        acct.mode != MarginMode::WorstCase
            && acct.balance < acct.maintenance
            && self.short_cover(account) < 0
    }

    /// Whether `account`'s auction is due (`liquidations_due` holds exactly these between
    /// inputs): it may be liquidated and is not being liquidated yet.
    pub(crate) fn auction_due(&self, account: AccountId) -> bool {
        self.accounts[account.0 as usize]
            .liquidating_since
            .is_none()
            && self.below_maintenance(account)
    }

    /// Whether `account`'s deficit's cover is due (`covers_due` holds exactly these between
    /// inputs): it is liquidating, holds nothing and owes more than it holds.
    pub(crate) fn cover_due(&self, account: AccountId) -> bool {
        let acct = &self.accounts[account.0 as usize];
        acct.liquidating_since.is_some() && acct.balance.0 < 0 && self.flat(account)
    }

    /// Whether `account`'s auction is due to end (`ends_due` holds exactly these between
    /// inputs): it is liquidating and no longer below maintenance.
    pub(crate) fn end_due(&self, account: AccountId) -> bool {
        self.accounts[account.0 as usize]
            .liquidating_since
            .is_some()
            && !self.below_maintenance(account)
    }

    /// Marks the auctions of touched mark-margined accounts that fell below maintenance due
    /// (they start at the next accepted oracle update: `start_due_liquidations`), cancelling
    /// their orders; drops those cured before their start, and marks the ends of the
    /// liquidations of those cured since due (`ends_due`: they end at that update too).
    pub(crate) fn liquidation_checks(&mut self, oracle_update: bool, events: &mut Vec<Event>) {
        // Deficits due since an earlier input's settlements, once this one settled nothing
        // (with a bounded fill budget, only in an accepted oracle update: `covers_wait`).
        if !self.settled_now {
            if !self.covers_wait() {
                for account in std::mem::take(&mut self.covers_due) {
                    self.finish_if_flat(account, events);
                }
            } else if oracle_update {
                self.cover_due_within_budget(events);
            }
        }
        // Fully collateralized accounts are never liquidated: skip the common case cheaply.
        if !self
            .touched_accounts()
            .iter()
            .any(|a| self.accounts[a.0 as usize].mode != MarginMode::WorstCase)
        {
            return;
        }
        let mut accounts: Vec<AccountId> = self.touched_accounts().to_vec();
        accounts.sort_unstable();
        accounts.dedup();
        for account in accounts {
            let acct = &self.accounts[account.0 as usize];
            if acct.mode == MarginMode::WorstCase {
                continue;
            }
            let below = self.below_maintenance(account);
            match (acct.liquidating_since, below) {
                // Its auction starts at the next accepted oracle update (`liquidations_due`);
                // its orders go now.
                (None, true) => {
                    if self.liquidations_due.insert(account) {
                        self.remove_orders_where(
                            account,
                            |_| true,
                            DoneReason::Liquidation,
                            events,
                        );
                    }
                }
                (None, false) => {
                    self.liquidations_due.remove(&account);
                }
                // Cured (or flat and solvent): its auction ends at the next accepted oracle
                // update (`ends_due`); no liquidator may bid meanwhile.
                (Some(_), false) => {
                    self.ends_due.insert(account);
                    self.covers_due.remove(&account);
                }
                // Below again before its end: the auction goes on from its start.
                (Some(_), true) => {
                    self.ends_due.remove(&account);
                }
            }
        }
    }

    /// Starts the auctions due (`liquidations_due`) of the accounts still below maintenance,
    /// at the beginning of an accepted oracle update: before its settlements and marks, at the
    /// auction clock then (the previous update's time), so that the marks and the time a
    /// validity proof checks the start against, those committed before the update's ops, are
    /// the ones the engine read (engine rules 4). With a bounded fill budget, as many as one
    /// proof holds beside nothing else (a start takes an op slot and its account, and, when the
    /// proof prices its positions, a margin slot and their registers); the rest wait for the
    /// next update. An account with nothing to auction goes to its deficit's cover.
    ///
    /// The auctions due to end (`ends_due`) end first, within the same budget (an end takes
    /// what a start does: the proof checks the account is not below maintenance at the marks
    /// committed before it, engine rules 5; since rules 6 an account covering its shorts' worst
    /// case takes only an op slot and itself, `admit_end`); an account below again goes on
    /// with its auction.
    pub(crate) fn start_due_liquidations(&mut self, events: &mut Vec<Event>) {
        let bounded = self.limits.fill_budget != FillBudget::UNBOUNDED;
        let mut count = FillCount::default();
        for account in std::mem::take(&mut self.ends_due) {
            if self.below_maintenance(account) {
                continue;
            }
            if bounded && !self.admit_end(&mut count, account) {
                self.ends_due.insert(account);
                continue;
            }
            self.end_liquidation(account, events);
        }
        let since = self.oracle_time_ms();
        for account in std::mem::take(&mut self.liquidations_due) {
            if !self.below_maintenance(account) {
                continue;
            }
            if bounded && !self.admit_start(&mut count, account) {
                self.liquidations_due.insert(account);
                continue;
            }
            self.accounts[account.0 as usize].liquidating_since = Some(since);
            events.push(Event::LiquidationStarted { account });
            self.touch_account(account);
            self.finish_if_flat(account, events);
        }
        self.starts_now = count;
    }

    /// The auction clock: when the latest accepted oracle update that marked an instrument was
    /// published (the oracle's signed time, over every underlying; 0 before any: the time the
    /// settlement state commits with the marks, `OracleState::published_ms`). An auction starts at it and
    /// its discount grows with it, so neither moves with the inputs' times, which are the
    /// operator's word: the schedule a validity proof can hold it to reads only times the
    /// oracle signed (docs/settlement.md, "The auction's schedule"). While the oracle is silent
    /// the discount stays where it is, and no liquidation needs it then (marks go stale).
    pub fn oracle_time_ms(&self) -> u64 {
        self.oracles
            .values()
            .map(|o| o.published_ms)
            .max()
            .unwrap_or(0)
    }

    /// Current auction price for the liquidated account's position of sign `long` in
    /// `instrument`, and the per-contract underlying notional the discount is measured on.
    fn auction_price(
        &self,
        since: u64,
        instrument: InstrumentId,
        long: bool,
    ) -> Result<(Price, i128), RejectCode> {
        let inst = &self.instruments[instrument.0 as usize];
        let (mark, risk) = inst.mark.as_ref().ok_or(RejectCode::NoMark)?;
        let index = self.index_of(inst).ok_or(RejectCode::NoMark)?;
        // The index clamped to the cap, as settlement clamps it; the validity circuit bounds the
        // fee and the discount by the same value at the index committed with the mark.
        let reference = optio_types::liquidation_reference(&inst.spec, index);
        let elapsed = self.oracle_time_ms().saturating_sub(since);
        let price = Self::schedule_price(
            &self.risk,
            elapsed,
            (*mark, risk),
            reference,
            i128::from(inst.spec.tick_size.0),
            i128::from(inst.max_price.0),
            long,
        );
        Ok((price, reference))
    }

    /// The auction's price `elapsed_ms` into it (by the oracle's clock) for a position of sign
    /// `long` at `mark` (with its risk array): the discount grows from `liquidation_start_bps`
    /// to `liquidation_max_bps` of `reference` over `liquidation_duration_ms`, exactly (no
    /// rounding of the rate), rounded down to a micro-USDC; the liquidator buys a long below the
    /// mark and takes a short above it, to whole ticks, rounded toward the liquidated account
    /// (a long up, a short down, under `max`), then held to the stress range and the deepest
    /// discount, which only move it toward the account. So every price stays within the proven
    /// schedule (`optio_types::within_liquidation_schedule`) of a configuration that
    /// `RiskConfig::unprovable` accepts (engine rules 3; rules 2 rounded the discount and the
    /// tick against the account, up to a tick past the schedule).
    fn schedule_price(
        r: &optio_types::RiskConfig,
        elapsed_ms: u64,
        (mark, risk): (Price, &[i64]),
        reference: i128,
        tick: i128,
        max: i128,
        long: bool,
    ) -> Price {
        let duration = i128::from(r.liquidation_duration_ms.max(1));
        let run = i128::from(elapsed_ms.min(r.liquidation_duration_ms));
        let (start, deepest) = (
            i128::from(r.liquidation_start_bps),
            i128::from(r.liquidation_max_bps),
        );
        let discount =
            (reference * (start * duration + (deepest - start) * run)).div_euclid(BPS * duration);
        let price = if long {
            ceil_div((i128::from(mark.0) - discount).max(0), tick) * tick
        } else {
            (floor_div(i128::from(mark.0) + discount, tick) * tick).min(max)
        };
        let price = Self::within_stress(mark, risk, tick, long, price);
        Self::within_discount(mark, reference, tick, long, price)
    }

    /// `price` held, in whole ticks, to `MAX_LIQUIDATION_DISCOUNT_BPS` of `reference` from the
    /// mark on the liquidated account's side (`optio_types::within_liquidation_discount`, which
    /// the validity circuit proves of every liquidation): the auction's discount is configured
    /// no deeper, so this binds only where rounding to a tick would pass the bound.
    fn within_discount(
        mark: Price,
        reference: i128,
        tick: i128,
        long: bool,
        price: Price,
    ) -> Price {
        let most = reference * i128::from(optio_types::MAX_LIQUIDATION_DISCOUNT_BPS);
        let (mark, p) = (i128::from(mark.0), i128::from(price.0));
        let price = if long {
            // The least whole tick t with 1e4 * (t - mark) + most >= 0.
            p.max(ceil_div(BPS * mark - most, BPS * tick) * tick)
        } else {
            p.min(floor_div(BPS * mark + most, BPS * tick) * tick)
        };
        Price(price as i64)
    }

    /// `price` held to the instrument's stress range on the liquidated account's side, in whole
    /// ticks: a long is sold at no less than the range's low end, a short bought back at no more
    /// than its high end (`optio_types::stress_range`). The validity circuit proves that of every
    /// liquidation, so a discount deeper than the worst scenario of the committed risk array (an
    /// option's value cannot fall that far) stops at the scenario.
    fn within_stress(mark: Price, risk: &[i64], tick: i128, long: bool, price: i128) -> Price {
        let (low, high) = optio_types::stress_range(mark, risk.iter().copied());
        let price = if long {
            price.max(ceil_div(low, tick) * tick)
        } else {
            price.min(floor_div(high, tick) * tick)
        };
        Price(price as i64)
    }

    /// Moves `qty` of `account`'s position (a long when `long`) to `counterparty` for `notional`
    /// the other way (a liquidation's or deleveraging's at a whole tick, exact; a forced
    /// close's at the mark, rounded).
    fn move_position(
        &mut self,
        account: AccountId,
        counterparty: AccountId,
        instrument: InstrumentId,
        long: bool,
        qty: Qty,
        notional: Amount,
    ) {
        let from = self.position_entry(account, instrument);
        let to = self.position_entry(counterparty, instrument);
        let sign = if long { 1 } else { -1 };
        // A long is sold to the counterparty; a short is bought back from it.
        self.credit(account, Amount(sign * notional.0));
        self.credit(counterparty, Amount(-sign * notional.0));
        self.position_fill(account, from, -sign * qty.0, notional);
        self.position_fill(counterparty, to, sign * qty.0, notional);
        self.refresh_requirement(account, from);
        self.refresh_requirement(counterparty, to);
        self.touch_account(counterparty);
        self.touch_instrument(instrument);
    }

    pub(crate) fn liquidate(
        &mut self,
        liquidator: AccountId,
        account: AccountId,
        instrument: InstrumentId,
        qty: Qty,
        events: &mut Vec<Event>,
    ) -> Result<(), RejectCode> {
        let taker = self.account(liquidator)?;
        let target = self.account(account)?;
        // A settled position (one a settlement's later part pays) is worth its value: not
        // auctioned.
        if self.instrument(instrument)?.status == InstrumentStatus::Settled {
            return Err(RejectCode::InstrumentNotActive);
        }
        let since = target.liquidating_since.ok_or(RejectCode::NotLiquidating)?;
        if !self.below_maintenance(account) {
            return Err(RejectCode::NotLiquidating);
        }
        if taker.owner == target.owner {
            return Err(RejectCode::SelfLiquidation);
        }
        if self.in_liquidation(liquidator) {
            return Err(RejectCode::AccountInLiquidation);
        }
        let slot = self
            .position_index
            .get(&(account.0, instrument.0))
            .ok_or(RejectCode::NotLiquidating)?;
        let held = self.positions[slot as usize].exposure.position.0;
        if held == 0 {
            return Err(RejectCode::NotLiquidating);
        }
        self.check_qty(&self.instruments[instrument.0 as usize], qty)?;
        let bankrupt = i128::from(self.accounts[account.0 as usize].balance.0)
            + self.position_value(account)
            <= 0;
        let step =
            (i128::from(held.abs()) * i128::from(self.risk.liquidation_step_bps) / BPS) as i64;
        let step = step - step % self.instruments[instrument.0 as usize].spec.amount_step.0;
        let allowed = if bankrupt {
            held.abs()
        } else {
            step.max(self.instruments[instrument.0 as usize].spec.min_size.0)
                .min(held.abs())
        };
        if qty.0 > allowed {
            return Err(RejectCode::LiquidationTooLarge);
        }
        self.check_fresh(instrument)?;
        let long = held > 0;
        let (price, reference) = self.auction_price(since, instrument, long)?;
        // The liquidator must meet its own initial margin with the position.
        let existing = self.position_index.get(&(liquidator.0, instrument.0));
        let mut e = existing
            .map(|p| self.positions[p as usize].exposure)
            .unwrap_or_default();
        let delta = if long { qty.0 } else { -qty.0 };
        e.position = Qty(e.position.0 + delta);
        let notional = i128::from(price.notional(qty)?.0);
        let cash = if long { -notional } else { notional };
        let balance_after = i128::from(self.accounts[liquidator.0 as usize].balance.0) + cash;
        if balance_after < self.requirement_with(liquidator, instrument, existing, &e)? {
            return Err(RejectCode::InsufficientMargin);
        }
        // And ends solvent at the marks, as a validity proof checks of every account that takes
        // a liquidated position.
        if self.equity_after(liquidator, instrument, delta, cash) < 0 {
            return Err(RejectCode::InsufficientMargin);
        }

        // Validated.
        self.touch_account(account);
        let value = price.notional(qty).expect("whole ticks and steps");
        self.move_position(account, liquidator, instrument, long, qty, value);
        let nominal_fee =
            (i128::from(qty.0) * reference * i128::from(self.risk.liquidation_fee_bps) + BPS * Q
                - 1)
                / (BPS * Q);
        let equity =
            i128::from(self.accounts[account.0 as usize].balance.0) + self.position_value(account);
        let fee = Amount(nominal_fee.min(equity.max(0)) as i64);
        if fee.0 > 0 {
            self.credit(account, Amount(-fee.0));
            self.totals.insurance = Amount(self.totals.insurance.0 + fee.0);
            let from = self.position_entry(account, instrument);
            self.refresh_requirement(account, from);
        }
        events.push(Event::LiquidationTransfer {
            account,
            counterparty: liquidator,
            instrument,
            qty: Qty(if long { -qty.0 } else { qty.0 }),
            price,
            fee,
            deleverage: false,
        });
        self.finish_if_flat(account, events);
        Ok(())
    }

    pub(crate) fn deleverage(
        &mut self,
        account: AccountId,
        instrument: InstrumentId,
        events: &mut Vec<Event>,
    ) -> Result<(), RejectCode> {
        let since = self
            .account(account)?
            .liquidating_since
            .ok_or(RejectCode::NotLiquidating)?;
        if self.instrument(instrument)?.status == InstrumentStatus::Settled {
            return Err(RejectCode::InstrumentNotActive);
        }
        let slot = self
            .position_index
            .get(&(account.0, instrument.0))
            .ok_or(RejectCode::NotLiquidating)?;
        let held = self.positions[slot as usize].exposure.position.0;
        if held == 0 || !self.below_maintenance(account) {
            return Err(RejectCode::NotLiquidating);
        }
        if self.oracle_time_ms() < since.saturating_add(self.risk.liquidation_duration_ms) {
            return Err(RejectCode::AuctionNotOver);
        }
        self.check_fresh(instrument)?;
        let inst = &self.instruments[instrument.0 as usize];
        let (mark, risk) = inst.mark.as_ref().ok_or(RejectCode::NoMark)?;
        let tick = inst.spec.tick_size.0;
        let long = held > 0;
        let price = Self::within_stress(
            *mark,
            risk,
            i128::from(tick),
            long,
            i128::from(mark.0 - mark.0 % tick),
        );
        // At the mark rounded to a tick: within the proven discount unless a tick is wider.
        let index = self.index_of(inst).unwrap_or(Price::ZERO);
        let reference = optio_types::liquidation_reference(&inst.spec, index);
        let price = Self::within_discount(*mark, reference, i128::from(tick), long, price);
        // Opposite holders, most profitable first (unrealized P&L at the mark), then by id.
        let mut ranked: Vec<(i128, AccountId, i64)> = inst
            .holders
            .iter()
            .filter(|a| **a != account)
            .filter_map(|a| {
                let p = &self.positions[self.position_index.get(&(a.0, instrument.0))? as usize];
                let q = p.exposure.position.0;
                ((q > 0) != (held > 0)).then(|| {
                    (
                        (i128::from(q) * i128::from(mark.0)).div_euclid(Q) - i128::from(p.cost.0),
                        *a,
                        q,
                    )
                })
            })
            .collect();
        ranked.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
        self.touch_account(account);
        let mut left = held.abs();
        // As an order's fills, one input's transfers stay within what one proof holds: the
        // rest waits for the next `Deleverage`.
        let bounded = self.limits.fill_budget != FillBudget::UNBOUNDED;
        let mut count = FillCount::default();
        for (_, counterparty, q) in ranked {
            // Buying back a short at no more than its worst-case payoff, or selling a long, never
            // lowers what the account holds above its shorts' worst case: once it covers them,
            // the account can no longer default, and the rest of its position stays.
            // And once the account is back at its maintenance, the liquidation is over: a
            // validity proof checks that every liquidation's account is below it.
            if left == 0 || !self.below_maintenance(account) {
                break;
            }
            let take = left.min(q.abs());
            // A holder the transfer would leave with negative equity at the marks is passed
            // over: a validity proof checks every account that takes a liquidated position
            // ends its batch solvent. (Closing at the mark moves equity by less than a tick a
            // contract, so only a holder already at the edge is passed over.)
            let sign = if long { 1 } else { -1 };
            let notional = i128::from(price.notional(Qty(take)).expect("whole ticks and steps").0);
            if self.equity_after(
                counterparty,
                instrument,
                sign * take,
                -i128::from(sign) * notional,
            ) < 0
            {
                continue;
            }
            let accounts = [(account, false), (counterparty, true)];
            if bounded && !self.admit_fill(&mut count, accounts, instrument, false) {
                break;
            }
            // The counterparty's orders in the instrument go first: orders can rest on the
            // position being closed (a long's asks are covered by it), and without them its
            // requirement only falls as the position shrinks at the mark.
            self.remove_orders_where(
                counterparty,
                |o| o.instrument == instrument,
                DoneReason::Deleveraged,
                events,
            );
            let value = price.notional(Qty(take)).expect("whole ticks and steps");
            self.move_position(account, counterparty, instrument, long, Qty(take), value);
            events.push(Event::LiquidationTransfer {
                account,
                counterparty,
                instrument,
                qty: Qty(if long { -take } else { take }),
                price,
                fee: Amount::ZERO,
                deleverage: true,
            });
            left -= take;
        }
        self.finish_if_flat(account, events);
        Ok(())
    }

    /// Serves an L1 forced close (`Command::L1Close`). The rule a validity proof holds: when
    /// `owner` owns `account` and the instrument is active and marked, the whole position moves
    /// to the backstop at the instrument's mark, its value rounded against the account (a buyer
    /// pays the ceiling, a seller gets the floor), no fee; otherwise nothing moves. A close at
    /// the mark leaves both equities at the marks unchanged up to that rounding, so no margin
    /// check applies to the account; the backstop must be margined and stay solvent at the
    /// marks, as any account that takes a position.
    pub(crate) fn l1_close(
        &mut self,
        priority: u64,
        owner: Address,
        account: AccountId,
        instrument: InstrumentId,
        counterparty: AccountId,
        events: &mut Vec<Event>,
    ) -> Result<(), RejectCode> {
        self.check_priority(priority)?;
        if self.account(counterparty)?.mode == MarginMode::WorstCase {
            return Err(RejectCode::BackstopUnfit);
        }
        // L1 refuses a close of the backstop itself.
        if account == counterparty {
            return Err(RejectCode::SameAccount);
        }
        let owned = self.account(account).is_ok_and(|a| a.owner == owner);
        // Active and marked: an instrument never marked has no price to close at.
        let mark = self
            .instrument(instrument)
            .ok()
            .filter(|i| i.status == InstrumentStatus::Active)
            .and_then(|i| i.mark.as_ref().map(|(m, _)| *m));
        let (held, price) = match mark {
            Some(m) if owned => match self.position_qty(account, instrument) {
                0 => (0, Price(0)),
                q => (q, m),
            },
            _ => (0, Price(0)),
        };
        let value = i128::from(held.abs()) * i128::from(price.0);
        // A long sold gets the floor; a short bought back pays the ceiling.
        let notional = if held > 0 {
            floor_div(value, Q)
        } else {
            ceil_div(value, Q)
        };
        let notional = Amount(i64::try_from(notional).map_err(|_| RejectCode::Overflow)?);
        let long = held > 0;
        let sign: i64 = if long { 1 } else { -1 };
        // The backstop takes part in every close (a validity proof counts it as an account that
        // filled): it must end solvent at the marks.
        let equity = if held == 0 {
            i128::from(self.accounts[counterparty.0 as usize].balance.0)
                + self.position_value(counterparty)
        } else {
            self.equity_after(
                counterparty,
                instrument,
                held,
                -i128::from(sign * notional.0),
            )
        };
        if equity < 0 {
            return Err(RejectCode::BackstopUnfit);
        }

        // Validated.
        if held != 0 {
            for a in [account, counterparty] {
                self.remove_orders_where(
                    a,
                    |o| o.instrument == instrument,
                    DoneReason::Cancelled,
                    events,
                );
            }
            self.touch_account(account);
            self.move_position(
                account,
                counterparty,
                instrument,
                long,
                Qty(held.abs()),
                notional,
            );
        }
        self.totals.priority_served += 1;
        events.push(Event::CloseServed {
            priority,
            account,
            counterparty,
            instrument,
            qty: Qty(-held),
            price,
            cash: Amount(sign * notional.0),
        });
        if held != 0
            && self.accounts[account.0 as usize]
                .liquidating_since
                .is_some()
        {
            self.finish_if_flat(account, events);
        }
        Ok(())
    }

    /// Once a liquidated account holds nothing, covers its deficit (with a bounded fill budget,
    /// a deficit's cover is due instead: `covers_wait`); what nothing could cover stays due.
    /// Its liquidation ends once it is solvent, at the next accepted oracle update
    /// (`ends_due`).
    pub(crate) fn finish_if_flat(&mut self, account: AccountId, events: &mut Vec<Event>) {
        if !self.flat(account) {
            return;
        }
        let deficit = -i128::from(self.accounts[account.0 as usize].balance.0);
        if deficit <= 0 {
            return;
        }
        if self.covers_wait() || !self.can_cover(account) {
            self.covers_due.insert(account);
            return;
        }
        let (_, left) = self.cover_deficit(account, deficit, usize::MAX, events);
        if left > 0 {
            self.covers_due.insert(account);
        }
    }

    /// Whether anything could cover part of `account`'s deficit: insurance, the fee pool, or
    /// another account's free collateral (a deficit nothing covers stays due, and is tried
    /// again when something could: no empty cover is posted).
    fn can_cover(&self, account: AccountId) -> bool {
        self.totals.insurance.0 > 0
            || self.totals.fee_pool.0 > 0
            || self
                .accounts
                .iter()
                .enumerate()
                .any(|(i, a)| i != account.0 as usize && a.sharable() > 0)
    }

    /// Whether deficit covers wait for an oracle update. A cover and each of its loss shares
    /// take an op slot and an account register of the batch, and a loss is shared by every
    /// account with free collateral: in the input that left the deficit (a sweep or a
    /// deleveraging already within the fill budget) they could make a batch no proof holds.
    /// With a bounded fill budget a cover comes at the end of the next accepted oracle update
    /// that settles nothing (its marks take no op slot nor account), shared by as many accounts
    /// as the budget holds, the most free collateral first; what they cannot carry waits for
    /// the next update.
    fn covers_wait(&self) -> bool {
        self.limits.fill_budget != FillBudget::UNBOUNDED
    }

    /// The covers due, in account order, within the fill budget beside this update's ends and
    /// starts: a cover takes one op slot and one account, each of its loss shares one more op
    /// slot and account. A cover is tried only with room for at least one share and something
    /// to cover with, so each one moves money; what is left uncovered stays due. Since engine
    /// rules 5 an account left in deficit stays liquidating (before, its liquidation ended and
    /// started again at each update). Since rules 7 a cover takes no margin slot: its account
    /// held nothing when the update began (a cover waits for the update after the one that
    /// left the deficit), so a batch that begins with the update proves it flat from its leaf's
    /// count, and a batcher that cuts by the prover's plan begins one there when the batch
    /// before has no flat slot left for it (rules 4 to 6 counted one a cover, as a proof of
    /// circuit version 2 needed).
    fn cover_due_within_budget(&mut self, events: &mut Vec<Event>) {
        let budget = self.limits.fill_budget;
        let (fills, accounts, _) = self.starts_now.used();
        let mut room = budget
            .fills
            .saturating_sub(fills)
            .min(budget.accounts.saturating_sub(accounts)) as usize;
        for account in std::mem::take(&mut self.covers_due) {
            let deficit = -i128::from(self.accounts[account.0 as usize].balance.0);
            if deficit <= 0 {
                continue;
            }
            if room < 2 || !self.can_cover(account) {
                self.covers_due.insert(account);
                continue;
            }
            let (shares, left) = self.cover_deficit(account, deficit, room - 1, events);
            room -= 1 + shares;
            if left > 0 {
                self.covers_due.insert(account);
            }
        }
    }

    /// Ends `account`'s liquidation (cured, or flat and solvent), at the beginning of an
    /// accepted oracle update (`start_due_liquidations`).
    fn end_liquidation(&mut self, account: AccountId, events: &mut Vec<Event>) {
        self.accounts[account.0 as usize].liquidating_since = None;
        self.touch_account(account);
        events.push(Event::LiquidationEnded { account });
    }

    /// Covers what it can of `account`'s deficit: insurance, the fee pool, then shares of at
    /// most `sharers` accounts (the most free collateral first). Returns the shares charged and
    /// the deficit left.
    fn cover_deficit(
        &mut self,
        account: AccountId,
        deficit: i128,
        sharers: usize,
        events: &mut Vec<Event>,
    ) -> (usize, i128) {
        let mut left = deficit;
        let insurance = left.min(i128::from(self.totals.insurance.0));
        self.totals.insurance = Amount(self.totals.insurance.0 - insurance as i64);
        left -= insurance;
        let fee_pool = left.min(i128::from(self.totals.fee_pool.0));
        self.totals.fee_pool = Amount(self.totals.fee_pool.0 - fee_pool as i64);
        left -= fee_pool;
        self.credit(account, Amount((insurance + fee_pool) as i64));
        // Shared pro rata by free collateral, exactly: floor shares, then one unit each in id
        // order until the remainder is placed.
        let mut free: Vec<(AccountId, i128)> = self
            .accounts
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != account.0 as usize)
            .map(|(i, a)| (AccountId(i as u32), a.sharable()))
            .filter(|(_, f)| *f > 0)
            .collect();
        // Past `sharers`, the accounts with the most free collateral (then the lowest ids).
        let others = free.len() > sharers;
        if others {
            free.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
            free.truncate(sharers);
            free.sort_by_key(|(a, _)| *a);
        }
        let total: i128 = free.iter().map(|(_, f)| f).sum();
        let socialized = left.min(total);
        let mut charged = 0;
        if socialized > 0 {
            let mut shares: Vec<(AccountId, i128, i128)> = free
                .iter()
                .map(|(a, f)| (*a, *f, socialized * f / total))
                .collect();
            let mut remainder = socialized - shares.iter().map(|s| s.2).sum::<i128>();
            // Terminates: the free collateral left above the shares is at least the remainder.
            while remainder > 0 {
                for s in &mut shares {
                    if remainder > 0 && s.2 < s.1 {
                        s.2 += 1;
                        remainder -= 1;
                    }
                }
            }
            for (a, _, share) in shares {
                if share > 0 {
                    charged += 1;
                    self.credit(a, Amount(-share as i64));
                    events.push(Event::LossShared {
                        account: a,
                        amount: Amount(share as i64),
                    });
                }
            }
            self.credit(account, Amount(socialized as i64));
        }
        events.push(Event::DeficitCovered {
            account,
            insurance: Amount(insurance as i64),
            fee_pool: Amount(fee_pool as i64),
            socialized: Amount(socialized as i64),
            unresolved: Amount((left - socialized) as i64),
        });
        (charged, left - socialized)
    }
}

#[cfg(test)]
mod tests {
    use optio_types::{InstrumentSpec, Price, RiskConfig, WorstCaseMargin};

    type E = super::Engine<WorstCaseMargin>;

    /// Every auction price, at every step of any schedule `RiskConfig::unprovable` accepts (the
    /// default, a shallower start, a shallower maximum, a longer run), for marks on and off the
    /// tick grid and ticks from a micro-USDC to wider than the deepest discount, stays within
    /// the proven schedule; and at the default settings the discount reaches the schedule's to
    /// within a tick and a micro-USDC (the engine does not sell shallower than it must).
    #[test]
    fn auction_prices_stay_within_the_proven_schedule() {
        let spec = InstrumentSpec {
            underlying_cap: Price(1_000_000_000_000),
            ..InstrumentSpec::with_defaults("BTC-PERPETUAL".parse().expect("name"), Price(1))
        };
        let d = optio_types::PROVEN_LIQUIDATION_DURATION_MS;
        let configs = [
            RiskConfig::default(),
            RiskConfig {
                liquidation_start_bps: 0,
                ..RiskConfig::default()
            },
            RiskConfig {
                liquidation_max_bps: 700,
                ..RiskConfig::default()
            },
            RiskConfig {
                liquidation_duration_ms: 4 * d,
                ..RiskConfig::default()
            },
        ];
        let mut checked = 0;
        for r in &configs {
            assert_eq!(r.unprovable(), None);
            for index in [60_000_000_000i64, 3_333_333_333, 1_000_001] {
                let reference = optio_types::liquidation_reference(&spec, Price(index));
                for mark in [index, index + 7, index / 3 + 1, 999_999] {
                    for tick in [1i128, 10, 500_000, 100_000_000, 20_000_000_000] {
                        for elapsed in [0, 1, 999, d / 3, d - 1, d, d + 1, 10 * d] {
                            for long in [true, false] {
                                let price = E::schedule_price(
                                    r,
                                    elapsed,
                                    // Scenarios wide enough not to bind.
                                    (Price(mark), &[-mark, mark]),
                                    reference,
                                    tick,
                                    i128::from(i64::MAX),
                                    long,
                                );
                                assert!(
                                    optio_types::within_liquidation_schedule(
                                        &spec,
                                        Price(index),
                                        Price(mark),
                                        price,
                                        long,
                                        elapsed
                                    ),
                                    "{r:?} index {index} mark {mark} tick {tick} elapsed {elapsed} long {long}: {price:?}"
                                );
                                if r == &RiskConfig::default() && tick == 1 {
                                    // One micro-USDC deeper breaks the schedule, unless the
                                    // stress range binds (zero for a long, twice the mark for
                                    // a short).
                                    let deeper =
                                        Price(if long { price.0 - 1 } else { price.0 + 1 });
                                    assert!(
                                        (long && price.0 == 0)
                                            || (!long && price.0 == 2 * mark)
                                            || !optio_types::within_liquidation_schedule(
                                                &spec,
                                                Price(index),
                                                Price(mark),
                                                deeper,
                                                long,
                                                elapsed
                                            ),
                                        "index {index} mark {mark} elapsed {elapsed} long {long}: {price:?} is shallower than it must be"
                                    );
                                }
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 4 * 3 * 4 * 5 * 8 * 2);
    }

    /// A tick wider than the deepest discount: prices move to the nearest whole tick within it,
    /// toward the liquidated account, and pass the proof's rule; prices already within it stay.
    #[test]
    fn a_tick_wider_than_the_discount_rounds_toward_the_account() {
        let spec = InstrumentSpec::with_defaults("BTC-PERPETUAL".parse().expect("name"), Price(1));
        // A reference of 1,000 allows 200 either way of a mark of 10,050.
        let (mark, reference, tick) = (Price(10_050), 1_000, 1_000);
        let ok = |price: Price, long: bool| {
            // The index that gives this reference (multiplier 1e8, cap above it).
            let spec = InstrumentSpec {
                underlying_cap: Price(1_000_000),
                ..spec.clone()
            };
            optio_types::within_liquidation_discount(&spec, Price(reference), mark, price, long)
        };
        assert_eq!(
            spec.contract_multiplier.0,
            optio_types::QTY_SCALE,
            "one unit a contract"
        );
        for (long, price, held) in [
            (true, 9_000, 10_000),
            (true, 11_000, 11_000),
            (false, 12_000, 10_000),
            (false, 9_000, 9_000),
        ] {
            let price = Price(price);
            let held_to = E::within_discount(mark, reference.into(), tick, long, price);
            assert_eq!(held_to, Price(held), "{price:?} long {long}");
            assert!(ok(held_to, long));
            assert_eq!(ok(price, long), held_to == price);
        }
    }
}
