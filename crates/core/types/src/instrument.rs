//! Instruments: Deribit-style names, contract specs, and the listed → active → expired → settled
//! lifecycle.
//!
//! Options are European and cash-settled in USDC at 08:00 UTC on their expiry date. Perpetuals
//! never expire. Names round-trip exactly: `format(parse(s)) == s` for every accepted `s`, so a
//! name is a canonical key (leading zeros and trailing decimal zeros are rejected).

use std::fmt;
use std::str::FromStr;

use crate::fixed::{
    Amount, ArithError, FeeRate, MONEY_SCALE, Price, QTY_SCALE, Qty, Rounding, mul_div,
};

/// Milliseconds in a day.
pub const DAY_MS: u64 = 86_400_000;
/// Options expire at 08:00 UTC.
pub const EXPIRY_HOUR_MS: u64 = 8 * 3_600_000;

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];

/// Call or put.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OptionRight {
    /// Pays `max(S - K, 0)`.
    Call,
    /// Pays `max(K - S, 0)`.
    Put,
}

/// A calendar date of expiry (UTC), years 2000-2099 as Deribit's two-digit years allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExpiryDate {
    /// Full year, 2000..=2099.
    pub year: u16,
    /// 1..=12.
    pub month: u8,
    /// 1..=31, valid for the month.
    pub day: u8,
}

impl ExpiryDate {
    /// Builds a date, checking the day against the month (leap years included).
    pub fn new(year: u16, month: u8, day: u8) -> Option<Self> {
        let valid = (2000..=2099).contains(&year)
            && (1..=12).contains(&month)
            && day >= 1
            && day <= days_in_month(year, month);
        valid.then_some(Self { year, month, day })
    }

    /// Expiry instant: 08:00 UTC on this date, in milliseconds since the Unix epoch.
    pub fn expiry_ms(self) -> u64 {
        let days = days_from_civil(
            i64::from(self.year),
            u32::from(self.month),
            u32::from(self.day),
        );
        u64::try_from(days).expect("years 2000..=2099 are after the epoch") * DAY_MS
            + EXPIRY_HOUR_MS
    }
}

fn is_leap(year: u16) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// What the instrument pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InstrumentKind {
    /// European, cash-settled option.
    Option {
        /// Expiry date (08:00 UTC).
        expiry: ExpiryDate,
        /// Strike in micro-USDC per unit of underlying.
        strike: Price,
        /// Call or put.
        right: OptionRight,
    },
    /// Perpetual future, for hedging.
    Perpetual,
}

/// A parsed instrument name such as `BTC-27DEC24-60000-C` or `ETH-PERPETUAL`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstrumentName {
    /// Underlying symbol: `BTC`, `ETH`, or with a settlement suffix such as `XRP_USDC`.
    pub underlying: String,
    /// Option or perpetual.
    pub kind: InstrumentKind,
}

/// Why a name did not parse. Each variant says which part was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not of the form `UNDERLYING-PERPETUAL` or `UNDERLYING-DMMMYY-STRIKE-C|P`.
    #[error("instrument name must be UNDERLYING-PERPETUAL or UNDERLYING-DMMMYY-STRIKE-C|P")]
    Shape,
    /// Underlying is not 1-10 uppercase letters or digits, optionally `_` and a 1-6 letter suffix.
    #[error("bad underlying symbol")]
    Underlying,
    /// Date is not `DMMMYY` (day without leading zero, English month, two-digit year) or invalid.
    #[error("bad expiry date (expected e.g. 27DEC24)")]
    Date,
    /// Strike is not a positive number written with `d` as decimal point (e.g. `0d625`).
    #[error("bad strike")]
    Strike,
    /// Right is not `C` or `P`.
    #[error("option right must be C or P")]
    Right,
}

impl FromStr for InstrumentName {
    type Err = NameError;

    fn from_str(text: &str) -> Result<Self, NameError> {
        // Names are ASCII; the parts below are cut at byte offsets.
        if text.len() > 64 || !text.is_ascii() {
            return Err(NameError::Shape);
        }
        let parts: Vec<&str> = text.split('-').collect();
        let underlying = parts.first().copied().unwrap_or_default();
        let kind = match parts.as_slice() {
            [_, "PERPETUAL"] => InstrumentKind::Perpetual,
            [_, date, strike, right] => InstrumentKind::Option {
                expiry: parse_date(date)?,
                strike: parse_strike(strike)?,
                right: match *right {
                    "C" => OptionRight::Call,
                    "P" => OptionRight::Put,
                    _ => return Err(NameError::Right),
                },
            },
            _ => return Err(NameError::Shape),
        };
        check_underlying(underlying)?;
        Ok(Self {
            underlying: underlying.to_owned(),
            kind,
        })
    }
}

fn check_underlying(symbol: &str) -> Result<(), NameError> {
    let (base, suffix) = match symbol.split_once('_') {
        Some((b, s)) => (b, Some(s)),
        None => (symbol, None),
    };
    let ok = |s: &str, max: usize, digits: bool| {
        !s.is_empty()
            && s.len() <= max
            && s.bytes()
                .all(|b| b.is_ascii_uppercase() || (digits && b.is_ascii_digit()))
    };
    if ok(base, 10, true) && suffix.is_none_or(|s| ok(s, 6, false)) {
        Ok(())
    } else {
        Err(NameError::Underlying)
    }
}

fn parse_date(text: &str) -> Result<ExpiryDate, NameError> {
    let bytes = text.as_bytes();
    if !(6..=7).contains(&bytes.len()) {
        return Err(NameError::Date);
    }
    let day_len = bytes.len() - 5;
    let (day, rest) = text.split_at(day_len);
    let (month, year) = rest.split_at(3);
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(day) || day.starts_with('0') || !all_digits(year) {
        return Err(NameError::Date);
    }
    let month = MONTHS
        .iter()
        .position(|m| *m == month)
        .ok_or(NameError::Date)?;
    let day: u8 = day.parse().map_err(|_| NameError::Date)?;
    let year: u16 = year.parse().map_err(|_| NameError::Date)?;
    ExpiryDate::new(2000 + year, month as u8 + 1, day).ok_or(NameError::Date)
}

fn parse_strike(text: &str) -> Result<Price, NameError> {
    let (int, frac) = match text.split_once('d') {
        Some((i, f)) => (i, Some(f)),
        None => (text, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || frac.is_some_and(|f| !digits(f)) {
        return Err(NameError::Strike);
    }
    let leading_zero = int.len() > 1 && int.starts_with('0');
    let trailing_zero = frac.is_some_and(|f| f.is_empty() || f.ends_with('0'));
    if leading_zero || trailing_zero {
        return Err(NameError::Strike);
    }
    let decimal = match frac {
        Some(f) => format!("{int}.{f}"),
        None => int.to_owned(),
    };
    let strike = Price::parse_decimal(&decimal).map_err(|_| NameError::Strike)?;
    if strike.is_positive() {
        Ok(strike)
    } else {
        Err(NameError::Strike)
    }
}

impl fmt::Display for InstrumentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            InstrumentKind::Perpetual => write!(f, "{}-PERPETUAL", self.underlying),
            InstrumentKind::Option {
                expiry,
                strike,
                right,
            } => {
                let strike = strike.to_string().replace('.', "d");
                let right = match right {
                    OptionRight::Call => 'C',
                    OptionRight::Put => 'P',
                };
                write!(
                    f,
                    "{}-{}{}{:02}-{}-{}",
                    self.underlying,
                    expiry.day,
                    MONTHS[usize::from(expiry.month - 1)],
                    expiry.year % 100,
                    strike,
                    right
                )
            }
        }
    }
}

/// Where an instrument is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InstrumentStatus {
    /// Known, not yet tradable.
    Listed,
    /// Tradable.
    Active,
    /// Past expiry: no trading, open orders cancelled, awaiting a settlement price.
    Expired,
    /// Positions cash-settled into balances.
    Settled,
}

/// The contract terms and trading parameters of one instrument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstrumentSpec {
    /// Name (and through it: underlying, expiry, strike, right).
    pub name: InstrumentName,
    /// Units of underlying per contract, in `Qty` units (`QTY_SCALE` = one unit).
    pub contract_multiplier: Qty,
    /// Price increment.
    pub tick_size: Price,
    /// Smallest order size.
    pub min_size: Qty,
    /// Size increment.
    pub amount_step: Qty,
    /// Highest underlying price the conservative margin model covers. Option payoffs and
    /// settlement are capped here (a capped option); perpetual prices may not exceed it.
    pub underlying_cap: Price,
    /// Maker fee (may be negative: a rebate paid from the fee pool).
    pub maker_fee: FeeRate,
    /// Taker fee (non-negative, and at least the maker rebate).
    pub taker_fee: FeeRate,
    /// Default band of a market order without a protection price, in basis points from the best
    /// opposite price.
    pub market_protection_bps: u32,
}

/// Why a spec was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Tick, step, minimum size or multiplier not positive, or min size not a multiple of step.
    #[error("tick, step, min size and multiplier must be positive, min size a multiple of step")]
    Increments,
    /// `tick_size * amount_step` is not a multiple of `QTY_SCALE`: notionals would round.
    #[error("tick_size * amount_step must be a multiple of 1e8 so that notionals are exact")]
    InexactNotional,
    /// The cap is not above the strike of a call, or not positive.
    #[error("underlying cap must be positive and above a call's strike")]
    Cap,
    /// Taker fee negative, maker rebate larger than the taker fee, or a fee above 10%.
    #[error("fees: taker >= 0, taker + maker >= 0, each within +-10%")]
    Fees,
    /// The largest payoff per contract is below one tick: nothing could trade.
    #[error("the maximum price per contract is below one tick")]
    NoPriceRange,
    /// Values so large that the arithmetic would overflow.
    #[error("values out of range")]
    Range,
}

impl InstrumentSpec {
    /// Checks the invariants every other part of the system relies on.
    pub fn validate(&self) -> Result<(), SpecError> {
        let (tick, step, min) = (self.tick_size.0, self.amount_step.0, self.min_size.0);
        if tick <= 0 || step <= 0 || min <= 0 || min % step != 0 || self.contract_multiplier.0 <= 0
        {
            return Err(SpecError::Increments);
        }
        if (i128::from(tick) * i128::from(step)) % i128::from(QTY_SCALE) != 0 {
            return Err(SpecError::InexactNotional);
        }
        if self.underlying_cap.0 <= 0
            || self.underlying_cap.0 > 1_000_000_000 * MONEY_SCALE
            || self.contract_multiplier.0 > 1_000_000 * QTY_SCALE
        {
            return Err(SpecError::Range);
        }
        if let InstrumentKind::Option {
            strike,
            right: OptionRight::Call,
            ..
        } = self.name.kind
            && strike >= self.underlying_cap
        {
            return Err(SpecError::Cap);
        }
        let (maker, taker) = (self.maker_fee.0, self.taker_fee.0);
        if taker < 0 || taker + maker < 0 || taker > 100_000 || maker.abs() > 100_000 {
            return Err(SpecError::Fees);
        }
        let max_price = self.max_price().map_err(|_| SpecError::Range)?;
        if max_price < self.tick_size {
            return Err(SpecError::NoPriceRange);
        }
        Ok(())
    }

    /// The worst payoff one short contract can owe at any underlying price in `[0, cap]`:
    /// `cap - K` for a call, `K` for a put, `cap` for a perpetual (times the multiplier).
    /// It is also the highest meaningful price: orders above it are refused. Rounded up: it
    /// bounds what a short owes, so it must never understate it.
    pub fn max_payoff_per_contract(&self) -> Result<Price, ArithError> {
        let per_unit = match self.name.kind {
            InstrumentKind::Option {
                strike,
                right: OptionRight::Call,
                ..
            } => self.underlying_cap.checked_sub(strike)?,
            InstrumentKind::Option {
                strike,
                right: OptionRight::Put,
                ..
            } => strike,
            InstrumentKind::Perpetual => self.underlying_cap,
        };
        let v = mul_div(
            i128::from(per_unit.0),
            i128::from(self.contract_multiplier.0),
            i128::from(QTY_SCALE),
            Rounding::AgainstAccount,
        )?;
        i64::try_from(v)
            .map(Price)
            .map_err(|_| ArithError::Overflow)
    }

    /// Highest accepted order price: the max payoff rounded down to a tick.
    pub fn max_price(&self) -> Result<Price, ArithError> {
        let w = self.max_payoff_per_contract()?.0;
        Ok(Price(w - w.rem_euclid(self.tick_size.0)))
    }

    /// Expiry instant in ms, for options.
    pub fn expiry_ms(&self) -> Option<u64> {
        match self.name.kind {
            InstrumentKind::Option { expiry, .. } => Some(expiry.expiry_ms()),
            InstrumentKind::Perpetual => None,
        }
    }

    /// The cash a position of `qty` receives at settlement price `settlement_price` (negative:
    /// pays): `floor(value * qty / QTY_SCALE^2)`, rounded down whatever the side (a long is
    /// paid the floor of its value, a short pays the ceiling of its own), so the remainder, never
    /// negative, stays with the system. What the engine pays and the settlement state checks.
    pub fn settlement_cash(&self, settlement_price: Price, qty: Qty) -> Result<Amount, ArithError> {
        let value = self
            .settlement_value_numerator(settlement_price)
            .checked_mul(i128::from(qty.0))
            .ok_or(ArithError::Overflow)?;
        Amount::from_ratio(
            value,
            i128::from(QTY_SCALE) * i128::from(QTY_SCALE),
            Rounding::TowardSystem,
        )
    }

    /// The mark of a settled instrument: one long contract's settlement value at
    /// `settlement_price`, rounded down to a micro-USDC. A position the settlement left open is
    /// valued at it (its equity, the L1 exit), so a settlement that leaves holders out moves
    /// no value between them.
    pub fn settled_mark(&self, settlement_price: Price) -> Result<Price, ArithError> {
        let value = self.settlement_value_numerator(settlement_price) / i128::from(QTY_SCALE);
        i64::try_from(value)
            .map(Price)
            .map_err(|_| ArithError::Overflow)
    }

    /// Settlement value of one long contract at underlying price `settlement_price`, as an exact
    /// fraction `numerator / QTY_SCALE` of micro-USDC. The price is clamped to `[0, cap]`.
    pub fn settlement_value_numerator(&self, settlement_price: Price) -> i128 {
        let s = settlement_price.0.clamp(0, self.underlying_cap.0);
        let per_unit = match self.name.kind {
            InstrumentKind::Option {
                strike,
                right: OptionRight::Call,
                ..
            } => (s - strike.0).max(0),
            InstrumentKind::Option {
                strike,
                right: OptionRight::Put,
                ..
            } => (strike.0 - s).max(0),
            InstrumentKind::Perpetual => s,
        };
        i128::from(per_unit) * i128::from(self.contract_multiplier.0)
    }

    /// A spec with the defaults used by the demo and tests: 1 underlying per contract, tick 0.1
    /// USDC, step and minimum 0.01 contracts, maker 1 bp rebate-free, taker 3 bp.
    pub fn with_defaults(name: InstrumentName, underlying_cap: Price) -> Self {
        Self {
            name,
            contract_multiplier: Qty(QTY_SCALE),
            tick_size: Price(100_000),
            min_size: Qty(1_000_000),
            amount_step: Qty(1_000_000),
            underlying_cap,
            maker_fee: FeeRate(100),
            taker_fee: FeeRate(300),
            market_protection_bps: 500,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in [
            "BTC-27DEC24-60000-C",
            "ETH-PERPETUAL",
            "ETH-1JAN25-2500-P",
            "XRP_USDC-29FEB28-0d625-C",
            "BTC_USDC-PERPETUAL",
            "SOL-31MAR25-150d5-P",
        ] {
            let parsed: InstrumentName = name.parse().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(parsed.to_string(), name);
        }
    }

    #[test]
    fn malformed_names_get_the_error_for_the_wrong_part() {
        let cases = [
            ("", NameError::Shape),
            ("BTC", NameError::Shape),
            ("BTC-PERP", NameError::Shape),
            ("BTC-27DEC24-60000", NameError::Shape),
            ("BTC-27DEC24-60000-C-X", NameError::Shape),
            ("btc-PERPETUAL", NameError::Underlying),
            ("BTC_-PERPETUAL", NameError::Underlying),
            ("BTC-07DEC24-60000-C", NameError::Date),
            ("BTC-27Dec24-60000-C", NameError::Date),
            ("BTC-30FEB24-60000-C", NameError::Date),
            ("BTC-29FEB23-60000-C", NameError::Date),
            ("BTC-27DEC2024-60000-C", NameError::Date),
            ("BTC-27DEC24-060000-C", NameError::Strike),
            ("BTC-27DEC24-0-C", NameError::Strike),
            ("BTC-27DEC24-1d50-C", NameError::Strike),
            ("BTC-27DEC24-1.5-C", NameError::Strike),
            ("BTC-27DEC24--1-C", NameError::Shape),
            ("BTC-27DEC24-60000-X", NameError::Right),
            // Found by the blob fuzzer: a date cut inside a multi-byte character panicked.
            ("BTC-2\u{4f2}AR27-100000-C", NameError::Shape),
            ("\u{e9}TH-PERPETUAL", NameError::Shape),
        ];
        for (name, want) in cases {
            assert_eq!(
                name.parse::<InstrumentName>(),
                Err(want.clone()),
                "{name:?}"
            );
        }
    }

    #[test]
    fn expiry_is_eight_utc() {
        let d = ExpiryDate::new(2024, 12, 27).expect("valid");
        // 2024-12-27T08:00:00Z
        assert_eq!(d.expiry_ms(), 1_735_286_400_000);
        assert_eq!(
            ExpiryDate::new(2000, 3, 1).expect("valid").expiry_ms(),
            951_897_600_000
        );
    }

    #[test]
    fn spec_validation() {
        let name: InstrumentName = "BTC-27DEC24-60000-C".parse().expect("valid");
        let good = InstrumentSpec::with_defaults(name, Price(200_000 * MONEY_SCALE));
        assert_eq!(good.validate(), Ok(()));
        assert_eq!(
            good.max_payoff_per_contract(),
            Ok(Price(140_000 * MONEY_SCALE))
        );
        let mut bad = good.clone();
        bad.tick_size = Price(1);
        assert_eq!(bad.validate(), Err(SpecError::InexactNotional));
        let mut bad = good.clone();
        bad.underlying_cap = Price(50_000 * MONEY_SCALE);
        assert_eq!(bad.validate(), Err(SpecError::Cap));
        let mut bad = good.clone();
        bad.maker_fee = FeeRate(-400);
        assert_eq!(bad.validate(), Err(SpecError::Fees));
        let mut bad = good;
        bad.min_size = Qty(1_500_000);
        assert_eq!(bad.validate(), Err(SpecError::Increments));
    }
}
