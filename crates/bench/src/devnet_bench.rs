//! Order acknowledgement latency on the whole devnet (its market makers, takers and oracle, its
//! embedded L1 chain), without proving and with its in-process prover, one run after the
//! other: what proving every batch beside the exchange costs the exchange's users. Each run
//! starts `optio devnet` afresh (so the proving one proves its startup batches while the
//! orders arrive: the busiest minutes), sends pre-signed IOC orders that never fill (each a
//! full signed round trip through the write-ahead log) open loop at a fixed rate, and reads
//! `/metrics` at the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use secp256k1::SecretKey;

use crate::load_bench::Started;

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Signed orders per second.
    #[arg(long, default_value_t = 20)]
    rate: u64,
    /// Seconds of orders per run, from the devnet's start.
    #[arg(long, default_value_t = 240)]
    seconds: u64,
    /// The devnet's keys cache (`optio devnet --keys-cache`): keys of its shape are made there
    /// first if it has none.
    #[arg(long)]
    keys_cache: PathBuf,
    /// Two more runs with the prover's threads moved after the start (`chrt`, `renice`;
    /// Linux, as root) from the idle class to the normal one, at niceness 19 and then at 0:
    /// what the idle class buys over the lowest niceness, and over none.
    #[arg(long)]
    compare_priorities: bool,
    /// Path of the `optio` binary (default: next to this one).
    #[arg(long)]
    optio: Option<PathBuf>,
}

/// One run's configuration.
#[derive(Clone, Copy, PartialEq)]
enum Run {
    NoProving,
    Lowest,
    Nice19,
    Normal,
}

impl Run {
    fn label(self) -> &'static str {
        match self {
            Run::NoProving => "no proving (--no-prove)",
            Run::Lowest => "proving (the default)",
            Run::Nice19 => "proving, prover at nice 19",
            Run::Normal => "proving, prover at nice 0",
        }
    }

    /// The niceness the run moves the prover's threads to, in the normal class.
    fn moved_to(self) -> Option<i64> {
        match self {
            Run::Nice19 => Some(19),
            Run::Normal => Some(0),
            Run::NoProving | Run::Lowest => None,
        }
    }
}

/// What one run measured.
struct Measured {
    hist: Histogram<u64>,
    cut: f64,
    proven: f64,
    lag: f64,
    /// The prover threads' scheduling, as `sched` prints it.
    sched: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    let optio = crate::load_bench::optio_binary(args.optio.as_ref())?;
    // Keys first, outside the timed runs (a minute, once).
    let made = Command::new(&optio)
        .args(["devnet", "--listen", "127.0.0.1:0", "--duration-s", "1"])
        .arg("--keys-cache")
        .arg(&args.keys_cache)
        .output()
        .with_context(|| format!("starting {}", optio.display()))?;
    if !made.status.success() {
        bail!(
            "the devnet's keys: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    let mut runs = vec![Run::NoProving, Run::Lowest];
    if args.compare_priorities {
        runs.extend([Run::Nice19, Run::Normal]);
    }
    println!(
        "devnet order acknowledgement, {} signed IOC orders/s for {} s from each start (the devnet's makers, takers, oracle and L1 running; {} cores)",
        args.rate,
        args.seconds,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let mut results = Vec::new();
    for run in runs {
        let m = measure(args, &optio, run)?;
        results.push((run, m));
    }
    println!(
        "\n{:<30} {:>8} {:>8} {:>9} {:>8} {:>11} {:>7} {:>8} {:>10}",
        "run", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "cut/proven", "lag", "sched", "p99 ratio"
    );
    let base = results[0].1.hist.value_at_quantile(0.99) as f64;
    for (run, m) in &results {
        let q = |p: f64| m.hist.value_at_quantile(p) as f64 / 1_000.0;
        let sched = match &m.sched[..] {
            [] => "-".to_owned(),
            [first, ..] if m.sched.iter().all(|n| n == first) => first.clone(),
            _ => "mixed".to_owned(),
        };
        let lag = if *run == Run::NoProving {
            "-".to_owned()
        } else {
            m.lag.to_string()
        };
        println!(
            "{:<30} {:>8.2} {:>8.2} {:>9.2} {:>8.2} {:>5}/{:<5} {:>7} {:>8} {:>10.2}",
            run.label(),
            q(0.5),
            q(0.99),
            q(0.999),
            m.hist.max() as f64 / 1_000.0,
            m.cut,
            m.proven,
            lag,
            sched,
            m.hist.value_at_quantile(0.99) as f64 / base
        );
        let sent = args.rate * args.seconds;
        if m.hist.len() != sent {
            println!("  ({} of {sent} orders acknowledged)", m.hist.len());
        }
    }
    println!(
        "(lag: batches cut and not yet proven at the end; sched: the prover threads' scheduling, the idle class or the normal one at a niceness; ratio: p99 against the run without proving)"
    );
    Ok(())
}

/// Starts the devnet of `run` (its own data directory, the keys cache) and reads what it
/// prints: the API address, the demo account and the rollup's domain.
fn start(optio: &Path, run: Run, keys_cache: &Path, data: &Path) -> Result<(Child, Started)> {
    let mut devnet = Command::new(optio);
    devnet
        .args(["devnet", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .arg("--keys-cache")
        .arg(keys_cache);
    if run == Run::NoProving {
        devnet.arg("--no-prove");
    }
    let (mut node, started) = crate::load_bench::start_devnet(devnet)?;
    if started.domain.is_none() {
        let _ = node.kill();
        let _ = node.wait();
        bail!("the devnet printed no L1 chain (chain id and rollup)");
    }
    Ok((node, started))
}

/// The scheduling of the devnet's prover threads (its pool's `optio-prover-N`, which run the
/// proving; the `optio-prover` thread only waits for them), from /proc: `idle` for the idle
/// class (`SCHED_IDLE`), `nice N` for the normal one.
fn prover_threads(pid: u32) -> Vec<(String, String)> {
    optio_prover::worker::thread_scheduling(pid, "optio-prover-")
        .into_iter()
        .map(|t| {
            let sched = match t.policy {
                0 => format!("nice {}", t.nice),
                5 => "idle".to_owned(),
                other => format!("policy {other}"),
            };
            (t.tid, sched)
        })
        .collect()
}

/// The prover's threads once its pool has started them all (one a core) and each has moved
/// itself to the idle class, so that a move from it is not undone by a thread still starting.
fn started_prover_threads(pid: u32) -> Result<Vec<(String, String)>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let threads = prover_threads(pid);
        if threads.len() == cores && threads.iter().all(|(_, s)| s == "idle") {
            return Ok(threads);
        }
        if Instant::now() > deadline {
            bail!("the devnet's prover threads did not all start in the idle class: {threads:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn measure(args: &Args, optio: &Path, run: Run) -> Result<Measured> {
    let data = tempfile::tempdir()?;
    let (mut node, started) = start(optio, run, &args.keys_cache, data.path())?;
    let result = (|| {
        if let Some(nice) = run.moved_to() {
            for (tid, _) in started_prover_threads(node.id())? {
                let nice = nice.to_string();
                for (tool, args) in [
                    ("chrt", ["--other", "-p", "0", &tid]),
                    ("renice", ["-n", &nice, "-p", &tid]),
                ] {
                    let status = Command::new(tool)
                        .args(args)
                        .stdout(Stdio::null())
                        .status()
                        .context(tool)?;
                    if !status.success() {
                        bail!("{tool} {} failed (needs root)", args.join(" "));
                    }
                }
            }
        }
        let hist = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?
            .block_on(send(args, &started))?;
        // As the orders found them, read at their end.
        let sched = prover_threads(node.id())
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        let metrics = fetch_metrics(&started.addr)?;
        let metric = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
                .unwrap_or(0.0)
        };
        Ok(Measured {
            hist,
            cut: metric("optio_batches_total"),
            proven: metric("optio_batches_proven_total"),
            lag: metric("optio_proving_lag_batches"),
            sched,
        })
    })();
    let _ = node.kill();
    let _ = node.wait();
    let m = result?;
    println!(
        "{}: {} orders acknowledged, {} batches cut, {} proven",
        run.label(),
        m.hist.len(),
        m.cut,
        m.proven
    );
    Ok(m)
}

/// Sends the run's orders open loop (latency from each order's scheduled time) over a few
/// keep-alive connections.
async fn send(args: &Args, at: &Started) -> Result<Histogram<u64>> {
    let key = SecretKey::from_secret_bytes([0xde; 32])?;
    let domain = at.domain.context("the rollup's domain")?;
    let total = args.rate * args.seconds;
    let expiry = optio_gateway::now_ms() / 1_000 + 3_600;
    let first_nonce = optio_gateway::dated_nonce(optio_gateway::now_ms(), 0);
    let requests: Vec<Vec<u8>> = (0..total)
        .map(|i| {
            let body = crate::load_bench::never_filling_order(
                &key,
                domain,
                at.subaccount,
                (first_nonce, i),
                expiry,
            );
            crate::load_bench::http_post(&body)
        })
        .collect();
    let requests = std::sync::Arc::new(requests);
    let connections = 4u64;
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (requests, addr, rate) = (requests.clone(), at.addr.clone(), args.rate);
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3)?;
            let mut stream = tokio::net::TcpStream::connect(&addr).await?;
            stream.set_nodelay(true)?;
            let mut buf = Vec::with_capacity(16 * 1024);
            let mut j = c;
            while j < total {
                let due = start + Duration::from_nanos(j * 1_000_000_000 / rate);
                tokio::time::sleep_until(due.into()).await;
                crate::load_bench::post(&mut stream, &requests[j as usize], 1, &mut buf).await?;
                hist.record(due.elapsed().as_micros() as u64)?;
                j += connections;
            }
            Ok::<_, anyhow::Error>(hist)
        }));
    }
    let mut hist = Histogram::<u64>::new(3)?;
    for t in tasks {
        hist.add(t.await??)?;
    }
    Ok(hist)
}

/// `GET /metrics`.
fn fetch_metrics(addr: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}
