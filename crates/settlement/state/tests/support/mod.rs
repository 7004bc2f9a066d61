//! Random engine histories and the batcher run over them, shared by the settlement tests and the
//! prover's (which includes this file): options, a perpetual, oracle updates, orders, L1
//! deposits and withdrawals, liquidations, expiry and settlement.

#![allow(dead_code)]

use optio_engine::Engine;
use optio_oracle::{SettlementFeed, build_update};
use optio_pricing::risk::default_scenarios;
use optio_pricing::svi::{Slice, Surface, Svi};
use optio_state::{Batch, Batcher};
use optio_types::{
    AccountId, Address, Amount, Command, EngineLimits, Input, InstrumentId, InstrumentSpec,
    MONEY_SCALE, MarginMode, NewOrder, OrderType, Price, Qty, SelfTradePrevention, Side,
    TimeInForce,
};
use rand::{Rng, SeedableRng};

/// One hour before the put expires.
pub const T0: u64 = 1_734_764_400_000;
pub const STEP: i64 = 1_000_000;

pub fn px(x: i64) -> Price {
    Price(x * MONEY_SCALE)
}

pub fn specs() -> Vec<InstrumentSpec> {
    [
        "BTC-27DEC24-60000-C",
        "BTC-21DEC24-60000-P",
        "BTC-PERPETUAL",
        "BTC-27DEC24-70000-C",
    ]
    .iter()
    .map(|n| InstrumentSpec::with_defaults(n.parse().expect("valid name"), px(100_000)))
    .collect()
}

/// A good-till-cancelled limit order of `account` for `steps` amount steps of `instrument`.
pub fn limit(account: u32, instrument: u32, side: Side, price: Price, steps: i64) -> Command {
    Command::PlaceOrder(NewOrder {
        account: AccountId(account),
        instrument: InstrumentId(instrument),
        side,
        qty: Qty(steps * STEP),
        order_type: OrderType::Limit { price },
        time_in_force: TimeInForce::GoodTillCancelled,
        post_only: false,
        reduce_only: false,
        self_trade: SelfTradePrevention::CancelTaker,
        client_order_id: 0,
        session_key: None,
    })
}

/// The risk oracle's key in these histories.
pub const ORACLE_KEY: [u8; 32] = [0x0c; 32];

/// The rollup the histories' marks are signed for.
pub fn venue() -> optio_state::auth::Venue {
    optio_state::auth::Venue {
        chain_id: 31_337,
        rollup: Address([0x99; 20]),
    }
}

/// The oracle's update with the index at `spot`, published at `at`, each mark signed for
/// `venue()`.
pub fn oracle(spot: f64, at: u64) -> Command {
    oracle_settling(&mut SettlementFeed::new(WINDOW_MS), spot, at)
}

/// The settlement window the histories' oracle averages over.
const WINDOW_MS: u64 = 30 * 60_000;

/// `oracle(spot, at)` with the settlement prices `feed` has due (its index recorded), each
/// signed for `venue()` too.
pub fn oracle_settling(feed: &mut SettlementFeed, spot: f64, at: u64) -> Command {
    let svi = Svi {
        a: 0.002,
        b: 0.03,
        rho: -0.3,
        m: 0.0,
        sigma: 0.2,
    };
    let surface = Surface::new(
        spot,
        0.0,
        vec![
            Slice { t: 0.01, svi },
            Slice {
                t: 0.1,
                svi: Svi { a: 0.02, ..svi },
            },
        ],
    )
    .expect("valid surface");
    let specs = specs();
    let list = optio_oracle::numbered(&specs);
    let mut update =
        build_update("BTC", &surface, &default_scenarios(), &list, at).expect("builds");
    feed.attach(&mut update, &list);
    let domain = venue()
        .separator(optio_state::auth::domain::OPTIO)
        .expect("Optio's domain");
    let signer = optio_oracle::OracleSigner::from_bytes(ORACLE_KEY).expect("oracle key");
    Command::OracleUpdate(signer.sign(update, &domain).update)
}

/// A history: a market with four instruments and eight accounts of three owners, then random
/// orders, cancels, deposits, withdrawals, L1 deposits and forced withdrawals (some out of queue
/// order, some to new accounts or not the requester's), transfers, session keys, margin modes,
/// oracle moves (with crashes that start liquidations), liquidations, deleveraging, expiry and
/// settlement.
pub fn history(seed: u64, len: usize) -> Vec<Input> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut t = T0;
    let mut inputs = Vec::new();
    let mut push = |t: u64, command| {
        inputs.push(Input {
            time_ms: t,
            command,
        })
    };
    for spec in specs() {
        push(t, Command::ListInstrument { spec });
    }
    for i in 0..3 {
        push(
            t,
            Command::ActivateInstrument {
                instrument: InstrumentId(i),
            },
        );
    }
    for a in 0..8u32 {
        push(
            t,
            Command::OpenAccount {
                owner: Address([(a % 3) as u8 + 1; 20]),
            },
        );
        push(
            t,
            Command::Deposit {
                account: AccountId(a),
                amount: Amount(rng.random_range(20_000..200_000) * MONEY_SCALE),
            },
        );
    }
    let mut spot = 60_000.0;
    let mut priority = 0u64;
    let mut feed = SettlementFeed::new(WINDOW_MS);
    push(t, oracle_settling(&mut feed, spot, t));
    // Half the accounts on standard (leveraged) margin, so that crashes liquidate some.
    for a in 0..4 {
        push(
            t,
            Command::SetMarginMode {
                account: AccountId(a),
                mode: MarginMode::Standard,
            },
        );
    }
    for _ in 0..len {
        let account = AccountId(rng.random_range(0..8));
        let command = match rng.random_range(0..100) {
            0..=54 => {
                let instrument = rng.random_range(0..3u32);
                let side = if rng.random_bool(0.5) {
                    Side::Buy
                } else {
                    Side::Sell
                };
                let base = if instrument == 2 { spot } else { 3_000.0 };
                let price = ((base * rng.random_range(0.95..1.05)) as i64).max(1) * MONEY_SCALE;
                Command::PlaceOrder(NewOrder {
                    account,
                    instrument: InstrumentId(instrument),
                    side,
                    qty: Qty(rng.random_range(1..if instrument == 2 { 300 } else { 40 }) * STEP),
                    order_type: OrderType::Limit {
                        price: Price(price),
                    },
                    time_in_force: if rng.random_bool(0.3) {
                        TimeInForce::ImmediateOrCancel
                    } else {
                        TimeInForce::GoodTillCancelled
                    },
                    post_only: false,
                    reduce_only: false,
                    self_trade: SelfTradePrevention::CancelTaker,
                    client_order_id: 0,
                    session_key: None,
                })
            }
            55..=59 => Command::CancelAll {
                account,
                instrument: None,
            },
            60..=61 => Command::Deposit {
                account,
                amount: Amount(rng.random_range(1..5_000) * MONEY_SCALE),
            },
            62..=63 => {
                // One in ten skips ahead of the queue (refused); the rest serve the next id.
                let id = if rng.random_bool(0.1) {
                    priority + 1
                } else {
                    priority += 1;
                    priority - 1
                };
                let owner = Address([rng.random_range(1..=4); 20]);
                if rng.random_bool(0.4) {
                    Command::L1Deposit {
                        priority: id,
                        owner,
                        account: AccountId(rng.random_range(0..11)),
                        amount: Amount(rng.random_range(1..5_000) * MONEY_SCALE),
                    }
                } else if rng.random_bool(0.5) {
                    // A forced close, against account 0 (margined) as the backstop, mostly
                    // by the account's owner.
                    let account = rng.random_range(1..8u32);
                    let owner = if rng.random_bool(0.8) {
                        Address([(account % 3) as u8 + 1; 20])
                    } else {
                        owner
                    };
                    Command::L1Close {
                        priority: id,
                        owner,
                        account: AccountId(account),
                        instrument: InstrumentId(rng.random_range(0..3)),
                        counterparty: AccountId(0),
                    }
                } else {
                    Command::L1Withdrawal {
                        priority: id,
                        owner,
                        account,
                    }
                }
            }
            64..=67 => Command::Withdraw {
                account,
                amount: Amount(rng.random_range(1..20_000) * MONEY_SCALE),
            },
            68..=70 => Command::Transfer {
                from: account,
                to: AccountId((account.0 + 3) % 8),
                amount: Amount(rng.random_range(1..5_000) * MONEY_SCALE),
            },
            71..=72 => Command::SetSessionKey {
                account,
                key: Address([rng.random_range(10..13); 20]),
                expiry_ms: if rng.random_bool(0.7) {
                    t + 3_600_000
                } else {
                    0
                },
            },
            73..=75 => Command::SetMarginMode {
                account,
                mode: if rng.random_bool(0.7) {
                    MarginMode::Standard
                } else {
                    MarginMode::Portfolio
                },
            },
            76..=85 => {
                t += 1_000;
                spot *= if rng.random_bool(0.08) {
                    0.85
                } else if rng.random_bool(0.08) {
                    1.15
                } else {
                    rng.random_range(0.995..1.005)
                };
                oracle_settling(&mut feed, spot, t)
            }
            86..=93 => Command::Liquidate {
                liquidator: AccountId(rng.random_range(0..8)),
                account,
                instrument: InstrumentId(rng.random_range(0..3)),
                qty: Qty(rng.random_range(1..20) * STEP),
            },
            94..=96 => {
                t += 20_000;
                Command::Deleverage {
                    account,
                    instrument: InstrumentId(rng.random_range(0..3)),
                }
            }
            _ => {
                // Past the put's expiry: it stops trading and, once the oracle has an index
                // sample in its window, settles at the oracle's price (an update 10 minutes
                // before the expiry gives it one, when the history is not past it yet).
                let expiry = T0 + 3_600_000;
                if t < expiry - 600_000 {
                    t = expiry - 600_000;
                    push(t, oracle_settling(&mut feed, spot, t));
                }
                t = t.max(expiry) + 60_000;
                oracle_settling(&mut feed, spot, t)
            }
        };
        push(t, command);
    }
    inputs
}

/// Runs a history through the engine and a batcher cutting every `max_ops` ops; checks the
/// settlement state against the engine at every cut. Returns the batches and the engine.
pub fn run(inputs: &[Input], max_ops: usize) -> (Vec<Batch>, Engine, Batcher) {
    let mut engine = Engine::new(EngineLimits::default());
    let mut batcher = Batcher::new(max_ops, u64::MAX);
    let mut batches = Vec::new();
    let mut events = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        events.clear();
        let _ = engine.apply(input, &mut events);
        if let Some(batch) = batcher
            .push(i as u64 + 1, input, &events)
            .expect("every engine history batches")
        {
            // A batch cut before this input (money leaving after a pending mark) is checked with
            // the next one: the engine has already applied the input.
            if batch.header.last_seq == i as u64 + 1 {
                assert_eq!(
                    batcher.state().diff_engine(&engine.canonical()),
                    None,
                    "after batch {}",
                    batch.header.number
                );
                assert_eq!(batch.header.priority_served, engine.priority_served());
            }
            batches.push(batch);
        }
    }
    if let Some(batch) = batcher.flush().expect("flushes") {
        batches.push(batch);
    }
    assert_eq!(
        batcher.state().diff_engine(&engine.canonical()),
        None,
        "at the end"
    );
    (batches, engine, batcher)
}
