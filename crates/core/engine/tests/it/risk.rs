//! Oracle inputs, mark-based margin modes and settlement at the oracle's TWAP.

use optio_engine::Engine;
use optio_oracle::{IndexHistory, SettlementFeed, build_update};
use optio_pricing::risk::default_scenarios;
use optio_pricing::svi::{Slice, Surface, Svi};
use optio_types::{
    AccountId, Amount, Command, EngineLimits, Event, InstrumentId, InstrumentSpec, MONEY_SCALE,
    MarginMode, OracleUpdate, Price, QTY_SCALE, Qty, RejectCode, SettlementUpdate, Side,
};

use crate::common::{STEP, T0, engine_with, limit, px, run, specs, usd};

fn surface(spot: f64) -> Surface {
    let svi = Svi {
        a: 0.002,
        b: 0.03,
        rho: -0.3,
        m: 0.0,
        sigma: 0.2,
    };
    Surface::new(
        spot,
        0.0,
        vec![
            Slice { t: 0.01, svi },
            Slice {
                t: 0.1,
                svi: Svi { a: 0.02, ..svi },
            },
        ],
    )
    .expect("valid surface")
}

/// An update for every instrument of the test market at index `spot`, published at `at`.
pub fn update(spot: f64, at: u64) -> OracleUpdate {
    let specs: Vec<InstrumentSpec> = specs();
    let list = optio_oracle::numbered(&specs);
    build_update("BTC", &surface(spot), &default_scenarios(), &list, at).expect("builds")
}

/// The test market's oracle: publishes `update(spot, at)` and, once an instrument has expired,
/// its settlement price (the TWAP of the published index over the 30 minutes before the
/// expiry) in every update, as it does not watch what the engine applied (the engine passes
/// over a settled instrument).
pub struct TestOracle {
    feed: SettlementFeed,
}

impl Default for TestOracle {
    fn default() -> Self {
        Self {
            feed: SettlementFeed::new(30 * 60_000),
        }
    }
}

impl TestOracle {
    /// The update published at `at` with index `spot`.
    pub fn update(&mut self, spot: f64, at: u64) -> OracleUpdate {
        let mut u = update(spot, at);
        let specs = specs();
        let list = optio_oracle::numbered(&specs);
        self.feed.attach(&mut u, &list);
        u
    }
}

fn market() -> Engine {
    let mut e = engine_with(EngineLimits::default(), 4, usd(200_000));
    run(&mut e, T0, Command::OracleUpdate(update(60_000.0, T0))).expect("first update");
    e
}

fn mode(e: &mut Engine, account: u32, mode: MarginMode) {
    run(
        e,
        T0,
        Command::SetMarginMode {
            account: AccountId(account),
            mode,
        },
    )
    .expect("mode change");
}

#[test]
fn oracle_updates_are_validated_and_rejections_change_nothing() {
    let mut e = market();
    let before = e.state_hash();
    let mut bad = update(60_000.0, T0 + 1_000);
    bad.underlying = "ETH".into();
    let cases: Vec<(OracleUpdate, RejectCode)> = vec![
        (update(60_000.0, T0 - 5_000), RejectCode::OracleOutOfOrder),
        (update(60_000.0, T0 - 20_000), RejectCode::OracleStale),
        (update(60_000.0, T0), RejectCode::OracleOutOfOrder),
        (update(60_000.0, T0 + 5_000), RejectCode::OracleStale),
        (bad, RejectCode::OracleBadInstrument),
        (
            {
                let mut u = update(60_000.0, T0 + 1_000);
                u.marks[0].risk_array.pop();
                u
            },
            RejectCode::RiskArrayLength,
        ),
        (
            {
                let mut u = update(60_000.0, T0 + 1_000);
                u.marks[1].mark = Price(0);
                u
            },
            RejectCode::InvalidMark,
        ),
        (
            {
                let mut u = update(60_000.0, T0 + 1_000);
                u.marks.push(u.marks[0].clone());
                u
            },
            RejectCode::OracleBadInstrument,
        ),
        (
            {
                let mut u = update(60_000.0, T0 + 1_000);
                u.index_price = Price(-1);
                u
            },
            RejectCode::InvalidMark,
        ),
        // Every instrument not yet settled is marked: one left out (the last) is refused.
        (
            {
                let mut u = update(60_000.0, T0 + 1_000);
                u.marks.pop();
                u
            },
            RejectCode::OracleMissingMark,
        ),
    ];
    for (u, code) in cases {
        // Engine time T0 + 2s: an update published at T0 + 5s is from the future.
        assert_eq!(run(&mut e, T0 + 2_000, Command::OracleUpdate(u)), Err(code));
    }
    let mut fresh = e.canonical();
    fresh.time_ms = T0;
    let mut e2 = Engine::restore(&fresh, optio_types::WorstCaseMargin).expect("restores");
    assert_eq!(e2.state_hash(), before);
    assert_eq!(
        run(
            &mut e2,
            T0 + 20_000,
            Command::OracleUpdate(update(60_000.0, T0 + 1_000))
        ),
        Err(RejectCode::OracleStale)
    );
}

#[test]
fn a_30_percent_crash_in_one_step_is_held_until_confirmed() {
    let mut e = market();
    mode(&mut e, 1, MarginMode::Standard);
    let events = run(
        &mut e,
        T0 + 1_000,
        Command::OracleUpdate(update(42_000.0, T0 + 1_000)),
    )
    .expect("accepted as held");
    assert!(matches!(events.as_slice(), [Event::OracleHeld { .. }]));
    // The held price is not used: margin is unchanged.
    let (_, req_before, _) = e.collateral(AccountId(1)).expect("exists");
    // A second update near the held price confirms the move.
    let events = run(
        &mut e,
        T0 + 2_000,
        Command::OracleUpdate(update(42_300.0, T0 + 2_000)),
    )
    .expect("confirmed");
    assert!(matches!(events.as_slice(), [Event::OracleAccepted { .. }]));
    let _ = req_before;
    e.check_invariants().expect("audit");
    // A jump that reverts instead is held again, not accepted.
    let events = run(
        &mut e,
        T0 + 3_000,
        Command::OracleUpdate(update(60_000.0, T0 + 3_000)),
    )
    .expect("held");
    assert!(matches!(events.as_slice(), [Event::OracleHeld { .. }]));
}

#[test]
fn stale_marks_block_risk_but_never_cancels_even_after_a_restart() {
    let mut e = market();
    mode(&mut e, 1, MarginMode::Standard);
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(1, 2, Side::Buy, px(50_000), 1)),
    )
    .expect("fresh marks");
    // Restart from a snapshot: the oracle is silent for a minute.
    let snapshot = e.snapshot();
    let mut e = Engine::restore_bytes(&snapshot, optio_types::WorstCaseMargin).expect("restores");
    let later = T0 + 60_000;
    assert_eq!(
        run(
            &mut e,
            later,
            Command::PlaceOrder(limit(1, 2, Side::Buy, px(50_000), 1))
        ),
        Err(RejectCode::OracleStale)
    );
    assert_eq!(
        run(
            &mut e,
            later,
            Command::Withdraw {
                account: AccountId(1),
                amount: usd(1)
            }
        ),
        Err(RejectCode::OracleStale)
    );
    run(
        &mut e,
        later,
        Command::CancelAll {
            account: AccountId(1),
            instrument: None,
        },
    )
    .expect("cancels are always allowed");
    // Fully collateralized accounts do not depend on marks.
    run(
        &mut e,
        later,
        Command::PlaceOrder(limit(0, 2, Side::Buy, px(50_000), 1)),
    )
    .expect("worst-case account");
    run(
        &mut e,
        later,
        Command::OracleUpdate(update(60_000.0, later)),
    )
    .expect("fresh again");
    run(
        &mut e,
        later,
        Command::PlaceOrder(limit(1, 2, Side::Buy, px(50_000), 1)),
    )
    .expect("trading resumes");
}

#[test]
fn standard_margin_follows_the_per_position_rule() {
    let mut e = market();
    mode(&mut e, 1, MarginMode::Standard);
    mode(&mut e, 2, MarginMode::Standard);
    // Account 2 sells one BTC-27DEC24-60000-C to account 1 (both standard).
    let u = update(60_000.0, T0);
    let mark = u.marks[0].mark.0;
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(2, 0, Side::Sell, Price(mark - mark % 100_000), 100)),
    )
    .expect("ask");
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(1, 0, Side::Buy, Price(mark - mark % 100_000), 100)),
    )
    .expect("lift");
    let (_, long_req, _) = e.collateral(AccountId(1)).expect("exists");
    let (_, short_req, _) = e.collateral(AccountId(2)).expect("exists");
    // Long option: nothing beyond the premium already paid.
    assert_eq!(long_req, Amount(0));
    // Short ATM call: (max(0.15 S - OTM, 0.10 S) + 2 * mark) net of nothing else = 9,000 + 2 * mark.
    assert_eq!(short_req.0, 9_000 * MONEY_SCALE + 2 * mark);
    e.check_invariants().expect("audit");
}

#[test]
fn portfolio_margin_credits_hedges_and_covers_the_worst_scenario() {
    let mut e = market();
    for a in [1, 2] {
        mode(&mut e, a, MarginMode::Portfolio);
    }
    let u = update(60_000.0, T0);
    let call_mark = u.marks[0].mark.0;
    let tick = |p: i64| Price(p - p % 100_000);
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(2, 0, Side::Buy, tick(call_mark), 100)),
    )
    .expect("bid");
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(1, 0, Side::Sell, tick(call_mark), 100)),
    )
    .expect("account 1 short 1 call");
    let (_, naked, _) = e.collateral(AccountId(1)).expect("exists");
    // At least the worst single-scenario loss of the short call, net of its value.
    let worst = u.marks[0]
        .risk_array
        .iter()
        .map(|a| a.0)
        .max()
        .expect("scenarios");
    assert!(
        naked.0 >= worst - call_mark,
        "requirement {naked} below worst loss {worst}"
    );
    // Buying 0.5 perpetual against it (a delta hedge) must not raise the requirement.
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(2, 2, Side::Sell, px(60_000), 50)),
    )
    .expect("perp ask");
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(1, 2, Side::Buy, px(60_000), 50)),
    )
    .expect("hedge");
    let (_, hedged, _) = e.collateral(AccountId(1)).expect("exists");
    assert!(hedged <= naked, "hedged {hedged} > naked {naked}");
    e.check_invariants().expect("audit");
}

#[test]
fn switching_mode_needs_the_new_mode_covered() {
    let u = update(60_000.0, T0);
    let bid = Price(u.marks[0].mark.0 - u.marks[0].mark.0 % 100_000);
    let short_calls = |e: &mut Engine| {
        run(e, T0, Command::PlaceOrder(limit(2, 0, Side::Buy, bid, 400))).expect("bid for 4 calls");
        run(
            e,
            T0,
            Command::PlaceOrder(limit(1, 0, Side::Sell, bid, 400)),
        )
        .expect("account 1 short 4 calls");
    };
    // Account 1 withdraws first what leaves it 1,000 free once short (a withdrawal must cover the
    // stress scenarios of the positions it leaves, which this standard-margined short does not).
    let mut probe = market();
    mode(&mut probe, 1, MarginMode::Standard);
    short_calls(&mut probe);
    let (_, _, free) = probe.collateral(AccountId(1)).expect("exists");
    let mut e = market();
    mode(&mut e, 1, MarginMode::Standard);
    run(
        &mut e,
        T0,
        Command::Withdraw {
            account: AccountId(1),
            amount: Amount(free.0 - usd(1_000).0),
        },
    )
    .expect("withdraw what leaves 1,000 free");
    short_calls(&mut e);
    assert_eq!(e.collateral(AccountId(1)).expect("exists").2, usd(1_000));
    // Worst case needs 4 x (100,000 - 60,000) = 160,000: far more than the balance.
    let before = e.state_hash();
    assert_eq!(
        run(
            &mut e,
            T0,
            Command::SetMarginMode {
                account: AccountId(1),
                mode: MarginMode::WorstCase
            }
        ),
        Err(RejectCode::InsufficientMargin)
    );
    assert_eq!(e.state_hash(), before);
    // Portfolio margin's +50% tail scenario costs a naked short call more than the standard rule.
    assert_eq!(
        run(
            &mut e,
            T0,
            Command::SetMarginMode {
                account: AccountId(1),
                mode: MarginMode::Portfolio
            }
        ),
        Err(RejectCode::InsufficientMargin)
    );
    assert_eq!(e.state_hash(), before);
    e.check_invariants().expect("audit");
}

/// Walks the index to the put's expiry (instrument 1, BTC-21DEC24-60000-P at T0 + 1h):
/// 59,000 from 07:30 to 07:50, then 58,000, as the oracle records it. At the expiry the put
/// stops trading, unsettled; the oracle's next update carries the settlement price it computes
/// from its index (the TWAP over the 30 minutes before). Returns that update's events.
fn run_to_expiry(e: &mut Engine) -> Vec<Event> {
    let expiry = T0 + 3_600_000;
    let window = 30 * 60_000;
    let mut index = IndexHistory::default();
    for (at, spot) in [
        (expiry - 40 * 60_000, 60_000.0),
        (expiry - 30 * 60_000, 59_000.0),
        (expiry - 10 * 60_000, 58_000.0),
    ] {
        let u = update(spot, at);
        index.record(at, u.index_price, window);
        run(e, at, Command::OracleUpdate(u)).expect("update");
    }
    let expired = run(
        e,
        expiry,
        Command::CancelAll {
            account: AccountId(3),
            instrument: None,
        },
    )
    .expect("time passes");
    assert!(expired.contains(&Event::InstrumentExpired {
        instrument: InstrumentId(1)
    }));
    assert!(
        !expired
            .iter()
            .any(|ev| matches!(ev, Event::InstrumentSettled { .. })),
        "nothing settles before the oracle's price: {expired:?}"
    );
    let at = expiry + 1_000;
    run(
        e,
        at,
        Command::OracleUpdate(settling(at, index.twap(expiry, window).expect("samples"))),
    )
    .expect("settles")
}

/// An update published at `at` with the put's settlement price `price`.
fn settling(at: u64, price: Price) -> OracleUpdate {
    let mut u = update(58_000.0, at);
    u.settlements.push(SettlementUpdate {
        instrument: InstrumentId(1),
        price,
        attestation: [0; 65],
    });
    u
}

fn settled_cash(events: &[Event], account: u32) -> Amount {
    events
        .iter()
        .find_map(|ev| match ev {
            Event::PositionSettled {
                account: a, cash, ..
            } if *a == AccountId(account) => Some(*cash),
            _ => None,
        })
        .expect("settled")
}

/// `market()` where account 1 sold account 0 one put (instrument 1) at 500.
fn one_put_traded() -> Engine {
    let mut e = market();
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(1, 1, Side::Sell, px(500), 100)),
    )
    .expect("short put");
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(0, 1, Side::Buy, px(500), 100)),
    )
    .expect("long put");
    e
}

#[test]
fn expiry_settles_at_the_oracles_time_weighted_index() {
    let mut e = one_put_traded();
    let events = run_to_expiry(&mut e);
    // TWAP = (59,000 * 20 + 58,000 * 10) / 30 = 58,666.666666 (rounded down to the micro).
    let twap = Price(58_666_666_666);
    assert!(events.iter().any(|ev| matches!(ev, Event::InstrumentSettled { settlement_price, .. } if *settlement_price == twap)), "{events:?}");
    // The long put receives (60,000 - 58,666.666666) for one contract.
    assert_eq!(settled_cash(&events, 0), Amount(1_333_333_334));
    e.check_invariants().expect("audit");
    // Settled, the put needs no more marks; every other instrument still does.
    let at = e.time_ms() + 1_000;
    let without = |id: u32| {
        let mut u = update(58_000.0, at);
        u.marks.retain(|m| m.instrument != InstrumentId(id));
        Command::OracleUpdate(u)
    };
    let pass_time = Command::CancelAll {
        account: AccountId(3),
        instrument: None,
    };
    run(&mut e, at, pass_time).expect("time passes");
    let before = e.state_hash();
    assert_eq!(
        run(&mut e, at, without(0)),
        Err(RejectCode::OracleMissingMark)
    );
    assert_eq!(e.state_hash(), before, "a refused update changes nothing");
    run(&mut e, at, without(1)).expect("the settled put left out");
}

/// Once settled, an instrument's mark is one contract's settlement value (what the settlement
/// state commits, `InstrumentSpec::settled_mark`), zero out of the money: the oracle's marks
/// for it, in the settling update and later, are passed over, and a snapshot restores it.
#[test]
fn a_settled_instruments_mark_is_its_settlement_value() {
    let mark_of = |e: &Engine| {
        e.instruments()
            .find(|i| i.id == InstrumentId(1))
            .and_then(|i| i.mark)
    };
    let put = specs()[1].clone();
    // In the money: the TWAP of 58,666.666666 pays the long put 1,333.333334 a contract.
    let mut e = one_put_traded();
    let events = run_to_expiry(&mut e);
    let twap = Price(58_666_666_666);
    assert!(events.iter().any(|ev| matches!(ev, Event::InstrumentSettled { settlement_price, .. } if *settlement_price == twap)), "{events:?}");
    let settled = put.settled_mark(twap).expect("bounded");
    assert_eq!(settled, Price(1_333_333_334));
    assert_eq!(mark_of(&e), Some(settled));
    let later = T0 + 3_600_000 + 5_000;
    let u = update(50_000.0, later);
    let oracles = u
        .marks
        .iter()
        .find(|m| m.instrument == InstrumentId(1))
        .expect("marked");
    assert_ne!(oracles.mark, settled);
    run(&mut e, later, Command::OracleUpdate(u)).expect("taken");
    assert_eq!(mark_of(&e), Some(settled), "a later mark is passed over");
    let restored =
        Engine::restore_bytes(&e.snapshot(), optio_types::WorstCaseMargin).expect("restores");
    assert_eq!(restored.state_hash(), e.state_hash());
    e.check_invariants().expect("audit");

    // Out of the money: the mark is zero, and the snapshot still restores.
    let mut e = one_put_traded();
    let expiry = T0 + 3_600_000;
    run(
        &mut e,
        expiry - 5_000,
        Command::OracleUpdate(update(61_000.0, expiry - 5_000)),
    )
    .expect("update");
    let at = expiry + 1_000;
    run(
        &mut e,
        at,
        Command::OracleUpdate(settling(at, Price(61_000 * MONEY_SCALE))),
    )
    .expect("settles");
    assert_eq!(mark_of(&e), Some(Price(0)));
    let restored =
        Engine::restore_bytes(&e.snapshot(), optio_types::WorstCaseMargin).expect("restores");
    assert_eq!(restored.state_hash(), e.state_hash());
    e.check_invariants().expect("audit");
}

/// A settlement price refused refuses its whole update and changes nothing: for an instrument
/// not yet expired, a perpetual, another underlying's or an unknown instrument, twice in one
/// update, not positive, or published before the expiry it averages up to. Once settled, an
/// instrument's price in a later update is passed over (the oracle may repeat it until it sees
/// it applied): the update is taken, nothing is paid twice.
#[test]
fn settlement_prices_are_checked_and_a_refusal_changes_nothing() {
    let mut e = one_put_traded();
    let early = T0 + 1_000;
    assert_eq!(
        run(
            &mut e,
            early,
            Command::OracleUpdate(settling(early, Price(58_000 * MONEY_SCALE)))
        ),
        Err(RejectCode::InvalidStatusTransition),
        "the put has not expired"
    );
    let expiry = T0 + 3_600_000;
    run(
        &mut e,
        expiry - 5_000,
        Command::OracleUpdate(update(58_000.0, expiry - 5_000)),
    )
    .expect("update");
    run(
        &mut e,
        expiry,
        Command::CancelAll {
            account: AccountId(3),
            instrument: None,
        },
    )
    .expect("expires");
    let at = expiry + 1_000;
    run(
        &mut e,
        at,
        Command::CancelAll {
            account: AccountId(3),
            instrument: None,
        },
    )
    .expect("time passes");
    let before = e.state_hash();
    let price = Price(58_000 * MONEY_SCALE);
    let with = |change: fn(&mut OracleUpdate)| {
        let mut u = settling(at, price);
        change(&mut u);
        u
    };
    let perpetual = specs()
        .iter()
        .position(|s| s.expiry_ms().is_none())
        .expect("a perpetual") as u32;
    let cases: Vec<(OracleUpdate, RejectCode)> = vec![
        (
            with(|u| u.settlements[0].price = Price(0)),
            RejectCode::InvalidSettlementPrice,
        ),
        (
            with(|u| u.settlements[0].price = Price(-1)),
            RejectCode::InvalidSettlementPrice,
        ),
        (
            with(|u| {
                let again = u.settlements[0].clone();
                u.settlements.push(again);
            }),
            RejectCode::OracleBadInstrument,
        ),
        (
            with(|u| u.settlements[0].instrument = InstrumentId(99)),
            RejectCode::OracleBadInstrument,
        ),
        (
            {
                let mut u = settling(at, price);
                u.settlements[0].instrument = InstrumentId(perpetual);
                u
            },
            RejectCode::InvalidStatusTransition,
        ),
        (
            settling(expiry - 1, price),
            RejectCode::InvalidSettlementPrice,
        ),
    ];
    for (u, code) in cases {
        assert_eq!(run(&mut e, at, Command::OracleUpdate(u)), Err(code));
        assert_eq!(e.state_hash(), before);
    }
    let events = run(&mut e, at, Command::OracleUpdate(settling(at, price))).expect("settles");
    assert_eq!(settled_cash(&events, 0), Amount(2_000 * MONEY_SCALE));
    let later = at + 1_000;
    let again = run(
        &mut e,
        later,
        Command::OracleUpdate(settling(later, Price(1))),
    )
    .expect("taken");
    assert!(
        !again.iter().any(|ev| matches!(
            ev,
            Event::InstrumentSettled { .. } | Event::PositionSettled { .. }
        )),
        "{again:?}"
    );
    e.check_invariants().expect("audit");
}

/// A settlement value that is not a whole number of micro-USDC per position is rounded down
/// for every holder: a long is paid the floor, a short pays the ceiling, the remainder goes to
/// insurance. (Rounding the shorts' payments up once paid out one unit more than came in and,
/// with insurance at zero, halted the engine on its invariant.)
#[test]
fn expiry_rounds_every_payment_toward_the_system() {
    let mut e = market();
    for (account, side, steps) in [(1, Side::Sell, 99), (2, Side::Sell, 1), (0, Side::Buy, 100)] {
        run(
            &mut e,
            T0,
            Command::PlaceOrder(limit(account, 1, side, px(500), steps)),
        )
        .expect("trades");
    }
    let insurance = e.pools().1;
    let events = run_to_expiry(&mut e);
    // 1,333.333334 per contract: 0.99 contract is 1,320.000000660 and 0.01 is 13.333333340.
    assert_eq!(settled_cash(&events, 0), Amount(1_333_333_334));
    assert_eq!(settled_cash(&events, 1), Amount(-1_320_000_001));
    assert_eq!(settled_cash(&events, 2), Amount(-13_333_334));
    assert!(events.iter().any(|ev| matches!(ev, Event::InstrumentSettled { insurance_credit, .. } if *insurance_credit == Amount(1))), "{events:?}");
    assert_eq!(e.pools().1, Amount(insurance.0 + 1));
    e.check_invariants().expect("audit");
}

mod portfolio_properties {
    use proptest::prelude::*;

    use super::*;

    const MICRO_PER_CONTRACT: i128 = 100_000_000;

    /// Account 1 (portfolio margin) trades each leg against account 2 at the mark; returns the
    /// engine and the update whose marks and arrays priced it.
    fn build(legs: &[(u32, i64)]) -> (Engine, OracleUpdate) {
        let mut e = engine_with(EngineLimits::default(), 4, usd(5_000_000));
        let u = update(60_000.0, T0);
        run(&mut e, T0, Command::OracleUpdate(u.clone())).expect("oracle");
        run(
            &mut e,
            T0,
            Command::SetMarginMode {
                account: AccountId(1),
                mode: MarginMode::Portfolio,
            },
        )
        .expect("portfolio");
        // Sizes in multiples of 4 steps, so that every fraction of the hedge below is exact and
        // the hedge is truly proportional (a rounded one can remove a leg that was a hedge).
        for &(i, q) in legs {
            trade(&mut e, &u, i, 4 * q);
        }
        (e, u)
    }

    fn trade(e: &mut Engine, u: &OracleUpdate, instrument: u32, steps: i64) {
        if steps == 0 {
            return;
        }
        let mark = u.marks[instrument as usize].mark.0;
        let price = Price((mark - mark % 100_000).max(100_000));
        let (side, other) = if steps > 0 {
            (Side::Buy, Side::Sell)
        } else {
            (Side::Sell, Side::Buy)
        };
        run(
            e,
            T0,
            Command::PlaceOrder(limit(2, instrument, other, price, steps.abs())),
        )
        .expect("counterparty");
        run(
            e,
            T0,
            Command::PlaceOrder(limit(1, instrument, side, price, steps.abs())),
        )
        .expect("portfolio account trades");
    }

    /// (gross portfolio requirement = net requirement + position value, worst single-scenario
    /// loss) of account 1, and the number of positions (each floor costs at most one micro).
    fn figures(e: &Engine, u: &OracleUpdate) -> (i128, i128, i128) {
        let (_, requirement, _) = e.collateral(AccountId(1)).expect("exists");
        let mut value = 0i128;
        let mut worst = 0i128;
        let mut n = 0;
        let qs: Vec<i128> = (0..3)
            .map(|i| {
                i128::from(
                    e.position_view(AccountId(1), InstrumentId(i))
                        .map_or(0, |p| p.0.0),
                )
            })
            .collect();
        for (i, q) in qs.iter().enumerate() {
            if *q != 0 {
                n += 1;
                value += (q * i128::from(u.marks[i].mark.0)).div_euclid(MICRO_PER_CONTRACT);
            }
        }
        for s in 0..u.marks[0].risk_array.len() {
            let pnl: i128 = qs
                .iter()
                .enumerate()
                .map(|(i, q)| {
                    (q * i128::from(u.marks[i].risk_array[s].0)).div_euclid(MICRO_PER_CONTRACT)
                })
                .sum();
            worst = worst.max(-pnl);
        }
        (i128::from(requirement.0) + value, worst, n)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Portfolio margin is never below the worst single-scenario loss, and trading back any
        /// fraction of every position (an offsetting hedge) never raises it.
        #[test]
        fn never_below_the_worst_scenario_and_hedges_never_raise_it(legs in prop::collection::vec((0u32..3, -30i64..30), 1..6), keep in 0i64..=4) {
            let (mut e, u) = build(&legs);
            let (gross, worst, n) = figures(&e, &u);
            prop_assert!(gross + 2 * n >= worst, "portfolio margin {gross} below worst scenario loss {worst}");
            // Offset every position by the same fraction, (4 - keep)/4 of itself.
            let positions: Vec<(u32, i64)> = (0..3).map(|i| (i, e.position_view(AccountId(1), InstrumentId(i)).map_or(0, |p| p.0.0 / STEP))).collect();
            for (i, q) in positions {
                trade(&mut e, &u, i, -(q * (4 - keep) / 4));
            }
            let (hedged, _, n2) = figures(&e, &u);
            prop_assert!(hedged <= gross + 2 * (n + n2), "hedging raised portfolio margin from {gross} to {hedged}");
            e.check_invariants().map_err(|v| TestCaseError::fail(v.to_string()))?;
        }
    }
}

/// When the put `written_puts` trades expires.
const PUT_EXPIRY: u64 = T0 + 3_600_000;

/// Five accounts of 200,000 USDC (those of `modes` in their margin mode): account 0 writes three
/// puts (instrument 1, at 500) and account 4 two, bought by accounts 1 (one), 2 and 3 (two
/// each).
fn written_puts(limits: EngineLimits, modes: &[(u32, MarginMode)]) -> Engine {
    let mut e = engine_with(limits, 5, usd(200_000));
    run(&mut e, T0, Command::OracleUpdate(update(60_000.0, T0))).expect("first update");
    for &(account, m) in modes {
        mode(&mut e, account, m);
    }
    for (seller, buyer, n) in [(0, 1, 1), (0, 2, 2), (4, 3, 2)] {
        run(
            &mut e,
            T0,
            Command::PlaceOrder(limit(seller, 1, Side::Sell, px(500), 100 * n)),
        )
        .expect("short puts");
        run(
            &mut e,
            T0,
            Command::PlaceOrder(limit(buyer, 1, Side::Buy, px(500), 100 * n)),
        )
        .expect("long puts");
    }
    e
}

/// The put of `written_puts` expires with the index at 58,000 and takes its settlement price
/// (58,000: 2,000 a contract): the events of the settling update.
fn settle_puts(e: &mut Engine) -> Vec<Event> {
    run(
        e,
        PUT_EXPIRY - 5_000,
        Command::OracleUpdate(update(58_000.0, PUT_EXPIRY - 5_000)),
    )
    .expect("update");
    run(
        e,
        PUT_EXPIRY + 1_000,
        Command::OracleUpdate(settling(PUT_EXPIRY + 1_000, Price(58_000 * MONEY_SCALE))),
    )
    .expect("settles")
}

/// A settlement budget of one settlement of two positions an input (expiries unbounded).
fn two_positions_a_settlement() -> EngineLimits {
    EngineLimits {
        settle_budget: optio_types::SettleBudget {
            expiries: u32::MAX,
            slots: 1,
            holders: 2,
        },
        ..EngineLimits::default()
    }
}

/// Between the parts of a settlement, a margin-mode writer's short in the settled put needs
/// what it owes at the settlement value and nothing for the index: account 0 (`Standard`) may
/// withdraw all but that (one unit more is refused and changes nothing), account 4
/// (`Portfolio`) is held to it as well, and both are paid in full by the later parts with no
/// liquidation.
#[test]
fn a_margin_writer_of_an_option_settling_in_parts_needs_what_it_owes_not_the_index() {
    let budget = two_positions_a_settlement();
    let mut e = written_puts(
        budget,
        &[(0, MarginMode::Standard), (4, MarginMode::Portfolio)],
    );
    settle_puts(&mut e);
    let put = InstrumentId(1);
    let owed = |e: &Engine, a: u32| -> i64 {
        let held = e.position_view(AccountId(a), put).expect("held").0;
        assert!(held.0 < 0, "account {a} is still short");
        -held.0 / QTY_SCALE * 2_000 * MONEY_SCALE
    };
    // Account 0 was paid for one of its three puts in the first part; account 4 not yet.
    for a in [0, 4] {
        let (_, requirement, _) = e.collateral(AccountId(a)).expect("exists");
        assert_eq!(requirement.0, owed(&e, a), "account {a}");
    }
    let (balance, _, free) = e.collateral(AccountId(0)).expect("exists");
    assert_eq!(free.0, balance.0 - owed(&e, 0));
    let before = e.collateral(AccountId(0));
    let too_much = Command::Withdraw {
        account: AccountId(0),
        amount: Amount(free.0 + 1),
    };
    assert_eq!(
        run(&mut e, PUT_EXPIRY + 1_500, too_much),
        Err(RejectCode::InsufficientFreeCollateral)
    );
    assert_eq!(
        e.collateral(AccountId(0)),
        before,
        "a refusal changes nothing"
    );
    run(
        &mut e,
        PUT_EXPIRY + 1_500,
        Command::Withdraw {
            account: AccountId(0),
            amount: free,
        },
    )
    .expect("withdraws all but what it owes");
    let mut events = Vec::new();
    for at in [PUT_EXPIRY + 2_000, PUT_EXPIRY + 3_000] {
        events
            .extend(run(&mut e, at, Command::OracleUpdate(update(58_000.0, at))).expect("update"));
        e.check_invariants().expect("audit");
    }
    assert!(
        !events
            .iter()
            .any(|ev| matches!(ev, Event::LiquidationStarted { .. })),
        "{events:?}"
    );
    for a in [0, 4] {
        assert_eq!(
            e.position_view(AccountId(a), put).map(|p| p.0),
            Some(Qty(0)),
            "{a}: paid"
        );
    }
    assert_eq!(e.collateral(AccountId(0)).expect("exists").0, Amount(0));
}

/// With a settlement budget (what one proven batch's settlement slots hold), an expiry with
/// more holders than one settlement pays settles in balanced parts, one at each oracle update:
/// account 0 wrote three puts and account 4 two, bought by accounts 1 (one), 2 and 3 (two
/// each); two positions a settlement, one settlement an input. Account 0's short is paid in
/// two parts. Each part's quantities net to zero; the first marks the put settled, so the
/// positions left are worth their settlement value meanwhile; a settled position is not
/// auctioned; a snapshot between parts restores and goes on alike; and every account ends with
/// what one whole settlement pays it.
#[test]
fn an_expiry_settles_in_balanced_parts_within_the_settlement_budget() {
    let traded = |limits| written_puts(limits, &[]);
    let expiry = PUT_EXPIRY;
    let settle = settle_puts;
    let paid = |events: &[Event]| -> Vec<(u32, i64)> {
        events
            .iter()
            .filter_map(|ev| match ev {
                Event::PositionSettled { account, qty, .. } => Some((account.0, qty.0 / STEP)),
                _ => None,
            })
            .collect()
    };
    let settlements = |events: &[Event]| {
        events
            .iter()
            .filter(|ev| matches!(ev, Event::InstrumentSettled { .. }))
            .count()
    };
    let mut whole = traded(EngineLimits::default());
    let events = settle(&mut whole);
    assert_eq!(
        paid(&events),
        [(0, -300), (1, 100), (2, 200), (3, 200), (4, -200)]
    );

    let budget = two_positions_a_settlement();
    let mut e = traded(budget);
    let events = settle(&mut e);
    assert_eq!(paid(&events), [(1, 100), (0, -100)], "the first part");
    assert_eq!(settlements(&events), 1);
    let put = e
        .instruments()
        .find(|i| i.id == InstrumentId(1))
        .expect("listed");
    assert_eq!(put.mark, Some(Price(2_000 * MONEY_SCALE)), "settled");
    e.check_invariants().expect("audit");
    assert_eq!(
        run(
            &mut e,
            expiry + 1_500,
            Command::Liquidate {
                liquidator: AccountId(3),
                account: AccountId(0),
                instrument: InstrumentId(1),
                qty: optio_types::Qty(100 * STEP),
            }
        ),
        Err(RejectCode::InstrumentNotActive),
        "a settled position is not auctioned"
    );
    let mut restored =
        Engine::restore_bytes(&e.snapshot(), optio_types::WorstCaseMargin).expect("restores");
    assert_eq!(restored.state_hash(), e.state_hash());
    let mut parts = Vec::new();
    for (n, at) in [expiry + 2_000, expiry + 3_000, expiry + 4_000]
        .into_iter()
        .enumerate()
    {
        let u = update(58_000.0, at);
        let events = run(&mut e, at, Command::OracleUpdate(u.clone())).expect("update");
        let again = run(&mut restored, at, Command::OracleUpdate(u)).expect("update");
        assert_eq!(events, again, "update {n} after the restore");
        assert_eq!(restored.state_hash(), e.state_hash());
        e.check_invariants().expect("audit");
        parts.push(paid(&events));
    }
    assert_eq!(
        parts,
        [vec![(2, 200), (0, -200)], vec![(3, 200), (4, -200)], vec![]],
        "a part an update, then nothing"
    );
    for a in (0..5).map(AccountId) {
        assert_eq!(e.collateral(a), whole.collateral(a), "{a}");
        assert_eq!(
            e.position_view(a, InstrumentId(1)),
            whole.position_view(a, InstrumentId(1)),
            "{a}: flat, with the same realized P&L"
        );
    }
    assert_eq!(e.pools(), whole.pools());
}

/// With an expiry budget (what one proven batch's expiry slots hold), instruments expiring
/// together all expire on time (their orders cancelled, no trading), but their expiries are
/// posted (`InstrumentExpired`, the settlement state's expiry op) one budget an input, the rest
/// first thing in the next inputs; a snapshot keeps the ones not yet posted, and a settlement
/// price taken meanwhile waits for its instrument's post.
#[test]
fn expiries_past_the_budget_are_posted_by_the_next_inputs() {
    let budget = EngineLimits {
        settle_budget: optio_types::SettleBudget {
            expiries: 1,
            ..optio_types::SettleBudget::UNBOUNDED
        },
        ..EngineLimits::default()
    };
    let mut e = engine_with(budget, 2, usd(200_000));
    let _ = run(
        &mut e,
        T0,
        Command::ActivateInstrument {
            instrument: InstrumentId(3),
        },
    );
    run(&mut e, T0, Command::OracleUpdate(update(60_000.0, T0))).expect("first update");
    let expired = |events: &[Event]| -> Vec<u32> {
        events
            .iter()
            .filter_map(|ev| match ev {
                Event::InstrumentExpired { instrument } => Some(instrument.0),
                _ => None,
            })
            .collect()
    };
    let status = |e: &Engine, id: u32| {
        e.instruments()
            .find(|i| i.id == InstrumentId(id))
            .expect("listed")
            .status
    };
    // Past both expiry dates at once: the put (21DEC24) and both calls (27DEC24) expire.
    let later = T0 + 3_600_000 + 6 * 86_400_000 + 1_000;
    let tick = |e: &mut Engine, at: u64| {
        run(
            e,
            at,
            Command::CancelAll {
                account: AccountId(1),
                instrument: None,
            },
        )
        .expect("time passes")
    };
    let events = tick(&mut e, later);
    assert_eq!(expired(&events), [1], "one posted");
    for id in [0, 1, 3] {
        assert_eq!(status(&e, id), optio_types::InstrumentStatus::Expired);
    }
    let restored =
        Engine::restore_bytes(&e.snapshot(), optio_types::WorstCaseMargin).expect("restores");
    assert_eq!(restored.state_hash(), e.state_hash());
    // A settlement price for call 3 waits for its expiry's post (this input posts call 0's).
    let at = later + 1_000;
    let mut u = update(60_000.0, at);
    u.settlements.push(SettlementUpdate {
        instrument: InstrumentId(3),
        price: Price(60_000 * MONEY_SCALE),
        attestation: [0; 65],
    });
    let events = run(&mut e, at, Command::OracleUpdate(u)).expect("taken");
    assert_eq!(expired(&events), [0]);
    assert!(
        !events
            .iter()
            .any(|ev| matches!(ev, Event::InstrumentSettled { .. })),
        "not settled before its expiry is posted"
    );
    // Call 3 expired on time: an order for it is refused (in the input that posts its expiry).
    let mut events = Vec::new();
    let order = optio_types::Input {
        time_ms: at + 1_000,
        command: Command::PlaceOrder(limit(0, 3, Side::Buy, px(500), 100)),
    };
    assert_eq!(
        e.apply(&order, &mut events),
        Err(RejectCode::InstrumentNotActive)
    );
    assert_eq!(expired(&events), [3]);
    let events = run(
        &mut e,
        at + 2_000,
        Command::OracleUpdate(update(60_000.0, at + 2_000)),
    )
    .expect("update");
    assert!(expired(&events).is_empty());
    assert!(
        events.iter().any(|ev| matches!(ev, Event::InstrumentSettled { instrument, .. } if *instrument == InstrumentId(3))),
        "settled once posted: {events:?}"
    );
    e.check_invariants().expect("audit");
}

/// The API's margin view: its totals are the engine's own requirements in every mode, its
/// split says what the positions need alone and what the open orders add, and under the
/// per-position modes its instrument shares add up to the totals.
#[test]
fn the_margin_view_splits_positions_from_open_orders_in_every_mode() {
    let mut e = market();
    mode(&mut e, 1, MarginMode::Standard);
    mode(&mut e, 2, MarginMode::Standard);
    mode(&mut e, 3, MarginMode::Portfolio);
    let mark = update(60_000.0, T0).marks[0].mark.0;
    let bid = Price(mark - mark % 100_000);
    // Accounts 2 (standard), 3 (portfolio) and 0 (worst case) each write a call to account 1
    // (0 and 3 have one owner, so they do not trade with each other).
    for (seller, buyer) in [(2, 1), (3, 1), (0, 1)] {
        run(
            &mut e,
            T0,
            Command::PlaceOrder(limit(seller, 0, Side::Sell, bid, 100)),
        )
        .expect("ask");
        run(
            &mut e,
            T0,
            Command::PlaceOrder(limit(buyer, 0, Side::Buy, bid, 100)),
        )
        .expect("lift");
    }
    let agrees = |e: &Engine, account: u32| {
        let id = AccountId(account);
        let v = e.margin_view(id).expect("exists");
        let (_, requirement, _) = e.collateral(id).expect("exists");
        assert_eq!(v.initial, requirement, "account {account}");
        assert_eq!(
            v.maintenance,
            e.maintenance(id).expect("exists").0,
            "account {account}"
        );
        assert!(v.initial >= v.positions_initial, "account {account}: {v:?}");
        if v.mode != MarginMode::Portfolio {
            let sum = |f: fn(&optio_engine::InstrumentMargin) -> i64| {
                v.instruments.iter().map(f).sum::<i64>()
            };
            assert_eq!(sum(|m| m.initial.0), v.initial.0);
            assert_eq!(sum(|m| m.position_initial.0), v.positions_initial.0);
            assert_eq!(sum(|m| m.maintenance.0), v.maintenance.0);
        } else {
            assert!(v.instruments.is_empty());
        }
        v
    };
    let writer = agrees(&e, 2);
    // Standard: a short ATM call needs max(0.15 S - OTM, 0.10 S) + 2 * mark, no orders open.
    assert_eq!(writer.positions_initial.0, 9_000 * MONEY_SCALE + 2 * mark);
    assert_eq!(writer.initial, writer.positions_initial);
    assert_eq!(writer.instruments.len(), 1);
    assert!(writer.maintenance < writer.positions_initial);
    assert_eq!(
        agrees(&e, 1).positions_initial,
        Amount(0),
        "a long option needs nothing"
    );
    let portfolio = agrees(&e, 3);
    assert_eq!(portfolio.initial, portfolio.positions_initial);
    assert!(portfolio.positions_initial.0 > 0);
    agrees(&e, 0);

    // A resting offer for another call adds its margin as orders, not as positions.
    let far = Price(bid.0 * 3);
    for seller in [2, 3, 0] {
        run(
            &mut e,
            T0,
            Command::PlaceOrder(limit(seller, 0, Side::Sell, far, 100)),
        )
        .expect("offer");
        let v = agrees(&e, seller);
        assert!(v.initial > v.positions_initial, "account {seller}: {v:?}");
    }
    assert_eq!(agrees(&e, 2).positions_initial, writer.positions_initial);
    assert_eq!(agrees(&e, 3).positions_initial, portfolio.positions_initial);
    assert!(e.margin_view(AccountId(99)).is_none());
    e.check_invariants().expect("audit");
}

/// The auction's clock (each underlying's latest publication time, which `OracleView` shows)
/// counts only updates that marked an instrument: a batch commits those marks with their time
/// (the settlement state's `oracle_ms`), so an update that marks nothing (its underlying's
/// last instrument settled by it, or already) leaves the clock where the committed time is.
/// Such an update is still taken (its settlement pays).
#[test]
fn an_update_that_marks_nothing_leaves_the_auctions_clock() {
    let mut e = market();
    let put =
        InstrumentSpec::with_defaults("ETH-21DEC24-3000-P".parse().expect("name"), px(10_000));
    run(&mut e, T0, Command::ListInstrument { spec: put.clone() }).expect("lists");
    run(
        &mut e,
        T0,
        Command::ActivateInstrument {
            instrument: InstrumentId(4),
        },
    )
    .expect("activates");
    let marked = |at: u64| {
        build_update(
            "ETH",
            &surface(3_000.0),
            &default_scenarios(),
            &[(InstrumentId(4), &put)],
            at,
        )
        .expect("builds")
    };
    let published = |e: &Engine| e.oracle("ETH").expect("an ETH oracle").published_ms;
    run(
        &mut e,
        T0 + 1_000,
        Command::OracleUpdate(marked(T0 + 1_000)),
    )
    .expect("marks");
    assert_eq!(published(&e), T0 + 1_000);
    // After the expiry: the settlement price, with no mark (the settled put takes none).
    let expiry = T0 + 3_600_000;
    let settles = OracleUpdate {
        underlying: "ETH".into(),
        published_ms: expiry + 1_000,
        index_price: Price(3_000 * MONEY_SCALE),
        marks: Vec::new(),
        settlements: vec![SettlementUpdate {
            instrument: InstrumentId(4),
            price: Price(3_000 * MONEY_SCALE),
            attestation: [0; 65],
        }],
    };
    let events = run(&mut e, expiry + 1_000, Command::OracleUpdate(settles)).expect("settles");
    assert!(
        events
            .iter()
            .any(|ev| matches!(ev, Event::InstrumentSettled { instrument, .. } if *instrument == InstrumentId(4))),
        "{events:?}"
    );
    assert_eq!(published(&e), T0 + 1_000, "a settlement without marks");
    // Later updates of the underlying have nothing to mark.
    let nothing = OracleUpdate {
        underlying: "ETH".into(),
        published_ms: expiry + 2_000,
        index_price: Price(3_001 * MONEY_SCALE),
        marks: Vec::new(),
        settlements: Vec::new(),
    };
    run(&mut e, expiry + 2_000, Command::OracleUpdate(nothing)).expect("taken");
    assert_eq!(published(&e), T0 + 1_000, "an update that marks nothing");
    assert_eq!(
        e.oracle("ETH").expect("ETH").index_price,
        Price(3_001 * MONEY_SCALE),
        "its index is taken"
    );
    // A BTC update marks its instruments: the clock moves.
    run(
        &mut e,
        expiry + 2_000,
        Command::OracleUpdate(update(60_000.0, expiry + 2_000)),
    )
    .expect("marks");
    assert_eq!(e.oracle("BTC").expect("BTC").published_ms, expiry + 2_000);
}
