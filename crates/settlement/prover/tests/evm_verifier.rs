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
use optio_settler::{Groth16Verifier, connect, deploy_verifier};
use optio_state::{Op, SettlementState};
use optio_types::{
    AccountId, Address, Amount, InstrumentId, InstrumentSpec, MONEY_SCALE, Price, QTY_SCALE, Qty,
    Side,
};

const KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

const SHAPE: Shape = Shape {
    slots: 1,
    marks: 1,
    risk_chunks: 1,
};

fn u(w: &Word) -> U256 {
    U256::from_be_bytes(*w)
}

fn words<const N: usize>(ws: &[Word]) -> [U256; N] {
    std::array::from_fn(|i| u(&ws[i]))
}

/// Three consecutive batches (a fill, a deposit, a mark) on a small state, with their proofs.
fn proofs(keys: &Keys, rng: &mut StdRng) -> Vec<([U256; 8], [U256; 5])> {
    let mut state = SettlementState::new();
    let spec = InstrumentSpec::with_defaults(
        "ETH-PERPETUAL".parse().expect("name"),
        Price(20_000 * MONEY_SCALE),
    );
    let mut genesis = vec![
        Op::ListInstrument { spec },
        Op::ActivateInstrument {
            instrument: InstrumentId(0),
        },
    ];
    for i in 0..2u32 {
        genesis.push(Op::OpenAccount {
            owner: Address([i as u8 + 1; 20]),
        });
        genesis.push(Op::Deposit {
            account: AccountId(i),
            amount: Amount(10_000 * MONEY_SCALE),
        });
    }
    state.apply_batch(&genesis).expect("genesis");
    state.commit();
    let batches = [
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
            risk: vec![Amount(-300), Amount(250)],
        }],
    ];
    batches
        .iter()
        .map(|ops| {
            let w = witness(&state, ops, SHAPE).expect("covered");
            let public = w.public;
            let proof = prove(keys, w, rng).expect("proves");
            assert!(verify(&keys.vk, &public, &proof), "verifies natively");
            state.apply_batch(ops).expect("applies");
            state.commit();
            assert_eq!(state.root(), public.new_root);
            (
                words(&solidity::proof(&proof)),
                words(&solidity::inputs(&public)),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_solidity_verifier_accepts_real_proofs_and_refuses_tampered_ones() {
    optio_contracts::forge_build().expect("forge build");
    let mut rng = StdRng::seed_from_u64(3);
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
    let vk: [U256; 26] = words(&solidity::verifying_key(&keys.vk));
    let address = deploy_verifier(&provider, vk).await.expect("deploys");
    let verifier = Groth16Verifier::new(address, &provider);
    assert_eq!(verifier.verifyingKey().call().await.expect("reads"), vk);

    for (proof, input) in &proofs {
        assert!(verifier.verify(*proof, *input).call().await.expect("calls"));
        // A tampered proof: B from another proof (valid points, wrong relation).
        let mut bad = *proof;
        bad[2..6].copy_from_slice(
            &proofs[(proofs.iter().position(|p| p.0 == *proof).expect("in") + 1) % proofs.len()].0
                [2..6],
        );
        assert!(!verifier.verify(bad, *input).call().await.expect("calls"));
        // A point off the curve.
        let mut bad = *proof;
        bad[0] += U256::from(1u64);
        assert!(!verifier.verify(bad, *input).call().await.expect("calls"));
        // Each public input changed by one.
        for j in 0..5 {
            let mut wrong = *input;
            wrong[j] += U256::from(1u64);
            assert!(!verifier.verify(*proof, wrong).call().await.expect("calls"));
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
    }

    let all_proofs: Vec<[U256; 8]> = proofs.iter().map(|p| p.0).collect();
    let all_inputs: Vec<[U256; 5]> = proofs.iter().map(|p| p.1).collect();
    assert!(
        verifier
            .verifyMany(all_proofs.clone(), all_inputs.clone())
            .call()
            .await
            .expect("calls")
    );
    // One wrong input among three.
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

    let one = verifier
        .verify(proofs[0].0, proofs[0].1)
        .estimate_gas()
        .await
        .expect("gas");
    let many = verifier
        .verifyMany(all_proofs, all_inputs)
        .estimate_gas()
        .await
        .expect("gas");
    println!(
        "gas: verify {one}, verifyMany of 3 {many} ({} per proof)",
        many / 3
    );
}
