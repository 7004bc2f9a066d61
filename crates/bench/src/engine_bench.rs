//! The engine benchmark: one generated stream of limit orders (passive and crossing), cancels,
//! amends and market orders over many instruments, replayed through
//! - Optio's engine, with margin checks, fees, the ledger and the per-input invariant checks on;
//! - `matchcore` 0.4 (one `OrderBook` per instrument; amends as its native amend, market orders
//!   as IOC limits at the same protection price);
//! - `lobster` 0.7 (one `OrderBook` per instrument; no amend, so cancel + new; market orders as
//!   its market order, which has no protection price).
//!
//! Throughput is the best of `--rounds` full replays on fresh books; latency comes from a
//! separate replay that times every input (timer overhead printed beside it).

use std::time::Instant;

use hdrhistogram::Histogram;
use optio_engine::Engine;
use optio_types::{
    AccountId, Address, Amount, Command, EngineLimits, Event, Input, InstrumentId, InstrumentSpec,
    MONEY_SCALE, NewOrder, OrderRef, OrderType, Price, Qty, SelfTradePrevention, Side, TimeInForce,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TICK: i64 = 100_000;
const STEP: i64 = 1_000_000;
const T0: u64 = 1_735_000_000_000;

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Inputs in the stream.
    #[arg(long, default_value_t = 1_000_000)]
    inputs: usize,
    /// Instruments (one book each).
    #[arg(long, default_value_t = 64)]
    instruments: u32,
    /// Trading accounts.
    #[arg(long, default_value_t = 256)]
    accounts: u32,
    /// Full replays per engine for the throughput figure (best is kept).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Stream seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Run only Optio (for profiling).
    #[arg(long)]
    optio_only: bool,
}

#[derive(Clone, Copy)]
enum Op {
    Limit {
        inst: u32,
        account: u32,
        side: Side,
        price: i64,
        qty: i64,
        cid: u64,
    },
    Cancel {
        inst: u32,
        account: u32,
        cid: u64,
    },
    Amend {
        inst: u32,
        account: u32,
        cid: u64,
        side: Side,
        price: i64,
        qty: i64,
    },
    Market {
        inst: u32,
        account: u32,
        side: Side,
        qty: i64,
        protection: i64,
        cid: u64,
    },
}

struct Live {
    cid: u64,
    account: u32,
    side: Side,
}

/// The stream: about 55% new limit orders (a fifth of them crossing), 25% cancels, 12% amends,
/// 8% market orders; each book holds at most ~300 live orders.
fn generate(args: &Args) -> Vec<Op> {
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut mids: Vec<i64> = (0..args.instruments).map(|_| 20_000).collect();
    let mut live: Vec<Vec<Live>> = (0..args.instruments).map(|_| Vec::new()).collect();
    let mut ops = Vec::with_capacity(args.inputs);
    let mut cid = 0u64;
    for _ in 0..args.inputs {
        let inst = rng.random_range(0..args.instruments);
        let book = &mut live[inst as usize];
        let mid = &mut mids[inst as usize];
        *mid = (*mid + rng.random_range(-1..=1)).clamp(10_000, 30_000);
        let roll: u32 = rng.random_range(0..100);
        let side = if rng.random_bool(0.5) {
            Side::Buy
        } else {
            Side::Sell
        };
        let account = rng.random_range(0..args.accounts);
        let qty = rng.random_range(1..=10);
        if (roll < 25 || book.len() > 300) && !book.is_empty() {
            let o = book.swap_remove(rng.random_range(0..book.len()));
            ops.push(Op::Cancel {
                inst,
                account: o.account,
                cid: o.cid,
            });
        } else if roll < 37 && !book.is_empty() {
            let n = rng.random_range(0..book.len());
            let o = &book[n];
            let away = rng.random_range(1..=20);
            let price = if o.side == Side::Buy {
                *mid - away
            } else {
                *mid + away
            };
            ops.push(Op::Amend {
                inst,
                account: o.account,
                cid: o.cid,
                side: o.side,
                price,
                qty,
            });
        } else if roll < 45 {
            cid += 1;
            let protection = if side == Side::Buy {
                *mid + 30
            } else {
                *mid - 30
            };
            ops.push(Op::Market {
                inst,
                account,
                side,
                qty,
                protection,
                cid,
            });
        } else {
            cid += 1;
            let crossing = roll >= 89;
            let offset = if crossing {
                -rng.random_range(0..=5)
            } else {
                rng.random_range(1..=20)
            };
            let price = if side == Side::Buy {
                *mid - offset
            } else {
                *mid + offset
            };
            ops.push(Op::Limit {
                inst,
                account,
                side,
                price,
                qty,
                cid,
            });
            if !crossing {
                book.push(Live { cid, account, side });
            }
        }
    }
    ops
}

fn spec(n: u32) -> InstrumentSpec {
    let name = format!("BTC-27DEC30-{}-C", 20_000 + 1_000 * n);
    InstrumentSpec::with_defaults(
        name.parse().expect("generated names are valid"),
        Price(1_000_000 * MONEY_SCALE),
    )
}

/// The benchmark's default stream (`inputs` long) through Optio's engine, market set up: the
/// engine and the inputs (for other benchmarks that need an engine-made flow of fills).
pub(crate) fn default_stream(inputs: usize) -> (Engine, Vec<Input>) {
    let args = Args {
        inputs,
        instruments: 64,
        accounts: 256,
        rounds: 1,
        seed: 7,
        optio_only: true,
    };
    optio_setup(&args, &generate(&args))
}

/// Optio's engine with the market set up, and the stream translated to inputs.
fn optio_setup(args: &Args, ops: &[Op]) -> (Engine, Vec<Input>) {
    let limits = EngineLimits {
        max_open_orders_per_account: 10_000,
        ..EngineLimits::default()
    };
    let mut engine = Engine::new(limits);
    let mut events = Vec::new();
    let mut setup = Vec::new();
    for n in 0..args.instruments {
        setup.push(Command::ListInstrument { spec: spec(n) });
        setup.push(Command::ActivateInstrument {
            instrument: InstrumentId(n),
        });
    }
    for a in 0..args.accounts {
        let mut owner = [0u8; 20];
        owner[..4].copy_from_slice(&a.to_le_bytes());
        setup.push(Command::OpenAccount {
            owner: Address(owner),
        });
        setup.push(Command::Deposit {
            account: AccountId(a),
            amount: Amount(1_000_000_000 * MONEY_SCALE),
        });
    }
    for command in setup {
        engine
            .apply(
                &Input {
                    time_ms: T0,
                    command,
                },
                &mut events,
            )
            .expect("setup is valid");
    }
    let order = |inst: u32, account: u32, side, price: i64, qty: i64, cid, tif, market: bool| {
        let order_type = if market {
            OrderType::Market {
                protection_price: Some(Price(price * TICK)),
            }
        } else {
            OrderType::Limit {
                price: Price(price * TICK),
            }
        };
        Command::PlaceOrder(NewOrder {
            account: AccountId(account),
            instrument: InstrumentId(inst),
            side,
            qty: Qty(qty * STEP),
            order_type,
            time_in_force: tif,
            post_only: false,
            reduce_only: false,
            self_trade: SelfTradePrevention::CancelTaker,
            client_order_id: cid,
            session_key: None,
        })
    };
    let inputs = ops
        .iter()
        .enumerate()
        .map(|(i, op)| {
            let command = match *op {
                Op::Limit {
                    inst,
                    account,
                    side,
                    price,
                    qty,
                    cid,
                } => order(
                    inst,
                    account,
                    side,
                    price,
                    qty,
                    cid,
                    TimeInForce::GoodTillCancelled,
                    false,
                ),
                Op::Market {
                    inst,
                    account,
                    side,
                    qty,
                    protection,
                    cid,
                } => order(
                    inst,
                    account,
                    side,
                    protection,
                    qty,
                    cid,
                    TimeInForce::ImmediateOrCancel,
                    true,
                ),
                Op::Cancel { account, cid, .. } => Command::Cancel {
                    account: AccountId(account),
                    order: OrderRef::Client(cid),
                },
                Op::Amend {
                    account,
                    cid,
                    price,
                    qty,
                    ..
                } => Command::Amend {
                    account: AccountId(account),
                    order: OrderRef::Client(cid),
                    price: Price(price * TICK),
                    qty: Qty(qty * STEP),
                },
            };
            Input {
                time_ms: T0 + (i as u64 / 1_000),
                command,
            }
        })
        .collect();
    (engine, inputs)
}

trait Venue {
    fn name(&self) -> &'static str;
    fn apply(&mut self, i: usize);
    /// Total size traded (in steps), for a sanity check that all venues did comparable work.
    fn traded(&self) -> u64;
}

struct Optio {
    engine: Engine,
    inputs: Vec<Input>,
    events: Vec<Event>,
    traded: u64,
    rejected: u64,
}

impl Venue for Optio {
    fn name(&self) -> &'static str {
        "optio (margin on)"
    }
    fn apply(&mut self, i: usize) {
        self.events.clear();
        if self
            .engine
            .apply(&self.inputs[i], &mut self.events)
            .is_err()
        {
            self.rejected += 1;
        }
        for e in &self.events {
            if let Event::Fill { qty, .. } = e {
                self.traded += (qty.0 / STEP) as u64;
            }
        }
    }
    fn traded(&self) -> u64 {
        self.traded
    }
}

struct MatchCore {
    books: Vec<matchcore::OrderBook>,
    ids: Vec<Option<matchcore::OrderId>>,
    ops: Vec<Op>,
    /// matchcore wants each book's sequence numbers contiguous from 0.
    seqs: Vec<u64>,
    traded: u64,
}

impl MatchCore {
    fn new(instruments: u32, ops: &[Op]) -> Self {
        let max_cid = ops.iter().map(|o| match *o {
            Op::Limit { cid, .. }
            | Op::Market { cid, .. }
            | Op::Cancel { cid, .. }
            | Op::Amend { cid, .. } => cid,
        });
        let n = max_cid.max().unwrap_or(0) as usize + 1;
        Self {
            books: (0..instruments)
                .map(|i| matchcore::OrderBook::new(&format!("I{i}")))
                .collect(),
            ids: vec![None; n],
            ops: ops.to_vec(),
            seqs: vec![0; instruments as usize],
            traded: 0,
        }
    }

    fn command(&mut self, inst: u32, kind: matchcore::CommandKind) -> matchcore::Command {
        let seq = &mut self.seqs[inst as usize];
        let meta = matchcore::CommandMeta {
            sequence_number: matchcore::SequenceNumber(*seq),
            timestamp: matchcore::Timestamp(*seq),
        };
        *seq += 1;
        matchcore::Command { meta, kind }
    }
}

fn mc_side(side: Side) -> matchcore::Side {
    match side {
        Side::Buy => matchcore::Side::Buy,
        Side::Sell => matchcore::Side::Sell,
    }
}

impl Venue for MatchCore {
    fn name(&self) -> &'static str {
        "matchcore 0.4"
    }
    fn apply(&mut self, i: usize) {
        use matchcore::{
            AmendCmd, AmendPatch, CancelCmd, CommandKind, CommandOutcome, CommandReport,
            LimitOrder, LimitOrderPatch, NewOrder, OrderFlags, OrderKind, Quantity, QuantityPolicy,
            SubmitCmd, TimeInForce,
        };
        let op = self.ops[i];
        let (inst, cid, cmd) = match op {
            Op::Limit {
                inst,
                side,
                price,
                qty,
                cid,
                ..
            }
            | Op::Market {
                inst,
                side,
                protection: price,
                qty,
                cid,
                ..
            } => {
                let tif = if matches!(op, Op::Market { .. }) {
                    TimeInForce::Ioc
                } else {
                    TimeInForce::Gtc
                };
                let order = LimitOrder::new(
                    matchcore::Price(price as u64),
                    QuantityPolicy::Standard {
                        quantity: Quantity(qty as u64),
                    },
                    OrderFlags::new(mc_side(side), false, tif),
                );
                (
                    inst,
                    cid,
                    self.command(
                        inst,
                        CommandKind::Submit(SubmitCmd {
                            order: NewOrder::Limit(order),
                        }),
                    ),
                )
            }
            Op::Cancel { inst, cid, .. } => {
                let Some(order_id) = self.ids[cid as usize] else {
                    return;
                };
                (
                    inst,
                    cid,
                    self.command(
                        inst,
                        CommandKind::Cancel(CancelCmd {
                            order_id,
                            order_kind: OrderKind::Limit,
                        }),
                    ),
                )
            }
            Op::Amend {
                inst,
                cid,
                price,
                qty,
                ..
            } => {
                let Some(order_id) = self.ids[cid as usize] else {
                    return;
                };
                let patch = LimitOrderPatch::new()
                    .with_price(matchcore::Price(price as u64))
                    .with_quantity_policy(QuantityPolicy::Standard {
                        quantity: Quantity(qty as u64),
                    });
                (
                    inst,
                    cid,
                    self.command(
                        inst,
                        CommandKind::Amend(AmendCmd {
                            order_id,
                            patch: AmendPatch::Limit(patch),
                        }),
                    ),
                )
            }
        };
        let outcome = self.books[inst as usize].execute(&cmd);
        if let CommandOutcome::Applied(CommandReport::Submit(effects)) = &outcome {
            self.ids[cid as usize] = Some(effects.target_order().order_id());
            if let Some(m) = effects.target_order().match_result() {
                self.traded += m.executed_quantity().0;
            }
        } else if let CommandOutcome::Applied(CommandReport::Amend(effects)) = &outcome
            && let Some(m) = effects.target_order().match_result()
        {
            self.traded += m.executed_quantity().0;
        }
    }
    fn traded(&self) -> u64 {
        self.traded
    }
}

struct Lobster {
    books: Vec<lobster::OrderBook>,
    ops: Vec<Op>,
    next_id: u128,
    traded: u64,
}

impl Venue for Lobster {
    fn name(&self) -> &'static str {
        "lobster 0.7"
    }
    fn apply(&mut self, i: usize) {
        use lobster::{OrderEvent, OrderType};
        let side = |s: Side| {
            if s == Side::Buy {
                lobster::Side::Bid
            } else {
                lobster::Side::Ask
            }
        };
        let op = self.ops[i];
        let mut record = |event: OrderEvent| match event {
            OrderEvent::Filled { filled_qty, .. }
            | OrderEvent::PartiallyFilled { filled_qty, .. } => self.traded += filled_qty,
            _ => {}
        };
        match op {
            Op::Limit {
                inst,
                side: s,
                price,
                qty,
                cid,
                ..
            } => {
                record(self.books[inst as usize].execute(OrderType::Limit {
                    id: u128::from(cid),
                    side: side(s),
                    qty: qty as u64,
                    price: price as u64,
                }));
            }
            Op::Market {
                inst,
                side: s,
                qty,
                cid,
                ..
            } => {
                record(self.books[inst as usize].execute(OrderType::Market {
                    id: u128::from(cid),
                    side: side(s),
                    qty: qty as u64,
                }));
            }
            Op::Cancel { inst, cid, .. } => {
                self.books[inst as usize].execute(OrderType::Cancel {
                    id: u128::from(cid),
                });
            }
            Op::Amend {
                inst,
                cid,
                side: s,
                price,
                qty,
                ..
            } => {
                // No native amend: cancel, then a new order under a fresh id.
                self.books[inst as usize].execute(OrderType::Cancel {
                    id: u128::from(cid),
                });
                self.next_id += 1;
                record(self.books[inst as usize].execute(OrderType::Limit {
                    id: self.next_id,
                    side: side(s),
                    qty: qty as u64,
                    price: price as u64,
                }));
            }
        }
    }
    fn traded(&self) -> u64 {
        self.traded
    }
}

fn fresh(which: usize, args: &Args, ops: &[Op]) -> Box<dyn Venue> {
    match which {
        0 => {
            let (engine, inputs) = optio_setup(args, ops);
            Box::new(Optio {
                engine,
                inputs,
                events: Vec::with_capacity(64),
                traded: 0,
                rejected: 0,
            })
        }
        1 => Box::new(MatchCore::new(args.instruments, ops)),
        _ => Box::new(Lobster {
            books: (0..args.instruments)
                .map(|_| lobster::OrderBook::new(1 << 16, 64, false))
                .collect(),
            ops: ops.to_vec(),
            next_id: 1 << 100,
            traded: 0,
        }),
    }
}

struct Figures {
    name: &'static str,
    per_second: f64,
    p50: u64,
    p99: u64,
    p999: u64,
    traded: u64,
}

/// Runs the benchmark and prints the table.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let ops = generate(args);
    let n = ops.len();
    println!(
        "stream: {n} inputs over {} instruments, {} accounts, seed {}",
        args.instruments, args.accounts, args.seed
    );
    let timer_overhead = {
        let mut h = Histogram::<u64>::new(3)?;
        for _ in 0..100_000 {
            let t = Instant::now();
            h.record(t.elapsed().as_nanos() as u64)?;
        }
        h.value_at_quantile(0.5)
    };
    let mut figures = Vec::new();
    for which in 0..if args.optio_only { 1 } else { 3 } {
        let mut best = f64::MAX;
        let mut traded = 0;
        let mut name = "";
        for _ in 0..args.rounds.max(1) {
            let mut venue = fresh(which, args, &ops);
            let start = Instant::now();
            for i in 0..n {
                venue.apply(i);
            }
            best = best.min(start.elapsed().as_secs_f64());
            traded = venue.traded();
            name = venue.name();
        }
        let mut venue = fresh(which, args, &ops);
        let mut h = Histogram::<u64>::new(3)?;
        for i in 0..n {
            let t = Instant::now();
            venue.apply(i);
            h.record(t.elapsed().as_nanos() as u64)?;
        }
        anyhow::ensure!(traded > 0, "{name} traded nothing: its adapter is broken");
        figures.push(Figures {
            name,
            per_second: n as f64 / best,
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            traded,
        });
    }
    println!("per-input timer overhead (included in latencies): ~{timer_overhead} ns\n");
    println!(
        "{:<20} {:>14} {:>9} {:>9} {:>10} {:>14} {:>14}",
        "engine", "inputs/s", "p50 ns", "p99 ns", "p99.9 ns", "traded steps", "optio / this"
    );
    let ours = figures[0].per_second;
    for f in &figures {
        println!(
            "{:<20} {:>14.0} {:>9} {:>9} {:>10} {:>14} {:>13.2}x",
            f.name,
            f.per_second,
            f.p50,
            f.p99,
            f.p999,
            f.traded,
            ours / f.per_second
        );
    }
    println!(
        "\ntarget: >= 1,000,000 inputs/s on one thread with margin checks on: {}",
        if ours >= 1e6 { "met" } else { "NOT met" }
    );
    println!(
        "note: the peers match only; Optio also runs margin, fees, the ledger and invariant checks per input."
    );
    Ok(())
}
