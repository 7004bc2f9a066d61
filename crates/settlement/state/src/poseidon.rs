//! Poseidon over BN254 with circomlib's parameters (the round constants and MDS matrices that
//! `light-poseidon` ships for `new_circom`), for 1 to 12 inputs, and encodings of engine values
//! as field elements.
//!
//! The permutation is our own loop over stack arrays with the parameters loaded once:
//! `light-poseidon`'s hasher allocates a vector per round and its parameters per hasher, which
//! made a tree node cost about 57 µs here. Its output is the reference: a test compares the two
//! on random inputs of every width, and the shared vectors pin both to circomlibjs.

use std::sync::OnceLock;

use ark_ff::{BigInteger, Field, PrimeField, Zero};

/// A BN254 scalar field element.
pub type Fr = ark_bn254::Fr;

/// Widest state (12 inputs + the capacity element).
pub const MAX_WIDTH: usize = 13;

/// circomlib's parameters for one state width (inputs + 1): what the circuits' Poseidon gadget
/// reads so that it computes exactly this hash.
pub struct Params {
    /// Round constants, `width` per round.
    pub ark: Vec<Fr>,
    /// The MDS matrix, by row.
    pub mds: Vec<Vec<Fr>>,
    /// Full rounds (half before, half after the partial ones).
    pub full_rounds: usize,
    /// Partial rounds (S-box on the first element only).
    pub partial_rounds: usize,
}

/// The parameters for a state of `width` elements (2..=13), loaded once.
pub fn params(width: usize) -> &'static Params {
    static ALL: [OnceLock<Params>; MAX_WIDTH + 1] = [const { OnceLock::new() }; MAX_WIDTH + 1];
    ALL[width].get_or_init(|| {
        let p = light_poseidon::parameters::bn254_x5::get_poseidon_parameters::<Fr>(width as u8)
            .expect("circom parameters exist for widths 2..=13");
        assert_eq!(p.alpha, 5, "circom's S-box is x^5");
        Params {
            ark: p.ark,
            mds: p.mds,
            full_rounds: p.full_rounds,
            partial_rounds: p.partial_rounds,
        }
    })
}

#[inline(always)]
fn sbox(x: &mut Fr) {
    let x2 = x.square();
    *x *= x2.square();
}

/// Poseidon of 1 to 12 elements (circomlib's `Poseidon(n)`).
pub fn hash(inputs: &[Fr]) -> Fr {
    let width = inputs.len() + 1;
    assert!(
        (2..=MAX_WIDTH).contains(&width),
        "circom parameters exist for 1..=12 inputs"
    );
    let p = params(width);
    let mut state = [Fr::zero(); MAX_WIDTH];
    state[1..width].copy_from_slice(inputs);
    let half = p.full_rounds / 2;
    let rounds = p.full_rounds + p.partial_rounds;
    let mut next = [Fr::zero(); MAX_WIDTH];
    for round in 0..rounds {
        let constants = &p.ark[round * width..(round + 1) * width];
        for (s, c) in state[..width].iter_mut().zip(constants) {
            *s += c;
        }
        if round < half || round >= half + p.partial_rounds {
            state[..width].iter_mut().for_each(sbox);
        } else {
            sbox(&mut state[0]);
        }
        for (i, out) in next[..width].iter_mut().enumerate() {
            let row = &p.mds[i];
            let mut acc = state[0] * row[0];
            for j in 1..width {
                acc += state[j] * row[j];
            }
            *out = acc;
        }
        state[..width].copy_from_slice(&next[..width]);
    }
    state[0]
}

/// Poseidon of one element.
pub fn hash1(a: Fr) -> Fr {
    hash(&[a])
}

/// Poseidon of two elements (chains: `hash_bytes`, risk arrays).
pub fn hash2(a: Fr, b: Fr) -> Fr {
    hash(&[a, b])
}

/// Poseidon of four elements (tree nodes).
pub fn hash4(a: Fr, b: Fr, c: Fr, d: Fr) -> Fr {
    hash(&[a, b, c, d])
}

/// A signed 64-bit value as a field element: negatives as `p - |v|` (the circuit's convention).
pub fn from_i64(v: i64) -> Fr {
    if v >= 0 {
        Fr::from(v as u64)
    } else {
        -Fr::from(v.unsigned_abs())
    }
}

/// A 20-byte address as a field element (big-endian integer, always below the modulus).
pub fn from_address(a: &[u8; 20]) -> Fr {
    Fr::from_be_bytes_mod_order(a)
}

/// Bytes as field elements, 31 bytes (big-endian) per element, then a chain
/// `h = Poseidon(h, chunk)` from `h = Poseidon(len)`: a commitment a circuit can recompute over
/// exactly the bytes posted.
pub fn hash_bytes(bytes: &[u8]) -> Fr {
    bytes
        .chunks(31)
        .fold(hash1(Fr::from(bytes.len() as u64)), |h, chunk| {
            hash2(h, Fr::from_be_bytes_mod_order(chunk))
        })
}

/// Big-endian 32 bytes of a field element.
pub fn to_bytes(f: &Fr) -> [u8; 32] {
    let bytes = f.into_bigint().to_bytes_be();
    let mut out = [0u8; 32];
    out[32 - bytes.len()..].copy_from_slice(&bytes);
    out
}

/// `0x`-prefixed big-endian hex of a field element.
pub fn to_hex(f: &Fr) -> String {
    hex(&to_bytes(f))
}

/// `0x`-prefixed lowercase hex of bytes (roots, hashes, addresses in headers and proofs).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::from("0x"), |mut s, b| {
        s.push_str(&format!("{b:02x}"));
        s
    })
}

/// The field element of 32 big-endian bytes, if below the modulus.
pub fn from_bytes(b: &[u8; 32]) -> Option<Fr> {
    let f = Fr::from_be_bytes_mod_order(b);
    (to_bytes(&f) == *b).then_some(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use light_poseidon::{Poseidon, PoseidonHasher};

    #[test]
    fn agrees_with_light_poseidon_at_every_width() {
        let mut x = Fr::from(0x1234_5678_9abc_def0u64);
        for n in 1..=12 {
            for _ in 0..5 {
                let inputs: Vec<Fr> = (0..n)
                    .map(|i| {
                        x = x.square() + Fr::from(i as u64 + 3);
                        x
                    })
                    .collect();
                let reference = Poseidon::<Fr>::new_circom(n)
                    .and_then(|mut p| p.hash(&inputs))
                    .expect("hashes");
                assert_eq!(hash(&inputs), reference, "{n} inputs");
            }
        }
    }
}
