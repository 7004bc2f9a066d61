//! Checkpoints of the settlement state in a batches directory, and pruning behind them.
//!
//! A batches directory holds, per batch, its blob and the files beside it (`NNNNNNNN.blob`,
//! `.json`, `.auth`, `.orders`, and the provers' `.proof.json`, `.claim`, `.unprovable`). Left
//! alone it grows with the chain's whole history. A checkpoint, `NNNNNNNN.checkpoint`, is the
//! state after batch `NNNNNNNN` (`SettlementState::checkpoint_bytes`: the records, funds and
//! root; reading it rebuilds the trees and checks the root). Once L1 has finalized a batch
//! with a checkpoint, the files of that batch and every earlier one are no longer needed by
//! anyone who walks the directory (the batcher's restart reads only blobs after its own state
//! file; a prover needs the state before the first batch it has to prove, and every finalized
//! batch is settled; the settler posts only later batches), so `prune` deletes them. L1 keeps
//! every batch's data: the escape hatch and `optio verify` rebuild from there, not from here.
//!
//! Readers start where `start` says: from genesis while batch 1's blob is there, otherwise from
//! a checkpoint. Pruning deletes the batches in ascending order, the blob of each first, and
//! the checkpoints it passed last, so at every moment (a prover reads the directory while the
//! node prunes it) the blobs from the last gap on are complete, and a checkpoint at or after
//! that gap, at or before the newest blob, exists.

use std::path::{Path, PathBuf};

use crate::ledger::SettlementState;
use crate::store::StoreError;

/// A checkpoint file's extension.
pub const EXTENSION: &str = "checkpoint";

/// Why a checkpoint could not be written, found or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file or the directory.
    #[error("{path}: {source}")]
    Io {
        /// Which.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The blobs do not reach back to genesis and no checkpoint covers the gap.
    #[error(
        "{dir}: the blobs start at batch {first} and no checkpoint from batch {} on is there (pruned without one, or files removed by hand)",
        first - 1
    )]
    Uncovered {
        /// The directory.
        dir: PathBuf,
        /// The first blob of the last unbroken run.
        first: u64,
    },
    /// A blob whose name is not its number.
    #[error("{0}: a blob not named by its batch number")]
    Unnamed(PathBuf),
    /// The checkpoint file does not decode, or its records do not give its root, or it names
    /// another batch.
    #[error("{path}: {source}")]
    Corrupt {
        /// Which.
        path: PathBuf,
        /// Why.
        source: StoreError,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where batch `batch`'s checkpoint is.
pub fn path(dir: &Path, batch: u64) -> PathBuf {
    dir.join(format!("{batch:08}.{EXTENSION}"))
}

/// The batch a batches directory's file belongs to: the number its name starts with, up to the
/// first dot (`00000012.proof.json`: 12). `None` for any other name.
pub fn file_number(path: &Path) -> Option<u64> {
    let (digits, _) = path.file_name()?.to_str()?.split_once('.')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Writes a file of a batches directory whole or not at all (the batcher's blobs and the files
/// beside them, the provers' proofs, checkpoints): a temporary file beside it
/// (`path.with_extension("tmp")`), fsynced, renamed over `path`. The caller fsyncs the
/// directory once its files are written.
pub fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Writes the state after `batch` (ending at `last_seq`) as its checkpoint (`write_file`),
/// then fsyncs the directory. A file-backed state's checkpoint also carries the batcher's
/// signed orders and kept values as persisted (call after `persist`), from which `restore`
/// makes a lost state file again.
pub fn write(
    dir: &Path,
    state: &SettlementState,
    batch: u64,
    last_seq: u64,
) -> Result<(), CheckpointError> {
    let target = path(dir, batch);
    let bytes =
        state
            .checkpoint_bytes(batch, last_seq)
            .map_err(|source| CheckpointError::Corrupt {
                path: target.clone(),
                source,
            })?;
    write_file(&target, &bytes).map_err(io(&target))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// The batches with a checkpoint in `dir`, ascending.
pub fn checkpoints(dir: &Path) -> Result<Vec<u64>, CheckpointError> {
    Ok(listing(dir)?.1)
}

/// One listing of `dir`: its blobs by number and the batches with a checkpoint, each
/// ascending; none if `dir` does not exist.
fn listing(dir: &Path) -> Result<(Numbered, Vec<u64>), CheckpointError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(io(dir)(e)),
    };
    let (mut blobs, mut checkpoints) = (Vec::new(), Vec::new());
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        match path.extension().and_then(|x| x.to_str()) {
            Some("blob") => match file_number(&path) {
                Some(n) => blobs.push((n, path)),
                None => return Err(CheckpointError::Unnamed(path)),
            },
            Some(EXTENSION) => checkpoints.extend(file_number(&path)),
            _ => {}
        }
    }
    blobs.sort_unstable();
    checkpoints.sort_unstable();
    Ok((blobs, checkpoints))
}

/// Files by the batch they belong to, ascending.
pub type Numbered = Vec<(u64, PathBuf)>;

/// Where a walk over a batches directory starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// The batch it starts after: 0 for genesis, else a batch with a checkpoint.
    pub after: u64,
    /// The blobs after it, in order, numbered without a gap.
    pub blobs: Numbered,
}

/// Where a walk over `dir` starts: genesis while batch 1's blob is there, otherwise the first
/// checkpoint at or after the last gap in the blobs (which pruning leaves, at most one, before
/// the blobs it has not reached).
pub fn start(dir: &Path) -> Result<Start, CheckpointError> {
    let (mut blobs, checkpoints) = listing(dir)?;
    // The last unbroken run of blobs.
    let run = blobs
        .windows(2)
        .rposition(|w| w[1].0 != w[0].0 + 1)
        .map_or(0, |i| i + 1);
    let first = blobs.get(run).map(|(n, _)| *n);
    let after = match (first, blobs.last()) {
        (Some(1), _) => 0,
        (Some(first), Some((last, _))) => *checkpoints
            .iter()
            .find(|c| **c >= first - 1 && *c <= last)
            .ok_or_else(|| CheckpointError::Uncovered {
                dir: dir.to_owned(),
                first,
            })?,
        // No blob (all pruned, or none written yet).
        _ => checkpoints.last().copied().unwrap_or(0),
    };
    Ok(Start {
        after,
        blobs: blobs
            .split_off(run)
            .into_iter()
            .filter(|(n, _)| *n > after)
            .collect(),
    })
}

/// The state after batch `after` in `dir`: genesis for 0, else its checkpoint (in memory), with
/// that batch's last sequence number.
pub fn open(dir: &Path, after: u64) -> Result<(SettlementState, u64), CheckpointError> {
    if after == 0 {
        return Ok((SettlementState::new(), 0));
    }
    let file = path(dir, after);
    let bytes = std::fs::read(&file).map_err(io(&file))?;
    let corrupt = |source| CheckpointError::Corrupt {
        path: file.clone(),
        source,
    };
    let (state, batch, last_seq) = SettlementState::from_checkpoint(&bytes).map_err(corrupt)?;
    if batch != after {
        return Err(corrupt(StoreError::Corrupt(
            "the checkpoint is another batch's",
        )));
    }
    Ok((state, last_seq))
}

/// Makes the state file `state_file` again from batch `after`'s checkpoint in `dir`
/// (`SettlementState::restore`): for a node whose state file is lost once the batches before
/// the checkpoint are pruned. Refused, creating nothing, for a damaged checkpoint, one of
/// format 1 or one that names another batch.
pub fn restore(
    dir: &Path,
    after: u64,
    state_file: &Path,
) -> Result<(SettlementState, u64), CheckpointError> {
    // Whole, and this batch's (in memory: nothing created otherwise).
    open(dir, after)?;
    let file = path(dir, after);
    let bytes = std::fs::read(&file).map_err(io(&file))?;
    let corrupt = |source| CheckpointError::Corrupt {
        path: file.clone(),
        source,
    };
    let (state, _, last_seq) = SettlementState::restore(state_file, &bytes).map_err(corrupt)?;
    Ok((state, last_seq))
}

/// What a prune deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Files.
    pub files: usize,
    /// Of them, validity proofs (`NNNNNNNN.proof.json`).
    pub proofs: u64,
    /// And marks of batches the circuit cannot prove (`NNNNNNNN.unprovable`).
    pub unprovable: u64,
    /// The batch up to which every file is gone but the checkpoint pruned to (the batch pruned
    /// to once the prune is whole; `prune_some` may stop before it).
    pub reached: u64,
}

/// Deletes every file of batches 1 to `through` in `dir` but `through`'s checkpoint, which must
/// exist (so that `start` finds it): batch by batch, ascending, the blob of each first, then
/// the checkpoints before `through`.
pub fn prune(dir: &Path, through: u64) -> Result<Pruned, CheckpointError> {
    prune_some(dir, through, usize::MAX)
}

/// `prune`, deleting the files of at most `max_batches` batches (the lowest ones left) and the
/// checkpoints up to the last of them: a long history is pruned over several calls, each leaving a
/// directory a walk starts over (the blobs after the last one deleted, and `through`'s
/// checkpoint). `Pruned::reached` says how far it went.
pub fn prune_some(dir: &Path, through: u64, max_batches: usize) -> Result<Pruned, CheckpointError> {
    let keep = path(dir, through);
    if !keep.is_file() {
        return Err(io(&keep)(std::io::ErrorKind::NotFound.into()));
    }
    let entries = std::fs::read_dir(dir).map_err(io(dir))?;
    let mut doomed: Vec<(u64, u8, PathBuf)> = Vec::new();
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        let Some(n) = file_number(&path).filter(|n| *n <= through) else {
            continue;
        };
        let rank = if path.extension().is_some_and(|x| x == "blob") {
            0
        } else if path.extension().is_some_and(|x| x == EXTENSION) {
            if path == keep {
                continue;
            }
            2
        } else {
            1
        };
        doomed.push((n, rank, path));
    }
    // The batches this call reaches: the lowest `max_batches` of those with files beside
    // checkpoints (the checkpoints up to there go with them).
    let mut numbers: Vec<u64> = doomed
        .iter()
        .filter(|(_, rank, _)| *rank < 2)
        .map(|(n, _, _)| *n)
        .collect();
    numbers.sort_unstable();
    numbers.dedup();
    let reached = match numbers.get(max_batches) {
        Some(next) => next - 1,
        None => through,
    };
    doomed.retain(|(n, _, _)| *n <= reached);
    // Batch by batch, blob first; the checkpoints passed after every blob.
    doomed.sort_unstable_by_key(|(n, rank, _)| (u8::from(*rank == 2), *n, *rank));
    let mut pruned = Pruned {
        reached,
        ..Pruned::default()
    };
    for (_, _, path) in &doomed {
        match std::fs::remove_file(path) {
            Ok(()) => {
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                pruned.files += 1;
                pruned.proofs += u64::from(name.ends_with(".proof.json"));
                pruned.unprovable += u64::from(name.ends_with(".unprovable"));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(path)(e)),
        }
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(pruned)
}
