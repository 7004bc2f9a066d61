//! The batch circuit: the settlement state transition of one batch, slot by slot, as
//! constraints. It proves that the state root went from `old_root` to `new_root` by exactly the
//! ops whose records hash to `commitment`, serving L1 priority operations `priority_before..
//! priority_after` in order, and that every op obeyed its rules:
//!
//! - every leaf read is a member of the tree as the batch left it so far, and every write
//!   recomputes the root along the same path;
//! - amounts are non-negative 63-bit integers, collateral and positions stay 64-bit signed
//!   integers, and an account that pays (withdrawal, transfer, fill) keeps non-negative
//!   collateral;
//! - a fill trades an active instrument at `notional = price * qty / 1e8` exactly; its fees are
//!   `ceil(notional * rate / 1e6)` with the rates of the instrument's committed spec; cash,
//!   positions and the fee pool move as `SettlementState::apply_batch` moves them;
//! - a transfer moves money between two accounts of one owner; an opened account takes an empty
//!   leaf; an L1 operation is the next in the queue;
//! - a mark slot replaces an instrument's mark and risk array (hashed in the circuit).
//!
//! Not yet in the circuit (README, "Validity proofs"): liquidations, deficit sharing, expiry and
//! settlement, listings, session keys; the margin rule against the committed risk arrays; fills
//! against the maker's and taker's signed order limits (orders are not in the posted data yet).

use ark_relations::gr1cs::{ConstraintSynthesizer, ConstraintSystemRef, SynthesisError};
use optio_state::leaf::{ACCOUNT_DEPTH, INSTRUMENT_DEPTH};
use optio_state::poseidon::{Fr, from_i64};
use optio_state::smt::empty_hashes;
use optio_types::QTY_SCALE;
use optio_types::fixed::FEE_RATE_SCALE;

use crate::gadgets::{Cs, R, Wire};
use crate::witness::{AccountStep, BatchWitness, MarkSlot, Slot, kind};

/// The circuit of one batch (its witness; key generation uses an empty batch of the same shape).
pub struct BatchCircuit {
    /// The batch.
    pub witness: BatchWitness,
}

impl ConstraintSynthesizer<Fr> for BatchCircuit {
    fn generate_constraints(self, cs: ConstraintSystemRef<Fr>) -> Result<(), SynthesisError> {
        synthesize(&Cs::new(cs), &self.witness)
    }
}

/// What the slots carry from one to the next.
struct Running {
    accounts_root: Wire,
    instruments_root: Wire,
    fee_pool: Wire,
    priority: Wire,
    commitment: Wire,
}

fn one() -> Wire {
    Wire::constant(Fr::from(1u64))
}

fn not(w: &Wire) -> Wire {
    one().sub(w)
}

/// Lays out the whole batch.
pub fn synthesize(cs: &Cs, w: &BatchWitness) -> R<()> {
    let p = &w.public;
    let old_root = cs.input(p.old_root)?;
    let new_root = cs.input(p.new_root)?;
    let commitment = cs.input(p.commitment)?;
    let priority_before = cs.input(Fr::from(p.priority_before))?;
    let priority_after = cs.input(Fr::from(p.priority_after))?;

    cs.part("the old root".into());
    let accounts_root = cs.witness(w.accounts_root)?;
    let instruments_root = cs.witness(w.instruments_root)?;
    let insurance = cs.witness(w.insurance)?;
    let fee_pool = cs.witness(w.fee_pool)?;
    let funds = cs.poseidon(&[insurance.clone(), fee_pool.clone()])?;
    let root = cs.poseidon(&[accounts_root.clone(), instruments_root.clone(), funds])?;
    cs.equal(&root, &old_root)?;

    let mut st = Running {
        accounts_root,
        instruments_root,
        fee_pool,
        priority: priority_before,
        commitment: Wire::zero(),
    };
    for (i, slot) in w.slots.iter().enumerate() {
        cs.part(format!("op slot {i} (kind {})", slot.kind));
        op_slot(cs, slot, &mut st)?;
    }
    for (i, mark) in w.marks.iter().enumerate() {
        cs.part(format!("mark slot {i}"));
        mark_slot(cs, mark, &mut st)?;
    }
    cs.part("the new root, priority count and commitment".into());
    cs.signed_range(&st.fee_pool, 64)?;
    let funds = cs.poseidon(&[insurance, st.fee_pool.clone()])?;
    let root = cs.poseidon(&[st.accounts_root, st.instruments_root, funds])?;
    cs.equal(&root, &new_root)?;
    cs.equal(&st.priority, &priority_after)?;
    cs.equal(&st.commitment, &commitment)
}

/// How a slot changes one account.
struct Update {
    /// The slot touches this account.
    enabled: Wire,
    /// It opens the account (its leaf must be empty); `owner` becomes its owner.
    open: Wire,
    owner: Wire,
    cash: Wire,
    nonce: Wire,
    /// Change of the position in the slot's instrument, applied where `position_enabled`.
    position: Wire,
    position_enabled: Wire,
    /// Collateral must end non-negative.
    pays: Wire,
}

/// One account's update in the accounts tree; returns its id and owner (before) wires.
fn account_update(
    cs: &Cs,
    step: &AccountStep,
    u: &Update,
    instrument_bits: &[Wire],
    st: &mut Running,
) -> R<(Wire, Wire)> {
    let id = cs.witness(Fr::from(step.id))?;
    let bits = cs.bits(&id, ACCOUNT_DEPTH as usize)?;
    cs.equal_if(&not(&u.enabled), &id, &Wire::zero())?;
    let owner = cs.witness(step.owner)?;
    let keys = cs.witness(step.keys_hash)?;
    let nonce = cs.witness(step.nonce)?;
    let collateral = cs.witness(step.collateral)?;
    let positions_root = cs.witness(step.positions_root)?;
    let leaf = cs.poseidon(&[
        owner.clone(),
        keys.clone(),
        nonce.clone(),
        collateral.clone(),
        positions_root.clone(),
    ])?;
    let old_leaf = cs.select(&u.open, &Wire::zero(), &leaf)?;
    let siblings = cs.witnesses(&step.siblings)?;
    let old_root = cs.merkle_root(&old_leaf, &bits, &siblings)?;
    cs.equal_if(&u.enabled, &old_root, &st.accounts_root)?;

    let position = cs.witness(step.position)?;
    let position_siblings = cs.witnesses(&step.position_siblings)?;
    let old_positions = cs.merkle_root(&position, instrument_bits, &position_siblings)?;
    cs.equal_if(&u.position_enabled, &old_positions, &positions_root)?;
    let position = position.add(&u.position);
    cs.signed_range(&position, 64)?;
    let new_positions = cs.merkle_root(&position, instrument_bits, &position_siblings)?;
    let positions_root_after = cs.select(&u.position_enabled, &new_positions, &positions_root)?;

    let collateral_after = collateral.add(&u.cash);
    cs.signed_range(&collateral_after, 64)?;
    let paid = cs.mul(&u.pays, &collateral_after)?;
    cs.range(&paid, 63)?;
    let nonce_after = nonce.add(&u.nonce);

    let empty_positions = Wire::constant(empty_hashes(INSTRUMENT_DEPTH)[INSTRUMENT_DEPTH as usize]);
    let fields = [
        cs.select(&u.open, &u.owner, &owner)?,
        cs.select(&u.open, &Wire::zero(), &keys)?,
        cs.select(&u.open, &Wire::zero(), &nonce_after)?,
        cs.select(&u.open, &Wire::zero(), &collateral_after)?,
        cs.select(&u.open, &empty_positions, &positions_root_after)?,
    ];
    let new_leaf = cs.poseidon(&fields)?;
    let new_root = cs.merkle_root(&new_leaf, &bits, &siblings)?;
    st.accounts_root = cs.select(&u.enabled, &new_root, &st.accounts_root)?;
    Ok((id, owner))
}

/// `ceil(notional * rate / FEE_RATE_SCALE)`, the fee (or, negative, rebate) of one side.
fn fee(cs: &Cs, notional: &Wire, rate: &Wire, value: Fr) -> R<Wire> {
    let fee = cs.witness(value)?;
    cs.signed_range(&fee, 64)?;
    let owed = cs.mul(notional, rate)?;
    let rem = fee.scale(Fr::from(FEE_RATE_SCALE as u64)).sub(&owed);
    cs.range(&rem, 20)?;
    cs.range(
        &Wire::constant(Fr::from(FEE_RATE_SCALE as u64 - 1)).sub(&rem),
        20,
    )?;
    Ok(fee)
}

fn op_slot(cs: &Cs, s: &Slot, st: &mut Running) -> R<()> {
    let flags = kind::SLOT_KINDS
        .iter()
        .map(|k| cs.boolean(s.kind == *k))
        .collect::<R<Vec<_>>>()?;
    let [
        open,
        deposit,
        l1_deposit,
        withdraw,
        l1_withdrawal,
        transfer,
        fill,
    ] = <[Wire; 7]>::try_from(flags.clone()).expect("seven kinds");
    let used = Wire::sum(&flags);
    cs.assert_boolean(&used)?;
    let kind_code = flags
        .iter()
        .zip(kind::SLOT_KINDS)
        .fold(Wire::zero(), |acc, (f, k)| acc.plus(Fr::from(k), f));

    let amount = cs.witness(s.amount)?;
    let price = cs.witness(s.price)?;
    let qty = cs.witness(s.qty)?;
    let taker_buys = cs.boolean(s.taker_buys)?;
    let priority = cs.witness(s.priority)?;
    let owner = cs.witness(s.owner)?;
    let instrument = cs.witness(Fr::from(s.instrument))?;
    let instrument_bits = cs.bits(&instrument, INSTRUMENT_DEPTH as usize)?;

    // A slot's record says exactly what it does: fields its kind does not use are zero.
    let moves_cash = Wire::sum([&deposit, &l1_deposit, &withdraw, &l1_withdrawal, &transfer]);
    let l1 = l1_deposit.add(&l1_withdrawal);
    cs.equal_if(&not(&moves_cash), &amount, &Wire::zero())?;
    for field in [&price, &qty, &taker_buys, &instrument] {
        cs.equal_if(&not(&fill), field, &Wire::zero())?;
    }
    cs.equal_if(&not(&l1), &priority, &Wire::zero())?;
    cs.equal_if(&not(&open), &owner, &Wire::zero())?;
    cs.range(&amount, 63)?;

    // L1 operations are served in queue order.
    cs.equal_if(&l1, &priority, &st.priority)?;
    st.priority = st.priority.add(&l1);

    // A fill: exact notional, an active instrument, fees at the committed spec's rates.
    cs.range(&price, 63)?;
    cs.range(&qty, 63)?;
    let notional = cs.witness(s.notional)?;
    cs.range(&notional, 63)?;
    let price_qty = cs.mul(&price, &qty)?;
    cs.equal(&notional.scale(Fr::from(QTY_SCALE as u64)), &price_qty)?;
    let maker_rate = cs.witness(s.maker_rate)?;
    let taker_rate = cs.witness(s.taker_rate)?;
    let spec_bytes = cs.witness(s.spec_bytes_hash)?;
    let spec_hash = cs.poseidon(&[spec_bytes, maker_rate.clone(), taker_rate.clone()])?;
    let status = cs.witness(Fr::from(s.read.status))?;
    let read_leaf = cs.poseidon(&[
        spec_hash,
        status.clone(),
        cs.witness(from_i64(s.read.mark.0))?,
        cs.witness(s.read.risk_hash)?,
        cs.witness(from_i64(s.read.settlement_price.0))?,
    ])?;
    let read_siblings = cs.witnesses(&s.read_siblings)?;
    let read_root = cs.merkle_root(&read_leaf, &instrument_bits, &read_siblings)?;
    cs.equal_if(&fill, &read_root, &st.instruments_root)?;
    cs.equal_if(&fill, &status, &one())?;
    let maker_fee = fee(cs, &notional, &maker_rate, s.maker_fee)?;
    let taker_fee = fee(cs, &notional, &taker_rate, s.taker_fee)?;
    let sign = taker_buys.scale(Fr::from(2u64)).add_const(-Fr::from(1u64));
    let signed_notional = cs.mul(&sign, &notional)?;
    let signed_qty = cs.mul(&sign, &qty)?;
    let taker_moves = cs.mul(&fill, &signed_qty)?;

    // The first account: opened, credited, debited, transfer sender or fill maker.
    let cash_sign = Wire::sum([&deposit, &l1_deposit])
        .sub(&withdraw)
        .sub(&l1_withdrawal)
        .sub(&transfer);
    let a_cash = cs
        .mul(&cash_sign, &amount)?
        .add(&cs.mul(&fill, &signed_notional.sub(&maker_fee))?);
    let forced_out = cs.mul(&l1_withdrawal, &cs.is_nonzero(&amount)?)?;
    let a = Update {
        enabled: used.clone(),
        open,
        owner: owner.clone(),
        cash: a_cash,
        nonce: withdraw.add(&forced_out),
        position: taker_moves.scale(-Fr::from(1u64)),
        position_enabled: fill.clone(),
        pays: Wire::sum([&withdraw, &l1_withdrawal, &transfer, &fill]),
    };
    let (a_id, a_owner) = account_update(cs, &s.a, &a, &instrument_bits, st)?;

    // The second: transfer receiver or fill taker.
    let b_cash = cs.mul(&transfer, &amount)?.add(&cs.mul(
        &fill,
        &signed_notional.scale(-Fr::from(1u64)).sub(&taker_fee),
    )?);
    let b = Update {
        enabled: transfer.add(&fill),
        open: Wire::zero(),
        owner: Wire::zero(),
        cash: b_cash,
        nonce: Wire::zero(),
        position: taker_moves,
        position_enabled: fill.clone(),
        pays: fill.clone(),
    };
    let (b_id, b_owner) = account_update(cs, &s.b, &b, &instrument_bits, st)?;
    cs.equal_if(&transfer, &a_owner, &b_owner)?;

    st.fee_pool = st.fee_pool.add(&cs.mul(&fill, &maker_fee.add(&taker_fee))?);
    let record = [
        kind_code, a_id, b_id, instrument, amount, price, qty, taker_buys, priority, owner,
    ];
    absorb(cs, st, record)
}

fn absorb(cs: &Cs, st: &mut Running, record: [Wire; 10]) -> R<()> {
    let mut inputs = vec![st.commitment.clone()];
    inputs.extend(record);
    st.commitment = cs.poseidon(&inputs)?;
    Ok(())
}

fn mark_slot(cs: &Cs, m: &MarkSlot, st: &mut Running) -> R<()> {
    let enabled = cs.boolean(m.enabled)?;
    let instrument = cs.witness(Fr::from(m.instrument))?;
    let bits = cs.bits(&instrument, INSTRUMENT_DEPTH as usize)?;
    cs.equal_if(&not(&enabled), &instrument, &Wire::zero())?;
    let spec_hash = cs.witness(m.before.spec_hash)?;
    let status = cs.witness(Fr::from(m.before.status))?;
    let settlement = cs.witness(from_i64(m.before.settlement_price.0))?;
    let old_leaf = cs.poseidon(&[
        spec_hash.clone(),
        status.clone(),
        cs.witness(from_i64(m.before.mark.0))?,
        cs.witness(m.before.risk_hash)?,
        settlement.clone(),
    ])?;
    let siblings = cs.witnesses(&m.siblings)?;
    let old_root = cs.merkle_root(&old_leaf, &bits, &siblings)?;
    cs.equal_if(&enabled, &old_root, &st.instruments_root)?;

    let mark = cs.witness(m.mark)?;
    cs.signed_range(&mark, 64)?;
    cs.equal_if(&not(&enabled), &mark, &Wire::zero())?;
    // The risk array's hash, over its first `chunks` chunks of three.
    let values = cs.witnesses(&m.risk)?;
    let mut risk_hash = Wire::zero();
    let mut previous = enabled.clone();
    for (k, chunk) in values.chunks(3).enumerate() {
        let active = cs.boolean(k < m.chunks)?;
        // Active chunks come first, and only in a used slot.
        cs.equal_if(&active, &previous, &one())?;
        let next = cs.poseidon(&[
            risk_hash.clone(),
            chunk[0].clone(),
            chunk[1].clone(),
            chunk[2].clone(),
        ])?;
        risk_hash = cs.select(&active, &next, &risk_hash)?;
        previous = active;
    }
    let new_leaf = cs.poseidon(&[
        spec_hash,
        status,
        mark.clone(),
        risk_hash.clone(),
        settlement,
    ])?;
    let new_root = cs.merkle_root(&new_leaf, &bits, &siblings)?;
    st.instruments_root = cs.select(&enabled, &new_root, &st.instruments_root)?;
    let record = [
        enabled.scale(Fr::from(kind::MARK)),
        Wire::zero(),
        Wire::zero(),
        instrument,
        Wire::zero(),
        mark,
        Wire::zero(),
        Wire::zero(),
        Wire::zero(),
        risk_hash,
    ];
    absorb(cs, st, record)
}
