//! Scenarios and risk arrays: the P&L of one contract of each instrument under a fixed set of
//! market moves. The engine's portfolio margin is a max over these scenarios of a sum, so it stays
//! linear algebra that a circuit and Solidity can replay.
//!
//! Default scenario set (31 scenarios), chosen against the peers (see README): spot moves of
//! -20% to +20% in 5% steps (Derive uses the same grid; Deribit goes to +-16%, Paradex to +-16%
//! in its standard set) crossed with volatility down 30% / unchanged / up 30% (relative), plus four
//! tail scenarios: -35% and +35% spot with volatility +40%, -50% and +50% with +60%.

use crate::black::Right;
use crate::svi::Surface;

/// One market move.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scenario {
    /// Relative index move (-0.2 = down 20%).
    pub spot_shock: f64,
    /// Relative volatility move (0.3 = every implied volatility times 1.3).
    pub vol_shock: f64,
}

/// The default scenario set described in the module documentation.
pub fn default_scenarios() -> Vec<Scenario> {
    let mut out = Vec::with_capacity(31);
    for spot in [-0.20, -0.15, -0.10, -0.05, 0.0, 0.05, 0.10, 0.15, 0.20] {
        for vol in [-0.30, 0.0, 0.30] {
            out.push(Scenario {
                spot_shock: spot,
                vol_shock: vol,
            });
        }
    }
    for (spot, vol) in [(-0.35, 0.40), (0.35, 0.40), (-0.50, 0.60), (0.50, 0.60)] {
        out.push(Scenario {
            spot_shock: spot,
            vol_shock: vol,
        });
    }
    out
}

/// What the risk engine needs to know about an instrument.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Contract {
    /// European option: right, strike, years to expiry, units of underlying per contract.
    Option {
        /// Call or put.
        right: Right,
        /// Strike.
        strike: f64,
        /// Years to expiry.
        t: f64,
        /// Units of underlying per contract.
        multiplier: f64,
    },
    /// Perpetual: units of underlying per contract.
    Perpetual {
        /// Units of underlying per contract.
        multiplier: f64,
    },
}

/// Value of one contract on a surface.
pub fn value(surface: &Surface, contract: &Contract) -> f64 {
    match *contract {
        Contract::Option {
            right,
            strike,
            t,
            multiplier,
        } => multiplier * surface.mark(right, strike, t).price,
        Contract::Perpetual { multiplier } => multiplier * surface.spot,
    }
}

/// Risk arrays for many instruments: `out[i * scenarios.len() + s]` is the P&L of one long
/// contract of instrument `i` in scenario `s` (shocked value minus current value). The shocked
/// surfaces are built once per scenario, not once per instrument.
pub fn risk_arrays(
    surface: &Surface,
    contracts: &[Contract],
    scenarios: &[Scenario],
    out: &mut [f64],
) {
    let n = scenarios.len();
    assert_eq!(
        out.len(),
        contracts.len() * n,
        "output must hold instruments x scenarios"
    );
    let base: Vec<f64> = contracts.iter().map(|c| value(surface, c)).collect();
    for (s, scenario) in scenarios.iter().enumerate() {
        let shocked = surface.shocked(scenario.spot_shock, scenario.vol_shock);
        for (i, c) in contracts.iter().enumerate() {
            out[i * n + s] = value(&shocked, c) - base[i];
        }
    }
}

/// Worst scenario loss of a portfolio (positive = loss): `max_s(-sum_i q_i * RA_i[s])`, floored
/// at zero. `positions` holds (instrument index, signed contracts).
pub fn portfolio_loss(positions: &[(usize, f64)], arrays: &[f64], scenarios: usize) -> f64 {
    let mut worst = 0.0f64;
    for s in 0..scenarios {
        let pnl: f64 = positions
            .iter()
            .map(|&(i, q)| q * arrays[i * scenarios + s])
            .sum();
        worst = worst.max(-pnl);
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::svi::{Slice, Svi};

    fn surface() -> Surface {
        let svi = Svi {
            a: 0.01,
            b: 0.08,
            rho: -0.3,
            m: 0.0,
            sigma: 0.2,
        };
        Surface::new(
            60_000.0,
            0.0,
            vec![
                Slice { t: 0.05, svi },
                Slice {
                    t: 0.3,
                    svi: Svi { a: 0.05, ..svi },
                },
            ],
        )
        .expect("valid")
    }

    #[test]
    fn a_hedge_never_raises_the_worst_loss() {
        let s = surface();
        let scenarios = default_scenarios();
        assert_eq!(scenarios.len(), 31);
        let contracts = [
            Contract::Option {
                right: Right::Call,
                strike: 65_000.0,
                t: 0.1,
                multiplier: 1.0,
            },
            Contract::Perpetual { multiplier: 1.0 },
        ];
        let mut arrays = vec![0.0; contracts.len() * scenarios.len()];
        risk_arrays(&s, &contracts, &scenarios, &mut arrays);
        let naked = portfolio_loss(&[(0, -1.0)], &arrays, scenarios.len());
        let hedged = portfolio_loss(&[(0, -1.0), (1, 0.35)], &arrays, scenarios.len());
        assert!(
            naked > 0.0 && hedged < naked,
            "naked {naked} hedged {hedged}"
        );
        // The long perpetual loses exactly 50% of spot in the -50% tail.
        assert!((portfolio_loss(&[(1, 1.0)], &arrays, scenarios.len()) - 30_000.0).abs() < 1e-6);
    }
}
