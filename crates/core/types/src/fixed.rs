//! Fixed-point money and sizes. Integer newtypes with checked arithmetic and named rounding.
//!
//! Scales are global so that every stage (engine, settlement tree, circuits, Solidity) agrees:
//! - [`Amount`]: collateral and P&L in micro-USDC (6 decimals, as USDC on Ethereum).
//! - [`Price`]: micro-USDC per contract (or per unit of underlying for strikes and index prices).
//! - [`Qty`]: contracts in units of 1e-8.
//!
//! A notional is `price * qty / QTY_SCALE`. Instrument specs are validated so that
//! `tick_size * amount_step` is a multiple of `QTY_SCALE`: every trade notional is then an exact
//! integer and trades move money without rounding. Rounding happens only where a rate or a
//! ratio is applied, and it is named: [`Rounding::AgainstAccount`] for what an account owes or
//! must hold (fees charged, margin requirements), [`Rounding::TowardSystem`] for what an account
//! receives (rebates, payouts). Both leave any remainder with the system, never create money.

use std::fmt;
use std::str::FromStr;

/// Decimal places of [`Amount`] and [`Price`].
pub const MONEY_DECIMALS: u32 = 6;
/// One USDC in [`Amount`] units.
pub const MONEY_SCALE: i64 = 1_000_000;
/// Decimal places of [`Qty`].
pub const QTY_DECIMALS: u32 = 8;
/// One contract in [`Qty`] units.
pub const QTY_SCALE: i64 = 100_000_000;
/// Denominator of [`FeeRate`]: parts per million of notional.
pub const FEE_RATE_SCALE: i64 = 1_000_000;

/// Arithmetic that would overflow or lose money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ArithError {
    /// The result does not fit the type.
    #[error("arithmetic overflow")]
    Overflow,
    /// A division that must be exact was not (a spec invariant was broken).
    #[error("inexact division where exactness is required")]
    Inexact,
}

/// Which way a ratio rounds, named by whom it disfavours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    /// For amounts an account owes or must hold: rounds up (toward +infinity).
    AgainstAccount,
    /// For amounts an account receives: rounds down (toward -infinity).
    TowardSystem,
}

/// `a * b / d` in i128 with the named rounding. `d` must be positive.
#[inline]
pub fn mul_div(a: i128, b: i128, d: i128, rounding: Rounding) -> Result<i128, ArithError> {
    debug_assert!(d > 0, "denominator must be positive");
    // Fast path: 64-bit hardware division when everything fits (the common case on the hot
    // path); 128-bit division is a slow library call.
    if let (Ok(a), Ok(b), Ok(d)) = (i64::try_from(a), i64::try_from(b), i64::try_from(d))
        && let Some(n) = a.checked_mul(b)
    {
        let (q, r) = (n.div_euclid(d), n.rem_euclid(d));
        return Ok(i128::from(match rounding {
            Rounding::AgainstAccount if r != 0 => q + 1,
            _ => q,
        }));
    }
    let n = a.checked_mul(b).ok_or(ArithError::Overflow)?;
    let q = n.div_euclid(d);
    let r = n.rem_euclid(d);
    Ok(match rounding {
        Rounding::TowardSystem => q,
        Rounding::AgainstAccount if r != 0 => q + 1,
        Rounding::AgainstAccount => q,
    })
}

macro_rules! fixed_type {
    ($(#[$doc:meta])* $name:ident, $decimals:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub i64);

        impl $name {
            /// Zero.
            pub const ZERO: Self = Self(0);
            /// Raw integer units.
            pub const fn raw(self) -> i64 {
                self.0
            }
            /// Checked addition.
            pub fn checked_add(self, other: Self) -> Result<Self, ArithError> {
                self.0.checked_add(other.0).map(Self).ok_or(ArithError::Overflow)
            }
            /// Checked subtraction.
            pub fn checked_sub(self, other: Self) -> Result<Self, ArithError> {
                self.0.checked_sub(other.0).map(Self).ok_or(ArithError::Overflow)
            }
            /// Checked negation.
            pub fn checked_neg(self) -> Result<Self, ArithError> {
                self.0.checked_neg().map(Self).ok_or(ArithError::Overflow)
            }
            /// Whether this is above zero.
            pub const fn is_positive(self) -> bool {
                self.0 > 0
            }
            /// Parses a decimal string such as `"60000.5"` exactly; more decimals than the scale
            /// holds is an error, never a silent rounding.
            pub fn parse_decimal(text: &str) -> Result<Self, ParseDecimalError> {
                parse_decimal(text, $decimals).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_decimal(f, self.0, $decimals)
            }
        }

        impl FromStr for $name {
            type Err = ParseDecimalError;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Self::parse_decimal(text)
            }
        }
    };
}

fixed_type!(
    /// Collateral, fees and P&L in micro-USDC. Signed: P&L and cash flows have a direction.
    Amount,
    MONEY_DECIMALS
);
fixed_type!(
    /// A price in micro-USDC per contract, or per unit of underlying for strikes and index prices.
    Price,
    MONEY_DECIMALS
);
fixed_type!(
    /// A size in 1e-8 contracts. Signed where it is a position.
    Qty,
    QTY_DECIMALS
);

impl Price {
    /// The exact notional `price * qty` in money. Exact by the instrument spec invariant
    /// (tick * step is a multiple of `QTY_SCALE`); an inexact result is an error, not a rounding.
    #[inline]
    pub fn notional(self, qty: Qty) -> Result<Amount, ArithError> {
        if let Some(n) = self.0.checked_mul(qty.0) {
            return if n % QTY_SCALE == 0 {
                Ok(Amount(n / QTY_SCALE))
            } else {
                Err(ArithError::Inexact)
            };
        }
        let n = i128::from(self.0) * i128::from(qty.0);
        if n % i128::from(QTY_SCALE) != 0 {
            return Err(ArithError::Inexact);
        }
        i64::try_from(n / i128::from(QTY_SCALE))
            .map(Amount)
            .map_err(|_| ArithError::Overflow)
    }
}

impl Amount {
    /// `numerator / denominator` as money with the named rounding.
    pub fn from_ratio(
        numerator: i128,
        denominator: i128,
        rounding: Rounding,
    ) -> Result<Self, ArithError> {
        let v = mul_div(numerator, 1, denominator, rounding)?;
        i64::try_from(v)
            .map(Amount)
            .map_err(|_| ArithError::Overflow)
    }
}

impl Qty {
    /// Absolute value.
    pub const fn abs(self) -> Qty {
        Qty(self.0.abs())
    }
    /// Smaller of two sizes.
    pub fn min(self, other: Qty) -> Qty {
        Qty(self.0.min(other.0))
    }
}

/// A fee rate in parts per million of notional. Negative is a rebate (maker fees only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FeeRate(pub i32);

impl FeeRate {
    /// The fee on `notional`: a charge rounds against the account, a rebate toward the system.
    /// Positive result = the account pays; negative = the account receives.
    pub fn fee_on(self, notional: Amount) -> Result<Amount, ArithError> {
        let n = i128::from(notional.0.abs());
        if self.0 >= 0 {
            Amount::from_ratio(
                n * i128::from(self.0),
                i128::from(FEE_RATE_SCALE),
                Rounding::AgainstAccount,
            )
        } else {
            let rebate = Amount::from_ratio(
                n * i128::from(-self.0),
                i128::from(FEE_RATE_SCALE),
                Rounding::TowardSystem,
            )?;
            rebate.checked_neg()
        }
    }
}

/// A decimal string that is not a valid fixed-point number of the wanted scale.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseDecimalError {
    /// Empty, a stray character, or a misplaced sign or point.
    #[error("not a decimal number")]
    Malformed,
    /// More fractional digits than the type holds.
    #[error("too many decimal places (at most {0})")]
    TooPrecise(u32),
    /// Out of range for the type.
    #[error("number out of range")]
    OutOfRange,
}

fn parse_decimal(text: &str, decimals: u32) -> Result<i64, ParseDecimalError> {
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int_part, frac_part) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    let digits_ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits_ok(int_part) || frac_part.is_some_and(|f| !digits_ok(f)) || text.len() > 40 {
        return Err(ParseDecimalError::Malformed);
    }
    let frac = frac_part.unwrap_or("");
    if frac.len() > decimals as usize {
        return Err(ParseDecimalError::TooPrecise(decimals));
    }
    let mut value: i128 = 0;
    for b in int_part
        .bytes()
        .chain(frac.bytes())
        .chain(std::iter::repeat_n(b'0', decimals as usize - frac.len()))
    {
        value = value * 10 + i128::from(b - b'0');
        if value > i128::from(i64::MAX) {
            return Err(ParseDecimalError::OutOfRange);
        }
    }
    let value = if negative { -value } else { value };
    i64::try_from(value).map_err(|_| ParseDecimalError::OutOfRange)
}

fn write_decimal(f: &mut fmt::Formatter<'_>, raw: i64, decimals: u32) -> fmt::Result {
    let scale = 10u64.pow(decimals);
    let sign = if raw < 0 { "-" } else { "" };
    let abs = raw.unsigned_abs();
    let (int, frac) = (abs / scale, abs % scale);
    if frac == 0 {
        return write!(f, "{sign}{int}");
    }
    let mut frac_text = format!("{frac:0width$}", width = decimals as usize);
    while frac_text.ends_with('0') {
        frac_text.pop();
    }
    write!(f, "{sign}{int}.{frac_text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_named_and_directional() {
        assert_eq!(mul_div(7, 1, 2, Rounding::TowardSystem), Ok(3));
        assert_eq!(mul_div(7, 1, 2, Rounding::AgainstAccount), Ok(4));
        assert_eq!(mul_div(-7, 1, 2, Rounding::TowardSystem), Ok(-4));
        assert_eq!(mul_div(-7, 1, 2, Rounding::AgainstAccount), Ok(-3));
        assert_eq!(mul_div(6, 1, 2, Rounding::AgainstAccount), Ok(3));
        assert_eq!(
            mul_div(i128::MAX, 2, 1, Rounding::TowardSystem),
            Err(ArithError::Overflow)
        );
    }

    #[test]
    fn fees_round_against_the_account_and_rebates_toward_the_system() {
        let notional = Amount(1_000_001);
        assert_eq!(FeeRate(300).fee_on(notional), Ok(Amount(301)));
        assert_eq!(FeeRate(-100).fee_on(notional), Ok(Amount(-100)));
        assert_eq!(FeeRate(0).fee_on(notional), Ok(Amount(0)));
    }

    #[test]
    fn notional_is_exact_or_an_error() {
        assert_eq!(
            Price(60_000_000_000).notional(Qty(10_000_000)),
            Ok(Amount(6_000_000_000))
        );
        assert_eq!(Price(1).notional(Qty(1)), Err(ArithError::Inexact));
        assert_eq!(
            Price(i64::MAX).notional(Qty(2 * QTY_SCALE)),
            Err(ArithError::Overflow)
        );
    }

    #[test]
    fn decimals_parse_and_format_round_trip() {
        for text in ["0", "1", "60000.5", "-12.000001", "0.000001"] {
            let p: Price = text.parse().expect("valid");
            assert_eq!(p.to_string(), text);
        }
        assert_eq!("1.5".parse::<Qty>(), Ok(Qty(150_000_000)));
        assert_eq!(
            "1.0000001".parse::<Price>(),
            Err(ParseDecimalError::TooPrecise(6))
        );
        for bad in [
            "", ".", "1.", ".5", "1e5", "--1", "1.2.3", "NaN", "inf", " 1",
        ] {
            assert_eq!(
                bad.parse::<Price>(),
                Err(ParseDecimalError::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            "99999999999999999999".parse::<Price>(),
            Err(ParseDecimalError::OutOfRange)
        );
    }
}
