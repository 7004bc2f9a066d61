//! The batcher posts beside each fill the signed orders of its maker and taker: over random
//! engine histories in which some orders come with a signature and some without (the
//! operator's), every batch's authorization section has, for each fill in the posted order, the
//! record of exactly the order that filled (an all-zero record for an unsigned one); and a
//! batcher restarted from its persisted state and signed orders (as after a crash) cuts the same
//! batches, sections included, as one that never stopped. Every mark a batch posts comes with
//! the oracle's signature of it, published within the window before the batch's time that L1
//! allows.

use optio_engine::Engine;
use optio_state::auth::{self, Authorization, Orders, Signed};
use optio_state::{Batch, Batcher, SettlementState, decode};
use optio_types::{Address, Command, EngineLimits, Event, Input};

mod support;

use support::{ORACLE_KEY, T0, history, venue};

/// Two inputs in three signed, with fields derived from their sequence numbers.
fn signature(seq: u64) -> Option<Signed> {
    (!seq.is_multiple_of(3)).then(|| Signed {
        nonce: seq,
        expiry_s: 2_000_000_000 + seq,
        signer: Address([(seq % 251) as u8; 20]),
        domain: (seq % 3) as u8,
        max_fee: seq as i64 * 10,
        signature: [(seq % 256) as u8; 65],
    })
}

/// Each input with its events and what it signed. One order in three replaces one of its
/// account's open orders, if it has any.
fn sequence(seed: u64) -> Vec<(Input, Vec<Event>, Option<Signed>)> {
    let mut engine = Engine::new(EngineLimits::default());
    history(seed, 500)
        .into_iter()
        .enumerate()
        .map(|(i, mut input)| {
            if i % 3 == 0
                && let Command::PlaceOrder(order) = &input.command
                && let Some(open) = engine.open_orders_of(order.account).first()
            {
                input.command = Command::Replace {
                    cancel: optio_types::OrderRef::Id(open.id),
                    order: order.clone(),
                };
            }
            let mut events = Vec::new();
            let _ = engine.apply(&input, &mut events);
            (input, events, signature(i as u64 + 1))
        })
        .collect()
}

fn feed(
    batcher: &mut Batcher,
    inputs: &[(Input, Vec<Event>, Option<Signed>)],
    from: u64,
    mut each: impl FnMut(&mut Batcher, Batch),
) {
    for (i, (input, events, signed)) in inputs.iter().enumerate() {
        let seq = i as u64 + 1;
        if seq < from {
            continue;
        }
        if let Some(b) = batcher
            .push_signed(seq, input, signed.as_ref(), events)
            .expect("batches")
        {
            each(batcher, b);
        }
    }
}

#[test]
fn every_fill_posts_the_records_of_the_orders_that_filled() {
    let mut sides_checked = 0;
    let mut replaced_sides = 0;
    let mut shared = 0;
    let mut unsigned = 0;
    for seed in 0..4 {
        let inputs = sequence(seed);
        // The record each order id was placed with, from the events independently of the
        // batcher.
        let mut placed: std::collections::BTreeMap<u64, Option<Authorization>> = Default::default();
        let mut replaced = std::collections::BTreeSet::new();
        let mut expected = Vec::new();
        for (input, events, signed) in &inputs {
            for e in events {
                match e {
                    Event::OrderAccepted { order, .. } => {
                        let o = input
                            .command
                            .placed_order()
                            .expect("an order accepted from an order or a replace");
                        placed.insert(order.0, signed.and_then(|s| s.record(o)));
                        if matches!(input.command, Command::Replace { .. }) {
                            replaced.insert(order.0);
                        }
                    }
                    Event::Fill {
                        maker_order,
                        taker_order,
                        ..
                    } => {
                        expected.push(placed[&maker_order.0]);
                        expected.push(placed[&taker_order.0]);
                        replaced_sides += usize::from(replaced.contains(&maker_order.0))
                            + usize::from(replaced.contains(&taker_order.0));
                    }
                    _ => {}
                }
            }
        }
        let mut batcher = Batcher::new(40, u64::MAX);
        let mut posted = Vec::new();
        feed(&mut batcher, &inputs, 1, |_, b| posted.push(b));
        posted.extend(batcher.flush().expect("flushes"));
        let mut got = Vec::new();
        for b in &posted {
            let (_, ops) = decode(&b.blob).expect("decodes");
            let sides = auth::fill_sides(ops.iter());
            // Each distinct record once, then an index per fill side.
            let records =
                u32::from_be_bytes(b.authorizations[..4].try_into().expect("a count")) as usize;
            let prices = ops.iter().filter(|op| auth::is_priced(op)).count();
            let changes = ops.iter().filter(|op| auth::is_change(op)).count();
            assert_eq!(
                b.authorizations.len(),
                4 + records * auth::RECORD_BYTES
                    + 4 * sides.len()
                    + changes * auth::CHANGE_BYTES
                    + 4
                    + prices * auth::MARK_BYTES
                    + 4,
                "batch {}: the records, one index per fill side, the changes' signatures, then \
                 the prices' attestations",
                b.header.number
            );
            let end = b.authorizations.len() - 4 - prices * auth::MARK_BYTES;
            assert_eq!(
                u32::from_be_bytes(b.authorizations[end - 4..end].try_into().expect("4 bytes")),
                changes as u32,
                "the changes' count"
            );
            let first = got.len();
            got.extend((0..sides.len()).map(|i| auth::record(&b.authorizations, i)));
            let distinct: std::collections::BTreeSet<_> =
                got[first..].iter().flatten().map(|r| r.encode()).collect();
            assert_eq!(records, distinct.len(), "batch {}", b.header.number);
            shared += got[first..].iter().flatten().count() - distinct.len();
        }
        assert_eq!(got.len(), expected.len(), "seed {seed}");
        assert_eq!(got, expected, "seed {seed}");
        sides_checked += got.len();
        unsigned += got.iter().filter(|r| r.is_none()).count();
    }
    assert!(sides_checked > 100, "{sides_checked} fill sides");
    assert!(
        replaced_sides > 10,
        "{replaced_sides} fill sides of replacing orders"
    );
    assert!(shared > 0, "no record was posted once for several sides");
    assert!(
        unsigned > 0 && unsigned < sides_checked,
        "{unsigned} unsigned of {sides_checked}"
    );
}

/// A file-backed batcher at `path` fed `inputs`, persisting after each batch, that "crashes"
/// after `stop` batches (those it returns), having written a checkpoint of the last into
/// `checkpoint` if given.
fn crash_after(
    inputs: &[(Input, Vec<Event>, Option<Signed>)],
    path: &std::path::Path,
    stop: usize,
    checkpoint: Option<&std::path::Path>,
) -> Vec<Batch> {
    let mut first = Vec::new();
    let (state, _, _) = SettlementState::open(path).expect("opens");
    let mut batcher = Batcher::resume(state, 0, 0, 12, u64::MAX);
    feed(&mut batcher, inputs, 1, |batcher, b| {
        if first.len() < stop {
            batcher.persist(&b.header).expect("persists");
            if let Some(dir) = checkpoint.filter(|_| first.len() + 1 == stop) {
                optio_state::checkpoint::write(
                    dir,
                    batcher.state(),
                    b.header.number,
                    b.header.last_seq,
                )
                .expect("checkpoint");
            }
            first.push(b);
        }
    });
    first
}

#[test]
fn a_restarted_batcher_keeps_the_resting_orders_signatures() {
    let inputs = sequence(7);
    let mut reference = Batcher::new(12, u64::MAX);
    let mut all = Vec::new();
    feed(&mut reference, &inputs, 1, |_, b| all.push(b));
    assert!(all.len() >= 6, "{} batches", all.len());
    assert!(all.iter().any(|b| !b.authorizations.is_empty()));

    // A file-backed batcher persists after each batch and "crashes" after a third of them.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("state.redb");
    let stop = all.len() / 3;
    let mut first = crash_after(&inputs, &path, stop, None);
    let (state, number, last_seq) = SettlementState::open(&path).expect("reopens");
    assert_eq!(number, stop as u64);
    let orders = Orders::from_stored(state.stored_orders().expect("reads"));
    assert!(
        !orders.is_empty(),
        "signed orders still resting at the crash"
    );
    let mut batcher = Batcher::resume(state, number, last_seq, 12, u64::MAX).with_orders(orders);
    let mut rest = Vec::new();
    feed(&mut batcher, &inputs, last_seq + 1, |_, b| rest.push(b));
    first.extend(rest);
    assert_eq!(first.len(), all.len());
    for (a, b) in first.iter().zip(&all) {
        assert_eq!(a.header, b.header, "batch {}", b.header.number);
        assert_eq!(
            a.authorizations, b.authorizations,
            "batch {}'s section",
            b.header.number
        );
    }
}

/// A batcher whose state file is lost goes on from the checkpoint written after its last
/// persisted batch (`checkpoint::restore`): the signed orders still resting there and the
/// settlement prices' signatures it kept come back with the state, so every later batch posts
/// the same section as an uninterrupted batcher's. The checkpoint refuses an existing file and
/// a damaged or format-1 checkpoint, creating nothing.
#[test]
fn a_lost_state_file_is_made_again_from_its_checkpoint_with_the_resting_orders() {
    let (mut restored_orders, mut restored_prices) = (0, 0);
    for seed in [7, 11] {
        let inputs = sequence(seed);
        let mut reference = Batcher::new(12, u64::MAX);
        let mut all = Vec::new();
        feed(&mut reference, &inputs, 1, |_, b| all.push(b));
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.redb");
        let stop = all.len() / 2;
        let mut first = crash_after(&inputs, &path, stop, Some(dir.path()));
        let (kept, _, _) = SettlementState::open(&path).expect("reopens");
        let orders_then = kept.stored_orders().expect("reads");
        drop(kept);
        std::fs::remove_file(&path).expect("lost");
        let checkpoint = optio_state::checkpoint::path(dir.path(), stop as u64);
        let good = std::fs::read(&checkpoint).expect("reads");

        // Refused, nothing created: damaged, another batch's, a file already there.
        let mut damaged = good.clone();
        damaged[40] ^= 1;
        std::fs::write(&checkpoint, &damaged).expect("writes");
        let Err(err) = optio_state::checkpoint::restore(dir.path(), stop as u64, &path) else {
            panic!("refused")
        };
        assert!(err.to_string().contains("checksum"), "{err}");
        assert!(!path.exists());
        std::fs::write(&checkpoint, &good).expect("writes");
        std::fs::copy(&checkpoint, optio_state::checkpoint::path(dir.path(), 1)).expect("copies");
        let Err(err) = optio_state::checkpoint::restore(dir.path(), 1, &path) else {
            panic!("refused")
        };
        assert!(err.to_string().contains("another batch's"), "{err}");
        assert!(!path.exists());
        std::fs::write(&path, b"").expect("writes");
        assert!(optio_state::checkpoint::restore(dir.path(), stop as u64, &path).is_err());
        std::fs::remove_file(&path).expect("removes");

        let (state, last_seq) =
            optio_state::checkpoint::restore(dir.path(), stop as u64, &path).expect("restores");
        assert_eq!(
            state.stored_orders().expect("reads"),
            orders_then,
            "seed {seed}"
        );
        restored_orders += orders_then.len();
        drop(state);
        let (state, number, reopened_seq) = SettlementState::open(&path).expect("reopens");
        assert_eq!((number, reopened_seq), (stop as u64, last_seq));
        assert_eq!(
            state.root(),
            first.last().map(|b| b.header.new_root).expect("a batch")
        );
        restored_prices += usize::from(
            state
                .stored_meta("settlement_prices")
                .expect("reads")
                .is_some(),
        );
        let orders = Orders::from_stored(state.stored_orders().expect("reads"));
        let mut batcher =
            Batcher::resume(state, number, last_seq, 12, u64::MAX).with_orders(orders);
        let mut rest = Vec::new();
        feed(&mut batcher, &inputs, last_seq + 1, |_, b| rest.push(b));
        first.extend(rest);
        assert_eq!(first.len(), all.len(), "seed {seed}");
        for (a, b) in first.iter().zip(&all) {
            assert_eq!(a.header, b.header, "seed {seed} batch {}", b.header.number);
            assert_eq!(
                a.authorizations, b.authorizations,
                "seed {seed} batch {}'s section",
                b.header.number
            );
        }
    }
    assert!(
        restored_orders > 0,
        "no signed order rested at a checkpoint"
    );
    eprintln!("{restored_orders} resting orders, {restored_prices} kept price sets restored");
}

/// The oracle's address.
fn oracle() -> Address {
    let key = optio_oracle::OracleSigner::from_bytes(ORACLE_KEY).expect("oracle key");
    Address(optio_intents::address_of(&key.public_key()))
}

/// Over random histories (oracle updates about every second of engine time, with jumps of 20 s
/// and of over a minute, and the put's expiry settled at the oracle's price), each batch posts,
/// for each of its priced ops in order (settlement prices, then marks), an attestation that the
/// L1 contract's rule accepts: the oracle's signature of that price, published no later than
/// the batch's time, a mark within `MARK_WINDOW_MS` before it.
/// The priced ops of batch `b` (settlement prices, then marks, in the posted words' order),
/// each with its attestation from the batch's section, checked: signed by the oracle over that
/// op within the batch's time window (`what` names the run in a failure). Also the batch's time.
fn attested_prices(b: &Batch, what: &str) -> (u64, Vec<(optio_state::Op, auth::PriceAttestation)>) {
    let (meta, ops) = decode(&b.blob).expect("decodes");
    let priced: Vec<_> = ops
        .into_iter()
        .filter(auth::is_priced)
        .enumerate()
        .map(|(k, op)| {
            let a = auth::price_attestation(&b.authorizations, k).expect("an attestation");
            assert_eq!(
                a.check(&op, meta.time_ms, oracle(), &venue()),
                Ok(()),
                "{what} batch {} price {k}: {op:?}",
                b.header.number
            );
            (op, a)
        })
        .collect();
    (meta.time_ms, priced)
}

#[test]
fn every_price_posts_the_oracles_signature_within_the_window() {
    let (mut marks, mut settlements, mut batches) = (0, 0, 0);
    for seed in 0..4 {
        let inputs = sequence(seed);
        let mut batcher = Batcher::new(40, u64::MAX);
        let mut posted = Vec::new();
        feed(&mut batcher, &inputs, 1, |_, b| posted.push(b));
        posted.extend(batcher.flush().expect("flushes"));
        for b in &posted {
            let (time_ms, priced) = attested_prices(b, &format!("seed {seed}"));
            let ops: Vec<_> = priced.iter().map(|(op, _)| op).collect();
            for (op, a) in &priced {
                // Another op of the batch at this place is not attested by it.
                if let Some(other) = ops.iter().find(|o| **o != op) {
                    assert!(a.check(other, time_ms, oracle(), &venue()).is_err());
                }
            }
            assert_eq!(auth::price_attestation(&b.authorizations, ops.len()), None);
            let settling = ops
                .iter()
                .filter(|op| matches!(op, optio_state::Op::SettleInstrument { .. }))
                .count();
            assert!(
                ops[..settling]
                    .iter()
                    .all(|op| matches!(op, optio_state::Op::SettleInstrument { .. })),
                "settlement prices come first"
            );
            settlements += settling;
            marks += ops.len() - settling;
            batches += usize::from(!ops.is_empty());
        }
    }
    assert!(
        marks > 100 && batches > 20 && settlements > 0,
        "{marks} marks and {settlements} settlement prices in {batches} batches"
    );
}

/// A batch holding a mark is cut before an input more than `MARK_WINDOW_MS` after the mark's
/// publication (its time would put the mark outside the window), and not before one at the
/// window's end.
#[test]
fn a_batch_is_cut_before_its_mark_would_leave_the_window() {
    let mut engine = Engine::new(EngineLimits::default());
    let mut batcher = Batcher::new(1_000, u64::MAX);
    let mut seq = 0;
    let mut push = |time_ms: u64, command: Command| {
        let input = Input { time_ms, command };
        let mut events = Vec::new();
        let _ = engine.apply(&input, &mut events);
        seq += 1;
        batcher.push(seq, &input, &events).expect("batches")
    };
    // The market, its accounts and the oracle's first update, all at T0.
    for input in history(7, 0) {
        assert!(push(input.time_ms, input.command).is_none());
    }
    let deposit = || Command::Deposit {
        account: optio_types::AccountId(0),
        amount: optio_types::Amount(1),
    };
    let window = auth::MARK_WINDOW_MS;
    assert!(
        push(T0 + window, deposit()).is_none(),
        "at the window's end"
    );
    let b = push(T0 + window + 1, deposit()).expect("cut before the input past it");
    let (meta, ops) = decode(&b.blob).expect("decodes");
    assert_eq!(meta.time_ms, T0 + window);
    let mark = ops
        .iter()
        .find(|op| matches!(op, optio_state::Op::Mark { .. }))
        .expect("the batch's marks");
    let a = auth::price_attestation(&b.authorizations, 0).expect("attested");
    assert_eq!(
        (
            a.published_ms,
            a.check(mark, meta.time_ms, oracle(), &venue())
        ),
        (T0, Ok(()))
    );
}

/// A batcher resumed after a batch cut at time `t` never dates a batch before `t`, even when the
/// inputs after the restart carry earlier times (the engine refuses such an input, but it is
/// sequenced and batched): L1 refuses a batch dated before the last one.
#[test]
fn a_resumed_batcher_never_dates_a_batch_before_the_last_one() {
    let mut engine = Engine::new(EngineLimits::default());
    let later = T0 + 10_000;
    let mut batcher = Batcher::new(1_000, u64::MAX).after_time(later);
    for (i, input) in history(3, 0).into_iter().enumerate() {
        let mut events = Vec::new();
        let _ = engine.apply(&input, &mut events);
        assert!(input.time_ms < later);
        batcher
            .push(i as u64 + 1, &input, &events)
            .expect("batches");
    }
    let b = batcher.flush().expect("cuts").expect("a batch");
    assert_eq!(decode(&b.blob).expect("decodes").0.time_ms, later);
}

/// A settled instrument's mark is its settlement value for good (the state refuses a later
/// mark), while the oracle goes on marking it. The batcher keeps those marks out of the batch:
/// the settling update's own mark of the instrument, and one still pending from an update
/// before the settlement (the circuit applies a batch's marks after its settlements). Its
/// state then agrees with the engine's, every other mark posted.
#[test]
fn a_settled_instruments_marks_stay_out_of_the_batch() {
    let mut engine = Engine::new(EngineLimits::default());
    let mut batcher = Batcher::new(1_000, u64::MAX);
    let mut posted = Vec::new();
    let mut seq = 0;
    let mut push = |time_ms: u64, command: Command, posted: &mut Vec<Batch>| {
        let input = Input { time_ms, command };
        let mut events = Vec::new();
        let _ = engine.apply(&input, &mut events);
        seq += 1;
        posted.extend(batcher.push(seq, &input, &events).expect("batches"));
        (events, engine.canonical())
    };
    for input in history(7, 0) {
        push(input.time_ms, input.command, &mut posted);
    }
    // The put (instrument 1) expires an hour after T0; the feed records an index sample in
    // its window, then settles it.
    let put = optio_types::InstrumentId(1);
    let expiry = T0 + 3_600_000;
    let mut feed = optio_oracle::SettlementFeed::new(30 * 60_000);
    let spot = 58_000.0;
    push(
        expiry - 600_000,
        support::oracle_settling(&mut feed, spot, expiry - 600_000),
        &mut posted,
    );
    // Marks only (the put expired, not settled), 30 s before the settlement.
    push(
        expiry + 30_000,
        support::oracle(spot, expiry + 30_000),
        &mut posted,
    );
    let (events, canonical) = push(
        expiry + 60_000,
        support::oracle_settling(&mut feed, spot, expiry + 60_000),
        &mut posted,
    );
    assert!(
        events.iter().any(
            |e| matches!(e, Event::InstrumentSettled { instrument, .. } if instrument.0 == put.0)
        ),
        "the put settles: {events:?}"
    );
    posted.extend(batcher.flush().expect("the batch applies"));
    let last = posted.last().expect("a batch");
    let ops = decode(&last.blob).expect("decodes").1;
    let marked: Vec<u32> = ops
        .iter()
        .filter_map(|op| match op {
            optio_state::Op::Mark { instrument, .. } => Some(instrument.0),
            _ => None,
        })
        .collect();
    assert!(
        ops.iter()
            .any(|op| matches!(op, optio_state::Op::SettleInstrument { instrument, .. } if *instrument == put)),
        "the settlement is in the last batch"
    );
    assert_eq!(marked, vec![0, 2, 3], "every mark but the settled put's");
    let state = batcher.state();
    let settled = &state.instruments()[1];
    assert_eq!(
        settled.mark,
        settled
            .spec
            .settled_mark(settled.settlement_price)
            .expect("fits"),
    );
    assert!(settled.risk.is_empty());
    assert_eq!(state.diff_engine(&canonical), None);
}

/// An expiry with more holders than a batch holds settles in parts, one at each later oracle
/// update, while the oracle publishes a settlement price only until an update carrying it is
/// taken. Every part's batch still posts the price's signature (that update's), also after a
/// restart between the parts and after an update the engine refused that carried another
/// price: before, a later part posted none, and anyone could have
/// reverted the honest batch and slashed the operator with a price challenge.
#[test]
fn every_part_of_a_settlement_posts_the_prices_signature() {
    use optio_types::{Price, SettleBudget, Side};
    let limits = EngineLimits {
        settle_budget: SettleBudget {
            expiries: u32::MAX,
            slots: 1,
            holders: 2,
        },
        ..EngineLimits::default()
    };
    let mut engine = Engine::new(limits);
    let mut inputs: Vec<Input> = history(7, 0);
    // The put (instrument 1, expiring an hour after T0): account 4 writes three, accounts 5 to
    // 7 buy one each: four holders, two a part.
    let order = |account: u32, side: Side| {
        let steps = if side == Side::Sell { 3 } else { 1 };
        support::limit(
            account,
            1,
            side,
            Price(3_000 * optio_types::MONEY_SCALE),
            steps,
        )
    };
    let at = |time_ms, command| Input { time_ms, command };
    inputs.push(at(T0 + 1_000, order(4, Side::Sell)));
    for buyer in 5..8 {
        inputs.push(at(T0 + 1_000, order(buyer, Side::Buy)));
    }
    let expiry = T0 + 3_600_000;
    let mut feed = optio_oracle::SettlementFeed::new(30 * 60_000);
    let spot = 58_000.0;
    inputs.push(at(
        expiry - 600_000,
        support::oracle_settling(&mut feed, spot, expiry - 600_000),
    ));
    let settling = inputs.len();
    inputs.push(at(
        expiry + 60_000,
        support::oracle_settling(&mut feed, spot, expiry + 60_000),
    ));
    // An update the engine refuses (published 30 s before its input, past the oracle's allowed
    // delay) that carries another price for the put, signed by the oracle: it gives nothing.
    let mut other = optio_oracle::SettlementFeed::new(30 * 60_000);
    let _ = support::oracle_settling(&mut other, 50_000.0, expiry - 600_000);
    inputs.push(at(
        expiry + 91_000,
        support::oracle_settling(&mut other, 50_000.0, expiry + 61_000),
    ));
    // Later updates without the price (a fresh feed has no index in the put's window).
    for k in 46..51 {
        let t = expiry + 2_000 * k;
        inputs.push(at(t, support::oracle(spot, t)));
    }
    let events: Vec<Vec<Event>> = inputs
        .iter()
        .map(|input| {
            let mut events = Vec::new();
            let _ = engine.apply(input, &mut events);
            events
        })
        .collect();
    let refused = settling + 1;
    assert!(
        events[refused]
            .iter()
            .any(|e| matches!(e, Event::Rejected { .. }))
            && matches!(&inputs[refused].command, Command::OracleUpdate(u) if !u.settlements.is_empty()),
        "the refused update carries a settlement price"
    );
    let sequence: Vec<(Input, Vec<Event>, Option<Signed>)> = inputs
        .into_iter()
        .zip(events)
        .map(|(input, events)| (input, events, None))
        .collect();
    // A file-backed batcher cuts a batch after each oracle update from the settling one on,
    // and restarts after the settling one's.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("state.redb");
    let mut posted = Vec::new();
    let run = |batcher: &mut Batcher, range: std::ops::Range<usize>, posted: &mut Vec<Batch>| {
        for i in range {
            let (input, events, signed) = &sequence[i];
            let seq = i as u64 + 1;
            posted.extend(
                batcher
                    .push_signed(seq, input, signed.as_ref(), events)
                    .expect("batches"),
            );
            if i >= settling
                && let Some(b) = batcher.flush().expect("flushes")
            {
                batcher.persist(&b.header).expect("persists");
                posted.push(b);
            }
        }
    };
    {
        let (state, _, _) = SettlementState::open(&path).expect("opens");
        let mut batcher = Batcher::resume(state, 0, 0, 1_000, u64::MAX);
        run(&mut batcher, 0..settling + 1, &mut posted);
    }
    let (state, number, last_seq) = SettlementState::open(&path).expect("reopens");
    assert_eq!(last_seq, settling as u64 + 1);
    let mut batcher = Batcher::resume(state, number, last_seq, 1_000, u64::MAX);
    run(&mut batcher, settling + 1..sequence.len(), &mut posted);
    posted.extend(batcher.flush().expect("flushes"));
    let mut parts = 0;
    for b in &posted {
        let (_, priced) = attested_prices(b, "the settlement in parts:");
        parts += priced
            .iter()
            .filter(|(op, _)| matches!(op, optio_state::Op::SettleInstrument { instrument, .. } if instrument.0 == 1))
            .count();
    }
    assert!(parts >= 2, "the put settled in {parts} parts");
    assert_eq!(batcher.state().diff_engine(&engine.canonical()), None);
}
