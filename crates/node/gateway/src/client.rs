//! Building signed requests as a client would (used by tests, the load generator and tools).

use optio_intents::{
    AccountChange, Action, DERIVE_TRADE_MODULE, Domain, MarginModeChange, SessionKeyChange,
    TradeData, address_of,
};
use secp256k1::SecretKey;
use serde_json::{Value, json};

use crate::views::hex;

/// A decimal string as an 18-decimal integer (at most 18 decimals).
fn to18(s: &str) -> Option<i128> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 18 {
        return None;
    }
    Some(
        int.parse::<i128>().ok()?.checked_mul(10i128.pow(18))?
            + format!("{frac:0<18}").parse::<i128>().ok()?,
    )
}

/// One order to sign.
#[derive(Debug, Clone)]
pub struct OrderRequest<'a> {
    /// Subaccount trading (owned by the key's address).
    pub subaccount: u64,
    /// Instrument id (`instrument_id` in `public/get_instruments`).
    pub instrument_id: u32,
    /// Instrument name.
    pub instrument_name: &'a str,
    /// `buy` or `sell`.
    pub direction: &'a str,
    /// Decimal limit price.
    pub price: &'a str,
    /// Decimal amount.
    pub amount: &'a str,
    /// Decimal max fee.
    pub max_fee: &'a str,
    /// Unique per owner.
    pub nonce: u64,
    /// Signature expiry, seconds.
    pub expiry: u64,
    /// `gtc`, `ioc`, `fok` or `post_only`.
    pub time_in_force: &'a str,
}

/// `private/order` params signed by `key` under Optio's native domain.
pub fn order_params(
    key: &SecretKey,
    chain_id: u64,
    contract: [u8; 20],
    o: &OrderRequest<'_>,
) -> Option<Value> {
    signed_order(key, chain_id, contract, o).map(|(params, _)| params)
}

/// `private/order` params signed by `key` under Optio's native domain, and the EIP-712 digest
/// signed (the intent's hash in its receipt and in `public/get_intent_status`).
pub fn signed_order(
    key: &SecretKey,
    chain_id: u64,
    contract: [u8; 20],
    o: &OrderRequest<'_>,
) -> Option<(Value, [u8; 32])> {
    let owner = address_of(&secp256k1::PublicKey::from_secret_key(key));
    signed_order_for(key, owner, chain_id, contract, o)
}

/// `signed_order` signed by `key` for a subaccount of `owner` (a session key the owner
/// registered, when they differ).
pub fn signed_order_for(
    key: &SecretKey,
    owner: [u8; 20],
    chain_id: u64,
    contract: [u8; 20],
    o: &OrderRequest<'_>,
) -> Option<(Value, [u8; 32])> {
    let signer = address_of(&secp256k1::PublicKey::from_secret_key(key));
    let data = TradeData {
        asset: contract,
        sub_id: u128::from(o.instrument_id),
        limit_price: to18(o.price)?,
        amount: to18(o.amount)?,
        max_fee: u128::try_from(to18(o.max_fee)?).ok()?,
        recipient_id: u128::from(o.subaccount),
        is_bid: o.direction == "buy",
    };
    let action = Action {
        subaccount_id: o.subaccount,
        nonce: o.nonce,
        module: DERIVE_TRADE_MODULE,
        data: data.encode(),
        expiry: o.expiry,
        owner,
        signer,
    };
    let digest = action.digest(&Domain::optio(chain_id, contract).separator());
    let signature = optio_intents::sign(key, &digest);
    let params = json!({
        "instrument_name": o.instrument_name, "direction": o.direction, "order_type": "limit", "time_in_force": o.time_in_force,
        "limit_price": o.price, "amount": o.amount, "max_fee": o.max_fee, "subaccount_id": o.subaccount, "nonce": o.nonce.to_string(),
        "signer": hex(&signer), "signature": hex(&signature), "signature_expiry_sec": o.expiry,
    });
    Some((params, digest))
}

/// An account change to sign: what `private/register_session_key` (a session key and its
/// expiry, 0 revoking it) or `private/set_margin_mode` (a mode) asks.
#[derive(Debug, Clone, Copy)]
pub enum Change {
    /// Register, extend, shorten or (expiry 0) revoke a session key.
    SessionKey {
        /// The key.
        key: [u8; 20],
        /// Expiry, seconds (0 revokes).
        expiry_s: u64,
    },
    /// Choose a margin mode.
    MarginMode(optio_types::MarginMode),
}

/// The params of `private/register_session_key` or `private/set_margin_mode` for `change`
/// of `subaccount`, signed by `key`, the subaccount's owner, under Optio's native domain with
/// `nonce` (unique per owner) and `signature_expiry_sec` `expiry` (seconds). A rollup that
/// judges signatures judges every posted account change by it (`OptioJudge.changeSigned`);
/// the call itself is header-authenticated by the owner too.
pub fn change_params(
    key: &SecretKey,
    chain_id: u64,
    contract: [u8; 20],
    subaccount: u64,
    change: Change,
    nonce: u64,
    expiry: u64,
) -> Value {
    let owner = address_of(&secp256k1::PublicKey::from_secret_key(key));
    let (signed, mut params) = match change {
        Change::SessionKey {
            key: session,
            expiry_s,
        } => (
            AccountChange::SessionKey(SessionKeyChange {
                key: session,
                expiry_ms: expiry_s.saturating_mul(1_000),
            }),
            json!({"subaccount_id": subaccount, "public_session_key": hex(&session), "expiry_sec": expiry_s}),
        ),
        Change::MarginMode(mode) => (
            AccountChange::MarginMode(MarginModeChange { mode: mode.code() }),
            json!({"subaccount_id": subaccount, "margin_mode": crate::MARGIN_MODES
                .iter()
                .find_map(|(name, m)| (*m == mode).then_some(*name))}),
        ),
    };
    let digest = signed
        .action(subaccount, nonce, expiry, owner)
        .digest(&Domain::optio(chain_id, contract).separator());
    params["nonce"] = json!(nonce.to_string());
    params["signature_expiry_sec"] = json!(expiry);
    params["signature"] = json!(hex(&optio_intents::sign(key, &digest)));
    params
}

fn unhex<const N: usize>(v: &Value) -> Option<[u8; N]> {
    let s = v.as_str()?.strip_prefix("0x")?;
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A receipt as the API returns it (`result.receipt`, or `error.data` for an input the engine
/// refused), ready to `verify` against the sequencer's public key (`/health`).
pub fn parse_receipt(v: &Value) -> Option<optio_sequencer::Receipt> {
    let seal = &v["seal"];
    Some(optio_sequencer::Receipt {
        seq: v["seq"].as_u64()?,
        intent_hash: unhex(&v["intent_hash"])?,
        previous: unhex(&v["previous"])?,
        seal: optio_sequencer::Seal {
            first_seq: seal["first_seq"].as_u64()?,
            count: u32::try_from(seal["count"].as_u64()?).ok()?,
            root: unhex(&seal["root"])?,
            signature: unhex(&seal["signature"])?,
        },
        path: v["path"]
            .as_array()?
            .iter()
            .map(unhex)
            .collect::<Option<Vec<_>>>()?,
    })
}

/// The private-API authentication headers for `key` now: `X-OptioWallet`, `X-OptioTimestamp`
/// (ms) and `X-OptioSignature` (EIP-191 personal_sign of the timestamp's decimal string).
pub fn auth_headers(key: &SecretKey, now_ms: u64) -> Vec<(&'static str, String)> {
    let owner = address_of(&secp256k1::PublicKey::from_secret_key(key));
    let ts = now_ms.to_string();
    let mut message = format!("\x19Ethereum Signed Message:\n{}", ts.len()).into_bytes();
    message.extend_from_slice(ts.as_bytes());
    let digest = optio_intents::keccak(&message);
    let signature = optio_intents::sign(key, &digest);
    vec![
        ("x-optiowallet", hex(&owner)),
        ("x-optiotimestamp", ts),
        ("x-optiosignature", hex(&signature)),
    ]
}
