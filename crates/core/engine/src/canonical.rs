//! Snapshot and restore through the canonical state, and the state hash.

use optio_types::state::{AccountRecord, InstrumentRecord, OracleRecord, PositionRecord};
use optio_types::{AccountId, CanonicalState, InstrumentStatus, MarginModel, Side, TimeInForce};

use crate::book::Order;
use crate::engine::Engine;
use crate::invariants::InvariantViolation;
use crate::ledger::Account;

/// Why a snapshot could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The bytes are not a valid encoding.
    #[error("snapshot does not decode: {0}")]
    Decode(#[from] optio_types::codec::DecodeError),
    /// It decodes but describes an impossible state.
    #[error("snapshot breaks an invariant: {0}")]
    Invariant(#[from] InvariantViolation),
}

impl<M: MarginModel> Engine<M> {
    /// The state in canonical form.
    pub fn canonical(&self) -> CanonicalState {
        let instruments = self
            .instruments
            .iter()
            .map(|i| InstrumentRecord {
                spec: i.spec.clone(),
                status: i.status,
                settlement_price: i.settlement_price,
                mark: i
                    .mark
                    .as_ref()
                    .map(|(m, ra)| (*m, ra.iter().map(|a| optio_types::Amount(*a)).collect())),
            })
            .collect();
        let accounts = self
            .accounts
            .iter()
            .map(|a| AccountRecord {
                owner: a.owner,
                balance: a.balance,
                positions: a
                    .positions
                    .iter()
                    .map(|(id, slot)| (id, &self.positions[*slot as usize]))
                    .filter(|(_, p)| p.exposure.position.0 != 0 || p.realized_pnl.0 != 0)
                    .map(|(id, p)| PositionRecord {
                        instrument: *id,
                        qty: p.exposure.position,
                        cost: p.cost,
                        realized_pnl: p.realized_pnl,
                    })
                    .collect(),
                margin_mode: a.mode,
                liquidating_since: a.liquidating_since,
                session_keys: a.session_keys.iter().map(|(k, t)| (*k, *t)).collect(),
            })
            .collect();
        let mut orders = Vec::with_capacity(self.store.len());
        let mut slots = Vec::new();
        for inst in &self.instruments {
            slots.clear();
            inst.book.slots_in_priority(&self.store, &mut slots);
            orders.extend(slots.iter().map(|&s| self.store.get(s).rec));
        }
        let oracles = self
            .oracles
            .iter()
            .map(|(u, o)| OracleRecord {
                underlying: u.clone(),
                index_price: o.index_price,
                published_ms: o.published_ms,
                held: o.held,
            })
            .collect();
        CanonicalState {
            time_ms: self.time_ms,
            next_order_id: self.next_order_id,
            limits: self.limits,
            risk: self.risk,
            oracles,
            totals: self.totals,
            instruments,
            accounts,
            orders,
            unposted_expiries: self.unposted_expiries.iter().copied().collect(),
        }
    }

    /// blake3 of the canonical encoding.
    pub fn state_hash(&self) -> [u8; 32] {
        self.canonical().hash()
    }

    /// Snapshot bytes (the canonical encoding).
    pub fn snapshot(&self) -> Vec<u8> {
        self.canonical().encode()
    }

    /// Rebuilds an engine from snapshot bytes and audits it in full.
    pub fn restore_bytes(bytes: &[u8], margin: M) -> Result<Self, RestoreError> {
        let state = CanonicalState::decode(bytes)?;
        Self::restore(&state, margin)
    }

    /// Rebuilds an engine from a canonical state and audits it in full; a state that breaks any
    /// invariant is refused.
    pub fn restore(state: &CanonicalState, margin: M) -> Result<Self, RestoreError> {
        let bad = |what: &str| RestoreError::Invariant(InvariantViolation(what.to_owned()));
        if let Some(why) = state.risk.unprovable() {
            return Err(bad(why));
        }
        let mut engine = Engine::with_config(state.limits, state.risk, margin);
        for o in &state.oracles {
            if !o.index_price.is_positive() || engine.oracles.contains_key(&o.underlying) {
                return Err(bad("invalid oracle record"));
            }
            engine.oracles.insert(
                o.underlying.clone(),
                crate::risk::OracleState {
                    index_price: o.index_price,
                    published_ms: o.published_ms,
                    held: o.held,
                },
            );
        }
        engine.time_ms = state.time_ms;
        engine.next_order_id = state.next_order_id;
        engine.totals = state.totals;
        for rec in &state.instruments {
            rec.spec
                .validate()
                .map_err(|_| bad("invalid instrument spec"))?;
            if engine.names.contains_key(&rec.spec.name) {
                return Err(bad("duplicate instrument name"));
            }
            // An expired instrument may have its price and wait for the settlement budget.
            let priced = matches!(
                rec.status,
                InstrumentStatus::Expired | InstrumentStatus::Settled
            );
            if (rec.status == InstrumentStatus::Settled && rec.settlement_price.is_none())
                || (rec.settlement_price.is_some() && !priced)
            {
                return Err(bad(
                    "settlement price of a settled instrument only, or one expired",
                ));
            }
            let unexpired = matches!(
                rec.status,
                InstrumentStatus::Listed | InstrumentStatus::Active
            );
            if unexpired && rec.spec.expiry_ms().is_some_and(|t| t <= state.time_ms) {
                return Err(bad("unexpired instrument past its expiry"));
            }
            engine.insert_instrument(rec.spec.clone(), rec.status, rec.settlement_price);
            if let Some((mark, risk_array)) = &rec.mark {
                // A settled instrument's mark is its settlement value: zero out of the money.
                let settled = rec.status == InstrumentStatus::Settled;
                if risk_array.len() != state.risk.scenarios as usize
                    || !(mark.is_positive() || settled && mark.0 == 0)
                {
                    return Err(bad("mark or risk array malformed"));
                }
                let inst = engine.instruments.last_mut().expect("just inserted");
                inst.mark = Some((*mark, risk_array.iter().map(|a| a.0).collect()));
            }
        }
        for rec in &state.accounts {
            let mut acct = Account::new(rec.owner);
            acct.balance = rec.balance;
            acct.mode = rec.margin_mode;
            if rec.liquidating_since.is_some()
                && rec.margin_mode == optio_types::MarginMode::WorstCase
            {
                return Err(bad("a fully collateralized account cannot be liquidating"));
            }
            acct.liquidating_since = rec.liquidating_since;
            if rec.session_keys.windows(2).any(|w| w[0].0 >= w[1].0)
                || rec.session_keys.iter().any(|(k, _)| *k == rec.owner)
            {
                return Err(bad("session keys unsorted or equal to the owner"));
            }
            acct.session_keys = rec.session_keys.iter().copied().collect();
            engine.total_balances += i128::from(rec.balance.0);
            let account = AccountId(engine.accounts.len() as u32);
            engine.accounts.push(acct);
            let mut last = None;
            for p in &rec.positions {
                let inst = engine
                    .instruments
                    .get_mut(p.instrument.0 as usize)
                    .ok_or_else(|| bad("position in unknown instrument"))?;
                // A held position may cost nothing (a forced close of 0.96 contracts at a mark
                // of one micro-USDC moves them for a floor of 0); a flat one keeps no cost.
                if last.is_some_and(|l| l >= p.instrument)
                    || (p.qty.0 == 0 && p.realized_pnl.0 == 0)
                    || (p.qty.0 == 0 && p.cost.0 != 0)
                {
                    return Err(bad("positions unsorted, empty, or with cost but no size"));
                }
                last = Some(p.instrument);
                inst.net_position += i128::from(p.qty.0);
                if p.qty.0 != 0 {
                    inst.holders.insert(account);
                }
                let slot = engine.position_entry(account, p.instrument);
                let pos = &mut engine.positions[slot as usize];
                pos.exposure.position = p.qty;
                pos.cost = p.cost;
                pos.realized_pnl = p.realized_pnl;
            }
        }
        engine.settles_due = engine
            .instruments
            .iter()
            .enumerate()
            .filter(|(_, i)| {
                (i.status == InstrumentStatus::Expired && i.settlement_price.is_some())
                    || (i.status == InstrumentStatus::Settled && !i.holders.is_empty())
            })
            .map(|(n, _)| optio_types::InstrumentId(n as u32))
            .collect();
        for (n, &id) in state.unposted_expiries.iter().enumerate() {
            let expired = engine
                .instruments
                .get(id.0 as usize)
                .is_some_and(|i| i.status == InstrumentStatus::Expired);
            if !expired || (n > 0 && state.unposted_expiries[n - 1] >= id) {
                return Err(bad(
                    "unposted expiries unsorted, or of an instrument not expired",
                ));
            }
            engine.unposted_expiries.insert(id);
        }
        engine.covers_due = (0..engine.accounts.len() as u32)
            .map(AccountId)
            .filter(|&a| engine.cover_due(a))
            .collect();
        let mut sink = Vec::new();
        let mut last: Option<(u32, Side)> = None;
        for (n, o) in state.orders.iter().enumerate() {
            let inst = engine
                .instruments
                .get(o.instrument.0 as usize)
                .ok_or_else(|| bad("order in unknown instrument"))?;
            let acct = engine
                .accounts
                .get(o.account.0 as usize)
                .ok_or_else(|| bad("order of unknown account"))?;
            let valid_price = o.price.is_positive()
                && o.price.0 % inst.spec.tick_size.0 == 0
                && o.price <= inst.max_price;
            let valid_qty = o.remaining.is_positive()
                && o.remaining.0 % inst.spec.amount_step.0 == 0
                && o.filled.0 >= 0;
            let valid_tif = match o.time_in_force {
                TimeInForce::GoodTillCancelled => true,
                TimeInForce::GoodTillTime(t) => t > state.time_ms,
                _ => false,
            };
            // (That a session key's order lives no longer than the key is checked with the
            // other invariants below.)
            if inst.status != InstrumentStatus::Active
                || !valid_price
                || !valid_qty
                || !valid_tif
                || o.id.0 >= state.next_order_id
            {
                return Err(bad("order invalid for its instrument or time"));
            }
            let _ = acct;
            if engine.store.slot_of(o.id).is_some()
                || (o.client_order_id != 0
                    && engine
                        .client_index
                        .get(&(o.account.0, o.client_order_id))
                        .is_some())
            {
                return Err(bad("duplicate order id or client order id"));
            }
            // Orders must come grouped by instrument, bids before asks, in priority.
            let key = (o.instrument.0, o.side);
            if last.is_some_and(|l| l > key) {
                return Err(bad("orders not in book order"));
            }
            if let Some(prev) = n.checked_sub(1).map(|p| &state.orders[p])
                && (prev.instrument, prev.side) == (o.instrument, o.side)
                && match o.side {
                    Side::Buy => prev.price < o.price,
                    Side::Sell => prev.price > o.price,
                }
            {
                return Err(bad("orders not in price priority"));
            }
            last = Some(key);
            if o.is_quote {
                let pos = engine
                    .position_index
                    .get(&(o.account.0, o.instrument.0))
                    .map(|s| &engine.positions[s as usize]);
                if pos.is_some_and(|p| p.quotes[usize::from(o.side == Side::Sell)].is_some()) {
                    return Err(bad("two quotes on one side"));
                }
            }
            let order = Order::new(*o);
            engine.rest_order(order, &mut sink);
        }
        for account in 0..engine.accounts.len() {
            engine
                .remargin_account(AccountId(account as u32))
                .map_err(|_| bad("margin cannot be computed"))?;
        }
        // Auctions due at the next accepted update (once margined).
        engine.liquidations_due = (0..engine.accounts.len() as u32)
            .map(AccountId)
            .filter(|&a| engine.auction_due(a))
            .collect();
        // Auctions due to end there (cured).
        engine.ends_due = (0..engine.accounts.len() as u32)
            .map(AccountId)
            .filter(|&a| engine.end_due(a))
            .collect();
        engine.check_invariants()?;
        Ok(engine)
    }
}
