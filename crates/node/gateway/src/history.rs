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
