//! Durability and recovery: receipts chain and verify, a reopened sequencer has the same state as
//! one that never stopped, a torn last record is dropped, damage in the middle refuses to start,
//! equivocation is detectable. The log in segments: it rolls over into a new segment at its
//! size, reopens across segments with the state of one that never stopped, and deletes only
//! what a snapshot covers whose inputs were all done with; a log missing inputs after the
//! snapshot, or damaged in a closed segment, refuses to start.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};

use optio_engine::Engine;
use optio_sequencer::{Intent, Sequencer, SequencerError, WalError, is_equivocation, log};
use optio_types::{
    AccountId, Address, Amount, Command, EngineLimits, Input, InstrumentId, InstrumentSpec,
    MONEY_SCALE, NewOrder, OrderType, Price, Qty, SelfTradePrevention, Side, TimeInForce,
};
use proptest::prelude::*;

const KEY: [u8; 32] = [42; 32];
const T0: u64 = 1_734_764_400_000;

/// A market and `n` orders alternating sides around 2,000 so that some trade.
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
    for a in 0..3u8 {
        v.push(Command::OpenAccount {
            owner: Address([a + 1; 20]),
        });
        v.push(Command::Deposit {
            account: AccountId(u32::from(a)),
            amount: Amount(1_000_000 * MONEY_SCALE),
        });
    }
    // Account 2 trades partly through a session key (its orders log the key).
    let key = Address([0x5e; 20]);
    v.push(Command::SetSessionKey {
        account: AccountId(2),
        key,
        expiry_ms: T0 + 3_600_000,
    });
    for i in 0..n {
        let side = if i % 2 == 0 { Side::Buy } else { Side::Sell };
        let offset = (i % 7) as i64 - 3;
        v.push(Command::PlaceOrder(NewOrder {
            account: AccountId((i % 3) as u32),
            instrument: InstrumentId(0),
            side,
            qty: Qty(1_000_000 * (1 + (i % 4) as i64)),
            order_type: OrderType::Limit {
                price: Price((2_000 + offset) * MONEY_SCALE),
            },
            time_in_force: TimeInForce::GoodTillCancelled,
            post_only: false,
            reduce_only: false,
            self_trade: SelfTradePrevention::CancelTaker,
            client_order_id: 0,
            session_key: (i % 3 == 2 && i % 2 == 0).then_some(key),
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

fn direct(inputs: &[Input]) -> [u8; 32] {
    let mut e = Engine::new(EngineLimits::default());
    let mut events = Vec::new();
    for i in inputs {
        let _ = e.apply(i, &mut events);
    }
    e.state_hash()
}

#[test]
fn receipts_chain_verify_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let all = inputs(40);
    let mut s = Sequencer::open(dir.path(), KEY, EngineLimits::default()).expect("opens");
    let mut receipts = Vec::new();
    for group in all.chunks(7) {
        receipts.extend(
            s.submit(group)
                .expect("durable")
                .into_iter()
                .map(|o| o.receipt),
        );
    }
    let key = s.public_key();
    assert!(receipts.iter().all(|r| r.verify(&key)));
    // One seal per group: seven receipts share one signature.
    assert_eq!(receipts[0].seal, receipts[6].seal);
    assert_ne!(receipts[6].seal, receipts[7].seal);
    assert!(
        receipts
            .windows(2)
            .all(|w| w[1].previous == w[0].link() && w[1].seq == w[0].seq + 1)
    );
    let hash = s.engine().state_hash();
    drop(s);
    let mut s = Sequencer::open(dir.path(), KEY, EngineLimits::default()).expect("reopens");
    assert_eq!(s.engine().state_hash(), hash);
    assert_eq!(hash, direct(&all));
    // The chain continues where it stopped.
    let next = s.submit(&inputs(41)[all.len()..]).expect("durable");
    assert_eq!(next[0].receipt.seq, all.len() as u64 + 1);
    assert_eq!(
        next[0].receipt.previous,
        receipts.last().expect("some").link()
    );
}

#[test]
fn snapshot_plus_log_restores_the_same_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let all = inputs(60);
    let mut s = Sequencer::open(dir.path(), KEY, EngineLimits::default()).expect("opens");
    s.submit(&all[..30]).expect("durable");
    s.snapshot_with(b"the gateway's views").expect("snapshot");
    assert_eq!(s.snapshot_seq(), 30);
    s.submit(&all[30..]).expect("durable");
    let last = s.submit(&[]).expect("empty group");
    assert!(last.is_empty());
    drop(s);
    let s = Sequencer::open(dir.path(), KEY, EngineLimits::default())
        .expect("reopens from snapshot and log");
    assert_eq!(s.engine().state_hash(), direct(&all));
    assert_eq!(s.snapshot_seq(), 30);
    assert_eq!(
        Sequencer::read_snapshot_extra(dir.path()).expect("reads"),
        Some(b"the gateway's views".to_vec())
    );
    assert_eq!(s.next_seq(), all.len() as u64 + 1);
    drop(s);
    // A snapshot cut short is refused, never half restored.
    let path = dir.path().join("snapshot.bin");
    let bytes = std::fs::read(&path).expect("reads");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("writes");
    assert!(Sequencer::open(dir.path(), KEY, EngineLimits::default()).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// A crash mid-write leaves a torn last record at any byte: it is dropped, every earlier
    /// (acknowledged) record survives, the state equals a replay of them, and logging resumes.
    #[test]
    fn a_torn_last_record_is_dropped(cut in 1usize..200) {
        let dir = tempfile::tempdir().expect("temp dir");
        let all = inputs(20);
        let mut s = Sequencer::open(dir.path(), KEY, EngineLimits::default()).expect("opens");
        s.submit(&all[..all.len() - 1]).expect("durable");
        drop(s);
        let path = dir.path().join("wal.log");
        let len_before = std::fs::metadata(&path).expect("exists").len();
        let mut s = Sequencer::open(dir.path(), KEY, EngineLimits::default()).expect("opens");
        s.submit(&all[all.len() - 1..]).expect("durable");
        drop(s);
        let full = std::fs::metadata(&path).expect("exists").len();
        let torn = len_before + (cut as u64 % (full - len_before));
        OpenOptions::new().write(true).open(&path).expect("opens").set_len(torn).expect("truncates");
        let mut s = Sequencer::open(dir.path(), KEY, EngineLimits::default()).expect("recovers");
        prop_assert_eq!(s.next_seq(), all.len() as u64);
        prop_assert_eq!(s.engine().state_hash(), direct(&all[..all.len() - 1]));
        prop_assert_eq!(std::fs::metadata(&path).expect("exists").len(), len_before);
        s.submit(&all[all.len() - 1..]).expect("resumes");
        prop_assert_eq!(s.engine().state_hash(), direct(&all));
    }
}

#[test]
fn damage_before_valid_records_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut s = Sequencer::open(dir.path(), KEY, EngineLimits::default()).expect("opens");
    s.submit(&inputs(10)).expect("durable");
    drop(s);
    let path = dir.path().join("wal.log");
    let mut f = OpenOptions::new().write(true).open(&path).expect("opens");
    f.seek(SeekFrom::Start(30)).expect("seeks");
    f.write_all(&[0xFF, 0xEE]).expect("writes");
    drop(f);
    match Sequencer::open(dir.path(), KEY, EngineLimits::default()) {
        Err(SequencerError::Wal(WalError::Corrupt(_))) => {}
        other => panic!(
            "expected corruption to be refused, got {:?}",
            other.map(|s| s.next_seq())
        ),
    }
}

/// Every file of `dir` with its bytes.
fn files(dir: &std::path::Path) -> Vec<(std::ffi::OsString, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("lists")
        .map(|e| {
            let e = e.expect("entry");
            (e.file_name(), std::fs::read(e.path()).expect("reads"))
        })
        .collect();
    v.sort();
    v
}

fn refused_rules(dir: &std::path::Path) -> SequencerError {
    match Sequencer::open(dir, KEY, EngineLimits::default()) {
        Err(e) => e,
        Ok(s) => panic!("opened at {}", s.next_seq()),
    }
}

/// A log is replayed only under the engine rules that wrote it: a new directory records this
/// binary's, and one written under others (or before they were recorded) is refused with a
/// stable error, every file left as it was, with or without a snapshot.
#[test]
fn a_log_written_under_other_engine_rules_is_refused_unchanged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = dir.path().join("rules");
    let mut s = Sequencer::open(dir.path(), KEY, EngineLimits::default()).expect("opens");
    assert_eq!(
        std::fs::read_to_string(&rules).expect("recorded"),
        format!("{}\n", optio_engine::RULES)
    );
    s.submit(&inputs(10)).expect("durable");
    drop(s);
    for snapshot in [false, true] {
        if snapshot {
            let mut s = Sequencer::open(dir.path(), KEY, EngineLimits::default()).expect("reopens");
            s.snapshot().expect("snapshot");
        }
        std::fs::write(&rules, format!("{}\n", optio_engine::RULES + 1)).expect("writes");
        let before = files(dir.path());
        let e = refused_rules(dir.path());
        assert!(
            matches!(
                e,
                SequencerError::RulesMismatch { log: Some(r), binary }
                    if r == optio_engine::RULES + 1 && binary == optio_engine::RULES
            ),
            "{e}"
        );
        assert_eq!(e.code(), "rules_mismatch", "{e}");
        assert_eq!(files(dir.path()), before);
        std::fs::remove_file(&rules).expect("removes");
        let before = files(dir.path());
        let e = refused_rules(dir.path());
        assert!(
            matches!(e, SequencerError::RulesMismatch { log: None, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("not recorded"), "{e}");
        assert_eq!(files(dir.path()), before);
        std::fs::write(&rules, "one\n").expect("writes");
        assert!(matches!(
            refused_rules(dir.path()),
            SequencerError::RulesFormat
        ));
        std::fs::write(&rules, format!("{}\n", optio_engine::RULES)).expect("writes");
    }
    let s = Sequencer::open(dir.path(), KEY, EngineLimits::default()).expect("its rules");
    assert_eq!(s.engine().state_hash(), direct(&inputs(10)));
}

#[test]
fn two_receipts_for_one_sequence_number_prove_equivocation() {
    let a = tempfile::tempdir().expect("temp dir");
    let b = tempfile::tempdir().expect("temp dir");
    let all = inputs(3);
    let mut honest = Sequencer::open(a.path(), KEY, EngineLimits::default()).expect("opens");
    let mut forked = Sequencer::open(b.path(), KEY, EngineLimits::default()).expect("opens");
    let r1 = honest.submit(&all[..1]).expect("durable")[0]
        .receipt
        .clone();
    let r2 = forked.submit(&all[1..2]).expect("durable")[0]
        .receipt
        .clone();
    let key = honest.public_key();
    assert!(is_equivocation(&r1, &r2, &key));
    assert!(!is_equivocation(&r1, &r1, &key));
    let mut forged = r2;
    forged.seal.signature[0] ^= 1;
    assert!(
        !is_equivocation(&r1, &forged, &key),
        "an invalid signature proves nothing"
    );
}

#[test]
fn signed_intents_are_logged_and_recovered_and_name_the_receipt() {
    let dir = tempfile::tempdir().expect("temp dir");
    let all = inputs(2);
    let intent = Intent {
        digest: [3; 32],
        owner: [4; 20],
        nonce: 77,
        expiry: 1_900_000_000,
        signature: [5; 65],
        label: optio_sequencer::Label::new("hedge-7").expect("short"),
        order: Some(optio_sequencer::OrderSigning {
            signer: [6; 20],
            max_fee: 1_234,
            domain: 2,
        }),
    };
    let mut s = Sequencer::open(dir.path(), KEY, EngineLimits::default()).expect("opens");
    s.submit(&all[..all.len() - 1]).expect("durable");
    let out = s
        .submit_intents(&[(all[all.len() - 1].clone(), Some(intent))])
        .expect("durable");
    assert_eq!(out[0].receipt.intent_hash, intent.digest);
    drop(s);
    let s = Sequencer::open(dir.path(), KEY, EngineLimits::default()).expect("reopens");
    assert_eq!(s.recovered_intents(), &[intent]);
    assert_eq!(
        s.recovered_intents()[0].label.as_str(),
        "hedge-7",
        "the label survives the restart"
    );
    assert_eq!(s.engine().state_hash(), direct(&all));
}

#[test]
fn every_input_round_trips_through_the_log_encoding() {
    // Each order also as a replace of an order by id or by client id.
    let replaces = inputs(30).into_iter().filter_map(|i| match i.command {
        Command::PlaceOrder(order) => Some(Input {
            time_ms: i.time_ms,
            command: Command::Replace {
                cancel: if order.qty.0 % 2_000_000 == 0 {
                    optio_types::OrderRef::Id(optio_types::OrderId(5))
                } else {
                    optio_types::OrderRef::Client(9)
                },
                order,
            },
        }),
        _ => None,
    });
    for input in inputs(30).into_iter().chain(replaces) {
        assert_eq!(Input::decode(&input.encode()), Ok(input.clone()));
        let bytes = input.encode();
        assert!(Input::decode(&bytes[..bytes.len() - 1]).is_err());
    }
}

/// Small enough that a few dozen inputs fill several segments.
const SEGMENT: u64 = 1_000;

fn open_segmented(dir: &std::path::Path) -> Result<Sequencer, SequencerError> {
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
    let mut s = open_segmented(dir.path()).expect("opens");
    submit(&mut s, &all[..39]);
    drop(s);
    let mut s = open_segmented(dir.path()).expect("reopens");
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
    let s = open_segmented(dir.path()).expect("reopens");
    assert_eq!(s.next_seq(), all.len() as u64 + 1);
    assert_eq!(s.engine().state_hash(), direct(&all));
    // A group never spans two segments: each segment starts a group (of three, from 1).
    assert!(segments.iter().all(|(first, _)| (first - 1) % 3 == 0));
}

#[test]
fn snapshots_delete_the_segments_their_base_covers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let all = inputs(90);
    let mut s = open_segmented(dir.path()).expect("opens");
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
    let s = open_segmented(dir.path()).expect("reopens");
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
    let mut s = open_segmented(dir.path()).expect("opens");
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
    match open_segmented(dir.path()) {
        Err(SequencerError::Wal(WalError::Gap(_))) => {}
        other => panic!("expected a gap, got {:?}", other.map(|s| s.next_seq())),
    }
    // Or the segments up to the one after the snapshot.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut s = open_segmented(dir.path()).expect("opens");
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
    match open_segmented(dir.path()) {
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
    let mut s = open_segmented(dir.path()).expect("opens");
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
    match open_segmented(dir.path()) {
        Err(SequencerError::Wal(WalError::Corrupt(_))) => {}
        other => panic!("expected corruption, got {:?}", other.map(|s| s.next_seq())),
    }
    // Nothing was truncated or written.
    assert_eq!(std::fs::metadata(path).expect("exists").len(), len - 5);
}

#[test]
fn a_file_named_as_a_segment_that_is_none_refuses_to_start_unchanged() {
    for name in [
        "wal.00000000000000000000.log",
        "wal.00000000000000000001.log",
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = open_segmented(dir.path()).expect("opens");
        submit(&mut s, &inputs(10));
        drop(s);
        std::fs::write(dir.path().join(name), b"").expect("writes");
        let before = files(dir.path());
        match open_segmented(dir.path()) {
            Err(SequencerError::Wal(WalError::Misnamed(n))) => assert_eq!(n, name),
            other => panic!(
                "{name}: expected it refused, got {:?}",
                other.map(|s| s.next_seq())
            ),
        }
        assert_eq!(files(dir.path()), before, "{name}: the directory changed");
    }
}
