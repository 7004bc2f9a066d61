//! The data blob: a batch's ops in a canonical, versioned, packed binary form (docs/settlement.md
//! specifies it byte by byte; test-vectors/settlement.json holds encoded examples). Packed, not
//! compressed with a general codec: the validity proof must bind to exactly these bytes.
//!
//! Decoding is all or nothing: truncated, corrupted, oversized, non-canonical or trailing data is
//! refused with the offset where it went wrong, and no op is returned.

use std::collections::BTreeMap;

use optio_types::codec::Reader;
use optio_types::{AccountId, Address, Amount, InstrumentId, Price, Qty, Side};

use crate::ops::Op;

/// First bytes of every blob.
pub const MAGIC: &[u8; 4] = b"OPTB";
/// The version this code writes and reads.
pub const VERSION: u8 = 1;
/// Largest blob accepted (bytes).
pub const MAX_BLOB_BYTES: usize = 1 << 20;
/// Longest risk array accepted.
pub const MAX_RISK: usize = 64;

/// What a blob says about its batch besides the ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobMeta {
    /// Batch number (from 1).
    pub number: u64,
    /// First sequence number covered.
    pub first_seq: u64,
    /// Last sequence number covered.
    pub last_seq: u64,
    /// Engine time at the cut, ms.
    pub time_ms: u64,
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
}

mod tag {
    pub const LIST: u8 = 1;
    pub const ACTIVATE: u8 = 2;
    pub const EXPIRE: u8 = 3;
    pub const SETTLE: u8 = 4;
    pub const SETTLE_POSITION: u8 = 5;
    pub const OPEN: u8 = 6;
    pub const DEPOSIT: u8 = 7;
    pub const WITHDRAW: u8 = 8;
    pub const TRANSFER: u8 = 9;
    pub const FILL_TAKER_BUYS: u8 = 16;
    pub const FILL_TAKER_SELLS: u8 = 17;
    pub const LIQUIDATION: u8 = 20;
    pub const LOSS_SHARED: u8 = 21;
    pub const DEFICIT: u8 = 22;
    pub const SESSION_KEY: u8 = 23;
    pub const MARK: u8 = 24;
    pub const L1_DEPOSIT: u8 = 25;
    pub const L1_WITHDRAWAL: u8 = 26;
}

fn uvar(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn svar(out: &mut Vec<u8>, v: i64) {
    uvar(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Encodes a batch's ops. Fill prices are written as the difference from the previous fill's
/// price in the same instrument within this blob (the first against 0).
pub fn encode(meta: &BlobMeta, ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + ops.len() * 12);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    for v in [
        meta.number,
        meta.first_seq,
        meta.last_seq,
        meta.time_ms,
        ops.len() as u64,
    ] {
        uvar(&mut out, v);
    }
    let mut last_price: BTreeMap<u32, i64> = BTreeMap::new();
    for op in ops {
        match op {
            Op::ListInstrument { spec } => {
                out.push(tag::LIST);
                let mut w = optio_types::codec::Writer::default();
                optio_types::state::encode_spec(&mut w, spec);
                uvar(&mut out, w.bytes.len() as u64);
                out.extend_from_slice(&w.bytes);
            }
            Op::ActivateInstrument { instrument } => {
                out.push(tag::ACTIVATE);
                uvar(&mut out, instrument.0.into());
            }
            Op::ExpireInstrument { instrument } => {
                out.push(tag::EXPIRE);
                uvar(&mut out, instrument.0.into());
            }
            Op::SettleInstrument {
                instrument,
                price,
                insurance_credit,
            } => {
                out.push(tag::SETTLE);
                uvar(&mut out, instrument.0.into());
                svar(&mut out, price.0);
                svar(&mut out, insurance_credit.0);
            }
            Op::SettlePosition {
                account,
                instrument,
                cash,
            } => {
                out.push(tag::SETTLE_POSITION);
                uvar(&mut out, account.0.into());
                uvar(&mut out, instrument.0.into());
                svar(&mut out, cash.0);
            }
            Op::OpenAccount { owner } => {
                out.push(tag::OPEN);
                out.extend_from_slice(&owner.0);
            }
            Op::Deposit { account, amount }
            | Op::Withdraw { account, amount }
            | Op::LossShared { account, amount } => {
                out.push(match op {
                    Op::Deposit { .. } => tag::DEPOSIT,
                    Op::Withdraw { .. } => tag::WITHDRAW,
                    _ => tag::LOSS_SHARED,
                });
                uvar(&mut out, account.0.into());
                svar(&mut out, amount.0);
            }
            Op::L1Deposit {
                priority,
                account,
                amount,
            }
            | Op::L1Withdrawal {
                priority,
                account,
                amount,
            } => {
                out.push(match op {
                    Op::L1Deposit { .. } => tag::L1_DEPOSIT,
                    _ => tag::L1_WITHDRAWAL,
                });
                uvar(&mut out, *priority);
                uvar(&mut out, account.0.into());
                svar(&mut out, amount.0);
            }
            Op::Transfer { from, to, amount } => {
                out.push(tag::TRANSFER);
                uvar(&mut out, from.0.into());
                uvar(&mut out, to.0.into());
                svar(&mut out, amount.0);
            }
            Op::Fill {
                instrument,
                maker,
                taker,
                taker_side,
                price,
                qty,
            } => {
                out.push(if *taker_side == Side::Buy {
                    tag::FILL_TAKER_BUYS
                } else {
                    tag::FILL_TAKER_SELLS
                });
                uvar(&mut out, instrument.0.into());
                uvar(&mut out, maker.0.into());
                uvar(&mut out, taker.0.into());
                let previous = last_price.insert(instrument.0, price.0).unwrap_or(0);
                svar(&mut out, price.0.wrapping_sub(previous));
                uvar(&mut out, qty.0 as u64);
            }
            Op::Liquidation {
                account,
                counterparty,
                instrument,
                qty,
                price,
                fee,
            } => {
                out.push(tag::LIQUIDATION);
                uvar(&mut out, account.0.into());
                uvar(&mut out, counterparty.0.into());
                uvar(&mut out, instrument.0.into());
                svar(&mut out, qty.0);
                svar(&mut out, price.0);
                svar(&mut out, fee.0);
            }
            Op::DeficitCovered {
                account,
                insurance,
                fee_pool,
                socialized,
            } => {
                out.push(tag::DEFICIT);
                uvar(&mut out, account.0.into());
                svar(&mut out, insurance.0);
                svar(&mut out, fee_pool.0);
                svar(&mut out, socialized.0);
            }
            Op::SessionKey {
                account,
                key,
                expiry_ms,
                at_ms,
            } => {
                out.push(tag::SESSION_KEY);
                uvar(&mut out, account.0.into());
                out.extend_from_slice(&key.0);
                uvar(&mut out, *expiry_ms);
                uvar(&mut out, *at_ms);
            }
            Op::Mark {
                instrument,
                mark,
                risk,
            } => {
                out.push(tag::MARK);
                uvar(&mut out, instrument.0.into());
                svar(&mut out, mark.0);
                uvar(&mut out, risk.len() as u64);
                for a in risk {
                    svar(&mut out, a.0);
                }
            }
        }
    }
    out
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Result<u8, BlobError> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or(BlobError::Truncated(self.at))?;
        self.at += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], BlobError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or(BlobError::Truncated(self.bytes.len()))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn uvar(&mut self) -> Result<u64, BlobError> {
        let start = self.at;
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            if i == 9 && b > 1 {
                return Err(BlobError::Invalid {
                    offset: start,
                    what: "varint",
                });
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                // Shortest form only (one encoding per value: the blob is canonical).
                if b == 0 && i > 0 {
                    return Err(BlobError::Invalid {
                        offset: start,
                        what: "varint",
                    });
                }
                return Ok(v);
            }
        }
        Err(BlobError::Invalid {
            offset: start,
            what: "varint",
        })
    }

    fn svar(&mut self) -> Result<i64, BlobError> {
        let u = self.uvar()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, BlobError> {
        let at = self.at;
        u32::try_from(self.uvar()?).map_err(|_| BlobError::Invalid { offset: at, what })
    }

    fn account(&mut self) -> Result<AccountId, BlobError> {
        self.u32("account").map(AccountId)
    }

    fn instrument(&mut self) -> Result<InstrumentId, BlobError> {
        self.u32("instrument").map(InstrumentId)
    }

    fn address(&mut self) -> Result<Address, BlobError> {
        Ok(Address(self.take(20)?.try_into().expect("20 bytes taken")))
    }

    fn amount(&mut self) -> Result<Amount, BlobError> {
        self.svar().map(Amount)
    }
}

/// Decodes a blob: its meta and every op, or an error and nothing.
pub fn decode(bytes: &[u8]) -> Result<(BlobMeta, Vec<Op>), BlobError> {
    if bytes.len() > MAX_BLOB_BYTES {
        return Err(BlobError::Oversized(bytes.len()));
    }
    let mut c = Cursor { bytes, at: 0 };
    if c.take(4).map_err(|_| BlobError::Magic)? != MAGIC {
        return Err(BlobError::Magic);
    }
    let version = c.byte()?;
    if version != VERSION {
        return Err(BlobError::Version(version));
    }
    let meta = BlobMeta {
        number: c.uvar()?,
        first_seq: c.uvar()?,
        last_seq: c.uvar()?,
        time_ms: c.uvar()?,
    };
    if meta.first_seq > meta.last_seq {
        return Err(BlobError::Invalid {
            offset: 5,
            what: "sequence range",
        });
    }
    let count_at = c.at;
    let count = c.uvar()?;
    // Every op takes at least two bytes: a count beyond that is a lie, not an allocation.
    if count > (bytes.len() / 2) as u64 {
        return Err(BlobError::Invalid {
            offset: count_at,
            what: "op count",
        });
    }
    let mut ops = Vec::with_capacity(count as usize);
    let mut last_price: BTreeMap<u32, i64> = BTreeMap::new();
    for _ in 0..count {
        let offset = c.at;
        let t = c.byte()?;
        let op = match t {
            tag::LIST => {
                let len = c.uvar()?;
                let raw =
                    c.take(usize::try_from(len).map_err(|_| BlobError::Truncated(bytes.len()))?)?;
                let mut r = Reader::new(raw);
                let spec =
                    optio_types::state::decode_spec(&mut r).map_err(|_| BlobError::Invalid {
                        offset,
                        what: "instrument spec",
                    })?;
                r.finish().map_err(|_| BlobError::Invalid {
                    offset,
                    what: "instrument spec",
                })?;
                Op::ListInstrument { spec }
            }
            tag::ACTIVATE => Op::ActivateInstrument {
                instrument: c.instrument()?,
            },
            tag::EXPIRE => Op::ExpireInstrument {
                instrument: c.instrument()?,
            },
            tag::SETTLE => Op::SettleInstrument {
                instrument: c.instrument()?,
                price: Price(c.svar()?),
                insurance_credit: c.amount()?,
            },
            tag::SETTLE_POSITION => Op::SettlePosition {
                account: c.account()?,
                instrument: c.instrument()?,
                cash: c.amount()?,
            },
            tag::OPEN => Op::OpenAccount {
                owner: c.address()?,
            },
            tag::DEPOSIT => Op::Deposit {
                account: c.account()?,
                amount: c.amount()?,
            },
            tag::WITHDRAW => Op::Withdraw {
                account: c.account()?,
                amount: c.amount()?,
            },
            tag::L1_DEPOSIT => Op::L1Deposit {
                priority: c.uvar()?,
                account: c.account()?,
                amount: c.amount()?,
            },
            tag::L1_WITHDRAWAL => Op::L1Withdrawal {
                priority: c.uvar()?,
                account: c.account()?,
                amount: c.amount()?,
            },
            tag::LOSS_SHARED => Op::LossShared {
                account: c.account()?,
                amount: c.amount()?,
            },
            tag::TRANSFER => Op::Transfer {
                from: c.account()?,
                to: c.account()?,
                amount: c.amount()?,
            },
            tag::FILL_TAKER_BUYS | tag::FILL_TAKER_SELLS => {
                let (instrument, maker, taker) = (c.instrument()?, c.account()?, c.account()?);
                let delta = c.svar()?;
                let price = last_price
                    .get(&instrument.0)
                    .copied()
                    .unwrap_or(0)
                    .wrapping_add(delta);
                last_price.insert(instrument.0, price);
                let qty_at = c.at;
                let qty = i64::try_from(c.uvar()?).map_err(|_| BlobError::Invalid {
                    offset: qty_at,
                    what: "quantity",
                })?;
                if price <= 0 || qty <= 0 {
                    return Err(BlobError::Invalid {
                        offset,
                        what: "fill price or quantity",
                    });
                }
                let taker_side = if t == tag::FILL_TAKER_BUYS {
                    Side::Buy
                } else {
                    Side::Sell
                };
                Op::Fill {
                    instrument,
                    maker,
                    taker,
                    taker_side,
                    price: Price(price),
                    qty: Qty(qty),
                }
            }
            tag::LIQUIDATION => Op::Liquidation {
                account: c.account()?,
                counterparty: c.account()?,
                instrument: c.instrument()?,
                qty: Qty(c.svar()?),
                price: Price(c.svar()?),
                fee: c.amount()?,
            },
            tag::DEFICIT => Op::DeficitCovered {
                account: c.account()?,
                insurance: c.amount()?,
                fee_pool: c.amount()?,
                socialized: c.amount()?,
            },
            tag::SESSION_KEY => Op::SessionKey {
                account: c.account()?,
                key: c.address()?,
                expiry_ms: c.uvar()?,
                at_ms: c.uvar()?,
            },
            tag::MARK => {
                let (instrument, mark) = (c.instrument()?, Price(c.svar()?));
                let n_at = c.at;
                let n = c.uvar()?;
                if n > MAX_RISK as u64 {
                    return Err(BlobError::Invalid {
                        offset: n_at,
                        what: "risk array length",
                    });
                }
                let risk = (0..n).map(|_| c.amount()).collect::<Result<Vec<_>, _>>()?;
                Op::Mark {
                    instrument,
                    mark,
                    risk,
                }
            }
            tag => return Err(BlobError::UnknownOp { offset, tag }),
        };
        ops.push(op);
    }
    if c.at != bytes.len() {
        return Err(BlobError::Trailing(bytes.len() - c.at));
    }
    Ok((meta, ops))
}
