//! The authorization challenge on a real EVM (anvil from npm, on 127.0.0.1), end to end: users
//! deposit on L1 and sign their orders as any client does (`optio_gateway::client`); an honest
//! batch posts each fill's signed orders and is finalized; the operator then forges a fill at a
//! price the maker never signed, reposting the maker's old signature. The watchtower
//! (`verify_l1`, what `optio verify` runs) finds it and files the challenge: the forged batch is
//! reverted, the operator's bond is paid to the challenger, the rollup freezes, and both users
//! exit with exactly what the finalized state owes them. Challenging an honest fill reverts and
//! changes nothing. The contract's check and the Rust one agree on every way a record can be
//! wrong (other terms, another signer, another domain, a malleated signature, a price beyond the
//! limit, a size beyond the amount, no record at all), and the contract finds a fill in posted
//! data behind ops of every length. The mark challenge the same way: a mark the oracle never
//! signed is caught, reverted and slashed, and the contract and the Rust check agree on every
//! way a mark's attestation can be wrong.

use alloy::primitives::{Address, U256};
use alloy::providers::Provider;
use optio_settler::{
    Challenge, ChangeChallenge, OptioJudge, OptioRollup, PostedOp, ReplayChallenge, RollupConfig,
    TestUSDC, Verdict, connect, deploy, file_challenge, file_change_challenge,
    file_expiry_challenge, file_mark_order_challenge, file_price_challenge, file_replay_challenge,
    opening_call, transact, verify_l1,
};
use optio_state::auth::{self, Authorization, ChangeAttestation, PriceAttestation, Venue};
use optio_state::blob::{BlobMeta, encode_ops};
use optio_state::{Op, SettlementState, encode, withdrawals_hash};
use optio_types::{
    AccountId, Amount, InstrumentId, InstrumentSpec, MONEY_SCALE, MarginMode, Price, QTY_SCALE,
    Qty, Side,
};
use secp256k1::SecretKey;

/// anvil's default keys: the operator, the challenger, two users.
const OPERATOR: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
const CHALLENGER: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
const ALICE: &str = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
const BOB: &str = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6";
/// A session key Alice registers in batch 1, live until engine time `SESSION_UNTIL`.
const SESSION: &str = "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6";
const SESSION_UNTIL: u64 = 5_000;
/// A key of the operator's, which it registers as a session key of Bob's without him.
const ROGUE: &str = "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a";
const BOND: u64 = 1_000_000_000_000_000_000;
const USDC: i64 = MONEY_SCALE;

fn secret(hex: &str) -> SecretKey {
    let bytes: Vec<u8> = (2..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    SecretKey::from_secret_bytes(bytes.try_into().expect("32 bytes")).expect("key")
}

fn address(key: &str) -> optio_types::Address {
    optio_types::Address(
        optio_settler::signer_address(key)
            .expect("address")
            .into_array(),
    )
}

fn word(f: &optio_state::Fr) -> U256 {
    U256::from_be_bytes(optio_state::poseidon::to_bytes(f))
}

/// The record a client's signed order gives: signed with `optio_gateway::client::signed_order`
/// (what traders and the load generator use), read back from its request parameters.
fn signed(
    key: &str,
    venue: &Venue,
    account: u32,
    side: Side,
    price: &str,
    amount: &str,
    nonce: u64,
) -> Authorization {
    signed_with_cap(key, venue, account, side, price, amount, nonce, "1000")
}

/// `signed`, with the fee cap `max_fee` (USDC: the order's fees in total, Optio's domain).
#[allow(clippy::too_many_arguments)]
fn signed_with_cap(
    key: &str,
    venue: &Venue,
    account: u32,
    side: Side,
    price: &str,
    amount: &str,
    nonce: u64,
    max_fee: &str,
) -> Authorization {
    let request = optio_gateway::client::OrderRequest {
        subaccount: u64::from(account),
        instrument_id: 0,
        instrument_name: "BTC-PERPETUAL",
        direction: if side == Side::Buy { "buy" } else { "sell" },
        price,
        amount,
        max_fee,
        nonce,
        expiry: 4_000_000_000,
        time_in_force: "gtc",
    };
    let (params, digest) =
        optio_gateway::client::signed_order(&secret(key), venue.chain_id, venue.rollup.0, &request)
            .expect("signs");
    let hex = params["signature"].as_str().expect("signature");
    let signature: Vec<u8> = (2..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    let record = Authorization {
        nonce,
        expiry_s: request.expiry,
        signer: address(key),
        domain: auth::domain::OPTIO,
        limit_price: price.parse().expect("price"),
        amount: amount.parse().expect("amount"),
        max_fee: max_fee.parse::<Price>().expect("fee cap").0,
        signature: signature.try_into().expect("65 bytes"),
    };
    // The record rebuilds exactly the digest the client signed.
    let fill = auth::FillSide {
        account: AccountId(account),
        instrument: InstrumentId(0),
        side,
        price: Price(0),
        qty: Qty(0),
    };
    assert_eq!(record.digest(&fill, address(key), venue), Some(digest));
    record
}

/// A record to judge: what it is, the record, the account's session keys, whether it
/// authorizes the fill side.
type Variant<'a> = (
    &'a str,
    Option<Authorization>,
    Vec<(optio_types::Address, u64)>,
    bool,
);

/// A record of an order for `owner`'s account signed by `key` (a session key of the account,
/// the record's signer), as the gateway logs one.
#[allow(clippy::too_many_arguments)]
fn signed_by_key(
    key: &str,
    owner: &str,
    venue: &Venue,
    account: u32,
    side: Side,
    price: i64,
    amount: i64,
    nonce: u64,
) -> Authorization {
    let mut record = Authorization {
        nonce,
        expiry_s: 4_000_000_000,
        signer: address(key),
        domain: auth::domain::OPTIO,
        limit_price: Price(price),
        amount: Qty(amount),
        max_fee: 1_000 * USDC,
        signature: [0; 65],
    };
    let fill = auth::FillSide {
        account: AccountId(account),
        instrument: InstrumentId(0),
        side,
        price: Price(0),
        qty: Qty(0),
    };
    let digest = record.digest(&fill, address(owner), venue).expect("digest");
    record.signature = optio_intents::sign(&secret(key), &digest);
    record
}

/// One batch's blob, commitment and section over `state` (applied and committed).
struct Posted {
    blob: Vec<u8>,
    commitment: U256,
    root: U256,
}

fn post(state: &mut SettlementState, number: u64, ops: &[Op]) -> Posted {
    post_at(state, number, ops, 0)
}

/// `post`, the batch cut at engine time `time_ms`.
fn post_at(state: &mut SettlementState, number: u64, ops: &[Op], time_ms: u64) -> Posted {
    let meta = BlobMeta {
        number,
        first_seq: number,
        last_seq: number,
        time_ms,
        accounts: state.accounts().len() as u32,
        instruments: state.instruments().len() as u32,
    };
    let blob = encode(&meta, ops).expect("encodes");
    let commitment = word(&optio_state::blob::commitment(
        &encode_ops(&meta, ops).expect("encodes"),
    ));
    state.apply_batch(ops).expect("applies");
    Posted {
        blob,
        commitment,
        root: word(&state.commit()),
    }
}

/// Commits batch `number` (one sequence number each, both L1 deposits served) with `section`.
async fn commit(
    rollup: &OptioRollup::OptioRollupInstance<&optio_settler::DynProvider>,
    number: u64,
    previous: U256,
    b: &Posted,
    section: &[u8],
) {
    let (_, ops) = optio_state::decode(&b.blob).expect("decodes");
    optio_settler::back_operator_deposits(rollup.provider(), *rollup.address(), &ops)
        .await
        .expect("the operator pays in its deposits");
    transact(rollup.commitBatch(
        U256::from(number),
        previous,
        b.root,
        number,
        number,
        2,
        withdrawals_hash(&[]).into(),
        b.commitment,
        b.blob.clone().into(),
        section.to_vec().into(),
    ))
    .await
    .expect("commits");
}

/// A rollup with the authorization challenge (and the mark challenge for the oracle at
/// `oracle`, unless zero), deployed by the operator with its bond, where Alice and Bob have
/// each deposited 100,000 USDC on L1.
struct Rig {
    anvil: optio_contracts::Anvil,
    operator: optio_settler::DynProvider,
    d: optio_settler::Deployment,
    venue: Venue,
}

async fn rig(oracle: Address) -> Rig {
    optio_contracts::forge_build().expect("forge build");
    // L1 time starts where the batches' engine time does (0 ms and on): a rollup takes a batch
    // only within its time bounds of the block's time.
    let anvil = optio_contracts::Anvil::start_with(&["--timestamp", "1"]).expect("anvil");
    let operator = connect(&anvil.url, OPERATOR).expect("provider");
    let genesis = word(&SettlementState::new().root());
    let d = deploy(
        &operator,
        optio_settler::signer_address(OPERATOR).expect("address"),
        genesis,
        &RollupConfig {
            bond: U256::from(BOND),
            authorizations: true,
            oracle,
            ..RollupConfig::new(0, 6 * 3_600)
        },
    )
    .await
    .expect("deploys");
    assert!(
        OptioRollup::new(d.rollup, &operator)
            .authorizations()
            .call()
            .await
            .expect("reads")
    );
    let venue = Venue {
        chain_id: operator.get_chain_id().await.expect("chain id"),
        rollup: optio_types::Address(d.rollup.into_array()),
    };
    let usdc = TestUSDC::new(d.usdc, &operator);
    for key in [ALICE, BOB] {
        let user = connect(&anvil.url, key).expect("provider");
        let who = optio_settler::signer_address(key).expect("address");
        transact(usdc.mint(who, U256::from(100_000 * USDC as u64)))
            .await
            .expect("mint");
        let token = TestUSDC::new(d.usdc, &user);
        transact(token.approve(d.rollup, U256::MAX))
            .await
            .expect("approve");
        transact(
            OptioRollup::new(d.rollup, &user).deposit(u32::MAX, U256::from(100_000 * USDC as u64)),
        )
        .await
        .expect("deposit");
    }
    Rig {
        anvil,
        operator,
        d,
        venue,
    }
}

/// Batch 1's ops (cut at engine time 0): both accounts with their L1 deposits, Alice's session
/// key and margin mode (`Standard`), a listing (a multi-word op before the
/// fill), `fill`, and a mark with a risk array after it.
fn opening_ops(fill: &Op) -> Vec<Op> {
    vec![
        Op::OpenAccount {
            owner: address(ALICE),
        },
        Op::L1Deposit {
            priority: 0,
            account: AccountId(0),
            amount: Amount(100_000 * USDC),
        },
        Op::SessionKey {
            account: AccountId(0),
            key: address(SESSION),
            expiry_ms: SESSION_UNTIL,
            at_ms: 0,
        },
        // Alice writes on margin (a `WorstCase` account is held to full collateral).
        Op::SetMarginMode {
            account: AccountId(0),
            mode: MarginMode::Standard,
        },
        Op::OpenAccount {
            owner: address(BOB),
        },
        Op::L1Deposit {
            priority: 1,
            account: AccountId(1),
            amount: Amount(100_000 * USDC),
        },
        Op::ListInstrument {
            spec: InstrumentSpec::with_defaults(
                "BTC-PERPETUAL".parse().expect("name"),
                Price(200_000 * MONEY_SCALE),
            ),
        },
        Op::ActivateInstrument {
            instrument: InstrumentId(0),
        },
        fill.clone(),
        Op::Mark {
            instrument: InstrumentId(0),
            mark: Price(1_000 * USDC),
            index: Price(60_000_000_000),
            risk: (0..13).map(|k| Amount(k * 1_000 - 5_000)).collect(),
            published_ms: 0,
        },
    ]
}

/// The owner's signature of account change `op` (a session key change whose expiry is whole
/// seconds, or a margin mode change) by `key`, as a client signs it
/// (`optio_gateway::client::change_params`), read back from its request parameters.
fn sign_change(key: &str, venue: &Venue, op: &Op, nonce: u64, expiry_s: u64) -> ChangeAttestation {
    let (account, change) = match op {
        Op::SessionKey {
            account,
            key,
            expiry_ms,
            ..
        } => (
            account,
            optio_gateway::client::Change::SessionKey {
                key: key.0,
                expiry_s: expiry_ms / 1_000,
            },
        ),
        Op::SetMarginMode { account, mode } => {
            (account, optio_gateway::client::Change::MarginMode(*mode))
        }
        _ => panic!("not an account change"),
    };
    let params = optio_gateway::client::change_params(
        &secret(key),
        venue.chain_id,
        venue.rollup.0,
        u64::from(account.0),
        change,
        nonce,
        expiry_s,
    );
    let hex = params["signature"].as_str().expect("signature");
    let signature: Vec<u8> = (2..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    ChangeAttestation {
        nonce,
        expiry_s,
        signature: signature.try_into().expect("65 bytes"),
    }
}

/// Alice's signatures of batch 1's account changes (`opening_ops`: her session key, then her
/// margin mode), as the batch posts them.
fn opening_changes(venue: &Venue) -> Vec<Option<ChangeAttestation>> {
    opening_ops(&bob_buys(1))
        .iter()
        .filter(|op| auth::is_change(op))
        .zip(100..)
        .map(|(op, nonce)| Some(sign_change(ALICE, venue, op, nonce, 4_000_000_000)))
        .collect()
}

/// Bob buys `qty` from Alice at 1,000.
fn bob_buys(qty: i64) -> Op {
    Op::Fill {
        instrument: InstrumentId(0),
        maker: AccountId(0),
        taker: AccountId(1),
        taker_side: Side::Buy,
        price: Price(1_000 * USDC),
        qty: Qty(qty),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_fill_is_caught_reverted_and_slashed_and_users_exit_whole() {
    let Rig {
        anvil,
        operator,
        d,
        venue,
    } = rig(Address::ZERO).await;
    let rollup = OptioRollup::new(d.rollup, &operator);
    let genesis = word(&SettlementState::new().root());

    // Batch 1, honest: the accounts, a listing, a trade both signed, a mark.
    let mut state = SettlementState::new();
    let fill = bob_buys(QTY_SCALE / 2);
    let ops = opening_ops(&fill);
    let alice_sells = signed(ALICE, &venue, 0, Side::Sell, "1000", "1", 1);
    let bob_buys = signed(BOB, &venue, 1, Side::Buy, "1010", "0.5", 1);
    let section1 = auth::section_of(
        &[Some(alice_sells), Some(bob_buys)],
        &opening_changes(&venue),
        &[],
    );
    let b1 = post(&mut state, 1, &ops);
    commit(&rollup, 1, genesis, &b1, &section1).await;
    let finalized = state.clone();

    // The contract finds the fill behind the listing's chunks and the deposits' two words.
    let judge = OptioJudge::new(rollup.judge().call().await.expect("reads"), &operator);
    assert_eq!(
        judge.rollup().call().await.expect("reads"),
        *rollup.address(),
        "the rollup's judge"
    );
    let found = judge
        .fillAt(b1.blob.clone().into(), U256::ZERO)
        .call()
        .await
        .expect("finds the fill");
    assert_eq!(
        (
            found.maker,
            found.taker,
            found.instrument,
            found.takerBuys,
            found.price,
            found.qty
        ),
        (0, 1, 0, true, 1_000 * USDC, QTY_SCALE / 2)
    );
    assert!(
        judge
            .fillAt(b1.blob.clone().into(), U256::from(1u64))
            .call()
            .await
            .is_err(),
        "a second fill that is not there"
    );

    // The contract and the Rust check agree on every way a record can be wrong.
    let sides = auth::fill_sides([&fill]);
    let alice = address(ALICE);
    let mut variants: Vec<(&str, Option<Authorization>, bool)> = vec![
        ("as signed", Some(alice_sells), true),
        (
            "a limit it was not signed for",
            Some(Authorization {
                limit_price: Price(990 * USDC),
                ..alice_sells
            }),
            false,
        ),
        (
            "an amount it was not signed for",
            Some(Authorization {
                amount: Qty(2 * QTY_SCALE),
                ..alice_sells
            }),
            false,
        ),
        (
            "another nonce",
            Some(Authorization {
                nonce: 2,
                ..alice_sells
            }),
            false,
        ),
        (
            "another expiry",
            Some(Authorization {
                expiry_s: 4_000_000_001,
                ..alice_sells
            }),
            false,
        ),
        (
            "another fee cap",
            Some(Authorization {
                max_fee: 1,
                ..alice_sells
            }),
            false,
        ),
        (
            "another domain",
            Some(Authorization {
                domain: auth::domain::COMPAT,
                ..alice_sells
            }),
            false,
        ),
        (
            "an unknown domain",
            Some(Authorization {
                domain: 9,
                ..alice_sells
            }),
            false,
        ),
        (
            "Bob's signature for Alice's account",
            Some(Authorization {
                signer: address(BOB),
                ..signed(BOB, &venue, 0, Side::Sell, "1000", "1", 1)
            }),
            false,
        ),
        (
            "signed by Alice, but for a price beyond the fill",
            Some(signed(ALICE, &venue, 0, Side::Sell, "1001", "1", 3)),
            false,
        ),
        (
            "signed by Alice, but smaller than the fill",
            Some(signed(ALICE, &venue, 0, Side::Sell, "1000", "0.25", 4)),
            false,
        ),
        (
            "signed by Alice, but to buy",
            Some(signed(ALICE, &venue, 0, Side::Buy, "1000", "1", 5)),
            false,
        ),
        ("no record", None, false),
    ];
    // The same signature malleated (s -> n - s, v flipped): refused as the gateway refuses it.
    let mut high = alice_sells;
    let n = U256::from_str_radix(
        "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
        16,
    )
    .expect("order");
    let s = U256::from_be_slice(&high.signature[32..64]);
    high.signature[32..64].copy_from_slice(&(n - s).to_be_bytes::<32>());
    high.signature[64] ^= 1;
    variants.push(("a malleated signature", Some(high), false));
    // A record signed by Alice's session key (batch 1 is cut at engine time 0; the key is live
    // until SESSION_UNTIL), judged against the keys her leaf commits.
    let session = address(SESSION);
    let live = vec![(session, SESSION_UNTIL)];
    let by_key = signed_by_key(
        SESSION,
        ALICE,
        &venue,
        0,
        Side::Sell,
        1_000 * USDC,
        QTY_SCALE,
        6,
    );
    let mut variants: Vec<Variant> = variants
        .into_iter()
        .map(|(what, record, expected)| (what, record, Vec::new(), expected))
        .collect();
    variants.extend([
        (
            "signed by a live session key",
            Some(by_key),
            live.clone(),
            true,
        ),
        (
            "signed by a session key expired at the batch's time",
            Some(by_key),
            vec![(session, 0)],
            false,
        ),
        (
            "signed by a key the account does not have",
            Some(by_key),
            Vec::new(),
            false,
        ),
        (
            "signed by a session key, its signer named as the owner",
            Some(Authorization {
                signer: alice,
                ..by_key
            }),
            live.clone(),
            false,
        ),
        (
            "signed by the owner, with session keys",
            Some(alice_sells),
            live.clone(),
            true,
        ),
    ]);
    for (what, record, keys, expected) in variants {
        let held: std::collections::BTreeMap<_, _> = keys.iter().copied().collect();
        let rust = record.is_some_and(|r| r.check(&sides[0], alice, &held, 0, &venue).is_ok());
        // No record at all: an empty section.
        let records: Vec<Option<Authorization>> = record.map(Some).into_iter().collect();
        let evm = judge
            .authorizes(
                auth::section_of(&records, &[], &[]).into(),
                U256::ZERO,
                b1.blob.clone().into(),
                Address::from(alice.0),
                optio_settler::keys_call(&keys),
            )
            .call()
            .await
            .expect("calls");
        assert_eq!((rust, evm), (expected, expected), "{what}");
    }
    assert!(
        bob_buys
            .check(&sides[1], address(BOB), &Default::default(), 0, &venue)
            .is_ok(),
        "the taker's record"
    );

    // Anyone finalizes batch 1 (no delay on this rollup), and the watchtower agrees with it.
    transact(rollup.finalize()).await.expect("finalizes");
    assert_eq!(
        verify_l1(&operator, d.rollup).await.expect("verifies"),
        vec![Verdict::Agrees(1)]
    );

    // Batch 2, forged: Bob buys again, at 900, a price Alice never signed (her batch-1
    // signature is reposted); Bob's own order is real.
    let forged = Op::Fill {
        instrument: InstrumentId(0),
        maker: AccountId(0),
        taker: AccountId(1),
        taker_side: Side::Buy,
        price: Price(900 * USDC),
        qty: Qty(QTY_SCALE / 2),
    };
    let b2 = post(&mut state, 2, std::slice::from_ref(&forged));
    let section2 = auth::section_of(
        &[
            Some(alice_sells),
            Some(signed(BOB, &venue, 1, Side::Buy, "900", "0.5", 2)),
        ],
        &[],
        &[],
    );
    // The contract takes it until challenged.
    commit(&rollup, 2, b1.root, &b2, &section2).await;

    // Challenging an honest side reverts and changes nothing.
    let honest = Challenge {
        number: 2,
        data: b2.blob.clone(),
        auths: section2.clone(),
        fill: 0,
        taker: true,
        opening: state.exit_proof(AccountId(1)).expect("Bob"),
        keys: Vec::new(),
    };
    let challenger = connect(&anvil.url, CHALLENGER).expect("provider");
    assert!(
        file_challenge(&challenger, d.rollup, &honest)
            .await
            .is_err()
    );
    // So does a challenge with other data than was posted, or against the final batch.
    let other = Challenge {
        data: b1.blob.clone(),
        taker: false,
        ..honest.clone()
    };
    assert!(file_challenge(&challenger, d.rollup, &other).await.is_err());
    let final_one = Challenge {
        number: 1,
        data: b1.blob.clone(),
        auths: section1.clone(),
        opening: finalized.exit_proof(AccountId(0)).expect("Alice"),
        taker: false,
        fill: 0,
        keys: live.clone(),
    };
    assert!(
        file_challenge(&challenger, d.rollup, &final_one)
            .await
            .is_err()
    );
    assert_eq!(
        rollup.committedBatches().call().await.expect("reads"),
        U256::from(2u64)
    );
    assert!(!rollup.frozen().call().await.expect("reads"));

    // The watchtower finds the forgery with the challenge ready, and files it.
    let verdicts = verify_l1(&operator, d.rollup).await.expect("verifies");
    let Some(Verdict::Unauthorized {
        number: 2,
        fill: 0,
        taker: false,
        account: 0,
        why,
        challenge: c,
    }) = verdicts.last()
    else {
        panic!("{verdicts:?}")
    };
    assert!(why.contains("beyond the signed limit"), "{why}");
    assert_eq!(opening_call(&c.opening).owner, Address::from(alice.0));
    assert_eq!(c.keys, live, "Alice's session key, as her leaf commits it");
    // Her keys left out: they do not hash to her leaf's.
    let keyless = Challenge {
        keys: Vec::new(),
        ..(**c).clone()
    };
    let err = file_challenge(&challenger, d.rollup, &keyless)
        .await
        .expect_err("keys that are not the leaf's");
    assert!(err.to_string().contains("keys"), "{err}");
    let receipt = pays_the_bond(&operator, file_challenge(&challenger, d.rollup, c)).await;
    println!(
        "a successful challenge: {} gas ({} data bytes, {} authorization bytes)",
        receipt.gas_used,
        c.data.len(),
        c.auths.len()
    );
    let event = receipt
        .decoded_log::<OptioRollup::Challenged>()
        .expect("the Challenged event");
    assert_eq!(
        (event.number, event.reward),
        (U256::from(2u64), U256::from(BOND))
    );
    assert_eq!(
        operator.get_balance(d.rollup).await.expect("balance"),
        U256::ZERO
    );
    reverted_to(&rollup, 1).await;
    assert!(
        file_challenge(&challenger, d.rollup, c).await.is_err(),
        "once"
    );

    users_exit_whole(&anvil, &d, &finalized).await;
}

/// An account change its owner never signed: the operator registers a key of its own as a
/// session key of Bob's account and sells Bob's position with it. Each fill side passes the
/// fill challenge's check (the key is live under the batch's root), but the key change is not
/// Bob's: the watchtower finds it and files the change challenge; the batch is reverted, the
/// bond paid to the challenger, and both users exit with what the finalized state owes them.
/// The contract and the Rust check agree on every way a change's signature can be wrong, and
/// challenging a change its owner did sign reverts and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_change_its_owner_never_signed_is_caught_reverted_and_slashed() {
    let Rig {
        anvil,
        operator,
        d,
        venue,
    } = rig(Address::ZERO).await;
    let rollup = OptioRollup::new(d.rollup, &operator);
    let judge = OptioJudge::new(rollup.judge().call().await.expect("reads"), &operator);

    // Batch 1, honest: Alice's session key and margin mode changes signed by her.
    let (mut state, b1, _) = final_opening_batch(&rollup, &venue).await;
    let finalized = state.clone();
    assert_eq!(
        verify_l1(&operator, d.rollup).await.expect("verifies"),
        vec![Verdict::Agrees(1)]
    );

    // Batch 2 at 10 s, forged: the operator's key registered for Bob (signed by that key, not
    // by Bob), Bob's own switch to `Standard` (signed by him), and Bob's half contract sold to
    // Alice at 1,000 by the operator's key.
    let (alice, bob) = (address(ALICE), address(BOB));
    let register = Op::SessionKey {
        account: AccountId(1),
        key: address(ROGUE),
        expiry_ms: 1_000_000,
        at_ms: 10_000,
    };
    let switch = Op::SetMarginMode {
        account: AccountId(1),
        mode: MarginMode::Standard,
    };
    let sold = Op::Fill {
        instrument: InstrumentId(0),
        maker: AccountId(0),
        taker: AccountId(1),
        taker_side: Side::Sell,
        price: Price(1_000 * USDC),
        qty: Qty(QTY_SCALE / 2),
    };
    let by_bob = sign_change(BOB, &venue, &register, 7, 4_000_000_000);
    let switched = sign_change(BOB, &venue, &switch, 8, 4_000_000_000);
    let section2 = auth::section_of(
        &[
            Some(signed(ALICE, &venue, 0, Side::Buy, "1000", "0.5", 2)),
            Some(signed_by_key(
                ROGUE,
                BOB,
                &venue,
                1,
                Side::Sell,
                1_000 * USDC,
                QTY_SCALE / 2,
                9,
            )),
        ],
        &[
            Some(sign_change(ROGUE, &venue, &register, 7, 4_000_000_000)),
            Some(switched),
        ],
        &[],
    );
    let b2 = post_at(&mut state, 2, &[register.clone(), switch, sold], 10_000);
    commit(&rollup, 2, b1.root, &b2, &section2).await;

    // The contract and the Rust check agree on every way the key change's signature can be
    // wrong (the batch's time is 10 s).
    let mut high = by_bob;
    let n = U256::from_str_radix(
        "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
        16,
    )
    .expect("order");
    let s = U256::from_be_slice(&high.signature[32..64]);
    high.signature[32..64].copy_from_slice(&(n - s).to_be_bytes::<32>());
    high.signature[64] ^= 1;
    let variants: Vec<(&str, Option<ChangeAttestation>, bool)> = vec![
        ("as Bob signs it", Some(by_bob), true),
        (
            "signed by the key it registers",
            Some(sign_change(ROGUE, &venue, &register, 7, 4_000_000_000)),
            false,
        ),
        (
            "signed by Alice",
            Some(sign_change(ALICE, &venue, &register, 7, 4_000_000_000)),
            false,
        ),
        (
            "another nonce",
            Some(ChangeAttestation { nonce: 6, ..by_bob }),
            false,
        ),
        (
            "another expiry",
            Some(ChangeAttestation {
                expiry_s: 4_000_000_001,
                ..by_bob
            }),
            false,
        ),
        (
            "Bob's, alive until the batch's time",
            Some(sign_change(BOB, &venue, &register, 7, 10)),
            true,
        ),
        (
            "Bob's, expired before the batch's time",
            Some(sign_change(BOB, &venue, &register, 7, 9)),
            false,
        ),
        ("Bob's signature of his mode change", Some(switched), false),
        ("a malleated signature", Some(high), false),
        ("none posted", None, false),
    ];
    for (what, entry, expected) in variants {
        let rust = entry.is_some_and(|a| a.check(&register, bob, 10_000, &venue).is_ok());
        let section = auth::section_of(&[], &[entry, Some(switched)], &[]);
        let evm = judge
            .changeSigned(
                b2.blob.clone().into(),
                section.into(),
                U256::ZERO,
                Address::from(bob.0),
            )
            .call()
            .await
            .expect("calls");
        assert_eq!(evm._1, 1, "{what}: Bob's account");
        assert_eq!((rust, evm._0), (expected, expected), "{what}");
    }
    assert!(
        judge
            .changeSigned(
                b2.blob.clone().into(),
                section2.clone().into(),
                U256::from(2u64),
                Address::from(bob.0),
            )
            .call()
            .await
            .is_err(),
        "a third change that is not there"
    );

    // Challenging Bob's signed switch reverts and changes nothing; so does opening another
    // account's leaf for the forged change.
    let challenger = connect(&anvil.url, CHALLENGER).expect("provider");
    let honest = ChangeChallenge {
        posted: PostedOp {
            number: 2,
            data: b2.blob.clone(),
            auths: section2.clone(),
            op: 1,
        },
        opening: state.exit_proof(AccountId(1)).expect("Bob"),
    };
    let err = file_change_challenge(&challenger, d.rollup, &honest)
        .await
        .expect_err("signed by Bob");
    let selector: String = optio_intents::keccak(b"Authorized()")[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(err.to_string().contains(&selector), "Authorized(): {err}");
    let misopened = ChangeChallenge {
        posted: PostedOp {
            op: 0,
            ..honest.posted.clone()
        },
        opening: state.exit_proof(AccountId(0)).expect("Alice"),
    };
    assert!(
        file_change_challenge(&challenger, d.rollup, &misopened)
            .await
            .is_err()
    );
    assert!(!rollup.frozen().call().await.expect("reads"));

    // The watchtower finds the forged change (the fills pass their own check) and files it.
    let verdicts = verify_l1(&operator, d.rollup).await.expect("verifies");
    let Some(Verdict::UnsignedChange {
        number: 2,
        change: 0,
        account: 1,
        why,
        challenge: c,
    }) = verdicts.last()
    else {
        panic!("{verdicts:?}")
    };
    assert!(why.starts_with("session key change:"), "{why}");
    assert_eq!(opening_call(&c.opening).owner, Address::from(bob.0));
    assert_ne!(alice, bob);
    let receipt = pays_the_bond(&operator, file_change_challenge(&challenger, d.rollup, c)).await;
    println!(
        "a successful change challenge: {} gas ({} data bytes, {} authorization bytes)",
        receipt.gas_used,
        c.posted.data.len(),
        c.posted.auths.len()
    );
    let event = receipt
        .decoded_log::<OptioRollup::ChangeChallenged>()
        .expect("the ChangeChallenged event");
    assert_eq!(
        (event.number, event.change, event.reward),
        (U256::from(2u64), U256::ZERO, U256::from(BOND))
    );
    reverted_to(&rollup, 1).await;
    users_exit_whole(&anvil, &d, &finalized).await;
}

/// A signed account change posted again while its signature lives: Alice registers a session
/// key (batch 1, final) and revokes it (batch 2); the operator reposts her registration in
/// batch 3, signature and all, so the key is back. Every change passes the owner's-signature
/// check, but the watchtower sees the nonce again within the signature's life and files the
/// replay challenge: batch 3 is reverted, the bond paid, and both users exit whole. A nonce
/// used again after its first signature expired (Bob's, as the gateway allows) is no replay,
/// on L1 as in Rust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_change_posted_again_while_its_signature_lives_is_caught_and_slashed() {
    let Rig {
        anvil,
        operator,
        d,
        venue,
    } = rig(Address::ZERO).await;
    let rollup = OptioRollup::new(d.rollup, &operator);
    let judge = OptioJudge::new(rollup.judge().call().await.expect("reads"), &operator);
    let (alice, bob) = (address(ALICE), address(BOB));

    // Batch 1 at 0 s, final: Alice registers her session key (her signature, nonce 100).
    let (mut state, b1, section1) = final_opening_batch(&rollup, &venue).await;
    let finalized = state.clone();

    // Batch 2 at 1 s: Alice revokes the key; Bob switches to `Standard`, his signature (nonce
    // 7) living until exactly 1 s.
    let revoke = Op::SessionKey {
        account: AccountId(0),
        key: address(SESSION),
        expiry_ms: 0,
        at_ms: 1_000,
    };
    let standard = Op::SetMarginMode {
        account: AccountId(1),
        mode: MarginMode::Standard,
    };
    let section2 = auth::section_of(
        &[],
        &[
            Some(sign_change(ALICE, &venue, &revoke, 102, 4_000_000_000)),
            Some(sign_change(BOB, &venue, &standard, 7, 1)),
        ],
        &[],
    );
    let b2 = post_at(&mut state, 2, &[revoke, standard], 1_000);
    commit(&rollup, 2, b1.root, &b2, &section2).await;

    // Batch 3 at 2 s: the operator reposts Alice's registration with her batch-1 signature;
    // Bob switches to `Portfolio` under nonce 7 again, his first signature expired (as the
    // gateway allows: it forgets a nonce once its signature expires).
    let Op::SessionKey {
        account,
        key,
        expiry_ms,
        ..
    } = opening_ops(&bob_buys(1))
        .into_iter()
        .find(|op| matches!(op, Op::SessionKey { .. }))
        .expect("her registration")
    else {
        unreachable!()
    };
    let replayed = Op::SessionKey {
        account,
        key,
        expiry_ms,
        at_ms: 2_000,
    };
    let portfolio = Op::SetMarginMode {
        account: AccountId(1),
        mode: MarginMode::Portfolio,
    };
    let section3 = auth::section_of(
        &[],
        &[
            opening_changes(&venue)[0],
            Some(sign_change(BOB, &venue, &portfolio, 7, 4_000_000_000)),
        ],
        &[],
    );
    let b3 = post_at(&mut state, 3, &[replayed.clone(), portfolio.clone()], 2_000);
    commit(&rollup, 3, b2.root, &b3, &section3).await;

    // Every change is its owner's, one by one; the contract and the Rust rule agree on which
    // pairs replay.
    let posted = |number: u64, b: &Posted, auths: &[u8], op: u64| PostedOp {
        number,
        data: b.blob.clone(),
        auths: auths.to_vec(),
        op,
    };
    let b1_key = posted(1, &b1, &section1, 0);
    let b2_mode = posted(2, &b2, &section2, 1);
    let b3_key = posted(3, &b3, &section3, 0);
    let b3_mode = posted(3, &b3, &section3, 1);
    let signature =
        |p: &PostedOp| auth::change_attestation(&p.auths, p.op as usize).expect("signed");
    let registered = opening_ops(&bob_buys(1))[2].clone();
    for (what, earlier, earlier_op, later, later_op, time_ms, owner, expected) in [
        (
            "Alice's registration again",
            &b1_key,
            &registered,
            &b3_key,
            &replayed,
            2_000,
            alice,
            true,
        ),
        (
            "Bob's nonce after its signature expired",
            &b2_mode,
            &standard_op(),
            &b3_mode,
            &portfolio,
            2_000,
            bob,
            false,
        ),
    ] {
        let rust = auth::replays(
            (earlier_op, &signature(earlier)),
            (later_op, &signature(later)),
            time_ms,
        );
        let evm = judge
            .changeBroken(earlier.on_l1(), later.on_l1(), Address::from(owner.0))
            .call()
            .await
            .expect("calls");
        assert_eq!((rust, evm._0), (expected, expected), "{what}");
    }
    assert!(
        judge
            .changeBroken(b3_mode.on_l1(), b3_key.on_l1(), Address::from(alice.0))
            .call()
            .await
            .is_err(),
        "an earlier change named as the later one"
    );

    // Challenging Bob's reuse reverts and changes nothing.
    let challenger = connect(&anvil.url, CHALLENGER).expect("provider");
    let honest = ReplayChallenge {
        earlier: b2_mode.clone(),
        later: b3_mode.clone(),
        opening: state.exit_proof(AccountId(1)).expect("Bob"),
    };
    assert!(
        file_replay_challenge(&challenger, d.rollup, &honest)
            .await
            .is_err()
    );
    assert!(!rollup.frozen().call().await.expect("reads"));

    // The watchtower names batch 3's replay of batch 1's change, and files it.
    let verdicts = verify_l1(&operator, d.rollup).await.expect("verifies");
    assert_eq!(verdicts[..2], [Verdict::Agrees(1), Verdict::Agrees(2)]);
    let Some(Verdict::ChangeReplayed {
        number: 3,
        change: 0,
        account: 0,
        why,
        challenge: c,
    }) = verdicts.last()
    else {
        panic!("{verdicts:?}")
    };
    assert!(why.contains("replays change 0 of batch 1"), "{why}");
    assert_eq!((c.earlier.number, c.earlier.op), (1, 0));
    let receipt = pays_the_bond(&operator, file_replay_challenge(&challenger, d.rollup, c)).await;
    println!(
        "a successful replay challenge: {} gas ({} and {} data bytes)",
        receipt.gas_used,
        c.earlier.data.len(),
        c.later.data.len()
    );
    let event = receipt
        .decoded_log::<OptioRollup::ChangeChallenged>()
        .expect("the ChangeChallenged event");
    assert_eq!((event.number, event.change), (U256::from(3u64), U256::ZERO));
    reverted_to(&rollup, 2).await;
    users_exit_whole(&anvil, &d, &finalized).await;
}

/// Batch 1, honest and finalized: `opening_ops` with Bob buying half a contract from Alice,
/// both orders and Alice's session key and margin mode changes signed. Returns the state after
/// it, the batch and its section.
async fn final_opening_batch(
    rollup: &OptioRollup::OptioRollupInstance<&optio_settler::DynProvider>,
    venue: &Venue,
) -> (SettlementState, Posted, Vec<u8>) {
    let mut state = SettlementState::new();
    let section = auth::section_of(
        &[
            Some(signed(ALICE, venue, 0, Side::Sell, "1000", "1", 1)),
            Some(signed(BOB, venue, 1, Side::Buy, "1010", "0.5", 1)),
        ],
        &opening_changes(venue),
        &[],
    );
    let b1 = post(&mut state, 1, &opening_ops(&bob_buys(QTY_SCALE / 2)));
    let genesis = word(&SettlementState::new().root());
    commit(rollup, 1, genesis, &b1, &section).await;
    transact(rollup.finalize()).await.expect("finalizes");
    (state, b1, section)
}

/// Bob's switch to `Standard` (batch 2 of the replay test).
fn standard_op() -> Op {
    Op::SetMarginMode {
        account: AccountId(1),
        mode: MarginMode::Standard,
    }
}

/// Files a challenge (`filing`, from the challenger) that must succeed, and checks that it paid
/// the operator's bond to the challenger.
async fn pays_the_bond(
    operator: &optio_settler::DynProvider,
    filing: impl std::future::Future<
        Output = Result<alloy::rpc::types::TransactionReceipt, optio_settler::SettlerError>,
    >,
) -> alloy::rpc::types::TransactionReceipt {
    let challenger = optio_settler::signer_address(CHALLENGER).expect("address");
    let before = operator.get_balance(challenger).await.expect("balance");
    let receipt = filing.await.expect("the challenge succeeds");
    let after = operator.get_balance(challenger).await.expect("balance");
    let gas = U256::from(receipt.gas_used) * U256::from(receipt.effective_gas_price);
    assert_eq!(
        after + gas - before,
        U256::from(BOND),
        "the bond went to the challenger"
    );
    receipt
}

/// Honest users' money is intact: Alice and Bob each exit with what the finalized state owes
/// them (collateral plus positions at their marks).
/// After a successful challenge: the bond is slashed, the rollup frozen, and only the
/// `standing` batches before the challenged one remain committed.
async fn reverted_to(
    rollup: &OptioRollup::OptioRollupInstance<&optio_settler::DynProvider>,
    standing: u64,
) {
    assert!(rollup.slashed().call().await.expect("reads"));
    assert!(rollup.frozen().call().await.expect("reads"));
    assert_eq!(
        rollup.committedBatches().call().await.expect("reads"),
        U256::from(standing),
        "the batches before the challenged one stand"
    );
}

async fn users_exit_whole(
    anvil: &optio_contracts::Anvil,
    d: &optio_settler::Deployment,
    finalized: &SettlementState,
) {
    let usdc = TestUSDC::new(d.usdc, connect(&anvil.url, OPERATOR).expect("provider"));
    for (key, account) in [(ALICE, 0u32), (BOB, 1)] {
        let user = connect(&anvil.url, key).expect("provider");
        let who = optio_settler::signer_address(key).expect("address");
        let proof = finalized
            .exit_proof(AccountId(account))
            .expect("exit proof");
        let owed = owed_at_exit(finalized, account);
        let held = usdc.balanceOf(who).call().await.expect("reads");
        transact(OptioRollup::new(d.rollup, &user).exit(optio_settler::exit_call(&proof)))
            .await
            .expect("exits");
        assert_eq!(
            usdc.balanceOf(who).call().await.expect("reads") - held,
            U256::from(owed as u64),
            "account {account}"
        );
    }
}

/// What `account` is owed at the exit from `state`: its collateral plus each position at its
/// committed mark, a short's value rounded against it.
fn owed_at_exit(state: &SettlementState, account: u32) -> i64 {
    let proof = state.exit_proof(AccountId(account)).expect("exit proof");
    proof.leaf.collateral.0
        + proof
            .positions
            .iter()
            .map(|(_, q, _, leaf, _)| {
                (i128::from(q.0) * i128::from(leaf.mark.0)).div_euclid(i128::from(QTY_SCALE)) as i64
            })
            .sum::<i64>()
}

/// Every fill of Alice's order (sell 1 at 1,000, signed once) is within its limit and its
/// amount, but over three batches they add up to 1.2: batch 1 (0.5, final), batch 2 (0.4),
/// batch 3 (0.3). The watchtower follows the order's fills across batches, names batch 3 and
/// files the overfill challenge with the fills that pass the amount; the contract refuses fills
/// that stay within it, batches out of order, another order's side, and data other than was
/// posted; the real challenge reverts batch 3 (batch 2 stands), pays the bond and freezes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_filled_past_its_amount_over_several_batches_is_caught_and_slashed() {
    let Rig {
        anvil,
        operator,
        d,
        venue,
    } = rig(Address::ZERO).await;
    let rollup = OptioRollup::new(d.rollup, &operator);
    let alice_sells = signed(ALICE, &venue, 0, Side::Sell, "1000", "1", 1);
    let (posted, _) = alice_fills(&rollup, &venue, alice_sells, &["0.5", "0.4", "0.3"], None).await;

    let verdicts = verify_l1(&operator, d.rollup).await.expect("verifies");
    let [
        Verdict::Agrees(1),
        Verdict::Agrees(2),
        Verdict::OrderBroken {
            number: 3,
            account: 0,
            why,
            challenge,
        },
    ] = verdicts.as_slice()
    else {
        panic!("{verdicts:?}")
    };
    assert!(why.contains("beyond its signed amount"), "{why}");
    assert_eq!(
        sides_of(challenge),
        vec![(1, vec![0]), (2, vec![0]), (3, vec![0])]
    );

    let challenger = connect(&anvil.url, CHALLENGER).expect("provider");
    let part = |n: usize, sides: Vec<u64>| part_of(&posted, n, sides);
    let not_overfilled = within_order();
    let refused = [
        (
            not_overfilled.as_str(),
            vec![part(2, vec![0]), part(3, vec![0])],
        ),
        (
            "batches not ascending",
            vec![part(2, vec![0]), part(1, vec![0]), part(3, vec![0])],
        ),
        (
            "fills of different orders",
            vec![part(1, vec![0]), part(2, vec![1]), part(3, vec![0])],
        ),
        (
            "sides not ascending",
            vec![part(1, vec![0]), part(2, vec![0, 0]), part(3, vec![0])],
        ),
        (
            "not the posted data",
            vec![
                part(1, vec![0]),
                part(2, vec![0]),
                optio_settler::FillSides {
                    data: posted[1].0.clone(),
                    ..part(3, vec![0])
                },
            ],
        ),
    ];
    // Fills within the amount; batches out of order; Bob's side among Alice's; a side named
    // twice; batch 2's data for batch 3.
    let refused = refused.map(|(why, parts)| {
        let c = optio_settler::OrderChallenge {
            parts,
            ..(**challenge).clone()
        };
        (why, c)
    });
    refuses(&challenger, &rollup, &refused).await;

    let receipt = optio_settler::file_order_challenge(&challenger, d.rollup, challenge)
        .await
        .expect("the challenge succeeds");
    println!(
        "a successful overfill challenge over 3 batches: {} gas",
        receipt.gas_used
    );
    let event = receipt
        .decoded_log::<OptioRollup::OrderBroken>()
        .expect("the OrderBroken event");
    assert_eq!(
        (event.number, event.filled, event.amount, event.reward),
        (
            U256::from(3u64),
            alloy::primitives::I256::try_from(QTY_SCALE * 12 / 10).expect("fits"),
            alloy::primitives::I256::try_from(QTY_SCALE).expect("fits"),
            U256::from(BOND)
        )
    );
    reverted_to(&rollup, 2).await;
}

/// Commits one batch per size in `sizes`: Bob buys that size from Alice at 1,000 (Alice's side
/// under her signed order `alice`, Bob's under an order of his own for it, nonce the batch's
/// number); batch 1 also opens the market (`opening_ops`) and is finalized, and batch 2 lists
/// `also_listed` (instrument 1) when given. Returns each batch's posted data and section, and
/// the state batch 1 finalized.
async fn alice_fills(
    rollup: &OptioRollup::OptioRollupInstance<&optio_settler::DynProvider>,
    venue: &Venue,
    alice: Authorization,
    sizes: &[&str],
    also_listed: Option<InstrumentSpec>,
) -> (Vec<(Vec<u8>, Vec<u8>)>, SettlementState) {
    let mut state = SettlementState::new();
    let mut root = word(&state.root());
    let mut posted = Vec::new();
    let mut finalized = SettlementState::new();
    for (number, qty) in (1u64..).zip(sizes) {
        let size: f64 = qty.parse().expect("size");
        let fill = bob_buys((size * QTY_SCALE as f64).round() as i64);
        let ops = match (number, &also_listed) {
            (1, _) => opening_ops(&fill),
            (2, Some(spec)) => vec![Op::ListInstrument { spec: spec.clone() }, fill],
            _ => vec![fill],
        };
        let b = post(&mut state, number, &ops);
        let changes = if number == 1 {
            opening_changes(venue)
        } else {
            Vec::new()
        };
        let section = auth::section_of(
            &[
                Some(alice),
                Some(signed(BOB, venue, 1, Side::Buy, "1000", qty, number)),
            ],
            &changes,
            &[],
        );
        commit(rollup, number, root, &b, &section).await;
        root = b.root;
        if number == 1 {
            transact(rollup.finalize()).await.expect("finalizes");
            finalized = state.clone();
        }
        posted.push((b.blob, section));
    }
    (posted, finalized)
}

/// Batch `n`'s share of an order challenge: fill sides `sides` with its posted data and section.
fn part_of(posted: &[(Vec<u8>, Vec<u8>)], n: usize, sides: Vec<u64>) -> optio_settler::FillSides {
    optio_settler::FillSides {
        number: n as u64,
        data: posted[n - 1].0.clone(),
        auths: posted[n - 1].1.clone(),
        sides,
    }
}

/// An order challenge's fill sides by batch.
fn sides_of(c: &optio_settler::OrderChallenge) -> Vec<(u64, Vec<u64>)> {
    c.parts
        .iter()
        .map(|p| (p.number, p.sides.clone()))
        .collect()
}

/// Files each order challenge of `refused` and checks that it reverts with its reason and
/// leaves the rollup live.
async fn refuses(
    challenger: &optio_settler::DynProvider,
    rollup: &OptioRollup::OptioRollupInstance<&optio_settler::DynProvider>,
    refused: &[(&str, optio_settler::OrderChallenge)],
) {
    for (why, c) in refused {
        let err = optio_settler::file_order_challenge(challenger, *rollup.address(), c)
            .await
            .expect_err(why);
        assert!(err.to_string().contains(why), "{why}: {err}");
    }
    assert!(!rollup.frozen().call().await.expect("reads"));
}

/// The selector of `WithinOrder(filled, amount, fees, maxFee)`: an order challenge over fills
/// that keep to their order.
fn within_order() -> String {
    alloy::primitives::hex::encode(
        &alloy::primitives::keccak256("WithinOrder(int256,int256,int256,int256)")[..4],
    )
}

/// The fee cap on a real EVM: the contract's rule agrees with the Rust one at the bound under
/// both meanings of a cap. Then the operator fills Alice's order, signed with a cap of 0.06 USDC
/// on its fees in all, past it over two batches (0.05 and 0.04 at the perpetual's maker rate):
/// the watchtower finds it and files the challenge with the instrument's listing, whose posted
/// spec gives the contract the rates. A challenge over fills within their caps, naming no
/// listing, or with data other than posted reverts; the real one reverts batch 2, pays the
/// bond and freezes, and both users exit with what batch 1 finalized.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_charged_fees_past_its_signed_cap_is_caught_reverted_and_slashed() {
    let Rig {
        anvil,
        operator,
        d,
        venue,
    } = rig(Address::ZERO).await;
    let rollup = OptioRollup::new(d.rollup, &operator);
    let judge = OptioJudge::new(rollup.judge().call().await.expect("reads"), &operator);
    // The contract's rule is the Rust one, at and around the bound, under both meanings of the
    // cap (in total, and per contract: 0.06 USDC a contract, 1.5 contracts in 3 fills).
    for (domain, filled) in [
        (auth::domain::OPTIO, QTY_SCALE),
        (auth::domain::COMPAT, QTY_SCALE * 3 / 2),
    ] {
        let bound = if domain == auth::domain::OPTIO {
            60_000
        } else {
            90_000
        };
        for fees in [
            -5,
            0,
            bound - 1,
            bound,
            bound + 2,
            bound + 3,
            bound + 4,
            10 * bound,
        ] {
            let on_l1 = judge
                .overcharged(
                    alloy::primitives::I256::try_from(fees).expect("fits"),
                    alloy::primitives::I256::try_from(60_000).expect("fits"),
                    domain,
                    alloy::primitives::I256::try_from(filled).expect("fits"),
                    U256::from(3u64),
                )
                .call()
                .await
                .expect("reads");
            assert_eq!(
                on_l1,
                auth::overcharged(i128::from(fees), 60_000, domain, filled, 3),
                "domain {domain}, fees {fees}"
            );
            assert_eq!(on_l1, fees >= bound + 3, "domain {domain}, fees {fees}");
        }
    }

    // Alice signs a sell of 1 contract at 1,000 with a cap of 0.06 USDC on its fees in all; the
    // operator fills it as a maker anyway, 0.5 then 0.4 (fees of 0.05 and 0.04 at the
    // perpetual's 0.01%: 0.09 in all). The gateway would have refused the order (code 6006).
    let alice_sells = signed_with_cap(ALICE, &venue, 0, Side::Sell, "1000", "1", 1, "0.06");
    let (posted, finalized) =
        alice_fills(&rollup, &venue, alice_sells, &["0.5", "0.4"], Some(put())).await;

    let verdicts = verify_l1(&operator, d.rollup).await.expect("verifies");
    let [
        Verdict::Agrees(1),
        Verdict::OrderBroken {
            number: 2,
            account: 0,
            why,
            challenge,
        },
    ] = verdicts.as_slice()
    else {
        panic!("{verdicts:?}")
    };
    assert!(why.contains("beyond its signed fee cap 0.06"), "{why}");
    assert_eq!(sides_of(challenge), vec![(1, vec![0]), (2, vec![0])]);
    assert_eq!((challenge.listing.number, challenge.listing.op), (1, 0));

    let challenger = connect(&anvil.url, CHALLENGER).expect("provider");
    let part = |n: usize, sides: Vec<u64>| part_of(&posted, n, sides);
    let within = within_order();
    let listing = challenge.listing.clone();
    let refused = [
        // The second fill alone pays 0.04, within the cap; Bob's orders, each within theirs.
        (within.as_str(), vec![part(2, vec![0])], listing.clone()),
        (within.as_str(), vec![part(2, vec![1])], listing.clone()),
        // No listing there; another instrument's listing (the put batch 2 lists); the listing
        // with other data.
        (
            "no such op",
            challenge.parts.clone(),
            PostedOp {
                op: 1,
                ..listing.clone()
            },
        ),
        (
            "another instrument",
            challenge.parts.clone(),
            PostedOp {
                number: 2,
                data: posted[1].0.clone(),
                auths: posted[1].1.clone(),
                op: 0,
            },
        ),
        (
            "not the posted data",
            challenge.parts.clone(),
            PostedOp {
                data: posted[1].0.clone(),
                ..listing.clone()
            },
        ),
    ];
    let refused = refused.map(|(why, parts, listing)| {
        let c = optio_settler::OrderChallenge {
            parts,
            listing,
            ..(**challenge).clone()
        };
        (why, c)
    });
    refuses(&challenger, &rollup, &refused).await;

    let receipt = pays_the_bond(
        &operator,
        optio_settler::file_order_challenge(&challenger, d.rollup, challenge),
    )
    .await;
    println!(
        "a successful fee cap challenge over 2 batches: {} gas",
        receipt.gas_used
    );
    let event = receipt
        .decoded_log::<OptioRollup::OrderBroken>()
        .expect("the OrderBroken event");
    let int = |v: i64| alloy::primitives::I256::try_from(v).expect("fits");
    // The contract read the maker's rate from the posted spec and charged what the ledger did.
    assert_eq!(
        (
            event.number,
            event.filled,
            event.amount,
            event.fees,
            event.maxFee
        ),
        (
            U256::from(2u64),
            int(QTY_SCALE * 9 / 10),
            int(QTY_SCALE),
            int(90_000),
            int(60_000)
        )
    );
    reverted_to(&rollup, 1).await;
    users_exit_whole(&anvil, &d, &finalized).await;
}

/// The risk oracle's key in the mark challenge's test.
const ORACLE: [u8; 32] = [0x0c; 32];

/// A rig whose rollup judges prices against the test oracle, with the oracle and its address.
async fn priced_rig() -> (Rig, optio_oracle::OracleSigner, optio_types::Address) {
    let oracle = optio_oracle::OracleSigner::from_bytes(ORACLE).expect("oracle key");
    let address = optio_types::Address(optio_intents::address_of(&oracle.public_key()));
    (rig(Address::from(address.0)).await, oracle, address)
}

/// What an attestation must not be signed under or by: another rollup's domain separator, and
/// a key that is not the oracle's.
fn strangers(venue: &Venue) -> ([u8; 32], optio_oracle::OracleSigner) {
    let other_rollup = Venue {
        rollup: optio_types::Address([0x77; 20]),
        ..*venue
    }
    .separator(auth::domain::OPTIO)
    .expect("domain");
    let impostor = optio_oracle::OracleSigner::from_bytes([0x0d; 32]).expect("key");
    (other_rollup, impostor)
}

/// Mark op `mark` posting `published_ms` as its publication time.
fn timed(mark: &Op, published_ms: u64) -> Op {
    let mut op = mark.clone();
    match &mut op {
        Op::Mark {
            published_ms: at, ..
        } => *at = published_ms,
        _ => panic!("not a mark: {mark:?}"),
    }
    op
}

/// The oracle's attestation of mark op `mark`, published at `published_ms`, as the oracle signs
/// it (`OracleSigner::sign`, what the devnet and the simulator feed the gateway) for the rollup
/// whose domain separator is `domain`.
fn attest(
    oracle: &optio_oracle::OracleSigner,
    domain: &[u8; 32],
    mark: &Op,
    published_ms: u64,
) -> PriceAttestation {
    let Op::Mark {
        instrument,
        mark,
        index,
        risk,
        ..
    } = mark
    else {
        panic!("not a mark: {mark:?}")
    };
    let update = optio_types::OracleUpdate {
        underlying: "BTC".into(),
        published_ms,
        index_price: *index,
        marks: vec![optio_types::MarkUpdate {
            instrument: *instrument,
            mark: *mark,
            risk_array: risk.clone(),
            attestation: [0; 65],
        }],
        settlements: Vec::new(),
    };
    PriceAttestation {
        published_ms,
        signature: oracle.sign(update, domain).update.marks[0].attestation,
    }
}

/// The mark challenge on a real EVM: the rollup names the oracle; an honest batch posts the
/// oracle's signature of its mark and is finalized (challenging that mark reverts: the
/// contract rebuilds the digest the Rust oracle signed); the contract and the Rust check agree
/// on every way an attestation can be wrong; then the operator posts a mark the oracle never
/// signed (perpetual at 100 instead of 1,000, the batch-1 signature reposted), which would move
/// what every holder's position is worth at exit. The watchtower finds it and files the
/// challenge: the batch is reverted, the bond paid, the rollup frozen, and both users exit with
/// what the finalized batch owes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mark_the_oracle_never_signed_is_caught_reverted_and_slashed_and_users_exit_whole() {
    let (
        Rig {
            anvil,
            operator,
            d,
            venue,
        },
        oracle,
        oracle_address,
    ) = priced_rig().await;
    let rollup = OptioRollup::new(d.rollup, &operator);
    let judge = OptioJudge::new(rollup.judge().call().await.expect("reads"), &operator);
    assert_eq!(
        judge.oracle().call().await.expect("reads"),
        Address::from(oracle_address.0)
    );
    let domain = venue
        .separator(auth::domain::OPTIO)
        .expect("Optio's domain");

    // Batch 1, honest (cut at engine time 0): the accounts, a listing, a signed trade, and the
    // oracle's mark, published at the batch's time.
    let mut state = SettlementState::new();
    let fill = bob_buys(QTY_SCALE / 2);
    let ops = opening_ops(&fill);
    let mark = ops.last().expect("the mark").clone();
    let signed_mark = attest(&oracle, &domain, &mark, 0);
    let section1 = auth::section_of(
        &[
            Some(signed(ALICE, &venue, 0, Side::Sell, "1000", "1", 1)),
            Some(signed(BOB, &venue, 1, Side::Buy, "1010", "0.5", 1)),
        ],
        &opening_changes(&venue),
        &[Some(signed_mark)],
    );
    let b1 = post(&mut state, 1, &ops);
    commit(
        &rollup,
        1,
        word(&SettlementState::new().root()),
        &b1,
        &section1,
    )
    .await;
    let finalized = state.clone();
    let challenger = connect(&anvil.url, CHALLENGER).expect("provider");
    let honest = PostedOp {
        number: 1,
        data: b1.blob.clone(),
        auths: section1.clone(),
        op: 0,
    };
    let err = file_price_challenge(&challenger, d.rollup, &honest)
        .await
        .expect_err("an attested mark");
    let attested: String = optio_intents::keccak(b"Attested()")[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(err.to_string().contains(&attested), "Attested(): {err}");
    let none = PostedOp {
        op: 1,
        ..honest.clone()
    };
    assert!(
        file_price_challenge(&challenger, d.rollup, &none)
            .await
            .is_err(),
        "a second mark that is not there"
    );

    // The contract and the Rust check agree on every way an attestation can be wrong, for a
    // mark op (behind other ops) of a batch cut at engine time T.
    const T: u64 = 1_800_000_000_000;
    let (other_rollup, impostor) = strangers(&venue);
    let with = |mark: i64, risk: &[i64], instrument: u32| Op::Mark {
        instrument: InstrumentId(instrument),
        mark: Price(mark),
        index: Price(60_000_000_000),
        risk: risk.iter().map(|v| Amount(*v)).collect(),
        published_ms: 0,
    };
    let risk: Vec<i64> = (0..31).map(|k| k * 7_000_000 - 100_000_000).collect();
    let op = timed(&with(1_000 * USDC, &risk, 0), T - 1_000);
    let good = attest(&oracle, &domain, &op, T - 1_000);
    let mut high = good;
    let n = U256::from_str_radix(
        "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
        16,
    )
    .expect("order");
    let s = U256::from_be_slice(&high.signature[32..64]);
    high.signature[32..64].copy_from_slice(&(n - s).to_be_bytes::<32>());
    high.signature[64] ^= 1;
    let mut other_risk = risk.clone();
    other_risk[30] += 1;
    let negative = with(-5 * USDC, &[-1, 0, 1], 0);
    let window = auth::MARK_WINDOW_MS;
    let variants: Vec<(&str, Op, Option<PriceAttestation>, bool)> = vec![
        ("as signed", op.clone(), Some(good), true),
        (
            "published at the batch's time",
            timed(&op, T),
            Some(attest(&oracle, &domain, &op, T)),
            true,
        ),
        (
            "published the whole window before",
            timed(&op, T - window),
            Some(attest(&oracle, &domain, &op, T - window)),
            true,
        ),
        (
            "published a millisecond before the window",
            timed(&op, T - window - 1),
            Some(attest(&oracle, &domain, &op, T - window - 1)),
            false,
        ),
        (
            "published after the batch's time",
            timed(&op, T + 1),
            Some(attest(&oracle, &domain, &op, T + 1)),
            false,
        ),
        (
            "another time than it was signed with",
            timed(&op, T - 999),
            Some(PriceAttestation {
                published_ms: T - 999,
                ..good
            }),
            false,
        ),
        (
            "posting another time than its attestation's (the time the state commits)",
            timed(&op, T - 999),
            Some(good),
            false,
        ),
        (
            "posting an earlier time than its attestation's",
            timed(&op, T - 1_001),
            Some(good),
            false,
        ),
        (
            "another mark",
            timed(&with(1_000 * USDC + 1, &risk, 0), T - 1_000),
            Some(good),
            false,
        ),
        (
            "another index",
            Op::Mark {
                instrument: InstrumentId(0),
                mark: Price(1_000 * USDC),
                index: Price(60_000_000_001),
                risk: risk.iter().map(|v| Amount(*v)).collect(),
                published_ms: T - 1_000,
            },
            Some(good),
            false,
        ),
        (
            "another risk value",
            timed(&with(1_000 * USDC, &other_risk, 0), T - 1_000),
            Some(good),
            false,
        ),
        (
            "a risk array cut short",
            timed(&with(1_000 * USDC, &risk[..30], 0), T - 1_000),
            Some(good),
            false,
        ),
        (
            "another instrument",
            timed(&with(1_000 * USDC, &risk, 1), T - 1_000),
            Some(good),
            false,
        ),
        (
            "signed by another key",
            op.clone(),
            Some(attest(&impostor, &domain, &op, T - 1_000)),
            false,
        ),
        (
            "signed for another rollup",
            op.clone(),
            Some(attest(&oracle, &other_rollup, &op, T - 1_000)),
            false,
        ),
        ("a malleated signature", op.clone(), Some(high), false),
        ("no attestation", op.clone(), None, false),
        (
            "a negative mark and risk values, as signed",
            timed(&negative, T),
            Some(attest(&oracle, &domain, &negative, T)),
            true,
        ),
    ];
    for (what, mark, attestation, expected) in variants {
        let ops = vec![
            Op::OpenAccount {
                owner: address(ALICE),
            },
            Op::ListInstrument {
                spec: InstrumentSpec::with_defaults(
                    "BTC-PERPETUAL".parse().expect("name"),
                    Price(200_000 * MONEY_SCALE),
                ),
            },
            mark.clone(),
        ];
        let meta = BlobMeta {
            number: 9,
            first_seq: 1,
            last_seq: 1,
            time_ms: T,
            accounts: 0,
            instruments: 0,
        };
        let blob = encode(&meta, &ops).expect("encodes");
        let section = auth::section_of(&[], &[], &[attestation]);
        let rust = auth::price_attestation(&section, 0)
            .is_some_and(|a| a.check(&mark, T, oracle_address, &venue).is_ok());
        let evm = judge
            .priceAttested(blob.into(), section.into(), U256::ZERO)
            .call()
            .await
            .expect("calls");
        assert_eq!((rust, evm), (expected, expected), "{what}");
    }

    // Anyone finalizes batch 1, and the watchtower agrees with it.
    transact(rollup.finalize()).await.expect("finalizes");
    assert_eq!(
        verify_l1(&operator, d.rollup).await.expect("verifies"),
        vec![Verdict::Agrees(1)]
    );

    // Batch 2, forged: the perpetual's mark at 100 (the oracle said 1,000), its batch-1
    // signature reposted. Alice's short would be worth 450 USDC more at exit, Bob's long as
    // much less.
    let forged = Op::Mark {
        instrument: InstrumentId(0),
        mark: Price(100 * USDC),
        index: Price(60_000_000_000),
        risk: (0..13).map(|k| Amount(k * 1_000 - 5_000)).collect(),
        published_ms: 0,
    };
    let b2 = post(&mut state, 2, std::slice::from_ref(&forged));
    let section2 = auth::section_of(&[], &[], &[Some(signed_mark)]);
    commit(&rollup, 2, b1.root, &b2, &section2).await;
    assert!(!rollup.frozen().call().await.expect("reads"));

    // The watchtower finds it with the challenge ready, and files it.
    let verdicts = verify_l1(&operator, d.rollup).await.expect("verifies");
    let Some(Verdict::Unattested {
        number: 2,
        price: 0,
        instrument: 0,
        why,
        challenge: c,
    }) = verdicts.last()
    else {
        panic!("{verdicts:?}")
    };
    assert!(why.contains("does not recover to the oracle"), "{why}");
    price_challenge_slashes(&operator, &challenger, d.rollup, c, "mark").await;
    users_exit_whole(&anvil, &d, &finalized).await;
}

/// Files price challenge `c` (of batch 2, priced op 0) and checks what it does: the bond paid to
/// the challenger, the event, the rollup slashed and frozen, batch 1 the last committed.
async fn price_challenge_slashes(
    operator: &optio_settler::DynProvider,
    challenger: &optio_settler::DynProvider,
    rollup: Address,
    c: &PostedOp,
    what: &str,
) {
    let receipt = pays_the_bond(operator, file_price_challenge(challenger, rollup, c)).await;
    println!(
        "a successful {what} challenge: {} gas ({} data bytes, {} authorization bytes)",
        receipt.gas_used,
        c.data.len(),
        c.auths.len()
    );
    let event = receipt
        .decoded_log::<OptioRollup::PriceChallenged>()
        .expect("the PriceChallenged event");
    assert_eq!(
        (event.number, event.price, event.reward),
        (U256::from(2u64), U256::ZERO, U256::from(BOND))
    );
    let rollup = OptioRollup::new(rollup, operator);
    reverted_to(&rollup, 1).await;
}

/// The mark order challenge: the engine takes an oracle's updates only forward in time, so a
/// batch never posts a mark older than the one an earlier batch committed for its instrument.
/// Two honest batches (marks published at 10 s and 20 s); then the operator posts, at 20 s, a
/// mark the oracle did sign at 15 s (within the window before the batch's time, so the mark
/// challenge cannot touch it) but had replaced since. The watchtower finds it and files the
/// challenge: the batch is reverted and the bond paid; a challenge of two batches in order
/// reverts and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mark_older_than_one_committed_before_is_caught_reverted_and_slashed() {
    let oracle = optio_oracle::OracleSigner::from_bytes(ORACLE).expect("oracle key");
    let oracle_address = optio_intents::address_of(&oracle.public_key());
    let Rig {
        anvil,
        operator,
        d,
        venue,
    } = rig(Address::from(oracle_address)).await;
    let rollup = OptioRollup::new(d.rollup, &operator);
    let domain = venue
        .separator(auth::domain::OPTIO)
        .expect("Optio's domain");
    let mark_at = |price: i64| Op::Mark {
        instrument: InstrumentId(0),
        mark: Price(price * USDC),
        index: Price(60_000_000_000),
        risk: (0..13).map(|k| Amount(k * 1_000 - 5_000)).collect(),
        published_ms: 0,
    };

    // Batch 1 at 10 s: the accounts, a listing, a signed trade, the mark published then.
    let mut state = SettlementState::new();
    let fill = bob_buys(QTY_SCALE / 2);
    let mut ops = opening_ops(&fill);
    let last = ops.len() - 1;
    ops[last] = timed(&ops[last], 10_000);
    let first = attest(&oracle, &domain, &ops[last], 10_000);
    let section1 = auth::section_of(
        &[
            Some(signed(ALICE, &venue, 0, Side::Sell, "1000", "1", 1)),
            Some(signed(BOB, &venue, 1, Side::Buy, "1010", "0.5", 1)),
        ],
        &opening_changes(&venue),
        &[Some(first)],
    );
    let b1 = post_at(&mut state, 1, &ops, 10_000);
    let genesis = word(&SettlementState::new().root());
    commit(&rollup, 1, genesis, &b1, &section1).await;
    // Batch 2 at 20 s: the mark the oracle published then.
    let b2 = post_at(&mut state, 2, &[timed(&mark_at(1_100), 20_000)], 20_000);
    let section2 = auth::section_of(
        &[],
        &[],
        &[Some(attest(&oracle, &domain, &mark_at(1_100), 20_000))],
    );
    commit(&rollup, 2, b1.root, &b2, &section2).await;
    // Batches 1 and 2 are in order: that challenge reverts.
    let challenger = connect(&anvil.url, CHALLENGER).expect("provider");
    let in_order = PostedOp {
        number: 1,
        data: b1.blob.clone(),
        auths: section1.clone(),
        op: 0,
    };
    let second = PostedOp {
        number: 2,
        data: b2.blob.clone(),
        auths: section2.clone(),
        op: 0,
    };
    let err = file_mark_order_challenge(&challenger, d.rollup, &in_order, &second)
        .await
        .expect_err("marks in order");
    let selector: String = optio_intents::keccak(b"MarksInOrder()")[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(err.to_string().contains(&selector), "MarksInOrder(): {err}");
    assert!(!rollup.frozen().call().await.expect("reads"));

    // Anyone finalizes both (no delay on this rollup).
    transact(rollup.finalize()).await.expect("finalizes 1");
    transact(rollup.finalize()).await.expect("finalizes 2");
    let before = state.clone();
    // Batch 3 at 20 s: the oracle's mark of 15 s, replaced at 20 s.
    let b3 = post_at(&mut state, 3, &[timed(&mark_at(900), 15_000)], 20_000);
    let section3 = auth::section_of(
        &[],
        &[],
        &[Some(attest(&oracle, &domain, &mark_at(900), 15_000))],
    );
    commit(&rollup, 3, b2.root, &b3, &section3).await;

    let verdicts = verify_l1(&operator, d.rollup).await.expect("verifies");
    assert_eq!(
        verdicts[..2],
        [Verdict::Agrees(1), Verdict::Agrees(2)],
        "{verdicts:?}"
    );
    let Some(Verdict::MarkWentBack {
        number: 3,
        mark: 0,
        instrument: 0,
        why,
        challenge,
    }) = verdicts.last()
    else {
        panic!("{verdicts:?}")
    };
    assert!(why.contains("before the mark batch 2 committed"), "{why}");
    let (earlier, later) = challenge.as_ref();
    assert_eq!((earlier.number, later.number), (2, 3));
    let receipt = pays_the_bond(
        &operator,
        file_mark_order_challenge(&challenger, d.rollup, earlier, later),
    )
    .await;
    println!(
        "a successful mark order challenge: {} gas",
        receipt.gas_used
    );
    let event = receipt
        .decoded_log::<OptioRollup::MarkWentBack>()
        .expect("the MarkWentBack event");
    assert_eq!(
        (event.number, event.earlier, event.reward),
        (U256::from(3u64), U256::from(2u64), U256::from(BOND))
    );
    reverted_to(&rollup, 2).await;
    users_exit_whole(&anvil, &d, &before).await;
}

/// The oracle's attestation of instrument `instrument`'s settlement price `price`, published at
/// `published_ms`, as the oracle signs it (`OracleSigner::sign`) for the rollup whose domain
/// separator is `domain`.
fn attest_settlement(
    oracle: &optio_oracle::OracleSigner,
    domain: &[u8; 32],
    instrument: u32,
    price: i64,
    published_ms: u64,
) -> PriceAttestation {
    let update = optio_types::OracleUpdate {
        underlying: "BTC".into(),
        published_ms,
        index_price: Price(price),
        marks: Vec::new(),
        settlements: vec![optio_types::SettlementUpdate {
            instrument: InstrumentId(instrument),
            price: Price(price),
            attestation: [0; 65],
        }],
    };
    PriceAttestation {
        published_ms,
        signature: oracle.sign(update, domain).update.settlements[0].attestation,
    }
}

/// Batch 1 of the put's tests, committed and finalized (the watchtower agrees with it): the
/// accounts, the put listed, Bob buying half a put from Alice at 1,000 (both orders signed),
/// and the put's mark with the attestation `attest` gives it. Returns the state after it and
/// the posted batch.
async fn put_traded(
    rollup: &OptioRollup::OptioRollupInstance<&optio_settler::DynProvider>,
    d: &optio_settler::Deployment,
    venue: &Venue,
    attest: impl Fn(&Op) -> Option<PriceAttestation>,
) -> (SettlementState, Posted) {
    let mut state = SettlementState::new();
    let ops: Vec<Op> = opening_ops(&bob_buys(QTY_SCALE / 2))
        .into_iter()
        .map(|op| match op {
            Op::ListInstrument { .. } => Op::ListInstrument { spec: put() },
            op => op,
        })
        .collect();
    let section = auth::section_of(
        &[
            Some(signed(ALICE, venue, 0, Side::Sell, "1000", "1", 1)),
            Some(signed(BOB, venue, 1, Side::Buy, "1010", "0.5", 1)),
        ],
        &opening_changes(venue),
        &[attest(ops.last().expect("the mark"))],
    );
    let b1 = post(&mut state, 1, &ops);
    commit(
        rollup,
        1,
        word(&SettlementState::new().root()),
        &b1,
        &section,
    )
    .await;
    transact(rollup.finalize()).await.expect("finalizes");
    assert_eq!(
        verify_l1(rollup.provider(), d.rollup)
            .await
            .expect("verifies"),
        vec![Verdict::Agrees(1)]
    );
    (state, b1)
}

/// The put the settlement price challenge's test trades and settles (strike 60,000).
fn put() -> InstrumentSpec {
    InstrumentSpec::with_defaults(
        "BTC-27DEC24-60000-P".parse().expect("name"),
        Price(200_000 * MONEY_SCALE),
    )
}

/// The price challenge on settlement prices, on a real EVM: an honest batch trades a put and is
/// finalized; the contract and the Rust check agree on every way a settlement price's
/// attestation can be wrong (and find the mark after it as the next priced op); then the
/// operator settles the put at 61,000 (the oracle said 58,000: Bob's long would be owed 1,000
/// USDC, Alice's short would owe it), reposting the oracle's signature of 58,000. The
/// watchtower finds it and files the challenge: the batch is reverted, the bond paid, the rollup
/// frozen, and both users exit with what the finalized batch owes them. (The batches are dated
/// at engine time 0, as in the mark challenge's test: L1 judges a settlement price's
/// publication only against its batch's time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_price_the_oracle_never_signed_is_caught_reverted_and_slashed() {
    let (
        Rig {
            anvil,
            operator,
            d,
            venue,
        },
        oracle,
        oracle_address,
    ) = priced_rig().await;
    let rollup = OptioRollup::new(d.rollup, &operator);
    let judge = OptioJudge::new(rollup.judge().call().await.expect("reads"), &operator);
    let domain = venue
        .separator(auth::domain::OPTIO)
        .expect("Optio's domain");

    // Batch 1, honest: Bob buys half a put from Alice at 1,000; the put's mark, signed.
    let (mut state, b1) = put_traded(&rollup, &d, &venue, |mark| {
        Some(attest(&oracle, &domain, mark, 0))
    })
    .await;
    let finalized = state.clone();

    // The contract and the Rust check agree, for a settlement op followed by a mark in a batch
    // cut at engine time T.
    const T: u64 = 1_800_000_000_000;
    let said = 58_000 * USDC;
    let settle = |instrument: u32, price: i64| Op::SettleInstrument {
        instrument: InstrumentId(instrument),
        price: Price(price),
        insurance_credit: Amount(0),
    };
    let good = attest_settlement(&oracle, &domain, 0, said, T - 1_000);
    let (other_rollup, impostor) = strangers(&venue);
    let a_day = 86_400_000;
    let variants: Vec<(&str, Op, Option<PriceAttestation>, bool)> = vec![
        ("as signed", settle(0, said), Some(good), true),
        (
            "published at the batch's time",
            settle(0, said),
            Some(attest_settlement(&oracle, &domain, 0, said, T)),
            true,
        ),
        (
            "published a day before (no window for a settlement price)",
            settle(0, said),
            Some(attest_settlement(&oracle, &domain, 0, said, T - a_day)),
            true,
        ),
        (
            "published after the batch's time",
            settle(0, said),
            Some(attest_settlement(&oracle, &domain, 0, said, T + 1)),
            false,
        ),
        (
            "another time than it was signed with",
            settle(0, said),
            Some(PriceAttestation {
                published_ms: T - 999,
                ..good
            }),
            false,
        ),
        ("another price", settle(0, said + 1), Some(good), false),
        ("another instrument", settle(1, said), Some(good), false),
        (
            "signed by another key",
            settle(0, said),
            Some(attest_settlement(&impostor, &domain, 0, said, T - 1_000)),
            false,
        ),
        (
            "signed for another rollup",
            settle(0, said),
            Some(attest_settlement(
                &oracle,
                &other_rollup,
                0,
                said,
                T - 1_000,
            )),
            false,
        ),
        (
            "a mark's signature of the same numbers",
            settle(0, said),
            Some(attest(
                &oracle,
                &domain,
                &Op::Mark {
                    instrument: InstrumentId(0),
                    mark: Price(said),
                    index: Price(60_000_000_000),
                    risk: Vec::new(),
                    published_ms: 0,
                },
                T - 1_000,
            )),
            false,
        ),
        ("no attestation", settle(0, said), None, false),
    ];
    let later_mark = Op::Mark {
        instrument: InstrumentId(0),
        mark: Price(2_000 * USDC),
        index: Price(60_000_000_000),
        risk: (0..13).map(|k| Amount(k * 1_000 - 5_000)).collect(),
        published_ms: T - 1_000,
    };
    let mark_attested = attest(&oracle, &domain, &later_mark, T - 1_000);
    for (what, settlement, attestation, expected) in variants {
        let ops = vec![
            Op::OpenAccount {
                owner: address(ALICE),
            },
            Op::ListInstrument { spec: put() },
            Op::ExpireInstrument {
                instrument: InstrumentId(0),
            },
            settlement.clone(),
            later_mark.clone(),
        ];
        let meta = BlobMeta {
            number: 9,
            first_seq: 1,
            last_seq: 1,
            time_ms: T,
            accounts: 0,
            instruments: 0,
        };
        let blob = encode(&meta, &ops).expect("encodes");
        let section = auth::section_of(&[], &[], &[attestation, Some(mark_attested)]);
        let rust = auth::price_attestation(&section, 0)
            .is_some_and(|a| a.check(&settlement, T, oracle_address, &venue).is_ok());
        let evm = judge
            .priceAttested(blob.clone().into(), section.clone().into(), U256::ZERO)
            .call()
            .await
            .expect("calls");
        assert_eq!((rust, evm), (expected, expected), "{what}");
        // The mark after it is priced op 1, attested whatever the settlement's entry.
        assert!(
            judge
                .priceAttested(blob.into(), section.into(), U256::from(1u64))
                .call()
                .await
                .expect("calls"),
            "{what}: the mark"
        );
    }

    // Batch 2, forged: the put settled at 61,000 (worth nothing) with the oracle's signature
    // of 58,000 reposted.
    let forged = 61_000 * USDC;
    let held = QTY_SCALE / 2;
    let cash = |qty: i64| {
        put()
            .settlement_cash(Price(forged), Qty(qty))
            .expect("cash")
    };
    let ops2 = vec![
        Op::ExpireInstrument {
            instrument: InstrumentId(0),
        },
        Op::SettlePosition {
            account: AccountId(0),
            instrument: InstrumentId(0),
            qty: Qty(-held),
            cash: cash(-held),
        },
        Op::SettlePosition {
            account: AccountId(1),
            instrument: InstrumentId(0),
            qty: Qty(held),
            cash: cash(held),
        },
        Op::SettleInstrument {
            instrument: InstrumentId(0),
            price: Price(forged),
            insurance_credit: Amount(-(cash(-held).0 + cash(held).0)),
        },
    ];
    let b2 = post(&mut state, 2, &ops2);
    let section2 = auth::section_of(
        &[],
        &[],
        &[Some(attest_settlement(&oracle, &domain, 0, said, 0))],
    );
    commit(&rollup, 2, b1.root, &b2, &section2).await;

    let verdicts = verify_l1(&operator, d.rollup).await.expect("verifies");
    let Some(Verdict::Unattested {
        number: 2,
        price: 0,
        instrument: 0,
        why,
        challenge: c,
    }) = verdicts.last()
    else {
        panic!("{verdicts:?}")
    };
    assert!(
        why.starts_with("settlement price:") && why.contains("does not recover to the oracle"),
        "{why}"
    );
    let challenger = connect(&anvil.url, CHALLENGER).expect("provider");
    price_challenge_slashes(&operator, &challenger, d.rollup, c, "settlement price").await;
    users_exit_whole(&anvil, &d, &finalized).await;
}

/// The posted `op`-th op (of its kind) of `blob` cut at `time_ms`, as a challenge names it.
fn posted_op(number: u64, blob: Vec<u8>, op: u64) -> PostedOp {
    PostedOp {
        number,
        data: blob,
        auths: auth::section_of(&[], &[], &[]),
        op,
    }
}

/// The expiry challenge on a real EVM: the contract dates an option's expiry from its posted
/// listing (08:00 UTC on the spec's date) and agrees with the Rust check at the edge (an expiry
/// op in a batch cut a millisecond before is early, one at the time is not; a perpetual's is
/// always early; a listing of another instrument is refused). Then the operator ends the put's
/// trading in a batch dated years before its date: the watchtower finds it and files the
/// challenge, the batch is reverted, the bond paid, the rollup frozen, and both users exit with
/// what the finalized batch owes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_option_expired_before_its_date_is_caught_reverted_and_slashed() {
    let Rig {
        anvil,
        operator,
        d,
        venue,
    } = rig(Address::ZERO).await;
    let rollup = OptioRollup::new(d.rollup, &operator);
    let judge = OptioJudge::new(rollup.judge().call().await.expect("reads"), &operator);

    // Batch 1, honest: Bob buys half a put from Alice.
    let (mut state, b1) = put_traded(&rollup, &d, &venue, |_| None).await;
    let finalized = state.clone();

    // The contract's date and the Rust one agree at the edge, for an expiry behind other ops.
    let expires = put().expiry_ms().expect("an option");
    let listing = |spec: InstrumentSpec| {
        let meta = BlobMeta {
            number: 8,
            first_seq: 1,
            last_seq: 1,
            time_ms: 0,
            accounts: 0,
            instruments: 0,
        };
        let ops = vec![
            Op::ListInstrument {
                spec: InstrumentSpec::with_defaults(
                    "ETH-PERPETUAL".parse().expect("name"),
                    Price(20_000 * MONEY_SCALE),
                ),
            },
            Op::ListInstrument { spec },
        ];
        posted_op(8, encode(&meta, &ops).expect("encodes"), 1)
    };
    let expiring = |time_ms: u64, instrument: u32| {
        let meta = BlobMeta {
            number: 9,
            first_seq: 2,
            last_seq: 2,
            time_ms,
            accounts: 1,
            instruments: 2,
        };
        let ops = vec![
            Op::Mark {
                instrument: InstrumentId(0),
                mark: Price(1_000 * USDC),
                index: Price(60_000_000_000),
                risk: (0..31).map(|k| Amount(k * 1_000)).collect(),
                published_ms: 0,
            },
            Op::ExpireInstrument {
                instrument: InstrumentId(0),
            },
            Op::ExpireInstrument {
                instrument: InstrumentId(instrument),
            },
        ];
        posted_op(9, encode(&meta, &ops).expect("encodes"), 1)
    };
    let perpetual = InstrumentSpec::with_defaults(
        "BTC-PERPETUAL".parse().expect("name"),
        Price(200_000 * MONEY_SCALE),
    );
    for (what, spec, time_ms, early) in [
        ("a millisecond before", put(), expires - 1, true),
        ("at the expiry", put(), expires, false),
        ("after it", put(), expires + 1, false),
        ("a perpetual", perpetual, u64::MAX / 2, true),
    ] {
        let rust = spec.expiry_ms().is_none_or(|e| time_ms < e);
        let evm = judge
            .expiredEarly(listing(spec).on_l1(), expiring(time_ms, 1).on_l1())
            .call()
            .await
            .expect("calls");
        assert_eq!((rust, evm), (early, early), "{what}");
    }
    assert!(
        judge
            .expiredEarly(listing(put()).on_l1(), expiring(expires - 1, 0).on_l1(),)
            .call()
            .await
            .is_err(),
        "another instrument"
    );

    // Batch 2, forged: the put's trading ends at engine time 0, years before 27 Dec 2024.
    let b2 = post(
        &mut state,
        2,
        &[Op::ExpireInstrument {
            instrument: InstrumentId(0),
        }],
    );
    let section2 = auth::section_of(&[], &[], &[]);
    commit(&rollup, 2, b1.root, &b2, &section2).await;
    let verdicts = verify_l1(&operator, d.rollup).await.expect("verifies");
    let Some(Verdict::ExpiredEarly {
        number: 2,
        instrument: 0,
        why,
        challenge,
    }) = verdicts.last()
    else {
        panic!("{verdicts:?}")
    };
    assert!(why.contains(&format!("expires at {expires} ms")), "{why}");
    let (listed, expired) = challenge.as_ref();
    assert_eq!((listed.number, listed.op, expired.op), (1, 0, 0));
    let challenger = connect(&anvil.url, CHALLENGER).expect("provider");
    // The finalized batch alone shows nothing: its listing against itself names no expiry.
    assert!(
        file_expiry_challenge(&challenger, d.rollup, listed, listed)
            .await
            .is_err()
    );
    let receipt = pays_the_bond(
        &operator,
        file_expiry_challenge(&challenger, d.rollup, listed, expired),
    )
    .await;
    println!(
        "a successful expiry challenge: {} gas ({} + {} data bytes)",
        receipt.gas_used,
        listed.data.len(),
        expired.data.len()
    );
    let event = receipt
        .decoded_log::<OptioRollup::ExpiredEarly>()
        .expect("the ExpiredEarly event");
    assert_eq!(
        (event.number, event.expiry, event.listing, event.reward),
        (
            U256::from(2u64),
            U256::ZERO,
            U256::from(1u64),
            U256::from(BOND)
        )
    );
    reverted_to(&rollup, 1).await;
    users_exit_whole(&anvil, &d, &finalized).await;
}

/// The escape hatch for an account holding many positions, on a real EVM: Alice writes a tenth
/// of a contract of each of 58 instruments (the devnet's listing: the perpetual and 57 calls)
/// to Bob in a finalized batch, then the operator leaves a deposit unserved and anyone
/// freezes. With one proof for all the instruments' leaves (their paths shared), Alice's exit
/// carries them all in one transaction within EIP-7825's 2^24 gas (one proof a leaf took
/// about 53M: the instruments were opened first, in 5 transactions); so does Bob's. Both are
/// paid exactly what the finalized state owes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_holding_every_instrument_exits_in_one_transaction() {
    const HELD: u32 = 58;
    let Rig {
        anvil, operator, d, ..
    } = rig(Address::ZERO).await;
    let rollup = OptioRollup::new(d.rollup, &operator);
    let mut ops = opening_ops(&bob_buys(QTY_SCALE / 10));
    for k in 1..HELD {
        let instrument = InstrumentId(k);
        ops.extend([Op::ListInstrument {
            spec: InstrumentSpec::with_defaults(
                format!("BTC-27DEC24-{}-C", 50_000 + 1_000 * k)
                    .parse()
                    .expect("name"),
                Price(200_000 * MONEY_SCALE),
            ),
        }]);
        ops.extend(alice_writes_a_tenth(
            instrument,
            Price((900 + i64::from(k)) * USDC),
        ));
    }
    let mut finalized = SettlementState::new();
    let b1 = post(&mut finalized, 1, &ops);
    commit(&rollup, 1, word(&SettlementState::new().root()), &b1, &[]).await;
    transact(rollup.finalize()).await.expect("finalizes");

    operator_leaves_a_deposit_unserved(&operator, &d).await;

    for account in [0, 1] {
        assert_eq!(
            finalized
                .exit_proof(AccountId(account))
                .expect("exit proof")
                .positions
                .len(),
            HELD as usize
        );
    }
    let proof = finalized.exit_proof(AccountId(0)).expect("exit proof");
    println!(
        "Alice's exit as planned: {} gas",
        optio_settler::exit_gas(&proof, &vec![false; HELD as usize])
    );
    for (key, account, who) in [(ALICE, 0, "Alice"), (BOB, 1, "Bob")] {
        let (paid, gas) = exit_from_l1_gas(&anvil, &d, key, account).await;
        assert_eq!(
            paid,
            owed_at_exit(&finalized, account),
            "{who} is paid what {who} is owed"
        );
        println!("{who}'s exit ({HELD} instruments' leaves proven together): {gas:?} gas");
        assert_eq!(gas.len(), 1, "{who}'s exit opens nothing: {gas:?}");
    }
}

/// The escape hatch for an account holding many positions far apart, on a real EVM: Alice
/// writes a tenth of a contract of each of 100 instruments 16 ids apart (1,585 listed) to Bob,
/// in finalized batches, then the operator leaves a deposit unserved and anyone freezes. Her
/// positions tree shares few nodes (239, against 28 for the devnet's 58 adjacent ids), so an
/// exit that rebuilds it, even with every instrument opened, needs more gas than a transaction
/// may use. `exit_from_l1` (what `optio exit` runs) opens the instruments, builds her tree on L1
/// node by node (`buildPositions`), and exits naming its root: every transaction within
/// EIP-7825's cap, and she is paid exactly what the finalized state owes her. So is Bob, whose
/// instruments are already open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_holding_positions_far_apart_exits_with_its_tree_built_on_l1() {
    const HELD: u32 = 100;
    const APART: u32 = 16;
    const LISTINGS_PER_BATCH: u32 = 400;
    let Rig {
        anvil, operator, d, ..
    } = rig(Address::ZERO).await;
    let rollup = OptioRollup::new(d.rollup, &operator);
    let mut batches = vec![opening_ops(&bob_buys(QTY_SCALE / 10))];
    for k in 1..=(HELD - 1) * APART {
        if k % LISTINGS_PER_BATCH == 0 {
            batches.push(Vec::new());
        }
        let ops = batches.last_mut().expect("a batch");
        let instrument = InstrumentId(k);
        ops.push(Op::ListInstrument {
            spec: InstrumentSpec::with_defaults(
                format!("BTC-27DEC24-{}-C", 10_000 + 100 * k)
                    .parse()
                    .expect("name"),
                Price(200_000 * MONEY_SCALE),
            ),
        });
        if k % APART == 0 {
            ops.extend(alice_writes_a_tenth(
                instrument,
                Price((900 + i64::from(k)) * USDC + 7),
            ));
        }
    }
    let mut finalized = SettlementState::new();
    let mut previous = word(&finalized.root());
    for (i, ops) in batches.iter().enumerate() {
        let number = i as u64 + 1;
        let b = post(&mut finalized, number, ops);
        commit(&rollup, number, previous, &b, &[]).await;
        previous = b.root;
    }
    let _: serde_json::Value = operator
        .raw_request("evm_increaseTime".into(), (3_600u64,))
        .await
        .expect("time");
    for _ in &batches {
        transact(rollup.finalize()).await.expect("finalizes");
    }

    operator_leaves_a_deposit_unserved(&operator, &d).await;

    let proof = finalized.exit_proof(AccountId(0)).expect("exit proof");
    assert_eq!(proof.positions.len(), HELD as usize);
    let nodes = optio_settler::positions_nodes(&proof);
    println!(
        "Alice's positions tree: {} nodes for {HELD} positions {APART} ids apart",
        nodes.len()
    );
    let rebuild = optio_settler::exit_gas(&proof, &vec![true; HELD as usize]);
    assert_eq!(
        rebuild,
        optio_settler::EXIT_BASE_GAS + nodes.len() as u64 * optio_settler::TREE_NODE_GAS,
        "the plan counts the tree's nodes"
    );
    assert!(
        rebuild > optio_settler::EXIT_GAS,
        "the tree is too costly to rebuild in the exit"
    );
    let (paid, gas) = exit_from_l1_gas(&anvil, &d, ALICE, 0).await;
    assert_eq!(
        paid,
        owed_at_exit(&finalized, 0),
        "Alice is paid what she is owed"
    );
    let openings =
        optio_settler::opening_chunks(&proof, &(0..HELD as usize).collect::<Vec<_>>()).len();
    let builds = nodes.len().div_ceil(optio_settler::BUILD_CHUNK);
    println!(
        "Alice's exit: {openings} openings, {builds} builds, the exit: {gas:?} gas ({} in all)",
        gas.iter().sum::<u64>()
    );
    assert_eq!(gas.len(), openings + builds + 1, "{gas:?}");
    // The exit that rebuilds the tree itself, every instrument opened, does not fit.
    let opened = vec![true; HELD as usize];
    exit_does_not_fit(
        &operator,
        &d,
        optio_settler::exit_call_opened(
            &finalized.exit_proof(AccountId(1)).expect("exit proof"),
            &opened,
        ),
        optio_settler::signer_address(BOB).expect("address"),
        "Bob's exit rebuilding his tree",
    )
    .await;
    let (paid, gas) = exit_from_l1_gas(&anvil, &d, BOB, 1).await;
    assert_eq!(
        paid,
        owed_at_exit(&finalized, 1),
        "Bob is paid what he is owed"
    );
    assert_eq!(gas.len(), builds + 1, "Bob opens nothing: {gas:?}");
}

/// `instrument` activated, Alice (account 0) selling Bob (account 1) a tenth of a contract at
/// 1,000, and its mark.
fn alice_writes_a_tenth(instrument: InstrumentId, mark: Price) -> [Op; 3] {
    [
        Op::ActivateInstrument { instrument },
        Op::Fill {
            instrument,
            maker: AccountId(0),
            taker: AccountId(1),
            taker_side: Side::Buy,
            price: Price(1_000 * USDC),
            qty: Qty(QTY_SCALE / 10),
        },
        Op::Mark {
            instrument,
            mark,
            index: Price(60_000_000_000),
            risk: (0..13).map(|k| Amount(k * 1_000 - 5_000)).collect(),
            published_ms: 0,
        },
    ]
}

/// Asserts that `call`, sent by `from`, needs more gas than a transaction may use (EIP-7825's
/// 2^24); prints its gas, or the node's refusal to estimate it.
async fn exit_does_not_fit(
    provider: &optio_settler::DynProvider,
    d: &optio_settler::Deployment,
    call: OptioRollup::ExitProof,
    from: Address,
    what: &str,
) {
    match OptioRollup::new(d.rollup, provider)
        .exit(call)
        .from(from)
        .estimate_gas()
        .await
    {
        Ok(gas) => {
            println!("{what}: {gas} gas");
            assert!(gas > 1 << 24, "{what} fits a transaction");
        }
        Err(e) => println!("{what} does not fit: {e}"),
    }
}

/// The operator leaves a deposit unserved, and anyone freezes once it is overdue.
async fn operator_leaves_a_deposit_unserved(
    operator: &optio_settler::DynProvider,
    d: &optio_settler::Deployment,
) {
    let rollup = OptioRollup::new(d.rollup, operator);
    let usdc = TestUSDC::new(d.usdc, operator);
    let me = optio_settler::signer_address(OPERATOR).expect("address");
    transact(usdc.mint(me, U256::from(USDC as u64)))
        .await
        .expect("mint");
    transact(usdc.approve(d.rollup, U256::MAX))
        .await
        .expect("approve");
    transact(rollup.deposit(u32::MAX, U256::from(USDC as u64)))
        .await
        .expect("deposit");
    let _: serde_json::Value = operator
        .raw_request("evm_increaseTime".into(), (6 * 3_600 + 1u64,))
        .await
        .expect("time");
    transact(rollup.freeze())
        .await
        .expect("anyone freezes once a deposit is overdue");
}

/// `exit_from_l1` for `account` by its owner's `key`: what it paid, and the gas of each
/// transaction it sent (each must succeed within EIP-7825's cap).
async fn exit_from_l1_gas(
    anvil: &optio_contracts::Anvil,
    d: &optio_settler::Deployment,
    key: &str,
    account: u32,
) -> (i64, Vec<u64>) {
    let user = connect(&anvil.url, key).expect("provider");
    let who = optio_settler::signer_address(key).expect("address");
    let before = user.get_block_number().await.expect("block");
    let paid = optio_settler::exit_from_l1(&user, d.rollup, account, who)
        .await
        .expect("exits");
    let mut gas = Vec::new();
    for block in before + 1..=user.get_block_number().await.expect("block") {
        for receipt in user
            .get_block_receipts(block.into())
            .await
            .expect("receipts")
            .expect("the block")
        {
            assert!(receipt.status(), "every transaction of the exit succeeded");
            assert!(receipt.gas_used <= 1 << 24, "within EIP-7825's cap");
            gas.push(receipt.gas_used);
        }
    }
    (i64::try_from(paid).expect("an amount"), gas)
}
