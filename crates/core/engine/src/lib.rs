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

/// The version of the engine's rules: bumped with every change after which the same inputs in
/// the same order give other events or another state (a margin rate, a matching, fee,
/// liquidation or expiry rule). A log is replayed only under the rules that wrote it: the
/// sequencer records them beside its log and refuses to open a log written under others, which
/// would give other results than the ones already acknowledged and batched. The engine's tests
/// hold a fingerprint of its results on fixed histories beside this number, so a change of
/// results that does not bump it fails them.
///
/// 2: a liquidation auction's clock runs on the oracle's signed time (it starts at the latest
/// accepted update's publication time and its discount grows with later updates'), not the
/// inputs' time.
///
/// 3: an auction's price rounds toward the liquidated account (its discount down to a
/// micro-USDC from the exact rate, a long's price up to a tick, a short's down), so that every
/// step stays within the proven schedule (`optio_types::within_liquidation_schedule`); rules 2
/// rounded both against it, up to a tick past the schedule. A start deeper or a run shorter
/// than the proven schedule's is refused (`RiskConfig::unprovable`). The auction's clock
/// counts only updates that marked an instrument (whose marks, and so whose time, a batch
/// commits): one that marks nothing leaves it.
///
/// 4: an account found below maintenance has its orders cancelled at once, but its auction
/// starts at the beginning of the next accepted oracle update (before its settlements and
/// marks, at the auction clock then), within the fill budget (`Engine::start_due_liquidations`):
/// the settlement state commits the start with the marks and the time a proof checks it
/// against. Until it starts the account acts as a liquidating one, and no liquidator may bid.
/// An update's deficit covers take what its starts leave of the budget, a margin slot each
/// (before, any number of covers could fall in one update, more than a proof's margin slots).
///
/// 5: an auction ends (cured, or flat and solvent) at the beginning of the next accepted
/// oracle update, before its starts, within the same budget (`Engine::start_due_liquidations`),
/// where the settlement state posts the end a proof checks against the committed marks; until
/// then the account stays frozen and no liquidator may bid (it is not below maintenance). An
/// account left in deficit after its cover stays liquidating, its cover due again at each
/// update that has something to cover it with (before, its liquidation ended, and started
/// again at the next update).
///
/// 6: an auction's end whose account covers what its shorts can owe at worst (flat and
/// solvent, or topped up by a deposit) takes only an op slot and its account of the fill
/// budget, as a proof prices it (by the op slot's cover, no margin slot: `Engine::admit_end`);
/// before, every end took a margin slot and its positions' registers, as a start does, so
/// fewer ends, starts and covers fitted an update.
///
/// 7: a deficit's cover takes no margin slot of the fill budget (its account held nothing when
/// the update began, which a proof of circuit version 3 reads from the account leaf's count);
/// before, each took one (the proof's flat slot), so an update covered at most as many
/// deficits as a batch had margin slots.
///
/// 8: a `WorstCase` account holding positions in other instruments takes no solvency or price
/// window of the fill budget when it fills or takes a liquidated position (it covers its
/// shorts' worst case after the fill, and a proof of circuit version 4 holds every committed
/// mark to `[0, W]`, so it is solvent at any of them); before, each took a window per run of
/// ids its positions lay in, so fewer makers holding other positions fitted one order's fills.
pub const RULES: u32 = 8;
