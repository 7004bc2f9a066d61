//! What the L1 verifier (`contracts/src/Groth16Verifier.sol`) takes: the verifying key as its
//! constructor's 30 words, a proof as 8 words and the public inputs as 7, each a big-endian
//! 32-byte integer (G2 coordinates imaginary part first, the precompile's order).

use ark_bn254::{Bn254, Fq, Fq2, Fr, G1Affine, G2Affine};
use ark_ff::{BigInteger, PrimeField};
use ark_groth16::{Groth16, Proof, VerifyingKey};
use ark_snark::SNARK;
use optio_state::poseidon::to_bytes;

use crate::witness::PublicInputs;

/// One EVM word, big-endian.
pub type Word = [u8; 32];

fn fq(x: &Fq) -> Word {
    let bytes = x.into_bigint().to_bytes_be();
    let mut out = [0u8; 32];
    out[32 - bytes.len()..].copy_from_slice(&bytes);
    out
}

fn g1(p: &G1Affine) -> [Word; 2] {
    [fq(&p.x), fq(&p.y)]
}

fn fq2(x: &Fq2) -> [Word; 2] {
    [fq(&x.c1), fq(&x.c0)]
}

fn g2(p: &G2Affine) -> [Word; 4] {
    let [x1, x0] = fq2(&p.x);
    let [y1, y0] = fq2(&p.y);
    [x1, x0, y1, y0]
}

/// The verifier's constructor argument: alpha, beta, gamma, delta, IC0..IC7.
pub fn verifying_key(vk: &VerifyingKey<Bn254>) -> Vec<Word> {
    let mut out = Vec::with_capacity(30);
    out.extend(g1(&vk.alpha_g1));
    out.extend(g2(&vk.beta_g2));
    out.extend(g2(&vk.gamma_g2));
    out.extend(g2(&vk.delta_g2));
    for p in &vk.gamma_abc_g1 {
        out.extend(g1(p));
    }
    out
}

/// A proof: A, B, C.
pub fn proof(p: &Proof<Bn254>) -> [Word; 8] {
    let [ax, ay] = g1(&p.a);
    let [bx1, bx0, by1, by0] = g2(&p.b);
    let [cx, cy] = g1(&p.c);
    [ax, ay, bx1, bx0, by1, by0, cx, cy]
}

/// The public inputs, in the circuit's order.
pub fn inputs(public: &PublicInputs) -> [Word; 7] {
    let v = public.to_vec();
    std::array::from_fn(|i| to_bytes(&v[i]))
}

fn fq_from(w: &Word) -> Option<Fq> {
    let x = Fq::from_be_bytes_mod_order(w);
    (fq(&x) == *w).then_some(x)
}

/// A proof back from its 8 words; `None` unless every point is on its curve and in the
/// prime-order subgroup.
pub fn proof_from(w: &[Word]) -> Option<Proof<Bn254>> {
    if w.len() != 8 {
        return None;
    }
    let a = G1Affine::new_unchecked(fq_from(&w[0])?, fq_from(&w[1])?);
    let b = G2Affine::new_unchecked(
        Fq2::new(fq_from(&w[3])?, fq_from(&w[2])?),
        Fq2::new(fq_from(&w[5])?, fq_from(&w[4])?),
    );
    let c = G1Affine::new_unchecked(fq_from(&w[6])?, fq_from(&w[7])?);
    let valid = a.is_on_curve()
        && c.is_on_curve()
        && b.is_on_curve()
        && b.is_in_correct_subgroup_assuming_on_curve();
    valid.then_some(Proof { a, b, c })
}

/// Checks a proof as the L1 verifier does, but natively: its 8 words against `vk` with the 7
/// public-input words (`OptioRollup.batchInputs`). False for a point off its curve or an input
/// outside the scalar field, as the contract refuses them.
pub fn verify_words(vk: &VerifyingKey<Bn254>, proof: &[Word], inputs: &[Word]) -> bool {
    let Some(proof) = proof_from(proof) else {
        return false;
    };
    let inputs: Option<Vec<Fr>> = inputs
        .iter()
        .map(|w| {
            let x = Fr::from_be_bytes_mod_order(w);
            (to_bytes(&x) == *w).then_some(x)
        })
        .collect();
    match inputs {
        Some(inputs) if inputs.len() == PublicInputs::COUNT => {
            Groth16::<Bn254>::verify(vk, &inputs, &proof).unwrap_or(false)
        }
        _ => false,
    }
}
