//! The batch circuit against the native transition: gadgets equal the native hash and trees;
//! random batches satisfy the circuit with the root `SettlementState` computes; a batch that
//! breaks a rule, or public inputs that differ from the batch, do not.

use ark_ff::{Field, PrimeField};
use ark_relations::gr1cs::ConstraintSystem;
use optio_prover::gadgets::Cs;
use optio_prover::gadgets::pow2;
use optio_prover::keys::check;
use optio_prover::witness::{BatchWitness, SPEC_CHUNKS, kind};
use optio_prover::{ProveError, Shape, witness};
use optio_state::poseidon::{Fr, from_address, hash};
use optio_state::smt::SparseMerkleTree;
use optio_state::{Op, SettlementState, StateError};
use optio_types::{
    AccountId, Address, Amount, FeeRate, InstrumentId, InstrumentSpec, MONEY_SCALE, MarginMode,
    Price, QTY_SCALE, Qty, Side, stress_range,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SHAPE: Shape = Shape {
    slots: 8,
    accounts: 8,
    positions: 12,
    instruments: 2,
    listings: 2,
    expiries: 1,
    settlements: 1,
    holders: 4,
    marks: 2,
    risk_chunks: 1,
    keys: 4,
    mark_window_bits: 0,
    margins: 8,
    prices: 1,
    solvency: 6,
    solvency_bits: 2,
    readonly: 0,
};

#[test]
fn poseidon_gadget_equals_the_native_hash() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for n in [1usize, 2, 3, 4, 5, 10] {
        let cs = ConstraintSystem::<Fr>::new_ref();
        let b = Cs::new(cs.clone());
        let values: Vec<Fr> = (0..n).map(|_| Fr::from(rng.random::<u64>())).collect();
        let wires = b.witnesses(&values).expect("alloc");
        let out = b.poseidon(&wires).expect("hash");
        assert_eq!(out.value, hash(&values), "width {n}");
        // The constraints hold and pin the output.
        let pinned = b.witness(hash(&values)).expect("alloc");
        b.equal(&out, &pinned).expect("eq");
        assert!(cs.is_satisfied().expect("check"), "width {n}");
        let wrong = b.witness(hash(&values) + Fr::from(1u64)).expect("alloc");
        b.equal(&out, &wrong).expect("eq");
        assert!(!cs.is_satisfied().expect("check"), "width {n}");
    }
}

#[test]
fn merkle_gadget_equals_the_native_tree() {
    let mut tree = SparseMerkleTree::new(20);
    // Indices whose two-bit digits take every slot at some level (0b11_10_01_00 = 228).
    let ids = [5u64, 228, 1_000, 0xF_FFFF, 0x5_5555];
    for (k, id) in ids.iter().enumerate() {
        tree.set(*id, Fr::from(k as u64 + 7)).expect("set");
    }
    for (k, id) in ids.iter().enumerate() {
        let proof = tree.prove(*id).expect("prove");
        let cs = ConstraintSystem::<Fr>::new_ref();
        let b = Cs::new(cs.clone());
        let index = b.witness(Fr::from(*id)).expect("alloc");
        let bits = b.bits(&index, 20).expect("bits");
        let leaf = b.witness(Fr::from(k as u64 + 7)).expect("alloc");
        let siblings = b.witnesses(&proof.siblings).expect("alloc");
        let root = b.merkle_root(&leaf, &bits, &siblings).expect("root");
        assert_eq!(root.value, tree.root(), "id {id}");
        assert!(cs.is_satisfied().expect("check"));
        // The same leaf and siblings at a neighbouring index give another root.
        let cs = ConstraintSystem::<Fr>::new_ref();
        let b = Cs::new(cs.clone());
        let index = b.witness(Fr::from(id ^ 1)).expect("alloc");
        let bits = b.bits(&index, 20).expect("bits");
        let leaf = b.witness(Fr::from(k as u64 + 7)).expect("alloc");
        let siblings = b.witnesses(&proof.siblings).expect("alloc");
        let root = b.merkle_root(&leaf, &bits, &siblings).expect("root");
        assert_ne!(root.value, tree.root(), "id {id} moved to {}", id ^ 1);
    }
}

fn spec(name: &str) -> InstrumentSpec {
    let mut s =
        InstrumentSpec::with_defaults(name.parse().expect("name"), Price(200_000 * MONEY_SCALE));
    s.maker_fee = FeeRate(-100);
    s
}

/// A committed state with two instruments and `n` funded accounts in `Standard` margin.
fn genesis(n: u32) -> SettlementState {
    let mut state = SettlementState::new();
    let mut ops = vec![
        Op::ListInstrument {
            spec: spec("BTC-PERPETUAL"),
        },
        Op::ListInstrument {
            spec: spec("BTC-26MAR27-100000-C"),
        },
        Op::ActivateInstrument {
            instrument: InstrumentId(0),
        },
        Op::ActivateInstrument {
            instrument: InstrumentId(1),
        },
    ];
    for i in 0..n {
        ops.push(Op::OpenAccount {
            owner: owner_of(AccountId(i)),
        });
        // Margined on marks: the tests trade on leverage, which `WorstCase` refuses.
        ops.extend(funded_in(i, 1_000_000, MarginMode::Standard));
    }
    state.apply_batch(&ops).expect("genesis applies");
    state.commit();
    state
}

/// A deposit of `dollars` into `account`, and its margin mode set to `mode`.
fn funded_in(account: u32, dollars: i64, mode: MarginMode) -> [Op; 2] {
    [
        Op::Deposit {
            account: AccountId(account),
            amount: Amount(dollars * MONEY_SCALE),
        },
        Op::SetMarginMode {
            account: AccountId(account),
            mode,
        },
    ]
}

/// The owner `genesis` gives an account (ids equal mod 3 share one).
fn owner_of(account: AccountId) -> Address {
    Address([(account.0 % 3) as u8 + 1; 20])
}

/// A random batch of covered ops that keeps every rule.
/// A withdrawal that leaves one of `genesis`'s accounts (1,000,000 each) with 100,000.
fn down_to_100_000(account: u32) -> Op {
    Op::Withdraw {
        account: AccountId(account),
        owner: owner_of(AccountId(account)),
        amount: Amount(900_000 * MONEY_SCALE),
    }
}

/// The accounts that trade in random batches: account 5 is the leveraged writer
/// (`leveraged_writer`), only liquidated.
const FUNDED: u32 = 5;

/// `genesis(6)` with account 5 down to 100,000 and short 10 perpetuals (a worst-case payoff of
/// 200,000 each) sold to account 4 at 10,000, then marked at 25,000: it could default and is
/// below maintenance, so random batches liquidate it.
fn leveraged_writer() -> SettlementState {
    let state = marked(
        &after(&genesis(6), &[down_to_100_000(5)]),
        0,
        10_000 * MONEY_SCALE,
    );
    let state = after(
        &state,
        &[Op::Fill {
            instrument: InstrumentId(0),
            maker: AccountId(5),
            taker: AccountId(4),
            taker_side: Side::Buy,
            price: Price(10_000 * MONEY_SCALE),
            qty: Qty(10 * QTY_SCALE),
        }],
    );
    started(&marked(&state, 0, 25_000 * MONEY_SCALE), &[5])
}

fn random_batch(rng: &mut ChaCha8Rng, state: &SettlementState, priority: &mut u64) -> Vec<Op> {
    // The funded accounts (an account opened here has nothing to pay with).
    let n = 6;
    let mut ops = Vec::new();
    let mut opened = 0;
    while ops.len() < SHAPE.slots - 1 {
        let a = AccountId(rng.random_range(0..n));
        let b = AccountId(rng.random_range(0..n));
        let amount = Amount(rng.random_range(1..1_000) * MONEY_SCALE);
        // What the stress rule lets leave a as the batch so far leaves it (a flat account's
        // forced withdrawal empties it, a held one's takes all the rule leaves: money does not
        // leave either again).
        let mut now = state.clone();
        now.apply_batch(&ops)
            .unwrap_or_else(|e| panic!("the batch so far applies: {e}: {ops:?}"));
        let free = now.stress_free(a).expect("a funded account");
        let emptied = free < i128::from(amount.0);
        let op = match rng.random_range(0..9) {
            0 => Op::Deposit { account: a, amount },
            1 | 4 if emptied => continue,
            1 => Op::Withdraw {
                account: a,
                amount,
                owner: owner_of(a),
            },
            2 => {
                *priority += 1;
                Op::L1Deposit {
                    priority: *priority - 1,
                    account: a,
                    amount,
                }
            }
            3 => {
                *priority += 1;
                let priority = *priority - 1;
                let held = &state.accounts()[a.0 as usize];
                let traded = ops.iter().any(|o| match o {
                    Op::Fill { maker, taker, .. } => *maker == a || *taker == a,
                    Op::Liquidation {
                        account,
                        counterparty,
                        ..
                    } => *account == a || *counterparty == a,
                    _ => false,
                });
                if held.holds_position() && !traded {
                    // The owner's takes what is owed, or nothing.
                    Op::L1Withdrawal {
                        priority,
                        account: a,
                        requester: owner_of(a),
                        amount: Amount(owed(&now, a)),
                    }
                } else if ops.is_empty() {
                    // A flat account's owner takes all of it (first: nothing traded before).
                    Op::L1Withdrawal {
                        priority,
                        account: a,
                        requester: owner_of(a),
                        amount: Amount(held.collateral.0.max(0)),
                    }
                } else {
                    // Someone else's request moves nothing.
                    Op::L1Withdrawal {
                        priority,
                        account: a,
                        requester: Address([8; 20]),
                        amount: Amount::ZERO,
                    }
                }
            }
            4 => {
                // Same owner: ids equal mod 3.
                let to = AccountId((a.0 + 3) % n);
                if state.accounts()[to.0 as usize].owner != state.accounts()[a.0 as usize].owner {
                    continue;
                }
                Op::Transfer {
                    from: a,
                    to,
                    amount,
                }
            }
            5 if opened == 0 => {
                opened += 1;
                Op::OpenAccount {
                    owner: Address([9; 20]),
                }
            }
            // The end of an auction whose account the batch so far leaves cured (or covering
            // its shorts).
            6 => {
                let Some(a) = (0..n).map(AccountId).find(|&x| {
                    now.clone()
                        .apply_batch(&[Op::LiquidationEnd { account: x }])
                        .is_ok()
                }) else {
                    continue;
                };
                Op::LiquidationEnd { account: a }
            }
            7 | 8 => {
                // A liquidation of part of the position of an account that could default (its
                // collateral short of what its shorts can owe at worst) and is below maintenance
                // (in the mode the batch found it in), inside the committed stress range on its
                // side and no better for it than the mark (so that it stays below), to a funded
                // counterparty.
                let mut now = state.clone();
                now.apply_batch(&ops).expect("the batch so far applies");
                let b = AccountId(b.0 % FUNDED);
                let Some(a) = (0..n).map(AccountId).find(|&x| {
                    let account = &now.accounts()[x.0 as usize];
                    let liability = account.liability(&now.payoffs());
                    let mode = state.accounts().get(x.0 as usize).map(|a| a.mode);
                    x != b
                        && i128::from(account.collateral.0) * i128::from(QTY_SCALE)
                            < liability as i128
                        && mode.is_some_and(|mode| {
                            state
                                .below_maintenance(mode, account.collateral, &account.positions)
                                .is_some()
                        })
                }) else {
                    continue;
                };
                // Its auction's start first, at the committed time, and now and then a restart
                // (the random marks move the time on).
                if now.accounts()[a.0 as usize].since == 0 || rng.random_bool(0.4) {
                    Op::LiquidationStart { account: a }
                } else {
                    let positions = &now.accounts()[a.0 as usize].positions;
                    let first = rng.random_range(0..2);
                    let Some((instrument, held)) = [first, 1 - first]
                        .into_iter()
                        .map(|i| (InstrumentId(i), positions.get(&i).map_or(0, |q| q.0)))
                        .find(|&(_, held)| held != 0)
                    else {
                        continue;
                    };
                    let x = &state.instruments()[instrument.0 as usize];
                    let (low, high) = stress_range(x.mark, x.risk.iter().map(|v| v.0));
                    // Within the schedule's discount of the committed index's value too, this far
                    // into the auction by the committed time.
                    let elapsed = now.oracle_ms() - now.accounts()[a.0 as usize].since;
                    let d = i128::from(optio_types::PROVEN_LIQUIDATION_DURATION_MS);
                    let rate = i128::from(optio_types::PROVEN_LIQUIDATION_START_BPS) * d
                        + i128::from(
                            optio_types::MAX_LIQUIDATION_DISCOUNT_BPS
                                - optio_types::PROVEN_LIQUIDATION_START_BPS,
                        ) * i128::from(elapsed).min(d);
                    let discount =
                        optio_types::liquidation_reference(&x.spec, x.index) * rate / (10_000 * d);
                    let mark = i128::from(x.mark.0);
                    let (low, high) = (low.max(mark - discount), high.min(mark + discount));
                    let tick = 100_000;
                    let buys = held < 0;
                    let price = if buys {
                        rng.random_range(mark / tick..=high / tick) * tick
                    } else {
                        rng.random_range((low.max(0) + tick - 1) / tick..=mark / tick) * tick
                    };
                    let step = QTY_SCALE / 100;
                    let contracts = rng.random_range(1..=held.abs() / step) * step;
                    let liquidation = |fee: i64| Op::Liquidation {
                        account: a,
                        counterparty: b,
                        instrument,
                        qty: Qty(if buys { contracts } else { -contracts }),
                        price: Price(price as i64),
                        fee: Amount(fee),
                    };
                    // A fee within its bound and the account's equity after the move.
                    let mut moved = now.clone();
                    if moved.apply_batch(&[liquidation(0)]).is_err() {
                        continue;
                    }
                    let left = moved.equity(a).expect("exists") / i128::from(QTY_SCALE);
                    let most = optio_types::max_liquidation_fee(&x.spec, x.index, Qty(contracts));
                    liquidation(rng.random_range(0..=most.min(left.max(0))) as i64)
                }
            }
            _ if a.0 % FUNDED == b.0 % FUNDED => continue,
            _ => Op::Fill {
                instrument: InstrumentId(rng.random_range(0..2)),
                maker: AccountId(a.0 % FUNDED),
                taker: AccountId(b.0 % FUNDED),
                taker_side: if rng.random_bool(0.5) {
                    Side::Buy
                } else {
                    Side::Sell
                },
                price: Price(rng.random_range(1..50_000) * 100_000),
                qty: Qty(rng.random_range(1..100) * QTY_SCALE / 100),
            },
        };
        // A fill that would leave one of its accounts insolvent or below maintenance at the
        // committed marks (which the random marks move) is not made, nor a fill, a withdrawal
        // or a transfer of an account in liquidation (frozen).
        if matches!(
            op,
            Op::Fill { .. } | Op::Withdraw { .. } | Op::Transfer { .. }
        ) && now.clone().apply_batch(std::slice::from_ref(&op)).is_err()
        {
            continue;
        }
        ops.push(op);
    }
    // Session keys from a small set (so that some are renewed or revoked), some expiring; and
    // margin modes between the two that the leverage allows, in the same slots (not of an
    // account the op slots leave in liquidation).
    let mut now = state.clone();
    now.apply_batch(&ops).expect("the op slots apply");
    for _ in 0..rng.random_range(0..=SHAPE.keys) {
        let at_ms = rng.random_range(0..5_000);
        if rng.random_bool(0.25) {
            let account = AccountId(rng.random_range(0..n));
            if now.accounts()[account.0 as usize].since != 0 {
                continue;
            }
            ops.push(Op::SetMarginMode {
                account,
                mode: if rng.random_bool(0.5) {
                    MarginMode::Portfolio
                } else {
                    MarginMode::Standard
                },
            });
            continue;
        }
        ops.push(Op::SessionKey {
            account: AccountId(rng.random_range(0..n)),
            key: Address([rng.random_range(1..7u8); 20]),
            expiry_ms: if rng.random_bool(0.2) {
                0
            } else {
                at_ms + rng.random_range(1..3_000)
            },
            at_ms,
        });
    }
    ops.push(Op::Mark {
        instrument: InstrumentId(rng.random_range(0..2)),
        mark: Price(rng.random_range(1..100_000) * MONEY_SCALE),
        index: Price(60_000_000_000),
        risk: (0..5)
            .map(|_| Amount(rng.random_range(-1_000_000..1_000_000)))
            .collect(),
        // The oracle's clock moves on up to 15 minutes a batch.
        published_ms: state.oracle_ms()
            + rng.random_range(0..=optio_types::PROVEN_LIQUIDATION_DURATION_MS),
    });
    ops
}

fn after(state: &SettlementState, ops: &[Op]) -> SettlementState {
    let mut next = state.clone();
    next.apply_batch(ops).expect("the batch applies natively");
    next.commit();
    next
}

/// The committed marks of `state`'s marked, unsettled instruments again (same values),
/// published at `at_ms`: a batch that moves only the committed oracle time.
fn remarked(state: &SettlementState, at_ms: u64) -> Vec<Op> {
    state
        .instruments()
        .iter()
        .enumerate()
        .filter(|(_, x)| x.mark != Price::ZERO && x.status != optio_state::leaf::status::SETTLED)
        .map(|(id, x)| Op::Mark {
            instrument: InstrumentId(id as u32),
            mark: x.mark,
            index: x.index,
            risk: x.risk.clone(),
            published_ms: at_ms,
        })
        .collect()
}

/// `state` with the auctions of `accounts` (each below maintenance and able to default)
/// started and run their proven duration: the committed time moved a millisecond on, the starts
/// (at it), and the time moved `PROVEN_LIQUIDATION_DURATION_MS` on, so that a liquidation may
/// take the deepest discount (`optio_types::within_liquidation_schedule`).
fn started(state: &SettlementState, accounts: &[u32]) -> SettlementState {
    let at = state.oracle_ms() + 1;
    let state = after(state, &remarked(state, at));
    let starts: Vec<Op> = accounts
        .iter()
        .map(|&a| Op::LiquidationStart {
            account: AccountId(a),
        })
        .collect();
    let state = after(&state, &starts);
    assert!(
        accounts
            .iter()
            .all(|&a| state.accounts()[a as usize].since == at)
    );
    let end = at + optio_types::PROVEN_LIQUIDATION_DURATION_MS;
    after(&state, &remarked(&state, end))
}

/// `state` after a batch that marks instrument `id` at `price` with no scenarios. A fill is
/// proven to leave its accounts with equity at the committed marks of at least zero, so the
/// fixtures that trade away from zero commit a mark first, and build deficits by moving it.
fn marked(state: &SettlementState, id: u32, price: i64) -> SettlementState {
    after(
        state,
        &[Op::Mark {
            instrument: InstrumentId(id),
            mark: Price(price),
            index: Price(60_000_000_000),
            risk: Vec::new(),
            published_ms: 0,
        }],
    )
}

/// `state` after a batch that marks instrument `id` at `price` (dollars) with the index at 60,000
/// and scenarios `risk` (dollars).
fn marked_with(state: &SettlementState, id: u32, price: i64, risk: &[i64]) -> SettlementState {
    after(
        state,
        &[Op::Mark {
            instrument: InstrumentId(id),
            mark: Price(price * MONEY_SCALE),
            index: Price(60_000_000_000),
            risk: risk.iter().map(|&r| Amount(r * MONEY_SCALE)).collect(),
            published_ms: 0,
        }],
    )
}

#[test]
fn random_batches_satisfy_the_circuit_with_the_native_root() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut state = leveraged_writer();
    let mut priority = 0;
    let (mut keys_seen, mut liquidations, mut starts, mut ends) = (0, 0, 0, 0);
    for round in 0..8 {
        let ops = random_batch(&mut rng, &state, &mut priority);
        let w = witness(&state, &ops, SHAPE).expect("covered ops");
        let next = after(&state, &ops);
        assert_eq!(w.public.old_root, state.root(), "round {round}");
        assert_eq!(
            w.public.new_root,
            next.root(),
            "round {round}: native roots agree"
        );
        assert_eq!(w.public.priority_after, next.priority_served());
        check(&w).unwrap_or_else(|e| panic!("round {round}: {e}"));
        keys_seen += ops
            .iter()
            .filter(|o| matches!(o, Op::SessionKey { .. }))
            .count();
        liquidations += ops
            .iter()
            .filter(|o| matches!(o, Op::Liquidation { .. }))
            .count();
        starts += ops
            .iter()
            .filter(|o| matches!(o, Op::LiquidationStart { .. }))
            .count();
        ends += ops
            .iter()
            .filter(|o| matches!(o, Op::LiquidationEnd { .. }))
            .count();
        state = next;
    }
    assert!(starts >= 1, "auction starts: {starts}");
    assert!(ends >= 1, "auction ends: {ends}");
    assert!(
        keys_seen >= 6,
        "session keys in the random batches: {keys_seen}"
    );
    assert!(liquidations >= 3, "liquidations: {liquidations}");
    assert!(state.accounts().iter().any(|a| !a.keys.is_empty()));
}

/// The test shape with four of its position registers read-only: random batches satisfy the
/// circuit with the native root as they do with all of them writable, the positions the batch
/// only prices in the read-only ones.
#[test]
fn random_batches_satisfy_a_shape_with_read_only_registers() {
    let shape = Shape {
        readonly: 4,
        ..SHAPE
    };
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let mut state = leveraged_writer();
    let mut priority = 0;
    let mut read_only = 0;
    for round in 0..4 {
        let ops = random_batch(&mut rng, &state, &mut priority);
        let w = witness(&state, &ops, shape).expect("covered ops");
        let next = after(&state, &ops);
        assert_eq!(w.public.new_root, next.root(), "round {round}");
        check(&w).unwrap_or_else(|e| panic!("round {round}: {e}"));
        read_only += w.read_only_in_use();
        // The commitment does not depend on the shape.
        assert_eq!(
            w.public.commitment,
            witness(&state, &ops, SHAPE)
                .expect("fits")
                .public
                .commitment
        );
        state = next;
    }
    assert!(
        read_only >= 2,
        "positions in read-only registers: {read_only}"
    );
}

/// Two writable position registers and two read-only ones.
const READ_ONLY: Shape = Shape {
    positions: 2,
    readonly: 2,
    ..SHAPE
};

/// Accounts 0 and 1 after `marked_long` (0 short 20 perpetuals, 1 long), then account 0 long a
/// call from account 1 (marked at 5,000 with scenarios of -2,000 and +3,000): each holds two
/// positions.
fn two_positions_each() -> SettlementState {
    let state = marked_with(&marked_long(), 1, 5_000, &[-2_000, 3_000]);
    after(&state, &[fill_of(1, Side::Sell, 5_000, 1)])
}

/// A position no op of the batch changes may take a read-only register (one path, no
/// write-back): it is priced as a writable one is, here by a withdrawal's stress rule, which
/// refuses a unit more than the native rule lets leave.
#[test]
fn read_only_registers_price_what_no_op_changes() {
    let state = two_positions_each();
    let free = i64::try_from(state.stress_free(AccountId(0)).expect("funded")).expect("i64");
    let withdrawal = |amount| Op::Withdraw {
        account: AccountId(0),
        owner: owner_of(AccountId(0)),
        amount: Amount(amount),
    };
    let w = witness(&state, &[withdrawal(free)], READ_ONLY).expect("fits");
    let enabled: Vec<bool> = w.positions.iter().map(|p| p.enabled).collect();
    assert_eq!(enabled, [false, false, true, true], "both read-only");
    check(&w).expect("the most the rule lets leave");
    let over = witness(&state, &[withdrawal(free + 1)], READ_ONLY).expect("fits");
    assert!(refused_at(&over).starts_with("margin slots"));
    // The same batch in a shape with fewer registers than positions priced.
    for shape in [
        Shape {
            readonly: 1,
            positions: 0,
            ..SHAPE
        },
        Shape {
            readonly: 0,
            positions: 1,
            ..SHAPE
        },
    ] {
        assert_eq!(
            witness(&state, &[withdrawal(free)], shape).err(),
            Some(optio_prover::witness::WitnessError::TooLarge(
                "position registers"
            ))
        );
    }
    // One writable and one read-only register hold them.
    let mixed = Shape {
        readonly: 1,
        positions: 1,
        ..READ_ONLY
    };
    let w = witness(
        &state,
        &[withdrawal(free)],
        Shape {
            positions: 2,
            ..mixed
        },
    )
    .expect("fits");
    let enabled: Vec<bool> = w.positions.iter().map(|p| p.enabled).collect();
    assert_eq!(enabled, [true, false, true]);
    check(&w).expect("one of each");

    // The call loaded in both a writable and a read-only register, and the short perpetuals
    // left out: the count the account's leaf commits still matches, both paths hold (neither
    // changed), and the rule would price the call twice and the short never, letting half a
    // million more leave. Refused where the registers are loaded.
    let more = withdrawal(free + 500_000 * MONEY_SCALE);
    let mut w = witness(&state, std::slice::from_ref(&more), READ_ONLY).expect("fits");
    assert!(refused_at(&w).starts_with("margin slots"));
    let call = w.positions[3].clone();
    assert_eq!(call.instrument, 1);
    w.positions[0] = call.clone();
    w.positions[2] = call;
    w.positions[3] = optio_prover::witness::PositionReg {
        siblings: w.positions[3].siblings.clone(),
        ..Default::default()
    };
    assert!(refused_at(&w).starts_with("the registers"));
}

/// An op cannot reach a read-only register: here the fill's own position is laid out in one
/// (its path and every other register as honest), so that an op able to select it would change
/// a position whose write-back writes nothing. The fill's op slot refuses it (with its
/// selectors spanning every register, the circuit got as far as the accounts' write-back).
#[test]
fn a_fills_position_cannot_sit_in_a_read_only_register() {
    // Account 0 short 20 perpetuals only; account 1 long them and a call (from account 2).
    let state = marked_with(
        &marked(&genesis(3), 0, 100_000 * MONEY_SCALE),
        1,
        5_000,
        &[-2_000, 3_000],
    );
    let state = after(
        &state,
        &[
            perp_fill(Side::Buy, 20),
            Op::Fill {
                instrument: InstrumentId(1),
                maker: AccountId(2),
                taker: AccountId(1),
                taker_side: Side::Buy,
                price: Price(5_000 * MONEY_SCALE),
                qty: Qty(QTY_SCALE),
            },
        ],
    );
    let ops = [perp_fill(Side::Sell, 1)];
    let honest = witness(&state, &ops, READ_ONLY).expect("fits");
    let keys: Vec<(usize, u32, bool)> = honest
        .positions
        .iter()
        .map(|p| (p.account, p.instrument, p.enabled))
        .collect();
    assert_eq!(
        keys,
        [(0, 0, true), (1, 0, true), (1, 1, true), (0, 0, false)],
        "both perpetuals writable, account 1's call read-only"
    );
    check(&honest).expect("honest");
    let mut w = honest.clone();
    let unused = w.positions[3].clone();
    w.positions = vec![
        honest.positions[1].clone(),
        unused,
        honest.positions[0].clone(),
        honest.positions[2].clone(),
    ];
    let moved = |p: Option<usize>| p.map(|k| [2, 0][k]);
    w.slots[0].pa = moved(w.slots[0].pa);
    w.slots[0].pb = moved(w.slots[0].pb);
    assert!(
        refused_at(&w).starts_with("op slot 0"),
        "{}",
        refused_at(&w)
    );
}

/// A real Groth16 proof of a batch whose positions sit in read-only registers (the
/// withdrawal above) verifies, and not for another new root.
#[test]
fn a_real_proof_with_read_only_registers_verifies() {
    use ark_std::rand::SeedableRng;
    let shape = Shape {
        slots: 1,
        accounts: 1,
        positions: 1,
        instruments: 2,
        risk_chunks: 1,
        margins: 1,
        readonly: 2,
        ..Shape::default()
    };
    let state = two_positions_each();
    let ops = [Op::Withdraw {
        account: AccountId(0),
        owner: owner_of(AccountId(0)),
        amount: Amount(MONEY_SCALE),
    }];
    let w = witness(&state, &ops, shape).expect("fits");
    assert!(w.positions[1..].iter().all(|p| p.enabled) && !w.positions[0].enabled);
    let mut rng = ark_std::rand::rngs::StdRng::seed_from_u64(5);
    let keys = optio_prover::Keys::generate(shape, &mut rng).expect("keys");
    let public = w.public;
    let proof = optio_prover::prove(&keys, w, &mut rng).expect("proves");
    assert!(optio_prover::verify(&keys.vk, &public, &proof));
    assert_eq!(public.new_root, after(&state, &ops).root());
    let mut other = public;
    other.new_root += Fr::from(1u64);
    assert!(!optio_prover::verify(&keys.vk, &other, &proof));
}

/// The prover's own multi-scalar multiplications (affine buckets, repeated values summed
/// first) give the very proof arkworks' give for the same randomness, element for element, on
/// a batch of liquidations, auction starts and ends and session keys (full-size values,
/// repeated ones in the unused slots, bits and small amounts), and it verifies.
#[test]
fn the_provers_group_sums_give_arkworks_proof() {
    use ark_std::rand::SeedableRng;
    use optio_prover::keys::{Msm, prove_with};
    let state = leveraged_writer();
    let ops = random_batch(&mut ChaCha8Rng::seed_from_u64(7), &state, &mut 0);
    let w = witness(&state, &ops, SHAPE).expect("covered ops");
    let mut rng = ark_std::rand::rngs::StdRng::seed_from_u64(11);
    let keys = optio_prover::Keys::generate(SHAPE, &mut rng).expect("keys");
    let public = w.public;
    let proof_with = |msm| {
        let mut rng = ark_std::rand::rngs::StdRng::seed_from_u64(12);
        prove_with(&keys, w.clone(), &mut rng, msm).expect("proves")
    };
    let ours = proof_with(Msm::AffineBuckets);
    assert_eq!(ours, proof_with(Msm::Arkworks));
    assert!(optio_prover::verify(&keys.vk, &public, &ours));
}

/// No op may change a read-only register: a fill that names one for its position is refused,
/// and so is a read-only register holding other than its leaf's quantity.
#[test]
fn no_op_writes_a_read_only_register() {
    let state = two_positions_each();
    // A perpetual fill (both perpetual positions change: writable) and a withdrawal that prices
    // account 0's call; account 1 traded in Standard, so its call is priced too: read-only.
    let ops = [
        perp_fill(Side::Sell, 1),
        Op::Withdraw {
            account: AccountId(0),
            owner: owner_of(AccountId(0)),
            amount: Amount(MONEY_SCALE),
        },
    ];
    let honest = witness(&state, &ops, READ_ONLY).expect("fits");
    assert!(honest.positions.iter().all(|p| p.enabled));
    assert!(
        honest.positions[2..]
            .iter()
            .all(|p| p.instrument == 1 && !p.siblings.is_empty())
    );
    check(&honest).expect("honest");
    let mut w = honest.clone();
    w.slots[0].pa = Some(2);
    assert!(
        refused_at(&w).starts_with("op slot 0"),
        "a fill's position in a read-only register"
    );
    let mut w = honest.clone();
    w.positions[3].qty += Fr::from(1u64);
    assert!(refused(&w), "a read-only quantity other than its leaf's");
    // With no read-only registers, four writable ones hold them.
    let w = witness(
        &state,
        &ops,
        Shape {
            positions: 4,
            readonly: 0,
            ..SHAPE
        },
    )
    .expect("fits");
    check(&w).expect("all writable");
    assert_eq!(w.public.commitment, honest.public.commitment);
    assert_eq!(w.public.new_root, honest.public.new_root);
    // A shape whose writable registers cannot hold the positions the fill changes.
    assert_eq!(
        witness(
            &state,
            &ops,
            Shape {
                positions: 1,
                readonly: 3,
                ..SHAPE
            }
        )
        .err(),
        Some(optio_prover::witness::WitnessError::TooLarge(
            "position registers"
        ))
    );
}

fn batch_of(state: &SettlementState, ops: &[Op]) -> BatchWitness {
    witness(state, ops, SHAPE).expect("covered ops")
}

/// `w` with the margin slots `which` picks left out (a prover that skips them).
fn without_margin_slots(
    mut w: BatchWitness,
    which: fn(&optio_prover::witness::MarginSlot) -> bool,
) -> BatchWitness {
    for m in w.margins.iter_mut().filter(|m| which(m)) {
        *m = optio_prover::witness::MarginSlot::default();
    }
    w
}

fn refused(w: &BatchWitness) -> bool {
    matches!(check(w), Err(ProveError::Unsatisfied(_)))
}

/// Where the circuit first refuses `w` (panics if it proves).
fn refused_at(w: &BatchWitness) -> String {
    match check(w) {
        Err(ProveError::Unsatisfied(at)) => at,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_withdrawal_below_zero_cannot_be_proven() {
    let state = genesis(2);
    let ok = batch_of(
        &state,
        &[Op::Withdraw {
            account: AccountId(0),
            owner: owner_of(AccountId(0)),
            amount: Amount(1_000_000 * MONEY_SCALE),
        }],
    );
    check(&ok).expect("withdrawing everything is fine");
    let w = batch_of(
        &state,
        &[Op::Withdraw {
            account: AccountId(0),
            owner: owner_of(AccountId(0)),
            amount: Amount(1_000_000 * MONEY_SCALE + 1),
        }],
    );
    assert!(refused(&w));
}

/// Account 1 takes `qty` perpetuals at 100,000 from account 0 (buying or selling).
fn perp_fill(taker_side: Side, qty: i64) -> Op {
    fill_of(0, taker_side, 100_000, qty)
}

/// Account 1 takes `contracts` of instrument `id` from account 0 at `price` (USDC).
fn fill_of(id: u32, taker_side: Side, price: i64, contracts: i64) -> Op {
    Op::Fill {
        instrument: InstrumentId(id),
        maker: AccountId(0),
        taker: AccountId(1),
        taker_side,
        price: Price(price * MONEY_SCALE),
        qty: Qty(contracts * QTY_SCALE),
    }
}

/// A fill may leave its buyer's cash negative (a leveraged long holds negative cash against its
/// position, as the engine allows); a withdrawal may take no more than the stress rule leaves
/// (here, with no scenarios committed, the position's value at its mark).
#[test]
fn a_fill_may_leave_cash_negative_a_withdrawal_may_not() {
    let state = marked(&genesis(2), 0, 100_000 * MONEY_SCALE);
    let fill = perp_fill(Side::Buy, 20);
    let w = batch_of(&state, std::slice::from_ref(&fill));
    check(&w).expect("a leveraged long");
    let after_fill = after(&state, &[fill]);
    assert!(after_fill.accounts()[1].collateral.0 < 0);
    let free = after_fill.stress_free(AccountId(1)).expect("known") as i64;
    let out = |amount| {
        batch_of(
            &after_fill,
            &[Op::Withdraw {
                account: AccountId(1),
                owner: owner_of(AccountId(1)),
                amount: Amount(amount),
            }],
        )
    };
    check(&out(free)).expect("what the rule leaves");
    assert!(refused(&out(free + 1)), "money out past the rule");
    // A forced withdrawal from it is owed nothing (its cash is below full collateral): nothing
    // moved proves, a unit does not.
    let forced = |amount| {
        batch_of(
            &after_fill,
            &[Op::L1Withdrawal {
                priority: 0,
                account: AccountId(1),
                requester: owner_of(AccountId(1)),
                amount: Amount(amount),
            }],
        )
    };
    check(&forced(0)).expect("nothing moved");
    assert!(refused(&forced(1)), "forced out of negative cash");
}

/// Account 1 long 20 perpetuals from account 0 at 100,000, its mark (cash about -1,000,000),
/// the perpetual then marked at 100,000 with scenarios of -30% and +30%.
fn marked_long() -> SettlementState {
    let state = marked(&genesis(2), 0, 100_000 * MONEY_SCALE);
    let state = after(&state, &[perp_fill(Side::Buy, 20)]);
    after(
        &state,
        &[Op::Mark {
            instrument: InstrumentId(0),
            mark: Price(100_000 * MONEY_SCALE),
            index: Price(60_000_000_000),
            risk: vec![Amount(-30_000 * MONEY_SCALE), Amount(30_000 * MONEY_SCALE)],
            published_ms: 0,
        }],
    )
}

/// Money that leaves an account leaves its positions covered in every stress scenario of the
/// committed risk arrays (the engine's `stress_free`): the leveraged long may withdraw against
/// its position's value down to its -30% scenario, not a unit more; the short down to its +30%
/// one; by withdrawal or transfer (a forced withdrawal takes no more than leaves the account
/// fully collateralized as well: `a_forced_withdrawal_takes_the_fully_collateralized_surplus`).
#[test]
fn money_leaves_only_what_the_stress_scenarios_leave() {
    let state = marked_long();
    let cash = |a: usize| state.accounts()[a].collateral.0;
    // 20 contracts: worth 1,400,000 at -30% (long), owing 2,600,000 at +30% (short).
    let free = [
        cash(0) - 2_600_000 * MONEY_SCALE,
        cash(1) + 1_400_000 * MONEY_SCALE,
    ];
    assert!(
        cash(1) < 0 && free[1] > 0,
        "a long with negative cash: {free:?}"
    );
    for (account, free) in [(0u32, free[0]), (1, free[1])] {
        for amount in [free, free + 1] {
            let ops = [Op::Withdraw {
                account: AccountId(account),
                owner: owner_of(AccountId(account)),
                amount: Amount(amount),
            }];
            for op in ops {
                let w = batch_of(&state, std::slice::from_ref(&op));
                if amount == free {
                    check(&w).unwrap_or_else(|e| panic!("{op:?}: {e}"));
                } else {
                    assert!(
                        refused_at(&w).starts_with("margin slots"),
                        "{op:?} past the stress rule"
                    );
                }
            }
        }
    }
    // A transfer to an account of the same owner (3 shares account 0's).
    let state = after(
        &state,
        &[Op::OpenAccount {
            owner: state.accounts()[0].owner,
        }],
    );
    let transfer = |amount| {
        batch_of(
            &state,
            &[Op::Transfer {
                from: AccountId(0),
                to: AccountId(2),
                amount: Amount(amount),
            }],
        )
    };
    check(&transfer(free[0])).expect("a transfer within the rule");
    assert!(refused(&transfer(free[0] + 1)), "a transfer past it");
}

/// The rule prices the account as right after the op, against the marks committed before the
/// batch: a fill later in the batch that would cover it, or a mark the batch commits, does not
/// count; a fill before it that adds risk does.
#[test]
fn the_stress_rule_reads_the_account_right_after_the_op() {
    let state = marked_long();
    let free = state.accounts()[1].collateral.0 + 1_400_000 * MONEY_SCALE;
    let withdraw = Op::Withdraw {
        account: AccountId(1),
        owner: owner_of(AccountId(1)),
        amount: Amount(free),
    };
    // Buying 10 more before the withdrawal adds the -30% loss on them.
    let more = perp_fill(Side::Buy, 10);
    assert!(refused(&batch_of(
        &state,
        &[more.clone(), withdraw.clone()]
    )));
    // The same fill after the withdrawal does not matter to it.
    let sell = perp_fill(Side::Sell, 10);
    check(&batch_of(&state, &[withdraw.clone(), sell])).expect("withdraw, then trade");
    // A higher mark committed by the batch comes after its ops.
    let over = Op::Withdraw {
        account: AccountId(1),
        owner: owner_of(AccountId(1)),
        amount: Amount(free + MONEY_SCALE),
    };
    let mark = Op::Mark {
        instrument: InstrumentId(0),
        mark: Price(200_000 * MONEY_SCALE),
        index: Price(60_000_000_000),
        risk: vec![Amount(0), Amount(0)],
        published_ms: 0,
    };
    assert!(refused(&batch_of(&state, &[over, mark])));
}

/// Every position the account held is priced: leaving one out of the registers (here the
/// leveraged long's short counterpart's position, which alone makes its withdrawal too large)
/// breaks the count its leaf commits.
#[test]
fn a_position_left_out_of_the_stress_rule_cannot_be_proven() {
    let state = marked_long();
    // Account 0 is short 20: it may take out its cash less 2,600,000.
    let free = state.accounts()[0].collateral.0 - 2_600_000 * MONEY_SCALE;
    let mut w = batch_of(
        &state,
        &[Op::Withdraw {
            account: AccountId(0),
            owner: owner_of(AccountId(0)),
            amount: Amount(free + MONEY_SCALE),
        }],
    );
    assert!(refused(&w), "past the rule with the short priced");
    // The prover drops the short from the registers (it is the only one): the stress rule then
    // sees cash alone, which covers the withdrawal, but the account's count does not match.
    assert_eq!(
        w.positions.iter().filter(|p| p.enabled).count(),
        1,
        "the short, loaded for the margin slot"
    );
    w.positions[0].enabled = false;
    assert!(
        refused_at(&w).starts_with("the accounts' position counts"),
        "caught by the position count"
    );
    // Nor can the count be understated.
    let mut w = batch_of(
        &state,
        &[Op::Withdraw {
            account: AccountId(0),
            owner: owner_of(AccountId(0)),
            amount: Amount(free + MONEY_SCALE),
        }],
    );
    w.positions[0].enabled = false;
    w.accounts[0].open_positions = 0;
    assert!(refused(&w), "the leaf commits the count");
}

#[test]
fn fees_other_than_the_specs_cannot_be_proven() {
    let state = genesis(2);
    let ops = [Op::Fill {
        instrument: InstrumentId(1),
        maker: AccountId(0),
        taker: AccountId(1),
        taker_side: Side::Sell,
        price: Price(1_234 * MONEY_SCALE),
        qty: Qty(3 * QTY_SCALE / 10),
    }];
    let honest = batch_of(&state, &ops);
    check(&honest).expect("honest fees");
    // A taker fee one unit higher, with the root recomputed as the operator would.
    let mut w = honest.clone();
    w.slots[0].taker_fee += Fr::from(1u64);
    assert!(refused(&w));
    // Fee rates other than the committed spec's.
    let mut w = honest.clone();
    w.instruments[0].spec.maker_rate = Fr::from(0u64);
    assert!(refused(&w));
}

/// L1 pays a withdrawal to the owner its words name: the circuit holds that name to the
/// account's owner (a forced withdrawal's, who asked, moves money only when it is the owner), so
/// a batch paying anyone else cannot be proven.
#[test]
fn a_withdrawal_paid_to_another_owner_cannot_be_proven() {
    let state = genesis(2);
    let amount = Amount(10 * MONEY_SCALE);
    let ops = [
        Op::Withdraw {
            account: AccountId(0),
            amount,
            owner: owner_of(AccountId(0)),
        },
        Op::L1Withdrawal {
            priority: 0,
            account: AccountId(1),
            amount: state.accounts()[1].collateral,
            requester: owner_of(AccountId(1)),
        },
    ];
    let honest = batch_of(&state, &ops);
    check(&honest).expect("paid to the owners");
    // The ledger refuses the op itself, and changes nothing.
    let mut wrong = ops.clone();
    if let Op::Withdraw { owner, .. } = &mut wrong[0] {
        *owner = Address([0xee; 20]);
    }
    let mut refused_state = state.clone();
    assert!(matches!(
        refused_state.apply_batch(&wrong),
        Err(optio_state::StateError::WrongOwner(0))
    ));
    assert_eq!(refused_state.commit(), state.root(), "state unchanged");
    // The prover names another payee in either slot: refused at that slot.
    for k in 0..2 {
        let mut w = honest.clone();
        w.slots[k].owner = from_address(&[0xee; 20]);
        let at = refused_at(&w);
        assert!(at.starts_with(&format!("op slot {k}")), "{at}");
    }
}

/// The escape hatch cannot be served with less: an owner's forced withdrawal from an account
/// that held no position when the batch started takes all its collateral (the engine pays that),
/// and someone else's moves nothing. Otherwise neither the ledger nor the circuit takes it.
#[test]
fn a_flat_accounts_forced_withdrawal_takes_all_of_it() {
    let state = genesis(2);
    let all = state.accounts()[1].collateral.0;
    let forced = |requester: Address, amount: i64| {
        [Op::L1Withdrawal {
            priority: 0,
            account: AccountId(1),
            amount: Amount(amount),
            requester,
        }]
    };
    let owner = owner_of(AccountId(1));
    let stranger = Address([0xee; 20]);
    for (ops, ok) in [
        (forced(owner, all), true),
        (forced(stranger, 0), true),
        (forced(owner, all - 1), false),
        (forced(owner, 0), false),
        (forced(stranger, 1), false),
    ] {
        let mut native = state.clone();
        let applied = native.apply_batch(&ops);
        let w = batch_of(&state, &ops);
        if ok {
            applied.unwrap_or_else(|e| panic!("{ops:?}: {e}"));
            check(&w).unwrap_or_else(|e| panic!("{ops:?}: {e}"));
            continue;
        }
        assert!(
            matches!(
                applied,
                Err(optio_state::StateError::ShortExit(0) | optio_state::StateError::WrongOwner(0))
            ),
            "{ops:?}: {applied:?}"
        );
        assert_eq!(native.commit(), state.root(), "state unchanged");
        let at = refused_at(&w);
        assert!(at.starts_with("op slot 0"), "{ops:?}: {at}");
    }
    // An account that held a position takes what leaves its shorts covered (the test below):
    // here, a long, all its cash but a micro-USDC.
    let held = after(&state, &[perp_fill(Side::Buy, 1)]);
    let free = owed(&held, AccountId(1));
    assert_eq!(free, held.accounts()[1].collateral.0 - 1);
    for (amount, ok) in [(free, true), (0, false)] {
        let w = batch_of(&held, &forced(owner, amount));
        assert_eq!(check(&w).is_ok(), ok, "{amount} of {free}");
    }
}

/// What an owner's forced withdrawal takes (the engine's `l1_withdrawal`): all that leaves the
/// account covering what its shorts can owe at worst, less a micro-USDC a position, or nothing
/// (`optio_types::forced_withdrawal` of its leaf's collateral, liability and count).
fn owed(state: &SettlementState, id: AccountId) -> i64 {
    let a = &state.accounts()[id.0 as usize];
    optio_types::forced_withdrawal(
        a.collateral.0,
        a.liability(&state.payoffs()) as i128,
        a.positions.len() as u32,
    )
}

/// The escape hatch cannot be served with less from an account that holds positions either:
/// the owner's forced withdrawal takes exactly `owed`, in every margin mode (the mode is not in
/// the state) and whatever the marks say (it reads none). A unit less, a unit more, or nothing
/// while something is owed cannot be proven, natively or in the circuit; someone else's
/// request moves nothing. No margin slot: an account holding more positions than the shape's
/// registers is paid all the same.
#[test]
fn a_forced_withdrawal_takes_what_leaves_the_shorts_covered() {
    let forced = |id: AccountId, amount: i64| {
        [Op::L1Withdrawal {
            priority: 0,
            account: id,
            requester: owner_of(id),
            amount: Amount(amount),
        }]
    };
    let refuses = |state: &SettlementState, id: AccountId, amount: i64, what: &str| {
        let ops = forced(id, amount);
        let mut native = state.clone();
        assert!(
            matches!(
                native.apply_batch(&ops),
                Err(optio_state::StateError::ShortExit(0))
            ),
            "{what}: {amount}"
        );
        assert_eq!(native.commit(), state.root(), "state unchanged");
        let at = refused_at(&batch_of(state, &ops));
        assert!(at.starts_with("op slot 0"), "{what}: {amount}: {at}");
    };
    // Account 1 buys 2 calls (strike 100,000, cap 200,000) at 1,000 from account 0: the long
    // owes nothing, so takes its cash but a micro-USDC; the short keeps back 2 x 100,000, its
    // worst-case payoff, and a micro-USDC.
    let state = after(&genesis(2), &[fill_of(1, Side::Buy, 1_000, 2)]);
    let cash = |state: &SettlementState, a: usize| state.accounts()[a].collateral.0;
    assert_eq!(owed(&state, AccountId(1)), cash(&state, 1) - 1);
    assert_eq!(
        owed(&state, AccountId(0)),
        cash(&state, 0) - 200_000 * MONEY_SCALE - 1
    );
    for id in [AccountId(0), AccountId(1)] {
        let owed = owed(&state, id);
        let w = batch_of(&state, &forced(id, owed));
        assert!(!w.margins[0].enabled, "no margin slot");
        check(&w).unwrap_or_else(|e| panic!("{id:?}: {e}"));
        let mut native = state.clone();
        native.apply_batch(&forced(id, owed)).expect("owed");
        for wrong in [owed - 1, owed + 1, 0] {
            refuses(&state, id, wrong, "not what is owed");
        }
        let stranger = [Op::L1Withdrawal {
            priority: 0,
            account: id,
            requester: Address([0xee; 20]),
            amount: Amount::ZERO,
        }];
        check(&batch_of(&state, &stranger)).expect("a stranger's request");
    }
    // Marks play no part: a scenario beyond the worst-case payoff (the call marked at 90,000
    // with a +60,000 scenario, 150,000 against a payoff of at most 100,000), which a
    // withdrawal's stress rule would hold back, changes nothing owed.
    let marked = after(
        &state,
        &[Op::Mark {
            instrument: InstrumentId(1),
            mark: Price(90_000 * MONEY_SCALE),
            index: Price(60_000_000_000),
            risk: vec![Amount(-10_000 * MONEY_SCALE), Amount(60_000 * MONEY_SCALE)],
            published_ms: 0,
        }],
    );
    let id = AccountId(0);
    let stress = marked.stress_free(id).expect("known") as i64;
    assert!(stress < owed(&marked, id), "{stress}");
    assert_eq!(owed(&marked, id), owed(&state, id));
    check(&batch_of(&marked, &forced(id, owed(&marked, id)))).expect("what is owed");
    refuses(&marked, id, stress, "what the stress rule leaves");
    // Short of it (a leveraged perpetual long, its cash negative): nothing, and a unit is refused.
    let long = marked_long();
    let id = AccountId(1);
    assert!(long.accounts()[1].collateral.0 < 0);
    assert_eq!(owed(&long, id), 0);
    check(&batch_of(&long, &forced(id, 0))).expect("nothing owed");
    refuses(&long, id, 1, "out of negative cash");
    // An account holding more positions than the shape's registers (one instrument register
    // here) is paid what it is owed all the same: nothing needs pricing.
    let both = after(&state, &[perp_fill(Side::Buy, 1)]);
    let id = AccountId(1);
    let narrow = Shape {
        instruments: 1,
        positions: 1,
        ..SHAPE
    };
    let owed = owed(&both, id);
    assert_eq!(owed, cash(&both, 1) - 2, "two longs");
    let w = witness(&both, &forced(id, owed), narrow).expect("nothing to price");
    check(&w).expect("paid past the registers");
    let w = witness(&both, &forced(id, owed - 1), narrow).expect("a witness");
    assert!(check(&w).is_err(), "a unit less");
}

/// `ops` with the first deposit's amount one more.
fn other_ops(ops: &[Op]) -> Vec<Op> {
    let mut out = ops.to_vec();
    if let Some(Op::Deposit { amount, .. }) = out.first_mut() {
        amount.0 += 1;
    }
    out
}

#[test]
fn public_inputs_that_differ_from_the_batch_cannot_be_proven() {
    let state = genesis(3);
    let ops = [
        Op::Deposit {
            account: AccountId(2),
            amount: Amount(5),
        },
        Op::L1Deposit {
            priority: 0,
            account: AccountId(1),
            amount: Amount(7),
        },
    ];
    let honest = batch_of(&state, &ops);
    check(&honest).expect("honest");
    let mut w = honest.clone();
    w.public.new_root += Fr::from(1u64);
    assert!(refused(&w), "a wrong new root");
    let mut w = honest.clone();
    w.public.old_root += Fr::from(1u64);
    assert!(refused(&w), "a wrong old root");
    let mut w = honest.clone();
    w.public.priority_after += 1;
    assert!(refused(&w), "a wrong priority count");
    // The data: a different amount than the one posted.
    let other = batch_of(
        &state,
        &[
            Op::Deposit {
                account: AccountId(2),
                amount: Amount(6),
            },
            ops[1].clone(),
        ],
    );
    let mut w = honest.clone();
    w.public.commitment = other.public.commitment;
    assert!(refused(&w), "a commitment to other data");
    // The posted words: the ops' own are the only ones that evaluate to `y` at the contract's
    // point (drawn from the posted words and the commitment).
    let posted = |ops: &[Op]| -> Vec<Fr> {
        let meta = optio_state::blob::BlobMeta {
            accounts: state.accounts().len() as u32,
            ..Default::default()
        };
        optio_state::blob::encode_ops(&meta, ops)
            .expect("encodes")
            .into_iter()
            .flat_map(|e| e.words)
            .collect()
    };
    let (z, y) = optio_state::blob::binding(honest.public.commitment, &posted(&ops));
    assert_eq!(
        (z, y),
        (honest.public.z, honest.public.y),
        "as the contract"
    );
    let mut w = honest.clone();
    w.public.y += Fr::from(1u64);
    assert!(refused(&w), "a wrong evaluation");
    let mut w = honest.clone();
    w.public.z += Fr::from(1u64);
    assert!(refused(&w), "another point");
    // Data posted with the 6 while the 5 is proven (the commitment posted with it, the 5's).
    let other_words = posted(&other_ops(&ops));
    let mut w = honest.clone();
    (w.public.z, w.public.y) = optio_state::blob::binding(honest.public.commitment, &other_words);
    assert!(refused(&w), "words other than the proven ops'");
    // And the same words in another order (the circuit's order is the blob's).
    let mut swapped = posted(&ops);
    swapped.swap(0, 2);
    let mut w = honest.clone();
    (w.public.z, w.public.y) = optio_state::blob::binding(honest.public.commitment, &swapped);
    assert!(refused(&w), "the words reordered");
    // L1 operations out of queue order.
    let w = batch_of(
        &state,
        &[Op::L1Deposit {
            priority: 1,
            account: AccountId(1),
            amount: Amount(7),
        }],
    );
    assert!(refused(&w), "skipping an L1 operation");
}

#[test]
fn a_transfer_between_owners_cannot_be_proven() {
    let state = genesis(4);
    let same = batch_of(
        &state,
        &[Op::Transfer {
            from: AccountId(0),
            to: AccountId(3),
            amount: Amount(1),
        }],
    );
    check(&same).expect("same owner");
    let other = batch_of(
        &state,
        &[Op::Transfer {
            from: AccountId(0),
            to: AccountId(1),
            amount: Amount(1),
        }],
    );
    assert!(refused(&other));
}

#[test]
fn oversized_batches_are_named() {
    let state = genesis(2);
    let keys: Vec<Op> = (0..=SHAPE.keys as u8)
        .map(|k| session_key(0, k + 1, 10, 0))
        .collect();
    let err = witness(&state, &keys, SHAPE).expect_err("one key op too many");
    assert!(err.to_string().contains("account slots"), "{err}");
    // Margin modes take the same slots.
    let mut mixed = keys[1..].to_vec();
    mixed.push(Op::SetMarginMode {
        account: AccountId(1),
        mode: MarginMode::WorstCase,
    });
    let err = witness(&state, &mixed, SHAPE).expect_err("one account op too many");
    assert!(err.to_string().contains("account slots"), "{err}");
    let many = vec![
        Op::Deposit {
            account: AccountId(0),
            amount: Amount(1),
        };
        SHAPE.slots + 1
    ];
    let err = witness(&state, &many, SHAPE).expect_err("one op too many");
    assert!(err.to_string().contains("op slots"), "{err}");
    assert_eq!(kind::SLOT_KINDS.len(), 13);
}

/// The gadgets' own check (values against every constraint as it is laid) and arkworks'
/// satisfiability check over the built matrices agree, on a batch that keeps the rules and one
/// that does not.
#[test]
fn the_value_check_agrees_with_arkworks() {
    let shape = Shape {
        slots: 1,
        accounts: 1,
        positions: 1,
        instruments: 1,
        listings: 1,
        expiries: 1,
        settlements: 1,
        holders: 1,
        marks: 1,
        risk_chunks: 1,
        keys: 0,
        mark_window_bits: 0,
        margins: 2,
        prices: 0,
        solvency: 0,
        solvency_bits: 0,
        readonly: 0,
    };
    let state = genesis(2);
    for (amount, ok) in [
        (1_000_000 * MONEY_SCALE, true),
        (1_000_000 * MONEY_SCALE + 1, false),
    ] {
        let ops = [
            Op::Withdraw {
                account: AccountId(1),
                owner: owner_of(AccountId(1)),
                amount: Amount(amount),
            },
            Op::Mark {
                instrument: InstrumentId(0),
                mark: Price(5),
                index: Price(60_000_000_000),
                risk: vec![Amount(-3), Amount(4)],
                published_ms: 0,
            },
        ];
        let w = witness(&state, &ops, shape).expect("covered");
        assert_eq!(check(&w).is_ok(), ok);
        let cs = ConstraintSystem::<Fr>::new_ref();
        let b = Cs::new(cs.clone());
        optio_prover::circuit::synthesize(&b, &w).expect("synthesis");
        assert_eq!(cs.is_satisfied().expect("check"), ok);
        assert_eq!(b.num_constraints(), cs.num_constraints());
    }
}

/// The prover hands arkworks each constraint's combinations evaluated as the synthesis went,
/// instead of the matrices (`Cs::evaluating`): on random batches, and on one that breaks a
/// rule, those rows are exactly arkworks' own matrices (laid out from the combinations) times
/// the assignment, and the values-only synthesis assigns every variable as the laid-out one.
#[test]
fn the_provers_evaluated_rows_are_the_matrices_at_the_assignment() {
    use ark_relations::gr1cs::{
        ConstraintSystemRef, OptimizationGoal, R1CS_PREDICATE_LABEL, SynthesisMode, mat_vec_mul,
    };
    let new_cs = |construct_matrices| {
        let cs = ConstraintSystem::<Fr>::new_ref();
        cs.set_optimization_goal(OptimizationGoal::Constraints);
        cs.set_mode(SynthesisMode::Prove {
            construct_matrices,
            generate_lc_assignments: false,
        });
        cs
    };
    let assignment = |cs: &ConstraintSystemRef<Fr>| {
        [
            cs.instance_assignment().expect("proving"),
            cs.witness_assignment().expect("proving"),
        ]
        .concat()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut state = leveraged_writer();
    let mut priority = 0;
    let mut batches = Vec::new();
    for _ in 0..3 {
        let ops = random_batch(&mut rng, &state, &mut priority);
        batches.push(witness(&state, &ops, SHAPE).expect("covered ops"));
        state = after(&state, &ops);
    }
    let mut broken = batches[0].clone();
    broken.public.new_root += Fr::from(1u64);
    batches.push(broken);
    for (k, w) in batches.iter().enumerate() {
        let laid = new_cs(true);
        optio_prover::circuit::synthesize(&Cs::new(laid.clone()), w).expect("synthesis");
        laid.finalize();
        let matrices = laid.to_matrices().expect("matrices")[R1CS_PREDICATE_LABEL].clone();
        let z = assignment(&laid);

        let values = new_cs(false);
        let gadgets = Cs::evaluating(values.clone());
        optio_prover::circuit::synthesize(&gadgets, w).expect("synthesis");
        assert_eq!(assignment(&values), z, "batch {k}: the same assignment");
        assert_eq!(
            values.num_instance_variables(),
            laid.num_instance_variables()
        );
        assert_eq!(gadgets.num_constraints(), laid.num_constraints());
        let rows = gadgets.evaluated_rows();
        assert_eq!(rows.len(), 3);
        for (m, (row, matrix)) in rows.iter().zip(&matrices).enumerate() {
            let (ours, arkworks) = (mat_vec_mul(row, &z), mat_vec_mul(matrix, &z));
            assert_eq!(ours.len(), arkworks.len(), "batch {k}: matrix {m}");
            let differ = ours.iter().zip(&arkworks).filter(|(a, b)| a != b).count();
            assert_eq!(differ, 0, "batch {k}: matrix {m}: rows that differ");
        }
        assert_eq!(gadgets.first_failure().is_none(), k < 3, "batch {k}");
    }
}

/// The registers cannot be misused: an op on a register not in use (its leaf never checked), a
/// fill whose position register belongs to the other side, an account loaded twice, and an
/// account marked opened by no OPEN op are each refused.
#[test]
fn registers_cannot_be_misused() {
    let state = genesis(3);
    let ops = [
        Op::Fill {
            instrument: InstrumentId(0),
            maker: AccountId(0),
            taker: AccountId(1),
            taker_side: Side::Buy,
            price: Price(1_000 * MONEY_SCALE),
            qty: Qty(QTY_SCALE),
        },
        Op::Deposit {
            account: AccountId(2),
            amount: Amount(5),
        },
    ];
    let honest = batch_of(&state, &ops);
    check(&honest).expect("honest");
    let mut w = honest.clone();
    w.slots[1].a = Some(SHAPE.accounts - 1);
    assert!(refused(&w), "a register not in use");
    let mut w = honest.clone();
    w.slots[0].pa = w.slots[0].pb;
    assert!(refused(&w), "the taker's position register for the maker");
    let mut w = honest.clone();
    w.accounts[1] = w.accounts[0].clone();
    assert!(refused(&w), "one account in two registers");
    let mut w = honest.clone();
    w.accounts[2].opened = true;
    assert!(refused(&w), "opened without an OPEN op");
    let mut w = honest.clone();
    w.positions[0].account = SHAPE.accounts - 1;
    assert!(refused(&w), "a position of an account register not in use");
}

/// An opened account and a listed instrument take the next id (the counts in the funds leaf):
/// one given another empty id, with that id's true path, is refused at its own slot, before any
/// root is compared (the blob format names no id for them: a rebuild from L1 would give the
/// next one and reach another root). Counts other than the old root's are refused there.
#[test]
fn opened_accounts_and_listed_instruments_take_the_next_id() {
    let state = genesis(3);
    let ops = [
        Op::OpenAccount {
            owner: Address([7; 20]),
        },
        Op::ListInstrument {
            spec: spec("ETH-26MAR27-4000-P"),
        },
    ];
    let honest = batch_of(&state, &ops);
    assert_eq!((honest.counts.accounts, honest.counts.instruments), (3, 2));
    assert_eq!(
        honest.public.new_root,
        after(&state, &ops).root(),
        "the native root"
    );
    check(&honest).expect("honest");

    // An owner that is not an address (2^160 above the one signed) is refused in its own slot,
    // before the posted words are compared.
    let mut w = honest.clone();
    w.slots[0].owner += pow2(160);
    assert!(
        refused_at(&w).starts_with("op slot 0 "),
        "{}",
        refused_at(&w)
    );

    let mut w = honest.clone();
    let r = w.slots[0].a.expect("the open op's register");
    assert_eq!(w.accounts[r].id, 3);
    w.accounts[r].id = 7;
    w.accounts[r].siblings = state.account_proof(AccountId(7)).siblings;
    assert!(
        refused_at(&w).starts_with("op slot 0 "),
        "{}",
        refused_at(&w)
    );

    let mut w = honest.clone();
    assert_eq!(w.listings[0].instrument, 2);
    w.listings[0].instrument = 5;
    w.listings[0].siblings = state
        .instrument_proof(InstrumentId(5))
        .expect("fits the tree")
        .siblings;
    assert!(
        refused_at(&w).starts_with("listing slot 0 "),
        "{}",
        refused_at(&w)
    );

    let mut w = honest.clone();
    w.counts.accounts += 1;
    assert!(
        refused_at(&w).starts_with("the old root "),
        "{}",
        refused_at(&w)
    );
}

/// A listing's spec chunks hold exactly the bytes its length says (31 to a chunk, big-endian,
/// as `hash_bytes` reads them), so that the decoder reads back the bytes that were hashed: a
/// last chunk with one byte more, a full chunk of 2^248 or more, or a chunk past the length
/// that is not empty cannot be proven.
#[test]
fn spec_chunks_hold_exactly_their_bytes() {
    let state = genesis(2);
    let ops = [Op::ListInstrument {
        spec: spec("ETH-26MAR27-4000-P"),
    }];
    let honest = batch_of(&state, &ops);
    check(&honest).expect("honest");
    let len = honest.listings[0].spec_len;
    let last = (len - 1) / 31;
    let n = len - 31 * last;
    assert!(
        n < 31 && last + 1 < SPEC_CHUNKS,
        "a partial last chunk and an unused one ({len} bytes)"
    );
    let refusals = [
        (last, pow2(8 * n), "a byte more in the last chunk"),
        (0, pow2(248), "a full chunk of 2^248"),
        (last + 1, Fr::from(1u64), "a chunk past the length"),
    ];
    for (chunk, more, what) in refusals {
        let mut w = honest.clone();
        w.listings[0].spec_chunks[chunk] += more;
        let at = refused_at(&w);
        assert!(at.starts_with("listing slot 0 "), "{what}: {at}");
    }
}

/// A listing's opened terms are read out of its posted bytes, and the bytes are what the
/// decoder reads back as a spec (`leaf::spec_from_bytes`): calls, puts, perpetuals and a
/// suffixed symbol prove with the native root; terms other than the bytes' (a fee rate, the
/// strike, the payoff kind), and bytes the decoder refuses (each of its reasons), cannot be
/// proven, refused at the listing itself.
#[test]
fn a_listings_terms_are_its_bytes_and_its_bytes_decode() {
    use optio_state::leaf::{spec as at, spec_bytes, spec_from_bytes};
    let state = genesis(1);
    for name in [
        "ETH-26MAR27-4000-C",
        "BTC-1JAN30-65000-P",
        "SOL-PERPETUAL",
        "XRP_USDC-31DEC99-2-C",
        "BTC-29FEB28-90000-C",
    ] {
        let ops = [Op::ListInstrument { spec: spec(name) }];
        let w = batch_of(&state, &ops);
        assert_eq!(w.public.new_root, after(&state, &ops).root(), "{name}");
        check(&w).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let honest = batch_of(
        &state,
        &[Op::ListInstrument {
            spec: spec("ETH-26MAR27-4000-C"),
        }],
    );
    let at_listing = |w: &BatchWitness, what: &str| {
        let at = refused_at(w);
        assert!(at.starts_with("listing slot 0 "), "{what}: {at}");
    };
    let mut w = honest.clone();
    w.listings[0].spec.maker_rate += Fr::from(1u64);
    at_listing(&w, "a maker rate other than the bytes'");
    let mut w = honest.clone();
    w.listings[0].spec.strike += Fr::from(1u64);
    at_listing(&w, "a strike other than the bytes'");
    let mut w = honest.clone();
    w.listings[0].spec.payoff = 2;
    at_listing(&w, "a put opened over a call's bytes");

    let call = spec_bytes(&spec("ETH-26MAR27-4000-C"));
    let perp = spec_bytes(&spec("SOL-PERPETUAL"));
    let with = |base: &[u8], at: usize, v: u8| {
        let mut b = base.to_vec();
        b[at] = v;
        b
    };
    let refused_bytes = [
        perp[..at::SYMBOL].to_vec(),
        [perp.clone(), b"ABCDEFGHIJKLMNO".to_vec()].concat(),
        with(&call, at::PAYOFF, 3),
        with(&perp, 2, 1),
        with(&perp, at::STRIKE + 7, 1),
        with(&call, 1, 100),
        with(&call, 2, 13),
        with(&call, 2, 0),
        with(&call, 3, 32),
        with(&call, 3, 0),
        // 29 February 2027, 31 April 2027.
        with(&with(&call, 2, 2), 3, 29),
        with(&with(&call, 2, 4), 3, 31),
        with(&call, at::SYMBOL + 1, b'h'),
        with(&call, at::SYMBOL, b'-'),
    ];
    for bytes in refused_bytes {
        let why = spec_from_bytes(&bytes).expect_err("the decoder refuses them too");
        let mut w = honest.clone();
        let mut chunks: Vec<Fr> = bytes.chunks(31).map(Fr::from_be_bytes_mod_order).collect();
        chunks.resize(SPEC_CHUNKS.max(chunks.len()), Fr::from(0u64));
        w.listings[0].spec_chunks = chunks;
        w.listings[0].spec_len = bytes.len();
        if bytes[at::PAYOFF] == 0 {
            w.listings[0].spec.payoff = 0;
            w.listings[0].spec.strike = Fr::from(0u64);
        }
        at_listing(&w, why);
    }
}

/// Listings and activations before the op slots, expiries after: a batch that lists an
/// instrument, activates it, trades it and expires it proves with the native root; activating
/// an active instrument, expiring a listed one, or listing over a taken id cannot be proven, and
/// a fill after its instrument's expiry is refused outright.
#[test]
fn listings_activations_and_expiries() {
    let state = genesis(2);
    let ops = vec![
        Op::ListInstrument {
            spec: spec("ETH-26MAR27-4000-P"),
        },
        Op::ActivateInstrument {
            instrument: InstrumentId(2),
        },
        Op::Fill {
            instrument: InstrumentId(2),
            maker: AccountId(0),
            taker: AccountId(1),
            taker_side: Side::Buy,
            price: Price(150 * MONEY_SCALE),
            qty: Qty(QTY_SCALE),
        },
        Op::ExpireInstrument {
            instrument: InstrumentId(2),
        },
    ];
    let w = batch_of(&state, &ops);
    assert_eq!(
        w.public.new_root,
        after(&state, &ops).root(),
        "the native root"
    );
    check(&w).expect("proves");

    let twice = batch_of(
        &state,
        &[Op::ActivateInstrument {
            instrument: InstrumentId(0),
        }],
    );
    assert!(refused(&twice), "activating an active instrument");
    let listed = after(
        &state,
        &[Op::ListInstrument {
            spec: spec("ETH-26MAR27-4000-P"),
        }],
    );
    let early = batch_of(
        &listed,
        &[Op::ExpireInstrument {
            instrument: InstrumentId(2),
        }],
    );
    assert!(refused(&early), "expiring a listed instrument");
    let mut over = batch_of(
        &state,
        &[Op::ListInstrument {
            spec: spec("ETH-26MAR27-4000-P"),
        }],
    );
    over.listings[0].instrument = 1;
    assert!(refused(&over), "listing over an existing instrument");
    let late = [
        Op::ExpireInstrument {
            instrument: InstrumentId(1),
        },
        ops[2].clone(),
    ];
    assert!(
        witness(&state, &late, SHAPE).is_err(),
        "a fill after its expiry"
    );
}

/// Expiry settlement: holders are paid `floor(value * qty / 1e16)` of the committed spec's value
/// at the settlement price (here a call, with a remainder of one unit to insurance); one unit
/// more to a holder, a credit that does not balance the payouts, another payoff kind than the
/// spec's, and settling an instrument that has not expired each cannot be proven.
#[test]
fn expiry_settlement_pays_the_spec_value() {
    let state = after(
        &genesis(3),
        &[Op::Fill {
            instrument: InstrumentId(1),
            maker: AccountId(0),
            taker: AccountId(1),
            taker_side: Side::Buy,
            price: Price(5_000 * MONEY_SCALE),
            qty: Qty(37_000_000),
        }],
    );
    let s = 120_000 * MONEY_SCALE + 1;
    let value = i128::from(s - 100_000 * MONEY_SCALE) * i128::from(QTY_SCALE);
    let pay =
        |q: i128| (value * q).div_euclid(i128::from(QTY_SCALE) * i128::from(QTY_SCALE)) as i64;
    let (long, short) = (pay(37_000_000), pay(-37_000_000));
    assert_eq!((long, short), (7_400_000_000, -7_400_000_001));
    let ops = |long: i64, short: i64, credit: i64, expire: bool| {
        let mut ops = Vec::new();
        if expire {
            ops.push(Op::ExpireInstrument {
                instrument: InstrumentId(1),
            });
        }
        ops.extend([
            Op::SettlePosition {
                account: AccountId(1),
                instrument: InstrumentId(1),
                qty: Qty(37_000_000),
                cash: Amount(long),
            },
            Op::SettlePosition {
                account: AccountId(0),
                instrument: InstrumentId(1),
                qty: Qty(-37_000_000),
                cash: Amount(short),
            },
            Op::SettleInstrument {
                instrument: InstrumentId(1),
                price: Price(s),
                insurance_credit: Amount(credit),
            },
        ]);
        ops
    };
    let honest = ops(long, short, 1, true);
    let w = batch_of(&state, &honest);
    assert_eq!(
        w.public.new_root,
        after(&state, &honest).root(),
        "the native root"
    );
    check(&w).expect("proves");

    assert!(
        refused(&batch_of(&state, &ops(long + 1, short, 0, true))),
        "one unit more"
    );
    assert!(
        refused(&batch_of(&state, &ops(long, short, 2, true))),
        "an unbalanced credit"
    );
    let mut put = w.clone();
    put.settlements[0].spec.payoff = 2;
    assert!(refused(&put), "a put's value for a call");
    assert!(
        refused(&batch_of(&state, &ops(long, short, 1, false))),
        "not expired"
    );
    // A deficit cover after a settlement that credits insurance would read insurance without
    // the credit (settlements apply after the op slots): the witness refuses it, so a batcher
    // cutting to a shape starts a new batch there.
    let mut cover_after = honest.clone();
    cover_after.push(Op::DeficitCovered {
        account: AccountId(2),
        insurance: Amount(1),
        fee_pool: Amount(0),
        socialized: Amount(0),
    });
    assert!(matches!(
        witness(&state, &cover_after, SHAPE),
        Err(optio_prover::WitnessError::Invalid(4))
    ));
}

/// A settlement need not pay every holder in one batch, but it cannot take value from the
/// ones it leaves out: the settled instrument's mark becomes one contract's settlement value
/// (no risk array), so a position left open is worth what the settlement would have paid it
/// (its equity at the marks, and the L1 exit, which values positions at the committed marks),
/// and a later batch settles it at the same price. The credit to insurance is the rounding
/// remainder, at most a micro-USDC per holder paid, so a settlement cannot pay one side alone
/// out of insurance or into it. A settled instrument takes no mark.
#[test]
fn a_settlement_that_leaves_holders_out_takes_nothing_from_them() {
    let fill = |maker: u32, taker: u32, qty: i64| Op::Fill {
        instrument: InstrumentId(1),
        maker: AccountId(maker),
        taker: AccountId(taker),
        taker_side: Side::Buy,
        price: Price(5_000 * MONEY_SCALE),
        qty: Qty(qty),
    };
    // Accounts 1 and 3 hold calls that accounts 0 and 2 wrote.
    let state = after(
        &genesis(4),
        &[fill(0, 1, 37_000_000), fill(2, 3, 50_000_000)],
    );
    let s = 120_000 * MONEY_SCALE + 1;
    let spec = state.instruments()[1].spec.clone();
    let cash = |q: i64| spec.settlement_cash(Price(s), Qty(q)).expect("fits").0;
    let settle = |pairs: &[(u32, i64, i64)], price: i64, credit: i64| {
        let mut ops: Vec<Op> = pairs
            .iter()
            .map(|&(account, qty, cash)| Op::SettlePosition {
                account: AccountId(account),
                instrument: InstrumentId(1),
                qty: Qty(qty),
                cash: Amount(cash),
            })
            .collect();
        ops.push(Op::SettleInstrument {
            instrument: InstrumentId(1),
            price: Price(price),
            insurance_credit: Amount(credit),
        });
        ops
    };
    let first = settle(
        &[
            (1, 37_000_000, cash(37_000_000)),
            (0, -37_000_000, cash(-37_000_000)),
        ],
        s,
        1,
    );
    let mut partial = vec![Op::ExpireInstrument {
        instrument: InstrumentId(1),
    }];
    partial.extend(first.clone());
    let w = batch_of(&state, &partial);
    let settled = after(&state, &partial);
    assert_eq!(w.public.new_root, settled.root(), "the native root");
    check(&w).expect("a settlement of one pair proves");
    let leaf = settled.instruments()[1].leaf();
    assert_eq!(
        leaf.mark,
        Price(20_000 * MONEY_SCALE + 1),
        "one contract's value"
    );
    assert_eq!(leaf.risk_hash, optio_state::poseidon::Fr::from(0u64));
    // Accounts 2 and 3 are worth what the settlement would have paid them (to the unit).
    for (account, q) in [(3, 50_000_000), (2, -50_000_000)] {
        let equity = settled.equity(AccountId(account)).expect("an account");
        let paid = i128::from(settled.accounts()[account as usize].collateral.0 + cash(q));
        assert_eq!(
            equity.div_euclid(i128::from(QTY_SCALE)),
            paid,
            "account {account}"
        );
    }

    // The pair left out settles later, at the same price only.
    let rest = settle(
        &[
            (3, 50_000_000, cash(50_000_000)),
            (2, -50_000_000, cash(-50_000_000)),
        ],
        s,
        1,
    );
    let w = batch_of(&settled, &rest);
    assert_eq!(w.public.new_root, after(&settled, &rest).root());
    check(&w).expect("the holders left out settle later");
    let mut elsewhere = settled.clone();
    let other = s + MONEY_SCALE;
    let cash_at = |q: i64| spec.settlement_cash(Price(other), Qty(q)).expect("fits").0;
    let moved = settle(
        &[
            (3, 50_000_000, cash_at(50_000_000)),
            (2, -50_000_000, cash_at(-50_000_000)),
        ],
        other,
        1,
    );
    assert!(refused_at(&batch_of(&settled, &moved)).starts_with("settlement slot 0"));
    assert_eq!(
        elsewhere.apply_batch(&moved),
        Err(StateError::Settlement(2))
    );
    assert_eq!(elsewhere.commit(), settled.root(), "nothing applied");

    // One side alone cannot be settled out of insurance, nor into it.
    for (pair, credit) in [
        ((3, 50_000_000), -cash(50_000_000)),
        ((2, -50_000_000), -cash(-50_000_000)),
    ] {
        let alone = settle(&[(pair.0, pair.1, cash(pair.1))], s, credit);
        assert!(
            refused_at(&batch_of(&settled, &alone)).starts_with("settlement slot 0"),
            "account {} alone",
            pair.0
        );
        let mut native = settled.clone();
        assert_eq!(native.apply_batch(&alone), Err(StateError::Settlement(1)));
        assert_eq!(native.commit(), settled.root(), "nothing applied");
    }
    // Nor in the first batch: settling only the long, paid out of insurance; nor by a single
    // micro-USDC (at 3 micro-USDC over the strike half a contract is worth 1).
    let mut long_only = partial[..1].to_vec();
    long_only.extend(settle(
        &[(1, 37_000_000, cash(37_000_000))],
        s,
        -cash(37_000_000),
    ));
    assert!(refused_at(&batch_of(&state, &long_only)).starts_with("settlement slot 0"));
    let near = 100_000 * MONEY_SCALE + 3;
    let unit = spec
        .settlement_cash(Price(near), Qty(50_000_000))
        .expect("fits")
        .0;
    assert_eq!(unit, 1);
    let mut one_unit = partial[..1].to_vec();
    one_unit.extend(settle(&[(3, 50_000_000, unit)], near, -1));
    assert!(refused_at(&batch_of(&state, &one_unit)).starts_with("settlement slot 0"));
    let mut native = state.clone();
    assert_eq!(
        native.apply_batch(&one_unit),
        Err(StateError::Settlement(2))
    );

    // A settled instrument takes no mark.
    let mark = [Op::Mark {
        instrument: InstrumentId(1),
        mark: Price(25_000 * MONEY_SCALE),
        index: Price(60_000_000_000),
        risk: Vec::new(),
        published_ms: 0,
    }];
    assert!(
        refused(&batch_of(&settled, &mark)),
        "a mark of a settled instrument"
    );
    let mut native = settled.clone();
    assert_eq!(native.apply_batch(&mark), Err(StateError::MarkSettled(0)));
    check(&batch_of(&state, &mark)).expect("an active instrument's mark");
}

/// An expiry with more holders than a batch holds settles in balanced parts, a position split
/// between two of them: account 0 wrote 87 calls, 37 bought by account 1 and 50 by account 3;
/// the first part settles 37 of account 0's against account 1's, the second the other 50
/// against account 3's, in the next batch or in the same one. Each part balances, so neither
/// is paid out of insurance. Settling more than a holder holds, the other side of its position
/// or nothing of it cannot be proven, and natively each is refused, leaving the state unchanged.
#[test]
fn an_expiry_settles_in_balanced_parts() {
    let fill = |taker: u32, qty: i64| Op::Fill {
        instrument: InstrumentId(1),
        maker: AccountId(0),
        taker: AccountId(taker),
        taker_side: Side::Buy,
        price: Price(5_000 * MONEY_SCALE),
        qty: Qty(qty),
    };
    let mut state = after(&genesis(4), &[fill(1, 37_000_000), fill(3, 50_000_000)]);
    state = after(
        &state,
        &[Op::ExpireInstrument {
            instrument: InstrumentId(1),
        }],
    );
    let s = 120_000 * MONEY_SCALE + 1;
    let spec = state.instruments()[1].spec.clone();
    let cash = |q: i64| spec.settlement_cash(Price(s), Qty(q)).expect("fits").0;
    let part = |parts: &[(u32, i64)]| {
        let mut ops: Vec<Op> = parts
            .iter()
            .map(|&(account, qty)| Op::SettlePosition {
                account: AccountId(account),
                instrument: InstrumentId(1),
                qty: Qty(qty),
                cash: Amount(cash(qty)),
            })
            .collect();
        let paid: i64 = parts.iter().map(|&(_, q)| cash(q)).sum();
        ops.push(Op::SettleInstrument {
            instrument: InstrumentId(1),
            price: Price(s),
            insurance_credit: Amount(-paid),
        });
        ops
    };
    let first = part(&[(1, 37_000_000), (0, -37_000_000)]);
    let second = part(&[(3, 50_000_000), (0, -50_000_000)]);

    let w = batch_of(&state, &first);
    let halfway = after(&state, &first);
    assert_eq!(w.public.new_root, halfway.root(), "the native root");
    check(&w).expect("the first part proves");
    assert_eq!(
        halfway.accounts()[0].positions.get(&1),
        Some(&Qty(-50_000_000)),
        "the part of account 0's short left"
    );
    let w = batch_of(&halfway, &second);
    let done = after(&halfway, &second);
    assert_eq!(w.public.new_root, done.root(), "the native root");
    check(&w).expect("the second part proves, a batch later");
    assert!(done.accounts().iter().all(|a| a.positions.is_empty()));
    // Both parts in one batch, with a settlement slot each.
    let both: Vec<Op> = first.iter().chain(&second).cloned().collect();
    let two = Shape {
        settlements: 2,
        ..SHAPE
    };
    let w = witness(&state, &both, two).expect("covered ops");
    assert_eq!(w.public.new_root, done.root(), "the same root in one batch");
    check(&w).expect("both parts prove in one batch");

    // Each wrong part balances, so only the quantity rule refuses it.
    for (rule, wrong) in [
        (
            "more than account 1 holds",
            part(&[(1, 38_000_000), (0, -38_000_000)]),
        ),
        ("the other side", part(&[(1, -37_000_000), (0, 37_000_000)])),
        (
            "nothing of it",
            part(&[(1, 0), (0, -37_000_000), (3, 37_000_000)]),
        ),
    ] {
        let at = refused_at(&batch_of(&state, &wrong));
        assert!(
            at.starts_with("settlement slot 0"),
            "{rule}: refused at {at}"
        );
        let mut native = state.clone();
        assert_eq!(
            native.apply_batch(&wrong),
            Err(StateError::Settlement(0)),
            "{rule}"
        );
        assert_eq!(native.commit(), state.root(), "nothing applied");
    }
}

/// A liquidation moves the position at its price with its fee to insurance (the native root);
/// a fee other than the posted one, or a price that does not give an exact notional, cannot be
/// proven.
#[test]
fn liquidations_move_positions_and_pay_insurance() {
    // Account 1, down to 100,000, buys 2 perpetuals at their 90,000 mark: its cash below zero,
    // it could default; then the mark falls to 42,000, its equity (4,000) below its
    // maintenance (4,200).
    let state = after(
        &genesis(3),
        &[
            down_to_100_000(1),
            Op::Mark {
                instrument: InstrumentId(0),
                mark: Price(90_000 * MONEY_SCALE),
                index: Price(60_000_000_000),
                risk: vec![Amount(-10_000 * MONEY_SCALE), Amount(10_000 * MONEY_SCALE)],
                published_ms: 0,
            },
        ],
    );
    let state = after(
        &state,
        &[Op::Fill {
            instrument: InstrumentId(0),
            maker: AccountId(0),
            taker: AccountId(1),
            taker_side: Side::Buy,
            price: Price(90_000 * MONEY_SCALE),
            qty: Qty(2 * QTY_SCALE),
        }],
    );
    let state = started(&marked_with(&state, 0, 42_000, &[-10_000, 10_000]), &[1]);
    let liquidation = |fee: i64| Op::Liquidation {
        account: AccountId(1),
        counterparty: AccountId(2),
        instrument: InstrumentId(0),
        qty: Qty(-QTY_SCALE / 2),
        price: Price(85_000 * MONEY_SCALE),
        fee: Amount(fee),
    };
    let ops = [liquidation(250 * MONEY_SCALE)];
    let w = batch_of(&state, &ops);
    let native = after(&state, &ops);
    assert_eq!(w.public.new_root, native.root(), "the native root");
    assert_eq!(
        native.funds().0,
        Amount(250 * MONEY_SCALE),
        "the fee to insurance"
    );
    check(&w).expect("proves");
    let mut fee = w.clone();
    fee.slots[0].amount += Fr::from(1u64);
    assert!(refused(&fee), "another fee than the posted one");
    let mut inexact = w.clone();
    inexact.slots[0].price += Fr::from(1u64);
    assert!(refused(&inexact), "an inexact notional");
}

/// `genesis(accounts)` after account 1 bought 20 contracts of instrument 0 from account 0 at
/// `entry`, its mark, and was liquidated to account 2 in two steps: half its position at a mark
/// where its equity was about half its maintenance, with a fee of `fee` (to insurance), and the
/// rest at `exit`, its next mark, with no fee (its equity gone).
fn liquidated_long(accounts: u32, entry: i64, exit: i64, fee: i64) -> SettlementState {
    let state = marked(&genesis(accounts), 0, entry);
    let fill = Op::Fill {
        instrument: InstrumentId(0),
        maker: AccountId(0),
        taker: AccountId(1),
        taker_side: Side::Buy,
        price: Price(entry),
        qty: Qty(20 * QTY_SCALE),
    };
    // `1,000,000 - 20 * (entry - mid) = mid / 2`, to whole dollars.
    let mid = (20 * entry - 1_000_000 * MONEY_SCALE) * 2 / 39 / MONEY_SCALE * MONEY_SCALE;
    let liquidation = |price: i64, fee: i64| Op::Liquidation {
        account: AccountId(1),
        counterparty: AccountId(2),
        instrument: InstrumentId(0),
        qty: Qty(-10 * QTY_SCALE),
        price: Price(price),
        fee: Amount(fee),
    };
    let state = started(&marked(&after(&state, &[fill]), 0, mid), &[1]);
    let state = marked(&after(&state, &[liquidation(mid, fee)]), 0, exit);
    after(&state, &[liquidation(exit, 0)])
}

/// Account 1 after a leveraged long closed by a liquidation far below its price: negative cash,
/// no position, with insurance and the fee pool holding something.
fn with_deficit() -> (SettlementState, i64) {
    let state = liquidated_long(
        4,
        100_000 * MONEY_SCALE,
        40_000 * MONEY_SCALE,
        500 * MONEY_SCALE,
    );
    let deficit = -state.accounts()[1].collateral.0;
    assert!(deficit > 0 && state.accounts()[1].positions.is_empty());
    (state, deficit)
}

/// `[shares from accounts 0 and 3, the cover]` for account 1, taking `insurance` and `fees`
/// and paying `extra` beyond the deficit.
fn cover(deficit: i64, insurance: i64, fees: i64, extra: i64) -> Vec<Op> {
    let socialized = deficit - insurance - fees + extra;
    let x = socialized / 3;
    vec![
        Op::LossShared {
            account: AccountId(0),
            amount: Amount(x),
        },
        Op::LossShared {
            account: AccountId(3),
            amount: Amount(socialized - x),
        },
        Op::DeficitCovered {
            account: AccountId(1),
            insurance: Amount(insurance),
            fee_pool: Amount(fees),
            socialized: Amount(socialized),
        },
    ]
}

#[test]
fn a_deficit_is_covered_by_insurance_fees_and_exactly_the_shares() {
    let (state, deficit) = with_deficit();
    let (insurance, fees) = state.funds();
    assert!(insurance.0 > 0 && fees.0 > 0);
    let ops = cover(deficit, insurance.0, fees.0, 0);
    let w = batch_of(&state, &ops);
    let native = after(&state, &ops);
    assert_eq!(w.public.new_root, native.root(), "the native root");
    assert_eq!(native.accounts()[1].collateral, Amount(0));
    assert_eq!(native.funds(), (Amount(0), Amount(0)));
    check(&w).expect("proves");

    // Each broken rule: refused at its op slot, and natively (nothing applied).
    let refused_both = |ops: &[Op], slot: usize, what: &str| {
        let w = batch_of(&state, ops);
        assert!(
            refused_at(&w).contains(&format!("op slot {slot}")),
            "{what}: {}",
            refused_at(&w)
        );
        let mut native = state.clone();
        assert_eq!(
            native.apply_batch(ops),
            Err(optio_state::StateError::Waterfall(slot)),
            "{what}"
        );
        assert_eq!(native.commit(), state.root(), "{what}: nothing applied");
    };
    // Covering more than the deficit leaves the account with money nobody lost.
    refused_both(
        &cover(deficit, insurance.0, fees.0, 1),
        2,
        "a cover beyond the deficit",
    );
    // Taking more than insurance or the fee pool holds.
    refused_both(
        &cover(deficit, insurance.0 + 1, fees.0, -1),
        2,
        "insurance below zero",
    );
    refused_both(
        &cover(deficit, insurance.0, fees.0 + 1, -1),
        2,
        "the fee pool below zero",
    );
    // Out of the engine's order: shares charged, or the fee pool taken, while insurance holds
    // something; shares while the fee pool does.
    refused_both(
        &cover(deficit, insurance.0 - 1, fees.0, 0),
        2,
        "shares before insurance is spent",
    );
    refused_both(
        &cover(deficit, insurance.0, fees.0 - 1, 0),
        2,
        "shares before the fee pool is spent",
    );
    let partial = |insurance: i64, fee_pool: i64| {
        [Op::DeficitCovered {
            account: AccountId(1),
            insurance: Amount(insurance),
            fee_pool: Amount(fee_pool),
            socialized: Amount(0),
        }]
    };
    refused_both(
        &partial(insurance.0 - 1, fees.0),
        0,
        "the fee pool before insurance is spent",
    );
    // More than insurance holds, the fee pool untouched (no other rule of the order binds).
    refused_both(
        &partial(insurance.0 + 1, 0),
        0,
        "insurance alone below zero",
    );
    // More than the fee pool holds once insurance is spent, no shares.
    refused_both(
        &partial(insurance.0, fees.0 + 1),
        0,
        "the fee pool alone below zero",
    );
    // What insurance and the fee pool hold, no shares: the rest stays a deficit.
    let unresolved = partial(insurance.0, fees.0);
    check(&batch_of(&state, &unresolved)).expect("insurance, then the fee pool");
    assert!(after(&state, &unresolved).accounts()[1].collateral.0 < 0);
    // A share charged beyond an account's cash.
    let mut ops = cover(deficit, 0, 0, 0);
    ops[0] = Op::LossShared {
        account: AccountId(1),
        amount: Amount(1),
    };
    ops[1] = Op::LossShared {
        account: AccountId(3),
        amount: Amount(deficit - 1),
    };
    refused_both(&ops, 0, "a share from an account in deficit");
}

/// Account 1 long 20 perpetuals bought at 100,000 on leverage, marked down to 40,000 (its
/// equity gone) and its auction started.
fn crashed_long() -> SettlementState {
    let state = marked(&genesis(4), 0, 100_000 * MONEY_SCALE);
    let state = marked(
        &after(&state, &[perp_fill(Side::Buy, 20)]),
        0,
        40_000 * MONEY_SCALE,
    );
    started(&state, &[1])
}

/// Account 2 takes `contracts` of account 1's long at 40,000 (no fee: account 1's equity is
/// gone, and a fee is at most what is left).
fn liquidation_of_1(contracts: i64) -> Op {
    Op::Liquidation {
        account: AccountId(1),
        counterparty: AccountId(2),
        instrument: InstrumentId(0),
        qty: Qty(-contracts * QTY_SCALE),
        price: Price(40_000 * MONEY_SCALE),
        fee: Amount(0),
    }
}

/// A cover of account 1's deficit from all that insurance and the fee pool hold in `state`.
fn cover_of_1(state: &SettlementState) -> Op {
    let (insurance, fees) = state.funds();
    Op::DeficitCovered {
        account: AccountId(1),
        insurance,
        fee_pool: fees,
        socialized: Amount(0),
    }
}

/// Only an account with nothing left to liquidate has its deficit covered: a leveraged long
/// liquidated halfway, cash negative and half its position still held, cannot be covered from
/// insurance and the fee pool (a flat margin slot proves the account holds no position, its
/// positions all in registers), and natively the cover is refused and changes nothing.
#[test]
fn only_a_flat_accounts_deficit_is_covered() {
    let state = after(&crashed_long(), &[liquidation_of_1(10)]);
    assert!(state.accounts()[1].collateral.0 < 0);
    assert!(!state.accounts()[1].positions.is_empty());
    let ops = [cover_of_1(&state)];
    let w = batch_of(&state, &ops);
    assert!(
        refused_at(&w).starts_with("margin slots"),
        "{}",
        refused_at(&w)
    );
    let mut native = state.clone();
    assert_eq!(
        native.apply_batch(&ops),
        Err(optio_state::StateError::Waterfall(0))
    );
    assert_eq!(native.commit(), state.root(), "nothing applied");
    // Once the rest is liquidated, the same cover proves.
    let flat = [liquidation_of_1(10), ops[0].clone()];
    check(&batch_of(&state, &flat)).expect("a flat account's deficit");
    after(&state, &flat);
}

/// Circuit version 3: a cover of an account whose leaf held no position at the batch's start
/// takes no flat margin slot (it filled nothing earlier in the batch, so it holds none): the
/// leveraged long of `only_a_flat_accounts_deficit_is_covered`, liquidated in two batches, is
/// covered in a third with no margin slot; a witness that takes the flat slot anyway is
/// refused (a slot must price an op that needs it). Liquidated to flat and covered in one
/// batch, the account held a position at its start: that cover needs its flat slot, and a
/// witness without it is refused.
#[test]
fn a_cover_of_an_account_flat_at_the_batch_start_takes_no_margin_slot() {
    let half = after(&crashed_long(), &[liquidation_of_1(10)]);
    // Flat and covered in one batch: the flat slot.
    let both = [liquidation_of_1(10), cover_of_1(&half)];
    let w = batch_of(&half, &both);
    assert_eq!(w.margins.iter().filter(|m| m.flat).count(), 1);
    check(&w).expect("covered with its flat slot");
    let mut unslotted = w.clone();
    for m in &mut unslotted.margins {
        *m = Default::default();
    }
    assert!(
        refused_at(&unslotted).starts_with("margin slots"),
        "{}",
        refused_at(&unslotted)
    );
    let state = after(&half, &[liquidation_of_1(10)]);
    assert!(state.accounts()[1].collateral.0 < 0);
    assert!(state.accounts()[1].positions.is_empty());
    let ops = [cover_of_1(&state)];
    let w = batch_of(&state, &ops);
    assert!(w.margins.iter().all(|m| !m.enabled), "no flat slot");
    check(&w).expect("a cover with no margin slot");
    after(&state, &ops);
    // The flat slot where none is needed: refused.
    let mut slotted = w.clone();
    slotted.margins[0].enabled = true;
    slotted.margins[0].flat = true;
    slotted.margins[0].account = slotted.slots[0].a;
    slotted.margins[0].slot = Some(0);
    assert!(check(&slotted).is_err(), "a slot no op needs");
}

/// `ops` (one op) on `state` are refused at the circuit's first op slot and natively with
/// `error`, leaving the state unchanged.
fn refused_first_and_natively(state: &SettlementState, ops: &[Op], error: StateError, rule: &str) {
    refused_where_and_natively(state, ops, "op slot 0", error, rule);
}

/// `ops` applied to `state` are refused in the circuit's part `place` (as `refused_at` names
/// it: "op slot 1", "margin slots") and natively with `error`, leaving the state unchanged.
fn refused_where_and_natively(
    state: &SettlementState,
    ops: &[Op],
    place: &str,
    error: StateError,
    rule: &str,
) {
    let at = refused_at(&batch_of(state, ops));
    assert!(at.starts_with(place), "{rule}: refused at {at}");
    let mut native = state.clone();
    assert_eq!(native.apply_batch(ops), Err(error), "{rule}");
    assert_eq!(native.commit(), state.root(), "nothing applied");
}

/// `genesis(4)` with accounts 0 and 1 down to 100,000 each, then account 1 long 2 perpetuals
/// (a worst-case payoff of 200,000 each) from account 0 at 100,000, and `mark`: neither covers
/// what its shorts can owe at worst (account 1's cash is below zero; account 0 may owe 400,000
/// on 300,000), so either may be liquidated.
fn leveraged_pair(mark: Op) -> SettlementState {
    // (The mark first: a fill must leave its accounts solvent at the committed marks.)
    let state = after(&genesis(4), &[down_to_100_000(0), down_to_100_000(1), mark]);
    after(&state, &[perp_fill(Side::Buy, 2)])
}

/// `genesis(6)` with accounts 0 and 1 down to 100,000 each, account 1 long 2 perpetuals bought
/// from account 4 at 150,000 and account 0 short 2 sold to account 5 at 50,000 (each at its mark
/// then), and then `mark`: at 100,000 each is at zero equity less its fees, below its `Standard` maintenance
/// (5% of its 200,000 notional), and neither covers what its shorts can owe at worst (account
/// 1's cash is below zero; account 0 may owe 400,000 on 200,000), so either may be liquidated.
fn liquidatable_pair(mark: Op) -> SettlementState {
    started(&unstarted_pair(mark), &[0, 1])
}

/// `liquidatable_pair` before the auctions start.
fn unstarted_pair(mark: Op) -> SettlementState {
    let fill = |maker: u32, taker: u32, price: i64| Op::Fill {
        instrument: InstrumentId(0),
        maker: AccountId(maker),
        taker: AccountId(taker),
        taker_side: Side::Buy,
        price: Price(price * MONEY_SCALE),
        qty: Qty(2 * QTY_SCALE),
    };
    let state = after(&genesis(6), &[down_to_100_000(0), down_to_100_000(1)]);
    let state = after(
        &marked(&state, 0, 150_000 * MONEY_SCALE),
        &[fill(4, 1, 150_000)],
    );
    let state = after(
        &marked(&state, 0, 50_000 * MONEY_SCALE),
        &[fill(0, 5, 50_000)],
    );
    after(&state, &[mark])
}

/// `liquidatable_pair` with the perpetual marked at 100,000, the index at 60,000 and scenarios
/// of -15,000 and +12,000.
fn liquidatable_at_100_000() -> SettlementState {
    liquidatable_in(None)
}

/// `liquidatable_at_100_000`, with account 1 switched to `mode` (if any) before the auctions
/// start (an account in liquidation keeps its mode).
fn liquidatable_in(mode: Option<MarginMode>) -> SettlementState {
    let usd = |x: i64| x * MONEY_SCALE;
    let state = unstarted_pair(Op::Mark {
        instrument: InstrumentId(0),
        mark: Price(usd(100_000)),
        index: Price(usd(60_000)),
        risk: vec![Amount(usd(-15_000)), Amount(usd(12_000))],
        published_ms: 0,
    });
    let switched: Vec<Op> = mode
        .map(|mode| Op::SetMarginMode {
            account: AccountId(1),
            mode,
        })
        .into_iter()
        .collect();
    started(&after(&state, &switched), &[0, 1])
}

/// A liquidation of one contract of account 1's long in instrument 0 to account 2 at `price`
/// with `fee` (micro-USDC).
fn one_sold(price: i64, fee: i64) -> Op {
    Op::Liquidation {
        account: AccountId(1),
        counterparty: AccountId(2),
        instrument: InstrumentId(0),
        qty: Qty(-QTY_SCALE),
        price: Price(price),
        fee: Amount(fee),
    }
}

/// `account`'s equity at the committed marks, micro-USDC (exact where the positions' values
/// are whole micro-USDC).
fn equity_of(state: &SettlementState, account: u32) -> i64 {
    (state.equity(AccountId(account)).expect("exists") / i128::from(QTY_SCALE)) as i64
}

/// A liquidation moves a position only inside the stress range of its instrument's committed
/// mark and risk array, on the liquidated account's side: account 1's long is sold at no less
/// than `mark + min(0, min RA)`, account 0's short bought back at no more than
/// `mark + max(0, max RA)` (the no-move scenario when no value is above zero). One unit beyond
/// either end is refused at its op slot and natively, leaving the state unchanged.
#[test]
fn a_liquidation_is_priced_inside_the_committed_stress_range() {
    let usd = |x: i64| x * MONEY_SCALE;
    let liquidation = |account: u32, qty: i64, price: i64| Op::Liquidation {
        account: AccountId(account),
        counterparty: AccountId(2),
        instrument: InstrumentId(0),
        qty: Qty(qty * QTY_SCALE),
        price: Price(price),
        fee: Amount(0),
    };
    for (risk, low, high) in [
        (vec![-15_000, 12_000, -3_000], 85_000, 112_000),
        (vec![-15_000, -3_000], 85_000, 100_000),
    ] {
        let mark = Op::Mark {
            instrument: InstrumentId(0),
            mark: Price(usd(100_000)),
            // At the mark: the deepest discount, 20% of it, is wider than these ranges.
            index: Price(usd(100_000)),
            risk: risk.iter().map(|&v| Amount(usd(v))).collect(),
            published_ms: 0,
        };
        let state = liquidatable_pair(mark);
        for (ops, rule) in [
            (
                [liquidation(1, -1, usd(low))],
                "the long sold at the low end",
            ),
            (
                [liquidation(0, 1, usd(high))],
                "the short bought back at the high end",
            ),
        ] {
            check(&batch_of(&state, &ops)).expect(rule);
            after(&state, &ops);
        }
        for (ops, rule) in [
            (
                [liquidation(1, -1, usd(low) - 1)],
                "the long sold below the low end",
            ),
            (
                [liquidation(0, 1, usd(high) + 1)],
                "the short bought back above the high end",
            ),
        ] {
            refused_first_and_natively(&state, &ops, StateError::LiquidationPrice(0), rule);
        }
    }
}

/// A liquidation's fee is bounded by the fee at `MAX_LIQUIDATION_FEE_BPS` of the contracts'
/// value at the index committed with the instrument's mark, clamped to its cap
/// (`optio_types::max_liquidation_fee`): for 1.5 perpetuals with the index at 60,000, at most
/// 900 USDC (it was 3,000, the value at the cap of 200,000, before the index was read); with
/// the index at 300,000, above the cap, 3,000. Exactly the bound proves; a unit more is refused
/// at its op slot and natively, leaving the state unchanged; so is every fee when the bound is
/// computed from another instrument's terms.
#[test]
fn a_liquidation_fee_is_bounded_at_the_committed_index() {
    let qty = Qty(-3 * QTY_SCALE / 2);
    for (index, bound) in [(60_000, 900), (300_000, 3_000)] {
        let mark = Op::Mark {
            instrument: InstrumentId(0),
            mark: Price(100_000 * MONEY_SCALE),
            index: Price(index * MONEY_SCALE),
            risk: vec![Amount(-15_000 * MONEY_SCALE), Amount(12_000 * MONEY_SCALE)],
            published_ms: 0,
        };
        // With equity of 5,000 (below its maintenance of 10,000): the fee is at most that too.
        let state = liquidatable_pair(mark);
        let equity = equity_of(&state, 1);
        let state = after(
            &state,
            &[Op::Deposit {
                account: AccountId(1),
                amount: Amount(5_000 * MONEY_SCALE - equity),
            }],
        );
        let x = &state.instruments()[0];
        let most = optio_types::max_liquidation_fee(&x.spec, x.index, qty);
        assert_eq!(most, bound * i128::from(MONEY_SCALE), "1% of 1.5 x {index}");
        let liquidation = |fee: i128| {
            [Op::Liquidation {
                account: AccountId(1),
                counterparty: AccountId(2),
                instrument: InstrumentId(0),
                qty,
                price: Price(100_000 * MONEY_SCALE),
                fee: Amount(fee as i64),
            }]
        };
        let honest = batch_of(&state, &liquidation(most));
        check(&honest).expect("a fee at the bound");
        after(&state, &liquidation(most));
        refused_first_and_natively(
            &state,
            &liquidation(most + 1),
            StateError::LiquidationFee(0),
            "a fee a unit above the bound",
        );
        let mut native = state.clone();
        assert_eq!(
            native.apply_batch(&liquidation(-1)),
            Err(StateError::LiquidationFee(0)),
            "a negative fee"
        );
        // The cap and index the register opens are the committed ones: a prover that opens
        // others (doubled here, which would raise the bound) breaks the leaf's hashes.
        let mut w = honest.clone();
        let cap = w.instruments[0].spec.cap;
        w.instruments[0].spec.cap = cap + cap;
        assert!(refused(&w), "another cap than the committed spec's");
        let mut w = honest.clone();
        let index = w.instruments[0].index;
        w.instruments[0].index = index + index;
        assert!(refused(&w), "another index than the committed one");
    }
}

/// A liquidation's price is within `MAX_LIQUIDATION_DISCOUNT_BPS` (20%) of a contract's value
/// at the committed index from the committed mark, on the liquidated account's side, beside
/// its stress range: with the perpetual marked at 100,000, the index at 60,000 and scenarios of
/// -50% and +50%, account 1's long may be sold at 88,000 (the mark less 12,000), not a unit
/// below, and account 0's short bought back at 112,000, not a unit above; refused at the op
/// slot and natively (`LiquidationPrice`), leaving the state unchanged. The auction's deepest
/// discount is 20% (`RiskConfig::liquidation_max_bps`, which may not be set deeper).
#[test]
fn a_liquidation_is_priced_within_the_deepest_discount_of_the_index() {
    let usd = |x: i64| x * MONEY_SCALE;
    let mark = Op::Mark {
        instrument: InstrumentId(0),
        mark: Price(usd(100_000)),
        index: Price(usd(60_000)),
        risk: vec![Amount(usd(-50_000)), Amount(usd(50_000))],
        published_ms: 0,
    };
    let state = liquidatable_pair(mark);
    let liquidation = |account: u32, qty: i64, price: i64| {
        [Op::Liquidation {
            account: AccountId(account),
            counterparty: AccountId(2),
            instrument: InstrumentId(0),
            qty: Qty(qty * QTY_SCALE),
            price: Price(price),
            fee: Amount(0),
        }]
    };
    for (account, qty, edge, beyond) in [
        (1, -1, usd(88_000), usd(88_000) - 1),
        (0, 1, usd(112_000), usd(112_000) + 1),
    ] {
        check(&batch_of(&state, &liquidation(account, qty, edge))).expect("at the bound");
        after(&state, &liquidation(account, qty, edge));
        refused_first_and_natively(
            &state,
            &liquidation(account, qty, beyond),
            StateError::LiquidationPrice(0),
            "a unit beyond the deepest discount",
        );
    }
}

/// An auction's start (kind 29) needs its account below maintenance and able to default at the
/// committed marks, as a liquidation does, and sets its leaf's `since` to the committed oracle
/// time; a liquidation needs a start and is held to the proven schedule from it
/// (`optio_types::within_liquidation_schedule`): with the perpetual marked at 100,000 and the
/// index at 60,000 (scenarios of -50% and +50%), account 1's long may be sold 1% of 60,000
/// under the mark at its start (99,400), 10.5% seven and a half minutes later (93,700), not a
/// micro-USDC lower. Each refusal is at the op slot (the margin slots for maintenance) and
/// native, with its own error, leaving the state unchanged.
#[test]
fn an_auction_starts_below_maintenance_and_sells_within_its_schedule() {
    let usd = |x: i64| x * MONEY_SCALE;
    let state = unstarted_pair(Op::Mark {
        instrument: InstrumentId(0),
        mark: Price(usd(100_000)),
        index: Price(usd(60_000)),
        risk: vec![Amount(usd(-50_000)), Amount(usd(50_000))],
        published_ms: 0,
    });
    let t = 1_000;
    let state = after(&state, &remarked(&state, t));
    let start = |account: u32| Op::LiquidationStart {
        account: AccountId(account),
    };
    // Not started: refused.
    refused_first_and_natively(
        &state,
        &[one_sold(usd(99_400), 0)],
        StateError::LiquidationNotStarted(0),
        "a liquidation before its auction's start",
    );
    // A start and a step at the start's discount in one batch.
    for (ops, rule) in [
        (vec![start(1)], "a start"),
        (vec![start(1), one_sold(usd(99_400), 0)], "a step at 1%"),
    ] {
        let w = batch_of(&state, &ops);
        check(&w).unwrap_or_else(|e| panic!("{rule}: {e}"));
        let native = after(&state, &ops);
        assert_eq!(w.public.new_root, native.root(), "{rule}");
        assert_eq!(native.accounts()[1].since, t, "{rule}");
    }
    refused_where_and_natively(
        &state,
        &[start(1), one_sold(usd(99_400) - 1, 0)],
        "op slot 1",
        StateError::LiquidationPrice(1),
        "a micro-USDC deeper",
    );
    // The leaf commits the start: a prover that opens the account at another `since` breaks
    // the leaf's hash.
    let begun = after(&state, &[start(1)]);
    let mut w = batch_of(&begun, &[one_sold(usd(99_400), 0)]);
    check(&w).expect("a step after the start's batch");
    let k = w
        .accounts
        .iter()
        .position(|a| a.enabled && a.id == 1)
        .expect("account 1");
    w.accounts[k].since -= 1;
    assert!(refused(&w), "another since than the leaf's");
    // Seven and a half minutes of the oracle's clock later.
    let later = after(&begun, &remarked(&begun, t + 450_000));
    check(&batch_of(&later, &[one_sold(usd(93_700), 0)])).expect("10.5% under");
    after(&later, &[one_sold(usd(93_700), 0)]);
    refused_first_and_natively(
        &later,
        &[one_sold(usd(93_700) - 1, 0)],
        StateError::LiquidationPrice(0),
        "a micro-USDC deeper than 10.5%",
    );
    // A start proves its account below maintenance: account 1 cured by a deposit is refused at
    // the margin slots; account 2, which covers what its shorts can owe (it holds none), at
    // its op slot. A prover that skips the start's margin slot is refused at the op slot.
    let cure = Op::Deposit {
        account: AccountId(1),
        amount: Amount(usd(50_000)),
    };
    refused_where_and_natively(
        &state,
        &[cure, start(1)],
        "margin slots",
        StateError::LiquidationMaintained(1),
        "a cured account",
    );
    refused_first_and_natively(
        &state,
        &[start(2)],
        StateError::LiquidationCovered(0),
        "the start of an account that covers its shorts",
    );
    let mut skipped = without_margin_slots(batch_of(&state, &[start(1)]), |m| m.below);
    skipped.slots[0].unpriced = true;
    let at = refused_at(&skipped);
    assert!(
        at.starts_with("op slot 0"),
        "a skipped margin slot: refused at {at}"
    );
}

/// An auction's end (`Op::LiquidationEnd`, blob format 9) needs a started auction whose
/// account is cured at the committed marks (a cured margin slot: its mode's maintenance before
/// the op) or covers what its shorts can owe at worst (the op slot alone), and sets `since` back
/// to 0; until it is posted the account is frozen: it fills no order, moves no money out and
/// keeps its margin mode. So an operator that skips an end cannot post anything the account
/// does, and a later auction of it needs a new start: the second auction's schedule counts
/// from its own start, not the first's.
#[test]
fn an_auction_ends_once_cured_and_its_account_is_frozen_until_then() {
    let usd = |x: i64| x * MONEY_SCALE;
    let mark = |price: i64, published_ms: u64| Op::Mark {
        instrument: InstrumentId(0),
        mark: Price(usd(price)),
        index: Price(usd(60_000)),
        risk: vec![Amount(usd(-50_000)), Amount(usd(50_000))],
        published_ms,
    };
    let state = unstarted_pair(mark(100_000, 0));
    let t = 1_000;
    let state = after(&state, &remarked(&state, t));
    let begun = after(
        &state,
        &[Op::LiquidationStart {
            account: AccountId(1),
        }],
    );
    let end = Op::LiquidationEnd {
        account: AccountId(1),
    };
    // 50,000 more leaves account 1 (long 2 at a 100,000 mark, its cash below zero) at 50,000
    // equity, above its 10,000 maintenance, still able to default.
    let cure = Op::Deposit {
        account: AccountId(1),
        amount: Amount(usd(50_000)),
    };
    let sell = Op::Fill {
        instrument: InstrumentId(0),
        maker: AccountId(4),
        taker: AccountId(1),
        taker_side: Side::Sell,
        price: Price(usd(100_000)),
        qty: Qty(QTY_SCALE),
    };
    // No auction to end.
    refused_first_and_natively(
        &state,
        std::slice::from_ref(&end),
        StateError::LiquidationNotStarted(0),
        "the end of an auction that never started",
    );
    // Still below maintenance: refused at the cured slot.
    refused_where_and_natively(
        &begun,
        std::slice::from_ref(&end),
        "margin slots",
        StateError::LiquidationNotCured(0),
        "not cured",
    );
    // Cured, not ended: frozen. Its fill is refused at its op slot, and so are its withdrawal
    // and its margin mode's change.
    refused_where_and_natively(
        &begun,
        &[cure.clone(), sell.clone()],
        "op slot 1",
        StateError::Frozen(1),
        "a frozen fill",
    );
    refused_first_and_natively(
        &begun,
        &[Op::Withdraw {
            account: AccountId(1),
            owner: owner_of(AccountId(1)),
            amount: Amount(1),
        }],
        StateError::Frozen(0),
        "a frozen account's withdrawal",
    );
    let switch = Op::SetMarginMode {
        account: AccountId(1),
        mode: MarginMode::Portfolio,
    };
    refused_where_and_natively(
        &begun,
        &[cure.clone(), switch.clone()],
        "account slot",
        StateError::Frozen(1),
        "a frozen mode change",
    );
    // Cured and ended (by its cured slot): the fill and the mode change prove, `since` is 0.
    for (ops, rule) in [
        (vec![cure.clone(), end.clone()], "an end"),
        (
            vec![cure.clone(), end.clone(), sell.clone()],
            "a fill after the end",
        ),
        (
            vec![cure.clone(), end.clone(), switch],
            "a mode change after the end",
        ),
    ] {
        let w = batch_of(&begun, &ops);
        assert!(
            w.margins.iter().any(|m| m.cured) && !w.slots[1].by_cover,
            "{rule}"
        );
        check(&w).unwrap_or_else(|e| panic!("{rule}: {e}"));
        let native = after(&begun, &ops);
        assert_eq!(w.public.new_root, native.root(), "{rule}");
        assert_eq!(native.accounts()[1].since, 0, "{rule}");
    }
    // A prover that leaves out the cured slot is refused.
    let mut skipped =
        without_margin_slots(batch_of(&begun, &[cure.clone(), end.clone()]), |m| m.cured);
    assert!(refused(&skipped), "an end without its cured slot");
    skipped.slots[1].unpriced = true;
    let at = refused_at(&skipped);
    assert!(
        at.starts_with("op slot 1"),
        "an end called unpriced: refused at {at}"
    );
    // Covering its shorts (its cash at or above zero), the op slot proves the end alone.
    let covered = [
        Op::Deposit {
            account: AccountId(1),
            amount: Amount(usd(250_000)),
        },
        end.clone(),
    ];
    let w = batch_of(&begun, &covered);
    assert!(w.slots[1].by_cover && !w.margins.iter().any(|m| m.cured));
    check(&w).expect("an end by cover");
    let mut claimed =
        without_margin_slots(batch_of(&begun, &[cure.clone(), end.clone()]), |m| m.cured);
    claimed.slots[1].by_cover = true;
    let at = refused_at(&claimed);
    assert!(
        at.starts_with("op slot 1"),
        "a false cover: refused at {at}"
    );
    // After the end, a later fall needs a new start: a step cannot price from the first one.
    let ended = after(&begun, &[cure, end]);
    let fallen = after(&ended, &[mark(78_000, t + 450_000)]);
    refused_first_and_natively(
        &fallen,
        &[one_sold(usd(77_400), 0)],
        StateError::LiquidationNotStarted(0),
        "a step of the second auction before its start",
    );
    let second = [
        Op::LiquidationStart {
            account: AccountId(1),
        },
        one_sold(usd(77_400), 0),
    ];
    let w = batch_of(&fallen, &second);
    check(&w).expect("a new start and a step at its 1%");
    assert_eq!(after(&fallen, &second).accounts()[1].since, t + 450_000);
    assert_eq!(
        fallen
            .clone()
            .apply_batch(&[second[0].clone(), one_sold(usd(77_400) - 1, 0)]),
        Err(StateError::LiquidationPrice(1))
    );
}

/// A liquidation only reduces the liquidated account's position: account 1's long of 2 may be
/// sold whole and account 0's short of 2 bought back whole, but selling 3, buying for the long,
/// or buying back 3 for the short is refused at its op slot and natively, leaving the state
/// unchanged; so is "liquidating" flat account 3 (which would open a position).
#[test]
fn a_liquidation_only_reduces_the_liquidated_position() {
    let liquidation = |account: u32, contracts: i64| Op::Liquidation {
        account: AccountId(account),
        counterparty: AccountId(2),
        instrument: InstrumentId(0),
        qty: Qty(contracts * QTY_SCALE),
        price: Price(100_000 * MONEY_SCALE),
        fee: Amount(0),
    };
    let mark = Op::Mark {
        instrument: InstrumentId(0),
        mark: Price(100_000 * MONEY_SCALE),
        index: Price(60_000_000_000),
        risk: vec![Amount(-10_000 * MONEY_SCALE), Amount(10_000 * MONEY_SCALE)],
        published_ms: 0,
    };
    let state = liquidatable_pair(mark);
    for (account, contracts) in [(1, -2), (0, 2)] {
        let ops = [liquidation(account, contracts)];
        check(&batch_of(&state, &ops)).expect("reduces");
        after(&state, &ops);
    }
    for (account, contracts, rule) in [
        (1, -3, "sells more than the long"),
        (1, 1, "grows the long"),
        (0, 3, "flips the short"),
    ] {
        let ops = [liquidation(account, contracts)];
        refused_first_and_natively(&state, &ops, StateError::LiquidationSize(0), rule);
    }
    // Flat and funded, account 3 owes nothing: "liquidating" it, which would open a short, is
    // refused before its size is looked at.
    refused_first_and_natively(
        &state,
        &[liquidation(3, -1)],
        StateError::LiquidationCovered(0),
        "opens a short",
    );
}

/// A liquidation needs its account below its margin mode's proven maintenance before the op
/// (`SettlementState::below_maintenance`, in the mode the batch found it in), by more than the
/// engine's rounding allowance (`optio_state::liquidation_rounding`: 4 micro-USDC for the one
/// long position here). Account 1 of `liquidatable_pair`, long 2 perpetuals marked at 100,000
/// (scenarios -15,000 and +12,000), gets a deposit before one contract is sold at the mark. In
/// `Standard` its maintenance is 5% of 200,000, 10,000: a deposit bringing its equity to 10,000
/// USDC and 3 micro-USDC leaves it below, and proves; one of a micro-USDC more is
/// refused at the margin slots and natively (`LiquidationMaintained`), leaving the state
/// unchanged. In `Portfolio` the binding total is the -15,000 scenario at 80% weight, 24,000
/// below the no-move one: the same at 24,000 USDC. The prover names the total that falls
/// short; naming one that covers (the no-move one in `Portfolio`, any but the first in
/// `Standard`, whose rule has one total) is refused.
#[test]
fn a_liquidation_of_an_account_at_its_maintenance_cannot_be_proven() {
    let usd = |x: i64| x * MONEY_SCALE;
    let standard = liquidatable_at_100_000();
    let portfolio = liquidatable_in(Some(MarginMode::Portfolio));
    // Its equity at the marks (its fees took it below zero).
    let equity = equity_of(&standard, 1);
    let ops = |need: i64, extra: i64| {
        [
            Op::Deposit {
                account: AccountId(1),
                amount: Amount(usd(need) + extra - equity),
            },
            one_sold(usd(100_000), 0),
        ]
    };
    let below_slot = |w: &BatchWitness| {
        w.margins
            .iter()
            .position(|m| m.below)
            .expect("a below slot")
    };
    for (state, need, mode, short) in [
        (&standard, 10_000, "Standard", 0),
        (&portfolio, 24_000, "Portfolio", 1),
    ] {
        let w = batch_of(state, &ops(need, 3));
        assert_eq!(
            w.public.new_root,
            after(state, &ops(need, 3)).root(),
            "{mode}"
        );
        assert_eq!(w.margins[below_slot(&w)].scenario, Some(short), "{mode}");
        check(&w).unwrap_or_else(|e| panic!("{mode}: below by more than the allowance: {e}"));
        let at = refused_at(&batch_of(state, &ops(need, 4)));
        assert!(at.starts_with("margin slots"), "{mode}: refused at {at}");
        let mut native = state.clone();
        assert_eq!(
            native.apply_batch(&ops(need, 4)),
            Err(StateError::LiquidationMaintained(1)),
            "{mode}"
        );
        assert_eq!(native.commit(), state.root(), "{mode}: nothing applied");
        let mut covering = w.clone();
        let k = below_slot(&covering);
        covering.margins[k].scenario = Some(1 - short);
        assert!(refused(&covering), "{mode}: a total that covers named");
    }
}

/// A liquidation's fee is at most the liquidated account's equity at the committed marks after
/// its position moved (the engine caps it there: none once the equity is gone). Account 1 of
/// `liquidatable_pair`, long 2 perpetuals marked at 100,000, is brought by a deposit to an
/// equity of 1,500 (below its maintenance of 10,000), then one contract is sold at 99,000,
/// which leaves 500: a fee of 500 proves, one micro-USDC more is refused at the margin slots and
/// natively (`LiquidationFeeBeyondEquity`), leaving the state unchanged. Without the deposit its
/// fees left it at -90: any fee is refused, none proves.
#[test]
fn a_liquidation_fee_is_at_most_the_accounts_equity() {
    let usd = |x: i64| x * MONEY_SCALE;
    let state = liquidatable_at_100_000();
    let equity = equity_of(&state, 1);
    let liquidation = |fee: i64| one_sold(usd(99_000), fee);
    let deposit = Op::Deposit {
        account: AccountId(1),
        amount: Amount(usd(1_500) - equity),
    };
    for (ops, proves, rule) in [
        (
            vec![deposit.clone(), liquidation(usd(500))],
            true,
            "the fee at the equity left",
        ),
        (
            vec![deposit, liquidation(usd(500) + 1)],
            false,
            "a micro-USDC above it",
        ),
        (vec![liquidation(0)], true, "no fee without equity"),
        (vec![liquidation(1)], false, "a fee without equity"),
    ] {
        let w = batch_of(&state, &ops);
        let mut native = state.clone();
        if proves {
            check(&w).unwrap_or_else(|e| panic!("{rule}: {e}"));
            native.apply_batch(&ops).expect(rule);
            native.commit();
            assert_eq!(w.public.new_root, native.root(), "{rule}");
        } else {
            let at = refused_at(&w);
            assert!(at.starts_with("margin slots"), "{rule}: refused at {at}");
            assert_eq!(
                native.apply_batch(&ops),
                Err(StateError::LiquidationFeeBeyondEquity(ops.len() - 1)),
                "{rule}"
            );
            assert_eq!(native.commit(), state.root(), "{rule}: nothing applied");
        }
    }
}

/// A liquidated account that held more positions at the batch's start than the shape prices
/// for a liquidation (`FillBudget::liquidation_priced`: one fewer than its position registers,
/// at most its instrument registers) is not priced: its liquidation takes no margin slot. One
/// the shape prices must be: a prover that skips the margin slot of account 1 (long an option
/// and 2 perpetuals, below maintenance), claiming it unpriced, is refused at its op slot. In a
/// shape of two position registers (which prices a liquidated account of one position) the
/// same liquidation proves unpriced, and a prover that leaves out the flag (without a margin
/// slot) is refused.
#[test]
fn a_liquidation_the_shape_prices_cannot_skip_its_margin_slot() {
    let usd = |x: i64| x * MONEY_SCALE;
    let state = after(&genesis(6), &[down_to_100_000(1)]);
    let state = marked(&state, 1, usd(1_000));
    let state = after(
        &state,
        &[Op::Fill {
            instrument: InstrumentId(1),
            maker: AccountId(3),
            taker: AccountId(1),
            taker_side: Side::Buy,
            price: Price(usd(1_000)),
            qty: Qty(QTY_SCALE),
        }],
    );
    let state = marked(&state, 0, usd(150_000));
    let state = after(
        &state,
        &[Op::Fill {
            instrument: InstrumentId(0),
            maker: AccountId(4),
            taker: AccountId(1),
            taker_side: Side::Buy,
            price: Price(usd(150_000)),
            qty: Qty(2 * QTY_SCALE),
        }],
    );
    let state = started(&marked(&state, 0, usd(100_000)), &[1]);
    assert_eq!(state.accounts()[1].positions.len(), 2);
    let ops = [one_sold(usd(100_000), 0)];
    after(&state, &ops);
    let priced = batch_of(&state, &ops);
    assert!(!priced.slots[0].unpriced);
    check(&priced).expect("priced");
    let mut skipped = priced.clone();
    skipped.slots[0].unpriced = true;
    for m in skipped.margins.iter_mut().filter(|m| m.below) {
        *m = optio_prover::witness::MarginSlot::default();
    }
    let at = refused_at(&skipped);
    assert!(at.starts_with("op slot 0"), "refused at {at}");
    let small = Shape {
        positions: 2,
        ..SHAPE
    };
    assert_eq!(small.fill_budget().liquidation_priced(), 1);
    let unpriced = witness(&state, &ops, small).expect("fits");
    assert!(unpriced.slots[0].unpriced && !unpriced.margins.iter().any(|m| m.below));
    check(&unpriced).expect("unpriced");
    let mut flagless = unpriced.clone();
    flagless.slots[0].unpriced = false;
    assert!(
        refused(&flagless),
        "a priced liquidation without its margin slot"
    );
}

/// A liquidation needs the liquidated account unable to cover what its shorts can owe at worst
/// (`collateral * 1e8 < sum |q| * W`, the account leaf's liability, which the circuit keeps as
/// the ops move positions): an account that covers them can pay all it may ever owe, and the
/// engine never liquidates it. Account 0 sells 6 perpetuals (a worst-case payoff of 200,000
/// each: 1,200,000 in all) to account 1 at 10,000, and the mark rises to 199,000; a deposit
/// brings its collateral to exactly 1,200,000 less `short` micro-USDC (its equity 6,000 less
/// that, below its maintenance of 59,700), then account 2 buys back one contract at the mark,
/// then another.
#[test]
fn a_liquidation_of_an_account_that_covers_its_shorts_cannot_be_proven() {
    let state = marked(&genesis(3), 0, 10_000 * MONEY_SCALE);
    let state = after(&state, &[fill_of(0, Side::Buy, 10_000, 6)]);
    let price = 199_000 * MONEY_SCALE;
    let state = started(&marked_with(&state, 0, 199_000, &[-1_000, 1_000]), &[0]);
    let leaf = state.exit_proof(AccountId(0)).expect("exists").leaf;
    assert_eq!(leaf.liability, 6 * 200_000 * 100_000_000 * 1_000_000);
    let needed = 1_200_000 * MONEY_SCALE - state.accounts()[0].collateral.0;
    let batch = |short: i64, liquidations: usize| {
        let mut ops = vec![Op::Deposit {
            account: AccountId(0),
            amount: Amount(needed - short),
        }];
        ops.extend((0..liquidations).map(|_| Op::Liquidation {
            account: AccountId(0),
            counterparty: AccountId(2),
            instrument: InstrumentId(0),
            qty: Qty(QTY_SCALE),
            price: Price(price),
            fee: Amount(0),
        }));
        ops
    };
    // A micro-USDC short of the worst case: liquidated, the liability falling by one
    // contract's 200,000 (the new leaf's, as natively).
    let ops = batch(1, 1);
    let w = batch_of(&state, &ops);
    let native = after(&state, &ops);
    assert_eq!(w.public.new_root, native.root(), "the native root");
    assert_eq!(
        native
            .exit_proof(AccountId(0))
            .expect("exists")
            .leaf
            .liability,
        5 * 200_000 * 100_000_000 * 1_000_000
    );
    check(&w).expect("an account that could default is liquidated");
    // Covering it exactly: refused at the liquidation, natively too.
    let ops = batch(0, 1);
    assert!(refused_at(&batch_of(&state, &ops)).starts_with("op slot 1"));
    let mut refused_natively = state.clone();
    assert_eq!(
        refused_natively.apply_batch(&ops),
        Err(StateError::LiquidationCovered(1))
    );
    assert_eq!(refused_natively.commit(), state.root(), "nothing applied");
    // The first buyback leaves it covering the other five (200,000 - 199,000 better): the
    // second is refused, from the liability as the first left it.
    let ops = batch(1, 2);
    assert!(refused_at(&batch_of(&state, &ops)).starts_with("op slot 2"));
    assert_eq!(
        state.clone().apply_batch(&ops),
        Err(StateError::LiquidationCovered(2))
    );
    // A prover that keeps the leaf's liability as before the fill cannot open the account.
    let mut stale = batch_of(&state, &batch(1, 1));
    stale.accounts[0].liability += Fr::from(1u64);
    assert!(refused(&stale), "a liability other than the leaf's");
}

/// A trade is between two accounts: a fill whose maker is its taker, or a liquidation to the
/// liquidated account, is refused at its op slot and natively (the engine never makes one, and
/// the circuit follows a trade's two sides apart: one register on both sides could misstate
/// the liability the liquidation rule reads).
#[test]
fn a_trade_of_an_account_with_itself_cannot_be_proven() {
    let state = liquidatable_pair(Op::Mark {
        instrument: InstrumentId(0),
        mark: Price(100_000 * MONEY_SCALE),
        index: Price(60_000_000_000),
        risk: vec![Amount(-15_000 * MONEY_SCALE), Amount(12_000 * MONEY_SCALE)],
        published_ms: 0,
    });
    let fill = Op::Fill {
        instrument: InstrumentId(0),
        maker: AccountId(2),
        taker: AccountId(2),
        taker_side: Side::Buy,
        price: Price(100_000 * MONEY_SCALE),
        qty: Qty(QTY_SCALE),
    };
    refused_first_and_natively(&state, &[fill], StateError::SelfTrade(0), "a self-fill");
    let liquidation = Op::Liquidation {
        account: AccountId(0),
        counterparty: AccountId(0),
        instrument: InstrumentId(0),
        qty: Qty(QTY_SCALE),
        price: Price(100_000 * MONEY_SCALE),
        fee: Amount(0),
    };
    refused_first_and_natively(
        &state,
        &[liquidation],
        StateError::SelfTrade(0),
        "a liquidation to itself",
    );
}

#[test]
fn shares_must_sum_to_the_cover_that_claims_them() {
    let (state, deficit) = with_deficit();
    let mut unclaimed = cover(deficit, 0, 0, 0);
    unclaimed.pop();
    let mut mismatched = cover(deficit, 0, 0, 0);
    if let Some(Op::DeficitCovered { socialized, .. }) = mismatched.last_mut() {
        socialized.0 -= 1;
    }
    for ops in [unclaimed, mismatched] {
        let mut native = state.clone();
        let err = native.apply_batch(&ops).expect_err("refused natively");
        assert!(
            matches!(err, optio_state::StateError::SharesUnbalanced(_)),
            "{err}"
        );
        assert_eq!(native.root(), state.root(), "nothing applied");
        assert!(witness(&state, &ops, SHAPE).is_err(), "no witness either");
    }

    // In the circuit: a cover turned into a deposit of the same sum leaves the shares
    // unclaimed (the roots are those of the honest batch).
    let ops = cover(deficit, 0, 0, 0);
    let mut w = batch_of(&state, &ops);
    w.slots[2].kind = kind::DEPOSIT;
    w.slots[2].amount = Fr::from(deficit as u64);
    // (and without the cover's flat margin slot, which would refuse it first)
    w.margins[0] = Default::default();
    assert!(
        refused_at(&w).contains("loss shares"),
        "shares nobody claimed"
    );
}

fn session_key(account: u32, key: u8, expiry_ms: u64, at_ms: u64) -> Op {
    Op::SessionKey {
        account: AccountId(account),
        key: Address([key; 20]),
        expiry_ms,
        at_ms,
    }
}

#[test]
fn session_keys_are_registered_expired_and_revoked_as_natively() {
    let state = genesis(2);
    // Keys out of address order, one on an account opened in the batch, beside cash ops.
    let ops = [
        session_key(0, 0x30, 1_000, 0),
        Op::Deposit {
            account: AccountId(0),
            amount: Amount(5),
        },
        session_key(0, 0x10, 2_000, 0),
        session_key(0, 0x20, 3_000, 0),
        Op::OpenAccount {
            owner: Address([7; 20]),
        },
        session_key(2, 0x40, 9_000, 0),
    ];
    let w = batch_of(&state, &ops);
    let state = {
        let next = after(&state, &ops);
        assert_eq!(w.public.new_root, next.root(), "the native root");
        check(&w).expect("proves");
        next
    };
    assert_eq!(state.accounts()[0].keys.len(), 3);
    // At 1,500 the key of 0x30 has expired and is dropped; 0x20 is revoked; 0x05 registered.
    let ops = [
        session_key(0, 0x05, 8_000, 1_500),
        session_key(0, 0x20, 0, 1_500),
    ];
    let w = batch_of(&state, &ops);
    let next = after(&state, &ops);
    assert_eq!(w.public.new_root, next.root(), "the native root");
    let keys: Vec<_> = next.accounts()[0].keys.iter().collect();
    assert_eq!(
        keys,
        [(&Address([5; 20]), &8_000), (&Address([0x10; 20]), &2_000)]
    );
    check(&w).expect("proves");

    // Each tampering leaves the batch's roots and records as they were: only the key rule
    // refuses. The first slot: before [0x10, 0x20, 0x30 (expired)], after [0x05, 0x10, 0x20].
    let at_keys = |w: &BatchWitness| refused_at(w).contains("account slot");
    let mut other_expiry = w.clone();
    other_expiry.keys[0].new[0].1 += 1;
    assert!(at_keys(&other_expiry), "the key with another expiry");
    let mut dropped = w.clone();
    dropped.keys[0].new[2] = (Fr::from(0u64), 0);
    dropped.keys[0].new_len = 2;
    dropped.keys[0].sources.pop();
    assert!(at_keys(&dropped), "a live key dropped");
    let mut expired_kept = w.clone();
    let expired = expired_kept.keys[0].old[2];
    expired_kept.keys[0].new[3] = expired;
    expired_kept.keys[0].new_len = 4;
    expired_kept.keys[0].sources.push(Some(2));
    assert!(at_keys(&expired_kept), "an expired key kept");
    let mut unsorted = w.clone();
    unsorted.keys[0].new.swap(1, 2);
    unsorted.keys[0].sources.swap(1, 2);
    assert!(at_keys(&unsorted), "keys out of order");
    let mut twice = w.clone();
    twice.keys[0].new[2] = twice.keys[0].new[1];
    twice.keys[0].sources[2] = twice.keys[0].sources[1];
    assert!(at_keys(&twice), "a key taken twice");
    let mut other_before = w.clone();
    other_before.keys[0].old[0].1 += 1;
    assert!(
        at_keys(&other_before),
        "a key list other than the account's"
    );
    let mut live_dropped = w.clone();
    live_dropped.keys[0].at = 0;
    assert!(
        at_keys(&live_dropped),
        "a key dropped that had not expired at `at`"
    );
}

/// Random deficits (a leveraged long closed far below its price) covered, in full or in a
/// random part, from insurance, then the fee pool, then shares of one to three other accounts,
/// beside other ops: the circuit agrees with the native root every time.
#[test]
fn random_deficit_covers_satisfy_the_circuit_with_the_native_root() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    for round in 0..6 {
        let entry = rng.random_range(100_000..150_000) * MONEY_SCALE;
        let exit = rng.random_range(20_000..40_000) * MONEY_SCALE;
        let fee = rng.random_range(0..1_000) * MONEY_SCALE;
        let state = liquidated_long(6, entry, exit, fee);
        let deficit = -state.accounts()[1].collateral.0;
        assert!(deficit > 0, "round {round}");
        let (insurance, fees) = state.funds();
        let covered = if rng.random_bool(0.5) {
            deficit
        } else {
            rng.random_range(1..=deficit)
        };
        let from_insurance = insurance.0.min(covered);
        let from_fees = fees.0.min(covered - from_insurance);
        let socialized = covered - from_insurance - from_fees;
        // Some of accounts 3 to 5 (each within its cash), then the maker, who sold at the high
        // price, for the rest.
        let mut sharers: Vec<u32> = [3, 4, 5]
            .into_iter()
            .filter(|_| rng.random_bool(0.6))
            .collect();
        sharers.push(0);
        let mut ops = vec![Op::Deposit {
            account: AccountId(4),
            amount: Amount(7),
        }];
        let mut left = socialized;
        for (k, a) in sharers.iter().enumerate() {
            let share = if k + 1 == sharers.len() {
                left
            } else {
                rng.random_range(0..=left.min(state.accounts()[*a as usize].collateral.0))
            };
            left -= share;
            if share > 0 {
                ops.push(Op::LossShared {
                    account: AccountId(*a),
                    amount: Amount(share),
                });
            }
        }
        ops.push(Op::DeficitCovered {
            account: AccountId(1),
            insurance: Amount(from_insurance),
            fee_pool: Amount(from_fees),
            socialized: Amount(socialized),
        });
        let w = batch_of(&state, &ops);
        let native = after(&state, &ops);
        assert_eq!(w.public.new_root, native.root(), "round {round}");
        assert_eq!(
            native.accounts()[1].collateral,
            Amount(covered - deficit),
            "round {round}"
        );
        check(&w).unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
}

/// A committed state with `n` active instruments (ids 0 to n - 1) and no accounts.
fn listed(n: u32) -> SettlementState {
    let mut state = SettlementState::new();
    let mut ops: Vec<Op> = (0..n)
        .map(|k| Op::ListInstrument {
            spec: spec(&format!("BTC-26MAR27-{}-C", 50_000 + 1_000 * k)),
        })
        .collect();
    ops.extend((0..n).map(|k| Op::ActivateInstrument {
        instrument: InstrumentId(k),
    }));
    state.apply_batch(&ops).expect("listings apply");
    state.commit();
    state
}

/// A random mark of `instrument` below 100,000 (within the worst-case payoff of the calls
/// `listed` lists, and of the puts struck at 100,000 or more the windows test lists).
fn mark_op(rng: &mut ChaCha8Rng, instrument: u32) -> Op {
    Op::Mark {
        instrument: InstrumentId(instrument),
        mark: Price(rng.random_range(1..100_000) * MONEY_SCALE),
        index: Price(60_000_000_000),
        risk: (0..rng.random_range(1..=6))
            .map(|_| Amount(rng.random_range(-1_000_000..1_000_000)))
            .collect(),
        published_ms: 0,
    }
}

/// Windows of four ids: at most three per batch.
const WINDOWED: Shape = Shape {
    marks: 3,
    mark_window_bits: 2,
    margins: 2,
    prices: 1,
    solvency: 4,
    solvency_bits: 2,
    readonly: 0,
    ..SHAPE
};

/// The engine lists an instrument only while those not yet settled lie in the shape's mark
/// windows (`Shape::mark_windows`, tested in the engine's scenarios): then the marks of every
/// one of them fit one batch, and one instrument past the windows would not.
#[test]
fn the_engines_mark_windows_hold_a_batch_marking_every_instrument() {
    let shape = Shape {
        marks: 2,
        mark_window_bits: 2,
        ..SHAPE
    };
    assert_eq!(
        shape.mark_windows(),
        optio_types::MarkWindows {
            windows: 2,
            bits: 2
        }
    );
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let marks =
        |rng: &mut ChaCha8Rng, n: u32| -> Vec<Op> { (0..n).map(|k| mark_op(rng, k)).collect() };
    let ops = marks(&mut rng, 8);
    check(&witness(&listed(8), &ops, shape).expect("eight ids, two windows")).expect("proves");
    assert!(matches!(
        witness(&listed(9), &marks(&mut rng, 9), shape),
        Err(optio_prover::WitnessError::TooLarge("mark windows"))
    ));
}

/// Marks by window (one path per run of ids, the subtree rebuilt) and by a path each give the
/// native root and the same commitment, on random sets of marks over 14 instruments, some
/// batches listing a 15th and marking it in a window whose other ids hold no instrument.
#[test]
fn marks_in_windows_agree_with_a_path_each_and_the_native_root() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut state = listed(14);
    let one_each = Shape { marks: 16, ..SHAPE };
    for round in 0..8 {
        // Up to three windows' worth of ids, in order.
        let windows: std::collections::BTreeSet<u32> =
            (0..3).map(|_| rng.random_range(0..4u32)).collect();
        let mut ids: Vec<u32> = Vec::new();
        for w in &windows {
            for id in w * 4..w * 4 + 4 {
                if (id as usize) < state.instruments().len() && rng.random_bool(0.6) {
                    ids.push(id);
                }
            }
        }
        let mut ops = Vec::new();
        if round % 3 == 2 && state.instruments().len() < 16 {
            let next = state.instruments().len() as u32;
            ops.push(Op::ListInstrument {
                spec: spec(&format!("ETH-26MAR27-{}-P", 100_000 + next)),
            });
            if windows.len() < 3 || windows.contains(&(next / 4)) {
                ids.push(next);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ops.extend(ids.iter().map(|&id| mark_op(&mut rng, id)));
        let next = after(&state, &ops);
        let windowed = witness(&state, &ops, WINDOWED).expect("fits three windows");
        let each = witness(&state, &ops, one_each).expect("fits a path each");
        for w in [&windowed, &each] {
            assert_eq!(w.public.new_root, next.root(), "round {round}");
            check(w).unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
        assert_eq!(windowed.public.commitment, each.public.commitment);
        assert_eq!(
            optio_prover::data_commitment(&state, &ops),
            Ok(windowed.public.commitment)
        );
        state = next;
    }
}

/// A window's leaves, its order, its entries' openings and its new marks are each bound: a
/// witness that changes one is refused by that window's rules.
#[test]
fn mark_windows_cannot_be_forged() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let state = listed(12);
    let ops: Vec<Op> = [1u32, 2, 6, 9]
        .iter()
        .map(|&id| mark_op(&mut rng, id))
        .collect();
    let ok = witness(&state, &ops, WINDOWED).expect("three windows");
    check(&ok).expect("the honest witness proves");
    assert_eq!(ok.marks.iter().filter(|w| w.enabled).count(), 3);

    // An unmarked id's leaf other than the tree's: the old subtree does not match.
    let mut w = ok.clone();
    w.marks[0].entries[0].leaf += Fr::from(1u64);
    assert!(refused_at(&w).contains("mark window 0"));
    // A marked entry whose opening is not its leaf.
    let mut w = ok.clone();
    w.marks[0].entries[1].before.mark = Price(w.marks[0].entries[1].before.mark.0 + 1);
    assert!(refused_at(&w).contains("mark window 0"));
    // Another mark than the batch's new root has.
    let mut w = ok.clone();
    w.marks[2].entries[1].mark += Fr::from(1u64);
    assert!(refused(&w));
    // The same window twice, each consistent with the root the other left: the marks would
    // enter the commitment out of id order (ids 1, 2 then 0), so the order rule refuses it.
    let first = [ops[0].clone(), ops[1].clone()];
    let mut w = witness(&state, &first, WINDOWED).expect("one window");
    let between = after(&state, &first);
    let again = [mark_op(&mut rng, 0)];
    w.marks[1] = witness(&between, &again, WINDOWED)
        .expect("one window")
        .marks[0]
        .clone();
    w.public.new_root = after(&between, &again).root();
    w.public.commitment = optio_prover::witness::commitment(&w);
    assert!(refused_at(&w).contains("mark window 1"));
    // A mark in an unused window.
    let mut w = ok.clone();
    w.marks[2].enabled = false;
    assert!(refused_at(&w).contains("mark window 2"));

    // The witness itself refuses marks out of id order, and more windows than the shape has.
    let mut backwards = ops.clone();
    backwards.swap(0, 1);
    assert_eq!(
        witness(&state, &backwards, WINDOWED).map(|_| ()),
        Err(optio_prover::WitnessError::Invalid(1))
    );
    let spread: Vec<Op> = [0u32, 4, 8, 11]
        .iter()
        .map(|&id| mark_op(&mut rng, id))
        .collect();
    let two = Shape {
        marks: 2,
        ..WINDOWED
    };
    let err = witness(&state, &spread, two)
        .map(|_| ())
        .expect_err("three windows");
    assert!(err.to_string().contains("mark windows"), "{err}");
}

/// A batch whose fill leaves an account with equity below zero at the committed marks cannot
/// be proven, and does not apply natively: an operator trading between accounts it controls at
/// a price far from the mark cannot leave one of them bankrupt for the waterfall to cover. In
/// `Standard` the account is held to more, its maintenance after the batch (so the proof
/// refuses it at its end slot, before the solvency rule; natively it is `Insolvent`). The rule
/// reads the account at the batch's end: a deposit in the same batch that brings it to exactly
/// its maintenance (5% of 2,000,000 of perpetuals) proves, a micro-USDC less does not.
#[test]
fn a_fill_that_leaves_its_account_insolvent_cannot_be_proven() {
    let state = marked(&genesis(2), 0, 100_000 * MONEY_SCALE);
    // Account 1 buys 20 perpetuals marked at 100,000 for 160,000 each: 1,000,000 of cash,
    // less 3,200,000 paid and its fee, plus 2,000,000 of value.
    let fill = fill_of(0, Side::Buy, 160_000, 20);
    let w = batch_of(&state, std::slice::from_ref(&fill));
    // Both accounts hold only the position the fill changes: the registers price them.
    assert!(w.accounts[0].registers_price && w.accounts[1].registers_price);
    assert!(w.solvency.iter().all(|s| !s.enabled));
    let at = refused_at(&w);
    assert!(at.starts_with("margin slots"), "refused at {at}");
    let mut native = state.clone();
    assert_eq!(
        native.apply_batch(std::slice::from_ref(&fill)),
        Err(StateError::Insolvent(0))
    );
    assert_eq!(native.commit(), state.root(), "nothing applied");
    // The deposit that leaves its equity at exactly its maintenance.
    let deposit = |amount| Op::Deposit {
        account: AccountId(1),
        amount: Amount(amount),
    };
    let plenty = after(&state, &[fill.clone(), deposit(1_000_000 * MONEY_SCALE)]);
    let equity = plenty.equity(AccountId(1)).expect("known") / i128::from(QTY_SCALE);
    let exact = 1_100_000 * MONEY_SCALE - equity as i64;
    let ops = [fill.clone(), deposit(exact)];
    check(&batch_of(&state, &ops)).expect("equity of exactly its maintenance");
    assert_eq!(
        after(&state, &ops).equity(AccountId(1)),
        Some(i128::from(100_000 * MONEY_SCALE) * i128::from(QTY_SCALE))
    );
    let short = [fill, deposit(exact - 1)];
    let at = refused_at(&batch_of(&state, &short));
    assert!(
        at.starts_with("margin slots"),
        "a micro-USDC short: refused at {at}"
    );
    assert_eq!(
        state.clone().apply_batch(&short),
        Err(StateError::Unmaintained(0))
    );
}

/// A liquidation's counterparty is checked as a fill's accounts are: account 1's 20
/// perpetuals, marked at 40,000, sold by its liquidation to account 2 for more than the mark
/// (which the price rule allows: only a price below the stress range hurts the liquidated
/// account) cannot leave account 2 insolvent; at 90,000, where its equity is exactly zero, it
/// proves.
#[test]
fn a_liquidation_that_leaves_its_counterparty_insolvent_cannot_be_proven() {
    let state = marked(&genesis(3), 0, 100_000 * MONEY_SCALE);
    let state = after(&state, &[fill_of(0, Side::Buy, 100_000, 20)]);
    let state = started(&marked(&state, 0, 40_000 * MONEY_SCALE), &[1]);
    let sold_at = |price: i64| {
        [Op::Liquidation {
            account: AccountId(1),
            counterparty: AccountId(2),
            instrument: InstrumentId(0),
            qty: Qty(-20 * QTY_SCALE),
            price: Price(price * MONEY_SCALE),
            fee: Amount(0),
        }]
    };
    // 1,000,000 of cash, less 20 * 90,000 paid, plus 20 * 40,000 of value.
    let exact = sold_at(90_000);
    check(&batch_of(&state, &exact)).expect("equity of exactly zero");
    assert_eq!(after(&state, &exact).equity(AccountId(2)), Some(0));
    let over = sold_at(90_001);
    let at = refused_at(&batch_of(&state, &over));
    assert!(at.starts_with("solvency"), "refused at {at}");
    let mut native = state.clone();
    assert_eq!(native.apply_batch(&over), Err(StateError::Insolvent(0)));
    assert_eq!(native.commit(), state.root(), "nothing applied");
}

/// The solvency check prices every position the account holds after the batch, at the
/// committed marks: an account in `Standard` that takes a liquidated position while holding a
/// position the batch does not touch is priced in windows; leaving a window out, a quantity or
/// mark other than the committed one, or pricing it from the registers instead, cannot be
/// proven.
#[test]
fn solvency_windows_cannot_be_forged() {
    let state = marked(&genesis(3), 0, 100_000 * MONEY_SCALE);
    let state = marked(&state, 1, 5_000 * MONEY_SCALE);
    // Account 2 holds calls from an earlier batch; account 1 is long 20 perpetuals, marked
    // down to 40,000 and its auction run.
    let calls = Op::Fill {
        instrument: InstrumentId(1),
        maker: AccountId(0),
        taker: AccountId(2),
        taker_side: Side::Buy,
        price: Price(5_000 * MONEY_SCALE),
        qty: Qty(3 * QTY_SCALE),
    };
    let state = after(&state, &[calls, fill_of(0, Side::Buy, 100_000, 20)]);
    let state = started(&marked(&state, 0, 40_000 * MONEY_SCALE), &[1]);
    // Account 2 takes the perpetuals at 45,000: it now holds both, so the registers (which
    // hold only the perpetual's position) cannot price it.
    let ops = [Op::Liquidation {
        account: AccountId(1),
        counterparty: AccountId(2),
        instrument: InstrumentId(0),
        qty: Qty(-20 * QTY_SCALE),
        price: Price(45_000 * MONEY_SCALE),
        fee: Amount(0),
    }];
    // Windows of one id each, so that it takes two.
    let shape = Shape {
        prices: 2,
        solvency: 4,
        solvency_bits: 0,
        readonly: 0,
        ..SHAPE
    };
    let w = witness(&state, &ops, shape).expect("fits");
    check(&w).expect("an honest batch");
    let windows = |w: &BatchWitness| w.solvency.iter().filter(|s| s.enabled).count();
    assert_eq!(windows(&w), 2, "one account, two runs");
    let counterparty = w
        .accounts
        .iter()
        .position(|a| a.id == 2)
        .expect("a register");
    assert!(!w.accounts[counterparty].registers_price);
    let refused_in_solvency = |w: &BatchWitness, what: &str| {
        let at = refused_at(w);
        assert!(
            at.starts_with("solvency") || at.starts_with("price window"),
            "{what}: refused at {at}"
        );
    };
    // Priced from the registers, which miss the calls.
    let mut registers = w.clone();
    registers.accounts[counterparty].registers_price = true;
    refused_in_solvency(&registers, "the registers, missing a position");
    // A window left out: its position is not counted.
    let mut left_out = w.clone();
    left_out.solvency[1] = Default::default();
    left_out.solvency[1].qty = vec![Fr::from(0u64)];
    left_out.solvency[1].siblings = w.solvency[1].siblings.clone();
    refused_in_solvency(&left_out, "a window left out");
    // A smaller long than the account holds.
    let mut smaller = w.clone();
    smaller.solvency[1].qty[0] -= Fr::from(1u64);
    refused_in_solvency(&smaller, "another quantity");
    // A higher mark than the committed one.
    let mut dearer = w.clone();
    dearer.prices[0].leaves[0].1.mark.0 += 1;
    refused_in_solvency(&dearer, "another mark");
    // The same window twice in place of another.
    let mut twice = w.clone();
    twice.solvency[1] = w.solvency[0].clone();
    refused_in_solvency(&twice, "a window twice");
}

/// An account that fills and ends its batch in `WorstCase` covers what its shorts can owe at
/// worst, and every committed mark lies in `[0, W]`, so it is solvent at any committed marks: a
/// proof prices it nowhere, whatever else it holds. Two such accounts, one short calls marked
/// at their worst-case payoff and each holding a position the batch does not trade, fill in a
/// shape with no solvency or price window; the short's equity is at least what its liability
/// leaves of its collateral.
#[test]
fn a_worst_case_account_is_priced_nowhere_whatever_it_holds() {
    let state = marked(&genesis(2), 0, 100_000 * MONEY_SCALE);
    let state = marked(&state, 1, 5_000 * MONEY_SCALE);
    // Account 1 holds calls from an earlier batch, and buys perpetuals in this one; account 0
    // is short both.
    let state = after(&state, &[fill_of(1, Side::Buy, 5_000, 3)]);
    let funded: Vec<Op> = [0, 1]
        .into_iter()
        .flat_map(|a| funded_in(a, 10_000_000, MarginMode::WorstCase))
        .collect();
    let state = after(&state, &funded);
    // The calls marked at their worst-case payoff, 100,000 (strike 100,000, cap 200,000).
    let payoff = optio_state::leaf::payoff(&state.instruments()[1].spec);
    assert_eq!(payoff, 100_000 * MONEY_SCALE);
    let state = marked(&state, 1, payoff);
    let ops = [perp_fill(Side::Buy, 2)];
    let bare = Shape {
        prices: 0,
        solvency: 0,
        ..SHAPE
    };
    let w = witness(&state, &ops, bare).expect("no window needed");
    assert!(w.accounts.iter().all(|a| !a.registers_price));
    check(&w).expect("proves with no window");
    let next = after(&state, &ops);
    assert_eq!(w.public.new_root, next.root());
    // The bound the rule stands on: equity at the committed marks at least the cover.
    let a = &next.accounts()[0];
    let cover =
        i128::from(a.collateral.0) * i128::from(QTY_SCALE) - a.liability(&next.payoffs()) as i128;
    assert!(cover >= 0);
    assert!(next.equity(AccountId(0)).expect("known") >= cover);
}

/// A mark is held to `[0, W]`, W its instrument's worst-case payoff per contract (the call's
/// `cap - strike`, 100,000; the perpetual's cap, 200,000): at W it proves, a micro-USDC above
/// or below zero is refused in the mark window and natively (`MarkBeyondPayoff`), and a prover
/// that opens another spec (a higher cap) to allow it is refused too.
#[test]
fn a_mark_beyond_the_worst_case_payoff_cannot_be_proven() {
    let state = genesis(2);
    let mark = |id: u32, price: i64| {
        [Op::Mark {
            instrument: InstrumentId(id),
            mark: Price(price),
            index: Price(60_000_000_000),
            risk: Vec::new(),
            published_ms: 0,
        }]
    };
    for (id, payoff) in [(0, 200_000 * MONEY_SCALE), (1, 100_000 * MONEY_SCALE)] {
        assert_eq!(
            optio_state::leaf::payoff(&state.instruments()[id as usize].spec),
            payoff
        );
        check(&batch_of(&state, &mark(id, payoff))).expect("a mark at W");
        check(&batch_of(&state, &mark(id, 0))).expect("a mark at zero");
        for wrong in [payoff + 1, -1] {
            refused_where_and_natively(
                &state,
                &mark(id, wrong),
                "mark window",
                StateError::MarkBeyondPayoff(0),
                "a mark beyond [0, W]",
            );
        }
        let mut w = batch_of(&state, &mark(id, payoff + 1));
        let window = w
            .marks
            .iter_mut()
            .find(|m| m.enabled)
            .expect("a mark window");
        let entry = window
            .entries
            .iter_mut()
            .find(|e| e.marked)
            .expect("the marked entry");
        entry.spec.cap += Fr::from(MONEY_SCALE as u64);
        let at = refused_at(&w);
        assert!(
            at.starts_with("mark window"),
            "another spec: refused at {at}"
        );
    }
}

/// A deficit cover of an account that filled earlier in the batch cannot be proven, nor does
/// it apply natively: the cover would hide the deficit the fill left (its account ends the
/// batch at zero). The account here was left in deficit by its owner's forced close, with no
/// auction (`since` 0): an account whose auction started is frozen, and its fill is refused
/// before the cover is looked at.
#[test]
fn a_deficit_cover_after_its_accounts_fill_cannot_be_proven() {
    // Account 1 long 20 perpetuals at 100,000 and closed on its owner's request at a 40,000
    // mark: no position, its cash below zero.
    let entry = 100_000 * MONEY_SCALE;
    let state = marked(&genesis(4), 0, entry);
    let bought = Op::Fill {
        instrument: InstrumentId(0),
        maker: AccountId(0),
        taker: AccountId(1),
        taker_side: Side::Buy,
        price: Price(entry),
        qty: Qty(20 * QTY_SCALE),
    };
    let state = marked(&after(&state, &[bought]), 0, 40_000 * MONEY_SCALE);
    let close = Op::L1Close {
        priority: state.priority_served(),
        backstop: AccountId(2),
        account: AccountId(1),
        instrument: InstrumentId(0),
        qty: Qty(-20 * QTY_SCALE),
        price: Price(40_000 * MONEY_SCALE),
        requester: owner_of(AccountId(1)),
    };
    let state = after(&state, &[close]);
    let deficit = -state.accounts()[1].collateral.0;
    assert!(deficit > 0 && state.accounts()[1].since == 0);
    let (insurance, fees) = state.funds();
    // Account 1, flat, buys a contract and sells it back: the fee pool gains both fills' fees.
    let fill = |taker_side| fill_of(0, taker_side, 40_000, 1);
    let perp = &state.instruments()[0].spec;
    let notional = Price(40_000 * MONEY_SCALE)
        .notional(Qty(QTY_SCALE))
        .expect("fits");
    let fee = |rate: FeeRate| rate.fee_on(notional).expect("fits").0;
    let fees_after = fees.0 + 2 * (fee(perp.maker_fee) + fee(perp.taker_fee));
    let mut ops = vec![fill(Side::Buy), fill(Side::Sell)];
    ops.extend(cover(deficit, insurance.0, fees_after, 0));
    let cover_at = ops.len() - 1;
    let at = refused_at(&batch_of(&state, &ops));
    assert!(
        at.starts_with(&format!("op slot {cover_at}")),
        "refused at {at}"
    );
    let mut native = state.clone();
    assert_eq!(
        native.apply_batch(&ops),
        Err(StateError::CoverAfterFill(cover_at))
    );
    assert_eq!(native.commit(), state.root(), "nothing applied");
    // The cover alone proves.
    let alone = cover(deficit, insurance.0, fees.0, 0);
    check(&batch_of(&state, &alone)).expect("the cover alone");
    after(&state, &alone);
    // Liquidated into its deficit instead, the account is frozen: its fill is refused first.
    let (liquidated, _) = with_deficit();
    refused_first_and_natively(
        &liquidated,
        &[fill(Side::Buy)],
        StateError::Frozen(0),
        "a fill of an account in liquidation",
    );
}

/// A forced close (`Op::L1Close`, docs/settlement.md "Forced close"): the owner's request moves
/// all of the account's position to the backstop at the committed mark, its value rounded
/// against the account (here the mark is off the money grid for half a contract: a long sold
/// gets the floor, a short bought back pays the ceiling), no fee; anyone else's moves nothing.
/// Each proves with the native root; so does a close of an instrument never marked, which moves
/// nothing. Less than the whole position, another price, a move on a stranger's request or at
/// no mark, or a close of the backstop itself is refused at its op slot and natively; so is a
/// value rounded the other way.
#[test]
fn a_forced_close_moves_the_whole_position_at_the_committed_mark() {
    let mark = 100_000 * MONEY_SCALE + 123_457;
    let state = leveraged_pair(Op::Mark {
        instrument: InstrumentId(0),
        mark: Price(mark),
        index: Price(60_000_000_000),
        risk: Vec::new(),
        published_ms: 0,
    });
    let close = |account: u32, qty: i64, price: i64, requester: u32| Op::L1Close {
        priority: 0,
        backstop: AccountId(2),
        account: AccountId(account),
        instrument: InstrumentId(0),
        qty: Qty(qty),
        price: Price(price),
        requester: owner_of(AccountId(requester)),
    };
    let two = 2 * QTY_SCALE;
    // Half a contract moves a value off the money grid: 2 contracts do not.
    let odd = after(
        &state,
        &[Op::Fill {
            instrument: InstrumentId(0),
            maker: AccountId(3),
            taker: AccountId(1),
            taker_side: Side::Buy,
            price: Price(100_000 * MONEY_SCALE),
            qty: Qty(QTY_SCALE / 2),
        }],
    );
    let held = two + QTY_SCALE / 2;
    assert_ne!(
        i128::from(held) * i128::from(mark) % i128::from(QTY_SCALE),
        0
    );
    for (state, ops, rule) in [
        (&odd, [close(1, -held, mark, 1)], "the owner's long, sold"),
        (
            &state,
            [close(0, two, mark, 0)],
            "the owner's short, bought back",
        ),
        (&odd, [close(1, 0, 0, 2)], "a stranger's request"),
    ] {
        let w = batch_of(state, &ops);
        let next = after(state, &ops);
        assert_eq!(w.public.new_root, next.root(), "{rule}: native roots agree");
        check(&w).unwrap_or_else(|e| panic!("{rule}: {e}"));
        assert_eq!(next.priority_served(), 1);
    }
    // The cash: the floor to the seller, from the backstop.
    let next = after(&odd, &[close(1, -held, mark, 1)]);
    let value = i128::from(held) * i128::from(mark) / i128::from(QTY_SCALE);
    let cash = |s: &SettlementState, a: u32| s.accounts()[a as usize].collateral.0;
    assert_eq!(
        i128::from(cash(&next, 1) - cash(&odd, 1)),
        value,
        "floor, no fee"
    );
    assert_eq!(
        cash(&next, 2) - cash(&odd, 2),
        cash(&odd, 1) - cash(&next, 1)
    );
    assert!(next.accounts()[1].positions.is_empty());

    for (state, ops, rule) in [
        (&odd, [close(1, -two, mark, 1)], "less than the position"),
        (&odd, [close(1, -held, mark - 1, 1)], "below the mark"),
        (&odd, [close(1, -held, 0, 1)], "at no price"),
        (
            &odd,
            [close(1, -held, mark, 2)],
            "a stranger's request moving it",
        ),
        (
            &odd,
            [close(1, 0, mark, 2)],
            "a stranger's request at the mark",
        ),
        (
            &state,
            [close(0, two / 2, mark, 0)],
            "half a short bought back",
        ),
    ] {
        refused_first_and_natively(state, &ops, StateError::ForcedClose(0), rule);
    }
    // An instrument never marked (the call, instrument 1) has no price to close at: nothing
    // moves.
    let unmarked = after(&state, &[fill_of(1, Side::Buy, 1_000, 1)]);
    let call = |qty: i64, price: i64| {
        let mut op = close(1, qty, price, 1);
        if let Op::L1Close { instrument, .. } = &mut op {
            *instrument = InstrumentId(1);
        }
        op
    };
    check(&batch_of(&unmarked, &[call(0, 0)])).expect("an unmarked instrument: nothing moves");
    refused_first_and_natively(
        &unmarked,
        &[call(-QTY_SCALE, 0)],
        StateError::ForcedClose(0),
        "a close at no mark",
    );
    let mut own = close(2, 0, 0, 2);
    if let Op::L1Close { account, .. } = &mut own {
        *account = AccountId(2);
    }
    let mut native = odd.clone();
    assert_eq!(native.apply_batch(&[own]), Err(StateError::SelfTrade(0)));

    // The value rounded the other way (the ceiling to the seller): one more micro-USDC.
    let mut w = batch_of(&odd, &[close(1, -held, mark, 1)]);
    let slot = &mut w.slots[0];
    slot.notional += Fr::from(1u64);
    slot.rounding -= Fr::from(QTY_SCALE as u64);
    assert!(refused(&w), "a rounding outside 0..1e8");
}

/// `genesis(2)` with account 0 back in `WorstCase` (proven: a mode change is an account slot).
fn worst_case_writer() -> SettlementState {
    let state = genesis(2);
    let ops = [Op::SetMarginMode {
        account: AccountId(0),
        mode: MarginMode::WorstCase,
    }];
    check(&batch_of(&state, &ops)).expect("a covered account may switch to WorstCase");
    after(&state, &ops)
}

/// A `WorstCase` account that fills ends the batch covering what its shorts can owe at worst
/// (`collateral * 1e8 >= liability`), as the engine keeps it. Account 0 holds 1,000,000 and
/// sells perpetuals (a worst-case payoff of 200,000 each) at 1,000: four are covered, six are
/// refused at the write-back and natively, and the same six proven in `Standard` (its rule is
/// solvency at the committed marks). A mode register forged to `Standard` over the same leaf
/// word (`2^96` more for the mode, so the liability a quarter less in the field) is refused:
/// the liability is below 2^155.
#[test]
fn a_worst_case_account_ends_its_fills_fully_collateralized() {
    let state = worst_case_writer();
    let sell = |contracts: i64| [fill_of(0, Side::Buy, 1_000, contracts)];
    check(&batch_of(&state, &sell(4))).expect("four are covered");
    let short = batch_of(&state, &sell(6));
    assert!(refused_at(&short).starts_with("the accounts' write-back"));
    let mut native = state.clone();
    assert_eq!(native.apply_batch(&sell(6)), Err(StateError::Uncovered(0)));
    assert_eq!(native.commit(), state.root(), "nothing applied");
    check(&batch_of(&genesis(2), &sell(6))).expect("six in Standard");

    let mut forged = short.clone();
    let r = forged
        .accounts
        .iter()
        .position(|a| a.id == 0)
        .expect("a register");
    forged.accounts[r].mode = MarginMode::Standard;
    forged.accounts[r].liability -= Fr::from(4u64).inverse().expect("invertible");
    assert!(refused_at(&forged).starts_with("the registers"));
}

/// An account whose mode changes to `WorstCase` in the batch is held to the same rule, fill or
/// not: a `Standard` account short 6 perpetuals on 1,000,000 may not switch (natively:
/// `Uncovered` at the switch), and one short 4 may. Switching out of `WorstCase` asks nothing.
#[test]
fn a_switch_to_worst_case_needs_full_collateral() {
    let to = |mode| {
        [Op::SetMarginMode {
            account: AccountId(0),
            mode,
        }]
    };
    let short = |contracts| after(&genesis(2), &[fill_of(0, Side::Buy, 1_000, contracts)]);
    check(&batch_of(&short(4), &to(MarginMode::WorstCase))).expect("covered");
    let six = short(6);
    assert!(
        refused_at(&batch_of(&six, &to(MarginMode::WorstCase)))
            .starts_with("the accounts' write-back")
    );
    assert_eq!(
        six.clone().apply_batch(&to(MarginMode::WorstCase)),
        Err(StateError::Uncovered(0))
    );
    check(&batch_of(&six, &to(MarginMode::Portfolio))).expect("Portfolio asks nothing yet");
    // A mode code past Portfolio's has no bits.
    let mut w = batch_of(&six, &to(MarginMode::Portfolio));
    let slot = w
        .keys
        .iter()
        .position(|k| k.mode.is_some())
        .expect("a mode slot");
    w.keys[slot].mode = None;
    assert!(refused(&w), "a mode op's words without its mode");
}

/// `genesis(2)` with the perpetual marked at 100,000 with scenarios of -30% and +30%, and
/// account 0 in `mode`.
fn marked_in(mode: MarginMode) -> SettlementState {
    let state = after(
        &genesis(2),
        &[Op::Mark {
            instrument: InstrumentId(0),
            mark: Price(100_000 * MONEY_SCALE),
            index: Price(60_000_000_000),
            risk: vec![Amount(-30_000 * MONEY_SCALE), Amount(30_000 * MONEY_SCALE)],
            published_ms: 0,
        }],
    );
    after(
        &state,
        &[Op::SetMarginMode {
            account: AccountId(0),
            mode,
        }],
    )
}

/// A `Portfolio` account that trades (a fill's maker or taker) ends its batch meeting the
/// proven maintenance rule at the committed marks and risk arrays: `collateral * 1e8 * 1e4 +
/// sum_i q_i * (mark_i * 1e4 + RA_i[s] * 8,000) >= 0` in every scenario and the no-move one.
/// Account 0 (1,000,000) sells perpetuals at their mark of 100,000: in the +30% scenario each
/// short loses 30,000, weighed 0.8, so 41 are maintained (a loss of 984,000, less than its
/// collateral and the maker's rebates) and 42 are refused at the margin slots and natively
/// (`Unmaintained`); the same 42 prove in `Standard` (5% of their notional, 210,000), and when
/// the batch switches the account to `Portfolio` after the fill they are refused again (the
/// mode the batch leaves). A witness without the account's end slot is refused, and so is one
/// with a second end slot for it. (The taker, in `Standard`, has an end slot too.)
#[test]
fn a_portfolio_account_that_trades_ends_its_batch_maintained() {
    let state = marked_in(MarginMode::Portfolio);
    let sell = |contracts: i64| fill_of(0, Side::Buy, 100_000, contracts);
    let w = batch_of(&state, &[sell(41)]);
    assert_eq!(w.margins.iter().filter(|m| m.end).count(), 2);
    check(&w).expect("41 maintained");
    let short = batch_of(&state, &[sell(42)]);
    assert!(refused_at(&short).starts_with("margin slots"));
    let mut native = state.clone();
    assert_eq!(
        native.apply_batch(&[sell(42)]),
        Err(StateError::Unmaintained(0))
    );
    assert_eq!(native.commit(), state.root(), "nothing applied");
    let standard = marked_in(MarginMode::Standard);
    check(&batch_of(&standard, &[sell(42)])).expect("42 in Standard");
    let switched = [
        sell(42),
        Op::SetMarginMode {
            account: AccountId(0),
            mode: MarginMode::Portfolio,
        },
    ];
    assert!(refused_at(&batch_of(&standard, &switched)).starts_with("margin slots"));
    assert_eq!(
        standard.clone().apply_batch(&switched),
        Err(StateError::Unmaintained(0))
    );

    // The end slot left out: the account still traded and ends in Portfolio.
    let mut w = batch_of(&state, &[sell(41)]);
    let register = w
        .accounts
        .iter()
        .position(|a| a.id == 0)
        .expect("a register");
    let end = w
        .margins
        .iter()
        .position(|m| m.end && m.account == Some(register))
        .expect("an end slot");
    w.margins[end] = Default::default();
    assert!(refused_at(&w).starts_with("margin slots"));
    // A second end slot for it.
    let mut w = batch_of(&state, &[sell(41)]);
    let spare = w.margins.iter().position(|m| !m.enabled).expect("a spare");
    w.margins[spare] = w.margins[end].clone();
    assert!(refused_at(&w).starts_with("margin slots"));
}

/// The most contracts `ops(n)` may trade by the native rule (`apply_batch` succeeds up to it,
/// fails past it, up to `high`), which the circuit must agree with: `n` proves, `n + 1` is
/// refused at the margin slots, natively `Unmaintained` at the op `at`.
fn maintained_up_to(
    state: &SettlementState,
    high: i64,
    at: usize,
    ops: impl Fn(i64) -> Vec<Op>,
) -> i64 {
    let fits = |n: i64| state.clone().apply_batch(&ops(n)).is_ok();
    let (mut low, mut high) = (1, high);
    assert!(fits(low) && !fits(high));
    while high - low > 1 {
        let mid = (low + high) / 2;
        if fits(mid) {
            low = mid;
        } else {
            high = mid;
        }
    }
    check(&batch_of(state, &ops(low))).expect("maintained");
    let over = batch_of(state, &ops(low + 1));
    assert!(refused_at(&over).starts_with("margin slots"));
    let mut native = state.clone();
    assert_eq!(
        native.apply_batch(&ops(low + 1)),
        Err(StateError::Unmaintained(at))
    );
    assert_eq!(native.commit(), state.root(), "nothing applied");
    low
}

/// A `Standard` account that trades ends its batch meeting the proven maintenance rule at the
/// committed marks and indices, the engine's maintenance before its rounding: 5% of a
/// perpetual's notional beside its value, and per short option twice its mark and 7.5% of the
/// index (a long option counts nothing, a settled short option its value once). Account 0
/// (1,000,000) trades at the mark each time, so its cash pays for its positions' value:
/// - sells perpetuals at 100,000: 5,000 each, 200 maintained (201 refused), and buys as many;
/// - writes calls at 1,000 with the index at 100,000: 1,000 brought in against 9,500 asked,
///   1,000,000 / 8,500 = 117;
/// - short 100 calls settled at a value of 2,000 each, but not yet paid, it sells perpetuals:
///   the calls ask their value once (200,000) of its 1,100,000, so 180 (140 if they asked
///   it twice).
///
/// In `Portfolio` the same account writes 1,250 calls (the floor test), far more. A long call
/// needs no more than its price.
#[test]
fn a_standard_account_that_trades_ends_its_batch_maintained() {
    // The taker (account 1, Standard too) funded for its side.
    let funded = |state: &SettlementState| {
        after(
            state,
            &[Op::Deposit {
                account: AccountId(1),
                amount: Amount(100_000_000 * MONEY_SCALE),
            }],
        )
    };
    let perps = funded(&marked_in(MarginMode::Standard));
    let perp = |side: Side| move |n: i64| vec![fill_of(0, side, 100_000, n)];
    assert_eq!(maintained_up_to(&perps, 1_000, 0, perp(Side::Buy)), 200);
    assert_eq!(maintained_up_to(&perps, 1_000, 0, perp(Side::Sell)), 200);

    let calls = funded(&after(
        &genesis(2),
        &[Op::Mark {
            instrument: InstrumentId(1),
            mark: Price(1_000 * MONEY_SCALE),
            index: Price(100_000 * MONEY_SCALE),
            risk: Vec::new(),
            published_ms: 0,
        }],
    ));
    let write = |n: i64| vec![fill_of(1, Side::Buy, 1_000, n)];
    assert_eq!(maintained_up_to(&calls, 1_000, 0, write), 117);
    let buy = [fill_of(1, Side::Sell, 1_000, 1_000)];
    check(&batch_of(&calls, &buy)).expect("a long call asks nothing more");
    assert!(calls.clone().apply_batch(&buy).is_ok());

    // 100 calls written at 1,000 (so 1,100,000 of cash), the perpetual marked at 100,000, the
    // calls expired and settled at 102,000 (a value of 2,000) with no holder paid yet.
    let mut settled = after(&calls, &write(100));
    for ops in [
        vec![Op::Mark {
            instrument: InstrumentId(0),
            mark: Price(100_000 * MONEY_SCALE),
            index: Price(100_000 * MONEY_SCALE),
            risk: Vec::new(),
            published_ms: 0,
        }],
        vec![Op::ExpireInstrument {
            instrument: InstrumentId(1),
        }],
        vec![Op::SettleInstrument {
            instrument: InstrumentId(1),
            price: Price(102_000 * MONEY_SCALE),
            insurance_credit: Amount(0),
        }],
    ] {
        settled = after(&settled, &ops);
    }
    let sell = |n: i64| vec![fill_of(0, Side::Buy, 100_000, n)];
    assert_eq!(maintained_up_to(&settled, 1_000, 0, sell), 180);
}

/// The `Portfolio` maintenance rule counts the short-option floor at the index committed with
/// each option's mark: `PROVEN_PM_SHORT_OPTION_FLOOR_BPS` (1%) of the index per contract,
/// weighed 0.8. Account 0 (1,000,000) writes calls at their mark of 1,000 with the index at
/// 100,000 and no scenarios: each short's floor is 800, so 1,250 are maintained (the rebates
/// add a little, not a call's floor) and 1,251 are refused in the circuit and natively (in
/// `Standard`, which asks 9,500 a call, far fewer prove:
/// `a_standard_account_that_trades_ends_its_batch_maintained`). The same account long the
/// calls owes no floor. (The taker, in `Standard`, is funded for its side.)
#[test]
fn a_portfolio_writer_covers_its_short_option_floor() {
    let marked = |mode: MarginMode| {
        let state = after(
            &genesis(2),
            &[
                Op::Mark {
                    instrument: InstrumentId(1),
                    mark: Price(1_000 * MONEY_SCALE),
                    index: Price(100_000 * MONEY_SCALE),
                    risk: Vec::new(),
                    published_ms: 0,
                },
                Op::Deposit {
                    account: AccountId(1),
                    amount: Amount(100_000_000 * MONEY_SCALE),
                },
            ],
        );
        after(
            &state,
            &[Op::SetMarginMode {
                account: AccountId(0),
                mode,
            }],
        )
    };
    let state = marked(MarginMode::Portfolio);
    let write = |contracts: i64| [fill_of(1, Side::Buy, 1_000, contracts)];
    // The most calls the native rule lets account 0 write.
    let maintained = |n: i64| state.clone().apply_batch(&write(n)).is_ok();
    let (mut low, mut high) = (1, 2_000);
    assert!(maintained(low) && !maintained(high));
    while high - low > 1 {
        let mid = (low + high) / 2;
        if maintained(mid) {
            low = mid;
        } else {
            high = mid;
        }
    }
    assert_eq!(low, 1_250, "1,000,000 / 800 a call");
    check(&batch_of(&state, &write(1_250))).expect("1,250 maintained");
    let over = batch_of(&state, &write(1_251));
    assert!(refused_at(&over).starts_with("margin slots"));
    let mut native = state.clone();
    assert_eq!(
        native.apply_batch(&write(1_251)),
        Err(StateError::Unmaintained(0))
    );
    assert_eq!(native.commit(), state.root(), "nothing applied");
    assert_eq!(
        marked(MarginMode::Standard).apply_batch(&write(1_251)),
        Err(StateError::Unmaintained(0))
    );
    // Buying them instead: no floor.
    let buy = [fill_of(1, Side::Sell, 1_000, 1_251)];
    check(&batch_of(&state, &buy)).expect("a long owes no floor");
    assert!(state.clone().apply_batch(&buy).is_ok());
}

/// A mark commits its underlying's index with it (hashed first, with the risk array, into the
/// leaf's risk hash; posted in the mark's first word): the index committed is the one posted,
/// positive and below 2^63, in the circuit and natively. The index takes one of the shape's
/// hashed places, so a risk array fills all but one of them.
#[test]
fn a_mark_commits_its_positive_index() {
    let state = listed(2);
    let mark = |index: i64, scenarios: usize| Op::Mark {
        instrument: InstrumentId(1),
        mark: Price(2_000 * MONEY_SCALE),
        index: Price(index),
        risk: (0..scenarios)
            .map(|s| Amount((s as i64 - 5) * 100 * MONEY_SCALE))
            .collect(),
        published_ms: 0,
    };
    for index in [1, 60_000 * MONEY_SCALE, i64::MAX] {
        let ops = [mark(index, 10)];
        check(&batch_of(&state, &ops)).unwrap_or_else(|e| panic!("index {index}: {e}"));
        let next = after(&state, &ops);
        let x = &next.instruments()[1];
        assert_eq!(x.index, Price(index));
        assert_eq!(
            x.leaf().risk_hash,
            optio_state::leaf::risk_hash(Price(index), &x.risk)
        );
        assert_ne!(
            x.leaf().risk_hash,
            optio_state::leaf::risk_hash(Price(index ^ 1), &x.risk),
            "the index is in the hash"
        );
    }
    // Another index than the one posted and hashed natively.
    let honest = batch_of(&state, &[mark(60_000 * MONEY_SCALE, 10)]);
    let mut w = honest.clone();
    w.marks[0].entries[0].index += Fr::from(1u64);
    assert!(refused(&w), "an index other than the batch's");
    // No index: refused in the circuit and natively, nothing applied.
    let zero = [mark(0, 10)];
    let at = refused_at(&batch_of(&state, &zero));
    assert!(at.starts_with("mark window 0"), "refused at {at}");
    let mut native = state.clone();
    assert_eq!(native.apply_batch(&zero), Err(StateError::OutOfRange(0)));
    assert_eq!(native.commit(), state.root(), "nothing applied");
    // One chunk of the shape holds the index and ten scenarios, not eleven.
    assert!(matches!(
        witness(&state, &[mark(60_000 * MONEY_SCALE, 11)], SHAPE),
        Err(optio_prover::witness::WitnessError::TooLarge(_))
    ));
}

/// `state`'s root with another committed oracle time in its funds leaf.
fn root_with_oracle_time(state: &SettlementState, oracle_ms: u64) -> Fr {
    let (insurance, fee_pool) = state.funds();
    optio_state::leaf::state_root(
        state.accounts_root(),
        state.instruments_root(),
        optio_state::leaf::funds_hash(
            insurance,
            fee_pool,
            optio_state::leaf::Counts {
                oracle_ms,
                ..state.counts()
            },
        ),
    )
}

/// The funds leaf commits the oracle's clock: the latest publication time among the marks
/// committed so far (each mark posts its update's time, which L1 judges with the oracle's
/// signature). A batch marking two underlyings' instruments from updates published at
/// different times leaves the later time, whichever instrument comes first; a mark older than
/// the committed time leaves it; a proof of any other time is refused, and so is one that
/// starts from another time than the old root's or proves a mark with another time than the
/// one posted.
#[test]
fn the_committed_oracle_time_is_the_latest_marks() {
    let state = genesis(2);
    assert_eq!(state.oracle_ms(), 0, "no mark yet");
    let mark = |id: u32, published_ms: u64| Op::Mark {
        instrument: InstrumentId(id),
        mark: Price(1_000 * MONEY_SCALE),
        index: Price(60_000_000_000),
        risk: Vec::new(),
        published_ms,
    };
    // The first instrument's update is the later one: the latest is not the last by id.
    let ops = [mark(0, 9_000), mark(1, 7_000)];
    let w = batch_of(&state, &ops);
    check(&w).expect("proves");
    let next = after(&state, &ops);
    assert_eq!(next.oracle_ms(), 9_000);
    assert_eq!(w.public.new_root, next.root(), "the native root");
    for other in [0, 7_000, 8_999, 9_001, 16_000] {
        let mut wrong = w.clone();
        wrong.public.new_root = root_with_oracle_time(&next, other);
        assert!(
            refused_at(&wrong).starts_with("the new root"),
            "{other}: {}",
            refused_at(&wrong)
        );
    }
    // A proof from another committed time than the old root's.
    let mut wrong = w.clone();
    wrong.counts.oracle_ms = 1;
    assert!(
        refused_at(&wrong).starts_with("the old root"),
        "{}",
        refused_at(&wrong)
    );
    // A mark proven with another time than the one posted (the commitment's and the words').
    let mut wrong = w.clone();
    let entry = wrong
        .marks
        .iter_mut()
        .flat_map(|m| m.entries.iter_mut())
        .find(|e| e.marked && e.published_ms == 9_000)
        .expect("the first mark");
    entry.published_ms = 9_500;
    wrong.public.new_root = root_with_oracle_time(&next, 9_500);
    assert!(refused(&wrong), "another time than posted");

    // Later: the second underlying's update, older than the committed time, moves nothing.
    let ops = [mark(1, 8_000)];
    let w = batch_of(&next, &ops);
    check(&w).expect("proves");
    let later = after(&next, &ops);
    assert_eq!(later.oracle_ms(), 9_000, "an older mark keeps the time");
    assert_eq!(w.public.new_root, later.root(), "the native root");
    let mut wrong = w.clone();
    wrong.public.new_root = root_with_oracle_time(&later, 8_000);
    assert!(refused(&wrong), "the older mark's time");
    // And a batch without marks keeps it too.
    let ops = [Op::Deposit {
        account: AccountId(0),
        amount: Amount(5),
    }];
    let w = batch_of(&later, &ops);
    check(&w).expect("proves");
    assert_eq!(after(&later, &ops).oracle_ms(), 9_000);
}
