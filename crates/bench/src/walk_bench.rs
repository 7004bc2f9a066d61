//! A prover worker's walk over a batches directory (`optio_prover::worker::Walker`): what each
//! pass costs from genesis (every pass before the walker kept its state: all the blobs applied
//! again, once a second while idle) side by side with a pass from the frontier of settled
//! batches, at proving lags of 1, 10 and 30 batches, on the same blobs in the same run; and the
//! cost per blob, extrapolated to a day of batches.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use optio_prover::worker::Walker;

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// The batches directory (a devnet's `<data>/batches`, e.g. after `optio devnet --no-prove
    /// --duration-s 300 --data DIR`).
    #[arg(long)]
    batches: PathBuf,
    /// Timed rounds of each walk (the fastest is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// The fastest of `rounds` walks of a fresh walker that takes the first `settled` batches as
/// settled: the frontier walk (applying them) and then the pass a running worker makes.
fn timed(args: &Args, settled: u64) -> Result<(f64, usize)> {
    let mut best = (f64::INFINITY, 0);
    for _ in 0..args.rounds.max(1) {
        let mut walker = Walker::new(&args.batches);
        let is_settled = |n: u64| n <= settled;
        // Brings the walker to its frontier, as the passes before would have.
        walker
            .walk(is_settled, |_, _, _| Ok(()))
            .map_err(anyhow::Error::msg)?;
        let t = Instant::now();
        walker
            .walk(is_settled, |_, _, _| Ok(()))
            .map_err(anyhow::Error::msg)?;
        let seconds = t.elapsed().as_secs_f64();
        if seconds < best.0 {
            best = (seconds, walker.applied());
        }
    }
    Ok(best)
}

/// Runs the benchmark.
pub fn run(args: &Args) -> Result<()> {
    let blobs = optio_state::blob_files(&args.batches)?.len() as u64;
    if blobs < 31 {
        bail!(
            "{}: {blobs} blobs; needs at least 31",
            args.batches.display()
        );
    }
    println!("{} batches in {}", blobs, args.batches.display());
    let (genesis, all) = timed(args, 0)?;
    println!(
        "pass from genesis (each pass before): {all} blobs applied in {:.1} ms, {:.3} ms a blob",
        genesis * 1e3,
        genesis * 1e3 / all as f64
    );
    for lag in [1u64, 10, 30] {
        let (seconds, applied) = timed(args, blobs - lag)?;
        println!(
            "pass from the frontier, lag {lag:>2}: {applied:>2} blobs applied in {:>7.2} ms   genesis/frontier {:>6.1}x",
            seconds * 1e3,
            genesis / seconds
        );
    }
    // A day of the proving devnet's batches (one every 30 s): what each pass would cost.
    let day = 86_400 / 30;
    println!(
        "extrapolated: after a day of 30 s batches ({day}), a pass from genesis {:.1} s at this cost a blob; from the frontier it stays at the lag's",
        genesis / all as f64 * day as f64
    );
    Ok(())
}
