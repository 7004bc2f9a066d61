//! Volatility smiles and surfaces: raw SVI per expiry, fitted to quotes, checked for butterfly
//! and calendar arbitrage, interpolated in time.
//!
//! Raw SVI (Gatheral): total implied variance at log-moneyness `k = ln(K / F)` is
//! `w(k) = a + b (rho (k - m) + sqrt((k - m)^2 + sigma^2))`.
//! The fit is the quasi-explicit method (Zeliade, 2009): for fixed `(m, sigma)` the smile is
//! linear in `(a, b*rho*sigma, b*sigma)`, solved by weighted least squares under the parameter
//! constraints; `(m, sigma)` are found by Nelder-Mead from several starts.

use crate::black::{Greeks, Right, black76};

/// Raw SVI parameters of one expiry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Svi {
    /// Level.
    pub a: f64,
    /// Angle between the wings (>= 0).
    pub b: f64,
    /// Skew, in (-1, 1).
    pub rho: f64,
    /// Horizontal shift.
    pub m: f64,
    /// Smoothness at the vertex (> 0).
    pub sigma: f64,
}

/// One market quote on a smile: log-moneyness, total variance (`iv^2 * T`) and a weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SmilePoint {
    /// `ln(K / F)`.
    pub k: f64,
    /// `iv^2 * T`.
    pub w: f64,
    /// Relative weight in the fit (e.g. vega, or 1).
    pub weight: f64,
}

/// Why a smile or surface was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SurfaceError {
    /// Fewer than five quotes, or a non-finite or non-positive total variance or weight.
    #[error("need at least 5 finite quotes with positive total variance and weight")]
    BadQuotes,
    /// Parameters outside the SVI domain (b < 0, |rho| >= 1, sigma <= 0, negative minimum variance).
    #[error("SVI parameters outside their domain")]
    BadParameters,
    /// Expiries not strictly increasing or not positive, or a non-positive spot.
    #[error("expiries must be positive and strictly increasing; spot positive")]
    BadExpiries,
    /// A butterfly (density) or calendar (total variance decreasing in time) violation.
    #[error("arbitrage: {0}")]
    Arbitrage(String),
}

impl Svi {
    /// Total variance at log-moneyness `k`.
    pub fn w(&self, k: f64) -> f64 {
        let x = k - self.m;
        self.a + self.b * (self.rho * x + (x * x + self.sigma * self.sigma).sqrt())
    }

    fn dw(&self, k: f64) -> (f64, f64) {
        let x = k - self.m;
        let r = (x * x + self.sigma * self.sigma).sqrt();
        (
            self.b * (self.rho + x / r),
            self.b * self.sigma * self.sigma / (r * r * r),
        )
    }

    /// Checks the parameter domain.
    pub fn validate(&self) -> Result<(), SurfaceError> {
        let finite = [self.a, self.b, self.rho, self.m, self.sigma]
            .iter()
            .all(|x| x.is_finite());
        let min_w = self.a + self.b * self.sigma * (1.0 - self.rho * self.rho).max(0.0).sqrt();
        if !finite || self.b < 0.0 || self.rho.abs() >= 1.0 || self.sigma <= 0.0 || min_w < 0.0 {
            return Err(SurfaceError::BadParameters);
        }
        Ok(())
    }

    /// Durrleman's density condition `g(k) >= 0` on a grid of log-moneyness; returns the points
    /// where it fails (a negative risk-neutral density: butterfly arbitrage).
    pub fn butterfly_violations(&self, grid: &[f64]) -> Vec<f64> {
        grid.iter()
            .copied()
            .filter(|&k| {
                let w = self.w(k);
                let (w1, w2) = self.dw(k);
                let g = (1.0 - k * w1 / (2.0 * w)).powi(2) - w1 * w1 / 4.0 * (1.0 / w + 0.25)
                    + w2 / 2.0;
                w <= 0.0 || g < -1e-12
            })
            .collect()
    }

    /// Fits a smile to quotes.
    pub fn fit(points: &[SmilePoint]) -> Result<Svi, SurfaceError> {
        let ok = points.iter().all(|p| {
            p.k.is_finite()
                && p.w.is_finite()
                && p.w > 0.0
                && p.weight.is_finite()
                && p.weight > 0.0
        });
        if points.len() < 5 || !ok {
            return Err(SurfaceError::BadQuotes);
        }
        let (k_min, k_max) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
            (lo.min(p.k), hi.max(p.k))
        });
        let w_max = points.iter().fold(0.0f64, |acc, p| acc.max(p.w));
        let objective = |m: f64, sigma: f64| -> (f64, Svi) {
            let sigma = sigma.abs().max(1e-4);
            let svi = inner_fit(points, m, sigma, w_max);
            let err = points
                .iter()
                .map(|p| p.weight * (svi.w(p.k) - p.w).powi(2))
                .sum::<f64>();
            (err, svi)
        };
        let mut best: Option<(f64, Svi)> = None;
        for m0 in [k_min, 0.5 * (k_min + k_max), k_max, 0.0] {
            for s0 in [0.05, 0.2, 0.6] {
                let (m, s) = nelder_mead(|v| objective(v[0], v[1]).0, [m0, s0], [0.1, 0.05], 400);
                let candidate = objective(m, s);
                if best.as_ref().is_none_or(|b| candidate.0 < b.0) {
                    best = Some(candidate);
                }
            }
        }
        let svi = best.map(|b| b.1).ok_or(SurfaceError::BadQuotes)?;
        svi.validate()?;
        Ok(svi)
    }
}

/// The linear part of the quasi-explicit fit at fixed `(m, sigma)`.
fn inner_fit(points: &[SmilePoint], m: f64, sigma: f64, w_max: f64) -> Svi {
    // w = a + d*y + c*z with y = (k-m)/sigma, z = sqrt(y^2+1); c = b*sigma, d = rho*b*sigma.
    let mut ata = [[0.0f64; 3]; 3];
    let mut atb = [0.0f64; 3];
    for p in points {
        let y = (p.k - m) / sigma;
        let row = [1.0, y, (y * y + 1.0).sqrt()];
        for i in 0..3 {
            for j in 0..3 {
                ata[i][j] += p.weight * row[i] * row[j];
            }
            atb[i] += p.weight * row[i] * p.w;
        }
    }
    let solved = solve3(ata, atb).unwrap_or([w_max * 0.5, 0.0, 0.0]);
    let (mut d, mut c) = (solved[1], solved[2]);
    // Project onto the domain: c >= 0, |d| <= c, a + sqrt(c^2 - d^2) >= 0 (non-negative variance),
    // then refit the level a with (c, d) fixed.
    c = c.clamp(0.0, 4.0 * sigma.max(1.0) * 10.0);
    d = d.clamp(-0.999 * c, 0.999 * c);
    let (mut num, mut den) = (0.0, 0.0);
    for p in points {
        let y = (p.k - m) / sigma;
        num += p.weight * (p.w - d * y - c * (y * y + 1.0).sqrt());
        den += p.weight;
    }
    let a = (num / den).max(-(c * c - d * d).max(0.0).sqrt());
    let b = c / sigma;
    let rho = if c > 0.0 { d / c } else { 0.0 };
    Svi {
        a,
        b,
        rho,
        m,
        sigma,
    }
}

fn solve3(mut a: [[f64; 3]; 3], mut b: [f64; 3]) -> Option<[f64; 3]> {
    for col in 0..3 {
        let pivot = (col..3).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-300 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..3 {
            let factor = a[row][col] / a[col][col];
            for k in col..3 {
                a[row][k] -= factor * a[col][k];
            }
            b[row] -= factor * b[col];
        }
    }
    let mut x = [0.0; 3];
    for row in (0..3).rev() {
        let tail: f64 = (row + 1..3).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - tail) / a[row][row];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// Nelder-Mead in two dimensions.
fn nelder_mead(
    f: impl Fn([f64; 2]) -> f64,
    start: [f64; 2],
    step: [f64; 2],
    iterations: usize,
) -> (f64, f64) {
    let mut simplex = [
        start,
        [start[0] + step[0], start[1]],
        [start[0], start[1] + step[1]],
    ];
    let mut values = simplex.map(&f);
    for _ in 0..iterations {
        let mut order = [0, 1, 2];
        order.sort_by(|&i, &j| values[i].total_cmp(&values[j]));
        let (best, mid, worst) = (order[0], order[1], order[2]);
        if (values[worst] - values[best]).abs() <= 1e-16 * (1.0 + values[best].abs()) {
            break;
        }
        let centroid = [
            (simplex[best][0] + simplex[mid][0]) / 2.0,
            (simplex[best][1] + simplex[mid][1]) / 2.0,
        ];
        let toward = |t: f64| {
            [
                centroid[0] + t * (simplex[worst][0] - centroid[0]),
                centroid[1] + t * (simplex[worst][1] - centroid[1]),
            ]
        };
        let reflected = toward(-1.0);
        let fr = f(reflected);
        if fr < values[best] {
            let expanded = toward(-2.0);
            let fe = f(expanded);
            (simplex[worst], values[worst]) = if fe < fr {
                (expanded, fe)
            } else {
                (reflected, fr)
            };
        } else if fr < values[mid] {
            (simplex[worst], values[worst]) = (reflected, fr);
        } else {
            let contracted = toward(0.5);
            let fc = f(contracted);
            if fc < values[worst] {
                (simplex[worst], values[worst]) = (contracted, fc);
            } else {
                for i in [mid, worst] {
                    simplex[i] = [
                        (simplex[i][0] + simplex[best][0]) / 2.0,
                        (simplex[i][1] + simplex[best][1]) / 2.0,
                    ];
                    values[i] = f(simplex[i]);
                }
            }
        }
    }
    let best = (0..3)
        .min_by(|&i, &j| values[i].total_cmp(&values[j]))
        .unwrap_or(0);
    (simplex[best][0], simplex[best][1].abs().max(1e-4))
}

/// One expiry of a surface.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slice {
    /// Years to expiry.
    pub t: f64,
    /// The smile.
    pub svi: Svi,
}

/// A volatility surface for one underlying: SVI slices by expiry, an index price and a flat rate
/// (funding basis), interpolated linearly in total variance at fixed log-moneyness.
#[derive(Debug, Clone, PartialEq)]
pub struct Surface {
    /// Index (spot) price.
    pub spot: f64,
    /// Continuously compounded rate used for forwards and discounting.
    pub rate: f64,
    slices: Vec<Slice>,
}

/// The log-moneyness grid the arbitrage checks use.
pub fn check_grid() -> Vec<f64> {
    (-60..=60).map(|i| f64::from(i) * 0.025).collect()
}

impl Surface {
    /// Builds a surface, refusing bad parameters, unordered expiries and any butterfly or
    /// calendar arbitrage on the check grid.
    pub fn new(spot: f64, rate: f64, mut slices: Vec<Slice>) -> Result<Self, SurfaceError> {
        slices.sort_by(|a, b| a.t.total_cmp(&b.t));
        if !(spot.is_finite() && spot > 0.0 && rate.is_finite())
            || slices.is_empty()
            || slices.iter().any(|s| !(s.t.is_finite() && s.t > 0.0))
            || slices.windows(2).any(|w| w[0].t >= w[1].t)
        {
            return Err(SurfaceError::BadExpiries);
        }
        let grid = check_grid();
        for s in &slices {
            s.svi.validate()?;
            if let Some(k) = s.svi.butterfly_violations(&grid).first() {
                return Err(SurfaceError::Arbitrage(format!(
                    "butterfly at T={:.4}, k={k}",
                    s.t
                )));
            }
        }
        for w in slices.windows(2) {
            if let Some(k) = grid
                .iter()
                .find(|&&k| w[1].svi.w(k) < w[0].svi.w(k) - 1e-12)
            {
                return Err(SurfaceError::Arbitrage(format!(
                    "calendar between T={:.4} and T={:.4} at k={k}",
                    w[0].t, w[1].t
                )));
            }
        }
        Ok(Self { spot, rate, slices })
    }

    /// Forward for expiry `t`.
    pub fn forward(&self, t: f64) -> f64 {
        self.spot * (self.rate * t).exp()
    }

    /// Total variance at log-moneyness `k` and time `t`: linear in `t` between slices, constant
    /// implied volatility outside them.
    pub fn total_variance(&self, k: f64, t: f64) -> f64 {
        let first = self.slices[0];
        let last = self.slices[self.slices.len() - 1];
        if t <= first.t {
            return first.svi.w(k) * t / first.t;
        }
        if t >= last.t {
            return last.svi.w(k) * t / last.t;
        }
        let i = self.slices.partition_point(|s| s.t <= t);
        let (lo, hi) = (self.slices[i - 1], self.slices[i]);
        let x = (t - lo.t) / (hi.t - lo.t);
        lo.svi.w(k) * (1.0 - x) + hi.svi.w(k) * x
    }

    /// Implied volatility for strike `strike` at `t`.
    pub fn vol(&self, strike: f64, t: f64) -> f64 {
        let k = (strike / self.forward(t)).ln();
        (self.total_variance(k, t).max(0.0) / t).sqrt()
    }

    /// Mark price and Greeks of one option (per unit of underlying).
    pub fn mark(&self, right: Right, strike: f64, t: f64) -> Greeks {
        let f = self.forward(t);
        black76(
            right,
            f,
            strike,
            t,
            self.vol(strike, t),
            (-self.rate * t).exp(),
        )
    }

    /// The same surface with the index moved by `spot_shock` (relative) and every volatility
    /// scaled by `1 + vol_shock`, sticky in log-moneyness.
    pub fn shocked(&self, spot_shock: f64, vol_shock: f64) -> Surface {
        let scale = (1.0 + vol_shock).max(0.0).powi(2);
        let slices = self
            .slices
            .iter()
            .map(|s| Slice {
                t: s.t,
                svi: Svi {
                    a: s.svi.a * scale,
                    b: s.svi.b * scale,
                    ..s.svi
                },
            })
            .collect();
        Surface {
            spot: self.spot * (1.0 + spot_shock),
            rate: self.rate,
            slices,
        }
    }

    /// The slices.
    pub fn slices(&self) -> &[Slice] {
        &self.slices
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smile() -> Svi {
        Svi {
            a: 0.02,
            b: 0.1,
            rho: -0.4,
            m: 0.05,
            sigma: 0.2,
        }
    }

    #[test]
    fn fit_recovers_a_known_smile() {
        let truth = smile();
        let points: Vec<SmilePoint> = (-10..=10)
            .map(|i| f64::from(i) * 0.08)
            .map(|k| SmilePoint {
                k,
                w: truth.w(k),
                weight: 1.0,
            })
            .collect();
        let fitted = Svi::fit(&points).expect("fits");
        for p in &points {
            assert!(
                (fitted.w(p.k) - p.w).abs() < 1e-6,
                "at k={}: {} vs {}",
                p.k,
                fitted.w(p.k),
                p.w
            );
        }
    }

    #[test]
    fn bad_quotes_and_arbitrage_are_refused() {
        assert_eq!(
            Svi::fit(
                &[SmilePoint {
                    k: 0.0,
                    w: 0.1,
                    weight: 1.0
                }; 3]
            ),
            Err(SurfaceError::BadQuotes)
        );
        let nan = vec![
            SmilePoint {
                k: f64::NAN,
                w: 0.1,
                weight: 1.0
            };
            6
        ];
        assert_eq!(Svi::fit(&nan), Err(SurfaceError::BadQuotes));
        // A far expiry with less variance than the near one: calendar arbitrage.
        let near = Slice {
            t: 0.1,
            svi: smile(),
        };
        let far = Slice {
            t: 0.2,
            svi: Svi {
                a: 0.001,
                ..smile()
            },
        };
        assert!(matches!(
            Surface::new(60_000.0, 0.0, vec![near, far]),
            Err(SurfaceError::Arbitrage(_))
        ));
        // Wings steeper than Roger Lee's bound (b (1 + |rho|) > 4 / T-scaled): butterfly arbitrage.
        let steep = Slice {
            t: 0.1,
            svi: Svi {
                a: 0.0,
                b: 3.0,
                rho: 0.9,
                m: 0.0,
                sigma: 0.01,
            },
        };
        assert!(matches!(
            Surface::new(60_000.0, 0.0, vec![steep]),
            Err(SurfaceError::Arbitrage(_))
        ));
        assert_eq!(
            Surface::new(60_000.0, 0.0, vec![]),
            Err(SurfaceError::BadExpiries)
        );
    }

    #[test]
    fn interpolation_is_monotone_in_time_and_matches_slices() {
        let s = Surface::new(
            60_000.0,
            0.01,
            vec![
                Slice {
                    t: 0.1,
                    svi: smile(),
                },
                Slice {
                    t: 0.5,
                    svi: Svi { a: 0.08, ..smile() },
                },
            ],
        )
        .expect("valid");
        assert!((s.total_variance(0.1, 0.1) - smile().w(0.1)).abs() < 1e-15);
        let mut last = 0.0;
        for i in 1..100 {
            let w = s.total_variance(-0.2, f64::from(i) * 0.01);
            assert!(w >= last);
            last = w;
        }
        let mark = s.mark(Right::Call, 60_000.0, 0.25);
        assert!(mark.price > 0.0 && mark.delta > 0.4 && mark.delta < 0.7);
    }
}
