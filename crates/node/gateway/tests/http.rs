//! End to end over HTTP on 127.0.0.1: signed orders in, receipts and fills out; market data with
//! marks, implied volatility and Greeks; every kind of bad input refused with its code and
//! without changing state.

use std::sync::Arc;

use optio_gateway::client::Change;
use optio_gateway::{Config, Gateway, L1Progress};
use optio_intents::{Action, DERIVE_TRADE_MODULE, Domain, TradeData, address_of, keccak};
use optio_pricing::risk::default_scenarios;
use optio_pricing::svi::{Slice, Surface, Svi};
use optio_sequencer::Sequencer;
use optio_types::{
    Amount, Command, EngineLimits, InstrumentId, InstrumentSpec, MONEY_SCALE, MarginMode, Price,
};
use secp256k1::SecretKey;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONTRACT: [u8; 20] = [0x0a; 20];
const CHAIN: u64 = 31_337;

struct Trader {
    key: SecretKey,
    address: [u8; 20],
    subaccount: u64,
}

fn hex(b: &[u8]) -> String {
    format!(
        "0x{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

fn sign(key: &SecretKey, digest: [u8; 32]) -> Vec<u8> {
    optio_intents::sign(key, &digest).to_vec()
}

struct Harness {
    addr: std::net::SocketAddr,
    gateway: Arc<Gateway>,
    _dir: tempfile::TempDir,
    instrument: u32,
    nonce: std::sync::atomic::AtomicU64,
}

impl Harness {
    async fn start() -> (Harness, Trader, Trader) {
        Self::start_with(|c| c).await
    }

    async fn start_with(tune: impl FnOnce(Config) -> Config) -> (Harness, Trader, Trader) {
        let dir = tempfile::tempdir().expect("temp dir");
        let sequencer =
            Sequencer::open(dir.path(), [9; 32], EngineLimits::default()).expect("sequencer");
        let oracle = optio_oracle::OracleSigner::from_bytes([0x0c; 32]).expect("oracle key");
        let config = Config {
            chain_id: CHAIN,
            verifying_contract: CONTRACT,
            ip_requests_per_second: 200,
            owner_orders_per_second: 100,
            oracle_key: Some(oracle.public_key()),
            ..Config::default()
        };
        let gateway = Arc::new(Gateway::new(sequencer, tune(config)));
        let specs: Vec<InstrumentSpec> = ["BTC-26MAR27-100000-C", "BTC-PERPETUAL"]
            .iter()
            .map(|n| {
                InstrumentSpec::with_defaults(
                    n.parse().expect("valid"),
                    Price(300_000 * MONEY_SCALE),
                )
            })
            .collect();
        let mut admin: Vec<Command> = specs
            .iter()
            .map(|spec| Command::ListInstrument { spec: spec.clone() })
            .collect();
        admin.extend((0..2).map(|i| Command::ActivateInstrument {
            instrument: InstrumentId(i),
        }));
        assert!(
            gateway
                .submit_admin(admin)
                .expect("admin")
                .iter()
                .all(Result::is_ok)
        );
        publish_marks(&gateway, &oracle, 90_000.0);
        let trader = |seed: u8| {
            let key = SecretKey::from_secret_bytes([seed; 32]).expect("key");
            let address = address_of(&secp256k1::PublicKey::from_secret_key(&key));
            let subaccount = gateway
                .fund(address, Amount(1_000_000 * MONEY_SCALE))
                .expect("funded");
            Trader {
                key,
                address,
                subaccount,
            }
        };
        let (alice, bob) = (trader(1), trader(2));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        let api = gateway.clone();
        tokio::spawn(async move { optio_gateway::serve(listener, api).await.expect("serve") });
        (
            Harness {
                addr,
                gateway,
                _dir: dir,
                instrument: 0,
                nonce: std::sync::atomic::AtomicU64::new(optio_gateway::dated_nonce(
                    optio_gateway::now_ms(),
                    0,
                )),
            },
            alice,
            bob,
        )
    }

    async fn raw(&self, request: String) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("read");
        let text = String::from_utf8_lossy(&response).to_string();
        let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        (status, body)
    }

    async fn post(&self, body: &str, headers: &[(&str, String)]) -> (u16, Value) {
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let request = format!(
            "POST /api/v2 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
            body.len()
        );
        let (status, body) = self.raw(request).await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    async fn call(&self, method: &str, params: Value) -> Value {
        self.post(
            &json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string(),
            &[],
        )
        .await
        .1
    }

    fn order_params(
        &self,
        t: &Trader,
        direction: &str,
        price: &str,
        amount: &str,
        chain: u64,
    ) -> Value {
        self.order_params_as(
            t,
            t.address,
            t.subaccount,
            optio_gateway::now_ms() / 1_000 + 3_600,
            direction,
            price,
            amount,
            chain,
        )
    }

    /// Signed by `t` for `subaccount` owned by `owner`, expiring at `expiry` (seconds).
    #[allow(clippy::too_many_arguments)]
    fn order_params_as(
        &self,
        t: &Trader,
        owner: [u8; 20],
        subaccount: u64,
        expiry: u64,
        direction: &str,
        price: &str,
        amount: &str,
        chain: u64,
    ) -> Value {
        let o = (
            owner,
            subaccount,
            expiry,
            Domain::optio(chain, CONTRACT).separator(),
        );
        self.order_params_with_fee(t, o, direction, price, amount, "100")
    }

    /// The same with the signed `max_fee` given; `o` is the owner, subaccount, signature expiry
    /// and the separator of the domain it is signed under.
    fn order_params_with_fee(
        &self,
        t: &Trader,
        (owner, subaccount, expiry, separator): ([u8; 20], u64, u64, [u8; 32]),
        direction: &str,
        price: &str,
        amount: &str,
        max_fee: &str,
    ) -> Value {
        let nonce = self
            .nonce
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let to18 = |s: &str| -> i128 {
            let (int, frac) = s.split_once('.').unwrap_or((s, ""));
            let frac = format!("{frac:0<18}");
            int.parse::<i128>().expect("int") * 10i128.pow(18) + frac.parse::<i128>().expect("frac")
        };
        let data = TradeData {
            asset: CONTRACT,
            sub_id: u128::from(self.instrument),
            limit_price: to18(price),
            amount: to18(amount),
            max_fee: to18(max_fee) as u128,
            recipient_id: u128::from(subaccount),
            is_bid: direction == "buy",
        };
        let action = Action {
            subaccount_id: subaccount,
            nonce,
            module: DERIVE_TRADE_MODULE,
            data: data.encode(),
            expiry,
            owner,
            signer: t.address,
        };
        let sig = sign(&t.key, action.digest(&separator));
        json!({
            "instrument_name": "BTC-26MAR27-100000-C", "direction": direction, "order_type": "limit", "time_in_force": "gtc",
            "limit_price": price, "amount": amount, "max_fee": max_fee, "subaccount_id": subaccount, "nonce": nonce.to_string(),
            "signer": hex(&t.address), "signature": hex(&sig), "signature_expiry_sec": expiry, "label": format!("o{nonce}"),
        })
    }

    /// `t`'s open orders (`private/get_open_orders`, header-authenticated): the whole reply.
    async fn open_orders(&self, t: &Trader) -> Value {
        self.post(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "private/get_open_orders",
                    "params": {"subaccount_id": t.subaccount}})
            .to_string(),
            &self.auth(t),
        )
        .await
        .1
    }

    fn auth(&self, t: &Trader) -> Vec<(&'static str, String)> {
        let ts = optio_gateway::now_ms().to_string();
        let mut message = format!("\x19Ethereum Signed Message:\n{}", ts.len()).into_bytes();
        message.extend_from_slice(ts.as_bytes());
        let sig = sign(&t.key, keccak(&message));
        vec![
            ("X-OptioWallet", hex(&t.address)),
            ("X-OptioTimestamp", ts),
            ("X-OptioSignature", hex(&sig)),
        ]
    }
}

/// Publishes the oracle's marks for every listed instrument with the index at `spot`.
fn publish_marks(gateway: &Gateway, oracle: &optio_oracle::OracleSigner, spot: f64) {
    let specs: Vec<InstrumentSpec> = gateway
        .canonical_state()
        .instruments
        .iter()
        .map(|i| i.spec.clone())
        .collect();
    let list = optio_oracle::numbered(&specs);
    let update = optio_oracle::build_update(
        "BTC",
        &surface(spot),
        &default_scenarios(),
        &list,
        optio_gateway::now_ms(),
    )
    .expect("update");
    gateway
        .submit_oracle(&oracle.sign(update, &gateway.optio_domain()))
        .expect("a signed oracle update is sequenced");
}

/// The harness's volatility surface around `spot`.
fn surface(spot: f64) -> Surface {
    let svi = Svi {
        a: 0.02,
        b: 0.1,
        rho: -0.3,
        m: 0.0,
        sigma: 0.3,
    };
    Surface::new(
        spot,
        0.0,
        vec![
            Slice { t: 0.1, svi },
            Slice {
                t: 1.0,
                svi: Svi { a: 0.2, ..svi },
            },
        ],
    )
    .expect("surface")
}

fn code(v: &Value) -> i64 {
    v["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("expected an error, got {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_orders_trade_and_market_data_shows_marks_iv_and_greeks() {
    let (h, alice, bob) = Harness::start().await;
    let instruments = h
        .call(
            "public/get_instruments",
            json!({"currency": "BTC", "kind": "option"}),
        )
        .await;
    assert_eq!(
        instruments["result"][0]["instrument_name"],
        "BTC-26MAR27-100000-C"
    );
    let ask = h
        .call(
            "private/order",
            h.order_params(&alice, "sell", "9000", "0.5", CHAIN),
        )
        .await;
    assert_eq!(ask["result"]["order"]["order_status"], "open", "{ask}");
    // The receipt verifies against the sequencer key the health endpoint publishes, and only
    // for its own intent.
    let health: Value = serde_json::from_str(
        &h.raw("GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into())
            .await
            .1,
    )
    .expect("health is JSON");
    let key_hex = health["sequencer_public_key"]
        .as_str()
        .expect("published")
        .trim_start_matches("0x")
        .to_owned();
    let key_bytes: Vec<u8> = (0..key_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&key_hex[i..i + 2], 16).expect("hex"))
        .collect();
    let key = secp256k1::PublicKey::from_slice(&key_bytes).expect("a public key");
    let mut receipt =
        optio_gateway::client::parse_receipt(&ask["result"]["receipt"]).expect("a receipt");
    assert!(receipt.verify(&key), "{ask}");
    receipt.intent_hash[0] ^= 1;
    assert!(!receipt.verify(&key));
    let buy = h
        .call(
            "private/order",
            h.order_params(&bob, "buy", "9000", "0.2", CHAIN),
        )
        .await;
    assert_eq!(buy["result"]["order"]["order_status"], "filled", "{buy}");
    assert_eq!(buy["result"]["trades"][0]["trade_amount"], "0.2");
    let status = h
        .call(
            "public/get_intent_status",
            json!({"intent_hash": buy["result"]["receipt"]["intent_hash"]}),
        )
        .await;
    assert_eq!(status["result"]["status"], "executed", "{status}");
    assert_eq!(status["result"]["seq"], buy["result"]["receipt"]["seq"]);
    assert!(status["result"]["committed_at"].is_null());
    let book = h
        .call(
            "public/get_order_book",
            json!({"instrument_name": "BTC-26MAR27-100000-C"}),
        )
        .await;
    assert_eq!(book["result"]["asks"][0], json!(["9000", "0.3"]));
    let ticker = h
        .call(
            "public/ticker",
            json!({"instrument_name": "BTC-26MAR27-100000-C"}),
        )
        .await;
    let iv = ticker["result"]["mark_iv"]
        .as_f64()
        .expect("an implied volatility from the mark");
    assert!(iv > 0.05 && iv < 3.0, "{ticker}");
    assert!(
        ticker["result"]["greeks"]["delta"]
            .as_f64()
            .is_some_and(|d| d > 0.0 && d < 1.0)
    );
    let order_id: u64 = ask["result"]["order"]["order_id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("number");
    let edit = json!({"jsonrpc": "2.0", "id": 9, "method": "private/edit", "params": {"subaccount_id": alice.subaccount, "order_id": order_id, "price": "9000", "amount": "0.25"}}).to_string();
    let edited = h.post(&edit, &h.auth(&alice)).await.1;
    assert_eq!(edited["result"]["kept_priority"], true, "{edited}");
    assert_eq!(
        code(&h.post(&edit, &h.auth(&alice)).await.1),
        4_017,
        "the same edit again changes nothing"
    );
    assert_eq!(
        code(&h.post(&edit, &h.auth(&bob)).await.1),
        6_002,
        "only the owner edits"
    );
    let open = h.open_orders(&alice).await;
    assert_eq!(open["result"][0]["filled_amount"], "0.2", "{open}");
    let positions = h.post(&json!({"jsonrpc": "2.0", "id": 3, "method": "private/get_positions", "params": {"subaccount_id": bob.subaccount}}).to_string(), &h.auth(&bob)).await.1;
    assert_eq!(positions["result"][0]["size"], "0.2");
    // Alice wrote 0.2 calls and offers 0.25 more: her requirement splits into the position's
    // and the order's, and her position carries its share.
    let n = |v: &Value| -> f64 { v.as_str().expect("a decimal").parse().expect("a number") };
    let sub = h.post(&json!({"jsonrpc": "2.0", "id": 4, "method": "private/get_subaccount", "params": {"subaccount_id": alice.subaccount}}).to_string(), &h.auth(&alice)).await.1;
    let r = &sub["result"];
    let (all, held, orders) = (
        n(&r["initial_margin"]),
        n(&r["positions_initial_margin"]),
        n(&r["open_orders_margin"]),
    );
    assert!(
        held > 0.0 && orders > 0.0 && (held + orders - all).abs() < 1e-6,
        "{sub}"
    );
    assert!(
        n(&r["maintenance_margin"]) > 0.0 && r["under_liquidation"] == false,
        "{sub}"
    );
    let written = h.post(&json!({"jsonrpc": "2.0", "id": 5, "method": "private/get_positions", "params": {"subaccount_id": alice.subaccount}}).to_string(), &h.auth(&alice)).await.1;
    assert_eq!(written["result"][0]["size"], "-0.2", "{written}");
    assert!(
        (n(&written["result"][0]["initial_margin"]) - held).abs() < 1e-6,
        "{written}"
    );
    assert!(
        (n(&written["result"][0]["open_orders_margin"]) - orders).abs() < 1e-6,
        "{written}"
    );
    let metrics = h
        .raw("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into())
        .await
        .1;
    assert!(
        metrics.contains("optio_oracle_index{underlying=\"BTC\"}")
            && metrics.contains("optio_oracle_held{underlying=\"BTC\"} 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_code_and_changes_nothing() {
    let (h, alice, bob) = Harness::start().await;
    let before = h.gateway.state_hash();
    let order = |t: &Trader, chain| h.order_params(t, "buy", "9000", "0.1", chain);
    let mut cases: Vec<(&str, String, i64)> = vec![
        ("malformed JSON", "{\"jsonrpc\": \"2.0\", ".into(), -32_700),
        ("not an object", "7".into(), -32_600),
        ("empty batch", "[]".into(), -32_600),
        ("oversized batch", format!("[{}]", vec![json!({"jsonrpc": "2.0", "id": 1, "method": "public/get_time"}).to_string(); 33].join(",")), -32_600),
        ("wrong version", json!({"jsonrpc": "1.0", "id": 1, "method": "public/get_time"}).to_string(), -32_600),
        ("unknown method", json!({"jsonrpc": "2.0", "id": 1, "method": "private/steal"}).to_string(), -32_601),
        ("missing params", json!({"jsonrpc": "2.0", "id": 1, "method": "public/ticker", "params": {}}).to_string(), -32_602),
        ("unknown instrument", json!({"jsonrpc": "2.0", "id": 1, "method": "public/ticker", "params": {"instrument_name": "BTC-26MAR27-1-C"}}).to_string(), 3_001),
        ("malformed instrument", json!({"jsonrpc": "2.0", "id": 1, "method": "public/ticker", "params": {"instrument_name": "BTC-2MARCH27"}}).to_string(), -32_602),
        ("deeply nested", format!("{}{}", "[".repeat(5_000), "]".repeat(5_000)), -32_700),
    ];
    let mut with = |name: &'static str, f: &dyn Fn(&mut Value), want: i64| {
        let mut p = order(&alice, CHAIN);
        f(&mut p);
        cases.push((
            name,
            json!({"jsonrpc": "2.0", "id": 1, "method": "private/order", "params": p}).to_string(),
            want,
        ));
    };
    with("NaN amount", &|p| p["amount"] = json!("NaN"), -32_602);
    with("negative amount", &|p| p["amount"] = json!("-1"), -32_602);
    with(
        "overflowing price",
        &|p| p["limit_price"] = json!("1e400"),
        -32_602,
    );
    with(
        "huge price",
        &|p| p["limit_price"] = json!("99999999999999999999"),
        -32_602,
    );
    with(
        "wrong type",
        &|p| p["subaccount_id"] = json!("one"),
        -32_602,
    );
    with("tampered amount", &|p| p["amount"] = json!("0.2"), 6_001);
    with(
        "bad signature hex",
        &|p| p["signature"] = json!("0xzz"),
        6_001,
    );
    with(
        "high-s signature",
        &|p| {
            let sig = optio_intents::parse_hex(p["signature"].as_str().expect("sig")).expect("hex");
            let n: [u8; 32] = [
                0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                0xFF, 0xFE, 0xBA, 0xAE, 0xDC, 0xE6, 0xAF, 0x48, 0xA0, 0x3B, 0xBF, 0xD2, 0x5E, 0x8C,
                0xD0, 0x36, 0x41, 0x41,
            ];
            let mut high = sig.clone();
            let mut borrow = 0i16;
            for i in (0..32).rev() {
                let d = i16::from(n[i]) - i16::from(sig[32 + i]) - borrow;
                high[32 + i] = d.rem_euclid(256) as u8;
                borrow = i16::from(d < 0);
            }
            high[64] = 55 - high[64];
            p["signature"] = json!(hex(&high));
        },
        6_001,
    );
    with(
        "expired signature",
        &|p| p["signature_expiry_sec"] = json!(1_000),
        6_001,
    );
    cases.push(("foreign chain id", json!({"jsonrpc": "2.0", "id": 1, "method": "private/order", "params": order(&alice, CHAIN + 1)}).to_string(), 6_001));
    let mut stolen = order(&bob, CHAIN);
    stolen["subaccount_id"] = json!(alice.subaccount);
    cases.push((
        "someone else's subaccount",
        json!({"jsonrpc": "2.0", "id": 1, "method": "private/order", "params": stolen}).to_string(),
        6_001,
    ));
    // Validly signed, but by a key that does not own the subaccount.
    let impostor = h.order_params_as(
        &bob,
        alice.address,
        alice.subaccount,
        optio_gateway::now_ms() / 1_000 + 3_600,
        "buy",
        "9000",
        "0.1",
        CHAIN,
    );
    cases.push((
        "signer is not the owner",
        json!({"jsonrpc": "2.0", "id": 1, "method": "private/order", "params": impostor})
            .to_string(),
        6_002,
    ));
    // Validly signed, but expired, or valid for far too long.
    for expiry in [
        optio_gateway::now_ms() / 1_000 - 10,
        optio_gateway::now_ms() / 1_000 + 1_000 * 86_400,
    ] {
        let p = h.order_params_as(
            &alice,
            alice.address,
            alice.subaccount,
            expiry,
            "buy",
            "9000",
            "0.1",
            CHAIN,
        );
        cases.push((
            "signature expiry out of range",
            json!({"jsonrpc": "2.0", "id": 1, "method": "private/order", "params": p}).to_string(),
            6_004,
        ));
    }
    for (name, body, want) in &cases {
        let (status, reply) = h.post(body, &[]).await;
        assert_eq!(status, 200, "{name}");
        assert_eq!(code(&reply), *want, "{name}: {reply}");
        assert_eq!(h.gateway.state_hash(), before, "{name} changed state");
    }
    // A replayed nonce: the first use trades, the second is refused.
    let first = order(&alice, CHAIN);
    let ok = h.call("private/order", first.clone()).await;
    assert!(ok["result"].is_object(), "{ok}");
    let after = h.gateway.state_hash();
    assert_eq!(code(&h.call("private/order", first).await), 6_003);
    assert_eq!(h.gateway.state_hash(), after);
    // A nonce carries its date, its leading 13 digits in milliseconds (ccxt's form), within 10
    // minutes of the node's clock: one with no date, or dated 11 minutes either way, is refused
    // with 6010 and its window in the message, changing nothing; one dated 9 minutes back trades.
    let counted = h.nonce.load(std::sync::atomic::Ordering::Relaxed);
    let (now, minute) = (optio_gateway::now_ms(), 60_000);
    for (nonce, what) in [
        (7, "no date"),
        (
            optio_gateway::dated_nonce(now - 11 * minute, 1),
            "11 minutes old",
        ),
        (
            optio_gateway::dated_nonce(now + 11 * minute, 1),
            "11 minutes ahead",
        ),
    ] {
        h.nonce.store(nonce, std::sync::atomic::Ordering::Relaxed);
        let reply = h.call("private/order", order(&alice, CHAIN)).await;
        assert_eq!(code(&reply), 6_010, "{what}: {reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("within 600 s")),
            "{reply}"
        );
        assert_eq!(h.gateway.state_hash(), after, "{what}");
    }
    h.nonce.store(
        optio_gateway::dated_nonce(now - 9 * minute, 1),
        std::sync::atomic::Ordering::Relaxed,
    );
    let late = h.call("private/order", order(&alice, CHAIN)).await;
    assert!(late["result"].is_object(), "{late}");
    h.nonce.store(counted, std::sync::atomic::Ordering::Relaxed);
    // The signed fee cap must cover the most fee the order can pay: a buy's at its limit, a
    // sell's at the instrument's maximum price (a taker sell sweeps bids above its limit). The
    // refusal names the minimum; exactly the minimum is taken.
    let spec = InstrumentSpec::with_defaults(
        "BTC-26MAR27-100000-C".parse().expect("valid"),
        Price(300_000 * MONEY_SCALE),
    );
    let rate = i128::from(spec.taker_fee.0.max(spec.maker_fee.0));
    // Fees on a tenth of a contract, rounded up.
    let at = |price: i64| -(-(i128::from(price) * rate)).div_euclid(10_000_000);
    let expiry = optio_gateway::now_ms() / 1_000 + 3_600;
    let o = (
        alice.address,
        alice.subaccount,
        expiry,
        Domain::optio(CHAIN, CONTRACT).separator(),
    );
    let max = spec.max_price().expect("priced").0;
    for (direction, price, worst) in [
        ("buy", "1000", at(1_000 * MONEY_SCALE)),
        ("sell", "150000", at(max)),
    ] {
        assert!(worst > 0);
        let needed = Price(i64::try_from(worst).expect("small")).to_string();
        let short = Price(i64::try_from(worst).expect("small") - 1).to_string();
        let before = h.gateway.state_hash();
        let refused = h
            .call(
                "private/order",
                h.order_params_with_fee(&alice, o, direction, price, "0.1", &short),
            )
            .await;
        assert_eq!(code(&refused), 6_006, "{refused}");
        assert!(
            refused["error"]["message"]
                .as_str()
                .is_some_and(|m| m.ends_with(&format!("at least {needed}"))),
            "{refused}"
        );
        assert_eq!(h.gateway.state_hash(), before);
        let taken = h
            .call(
                "private/order",
                h.order_params_with_fee(&alice, o, direction, price, "0.1", &needed),
            )
            .await;
        assert!(taken["result"].is_object(), "{direction}: {taken}");
    }
    // What the cap bounds follows from the domain signed under, whichever API brings it: under
    // Derive's the fee per contract (so a tenth of a contract needs ten times the cap of a
    // total), under Optio's the order's fees in total (above).
    let compat = (
        alice.address,
        alice.subaccount,
        expiry,
        Domain::derive_compat(false).separator(),
    );
    let per_contract = at(max) * 10;
    for (max_fee, taken) in [(per_contract - 1, false), (per_contract, true)] {
        let fee = Price(i64::try_from(max_fee).expect("small")).to_string();
        let before = h.gateway.state_hash();
        let reply = h
            .call(
                "private/order",
                h.order_params_with_fee(&alice, compat, "sell", "150000", "0.1", &fee),
            )
            .await;
        assert_eq!(reply["result"].is_object(), taken, "{fee}: {reply}");
        if !taken {
            assert_eq!(code(&reply), 6_006, "{reply}");
            assert_eq!(h.gateway.state_hash(), before);
        }
    }
    // An order the engine refuses is sequenced (it has a receipt) and changes nothing else.
    let mut poor = h.order_params(&alice, "buy", "9000", "5000", CHAIN);
    poor["max_fee"] = json!("100000");
    let refused = h.call("private/order", poor).await;
    assert!(
        code(&refused) == 6_001 || code(&refused) == 4_014 || code(&refused) == 4_005,
        "{refused}"
    );
    // Oversized body: refused by the transport.
    let big = format!(
        "{{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": \"public/get_time\", \"pad\": \"{}\"}}",
        "x".repeat(70_000)
    );
    assert_eq!(h.post(&big, &[]).await.0, 413);
    // Reads need the owner's fresh signature.
    let read = json!({"jsonrpc": "2.0", "id": 2, "method": "private/get_open_orders", "params": {"subaccount_id": alice.subaccount}}).to_string();
    assert_eq!(code(&h.post(&read, &[]).await.1), 6_005);
    assert_eq!(code(&h.post(&read, &h.auth(&bob)).await.1), 6_002);
    let mut stale = h.auth(&alice);
    stale[1].1 = "1000".into();
    assert_eq!(code(&h.post(&read, &stale).await.1), 6_005);
}

mod websocket {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    use super::*;

    async fn next_json(
        ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
    ) -> Option<Value> {
        loop {
            let m = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
                .await
                .ok()??
                .ok()?;
            if let Message::Text(t) = m {
                return serde_json::from_str(&t).ok();
            }
            if let Message::Close(_) = m {
                return None;
            }
        }
    }

    /// The `settlement` channel pushes how far L1 has come, and an intent's status follows:
    /// executed, then committed, then finalized.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn settlement_progress_is_pushed_and_intents_move_to_committed_and_finalized() {
        let (h, alice, _) = Harness::start().await;
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", h.addr))
            .await
            .expect("ws connects");
        let sub = json!({"jsonrpc": "2.0", "id": 1, "method": "public/subscribe", "params": {"channels": ["settlement"]}});
        ws.send(Message::Text(sub.to_string().into()))
            .await
            .expect("send");
        assert_eq!(next_json(&mut ws).await.expect("reply")["id"], 1);
        let first = next_json(&mut ws).await.expect("current progress");
        assert_eq!(first["params"]["channel"], "settlement");
        assert_eq!(first["params"]["data"]["committed_seq"], 0);
        let placed = h
            .call(
                "private/order",
                h.order_params(&alice, "sell", "9000", "0.5", CHAIN),
            )
            .await;
        let receipt =
            optio_gateway::client::parse_receipt(&placed["result"]["receipt"]).expect("a receipt");
        let hash = format!(
            "0x{}",
            receipt
                .intent_hash
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let query = json!({"intent_hash": hash});
        let status = h.call("public/get_intent_status", query.clone()).await;
        assert_eq!(status["result"]["status"], "executed", "{status}");
        for (committed, proven, finalized, want) in [
            (receipt.seq, 0, 0, "committed"),
            (receipt.seq, receipt.seq, 0, "proven"),
            (receipt.seq, receipt.seq, receipt.seq, "finalized"),
        ] {
            h.gateway.record_l1(L1Progress {
                committed_seq: committed,
                proven_seq: proven,
                finalized_seq: finalized,
            });
            let pushed = next_json(&mut ws).await.expect("a push");
            assert_eq!(pushed["params"]["data"]["committed_seq"], committed);
            assert_eq!(pushed["params"]["data"]["proven_seq"], proven);
            assert_eq!(pushed["params"]["data"]["finalized_seq"], finalized);
            let now = h.call("public/get_intent_status", query.clone()).await["result"].clone();
            assert_eq!(now["status"], want, "{now}");
            assert!(now[format!("{want}_at")].is_u64(), "{now}");
        }
        // Nothing moved: nothing is pushed.
        h.gateway.record_l1(L1Progress {
            committed_seq: receipt.seq,
            proven_seq: receipt.seq,
            finalized_seq: receipt.seq,
        });
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(300), ws.next())
                .await
                .is_err(),
            "no push without progress"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn book_trades_and_user_orders_stream_with_change_ids() {
        let (h, alice, bob) = Harness::start().await;
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", h.addr))
            .await
            .expect("ws connects");
        let name = "BTC-26MAR27-100000-C";
        let sub = json!({"jsonrpc": "2.0", "id": 1, "method": "public/subscribe", "params": {"channels": [format!("book.{name}"), format!("trades.{name}")]}});
        ws.send(Message::Text(sub.to_string().into()))
            .await
            .expect("send");
        assert_eq!(next_json(&mut ws).await.expect("reply")["id"], 1);
        let snapshot = next_json(&mut ws).await.expect("snapshot");
        assert_eq!(snapshot["params"]["data"]["type"], "snapshot");
        let mut last = snapshot["params"]["data"]["change_id"]
            .as_u64()
            .expect("change id");
        let mut local_asks: Vec<(String, String)> = Vec::new();
        let auth = h.auth(&alice);
        let private = json!({"jsonrpc": "2.0", "id": 2, "method": "private/subscribe", "params": {"channels": [format!("user.orders.{}", alice.subaccount)], "wallet": auth[0].1, "timestamp": auth[1].1, "signature": auth[2].1}});
        ws.send(Message::Text(private.to_string().into()))
            .await
            .expect("send");
        assert_eq!(next_json(&mut ws).await.expect("reply")["id"], 2);
        h.call(
            "private/order",
            h.order_params(&alice, "sell", "9000", "0.5", CHAIN),
        )
        .await;
        h.call(
            "private/order",
            h.order_params(&bob, "buy", "9000", "0.2", CHAIN),
        )
        .await;
        let (mut saw_trade, mut saw_user, mut books) = (false, false, 0);
        while !(saw_trade && saw_user && books >= 2) {
            let m = next_json(&mut ws).await.expect("notification");
            let channel = m["params"]["channel"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let data = &m["params"]["data"];
            if channel.starts_with("book.") {
                assert_eq!(data["type"], "change");
                assert_eq!(
                    data["prev_change_id"].as_u64(),
                    Some(last),
                    "a gap in the book stream"
                );
                last = data["change_id"].as_u64().expect("change id");
                // Applying the changes to the local book gives the server's book.
                for (side, levels) in [("asks", &mut local_asks)] {
                    for l in data[side].as_array().expect("levels") {
                        let (p, a) = (
                            l[0].as_str().expect("price").to_owned(),
                            l[1].as_str().expect("amount").to_owned(),
                        );
                        levels.retain(|(q, _)| *q != p);
                        if a != "0" {
                            levels.push((p, a));
                        }
                    }
                }
                books += 1;
            } else if channel.starts_with("trades.") {
                assert_eq!(data["amount"], "0.2");
                saw_trade = true;
            } else if channel.starts_with("user.orders.") {
                saw_user = true;
            }
        }
        let book = h
            .call("public/get_order_book", json!({"instrument_name": name}))
            .await;
        let server: Vec<(String, String)> = book["result"]["asks"]
            .as_array()
            .expect("asks")
            .iter()
            .map(|l| {
                (
                    l[0].as_str().expect("p").to_owned(),
                    l[1].as_str().expect("a").to_owned(),
                )
            })
            .collect();
        assert_eq!(
            local_asks, server,
            "the incremental stream rebuilds the book"
        );
        let bad = json!({"jsonrpc": "2.0", "id": 3, "method": "private/subscribe", "params": {"channels": [format!("user.orders.{}", bob.subaccount)], "wallet": auth[0].1, "timestamp": auth[1].1, "signature": auth[2].1}});
        ws.send(Message::Text(bad.to_string().into()))
            .await
            .expect("send");
        loop {
            let m = next_json(&mut ws).await.expect("reply");
            if m["id"] == 3 {
                assert_eq!(
                    m["error"]["code"], 6_005,
                    "someone else's user channel is refused: {m}"
                );
                break;
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_consumer_that_falls_behind_is_dropped_and_the_node_goes_on() {
        let (h, alice, bob) = Harness::start().await;
        // A client with a tiny receive buffer that will not read: the server cannot hide the
        // backlog in socket buffers.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4_096).expect("small buffer");
        let stream = socket.connect(h.addr).await.expect("connects");
        let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", h.addr), stream)
            .await
            .expect("ws handshake");
        let sub = json!({"jsonrpc": "2.0", "id": 1, "method": "public/subscribe", "params": {"channels": ["book.BTC-PERPETUAL", "trades.BTC-PERPETUAL"]}});
        ws.send(Message::Text(sub.to_string().into()))
            .await
            .expect("send");
        assert_eq!(next_json(&mut ws).await.expect("reply")["id"], 1);
        // Publish far more than the stream or any socket buffer holds while the client reads
        // nothing: trades, each one message on the trades channel however late the server
        // looks at it.
        let (a, b) = (
            optio_types::AccountId(alice.subaccount as u32),
            optio_types::AccountId(bob.subaccount as u32),
        );
        let gateway = h.gateway.clone();
        let flood = optio_gateway::ws::STREAM_CAPACITY * 6;
        tokio::task::spawn_blocking(move || {
            let order = |account, side| {
                Command::PlaceOrder(optio_types::NewOrder {
                    account,
                    instrument: InstrumentId(1),
                    side,
                    qty: optio_types::Qty(1_000_000),
                    order_type: optio_types::OrderType::Limit {
                        price: Price(50_000 * MONEY_SCALE),
                    },
                    time_in_force: optio_types::TimeInForce::GoodTillCancelled,
                    post_only: false,
                    reduce_only: false,
                    self_trade: optio_types::SelfTradePrevention::CancelTaker,
                    client_order_id: 0,
                    session_key: None,
                })
            };
            for _ in 0..flood / 1_000 {
                let mut commands = Vec::new();
                for _ in 0..250 {
                    commands.push(order(a, optio_types::Side::Sell));
                    commands.push(order(b, optio_types::Side::Buy));
                    commands.push(order(a, optio_types::Side::Buy));
                    commands.push(order(b, optio_types::Side::Sell));
                }
                assert!(
                    gateway
                        .submit_admin(commands)
                        .expect("the node keeps sequencing")
                        .iter()
                        .all(Result::is_ok)
                );
            }
        })
        .await
        .expect("publisher");
        // The server dropped the session (it counts live ones), whatever the client's kernel
        // still holds for it; the client never read a byte.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while h.gateway.ws_sessions() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the slow consumer's session is still open after the flood"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        drop(ws);
        assert!(
            h.call("public/get_time", json!({})).await["result"].is_u64(),
            "the node is unaffected"
        );
    }
}

/// A session key (from `seed`) for `owner`'s subaccount.
fn session_key(owner: &Trader, seed: u8) -> Trader {
    let key = SecretKey::from_secret_bytes([seed; 32]).expect("key");
    Trader {
        address: address_of(&secp256k1::PublicKey::from_secret_key(&key)),
        key,
        subaccount: owner.subaccount,
    }
}

/// `private/register_session_key` for `session` on `owner`'s subaccount (0 revokes).
fn register_session_key(owner: &Trader, session: &Trader, expiry_sec: u64) -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "private/register_session_key", "params": {"subaccount_id": owner.subaccount, "public_session_key": hex(&session.address), "expiry_sec": expiry_sec}}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_keys_trade_until_revoked_and_never_administer() {
    let (h, alice, _bob) = Harness::start().await;
    let session = session_key(&alice, 0x55);
    let expiry = optio_gateway::now_ms() / 1_000 + 3_600;
    let register = |expiry_sec: u64| register_session_key(&alice, &session, expiry_sec);
    // Signed by the session key for alice's subaccount: refused before registration.
    let order = |h: &Harness| {
        h.order_params_as(
            &session,
            alice.address,
            alice.subaccount,
            optio_gateway::now_ms() / 1_000 + 600,
            "sell",
            "9500",
            "0.1",
            CHAIN,
        )
    };
    assert_eq!(code(&h.call("private/order", order(&h)).await), 6_002);
    // The session key cannot register itself; the owner can.
    assert_eq!(
        code(&h.post(&register(expiry), &h.auth(&session)).await.1),
        6_002
    );
    let ok = h.post(&register(expiry), &h.auth(&alice)).await.1;
    assert!(ok["result"].is_object(), "{ok}");
    let placed = h.call("private/order", order(&h)).await;
    assert_eq!(
        placed["result"]["order"]["order_status"], "open",
        "{placed}"
    );
    // Revoked: refused again.
    let revoked = h.post(&register(0), &h.auth(&alice)).await.1;
    assert!(revoked["result"].is_object(), "{revoked}");
    assert_eq!(code(&h.call("private/order", order(&h)).await), 6_002);
    // Registering the owner itself or a past expiry is an engine rejection with its code.
    let past = h.post(&register(1), &h.auth(&alice)).await.1;
    assert_eq!(code(&past), 2_006);
}

/// On a rollup that judges every fill by its orders' posted signatures, the gateway refuses
/// what the operator could not justify there, an edit that loosens an order (a higher bid, a
/// lower ask, a larger size), with its code and changing nothing; tightening edits go through.
/// An order signed by a session key is taken: it lives no longer than its key and goes when
/// the key is revoked, so that each of its fills is judged while the key is live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_signed_terms_only_loosening_edits_are_refused_and_key_orders_end_with_their_key() {
    let (h, alice, _bob) = Harness::start_with(|c| Config {
        signed_terms_only: true,
        ..c
    })
    .await;
    let session = session_key(&alice, 0x56);
    let expiry = optio_gateway::now_ms() / 1_000 + 3_600;
    // Account changes need the owner's signature of the change (the rollup judges each posted
    // one by it): unsigned, signed by another key, by the owner for another change, living
    // less than 10 s more, or with a nonce used before, refused with their codes, changing
    // nothing.
    // Nonces far from the orders' (the harness counts from its start's date; one space per
    // owner): this call's date, then 500,000 and up.
    let nonce_at = optio_gateway::dated_nonce(optio_gateway::now_ms(), 500_000);
    let signed = |signer: &SecretKey, change: Change, k: u64, life_s: u64| {
        let nonce = nonce_at + k;
        let params = optio_gateway::client::change_params(
            signer,
            CHAIN,
            CONTRACT,
            alice.subaccount,
            change,
            nonce,
            optio_gateway::now_ms() / 1_000 + life_s,
        );
        let method = match change {
            Change::SessionKey { .. } => "private/register_session_key",
            Change::MarginMode(_) => "private/set_margin_mode",
        };
        json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string()
    };
    let key_change = |expiry_s| Change::SessionKey {
        key: session.address,
        expiry_s,
    };
    let before = h.gateway.state_hash();
    let unsigned_mode = json!({"jsonrpc": "2.0", "id": 1, "method": "private/set_margin_mode", "params": {"subaccount_id": alice.subaccount, "margin_mode": "standard"}}).to_string();
    for (request, expected) in [
        (register_session_key(&alice, &session, expiry), 6_009),
        (unsigned_mode, 6_009),
        (signed(&session.key, key_change(expiry), 1, 600), 6_001),
        (signed(&alice.key, key_change(expiry), 1, 5), 6_004),
    ] {
        assert_eq!(
            code(&h.post(&request, &h.auth(&alice)).await.1),
            expected,
            "{request}"
        );
    }
    let mut forged: Value =
        serde_json::from_str(&signed(&alice.key, key_change(expiry), 1, 600)).expect("json");
    forged["params"]["expiry_sec"] = json!(expiry + 1);
    assert_eq!(
        code(&h.post(&forged.to_string(), &h.auth(&alice)).await.1),
        6_001,
        "signed for another expiry"
    );
    // A malformed signature, or a nonce that is not a decimal string.
    for (field, value, expected) in [
        ("signature", json!("0x1234"), 6_001),
        ("nonce", json!("0x10"), -32_602),
    ] {
        let mut bad: Value =
            serde_json::from_str(&signed(&alice.key, key_change(expiry), 1, 600)).expect("json");
        bad["params"][field] = value;
        assert_eq!(
            code(&h.post(&bad.to_string(), &h.auth(&alice)).await.1),
            expected,
            "{field}"
        );
    }
    // Nor does the operator's own path take an unsigned change.
    let admin = h.gateway.submit_admin(vec![Command::SetMarginMode {
        account: optio_types::AccountId(alice.subaccount as u32),
        mode: MarginMode::Standard,
    }]);
    assert_eq!(
        admin.map_err(|e| e.code()),
        Err(6_009),
        "an operator's unsigned change"
    );
    assert_eq!(h.gateway.state_hash(), before, "refusals change nothing");
    let mode = signed(&alice.key, Change::MarginMode(MarginMode::Standard), 2, 600);
    let set = h.post(&mode, &h.auth(&alice)).await.1;
    assert_eq!(set["result"]["margin_mode"], "standard", "{set}");
    assert_eq!(
        code(&h.post(&mode, &h.auth(&alice)).await.1),
        6_003,
        "replayed"
    );
    let mut nonce = 10;
    let mut register = |expiry_s| {
        nonce += 1;
        signed(&alice.key, key_change(expiry_s), nonce, 600)
    };
    assert!(h.post(&register(expiry), &h.auth(&alice)).await.1["result"].is_object());
    let by_key = h.order_params_as(
        &session,
        alice.address,
        alice.subaccount,
        optio_gateway::now_ms() / 1_000 + 600,
        "sell",
        "9500",
        "0.1",
        CHAIN,
    );
    let placed = h.call("private/order", by_key).await;
    assert_eq!(
        placed["result"]["order"]["order_status"], "open",
        "{placed}"
    );
    let id = optio_types::OrderId(
        placed["result"]["order"]["order_id"]
            .as_str()
            .expect("id")
            .parse()
            .expect("number"),
    );
    let open_order = |id: optio_types::OrderId| {
        h.gateway
            .canonical_state()
            .orders
            .into_iter()
            .find(|o| o.id == id)
    };
    let open = open_order(id).expect("resting");
    assert_eq!(
        open.time_in_force,
        optio_types::TimeInForce::GoodTillTime(expiry * 1_000),
        "good till the key expires"
    );
    assert_eq!(
        open.session_key,
        Some(optio_types::Address(session.address))
    );
    // Revoking the key cancels its order.
    assert!(h.post(&register(0), &h.auth(&alice)).await.1["result"].is_object());
    assert!(open_order(id).is_none(), "cancelled with its key");

    // The owner's own ask, then edits: looser ones refused, tighter ones taken.
    let ask = h
        .call(
            "private/order",
            h.order_params(&alice, "sell", "9500", "0.3", CHAIN),
        )
        .await;
    let order_id: u64 = ask["result"]["order"]["order_id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("number");
    let edit = |price: &str, amount: &str| {
        json!({"jsonrpc": "2.0", "id": 9, "method": "private/edit", "params": {"subaccount_id": alice.subaccount, "order_id": order_id, "price": price, "amount": amount}}).to_string()
    };
    let before = h.gateway.state_hash();
    for (price, amount) in [("9400", "0.3"), ("9500", "0.4")] {
        assert_eq!(
            code(&h.post(&edit(price, amount), &h.auth(&alice)).await.1),
            6_008,
            "{price} x {amount}"
        );
    }
    assert_eq!(h.gateway.state_hash(), before);
    let tighter = h.post(&edit("9600", "0.2"), &h.auth(&alice)).await.1;
    assert_eq!(tighter["result"]["price"], "9600", "{tighter}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_refuse_floods_per_ip_and_per_owner() {
    // Rates low enough that the test does not depend on how fast this machine sends.
    let (h, alice, _bob) = Harness::start_with(|c| Config {
        owner_orders_per_second: 2,
        ip_requests_per_second: 10,
        ..c
    })
    .await;
    // Per owner: 2 orders/s, burst 4. Far-away IOC orders, signed and valid.
    let mut limited = 0;
    for _ in 0..24 {
        let mut p = h.order_params(&alice, "buy", "1000", "0.01", CHAIN);
        p["time_in_force"] = json!("ioc");
        let r = h.call("private/order", p).await;
        if r["error"]["code"] == 6_007 {
            limited += 1;
        }
    }
    assert!(limited > 8, "an owner's order flood is limited ({limited})");
    // Per IP: 10 requests/s, burst 20 (the orders above already spent most of it).
    let mut refused = 0;
    for _ in 0..60 {
        let (status, _) = h
            .post(
                &json!({"jsonrpc": "2.0", "id": 1, "method": "public/get_time"}).to_string(),
                &[],
            )
            .await;
        if status == 429 {
            refused += 1;
        }
    }
    assert!(refused > 20, "an IP's request flood is limited ({refused})");
}

/// On a node with an oracle, the operator cannot settle an instrument at its own price (L1
/// would slash the batch): refused with invalid params, nothing sequenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_settlement_price_is_refused_where_the_oracle_signs_them() {
    let (h, _alice, _bob) = Harness::start().await;
    let (before, seq) = (h.gateway.state_hash(), h.gateway.next_seq());
    let refused = h.gateway.submit_admin(vec![
        Command::CancelAll {
            account: optio_types::AccountId(0),
            instrument: None,
        },
        Command::SettleInstrument {
            instrument: InstrumentId(0),
            settlement_price: Price(90_000 * MONEY_SCALE),
        },
    ]);
    assert!(
        matches!(&refused, Err(optio_gateway::GatewayError::InvalidParams(why)) if why.contains("oracle")),
        "{refused:?}"
    );
    assert_eq!(
        (h.gateway.state_hash(), h.gateway.next_seq()),
        (before, seq)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oracle_updates_need_the_oracle_signature() {
    let (h, _alice, _bob) = Harness::start().await;
    // Every listed instrument (an update that leaves one out is refused, 5012).
    let specs: Vec<InstrumentSpec> = h
        .gateway
        .canonical_state()
        .instruments
        .iter()
        .map(|i| i.spec.clone())
        .collect();
    let svi = Svi {
        a: 0.02,
        b: 0.1,
        rho: -0.3,
        m: 0.0,
        sigma: 0.3,
    };
    let surface = Surface::new(91_000.0, 0.0, vec![Slice { t: 0.1, svi }]).expect("surface");
    // Published after the harness's own update (an update must be newer than the last).
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let update = optio_oracle::build_update(
        "BTC",
        &surface,
        &default_scenarios(),
        &optio_oracle::numbered(&specs),
        optio_gateway::now_ms(),
    )
    .expect("update");
    let domain = h.gateway.optio_domain();
    let submit_for = |signer: &optio_oracle::OracleSigner, tamper: bool, domain: &[u8; 32]| {
        let signed = signer.sign(update.clone(), domain);
        let mut bytes = signed.update.encode();
        if tamper {
            // The last mark's last byte (before the settlement prices' count).
            let n = bytes.len();
            bytes[n - 5] ^= 1;
        }
        json!({"jsonrpc": "2.0", "id": 1, "method": "oracle/submit_update", "params": {"update": hex(&bytes), "signature": hex(&signed.signature)}})
    };
    let submit =
        |signer: &optio_oracle::OracleSigner, tamper: bool| submit_for(signer, tamper, &domain);
    let before = h.gateway.state_hash();
    let impostor = optio_oracle::OracleSigner::from_bytes([0x0d; 32]).expect("key");
    assert_eq!(
        code(&h.post(&submit(&impostor, false).to_string(), &[]).await.1),
        6_001
    );
    let oracle = optio_oracle::OracleSigner::from_bytes([0x0c; 32]).expect("key");
    assert_eq!(
        code(&h.post(&submit(&oracle, true).to_string(), &[]).await.1),
        6_001
    );
    // The oracle's envelope over marks it signed for another rollup (each mark's own signature
    // is what L1 judges): refused.
    assert_eq!(
        code(
            &h.post(&submit_for(&oracle, false, &[0x0f; 32]).to_string(), &[])
                .await
                .1
        ),
        6_001
    );
    assert_eq!(h.gateway.state_hash(), before);
    let ok = h.post(&submit(&oracle, false).to_string(), &[]).await.1;
    assert_eq!(ok["result"], "ok", "{ok}");
    let ticker = h
        .call("public/ticker", json!({"instrument_name": "BTC-PERPETUAL"}))
        .await;
    assert_eq!(ticker["result"]["index_price"], "91000");
}

/// Every method in the machine-readable spec (docs/openapi.json) is served (never "method not
/// found"), and an unknown one is refused as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_answers_every_method_of_its_openapi_spec() {
    let (h, _alice, _bob) = Harness::start().await;
    let spec: Value =
        serde_json::from_str(include_str!("../../../../docs/openapi.json")).expect("spec is JSON");
    let paths = spec["paths"].as_object().expect("paths");
    assert!(paths.len() >= 12);
    for (path, item) in paths {
        let method = path.split_once('#').expect("path names its method").1;
        assert_eq!(
            item["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]["method"]
                ["const"],
            method
        );
        let reply = h.call(method, json!({})).await;
        assert_ne!(
            reply["error"]["code"], -32_601,
            "{method} is in the spec but not served"
        );
        assert!(
            reply.get("result").is_some() || reply.get("error").is_some(),
            "{method}: {reply}"
        );
    }
    assert_eq!(
        code(&h.call("public/not_in_the_spec", json!({})).await),
        -32_601
    );
}

/// A JSON-RPC batch is answered in order, element by element: signed orders (sequenced in the
/// same group commits), reads, and errors each in their own envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_answer_each_request_in_order() {
    let (h, alice, bob) = Harness::start().await;
    let batch = json!([
        {"jsonrpc": "2.0", "id": "a", "method": "private/order", "params": h.order_params(&alice, "sell", "9000", "0.1", CHAIN)},
        {"jsonrpc": "2.0", "id": "b", "method": "private/order", "params": h.order_params(&bob, "buy", "8000", "0.1", CHAIN)},
        {"jsonrpc": "2.0", "id": "c", "method": "private/steal", "params": {}},
        {"jsonrpc": "2.0", "id": "d", "method": "public/get_time"},
        {"jsonrpc": "2.0", "id": "e", "method": "private/order", "params": h.order_params(&bob, "buy", "8000", "0.1", CHAIN + 1)},
    ]);
    let (status, replies) = h.post(&batch.to_string(), &[]).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = replies
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, ["a", "b", "c", "d", "e"]);
    assert_eq!(
        replies[0]["result"]["order"]["order_status"], "open",
        "{replies}"
    );
    assert_eq!(
        replies[1]["result"]["order"]["order_status"], "open",
        "{replies}"
    );
    assert_eq!(code(&replies[2]), -32_601);
    assert!(replies[3]["result"].as_u64().is_some(), "{replies}");
    assert_eq!(code(&replies[4]), 6_001, "signed for another chain");
    let book = h
        .call(
            "public/get_order_book",
            json!({"instrument_name": "BTC-26MAR27-100000-C"}),
        )
        .await;
    assert_eq!(book["result"]["asks"][0], json!(["9000", "0.1"]));
    assert_eq!(book["result"]["bids"][0], json!(["8000", "0.1"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deribit_style_buy_and_sell_are_signed_orders() {
    let (h, alice, bob) = Harness::start().await;
    let ask = h
        .call(
            "private/sell",
            h.order_params(&alice, "sell", "9100", "0.1", CHAIN),
        )
        .await;
    assert_eq!(ask["result"]["order"]["direction"], "sell", "{ask}");
    let bid = h
        .call(
            "private/buy",
            h.order_params(&bob, "buy", "9100", "0.1", CHAIN),
        )
        .await;
    assert_eq!(bid["result"]["order"]["order_status"], "filled", "{bid}");
    // The method's direction overrides the body, and the signature covers it: a sell signed as a
    // buy does not verify.
    assert_eq!(
        code(
            &h.call(
                "private/buy",
                h.order_params(&bob, "sell", "9100", "0.1", CHAIN)
            )
            .await
        ),
        6_001
    );
}

/// Cancel-and-replace (`private/replace`) is one input: the old bid cancelled and the new one
/// resting in its place; a replace of the order now gone is refused with its code and places
/// nothing; a new order the engine refuses (beyond the margin) leaves the old one cancelled, the
/// refusal in `replace_error`; without header authentication nothing happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replace_cancels_and_places_in_one_input() {
    let (h, alice, _bob) = Harness::start().await;
    let id = |v: &Value| -> u64 {
        v.as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("an order id, got {v}"))
    };
    let placed = h
        .call(
            "private/order",
            h.order_params(&alice, "buy", "9000", "0.1", CHAIN),
        )
        .await;
    assert!(placed["result"].is_object(), "{placed}");
    let first = id(&placed["result"]["order"]["order_id"]);
    let replace = |cancel: u64, amount: &str| {
        let o = (
            alice.address,
            alice.subaccount,
            optio_gateway::now_ms() / 1_000 + 3_600,
            Domain::optio(CHAIN, CONTRACT).separator(),
        );
        let mut p = h.order_params_with_fee(&alice, o, "buy", "9100", amount, "10000");
        p["order_id_to_cancel"] = json!(cancel);
        json!({"jsonrpc": "2.0", "id": 1, "method": "private/replace", "params": p}).to_string()
    };
    let open = |v: Value| -> Vec<(u64, String)> {
        v["result"]
            .as_array()
            .expect("orders")
            .iter()
            .map(|o| {
                (
                    id(&o["order_id"]),
                    o["amount"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    };
    let before = h.gateway.state_hash();
    assert_eq!(code(&h.post(&replace(first, "0.2"), &[]).await.1), 6_005);
    assert_eq!(h.gateway.state_hash(), before, "unauthenticated");
    let mut unnamed: Value = serde_json::from_str(&replace(first, "0.2")).expect("json");
    unnamed["params"]
        .as_object_mut()
        .map(|p| p.remove("order_id_to_cancel"));
    assert_eq!(
        code(&h.post(&unnamed.to_string(), &h.auth(&alice)).await.1),
        -32_602
    );
    assert_eq!(h.gateway.state_hash(), before, "no order to cancel named");
    let r = h.post(&replace(first, "0.2"), &h.auth(&alice)).await.1;
    assert_eq!(r["result"]["cancelled_order_id"], first.to_string(), "{r}");
    assert!(r["result"]["replace_error"].is_null(), "{r}");
    let second = id(&r["result"]["order"]["order_id"]);
    assert_eq!(
        open(h.open_orders(&alice).await),
        vec![(second, "0.2".to_owned())]
    );
    // The first order is gone: the engine refuses the input, nothing placed or cancelled.
    let gone = h.post(&replace(first, "0.3"), &h.auth(&alice)).await.1;
    assert_eq!(code(&gone), 4_015, "{gone}");
    assert_eq!(
        open(h.open_orders(&alice).await),
        vec![(second, "0.2".to_owned())]
    );
    // A bid for 1,000 calls at 9,100 needs more than Alice's 1,000,000 USDC: the new order is
    // refused, the second one cancelled all the same.
    let r = h.post(&replace(second, "1000"), &h.auth(&alice)).await.1;
    assert_eq!(r["result"]["cancelled_order_id"], second.to_string(), "{r}");
    assert!(r["result"]["order"].is_null(), "{r}");
    assert_eq!(r["result"]["replace_error"]["code"], 4_014, "{r}");
    assert!(open(h.open_orders(&alice).await).is_empty());
}

/// Margin modes and liquidation auctions over HTTP: the owner moves a small account to mark
/// margin; after the mark falls it is liquidating, and a liquidator takes one auction step at
/// the auction price; a step too large, a bid by the account's own owner, a bid from an
/// account the caller does not own and an unknown mode are refused with their codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn margin_modes_and_liquidation_bids() {
    let (h, alice, bob) = Harness::start().await;
    let key = SecretKey::from_secret_bytes([7; 32]).expect("key");
    let carol = Trader {
        key,
        address: address_of(&secp256k1::PublicKey::from_secret_key(&key)),
        subaccount: h
            .gateway
            .fund(
                address_of(&secp256k1::PublicKey::from_secret_key(&key)),
                Amount(1_000 * MONEY_SCALE),
            )
            .expect("funded"),
    };
    let rpc = |method: &str, params: Value| {
        json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string()
    };
    let mode = |t: &Trader, m: &str| {
        rpc(
            "private/set_margin_mode",
            json!({"subaccount_id": t.subaccount, "margin_mode": m}),
        )
    };
    let before = h.gateway.state_hash();
    assert_eq!(
        code(&h.post(&mode(&carol, "cross"), &h.auth(&carol)).await.1),
        -32_602
    );
    assert_eq!(
        code(&h.post(&mode(&carol, "standard"), &h.auth(&bob)).await.1),
        6_002
    );
    assert_eq!(h.gateway.state_hash(), before, "refusals change nothing");
    let set = h.post(&mode(&carol, "standard"), &h.auth(&carol)).await.1;
    assert_eq!(set["result"]["margin_mode"], "standard", "{set}");
    let sub = rpc(
        "private/get_subaccount",
        json!({"subaccount_id": carol.subaccount}),
    );
    assert_eq!(
        h.post(&sub, &h.auth(&carol)).await.1["result"]["margin_mode"],
        "Standard"
    );

    // Carol buys 0.1 BTC-PERPETUAL from bob at 90,000 on 1,000 USDC of collateral.
    for (t, side) in [(&bob, "sell"), (&carol, "buy")] {
        let params = optio_gateway::client::order_params(
            &t.key,
            CHAIN,
            CONTRACT,
            &optio_gateway::client::OrderRequest {
                subaccount: t.subaccount,
                instrument_id: 1,
                instrument_name: "BTC-PERPETUAL",
                direction: side,
                price: "90000",
                amount: "0.1",
                max_fee: "100",
                nonce: optio_gateway::dated_nonce(optio_gateway::now_ms(), 1),
                expiry: optio_gateway::now_ms() / 1_000 + 600,
                time_in_force: "gtc",
            },
        )
        .expect("signs");
        let placed = h.call("private/order", params).await;
        assert!(placed.get("result").is_some(), "{placed}");
    }
    let bid = |t: &Trader, amount: &str| {
        rpc(
            "private/liquidate",
            json!({"subaccount_id": t.subaccount, "account_id": carol.subaccount, "instrument_name": "BTC-PERPETUAL", "amount": amount}),
        )
    };
    // Not liquidating yet.
    assert_eq!(
        code(&h.post(&bid(&bob, "0.02"), &h.auth(&bob)).await.1),
        5_008
    );
    // The mark falls 8%: carol's equity is below maintenance (published after the last
    // update); her auction starts at the next update (engine rules 4).
    let oracle = optio_oracle::OracleSigner::from_bytes([0x0c; 32]).expect("oracle key");
    for _ in 0..2 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        publish_marks(&h.gateway, &oracle, 82_800.0);
    }
    assert!(
        h.gateway.canonical_state().accounts[carol.subaccount as usize]
            .liquidating_since
            .is_some()
    );
    // The bidder must own the liquidating account it bids from; the owner cannot bid on
    // itself; the whole position is more than one auction step. None of it changes state (the
    // engine's refusals are sequenced, so only the engine's clock moves).
    let state = || optio_types::CanonicalState {
        time_ms: 0,
        ..h.gateway.canonical_state()
    };
    let before = state();
    assert_eq!(
        code(&h.post(&bid(&bob, "0.02"), &h.auth(&alice)).await.1),
        6_002
    );
    assert_eq!(
        code(&h.post(&bid(&carol, "0.02"), &h.auth(&carol)).await.1),
        5_011
    );
    assert_eq!(
        code(&h.post(&bid(&bob, "0.1"), &h.auth(&bob)).await.1),
        5_009
    );
    assert_eq!(state(), before, "refused bids change nothing");
    let taken = h.post(&bid(&bob, "0.02"), &h.auth(&bob)).await.1;
    assert_eq!(taken["result"]["amount"], "0.02", "{taken}");
    let price: f64 = taken["result"]["price"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .expect("the auction price");
    assert!(price < 82_800.0, "a long is sold below the mark: {price}");
    let positions = rpc(
        "private/get_positions",
        json!({"subaccount_id": carol.subaccount}),
    );
    assert_eq!(
        h.post(&positions, &h.auth(&carol)).await.1["result"][0]["size"],
        "0.08"
    );
    h.gateway.check_invariants().expect("invariants hold");
}

/// Signed orders placed together (`Gateway::place_signed_orders`, how the devnet's market
/// makers quote every second) are each verified as the API's are and share the writer's group
/// commits: a bad one is refused alone, the others sequenced in far fewer fsyncs than orders
/// (5 for 40 here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_placed_together_share_group_commits() {
    let (h, alice, bob) = Harness::start().await;
    let groups = |g: &Gateway| -> u64 {
        g.metrics()
            .lines()
            .find_map(|l| l.strip_prefix("optio_wal_groups_total "))
            .and_then(|v| v.trim().parse().ok())
            .expect("the groups' counter")
    };
    let mut orders: Vec<Value> = (0..40)
        .map(|k| {
            let (t, side, price) = if k % 2 == 0 {
                (&alice, "buy", 8_000 + k)
            } else {
                (&bob, "sell", 9_000 + k)
            };
            h.order_params(t, side, &price.to_string(), "0.1", CHAIN)
        })
        .collect();
    // Signed for another chain: refused, and only it.
    orders.insert(7, h.order_params(&bob, "sell", "9500", "0.1", CHAIN + 1));
    let before = groups(&h.gateway);
    let placed = h.gateway.place_signed_orders(&orders).await;
    let used = groups(&h.gateway) - before;
    assert_eq!(placed.len(), 41);
    for (k, p) in placed.iter().enumerate() {
        assert_eq!(p.is_ok(), k != 7, "order {k}: {:?}", p.as_ref().err());
    }
    let ids: std::collections::BTreeSet<u64> = placed
        .iter()
        .filter_map(|p| p.as_ref().ok().copied())
        .collect();
    assert_eq!(ids.len(), 40, "each its own order id");
    eprintln!("40 orders placed together in {used} group commits");
    // (One each if each waited for its own commit before the next was queued; how many
    // share one depends on the machine's pace, verifying the next against the fsync.)
    assert!(used <= 20, "{used} group commits for 40 orders");
    let open = h.open_orders(&alice).await;
    assert_eq!(
        open["result"].as_array().map(Vec::len),
        Some(20),
        "alice's bids rest: {open}"
    );
    // Bob's 20 asks rest, and the refused one left nothing.
    let open = h.open_orders(&bob).await;
    let asks = open["result"].as_array().expect("bob's open orders");
    assert_eq!(asks.len(), 20, "{open}");
    assert!(
        asks.iter().all(|o| {
            o["limit_price"]
                .as_str()
                .and_then(|p| p.parse::<f64>().ok())
                .is_some_and(|p| p < 9_500.0)
        }),
        "the refused order rests: {open}"
    );
}
