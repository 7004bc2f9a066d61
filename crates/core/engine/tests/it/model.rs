//! The engine against the naive reference model on random input streams, bad inputs included:
//! same acceptance or rejection code for every input, same state hash after every input, every
//! rejection leaves the hash unchanged, the full audit passes after every input.

use optio_engine::Engine;
use optio_reference::Reference;
use optio_types::{
    AccountId, Address, Amount, CanonicalState, Command, EngineLimits, Input, InstrumentId,
    InstrumentSpec, NewOrder, OrderId, OrderRef, OrderType, Price, Qty, Quote, SelfTradePrevention,
    Side, TimeInForce,
};
use proptest::prelude::*;

use crate::common::{STEP, T0, TICK, owner, px, setup, specs, usd};

/// Tight limits so that every limit is hit now and then.
pub fn test_limits() -> EngineLimits {
    EngineLimits {
        max_open_orders_per_account: 5,
        max_price_levels_per_side: 4,
        max_mass_quote_entries: 3,
        max_instruments: 6,
        max_accounts: 9,
        max_order_qty: Qty(40 * STEP),
        max_amount: usd(1_000_000),
        max_positions_to_withdraw: u32::MAX,
        fill_budget: optio_types::FillBudget::UNBOUNDED,
        mark_windows: optio_types::MarkWindows::UNBOUNDED,
        settle_budget: optio_types::SettleBudget::UNBOUNDED,
    }
}

/// `test_limits` with mark windows for four instruments not settled, and a fill budget tight
/// enough to end orders now and then, each `kind` binding first on another count: 0, fills
/// (two, three accounts); 1, accounts (two: a taker and one maker, four fills); 2, accounts
/// (three, and three fills); 3, fills (two, no other bound). Kinds 0 and 1 have no solvency or
/// price window: the model's accounts are fully collateralized (`WorstCase`), which a proof
/// prices nowhere, so they fill whatever else they hold.
pub fn budgeted_limits(kind: u8) -> EngineLimits {
    use optio_types::FillBudget;
    let fill_budget = match kind {
        0 => FillBudget {
            fills: 2,
            accounts: 3,
            windows: 0,
            prices: 0,
            window_bits: 1,
            ..FillBudget::UNBOUNDED
        },
        1 => FillBudget {
            fills: 4,
            accounts: 2,
            windows: 0,
            prices: 0,
            window_bits: 0,
            ..FillBudget::UNBOUNDED
        },
        2 => FillBudget {
            fills: 3,
            accounts: 3,
            ..FillBudget::UNBOUNDED
        },
        _ => FillBudget {
            fills: 2,
            ..FillBudget::UNBOUNDED
        },
    };
    EngineLimits {
        fill_budget,
        // Four instruments not settled at most (the fifth listing refused until one settles).
        mark_windows: optio_types::MarkWindows {
            windows: 2,
            bits: 1,
        },
        ..test_limits()
    }
}

/// One random operation: a kind and a few small numbers that the generator interprets against
/// the current state (so that amends and cancels usually name a live order).
pub type Op = (u8, u8, u8, u16, u16, u8);

pub fn op() -> impl Strategy<Value = Op> {
    (
        0u8..28,
        any::<u8>(),
        any::<u8>(),
        any::<u16>(),
        any::<u16>(),
        any::<u8>(),
    )
}

fn mid(instrument: u32) -> i64 {
    match instrument {
        0 => 2_000,
        1 => 500,
        2 => 60_000,
        _ => 1_000,
    }
}

/// A price on a 24-tick grid around the instrument's mid, occasionally off-grid or out of band.
fn price(instrument: u32, c: u16) -> Price {
    match c % 64 {
        62 => Price(px(mid(instrument)).0 + 1),
        63 => px(1_000_000),
        k => Price(px(mid(instrument)).0 + (i64::from(k % 24) - 12) * TICK),
    }
}

fn qty(c: u16) -> Qty {
    match c % 32 {
        30 => Qty(STEP / 2),
        31 => Qty(100 * STEP),
        k => Qty((i64::from(k % 6) + 1) * STEP),
    }
}

/// Turns an op into an input, looking at the current canonical state for live order ids.
pub fn input(op: Op, state: &CanonicalState, time: &mut u64) -> Input {
    let (kind, a, b, c, d, flags) = op;
    let accounts = state.accounts.len().max(1) as u32;
    let account = AccountId(if a == 255 {
        77
    } else {
        u32::from(a) % accounts
    });
    let instrument = match b % 16 {
        15 => 3,
        k => u32::from(k) % 3,
    };
    let held = state
        .accounts
        .get(account.0 as usize)
        .and_then(|a| a.positions.iter().find(|p| p.instrument.0 == instrument))
        .map_or(0, |p| p.qty.0);
    // Reduce-only orders mostly go the reducing way, so that they rest and get cut later.
    let reducing = flags & 0x40 == 0x40 && flags & 0x20 == 0 && held != 0 && flags & 0x08 == 0;
    let side = match (reducing, held > 0, flags & 1) {
        (true, true, _) | (false, _, 1) => Side::Sell,
        _ => Side::Buy,
    };
    // Buys lean above the mid and sells below it, so that orders cross often.
    let lean = |p: Price| Price(p.0 + side.sign() * 4 * TICK);
    let live = |n: u16| {
        state
            .orders
            .get(n as usize % state.orders.len().max(1))
            .copied()
    };
    let order_ref = |n: u16| match (live(n), flags % 4) {
        (Some(o), 0) if o.client_order_id != 0 => (o.account, OrderRef::Client(o.client_order_id)),
        (Some(o), 1 | 2) => (o.account, OrderRef::Id(o.id)),
        (Some(o), _) => (account, OrderRef::Id(o.id)),
        (None, _) => (account, OrderRef::Id(OrderId(u64::from(n)))),
    };
    let command = match kind {
        0..=4 | 20.. => {
            let time_in_force = match (flags >> 1) % 8 {
                0 => TimeInForce::ImmediateOrCancel,
                1 => TimeInForce::FillOrKill,
                2 => TimeInForce::GoodTillTime(*time + u64::from(d % 600) * 1_000),
                _ => TimeInForce::GoodTillCancelled,
            };
            let new = NewOrder {
                account,
                instrument: InstrumentId(instrument),
                side,
                qty: if reducing {
                    Qty(qty(d).0.min(held.abs()))
                } else {
                    qty(d)
                },
                order_type: OrderType::Limit {
                    price: lean(price(instrument, c)),
                },
                time_in_force,
                post_only: flags & 0x18 == 0x18 && flags & 0x20 != 0,
                reduce_only: flags & 0x40 == 0x40 && flags & 0x20 == 0,
                self_trade: match (flags >> 4) % 3 {
                    0 => SelfTradePrevention::CancelTaker,
                    1 => SelfTradePrevention::CancelMaker,
                    _ => SelfTradePrevention::CancelBoth,
                },
                client_order_id: if flags & 0x80 != 0 {
                    u64::from(d % 5)
                } else {
                    0
                },
                session_key: None,
            };
            // One in five: the order replaces one of the account's (or a missing one).
            if kind == 4 {
                let (account, cancel) = order_ref(c);
                Command::Replace {
                    cancel,
                    order: NewOrder { account, ..new },
                }
            } else {
                Command::PlaceOrder(new)
            }
        }
        5 => Command::PlaceOrder(NewOrder {
            account,
            instrument: InstrumentId(instrument),
            side,
            qty: qty(d),
            order_type: OrderType::Market {
                protection_price: (flags & 2 != 0).then(|| price(instrument, c)),
            },
            time_in_force: match (flags >> 2) % 8 {
                0 => TimeInForce::FillOrKill,
                1 => TimeInForce::GoodTillCancelled,
                _ => TimeInForce::ImmediateOrCancel,
            },
            post_only: flags & 0x70 == 0x70,
            reduce_only: flags & 0x48 == 0x48,
            self_trade: SelfTradePrevention::CancelMaker,
            client_order_id: 0,
            session_key: None,
        }),
        6 | 7 => {
            let (acct, order) = order_ref(c);
            let o = live(c);
            let base_price = o.map_or(price(instrument, c), |o| o.price);
            let base_qty = o.map_or(qty(d), |o| o.remaining);
            let (price, qty) = match d % 5 {
                0 => (base_price, Qty(base_qty.0 - STEP)),
                1 => (base_price, Qty(base_qty.0 + STEP)),
                2 => (
                    Price(base_price.0 + (i64::from(c % 7) - 3) * TICK),
                    base_qty,
                ),
                3 => (base_price, base_qty),
                _ => (price(o.map_or(instrument, |o| o.instrument.0), c), qty(d)),
            };
            Command::Amend {
                account: acct,
                order,
                price,
                qty,
            }
        }
        8 | 9 => {
            let (account, order) = order_ref(c);
            Command::Cancel { account, order }
        }
        10 => Command::CancelAll {
            account,
            instrument: (flags & 2 != 0).then_some(InstrumentId(u32::from(b) % 5)),
        },
        11 => {
            let n = 1 + usize::from(flags % 4);
            let quotes = (0..n)
                .map(|k| {
                    let inst = (instrument + k as u32 * (1 + u32::from(flags >> 7))) % 4;
                    let spread = i64::from(d % 5) * TICK;
                    let m = price(inst, c.wrapping_add(k as u16 * 3));
                    Quote {
                        instrument: InstrumentId(inst),
                        bid: (flags & 0x20 == 0)
                            .then_some((Price(m.0 - spread), qty(d.wrapping_add(k as u16)))),
                        ask: (flags & 0x40 == 0)
                            .then_some((Price(m.0 + spread + TICK), qty(d >> 3))),
                    }
                })
                .collect();
            Command::MassQuote { account, quotes }
        }
        12 => Command::Deposit {
            account,
            amount: Amount([usd(50).0, usd(500).0, usd(5_000).0, 0, -5][usize::from(flags % 5)]),
        },
        13 => Command::Withdraw {
            account,
            amount: Amount([usd(10).0, usd(300).0, usd(3_000).0, 0][usize::from(flags % 4)]),
        },
        14 => Command::Transfer {
            from: account,
            to: AccountId(u32::from(b) % accounts),
            amount: usd([10, 200, 2_000][usize::from(flags % 3)]),
        },
        15 => {
            *time += u64::from(c % 1_200) * 1_000;
            Command::CancelAll {
                account,
                instrument: Some(InstrumentId(1)),
            }
        }
        16 if flags & 0x10 == 0 => Command::CancelAll {
            account,
            instrument: None,
        },
        16 => Command::SettleInstrument {
            instrument: InstrumentId(instrument),
            settlement_price: px([55_000, 60_000, 61_000, 0][usize::from(flags % 4)]),
        },
        17 if flags % 4 == 0 => Command::OpenAccount {
            owner: owner(1 + flags % 3),
        },
        // L1 deposits: the next queue id, now and then one ahead (refused); account 77 does
        // not exist (a new one is opened for the depositor).
        17 if flags % 4 == 1 => Command::L1Deposit {
            priority: state.totals.priority_served + u64::from(flags & 0x40 != 0),
            owner: owner(1 + (flags >> 2) % 3),
            account,
            amount: usd(20_000),
        },
        17 => Command::Deposit {
            account,
            amount: usd(20_000),
        },
        // Now and then the proof's limits change: none, a budget, windows past 2^32 ids.
        18 if flags & 0xE0 == 0xE0 => Command::SetProofLimits(match flags % 3 {
            0 => optio_types::ProofLimits::UNBOUNDED,
            1 => budgeted_limits((flags >> 2) % 4).proof(),
            _ => optio_types::ProofLimits {
                mark_windows: optio_types::MarkWindows {
                    windows: 1,
                    bits: 33,
                },
                ..budgeted_limits(0).proof()
            },
        }),
        18 => {
            let names = [
                "BTC-27DEC24-80000-C",
                "BTC-PERPETUAL",
                "BTC-20DEC24-60000-C",
                "ETH-27DEC24-3000-P",
            ];
            let mut spec = InstrumentSpec::with_defaults(
                names[usize::from(flags % 4)].parse().expect("valid"),
                px(100_000),
            );
            if flags & 0x10 != 0 {
                spec.tick_size = Price(1);
            }
            Command::ListInstrument { spec }
        }
        19 if flags & 0x30 == 0 => Command::Deposit {
            account,
            amount: usd(1_000),
        },
        // Forced withdrawals, by the owner or by someone else.
        19 if flags & 0x70 == 0x10 => Command::L1Withdrawal {
            priority: state.totals.priority_served + u64::from(flags & 0x80 != 0),
            owner: owner(1 + flags % 3),
            account,
        },
        _ => Command::ActivateInstrument {
            instrument: InstrumentId(instrument + u32::from(flags % 3)),
        },
    };
    if kind == 19 && flags & 0xC0 == 0xC0 {
        // Now and then: an input whose time goes backwards.
        return Input {
            time_ms: time.saturating_sub(1),
            command,
        };
    }
    Input {
        time_ms: *time,
        command,
    }
}

/// Runs ops through both models, checking everything after every input. Returns the inputs.
pub fn check_against_reference(limits: EngineLimits, ops: &[Op]) -> Vec<Input> {
    let mut engine = Engine::new(limits);
    let mut reference = Reference::new(limits);
    let mut inputs = setup(6, usd(20_000));
    let mut events = Vec::new();
    for input in &inputs {
        assert_eq!(engine.apply(input, &mut events), reference.apply(input));
    }
    let mut time = T0;
    for (n, op) in ops.iter().enumerate() {
        let input = input(*op, &engine.canonical(), &mut time);
        engine.advance_time(input.time_ms, &mut events);
        reference.advance_time(input.time_ms);
        let before = engine.state_hash();
        events.clear();
        let got = engine.apply(&input, &mut events);
        let want = reference.apply(&input);
        assert_eq!(got, want, "step {n}: {input:?}");
        if let Err(code) = got {
            assert_eq!(
                engine.state_hash(),
                before,
                "step {n}: rejection {code:?} changed state"
            );
            assert_eq!(events.last(), Some(&optio_types::Event::Rejected { code }));
        }
        if let Err(e) = engine.check_invariants() {
            panic!("step {n}: {e} after {input:?}");
        }
        let (e, r) = (engine.canonical(), reference.canonical());
        assert!(
            e == r,
            "step {n}: engine and reference diverge after {input:?}\nengine: {e:?}\nreference: {r:?}"
        );
        inputs.push(input);
    }
    inputs
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_reference(ops in prop::collection::vec(op(), 1..400), budget in 0..8u8) {
        let limits = match budget {
            0..4 => budgeted_limits(budget),
            _ => test_limits(),
        };
        check_against_reference(limits, &ops);
    }
}

#[test]
fn specs_are_valid() {
    for spec in specs() {
        assert_eq!(spec.validate(), Ok(()));
    }
    let _ = Address::default();
}

/// Coverage of the generator: how often each rejection and each event kind occurs. Fails if a
/// feature the property test is meant to exercise never happens.
#[test]
fn generator_exercises_every_feature() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::collections::BTreeMap;
    let mut runner = TestRunner::deterministic();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for n in 0..100 {
        let ops = prop::collection::vec(op(), 250)
            .new_tree(&mut runner)
            .expect("strategy")
            .current();
        // A fill budget in one run of five, its kinds in turn.
        let limits = match n % 5 {
            4 => budgeted_limits((n / 5 % 4) as u8),
            _ => test_limits(),
        };
        let inputs = check_against_reference(limits, &ops);
        let mut engine = Engine::new(limits);
        let mut events = Vec::new();
        for input in &inputs {
            events.clear();
            let r = engine.apply(input, &mut events);
            *outcomes
                .entry(match r {
                    Ok(()) => "accepted".into(),
                    Err(code) => format!("{code:?}"),
                })
                .or_default() += 1;
            for e in &events {
                let name = format!("{e:?}");
                let name = name.split([' ', '{']).next().unwrap_or_default().to_owned();
                let detail = match e {
                    optio_types::Event::OrderDone { reason, .. } => format!("{name}:{reason:?}"),
                    _ => name,
                };
                *outcomes.entry(detail).or_default() += 1;
            }
        }
    }
    eprintln!("{outcomes:#?}");
    for must in [
        "accepted",
        "Fill",
        "OrderDone:SelfTrade",
        "OrderDone:ReduceOnly",
        "OrderDone:Expired",
        "OrderDone:InstrumentExpired",
        "InstrumentSettled",
        "OrderAmended",
        "InsufficientMargin",
        "FokNotFillable",
        "PostOnlyWouldCross",
        "TooManyOpenOrders",
        "TooManyPriceLevels",
        "OrderDone:UnfilledRemainder",
        "OrderDone:FillLimit",
        "PositionSettled",
        "PriorityServed",
        "PriorityOutOfOrder",
        "ReplaceRefused",
    ] {
        assert!(
            outcomes.contains_key(must),
            "generator never produced {must}"
        );
    }
}
