//! Settlement ops: the state changes a batch commits, derived from what the engine did. Orders,
//! cancels and books are not settlement state; fills, cash movements, liquidations, expiries and
//! marks are.

use optio_types::{
    AccountId, Address, Amount, Command, Event, Input, InstrumentId, InstrumentSpec, MarginMode,
    Price, Qty, Side,
};

/// One settlement op. Ids of new accounts and instruments are implicit: the next index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A new instrument (id: the next instrument index).
    ListInstrument {
        /// Its spec.
        spec: InstrumentSpec,
    },
    /// Trading opens.
    ActivateInstrument {
        /// Which.
        instrument: InstrumentId,
    },
    /// Reached expiry.
    ExpireInstrument {
        /// Which.
        instrument: InstrumentId,
    },
    /// Cash-settled at a price; the rounding remainder goes to the insurance fund.
    SettleInstrument {
        /// Which.
        instrument: InstrumentId,
        /// Settlement price of the underlying.
        price: Price,
        /// To the insurance fund.
        insurance_credit: Amount,
    },
    /// One position closed into its account's collateral at settlement, all of it or a part
    /// (an expiry with more holders than a batch holds settles in parts, each balanced).
    SettlePosition {
        /// Whose.
        account: AccountId,
        /// Which.
        instrument: InstrumentId,
        /// The quantity settled: of the position's sign, at most all of it.
        qty: Qty,
        /// Paid (+) or taken (-).
        cash: Amount,
    },
    /// A new account (id: the next account index).
    OpenAccount {
        /// Owner.
        owner: Address,
    },
    /// Collateral in from L1.
    Deposit {
        /// To.
        account: AccountId,
        /// Amount.
        amount: Amount,
    },
    /// L1 priority operation `priority` served: a deposit of `amount` (zero when the engine
    /// could not credit it) to `account`.
    L1Deposit {
        /// Queue id on L1 (the next one served).
        priority: u64,
        /// Credited.
        account: AccountId,
        /// Amount.
        amount: Amount,
    },
    /// L1 priority operation `priority` served: a forced withdrawal of `amount` from `account`
    /// (zero: nothing moved; otherwise the account's nonce advances and the batch pays it).
    /// Someone else's request moves nothing; the owner's takes all that leaves the account
    /// covering what its shorts can owe at worst, less a micro-USDC a position it held when the
    /// batch started, or nothing (`optio_types::forced_withdrawal`: all of a flat account's
    /// collateral).
    L1Withdrawal {
        /// Queue id on L1 (the next one served).
        priority: u64,
        /// Debited.
        account: AccountId,
        /// Amount (not negative).
        amount: Amount,
        /// Who asked on L1, posted so that the contract checks it against its queue and pays
        /// them, and the proof checks it against the account's owner (docs/settlement.md, "What
        /// L1 pays").
        requester: Address,
    },
    /// L1 priority operation `priority` served: a forced close. When `requester` owns
    /// `account` and the instrument is active and marked (a mark was ever committed), the
    /// account's whole position moves to `backstop` at the instrument's committed mark (`qty`,
    /// the account's change, is minus what it held, `price` the mark); otherwise, or when it
    /// holds none, nothing moves (`qty` and `price` zero). Cash moves the value the other way,
    /// rounded against the account (a buyer pays the ceiling, a seller gets the floor); no fee.
    L1Close {
        /// Queue id on L1 (the next one served).
        priority: u64,
        /// The operator's backstop account, which takes the position.
        backstop: AccountId,
        /// The account named.
        account: AccountId,
        /// The instrument named.
        instrument: InstrumentId,
        /// Change of `account`'s position.
        qty: Qty,
        /// The committed mark, or 0.
        price: Price,
        /// Who asked on L1.
        requester: Address,
    },
    /// Collateral out to L1 (the account's nonce advances).
    Withdraw {
        /// From.
        account: AccountId,
        /// Amount.
        amount: Amount,
        /// The account's owner, who is paid on L1.
        owner: Address,
    },
    /// Collateral between two accounts of one owner.
    Transfer {
        /// From.
        from: AccountId,
        /// To.
        to: AccountId,
        /// Amount.
        amount: Amount,
    },
    /// A trade: premium from buyer to seller, fees (from the instrument's rates) to the fee
    /// pool, positions to both.
    Fill {
        /// Instrument.
        instrument: InstrumentId,
        /// Resting side's account.
        maker: AccountId,
        /// Incoming side's account.
        taker: AccountId,
        /// The taker's side.
        taker_side: Side,
        /// Price per contract.
        price: Price,
        /// Contracts.
        qty: Qty,
    },
    /// A position moved out of a liquidated account (auction or deleverage), with its fee to
    /// the insurance fund.
    Liquidation {
        /// Liquidated.
        account: AccountId,
        /// Taking the position.
        counterparty: AccountId,
        /// Instrument.
        instrument: InstrumentId,
        /// Change of the liquidated account's position (signed).
        qty: Qty,
        /// Price.
        price: Price,
        /// Fee from the liquidated account to insurance.
        fee: Amount,
    },
    /// A liquidation auction starts (`Event::LiquidationStarted`): the account, below
    /// maintenance at the committed marks and able to default, is liquidated from the committed
    /// oracle time on (its leaf's `since`), and each step's price is held to the proven schedule
    /// from it (`optio_types::within_liquidation_schedule`).
    LiquidationStart {
        /// The account.
        account: AccountId,
    },
    /// A liquidation auction ends (`Event::LiquidationEnded`): the account, whose auction
    /// started (its leaf's `since` is not 0), holds nothing or covers what its shorts can owe
    /// at worst or meets its margin mode's maintenance at the committed marks; its `since`
    /// goes back to 0. While `since` is not 0 the account is frozen: it fills no order and
    /// moves no money out, and its margin mode does not change (engine rules 5 post the end at
    /// the oracle update after the one that cured it, as they post a start).
    LiquidationEnd {
        /// The account.
        account: AccountId,
    },
    /// A share of a deficit charged to an account.
    LossShared {
        /// Charged.
        account: AccountId,
        /// Amount (positive).
        amount: Amount,
    },
    /// A liquidated account's deficit covered from insurance, the fee pool and the shares.
    DeficitCovered {
        /// The account.
        account: AccountId,
        /// From insurance.
        insurance: Amount,
        /// From the fee pool.
        fee_pool: Amount,
        /// Sum of the `LossShared` before it.
        socialized: Amount,
    },
    /// A session key registered (expiry in ms) or revoked (expiry 0); keys expired at `at_ms`
    /// are dropped first (the set stays bounded).
    SessionKey {
        /// Account.
        account: AccountId,
        /// Key.
        key: Address,
        /// Expiry, ms; 0 revokes.
        expiry_ms: u64,
        /// When the change was made, ms.
        at_ms: u64,
    },
    /// The account's margin mode changed. The engine switches only an account that its new
    /// mode covers; the batch holds an account whose mode changed, as one that filled, to its
    /// final mode's rule at its end (`Pending::push`).
    SetMarginMode {
        /// Account.
        account: AccountId,
        /// The new mode.
        mode: MarginMode,
    },
    /// The mark and risk array an instrument ends the batch with (one per instrument per
    /// batch).
    Mark {
        /// Instrument.
        instrument: InstrumentId,
        /// Mark per contract.
        mark: Price,
        /// The underlying's index in the update the mark came in (positive), committed with
        /// the mark and signed with it by the oracle.
        index: Price,
        /// Risk array.
        risk: Vec<Amount>,
        /// When the oracle published the update the mark came in (ms, its signed time): the
        /// state keeps the latest such time committed (`SettlementState::oracle_ms`).
        published_ms: u64,
    },
}

impl Op {
    /// The accounts it names, those it opens aside.
    pub fn accounts(&self) -> Vec<AccountId> {
        match self {
            Op::SettlePosition { account, .. }
            | Op::Deposit { account, .. }
            | Op::L1Deposit { account, .. }
            | Op::L1Withdrawal { account, .. }
            | Op::Withdraw { account, .. }
            | Op::LossShared { account, .. }
            | Op::DeficitCovered { account, .. }
            | Op::SessionKey { account, .. }
            | Op::LiquidationStart { account }
            | Op::LiquidationEnd { account }
            | Op::SetMarginMode { account, .. } => vec![*account],
            Op::Transfer { from, to, .. } => vec![*from, *to],
            Op::L1Close {
                backstop, account, ..
            } => vec![*backstop, *account],
            Op::Fill { maker, taker, .. } => vec![*maker, *taker],
            Op::Liquidation {
                account,
                counterparty,
                ..
            } => vec![*account, *counterparty],
            Op::ListInstrument { .. }
            | Op::ActivateInstrument { .. }
            | Op::ExpireInstrument { .. }
            | Op::SettleInstrument { .. }
            | Op::OpenAccount { .. }
            | Op::Mark { .. } => Vec::new(),
        }
    }

    /// The instrument it names, if any (one it lists aside).
    pub fn instrument(&self) -> Option<InstrumentId> {
        match self {
            Op::ActivateInstrument { instrument }
            | Op::ExpireInstrument { instrument }
            | Op::SettleInstrument { instrument, .. }
            | Op::SettlePosition { instrument, .. }
            | Op::Fill { instrument, .. }
            | Op::Liquidation { instrument, .. }
            | Op::L1Close { instrument, .. }
            | Op::Mark { instrument, .. } => Some(*instrument),
            Op::ListInstrument { .. }
            | Op::OpenAccount { .. }
            | Op::Deposit { .. }
            | Op::L1Deposit { .. }
            | Op::L1Withdrawal { .. }
            | Op::Withdraw { .. }
            | Op::Transfer { .. }
            | Op::LossShared { .. }
            | Op::DeficitCovered { .. }
            | Op::SessionKey { .. }
            | Op::LiquidationStart { .. }
            | Op::LiquidationEnd { .. }
            | Op::SetMarginMode { .. } => None,
        }
    }
}

/// The settlement ops of one sequenced input, from the input and the engine's events for it
/// (`owner_of` names an account's owner, for the withdrawals L1 pays). Marks are returned
/// apart: the batcher keeps the last per instrument.
pub fn ops_from(
    input: &Input,
    events: &[Event],
    owner_of: impl Fn(AccountId) -> Address,
) -> (Vec<Op>, Vec<Op>) {
    let mut ops = Vec::new();
    let mut marks = Vec::new();
    for event in events {
        match *event {
            Event::InstrumentListed { .. } => {
                if let Command::ListInstrument { spec } = &input.command {
                    ops.push(Op::ListInstrument { spec: spec.clone() });
                }
            }
            Event::InstrumentActivated { instrument } => {
                ops.push(Op::ActivateInstrument { instrument })
            }
            Event::InstrumentExpired { instrument } => {
                ops.push(Op::ExpireInstrument { instrument })
            }
            Event::InstrumentSettled {
                instrument,
                settlement_price,
                insurance_credit,
            } => {
                ops.push(Op::SettleInstrument {
                    instrument,
                    price: settlement_price,
                    insurance_credit,
                });
            }
            Event::PositionSettled {
                account,
                instrument,
                qty,
                cash,
            } => ops.push(Op::SettlePosition {
                account,
                instrument,
                qty,
                cash,
            }),
            Event::AccountOpened { owner, .. } => ops.push(Op::OpenAccount { owner }),
            // The balance changes of an L1 operation travel in the one op this event makes.
            Event::PriorityServed {
                priority,
                account,
                amount,
            } => ops.push(match input.command {
                Command::L1Deposit { .. } => Op::L1Deposit {
                    priority,
                    account,
                    amount,
                },
                Command::L1Withdrawal { owner, .. } => Op::L1Withdrawal {
                    priority,
                    account,
                    amount: Amount(-amount.0),
                    requester: owner,
                },
                _ => continue,
            }),
            Event::CloseServed {
                priority,
                account,
                counterparty,
                instrument,
                qty,
                price,
                ..
            } => {
                if let Command::L1Close { owner, .. } = input.command {
                    ops.push(Op::L1Close {
                        priority,
                        backstop: counterparty,
                        account,
                        instrument,
                        qty,
                        price,
                        requester: owner,
                    });
                }
            }
            Event::BalanceChanged {
                account, amount, ..
            } => match input.command {
                Command::Deposit { .. } => ops.push(Op::Deposit { account, amount }),
                Command::Withdraw { .. } => ops.push(Op::Withdraw {
                    account,
                    amount: Amount(-amount.0),
                    owner: owner_of(account),
                }),
                // A transfer shows as two balance changes; one op carries both.
                Command::Transfer {
                    from,
                    to,
                    amount: moved,
                } if account == from => ops.push(Op::Transfer {
                    from,
                    to,
                    amount: moved,
                }),
                _ => {}
            },
            Event::Fill {
                instrument,
                maker_account,
                taker_account,
                taker_side,
                price,
                qty,
                ..
            } => {
                ops.push(Op::Fill {
                    instrument,
                    maker: maker_account,
                    taker: taker_account,
                    taker_side,
                    price,
                    qty,
                });
            }
            Event::OracleAccepted { .. } => {
                if let Command::OracleUpdate(u) = &input.command {
                    marks.extend(u.marks.iter().map(|m| Op::Mark {
                        instrument: m.instrument,
                        mark: m.mark,
                        index: u.index_price,
                        risk: m.risk_array.clone(),
                        published_ms: u.published_ms,
                    }));
                }
            }
            Event::LiquidationTransfer {
                account,
                counterparty,
                instrument,
                qty,
                price,
                fee,
                ..
            } => {
                ops.push(Op::Liquidation {
                    account,
                    counterparty,
                    instrument,
                    qty,
                    price,
                    fee,
                });
            }
            Event::LossShared { account, amount } => ops.push(Op::LossShared { account, amount }),
            Event::DeficitCovered {
                account,
                insurance,
                fee_pool,
                socialized,
                ..
            } => {
                ops.push(Op::DeficitCovered {
                    account,
                    insurance,
                    fee_pool,
                    socialized,
                });
            }
            Event::SessionKeyChanged {
                account,
                key,
                expiry_ms,
            } => ops.push(Op::SessionKey {
                account,
                key,
                expiry_ms,
                at_ms: input.time_ms,
            }),
            Event::Rejected { .. }
            | Event::ReplaceRefused { .. }
            | Event::OrderAccepted { .. }
            | Event::OrderRested { .. }
            | Event::OrderAmended { .. }
            | Event::OrderDone { .. }
            | Event::OracleHeld { .. } => {}
            Event::LiquidationStarted { account } => ops.push(Op::LiquidationStart { account }),
            Event::LiquidationEnded { account } => ops.push(Op::LiquidationEnd { account }),
            Event::MarginModeChanged { account, mode } => {
                ops.push(Op::SetMarginMode { account, mode });
            }
        }
    }
    (ops, marks)
}
