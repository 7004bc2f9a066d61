//! JSON-RPC 2.0 envelopes and the API's error codes.
//!
//! Error codes: the JSON-RPC standard ones for envelope problems (-32700 parse error, -32600
//! invalid request, -32601 unknown method, -32602 invalid params), the engine's stable rejection
//! codes (1001-5011, `docs/rejections.md`) for refused inputs, and the gateway's own 6xxx codes
//! for authentication and replay protection (listed in `GatewayError`).

use serde_json::{Value, json};

/// Errors the gateway itself raises, each with a stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// Body is not JSON (-32700).
    #[error("parse error")]
    Parse,
    /// Not a JSON-RPC 2.0 request object (-32600).
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// No such method (-32601).
    #[error("method not found")]
    MethodNotFound,
    /// A parameter is missing, of the wrong type, out of range or malformed (-32602).
    #[error("invalid params: {0}")]
    InvalidParams(String),
    /// The signature is malformed, high-s, or does not recover to the signer (6001).
    #[error("invalid signature")]
    BadSignature,
    /// The signer may not act for this subaccount (6002).
    #[error("signer is not the subaccount owner")]
    NotOwner,
    /// The nonce was used before by this owner (6003).
    #[error("nonce already used")]
    ReplayedNonce,
    /// The nonce carries no date (its leading 13 digits, a millisecond time) within the window
    /// of the node's clock, in seconds (6010).
    #[error(
        "nonce date not recent: a nonce starts with its time in milliseconds (13 digits), within {0} s of the node's clock"
    )]
    NonceDate(u64),
    /// The signature has expired, or expires too far in the future (6004).
    #[error("signature expired or expiry out of range")]
    SignatureExpiry,
    /// Authentication headers missing, stale or wrong (6005).
    #[error("authentication failed")]
    Unauthorized,
    /// The max fee the user signed is below what the order could pay (6006): the minimum it
    /// must sign, in USDC (per contract on the Derive-compatible API, in total on the native one).
    #[error("max fee too low: the signed max_fee must be at least {0}")]
    MaxFeeTooLow(String),
    /// On a rollup that judges fills by their signed orders: an edit beyond the order's signed
    /// terms (a higher bid, a lower ask, a larger size) (6008).
    #[error("beyond what the order's signature covers on this rollup")]
    BeyondSignedTerms,
    /// On a rollup that judges account changes by the owner's signature: a session key or
    /// margin mode change without it (6009).
    #[error(
        "this rollup needs the owner's signature of an account change (signature, nonce, signature_expiry_sec)"
    )]
    UnsignedChange,
    /// Too many requests from this IP, or orders from this owner (6007).
    #[error("rate limit exceeded")]
    RateLimited,
    /// The node could not make the input durable (6100).
    #[error("internal error")]
    Internal,
}

impl GatewayError {
    /// The stable numeric code.
    pub fn code(&self) -> i64 {
        match self {
            GatewayError::Parse => -32_700,
            GatewayError::InvalidRequest(_) => -32_600,
            GatewayError::MethodNotFound => -32_601,
            GatewayError::InvalidParams(_) => -32_602,
            GatewayError::BadSignature => 6_001,
            GatewayError::NotOwner => 6_002,
            GatewayError::ReplayedNonce => 6_003,
            GatewayError::NonceDate(_) => 6_010,
            GatewayError::SignatureExpiry => 6_004,
            GatewayError::Unauthorized => 6_005,
            GatewayError::MaxFeeTooLow(_) => 6_006,
            GatewayError::RateLimited => 6_007,
            GatewayError::BeyondSignedTerms => 6_008,
            GatewayError::UnsignedChange => 6_009,
            GatewayError::Internal => 6_100,
        }
    }
}

/// Why a call failed: the gateway or the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// Refused before sequencing.
    Gateway(GatewayError),
    /// Sequenced and refused by the engine (the receipt is in `data`).
    Engine(optio_types::RejectCode, Option<Value>),
}

impl From<GatewayError> for CallError {
    fn from(e: GatewayError) -> Self {
        CallError::Gateway(e)
    }
}

/// A success envelope.
pub fn ok(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// An error envelope.
pub fn err(id: &Value, e: &CallError) -> Value {
    match e {
        CallError::Gateway(g) => {
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": g.code(), "message": g.to_string()}})
        }
        CallError::Engine(code, data) => {
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": code.code(), "message": code.message(), "data": data}})
        }
    }
}
