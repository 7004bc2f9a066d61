//! Accounts, balances and positions, with the cash accounting every fill goes through.
//!
//! Cash accounting: a buy pays `price * qty` from the balance and a sell receives it, for options
//! and perpetuals alike, so every fill is an exact transfer between two balances and
//! conservation holds without rounding. A position keeps its signed cost (for average entry)
//! and the P&L realized by closing; those two are reporting, the money is in the balances.

use std::collections::BTreeMap;

use optio_types::fixed::{Rounding, mul_div};
use optio_types::{Address, Amount, Exposure, InstrumentId, OrderId, Qty};

use crate::book::NIL;

/// One account's stake in one instrument: its position and the aggregates of its open orders
/// there, with the margin that requires.
#[derive(Debug, Clone)]
pub(crate) struct Position {
    /// Instrument.
    pub instrument: InstrumentId,
    /// Position (in `exposure.position`) and open-order aggregates.
    pub exposure: Exposure,
    /// Signed cost of the open position.
    pub cost: Amount,
    /// Realized P&L.
    pub realized_pnl: Amount,
    /// What `exposure` requires under the margin model, net of the position's value in
    /// mark-based modes (cached; refreshed on every change).
    pub requirement: Amount,
    /// Maintenance requirement of the position alone, net of its value.
    pub maintenance: Amount,
    /// Portfolio margin: this instrument's contribution per scenario.
    pub scenario: Option<crate::risk::Contribution>,
    /// Open orders of the account in this instrument.
    pub open_orders: u32,
    /// The account's current mass-quote orders here: `[bid, ask]`.
    pub quotes: [Option<OrderId>; 2],
}

impl Position {
    pub(crate) fn new(instrument: InstrumentId) -> Self {
        Self {
            instrument,
            exposure: Exposure::default(),
            cost: Amount::ZERO,
            realized_pnl: Amount::ZERO,
            requirement: Amount::ZERO,
            maintenance: Amount::ZERO,
            scenario: None,
            open_orders: 0,
            quotes: [None, None],
        }
    }

    /// Applies a fill of `qty` (signed: + bought, - sold) for `notional` (its value, positive)
    /// to size, cost and realized P&L. Returns nothing: cash moves in the engine.
    pub(crate) fn apply_fill(&mut self, signed_qty: i64, notional: Amount) {
        let q = self.exposure.position.0;
        let d = signed_qty;
        if q == 0 || (q > 0) == (d > 0) {
            self.cost = Amount(self.cost.0 + d.signum() * notional.0);
            self.exposure.position = Qty(q + d);
            return;
        }
        let closing = d.abs().min(q.abs());
        let released = mul_div(
            i128::from(self.cost.0),
            i128::from(closing),
            i128::from(q.abs()),
            Rounding::TowardSystem,
        )
        .expect("cost share is at most the cost");
        let released = i64::try_from(released).expect("cost share is at most the cost");
        // The notional's share for the part that closes (exact for a fill at a whole tick; a
        // forced close at the mark moves a whole position, so closes or opens only).
        let closing_notional = Amount(
            i64::try_from(
                mul_div(
                    i128::from(notional.0),
                    i128::from(closing),
                    i128::from(d.abs()),
                    Rounding::TowardSystem,
                )
                .expect("a share of the notional"),
            )
            .expect("a share of the notional"),
        );
        self.realized_pnl =
            Amount(self.realized_pnl.0 + q.signum() * closing_notional.0 - released);
        self.cost = Amount(self.cost.0 - released);
        self.exposure.position = Qty(q + d.signum() * closing);
        let opening = d.abs() - closing;
        if opening > 0 {
            let opening_notional = Amount(notional.0 - closing_notional.0);
            self.cost = Amount(self.cost.0 + d.signum() * opening_notional.0);
            self.exposure.position = Qty(self.exposure.position.0 + d.signum() * opening);
        }
    }
}

/// A (sub)account.
#[derive(Debug, Clone)]
pub(crate) struct Account {
    pub owner: Address,
    pub balance: Amount,
    /// Initial requirement net of position values: risk-increasing actions need
    /// `balance >= requirement` (the sum of the positions' requirements, or for portfolio
    /// margin the worst scenario over the summed contributions).
    pub requirement: Amount,
    /// Maintenance requirement net of position values: below it the account is liquidated.
    pub maintenance: Amount,
    /// How the account is margined.
    pub mode: optio_types::MarginMode,
    /// Portfolio margin: summed scenario contributions.
    pub portfolio: Option<crate::risk::PortfolioSums>,
    /// Engine time the account's liquidation started, while it lasts.
    pub liquidating_since: Option<u64>,
    /// Registered session keys and their expiry (ms).
    pub session_keys: BTreeMap<Address, u64>,
    /// Slots of the account's position entries, by instrument (entries are never removed).
    pub positions: BTreeMap<InstrumentId, u32>,
    /// Head of the intrusive list of open orders (through the order slab), and its length.
    pub orders_head: u32,
    pub open_orders: u32,
}

impl Account {
    pub(crate) fn new(owner: Address) -> Self {
        Self {
            owner,
            balance: Amount::ZERO,
            requirement: Amount::ZERO,
            maintenance: Amount::ZERO,
            mode: optio_types::MarginMode::WorstCase,
            portfolio: None,
            liquidating_since: None,
            session_keys: BTreeMap::new(),
            positions: BTreeMap::new(),
            orders_head: NIL,
            open_orders: 0,
        }
    }

    /// Collateral not needed by positions and orders.
    pub(crate) fn free_collateral(&self) -> Amount {
        Amount(self.balance.0 - self.requirement.0)
    }

    /// What a loss share may take from it: its balance above its requirement (counted as at
    /// least zero), in micro-USDC; not positive when it has nothing to share.
    pub(crate) fn sharable(&self) -> i128 {
        i128::from(self.balance.0) - i128::from(self.requirement.0.max(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use optio_types::{Price, QTY_SCALE};

    fn fill(p: &mut Position, qty: i64, price: i64) {
        let notional = Price(price).notional(Qty(qty.abs())).expect("exact");
        p.apply_fill(qty, notional);
    }

    #[test]
    fn open_close_flip_realizes_against_average_entry() {
        let mut p = Position::new(InstrumentId(0));
        fill(&mut p, QTY_SCALE, 100_000_000); // buy 1 @ 100
        fill(&mut p, QTY_SCALE, 200_000_000); // buy 1 @ 200, avg 150
        assert_eq!(p.cost, Amount(300_000_000));
        fill(&mut p, -QTY_SCALE, 180_000_000); // sell 1 @ 180: +30
        assert_eq!(p.realized_pnl, Amount(30_000_000));
        assert_eq!(p.cost, Amount(150_000_000));
        fill(&mut p, -3 * QTY_SCALE, 140_000_000); // close 1 @ 140 (-10), open short 2 @ 140
        assert_eq!(p.realized_pnl, Amount(20_000_000));
        assert_eq!(p.exposure.position, Qty(-2 * QTY_SCALE));
        assert_eq!(p.cost, Amount(-280_000_000));
        fill(&mut p, 2 * QTY_SCALE, 100_000_000); // cover 2 @ 100: +80
        assert_eq!(p.realized_pnl, Amount(100_000_000));
        assert_eq!((p.exposure.position, p.cost), (Qty(0), Amount(0)));
    }
}
