//! JSON views of engine state (Deribit/Derive-style field names).

use std::collections::BTreeMap;

use optio_pricing::{Right, black76, implied_vol_black76};
use optio_sequencer::{Receipt, Sequencer};
use optio_types::{
    AccountId, DoneReason, Event, InstrumentId, InstrumentKind, InstrumentStatus, MONEY_SCALE,
    OptionRight, Price, QTY_SCALE, Qty, Side,
};
use serde_json::{Value, json};

use crate::rpc::{CallError, GatewayError};

/// `0x`-prefixed lowercase hex (on every reply's hot path: no formatting machinery).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 + 2 * bytes.len());
    s.push_str("0x");
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

fn money(p: i64) -> String {
    Price(p).to_string()
}

fn qty(q: i64) -> String {
    Qty(q).to_string()
}

/// The receipt as JSON.
pub fn receipt(r: &Receipt) -> Value {
    json!({
        "seq": r.seq,
        "intent_hash": hex(&r.intent_hash),
        "previous": hex(&r.previous),
        "seal": {"first_seq": r.seal.first_seq, "count": r.seal.count, "root": hex(&r.seal.root), "signature": hex(&r.seal.signature)},
        "path": r.path.iter().map(|h| hex(h)).collect::<Vec<_>>(),
    })
}

/// Instrument id by name.
pub fn instrument_id(s: &Sequencer, name: &str) -> Result<InstrumentId, CallError> {
    let parsed = name
        .parse()
        .map_err(|e| GatewayError::InvalidParams(format!("instrument_name: {e}")))?;
    s.engine().instrument_id(&parsed).ok_or(CallError::Engine(
        optio_types::RejectCode::UnknownInstrument,
        None,
    ))
}

pub(crate) fn status(s: InstrumentStatus) -> &'static str {
    match s {
        InstrumentStatus::Listed => "listed",
        InstrumentStatus::Active => "open",
        InstrumentStatus::Expired => "expired",
        InstrumentStatus::Settled => "settled",
    }
}

/// `public/get_instruments`: optional `currency` (underlying) and `kind` (`option`, `future`).
pub fn instruments(s: &Sequencer, params: &Value) -> Value {
    let currency = params.get("currency").and_then(Value::as_str);
    let kind = params.get("kind").and_then(Value::as_str);
    let list: Vec<Value> = s
        .engine()
        .instruments()
        .filter(|i| currency.is_none_or(|c| c == "any" || i.spec.name.underlying == c))
        .filter(|i| {
            matches!(
                (kind, i.spec.name.kind),
                (None, _)
                    | (Some("option"), InstrumentKind::Option { .. })
                    | (Some("future" | "perp"), InstrumentKind::Perpetual)
            )
        })
        .map(|i| {
            let (strike, right, expiry) = match i.spec.name.kind {
                InstrumentKind::Option {
                    strike,
                    right,
                    expiry,
                } => (
                    Some(money(strike.0)),
                    Some(if right == OptionRight::Call {
                        "call"
                    } else {
                        "put"
                    }),
                    Some(expiry.expiry_ms()),
                ),
                InstrumentKind::Perpetual => (None, None, None),
            };
            json!({
                "instrument_name": i.spec.name.to_string(),
                "instrument_id": i.id.0,
                "kind": if strike.is_some() { "option" } else { "future" },
                "settlement_period": if strike.is_some() { "expiry" } else { "perpetual" },
                "base_currency": i.spec.name.underlying,
                "quote_currency": "USDC",
                "tick_size": money(i.spec.tick_size.0),
                "min_trade_amount": qty(i.spec.min_size.0),
                "amount_step": qty(i.spec.amount_step.0),
                "contract_size": qty(i.spec.contract_multiplier.0),
                "maker_commission": f64::from(i.spec.maker_fee.0) / 1e6,
                "taker_commission": f64::from(i.spec.taker_fee.0) / 1e6,
                "strike": strike,
                "option_type": right,
                "expiration_timestamp": expiry,
                "state": status(i.status),
                "is_active": i.status == InstrumentStatus::Active,
                "mark_price": i.mark.map(|m| money(m.0)),
                "settlement_price": i.settlement_price.map(|p| money(p.0)),
            })
        })
        .collect();
    Value::Array(list)
}

fn levels(s: &Sequencer, id: InstrumentId, side: Side, depth: usize) -> Vec<Value> {
    s.engine()
        .book_levels(id, side, depth)
        .into_iter()
        .map(|(p, q)| json!([money(p.0), qty(q.0)]))
        .collect()
}

/// `public/get_order_book`: `instrument_name`, optional `depth` (1..=1000, default 10).
pub fn order_book(s: &Sequencer, params: &Value) -> Result<Value, CallError> {
    let name = params
        .get("instrument_name")
        .and_then(Value::as_str)
        .ok_or_else(|| GatewayError::InvalidParams("instrument_name".into()))?;
    let depth = params
        .get("depth")
        .map_or(Some(10), Value::as_u64)
        .filter(|d| (1..=1_000).contains(d))
        .ok_or_else(|| GatewayError::InvalidParams("depth must be 1..=1000".into()))?
        as usize;
    let id = instrument_id(s, name)?;
    let (bid, ask) = s.engine().best_bid_ask(id);
    let view = s
        .engine()
        .instruments()
        .nth(id.0 as usize)
        .ok_or(GatewayError::Internal)?;
    let index = s
        .engine()
        .oracle(&view.spec.name.underlying)
        .map(|o| money(o.index_price.0));
    Ok(json!({
        "instrument_name": name,
        "bids": levels(s, id, Side::Buy, depth),
        "asks": levels(s, id, Side::Sell, depth),
        "best_bid_price": bid.map(|p| money(p.0)),
        "best_ask_price": ask.map(|p| money(p.0)),
        "mark_price": view.mark.map(|m| money(m.0)),
        "index_price": index,
        "change_id": s.next_seq() - 1,
        "timestamp": s.engine().time_ms(),
    }))
}

/// `public/ticker`: best prices, mark and index, and for options the mark's implied volatility
/// and Greeks (Black-76 on the index as forward, from the mark).
pub fn ticker(s: &Sequencer, params: &Value, now_ms: u64) -> Result<Value, CallError> {
    let name = params
        .get("instrument_name")
        .and_then(Value::as_str)
        .ok_or_else(|| GatewayError::InvalidParams("instrument_name".into()))?;
    let id = instrument_id(s, name)?;
    let engine = s.engine();
    let view = engine
        .instruments()
        .nth(id.0 as usize)
        .ok_or(GatewayError::Internal)?;
    let oracle = engine.oracle(&view.spec.name.underlying);
    let (bid, ask) = engine.best_bid_ask(id);
    let mut iv = Value::Null;
    let mut greeks = Value::Null;
    if let (
        InstrumentKind::Option {
            strike,
            right,
            expiry,
        },
        Some(mark),
        Some(o),
    ) = (view.spec.name.kind, view.mark, oracle)
    {
        let t = (expiry.expiry_ms() as f64 - now_ms as f64) / (365.0 * 86_400_000.0);
        let mult = view.spec.contract_multiplier.0 as f64 / QTY_SCALE as f64;
        let (f, k) = (
            o.index_price.0 as f64 / MONEY_SCALE as f64,
            strike.0 as f64 / MONEY_SCALE as f64,
        );
        let right = if right == OptionRight::Call {
            Right::Call
        } else {
            Right::Put
        };
        if t > 0.0
            && let Ok(vol) = implied_vol_black76(
                right,
                mark.0 as f64 / MONEY_SCALE as f64 / mult,
                f,
                k,
                t,
                1.0,
            )
        {
            let g = black76(right, f, k, t, vol, 1.0);
            iv = json!(vol);
            greeks = json!({"delta": g.delta * mult, "gamma": g.gamma * mult, "vega": g.vega * mult, "theta": g.theta * mult, "rho": g.rho * mult});
        }
    }
    Ok(json!({
        "instrument_name": name,
        "state": status(view.status),
        "best_bid_price": bid.map(|p| money(p.0)),
        "best_ask_price": ask.map(|p| money(p.0)),
        "mark_price": view.mark.map(|m| money(m.0)),
        "index_price": oracle.map(|o| money(o.index_price.0)),
        "index_held": oracle.and_then(|o| o.held).map(|p| money(p.0)),
        "index_age_ms": oracle.map(|o| now_ms.saturating_sub(o.published_ms)),
        "mark_iv": iv,
        "greeks": greeks,
        "timestamp": engine.time_ms(),
    }))
}

fn order_json(o: &optio_types::state::OrderRecord, name: &str, label: Option<&String>) -> Value {
    json!({
        "order_id": o.id.0.to_string(),
        "instrument_name": name,
        "direction": if o.side == Side::Buy { "buy" } else { "sell" },
        "order_type": "limit",
        "order_status": "open",
        "amount": qty(o.remaining.0 + o.filled.0),
        "filled_amount": qty(o.filled.0),
        "limit_price": money(o.price.0),
        "label": label.cloned().unwrap_or_default(),
        "reduce_only": o.reduce_only,
        "post_only": o.post_only,
    })
}

/// `private/get_open_orders`.
pub fn open_orders(s: &Sequencer, account: AccountId, labels: &BTreeMap<u64, String>) -> Value {
    let engine = s.engine();
    let names: Vec<String> = engine
        .instruments()
        .map(|i| i.spec.name.to_string())
        .collect();
    Value::Array(
        engine
            .open_orders_of(account)
            .iter()
            .map(|o| order_json(o, &names[o.instrument.0 as usize], labels.get(&o.id.0)))
            .collect(),
    )
}

/// `private/get_positions`: non-zero positions, each with its share of the account's
/// requirements where the margin mode has one (`optio_engine::MarginView`; `null` under
/// portfolio margin, which margins the portfolio as a whole).
pub fn positions(s: &Sequencer, account: AccountId) -> Value {
    let engine = s.engine();
    let margin = engine.margin_view(account);
    let share = |id| {
        margin
            .as_ref()
            .and_then(|m| m.instruments.iter().find(|m| m.instrument == id))
    };
    let list: Vec<Value> = engine
        .instruments()
        .filter_map(|i| {
            let (size, entry, realized) = engine.position_view(account, i.id)?;
            let m = share(i.id);
            (size.0 != 0).then(|| {
                json!({
                    "instrument_name": i.spec.name.to_string(),
                    "size": qty(size.0),
                    "direction": if size.0 > 0 { "buy" } else { "sell" },
                    "average_price": entry.map(|p| money(p.0)),
                    "mark_price": i.mark.map(|m| money(m.0)),
                    "realized_profit_loss": money(realized.0),
                    "initial_margin": m.map(|m| money(m.position_initial.0)),
                    "maintenance_margin": m.map(|m| money(m.maintenance.0)),
                    "open_orders_margin": m.map(|m| money(m.initial.0 - m.position_initial.0)),
                })
            })
        })
        .collect();
    Value::Array(list)
}

/// `private/get_subaccount`: collateral, margin and mode. `initial_margin` is the requirement
/// with the open orders (what a new order or a withdrawal must leave covered), split into
/// `positions_initial_margin` and `open_orders_margin`; requirements are net of the values the
/// mode counts, so a long's value can make them negative.
pub fn subaccount(s: &Sequencer, account: AccountId) -> Value {
    let engine = s.engine();
    let (balance, requirement, free) = engine.collateral(account).unwrap_or_default();
    let margin = engine.margin_view(account);
    json!({
        "subaccount_id": account.0,
        "margin_mode": format!("{:?}", engine.margin_mode(account).unwrap_or_default()),
        "collaterals": [{"currency": "USDC", "amount": money(balance.0)}],
        "initial_margin": money(requirement.0),
        "positions_initial_margin": margin.as_ref().map(|m| money(m.positions_initial.0)),
        "open_orders_margin": margin.as_ref().map(|m| money(m.initial.0 - m.positions_initial.0)),
        "maintenance_margin": margin.as_ref().map(|m| money(m.maintenance.0)),
        "under_liquidation": margin.as_ref().is_some_and(|m| m.liquidating),
        "free_collateral": money(free.0),
        "open_orders": engine.open_orders_of(account).len(),
    })
}

/// The result of a placed order: its state and trades, and the receipt.
#[allow(clippy::too_many_arguments)]
pub fn order_result(
    name: &str,
    side: Side,
    price: Price,
    amount: Qty,
    label: &str,
    events: &[Event],
    receipt: Value,
    time_ms: u64,
) -> Value {
    let mut order_id = 0;
    let mut filled = 0i64;
    let mut notional = 0i128;
    let mut fee = 0i64;
    let mut trades = Vec::new();
    let mut status = "open";
    let mut cancel_reason = "";
    for e in events {
        match e {
            Event::OrderAccepted { order, .. } => order_id = order.0,
            Event::Fill {
                price,
                qty: q,
                taker_fee,
                maker_order,
                ..
            } => {
                filled += q.0;
                notional += i128::from(price.0) * i128::from(q.0);
                fee += taker_fee.0;
                trades.push(json!({"trade_price": money(price.0), "trade_amount": qty(q.0), "maker_order_id": maker_order.0.to_string(), "fee": money(taker_fee.0)}));
            }
            Event::OrderDone { order, reason, .. } if order.0 == order_id => {
                status = match reason {
                    DoneReason::Filled => "filled",
                    _ => "cancelled",
                };
                cancel_reason = crate::history::cancel_reason(*reason);
            }
            _ => {}
        }
    }
    let average = (filled > 0).then(|| money((notional / i128::from(filled)) as i64));
    json!({
        "order": {
            "order_id": order_id.to_string(),
            "instrument_name": name,
            "direction": if side == Side::Buy { "buy" } else { "sell" },
            "order_type": "limit",
            "order_status": status,
            "cancel_reason": cancel_reason,
            "amount": qty(amount.0),
            "filled_amount": qty(filled),
            "limit_price": money(price.0),
            "average_price": average,
            "order_fee": money(fee),
            "label": label,
            "creation_timestamp": time_ms,
        },
        "trades": trades,
        "receipt": receipt,
    })
}
