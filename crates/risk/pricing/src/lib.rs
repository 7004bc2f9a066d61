//! Option pricing for the risk oracle, off the engine's hot path.
//!
//! Owns: Black-Scholes-Merton (spot) and Black-76 (forward) prices and Greeks, scalar and batch;
//! a robust implied-volatility solver; SVI volatility smiles per expiry with arbitrage checks and
//! a surface interpolated in time; the scenario set and the risk arrays (P&L of one contract per
//! scenario) that the engine's portfolio margin consumes.
//!
//! Must not: feed floats into engine state. Everything here is `f64`; what crosses into the
//! engine (marks, risk arrays) is converted to fixed point by the oracle, once, with named
//! rounding. Never returns NaN: invalid input is an error.

pub mod black;
pub mod iv;
pub mod norm;
pub mod risk;
pub mod svi;

pub use black::{BatchInputs, BatchOutputs, Greeks, Right, black76, black76_batch, bsm};
pub use iv::{IvError, implied_vol_black76, implied_vol_bsm};
