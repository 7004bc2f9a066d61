//! Hand-written scenarios for each order-book and ledger feature, each with its exact outcome.
//! Accounts 0 and 3 share an owner (subaccounts); 1 and 2 have their own.

use optio_types::{
    AccountId, Command, DoneReason, EngineLimits, Event, InstrumentId, OrderId, OrderRef,
    OrderType, Price, Qty, Quote, RejectCode, SelfTradePrevention, Side, TimeInForce,
};

use crate::common::{STEP, T0, TICK, engine_with, fills, limit, px, run, usd};

fn done(events: &[Event]) -> Vec<(u64, DoneReason)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::OrderDone { order, reason, .. } => Some((order.0, *reason)),
            _ => None,
        })
        .collect()
}

fn market() -> optio_engine::Engine {
    engine_with(EngineLimits::default(), 4, usd(100_000))
}

#[test]
fn price_time_priority_and_partial_fills() {
    let mut e = market();
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(1, 0, Side::Sell, px(2_001), 2)),
    )
    .expect("order 1");
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(1, 0, Side::Sell, px(2_000), 2)),
    )
    .expect("order 2: better price");
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(2, 0, Side::Sell, px(2_000), 3)),
    )
    .expect("order 3: same price, later");
    let events = run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(0, 0, Side::Buy, px(2_001), 6)),
    )
    .expect("crossing buy");
    assert_eq!(fills(&events), vec![(2, 4, 2), (3, 4, 3), (1, 4, 1)]);
    assert_eq!(
        done(&events),
        vec![
            (2, DoneReason::Filled),
            (3, DoneReason::Filled),
            (4, DoneReason::Filled)
        ]
    );
    assert_eq!(e.best_bid_ask(InstrumentId(0)), (None, Some(px(2_001))));
    e.check_invariants().expect("audit");
}

#[test]
fn ioc_rests_nothing_and_fok_is_all_or_nothing() {
    let mut e = market();
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(1, 0, Side::Sell, px(2_000), 2)),
    )
    .expect("ask");
    let mut fok = limit(0, 0, Side::Buy, px(2_000), 3);
    fok.time_in_force = TimeInForce::FillOrKill;
    let before = e.state_hash();
    assert_eq!(
        run(&mut e, T0, Command::PlaceOrder(fok.clone())),
        Err(RejectCode::FokNotFillable)
    );
    assert_eq!(e.state_hash(), before);
    fok.qty = Qty(2 * STEP);
    // Rejected orders take no id: this one is order 2.
    assert_eq!(
        fills(&run(&mut e, T0, Command::PlaceOrder(fok)).expect("fillable")),
        vec![(1, 2, 2)]
    );
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(1, 0, Side::Sell, px(2_000), 1)),
    )
    .expect("ask");
    let mut ioc = limit(0, 0, Side::Buy, px(2_000), 3);
    ioc.time_in_force = TimeInForce::ImmediateOrCancel;
    let events = run(&mut e, T0, Command::PlaceOrder(ioc)).expect("ioc");
    assert_eq!(
        done(&events),
        vec![(3, DoneReason::Filled), (4, DoneReason::UnfilledRemainder)]
    );
    assert_eq!(e.open_orders(), 0);
}

#[test]
fn market_orders_respect_their_protection_band() {
    let mut e = market();
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(1, 0, Side::Sell, px(2_000), 1)),
    )
    .expect("ask");
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(1, 0, Side::Sell, px(2_200), 1)),
    )
    .expect("ask beyond 5%");
    let mut m = limit(0, 0, Side::Buy, px(1), 2);
    m.order_type = OrderType::Market {
        protection_price: None,
    };
    m.time_in_force = TimeInForce::ImmediateOrCancel;
    let events = run(&mut e, T0, Command::PlaceOrder(m.clone())).expect("market");
    assert_eq!(fills(&events), vec![(1, 3, 1)]);
    assert_eq!(
        done(&events).last(),
        Some(&(3, DoneReason::UnfilledRemainder))
    );
    m.order_type = OrderType::Market {
        protection_price: Some(px(2_200)),
    };
    assert_eq!(
        fills(&run(&mut e, T0, Command::PlaceOrder(m.clone())).expect("market")),
        vec![(2, 4, 1)]
    );
    m.order_type = OrderType::Market {
        protection_price: None,
    };
    assert_eq!(
        run(&mut e, T0, Command::PlaceOrder(m.clone())),
        Err(RejectCode::NoLiquidity)
    );
    m.time_in_force = TimeInForce::GoodTillCancelled;
    assert_eq!(
        run(&mut e, T0, Command::PlaceOrder(m)),
        Err(RejectCode::InvalidOrderCombination)
    );
}

#[test]
fn post_only_never_takes() {
    let mut e = market();
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(1, 0, Side::Sell, px(2_000), 1)),
    )
    .expect("ask");
    let mut p = limit(0, 0, Side::Buy, px(2_000), 1);
    p.post_only = true;
    assert_eq!(
        run(&mut e, T0, Command::PlaceOrder(p.clone())),
        Err(RejectCode::PostOnlyWouldCross)
    );
    p.order_type = OrderType::Limit {
        price: Price(px(2_000).0 - TICK),
    };
    run(&mut e, T0, Command::PlaceOrder(p.clone())).expect("rests below the ask");
    p.time_in_force = TimeInForce::ImmediateOrCancel;
    assert_eq!(
        run(&mut e, T0, Command::PlaceOrder(p)),
        Err(RejectCode::InvalidOrderCombination)
    );
}

/// Cancel-and-replace is one input: a refused cancel (an unknown order, another account's)
/// changes nothing and places nothing; a taken one cancels, then places (the new order free to
/// reuse the old one's client id); a refused new order leaves the old one cancelled, the refusal
/// told as `ReplaceRefused`, the state exactly that of a plain cancel.
#[test]
fn replace_cancels_then_places_in_one_input() {
    let mut bid = limit(0, 0, Side::Buy, px(1_000), 1);
    bid.client_order_id = 7;
    let setup = || {
        let mut e = market();
        run(&mut e, T0, Command::PlaceOrder(bid.clone())).expect("bid 1");
        run(
            &mut e,
            T0,
            Command::PlaceOrder(limit(1, 0, Side::Sell, px(2_000), 1)),
        )
        .expect("ask 2");
        e
    };
    let mut e = setup();
    let before = e.state_hash();
    let higher = optio_types::NewOrder {
        order_type: OrderType::Limit { price: px(1_100) },
        ..bid.clone()
    };
    for cancel in [OrderRef::Id(OrderId(99)), OrderRef::Id(OrderId(2))] {
        let replace = Command::Replace {
            cancel,
            order: higher.clone(),
        };
        assert_eq!(run(&mut e, T0, replace), Err(RejectCode::UnknownOrder));
        assert_eq!(e.state_hash(), before, "{cancel:?}");
    }
    let events = run(
        &mut e,
        T0,
        Command::Replace {
            cancel: OrderRef::Client(7),
            order: higher,
        },
    )
    .expect("replaced");
    assert_eq!(done(&events), vec![(1, DoneReason::Cancelled)]);
    let open: Vec<(u64, Price, u64)> = e
        .open_orders_of(AccountId(0))
        .iter()
        .map(|o| (o.id.0, o.price, o.client_order_id))
        .collect();
    assert_eq!(open, vec![(3, px(1_100), 7)]);
    // A post-only bid at the ask: refused, order 3 cancelled all the same.
    let crossing = optio_types::NewOrder {
        order_type: OrderType::Limit { price: px(2_000) },
        post_only: true,
        ..bid.clone()
    };
    let events = run(
        &mut e,
        T0,
        Command::Replace {
            cancel: OrderRef::Id(OrderId(3)),
            order: crossing,
        },
    )
    .expect("taken");
    assert_eq!(done(&events), vec![(3, DoneReason::Cancelled)]);
    assert!(events.contains(&Event::ReplaceRefused {
        code: RejectCode::PostOnlyWouldCross
    }));
    assert!(e.open_orders_of(AccountId(0)).is_empty());
    let mut twin = setup();
    for command in [
        Command::Cancel {
            account: AccountId(0),
            order: OrderRef::Id(OrderId(1)),
        },
        Command::PlaceOrder(optio_types::NewOrder {
            order_type: OrderType::Limit { price: px(1_100) },
            ..bid.clone()
        }),
        Command::Cancel {
            account: AccountId(0),
            order: OrderRef::Id(OrderId(3)),
        },
    ] {
        run(&mut twin, T0, command).expect("twin");
    }
    assert_eq!(
        e.state_hash(),
        twin.state_hash(),
        "as a cancel, then a place, then a cancel"
    );
    e.check_invariants().expect("audit");
}

#[test]
fn self_trade_prevention_modes() {
    // Account 3 is a subaccount of account 0's owner.
    for (mode, want_done, want_fills) in [
        (
            SelfTradePrevention::CancelTaker,
            vec![(3, DoneReason::SelfTrade)],
            vec![],
        ),
        (
            SelfTradePrevention::CancelMaker,
            vec![(1, DoneReason::SelfTrade), (2, DoneReason::Filled)],
            vec![(2, 3, 1)],
        ),
        (
            SelfTradePrevention::CancelBoth,
            vec![(1, DoneReason::SelfTrade), (3, DoneReason::SelfTrade)],
            vec![],
        ),
    ] {
        let mut e = market();
        run(
            &mut e,
            T0,
            Command::PlaceOrder(limit(3, 0, Side::Sell, px(2_000), 1)),
        )
        .expect("own ask first");
        run(
            &mut e,
            T0,
            Command::PlaceOrder(limit(1, 0, Side::Sell, px(2_000), 1)),
        )
        .expect("other ask");
        let mut taker = limit(0, 0, Side::Buy, px(2_000), 1);
        taker.self_trade = mode;
        let events = run(&mut e, T0, Command::PlaceOrder(taker)).expect("taker");
        let got: Vec<_> = done(&events)
            .into_iter()
            .filter(|(o, _)| *o != 3 || mode != SelfTradePrevention::CancelMaker)
            .collect();
        assert_eq!(got, want_done, "{mode:?}");
        assert_eq!(fills(&events), want_fills, "{mode:?}");
        e.check_invariants().expect("audit");
    }
}

#[test]
fn amend_keeps_priority_only_when_shrinking_at_the_same_price() {
    let mut e = market();
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(1, 0, Side::Sell, px(2_000), 3)),
    )
    .expect("order 1");
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(2, 0, Side::Sell, px(2_000), 3)),
    )
    .expect("order 2");
    let amend = |order, price, qty| Command::Amend {
        account: AccountId(1),
        order: OrderRef::Id(OrderId(order)),
        price,
        qty: Qty(qty * STEP),
    };
    let events = run(&mut e, T0, amend(1, px(2_000), 2)).expect("shrink");
    assert!(matches!(
        events[0],
        Event::OrderAmended {
            kept_priority: true,
            ..
        }
    ));
    assert_eq!(
        run(&mut e, T0, amend(1, px(2_000), 2)),
        Err(RejectCode::InvalidAmend)
    );
    let events = run(&mut e, T0, amend(1, px(2_000), 4)).expect("grow");
    assert!(matches!(
        events[0],
        Event::OrderAmended {
            kept_priority: false,
            ..
        }
    ));
    // Order 2 is now first at 2000.
    let events = run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(0, 0, Side::Buy, px(2_000), 1)),
    )
    .expect("buy");
    assert_eq!(fills(&events), vec![(2, 3, 1)]);
    // An amend that crosses trades like a new order.
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(0, 0, Side::Buy, px(1_990), 2)),
    )
    .expect("bid, order 4");
    let amend_bid = Command::Amend {
        account: AccountId(0),
        order: OrderRef::Id(OrderId(4)),
        price: px(2_000),
        qty: Qty(2 * STEP),
    };
    assert_eq!(
        fills(&run(&mut e, T0, amend_bid).expect("crossing amend")),
        vec![(2, 4, 2)]
    );
    let foreign = Command::Amend {
        account: AccountId(2),
        order: OrderRef::Id(OrderId(1)),
        price: px(2_001),
        qty: Qty(STEP),
    };
    assert_eq!(run(&mut e, T0, foreign), Err(RejectCode::UnknownOrder));
    e.check_invariants().expect("audit");
}

#[test]
fn client_order_ids_cancel_and_cancel_all() {
    let mut e = market();
    let mut o = limit(0, 0, Side::Buy, px(1_000), 1);
    o.client_order_id = 42;
    run(&mut e, T0, Command::PlaceOrder(o.clone())).expect("first");
    assert_eq!(
        run(&mut e, T0, Command::PlaceOrder(o.clone())),
        Err(RejectCode::DuplicateClientOrderId)
    );
    run(
        &mut e,
        T0,
        Command::Cancel {
            account: AccountId(0),
            order: OrderRef::Client(42),
        },
    )
    .expect("cancel by client id");
    run(&mut e, T0, Command::PlaceOrder(o)).expect("id free again");
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(0, 2, Side::Buy, px(50_000), 1)),
    )
    .expect("perp bid");
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(1, 2, Side::Buy, px(50_000), 1)),
    )
    .expect("someone else's");
    let events = run(
        &mut e,
        T0,
        Command::CancelAll {
            account: AccountId(0),
            instrument: Some(InstrumentId(2)),
        },
    )
    .expect("by instrument");
    assert_eq!(done(&events), vec![(3, DoneReason::Cancelled)]);
    let events = run(
        &mut e,
        T0,
        Command::CancelAll {
            account: AccountId(0),
            instrument: None,
        },
    )
    .expect("all");
    assert_eq!(done(&events), vec![(2, DoneReason::Cancelled)]);
    assert_eq!(e.open_orders(), 1);
}

#[test]
fn good_till_time_expires_by_engine_time() {
    let mut e = market();
    let mut o = limit(0, 0, Side::Buy, px(1_000), 1);
    o.time_in_force = TimeInForce::GoodTillTime(T0);
    assert_eq!(
        run(&mut e, T0, Command::PlaceOrder(o.clone())),
        Err(RejectCode::GoodTillInPast)
    );
    o.time_in_force = TimeInForce::GoodTillTime(T0 + 5_000);
    run(&mut e, T0, Command::PlaceOrder(o)).expect("gtt");
    assert!(
        done(
            &run(
                &mut e,
                T0 + 4_999,
                Command::CancelAll {
                    account: AccountId(1),
                    instrument: None
                }
            )
            .expect("tick")
        )
        .is_empty()
    );
    let events = run(
        &mut e,
        T0 + 5_000,
        Command::CancelAll {
            account: AccountId(1),
            instrument: None,
        },
    )
    .expect("tick");
    assert_eq!(done(&events), vec![(1, DoneReason::Expired)]);
    assert_eq!(
        run(
            &mut e,
            T0,
            Command::CancelAll {
                account: AccountId(1),
                instrument: None
            }
        ),
        Err(RejectCode::TimeWentBackwards)
    );
}

#[test]
fn reduce_only_is_refused_when_increasing_and_cut_when_the_position_is_gone() {
    let mut e = market();
    let mut ro = limit(0, 0, Side::Sell, px(2_100), 1);
    ro.reduce_only = true;
    assert_eq!(
        run(&mut e, T0, Command::PlaceOrder(ro.clone())),
        Err(RejectCode::ReduceOnlyWouldIncrease)
    );
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(1, 0, Side::Sell, px(2_000), 2)),
    )
    .expect("ask");
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(0, 0, Side::Buy, px(2_000), 2)),
    )
    .expect("account 0 long 2");
    ro.qty = Qty(2 * STEP);
    run(&mut e, T0, Command::PlaceOrder(ro.clone()))
        .expect("reduce-only ask for 2 at 2100: order 3");
    ro.order_type = OrderType::Limit { price: px(2_000) };
    ro.qty = Qty(STEP);
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(2, 0, Side::Buy, px(2_000), 1)),
    )
    .expect("bid, order 4");
    run(&mut e, T0, Command::PlaceOrder(ro)).expect("sells 1 into the bid: long 1 left (order 5)");
    // A buyer lifts the reduce-only ask: only 1 can fill, then the rest is cut.
    let events = run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(2, 0, Side::Buy, px(2_100), 2)),
    )
    .expect("buy 2");
    assert_eq!(fills(&events), vec![(3, 6, 1)]);
    assert!(done(&events).contains(&(3, DoneReason::ReduceOnly)));
    e.check_invariants().expect("audit");
}

#[test]
fn margin_blocks_uncovered_shorts_and_withdrawals() {
    let mut e = engine_with(EngineLimits::default(), 3, usd(1_000));
    // A short call needs (cap - strike) = 40,000 per contract: 0.02 needs 800 plus the fee reserve.
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(1, 0, Side::Sell, px(2_000), 2)),
    )
    .expect("covered");
    assert_eq!(
        run(
            &mut e,
            T0,
            Command::PlaceOrder(limit(1, 0, Side::Sell, px(2_000), 1))
        ),
        Err(RejectCode::InsufficientMargin)
    );
    let (balance, requirement, free) = e.collateral(AccountId(1)).expect("exists");
    assert_eq!(balance, usd(1_000));
    assert!(requirement > usd(800) && free.0 == balance.0 - requirement.0);
    assert_eq!(
        run(
            &mut e,
            T0,
            Command::Withdraw {
                account: AccountId(1),
                amount: usd(300)
            }
        ),
        Err(RejectCode::InsufficientFreeCollateral)
    );
    run(
        &mut e,
        T0,
        Command::Withdraw {
            account: AccountId(1),
            amount: free,
        },
    )
    .expect("free collateral");
    assert_eq!(
        run(
            &mut e,
            T0,
            Command::Transfer {
                from: AccountId(0),
                to: AccountId(1),
                amount: usd(1)
            }
        ),
        Err(RejectCode::NotSameOwner)
    );
    e.check_invariants().expect("audit");
}

#[test]
fn fees_go_to_the_pool_and_maker_rebates_come_out_of_it() {
    let mut e = market();
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(1, 0, Side::Sell, px(2_000), 100)),
    )
    .expect("ask 1 contract");
    let events = run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(0, 0, Side::Buy, px(2_000), 100)),
    )
    .expect("buy");
    let (maker_fee, taker_fee) = events
        .iter()
        .find_map(|e| match e {
            Event::Fill {
                maker_fee,
                taker_fee,
                ..
            } => Some((*maker_fee, *taker_fee)),
            _ => None,
        })
        .expect("a fill");
    // 2,000 notional: maker 1 bp = 0.2, taker 3 bp = 0.6.
    assert_eq!((maker_fee.0, taker_fee.0), (200_000, 600_000));
    assert_eq!(e.pools().0.0, 800_000);
    assert_eq!(
        e.collateral(AccountId(0)).expect("exists").0.0,
        usd(100_000).0 - usd(2_000).0 - 600_000
    );
    assert_eq!(
        e.position_view(AccountId(0), InstrumentId(0)),
        Some((Qty(100 * STEP), Some(px(2_000)), optio_types::Amount(0)))
    );
    // Sell half at 2,100: realized +50 against the 2,000 average entry.
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(2, 0, Side::Buy, px(2_100), 50)),
    )
    .expect("bid");
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(0, 0, Side::Sell, px(2_100), 50)),
    )
    .expect("sell half");
    assert_eq!(
        e.position_view(AccountId(0), InstrumentId(0)),
        Some((Qty(50 * STEP), Some(px(2_000)), usd(50)))
    );
}

#[test]
fn mass_quote_replaces_atomically() {
    let mut e = market();
    let q = |inst, bid: i64, ask: i64| Quote {
        instrument: InstrumentId(inst),
        bid: Some((px(bid), Qty(STEP))),
        ask: Some((px(ask), Qty(STEP))),
    };
    let events = run(
        &mut e,
        T0,
        Command::MassQuote {
            account: AccountId(1),
            quotes: vec![q(0, 1_990, 2_010), q(2, 59_900, 60_100)],
        },
    )
    .expect("quote");
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::OrderRested { .. }))
            .count(),
        4
    );
    let events = run(
        &mut e,
        T0,
        Command::MassQuote {
            account: AccountId(1),
            quotes: vec![q(0, 1_995, 2_005)],
        },
    )
    .expect("requote");
    assert_eq!(
        done(&events),
        vec![(1, DoneReason::Cancelled), (2, DoneReason::Cancelled)]
    );
    assert_eq!(
        e.best_bid_ask(InstrumentId(0)),
        (Some(px(1_995)), Some(px(2_005)))
    );
    let before = e.state_hash();
    // One bad entry (crossed) refuses the whole mass quote.
    let bad = vec![q(0, 1_996, 2_004), q(2, 60_000, 60_000)];
    assert_eq!(
        run(
            &mut e,
            T0,
            Command::MassQuote {
                account: AccountId(1),
                quotes: bad
            }
        ),
        Err(RejectCode::QuoteCrossed)
    );
    assert_eq!(
        run(
            &mut e,
            T0,
            Command::MassQuote {
                account: AccountId(1),
                quotes: vec![q(0, 1, 2), q(0, 1, 2)]
            }
        ),
        Err(RejectCode::MassQuoteDuplicateInstrument)
    );
    assert_eq!(e.state_hash(), before);
    // Another account's ask at 2,004 makes a bid at 2,004 cross: post-only.
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(2, 0, Side::Sell, px(2_004), 1)),
    )
    .expect("ask");
    assert_eq!(
        run(
            &mut e,
            T0,
            Command::MassQuote {
                account: AccountId(1),
                quotes: vec![q(0, 2_004, 2_006)]
            }
        ),
        Err(RejectCode::PostOnlyWouldCross)
    );
    e.check_invariants().expect("audit");
}

#[test]
fn limits_each_have_their_own_rejection() {
    let limits = EngineLimits {
        max_open_orders_per_account: 2,
        max_price_levels_per_side: 2,
        max_mass_quote_entries: 1,
        ..EngineLimits::default()
    };
    let mut e = engine_with(limits, 3, usd(100_000));
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(0, 0, Side::Buy, px(1_000), 1)),
    )
    .expect("1");
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(0, 0, Side::Buy, px(1_001), 1)),
    )
    .expect("2");
    assert_eq!(
        run(
            &mut e,
            T0,
            Command::PlaceOrder(limit(0, 0, Side::Buy, px(1_002), 1))
        ),
        Err(RejectCode::TooManyOpenOrders)
    );
    assert_eq!(
        run(
            &mut e,
            T0,
            Command::PlaceOrder(limit(1, 0, Side::Buy, px(1_002), 1))
        ),
        Err(RejectCode::TooManyPriceLevels)
    );
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(1, 0, Side::Buy, px(1_001), 1)),
    )
    .expect("existing level");
    let quotes = vec![
        Quote {
            instrument: InstrumentId(2),
            bid: None,
            ask: None
        };
        2
    ];
    assert_eq!(
        run(
            &mut e,
            T0,
            Command::MassQuote {
                account: AccountId(2),
                quotes
            }
        ),
        Err(RejectCode::MassQuoteSize)
    );
    assert_eq!(
        run(
            &mut e,
            T0,
            Command::PlaceOrder(limit(1, 0, Side::Buy, px(1_001), 200_000_000))
        ),
        Err(RejectCode::QtyTooLarge)
    );
    assert_eq!(
        run(
            &mut e,
            T0,
            Command::PlaceOrder(limit(1, 0, Side::Buy, Price(px(1_001).0 + 1), 1))
        ),
        Err(RejectCode::InvalidPrice)
    );
    assert_eq!(
        run(
            &mut e,
            T0,
            Command::PlaceOrder(limit(1, 0, Side::Buy, px(40_001), 1))
        ),
        Err(RejectCode::PriceOutOfBand)
    );
    assert_eq!(
        run(
            &mut e,
            T0,
            Command::PlaceOrder(limit(1, 3, Side::Buy, px(1_000), 1))
        ),
        Err(RejectCode::InstrumentNotActive)
    );
    assert_eq!(
        run(
            &mut e,
            T0,
            Command::PlaceOrder(limit(9, 0, Side::Buy, px(1_000), 1))
        ),
        Err(RejectCode::UnknownAccount)
    );
    assert_eq!(
        run(
            &mut e,
            T0,
            Command::PlaceOrder(limit(1, 9, Side::Buy, px(1_000), 1))
        ),
        Err(RejectCode::UnknownInstrument)
    );
}

#[test]
fn expiry_cancels_orders_and_settlement_pays_the_longs() {
    let mut e = market();
    // Instrument 1 is BTC-21DEC24-60000-P, expiring at T0 + 1h.
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(1, 1, Side::Sell, px(500), 100)),
    )
    .expect("short 1 put");
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(0, 1, Side::Buy, px(500), 100)),
    )
    .expect("long 1 put");
    run(
        &mut e,
        T0,
        Command::PlaceOrder(limit(2, 1, Side::Buy, px(400), 1)),
    )
    .expect("resting bid");
    let settle = Command::SettleInstrument {
        instrument: InstrumentId(1),
        settlement_price: px(59_000),
    };
    assert_eq!(
        run(&mut e, T0, settle.clone()),
        Err(RejectCode::InvalidStatusTransition)
    );
    let events = run(
        &mut e,
        T0 + 3_600_000,
        Command::CancelAll {
            account: AccountId(0),
            instrument: None,
        },
    )
    .expect("time passes");
    assert!(events.contains(&Event::InstrumentExpired {
        instrument: InstrumentId(1)
    }));
    assert_eq!(done(&events), vec![(3, DoneReason::InstrumentExpired)]);
    assert_eq!(
        run(
            &mut e,
            T0 + 3_600_000,
            Command::PlaceOrder(limit(2, 1, Side::Buy, px(400), 1))
        ),
        Err(RejectCode::InstrumentNotActive)
    );
    let before0 = e.collateral(AccountId(0)).expect("exists").0;
    let before1 = e.collateral(AccountId(1)).expect("exists").0;
    run(&mut e, T0 + 3_600_000, settle.clone()).expect("settle at 59,000: the put pays 1,000");
    assert_eq!(
        e.collateral(AccountId(0)).expect("exists").0.0 - before0.0,
        usd(1_000).0
    );
    assert_eq!(
        e.collateral(AccountId(1)).expect("exists").0.0 - before1.0,
        -usd(1_000).0
    );
    assert_eq!(e.collateral(AccountId(1)).expect("exists").1, usd(0));
    assert_eq!(
        run(&mut e, T0 + 3_600_000, settle),
        Err(RejectCode::InvalidStatusTransition)
    );
    e.check_invariants().expect("audit");
}

#[test]
fn bad_amounts_and_transfers() {
    let mut e = market();
    for amount in [0, -1] {
        assert_eq!(
            run(
                &mut e,
                T0,
                Command::Deposit {
                    account: AccountId(0),
                    amount: optio_types::Amount(amount)
                }
            ),
            Err(RejectCode::InvalidAmount)
        );
    }
    assert_eq!(
        run(
            &mut e,
            T0,
            Command::Deposit {
                account: AccountId(0),
                amount: optio_types::Amount(i64::MAX)
            }
        ),
        Err(RejectCode::AmountTooLarge)
    );
    assert_eq!(
        run(
            &mut e,
            T0,
            Command::Transfer {
                from: AccountId(0),
                to: AccountId(0),
                amount: usd(1)
            }
        ),
        Err(RejectCode::SameAccount)
    );
    run(
        &mut e,
        T0,
        Command::Transfer {
            from: AccountId(0),
            to: AccountId(3),
            amount: usd(1),
        },
    )
    .expect("same owner");
    assert_eq!(e.collateral(AccountId(3)).expect("exists").0, usd(100_001));
}

/// An order signed by a session key needs the key live when it is placed, lives no longer than
/// the key, and goes when a change shortens the key's life (all of the key's orders when it is
/// revoked); the owner's orders and another key's stay. Refusals change nothing.
#[test]
fn session_key_orders_live_and_die_with_their_key() {
    let mut e = market();
    let (k1, k2) = (
        optio_types::Address([0xa1; 20]),
        optio_types::Address([0xa2; 20]),
    );
    let by = |key, price: i64, tif| {
        let mut o = limit(1, 0, Side::Buy, px(price), 1);
        o.session_key = key;
        o.time_in_force = tif;
        Command::PlaceOrder(o)
    };
    let gtc = TimeInForce::GoodTillCancelled;
    // Not registered: refused, nothing changes.
    let before = e.state_hash();
    assert_eq!(
        run(&mut e, T0, by(Some(k1), 1_000, gtc)),
        Err(RejectCode::SessionKeyNotLive)
    );
    assert_eq!(e.state_hash(), before);
    let key = |key, expiry_ms| Command::SetSessionKey {
        account: AccountId(1),
        key,
        expiry_ms,
    };
    run(&mut e, T0, key(k1, T0 + 60_000)).expect("k1");
    run(&mut e, T0, key(k2, T0 + 60_000)).expect("k2");
    // A good-till-cancelled order by k1 lives until k1 expires; a good-till-time one past it is
    // cut to it; one before it keeps its time; the owner's and k2's are their own.
    for (k, price, tif) in [
        (Some(k1), 1_000, gtc),
        (Some(k1), 1_001, TimeInForce::GoodTillTime(T0 + 90_000)),
        (Some(k1), 1_002, TimeInForce::GoodTillTime(T0 + 30_000)),
        (None, 1_003, gtc),
        (Some(k2), 1_004, gtc),
    ] {
        run(&mut e, T0, by(k, price, tif)).expect("rests");
    }
    let lifetimes = |e: &optio_engine::Engine| {
        let mut v: Vec<_> = e
            .open_orders_of(AccountId(1))
            .iter()
            .map(|o| (o.id.0, o.time_in_force, o.session_key))
            .collect();
        v.sort();
        v
    };
    let gtt = TimeInForce::GoodTillTime;
    assert_eq!(
        lifetimes(&e),
        vec![
            (1, gtt(T0 + 60_000), Some(k1)),
            (2, gtt(T0 + 60_000), Some(k1)),
            (3, gtt(T0 + 30_000), Some(k1)),
            (4, gtc, None),
            (5, gtt(T0 + 60_000), Some(k2)),
        ]
    );
    e.check_invariants().expect("invariants");
    // The snapshot keeps which key signed each order.
    let restored = optio_engine::Engine::restore_bytes(&e.snapshot(), optio_types::WorstCaseMargin)
        .expect("restores");
    assert_eq!(restored.state_hash(), e.state_hash());
    // A snapshot whose key order outlives its key is refused.
    let mut tampered = e.canonical();
    let k1_order = tampered
        .orders
        .iter_mut()
        .find(|o| o.session_key == Some(k1))
        .expect("k1 rests an order");
    k1_order.time_in_force = gtc;
    assert!(matches!(
        optio_engine::Engine::restore(&tampered, optio_types::WorstCaseMargin),
        Err(optio_engine::RestoreError::Invariant(_))
    ));
    // Extending k1 keeps its orders; shortening it to T0 + 45 s cancels those that would
    // outlive that.
    assert!(done(&run(&mut e, T0 + 1, key(k1, T0 + 120_000)).expect("extend")).is_empty());
    assert_eq!(
        done(&run(&mut e, T0 + 2, key(k1, T0 + 45_000)).expect("shorten")),
        vec![(2, DoneReason::Cancelled), (1, DoneReason::Cancelled)]
    );
    // Revoking k1 cancels the rest of its orders, and k1 signs no more.
    assert_eq!(
        done(&run(&mut e, T0 + 3, key(k1, 0)).expect("revoke")),
        vec![(3, DoneReason::Cancelled)]
    );
    let before = e.state_hash();
    assert_eq!(
        run(&mut e, T0 + 3, by(Some(k1), 1_000, gtc)),
        Err(RejectCode::SessionKeyNotLive)
    );
    assert_eq!(e.state_hash(), before);
    // k2's order expires with k2; after that k2 signs nothing, not even an immediate order.
    let events = run(&mut e, T0 + 60_000, by(None, 1_005, gtc)).expect("owner");
    assert_eq!(done(&events), vec![(5, DoneReason::Expired)]);
    assert_eq!(
        run(
            &mut e,
            T0 + 60_000,
            by(Some(k2), 1_000, TimeInForce::ImmediateOrCancel)
        ),
        Err(RejectCode::SessionKeyNotLive)
    );
    assert_eq!(
        lifetimes(&e).iter().map(|o| o.0).collect::<Vec<_>>(),
        vec![4, 6]
    );
    e.check_invariants().expect("invariants");
}

/// With the mark windows of a proven batch (two windows of two ids), an instrument is listed
/// only while those not yet settled, it included, lie in two windows: the fifth listing (window
/// 2) is refused with `TooManyInstruments` and nothing changes, still so with one of window
/// 0's two settled, and accepted once both are (a settled instrument's mark no longer moves,
/// so the oracle's marks of it stay out of the batches); the next window after it is then full
/// again.
#[test]
fn listings_stay_within_the_mark_windows_of_a_proof() {
    let limits = EngineLimits {
        mark_windows: optio_types::MarkWindows {
            windows: 2,
            bits: 1,
        },
        ..EngineLimits::default()
    };
    // Ids 0 (a call expiring 27 Dec) and 1 (a put, T0 + 1 h) in window 0, 2 and 3 in window 1.
    let mut e = engine_with(limits, 2, usd(100_000));
    let spec = |name: &str| {
        optio_types::InstrumentSpec::with_defaults(name.parse().expect("valid"), px(100_000))
    };
    let list = |e: &mut optio_engine::Engine, t: u64, name: &str| {
        run(e, t, Command::ListInstrument { spec: spec(name) })
    };
    let before = e.state_hash();
    assert_eq!(
        list(&mut e, T0, "BTC-27DEC24-80000-C"),
        Err(RejectCode::TooManyInstruments)
    );
    assert_eq!(e.state_hash(), before, "a refused listing changes nothing");
    let settle = |e: &mut optio_engine::Engine, t: u64, id: u32| {
        run(
            e,
            t,
            Command::SettleInstrument {
                instrument: InstrumentId(id),
                settlement_price: px(61_000),
            },
        )
        .expect("settles")
    };
    let put_expired = T0 + 3_600_000;
    settle(&mut e, put_expired, 1);
    assert_eq!(
        list(&mut e, put_expired, "BTC-27DEC24-80000-C"),
        Err(RejectCode::TooManyInstruments),
        "window 0 still holds the call"
    );
    let call_expired = put_expired + 6 * 86_400_000;
    settle(&mut e, call_expired, 0);
    list(&mut e, call_expired, "BTC-3JAN25-80000-C").expect("window 0 is free: id 4 in window 2");
    list(&mut e, call_expired, "BTC-3JAN25-90000-C").expect("id 5, window 2");
    assert_eq!(
        list(&mut e, call_expired, "BTC-3JAN25-95000-C"),
        Err(RejectCode::TooManyInstruments),
        "id 6 would open a third window"
    );
    e.check_invariants().expect("audit");
}

/// The proof's limits change through an input (`SetProofLimits`), for what follows: the engine
/// takes them whole, a snapshot keeps them, and windows past 2^32 ids are refused
/// (`InvalidLimits`) with nothing changed.
#[test]
fn the_proofs_limits_change_through_an_input() {
    let mut e = market();
    let proof = optio_types::ProofLimits {
        max_positions_to_withdraw: 8,
        fill_budget: optio_types::FillBudget {
            fills: 16,
            accounts: 16,
            windows: 8,
            prices: 2,
            window_bits: 6,
            ..optio_types::FillBudget::UNBOUNDED
        },
        mark_windows: optio_types::MarkWindows {
            windows: 1,
            bits: 6,
        },
        settle_budget: optio_types::SettleBudget {
            expiries: 4,
            slots: 2,
            holders: 16,
        },
    };
    assert_eq!(
        run(&mut e, T0, Command::SetProofLimits(proof)).expect("accepted"),
        Vec::new()
    );
    assert_eq!(e.limits().proof(), proof);
    assert_eq!(
        e.limits().max_instruments,
        EngineLimits::default().max_instruments,
        "the other limits stay"
    );
    let restored = optio_engine::Engine::restore_bytes(&e.snapshot(), optio_types::WorstCaseMargin)
        .expect("restores");
    assert_eq!(restored.limits().proof(), proof);
    let before = e.state_hash();
    for wide in [
        optio_types::ProofLimits {
            mark_windows: optio_types::MarkWindows {
                windows: 1,
                bits: 33,
            },
            ..proof
        },
        optio_types::ProofLimits {
            fill_budget: optio_types::FillBudget {
                window_bits: 33,
                ..proof.fill_budget
            },
            ..proof
        },
    ] {
        assert_eq!(
            run(&mut e, T0, Command::SetProofLimits(wide)),
            Err(RejectCode::InvalidLimits)
        );
        assert_eq!(e.state_hash(), before, "nothing changed");
    }
}
