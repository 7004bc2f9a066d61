//! The `optio` command: `optio devnet` runs everything in one process; `optio demo` walks through
//! the deterministic core and prints what happens. Later issues add settlement and exit tooling.

mod devnet;
mod node;
mod prove;
mod settle;
mod sim;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use optio_engine::Engine;
use optio_types::{
    AccountId, Address, Amount, Command, EngineLimits, Event, Input, InstrumentId, InstrumentSpec,
    MONEY_SCALE, NewOrder, OrderType, Price, Qty, Quote, SelfTradePrevention, Side, TimeInForce,
    WorstCaseMargin,
};

#[derive(Parser)]
#[command(
    name = "optio",
    version,
    about = "Optio: a crypto-options exchange with an Ethereum-verifiable ledger"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a small BTC options market on the exchange core and print what happens: quotes,
    /// trades, fees, margin, a rejected order, expiry and cash settlement, snapshot and audit.
    Demo,
    /// Run a whole exchange in one process: sequencer, API on 127.0.0.1, signed oracle feed,
    /// simulated market makers and takers; funds a demo key and any --fund address.
    Devnet(devnet::DevnetArgs),
    /// Run a configured node: `--config optio.toml`, `OPTIO_*` environment variables and flags.
    Node(node::NodeArgs),
    /// Rebuild the settlement state from genesis and the data blobs alone; print each batch's
    /// root and check it against the committed header.
    Rebuild(settle::RebuildArgs),
    /// Print an account's exit proof (leaf, positions, Merkle proofs) against the state the
    /// blobs build.
    ExitProof(settle::ExitProofArgs),
    /// The escape hatch: from L1 data alone (the committed blobs), rebuild the state, prove an
    /// account against the last finalized root and submit its exit (the contract must be frozen).
    Exit(settle::ExitArgs),
    /// Censorship resistance: ask L1 to make the operator serve you, a forced withdrawal of an
    /// account's free collateral or (`--close`) a forced close of its position in an
    /// instrument; unserved past the priority window, anyone may freeze L1 and every account
    /// exits (`optio exit`).
    Force(settle::ForceArgs),
    /// The watchtower: from L1 alone, rebuild the state from every committed batch's data and
    /// check each committed root; exits non-zero on the first mismatch or unusable data.
    Verify(settle::VerifyArgs),
    /// Validity proofs: `setup` generates the keys of a circuit shape, `run` proves the
    /// committed batches of a batches directory (as many workers as wanted), `check` verifies
    /// every proof against the blobs.
    Prove(prove::ProveArgs),
    /// Deterministic simulation: the node's real components driven by a seeded RNG (traders,
    /// hostile clients, L1 deposits) with crashes and torn writes, checked after every step.
    Sim(sim::SimArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Demo => demo(),
        Cmd::Devnet(args) => devnet::run(args),
        Cmd::Node(args) => node::run(args),
        Cmd::Rebuild(args) => settle::rebuild(args),
        Cmd::ExitProof(args) => settle::exit_proof(args),
        Cmd::Exit(args) => settle::exit(args),
        Cmd::Force(args) => settle::force(args),
        Cmd::Verify(args) => settle::verify(args),
        Cmd::Sim(args) => sim::run(args),
        Cmd::Prove(args) => prove::run(args),
    }
}

struct Demo {
    engine: Engine,
    names: Vec<String>,
    time_ms: u64,
    events: Vec<Event>,
}

fn usd(x: i64) -> Amount {
    Amount(x * MONEY_SCALE)
}

fn px(text: &str) -> Price {
    text.parse().expect("demo prices are valid decimals")
}

fn contracts(text: &str) -> Qty {
    text.parse().expect("demo sizes are valid decimals")
}

impl Demo {
    fn submit(&mut self, what: &str, command: Command) -> Result<()> {
        self.events.clear();
        let input = Input {
            time_ms: self.time_ms,
            command,
        };
        let result = self.engine.apply(&input, &mut self.events);
        println!("> {what}");
        for event in &self.events {
            if let Some(line) = self.describe(event) {
                println!("    {line}");
            }
        }
        if result.is_err() {
            println!("    (state unchanged)");
        }
        Ok(())
    }

    fn name(&self, id: InstrumentId) -> &str {
        self.names.get(id.0 as usize).map_or("?", String::as_str)
    }

    fn describe(&self, event: &Event) -> Option<String> {
        Some(match event {
            Event::Rejected { code } => format!("REJECTED {code}"),
            Event::ReplaceRefused { code } => format!("REPLACEMENT REFUSED {code}"),
            Event::InstrumentListed { instrument } => format!("listed {}", self.name(*instrument)),
            Event::InstrumentActivated { instrument } => {
                format!("trading opens in {}", self.name(*instrument))
            }
            Event::InstrumentExpired { instrument } => {
                format!("{} expired: trading stopped", self.name(*instrument))
            }
            Event::InstrumentSettled {
                instrument,
                settlement_price,
                insurance_credit,
            } => {
                format!(
                    "{} settled at index {settlement_price} (rounding to insurance: {insurance_credit})",
                    self.name(*instrument)
                )
            }
            Event::PositionSettled {
                account, qty, cash, ..
            } => format!("account {account}: position {qty} settled for {cash} USDC"),
            Event::LossShared { account, amount } => {
                format!("account {account}: {amount} USDC of a liquidated deficit")
            }
            Event::AccountOpened { account, owner } => {
                format!("account {account} opened for {owner}")
            }
            Event::PriorityServed {
                priority,
                account,
                amount,
            } => {
                format!("L1 priority operation {priority} served: account {account}, {amount} USDC")
            }
            Event::CloseServed {
                priority,
                account,
                counterparty,
                instrument,
                qty,
                price,
                cash,
            } => format!(
                "L1 priority operation {priority} served: account {account} closed {qty} of \
                 instrument {instrument} to account {counterparty} at {price}, {cash} USDC"
            ),
            Event::BalanceChanged {
                account,
                amount,
                balance,
            } => format!("account {account}: {amount} USDC, balance {balance}"),
            Event::OrderAccepted { .. } => return None,
            Event::OrderRested {
                order,
                price,
                remaining,
            } => format!("order {order} rests: {remaining} @ {price}"),
            Event::OrderAmended {
                order,
                price,
                remaining,
                kept_priority,
            } => {
                format!(
                    "order {order} amended to {remaining} @ {price} (priority kept: {kept_priority})"
                )
            }
            Event::Fill {
                instrument,
                maker_account,
                taker_account,
                taker_side,
                price,
                qty,
                maker_fee,
                taker_fee,
                ..
            } => format!(
                "TRADE {} {qty} @ {price}: taker {taker_account} {} (fee {taker_fee}), maker {maker_account} (fee {maker_fee})",
                self.name(*instrument),
                if *taker_side == Side::Buy {
                    "buys"
                } else {
                    "sells"
                },
            ),
            Event::OrderDone {
                order,
                reason,
                unfilled,
                ..
            } => format!("order {order} done: {reason:?}, unfilled {unfilled}"),
            Event::OracleAccepted {
                underlying,
                index_price,
            } => format!("oracle: {underlying} index {index_price}"),
            Event::OracleHeld {
                underlying,
                index_price,
            } => format!("oracle: {underlying} jump to {index_price} HELD until confirmed"),
            Event::MarginModeChanged { account, mode } => {
                format!("account {account} now margined {mode:?}")
            }
            Event::LiquidationStarted { account } => {
                format!("account {account} below maintenance: LIQUIDATION started")
            }
            Event::LiquidationTransfer {
                account,
                counterparty,
                qty,
                price,
                fee,
                deleverage,
                ..
            } => {
                format!(
                    "liquidation of {account}: {qty} to {counterparty} @ {price} (fee {fee}, deleverage: {deleverage})"
                )
            }
            Event::DeficitCovered {
                account,
                insurance,
                fee_pool,
                socialized,
                unresolved,
            } => {
                format!(
                    "deficit of {account} covered: insurance {insurance}, fee pool {fee_pool}, socialized {socialized}, unresolved {unresolved}"
                )
            }
            Event::LiquidationEnded { account } => format!("account {account} liquidation ended"),
            Event::SessionKeyChanged {
                account,
                key,
                expiry_ms,
            } => format!("account {account}: session key {key} valid until {expiry_ms}"),
        })
    }

    fn account_line(&self, account: u32, label: &str) {
        if let Some((balance, requirement, free)) = self.engine.collateral(AccountId(account)) {
            println!(
                "    {label:<14} balance {balance:>12}  margin {requirement:>12}  free {free:>12}"
            );
        }
    }
}

fn order(
    account: u32,
    instrument: u32,
    side: Side,
    qty: &str,
    order_type: OrderType,
    tif: TimeInForce,
) -> Command {
    Command::PlaceOrder(NewOrder {
        account: AccountId(account),
        instrument: InstrumentId(instrument),
        side,
        qty: contracts(qty),
        order_type,
        time_in_force: tif,
        post_only: false,
        reduce_only: false,
        self_trade: SelfTradePrevention::CancelTaker,
        client_order_id: 0,
        session_key: None,
    })
}

fn demo() -> Result<()> {
    // 2024-12-26T12:00:00Z; the 27DEC24 options expire 20 hours later.
    let start = 1_735_214_400_000;
    let mut d = Demo {
        engine: Engine::new(EngineLimits::default()),
        names: Vec::new(),
        time_ms: start,
        events: Vec::new(),
    };
    println!("Optio demo: the deterministic exchange core, one input at a time.\n");

    let chain = [
        "BTC-27DEC24-90000-C",
        "BTC-27DEC24-100000-C",
        "BTC-27DEC24-90000-P",
        "BTC-PERPETUAL",
    ];
    for name in chain {
        let spec = InstrumentSpec::with_defaults(
            name.parse().context("demo instrument name")?,
            px("250000"),
        );
        d.names.push(name.to_owned());
        d.submit(&format!("list {name}"), Command::ListInstrument { spec })?;
    }
    for i in 0..chain.len() as u32 {
        d.submit(
            "activate",
            Command::ActivateInstrument {
                instrument: InstrumentId(i),
            },
        )?;
    }
    let (maker, alice, bob) = (0, 1, 2);
    for (who, owner) in [("market maker", 0xaa), ("alice", 0xa1), ("bob", 0xb0)] {
        d.submit(
            &format!("open an account for {who}"),
            Command::OpenAccount {
                owner: Address([owner; 20]),
            },
        )?;
    }
    for (account, deposit) in [(maker, 5_000_000), (alice, 200_000), (bob, 10_000)] {
        d.submit(
            &format!("deposit {deposit} USDC"),
            Command::Deposit {
                account: AccountId(account),
                amount: usd(deposit),
            },
        )?;
    }

    println!("\nThe market maker quotes the chain in one atomic mass quote:");
    let quote = |i: u32, bid: &str, ask: &str, size: &str| Quote {
        instrument: InstrumentId(i),
        bid: Some((px(bid), contracts(size))),
        ask: Some((px(ask), contracts(size))),
    };
    d.submit(
        "mass quote",
        Command::MassQuote {
            account: AccountId(maker),
            quotes: vec![
                quote(0, "2150", "2250", "5"),
                quote(1, "600", "660", "5"),
                quote(2, "1800", "1900", "5"),
                quote(3, "95000", "95010", "2"),
            ],
        },
    )?;

    println!("\nAlice buys calls with a market order (protection band 5%):");
    d.submit(
        "alice: market buy 2 BTC-27DEC24-90000-C",
        order(
            alice,
            0,
            Side::Buy,
            "2",
            OrderType::Market {
                protection_price: None,
            },
            TimeInForce::ImmediateOrCancel,
        ),
    )?;
    println!(
        "\nBob wants to sell a naked call but cannot cover its worst case (cap 250,000 - strike):"
    );
    d.submit(
        "bob: sell 1 BTC-27DEC24-100000-C @ 640",
        order(
            bob,
            1,
            Side::Sell,
            "1",
            OrderType::Limit { price: px("640") },
            TimeInForce::GoodTillCancelled,
        ),
    )?;
    println!("\nBob buys puts instead: one order lifts the quote, the other rests below it:");
    d.submit(
        "bob: buy 0.5 BTC-27DEC24-90000-P @ 1900",
        order(
            bob,
            2,
            Side::Buy,
            "0.5",
            OrderType::Limit { price: px("1900") },
            TimeInForce::GoodTillCancelled,
        ),
    )?;
    d.submit(
        "bob: buy 0.5 BTC-27DEC24-90000-P @ 1850",
        order(
            bob,
            2,
            Side::Buy,
            "0.5",
            OrderType::Limit { price: px("1850") },
            TimeInForce::GoodTillCancelled,
        ),
    )?;
    println!(
        "\nThe market maker's hedge would trade against its own ask: self-trade prevention cancels it:"
    );
    d.submit(
        "maker: buy 1 BTC-PERPETUAL IOC @ 95010",
        order(
            maker,
            3,
            Side::Buy,
            "1",
            OrderType::Limit { price: px("95010") },
            TimeInForce::ImmediateOrCancel,
        ),
    )?;
    println!("\nAlice buys the perpetual (fully funded under the conservative margin model):");
    d.submit(
        "alice: buy 0.5 BTC-PERPETUAL IOC @ 95010",
        order(
            alice,
            3,
            Side::Buy,
            "0.5",
            OrderType::Limit { price: px("95010") },
            TimeInForce::ImmediateOrCancel,
        ),
    )?;

    println!(
        "\nCollateral (margin = worst case over index prices 0..250,000, open orders included):"
    );
    for (account, label) in [(maker, "market maker"), (alice, "alice"), (bob, "bob")] {
        d.account_line(account, label);
    }

    println!(
        "\nTime passes to 08:00 UTC on 27 Dec: the options expire, their books are cancelled."
    );
    d.time_ms = start + 20 * 3_600_000;
    d.submit(
        "(clock)",
        Command::CancelAll {
            account: AccountId(alice),
            instrument: None,
        },
    )?;
    println!("\nThe oracle's 30-minute TWAP is 97,500: settle every expired option.");
    for i in 0..3 {
        d.submit(
            &format!("settle {}", d.names[i as usize]),
            Command::SettleInstrument {
                instrument: InstrumentId(i),
                settlement_price: px("97500"),
            },
        )?;
    }
    println!("\nCollateral after settlement:");
    for (account, label) in [(maker, "market maker"), (alice, "alice"), (bob, "bob")] {
        d.account_line(account, label);
    }
    let (fees, insurance) = d.engine.pools();
    println!("    fee pool {fees}, insurance fund {insurance}");

    d.engine.check_invariants().context("full audit")?;
    let snapshot = d.engine.snapshot();
    let restored =
        Engine::restore_bytes(&snapshot, WorstCaseMargin).context("restore from snapshot")?;
    if restored.state_hash() != d.engine.state_hash() {
        bail!("restored state differs from the original");
    }
    let hash: String = d
        .engine
        .state_hash()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    println!(
        "\nFull invariant audit passed. Snapshot: {} bytes; restored state hash equals the live one:",
        snapshot.len()
    );
    println!("    {hash}");
    println!(
        "\nThe same inputs always give this hash: the core is a pure function of its input log."
    );
    Ok(())
}
