//! R1CS building blocks over BN254: wires that carry their value next to their linear
//! combination, booleans, range checks, selection, circomlib's Poseidon and sparse-Merkle paths
//! with the settlement trees' convention (`optio_state::smt`).
//!
//! Every gadget computes its values natively as it goes, so one synthesis serves key generation
//! (values ignored), proving and the satisfiability checks of the tests alike.

use std::cell::{Cell, RefCell};
use std::sync::OnceLock;

use ark_ff::{BigInteger, Field, PrimeField, Zero};
use ark_relations::gr1cs::{
    ConstraintSystemRef, LinearCombination, Matrix, SynthesisError, Variable,
};
use optio_state::poseidon::{Fr, MAX_WIDTH, Params, params};

/// Result of a gadget.
pub type R<T> = Result<T, SynthesisError>;

/// A value in the circuit: a linear combination of variables and what it evaluates to.
#[derive(Clone, Debug)]
pub struct Wire {
    /// `None` where the synthesis computes values only (`Cs::new`: no matrices are built, so
    /// no combination is ever read); a constant always has its own.
    lc: Option<LinearCombination<Fr>>,
    /// Its value (meaningless during key generation, where no witness exists).
    pub value: Fr,
}

impl Wire {
    /// A constant.
    pub fn constant(c: Fr) -> Self {
        Self {
            lc: Some(LinearCombination(vec![(c, Variable::One)])),
            value: c,
        }
    }

    /// The constant zero.
    pub fn zero() -> Self {
        Self {
            lc: Some(LinearCombination::new()),
            value: Fr::zero(),
        }
    }

    /// `self + k * other`.
    ///
    /// Every wire's combination is compact (sorted by variable, each variable once), as
    /// arkworks' `compactify` leaves it, so the two merge in one pass into exactly what
    /// concatenating and compactifying would give (the same matrices, hence the same keys).
    pub fn plus(&self, k: Fr, other: &Wire) -> Wire {
        let value = self.value + k * other.value;
        let (Some(a), Some(b)) = (&self.lc, &other.lc) else {
            return Wire { lc: None, value };
        };
        let (a, b) = (&a.0, &b.0);
        let mut lc = Vec::with_capacity(a.len() + b.len());
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            match a[i].1.cmp(&b[j].1) {
                std::cmp::Ordering::Less => {
                    lc.push(a[i]);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    lc.push((b[j].0 * k, b[j].1));
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    lc.push((a[i].0 + b[j].0 * k, a[i].1));
                    i += 1;
                    j += 1;
                }
            }
        }
        lc.extend_from_slice(&a[i..]);
        lc.extend(b[j..].iter().map(|(c, v)| (*c * k, *v)));
        debug_assert!(
            lc.windows(2).all(|p| p[0].1 < p[1].1),
            "compact combinations"
        );
        Wire {
            lc: Some(LinearCombination(lc)),
            value,
        }
    }

    /// `sum k_i * w_i`, compactified once (what folding `plus` over the terms gives, without
    /// copying the growing combination at every term).
    pub fn linear<'a>(terms: impl IntoIterator<Item = (Fr, &'a Wire)>) -> Wire {
        let mut lc = Some(LinearCombination::new());
        let mut value = Fr::zero();
        for (k, w) in terms {
            match (&mut lc, &w.lc) {
                (Some(lc), Some(terms)) => lc.0.extend(terms.0.iter().map(|(c, v)| (*c * k, *v))),
                _ => lc = None,
            }
            value += k * w.value;
        }
        if let Some(lc) = &mut lc {
            lc.compactify();
        }
        Wire { lc, value }
    }

    /// `self + other`.
    pub fn add(&self, other: &Wire) -> Wire {
        self.plus(Fr::from(1u64), other)
    }

    /// `self - other`.
    pub fn sub(&self, other: &Wire) -> Wire {
        self.plus(-Fr::from(1u64), other)
    }

    /// `k * self`.
    pub fn scale(&self, k: Fr) -> Wire {
        Wire {
            lc: self
                .lc
                .as_ref()
                .map(|lc| LinearCombination(lc.0.iter().map(|(c, v)| (*c * k, *v)).collect())),
            value: self.value * k,
        }
    }

    /// `self + c`.
    pub fn add_const(&self, c: Fr) -> Wire {
        self.add(&Wire::constant(c))
    }

    /// `coefficients` (a `PartialRounds` row) over the partial rounds' starting state `start`,
    /// the S-box outputs so far `outputs`, and one: every variable of the start and every
    /// output so far appears, as the round-by-round mixing leaves them (`linear` keeps a term
    /// whose coefficient is zero, as the mixing does), and the constant one.
    fn over(coefficients: &[Fr], start: &[Wire], outputs: &[Wire]) -> Wire {
        let one = coefficients[coefficients.len() - 1];
        let terms = start
            .iter()
            .chain(outputs)
            .zip(coefficients)
            .map(|(w, c)| (*c, w));
        let unit = Wire::constant(Fr::from(1u64));
        Wire::linear(terms.chain(std::iter::once((one, &unit))))
    }

    /// A sum of wires.
    pub fn sum<'a>(wires: impl IntoIterator<Item = &'a Wire>) -> Wire {
        Wire::linear(wires.into_iter().map(|w| (Fr::from(1u64), w)))
    }
}

/// The matrix applied to a state (pairwise merges: the combinations share their variables).
fn mix(p: &Params, state: &[Wire]) -> Vec<Wire> {
    p.mds
        .iter()
        .map(|row| {
            row.iter()
                .zip(state)
                .fold(Wire::zero(), |acc, (m, s)| acc.plus(*m, s))
        })
        .collect()
}

/// The linear layout of Poseidon's partial rounds for one width. Each combination the
/// partial rounds feed to an S-box (the first element, after the round's constants), and each
/// element of the state they leave, is a fixed linear function of the state they start from
/// (`w` combinations), the S-box outputs before it and the constant one: its coefficients
/// over `[start_0 .. start_w, out_0 .. out_P, one]`, computed once a width.
struct PartialRounds {
    /// The S-box input of each partial round.
    sbox_inputs: Vec<Vec<Fr>>,
    /// The state after the last partial round.
    ends: Vec<Vec<Fr>>,
}

impl PartialRounds {
    fn of(width: usize) -> &'static PartialRounds {
        static ALL: [OnceLock<PartialRounds>; MAX_WIDTH + 1] =
            [const { OnceLock::new() }; MAX_WIDTH + 1];
        ALL[width].get_or_init(|| {
            let p = params(width);
            let rounds = p.partial_rounds;
            let basis = width + rounds + 1;
            let one = basis - 1;
            let unit = |k: usize| {
                let mut v = vec![Fr::zero(); basis];
                v[k] = Fr::from(1u64);
                v
            };
            let mut state: Vec<Vec<Fr>> = (0..width).map(unit).collect();
            let mut sbox_inputs = Vec::with_capacity(rounds);
            for r in 0..rounds {
                let round = p.full_rounds / 2 + r;
                for (s, c) in state
                    .iter_mut()
                    .zip(&p.ark[round * width..(round + 1) * width])
                {
                    s[one] += c;
                }
                sbox_inputs.push(std::mem::replace(&mut state[0], unit(width + r)));
                state = p
                    .mds
                    .iter()
                    .map(|row| {
                        (0..basis)
                            .map(|k| row.iter().zip(&state).map(|(m, s)| *m * s[k]).sum())
                            .collect()
                    })
                    .collect();
            }
            PartialRounds {
                sbox_inputs,
                ends: state,
            }
        })
    }
}

/// `2^n` in the field.
pub fn pow2(n: usize) -> Fr {
    Fr::from(2u64).pow([n as u64])
}

/// The constraint system with the gadgets. It also checks every constraint on the values as it
/// goes (the values of a wire are those of its linear combination by construction), so a batch
/// that breaks a rule is named at once, with the part of the circuit where it happened, without
/// building matrices.
pub struct Cs {
    cs: ConstraintSystemRef<Fr>,
    /// Whether the wires carry their combinations: only where matrices are built.
    laying_out: bool,
    constraints: Cell<usize>,
    part: RefCell<String>,
    first_failure: RefCell<Option<String>>,
    /// Each constraint's three combinations at the assignment, where a prover keeps them
    /// (`Cs::evaluating`).
    evaluated: Option<RefCell<Vec<[Fr; 3]>>>,
}

impl Cs {
    /// Wraps a constraint system.
    pub fn new(cs: ConstraintSystemRef<Fr>) -> Self {
        Self {
            laying_out: cs.should_construct_matrices(),
            cs,
            constraints: Cell::new(0),
            part: RefCell::new(String::new()),
            first_failure: RefCell::new(None),
            evaluated: None,
        }
    }

    /// Wraps a constraint system and keeps each constraint's evaluated combinations, for a
    /// prover that does not build matrices (`evaluated_rows`).
    pub fn evaluating(cs: ConstraintSystemRef<Fr>) -> Self {
        Self {
            evaluated: Some(RefCell::new(Vec::new())),
            ..Self::new(cs)
        }
    }

    /// A, B and C as matrices of evaluated rows: row `i` of each is the one term
    /// `(value, 0)`, its combination's value at the assignment on the constant one (variable
    /// 0), so that evaluating it at the assignment gives that value. That is all Groth16's
    /// witness map reads of the matrices. Empty unless `Cs::evaluating`.
    pub fn evaluated_rows(&self) -> Vec<Matrix<Fr>> {
        let evaluated = self.evaluated.as_ref().map(RefCell::borrow);
        (0..3)
            .map(|k| {
                evaluated
                    .iter()
                    .flat_map(|rows| rows.iter())
                    .map(|row| vec![(row[k], 0)])
                    .collect()
            })
            .collect()
    }

    /// Constraints so far.
    pub fn num_constraints(&self) -> usize {
        self.constraints.get()
    }

    /// Names the part of the circuit that the next constraints belong to.
    pub fn part(&self, name: String) {
        *self.part.borrow_mut() = name;
    }

    /// Where the first constraint that the values do not satisfy is, if any.
    pub fn first_failure(&self) -> Option<String> {
        self.first_failure.borrow().clone()
    }

    /// A private input.
    pub fn witness(&self, value: Fr) -> R<Wire> {
        let var = self.cs.new_witness_variable(|| Ok(value))?;
        Ok(self.wire(var, value))
    }

    /// A public input (in the order the verifier lists them).
    pub fn input(&self, value: Fr) -> R<Wire> {
        let var = self.cs.new_input_variable(|| Ok(value))?;
        Ok(self.wire(var, value))
    }

    fn wire(&self, var: Variable, value: Fr) -> Wire {
        Wire {
            lc: self.laying_out.then(|| var.into()),
            value,
        }
    }

    /// `a * b = c`.
    pub fn enforce(&self, a: &Wire, b: &Wire, c: &Wire) -> R<()> {
        let n = self.constraints.get();
        self.constraints.set(n + 1);
        if let Some(evaluated) = &self.evaluated {
            evaluated.borrow_mut().push([a.value, b.value, c.value]);
        }
        if a.value * b.value != c.value && self.first_failure.borrow().is_none() {
            *self.first_failure.borrow_mut() =
                Some(format!("{} (constraint {n})", self.part.borrow()));
        }
        // (The combinations are read only where matrices are built, and then every wire has one.)
        let lc = |w: &Wire| {
            w.lc.clone()
                .expect("a synthesis that builds matrices gives every wire its combination")
        };
        self.cs
            .enforce_r1cs_constraint(|| lc(a), || lc(b), || lc(c))
    }

    /// `a * b`, as a new variable.
    pub fn mul(&self, a: &Wire, b: &Wire) -> R<Wire> {
        let c = self.witness(a.value * b.value)?;
        self.enforce(a, b, &c)?;
        Ok(c)
    }

    /// `a == b`.
    pub fn equal(&self, a: &Wire, b: &Wire) -> R<()> {
        self.enforce(&a.sub(b), &Wire::constant(Fr::from(1u64)), &Wire::zero())
    }

    /// `a == b` where `flag` is 1; nothing where it is 0.
    pub fn equal_if(&self, flag: &Wire, a: &Wire, b: &Wire) -> R<()> {
        self.enforce(flag, &a.sub(b), &Wire::zero())
    }

    /// A private bit.
    pub fn boolean(&self, bit: bool) -> R<Wire> {
        let w = self.witness(Fr::from(u64::from(bit)))?;
        self.assert_boolean(&w)?;
        Ok(w)
    }

    /// `w` is 0 or 1.
    pub fn assert_boolean(&self, w: &Wire) -> R<()> {
        let one_minus = Wire::constant(Fr::from(1u64)).sub(w);
        self.enforce(w, &one_minus, &Wire::zero())
    }

    /// The `n` low bits of `a`, least significant first; unsatisfiable unless `0 <= a < 2^n`
    /// (as an integer below the modulus).
    pub fn bits(&self, a: &Wire, n: usize) -> R<Vec<Wire>> {
        let big = a.value.into_bigint();
        let bits = (0..n)
            .map(|i| self.boolean(big.get_bit(i)))
            .collect::<R<Vec<_>>>()?;
        let sum = Wire::linear(bits.iter().enumerate().map(|(i, b)| (pow2(i), b)));
        self.equal(&sum, a)?;
        Ok(bits)
    }

    /// `0 <= a < 2^n`.
    pub fn range(&self, a: &Wire, n: usize) -> R<()> {
        self.bits(a, n).map(|_| ())
    }

    /// `-2^(n-1) <= a < 2^(n-1)`, negatives being `p - |a|`.
    pub fn signed_range(&self, a: &Wire, n: usize) -> R<()> {
        self.range(&a.add_const(pow2(n - 1)), n)
    }

    /// `flag ? x : y` for a boolean `flag`.
    pub fn select(&self, flag: &Wire, x: &Wire, y: &Wire) -> R<Wire> {
        let d = self.mul(flag, &x.sub(y))?;
        Ok(y.add(&d))
    }

    /// 1 when `a` is not zero, else 0.
    pub fn is_nonzero(&self, a: &Wire) -> R<Wire> {
        let nonzero = !a.value.is_zero();
        let z = self.witness(Fr::from(u64::from(nonzero)))?;
        let inv = self.witness(a.value.inverse().unwrap_or_else(Fr::zero))?;
        self.enforce(a, &inv, &z)?;
        self.enforce(a, &Wire::constant(Fr::from(1u64)).sub(&z), &Wire::zero())?;
        Ok(z)
    }

    fn sbox(&self, x: &Wire) -> R<Wire> {
        let x2 = self.mul(x, x)?;
        let x4 = self.mul(&x2, &x2)?;
        self.mul(&x4, x)
    }

    /// circomlib's `Poseidon(n)` of 1 to 12 inputs: the same rounds as
    /// `optio_state::poseidon::hash`, the linear layers as free linear combinations.
    ///
    /// The partial rounds' combinations are laid out from a per-width table (`PartialRounds`)
    /// over the state they start from and their S-box outputs, instead of mixing every
    /// combination of the state through the matrix each round (most of a batch's synthesis):
    /// the same combinations term for term, so the same constraints and keys (tested against
    /// the round-by-round layout).
    pub fn poseidon(&self, inputs: &[Wire]) -> R<Wire> {
        let width = inputs.len() + 1;
        let p = params(width);
        let half = p.full_rounds / 2;
        let mut state: Vec<Wire> = std::iter::once(Wire::zero())
            .chain(inputs.iter().cloned())
            .collect();
        for round in 0..half {
            state = self.full_round(p, round, &state)?;
        }
        let table = PartialRounds::of(width);
        let mut outputs = Vec::with_capacity(p.partial_rounds);
        for coefficients in &table.sbox_inputs {
            let x = Wire::over(coefficients, &state, &outputs);
            outputs.push(self.sbox(&x)?);
        }
        state = table
            .ends
            .iter()
            .map(|coefficients| Wire::over(coefficients, &state, &outputs))
            .collect();
        for round in half + p.partial_rounds..p.full_rounds + p.partial_rounds {
            state = self.full_round(p, round, &state)?;
        }
        Ok(state.swap_remove(0))
    }

    /// One full round: constants, an S-box on every element, the matrix.
    fn full_round(&self, p: &Params, round: usize, state: &[Wire]) -> R<Vec<Wire>> {
        let width = state.len();
        let boxed = state
            .iter()
            .zip(&p.ark[round * width..(round + 1) * width])
            .map(|(s, c)| self.sbox(&s.add_const(*c)))
            .collect::<R<Vec<_>>>()?;
        Ok(mix(p, &boxed))
    }

    /// The root above `leaf` at the index whose bits (least significant first) are `bits`, in
    /// the arity-4 tree of `optio_state::smt`: per level, two bits give the slot and
    /// `siblings` the three other children in slot order. Seven constraints per level place
    /// the node among them (one-hot slot flags from the two bits), then one Poseidon(4).
    pub fn merkle_root(&self, leaf: &Wire, bits: &[Wire], siblings: &[Wire]) -> R<Wire> {
        assert!(
            bits.len().is_multiple_of(2) && siblings.len() == bits.len() / 2 * 3,
            "two bits and three siblings per level"
        );
        let mut node = leaf.clone();
        for (b, s) in bits.chunks(2).zip(siblings.chunks(3)) {
            let e3 = self.mul(&b[0], &b[1])?;
            let e1 = b[0].sub(&e3);
            let e2 = b[1].sub(&e3);
            let e0 = Wire::constant(Fr::from(1u64))
                .sub(&b[0])
                .sub(&b[1])
                .add(&e3);
            // Slot 0: (n, s0, s1, s2); 1: (s0, n, s1, s2); 2: (s0, s1, n, s2); 3: (s0, s1, s2, n).
            let c0 = s[0].add(&self.mul(&e0, &node.sub(&s[0]))?);
            let c1 = s[1]
                .add(&self.mul(&e1, &node.sub(&s[1]))?)
                .add(&self.mul(&e0, &s[0].sub(&s[1]))?);
            let c2 = s[1]
                .add(&self.mul(&e2, &node.sub(&s[1]))?)
                .add(&self.mul(&e3, &s[2].sub(&s[1]))?);
            let c3 = s[2].add(&self.mul(&e3, &node.sub(&s[2]))?);
            node = self.poseidon(&[c0, c1, c2, c3])?;
        }
        Ok(node)
    }

    /// Private inputs for a list of values.
    pub fn witnesses(&self, values: &[Fr]) -> R<Vec<Wire>> {
        values.iter().map(|v| self.witness(*v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ark_relations::gr1cs::{ConstraintSystem, Label, Matrix};

    /// A constraint system's matrices, by predicate.
    type Matrices = std::collections::BTreeMap<Label, Vec<Matrix<Fr>>>;

    /// The layout `PartialRounds` replaces: constants, S-boxes and the matrix, round by round.
    fn poseidon_round_by_round(cs: &Cs, inputs: &[Wire]) -> R<Wire> {
        let width = inputs.len() + 1;
        let p = params(width);
        let mut state: Vec<Wire> = std::iter::once(Wire::zero())
            .chain(inputs.iter().cloned())
            .collect();
        let half = p.full_rounds / 2;
        for round in 0..p.full_rounds + p.partial_rounds {
            for (s, c) in state
                .iter_mut()
                .zip(&p.ark[round * width..(round + 1) * width])
            {
                *s = s.add_const(*c);
            }
            if round < half || round >= half + p.partial_rounds {
                for s in state.iter_mut() {
                    *s = cs.sbox(s)?;
                }
            } else {
                state[0] = cs.sbox(&state[0])?;
            }
            state = mix(p, &state);
        }
        Ok(state.swap_remove(0))
    }

    /// Lays out Poseidon of `n` inputs (each a combination of two variables and a constant)
    /// with `hash`; its matrices and the hash's value.
    fn laid_out(n: usize, hash: fn(&Cs, &[Wire]) -> R<Wire>) -> (Matrices, Fr) {
        let cs = ConstraintSystem::<Fr>::new_ref();
        let gadgets = Cs::new(cs.clone());
        let inputs: Vec<Wire> = (0..n as u64)
            .map(|i| {
                let a = gadgets.witness(Fr::from(3 * i + 1)).expect("witness");
                let b = gadgets.witness(Fr::from(7 * i + 2)).expect("witness");
                a.plus(Fr::from(5u64), &b).add_const(Fr::from(i))
            })
            .collect();
        let out = hash(&gadgets, &inputs).expect("lays out");
        assert!(gadgets.first_failure().is_none());
        cs.finalize();
        (cs.to_matrices().expect("matrices"), out.value)
    }

    #[test]
    fn partial_rounds_lay_out_the_same_constraints_as_mixing_round_by_round() {
        for n in 1..=12 {
            let (table, value) = laid_out(n, Cs::poseidon);
            let (rounds, expected) = laid_out(n, poseidon_round_by_round);
            assert!(table == rounds, "Poseidon({n}): the constraints differ");
            assert_eq!(value, expected, "Poseidon({n})");
            let native: Vec<Fr> = (0..n as u64)
                .map(|i| Fr::from(3 * i + 1) + Fr::from(5u64) * Fr::from(7 * i + 2) + Fr::from(i))
                .collect();
            assert_eq!(value, optio_state::poseidon::hash(&native), "Poseidon({n})");
        }
    }
}
