//! Poseidon over BN254 with circomlib's parameters (`light-poseidon`'s `new_circom`), for 1, 2
//! and 4 inputs, and encodings of engine values as field elements.

use ark_ff::{BigInteger, PrimeField};
use light_poseidon::{Poseidon, PoseidonHasher};

/// A BN254 scalar field element.
pub type Fr = ark_bn254::Fr;

/// Poseidon of 1 to 12 elements (circomlib's `Poseidon(n)`).
pub fn hash(inputs: &[Fr]) -> Fr {
    Poseidon::<Fr>::new_circom(inputs.len())
        .and_then(|mut p| p.hash(inputs))
        .expect("circom parameters exist for 1..=12 inputs and inputs are field elements")
}

/// Poseidon of one element.
pub fn hash1(a: Fr) -> Fr {
    hash(&[a])
}

/// Poseidon of two elements (tree nodes).
pub fn hash2(a: Fr, b: Fr) -> Fr {
    hash(&[a, b])
}

/// Poseidon of four elements (leaves).
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
    to_bytes(f).iter().fold(String::from("0x"), |mut s, b| {
        s.push_str(&format!("{b:02x}"));
        s
    })
}

/// The field element of 32 big-endian bytes, if below the modulus.
pub fn from_bytes(b: &[u8; 32]) -> Option<Fr> {
    let f = Fr::from_be_bytes_mod_order(b);
    (to_bytes(&f) == *b).then_some(f)
}
