//! What survives a restart. The batcher: a node stopped between batches and in the middle of one
//! (its queue and pending ops lost, as in a crash) resumes from its persisted state, blobs and
//! log, and the batches on disk are byte for byte those of one uninterrupted batcher over the
//! same log. And the client labels of open orders, the order history and intent statuses. Each
//! runs without snapshots (the whole log replayed) and with a snapshot every few inputs (the
//! engine and the views restored from it, the log after it replayed), and the batcher also with
//! small log segments, which the snapshots delete as the batches cover them (a restart replays
//! the inputs not yet batched from the base snapshot kept for them). And a signed intent's
//! nonce stays used once the segment that logged it is deleted.

use optio_gateway::{Config, Gateway};
use optio_state::Batcher;
use optio_types::{
    AccountId, Address, Amount, Command, EngineLimits, InstrumentId, InstrumentSpec, MONEY_SCALE,
    NewOrder, OrderType, Price, Qty, SelfTradePrevention, Side, TimeInForce,
};

const MAX_OPS: usize = 10;

fn open(dir: &std::path::Path, snapshot_every: u64) -> Gateway {
    open_with(dir, snapshot_every, optio_sequencer::DEFAULT_SEGMENT_BYTES)
}

fn open_with(dir: &std::path::Path, snapshot_every: u64, log_segment_bytes: u64) -> Gateway {
    // Cuts by size only (the age is never reached), so cut points depend on the sequence alone.
    let config = Config {
        batch_max_ops: MAX_OPS,
        batch_max_age_ms: u64::MAX,
        snapshot_every,
        log_segment_bytes,
        ..Config::default()
    };
    Gateway::open(dir, [9; 32], EngineLimits::default(), config).expect("opens")
}

/// Every record the log holds now, added to `seen` (the snapshots delete segments as they go;
/// read again if one goes while it is read).
fn keep_records(
    dir: &std::path::Path,
    seen: &mut std::collections::BTreeMap<u64, optio_types::Input>,
) {
    let records = (0..10)
        .find_map(|_| optio_sequencer::log::read(dir).ok())
        .expect("the log reads");
    for (seq, input, _) in records {
        seen.insert(seq, input);
    }
}

fn order(account: u32, side: Side, price: i64) -> Command {
    Command::PlaceOrder(NewOrder {
        account: AccountId(account),
        instrument: InstrumentId(0),
        side,
        qty: Qty(1_000_000),
        order_type: OrderType::Limit {
            price: Price(price * MONEY_SCALE),
        },
        time_in_force: TimeInForce::GoodTillCancelled,
        post_only: false,
        reduce_only: false,
        self_trade: SelfTradePrevention::CancelTaker,
        client_order_id: 0,
        session_key: None,
    })
}

/// Trades between accounts 0 and 1, `n` of them, prices varying with `round`.
fn trades(round: i64, n: i64) -> Vec<Command> {
    (0..n)
        .flat_map(|k| {
            let price = 5_000 + round * 100 + k;
            let (maker, taker) = if k % 2 == 0 { (0, 1) } else { (1, 0) };
            [
                order(maker, Side::Sell, price),
                order(taker, Side::Buy, price),
            ]
        })
        .collect()
}

/// Lists and activates the option (instrument 0), opens accounts 0 and 1 and funds each.
fn two_funded_accounts() -> Vec<Command> {
    let spec = InstrumentSpec::with_defaults(
        "BTC-26MAR27-100000-C".parse().expect("name"),
        Price(300_000 * MONEY_SCALE),
    );
    let mut setup = vec![
        Command::ListInstrument { spec },
        Command::ActivateInstrument {
            instrument: InstrumentId(0),
        },
    ];
    for a in 0..2u8 {
        setup.push(Command::OpenAccount {
            owner: Address([a + 1; 20]),
        });
        setup.push(Command::Deposit {
            account: AccountId(u32::from(a)),
            amount: Amount(1_000_000 * MONEY_SCALE),
        });
    }
    setup
}

/// Lists and activates the option the signed orders trade (instrument 0).
fn list_option(g: &Gateway) {
    let spec = InstrumentSpec::with_defaults(
        "BTC-26MAR27-100000-C".parse().expect("name"),
        Price(300_000 * MONEY_SCALE),
    );
    assert!(
        g.submit_admin(vec![
            Command::ListInstrument { spec },
            Command::ActivateInstrument {
                instrument: InstrumentId(0)
            },
        ])
        .expect("sequenced")
        .iter()
        .all(Result::is_ok)
    );
}

/// Waits until the batcher has taken everything sequenced, then stops the node.
fn stop(g: Gateway) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let health = |g: &Gateway| g.batch_stats().expect("a node on a data directory batches");
    let target = g.next_seq() - 1;
    while !health(&g).caught_up(target) {
        assert!(
            std::time::Instant::now() < deadline,
            "the batcher did not catch up"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Dropping the gateway stops its writer and batcher threads and waits for them; the batch
    // the batcher held open is lost, as in a crash.
    drop(g);
}

#[test]
fn restarts_between_and_within_batches_commit_the_batches_of_an_uninterrupted_run() {
    for snapshot_every in [0, 7] {
        restarts_commit_the_batches_of_an_uninterrupted_run(
            snapshot_every,
            optio_sequencer::DEFAULT_SEGMENT_BYTES,
        );
    }
    // A segment a group: the snapshots delete those their base covers.
    restarts_commit_the_batches_of_an_uninterrupted_run(7, 256);
}

fn restarts_commit_the_batches_of_an_uninterrupted_run(snapshot_every: u64, segment: u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut seen = std::collections::BTreeMap::new();
    let g = open_with(dir.path(), snapshot_every, segment);
    let setup = two_funded_accounts();
    assert!(
        g.submit_admin(setup)
            .expect("sequenced")
            .iter()
            .all(Result::is_ok)
    );
    keep_records(dir.path(), &mut seen);
    // In groups of four orders (a snapshot may follow each), each group's records read before
    // a later snapshot can delete them.
    let mut submit = |g: &Gateway, commands: Vec<Command>| {
        for group in commands.chunks(4) {
            assert!(
                g.submit_admin(group.to_vec())
                    .expect("sequenced")
                    .iter()
                    .all(Result::is_ok)
            );
            keep_records(dir.path(), &mut seen);
        }
    };
    submit(&g, trades(0, 31));
    let mut trimmed = g.log_trimmed();
    stop(g);
    for round in 1..4 {
        let g = open_with(dir.path(), snapshot_every, segment);
        submit(&g, trades(round, 17 + round * 5));
        trimmed += g.log_trimmed();
        stop(g);
    }
    let first = optio_sequencer::log::segments(dir.path()).expect("listed")[0].0;
    if segment < optio_sequencer::DEFAULT_SEGMENT_BYTES {
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("e").file_name())
            .collect();
        assert!(
            trimmed > 0 && first > 1,
            "the log was not trimmed: {trimmed} {first} {names:?}"
        );
    } else {
        assert_eq!((trimmed, first), (0, 1));
    }

    // One uninterrupted batcher over every input logged.
    let mut engine = optio_engine::Engine::new(EngineLimits::default());
    let mut batcher = Batcher::new(MAX_OPS, u64::MAX);
    let mut expected = Vec::new();
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (1..=seen.len() as u64).collect::<Vec<_>>()
    );
    for (seq, input) in &seen {
        let mut events = Vec::new();
        let _ = engine.apply(input, &mut events);
        expected.extend(batcher.push(*seq, input, &events).expect("batches"));
    }
    let files = optio_gateway::batching::blob_files(&dir.path().join("batches")).expect("listed");
    assert!(expected.len() >= 8, "only {} batches", expected.len());
    assert_eq!(
        files.len(),
        expected.len(),
        "as many batches on disk as an uninterrupted run cuts"
    );
    for (file, want) in files.iter().zip(&expected) {
        assert_eq!(
            std::fs::read(file).expect("blob"),
            want.blob,
            "{}",
            file.display()
        );
        let header = std::fs::read_to_string(file.with_extension("json")).expect("header");
        assert_eq!(header, want.header.to_json(), "{}", file.display());
    }
}

/// The files of the batches L1 has finalized are deleted up to the newest checkpoint among them
/// (never the last batch written); the metrics say how far, a rebuild of what is left starts
/// from the checkpoint and ends at the batcher's root, a restart over the pruned directory goes
/// on, and every batch written after the checkpoint is byte for byte an uninterrupted
/// batcher's.
#[test]
fn finalized_batches_are_pruned_behind_a_checkpoint_and_a_restart_goes_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let batches = dir.path().join("batches");
    let open = || {
        let config = Config {
            batch_max_ops: MAX_OPS,
            batch_max_age_ms: u64::MAX,
            snapshot_every: 0,
            checkpoint_every_batches: 3,
            prune_batches_per_pass: 2,
            ..Config::default()
        };
        Gateway::open(dir.path(), [9; 32], EngineLimits::default(), config).expect("opens")
    };
    let metric = |g: &Gateway, name: &str| {
        g.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")).map(str::to_owned))
    };
    let caught_up = |g: &Gateway| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !g
            .batch_stats()
            .expect("batches")
            .caught_up(g.next_seq() - 1)
        {
            assert!(std::time::Instant::now() < deadline, "no catching up");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    let pruned_to = |g: &Gateway, through: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while g.batch_stats().expect("batches").pruned.through != through {
            assert!(
                std::time::Instant::now() < deadline,
                "not pruned to {through}: {:?}",
                g.batch_stats()
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    let numbers = |ext: &str| -> Vec<u64> {
        let mut v: Vec<u64> = std::fs::read_dir(&batches)
            .expect("lists")
            .filter_map(|e| {
                let name = e.expect("entry").file_name().to_string_lossy().into_owned();
                name.strip_suffix(&format!(".{ext}"))?.parse().ok()
            })
            .collect();
        v.sort_unstable();
        v
    };
    let g = open();
    let setup = two_funded_accounts();
    let submit = |g: &Gateway, commands: Vec<Command>| {
        for group in commands.chunks(4) {
            assert!(
                g.submit_admin(group.to_vec())
                    .expect("sequenced")
                    .iter()
                    .all(Result::is_ok)
            );
        }
    };
    submit(&g, setup);
    submit(&g, trades(0, 90));
    caught_up(&g);
    let written = g.batch_stats().expect("batches").number;
    assert!(written >= 8, "only {written} batches");
    assert_eq!(
        numbers("checkpoint"),
        (3..=written).step_by(3).collect::<Vec<_>>()
    );
    assert_eq!(
        metric(&g, "optio_batches_pruned_through").as_deref(),
        Some("0")
    );
    // Nothing finalized: nothing pruned.
    assert_eq!(numbers("blob"), (1..=written).collect::<Vec<_>>());
    // Batch 7 finalized: the files up to the checkpoint of 6 go, the checkpoints of 3 too.
    std::fs::write(batches.join("00000005.proof.json"), "{}").expect("writes");
    std::fs::write(batches.join("00000007.proof.json"), "{}").expect("writes");
    g.record_finalized_batch(7);
    pruned_to(&g, 6);
    assert_eq!(numbers("blob"), (7..=written).collect::<Vec<_>>());
    assert_eq!(numbers("json"), (7..=written).collect::<Vec<_>>());
    assert_eq!(numbers("proof.json"), vec![7]);
    assert_eq!(numbers("checkpoint")[0], 6);
    assert_eq!(
        metric(&g, "optio_batches_pruned_through").as_deref(),
        Some("6")
    );
    assert_eq!(metric(&g, "optio_batches_finalized").as_deref(), Some("7"));
    assert_eq!(
        metric(&g, "optio_batches_proven_total").as_deref(),
        Some("2")
    );
    assert_eq!(
        metric(&g, "optio_proving_lag_batches"),
        Some((written - 6 - 1).to_string())
    );
    assert_eq!(
        metric(&g, "optio_batches_prune_failed").as_deref(),
        Some("0")
    );
    // A lower report does not move it back.
    g.record_finalized_batch(2);
    assert_eq!(metric(&g, "optio_batches_finalized").as_deref(), Some("7"));
    let (state, number, _) =
        optio_gateway::batching::rebuild_dir(&batches, |_| {}).expect("rebuilds");
    let stats = g.batch_stats().expect("batches");
    assert_eq!(
        (optio_state::poseidon::to_hex(&state.root()), number),
        (stats.root.clone(), stats.number)
    );
    stop(g);

    // A restart over the pruned directory goes on; then everything finalized: the last batch
    // written keeps its files.
    let g = open();
    submit(&g, trades(1, 40));
    caught_up(&g);
    let written = g.batch_stats().expect("batches").number;
    g.record_finalized_batch(written);
    let through = (written - 1) / 3 * 3;
    assert!(through > 6, "{written} batches");
    pruned_to(&g, through);
    assert_eq!(numbers("blob"), (through + 1..=written).collect::<Vec<_>>());
    stop(g);

    // Every batch written after the checkpoint is an uninterrupted batcher's.
    let mut engine = optio_engine::Engine::new(EngineLimits::default());
    let mut batcher = Batcher::new(MAX_OPS, u64::MAX);
    let mut expected = Vec::new();
    for (seq, input, _) in optio_sequencer::log::read(dir.path()).expect("the log reads") {
        let mut events = Vec::new();
        let _ = engine.apply(&input, &mut events);
        expected.extend(batcher.push(seq, &input, &events).expect("batches"));
    }
    let g = open();
    let stats = g.batch_stats().expect("batches");
    assert_eq!(stats.pruned.through, through, "known again at a restart");
    let files = optio_gateway::batching::blob_files(&batches).expect("listed");
    assert_eq!(files.len() as u64, stats.number - through);
    for (file, want) in files.iter().zip(&expected[through as usize..]) {
        assert_eq!(
            std::fs::read(file).expect("blob"),
            want.blob,
            "{}",
            file.display()
        );
    }
    let (state, number, _) =
        optio_gateway::batching::rebuild_dir(&batches, |_| {}).expect("rebuilds");
    assert_eq!(
        (optio_state::poseidon::to_hex(&state.root()), number),
        (stats.root.clone(), stats.number)
    );
    stop(g);

    // The state file lost past a prune: made again from the checkpoint, the node opens at the
    // same batch and root. A damaged checkpoint instead is refused with what to do, and nothing
    // is created or deleted.
    let state_file = batches.join("state.redb");
    let listed = |d: &std::path::Path| {
        let mut names: Vec<String> = std::fs::read_dir(d)
            .expect("lists")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    std::fs::remove_file(&state_file).expect("removes");
    let checkpoint = optio_state::checkpoint::path(&batches, through);
    let good = std::fs::read(&checkpoint).expect("reads");
    let mut damaged = good.clone();
    damaged[good.len() / 2] ^= 1;
    std::fs::write(&checkpoint, &damaged).expect("writes");
    let before = listed(&batches);
    let refused = || {
        let config = Config {
            checkpoint_every_batches: 3,
            ..Config::default()
        };
        Gateway::open(dir.path(), [9; 32], EngineLimits::default(), config)
            .err()
            .expect("refused")
    };
    let err = refused();
    assert_eq!(err.code(), "state_file_unrestorable", "{err}");
    assert!(
        err.to_string().contains("would not restore it")
            && err.to_string().contains("checkpoint checksum"),
        "{err}"
    );
    assert_eq!(listed(&batches), before);
    std::fs::write(&checkpoint, &good).expect("writes");
    let g = open();
    let restored = g.batch_stats().expect("batches");
    assert_eq!(
        (restored.number, restored.root.clone()),
        (stats.number, stats.root.clone())
    );
    assert!(state_file.is_file());
    stop(g);

    // A damaged state file is refused as such and left as it was; moved aside, it is made
    // again.
    let mut bytes = std::fs::read(&state_file).expect("reads");
    let n = bytes.len().min(4096);
    bytes[..n].fill(0x5a);
    std::fs::write(&state_file, &bytes).expect("writes");
    let err = refused();
    assert_eq!(err.code(), "state_file_corrupt", "{err}");
    assert!(err.to_string().contains("moved aside"), "{err}");
    assert_eq!(std::fs::read(&state_file).expect("reads"), bytes);
    std::fs::rename(&state_file, dir.path().join("state.redb.damaged")).expect("moves");
    let g = open();
    let stats_again = g.batch_stats().expect("batches");
    assert_eq!(
        (stats_again.number, stats_again.root),
        (stats.number, stats.root)
    );
    stop(g);
}

/// An order's client label (logged with the signed intent, kept in snapshots), its history and
/// its intent status survive a restart.
#[test]
fn labels_history_and_intent_statuses_survive_a_restart() {
    for snapshot_every in [0, 1] {
        labels_history_and_intent_statuses_survive(snapshot_every);
    }
}

fn labels_history_and_intent_statuses_survive(snapshot_every: u64) {
    use secp256k1::SecretKey;
    let dir = tempfile::tempdir().expect("temp dir");
    let key = SecretKey::from_secret_bytes([0x42; 32]).expect("key");
    let address = optio_intents::address_of(&secp256k1::PublicKey::from_secret_key(&key));
    let (subaccount, status) = {
        let g = open(dir.path(), snapshot_every);
        list_option(&g);
        let subaccount = g
            .fund(address, Amount(100_000 * MONEY_SCALE))
            .expect("funded");
        let config = Config::default();
        let request = optio_gateway::client::OrderRequest {
            subaccount,
            instrument_id: 0,
            instrument_name: "BTC-26MAR27-100000-C",
            direction: "buy",
            price: "1000",
            amount: "0.1",
            max_fee: "100",
            nonce: optio_gateway::dated_nonce(optio_gateway::now_ms(), 1),
            expiry: optio_gateway::now_ms() / 1_000 + 3_600,
            time_in_force: "gtc",
        };
        let mut params = optio_gateway::client::order_params(
            &key,
            config.chain_id,
            config.verifying_contract,
            &request,
        )
        .expect("signs");
        params["label"] = "mm-quote-7".into();
        let placed = g
            .call("private/order", &params, &Default::default())
            .expect("placed");
        let status = g
            .call(
                "public/get_intent_status",
                &serde_json::json!({"intent_hash": placed["receipt"]["intent_hash"]}),
                &Default::default(),
            )
            .expect("its status");
        stop(g);
        (subaccount, status)
    };
    let g = open(dir.path(), snapshot_every);
    let ts = optio_gateway::now_ms().to_string();
    let mut message = format!("\x19Ethereum Signed Message:\n{}", ts.len()).into_bytes();
    message.extend_from_slice(ts.as_bytes());
    let sig = optio_intents::sign(&key, &optio_intents::keccak(&message));
    let hex = |b: &[u8]| {
        b.iter()
            .fold(String::from("0x"), |s, x| s + &format!("{x:02x}"))
    };
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("x-optiowallet", hex(&address).parse().expect("header"));
    headers.insert("x-optiotimestamp", ts.parse().expect("header"));
    headers.insert("x-optiosignature", hex(&sig).parse().expect("header"));
    let open_orders = g
        .call(
            "private/get_open_orders",
            &serde_json::json!({"subaccount_id": subaccount}),
            &headers,
        )
        .expect("authorized");
    assert_eq!(open_orders[0]["label"], "mm-quote-7", "{open_orders}");
    let after = g
        .call(
            "public/get_intent_status",
            &serde_json::json!({"intent_hash": status["intent_hash"]}),
            &Default::default(),
        )
        .expect("its status after the restart");
    assert_eq!(after["seq"], status["seq"], "{after}");
    assert_eq!(after["status"], status["status"], "{after}");
    if snapshot_every > 0 {
        assert!(
            dir.path().join("snapshot.bin").exists(),
            "the node took a snapshot"
        );
    }
    stop(g);
}

/// The provers' progress shows in the metrics: batches with a proof file, batches marked not
/// provable, the newest proving time, and the lag of written batches neither proven nor marked.
#[test]
fn metrics_show_the_provers_progress() {
    let dir = tempfile::tempdir().expect("temp dir");
    let g = open(dir.path(), 0);
    let metric = |g: &Gateway, name: &str| {
        g.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")).map(str::to_owned))
    };
    assert_eq!(
        metric(&g, "optio_batches_proven_total").as_deref(),
        Some("0")
    );
    assert_eq!(
        metric(&g, "optio_engine_rules"),
        Some(optio_engine::RULES.to_string()),
        "the rules the node applies"
    );
    assert_eq!(metric(&g, "optio_prove_seconds"), None, "no proof yet");
    let batches = dir.path().join("batches");
    std::fs::write(batches.join("00000001.unprovable"), "op 0: ListInstrument").expect("write");
    std::fs::write(
        batches.join("00000002.proof.json"),
        r#"{"prove_seconds":1.5}"#,
    )
    .expect("write");
    std::fs::write(
        batches.join("00000003.proof.json"),
        r#"{"prove_seconds":2.5}"#,
    )
    .expect("write");
    assert_eq!(
        metric(&g, "optio_batches_proven_total").as_deref(),
        Some("2")
    );
    assert_eq!(
        metric(&g, "optio_batches_unprovable_total").as_deref(),
        Some("1")
    );
    assert_eq!(
        metric(&g, "optio_prove_seconds").as_deref(),
        Some("2.5"),
        "the newest"
    );
    assert_eq!(
        metric(&g, "optio_proving_lag_batches").as_deref(),
        Some("0")
    );
}

/// How long sequenced inputs have waited for L1 shows in the metrics: from the node's start
/// until the settler's first report, then from the last time the committed batches reached
/// further, and 0 while everything sequenced is committed.
#[test]
fn metrics_show_how_long_inputs_wait_for_l1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = optio_gateway::Clock::manual(1_800_000_000_000);
    let config = Config {
        clock: clock.clone(),
        ..Config::default()
    };
    let g = Gateway::open(dir.path(), [9; 32], EngineLimits::default(), config).expect("opens");
    let wait = |g: &Gateway| {
        g.metrics().lines().find_map(|l| {
            l.strip_prefix("optio_l1_commit_wait_seconds ")
                .map(str::to_owned)
        })
    };
    assert_eq!(wait(&g).as_deref(), Some("0"), "nothing sequenced");
    g.fund([1; 20], Amount(1_000 * MONEY_SCALE)).expect("funds");
    clock.advance(90_000);
    assert_eq!(wait(&g).as_deref(), Some("90"), "since the node opened");
    let progress = |seq: u64| optio_gateway::L1Progress {
        committed_seq: seq,
        proven_seq: 0,
        finalized_seq: 0,
    };
    let last = g.next_seq() - 1;
    g.record_l1(progress(last));
    assert_eq!(wait(&g).as_deref(), Some("0"), "all committed");
    clock.advance(5_000);
    g.fund([2; 20], Amount(1_000 * MONEY_SCALE)).expect("funds");
    clock.advance(30_000);
    assert_eq!(
        wait(&g).as_deref(),
        Some("35"),
        "since the committed batches last reached further"
    );
}

/// The limits a proof's shape sets come through the log (`Command::SetProofLimits`), never
/// from the configuration alone: a fresh node sequences its prover keys' limits first; a
/// restart with the same keys sequences nothing; with other keys, their limits over the
/// snapshot's; the log replayed from genesis (no snapshot) gives the same engine; a node
/// without keys goes back to no bound.
#[test]
fn a_proofs_limits_come_through_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open_with = |proof: optio_types::ProofLimits, snapshot_every: u64| {
        let config = Config {
            batch_max_ops: MAX_OPS,
            batch_max_age_ms: u64::MAX,
            snapshot_every,
            ..Config::default()
        };
        Gateway::open(
            dir.path(),
            [9; 32],
            EngineLimits::default().with_proof(proof),
            config,
        )
        .expect("opens")
    };
    let small = optio_types::ProofLimits {
        max_positions_to_withdraw: 4,
        fill_budget: optio_types::FillBudget {
            fills: 4,
            accounts: 4,
            windows: 2,
            prices: 1,
            window_bits: 2,
            ..optio_types::FillBudget::UNBOUNDED
        },
        mark_windows: optio_types::MarkWindows {
            windows: 1,
            bits: 4,
        },
        settle_budget: optio_types::SettleBudget {
            expiries: 2,
            slots: 1,
            holders: 4,
        },
    };
    let large = optio_types::ProofLimits {
        max_positions_to_withdraw: 8,
        mark_windows: optio_types::MarkWindows {
            windows: 2,
            bits: 6,
        },
        ..small
    };
    let limits = |g: &Gateway| g.canonical_state().limits.proof();

    let g = open_with(small, 1);
    assert_eq!(
        (g.next_seq(), limits(&g)),
        (2, small),
        "the log's first input"
    );
    stop(g);
    let g = open_with(small, 1);
    assert_eq!((g.next_seq(), limits(&g)), (2, small), "nothing sequenced");
    stop(g);
    let g = open_with(large, 1);
    assert_eq!(
        (g.next_seq(), limits(&g)),
        (3, large),
        "the new keys' limits"
    );
    stop(g);
    let snapshot = dir.path().join("snapshot.bin");
    assert!(snapshot.exists(), "a snapshot to restore from");
    std::fs::remove_file(&snapshot).expect("removed");
    let g = open_with(large, 0);
    assert_eq!(
        (g.next_seq(), limits(&g)),
        (3, large),
        "replayed from genesis"
    );
    stop(g);
    let g = open_with(optio_types::ProofLimits::UNBOUNDED, 0);
    assert_eq!(
        (g.next_seq(), limits(&g)),
        (4, optio_types::ProofLimits::UNBOUNDED),
        "no keys, no bound"
    );
    stop(g);
}

/// A signed order's nonce stays used across a restart after the log segment that held its
/// intent was deleted: the snapshot keeps the nonces whose signatures are still valid.
#[test]
fn a_nonce_stays_used_after_its_log_segment_is_deleted() {
    use secp256k1::SecretKey;
    let dir = tempfile::tempdir().expect("temp dir");
    let key = SecretKey::from_secret_bytes([0x42; 32]).expect("key");
    let address = optio_intents::address_of(&secp256k1::PublicKey::from_secret_key(&key));
    let config = Config::default();
    let nonce = optio_gateway::dated_nonce(optio_gateway::now_ms(), 7);
    let signed = |price: &str| {
        let request = optio_gateway::client::OrderRequest {
            subaccount: 0,
            instrument_id: 0,
            instrument_name: "BTC-26MAR27-100000-C",
            direction: "buy",
            price,
            amount: "0.1",
            max_fee: "100",
            nonce,
            expiry: optio_gateway::now_ms() / 1_000 + 3_600,
            time_in_force: "gtc",
        };
        optio_gateway::client::order_params(
            &key,
            config.chain_id,
            config.verifying_contract,
            &request,
        )
        .expect("signs")
    };
    let g = open_with(dir.path(), 1, 256);
    list_option(&g);
    assert_eq!(
        g.fund(address, Amount(1_000_000 * MONEY_SCALE)),
        Ok(0),
        "the signer's account"
    );
    assert_eq!(
        g.fund(
            optio_intents::Address::from([2; 20]),
            Amount(1_000_000 * MONEY_SCALE)
        ),
        Ok(1)
    );
    g.call("private/order", &signed("1000"), &Default::default())
        .expect("placed");
    // Trades after it, until the batches cover it and a snapshot deletes its segment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut round = 0;
    while dir.path().join("wal.log").exists() {
        assert!(std::time::Instant::now() < deadline, "its segment stays");
        for group in trades(round, 3).chunks(2) {
            assert!(
                g.submit_admin(group.to_vec())
                    .expect("sequenced")
                    .iter()
                    .all(Result::is_ok)
            );
        }
        round += 1;
    }
    // The metrics show the log on disk and what the snapshots deleted.
    let metric = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    while metric(&g.metrics(), "optio_wal_trimmed_bytes_total") == 0 {
        assert!(std::time::Instant::now() < deadline, "no trim counted");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let on_disk = optio_sequencer::log::size(dir.path()).expect("sized");
    let metrics = g.metrics();
    assert_eq!(metric(&metrics, "optio_wal_segments"), on_disk.0 as u64);
    assert_eq!(metric(&metrics, "optio_wal_bytes"), on_disk.1);
    stop(g);
    let g = open_with(dir.path(), 1, 256);
    assert_eq!(
        metric(&g.metrics(), "optio_nonces_remembered"),
        1,
        "the snapshot's nonce, held again"
    );
    // Another order under the same nonce: refused, nothing sequenced.
    let before = (g.next_seq(), g.state_hash());
    match g.call("private/order", &signed("1001"), &Default::default()) {
        Err(optio_gateway::CallError::Gateway(e)) => assert_eq!(e.code(), 6_003, "{e:?}"),
        other => panic!("a used nonce was taken again: {other:?}"),
    }
    assert_eq!((g.next_seq(), g.state_hash()), before);
    stop(g);
}
