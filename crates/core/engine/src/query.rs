//! Read-only views of the engine state for the API (never used by the engine itself).

use optio_types::state::OrderRecord;
use optio_types::{
    AccountId, Address, Amount, Exposure, InstrumentId, InstrumentSpec, InstrumentStatus,
    MarginMode, MarginModel, Price, Qty, Side,
};

use crate::engine::Engine;
use crate::risk::Contribution;

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

/// An account's margin as the API reports it: its requirements, with and without its open
/// orders, and where the margin mode adds them up per instrument, each instrument's share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarginView {
    /// The mode they are computed under.
    pub mode: MarginMode,
    /// Being liquidated, or waiting for its auction's start at the next oracle update (either
    /// way it may not trade, withdraw or change its mode).
    pub liquidating: bool,
    /// Initial requirement, open orders counted as filled in their worst combination (what a
    /// new order or a withdrawal must leave covered), net of the positions' values the mode
    /// counts: negative when a long's value more than covers the rest.
    pub initial: Amount,
    /// The same of the positions alone (`initial - positions_initial` is what the open orders
    /// add, never negative).
    pub positions_initial: Amount,
    /// Maintenance requirement: of the positions under the mark-margined modes (below it the
    /// account is liquidated unless it covers what its shorts can owe at worst); the initial
    /// one under the worst case, which is never liquidated.
    pub maintenance: Amount,
    /// Per instrument with a position or open orders, in id order, when the mode's
    /// requirement is the sum of such shares (worst case, standard); empty under portfolio
    /// margin, whose requirement is the worst scenario of the whole portfolio.
    pub instruments: Vec<InstrumentMargin>,
}

/// One instrument's share of an account's requirements (`MarginView`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstrumentMargin {
    /// The instrument.
    pub instrument: InstrumentId,
    /// Initial requirement with its open orders.
    pub initial: Amount,
    /// Initial requirement of the position alone.
    pub position_initial: Amount,
    /// Maintenance requirement.
    pub maintenance: Amount,
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

    /// An account's margin (`MarginView`): the engine's cached requirements, and those of its
    /// positions alone, computed from the latest marks; `None` for an unknown account.
    pub fn margin_view(&self, account: AccountId) -> Option<MarginView> {
        let acct = self.accounts.get(account.0 as usize)?;
        let portfolio = acct.mode == MarginMode::Portfolio;
        let mut alone = Contribution::zero(self.risk.scenarios as usize + 1);
        let mut instruments = Vec::new();
        let mut positions_initial = 0i64;
        for (&instrument, &slot) in &acct.positions {
            let pos = &self.positions[slot as usize];
            let bare = Exposure {
                position: pos.exposure.position,
                ..Exposure::default()
            };
            // The position with its orders was margined from the same marks, so this holds.
            let position = self.marked_margin(acct.mode, instrument, &bare).ok()?;
            if portfolio {
                alone.add(position.scenario.as_ref()?);
                continue;
            }
            positions_initial += position.initial;
            instruments.push(InstrumentMargin {
                instrument,
                initial: pos.requirement,
                position_initial: Amount(position.initial),
                maintenance: pos.maintenance,
            });
        }
        if portfolio {
            positions_initial = Self::portfolio_requirement(&alone).0;
        }
        Some(MarginView {
            mode: acct.mode,
            liquidating: self.in_liquidation(account),
            initial: acct.requirement,
            positions_initial: Amount(positions_initial),
            maintenance: acct.maintenance,
            instruments,
        })
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
