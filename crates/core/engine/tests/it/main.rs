//! Integration tests of the engine: scenarios, the property test against the reference model,
//! snapshots and replay.

mod common;
mod liquidation;
mod model;
mod risk;
mod rules;
mod scenarios;
mod snapshot;
