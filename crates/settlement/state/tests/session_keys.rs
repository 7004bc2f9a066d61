//! Fills of orders signed by session keys stay justifiable on L1: over random histories in which
//! owners register, extend, shorten and revoke session keys and trade through them and
//! themselves while time moves in small steps and in jumps past the keys' expiries, every fill
//! side of every batch passes the check the L1 contract makes of it
//! (`Authorization::check`, real secp256k1 signatures): signed by its account's owner, or by a
//! session key the batch's root commits and that is live at the batch's time. The engine ends a
//! key's orders with the key and the batcher cuts a batch before an input that would expire or
//! revoke a key behind one of its fills. Every key change is posted with the owner's signature
//! and passes the contract's check of it (`ChangeAttestation::check`) at its batch's time: the
//! batcher cuts before an input past a pending change's signature expiry.

use optio_engine::Engine;
use optio_intents::address_of;
use optio_state::auth::{self, Signed, Venue, domain};
use optio_state::{Batch, Batcher, decode};
use optio_types::{
    AccountId, Address, Amount, Command, EngineLimits, Input, InstrumentId, MONEY_SCALE, NewOrder,
    OrderType, Price, Qty, SelfTradePrevention, Side, TimeInForce,
};
use rand::{Rng, SeedableRng};
use secp256k1::{PublicKey, SecretKey};

mod support;

use support::{STEP, T0};

const ACCOUNTS: u8 = 4;
const VENUE: Venue = Venue {
    chain_id: 31_337,
    rollup: Address([0x0b; 20]),
};

/// Account `a`'s owner (`k` = 0) or its `k`th session key.
fn secret(a: u8, k: u8) -> SecretKey {
    let mut bytes = [0x11; 32];
    bytes[0] = a + 1;
    bytes[1] = k + 1;
    SecretKey::from_secret_bytes(bytes).expect("a valid key")
}

fn address(a: u8, k: u8) -> Address {
    Address(address_of(&PublicKey::from_secret_key(&secret(a, k))))
}

/// What `(a, k)` signs for `order` (a real signature over the order's EIP-712 action).
fn sign(a: u8, k: u8, order: &NewOrder, nonce: u64, now_ms: u64) -> Signed {
    let mut signed = Signed {
        nonce,
        expiry_s: now_ms / 1_000 + 3_600,
        signer: address(a, k),
        domain: domain::OPTIO,
        max_fee: 1_000 * MONEY_SCALE,
        signature: [0; 65],
    };
    let record = signed.record(order).expect("a limit order");
    let side = auth::FillSide {
        account: order.account,
        instrument: order.instrument,
        side: order.side,
        price: Price(0),
        qty: Qty(0),
    };
    let digest = record
        .digest(&side, address(a, 0), &VENUE)
        .expect("a well-formed record");
    signed.signature = optio_intents::sign(&secret(a, k), &digest);
    signed
}

/// What account `a`'s owner signs for key change `command` (an `Op::SessionKey` posts it).
fn sign_change(a: u8, command: &Command, nonce: u64, expiry_s: u64) -> Signed {
    let Command::SetSessionKey {
        account,
        key,
        expiry_ms,
    } = command
    else {
        unreachable!("a session key change")
    };
    let op = optio_state::Op::SessionKey {
        account: *account,
        key: *key,
        expiry_ms: *expiry_ms,
        at_ms: 0,
    };
    let action = auth::change_action(&op, nonce, expiry_s, address(a, 0)).expect("a change");
    let separator = VENUE.separator(domain::OPTIO).expect("Optio's");
    Signed {
        nonce,
        expiry_s,
        signer: address(a, 0),
        domain: domain::OPTIO,
        max_fee: 0,
        signature: optio_intents::sign(&secret(a, 0), &action.digest(&separator)),
    }
}

/// A random history: each input with what was signed for it.
fn history(seed: u64, len: usize) -> Vec<(Input, Option<Signed>)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let spec = support::specs().swap_remove(0);
    let mut commands = vec![
        Command::ListInstrument { spec },
        Command::ActivateInstrument {
            instrument: InstrumentId(0),
        },
    ];
    for a in 0..ACCOUNTS {
        commands.push(Command::OpenAccount {
            owner: address(a, 0),
        });
        commands.push(Command::Deposit {
            account: AccountId(u32::from(a)),
            amount: Amount(10_000_000 * MONEY_SCALE),
        });
    }
    let mut out: Vec<(Input, Option<Signed>)> = commands
        .into_iter()
        .map(|command| {
            let input = Input {
                time_ms: T0,
                command,
            };
            (input, None)
        })
        .collect();
    let mut now = T0;
    for nonce in 0..len as u64 {
        now += match rng.random_range(0..20) {
            0 => rng.random_range(20_000..90_000),
            1..=9 => rng.random_range(1..3_000),
            _ => 0,
        };
        let a = rng.random_range(0..ACCOUNTS);
        let account = AccountId(u32::from(a));
        let (command, signed) = if rng.random_range(0..8) == 0 {
            // Register or extend (60% of the changes), shorten, or revoke a key.
            let key = address(a, rng.random_range(1..3));
            let expiry_ms = match rng.random_range(0..10) {
                0..=5 => now + rng.random_range(10_000..120_000),
                6 | 7 => now + rng.random_range(1..10_000),
                _ => 0,
            };
            let command = Command::SetSessionKey {
                account,
                key,
                expiry_ms,
            };
            // Signed by the owner, the signature living 10 s to 2 minutes (time jumps
            // pass it).
            let signature_expiry_s = now / 1_000 + rng.random_range(10..120);
            let signed = sign_change(a, &command, nonce, signature_expiry_s);
            (command, Some(signed))
        } else {
            // An order by the owner or one of two keys (refused when the key is not live).
            let k = rng.random_range(0..3u8);
            let order = NewOrder {
                account,
                instrument: InstrumentId(0),
                side: if rng.random_bool(0.5) {
                    Side::Buy
                } else {
                    Side::Sell
                },
                qty: Qty(STEP * rng.random_range(1..4)),
                order_type: OrderType::Limit {
                    price: Price((1_000 + rng.random_range(-3..=3)) * MONEY_SCALE),
                },
                time_in_force: if rng.random_range(0..4) == 0 {
                    TimeInForce::ImmediateOrCancel
                } else {
                    TimeInForce::GoodTillCancelled
                },
                post_only: false,
                reduce_only: false,
                self_trade: SelfTradePrevention::CancelTaker,
                client_order_id: 0,
                session_key: (k != 0).then(|| address(a, k)),
            };
            let signed = sign(a, k, &order, nonce, now);
            (Command::PlaceOrder(order), Some(signed))
        };
        out.push((
            Input {
                time_ms: now,
                command,
            },
            signed,
        ));
    }
    out
}

/// What a batch's fills show: how many sides the owner signed and how many a session key did,
/// and how many key changes it posts. Panics on a side the contract would find unauthorized,
/// or a key change it would find not signed by the owner (`ChangeAttestation::check`).
fn check(batcher: &Batcher, batch: &Batch) -> (usize, usize, usize) {
    let (meta, ops) = decode(&batch.blob).expect("decodes");
    let state = batcher.state();
    let (mut by_owner, mut by_key) = (0, 0);
    let changes: Vec<_> = ops.iter().filter(|op| auth::is_change(op)).collect();
    for (k, op) in changes.iter().enumerate() {
        let owner = state.accounts()[op.accounts()[0].0 as usize].owner;
        let signed = auth::change_attestation(&batch.authorizations, k).expect("signed");
        if let Err(why) = signed.check(op, owner, meta.time_ms, &VENUE) {
            panic!("batch {}, change {k} ({op:?}): {why}", batch.header.number);
        }
    }
    for (i, side) in auth::fill_sides(ops.iter()).iter().enumerate() {
        let record = auth::record(&batch.authorizations, i).expect("every order is signed");
        let account = &state.accounts()[side.account.0 as usize];
        if let Err(why) = record.check(side, account.owner, &account.keys, meta.time_ms, &VENUE) {
            panic!(
                "batch {}, fill side {i} ({side:?}): {why}",
                batch.header.number
            );
        }
        if record.signer == account.owner {
            by_owner += 1;
        } else {
            by_key += 1;
        }
    }
    (by_owner, by_key, changes.len())
}

#[test]
fn every_fill_a_session_key_signed_is_judged_while_the_key_is_live() {
    let (mut by_owner, mut by_key, mut key_changes, mut batches) = (0, 0, 0, 0);
    let mut posted_changes = 0;
    for seed in 0..6 {
        let mut engine = Engine::new(EngineLimits::default());
        let mut batcher = Batcher::new(60, u64::MAX);
        let mut take = |batcher: &Batcher, batch: Batch| {
            let (o, k, c) = check(batcher, &batch);
            by_owner += o;
            by_key += k;
            posted_changes += c;
            batches += 1;
        };
        for (seq, (input, signed)) in history(seed, 1_500).iter().enumerate() {
            let mut events = Vec::new();
            let accepted = engine.apply(input, &mut events).is_ok();
            key_changes +=
                usize::from(accepted && matches!(input.command, Command::SetSessionKey { .. }));
            if let Some(batch) = batcher
                .push_signed(seq as u64 + 1, input, signed.as_ref(), &events)
                .expect("batches")
            {
                take(&batcher, batch);
            }
        }
        if let Some(batch) = batcher.flush().expect("flushes") {
            take(&batcher, batch);
        }
        engine.check_invariants().expect("invariants");
    }
    println!(
        "{batches} batches; fill sides signed by the owner {by_owner}, by a session key {by_key}; {key_changes} key changes"
    );
    assert!(
        by_key > 300 && by_owner > 300,
        "{by_key} by keys, {by_owner} by owners"
    );
    assert!(key_changes > 300, "{key_changes} key changes");
    assert_eq!(
        posted_changes, key_changes,
        "each accepted change posted, signed"
    );
}
