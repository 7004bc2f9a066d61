//! The circuit against batches the real engine produced: random histories (options and a
//! perpetual, oracle updates, orders, L1 deposits and withdrawals, liquidations, expiry and
//! settlement, session keys) run through the engine and the batcher; every batch that fits the
//! circuit's shape and order satisfies it with the batcher's new root, and the others are named.

#[path = "../../state/tests/support/mod.rs"]
mod support;

use optio_prover::keys::check;
use optio_prover::{Shape, WitnessError, witness};
use optio_state::{SettlementState, decode};

const SHAPE: Shape = Shape {
    slots: 16,
    accounts: 16,
    positions: 24,
    instruments: 8,
    listings: 16,
    expiries: 8,
    settlements: 3,
    holders: 16,
    marks: 8,
    risk_chunks: 3,
    keys: 4,
    mark_window_bits: 0,
    margins: 4,
    prices: 1,
    solvency: 8,
    solvency_bits: 2,
    readonly: 0,
};

/// The same with marks in windows of four instrument ids (up to 32 ids in eight windows).
const WINDOWED: Shape = Shape {
    mark_window_bits: 2,
    ..SHAPE
};

/// What one history's batches gave: covered, also with mark windows, with money out of
/// negative cash, the op kinds covered, and the batches not covered.
type Coverage = (
    usize,
    usize,
    usize,
    std::collections::BTreeSet<String>,
    Vec<String>,
);

#[test]
fn covered_engine_batches_satisfy_the_circuit_with_the_batchers_roots() {
    // The three histories are independent: one thread each (the checks are the slow part of
    // the suite, and the other tests of this file end long before).
    let runs: Vec<Coverage> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3u64)
            .map(|seed| scope.spawn(move || cover(seed)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("history"))
            .collect()
    });
    let (mut covered, mut in_windows, mut negative_cash) = (0, 0, 0);
    let (mut kinds, mut other) = (std::collections::BTreeSet::new(), Vec::new());
    for (c, w, n, k, o) in runs {
        (covered, in_windows, negative_cash) = (covered + c, in_windows + w, negative_cash + n);
        kinds.extend(k);
        other.extend(o);
    }
    println!(
        "covered {covered} ({in_windows} also with mark windows; {negative_cash} with money out of negative cash), other {other:?}; op kinds {kinds:?}"
    );
    // One batch of the three histories has an account trading after its position was settled
    // in the same batch, an order the witness refuses (settlements apply after the op slots).
    assert!(covered >= 33, "only {covered} batches covered; {other:?}");
    assert!(
        in_windows >= 8,
        "only {in_windows} batches proven with mark windows"
    );
    for k in [
        "Fill",
        "Mark",
        "SettlePosition",
        "ListInstrument",
        "L1Deposit",
        "L1Close",
        "SessionKey",
    ] {
        assert!(kinds.contains(k), "no covered batch has a {k}: {kinds:?}");
    }
}

/// Runs history `seed` through the engine and the batcher and checks every batch that fits.
fn cover(seed: u64) -> Coverage {
    let (mut covered, mut other) = (0, Vec::new());
    let (mut in_windows, mut negative_cash) = (0, 0);
    let mut kinds = std::collections::BTreeSet::new();
    let inputs = support::history(seed, 400);
    let (batches, _, _) = support::run(&inputs, 12);
    let mut state = SettlementState::new();
    for b in &batches {
        let (_, ops) = decode(&b.blob).expect("decodes");
        match witness(&state, &ops, SHAPE) {
            Ok(w) => {
                assert_eq!(
                    w.public.new_root, b.header.new_root,
                    "seed {seed} batch {}",
                    b.header.number
                );
                // The commitment is the ops', whatever the shape, and the one the batcher
                // posts with the blob (computed from the blob alone).
                assert_eq!(
                    optio_prover::data_commitment(&state, &ops),
                    Ok(w.public.commitment),
                    "seed {seed} batch {}",
                    b.header.number
                );
                assert_eq!(
                    b.header.ops_commitment, w.public.commitment,
                    "seed {seed} batch {}",
                    b.header.number
                );
                // Money out of an account whose cash stays negative against the value of
                // its positions proves too: the engine and the circuit hold it to one
                // stress rule.
                check(&w).unwrap_or_else(|e| panic!("seed {seed} batch {}: {e}", b.header.number));
                if cash_goes_negative(&state, &ops) {
                    negative_cash += 1;
                }
                covered += 1;
                // The same batch with its marks in windows of four ids: the same roots
                // and commitment, and it proves too (one history: the checks are slow).
                let windowed = witness(&state, &ops, WINDOWED).ok().filter(|_| seed == 0);
                if let Some(windowed) = windowed {
                    assert_eq!(windowed.public, w.public, "seed {seed}");
                    check(&windowed).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                    in_windows += 1;
                }
                for op in &ops {
                    kinds.insert(
                        format!("{:?}", op)
                            .split([' ', '{'])
                            .next()
                            .unwrap_or("")
                            .to_owned(),
                    );
                }
            }
            Err(e) => {
                let at = match e {
                    WitnessError::Invalid(i) => format!(
                        " ({:?} after {:?})",
                        ops[i],
                        &ops[..i].iter().rev().take(3).collect::<Vec<_>>()
                    ),
                    _ => String::new(),
                };
                other.push(format!("seed {seed} batch {}: {e}{at}", b.header.number))
            }
        }
        state.apply_batch(&ops).expect("applies");
        state.commit();
    }
    (covered, in_windows, negative_cash, kinds, other)
}

/// Whether some account's cash is negative after a withdrawal or transfer out of it in `ops`.
fn cash_goes_negative(state: &SettlementState, ops: &[optio_state::Op]) -> bool {
    use optio_state::Op;
    (0..ops.len()).any(|i| {
        let from = match &ops[i] {
            Op::Withdraw { account, .. } => *account,
            Op::Transfer { from, .. } => *from,
            _ => return false,
        };
        let mut s = state.clone();
        s.apply_batch(&ops[..=i]).is_ok() && s.accounts()[from.0 as usize].collateral.0 < 0
    })
}

/// A batcher told the circuit's capacity (`optio devnet --prove`) cuts only batches the shape
/// holds, from the same engine histories, and a replay cuts the same ones.
#[test]
fn a_capacity_aware_batcher_cuts_only_batches_that_fit() {
    use optio_engine::Engine;
    use optio_state::{Batcher, Capacity};
    use optio_types::EngineLimits;

    const SMALL: Shape = Shape {
        slots: 4,
        accounts: 4,
        positions: 4,
        instruments: 2,
        listings: 2,
        expiries: 2,
        settlements: 1,
        holders: 8,
        marks: 8,
        risk_chunks: 3,
        keys: 1,
        mark_window_bits: 0,
        margins: 2,
        prices: 1,
        solvency: 4,
        solvency_bits: 2,
        readonly: 0,
    };
    let cut = |inputs: &[optio_types::Input]| {
        let mut engine = Engine::new(EngineLimits::default());
        let capacity = Capacity::new(|state, ops| optio_prover::fits(state, ops, SMALL).is_ok());
        let mut batcher = Batcher::new(1_000, u64::MAX).with_capacity(Some(capacity));
        let mut batches = Vec::new();
        let mut events = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            events.clear();
            let _ = engine.apply(input, &mut events);
            batches.extend(batcher.push(i as u64 + 1, input, &events).expect("batches"));
        }
        batches.extend(batcher.flush().expect("flushes"));
        assert_eq!(batcher.state().diff_engine(&engine.canonical()), None);
        batches
    };
    for seed in 0..2u64 {
        let inputs = support::history(seed, 400);
        let batches = cut(&inputs);
        let (unbounded, _, _) = support::run(&inputs, 1_000);
        assert!(batches.len() > unbounded.len(), "seed {seed}: cut smaller");
        let mut state = SettlementState::new();
        let mut oversized = Vec::new();
        for b in &batches {
            let (_, ops) = decode(&b.blob).expect("decodes");
            match witness(&state, &ops, SMALL) {
                Ok(w) => assert_eq!(w.public.new_root, b.header.new_root),
                // One input's own ops larger than the shape (a batch of its own).
                Err(WitnessError::TooLarge(what)) => oversized.push((
                    what,
                    ops.iter()
                        .filter(|o| matches!(o, optio_state::Op::Fill { .. }))
                        .count(),
                )),
                Err(e) => panic!("seed {seed} batch {}: {e}", b.header.number),
            }
            state.apply_batch(&ops).expect("applies");
            state.commit();
        }
        println!(
            "seed {seed}: {} batches (single inputs too large, with their fills: {oversized:?}), {} unbounded",
            batches.len(),
            unbounded.len()
        );
        assert!(
            oversized.len() * 10 <= batches.len(),
            "seed {seed}: {oversized:?} too large"
        );
        let again = cut(&inputs);
        assert!(
            batches.iter().zip(&again).all(|(a, b)| a.blob == b.blob)
                && batches.len() == again.len(),
            "a replay cuts the same batches"
        );
    }
}

/// An expiry that settles the last position of an account being liquidated, bankrupt: the
/// engine covers the deficit with the next input, and a batcher cutting to the circuit's shape
/// puts the settlement and the cover in batches that both prove (a cover in its account's
/// settlement's input would make a batch no shape could prove).
#[test]
fn a_deficit_an_expiry_leaves_is_covered_in_a_batch_that_proves() {
    use optio_types::{AccountId, Command, Input, InstrumentId, MarginMode, Side, TimeInForce};
    let mut t = support::T0;
    let mut inputs = opening(t, &[1], &[5_000, 2_000_000]);
    let mut at = |t: u64, command| {
        inputs.push(Input {
            time_ms: t,
            command,
        })
    };
    at(
        t,
        Command::SetMarginMode {
            account: AccountId(0),
            mode: MarginMode::Standard,
        },
    );
    // Account 0 sells puts to account 1 (the sizes its margin refuses are refused).
    let order = |account: u32, side, qty: i64, time_in_force| {
        limit_order(account, InstrumentId(1), side, qty, 1_000, time_in_force)
    };
    at(t, order(1, Side::Buy, 40, TimeInForce::GoodTillCancelled));
    for size in [40, 20, 10, 5, 2, 1] {
        at(
            t,
            order(0, Side::Sell, size, TimeInForce::ImmediateOrCancel),
        );
    }
    // A crash, then minute by minute past the put's expiry: nobody bids for account 0's puts.
    for spot in [50_000.0, 40_000.0, 40_000.0] {
        t += 60_000;
        at(t, support::oracle(spot, t));
    }
    for _ in 0..70 {
        t += 60_000;
        at(t, support::oracle(40_000.0, t));
    }
    let capacity =
        optio_state::Capacity::new(|state, ops| optio_prover::fits(state, ops, SHAPE).is_ok());
    let mut engine = optio_engine::Engine::new(optio_types::EngineLimits::default());
    let mut batcher = optio_state::Batcher::new(12, u64::MAX).with_capacity(Some(capacity));
    let (mut batches, mut events) = (Vec::new(), Vec::new());
    let (mut settled, mut covered) = (None, None);
    for (i, input) in inputs.iter().enumerate() {
        events.clear();
        let _ = engine.apply(input, &mut events);
        for ev in &events {
            match ev {
                optio_types::Event::PositionSettled { account, .. } if account.0 == 0 => {
                    settled = Some(i)
                }
                optio_types::Event::DeficitCovered { account, .. } if account.0 == 0 => {
                    covered = Some(i)
                }
                _ => {}
            }
        }
        batches.extend(batcher.push(i as u64 + 1, input, &events).expect("batches"));
    }
    batches.extend(batcher.flush().expect("flushes"));
    let settled = settled.expect("account 0's puts settle");
    assert_eq!(covered, Some(settled + 1), "covered by the next input");
    let (state, _) = proven(&batches, SHAPE);
    assert_eq!(state.root(), batcher.state().root());
    assert!(
        batches.iter().any(|b| decode(&b.blob)
            .expect("decodes")
            .1
            .iter()
            .any(|o| matches!(o, optio_state::Op::DeficitCovered { .. }))),
        "a cover was proven"
    );
}

/// An order sweeping more makers than one proof holds: with the fill budget of the circuit's
/// shape (`Shape::fill_budget`, which `optio node` gives the engine) it fills the makers that
/// fit, its rest is cancelled (`FillLimit`), the other makers' orders keep resting, and every
/// batch proves; without it, the order's one input makes a batch no proof of that shape holds.
/// The makers hold a call besides the perpetual they sell, fully collateralized (`WorstCase`):
/// no solvency or price window prices them (the shape has none), only their account registers
/// bind.
#[test]
fn an_order_sweeping_more_makers_than_a_proof_holds_fills_what_fits() {
    use optio_types::{
        AccountId, Amount, Command, DoneReason, EngineLimits, Event, Input, InstrumentId,
        MONEY_SCALE, Side, TimeInForce,
    };
    // Four account registers: the taker and three makers.
    const SWEEP: Shape = Shape {
        slots: 8,
        accounts: 4,
        positions: 8,
        instruments: 2,
        prices: 0,
        solvency: 0,
        solvency_bits: 0,
        readonly: 0,
        ..SHAPE
    };
    let (call, perp) = (InstrumentId(0), InstrumentId(2));
    let t = support::T0;
    let order = |account: u32, instrument, side, qty: i64, price: i64, time_in_force| Input {
        time_ms: t,
        command: limit_order(account, instrument, side, qty, price, time_in_force),
    };
    let mut inputs: Vec<Input> = support::specs()
        .into_iter()
        .map(|spec| Command::ListInstrument { spec })
        .chain([call, perp].map(|instrument| Command::ActivateInstrument { instrument }))
        .map(|command| Input {
            time_ms: t,
            command,
        })
        .collect();
    for a in 0..8u32 {
        for command in [
            Command::OpenAccount {
                owner: optio_types::Address([a as u8 + 1; 20]),
            },
            Command::Deposit {
                account: AccountId(a),
                amount: Amount(1_000_000 * MONEY_SCALE),
            },
        ] {
            inputs.push(Input {
                time_ms: t,
                command,
            });
        }
    }
    inputs.push(Input {
        time_ms: t,
        command: support::oracle(60_000.0, t),
    });
    // Makers 1 to 6 each buy a call from account 0, then offer one perpetual at 60,000.
    for maker in 1..=6 {
        inputs.push(order(
            maker,
            call,
            Side::Buy,
            1,
            1_000,
            TimeInForce::GoodTillCancelled,
        ));
        inputs.push(order(
            0,
            call,
            Side::Sell,
            1,
            1_000,
            TimeInForce::ImmediateOrCancel,
        ));
    }
    for maker in 1..=6 {
        inputs.push(order(
            maker,
            perp,
            Side::Sell,
            1,
            60_000,
            TimeInForce::GoodTillCancelled,
        ));
    }
    // Account 7 sweeps all six offers, then (with the budget) buys the three left.
    let sweep = inputs.len();
    inputs.push(order(
        7,
        perp,
        Side::Buy,
        6,
        60_000,
        TimeInForce::GoodTillCancelled,
    ));
    inputs.push(order(
        7,
        perp,
        Side::Buy,
        3,
        60_000,
        TimeInForce::ImmediateOrCancel,
    ));

    let run = |limits: EngineLimits| batched(&inputs, limits, SWEEP, sweep);
    let fills = |events: &[Event]| {
        events
            .iter()
            .filter(|e| matches!(e, Event::Fill { .. }))
            .count()
    };
    // How the taker's order ended, and what of it was left.
    let done = |events: &[Event]| {
        events.iter().find_map(|e| match e {
            Event::OrderDone {
                account,
                reason,
                unfilled,
                ..
            } if account.0 == 7 => Some((*reason, unfilled.0 / support::STEP)),
            _ => None,
        })
    };

    let budget = EngineLimits {
        fill_budget: SWEEP.fill_budget(),
        ..EngineLimits::default()
    };
    let (batches, swept) = run(budget);
    assert_eq!(fills(&swept[0]), 3, "three makers fit: {:?}", swept[0]);
    assert_eq!(done(&swept[0]), Some((DoneReason::FillLimit, 3)));
    assert_eq!(fills(&swept[1]), 3, "the other offers still rest");
    assert_eq!(done(&swept[1]), Some((DoneReason::Filled, 0)));
    proven(&batches, SWEEP);

    // Without the budget the sweep's input alone is too large for the shape.
    let (batches, swept) = run(EngineLimits::default());
    assert_eq!(fills(&swept[0]), 6);
    let mut state = SettlementState::new();
    let mut too_large = Vec::new();
    for b in &batches {
        let (_, ops) = decode(&b.blob).expect("decodes");
        if let Err(e) = witness(&state, &ops, SWEEP) {
            too_large.push((e, fills_in(&ops)));
        }
        state.apply_batch(&ops).expect("applies");
        state.commit();
    }
    assert_eq!(
        too_large,
        vec![(WitnessError::TooLarge("account registers"), 6)]
    );
}

/// A limit order of `qty` contracts at `price` dollars, cancelling the taker on a self-trade.
fn limit_order(
    account: u32,
    instrument: optio_types::InstrumentId,
    side: optio_types::Side,
    qty: i64,
    price: i64,
    time_in_force: optio_types::TimeInForce,
) -> optio_types::Command {
    use optio_types::{AccountId, MONEY_SCALE, NewOrder, OrderType, Price, Qty};
    optio_types::Command::PlaceOrder(NewOrder {
        account: AccountId(account),
        instrument,
        side,
        qty: Qty(qty * support::STEP),
        order_type: OrderType::Limit {
            price: Price(price * MONEY_SCALE),
        },
        time_in_force,
        post_only: false,
        reduce_only: false,
        self_trade: optio_types::SelfTradePrevention::CancelTaker,
        client_order_id: 0,
        session_key: None,
    })
}

/// `maker` rests a good-till-cancelled order for `qty` contracts of `instrument` at `price`
/// dollars on `maker_side`, and `taker` takes it all with an immediate-or-cancel order.
fn traded(
    maker: u32,
    taker: u32,
    instrument: optio_types::InstrumentId,
    maker_side: optio_types::Side,
    qty: i64,
    price: i64,
) -> [optio_types::Command; 2] {
    use optio_types::TimeInForce;
    [
        (maker, maker_side, TimeInForce::GoodTillCancelled),
        (taker, maker_side.opposite(), TimeInForce::ImmediateOrCancel),
    ]
    .map(|(account, side, time_in_force)| {
        limit_order(account, instrument, side, qty, price, time_in_force)
    })
}

/// The inputs opening a market at `t`: the histories' instruments listed, those of `active`
/// activated, and an account for each of `deposits` (owner `[n + 1; 20]`) funded with it
/// (USDC), then the oracle's first update.
fn opening(t: u64, active: &[u32], deposits: &[i64]) -> Vec<optio_types::Input> {
    use optio_types::{AccountId, Amount, Command, InstrumentId, MONEY_SCALE};
    let mut commands: Vec<Command> = support::specs()
        .into_iter()
        .map(|spec| Command::ListInstrument { spec })
        .collect();
    commands.extend(active.iter().map(|&i| Command::ActivateInstrument {
        instrument: InstrumentId(i),
    }));
    for (a, &cash) in (0u32..).zip(deposits) {
        commands.push(Command::OpenAccount {
            owner: optio_types::Address([a as u8 + 1; 20]),
        });
        commands.push(Command::Deposit {
            account: AccountId(a),
            amount: Amount(cash * MONEY_SCALE),
        });
    }
    commands.push(support::oracle(60_000.0, t));
    commands
        .into_iter()
        .map(|command| optio_types::Input {
            time_ms: t,
            command,
        })
        .collect()
}

/// Every batch that fits `shape` proves, with the batcher's root; the others, by what they
/// overflow, with their op counts.
fn prove_each(batches: &[optio_state::Batch], shape: Shape) -> Vec<(WitnessError, usize)> {
    prove_counting_end_slots(batches, shape).0
}

/// `prove_each`, and the end margin slots the proven batches used (a `Portfolio` account that
/// traded, proven maintained).
fn prove_counting_end_slots(
    batches: &[optio_state::Batch],
    shape: Shape,
) -> (Vec<(WitnessError, usize)>, usize) {
    let mut state = SettlementState::new();
    let (mut too_large, mut ends) = (Vec::new(), 0);
    for b in batches {
        let (_, ops) = decode(&b.blob).expect("decodes");
        match witness(&state, &ops, shape) {
            Ok(w) => {
                assert_eq!(w.public.new_root, b.header.new_root);
                check(&w).unwrap_or_else(|e| panic!("batch {}: {e}", b.header.number));
                ends += w.margins.iter().filter(|m| m.end).count();
            }
            Err(e) => too_large.push((e, ops.len())),
        }
        state.apply_batch(&ops).expect("applies");
        state.commit();
    }
    (too_large, ends)
}

fn fills_in(ops: &[optio_state::Op]) -> usize {
    ops.iter()
        .filter(|o| matches!(o, optio_state::Op::Fill { .. }))
        .count()
}

/// A loss shared by more accounts than one proof holds. The engine shares a deficit by every
/// account with free collateral; in the input that left it, the cover made a batch no proof of
/// the shape holds. With the shape's fill budget the cover waits for oracle updates, each
/// shared by as many accounts as a batch holds beside it (here three), and every batch proves.
#[test]
fn a_loss_shared_by_more_accounts_than_a_proof_holds_is_covered_over_oracle_updates() {
    use optio_engine::Engine;
    use optio_types::{
        AccountId, Amount, Command, EngineLimits, Event, Input, InstrumentId, MONEY_SCALE,
        MarginMode, Qty, Side, TimeInForce,
    };
    // Four account registers: a cover and three loss shares.
    const SHARE: Shape = Shape {
        accounts: 4,
        ..SHAPE
    };
    let perp = InstrumentId(2);
    let usd = |dollars: i64| Amount(dollars * MONEY_SCALE);
    struct Run {
        engine: Engine,
        batcher: optio_state::Batcher,
        batches: Vec<optio_state::Batch>,
        seq: u64,
    }
    impl Run {
        fn apply(&mut self, time_ms: u64, command: Command) -> Vec<Event> {
            let input = Input { time_ms, command };
            let mut events = Vec::new();
            self.engine.apply(&input, &mut events).expect("accepted");
            self.seq += 1;
            let cut = self.batcher.push(self.seq, &input, &events);
            self.batches.extend(cut.expect("batches"));
            events
        }
        /// `account` withdraws what leaves it `keep` dollars free.
        fn keep_free(&mut self, time_ms: u64, account: u32, keep: i64) {
            let (_, _, free) = self.engine.collateral(AccountId(account)).expect("exists");
            let amount = Amount(free.0 - keep * MONEY_SCALE);
            let account = AccountId(account);
            self.apply(time_ms, Command::Withdraw { account, amount });
        }
    }
    // Account 1 (standard margin, 15,000) buys a perpetual from each of accounts 0 and 2 at
    // 60,000; the others keep 1,000 to 3,250 free; a crash to 45,100 leaves account 1
    // bankrupt, account 3 takes both contracts and keeps 1,000 free. Nine accounts then share
    // the deficit (about 15,700), none able to carry more than 3,250 of it.
    let history = |limits: EngineLimits| {
        let capacity =
            optio_state::Capacity::new(|state, ops| optio_prover::fits(state, ops, SHARE).is_ok());
        let mut r = Run {
            engine: Engine::new(limits),
            batcher: optio_state::Batcher::new(1_000, u64::MAX).with_capacity(Some(capacity)),
            batches: Vec::new(),
            seq: 0,
        };
        let mut t = support::T0;
        for spec in support::specs() {
            r.apply(t, Command::ListInstrument { spec });
        }
        r.apply(t, Command::ActivateInstrument { instrument: perp });
        for a in 0..10u32 {
            let owner = optio_types::Address([a as u8 + 1; 20]);
            r.apply(t, Command::OpenAccount { owner });
            let (account, amount) = (AccountId(a), usd(200_000));
            r.apply(t, Command::Deposit { account, amount });
        }
        r.apply(t, support::oracle(60_000.0, t));
        let account = AccountId(1);
        r.apply(
            t,
            Command::SetMarginMode {
                account,
                mode: MarginMode::Standard,
            },
        );
        r.apply(
            t,
            Command::Withdraw {
                account,
                amount: usd(185_000),
            },
        );
        for seller in [0, 2] {
            let gtc = TimeInForce::GoodTillCancelled;
            r.apply(t, limit_order(seller, perp, Side::Sell, 100, 60_000, gtc));
            let ioc = TimeInForce::ImmediateOrCancel;
            r.apply(t, limit_order(1, perp, Side::Buy, 100, 60_000, ioc));
        }
        for a in [0, 2, 4, 5, 6, 7, 8, 9] {
            r.keep_free(t, a, 1_000 + 250 * i64::from(a));
        }
        t += 1_000;
        r.apply(t, support::oracle(45_000.0, t));
        t += 1_000;
        r.apply(t, support::oracle(45_100.0, t));
        // (The auction starts at the next update: engine rules 4.)
        t += 1_000;
        let events = r.apply(t, support::oracle(45_100.0, t));
        assert!(events.contains(&Event::LiquidationStarted { account }));
        let liquidation = r.apply(
            t,
            Command::Liquidate {
                liquidator: AccountId(3),
                account,
                instrument: perp,
                qty: Qty(2 * support::STEP * 100),
            },
        );
        r.keep_free(t, 3, 1_000);
        // The shares of each cover, by the input that made it.
        let mut shares: Vec<usize> = Vec::new();
        let count = |events: &[Event]| {
            events
                .iter()
                .filter(|e| matches!(e, Event::LossShared { .. }))
                .count()
        };
        shares.push(count(&liquidation));
        for _ in 0..6 {
            t += 1_000;
            let events = r.apply(t, support::oracle(45_100.0, t));
            shares.push(count(&events));
        }
        r.batches.extend(r.batcher.flush().expect("flushes"));
        assert_eq!(r.batcher.state().diff_engine(&r.engine.canonical()), None);
        let (balance, _, _) = r.engine.collateral(account).expect("exists");
        assert_eq!(balance, Amount(0), "the deficit is covered");
        (r.batches, shares)
    };
    let prove = |batches: &[optio_state::Batch]| prove_each(batches, SHARE);

    let budget = EngineLimits {
        fill_budget: SHARE.fill_budget(),
        ..EngineLimits::default()
    };
    let (batches, shares) = history(budget);
    assert_eq!(shares[0], 0, "no cover in the liquidation's input");
    assert!(shares.iter().all(|&n| n <= 3), "{shares:?}");
    assert!(
        shares.iter().filter(|&&n| n > 0).count() >= 2,
        "over several updates: {shares:?}"
    );
    assert_eq!(prove(&batches), Vec::new());

    // Without the budget the liquidation's input shares the loss by all nine.
    let (batches, shares) = history(EngineLimits::default());
    assert_eq!(shares[0], 9);
    assert_eq!(
        prove(&batches),
        vec![(WitnessError::TooLarge("account registers"), 11)]
    );
}

/// An expiry with more holders than one settlement slot pays: account 0 wrote six puts, one to
/// each of accounts 1 to 6; and two calls expiring at the same time with one expiry slot. With
/// the settlement budget of a shape whose one settlement slot pays four positions and whose one
/// expiry slot expires one instrument (`Shape::settle_budget`, which `optio node` gives the
/// engine) the put settles in two balanced parts at two oracle updates, account 0's short split
/// between them, the calls' expiries are posted by two inputs, every batch proves and every
/// position is paid; without it, the put's settlement and the calls' expiry each make a batch no
/// proof of that shape holds.
#[test]
fn expiries_and_settlements_past_what_a_proof_holds_come_in_parts() {
    use optio_types::{EngineLimits, Event, Input, InstrumentId, Side, TimeInForce};
    const PARTS: Shape = Shape {
        expiries: 1,
        settlements: 1,
        holders: 4,
        ..SHAPE
    };
    let mut t = support::T0;
    // The put (21DEC24) and both calls (27DEC24).
    let mut inputs = opening(t, &[0, 1, 3], &[1_000_000; 7]);
    let mut at = |t: u64, command| {
        inputs.push(Input {
            time_ms: t,
            command,
        })
    };
    let put = InstrumentId(1);
    at(
        t,
        limit_order(0, put, Side::Sell, 6, 1_000, TimeInForce::GoodTillCancelled),
    );
    for a in 1..7 {
        at(
            t,
            limit_order(a, put, Side::Buy, 1, 1_000, TimeInForce::ImmediateOrCancel),
        );
    }
    // Minute by minute past the put's expiry, in the money at 58,000.
    for _ in 0..75 {
        t += 60_000;
        at(t, support::oracle(58_000.0, t));
    }
    // Then, second by second, past the calls' expiry.
    t = support::specs()[0].expiry_ms().expect("an option");
    for _ in 0..5 {
        t += 1_000;
        at(t, support::oracle(58_000.0, t));
    }
    let run = |limits: EngineLimits| {
        let capacity =
            optio_state::Capacity::new(|state, ops| optio_prover::fits(state, ops, PARTS).is_ok());
        let mut engine = optio_engine::Engine::new(limits);
        let mut batcher = optio_state::Batcher::new(12, u64::MAX).with_capacity(Some(capacity));
        let (mut batches, mut events, mut parts) = (Vec::new(), Vec::new(), Vec::new());
        let mut expiries = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            events.clear();
            let _ = engine.apply(input, &mut events);
            let paid: Vec<u32> = events
                .iter()
                .filter_map(|ev| match ev {
                    Event::PositionSettled { account, .. } => Some(account.0),
                    _ => None,
                })
                .collect();
            if !paid.is_empty() {
                parts.push(paid);
            }
            let expired: Vec<u32> = events
                .iter()
                .filter_map(|ev| match ev {
                    Event::InstrumentExpired { instrument } => Some(instrument.0),
                    _ => None,
                })
                .collect();
            if !expired.is_empty() {
                expiries.push(expired);
            }
            batches.extend(batcher.push(i as u64 + 1, input, &events).expect("batches"));
        }
        batches.extend(batcher.flush().expect("flushes"));
        assert_eq!(batcher.state().root(), {
            let mut state = SettlementState::new();
            for b in &batches {
                state
                    .apply_batch(&decode(&b.blob).expect("decodes").1)
                    .expect("applies");
                state.commit();
            }
            state.root()
        });
        let flat = batcher
            .state()
            .accounts()
            .iter()
            .all(|a| a.positions.is_empty());
        (batches, parts, expiries, flat)
    };
    let prove = |batches: &[optio_state::Batch]| -> Vec<WitnessError> {
        prove_each(batches, PARTS)
            .into_iter()
            .map(|(e, _)| e)
            .collect()
    };

    let budget = EngineLimits {
        fill_budget: PARTS.fill_budget(),
        settle_budget: PARTS.settle_budget(),
        ..EngineLimits::default()
    };
    let (batches, parts, expiries, flat) = run(budget);
    assert_eq!(parts, [vec![1, 0, 2, 3], vec![0, 4, 5, 6]], "two parts");
    assert_eq!(expiries, [vec![1], vec![0], vec![3]], "an expiry an input");
    assert!(flat, "every position paid");
    assert_eq!(prove(&batches), Vec::new());

    let (batches, parts, expiries, flat) = run(EngineLimits::default());
    assert_eq!(parts, [vec![0, 1, 2, 3, 4, 5, 6]], "one settlement");
    assert_eq!(expiries, [vec![1], vec![0, 3]], "both calls at once");
    assert!(flat);
    assert_eq!(
        prove(&batches),
        vec![
            WitnessError::TooLarge("holders of a settlement"),
            WitnessError::TooLarge("expiry slots")
        ]
    );
}

/// A `Portfolio` account that trades is proven maintained after its batch, every position it
/// holds in the registers (an end margin slot). With the fill budget of the circuit's shape a
/// `Portfolio` maker holding more positions than a proof holds beside its taker's has its
/// order cancelled (`FillLimit`) instead of filled, and the taker fills the next maker: every
/// batch proves, one with an end slot. Without the budget the input holds a fill no proof of
/// the shape holds (too many position registers).
#[test]
fn a_portfolio_makers_fills_fit_the_proof_or_its_order_is_cancelled() {
    use optio_types::{
        AccountId, Command, DoneReason, EngineLimits, Event, Input, InstrumentId, MarginMode, Side,
        TimeInForce,
    };
    // Three position registers: the taker's, a maker's perpetual and one more position.
    const PORTFOLIO: Shape = Shape {
        slots: 8,
        accounts: 8,
        positions: 3,
        instruments: 3,
        margins: 2,
        prices: 2,
        solvency: 6,
        solvency_bits: 0,
        readonly: 0,
        ..SHAPE
    };
    let (call, put, perp) = (InstrumentId(0), InstrumentId(1), InstrumentId(2));
    let t = support::T0;
    let at = |command| Input {
        time_ms: t,
        command,
    };
    let order = |account: u32, instrument, side, qty: i64, price: i64, time_in_force| {
        at(limit_order(
            account,
            instrument,
            side,
            qty,
            price,
            time_in_force,
        ))
    };
    let mut inputs = opening(t, &[0, 1, 2], &[1_000_000; 4]);
    // Makers 1 (a call) and 2 (a call and a put) in Portfolio, each offering one perpetual,
    // maker 2 at the better price.
    for (maker, options, price) in [(1, vec![call], 60_000), (2, vec![call, put], 59_000)] {
        inputs.push(at(Command::SetMarginMode {
            account: AccountId(maker),
            mode: MarginMode::Portfolio,
        }));
        for option in options {
            inputs.push(order(
                maker,
                option,
                Side::Buy,
                1,
                1_000,
                TimeInForce::GoodTillCancelled,
            ));
            inputs.push(order(
                0,
                option,
                Side::Sell,
                1,
                1_000,
                TimeInForce::ImmediateOrCancel,
            ));
        }
        inputs.push(order(
            maker,
            perp,
            Side::Sell,
            1,
            price,
            TimeInForce::GoodTillCancelled,
        ));
    }
    // Account 3 buys one perpetual.
    let taker = inputs.len();
    inputs.push(order(
        3,
        perp,
        Side::Buy,
        1,
        60_000,
        TimeInForce::ImmediateOrCancel,
    ));

    let run = |limits: EngineLimits| {
        let (batches, mut taken) = batched(&inputs, limits, PORTFOLIO, taker);
        (batches, taken.remove(0))
    };
    let makers = |events: &[Event]| {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Fill { maker_account, .. } => Some(maker_account.0),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let cancelled = |events: &[Event]| {
        events.iter().find_map(|e| match e {
            Event::OrderDone {
                account, reason, ..
            } if account.0 == 2 => Some(*reason),
            _ => None,
        })
    };

    let budget = EngineLimits {
        fill_budget: PORTFOLIO.fill_budget(),
        ..EngineLimits::default()
    };
    let (batches, taken) = run(budget);
    assert_eq!(makers(&taken), vec![1], "{taken:?}");
    assert_eq!(cancelled(&taken), Some(DoneReason::FillLimit));
    let (too_large, ends) = prove_counting_end_slots(&batches, PORTFOLIO);
    assert_eq!(too_large, vec![]);
    assert!(
        ends >= 2,
        "maker 1's fills were proven maintained ({ends} end slots)"
    );

    // Without the budget the taker fills maker 2, whose positions the shape cannot hold.
    let (batches, taken) = run(EngineLimits::default());
    assert_eq!(makers(&taken), vec![2]);
    let too_large: Vec<WitnessError> = prove_each(&batches, PORTFOLIO)
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert_eq!(
        too_large,
        vec![WitnessError::TooLarge("position registers")]
    );
}

/// `inputs` through an engine with `limits` and a batcher cutting batches to `shape`: the
/// batches (the batcher's state checked against the engine's), and the events of each input
/// from index `from` on.
/// The engine holds a `Portfolio` writer of call spreads to its short-option floor, 1% of the
/// index a contract at its initial margin: the writer holds 20 calls at 60,000 and writes calls
/// at 70,000 of the same expiry against them (the scenarios cost the spread little, so the
/// floor binds); the proof counts the floor at 0.8% in the account's end slot, which the
/// engine's rule implies: the writer sells a call at a time until the engine refuses one, and
/// every batch of its fills proves, with end slots.
#[test]
fn a_portfolio_writer_at_the_engines_limit_proves_its_floor() {
    use optio_types::{
        AccountId, Command, Input, InstrumentId, MONEY_SCALE, MarginMode, Side, TimeInForce,
    };
    let (long, short) = (InstrumentId(0), InstrumentId(3));
    let t = support::T0;
    let at = |command| Input {
        time_ms: t,
        command,
    };
    let mut fed = Fed::new();
    let (mut written, mut refused) = (0, 0);
    for input in opening(t, &[0, 3], &[1_000_000, 1]) {
        assert!(fed.step(input).0);
    }
    let mark = |engine: &optio_engine::Engine, id: InstrumentId| {
        engine
            .instruments()
            .find(|i| i.id == id)
            .and_then(|i| i.mark)
            .expect("marked")
            .0
    };
    let (long_price, short_price) = (
        (mark(&fed.engine, long) + MONEY_SCALE - 1) / MONEY_SCALE,
        (mark(&fed.engine, short) / MONEY_SCALE).max(1),
    );
    assert!(
        short_price < 600,
        "the 70,000 call's premium is below its floor"
    );
    // The writer's cash: the 20 calls at 60,000 and 3,000 more.
    let inputs = [
        at(Command::Deposit {
            account: AccountId(1),
            amount: optio_types::Amount((20 * long_price + 3_000) * MONEY_SCALE),
        }),
        at(Command::SetMarginMode {
            account: AccountId(1),
            mode: MarginMode::Portfolio,
        }),
        at(limit_order(
            0,
            long,
            Side::Sell,
            20 * 100,
            long_price,
            TimeInForce::GoodTillCancelled,
        )),
        at(limit_order(
            1,
            long,
            Side::Buy,
            20 * 100,
            long_price,
            TimeInForce::ImmediateOrCancel,
        )),
        at(limit_order(
            0,
            short,
            Side::Buy,
            20 * 100,
            short_price,
            TimeInForce::GoodTillCancelled,
        )),
    ];
    for input in inputs {
        assert!(fed.step(input).0);
    }
    for _ in 0..20 {
        let (accepted, fills) = fed.step(at(limit_order(
            1,
            short,
            Side::Sell,
            100,
            short_price,
            TimeInForce::ImmediateOrCancel,
        )));
        written += fills;
        refused += usize::from(!accepted);
    }
    let batches = fed.flush();
    // About 3,000 / (600 - premium) calls: the floor, not the spread's scenarios, stops it.
    assert!(
        (2..20).contains(&written) && refused == 20 - written,
        "{written} calls written, {refused} refused"
    );
    let (too_large, ends) = prove_counting_end_slots(&batches, SHAPE);
    assert_eq!(too_large, Vec::new());
    assert!(ends >= 2, "{ends} end slots");
}

/// A `Standard` maker is filled only while it meets its maintenance (`7.5%` of the index per
/// short call, and twice the mark), the rule the proof holds it to in its end slot: account 1
/// rests an order to write 20 calls at 60,000 with about the initial margin they need at an
/// index of 60,000; the index then rises to 64,000 (the call's mark with it), and account 0
/// buys a call at a time. The engine stops filling the writer below 20 calls (its maintenance
/// at the new index binds), and every batch of the fills proves, with end slots for both.
#[test]
fn a_standard_maker_at_the_engines_limit_proves_its_maintenance() {
    use optio_types::{
        AccountId, Command, Input, InstrumentId, MONEY_SCALE, MarginMode, Side, TimeInForce,
    };
    let call = InstrumentId(0);
    let t = support::T0;
    let at = |time_ms, command| Input { time_ms, command };
    let mut fed = Fed::new();
    for input in opening(t, &[0], &[1_000_000, 1]) {
        assert!(fed.step(input).0);
    }
    let mark = |engine: &optio_engine::Engine| {
        engine
            .instruments()
            .find(|i| i.id == call)
            .and_then(|i| i.mark)
            .expect("marked")
            .0
    };
    let price = (mark(&fed.engine) + MONEY_SCALE - 1) / MONEY_SCALE;
    // The initial margin of 20 short at-the-money calls, net of their premium: 15% of the
    // index and a mark each, and the order's fee reserve.
    let deposit = 20 * (9_000 + price) + 2_000;
    let inputs = [
        Command::Deposit {
            account: AccountId(1),
            amount: optio_types::Amount(deposit * MONEY_SCALE),
        },
        Command::SetMarginMode {
            account: AccountId(1),
            mode: MarginMode::Standard,
        },
        limit_order(
            1,
            call,
            Side::Sell,
            20 * 100,
            price,
            TimeInForce::GoodTillCancelled,
        ),
    ];
    for command in inputs {
        assert!(fed.step(at(t, command)).0);
    }
    let later = t + 1_000;
    assert!(fed.step(at(later, support::oracle(64_000.0, later))).0);
    assert!(
        mark(&fed.engine) > price * MONEY_SCALE,
        "the call's mark rose"
    );
    let mut written = 0;
    for _ in 0..20 {
        let (_, fills) = fed.step(at(
            later,
            limit_order(
                0,
                call,
                Side::Buy,
                100,
                price,
                TimeInForce::ImmediateOrCancel,
            ),
        ));
        written += fills;
    }
    let batches = fed.flush();
    // Each call now asks 4,800 and twice a mark above the old price of what it brings in.
    assert!((2..20).contains(&written), "{written} calls written");
    let (too_large, ends) = prove_counting_end_slots(&batches, SHAPE);
    assert_eq!(too_large, Vec::new());
    assert!(ends >= 2, "{ends} end slots");
    // Natively too, at the marks the batches committed last.
    assert_eq!(fed.batcher.state().maintained(AccountId(1)), Some(true));
}

/// A default engine and a batcher cutting to `SHAPE`, fed one input at a time.
struct Fed {
    engine: optio_engine::Engine,
    batcher: optio_state::Batcher,
    batches: Vec<optio_state::Batch>,
    events: Vec<optio_types::Event>,
    seq: u64,
}

impl Fed {
    fn new() -> Self {
        let capacity = optio_state::Capacity::new(move |state, ops| {
            optio_prover::fits(state, ops, SHAPE).is_ok()
        });
        Self {
            engine: optio_engine::Engine::new(optio_types::EngineLimits::default()),
            batcher: optio_state::Batcher::new(4, u64::MAX).with_capacity(Some(capacity)),
            batches: Vec::new(),
            events: Vec::new(),
            seq: 0,
        }
    }

    /// Applies `input` and batches its events: whether the engine accepted it, and its fills.
    fn step(&mut self, input: optio_types::Input) -> (bool, usize) {
        self.events.clear();
        let accepted = self.engine.apply(&input, &mut self.events).is_ok();
        self.seq += 1;
        let cut = self.batcher.push(self.seq, &input, &self.events);
        self.batches.extend(cut.expect("batches"));
        let fills = self
            .events
            .iter()
            .filter(|e| matches!(e, optio_types::Event::Fill { .. }));
        (accepted, fills.count())
    }

    /// Every batch, the last flushed, after checking the batcher's state against the engine's.
    fn flush(&mut self) -> Vec<optio_state::Batch> {
        let last = self.batcher.flush().expect("flushes");
        self.batches.extend(last);
        assert_eq!(
            self.batcher.state().diff_engine(&self.engine.canonical()),
            None
        );
        std::mem::take(&mut self.batches)
    }
}

fn batched(
    inputs: &[optio_types::Input],
    limits: optio_types::EngineLimits,
    shape: Shape,
    from: usize,
) -> (Vec<optio_state::Batch>, Vec<Vec<optio_types::Event>>) {
    let capacity =
        optio_state::Capacity::new(move |state, ops| optio_prover::fits(state, ops, shape).is_ok());
    let mut engine = optio_engine::Engine::new(limits);
    let mut batcher = optio_state::Batcher::new(1_000, u64::MAX).with_capacity(Some(capacity));
    let (mut batches, mut events, mut watched) = (Vec::new(), Vec::new(), Vec::new());
    for (i, input) in inputs.iter().enumerate() {
        events.clear();
        engine.apply(input, &mut events).expect("accepted");
        if i >= from {
            watched.push(events.clone());
        }
        batches.extend(batcher.push(i as u64 + 1, input, &events).expect("batches"));
    }
    batches.extend(batcher.flush().expect("flushes"));
    assert_eq!(batcher.state().diff_engine(&engine.canonical()), None);
    (batches, watched)
}

/// Every liquidation the engine makes proves its account below maintenance before the op
/// (`SettlementState::below_maintenance`, a margin slot each): account 1 (`Standard`, 15,000
/// after a withdrawal) buys a perpetual from each of accounts 0 and 2 at 60,000, and the index
/// drops to 54,100 (within the circuit breaker): its equity, about 3,160, is below its
/// maintenance of 5,410. Account 3 bids for a quarter of its position at the auction's opening
/// discount, which leaves it below; a quarter of an hour later, with no other bid, one
/// `Deleverage` closes a contract against account 0 and stops there, the account back above
/// its maintenance (account 2 keeps its short). Every batch a capacity-aware batcher cuts
/// proves, two of them with a liquidation priced below maintenance.
#[test]
fn an_engine_liquidation_proves_its_account_below_maintenance() {
    use optio_types::{
        AccountId, Amount, Command, EngineLimits, Event, Input, InstrumentId, MONEY_SCALE,
        MarginMode, Qty, Side,
    };
    let perp = InstrumentId(2);
    let mut t = support::T0;
    let mut inputs = opening(t, &[2], &[200_000; 5]);
    let mut at = |t: u64, command: Command| {
        inputs.push(Input {
            time_ms: t,
            command,
        })
    };
    at(
        t,
        Command::SetMarginMode {
            account: AccountId(1),
            mode: MarginMode::Standard,
        },
    );
    at(
        t,
        Command::Withdraw {
            account: AccountId(1),
            amount: Amount(185_000 * MONEY_SCALE),
        },
    );
    for seller in [0, 2] {
        for command in traded(seller, 1, perp, Side::Sell, 100, 60_000) {
            at(t, command);
        }
    }
    t += 1_000;
    at(t, support::oracle(54_000.0, t));
    t += 1_000;
    at(t, support::oracle(54_100.0, t));
    at(
        t,
        Command::Liquidate {
            liquidator: AccountId(3),
            account: AccountId(1),
            instrument: perp,
            qty: Qty(50 * support::STEP),
        },
    );
    t += 15 * 60_000;
    at(t, support::oracle(54_100.0, t));
    at(
        t,
        Command::Deleverage {
            account: AccountId(1),
            instrument: perp,
        },
    );
    let limits = EngineLimits {
        fill_budget: SHAPE.fill_budget(),
        ..EngineLimits::default()
    };
    let (batches, events) = batched(&inputs, limits, SHAPE, 0);
    let transfers: Vec<(u32, bool)> = events
        .iter()
        .flatten()
        .filter_map(|e| match e {
            Event::LiquidationTransfer {
                counterparty,
                deleverage,
                ..
            } => Some((counterparty.0, *deleverage)),
            _ => None,
        })
        .collect();
    assert_eq!(transfers, vec![(3, false), (0, true)]);
    let (_, proven) = proven(&batches, SHAPE);
    let below: usize = proven.iter().map(|(_, w)| below_slots(w)).sum();
    assert_eq!(below, 3, "the auction's start and both liquidations priced");
}

/// A deleveraging's transfers to `Standard` holders that hold positions in other instruments
/// stay within the solvency windows of a proof (the one place windows still bind since engine
/// rules 8: a trader's positions are all in registers, a `WorstCase` account is priced
/// nowhere). Account 0, `Standard`, long 2 perpetuals bought at 60,000 from four `Standard`
/// holders of half a contract each, each also holding a call, falls below maintenance at
/// 54,000; no liquidator bids. In windows of one id each holder takes two (the call's run and
/// the perpetual's), so a shape of two windows holds one transfer a `Deleverage`: the first
/// moves holder 1's half, the second holder 2's (the account is then back at its
/// maintenance), and every batch proves. Without the budget one `Deleverage` moves both, and
/// its batch needs four windows.
#[test]
fn a_deleveragings_transfers_to_margined_holders_fit_the_proofs_windows() {
    use optio_types::{
        AccountId, Command, EngineLimits, Event, Input, InstrumentId, MarginMode, Side,
    };
    const WINDOWS: Shape = Shape {
        prices: 2,
        solvency: 2,
        solvency_bits: 0,
        readonly: 0,
        ..SHAPE
    };
    let (call, perp) = (InstrumentId(0), InstrumentId(2));
    let holders = [1u32, 2, 3, 5];
    let mut t = support::T0;
    let mut inputs = opening(
        t,
        &[0, 2],
        &[15_000, 200_000, 200_000, 200_000, 10_000_000, 200_000],
    );
    let mut at = |t: u64, command: Command| {
        inputs.push(Input {
            time_ms: t,
            command,
        })
    };
    for a in std::iter::once(0).chain(holders) {
        at(
            t,
            Command::SetMarginMode {
                account: AccountId(a),
                mode: MarginMode::Standard,
            },
        );
    }
    for h in holders {
        // A call bought from account 4, then half a perpetual sold to account 0.
        let call_then_perp = [
            traded(h, 4, call, Side::Buy, 1, 1_000),
            traded(h, 0, perp, Side::Sell, 50, 60_000),
        ];
        for command in call_then_perp.into_iter().flatten() {
            at(t, command);
        }
    }
    t += 1_000;
    at(t, support::oracle(54_000.0, t));
    t += 1_000;
    at(t, support::oracle(54_100.0, t));
    t += 15 * 60_000;
    at(t, support::oracle(54_100.0, t));
    let deleverage = Command::Deleverage {
        account: AccountId(0),
        instrument: perp,
    };
    at(t, deleverage.clone());
    at(t, deleverage);

    let transfers = |events: &[Vec<Event>]| -> Vec<Vec<u32>> {
        events
            .iter()
            .map(|input| {
                input
                    .iter()
                    .filter_map(|e| match e {
                        Event::LiquidationTransfer {
                            counterparty,
                            deleverage: true,
                            ..
                        } => Some(counterparty.0),
                        _ => None,
                    })
                    .collect()
            })
            .collect()
    };
    let from = inputs.len() - 2;
    let budget = EngineLimits {
        fill_budget: WINDOWS.fill_budget(),
        ..EngineLimits::default()
    };
    let (batches, events) = batched(&inputs, budget, WINDOWS, from);
    assert_eq!(transfers(&events), vec![vec![1], vec![2]]);
    let (_, proven) = proven(&batches, WINDOWS);
    let windows: Vec<usize> = proven
        .iter()
        .map(|(_, w)| w.solvency.iter().filter(|s| s.enabled).count())
        .filter(|&n| n > 0)
        .collect();
    // Its half closed, each holder ends with its call alone: one window used of the two the
    // plan (and the engine) reserve for the runs it held and changed.
    assert_eq!(windows, vec![1, 1], "one holder a batch");

    // (The second `Deleverage` is refused then: the account is no longer below.)
    let once = &inputs[..inputs.len() - 1];
    let (batches, events) = batched(once, EngineLimits::default(), WINDOWS, from);
    assert_eq!(transfers(&events), vec![vec![1, 2]]);
    let refused: Vec<WitnessError> = prove_each(&batches, WINDOWS)
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert_eq!(refused, vec![WitnessError::TooLarge("solvency windows")]);
}

/// Every batch fits `shape` and proves with the batcher's root: the state after them, and each
/// batch's ops and witness.
fn proven(
    batches: &[optio_state::Batch],
    shape: Shape,
) -> (
    SettlementState,
    Vec<(Vec<optio_state::Op>, optio_prover::BatchWitness)>,
) {
    let mut state = SettlementState::new();
    let mut proven = Vec::with_capacity(batches.len());
    for b in batches {
        let (_, ops) = decode(&b.blob).expect("decodes");
        let w = witness(&state, &ops, shape)
            .unwrap_or_else(|e| panic!("batch {}: {e}", b.header.number));
        assert_eq!(w.public.new_root, b.header.new_root);
        check(&w).unwrap_or_else(|e| panic!("batch {}: {e}", b.header.number));
        state.apply_batch(&ops).expect("applies");
        state.commit();
        proven.push((ops, w));
    }
    (state, proven)
}

/// A witness's margin slots that price an account below maintenance (a liquidation's, or an
/// auction start's).
fn below_slots(w: &optio_prover::BatchWitness) -> usize {
    w.margins.iter().filter(|m| m.below).count()
}

/// Six `Standard` accounts, each long a perpetual on 7,500 of collateral (account 7 sells them
/// all, fully collateralized: a short perpetual can owe its cap), fall below maintenance in one
/// oracle update (the index to 54,100, within the circuit breaker); two more updates at that
/// index start their auctions. Returns the inputs and the time of the last update.
fn six_leveraged_longs_falling() -> (Vec<optio_types::Input>, u64) {
    use optio_types::{AccountId, Amount, Command, Input, InstrumentId};
    use optio_types::{MONEY_SCALE, MarginMode, Side, TimeInForce};
    let perp = InstrumentId(2);
    let mut t = support::T0;
    let mut deposits = [200_000; 8];
    deposits[7] = 2_000_000;
    let mut inputs = opening(t, &[2], &deposits);
    let mut at = |t: u64, command: Command| {
        inputs.push(Input {
            time_ms: t,
            command,
        })
    };
    for buyer in 1..=6u32 {
        let account = AccountId(buyer);
        let standard = MarginMode::Standard;
        at(
            t,
            Command::SetMarginMode {
                account,
                mode: standard,
            },
        );
        let amount = Amount(192_500 * MONEY_SCALE);
        at(t, Command::Withdraw { account, amount });
        let gtc = TimeInForce::GoodTillCancelled;
        at(t, limit_order(7, perp, Side::Sell, 100, 60_000, gtc));
        let ioc = TimeInForce::ImmediateOrCancel;
        at(t, limit_order(buyer, perp, Side::Buy, 100, 60_000, ioc));
    }
    for _ in 0..3 {
        t += 1_000;
        at(t, support::oracle(54_100.0, t));
    }
    (inputs, t)
}

/// How many of each input's events are auction starts (`end` false) or ends.
fn auctions(events: &[Vec<optio_types::Event>], end: bool) -> Vec<usize> {
    use optio_types::Event;
    events
        .iter()
        .map(|e| {
            e.iter()
                .filter(|e| match e {
                    Event::LiquidationStarted { .. } => !end,
                    Event::LiquidationEnded { .. } => end,
                    _ => false,
                })
                .count()
        })
        .collect()
}

/// How many auction starts (`end` false) or ends the proven batches posted.
fn posted_auctions(
    proven: &[(Vec<optio_state::Op>, optio_prover::BatchWitness)],
    end: bool,
) -> usize {
    proven
        .iter()
        .flat_map(|(ops, _)| ops)
        .filter(|o| match o {
            optio_state::Op::LiquidationStart { .. } => !end,
            optio_state::Op::LiquidationEnd { .. } => end,
            _ => false,
        })
        .count()
}

/// Auction starts are budgeted as the prover's plan counts them (engine rules 4): six
/// accounts fall below maintenance (`six_leveraged_longs_falling`). A shape of four margin
/// slots prices four starts a batch, so the next update starts four and the one after the other
/// two. The index then rises to 59,000, curing all six: their auctions end at the next updates
/// (engine rules 5), four and then two, each end priced at its maintenance by a cured slot.
/// Every batch a capacity-aware batcher cuts proves with the batcher's root.
#[test]
fn auction_starts_and_ends_of_many_accounts_fit_the_shape_over_updates() {
    use optio_types::EngineLimits;
    let (mut inputs, mut t) = six_leveraged_longs_falling();
    for _ in 0..3 {
        t += 1_000;
        inputs.push(optio_types::Input {
            time_ms: t,
            command: support::oracle(59_000.0, t),
        });
    }
    let limits = EngineLimits {
        fill_budget: SHAPE.fill_budget(),
        ..EngineLimits::default()
    };
    let from = inputs.len() - 6;
    let (batches, events) = batched(&inputs, limits, SHAPE, from);
    assert_eq!(auctions(&events, false), vec![0, 4, 2, 0, 0, 0]);
    assert_eq!(auctions(&events, true), vec![0, 0, 0, 0, 4, 2]);
    let (state, proven) = proven(&batches, SHAPE);
    let slots = |rule: fn(&optio_prover::witness::MarginSlot) -> bool| -> usize {
        proven
            .iter()
            .map(|(_, w)| w.margins.iter().filter(|m| rule(m)).count())
            .sum()
    };
    assert_eq!(
        (posted_auctions(&proven, false), slots(|m| m.below)),
        (6, 6),
        "every start posted and priced"
    );
    assert_eq!(
        (posted_auctions(&proven, true), slots(|m| m.cured)),
        (6, 6),
        "every end posted and priced"
    );
    assert!(state.accounts()[1..=6].iter().all(|a| a.since == 0));
}

/// Engine rules 6: an end whose account covers its shorts' worst case takes no margin slot.
/// The six accounts of `six_leveraged_longs_falling`, their auctions started (four, then two),
/// are topped up by their owners (a deposit of 60,000 each, which a frozen account takes), so
/// each holds more than its long's negative cash: all six end at the next update, in one batch
/// of a shape with four margin slots (under rules 5, four and then two), each proven by its op
/// slot's cover with no cured slot.
#[test]
fn auction_ends_of_accounts_covering_their_shorts_take_no_margin_slot() {
    use optio_types::{AccountId, Amount, Command, EngineLimits, Input, MONEY_SCALE};
    let (mut inputs, mut t) = six_leveraged_longs_falling();
    for account in 1..=6 {
        inputs.push(Input {
            time_ms: t,
            command: Command::Deposit {
                account: AccountId(account),
                amount: Amount(60_000 * MONEY_SCALE),
            },
        });
    }
    for _ in 0..2 {
        t += 1_000;
        inputs.push(Input {
            time_ms: t,
            command: support::oracle(54_100.0, t),
        });
    }
    let limits = EngineLimits {
        fill_budget: SHAPE.fill_budget(),
        ..EngineLimits::default()
    };
    // More ends than margin slots.
    const { assert!(SHAPE.margins < 6) };
    let from = inputs.len() - 11;
    let (batches, events) = batched(&inputs, limits, SHAPE, from);
    // The three falling updates, the six deposits, the two updates after them.
    assert_eq!(
        auctions(&events, false),
        vec![0, 4, 2, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        auctions(&events, true),
        vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0]
    );
    let (state, proven) = proven(&batches, SHAPE);
    let cured: usize = proven
        .iter()
        .map(|(_, w)| w.margins.iter().filter(|m| m.cured).count())
        .sum();
    let by_cover: usize = proven
        .iter()
        .map(|(_, w)| w.slots.iter().filter(|s| s.by_cover).count())
        .sum();
    assert_eq!(
        (posted_auctions(&proven, true), cured, by_cover),
        (6, 0, 6),
        "every end posted and proven by its cover"
    );
    assert!(state.accounts()[1..=6].iter().all(|a| a.since == 0));
}
