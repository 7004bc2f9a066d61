//! Load generator. The node runs in its own process (`optio devnet --no-flow`, write-ahead log
//! with fsync on); this process pre-signs orders with the demo key, then offers them over
//! keep-alive HTTP connections on loopback at rising rates, open loop (latency is measured from
//! each order's scheduled send time, so a stalled server cannot hide its queueing). Beside it,
//! the same run measures raw libsecp256k1 recovery on all cores: the ceiling for signed orders.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use optio_gateway::client::{OrderRequest, order_params};
use secp256k1::{Message, SecretKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Offered rates, orders/s, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "500,1000,2000,4000,8000,16000"
    )]
    rates: Vec<u64>,
    /// Seconds per rate.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Concurrent HTTP connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Orders per HTTP request (a JSON-RPC batch when above 1, as a market maker sends quotes).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// The node's snapshot interval in inputs (0: never; the node's default otherwise).
    #[arg(long)]
    snapshot_every: Option<u64>,
    /// Path of the `optio` binary (default: next to this one).
    #[arg(long)]
    optio: Option<std::path::PathBuf>,
}

fn recovery_ceiling() -> f64 {
    let key = SecretKey::from_secret_bytes([7; 32]).expect("key");
    let digest = [9u8; 32];
    let sig = secp256k1::ecdsa::RecoverableSignature::sign_ecdsa_recoverable(
        Message::from_digest(digest),
        &key,
    );
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut n = 0u64;
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(1) {
                    std::hint::black_box(sig.recover(Message::from_digest(digest)).ok());
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    total as f64 / start.elapsed().as_secs_f64()
}

/// Sends one pre-built HTTP request and reads its response; checks that it acknowledges
/// `expected` orders. Cheap on purpose: the generator shares the node's cores.
pub(crate) async fn post(
    stream: &mut tokio::net::TcpStream,
    request: &[u8],
    expected: usize,
    buf: &mut Vec<u8>,
) -> Result<()> {
    // One write per request (two small writes would meet Nagle and delayed ACKs: 40 ms).
    stream.write_all(request).await?;
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    let (head, len) = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") {
            let headers = std::str::from_utf8(&buf[..end])?.to_ascii_lowercase();
            let len: usize = headers
                .split("\r\n")
                .find_map(|l| l.strip_prefix("content-length:"))
                .context("no content-length")?
                .trim()
                .parse()?;
            break (end + 4, len);
        }
    };
    while buf.len() < head + len {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = &buf[head..head + len];
    if memchr::memmem::find_iter(body, b"\"receipt\"").count() != expected {
        bail!("order not acknowledged: {}", String::from_utf8_lossy(body));
    }
    Ok(())
}

/// Runs the benchmark.
/// The JSON-RPC body of the demo key's `i`-th signed order (nonce `first_nonce + i`, dated
/// when signed: the node takes it within its nonce window, 10 minutes) for the domain
/// `(chain id, verifying contract)`: an IOC order on the BTC perpetual far from any price
/// (a buy at 1,000, a sell at 390,000, alternating), so that none rests or fills and each is a
/// full signed round trip.
pub(crate) fn never_filling_order(
    key: &SecretKey,
    (chain_id, contract): (u64, [u8; 20]),
    subaccount: u64,
    (first_nonce, i): (u64, u64),
    expiry: u64,
) -> String {
    let buy = i.is_multiple_of(2);
    let req = OrderRequest {
        subaccount,
        instrument_id: 0,
        instrument_name: "BTC-PERPETUAL",
        direction: if buy { "buy" } else { "sell" },
        price: if buy { "1000" } else { "390000" },
        amount: "0.01",
        max_fee: "100",
        nonce: first_nonce + i,
        expiry,
        time_in_force: "ioc",
    };
    let params = order_params(key, chain_id, contract, &req).expect("signs");
    serde_json::json!({"jsonrpc": "2.0", "id": i, "method": "private/order", "params": params})
        .to_string()
}

/// The `optio` binary: the one given, or the one next to this binary.
pub(crate) fn optio_binary(given: Option<&std::path::PathBuf>) -> Result<std::path::PathBuf> {
    match given {
        Some(p) => Ok(p.clone()),
        None => Ok(std::env::current_exe()?.with_file_name("optio")),
    }
}

/// What a starting `optio devnet` prints that a load generator needs: its API address, the demo
/// account's subaccount, and on an L1 chain the domain orders are signed for (chain id, rollup).
pub(crate) struct Started {
    pub(crate) addr: String,
    pub(crate) subaccount: u64,
    pub(crate) domain: Option<(u64, [u8; 20])>,
}

/// Spawns `devnet` (an `optio devnet` command, its arguments set), reads what it prints up to
/// its instruments line, and drains the rest on a thread of its own.
pub(crate) fn start_devnet(mut devnet: Command) -> Result<(Child, Started)> {
    let mut node = devnet
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", devnet.get_program()))?;
    let mut lines = BufReader::new(node.stdout.take().context("stdout")?).lines();
    let (mut addr, mut subaccount, mut domain) = (None, None, None);
    for line in lines.by_ref().map_while(Result::ok) {
        let line = line.trim();
        if let Some(u) = line.strip_prefix("JSON-RPC  http://") {
            addr = Some(u.trim_end_matches("/api/v2").to_owned());
        }
        if line.starts_with("L1 chain") {
            let words: Vec<&str> = line.split_whitespace().collect();
            let after = |w: &str| {
                words
                    .iter()
                    .position(|x| *x == w)
                    .and_then(|i| words.get(i + 1))
            };
            let chain_id = after("id").and_then(|v| v.trim_end_matches(',').parse().ok());
            let rollup = after("rollup").and_then(|r| optio_intents::parse_address(r));
            domain = chain_id.zip(rollup);
        }
        if line.starts_with("demo key") {
            subaccount = line.rsplit(' ').next().and_then(|s| s.parse().ok());
        }
        if line.starts_with("instruments:") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    let started = Started {
        addr: addr.context("the API address")?,
        subaccount: subaccount.context("the demo subaccount")?,
        domain,
    };
    Ok((node, started))
}

/// One whole HTTP request posting `body` (JSON) to the API, built before the clock starts.
pub(crate) fn http_post(body: &str) -> Vec<u8> {
    format!(
        "POST /api/v2 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub fn run(args: &Args) -> Result<()> {
    let ceiling = recovery_ceiling();
    let optio = optio_binary(args.optio.as_ref())?;
    let data = tempfile::tempdir()?;
    let mut devnet = Command::new(&optio);
    devnet
        .args([
            "devnet",
            "--no-l1",
            "--no-flow",
            "--listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(data.path())
        .args(
            args.snapshot_every
                .map(|n| vec!["--snapshot-every".to_owned(), n.to_string()])
                .unwrap_or_default(),
        );
    let (mut node, started) = start_devnet(devnet)?;
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?
        .block_on(drive(args, &started.addr, started.subaccount, ceiling));
    let _ = node.kill();
    let _ = node.wait();
    result
}

async fn drive(args: &Args, addr: &str, subaccount: u64, ceiling: f64) -> Result<()> {
    let key = SecretKey::from_secret_bytes([0xde; 32])?;
    let config = optio_gateway::Config::default();
    let total: u64 = args.rates.iter().map(|r| r * args.seconds).sum();
    println!("pre-signing {total} orders ...");
    // Far from any price so they never rest (IOC): every order is a full signed round trip.
    let expiry = optio_gateway::now_ms() / 1_000 + 3_600;
    let first_nonce = optio_gateway::dated_nonce(optio_gateway::now_ms(), 0);
    let bodies: Vec<String> = (0..total)
        .map(|i| {
            never_filling_order(
                &key,
                (config.chain_id, config.verifying_contract),
                subaccount,
                (first_nonce, i),
                expiry,
            )
        })
        .collect();
    // Whole HTTP requests, built before the clock starts: one order each, or a JSON-RPC batch.
    let batch = args.batch.max(1);
    let bodies: Vec<Vec<u8>> = bodies
        .chunks(batch)
        .map(|orders| {
            let body = if batch == 1 {
                orders[0].clone()
            } else {
                format!("[{}]", orders.join(","))
            };
            http_post(&body)
        })
        .collect();
    let bodies = Arc::new(bodies);
    println!(
        "signature-recovery ceiling on this machine (all {} cores): {ceiling:.0} orders/s\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{} order(s) per HTTP request; latency is per request, from its scheduled send time",
        args.batch.max(1)
    );
    println!(
        "{:>10} {:>12} {:>10} {:>10} {:>10}",
        "offered/s", "achieved/s", "p50 ms", "p99 ms", "p99.9 ms"
    );
    let mut offset = 0u64;
    let mut best = 0.0f64;
    let mut table = Vec::new();
    for &rate in &args.rates {
        let n = rate * args.seconds;
        let batch = args.batch.max(1) as u64;
        let requests = n / batch;
        let start = Instant::now() + Duration::from_millis(50);
        let mut tasks = Vec::new();
        let stride = args.connections as u64;
        for c in 0..args.connections {
            let (bodies, addr) = (bodies.clone(), addr.to_owned());
            tasks.push(tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new(3).expect("histogram");
                let mut stream = tokio::net::TcpStream::connect(&addr).await?;
                stream.set_nodelay(true)?;
                let mut buf = Vec::with_capacity(64 * 1024);
                let mut done = 0u64;
                let mut j = c as u64;
                while j < requests {
                    let due = start + Duration::from_nanos(j * batch * 1_000_000_000 / rate);
                    tokio::time::sleep_until(due.into()).await;
                    let request = &bodies[(offset / batch + j) as usize];
                    post(&mut stream, request, batch as usize, &mut buf).await?;
                    hist.record(due.elapsed().as_micros() as u64)?;
                    done += batch;
                    j += stride;
                }
                Ok::<_, anyhow::Error>((hist, done))
            }));
        }
        let mut hist = Histogram::<u64>::new(3)?;
        let mut done = 0;
        for t in tasks {
            let (h, d) = t.await??;
            hist.add(h)?;
            done += d;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let achieved = done as f64 / elapsed;
        let q = |p: f64| hist.value_at_quantile(p) as f64 / 1_000.0;
        println!(
            "{rate:>10} {achieved:>12.0} {:>10.2} {:>10.2} {:>10.2}",
            q(0.5),
            q(0.99),
            q(0.999)
        );
        table.push((rate, achieved, q(0.99)));
        best = best.max(achieved);
        offset += requests * batch;
        if achieved < 0.9 * rate as f64 {
            break;
        }
    }
    let half = table.iter().rfind(|(r, _, _)| (*r as f64) <= best / 2.0);
    println!(
        "\nsustained: {best:.0} signed orders/s = {:.2} of the recovery ceiling ({ceiling:.0}/s); target 0.7",
        best / ceiling
    );
    if let Some((r, _, p99)) = half {
        println!("p99 at {r}/s (about half the maximum): {p99:.2} ms; target <= 5 ms");
    }
    println!("note: the load generator shares the machine's cores with the node.");
    Ok(())
}
