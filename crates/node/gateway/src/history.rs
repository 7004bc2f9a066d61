//! Order and trade history kept by the gateway from engine events, for `get_order`,
//! `get_trade_history` and the open-order views; restored from the node's snapshot and the log
//! after it at start (`Gateway::open`), labels included (they are logged with the signed
//! intents). Bounded: every open order, and the most recent `KEPT` finished orders and `KEPT`
//! trades (the log keeps everything).

use std::collections::{BTreeMap, VecDeque};

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
    /// Why it was cancelled, in Derive's words (`cancel_reason`; empty unless cancelled).
    pub cancel_reason: &'static str,
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

/// Finished orders and trades kept in memory (each).
pub const KEPT: usize = 50_000;

/// Orders and trades by id and subaccount.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// By order id.
    pub orders: BTreeMap<u64, OrderInfo>,
    /// In time order, the most recent `KEPT`.
    pub trades: VecDeque<TradeInfo>,
    /// Trades ever recorded (the next trade's id is one more).
    pub trades_total: u64,
    /// Finished orders in `orders`.
    finished: usize,
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
                                cancel_reason: "",
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
                        self.trades_total += 1;
                        self.trades.push_back(TradeInfo {
                            trade_id: self.trades_total,
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
                        if o.status == "open" {
                            self.finished += 1;
                        }
                        o.status = match reason {
                            DoneReason::Filled => "filled",
                            DoneReason::Expired | DoneReason::InstrumentExpired => "expired",
                            _ => "cancelled",
                        };
                        o.cancel_reason = cancel_reason(*reason);
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
        self.trim();
    }

    /// A copy holding every open order and the most recent `recent` finished orders and
    /// trades (what a snapshot keeps).
    pub fn recent(&self, recent: usize) -> History {
        let mut finished: Vec<u64> = self
            .orders
            .iter()
            .rev()
            .filter(|(_, o)| o.status != "open")
            .take(recent)
            .map(|(id, _)| *id)
            .collect();
        finished.sort_unstable();
        let mut orders: BTreeMap<u64, OrderInfo> = self
            .orders
            .iter()
            .filter(|(_, o)| o.status == "open")
            .map(|(id, o)| (*id, o.clone()))
            .collect();
        for id in &finished {
            if let Some(o) = self.orders.get(id) {
                orders.insert(*id, o.clone());
            }
        }
        let skip = self.trades.len().saturating_sub(recent);
        History {
            orders,
            trades: self.trades.iter().skip(skip).cloned().collect(),
            trades_total: self.trades_total,
            finished: finished.len(),
        }
    }

    /// Forgets the oldest finished orders and trades beyond `KEPT`.
    fn trim(&mut self) {
        // In chunks (an eighth over the bound), so that the scan past open orders is rare.
        if self.trades.len() > KEPT + KEPT / 8 {
            let excess = self.trades.len() - KEPT;
            self.trades.drain(..excess);
        }
        if self.finished > KEPT + KEPT / 8 {
            let excess = self.finished - KEPT;
            let old: Vec<u64> = self
                .orders
                .iter()
                .filter(|(_, o)| o.status != "open")
                .take(excess)
                .map(|(id, _)| *id)
                .collect();
            for id in old {
                self.orders.remove(&id);
                self.finished -= 1;
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

/// Every `cancel_reason` an order can have.
const CANCEL_REASONS: [&str; 8] = [
    "",
    "user_request",
    "ioc_or_market_partial_fill",
    "insufficient_margin",
    "self_trade_prevention",
    "reduce_only",
    "deleveraged",
    "fill_limit",
];

/// Derive's `cancel_reason` for an order done for `reason` (empty when not cancelled). Derive
/// has no word for self-trade prevention, a reduce-only order whose position is gone, a
/// position deleveraged under its orders, or an order's rest cancelled at the fill budget
/// (`EngineLimits::fill_budget`): those get their own.
pub fn cancel_reason(reason: DoneReason) -> &'static str {
    match reason {
        DoneReason::Filled | DoneReason::Expired | DoneReason::InstrumentExpired => "",
        DoneReason::Cancelled => "user_request",
        DoneReason::UnfilledRemainder => "ioc_or_market_partial_fill",
        // Its account went into liquidation, or could no longer margin it at a fill.
        DoneReason::Liquidation | DoneReason::Margin => "insufficient_margin",
        DoneReason::SelfTrade => "self_trade_prevention",
        DoneReason::ReduceOnly => "reduce_only",
        DoneReason::Deleveraged => "deleveraged",
        // It filled as many resting orders as one proven batch holds.
        DoneReason::FillLimit => "fill_limit",
    }
}

impl History {
    /// Appends the history as compact JSON arrays to `out` (kept in the node's snapshots),
    /// written straight as text.
    pub fn write_json(&self, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str("{\"orders\":[");
        for (i, (id, o)) in self.orders.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let nonce = o.nonce.map_or_else(|| "null".to_owned(), |n| n.to_string());
            let _ = write!(
                out,
                "{sep}[{id},{},{},{},{},{},{},\"{}\",{},\"{}\",{},{nonce},{},{},\"{}\"]",
                o.account.0,
                o.instrument.0,
                side_code(o.side),
                o.price.0,
                o.amount.0,
                o.filled.0,
                o.notional,
                o.fee,
                o.status,
                serde_json::Value::String(o.label.clone()),
                o.created_ms,
                o.updated_ms,
                o.cancel_reason
            );
        }
        out.push_str("],\"trades\":[");
        for (i, t) in self.trades.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(
                out,
                "{sep}[{},{},{},{},{},{},{},{},{},{}]",
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
            );
        }
        let _ = write!(out, "],\"trades_total\":{}}}", self.trades_total);
    }

    /// The history `write_json` wrote; `None` if anything in it is malformed.
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
                    // (Snapshots from before the field have none: an empty reason.)
                    cancel_reason: match o.get(14) {
                        None => "",
                        Some(r) => {
                            let r = r.as_str()?;
                            CANCEL_REASONS.into_iter().find(|c| *c == r)?
                        }
                    },
                },
            );
        }
        history.finished = history
            .orders
            .values()
            .filter(|o| o.status != "open")
            .count();
        history.trades_total = v.get("trades_total")?.as_u64()?;
        for t in v.get("trades")?.as_array()? {
            history.trades.push_back(TradeInfo {
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

#[cfg(test)]
mod tests {
    use super::*;
    use optio_types::{Amount, OrderId};

    fn accepted(id: u64) -> Event {
        Event::OrderAccepted {
            order: OrderId(id),
            account: AccountId(0),
            instrument: InstrumentId(0),
            client_order_id: 0,
        }
    }

    /// An order cancelled at a fill because its account could no longer margin it reads
    /// `cancelled` with Derive's `insufficient_margin`, through a snapshot too; a snapshot
    /// written before the field reads with an empty reason; an unknown reason is refused.
    #[test]
    fn a_cancel_reason_is_kept_and_round_trips() {
        let mut h = History::default();
        let placed = || Some((Side::Buy, Price(1), Qty(2), String::new(), None));
        for (id, reason) in [(1, DoneReason::Margin), (2, DoneReason::Filled)] {
            let done = Event::OrderDone {
                order: OrderId(id),
                account: AccountId(0),
                reason,
                unfilled: Qty(2),
            };
            h.record(&[accepted(id), done], id, placed());
        }
        h.record(&[accepted(3)], 3, placed());
        let reasons = |h: &History| -> Vec<(&str, &str)> {
            h.orders
                .values()
                .map(|o| (o.status, o.cancel_reason))
                .collect()
        };
        let expected = vec![
            ("cancelled", "insufficient_margin"),
            ("filled", ""),
            ("open", ""),
        ];
        assert_eq!(reasons(&h), expected);
        let mut text = String::new();
        h.write_json(&mut text);
        let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let back = History::from_json(&json).expect("reads back");
        assert_eq!(reasons(&back), expected);

        let mut old = json.clone();
        for o in old["orders"].as_array_mut().expect("orders") {
            o.as_array_mut().expect("an order").truncate(14);
        }
        let back = History::from_json(&old).expect("an older snapshot reads");
        assert!(back.orders.values().all(|o| o.cancel_reason.is_empty()));
        let mut bad = json;
        bad["orders"][0][14] = serde_json::json!("because");
        assert!(History::from_json(&bad).is_none());
    }

    /// Open orders stay however many there are; finished orders and trades are kept to the
    /// most recent `KEPT` (trimmed in chunks), trade ids keep counting, and the JSON round trip
    /// keeps all of it.
    #[test]
    fn history_is_bounded_and_round_trips() {
        let mut h = History::default();
        let placed = || Some((Side::Buy, Price(1), Qty(2), String::new(), None));
        // Order 0 rests for good.
        h.record(&[accepted(0)], 0, placed());
        let n = (KEPT + KEPT / 4) as u64;
        for id in 1..=n {
            let fill = Event::Fill {
                instrument: InstrumentId(0),
                maker_order: OrderId(0),
                taker_order: OrderId(id),
                maker_account: AccountId(0),
                taker_account: AccountId(1),
                taker_side: Side::Sell,
                price: Price(1),
                qty: Qty(1),
                maker_fee: Amount(0),
                taker_fee: Amount(0),
            };
            let done = Event::OrderDone {
                order: OrderId(id),
                account: AccountId(1),
                reason: DoneReason::Filled,
                unfilled: Qty(0),
            };
            h.record(&[accepted(id), fill, done], id, placed());
        }
        assert!(h.orders.contains_key(&0), "the open order is kept");
        assert!(h.orders.len() <= KEPT + KEPT / 8 + 1);
        assert!(
            h.orders.contains_key(&n),
            "the newest finished order is kept"
        );
        assert!(
            !h.orders.contains_key(&1),
            "the oldest finished order is gone"
        );
        assert!(h.trades.len() <= KEPT + KEPT / 8);
        assert_eq!(h.trades_total, 2 * n);
        assert_eq!(h.trades.back().map(|t| t.trade_id), Some(2 * n));
        let mut text = String::new();
        h.write_json(&mut text);
        let back =
            History::from_json(&serde_json::from_str(&text).expect("JSON")).expect("reads back");
        assert_eq!(back.orders.len(), h.orders.len());
        assert_eq!(back.trades.len(), h.trades.len());
        assert_eq!(back.trades_total, h.trades_total);
        assert_eq!(back.finished, h.finished);
    }
}
