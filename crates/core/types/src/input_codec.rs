//! Canonical binary encoding of engine inputs: what the write-ahead log stores and what receipts
//! hash. Decoding bounds every length and refuses unknown tags and trailing bytes.

use crate::codec::{DecodeError, Reader, Writer};
use crate::fixed::Qty;
use crate::input::{Command, Input, NewOrder, OrderRef, OrderType, Quote};
use crate::oracle::{MarginMode, OracleUpdate, UpdateFormat};
use crate::state::{decode_proof_limits, decode_spec, encode_proof_limits, encode_spec};

/// Most entries decoded in one mass quote or oracle update, and most scenarios per risk array.
pub const MAX_LIST: usize = 4_096;

impl Input {
    /// Canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u64(self.time_ms);
        encode_command(&mut w, &self.command);
        w.bytes
    }

    /// Decodes canonical bytes.
    pub fn decode(bytes: &[u8]) -> Result<Input, DecodeError> {
        let mut r = Reader::new(bytes);
        let time_ms = r.u64()?;
        let command = decode_command(&mut r)?;
        r.finish()?;
        Ok(Input { time_ms, command })
    }
}

fn order_ref(w: &mut Writer, o: OrderRef) {
    match o {
        OrderRef::Id(id) => {
            w.u8(0);
            w.order(id);
        }
        OrderRef::Client(c) => {
            w.u8(1);
            w.u64(c);
        }
    }
}

fn read_order_ref(r: &mut Reader<'_>) -> Result<OrderRef, DecodeError> {
    match r.u8()? {
        0 => Ok(OrderRef::Id(r.order()?)),
        1 => Ok(OrderRef::Client(r.u64()?)),
        tag => Err(DecodeError::BadTag {
            what: "order ref",
            tag,
        }),
    }
}

fn option_level(w: &mut Writer, level: Option<(crate::fixed::Price, Qty)>) {
    match level {
        None => w.u8(0),
        Some((p, q)) => {
            w.u8(1);
            w.price(p);
            w.qty(q);
        }
    }
}

fn read_option_level(
    r: &mut Reader<'_>,
) -> Result<Option<(crate::fixed::Price, Qty)>, DecodeError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some((r.price()?, r.qty()?))),
        tag => Err(DecodeError::BadTag {
            what: "option",
            tag,
        }),
    }
}

fn encode_command(w: &mut Writer, c: &Command) {
    match c {
        Command::ListInstrument { spec } => {
            w.u8(0);
            encode_spec(w, spec);
        }
        Command::ActivateInstrument { instrument } => {
            w.u8(1);
            w.instrument(*instrument);
        }
        Command::SettleInstrument {
            instrument,
            settlement_price,
        } => {
            w.u8(2);
            w.instrument(*instrument);
            w.price(*settlement_price);
        }
        Command::OpenAccount { owner } => {
            w.u8(3);
            w.address(*owner);
        }
        Command::Deposit { account, amount } => {
            w.u8(4);
            w.account(*account);
            w.amount(*amount);
        }
        Command::L1Deposit {
            priority,
            owner,
            account,
            amount,
        } => {
            w.u8(17);
            w.u64(*priority);
            w.address(*owner);
            w.account(*account);
            w.amount(*amount);
        }
        Command::L1Withdrawal {
            priority,
            owner,
            account,
        } => {
            w.u8(18);
            w.u64(*priority);
            w.address(*owner);
            w.account(*account);
        }
        Command::L1Close {
            priority,
            owner,
            account,
            instrument,
            counterparty,
        } => {
            w.u8(24);
            w.u64(*priority);
            w.address(*owner);
            w.account(*account);
            w.instrument(*instrument);
            w.account(*counterparty);
        }
        Command::Withdraw { account, amount } => {
            w.u8(5);
            w.account(*account);
            w.amount(*amount);
        }
        Command::Transfer { from, to, amount } => {
            w.u8(6);
            w.account(*from);
            w.account(*to);
            w.amount(*amount);
        }
        Command::PlaceOrder(o) => {
            // Tag 19: the same, signed by a session key (its address follows).
            w.u8(if o.session_key.is_some() { 19 } else { 7 });
            w.account(o.account);
            w.instrument(o.instrument);
            w.side(o.side);
            w.qty(o.qty);
            match o.order_type {
                OrderType::Limit { price } => {
                    w.u8(0);
                    w.price(price);
                }
                OrderType::Market { protection_price } => {
                    w.u8(1);
                    match protection_price {
                        None => w.u8(0),
                        Some(p) => {
                            w.u8(1);
                            w.price(p);
                        }
                    }
                }
            }
            w.time_in_force(o.time_in_force);
            w.bool(o.post_only);
            w.bool(o.reduce_only);
            w.self_trade(o.self_trade);
            w.u64(o.client_order_id);
            if let Some(key) = o.session_key {
                w.address(key);
            }
        }
        Command::Amend {
            account,
            order,
            price,
            qty,
        } => {
            w.u8(8);
            w.account(*account);
            order_ref(w, *order);
            w.price(*price);
            w.qty(*qty);
        }
        Command::Replace { cancel, order } => {
            // The order to cancel, then the new order as a `PlaceOrder`.
            w.u8(26);
            order_ref(w, *cancel);
            encode_command(w, &Command::PlaceOrder(order.clone()));
        }
        Command::Cancel { account, order } => {
            w.u8(9);
            w.account(*account);
            order_ref(w, *order);
        }
        Command::CancelAll {
            account,
            instrument,
        } => {
            w.u8(10);
            w.account(*account);
            match instrument {
                None => w.u8(0),
                Some(i) => {
                    w.u8(1);
                    w.instrument(*i);
                }
            }
        }
        Command::MassQuote { account, quotes } => {
            w.u8(11);
            w.account(*account);
            w.len(quotes.len());
            for q in quotes {
                w.instrument(q.instrument);
                option_level(w, q.bid);
                option_level(w, q.ask);
            }
        }
        Command::OracleUpdate(u) => {
            // 12: before marks carried their own signature; 20: before settlement prices (both
            // still decoded).
            w.u8(21);
            w.bytes(&u.encode());
        }
        Command::SetMarginMode { account, mode } => {
            w.u8(13);
            w.account(*account);
            w.u8(mode.code());
        }
        Command::Liquidate {
            liquidator,
            account,
            instrument,
            qty,
        } => {
            w.u8(14);
            w.account(*liquidator);
            w.account(*account);
            w.instrument(*instrument);
            w.qty(*qty);
        }
        Command::Deleverage {
            account,
            instrument,
        } => {
            w.u8(15);
            w.account(*account);
            w.instrument(*instrument);
        }
        Command::SetSessionKey {
            account,
            key,
            expiry_ms,
        } => {
            w.u8(16);
            w.account(*account);
            w.address(*key);
            w.u64(*expiry_ms);
        }
        Command::SetProofLimits(p) => {
            w.u8(25);
            encode_proof_limits(w, p);
        }
    }
}

fn decode_command(r: &mut Reader<'_>) -> Result<Command, DecodeError> {
    Ok(match r.u8()? {
        0 => Command::ListInstrument {
            spec: decode_spec(r)?,
        },
        1 => Command::ActivateInstrument {
            instrument: r.instrument()?,
        },
        2 => Command::SettleInstrument {
            instrument: r.instrument()?,
            settlement_price: r.price()?,
        },
        3 => Command::OpenAccount {
            owner: r.address()?,
        },
        4 => Command::Deposit {
            account: r.account()?,
            amount: r.amount()?,
        },
        5 => Command::Withdraw {
            account: r.account()?,
            amount: r.amount()?,
        },
        6 => Command::Transfer {
            from: r.account()?,
            to: r.account()?,
            amount: r.amount()?,
        },
        tag @ (7 | 19) => {
            let account = r.account()?;
            let instrument = r.instrument()?;
            let side = r.side()?;
            let qty = r.qty()?;
            let order_type = match r.u8()? {
                0 => OrderType::Limit { price: r.price()? },
                1 => OrderType::Market {
                    protection_price: match r.u8()? {
                        0 => None,
                        1 => Some(r.price()?),
                        tag => {
                            return Err(DecodeError::BadTag {
                                what: "option",
                                tag,
                            });
                        }
                    },
                },
                tag => {
                    return Err(DecodeError::BadTag {
                        what: "order type",
                        tag,
                    });
                }
            };
            let time_in_force = r.time_in_force()?;
            let post_only = r.bool()?;
            let reduce_only = r.bool()?;
            let self_trade = r.self_trade()?;
            let client_order_id = r.u64()?;
            let session_key = if tag == 19 { Some(r.address()?) } else { None };
            Command::PlaceOrder(NewOrder {
                account,
                instrument,
                side,
                qty,
                order_type,
                time_in_force,
                post_only,
                reduce_only,
                self_trade,
                client_order_id,
                session_key,
            })
        }
        8 => Command::Amend {
            account: r.account()?,
            order: read_order_ref(r)?,
            price: r.price()?,
            qty: r.qty()?,
        },
        9 => Command::Cancel {
            account: r.account()?,
            order: read_order_ref(r)?,
        },
        26 => {
            let cancel = read_order_ref(r)?;
            match decode_command(r)? {
                Command::PlaceOrder(order) => Command::Replace { cancel, order },
                _ => {
                    return Err(DecodeError::BadTag {
                        what: "replace's new order",
                        tag: 26,
                    });
                }
            }
        }
        10 => Command::CancelAll {
            account: r.account()?,
            instrument: match r.u8()? {
                0 => None,
                1 => Some(r.instrument()?),
                tag => {
                    return Err(DecodeError::BadTag {
                        what: "option",
                        tag,
                    });
                }
            },
        },
        11 => {
            let account = r.account()?;
            let n = r.len(MAX_LIST)?;
            let mut quotes = Vec::with_capacity(n);
            for _ in 0..n {
                quotes.push(Quote {
                    instrument: r.instrument()?,
                    bid: read_option_level(r)?,
                    ask: read_option_level(r)?,
                });
            }
            Command::MassQuote { account, quotes }
        }
        tag @ (12 | 20 | 21) => Command::OracleUpdate(OracleUpdate::decode(
            r.bytes(usize::MAX)?,
            match tag {
                12 => UpdateFormat::Unattested,
                20 => UpdateFormat::SignedMarks,
                _ => UpdateFormat::Current,
            },
            MAX_LIST,
            MAX_LIST,
        )?),
        13 => Command::SetMarginMode {
            account: r.account()?,
            mode: {
                let tag = r.u8()?;
                MarginMode::from_code(tag).ok_or(DecodeError::BadTag {
                    what: "margin mode",
                    tag,
                })?
            },
        },
        14 => Command::Liquidate {
            liquidator: r.account()?,
            account: r.account()?,
            instrument: r.instrument()?,
            qty: r.qty()?,
        },
        15 => Command::Deleverage {
            account: r.account()?,
            instrument: r.instrument()?,
        },
        16 => Command::SetSessionKey {
            account: r.account()?,
            key: r.address()?,
            expiry_ms: r.u64()?,
        },
        17 => Command::L1Deposit {
            priority: r.u64()?,
            owner: r.address()?,
            account: r.account()?,
            amount: r.amount()?,
        },
        18 => Command::L1Withdrawal {
            priority: r.u64()?,
            owner: r.address()?,
            account: r.account()?,
        },
        24 => Command::L1Close {
            priority: r.u64()?,
            owner: r.address()?,
            account: r.account()?,
            instrument: r.instrument()?,
            counterparty: r.account()?,
        },
        // Tag 22: written before the settlement budget (unbounded).
        22 => Command::SetProofLimits(decode_proof_limits(r, false, false)?),
        23 => Command::SetProofLimits(decode_proof_limits(r, true, false)?),
        25 => Command::SetProofLimits(decode_proof_limits(r, true, true)?),
        tag => {
            return Err(DecodeError::BadTag {
                what: "command",
                tag,
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed::{Amount, Price};
    use crate::ids::InstrumentId;
    use crate::oracle::{MarkUpdate, SettlementUpdate};

    fn update(attestation: [u8; 65]) -> OracleUpdate {
        OracleUpdate {
            underlying: "BTC".into(),
            published_ms: 1_800_000_000_000,
            index_price: Price(60_000_000_000),
            marks: vec![MarkUpdate {
                instrument: InstrumentId(3),
                mark: Price(1_234_000_000),
                risk_array: vec![Amount(-5), Amount(0), Amount(7)],
                attestation,
            }],
            settlements: Vec::new(),
        }
    }

    /// A replace travels as the order to cancel and the new order as a `PlaceOrder` (tag 26);
    /// one whose inner command is anything else, or that is cut, is refused, not misread.
    #[test]
    fn a_replace_decodes_as_encoded_and_only_around_an_order() {
        use crate::ids::{AccountId, OrderId};
        use crate::input::{SelfTradePrevention, Side, TimeInForce};
        let order = NewOrder {
            account: AccountId(3),
            instrument: InstrumentId(2),
            side: Side::Sell,
            qty: Qty(250_000),
            order_type: OrderType::Limit {
                price: Price(2_500_000_000),
            },
            time_in_force: TimeInForce::GoodTillCancelled,
            post_only: true,
            reduce_only: false,
            self_trade: SelfTradePrevention::CancelTaker,
            client_order_id: 42,
            session_key: None,
        };
        for cancel in [OrderRef::Id(OrderId(77)), OrderRef::Client(41)] {
            let input = Input {
                time_ms: 1_800_000_000_002,
                command: Command::Replace {
                    cancel,
                    order: order.clone(),
                },
            };
            let bytes = input.encode();
            assert_eq!(bytes[8], 26);
            assert_eq!(Input::decode(&bytes), Ok(input));
            for len in [9, bytes.len() - 1] {
                assert!(Input::decode(&bytes[..len]).is_err(), "{len} bytes taken");
            }
        }
        // Tag 26 around a cancel (a well-formed command of its own) instead of an order.
        let mut w = Writer::default();
        w.u64(1_800_000_000_003);
        w.u8(26);
        order_ref(&mut w, OrderRef::Id(OrderId(77)));
        encode_command(
            &mut w,
            &Command::Cancel {
                account: AccountId(3),
                order: OrderRef::Id(OrderId(78)),
            },
        );
        assert_eq!(
            Input::decode(&w.bytes),
            Err(DecodeError::BadTag {
                what: "replace's new order",
                tag: 26
            })
        );
    }

    /// A proof's limits travel whole (tag 25, 56 bytes); a cut one is refused. A record of
    /// tag 23 (written before the fill budget bounded `Portfolio` accounts) decodes with that
    /// part unbounded, and one of tag 22 (before the settlement budget) with both unbounded.
    #[test]
    fn proof_limits_decode_as_encoded() {
        let input = Input {
            time_ms: 1_800_000_000_000,
            command: Command::SetProofLimits(crate::ProofLimits {
                max_positions_to_withdraw: 8,
                fill_budget: crate::FillBudget {
                    fills: 16,
                    accounts: 16,
                    windows: 8,
                    prices: 2,
                    window_bits: 6,
                    margins: 4,
                    positions: 16,
                    instruments: 8,
                },
                mark_windows: crate::MarkWindows {
                    windows: 1,
                    bits: 6,
                },
                settle_budget: crate::SettleBudget {
                    expiries: 4,
                    slots: 2,
                    holders: 16,
                },
            }),
        };
        let bytes = input.encode();
        assert_eq!(bytes[8], 25);
        assert_eq!(Input::decode(&bytes), Ok(input.clone()));
        assert!(Input::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut settled = bytes[..bytes.len() - 12].to_vec();
        settled[8] = 23;
        let Command::SetProofLimits(limits) = Input::decode(&settled).expect("decodes").command
        else {
            panic!("proof limits");
        };
        assert_eq!(limits.fill_budget.margins, u32::MAX);
        assert_eq!(limits.fill_budget.positions, u32::MAX);
        assert_eq!(limits.settle_budget.holders, 16);
        let mut old = bytes[..bytes.len() - 24].to_vec();
        old[8] = 22;
        let Command::SetProofLimits(limits) = Input::decode(&old).expect("decodes").command else {
            panic!("proof limits");
        };
        assert_eq!(limits.settle_budget, crate::SettleBudget::UNBOUNDED);
        assert_eq!(limits.mark_windows.bits, 6);
    }

    /// An oracle update is logged with each mark's and settlement price's signature (tag 21);
    /// one a log wrote before settlement prices (tag 20) or before marks carried their own
    /// signature (tag 12, no attestation field) still decodes, without settlement prices and
    /// its marks unsigned, so that such a log replays.
    #[test]
    fn oracle_updates_decode_with_and_without_their_marks_signatures() {
        let mut settling = update([0x5a; 65]);
        settling.settlements.push(SettlementUpdate {
            instrument: InstrumentId(4),
            price: Price(59_000_000_000),
            attestation: [0x3c; 65],
        });
        let signed = Input {
            time_ms: 1_800_000_000_001,
            command: Command::OracleUpdate(settling),
        };
        let bytes = signed.encode();
        assert_eq!(bytes[8], 21);
        assert_eq!(Input::decode(&bytes), Ok(signed));
        // Tag 20: the marks with their signatures, then nothing.
        let marks_only = update([0x5a; 65]);
        let mut tag20 = marks_only.encode();
        tag20.truncate(tag20.len() - 4);
        let mut w = Writer::default();
        w.u64(7);
        w.u8(20);
        w.bytes(&tag20);
        assert_eq!(
            Input::decode(&w.bytes),
            Ok(Input {
                time_ms: 7,
                command: Command::OracleUpdate(marks_only),
            })
        );
        // The bytes of the old format, written field by field as it wrote them.
        let old = update([0; 65]);
        let mut u = Writer::default();
        u.bytes(old.underlying.as_bytes());
        u.u64(old.published_ms);
        u.price(old.index_price);
        u.len(1);
        u.instrument(old.marks[0].instrument);
        u.price(old.marks[0].mark);
        u.amounts(&old.marks[0].risk_array);
        let mut w = Writer::default();
        w.u64(1_800_000_000_001);
        w.u8(12);
        w.bytes(&u.bytes);
        assert_eq!(
            Input::decode(&w.bytes),
            Ok(Input {
                time_ms: 1_800_000_000_001,
                command: Command::OracleUpdate(old),
            })
        );
        // The new format under the old tag is refused (trailing bytes), not misread.
        let mut w = Writer::default();
        w.u64(1);
        w.u8(12);
        w.bytes(&update([1; 65]).encode());
        assert!(Input::decode(&w.bytes).is_err());
    }
}
