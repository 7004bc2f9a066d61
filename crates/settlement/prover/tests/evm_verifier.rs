//! The Solidity verifier on a real EVM (the embedded chain running revm, the contract built by
//! forge): it accepts real proofs of real batches, one at a time and many in one pairing check,
//! and refuses tampered proofs, tampered public inputs, inputs outside the field, and a batch of
//! proofs with one bad proof among them. Gas is printed for the record (the benchmark compares).

use std::time::Duration;

use alloy::primitives::U256;
use ark_std::rand::SeedableRng;
use ark_std::rand::rngs::StdRng;
use optio_chain::Chain;
use optio_prover::solidity::{self, Word};
use optio_prover::{Keys, Shape, prove, verify, witness};
use optio_settler::{
    Groth16Verifier, OptioRollup, RollupConfig, connect, deploy, deploy_verifier, transact,
};
use optio_state::blob::{BlobMeta, encode};
use optio_state::{Op, SettlementState};
use optio_types::{
    AccountId, Address, Amount, InstrumentId, InstrumentSpec, MONEY_SCALE, Price, QTY_SCALE, Qty,
    Side,
};

const KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

const SHAPE: Shape = Shape {
    slots: 4,
    accounts: 2,
    positions: 2,
    instruments: 1,
    listings: 2,
    expiries: 1,
    settlements: 1,
    holders: 2,
    marks: 1,
    risk_chunks: 1,
    keys: 1,
    mark_window_bits: 0,
    margins: 2,
    prices: 1,
    solvency: 2,
    solvency_bits: 2,
    readonly: 0,
};

fn u(w: &Word) -> U256 {
    U256::from_be_bytes(*w)
}

fn words<const N: usize>(ws: &[Word]) -> [U256; N] {
    std::array::from_fn(|i| u(&ws[i]))
}

/// Five batches: accounts opened and funded, a listing with two session keys (more than the
/// shape holds: no proof), a fill, a deposit, a mark.
fn batches() -> Vec<Vec<Op>> {
    let spec = InstrumentSpec::with_defaults(
        "ETH-PERPETUAL".parse().expect("name"),
        Price(20_000 * MONEY_SCALE),
    );
    let mut accounts = Vec::new();
    for i in 0..2u32 {
        accounts.push(Op::OpenAccount {
            owner: Address([i as u8 + 1; 20]),
        });
        accounts.push(Op::Deposit {
            account: AccountId(i),
            amount: Amount(10_000 * MONEY_SCALE),
        });
    }
    vec![
        accounts,
        vec![
            Op::ListInstrument { spec },
            Op::ActivateInstrument {
                instrument: InstrumentId(0),
            },
            // Two session keys: more than the shape's one slot, so no proof.
            Op::SessionKey {
                account: AccountId(0),
                key: Address([7; 20]),
                expiry_ms: 1_000_000,
                at_ms: 1,
            },
            Op::SessionKey {
                account: AccountId(0),
                key: Address([8; 20]),
                expiry_ms: 1_000_000,
                at_ms: 1,
            },
        ],
        vec![Op::Fill {
            instrument: InstrumentId(0),
            maker: AccountId(0),
            taker: AccountId(1),
            taker_side: Side::Buy,
            price: Price(3_000 * MONEY_SCALE),
            qty: Qty(QTY_SCALE / 2),
        }],
        vec![Op::Deposit {
            account: AccountId(1),
            amount: Amount(77),
        }],
        vec![Op::Mark {
            instrument: InstrumentId(0),
            mark: Price(3_100 * MONEY_SCALE),
            index: Price(60_000_000_000),
            risk: vec![Amount(-300), Amount(250)],
            published_ms: 0,
        }],
    ]
}

/// The batches with a proof (the one with two session keys has none).
const PROVEN: [u64; 4] = [1, 3, 4, 5];

/// The proofs of the covered batches, in order (the uncovered one is applied unproven).
fn proofs(keys: &Keys, rng: &mut StdRng) -> Vec<([U256; 8], [U256; 7])> {
    let mut state = SettlementState::new();
    let mut out = Vec::new();
    for ops in batches() {
        if let Ok(w) = witness(&state, &ops, SHAPE) {
            let public = w.public;
            let proof = prove(keys, w, rng).expect("proves");
            assert!(verify(&keys.vk, &public, &proof), "verifies natively");
            out.push((
                words(&solidity::proof(&proof)),
                words(&solidity::inputs(&public)),
            ));
        }
        state.apply_batch(&ops).expect("applies");
        state.commit();
    }
    assert_eq!(out.len(), PROVEN.len());
    out
}

/// Keys (seeded), the proofs of the covered batches, an embedded chain with `KEY` funded, a
/// provider signing with it, and the verifier deployed with the keys.
async fn setup(
    seed: u64,
) -> (
    Keys,
    Vec<([U256; 8], [U256; 7])>,
    Chain,
    optio_settler::DynProvider,
    alloy::primitives::Address,
) {
    optio_contracts::forge_build().expect("forge build");
    let mut rng = StdRng::seed_from_u64(seed);
    let keys = Keys::generate(SHAPE, &mut rng).expect("keys");
    let proofs = proofs(&keys, &mut rng);
    let operator = optio_settler::signer_address(KEY).expect("address");
    let chain = Chain::start(
        31_337,
        &[(operator, U256::from(10u64).pow(U256::from(21u64)))],
        Duration::from_secs(3_600),
    )
    .await
    .expect("chain");
    let provider = connect(&chain.url, KEY).expect("provider");
    let verifier = deploy_verifier(&provider, words(&solidity::verifying_key(&keys.vk)))
        .await
        .expect("verifier");
    (keys, proofs, chain, provider, verifier)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_solidity_verifier_accepts_real_proofs_and_refuses_tampered_ones() {
    let (keys, proofs, _chain, provider, address) = setup(3).await;
    let vk: [U256; 30] = words(&solidity::verifying_key(&keys.vk));
    let verifier = Groth16Verifier::new(address, &provider);
    assert_eq!(verifier.verifyingKey().call().await.expect("reads"), vk);

    // The native check `optio verify --vk` runs on the proofs L1 accepted agrees with the
    // contract on every case below.
    let native = |p: &[U256; 8], i: &[U256; 7]| {
        let bytes = |ws: &[U256]| -> Vec<solidity::Word> {
            ws.iter().map(|w| w.to_be_bytes::<32>()).collect()
        };
        solidity::verify_words(&keys.vk, &bytes(p), &bytes(i))
    };
    for (proof, input) in &proofs {
        assert!(verifier.verify(*proof, *input).call().await.expect("calls"));
        assert!(native(proof, input));
        // A tampered proof: B from another proof (valid points, wrong relation).
        let mut bad = *proof;
        bad[2..6].copy_from_slice(
            &proofs[(proofs.iter().position(|p| p.0 == *proof).expect("in") + 1) % proofs.len()].0
                [2..6],
        );
        assert!(!verifier.verify(bad, *input).call().await.expect("calls"));
        assert!(!native(&bad, input));
        // A point off the curve.
        let mut bad = *proof;
        bad[0] += U256::from(1u64);
        assert!(!verifier.verify(bad, *input).call().await.expect("calls"));
        assert!(!native(&bad, input));
        // Each public input changed by one.
        for j in 0..7 {
            let mut wrong = *input;
            wrong[j] += U256::from(1u64);
            assert!(!verifier.verify(*proof, wrong).call().await.expect("calls"));
            assert!(!native(proof, &wrong));
        }
        // An input outside the scalar field (the same value plus the modulus).
        let mut wrapped = *input;
        wrapped[0] += U256::from_str_radix(
            "21888242871839275222246405745257275088548364400416034343698204186575808495617",
            10,
        )
        .expect("modulus");
        assert!(
            !verifier
                .verify(*proof, wrapped)
                .call()
                .await
                .expect("calls")
        );
        assert!(!native(proof, &wrapped));
    }

    let all_proofs: Vec<[U256; 8]> = proofs.iter().map(|p| p.0).collect();
    let all_inputs: Vec<[U256; 7]> = proofs.iter().map(|p| p.1).collect();
    assert!(
        verifier
            .verifyMany(all_proofs.clone(), all_inputs.clone())
            .call()
            .await
            .expect("calls")
    );
    // One wrong input among them.
    let mut wrong = all_inputs.clone();
    wrong[2][1] += U256::from(1u64);
    assert!(
        !verifier
            .verifyMany(all_proofs.clone(), wrong)
            .call()
            .await
            .expect("calls")
    );
    // Two proofs swapped: each valid, neither for the other's inputs.
    let mut swapped = all_proofs.clone();
    swapped.swap(0, 1);
    assert!(
        !verifier
            .verifyMany(swapped, all_inputs.clone())
            .call()
            .await
            .expect("calls")
    );
    assert!(
        !verifier
            .verifyMany(Vec::new(), Vec::new())
            .call()
            .await
            .expect("calls")
    );

    // Sent as transactions: the receipts' gas used.
    let one = transact(verifier.verify(proofs[0].0, proofs[0].1))
        .await
        .expect("sent")
        .gas_used;
    let many = transact(verifier.verifyMany(all_proofs, all_inputs))
        .await
        .expect("sent")
        .gas_used;
    let k = proofs.len() as u64;
    println!(
        "gas: verify {one}, verifyMany of {k} {many} ({} per proof)",
        many / k
    );
}

/// The rollup with a real verifier: batches committed as the settler commits them; nothing
/// finalizes before its proof; real proofs mark batches proven one at a time and several in one
/// transaction; a proof with another commitment, a proof of another batch, a second proof of a
/// proven batch are refused, and a batch nobody can prove (its op is not covered) stays
/// unproven and holds finality.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollup_marks_batches_proven_by_real_proofs() {
    let (_keys, proofs, _chain, provider, verifier) = setup(4).await;
    let operator = optio_settler::signer_address(KEY).expect("address");
    let genesis = U256::from_be_bytes(optio_state::poseidon::to_bytes(
        &SettlementState::new().root(),
    ));
    let d = deploy(
        &provider,
        operator,
        genesis,
        &RollupConfig {
            verifier,
            ..RollupConfig::new(0, 6 * 3_600)
        },
    )
    .await
    .expect("rollup");
    let rollup = OptioRollup::new(d.rollup, &provider);

    // Commit the five batches as the settler would.
    let mut state = SettlementState::new();
    for (i, ops) in batches().iter().enumerate() {
        let number = i as u64 + 1;
        let previous = state.root();
        let meta = BlobMeta {
            number,
            first_seq: number,
            last_seq: number,
            time_ms: wall_ms() + number,
            accounts: state.accounts().len() as u32,
            instruments: state.instruments().len() as u32,
        };
        let commitment = optio_state::blob::commitment(
            &optio_state::blob::encode_ops(&meta, ops).expect("encodes"),
        );
        state.apply_batch(ops).expect("applies");
        state.commit();
        let root =
            |f: &optio_state::poseidon::Fr| U256::from_be_bytes(optio_state::poseidon::to_bytes(f));
        optio_settler::back_operator_deposits(&provider, d.rollup, ops)
            .await
            .expect("the operator pays in its deposits");
        transact(rollup.commitBatch(
            U256::from(number),
            root(&previous),
            root(&state.root()),
            number,
            number,
            state.priority_served(),
            optio_state::withdrawals_hash(&optio_state::withdrawals(ops)).into(),
            root(&commitment),
            encode(&meta, ops).expect("encodes").into(),
            Default::default(),
        ))
        .await
        .expect("commits");
    }
    for (n, (_, input)) in PROVEN.iter().zip(&proofs) {
        let on_l1 = rollup
            .batchInputs(U256::from(*n), input[2])
            .call()
            .await
            .expect("reads");
        assert_eq!(
            on_l1, *input,
            "the rollup's inputs for batch {n} are the prover's"
        );
    }

    // With a verifier, nothing finalizes unproven.
    assert!(
        transact(rollup.finalize()).await.is_err(),
        "batch 1 is not proven"
    );
    let (proof1, input1) = proofs[0];
    transact(rollup.verifyBatch(U256::from(1), input1[2], proof1))
        .await
        .expect("proves batch 1");
    transact(rollup.finalize())
        .await
        .expect("finalizes batch 1");
    assert_eq!(
        rollup.lastFinalized().call().await.expect("reads"),
        U256::from(1)
    );
    assert!(
        transact(rollup.finalize()).await.is_err(),
        "batch 2 has no proof"
    );

    let (proof3, input3) = proofs[1];
    // Another commitment than the proof's, and batch 4's proof for batch 3: refused.
    assert!(
        transact(rollup.verifyBatch(U256::from(3), input3[2] + U256::from(1u64), proof3))
            .await
            .is_err()
    );
    assert!(
        transact(rollup.verifyBatch(U256::from(3), proofs[2].1[2], proofs[2].0))
            .await
            .is_err()
    );
    assert!(!rollup.proven(U256::from(3)).call().await.expect("reads"));
    let one = transact(rollup.verifyBatch(U256::from(3), input3[2], proof3))
        .await
        .expect("proves batch 3");
    assert!(rollup.proven(U256::from(3)).call().await.expect("reads"));
    assert!(
        transact(rollup.verifyBatch(U256::from(3), input3[2], proof3))
            .await
            .is_err(),
        "once"
    );

    // Batches 4 and 5 in one transaction; with one wrong commitment neither is proven.
    let numbers = vec![U256::from(4), U256::from(5)];
    let proofs45: Vec<[U256; 8]> = proofs[2..].iter().map(|p| p.0).collect();
    let commitments: Vec<U256> = proofs[2..].iter().map(|p| p.1[2]).collect();
    let mut wrong = commitments.clone();
    wrong[1] += U256::from(1u64);
    assert!(
        transact(rollup.verifyBatches(numbers.clone(), wrong, proofs45.clone()))
            .await
            .is_err()
    );
    assert!(!rollup.proven(U256::from(4)).call().await.expect("reads"));
    let both = transact(rollup.verifyBatches(numbers, commitments, proofs45))
        .await
        .expect("proves 4 and 5");
    for n in [4u64, 5] {
        assert!(rollup.proven(U256::from(n)).call().await.expect("reads"));
    }
    assert!(
        !rollup.proven(U256::from(2)).call().await.expect("reads"),
        "too large for the shape"
    );
    assert_eq!(
        rollup.lastFinalized().call().await.expect("reads"),
        U256::from(1),
        "batch 2 still holds finality"
    );
    println!(
        "gas: verifyBatch {}, verifyBatches of 2 {}",
        one.gas_used, both.gas_used
    );
}

/// Now (ms): the batches' engine time, which a rollup takes only within its time bounds of the
/// block's time (the embedded chain's is the wall clock).
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Writes the batches as the node does (`NNNNNNNN.json` header and `.blob`).
fn write_batches(dir: &std::path::Path) {
    let mut state = SettlementState::new();
    for (i, ops) in batches().iter().enumerate() {
        let number = i as u64 + 1;
        let time_ms = wall_ms() + number;
        let meta = BlobMeta {
            number,
            first_seq: 10 * number - 9,
            last_seq: 10 * number,
            time_ms,
            accounts: state.accounts().len() as u32,
            instruments: state.instruments().len() as u32,
        };
        let blob = encode(&meta, ops).expect("encodes");
        let previous_root = state.root();
        state.apply_batch(ops).expect("applies");
        state.commit();
        let header = optio_state::BatchHeader {
            number,
            previous_root,
            new_root: state.root(),
            ops_commitment: optio_state::blob::commitment(
                &optio_state::blob::encode_ops(&meta, ops).expect("encodes"),
            ),
            data_hash: alloy::primitives::keccak256(&blob).0,
            withdrawals_hash: optio_state::withdrawals_hash(&[]),
            first_seq: meta.first_seq,
            last_seq: meta.last_seq,
            priority_served: state.priority_served(),
            time_ms,
        };
        let stem = dir.join(format!("{number:08}"));
        std::fs::write(stem.with_extension("json"), header.to_json()).expect("header");
        std::fs::write(stem.with_extension("blob"), blob).expect("blob");
    }
}

/// A rollup with the verifier on the embedded chain, the batches written as the node writes
/// them, and a settler that has committed all five.
struct Pipeline {
    keys: Keys,
    _chain: Chain,
    provider: optio_settler::DynProvider,
    verifier: alloy::primitives::Address,
    rollup: alloy::primitives::Address,
    dir: tempfile::TempDir,
    settler: optio_settler::Settler,
}

impl Pipeline {
    async fn start(seed: u64) -> Pipeline {
        let (keys, _, chain, provider, verifier) = setup(seed).await;
        let operator = optio_settler::signer_address(KEY).expect("address");
        let genesis = U256::from_be_bytes(optio_state::poseidon::to_bytes(
            &SettlementState::new().root(),
        ));
        let d = deploy(
            &provider,
            operator,
            genesis,
            &RollupConfig {
                verifier,
                ..RollupConfig::new(0, 3_600)
            },
        )
        .await
        .expect("rollup");
        let dir = tempfile::tempdir().expect("tempdir");
        write_batches(dir.path());
        let settler = optio_settler::Settler::new(provider.clone(), d.rollup, dir.path());
        assert_eq!(settler.post_pending().await.expect("posts"), 5);
        Pipeline {
            keys,
            _chain: chain,
            provider,
            verifier,
            rollup: d.rollup,
            dir,
            settler,
        }
    }
}

/// The operator's pipeline with real proofs: the settler commits the batches, a prover worker
/// writes proofs beside them, the settler submits them (aggregated; one at a time when the
/// aggregate is refused because one proof file is wrong) and finalizes only proven batches, in
/// order; the progress it reports (what the status API shows as `proven`) stops at the first
/// unproven batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_settler_submits_the_workers_proofs_and_finality_waits_for_them() {
    use optio_prover::worker::{proof_path, prove_pending};

    let p = Pipeline::start(5).await;
    let (keys, provider, dir, settler) = (&p.keys, &p.provider, &p.dir, &p.settler);
    let rollup = OptioRollup::new(p.rollup, provider);
    assert_eq!(settler.verifier().await.expect("reads"), Some(p.verifier));
    assert_eq!(
        settler.prove_pending().await.expect("runs"),
        0,
        "no proofs yet"
    );
    assert_eq!(
        settler.finalize_due().await.expect("runs"),
        0,
        "nothing proven"
    );
    assert_eq!(settler.progress().await.expect("reads").proven, 0);

    let mut rng = StdRng::seed_from_u64(9);
    let stale = Duration::from_secs(600);
    let outcomes = prove_pending(dir.path(), keys, &mut rng, stale, |_| {}).expect("worker");
    assert_eq!(outcomes.len(), 5, "four proofs and one batch too large");
    // Batch 4's proof file names batch 5's commitment: the aggregate fails, each alone lands
    // but that one.
    let read = |n| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(proof_path(dir.path(), n)).expect("read"))
            .expect("json")
    };
    let good4 = std::fs::read_to_string(proof_path(dir.path(), 4)).expect("read");
    let mut wrong4 = read(4);
    wrong4["public"]["commitment"] = read(5)["public"]["commitment"].clone();
    std::fs::write(proof_path(dir.path(), 4), wrong4.to_string()).expect("write");
    assert_eq!(settler.prove_pending().await.expect("runs"), 3);
    let proven = |n: u64| {
        let rollup = &rollup;
        async move { rollup.proven(U256::from(n)).call().await.expect("reads") }
    };
    for (n, want) in [(1, true), (2, false), (3, true), (4, false), (5, true)] {
        assert_eq!(proven(n).await, want, "batch {n}");
    }
    let progress = settler.progress().await.expect("reads");
    assert_eq!(
        (progress.proven, progress.proven_seq),
        (1, 10),
        "stops at batch 2"
    );
    assert_eq!(
        settler.finalize_due().await.expect("runs"),
        1,
        "batch 1 only"
    );
    assert_eq!(
        settler.finalize_due().await.expect("runs"),
        0,
        "batch 2 waits"
    );

    // A damaged proof file is skipped, not fatal; the right one lands on the next round.
    std::fs::write(proof_path(dir.path(), 4), "{not json").expect("write");
    assert_eq!(settler.prove_pending().await.expect("runs"), 0);
    std::fs::write(proof_path(dir.path(), 4), good4).expect("write");
    assert_eq!(settler.prove_pending().await.expect("runs"), 1);
    assert!(proven(4).await);
    assert_eq!(
        rollup.lastFinalized().call().await.expect("reads"),
        U256::from(1),
        "batch 2, unprovable, still holds finality"
    );
}

/// The proof is bound to the posted data: a proof of other ops with the same roots (two deposits
/// of 70 and 7 where the posted data has one of 77) is refused on L1, whether it names its own
/// commitment (not the one posted with the batch) or the posted one (its words evaluate to
/// another value at the contract's point); the honest proof of that batch then verifies, and
/// the watchtower finds every batch agreeing with its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_of_other_ops_than_posted_is_refused_on_l1() {
    use optio_prover::worker::prove_pending;
    use optio_settler::{Verdict, verify_l1};

    let p = Pipeline::start(6).await;
    let (keys, provider, dir, settler) = (&p.keys, &p.provider, &p.dir, &p.settler);
    let rollup = OptioRollup::new(p.rollup, provider);

    // Batch 4 posted one deposit of 77 to account 1; prove two that sum to it instead.
    let mut state = SettlementState::new();
    for ops in &batches()[..3] {
        state.apply_batch(ops).expect("applies");
        state.commit();
    }
    let other = [
        Op::Deposit {
            account: AccountId(1),
            amount: Amount(70),
        },
        Op::Deposit {
            account: AccountId(1),
            amount: Amount(7),
        },
    ];
    let mut rng = StdRng::seed_from_u64(11);
    let w = witness(&state, &other, SHAPE).expect("fits");
    let public = w.public;
    let proof = words(&solidity::proof(&prove(keys, w, &mut rng).expect("proves")));
    let own = U256::from_be_bytes(optio_state::poseidon::to_bytes(&public.commitment));
    let posted = U256::from_be_bytes(optio_state::poseidon::to_bytes(
        &optio_prover::data_commitment(&state, &batches()[3]).expect("commits"),
    ));
    assert_ne!(own, posted, "other ops, another commitment");
    assert_eq!(
        rollup
            .opsCommitment(U256::from(4))
            .call()
            .await
            .expect("reads"),
        posted,
        "the contract holds the commitment posted with the data"
    );
    for commitment in [own, posted] {
        let refused = transact(rollup.verifyBatch(U256::from(4), commitment, proof)).await;
        assert!(
            refused.is_err(),
            "a proof of other ops than posted must be refused"
        );
    }
    assert!(!rollup.proven(U256::from(4)).call().await.expect("reads"));

    // All five honestly, by the worker and the settler.
    prove_pending(dir.path(), keys, &mut rng, Duration::from_secs(600), |_| {}).expect("worker");
    assert_eq!(
        settler.prove_pending().await.expect("runs"),
        4,
        "1, 3, 4 and 5"
    );
    let verdicts = verify_l1(provider, p.rollup).await.expect("verifies");
    assert_eq!(
        verdicts,
        (1..=5).map(Verdict::Agrees).collect::<Vec<_>>(),
        "every batch agrees with its posted data"
    );
}

/// A forced close (docs/settlement.md "Forced close") proven for real and verified on the EVM:
/// after the five batches, the taker's long (half a contract, bought at 3,000) moves to account
/// 0, the backstop, at the committed mark of 3,100 on its owner's request. The Solidity verifier
/// accepts the proof, and refuses it for a batch that served the request with less (its public
/// commitment, the posted ops' records, differs), and with the old and new roots swapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_proof_of_a_forced_close_verifies_on_the_evm() {
    optio_contracts::forge_build().expect("forge build");
    let mut rng = StdRng::seed_from_u64(11);
    let keys = Keys::generate(SHAPE, &mut rng).expect("keys");
    let mut state = SettlementState::new();
    for ops in batches() {
        state.apply_batch(&ops).expect("applies");
        state.commit();
    }
    let close = |qty: i64| Op::L1Close {
        priority: 0,
        backstop: AccountId(0),
        account: AccountId(1),
        instrument: InstrumentId(0),
        qty: Qty(qty),
        price: Price(3_100 * MONEY_SCALE),
        requester: Address([2; 20]),
    };
    let w = witness(&state, &[close(-QTY_SCALE / 2)], SHAPE).expect("covered");
    let public = w.public;
    let proof = prove(&keys, w, &mut rng).expect("proves");
    assert!(verify(&keys.vk, &public, &proof), "verifies natively");
    let mut next = state.clone();
    next.apply_batch(&[close(-QTY_SCALE / 2)])
        .expect("applies natively");
    assert_eq!(public.new_root, next.commit(), "the native root");
    assert!(next.accounts()[1].positions.is_empty(), "closed");

    let operator = optio_settler::signer_address(KEY).expect("address");
    let _chain = Chain::start(
        31_337,
        &[(operator, U256::from(10u64).pow(U256::from(21u64)))],
        Duration::from_secs(3_600),
    )
    .await
    .expect("chain");
    let provider = connect(&_chain.url, KEY).expect("provider");
    let address = deploy_verifier(&provider, words(&solidity::verifying_key(&keys.vk)))
        .await
        .expect("verifier");
    let verifier = Groth16Verifier::new(address, &provider);
    let (p, input): ([U256; 8], [U256; 7]) = (
        words(&solidity::proof(&proof)),
        words(&solidity::inputs(&public)),
    );
    assert!(verifier.verify(p, input).call().await.expect("calls"));
    // The same proof for a batch serving the owner with less: other records, another
    // commitment.
    let less = optio_prover::data_commitment(&state, &[close(-QTY_SCALE / 4)]).expect("commits");
    let mut other = public;
    other.commitment = less;
    assert_ne!(other.commitment, public.commitment);
    let other: [U256; 7] = words(&solidity::inputs(&other));
    assert!(!verifier.verify(p, other).call().await.expect("calls"));
    let mut swapped = public;
    (swapped.old_root, swapped.new_root) = (public.new_root, public.old_root);
    let swapped: [U256; 7] = words(&solidity::inputs(&swapped));
    assert!(!verifier.verify(p, swapped).call().await.expect("calls"));
}
