//! The shared settlement vectors (test-vectors/settlement.json): leaf hashes, a small state with
//! its root and an exit proof, and encoded blobs with their headers. The circuits and the L1
//! contracts check the same file. Regenerate after a deliberate format change with
//! `OPTIO_WRITE_VECTORS=1 cargo test -p optio-state --test settlement_vectors` and say why in
//! the commit.

use optio_state::blob::BlobMeta;
use optio_state::leaf::{self, AccountLeaf, InstrumentLeaf};
use optio_state::poseidon::{Fr, hex, to_hex};
use optio_state::{Op, SettlementState, decode, encode};
use optio_types::{
    AccountId, Address, Amount, InstrumentId, InstrumentSpec, MONEY_SCALE, MarginMode, Price,
    QTY_SCALE, Qty, Side,
};
use serde_json::{Value, json};

const PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../test-vectors/settlement.json"
);

fn batches() -> Vec<(BlobMeta, Vec<Op>)> {
    let perp = InstrumentSpec::with_defaults(
        "BTC-PERPETUAL".parse().expect("name"),
        Price(100_000 * MONEY_SCALE),
    );
    // Capped at 200,000: a worst-case payoff of 100,000 a contract, which bounds its marks.
    let call = InstrumentSpec::with_defaults(
        "BTC-26MAR27-100000-C".parse().expect("name"),
        Price(200_000 * MONEY_SCALE),
    );
    vec![
        (
            BlobMeta {
                number: 1,
                first_seq: 1,
                last_seq: 7,
                time_ms: 1_800_000_000_000,
                accounts: 0,
                instruments: 0,
            },
            vec![
                Op::ListInstrument { spec: perp },
                Op::ListInstrument { spec: call },
                Op::ActivateInstrument {
                    instrument: InstrumentId(0),
                },
                Op::ActivateInstrument {
                    instrument: InstrumentId(1),
                },
                Op::OpenAccount {
                    owner: Address([0x11; 20]),
                },
                Op::OpenAccount {
                    owner: Address([0x22; 20]),
                },
                Op::Deposit {
                    account: AccountId(0),
                    amount: Amount(100_000 * MONEY_SCALE),
                },
                Op::Deposit {
                    account: AccountId(1),
                    amount: Amount(250_000 * MONEY_SCALE),
                },
            ],
        ),
        (
            BlobMeta {
                number: 2,
                first_seq: 8,
                last_seq: 20,
                time_ms: 1_800_000_002_000,
                accounts: 2,
                instruments: 2,
            },
            vec![
                Op::Fill {
                    instrument: InstrumentId(1),
                    maker: AccountId(1),
                    taker: AccountId(0),
                    taker_side: Side::Buy,
                    price: Price(4_200 * MONEY_SCALE),
                    qty: Qty(QTY_SCALE / 2),
                },
                Op::Fill {
                    instrument: InstrumentId(1),
                    maker: AccountId(1),
                    taker: AccountId(0),
                    taker_side: Side::Buy,
                    price: Price(4_210 * MONEY_SCALE),
                    qty: Qty(QTY_SCALE / 10),
                },
                Op::Fill {
                    instrument: InstrumentId(0),
                    maker: AccountId(0),
                    taker: AccountId(1),
                    taker_side: Side::Sell,
                    price: Price(91_000 * MONEY_SCALE),
                    qty: Qty(QTY_SCALE / 100),
                },
                Op::SessionKey {
                    account: AccountId(0),
                    key: Address([0x33; 20]),
                    expiry_ms: 1_800_086_400_000,
                    at_ms: 1_800_000_001_000,
                },
                Op::SetMarginMode {
                    account: AccountId(0),
                    mode: MarginMode::Standard,
                },
                Op::Withdraw {
                    account: AccountId(1),
                    amount: Amount(1_000 * MONEY_SCALE),
                    owner: Address([0x22; 20]),
                },
                Op::Mark {
                    instrument: InstrumentId(1),
                    mark: Price(4_205 * MONEY_SCALE),
                    index: Price(60_000_000_000),
                    risk: vec![
                        Amount(-4_205 * MONEY_SCALE),
                        Amount(0),
                        Amount(9_000 * MONEY_SCALE),
                        Amount(-1),
                    ],
                    published_ms: 1_800_000_000_500,
                },
            ],
        ),
    ]
}

fn vectors() -> Value {
    let account = AccountLeaf {
        owner: Address([0x11; 20]),
        mode: MarginMode::Portfolio,
        keys_hash: Fr::from(0u64),
        nonce: 3,
        positions: 2,
        // 1.5 contracts short at a payoff of 100,000 USDC: past 64 bits.
        liability: 15_000_000_000_000_000_000,
        collateral: Amount(-12_345),
        positions_root: Fr::from(7u64),
        // Liquidating since an oracle time.
        since: 1_800_000_000_250,
    };
    let instrument = InstrumentLeaf {
        spec_hash: Fr::from(5u64),
        status: leaf::status::ACTIVE,
        mark: Price(4_205 * MONEY_SCALE),
        risk_hash: Fr::from(9u64),
        settlement_price: Price(0),
    };
    let keys = [
        (Address([0x33; 20]), 1_800_086_400_000u64),
        (Address([0x44; 20]), 1_900_000_000_000u64),
    ];
    let risk = [
        Amount(-4_205 * MONEY_SCALE),
        Amount(0),
        Amount(9_000 * MONEY_SCALE),
        Amount(-1),
    ];
    let perp = InstrumentSpec::with_defaults(
        "BTC-PERPETUAL".parse().expect("name"),
        Price(100_000 * MONEY_SCALE),
    );
    let mut state = SettlementState::new();
    let mut blobs = Vec::new();
    for (meta, ops) in batches() {
        let previous = state.root();
        state.apply_batch(&ops).expect("applies");
        let root = state.commit();
        let bytes = encode(&meta, &ops).expect("encodes");
        // The blob holds the ops in the circuit's order: the same state, and the same bytes
        // again.
        let (decoded_meta, decoded) = decode(&bytes).expect("decodes");
        assert_eq!(decoded_meta, meta);
        assert_eq!(
            encode(&meta, &decoded).expect("encodes"),
            bytes,
            "round trip"
        );
        let mut again = SettlementState::new();
        for (m, o) in batches().iter().take_while(|(m, _)| m.number < meta.number) {
            again.apply_batch(o).expect("applies");
            again.commit();
            let _ = m;
        }
        again.apply_batch(&decoded).expect("the decoded ops apply");
        assert_eq!(
            again.commit(),
            state.root(),
            "the decoded ops give the same root"
        );
        let paid = optio_state::withdrawals(&ops);
        // The commitment posted with the blob, and the evaluation of its words the L1 contract
        // computes (the forge tests compare theirs).
        let encoded = optio_state::blob::encode_ops(&meta, &ops).expect("encodes");
        let commitment = optio_state::blob::commitment(&encoded);
        let words = optio_state::blob::words(&bytes).expect("words");
        let (z, y) = optio_state::blob::binding(commitment, &words);
        blobs.push(json!({
            "number": meta.number,
            "ops": ops.len(),
            "blob": hex(&bytes),
            "commitment": to_hex(&commitment),
            "z": to_hex(&z),
            "y": to_hex(&y),
            "previous_root": to_hex(&previous),
            "new_root": to_hex(&root),
            "withdrawals": paid.iter().map(|(a, o, x)| json!([a, hex(&o.0), x.0])).collect::<Vec<_>>(),
            "withdrawals_hash": hex(&optio_state::withdrawals_hash(&paid)),
        }));
    }
    let proof = state.exit_proof(AccountId(0)).expect("exists");
    assert!(proof.verify());
    json!({
        "description": "Optio settlement vectors: leaf hashes (docs/settlement.md), a two-batch state with its blobs, roots and an exit proof. Field elements are 0x big-endian hex; amounts are integers (micro-USDC, quantities 1e-8).",
        "leaves": {
            "account": {"owner": hex(&account.owner.0), "mode": account.mode.code(), "keys_hash": to_hex(&account.keys_hash), "nonce": account.nonce, "positions": account.positions, "liability": format!("{:#x}", account.liability), "collateral": account.collateral.0, "positions_root": to_hex(&account.positions_root), "since": account.since, "hash": to_hex(&account.hash())},
            "instrument": {"spec_hash": to_hex(&instrument.spec_hash), "status": instrument.status, "mark": instrument.mark.0, "risk_hash": to_hex(&instrument.risk_hash), "settlement_price": instrument.settlement_price.0, "hash": to_hex(&instrument.hash())},
            "keys_hash": {"keys": keys.iter().map(|(k, e)| json!([hex(&k.0), e])).collect::<Vec<_>>(), "hash": to_hex(&leaf::keys_hash(keys.iter().map(|(k, e)| (k, e))))},
            "risk_hash": {"index": 60_000_000_000i64, "risk": risk.iter().map(|a| a.0).collect::<Vec<_>>(), "hash": to_hex(&leaf::risk_hash(Price(60_000_000_000), &risk))},
            "spec_hash": {"spec": "BTC-PERPETUAL with defaults, cap 100000", "hash": to_hex(&leaf::spec_hash(&perp))},
            "position": {"qty": -150_000_000i64, "leaf": to_hex(&leaf::position_leaf(Qty(-150_000_000)))},
            "funds": {"insurance": 5, "fee_pool": 7, "accounts": 3, "instruments": 2, "oracle_ms": 1_800_000_000_500u64, "hash": to_hex(&leaf::funds_hash(Amount(5), Amount(7), leaf::Counts { accounts: 3, instruments: 2, oracle_ms: 1_800_000_000_500 }))},
        },
        "batches": blobs,
        "genesis_root": to_hex(&SettlementState::new().root()),
        "exit_proof": {
            "account": 0,
            "root": to_hex(&proof.root),
            "accounts_root": to_hex(&proof.accounts_root),
            "instruments_root": to_hex(&proof.instruments_root),
            "insurance": proof.insurance.0,
            "fee_pool": proof.fee_pool.0,
            "accounts": proof.accounts,
            "instruments": proof.instruments,
            "oracle_ms": proof.oracle_ms,
            "owner": hex(&proof.leaf.owner.0),
            "mode": proof.leaf.mode.code(),
            "keys_hash": to_hex(&proof.leaf.keys_hash),
            "nonce": proof.leaf.nonce,
            "liability": format!("{:#x}", proof.leaf.liability),
            "collateral": proof.leaf.collateral.0,
            "positions_root": to_hex(&proof.leaf.positions_root),
            "since": proof.leaf.since,
            "leaf_hash": to_hex(&proof.leaf.hash()),
            "account_proof": proof.account_proof.siblings.iter().map(to_hex).collect::<Vec<_>>(),
            "positions": proof.positions.iter().map(|(i, q, p, l, ip)| json!({
                "instrument": i.0,
                "qty": q.0,
                "proof": p.siblings.iter().map(to_hex).collect::<Vec<_>>(),
                "spec_hash": to_hex(&l.spec_hash),
                "status": l.status,
                "mark": l.mark.0,
                "risk_hash": to_hex(&l.risk_hash),
                "settlement_price": l.settlement_price.0,
                "instrument_leaf_hash": to_hex(&l.hash()),
                "instrument_proof": ip.siblings.iter().map(to_hex).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "instrument_siblings": proof.instrument_siblings(&(0..proof.positions.len()).collect::<Vec<_>>()).iter().map(to_hex).collect::<Vec<_>>(),
        },
    })
}

#[test]
fn the_shared_settlement_vectors_hold() {
    let computed = vectors();
    if std::env::var_os("OPTIO_WRITE_VECTORS").is_some() {
        std::fs::write(
            PATH,
            serde_json::to_string_pretty(&computed).expect("json") + "\n",
        )
        .expect("writes the vectors");
    }
    let stored: Value = serde_json::from_str(
        &std::fs::read_to_string(PATH).expect("test-vectors/settlement.json exists"),
    )
    .expect("JSON");
    assert_eq!(
        stored, computed,
        "the settlement format changed: regenerate the vectors only if that was deliberate"
    );
}

#[test]
fn blob_bytes_per_fill_op() {
    // A fill packs into one 32-byte word: kind, both accounts, instrument, side, price and
    // quantity.
    let (meta, ops) = &batches()[1];
    let all = encode(meta, ops).expect("encodes").len();
    let without_last_fill = encode(meta, &[&ops[..1], &ops[2..]].concat())
        .expect("encodes")
        .len();
    assert_eq!(all - without_last_fill, 32, "a fill costs one word");
}
