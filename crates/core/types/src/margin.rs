//! The margin interface the engine calls, and the conservative model it uses until the risk
//! oracle's portfolio margin lands.
//!
//! The engine keeps, per account and instrument, an [`Exposure`]: the position and the
//! aggregates of the account's open orders. A [`MarginModel`] turns one exposure into a
//! requirement; the account's requirement is the sum, and the engine keeps
//! `balance >= requirement` for every account after every input.

use crate::fixed::{Amount, ArithError, FEE_RATE_SCALE, Price, QTY_SCALE, Qty, Rounding, mul_div};
use crate::instrument::InstrumentSpec;

/// One account's exposure in one instrument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Exposure {
    /// Signed position.
    pub position: Qty,
    /// Total remaining size of open buy orders.
    pub buy_qty: Qty,
    /// Total `price * remaining` of open buy orders (cash they would pay if filled).
    pub buy_cost: Amount,
    /// Total remaining size of open sell orders.
    pub sell_qty: Qty,
    /// Total `price * remaining` of open sell orders (cash they would receive if filled).
    pub sell_proceeds: Amount,
    /// Fees the open orders could be charged if filled.
    pub fee_reserve: Amount,
}

/// Turns an exposure into the collateral it needs.
pub trait MarginModel {
    /// Collateral this exposure requires, rounded against the account.
    fn requirement(&self, spec: &InstrumentSpec, exposure: &Exposure)
    -> Result<Amount, ArithError>;
}

/// Fully collateralized worst case over underlying prices in `[0, underlying_cap]`.
///
/// With cash accounting (a buy pays `price * qty` from the balance, a sell receives it) a short
/// contract can owe at most `W` = [`InstrumentSpec::max_payoff_per_contract`]; a long one can
/// lose no more than it paid. The liability of a position `x` is `L(x) = max(-x, 0) * W`.
/// Open orders count as if filled, in the worst combination: all sells fill (without crediting
/// their proceeds) and then the buys either fill or not:
///
/// `requirement = max(L(q - A), buy_cost + L(q - A + B)) + fee_reserve`
///
/// Because order prices are capped at `W`, every partial fill of any subset of orders needs no
/// more than this, and cancelling an order never raises it: a maker's fills can never leave
/// it under-collateralized, so the engine checks margin once, when an order is accepted. The
/// model ignores marks and offsets on purpose: it is the floor of safety that portfolio margin
/// (risk arrays, issue #4) improves on.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorstCaseMargin;

impl WorstCaseMargin {
    fn liability(position: i64, max_payoff: Price) -> Result<i128, ArithError> {
        let short = i128::from((-position).max(0));
        mul_div(
            short,
            i128::from(max_payoff.0),
            i128::from(QTY_SCALE),
            Rounding::AgainstAccount,
        )
    }
}

/// The collateral that fully collateralizes `position` of `spec` with no orders: `L(x)` of
/// [`WorstCaseMargin`], `ceil(max(-x, 0) * W / 1e8)`.
pub fn full_collateral(spec: &InstrumentSpec, position: Qty) -> Result<i128, ArithError> {
    WorstCaseMargin::liability(position.0, spec.max_payoff_per_contract()?)
}

/// What `position` of `spec` can owe at worst, exactly, in 1e-8 micro-USDC: `max(-x, 0) * W`
/// ([`full_collateral`] before its rounding up). An account whose balance times 1e8 covers the
/// sum over its positions can pay all it may ever owe, whatever the index does: it is never
/// liquidated, whatever its margin mode. The rule needs neither the index nor the margin mode,
/// which the settlement state does not hold, so a validity proof can check it of a liquidation.
pub fn short_liability(spec: &InstrumentSpec, position: Qty) -> Result<i128, ArithError> {
    let w = spec.max_payoff_per_contract()?;
    Ok(i128::from(position.0.saturating_neg().max(0)) * i128::from(w.0))
}

/// What an owner's L1 forced withdrawal takes from an account with `collateral`, whose shorts
/// can owe `liability` at worst (the sum of [`short_liability`], in 1e-8 micro-USDC) and which
/// holds `open_positions` positions: all that leaves it covering that liability, less a
/// micro-USDC per open position, or nothing when that is not positive:
/// `max(0, floor((collateral * 1e8 - liability) / 1e8) - open_positions)`.
///
/// Whatever the margin mode, the account can then pay all it may ever owe, and it needs
/// neither marks nor a path per position: the settlement state's account leaf holds all three
/// numbers, so a proof checks it of an account holding any number of positions (the escape
/// hatch is never served with less). The micro-USDC per position keeps what is left at or above
/// the sum of [`full_collateral`], which rounds each short up (a `WorstCase` account's
/// requirement without orders). A flat account takes all its collateral.
pub fn forced_withdrawal(collateral: i64, liability: i128, open_positions: u32) -> i64 {
    let scale = i128::from(QTY_SCALE);
    let cover = (i128::from(collateral) * scale - liability).div_euclid(scale);
    // At most the collateral: the liability is not negative.
    (cover - i128::from(open_positions)).max(0) as i64
}

impl MarginModel for WorstCaseMargin {
    fn requirement(&self, spec: &InstrumentSpec, e: &Exposure) -> Result<Amount, ArithError> {
        let w = spec.max_payoff_per_contract()?;
        let after_sells = e
            .position
            .0
            .checked_sub(e.sell_qty.0)
            .ok_or(ArithError::Overflow)?;
        let after_all = after_sells
            .checked_add(e.buy_qty.0)
            .ok_or(ArithError::Overflow)?;
        let sells_only = Self::liability(after_sells, w)?;
        let all = i128::from(e.buy_cost.0) + Self::liability(after_all, w)?;
        let total = sells_only.max(all) + i128::from(e.fee_reserve.0);
        i64::try_from(total)
            .map(Amount)
            .map_err(|_| ArithError::Overflow)
    }
}

/// The most fee an open order of `qty` at `price` can be charged, however it fills: the fee of
/// one amount step, rounded against the account, times the number of steps. Charging each
/// partial fill with rounding up never exceeds it.
pub fn fee_reserve(spec: &InstrumentSpec, price: Price, qty: Qty) -> Result<Amount, ArithError> {
    let rate = i128::from(spec.maker_fee.0.max(spec.taker_fee.0).max(0));
    let step_notional = i128::from(price.notional(spec.amount_step)?.0);
    let per_step = mul_div(
        step_notional,
        rate,
        i128::from(FEE_RATE_SCALE),
        Rounding::AgainstAccount,
    )?;
    let steps = i128::from(qty.0 / spec.amount_step.0);
    i64::try_from(per_step * steps)
        .map(Amount)
        .map_err(|_| ArithError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed::MONEY_SCALE;

    fn call() -> InstrumentSpec {
        InstrumentSpec::with_defaults(
            "BTC-27DEC24-60000-C".parse().expect("valid"),
            Price(100_000 * MONEY_SCALE),
        )
    }

    #[test]
    fn short_call_needs_cap_minus_strike() {
        let e = Exposure {
            position: Qty(-QTY_SCALE),
            ..Exposure::default()
        };
        assert_eq!(
            WorstCaseMargin.requirement(&call(), &e),
            Ok(Amount(40_000 * MONEY_SCALE))
        );
    }

    #[test]
    fn long_needs_nothing_and_a_bid_needs_its_cost() {
        let spec = call();
        let long = Exposure {
            position: Qty(QTY_SCALE),
            ..Exposure::default()
        };
        assert_eq!(WorstCaseMargin.requirement(&spec, &long), Ok(Amount(0)));
        let bid = Exposure {
            buy_qty: Qty(QTY_SCALE),
            buy_cost: Amount(500 * MONEY_SCALE),
            ..Exposure::default()
        };
        assert_eq!(
            WorstCaseMargin.requirement(&spec, &bid),
            Ok(Amount(500 * MONEY_SCALE))
        );
    }

    #[test]
    fn a_bid_that_closes_a_short_does_not_add() {
        let e = Exposure {
            position: Qty(-QTY_SCALE),
            buy_qty: Qty(QTY_SCALE),
            buy_cost: Amount(500 * MONEY_SCALE),
            ..Exposure::default()
        };
        assert_eq!(
            WorstCaseMargin.requirement(&call(), &e),
            Ok(Amount(40_000 * MONEY_SCALE))
        );
    }

    #[test]
    fn fee_reserve_covers_any_split() {
        let spec = call();
        let price = Price(1_234_500_000);
        let whole = fee_reserve(&spec, price, Qty(10 * spec.amount_step.0)).expect("fits");
        let mut charged = Amount(0);
        for _ in 0..10 {
            let fee = spec
                .taker_fee
                .fee_on(price.notional(spec.amount_step).expect("exact"))
                .expect("fits");
            charged = charged.checked_add(fee).expect("fits");
        }
        assert!(charged <= whole);
    }
}
