//! `optio prove` workers on a batches directory: two workers at once prove every covered batch
//! exactly once, mark the uncovered one with its reason, respect a live claim and take over a
//! stale one; the proofs check against the roots rebuilt from the blobs alone, and a proof moved
//! to another batch does not. A worker kept running applies only the blobs past the batches
//! settled from the first on.

use std::time::Duration;

use ark_std::rand::SeedableRng;
use ark_std::rand::rngs::StdRng;
use optio_prover::worker::{Outcome, Walker, check_proofs, proof_path, prove_pending};
use optio_prover::{Keys, Shape};
use optio_state::Op;
use optio_state::blob::{BlobMeta, encode};
use optio_types::{
    AccountId, Address, Amount, InstrumentId, InstrumentSpec, MONEY_SCALE, MarginMode, Price,
    QTY_SCALE, Qty, Side,
};

const SHAPE: Shape = Shape {
    slots: 3,
    accounts: 2,
    positions: 2,
    instruments: 1,
    listings: 2,
    expiries: 1,
    settlements: 1,
    holders: 2,
    marks: 1,
    risk_chunks: 1,
    keys: 1,
    mark_window_bits: 0,
    margins: 2,
    prices: 1,
    solvency: 2,
    solvency_bits: 2,
    readonly: 0,
};

/// An ETH perpetual listed and activated (instrument 0).
fn listing() -> Vec<Op> {
    let spec = InstrumentSpec::with_defaults(
        "ETH-PERPETUAL".parse().expect("name"),
        Price(20_000 * MONEY_SCALE),
    );
    vec![
        Op::ListInstrument { spec },
        Op::ActivateInstrument {
            instrument: InstrumentId(0),
        },
    ]
}

/// Accounts 0 and 1 opened, of two owners.
fn two_accounts() -> [Op; 2] {
    [1u8, 2].map(|o| Op::OpenAccount {
        owner: Address([o; 20]),
    })
}

/// One contract of instrument 0 at 2,500.
fn fill(maker: u32, taker: u32, side: Side) -> Op {
    Op::Fill {
        instrument: InstrumentId(0),
        maker: AccountId(maker),
        taker: AccountId(taker),
        taker_side: side,
        price: Price(2_500 * MONEY_SCALE),
        qty: Qty(QTY_SCALE),
    }
}

fn batches() -> Vec<Vec<Op>> {
    vec![
        listing(),
        [
            &two_accounts()[..],
            &[
                // Two session keys: more than the shape's one slot, so no proof.
                Op::SessionKey {
                    account: AccountId(0),
                    key: Address([7; 20]),
                    expiry_ms: 1_000_000,
                    at_ms: 1,
                },
                Op::SessionKey {
                    account: AccountId(0),
                    key: Address([8; 20]),
                    expiry_ms: 1_000_000,
                    at_ms: 1,
                },
                Op::Deposit {
                    account: AccountId(1),
                    amount: Amount(50_000 * MONEY_SCALE),
                },
            ],
        ]
        .concat(),
        vec![
            Op::Deposit {
                account: AccountId(0),
                amount: Amount(50_000 * MONEY_SCALE),
            },
            fill(0, 1, Side::Buy),
            Op::Mark {
                instrument: InstrumentId(0),
                mark: Price(2_600 * MONEY_SCALE),
                index: Price(60_000_000_000),
                risk: vec![Amount(-1), Amount(2), Amount(3)],
                published_ms: 0,
            },
        ],
        vec![fill(1, 0, Side::Sell)],
    ]
}

fn write_blobs(dir: &std::path::Path, batches: &[Vec<Op>]) {
    let mut state = optio_state::SettlementState::new();
    for (i, ops) in batches.iter().enumerate() {
        let number = i as u64 + 1;
        let meta = BlobMeta {
            number,
            first_seq: 10 * number - 9,
            last_seq: 10 * number,
            time_ms: 1_000 * number,
            accounts: state.accounts().len() as u32,
            instruments: state.instruments().len() as u32,
        };
        let blob = encode(&meta, ops).expect("encodes");
        std::fs::write(dir.join(format!("{number:08}.blob")), blob).expect("write");
        state.apply_batch(ops).expect("applies");
        state.commit();
    }
}

#[test]
fn workers_share_the_queue_and_their_proofs_check_against_the_blobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_blobs(dir.path(), &batches());
    let keys = Keys::generate(SHAPE, &mut StdRng::seed_from_u64(1)).expect("keys");
    // A live claim on batch 4: no worker touches it for now.
    std::fs::write(dir.path().join("00000004.claim"), b"").expect("claim");
    let hour = Duration::from_secs(3_600);
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2u64)
            .map(|i| {
                let (keys, dir) = (&keys, dir.path());
                s.spawn(move || {
                    prove_pending(dir, keys, &mut StdRng::seed_from_u64(10 + i), hour, |_| {})
                        .expect("pass")
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect()
    });
    let mut proven: Vec<u64> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Proven { batch, .. } => Some(*batch),
            Outcome::Unprovable { .. } => None,
        })
        .collect();
    proven.sort_unstable();
    assert_eq!(
        proven,
        vec![1, 3],
        "each covered batch once, the claimed one left alone"
    );
    let unprovable: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Unprovable { .. }))
        .collect();
    assert_eq!(unprovable.len(), 1);
    assert!(
        matches!(unprovable[0], Outcome::Unprovable { batch: 2, reason } if reason.contains("account slots")),
        "{unprovable:?}"
    );

    // The claim is stale for a worker that allows no time: it takes batch 4 over.
    let mut told = Vec::new();
    let again = prove_pending(
        dir.path(),
        &keys,
        &mut StdRng::seed_from_u64(3),
        Duration::ZERO,
        |o| told.push(o.clone()),
    )
    .expect("pass");
    assert!(
        matches!(again.as_slice(), [Outcome::Proven { batch: 4, .. }]),
        "{again:?}"
    );
    assert_eq!(told, again, "each outcome is told as it is done");
    assert!(
        prove_pending(
            dir.path(),
            &keys,
            &mut StdRng::seed_from_u64(4),
            hour,
            |_| {}
        )
        .expect("pass")
        .is_empty(),
        "nothing left"
    );

    let (ok, missing) = check_proofs(dir.path(), &keys).expect("proofs check");
    assert_eq!((ok, missing), (vec![1, 3, 4], vec![2]));

    // A valid proof of batch 3 filed as batch 4's does not check.
    std::fs::copy(proof_path(dir.path(), 3), proof_path(dir.path(), 4)).expect("copy");
    let err = check_proofs(dir.path(), &keys).expect_err("moved proof");
    assert!(err.contains("batch 4"), "{err}");
    // Nor does a damaged one.
    let text = std::fs::read_to_string(proof_path(dir.path(), 1)).expect("read");
    let damaged = text.replacen("\"proof\":[\"0x", "\"proof\":[\"0x1", 1);
    std::fs::write(proof_path(dir.path(), 1), damaged).expect("write");
    assert!(check_proofs(dir.path(), &keys).is_err());
}

/// One pass of a worker: the batches it settled (proven or marked unprovable), its frontier and
/// the blobs it applied.
fn settle_pass(
    walker: &mut Walker,
    keys: &Keys,
    rng: &mut StdRng,
    stale_after: Duration,
) -> (Vec<u64>, u64, usize) {
    let done = walker
        .prove_pending(keys, rng, stale_after, |_| {})
        .expect("pass");
    let settled = done
        .iter()
        .map(|o| match o {
            Outcome::Proven { batch, .. } | Outcome::Unprovable { batch, .. } => *batch,
        })
        .collect();
    (settled, walker.frontier(), walker.applied())
}

/// A running worker walks from its frontier, the batches settled from the first on: a pass
/// applies only the blobs after it (not every blob since genesis), a batch claimed by another
/// worker holds the frontier back until it is settled, and a batch appended later is proven
/// over the state the frontier kept, its proof checking against the blobs alone.
#[test]
fn a_running_worker_applies_only_the_blobs_past_its_frontier() {
    let later = vec![Op::Deposit {
        account: AccountId(1),
        amount: Amount(MONEY_SCALE),
    }];
    let source = tempfile::tempdir().expect("tempdir");
    write_blobs(source.path(), &[batches(), vec![later]].concat());
    let dir = tempfile::tempdir().expect("tempdir");
    let append = |n: u64| {
        let name = format!("{n:08}.blob");
        std::fs::copy(source.path().join(&name), dir.path().join(&name)).expect("copy");
    };
    (1..=4).for_each(append);
    let keys = Keys::generate(SHAPE, &mut StdRng::seed_from_u64(1)).expect("keys");
    let claim = dir.path().join("00000003.claim");
    std::fs::write(&claim, b"").expect("claim");
    let (hour, rng) = (Duration::from_secs(3_600), &mut StdRng::seed_from_u64(5));
    let mut walker = Walker::new(dir.path());
    let mut pass = |walker: &mut Walker| settle_pass(walker, &keys, rng, hour);
    // From genesis: 1 and 4 proven, 2 unprovable, 3 left to its claim.
    assert_eq!(pass(&mut walker), (vec![1, 2, 4], 0, 4));
    // 1 and 2 settled: the frontier moves past them; 3 and 4 walked on a copy.
    assert_eq!(pass(&mut walker), (vec![], 2, 4));
    std::fs::remove_file(&claim).expect("unclaim");
    assert_eq!(pass(&mut walker), (vec![3], 2, 2));
    assert_eq!(pass(&mut walker), (vec![], 4, 2));
    assert_eq!(pass(&mut walker), (vec![], 4, 0), "nothing applied");
    append(5);
    assert_eq!(pass(&mut walker), (vec![5], 4, 1));
    assert_eq!(pass(&mut walker), (vec![], 5, 1));
    let (ok, missing) = check_proofs(dir.path(), &keys).expect("proofs check");
    assert_eq!((ok, missing), (vec![1, 3, 4, 5], vec![2]));
}

/// `batches()` and two deposits after them.
fn six_batches() -> Vec<Vec<Op>> {
    let later = |amount| {
        vec![Op::Deposit {
            account: AccountId(1),
            amount: Amount(amount),
        }]
    };
    [batches(), vec![later(1), later(2)]].concat()
}

/// The state after batch `n` of the blobs in `dir`, that batch and its last sequence number.
fn state_after(dir: &std::path::Path, n: u64) -> (optio_state::SettlementState, u64, u64) {
    let blobs: Vec<Vec<u8>> = (1..=n)
        .map(|n| std::fs::read(dir.join(format!("{n:08}.blob"))).expect("blob"))
        .collect();
    let mut state = optio_state::SettlementState::new();
    let (number, last_seq) =
        optio_state::rebuild(blobs.iter().map(Vec::as_slice), &mut state, |_| {})
            .expect("rebuilds");
    (state, number, last_seq)
}

/// Where the node pruned the finalized batches behind a checkpoint, a running worker goes on
/// past it, a fresh one (a restarted worker) starts from it, and the proofs of the batches
/// after it check against the state the checkpoint gives.
#[test]
fn workers_go_on_from_the_checkpoint_the_node_pruned_behind() {
    let source = tempfile::tempdir().expect("tempdir");
    write_blobs(source.path(), &six_batches());
    let dir = tempfile::tempdir().expect("tempdir");
    let append = |n: u64| {
        let name = format!("{n:08}.blob");
        std::fs::copy(source.path().join(&name), dir.path().join(&name)).expect("copy");
    };
    (1..=4).for_each(append);
    let keys = Keys::generate(SHAPE, &mut StdRng::seed_from_u64(1)).expect("keys");
    let (hour, rng) = (Duration::from_secs(3_600), &mut StdRng::seed_from_u64(6));
    let mut pass = |walker: &mut Walker| settle_pass(walker, &keys, rng, hour);
    let (mut running, mut restarted) = (Walker::new(dir.path()), Walker::new(dir.path()));
    assert_eq!(pass(&mut running), (vec![1, 2, 3, 4], 0, 4));
    assert_eq!(pass(&mut running), (vec![], 4, 4));
    // The node: batches 1 to 4 finalized, the state after 4 checkpointed, the files pruned.
    let (state, number, last_seq) = state_after(dir.path(), 4);
    optio_state::checkpoint::write(dir.path(), &state, number, last_seq).expect("writes");
    let removed = optio_state::checkpoint::prune(dir.path(), 4).expect("prunes");
    assert_eq!(
        removed,
        optio_state::checkpoint::Pruned {
            files: 4 + 3 + 1,
            proofs: 3,
            unprovable: 1,
            reached: 4,
        },
        "four blobs, three proofs, one unprovable mark"
    );
    append(5);
    // The running worker: nothing to reload, batch 5 proven over its frontier.
    assert_eq!(pass(&mut running), (vec![5], 4, 1));
    // The restarted one starts from the checkpoint: 5 is settled, so its frontier moves on.
    assert_eq!(pass(&mut restarted), (vec![], 5, 1));
    append(6);
    assert_eq!(pass(&mut restarted), (vec![6], 5, 1));
    let (ok, missing) = check_proofs(dir.path(), &keys).expect("proofs check");
    assert_eq!((ok, missing), (vec![5, 6], vec![]));
    // Batch 5's proof filed as batch 6's does not check.
    std::fs::copy(proof_path(dir.path(), 5), proof_path(dir.path(), 6)).expect("copy");
    assert!(check_proofs(dir.path(), &keys).is_err());
}

/// A walk that finds its next blob pruned under it (the node finalized and pruned while a
/// worker read the directory) walks again from the checkpoint, where before the worker stopped.
#[test]
fn a_walk_pruned_under_it_goes_on_from_the_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_blobs(dir.path(), &six_batches());
    let (at_4, number, last_seq) = state_after(dir.path(), 4);
    let mut seen = Vec::new();
    let mut walker = Walker::new(dir.path());
    walker
        .walk(
            |_| false,
            |state, batch, _| {
                seen.push((batch, state.root()));
                if batch == 1 {
                    // The node, while the walk holds batch 1: 1 to 4 finalized and pruned.
                    optio_state::checkpoint::write(dir.path(), &at_4, number, last_seq)
                        .expect("writes");
                    optio_state::checkpoint::prune(dir.path(), 4).expect("prunes");
                }
                Ok(())
            },
        )
        .expect("the walk goes on");
    let batches: Vec<u64> = seen.iter().map(|(b, _)| *b).collect();
    assert_eq!(batches, vec![1, 5, 6]);
    assert_eq!(seen[1].1, at_4.root(), "batch 5 walked from the checkpoint");
    assert_eq!(walker.frontier(), 4);
}

/// Keys survive the disk; the wrong shape, missing or damaged key files and a batch of another
/// shape are refused with errors that say which.
#[test]
fn key_files_round_trip_and_bad_ones_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = Keys::generate(SHAPE, &mut StdRng::seed_from_u64(2)).expect("keys");
    keys.write(dir.path()).expect("writes");
    let back = Keys::read(dir.path(), SHAPE).expect("reads");
    assert_eq!(back.vk, keys.vk);
    // The one shape in a directory, found by its files' name.
    assert_eq!(Shape::from_name(&SHAPE.name()), Some(SHAPE));
    assert_eq!(Shape::from_name("quad-1x2x3"), None);
    // Read-only position registers follow as a seventeenth size, only when there are any: a
    // shape has one name.
    let read_only = Shape {
        readonly: 3,
        ..SHAPE
    };
    assert_eq!(read_only.name(), format!("{}x3", SHAPE.name()));
    assert_eq!(Shape::from_name(&read_only.name()), Some(read_only));
    assert_eq!(Shape::from_name(&format!("{}x0", SHAPE.name())), None);
    assert_eq!(Shape::from_name(&format!("{}x3x1", SHAPE.name())), None);
    // A mark window of an odd number of id bits is no subtree of the arity-4 tree.
    assert_eq!(Shape::from_name("quad-1x1x1x1x0x0x0x0x1x1x0x1"), None);
    let only = Keys::read_only(dir.path()).expect("one shape");
    assert_eq!((only.shape, only.vk), (SHAPE, keys.vk.clone()));
    let empty = tempfile::tempdir().expect("tempdir");
    let none = Keys::read_only(empty.path()).err().expect("no keys");
    assert!(none.to_string().contains("optio prove setup"), "{none}");
    // Keys named as before mark windows (eleven sizes), or as before the arity-4 trees:
    // another circuit, and said so.
    for old in [
        "batch-1x1x1x1x0x0x0x0x1x1x0",
        "batch-1x1x1x1x0x0x0x0x1x1x0x0",
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(format!("{old}.vk")), b"").expect("write");
        let refused = Keys::read_only(dir.path()).err().expect("old keys");
        assert!(
            refused
                .to_string()
                .contains(&format!("another circuit version ({old})")),
            "{refused}"
        );
    }

    // Keys of another circuit version, or made before versions were recorded: refused at
    // read, naming both versions.
    let version = dir.path().join(format!("{}.circuit", SHAPE.name()));
    for (content, theirs) in [
        (
            Some(format!("{}\n", optio_prover::CIRCUIT_VERSION + 1)),
            (optio_prover::CIRCUIT_VERSION + 1).to_string(),
        ),
        (None, "none recorded".to_owned()),
    ] {
        match &content {
            Some(text) => std::fs::write(&version, text).expect("write"),
            None => std::fs::remove_file(&version).expect("remove"),
        }
        let refused = Keys::read(dir.path(), SHAPE)
            .err()
            .expect("another version");
        assert!(
            refused.to_string().contains(&format!(
                "another circuit version ({theirs}; this binary's is {})",
                optio_prover::CIRCUIT_VERSION
            )),
            "{refused}"
        );
    }
    keys.write(dir.path()).expect("writes again");
    Keys::read(dir.path(), SHAPE).expect("this version's");

    let other = Shape { slots: 1, ..SHAPE };
    let missing = Keys::read(dir.path(), other)
        .err()
        .expect("no keys of that shape");
    assert!(missing.to_string().contains(&other.name()), "{missing}");

    let vk = dir.path().join(format!("{}.vk", SHAPE.name()));
    let mut bytes = std::fs::read(&vk).expect("read");
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&vk, bytes).expect("write");
    let damaged = Keys::read(dir.path(), SHAPE).err().expect("damaged");
    assert!(damaged.to_string().contains(".vk"), "{damaged}");

    let w = optio_prover::witness::empty(other);
    let err = optio_prover::prove(&keys, w, &mut StdRng::seed_from_u64(3)).expect_err("shape");
    assert!(
        matches!(err, optio_prover::ProveError::Shape { .. }),
        "{err}"
    );
}

/// Op slots and registers for fills only (quicker keys).
const FILLS: Shape = Shape {
    expiries: 0,
    settlements: 0,
    holders: 0,
    marks: 0,
    keys: 0,
    ..SHAPE
};

/// A proof is verified before it is returned: a batch that breaks a rule is named by its rule,
/// and keys that are not the circuit's (here a proving key and a verifying key of two setups)
/// are named as such, instead of a proof L1 would refuse.
#[test]
fn a_proof_that_does_not_verify_names_the_rule_or_the_keys() {
    use optio_prover::{ProveError, prove, verify};
    let keys = Keys::generate(FILLS, &mut StdRng::seed_from_u64(2)).expect("keys");
    let other = Keys::generate(FILLS, &mut StdRng::seed_from_u64(5)).expect("keys");
    let rng = &mut StdRng::seed_from_u64(3);
    let w = optio_prover::witness::empty(FILLS);
    let proof = prove(&keys, w.clone(), rng).expect("an empty batch proves");
    assert!(verify(&keys.vk, &w.public, &proof));

    let mut broken = w.clone();
    broken.public.new_root += optio_state::poseidon::Fr::from(1u64);
    let err = prove(&keys, broken, rng).expect_err("another new root");
    assert!(
        matches!(&err, ProveError::Unsatisfied(at) if at.contains("new root")),
        "{err}"
    );

    let mixed = Keys {
        shape: FILLS,
        pk: keys.pk.clone(),
        vk: other.vk.clone(),
    };
    let err = prove(&mixed, w, rng).expect_err("keys of two setups");
    assert!(matches!(err, ProveError::KeysMismatch), "{err}");
    assert!(err.to_string().contains("optio prove setup"), "{err}");

    // Keys of the circuit before the binding to the posted bytes (five public inputs) are
    // refused when read, by what they are.
    let mut vk = keys.vk.clone();
    vk.gamma_abc_g1.truncate(6);
    let older = Keys {
        shape: FILLS,
        pk: keys.pk.clone(),
        vk,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    older.write(dir.path()).expect("writes");
    let Err(err) = Keys::read(dir.path(), FILLS) else {
        panic!("keys with five public inputs were read");
    };
    assert!(
        err.to_string()
            .contains("5 public inputs, this circuit has 7"),
        "{err}"
    );
}

/// A batch that breaks a rule of the circuit (here money out of an account whose cash a fill
/// left negative, with no committed mark to value its position: the stress rule) is marked
/// unprovable with the rule, and the worker goes on to the next batch.
#[test]
fn a_batch_that_breaks_a_rule_is_marked_unprovable_and_the_worker_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let deposit = |account, amount| Op::Deposit {
        account: AccountId(account),
        amount: Amount(amount * MONEY_SCALE),
    };
    // The perpetual marked at 2,500 with a scenario of -1,000: account 1 buys one at its mark
    // with 1,000 of cash (solvent at the mark), then withdraws a unit, which leaves it short of
    // the scenario. The native state applies the batch (it checks solvency, not the stress
    // rule); the circuit does not prove it.
    let batches = [
        listing(),
        [
            &two_accounts()[..],
            &[
                deposit(0, 50_000),
                // Account 1 buys on margin (a `WorstCase` account is held to full collateral;
                // the shape takes an account slot for it).
                Op::SetMarginMode {
                    account: AccountId(1),
                    mode: MarginMode::Standard,
                },
                Op::Mark {
                    instrument: InstrumentId(0),
                    mark: Price(2_500 * MONEY_SCALE),
                    index: Price(60_000_000_000),
                    risk: vec![Amount(-1_000 * MONEY_SCALE)],
                    published_ms: 0,
                },
            ],
        ]
        .concat(),
        vec![
            deposit(1, 1_000),
            fill(0, 1, Side::Buy),
            Op::Withdraw {
                account: AccountId(1),
                amount: Amount(1),
                owner: Address([2; 20]),
            },
        ],
        vec![deposit(1, 5_000)],
    ];
    write_blobs(dir.path(), &batches);
    let marked = Shape {
        marks: 1,
        keys: 1,
        ..FILLS
    };
    let keys = Keys::generate(marked, &mut StdRng::seed_from_u64(6)).expect("keys");
    let outcomes = prove_pending(
        dir.path(),
        &keys,
        &mut StdRng::seed_from_u64(7),
        Duration::from_secs(3_600),
        |_| {},
    )
    .expect("the pass goes on past the broken batch");
    let proven: Vec<u64> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Proven { batch, .. } => Some(*batch),
            Outcome::Unprovable { .. } => None,
        })
        .collect();
    assert_eq!(proven, vec![1, 2, 4]);
    assert!(
        outcomes.iter().any(|o| matches!(o, Outcome::Unprovable { batch: 3, reason } if reason.contains("breaks a rule"))),
        "{outcomes:?}"
    );
    assert!(dir.path().join("00000003.unprovable").exists());
}

/// A shape with settlement slots must pay at least two positions a slot (a balanced part, a
/// long and a short); one without settlement slots (perpetuals only) needs none.
#[test]
fn a_shape_checks_that_its_settlements_can_pay_a_part() {
    let with = |settlements, holders| Shape {
        settlements,
        holders,
        ..SHAPE
    };
    assert_eq!(with(2, 2).check(), Ok(()));
    assert_eq!(with(0, 0).check(), Ok(()));
    for bad in [with(1, 1), with(2, 0)] {
        let why = bad.check().expect_err("no part fits");
        assert!(why.contains("at least a long and a short"), "{why}");
    }
    // Two holders a slot, but one position register: no part fits either.
    assert!(
        Shape {
            positions: 1,
            ..with(1, 2)
        }
        .check()
        .is_err()
    );
}
