//! Risk-oracle inputs and the risk parameters the engine applies to them.
//!
//! The oracle publishes, per underlying, an index price and for each instrument a mark price and
//! a risk array (the P&L of one contract in each scenario of the published scenario set), as one
//! signed, timestamped update. The gateway checks the signature before sequencing; the engine
//! checks freshness, ordering and the circuit breaker, and uses marks and risk arrays for
//! standard and portfolio margin.

use crate::fixed::{Amount, Price};
use crate::ids::InstrumentId;

/// Most session keys one account may have registered at once.
pub const MAX_SESSION_KEYS: usize = 16;

/// Longest underlying symbol accepted in an update.
pub const MAX_UNDERLYING_LEN: usize = 16;

/// How an account is margined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum MarginMode {
    /// Fully collateralized worst case over `[0, underlying_cap]` (no marks needed; never
    /// liquidated). The default.
    #[default]
    WorstCase,
    /// Deribit-style per-position margin from marks.
    Standard,
    /// Portfolio margin: worst scenario loss from the risk arrays, with floors for short options.
    Portfolio,
}

impl MarginMode {
    /// Its code in snapshots, the input log and the settlement state (0, 1, 2 in declaration
    /// order).
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The mode with `code`, if any.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::WorstCase),
            1 => Some(Self::Standard),
            2 => Some(Self::Portfolio),
            _ => None,
        }
    }
}

/// One instrument's mark and risk array in an oracle update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkUpdate {
    /// Instrument (of the update's underlying).
    pub instrument: InstrumentId,
    /// Mark price per contract.
    pub mark: Price,
    /// P&L of one long contract per scenario, in micro-USDC, `RiskConfig::scenarios` entries.
    pub risk_array: Vec<Amount>,
    /// The oracle's own signature of this mark (`r || s || v`, EIP-712
    /// `optio_intents::OracleMark` under the rollup's domain, with the update's time): the
    /// engine does not read it; the gateway checks it, and the batcher posts it beside the
    /// batch's mark op so that L1 can judge the mark (docs/settlement.md, "Mark challenge").
    pub attestation: [u8; 65],
}

/// An expired instrument's settlement price in an oracle update: the underlying's TWAP over
/// the settlement window before the instrument's expiry, as the oracle computed it from the
/// index it published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettlementUpdate {
    /// Instrument (of the update's underlying), expired at or before the update's time.
    pub instrument: InstrumentId,
    /// Settlement price of the underlying.
    pub price: Price,
    /// The oracle's own signature of this price (`r || s || v`, EIP-712
    /// `optio_intents::OracleSettlement` under the rollup's domain, with the update's time):
    /// the gateway checks it, and the batcher posts it beside the batch's settlement op so
    /// that L1 can judge the price (docs/settlement.md, "Price challenge").
    pub attestation: [u8; 65],
}

/// The range of one contract's value over its risk array's scenarios and the no-move one,
/// `(mark + min(0, min_s RA[s]), mark + max(0, max_s RA[s]))` in micro-USDC. A liquidation moves
/// a position only at a price inside it on the liquidated account's side: a long is sold at no
/// less than the low end, a short bought back at no more than the high end (docs/risk.md,
/// "Liquidation"). The engine holds its auction and deleveraging prices to it, and the validity
/// circuit proves it against the committed mark and risk array.
pub fn stress_range(mark: Price, risk: impl IntoIterator<Item = i64>) -> (i128, i128) {
    let (low, high) = risk
        .into_iter()
        .fold((0i64, 0i64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let mark = i128::from(mark.0);
    (mark + i128::from(low), mark + i128::from(high))
}

/// A signed, timestamped oracle update for one underlying (the signature is checked before
/// sequencing and is not part of the engine input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OracleUpdate {
    /// Underlying symbol, e.g. `BTC`.
    pub underlying: String,
    /// When the oracle produced it (ms since the epoch).
    pub published_ms: u64,
    /// Index price of the underlying.
    pub index_price: Price,
    /// Marks and risk arrays; instruments not named keep their previous ones.
    pub marks: Vec<MarkUpdate>,
    /// Settlement prices of expired instruments (one already settled is passed over, so the
    /// oracle may repeat a price until it sees the instrument settled).
    pub settlements: Vec<SettlementUpdate>,
}

/// The formats an update's bytes have had in a write-ahead log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateFormat {
    /// Before marks carried their own signature (log tag 12).
    Unattested,
    /// Marks with their signatures, no settlement prices (log tag 20).
    SignedMarks,
    /// Signed marks and settlement prices (log tag 21; what `OracleUpdate::encode` writes).
    Current,
}

/// Risk parameters. Part of the engine state: replicas must agree on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RiskConfig {
    /// Entries per risk array.
    pub scenarios: u32,
    /// An update published more than this before engine time is refused as stale.
    pub max_update_delay_ms: u64,
    /// Marks older than this (engine time minus the underlying's last accepted update) are
    /// stale: risk-increasing actions in mark-based modes are refused until a fresh update.
    pub mark_max_age_ms: u64,
    /// An index move larger than this (basis points of the last accepted index) is held until
    /// a second update confirms it.
    pub circuit_breaker_bps: u32,
    /// A held price is confirmed by a later update within this many basis points of it.
    pub confirm_tolerance_bps: u32,
    /// Perpetuals: initial margin in basis points of notional (1,000 = 10x leverage).
    pub perp_initial_bps: u32,
    /// Perpetuals: maintenance margin in basis points of notional.
    pub perp_maintenance_bps: u32,
    /// Portfolio margin: floor per net short option contract, basis points of the index.
    pub pm_short_option_floor_bps: u32,
    /// Portfolio margin: maintenance as a fraction of initial, basis points.
    pub pm_maintenance_bps: u32,
    /// Settlement TWAP window before expiry: the venue's published terms, which the oracle
    /// averages its index over (`optio_oracle::IndexHistory::twap`); the engine settles at the
    /// price the oracle signs.
    pub settlement_window_ms: u64,
    /// Liquidation auction: starting discount to mark, basis points of the contract's
    /// underlying notional (index x multiplier).
    pub liquidation_start_bps: u32,
    /// Liquidation auction: the discount it falls to (the auction's bound).
    pub liquidation_max_bps: u32,
    /// Liquidation auction: time from start to bound; after it, deleveraging is allowed.
    pub liquidation_duration_ms: u64,
    /// Largest share of a position one take may transfer while the account is solvent (bps).
    pub liquidation_step_bps: u32,
    /// Fee paid by the liquidated account to the insurance fund, bps of underlying notional
    /// (never more than the account's remaining equity). At most `MAX_LIQUIDATION_FEE_BPS`.
    pub liquidation_fee_bps: u32,
}

/// The most `RiskConfig::liquidation_fee_bps` may be: the validity circuit holds every
/// liquidation's fee to `max_liquidation_fee`, the fee at this rate with the index committed
/// with the instrument's mark, clamped to the cap (the engine prices the fee at its index
/// clamped to the cap).
pub const MAX_LIQUIDATION_FEE_BPS: u32 = 100;

/// The weight of the risk arrays in the `Portfolio` maintenance rule the validity circuit
/// proves of every `Portfolio` account that trades (`collateral * 1e8 * 1e4 + sum_i q_i *
/// (mark_i * 1e4 + RA_i[s] * PROVEN_PM_MAINTENANCE_BPS) >= 0` in every scenario and the
/// no-move one), and of every account it liquidates that it falls short of it (with the
/// engine's rounding, `SettlementState::below_maintenance`). `RiskConfig::pm_maintenance_bps`
/// must equal it.
pub const PROVEN_PM_MAINTENANCE_BPS: u32 = 8_000;

/// The short-option floor the validity circuit adds to that rule, basis points of the index
/// per short option contract, weighed by `PROVEN_PM_MAINTENANCE_BPS`: every total of the rule,
/// in 1e-12 micro-USDC, covers `ceil(rate * weight * sum |q_i| * index_i * multiplier_i /
/// 1e12)`, this rate and that weight, over the account's short options (calls and
/// puts not settled, at the index committed with each one's mark). The engine's floor at
/// `RiskConfig::pm_short_option_floor_bps`, weighed by its maintenance weight and rounded up per
/// position, implies it at the same rate, which that setting must equal (the proof also
/// liquidates only accounts short of the rule).
pub const PROVEN_PM_SHORT_OPTION_FLOOR_BPS: u32 = 100;

/// `Standard` margin's maintenance per short option contract, basis points of the index
/// (times the multiplier), on top of twice the mark (the value owed and one more): the
/// engine's fixed rate, which the validity circuit proves of every `Standard` account that
/// trades (`SettlementState::maintained`).
pub const STANDARD_SHORT_OPTION_MAINTENANCE_BPS: u32 = 750;

/// `Standard` margin's initial requirement per short option contract, basis points of the
/// index: this rate less the option's out-of-the-money amount, at least
/// `STANDARD_SHORT_OPTION_MIN_INITIAL_BPS` (each above the maintenance rate, so an account
/// that meets its initial margin is maintained).
pub const STANDARD_SHORT_OPTION_INITIAL_BPS: u32 = 1_500;

/// The least `Standard` initial requirement per short option contract, basis points of the
/// index.
pub const STANDARD_SHORT_OPTION_MIN_INITIAL_BPS: u32 = 1_000;

/// The perpetual maintenance rate the validity circuit proves of every `Standard` account that
/// trades: `ceil(|q| * mark * rate / (1e4 * 1e8))` per perpetual position, beside its value. The
/// engine's `RiskConfig::perp_maintenance_bps` must equal it and `perp_initial_bps` may not be
/// below it (its makers fill at maintenance, its takers at initial margin, and it liquidates
/// only accounts below the proven rule).
pub const PROVEN_STANDARD_PERP_MAINTENANCE_BPS: u32 = 500;

/// The deepest discount to the mark a liquidation may give the liquidator, basis points of one
/// contract's underlying value (`liquidation_reference`), which the validity circuit proves of
/// every liquidation beside its stress range: a long sold at no less than `mark - reference *
/// MAX / 1e4`, a short bought back at no more than `mark + reference * MAX / 1e4`, exactly
/// (`within_liquidation_discount`). The engine's auction may not be configured deeper
/// (`RiskConfig::liquidation_start_bps` and `liquidation_max_bps`), and it holds its rounded
/// prices to that bound.
pub const MAX_LIQUIDATION_DISCOUNT_BPS: u32 = 2_000;

/// One contract's underlying value for a liquidation's fee and discount, micro-USDC:
/// `floor(clamp(index, 0, cap) * multiplier / 1e8)` (the index clamped to the cap, as settlement
/// clamps it).
pub fn liquidation_reference(spec: &crate::InstrumentSpec, index: crate::Price) -> i128 {
    let index = i128::from(index.0.clamp(0, spec.underlying_cap.0));
    index * i128::from(spec.contract_multiplier.0) / i128::from(crate::QTY_SCALE)
}

/// The most a liquidation of `qty` contracts (either sign) of `spec` may charge the liquidated
/// account at `index`: `ceil(|qty| * liquidation_reference * MAX_LIQUIDATION_FEE_BPS / (1e4 *
/// 1e8))`, what the validity circuit allows at the index committed with the instrument's mark
/// (the engine's fee, at a rate no higher and that index, is never above it).
pub fn max_liquidation_fee(
    spec: &crate::InstrumentSpec,
    index: crate::Price,
    qty: crate::Qty,
) -> i128 {
    let q = i128::from(crate::QTY_SCALE);
    let reference = liquidation_reference(spec, index);
    let scale = 10_000 * q;
    (i128::from(qty.0).abs() * reference * i128::from(MAX_LIQUIDATION_FEE_BPS) + scale - 1) / scale
}

/// Whether a liquidation that sells a long (`long`) or buys back a short of `spec` at `price`
/// stays within `MAX_LIQUIDATION_DISCOUNT_BPS` of the reference (`liquidation_reference` at
/// `index`) from `mark`, exactly: `1e4 * (price - mark) + reference * MAX >= 0` for a long,
/// `1e4 * (mark - price) + reference * MAX >= 0` for a short.
pub fn within_liquidation_discount(
    spec: &crate::InstrumentSpec,
    index: crate::Price,
    mark: crate::Price,
    price: crate::Price,
    long: bool,
) -> bool {
    10_000 * liquidation_room(mark, price, long)
        + liquidation_reference(spec, index) * i128::from(MAX_LIQUIDATION_DISCOUNT_BPS)
        >= 0
}

/// How far a liquidation's price lies from the mark on the liquidated account's side: above it
/// for a long sold (`long`), below it for a short bought back (negative: a discount).
fn liquidation_room(mark: crate::Price, price: crate::Price, long: bool) -> i128 {
    if long {
        i128::from(price.0) - i128::from(mark.0)
    } else {
        i128::from(mark.0) - i128::from(price.0)
    }
}

/// The auction's discount at its start, in basis points of the reference: the proven schedule's
/// (`within_liquidation_schedule`). The engine may start shallower, not deeper.
pub const PROVEN_LIQUIDATION_START_BPS: u32 = 100;
/// How long the proven schedule takes to reach `MAX_LIQUIDATION_DISCOUNT_BPS`, ms of the
/// oracle's signed clock; deleveraging waits as long. The engine may take longer, not less.
pub const PROVEN_LIQUIDATION_DURATION_MS: u64 = 15 * 60_000;

/// Whether a liquidation `elapsed_ms` into its auction (by the oracle's signed clock) that sells
/// a long (`long`) or buys back a short of `spec` at `price` stays within the proven schedule's
/// discount from `mark`: `START + (MAX - START) * min(elapsed, DURATION) / DURATION` basis
/// points of the reference (`liquidation_reference` at `index`), exactly, with no rounding:
/// `1e4 * DURATION * (price - mark) + reference * (START * DURATION + (MAX - START) *
/// min(elapsed, DURATION)) >= 0` for a long, `mark - price` for a short. An engine configured
/// no deeper than the schedule (a start no deeper, a maximum no deeper, a duration no shorter:
/// `RiskConfig::unprovable`) that rounds its prices toward the liquidated account stays within
/// it at every step (`docs/settlement.md`, "The auction's schedule").
pub fn within_liquidation_schedule(
    spec: &crate::InstrumentSpec,
    index: crate::Price,
    mark: crate::Price,
    price: crate::Price,
    long: bool,
    elapsed_ms: u64,
) -> bool {
    let room = liquidation_room(mark, price, long);
    let duration = i128::from(PROVEN_LIQUIDATION_DURATION_MS);
    let (start, max) = (
        i128::from(PROVEN_LIQUIDATION_START_BPS),
        i128::from(MAX_LIQUIDATION_DISCOUNT_BPS),
    );
    let run = i128::from(elapsed_ms.min(PROVEN_LIQUIDATION_DURATION_MS));
    10_000 * duration * room
        + liquidation_reference(spec, index) * (start * duration + (max - start) * run)
        >= 0
}

impl RiskConfig {
    /// Why a validity proof could not hold an engine at these settings (some of its honest
    /// fills, liquidations or fees would be unprovable), or `None`: a liquidation fee above
    /// `MAX_LIQUIDATION_FEE_BPS`, an auction discount above `MAX_LIQUIDATION_DISCOUNT_BPS`, a
    /// `Portfolio` weight or floor other than `PROVEN_PM_MAINTENANCE_BPS` or
    /// `PROVEN_PM_SHORT_OPTION_FLOOR_BPS`, a perpetual maintenance rate other than
    /// `PROVEN_STANDARD_PERP_MAINTENANCE_BPS` or an initial rate below it. The proof holds every
    /// account that trades at or above the proven maintenance (so the engine's may not be
    /// lower) and liquidates only accounts below it (so the engine's may not be higher: an
    /// account the engine liquidates must be below the proven rule, `SettlementState::
    /// below_maintenance`). The engine's constructor, its restore and the snapshot decoder all
    /// refuse such settings with this reason.
    pub fn unprovable(&self) -> Option<&'static str> {
        if self.liquidation_fee_bps > MAX_LIQUIDATION_FEE_BPS {
            Some("liquidation fee above its provable maximum")
        } else if self.liquidation_start_bps.max(self.liquidation_max_bps)
            > MAX_LIQUIDATION_DISCOUNT_BPS
        {
            Some("liquidation discount above its provable maximum")
        } else if self.liquidation_start_bps > PROVEN_LIQUIDATION_START_BPS {
            Some("liquidation auction starting deeper than the proven schedule")
        } else if self.liquidation_duration_ms < PROVEN_LIQUIDATION_DURATION_MS {
            Some("liquidation auction shorter than the proven schedule")
        } else if self.pm_maintenance_bps != PROVEN_PM_MAINTENANCE_BPS {
            Some("portfolio maintenance other than the proven weight")
        } else if self.pm_short_option_floor_bps != PROVEN_PM_SHORT_OPTION_FLOOR_BPS {
            Some("short-option floor other than the proven rate")
        } else if self.perp_maintenance_bps != PROVEN_STANDARD_PERP_MAINTENANCE_BPS
            || self.perp_initial_bps < PROVEN_STANDARD_PERP_MAINTENANCE_BPS
        {
            Some("perpetual margin other than the proven maintenance rate")
        } else {
            None
        }
    }
}

impl Default for RiskConfig {
    fn default() -> Self {
        Self {
            scenarios: 31,
            max_update_delay_ms: 10_000,
            mark_max_age_ms: 30_000,
            circuit_breaker_bps: 1_000,
            confirm_tolerance_bps: 100,
            perp_initial_bps: 1_000,
            perp_maintenance_bps: 500,
            pm_short_option_floor_bps: 100,
            pm_maintenance_bps: 8_000,
            settlement_window_ms: 30 * 60_000,
            liquidation_start_bps: 100,
            liquidation_max_bps: 2_000,
            liquidation_duration_ms: 15 * 60_000,
            liquidation_step_bps: 2_500,
            liquidation_fee_bps: 50,
        }
    }
}

impl OracleUpdate {
    /// Canonical bytes (what the oracle signs).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = crate::codec::Writer::default();
        w.bytes(self.underlying.as_bytes());
        w.u64(self.published_ms);
        w.price(self.index_price);
        w.len(self.marks.len());
        for m in &self.marks {
            w.instrument(m.instrument);
            w.price(m.mark);
            w.amounts(&m.risk_array);
            w.bytes(&m.attestation);
        }
        w.len(self.settlements.len());
        for p in &self.settlements {
            w.instrument(p.instrument);
            w.price(p.price);
            w.bytes(&p.attestation);
        }
        w.bytes
    }

    /// Decodes bytes of format `format` (`UpdateFormat::Current`: what `encode` writes), with
    /// bounds on every length; marks without their signature decode with a zero `attestation`,
    /// updates from before settlement prices with none.
    pub fn decode(
        bytes: &[u8],
        format: UpdateFormat,
        max_marks: usize,
        max_scenarios: usize,
    ) -> Result<Self, crate::codec::DecodeError> {
        let invalid = crate::codec::DecodeError::Invalid("attestation is not 65 bytes");
        let mut r = crate::codec::Reader::new(bytes);
        let underlying = std::str::from_utf8(r.bytes(MAX_UNDERLYING_LEN)?)
            .map_err(|_| crate::codec::DecodeError::Invalid("underlying is not UTF-8"))?
            .to_owned();
        let published_ms = r.u64()?;
        let index_price = r.price()?;
        let n = r.len(max_marks)?;
        let mut marks = Vec::with_capacity(n);
        for _ in 0..n {
            let instrument = r.instrument()?;
            let mark = r.price()?;
            let risk_array = r.amounts(max_scenarios)?;
            let attestation = if format != UpdateFormat::Unattested {
                r.bytes(65)?.try_into().map_err(|_| invalid.clone())?
            } else {
                [0; 65]
            };
            marks.push(MarkUpdate {
                instrument,
                mark,
                risk_array,
                attestation,
            });
        }
        let mut settlements = Vec::new();
        if format == UpdateFormat::Current {
            let n = r.len(max_marks)?;
            settlements.reserve(n);
            for _ in 0..n {
                settlements.push(SettlementUpdate {
                    instrument: r.instrument()?,
                    price: r.price()?,
                    attestation: r.bytes(65)?.try_into().map_err(|_| invalid.clone())?,
                });
            }
        }
        r.finish()?;
        Ok(Self {
            underlying,
            published_ms,
            index_price,
            marks,
            settlements,
        })
    }
}
