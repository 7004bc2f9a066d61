//! `optio prove`: workers that take committed batches from the batches directory (the blobs the
//! node writes), prove them and write `NNNNNNNN.proof.json` beside each blob. Several workers
//! (processes or machines sharing the directory) scale out with no coordination but the queue
//! itself: a worker claims a batch by creating `NNNNNNNN.claim` exclusively, and a claim older
//! than `stale_after` (its worker died) may be taken over. Each worker rebuilds the state from
//! the blobs on its own, so none depends on another's progress; across passes it keeps the
//! state after the batches settled from the first on (`Walker`), so that a pass applies only the
//! blobs after them (the proving lag), not every blob since genesis. Where the node pruned the
//! finalized batches (`optio_state::checkpoint`), a walk starts from the checkpoint it kept.
//!
//! A batch the circuit cannot prove (too large for the shape, or ops in an order it does not
//! keep) gets `NNNNNNNN.unprovable` with the reason instead; the batches after it are still
//! proven (each proof stands alone: old root to new root).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use ark_bn254::Bn254;
use ark_groth16::Proof;
use ark_std::rand::rngs::StdRng;
use optio_state::poseidon::to_hex;
use optio_state::{Op, SettlementState, checkpoint, decode, rebuild_after};
use serde_json::{Value, json};

use crate::keys::{Keys, ProveError, prove, verify};
use crate::solidity::{self, Word};
use crate::witness::{PublicInputs, witness};

/// Why one walk stopped: a file pruned while it read the directory (walked again), or anything
/// else (reported).
enum Walk {
    Vanished(String),
    Failed(String),
}

/// What happened to one batch in a pass.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Proven by this worker, in this many seconds.
    Proven {
        /// Batch number.
        batch: u64,
        /// Proving time.
        seconds: f64,
    },
    /// The circuit cannot prove it; why.
    Unprovable {
        /// Batch number.
        batch: u64,
        /// Why.
        reason: String,
    },
}

fn stem(dir: &Path, batch: u64) -> PathBuf {
    dir.join(format!("{batch:08}"))
}

/// The proof file of a batch.
pub fn proof_path(dir: &Path, batch: u64) -> PathBuf {
    stem(dir, batch).with_extension("proof.json")
}

/// A worker's walk over the batches directory, kept across passes: the state after the
/// batches settled (proven or marked unprovable, by any worker) from the first on. A pass
/// advances it over the batches settled since, then walks a copy of it over the rest, so it
/// applies only the blobs past that frontier: the proving lag, where walking from genesis on
/// every pass (once a second while idle) costs in proportion to the chain's whole history.
/// A proof deleted after the frontier passed its batch is proven again by a fresh walker (a
/// restarted worker); `check_proofs` always walks from the directory's start (genesis, or the
/// checkpoint the node pruned the finalized batches behind, `optio_state::checkpoint::start`).
/// A walker whose frontier is behind that checkpoint goes on from it.
pub struct Walker {
    dir: PathBuf,
    /// The state after batch `after.0`, which ended at input `after.1`.
    base: SettlementState,
    after: (u64, u64),
    /// Blobs applied by the last pass (frontier and copy).
    applied: usize,
}

impl Walker {
    /// A walker from genesis over `dir` (its first walk goes on from the directory's
    /// checkpoint if the blobs from genesis are pruned).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            base: SettlementState::new(),
            after: (0, 0),
            applied: 0,
        }
    }

    /// The batches settled from the first on, which passes no longer apply.
    pub fn frontier(&self) -> u64 {
        self.after.0
    }

    /// How many blobs the last pass applied.
    pub fn applied(&self) -> usize {
        self.applied
    }

    /// One walk: advances the frontier over the batches `settled` (a worker's: proven or
    /// marked unprovable) since, then calls `each` with the state before each later batch, its
    /// number and its ops, in order.
    pub fn walk(
        &mut self,
        settled: impl Fn(u64) -> bool,
        mut each: impl FnMut(&SettlementState, u64, &[Op]) -> Result<(), String>,
    ) -> Result<(), String> {
        let dir = self.dir.clone();
        if !dir.is_dir() {
            return Err(format!("{}: not a directory", dir.display()));
        }
        // A file that vanished while the walk read the directory was pruned by the node (a
        // finalized batch, so a settled one): walk again from the new start (`each` may be
        // called again for a batch; a worker's passes skip what is settled).
        let mut tries = 0;
        loop {
            match self.walk_once(&settled, &mut each) {
                Err(Walk::Vanished(_)) if tries < 3 => tries += 1,
                Err(Walk::Vanished(why) | Walk::Failed(why)) => return Err(why),
                Ok(()) => return Ok(()),
            }
        }
    }

    fn walk_once(
        &mut self,
        settled: &impl Fn(u64) -> bool,
        each: &mut impl FnMut(&SettlementState, u64, &[Op]) -> Result<(), String>,
    ) -> Result<(), Walk> {
        let dir = self.dir.clone();
        let start = checkpoint::start(&dir).map_err(|e| Walk::Failed(e.to_string()))?;
        // The node pruned the blobs after the frontier (they were finalized, so settled):
        // the walk goes on from the checkpoint it kept.
        if start.after > self.after.0 {
            let (state, last_seq) = checkpoint::open(&dir, start.after).map_err(|e| match e {
                checkpoint::CheckpointError::Io { ref source, .. }
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    Walk::Vanished(e.to_string())
                }
                e => Walk::Failed(e.to_string()),
            })?;
            (self.base, self.after) = (state, (start.after, last_seq));
        }
        let frontier = self.after.0;
        let later = start
            .blobs
            .iter()
            .filter(|(n, _)| *n > frontier)
            .map(|(_, f)| f);
        self.applied = 0;
        // The copy walked past the first batch not settled, once there is one.
        let mut copy: Option<(SettlementState, (u64, u64))> = None;
        for file in later {
            let bytes = std::fs::read(file).map_err(|e| {
                let why = format!("{}: {e}", file.display());
                match e.kind() {
                    std::io::ErrorKind::NotFound => Walk::Vanished(why),
                    _ => Walk::Failed(why),
                }
            })?;
            let failed =
                |e: &dyn std::fmt::Display| Walk::Failed(format!("{}: {e}", file.display()));
            let (meta, ops) = decode(&bytes).map_err(|e| failed(&e))?;
            if copy.is_none() && !settled(meta.number) {
                copy = Some((self.base.clone(), self.after));
            }
            let (state, after) = match copy.as_mut() {
                Some((state, after)) => {
                    each(state, meta.number, &ops).map_err(Walk::Failed)?;
                    (state, after)
                }
                None => (&mut self.base, &mut self.after),
            };
            *after =
                rebuild_after([bytes.as_slice()], state, *after, |_| {}).map_err(|e| failed(&e))?;
            self.applied += 1;
        }
        Ok(())
    }

    /// One pass of a worker (`prove_pending`) from where this walker stands.
    pub fn prove_pending(
        &mut self,
        keys: &Keys,
        rng: &mut StdRng,
        stale_after: Duration,
        mut each: impl FnMut(&Outcome),
    ) -> Result<Vec<Outcome>, String> {
        let dir = self.dir.clone();
        let mut done = Vec::new();
        self.walk(
            |batch| settled(&dir, batch),
            |state, batch, ops| {
                if settled(&dir, batch) {
                    return Ok(());
                }
                let Some(_claim) = claim(&dir, batch, stale_after) else {
                    return Ok(());
                };
                let outcome = prove_one(&dir, keys, rng, state, batch, ops)?;
                each(&outcome);
                done.push(outcome);
                Ok(())
            },
        )?;
        Ok(done)
    }
}

/// Whether batch `batch` has a proof or was found unprovable.
fn settled(dir: &Path, batch: u64) -> bool {
    proof_path(dir, batch).exists() || stem(dir, batch).with_extension("unprovable").exists()
}

/// Takes the claim on a batch, or `None` if a live worker holds it.
fn claim(dir: &Path, batch: u64, stale_after: Duration) -> Option<Claim> {
    let path = stem(dir, batch).with_extension("claim");
    for _ in 0..2 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(_) => return Some(Claim(path)),
            Err(_) => {
                let age = std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok());
                match age {
                    Some(age) if age > stale_after => {
                        let _ = std::fs::remove_file(&path);
                    }
                    _ => return None,
                }
            }
        }
    }
    None
}

/// A held claim, released when dropped.
struct Claim(PathBuf);

impl Drop for Claim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn hex_words(words: &[Word]) -> Vec<String> {
    words
        .iter()
        .map(|w| optio_state::poseidon::hex(w))
        .collect()
}

/// The proof file's JSON.
fn proof_json(
    batch: u64,
    keys: &Keys,
    public: &PublicInputs,
    proof: &Proof<Bn254>,
    seconds: f64,
) -> Value {
    json!({
        "batch": batch,
        "shape": keys.shape.name(),
        "public": {
            "old_root": to_hex(&public.old_root),
            "new_root": to_hex(&public.new_root),
            "commitment": to_hex(&public.commitment),
            "priority_before": public.priority_before,
            "priority_after": public.priority_after,
        },
        "inputs": hex_words(&solidity::inputs(public)),
        "proof": hex_words(&solidity::proof(proof)),
        "prove_seconds": seconds,
    })
}

/// One pass over the batches directory: every batch with neither a proof nor a live claim is
/// proven (or marked unprovable), `each` told as each is done. Returns what this worker did.
pub fn prove_pending(
    dir: &Path,
    keys: &Keys,
    rng: &mut StdRng,
    stale_after: Duration,
    each: impl FnMut(&Outcome),
) -> Result<Vec<Outcome>, String> {
    Walker::new(dir).prove_pending(keys, rng, stale_after, each)
}

/// Proves batch `batch` (`ops`, over `state`) and writes its proof, or marks it unprovable.
fn prove_one(
    dir: &Path,
    keys: &Keys,
    rng: &mut StdRng,
    state: &SettlementState,
    batch: u64,
    ops: &[Op],
) -> Result<Outcome, String> {
    let proven = witness(state, ops, keys.shape)
        .map_err(ProveError::from)
        .and_then(|w| {
            let public = w.public;
            let t = Instant::now();
            let proof = prove(keys, w, rng)?;
            Ok((public, proof, t.elapsed().as_secs_f64()))
        });
    Ok(match proven {
        Ok((public, proof, seconds)) => {
            let text = proof_json(batch, keys, &public, &proof, seconds).to_string();
            checkpoint::write_file(&proof_path(dir, batch), text.as_bytes())
                .map_err(|e| format!("batch {batch}: {e}"))?;
            Outcome::Proven { batch, seconds }
        }
        // Keys that are not the circuit's, or arkworks refusing: nothing this worker proves
        // would verify.
        Err(e @ (ProveError::KeysMismatch | ProveError::Synthesis(_))) => {
            return Err(format!("batch {batch}: {e}"));
        }
        // No witness for the shape, or a batch that breaks a rule of the circuit.
        Err(e) => {
            let reason = e.to_string();
            checkpoint::write_file(
                &stem(dir, batch).with_extension("unprovable"),
                reason.as_bytes(),
            )
            .map_err(|e| format!("batch {batch}: {e}"))?;
            Outcome::Unprovable { batch, reason }
        }
    })
}

/// Checks every proof file against the state rebuilt from the blobs alone (its public inputs
/// must be the rebuilt roots and the batch's commitment) and the verifying key. Returns the
/// batches proven and those without a valid proof yet; an error names a proof that is wrong.
pub fn check_proofs(dir: &Path, keys: &Keys) -> Result<(Vec<u64>, Vec<u64>), String> {
    let (mut proven, mut missing) = (Vec::new(), Vec::new());
    // From the directory's start (genesis, or the pruned batches' checkpoint), every batch
    // taken as not settled.
    Walker::new(dir).walk(|_| false, |state, batch, ops| {
        let Ok(text) = std::fs::read_to_string(proof_path(dir, batch)) else {
            missing.push(batch);
            return Ok(());
        };
        let expected = witness(state, ops, keys.shape)
            .map_err(|e| format!("batch {batch} has a proof but {e}"))?
            .public;
        let proof = parse_proof(&text).map_err(|e| format!("batch {batch}: {e}"))?;
        if !verify(&keys.vk, &expected, &proof) {
            return Err(format!(
                "batch {batch}: the proof does not verify against the roots rebuilt from the blobs"
            ));
        }
        proven.push(batch);
        Ok(())
    })?;
    Ok((proven, missing))
}

/// Reads a proof back from its file.
pub fn parse_proof(text: &str) -> Result<Proof<Bn254>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("proof file: {e}"))?;
    let words: Vec<Word> = v["proof"]
        .as_array()
        .ok_or("proof file: no proof")?
        .iter()
        .map(|w| {
            w.as_str()
                .and_then(optio_intents::parse_hex)
                .and_then(|bytes| Word::try_from(bytes).ok())
                .ok_or("proof file: a word is not 0x and 32 bytes of hex")
        })
        .collect::<Result<_, _>>()?;
    solidity::proof_from(&words).ok_or_else(|| "proof file: points not on the curve".into())
}

/// How Linux schedules one thread (`thread_scheduling`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadScheduling {
    /// Its id.
    pub tid: String,
    /// Its niceness.
    pub nice: i32,
    /// Its policy: 0 the normal class, 5 the idle class (`SCHED_IDLE`).
    pub policy: u32,
}

/// The scheduling of process `pid`'s threads whose name starts with `prefix` (the devnet's
/// prover pool names its threads `optio-prover-N`), read from /proc; empty where there is none
/// (another system, a process that has ended).
pub fn thread_scheduling(pid: u32, prefix: &str) -> Vec<ThreadScheduling> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let t = t.ok()?.path();
            let comm = std::fs::read_to_string(t.join("comm")).ok()?;
            if !comm.starts_with(prefix) {
                return None;
            }
            // Fields 19 (niceness) and 41 (policy) of stat, counted after the command's
            // closing parenthesis (field 3 first).
            let stat = std::fs::read_to_string(t.join("stat")).ok()?;
            let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
            Some(ThreadScheduling {
                tid: t.file_name()?.to_string_lossy().into_owned(),
                nice: fields.get(16)?.parse().ok()?,
                policy: fields.get(38)?.parse().ok()?,
            })
        })
        .collect()
}
