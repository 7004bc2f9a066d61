//! The risk oracle: turns a volatility surface into the engine's risk inputs, and signs them.
//!
//! Owns: conversion of floating-point marks and scenario P&L into fixed point (named rounding),
//! the signed envelope of an update, each mark's own EIP-712 signature (what L1 judges:
//! `optio_intents::OracleMark`), and their verification.
//! Must not: run inside the engine. The engine receives updates as sequenced inputs; the gateway
//! verifies their signature against the configured oracle key before sequencing.

use optio_pricing::Right;
use optio_pricing::risk::{Contract, Scenario, value};
use optio_pricing::svi::Surface;
use optio_types::{
    Amount, InstrumentId, InstrumentKind, InstrumentSpec, MONEY_SCALE, MarkUpdate, OptionRight,
    OracleUpdate, Price, QTY_SCALE, SettlementUpdate,
};
use secp256k1::{Message, PublicKey, SecretKey, ecdsa};

const YEAR_MS: f64 = 365.0 * 86_400_000.0;
const DOMAIN: &[u8] = b"optio-oracle-update-v1";

/// Why an update could not be built, signed or verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OracleError {
    /// The signature does not verify against the oracle key (tampered, foreign or high-s).
    #[error("oracle signature does not verify")]
    BadSignature,
    /// Not a 32-byte secret key in the curve's range.
    #[error("invalid oracle secret key")]
    BadKey,
    /// A mark's own signature does not recover to the oracle's address under the rollup's
    /// domain (or is malformed or high-s).
    #[error("the mark of instrument {0} is not signed by the oracle")]
    BadMarkSignature(u32),
    /// A settlement price's own signature does not recover to the oracle's address under the
    /// rollup's domain (or is malformed or high-s).
    #[error("the settlement price of instrument {0} is not signed by the oracle")]
    BadSettlementSignature(u32),
    /// The surface produced a non-finite value.
    #[error("non-finite value from the surface for instrument {0}")]
    NonFinite(u32),
}

/// An update and the oracle's signature over its canonical bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedUpdate {
    /// The update.
    pub update: OracleUpdate,
    /// Compact ECDSA signature (r || s, low s).
    pub signature: [u8; 64],
}

fn digest(update: &OracleUpdate) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(DOMAIN);
    hasher.update(&update.encode());
    *hasher.finalize().as_bytes()
}

/// The oracle's signing key.
pub struct OracleSigner {
    key: SecretKey,
}

impl OracleSigner {
    /// From 32 secret bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, OracleError> {
        SecretKey::from_secret_bytes(bytes)
            .map(|key| Self { key })
            .map_err(|_| OracleError::BadKey)
    }

    /// The public key the gateway is configured with.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_secret_key(&self.key)
    }

    /// Signs each mark and settlement price of an update for the rollup whose domain separator
    /// is `domain` (`optio_intents::Domain::optio`), then the whole update.
    pub fn sign(&self, mut update: OracleUpdate, domain: &[u8; 32]) -> SignedUpdate {
        let digests: Vec<[u8; 32]> = update
            .marks
            .iter()
            .map(|m| mark_digest(domain, &update, m))
            .collect();
        for (m, digest) in update.marks.iter_mut().zip(&digests) {
            m.attestation = optio_intents::sign(&self.key, digest);
        }
        for p in &mut update.settlements {
            p.attestation = optio_intents::sign(
                &self.key,
                &settlement_digest(domain, update.published_ms, p),
            );
        }
        let signature =
            ecdsa::sign(Message::from_digest(digest(&update)), &self.key).serialize_compact();
        SignedUpdate { update, signature }
    }
}

/// The EIP-712 digest mark `m` of `update` is signed over (with the update's index and time).
pub fn mark_digest(domain: &[u8; 32], update: &OracleUpdate, m: &MarkUpdate) -> [u8; 32] {
    let risk: Vec<i64> = m.risk_array.iter().map(|a| a.0).collect();
    optio_intents::OracleMark {
        instrument: m.instrument.0,
        mark: m.mark.0,
        index: update.index_price.0,
        risk: &risk,
        published_ms: update.published_ms,
    }
    .digest(domain)
}

/// The EIP-712 digest a settlement price of an update published at `published_ms` is signed
/// over.
pub fn settlement_digest(domain: &[u8; 32], published_ms: u64, p: &SettlementUpdate) -> [u8; 32] {
    optio_intents::OracleSettlement {
        instrument: p.instrument.0,
        price: p.price.0,
        published_ms,
    }
    .digest(domain)
}

/// Checks an update's signature and each mark's and settlement price's own one under the rollup's domain `domain`
/// (libsecp256k1 refuses high-s signatures, and so does `optio_intents::recover`, as L1 does).
pub fn verify(
    signed: &SignedUpdate,
    oracle: &PublicKey,
    domain: &[u8; 32],
) -> Result<(), OracleError> {
    let sig =
        ecdsa::Signature::from_compact(&signed.signature).map_err(|_| OracleError::BadSignature)?;
    ecdsa::verify(&sig, Message::from_digest(digest(&signed.update)), oracle)
        .map_err(|_| OracleError::BadSignature)?;
    let address = optio_intents::address_of(oracle);
    for m in &signed.update.marks {
        let digest = mark_digest(domain, &signed.update, m);
        if optio_intents::recover(&digest, &m.attestation) != Ok(address) {
            return Err(OracleError::BadMarkSignature(m.instrument.0));
        }
    }
    for p in &signed.update.settlements {
        let digest = settlement_digest(domain, signed.update.published_ms, p);
        if optio_intents::recover(&digest, &p.attestation) != Ok(address) {
            return Err(OracleError::BadSettlementSignature(p.instrument.0));
        }
    }
    Ok(())
}

/// The pricing view of an instrument at `now_ms`.
pub fn contract(spec: &InstrumentSpec, now_ms: u64) -> Contract {
    let multiplier = spec.contract_multiplier.0 as f64 / QTY_SCALE as f64;
    match spec.name.kind {
        InstrumentKind::Option {
            strike,
            right,
            expiry,
        } => Contract::Option {
            right: if right == OptionRight::Call {
                Right::Call
            } else {
                Right::Put
            },
            strike: strike.0 as f64 / MONEY_SCALE as f64,
            t: ((expiry.expiry_ms() as f64 - now_ms as f64) / YEAR_MS).max(1e-9),
            multiplier,
        },
        InstrumentKind::Perpetual => Contract::Perpetual { multiplier },
    }
}

/// Each of `specs` with its id, when they were listed in this order from id 0: what
/// `build_update` and `SettlementFeed::attach` take.
pub fn numbered(specs: &[InstrumentSpec]) -> Vec<(InstrumentId, &InstrumentSpec)> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| (InstrumentId(i as u32), s))
        .collect()
}

/// Builds the update for `instruments` (all of one underlying) from `surface` at `now_ms`
/// (unsigned: `OracleSigner::sign` signs its marks and the whole).
///
/// Rounding: a mark is rounded to the nearest micro-USDC and kept inside `[1, max_price]`; each
/// scenario P&L is rounded down (a long's gain understated, its loss overstated) and kept such
/// that the shocked value stays inside `[0, max_price]`.
pub fn build_update(
    underlying: &str,
    surface: &Surface,
    scenarios: &[Scenario],
    instruments: &[(InstrumentId, &InstrumentSpec)],
    now_ms: u64,
) -> Result<OracleUpdate, OracleError> {
    let micro = MONEY_SCALE as f64;
    let shocked: Vec<Surface> = scenarios
        .iter()
        .map(|s| surface.shocked(s.spot_shock, s.vol_shock))
        .collect();
    let mut marks = Vec::with_capacity(instruments.len());
    for (id, spec) in instruments {
        let c = contract(spec, now_ms);
        let max = spec
            .max_price()
            .map_err(|_| OracleError::NonFinite(id.0))?
            .0;
        let base = value(surface, &c) * micro;
        if !base.is_finite() {
            return Err(OracleError::NonFinite(id.0));
        }
        let mark = (base.round() as i64).clamp(1, max);
        let mut risk_array = Vec::with_capacity(scenarios.len());
        for s in &shocked {
            let v = value(s, &c) * micro;
            if !v.is_finite() {
                return Err(OracleError::NonFinite(id.0));
            }
            let pnl = (v - mark as f64).floor() as i64;
            risk_array.push(Amount(pnl.clamp(-mark, max - mark)));
        }
        marks.push(MarkUpdate {
            instrument: *id,
            mark: Price(mark),
            risk_array,
            attestation: [0; 65],
        });
    }
    Ok(OracleUpdate {
        underlying: underlying.to_owned(),
        published_ms: now_ms,
        index_price: Price((surface.spot * micro).round() as i64),
        marks,
        settlements: Vec::new(),
    })
}

/// The index an oracle published for one underlying, kept as long as a settlement price may
/// still need it: what it computes an expired instrument's settlement price from.
#[derive(Debug, Clone, Default)]
pub struct IndexHistory {
    /// `(published_ms, index)`, oldest first, strictly increasing in time.
    samples: std::collections::VecDeque<(u64, Price)>,
}

impl IndexHistory {
    /// Records the index published at `at_ms` (ignored unless later than the last), and drops
    /// what no window ending `keep_ms` before it or later can read (the last sample before such
    /// a window stays: it holds the price at the window's start).
    pub fn record(&mut self, at_ms: u64, index: Price, keep_ms: u64) {
        if self.samples.back().is_some_and(|(t, _)| *t >= at_ms) {
            return;
        }
        self.samples.push_back((at_ms, index));
        let cutoff = at_ms.saturating_sub(keep_ms);
        while self.samples.len() >= 2 && self.samples[1].0 <= cutoff {
            self.samples.pop_front();
        }
    }

    /// The settlement price of an instrument expiring at `expiry_ms`: the time-weighted average
    /// of the index over the `window_ms` before it (each sample counts from its time until the
    /// next, the one before the window from the window's start), rounded down to the
    /// micro-USDC; `None` if no sample falls within the window.
    pub fn twap(&self, expiry_ms: u64, window_ms: u64) -> Option<Price> {
        let start = expiry_ms.saturating_sub(window_ms);
        if !self
            .samples
            .iter()
            .any(|(t, _)| *t >= start && *t <= expiry_ms)
        {
            return None;
        }
        let (mut weighted, mut total) = (0i128, 0i128);
        let mut current: Option<(u64, Price)> = None;
        for &(t, p) in self.samples.iter().filter(|(t, _)| *t <= expiry_ms) {
            if let Some((from, price)) = current
                && t > from
            {
                weighted += i128::from(price.0) * i128::from(t - from);
                total += i128::from(t - from);
            }
            current = Some((t.max(start), p));
        }
        if let Some((from, price)) = current
            && expiry_ms > from
        {
            weighted += i128::from(price.0) * i128::from(expiry_ms - from);
            total += i128::from(expiry_ms - from);
        }
        if total == 0 {
            return current.map(|(_, p)| p);
        }
        i64::try_from(weighted.div_euclid(total)).ok().map(Price)
    }
}

/// The settlement side of an oracle for one underlying: the index it published, and the
/// settlement price of each instrument past its expiry until an update carrying it is taken
/// (the engine passes over an instrument already settled, so repeating one is harmless).
#[derive(Debug, Clone)]
pub struct SettlementFeed {
    index: IndexHistory,
    window_ms: u64,
    taken: std::collections::BTreeSet<u32>,
}

impl SettlementFeed {
    /// A feed averaging over `window_ms` before each expiry (`RiskConfig::settlement_window_ms`).
    pub fn new(window_ms: u64) -> Self {
        Self {
            index: IndexHistory::default(),
            window_ms,
            taken: Default::default(),
        }
    }

    /// Records `update`'s index and adds to it the settlement price of each of `instruments`
    /// (of its underlying) expired by its time and not yet taken, when the index history has a
    /// sample in the instrument's window (unsigned: `OracleSigner::sign` signs them).
    pub fn attach(
        &mut self,
        update: &mut OracleUpdate,
        instruments: &[(InstrumentId, &InstrumentSpec)],
    ) {
        // Kept for twice the window, so an instrument expired a while ago still settles.
        self.index
            .record(update.published_ms, update.index_price, 2 * self.window_ms);
        for (id, spec) in instruments {
            if let Some(expiry) = spec.expiry_ms()
                && expiry <= update.published_ms
                && !self.taken.contains(&id.0)
                && let Some(price) = self.index.twap(expiry, self.window_ms)
            {
                update.settlements.push(SettlementUpdate {
                    instrument: *id,
                    price,
                    attestation: [0; 65],
                });
            }
        }
    }

    /// Marks the settlement prices of an update the engine took as published for good.
    pub fn taken(&mut self, update: &OracleUpdate) {
        self.taken
            .extend(update.settlements.iter().map(|p| p.instrument.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use optio_pricing::risk::default_scenarios;
    use optio_pricing::svi::{Slice, Svi};
    use optio_types::UpdateFormat;

    fn surface() -> Surface {
        let svi = Svi {
            a: 0.004,
            b: 0.04,
            rho: -0.3,
            m: 0.0,
            sigma: 0.2,
        };
        Surface::new(
            60_000.0,
            0.0,
            vec![
                Slice { t: 0.02, svi },
                Slice {
                    t: 0.2,
                    svi: Svi { a: 0.04, ..svi },
                },
            ],
        )
        .expect("valid")
    }

    fn specs() -> Vec<InstrumentSpec> {
        [
            "BTC-27DEC24-60000-C",
            "BTC-27DEC24-50000-P",
            "BTC-PERPETUAL",
        ]
        .iter()
        .map(|n| {
            InstrumentSpec::with_defaults(n.parse().expect("valid"), Price(200_000 * MONEY_SCALE))
        })
        .collect()
    }

    /// 2024-12-19T09:20Z, ~8 days to expiry.
    const NOW: u64 = 1_734_600_000_000;

    /// The update for `specs()` at `NOW`, unsigned.
    fn update() -> OracleUpdate {
        let specs = specs();
        let list = numbered(&specs);
        build_update("BTC", &surface(), &default_scenarios(), &list, NOW).expect("builds")
    }

    #[test]
    fn builds_marks_and_arrays_in_fixed_point() {
        let scenarios = default_scenarios();
        let u = update();
        assert_eq!(u.index_price, Price(60_000 * MONEY_SCALE));
        assert!(
            u.marks
                .iter()
                .all(|m| m.risk_array.len() == scenarios.len() && m.mark.is_positive())
        );
        // The perpetual's risk array is exactly the spot move.
        let perp = &u.marks[2];
        assert_eq!(perp.mark, Price(60_000 * MONEY_SCALE));
        assert_eq!(perp.risk_array[0], Amount(-12_000 * MONEY_SCALE));
        // An ATM call gains when spot rises and vol rises.
        let call = &u.marks[0];
        assert!(call.risk_array[scenarios.len() - 1] > call.risk_array[0]);
        // Round trip through the canonical encoding.
        assert_eq!(
            OracleUpdate::decode(&u.encode(), UpdateFormat::Current, 10, 64),
            Ok(u)
        );
    }

    const DOMAIN_A: [u8; 32] = [0xa1; 32];
    const DOMAIN_B: [u8; 32] = [0xb2; 32];

    /// `u` with its envelope signed again by `signer`, its marks' signatures kept.
    fn envelope(signer: &OracleSigner, u: OracleUpdate) -> SignedUpdate {
        let signature =
            ecdsa::sign(Message::from_digest(digest(&u)), &signer.key).serialize_compact();
        SignedUpdate {
            update: u,
            signature,
        }
    }

    #[test]
    fn each_mark_carries_its_own_signature_for_one_rollup() {
        let signer = OracleSigner::from_bytes([7; 32]).expect("valid key");
        let signed = signer.sign(update(), &DOMAIN_A);
        // Each mark's signature recovers to the oracle's address over exactly its digest.
        let address = optio_intents::address_of(&signer.public_key());
        for m in &signed.update.marks {
            let digest = mark_digest(&DOMAIN_A, &signed.update, m);
            assert_eq!(optio_intents::recover(&digest, &m.attestation), Ok(address));
        }
        // Signed for another rollup: the envelope verifies, the marks do not.
        assert_eq!(
            verify(&signed, &signer.public_key(), &DOMAIN_B),
            Err(OracleError::BadMarkSignature(0))
        );
        // A mark changed (or its signature moved to another instrument) under a fresh envelope
        // is refused by its own signature.
        let mut moved = signed.update.clone();
        moved.marks.swap(0, 1);
        (moved.marks[0].instrument, moved.marks[1].instrument) = (InstrumentId(0), InstrumentId(1));
        assert_eq!(
            verify(&envelope(&signer, moved), &signer.public_key(), &DOMAIN_A),
            Err(OracleError::BadMarkSignature(0))
        );
        let mut changed = signed.update.clone();
        changed.marks[2].risk_array[5].0 -= 1;
        assert_eq!(
            verify(&envelope(&signer, changed), &signer.public_key(), &DOMAIN_A),
            Err(OracleError::BadMarkSignature(2))
        );
        // Each mark signs the update's index with it: another index refuses the first mark.
        let mut reindexed = signed.update.clone();
        reindexed.index_price.0 += 1;
        assert_eq!(
            verify(
                &envelope(&signer, reindexed),
                &signer.public_key(),
                &DOMAIN_A
            ),
            Err(OracleError::BadMarkSignature(0))
        );
        // Replayed with another time: the time is part of what each mark signs.
        let mut later = signed.update.clone();
        later.published_ms += 1;
        assert_eq!(
            verify(&envelope(&signer, later), &signer.public_key(), &DOMAIN_A),
            Err(OracleError::BadMarkSignature(0))
        );
        assert_eq!(
            OracleUpdate::decode(&signed.update.encode(), UpdateFormat::Current, 10, 64).as_ref(),
            Ok(&signed.update)
        );
    }

    #[test]
    fn signatures_bind_the_update_and_the_key() {
        let signer = OracleSigner::from_bytes([7; 32]).expect("valid key");
        let other = OracleSigner::from_bytes([8; 32]).expect("valid key");
        let signed = signer.sign(update(), &DOMAIN_A);
        assert_eq!(verify(&signed, &signer.public_key(), &DOMAIN_A), Ok(()));
        assert_eq!(
            verify(&signed, &other.public_key(), &DOMAIN_A),
            Err(OracleError::BadSignature)
        );
        let mut tampered = signed.clone();
        tampered.update.index_price.0 += 1;
        assert_eq!(
            verify(&tampered, &signer.public_key(), &DOMAIN_A),
            Err(OracleError::BadSignature)
        );
        // The same signature with s replaced by n - s (high s) is refused.
        let mut high_s = signed.clone();
        let n: [u8; 32] = [
            0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0xFF, 0xFE, 0xBA, 0xAE, 0xDC, 0xE6, 0xAF, 0x48, 0xA0, 0x3B, 0xBF, 0xD2, 0x5E, 0x8C,
            0xD0, 0x36, 0x41, 0x41,
        ];
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let d = i16::from(n[i]) - i16::from(signed.signature[32 + i]) - borrow;
            high_s.signature[32 + i] = d.rem_euclid(256) as u8;
            borrow = i16::from(d < 0);
        }
        assert_eq!(
            verify(&high_s, &signer.public_key(), &DOMAIN_A),
            Err(OracleError::BadSignature)
        );
        assert_eq!(
            OracleSigner::from_bytes([0; 32]).err(),
            Some(OracleError::BadKey)
        );
    }

    /// A settlement price is signed on its own, like a mark: for one instrument, price, time
    /// and rollup.
    #[test]
    fn each_settlement_price_carries_its_own_signature() {
        let signer = OracleSigner::from_bytes([7; 32]).expect("valid key");
        let mut u = update();
        u.settlements.push(SettlementUpdate {
            instrument: InstrumentId(1),
            price: Price(58_000 * MONEY_SCALE),
            attestation: [0; 65],
        });
        let signed = signer.sign(u, &DOMAIN_A);
        assert_eq!(verify(&signed, &signer.public_key(), &DOMAIN_A), Ok(()));
        let address = optio_intents::address_of(&signer.public_key());
        let p = &signed.update.settlements[0];
        assert_eq!(
            optio_intents::recover(&settlement_digest(&DOMAIN_A, NOW, p), &p.attestation),
            Ok(address)
        );
        assert_eq!(
            verify(&signed, &signer.public_key(), &DOMAIN_B),
            Err(OracleError::BadMarkSignature(0))
        );
        for change in [
            |p: &mut SettlementUpdate| p.price.0 += 1,
            |p: &mut SettlementUpdate| p.instrument = InstrumentId(0),
        ] {
            let mut changed = signed.update.clone();
            change(&mut changed.settlements[0]);
            let instrument = changed.settlements[0].instrument.0;
            assert_eq!(
                verify(&envelope(&signer, changed), &signer.public_key(), &DOMAIN_A),
                Err(OracleError::BadSettlementSignature(instrument))
            );
        }
        assert_eq!(
            OracleUpdate::decode(&signed.update.encode(), UpdateFormat::Current, 10, 64).as_ref(),
            Ok(&signed.update)
        );
    }

    /// The settlement price is the index's time-weighted average over the window before the
    /// expiry: the sample before the window counts from its start, the last one until the
    /// expiry, samples after the expiry not at all; none inside the window: no price.
    #[test]
    fn the_settlement_price_is_the_time_weighted_index_before_expiry() {
        const MIN: u64 = 60_000;
        let expiry = 1_000 * MIN;
        let mut h = IndexHistory::default();
        assert_eq!(h.twap(expiry, 30 * MIN), None);
        let keep = 60 * MIN;
        h.record(expiry - 40 * MIN, Price(61_000 * MONEY_SCALE), keep);
        assert_eq!(h.twap(expiry, 30 * MIN), None, "no sample in the window");
        h.record(expiry - 20 * MIN, Price(59_000 * MONEY_SCALE), keep);
        h.record(expiry - 10 * MIN, Price(58_000 * MONEY_SCALE), keep);
        h.record(expiry + MIN, Price(1), keep);
        // (61,000 * 10 + 59,000 * 10 + 58,000 * 10) / 30 = 59,333.333333 (rounded down).
        assert_eq!(h.twap(expiry, 30 * MIN), Some(Price(59_333_333_333)));
        // A sample no later than the last is ignored.
        h.record(expiry - 5 * MIN, Price(1), keep);
        assert_eq!(h.twap(expiry, 30 * MIN), Some(Price(59_333_333_333)));
        // A sample exactly at the expiry counts for no time, but is in the window.
        let mut at = IndexHistory::default();
        at.record(expiry, Price(7), keep);
        assert_eq!(at.twap(expiry, 30 * MIN), Some(Price(7)));
        // What the window no longer reads is dropped, the sample at its start kept.
        let mut pruned = IndexHistory::default();
        for k in 0..100 {
            pruned.record(k * MIN, Price(k as i64 + 1), 30 * MIN);
        }
        assert_eq!(pruned.samples.len(), 31);
        assert_eq!(pruned.twap(99 * MIN, 30 * MIN), Some(Price(84)));
    }

    /// The feed adds an instrument's settlement price to each update from its expiry on (a
    /// perpetual never), until an update carrying it is taken.
    #[test]
    fn the_feed_settles_each_expired_instrument_until_taken() {
        let specs = specs();
        let list = numbered(&specs);
        let expiry = specs[0].expiry_ms().expect("an option");
        let mut feed = SettlementFeed::new(30 * 60_000);
        let at = |t: u64, feed: &mut SettlementFeed| {
            let mut u = update();
            u.published_ms = t;
            u.index_price = Price(60_000 * MONEY_SCALE);
            feed.attach(&mut u, &list);
            u
        };
        assert!(at(expiry - 60_000, &mut feed).settlements.is_empty());
        let due = at(expiry, &mut feed);
        let settled: Vec<u32> = due.settlements.iter().map(|p| p.instrument.0).collect();
        assert_eq!(settled, [0, 1], "both options, not the perpetual");
        assert!(
            due.settlements
                .iter()
                .all(|p| p.price == Price(60_000 * MONEY_SCALE))
        );
        assert_eq!(
            at(expiry + 1_000, &mut feed).settlements.len(),
            2,
            "repeated"
        );
        feed.taken(&due);
        assert!(at(expiry + 2_000, &mut feed).settlements.is_empty());
    }
}
