//! Order storage and per-instrument price-time books.
//!
//! Orders live in one slab; each price level is an intrusive FIFO list through the slab, so
//! cancelling from the middle of a level is O(1) and nothing allocates per order once the slab
//! has grown. Levels sit in a `BTreeMap` by price: bids are read from the top, asks from the
//! bottom.

use std::collections::BTreeMap;

use optio_types::state::OrderRecord;
use optio_types::{OrderId, Price, Qty, Side};

/// End of a level list.
pub(crate) const NIL: u32 = u32::MAX;

/// An open order, as stored: its canonical record plus the links that place it in its price
/// level and in its owner's order list.
#[derive(Debug, Clone)]
pub(crate) struct Order {
    pub rec: OrderRecord,
    /// Slot of the owner's position entry in this instrument (stable for the order's life).
    pub position: u32,
    prev: u32,
    next: u32,
    /// Links of the owner's list of open orders.
    pub account_prev: u32,
    pub account_next: u32,
}

impl Order {
    pub(crate) fn new(rec: OrderRecord) -> Self {
        Self {
            rec,
            position: NIL,
            prev: NIL,
            next: NIL,
            account_prev: NIL,
            account_next: NIL,
        }
    }

    /// Next order in the same level (time priority), or `NIL`.
    pub(crate) fn next(&self) -> u32 {
        self.next
    }
}

impl std::ops::Deref for Order {
    type Target = OrderRecord;
    fn deref(&self) -> &OrderRecord {
        &self.rec
    }
}

impl std::ops::DerefMut for Order {
    fn deref_mut(&mut self) -> &mut OrderRecord {
        &mut self.rec
    }
}

/// Lookup-only hash maps (id → slot). Never iterated, so their internal order cannot leak into
/// state or output; `clippy.toml` bans std's HashMap everywhere else in the core.
#[allow(clippy::disallowed_types)]
pub(crate) mod index {
    use std::collections::HashMap;
    use std::hash::{BuildHasherDefault, Hash, Hasher};

    /// A multiplicative hash for small integer keys (ids are dense and sequential).
    #[derive(Default)]
    pub(crate) struct IdHasher(u64);

    impl Hasher for IdHasher {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.write_u64(u64::from(*b));
            }
        }
        fn write_u32(&mut self, v: u32) {
            self.write_u64(u64::from(v));
        }
        fn write_u64(&mut self, v: u64) {
            self.0 = (self.0.rotate_left(26) ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    /// Lookup-only map to slab slots.
    pub(crate) struct SlotIndex<K>(HashMap<K, u32, BuildHasherDefault<IdHasher>>);

    impl<K> Default for SlotIndex<K> {
        fn default() -> Self {
            Self(HashMap::default())
        }
    }

    impl<K: Hash + Eq> SlotIndex<K> {
        pub(crate) fn get(&self, key: &K) -> Option<u32> {
            self.0.get(key).copied()
        }
        pub(crate) fn insert(&mut self, key: K, slot: u32) {
            self.0.insert(key, slot);
        }
        pub(crate) fn remove(&mut self, key: &K) {
            self.0.remove(key);
        }
        pub(crate) fn len(&self) -> usize {
            self.0.len()
        }
    }
}

/// All open orders of all instruments.
#[derive(Default)]
pub(crate) struct OrderStore {
    slots: Vec<Option<Order>>,
    free: Vec<u32>,
    index: index::SlotIndex<u64>,
    /// Orders currently linked into a book level (every stored order, between inputs).
    booked: usize,
}

impl OrderStore {
    pub(crate) fn insert(&mut self, order: Order) -> u32 {
        let id = order.id.0;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(order);
                slot
            }
            None => {
                self.slots.push(Some(order));
                u32::try_from(self.slots.len() - 1).expect("open orders are bounded far below 2^32")
            }
        };
        self.index.insert(id, slot);
        slot
    }

    pub(crate) fn remove(&mut self, slot: u32) -> Order {
        let order = self.slots[slot as usize]
            .take()
            .expect("slot of a live order");
        self.index.remove(&order.id.0);
        self.free.push(slot);
        order
    }

    pub(crate) fn slot_of(&self, id: OrderId) -> Option<u32> {
        self.index.get(&id.0)
    }

    pub(crate) fn get(&self, slot: u32) -> &Order {
        self.slots[slot as usize]
            .as_ref()
            .expect("slot of a live order")
    }

    pub(crate) fn get_mut(&mut self, slot: u32) -> &mut Order {
        self.slots[slot as usize]
            .as_mut()
            .expect("slot of a live order")
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn booked(&self) -> usize {
        self.booked
    }

    /// Live orders in slot order (for audits only; output order comes from the books).
    pub(crate) fn live(&self) -> impl Iterator<Item = (u32, &Order)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.as_ref().map(|o| (i as u32, o)))
    }
}

/// One price level: a FIFO of slots and its total size.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Level {
    pub head: u32,
    tail: u32,
    pub total: Qty,
    pub count: u32,
}

/// One instrument's book.
#[derive(Default)]
pub(crate) struct Book {
    pub bids: BTreeMap<Price, Level>,
    pub asks: BTreeMap<Price, Level>,
}

impl Book {
    pub(crate) fn side(&self, side: Side) -> &BTreeMap<Price, Level> {
        match side {
            Side::Buy => &self.bids,
            Side::Sell => &self.asks,
        }
    }

    fn side_mut(&mut self, side: Side) -> &mut BTreeMap<Price, Level> {
        match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        }
    }

    /// Best price of a side: highest bid or lowest ask.
    pub(crate) fn best(&self, side: Side) -> Option<Price> {
        match side {
            Side::Buy => self.bids.last_key_value().map(|(p, _)| *p),
            Side::Sell => self.asks.first_key_value().map(|(p, _)| *p),
        }
    }

    /// Levels of a side from the best price outward.
    pub(crate) fn levels(&self, side: Side) -> Box<dyn Iterator<Item = (&Price, &Level)> + '_> {
        match side {
            Side::Buy => Box::new(self.bids.iter().rev()),
            Side::Sell => Box::new(self.asks.iter()),
        }
    }

    /// Whether `price` on `side` would trade against the other side now.
    pub(crate) fn crosses(&self, side: Side, price: Price) -> bool {
        match (side, self.best(side.opposite())) {
            (_, None) => false,
            (Side::Buy, Some(ask)) => price >= ask,
            (Side::Sell, Some(bid)) => price <= bid,
        }
    }

    /// Appends the order in `slot` at the back of its price level.
    pub(crate) fn push_back(&mut self, store: &mut OrderStore, slot: u32) {
        let (side, price, qty) = {
            let o = store.get(slot);
            (o.side, o.price, o.remaining)
        };
        let level = self.side_mut(side).entry(price).or_insert(Level {
            head: NIL,
            tail: NIL,
            total: Qty::ZERO,
            count: 0,
        });
        let old_tail = level.tail;
        level.tail = slot;
        if old_tail == NIL {
            level.head = slot;
        }
        level.total = Qty(level.total.0 + qty.0);
        level.count += 1;
        store.booked += 1;
        let o = store.get_mut(slot);
        o.prev = old_tail;
        o.next = NIL;
        if old_tail != NIL {
            store.get_mut(old_tail).next = slot;
        }
    }

    /// Takes the order in `slot` out of its level (the slot stays allocated).
    pub(crate) fn unlink(&mut self, store: &mut OrderStore, slot: u32) {
        let (side, price, qty, prev, next) = {
            let o = store.get(slot);
            (o.side, o.price, o.remaining, o.prev, o.next)
        };
        if prev != NIL {
            store.get_mut(prev).next = next;
        }
        if next != NIL {
            store.get_mut(next).prev = prev;
        }
        let levels = self.side_mut(side);
        let level = levels
            .get_mut(&price)
            .expect("a booked order's level exists");
        if level.head == slot {
            level.head = next;
        }
        if level.tail == slot {
            level.tail = prev;
        }
        level.total = Qty(level.total.0 - qty.0);
        level.count -= 1;
        store.booked -= 1;
        if level.count == 0 {
            levels.remove(&price);
        }
    }

    /// Reduces a booked order's remaining size in place (keeps its priority).
    pub(crate) fn reduce(&mut self, store: &mut OrderStore, slot: u32, by: Qty) {
        let o = store.get_mut(slot);
        o.remaining = Qty(o.remaining.0 - by.0);
        let (side, price) = (o.side, o.price);
        let level = self
            .side_mut(side)
            .get_mut(&price)
            .expect("a booked order's level exists");
        level.total = Qty(level.total.0 - by.0);
    }

    /// Slots of every order in the book, in priority order (bids best first, then asks).
    pub(crate) fn slots_in_priority(&self, store: &OrderStore, out: &mut Vec<u32>) {
        for side in [Side::Buy, Side::Sell] {
            for (_, level) in self.levels(side) {
                let mut slot = level.head;
                while slot != NIL {
                    out.push(slot);
                    slot = store.get(slot).next;
                }
            }
        }
    }
}
