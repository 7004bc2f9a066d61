//! The data blob: a batch's ops as a sequence of BN254 field elements ("words"), in the order the
//! validity circuit applies them, each op's fields packed into as few words as they fit
//! (docs/settlement.md specifies it bit by bit; test-vectors/settlement.json holds encoded
//! examples). The circuit computes the same words from its own records and evaluates the
//! polynomial `sum w_i z^(n-1-i)` over them at a point the L1 contract draws after the words are
//! fixed; the contract evaluates it over the posted bytes, so a proof binds to exactly the data
//! posted (`binding`).
//!
//! Each op also has a record of ten field elements (`records`), the inputs the circuit's
//! Poseidon commitment to the batch absorbs (`commitment`): anyone computes it from the blob
//! alone.
//!
//! Decoding is all or nothing: truncated, corrupted, oversized, non-canonical or trailing data is
//! refused with the offset where it went wrong, and no op is returned.

use std::collections::BTreeMap;

use ark_ff::{BigInteger, PrimeField};
use optio_types::{AccountId, Address, Amount, InstrumentId, MarginMode, Price, Qty, Side};
use sha3::{Digest, Keccak256};

use crate::leaf::{self, RISK_CHUNK};
use crate::ops::Op;
use crate::poseidon::{Fr, from_address, from_i64, hash, to_bytes};

/// First bytes of every blob.
pub const MAGIC: &[u8; 4] = b"OPTB";
/// The version this code writes and reads (9: an auction's end posts an op, kind 30; 8: an
/// auction's start posts an op, kind 29, and the
/// account leaf commits it, `since`; 7: a mark posts its update's publication time,
/// which the funds leaf commits the latest of; 6: a mark posts its underlying's index, which the
/// instrument leaf's risk hash commits; 5: a settled position posts the quantity settled,
/// after 4: withdrawals post their owner, 3: the spec bytes' binary layout and the funds leaf's
/// counts, 2: field words).
pub const VERSION: u8 = 9;
/// Largest blob accepted (bytes).
pub const MAX_BLOB_BYTES: usize = 1 << 20;
/// Longest risk array accepted.
pub const MAX_RISK: usize = 64;

/// What a blob says about its batch besides the ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlobMeta {
    /// Batch number (from 1).
    pub number: u64,
    /// First sequence number covered.
    pub first_seq: u64,
    /// Last sequence number covered.
    pub last_seq: u64,
    /// Engine time at the cut, ms.
    pub time_ms: u64,
    /// Accounts before the batch (the id the batch's first opened account takes).
    pub accounts: u32,
    /// Instruments before the batch (the id its first listing takes).
    pub instruments: u32,
}

/// Why a blob was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// Ends inside a field.
    #[error("truncated at byte {0}")]
    Truncated(usize),
    /// Not a blob.
    #[error("not an Optio batch blob (bad magic)")]
    Magic,
    /// A version this code does not read.
    #[error("unsupported blob version {0}")]
    Version(u8),
    /// Larger than `MAX_BLOB_BYTES`.
    #[error("blob of {0} bytes exceeds the limit")]
    Oversized(usize),
    /// An op tag that does not exist.
    #[error("unknown op tag {tag} at byte {offset}")]
    UnknownOp {
        /// Where.
        offset: usize,
        /// The tag.
        tag: u8,
    },
    /// A field out of range, or a varint that is not in its shortest form.
    #[error("invalid {what} at byte {offset}")]
    Invalid {
        /// Where.
        offset: usize,
        /// Which field.
        what: &'static str,
    },
    /// Bytes after the last op.
    #[error("{0} bytes after the last op")]
    Trailing(usize),
    /// Ops the format cannot hold (the batcher refuses to cut them).
    #[error("op {op} cannot be encoded: {what}")]
    Unencodable {
        /// Index of the op in the batch.
        op: usize,
        /// Why.
        what: &'static str,
    },
}

/// Op kinds: the low byte of an op's first word, and the first field of its record (the
/// circuit's numbering).
pub mod kind {
    /// `Op::ListInstrument`.
    pub const LIST: u64 = 1;
    /// `Op::ActivateInstrument`.
    pub const ACTIVATE: u64 = 2;
    /// `Op::ExpireInstrument`.
    pub const EXPIRE: u64 = 3;
    /// `Op::SettleInstrument`.
    pub const SETTLE: u64 = 4;
    /// `Op::SettlePosition`.
    pub const SETTLE_POSITION: u64 = 5;
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
    /// `Op::Liquidation`.
    pub const LIQUIDATION: u64 = 20;
    /// `Op::LossShared`.
    pub const LOSS_SHARED: u64 = 21;
    /// `Op::DeficitCovered`.
    pub const DEFICIT: u64 = 22;
    /// `Op::SessionKey`.
    pub const SESSION_KEY: u64 = 23;
    /// `Op::Mark`.
    pub const MARK: u64 = 24;
    /// `Op::L1Deposit`.
    pub const L1_DEPOSIT: u64 = 25;
    /// `Op::L1Withdrawal`.
    pub const L1_WITHDRAWAL: u64 = 26;
    /// `Op::L1Close`.
    pub const L1_CLOSE: u64 = 27;
    /// `Op::SetMarginMode`.
    pub const MARGIN_MODE: u64 = 28;
    /// `Op::LiquidationStart`.
    pub const LIQUIDATION_START: u64 = 29;
    /// `Op::LiquidationEnd`.
    pub const LIQUIDATION_END: u64 = 30;
}

/// Bit offsets of the fields packed into an op's first word (`kind` in bits 0..8).
pub mod bits {
    /// First account id (32 bits); a mark's publication time (64 bits, over both ids).
    pub const A: usize = 8;
    /// Second account id (32 bits).
    pub const B: usize = 40;
    /// Instrument id (32 bits).
    pub const INSTRUMENT: usize = 72;
    /// A fill's taker bought (1 bit); a listing's spec length (16 bits); a mark's risk array
    /// length (8 bits); a session key's expiry (64 bits).
    pub const SMALL: usize = 104;
    /// Fill price (63 bits).
    pub const PRICE: usize = 105;
    /// Fill quantity (63 bits); a session key's time (64 bits); a mark's index (63 bits).
    pub const QTY: usize = 168;
    /// Bits per risk value in a risk word (five per word, each stored as `v + 2^47`).
    pub const RISK: usize = 48;
    /// Risk values per word.
    pub const RISK_PER_WORD: usize = 5;
    /// A risk value lies in `-RISK_HALF..RISK_HALF` (2^47 micro-USDC, 140 million USDC).
    pub const RISK_HALF: i64 = 1 << (RISK - 1);
    /// Bytes per spec chunk (`poseidon::hash_bytes`).
    pub const SPEC_CHUNK: usize = 31;
}

/// Bytes before the first word: magic, version, number, first and last sequence numbers, time,
/// accounts and instruments before the batch, and the number of words.
pub const HEADER_BYTES: usize = 4 + 1 + 8 * 4 + 4 * 3;

/// A field element from a `u128`.
fn fu(v: u128) -> Fr {
    Fr::from(v)
}

/// `2^k` in the field.
pub fn pow2(k: usize) -> Fr {
    let mut bytes = [0u8; 32];
    bytes[31 - k / 8] = 1 << (k % 8);
    Fr::from_be_bytes_mod_order(&bytes)
}

/// Whether the circuit applies `op` after the op slots with the batch's expiries and
/// settlements (`circuit_order`'s trailing parts), wherever the batch has it.
pub fn settles(op: &Op) -> bool {
    matches!(
        op,
        Op::ExpireInstrument { .. } | Op::SettlePosition { .. } | Op::SettleInstrument { .. }
    )
}

/// Whether `op` takes an op slot (`circuit_order`'s middle part).
pub fn takes_op_slot(op: &Op) -> bool {
    !settles(op)
        && !matches!(
            op,
            Op::ListInstrument { .. }
                | Op::ActivateInstrument { .. }
                | Op::SessionKey { .. }
                | Op::SetMarginMode { .. }
                | Op::Mark { .. }
        )
}

/// The ops in the order the circuit applies them: listings and activations, then the op slots,
/// session keys, margin modes, expiries, each settlement (the instrument, then the positions it pays, which
/// the batch has before it), and the marks by instrument id. Within each part the batch's order
/// is kept. `decode` returns the ops in this order, a settlement's positions before it again.
pub fn circuit_order(ops: &[Op]) -> Result<Vec<&Op>, BlobError> {
    let (mut leading, mut slots, mut keys, mut modes, mut trailing, mut settles) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let mut marks: BTreeMap<u32, &Op> = BTreeMap::new();
    let mut pending: BTreeMap<u32, Vec<&Op>> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::ListInstrument { .. } | Op::ActivateInstrument { .. } => leading.push(op),
            Op::ExpireInstrument { .. } => trailing.push(op),
            Op::SessionKey { .. } => keys.push(op),
            Op::SetMarginMode { .. } => modes.push(op),
            Op::SettlePosition { instrument, .. } => {
                pending.entry(instrument.0).or_default().push(op)
            }
            Op::SettleInstrument { instrument, .. } => {
                settles.push(op);
                settles.extend(pending.remove(&instrument.0).unwrap_or_default());
            }
            Op::Mark { instrument, .. } => {
                if marks.insert(instrument.0, op).is_some() {
                    return Err(BlobError::Unencodable {
                        op: i,
                        what: "a second mark for one instrument",
                    });
                }
            }
            _ => slots.push(op),
        }
    }
    if let Some(op) = pending.values().flatten().next() {
        let i = ops.iter().position(|o| std::ptr::eq(o, *op)).unwrap_or(0);
        return Err(BlobError::Unencodable {
            op: i,
            what: "a position settled without its instrument's settlement",
        });
    }
    Ok(leading
        .into_iter()
        .chain(slots)
        .chain(keys)
        .chain(modes)
        .chain(trailing)
        .chain(settles)
        .chain(marks.into_values())
        .collect())
}

/// One op as the circuit sees it: its record (the ten fields its commitment absorbs) and its
/// words (what the blob posts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The record.
    pub record: [Fr; 10],
    /// The words.
    pub words: Vec<Fr>,
}

fn unencodable(op: usize, what: &'static str) -> BlobError {
    BlobError::Unencodable { op, what }
}

/// `v` if it fits in `bits` unsigned bits.
fn within(v: i64, bits: u32, op: usize, what: &'static str) -> Result<u128, BlobError> {
    if v >= 0 && (v as u128) < (1u128 << bits) {
        Ok(v as u128)
    } else {
        Err(unencodable(op, what))
    }
}

pub use crate::leaf::spec_bytes;

/// A withdrawal's record and words with the owner L1 pays: the record's owner field and a
/// third word.
fn paid_to(mut e: Encoded, owner: &Address) -> Encoded {
    e.record[9] = from_address(&owner.0);
    e.words.push(e.record[9]);
    e
}

/// The record and words of one op (`index` its place in the batch, for errors); `id` is the
/// account an opening or the instrument a listing takes. A deficit cover's `socialized` is not
/// written: it is the sum of the loss shares since the previous cover.
pub fn encode_op(op: &Op, id: u32, index: usize) -> Result<Encoded, BlobError> {
    let z = Fr::from(0u64);
    let amount = |v: i64| within(v, 63, index, "an amount outside 0..2^63");
    // kind, a, b, instrument, taker_buys, price, qty: the first word and record fields.
    let head = |k: u64, a: u32, b: u32, i: u32, small: u128, price: u128, qty: u128| {
        fu(u128::from(k)
            | u128::from(a) << bits::A
            | u128::from(b) << bits::B
            | u128::from(i) << bits::INSTRUMENT)
            + fu(small) * pow2(bits::SMALL)
            + fu(price) * pow2(bits::PRICE)
            + fu(qty) * pow2(bits::QTY)
    };
    // An op of one word, its kind and account (an auction's start or end).
    let one_word = |k: u64, a: u32| {
        let mut record = [z; 10];
        record[0] = Fr::from(k);
        record[1] = Fr::from(a);
        Encoded {
            record,
            words: vec![head(k, a, 0, 0, 0, 0, 0)],
        }
    };
    let cash = |k: u64, a: u32, b: u32, amt: i64, priority: u64| -> Result<Encoded, BlobError> {
        let amt = amount(amt)?;
        let mut record = [z; 10];
        record[0] = Fr::from(k);
        record[1] = Fr::from(a);
        record[2] = Fr::from(b);
        record[4] = fu(amt);
        record[8] = Fr::from(priority);
        Ok(Encoded {
            record,
            words: vec![
                head(k, a, b, 0, 0, 0, 0),
                fu(amt) + Fr::from(priority) * pow2(63),
            ],
        })
    };
    Ok(match op {
        Op::ListInstrument { spec } => {
            let bytes = spec_bytes(spec);
            // What the circuit admits and the decoder reads back.
            leaf::spec_from_bytes(&bytes).map_err(|what| unencodable(index, what))?;
            let mut record = [z; 10];
            record[0] = Fr::from(kind::LIST);
            record[3] = Fr::from(id);
            record[9] = leaf::spec_hash(spec);
            let mut words = vec![head(kind::LIST, 0, 0, id, bytes.len() as u128, 0, 0)];
            words.extend(
                bytes
                    .chunks(bits::SPEC_CHUNK)
                    .map(Fr::from_be_bytes_mod_order),
            );
            Encoded { record, words }
        }
        Op::ActivateInstrument { instrument } | Op::ExpireInstrument { instrument } => {
            let k = if matches!(op, Op::ActivateInstrument { .. }) {
                kind::ACTIVATE
            } else {
                kind::EXPIRE
            };
            let mut record = [z; 10];
            record[0] = Fr::from(k);
            record[3] = Fr::from(instrument.0);
            Encoded {
                record,
                words: vec![head(k, 0, 0, instrument.0, 0, 0, 0)],
            }
        }
        Op::SettleInstrument {
            instrument,
            price,
            insurance_credit,
        } => {
            let mut record = [z; 10];
            record[0] = Fr::from(kind::SETTLE);
            record[3] = Fr::from(instrument.0);
            record[4] = from_i64(insurance_credit.0);
            record[5] = from_i64(price.0);
            Encoded {
                record,
                words: vec![
                    head(kind::SETTLE, 0, 0, instrument.0, 0, 0, 0),
                    record[5],
                    record[4],
                ],
            }
        }
        Op::SettlePosition {
            account,
            instrument,
            qty,
            cash: paid,
        } => {
            let mut record = [z; 10];
            record[0] = Fr::from(kind::SETTLE_POSITION);
            record[1] = Fr::from(account.0);
            record[3] = Fr::from(instrument.0);
            record[4] = from_i64(paid.0);
            record[6] = from_i64(qty.0);
            Encoded {
                record,
                words: vec![
                    head(kind::SETTLE_POSITION, account.0, 0, instrument.0, 0, 0, 0),
                    record[4],
                    record[6],
                ],
            }
        }
        Op::OpenAccount { owner } => {
            let mut record = [z; 10];
            record[0] = Fr::from(kind::OPEN);
            record[1] = Fr::from(id);
            record[9] = from_address(&owner.0);
            Encoded {
                record,
                words: vec![head(kind::OPEN, id, 0, 0, 0, 0, 0), record[9]],
            }
        }
        Op::Deposit { account, amount } => cash(kind::DEPOSIT, account.0, 0, amount.0, 0)?,
        Op::Withdraw {
            account,
            amount,
            owner,
        } => paid_to(cash(kind::WITHDRAW, account.0, 0, amount.0, 0)?, owner),
        Op::LossShared { account, amount } => cash(kind::LOSS_SHARED, account.0, 0, amount.0, 0)?,
        Op::LiquidationStart { account } => one_word(kind::LIQUIDATION_START, account.0),
        Op::LiquidationEnd { account } => one_word(kind::LIQUIDATION_END, account.0),
        Op::Transfer { from, to, amount } => cash(kind::TRANSFER, from.0, to.0, amount.0, 0)?,
        Op::L1Deposit {
            priority,
            account,
            amount,
        } => cash(kind::L1_DEPOSIT, account.0, 0, amount.0, *priority)?,
        Op::L1Withdrawal {
            priority,
            account,
            amount,
            requester,
        } => paid_to(
            cash(kind::L1_WITHDRAWAL, account.0, 0, amount.0, *priority)?,
            requester,
        ),
        Op::DeficitCovered {
            account,
            insurance,
            fee_pool,
            ..
        } => {
            let from_fees = within(fee_pool.0, 63, index, "a fee-pool share outside 0..2^63")?;
            let mut e = cash(kind::DEFICIT, account.0, 0, insurance.0, 0)?;
            e.record[5] = fu(from_fees);
            e.words[0] = head(kind::DEFICIT, account.0, 0, 0, 0, from_fees, 0);
            e
        }
        Op::Fill { .. } | Op::Liquidation { .. } | Op::L1Close { .. } => {
            let t = trade(op).expect("a fill, a liquidation or a forced close");
            let (k, instrument, a, b, buys) = (t.kind, t.instrument, t.a, t.b, t.taker_buys);
            let fee = t.fee.unwrap_or(0);
            let qty = t.qty.checked_abs().unwrap_or(-1);
            let price = within(t.price, 63, index, "a price outside 0..2^63")?;
            let qty = within(qty, 63, index, "a quantity outside 0..2^63")?;
            let fee = amount(fee)?;
            let mut record = [z; 10];
            record[0] = Fr::from(k);
            record[1] = Fr::from(a);
            record[2] = Fr::from(b);
            record[3] = Fr::from(instrument);
            record[5] = fu(price);
            record[6] = fu(qty);
            record[7] = Fr::from(u64::from(buys));
            let mut words = vec![head(k, a, b, instrument, u128::from(buys), price, qty)];
            if k == kind::LIQUIDATION {
                record[4] = fu(fee);
                words.push(fu(fee));
            }
            // A forced close: the queue id in the amount word (amount 0), then the requester.
            if let Op::L1Close {
                priority,
                requester,
                ..
            } = op
            {
                record[8] = Fr::from(*priority);
                record[9] = from_address(&requester.0);
                words.push(Fr::from(*priority) * pow2(63));
                words.push(record[9]);
            }
            Encoded { record, words }
        }
        Op::SessionKey {
            account,
            key,
            expiry_ms,
            at_ms,
        } => {
            let mut record = [z; 10];
            record[0] = Fr::from(kind::SESSION_KEY);
            record[1] = Fr::from(account.0);
            record[4] = Fr::from(*expiry_ms);
            record[5] = Fr::from(*at_ms);
            record[9] = from_address(&key.0);
            Encoded {
                record,
                words: vec![
                    head(kind::SESSION_KEY, account.0, 0, 0, 0, 0, 0)
                        + Fr::from(*expiry_ms) * pow2(bits::SMALL)
                        + Fr::from(*at_ms) * pow2(bits::QTY),
                    record[9],
                ],
            }
        }
        Op::SetMarginMode { account, mode } => {
            let mut record = [z; 10];
            record[0] = Fr::from(kind::MARGIN_MODE);
            record[1] = Fr::from(account.0);
            record[4] = Fr::from(mode.code());
            Encoded {
                record,
                words: vec![head(
                    kind::MARGIN_MODE,
                    account.0,
                    0,
                    0,
                    u128::from(mode.code()),
                    0,
                    0,
                )],
            }
        }
        Op::Mark {
            instrument,
            mark,
            index: underlying,
            risk,
            published_ms,
        } => {
            let underlying = within(underlying.0, 63, index, "an index outside 0..2^63")?;
            if risk.len() > MAX_RISK {
                return Err(unencodable(index, "a risk array longer than 64"));
            }
            let chunks = risk.len().div_ceil(RISK_CHUNK);
            let mut values: Vec<i64> = risk.iter().map(|a| a.0).collect();
            values.resize(chunks * RISK_CHUNK, 0);
            let half = bits::RISK_HALF;
            if values.iter().any(|v| *v < -half || *v >= half) {
                return Err(unencodable(index, "a risk value outside -2^47..2^47"));
            }
            let mut record = [z; 10];
            record[0] = Fr::from(kind::MARK);
            record[3] = Fr::from(instrument.0);
            record[1] = Fr::from(*published_ms);
            record[5] = from_i64(mark.0);
            record[6] = fu(underlying);
            record[9] = leaf::risk_hash(Price(underlying as i64), risk);
            // The publication time fills the two account ids' 64 bits.
            let mut words = vec![
                head(
                    kind::MARK,
                    *published_ms as u32,
                    (*published_ms >> 32) as u32,
                    instrument.0,
                    risk.len() as u128,
                    0,
                    underlying,
                ),
                record[5],
            ];
            words.extend(risk_words(&values));
            Encoded { record, words }
        }
    })
}

/// A trade as the circuit sees it: a fill, or a liquidation as a trade at its price between the
/// counterparty (a, no fee) and the liquidated account (b, its fee to insurance), `taker_buys`
/// when the liquidated account's position grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trade {
    /// `kind::FILL`, `kind::LIQUIDATION` or `kind::L1_CLOSE`.
    pub kind: u64,
    /// Instrument.
    pub instrument: u32,
    /// The maker, the counterparty, or the backstop.
    pub a: u32,
    /// The taker, the liquidated account, or the account a forced close names.
    pub b: u32,
    /// The taker bought (the liquidated position grows).
    pub taker_buys: bool,
    /// Price per contract.
    pub price: i64,
    /// Contracts (a liquidation's signed change; its size is the absolute value).
    pub qty: i64,
    /// A liquidation's fee.
    pub fee: Option<i64>,
}

/// The trade of a fill, a liquidation or a forced close.
pub fn trade(op: &Op) -> Option<Trade> {
    match op {
        Op::Fill {
            instrument,
            maker,
            taker,
            taker_side,
            price,
            qty,
        } => Some(Trade {
            kind: kind::FILL,
            instrument: instrument.0,
            a: maker.0,
            b: taker.0,
            taker_buys: *taker_side == Side::Buy,
            price: price.0,
            qty: qty.0,
            fee: None,
        }),
        Op::Liquidation {
            account,
            counterparty,
            instrument,
            qty,
            price,
            fee,
        } => Some(Trade {
            kind: kind::LIQUIDATION,
            instrument: instrument.0,
            a: counterparty.0,
            b: account.0,
            taker_buys: qty.0 > 0,
            price: price.0,
            qty: qty.0,
            fee: Some(fee.0),
        }),
        Op::L1Close {
            backstop,
            account,
            instrument,
            qty,
            price,
            ..
        } => Some(Trade {
            kind: kind::L1_CLOSE,
            instrument: instrument.0,
            a: backstop.0,
            b: account.0,
            taker_buys: qty.0 > 0,
            price: price.0,
            qty: qty.0,
            fee: None,
        }),
        _ => None,
    }
}

/// Risk values (each in -2^47..2^47) five to a word, value `j` of a word at bit `48 j` as
/// `v + 2^47`.
pub fn risk_words(values: &[i64]) -> Vec<Fr> {
    values
        .chunks(bits::RISK_PER_WORD)
        .map(|c| {
            c.iter().enumerate().fold(Fr::from(0u64), |acc, (j, v)| {
                acc + Fr::from((*v + bits::RISK_HALF) as u64) * pow2(bits::RISK * j)
            })
        })
        .collect()
}

/// Every op of a batch, in circuit order, with the ids openings and listings take.
pub fn encode_ops(meta: &BlobMeta, ops: &[Op]) -> Result<Vec<Encoded>, BlobError> {
    let ordered = circuit_order(ops)?;
    let (mut account, mut instrument) = (meta.accounts, meta.instruments);
    ordered
        .into_iter()
        .map(|op| {
            let index = ops.iter().position(|o| std::ptr::eq(o, op)).unwrap_or(0);
            let id = match op {
                Op::OpenAccount { .. } => {
                    account += 1;
                    account - 1
                }
                Op::ListInstrument { .. } => {
                    instrument += 1;
                    instrument - 1
                }
                _ => 0,
            };
            encode_op(op, id, index)
        })
        .collect()
}

/// Encodes a batch: the header, then every op's words.
pub fn encode(meta: &BlobMeta, ops: &[Op]) -> Result<Vec<u8>, BlobError> {
    let encoded = encode_ops(meta, ops)?;
    let mut out = Vec::with_capacity(HEADER_BYTES + 32 * encoded.len() * 2);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    for v in [meta.number, meta.first_seq, meta.last_seq, meta.time_ms] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&meta.accounts.to_be_bytes());
    out.extend_from_slice(&meta.instruments.to_be_bytes());
    let n: usize = encoded.iter().map(|e| e.words.len()).sum();
    out.extend_from_slice(&(n as u32).to_be_bytes());
    for w in encoded.iter().flat_map(|e| &e.words) {
        out.extend_from_slice(&to_bytes(w));
    }
    if out.len() > MAX_BLOB_BYTES {
        return Err(BlobError::Oversized(out.len()));
    }
    Ok(out)
}

/// The commitment the validity proof takes as a public input: `h = Poseidon(h, record)` over
/// the ops' records in circuit order, from 0.
pub fn commitment(encoded: &[Encoded]) -> Fr {
    encoded.iter().fold(Fr::from(0u64), |h, e| {
        let mut inputs = vec![h];
        inputs.extend_from_slice(&e.record);
        hash(&inputs)
    })
}

/// The words of a blob (after its header), as field elements.
pub fn words(bytes: &[u8]) -> Result<Vec<Fr>, BlobError> {
    let body = bytes
        .get(HEADER_BYTES..)
        .ok_or(BlobError::Truncated(bytes.len()))?;
    if body.len() % 32 != 0 {
        return Err(BlobError::Truncated(bytes.len()));
    }
    body.chunks(32)
        .enumerate()
        .map(|(i, c)| {
            crate::poseidon::from_bytes(c.try_into().expect("32 bytes")).ok_or(BlobError::Invalid {
                offset: HEADER_BYTES + 32 * i,
                what: "word (not below the field's modulus)",
            })
        })
        .collect()
}

/// The evaluation point and value binding a proof to a blob's words: `z = keccak256(keccak256(
/// words) || commitment) mod p` (the words as posted, 32 big-endian bytes each) and
/// `y = z^n + sum_i w_i z^(n-1-i)` over the `n` words. The L1 contract computes both from the
/// posted bytes when the batch is committed; the circuit evaluates the same polynomial over the
/// words it computes from its own records. The commitment (Poseidon over the records, which
/// determine the words) is fixed before `z` is drawn, so words other than the posted ones give
/// the same `y` with probability at most `n / p`.
pub fn binding(commitment: Fr, words: &[Fr]) -> (Fr, Fr) {
    let mut posted = Keccak256::new();
    for w in words {
        posted.update(to_bytes(w));
    }
    let mut h = Keccak256::new();
    h.update(posted.finalize());
    h.update(to_bytes(&commitment));
    let z = Fr::from_be_bytes_mod_order(&h.finalize());
    (z, evaluate(z, words))
}

/// `z^n + sum_i w_i z^(n-1-i)` (Horner from 1).
pub fn evaluate(z: Fr, words: &[Fr]) -> Fr {
    words.iter().fold(Fr::from(1u64), |y, w| y * z + w)
}

/// The little-endian bits `from..from+n` of a word.
fn field_bits(w: &Fr, from: usize, n: usize) -> u128 {
    let bits = w.into_bigint().to_bits_le();
    (0..n).fold(0u128, |acc, k| {
        acc | (u128::from(bits.get(from + k).copied().unwrap_or(false)) << k)
    })
}

/// A signed value from a word holding `from_i64(v)`.
fn signed(w: &Fr) -> Option<i64> {
    let small = |f: &Fr| {
        let b = f.into_bigint();
        (b.num_bits() <= 64).then(|| i128::from(b.as_ref()[0]))
    };
    small(w)
        .or_else(|| small(&-*w).map(|v| -v))
        .and_then(|v| i64::try_from(v).ok())
}

/// Decodes a blob: its meta and every op (in circuit order), or an error and nothing. Only the
/// canonical encoding of its ops is accepted (each op re-encodes to exactly its words).
pub fn decode(bytes: &[u8]) -> Result<(BlobMeta, Vec<Op>), BlobError> {
    if bytes.len() > MAX_BLOB_BYTES {
        return Err(BlobError::Oversized(bytes.len()));
    }
    if bytes.get(..4) != Some(MAGIC.as_slice()) {
        return Err(BlobError::Magic);
    }
    let version = *bytes.get(4).ok_or(BlobError::Truncated(bytes.len()))?;
    if version != VERSION {
        return Err(BlobError::Version(version));
    }
    if bytes.len() < HEADER_BYTES {
        return Err(BlobError::Truncated(bytes.len()));
    }
    let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let meta = BlobMeta {
        number: u64_at(5),
        first_seq: u64_at(13),
        last_seq: u64_at(21),
        time_ms: u64_at(29),
        accounts: u32_at(37),
        instruments: u32_at(41),
    };
    if meta.first_seq > meta.last_seq {
        return Err(BlobError::Invalid {
            offset: 13,
            what: "sequence range",
        });
    }
    let end = HEADER_BYTES + 32 * u32_at(45) as usize;
    if bytes.len() < end {
        return Err(BlobError::Truncated(bytes.len()));
    }
    if bytes.len() > end {
        return Err(BlobError::Trailing(bytes.len() - end));
    }
    let words = words(bytes)?;
    let mut ops = Vec::new();
    let mut at = 0;
    let (mut account, mut instrument) = (meta.accounts, meta.instruments);
    // Loss shares since the last deficit cover (a cover's `socialized`).
    let mut shared: i64 = 0;
    // Where the settlement being read sits in `ops`: its positions follow its record in the
    // words and precede it in the ops (the order the ledger applies them).
    let mut settle_at: Option<usize> = None;
    while at < words.len() {
        let offset = HEADER_BYTES + 32 * at;
        let invalid = |what| BlobError::Invalid { offset, what };
        let w0 = words[at];
        let get = |k: usize| words.get(at + k).ok_or(BlobError::Truncated(bytes.len()));
        let k = field_bits(&w0, 0, 8) as u64;
        let a = AccountId(field_bits(&w0, bits::A, 32) as u32);
        let b = AccountId(field_bits(&w0, bits::B, 32) as u32);
        let i = InstrumentId(field_bits(&w0, bits::INSTRUMENT, 32) as u32);
        let small = field_bits(&w0, bits::SMALL, 1) != 0;
        let price = field_bits(&w0, bits::PRICE, 63) as i64;
        let qty = field_bits(&w0, bits::QTY, 63) as i64;
        let amount_word = || -> Result<(i64, u64), BlobError> {
            let w = get(1)?;
            Ok((field_bits(w, 0, 63) as i64, field_bits(w, 63, 64) as u64))
        };
        let signed_word = |n: usize, what| get(n).and_then(|w| signed(w).ok_or(invalid(what)));
        // (An address word above 2^160 does not re-encode: refused below.)
        let address_word =
            |n: usize| get(n).map(|w| Address(to_bytes(w)[12..].try_into().expect("20 bytes")));
        let mut id = 0;
        let op = match k {
            kind::LIST => {
                let len = field_bits(&w0, bits::SMALL, 16) as usize;
                let n = len.div_ceil(bits::SPEC_CHUNK);
                let mut raw = Vec::with_capacity(len);
                for c in 0..n {
                    let take = (len - c * bits::SPEC_CHUNK).min(bits::SPEC_CHUNK);
                    raw.extend_from_slice(&to_bytes(get(1 + c)?)[32 - take..]);
                }
                let spec = leaf::spec_from_bytes(&raw).map_err(invalid)?;
                id = instrument;
                instrument += 1;
                Op::ListInstrument { spec }
            }
            kind::ACTIVATE => Op::ActivateInstrument { instrument: i },
            kind::EXPIRE => Op::ExpireInstrument { instrument: i },
            kind::SETTLE => Op::SettleInstrument {
                instrument: i,
                price: Price(signed_word(1, "settlement price")?),
                insurance_credit: Amount(signed_word(2, "insurance credit")?),
            },
            kind::SETTLE_POSITION => Op::SettlePosition {
                account: a,
                instrument: i,
                qty: Qty(signed_word(2, "settled quantity")?),
                cash: Amount(signed_word(1, "settlement cash")?),
            },
            kind::OPEN => {
                id = account;
                account += 1;
                Op::OpenAccount {
                    owner: address_word(1)?,
                }
            }
            kind::DEPOSIT => Op::Deposit {
                account: a,
                amount: Amount(amount_word()?.0),
            },
            kind::WITHDRAW => Op::Withdraw {
                account: a,
                amount: Amount(amount_word()?.0),
                owner: address_word(2)?,
            },
            kind::LOSS_SHARED => {
                let amount = amount_word()?.0;
                shared = shared.saturating_add(amount);
                Op::LossShared {
                    account: a,
                    amount: Amount(amount),
                }
            }
            kind::LIQUIDATION_START => Op::LiquidationStart { account: a },
            kind::LIQUIDATION_END => Op::LiquidationEnd { account: a },
            kind::TRANSFER => Op::Transfer {
                from: a,
                to: b,
                amount: Amount(amount_word()?.0),
            },
            kind::L1_DEPOSIT | kind::L1_WITHDRAWAL => {
                let (amount, priority) = amount_word()?;
                if k == kind::L1_DEPOSIT {
                    Op::L1Deposit {
                        priority,
                        account: a,
                        amount: Amount(amount),
                    }
                } else {
                    Op::L1Withdrawal {
                        priority,
                        account: a,
                        amount: Amount(amount),
                        requester: address_word(2)?,
                    }
                }
            }
            kind::DEFICIT => Op::DeficitCovered {
                account: a,
                insurance: Amount(amount_word()?.0),
                fee_pool: Amount(price),
                socialized: Amount(std::mem::take(&mut shared)),
            },
            kind::FILL => {
                if price <= 0 || qty <= 0 {
                    return Err(invalid("fill price or quantity"));
                }
                Op::Fill {
                    instrument: i,
                    maker: a,
                    taker: b,
                    taker_side: if small { Side::Buy } else { Side::Sell },
                    price: Price(price),
                    qty: Qty(qty),
                }
            }
            kind::LIQUIDATION => Op::Liquidation {
                account: b,
                counterparty: a,
                instrument: i,
                qty: Qty(if small { qty } else { -qty }),
                price: Price(price),
                fee: Amount(amount_word()?.0),
            },
            kind::L1_CLOSE => {
                let (amount, priority) = amount_word()?;
                if amount != 0 {
                    return Err(invalid("a forced close's amount"));
                }
                Op::L1Close {
                    priority,
                    backstop: a,
                    account: b,
                    instrument: i,
                    qty: Qty(if small { qty } else { -qty }),
                    price: Price(price),
                    requester: address_word(2)?,
                }
            }
            kind::SESSION_KEY => {
                let key = to_bytes(get(1)?);
                Op::SessionKey {
                    account: a,
                    key: Address(key[12..].try_into().expect("20 bytes")),
                    expiry_ms: field_bits(&w0, bits::SMALL, 64) as u64,
                    at_ms: field_bits(&w0, bits::QTY, 64) as u64,
                }
            }
            kind::MARGIN_MODE => Op::SetMarginMode {
                account: a,
                mode: MarginMode::from_code(field_bits(&w0, bits::SMALL, 8) as u8)
                    .ok_or(invalid("margin mode"))?,
            },
            kind::MARK => {
                let n = field_bits(&w0, bits::SMALL, 8) as usize;
                if n > MAX_RISK {
                    return Err(invalid("risk array length"));
                }
                let risk = (0..n)
                    .map(|j| {
                        let w = get(2 + j / bits::RISK_PER_WORD)?;
                        let digit =
                            field_bits(w, bits::RISK * (j % bits::RISK_PER_WORD), bits::RISK);
                        Ok(Amount(digit as i64 - bits::RISK_HALF))
                    })
                    .collect::<Result<Vec<_>, BlobError>>()?;
                Op::Mark {
                    instrument: i,
                    mark: Price(signed_word(1, "mark")?),
                    index: Price(field_bits(&w0, bits::QTY, 63) as i64),
                    risk,
                    published_ms: field_bits(&w0, bits::A, 64) as u64,
                }
            }
            tag => {
                return Err(BlobError::UnknownOp {
                    offset,
                    tag: tag as u8,
                });
            }
        };
        // Canonical: the op re-encodes to exactly the words read.
        let encoded = encode_op(&op, id, ops.len()).map_err(|_| invalid("op fields"))?;
        let n = encoded.words.len();
        if words.get(at..at + n) != Some(encoded.words.as_slice()) {
            return Err(invalid("op encoding (not canonical)"));
        }
        at += n;
        match (&op, settle_at) {
            (Op::SettleInstrument { .. }, _) => settle_at = Some(ops.len()),
            (Op::SettlePosition { instrument, .. }, Some(s)) if matches!(&ops[s], Op::SettleInstrument { instrument: x, .. } if x == instrument) =>
                {}
            _ => settle_at = None,
        }
        match (&op, settle_at) {
            // A settled position goes before its instrument's settlement, in the ops.
            (Op::SettlePosition { .. }, Some(s)) => {
                ops.insert(s, op);
                settle_at = Some(s + 1);
            }
            _ => ops.push(op),
        }
    }
    // The words must be in circuit order, as the encoder writes them.
    let again = encode(&meta, &ops).map_err(|_| BlobError::Invalid {
        offset: HEADER_BYTES,
        what: "ops",
    })?;
    if again != bytes {
        return Err(BlobError::Invalid {
            offset: HEADER_BYTES,
            what: "op order (not the circuit's)",
        });
    }
    Ok((meta, ops))
}
