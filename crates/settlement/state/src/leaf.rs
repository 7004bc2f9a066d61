//! Leaf layouts: what each leaf of the settlement state hashes, field by field. Circuits and the
//! L1 contracts recompute exactly these (docs/settlement.md; vectors in
//! test-vectors/settlement.json).
//!
//! ```text
//! root            = Poseidon(accounts_root, instruments_root, funds)
//! funds           = Poseidon(insurance, fee_pool, counts)
//! counts          = accounts + 2^32 * instruments + 2^64 * oracle_ms
//!                   (how many were opened and listed: the next ids; the latest publication time,
//!                   ms, of the oracle updates whose marks were committed)
//! account leaf    = Poseidon(owner, keys_hash,
//!                            nonce + 2^64 * positions + 2^96 * mode + 2^98 * liability,
//!                            collateral, positions_root, since)                     at index account id
//! mode            = margin mode: 0 WorstCase (an opening's), 1 Standard, 2 Portfolio
//! positions       = how many positions the account holds (non-zero leaves of its positions tree)
//! liability       = sum over its shorts of |q| * W, W the instrument's worst-case payoff per
//!                   contract (`optio_types::short_liability`; below 2^155)
//! since           = the committed oracle time (ms) its latest liquidation auction started at;
//!                   0 if none ever did
//! keys_hash       = fold of Poseidon(h, key, expiry_ms) over keys in address order, from 0
//! position leaf   = signed quantity (p - |q| when short; 0 = flat)                at index instrument id
//! instrument leaf = Poseidon(spec_hash, status, mark, risk_hash, settlement_price)  at index instrument id
//! spec_hash       = Poseidon(hash_bytes(spec_bytes), maker_fee, taker_fee,
//!                            payoff kind (0 perpetual, 1 call, 2 put), strike, underlying cap,
//!                            contract multiplier)
//! risk_hash       = fold of Poseidon(h, v0..v10) over (index, r0, r1, ...) in elevens (0-padded),
//!                   from 0: the underlying's index committed with the mark, then the risk array;
//!                   0 for an instrument without a mark (never marked, or settled)
//! ```
//! Amounts and prices are fixed-point integers (micro-USDC; quantities in 1e-8), negatives as
//! `p - |v|`; a missing mark or settlement price is 0. A settled instrument's mark is one
//! contract's settlement value (`InstrumentSpec::settled_mark`) and its risk array empty.

use optio_types::{
    Address, Amount, FeeRate, InstrumentKind, InstrumentName, InstrumentSpec, MarginMode,
    OptionRight, Price, Qty,
};

use crate::poseidon::{Fr, from_address, from_i64, hash, hash_bytes};

/// Index bits of the accounts tree (16.7M accounts; 12 levels of four children).
pub const ACCOUNT_DEPTH: u8 = 24;
/// Index bits of the instruments tree and of each account's positions tree (1M instruments; 10
/// levels of four children).
pub const INSTRUMENT_DEPTH: u8 = 20;

/// Status codes in the instrument leaf.
pub mod status {
    /// Listed, not yet trading.
    pub const LISTED: u64 = 0;
    /// Trading.
    pub const ACTIVE: u64 = 1;
    /// Expired, awaiting settlement.
    pub const EXPIRED: u64 = 2;
    /// Settled.
    pub const SETTLED: u64 = 3;
}

/// The fields of an account leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountLeaf {
    /// Owner wallet.
    pub owner: Address,
    /// Margin mode (in the leaf's third field, between the count and the liability).
    pub mode: MarginMode,
    /// Hash of the registered session keys.
    pub keys_hash: Fr,
    /// Withdrawals processed (an L1 withdrawal claim names it).
    pub nonce: u64,
    /// Open positions: the non-zero leaves of its positions tree (the validity circuit's margin
    /// check proves that it saw all of them).
    pub positions: u32,
    /// What its shorts can owe at worst, in 1e-8 micro-USDC (`optio_types::short_liability`
    /// summed): a liquidation needs `collateral * 1e8` below it.
    pub liability: u128,
    /// Collateral, micro-USDC (negative only for an account in deficit during liquidation).
    pub collateral: Amount,
    /// Root of the account's positions tree.
    pub positions_root: Fr,
    /// The committed oracle time (ms) its latest liquidation auction started at (a start op);
    /// 0 if none ever did. A liquidation's price is held to the proven schedule from it.
    pub since: u64,
}

impl AccountLeaf {
    /// The leaf hash.
    pub fn hash(&self) -> Fr {
        hash(&[
            from_address(&self.owner.0),
            self.keys_hash,
            nonce_word(self.nonce, self.positions, self.mode, self.liability),
            from_i64(self.collateral.0),
            self.positions_root,
            Fr::from(self.since),
        ])
    }
}

/// Where the margin mode's code (two bits) sits in an account leaf's third field.
pub const MODE_AT: usize = 96;
/// Where the liability sits in it.
pub const LIABILITY_AT: usize = 98;
/// Bits of an account leaf's liability (its third field: nonce, 64 bits; count, 32; mode, 2;
/// liability). A liability is a `u128`.
pub const LIABILITY_BITS: usize = 155;

/// The leaf's third field: the nonce, the open-position count above its 64 bits, the margin
/// mode's code above the count's 32 and the liability above the mode's 2 (`liability <
/// 2^155`, so the word is below 2^253, under the field's modulus, and splits one way only).
pub fn nonce_word(nonce: u64, positions: u32, mode: MarginMode, liability: u128) -> Fr {
    Fr::from(
        u128::from(nonce) | (u128::from(positions) << 64) | (u128::from(mode.code()) << MODE_AT),
    ) + Fr::from(liability) * crate::blob::pow2(LIABILITY_AT)
}

/// A spec's worst-case payoff per contract (`InstrumentSpec::max_payoff_per_contract`; 0 for a
/// spec without one, which listing refuses): what an account leaf's liability weighs a short by.
pub fn payoff(spec: &InstrumentSpec) -> i64 {
    spec.max_payoff_per_contract().map_or(0, |p| p.0)
}

/// An account leaf's liability: what its `positions` can owe at worst, in 1e-8 micro-USDC,
/// `|q| * payoff_of(instrument)` summed over the shorts (`optio_types::short_liability`). Each
/// term is below 2^126 (a quantity and a payoff in i64); a sum past 2^128, which no engine
/// state comes near, would saturate.
pub fn liability(
    positions: impl IntoIterator<Item = (u32, Qty)>,
    payoff_of: impl Fn(u32) -> i64,
) -> u128 {
    positions.into_iter().fold(0u128, |sum, (id, q)| {
        let short = u128::try_from(-i128::from(q.0)).unwrap_or(0);
        sum.saturating_add(short * u128::try_from(payoff_of(id)).unwrap_or(0))
    })
}

/// Hash of an account's session keys (sorted by address).
pub fn keys_hash<'a>(keys: impl IntoIterator<Item = (&'a Address, &'a u64)>) -> Fr {
    keys.into_iter().fold(Fr::from(0u64), |h, (key, expiry)| {
        hash(&[h, from_address(&key.0), Fr::from(*expiry)])
    })
}

/// A position leaf.
pub fn position_leaf(qty: Qty) -> Fr {
    from_i64(qty.0)
}

/// The fields of an instrument leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InstrumentLeaf {
    /// `spec_hash` of the instrument's spec.
    pub spec_hash: Fr,
    /// One of `status::*`.
    pub status: u64,
    /// Last committed mark per contract (0 before the first).
    pub mark: Price,
    /// Hash of the last committed risk array.
    pub risk_hash: Fr,
    /// Settlement price (0 before settlement).
    pub settlement_price: Price,
}

impl InstrumentLeaf {
    /// The leaf hash.
    pub fn hash(&self) -> Fr {
        hash(&[
            self.spec_hash,
            Fr::from(self.status),
            from_i64(self.mark.0),
            self.risk_hash,
            from_i64(self.settlement_price.0),
        ])
    }
}

/// Hash of an instrument's spec: its canonical bytes, with the fee rates and the payoff terms
/// again as field elements so that the validity circuit reads them with one hash instead of
/// re-hashing the bytes.
pub fn spec_hash(spec: &InstrumentSpec) -> Fr {
    let (kind, strike) = payoff_terms(spec);
    hash(&[
        spec_bytes_hash(spec),
        from_i64(i64::from(spec.maker_fee.0)),
        from_i64(i64::from(spec.taker_fee.0)),
        Fr::from(kind),
        from_i64(strike),
        from_i64(spec.underlying_cap.0),
        from_i64(spec.contract_multiplier.0),
    ])
}

/// The payoff kind (0 perpetual, 1 call, 2 put) and the strike (0 for a perpetual).
pub fn payoff_terms(spec: &InstrumentSpec) -> (u64, i64) {
    match spec.name.kind {
        InstrumentKind::Perpetual => (0, 0),
        InstrumentKind::Option {
            strike,
            right: OptionRight::Call,
            ..
        } => (1, strike.0),
        InstrumentKind::Option {
            strike,
            right: OptionRight::Put,
            ..
        } => (2, strike.0),
    }
}

/// `hash_bytes` of an instrument's canonical spec bytes (the first input of `spec_hash`).
pub fn spec_bytes_hash(spec: &InstrumentSpec) -> Fr {
    hash_bytes(&spec_bytes(spec))
}

/// The canonical spec bytes: fixed fields at fixed offsets, the underlying symbol last, so that
/// the validity circuit reads the terms it needs out of the posted bytes (`spec::` offsets) and
/// the name is rebuilt from its parts. Big-endian; signed fields in two's complement.
///
/// ```text
/// 0 payoff (0 perpetual, 1 call, 2 put) | 1 year - 2000 | 2 month | 3 day   (0 for a perpetual)
/// 4 strike:i64 (0 for a perpetual) | 12 underlying cap:i64 | 20 contract multiplier:i64
/// 28 maker fee:i32 | 32 taker fee:i32 | 36 tick size:i64 | 44 min size:i64 | 52 amount step:i64
/// 60 market protection bps:u32 | 64 underlying symbol (1 to 17 of A-Z 0-9 _)
/// ```
pub fn spec_bytes(spec: &InstrumentSpec) -> Vec<u8> {
    let (payoff, strike) = payoff_terms(spec);
    let (year, month, day) = match spec.name.kind {
        InstrumentKind::Perpetual => (0, 0, 0),
        InstrumentKind::Option { expiry, .. } => (
            u8::try_from(expiry.year.saturating_sub(2000)).unwrap_or(u8::MAX),
            expiry.month,
            expiry.day,
        ),
    };
    let mut b = Vec::with_capacity(spec::SYMBOL + spec.name.underlying.len());
    b.extend([payoff as u8, year, month, day]);
    for v in [strike, spec.underlying_cap.0, spec.contract_multiplier.0] {
        b.extend(v.to_be_bytes());
    }
    b.extend(spec.maker_fee.0.to_be_bytes());
    b.extend(spec.taker_fee.0.to_be_bytes());
    for v in [spec.tick_size.0, spec.min_size.0, spec.amount_step.0] {
        b.extend(v.to_be_bytes());
    }
    b.extend(spec.market_protection_bps.to_be_bytes());
    b.extend(spec.name.underlying.as_bytes());
    b
}

/// The spec of canonical spec bytes, or what is wrong with them: exactly what the validity
/// circuit admits (a payoff kind of 0 to 2; a perpetual's date and strike zero; an option's date
/// on the calendar from 2000 to 2099; a symbol of 1 to 17 of `A-Z 0-9 _`), so that every
/// proven listing decodes.
pub fn spec_from_bytes(b: &[u8]) -> Result<InstrumentSpec, &'static str> {
    if !(spec::SYMBOL + 1..=spec::SYMBOL + spec::SYMBOL_MAX).contains(&b.len()) {
        return Err("a spec's length is 65 to 81 bytes");
    }
    let i64_at = |o: usize| i64::from_be_bytes(b[o..o + 8].try_into().expect("eight bytes"));
    let i32_at = |o: usize| i32::from_be_bytes(b[o..o + 4].try_into().expect("four bytes"));
    let (year, month, day, strike) = (b[1], b[2], b[3], i64_at(spec::STRIKE));
    let kind = match b[0] {
        0 if (year, month, day, strike) == (0, 0, 0, 0) => InstrumentKind::Perpetual,
        0 => return Err("a perpetual with a date or strike"),
        1 | 2 => InstrumentKind::Option {
            expiry: optio_types::instrument::ExpiryDate::new(2000 + u16::from(year), month, day)
                .ok_or("an option's expiry date not on the calendar")?,
            strike: Price(strike),
            right: if b[0] == 1 {
                OptionRight::Call
            } else {
                OptionRight::Put
            },
        },
        _ => return Err("a payoff kind other than 0, 1 or 2"),
    };
    let symbol = &b[spec::SYMBOL..];
    if !symbol
        .iter()
        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
    {
        return Err("a symbol outside A-Z 0-9 _");
    }
    Ok(InstrumentSpec {
        name: InstrumentName {
            underlying: String::from_utf8(symbol.to_vec()).expect("ASCII"),
            kind,
        },
        underlying_cap: Price(i64_at(spec::CAP)),
        contract_multiplier: Qty(i64_at(spec::MULTIPLIER)),
        maker_fee: FeeRate(i32_at(spec::MAKER_FEE)),
        taker_fee: FeeRate(i32_at(spec::TAKER_FEE)),
        tick_size: Price(i64_at(36)),
        min_size: Qty(i64_at(44)),
        amount_step: Qty(i64_at(52)),
        market_protection_bps: u32::from_be_bytes(b[60..64].try_into().expect("four bytes")),
    })
}

/// Offsets in the canonical spec bytes of what the circuit reads.
pub mod spec {
    /// Payoff kind (one byte), then year - 2000, month and day.
    pub const PAYOFF: usize = 0;
    /// Strike (eight bytes).
    pub const STRIKE: usize = 4;
    /// Underlying cap (eight bytes).
    pub const CAP: usize = 12;
    /// Contract multiplier (eight bytes).
    pub const MULTIPLIER: usize = 20;
    /// Maker fee (four bytes).
    pub const MAKER_FEE: usize = 28;
    /// Taker fee (four bytes).
    pub const TAKER_FEE: usize = 32;
    /// The underlying symbol, to the end.
    pub const SYMBOL: usize = 64;
    /// Longest symbol (`UNDERLYING_SUFFIX`: 10, `_` and 6).
    pub const SYMBOL_MAX: usize = 17;
}

/// Risk scenarios per Poseidon call of `risk_hash`: eleven and the running hash are the widest
/// input circomlib's parameters take (12), the fewest constraints per scenario in a circuit (46,
/// against 100 in threes).
pub const RISK_CHUNK: usize = 11;

/// What a mark commits beside its price: the underlying's index `index` (positive in a mark),
/// then the risk array, folded in elevens; 0 without a mark (index 0 and no risk array: never
/// marked, or settled).
pub fn risk_hash(index: Price, risk: &[Amount]) -> Fr {
    if index.0 == 0 && risk.is_empty() {
        return Fr::from(0u64);
    }
    let values: Vec<Fr> = std::iter::once(from_i64(index.0))
        .chain(risk.iter().map(|a| from_i64(a.0)))
        .collect();
    risk_hash_of(&values)
}

/// `risk_hash` of its values as field elements (the index, then the risk array; the last chunk
/// zero-padded), as the batch circuit's witness holds them.
pub fn risk_hash_of(values: &[Fr]) -> Fr {
    values.chunks(RISK_CHUNK).fold(Fr::from(0u64), |h, c| {
        let mut inputs = [Fr::from(0u64); RISK_CHUNK + 1];
        inputs[0] = h;
        inputs[1..=c.len()].copy_from_slice(c);
        hash(&inputs)
    })
}

/// The funds leaf: the two funds, how many accounts were opened and instruments listed (so
/// that the circuit gives an opened account and a listed instrument the next id) and the
/// committed oracle time (`counts`).
pub fn funds_hash(insurance: Amount, fee_pool: Amount, counts: Counts) -> Fr {
    hash(&[from_i64(insurance.0), from_i64(fee_pool.0), counts.word()])
}

/// The funds leaf's third field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Accounts opened (the next account id).
    pub accounts: u32,
    /// Instruments listed (the next instrument id).
    pub instruments: u32,
    /// The latest publication time (ms) among the oracle updates whose marks the state
    /// committed (0 before the first): the oracle's signed clock, which L1 judges with each
    /// mark's signature, as far as the state has seen it.
    pub oracle_ms: u64,
}

impl Counts {
    /// `accounts + 2^32 * instruments + 2^64 * oracle_ms` (below 2^128: one way to split it).
    pub fn word(&self) -> Fr {
        Fr::from(
            u128::from(self.accounts)
                | u128::from(self.instruments) << 32
                | u128::from(self.oracle_ms) << 64,
        )
    }
}

/// The state root over the three parts.
pub fn state_root(accounts_root: Fr, instruments_root: Fr, funds: Fr) -> Fr {
    hash(&[accounts_root, instruments_root, funds])
}
