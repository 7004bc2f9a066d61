//! The deterministic exchange core: instruments' order books, matching, the collateral ledger,
//! margin checks and expiry, as one synchronous state machine.
//!
//! Owns: the engine state and `Engine::apply(input) -> events`. Every rejected input leaves the
//! state byte-for-byte unchanged; money invariants are checked after every input in release
//! builds, and a violation stops the process (better halted than wrong).
//!
//! Must not: do I/O, read a clock, use randomness or floats, iterate a hash map into anything
//! hashed or emitted, or wait on anything. Time, prices and settlement prices are inputs.

mod book;
mod canonical;
mod engine;
mod invariants;
mod ledger;
mod liquidation;
mod query;
mod risk;

pub use canonical::RestoreError;
pub use engine::{Engine, MAX_TOTAL_COLLATERAL};
pub use invariants::InvariantViolation;
pub use query::{InstrumentMargin, InstrumentView, MarginView, OracleView};
