//! The batch witness: what the circuit needs to re-run a batch, taken from the settlement state
//! before the batch and the batch's ops. The native side of the shared specification: it applies
//! the same transition as `SettlementState::apply_batch` (tests hold the two to the same root),
//! records every leaf and Merkle path as it goes, and computes the public inputs.
//!
//! It does not judge the batch: a batch that breaks a rule still gets a witness, and the circuit
//! is what refuses it (the tests rely on that).

use std::collections::{BTreeMap, BTreeSet};

use optio_state::leaf::{self, ACCOUNT_DEPTH, INSTRUMENT_DEPTH, InstrumentLeaf};
use optio_state::poseidon::{Fr, from_address, hash};
use optio_state::smt::{NodeStore, Proof, SparseMerkleTree};
use optio_state::{Op, SettlementState};
use optio_types::fixed::FEE_RATE_SCALE;
use optio_types::{AccountId, InstrumentId, QTY_SCALE, Side};

/// Op kinds as the circuit numbers them (the blob's tags where one exists).
pub mod kind {
    /// An unused slot.
    pub const PAD: u64 = 0;
    /// `Op::OpenAccount`.
    pub const OPEN: u64 = 6;
    /// `Op::Deposit`.
    pub const DEPOSIT: u64 = 7;
    /// `Op::Withdraw`.
    pub const WITHDRAW: u64 = 8;
    /// `Op::Transfer`.
    pub const TRANSFER: u64 = 9;
    /// `Op::Fill`.
    pub const FILL: u64 = 16;
    /// `Op::Mark` (mark slots only).
    pub const MARK: u64 = 24;
    /// `Op::L1Deposit`.
    pub const L1_DEPOSIT: u64 = 25;
    /// `Op::L1Withdrawal`.
    pub const L1_WITHDRAWAL: u64 = 26;
    /// The kinds of the op slots, in the order the circuit's selector flags follow.
    pub const SLOT_KINDS: [u64; 7] = [
        OPEN,
        DEPOSIT,
        L1_DEPOSIT,
        WITHDRAW,
        L1_WITHDRAWAL,
        TRANSFER,
        FILL,
    ];
}

/// The fixed shape of a circuit: how many op slots and mark slots a batch may use, and how long
/// a risk array may be (in chunks of three). Keys are generated per shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Op slots (every op but marks takes one).
    pub slots: usize,
    /// Mark slots (one per instrument whose mark the batch commits).
    pub marks: usize,
    /// Risk array capacity, in chunks of three scenarios.
    pub risk_chunks: usize,
}

/// Why no witness could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WitnessError {
    /// The circuit does not prove this op type yet (README: what the validity tier covers).
    #[error("op {index}: {what} is not covered by the batch circuit yet")]
    Unsupported {
        /// Index of the op in the batch.
        index: usize,
        /// Its type.
        what: &'static str,
    },
    /// More ops, marks or risk scenarios than the shape holds.
    #[error("the batch does not fit the circuit's shape: {0}")]
    TooLarge(&'static str),
    /// An op names an account or instrument that does not exist, or a mark comes before an op.
    #[error("op {0}: names what does not exist, or is out of place")]
    Invalid(usize),
}

/// One account's leaf and paths as a slot finds it.
#[derive(Debug, Clone, Default)]
pub struct AccountStep {
    /// Account id.
    pub id: u32,
    /// Leaf fields before the slot.
    pub owner: Fr,
    /// Hash of its session keys.
    pub keys_hash: Fr,
    /// Withdrawals processed.
    pub nonce: Fr,
    /// Collateral.
    pub collateral: Fr,
    /// Root of its positions tree.
    pub positions_root: Fr,
    /// Path in the accounts tree (against the accounts root the slot starts from).
    pub siblings: Vec<Fr>,
    /// Its position in the slot's instrument.
    pub position: Fr,
    /// Path of that position in its positions tree.
    pub position_siblings: Vec<Fr>,
}

/// An op slot.
#[derive(Debug, Clone, Default)]
pub struct Slot {
    /// One of `kind::*`.
    pub kind: u64,
    /// The account (maker of a fill, sender of a transfer).
    pub a: AccountStep,
    /// The second account (taker of a fill, receiver of a transfer).
    pub b: AccountStep,
    /// Instrument of a fill.
    pub instrument: u32,
    /// Amount of a cash op.
    pub amount: Fr,
    /// Fill price.
    pub price: Fr,
    /// Fill quantity.
    pub qty: Fr,
    /// The taker bought.
    pub taker_buys: bool,
    /// L1 queue id of a priority op.
    pub priority: Fr,
    /// Owner of an opened account.
    pub owner: Fr,
    /// The fill's instrument leaf, its path, and the opening of its spec hash.
    pub read: InstrumentLeaf,
    /// Path of `read`.
    pub read_siblings: Vec<Fr>,
    /// First input of `spec_hash`.
    pub spec_bytes_hash: Fr,
    /// Maker fee rate.
    pub maker_rate: Fr,
    /// Taker fee rate.
    pub taker_rate: Fr,
    /// Fill notional.
    pub notional: Fr,
    /// Maker fee.
    pub maker_fee: Fr,
    /// Taker fee.
    pub taker_fee: Fr,
}

/// A mark slot.
#[derive(Debug, Clone, Default)]
pub struct MarkSlot {
    /// Used.
    pub enabled: bool,
    /// Instrument.
    pub instrument: u32,
    /// Its leaf before.
    pub before: InstrumentLeaf,
    /// Its path.
    pub siblings: Vec<Fr>,
    /// New mark.
    pub mark: Fr,
    /// New risk array, zero-padded to the shape's capacity.
    pub risk: Vec<Fr>,
    /// Chunks of three the array hashes in.
    pub chunks: usize,
}

/// The public inputs, in the verifier's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicInputs {
    /// State root before the batch.
    pub old_root: Fr,
    /// State root after it.
    pub new_root: Fr,
    /// Commitment to the batch's ops (`commitment`).
    pub commitment: Fr,
    /// L1 priority operations served before the batch.
    pub priority_before: u64,
    /// And after.
    pub priority_after: u64,
}

impl PublicInputs {
    /// As field elements, in order.
    pub fn to_vec(&self) -> Vec<Fr> {
        vec![
            self.old_root,
            self.new_root,
            self.commitment,
            Fr::from(self.priority_before),
            Fr::from(self.priority_after),
        ]
    }
}

/// Everything the circuit needs.
#[derive(Debug, Clone)]
pub struct BatchWitness {
    /// The shape it fills.
    pub shape: Shape,
    /// Accounts root before.
    pub accounts_root: Fr,
    /// Instruments root before.
    pub instruments_root: Fr,
    /// Insurance fund (unchanged by the covered ops).
    pub insurance: Fr,
    /// Fee pool before.
    pub fee_pool: Fr,
    /// Op slots.
    pub slots: Vec<Slot>,
    /// Mark slots.
    pub marks: Vec<MarkSlot>,
    /// What the circuit's public inputs must be.
    pub public: PublicInputs,
}

/// An integer as a field element (negatives as `p - |v|`).
pub fn fr(v: i128) -> Fr {
    if v >= 0 {
        Fr::from(v as u128)
    } else {
        -Fr::from(v.unsigned_abs())
    }
}

/// The ten fields of an op slot's record in the commitment.
pub fn slot_record(s: &Slot) -> [Fr; 10] {
    [
        Fr::from(s.kind),
        Fr::from(s.a.id),
        Fr::from(s.b.id),
        Fr::from(s.instrument),
        s.amount,
        s.price,
        s.qty,
        Fr::from(u64::from(s.taker_buys)),
        s.priority,
        s.owner,
    ]
}

/// The ten fields of a mark slot's record.
pub fn mark_record(m: &MarkSlot) -> [Fr; 10] {
    if !m.enabled {
        return [Fr::from(0u64); 10];
    }
    let z = Fr::from(0u64);
    [
        Fr::from(kind::MARK),
        z,
        z,
        Fr::from(m.instrument),
        z,
        m.mark,
        z,
        z,
        z,
        risk_hash_of(&m.risk[..m.chunks * 3]),
    ]
}

fn risk_hash_of(values: &[Fr]) -> Fr {
    values
        .chunks(3)
        .fold(Fr::from(0u64), |h, c| hash(&[h, c[0], c[1], c[2]]))
}

/// The commitment to a batch's ops: `h = Poseidon(h, record)` over every op slot then every mark
/// slot (unused ones as zero records), from 0.
pub fn commitment(slots: &[Slot], marks: &[MarkSlot]) -> Fr {
    let records = slots
        .iter()
        .map(slot_record)
        .chain(marks.iter().map(mark_record));
    records.fold(Fr::from(0u64), |h, r| {
        let mut inputs = vec![h];
        inputs.extend_from_slice(&r);
        hash(&inputs)
    })
}

/// An account as the batch leaves it so far.
struct Shadow {
    owner: Fr,
    keys_hash: Fr,
    nonce: i128,
    collateral: i128,
    positions: BTreeMap<u32, i128>,
    tree: SparseMerkleTree,
}

impl Shadow {
    fn leaf(&self) -> Fr {
        hash(&[
            self.owner,
            self.keys_hash,
            fr(self.nonce),
            fr(self.collateral),
            self.tree.root(),
        ])
    }

    fn step(&self, id: u32, instrument: u32, accounts: &SparseMerkleTree) -> AccountStep {
        AccountStep {
            id,
            owner: self.owner,
            keys_hash: self.keys_hash,
            nonce: fr(self.nonce),
            collateral: fr(self.collateral),
            positions_root: self.tree.root(),
            siblings: prove(accounts, u64::from(id)).siblings,
            position: fr(self.positions.get(&instrument).copied().unwrap_or(0)),
            position_siblings: prove(&self.tree, u64::from(instrument)).siblings,
        }
    }

    fn move_position(&mut self, instrument: u32, delta: i128) {
        let q = self.positions.get(&instrument).copied().unwrap_or(0) + delta;
        if q == 0 {
            self.positions.remove(&instrument);
        } else {
            self.positions.insert(instrument, q);
        }
        self.tree
            .set(u64::from(instrument), fr(q))
            .expect("instrument ids fit the depth");
    }
}

fn prove(tree: &SparseMerkleTree, index: u64) -> Proof {
    tree.prove(index).expect("ids fit the depth")
}

/// A tree holding only the paths of `ids`, seeded from proofs against the state's tree: enough
/// to update those leaves and prove them again.
fn overlay(depth: u8, ids: &[(u64, Fr, Proof)]) -> SparseMerkleTree {
    let mut tree = SparseMerkleTree::new(depth);
    for (id, leaf, proof) in ids {
        for (h, sibling) in proof.siblings.iter().enumerate() {
            tree.store_mut().put(h as u8, (id >> h) ^ 1, Some(*sibling));
        }
        tree.store_mut().put(0, *id, Some(*leaf));
    }
    for (id, leaf, _) in ids {
        tree.set(*id, *leaf).expect("ids fit the depth");
    }
    tree
}

fn account_of(op: &Op) -> Vec<u32> {
    match op {
        Op::Deposit { account, .. }
        | Op::Withdraw { account, .. }
        | Op::L1Deposit { account, .. }
        | Op::L1Withdrawal { account, .. } => vec![account.0],
        Op::Transfer { from, to, .. } => vec![from.0, to.0],
        Op::Fill { maker, taker, .. } => vec![maker.0, taker.0],
        _ => Vec::new(),
    }
}

fn unsupported(index: usize, op: &Op) -> WitnessError {
    let what = match op {
        Op::ListInstrument { .. } => "ListInstrument",
        Op::ActivateInstrument { .. } => "ActivateInstrument",
        Op::ExpireInstrument { .. } => "ExpireInstrument",
        Op::SettleInstrument { .. } => "SettleInstrument",
        Op::SettlePosition { .. } => "SettlePosition",
        Op::Liquidation { .. } => "Liquidation",
        Op::LossShared { .. } => "LossShared",
        Op::DeficitCovered { .. } => "DeficitCovered",
        Op::SessionKey { .. } => "SessionKey",
        _ => "this op",
    };
    WitnessError::Unsupported { index, what }
}

/// The witness of `ops` applied to `state` (as of its last commit), for a circuit of `shape`.
pub fn witness(
    state: &SettlementState,
    ops: &[Op],
    shape: Shape,
) -> Result<BatchWitness, WitnessError> {
    let accounts = state.accounts();
    let instruments = state.instruments();
    // What the batch touches, with the proofs to seed the partial trees.
    let mut touched = BTreeSet::new();
    let mut next_account = accounts.len() as u32;
    let mut read_instruments = BTreeSet::new();
    let mut marks = Vec::new();
    let mut slot_ops = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Mark { .. } => marks.push((i, op)),
            _ if !marks.is_empty() => return Err(WitnessError::Invalid(i)),
            Op::OpenAccount { .. } => {
                touched.insert(next_account);
                next_account += 1;
                slot_ops.push((i, op));
            }
            Op::Deposit { .. }
            | Op::Withdraw { .. }
            | Op::L1Deposit { .. }
            | Op::L1Withdrawal { .. }
            | Op::Transfer { .. }
            | Op::Fill { .. } => {
                for a in account_of(op) {
                    if a >= next_account {
                        return Err(WitnessError::Invalid(i));
                    }
                    touched.insert(a);
                }
                if let Op::Fill { instrument, .. } = op {
                    if instrument.0 as usize >= instruments.len() {
                        return Err(WitnessError::Invalid(i));
                    }
                    read_instruments.insert(instrument.0);
                }
                slot_ops.push((i, op));
            }
            _ => return Err(unsupported(i, op)),
        }
    }
    if slot_ops.len() > shape.slots {
        return Err(WitnessError::TooLarge("op slots"));
    }
    if marks.len() > shape.marks {
        return Err(WitnessError::TooLarge("mark slots"));
    }
    let mut shadows: BTreeMap<u32, Shadow> = BTreeMap::new();
    let mut seeds = Vec::new();
    for &id in &touched {
        let proof = state.account_proof(AccountId(id));
        let leaf = match accounts.get(id as usize) {
            Some(a) => {
                let mut tree = SparseMerkleTree::new(INSTRUMENT_DEPTH);
                let positions: BTreeMap<u32, i128> = a
                    .positions
                    .iter()
                    .map(|(i, q)| (*i, i128::from(q.0)))
                    .collect();
                let updates: Vec<(u64, Fr)> = positions
                    .iter()
                    .map(|(i, q)| (u64::from(*i), fr(*q)))
                    .collect();
                tree.set_many(&updates)
                    .expect("instrument ids fit the depth");
                let shadow = Shadow {
                    owner: from_address(&a.owner.0),
                    keys_hash: leaf::keys_hash(&a.keys),
                    nonce: i128::from(a.nonce),
                    collateral: i128::from(a.collateral.0),
                    positions,
                    tree,
                };
                let leaf = shadow.leaf();
                shadows.insert(id, shadow);
                leaf
            }
            None => Fr::from(0u64),
        };
        seeds.push((u64::from(id), leaf, proof));
    }
    let mut account_tree = overlay(ACCOUNT_DEPTH, &seeds);
    let mut instrument_ids: BTreeSet<u32> = read_instruments.clone();
    for (i, op) in &marks {
        if let Op::Mark { instrument, .. } = op {
            if instrument.0 as usize >= instruments.len() {
                return Err(WitnessError::Invalid(*i));
            }
            instrument_ids.insert(instrument.0);
        }
    }
    let instrument_seeds: Vec<(u64, Fr, Proof)> = instrument_ids
        .iter()
        .map(|&id| {
            let proof = state
                .instrument_proof(InstrumentId(id))
                .expect("listed ids fit the depth");
            (u64::from(id), instruments[id as usize].leaf().hash(), proof)
        })
        .collect();
    let mut instrument_tree = overlay(INSTRUMENT_DEPTH, &instrument_seeds);

    let (insurance, fee_pool) = state.funds();
    let mut fee_pool = i128::from(fee_pool.0);
    let mut priority = state.priority_served();
    let old_root = state.root();
    let mut slots = Vec::with_capacity(shape.slots);
    let mut opened = accounts.len() as u32;
    for (_, op) in &slot_ops {
        let mut slot = Slot {
            read_siblings: vec![Fr::from(0u64); INSTRUMENT_DEPTH as usize],
            ..pad_slot()
        };
        match op {
            Op::OpenAccount { owner } => {
                let id = opened;
                opened += 1;
                slot.kind = kind::OPEN;
                slot.owner = from_address(&owner.0);
                slot.a = AccountStep {
                    id,
                    siblings: prove(&account_tree, u64::from(id)).siblings,
                    position_siblings: vec![Fr::from(0u64); INSTRUMENT_DEPTH as usize],
                    ..AccountStep::default()
                };
                let shadow = Shadow {
                    owner: slot.owner,
                    keys_hash: Fr::from(0u64),
                    nonce: 0,
                    collateral: 0,
                    positions: BTreeMap::new(),
                    tree: SparseMerkleTree::new(INSTRUMENT_DEPTH),
                };
                account_tree
                    .set(u64::from(id), shadow.leaf())
                    .expect("ids fit the depth");
                shadows.insert(id, shadow);
            }
            Op::Deposit { account, amount }
            | Op::Withdraw { account, amount }
            | Op::L1Deposit {
                account, amount, ..
            }
            | Op::L1Withdrawal {
                account, amount, ..
            } => {
                let (k, debit) = match op {
                    Op::Deposit { .. } => (kind::DEPOSIT, false),
                    Op::Withdraw { .. } => (kind::WITHDRAW, true),
                    Op::L1Deposit { priority: p, .. } => {
                        slot.priority = Fr::from(*p);
                        priority += 1;
                        (kind::L1_DEPOSIT, false)
                    }
                    Op::L1Withdrawal { priority: p, .. } => {
                        slot.priority = Fr::from(*p);
                        priority += 1;
                        (kind::L1_WITHDRAWAL, true)
                    }
                    _ => unreachable!("matched above"),
                };
                slot.kind = k;
                slot.amount = fr(i128::from(amount.0));
                let shadow = shadows.get_mut(&account.0).expect("collected");
                slot.a = shadow.step(account.0, 0, &account_tree);
                let amount = i128::from(amount.0);
                if debit {
                    shadow.collateral -= amount;
                    shadow.nonce += i128::from(amount != 0);
                } else {
                    shadow.collateral += amount;
                }
                account_tree
                    .set(u64::from(account.0), shadow.leaf())
                    .expect("ids fit the depth");
            }
            Op::Transfer { from, to, amount } => {
                slot.kind = kind::TRANSFER;
                slot.amount = fr(i128::from(amount.0));
                let amount = i128::from(amount.0);
                for (id, delta, side) in [(from.0, -amount, 0), (to.0, amount, 1)] {
                    let shadow = shadows.get_mut(&id).expect("collected");
                    let step = shadow.step(id, 0, &account_tree);
                    shadow.collateral += delta;
                    account_tree
                        .set(u64::from(id), shadow.leaf())
                        .expect("ids fit the depth");
                    if side == 0 {
                        slot.a = step;
                    } else {
                        slot.b = step;
                    }
                }
            }
            Op::Fill {
                instrument,
                maker,
                taker,
                taker_side,
                price,
                qty,
            } => {
                let inst = &instruments[instrument.0 as usize];
                slot.kind = kind::FILL;
                slot.instrument = instrument.0;
                slot.price = fr(i128::from(price.0));
                slot.qty = fr(i128::from(qty.0));
                slot.taker_buys = *taker_side == Side::Buy;
                slot.read = inst.leaf();
                slot.read_siblings = prove(&instrument_tree, u64::from(instrument.0)).siblings;
                slot.spec_bytes_hash = leaf::spec_bytes_hash(&inst.spec);
                let (maker_rate, taker_rate) = (
                    i128::from(inst.spec.maker_fee.0),
                    i128::from(inst.spec.taker_fee.0),
                );
                slot.maker_rate = fr(maker_rate);
                slot.taker_rate = fr(taker_rate);
                let notional = i128::from(price.0) * i128::from(qty.0) / i128::from(QTY_SCALE);
                let fee =
                    |rate: i128| -((-(notional * rate)).div_euclid(i128::from(FEE_RATE_SCALE)));
                let (maker_fee, taker_fee) = (fee(maker_rate), fee(taker_rate));
                slot.notional = fr(notional);
                slot.maker_fee = fr(maker_fee);
                slot.taker_fee = fr(taker_fee);
                let sign: i128 = if slot.taker_buys { 1 } else { -1 };
                let q = i128::from(qty.0);
                for (id, cash, moved, side) in [
                    (maker.0, sign * notional - maker_fee, -sign * q, 0),
                    (taker.0, -sign * notional - taker_fee, sign * q, 1),
                ] {
                    let shadow = shadows.get_mut(&id).expect("collected");
                    let step = shadow.step(id, instrument.0, &account_tree);
                    shadow.collateral += cash;
                    shadow.move_position(instrument.0, moved);
                    account_tree
                        .set(u64::from(id), shadow.leaf())
                        .expect("ids fit the depth");
                    if side == 0 {
                        slot.a = step;
                    } else {
                        slot.b = step;
                    }
                }
                fee_pool += maker_fee + taker_fee;
            }
            _ => unreachable!("only covered ops reach the slots"),
        }
        slots.push(slot);
    }
    slots.resize_with(shape.slots, pad_slot);

    let mut mark_slots = Vec::with_capacity(shape.marks);
    for (i, op) in &marks {
        let Op::Mark {
            instrument,
            mark,
            risk,
        } = op
        else {
            unreachable!("collected marks")
        };
        let chunks = risk.len().div_ceil(3);
        if chunks > shape.risk_chunks {
            return Err(WitnessError::TooLarge("risk array"));
        }
        let before = instruments[instrument.0 as usize].leaf();
        let siblings = prove(&instrument_tree, u64::from(instrument.0)).siblings;
        let mut values: Vec<Fr> = risk.iter().map(|a| fr(i128::from(a.0))).collect();
        values.resize(shape.risk_chunks * 3, Fr::from(0u64));
        let after = InstrumentLeaf {
            mark: *mark,
            risk_hash: leaf::risk_hash(risk),
            ..before
        };
        if after.risk_hash != risk_hash_of(&values[..chunks * 3]) {
            return Err(WitnessError::Invalid(*i));
        }
        instrument_tree
            .set(u64::from(instrument.0), after.hash())
            .expect("ids fit the depth");
        mark_slots.push(MarkSlot {
            enabled: true,
            instrument: instrument.0,
            before,
            siblings,
            mark: fr(i128::from(mark.0)),
            risk: values,
            chunks,
        });
    }
    mark_slots.resize_with(shape.marks, || MarkSlot {
        siblings: vec![Fr::from(0u64); INSTRUMENT_DEPTH as usize],
        risk: vec![Fr::from(0u64); shape.risk_chunks * 3],
        ..MarkSlot::default()
    });

    let accounts_root = if touched.is_empty() {
        state.accounts_root()
    } else {
        account_tree.root()
    };
    let instruments_root = if instrument_ids.is_empty() {
        state.instruments_root()
    } else {
        instrument_tree.root()
    };
    let new_root = leaf::state_root(
        accounts_root,
        instruments_root,
        hash(&[fr(i128::from(insurance.0)), fr(fee_pool)]),
    );
    let public = PublicInputs {
        old_root,
        new_root,
        commitment: commitment(&slots, &mark_slots),
        priority_before: state.priority_served(),
        priority_after: priority,
    };
    Ok(BatchWitness {
        shape,
        accounts_root: state.accounts_root(),
        instruments_root: state.instruments_root(),
        insurance: fr(i128::from(insurance.0)),
        fee_pool: fr(i128::from(state.funds().1.0)),
        slots,
        marks: mark_slots,
        public,
    })
}

/// An unused op slot (zero paths: nothing in it is checked against a tree).
pub fn pad_slot() -> Slot {
    let zeros = |n: u8| vec![Fr::from(0u64); n as usize];
    let step = AccountStep {
        siblings: zeros(ACCOUNT_DEPTH),
        position_siblings: zeros(INSTRUMENT_DEPTH),
        ..AccountStep::default()
    };
    Slot {
        a: step.clone(),
        b: step,
        read_siblings: zeros(INSTRUMENT_DEPTH),
        ..Slot::default()
    }
}

/// The witness of an empty batch of `shape` (what key generation synthesizes).
pub fn empty(shape: Shape) -> BatchWitness {
    let state = SettlementState::new();
    witness(&state, &[], shape).expect("an empty batch fits every shape")
}
