//! A small canonical binary codec: little-endian fixed-width integers, length-prefixed bytes,
//! one tag byte per enum variant. Canonical means one value has exactly one encoding: decoding
//! refuses unknown tags, non-0/1 booleans and trailing bytes, so `encode(decode(b)) == b`.

use crate::fixed::{Amount, Price, Qty};
use crate::ids::{AccountId, Address, InstrumentId, OrderId};
use crate::input::{SelfTradePrevention, Side, TimeInForce};

/// Why bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Ran out of bytes.
    #[error("truncated input")]
    Truncated,
    /// An enum tag, boolean or option flag that does not exist.
    #[error("invalid tag {tag} for {what}")]
    BadTag {
        /// What was being decoded.
        what: &'static str,
        /// The tag read.
        tag: u8,
    },
    /// Bytes left over after the value.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// Wrong magic or an unsupported version.
    #[error("not an Optio state snapshot of a supported version")]
    Version,
    /// A field that decodes but breaks an invariant (a malformed name, an over-long list).
    #[error("invalid value: {0}")]
    Invalid(&'static str),
}

/// Appends canonical bytes.
#[derive(Debug, Default)]
pub struct Writer {
    /// The encoding so far.
    pub bytes: Vec<u8>,
}

impl Writer {
    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.bytes.push(v);
    }
    /// A boolean as 0 or 1.
    pub fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    /// u32 little-endian.
    pub fn u32(&mut self, v: u32) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }
    /// u64 little-endian.
    pub fn u64(&mut self, v: u64) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }
    /// i64 little-endian.
    pub fn i64(&mut self, v: i64) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }
    /// i128 little-endian.
    pub fn i128(&mut self, v: i128) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }
    /// Length-prefixed bytes.
    pub fn bytes(&mut self, v: &[u8]) {
        self.u32(u32::try_from(v.len()).expect("encoded fields are far below 4 GiB"));
        self.bytes.extend_from_slice(v);
    }
    /// A list length.
    pub fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).expect("list lengths are bounded by engine limits"));
    }
    /// Money.
    pub fn amount(&mut self, v: Amount) {
        self.i64(v.0);
    }
    /// Price.
    pub fn price(&mut self, v: Price) {
        self.i64(v.0);
    }
    /// Size.
    pub fn qty(&mut self, v: Qty) {
        self.i64(v.0);
    }
    /// Account id.
    pub fn account(&mut self, v: AccountId) {
        self.u32(v.0);
    }
    /// Instrument id.
    pub fn instrument(&mut self, v: InstrumentId) {
        self.u32(v.0);
    }
    /// Order id.
    pub fn order(&mut self, v: OrderId) {
        self.u64(v.0);
    }
    /// Address.
    pub fn address(&mut self, v: Address) {
        self.bytes.extend_from_slice(&v.0);
    }
    /// A length-prefixed list of amounts (risk arrays).
    pub fn amounts(&mut self, v: &[Amount]) {
        self.len(v.len());
        v.iter().for_each(|a| self.amount(*a));
    }
    /// Side.
    pub fn side(&mut self, v: Side) {
        self.u8(v as u8);
    }
    /// Time in force (GTT carries its time).
    pub fn time_in_force(&mut self, v: TimeInForce) {
        match v {
            TimeInForce::GoodTillCancelled => self.u8(0),
            TimeInForce::ImmediateOrCancel => self.u8(1),
            TimeInForce::FillOrKill => self.u8(2),
            TimeInForce::GoodTillTime(t) => {
                self.u8(3);
                self.u64(t);
            }
        }
    }
    /// Self-trade prevention mode.
    pub fn self_trade(&mut self, v: SelfTradePrevention) {
        self.u8(v as u8);
    }
}

/// Reads canonical bytes.
#[derive(Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads from `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }
    /// Fails unless everything was read.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing(self.rest.len()))
        }
    }
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(DecodeError::Truncated)?;
        self.rest = tail;
        Ok(*head)
    }
    /// One byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }
    /// A boolean; anything but 0 or 1 is an error.
    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(DecodeError::BadTag { what: "bool", tag }),
        }
    }
    /// u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    /// u64.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    /// i64.
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.take()?))
    }
    /// i128.
    pub fn i128(&mut self) -> Result<i128, DecodeError> {
        Ok(i128::from_le_bytes(self.take()?))
    }
    /// Length-prefixed bytes, at most `max` long.
    pub fn bytes(&mut self, max: usize) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(DecodeError::Invalid("field longer than its limit"));
        }
        if self.rest.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    /// A list length, at most `max`, and never more items than bytes left (each item takes at
    /// least one byte), so a forged length cannot make the decoder allocate.
    pub fn len(&mut self, max: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n > max || n > self.rest.len() {
            return Err(DecodeError::Invalid(
                "list longer than its limit or the input",
            ));
        }
        Ok(n)
    }
    /// Money.
    pub fn amount(&mut self) -> Result<Amount, DecodeError> {
        self.i64().map(Amount)
    }
    /// Price.
    pub fn price(&mut self) -> Result<Price, DecodeError> {
        self.i64().map(Price)
    }
    /// Size.
    pub fn qty(&mut self) -> Result<Qty, DecodeError> {
        self.i64().map(Qty)
    }
    /// Account id.
    pub fn account(&mut self) -> Result<AccountId, DecodeError> {
        self.u32().map(AccountId)
    }
    /// Instrument id.
    pub fn instrument(&mut self) -> Result<InstrumentId, DecodeError> {
        self.u32().map(InstrumentId)
    }
    /// Order id.
    pub fn order(&mut self) -> Result<OrderId, DecodeError> {
        self.u64().map(OrderId)
    }
    /// Address.
    pub fn address(&mut self) -> Result<Address, DecodeError> {
        self.take().map(Address)
    }
    /// A length-prefixed list of at most `max` amounts.
    pub fn amounts(&mut self, max: usize) -> Result<Vec<Amount>, DecodeError> {
        let n = self.len(max)?;
        (0..n).map(|_| self.amount()).collect()
    }
    /// Side.
    pub fn side(&mut self) -> Result<Side, DecodeError> {
        match self.u8()? {
            0 => Ok(Side::Buy),
            1 => Ok(Side::Sell),
            tag => Err(DecodeError::BadTag { what: "side", tag }),
        }
    }
    /// Time in force.
    pub fn time_in_force(&mut self) -> Result<TimeInForce, DecodeError> {
        Ok(match self.u8()? {
            0 => TimeInForce::GoodTillCancelled,
            1 => TimeInForce::ImmediateOrCancel,
            2 => TimeInForce::FillOrKill,
            3 => TimeInForce::GoodTillTime(self.u64()?),
            tag => {
                return Err(DecodeError::BadTag {
                    what: "time in force",
                    tag,
                });
            }
        })
    }
    /// Self-trade prevention mode.
    pub fn self_trade(&mut self) -> Result<SelfTradePrevention, DecodeError> {
        match self.u8()? {
            0 => Ok(SelfTradePrevention::CancelTaker),
            1 => Ok(SelfTradePrevention::CancelMaker),
            2 => Ok(SelfTradePrevention::CancelBoth),
            tag => Err(DecodeError::BadTag {
                what: "self-trade prevention",
                tag,
            }),
        }
    }
}
