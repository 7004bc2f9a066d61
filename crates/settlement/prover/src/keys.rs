//! Keys, proofs and verification. Key generation is Groth16's circuit-specific setup run by one
//! party (`optio prove setup`): whoever runs it could forge proofs if they kept the randomness,
//! so it is drawn from the operating system and dropped (README: the trust this implies and the
//! multi-party ceremony that would replace it).

use std::path::Path;

use ark_bn254::Bn254;
use ark_ec::CurveGroup;
use ark_ff::{PrimeField, UniformRand};
use ark_groth16::r1cs_to_qap::{LibsnarkReduction, R1CSToQAP};
use ark_groth16::{Groth16, Proof, ProvingKey, VerifyingKey};
use ark_poly::GeneralEvaluationDomain;
use ark_relations::gr1cs::{
    ConstraintSystem, ConstraintSystemRef, Matrix, SynthesisError, SynthesisMode,
};
use ark_serialize::{CanonicalDeserialize, CanonicalSerialize};
use ark_snark::{CircuitSpecificSetupSNARK, SNARK};
use ark_std::rand::SeedableRng;
use ark_std::rand::rngs::StdRng;
use optio_state::poseidon::Fr;
use rayon::prelude::*;

use crate::circuit::BatchCircuit;
use crate::gadgets::Cs;
use crate::msm;
use crate::witness::{self, BatchWitness, PublicInputs, Shape, WitnessError};

/// Why no proof was made.
#[derive(Debug, thiserror::Error)]
pub enum ProveError {
    /// No witness (a batch too large for the shape, or ops out of the order the circuit keeps).
    #[error(transparent)]
    Witness(#[from] WitnessError),
    /// The batch breaks a rule of the circuit: it cannot be proven.
    #[error("the batch breaks a rule of the circuit (first unsatisfied constraint: {0})")]
    Unsatisfied(String),
    /// The keys are for another shape.
    #[error("the keys are for {keys}, the batch for {batch}")]
    Shape {
        /// Of the keys (`Shape::name`).
        keys: String,
        /// Of the witness.
        batch: String,
    },
    /// arkworks refused.
    #[error("synthesis: {0}")]
    Synthesis(#[from] SynthesisError),
    /// The batch keeps every rule, yet its proof does not verify with the keys' verifying key:
    /// the keys are not this circuit's (made by another version of optio, or the proving and
    /// verifying keys of two setups).
    #[error(
        "the proof does not verify with these keys although the batch keeps every rule: the keys are for another circuit; make new ones with optio prove setup"
    )]
    KeysMismatch,
    /// Key files.
    #[error("key file {path}: {why}")]
    KeyFile {
        /// Which.
        path: String,
        /// What went wrong.
        why: String,
    },
}

/// The version of the batch circuit's constraints. A change of the constraints any shape lays
/// out bumps it: `tests/circuit_version.rs` holds a fingerprint of the smallest shape's
/// constraint matrices beside this number, so a change that does not bump it fails. Keys
/// record the version they were made for (`<shape name>.circuit`), and `Keys::read` refuses
/// keys of another one: their proofs would not verify, and a node finds that at its start, not
/// at its first batch.
///
/// 1: the first recorded (blob format 8: an auction's start in the account leaf and each
/// liquidation held to the proven schedule). Keys made before carry no version file.
///
/// 2: an auction's end (blob format 9, kind 30) proven cured (a cured margin slot) or by cover,
/// and an account in liquidation frozen (no fill, withdrawal, transfer out or mode change).
///
/// 3: a deficit cover of an account whose leaf held no position at the batch's start takes no
/// flat margin slot (it filled nothing before the cover, so it holds none).
///
/// 4: every mark lies in `[0, W]` (its spec opened in the mark window), and an account that
/// filled and ends the batch in `WorstCase` is not priced for solvency (it covers its shorts'
/// worst case, which then implies it): no solvency window for it.
///
/// 5: a margin slot's liquidation checks (the fee within the equity, the shortfall) share the
/// range checks of its first two totals, which a liquidation's slot does not check (the
/// second one's 32 bits wider): the same rules, 301 constraints fewer a margin slot.
pub const CIRCUIT_VERSION: u32 = 5;

/// A shape's proving and verifying keys.
pub struct Keys {
    /// The circuit's shape.
    pub shape: Shape,
    /// Proving key.
    pub pk: ProvingKey<Bn254>,
    /// Verifying key.
    pub vk: VerifyingKey<Bn254>,
}

/// A generator seeded from the operating system.
pub fn os_rng() -> StdRng {
    StdRng::from_seed(rand_seed())
}

fn rand_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    getrandom(&mut seed);
    seed
}

fn getrandom(out: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(out))
        .expect("the operating system provides randomness");
}

impl Keys {
    /// Generates keys for `shape` with randomness from `rng` (tests pass a seeded one; the
    /// command passes `os_rng()`).
    pub fn generate(shape: Shape, rng: &mut StdRng) -> Result<Keys, ProveError> {
        let circuit = BatchCircuit {
            witness: witness::empty(shape),
        };
        let (pk, vk) = Groth16::<Bn254>::setup(circuit, rng)?;
        Ok(Keys { shape, pk, vk })
    }

    fn file(dir: &Path, shape: Shape, what: &str) -> std::path::PathBuf {
        dir.join(format!("{}.{what}", shape.name()))
    }

    /// Writes `<shape name>.pk`, `.vk` and `.circuit` (`CIRCUIT_VERSION`, last) into `dir`
    /// (`Shape::name`).
    pub fn write(&self, dir: &Path) -> Result<(), ProveError> {
        let version = format!("{CIRCUIT_VERSION}\n").into_bytes();
        for (what, bytes) in [
            ("pk", serialize(&self.pk)),
            ("vk", serialize(&self.vk)),
            ("circuit", version),
        ] {
            let path = Self::file(dir, self.shape, what);
            write_synced(&path, &bytes).map_err(|e| ProveError::KeyFile {
                path: path.display().to_string(),
                why: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Reads the one set of keys in `dir`, whatever its shape (named by its files); an error if
    /// there is none or more than one.
    pub fn read_only(dir: &Path) -> Result<Keys, ProveError> {
        Self::read(dir, Self::shape_in(dir)?)
    }

    /// The shape of the one set of keys in `dir` (from its files' name, without reading them).
    pub fn shape_in(dir: &Path) -> Result<Shape, ProveError> {
        let bad = |why: String| ProveError::KeyFile {
            path: dir.display().to_string(),
            why,
        };
        let entries = std::fs::read_dir(dir).map_err(|e| bad(e.to_string()))?;
        let names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|name| Some(name.strip_suffix(".vk")?.to_owned()))
            .collect();
        let shapes: Vec<Shape> = names.iter().filter_map(|n| Shape::from_name(n)).collect();
        match shapes[..] {
            [shape] => Ok(shape),
            [] if !names.is_empty() => Err(bad(format!(
                "keys of another circuit version ({}): make new ones with optio prove setup --keys DIR",
                names.join(", ")
            ))),
            [] => Err(bad(
                "no keys (make them with optio prove setup --keys DIR)".into()
            )),
            _ => Err(bad(format!("keys of {} shapes; keep one", shapes.len()))),
        }
    }

    /// Whether the keys of `shape` in `dir` were made for this circuit version
    /// (`CIRCUIT_VERSION`, their `.circuit` file), reading nothing else: a node checks it at its
    /// start, before keys that may take gigabytes are read. Keys that are not there at all pass
    /// (reading them names the file missing).
    pub fn check_version(dir: &Path, shape: Shape) -> Result<(), ProveError> {
        let path = Self::file(dir, shape, "circuit");
        let made_for = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u32>().ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(ProveError::KeyFile {
                    path: path.display().to_string(),
                    why: e.to_string(),
                });
            }
        };
        if made_for == Some(CIRCUIT_VERSION) || !Self::file(dir, shape, "vk").exists() {
            return Ok(());
        }
        let theirs = made_for.map_or("none recorded".to_owned(), |v| v.to_string());
        Err(ProveError::KeyFile {
            path: path.display().to_string(),
            why: format!(
                "keys of another circuit version ({theirs}; this binary's is {CIRCUIT_VERSION}): make new ones with optio prove setup --keys DIR"
            ),
        })
    }

    /// Reads the keys of `shape` from `dir`: those of this circuit version only
    /// (`check_version`).
    pub fn read(dir: &Path, shape: Shape) -> Result<Keys, ProveError> {
        Self::check_version(dir, shape)?;
        let read = |what: &str| {
            let path = Self::file(dir, shape, what);
            let bytes = std::fs::read(&path).map_err(|e| ProveError::KeyFile {
                path: path.display().to_string(),
                why: e.to_string(),
            })?;
            Ok::<_, ProveError>((path, bytes))
        };
        let bad = |path: &Path, e: ark_serialize::SerializationError| ProveError::KeyFile {
            path: path.display().to_string(),
            why: e.to_string(),
        };
        let (path, pk) = read("pk")?;
        let pk =
            ProvingKey::deserialize_uncompressed_unchecked(&pk[..]).map_err(|e| bad(&path, e))?;
        let (path, vk) = read("vk")?;
        let vk = verifying_key_of(&path, &vk)?;
        Ok(Keys { shape, pk, vk })
    }
}

/// The verifying key in `path`: a `.vk` file as `optio prove setup` wrote it (and an operator
/// publishes it), or a keys directory holding one set. Only the verifying key is read.
pub fn read_verifying_key(path: &Path) -> Result<VerifyingKey<Bn254>, ProveError> {
    let file = if path.is_dir() {
        Keys::file(path, Keys::shape_in(path)?, "vk")
    } else {
        path.to_path_buf()
    };
    let bytes = std::fs::read(&file).map_err(|e| ProveError::KeyFile {
        path: file.display().to_string(),
        why: e.to_string(),
    })?;
    verifying_key_of(&file, &bytes)
}

/// A verifying key from its file's bytes: points on their curves, as many public inputs as
/// this circuit has.
fn verifying_key_of(path: &Path, bytes: &[u8]) -> Result<VerifyingKey<Bn254>, ProveError> {
    let vk = VerifyingKey::deserialize_uncompressed(bytes).map_err(|e| ProveError::KeyFile {
        path: path.display().to_string(),
        why: e.to_string(),
    })?;
    // Keys of an older circuit with other public inputs (the binding added two).
    let inputs = crate::witness::PublicInputs::COUNT;
    if vk.gamma_abc_g1.len() != inputs + 1 {
        return Err(ProveError::KeyFile {
            path: path.display().to_string(),
            why: format!(
                "keys of another circuit version ({} public inputs, this circuit has {inputs}): make new ones with optio prove setup --keys DIR",
                vk.gamma_abc_g1.len().saturating_sub(1)
            ),
        });
    }
    Ok(vk)
}

fn serialize(x: &impl CanonicalSerialize) -> Vec<u8> {
    let mut out = Vec::new();
    x.serialize_uncompressed(&mut out)
        .expect("writing to memory succeeds");
    out
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A constraint system that keeps the assignment and builds no matrices (so the gadgets build
/// no linear combination either).
fn values_only() -> ConstraintSystemRef<Fr> {
    let cs = ConstraintSystem::<Fr>::new_ref();
    cs.set_mode(SynthesisMode::Prove {
        construct_matrices: false,
        generate_lc_assignments: false,
    });
    cs
}

/// Checks the witness against every constraint without proving (and without building the
/// matrices); where the first unsatisfied one is on failure. Returns the number of constraints.
pub fn check(w: &BatchWitness) -> Result<usize, ProveError> {
    let gadgets = Cs::new(values_only());
    crate::circuit::synthesize(&gadgets, w)?;
    match gadgets.first_failure() {
        None => Ok(gadgets.num_constraints()),
        Some(at) => Err(ProveError::Unsatisfied(at)),
    }
}

/// Proves a batch, and verifies the proof before returning it.
///
/// The circuit is synthesized for its values only, checking every constraint as it goes, so a
/// batch that breaks a rule is named before any proving work. Groth16's prover reads the
/// constraint matrices only to evaluate each constraint's three combinations at the assignment
/// (the QAP's witness map), and the synthesis has just computed those values: they are handed
/// to arkworks as matrices of evaluated rows (`Cs::evaluated_rows`), so no proof lays the
/// circuit out (arkworks' own `Groth16::prove` builds every combination and the matrices again
/// for every proof: `prove_laying_out`, the benchmark's comparison). The proof's multi-scalar
/// multiplications are `crate::msm`'s: the same group elements as arkworks', with far fewer
/// additions (`prove_with(.., Msm::Arkworks)` makes the same proof with arkworks'). A proof that
/// does not verify all the same means keys of another circuit.
pub fn prove(keys: &Keys, w: BatchWitness, rng: &mut StdRng) -> Result<Proof<Bn254>, ProveError> {
    prove_with(keys, w, rng, Msm::AffineBuckets)
}

/// Which multi-scalar multiplication a proof's group sums use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Msm {
    /// `crate::msm`: affine buckets sharing their inversions (what `prove` uses).
    AffineBuckets,
    /// arkworks' (`create_proof_with_reduction_and_matrices`), for the benchmark beside it.
    Arkworks,
}

/// `prove` with the given multi-scalar multiplication.
pub fn prove_with(
    keys: &Keys,
    w: BatchWitness,
    rng: &mut StdRng,
    msm: Msm,
) -> Result<Proof<Bn254>, ProveError> {
    if w.shape != keys.shape {
        return Err(ProveError::Shape {
            keys: keys.shape.name(),
            batch: w.shape.name(),
        });
    }
    let cs = values_only();
    let gadgets = Cs::evaluating(cs.clone());
    crate::circuit::synthesize(&gadgets, &w)?;
    if let Some(at) = gadgets.first_failure() {
        return Err(ProveError::Unsatisfied(at));
    }
    let assignment = [cs.instance_assignment()?, cs.witness_assignment()?].concat();
    if assignment.len() != keys.pk.a_query.len() {
        return Err(ProveError::KeysMismatch);
    }
    let (r, s) = (Fr::rand(rng), Fr::rand(rng));
    let rows = gadgets.evaluated_rows();
    let (inputs, constraints) = (cs.num_instance_variables(), gadgets.num_constraints());
    drop(gadgets);
    let proof = match msm {
        Msm::AffineBuckets => {
            groth16_proof(&keys.pk, r, s, &rows, inputs, constraints, &assignment)?
        }
        Msm::Arkworks => Groth16::<Bn254>::create_proof_with_reduction_and_matrices(
            &keys.pk,
            r,
            s,
            &rows,
            inputs,
            constraints,
            &assignment,
        )?,
    };
    if verify(&keys.vk, &w.public, &proof) {
        return Ok(proof);
    }
    Err(ProveError::KeysMismatch)
}

/// Groth16's prover (arkworks' `create_proof_with_reduction_and_matrices`, step for step) with
/// the multi-scalar multiplications of `crate::msm`: the QAP's witness map `h` from the
/// evaluated rows, then `A = alpha + sum a_i A_i(tau) + r delta` in G1, `B = beta + sum a_i
/// B_i(tau) + s delta` in G2 (and in G1 for C), `C = s A + r B - r s delta + sum h_i H_i + sum
/// w_i L_i` over the witness part `w` of the assignment.
fn groth16_proof(
    pk: &ProvingKey<Bn254>,
    r: Fr,
    s: Fr,
    rows: &[Matrix<Fr>],
    inputs: usize,
    constraints: usize,
    assignment: &[Fr],
) -> Result<Proof<Bn254>, SynthesisError> {
    let h = LibsnarkReduction::witness_map_from_matrices::<Fr, GeneralEvaluationDomain<Fr>>(
        rows,
        inputs,
        constraints,
        assignment,
    )?;
    let h: Vec<_> = h.par_iter().map(|x| x.into_bigint()).collect();
    let h_sum = msm::msm(&pk.h_query, &h);
    drop(h);
    let assignment: Vec<_> = assignment[1..]
        .par_iter()
        .map(|x| x.into_bigint())
        .collect();
    let witness = &assignment[inputs - 1..];
    let l_sum = msm::msm(&pk.l_query, witness);
    let a =
        pk.vk.alpha_g1 + pk.a_query[0] + msm::msm(&pk.a_query[1..], &assignment) + pk.delta_g1 * r;
    let b_sum_g1 = msm::msm(&pk.b_g1_query[1..], &assignment);
    let b_g1 = pk.beta_g1 + pk.b_g1_query[0] + b_sum_g1 + pk.delta_g1 * s;
    let b_sum_g2 = msm::msm(&pk.b_g2_query[1..], &assignment);
    let b = pk.vk.beta_g2 + pk.b_g2_query[0] + b_sum_g2 + pk.vk.delta_g2 * s;
    let c = a * s + b_g1 * r - pk.delta_g1 * (r * s) + l_sum + h_sum;
    Ok(Proof {
        a: a.into_affine(),
        b: b.into_affine(),
        c: c.into_affine(),
    })
}

/// Proves a batch as arkworks' own prover does (`Groth16::prove`: the whole circuit laid out
/// again for every proof), for the benchmark beside `prove`.
pub fn prove_laying_out(
    keys: &Keys,
    w: BatchWitness,
    rng: &mut StdRng,
) -> Result<Proof<Bn254>, ProveError> {
    Ok(Groth16::<Bn254>::prove(
        &keys.pk,
        BatchCircuit { witness: w },
        rng,
    )?)
}

/// Verifies a proof against its public inputs.
pub fn verify(vk: &VerifyingKey<Bn254>, public: &PublicInputs, proof: &Proof<Bn254>) -> bool {
    Groth16::<Bn254>::verify(vk, &public.to_vec(), proof).unwrap_or(false)
}
