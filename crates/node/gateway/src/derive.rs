//! The Derive-compatible API, so that unmodified `ccxt.derive` (4.5.90) trades on Optio.
//!
//! Transport as ccxt speaks it (`../shared/reference/derive-protocol.md`): `POST /public/{method}`
//! and `POST /private/{method}` with the params object as the body (no JSON-RPC envelope),
//! `GET /public/get_all_currencies`, answers `{"id", "result"}` or `{"id", "error": {code,
//! message}}` with Derive's error codes (which ccxt maps to its exceptions). Private calls carry
//! `X-DeriveWallet`, `X-DeriveTimestamp` and `X-DeriveSignature` (EIP-191 of the timestamp).
//! Orders are verified against the compatibility domain ccxt hard-codes (see `Domain::derive_compat`)
//! or Optio's native one; `max_fee` is per contract, as in Derive.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use optio_types::{
    AccountId, Command, InstrumentKind, InstrumentStatus, MarginMode, OptionRight, OrderId,
    OrderRef, Price, QTY_SCALE, Qty, RejectCode, Side,
};
use serde_json::{Value, json};

use crate::history::OrderInfo;
use crate::rpc::{CallError, GatewayError};
use crate::{Gateway, account_param, label_id};

fn money(p: i64) -> String {
    Price(p).to_string()
}

fn qty(q: i64) -> String {
    Qty(q).to_string()
}

use crate::views::hex;

/// Derive's error code for an outcome (what ccxt maps to its exception classes).
pub fn derive_code(e: &CallError) -> i64 {
    match e {
        CallError::Gateway(g) => match g {
            GatewayError::Parse => -32_700,
            GatewayError::InvalidRequest(_) => -32_600,
            GatewayError::MethodNotFound => -32_601,
            GatewayError::InvalidParams(_) => -32_602,
            GatewayError::BadSignature => 14_014,
            GatewayError::NotOwner
            | GatewayError::BeyondSignedTerms
            | GatewayError::UnsignedChange => 14_023,
            GatewayError::ReplayedNonce => 11_017,
            GatewayError::NonceDate(_) => 11_018,
            GatewayError::SignatureExpiry => 11_011,
            GatewayError::Unauthorized => 14_022,
            GatewayError::MaxFeeTooLow(_) => 11_023,
            GatewayError::RateLimited => -32_000,
            GatewayError::Internal => -32_603,
        },
        CallError::Engine(code, _) => match code {
            RejectCode::InsufficientMargin | RejectCode::InsufficientFreeCollateral => 11_000,
            RejectCode::UnknownOrder => 11_006,
            RejectCode::PostOnlyWouldCross => 11_008,
            RejectCode::NoLiquidity => 11_009,
            RejectCode::InvalidQty | RejectCode::BelowMinSize | RejectCode::QtyTooLarge => 11_012,
            RejectCode::InvalidPrice | RejectCode::PriceOutOfBand => 11_013,
            RejectCode::FokNotFillable => 11_014,
            RejectCode::InstrumentNotActive => 11_021,
            RejectCode::UnknownInstrument => 12_001,
            RejectCode::UnknownAccount => 14_001,
            // Derive's "signer is not the wallet owner or a registered session key".
            RejectCode::SessionKeyNotLive => 14_023,
            other => i64::from(other.code()),
        },
    }
}

fn reply(result: Result<Value, CallError>) -> Response {
    let body = match result {
        Ok(v) => json!({"id": "optio", "result": v}),
        Err(e) => {
            let message = match &e {
                CallError::Gateway(g) => g.to_string(),
                CallError::Engine(code, _) => code.message().to_owned(),
            };
            json!({"id": "optio", "error": {"code": derive_code(&e), "message": message}})
        }
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn parse_body(body: &Bytes) -> Result<Value, CallError> {
    let v: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|_| GatewayError::Parse)?
    };
    if v.is_object() {
        Ok(v)
    } else {
        Err(GatewayError::InvalidRequest("body must be a JSON object").into())
    }
}

async fn public_post(
    State(g): State<Arc<Gateway>>,
    Path(method): Path<String>,
    body: Bytes,
) -> Response {
    let out = tokio::task::spawn_blocking(move || {
        parse_body(&body).and_then(|p| public(&g, &method, &p))
    })
    .await;
    reply(out.unwrap_or(Err(GatewayError::Internal.into())))
}

async fn currencies(State(g): State<Arc<Gateway>>) -> Response {
    let out =
        tokio::task::spawn_blocking(move || public(&g, "get_all_currencies", &json!({}))).await;
    reply(out.unwrap_or(Err(GatewayError::Internal.into())))
}

async fn private_post(
    State(g): State<Arc<Gateway>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let out = tokio::task::spawn_blocking(move || {
        parse_body(&body).and_then(|p| private(&g, &method, &p, &headers))
    })
    .await;
    reply(out.unwrap_or(Err(GatewayError::Internal.into())))
}

/// Routes for the Derive-compatible API (at the root: `/public/...`, `/private/...`).
pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/public/get_all_currencies", get(currencies))
        .route("/public/{method}", post(public_post))
        .route("/private/{method}", post(private_post))
}

/// An order id parameter (`key`): a decimal string, as Derive sends ids, or a JSON integer.
fn order_id_param(params: &Value, key: &str) -> Result<u64, GatewayError> {
    params
        .get(key)
        .and_then(|v| {
            v.as_str()
                .and_then(|s| s.parse().ok())
                .or_else(|| v.as_u64())
        })
        .ok_or_else(|| GatewayError::InvalidParams(key.into()))
}

/// A placed signed order as Derive shows it: the order with its signature's fields.
fn placed_json(
    g: &Gateway,
    placed: &crate::PlacedOrder,
    account: AccountId,
    params: &Value,
) -> Result<Value, CallError> {
    let info = g
        .lock()
        .history
        .orders
        .get(&placed.order_id)
        .cloned()
        .ok_or(GatewayError::Internal)?;
    let mut order = order_json(&info, placed.order_id, &placed.name, account.0);
    order["signer"] = json!(hex(&placed.signer));
    order["signature"] = placed.signature.clone();
    order["signature_expiry_sec"] = json!(placed.expiry);
    order["max_fee"] = json!(money(placed.max_fee.0));
    order["time_in_force"] = params.get("time_in_force").cloned().unwrap_or(json!("gtc"));
    Ok(order)
}

fn public(g: &Gateway, method: &str, params: &Value) -> Result<Value, CallError> {
    let node = g.lock();
    let engine = node.sequencer.engine();
    match method {
        "get_time" => Ok(json!(g.config.clock.now_ms())),
        "get_all_currencies" => {
            let mut list: Vec<String> = engine
                .instruments()
                .map(|i| i.spec.name.underlying.clone())
                .collect();
            list.sort();
            list.dedup();
            Ok(Value::Array(list.into_iter().map(|c| json!({"currency": c, "market_type": "ALL", "spot_price": engine.oracle(&c).map(|o| money(o.index_price.0))})).collect()))
        }
        "get_all_instruments" => {
            let kind = params
                .get("instrument_type")
                .and_then(Value::as_str)
                .unwrap_or("option");
            let expired = params
                .get("expired")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let page = params
                .get("page")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .max(1) as usize;
            let page_size = params
                .get("page_size")
                .and_then(Value::as_u64)
                .unwrap_or(1_000)
                .clamp(1, 1_000) as usize;
            let all: Vec<Value> = engine
                .instruments()
                .filter(|i| matches!((kind, i.spec.name.kind), ("option", InstrumentKind::Option { .. }) | ("perp", InstrumentKind::Perpetual)))
                .filter(|i| expired || matches!(i.status, InstrumentStatus::Active | InstrumentStatus::Listed))
                .map(|i| {
                    let option = match i.spec.name.kind {
                        InstrumentKind::Option { strike, right, expiry } => json!({
                            "index": format!("{}-USD", i.spec.name.underlying),
                            "expiry": expiry.expiry_ms() / 1_000,
                            "strike": money(strike.0),
                            "option_type": if right == OptionRight::Call { "C" } else { "P" },
                            "settlement_price": i.settlement_price.map(|p| money(p.0)),
                        }),
                        InstrumentKind::Perpetual => Value::Null,
                    };
                    json!({
                        "instrument_type": if option.is_null() { "perp" } else { "option" },
                        "instrument_name": i.spec.name.to_string(),
                        "is_active": i.status == InstrumentStatus::Active,
                        "tick_size": money(i.spec.tick_size.0),
                        "minimum_amount": qty(i.spec.min_size.0),
                        "maximum_amount": qty(engine.limits().max_order_qty.0),
                        "amount_step": qty(i.spec.amount_step.0),
                        "maker_fee_rate": (f64::from(i.spec.maker_fee.0) / 1e6).to_string(),
                        "taker_fee_rate": (f64::from(i.spec.taker_fee.0) / 1e6).to_string(),
                        "base_currency": i.spec.name.underlying,
                        "quote_currency": "USDC",
                        "option_details": option,
                        "perp_details": if option.is_null() { json!({"index": format!("{}-USD", i.spec.name.underlying), "funding_rate": "0"}) } else { Value::Null },
                        "base_asset_address": hex(&g.config.verifying_contract),
                        "base_asset_sub_id": i.id.0.to_string(),
                    })
                })
                .collect();
            let count = all.len();
            let instruments: Vec<Value> = all
                .into_iter()
                .skip((page - 1) * page_size)
                .take(page_size)
                .collect();
            Ok(
                json!({"instruments": instruments, "pagination": {"num_pages": count.div_ceil(page_size), "count": count}}),
            )
        }
        "get_ticker" => {
            let native = crate::views::ticker(&node.sequencer, params, g.config.clock.now_ms())?;
            let id = crate::views::instrument_id(
                &node.sequencer,
                native["instrument_name"].as_str().unwrap_or_default(),
            )?;
            let top = |side| engine.book_levels(id, side, 1).first().copied();
            let (bid, ask) = (top(Side::Buy), top(Side::Sell));
            let pair = |l: Option<(Price, Qty)>| {
                l.map_or(("0".to_owned(), "0".to_owned()), |(p, q)| {
                    (money(p.0), qty(q.0))
                })
            };
            let ((b, bq), (a, aq)) = (pair(bid), pair(ask));
            let mark = native["mark_price"].as_str().unwrap_or("0").to_owned();
            let index = native["index_price"].as_str().unwrap_or("0").to_owned();
            let view = engine
                .instruments()
                .nth(id.0 as usize)
                .ok_or(GatewayError::Internal)?;
            let g_ = &native["greeks"];
            let pricing = if g_.is_null() {
                Value::Null
            } else {
                let f = |k: &str| {
                    g_[k]
                        .as_f64()
                        .map(|x| format!("{x:.8}"))
                        .unwrap_or_default()
                };
                let iv = native["mark_iv"]
                    .as_f64()
                    .map(|x| format!("{x:.6}"))
                    .unwrap_or_default();
                json!({"d": f("delta"), "g": f("gamma"), "t": f("theta"), "v": f("vega"), "r": f("rho"), "i": iv, "bi": iv, "ai": iv, "m": mark, "f": index, "df": "1"})
            };
            Ok(json!({
                "t": engine.time_ms(), "b": b, "B": bq, "a": a, "A": aq, "M": mark, "I": index, "option_pricing": pricing,
                "stats": {"c": "0", "v": "0", "pr": "0", "n": 0, "oi": "0", "h": "0", "l": "0", "p": "0"},
                "minp": money(view.spec.tick_size.0), "maxp": money(view.spec.max_price().map_or(0, |p| p.0)),
            }))
        }
        _ => Err(GatewayError::MethodNotFound.into()),
    }
}

fn order_json(g_labels: &OrderInfo, id: u64, name: &str, subaccount: u32) -> Value {
    let o = g_labels;
    let average = if o.filled.0 > 0 {
        money((o.notional / i128::from(o.filled.0)) as i64)
    } else {
        "0".into()
    };
    json!({
        "subaccount_id": subaccount,
        "order_id": id.to_string(),
        "instrument_name": name,
        "direction": if o.side == Side::Buy { "buy" } else { "sell" },
        "label": o.label,
        "amount": qty(o.amount.0),
        "filled_amount": qty(o.filled.0),
        "average_price": average,
        "limit_price": money(o.price.0),
        "order_fee": money(o.fee),
        "order_status": o.status,
        "cancel_reason": o.cancel_reason,
        "order_type": "limit",
        "time_in_force": "gtc",
        "reduce_only": false,
        "nonce": o.nonce.map(|n| n.to_string()),
        "creation_timestamp": o.created_ms,
        "last_update_timestamp": o.updated_ms,
    })
}

/// A subaccount as Derive reports it. Margins follow Derive's convention: a requirement is a
/// negative contribution, `initial_margin` and `maintenance_margin` are what the collateral
/// holds above them (`optio_engine::MarginView`: the engine's requirements, orders split from
/// positions). Optio's worst-case mode reports as "SM", stricter than Standard.
fn portfolio(g: &Gateway, account: AccountId) -> Value {
    let node = g.lock();
    let engine = node.sequencer.engine();
    let (balance, _, _) = engine.collateral(account).unwrap_or_default();
    let Some(margin) = engine.margin_view(account) else {
        return json!({"subaccount_id": account.0, "failed_to_fetch": true});
    };
    let positions = positions(&node.sequencer, account, &margin);
    let value: i64 = positions.iter().map(|(_, v)| v).sum();
    let b = balance.0;
    json!({
        "subaccount_id": account.0,
        "currency": ["USDC"],
        "margin_type": if margin.mode == MarginMode::Portfolio { "PM" } else { "SM" },
        "is_under_liquidation": margin.liquidating,
        "collaterals": [{"currency": "USDC", "asset_name": "USDC", "amount": money(b)}],
        "collaterals_value": money(b),
        "positions_value": money(value),
        "subaccount_value": money(b + value),
        "collaterals_initial_margin": money(b),
        "collaterals_maintenance_margin": money(b),
        "positions_initial_margin": money(-margin.positions_initial.0),
        "positions_maintenance_margin": money(-margin.maintenance.0),
        "open_orders_margin": money(margin.positions_initial.0 - margin.initial.0),
        "initial_margin": money(b - margin.initial.0),
        "maintenance_margin": money(b - margin.maintenance.0),
        "positions": positions.into_iter().map(|(p, _)| p).collect::<Vec<_>>(),
    })
}

/// An account's nonzero positions as Derive reports them, each with its value at the mark
/// (rounded toward zero). Its margins are its share of the account's (`margin`), negative as
/// Derive writes requirements; `null` under portfolio margin, which margins the portfolio
/// as a whole.
fn positions(
    s: &optio_sequencer::Sequencer,
    account: AccountId,
    margin: &optio_engine::MarginView,
) -> Vec<(Value, i64)> {
    let engine = s.engine();
    let share = |id| margin.instruments.iter().find(|m| m.instrument == id);
    engine
        .instruments()
        .filter_map(|i| {
            let (size, entry, _) = engine.position_view(account, i.id)?;
            (size.0 != 0).then(|| {
                let mark = i.mark.map_or(0, |m| m.0);
                let value = i128::from(size.0) * i128::from(mark) / i128::from(QTY_SCALE);
                let cost = i128::from(size.0) * i128::from(entry.map_or(0, |p| p.0))
                    / i128::from(QTY_SCALE);
                let m = share(i.id);
                let position = json!({
                    "instrument_name": i.spec.name.to_string(),
                    "instrument_type": if matches!(i.spec.name.kind, InstrumentKind::Perpetual) { "perp" } else { "option" },
                    "amount": qty(size.0),
                    "mark_price": money(mark),
                    "mark_value": money(value as i64),
                    "average_price": entry.map(|p| money(p.0)),
                    "unrealized_pnl": money((value - cost) as i64),
                    "initial_margin": m.map(|m| money(-m.position_initial.0)),
                    "maintenance_margin": m.map(|m| money(-m.maintenance.0)),
                    "open_orders_margin": m.map(|m| money(m.position_initial.0 - m.initial.0)),
                    "leverage": null,
                    "liquidation_price": null,
                    "creation_timestamp": 0,
                });
                (position, value as i64)
            })
        })
        .collect()
}

fn private(
    g: &Gateway,
    method: &str,
    params: &Value,
    headers: &HeaderMap,
) -> Result<Value, CallError> {
    let wallet = g.wallet(headers, "x-derive")?;
    if let Some(w) = params.get("wallet").and_then(Value::as_str)
        && optio_intents::parse_address(w) != Some(wallet)
    {
        return Err(GatewayError::Unauthorized.into());
    }
    let name_of = |id: optio_types::InstrumentId| {
        g.lock()
            .sequencer
            .engine()
            .instruments()
            .nth(id.0 as usize)
            .map(|i| i.spec.name.to_string())
            .unwrap_or_default()
    };
    match method {
        "get_subaccounts" => {
            let node = g.lock();
            let engine = node.sequencer.engine();
            let ids: Vec<u32> = (0..engine.account_count() as u32)
                .filter(|a| {
                    engine
                        .account_owner(AccountId(*a))
                        .is_some_and(|o| o.0 == wallet)
                })
                .collect();
            Ok(json!({"wallet": hex(&wallet), "subaccount_ids": ids}))
        }
        "get_all_portfolios" => {
            let ids: Vec<u32> = {
                let node = g.lock();
                let engine = node.sequencer.engine();
                (0..engine.account_count() as u32)
                    .filter(|a| {
                        engine
                            .account_owner(AccountId(*a))
                            .is_some_and(|o| o.0 == wallet)
                    })
                    .collect()
            };
            Ok(Value::Array(
                ids.into_iter()
                    .map(|a| portfolio(g, AccountId(a)))
                    .collect(),
            ))
        }
        "get_subaccount" => {
            let account = g.owned_by(account_param(params, "subaccount_id")?, wallet)?;
            Ok(portfolio(g, account))
        }
        "order" => {
            let account = g.owned_by(account_param(params, "subaccount_id")?, wallet)?;
            let placed = g.place_signed_order(params, Some(wallet))?;
            let order = placed_json(g, &placed, account, params)?;
            Ok(json!({"order": order, "trades": [], "receipt": placed.receipt}))
        }
        // Derive's cancel-and-replace (ccxt's `editOrder`): one input, nothing sequenced
        // between the cancel and the new order. A cancel refused places nothing (the error);
        // a new order refused leaves the old one cancelled (`create_order_error`).
        "replace" => {
            let account = g.owned_by(account_param(params, "subaccount_id")?, wallet)?;
            let cancel = order_id_param(params, "order_id_to_cancel")?;
            let (placed, refused) =
                g.replace_signed_order(params, Some(wallet), OrderRef::Id(OrderId(cancel)))?;
            let cancelled = g.lock().history.orders.get(&cancel).cloned();
            let cancelled = cancelled
                .map(|info| order_json(&info, cancel, &name_of(info.instrument), account.0));
            let (order, error) = match refused {
                None => (placed_json(g, &placed, account, params)?, Value::Null),
                Some(code) => (
                    Value::Null,
                    json!({"code": derive_code(&CallError::Engine(code, None)), "message": code.to_string()}),
                ),
            };
            Ok(json!({
                "cancelled_order": cancelled,
                "order": order,
                "trades": [],
                "create_order_error": error,
                "receipt": placed.receipt,
            }))
        }
        "cancel" | "cancel_by_label" => {
            let account = g.owned_by(account_param(params, "subaccount_id")?, wallet)?;
            let order = if method == "cancel" {
                OrderRef::Id(OrderId(order_id_param(params, "order_id")?))
            } else {
                OrderRef::Client(label_id(
                    params
                        .get("label")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                ))
            };
            let events = g.sequence(Command::Cancel { account, order })?;
            let id = events.iter().find_map(|e| match e {
                optio_types::Event::OrderDone { order, .. } => Some(order.0),
                _ => None,
            });
            let node = g.lock();
            let info = id
                .and_then(|i| node.history.orders.get(&i).cloned())
                .ok_or(CallError::Engine(RejectCode::UnknownOrder, None))?;
            drop(node);
            Ok(order_json(
                &info,
                id.unwrap_or(0),
                &name_of(info.instrument),
                account.0,
            ))
        }
        "cancel_all" | "cancel_by_instrument" => {
            let account = g.owned_by(account_param(params, "subaccount_id")?, wallet)?;
            let instrument = match params.get("instrument_name").and_then(Value::as_str) {
                Some(n) if method == "cancel_by_instrument" => {
                    Some(crate::views::instrument_id(&g.lock().sequencer, n)?)
                }
                _ => None,
            };
            let events = g.sequence(Command::CancelAll {
                account,
                instrument,
            })?;
            Ok(
                json!({"cancelled_orders": events.iter().filter(|e| matches!(e, optio_types::Event::OrderDone { .. })).count()}),
            )
        }
        "get_open_orders" => {
            let account = g.owned_by(account_param(params, "subaccount_id")?, wallet)?;
            let node = g.lock();
            let open = node.sequencer.engine().open_orders_of(account);
            let orders: Vec<Value> = open
                .iter()
                .filter_map(|o| node.history.orders.get(&o.id.0).map(|info| (o, info)))
                .map(|(o, info)| {
                    order_json(
                        info,
                        o.id.0,
                        &node
                            .sequencer
                            .engine()
                            .instruments()
                            .nth(o.instrument.0 as usize)
                            .map(|i| i.spec.name.to_string())
                            .unwrap_or_default(),
                        account.0,
                    )
                })
                .collect();
            Ok(json!({"subaccount_id": account.0, "orders": orders}))
        }
        "get_order" => {
            let account = g.owned_by(account_param(params, "subaccount_id")?, wallet)?;
            let id: u64 = params
                .get("order_id")
                .and_then(|v| {
                    v.as_str()
                        .and_then(|s| s.parse().ok())
                        .or_else(|| v.as_u64())
                })
                .ok_or_else(|| GatewayError::InvalidParams("order_id".into()))?;
            let info = g
                .lock()
                .history
                .orders
                .get(&id)
                .cloned()
                .filter(|o| o.account == account)
                .ok_or(CallError::Engine(RejectCode::UnknownOrder, None))?;
            Ok(order_json(&info, id, &name_of(info.instrument), account.0))
        }
        "get_trade_history" => {
            let account = g.owned_by(account_param(params, "subaccount_id")?, wallet)?;
            let instrument = params
                .get("instrument_name")
                .and_then(Value::as_str)
                .map(|n| crate::views::instrument_id(&g.lock().sequencer, n))
                .transpose()?;
            let since = params
                .get("from_timestamp")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let page_size = params
                .get("page_size")
                .and_then(Value::as_u64)
                .unwrap_or(100)
                .clamp(1, 1_000) as usize;
            let page = params
                .get("page")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .max(1) as usize;
            let node = g.lock();
            let all: Vec<Value> = node
                .history
                .trades
                .iter()
                .filter(|t| t.account == account && instrument.is_none_or(|i| t.instrument == i) && t.time_ms >= since)
                .map(|t| {
                    json!({
                        "trade_id": t.trade_id.to_string(), "order_id": t.order.to_string(),
                        "instrument_name": node.sequencer.engine().instruments().nth(t.instrument.0 as usize).map(|i| i.spec.name.to_string()).unwrap_or_default(),
                        "direction": if t.side == Side::Buy { "buy" } else { "sell" }, "liquidity_role": if t.maker { "maker" } else { "taker" },
                        "trade_price": money(t.price.0), "trade_amount": qty(t.amount.0), "timestamp": t.time_ms, "trade_fee": money(t.fee),
                    })
                })
                .collect();
            let count = all.len();
            let trades: Vec<Value> = all
                .into_iter()
                .skip((page - 1) * page_size)
                .take(page_size)
                .collect();
            Ok(
                json!({"subaccount_id": account.0, "trades": trades, "pagination": {"num_pages": count.div_ceil(page_size), "count": count}}),
            )
        }
        "get_positions" => {
            let account = g.owned_by(account_param(params, "subaccount_id")?, wallet)?;
            let node = g.lock();
            let margin = node
                .sequencer
                .engine()
                .margin_view(account)
                .ok_or(CallError::Engine(RejectCode::UnknownAccount, None))?;
            let list: Vec<Value> = positions(&node.sequencer, account, &margin)
                .into_iter()
                .map(|(p, _)| p)
                .collect();
            Ok(json!({"subaccount_id": account.0, "positions": list}))
        }
        _ => Err(GatewayError::MethodNotFound.into()),
    }
}
