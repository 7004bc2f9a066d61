//! Order and trade history kept by the gateway from engine events, for `get_order`,
//! `get_trade_history` and the open-order views; rebuilt from the log at start
//! (`Gateway::open`), labels included (they are logged with the signed intents).

use std::collections::BTreeMap;

use optio_types::{AccountId, DoneReason, Event, InstrumentId, Price, Qty, Side};

/// What the API reports about an order.
#[derive(Debug, Clone)]
pub struct OrderInfo {
    /// Subaccount.
    pub account: AccountId,
    /// Instrument.
    pub instrument: InstrumentId,
    /// Side.
    pub side: Side,
    /// Limit price.
    pub price: Price,
    /// Size ordered.
    pub amount: Qty,
    /// Size filled.
    pub filled: Qty,
    /// Sum of price x size of its fills (for the average price).
    pub notional: i128,
    /// Fees it paid.
    pub fee: i64,
    /// `open`, `filled`, `cancelled`, `expired`.
    pub status: &'static str,
    /// Client label.
    pub label: String,
    /// Signed nonce, if it came from a signed intent.
    pub nonce: Option<u64>,
    /// Engine time it was accepted.
    pub created_ms: u64,
    /// Engine time of its last change.
    pub updated_ms: u64,
}

/// One side of a trade, as its subaccount sees it.
#[derive(Debug, Clone)]
pub struct TradeInfo {
    /// Sequential id.
    pub trade_id: u64,
    /// The subaccount's order.
    pub order: u64,
    /// Subaccount.
    pub account: AccountId,
    /// Instrument.
    pub instrument: InstrumentId,
    /// The subaccount's side.
    pub side: Side,
    /// Maker or taker.
    pub maker: bool,
    /// Price.
    pub price: Price,
    /// Size.
    pub amount: Qty,
    /// Fee paid (negative: rebate).
    pub fee: i64,
    /// Engine time.
    pub time_ms: u64,
}

/// Orders and trades by id and subaccount.
#[derive(Debug, Default)]
pub struct History {
    /// By order id.
    pub orders: BTreeMap<u64, OrderInfo>,
    /// In time order.
    pub trades: Vec<TradeInfo>,
}

impl History {
    /// Folds one input's events in. `placed` describes an order the input placed (side, price,
    /// amount, label, nonce), since `OrderAccepted` does not carry them.
    pub fn record(
        &mut self,
        events: &[Event],
        time_ms: u64,
        placed: Option<(Side, Price, Qty, String, Option<u64>)>,
    ) {
        for e in events {
            match e {
                Event::OrderAccepted {
                    order,
                    account,
                    instrument,
                    ..
                } => {
                    if let Some((side, price, amount, label, nonce)) = placed.clone() {
                        self.orders.insert(
                            order.0,
                            OrderInfo {
                                account: *account,
                                instrument: *instrument,
                                side,
                                price,
                                amount,
                                filled: Qty::ZERO,
                                notional: 0,
                                fee: 0,
                                status: "open",
                                label,
                                nonce,
                                created_ms: time_ms,
                                updated_ms: time_ms,
                            },
                        );
                    }
                }
                Event::Fill {
                    instrument,
                    maker_order,
                    taker_order,
                    maker_account,
                    taker_account,
                    taker_side,
                    price,
                    qty,
                    maker_fee,
                    taker_fee,
                } => {
                    for (order, account, side, maker, fee) in [
                        (
                            maker_order.0,
                            *maker_account,
                            taker_side.opposite(),
                            true,
                            maker_fee.0,
                        ),
                        (
                            taker_order.0,
                            *taker_account,
                            *taker_side,
                            false,
                            taker_fee.0,
                        ),
                    ] {
                        if let Some(o) = self.orders.get_mut(&order) {
                            o.filled = Qty(o.filled.0 + qty.0);
                            o.notional += i128::from(price.0) * i128::from(qty.0);
                            o.fee += fee;
                            o.updated_ms = time_ms;
                        }
                        self.trades.push(TradeInfo {
                            trade_id: self.trades.len() as u64 + 1,
                            order,
                            account,
                            instrument: *instrument,
                            side,
                            maker,
                            price: *price,
                            amount: *qty,
                            fee,
                            time_ms,
                        });
                    }
                }
                Event::OrderDone { order, reason, .. } => {
                    if let Some(o) = self.orders.get_mut(&order.0) {
                        o.status = match reason {
                            DoneReason::Filled => "filled",
                            DoneReason::Expired | DoneReason::InstrumentExpired => "expired",
                            _ => "cancelled",
                        };
                        o.updated_ms = time_ms;
                    }
                }
                Event::OrderAmended {
                    order,
                    price,
                    remaining,
                    ..
                } => {
                    if let Some(o) = self.orders.get_mut(&order.0) {
                        o.price = *price;
                        o.amount = Qty(o.filled.0 + remaining.0);
                        o.updated_ms = time_ms;
                    }
                }
                _ => {}
            }
        }
    }
}

fn side_code(side: Side) -> u8 {
    match side {
        Side::Buy => 0,
        Side::Sell => 1,
    }
}

fn side_of(code: u64) -> Option<Side> {
    match code {
        0 => Some(Side::Buy),
        1 => Some(Side::Sell),
        _ => None,
    }
}

fn status_of(text: &str) -> Option<&'static str> {
    ["open", "filled", "cancelled", "expired"]
        .into_iter()
        .find(|s| *s == text)
}

impl History {
    /// The history as compact JSON arrays (kept in the node's snapshots).
    pub fn to_json(&self) -> serde_json::Value {
        let orders: Vec<serde_json::Value> = self
            .orders
            .iter()
            .map(|(id, o)| {
                serde_json::json!([
                    id,
                    o.account.0,
                    o.instrument.0,
                    side_code(o.side),
                    o.price.0,
                    o.amount.0,
                    o.filled.0,
                    o.notional.to_string(),
                    o.fee,
                    o.status,
                    o.label,
                    o.nonce,
                    o.created_ms,
                    o.updated_ms
                ])
            })
            .collect();
        let trades: Vec<serde_json::Value> = self
            .trades
            .iter()
            .map(|t| {
                serde_json::json!([
                    t.trade_id,
                    t.order,
                    t.account.0,
                    t.instrument.0,
                    side_code(t.side),
                    t.maker,
                    t.price.0,
                    t.amount.0,
                    t.fee,
                    t.time_ms
                ])
            })
            .collect();
        serde_json::json!({"orders": orders, "trades": trades})
    }

    /// The history `to_json` wrote; `None` if anything in it is malformed.
    pub fn from_json(v: &serde_json::Value) -> Option<History> {
        let u = |v: &serde_json::Value, i: usize| v.get(i)?.as_u64();
        let i = |v: &serde_json::Value, i: usize| v.get(i)?.as_i64();
        let mut history = History::default();
        for o in v.get("orders")?.as_array()? {
            history.orders.insert(
                u(o, 0)?,
                OrderInfo {
                    account: AccountId(u32::try_from(u(o, 1)?).ok()?),
                    instrument: InstrumentId(u32::try_from(u(o, 2)?).ok()?),
                    side: side_of(u(o, 3)?)?,
                    price: Price(i(o, 4)?),
                    amount: Qty(i(o, 5)?),
                    filled: Qty(i(o, 6)?),
                    notional: o.get(7)?.as_str()?.parse().ok()?,
                    fee: i(o, 8)?,
                    status: status_of(o.get(9)?.as_str()?)?,
                    label: o.get(10)?.as_str()?.to_owned(),
                    nonce: match o.get(11)? {
                        serde_json::Value::Null => None,
                        n => Some(n.as_u64()?),
                    },
                    created_ms: u(o, 12)?,
                    updated_ms: u(o, 13)?,
                },
            );
        }
        for t in v.get("trades")?.as_array()? {
            history.trades.push(TradeInfo {
                trade_id: u(t, 0)?,
                order: u(t, 1)?,
                account: AccountId(u32::try_from(u(t, 2)?).ok()?),
                instrument: InstrumentId(u32::try_from(u(t, 3)?).ok()?),
                side: side_of(u(t, 4)?)?,
                maker: t.get(5)?.as_bool()?,
                price: Price(i(t, 6)?),
                amount: Qty(i(t, 7)?),
                fee: i(t, 8)?,
                time_ms: u(t, 9)?,
            });
        }
        Some(history)
    }
}
