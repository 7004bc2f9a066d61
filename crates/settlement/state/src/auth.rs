//! Authorizations: the signed orders behind a batch's fills, posted beside its data so that
//! anyone can check every fill against what its two accounts signed (docs/settlement.md,
//! "Authorization challenge").
//!
//! The circuit does not check signatures (secp256k1 and keccak would cost far more than the
//! state transition). Instead each fill of a batch has two records in the batch's authorization
//! section, the maker's order then the taker's, in the fills' circuit order: the fields of the
//! order its account signed (nonce, signature expiry, signer, domain, limit price, amount,
//! maximum fee) and the signature. The instrument, side, account and owner are the fill's and
//! the state's, so a record rebuilds the exact EIP-712 digest the gateway checked
//! (`optio_intents::Action` with its `TradeData`). A fill is authorized when its record's
//! signature recovers to its signer, the signer is the account's owner or one of the session
//! keys its leaf commits at the batch's root (expiring after the batch's time), the signed side
//! is the fill's, the fill price is within the signed limit and the fill's size within the
//! signed amount. The L1 contract checks
//! one fill the same way when challenged (`OptioRollup.challengeAuthorization`), and reverts the
//! batch and slashes the operator when the check fails. The fills of one signed order are also
//! judged together (`OptioRollup.challengeOrder`): their sizes must keep within its amount and
//! their fees, at the instrument's rates, within its fee cap (`overcharged`).
//!
//! A record is 126 bytes, big-endian: nonce (8), signature expiry in seconds (8), signer (20),
//! domain (1), limit price in micro-USDC (8), amount in 1e-8 contracts (8), maximum fee in
//! micro-USDC (8), r (32), s (32), v (1).
//!
//! A section posts each distinct record once: the number of records `n` (4 bytes), the `n`
//! records, then per fill side, in order, the index of its record (4 bytes; `n` or more: none).
//! A resting order filled many times, or a taker's order sweeping several levels, costs its
//! 126 bytes once and 4 bytes a fill.
//!
//! The account changes (session keys registered or revoked, margin modes chosen) are the
//! owner's, judged on L1 the same way (docs/settlement.md, "Account changes"): after the fill
//! sides' indices, one 81-byte entry per change in the posted words' order (session keys, then
//! margin modes: the owner's nonce (8), the signature's expiry in seconds (8), the owner's
//! signature (65) of `optio_intents::SESSION_KEY_MODULE` or `MARGIN_MODE_MODULE` data), then
//! their count (4 bytes).
//!
//! The oracle's prices are judged the same way (docs/settlement.md, "Price challenge"): after
//! the account changes, the section ends with one 73-byte attestation per priced op of the
//! batch (each settlement price, then each mark), in the posted words' order (when the update
//! was published, ms (8), then the oracle's signature `r || s || v` (65) of
//! `optio_intents::OracleSettlement` or `OracleMark` under Optio's domain), and their count (4
//! bytes, the section's last). A price is attested when its signature recovers to the oracle's
//! address and it was published no later than the batch's time, a mark also at most
//! `MARK_WINDOW_MS` before it.

use std::collections::BTreeMap;

use optio_intents::{Action, DERIVE_TRADE_MODULE, Domain, TradeData, recover};
use optio_types::{
    AccountId, Address, Event, Input, InstrumentId, NewOrder, OrderType, Price, Qty, Side,
};

/// Bytes per record.
pub const RECORD_BYTES: usize = 126;

/// Domains an order may be signed under (the record's `domain` byte).
pub mod domain {
    /// Optio's own: the chain's id and the rollup's address.
    pub const OPTIO: u8 = 0;
    /// The Derive-compatible domain stock ccxt signs under (chain id 1).
    pub const COMPAT: u8 = 1;
    /// The same in ccxt's sandbox mode (chain id 11155111).
    pub const COMPAT_SANDBOX: u8 = 2;
}

/// The order one account signed, as one side of a fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authorization {
    /// The order's nonce.
    pub nonce: u64,
    /// Signature expiry, seconds.
    pub expiry_s: u64,
    /// The key that signed.
    pub signer: Address,
    /// Which domain (`domain::*`).
    pub domain: u8,
    /// Limit price (a market order's protection price), micro-USDC per contract.
    pub limit_price: Price,
    /// Order size, 1e-8 contracts.
    pub amount: Qty,
    /// Maximum fee, micro-USDC.
    pub max_fee: i64,
    /// `r || s || v`.
    pub signature: [u8; 65],
}

/// Why one side of a fill is not authorized (what a challenge shows).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unauthorized {
    /// The section has no record for it.
    #[error("no authorization posted")]
    Missing,
    /// The fill trades beyond the signed limit price.
    #[error("price {price} beyond the signed limit {limit}")]
    Price {
        /// Fill price.
        price: Price,
        /// Signed limit.
        limit: Price,
    },
    /// The fill is larger than the signed amount.
    #[error("size {qty} beyond the signed amount {amount}")]
    Size {
        /// Fill size.
        qty: Qty,
        /// Signed amount.
        amount: Qty,
    },
    /// A domain the rollup does not know, or a negative fee or price.
    #[error("malformed record")]
    Malformed,
    /// The signature does not recover to the record's signer (a signature over other fields,
    /// or by another key).
    #[error("signature does not recover to the record's signer")]
    Signature,
    /// The record's signer is neither the account's owner nor one of its session keys live at
    /// the batch's time.
    #[error(
        "signed by {0}, neither the account's owner nor a session key live at the batch's time"
    )]
    Signer(Address),
}

/// One side of a fill, as the data posts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FillSide {
    /// The account.
    pub account: AccountId,
    /// Instrument.
    pub instrument: InstrumentId,
    /// This account's side.
    pub side: Side,
    /// Fill price.
    pub price: Price,
    /// Fill size.
    pub qty: Qty,
}

/// The chain and contract a rollup's orders are signed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Venue {
    /// Chain id.
    pub chain_id: u64,
    /// The rollup (Optio's domain's verifying contract and the orders' asset).
    pub rollup: Address,
}

impl Venue {
    /// The domain separator for a record's `domain` byte.
    pub fn separator(&self, d: u8) -> Option<[u8; 32]> {
        Some(match d {
            domain::OPTIO => Domain::optio(self.chain_id, self.rollup.0).separator(),
            domain::COMPAT => Domain::derive_compat(false).separator(),
            domain::COMPAT_SANDBOX => Domain::derive_compat(true).separator(),
            _ => return None,
        })
    }
}

impl Authorization {
    /// The 126-byte record.
    pub fn encode(&self) -> [u8; RECORD_BYTES] {
        let mut out = [0u8; RECORD_BYTES];
        let mut at = 0;
        for part in [
            &self.nonce.to_be_bytes()[..],
            &self.expiry_s.to_be_bytes(),
            &self.signer.0,
            &[self.domain],
            &self.limit_price.0.to_be_bytes(),
            &self.amount.0.to_be_bytes(),
            &self.max_fee.to_be_bytes(),
            &self.signature,
        ] {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        out
    }

    /// Reads one record (exactly `RECORD_BYTES`).
    pub fn decode(bytes: &[u8; RECORD_BYTES]) -> Authorization {
        let u = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        Authorization {
            nonce: u(0),
            expiry_s: u(8),
            signer: Address(bytes[16..36].try_into().expect("20 bytes")),
            domain: bytes[36],
            limit_price: Price(u(37) as i64),
            amount: Qty(u(45) as i64),
            max_fee: u(53) as i64,
            signature: bytes[61..].try_into().expect("65 bytes"),
        }
    }

    /// The EIP-712 action the account signed for `side` of a fill (`None`: fields no order
    /// can have).
    pub fn action(&self, side: &FillSide, owner: Address, venue: &Venue) -> Option<Action> {
        if self.max_fee < 0 || self.limit_price.0 < 0 || self.amount.0 <= 0 {
            return None;
        }
        let data = TradeData::from_engine_units(
            venue.rollup.0,
            side.instrument.0,
            self.limit_price.0,
            self.amount.0,
            self.max_fee,
            u64::from(side.account.0),
            side.side == Side::Buy,
        );
        Some(Action {
            subaccount_id: u64::from(side.account.0),
            nonce: self.nonce,
            module: DERIVE_TRADE_MODULE,
            data: data.encode(),
            expiry: self.expiry_s,
            owner: owner.0,
            signer: self.signer.0,
        })
    }

    /// The EIP-712 digest of that action under the record's domain (`None`: a malformed
    /// record).
    pub fn digest(&self, side: &FillSide, owner: Address, venue: &Venue) -> Option<[u8; 32]> {
        let separator = venue.separator(self.domain)?;
        Some(self.action(side, owner, venue)?.digest(&separator))
    }

    /// Whether this record authorizes `side` for an account owned by `owner` whose session keys
    /// (with their expiry, ms) are `keys`, in a batch cut at engine time `time_ms`: signed by
    /// the owner, or by one of the keys expiring after `time_ms`.
    pub fn check(
        &self,
        side: &FillSide,
        owner: Address,
        keys: &BTreeMap<Address, u64>,
        time_ms: u64,
        venue: &Venue,
    ) -> Result<(), Unauthorized> {
        let beyond = match side.side {
            Side::Buy => side.price > self.limit_price,
            Side::Sell => side.price < self.limit_price,
        };
        if beyond {
            return Err(Unauthorized::Price {
                price: side.price,
                limit: self.limit_price,
            });
        }
        if side.qty > self.amount {
            return Err(Unauthorized::Size {
                qty: side.qty,
                amount: self.amount,
            });
        }
        if self.signer != owner && keys.get(&self.signer).is_none_or(|until| *until <= time_ms) {
            return Err(Unauthorized::Signer(self.signer));
        }
        let digest = self
            .digest(side, owner, venue)
            .ok_or(Unauthorized::Malformed)?;
        match recover(&digest, &self.signature) {
            Ok(who) if who == self.signer.0 => Ok(()),
            _ => Err(Unauthorized::Signature),
        }
    }
}

/// Bytes of a count or an index in a section.
const INDEX_BYTES: usize = 4;

/// Bytes per price attestation.
pub const MARK_BYTES: usize = 8 + 65;

/// How long before its batch's time (ms) a mark may have been published and still be judged
/// attested on L1 (`OptioJudge.MARK_WINDOW_MS`): the batcher cuts a batch before an input
/// that would leave one of its marks older than this, and the engine takes no update
/// published more than `RiskConfig::max_update_delay_ms` (10 s by default) before its time.
/// Within it, an operator may post any mark the oracle signed, not only the latest. A
/// settlement price has no such window: the oracle signs one per instrument.
pub const MARK_WINDOW_MS: u64 = 60_000;

/// The oracle's signature of one priced op of a batch (a settlement price or a mark), with
/// the update's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriceAttestation {
    /// When the oracle published the update the price came in, ms.
    pub published_ms: u64,
    /// `r || s || v` over `optio_intents::OracleSettlement` or `optio_intents::OracleMark`.
    pub signature: [u8; 65],
}

/// Why a priced op is not attested (what a price challenge shows).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unattested {
    /// The section has no attestation for it.
    #[error("no attestation posted")]
    Missing,
    /// Published after the batch's time.
    #[error("published at {published_ms}, after the batch's time {time_ms}")]
    Future {
        /// When.
        published_ms: u64,
        /// The batch's time.
        time_ms: u64,
    },
    /// A mark published more than `MARK_WINDOW_MS` before the batch's time.
    #[error(
        "published at {published_ms}, more than {MARK_WINDOW_MS} ms before the batch's time {time_ms}"
    )]
    Stale {
        /// When.
        published_ms: u64,
        /// The batch's time.
        time_ms: u64,
    },
    /// The signature does not recover to the oracle over this price.
    #[error("the signature does not recover to the oracle over this price")]
    Signature,
    /// A mark whose posted time (the op's, which the state commits) is not its attestation's.
    #[error("the mark posts time {posted_ms}, its attestation {published_ms}")]
    AnotherTime {
        /// The time the mark op posts.
        posted_ms: u64,
        /// The attestation's.
        published_ms: u64,
    },
}

/// Whether `op` is a priced op (an instrument's settlement price or mark): those a batch
/// posts the oracle's attestation of, in the posted words' order.
pub fn is_priced(op: &crate::Op) -> bool {
    matches!(
        op,
        crate::Op::SettleInstrument { .. } | crate::Op::Mark { .. }
    )
}

impl PriceAttestation {
    /// The 73-byte entry.
    pub fn encode(&self) -> [u8; MARK_BYTES] {
        let mut out = [0u8; MARK_BYTES];
        out[..8].copy_from_slice(&self.published_ms.to_be_bytes());
        out[8..].copy_from_slice(&self.signature);
        out
    }

    /// Reads one entry.
    pub fn decode(bytes: &[u8; MARK_BYTES]) -> Self {
        PriceAttestation {
            published_ms: u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")),
            signature: bytes[8..].try_into().expect("65 bytes"),
        }
    }

    /// Whether this attests priced op `op` (an `Op::SettleInstrument` or `Op::Mark`; anything
    /// else is not attested) of a batch cut at engine time `time_ms`, for the oracle at
    /// `oracle` on `venue`: signed by the oracle, published no later than the batch's time,
    /// and a mark no more than `MARK_WINDOW_MS` before it.
    pub fn check(
        &self,
        op: &crate::Op,
        time_ms: u64,
        oracle: Address,
        venue: &Venue,
    ) -> Result<(), Unattested> {
        let published_ms = self.published_ms;
        let separator = venue.separator(domain::OPTIO).expect("Optio's domain");
        let digest = match op {
            crate::Op::Mark {
                instrument,
                mark,
                index,
                risk,
                published_ms: posted_ms,
            } => {
                if *posted_ms != published_ms {
                    return Err(Unattested::AnotherTime {
                        posted_ms: *posted_ms,
                        published_ms,
                    });
                }
                if published_ms <= time_ms && time_ms - published_ms > MARK_WINDOW_MS {
                    return Err(Unattested::Stale {
                        published_ms,
                        time_ms,
                    });
                }
                let risk: Vec<i64> = risk.iter().map(|a| a.0).collect();
                optio_intents::OracleMark {
                    instrument: instrument.0,
                    mark: mark.0,
                    index: index.0,
                    risk: &risk,
                    published_ms,
                }
                .digest(&separator)
            }
            crate::Op::SettleInstrument {
                instrument, price, ..
            } => optio_intents::OracleSettlement {
                instrument: instrument.0,
                price: price.0,
                published_ms,
            }
            .digest(&separator),
            _ => return Err(Unattested::Missing),
        };
        if published_ms > time_ms {
            return Err(Unattested::Future {
                published_ms,
                time_ms,
            });
        }
        match recover(&digest, &self.signature) {
            Ok(who) if who == oracle.0 => Ok(()),
            _ => Err(Unattested::Signature),
        }
    }
}

/// Bytes per account change attestation: the owner's nonce (8), signature expiry in seconds
/// (8), and the owner's signature `r || s || v` (65).
pub const CHANGE_BYTES: usize = 8 + 8 + 65;

/// The owner's signature of one account change of a batch (a session key registered or
/// revoked, a margin mode chosen): an `optio_intents::Action` under Optio's domain, signed by
/// the account's owner, with `optio_intents::SESSION_KEY_MODULE` or `MARGIN_MODE_MODULE` and
/// the change as its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeAttestation {
    /// The owner's nonce.
    pub nonce: u64,
    /// Signature expiry, seconds.
    pub expiry_s: u64,
    /// `r || s || v`.
    pub signature: [u8; 65],
}

/// Why an account change is not signed by its account's owner (what a change challenge shows).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsigned {
    /// The section has no attestation for it.
    #[error("no owner's signature posted")]
    Missing,
    /// The signature had expired at the batch's time.
    #[error("signature expired at {expiry_s} s, before the batch's time {time_ms} ms")]
    Expired {
        /// Signature expiry, seconds.
        expiry_s: u64,
        /// The batch's time.
        time_ms: u64,
    },
    /// The signature does not recover to the account's owner over this change.
    #[error("the signature does not recover to the account's owner over this change")]
    Signature,
}

/// Whether `op` is an account change (a session key change or a margin mode change): those a
/// batch posts the owner's signature of, in the posted words' order (session keys, then margin
/// modes).
pub fn is_change(op: &crate::Op) -> bool {
    matches!(
        op,
        crate::Op::SessionKey { .. } | crate::Op::SetMarginMode { .. }
    )
}

/// The action an owner signs for account change `op` (`None`: not an account change).
pub fn change_action(op: &crate::Op, nonce: u64, expiry_s: u64, owner: Address) -> Option<Action> {
    use optio_intents::{AccountChange, MarginModeChange, SessionKeyChange};
    let (account, change) = match op {
        crate::Op::SessionKey {
            account,
            key,
            expiry_ms,
            ..
        } => (
            account,
            AccountChange::SessionKey(SessionKeyChange {
                key: key.0,
                expiry_ms: *expiry_ms,
            }),
        ),
        crate::Op::SetMarginMode { account, mode } => (
            account,
            AccountChange::MarginMode(MarginModeChange { mode: mode.code() }),
        ),
        _ => return None,
    };
    Some(change.action(u64::from(account.0), nonce, expiry_s, owner.0))
}

impl ChangeAttestation {
    /// The 81-byte entry.
    pub fn encode(&self) -> [u8; CHANGE_BYTES] {
        let mut out = [0u8; CHANGE_BYTES];
        out[..8].copy_from_slice(&self.nonce.to_be_bytes());
        out[8..16].copy_from_slice(&self.expiry_s.to_be_bytes());
        out[16..].copy_from_slice(&self.signature);
        out
    }

    /// Reads one entry.
    pub fn decode(bytes: &[u8; CHANGE_BYTES]) -> Self {
        let u = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        ChangeAttestation {
            nonce: u(0),
            expiry_s: u(8),
            signature: bytes[16..].try_into().expect("65 bytes"),
        }
    }

    /// Whether this signs account change `op` (anything else is not signed) of an account
    /// owned by `owner`, in a batch cut at engine time `time_ms`, on `venue`: the owner's
    /// signature under Optio's domain, not expired at the batch's time (`time_ms <= expiry_s *
    /// 1000`).
    pub fn check(
        &self,
        op: &crate::Op,
        owner: Address,
        time_ms: u64,
        venue: &Venue,
    ) -> Result<(), Unsigned> {
        let action =
            change_action(op, self.nonce, self.expiry_s, owner).ok_or(Unsigned::Missing)?;
        if u128::from(time_ms) > u128::from(self.expiry_s) * 1_000 {
            return Err(Unsigned::Expired {
                expiry_s: self.expiry_s,
                time_ms,
            });
        }
        let separator = venue.separator(domain::OPTIO).expect("Optio's domain");
        match recover(&action.digest(&separator), &self.signature) {
            Ok(who) if who == owner.0 => Ok(()),
            _ => Err(Unsigned::Signature),
        }
    }
}

/// Whether signed account change `b`, posted in a batch cut at `time_ms`, replays signed
/// change `a` posted before it (`OptioJudge.changeBroken`): the same account under the same nonce,
/// while `a`'s signature lived (`time_ms <= a.expiry_s * 1000`). The gateway takes an owner's
/// nonce once for as long as its signature lives and forgets it only after (a second use is
/// sequenced at `(expiry + 1) * 1000` ms or later), so an honest operator never posts this.
pub fn replays(
    a: (&crate::Op, &ChangeAttestation),
    b: (&crate::Op, &ChangeAttestation),
    time_ms: u64,
) -> bool {
    a.0.accounts() == b.0.accounts()
        && a.1.nonce == b.1.nonce
        && u128::from(time_ms) <= u128::from(a.1.expiry_s) * 1_000
}

/// The attestation of account change `k` (from 0, in the posted words' order: the session key
/// changes, then the margin mode changes), read as the L1 contract reads it: before the price
/// attestations and their count, the change count (4 bytes) and, before it, the entries.
pub fn change_attestation(section: &[u8], k: usize) -> Option<ChangeAttestation> {
    let (_, prices) = tail_part(section, section.len(), MARK_BYTES)?;
    let (c, start) = tail_part(section, prices, CHANGE_BYTES)?;
    if k >= c {
        return None;
    }
    let at = start + k * CHANGE_BYTES;
    let bytes = &section[at..at + CHANGE_BYTES];
    if bytes.iter().all(|b| *b == 0) {
        return None;
    }
    Some(ChangeAttestation::decode(
        bytes.try_into().expect("a whole entry"),
    ))
}

/// The attestation of priced op `k` (from 0, in the posted words' order: the settlement prices,
/// then the marks), read as the L1 contract reads it: the count in the section's last 4 bytes,
/// the entries before it.
pub fn price_attestation(section: &[u8], k: usize) -> Option<PriceAttestation> {
    let (m, start) = tail_part(section, section.len(), MARK_BYTES)?;
    if k >= m {
        return None;
    }
    let at = start + k * MARK_BYTES;
    Some(PriceAttestation::decode(
        section[at..at + MARK_BYTES]
            .try_into()
            .expect("a whole entry"),
    ))
}

/// A part of a section that ends at `end`, read back from there as the L1 contract reads it:
/// its count in the 4 bytes before `end`, its entries of `size` bytes before the count. The
/// count and where the entries start (`None`: bytes the section lacks).
fn tail_part(section: &[u8], end: usize, size: usize) -> Option<(usize, usize)> {
    let end = end.checked_sub(INDEX_BYTES)?;
    let count = u32_at(section, end)?;
    Some((count, end.checked_sub(count.checked_mul(size)?)?))
}

fn u32_at(section: &[u8], at: usize) -> Option<usize> {
    let bytes = section.get(at..at.checked_add(INDEX_BYTES)?)?;
    Some(u32::from_be_bytes(bytes.try_into().expect("four bytes")) as usize)
}

/// The record of fill side `i`, read as the L1 contract reads it: the side's index after the
/// records, naming one of them (an index past them, or bytes the section lacks: `None`). An
/// all-zero record stands for a side without a signed order: `None`, as if absent.
pub fn record(section: &[u8], i: usize) -> Option<Authorization> {
    let n = u32_at(section, 0)?;
    let table = n.checked_mul(RECORD_BYTES)?.checked_add(INDEX_BYTES)?;
    let k = u32_at(section, table.checked_add(i.checked_mul(INDEX_BYTES)?)?)?;
    if k >= n {
        return None;
    }
    let at = INDEX_BYTES + k * RECORD_BYTES;
    let bytes = &section[at..at + RECORD_BYTES];
    if bytes.iter().all(|b| *b == 0) {
        return None;
    }
    Some(Authorization::decode(
        bytes.try_into().expect("a whole record"),
    ))
}

/// The section for fill sides in order (each distinct record once, then each side's index,
/// `u32::MAX` where a side has none), the batch's account changes in order (each one's
/// owner's signature, zeros where one has none, then their count) and its priced ops in order
/// (each one's attestation, zeros where one has none, then their count).
pub fn section_of(
    sides: &[Option<Authorization>],
    changes: &[Option<ChangeAttestation>],
    prices: &[Option<PriceAttestation>],
) -> Vec<u8> {
    let mut index: BTreeMap<[u8; RECORD_BYTES], u32> = BTreeMap::new();
    let mut records = Vec::new();
    let indices: Vec<u32> = sides
        .iter()
        .map(|r| {
            r.map_or(u32::MAX, |r| {
                let bytes = r.encode();
                *index.entry(bytes).or_insert_with(|| {
                    records.push(bytes);
                    u32::try_from(records.len() - 1).expect("fewer records than 2^32")
                })
            })
        })
        .collect();
    let mut out = Vec::with_capacity(
        INDEX_BYTES + records.len() * RECORD_BYTES + indices.len() * INDEX_BYTES,
    );
    out.extend_from_slice(&(records.len() as u32).to_be_bytes());
    for r in &records {
        out.extend_from_slice(r);
    }
    for k in indices {
        out.extend_from_slice(&k.to_be_bytes());
    }
    for c in changes {
        out.extend_from_slice(&c.map_or([0; CHANGE_BYTES], |c| c.encode()));
    }
    out.extend_from_slice(&(changes.len() as u32).to_be_bytes());
    for p in prices {
        out.extend_from_slice(&p.map_or([0; MARK_BYTES], |p| p.encode()));
    }
    out.extend_from_slice(&(prices.len() as u32).to_be_bytes());
    out
}

/// What a user signed for an order besides its price and size (which the engine's order
/// carries): the gateway logs it with the order's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signed {
    /// Nonce.
    pub nonce: u64,
    /// Signature expiry, seconds.
    pub expiry_s: u64,
    /// The key that signed.
    pub signer: Address,
    /// Which domain (`domain::*`).
    pub domain: u8,
    /// Maximum fee, micro-USDC.
    pub max_fee: i64,
    /// `r || s || v`.
    pub signature: [u8; 65],
}

impl Signed {
    /// The record of `order` placed with this signature (`None` for a market order without a
    /// protection price: it has no signed limit).
    pub fn record(&self, order: &NewOrder) -> Option<Authorization> {
        let limit_price = match order.order_type {
            OrderType::Limit { price } => price,
            OrderType::Market {
                protection_price: Some(price),
            } => price,
            OrderType::Market {
                protection_price: None,
            } => return None,
        };
        Some(Authorization {
            nonce: self.nonce,
            expiry_s: self.expiry_s,
            signer: self.signer,
            domain: self.domain,
            limit_price,
            amount: order.qty,
            max_fee: self.max_fee,
            signature: self.signature,
        })
    }
}

/// The signed orders that may still fill, by order id, from their placement to their last fill
/// (or cancellation), and the changes not yet persisted. Built from the sequence alone (inputs,
/// the signatures logged with them, the engine's events), so a restart rebuilds the same.
#[derive(Debug, Clone, Default)]
pub struct Orders {
    live: BTreeMap<u64, Authorization>,
    changed: BTreeMap<u64, Option<Authorization>>,
}

impl Orders {
    /// The orders as persisted (`SettlementState::stored_orders`).
    pub fn from_stored(stored: Vec<(u64, [u8; RECORD_BYTES])>) -> Self {
        Self {
            live: stored
                .into_iter()
                .map(|(id, bytes)| (id, Authorization::decode(&bytes)))
                .collect(),
            changed: BTreeMap::new(),
        }
    }

    /// Takes one sequenced input (with the signature logged with it) and its events: a signed
    /// order placed gets its record, each fill gives its maker's and taker's records (`None`
    /// for an order without one), an order done is dropped.
    pub fn apply(
        &mut self,
        input: &Input,
        signed: Option<&Signed>,
        events: &[Event],
    ) -> Vec<[Option<Authorization>; 2]> {
        let mut fills = Vec::new();
        for event in events {
            match event {
                Event::OrderAccepted { order, .. } => {
                    if let (Some(o), Some(s)) = (input.command.placed_order(), signed)
                        && let Some(record) = s.record(o)
                    {
                        self.live.insert(order.0, record);
                        self.changed.insert(order.0, Some(record));
                    }
                }
                Event::Fill {
                    maker_order,
                    taker_order,
                    ..
                } => fills.push([
                    self.live.get(&maker_order.0).copied(),
                    self.live.get(&taker_order.0).copied(),
                ]),
                Event::OrderDone { order, .. } if self.live.remove(&order.0).is_some() => {
                    self.changed.insert(order.0, None);
                }
                _ => {}
            }
        }
        fills
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The changes since the last call (to persist: a record, or `None` for an order gone).
    pub fn take_changes(&mut self) -> Vec<(u64, Option<[u8; RECORD_BYTES]>)> {
        std::mem::take(&mut self.changed)
            .into_iter()
            .map(|(id, r)| (id, r.map(|r| r.encode())))
            .collect()
    }
}

/// The fee (a rebate when negative) fill side `side` of a fill pays at its instrument's rates
/// (`spec`): the taker's rate when `taker`, else the maker's, on the fill's notional (what the
/// ledger charges; 0 for a notional the ledger would refuse).
pub fn side_fee(spec: &optio_types::InstrumentSpec, side: &FillSide, taker: bool) -> i64 {
    let rate = if taker {
        spec.taker_fee
    } else {
        spec.maker_fee
    };
    side.price
        .notional(side.qty)
        .and_then(|n| rate.fee_on(n))
        .map_or(0, |f| f.0)
}

/// The least fee cap (micro-USDC) an order signed under `domain` must carry to cover what its
/// fills can pay when none trades beyond `worst_price` and the instrument's rates are at most
/// `rate` (1e-6): under Optio's domain the fees of its whole `amount` (1e-8 contracts), under
/// Derive's the fee per contract, rounded up as fees are. The gateway refuses an order whose
/// cap is below it (code 6006), so an honest order's fills are never `overcharged`.
pub fn fee_cap_needed(worst_price: i64, amount: i64, rate: i32, domain: u8) -> i128 {
    let scale = i128::from(optio_types::QTY_SCALE);
    let contracts = if domain == domain::OPTIO {
        i128::from(amount)
    } else {
        scale
    };
    let fee = i128::from(worst_price) * contracts * i128::from(rate.max(0));
    -(-fee).div_euclid(scale * i128::from(optio_types::fixed::FEE_RATE_SCALE))
}

/// Whether `sides` fill sides of one signed order, `filled` (1e-8 contracts) in all, paid
/// `fees` (micro-USDC) past what its signed fee cap `max_fee` allows: under Optio's domain the
/// cap bounds the order's fees in total, under Derive's (`domain::COMPAT`,
/// `domain::COMPAT_SANDBOX`) the fee per contract, Derive's meaning (as the gateway reads a
/// cap, by the domain signed). Each fee is rounded up from the exact rate of its notional, so an
/// honest order's fills may pass the exact bound by less than a micro-USDC each: the fees are
/// past the cap when `fees * s >= max_fee * u + sides * s`, with `s = 1, u = 1` under Optio's
/// domain and `s = QTY_SCALE, u = filled` under Derive's (`OptioJudge.overcharged`).
pub fn overcharged(fees: i128, max_fee: i64, domain: u8, filled: i64, sides: u64) -> bool {
    let (s, u) = if domain == domain::OPTIO {
        (1, 1)
    } else {
        (i128::from(optio_types::QTY_SCALE), i128::from(filled))
    };
    fees * s >= i128::from(max_fee) * u + i128::from(sides) * s
}

/// The two sides of each fill of a batch's ops in circuit order (maker, then taker): what the
/// section's records answer, one to one.
pub fn fill_sides<'a>(ordered: impl IntoIterator<Item = &'a crate::Op>) -> Vec<FillSide> {
    let mut sides = Vec::new();
    for op in ordered {
        if let crate::Op::Fill {
            instrument,
            maker,
            taker,
            taker_side,
            price,
            qty,
        } = op
        {
            for (account, side) in [(*maker, taker_side.opposite()), (*taker, *taker_side)] {
                sides.push(FillSide {
                    account,
                    instrument: *instrument,
                    side,
                    price: *price,
                    qty: *qty,
                });
            }
        }
    }
    sides
}

#[cfg(test)]
mod tests {
    use super::*;
    use optio_types::{FeeRate, InstrumentSpec, MONEY_SCALE};
    use proptest::prelude::*;

    fn spec(maker: i32, taker: i32) -> InstrumentSpec {
        InstrumentSpec {
            maker_fee: FeeRate(maker),
            taker_fee: FeeRate(taker),
            ..InstrumentSpec::with_defaults(
                "BTC-PERPETUAL".parse().expect("name"),
                Price(200_000 * MONEY_SCALE),
            )
        }
    }

    proptest! {
        /// An order whose cap is the least the gateway takes is never judged overcharged,
        /// whatever its fills (at prices no worse than its worst, as maker or taker, any split
        /// of at most its amount), under either meaning of the cap; and fees a micro-USDC a
        /// fill past the exact bound are.
        #[test]
        fn fills_within_the_cap_the_gateway_asks_are_never_overcharged(
            maker in -300i32..=2_000,
            taker in 0i32..=2_000,
            worst_ticks in 1i64..2_000_000,
            parts in proptest::collection::vec((1i64..=300, 1i64..=2_000_000, any::<bool>()), 1..12),
            derive in any::<bool>(),
        ) {
            prop_assume!(maker + taker >= 0);
            let spec = spec(maker, taker);
            let domain = if derive { domain::COMPAT } else { domain::OPTIO };
            let worst = worst_ticks * 100_000;
            let amount: i64 = parts.iter().map(|p| p.0 * 1_000_000).sum();
            let cap = fee_cap_needed(worst, amount, maker.max(taker), domain);
            let cap = i64::try_from(cap).expect("fits");
            let (mut fees, mut filled) = (0i128, 0i64);
            for (n, &(steps, ticks, as_taker)) in parts.iter().enumerate() {
                let side = FillSide {
                    account: AccountId(0),
                    instrument: InstrumentId(0),
                    side: Side::Buy,
                    price: Price(ticks.min(worst_ticks) * 100_000),
                    qty: Qty(steps * 1_000_000),
                };
                fees += i128::from(side_fee(&spec, &side, as_taker));
                filled += side.qty.0;
                prop_assert!(!overcharged(fees, cap, domain, filled, n as u64 + 1));
            }
            let n = parts.len() as u64;
            let bound = if derive {
                (i128::from(cap) * i128::from(filled)).div_euclid(i128::from(optio_types::QTY_SCALE))
            } else {
                i128::from(cap)
            };
            // Past the bound by a unit a fill (under Derive's meaning, the exact bound rounded
            // down, so one unit more).
            prop_assert!(overcharged(bound + i128::from(n) + i128::from(derive), cap, domain, filled, n));
        }
    }

    /// The owner's signature of `op` with `nonce`, expiring at `expiry_s`, by `key`.
    fn signed_change(
        op: &crate::Op,
        key: &secp256k1::SecretKey,
        nonce: u64,
        expiry_s: u64,
        venue: &Venue,
    ) -> ChangeAttestation {
        let owner = Address(optio_intents::address_of(
            &secp256k1::PublicKey::from_secret_key(key),
        ));
        let action = change_action(op, nonce, expiry_s, owner).expect("a change");
        let separator = venue.separator(domain::OPTIO).expect("Optio's");
        ChangeAttestation {
            nonce,
            expiry_s,
            signature: optio_intents::sign(key, &action.digest(&separator)),
        }
    }

    #[test]
    fn an_account_change_is_signed_only_by_its_owner_for_that_change_while_the_signature_lives() {
        let venue = Venue {
            chain_id: 31_337,
            rollup: Address([7; 20]),
        };
        let owner_key = secp256k1::SecretKey::from_secret_bytes([1; 32]).expect("key");
        let other_key = secp256k1::SecretKey::from_secret_bytes([2; 32]).expect("key");
        let owner = Address(optio_intents::address_of(
            &secp256k1::PublicKey::from_secret_key(&owner_key),
        ));
        let key_op = crate::Op::SessionKey {
            account: AccountId(3),
            key: Address([9; 20]),
            expiry_ms: 2_000_000,
            at_ms: 1_000_000,
        };
        let mode_op = crate::Op::SetMarginMode {
            account: AccountId(3),
            mode: optio_types::MarginMode::Portfolio,
        };
        let time_ms = 1_000_500;
        let a = signed_change(&key_op, &owner_key, 5, 1_001, &venue);
        assert_eq!(a.check(&key_op, owner, time_ms, &venue), Ok(()));
        // Posted with the batch's prices: each part reads back where L1 reads it.
        let price = PriceAttestation {
            published_ms: 1,
            signature: [3; 65],
        };
        let m = signed_change(&mode_op, &owner_key, 6, 1_001, &venue);
        let section = section_of(&[], &[Some(a), None, Some(m)], &[Some(price)]);
        assert_eq!(change_attestation(&section, 0), Some(a));
        assert_eq!(change_attestation(&section, 1), None);
        assert_eq!(change_attestation(&section, 2), Some(m));
        assert_eq!(change_attestation(&section, 3), None);
        assert_eq!(price_attestation(&section, 0), Some(price));
        assert_eq!(m.check(&mode_op, owner, time_ms, &venue), Ok(()));
        // Another key, another change (a longer life, another mode, another account), or a
        // batch past the signature's expiry: not signed.
        let forged = signed_change(&key_op, &other_key, 5, 1_001, &venue);
        assert_eq!(
            forged.check(&key_op, owner, time_ms, &venue),
            Err(Unsigned::Signature)
        );
        let longer = crate::Op::SessionKey {
            account: AccountId(3),
            key: Address([9; 20]),
            expiry_ms: 2_000_001,
            at_ms: 1_000_000,
        };
        assert_eq!(
            a.check(&longer, owner, time_ms, &venue),
            Err(Unsigned::Signature)
        );
        let standard = crate::Op::SetMarginMode {
            account: AccountId(3),
            mode: optio_types::MarginMode::Standard,
        };
        assert_eq!(
            m.check(&standard, owner, time_ms, &venue),
            Err(Unsigned::Signature)
        );
        let elsewhere = crate::Op::SetMarginMode {
            account: AccountId(4),
            mode: optio_types::MarginMode::Portfolio,
        };
        assert_eq!(
            m.check(&elsewhere, owner, time_ms, &venue),
            Err(Unsigned::Signature)
        );
        assert_eq!(a.check(&key_op, owner, 1_001_000, &venue), Ok(()));
        assert_eq!(
            a.check(&key_op, owner, 1_001_001, &venue),
            Err(Unsigned::Expired {
                expiry_s: 1_001,
                time_ms: 1_001_001
            })
        );
        // A signature over the same change for another rollup does not count here.
        let elsewhere_venue = Venue {
            chain_id: 31_337,
            rollup: Address([8; 20]),
        };
        let replayed = signed_change(&key_op, &owner_key, 5, 1_001, &elsewhere_venue);
        assert_eq!(
            replayed.check(&key_op, owner, time_ms, &venue),
            Err(Unsigned::Signature)
        );
    }

    #[test]
    fn a_side_pays_its_rate_rounded_against_it_and_a_rebate_rounded_toward_the_system() {
        let side = FillSide {
            account: AccountId(0),
            instrument: InstrumentId(0),
            side: Side::Sell,
            price: Price(1_000_100_000),
            qty: Qty(1_000_000),
        };
        // Notional 10.001 USDC: 0.03% is 3,000.3 micro-USDC, -0.01% is -1,000.1.
        assert_eq!(side_fee(&spec(-100, 300), &side, true), 3_001);
        assert_eq!(side_fee(&spec(-100, 300), &side, false), -1_000);
    }
}
