//! The batches directory's size on disk with every batch's files kept against the finalized ones
//! pruned behind checkpoints: two `optio devnet`s (`--no-prove`, each its own embedded L1 chain,
//! finalizing a batch 60 s after its commit) run side by side for the same time, one with
//! `--checkpoint-batches 0`, one with checkpoints every N batches; the sizes are sampled as they
//! run, and at the end `optio rebuild` runs over each directory (from genesis against from the
//! checkpoint). Prints both and the ratios.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Seconds each devnet runs.
    #[arg(long, default_value_t = 200)]
    seconds: u64,
    /// The pruning devnet's `--checkpoint-batches`.
    #[arg(long, default_value_t = 16)]
    checkpoint_batches: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 20)]
    every: u64,
    /// Path of the `optio` binary (default: next to this one).
    #[arg(long)]
    optio: Option<PathBuf>,
}

/// A directory's size: bytes, files, and its blobs' batch numbers (first, last, how many).
struct Size {
    bytes: u64,
    files: usize,
    blobs: Vec<u64>,
}

fn size(dir: &Path) -> Size {
    let (mut bytes, mut files, mut blobs) = (0, 0, Vec::new());
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        files += 1;
        bytes += entry.metadata().map_or(0, |m| m.len());
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "blob") {
            blobs.extend(optio_state::checkpoint::file_number(&path));
        }
    }
    blobs.sort_unstable();
    Size {
        bytes,
        files,
        blobs,
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>6.2} MB {:>4} files {:>4} batches ({}-{})",
            self.bytes as f64 / 1e6,
            self.files,
            self.blobs.len(),
            self.blobs.first().copied().unwrap_or(0),
            self.blobs.last().copied().unwrap_or(0)
        )
    }
}

fn devnet(optio: &Path, data: &Path, checkpoint_batches: u64, seconds: u64) -> Result<Child> {
    Command::new(optio)
        .args(["devnet", "--no-prove", "--listen", "127.0.0.1:0"])
        .args(["--duration-s", &seconds.to_string()])
        .args(["--checkpoint-batches", &checkpoint_batches.to_string()])
        .arg("--data")
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", optio.display()))
}

pub fn run(args: &Args) -> Result<()> {
    if args.checkpoint_batches == 0 {
        bail!("--checkpoint-batches must be at least 1 (0 is the run that keeps everything)");
    }
    let optio = crate::load_bench::optio_binary(args.optio.as_ref())?;
    let (keep, prune) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let mut runs = [
        devnet(&optio, keep.path(), 0, args.seconds)?,
        devnet(&optio, prune.path(), args.checkpoint_batches, args.seconds)?,
    ];
    let (keep_dir, prune_dir) = (keep.path().join("batches"), prune.path().join("batches"));
    println!(
        "two devnets side by side, --no-prove, {} s, finalizing 60 s after a commit:",
        args.seconds
    );
    println!(
        "{:>5}  {:<44} checkpoint every {}",
        "t", "every batch kept", args.checkpoint_batches
    );
    let started = Instant::now();
    let mut t = 0;
    while t + args.every <= args.seconds {
        t += args.every;
        std::thread::sleep(Duration::from_secs(t).saturating_sub(started.elapsed()));
        println!(
            "{:>4}s  {:<44} {}",
            t,
            size(&keep_dir).to_string(),
            size(&prune_dir)
        );
    }
    for run in &mut runs {
        let status = run.wait()?;
        if !status.success() {
            bail!("a devnet exited with {status}");
        }
    }
    let (kept, pruned) = (size(&keep_dir), size(&prune_dir));
    println!("end    {:<44} {pruned}", kept.to_string());
    println!(
        "pruned/kept: bytes {:.2}, files {:.2}",
        pruned.bytes as f64 / kept.bytes.max(1) as f64,
        pruned.files as f64 / kept.files.max(1) as f64
    );
    let checkpoints = optio_state::checkpoint::checkpoints(&prune_dir)?;
    if let Some(c) = checkpoints.last() {
        let bytes = std::fs::metadata(optio_state::checkpoint::path(&prune_dir, *c))?.len();
        println!("checkpoint of batch {c}: {bytes} bytes");
    }
    let rebuild = |dir: &Path| -> Result<f64> {
        let t = Instant::now();
        let out = Command::new(&optio)
            .args(["rebuild", "--batches"])
            .arg(dir)
            .output()?;
        if !out.status.success() {
            bail!(
                "optio rebuild over {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(t.elapsed().as_secs_f64())
    };
    let (from_genesis, from_checkpoint) = (rebuild(&keep_dir)?, rebuild(&prune_dir)?);
    println!(
        "optio rebuild: {from_genesis:.2} s from genesis over {} batches, {from_checkpoint:.2} s from the checkpoint over {}: ratio {:.2}",
        kept.blobs.len(),
        pruned.blobs.len(),
        from_checkpoint / from_genesis
    );
    Ok(())
}
