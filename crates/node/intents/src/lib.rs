//! Signed user intents.
//!
//! Owns: EIP-712 typed-data hashing for the intents users sign (the Derive-style `Action` with
//! its trade-module data, exactly as unmodified ccxt 4.5.90 builds it, and with Optio's own
//! modules for an owner's session key and margin mode changes) and for the risk
//! oracle's marks and settlement prices (`OracleMark`, `OracleSettlement`), the domains they are signed under, and recovery of the signing address with libsecp256k1 (high-s and malformed
//! signatures refused).
//! Must not: decide whether a signer may act for an account or whether a nonce is fresh (the
//! gateway does, with the account registry), or touch engine state.

use secp256k1::Message;
use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use sha3::{Digest, Keccak256};

/// A 20-byte Ethereum address.
pub type Address = [u8; 20];

/// keccak256.
pub fn keccak(bytes: &[u8]) -> [u8; 32] {
    Keccak256::digest(bytes).into()
}

/// Why a signature was refused. Each maps to a stable API error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Not 65 bytes of r || s || v with v in {0, 1, 27, 28}.
    #[error("malformed signature")]
    Malformed,
    /// s in the upper half of the curve order (a malleated signature).
    #[error("high-s signature")]
    HighS,
    /// No public key recovers from it.
    #[error("signature does not recover")]
    Unrecoverable,
}

/// secp256k1 curve order / 2, big-endian.
const HALF_ORDER: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x5d, 0x57, 0x6e, 0x73, 0x57, 0xa4, 0x50, 0x1d, 0xdf, 0xe9, 0x2f, 0x46, 0x68, 0x1b, 0x20, 0xa0,
];

/// The address that signed `digest`, from a 65-byte `r || s || v` signature.
pub fn recover(digest: &[u8; 32], signature: &[u8]) -> Result<Address, SignatureError> {
    let sig: &[u8; 65] = signature
        .try_into()
        .map_err(|_| SignatureError::Malformed)?;
    let v = match sig[64] {
        0 | 27 => 0,
        1 | 28 => 1,
        _ => return Err(SignatureError::Malformed),
    };
    if sig[32..64] > HALF_ORDER[..] {
        return Err(SignatureError::HighS);
    }
    let recid = RecoveryId::try_from(v).map_err(|_| SignatureError::Malformed)?;
    let recoverable = RecoverableSignature::from_compact(&sig[..64], recid)
        .map_err(|_| SignatureError::Malformed)?;
    let key = recoverable
        .recover(Message::from_digest(*digest))
        .map_err(|_| SignatureError::Unrecoverable)?;
    Ok(address_of(&key))
}

/// A 65-byte `r || s || v` signature (v = 27 + recovery id, low s) of `digest` by `key`: what
/// `recover` reads back.
pub fn sign(key: &secp256k1::SecretKey, digest: &[u8; 32]) -> [u8; 65] {
    let (recid, sig) =
        RecoverableSignature::sign_ecdsa_recoverable(Message::from_digest(*digest), key)
            .serialize_compact();
    let mut out = [0u8; 65];
    out[..64].copy_from_slice(&sig);
    out[64] = 27 + recid.to_u8();
    out
}

/// The Ethereum address of a public key.
pub fn address_of(key: &secp256k1::PublicKey) -> Address {
    let hash = keccak(&key.serialize_uncompressed()[1..]);
    hash[12..].try_into().expect("20 bytes")
}

fn word_u128(v: u128) -> [u8; 32] {
    let mut w = [0u8; 32];
    w[16..].copy_from_slice(&v.to_be_bytes());
    w
}

fn word_i128(v: i128) -> [u8; 32] {
    let mut w = if v < 0 { [0xFF; 32] } else { [0u8; 32] };
    w[16..].copy_from_slice(&v.to_be_bytes());
    w
}

fn word_address(a: &Address) -> [u8; 32] {
    let mut w = [0u8; 32];
    w[12..].copy_from_slice(a);
    w
}

/// An EIP-712 domain (`EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    /// `name`.
    pub name: String,
    /// `version`.
    pub version: String,
    /// `chainId`.
    pub chain_id: u64,
    /// `verifyingContract`.
    pub verifying_contract: Address,
}

/// Derive's matching contract, which unmodified ccxt signs for (see `derive_compat`).
pub const DERIVE_MATCHING: Address = [
    0xeb, 0x8d, 0x77, 0x0e, 0xc1, 0x8d, 0xb9, 0x8d, 0xb9, 0x22, 0xe9, 0xd8, 0x32, 0x60, 0xa5, 0x85,
    0xb9, 0xf0, 0xde, 0xad,
];

/// Derive's trade module, the `module` field of every order ccxt signs.
pub const DERIVE_TRADE_MODULE: Address = [
    0xb8, 0xd2, 0x0c, 0x2b, 0x7a, 0x1a, 0xd2, 0xee, 0x33, 0xbc, 0x50, 0xef, 0x10, 0x87, 0x6e, 0xd3,
    0x03, 0x5b, 0x5e, 0x7b,
];

impl Domain {
    /// The compatibility domain stock ccxt 4.5.90 hard-codes: name "Matching", version "1.0",
    /// Derive's matching contract, chain id 1 (or 11155111 in ccxt's sandbox mode). It names
    /// another venue's contract: a signature made for Optio under it is also valid for Derive
    /// and vice versa, so the gateway only accepts it where configured, and per-owner nonces plus
    /// signature expiry limit a replayed intent to one use within its window.
    pub fn derive_compat(sandbox: bool) -> Self {
        Self {
            name: "Matching".into(),
            version: "1.0".into(),
            chain_id: if sandbox { 11_155_111 } else { 1 },
            verifying_contract: DERIVE_MATCHING,
        }
    }

    /// Optio's native domain: the real chain id and Optio's own settlement contract.
    pub fn optio(chain_id: u64, contract: Address) -> Self {
        Self {
            name: "Optio".into(),
            version: "1".into(),
            chain_id,
            verifying_contract: contract,
        }
    }

    /// The domain separator.
    pub fn separator(&self) -> [u8; 32] {
        let typehash = keccak(
            b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)",
        );
        let mut enc = Vec::with_capacity(5 * 32);
        enc.extend_from_slice(&typehash);
        enc.extend_from_slice(&keccak(self.name.as_bytes()));
        enc.extend_from_slice(&keccak(self.version.as_bytes()));
        enc.extend_from_slice(&word_u128(u128::from(self.chain_id)));
        enc.extend_from_slice(&word_address(&self.verifying_contract));
        keccak(&enc)
    }
}

/// The trade module's order data (`abi.encode` of 7 static words). Prices and amounts are
/// fixed point with 18 decimals, as Derive's contracts and ccxt use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TradeData {
    /// Instrument's base asset address.
    pub asset: Address,
    /// Instrument's sub id.
    pub sub_id: u128,
    /// Limit price x 1e18.
    pub limit_price: i128,
    /// Amount x 1e18 (positive; direction is `is_bid`).
    pub amount: i128,
    /// Maximum fee x 1e18.
    pub max_fee: u128,
    /// Subaccount receiving the fill.
    pub recipient_id: u128,
    /// Buy (true) or sell.
    pub is_bid: bool,
}

impl TradeData {
    /// An order in Optio's engine units (prices and fees in micro-USDC, amounts in 1e-8
    /// contracts) as the 18-decimal data the user signs: the gateway checks signatures against
    /// it and the authorization challenge rebuilds it from the posted records. A negative fee
    /// cap signs as 0.
    pub fn from_engine_units(
        asset: Address,
        instrument: u32,
        limit_price: i64,
        amount: i64,
        max_fee: i64,
        subaccount: u64,
        is_bid: bool,
    ) -> Self {
        TradeData {
            asset,
            sub_id: u128::from(instrument),
            limit_price: i128::from(limit_price) * 1_000_000_000_000,
            amount: i128::from(amount) * 10_000_000_000,
            max_fee: u128::try_from(max_fee).unwrap_or(0) * 1_000_000_000_000,
            recipient_id: u128::from(subaccount),
            is_bid,
        }
    }

    /// The 224-byte ABI encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(224);
        out.extend_from_slice(&word_address(&self.asset));
        out.extend_from_slice(&word_u128(self.sub_id));
        out.extend_from_slice(&word_i128(self.limit_price));
        out.extend_from_slice(&word_i128(self.amount));
        out.extend_from_slice(&word_u128(self.max_fee));
        out.extend_from_slice(&word_u128(self.recipient_id));
        out.extend_from_slice(&word_u128(u128::from(self.is_bid)));
        out
    }
}

/// The `module` of an owner's signed session key change (`Action` under Optio's domain, signed
/// by the owner): the ASCII of `optio:session-key`, zero-padded to 20 bytes. Its data is
/// `SessionKeyChange::encode`.
pub const SESSION_KEY_MODULE: Address = *b"optio:session-key\0\0\0";

/// The `module` of an owner's signed margin mode change: the ASCII of `optio:margin-mode`,
/// zero-padded. Its data is `MarginModeChange::encode`.
pub const MARGIN_MODE_MODULE: Address = *b"optio:margin-mode\0\0\0";

/// What an owner signs to register a session key (or, with expiry 0, revoke it), as an
/// `Action`'s data with `SESSION_KEY_MODULE`: `abi.encode(address key, uint256 expiryMs)`.
/// The rollup judges every posted session key change against it (`OptioJudge.changeSigned`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionKeyChange {
    /// The key.
    pub key: Address,
    /// Engine time (ms) it stops being valid; 0 revokes it.
    pub expiry_ms: u64,
}

impl SessionKeyChange {
    /// The 64-byte ABI encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&word_address(&self.key));
        out.extend_from_slice(&word_u128(u128::from(self.expiry_ms)));
        out
    }
}

/// What an owner signs to change an account's margin mode, as an `Action`'s data with
/// `MARGIN_MODE_MODULE`: `abi.encode(uint256 mode)`, the mode's code (0 worst case, 1
/// standard, 2 portfolio).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarginModeChange {
    /// The mode's code.
    pub mode: u8,
}

impl MarginModeChange {
    /// The 32-byte ABI encoding.
    pub fn encode(&self) -> Vec<u8> {
        word_u128(u128::from(self.mode)).to_vec()
    }
}

/// An owner's change of its account, as it signs it: an `Action` with the change's module and
/// data, signed by the owner (the gateway checks it, the rollup judges every posted change
/// against it, `OptioJudge.changeSigned`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountChange {
    /// A session key registered, extended, shortened or revoked.
    SessionKey(SessionKeyChange),
    /// A margin mode chosen.
    MarginMode(MarginModeChange),
}

impl AccountChange {
    /// The action the owner `owner` signs for this change of `subaccount`, with `nonce` and
    /// signature expiry `expiry` (seconds).
    pub fn action(&self, subaccount: u64, nonce: u64, expiry: u64, owner: Address) -> Action {
        let (module, data) = match self {
            AccountChange::SessionKey(c) => (SESSION_KEY_MODULE, c.encode()),
            AccountChange::MarginMode(c) => (MARGIN_MODE_MODULE, c.encode()),
        };
        Action {
            subaccount_id: subaccount,
            nonce,
            module,
            data,
            expiry,
            owner,
            signer: owner,
        }
    }
}

/// An EIP-712 digest: `keccak(0x19 0x01 || separator || structHash)`.
pub fn typed_digest(domain_separator: &[u8; 32], struct_hash: &[u8; 32]) -> [u8; 32] {
    let mut enc = Vec::with_capacity(66);
    enc.extend_from_slice(&[0x19, 0x01]);
    enc.extend_from_slice(domain_separator);
    enc.extend_from_slice(struct_hash);
    keccak(&enc)
}

/// `Action(uint256 subaccountId,uint256 nonce,address module,bytes data,uint256 expiry,address owner,address signer)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// Subaccount acting.
    pub subaccount_id: u64,
    /// Unique per owner.
    pub nonce: u64,
    /// Module (the trade module for orders).
    pub module: Address,
    /// Module data (for orders, `TradeData::encode`).
    pub data: Vec<u8>,
    /// Signature expiry, seconds since the epoch.
    pub expiry: u64,
    /// Subaccount owner.
    pub owner: Address,
    /// The key that signed (owner or a registered session key).
    pub signer: Address,
}

impl Action {
    /// The EIP-712 struct hash.
    pub fn struct_hash(&self) -> [u8; 32] {
        let typehash = keccak(b"Action(uint256 subaccountId,uint256 nonce,address module,bytes data,uint256 expiry,address owner,address signer)");
        let mut enc = Vec::with_capacity(8 * 32);
        enc.extend_from_slice(&typehash);
        enc.extend_from_slice(&word_u128(u128::from(self.subaccount_id)));
        enc.extend_from_slice(&word_u128(u128::from(self.nonce)));
        enc.extend_from_slice(&word_address(&self.module));
        enc.extend_from_slice(&keccak(&self.data));
        enc.extend_from_slice(&word_u128(u128::from(self.expiry)));
        enc.extend_from_slice(&word_address(&self.owner));
        enc.extend_from_slice(&word_address(&self.signer));
        keccak(&enc)
    }

    /// The digest signed under `domain_separator`.
    pub fn digest(&self, domain_separator: &[u8; 32]) -> [u8; 32] {
        typed_digest(domain_separator, &self.struct_hash())
    }
}

/// One instrument's mark and risk array as the risk oracle signs it, EIP-712 under Optio's
/// domain: `OracleMark(uint32 instrument,int64 mark,int64 index,int64[] risk,uint64
/// publishedMs)`, the index being its underlying's in the same update. The
/// signature travels with the update into the log and is posted beside the batch's mark op, so
/// that the rollup can judge a mark the oracle never signed (`OptioJudge.priceAttested`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OracleMark<'a> {
    /// Instrument id.
    pub instrument: u32,
    /// Mark per contract, micro-USDC.
    pub mark: i64,
    /// The underlying's index price in the same update, micro-USDC (committed with the mark:
    /// Standard margin and the short-option floor read it).
    pub index: i64,
    /// P&L of one long contract per scenario, micro-USDC.
    pub risk: &'a [i64],
    /// When the oracle published the update it belongs to, ms since the epoch.
    pub published_ms: u64,
}

impl OracleMark<'_> {
    /// The EIP-712 struct hash (an `int64[]` hashes as keccak of its elements, each a word).
    pub fn struct_hash(&self) -> [u8; 32] {
        let typehash = keccak(
            b"OracleMark(uint32 instrument,int64 mark,int64 index,int64[] risk,uint64 publishedMs)",
        );
        let risk: Vec<u8> = self
            .risk
            .iter()
            .flat_map(|v| word_i128(i128::from(*v)))
            .collect();
        let mut enc = Vec::with_capacity(6 * 32);
        enc.extend_from_slice(&typehash);
        enc.extend_from_slice(&word_u128(u128::from(self.instrument)));
        enc.extend_from_slice(&word_i128(i128::from(self.mark)));
        enc.extend_from_slice(&word_i128(i128::from(self.index)));
        enc.extend_from_slice(&keccak(&risk));
        enc.extend_from_slice(&word_u128(u128::from(self.published_ms)));
        keccak(&enc)
    }

    /// The digest signed under `domain_separator` (Optio's domain for the rollup).
    pub fn digest(&self, domain_separator: &[u8; 32]) -> [u8; 32] {
        typed_digest(domain_separator, &self.struct_hash())
    }
}

/// An expired instrument's settlement price as the risk oracle signs it, EIP-712 under Optio's
/// domain: `OracleSettlement(uint32 instrument,int64 price,uint64 publishedMs)` (the
/// underlying's TWAP over the settlement window before the expiry, which the oracle computes
/// from the index it published). The signature travels with the update into the log and is
/// posted beside the batch's settlement op, so that the rollup can judge a settlement price
/// the oracle never signed (`OptioJudge.priceAttested`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OracleSettlement {
    /// Instrument id.
    pub instrument: u32,
    /// Settlement price of the underlying, micro-USDC.
    pub price: i64,
    /// When the oracle published the update it belongs to, ms since the epoch.
    pub published_ms: u64,
}

impl OracleSettlement {
    /// The EIP-712 struct hash.
    pub fn struct_hash(&self) -> [u8; 32] {
        let typehash =
            keccak(b"OracleSettlement(uint32 instrument,int64 price,uint64 publishedMs)");
        let mut enc = Vec::with_capacity(4 * 32);
        enc.extend_from_slice(&typehash);
        enc.extend_from_slice(&word_u128(u128::from(self.instrument)));
        enc.extend_from_slice(&word_i128(i128::from(self.price)));
        enc.extend_from_slice(&word_u128(u128::from(self.published_ms)));
        keccak(&enc)
    }

    /// The digest signed under `domain_separator` (Optio's domain for the rollup).
    pub fn digest(&self, domain_separator: &[u8; 32]) -> [u8; 32] {
        typed_digest(domain_separator, &self.struct_hash())
    }
}

/// Parses a `0x`-prefixed hex string into bytes.
pub fn parse_hex(text: &str) -> Option<Vec<u8>> {
    let body = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))?;
    if body.len() % 2 != 0 || body.len() > 4_096 {
        return None;
    }
    (0..body.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(body.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Parses a `0x` address.
pub fn parse_address(text: &str) -> Option<Address> {
    parse_hex(text)?.try_into().ok()
}
