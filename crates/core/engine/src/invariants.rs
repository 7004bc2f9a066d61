//! The full audit: recomputes every derived quantity from scratch and compares. Run after every
//! input in tests and on every restore; the engine checks the cheap, incremental subset after
//! every input in release builds (`Engine::apply`).

use std::collections::BTreeMap;

use optio_types::{
    AccountId, Exposure, InstrumentId, MarginMode, MarginModel, OrderId, Side, TimeInForce,
};

use crate::book::NIL;
use crate::engine::Engine;

/// A broken invariant, described.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invariant violated: {0}")]
pub struct InvariantViolation(pub String);

fn fail<T>(what: String) -> Result<T, InvariantViolation> {
    Err(InvariantViolation(what))
}

impl<M: MarginModel> Engine<M> {
    /// Audits the whole state: conservation, non-negative and covered balances, positions netting
    /// to zero, uncrossed books, and agreement of the books, the order store, the per-account
    /// indexes, the exposures and the cached requirements.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let balances: i128 = self.accounts.iter().map(|a| i128::from(a.balance.0)).sum();
        if balances != self.total_balances {
            return fail(format!(
                "sum of balances {balances} != running total {}",
                self.total_balances
            ));
        }
        let held =
            balances + i128::from(self.totals.fee_pool.0) + i128::from(self.totals.insurance.0);
        if self.totals.deposits - self.totals.withdrawals != held {
            return fail(format!(
                "deposits - withdrawals = {} but balances + pools = {held}",
                self.totals.deposits - self.totals.withdrawals
            ));
        }
        if self.totals.fee_pool.0 < 0 || self.totals.insurance.0 < 0 {
            return fail("fee pool or insurance negative".into());
        }

        // Recompute exposures and order counts from the books.
        let mut exposures: BTreeMap<(AccountId, InstrumentId), (Exposure, u32)> = BTreeMap::new();
        let mut seen = 0usize;
        for (i, inst) in self.instruments.iter().enumerate() {
            let id = InstrumentId(i as u32);
            if let (Some(bid), Some(ask)) = (inst.book.best(Side::Buy), inst.book.best(Side::Sell))
                && bid >= ask
            {
                return fail(format!("book {id} crossed: {bid} >= {ask}"));
            }
            for side in [Side::Buy, Side::Sell] {
                for (price, level) in inst.book.levels(side) {
                    let (mut count, mut total, mut slot) = (0u32, 0i64, level.head);
                    while slot != NIL {
                        let o = self.store.get(slot);
                        if o.instrument != id
                            || o.side != side
                            || o.price != *price
                            || !o.remaining.is_positive()
                        {
                            return fail(format!("order {} misfiled in book {id}", o.id));
                        }
                        if self.accounts.get(o.account.0 as usize).is_none() {
                            return fail(format!("order {} of unknown account", o.id));
                        }
                        if self.position_index.get(&(o.account.0, id.0)) != Some(o.position) {
                            return fail(format!(
                                "order {} points at the wrong position entry",
                                o.id
                            ));
                        }
                        if o.client_order_id != 0
                            && self.client_index.get(&(o.account.0, o.client_order_id))
                                != Some(slot)
                        {
                            return fail(format!("client id of order {} not indexed", o.id));
                        }
                        if let TimeInForce::GoodTillTime(t) = o.time_in_force
                            && !self.good_till.contains(&(t, o.id))
                        {
                            return fail(format!("good-till order {} not indexed", o.id));
                        }
                        if let Some(key) = o.session_key {
                            let until = self.accounts[o.account.0 as usize].session_keys.get(&key);
                            let lives = match o.time_in_force {
                                TimeInForce::GoodTillTime(t) => until.is_some_and(|u| t <= *u),
                                _ => false,
                            };
                            if !lives {
                                return fail(format!("order {} outlives its session key", o.id));
                            }
                        }
                        let entry = exposures.entry((o.account, id)).or_default();
                        Self::exposure_add(&inst.spec, &mut entry.0, side, o.price, o.remaining)?;
                        entry.1 += 1;
                        count += 1;
                        total += o.remaining.0;
                        slot = o.next();
                    }
                    if count != level.count || total != level.total.0 || count == 0 {
                        return fail(format!(
                            "level {price} of book {id} has wrong count or total"
                        ));
                    }
                    seen += count as usize;
                }
            }
            if inst.net_position != 0 {
                return fail(format!("positions of {id} net to {}", inst.net_position));
            }
        }
        if seen != self.store.len() {
            return fail(format!(
                "{} orders stored but {seen} on books",
                self.store.len()
            ));
        }
        for (a, acct) in self.accounts.iter().enumerate() {
            let (mut n, mut slot, mut prev) = (0u32, acct.orders_head, NIL);
            while slot != NIL {
                let o = self.store.get(slot);
                if o.account.0 as usize != a || o.account_prev != prev || n > acct.open_orders {
                    return fail(format!("order list of account {a} is broken"));
                }
                n += 1;
                prev = slot;
                slot = o.account_next;
            }
            if n != acct.open_orders {
                return fail(format!(
                    "account {a} counts {} open orders but lists {n}",
                    acct.open_orders
                ));
            }
        }
        let indexed: usize = self.accounts.iter().map(|a| a.open_orders as usize).sum();
        if indexed != self.account_orders || self.store.booked() != self.store.len() {
            return fail("running order counters out of step".into());
        }
        let booked_cids = self
            .store
            .live()
            .filter(|(_, o)| o.client_order_id != 0)
            .count();
        if indexed != seen || self.client_index.len() != booked_cids {
            return fail("account order indexes hold orders that are not booked".into());
        }
        let good_till = self
            .store
            .live()
            .filter(|(_, o)| matches!(o.time_in_force, TimeInForce::GoodTillTime(_)))
            .count();
        if good_till != self.good_till.len() {
            return fail("good-till index out of step".into());
        }

        let mut net: BTreeMap<InstrumentId, i128> = BTreeMap::new();
        for (a, acct) in self.accounts.iter().enumerate() {
            let account = AccountId(a as u32);
            let (mut requirement, mut maintenance) = (0i64, 0i64);
            let mut portfolio = (acct.mode == MarginMode::Portfolio)
                .then(|| crate::risk::Contribution::zero(self.risk.scenarios as usize + 1));
            for (&instrument, &slot) in &acct.positions {
                let pos = &self.positions[slot as usize];
                if pos.instrument != instrument
                    || self.position_index.get(&(account.0, instrument.0)) != Some(slot)
                {
                    return fail(format!(
                        "position index of account {account} in {instrument} is broken"
                    ));
                }
                let spec = &self.instruments[instrument.0 as usize].spec;
                let (mut want, count) =
                    exposures.remove(&(account, instrument)).unwrap_or_default();
                want.position = pos.exposure.position;
                if want != pos.exposure || count != pos.open_orders {
                    return fail(format!(
                        "exposure of account {account} in {instrument} out of step"
                    ));
                }
                for (i, quote) in pos.quotes.iter().enumerate() {
                    if let Some(id) = quote {
                        let ok = self
                            .store
                            .slot_of(*id)
                            .map(|s| self.store.get(s))
                            .is_some_and(|o| {
                                o.is_quote
                                    && o.account == account
                                    && o.instrument == instrument
                                    && usize::from(o.side == Side::Sell) == i
                            });
                        if !ok {
                            return fail(format!(
                                "quote reference {id} of account {account} is stale"
                            ));
                        }
                    }
                }
                let marked = self
                    .marked_margin(acct.mode, instrument, &pos.exposure)
                    .map_err(|e| InvariantViolation(e.to_string()))?;
                let _ = spec;
                if (marked.initial, marked.maintenance) != (pos.requirement.0, pos.maintenance.0)
                    || marked.scenario != pos.scenario
                {
                    return fail(format!(
                        "cached requirement of account {account} in {instrument} is stale"
                    ));
                }
                requirement += marked.initial;
                maintenance += marked.maintenance;
                if let (Some(sums), Some(c)) = (portfolio.as_mut(), &marked.scenario) {
                    sums.add(c);
                }
                *net.entry(instrument).or_default() += i128::from(pos.exposure.position.0);
                let holder = self.instruments[instrument.0 as usize]
                    .holders
                    .contains(&account);
                if holder != (pos.exposure.position.0 != 0) {
                    return fail(format!(
                        "holder index of {instrument} wrong for account {account}"
                    ));
                }
            }
            if let Some(sums) = &portfolio {
                (requirement, maintenance) = Self::portfolio_requirement(sums);
                if acct.portfolio.as_ref() != Some(sums) {
                    return fail(format!("portfolio sums of account {account} are stale"));
                }
            }
            if (requirement, maintenance) != (acct.requirement.0, acct.maintenance.0) {
                return fail(format!("requirement totals of account {account} are stale"));
            }
            // Between inputs a mark-margined account is either above maintenance or being
            // liquidated, and a liquidating account has no open orders.
            // (or waits for its auction's start: exactly the accounts liquidatable but not
            // liquidating, `liquidations_due`).
            if acct.mode != MarginMode::WorstCase
                && acct.liquidating_since.is_none()
                && acct.balance < acct.maintenance
                && !self.liquidations_due.contains(&account)
            {
                return fail(format!(
                    "account {account} is below maintenance but not liquidating"
                ));
            }
            if self.liquidations_due.contains(&account) != self.auction_due(account) {
                return fail(format!(
                    "account {account}: an auction is due iff it is liquidatable and not liquidating"
                ));
            }
            // A liquidating account that holds nothing and is in deficit waits for its
            // deficit's cover, due at the end of the next input that settles nothing.
            if self.cover_due(account) != self.covers_due.contains(&account) {
                return fail(format!(
                    "account {account}: a cover is due iff it is liquidating in deficit with nothing left"
                ));
            }
            if self.ends_due.contains(&account) != self.end_due(account) {
                return fail(format!(
                    "account {account}: an end is due iff it is liquidating and not below maintenance"
                ));
            }
            if self.in_liquidation(account)
                && (acct.open_orders > 0 || acct.mode == MarginMode::WorstCase)
            {
                return fail(format!(
                    "liquidating account {account} has open orders or is fully collateralized"
                ));
            }
            // Fully collateralized accounts can never be under water.
            if acct.mode == MarginMode::WorstCase
                && (acct.balance.0 < 0 || acct.balance < acct.requirement)
            {
                return fail(format!(
                    "account {account} balance {} below requirement {}",
                    acct.balance, acct.requirement
                ));
            }
            let quotes = self
                .store
                .live()
                .filter(|(_, o)| o.is_quote && o.account == account)
                .count();
            let refs: usize = acct
                .positions
                .values()
                .map(|s| self.positions[*s as usize].quotes.iter().flatten().count())
                .sum();
            if quotes != refs {
                return fail(format!("account {account} has unreferenced quotes"));
            }
        }
        if let Some(((account, instrument), _)) = exposures.into_iter().next() {
            return fail(format!(
                "account {account} has orders in {instrument} but no position entry"
            ));
        }
        if let Some((instrument, n)) = net.into_iter().find(|(_, n)| *n != 0) {
            return fail(format!("positions of {instrument} net to {n}"));
        }
        let holders: usize = self.instruments.iter().map(|i| i.holders.len()).sum();
        let nonzero: usize = self
            .positions
            .iter()
            .filter(|p| p.exposure.position.0 != 0)
            .count();
        if holders != nonzero {
            return fail("holder index lists flat accounts".into());
        }
        if self
            .store
            .live()
            .any(|(_, o)| o.id >= OrderId(self.next_order_id))
        {
            return fail("an order id is not below the id counter".into());
        }
        Ok(())
    }

    fn exposure_add(
        spec: &optio_types::InstrumentSpec,
        e: &mut Exposure,
        side: Side,
        price: optio_types::Price,
        qty: optio_types::Qty,
    ) -> Result<(), InvariantViolation> {
        let reserve = optio_types::margin::fee_reserve(spec, price, qty)
            .map_err(|e| InvariantViolation(e.to_string()))?;
        e.fee_reserve.0 += reserve.0;
        match side {
            Side::Buy => {
                e.buy_qty.0 += qty.0;
                e.buy_cost.0 += price
                    .notional(qty)
                    .map_err(|e| InvariantViolation(e.to_string()))?
                    .0;
            }
            Side::Sell => {
                e.sell_qty.0 += qty.0;
                e.sell_proceeds.0 += price
                    .notional(qty)
                    .map_err(|e| InvariantViolation(e.to_string()))?
                    .0;
            }
        }
        Ok(())
    }
}
