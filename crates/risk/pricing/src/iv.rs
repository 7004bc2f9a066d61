//! Implied volatility: a safeguarded Newton solver on the out-of-the-money Black price.
//!
//! The price is first turned into the out-of-the-money option's undiscounted price by put-call
//! parity (where all the information is; the in-the-money side adds intrinsic value that only
//! costs digits). Newton then runs on `ln(price)` against total volatility `s = sigma * sqrt(T)`,
//! which stays well conditioned for tiny far-out-of-the-money prices, starting at the inflection
//! point `sqrt(2 |ln(F/K)|)` and falling back to bisection whenever a step would leave the
//! current bracket. It converges for any price strictly inside the no-arbitrage bounds and never
//! returns NaN.

use crate::black::Right;
use crate::norm::{cdf, pdf};

/// Why no volatility could be implied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IvError {
    /// An input is NaN, infinite, or out of its domain (non-positive forward, strike or time,
    /// discount factor not in (0, 2)).
    #[error("invalid input to the implied-volatility solver")]
    InvalidInput,
    /// The price is below the discounted intrinsic value: no volatility produces it.
    #[error("price below intrinsic value")]
    BelowIntrinsic,
    /// The price is at or above the upper bound (the discounted forward for a call, the
    /// discounted strike for a put).
    #[error("price at or above the no-arbitrage upper bound")]
    AboveUpperBound,
}

/// Largest total volatility searched (sigma * sqrt(T)); prices needing more are at the bound.
const MAX_TOTAL_VOL: f64 = 50.0;

/// Undiscounted out-of-the-money price at total vol `s` and its derivative in `s`.
fn otm_price(right: Right, f: f64, k: f64, s: f64) -> (f64, f64) {
    if s <= 0.0 {
        return (0.0, 0.0);
    }
    let d1 = (f / k).ln() / s + 0.5 * s;
    let d2 = d1 - s;
    let price = match right {
        Right::Call => f * cdf(d1) - k * cdf(d2),
        Right::Put => k * cdf(-d2) - f * cdf(-d1),
    };
    (price.max(0.0), f * pdf(d1))
}

/// Implied Black-76 volatility of an option priced `price` (present value) on forward `f`.
pub fn implied_vol_black76(
    right: Right,
    price: f64,
    f: f64,
    k: f64,
    t: f64,
    df: f64,
) -> Result<f64, IvError> {
    let finite = [price, f, k, t, df].iter().all(|x| x.is_finite());
    if !finite || f <= 0.0 || k <= 0.0 || t <= 0.0 || df <= 0.0 || df >= 2.0 || price < 0.0 {
        return Err(IvError::InvalidInput);
    }
    let c = price / df;
    let (intrinsic, upper) = match right {
        Right::Call => ((f - k).max(0.0), f),
        Right::Put => ((k - f).max(0.0), k),
    };
    // A relative tolerance of a few ulps on the bounds, for prices computed in floating point.
    let slack = 4.0 * f64::EPSILON * upper;
    if c < intrinsic - slack {
        return Err(IvError::BelowIntrinsic);
    }
    if c >= upper - slack {
        return Err(IvError::AboveUpperBound);
    }
    // The out-of-the-money option carries the time value.
    let (otm_right, target) = match right {
        Right::Call if f > k => (Right::Put, c - (f - k)),
        Right::Put if k > f => (Right::Call, c - (k - f)),
        _ => (right, c),
    };
    if target <= 0.0 {
        return Ok(0.0);
    }
    let otm_upper = if otm_right == Right::Call { f } else { k };
    if target >= otm_upper - slack {
        return Err(IvError::AboveUpperBound);
    }
    let ln_target = target.ln();
    let (mut lo, mut hi) = (0.0_f64, MAX_TOTAL_VOL);
    let x = (f / k).ln().abs();
    let mut s = if x > 1e-8 {
        (2.0 * x).sqrt()
    } else {
        (2.0 * std::f64::consts::PI).sqrt() * target / f
    };
    s = s.clamp(1e-8, MAX_TOTAL_VOL * 0.5);
    for _ in 0..200 {
        let (p, dp) = otm_price(otm_right, f, k, s);
        if p > target {
            hi = s;
        } else {
            lo = s;
        }
        let g = if p > 0.0 {
            p.ln() - ln_target
        } else {
            f64::NEG_INFINITY
        };
        let step = if p > 0.0 && dp > 0.0 {
            g * p / dp
        } else {
            f64::NAN
        };
        let mut next = s - step;
        if !(next > lo && next < hi) {
            next = 0.5 * (lo + hi);
        }
        if (next - s).abs() <= 4.0 * f64::EPSILON * s.max(1e-300)
            || hi - lo <= 4.0 * f64::EPSILON * hi
        {
            s = next;
            break;
        }
        s = next;
    }
    Ok(s / t.sqrt())
}

/// Implied Black-Scholes-Merton volatility (spot `s`, rate `r`, carry/dividend yield `q`).
pub fn implied_vol_bsm(
    right: Right,
    price: f64,
    spot: f64,
    k: f64,
    t: f64,
    r: f64,
    q: f64,
) -> Result<f64, IvError> {
    if ![spot, r, q, t].iter().all(|x| x.is_finite()) || t <= 0.0 {
        return Err(IvError::InvalidInput);
    }
    let df = (-r * t).exp();
    let f = spot * (-q * t).exp() / df;
    implied_vol_black76(right, price, f, k, t, df)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::black::black76;

    #[test]
    fn bounds_are_errors_not_nans() {
        let ok = |p| implied_vol_black76(Right::Call, p, 100.0, 100.0, 1.0, 1.0);
        assert_eq!(ok(-1.0), Err(IvError::InvalidInput));
        assert_eq!(ok(f64::NAN), Err(IvError::InvalidInput));
        assert_eq!(ok(100.0), Err(IvError::AboveUpperBound));
        assert_eq!(
            implied_vol_black76(Right::Call, 5.0, 110.0, 100.0, 1.0, 1.0),
            Err(IvError::BelowIntrinsic)
        );
        assert_eq!(
            implied_vol_black76(Right::Call, 10.0, 110.0, 100.0, 1.0, 1.0),
            Ok(0.0)
        );
        assert_eq!(
            implied_vol_black76(Right::Put, 1.0, 100.0, 100.0, 0.0, 1.0),
            Err(IvError::InvalidInput)
        );
    }

    #[test]
    fn round_trips_at_the_money() {
        let p = black76(Right::Call, 100.0, 100.0, 0.5, 0.65, 0.99).price;
        let v =
            implied_vol_black76(Right::Call, p, 100.0, 100.0, 0.5, 0.99).expect("inside bounds");
        assert!((v - 0.65).abs() < 1e-12);
    }
}
