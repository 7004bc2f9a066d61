//! Multi-scalar multiplication for the prover: `sum_i s_i * P_i` over a proving key's query.
//!
//! A Groth16 proof is mostly five of these (A, B in G1 and in G2, the H and L queries), and
//! most of their scalars are full-size field elements (Poseidon's states). arkworks' MSM
//! (Pippenger's bucket method with signed digits) adds each base into its bucket in Jacobian
//! coordinates: a mixed addition, 7 multiplications and 4 squarings of the base field. Here the
//! buckets stay affine and a batch of additions to distinct buckets shares one field inversion
//! (Montgomery's trick: 3 multiplications an element), so an addition costs 5 multiplications
//! and a squaring. Doubling and cancellation (a bucket meeting its own point or its negation)
//! take the projective formulas, one at a time; an addition to a bucket that already has one
//! pending goes to that bucket's projective overflow as a mixed addition (arkworks' cost), so a
//! value that repeats across the assignment (an empty subtree's hash, in every path that
//! passes one) costs no more than it does in arkworks' MSM.
//!
//! Scalars of at most 64 bits, or within 64 bits of the modulus (negative small numbers: bits,
//! amounts, counts), go to arkworks' MSM, which has short-digit paths for them; the full-size
//! ones come here. The result is the same group element either way (tested against arkworks'
//! MSM on both groups, with doublings, cancellations and additions to pending buckets forced).

use ark_ec::short_weierstrass::{Affine, Projective, SWCurveConfig};
use ark_ec::{AffineRepr, CurveGroup, VariableBaseMSM};
use ark_ff::{AdditiveGroup, BigInteger, Field, PrimeField, Zero};
use rayon::prelude::*;

type BigInt<P> = <<P as ark_ec::CurveConfig>::ScalarField as PrimeField>::BigInt;

/// Additions to distinct buckets that share one inversion.
const BATCH: usize = 1024;

/// `sum_i scalars[i] * bases[i]` over the shorter of the two slices, as arkworks'
/// `VariableBaseMSM::msm_bigint` (which the groth16 prover calls) computes it.
pub fn msm<P: SWCurveConfig>(bases: &[Affine<P>], scalars: &[BigInt<P>]) -> Projective<P> {
    let n = bases.len().min(scalars.len());
    let (bases, scalars) = (&bases[..n], &scalars[..n]);
    let modulus = P::ScalarField::MODULUS;
    let is_full_size = |s: &BigInt<P>| {
        if s.num_bits() <= 64 {
            return false;
        }
        let mut negated = modulus;
        negated.sub_with_borrow(s);
        negated.num_bits() > 64
    };
    let mut full: Vec<usize> = (0..n).filter(|&i| is_full_size(&scalars[i])).collect();
    if full.is_empty() {
        return Projective::<P>::msm_bigint(bases, scalars);
    }
    let mut short_bases = Vec::with_capacity(n - full.len());
    let mut short_scalars = Vec::with_capacity(n - full.len());
    let mut next_full = full.iter().copied().peekable();
    for i in 0..n {
        if next_full.peek() == Some(&i) {
            next_full.next();
        } else if !scalars[i].is_zero() {
            short_bases.push(bases[i]);
            short_scalars.push(scalars[i]);
        }
    }
    let short = Projective::<P>::msm_bigint(&short_bases, &short_scalars);
    drop((short_bases, short_scalars));
    // A value that repeats (the same hash in every unused slot's path) multiplies the sum of its
    // bases once: one addition a base, where the buckets would take one a window.
    full.par_sort_unstable_by(|&i, &j| scalars[i].cmp(&scalars[j]));
    let mut full_bases = Vec::with_capacity(full.len());
    let mut full_scalars = Vec::with_capacity(full.len());
    let mut repeated_sums = Vec::new();
    let mut repeated_scalars = Vec::new();
    for run in full.chunk_by(|&i, &j| scalars[i] == scalars[j]) {
        if let [i] = run {
            full_bases.push(bases[*i]);
            full_scalars.push(scalars[*i]);
        } else {
            repeated_sums.push(run.iter().map(|&i| bases[i]).sum::<Projective<P>>());
            repeated_scalars.push(scalars[run[0]]);
        }
    }
    drop(full);
    full_bases.extend(Projective::normalize_batch(&repeated_sums));
    full_scalars.extend(repeated_scalars);
    short + affine_buckets(&full_bases, &full_scalars, window_bits(full_bases.len()))
}

/// Pippenger's window: about `ln n + 2` bits, as arkworks chooses it (the bucket sums cost
/// `2^c` additions a window, the bases `n`).
fn window_bits(n: usize) -> usize {
    if n < 32 {
        3
    } else {
        (n.ilog2() as usize * 69 / 100 + 2).min(20)
    }
}

/// The signed digits of `scalar` in base `2^c`, least significant first: each in
/// `(-2^(c-1), 2^(c-1)]`, the carry of a digit above half passed to the next one.
fn signed_digits<B: BigInteger>(scalar: &B, c: usize, windows: usize, out: &mut [i32]) {
    let limbs = scalar.as_ref();
    let mask = (1u64 << c) - 1;
    let mut carry = 0u64;
    for (w, digit) in out.iter_mut().enumerate().take(windows) {
        let bit = w * c;
        let (limb, shift) = (bit / 64, bit % 64);
        let mut bits = if limb < limbs.len() {
            limbs[limb] >> shift
        } else {
            0
        };
        if shift + c > 64 && limb + 1 < limbs.len() {
            bits |= limbs[limb + 1] << (64 - shift);
        }
        let value = (bits & mask) + carry;
        if value > 1 << (c - 1) {
            *digit = value as i32 - (1i32 << c);
            carry = 1;
        } else {
            *digit = value as i32;
            carry = 0;
        }
    }
    debug_assert_eq!(
        carry, 0,
        "the last window holds the scalar's top bits and their carry"
    );
}

/// The bucket method with affine buckets, windows in parallel.
fn affine_buckets<P: SWCurveConfig>(
    bases: &[Affine<P>],
    scalars: &[BigInt<P>],
    c: usize,
) -> Projective<P> {
    let n = bases.len();
    let bits = P::ScalarField::MODULUS_BIT_SIZE as usize;
    let windows = (bits + 1).div_ceil(c);
    // Window-major, so each window's thread reads its digits in order.
    let mut digits = vec![0i32; windows * n];
    let mut by_scalar = vec![0i32; windows];
    for (i, scalar) in scalars.iter().enumerate() {
        signed_digits(scalar, c, windows, &mut by_scalar);
        for (w, digit) in by_scalar.iter().enumerate() {
            digits[w * n + i] = *digit;
        }
    }
    let sums: Vec<Projective<P>> = (0..windows)
        .into_par_iter()
        .map(|w| Window::new(c).sum(bases, &digits[w * n..(w + 1) * n]))
        .collect();
    let mut total = Projective::<P>::zero();
    for sum in sums.iter().rev() {
        for _ in 0..c {
            total.double_in_place();
        }
        total += sum;
    }
    total
}

/// One window's buckets and the batch of additions waiting for their shared inversion.
struct Window<P: SWCurveConfig> {
    buckets: Vec<Affine<P>>,
    /// The batch in which each bucket last had an addition scheduled.
    scheduled_in: Vec<u32>,
    batch: u32,
    pending: Vec<(u32, Affine<P>)>,
    /// Additions to a bucket already in the batch, in projective coordinates.
    overflow: Vec<Projective<P>>,
    /// Scratch of the shared inversion.
    products: Vec<P::BaseField>,
}

impl<P: SWCurveConfig> Window<P> {
    fn new(c: usize) -> Self {
        let buckets = 1usize << (c - 1);
        Window {
            buckets: vec![Affine::identity(); buckets],
            scheduled_in: vec![u32::MAX; buckets],
            batch: 0,
            pending: Vec::with_capacity(BATCH),
            overflow: vec![Projective::zero(); buckets],
            products: Vec::with_capacity(BATCH),
        }
    }

    fn sum(mut self, bases: &[Affine<P>], digits: &[i32]) -> Projective<P> {
        for (base, &digit) in bases.iter().zip(digits) {
            if digit == 0 || base.is_zero() {
                continue;
            }
            let point = if digit > 0 { *base } else { -*base };
            self.add(digit.unsigned_abs() - 1, point);
        }
        self.flush();
        // sum_b (b + 1) * bucket_b, as running sums from the top bucket down.
        let mut running = Projective::<P>::zero();
        let mut total = Projective::<P>::zero();
        for (bucket, overflow) in self.buckets.iter().zip(&self.overflow).rev() {
            running += bucket;
            running += overflow;
            total += running;
        }
        total
    }

    fn add(&mut self, bucket: u32, point: Affine<P>) {
        let at = bucket as usize;
        if self.buckets[at].is_zero() {
            self.buckets[at] = point;
        } else if self.scheduled_in[at] == self.batch {
            self.overflow[at] += point;
        } else {
            self.scheduled_in[at] = self.batch;
            self.pending.push((bucket, point));
            if self.pending.len() == BATCH {
                self.flush();
            }
        }
    }

    /// Adds every pending point to its bucket, one inversion for all (Montgomery's trick).
    fn flush(&mut self) {
        self.batch += 1;
        let mut pending = std::mem::take(&mut self.pending);
        // A bucket meeting its own point or its negation has no chord: projective formulas.
        pending.retain(|&(bucket, point)| {
            let sum = &mut self.buckets[bucket as usize];
            if sum.x != point.x {
                return true;
            }
            *sum = if sum.y == point.y {
                (Projective::from(*sum) + point).into()
            } else {
                Affine::identity()
            };
            false
        });
        self.products.clear();
        let mut product = P::BaseField::ONE;
        for &(bucket, point) in &pending {
            self.products.push(product);
            product *= point.x - self.buckets[bucket as usize].x;
        }
        let mut inverse = product
            .inverse()
            .expect("chords of distinct x have a nonzero product");
        for (&(bucket, point), before) in pending.iter().zip(&self.products).rev() {
            let sum = &mut self.buckets[bucket as usize];
            let dx = point.x - sum.x;
            let slope = (point.y - sum.y) * (inverse * before);
            inverse *= dx;
            let x = slope.square() - sum.x - point.x;
            sum.y = slope * (sum.x - x) - sum.y;
            sum.x = x;
        }
        pending.clear();
        self.pending = pending;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ark_bn254::{Fr, G1Affine, G1Projective, G2Affine, G2Projective};
    use ark_ec::{AffineRepr, CurveGroup};
    use ark_ff::UniformRand;
    use ark_std::rand::SeedableRng;
    use ark_std::rand::rngs::StdRng;

    /// Scalars of every size the prover meets, and bases that repeat and negate one another
    /// so that buckets meet their own points (doublings) and their negations (cancellations),
    /// and a full-size scalar that repeats (an empty subtree's hash) on many bases.
    fn inputs<A: AffineRepr<ScalarField = Fr>>(n: usize, seed: u64) -> (Vec<A>, Vec<Fr>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let distinct: Vec<A> = (0..8)
            .map(|_| A::Group::rand(&mut rng).into_affine())
            .collect();
        let bases = (0..n)
            .map(|i| match i % 5 {
                0 => distinct[i % 8],
                1 => -distinct[i % 8].into_group().into_affine(),
                2 => A::zero(),
                _ => A::Group::rand(&mut rng).into_affine(),
            })
            .collect();
        let scalars = (0..n)
            .map(|i| match i % 7 {
                0 => Fr::from(0u64),
                1 => Fr::from(1u64),
                2 => -Fr::from(3u64),
                3 => Fr::from(u64::MAX),
                4 => -Fr::from(1u64 << 40),
                // The same full-size scalars again and again: equal digits, equal buckets.
                5 => Fr::from(7u64).pow([i as u64 % 3 + 100]),
                _ => Fr::rand(&mut rng),
            })
            .collect();
        (bases, scalars)
    }

    fn bigints(scalars: &[Fr]) -> Vec<BigInt<ark_bn254::g1::Config>> {
        scalars.iter().map(|s| s.into_bigint()).collect()
    }

    #[test]
    fn signed_digits_recompose_the_scalar() {
        let mut rng = StdRng::seed_from_u64(1);
        for c in [3, 4, 7, 13, 15, 16, 20] {
            let windows = 255usize.div_ceil(c);
            for scalar in [
                -Fr::from(1u64),
                Fr::from(0u64),
                Fr::rand(&mut rng),
                Fr::rand(&mut rng),
            ] {
                let mut digits = vec![0i32; windows];
                signed_digits(&scalar.into_bigint(), c, windows, &mut digits);
                let base = Fr::from(1u64 << c);
                let recomposed = digits
                    .iter()
                    .rev()
                    .fold(Fr::from(0u64), |acc, &d| acc * base + Fr::from(d as i64));
                assert_eq!(recomposed, scalar, "window of {c} bits");
                assert!(
                    digits
                        .iter()
                        .all(|&d| d > -(1 << (c - 1)) && d <= 1 << (c - 1))
                );
            }
        }
    }

    #[test]
    fn the_affine_buckets_agree_with_arkworks_msm_on_g1_and_g2() {
        for (n, seed) in [(0, 1), (1, 2), (40, 3), (3_000, 4)] {
            let (g1, scalars) = inputs::<G1Affine>(n, seed);
            let expected = G1Projective::msm_bigint(&g1, &bigints(&scalars));
            assert_eq!(msm(&g1, &bigints(&scalars)), expected, "G1, {n} bases");
            // Small windows: few buckets, so most additions meet a pending one in their batch.
            for c in [2, 4, 9] {
                assert_eq!(
                    affine_buckets(&g1, &bigints(&scalars), c),
                    expected,
                    "G1, c = {c}"
                );
            }
            let (g2, scalars) = inputs::<G2Affine>(n, seed);
            let expected = G2Projective::msm_bigint(&g2, &bigints(&scalars));
            assert_eq!(msm(&g2, &bigints(&scalars)), expected, "G2, {n} bases");
            assert_eq!(
                affine_buckets(&g2, &bigints(&scalars), 4),
                expected,
                "G2, c = 4"
            );
        }
    }

    #[test]
    fn slices_of_unequal_length_are_cut_to_the_shorter() {
        let (g1, scalars) = inputs::<G1Affine>(100, 9);
        let expected = G1Projective::msm_bigint(&g1[..60], &bigints(&scalars[..60]));
        assert_eq!(msm(&g1[..60], &bigints(&scalars)), expected);
        assert_eq!(msm(&g1, &bigints(&scalars[..60])), expected);
    }
}
