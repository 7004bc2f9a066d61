//! Benchmarks that put Optio side by side with published peers on the same input, in the same
//! run, and print the ratio.
//!
//! Owns: the generated input streams and the adapters that feed them to each peer.
//! Must not: be linked into the node; peers are benchmark-only dependencies.

mod batches_bench;
mod devnet_bench;
mod engine_bench;
mod intents_bench;
mod l1_gas_bench;
mod load_bench;
mod pricing_bench;
mod prove_bench;
mod settlement_bench;
mod walk_bench;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "optio-bench",
    about = "Optio benchmarks, side by side with peers"
)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Replays a generated order stream through the engine (margin checks on) and through the
    /// `matchcore` and `lobster` order-book crates.
    Engine(engine_bench::Args),
    /// Black-76 price + Greeks throughput against the `blackscholes` and `black_scholes` crates
    /// and a textbook scalar baseline; implied-volatility solve time; a risk-array refresh; a
    /// portfolio-margin check.
    Pricing(pricing_bench::Args),
    /// Signed-intent verification (EIP-712 hashing + recovery) against the raw libsecp256k1
    /// recovery ceiling on the same machine.
    Intents(intents_bench::Args),
    /// Load generator: starts `optio devnet` as a separate process and sends pre-signed orders
    /// over loopback HTTP at rising rates (fsync on); reports sustained orders/s and
    /// acknowledgement latency beside the raw signature-recovery ceiling.
    Load(load_bench::Args),
    /// Order acknowledgement latency on the whole devnet (flow and embedded L1), without proving
    /// and with its in-process prover, one run after the other; batches cut and proven.
    Devnet(devnet_bench::Args),
    /// Settlement state: Poseidon tree updates and batch roots against jmt and
    /// sparse-merkle-tree with the same hash, blake3 as the reference point.
    Settlement(settlement_bench::Args),
    /// L1 gas per trade and per operation on anvil, beside StarkEx's published figures.
    L1Gas(l1_gas_bench::Args),
    /// Validity proofs: constraints per op, proving seconds per trade and peak memory beside a
    /// prototype's anchor; L1 verification gas per batch and per trade, with and without
    /// aggregation.
    Prove(prove_bench::Args),
    /// A prover worker's pass over a batches directory: from genesis (as before) against from
    /// its frontier of settled batches at lags of 1, 10 and 30, on the same blobs.
    Walk(walk_bench::Args),
    /// The batches directory on disk: every batch kept against the finalized ones pruned behind
    /// checkpoints, two devnets side by side; `optio rebuild` over each.
    Batches(batches_bench::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().bench {
        Bench::Engine(args) => engine_bench::run(&args),
        Bench::Pricing(args) => pricing_bench::run(&args),
        Bench::Intents(args) => intents_bench::run(&args),
        Bench::Load(args) => load_bench::run(&args),
        Bench::Devnet(args) => devnet_bench::run(&args),
        Bench::Settlement(args) => settlement_bench::run(&args),
        Bench::L1Gas(args) => l1_gas_bench::run(&args),
        Bench::Prove(args) => prove_bench::run(&args),
        Bench::Walk(args) => walk_bench::run(&args),
        Bench::Batches(args) => batches_bench::run(&args),
    }
}
