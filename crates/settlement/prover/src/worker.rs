//! `optio prove`: workers that take committed batches from the batches directory (the blobs the
//! node writes), prove them and write `NNNNNNNN.proof.json` beside each blob. Several workers
//! (processes or machines sharing the directory) scale out with no coordination but the queue
//! itself: a worker claims a batch by creating `NNNNNNNN.claim` exclusively, and a claim older
//! than `stale_after` (its worker died) may be taken over. Each worker rebuilds the state from
//! the blobs on its own, so none depends on another's progress.
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
use optio_state::{Op, SettlementState, blob_files, decode, rebuild_after};
use serde_json::{Value, json};

use crate::keys::{Keys, ProveError, prove, verify};
use crate::solidity::{self, Word};
use crate::witness::{PublicInputs, witness};

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

/// Walks the batches of `dir` in order: `each` gets the state before a batch, its number and
/// its ops; the batch is then applied (with `rebuild_after`'s checks of numbering and data).
fn each_batch(
    dir: &Path,
    mut each: impl FnMut(&SettlementState, u64, &[Op]) -> Result<(), String>,
) -> Result<(), String> {
    if !dir.is_dir() {
        return Err(format!("{}: not a directory", dir.display()));
    }
    let files = blob_files(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut state = SettlementState::new();
    let mut after = (0u64, 0u64);
    for file in files {
        let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let (meta, ops) = decode(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
        each(&state, meta.number, &ops)?;
        after = rebuild_after([bytes.as_slice()], &mut state, after, |_| {})
            .map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(())
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

fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
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
    mut each: impl FnMut(&Outcome),
) -> Result<Vec<Outcome>, String> {
    let mut done = Vec::new();
    each_batch(dir, |state, batch, ops| {
        let settled = proof_path(dir, batch).exists()
            || stem(dir, batch).with_extension("unprovable").exists();
        if settled {
            return Ok(());
        }
        let Some(_claim) = claim(dir, batch, stale_after) else {
            return Ok(());
        };
        let proven = witness(state, ops, keys.shape)
            .map_err(ProveError::from)
            .and_then(|w| {
                let public = w.public;
                let t = Instant::now();
                let proof = prove(keys, w, rng)?;
                Ok((public, proof, t.elapsed().as_secs_f64()))
            });
        let outcome = match proven {
            Ok((public, proof, seconds)) => {
                let text = proof_json(batch, keys, &public, &proof, seconds).to_string();
                write_atomic(&proof_path(dir, batch), &text)
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
                write_atomic(&stem(dir, batch).with_extension("unprovable"), &reason)
                    .map_err(|e| format!("batch {batch}: {e}"))?;
                Outcome::Unprovable { batch, reason }
            }
        };
        each(&outcome);
        done.push(outcome);
        Ok(())
    })?;
    Ok(done)
}

/// Checks every proof file against the state rebuilt from the blobs alone (its public inputs
/// must be the rebuilt roots and the batch's commitment) and the verifying key. Returns the
/// batches proven and those without a valid proof yet; an error names a proof that is wrong.
pub fn check_proofs(dir: &Path, keys: &Keys) -> Result<(Vec<u64>, Vec<u64>), String> {
    let (mut proven, mut missing) = (Vec::new(), Vec::new());
    each_batch(dir, |state, batch, ops| {
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
