//! Poseidon over BN254 with circomlib's parameters (the round constants and MDS matrices that
//! `light-poseidon` ships for `new_circom`), for 1 to 12 inputs, and encodings of engine values
//! as field elements.
//!
//! The permutation is our own loop over stack arrays with the parameters loaded once, its
//! partial rounds rearranged as the Poseidon paper's appendix B does (`Schedule`): a sparse
//! matrix a round instead of the dense one. `light-poseidon`'s hasher (the round-by-round
//! function, which allocates a vector per round and its parameters per hasher) is the
//! reference: a test compares the two on random inputs of every width, and the shared vectors
//! pin both to circomlibjs.

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

/// The permutation of one width rearranged for speed (the Poseidon paper's appendix B), the same
/// function: in a partial round only the first element goes through the S-box, so
/// - the round constants of the other elements pass linearly through the matrix into the next
///   round's, and every partial round adds one constant, to the first element;
/// - each partial round's matrix factors as `S * B`, with `B = diag(1, B')` applied first and
///   `S = [[a, s], [w, I]]` sparse. `B` commutes with the S-box and the constant before it (it
///   leaves the first element alone and never reads it), so it moves into the round before,
///   back to the last full round of the first half. A partial round then costs `2 * width - 1`
///   multiplications for its matrix instead of `width^2`.
struct Schedule {
    /// Round constants by round (`width` each); a partial round's only at the first element.
    constants: Vec<Fr>,
    /// The matrix of the first half's last full round, the partial rounds' `B` folded in.
    last_first_half: Vec<Vec<Fr>>,
    /// Each partial round's sparse matrix: its first row (`a`, then `s`) ...
    rows: Vec<Vec<Fr>>,
    /// ... and its first column below the diagonal (`w`).
    columns: Vec<Vec<Fr>>,
}

impl Schedule {
    fn of(width: usize) -> &'static Schedule {
        static ALL: [OnceLock<Schedule>; MAX_WIDTH + 1] =
            [const { OnceLock::new() }; MAX_WIDTH + 1];
        ALL[width].get_or_init(|| Schedule::new(params(width), width))
    }

    fn new(p: &Params, width: usize) -> Schedule {
        let (half, partial) = (p.full_rounds / 2, p.partial_rounds);
        let mut constants = p.ark.clone();
        for r in half..half + partial {
            let mut rest = constants[r * width..(r + 1) * width].to_vec();
            rest[0] = Fr::zero();
            for (i, m) in p.mds.iter().enumerate() {
                let carried: Fr = m.iter().zip(&rest).map(|(a, b)| *a * b).sum();
                constants[(r + 1) * width + i] += carried;
            }
            constants[r * width + 1..(r + 1) * width].fill(Fr::zero());
        }
        let (mut rows, mut columns) = (vec![Vec::new(); partial], vec![Vec::new(); partial]);
        let mut matrix = p.mds.clone();
        for r in (0..partial).rev() {
            let inner: Vec<Vec<Fr>> = matrix[1..].iter().map(|row| row[1..].to_vec()).collect();
            let inverse = invert(&inner);
            let mut row = vec![matrix[0][0]];
            row.extend((0..width - 1).map(|j| {
                (0..width - 1)
                    .map(|k| matrix[0][k + 1] * inverse[k][j])
                    .sum::<Fr>()
            }));
            rows[r] = row;
            columns[r] = matrix[1..].iter().map(|row| row[0]).collect();
            // The round before ends with `B = diag(1, inner)` after its matrix.
            matrix = std::iter::once(p.mds[0].clone())
                .chain(inner.iter().map(|b| {
                    (0..width)
                        .map(|j| b.iter().zip(&p.mds[1..]).map(|(x, m)| *x * m[j]).sum())
                        .collect()
                }))
                .collect();
        }
        Schedule {
            constants,
            last_first_half: matrix,
            rows,
            columns,
        }
    }
}

/// The inverse of a square matrix over the field (Gauss-Jordan); the blocks inverted here are
/// those of MDS products, which are invertible.
fn invert(m: &[Vec<Fr>]) -> Vec<Vec<Fr>> {
    let n = m.len();
    let mut a: Vec<Vec<Fr>> = m
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let mut r = row.clone();
            r.extend((0..n).map(|j| if i == j { Fr::from(1u64) } else { Fr::zero() }));
            r
        })
        .collect();
    for col in 0..n {
        let pivot = (col..n)
            .find(|&r| !a[r][col].is_zero())
            .expect("an MDS block is invertible");
        a.swap(col, pivot);
        let inv = a[col][col].inverse().expect("nonzero pivot");
        a[col].iter_mut().for_each(|x| *x *= inv);
        for r in 0..n {
            if r != col && !a[r][col].is_zero() {
                let f = a[r][col];
                let pivot_row = a[col].clone();
                a[r].iter_mut()
                    .zip(&pivot_row)
                    .for_each(|(x, p)| *x -= f * p);
            }
        }
    }
    a.into_iter().map(|row| row[n..].to_vec()).collect()
}

/// `state = matrix * state` over the first `width` elements.
#[inline(always)]
fn mix(matrix: &[Vec<Fr>], state: &mut [Fr; MAX_WIDTH], width: usize) {
    let mut next = [Fr::zero(); MAX_WIDTH];
    for (out, row) in next[..width].iter_mut().zip(matrix) {
        let mut acc = state[0] * row[0];
        for j in 1..width {
            acc += state[j] * row[j];
        }
        *out = acc;
    }
    state[..width].copy_from_slice(&next[..width]);
}

/// Poseidon of 1 to 12 elements (circomlib's `Poseidon(n)`).
pub fn hash(inputs: &[Fr]) -> Fr {
    let width = inputs.len() + 1;
    assert!(
        (2..=MAX_WIDTH).contains(&width),
        "circom parameters exist for 1..=12 inputs"
    );
    let p = params(width);
    let s = Schedule::of(width);
    let mut state = [Fr::zero(); MAX_WIDTH];
    state[1..width].copy_from_slice(inputs);
    let (half, partial) = (p.full_rounds / 2, p.partial_rounds);
    let full = |state: &mut [Fr; MAX_WIDTH], round: usize, matrix: &[Vec<Fr>]| {
        let constants = &s.constants[round * width..(round + 1) * width];
        for (x, c) in state[..width].iter_mut().zip(constants) {
            *x += c;
            sbox(x);
        }
        mix(matrix, state, width);
    };
    for round in 0..half - 1 {
        full(&mut state, round, &p.mds);
    }
    full(&mut state, half - 1, &s.last_first_half);
    for r in 0..partial {
        state[0] += s.constants[(half + r) * width];
        sbox(&mut state[0]);
        let (row, column) = (&s.rows[r], &s.columns[r]);
        let first = state[0];
        let mut acc = first * row[0];
        for j in 1..width {
            acc += state[j] * row[j];
        }
        for (x, w) in state[1..width].iter_mut().zip(column) {
            *x += first * w;
        }
        state[0] = acc;
    }
    for round in half + partial..p.full_rounds + partial {
        full(&mut state, round, &p.mds);
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
