//! The node's batcher across restarts: a node stopped between batches and in the middle of one
//! (its queue and pending ops lost, as in a crash) resumes from its blobs and the log, and the
//! batches on disk are byte for byte those of one uninterrupted batcher over the same log.

use optio_gateway::{Config, Gateway};
use optio_state::Batcher;
use optio_types::{
    AccountId, Address, Amount, Command, EngineLimits, InstrumentId, InstrumentSpec, MONEY_SCALE,
    NewOrder, OrderType, Price, Qty, SelfTradePrevention, Side, TimeInForce,
};

const MAX_OPS: usize = 10;

fn open(dir: &std::path::Path) -> Gateway {
    // Cuts by size only (the age is never reached), so cut points depend on the sequence alone.
    let config = Config {
        batch_max_ops: MAX_OPS,
        batch_max_age_ms: u64::MAX,
        ..Config::default()
    };
    Gateway::open(dir, [9; 32], EngineLimits::default(), config).expect("opens")
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
    drop(g);
    // The writer and batcher threads see their channels close and stop (the batcher polls
    // every 100 ms); what they held pending is lost, as in a crash.
    std::thread::sleep(std::time::Duration::from_millis(300));
}

#[test]
fn restarts_between_and_within_batches_commit_the_batches_of_an_uninterrupted_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let g = open(dir.path());
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
    assert!(
        g.submit_admin(setup)
            .expect("sequenced")
            .iter()
            .all(Result::is_ok)
    );
    assert!(
        g.submit_admin(trades(0, 31))
            .expect("sequenced")
            .iter()
            .all(Result::is_ok)
    );
    stop(g);
    for round in 1..4 {
        let g = open(dir.path());
        assert!(
            g.submit_admin(trades(round, 17 + round * 5))
                .expect("sequenced")
                .iter()
                .all(Result::is_ok)
        );
        stop(g);
    }

    // One uninterrupted batcher over the whole log.
    let (_, records) = optio_sequencer::Wal::open(&dir.path().join("wal.log")).expect("log");
    let mut engine = optio_engine::Engine::new(EngineLimits::default());
    let mut batcher = Batcher::new(MAX_OPS, u64::MAX);
    let mut expected = Vec::new();
    for (seq, input, _) in &records {
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
