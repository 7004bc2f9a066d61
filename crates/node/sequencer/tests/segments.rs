//! The log in segments: it rolls over into a new segment at its size, reopens across segments
//! with the state of one that never stopped, and deletes only what a snapshot covers whose
//! inputs were all done with; a log missing inputs after the snapshot, or damaged in a closed
//! segment, refuses to start.

use optio_engine::Engine;
use optio_sequencer::{Sequencer, SequencerError, WalError, log};
use optio_types::{
    AccountId, Address, Amount, Command, EngineLimits, Input, InstrumentId, InstrumentSpec,
    MONEY_SCALE, NewOrder, OrderType, Price, Qty, SelfTradePrevention, Side, TimeInForce,
};

const KEY: [u8; 32] = [42; 32];
const T0: u64 = 1_734_764_400_000;
/// Small enough that a few dozen inputs fill several segments.
const SEGMENT: u64 = 1_000;

/// A market, two funded accounts and `n` orders crossing around 2,000.
fn inputs(n: usize) -> Vec<Input> {
    let spec = InstrumentSpec::with_defaults(
        "BTC-27DEC24-60000-C".parse().expect("valid"),
        Price(100_000 * MONEY_SCALE),
    );
    let mut v = vec![
        Command::ListInstrument { spec },
        Command::ActivateInstrument {
            instrument: InstrumentId(0),
        },
    ];
    for a in 0..2u8 {
        v.push(Command::OpenAccount {
            owner: Address([a + 1; 20]),
        });
        v.push(Command::Deposit {
            account: AccountId(u32::from(a)),
            amount: Amount(1_000_000 * MONEY_SCALE),
        });
    }
    for i in 0..n {
        v.push(Command::PlaceOrder(NewOrder {
            account: AccountId((i % 2) as u32),
            instrument: InstrumentId(0),
            side: if i % 2 == 0 { Side::Buy } else { Side::Sell },
            qty: Qty(1_000_000),
            order_type: OrderType::Limit {
                price: Price((2_000 + (i % 5) as i64 - 2) * MONEY_SCALE),
            },
            time_in_force: TimeInForce::GoodTillCancelled,
            post_only: false,
            reduce_only: false,
            self_trade: SelfTradePrevention::CancelTaker,
            client_order_id: 0,
            session_key: None,
        }));
    }
    v.into_iter()
        .enumerate()
        .map(|(i, command)| Input {
            time_ms: T0 + i as u64,
            command,
        })
        .collect()
}

/// The state hash of `inputs` applied to a fresh engine.
fn direct(inputs: &[Input]) -> [u8; 32] {
    let mut engine = Engine::new(EngineLimits::default());
    let mut events = Vec::new();
    for input in inputs {
        let _ = engine.apply(input, &mut events);
    }
    engine.state_hash()
}

fn open(dir: &std::path::Path) -> Result<Sequencer, SequencerError> {
    let mut s = Sequencer::open(dir, KEY, EngineLimits::default())?;
    s.set_segment_bytes(SEGMENT);
    Ok(s)
}

/// Sequences `inputs` in groups of three.
fn submit(s: &mut Sequencer, inputs: &[Input]) {
    for group in inputs.chunks(3) {
        s.submit(group).expect("durable");
    }
}

/// A snapshot now, written as the node writes it with every input up to `done` batched:
/// the base's sequence number and the bytes freed.
fn snapshot(s: &mut Sequencer, done: u64) -> (u64, u64) {
    s.take_snapshot()
        .expect("taken")
        .write_keeping(&[], done)
        .expect("written")
}

#[test]
fn the_log_rolls_into_segments_and_reopens_across_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let all = inputs(60);
    let mut s = open(dir.path()).expect("opens");
    submit(&mut s, &all[..39]);
    drop(s);
    let mut s = open(dir.path()).expect("reopens");
    submit(&mut s, &all[39..]);
    drop(s);
    let segments = log::segments(dir.path()).expect("listed");
    assert!(segments.len() >= 4, "{segments:?}");
    assert_eq!(segments[0].1, dir.path().join("wal.log"));
    // Each segment is named by its first input, and holds the inputs up to the next one's.
    let records = log::read(dir.path()).expect("reads");
    assert_eq!(records.len(), all.len());
    for pair in segments.windows(2) {
        assert!(pair[1].0 > pair[0].0);
        assert_eq!(
            pair[1].1,
            dir.path().join(format!("wal.{:020}.log", pair[1].0))
        );
    }
    let s = open(dir.path()).expect("reopens");
    assert_eq!(s.next_seq(), all.len() as u64 + 1);
    assert_eq!(s.engine().state_hash(), direct(&all));
    // A group never spans two segments: each segment starts a group (of three, from 1).
    assert!(segments.iter().all(|(first, _)| (first - 1) % 3 == 0));
}

#[test]
fn snapshots_delete_the_segments_their_base_covers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let all = inputs(90);
    let mut s = open(dir.path()).expect("opens");
    submit(&mut s, &all[..30]);
    // The first snapshot has none to replace: no base, nothing deleted.
    assert_eq!(snapshot(&mut s, u64::MAX), (0, 0));
    let first = s.snapshot_seq();
    submit(&mut s, &all[30..60]);
    // The snapshot it replaces covers inputs not all batched: it is not kept, nothing goes.
    assert_eq!(snapshot(&mut s, first - 1), (0, 0));
    let second = s.snapshot_seq();
    submit(&mut s, &all[60..]);
    // Now the second is done with: it becomes the base, the segments it covers go.
    let before = log::size(dir.path()).expect("sized");
    let (base, freed) = snapshot(&mut s, second);
    assert_eq!(base, second);
    let after = log::size(dir.path()).expect("sized");
    assert!(
        freed > 0 && after.1 == before.1 - freed,
        "{before:?} {after:?}"
    );
    let segments = log::segments(dir.path()).expect("listed");
    // What is left starts at or before the input after the base, and nothing before is kept
    // but the segment holding it.
    assert!(
        segments[0].0 <= base + 1 && segments[0].0 > 1,
        "{segments:?}"
    );
    assert!(segments.get(1).is_none_or(|next| next.0 > base + 1));
    drop(s);
    // A restart restores the last snapshot and replays the log after it; the base restores
    // the state at its input.
    let s = open(dir.path()).expect("reopens");
    assert_eq!(s.engine().state_hash(), direct(&all));
    let (at, engine) = Sequencer::read_base(dir.path())
        .expect("reads")
        .expect("a base");
    assert_eq!(at, second);
    assert_eq!(engine.state_hash(), direct(&all[..second as usize]));
    // The log still holds every input after the base.
    let records = log::read(dir.path()).expect("reads");
    assert!(records[0].0 <= base + 1);
    assert_eq!(records.last().map(|r| r.0), Some(all.len() as u64));
}

#[test]
fn a_log_missing_inputs_after_the_snapshot_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let all = inputs(60);
    let mut s = open(dir.path()).expect("opens");
    submit(&mut s, &all[..20]);
    snapshot(&mut s, u64::MAX);
    let at = s.snapshot_seq();
    submit(&mut s, &all[20..]);
    drop(s);
    // A segment holding inputs after the snapshot is lost.
    let segments = log::segments(dir.path()).expect("listed");
    let lost = segments
        .windows(2)
        .find(|p| p[0].0 > at + 1)
        .map(|p| p[0].1.clone())
        .expect("a closed segment after the snapshot");
    std::fs::remove_file(&lost).expect("removed");
    match open(dir.path()) {
        Err(SequencerError::Wal(WalError::Gap(_))) => {}
        other => panic!("expected a gap, got {:?}", other.map(|s| s.next_seq())),
    }
    // Or the segments up to the one after the snapshot.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut s = open(dir.path()).expect("opens");
    submit(&mut s, &all[..20]);
    snapshot(&mut s, u64::MAX);
    submit(&mut s, &all[20..]);
    drop(s);
    let segments = log::segments(dir.path()).expect("listed");
    let cut = segments
        .iter()
        .position(|(first, _)| *first > at + 1)
        .expect("later");
    for (_, path) in &segments[..cut] {
        std::fs::remove_file(path).expect("removed");
    }
    match open(dir.path()) {
        Err(SequencerError::LogIncomplete {
            snapshot, first, ..
        }) => assert_eq!((snapshot, first), (at, segments[cut].0)),
        other => panic!(
            "expected an incomplete log, got {:?}",
            other.map(|s| s.next_seq())
        ),
    }
}

#[test]
fn damage_in_a_closed_segment_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut s = open(dir.path()).expect("opens");
    submit(&mut s, &inputs(40));
    drop(s);
    let segments = log::segments(dir.path()).expect("listed");
    assert!(segments.len() >= 2);
    // Its last record cut short, as a torn tail would be in the last segment.
    let path = &segments[0].1;
    let len = std::fs::metadata(path).expect("exists").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("opens")
        .set_len(len - 5)
        .expect("cuts");
    match open(dir.path()) {
        Err(SequencerError::Wal(WalError::Corrupt(_))) => {}
        other => panic!("expected corruption, got {:?}", other.map(|s| s.next_seq())),
    }
    // Nothing was truncated or written.
    assert_eq!(std::fs::metadata(path).expect("exists").len(), len - 5);
}
