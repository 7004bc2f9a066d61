//! R1CS building blocks over BN254: wires that carry their value next to their linear
//! combination, booleans, range checks, selection, circomlib's Poseidon and sparse-Merkle paths
//! with the settlement trees' convention (`optio_state::smt`).
//!
//! Every gadget computes its values natively as it goes, so one synthesis serves key generation
//! (values ignored), proving and the satisfiability checks of the tests alike.

use std::cell::{Cell, RefCell};

use ark_ff::{BigInteger, Field, PrimeField, Zero};
use ark_relations::gr1cs::{ConstraintSystemRef, LinearCombination, SynthesisError, Variable};
use optio_state::poseidon::{Fr, params};

/// Result of a gadget.
pub type R<T> = Result<T, SynthesisError>;

/// A value in the circuit: a linear combination of variables and what it evaluates to.
#[derive(Clone, Debug)]
pub struct Wire {
    lc: LinearCombination<Fr>,
    /// Its value (meaningless during key generation, where no witness exists).
    pub value: Fr,
}

impl Wire {
    /// A constant.
    pub fn constant(c: Fr) -> Self {
        Self {
            lc: LinearCombination(vec![(c, Variable::One)]),
            value: c,
        }
    }

    /// The constant zero.
    pub fn zero() -> Self {
        Self {
            lc: LinearCombination::new(),
            value: Fr::zero(),
        }
    }

    /// `self + k * other`.
    pub fn plus(&self, k: Fr, other: &Wire) -> Wire {
        let mut lc = self.lc.clone();
        lc.0.extend(other.lc.0.iter().map(|(c, v)| (*c * k, *v)));
        lc.compactify();
        Wire {
            lc,
            value: self.value + k * other.value,
        }
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
            lc: LinearCombination(self.lc.0.iter().map(|(c, v)| (*c * k, *v)).collect()),
            value: self.value * k,
        }
    }

    /// `self + c`.
    pub fn add_const(&self, c: Fr) -> Wire {
        self.add(&Wire::constant(c))
    }

    /// A sum of wires.
    pub fn sum<'a>(wires: impl IntoIterator<Item = &'a Wire>) -> Wire {
        wires.into_iter().fold(Wire::zero(), |acc, w| acc.add(w))
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
    constraints: Cell<usize>,
    part: RefCell<String>,
    first_failure: RefCell<Option<String>>,
}

impl Cs {
    /// Wraps a constraint system.
    pub fn new(cs: ConstraintSystemRef<Fr>) -> Self {
        Self {
            cs,
            constraints: Cell::new(0),
            part: RefCell::new(String::new()),
            first_failure: RefCell::new(None),
        }
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
        Ok(Wire {
            lc: var.into(),
            value,
        })
    }

    /// A public input (in the order the verifier lists them).
    pub fn input(&self, value: Fr) -> R<Wire> {
        let var = self.cs.new_input_variable(|| Ok(value))?;
        Ok(Wire {
            lc: var.into(),
            value,
        })
    }

    /// `a * b = c`.
    pub fn enforce(&self, a: &Wire, b: &Wire, c: &Wire) -> R<()> {
        let n = self.constraints.get();
        self.constraints.set(n + 1);
        if a.value * b.value != c.value && self.first_failure.borrow().is_none() {
            *self.first_failure.borrow_mut() =
                Some(format!("{} (constraint {n})", self.part.borrow()));
        }
        self.cs
            .enforce_r1cs_constraint(|| a.lc.clone(), || b.lc.clone(), || c.lc.clone())
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
        let sum = bits
            .iter()
            .enumerate()
            .fold(Wire::zero(), |acc, (i, b)| acc.plus(pow2(i), b));
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
    pub fn poseidon(&self, inputs: &[Wire]) -> R<Wire> {
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
                    *s = self.sbox(s)?;
                }
            } else {
                state[0] = self.sbox(&state[0])?;
            }
            state = p
                .mds
                .iter()
                .map(|row| {
                    row.iter()
                        .zip(&state)
                        .fold(Wire::zero(), |acc, (m, s)| acc.plus(*m, s))
                })
                .collect();
        }
        Ok(state.swap_remove(0))
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
