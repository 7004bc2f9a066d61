//! Read-only views of the engine state for the API (never used by the engine itself).

use optio_types::state::OrderRecord;
use optio_types::{
    AccountId, Address, InstrumentId, InstrumentSpec, InstrumentStatus, MarginMode, MarginModel,
    Price, Qty, Side,
};

use crate::engine::Engine;

/// One instrument as the API shows it.
#[derive(Debug, Clone)]
pub struct InstrumentView<'a> {
    /// Id.
    pub id: InstrumentId,
    /// Terms.
    pub spec: &'a InstrumentSpec,
    /// Lifecycle.
    pub status: InstrumentStatus,
    /// Latest mark.
    pub mark: Option<Price>,
    /// Settlement price once settled.
    pub settlement_price: Option<Price>,
}

/// Oracle state of one underlying: index, when published, and a held jump if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OracleView {
    /// Accepted index.
    pub index_price: Price,
    /// Its publication time (ms).
    pub published_ms: u64,
    /// A price held by the circuit breaker.
    pub held: Option<Price>,
}

impl<M: MarginModel> Engine<M> {
    /// Every instrument, by id.
    pub fn instruments(&self) -> impl Iterator<Item = InstrumentView<'_>> {
        self.instruments
            .iter()
            .enumerate()
            .map(|(i, inst)| InstrumentView {
                id: InstrumentId(i as u32),
                spec: &inst.spec,
                status: inst.status,
                mark: inst.mark.as_ref().map(|(m, _)| *m),
                settlement_price: inst.settlement_price,
            })
    }

    /// Aggregated price levels of one side, best first, at most `depth`.
    pub fn book_levels(
        &self,
        instrument: InstrumentId,
        side: Side,
        depth: usize,
    ) -> Vec<(Price, Qty)> {
        self.instruments
            .get(instrument.0 as usize)
            .map_or_else(Vec::new, |i| {
                i.book
                    .levels(side)
                    .take(depth)
                    .map(|(p, l)| (*p, l.total))
                    .collect()
            })
    }

    /// The oracle state of an underlying.
    pub fn oracle(&self, underlying: &str) -> Option<OracleView> {
        self.oracles.get(underlying).map(|o| OracleView {
            index_price: o.index_price,
            published_ms: o.published_ms,
            held: o.held.map(|(p, _)| p),
        })
    }

    /// Underlyings with oracle state.
    pub fn underlyings(&self) -> impl Iterator<Item = &str> {
        self.oracles.keys().map(String::as_str)
    }

    /// Owner of an account.
    pub fn account_owner(&self, account: AccountId) -> Option<Address> {
        self.accounts.get(account.0 as usize).map(|a| a.owner)
    }

    /// Margin mode of an account.
    pub fn margin_mode(&self, account: AccountId) -> Option<MarginMode> {
        self.accounts.get(account.0 as usize).map(|a| a.mode)
    }

    /// L1 priority operations served (the queue id the engine accepts next).
    pub fn priority_served(&self) -> u64 {
        self.totals.priority_served
    }

    /// Number of accounts.
    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    /// An account's open orders, newest first.
    pub fn open_orders_of(&self, account: AccountId) -> Vec<OrderRecord> {
        let mut out = Vec::new();
        if let Some(acct) = self.accounts.get(account.0 as usize) {
            let mut slot = acct.orders_head;
            while slot != crate::book::NIL {
                let o = self.store.get(slot);
                out.push(o.rec);
                slot = o.account_next;
            }
        }
        out
    }

    /// An order if it is open.
    pub fn open_order(&self, id: optio_types::OrderId) -> Option<OrderRecord> {
        self.store.slot_of(id).map(|s| self.store.get(s).rec)
    }
}
