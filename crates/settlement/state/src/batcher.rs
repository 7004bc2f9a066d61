//! The batcher: turns sequenced inputs and their events into settlement ops, cuts batches by size
//! and time, applies each to the settlement state and produces its header and data blob. And
//! `rebuild`: the same state from the blobs alone.

use std::collections::{BTreeMap, BTreeSet};

use optio_types::{AccountId, Address, Command, Event, Input};
use sha3::{Digest, Keccak256};

use crate::auth::{self, Authorization, ChangeAttestation, Orders, PriceAttestation, Signed};
use crate::blob::{self, BlobError, BlobMeta};
use crate::ledger::{Pending, SettlementState, StateError};
use crate::ops::{Op, ops_from};
use crate::poseidon::Fr;

/// What L1 records for a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Batch number, from 1.
    pub number: u64,
    /// State root before.
    pub previous_root: Fr,
    /// State root after.
    pub new_root: Fr,
    /// The validity proof's commitment to the ops (`blob::commitment`: Poseidon over their records,
    /// computed from the blob alone); posted with the batch, it fixes the ops before the contract
    /// draws the point that binds the proof to the posted words.
    pub ops_commitment: Fr,
    /// keccak256 of the blob (what the L1 contract checks the posted data against).
    pub data_hash: [u8; 32],
    /// keccak256 of the batch's withdrawals, ABI-encoded as `(uint32 account, address owner,
    /// uint256 amount)[]` (what the L1 contract pays from once the batch is final).
    pub withdrawals_hash: [u8; 32],
    /// First sequence number covered.
    pub first_seq: u64,
    /// Last sequence number covered.
    pub last_seq: u64,
    /// L1 priority operations served by the end of this batch (the contract's queue advances
    /// to here once the batch is final).
    pub priority_served: u64,
    /// Engine time at the cut, ms.
    pub time_ms: u64,
}

impl BatchHeader {
    /// As JSON (roots and hashes as 0x-hex, big-endian).
    pub fn to_json(&self) -> String {
        use crate::poseidon::{hex, to_hex};
        format!(
            "{{\"number\":{},\"previous_root\":\"{}\",\"new_root\":\"{}\",\"ops_commitment\":\"{}\",\"data_hash\":\"{}\",\"withdrawals_hash\":\"{}\",\"first_seq\":{},\"last_seq\":{},\"priority_served\":{},\"time_ms\":{}}}",
            self.number,
            to_hex(&self.previous_root),
            to_hex(&self.new_root),
            to_hex(&self.ops_commitment),
            hex(&self.data_hash),
            hex(&self.withdrawals_hash),
            self.first_seq,
            self.last_seq,
            self.priority_served,
            self.time_ms
        )
    }
}

/// A cut batch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Header.
    pub header: BatchHeader,
    /// Data blob.
    pub blob: Vec<u8>,
    /// Fills in it (for bytes-per-trade reporting).
    pub fills: usize,
    /// The authorization section posted with it (`auth`: the signed orders behind each fill).
    pub authorizations: Vec<u8>,
    /// The batcher's signed orders changed by its inputs (written beside the blob, so that a
    /// restart that rebuilds from blobs rebuilds them too).
    pub orders: Vec<(u64, Option<[u8; auth::RECORD_BYTES]>)>,
}

/// Why a batch could not be produced or rebuilt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The blob does not decode.
    #[error("batch {number}: {source}")]
    Blob {
        /// Which batch (position in the sequence, from 1).
        number: u64,
        /// Why.
        source: BlobError,
    },
    /// The ops do not apply.
    #[error("batch {number}: {source}")]
    State {
        /// Which batch.
        number: u64,
        /// Why.
        source: StateError,
    },
    /// Batch numbers or sequence ranges do not continue the previous batch.
    #[error(
        "batch {number}: out of order (expected batch {expected_number} from seq {expected_seq})"
    )]
    OutOfOrder {
        /// Which batch (as found).
        number: u64,
        /// Expected number.
        expected_number: u64,
        /// Expected first sequence number.
        expected_seq: u64,
    },
    /// A sequence number that does not follow the last one pushed.
    #[error("input {got} pushed after {last}")]
    SeqGap {
        /// Last pushed.
        last: u64,
        /// Got.
        got: u64,
    },
}

/// A batch capacity rule: whether a batch of these ops, applied to the state of the last cut,
/// can be proven (a circuit has a fixed number of slots and registers). The batcher asks it
/// before an input joins the pending batch and cuts first if the input would not fit; the
/// answer must depend only on its arguments, so that a replay cuts the same batches.
#[derive(Clone)]
pub struct Capacity(std::sync::Arc<FitsFn>);

/// The rule behind a `Capacity`.
type FitsFn = dyn Fn(&SettlementState, &[Op]) -> bool + Send + Sync;

impl Capacity {
    /// The rule `fits`.
    pub fn new(fits: impl Fn(&SettlementState, &[Op]) -> bool + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(fits))
    }

    /// Whether `ops` fit one batch after `state`.
    pub fn fits(&self, state: &SettlementState, ops: &[Op]) -> bool {
        (self.0)(state, ops)
    }
}

impl std::fmt::Debug for Capacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Capacity(..)")
    }
}

/// The meta name under which the batcher persists its settlement prices' signatures.
pub(crate) const SETTLEMENT_PRICES: &str = "settlement_prices";

/// `settlement_prices` as stored: per instrument its id (4 bytes, big-endian) and the entry.
fn encode_settlement_prices(prices: &BTreeMap<u32, PriceAttestation>) -> Vec<u8> {
    prices
        .iter()
        .flat_map(|(id, a)| id.to_be_bytes().into_iter().chain(a.encode()))
        .collect()
}

/// The settlement prices' signatures persisted with `state` (none for a state in memory, or
/// a file written before they were kept; a malformed value counts as none, and an honest
/// batcher writes none).
fn stored_settlement_prices(state: &SettlementState) -> BTreeMap<u32, PriceAttestation> {
    let bytes = state
        .stored_meta(SETTLEMENT_PRICES)
        .ok()
        .flatten()
        .unwrap_or_default();
    bytes
        .chunks_exact(4 + auth::MARK_BYTES)
        .map(|c| {
            let id = u32::from_be_bytes(c[..4].try_into().expect("4 bytes"));
            let entry = c[4..].try_into().expect("an entry");
            (id, PriceAttestation::decode(entry))
        })
        .collect()
}

/// Cuts batches from sequenced inputs.
pub struct Batcher {
    state: SettlementState,
    number: u64,
    last_seq: u64,
    first_seq: u64,
    opened_ms: Option<u64>,
    /// Sequenced time of the first input not in a batch yet (with or without ops).
    uncovered_ms: Option<u64>,
    last_ms: u64,
    pending: Vec<Op>,
    /// The state the pending ops leave. The batch is cut before an input whose ops would not
    /// apply to it: one whose fill leaves an account with equity below zero at the marks
    /// committed before the batch (the engine margins at its latest marks, which the next
    /// batch starts with), or a deficit cover of an account that filled in the batch.
    running: Pending,
    /// The pending marks by instrument (the last of each), with the oracle's signature of
    /// each, posted beside the batch's mark ops. L1 judges a mark against the batch's time (its
    /// last input's): the batch is cut before an input that would leave one of them older than
    /// `auth::MARK_WINDOW_MS`.
    marks: BTreeMap<u32, (Op, Option<PriceAttestation>)>,
    /// The oracle's signature of each pending settlement price, in the pending ops' order
    /// (posted before the marks' signatures, as the settlement ops come before the marks).
    settlements: Vec<Option<PriceAttestation>>,
    /// The oracle's signature of each settlement price taken, by instrument. An expiry with
    /// more holders than a batch holds settles in parts, each part's `SettleInstrument` posted
    /// with the price's signature, while the oracle publishes a price only until an update
    /// carrying it is taken: a later part's input carries none, and its batch posts this one
    /// (a settlement price has no window on L1). Persisted with the state
    /// (`SETTLEMENT_PRICES`), so that a part after a restart still has it.
    settlement_prices: BTreeMap<u32, PriceAttestation>,
    /// Instruments the pending ops settle. A settled instrument's mark is its settlement value
    /// for good (the state refuses a later mark), while the oracle may go on marking it: such
    /// marks, and one pending from before the settlement, stay out of the batch.
    settled: BTreeSet<u32>,
    fills: usize,
    /// The signed orders that may still fill, and the records of the pending fills (maker,
    /// taker), fill by fill.
    orders: Orders,
    records: Vec<Option<Authorization>>,
    /// The session keys behind the pending fills' records, with the expiry (ms) the batch will
    /// commit for them. The contract judges a record signed by a key against the keys its
    /// batch's root commits, live at the batch's time (its last input's), so the batch is cut
    /// before an input that would leave one of these expired at that time or revoked.
    signing_keys: BTreeMap<(AccountId, Address), u64>,
    /// Session keys the pending ops register (expiry) or revoke (0), over the last cut's state.
    pending_keys: BTreeMap<(AccountId, Address), u64>,
    /// The owner's signature of each pending session key change, then of each pending margin
    /// mode change, in the pending ops' order (posted in the words' order: session keys, then
    /// modes). L1 judges each against the batch's time (its last input's): the batch is cut
    /// before an input past the expiry of one of these signatures.
    key_changes: Vec<Option<ChangeAttestation>>,
    mode_changes: Vec<Option<ChangeAttestation>>,
    max_ops: usize,
    max_age_ms: u64,
    capacity: Option<Capacity>,
}

impl Batcher {
    /// A batcher from genesis, cutting at `max_ops` ops or `max_age_ms` after a batch's first op.
    pub fn new(max_ops: usize, max_age_ms: u64) -> Self {
        Self::resume(SettlementState::new(), 0, 0, max_ops, max_age_ms)
    }

    /// Continues after batch `number`, which ended at `last_seq` with `state` (rebuilt from the
    /// blobs).
    pub fn resume(
        state: SettlementState,
        number: u64,
        last_seq: u64,
        max_ops: usize,
        max_age_ms: u64,
    ) -> Self {
        let settlement_prices = stored_settlement_prices(&state);
        Self {
            running: state.begin(),
            state,
            number,
            last_seq,
            first_seq: last_seq + 1,
            opened_ms: None,
            uncovered_ms: None,
            last_ms: 0,
            pending: Vec::new(),
            marks: BTreeMap::new(),
            settlements: Vec::new(),
            settlement_prices,
            settled: BTreeSet::new(),
            fills: 0,
            orders: Orders::default(),
            records: Vec::new(),
            signing_keys: BTreeMap::new(),
            pending_keys: BTreeMap::new(),
            key_changes: Vec::new(),
            mode_changes: Vec::new(),
            max_ops: max_ops.max(1),
            max_age_ms,
            capacity: None,
        }
    }

    /// Also cuts so that every batch satisfies `capacity` (an input that alone does not fit
    /// still makes a batch of its own).
    pub fn with_capacity(mut self, capacity: Option<Capacity>) -> Self {
        self.capacity = capacity;
        self
    }

    /// Continues after a batch cut at engine time `time_ms` (its header's): a later batch's
    /// time is never earlier, even when the first input after a restart carries an earlier
    /// time (one the engine refused for it), since L1 refuses a batch dated before the last.
    pub fn after_time(mut self, time_ms: u64) -> Self {
        self.last_ms = self.last_ms.max(time_ms);
        self
    }

    /// Also keeps the settlement prices' signatures a batch written after the persisted state
    /// posted (its blob and authorization section, as written): a restart after a crash
    /// between writing a batch and persisting the state after it rebuilds that batch from its
    /// blob, and a later part of a settlement it began still posts the price's signature.
    pub fn with_posted_settlements(mut self, blob: &[u8], section: &[u8]) -> Self {
        if let Ok((_, ops)) = blob::decode(blob) {
            let posted: Vec<(u32, PriceAttestation)> = ops
                .iter()
                .filter(|op| auth::is_priced(op))
                .enumerate()
                .filter_map(|(k, op)| match op {
                    Op::SettleInstrument { instrument, .. } => {
                        Some((instrument.0, auth::price_attestation(section, k)?))
                    }
                    _ => None,
                })
                .collect();
            self.keep_settlement_prices(posted);
        }
        self
    }

    /// Keeps `prices` (settlement prices' signatures by instrument), staged to persist with
    /// the next batch's state.
    fn keep_settlement_prices(
        &mut self,
        prices: impl IntoIterator<Item = (u32, PriceAttestation)>,
    ) {
        let mut changed = false;
        for (id, a) in prices {
            changed |= self.settlement_prices.insert(id, a) != Some(a);
        }
        if changed {
            self.state.stage_meta(
                SETTLEMENT_PRICES,
                encode_settlement_prices(&self.settlement_prices),
            );
        }
    }

    /// Continues with the signed orders persisted with the state (`SettlementState::stored_orders`).
    pub fn with_orders(mut self, orders: Orders) -> Self {
        self.orders = orders;
        self
    }

    /// The pending batch with `ops` and `marks` added, as it would be cut.
    fn with(&self, ops: &[Op], marks: &[Op]) -> Vec<Op> {
        let mut latest: BTreeMap<u32, Op> = self
            .marks
            .iter()
            .filter(|(i, _)| !settles(ops, **i))
            .map(|(i, (op, _))| (*i, op.clone()))
            .collect();
        for m in marks {
            if let Op::Mark { instrument, .. } = m {
                latest.insert(instrument.0, m.clone());
            }
        }
        let mut all = self.pending.clone();
        all.extend_from_slice(ops);
        all.extend(latest.into_values());
        all
    }

    /// Whether instrument `id` is settled: before the pending batch, by it, or by `ops`.
    fn is_settled(&self, id: u32, ops: &[Op]) -> bool {
        self.state
            .instruments()
            .get(id as usize)
            .is_some_and(|i| i.status == crate::leaf::status::SETTLED)
            || self.settled.contains(&id)
            || settles(ops, id)
    }

    /// The owner of `account`, opened before or in the pending batch (zero if none is).
    fn owner_of(&self, account: AccountId) -> Address {
        let cut = self.state.accounts();
        match cut.get(account.0 as usize) {
            Some(a) => a.owner,
            None => self
                .pending
                .iter()
                .filter_map(|op| match op {
                    Op::OpenAccount { owner } => Some(*owner),
                    _ => None,
                })
                .nth(account.0 as usize - cut.len())
                .unwrap_or_default(),
        }
    }

    /// The settlement state as of the last cut batch.
    pub fn state(&self) -> &SettlementState {
        &self.state
    }

    /// Persists the state after `header`'s batch (for a state opened on a file; see
    /// `SettlementState::persist`).
    pub fn persist(&mut self, header: &BatchHeader) -> Result<(), crate::StoreError> {
        self.state.persist(header.number, header.last_seq)
    }

    /// Last batch number cut.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Last sequence number pushed.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Ops waiting for the next cut.
    pub fn pending(&self) -> usize {
        self.pending.len() + self.marks.len()
    }

    /// Takes one sequenced input with the engine's events for it (rejected inputs too: they
    /// advance the sequence range). Returns a batch when this input fills one.
    pub fn push(
        &mut self,
        seq: u64,
        input: &Input,
        events: &[Event],
    ) -> Result<Option<Batch>, BatchError> {
        self.push_signed(seq, input, None, events)
    }

    /// `push` with what the user signed for the input (an order's signature, or the owner's of
    /// an account change), so that the batch posts it beside each fill of that order (or
    /// beside the change).
    pub fn push_signed(
        &mut self,
        seq: u64,
        input: &Input,
        signed: Option<&Signed>,
        events: &[Event],
    ) -> Result<Option<Batch>, BatchError> {
        if seq != self.last_seq + 1 {
            return Err(BatchError::SeqGap {
                last: self.last_seq,
                got: seq,
            });
        }
        let (ops, mut marks) = ops_from(input, events, |account| self.owner_of(account));
        marks.retain(|m| match m {
            Op::Mark { instrument, .. } => !self.is_settled(instrument.0, &ops),
            _ => true,
        });
        // A batch the circuit could not prove is cut before this input joins it.
        let full = match &self.capacity {
            Some(c) if self.pending() > 0 && (!ops.is_empty() || !marks.is_empty()) => {
                !c.fits(&self.state, &self.with(&ops, &marks))
            }
            _ => false,
        };
        // Money leaving an account at its holder's request, and a liquidation's price and its
        // account's maintenance, are proven against the marks committed before their batch
        // (the circuit applies a batch's marks after its ops), which are the engine's only
        // while no mark is pending: with one pending, the batch is cut first. So is a forced
        // close's price, the committed mark (of its instrument). (A forced withdrawal's amount
        // needs no mark.) A liquidation's maintenance is that of the mode its account started
        // the batch with (the circuit changes modes after the op slots): the batch is cut
        // before a liquidation of an account whose mode changed in it. An auction's start is
        // proven as a liquidation is, and takes the committed oracle time as its start: the
        // engine's clock only while no mark is pending. An auction's end is proven against the
        // same marks and mode (its account not below maintenance).
        let full = full
            || ops.iter().any(|o| match o {
                Op::Liquidation { account, .. }
                | Op::LiquidationStart { account }
                | Op::LiquidationEnd { account } => {
                    !self.marks.is_empty()
                        || self.pending.iter().any(
                            |p| matches!(p, Op::SetMarginMode { account: a, .. } if a == account),
                        )
                }
                Op::L1Close { instrument, .. } => self.marks.contains_key(&instrument.0),
                o => !self.marks.is_empty() && money_out_of(o).is_some(),
            });
        // The circuit applies a batch's expiries and settlements after its op slots
        // (`blob::circuit_order`), where the engine ran them at their input: an op-slot op of a
        // later input would be judged before them (an auction's end, cured by its shorts'
        // settlement, would meet the shorts still held: found by the simulator). Such an input
        // starts the next batch.
        let full =
            full || (ops.iter().any(blob::takes_op_slot) && self.pending.iter().any(blob::settles));
        let full = full || self.ends_a_signing_key(input.time_ms, &ops);
        let full = full
            || self
                .key_changes
                .iter()
                .chain(&self.mode_changes)
                .flatten()
                .any(|c| u128::from(c.expiry_s) * 1_000 < u128::from(input.time_ms));
        let full = full
            || self
                .marks
                .values()
                .filter_map(|(_, a)| a.as_ref())
                .any(|a| a.published_ms + auth::MARK_WINDOW_MS < input.time_ms);
        // A forced withdrawal leaves a micro-USDC for each position its account held at the
        // batch's start (`optio_types::forced_withdrawal`; the engine counts them at the op):
        // one whose account's positions moved earlier in the pending batch starts the next.
        let full = full || self.traded_before_forced_withdrawal(&ops);
        let full = full || (self.running.push(&self.state, &ops).is_err() && self.pending() > 0);
        let before = if full {
            let batch = self.cut()?;
            // The input starts the next batch (if it does not apply even there, cutting that
            // batch reports why).
            let _ = self.running.push(&self.state, &ops);
            Some(batch)
        } else {
            None
        };
        // After a cut before this input: the orders persisted with that batch are as of its
        // last input.
        let records = self.orders.apply(input, signed, events);
        // An account change posts the owner's signature logged with its input.
        let change = signed.map(|s| ChangeAttestation {
            nonce: s.nonce,
            expiry_s: s.expiry_s,
            signature: s.signature,
        });
        for op in &ops {
            match op {
                Op::SessionKey { .. } => self.key_changes.push(change),
                Op::SetMarginMode { .. } => self.mode_changes.push(change),
                _ => {}
            }
        }
        for op in &ops {
            if let Op::SessionKey {
                account,
                key,
                expiry_ms,
                ..
            } = op
            {
                self.pending_keys.insert((*account, *key), *expiry_ms);
                if let Some(until) = self.signing_keys.get_mut(&(*account, *key)) {
                    *until = *expiry_ms;
                }
            }
        }
        let accounts = events.iter().filter_map(|e| match e {
            Event::Fill {
                maker_account,
                taker_account,
                ..
            } => Some([*maker_account, *taker_account]),
            _ => None,
        });
        for (pair, accounts) in records.iter().zip(accounts) {
            for (record, account) in pair.iter().zip(accounts) {
                if let Some(r) = record
                    && let Some(until) = self.session_key(account, r.signer)
                {
                    self.signing_keys.insert((account, r.signer), until);
                }
            }
        }
        self.records.extend(records.into_iter().flatten());
        self.last_seq = seq;
        self.last_ms = self.last_ms.max(input.time_ms);
        self.uncovered_ms.get_or_insert(input.time_ms);
        if (!ops.is_empty() || !marks.is_empty()) && self.opened_ms.is_none() {
            self.opened_ms = Some(input.time_ms);
        }
        self.fills += ops.iter().filter(|o| matches!(o, Op::Fill { .. })).count();
        // Settlement prices and marks come from an accepted oracle update, each with the
        // oracle's own signature (an operator's `SettleInstrument` has none: L1 would judge
        // its price unattested).
        let (signed, settled) = match &input.command {
            Command::OracleUpdate(u) => {
                let attested = |instrument: optio_types::InstrumentId, signature| {
                    (
                        instrument.0,
                        PriceAttestation {
                            published_ms: u.published_ms,
                            signature,
                        },
                    )
                };
                (
                    u.marks
                        .iter()
                        .map(|m| attested(m.instrument, m.attestation))
                        .collect(),
                    u.settlements
                        .iter()
                        .map(|p| attested(p.instrument, p.attestation))
                        .collect(),
                )
            }
            _ => (BTreeMap::new(), BTreeMap::new()),
        };
        // Only an update the engine accepted gives prices (one it refused gives none, whatever
        // it carried).
        let refused = events.iter().any(|e| matches!(e, Event::Rejected { .. }));
        if !refused {
            self.keep_settlement_prices(settled.iter().map(|(i, a)| (*i, *a)));
        }
        for op in &ops {
            if let Op::SettleInstrument { instrument, .. } = op {
                self.settlements
                    .push(self.settlement_prices.get(&instrument.0).copied());
                self.settled.insert(instrument.0);
                self.marks.remove(&instrument.0);
            }
        }
        self.pending.extend(ops);
        for m in marks {
            if let Op::Mark { instrument, .. } = &m {
                let attestation = signed.get(&instrument.0).copied();
                self.marks.insert(instrument.0, (m, attestation));
            }
        }
        // Both criteria read only the sequence (sizes and sequenced times), so replaying the same
        // inputs cuts the same batches: a restart continues with the roots an uninterrupted run
        // would have committed. Only `tick` (an idle node) reads the wall clock.
        if before.is_some() {
            // One batch per input: this one's own cut, if due, comes with the next input or
            // tick.
            return Ok(before);
        }
        let aged = self
            .opened_ms
            .is_some_and(|t| input.time_ms.saturating_sub(t) >= self.max_age_ms);
        if self.pending() >= self.max_ops || (aged && self.pending() > 0) {
            self.cut().map(Some)
        } else {
            Ok(None)
        }
    }

    /// Cuts a batch if its first op is at least `max_age_ms` old at `now_ms` (for a node that
    /// receives no input: the only cut that depends on the wall clock). Inputs that changed no
    /// settlement state (orders that only rested, cancels) ride in the next batch; when the node
    /// goes idle with such inputs uncovered for `max_age_ms`, they are cut into a batch without
    /// ops, so that every sequenced intent reaches L1 (its `committed` status) in bounded time.
    pub fn tick(&mut self, now_ms: u64) -> Result<Option<Batch>, BatchError> {
        match (self.opened_ms, self.uncovered_ms) {
            (Some(t), _) | (None, Some(t)) if now_ms.saturating_sub(t) >= self.max_age_ms => {
                self.cut().map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Cuts what is pending into a batch (marks last, one per instrument, by id); `None` if
    /// nothing is pending.
    pub fn flush(&mut self) -> Result<Option<Batch>, BatchError> {
        if self.pending() == 0 {
            Ok(None)
        } else {
            self.cut().map(Some)
        }
    }

    /// Whether an input at `time_ms` with `ops` would leave a session key behind a pending
    /// fill unable to authorize it in this batch: expired at the batch's time, or revoked.
    fn ends_a_signing_key(&self, time_ms: u64, ops: &[Op]) -> bool {
        self.signing_keys.values().any(|until| *until <= time_ms)
            || ops.iter().any(|op| {
                matches!(op, Op::SessionKey { account, key, expiry_ms, .. }
                    if *expiry_ms <= time_ms && self.signing_keys.contains_key(&(*account, *key)))
            })
    }

    /// Whether `ops` serve a forced withdrawal from an account whose positions move in the
    /// pending batch (it trades, is liquidated or takes a liquidated position, or is settled).
    fn traded_before_forced_withdrawal(&self, ops: &[Op]) -> bool {
        ops.iter().any(|op| {
            let Op::L1Withdrawal { account, .. } = op else {
                return false;
            };
            self.pending.iter().any(|p| match p {
                Op::Fill { maker, taker, .. } => maker == account || taker == account,
                Op::Liquidation {
                    account: a,
                    counterparty,
                    ..
                } => a == account || counterparty == account,
                Op::SettlePosition { account: a, .. } => a == account,
                _ => false,
            })
        })
    }

    /// The expiry of `key` among `account`'s session keys as of the pending ops (`None`: not
    /// one of them, e.g. the owner).
    fn session_key(&self, account: AccountId, key: Address) -> Option<u64> {
        match self.pending_keys.get(&(account, key)) {
            Some(0) => None,
            Some(until) => Some(*until),
            None => self
                .state
                .accounts()
                .get(account.0 as usize)
                .and_then(|a| a.keys.get(&key).copied()),
        }
    }

    fn cut(&mut self) -> Result<Batch, BatchError> {
        self.signing_keys.clear();
        self.pending_keys.clear();
        let mut changes = std::mem::take(&mut self.key_changes);
        changes.append(&mut self.mode_changes);
        let mut ops = std::mem::take(&mut self.pending);
        self.settled.clear();
        let (marks, marks_attested): (Vec<Op>, Vec<Option<PriceAttestation>>) =
            std::mem::take(&mut self.marks).into_values().unzip();
        ops.extend(marks);
        // Posted in the order of the priced ops' words: settlement prices, then marks.
        let mut attested = std::mem::take(&mut self.settlements);
        attested.extend(marks_attested);
        let meta = BlobMeta {
            number: self.number + 1,
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            time_ms: self.last_ms,
            accounts: self.state.accounts().len() as u32,
            instruments: self.state.instruments().len() as u32,
        };
        let blob = blob::encode(&meta, &ops).map_err(|source| BatchError::Blob {
            number: meta.number,
            source,
        })?;
        let previous_root = self.state.root();
        self.state
            .apply_batch(&ops)
            .map_err(|source| BatchError::State {
                number: meta.number,
                source,
            })?;
        self.state.commit();
        self.running = self.state.begin();
        self.number = meta.number;
        self.first_seq = self.last_seq + 1;
        self.opened_ms = None;
        self.uncovered_ms = None;
        let fills = std::mem::take(&mut self.fills);
        let header = header(&meta, previous_root, &blob, &ops, &self.state);
        let orders = self.orders.take_changes();
        self.state.stage_orders(&orders);
        Ok(Batch {
            header,
            blob,
            fills,
            authorizations: auth::section_of(
                &std::mem::take(&mut self.records),
                &changes,
                &attested,
            ),
            orders,
        })
    }
}

/// A withdrawal a finalized batch pays on L1: account, its owner, amount (micro-USDC).
pub type Withdrawal = (u32, optio_types::Address, optio_types::Amount);

/// The withdrawals among a batch's ops, in order, with their accounts' owners: what the L1
/// contract derives from the posted words when the batch is committed.
pub fn withdrawals(ops: &[Op]) -> Vec<Withdrawal> {
    ops.iter()
        .filter_map(|op| match op {
            Op::Withdraw {
                account,
                amount,
                owner,
            }
            | Op::L1Withdrawal {
                account,
                amount,
                requester: owner,
                ..
            } if amount.0 > 0 => Some((account.0, *owner, *amount)),
            _ => None,
        })
        .collect()
}

/// keccak256 of `abi.encode(Withdrawal[])` with `Withdrawal = (uint32, address, uint256)`.
pub fn withdrawals_hash(list: &[Withdrawal]) -> [u8; 32] {
    let word = |v: &[u8]| {
        let mut w = [0u8; 32];
        w[32 - v.len()..].copy_from_slice(v);
        w
    };
    let mut h = Keccak256::new();
    h.update(word(&[0x20]));
    h.update(word(&(list.len() as u64).to_be_bytes()));
    for (account, owner, amount) in list {
        h.update(word(&account.to_be_bytes()));
        h.update(word(&owner.0));
        h.update(word(&(amount.0.max(0) as u64).to_be_bytes()));
    }
    h.finalize().into()
}

fn header(
    meta: &BlobMeta,
    previous_root: Fr,
    blob: &[u8],
    ops: &[Op],
    state: &SettlementState,
) -> BatchHeader {
    BatchHeader {
        withdrawals_hash: withdrawals_hash(&withdrawals(ops)),
        priority_served: state.priority_served(),
        new_root: state.root(),
        number: meta.number,
        previous_root,
        ops_commitment: blob::commitment(
            &blob::encode_ops(meta, ops).expect("the ops were encoded into the blob"),
        ),
        data_hash: Keccak256::digest(blob).into(),
        first_seq: meta.first_seq,
        last_seq: meta.last_seq,
        time_ms: meta.time_ms,
    }
}

/// Rebuilds the settlement state from genesis and the blobs alone, in order, calling `each` with
/// every batch's header as recomputed (its `new_root` is what the batcher must have committed).
/// Stops at the first blob that does not decode, continue or apply; the state stays at the last
/// good batch.
pub fn rebuild<'a>(
    blobs: impl IntoIterator<Item = &'a [u8]>,
    state: &mut SettlementState,
    each: impl FnMut(&BatchHeader),
) -> Result<(u64, u64), BatchError> {
    rebuild_after(blobs, state, (0, 0), each)
}

/// `rebuild` from a state that is already the state after batch `after.0` (ending at sequence
/// number `after.1`): the blobs given must start with the next batch.
pub fn rebuild_after<'a>(
    blobs: impl IntoIterator<Item = &'a [u8]>,
    state: &mut SettlementState,
    after: (u64, u64),
    mut each: impl FnMut(&BatchHeader),
) -> Result<(u64, u64), BatchError> {
    let (mut number, mut last_seq) = after;
    for bytes in blobs {
        let (meta, ops) = blob::decode(bytes).map_err(|source| BatchError::Blob {
            number: number + 1,
            source,
        })?;
        if meta.number != number + 1 || meta.first_seq != last_seq + 1 {
            return Err(BatchError::OutOfOrder {
                number: meta.number,
                expected_number: number + 1,
                expected_seq: last_seq + 1,
            });
        }
        if meta.accounts as usize != state.accounts().len()
            || meta.instruments as usize != state.instruments().len()
        {
            return Err(BatchError::Blob {
                number: meta.number,
                source: BlobError::Invalid {
                    offset: 37,
                    what: "account or instrument count (not the state's before the batch)",
                },
            });
        }
        let previous_root = state.root();
        state
            .apply_batch(&ops)
            .map_err(|source| BatchError::State {
                number: meta.number,
                source,
            })?;
        state.commit();
        each(&header(&meta, previous_root, bytes, &ops, state));
        (number, last_seq) = (meta.number, meta.last_seq);
    }
    Ok((number, last_seq))
}

/// The blob files (`*.blob`) in `dir`, in batch order; none if `dir` does not exist.
pub fn blob_files(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<std::path::PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "blob"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    files.sort();
    Ok(files)
}

/// The account an op needs to hold no position: a deficit cover's (the loss waterfall covers
/// only an account with nothing left to liquidate).
pub fn flat_for(op: &Op) -> Option<AccountId> {
    match op {
        Op::DeficitCovered { account, .. } => Some(*account),
        _ => None,
    }
}

/// The account an op takes money out of at its holder's request (a withdrawal, a transfer's
/// sender): what the circuit's stress rule covers. A forced withdrawal is held to its own rule,
/// which needs no mark (`optio_types::forced_withdrawal`).
pub fn money_out_of(op: &Op) -> Option<AccountId> {
    match op {
        Op::Withdraw { account, .. } => Some(*account),
        Op::Transfer { from, .. } => Some(*from),
        _ => None,
    }
}

/// Whether `ops` settle instrument `id`.
fn settles(ops: &[Op], id: u32) -> bool {
    ops.iter()
        .any(|o| matches!(o, Op::SettleInstrument { instrument, .. } if instrument.0 == id))
}
