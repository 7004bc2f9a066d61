//! Black-76 (options on a forward) and Black-Scholes-Merton (options on spot with a rate and a
//! carry/dividend yield), prices and Greeks.
//!
//! Accuracy: the out-of-the-money side is computed from the formula (the tails of N come from
//! `erfc`), the in-the-money side by put-call parity from it, so deep in-the-money prices do not
//! lose digits to cancellation. Degenerate inputs (zero time or zero volatility) give the
//! discounted intrinsic value and its limiting Greeks; non-finite or negative inputs give NaN-free
//! zeros only through the error-returning APIs (`iv`); these functions expect validated input.

use crate::norm::{cdf, pdf};

/// Call or put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Pays max(S - K, 0).
    Call,
    /// Pays max(K - S, 0).
    Put,
}

/// Price and first-order Greeks. Units: vega and rho per 1.00 (not per percent), theta per year
/// as `-dV/dT` (calendar time passing), delta and gamma against the underlying the model is
/// written on (spot for BSM, the forward for Black-76).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Greeks {
    /// Present value.
    pub price: f64,
    /// dV/dS (or dV/dF).
    pub delta: f64,
    /// d2V/dS2 (or d2V/dF2).
    pub gamma: f64,
    /// dV/dsigma.
    pub vega: f64,
    /// -dV/dT.
    pub theta: f64,
    /// dV/dr (Black-76: the forward held fixed, so -T * V).
    pub rho: f64,
}

/// Undiscounted Black price of the out-of-the-money side and the pieces the Greeks need.
struct Core {
    /// Undiscounted call price.
    call: f64,
    /// Undiscounted put price.
    put: f64,
    n_d1: f64,
    n_d2: f64,
    /// N(-d1) and N(-d2), computed directly (not as 1 - N(d)) so puts keep their digits.
    n_md1: f64,
    n_md2: f64,
    pdf_d1: f64,
    sqrt_t: f64,
}

#[inline]
fn core(f: f64, k: f64, t: f64, vol: f64) -> Core {
    let sqrt_t = t.sqrt();
    let s = vol * sqrt_t;
    if s.is_nan() || s <= 0.0 {
        let (call, put) = ((f - k).max(0.0), (k - f).max(0.0));
        let itm = if f > k {
            1.0
        } else if f < k {
            0.0
        } else {
            0.5
        };
        return Core {
            call,
            put,
            n_d1: itm,
            n_d2: itm,
            n_md1: 1.0 - itm,
            n_md2: 1.0 - itm,
            pdf_d1: 0.0,
            sqrt_t,
        };
    }
    let d1 = (f / k).ln() / s + 0.5 * s;
    let d2 = d1 - s;
    // One erfc per d: the tail side directly, the other as its complement (which is >= 0.5 and
    // so keeps its digits).
    let split = |d: f64| {
        if d < 0.0 {
            let lo = cdf(d);
            (lo, 1.0 - lo)
        } else {
            let hi = cdf(-d);
            (1.0 - hi, hi)
        }
    };
    let ((n_d1, n_md1), (n_d2, n_md2)) = (split(d1), split(d2));
    let (call, put) = if f <= k {
        // Call out of the money: direct; put by parity.
        let call = (f * n_d1 - k * n_d2).max(0.0);
        (call, call + (k - f))
    } else {
        let put = (k * n_md2 - f * n_md1).max(0.0);
        (put + (f - k), put)
    };
    Core {
        call,
        put,
        n_d1,
        n_d2,
        n_md1,
        n_md2,
        pdf_d1: pdf(d1),
        sqrt_t,
    }
}

/// Black-76: option on forward `f`, strike `k`, `t` years, volatility `vol`, discount factor
/// `df` (= exp(-rT)).
pub fn black76(right: Right, f: f64, k: f64, t: f64, vol: f64, df: f64) -> Greeks {
    let c = core(f, k, t, vol);
    let (undiscounted, delta) = match right {
        Right::Call => (c.call, df * c.n_d1),
        Right::Put => (c.put, -df * c.n_md1),
    };
    let price = df * undiscounted;
    let (gamma, vega) = if c.pdf_d1 > 0.0 {
        (
            df * c.pdf_d1 / (f * vol * c.sqrt_t),
            df * f * c.pdf_d1 * c.sqrt_t,
        )
    } else {
        (0.0, 0.0)
    };
    // Forward fixed: dV/dT = -r V + df * (vega-like time decay); with r = -ln(df)/T.
    let r = if t > 0.0 { -df.ln() / t } else { 0.0 };
    let decay = if c.sqrt_t > 0.0 {
        df * f * c.pdf_d1 * vol / (2.0 * c.sqrt_t)
    } else {
        0.0
    };
    let theta = r * price - decay;
    Greeks {
        price,
        delta,
        gamma,
        vega,
        theta,
        rho: -t * price,
    }
}

/// Black-Scholes-Merton on spot `s` with continuously compounded rate `r` and carry/dividend
/// yield `q`.
pub fn bsm(right: Right, s: f64, k: f64, t: f64, r: f64, q: f64, vol: f64) -> Greeks {
    let df = (-r * t).exp();
    let dq = (-q * t).exp();
    let f = s * dq / df;
    let c = core(f, k, t, vol);
    let (undiscounted, n1, n2) = match right {
        Right::Call => (c.call, c.n_d1, c.n_d2),
        Right::Put => (c.put, -c.n_md1, -c.n_md2),
    };
    let price = df * undiscounted;
    let delta = dq * n1;
    let (gamma, vega) = if c.pdf_d1 > 0.0 {
        (
            dq * c.pdf_d1 / (s * vol * c.sqrt_t),
            s * dq * c.pdf_d1 * c.sqrt_t,
        )
    } else {
        (0.0, 0.0)
    };
    let decay = if c.sqrt_t > 0.0 {
        s * dq * c.pdf_d1 * vol / (2.0 * c.sqrt_t)
    } else {
        0.0
    };
    // theta = -dV/dT; for puts n1 = -N(-d1) and n2 = -N(-d2) carry the sign.
    let theta = -decay - r * k * df * n2 + q * s * dq * n1;
    let rho = k * t * df * n2;
    Greeks {
        price,
        delta,
        gamma,
        vega,
        theta,
        rho,
    }
}

/// Structure-of-arrays inputs for Black-76 batch evaluation.
#[derive(Debug, Clone, Default)]
pub struct BatchInputs {
    /// Forwards.
    pub forward: Vec<f64>,
    /// Strikes.
    pub strike: Vec<f64>,
    /// Years to expiry.
    pub t: Vec<f64>,
    /// Volatilities.
    pub vol: Vec<f64>,
    /// Discount factors.
    pub discount: Vec<f64>,
    /// True for calls.
    pub is_call: Vec<bool>,
}

/// Structure-of-arrays outputs of a batch.
#[derive(Debug, Clone, Default)]
pub struct BatchOutputs {
    /// Prices.
    pub price: Vec<f64>,
    /// Deltas.
    pub delta: Vec<f64>,
    /// Gammas.
    pub gamma: Vec<f64>,
    /// Vegas.
    pub vega: Vec<f64>,
    /// Thetas.
    pub theta: Vec<f64>,
    /// Rhos.
    pub rho: Vec<f64>,
}

impl BatchOutputs {
    /// Outputs sized for `n` instruments.
    pub fn with_len(n: usize) -> Self {
        let v = || vec![0.0; n];
        Self {
            price: v(),
            delta: v(),
            gamma: v(),
            vega: v(),
            theta: v(),
            rho: v(),
        }
    }
}

/// Black-76 prices and Greeks for many instruments at once (shared terms computed once, no
/// allocation). `out` must have the inputs' length.
pub fn black76_batch(input: &BatchInputs, out: &mut BatchOutputs) {
    let n = input.forward.len();
    assert!(
        [
            input.strike.len(),
            input.t.len(),
            input.vol.len(),
            input.discount.len(),
            input.is_call.len(),
            out.price.len(),
            out.rho.len()
        ]
        .iter()
        .all(|&l| l == n),
        "batch slices must have one length"
    );
    for i in 0..n {
        let right = if input.is_call[i] {
            Right::Call
        } else {
            Right::Put
        };
        let g = black76(
            right,
            input.forward[i],
            input.strike[i],
            input.t[i],
            input.vol[i],
            input.discount[i],
        );
        out.price[i] = g.price;
        out.delta[i] = g.delta;
        out.gamma[i] = g.gamma;
        out.vega[i] = g.vega;
        out.theta[i] = g.theta;
        out.rho[i] = g.rho;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_call_parity_and_limits() {
        for (f, k, t, v) in [
            (100.0, 80.0, 0.5, 0.4),
            (100.0, 130.0, 2.0, 0.9),
            (100.0, 100.0, 0.01, 0.2),
        ] {
            let df = 0.97;
            let c = black76(Right::Call, f, k, t, v, df).price;
            let p = black76(Right::Put, f, k, t, v, df).price;
            assert!((c - p - df * (f - k)).abs() < 1e-12 * f);
        }
        let expired = black76(Right::Call, 110.0, 100.0, 0.0, 0.5, 1.0);
        assert_eq!(
            (expired.price, expired.delta, expired.gamma),
            (10.0, 1.0, 0.0)
        );
        let zero_vol = bsm(Right::Put, 90.0, 100.0, 1.0, 0.0, 0.0, 0.0);
        assert!((zero_vol.price - 10.0).abs() < 1e-12 && zero_vol.price.is_finite());
    }
}
