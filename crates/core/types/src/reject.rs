//! Rejection codes: a stable, numeric part of the API. Never renumber; only add.
//! `docs/rejections.md` lists every code; a test keeps the two in step.

use std::fmt;

macro_rules! reject_codes {
    ($($(#[$doc:meta])* $name:ident = $code:literal, $text:literal;)*) => {
        /// Why the engine refused an input. The numeric value is stable across releases.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u16)]
        pub enum RejectCode {
            $($(#[$doc])* $name = $code,)*
        }

        impl RejectCode {
            /// Every code, in numeric order.
            pub const ALL: &'static [RejectCode] = &[$(RejectCode::$name,)*];

            /// The stable numeric code.
            pub const fn code(self) -> u16 {
                self as u16
            }

            /// A short human explanation.
            pub const fn message(self) -> &'static str {
                match self {
                    $(RejectCode::$name => $text,)*
                }
            }

            /// The code for a number, if it exists.
            pub fn from_code(code: u16) -> Option<RejectCode> {
                Self::ALL.iter().copied().find(|c| c.code() == code)
            }
        }
    };
}

reject_codes! {
    /// An amount was zero or negative.
    InvalidAmount = 1001, "amount must be positive";
    /// A deposit or a size was above the configured maximum.
    AmountTooLarge = 1002, "amount above the configured maximum";
    /// The result would overflow the fixed-point range.
    Overflow = 1003, "arithmetic overflow";
    /// Engine time may not go backwards.
    TimeWentBackwards = 1004, "input time is before engine time";
    /// Limits whose windows span more than 2^32 instrument ids (`ProofLimits::is_valid`).
    InvalidLimits = 1005, "limits out of range";
    /// No such account.
    UnknownAccount = 2001, "unknown account";
    /// The account table is full.
    TooManyAccounts = 2002, "account limit reached";
    /// A transfer between accounts of different owners.
    NotSameOwner = 2003, "transfers only between subaccounts of one owner";
    /// A transfer from an account to itself.
    SameAccount = 2004, "source and destination are the same account";
    /// Withdrawal or transfer above free collateral.
    InsufficientFreeCollateral = 2005, "amount exceeds free collateral";
    /// A session key equal to the owner, expiring in the past, beyond the limit of keys per
    /// account, or a revocation of a key that is not registered.
    InvalidSessionKey = 2006, "invalid session key";
    /// Money may not leave an account holding more open positions than
    /// `EngineLimits::max_positions_to_withdraw` (what a validity proof can price).
    TooManyPositionsToWithdraw = 2007, "too many open positions for money to leave the account";
    /// An order signed by a session key the account does not hold, or one that has expired.
    SessionKeyNotLive = 2008, "the signing session key is not registered or has expired";
    /// No such instrument.
    UnknownInstrument = 3001, "unknown instrument";
    /// The instrument spec failed validation.
    InvalidInstrumentSpec = 3002, "invalid instrument spec";
    /// The instrument is not tradable (listed, expired or settled).
    InstrumentNotActive = 3003, "instrument is not active";
    /// The instrument table is full, or the instruments not yet settled would lie in more
    /// mark windows than a validity proof marks (`EngineLimits::mark_windows`).
    TooManyInstruments = 3004, "instrument limit reached";
    /// An instrument with this name exists.
    DuplicateInstrument = 3005, "instrument already listed";
    /// A settlement price that is not positive.
    InvalidSettlementPrice = 3006, "settlement price must be positive";
    /// The instrument is not in the state this transition needs.
    InvalidStatusTransition = 3007, "instrument status does not allow this";
    /// An option whose expiry is already past cannot be listed or activated.
    ExpiryInPast = 3008, "expiry is not in the future";
    /// Price not positive or not a multiple of the tick size.
    InvalidPrice = 4001, "price must be a positive multiple of the tick size";
    /// Price above the instrument's maximum price.
    PriceOutOfBand = 4002, "price above the instrument's maximum";
    /// Size not positive or not a multiple of the amount step.
    InvalidQty = 4003, "size must be a positive multiple of the amount step";
    /// Size below the instrument's minimum.
    BelowMinSize = 4004, "size below the minimum";
    /// Size above the configured maximum order size.
    QtyTooLarge = 4005, "size above the maximum order size";
    /// A post-only order or quote would trade on entry.
    PostOnlyWouldCross = 4006, "post-only order would cross the book";
    /// A reduce-only order would open or increase a position.
    ReduceOnlyWouldIncrease = 4007, "reduce-only order would increase the position";
    /// A fill-or-kill order cannot be filled in full now.
    FokNotFillable = 4008, "fill-or-kill order cannot be filled in full";
    /// A market order without protection price met an empty book.
    NoLiquidity = 4009, "no opposite liquidity for a market order";
    /// A good-till-time order's expiry is not after engine time.
    GoodTillInPast = 4010, "good-till time is not in the future";
    /// The client order id is in use by another open order of the account.
    DuplicateClientOrderId = 4011, "client order id already in use";
    /// The account has the maximum number of open orders.
    TooManyOpenOrders = 4012, "open order limit reached";
    /// The book side has the maximum number of price levels.
    TooManyPriceLevels = 4013, "price level limit reached";
    /// The account's collateral does not cover the order's worst case.
    InsufficientMargin = 4014, "insufficient margin";
    /// No open order with this id (or client id) for the account.
    UnknownOrder = 4015, "unknown order";
    /// Flags that do not go together (post-only with IOC/FOK or market, a market order resting).
    InvalidOrderCombination = 4016, "invalid combination of order type, time in force and flags";
    /// An amend that changes nothing, or amends a market order.
    InvalidAmend = 4017, "amend must change price or size of a resting order";
    /// A mass quote with more entries than the limit, or none.
    MassQuoteSize = 4018, "mass quote has too many or no entries";
    /// A mass quote names an instrument twice.
    MassQuoteDuplicateInstrument = 4019, "mass quote names an instrument twice";
    /// A quote's bid is not below its ask.
    QuoteCrossed = 4020, "quote bid must be below its ask";
    /// An oracle update published too long before engine time, or marks too old to margin a
    /// risk-increasing action.
    OracleStale = 5001, "oracle data is stale";
    /// An oracle update not newer than the last one for its underlying.
    OracleOutOfOrder = 5002, "oracle update is not newer than the last";
    /// An oracle update for an underlying no listed instrument has, or naming an instrument of
    /// another underlying, twice, or too many.
    OracleBadInstrument = 5003, "oracle update names an instrument it cannot price";
    /// A risk array whose length is not the configured scenario count.
    RiskArrayLength = 5004, "risk array length differs from the scenario count";
    /// A non-positive index or mark, or a mark above the instrument's maximum price.
    InvalidMark = 5005, "index and marks must be positive and within the instrument's band";
    /// A mark-margined account trading or holding an instrument without a mark yet.
    NoMark = 5006, "instrument has no mark yet";
    /// A liquidating account may not add risk.
    AccountInLiquidation = 5007, "account is being liquidated";
    /// Liquidate or deleverage of an account that is not being liquidated, or a position it
    /// does not hold.
    NotLiquidating = 5008, "account is not being liquidated or holds no such position";
    /// A liquidation take above the auction step (or the position) while the account is solvent.
    LiquidationTooLarge = 5009, "liquidation take exceeds the allowed step";
    /// Deleveraging before the auction reached its bound.
    AuctionNotOver = 5010, "the liquidation auction has not run its course";
    /// An account cannot liquidate itself or a subaccount of its owner.
    SelfLiquidation = 5011, "liquidator and liquidated account share an owner";
    /// An oracle update that leaves out an instrument of its underlying not yet settled: every
    /// update marks them all, so that each one's committed index is the underlying's (the
    /// validity proof margins and liquidates at the index committed with each mark).
    OracleMissingMark = 5012, "oracle update leaves out an instrument not yet settled";
    /// An L1 priority operation whose id is not the next one in the queue (already served, or
    /// one before it is missing).
    PriorityOutOfOrder = 6001, "L1 priority operation out of queue order";
    /// A forced close whose backstop account is fully collateralized (it could be forced below
    /// full collateral) or would end insolvent at the marks: the operator must fix the backstop
    /// before the request's deadline.
    BackstopUnfit = 6002, "the backstop account cannot take the forced close";
}

impl fmt::Display for RejectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message(), self.code())
    }
}

impl From<crate::fixed::ArithError> for RejectCode {
    fn from(_: crate::fixed::ArithError) -> Self {
        RejectCode::Overflow
    }
}

#[cfg(test)]
mod tests {
    use super::RejectCode;

    #[test]
    fn codes_are_unique_and_documented() {
        let doc = include_str!("../../../../docs/rejections.md");
        let mut seen = std::collections::BTreeSet::new();
        for code in RejectCode::ALL {
            assert!(seen.insert(code.code()), "duplicate code {}", code.code());
            let row = format!("| {} | `{:?}` | {} |", code.code(), code, code.message());
            assert!(
                doc.contains(&row),
                "docs/rejections.md lacks the row for {code:?}: {row}"
            );
            assert_eq!(RejectCode::from_code(code.code()), Some(*code));
        }
        assert_eq!(RejectCode::from_code(9999), None);
    }
}
