//! Liquidation, auto-deleveraging and the loss waterfall, including the classic failure cases:
//! a thin-book pump (Mango), a position too large to liquidate at the mark (JELLY), a 30% crash.

use optio_engine::Engine;
use optio_types::{
    AccountId, Amount, Command, DoneReason, EngineLimits, Event, InstrumentId, MarginMode, Qty,
    RejectCode, Side,
};
use proptest::prelude::*;

use crate::common::{STEP, T0, engine_with, limit, owner, px, run, usd};
use crate::risk::{TestOracle, update};

const PERP: u32 = 2;

/// Account 1 (standard margin) long one perpetual from account 2 at 60,000 with about 6,500 of
/// equity left (initial margin is 6,000). Account 3 is a well-funded fully collateralized
/// liquidator; account 0 shares account 3's owner.
fn leveraged_long() -> Engine {
    let e = with_500_free_after(margined_market, &[1], |e| {
        long_one(e, PERP, 60_000);
    });
    e.check_invariants().expect("audit");
    e
}

/// Account 1 buys one contract of `instrument` from account 2 at `price`.
fn long_one(e: &mut Engine, instrument: u32, price: i64) {
    run(
        e,
        T0,
        Command::PlaceOrder(limit(2, instrument, Side::Sell, px(price), 100)),
    )
    .expect("ask");
    run(
        e,
        T0,
        Command::PlaceOrder(limit(1, instrument, Side::Buy, px(price), 100)),
    )
    .expect("buy");
}

/// Four accounts of 200,000, marks at 60,000, account 1 margined from marks (standard).
fn margined_market() -> Engine {
    let mut e = engine_with(EngineLimits::default(), 4, usd(200_000));
    run(&mut e, T0, Command::OracleUpdate(update(60_000.0, T0))).expect("oracle");
    run(
        &mut e,
        T0,
        Command::SetMarginMode {
            account: AccountId(1),
            mode: MarginMode::Standard,
        },
    )
    .expect("standard");
    e
}

/// `setup()` then `trade`, the `accounts` having first withdrawn what leaves each of them 500
/// free after the trade. (A withdrawal must leave the stress scenarios of the account's
/// positions covered, which a leveraged position is not: leverage is taken after withdrawing.)
fn with_500_free_after(
    setup: fn() -> Engine,
    accounts: &[u32],
    trade: impl Fn(&mut Engine),
) -> Engine {
    let mut probe = setup();
    trade(&mut probe);
    let mut e = setup();
    for &account in accounts {
        let (_, _, free) = probe.collateral(AccountId(account)).expect("exists");
        run(
            &mut e,
            T0,
            Command::Withdraw {
                account: AccountId(account),
                amount: Amount(free.0 - usd(500).0),
            },
        )
        .expect("withdraw what leaves 500 free after the trade");
    }
    trade(&mut e);
    for &account in accounts {
        let (_, _, free) = e.collateral(AccountId(account)).expect("exists");
        assert_eq!(free, usd(500));
    }
    e
}

fn position(e: &Engine, account: u32) -> i64 {
    e.position_view(AccountId(account), InstrumentId(PERP))
        .map_or(0, |p| p.0.0)
}

fn take(e: &mut Engine, time: u64, qty: i64) -> Result<Vec<Event>, RejectCode> {
    run(
        e,
        time,
        Command::Liquidate {
            liquidator: AccountId(3),
            account: AccountId(1),
            instrument: InstrumentId(PERP),
            qty: Qty(qty),
        },
    )
}

#[test]
fn below_maintenance_the_auction_sells_in_steps_until_cured_or_flat() {
    let mut e = leveraged_long();
    let t = T0 + 1_000;
    let events = fall(&mut e, t, |at| Command::OracleUpdate(update(55_000.0, at)));
    assert!(
        events.contains(&Event::LiquidationStarted {
            account: AccountId(1)
        }),
        "{events:?}"
    );
    assert_eq!(
        run(
            &mut e,
            t,
            Command::PlaceOrder(limit(1, PERP, Side::Sell, px(55_000), 10))
        ),
        Err(RejectCode::AccountInLiquidation)
    );
    assert_eq!(
        take(&mut e, t, 50 * STEP),
        Err(RejectCode::LiquidationTooLarge)
    );
    assert_eq!(
        run(
            &mut e,
            t,
            Command::Liquidate {
                liquidator: AccountId(1),
                account: AccountId(1),
                instrument: InstrumentId(PERP),
                qty: Qty(STEP)
            }
        ),
        Err(RejectCode::SelfLiquidation)
    );
    let events = take(&mut e, t, 25 * STEP).expect("a 25% step");
    // 1% below the 55,000 mark at the start of the auction.
    assert!(events.iter().any(|ev| matches!(ev, Event::LiquidationTransfer { price, qty, .. } if *price == px(54_450) && *qty == Qty(-25 * STEP))), "{events:?}");
    // Steps until the account is cured or flat: then no liquidator may bid, and the
    // liquidation ends at the next oracle update (engine rules 5), not before.
    let mut rounds = 0;
    loop {
        let held = position(&e, 1);
        let step = (held / 4 / STEP * STEP).max(STEP).min(held);
        match take(&mut e, t, step) {
            Ok(events) => assert!(
                !events.contains(&Event::LiquidationEnded {
                    account: AccountId(1),
                }),
                "{events:?}"
            ),
            Err(code) => {
                assert_eq!(code, RejectCode::NotLiquidating);
                break;
            }
        }
        e.check_invariants().expect("audit after every take");
        rounds += 1;
        assert!(rounds < 20, "liquidation did not finish");
    }
    // Account 1's ask, refused only while it is frozen.
    let ask = |e: &mut Engine, t| {
        run(
            e,
            t,
            Command::PlaceOrder(limit(1, PERP, Side::Sell, px(55_000), 10)),
        )
    };
    assert_eq!(
        ask(&mut e, t),
        Err(RejectCode::AccountInLiquidation),
        "frozen until its end is posted"
    );
    // A restore derives the end due (`ends_due`): the restored engine ends it at the next
    // update as the live one does.
    let mut restored =
        Engine::restore_bytes(&e.snapshot(), optio_types::WorstCaseMargin).expect("restores");
    let t = t + 1_000;
    for engine in [&mut e, &mut restored] {
        let events = run(engine, t, Command::OracleUpdate(update(55_000.0, t))).expect("update");
        assert!(
            events.contains(&Event::LiquidationEnded {
                account: AccountId(1),
            }),
            "{events:?}"
        );
        engine.check_invariants().expect("audit");
    }
    assert_eq!(restored.state_hash(), e.state_hash());
    assert_ne!(
        ask(&mut e, t),
        Err(RejectCode::AccountInLiquidation),
        "not frozen once ended"
    );
    let (balance, _, _) = e.collateral(AccountId(1)).expect("exists");
    // Equity at the 55,000 mark (position in 1e-8 contracts, 55,000 USD = 5.5e10 micro).
    let equity = balance.0 + position(&e, 1) * 550;
    assert!(
        equity >= 0,
        "solvent: no deficit was needed (equity {equity})"
    );
    assert!(position(&e, 3) > 0, "the liquidator holds what it took");
}

/// A fixed history that observes the timing of an auction's end (engine rules 5): account 1
/// falls below maintenance, its auction starts, the liquidator takes a quarter of what is left
/// until it is cured, and a later update ends it. Returns the state hashes after the cure
/// (still liquidating, frozen) and after the update (ended), for the rules fingerprint: an
/// engine that ended the auction at the cure, as rules 4 did, or at another update, gives
/// other hashes.
pub fn cured_then_ended() -> [[u8; 32]; 2] {
    let mut e = leveraged_long();
    let t = T0 + 1_000;
    fall(&mut e, t, |at| Command::OracleUpdate(update(55_000.0, at)));
    loop {
        let step = (position(&e, 1) / 4 / STEP * STEP).max(STEP);
        if take(&mut e, t, step).is_err() {
            break;
        }
    }
    let cured = e.state_hash();
    let t = t + 1_000;
    let events = run(&mut e, t, Command::OracleUpdate(update(55_000.0, t))).expect("update");
    assert!(events.contains(&Event::LiquidationEnded {
        account: AccountId(1)
    }));
    // The state hash sees the auction still open at the cure.
    assert_ne!(cured, e.state_hash());
    [cured, e.state_hash()]
}

/// Engine rules 4: an update that leaves an account below maintenance cancels its orders and
/// holds it as liquidating (no order, withdrawal or mode change), but its auction starts only
/// at the beginning of the next accepted update, at the auction clock then (the first update's
/// time): a validity proof checks a start against the marks and time committed before it, and
/// a batch commits its marks after its ops. Until then no liquidator may bid. A deposit that
/// cures it before the start leaves nothing due.
#[test]
fn an_auction_starts_at_the_next_accepted_update() {
    let mut e = leveraged_long();
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(1, PERP, Side::Sell, px(70_000), 10)),
    )
    .expect("an ask resting on the long");
    let t = T0 + 1_000;
    let events = run(&mut e, t, Command::OracleUpdate(update(55_000.0, t))).expect("a drop");
    assert!(
        !events
            .iter()
            .any(|ev| matches!(ev, Event::LiquidationStarted { .. })),
        "{events:?}"
    );
    assert!(
        events.iter().any(|ev| matches!(
            ev,
            Event::OrderDone {
                reason: DoneReason::Liquidation,
                ..
            }
        )),
        "its orders go at once: {events:?}"
    );
    e.check_invariants().expect("audit: due, not liquidating");
    assert!(
        e.margin_view(AccountId(1)).expect("exists").liquidating,
        "shown as liquidating while its start waits"
    );
    let before = e.state_hash();
    assert_eq!(take(&mut e, t, STEP), Err(RejectCode::NotLiquidating));
    for command in [
        Command::PlaceOrder(limit(1, PERP, Side::Sell, px(55_000), 10)),
        Command::Withdraw {
            account: AccountId(1),
            amount: usd(1),
        },
        Command::SetMarginMode {
            account: AccountId(1),
            mode: MarginMode::Portfolio,
        },
    ] {
        assert_eq!(
            run(&mut e, t, command),
            Err(RejectCode::AccountInLiquidation)
        );
    }
    assert_eq!(e.state_hash(), before, "the refusals changed nothing");
    // A restore derives what is due.
    let restored =
        Engine::restore_bytes(&e.snapshot(), optio_types::WorstCaseMargin).expect("restores");
    assert_eq!(restored.state_hash(), e.state_hash());
    let t2 = t + 5_000;
    let events = run(&mut e, t2, Command::OracleUpdate(update(55_000.0, t2))).expect("next");
    assert!(events.contains(&Event::LiquidationStarted {
        account: AccountId(1)
    }));
    let events = take(&mut e, t2, STEP).expect("a bid now");
    // The discount 5 s into the auction (from the first update's time): 1% plus 19% x 5/900
    // of 55,000, rounded up to the tick, 54,391.94... -> 54,392 (the tick is 1).
    let price = events.iter().find_map(|ev| match ev {
        Event::LiquidationTransfer { price, .. } => Some(*price),
        _ => None,
    });
    assert!(
        price.is_some_and(|p| p < px(54_450) && p > px(54_300)),
        "{price:?}"
    );

    // Cured before the start: nothing is due.
    let mut e = leveraged_long();
    run(&mut e, t, Command::OracleUpdate(update(55_000.0, t))).expect("a drop");
    run(
        &mut e,
        t,
        Command::Deposit {
            account: AccountId(1),
            amount: usd(100_000),
        },
    )
    .expect("a deposit cures it");
    e.check_invariants().expect("audit: nothing due");
    let events = run(&mut e, t2, Command::OracleUpdate(update(55_000.0, t2))).expect("next");
    assert!(
        !events
            .iter()
            .any(|ev| matches!(ev, Event::LiquidationStarted { .. }))
    );
    run(
        &mut e,
        t2,
        Command::PlaceOrder(limit(1, PERP, Side::Sell, px(70_000), 10)),
    )
    .expect("it trades again");
}

/// A start takes an op slot of the batch (and its account a register, and its positions a
/// margin slot's registers): with a fill budget of one op, two accounts due start one an
/// update, in account order.
#[test]
fn auctions_start_within_the_fill_budget() {
    let mut e = two_leveraged_longs(optio_types::FillBudget {
        fills: 1,
        ..optio_types::FillBudget::UNBOUNDED
    });
    let (events, t2) = crash(&mut e, 45_000.0);
    assert_eq!(accounts_of(&events, started), vec![1]);
    e.check_invariants().expect("audit: account 2 still due");
    let t3 = t2 + 1_000;
    let events = run(&mut e, t3, Command::OracleUpdate(update(45_100.0, t3))).expect("next");
    assert_eq!(accounts_of(&events, started), vec![2]);
    e.check_invariants().expect("audit");
}

/// `engine_with(limits with fill budget `budget`, 4 accounts)`, marks at 60,000; accounts 1
/// and 2 (`Standard`, 8,000 left after withdrawing) each long one perpetual at 60,000, from
/// accounts 0 and 3.
fn two_leveraged_longs(budget: optio_types::FillBudget) -> Engine {
    let limits = EngineLimits {
        fill_budget: budget,
        ..EngineLimits::default()
    };
    let mut e = engine_with(limits, 4, usd(200_000));
    run(&mut e, T0, Command::OracleUpdate(update(60_000.0, T0))).expect("oracle");
    for (buyer, seller) in [(1, 0), (2, 3)] {
        for command in [
            Command::SetMarginMode {
                account: AccountId(buyer),
                mode: MarginMode::Standard,
            },
            Command::Withdraw {
                account: AccountId(buyer),
                amount: usd(192_000),
            },
        ] {
            run(&mut e, T0, command).expect("accepted");
        }
        trade(&mut e, seller, buyer, PERP, Side::Sell, 60_000, 100);
    }
    e
}

/// The accounts `what` names in `events`, in order.
fn accounts_of(events: &[Event], what: fn(&Event) -> Option<u32>) -> Vec<u32> {
    events.iter().filter_map(what).collect()
}

/// A `LiquidationStarted` event's account.
fn started(ev: &Event) -> Option<u32> {
    match ev {
        Event::LiquidationStarted { account } => Some(account.0),
        _ => None,
    }
}

/// A deficit's cover takes no margin slot of the batch (engine rules 7: its account held
/// nothing when the update began, which the proof reads from its leaf). With a fill budget of
/// one margin slot, two accounts left bankrupt and flat by their auctions (which start one an
/// update, each start taking the slot) are both covered at the next update; under rules 4 to
/// 6 each cover took the slot, one an update.
#[test]
fn deficit_covers_take_no_margin_slot() {
    let (per_update, _) = covers_within_one_margin_slot();
    assert_eq!(per_update, vec![vec![1, 2], vec![], vec![]]);
}

/// The history of `deficit_covers_take_no_margin_slot`: the accounts covered at each of the
/// three updates after the liquidators took both positions, and the state hashes after each
/// (for the rules fingerprint: which update covers and ends what is the budget's rule).
pub fn covers_within_one_margin_slot() -> (Vec<Vec<u32>>, Vec<[u8; 32]>) {
    let mut e = two_leveraged_longs(optio_types::FillBudget {
        margins: 1,
        ..optio_types::FillBudget::UNBOUNDED
    });
    let covered = |ev: &Event| match ev {
        Event::DeficitCovered { account, .. } => Some(account.0),
        _ => None,
    };
    let (events, mut t) = crash(&mut e, 45_000.0);
    assert_eq!(accounts_of(&events, started), vec![1]);
    t += 1_000;
    let events = run(&mut e, t, Command::OracleUpdate(update(45_100.0, t))).expect("next");
    assert_eq!(accounts_of(&events, started), vec![2]);
    // Each bankrupt: the liquidators take the whole positions.
    for (liquidator, account) in [(0, 1), (3, 2)] {
        run(
            &mut e,
            t,
            Command::Liquidate {
                liquidator: AccountId(liquidator),
                account: AccountId(account),
                instrument: InstrumentId(PERP),
                qty: Qty(100 * STEP),
            },
        )
        .expect("all of it: the equity is gone");
    }
    e.check_invariants().expect("audit: two covers due");
    let (mut per_update, mut hashes) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        t += 1_000;
        let events = run(&mut e, t, Command::OracleUpdate(update(45_100.0, t))).expect("next");
        per_update.push(accounts_of(&events, covered));
        hashes.push(e.state_hash());
        e.check_invariants().expect("audit");
    }
    (per_update, hashes)
}

/// The auction sells a long at no less than the low end of the perpetual's committed stress
/// range (`optio_types::stress_range`: the validity proof refuses a liquidation beyond it). With
/// risk arrays that move the perpetual at most 5% (2,750 at the 55,000 mark), the long offered at
/// the end of the auction, 20% below the mark, goes at 52,250 instead of 44,000.
#[test]
fn the_auction_stops_at_the_committed_stress_range() {
    let narrow = |spot: f64, at: u64| {
        let mut u = update(spot, at);
        for m in u
            .marks
            .iter_mut()
            .filter(|m| m.instrument == InstrumentId(PERP))
        {
            for v in &mut m.risk_array {
                *v = Amount(v.0.clamp(-usd(2_750).0, usd(2_750).0));
            }
        }
        Command::OracleUpdate(u)
    };
    let mut e = leveraged_long();
    let t = T0 + 1_000;
    let events = fall(&mut e, t, |at| narrow(55_000.0, at));
    assert!(events.contains(&Event::LiquidationStarted {
        account: AccountId(1)
    }));
    let sold_at = |events: &[Event]| {
        events.iter().find_map(|ev| match ev {
            Event::LiquidationTransfer { price, .. } => Some(*price),
            _ => None,
        })
    };
    let events = take(&mut e, t, 25 * STEP).expect("a step at the start");
    assert_eq!(
        sold_at(&events),
        Some(px(54_450)),
        "1% below, inside the range"
    );
    let end = t + 15 * 60_000;
    run(&mut e, end, narrow(55_000.0, end)).expect("a fresh mark");
    let events = take(&mut e, end, 10 * STEP).expect("a step at the end");
    assert_eq!(sold_at(&events), Some(px(52_250)), "{events:?}");
    e.check_invariants().expect("audit");
}

/// The auction's clock is the oracle's signed time: an auction starts at the publication time
/// of the update that left the account below maintenance, and its discount grows with later
/// updates' publication times, however late the operator sequenced them (an input's time is
/// the operator's word; a validity proof can read only the times the oracle signs). A node that
/// sequenced the update starting the auction 9 s late sells at the same prices as one that did
/// not; under the inputs' clock it would have sold about 100 USDC higher at every step.
#[test]
fn the_auctions_clock_is_the_oracles_signed_time() {
    let sold_at = |events: &[Event]| {
        events.iter().find_map(|ev| match ev {
            Event::LiquidationTransfer { price, .. } => Some(*price),
            _ => None,
        })
    };
    let prices = |start_lag: u64| {
        let mut e = leveraged_long();
        let t = T0 + 1_000;
        let events = fall_at(&mut e, t + start_lag, t, |at| {
            Command::OracleUpdate(update(55_000.0, at))
        });
        assert!(events.contains(&Event::LiquidationStarted {
            account: AccountId(1)
        }));
        let mut sold = Vec::new();
        for minutes in [1, 5, 10] {
            let published = t + minutes * 60_000;
            run(
                &mut e,
                published,
                Command::OracleUpdate(update(55_000.0, published)),
            )
            .expect("a fresh mark");
            let events = take(&mut e, published, STEP).expect("a step");
            sold.push(sold_at(&events).expect("sold"));
        }
        e.check_invariants().expect("audit");
        sold
    };
    let on_time = prices(0);
    assert!(
        on_time.windows(2).all(|w| w[0] > w[1]),
        "the discount grows with the oracle's time: {on_time:?}"
    );
    assert_eq!(prices(9_000), on_time);
}

#[test]
fn jelly_a_position_nobody_takes_is_deleveraged_and_the_waterfall_covers_the_loss() {
    let mut e = leveraged_long();
    // A 25% crash: held by the circuit breaker, then confirmed.
    let t1 = T0 + 1_000;
    let events = run(&mut e, t1, Command::OracleUpdate(update(45_000.0, t1))).expect("held");
    assert!(matches!(events.as_slice(), [Event::OracleHeld { .. }]));
    e.check_invariants()
        .expect("a held price changes no margin");
    let t2 = T0 + 2_000;
    let events = fall(&mut e, t2, |at| Command::OracleUpdate(update(45_100.0, at)));
    assert!(events.contains(&Event::LiquidationStarted {
        account: AccountId(1)
    }));
    // The would-be liquidator cannot carry the position.
    let (_, _, free) = e.collateral(AccountId(3)).expect("exists");
    run(
        &mut e,
        t2,
        Command::Withdraw {
            account: AccountId(3),
            amount: Amount(free.0 - usd(1_000).0),
        },
    )
    .expect("liquidator withdraws");
    assert_eq!(
        take(&mut e, t2, 100 * STEP),
        Err(RejectCode::InsufficientMargin)
    );
    let deleverage = Command::Deleverage {
        account: AccountId(1),
        instrument: InstrumentId(PERP),
    };
    assert_eq!(
        run(&mut e, t2, deleverage.clone()),
        Err(RejectCode::AuctionNotOver)
    );
    let t3 = t2 + 15 * 60_000;
    // Fifteen minutes of the operator's clock are not enough: the auction's clock is the
    // oracle's, which has published nothing since the start.
    assert_eq!(
        run(&mut e, t3, deleverage.clone()),
        Err(RejectCode::AuctionNotOver)
    );
    run(&mut e, t3, Command::OracleUpdate(update(45_100.0, t3))).expect("fresh marks");
    let fee_pool_before = e.pools().0;
    let events = run(&mut e, t3, deleverage).expect("deleverage");
    // The only opposite holder, account 2 (short one perp), is closed at the mark.
    assert!(events.iter().any(|ev| matches!(ev, Event::LiquidationTransfer { counterparty, deleverage: true, price, .. } if *counterparty == AccountId(2) && *price == px(45_100))));
    let covered = events.iter().find_map(|ev| match ev {
        Event::DeficitCovered {
            insurance,
            fee_pool,
            socialized,
            unresolved,
            ..
        } => Some((*insurance, *fee_pool, *socialized, *unresolved)),
        _ => None,
    });
    let (_, from_fees, socialized, unresolved) =
        covered.expect("the bankrupt account's deficit is covered");
    assert_eq!(
        from_fees, fee_pool_before,
        "the fee pool is used before any user loses"
    );
    assert!(socialized.0 > 0 && unresolved.0 == 0);
    assert_eq!(e.collateral(AccountId(1)).expect("exists").0, Amount(0));
    assert_eq!(position(&e, 1), 0);
    assert_eq!(position(&e, 2), 0);
    e.check_invariants().expect("solvent and conserved");
}

#[test]
fn mango_a_pumped_trade_price_does_not_create_collateral() {
    let mut e = engine_with(EngineLimits::default(), 4, usd(200_000));
    run(&mut e, T0, Command::OracleUpdate(update(60_000.0, T0))).expect("oracle");
    for a in [1, 2] {
        run(
            &mut e,
            T0,
            Command::SetMarginMode {
                account: AccountId(a),
                mode: MarginMode::Standard,
            },
        )
        .expect("standard");
    }
    let free = |e: &Engine| {
        (1..=2)
            .map(|a| e.collateral(AccountId(a)).expect("exists").2.0)
            .sum::<i64>()
    };
    let before = free(&e);
    // Two colluding accounts print a trade 50% above the index on an empty book.
    long_one(&mut e, PERP, 90_000);
    // Margin values positions at the oracle mark, not at the last trade: no new collateral.
    assert!(
        free(&e) <= before,
        "free collateral grew from {before} to {}",
        free(&e)
    );
    let (_, _, free_seller) = e.collateral(AccountId(2)).expect("exists");
    assert_eq!(
        run(
            &mut e,
            T0,
            Command::Withdraw {
                account: AccountId(2),
                amount: Amount(free_seller.0 + 1)
            }
        ),
        Err(RejectCode::InsufficientFreeCollateral)
    );
    e.check_invariants().expect("audit");
}

pub type Step = (u8, u8, u8, i16);

pub fn step() -> impl Strategy<Value = Step> {
    (0u8..7, 0u8..4, 1u8..40, -120i16..120)
}

/// Runs one random history; returns how many liquidations started, transfers happened,
/// deficits were covered, positions settled, covers came in an input after the one that
/// settled the account's last position, and resting orders were cancelled instead of filled
/// (their accounts could no longer margin them).
/// A cover in `events` ended its account's liquidation with bad debt left.
fn left_unresolved(events: &[Event]) -> bool {
    events.iter().any(|ev| match ev {
        Event::DeficitCovered {
            account,
            unresolved,
            ..
        } => unresolved.0 > 0 && events.contains(&Event::LiquidationEnded { account: *account }),
        _ => false,
    })
}

/// What one history did (the counts `liquidation_history` names) and its final state hash.
pub type HistoryOutcome = ((usize, usize, usize, usize, usize, usize), [u8; 32]);

/// One history; with `bounded`, a fill budget of three accounts a batch (a cover and two loss
/// shares, or a fill and a liquidation's counterparty), under which covers come only in oracle
/// updates, shared by at most two accounts each.
pub fn liquidation_history(steps: &[Step], bounded: bool) -> Result<HistoryOutcome, TestCaseError> {
    let mut counts = (0, 0, 0, 0, 0, 0);
    // Accounts settled by an earlier input and not traded since.
    let mut settled_before = std::collections::BTreeSet::new();

    let limits = if bounded {
        EngineLimits {
            fill_budget: optio_types::FillBudget {
                accounts: 3,
                ..optio_types::FillBudget::UNBOUNDED
            },
            ..EngineLimits::default()
        }
    } else {
        EngineLimits::default()
    };
    let mut e = engine_with(limits, 6, usd(5_000));
    let mut oracle = TestOracle::default();
    let mut t = T0;
    let mut spot = 60_000.0;
    let mut events = Vec::new();
    let mut apply = |e: &mut Engine, time: u64, command: Command, events: &mut Vec<Event>| {
        events.clear();
        let update = matches!(command, Command::OracleUpdate(_));
        // Accounts that cover the worst-case payoff of their shorts: never liquidated.
        let covered: std::collections::BTreeSet<AccountId> = (0..e.account_count() as u32)
            .map(AccountId)
            .filter(|&a| e.maintenance(a).is_some_and(|(_, surplus)| surplus >= 0))
            .collect();
        // And those below maintenance: only they may be liquidated (a validity proof checks
        // it before each liquidation).
        let below: std::collections::BTreeSet<AccountId> = (0..e.account_count() as u32)
            .map(AccountId)
            .filter(|&a| {
                let (balance, _, _) = e.collateral(a).expect("exists");
                e.maintenance(a)
                    .is_some_and(|(maintenance, _)| balance < maintenance)
            })
            .collect();
        let _ = e.apply(
            &optio_types::Input {
                time_ms: time,
                command,
            },
            events,
        );
        // Within the budget, a cover and its shares come in an oracle update, three ops at
        // most (a batch holds them).
        let covers = events
            .iter()
            .filter(|ev| matches!(ev, Event::DeficitCovered { .. } | Event::LossShared { .. }))
            .count();
        if bounded && covers > 0 {
            assert!(update && covers <= 3, "{events:?}");
        }
        // A validity proof applies a batch's settlements after its other ops: no input covers
        // the deficit of, or charges a loss share to, an account it settled.
        let settled: std::collections::BTreeSet<AccountId> = events
            .iter()
            .filter_map(|ev| match ev {
                Event::PositionSettled { account, .. } => Some(*account),
                _ => None,
            })
            .collect();
        // A fill never leaves either of its accounts below maintenance: the resting order of an
        // account that could no longer margin it is cancelled instead.
        let traded: std::collections::BTreeSet<AccountId> = events
            .iter()
            .filter_map(|ev| match ev {
                Event::Fill {
                    maker_account,
                    taker_account,
                    ..
                } => Some([*maker_account, *taker_account]),
                _ => None,
            })
            .flatten()
            .collect();
        // And leaves both with equity at the marks of at least zero (`balance * 1e8 + sum q *
        // mark`, a missing mark counting 0): no fill leaves an account bankrupt, the rule a
        // validity proof checks after fills (docs/settlement.md). So does every account that
        // took a liquidated position, a liquidator or a holder deleveraged against it.
        let took = events.iter().filter_map(|ev| match ev {
            Event::LiquidationTransfer { counterparty, .. } => Some(*counterparty),
            _ => None,
        });
        for account in traded.iter().copied().chain(took) {
            let equity = equity_at_marks(e, account.0);
            assert!(
                equity >= 0,
                "account {account:?} left with equity {equity} below zero: {events:?}"
            );
        }
        for ev in events.iter() {
            match ev {
                Event::LiquidationStarted { account } => {
                    counts.0 += 1;
                    assert!(
                        !traded.contains(account),
                        "a fill left account {account:?} below maintenance: {events:?}"
                    );
                }
                Event::OrderDone {
                    reason: optio_types::DoneReason::Margin,
                    ..
                } => counts.5 += 1,
                Event::LiquidationTransfer {
                    account,
                    instrument,
                    qty,
                    price,
                    ..
                } => {
                    counts.1 += 1;
                    assert!(
                        !covered.contains(account),
                        "{account:?} covered its shorts: {events:?}"
                    );
                    assert!(
                        below.contains(account),
                        "{account:?} was not below maintenance: {events:?}"
                    );
                    settled_before.remove(account);
                    // Inside the stress range of the mark it was priced at, on the liquidated
                    // account's side (what a validity proof checks).
                    let record = &e.canonical().instruments[instrument.0 as usize];
                    let (mark, risk) = record.mark.as_ref().expect("liquidated at a mark");
                    let (low, high) = optio_types::stress_range(*mark, risk.iter().map(|a| a.0));
                    let p = i128::from(price.0);
                    assert!(
                        if qty.0 > 0 { p <= high } else { p >= low },
                        "{price:?} outside {low}..{high}: {events:?}"
                    );
                }
                Event::DeficitCovered { account, .. } => {
                    counts.2 += 1;
                    assert!(
                        !settled.contains(account),
                        "covered where settled: {events:?}"
                    );
                    if settled_before.remove(account) {
                        counts.4 += 1;
                    }
                }
                Event::LossShared { account, .. } => {
                    assert!(
                        !settled.contains(account),
                        "shared where settled: {events:?}"
                    );
                }
                Event::PositionSettled { .. } => counts.3 += 1,
                _ => {}
            }
        }
        settled_before.extend(settled);
        if let Err(v) = e.check_invariants() {
            panic!("{v}");
        }
    };
    apply(
        &mut e,
        t,
        Command::OracleUpdate(oracle.update(spot, t)),
        &mut events,
    );
    apply(
        &mut e,
        t,
        Command::Deposit {
            account: AccountId(5),
            amount: usd(2_000_000),
        },
        &mut events,
    );
    for a in 0..5u32 {
        let mode = if a % 2 == 0 {
            MarginMode::Standard
        } else {
            MarginMode::Portfolio
        };
        apply(
            &mut e,
            t,
            Command::SetMarginMode {
                account: AccountId(a),
                mode,
            },
            &mut events,
        );
    }
    let mut unresolved = false;
    for &(kind, a, size, move_bp) in steps {
        t += 20_000;
        let account = u32::from(a);
        match kind {
            0 | 1 => {
                let side = if kind == 0 { Side::Buy } else { Side::Sell };
                let price = px((spot as i64 / 10) * 10);
                apply(
                    &mut e,
                    t,
                    Command::PlaceOrder(limit(account, PERP, side, price, i64::from(size))),
                    &mut events,
                );
                apply(
                    &mut e,
                    t,
                    Command::PlaceOrder(limit(
                        4 - account.min(3),
                        PERP,
                        side.opposite(),
                        price,
                        i64::from(size),
                    )),
                    &mut events,
                );
            }
            2 => {
                // Now and then a crash or a squeeze of up to 36% in one step.
                let scale = if size > 30 { 3.0 } else { 1.0 };
                spot *= 1.0 + scale * f64::from(move_bp) / 1_000.0;
                spot = spot.clamp(20_000.0, 95_000.0);
                apply(
                    &mut e,
                    t,
                    Command::OracleUpdate(oracle.update(spot, t)),
                    &mut events,
                );
                // A big move is held; confirm it.
                if events
                    .iter()
                    .any(|ev| matches!(ev, Event::OracleHeld { .. }))
                {
                    t += 1_000;
                    apply(
                        &mut e,
                        t,
                        Command::OracleUpdate(oracle.update(spot, t)),
                        &mut events,
                    );
                }
            }
            3 => {
                for victim in 0..5u32 {
                    let q = e
                        .position_view(AccountId(victim), InstrumentId(PERP))
                        .map_or(0, |p| p.0.0.abs());
                    let qty = (q / 4 / STEP * STEP).max(STEP).min(q.max(STEP));
                    apply(
                        &mut e,
                        t,
                        Command::Liquidate {
                            liquidator: AccountId(5),
                            account: AccountId(victim),
                            instrument: InstrumentId(PERP),
                            qty: Qty(qty),
                        },
                        &mut events,
                    );
                }
            }
            4 => {
                t += 16 * 60_000;
                apply(
                    &mut e,
                    t,
                    Command::OracleUpdate(oracle.update(spot, t)),
                    &mut events,
                );
                for victim in 0..5u32 {
                    apply(
                        &mut e,
                        t,
                        Command::Deleverage {
                            account: AccountId(victim),
                            instrument: InstrumentId(PERP),
                        },
                        &mut events,
                    );
                    unresolved |= left_unresolved(&events);
                }
            }
            5 => {
                apply(
                    &mut e,
                    t,
                    Command::Deposit {
                        account: AccountId(account),
                        amount: usd(i64::from(size) * 100),
                    },
                    &mut events,
                );
            }
            _ => {
                // The put that expires at T0 + 1h, traded near its mark: histories that run
                // past expiry settle it at the oracle's TWAP, liquidating accounts included.
                let side = if move_bp > 0 { Side::Buy } else { Side::Sell };
                let price = px(500 + i64::from(move_bp.abs()) * 10);
                apply(
                    &mut e,
                    t,
                    Command::PlaceOrder(limit(account, 1, side, price, i64::from(size))),
                    &mut events,
                );
                apply(
                    &mut e,
                    t,
                    Command::PlaceOrder(limit(
                        4 - account.min(3),
                        1,
                        side.opposite(),
                        price,
                        i64::from(size),
                    )),
                    &mut events,
                );
            }
        }
    }
    // More updates (no settlement): the covers still due come (within the budget, two
    // accounts' shares an update).
    for _ in 0..if bounded { 6 } else { 1 } {
        t += 1_000;
        apply(
            &mut e,
            t,
            Command::OracleUpdate(oracle.update(spot, t)),
            &mut events,
        );
        unresolved |= left_unresolved(&events);
    }
    if !unresolved {
        for a in 0..6u32 {
            let (balance, _, _) = e.collateral(AccountId(a)).expect("exists");
            // Flat in every instrument: an account still holding the put is not finished
            // (its deficit is covered when its last position closes or settles).
            let flat = (0..=PERP).all(|i| {
                e.position_view(AccountId(a), InstrumentId(i))
                    .is_none_or(|p| p.0.0 == 0)
            });
            prop_assert!(
                !(flat && balance.0 < 0),
                "account {a} flat with negative balance {balance}"
            );
        }
    }
    Ok((counts, e.state_hash()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random leveraged traders, price paths with crashes, liquidations, deleveraging and option
    /// expiry with settlement at the oracle's TWAP: the full
    /// audit (conservation, zero-sum positions, caches, liquidation state) holds after every
    /// input, and afterwards no flat account is left with a negative balance unless the
    /// waterfall reported it as unresolved.
    #[test]
    fn conservation_holds_through_liquidation_and_expiry(steps in prop::collection::vec(step(), 1..80), bounded: bool) {
        liquidation_history(&steps, bounded)?;
    }
}

#[test]
fn the_random_histories_do_liquidate() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut total = (0, 0, 0, 0, 0, 0);
    // Deficits covered within a fill budget (in oracle updates).
    let mut bounded_deficits = 0;
    for k in 0..48 {
        let steps = prop::collection::vec(step(), 80)
            .new_tree(&mut runner)
            .expect("strategy")
            .current();
        let (c, _) = liquidation_history(&steps, k % 2 == 1).expect("history holds");
        if k % 2 == 1 {
            bounded_deficits += c.2;
        }
        total = (
            total.0 + c.0,
            total.1 + c.1,
            total.2 + c.2,
            total.3 + c.3,
            total.4 + c.4,
            total.5 + c.5,
        );
    }
    eprintln!(
        "liquidations {} transfers {} deficits {} settlements {} covers after a settlement {} \
         orders cancelled for margin {}",
        total.0, total.1, total.2, total.3, total.4, total.5
    );
    assert!(
        total.0 > 0 && total.1 > 0 && total.2 > 0 && total.3 > 0 && total.5 > 0,
        "{total:?}"
    );
    assert!(bounded_deficits > 0, "no deficit within a fill budget");
}

/// Found by `optio sim`: a fully collateralized counterparty whose asks rested on its long (the
/// long covered part of what they could sell) was deleveraged, its long closed at the mark, and
/// the asks left uncovered: under-collateralized, and the engine halted on its invariant. Now
/// the counterparty's orders in the instrument are cancelled before the transfer, and every
/// invariant holds.
#[test]
fn a_deleveraged_counterparty_loses_the_orders_its_position_covered() {
    // Account 2 (fully collateralized) buys one perpetual from account 1 (margined), then
    // offers two at 90,000: one is covered by its long, one by collateral. Both are left with 500
    // free.
    let mut e = with_500_free_after(margined_market, &[1, 2], |e| {
        run(
            e,
            T0,
            Command::PlaceOrder(limit(2, PERP, Side::Buy, px(60_000), 100)),
        )
        .expect("bid");
        run(
            e,
            T0,
            Command::PlaceOrder(limit(1, PERP, Side::Sell, px(60_000), 100)),
        )
        .expect("sell 1 perp");
        run(
            e,
            T0,
            Command::PlaceOrder(limit(2, PERP, Side::Sell, px(90_000), 200)),
        )
        .expect("asks resting on the long");
    });
    // An 8% rise: account 1's short is below maintenance; nobody bids in the auction.
    let t = T0 + 1_000;
    let events = fall(&mut e, t, |at| Command::OracleUpdate(update(64_800.0, at)));
    assert!(events.contains(&Event::LiquidationStarted {
        account: AccountId(1)
    }));
    let t = t + 15 * 60_000;
    run(&mut e, t, Command::OracleUpdate(update(64_800.0, t))).expect("fresh marks");
    let events = run(
        &mut e,
        t,
        Command::Deleverage {
            account: AccountId(1),
            instrument: InstrumentId(PERP),
        },
    )
    .expect("deleveraged against account 2");
    assert!(
        events.iter().any(|ev| matches!(
            ev,
            Event::OrderDone {
                reason: optio_types::DoneReason::Deleveraged,
                ..
            }
        )),
        "{events:?}"
    );
    assert!(events.iter().any(|ev| matches!(ev, Event::LiquidationTransfer { counterparty, deleverage: true, .. } if *counterparty == AccountId(2))));
    assert_eq!(position(&e, 2), 0);
    let (balance, requirement, _) = e.collateral(AccountId(2)).expect("exists");
    assert!(balance >= requirement, "{balance:?} < {requirement:?}");
    e.check_invariants().expect("every invariant holds");
}

/// What the stress rule lets leave account 1, long the perpetual, at the marks of
/// `update(60_000.0, T0)`: its balance plus the long's value in the worst scenario.
fn stress_free_of_1(e: &Engine) -> i128 {
    let u = update(60_000.0, T0);
    let mark = u
        .marks
        .iter()
        .find(|m| m.instrument == InstrumentId(PERP))
        .expect("perpetual marked");
    let worst = mark
        .risk_array
        .iter()
        .map(|a| a.0)
        .min()
        .unwrap_or(0)
        .min(0);
    let (balance, _, _) = e.collateral(AccountId(1)).expect("exists");
    let q = i128::from(position(e, 1));
    i128::from(balance.0)
        + (q * i128::from(mark.mark.0 + worst)).div_euclid(i128::from(optio_types::QTY_SCALE))
}

/// Withdrawals and transfers leave the account's positions covered in every stress scenario of
/// their risk arrays, whatever its margin mode (the rule the validity circuit proves): the
/// standard rule would let a 60,000 perpetual long withdraw down to 10% initial margin, the
/// stress rule keeps its -50% scenario covered. A refusal changes nothing; an L1 forced
/// withdrawal takes exactly what the rule leaves.
#[test]
fn withdrawals_keep_the_stress_scenarios_covered() {
    let long = || {
        let mut e = margined_market();
        long_one(&mut e, PERP, 60_000);
        e
    };
    let mut e = long();
    // Account 4: account 1's owner's second account, for the transfer.
    let owner = e.account_owner(AccountId(1)).expect("exists");
    run(&mut e, T0, Command::OpenAccount { owner }).expect("second account");
    let (balance, _, free) = e.collateral(AccountId(1)).expect("exists");
    let stress = Amount(i64::try_from(stress_free_of_1(&e)).expect("fits"));
    assert!(
        stress.0 > 0 && stress < free,
        "the standard rule frees {free}, the stress rule {stress}"
    );
    let before = e.state_hash();
    for (command, what) in [
        (
            Command::Withdraw {
                account: AccountId(1),
                amount: Amount(stress.0 + 1),
            },
            "withdrawal",
        ),
        (
            Command::Transfer {
                from: AccountId(1),
                to: AccountId(4),
                amount: Amount(stress.0 + 1),
            },
            "transfer",
        ),
    ] {
        assert_eq!(
            run(&mut e, T0, command),
            Err(RejectCode::InsufficientFreeCollateral),
            "{what} beyond the stress rule"
        );
        assert_eq!(e.state_hash(), before, "a refused {what} changes nothing");
    }
    run(
        &mut e,
        T0,
        Command::Withdraw {
            account: AccountId(1),
            amount: stress,
        },
    )
    .expect("withdraw exactly what the stress rule leaves");
    e.check_invariants().expect("audit");

    // A forced withdrawal takes what leaves the account covering its shorts' worst case, less a
    // micro-USDC a position: a long owes nothing, so its balance but one micro-USDC, less than
    // the stress rule leaves (that counts the long's value in its worst scenario).
    let mut e = long();
    assert!(balance < stress, "{balance:?} {stress:?}");
    assert_eq!(forced_withdrawal(&mut e, 1), Amount(-(balance.0 - 1)));
    e.check_invariants().expect("audit");
}

/// The escape hatch pays what leaves an account holding positions covering what its shorts can
/// owe at worst (`optio_types::forced_withdrawal`: less a micro-USDC a position), in every
/// margin mode and even where a withdrawal is held back: with the marks stale (a withdrawal is
/// refused, `OracleStale`) the owner's forced withdrawal still takes exactly that, the amount
/// the validity proof holds the operator to (it needs no mark). A short keeps back its
/// worst-case payoff (the perpetual's cap); a long keeps back nothing but the micro-USDC.
#[test]
fn a_forced_withdrawal_takes_what_leaves_the_shorts_covered_even_with_stale_marks() {
    let mut e = margined_market();
    long_one(&mut e, PERP, 60_000);
    let (balance, _, _) = e.collateral(AccountId(1)).expect("exists");
    let stress = stress_free_of_1(&e);
    assert!(stress > 0, "{stress}");
    let later = T0 + 60_000;
    assert_eq!(
        run(
            &mut e,
            later,
            Command::Withdraw {
                account: AccountId(1),
                amount: usd(1),
            },
        ),
        Err(RejectCode::OracleStale),
        "stale marks hold a withdrawal back"
    );
    assert_eq!(e.collateral(AccountId(1)).expect("exists").0, balance);
    let owner = e.account_owner(AccountId(1)).expect("exists");
    let events = run(
        &mut e,
        later,
        Command::L1Withdrawal {
            priority: 0,
            owner,
            account: AccountId(1),
        },
    )
    .expect("served");
    let served = events.iter().find_map(|ev| match ev {
        Event::PriorityServed { amount, .. } => Some(amount.0),
        _ => None,
    });
    // A long owes nothing: its whole balance but a micro-USDC, below the stress rule's bound.
    assert!(i128::from(balance.0) < stress && balance.0 > 0);
    assert_eq!(served, Some(-(balance.0 - 1)), "all but a micro-USDC");
    e.check_invariants().expect("audit");

    // Account 2, short the perpetual to account 1, keeps its worst-case payoff: the cap.
    let spec = e.canonical().instruments[PERP as usize].spec.clone();
    let short =
        optio_types::full_collateral(&spec, optio_types::Qty(position(&e, 2))).expect("fits");
    let (balance, _, _) = e.collateral(AccountId(2)).expect("exists");
    assert!(
        short > 0 && i128::from(balance.0) > short,
        "{balance:?} {short}"
    );
    let owner = e.account_owner(AccountId(2)).expect("exists");
    let events = run(
        &mut e,
        later,
        Command::L1Withdrawal {
            priority: 1,
            owner,
            account: AccountId(2),
        },
    )
    .expect("served");
    let served = events.iter().find_map(|ev| match ev {
        Event::PriorityServed { amount, .. } => Some(i128::from(amount.0)),
        _ => None,
    });
    // The cap's payoff, W * |q| / 1e8, rounded up, and a micro-USDC for the position.
    let owed =
        optio_types::short_liability(&spec, optio_types::Qty(position(&e, 2))).expect("fits");
    assert_eq!(short, (owed + 99_999_999) / 100_000_000);
    assert_eq!(
        served,
        Some(short + 1 - i128::from(balance.0)),
        "all but the cap's payoff"
    );
    e.check_invariants().expect("audit");
}

/// Money leaves only an account whose open positions a validity proof can price
/// (`EngineLimits::max_positions_to_withdraw`, set from the prover's shape): past it a
/// withdrawal or transfer is refused and changes nothing. A forced withdrawal is not held to
/// it: its rule needs no mark, so no path per position (`optio_types::forced_withdrawal`).
#[test]
fn money_leaves_only_accounts_whose_positions_a_proof_can_price() {
    let limits = EngineLimits {
        max_positions_to_withdraw: 1,
        ..EngineLimits::default()
    };
    let mut e = engine_with(limits, 4, usd(200_000));
    run(&mut e, T0, Command::OracleUpdate(update(60_000.0, T0))).expect("oracle");
    long_one(&mut e, PERP, 60_000);
    let withdraw = || Command::Withdraw {
        account: AccountId(1),
        amount: usd(1_000),
    };
    run(&mut e, T0, withdraw()).expect("one position: within the limit");
    long_one(&mut e, 0, 1_000);
    let before = e.state_hash();
    assert_eq!(
        run(&mut e, T0, withdraw()),
        Err(RejectCode::TooManyPositionsToWithdraw)
    );
    assert_eq!(e.state_hash(), before, "a refusal changes nothing");
    let (balance, _, _) = e.collateral(AccountId(1)).expect("exists");
    assert_eq!(
        forced_withdrawal(&mut e, 1),
        Amount(-(balance.0 - 2)),
        "two longs owe nothing: all but a micro-USDC each"
    );
    e.check_invariants().expect("audit");
}

/// The escape hatch is served whole: a forced withdrawal from an account holding no position
/// takes all its collateral, past the cap on one typed amount (the validity proof holds the
/// operator to that); a request by anyone but the owner moves nothing.
#[test]
fn a_flat_accounts_forced_withdrawal_takes_all_of_it() {
    let limits = EngineLimits {
        max_amount: usd(1_000),
        ..EngineLimits::default()
    };
    let mut e = engine_with(limits, 2, usd(1_000));
    run(
        &mut e,
        T0,
        Command::Deposit {
            account: AccountId(1),
            amount: usd(500),
        },
    )
    .expect("deposit");
    let before = e.state_hash();
    let stranger = run(
        &mut e,
        T0,
        Command::L1Withdrawal {
            priority: 0,
            owner: owner(9),
            account: AccountId(1),
        },
    )
    .expect("served");
    assert!(
        stranger
            .iter()
            .any(|ev| matches!(ev, Event::PriorityServed { amount, .. } if amount.0 == 0)),
        "someone else's request moves nothing"
    );
    assert_ne!(e.state_hash(), before, "served: the queue moved");
    let served = forced_withdrawal_at(&mut e, 1, 1);
    assert_eq!(served, Amount(-usd(1_500).0), "all of it, past max_amount");
    assert_eq!(e.collateral(AccountId(1)).map(|c| c.0), Some(Amount(0)));
    e.check_invariants().expect("audit");
}

/// Account 0, leveraged, short as many puts as its margin allows (sold to account 5), liquidated
/// by a crash to 40,000 with nobody bidding for its puts; then `deposit(sold, balance)` is paid
/// into it (it stays liquidating). Returns the engine and the time.
fn liquidating_put_seller(deposit: impl Fn(i64, Amount) -> Amount) -> (Engine, u64) {
    let mut e = engine_with(EngineLimits::default(), 6, usd(5_000));
    run(&mut e, T0, Command::OracleUpdate(update(60_000.0, T0))).expect("oracle");
    run(
        &mut e,
        T0,
        Command::Deposit {
            account: AccountId(5),
            amount: usd(2_000_000),
        },
    )
    .expect("deposit");
    run(
        &mut e,
        T0,
        Command::SetMarginMode {
            account: AccountId(0),
            mode: MarginMode::Standard,
        },
    )
    .expect("leveraged");
    let sold = (1..=40)
        .rev()
        .find(|&size| {
            run(
                &mut e,
                T0,
                Command::PlaceOrder(limit(0, 1, Side::Sell, px(1_000), size)),
            )
            .is_ok()
        })
        .expect("some puts sold");
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(5, 1, Side::Buy, px(1_000), sold)),
    )
    .expect("fills");
    let mut t = T0;
    let mut started = false;
    // (The crash is held by the circuit breaker until confirmed; the auction starts at the
    // update after the confirmation.)
    for spot in [50_000.0, 40_000.0, 40_000.0, 40_000.0] {
        t += 60_000;
        let events = run(&mut e, t, Command::OracleUpdate(update(spot, t))).expect("oracle");
        started |= events
            .iter()
            .any(|ev| matches!(ev, Event::LiquidationStarted { account } if account.0 == 0));
    }
    assert!(started, "account 0 is liquidated");
    let balance = e.collateral(AccountId(0)).expect("exists").0;
    let amount = deposit(sold, balance);
    if amount.is_positive() {
        let events = run(
            &mut e,
            t,
            Command::Deposit {
                account: AccountId(0),
                amount,
            },
        )
        .expect("deposit");
        assert!(
            !events
                .iter()
                .any(|ev| matches!(ev, Event::LiquidationEnded { .. })),
            "still liquidating"
        );
    }
    (e, t)
}

/// Runs minute by minute past the put's expiry, the index at `spot(minute)`; returns the minutes
/// (from 0) at which account 0's put settled and its deficit was covered, if ever, and every
/// event, auditing after each input.
fn past_expiry(
    e: &mut Engine,
    mut t: u64,
    spot: impl Fn(u32) -> f64,
) -> (Option<u32>, Option<u32>, Vec<Event>) {
    let (mut settled_at, mut covered_at, mut all) = (None, None, Vec::new());
    let mut oracle = TestOracle::default();
    for n in 0..70 {
        t += 60_000;
        let events = run(e, t, Command::OracleUpdate(oracle.update(spot(n), t))).expect("oracle");
        let settles = events
            .iter()
            .any(|ev| matches!(ev, Event::PositionSettled { account, .. } if account.0 == 0));
        let covers = events
            .iter()
            .any(|ev| matches!(ev, Event::DeficitCovered { account, .. } if account.0 == 0));
        if settles {
            assert!(!covers, "covered in its settlement's input");
            settled_at = Some(n);
        }
        if covers {
            covered_at = Some(n);
        }
        e.check_invariants().expect("audit");
        all.extend(events);
    }
    (settled_at, covered_at, all)
}

/// An expiry that settles the last position of an account being liquidated leaves its deficit
/// to the next input (a validity proof applies a batch's settlements after its other ops, so a
/// cover cannot share its account's settlement's input): the settlement covers nothing, the
/// next input covers the deficit.
#[test]
fn a_deficit_an_expiry_leaves_is_covered_by_the_next_input() {
    let (mut e, t) = liquidating_put_seller(|_, _| Amount(0));
    let (settled_at, covered_at, _) = past_expiry(&mut e, t, |_| 40_000.0);
    let settled_at = settled_at.expect("the put settles");
    assert_eq!(
        covered_at,
        Some(settled_at + 1),
        "covered by the next input"
    );
    assert_eq!(e.collateral(AccountId(0)).map(|c| c.0), Some(Amount(0)));
}

/// The same account, paid up to 17,500 a contract while liquidated (its sizes are in hundredths);
/// the index recovers to 45,000 for the
/// settlement's average (curing it) and falls back to 40,000 just before the expiry
/// (liquidating it again): the settlement, about 15,000 a put, leaves it flat with money, its
/// liquidation ends there, and no cover ever comes (none is left due: the audit holds after
/// every input).
#[test]
fn an_expiry_that_leaves_a_liquidated_account_solvent_ends_its_liquidation() {
    let (mut e, t) = liquidating_put_seller(|sold, balance| Amount(usd(175 * sold).0 - balance.0));
    let (settled_at, covered_at, events) =
        past_expiry(&mut e, t, |n| if n < 55 { 45_000.0 } else { 40_000.0 });
    assert!(settled_at.is_some(), "the put settles");
    assert_eq!(covered_at, None, "nothing to cover");
    assert!(
        events
            .iter()
            .any(|ev| matches!(ev, Event::LiquidationEnded { account } if account.0 == 0)),
        "its liquidation ends"
    );
    assert!(e.collateral(AccountId(0)).is_some_and(|c| c.0.0 > 0));
}

/// Found by the random exploration of `conservation_holds_through_liquidation_and_expiry`: a
/// history of trades, crashes, liquidations and deleveraging that ends with the put's expiry,
/// where one long of 6 contracts is settled against shorts of 5 and 1 at a value that is not a
/// whole number of micro-USDC per contract. The shorts' payments were rounded up (in their
/// favour), the long's payout down, so the payouts exceeded the payments by one unit and the
/// insurance credit was -1 with insurance at zero: the engine halted on its invariant.
#[test]
fn an_expiry_with_rounded_values_never_takes_insurance_below_zero() {
    let steps: Vec<Step> = vec![
        (2, 0, 1, -16),
        (1, 0, 1, 0),
        (0, 0, 1, 0),
        (0, 0, 1, 0),
        (0, 0, 1, 0),
        (2, 0, 1, 1),
        (0, 0, 1, 0),
        (0, 0, 1, 24),
        (1, 2, 13, -30),
        (2, 1, 20, -62),
        (6, 1, 37, 111),
        (4, 1, 30, 85),
        (6, 3, 1, -25),
        (2, 1, 10, 119),
        (0, 3, 5, -110),
        (3, 1, 28, 80),
        (4, 0, 2, 43),
        (1, 1, 26, -79),
        (2, 0, 32, -93),
        (6, 2, 5, 35),
        (3, 3, 3, -5),
        (3, 0, 21, -75),
        (6, 3, 27, -107),
        (3, 1, 4, -35),
        (2, 2, 11, -23),
        (0, 1, 18, -72),
        (5, 3, 33, -114),
        (6, 1, 32, -31),
        (0, 1, 12, -48),
        (2, 0, 31, 25),
        (4, 1, 6, 82),
        (0, 0, 25, 4),
        (6, 2, 24, 57),
        (5, 0, 21, 50),
        (1, 3, 36, 70),
        (1, 0, 16, 46),
    ];
    for bounded in [false, true] {
        liquidation_history(&steps, bounded).expect("the invariants hold");
    }
}

/// Serves an L1 forced withdrawal (the first in the queue) for the account's owner; returns the
/// amount it moved (negative: out of the account).
fn forced_withdrawal(e: &mut Engine, account: u32) -> Amount {
    forced_withdrawal_at(e, account, 0)
}

/// `forced_withdrawal` with queue id `priority`.
fn forced_withdrawal_at(e: &mut Engine, account: u32, priority: u64) -> Amount {
    let owner = e.account_owner(AccountId(account)).expect("exists");
    let events = run(
        e,
        T0,
        Command::L1Withdrawal {
            priority,
            owner,
            account: AccountId(account),
        },
    )
    .expect("served");
    events
        .iter()
        .find_map(|ev| match ev {
            Event::PriorityServed { amount, .. } => Some(*amount),
            _ => None,
        })
        .expect("served")
}

/// Moves the index from 60,000 to `spot` in steps the circuit breaker accepts.
fn drop_to(e: &mut Engine, spot: f64) -> u64 {
    let mut t = T0;
    let mut at = 60_000.0;
    while at > spot {
        at = (at * 0.95_f64).max(spot);
        t += 1_000;
        let events = run(e, t, Command::OracleUpdate(update(at, t))).expect("update");
        assert!(
            events
                .iter()
                .any(|ev| matches!(ev, Event::OracleAccepted { .. })),
            "{events:?}"
        );
    }
    t
}

fn fills_of(events: &[Event]) -> Vec<(u64, i64)> {
    events
        .iter()
        .filter_map(|ev| match ev {
            Event::Fill {
                maker_order, price, ..
            } => Some((maker_order.0, price.0)),
            _ => None,
        })
        .collect()
}

/// A resting bid margined at 60,000 would, after a 15% drop, buy a perpetual 9,000 above its
/// mark with 6,500 of collateral: the account would be bankrupt at the fill and the insurance
/// fund would pay its loss. The bid is cancelled instead, and the seller's order rests.
#[test]
fn a_resting_order_its_account_can_no_longer_margin_is_cancelled_not_filled() {
    let mut e = with_500_free_after(margined_market, &[1], |e| {
        run(
            e,
            T0,
            Command::PlaceOrder(limit(1, PERP, Side::Buy, px(60_000), 100)),
        )
        .expect("bid");
    });
    let (balance, _, _) = e.collateral(AccountId(1)).expect("exists");
    let t = drop_to(&mut e, 51_000.0);
    let events = run(
        &mut e,
        t,
        Command::PlaceOrder(limit(2, PERP, Side::Sell, px(60_000), 100)),
    )
    .expect("the sell is accepted");
    assert_eq!(fills_of(&events), vec![]);
    assert!(
        events.contains(&Event::OrderDone {
            order: optio_types::OrderId(1),
            account: AccountId(1),
            reason: optio_types::DoneReason::Margin,
            unfilled: Qty(100_000_000),
        }),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|ev| matches!(ev, Event::OrderRested { .. })),
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|ev| matches!(ev, Event::LiquidationStarted { .. })),
        "{events:?}"
    );
    assert_eq!(e.collateral(AccountId(1)).expect("exists").0, balance);
    assert_eq!(position(&e, 1), 0);
    e.check_invariants().expect("audit");
}

/// Two resting bids of one account, after a 10% drop: the first fill leaves the account above
/// maintenance and goes ahead; the second, counted after the first, would not, and is cancelled.
/// With the marks unmoved both fill.
#[test]
fn a_makers_fills_in_one_sweep_are_margined_together() {
    let bids = |e: &mut Engine| {
        for price in [60_000, 59_000] {
            run(
                e,
                T0,
                Command::PlaceOrder(limit(1, PERP, Side::Buy, px(price), 100)),
            )
            .expect("bid");
        }
    };
    let sweep = |e: &mut Engine, t: u64| {
        run(
            e,
            t,
            Command::Deposit {
                account: AccountId(2),
                amount: usd(1_000_000),
            },
        )
        .expect("deposit");
        run(
            e,
            t,
            Command::PlaceOrder(limit(2, PERP, Side::Sell, px(59_000), 200)),
        )
        .expect("sell")
    };
    let mut calm = with_500_free_after(margined_market, &[1], bids);
    let events = sweep(&mut calm, T0);
    assert_eq!(
        fills_of(&events),
        vec![(1, 60_000_000_000), (2, 59_000_000_000)]
    );

    let mut e = with_500_free_after(margined_market, &[1], bids);
    let t = drop_to(&mut e, 54_000.0);
    let events = sweep(&mut e, t);
    assert_eq!(fills_of(&events), vec![(1, 60_000_000_000)], "{events:?}");
    assert!(
        events.contains(&Event::OrderDone {
            order: optio_types::OrderId(2),
            account: AccountId(1),
            reason: optio_types::DoneReason::Margin,
            unfilled: Qty(100_000_000),
        }),
        "{events:?}"
    );
    let (balance, maintenance, _) = e.collateral(AccountId(1)).expect("exists");
    assert!(balance >= maintenance, "{balance:?} {maintenance:?}");
    assert_eq!(position(&e, 1), 100_000_000);
    e.check_invariants().expect("audit");
}

/// `margined_market` with account 2 on standard margin too.
fn two_margined_market() -> Engine {
    let mut e = margined_market();
    run(
        &mut e,
        T0,
        Command::SetMarginMode {
            account: AccountId(2),
            mode: MarginMode::Standard,
        },
    )
    .expect("standard");
    e
}

/// Deleveraging passes over a holder that would end with equity below zero at the marks: a
/// validity proof checks every account that takes a liquidated position ends its batch
/// solvent, so the transfer would make a batch no proof holds (and the batcher cannot cut
/// inside the input). Account 1, short a perpetual, and account 2, long it but short calls,
/// are both left bankrupt by a 40% rise; the only holder opposite account 1 is account 2.
#[test]
fn deleveraging_passes_over_a_holder_it_would_leave_insolvent() {
    let mut e = with_500_free_after(two_margined_market, &[1, 2], |e| {
        trade(e, 1, 2, PERP, Side::Sell, 60_000, 100);
        trade(e, 3, 2, 0, Side::Buy, 3_000, 1_000);
    });
    assert_eq!(position(&e, 2), 100 * STEP);
    let (events, t2) = crash(&mut e, 84_000.0);
    for account in [1, 2] {
        assert!(
            events.contains(&Event::LiquidationStarted {
                account: AccountId(account)
            }),
            "account {account}: {events:?}"
        );
    }
    let t3 = t2 + 15 * 60_000;
    run(&mut e, t3, Command::OracleUpdate(update(84_100.0, t3))).expect("fresh marks");
    assert!(
        equity_at_marks(&e, 2) < 0,
        "account 2 is bankrupt: {}",
        equity_at_marks(&e, 2)
    );
    let before = e.state_hash();
    let events = run(
        &mut e,
        t3,
        Command::Deleverage {
            account: AccountId(1),
            instrument: InstrumentId(PERP),
        },
    )
    .expect("accepted");
    assert!(
        !events
            .iter()
            .any(|ev| matches!(ev, Event::LiquidationTransfer { .. })),
        "{events:?}"
    );
    assert_eq!(position(&e, 1), -100 * STEP, "account 1 still short");
    assert_eq!(e.state_hash(), before, "nothing moved");
    e.check_invariants().expect("audit");
}

/// `accounts` accounts of 200,000, marks at 60,000; account 1 (standard margin, 15,000 left
/// after withdrawing) long two perpetuals at 60,000, one from account 0 and one from account 2.
fn long_two(limits: EngineLimits, accounts: u32) -> Engine {
    let mut e = engine_with(limits, accounts, usd(200_000));
    run(&mut e, T0, Command::OracleUpdate(update(60_000.0, T0))).expect("oracle");
    for command in [
        Command::SetMarginMode {
            account: AccountId(1),
            mode: MarginMode::Standard,
        },
        Command::Withdraw {
            account: AccountId(1),
            amount: usd(185_000),
        },
    ] {
        run(&mut e, T0, command).expect("accepted");
    }
    for seller in [0, 2] {
        trade(&mut e, seller, 1, PERP, Side::Sell, 60_000, 100);
    }
    assert_eq!(position(&e, 1), 200 * STEP);
    e
}

/// Account 1 (standard margin, 15,000 left after withdrawing) long two perpetuals, one from
/// account 0 and one from account 2, then a 25% crash and a quarter of an hour with no bids:
/// its auction is over. Returns the engine and the time.
fn long_two_past_the_auction(limits: EngineLimits) -> (Engine, u64) {
    let mut e = long_two(limits, 4);
    let (events, t2) = crash(&mut e, 45_000.0);
    assert!(events.contains(&Event::LiquidationStarted {
        account: AccountId(1)
    }));
    let t3 = t2 + 15 * 60_000;
    run(&mut e, t3, Command::OracleUpdate(update(45_100.0, t3))).expect("fresh marks");
    (e, t3)
}

/// Deleveraging keeps one input's transfers within the fill budget (what one proof holds):
/// with room for two accounts, the liquidated one and one holder, each `Deleverage` closes
/// one holder and the next continues; unbounded, one closes both.
#[test]
fn deleveraging_stays_within_the_fill_budget() {
    let counterparties = |limits: EngineLimits| {
        let (mut e, t) = long_two_past_the_auction(limits);
        let mut per_input = Vec::new();
        while position(&e, 1) != 0 {
            let events = run(
                &mut e,
                t,
                Command::Deleverage {
                    account: AccountId(1),
                    instrument: InstrumentId(PERP),
                },
            )
            .expect("deleveraged");
            per_input.push(counterparties(&events));
            e.check_invariants().expect("audit");
            assert!(per_input.len() <= 2, "{per_input:?}");
        }
        per_input
    };
    assert_eq!(counterparties(EngineLimits::default()), vec![vec![0, 2]]);
    let budget = EngineLimits {
        fill_budget: optio_types::FillBudget {
            accounts: 2,
            ..optio_types::FillBudget::UNBOUNDED
        },
        ..EngineLimits::default()
    };
    assert_eq!(counterparties(budget), vec![vec![0], vec![2]]);
}

/// Deleveraging stops once the account is back at its maintenance (a validity proof checks
/// that every liquidation's account is below it before the op,
/// `SettlementState::below_maintenance`): account 1, long two perpetuals on 15,000, after a drop
/// to 55,100 holds 5,200 against a maintenance of 5,510 (5% of 110,200). Past the auction,
/// closing one contract at the mark against the first holder halves that, so the second holder
/// keeps its position, the liquidation ends and a further `Deleverage` is refused.
#[test]
fn deleveraging_stops_once_the_account_is_maintained() {
    let mut e = long_two(EngineLimits::default(), 4);
    // (A drop within the circuit breaker: the first update leaves it below, the next starts
    // its liquidation.)
    let (_, t2) = crash(&mut e, 55_000.0);
    let t3 = t2 + 15 * 60_000;
    run(&mut e, t3, Command::OracleUpdate(update(55_100.0, t3))).expect("fresh marks");
    let (balance, _, _) = e.collateral(AccountId(1)).expect("exists");
    let (maintenance, _) = e.maintenance(AccountId(1)).expect("exists");
    assert!(balance < maintenance, "{balance:?} < {maintenance:?}");
    let deleverage = Command::Deleverage {
        account: AccountId(1),
        instrument: InstrumentId(PERP),
    };
    let events = run(&mut e, t3, deleverage.clone()).expect("deleveraged");
    assert_eq!(counterparties(&events).len(), 1, "{events:?}");
    assert_eq!(position(&e, 1), 100 * STEP);
    let (balance, _, _) = e.collateral(AccountId(1)).expect("exists");
    let (maintenance, _) = e.maintenance(AccountId(1)).expect("exists");
    assert!(balance >= maintenance, "{balance:?} >= {maintenance:?}");
    e.check_invariants().expect("audit");
    let hash = e.state_hash();
    assert_eq!(
        run(&mut e, t3, deleverage),
        Err(RejectCode::NotLiquidating),
        "the liquidation is over"
    );
    assert_eq!(e.state_hash(), hash, "the refusal changed nothing");
}

/// The accounts that took a liquidated position in `events`, in order.
fn counterparties(events: &[Event]) -> Vec<u32> {
    events
        .iter()
        .filter_map(|ev| match ev {
            Event::LiquidationTransfer { counterparty, .. } => Some(counterparty.0),
            _ => None,
        })
        .collect()
}

/// `maker` rests `qty` (in steps) of `instrument` on `side` at `price`, and `taker` fills it.
fn trade(
    e: &mut Engine,
    maker: u32,
    taker: u32,
    instrument: u32,
    side: Side,
    price: i64,
    qty: i64,
) {
    run(
        e,
        T0,
        Command::PlaceOrder(limit(maker, instrument, side, px(price), qty)),
    )
    .expect("rests");
    run(
        e,
        T0,
        Command::PlaceOrder(limit(taker, instrument, side.opposite(), px(price), qty)),
    )
    .expect("fills");
}

/// A move to `spot` past the circuit breaker: held, then confirmed a second later at `spot +
/// 100`. Returns the confirmation's events and its time.
fn crash(e: &mut Engine, spot: f64) -> (Vec<Event>, u64) {
    let t1 = T0 + 1_000;
    run(e, t1, Command::OracleUpdate(update(spot, t1))).expect("held");
    let t2 = T0 + 2_000;
    let events = fall(e, t2, |at| Command::OracleUpdate(update(spot + 100.0, at)));
    (events, t2)
}

/// Runs the update `update_at(t - 1)`, which leaves accounts below maintenance, then the same
/// prices published at `t`, at whose beginning their auctions start (engine rules 4: at the
/// first update's time), both at input time `input_ms`; returns both inputs' events.
fn fall_at(
    e: &mut Engine,
    input_ms: u64,
    t: u64,
    update_at: impl Fn(u64) -> Command,
) -> Vec<Event> {
    let mut events = run(e, input_ms, update_at(t - 1)).expect("the fall is accepted");
    events.extend(run(e, input_ms, update_at(t)).expect("the next update is accepted"));
    events
}

/// `fall_at` at input time `t`.
fn fall(e: &mut Engine, t: u64, update_at: impl Fn(u64) -> Command) -> Vec<Event> {
    fall_at(e, t, t, update_at)
}

/// The account's equity at the engine's marks, exactly (`balance * 1e8 + sum q * mark`, a
/// missing mark counting 0), as a validity proof checks it (`SettlementState::equity`).
fn equity_at_marks(e: &Engine, account: u32) -> i128 {
    let state = e.canonical();
    let a = &state.accounts[account as usize];
    a.positions.iter().fold(
        i128::from(a.balance.0) * i128::from(optio_types::QTY_SCALE),
        |equity, p| {
            let mark = state.instruments[p.instrument.0 as usize]
                .mark
                .as_ref()
                .map_or(0, |(m, _)| m.0);
            equity + i128::from(p.qty.0) * i128::from(mark)
        },
    )
}

/// With a bounded fill budget a deficit's cover waits for the next accepted oracle update
/// that settles nothing, and its loss is shared by as many accounts as the budget holds beside
/// the cover (here two), those with the most free collateral first; what they cannot carry
/// waits for the next update. Unbounded, the liquidation that leaves the deficit covers it at
/// once, shared by every account with free collateral.
#[test]
fn a_deficit_is_shared_within_the_fill_budget_over_oracle_updates() {
    // Account 1 (standard margin, 15,000) long two perpetuals from accounts 0 and 2 at 60,000;
    // accounts 0, 2, 4, 5 and 6 keep 1,000, 3,000, 4,000, 5,000 and 6,000 free; account 3 is
    // the liquidator. A crash to 45,100 leaves account 1 bankrupt and the liquidator takes
    // both contracts.
    let bankrupt = |limits: EngineLimits| {
        let mut e = long_two(limits, 7);
        for (account, keep) in [(0, 1_000), (2, 3_000), (4, 4_000), (5, 5_000), (6, 6_000)] {
            keep_free(&mut e, T0, account, keep);
        }
        let (events, t) = crash(&mut e, 45_000.0);
        assert!(events.contains(&Event::LiquidationStarted {
            account: AccountId(1)
        }));
        let events = take(&mut e, t, 200 * STEP).expect("all of it: the equity is gone");
        e.check_invariants().expect("audit");
        (e, t, events)
    };
    let shared = |events: &[Event]| -> Vec<(u32, i64)> {
        events
            .iter()
            .filter_map(|ev| match ev {
                Event::LossShared { account, amount } => Some((account.0, amount.0)),
                _ => None,
            })
            .collect()
    };
    let ended = |events: &[Event]| {
        events.contains(&Event::LiquidationEnded {
            account: AccountId(1),
        })
    };

    // Unbounded: covered by the liquidation itself, shared by all six others; the liquidation
    // ends at the next oracle update (engine rules 5).
    let (mut e, t, events) = bankrupt(EngineLimits::default());
    assert!(!ended(&events));
    let sharers: Vec<u32> = shared(&events).iter().map(|s| s.0).collect();
    assert_eq!(sharers, vec![0, 2, 3, 4, 5, 6]);
    assert_eq!(e.collateral(AccountId(1)).expect("exists").0, Amount(0));
    let t = t + 1_000;
    let events = run(&mut e, t, Command::OracleUpdate(update(45_100.0, t))).expect("update");
    assert!(ended(&events) && shared(&events).is_empty(), "{events:?}");
    e.check_invariants().expect("audit");

    // Bounded: room for three accounts a batch, so a cover and two shares.
    let limits = EngineLimits {
        fill_budget: optio_types::FillBudget {
            accounts: 3,
            ..optio_types::FillBudget::UNBOUNDED
        },
        ..EngineLimits::default()
    };
    let (mut e, t, events) = bankrupt(limits);
    assert!(!ended(&events) && shared(&events).is_empty(), "{events:?}");
    let (deficit, _, _) = e.collateral(AccountId(1)).expect("exists");
    assert!(deficit.0 < -usd(15_000).0, "{deficit:?}");
    // The liquidator keeps 2,000 free; an input other than an oracle update covers nothing.
    let events = keep_free(&mut e, t, 3, 2_000);
    assert!(shared(&events).is_empty() && !ended(&events));
    let (fee_pool, insurance) = e.pools();
    assert!(fee_pool.0 > 0 && insurance.0 == 0);
    // The first update: the fee pool, then accounts 6 and 5 carry all they have free.
    let t = t + 1_000;
    let events = run(&mut e, t, Command::OracleUpdate(update(45_100.0, t))).expect("update");
    assert_eq!(shared(&events), vec![(5, usd(5_000).0), (6, usd(6_000).0)]);
    assert!(events.iter().any(|ev| matches!(ev, Event::DeficitCovered { fee_pool: f, socialized, .. } if *f == fee_pool && socialized.0 == usd(11_000).0)), "{events:?}");
    assert!(!ended(&events));
    e.check_invariants().expect("audit");
    // The second: accounts 4 and 2, pro rata (4,000 : 3,000); the liquidation ends at the
    // third.
    let left = -e.collateral(AccountId(1)).expect("exists").0.0;
    assert!(left > 0 && left < usd(7_000).0, "{left}");
    let t = t + 1_000;
    let events = run(&mut e, t, Command::OracleUpdate(update(45_100.0, t))).expect("update");
    let shares = shared(&events);
    assert_eq!(shares.iter().map(|s| s.0).collect::<Vec<_>>(), vec![2, 4]);
    assert_eq!(shares.iter().map(|s| s.1).sum::<i64>(), left);
    assert!((shares[0].1 * 4 - shares[1].1 * 3).abs() <= 7, "{shares:?}");
    assert!(!ended(&events));
    assert_eq!(e.collateral(AccountId(1)).expect("exists").0, Amount(0));
    e.check_invariants().expect("audit");
    let t = t + 1_000;
    let events = run(&mut e, t, Command::OracleUpdate(update(45_100.0, t))).expect("update");
    assert!(ended(&events) && shared(&events).is_empty(), "{events:?}");
    e.check_invariants().expect("audit");
}

/// `account` withdraws what leaves it `keep` free (in USD); returns the events.
fn keep_free(e: &mut Engine, time: u64, account: u32, keep: i64) -> Vec<Event> {
    let (_, _, free) = e.collateral(AccountId(account)).expect("exists");
    run(
        e,
        time,
        Command::Withdraw {
            account: AccountId(account),
            amount: Amount(free.0 - usd(keep).0),
        },
    )
    .expect("withdraws")
}

/// Account 0 (standard margin) keeps `collateral` and sells one 60,000 put (instrument 1, whose
/// worst-case payoff is the strike) at 1,000, half to account 1 and half to account 2; then a
/// crash to 26,000 puts the put deep in the money. Returns the crash's events and its time.
fn crashed_put_writer(collateral: i64) -> (Engine, Vec<Event>, u64) {
    let mut e = engine_with(EngineLimits::default(), 3, usd(200_000));
    run(&mut e, T0, Command::OracleUpdate(update(60_000.0, T0))).expect("oracle");
    for command in [
        Command::SetMarginMode {
            account: AccountId(0),
            mode: MarginMode::Standard,
        },
        Command::Withdraw {
            account: AccountId(0),
            amount: usd(200_000 - collateral),
        },
    ] {
        run(&mut e, T0, command).expect("accepted");
    }
    trade(&mut e, 0, 1, 1, Side::Sell, 1_000, 50);
    trade(&mut e, 0, 2, 1, Side::Sell, 1_000, 50);
    let (events, t) = crash(&mut e, 26_000.0);
    // Below maintenance either way: about 2 x the put's mark of some 34,000 plus 7.5% of the
    // index, against a balance of about 60,000.
    let (balance, _, _) = e.collateral(AccountId(0)).expect("exists");
    let (maintenance, _) = e.maintenance(AccountId(0)).expect("exists");
    assert!(balance < maintenance, "{balance:?} < {maintenance:?}");
    (e, events, t)
}

/// An account whose collateral covers the worst-case payoff of its shorts can pay all it may
/// ever owe: below maintenance it is still never liquidated (what a validity proof can check
/// of a liquidation without the index and the margin mode). With 59,500 beside the premium
/// the writer covers the put's 60,000; with 58,000 it does not, is liquidated, and deleveraging
/// stops as soon as it covers what is left.
#[test]
fn a_margin_account_that_covers_its_shorts_worst_case_is_never_liquidated() {
    let (mut e, events, t) = crashed_put_writer(59_500);
    let (_, surplus) = e.maintenance(AccountId(0)).expect("exists");
    assert!(surplus >= 0, "fully collateralized: {surplus}");
    assert!(
        !events
            .iter()
            .any(|ev| matches!(ev, Event::LiquidationStarted { .. })),
        "{events:?}"
    );
    let before = e.state_hash();
    assert_eq!(
        run(
            &mut e,
            t,
            Command::Liquidate {
                liquidator: AccountId(1),
                account: AccountId(0),
                instrument: InstrumentId(1),
                qty: Qty(50 * STEP),
            }
        ),
        Err(RejectCode::NotLiquidating)
    );
    assert_eq!(e.state_hash(), before);

    let (mut e, events, t) = crashed_put_writer(58_000);
    assert!(e.maintenance(AccountId(0)).expect("exists").1 < 0);
    assert!(
        events.contains(&Event::LiquidationStarted {
            account: AccountId(0)
        }),
        "{events:?}"
    );
    // Past the auction, with nobody bidding: deleveraged against the put's holders.
    let t = t + 15 * 60_000;
    run(&mut e, t, Command::OracleUpdate(update(26_100.0, t))).expect("fresh marks");
    let events = run(
        &mut e,
        t,
        Command::Deleverage {
            account: AccountId(0),
            instrument: InstrumentId(1),
        },
    )
    .expect("deleveraged");
    let transfers = counterparties(&events);
    // Buying back half at the mark (below the strike) covers the other half: account 2 keeps
    // its long, and the liquidation ends at the next update.
    assert_eq!(transfers, vec![1], "{events:?}");
    let t = t + 1_000;
    let events = run(&mut e, t, Command::OracleUpdate(update(26_100.0, t))).expect("update");
    assert!(events.contains(&Event::LiquidationEnded {
        account: AccountId(0)
    }));
    let held = e
        .position_view(AccountId(0), InstrumentId(1))
        .expect("held");
    assert_eq!(held.0, Qty(-50 * STEP));
    assert!(e.maintenance(AccountId(0)).expect("exists").1 >= 0);
    e.check_invariants().expect("audit");
}

/// The escape hatch for a position (`Command::L1Close`): the owner's request moves its whole
/// position to the backstop at the mark, its value rounded against the account (a seller gets
/// the floor), with no fee, and cancels both accounts' orders in the instrument; anyone else's
/// request moves nothing but is served. A fully collateralized backstop, the backstop itself
/// named, or a request out of queue order is refused and changes nothing.
#[test]
fn a_forced_close_moves_the_whole_position_to_the_backstop_at_the_mark() {
    let mut e = margined_market();
    let steps = 101;
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(2, PERP, Side::Sell, px(60_000), steps)),
    )
    .expect("ask");
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(1, PERP, Side::Buy, px(60_000), steps)),
    )
    .expect("buy");
    // A mark off the money grid, so the close's value rounds.
    run(
        &mut e,
        T0 + 1,
        Command::OracleUpdate(update(60_123.371_234, T0 + 1)),
    )
    .expect("oracle");
    let mark = e.canonical().instruments[PERP as usize]
        .mark
        .as_ref()
        .map(|(m, _)| m.0)
        .expect("marked");
    let held = position(&e, 1);
    assert_eq!(held, steps * STEP);
    let exact = i128::from(held) * i128::from(mark);
    assert_ne!(exact % 100_000_000, 0, "the value rounds: {mark}");
    // An order of account 1 resting on the position, and one of the backstop.
    run(
        &mut e,
        T0 + 1,
        Command::PlaceOrder(limit(1, PERP, Side::Sell, px(70_000), 10)),
    )
    .expect("ask");
    run(
        &mut e,
        T0 + 1,
        Command::PlaceOrder(limit(3, PERP, Side::Buy, px(50_000), 10)),
    )
    .expect("bid");
    let owner1 = e.account_owner(AccountId(1)).expect("exists");
    let close = |priority, owner, account: u32, backstop: u32| Command::L1Close {
        priority,
        owner,
        account: AccountId(account),
        instrument: InstrumentId(PERP),
        counterparty: AccountId(backstop),
    };
    let before = e.state_hash();
    for (command, code) in [
        (close(0, owner1, 1, 3), RejectCode::BackstopUnfit),
        (close(0, owner1, 1, 9), RejectCode::UnknownAccount),
    ] {
        assert_eq!(run(&mut e, T0 + 1, command), Err(code));
        assert_eq!(e.state_hash(), before, "a refusal changes nothing");
    }
    run(
        &mut e,
        T0 + 1,
        Command::SetMarginMode {
            account: AccountId(3),
            mode: MarginMode::Standard,
        },
    )
    .expect("a margined backstop");
    let before = e.state_hash();
    for (command, code) in [
        (close(0, owner1, 3, 3), RejectCode::SameAccount),
        (close(1, owner1, 1, 3), RejectCode::PriorityOutOfOrder),
    ] {
        assert_eq!(run(&mut e, T0 + 1, command), Err(code));
        assert_eq!(e.state_hash(), before, "a refusal changes nothing");
    }

    // Someone else's request: served, nothing moves.
    let events = run(&mut e, T0 + 1, close(0, owner(9), 1, 3)).expect("served");
    assert!(
        events.iter().any(|ev| matches!(
            ev,
            Event::CloseServed { qty, price, cash, .. } if qty.0 == 0 && price.0 == 0 && cash.0 == 0
        )),
        "{events:?}"
    );
    assert_eq!(position(&e, 1), held);

    // The owner's: all of it, at the mark.
    let (b1, _, _) = e.collateral(AccountId(1)).expect("exists");
    let (b3, _, _) = e.collateral(AccountId(3)).expect("exists");
    let events = run(&mut e, T0 + 1, close(1, owner1, 1, 3)).expect("served");
    let floor = i64::try_from(exact.div_euclid(100_000_000)).expect("fits");
    assert!(
        events.iter().any(|ev| matches!(
            ev,
            Event::CloseServed { qty, price, cash, .. }
                if qty.0 == -held && price.0 == mark && cash.0 == floor
        )),
        "{events:?}"
    );
    let cancelled = events
        .iter()
        .filter(|ev| {
            matches!(
                ev,
                Event::OrderDone {
                    reason: optio_types::DoneReason::Cancelled,
                    ..
                }
            )
        })
        .count();
    assert_eq!(cancelled, 2, "both accounts' orders in the instrument");
    assert_eq!(position(&e, 1), 0);
    assert_eq!(position(&e, 3), held);
    let (a1, _, _) = e.collateral(AccountId(1)).expect("exists");
    let (a3, _, _) = e.collateral(AccountId(3)).expect("exists");
    assert_eq!((a1.0 - b1.0, a3.0 - b3.0), (floor, -floor), "no fee");
    e.check_invariants().expect("audit");
}
