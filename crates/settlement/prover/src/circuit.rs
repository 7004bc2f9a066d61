//! The batch circuit: the settlement state transition of one batch, slot by slot, as
//! constraints. It proves that the state root went from `old_root` to `new_root` by exactly the
//! ops whose records hash to `commitment`, serving L1 priority operations `priority_before..
//! priority_after` in order, and that every op obeyed its rules:
//!
//! - the accounts, positions and instruments the batch touches are loaded into registers once:
//!   each register's leaf is a member of its tree, the ops work on the registers (an op names
//!   its registers with one-hot selectors, which must point at registers in use, and a fill's
//!   position registers must belong to its accounts and instrument), and the registers are
//!   written back at the end, positions then accounts, each read and rewritten along one path
//!   against the root as the earlier write-backs left it; registers in use come first with
//!   strictly increasing keys, so no account or position is loaded twice;
//! - amounts are non-negative 63-bit integers, collateral and positions stay 64-bit signed
//!   integers; money that leaves an account at its holder's request (withdrawal, transfer)
//!   leaves it covered by the stress rule against the committed marks and
//!   risk arrays (`collateral + sum_i q_i * (mark_i + RA_i[s]) / 1e8 >= 0` for every scenario
//!   and the no-move one, over every position it holds: a margin slot per such op; the leaf
//!   counts the account's positions, so none can be left out), and a loss share leaves its
//!   collateral non-negative (a fill may leave it negative: a leveraged perpetual long holds
//!   negative cash against its position);
//! - a fill trades an active instrument at `notional = price * qty / 1e8` exactly; its fees are
//!   `ceil(notional * rate / 1e6)` with the rates of the instrument's committed spec; cash,
//!   positions and the fee pool move as `SettlementState::apply_batch` moves them;
//! - a liquidation moves a position between the liquidated account and its counterparty at its
//!   price (exact notional), inside the stress range of the instrument's committed mark and
//!   risk array on the liquidated account's side (a long sold at no less than
//!   `mark + min(0, min_s RA[s])`, a short bought back at no more than `mark + max(0, max_s
//!   RA[s])`) and within the proven schedule's discount of a contract's value at the committed
//!   index from the mark, from its account's auction's start (its leaf's `since`, not 0) to the
//!   committed oracle time (`optio_types::within_liquidation_schedule`), only reducing the
//!   liquidated account's position (never opening, growing or flipping one), the liquidated
//!   account paying its fee to insurance, at most the fee at `MAX_LIQUIDATION_FEE_BPS` of the
//!   contracts' value at the index committed with the instrument's mark, clamped to its cap
//!   (`optio_types::max_liquidation_fee`);
//! - an auction's start (kind 29) proves its account could default and is below maintenance
//!   at the committed marks (as a liquidation's account, with a margin slot when the shape
//!   prices its positions) and sets its leaf's `since` to the committed oracle time;
//! - an auction's end (kind 30) needs `since != 0` and its account covering what its shorts
//!   can owe at worst (the op slot's `by_cover`) or meeting its mode's maintenance at the
//!   committed marks (a cured margin slot), unless it held more positions than the shape
//!   prices, and sets `since` to 0; while `since` is not 0 the account is frozen: it is no
//!   fill's maker or taker, no withdrawal's or transfer's source, and its margin mode does not
//!   change (the account slots read the `since` the op slots leave);
//! - a deficit cover credits what it takes from insurance and the fee pool (both left
//!   non-negative) and exactly the loss shares charged since the previous cover, in the
//!   engine's order (the fee pool only once insurance is spent, shares only once both are), and
//!   leaves the account at or below zero, which must hold no position: one whose leaf held
//!   none at the batch's start and that took none in it before the cover (it filled nothing:
//!   no fill, liquidation or close gave it a position) holds none; one that held some at the
//!   start takes a flat margin slot, every position it held in a register; every share is
//!   claimed;
//! - a transfer moves money between two accounts of one owner; an opened account takes an empty
//!   leaf; a withdrawal names the account's owner in its words, whom the contract pays; a forced
//!   one names who asked on L1 (the contract checks its queue): someone else's moves nothing,
//!   and the owner's takes exactly what leaves the account covering what its shorts can owe at
//!   worst, less a micro-USDC a position, or nothing (`optio_types::forced_withdrawal` of the
//!   collateral, the liability and the leaf's count: all of a flat account's collateral; no
//!   mark and no margin slot, so whatever the account holds);
//!   an L1 operation is the next in the queue;
//! - a session key changes the account's key list as the ledger does (expired keys dropped,
//!   the key registered or revoked, the list sorted with no repeats, its hash in the leaf); a
//!   margin mode's change sets the mode the leaf's third field carries between the count and
//!   the liability (both in the account slots, after the op slots);
//! - a listing takes an empty instrument leaf (status listed, the listed spec's hash), an
//!   activation moves it from listed to active, an expiry from active to expired; listings and
//!   activations apply before the op slots, expiries after;
//! - an expired instrument settles at the value its committed spec gives the settlement price,
//!   each holder paid for the quantity settled (all of its position or a part of the same
//!   sign: an expiry settles in balanced parts), payouts and the insurance credit summing to zero
//!   (the credit at most a micro-USDC per holder paid), its mark set to that value and its risk
//!   array to none, so a holder the settlement leaves out keeps the value, and a settled
//!   instrument settles such holders later at the same price;
//! - every account a fill named, and every liquidation's counterparty (the account that took
//!   the liquidated position), ends the batch solvent at the committed marks: `collateral *
//!   1e8 + sum_i q_i * mark_i >= 0` over every position it holds after the batch, and no
//!   deficit cover of it follows its fill in the batch. One that ends the batch in `Portfolio`
//!   or `Standard` is priced (from the registers, or price windows open the committed marks of
//!   aligned runs of `2^solvency_bits` instrument ids and solvency windows the account's
//!   positions in each run, as many nonzero as its leaf counts); one in `WorstCase` is not:
//!   its cover (next) and every committed mark lying in `[0, W]` imply it;
//! - such an account, or one whose margin mode the batch changed, that ends the batch in
//!   `WorstCase` covers what its shorts can owe at worst: `collateral * 1e8 >= liability`, the
//!   engine's invariant for the mode (its requirement rounds each short up);
//! - a fill's maker or taker that ends the batch in `Portfolio` or `Standard` meets its mode's
//!   maintenance rule after it, at the committed marks, indices and risk arrays, every position
//!   it holds in a register (an end margin slot), which the engine's maintenance at the fill (a
//!   maker's) or initial margin (a taker's) implies. In `Portfolio`: `collateral * 1e8 * 1e4 +
//!   sum_i q_i * (mark_i * 1e4 + RA_i[s] * PROVEN_PM_MAINTENANCE_BPS)` covers its short options'
//!   floor (`ceil(rate * weight * sum short_i * index_i * multiplier_i / 1e12)`, at each
//!   option's committed index) in every scenario and the no-move one. In `Standard`:
//!   `collateral * 1e8 * 1e4 + sum_perpetuals (q_i * 1e4 - |q_i| *
//!   PROVEN_STANDARD_PERP_MAINTENANCE_BPS) * mark_i - sum_options short_i * mark_i * 1e4 * (2,
//!   or 1 once settled)` covers `ceil(STANDARD_SHORT_OPTION_MAINTENANCE_BPS * 1e4 * sum short_i
//!   * index_i * multiplier_i / 1e12)`;
//! - a mark window replaces the mark (in `[0, W]`, W the worst-case payoff per contract of
//!   the spec the leaf commits, opened), index (positive, below 2^63) and risk array (the index
//!   and array hashed in the circuit) of the instruments it marks (none settled) among an aligned run of `2^mark_window_bits` ids: the run's subtree is rebuilt
//!   from its leaves before and after, under one path, so the marks share the path above it;
//!   windows in use come first, by index, so the marks enter the commitment by id;
//! - each mark posts its update's publication time, and the funds leaf commits the latest time
//!   among the marks committed (the old root's, or a later mark's: the oracle's signed clock,
//!   which L1 judges with each mark's signature).
//!
//! Not in the circuit (README, "Validity proofs"): `Standard`'s initial margin (piecewise in the
//! option's moneyness; its maintenance, which initial margin implies, is proven); fills against
//! the maker's and taker's signed order limits (the authorization challenge judges those on
//! L1).

use ark_ff::{BigInteger, PrimeField};
use ark_relations::gr1cs::{ConstraintSynthesizer, ConstraintSystemRef, SynthesisError};
use optio_state::leaf::{
    ACCOUNT_DEPTH, INSTRUMENT_DEPTH, LIABILITY_AT, LIABILITY_BITS, MODE_AT, RISK_CHUNK, spec,
    status,
};
use optio_state::ledger::{ROUNDING_PER_POSITION, ROUNDING_PER_SHORT};
use optio_state::poseidon::{Fr, from_i64};
use optio_state::smt::empty_root;
use optio_types::fixed::FEE_RATE_SCALE;
use optio_types::{
    MAX_LIQUIDATION_DISCOUNT_BPS, MAX_LIQUIDATION_FEE_BPS, MarginMode,
    PROVEN_LIQUIDATION_DURATION_MS, PROVEN_LIQUIDATION_START_BPS, PROVEN_PM_MAINTENANCE_BPS,
    PROVEN_PM_SHORT_OPTION_FLOOR_BPS, PROVEN_STANDARD_PERP_MAINTENANCE_BPS, QTY_SCALE,
    STANDARD_SHORT_OPTION_MAINTENANCE_BPS,
};

use optio_state::blob::bits as at;

use crate::gadgets::{Cs, R, Wire, pow2};
use crate::witness::{
    BatchWitness, InstrumentOp, KeySlot, MarkEntry, MarkWindow, SPEC_CHUNKS, SettleSlot, Slot,
    SpecOpening, kind,
};

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

fn one() -> Wire {
    Wire::constant(Fr::from(1u64))
}

fn not(w: &Wire) -> Wire {
    one().sub(w)
}

/// An account register as the ops leave it.
struct AccountWires {
    enabled: Wire,
    opened: Wire,
    id: Wire,
    id_bits: Vec<Wire>,
    owner0: Wire,
    /// The margin mode's code before (in the leaf's third field, above the count).
    mode0: Wire,
    /// The same as the account slots leave it.
    mode: Wire,
    keys0: Wire,
    nonce0: Wire,
    /// Open positions before (the leaf's third field is `nonce + 2^64 * open positions +
    /// 2^96 * mode + 2^98 * liability`).
    count0: Wire,
    /// What its shorts can owe at worst before (`sum |q| * W`, the leaf's liability).
    liability0: Wire,
    /// The same as the ops leave it.
    liability: Wire,
    /// Money leaves it in the batch: every position it held before is in a register.
    margined: Wire,
    collateral0: Wire,
    positions_root0: Wire,
    owner: Wire,
    keys: Wire,
    nonce: Wire,
    collateral: Wire,
    positions_root: Wire,
    /// The committed oracle time its latest auction started at, before the batch and as the
    /// ops leave it (the leaf's sixth field).
    since0: Wire,
    since: Wire,
    /// OPEN ops that named it.
    opens: Wire,
    /// Times an op selected it (must be 0 unless enabled).
    used: Wire,
    /// Fills that named it so far (it must end the batch solvent).
    filled: Wire,
    /// Fills that named it as maker or taker (in `Portfolio` at the end it must meet the proven
    /// maintenance rule).
    traded: Wire,
}

/// A position register.
struct PositionWires {
    enabled: Wire,
    account: Wire,
    account_sel: Vec<Wire>,
    instrument: Wire,
    instrument_bits: Vec<Wire>,
    qty0: Wire,
    /// 1 when it held a position before the batch.
    nz0: Wire,
    qty: Wire,
    /// The short part of `qty` (`max(-qty, 0)`), as the ops leave it.
    short: Wire,
    used: Wire,
}

/// An instrument register (read only).
struct InstrumentWires {
    id: Wire,
    maker_rate: Wire,
    taker_rate: Wire,
    status: Wire,
    enabled: Wire,
    used: Wire,
    /// Its committed mark and risk array (zero-padded to the shape's capacity).
    mark: Wire,
    risk: Vec<Wire>,
    /// The ends of its stress range, which bound its liquidations' prices.
    low: Wire,
    high: Wire,
    /// `floor(min(index, cap) * multiplier / 1e8)`: a contract's value at its committed index
    /// clamped to the cap (`optio_types::liquidation_reference`; 0 unmarked or settled), which
    /// bounds its liquidations' fees and discounts.
    fee_reference: Wire,
    /// Its worst-case payoff per contract, which fully collateralizes a short.
    max_payoff: Wire,
    /// `index * multiplier` for an option (its committed index: none once settled), 0 for a
    /// perpetual: a short contract's floor before the rate and weight.
    floor_unit: Wire,
    /// The `Standard` maintenance rule's terms per contract before the index's: times a
    /// position's quantity, `mark * (1e4 - PROVEN_STANDARD_PERP_MAINTENANCE_BPS)` for a
    /// perpetual (0 for an option); less, times its short part, `2 *
    /// PROVEN_STANDARD_PERP_MAINTENANCE_BPS * mark` for a perpetual and `mark * 1e4 * (2, or 1
    /// once settled)` for an option.
    standard_q: Wire,
    standard_short: Wire,
}

/// An account register's margin mode after the batch, as flags (`Standard` is neither).
struct Modes {
    worst_case: Wire,
    portfolio: Wire,
}

/// One op slot's account and its positions, for the margin slots.
struct Snapshot {
    /// The account a margin slot prices at this op: the op's account (a), or a liquidation's
    /// liquidated account (b).
    id: Wire,
    /// Its collateral: a's after the op, or b's before the liquidation.
    collateral: Wire,
    /// Money left account a at its holder's request (a withdrawal, a transfer).
    out: Wire,
    /// A deficit cover of account a: it must hold no position.
    covered: Wire,
    /// A liquidation of account b whose positions the proof prices: it must be below
    /// maintenance before the op. Or an auction's start, of a.
    liquidated: Wire,
    /// An auction's end, of a, by a cured slot: a meets its maintenance before the op.
    ended: Wire,
    /// A liquidation's fee, and the change its move (before the fee) makes to b's equity at
    /// the committed mark, in 1e-8 micro-USDC (`q_b's change * mark - notional * 1e8` of b's
    /// side): the fee is at most b's equity after the move.
    fee: Wire,
    moved_value: Wire,
    /// Every position register's quantity and short part before the op's trade (a
    /// withdrawal, a transfer or a cover moves no position).
    qty: Vec<Wire>,
    short: Vec<Wire>,
}

/// What the slots carry from one to the next.
struct Running {
    accounts: Vec<AccountWires>,
    /// The writable position registers, then the read-only ones.
    positions: Vec<PositionWires>,
    /// How many are writable: the op and settlement slots select among these only, so a
    /// read-only register ends the batch as it started.
    writable: usize,
    instruments: Vec<InstrumentWires>,
    fee_pool: Wire,
    insurance: Wire,
    priority: Wire,
    commitment: Wire,
    /// The posted words so far, evaluated.
    poly: Poly,
    /// Loss shares charged since the last deficit cover.
    shared: Wire,
    /// The id the next opened account takes (how many were opened before it).
    next_account: Wire,
    /// The committed oracle time the op slots read (the old root's: a batch's marks apply
    /// after its ops).
    oracle_ms: Wire,
    /// After each op slot.
    snapshots: Vec<Snapshot>,
    /// The most positions a liquidated account may hold at the batch's start for its
    /// liquidation to be priced (`FillBudget::liquidation_priced`): one holding more is not.
    liquidation_priced: u64,
}

/// The running evaluation `y = z^n + sum_i w_i z^(n-1-i)` of the words the blob posts for the
/// ops so far (`optio_state::blob::binding`), Horner from 1: one constraint a word, and one to
/// skip an op that is not there.
struct Poly {
    z: Wire,
    y: Wire,
}

impl Poly {
    /// Appends `words` when `present`.
    fn push(&mut self, cs: &Cs, present: &Wire, words: &[Wire]) -> R<()> {
        let mut y = self.y.clone();
        for w in words {
            y = cs.mul(&y, &self.z)?.add(w);
        }
        self.y = cs.select(present, &y, &self.y)?;
        Ok(())
    }
}

/// `sum_k field_k * 2^shift_k`: fields packed into one word (linear, so free; every field is
/// range-checked where the circuit makes it, so the packing is injective).
fn pack(fields: &[(&Wire, usize)]) -> Wire {
    Wire::linear(fields.iter().map(|(f, shift)| (pow2(*shift), *f)))
}

/// The byte of eight bits, low first (linear).
fn byte_of(bits: &[Wire]) -> Wire {
    Wire::linear(bits.iter().enumerate().map(|(i, bit)| (pow2(i), bit)))
}

/// One-hot selector over `n` registers: `index` or none; its sum is returned too.
fn selector(cs: &Cs, n: usize, index: Option<usize>) -> R<(Vec<Wire>, Wire)> {
    let sel = (0..n)
        .map(|k| cs.boolean(index == Some(k)))
        .collect::<R<Vec<_>>>()?;
    let sum = Wire::sum(&sel);
    Ok((sel, sum))
}

/// The index a one-hot selector points at (0 when it points at none): `sum_k k * sel_k`, free.
fn index_of(sel: &[Wire]) -> Wire {
    Wire::linear(sel.iter().enumerate().map(|(k, s)| (Fr::from(k as u64), s)))
}

/// The risk value of scenario `s` of an array, or 0 (the no-move scenario): a selector that
/// points at one scenario or none.
fn scenario_value(cs: &Cs, risk: &[Wire], s: Option<usize>) -> R<Wire> {
    let (sel, sum) = selector(cs, risk.len(), s)?;
    cs.assert_boolean(&sum)?;
    pick(cs, &sel, risk.iter().cloned())
}

/// `sum_k sel_k * values_k`.
fn pick(cs: &Cs, sel: &[Wire], values: impl Iterator<Item = Wire>) -> R<Wire> {
    let mut out = Wire::zero();
    for (s, v) in sel.iter().zip(values) {
        out = out.add(&cs.mul(s, &v)?);
    }
    Ok(out)
}

/// Registers in use come first: `enabled[k+1] <= enabled[k]`; and their keys strictly increase.
fn ordered(cs: &Cs, enabled: &[Wire], keys: &[Wire], bits: usize) -> R<()> {
    for k in 1..enabled.len() {
        cs.equal_if(&enabled[k], &enabled[k - 1], &one())?;
        let gap = cs.mul(
            &enabled[k],
            &keys[k].sub(&keys[k - 1]).add_const(-Fr::from(1u64)),
        )?;
        cs.range(&gap, bits)?;
    }
    Ok(())
}

/// No enabled key at or after `split` equals an enabled one before it: for each later one, the
/// product of its differences from the earlier ones in use (1 for one not in use) has an
/// inverse. Two constraints a pair.
fn distinct(cs: &Cs, enabled: &[Wire], keys: &[Wire], split: usize) -> R<()> {
    for (e, key) in enabled[split..].iter().zip(&keys[split..]) {
        let mut product = one();
        for (f, earlier) in enabled[..split].iter().zip(&keys[..split]) {
            // f ? key - earlier : 1
            let term = cs.mul(f, &key.sub(earlier).add_const(-Fr::from(1u64)))?;
            product = cs.mul(&product, &term.add_const(Fr::from(1u64)))?;
        }
        // (0 for a register not in use, which need not differ.)
        let inverse = ark_ff::Field::inverse(&product.value).unwrap_or_default();
        let inverse = cs.witness(inverse * e.value)?;
        cs.enforce(&product, &inverse, e)?;
    }
    Ok(())
}

/// Lays out the whole batch.
pub fn synthesize(cs: &Cs, w: &BatchWitness) -> R<()> {
    let p = &w.public;
    let old_root = cs.input(p.old_root)?;
    let new_root = cs.input(p.new_root)?;
    let commitment = cs.input(p.commitment)?;
    let priority_before = cs.input(Fr::from(p.priority_before))?;
    let priority_after = cs.input(Fr::from(p.priority_after))?;
    let z = cs.input(p.z)?;
    let y = cs.input(p.y)?;
    // (Priority ids are packed in 64 bits.)
    cs.range(&priority_before, 62)?;
    let mut poly = Poly { z, y: one() };

    cs.part("the old root".into());
    let mut accounts_root = cs.witness(w.accounts_root)?;
    let instruments_root = cs.witness(w.instruments_root)?;
    let insurance = cs.witness(w.insurance)?;
    let fee_pool = cs.witness(w.fee_pool)?;
    // How many accounts were opened and instruments listed (the next ids), and the committed
    // oracle time: 32, 32 and 64 bits, so that the funds leaf's third field splits one way.
    let next_account = cs.witness(Fr::from(w.counts.accounts))?;
    let mut next_instrument = cs.witness(Fr::from(w.counts.instruments))?;
    let mut oracle_ms = cs.witness(Fr::from(w.counts.oracle_ms))?;
    cs.range(&next_account, 32)?;
    cs.range(&next_instrument, 32)?;
    cs.range(&oracle_ms, 64)?;
    let counts = |accounts: &Wire, instruments: &Wire, oracle: &Wire| {
        accounts
            .add(&instruments.scale(pow2(32)))
            .add(&oracle.scale(pow2(64)))
    };
    let funds = cs.poseidon(&[
        insurance.clone(),
        fee_pool.clone(),
        counts(&next_account, &next_instrument, &oracle_ms),
    ])?;
    let root = cs.poseidon(&[accounts_root.clone(), instruments_root.clone(), funds])?;
    cs.equal(&root, &old_root)?;

    let mut instruments_root = instruments_root;
    let mut commitment_so_far = Wire::zero();
    for (i, o) in w.listings.iter().enumerate() {
        cs.part(format!("listing slot {i}"));
        instrument_op(
            cs,
            o,
            &mut instruments_root,
            &mut next_instrument,
            &mut commitment_so_far,
            &mut poly,
        )?;
    }

    cs.part("the registers".into());
    let mut accounts = Vec::with_capacity(w.accounts.len());
    for r in &w.accounts {
        let id = cs.witness(Fr::from(r.id))?;
        let id_bits = cs.bits(&id, ACCOUNT_DEPTH as usize)?;
        let (owner0, keys0, nonce0, collateral0, positions_root0) = (
            cs.witness(r.owner)?,
            cs.witness(r.keys_hash)?,
            cs.witness(r.nonce)?,
            cs.witness(r.collateral)?,
            cs.witness(r.positions_root)?,
        );
        let since0 = cs.witness(Fr::from(r.since))?;
        // The leaf's third field splits one way only: nonce, count, the mode's code (two bits,
        // not both) and the liability.
        let (mode0, _, _) = mode_code(cs, r.mode.code())?;
        let count0 = cs.witness(Fr::from(r.open_positions))?;
        let liability0 = cs.witness(r.liability)?;
        cs.range(&nonce0, 64)?;
        cs.range(&count0, 32)?;
        cs.range(&liability0, LIABILITY_BITS)?;
        accounts.push(AccountWires {
            enabled: cs.boolean(r.enabled)?,
            opened: cs.boolean(r.opened)?,
            id,
            id_bits,
            owner: owner0.clone(),
            keys: keys0.clone(),
            nonce: nonce0.clone(),
            collateral: collateral0.clone(),
            positions_root: positions_root0.clone(),
            owner0,
            mode: mode0.clone(),
            mode0,
            keys0,
            nonce0,
            count0,
            liability: liability0.clone(),
            liability0,
            margined: cs.boolean(r.margined)?,
            collateral0,
            positions_root0,
            since: since0.clone(),
            since0,
            opens: Wire::zero(),
            used: Wire::zero(),
            filled: Wire::zero(),
            traded: Wire::zero(),
        });
    }
    let enabled: Vec<Wire> = accounts.iter().map(|a| a.enabled.clone()).collect();
    let keys: Vec<Wire> = accounts.iter().map(|a| a.id.clone()).collect();
    ordered(cs, &enabled, &keys, ACCOUNT_DEPTH as usize)?;

    let mut positions = Vec::with_capacity(w.positions.len());
    for q in &w.positions {
        let enabled = cs.boolean(q.enabled)?;
        let (account_sel, sum) = selector(cs, accounts.len(), q.enabled.then_some(q.account))?;
        cs.equal(&sum, &enabled)?;
        // Its account register must be in use too.
        for (a, s) in accounts.iter_mut().zip(&account_sel) {
            a.used = a.used.add(s);
        }
        let account = index_of(&account_sel);
        let instrument = cs.witness(Fr::from(q.instrument))?;
        let instrument_bits = cs.bits(&instrument, INSTRUMENT_DEPTH as usize)?;
        let qty0 = cs.witness(q.qty)?;
        let nz0 = cs.is_nonzero(&qty0)?;
        let short = short_part(cs, &qty0)?;
        positions.push(PositionWires {
            short,
            nz0,
            enabled,
            account,
            account_sel,
            instrument,
            instrument_bits,
            qty: qty0.clone(),
            qty0,
            used: Wire::zero(),
        });
    }
    let enabled: Vec<Wire> = positions.iter().map(|q| q.enabled.clone()).collect();
    let keys: Vec<Wire> = positions
        .iter()
        .map(|q| {
            q.account
                .scale(pow2(INSTRUMENT_DEPTH as usize))
                .add(&q.instrument)
        })
        .collect();
    // Each group in strictly increasing key order, and no read-only register's key any
    // writable one's: no position is loaded twice.
    let writable = w.shape.positions.min(positions.len());
    ordered(cs, &enabled[..writable], &keys[..writable], 40)?;
    ordered(cs, &enabled[writable..], &keys[writable..], 40)?;
    distinct(cs, &enabled, &keys, writable)?;

    let mut instruments = Vec::with_capacity(w.instruments.len());
    for i in &w.instruments {
        let enabled = cs.boolean(i.enabled)?;
        let id = cs.witness(Fr::from(i.id))?;
        let bits = cs.bits(&id, INSTRUMENT_DEPTH as usize)?;
        let (spec_hash, spec) = spec_wires(cs, &i.spec)?;
        let status = cs.witness(Fr::from(i.leaf.status))?;
        let mark = cs.witness(from_i64(i.leaf.mark.0))?;
        let risk_hash = cs.witness(i.leaf.risk_hash)?;
        let leaf = cs.poseidon(&[
            spec_hash,
            status.clone(),
            mark.clone(),
            risk_hash.clone(),
            cs.witness(from_i64(i.leaf.settlement_price.0))?,
        ])?;
        // The committed index and risk array: the first `chunks` chunks of the index followed by
        // the array hash to the leaf's risk hash, the rest are zero (the values were
        // range-checked when committed).
        let index = cs.witness(i.index)?;
        let risk = cs.witnesses(&i.risk)?;
        let values: Vec<Wire> = if w.shape.risk_chunks == 0 {
            cs.equal(&index, &Wire::zero())?;
            Vec::new()
        } else {
            std::iter::once(index.clone())
                .chain(risk.iter().cloned())
                .collect()
        };
        let mut active = Vec::new();
        let mut previous = one();
        for (k, chunk) in values.chunks(RISK_CHUNK).enumerate() {
            let a = cs.boolean(k < i.chunks)?;
            cs.equal_if(&a, &previous, &one())?;
            for v in chunk {
                cs.equal_if(&not(&a), v, &Wire::zero())?;
            }
            previous = a.clone();
            active.push(a);
        }
        cs.equal_if(&enabled, &risk_hash_of(cs, &values, &active)?, &risk_hash)?;
        let siblings = cs.witnesses(&i.siblings)?;
        let root = cs.merkle_root(&leaf, &bits, &siblings)?;
        cs.equal_if(&enabled, &root, &instruments_root)?;
        // The ends of its stress range (`optio_types::stress_range`): the mark plus one
        // scenario's value each, or the mark alone (the no-move scenario). Any scenario will
        // do: a price beyond its value is beyond the range's end too.
        let low = mark.add(&scenario_value(cs, &risk, i.low)?);
        let high = mark.add(&scenario_value(cs, &risk, i.high)?);
        let fee_reference = fee_reference(cs, &clamped(cs, &index, &spec.cap)?, &spec)?;
        let max_payoff = max_payoff(cs, &spec)?;
        let option = spec.is_call.add(&spec.is_put);
        let floor_unit = cs.mul(&cs.mul(&index, &spec.multiplier)?, &option)?;
        let perp_bps = Fr::from(u64::from(PROVEN_STANDARD_PERP_MAINTENANCE_BPS));
        let perp_mark = cs.mul(&mark, &not(&option))?;
        let option_mark = mark.sub(&perp_mark);
        let live = cs.is_nonzero(&status.sub(&Wire::constant(Fr::from(status::SETTLED))))?;
        let standard_q = perp_mark.scale(Fr::from(BPS) - perp_bps);
        let standard_short = perp_mark.scale(perp_bps + perp_bps).add(
            &option_mark
                .add(&cs.mul(&option_mark, &live)?)
                .scale(Fr::from(BPS)),
        );
        instruments.push(InstrumentWires {
            id,
            maker_rate: spec.maker_rate,
            taker_rate: spec.taker_rate,
            fee_reference,
            max_payoff,
            floor_unit,
            standard_q,
            standard_short,
            status,
            enabled,
            used: Wire::zero(),
            mark,
            risk,
            low,
            high,
        });
    }

    let mut st = Running {
        accounts,
        positions,
        writable,
        instruments,
        fee_pool,
        insurance,
        priority: priority_before,
        commitment: commitment_so_far,
        poly,
        shared: Wire::zero(),
        next_account,
        oracle_ms: oracle_ms.clone(),
        snapshots: Vec::with_capacity(w.slots.len()),
        liquidation_priced: u64::from(w.shape.fill_budget().liquidation_priced()),
    };
    for (i, slot) in w.slots.iter().enumerate() {
        cs.part(format!("op slot {i} (kind {})", slot.kind));
        op_slot(cs, slot, &mut st)?;
    }
    cs.part("loss shares claimed".into());
    // Every loss share was claimed by a deficit cover.
    cs.equal(&st.shared, &Wire::zero())?;
    for (i, o) in w.keys.iter().enumerate() {
        cs.part(format!("account slot {i}"));
        key_slot(cs, o, &mut st)?;
    }

    for (i, o) in w.expiries.iter().enumerate() {
        cs.part(format!("expiry slot {i}"));
        instrument_op(
            cs,
            o,
            &mut instruments_root,
            &mut next_instrument,
            &mut st.commitment,
            &mut st.poly,
        )?;
    }
    for (i, o) in w.settlements.iter().enumerate() {
        cs.part(format!("settlement slot {i}"));
        settle_slot(cs, o, &mut st, &mut instruments_root)?;
    }

    cs.part("margin slots".into());
    // Each account's margin mode after the batch: (WorstCase, Portfolio).
    let mut modes = Vec::with_capacity(st.accounts.len());
    for a in &st.accounts {
        let (mode, worst_case, portfolio) =
            mode_code(cs, a.mode.value.into_bigint().as_ref()[0] as u8)?;
        cs.equal(&mode, &a.mode)?;
        modes.push(Modes {
            worst_case,
            portfolio,
        });
    }
    // Which instrument register prices each position register.
    let mut prices = Vec::with_capacity(st.positions.len());
    for q in &st.positions {
        let mut row = Vec::with_capacity(st.instruments.len());
        for i in &st.instruments {
            let same = not(&cs.is_nonzero(&q.instrument.sub(&i.id))?);
            row.push(cs.mul(&same, &i.enabled)?);
        }
        prices.push(row);
    }
    margin_slots(cs, w, &st, &prices, &modes)?;

    cs.part("the positions' write-back".into());
    let mut nz_end = Vec::with_capacity(w.positions.len());
    for (k, q) in w.positions.iter().enumerate() {
        let reg = &st.positions[k];
        let current = pick(
            cs,
            &reg.account_sel,
            st.accounts.iter().map(|a| a.positions_root.clone()),
        )?;
        let siblings = cs.witnesses(&q.siblings)?;
        let old = cs.merkle_root(&reg.qty0, &reg.instrument_bits, &siblings)?;
        cs.equal_if(&reg.enabled, &old, &current)?;
        if k >= st.writable {
            // A read-only register: no op changed it (its quantity is its leaf's), so the
            // root stays as it is.
            nz_end.push(reg.nz0.clone());
            cs.equal_if(&reg.used, &reg.enabled, &one())?;
            continue;
        }
        cs.signed_range(&reg.qty, 64)?;
        nz_end.push(cs.is_nonzero(&reg.qty)?);
        let new = cs.merkle_root(&reg.qty, &reg.instrument_bits, &siblings)?;
        let change = new.sub(&current);
        for (a, s) in st.accounts.iter_mut().zip(&reg.account_sel) {
            a.positions_root = a.positions_root.add(&cs.mul(s, &change)?);
        }
        cs.equal_if(&reg.used, &reg.enabled, &one())?;
    }

    cs.part("the accounts' position counts".into());
    // Open positions after the batch: those held before, less those closed, plus those opened.
    // A margined account's registers hold every position it held before.
    let (mut open_after, mut in_registers) = (Vec::new(), Vec::new());
    for (k, a) in st.accounts.iter().enumerate() {
        let (mut held0, mut held) = (Wire::zero(), Wire::zero());
        for (q, nz) in st.positions.iter().zip(&nz_end) {
            held0 = held0.add(&cs.mul(&q.account_sel[k], &q.nz0)?);
            held = held.add(&cs.mul(&q.account_sel[k], nz)?);
        }
        cs.equal_if(&a.margined, &held0, &a.count0)?;
        open_after.push(a.count0.add(&held).sub(&held0));
        // Every position it held before is in a register, so every one it holds after is.
        in_registers.push(not(&cs.is_nonzero(&held0.sub(&a.count0))?));
    }
    let filled = st
        .accounts
        .iter()
        .map(|a| cs.is_nonzero(&a.filled))
        .collect::<R<Vec<_>>>()?;
    let priced = filled
        .iter()
        .zip(&modes)
        .map(|(f, m)| cs.mul(f, &not(&m.worst_case)))
        .collect::<R<Vec<_>>>()?;
    let registers = Registers {
        prices: &prices,
        nonzero: &nz_end,
        complete: &in_registers,
        priced: &priced,
    };
    solvency(cs, w, &st, &instruments_root, &open_after, &registers)?;

    cs.part("the accounts' write-back".into());
    let empty_positions = Wire::constant(empty_root(INSTRUMENT_DEPTH));
    let accounts = st.accounts.iter().zip(open_after).zip(&filled).zip(&modes);
    for (k, (((a, count), filled), Modes { worst_case, .. })) in accounts.enumerate() {
        // An opened account starts empty, and exactly one OPEN op named it.
        for (field, value) in [
            (&a.owner0, Wire::zero()),
            (&a.mode0, Wire::zero()),
            (&a.keys0, Wire::zero()),
            (&a.nonce0, Wire::zero()),
            (&a.count0, Wire::zero()),
            (&a.liability0, Wire::zero()),
            (&a.collateral0, Wire::zero()),
            (&a.positions_root0, empty_positions.clone()),
            (&a.since0, Wire::zero()),
        ] {
            cs.equal_if(&a.opened, field, &value)?;
        }
        cs.equal(&a.opens, &a.opened)?;
        cs.equal_if(&a.used, &a.enabled, &one())?;
        let leaf = cs.poseidon(&[
            a.owner0.clone(),
            a.keys0.clone(),
            a.nonce0
                .add(&a.count0.scale(pow2(64)))
                .add(&a.mode0.scale(pow2(MODE_AT)))
                .add(&a.liability0.scale(pow2(LIABILITY_AT))),
            a.collateral0.clone(),
            a.positions_root0.clone(),
            a.since0.clone(),
        ])?;
        let old_leaf = cs.select(&a.opened, &Wire::zero(), &leaf)?;
        let siblings = cs.witnesses(&w.accounts[k].siblings)?;
        let old = cs.merkle_root(&old_leaf, &a.id_bits, &siblings)?;
        cs.equal_if(&a.enabled, &old, &accounts_root)?;
        cs.signed_range(&a.collateral, 64)?;
        cs.range(&a.liability, LIABILITY_BITS)?;
        // In WorstCase after filling, or after its mode changed, it covers what its shorts can
        // owe at worst: `collateral * 1e8 - liability`, below 2^90 (the collateral is below
        // 2^63), is not negative.
        let switched = cs.is_nonzero(&a.mode.sub(&a.mode0))?;
        let bound = filled.add(&switched).sub(&cs.mul(filled, &switched)?);
        let cover = a
            .collateral
            .scale(Fr::from(QTY_SCALE as u64))
            .sub(&a.liability);
        cs.range(&cs.mul(&cs.mul(&bound, worst_case)?, &cover)?, COVER_BITS)?;
        let new_leaf = cs.poseidon(&[
            a.owner.clone(),
            a.keys.clone(),
            a.nonce
                .add(&count.scale(pow2(64)))
                .add(&a.mode.scale(pow2(MODE_AT)))
                .add(&a.liability.scale(pow2(LIABILITY_AT))),
            a.collateral.clone(),
            a.positions_root.clone(),
            a.since.clone(),
        ])?;
        let new = cs.merkle_root(&new_leaf, &a.id_bits, &siblings)?;
        accounts_root = cs.select(&a.enabled, &new, &accounts_root)?;
    }
    for i in &st.instruments {
        cs.equal_if(&i.used, &i.enabled, &one())?;
    }

    let bits = w.shape.mark_window_bits;
    let mut previous: Option<(Wire, Wire)> = None;
    for (i, window) in w.marks.iter().enumerate() {
        cs.part(format!("mark window {i}"));
        let (enabled, index) = mark_window(
            cs,
            window,
            bits,
            &mut instruments_root,
            &mut oracle_ms,
            &mut st.commitment,
            &mut st.poly,
        )?;
        // Windows in use come first, by index (so the marks enter the commitment by id).
        if let Some((enabled0, index0)) = &previous {
            ordered(
                cs,
                &[enabled0.clone(), enabled.clone()],
                &[index0.clone(), index.clone()],
                INSTRUMENT_DEPTH as usize - bits,
            )?;
        }
        previous = Some((enabled, index));
    }
    cs.part("the new root, priority count and commitment".into());
    cs.signed_range(&st.fee_pool, 64)?;
    cs.signed_range(&st.insurance, 64)?;
    let funds = cs.poseidon(&[
        st.insurance.clone(),
        st.fee_pool.clone(),
        counts(&st.next_account, &next_instrument, &oracle_ms),
    ])?;
    let root = cs.poseidon(&[accounts_root, instruments_root, funds])?;
    cs.equal(&root, &new_root)?;
    cs.equal(&st.priority, &priority_after)?;
    cs.equal(&st.commitment, &commitment)?;
    // The words evaluate to what the contract computed over the posted bytes.
    cs.equal(&st.poly.y, &y)
}

/// What the registers say about the accounts' positions after the batch, for the accounts the
/// registers price.
struct Registers<'a> {
    /// `prices[r][i]`: instrument register `i` prices position register `r`.
    prices: &'a [Vec<Wire>],
    /// Each position register's quantity is nonzero after the batch.
    nonzero: &'a [Wire],
    /// Per account register: every position it held before the batch is in a register.
    complete: &'a [Wire],
    /// Per account register: it filled in the batch (or took a liquidated or closed position)
    /// and ends it in a mode other than `WorstCase`, so its solvency is priced.
    priced: &'a [Wire],
}

/// Bits of an equity total: `|collateral| * 1e8 < 2^90`, each position's `|q * mark| < 2^126`,
/// and fewer than 2^33 positions priced, so a total below zero (`p - |t|`) is far above 2^160.
const EQUITY_BITS: usize = 160;

/// Every account that filled in the batch (or took a liquidated position) ends it with equity
/// at the committed marks of at least zero: `collateral * 1e8 + sum_i q_i * mark_i >= 0` over
/// every position it holds after the batch (`SettlementState::equity`). One that ends it in
/// `WorstCase` covers what its shorts can owe at worst (the accounts' write-back), and every
/// committed mark lies in `[0, W]` (`mark_entry`; a settlement's mark is at most W too), so
/// `collateral * 1e8 >= sum short_i * W_i >= sum short_i * mark_i` and its equity is not
/// negative whatever it holds: it is not priced. The others are (`Registers::priced`). An account whose every
/// position is in a register (every one it held before is, so every one it holds after is) may
/// be priced from the registers: each position register of it that ends nonzero is priced by
/// the instrument register of its instrument, whose mark is the committed one. The others:
/// price windows open the committed marks of aligned runs of instrument ids (against the
/// instruments root after the settlements, before the batch's marks); solvency windows open an
/// account's positions in one run each, rebuilt from their leaves under the account's positions
/// root after the write-back. The nonzero leaves of its windows must number its open positions,
/// so none lies outside them; windows in use come first, by account and run, so none counts
/// twice.
fn solvency(
    cs: &Cs,
    w: &BatchWitness,
    st: &Running,
    instruments_root: &Wire,
    counts: &[Wire],
    registers: &Registers,
) -> R<()> {
    let index_bits = INSTRUMENT_DEPTH as usize - w.shape.solvency_bits;
    let mut prices = Vec::with_capacity(w.prices.len());
    for (i, p) in w.prices.iter().enumerate() {
        cs.part(format!("price window {i}"));
        let enabled = cs.boolean(p.enabled)?;
        let index = cs.witness(Fr::from(p.index))?;
        let path = cs.bits(&index, index_bits)?;
        let (mut leaves, mut marks) = (Vec::new(), Vec::new());
        for (listed, leaf) in &p.leaves {
            let listed = cs.boolean(*listed)?;
            let mark = cs.witness(from_i64(leaf.mark.0))?;
            let hashed = cs.poseidon(&[
                cs.witness(leaf.spec_hash)?,
                cs.witness(Fr::from(leaf.status))?,
                mark.clone(),
                cs.witness(leaf.risk_hash)?,
                cs.witness(from_i64(leaf.settlement_price.0))?,
            ])?;
            // An id where no instrument is listed has the empty leaf, and no mark.
            leaves.push(cs.mul(&listed, &hashed)?);
            cs.equal_if(&not(&listed), &mark, &Wire::zero())?;
            marks.push(mark);
        }
        let siblings = cs.witnesses(&p.siblings)?;
        let root = cs.merkle_root(&subtree(cs, leaves)?, &path, &siblings)?;
        cs.equal_if(&enabled, &root, instruments_root)?;
        prices.push((enabled, index, marks));
    }
    let n = st.accounts.len();
    let (mut seen, mut value) = (vec![Wire::zero(); n], vec![Wire::zero(); n]);
    let mut previous: Option<(Wire, Wire)> = None;
    for (i, s) in w.solvency.iter().enumerate() {
        cs.part(format!("solvency window {i}"));
        let enabled = cs.boolean(s.enabled)?;
        let (sel_a, sum) = selector(cs, n, s.account)?;
        cs.equal(&sum, &enabled)?;
        let (sel_p, sum) = selector(cs, prices.len(), s.price)?;
        cs.equal(&sum, &enabled)?;
        // Its price window is in use, and gives its run.
        let priced = pick(cs, &sel_p, prices.iter().map(|p| p.0.clone()))?;
        cs.equal(&priced, &enabled)?;
        let index = pick(cs, &sel_p, prices.iter().map(|p| p.1.clone()))?;
        let path = cs.bits(&index, index_bits)?;
        let qty = cs.witnesses(&s.qty)?;
        let siblings = cs.witnesses(&s.siblings)?;
        let root = cs.merkle_root(&subtree(cs, qty.clone())?, &path, &siblings)?;
        let positions_root = pick(
            cs,
            &sel_a,
            st.accounts.iter().map(|a| a.positions_root.clone()),
        )?;
        cs.equal_if(&enabled, &root, &positions_root)?;
        let (mut held, mut worth) = (Wire::zero(), Wire::zero());
        for (j, q) in qty.iter().enumerate() {
            held = held.add(&cs.is_nonzero(q)?);
            let mark = pick(cs, &sel_p, prices.iter().map(|p| p.2[j].clone()))?;
            worth = worth.add(&cs.mul(q, &mark)?);
        }
        for (k, x) in sel_a.iter().enumerate() {
            seen[k] = seen[k].add(&cs.mul(x, &held)?);
            value[k] = value[k].add(&cs.mul(x, &worth)?);
        }
        let account = pick(cs, &sel_a, st.accounts.iter().map(|a| a.id.clone()))?;
        let key = account.scale(pow2(index_bits)).add(&index);
        if let Some((enabled0, key0)) = &previous {
            ordered(
                cs,
                &[enabled0.clone(), enabled.clone()],
                &[key0.clone(), key.clone()],
                ACCOUNT_DEPTH as usize + index_bits,
            )?;
        }
        previous = Some((enabled, key));
    }
    cs.part("solvency".into());
    // Priced from the registers: each position register's value at its instrument register's
    // mark, which must exist where the account is so priced and the position is open.
    let by_registers = w
        .accounts
        .iter()
        .map(|a| cs.boolean(a.registers_price))
        .collect::<R<Vec<_>>>()?;
    let mut worth = Vec::with_capacity(st.positions.len());
    for (r, q) in st.positions.iter().enumerate() {
        let priced = Wire::sum(&registers.prices[r]);
        let mark = pick(
            cs,
            &registers.prices[r],
            st.instruments.iter().map(|i| i.mark.clone()),
        )?;
        let owner_priced = pick(cs, &q.account_sel, by_registers.iter().cloned())?;
        let needs = cs.mul(&owner_priced, &registers.nonzero[r])?;
        cs.equal_if(&needs, &priced, &one())?;
        worth.push(cs.mul(&q.qty, &mark)?);
    }
    for (k, a) in st.accounts.iter().enumerate() {
        let checked = &registers.priced[k];
        let registers_price = cs.mul(checked, &by_registers[k])?;
        cs.equal_if(&registers_price, &registers.complete[k], &one())?;
        cs.equal_if(&checked.sub(&registers_price), &seen[k], &counts[k])?;
        let mut in_registers = Wire::zero();
        for (q, x) in st.positions.iter().zip(&worth) {
            in_registers = in_registers.add(&cs.mul(&q.account_sel[k], x)?);
        }
        let priced = cs.select(&by_registers[k], &in_registers, &value[k])?;
        let equity = a.collateral.scale(Fr::from(QTY_SCALE as u64)).add(&priced);
        cs.range(&cs.mul(checked, &equity)?, EQUITY_BITS)?;
    }
    Ok(())
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

/// The shared range checks of an op slot, each named for its liquidation check (a liquidation
/// has one check in every lane), with the other kinds' checks that ride in it (all say a value
/// is not negative, but the owner's, which says it is an address):
#[derive(Clone, Copy)]
enum Lane {
    /// The liquidation fee's bound (171 bits); a deficit cover leaves insurance non-negative
    /// (63); the owner's forced withdrawal that pays nothing had nothing to pay (157), and one
    /// that pays leaves a remainder that is not negative (27).
    Fee,
    /// The liquidated account (an auction's start's account) could default (`LIABILITY_BITS +
    /// 1`, below 2^156); a deficit
    /// cover leaves the fee pool non-negative (63); a loss share leaves the collateral
    /// non-negative (63); the owner an opening, a withdrawal or a forced operation names is below
    /// 2^160, exactly the lane's width (the kinds that name one have no other check in it).
    Uncovered,
    /// The liquidation price within the proven schedule (132); a deficit cover leaves the
    /// account at or below zero (63); a paid forced withdrawal's remainder is below 1e8 (27).
    Discount,
    /// The liquidation price within the stress range (65); a forced close's rounding is not
    /// negative (27; zero for every other kind).
    Room,
    /// A liquidation only reduces the position (64); a forced close's rounding is below 1e8
    /// (27).
    Left,
}

/// Each lane's width: its widest check's.
const LANE_BITS: [usize; 5] = [171, 160, 132, 65, 64];

/// Sums per lane of an op slot's gated checks. A lane holds no value but its kind's (the others'
/// flags are zero), so its sum is that value or zero. Every check but the owner's says a value
/// is not negative. A negative value (`p - |v|`, every value here below 2^180 in size)
/// is far above any lane's width, so the wider check refuses what the narrower one did; a value
/// whose check was narrower than its lane was bounded by that width only to say it is not
/// negative (the deficit's insurance and fee pool are held to 64 bits at the batch's end, and
/// the collateral on every op).
#[derive(Default)]
struct Lanes([Vec<Wire>; 5]);

impl Lanes {
    fn push(&mut self, lane: Lane, gated: Wire) {
        self.0[lane as usize].push(gated);
    }

    fn check(self, cs: &Cs) -> R<()> {
        for (values, bits) in self.0.iter().zip(LANE_BITS) {
            cs.range(&Wire::sum(values), bits)?;
        }
        Ok(())
    }
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
        liquidation,
        loss,
        deficit,
        close,
        start,
        finish,
    ] = <[Wire; 13]>::try_from(flags.clone()).expect("thirteen kinds");
    // A fill, a liquidation or a forced close: a trade between accounts a and b.
    let trade = Wire::sum([&fill, &liquidation, &close]);
    let used = Wire::sum(&flags);
    cs.assert_boolean(&used)?;
    let kind_code = Wire::linear(kind::SLOT_KINDS.into_iter().map(Fr::from).zip(&flags));

    // The kinds' own checks that a value is not negative share range checks: a slot has one
    // kind, so each lane sums values gated by the flags of different kinds (all of them zero
    // but the slot's kind's), and one range check of the lane's widest width holds that one
    // (`Lanes`).
    let mut lanes = Lanes::default();

    let amount = cs.witness(s.amount)?;
    let price = cs.witness(s.price)?;
    let qty = cs.witness(s.qty)?;
    let taker_buys = cs.boolean(s.taker_buys)?;
    let priority = cs.witness(s.priority)?;
    let owner = cs.witness(s.owner)?;

    // Registers the op works on.
    let (sel_a, sum_a) = selector(cs, st.accounts.len(), s.a)?;
    cs.equal(&sum_a, &used)?;
    let (sel_b, sum_b) = selector(cs, st.accounts.len(), s.b)?;
    cs.equal(&sum_b, &transfer.add(&trade))?;
    let (sel_pa, sum_pa) = selector(cs, st.writable, s.pa)?;
    cs.equal(&sum_pa, &trade)?;
    let (sel_pb, sum_pb) = selector(cs, st.writable, s.pb)?;
    cs.equal(&sum_pb, &trade)?;
    let (sel_i, sum_i) = selector(cs, st.instruments.len(), s.i)?;
    cs.equal(&sum_i, &trade)?;
    for (a, (x, y)) in st.accounts.iter_mut().zip(sel_a.iter().zip(&sel_b)) {
        a.used = a.used.add(x).add(y);
    }
    for (q, (x, y)) in st.positions.iter_mut().zip(sel_pa.iter().zip(&sel_pb)) {
        q.used = q.used.add(x).add(y);
    }
    for (i, x) in st.instruments.iter_mut().zip(&sel_i) {
        i.used = i.used.add(x);
    }
    let instrument = pick(cs, &sel_i, st.instruments.iter().map(|i| i.id.clone()))?;

    // A slot's record says exactly what it does: fields its kind does not use are zero.
    let moves_cash = Wire::sum([&deposit, &l1_deposit, &withdraw, &l1_withdrawal, &transfer]);
    let l1 = Wire::sum([&l1_deposit, &l1_withdrawal, &close]);
    let has_amount = Wire::sum([&moves_cash, &liquidation, &loss, &deficit, &close]);
    // A forced close's amount word carries only its queue id.
    cs.equal_if(&close, &amount, &Wire::zero())?;
    cs.equal_if(&not(&has_amount), &amount, &Wire::zero())?;
    cs.equal_if(&not(&trade.add(&deficit)), &price, &Wire::zero())?;
    for field in [&qty, &taker_buys] {
        cs.equal_if(&not(&trade), field, &Wire::zero())?;
    }
    cs.equal_if(&not(&l1), &priority, &Wire::zero())?;
    // An opening's owner, the owner a withdrawal pays on L1, or who asked for a forced close.
    let pays = withdraw.add(&l1_withdrawal);
    let names_owner = Wire::sum([&open, &pays, &close]);
    cs.equal_if(&not(&names_owner), &owner, &Wire::zero())?;
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
    let sign = taker_buys.scale(Fr::from(2u64)).add_const(-Fr::from(1u64));
    // Exact, but for a forced close at the mark: its value rounded against the account (b),
    // which pays the ceiling buying and gets the floor selling, `notional * 1e8 - price * qty
    // = sign * rounding` with the rounding in `0..1e8`.
    let rounding = cs.witness(s.rounding)?;
    cs.equal_if(&not(&close), &rounding, &Wire::zero())?;
    lanes.push(Lane::Room, rounding.clone());
    lanes.push(
        Lane::Left,
        cs.mul(
            &close,
            &Wire::constant(Fr::from(QTY_SCALE as u64 - 1)).sub(&rounding),
        )?,
    );
    cs.equal(
        &notional.scale(Fr::from(QTY_SCALE as u64)),
        &price_qty.add(&cs.mul(&sign, &rounding)?),
    )?;
    let status = pick(cs, &sel_i, st.instruments.iter().map(|i| i.status.clone()))?;
    cs.equal_if(&fill, &status, &one())?;
    let maker_rate = pick(
        cs,
        &sel_i,
        st.instruments.iter().map(|i| i.maker_rate.clone()),
    )?;
    let taker_rate = pick(
        cs,
        &sel_i,
        st.instruments.iter().map(|i| i.taker_rate.clone()),
    )?;
    let maker_fee = fee(cs, &notional, &maker_rate, s.maker_fee)?;
    let taker_fee = fee(cs, &notional, &taker_rate, s.taker_fee)?;
    let signed_notional = cs.mul(&sign, &notional)?;
    let signed_qty = cs.mul(&sign, &qty)?;
    let taker_moves = cs.mul(&trade, &signed_qty)?;
    // A liquidation's price is inside its instrument's committed stress range on the liquidated
    // account's (b's) side: a long sold at no less than the low end, a short bought back at no
    // more than the high end (`high - price` or `price - low`: 65 bits hold either, and a
    // negative one is far above them).
    let low = pick(cs, &sel_i, st.instruments.iter().map(|i| i.low.clone()))?;
    let high = pick(cs, &sel_i, st.instruments.iter().map(|i| i.high.clone()))?;
    let bound = cs.select(&taker_buys, &high, &low)?;
    let room = cs.mul(&sign, &bound.sub(&price))?;
    lanes.push(Lane::Room, cs.mul(&liquidation, &room)?);
    // Its fee is at most the fee at `MAX_LIQUIDATION_FEE_BPS` at the committed index clamped to
    // the cap (`optio_types::max_liquidation_fee`): `fee * 1e12 <= qty * reference * MAX + 1e12
    // - 1` (`qty < 2^63`, `reference < 2^100`: 171 bits hold the difference, a negative one is
    // far above them).
    let reference = pick(
        cs,
        &sel_i,
        st.instruments.iter().map(|i| i.fee_reference.clone()),
    )?;
    let scale = Fr::from(10_000u64 * QTY_SCALE as u64);
    let fee_room = cs
        .mul(&qty, &reference)?
        .scale(Fr::from(u64::from(MAX_LIQUIDATION_FEE_BPS)))
        .add_const(scale - Fr::from(1u64))
        .sub(&amount.scale(scale));
    lanes.push(Lane::Fee, cs.mul(&liquidation, &fee_room)?);
    // Its price is within the proven schedule's discount of the reference from the committed
    // mark on b's side, `run = min(T - since, D)` into b's auction by the committed oracle
    // time `T` (`optio_types::within_liquidation_schedule`): `1e4 * D * sign * (mark - price)
    // + reference * (S * D + (M - S) * run) >= 0` (the mark and price below 2^64 times 1e4 * D
    // below 2^34, the reference below 2^100 times at most M * D below 2^31: 132 bits hold it, a
    // negative one is far above them). Every step's rate is at most M, so it implies the
    // deepest discount. The auction must have started (`since != 0`), no later than `T` (`T -
    // since`, 64 bits); `late` says whether it has run its duration (`elapsed - D` or `D - 1 -
    // elapsed`, 64 bits).
    let committed_mark = pick(cs, &sel_i, st.instruments.iter().map(|i| i.mark.clone()))?;
    let b_since = pick(cs, &sel_b, st.accounts.iter().map(|a| a.since.clone()))?;
    let b_frozen = cs.is_nonzero(&b_since)?;
    cs.equal_if(&liquidation, &b_frozen, &one())?;
    // An account whose auction started (`since` not 0) is frozen until its end: it fills no
    // order (a or b), and no money leaves it at its holder's request (a withdrawal's or a
    // transfer's a). An auction's end needs a started auction.
    let a_since = pick(cs, &sel_a, st.accounts.iter().map(|a| a.since.clone()))?;
    let a_frozen = cs.is_nonzero(&a_since)?;
    cs.equal_if(&finish, &a_frozen, &one())?;
    cs.enforce(
        &Wire::sum([&fill, &withdraw, &transfer]),
        &a_frozen,
        &Wire::zero(),
    )?;
    cs.enforce(&fill, &b_frozen, &Wire::zero())?;
    let elapsed = st.oracle_ms.sub(&b_since);
    cs.range(&cs.mul(&liquidation, &elapsed)?, 64)?;
    let duration = Fr::from(PROVEN_LIQUIDATION_DURATION_MS);
    let late = cs.boolean(
        liquidation.value == Fr::from(1u64)
            && signed_order(elapsed.value) >= signed_order(duration),
    )?;
    cs.enforce(&late, &not(&liquidation), &Wire::zero())?;
    let gap = cs.select(
        &late,
        &elapsed.add_const(-duration),
        &Wire::constant(duration - Fr::from(1u64)).sub(&elapsed),
    )?;
    cs.range(&cs.mul(&liquidation, &gap)?, 64)?;
    let run = cs.select(&late, &Wire::constant(duration), &elapsed)?;
    let (start_bps, max_bps) = (
        u64::from(PROVEN_LIQUIDATION_START_BPS),
        u64::from(MAX_LIQUIDATION_DISCOUNT_BPS),
    );
    let schedule_room = cs
        .mul(&sign, &committed_mark.sub(&price))?
        .scale(Fr::from(BPS) * duration)
        .add(&reference.scale(Fr::from(start_bps) * duration))
        .add(
            &cs.mul(&reference, &run)?
                .scale(Fr::from(max_bps - start_bps)),
        );
    lanes.push(Lane::Discount, cs.mul(&liquidation, &schedule_room)?);
    // A fill pays the spec's fees to the fee pool; a liquidation pays `amount` from the
    // liquidated account (b) to insurance.
    let a_fee = cs.mul(&fill, &maker_fee)?;
    let liquidation_fee = cs.mul(&liquidation, &amount)?;
    let b_fee = cs.mul(&fill, &taker_fee)?.add(&liquidation_fee);
    st.insurance = st.insurance.add(&liquidation_fee);

    // Loss sharing: shares are charged, and the next deficit cover credits exactly their sum
    // with what it takes from insurance (`amount`) and the fee pool (`price`), which stay
    // non-negative.
    let shared = st.shared.add(&cs.mul(&loss, &amount)?);
    let claimed = cs.mul(&deficit, &shared)?;
    st.shared = shared.sub(&claimed);
    let from_fees = cs.mul(&deficit, &price)?;
    st.insurance = st.insurance.sub(&cs.mul(&deficit, &amount)?);
    st.fee_pool = st.fee_pool.sub(&from_fees);
    lanes.push(Lane::Fee, cs.mul(&deficit, &st.insurance)?);
    lanes.push(Lane::Uncovered, cs.mul(&deficit, &st.fee_pool)?);
    // In the engine's order: the fee pool only once insurance is spent, shares only once both
    // are.
    cs.enforce(&from_fees, &st.insurance, &Wire::zero())?;
    cs.enforce(&claimed, &st.insurance, &Wire::zero())?;
    cs.enforce(&claimed, &st.fee_pool, &Wire::zero())?;

    // The liquidated account (b) before the op could default: its collateral does not cover
    // what its shorts can owe at worst, `collateral * 1e8 < liability` (an account that covers
    // them can pay all it may ever owe, and the engine never liquidates it:
    // `optio_types::short_liability`). The liability, below 2^155, less the collateral times
    // 1e8, below 2^90 in size, is below 2^158; a difference at or below zero is far above it.
    let b_collateral = pick(cs, &sel_b, st.accounts.iter().map(|a| a.collateral.clone()))?;
    let b_liability = pick(cs, &sel_b, st.accounts.iter().map(|a| a.liability.clone()))?;
    let uncovered = b_liability
        .sub(&b_collateral.scale(Fr::from(QTY_SCALE as u64)))
        .add_const(-Fr::from(1u64));
    lanes.push(Lane::Uncovered, cs.mul(&liquidation, &uncovered)?);
    // And, unless it held more positions at the batch's start than the shape prices for a
    // liquidation (its leaf's count, below 2^32), a margin slot proves it below maintenance
    // before the op (`liquidated`).
    // So does an auction's start, of its account (a): it could default, and is below
    // maintenance before the op unless it held more positions than the shape prices.
    // An auction's end (of a) proves the reverse: its account covers what its shorts can owe
    // at worst (`by_cover`, below), or a cured slot proves it meets its maintenance before the
    // op, unless it held more positions than the shape prices.
    let unpriced = cs.boolean(s.unpriced)?;
    let by_cover = cs.boolean(s.by_cover)?;
    let liquidates = liquidation.add(&start);
    cs.enforce(&unpriced, &not(&liquidates.add(&finish)), &Wire::zero())?;
    cs.enforce(&by_cover, &not(&finish.sub(&unpriced)), &Wire::zero())?;
    let b_count = pick(cs, &sel_b, st.accounts.iter().map(|a| a.count0.clone()))?;
    let a_count = pick(cs, &sel_a, st.accounts.iter().map(|a| a.count0.clone()))?;
    // A deficit cover's account holds no position: it filled nothing earlier in the batch
    // (below), so one whose leaf held none at the batch's start holds none; one that held some
    // takes a flat margin slot (`covered`), which prices every position it held as of the op.
    let flat_slot = cs.mul(&deficit, &cs.is_nonzero(&a_count)?)?;
    let count = b_count.add(&cs.mul(&start.add(&finish), &a_count)?);
    let beyond = count.add_const(-Fr::from(st.liquidation_priced + 1));
    cs.range(&cs.mul(&unpriced, &beyond)?, 32)?;
    let unpriced_end = cs.mul(&unpriced, &finish)?;
    let liquidated = liquidates.sub(&unpriced).add(&unpriced_end);
    let ended = finish.sub(&unpriced_end).sub(&by_cover);
    // The start sets its account's `since` to the committed oracle time, the end to 0.
    let restart = cs
        .mul(&start, &st.oracle_ms.sub(&a_since))?
        .sub(&cs.mul(&finish, &a_since)?);
    for (a, x) in st.accounts.iter_mut().zip(&sel_a) {
        a.since = a.since.add(&cs.mul(x, &restart)?);
    }

    // Cash, nonces, owners and openings on the account registers.
    let cash_sign = Wire::sum([&deposit, &l1_deposit, &deficit])
        .sub(&withdraw)
        .sub(&l1_withdrawal)
        .sub(&transfer)
        .sub(&loss);
    let a_cash = cs
        .mul(&cash_sign, &amount)?
        .add(&cs.mul(&trade, &signed_notional.sub(&a_fee))?)
        .add(&from_fees)
        .add(&claimed);
    let b_cash = cs
        .mul(&transfer, &amount)?
        .add(&cs.mul(&trade, &signed_notional.scale(-Fr::from(1u64)).sub(&b_fee))?);
    let moves_money = cs.is_nonzero(&amount)?;
    let forced_out = cs.mul(&l1_withdrawal, &moves_money)?;
    let a_nonce = withdraw.add(&forced_out);
    let opened_owner = cs.mul(&open, &owner)?;
    // An account that filled must end the batch solvent (`solvency`): a deficit cover of one
    // that filled earlier in the batch would hide what the fill left.
    let a_filled = pick(cs, &sel_a, st.accounts.iter().map(|a| a.filled.clone()))?;
    cs.equal_if(&deficit, &a_filled, &Wire::zero())?;
    for (a, (x, y)) in st.accounts.iter_mut().zip(sel_a.iter().zip(&sel_b)) {
        // A liquidation's counterparty (a) takes a position as a fill's accounts do.
        a.filled = a.filled.add(&cs.mul(x, &trade)?).add(&cs.mul(y, &fill)?);
        a.traded = a.traded.add(&cs.mul(&fill, &x.add(y))?);
        a.collateral = a
            .collateral
            .add(&cs.mul(x, &a_cash)?)
            .add(&cs.mul(y, &b_cash)?);
        a.nonce = a.nonce.add(&cs.mul(x, &a_nonce)?);
        a.owner = a.owner.add(&cs.mul(x, &opened_owner)?);
        a.opens = a.opens.add(&cs.mul(x, &open)?);
    }
    // Collateral stays a 64-bit integer. Money that leaves at the holder's request (a
    // withdrawal, a transfer) must leave the account's positions covered in every stress
    // scenario: a margin slot proves that for this op. A loss share leaves the
    // collateral non-negative. A fill may leave it negative: a leveraged perpetual long holds
    // negative cash against its position.
    let a_after = pick(cs, &sel_a, st.accounts.iter().map(|a| a.collateral.clone()))?;
    let b_after = pick(cs, &sel_b, st.accounts.iter().map(|a| a.collateral.clone()))?;
    cs.signed_range(&a_after, 64)?;
    cs.signed_range(&b_after, 64)?;
    // (A forced withdrawal is held to its own rule, below, which needs no mark.)
    let out = cs.mul(&withdraw.add(&transfer), &moves_money)?;
    let a_pays = cs.mul(&loss, &moves_money)?;
    lanes.push(Lane::Uncovered, cs.mul(&a_pays, &a_after)?);
    // A transfer stays with one owner; a withdrawal names the account's owner, a forced one who
    // asked on L1 (the contract checks its queue, and pays whom the words name). Someone else's
    // forced withdrawal moves nothing.
    let a_owner = pick(cs, &sel_a, st.accounts.iter().map(|a| a.owner.clone()))?;
    let b_owner = pick(cs, &sel_b, st.accounts.iter().map(|a| a.owner.clone()))?;
    cs.equal_if(&transfer, &a_owner, &b_owner)?;
    cs.equal_if(&withdraw, &owner, &a_owner)?;
    let stranger = cs.is_nonzero(&owner.sub(&a_owner))?;
    cs.equal_if(&cs.mul(&l1_withdrawal, &stranger)?, &amount, &Wire::zero())?;
    // The owner's forced withdrawal takes all that leaves the account covering what its shorts
    // can owe at worst, less a micro-USDC for each position it held at the batch's start (the
    // leaf's count: the batcher starts a new batch at a forced withdrawal whose account's
    // positions moved in it), or nothing when that is not positive:
    // `max(0, floor((collateral * 1e8 - liability) / 1e8) - count)` with the collateral before
    // the op (`optio_types::forced_withdrawal`). With `d = (collateral - count) * 1e8 -
    // liability`, either `0 <= d - amount * 1e8 < 1e8`, or nothing moved and `d < 1e8`. It
    // needs no mark, so no margin slot, and an account holding any number of positions is paid
    // (the escape hatch cannot be served with less). `d` is above `-2^158` (the liability is
    // below 2^155, the collateral a 64-bit integer), so `1e8 - 1 - d` of a `d` at or above 1e8
    // is far above 2^159.
    let owners_exit = cs.mul(&l1_withdrawal, &not(&stranger))?;
    let a_liability = pick(cs, &sel_a, st.accounts.iter().map(|a| a.liability.clone()))?;
    // An auction's start's account could default (its collateral, unchanged by the op, as the
    // liquidation's above).
    let a_uncovered = a_liability
        .sub(&a_after.scale(Fr::from(QTY_SCALE as u64)))
        .add_const(-Fr::from(1u64));
    lanes.push(Lane::Uncovered, cs.mul(&start, &a_uncovered)?);
    // An auction's end by cover: `collateral * 1e8 - liability` is not negative (below 2^90;
    // a negative one is far above the lane).
    let a_covers = a_after.scale(Fr::from(QTY_SCALE as u64)).sub(&a_liability);
    lanes.push(Lane::Uncovered, cs.mul(&by_cover, &a_covers)?);
    let scale = Fr::from(QTY_SCALE as u64);
    let d = a_after
        .add(&amount)
        .sub(&a_count)
        .scale(scale)
        .sub(&a_liability);
    let rest = d.sub(&amount.scale(scale));
    let paid = cs.boolean(
        owners_exit.value == Fr::from(1u64)
            && signed_order(rest.value) >= signed_order(Fr::from(0u64)),
    )?;
    cs.enforce(&paid, &not(&owners_exit), &Wire::zero())?;
    lanes.push(Lane::Fee, cs.mul(&paid, &rest)?);
    lanes.push(
        Lane::Discount,
        cs.mul(
            &paid,
            &Wire::constant(Fr::from(QTY_SCALE as u64 - 1)).sub(&rest),
        )?,
    );
    let unpaid = owners_exit.sub(&paid);
    cs.equal_if(&unpaid, &amount, &Wire::zero())?;
    lanes.push(
        Lane::Fee,
        cs.mul(
            &unpaid,
            &Wire::constant(Fr::from(QTY_SCALE as u64 - 1)).sub(&d),
        )?,
    );
    // A deficit cover pays at most the deficit: it leaves the account at or below zero.
    lanes.push(
        Lane::Discount,
        cs.mul(&deficit, &a_after)?.scale(-Fr::from(1u64)),
    );
    let a_id = pick(cs, &sel_a, st.accounts.iter().map(|a| a.id.clone()))?;
    let b_id = pick(cs, &sel_b, st.accounts.iter().map(|a| a.id.clone()))?;
    // A trade is between two accounts (the engine's self-trade prevention and its liquidations
    // never pair an account with itself), so its two position registers differ.
    let same = not(&cs.is_nonzero(&a_id.sub(&b_id))?);
    cs.enforce(&trade, &same, &Wire::zero())?;
    // An opened account takes the next id.
    cs.equal_if(&open, &a_id, &st.next_account)?;
    st.next_account = st.next_account.add(&open);

    // Positions: the fill's registers belong to its accounts and instrument.
    for (sel_p, sel) in [(&sel_pa, &sel_a), (&sel_pb, &sel_b)] {
        let owner_reg = pick(cs, sel_p, st.positions.iter().map(|q| q.account.clone()))?;
        cs.equal_if(&trade, &owner_reg, &index_of(sel))?;
        let traded = pick(cs, sel_p, st.positions.iter().map(|q| q.instrument.clone()))?;
        cs.equal(&traded, &instrument)?;
    }
    // A liquidation only reduces the liquidated account's position (b's, before the op): a
    // long of at least the size sold, a short of at least the size bought back; it never opens,
    // grows or flips one.
    let held_b = pick(cs, &sel_pb, st.positions.iter().map(|q| q.qty.clone()))?;
    let left = cs.mul(&sign, &held_b)?.scale(-Fr::from(1u64)).sub(&qty);
    lanes.push(Lane::Left, cs.mul(&liquidation, &left)?);
    // A forced close moves all of b's position, when its owner asked and the instrument is
    // active and marked (a committed mark is positive once posted), and nothing otherwise: b's
    // change is minus `eligible * held` (its size and side follow: a long is sold, a short
    // bought back). It moves at the committed mark, or at 0 when nothing moves; a close that
    // moves nothing posts no side.
    let b_stranger = cs.is_nonzero(&owner.sub(&b_owner))?;
    let inactive = cs.is_nonzero(&status.add_const(-Fr::from(status::ACTIVE)))?;
    let mark = committed_mark;
    let marked = cs.is_nonzero(&mark)?;
    let eligible = cs.mul(
        &cs.mul(&cs.mul(&close, &not(&b_stranger))?, &not(&inactive))?,
        &marked,
    )?;
    let closed = cs.mul(&eligible, &held_b)?;
    cs.equal_if(&close, &taker_moves, &closed.scale(-Fr::from(1u64)))?;
    let moves = cs.is_nonzero(&qty)?;
    cs.equal_if(&close, &price, &cs.mul(&moves, &mark)?)?;
    cs.enforce(&close, &cs.mul(&taker_buys, &not(&moves))?, &Wire::zero())?;
    // What the shorts can owe at worst follows the trade: each register's short part follows
    // its quantity, and its account's liability moves by the change times the instrument's
    // worst-case payoff per contract.
    let held_a = pick(cs, &sel_pa, st.positions.iter().map(|q| q.qty.clone()))?;
    let (qty_before, short_before) = st
        .positions
        .iter()
        .map(|q| (q.qty.clone(), q.short.clone()))
        .unzip();
    let short_a = short_part(cs, &held_a.sub(&taker_moves))?;
    let short_b = short_part(cs, &held_b.add(&taker_moves))?;
    let moved_a = short_a.sub(&pick(
        cs,
        &sel_pa,
        st.positions.iter().map(|q| q.short.clone()),
    )?);
    let moved_b = short_b.sub(&pick(
        cs,
        &sel_pb,
        st.positions.iter().map(|q| q.short.clone()),
    )?);
    let payoff = pick(
        cs,
        &sel_i,
        st.instruments.iter().map(|i| i.max_payoff.clone()),
    )?;
    let (owed_a, owed_b) = (cs.mul(&payoff, &moved_a)?, cs.mul(&payoff, &moved_b)?);
    for (a, (x, y)) in st.accounts.iter_mut().zip(sel_a.iter().zip(&sel_b)) {
        a.liability = a
            .liability
            .add(&cs.mul(x, &owed_a)?)
            .add(&cs.mul(y, &owed_b)?);
    }
    for (q, (x, y)) in st.positions.iter_mut().zip(sel_pa.iter().zip(&sel_pb)) {
        q.qty = q
            .qty
            .sub(&cs.mul(x, &taker_moves)?)
            .add(&cs.mul(y, &taker_moves)?);
        q.short = q
            .short
            .add(&cs.mul(x, &moved_a)?)
            .add(&cs.mul(y, &moved_b)?);
    }

    st.fee_pool = st.fee_pool.add(&cs.mul(&fill, &maker_fee.add(&taker_fee))?);
    // The posted words: the ids, side, price and quantity in one; the amount and priority id
    // in a second where the kind has them; then an opened account's owner, or the owner a
    // withdrawal pays: an address (zero for the kinds that name none, which the lane's other
    // checks belong to).
    lanes.push(Lane::Uncovered, owner.clone());
    let head = pack(&[
        (&kind_code, 0),
        (&a_id, at::A),
        (&b_id, at::B),
        (&instrument, at::INSTRUMENT),
        (&taker_buys, at::SMALL),
        (&price, at::PRICE),
        (&qty, at::QTY),
    ]);
    st.poly.push(cs, &used, &[head])?;
    st.poly
        .push(cs, &has_amount, &[pack(&[(&amount, 0), (&priority, 63)])])?;
    st.poly
        .push(cs, &names_owner, std::slice::from_ref(&owner))?;
    let moved_value = cs
        .mul(&taker_moves, &mark)?
        .sub(&signed_notional.scale(Fr::from(QTY_SCALE as u64)));
    st.snapshots.push(Snapshot {
        fee: liquidation_fee,
        moved_value,
        id: a_id.add(&cs.mul(&liquidation, &b_id.sub(&a_id))?),
        collateral: a_after.add(&cs.mul(&liquidation, &b_collateral.sub(&a_after))?),
        out,
        covered: flat_slot,
        liquidated,
        ended,
        qty: qty_before,
        short: short_before,
    });
    let record = [
        kind_code, a_id, b_id, instrument, amount, price, qty, taker_buys, priority, owner,
    ];
    lanes.check(cs)?;
    absorb(cs, &mut st.commitment, &used, record)
}

/// Bits of a margin slot's total: a stress total's `|collateral| * 1e8 < 2^90`, each
/// instrument's `|q * (mark + RA[s])| < 2^127` and at most 2^7 instruments, and a maintenance
/// total's scaled by at most 1e4 < 2^14, so a total below zero (`p - |t|`) is far above `2^150`.
const MARGIN_BITS: usize = 150;

/// Bits of a liquidation's shortfall (`floor + allowance - 1 - total`: the floor below 2^180).
const SHORTFALL_BITS: usize = MARGIN_BITS + 32;

/// Basis points in one.
const BPS: u64 = 10_000;

/// The worst-case payoff per contract of a spec's opened terms
/// (`InstrumentSpec::max_payoff_per_contract`): a call's `cap - strike`, a put's strike, a
/// perpetual's cap, times the multiplier, / 1e8 rounded up (below 2^72: a listing's cap and
/// multiplier are bounded).
fn max_payoff(cs: &Cs, spec: &SpecWires) -> R<Wire> {
    ceil_div(cs, &payoff_scaled(cs, spec)?, QTY_SCALE as u64, 72)
}

/// The worst-case payoff per contract times 1e8, unrounded: a call's `cap - strike`, a put's
/// strike, a perpetual's cap, times the multiplier (below 2^72 * 1e8 < 2^99).
fn payoff_scaled(cs: &Cs, spec: &SpecWires) -> R<Wire> {
    let per_unit = spec
        .cap
        .sub(&cs.mul(&spec.is_put, &spec.cap)?)
        .sub(&cs.mul(&spec.is_call, &spec.strike)?)
        .add(&cs.mul(&spec.is_put, &spec.strike)?);
    cs.mul(&per_unit, &spec.multiplier)
}

/// The short part of `q`, `max(-q, 0)`: `q` split into its long and short parts (`q = long -
/// short`, `long * short = 0`, each below 2^64), for a quantity below 2^63 in size one way only.
fn short_part(cs: &Cs, q: &Wire) -> R<Wire> {
    let negative = signed_order(q.value) < signed_order(Fr::from(0u64));
    let (long, short) = if negative {
        (Fr::from(0u64), -q.value)
    } else {
        (q.value, Fr::from(0u64))
    };
    let (long, short) = (cs.witness(long)?, cs.witness(short)?);
    cs.equal(&long.sub(&short), q)?;
    cs.enforce(&long, &short, &Wire::zero())?;
    cs.range(&long, 64)?;
    cs.range(&short, 64)?;
    Ok(short)
}

/// `min(index, cap)` of an index below 2^63 and a cap below 2^64: `index < cap` or not, the
/// difference the other way below 2^64.
fn clamped(cs: &Cs, index: &Wire, cap: &Wire) -> R<Wire> {
    let below = cs.boolean(signed_order(index.value) < signed_order(cap.value))?;
    let room = cap.sub(index);
    // below: cap - index - 1; otherwise index - cap.
    let gap = cs.mul(
        &below,
        &room.scale(Fr::from(2u64)).add_const(-Fr::from(1u64)),
    )?;
    cs.range(&gap.sub(&room), 64)?;
    Ok(cap.sub(&cs.mul(&below, &room)?))
}

/// `floor(value * multiplier / 1e8)` of a value at most the spec's cap and its opened terms
/// (each below 2^64, as listed): the quotient below 2^100 and the remainder below 1e8 make it
/// exact.
fn fee_reference(cs: &Cs, value: &Wire, spec: &SpecWires) -> R<Wire> {
    let product = cs.mul(value, &spec.multiplier)?;
    let value = u128::from_le_bytes(
        product.value.into_bigint().to_bytes_le()[..16]
            .try_into()
            .expect("16 bytes"),
    );
    let q = QTY_SCALE as u128;
    let quotient = cs.witness(Fr::from(value / q))?;
    let remainder = cs.witness(Fr::from((value % q) as u64))?;
    cs.range(&quotient, 100)?;
    cs.range(&remainder, 27)?;
    cs.range(
        &Wire::constant(Fr::from(QTY_SCALE as u64 - 1)).sub(&remainder),
        27,
    )?;
    cs.equal(
        &quotient.scale(Fr::from(QTY_SCALE as u64)).add(&remainder),
        &product,
    )?;
    Ok(quotient)
}

/// `ceil(x / d)` of a non-negative `x` below `d * 2^bits`: the quotient below `2^bits` and
/// `0 <= q * d - x < d` make it exact.
fn ceil_div(cs: &Cs, x: &Wire, d: u64, bits: usize) -> R<Wire> {
    let (quotient, rem) = long_division(x.value, d);
    let q = cs.witness(quotient + Fr::from(u64::from(rem != 0)))?;
    let over = q.scale(Fr::from(d)).sub(x);
    let d_bits = (u64::BITS - d.leading_zeros()) as usize;
    cs.range(&q, bits)?;
    cs.range(&over, d_bits)?;
    cs.range(&Wire::constant(Fr::from(d - 1)).sub(&over), d_bits)?;
    Ok(q)
}

/// `floor(x / d)` of a non-negative `x`, checked to be below `2^bits`.
fn floor_div(cs: &Cs, x: &Wire, d: u64, bits: usize) -> R<Wire> {
    let q = cs.witness(long_division(x.value, d).0)?;
    let rem = x.sub(&q.scale(Fr::from(d)));
    let d_bits = (u64::BITS - d.leading_zeros()) as usize;
    cs.range(&q, bits)?;
    cs.range(&rem, d_bits)?;
    cs.range(&Wire::constant(Fr::from(d - 1)).sub(&rem), d_bits)?;
    Ok(q)
}

/// The quotient and remainder of a field element, read as an integer, by `d`.
fn long_division(x: Fr, d: u64) -> (Fr, u128) {
    // The value's four limbs, most significant first.
    let mut limbs = x.into_bigint().0;
    let mut rem = 0u128;
    for limb in limbs.iter_mut().rev() {
        let cur = (rem << 64) | u128::from(*limb);
        *limb = (cur / u128::from(d)) as u64;
        rem = cur % u128::from(d);
    }
    (
        Fr::from_bigint(ark_ff::BigInt(limbs)).unwrap_or_default(),
        rem,
    )
}

/// A field element read as a signed integer of under 2^140 bits (negatives are `p - |t|`), as
/// a key that orders such integers.
fn signed_order(v: Fr) -> <Fr as PrimeField>::BigInt {
    (v + pow2(140)).into_bigint()
}

/// The stress rule, once for each op that takes money out of an account (the engine's
/// `stress_free`, docs/risk.md): right after the op, for every scenario `s` of the committed
/// risk arrays and the no-move one,
/// `collateral * 1e8 + sum_i q_i * (mark_i + RA_i[s]) >= 0` over all the account's positions.
/// And the `Portfolio` maintenance rule, once for each account that traded in the batch (a
/// fill's maker or taker) and ends it in `Portfolio` (an `end` slot): after the batch, in
/// every scenario and the no-move one, `collateral * 1e8 * 1e4 + sum_i q_i * (mark_i * 1e4 +
/// RA_i[s] * PROVEN_PM_MAINTENANCE_BPS)` covers `ceil(PROVEN_PM_SHORT_OPTION_FLOOR_BPS *
/// PROVEN_PM_MAINTENANCE_BPS * sum_i short_i * index_i * multiplier_i / 1e12)` over its short
/// options (`SettlementState::maintained`).
/// All of them are priced: the account's registers hold every position it held before the
/// batch (the write-back checks their count against its leaf) and those the batch opened, and
/// each register's instrument is loaded with its committed mark and risk array.
/// And the `Standard` maintenance rule, once for each account that traded and ends the batch in
/// `Standard` (an `end` slot too): after the batch, `collateral * 1e8 * 1e4 + sum_perpetuals
/// (q_i * 1e4 - |q_i| * PROVEN_STANDARD_PERP_MAINTENANCE_BPS) * mark_i - sum_options short_i *
/// mark_i * 1e4 * (2, or 1 once settled)` covers `ceil(STANDARD_SHORT_OPTION_MAINTENANCE_BPS *
/// 1e4 * sum_i short_i * index_i * multiplier_i / 1e12)` over its short options.
/// `prices[r][i]`: instrument register `i` prices position register `r` (same id, in use);
/// `modes[k]`: account register `k`'s margin mode after the batch.
fn margin_slots(
    cs: &Cs,
    w: &BatchWitness,
    st: &Running,
    prices: &[Vec<Wire>],
    modes: &[Modes],
) -> R<()> {
    // The index takes the first of the hashed places.
    let scenarios = (w.shape.risk_chunks * RISK_CHUNK).saturating_sub(1);
    let mut checked = vec![Wire::zero(); st.snapshots.len()];
    // End slots per account register.
    let mut maintained = vec![Wire::zero(); st.accounts.len()];
    let weight = Fr::from(u64::from(PROVEN_PM_MAINTENANCE_BPS));
    // The floor per short contract of each position register's instrument.
    let units: Vec<Wire> = prices
        .iter()
        .map(|row| pick(cs, row, st.instruments.iter().map(|i| i.floor_unit.clone())))
        .collect::<R<_>>()?;
    let floor_rate = Fr::from(
        u64::from(PROVEN_PM_SHORT_OPTION_FLOOR_BPS) * u64::from(PROVEN_PM_MAINTENANCE_BPS),
    );
    let standard_rate = Fr::from(u64::from(STANDARD_SHORT_OPTION_MAINTENANCE_BPS) * BPS);
    // Each position register's `Standard` terms per contract and per short contract, but for
    // the index's.
    let mut per_q = Vec::with_capacity(prices.len());
    let mut per_short = Vec::with_capacity(prices.len());
    for row in prices {
        per_q.push(pick(
            cs,
            row,
            st.instruments.iter().map(|i| i.standard_q.clone()),
        )?);
        per_short.push(pick(
            cs,
            row,
            st.instruments.iter().map(|i| i.standard_short.clone()),
        )?);
    }
    let standard_mode: Vec<Wire> = modes
        .iter()
        .map(|m| not(&m.worst_case.add(&m.portfolio)))
        .collect();
    for m in &w.margins {
        let enabled = cs.boolean(m.enabled)?;
        // A flat slot proves instead that a deficit cover's account holds no position; an end
        // slot, the maintenance rule after the batch; a below slot, that a liquidation's
        // account falls short of that rule before the op.
        // A cured slot, that an auction's end's account meets that rule before the op.
        let flat = cs.boolean(m.flat)?;
        let end = cs.boolean(m.end)?;
        let below = cs.boolean(m.below)?;
        let cured = cs.boolean(m.cured)?;
        cs.equal_if(&flat, &enabled, &one())?;
        cs.equal_if(&end, &enabled, &one())?;
        cs.equal_if(&below, &enabled, &one())?;
        cs.equal_if(&cured, &enabled, &one())?;
        cs.assert_boolean(&Wire::sum([&flat, &end, &below, &cured]))?;
        let at_op = enabled.sub(&end);
        let (sel_k, sum_k) = selector(cs, st.snapshots.len(), m.slot)?;
        cs.equal(&sum_k, &at_op)?;
        let (sel_a, sum_a) = selector(cs, st.accounts.len(), m.account)?;
        cs.equal(&sum_a, &enabled)?;
        for (c, s) in checked.iter_mut().zip(&sel_k) {
            *c = c.add(s);
        }
        for (n, x) in maintained.iter_mut().zip(&sel_a) {
            *n = n.add(&cs.mul(&end, x)?);
        }
        // The op's account (a liquidation's liquidated one); money left it, or it holds
        // nothing, or it was liquidated; its registers hold all it held.
        let snap_id = pick(cs, &sel_k, st.snapshots.iter().map(|x| x.id.clone()))?;
        let id = pick(cs, &sel_a, st.accounts.iter().map(|a| a.id.clone()))?;
        cs.equal(&snap_id, &id.sub(&cs.mul(&end, &id)?))?;
        let out = pick(cs, &sel_k, st.snapshots.iter().map(|x| x.out.clone()))?;
        cs.equal(&out, &at_op.sub(&flat).sub(&below).sub(&cured))?;
        let covered = pick(cs, &sel_k, st.snapshots.iter().map(|x| x.covered.clone()))?;
        cs.equal(&covered, &flat)?;
        let liquidated = pick(
            cs,
            &sel_k,
            st.snapshots.iter().map(|x| x.liquidated.clone()),
        )?;
        cs.equal(&liquidated, &below)?;
        let ended = pick(cs, &sel_k, st.snapshots.iter().map(|x| x.ended.clone()))?;
        cs.equal(&ended, &cured)?;
        let margined = pick(cs, &sel_a, st.accounts.iter().map(|a| a.margined.clone()))?;
        cs.equal(&margined, &enabled)?;
        // The mode: an end slot's as the batch leaves the account, a below slot's as the batch
        // found it (mode changes apply after the op slots), never `WorstCase` (the engine
        // never liquidates such an account).
        let mode0 = pick(cs, &sel_a, st.accounts.iter().map(|a| a.mode0.clone()))?;
        let (code0, worst_case0, portfolio0) =
            mode_code(cs, mode0.value.into_bigint().as_ref()[0] as u8)?;
        cs.equal(&code0, &mode0)?;
        let at_op_rule = below.add(&cured);
        cs.equal(&cs.mul(&at_op_rule, &worst_case0)?, &Wire::zero())?;
        let standard_end = cs.mul(&end, &pick(cs, &sel_a, standard_mode.iter().cloned())?)?;
        let standard0 = not(&portfolio0);
        let standard_below = cs.mul(&below, &standard0)?;
        let standard_cured = cs.mul(&cured, &standard0)?;
        let in_standard = Wire::sum([&standard_end, &standard_below, &standard_cured]);
        // The slots that price a maintenance rule.
        let maintenance = Wire::sum([&end, &below, &cured]);
        // (A flat slot prices nothing: its collateral, in deficit, counts as zero.) An end
        // slot's account as the batch leaves it.
        let collateral = pick(
            cs,
            &sel_k,
            st.snapshots.iter().map(|x| x.collateral.clone()),
        )?;
        let collateral = collateral.sub(&cs.mul(&flat, &collateral)?);
        let last = pick(cs, &sel_a, st.accounts.iter().map(|a| a.collateral.clone()))?;
        let collateral = collateral.add(&cs.mul(&end, &last)?);
        // Its quantity per instrument register.
        let account = index_of(&sel_a);
        let mut held = vec![Wire::zero(); st.instruments.len()];
        let (mut floor, mut standard_terms, mut allowance) =
            (Wire::zero(), Wire::zero(), Wire::zero());
        for (r, q) in st.positions.iter().enumerate() {
            // (A read-only register holds its leaf's quantity throughout; `belongs` below is
            // zero in a slot not in use.)
            let (qty, short) = if r >= st.writable {
                (q.qty.clone(), q.short.clone())
            } else {
                let qty = pick(cs, &sel_k, st.snapshots.iter().map(|x| x.qty[r].clone()))?;
                let qty = qty.add(&cs.mul(&end, &q.qty)?);
                let short = pick(cs, &sel_k, st.snapshots.iter().map(|x| x.short[r].clone()))?;
                (qty, short.add(&cs.mul(&end, &q.short)?))
            };
            let same = not(&cs.is_nonzero(&q.account.sub(&account))?);
            let belongs = cs.mul(&cs.mul(&same, &q.enabled)?, &enabled)?;
            // Each of its positions is priced by exactly one instrument register.
            cs.equal_if(&belongs, &Wire::sum(&prices[r]), &one())?;
            let mine = cs.mul(&belongs, &qty)?;
            cs.equal_if(&flat, &mine, &Wire::zero())?;
            for (h, price) in held.iter_mut().zip(&prices[r]) {
                *h = h.add(&cs.mul(price, &mine)?);
            }
            // Its short options for their floor, all its positions for the Standard rule, and
            // the engine's rounding allowance per position held and per short contract
            // (`optio_state::liquidation_rounding`): read by the maintenance slots only.
            let mine_short = cs.mul(&belongs, &short)?;
            floor = floor.add(&cs.mul(&mine_short, &units[r])?);
            standard_terms = standard_terms
                .add(&cs.mul(&mine, &per_q[r])?)
                .sub(&cs.mul(&mine_short, &per_short[r])?);
            allowance = allowance
                .add(&cs.is_nonzero(&mine)?.scale(Fr::from(ROUNDING_PER_POSITION)))
                .add(&mine_short.scale(Fr::from(ROUNDING_PER_SHORT)));
        }
        // The floor in the totals' unit (1e-12 micro-USDC), rounded up, at the rate of the
        // mode: terms below 2^196, the sum times a rate below 2^219, the quotient below 2^180.
        const TOTAL_UNIT: u64 = 1_000_000_000_000;
        let floor = cs.mul(&maintenance, &floor)?;
        let rated = floor.scale(floor_rate).add(
            &cs.mul(&in_standard, &floor)?
                .scale(standard_rate - floor_rate),
        );
        let floor = floor_div(
            cs,
            &rated.add_const(Fr::from(TOTAL_UNIT - 1)),
            TOTAL_UNIT,
            180,
        )?;
        let base = held.iter().zip(&st.instruments).try_fold(
            collateral.scale(Fr::from(QTY_SCALE as u64)),
            |acc, (q, i)| Ok::<_, SynthesisError>(acc.add(&cs.mul(q, &i.mark)?)),
        )?;
        // A liquidation's fee (none in other slots) is at most the account's equity at the
        // marks after the position moved: `equity + moved_value - fee * 1e8 >= 0` when the fee
        // is not zero (the equity below 2^137 in size: 150 bits hold it, a negative one is far
        // above them).
        let fee = pick(cs, &sel_k, st.snapshots.iter().map(|x| x.fee.clone()))?;
        let moved_value = pick(
            cs,
            &sel_k,
            st.snapshots.iter().map(|x| x.moved_value.clone()),
        )?;
        let left = base
            .add(&moved_value)
            .sub(&fee.scale(Fr::from(QTY_SCALE as u64)));
        // Checked in the no-move total's lane below: a below slot checks no total.
        let left = cs.mul(&cs.mul(&below, &cs.is_nonzero(&fee)?)?, &left)?;
        // Scaled by 1e4 in a maintenance slot; in a Standard one, that rule's total instead.
        let base = base.add(&cs.mul(&maintenance, &base)?.scale(Fr::from(BPS - 1)));
        let standard_total = collateral
            .scale(Fr::from(QTY_SCALE as u64 * BPS))
            .add(&standard_terms);
        let base = base.add(&cs.mul(&in_standard, &standard_total.sub(&base))?);
        let mut totals = vec![base.clone()];
        for s in 0..scenarios {
            let moved = held
                .iter()
                .zip(&st.instruments)
                .try_fold(Wire::zero(), |acc, (q, i)| {
                    Ok::<_, SynthesisError>(acc.add(&cs.mul(q, &i.risk[s])?))
                })?;
            // Weighted by PROVEN_PM_MAINTENANCE_BPS in a maintenance slot.
            let moved = moved.add(&cs.mul(&maintenance, &moved)?.scale(weight - Fr::from(1u64)));
            totals.push(base.add(&moved));
        }
        // Money that left leaves every total non-negative; an account that traded, every
        // total of its mode's rule at or above its short options' floor (none in other slots):
        // Standard has no scenarios. A below slot checks none of them (its bound is zero) but
        // the fee above and the shortfall below, which share the first two totals' checks (a
        // lane holds one value or none; a negative value, `p - |v|` with `|v|` below 2^182, is
        // far above either width, so the wider check refuses what the narrower one did).
        let bound = Wire::sum([&out, &end, &cured]);
        let moved_bound = bound.sub(&standard_end).sub(&standard_cured);
        let mut lanes: Vec<Wire> = totals
            .iter()
            .enumerate()
            .map(|(s, total)| {
                let bound = if s == 0 { &bound } else { &moved_bound };
                cs.mul(bound, &total.sub(&floor))
            })
            .collect::<R<_>>()?;
        lanes[0] = lanes[0].add(&left);
        // A liquidated account had one total (the prover names it; Standard's only one) short
        // of its floor by more than the allowance: `floor + allowance - 1 - total` is
        // non-negative (the floor below 2^180, a total above -2^150: 182 bits hold it; a total
        // that covers the two makes it far above them).
        let (sel_s, sum_s) = selector(cs, totals.len(), m.scenario)?;
        cs.equal(&sum_s, &below)?;
        cs.equal(
            &cs.mul(&standard_below, &sum_s.sub(&sel_s[0]))?,
            &Wire::zero(),
        )?;
        let short_total = pick(cs, &sel_s, totals.iter().cloned())?;
        let shortfall = floor
            .add(&allowance)
            .add_const(-Fr::from(1u64))
            .sub(&short_total);
        let shortfall = cs.mul(&below, &shortfall)?;
        match lanes.get_mut(1) {
            Some(lane) => *lane = lane.add(&shortfall),
            None => lanes.push(shortfall),
        }
        for (s, lane) in lanes.iter().enumerate() {
            let bits = if s == 1 { SHORTFALL_BITS } else { MARGIN_BITS };
            cs.range(lane, bits)?;
        }
    }
    // Every op that takes money out, every deficit cover and every priced liquidation has
    // exactly one margin slot.
    for (c, x) in checked.iter().zip(&st.snapshots) {
        cs.equal(c, &Wire::sum([&x.out, &x.covered, &x.liquidated, &x.ended]))?;
    }
    // Every account that traded and ends the batch in Portfolio or Standard has exactly one end
    // slot.
    for ((n, a), m) in maintained.iter().zip(&st.accounts).zip(modes) {
        let traded = cs.is_nonzero(&a.traded)?;
        cs.equal(n, &cs.mul(&traded, &not(&m.worst_case))?)?;
    }
    Ok(())
}

/// `h = Poseidon(h, key, expiry)` over the entries in use, from 0: `leaf::keys_hash`.
fn keys_hash(cs: &Cs, entries: &[(Wire, Wire)], present: &[Wire]) -> R<Wire> {
    let mut h = Wire::zero();
    for ((key, expiry), p) in entries.iter().zip(present) {
        let next = cs.poseidon(&[h.clone(), key.clone(), expiry.clone()])?;
        h = cs.select(p, &next, &h)?;
    }
    Ok(h)
}

/// A key list's (address, expiry) entries and their in-use flags.
type KeyList = (Vec<(Wire, Wire)>, Vec<Wire>);

/// A key list's entries and their in-use flags, which must form a prefix.
fn key_list(cs: &Cs, list: &[(Fr, u64)], len: usize) -> R<KeyList> {
    let mut entries = Vec::with_capacity(list.len());
    let mut present: Vec<Wire> = Vec::with_capacity(list.len());
    for (i, (key, expiry)) in list.iter().enumerate() {
        let p = cs.boolean(i < len)?;
        if let Some(previous) = present.last() {
            cs.equal_if(&p, previous, &one())?;
        }
        let (key, expiry) = (cs.witness(*key)?, cs.witness(Fr::from(*expiry))?);
        // Unused entries are zero, so a list has one encoding.
        cs.equal_if(&not(&p), &key, &Wire::zero())?;
        cs.equal_if(&not(&p), &expiry, &Wire::zero())?;
        cs.range(&key, 160)?;
        cs.range(&expiry, 64)?;
        entries.push((key, expiry));
        present.push(p);
    }
    Ok((entries, present))
}

/// A session key registered until `expiry` (0: revoked) on one account, the keys expired at
/// `at` dropped first: the account's key list before (whose hash is the register's) and after
/// (whose hash the register takes), the list after sorted by address with no repeats, and every
/// entry after taken from exactly one source: an entry before that is kept (live at `at` and
/// not the key), each used exactly once, or the key itself, used once unless revoked.
///
/// Or, instead of a key (`moded`), the account's margin mode changes: the new mode's code from
/// two bits (Standard, Portfolio; not both), the key fields zero and the key list unchanged.
fn key_slot(cs: &Cs, o: &KeySlot, st: &mut Running) -> R<()> {
    let enabled = cs.boolean(o.enabled)?;
    let (sel, sum) = selector(cs, st.accounts.len(), o.account)?;
    cs.equal(&sum, &enabled)?;
    for (a, x) in st.accounts.iter_mut().zip(&sel) {
        a.used = a.used.add(x);
    }
    let moded = cs.boolean(o.mode.is_some())?;
    cs.equal_if(&not(&enabled), &moded, &Wire::zero())?;
    let (mode, _, _) = mode_code(cs, o.mode.map_or(0, MarginMode::code))?;
    cs.equal_if(&not(&moded), &mode, &Wire::zero())?;
    let current = pick(cs, &sel, st.accounts.iter().map(|a| a.mode.clone()))?;
    // Not of an account in liquidation as the op slots leave it (frozen: `since` not 0).
    let since = pick(cs, &sel, st.accounts.iter().map(|a| a.since.clone()))?;
    cs.enforce(&moded, &cs.is_nonzero(&since)?, &Wire::zero())?;
    let switch = cs.mul(&moded, &mode.sub(&current))?;
    for (a, x) in st.accounts.iter_mut().zip(&sel) {
        a.mode = a.mode.add(&cs.mul(x, &switch)?);
    }

    // A session key's.
    let keyed = enabled.sub(&moded);
    let key = cs.witness(o.key)?;
    let expiry = cs.witness(Fr::from(o.expiry))?;
    let at = cs.witness(Fr::from(o.at))?;
    cs.range(&key, 160)?;
    cs.range(&expiry, 64)?;
    cs.range(&at, 64)?;
    for field in [&key, &expiry, &at] {
        cs.equal_if(&not(&keyed), field, &Wire::zero())?;
    }

    let (old, old_present) = key_list(cs, &o.old, o.old_len)?;
    let before = pick(cs, &sel, st.accounts.iter().map(|a| a.keys.clone()))?;
    cs.equal_if(&keyed, &keys_hash(cs, &old, &old_present)?, &before)?;
    let mut kept = Vec::with_capacity(old.len());
    for (((k, e), p), (_, expires)) in old.iter().zip(&old_present).zip(&o.old) {
        // live: e > at, else e <= at.
        let live = cs.boolean(o.at < *expires)?;
        let gap = cs.select(&live, &e.sub(&at).add_const(-Fr::from(1u64)), &at.sub(e))?;
        cs.range(&gap, 64)?;
        let other = cs.is_nonzero(&k.sub(&key))?;
        kept.push(cs.mul(&cs.mul(p, &live)?, &other)?);
    }

    let (new, new_present) = key_list(cs, &o.new, o.new_len)?;
    let adds = cs.is_nonzero(&expiry)?;
    let mut inserted = Wire::zero();
    let mut taken = vec![Wire::zero(); old.len()];
    for (j, ((k, e), q)) in new.iter().zip(&new_present).enumerate() {
        let source = o.sources.get(j).copied();
        let from_key = cs.boolean(source == Some(None))?;
        let mut count = from_key.clone();
        let (mut k_src, mut e_src) = (cs.mul(&from_key, &key)?, cs.mul(&from_key, &expiry)?);
        for (i, (ok, oe)) in old.iter().enumerate() {
            let s = cs.boolean(source == Some(Some(i)))?;
            k_src = k_src.add(&cs.mul(&s, ok)?);
            e_src = e_src.add(&cs.mul(&s, oe)?);
            taken[i] = taken[i].add(&s);
            count = count.add(&s);
        }
        cs.equal(&count, q)?;
        cs.equal(k, &k_src)?;
        cs.equal(e, &e_src)?;
        inserted = inserted.add(&from_key);
        if j > 0 {
            // Strictly increasing addresses while in use.
            let step = k.sub(&new[j - 1].0).add_const(-Fr::from(1u64));
            cs.range(&cs.mul(q, &step)?, 160)?;
        }
    }
    for (t, k) in taken.iter().zip(&kept) {
        cs.equal(t, k)?;
    }
    cs.equal(&inserted, &adds)?;

    let after = keys_hash(cs, &new, &new_present)?;
    let change = cs.mul(&keyed, &after.sub(&before))?;
    for (a, x) in st.accounts.iter_mut().zip(&sel) {
        a.keys = a.keys.add(&cs.mul(x, &change)?);
    }
    let account = pick(cs, &sel, st.accounts.iter().map(|a| a.id.clone()))?;
    // A key's words `[23 | account | expiry | at, key]`, a mode's `[28 | account | mode]`.
    let kind_code = keyed
        .scale(Fr::from(kind::SESSION_KEY))
        .add(&moded.scale(Fr::from(kind::MARGIN_MODE)));
    let small = expiry.add(&mode);
    let head = pack(&[
        (&kind_code, 0),
        (&account, at::A),
        (&small, at::SMALL),
        (&at, at::QTY),
    ]);
    st.poly.push(cs, &enabled, &[head])?;
    st.poly.push(cs, &keyed, std::slice::from_ref(&key))?;
    let record = [
        kind_code,
        account,
        Wire::zero(),
        Wire::zero(),
        small,
        at,
        Wire::zero(),
        Wire::zero(),
        Wire::zero(),
        key,
    ];
    absorb(cs, &mut st.commitment, &enabled, record)
}

/// Bits of `collateral * 1e8 - liability` when not negative (the collateral is below 2^63).
const COVER_BITS: usize = 90;

/// A margin mode's code (`MarginMode::code`: 0, 1 or 2) from two bits, Standard and Portfolio,
/// not both; whether it is WorstCase's (neither); and whether it is Portfolio's.
fn mode_code(cs: &Cs, code: u8) -> R<(Wire, Wire, Wire)> {
    let standard = cs.boolean(code == MarginMode::Standard.code())?;
    let portfolio = cs.boolean(code == MarginMode::Portfolio.code())?;
    cs.equal(&cs.mul(&standard, &portfolio)?, &Wire::zero())?;
    Ok((
        standard.add(&portfolio.scale(Fr::from(2u64))),
        not(&standard.add(&portfolio)),
        portfolio,
    ))
}

/// `h = Poseidon(h, record)` for a slot in use; an unused slot leaves `h` as it is, so the
/// commitment depends on the batch's ops alone, not on the shape that proves them.
fn absorb(cs: &Cs, commitment: &mut Wire, used: &Wire, record: [Wire; 10]) -> R<()> {
    let mut inputs = vec![commitment.clone()];
    inputs.extend(record);
    let next = cs.poseidon(&inputs)?;
    *commitment = cs.select(used, &next, commitment)?;
    Ok(())
}

/// The opened inputs of a spec hash.
struct SpecWires {
    maker_rate: Wire,
    taker_rate: Wire,
    is_call: Wire,
    is_put: Wire,
    strike: Wire,
    cap: Wire,
    multiplier: Wire,
}

/// `spec_hash` from its opening (`optio_state::leaf::spec_hash`), and the opened fields.
fn spec_wires(cs: &Cs, o: &SpecOpening) -> R<(Wire, SpecWires)> {
    let bytes_hash = cs.witness(o.bytes_hash)?;
    spec_wires_over(cs, o, bytes_hash)
}

/// `spec_wires` with the hash of the spec's bytes given.
fn spec_wires_over(cs: &Cs, o: &SpecOpening, bytes_hash: Wire) -> R<(Wire, SpecWires)> {
    let is_call = cs.boolean(o.payoff == 1)?;
    let is_put = cs.boolean(o.payoff == 2)?;
    cs.assert_boolean(&is_call.add(&is_put))?;
    let w = SpecWires {
        maker_rate: cs.witness(o.maker_rate)?,
        taker_rate: cs.witness(o.taker_rate)?,
        strike: cs.witness(o.strike)?,
        cap: cs.witness(o.cap)?,
        multiplier: cs.witness(o.multiplier)?,
        is_call,
        is_put,
    };
    let payoff = w.is_call.add(&w.is_put.scale(Fr::from(2u64)));
    let hash = cs.poseidon(&[
        bytes_hash,
        w.maker_rate.clone(),
        w.taker_rate.clone(),
        payoff,
        w.strike.clone(),
        w.cap.clone(),
        w.multiplier.clone(),
    ])?;
    Ok((hash, w))
}

/// A listing's opened terms are the ones its posted bytes hold (`leaf::spec_bytes`: fixed
/// offsets in the first two chunks, which a spec of 65 to 81 bytes fills), and the bytes are
/// what `leaf::spec_from_bytes` decodes: a payoff kind of 0 to 2, a perpetual's date and strike
/// zero, an option's date on the calendar from 2000 to 2099, and a symbol of `A-Z 0-9 _`.
/// `bytes` is the length in unary; `chunk_bits[k]` the bits of chunk k, low first (the range
/// checks' decomposition, reused: reading a byte or its sign costs no constraint).
fn spec_terms_from_bytes(
    cs: &Cs,
    list: &Wire,
    len: &Wire,
    bytes: &[Wire],
    chunk_bits: &[Vec<Wire>],
    terms: &SpecWires,
) -> R<()> {
    let n = at::SPEC_CHUNK;
    // The bits of byte p of the spec, low first, for p in the two full chunks.
    let bits_of = |p: usize| {
        let low_end = n - 1 - p % n;
        &chunk_bits[p / n][8 * low_end..8 * low_end + 8]
    };
    let byte = |p: usize| byte_of(bits_of(p));
    let unsigned = |from: usize, width: usize| {
        (from..from + width).fold(Wire::zero(), |acc, p| {
            acc.scale(Fr::from(256u64)).add(&byte(p))
        })
    };
    // Two's complement: the top bit of the first byte counts -2^(8 width - 1) instead of +.
    let signed = |from: usize, width: usize| {
        unsigned(from, width).sub(&bits_of(from)[7].scale(pow2(8 * width)))
    };
    // 65 <= len <= 81 for a listing.
    let over = len.sub(&list.scale(Fr::from((spec::SYMBOL + 1) as u64)));
    cs.range(&over, 5)?;
    cs.range(
        &list
            .scale(Fr::from((spec::SYMBOL_MAX - 1) as u64))
            .sub(&over),
        5,
    )?;
    let payoff = terms.is_call.add(&terms.is_put.scale(Fr::from(2u64)));
    cs.equal_if(list, &byte(spec::PAYOFF), &payoff)?;
    for (term, at, width) in [
        (&terms.strike, spec::STRIKE, 8),
        (&terms.cap, spec::CAP, 8),
        (&terms.multiplier, spec::MULTIPLIER, 8),
        (&terms.maker_rate, spec::MAKER_FEE, 4),
        (&terms.taker_rate, spec::TAKER_FEE, 4),
    ] {
        cs.equal_if(list, term, &signed(at, width))?;
    }
    let (year, month, day) = (byte(1), byte(2), byte(3));
    let option = cs.mul(list, &terms.is_call.add(&terms.is_put))?;
    let perpetual = list.sub(&option);
    for field in [&year, &month, &day, &unsigned(spec::STRIKE, 8)] {
        cs.equal_if(&perpetual, field, &Wire::zero())?;
    }
    let k = |v: u64| Fr::from(v);
    // An option's date is on the calendar: year at most 99 (from 2000), the month one of twelve,
    // the day from 1 to the month's length (29 in February of a year divisible by 4: 2000 to
    // 2099 need no century rule).
    cs.range(&Wire::constant(k(99)).sub(&year), 7)?;
    let year_bits = bits_of(1);
    let months = (1..=12u64)
        .map(|m| cs.boolean(option.value == Fr::from(1u64) && month.value == Fr::from(m)))
        .collect::<R<Vec<_>>>()?;
    cs.equal(&Wire::sum(&months), &option)?;
    let named = Wire::linear((1..=12u64).map(k).zip(&months));
    cs.equal(&named, &month)?;
    let leap = cs.mul(&not(&year_bits[0]), &not(&year_bits[1]))?;
    let length = [31u64, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
        .iter()
        .zip(&months)
        .fold(cs.mul(&months[1], &leap)?, |acc, (days, flag)| {
            acc.plus(k(*days), flag)
        });
    cs.range(&day.sub(&option), 5)?;
    cs.range(&length.sub(&day), 5)?;
    // The symbol: bytes 64 to len - 1, at the low end of the third chunk (byte b from the low
    // end is a symbol byte when 64 + b < len). Each is a digit, a capital or `_`: with d, l, u
    // its class, `t = v - 48 d - 65 l - 95 u` lies in 0..=9, 0..=25 or is 0.
    for b in 0..spec::SYMBOL_MAX {
        let symbol = &bytes[spec::SYMBOL + b];
        let v = cs.mul(symbol, &byte_of(&chunk_bits[2][8 * b..8 * b + 8]))?;
        let class = |lo: u8, hi: u8| {
            let x = v.value;
            (Fr::from(u64::from(lo))..=Fr::from(u64::from(hi))).contains(&x)
        };
        let d = cs.boolean(class(b'0', b'9'))?;
        let l = cs.boolean(class(b'A', b'Z'))?;
        let u = cs.boolean(class(b'_', b'_'))?;
        cs.equal(&Wire::sum([&d, &l, &u]), symbol)?;
        let t = v
            .sub(&d.scale(k(48)))
            .sub(&l.scale(k(65)))
            .sub(&u.scale(k(95)));
        cs.range(&t, 5)?;
        cs.range(&d.scale(k(9)).add(&l.scale(k(25))).sub(&t), 5)?;
    }
    Ok(())
}

/// 10^16: settlement values are fractions `value * qty / (QTY_SCALE * QTY_SCALE)`.
fn settle_scale() -> Fr {
    Fr::from(QTY_SCALE as u64) * Fr::from(QTY_SCALE as u64)
}

/// An expired instrument settled at `price`: its value per contract from the committed spec
/// (the price clamped to `[0, cap]`, the call's or put's intrinsic value or the perpetual's
/// price, times the multiplier), each holder paid `floor(value * qty / 1e16)` for the quantity
/// settled, all of its position or a part of the same sign (and its collateral left
/// non-negative), the rounding remainder to insurance (the
/// payouts and the credit sum to zero, the credit at most a micro-USDC per holder paid),
/// status expired -> settled, the mark the value rounded down to a micro-USDC and the risk
/// array none. A settled instrument settles again only at its price: the holders a
/// settlement left out (their positions worth the same mark meanwhile).
fn settle_slot(cs: &Cs, o: &SettleSlot, st: &mut Running, instruments_root: &mut Wire) -> R<()> {
    let enabled = cs.boolean(o.enabled)?;
    let instrument = cs.witness(Fr::from(o.instrument))?;
    let bits = cs.bits(&instrument, INSTRUMENT_DEPTH as usize)?;
    cs.equal_if(&not(&enabled), &instrument, &Wire::zero())?;
    let (spec_hash, spec) = spec_wires(cs, &o.spec)?;
    let payoff = max_payoff(cs, &spec)?;
    let status = cs.witness(Fr::from(o.before.status))?;
    let settled_before = cs.witness(from_i64(o.before.settlement_price.0))?;
    let old_leaf = cs.poseidon(&[
        spec_hash.clone(),
        status.clone(),
        cs.witness(from_i64(o.before.mark.0))?,
        cs.witness(o.before.risk_hash)?,
        settled_before.clone(),
    ])?;
    let siblings = cs.witnesses(&o.siblings)?;
    let old_root = cs.merkle_root(&old_leaf, &bits, &siblings)?;
    cs.equal_if(&enabled, &old_root, instruments_root)?;
    // Expired, or settled (`again`) at this very price.
    let again = cs.boolean(o.before.status == status::SETTLED)?;
    cs.equal_if(
        &enabled,
        &status,
        &again.add_const(Fr::from(status::EXPIRED)),
    )?;

    // The value of one contract.
    let price = cs.witness(o.price)?;
    cs.equal_if(&not(&enabled), &price, &Wire::zero())?;
    cs.range(&price.sub(&enabled), 63)?;
    let capped = cs.boolean(o.capped)?;
    cs.range(
        &cs.mul(&capped, &price.sub(&spec.cap).add_const(-Fr::from(1u64)))?,
        63,
    )?;
    cs.range(&cs.mul(&not(&capped), &spec.cap.sub(&price))?, 63)?;
    let s = cs.select(&capped, &spec.cap, &price)?;
    // call: s - K; put: K - s; perpetual: s.
    let put_s = cs.mul(&spec.is_put, &s)?;
    let k_term = cs.mul(&spec.is_put.sub(&spec.is_call), &spec.strike)?;
    let x = s.sub(&put_s.scale(Fr::from(2u64))).add(&k_term);
    let in_money = cs.boolean(o.in_money)?;
    cs.range(&cs.select(&in_money, &x, &x.scale(-Fr::from(1u64)))?, 63)?;
    let per_unit = cs.mul(&in_money, &x)?;
    let value = cs.mul(&per_unit, &spec.multiplier)?;
    cs.equal_if(&again, &price, &settled_before)?;
    // `InstrumentSpec::settled_mark`.
    let settled_mark = floor_div(cs, &value, QTY_SCALE as u64, 63)?;

    let credit = cs.witness(o.insurance_credit)?;
    cs.signed_range(&credit, 64)?;
    cs.equal_if(&not(&enabled), &credit, &Wire::zero())?;
    let kind_code = enabled.scale(Fr::from(kind::SETTLE));
    let head = pack(&[(&kind_code, 0), (&instrument, at::INSTRUMENT)]);
    st.poly
        .push(cs, &enabled, &[head, price.clone(), credit.clone()])?;
    let z = Wire::zero;
    absorb(
        cs,
        &mut st.commitment,
        &enabled,
        [
            kind_code,
            z(),
            z(),
            instrument.clone(),
            credit.clone(),
            price.clone(),
            z(),
            z(),
            z(),
            z(),
        ],
    )?;
    let (mut paid, mut count) = (Wire::zero(), Wire::zero());
    for h in &o.holders {
        let (sel_a, used) = selector(cs, st.accounts.len(), h.account)?;
        let (sel_p, used_p) = selector(cs, st.writable, h.position)?;
        cs.equal(&used_p, &used)?;
        cs.equal_if(&used, &enabled, &one())?;
        for (a, x) in st.accounts.iter_mut().zip(&sel_a) {
            a.used = a.used.add(x);
        }
        for (q, x) in st.positions.iter_mut().zip(&sel_p) {
            q.used = q.used.add(x);
        }
        // The position is this account's, in this instrument.
        let owner_reg = pick(cs, &sel_p, st.positions.iter().map(|q| q.account.clone()))?;
        cs.equal(&owner_reg, &index_of(&sel_a))?;
        let held = pick(
            cs,
            &sel_p,
            st.positions.iter().map(|q| q.instrument.clone()),
        )?;
        cs.equal(&held, &cs.mul(&used, &instrument)?)?;
        // The quantity settled: of the position's sign, at most all of it (an expiry with more
        // holders than a batch holds settles in balanced parts, a holder's position split
        // between two of them).
        let position = pick(cs, &sel_p, st.positions.iter().map(|q| q.qty.clone()))?;
        let qty = cs.witness(h.qty)?;
        let short = cs.boolean(h.short)?;
        cs.equal_if(&not(&used), &qty, &Wire::zero())?;
        let size = cs.select(&short, &qty.scale(-Fr::from(1u64)), &qty)?;
        cs.range(&size.sub(&used), 63)?;
        let rest = position.sub(&qty);
        cs.range(&cs.select(&short, &rest.scale(-Fr::from(1u64)), &rest)?, 63)?;
        // cash = floor(value * qty / 1e16).
        let cash = cs.witness(h.cash)?;
        cs.signed_range(&cash, 64)?;
        let rem = cs.mul(&value, &qty)?.sub(&cash.scale(settle_scale()));
        cs.range(&rem, 54)?;
        cs.range(
            &Wire::constant(settle_scale() - Fr::from(1u64)).sub(&rem),
            54,
        )?;
        cs.equal_if(&not(&used), &cash, &Wire::zero())?;
        for (a, x) in st.accounts.iter_mut().zip(&sel_a) {
            a.collateral = a.collateral.add(&cs.mul(x, &cash)?);
        }
        // What is settled of a short no longer counts in its account's liability.
        let settled_short = cs.mul(&short, &size)?;
        let owed = cs.mul(&payoff, &settled_short)?;
        for (q, x) in st.positions.iter_mut().zip(&sel_p) {
            q.qty = q.qty.sub(&cs.mul(x, &qty)?);
            q.short = q.short.sub(&cs.mul(x, &settled_short)?);
        }
        for (a, x) in st.accounts.iter_mut().zip(&sel_a) {
            a.liability = a.liability.sub(&cs.mul(x, &owed)?);
        }
        let after = pick(cs, &sel_a, st.accounts.iter().map(|a| a.collateral.clone()))?;
        cs.signed_range(&after, 64)?;
        paid = paid.add(&cash);
        count = count.add(&used);
        let account_id = pick(cs, &sel_a, st.accounts.iter().map(|a| a.id.clone()))?;
        let kind_code = used.scale(Fr::from(kind::SETTLE_POSITION));
        let head = pack(&[
            (&kind_code, 0),
            (&account_id, at::A),
            (&held, at::INSTRUMENT),
        ]);
        st.poly
            .push(cs, &used, &[head, cash.clone(), qty.clone()])?;
        absorb(
            cs,
            &mut st.commitment,
            &used,
            [
                kind_code,
                account_id,
                z(),
                held,
                cash,
                z(),
                qty,
                z(),
                z(),
                z(),
            ],
        )?;
    }
    // The payouts and the insurance credit sum to zero; the credit, in `[0, holders]`, is the
    // rounding remainder, not a holder left out (`0 <= -sum floor(v q_i) < holders` when the
    // positions settled sum to zero).
    cs.equal(&credit.add(&paid), &Wire::zero())?;
    cs.range(&credit, 16)?;
    cs.range(&count.sub(&credit), 16)?;
    st.insurance = st.insurance.add(&credit);
    let new_leaf = cs.poseidon(&[
        spec_hash,
        Wire::constant(Fr::from(status::SETTLED)),
        settled_mark,
        Wire::zero(),
        price,
    ])?;
    let new_root = cs.merkle_root(&new_leaf, &bits, &siblings)?;
    *instruments_root = cs.select(&enabled, &new_root, instruments_root)?;
    Ok(())
}

/// A listing (the leaf must be empty; the new one has the listed spec's hash, status listed),
/// an activation (listed to active) or an expiry (active to expired).
fn instrument_op(
    cs: &Cs,
    o: &InstrumentOp,
    instruments_root: &mut Wire,
    next_instrument: &mut Wire,
    commitment: &mut Wire,
    poly: &mut Poly,
) -> R<()> {
    let list = cs.boolean(o.kind == kind::LIST)?;
    let activate = cs.boolean(o.kind == kind::ACTIVATE)?;
    let expire = cs.boolean(o.kind == kind::EXPIRE)?;
    let used = Wire::sum([&list, &activate, &expire]);
    cs.assert_boolean(&used)?;
    let kind_code = list
        .scale(Fr::from(kind::LIST))
        .add(&activate.scale(Fr::from(kind::ACTIVATE)))
        .add(&expire.scale(Fr::from(kind::EXPIRE)));
    let instrument = cs.witness(Fr::from(o.instrument))?;
    let bits = cs.bits(&instrument, INSTRUMENT_DEPTH as usize)?;
    cs.equal_if(&not(&used), &instrument, &Wire::zero())?;
    // A listed instrument takes the next id.
    cs.equal_if(&list, &instrument, next_instrument)?;
    *next_instrument = next_instrument.add(&list);
    let fields = [
        cs.witness(o.before.spec_hash)?,
        cs.witness(Fr::from(o.before.status))?,
        cs.witness(from_i64(o.before.mark.0))?,
        cs.witness(o.before.risk_hash)?,
        cs.witness(from_i64(o.before.settlement_price.0))?,
    ];
    let leaf = cs.poseidon(&fields)?;
    let old_leaf = cs.select(&list, &Wire::zero(), &leaf)?;
    let siblings = cs.witnesses(&o.siblings)?;
    let old_root = cs.merkle_root(&old_leaf, &bits, &siblings)?;
    cs.equal_if(&used, &old_root, instruments_root)?;
    // Listed -> active -> expired, one step at a time.
    let status = &fields[1];
    cs.equal_if(&activate, status, &Wire::constant(Fr::from(status::LISTED)))?;
    cs.equal_if(&expire, status, &Wire::constant(Fr::from(status::ACTIVE)))?;
    // A listing's spec hash, from the posted bytes (`poseidon::hash_bytes`: 31 bytes to a
    // chunk, `h = Poseidon(len)` then `h = Poseidon(h, chunk)`) and the opened terms.
    let len = cs.witness(Fr::from(o.spec_len as u64))?;
    cs.equal_if(&not(&list), &len, &Wire::zero())?;
    // `len` in unary: byte k is there exactly when k < len (at most SPEC_CHUNKS chunks).
    let bytes = (0..SPEC_CHUNKS * at::SPEC_CHUNK)
        .map(|k| cs.boolean(k < o.spec_len))
        .collect::<R<Vec<_>>>()?;
    for k in 1..bytes.len() {
        cs.equal_if(&bytes[k], &bytes[k - 1], &one())?;
    }
    cs.equal(&Wire::sum(&bytes), &len)?;
    let mut chunks_used = Vec::with_capacity(SPEC_CHUNKS);
    let mut bytes_hash = cs.poseidon(std::slice::from_ref(&len))?;
    let chunks = cs.witnesses(&o.spec_chunks[..SPEC_CHUNKS])?;
    let mut chunk_bits: Vec<Vec<Wire>> = Vec::with_capacity(SPEC_CHUNKS);
    for (k, chunk) in chunks.iter().enumerate() {
        let there = &bytes[k * at::SPEC_CHUNK..(k + 1) * at::SPEC_CHUNK];
        let c = there[0].clone();
        let next = cs.poseidon(&[bytes_hash.clone(), chunk.clone()])?;
        bytes_hash = cs.select(&c, &next, &bytes_hash)?;
        // A chunk of n bytes is their big-endian number, below 2^(8 n): its byte b from the
        // low end is zero unless the chunk has more than b bytes (so the decoder reads exactly
        // the bytes hashed).
        let bits = cs.bits(chunk, 8 * at::SPEC_CHUNK)?;
        for (b, present) in there.iter().enumerate() {
            let byte = byte_of(&bits[8 * b..8 * b + 8]);
            cs.equal_if(&not(present), &byte, &Wire::zero())?;
        }
        chunk_bits.push(bits);
        chunks_used.push(c);
    }
    let (listed_hash, terms) = spec_wires_over(cs, &o.spec, bytes_hash)?;
    spec_terms_from_bytes(cs, &list, &len, &bytes, &chunk_bits, &terms)?;
    let spec_hash = cs.mul(&list, &listed_hash)?;
    let head = pack(&[
        (&kind_code, 0),
        (&instrument, at::INSTRUMENT),
        (&len, at::SMALL),
    ]);
    poly.push(cs, &used, &[head])?;
    for (c, chunk) in chunks_used.iter().zip(&chunks) {
        poly.push(cs, c, std::slice::from_ref(chunk))?;
    }
    let zero = Wire::zero();
    let new_leaf = cs.poseidon(&[
        cs.select(&list, &spec_hash, &fields[0])?,
        cs.select(&list, &zero, &status.add(&activate).add(&expire))?,
        cs.select(&list, &zero, &fields[2])?,
        cs.select(&list, &zero, &fields[3])?,
        cs.select(&list, &zero, &fields[4])?,
    ])?;
    let new_root = cs.merkle_root(&new_leaf, &bits, &siblings)?;
    *instruments_root = cs.select(&used, &new_root, instruments_root)?;
    let z = Wire::zero;
    absorb(
        cs,
        commitment,
        &used,
        [
            kind_code,
            z(),
            z(),
            instrument,
            z(),
            z(),
            z(),
            z(),
            z(),
            spec_hash,
        ],
    )
}

/// A mark window: the subtree of `2^bits` instrument leaves from `index << bits` rebuilt from
/// its leaves before (proven by one path against the running root), the marked entries' leaves
/// opened and given their new mark and risk array, and the subtree rebuilt with them (the new
/// root by the same path); `oracle_ms` becomes the latest of it and the marks' publication
/// times. Returns whether it is used, and its index.
fn mark_window(
    cs: &Cs,
    w: &MarkWindow,
    bits: usize,
    instruments_root: &mut Wire,
    oracle_ms: &mut Wire,
    commitment: &mut Wire,
    poly: &mut Poly,
) -> R<(Wire, Wire)> {
    let enabled = cs.boolean(w.enabled)?;
    let index = cs.witness(Fr::from(w.index))?;
    let index_bits = cs.bits(&index, INSTRUMENT_DEPTH as usize - bits)?;
    cs.equal_if(&not(&enabled), &index, &Wire::zero())?;
    let base = index.scale(Fr::from(1u64 << bits));
    let (mut old_leaves, mut new_leaves) = (Vec::new(), Vec::new());
    for (j, e) in w.entries.iter().enumerate() {
        let id = base.add_const(Fr::from(j as u64));
        let (old, new) = mark_entry(cs, e, &enabled, id, oracle_ms, commitment, poly)?;
        old_leaves.push(old);
        new_leaves.push(new);
    }
    let siblings = cs.witnesses(&w.siblings)?;
    let old_root = cs.merkle_root(&subtree(cs, old_leaves)?, &index_bits, &siblings)?;
    cs.equal_if(&enabled, &old_root, instruments_root)?;
    let new_root = cs.merkle_root(&subtree(cs, new_leaves)?, &index_bits, &siblings)?;
    *instruments_root = cs.select(&enabled, &new_root, instruments_root)?;
    Ok((enabled, index))
}

/// The root of a complete arity-4 tree over `leaves` (a power of four of them), left to right.
fn subtree(cs: &Cs, mut level: Vec<Wire>) -> R<Wire> {
    while level.len() > 1 {
        level = level
            .chunks(4)
            .map(|four| cs.poseidon(four))
            .collect::<R<_>>()?;
    }
    Ok(level.pop().expect("a window has an entry"))
}

/// `leaf::risk_hash` of a zero-padded risk array: `h = Poseidon(h, chunk)` from 0 over its
/// chunks of `RISK_CHUNK` values while `active` (a prefix).
fn risk_hash_of(cs: &Cs, values: &[Wire], active: &[Wire]) -> R<Wire> {
    let mut h = Wire::zero();
    for (chunk, a) in values.chunks(RISK_CHUNK).zip(active) {
        let mut inputs = vec![h.clone()];
        inputs.extend_from_slice(chunk);
        let next = cs.poseidon(&inputs)?;
        h = cs.select(a, &next, &h)?;
    }
    Ok(h)
}

/// One id of a mark window: its leaf before (opened if marked) and after. A marked entry gets
/// the new mark (within `[0, W]` of the spec its leaf commits, opened) and the hash of the new
/// risk array, the rest of its leaf kept, its record
/// enters the commitment, and `oracle_ms` becomes the later of it and the mark's publication
/// time.
fn mark_entry(
    cs: &Cs,
    e: &MarkEntry,
    enabled: &Wire,
    id: Wire,
    oracle_ms: &mut Wire,
    commitment: &mut Wire,
    poly: &mut Poly,
) -> R<(Wire, Wire)> {
    let marked = cs.boolean(e.marked)?;
    cs.equal_if(&marked, enabled, &one())?;
    let leaf = cs.witness(e.leaf)?;
    let spec_hash = cs.witness(e.before.spec_hash)?;
    let status = cs.witness(Fr::from(e.before.status))?;
    let settlement = cs.witness(from_i64(e.before.settlement_price.0))?;
    let opened = cs.poseidon(&[
        spec_hash.clone(),
        status.clone(),
        cs.witness(from_i64(e.before.mark.0))?,
        cs.witness(e.before.risk_hash)?,
        settlement.clone(),
    ])?;
    cs.equal_if(&marked, &opened, &leaf)?;
    // A settled instrument keeps its settlement value as its mark.
    let settled = not(&cs.is_nonzero(&status.add_const(-Fr::from(status::SETTLED)))?);
    cs.equal(&cs.mul(&marked, &settled)?, &Wire::zero())?;

    // The mark lies in `[0, W]`, W the worst-case payoff per contract of the spec the leaf
    // commits (`max_payoff`: `ceil(payoff_scaled / 1e8)`, so `mark * 1e8 < payoff_scaled + 1e8`),
    // so an account covering its shorts' worst case is solvent at every committed mark.
    let (opened_spec, spec) = spec_wires(cs, &e.spec)?;
    cs.equal_if(&marked, &opened_spec, &spec_hash)?;
    let mark = cs.witness(e.mark)?;
    cs.range(&mark, 64)?;
    cs.equal_if(&not(&marked), &mark, &Wire::zero())?;
    let room = payoff_scaled(cs, &spec)?
        .add_const(Fr::from(QTY_SCALE as u64 - 1))
        .sub(&mark.scale(Fr::from(QTY_SCALE as u64)));
    cs.range(&cs.mul(&marked, &room)?, 100)?;
    // The risk array: its first `len` values present (the rest zero), in -2^47..2^47; its hash
    // over its first `ceil(len / RISK_CHUNK)` chunks.
    let values = cs.witnesses(&e.risk)?;
    let mut present = Vec::with_capacity(values.len());
    let mut previous = marked.clone();
    for (j, v) in values.iter().enumerate() {
        let p = cs.boolean(j < e.len)?;
        // Present values come first, and only in a marked entry.
        cs.equal_if(&p, &previous, &one())?;
        cs.equal_if(&not(&p), v, &Wire::zero())?;
        cs.range(&v.add_const(pow2(at::RISK - 1)), at::RISK)?;
        present.push(p.clone());
        previous = p;
    }
    let len = Wire::sum(&present);
    let active_chunks: Vec<Wire> = (0..values.len().div_ceil(RISK_CHUNK))
        .map(|k| present[k * RISK_CHUNK].clone())
        .collect();
    // The underlying's index: below 2^63, positive in a marked entry, zero otherwise.
    let index = cs.witness(e.index)?;
    cs.range(&index, 63)?;
    cs.equal_if(&marked, &cs.is_nonzero(&index)?, &one())?;
    cs.equal_if(&not(&marked), &index, &Wire::zero())?;
    // The hash covers the index, then the array: the array's last place stays empty (the
    // index takes one), and chunk k of the hash is in use when the entry is marked (k = 0) or
    // the array reaches into it.
    let hashed: Vec<Wire> = match present.last() {
        Some(last) => {
            cs.equal(last, &Wire::zero())?;
            std::iter::once(index.clone())
                .chain(values[..values.len() - 1].iter().cloned())
                .collect()
        }
        None => {
            cs.equal(&marked, &Wire::zero())?;
            Vec::new()
        }
    };
    let hash_chunks: Vec<Wire> = (0..hashed.len().div_ceil(RISK_CHUNK))
        .map(|k| match k {
            0 => marked.clone(),
            _ => present[k * RISK_CHUNK - 1].clone(),
        })
        .collect();
    let risk_hash = risk_hash_of(cs, &hashed, &hash_chunks)?;
    // When the oracle published it (64 bits, zero unmarked): the committed oracle time is the
    // latest of the times committed. `later` says the time is past the latest so far: the
    // range check reads `time - latest - 1` if so, `latest - time` if not.
    let published = cs.witness(Fr::from(e.published_ms))?;
    cs.range(&published, 64)?;
    cs.equal_if(&not(&marked), &published, &Wire::zero())?;
    let later = cs.boolean(signed_order(published.value) > signed_order(oracle_ms.value))?;
    let ahead = published.sub(oracle_ms);
    let step = cs.mul(&later, &ahead)?;
    cs.range(&step.scale(Fr::from(2u64)).sub(&ahead).sub(&later), 64)?;
    *oracle_ms = oracle_ms.add(&step);
    // The posted words: kind, time, id, length and index; the mark; the values of the chunks
    // in use, five to a word as `v + 2^47` at bit `48 j` (a value past the last chunk adds
    // nothing).
    let kind_code = marked.scale(Fr::from(kind::MARK));
    let marked_id = cs.mul(&marked, &id)?;
    let head = pack(&[
        (&kind_code, 0),
        (&published, at::A),
        (&marked_id, at::INSTRUMENT),
        (&len, at::SMALL),
        (&index, at::QTY),
    ]);
    poly.push(cs, &marked, &[head, mark.clone()])?;
    for (k, four) in values.chunks(at::RISK_PER_WORD).enumerate() {
        let mut word = Wire::zero();
        for (j, v) in four.iter().enumerate() {
            let chunk = &active_chunks[(k * at::RISK_PER_WORD + j) / RISK_CHUNK];
            let shift = pow2(at::RISK * j);
            word = word.plus(shift, v).plus(shift * pow2(at::RISK - 1), chunk);
        }
        let chunk = &active_chunks[k * at::RISK_PER_WORD / RISK_CHUNK];
        poly.push(cs, chunk, &[word])?;
    }
    let new_leaf = cs.poseidon(&[
        spec_hash,
        status,
        mark.clone(),
        risk_hash.clone(),
        settlement,
    ])?;
    let after = cs.select(&marked, &new_leaf, &leaf)?;
    let record = [
        kind_code,
        published,
        Wire::zero(),
        marked_id,
        Wire::zero(),
        mark,
        index,
        Wire::zero(),
        Wire::zero(),
        risk_hash,
    ];
    absorb(cs, commitment, &marked, record)?;
    Ok((leaf, after))
}
