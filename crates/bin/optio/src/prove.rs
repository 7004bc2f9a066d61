//! `optio prove`: key generation, prover workers over a batches directory, and the auditor's
//! check of every proof against the blobs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use optio_prover::keys::os_rng;
use optio_prover::worker::{Outcome, Walker, check_proofs};
use optio_prover::{Keys, Shape};

/// The circuit's shape (keys are generated per shape; workers and checks must name the same).
#[derive(clap::Args, Clone, Copy)]
pub struct ShapeArgs {
    /// Op slots per batch (the batcher's `batch_max_ops` must not exceed it for a batch to be
    /// provable).
    #[arg(long, default_value_t = 16)]
    slots: usize,
    /// Distinct accounts a batch may touch.
    #[arg(long, default_value_t = 16)]
    accounts: usize,
    /// Distinct (account, instrument) positions a batch's fills may change.
    #[arg(long, default_value_t = 16)]
    positions: usize,
    /// Read-only position registers: each holds a position the batch only prices (a margin
    /// account's untraded position, for its margin or maintenance rule) along one path instead
    /// of a read and a write-back, about half a writable register. The batcher counts them
    /// when it cuts batches; the engine's limits (what one order may fill, how many positions
    /// an account may withdraw against) count only the writable ones, `--positions` (0: none,
    /// the devnet's).
    #[arg(long, default_value_t = 0)]
    readonly: usize,
    /// Distinct instruments a batch's fills may trade (and, with the position registers, how
    /// many positions a margin account may hold and still trade or be liquidated on its
    /// maintenance).
    #[arg(long, default_value_t = 12)]
    instruments: usize,
    /// Listing and activation slots per batch.
    #[arg(long, default_value_t = 4)]
    listings: usize,
    /// Expiry slots per batch.
    #[arg(long, default_value_t = 4)]
    expiries: usize,
    /// Settlement slots per batch (expired instruments cash-settled).
    #[arg(long, default_value_t = 2)]
    settlements: usize,
    /// Positions each settlement slot may pay out.
    #[arg(long, default_value_t = 16)]
    holders: usize,
    /// Mark windows per batch: each commits the marks of instruments in one aligned run of
    /// `--mark-window` ids.
    #[arg(long, default_value_t = 8)]
    marks: usize,
    /// Instrument ids a mark window spans (a power of four: a whole subtree of the arity-4
    /// tree): its marks share one path of the instruments tree. 1: a path per mark; the
    /// devnet's 58 instruments fit one window of 64.
    #[arg(long, default_value_t = 1, value_parser = power_of_four)]
    mark_window: usize,
    /// Risk-array scenarios a mark may carry.
    #[arg(long, default_value_t = 33)]
    risk_scenarios: usize,
    /// Account slots per batch: session keys registered or revoked, and margin modes changed.
    #[arg(long, default_value_t = 4)]
    session_keys: usize,
    /// Margin slots per batch: each proves the stress rule for one withdrawal, forced
    /// withdrawal or transfer, or that a deficit cover's account holds no position (every
    /// position of its account must then fit the registers).
    #[arg(long, default_value_t = 2)]
    margins: usize,
    /// Price windows per batch: each opens the committed marks of one aligned run of
    /// `--solvency-window` instrument ids, to price the positions of the accounts that filled
    /// (two: listings past id 63, as expiries roll, open a second run of 64).
    #[arg(long, default_value_t = 2)]
    prices: usize,
    /// Solvency windows per batch: an account that filled in `Portfolio` or `Standard` and that
    /// the registers do not price (a liquidation's counterparty holding positions the batch
    /// does not touch) takes one per run of `--solvency-window` ids its positions lie in, and
    /// must end the batch with equity at the committed marks of at least zero (one in
    /// `WorstCase` takes none: it covers its shorts' worst case).
    #[arg(long, default_value_t = 4)]
    solvency: usize,
    /// Instrument ids a price or solvency window spans (a power of four): the devnet's 58
    /// instruments fit one window of 64.
    #[arg(long, default_value_t = 64, value_parser = power_of_four)]
    solvency_window: usize,
}

fn power_of_four(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n)
            if n.is_power_of_two()
                && n.trailing_zeros() % 2 == 0
                && n <= 1 << optio_state::leaf::INSTRUMENT_DEPTH =>
        {
            Ok(n)
        }
        _ => Err(format!(
            "{s} is not a power of four up to 2^{}",
            optio_state::leaf::INSTRUMENT_DEPTH
        )),
    }
}

impl ShapeArgs {
    fn shape(self) -> Shape {
        Shape {
            slots: self.slots.max(1),
            accounts: self.accounts,
            positions: self.positions,
            instruments: self.instruments,
            listings: self.listings,
            expiries: self.expiries,
            settlements: self.settlements,
            holders: self.holders,
            marks: self.marks,
            risk_chunks: self.risk_scenarios.div_ceil(optio_state::leaf::RISK_CHUNK),
            keys: self.session_keys,
            mark_window_bits: self.mark_window.trailing_zeros() as usize,
            margins: self.margins,
            prices: self.prices,
            solvency: self.solvency,
            solvency_bits: self.solvency_window.trailing_zeros() as usize,
            readonly: self.readonly,
        }
    }
}

/// What to do.
#[derive(clap::Subcommand)]
pub enum ProveCmd {
    /// Generate the proving and verifying keys of a shape (Groth16 setup with randomness from
    /// the operating system, dropped afterwards: README, "Validity proofs", on what this trusts).
    Setup {
        /// Directory for the key files (`<shape name>.pk` and `.vk`).
        #[arg(long, default_value = "optio-keys")]
        keys: PathBuf,
        #[command(flatten)]
        shape: ShapeArgs,
    },
    /// Prove the committed batches of a batches directory, writing `NNNNNNNN.proof.json` beside
    /// each blob; run as many workers (processes, machines sharing the directory) as needed.
    Run {
        #[command(flatten)]
        at: Place,
        /// One pass, then exit (otherwise keep following the directory).
        #[arg(long)]
        once: bool,
        /// Seconds after which another worker's claim counts as abandoned.
        #[arg(long, default_value_t = 600)]
        stale_after_s: u64,
    },
    /// Check every proof against the state rebuilt from the blobs alone and the verifying key;
    /// exits non-zero on a proof that does not check.
    Check {
        #[command(flatten)]
        at: Place,
    },
}

/// Where the batches and keys are, and which circuit shape.
#[derive(clap::Args)]
pub struct Place {
    /// Directory of `NNNNNNNN.blob` files, where the proofs go (a node writes the blobs under
    /// `<data>/batches`).
    #[arg(long, default_value = "optio-data/batches")]
    batches: PathBuf,
    /// Directory of the keys.
    #[arg(long, default_value = "optio-keys")]
    keys: PathBuf,
    #[command(flatten)]
    shape: ShapeArgs,
}

impl Place {
    /// The keys of the shape the flags name; if the directory has none of that shape but holds
    /// one set, that set (its file names say its shape: `optio prove run --keys DIR` needs no
    /// shape flags).
    fn keys(&self) -> Result<Keys> {
        let named = self.shape.shape();
        Keys::read(&self.keys, named).or_else(|e| match Keys::shape_in(&self.keys) {
            Ok(shape) if shape.name() != named.name() => {
                println!(
                    "keys {} (the one set in {}; the shape flags name {})",
                    shape.name(),
                    self.keys.display(),
                    named.name()
                );
                Keys::read(&self.keys, shape).map_err(|e| anyhow!("{e}"))
            }
            _ => Err(anyhow!("{e}")),
        })
    }
}

/// Arguments of `optio prove`.
#[derive(clap::Args)]
pub struct ProveArgs {
    #[command(subcommand)]
    cmd: ProveCmd,
}

/// The keys of `shape` in `dir`, generated and written there first when they are not there or
/// cannot be read (keys of another circuit version, a damaged file): what `optio devnet` proves
/// with when not given `--prove-keys`. Generation draws its randomness from the operating
/// system, as `optio prove setup` does; `say` hears why it generates and what it made.
pub(crate) fn cached_keys(dir: &std::path::Path, shape: Shape, say: impl Fn(&str)) -> Result<Keys> {
    shape.check().map_err(|e| anyhow!("shape_unusable: {e}"))?;
    let vk = dir.join(format!("{}.vk", shape.name()));
    let why = match Keys::read(dir, shape) {
        Ok(keys) => return Ok(keys),
        Err(_) if !vk.exists() => "none there yet".to_owned(),
        Err(e) => format!("those there are unusable: {e}"),
    };
    say(&format!(
        "generating the proving keys of circuit {} in {} ({why}; once, about a minute and 1.5 GB; --no-prove skips proving)",
        shape.name(),
        dir.display()
    ));
    std::fs::create_dir_all(dir).map_err(|e| anyhow!("keys_cache: {}: {e}", dir.display()))?;
    let t = std::time::Instant::now();
    let keys = Keys::generate(shape, &mut os_rng()).map_err(|e| anyhow!("{e}"))?;
    keys.write(dir).map_err(|e| anyhow!("keys_cache: {e}"))?;
    say(&format!("keys made in {:.1} s", t.elapsed().as_secs_f64()));
    Ok(keys)
}

/// The file in a data directory that names the circuit shape its batches are cut for.
const PROVE_SHAPE_FILE: &str = "prove-shape";

/// Refuses a data directory whose batches were cut for another circuit shape, or without one
/// (`shape_mismatch`; nothing is changed): provers of `shape` could not prove its earlier
/// batches, and a rollup that finalizes only proven batches would stop there. A directory
/// without batches records `shape` (`optio devnet` and `optio node`).
pub(crate) fn check_prove_shape(
    dir: &std::path::Path,
    shape: Option<optio_prover::Shape>,
) -> Result<()> {
    let named = shape.map_or("none".to_owned(), |s| s.name());
    let path = dir.join(PROVE_SHAPE_FILE);
    let has_batches = || {
        std::fs::read_dir(dir.join("batches")).is_ok_and(|mut entries| {
            entries.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "blob")))
        })
    };
    let record = || {
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&path, format!("{named}\n")))
            .map_err(|e| anyhow!("writing {}: {e}", path.display()))
    };
    match std::fs::read_to_string(&path) {
        Ok(recorded) if recorded.trim() == named => Ok(()),
        Ok(_) if !has_batches() => record(),
        Ok(recorded) => {
            let was = match recorded.trim() {
                "none" => "without proving".to_owned(),
                other => format!("for circuit {other}"),
            };
            let now = match shape {
                None => "without proving".to_owned(),
                Some(_) => format!("for circuit {named}"),
            };
            bail!(
                "shape_mismatch: the batches in {} were cut {was}, and would now be cut {now}: start as before, or with a new data directory",
                dir.display()
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => record(),
        Err(e) => Err(anyhow!("reading {}: {e}", path.display())),
    }
}

/// The engine's limits for a node whose batches a circuit of `shape` proves: money leaves only
/// an account whose positions all fit the shape's registers (read-only ones included: a
/// withdrawal changes no position) in a batch of their own, and an
/// order fills only as many resting orders as a batch of its own holds.
pub(crate) fn limits(shape: Option<optio_prover::Shape>) -> optio_types::EngineLimits {
    let mut limits = optio_types::EngineLimits::default();
    if let Some(shape) = shape {
        limits.max_positions_to_withdraw =
            (shape.positions + shape.readonly).min(shape.instruments) as u32;
        limits.fill_budget = shape.fill_budget();
        limits.mark_windows = shape.mark_windows();
        limits.settle_budget = shape.settle_budget();
    }
    limits
}

/// The batch capacity of a circuit shape: a batcher given it cuts only batches the shape holds.
pub(crate) fn capacity(shape: optio_prover::Shape) -> optio_state::Capacity {
    optio_state::Capacity::new(move |state, ops| optio_prover::fits(state, ops, shape).is_ok())
}

/// A prover worker on `batches`: proves what no other worker holds, prints each outcome after
/// `prefix`, then (unless `once`) follows the directory for new batches.
pub(crate) fn work(
    batches: &std::path::Path,
    keys: &Keys,
    stale_after: Duration,
    once: bool,
    prefix: &str,
) -> Result<()> {
    let mut rng = os_rng();
    // The state after the batches settled so far, kept across passes.
    let mut walker = Walker::new(batches);
    loop {
        let done = walker
            .prove_pending(keys, &mut rng, stale_after, |outcome| match outcome {
                Outcome::Proven { batch, seconds } => {
                    println!("{prefix}batch {batch}: proven in {seconds:.1} s")
                }
                Outcome::Unprovable { batch, reason } => {
                    println!("{prefix}batch {batch}: not provable: {reason}")
                }
            })
            .map_err(|e| anyhow!(e))?;
        if once {
            return Ok(());
        }
        if done.is_empty() {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Runs `optio prove`.
pub fn run(args: ProveArgs) -> Result<()> {
    match args.cmd {
        ProveCmd::Setup { keys, shape } => {
            let shape = shape.shape();
            shape.check().map_err(|e| anyhow!("shape_unusable: {e}"))?;
            std::fs::create_dir_all(&keys)?;
            let t = std::time::Instant::now();
            let generated = Keys::generate(shape, &mut os_rng()).map_err(|e| anyhow!("{e}"))?;
            generated.write(&keys).map_err(|e| anyhow!("{e}"))?;
            println!(
                "keys {} ({} op slots, {} accounts, {} positions and {} read-only ones, {} instruments, {} listing and {} expiry slots, {} settlement slots of {} holders, {} mark windows of {} ids, {} risk scenarios, {} account slots, {} margin slots, {} price and {} solvency windows of {} ids) written to {} in {:.1} s",
                shape.name(),
                shape.slots,
                shape.accounts,
                shape.positions,
                shape.readonly,
                shape.instruments,
                shape.listings,
                shape.expiries,
                shape.settlements,
                shape.holders,
                shape.marks,
                shape.mark_window(),
                shape.risk_chunks * optio_state::leaf::RISK_CHUNK,
                shape.keys,
                shape.margins,
                shape.prices,
                shape.solvency,
                shape.solvency_window(),
                keys.display(),
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        ProveCmd::Run {
            at,
            once,
            stale_after_s,
        } => {
            let keys = at.keys()?;
            work(
                &at.batches,
                &keys,
                Duration::from_secs(stale_after_s),
                once,
                "",
            )
        }
        ProveCmd::Check { at } => {
            let keys = at.keys()?;
            match check_proofs(&at.batches, &keys) {
                Ok((proven, missing)) => {
                    println!(
                        "{} batches proven, every proof checks against the blobs; {} without a proof{}",
                        proven.len(),
                        missing.len(),
                        if missing.is_empty() {
                            String::new()
                        } else {
                            format!(": {missing:?}")
                        }
                    );
                    Ok(())
                }
                Err(e) => bail!("{e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A withdrawal changes no position, so an account may withdraw against as many positions
    /// as the writable and read-only registers hold together, up to the instrument registers;
    /// the fill budget counts the writable ones only.
    #[test]
    fn read_only_registers_count_for_withdrawals_not_fills() {
        let shape = |positions, readonly, instruments| Shape {
            slots: 4,
            accounts: 4,
            positions,
            instruments,
            risk_chunks: 1,
            margins: 1,
            readonly,
            ..Shape::default()
        };
        for (positions, readonly, instruments, withdraw) in
            [(4, 0, 12, 4), (4, 3, 12, 7), (4, 3, 6, 6), (0, 3, 12, 3)]
        {
            let limits = limits(Some(shape(positions, readonly, instruments)));
            assert_eq!(limits.max_positions_to_withdraw, withdraw);
            assert_eq!(limits.fill_budget.positions, positions as u32);
        }
        assert_eq!(
            limits(None).max_positions_to_withdraw,
            optio_types::EngineLimits::default().max_positions_to_withdraw
        );
    }

    /// The devnet's shape is the one the README's setup command names (`optio prove setup
    /// --marks 1 --mark-window 64`), with room for the default scenario set.
    #[test]
    fn the_devnet_shape_is_the_setup_commands() {
        #[derive(clap::Parser)]
        struct Setup {
            #[command(flatten)]
            shape: ShapeArgs,
        }
        let named =
            <Setup as clap::Parser>::parse_from(["setup", "--marks", "1", "--mark-window", "64"]);
        assert_eq!(named.shape.shape(), Shape::DEVNET);
        let scenarios = optio_pricing::risk::default_scenarios().len();
        assert!(scenarios < Shape::DEVNET.risk_chunks * optio_state::leaf::RISK_CHUNK);
        Shape::DEVNET.check().expect("usable");
    }

    /// A shape small enough to generate keys for in a test.
    fn small() -> Shape {
        Shape {
            slots: 1,
            accounts: 2,
            positions: 2,
            instruments: 1,
            risk_chunks: 1,
            ..Shape::default()
        }
    }

    /// The devnet's keys cache: generated where there are none, read back after (the same
    /// keys, nothing generated), generated again over keys of another circuit version or a
    /// damaged file, and never for a shape that cannot be used.
    #[test]
    fn cached_keys_are_made_once_and_remade_when_unusable() {
        let small = small();
        let dir = tempfile::tempdir().expect("temp");
        let cache = dir.path().join("cache");
        let heard = std::cell::RefCell::new(Vec::new());
        let say = |line: &str| heard.borrow_mut().push(line.to_owned());
        let made = cached_keys(&cache, small, say).expect("made");
        assert!(
            heard.borrow()[0].contains("none there yet"),
            "{:?}",
            heard.borrow()
        );
        assert_eq!(heard.borrow().len(), 2);
        heard.borrow_mut().clear();
        let again = cached_keys(&cache, small, say).expect("read");
        assert!(heard.borrow().is_empty(), "{:?}", heard.borrow());
        assert_eq!(again.vk, made.vk);

        let version = cache.join(format!("{}.circuit", small.name()));
        std::fs::write(&version, "1\n").expect("writes");
        let remade = cached_keys(&cache, small, say).expect("remade");
        assert!(
            heard.borrow()[0].contains("another circuit version"),
            "{:?}",
            heard.borrow()
        );
        assert_ne!(remade.vk, made.vk);
        assert_eq!(Keys::read(&cache, small).expect("written").vk, remade.vk);
        heard.borrow_mut().clear();

        let vk = cache.join(format!("{}.vk", small.name()));
        std::fs::write(&vk, b"damaged").expect("writes");
        let repaired = cached_keys(&cache, small, say).expect("remade");
        assert!(
            heard.borrow()[0].contains("unusable"),
            "{:?}",
            heard.borrow()
        );
        assert_eq!(Keys::read(&cache, small).expect("written").vk, repaired.vk);
        heard.borrow_mut().clear();

        // A cache that cannot be made, or written, is named, and leaves no keys behind.
        let file = dir.path().join("file");
        std::fs::write(&file, b"").expect("writes");
        let e = cached_keys(&file.join("keys"), small, say)
            .err()
            .expect("refused");
        assert!(e.to_string().starts_with("keys_cache: "), "{e}");
        let blocked = dir.path().join("blocked");
        std::fs::create_dir_all(blocked.join(format!("{}.tmp", small.name()))).expect("creates");
        let e = cached_keys(&blocked, small, say).err().expect("refused");
        assert!(e.to_string().starts_with("keys_cache: "), "{e}");
        assert!(Keys::read(&blocked, small).is_err());
        heard.borrow_mut().clear();

        let unusable = Shape {
            settlements: 1,
            holders: 1,
            ..small
        };
        let e = cached_keys(&dir.path().join("other"), unusable, say)
            .err()
            .expect("refused");
        assert!(e.to_string().starts_with("shape_unusable"), "{e}");
        assert!(heard.borrow().is_empty());
        assert!(!dir.path().join("other").exists());
    }

    /// A data directory keeps the proving setting its batches were cut under: the same one
    /// passes, another is refused while batches are there (the record unchanged), and a
    /// directory without batches takes the new one.
    #[test]
    fn a_data_directory_keeps_the_circuit_its_batches_were_cut_for() {
        let dir = tempfile::tempdir().expect("temp");
        let data = dir.path().join("data");
        let devnet = Some(Shape::DEVNET);
        let record = data.join(PROVE_SHAPE_FILE);
        check_prove_shape(&data, None).expect("a new directory");
        assert_eq!(
            std::fs::read_to_string(&record).expect("recorded"),
            "none\n"
        );
        // No batch yet: the setting may still change.
        check_prove_shape(&data, devnet).expect("no batches yet");
        let named = format!("{}\n", Shape::DEVNET.name());
        assert_eq!(std::fs::read_to_string(&record).expect("recorded"), named);
        std::fs::create_dir_all(data.join("batches")).expect("mkdir");
        std::fs::write(data.join("batches/00000001.blob"), b"cut").expect("writes");
        check_prove_shape(&data, devnet).expect("the same circuit");
        let e = check_prove_shape(&data, None).expect_err("refused");
        assert!(e.to_string().starts_with("shape_mismatch"), "{e}");
        assert!(e.to_string().contains("without proving"), "{e}");
        let other = Shape {
            marks: 2,
            ..Shape::DEVNET
        };
        let e = check_prove_shape(&data, Some(other)).expect_err("refused");
        assert!(e.to_string().starts_with("shape_mismatch"), "{e}");
        assert_eq!(std::fs::read_to_string(&record).expect("kept"), named);
    }
}
