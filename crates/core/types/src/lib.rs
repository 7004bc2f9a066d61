//! Optio's shared vocabulary, used by every stage of the pipeline.
//!
//! Owns: fixed-point money and sizes with named rounding ([`fixed`]), instruments and their
//! names ([`instrument`]), identifiers, the engine's inputs and events, the stable rejection
//! codes, the margin interface, and the canonical state encoding with its hash.
//!
//! Must not: hold state, do I/O, read clocks, or use floats. Everything here is plain data and
//! pure functions, so that the engine, the reference model, and later the settlement circuit
//! and the L1 contracts agree on one definition.

pub mod codec;
pub mod event;
pub mod fixed;
pub mod ids;
pub mod input;
pub mod input_codec;
pub mod instrument;
pub mod margin;
pub mod oracle;
pub mod reject;
pub mod state;

pub use event::{DoneReason, Event};
pub use fixed::{Amount, ArithError, FeeRate, MONEY_SCALE, Price, QTY_SCALE, Qty, Rounding};
pub use ids::{AccountId, Address, InstrumentId, OrderId};
pub use input::{
    Command, Input, NewOrder, OrderRef, OrderType, Quote, SelfTradePrevention, Side, TimeInForce,
};
pub use instrument::{
    InstrumentKind, InstrumentName, InstrumentSpec, InstrumentStatus, OptionRight,
};
pub use margin::{
    Exposure, MarginModel, WorstCaseMargin, forced_withdrawal, full_collateral, short_liability,
};
pub use oracle::{
    MAX_LIQUIDATION_DISCOUNT_BPS, MAX_LIQUIDATION_FEE_BPS, MarginMode, MarkUpdate, OracleUpdate,
    PROVEN_LIQUIDATION_DURATION_MS, PROVEN_LIQUIDATION_START_BPS, PROVEN_PM_MAINTENANCE_BPS,
    PROVEN_PM_SHORT_OPTION_FLOOR_BPS, PROVEN_STANDARD_PERP_MAINTENANCE_BPS, RiskConfig,
    STANDARD_SHORT_OPTION_INITIAL_BPS, STANDARD_SHORT_OPTION_MAINTENANCE_BPS,
    STANDARD_SHORT_OPTION_MIN_INITIAL_BPS, SettlementUpdate, UpdateFormat, liquidation_reference,
    max_liquidation_fee, stress_range, within_liquidation_discount, within_liquidation_schedule,
};
pub use reject::RejectCode;
pub use state::{CanonicalState, EngineLimits, FillBudget, MarkWindows, ProofLimits, SettleBudget};
