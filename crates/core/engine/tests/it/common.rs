//! Builders shared by the tests: a small market, accounts and order shorthands.

use optio_engine::Engine;
use optio_types::{
    AccountId, Address, Amount, Command, EngineLimits, Event, Input, InstrumentId, InstrumentSpec,
    MONEY_SCALE, NewOrder, OrderType, Price, Qty, RejectCode, SelfTradePrevention, Side,
    TimeInForce,
};

/// 2024-12-21T07:00:00Z: one hour before the short-dated option expires.
pub const T0: u64 = 1_734_764_400_000;
/// One contract step (0.01).
pub const STEP: i64 = 1_000_000;
/// One tick (0.1 USDC).
pub const TICK: i64 = 100_000;

pub fn usd(x: i64) -> Amount {
    Amount(x * MONEY_SCALE)
}

pub fn px(x: i64) -> Price {
    Price(x * MONEY_SCALE)
}

/// The instruments every test market lists, in id order: a long-dated call (0), a put that
/// expires at 08:00 on T0's day (1), a perpetual (2), and an unactivated call (3).
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

pub fn owner(n: u8) -> Address {
    Address([n; 20])
}

/// The setup inputs: instruments listed (three activated), `accounts` accounts owned round-robin
/// by three owners, each funded with `deposit`.
pub fn setup(accounts: u32, deposit: Amount) -> Vec<Input> {
    let mut inputs = Vec::new();
    let at = |command| Input {
        time_ms: T0,
        command,
    };
    for spec in specs() {
        inputs.push(at(Command::ListInstrument { spec }));
    }
    for i in 0..3 {
        inputs.push(at(Command::ActivateInstrument {
            instrument: InstrumentId(i),
        }));
    }
    for a in 0..accounts {
        inputs.push(at(Command::OpenAccount {
            owner: owner((a % 3) as u8 + 1),
        }));
        inputs.push(at(Command::Deposit {
            account: AccountId(a),
            amount: deposit,
        }));
    }
    inputs
}

pub fn engine_with(limits: EngineLimits, accounts: u32, deposit: Amount) -> Engine {
    let mut engine = Engine::new(limits);
    let mut events = Vec::new();
    for input in setup(accounts, deposit) {
        engine
            .apply(&input, &mut events)
            .expect("setup input accepted");
    }
    engine
}

pub fn limit(account: u32, instrument: u32, side: Side, price: Price, qty: i64) -> NewOrder {
    NewOrder {
        account: AccountId(account),
        instrument: InstrumentId(instrument),
        side,
        qty: Qty(qty * STEP),
        order_type: OrderType::Limit { price },
        time_in_force: TimeInForce::GoodTillCancelled,
        post_only: false,
        reduce_only: false,
        self_trade: SelfTradePrevention::CancelTaker,
        client_order_id: 0,
        session_key: None,
    }
}

/// Applies a command at `time` and returns its events, or its rejection.
pub fn run(engine: &mut Engine, time: u64, command: Command) -> Result<Vec<Event>, RejectCode> {
    let mut events = Vec::new();
    engine
        .apply(
            &Input {
                time_ms: time,
                command,
            },
            &mut events,
        )
        .map(|()| events)
}

pub fn fills(events: &[Event]) -> Vec<(u64, u64, i64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Fill {
                maker_order,
                taker_order,
                qty,
                ..
            } => Some((maker_order.0, taker_order.0, qty.0 / STEP)),
            _ => None,
        })
        .collect()
}
