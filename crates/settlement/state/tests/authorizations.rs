//! The batcher posts beside each fill the signed orders of its maker and taker: over random
//! engine histories in which some orders come with a signature and some without (the
//! operator's), every batch's authorization section has, for each fill in the posted order, the
//! record of exactly the order that filled (an all-zero record for an unsigned one); and a
//! batcher restarted from its persisted state and signed orders (as after a crash) cuts the same
//! batches, sections included, as one that never stopped.

use optio_engine::Engine;
use optio_state::auth::{self, Authorization, Orders, Signed};
use optio_state::{Batch, Batcher, SettlementState, decode};
use optio_types::{Address, Command, EngineLimits, Event, Input};

mod support;

use support::history;

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

/// Each input with its events and what it signed.
fn sequence(seed: u64) -> Vec<(Input, Vec<Event>, Option<Signed>)> {
    let mut engine = Engine::new(EngineLimits::default());
    history(seed, 500)
        .into_iter()
        .enumerate()
        .map(|(i, input)| {
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
    let mut shared = 0;
    let mut unsigned = 0;
    for seed in 0..4 {
        let inputs = sequence(seed);
        // The record each order id was placed with, from the events independently of the
        // batcher.
        let mut placed: std::collections::BTreeMap<u64, Option<Authorization>> = Default::default();
        let mut expected = Vec::new();
        for (input, events, signed) in &inputs {
            for e in events {
                match e {
                    Event::OrderAccepted { order, .. } => {
                        let Command::PlaceOrder(o) = &input.command else {
                            panic!("an order accepted from another command")
                        };
                        placed.insert(order.0, signed.and_then(|s| s.record(o)));
                    }
                    Event::Fill {
                        maker_order,
                        taker_order,
                        ..
                    } => {
                        expected.push(placed[&maker_order.0]);
                        expected.push(placed[&taker_order.0]);
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
            assert_eq!(
                b.authorizations.len(),
                4 + records * auth::RECORD_BYTES + 4 * sides.len(),
                "batch {}: the records, then one index per fill side",
                b.header.number
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
    assert!(shared > 0, "no record was posted once for several sides");
    assert!(
        unsigned > 0 && unsigned < sides_checked,
        "{unsigned} unsigned of {sides_checked}"
    );
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
    let mut first = Vec::new();
    {
        let (state, _, _) = SettlementState::open(&path).expect("opens");
        let mut batcher = Batcher::resume(state, 0, 0, 12, u64::MAX);
        feed(&mut batcher, &inputs, 1, |batcher, b| {
            if first.len() < stop {
                batcher.persist(&b.header).expect("persists");
                first.push(b);
            }
        });
    }
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
