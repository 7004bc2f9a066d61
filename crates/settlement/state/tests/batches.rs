//! Random engine histories through the batcher: after every batch the settlement state agrees
//! with the engine; rebuilding from the blobs alone gives the same roots batch by batch; every
//! account's exit proof verifies and a tampered one does not; damaged blobs are refused whole.

use optio_engine::Engine;
use optio_state::{Batcher, BlobError, Op, SettlementState, decode, rebuild};
use optio_types::{
    AccountId, Address, Amount, Command, EngineLimits, Input, InstrumentId, MONEY_SCALE,
    MarginMode, NewOrder, OrderType, Price, QTY_SCALE, Qty, SelfTradePrevention, Side, TimeInForce,
};
use proptest::prelude::*;

mod support;

use support::{STEP, T0, history, oracle, px, run, specs};

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn rebuild_from_blobs_equals_the_batcher_and_every_exit_proof_verifies(seed in any::<u64>(), max_ops in 5usize..60) {
        let inputs = history(seed, 400);
        let (batches, _, batcher) = run(&inputs, max_ops);
        prop_assert!(batches.len() >= 2);
        let mut rebuilt = SettlementState::new();
        let mut headers = Vec::new();
        let end = rebuild(batches.iter().map(|b| b.blob.as_slice()), &mut rebuilt, |h| headers.push(*h)).expect("rebuilds");
        prop_assert_eq!(end, (batches.len() as u64, batches.last().expect("some").header.last_seq));
        for (b, h) in batches.iter().zip(&headers) {
            prop_assert_eq!(&b.header, h, "batch {} differs on rebuild", h.number);
        }
        prop_assert_eq!(rebuilt.root(), batcher.state().root());
        for a in 0..rebuilt.accounts().len() as u32 {
            let proof = rebuilt.exit_proof(AccountId(a)).expect("exists");
            prop_assert!(proof.verify(), "account {}", a);
            let mut richer = proof.clone();
            richer.leaf.collateral = Amount(richer.leaf.collateral.0 + 1);
            prop_assert!(!richer.verify(), "a tampered leaf must fail");
            let mut moved = proof.clone();
            moved.account_proof.siblings[3] = optio_state::Fr::from(7u64);
            prop_assert!(!moved.verify(), "a tampered proof must fail");
            if let Some(p) = moved.positions.first_mut() {
                let mut more = proof.clone();
                more.positions[0].1 = Qty(p.1.0 + 1);
                prop_assert!(!more.verify(), "a tampered position must fail");
            }
        }
    }
}

#[test]
fn histories_exercise_every_kind_of_settlement_op() {
    let mut seen = Vec::new();
    let (mut forced_paid, mut closed) = (0, 0);
    for seed in 0..6 {
        let (batches, _, _) = run(&history(seed, 600), 50);
        for b in &batches {
            for op in decode(&b.blob).expect("decodes").1 {
                if matches!(op, Op::L1Withdrawal { amount, .. } if amount.0 > 0) {
                    forced_paid += 1;
                }
                if matches!(op, Op::L1Close { qty, .. } if qty.0 != 0) {
                    closed += 1;
                }
                seen.push(std::mem::discriminant(&op));
            }
        }
    }
    let want = [
        Op::ListInstrument {
            spec: specs()[0].clone(),
        },
        Op::ActivateInstrument {
            instrument: InstrumentId(0),
        },
        Op::ExpireInstrument {
            instrument: InstrumentId(0),
        },
        Op::SettleInstrument {
            instrument: InstrumentId(0),
            price: Price(0),
            insurance_credit: Amount(0),
        },
        Op::SettlePosition {
            account: AccountId(0),
            instrument: InstrumentId(0),
            qty: Qty(-1),
            cash: Amount(0),
        },
        Op::OpenAccount {
            owner: Address([0; 20]),
        },
        Op::Deposit {
            account: AccountId(0),
            amount: Amount(0),
        },
        Op::L1Deposit {
            priority: 0,
            account: AccountId(0),
            amount: Amount(0),
        },
        Op::L1Withdrawal {
            priority: 0,
            account: AccountId(0),
            amount: Amount(0),
            requester: Address([0; 20]),
        },
        Op::L1Close {
            priority: 0,
            backstop: AccountId(0),
            account: AccountId(0),
            instrument: InstrumentId(0),
            qty: Qty(0),
            price: Price(0),
            requester: Address([0; 20]),
        },
        Op::Withdraw {
            account: AccountId(0),
            amount: Amount(0),
            owner: Address([0; 20]),
        },
        Op::Transfer {
            from: AccountId(0),
            to: AccountId(0),
            amount: Amount(0),
        },
        Op::Fill {
            instrument: InstrumentId(0),
            maker: AccountId(0),
            taker: AccountId(0),
            taker_side: Side::Buy,
            price: Price(0),
            qty: Qty(0),
        },
        Op::Liquidation {
            account: AccountId(0),
            counterparty: AccountId(0),
            instrument: InstrumentId(0),
            qty: Qty(0),
            price: Price(0),
            fee: Amount(0),
        },
        Op::SessionKey {
            account: AccountId(0),
            key: Address([0; 20]),
            expiry_ms: 0,
            at_ms: 0,
        },
        Op::Mark {
            instrument: InstrumentId(0),
            mark: Price(0),
            index: Price(60_000_000_000),
            risk: Vec::new(),
            published_ms: 0,
        },
    ];
    for op in want {
        assert!(
            seen.contains(&std::mem::discriminant(&op)),
            "no history produced {op:?}"
        );
    }
    assert!(forced_paid > 0, "no forced withdrawal paid anything");
    assert!(closed > 0, "no forced close moved a position");
}

/// Account 1 long 100 steps of the perpetual at 60,000 with 500 free, crashed to 45,000 (held,
/// then confirmed), and after the auction a fresh mark and the deleveraging of its long.
fn bankrupt_and_deleveraged() -> (Engine, Vec<Input>) {
    let mut engine = Engine::new(EngineLimits::default());
    let mut inputs: Vec<Input> = Vec::new();
    let mut step = |engine: &mut Engine, t: u64, command: Command| {
        let input = Input {
            time_ms: t,
            command,
        };
        let _ = engine.apply(&input, &mut Vec::new());
        inputs.push(input);
    };
    for spec in specs() {
        step(&mut engine, T0, Command::ListInstrument { spec });
    }
    step(
        &mut engine,
        T0,
        Command::ActivateInstrument {
            instrument: InstrumentId(2),
        },
    );
    for a in 0..4u32 {
        step(
            &mut engine,
            T0,
            Command::OpenAccount {
                owner: Address([a as u8 + 1; 20]),
            },
        );
        step(
            &mut engine,
            T0,
            Command::Deposit {
                account: AccountId(a),
                amount: Amount(200_000 * MONEY_SCALE),
            },
        );
    }
    step(&mut engine, T0, oracle(60_000.0, T0));
    step(
        &mut engine,
        T0,
        Command::SetMarginMode {
            account: AccountId(1),
            mode: MarginMode::Standard,
        },
    );
    let order = |account: u32, side, qty: i64| support::limit(account, 2, side, px(60_000), qty);
    // Account 1 first withdraws what leaves it 500 free once long (a withdrawal must leave its
    // positions' stress scenarios covered, which the leveraged long would not): the free
    // collateral after the trade comes from a copy of the engine that trades first.
    let mut probe: Engine =
        Engine::restore(&engine.canonical(), Default::default()).expect("restores");
    for command in [order(2, Side::Sell, 100), order(1, Side::Buy, 100)] {
        let input = Input {
            time_ms: T0,
            command,
        };
        probe.apply(&input, &mut Vec::new()).expect("trades");
    }
    let (_, _, free) = probe.collateral(AccountId(1)).expect("exists");
    step(
        &mut engine,
        T0,
        Command::Withdraw {
            account: AccountId(1),
            amount: Amount(free.0 - 500 * MONEY_SCALE),
        },
    );
    step(&mut engine, T0, order(2, Side::Sell, 100));
    step(&mut engine, T0, order(1, Side::Buy, 100));
    let (_, _, free) = engine.collateral(AccountId(1)).expect("exists");
    assert_eq!(free, Amount(500 * MONEY_SCALE));
    // The crash: held by the circuit breaker, then confirmed.
    step(&mut engine, T0 + 1_000, oracle(45_000.0, T0 + 1_000));
    step(&mut engine, T0 + 2_000, oracle(45_100.0, T0 + 2_000));
    // After the auction, deleverage against the short.
    let later = T0 + 2_000 + 16 * 60_000;
    step(&mut engine, later, oracle(45_100.0, later));
    step(
        &mut engine,
        later,
        Command::Deleverage {
            account: AccountId(1),
            instrument: InstrumentId(2),
        },
    );
    (engine, inputs)
}

/// A leveraged long that a 25% crash makes bankrupt, that no liquidator can carry: it is
/// deleveraged against the shorts and its deficit is covered by insurance, the fee pool and
/// shares of other accounts; the settlement state follows every step.
#[test]
fn a_bankrupt_account_deleveraged_with_its_loss_shared_settles_exactly() {
    let (engine, inputs) = bankrupt_and_deleveraged();
    let (batches, _, _) = run(&inputs, 3);
    let ops: Vec<Op> = batches
        .iter()
        .flat_map(|b| decode(&b.blob).expect("decodes").1)
        .collect();
    assert!(
        ops.iter().any(|o| matches!(o, Op::DeficitCovered { .. })),
        "{ops:?}"
    );
    assert!(
        ops.iter().any(|o| matches!(o, Op::Liquidation { .. })),
        "{ops:?}"
    );
    let mut rebuilt = SettlementState::new();
    rebuild(
        batches.iter().map(|b| b.blob.as_slice()),
        &mut rebuilt,
        |_| {},
    )
    .expect("rebuilds");
    assert_eq!(rebuilt.diff_engine(&engine.canonical()), None);
}

#[test]
fn damaged_or_reordered_blobs_are_refused_and_apply_nothing() {
    let (batches, _, _) = run(&history(7, 300), 20);
    let blob = &batches[1].blob;
    // Every truncation and a flipped byte in every position: an error or a different decode,
    // never a panic; truncations are always errors.
    for cut in 0..blob.len() {
        assert!(decode(&blob[..cut]).is_err(), "a blob cut at {cut} decoded");
    }
    for i in 0..blob.len() {
        let mut bad = blob.clone();
        bad[i] ^= 0x41;
        let _ = decode(&bad);
    }
    let mut trailing = blob.clone();
    trailing.push(0);
    assert_eq!(decode(&trailing).map(|_| ()), Err(BlobError::Trailing(1)));
    let mut version = blob.clone();
    version[4] = blob[4] + 1;
    assert_eq!(
        decode(&version).map(|_| ()),
        Err(BlobError::Version(blob[4] + 1))
    );
    assert_eq!(
        decode(&vec![0u8; (1 << 20) + 1]).map(|_| ()),
        Err(BlobError::Oversized((1 << 20) + 1))
    );

    // Out of order: batch 2 before batch 1.
    let mut state = SettlementState::new();
    let genesis = state.root();
    let err = rebuild([batches[1].blob.as_slice()], &mut state, |_| {}).expect_err("out of order");
    assert!(err.to_string().contains("out of order"), "{err}");
    assert_eq!(state.root(), genesis, "nothing applied");

    // A batch whose ops name an account that does not exist applies nothing.
    let mut state = SettlementState::new();
    rebuild([batches[0].blob.as_slice()], &mut state, |_| {}).expect("batch 1");
    let before = state.root();
    let accounts = state.accounts().len();
    let bogus = optio_state::encode(
        &optio_state::blob::BlobMeta {
            number: 2,
            first_seq: batches[0].header.last_seq + 1,
            last_seq: batches[0].header.last_seq + 2,
            time_ms: T0,
            accounts: state.accounts().len() as u32,
            instruments: state.instruments().len() as u32,
        },
        &[
            Op::Deposit {
                account: AccountId(0),
                amount: Amount(5),
            },
            Op::Deposit {
                account: AccountId(999),
                amount: Amount(5),
            },
        ],
    )
    .expect("encodes");
    let err = rebuild(
        [batches[0].blob.as_slice(), bogus.as_slice()],
        &mut SettlementState::new(),
        |_| {},
    )
    .expect_err("unknown account");
    assert!(err.to_string().contains("unknown account"), "{err}");
    assert!(
        state
            .apply_batch(&decode(&bogus).expect("decodes").1)
            .is_err()
    );
    assert_eq!(
        (state.commit(), state.accounts().len()),
        (before, accounts),
        "a refused batch changes nothing"
    );
}

/// The state persisted in its file after every batch reopens to the same root, proofs and
/// records, and continues exactly as a state that never left memory.
#[test]
fn a_persisted_state_reopens_to_the_same_root_and_continues_like_one_in_memory() {
    let (batches, _, _) = run(&history(11, 400), 15);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("state.redb");
    let mut memory = SettlementState::new();
    let half = batches.len() / 2;
    {
        let (mut stored, number, _) = SettlementState::open(&path).expect("opens");
        assert_eq!(number, 0);
        for b in &batches[..half] {
            let ops = decode(&b.blob).expect("decodes").1;
            stored.apply_batch(&ops).expect("applies");
            memory.apply_batch(&ops).expect("applies");
            assert_eq!(stored.commit(), memory.commit());
            stored
                .persist(b.header.number, b.header.last_seq)
                .expect("persists");
        }
        // Applied and committed but never persisted: lost on reopening, as in a crash.
        let ops = decode(&batches[half].blob).expect("decodes").1;
        stored.apply_batch(&ops).expect("applies");
        stored.commit();
    }
    let (mut stored, number, last_seq) = SettlementState::open(&path).expect("reopens");
    assert_eq!(
        (number, last_seq),
        (half as u64, batches[half - 1].header.last_seq)
    );
    assert_eq!(stored.root(), memory.root());
    for a in 0..memory.accounts().len() as u32 {
        assert_eq!(
            stored.exit_proof(AccountId(a)),
            memory.exit_proof(AccountId(a)),
            "account {a}"
        );
    }
    for b in &batches[half..] {
        let ops = decode(&b.blob).expect("decodes").1;
        stored.apply_batch(&ops).expect("applies");
        memory.apply_batch(&ops).expect("applies");
        assert_eq!(stored.commit(), memory.commit());
        assert_eq!(stored.root(), b.header.new_root);
        stored
            .persist(b.header.number, b.header.last_seq)
            .expect("persists");
    }
}

/// Inputs that change no settlement state (a resting order) still reach a batch: when the node
/// goes idle, `tick` cuts them into a batch without ops once they are `max_age_ms` old, so
/// their intents can be committed on L1.
#[test]
fn an_idle_tail_of_inputs_without_ops_is_cut_into_an_empty_batch() {
    let mut batcher = Batcher::new(100, 1_000);
    let rests = Input {
        time_ms: T0,
        command: Command::CancelAll {
            account: AccountId(0),
            instrument: None,
        },
    };
    assert!(batcher.push(1, &rests, &[]).expect("pushes").is_none());
    assert!(
        batcher.tick(T0 + 999).expect("ticks").is_none(),
        "not old enough"
    );
    let batch = batcher
        .tick(T0 + 1_000)
        .expect("ticks")
        .expect("an empty batch");
    assert_eq!(
        (batch.header.first_seq, batch.header.last_seq),
        (1, 1),
        "it covers the input"
    );
    assert!(decode(&batch.blob).expect("decodes").1.is_empty());
    assert_eq!(
        batch.header.new_root, batch.header.previous_root,
        "nothing changed"
    );
    assert!(
        batcher.tick(T0 + 5_000).expect("ticks").is_none(),
        "nothing left"
    );
}

/// Inputs applied to an engine, one sequence number each, and pushed to a batcher that cuts at
/// 1,000 ops and never by age.
struct Feed {
    batcher: Batcher,
    events: Vec<optio_types::Event>,
    seq: u64,
}

impl Feed {
    fn new() -> Self {
        Feed {
            batcher: Batcher::new(1_000, u64::MAX),
            events: Vec::new(),
            seq: 0,
        }
    }

    /// Applies `command` and pushes it: its sequence number and the batch cut before it, if any.
    fn push(&mut self, engine: &mut Engine, command: Command) -> (u64, Option<optio_state::Batch>) {
        let input = Input {
            time_ms: T0 + 10,
            command,
        };
        self.events.clear();
        engine.apply(&input, &mut self.events).expect("accepted");
        self.seq += 1;
        let cut = self
            .batcher
            .push(self.seq, &input, &self.events)
            .expect("pushes");
        (self.seq, cut)
    }
}

/// A limit order of `account` for `qty` of the perpetual (instrument 2) at `price`.
fn perp_order(account: u32, side: Side, tif: TimeInForce, qty: i64, price: i64) -> Command {
    Command::PlaceOrder(NewOrder {
        account: AccountId(account),
        instrument: InstrumentId(2),
        side,
        qty: Qty(qty),
        order_type: OrderType::Limit { price: px(price) },
        time_in_force: tif,
        post_only: false,
        reduce_only: false,
        self_trade: SelfTradePrevention::CancelTaker,
        client_order_id: 0,
        session_key: None,
    })
}

/// Money leaving an account is proven against the marks committed before its batch: a
/// withdrawal or transfer that follows a mark not yet committed starts a new batch, which the
/// mark's batch precedes; with no mark pending, it joins the batch in progress.
#[test]
fn money_leaving_after_a_pending_mark_starts_a_new_batch() {
    let mut feed = Feed::new();
    let mut push = |engine: &mut Engine, command: Command| feed.push(engine, command).1;
    let mut engine = Engine::new(EngineLimits::default());
    for spec in specs() {
        assert!(push(&mut engine, Command::ListInstrument { spec }).is_none());
    }
    let owner = Address([1; 20]);
    assert!(push(&mut engine, Command::OpenAccount { owner }).is_none());
    assert!(push(&mut engine, Command::OpenAccount { owner }).is_none());
    let deposit = Command::Deposit {
        account: AccountId(0),
        amount: Amount(1_000 * MONEY_SCALE),
    };
    assert!(push(&mut engine, deposit).is_none());
    let withdraw = || Command::Withdraw {
        account: AccountId(0),
        amount: Amount(MONEY_SCALE),
    };
    assert!(
        push(&mut engine, withdraw()).is_none(),
        "no mark pending: the withdrawal joins the batch"
    );
    assert!(push(&mut engine, oracle(60_000.0, T0)).is_none());
    let cut = push(&mut engine, withdraw()).expect("cut before the withdrawal");
    assert_eq!(
        cut.header.last_seq,
        3 + specs().len() as u64 + 2,
        "the withdrawal is not in it"
    );
    let ops = decode(&cut.blob).expect("decodes").1;
    assert!(
        matches!(ops.last(), Some(Op::Mark { .. })),
        "the marks close it"
    );
    let transfer = Command::Transfer {
        from: AccountId(0),
        to: AccountId(1),
        amount: Amount(MONEY_SCALE),
    };
    assert!(
        push(&mut engine, transfer).is_none(),
        "the marks are committed: the transfer joins the new batch"
    );
    assert!(push(&mut engine, oracle(60_100.0, T0 + 5)).is_none());
    assert!(
        push(
            &mut engine,
            Command::Transfer {
                from: AccountId(0),
                to: AccountId(1),
                amount: Amount(MONEY_SCALE),
            }
        )
        .is_some(),
        "a transfer after a pending mark cuts too"
    );
}

/// A liquidation's price is proven against its instrument's marks committed before its batch
/// (`optio_types::stress_range`): the deleveraging that follows a fresh mark of the perpetual
/// starts a new batch, which the mark closes.
#[test]
fn a_liquidation_after_a_pending_mark_of_its_instrument_starts_a_new_batch() {
    let (_, inputs) = bankrupt_and_deleveraged();
    let last = inputs.len() - 1;
    assert!(matches!(inputs[last].command, Command::Deleverage { .. }));
    assert!(matches!(inputs[last - 1].command, Command::OracleUpdate(_)));
    let mut batcher = Batcher::new(1_000, u64::MAX);
    let mut engine = Engine::new(EngineLimits::default());
    let mut cuts = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let mut events = Vec::new();
        let _ = engine.apply(input, &mut events);
        if let Some(b) = batcher.push(i as u64 + 1, input, &events).expect("pushes") {
            cuts.push((i, b));
        }
    }
    let (at, batch) = cuts.last().expect("cuts");
    assert_eq!(*at, last, "cut right before the deleveraging");
    let ops = decode(&batch.blob).expect("decodes").1;
    assert!(
        matches!(ops.last(), Some(Op::Mark { .. })),
        "the marks close it"
    );
    let rest = batcher
        .flush()
        .expect("flushes")
        .expect("the deleveraging's batch");
    let ops = decode(&rest.blob).expect("decodes").1;
    assert!(
        matches!(ops.first(), Some(Op::Liquidation { .. })),
        "{ops:?}"
    );
}

/// An expiry settlement applies only as the engine computes it: each holder's cash is the
/// value at the settlement price times its position, rounded down, and the insurance credit is
/// minus the payouts. Paying a holder one unit more, moving the credit alone, or settling a
/// position the account does not hold is refused whole.
#[test]
fn a_settlement_pays_exactly_the_committed_value() {
    let (batches, at) = (0..6)
        .find_map(|seed| {
            let (batches, _, _) = run(&history(seed, 600), 50);
            let at = batches.iter().position(|b| {
                decode(&b.blob)
                    .expect("decodes")
                    .1
                    .iter()
                    .any(|op| matches!(op, Op::SettlePosition { .. }))
            })?;
            Some((batches, at))
        })
        .expect("a history settles a position");
    let mut state = SettlementState::new();
    rebuild(
        batches[..at].iter().map(|b| b.blob.as_slice()),
        &mut state,
        |_| {},
    )
    .expect("rebuilds");
    let ops = decode(&batches[at].blob).expect("decodes").1;
    let settle = ops
        .iter()
        .position(|op| matches!(op, Op::SettlePosition { .. }))
        .expect("found");
    let credit = (settle..ops.len())
        .find(|&i| matches!(ops[i], Op::SettleInstrument { .. }))
        .expect("the instrument settles after its positions");
    let before = state.root();

    let mut richer = ops.clone();
    if let Op::SettlePosition { cash, .. } = &mut richer[settle] {
        cash.0 += 1;
    }
    if let Op::SettleInstrument {
        insurance_credit, ..
    } = &mut richer[credit]
    {
        insurance_credit.0 -= 1;
    }
    let mut only_credit = ops.clone();
    if let Op::SettleInstrument {
        insurance_credit, ..
    } = &mut only_credit[credit]
    {
        insurance_credit.0 += 1;
    }
    let mut not_held = ops.clone();
    if let Op::SettlePosition { account, .. } = &mut not_held[settle] {
        *account = (0..state.accounts().len() as u32)
            .map(AccountId)
            .find(|a| state.accounts()[a.0 as usize].positions.is_empty())
            .expect("an account without positions");
    }
    let mut dangling = ops.clone();
    dangling.truncate(credit);
    for (bad, want) in [
        (richer, settle),
        (only_credit, credit),
        (not_held, settle),
        (dangling, settle),
    ] {
        assert_eq!(
            state.apply_batch(&bad),
            Err(optio_state::StateError::Settlement(want))
        );
        assert_eq!(state.root(), before, "a refused batch changes nothing");
    }
    state
        .apply_batch(&ops)
        .expect("the engine's settlement applies");
}

/// The circuit leaves a micro-USDC in an account for each position it held at its batch's
/// start (`optio_types::forced_withdrawal`), where the engine counts them at the op: a forced
/// withdrawal from an account that traded earlier in the pending batch starts a new one (its
/// position then counts from the start); one from an account that did not joins the batch,
/// and a flat one takes all of it.
#[test]
fn a_forced_withdrawal_after_its_account_traded_starts_a_new_batch() {
    let mut feed = Feed::new();
    let mut push = |engine: &mut Engine, command: Command| feed.push(engine, command);
    let mut engine = Engine::new(EngineLimits::default());
    for spec in specs() {
        push(&mut engine, Command::ListInstrument { spec });
    }
    push(
        &mut engine,
        Command::ActivateInstrument {
            instrument: InstrumentId(2),
        },
    );
    let owners = [Address([1; 20]), Address([2; 20]), Address([3; 20])];
    for (k, owner) in owners.into_iter().enumerate() {
        push(&mut engine, Command::OpenAccount { owner });
        push(
            &mut engine,
            Command::Deposit {
                account: AccountId(k as u32),
                amount: Amount(100_000 * MONEY_SCALE),
            },
        );
    }
    push(&mut engine, oracle(60_000.0, T0));
    // The marks are committed before the trade (money out waits for pending marks anyway).
    let (_, cut) = push(
        &mut engine,
        Command::Withdraw {
            account: AccountId(0),
            amount: Amount(1),
        },
    );
    assert!(cut.is_some(), "the marks' batch is cut before money moves");
    let order = |account, side, tif| perp_order(account, side, tif, STEP, 60_000);
    push(
        &mut engine,
        order(0, Side::Sell, TimeInForce::GoodTillCancelled),
    );
    push(
        &mut engine,
        order(1, Side::Buy, TimeInForce::ImmediateOrCancel),
    );
    let forced = |priority, account: u32| Command::L1Withdrawal {
        priority,
        owner: owners[account as usize],
        account: AccountId(account),
    };
    // Account 2 did not trade: its forced withdrawal joins the batch.
    let (_, cut) = push(&mut engine, forced(0, 2));
    assert!(cut.is_none(), "an untouched flat account joins the batch");
    let (seq_1, cut) = push(&mut engine, forced(1, 1));
    let cut = cut.expect("account 1 traded in the pending batch");
    assert_eq!(
        cut.header.last_seq,
        seq_1 - 1,
        "the withdrawal is not in it"
    );
    let ops = decode(&cut.blob).expect("decodes").1;
    assert!(ops.contains(&Op::L1Withdrawal {
        priority: 0,
        account: AccountId(2),
        amount: Amount(100_000 * MONEY_SCALE),
        requester: owners[2],
    }));
    assert!(ops.iter().any(|o| matches!(o, Op::Fill { .. })));
    let last = feed.batcher.flush().expect("cuts").expect("one pending");
    let ops = decode(&last.blob).expect("decodes").1;
    assert!(
        matches!(ops.as_slice(), [Op::L1Withdrawal { account, amount, .. }] if account.0 == 1 && amount.0 > 0),
        "{ops:?}"
    );
}

/// A fill is proven to leave its accounts with equity of at least zero at the marks committed
/// before its batch, while the engine margins it at its latest marks: a fill sound only at marks
/// still pending starts a new batch, which the marks close. Without that cut, the batch with the
/// fill would not apply (`StateError::Insolvent`).
#[test]
fn a_fill_solvent_only_at_pending_marks_starts_a_new_batch() {
    let mut feed = Feed::new();
    let mut push = |engine: &mut Engine, command: Command| feed.push(engine, command);
    let mut engine = Engine::new(EngineLimits::default());
    for spec in specs() {
        push(&mut engine, Command::ListInstrument { spec });
    }
    let perp = InstrumentId(2);
    push(
        &mut engine,
        Command::ActivateInstrument { instrument: perp },
    );
    for (k, cash) in [7_000, 100_000].into_iter().enumerate() {
        push(
            &mut engine,
            Command::OpenAccount {
                owner: Address([k as u8 + 1; 20]),
            },
        );
        push(
            &mut engine,
            Command::Deposit {
                account: AccountId(k as u32),
                amount: Amount(cash * MONEY_SCALE),
            },
        );
    }
    push(
        &mut engine,
        Command::SetMarginMode {
            account: AccountId(0),
            mode: MarginMode::Standard,
        },
    );
    push(&mut engine, oracle(60_000.0, T0));
    let (_, cut) = push(
        &mut engine,
        Command::Withdraw {
            account: AccountId(1),
            amount: Amount(1),
        },
    );
    assert!(cut.is_some(), "the marks at 60,000 are committed");
    // The index falls to 50,500 in two steps (each inside the circuit breaker); the marks wait
    // in the batcher.
    push(&mut engine, oracle(55_000.0, T0 + 1));
    push(&mut engine, oracle(50_500.0, T0 + 2));
    let order = |account, side, tif| perp_order(account, side, tif, QTY_SCALE, 50_500);
    let (_, cut) = push(
        &mut engine,
        order(1, Side::Buy, TimeInForce::GoodTillCancelled),
    );
    assert!(cut.is_none(), "a resting order changes no settlement state");
    // Account 0 sells one perpetual at 50,500 with 7,000 of collateral: margined at the
    // engine's mark (about 50,500), but at the committed one (60,000) its equity is about
    // 7,000 + 50,500 - 60,000 < 0.
    let (seq, cut) = push(
        &mut engine,
        order(0, Side::Sell, TimeInForce::ImmediateOrCancel),
    );
    let cut = cut.expect("cut before the fill");
    assert_eq!(cut.header.last_seq, seq - 1, "the fill is not in it");
    let ops = decode(&cut.blob).expect("decodes").1;
    assert!(!ops.iter().any(|o| matches!(o, Op::Fill { .. })));
    assert!(
        matches!(ops.last(), Some(Op::Mark { .. })),
        "the marks close it"
    );
    let fill = feed.batcher.flush().expect("the fill's batch applies");
    let ops = decode(&fill.expect("pending").blob).expect("decodes").1;
    assert!(
        matches!(ops.as_slice(), [Op::Fill { maker, taker, .. }] if maker.0 == 1 && taker.0 == 0)
    );
    let equity = feed.batcher.state().equity(AccountId(0)).expect("known");
    assert!(equity >= 0, "{equity}");
}

/// The circuit applies a batch's expiries and settlements after its op slots, where the engine
/// ran them at their input: an op-slot op of a later input (a deposit here) starts the next
/// batch, so that no op is judged before an expiry or a settlement that came before it (found
/// by the simulator: an auction's end, cured by its shorts' settlement, judged with the shorts
/// still held). Within one input the engine's order is kept; a mark takes no op slot and joins.
#[test]
fn an_op_after_a_pending_expiry_starts_a_new_batch() {
    let mut engine = Engine::new(EngineLimits::default());
    let mut batcher = Batcher::new(1_000, u64::MAX);
    let mut seq = 0;
    let mut push = |engine: &mut Engine, time_ms: u64, command: Command| {
        let input = Input { time_ms, command };
        let mut events = Vec::new();
        engine.apply(&input, &mut events).expect("accepted");
        seq += 1;
        let cut = batcher.push(seq, &input, &events).expect("pushes");
        (events, cut)
    };
    for spec in specs() {
        assert!(
            push(&mut engine, T0, Command::ListInstrument { spec })
                .1
                .is_none()
        );
    }
    let open = Command::OpenAccount {
        owner: Address([1; 20]),
    };
    assert!(push(&mut engine, T0, open).1.is_none());
    let deposit = || Command::Deposit {
        account: AccountId(0),
        amount: Amount(MONEY_SCALE),
    };
    assert!(push(&mut engine, T0, deposit()).1.is_none());
    // Past the put's expiry (08:00 UTC, an hour after T0): the input expires it first.
    let expiry = T0 + 3_600_000;
    let (events, cut) = push(&mut engine, expiry, deposit());
    assert!(
        events
            .iter()
            .any(|e| matches!(e, optio_types::Event::InstrumentExpired { .. })),
        "{events:?}"
    );
    assert!(cut.is_none(), "its own deposit stays with it");
    let (_, cut) = push(&mut engine, expiry + 1, deposit());
    let cut = cut.expect("the deposit after the expiry starts the next batch");
    // The listings, the opening, the first deposit and the expiring input.
    assert_eq!(cut.header.last_seq, specs().len() as u64 + 3);
    let ops = decode(&cut.blob).expect("decodes").1;
    assert!(
        matches!(ops.last(), Some(Op::ExpireInstrument { .. })),
        "{ops:?}"
    );
    let mut state = SettlementState::new();
    rebuild([cut.blob.as_slice()], &mut state, |_| {}).expect("rebuilds");
}
