//! Snapshot → restore gives the same hash; replaying the same input log gives the same hash;
//! a restored engine continues exactly like the original; damaged snapshots are refused.

use optio_engine::{Engine, RestoreError};
use optio_types::codec::DecodeError;
use optio_types::{CanonicalState, WorstCaseMargin};
use proptest::prelude::*;

use crate::model::{budgeted_limits, check_against_reference, op, test_limits};

fn replay(limits: optio_types::EngineLimits, inputs: &[optio_types::Input]) -> Engine {
    let mut engine = Engine::new(limits);
    let mut events = Vec::new();
    for input in inputs {
        let _ = engine.apply(input, &mut events);
    }
    engine
}

/// A liquidation fee rate above what a validity proof can prove
/// (`MAX_LIQUIDATION_FEE_BPS`) is refused, in a decoded state and in the snapshot's bytes.
#[test]
fn a_liquidation_fee_above_the_provable_maximum_is_refused() {
    let bytes = busy_snapshot();
    let mut state = CanonicalState::decode(&bytes).expect("decodes");
    state.risk.liquidation_fee_bps = optio_types::MAX_LIQUIDATION_FEE_BPS;
    Engine::restore(&state, WorstCaseMargin).expect("at the maximum");
    state.risk.liquidation_fee_bps += 1;
    assert!(matches!(
        Engine::restore(&state, WorstCaseMargin),
        Err(RestoreError::Invariant(_))
    ));
    assert!(matches!(
        Engine::restore_bytes(&state.encode(), WorstCaseMargin),
        Err(RestoreError::Decode(DecodeError::Invalid(_)))
    ));
}

/// A position held at no cost restores (found by `optio sim`, seed 6: the backstop took 0.96 of
/// an expiring put by a forced close at its mark of one micro-USDC, for a floor of 0, and the
/// node could not restart from its next snapshot; the simulator's full audits now restore the
/// live state too, `Gateway::check_invariants`); a flat position with a cost is refused.
#[test]
fn a_position_held_at_no_cost_restores_and_a_flat_one_with_a_cost_does_not() {
    let mut state = CanonicalState::decode(&busy_snapshot()).expect("decodes");
    let (a, p) = state
        .accounts
        .iter()
        .enumerate()
        .find_map(|(a, acct)| {
            acct.positions
                .iter()
                .position(|p| p.qty.0 != 0)
                .map(|p| (a, p))
        })
        .expect("the snapshot holds a position");
    state.accounts[a].positions[p].cost = optio_types::Amount(0);
    let restored = Engine::restore(&state, WorstCaseMargin).expect("a position at no cost");
    assert_eq!(restored.canonical(), state);
    let mut flat = state.clone();
    let position = &mut flat.accounts[a].positions[p];
    (position.qty, position.cost, position.realized_pnl) = (
        optio_types::Qty(0),
        optio_types::Amount(1),
        optio_types::Amount(1),
    );
    let refused = Engine::restore(&flat, WorstCaseMargin)
        .err()
        .expect("refused");
    assert!(
        refused.to_string().contains("with cost but no size"),
        "{refused}"
    );
}

/// Each of `settings` at `proven` (the one a validity proof checks) restores; one `past` it (a
/// unit below a least setting, above a most) is refused, in a decoded state, in the snapshot's
/// bytes (with `message`) and by the engine's constructor.
fn refused_past_proven<T: Copy>(
    settings: &[fn(&mut optio_types::RiskConfig) -> &mut T],
    proven: T,
    past: fn(T) -> T,
    message: &'static str,
) {
    for setting in settings {
        refused_one_past_proven(*setting, proven, past, message);
    }
}

fn refused_one_past_proven<T: Copy>(
    setting: fn(&mut optio_types::RiskConfig) -> &mut T,
    proven: T,
    past: fn(T) -> T,
    message: &'static str,
) {
    let mut state = CanonicalState::decode(&busy_snapshot()).expect("decodes");
    *setting(&mut state.risk) = proven;
    Engine::restore(&state, WorstCaseMargin).expect("at the proven setting");
    *setting(&mut state.risk) = past(proven);
    assert!(matches!(
        Engine::restore(&state, WorstCaseMargin),
        Err(RestoreError::Invariant(_))
    ));
    assert_eq!(
        CanonicalState::decode(&state.encode()),
        Err(DecodeError::Invalid(message))
    );
    let risk = state.risk;
    let built = std::panic::catch_unwind(|| {
        Engine::with_config(state.limits, risk, WorstCaseMargin);
    });
    assert!(built.is_err(), "the constructor refuses it");
}

/// A `Portfolio` maintenance weight other than the one a validity proof checks
/// (`PROVEN_PM_MAINTENANCE_BPS`: a lower one would make honest fills unprovable, a higher one
/// honest liquidations) is refused.
#[test]
fn a_portfolio_maintenance_other_than_the_proven_weight_is_refused() {
    refused_off_proven(
        |r| &mut r.pm_maintenance_bps,
        optio_types::PROVEN_PM_MAINTENANCE_BPS,
        "portfolio maintenance other than the proven weight",
    );
}

/// `setting` a unit below and a unit above `proven` is refused, as `refused_past_proven` has it.
fn refused_off_proven(
    setting: fn(&mut optio_types::RiskConfig) -> &mut u32,
    proven: u32,
    message: &'static str,
) {
    for past in [|v| v - 1, |v| v + 1] {
        refused_past_proven(&[setting], proven, past, message);
    }
}

/// An auction discount deeper than a validity proof allows (`MAX_LIQUIDATION_DISCOUNT_BPS`), at
/// its start or at its end, is refused; so is a start deeper than the proven schedule's
/// (`PROVEN_LIQUIDATION_START_BPS`), and an auction that runs its course faster than it
/// (`PROVEN_LIQUIDATION_DURATION_MS`): either would sell below the schedule a proof holds each
/// liquidation to.
#[test]
fn a_liquidation_discount_above_the_provable_maximum_is_refused() {
    refused_past_proven(
        &[|r| &mut r.liquidation_max_bps],
        optio_types::MAX_LIQUIDATION_DISCOUNT_BPS,
        |v| v + 1,
        "liquidation discount above its provable maximum",
    );
    refused_past_proven(
        &[|r| &mut r.liquidation_start_bps],
        optio_types::PROVEN_LIQUIDATION_START_BPS,
        |v| v + 1,
        "liquidation auction starting deeper than the proven schedule",
    );
    refused_past_proven(
        &[|r| &mut r.liquidation_duration_ms],
        optio_types::PROVEN_LIQUIDATION_DURATION_MS,
        |v| v - 1,
        "liquidation auction shorter than the proven schedule",
    );
}

/// Perpetual margin below the maintenance rate a validity proof checks of every `Standard`
/// account that trades (`PROVEN_STANDARD_PERP_MAINTENANCE_BPS`: its makers fill at
/// maintenance, its takers at initial margin, so neither may be lower) is refused, and so is a
/// maintenance rate above it (the proof liquidates only accounts below the proven rule).
#[test]
fn perpetual_margin_other_than_the_proven_rate_is_refused() {
    let message = "perpetual margin other than the proven maintenance rate";
    refused_past_proven(
        &[|r| &mut r.perp_maintenance_bps, |r| &mut r.perp_initial_bps],
        optio_types::PROVEN_STANDARD_PERP_MAINTENANCE_BPS,
        |v| v - 1,
        message,
    );
    refused_past_proven(
        &[|r| &mut r.perp_maintenance_bps],
        optio_types::PROVEN_STANDARD_PERP_MAINTENANCE_BPS,
        |v| v + 1,
        message,
    );
}

/// A short-option floor other than the one a validity proof counts in the `Portfolio`
/// maintenance rule (`PROVEN_PM_SHORT_OPTION_FLOOR_BPS`) is refused.
#[test]
fn a_short_option_floor_other_than_the_proven_rate_is_refused() {
    refused_off_proven(
        |r| &mut r.pm_short_option_floor_bps,
        optio_types::PROVEN_PM_SHORT_OPTION_FLOOR_BPS,
        "short-option floor other than the proven rate",
    );
}

/// A fill budget or mark windows whose windows span more than 2^32 instrument ids are refused
/// in a snapshot's bytes; 2^32 decodes.
#[test]
fn a_fill_budget_window_beyond_the_ids_is_refused() {
    let mut state = CanonicalState::decode(&busy_snapshot()).expect("decodes");
    state.limits.fill_budget.window_bits = 32;
    state.limits.mark_windows.bits = 32;
    assert_eq!(CanonicalState::decode(&state.encode()), Ok(state.clone()));
    let mut wide = state.clone();
    wide.limits.fill_budget.window_bits = 33;
    assert_eq!(
        CanonicalState::decode(&wide.encode()),
        Err(DecodeError::Invalid("fill budget window above 2^32 ids"))
    );
    state.limits.mark_windows.bits = 33;
    assert_eq!(
        CanonicalState::decode(&state.encode()),
        Err(DecodeError::Invalid("mark window above 2^32 ids"))
    );
}

/// A snapshot written before the oracle signed settlement prices (version 4: each oracle
/// record followed by the index samples the engine then averaged itself) still decodes, the
/// samples read past, and so does one written before the fill budget (version 5, and 4), with
/// no budget, or before the mark windows (version 6, and 5 and 4), with none, or before the
/// settlement budget (version 7, and 6, 5 and 4), with none, or before the fill budget bounded
/// `Portfolio` accounts (version 8, and the rest), with that part unbounded; one of another
/// version does not.
#[test]
fn a_snapshot_with_index_samples_still_decodes() {
    let mut state = CanonicalState::decode(&busy_snapshot()).expect("decodes");
    state.oracles.clear();
    let without = state.encode();
    state.oracles.push(optio_types::state::OracleRecord {
        underlying: "BTC".into(),
        index_price: optio_types::Price(60_000_000_000),
        published_ms: 1_000,
        held: Some((optio_types::Price(70_000_000_000), 1_500)),
    });
    let with = state.encode();
    // The record sits where the two encodings first differ (its list's length), 4 bytes on.
    let at = without
        .iter()
        .zip(&with)
        .position(|(a, b)| a != b)
        .expect("they differ");
    let end = at + 4 + (with.len() - without.len());
    let mut old = with[..end].to_vec();
    old[8..12].copy_from_slice(&4u32.to_le_bytes());
    old.extend_from_slice(&2u32.to_le_bytes());
    for (t, p) in [(900u64, 59_000_000_000i64), (1_000, 60_000_000_000)] {
        old.extend_from_slice(&t.to_le_bytes());
        old.extend_from_slice(&p.to_le_bytes());
    }
    old.extend_from_slice(&with[end..]);
    // Versions 4 and 5 have no fill budget: its 20 bytes sit where a budget first changes the
    // encoding, before version 7 no mark windows, the 8 bytes after it, before version 8 no
    // settlement budget, the 12 bytes after those, nor the list of unposted expiries at the end
    // (4 bytes when empty), and before version 9 no Portfolio part of the fill budget, the 12
    // bytes after the settlement budget.
    let budget_at = {
        let mut budgeted = state.clone();
        budgeted.limits.fill_budget.fills = 1;
        with.iter()
            .zip(budgeted.encode())
            .position(|(a, b)| *a != b)
            .expect("the budget is encoded")
    };
    old.drain(budget_at..budget_at + 52);
    old.truncate(old.len() - 4);
    let mut v5 = with.clone();
    v5.truncate(v5.len() - 4);
    v5.drain(budget_at..budget_at + 52);
    v5[8..12].copy_from_slice(&5u32.to_le_bytes());
    let mut v6 = with.clone();
    v6.truncate(v6.len() - 4);
    v6.drain(budget_at + 20..budget_at + 52);
    v6[8..12].copy_from_slice(&6u32.to_le_bytes());
    let mut v7 = with.clone();
    v7.truncate(v7.len() - 4);
    v7.drain(budget_at + 28..budget_at + 52);
    v7[8..12].copy_from_slice(&7u32.to_le_bytes());
    let mut v8 = with.clone();
    v8.drain(budget_at + 40..budget_at + 52);
    v8[8..12].copy_from_slice(&8u32.to_le_bytes());
    assert_eq!(state.limits.fill_budget, optio_types::FillBudget::UNBOUNDED);
    assert_eq!(
        state.limits.mark_windows,
        optio_types::MarkWindows::UNBOUNDED
    );
    assert_eq!(
        state.limits.settle_budget,
        optio_types::SettleBudget::UNBOUNDED
    );
    assert_eq!(CanonicalState::decode(&old), Ok(state.clone()));
    assert_eq!(CanonicalState::decode(&v5), Ok(state.clone()));
    assert_eq!(CanonicalState::decode(&v6), Ok(state.clone()));
    assert_eq!(CanonicalState::decode(&v7), Ok(state.clone()));
    assert_eq!(CanonicalState::decode(&v8), Ok(state.clone()));
    assert_eq!(CanonicalState::decode(&with), Ok(state));
    for version in [3u32, 10] {
        let mut other = with.clone();
        other[8..12].copy_from_slice(&version.to_le_bytes());
        assert_eq!(CanonicalState::decode(&other), Err(DecodeError::Version));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn snapshot_restore_and_replay_agree(ops in prop::collection::vec(op(), 1..200), cut in any::<prop::sample::Index>(), budget: bool) {
        // With a fill budget, which the snapshot keeps.
        let limits = if budget { budgeted_limits(0) } else { test_limits() };
        let inputs = check_against_reference(limits, &ops);
        let full = replay(limits, &inputs);
        // Replaying the same log gives the same state.
        prop_assert_eq!(replay(limits, &inputs).state_hash(), full.state_hash());
        // Snapshot and restore anywhere, continue, and end in the same state.
        let at = cut.index(inputs.len() + 1);
        let head = replay(limits, &inputs[..at]);
        let bytes = head.snapshot();
        let mut restored = Engine::restore_bytes(&bytes, WorstCaseMargin).expect("own snapshot restores");
        prop_assert_eq!(restored.state_hash(), head.state_hash());
        prop_assert_eq!(restored.snapshot(), bytes);
        let mut events = Vec::new();
        for input in &inputs[at..] {
            let _ = restored.apply(input, &mut events);
        }
        prop_assert_eq!(restored.state_hash(), full.state_hash());
    }
}

fn busy_snapshot() -> Vec<u8> {
    let ops: Vec<_> = (0..300u16)
        .map(|i| {
            (
                (i % 28) as u8,
                (i * 7) as u8,
                (i * 3) as u8,
                i.wrapping_mul(2_654),
                i.wrapping_mul(40_503),
                (i * 13) as u8,
            )
        })
        .collect();
    let inputs = check_against_reference(test_limits(), &ops);
    // Snapshot the busiest moment of the run.
    let mut engine = Engine::new(test_limits());
    let (mut best, mut events) = ((0, Vec::new()), Vec::new());
    for input in &inputs {
        let _ = engine.apply(input, &mut events);
        if engine.open_orders() > best.0 {
            best = (engine.open_orders(), engine.snapshot());
        }
    }
    assert!(best.0 > 3, "the snapshot under test holds orders");
    best.1
}

#[test]
fn damaged_snapshots_are_refused_with_a_reason() {
    let bytes = busy_snapshot();
    assert!(matches!(
        Engine::restore_bytes(&bytes[..bytes.len() - 1], WorstCaseMargin),
        Err(RestoreError::Decode(DecodeError::Truncated))
    ));
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        Engine::restore_bytes(&longer, WorstCaseMargin),
        Err(RestoreError::Decode(DecodeError::Trailing(1)))
    ));
    let mut wrong_magic = bytes.clone();
    wrong_magic[0] ^= 1;
    assert!(matches!(
        Engine::restore_bytes(&wrong_magic, WorstCaseMargin),
        Err(RestoreError::Decode(DecodeError::Version))
    ));
    // Every single-byte corruption either fails to decode or fails the audit, or (for bytes
    // that only carry an order's filled size or a realized P&L) decodes to another valid state.
    let mut refused = 0;
    for i in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[i] = damaged[i].wrapping_add(1);
        if Engine::restore_bytes(&damaged, WorstCaseMargin).is_err() {
            refused += 1;
        }
    }
    assert!(
        refused * 2 > bytes.len(),
        "most corruptions must be refused ({refused} of {})",
        bytes.len()
    );
}

#[test]
fn a_state_that_creates_money_is_refused() {
    let bytes = busy_snapshot();
    let mut state = CanonicalState::decode(&bytes).expect("decodes");
    state.accounts[0].balance.0 += 1;
    assert!(matches!(
        Engine::restore(&state, WorstCaseMargin),
        Err(RestoreError::Invariant(_))
    ));
    let mut state = CanonicalState::decode(&bytes).expect("decodes");
    if let Some(p) = state
        .accounts
        .iter_mut()
        .flat_map(|a| a.positions.iter_mut())
        .find(|p| p.qty.0 != 0)
    {
        p.qty.0 += 1_000_000;
        assert!(matches!(
            Engine::restore(&state, WorstCaseMargin),
            Err(RestoreError::Invariant(_))
        ));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Every generated input (all command kinds the model produces, bad ones included) survives
    /// the write-ahead-log encoding exactly.
    #[test]
    fn inputs_round_trip_through_their_encoding(ops in prop::collection::vec(op(), 1..100)) {
        for input in check_against_reference(test_limits(), &ops) {
            prop_assert_eq!(optio_types::Input::decode(&input.encode()), Ok(input));
        }
    }

    /// Arbitrary bytes never make the input or snapshot decoders panic or over-allocate.
    #[test]
    fn decoders_refuse_garbage_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = optio_types::Input::decode(&bytes);
        let _ = CanonicalState::decode(&bytes);
        let _ = optio_types::OracleUpdate::decode(&bytes, optio_types::UpdateFormat::Current, 64, 64);
    }
}
