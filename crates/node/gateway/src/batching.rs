//! The node's batcher thread: sequenced inputs with their events arrive through a bounded queue
//! (the writer never waits on it: what does not fit waits in the writer's overflow, counted in
//! the metrics); batches are cut by size and age and written as `<dir>/NNNNNNNN.blob` with the
//! header beside it as `NNNNNNNN.json`, its authorization section as `NNNNNNNN.auth` and the
//! changes to the signed orders that may still fill as `NNNNNNNN.orders` (each written to a
//! temporary file, fsynced, renamed; the blob last), then
//! the settlement state after it is persisted in `<dir>/state.redb` (tree nodes and records, one
//! transaction). At start the state is opened from that file and any blob written after it is
//! applied, so a restart continues the same chain of roots without replaying history.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use optio_state::auth::RECORD_BYTES;
use optio_state::{Batch, Batcher, SettlementState};
use optio_types::{Event, Input};

/// Queue length between the writer and the batcher, in groups.
const QUEUE: usize = 4_096;

/// When the batcher writes checkpoints and how it prunes behind them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checkpoints {
    /// A checkpoint after every this many batches (0: none, nothing pruned).
    pub every: u64,
    /// The most batches whose files one pass of the batcher's loop deletes (`prune_some`): the
    /// first prune of a long history (pruning turned on late, or after L1 was down) goes over
    /// several passes, between which batching goes on, rather than in one long stall.
    pub prune_per_pass: usize,
}

/// One sequenced input for the batcher.
pub(crate) struct Item {
    pub seq: u64,
    pub input: Input,
    /// What the user signed for it (an order's signature), posted beside its fills.
    pub signed: Option<optio_state::auth::Signed>,
    pub events: Arc<Vec<Event>>,
}

/// What the metrics show.
#[derive(Debug, Default, Clone)]
pub struct BatchStats {
    /// Last batch number written.
    pub number: u64,
    /// Its root (0x-hex).
    pub root: String,
    /// Last sequence number the batcher has taken.
    pub last_seq: u64,
    /// Last sequence number the last batch written covers (a restart feeds the batcher the
    /// inputs after it).
    pub cut_seq: u64,
    /// Blob bytes and fills written since start.
    pub bytes: u64,
    /// Fills written since start.
    pub fills: u64,
    /// Items waiting in the writer's overflow (the queue was full).
    pub overflow: u64,
    /// The batcher stopped (a batch failed to apply or could not be written).
    pub failed: Option<String>,
    /// Where the blobs are (the provers write their proofs beside them).
    pub dir: std::path::PathBuf,
    /// The last batch L1 has finalized (`Gateway::record_finalized_batch`).
    pub finalized: u64,
    /// What the batcher pruned since start.
    pub pruned: PruneStats,
}

/// The batches directory's pruning (`optio_state::checkpoint`): the batcher writes a checkpoint
/// every `checkpoint_every_batches` and deletes the files of the batches up to the newest
/// checkpoint L1 has finalized.
#[derive(Debug, Default, Clone)]
pub struct PruneStats {
    /// The files of the batches up to this one are deleted (0: none).
    pub through: u64,
    /// Validity proofs deleted since start.
    pub proofs: u64,
    /// Marks of batches the circuit cannot prove deleted since start.
    pub unprovable: u64,
    /// Why the last checkpoint or prune failed, if it did (the batcher goes on).
    pub failed: Option<String>,
}

/// What the provers (`optio prove run`, separate processes) have done in a batches directory
/// after batch `after` (the pruned ones' files are gone): batches with a proof file
/// (`NNNNNNNN.proof.json`), batches marked not provable by the circuit yet
/// (`NNNNNNNN.unprovable`), and the proving time of the newest proof.
pub fn proving_progress(dir: &Path, after: u64) -> (u64, u64, Option<f64>) {
    let (mut proven, mut unprovable, mut newest) = (0, 0, None::<(u64, std::path::PathBuf)>);
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let Some(number) = optio_state::checkpoint::file_number(&path).filter(|n| *n > after)
        else {
            continue;
        };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".proof.json") {
            proven += 1;
            if newest.as_ref().is_none_or(|(n, _)| number > *n) {
                newest = Some((number, path));
            }
        } else if name.ends_with(".unprovable") {
            unprovable += 1;
        }
    }
    let seconds = newest.and_then(|(_, path)| {
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str::<serde_json::Value>(&text).ok()?["prove_seconds"].as_f64()
    });
    (proven, unprovable, seconds)
}

impl BatchStats {
    /// Whether the batcher has taken every input up to `seq`.
    pub fn caught_up(&self, seq: u64) -> bool {
        self.last_seq >= seq
    }
}

/// The writer's end: a bounded queue of groups plus an overflow that never blocks.
pub(crate) struct Feed {
    tx: SyncSender<Vec<Item>>,
    overflow: VecDeque<Vec<Item>>,
    stats: Arc<Mutex<BatchStats>>,
    /// The batcher thread, joined when the feed is dropped.
    batcher: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Feed {
    /// Closes the batcher's queue and waits for it to finish what it holds and release its
    /// files (inputs still in `overflow` are dropped: the WAL has them, and the next start feeds
    /// them again).
    fn drop(&mut self) {
        let (closed, _) = std::sync::mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.tx, closed));
        if let Some(batcher) = self.batcher.take() {
            let _ = batcher.join();
        }
    }
}

impl Feed {
    /// Hands a group's items (in sequence order) to the batcher without waiting.
    pub fn send(&mut self, items: Vec<Item>) {
        self.overflow.push_back(items);
        while let Some(next) = self.overflow.pop_front() {
            match self.tx.try_send(next) {
                Ok(()) => {}
                Err(TrySendError::Full(back)) => {
                    self.overflow.push_front(back);
                    break;
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.overflow.clear();
                    break;
                }
            }
        }
        let waiting = self.overflow.iter().map(Vec::len).sum::<usize>() as u64;
        if let Ok(mut s) = self.stats.lock() {
            s.overflow = waiting;
        }
    }
}

pub use optio_state::blob_files;

/// Rebuilds the settlement state from the blobs in `dir`, from its start (genesis, or the
/// checkpoint the batcher pruned the finalized batches behind): the state, the last batch
/// number and the last sequence number it covers.
pub fn rebuild_dir(
    dir: &Path,
    each: impl FnMut(&optio_state::BatchHeader),
) -> Result<(SettlementState, u64, u64), String> {
    let start = optio_state::checkpoint::start(dir).map_err(|e| e.to_string())?;
    let blobs: Vec<Vec<u8>> = start
        .blobs
        .iter()
        .map(|(_, path)| std::fs::read(path))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let (mut state, last_seq) =
        optio_state::checkpoint::open(dir, start.after).map_err(|e| e.to_string())?;
    let (number, last_seq) = optio_state::rebuild_after(
        blobs.iter().map(Vec::as_slice),
        &mut state,
        (start.after, last_seq),
        each,
    )
    .map_err(|e| e.to_string())?;
    Ok((state, number, last_seq))
}

/// `NNNNNNNN.orders`: per changed order, its id (8 bytes, big-endian), then 1 and its record or
/// 0 for an order gone.
fn encode_orders(changes: &[(u64, Option<[u8; RECORD_BYTES]>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(changes.len() * (9 + RECORD_BYTES));
    for (id, record) in changes {
        out.extend_from_slice(&id.to_be_bytes());
        match record {
            Some(r) => {
                out.push(1);
                out.extend_from_slice(r);
            }
            None => out.push(0),
        }
    }
    out
}

type OrderChanges = Vec<(u64, Option<[u8; RECORD_BYTES]>)>;

fn decode_orders(mut bytes: &[u8]) -> Option<OrderChanges> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let id = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let (record, rest) = match bytes.get(8)? {
            1 => (
                Some(bytes.get(9..9 + RECORD_BYTES)?.try_into().ok()?),
                &bytes[9 + RECORD_BYTES..],
            ),
            0 => (None, &bytes[9..]),
            _ => return None,
        };
        out.push((id, record));
        bytes = rest;
    }
    Some(out)
}

fn write_batch(dir: &Path, batch: &Batch) -> std::io::Result<()> {
    let stem = dir.join(format!("{:08}", batch.header.number));
    // The blob last: a blob on disk always has its orders, authorizations and header.
    optio_state::checkpoint::write_file(
        &stem.with_extension("orders"),
        &encode_orders(&batch.orders),
    )?;
    optio_state::checkpoint::write_file(&stem.with_extension("auth"), &batch.authorizations)?;
    optio_state::checkpoint::write_file(
        &stem.with_extension("json"),
        batch.header.to_json().as_bytes(),
    )?;
    optio_state::checkpoint::write_file(&stem.with_extension("blob"), &batch.blob)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Why the batcher would not start: a stable name (`docs/rejections.md`, "Start-up refusals")
/// and what happened.
#[derive(Debug)]
pub(crate) struct StartError {
    pub code: &'static str,
    pub message: String,
}

/// `StartError` with `code` from an error's text.
fn refused<E: std::fmt::Display>(code: &'static str) -> impl FnOnce(E) -> StartError {
    move |e| StartError {
        code,
        message: e.to_string(),
    }
}

/// The name of a refusal reading the batches directory's checkpoints and blobs.
fn walk_refused(e: optio_state::checkpoint::CheckpointError) -> StartError {
    use optio_state::checkpoint::CheckpointError;
    refused(match &e {
        CheckpointError::Io { .. } => "batches_io",
        CheckpointError::Uncovered { .. } => "batches_uncovered",
        CheckpointError::Unnamed(_) => "batches_misnamed",
        CheckpointError::Corrupt { .. } => "checkpoint_corrupt",
    })(e)
}

/// Starts the batcher over `dir` (rebuilding from its blobs); returns the writer's feed and the
/// last sequence number already batched (later inputs must be fed, in order).
pub(crate) fn start(
    dir: &Path,
    max_ops: usize,
    max_age_ms: u64,
    capacity: Option<optio_state::Capacity>,
    checkpoints: Checkpoints,
    clock: crate::Clock,
) -> Result<(Feed, Arc<Mutex<BatchStats>>, u64), StartError> {
    std::fs::create_dir_all(dir).map_err(refused("batches_io"))?;
    // The persisted state after some batch, then the blobs written after it (a crash between
    // writing a blob and persisting its state leaves one or more such blobs). Blobs are found
    // by number: the finalized ones up to a checkpoint may be pruned.
    let walk = optio_state::checkpoint::start(dir).map_err(walk_refused)?;
    let state_file = dir.join("state.redb");
    // Without its state file a node rebuilds from the blobs; past a prune, from the checkpoint
    // the walk starts at (it carries the signed orders that may still fill), then the blobs
    // and orders after it. A checkpoint that cannot is refused before anything is created.
    if walk.after > 0 && !state_file.exists() {
        optio_state::checkpoint::restore(dir, walk.after, &state_file).map_err(|e| {
            refused("state_file_unrestorable")(format!(
                "{} is missing and the batches up to {} are pruned; their checkpoint would not restore it ({e}): restore the state file",
                state_file.display(),
                walk.after
            ))
        })?;
        tracing::warn!(
            file = %state_file.display(),
            checkpoint = walk.after,
            "state file missing: made again from the checkpoint"
        );
    }
    let (mut state, persisted, persisted_seq) =
        SettlementState::open(&state_file).map_err(|e| {
            refused("state_file_corrupt")(format!(
                "{}: {e} (moved aside, it is made again from the blobs or the checkpoint)",
                state_file.display()
            ))
        })?;
    let newest = walk.blobs.last().map_or(walk.after, |(n, _)| *n);
    if newest < persisted || walk.after > persisted {
        return Err(refused("state_file_mismatch")(format!(
            "the state file is at batch {persisted} but the blobs {}",
            match walk.blobs.first() {
                Some((first, _)) if newest >= persisted => format!(
                    "after it are pruned (they start at batch {first}): restore the state file"
                ),
                Some((first, _)) => format!("run from batch {first} to {newest} only"),
                None => format!("are pruned up to batch {}", walk.after),
            }
        )));
    }
    let files: Vec<std::path::PathBuf> = walk
        .blobs
        .into_iter()
        .filter(|(n, _)| *n > persisted)
        .map(|(_, path)| path)
        .collect();
    let later: Vec<Vec<u8>> = files
        .iter()
        .map(std::fs::read)
        .collect::<Result<_, _>>()
        .map_err(refused("batches_io"))?;
    let (number, last_seq) = optio_state::rebuild_after(
        later.iter().map(Vec::as_slice),
        &mut state,
        (persisted, persisted_seq),
        |_| {},
    )
    .map_err(refused("batches_corrupt"))?;
    if number > persisted {
        // The signed orders as of the last blob: each later batch's changes on top of the
        // persisted ones.
        for n in persisted + 1..=number {
            let path = dir.join(format!("{n:08}.orders"));
            let bytes = std::fs::read(&path).unwrap_or_default();
            let changes = decode_orders(&bytes).ok_or_else(|| {
                refused("batches_corrupt")(format!("{}: malformed", path.display()))
            })?;
            state.stage_orders(&changes);
        }
        state
            .persist(number, last_seq)
            .map_err(refused("state_file_corrupt"))?;
    }
    let orders = optio_state::auth::Orders::from_stored(
        state
            .stored_orders()
            .map_err(refused("state_file_corrupt"))?,
    );
    let stats = Arc::new(Mutex::new(BatchStats {
        number,
        root: optio_state::poseidon::to_hex(&state.root()),
        last_seq,
        cut_seq: last_seq,
        dir: dir.to_owned(),
        pruned: PruneStats {
            through: walk.after,
            ..PruneStats::default()
        },
        ..BatchStats::default()
    }));
    // The last batch's time, which the next one's may not go below.
    let last_blob = match files.last() {
        Some(f) => Some(f.clone()),
        None if persisted > 0 => Some(dir.join(format!("{persisted:08}.blob"))),
        None => None,
    };
    // (Pruning keeps the newest blob: it deletes only batches before the last one written.)
    let last_time = match &last_blob {
        Some(f) => {
            let bytes = std::fs::read(f)
                .map_err(|e| refused("batches_io")(format!("{}: {e}", f.display())))?;
            optio_state::decode(&bytes)
                .map_err(|e| refused("batches_corrupt")(format!("{}: {e}", f.display())))?
                .0
                .time_ms
        }
        None => 0,
    };
    let mut batcher = Batcher::resume(state, number, last_seq, max_ops, max_age_ms)
        .after_time(last_time)
        .with_capacity(capacity)
        .with_orders(orders);
    // The settlement prices' signatures of the batches rebuilt from their blobs (written, the
    // state after them not persisted): a later part of a settlement they began posts them.
    for (file, blob) in files.iter().zip(&later) {
        let section = std::fs::read(file.with_extension("auth")).unwrap_or_default();
        batcher = batcher.with_posted_settlements(blob, &section);
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
    let (dir, shared) = (dir.to_owned(), stats.clone());
    let thread = std::thread::Builder::new()
        .name("optio-batcher".into())
        .spawn(move || run(batcher, rx, &dir, &shared, &clock, checkpoints))
        .map_err(refused("io"))?;
    Ok((
        Feed {
            tx,
            overflow: VecDeque::new(),
            stats: stats.clone(),
            batcher: Some(thread),
        },
        stats,
        last_seq,
    ))
}

fn run(
    mut batcher: Batcher,
    rx: Receiver<Vec<Item>>,
    dir: &Path,
    stats: &Mutex<BatchStats>,
    clock: &crate::Clock,
    checkpoints: Checkpoints,
) {
    let checkpoint_every = checkpoints.every;
    // The finalized batch the last prune looked at (a prune lists the directory: only when L1
    // has finalized more).
    let mut looked = 0;
    // Whether the last prune stopped short of its checkpoint (`Checkpoints::prune_per_pass`): the
    // next pass goes on.
    let mut behind = false;
    loop {
        let items = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(items) => items,
            Err(RecvTimeoutError::Timeout) => Vec::new(),
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // Each batch is written the moment it is cut, blob first (durable), then the state after
        // it, before the next input is pushed: the state file never runs ahead of the blobs.
        let mut cuts = Vec::new();
        let mut failed = None;
        let mut checkpoint_failed = None;
        let mut save = |batcher: &mut Batcher, cut: Option<optio_state::Batch>| {
            if let Some(batch) = cut {
                write_batch(dir, &batch).map_err(|e| e.to_string())?;
                batcher.persist(&batch.header).map_err(|e| e.to_string())?;
                let number = batch.header.number;
                if checkpoint_every > 0 && number.is_multiple_of(checkpoint_every) {
                    // A checkpoint that fails is only a prune that waits: logged, not fatal.
                    if let Err(e) = optio_state::checkpoint::write(
                        dir,
                        batcher.state(),
                        number,
                        batch.header.last_seq,
                    ) {
                        tracing::warn!(error = %e, "checkpoint not written");
                        checkpoint_failed = Some(e.to_string());
                    }
                }
                cuts.push(batch);
            }
            Ok::<(), String>(())
        };
        for item in &items {
            if item.seq <= batcher.last_seq() {
                continue;
            }
            // A steady stream never times out: the age is checked after every input too.
            let cut = batcher
                .push_signed(item.seq, &item.input, item.signed.as_ref(), &item.events)
                .and_then(|cut| match cut {
                    Some(batch) => Ok(Some(batch)),
                    None => batcher.tick(clock.now_ms()),
                })
                .map_err(|e| e.to_string());
            if let Err(e) = cut.and_then(|cut| save(&mut batcher, cut)) {
                failed = Some(e);
                break;
            }
        }
        if items.is_empty()
            && let Err(e) = batcher
                .tick(clock.now_ms())
                .map_err(|e| e.to_string())
                .and_then(|cut| save(&mut batcher, cut))
        {
            failed = Some(e);
        }
        // The files of the batches L1 has finalized, up to the newest checkpoint among them,
        // never the last batch written (its time bounds the next one's at a restart); deleted
        // outside the stats' lock.
        let (finalized, through) = match stats.lock() {
            Ok(s) => (s.finalized, s.pruned.through),
            Err(_) => return,
        };
        let bound = finalized.min(batcher.number().saturating_sub(1));
        let pruned =
            (checkpoint_every > 0 && (bound > looked || behind) && bound > through).then(|| {
                looked = bound;
                let newest = optio_state::checkpoint::checkpoints(dir)?
                    .into_iter()
                    .rfind(|c| *c <= bound && *c > through);
                newest
                    .map(|c| {
                        optio_state::checkpoint::prune_some(dir, c, checkpoints.prune_per_pass)
                            .map(|p| (c, p))
                    })
                    .transpose()
            });
        let Ok(mut s) = stats.lock() else { return };
        if checkpoint_failed.is_some() {
            s.pruned.failed = checkpoint_failed;
        }
        match pruned {
            Some(Ok(Some((checkpoint, p)))) => {
                tracing::info!(
                    through = p.reached,
                    files = p.files,
                    "pruned finalized batches"
                );
                // A long history goes over several passes, each bounded.
                behind = p.reached < checkpoint;
                s.pruned.through = p.reached;
                s.pruned.proofs += p.proofs;
                s.pruned.unprovable += p.unprovable;
                s.pruned.failed = None;
            }
            Some(Err(e)) => {
                // Tried again at the next finalization.
                behind = false;
                tracing::warn!(error = %e, "batches not pruned");
                s.pruned.failed = Some(e.to_string());
            }
            Some(Ok(None)) | None => {}
        }
        s.last_seq = batcher.last_seq();
        for batch in cuts {
            s.number = batch.header.number;
            s.cut_seq = batch.header.last_seq;
            s.root = optio_state::poseidon::to_hex(&batch.header.new_root);
            s.bytes += batch.blob.len() as u64;
            s.fills += batch.fills as u64;
        }
        if let Some(e) = failed {
            // Settlement stops; trading goes on; the operator sees it in the metrics and logs.
            tracing::error!(error = %e, "batcher stopped");
            s.failed = Some(e);
            return;
        }
    }
}
