//! WebSocket market data and user streams at `GET /ws`.
//!
//! JSON-RPC over the socket: `public/subscribe {channels}` for `book.<instrument>`,
//! `trades.<instrument>`, `ticker.<instrument>`, and `settlement` (how far L1 has come: the last
//! sequence number committed and finalized, pushed when either moves; an intent whose `seq` (in
//! its receipt and its `change_id`s) is at or below a mark has reached that status);
//! `private/subscribe {channels, wallet, timestamp, signature}` for `user.orders.<subaccount>`
//! (the same EIP-191 timestamp signature as the HTTP headers). Notifications are
//! `{"method": "subscription", "params": {"channel", "data"}}`.
//! Book messages: a `snapshot` of the top 10 levels on subscribe, then `change` messages with
//! only the levels that changed (`[price, amount]`, amount `"0"` for a level that went away),
//! each with `change_id` (the sequence number of the input that changed it) and
//! `prev_change_id`, so a client applying them sees a gap the moment one happens.
//! A consumer that falls behind the node's event stream (a bounded broadcast), or leaves a
//! message unread for two seconds, is disconnected: it can never slow the node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use optio_types::{AccountId, Event, InstrumentId, Side};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::{Gateway, views};

/// One sequenced input's events, as published to subscribers.
#[derive(Debug, Clone)]
pub struct Published {
    /// Sequence number of the input.
    pub seq: u64,
    /// Engine time.
    pub time_ms: u64,
    /// Its events.
    pub events: Arc<Vec<Event>>,
}

/// Capacity of the event stream a subscriber may lag behind before it is dropped.
pub const STREAM_CAPACITY: usize = 8_192;

fn instrument_of(e: &Event) -> Option<InstrumentId> {
    match e {
        Event::Fill { instrument, .. }
        | Event::OrderAccepted { instrument, .. }
        | Event::InstrumentExpired { instrument }
        | Event::InstrumentSettled { instrument, .. } => Some(*instrument),
        _ => None,
    }
}

pub(crate) async fn upgrade(State(g): State<Arc<Gateway>>, ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(16 * 1024)
        .on_upgrade(move |socket| session(g, socket))
}

/// How long one message may wait for a consumer that is not reading before it is dropped.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

async fn send(socket: &mut WebSocket, v: Value) -> bool {
    matches!(
        tokio::time::timeout(
            SEND_TIMEOUT,
            socket.send(Message::Text(v.to_string().into()))
        )
        .await,
        Ok(Ok(()))
    )
}

/// Counts a live session until dropped (the `optio_ws_sessions` gauge).
struct Live(Arc<Gateway>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0
            .ws_sessions
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn session(g: Arc<Gateway>, mut socket: WebSocket) {
    g.ws_sessions
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _live = Live(g.clone());
    let mut stream = g.events.subscribe();
    let mut books: BTreeMap<InstrumentId, BookState> = BTreeMap::new();
    let mut trades: BTreeMap<InstrumentId, String> = BTreeMap::new();
    let mut tickers: BTreeMap<InstrumentId, String> = BTreeMap::new();
    let mut users: BTreeSet<AccountId> = BTreeSet::new();
    let mut l1 = g.l1.subscribe();
    let mut settlement = false;
    // Orders of subscribed users: order id -> account (fills name only the accounts).
    loop {
        tokio::select! {
            incoming = socket.recv() => {
                let Some(Ok(message)) = incoming else { return };
                let Message::Text(text) = message else { continue };
                let subs = Subscriptions { books: &mut books, trades: &mut trades, tickers: &mut tickers, users: &mut users, settlement: &mut settlement };
                let reply = subscribe(&g, &text, subs);
                let snapshots = reply.1;
                if !send(&mut socket, reply.0).await {
                    return;
                }
                for s in snapshots {
                    if !send(&mut socket, s).await {
                        return;
                    }
                }
            }
            changed = l1.changed(), if settlement => {
                if changed.is_err() {
                    return;
                }
                let progress = *l1.borrow_and_update();
                if !send(&mut socket, settlement_note(progress)).await {
                    return;
                }
            }
            published = stream.recv() => {
                let p = match published {
                    Ok(p) => p,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = send(&mut socket, json!({"jsonrpc": "2.0", "method": "disconnect", "params": {"reason": "consumer too slow"}})).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                for message in notifications(&g, &p, &mut books, &trades, &tickers, &users) {
                    if !send(&mut socket, message).await {
                        return;
                    }
                }
            }
        }
    }
}

fn settlement_note(p: crate::L1Progress) -> Value {
    note(
        "settlement",
        json!({"committed_seq": p.committed_seq, "proven_seq": p.proven_seq, "finalized_seq": p.finalized_seq}),
    )
}

/// What a session is subscribed to.
struct Subscriptions<'a> {
    books: &'a mut BTreeMap<InstrumentId, BookState>,
    trades: &'a mut BTreeMap<InstrumentId, String>,
    tickers: &'a mut BTreeMap<InstrumentId, String>,
    users: &'a mut BTreeSet<AccountId>,
    settlement: &'a mut bool,
}

fn note(channel: &str, data: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": "subscription", "params": {"channel": channel, "data": data}})
}

/// What a subscriber last saw of a book.
pub(crate) struct BookState {
    name: String,
    change_id: u64,
    bids: Vec<(String, String)>,
    asks: Vec<(String, String)>,
}

fn levels(book: &Value, side: &str) -> Vec<(String, String)> {
    book[side]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|x| {
                    (
                        x[0].as_str().unwrap_or_default().to_owned(),
                        x[1].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn current(g: &Gateway, name: &str) -> Value {
    let node = g.lock();
    views::order_book(
        &node.sequencer,
        &json!({"instrument_name": name, "depth": 10}),
    )
    .unwrap_or(Value::Null)
}

/// Levels that differ between two views of a side: new or changed amounts, "0" for gone ones.
fn diff(old: &[(String, String)], new: &[(String, String)]) -> Vec<Value> {
    let mut out: Vec<Value> = new
        .iter()
        .filter(|l| !old.contains(l))
        .map(|(p, a)| json!([p, a]))
        .collect();
    out.extend(
        old.iter()
            .filter(|(p, _)| !new.iter().any(|(q, _)| q == p))
            .map(|(p, _)| json!([p, "0"])),
    );
    out
}

fn subscribe(g: &Gateway, text: &str, subs: Subscriptions<'_>) -> (Value, Vec<Value>) {
    let Subscriptions {
        books,
        trades,
        tickers,
        users,
        settlement,
    } = subs;
    let request: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => {
            return (
                json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32_700, "message": "parse error"}}),
                vec![],
            );
        }
    };
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let method = request
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let params = request.get("params").cloned().unwrap_or(json!({}));
    let channels: Vec<String> = params
        .get("channels")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .take(64)
                .collect()
        })
        .unwrap_or_default();
    let error = |code: i64, message: &str| {
        (
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}),
            vec![],
        )
    };
    if channels.is_empty() || !matches!(method, "public/subscribe" | "private/subscribe") {
        return error(
            -32_602,
            "method must be public/subscribe or private/subscribe with channels",
        );
    }
    let mut snapshots = Vec::new();
    for channel in &channels {
        if channel == "settlement" {
            *settlement = true;
            snapshots.push(settlement_note(*g.l1.borrow()));
            continue;
        }
        if let Some(sub) = channel.strip_prefix("user.orders.") {
            if method != "private/subscribe" {
                return error(6_005, "user channels need private/subscribe");
            }
            let mut headers = axum::http::HeaderMap::new();
            for (h, k) in [
                ("x-optiowallet", "wallet"),
                ("x-optiotimestamp", "timestamp"),
                ("x-optiosignature", "signature"),
            ] {
                if let Some(v) = params
                    .get(k)
                    .and_then(Value::as_str)
                    .and_then(|v| v.parse().ok())
                {
                    headers.insert(h, v);
                }
            }
            let Ok(account) = sub.parse::<u32>() else {
                return error(-32_602, "bad subaccount");
            };
            match g
                .wallet(&headers, "x-optio")
                .and_then(|w| g.owned_by(AccountId(account), w))
            {
                Ok(a) => {
                    users.insert(a);
                }
                Err(_) => return error(6_005, "authentication failed"),
            }
            continue;
        }
        let Some((kind, name)) = channel.split_once('.') else {
            return error(-32_602, "unknown channel");
        };
        let instrument = {
            let node = g.lock();
            match views::instrument_id(&node.sequencer, name) {
                Ok(i) => i,
                Err(_) => return error(3_001, "unknown instrument"),
            }
        };
        match kind {
            "book" => {
                let seq = g.lock().sequencer.next_seq() - 1;
                let mut book = current(g, name);
                books.insert(
                    instrument,
                    BookState {
                        name: name.to_owned(),
                        change_id: seq,
                        bids: levels(&book, "bids"),
                        asks: levels(&book, "asks"),
                    },
                );
                book["type"] = json!("snapshot");
                book["change_id"] = json!(seq);
                snapshots.push(note(channel, book));
            }
            "trades" => {
                trades.insert(instrument, name.to_owned());
            }
            "ticker" => {
                tickers.insert(instrument, name.to_owned());
            }
            _ => return error(-32_602, "unknown channel"),
        }
    }
    (
        json!({"jsonrpc": "2.0", "id": id, "result": channels}),
        snapshots,
    )
}

fn notifications(
    g: &Gateway,
    p: &Published,
    books: &mut BTreeMap<InstrumentId, BookState>,
    trades: &BTreeMap<InstrumentId, String>,
    tickers: &BTreeMap<InstrumentId, String>,
    users: &BTreeSet<AccountId>,
) -> Vec<Value> {
    let mut out = Vec::new();
    let mut changed: BTreeSet<InstrumentId> = BTreeSet::new();
    for e in p.events.iter() {
        if let Some(i) = instrument_of(e) {
            changed.insert(i);
        }
        if let Event::Fill {
            instrument,
            taker_side,
            price,
            qty,
            maker_account,
            taker_account,
            maker_order,
            taker_order,
            ..
        } = e
        {
            if let Some(name) = trades.get(instrument) {
                out.push(note(&format!("trades.{name}"), json!({"price": price.to_string(), "amount": qty.to_string(), "direction": if *taker_side == Side::Buy { "buy" } else { "sell" }, "change_id": p.seq, "timestamp": p.time_ms})));
            }
            for (account, order) in [(maker_account, maker_order), (taker_account, taker_order)] {
                if users.contains(account) {
                    out.push(note(&format!("user.orders.{}", account.0), json!({"order_id": order.0.to_string(), "fill": {"price": price.to_string(), "amount": qty.to_string()}, "change_id": p.seq})));
                }
            }
        }
        match e {
            Event::OrderAccepted { order, account, .. } if users.contains(account) => {
                out.push(note(&format!("user.orders.{}", account.0), json!({"order_id": order.0.to_string(), "order_status": "accepted", "change_id": p.seq})));
            }
            Event::OrderDone {
                order,
                account,
                reason,
                unfilled,
            } if users.contains(account) => {
                out.push(note(&format!("user.orders.{}", account.0), json!({"order_id": order.0.to_string(), "order_status": format!("{reason:?}").to_lowercase(), "cancel_reason": crate::history::cancel_reason(*reason), "unfilled": unfilled.to_string(), "change_id": p.seq})));
            }
            _ => {}
        }
    }
    // Rested or removed orders change books without naming the instrument: refresh every
    // subscribed book an input touched at all (cheap: one snapshot per subscribed book).
    let touches_books = p.events.iter().any(|e| {
        matches!(
            e,
            Event::OrderRested { .. }
                | Event::OrderDone { .. }
                | Event::OrderAmended { .. }
                | Event::Fill { .. }
        )
    });
    for (instrument, state) in books.iter_mut() {
        if changed.contains(instrument) || touches_books {
            let book = current(g, &state.name);
            let (bids, asks) = (levels(&book, "bids"), levels(&book, "asks"));
            let (bid_changes, ask_changes) = (diff(&state.bids, &bids), diff(&state.asks, &asks));
            if bid_changes.is_empty() && ask_changes.is_empty() {
                continue;
            }
            out.push(note(
                &format!("book.{}", state.name),
                json!({"type": "change", "instrument_name": state.name, "bids": bid_changes, "asks": ask_changes, "change_id": p.seq, "prev_change_id": state.change_id, "timestamp": p.time_ms}),
            ));
            (state.bids, state.asks, state.change_id) = (bids, asks, p.seq);
        }
    }
    let oracle = p
        .events
        .iter()
        .any(|e| matches!(e, Event::OracleAccepted { .. }));
    for (instrument, name) in tickers {
        if changed.contains(instrument) || oracle || touches_books {
            let node = g.lock();
            if let Ok(t) = views::ticker(
                &node.sequencer,
                &json!({"instrument_name": name}),
                g.config.clock.now_ms(),
            ) {
                out.push(note(&format!("ticker.{name}"), t));
            }
        }
    }
    out
}
