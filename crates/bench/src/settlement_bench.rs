//! Settlement-state benchmark, side by side in one run:
//! - Poseidon (BN254, circom) per tree node: ours against `light-poseidon`'s hasher;
//! - single leaf updates per second into a tree already holding `--accounts` accounts: Optio's
//!   Poseidon sparse Merkle tree against `jmt` 0.12 and `sparse-merkle-tree` 0.6 with the same
//!   Poseidon (those trees hash byte strings: the bytes go in 31-byte field elements, as
//!   `optio_state::poseidon::hash_bytes` does), and both peers with blake3 as a reference point;
//! - the root after a batch touching `--touched` accounts: Optio on one core and on all cores,
//!   the peers' batch updates;
//! - data-blob bytes per fill.

use std::time::Instant;

use optio_state::SparseMerkleTree;
use optio_state::poseidon::{Fr, hash_bytes, hash4, to_bytes};
use rand::{Rng, SeedableRng};

/// Arguments.
#[derive(clap::Args, Clone, Copy)]
pub struct Args {
    /// Accounts in Optio's tree before measuring.
    #[arg(long, default_value_t = 1_000_000)]
    accounts: u64,
    /// Accounts in the peers' trees (building a Poseidon jmt of 20,000 takes about a minute
    /// here: a million would take most of an hour). Optio's tree has a fixed depth, so its
    /// update cost does not depend on the count; the peers' grows with it, so a smaller peer
    /// tree flatters the peers.
    #[arg(long, default_value_t = 20_000)]
    peer_accounts: u64,
    /// Single-leaf updates timed per tree.
    #[arg(long, default_value_t = 1_000)]
    updates: u64,
    /// Accounts touched by the timed batch.
    #[arg(long, default_value_t = 10_000)]
    touched: u64,
}

/// Poseidon over byte strings, for the byte-oriented peer trees.
#[derive(Default)]
struct PoseidonBytes(Vec<u8>);

impl jmt::SimpleHasher for PoseidonBytes {
    fn new() -> Self {
        Self(Vec::with_capacity(96))
    }
    fn update(&mut self, data: &[u8]) {
        self.0.extend_from_slice(data);
    }
    fn finalize(self) -> [u8; 32] {
        to_bytes(&hash_bytes(&self.0))
    }
}

impl sparse_merkle_tree::traits::Hasher for PoseidonBytes {
    fn write_h256(&mut self, h: &sparse_merkle_tree::H256) {
        self.0.extend_from_slice(h.as_slice());
    }
    fn write_byte(&mut self, b: u8) {
        self.0.push(b);
    }
    fn finish(self) -> sparse_merkle_tree::H256 {
        to_bytes(&hash_bytes(&self.0)).into()
    }
}

/// blake3 for the peer trees (the reference point).
#[derive(Default)]
struct Blake3(blake3::Hasher);

impl jmt::SimpleHasher for Blake3 {
    fn new() -> Self {
        Self(blake3::Hasher::new())
    }
    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    fn finalize(self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }
}

impl sparse_merkle_tree::traits::Hasher for Blake3 {
    fn write_h256(&mut self, h: &sparse_merkle_tree::H256) {
        self.0.update(h.as_slice());
    }
    fn write_byte(&mut self, b: u8) {
        self.0.update(&[b]);
    }
    fn finish(self) -> sparse_merkle_tree::H256 {
        (*self.0.finalize().as_bytes()).into()
    }
}

fn key(i: u64) -> [u8; 32] {
    *blake3::hash(&i.to_le_bytes()).as_bytes()
}

fn value(i: u64, round: u64) -> [u8; 32] {
    let mut v = [0u8; 32];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v[8..16].copy_from_slice(&round.to_le_bytes());
    v
}

/// Result of one tree: updates/s and the batch root time.
struct Row {
    name: String,
    build_s: f64,
    updates_per_s: f64,
    batch_ms: f64,
}

/// What `build_and_update` measured, and the batch to time next.
struct Measured {
    build_s: f64,
    updates_per_s: f64,
    batch: Vec<(u64, Fr)>,
}

/// Builds `tree` with `--accounts` leaves, then times single updates (each followed by
/// `commit`); returns the build time, the update rate and a random batch of `--touched` leaves.
fn build_and_update<S: optio_state::NodeStore + Sync>(
    args: &Args,
    tree: &mut SparseMerkleTree<S>,
    mut commit: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Measured> {
    let t = Instant::now();
    let leaves: Vec<(u64, Fr)> = (0..args.accounts).map(|i| (i, Fr::from(i + 1))).collect();
    tree.set_many(&leaves).expect("in range");
    commit()?;
    let build_s = t.elapsed().as_secs_f64();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let t = Instant::now();
    for r in 0..args.updates {
        tree.set(rng.random_range(0..args.accounts), Fr::from(r + 7))
            .expect("in range");
        commit()?;
    }
    let updates_per_s = args.updates as f64 / t.elapsed().as_secs_f64();
    let batch = (0..args.touched)
        .map(|_| {
            (
                rng.random_range(0..args.accounts),
                Fr::from(rng.random::<u64>()),
            )
        })
        .collect();
    Ok(Measured {
        build_s,
        updates_per_s,
        batch,
    })
}

fn optio_trees(args: &Args) -> anyhow::Result<Vec<Row>> {
    let mut tree = SparseMerkleTree::new(optio_state::leaf::ACCOUNT_DEPTH);
    let Measured {
        build_s,
        updates_per_s,
        batch,
    } = build_and_update(args, &mut tree, || Ok(()))?;
    let mut one_by_one = tree.clone();
    let t = Instant::now();
    for (i, v) in &batch {
        one_by_one.set(*i, *v).expect("in range");
    }
    let serial_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    tree.set_many(&batch).expect("in range");
    let batch_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(tree.root(), one_by_one.root(), "both ways reach one root");
    let name = |s: &str| format!("Optio SMT ({} accts), {s}", args.accounts);
    Ok(vec![
        Row {
            name: name("leaf by leaf, 1 core"),
            build_s,
            updates_per_s,
            batch_ms: serial_ms,
        },
        Row {
            name: name("batch, all cores"),
            build_s,
            updates_per_s,
            batch_ms,
        },
    ])
}

/// Optio's tree on the `redb` store the node uses: built and committed, single updates each
/// committed (one fsync each), and the batch committed in one transaction.
fn optio_redb(args: &Args) -> anyhow::Result<Row> {
    let dir = tempfile::tempdir()?;
    let store = optio_state::RedbStore::open(&dir.path().join("tree.redb"))?;
    let mut tree = SparseMerkleTree::with_store(optio_state::leaf::ACCOUNT_DEPTH, store.clone());
    let commit = || Ok(store.commit(&optio_state::store::Records::default())?);
    let Measured {
        build_s,
        updates_per_s,
        batch,
    } = build_and_update(args, &mut tree, commit)?;
    let t = Instant::now();
    tree.set_many(&batch).expect("in range");
    commit()?;
    let batch_ms = t.elapsed().as_secs_f64() * 1e3;
    Ok(Row {
        name: format!("Optio SMT ({} accts) on redb, commit each", args.accounts),
        build_s,
        updates_per_s,
        batch_ms,
    })
}

fn jmt_tree<H: jmt::SimpleHasher>(args: &Args, hasher: &str) -> Row {
    use jmt::{JellyfishMerkleTree, KeyHash, mock::MockTreeStore};
    let store = MockTreeStore::default();
    let t = Instant::now();
    {
        let tree = JellyfishMerkleTree::<_, H>::new(&store);
        let (_, batch) = tree
            .put_value_set(
                (0..args.accounts).map(|i| (KeyHash(key(i)), Some(value(i, 0).to_vec()))),
                0,
            )
            .expect("writes");
        store.write_tree_update_batch(batch).expect("stores");
    }
    let build_s = t.elapsed().as_secs_f64();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let tree = JellyfishMerkleTree::<_, H>::new(&store);
    let t = Instant::now();
    for r in 0..args.updates {
        let i = rng.random_range(0..args.accounts);
        let (_, batch) = tree
            .put_value_set([(KeyHash(key(i)), Some(value(i, r + 1).to_vec()))], r + 1)
            .expect("writes");
        store.write_tree_update_batch(batch).expect("stores");
    }
    let updates_per_s = args.updates as f64 / t.elapsed().as_secs_f64();
    let version = args.updates + 1;
    let batch: Vec<_> = (0..args.touched)
        .map(|_| rng.random_range(0..args.accounts))
        .collect();
    let t = Instant::now();
    let (root, update) = tree
        .put_value_set(
            batch
                .iter()
                .map(|i| (KeyHash(key(*i)), Some(value(*i, version).to_vec()))),
            version,
        )
        .expect("writes");
    store.write_tree_update_batch(update).expect("stores");
    let batch_ms = t.elapsed().as_secs_f64() * 1e3;
    std::hint::black_box(root);
    Row {
        name: format!("jmt 0.12 ({} accts), {hasher}", args.accounts),
        build_s,
        updates_per_s,
        batch_ms,
    }
}

fn smt_tree<H: sparse_merkle_tree::traits::Hasher + Default>(args: &Args, hasher: &str) -> Row {
    use sparse_merkle_tree::{H256, SparseMerkleTree as Smt, default_store::DefaultStore};
    let mut tree: Smt<H, H256, DefaultStore<H256>> = Smt::default();
    let t = Instant::now();
    tree.update_all(
        (0..args.accounts)
            .map(|i| (H256::from(key(i)), H256::from(value(i, 0))))
            .collect(),
    )
    .expect("writes");
    let build_s = t.elapsed().as_secs_f64();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let t = Instant::now();
    for r in 0..args.updates {
        let i = rng.random_range(0..args.accounts);
        tree.update(H256::from(key(i)), H256::from(value(i, r + 1)))
            .expect("writes");
    }
    let updates_per_s = args.updates as f64 / t.elapsed().as_secs_f64();
    let batch: Vec<_> = (0..args.touched)
        .map(|_| rng.random_range(0..args.accounts))
        .map(|i| (H256::from(key(i)), H256::from(value(i, u64::MAX))))
        .collect();
    let t = Instant::now();
    tree.update_all(batch).expect("writes");
    let batch_ms = t.elapsed().as_secs_f64() * 1e3;
    std::hint::black_box(tree.root());
    Row {
        name: format!("sparse-merkle-tree 0.6 ({} accts), {hasher}", args.accounts),
        build_s,
        updates_per_s,
        batch_ms,
    }
}

fn poseidon_micro() {
    use light_poseidon::{Poseidon, PoseidonHasher};
    let n = 20_000u64;
    let mut h = Fr::from(1u64);
    let t = Instant::now();
    for _ in 0..n {
        h = hash4(h, Fr::from(7u64), Fr::from(8u64), Fr::from(9u64));
    }
    let ours = t.elapsed().as_secs_f64() / n as f64 * 1e6;
    let mut p = Poseidon::<Fr>::new_circom(4).expect("parameters");
    let mut g = Fr::from(1u64);
    let t = Instant::now();
    for _ in 0..n {
        g = p
            .hash(&[g, Fr::from(7u64), Fr::from(8u64), Fr::from(9u64)])
            .expect("hashes");
    }
    let theirs = t.elapsed().as_secs_f64() / n as f64 * 1e6;
    assert_eq!(h, g, "the two Poseidon implementations agree");
    let t = Instant::now();
    let mut b = [0u8; 32];
    for _ in 0..n {
        let mut x = blake3::Hasher::new();
        x.update(&b);
        x.update(&[7; 96]);
        b = *x.finalize().as_bytes();
    }
    let blake = t.elapsed().as_secs_f64() / n as f64 * 1e6;
    std::hint::black_box(b);
    println!("tree node hash (four children), one core:");
    println!("  Optio Poseidon(4)                 {ours:>8.2} µs");
    println!(
        "  light-poseidon 0.5 (reused)       {theirs:>8.2} µs   Optio is {:.2}x faster",
        theirs / ours
    );
    println!(
        "  blake3 of 128 bytes               {blake:>8.2} µs   Poseidon costs {:.0}x blake3\n",
        ours / blake
    );
}

/// A synthetic but realistic flow: a BTC chain of 57 instruments (four expiries x 7 strikes x
/// calls and puts, and the perpetual) whose marks and 31-scenario risk arrays come from the real
/// oracle code, 10 market makers, 1,000 takers, fills near the mark.
pub(crate) struct Flow {
    /// Engine time of the flow.
    pub now: u64,
    pub(crate) specs: Vec<optio_types::InstrumentSpec>,
    update: optio_types::OracleUpdate,
}

impl Flow {
    pub(crate) fn new() -> anyhow::Result<Flow> {
        use optio_types::{InstrumentSpec, MONEY_SCALE, Price};
        let now = 1_795_651_200_000u64; // 2026-11-26T00:00Z
        let mut names = vec!["BTC-PERPETUAL".to_owned()];
        for expiry in ["27NOV26", "4DEC26", "25DEC26", "26MAR27"] {
            for strike in [70_000, 80_000, 85_000, 90_000, 95_000, 100_000, 110_000] {
                for right in ["C", "P"] {
                    names.push(format!("BTC-{expiry}-{strike}-{right}"));
                }
            }
        }
        let specs: Vec<InstrumentSpec> = names
            .iter()
            .map(|n| {
                InstrumentSpec::with_defaults(
                    n.parse().expect("valid name"),
                    Price(300_000 * MONEY_SCALE),
                )
            })
            .collect();
        let list = optio_oracle::numbered(&specs);
        let svi = optio_pricing::svi::Svi {
            a: 0.002,
            b: 0.03,
            rho: -0.3,
            m: 0.0,
            sigma: 0.2,
        };
        let slices = vec![
            optio_pricing::svi::Slice { t: 0.01, svi },
            optio_pricing::svi::Slice {
                t: 0.4,
                svi: optio_pricing::svi::Svi { a: 0.02, ..svi },
            },
        ];
        let surface = optio_pricing::svi::Surface::new(90_000.0, 0.0, slices)?;
        let update = optio_oracle::build_update(
            "BTC",
            &surface,
            &optio_pricing::risk::default_scenarios(),
            &list,
            now,
        )?;
        Ok(Flow { now, specs, update })
    }

    /// One mark op per instrument (what every batch carries).
    pub(crate) fn marks(&self) -> Vec<optio_state::Op> {
        self.update
            .marks
            .iter()
            .map(|m| optio_state::Op::Mark {
                instrument: m.instrument,
                mark: m.mark,
                index: self.update.index_price,
                risk: m.risk_array.clone(),
                published_ms: self.update.published_ms,
            })
            .collect()
    }

    /// `n` fills near the marks.
    pub(crate) fn fills(&self, n: u64, rng: &mut impl Rng) -> Vec<optio_state::Op> {
        use optio_types::{AccountId, Price, QTY_SCALE, Qty, Side};
        (0..n)
            .map(|_| {
                let i = rng.random_range(0..self.update.marks.len());
                let m = &self.update.marks[i];
                let tick = self.specs[i].tick_size.0;
                let offset = (m.mark.0 as f64 * rng.random_range(-0.01..0.01)) as i64;
                optio_state::Op::Fill {
                    instrument: m.instrument,
                    maker: AccountId(rng.random_range(0..10)),
                    taker: AccountId(rng.random_range(10..1_010)),
                    taker_side: if rng.random_bool(0.5) {
                        Side::Buy
                    } else {
                        Side::Sell
                    },
                    price: Price(((m.mark.0 + offset) / tick).max(1) * tick),
                    qty: Qty(rng.random_range(1..200) * QTY_SCALE / 100),
                }
            })
            .collect()
    }

    /// The blob of a batch of `ops`.
    pub(crate) fn blob(&self, ops: &[optio_state::Op]) -> Vec<u8> {
        optio_state::encode(
            &optio_state::blob::BlobMeta {
                number: 1,
                first_seq: 1,
                last_seq: ops.len() as u64,
                time_ms: self.now,
                accounts: 0,
                instruments: self.specs.len() as u32,
            },
            ops,
        )
        .expect("the flow's ops encode")
    }
}

/// Blob bytes per fill for the realistic flow, batches every 2 s carrying one mark per
/// instrument.
fn blob_bytes() -> anyhow::Result<()> {
    let flow = Flow::new()?;
    let marks = flow.marks();
    println!(
        "data blob, one batch every 2 s, {} instruments' marks and risk arrays in each ({} bytes):",
        marks.len(),
        flow.blob(&marks).len()
    );
    println!(
        "{:>10} {:>14} {:>12} {:>16} {:>22}",
        "fills/s", "fills/batch", "blob bytes", "bytes per fill", "fill ops alone, /fill"
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for rate in [50u64, 200, 1_000, 5_000] {
        let n = rate * 2;
        let mut ops = flow.fills(n, &mut rng);
        let fills_only = flow.blob(&ops).len();
        ops.extend(marks.iter().cloned());
        let all = flow.blob(&ops).len();
        println!(
            "{rate:>10} {n:>14} {all:>12} {:>16.1} {:>22.1}",
            all as f64 / n as f64,
            fills_only as f64 / n as f64
        );
    }
    println!("(target <= 20 bytes per trade; the marks are a fixed cost per batch)\n");
    Ok(())
}

/// Runs the benchmark.
pub fn run(args: &Args) -> anyhow::Result<()> {
    blob_bytes()?;
    poseidon_micro();
    println!(
        "{} accounts in Optio's tree, {} in each peer's; {} single-leaf updates; a batch touching {} accounts",
        args.accounts, args.peer_accounts, args.updates, args.touched
    );
    let peers = Args {
        accounts: args.peer_accounts,
        ..*args
    };
    let mut rows = optio_trees(args)?;
    rows.push(optio_redb(args)?);
    rows.push(jmt_tree::<PoseidonBytes>(&peers, "Poseidon"));
    rows.push(smt_tree::<PoseidonBytes>(&peers, "Poseidon"));
    rows.push(jmt_tree::<Blake3>(&peers, "blake3"));
    rows.push(smt_tree::<Blake3>(&peers, "blake3"));
    let ours = rows[0].updates_per_s;
    let ours_batch = rows[1].batch_ms;
    println!(
        "{:<52} {:>9} {:>12} {:>10} {:>14} {:>11}",
        "tree", "build s", "updates/s", "Optio/x", "batch root ms", "Optio/x"
    );
    for r in &rows {
        println!(
            "{:<52} {:>9.1} {:>12.0} {:>9.2}x {:>14.1} {:>10.2}x",
            r.name,
            r.build_s,
            r.updates_per_s,
            ours / r.updates_per_s,
            r.batch_ms,
            r.batch_ms / ours_batch
        );
    }
    println!(
        "(Optio/x: how many times faster Optio's Poseidon tree is; the blake3 rows are the reference point, not a like-for-like hash)"
    );
    Ok(())
}
