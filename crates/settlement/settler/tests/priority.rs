//! L1 deposits and forced withdrawals reach the sequencer: against anvil (from npm) with the
//! contracts deployed and a real gateway (sequencer, WAL, batcher) on a temporary directory,
//! settler rounds sequence the priority queue once it is deep enough, never twice (fed again,
//! after a restart of the node, from a second settler), never an operation a reorg took back;
//! the batches say how far the queue was served, so a served deposit cannot be used to freeze;
//! a served forced withdrawal is paid on L1 from the finalized batch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use alloy::providers::{DynProvider, Provider};
use optio_gateway::{Config, Gateway};
use optio_settler::{
    NodeLink, OptioRollup, PriorityKind, PriorityOp, Progress, RollupConfig, Settler, TestUSDC,
    Verdict, connect, deploy, priority_ops, round, transact, verify_l1_rebuilt,
};
use optio_types::EngineLimits;

mod support;

/// anvil's first default account (the operator).
const KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
const USDC: u64 = 1_000_000;

struct Link(Arc<Gateway>);

impl NodeLink for Link {
    fn priority_served(&self) -> u64 {
        self.0.priority_served()
    }
    fn serve(&self, op: &PriorityOp) -> Result<bool, String> {
        self.0.submit_l1(op.command()).map_err(|e| format!("{e:?}"))
    }
    fn progress(&self, p: Progress) {
        self.0.record_l1(optio_gateway::L1Progress {
            committed_seq: p.committed_seq,
            proven_seq: p.proven_seq,
            finalized_seq: p.finalized_seq,
        });
    }
    fn priority_deadline(&self, seconds: Option<i64>) {
        self.0.record_priority_deadline(seconds);
    }
    fn vault(&self, held: u128, books: u128) {
        self.0.record_vault(held, books);
    }
}

fn open(dir: &std::path::Path) -> Arc<Gateway> {
    let config = Config {
        batch_max_age_ms: 100,
        ..Config::default()
    };
    Arc::new(Gateway::open(dir, [9; 32], EngineLimits::default(), config).expect("opens"))
}

/// A user on L1: a fresh key with gas money and USDC approved for the rollup.
struct User {
    address: Address,
    provider: DynProvider,
}

async fn user(url: &str, operator: &DynProvider, usdc: Address, rollup: Address, n: u8) -> User {
    let key = format!("0x{}", format!("{n:02x}").repeat(32));
    let address = optio_settler::signer_address(&key).expect("address");
    let _: serde_json::Value = operator
        .raw_request(
            "anvil_setBalance".into(),
            (address, U256::from(10u64).pow(U256::from(18u64))),
        )
        .await
        .expect("gas money");
    let provider = connect(url, &key).expect("provider");
    transact(TestUSDC::new(usdc, &provider).mint(address, U256::from(1_000_000 * USDC)))
        .await
        .expect("mint");
    transact(TestUSDC::new(usdc, &provider).approve(rollup, U256::MAX))
        .await
        .expect("approve");
    User { address, provider }
}

async fn mine(p: &DynProvider) {
    let _: serde_json::Value = p.raw_request("evm_mine".into(), ()).await.expect("mine");
}

/// The settlement state the node's batches on disk give, once they cover everything sequenced
/// so far.
fn settled(dir: &std::path::Path, gateway: &Gateway) -> optio_state::SettlementState {
    let last = gateway.next_seq() - 1;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let files = optio_gateway::batching::blob_files(&dir.join("batches")).expect("blobs");
        let blobs: Vec<Vec<u8>> = files
            .iter()
            .map(std::fs::read)
            .collect::<Result<_, _>>()
            .expect("reads");
        let mut state = optio_state::SettlementState::new();
        let (_, covered) =
            optio_state::rebuild(blobs.iter().map(Vec::as_slice), &mut state, |_| {})
                .expect("rebuilds");
        if covered >= last {
            return state;
        }
        assert!(Instant::now() < deadline, "the batcher did not catch up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn collateral(state: &optio_state::SettlementState, owner: Address) -> Vec<i64> {
    state
        .accounts()
        .iter()
        .filter(|a| a.owner.0 == owner.into_array())
        .map(|a| a.collateral.0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_and_forced_withdrawals_are_sequenced_once_and_paid() {
    let anvil = optio_contracts::Anvil::start().expect("anvil");
    optio_contracts::forge_build().expect("forge build");
    let operator = connect(&anvil.url, KEY).expect("provider");
    let genesis = U256::from_be_bytes(optio_state::poseidon::to_bytes(
        &optio_state::SettlementState::new().root(),
    ));
    let me = operator.get_accounts().await.expect("accounts")[0];
    // No finalization delay: a batch is final as soon as the settler finalizes it.
    let d = deploy(&operator, me, genesis, &RollupConfig::new(0, 6 * 3_600))
        .await
        .expect("deploys");
    let rollup = OptioRollup::new(d.rollup, &operator);
    let data = tempfile::tempdir().expect("temp dir");
    let gateway = open(data.path());
    let node: Arc<dyn NodeLink> = Arc::new(Link(gateway.clone()));
    let settler = Settler::new(operator.clone(), d.rollup, &data.path().join("batches"));

    let alice = user(&anvil.url, &operator, d.usdc, d.rollup, 0xa1).await;
    let bob = user(&anvil.url, &operator, d.usdc, d.rollup, 0xb0).await;
    let new = OptioRollup::new(d.rollup, &alice.provider)
        .NEW_ACCOUNT()
        .call()
        .await
        .expect("reads");
    transact(OptioRollup::new(d.rollup, &alice.provider).deposit(new, U256::from(1_000 * USDC)))
        .await
        .expect("alice deposits");
    transact(OptioRollup::new(d.rollup, &bob.provider).deposit(new, U256::from(500 * USDC)))
        .await
        .expect("bob deposits");

    // One confirmation: bob's deposit is the head block, not deep enough yet.
    round(&settler, &node, 1).await.expect("round");
    // Neither deposit is served by a finalized batch yet: the metrics say how long the oldest
    // has before anyone may freeze (the 6-hour window, less the blocks since).
    let deadline_left = |metrics: String| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("optio_l1_priority_deadline_seconds "))
            .map(|v| v.parse::<i64>().expect("seconds"))
    };
    let left = deadline_left(gateway.metrics()).expect("a deadline while deposits wait");
    assert!((6 * 3_600 - 60..=6 * 3_600).contains(&left), "{left}");
    assert_eq!(
        gateway.priority_served(),
        1,
        "only alice's deposit is deep enough"
    );
    mine(&operator).await;
    round(&settler, &node, 1).await.expect("round");
    assert_eq!(gateway.priority_served(), 2);

    // Fed again, directly or by another round: nothing more is credited.
    let ops = priority_ops(&operator, d.rollup, 0, 0)
        .await
        .expect("reads");
    assert_eq!(ops.len(), 2);
    assert_eq!(
        (ops[0].kind, ops[0].owner),
        (PriorityKind::Deposit, alice.address)
    );
    for op in &ops {
        assert!(matches!(gateway.submit_l1(op.command()), Ok(false)));
    }
    assert_eq!(round(&settler, &node, 0).await.expect("round").served, 0);
    // An id ahead of the queue is refused and changes nothing.
    let ahead = PriorityOp { id: 5, ..ops[0] };
    assert!(gateway.submit_l1(ahead.command()).is_err());
    assert_eq!(gateway.priority_served(), 2);
    let state = settled(data.path(), &gateway);
    assert_eq!(collateral(&state, alice.address), vec![1_000 * USDC as i64]);
    assert_eq!(collateral(&state, bob.address), vec![500 * USDC as i64]);

    // A restart of the node: the served count comes back from its log; nothing is fed twice.
    drop(node);
    assert_eq!(Arc::strong_count(&gateway), 1);
    // Dropping it stops its threads and frees the data directory.
    drop(gateway);
    let gateway = open(data.path());
    let node: Arc<dyn NodeLink> = Arc::new(Link(gateway.clone()));
    assert_eq!(gateway.priority_served(), 2);
    assert_eq!(round(&settler, &node, 0).await.expect("round").served, 0);

    // A deposit that a reorg takes back before it is deep enough is never credited.
    let carol = user(&anvil.url, &operator, d.usdc, d.rollup, 0xc0).await;
    let snapshot: U256 = operator
        .raw_request("evm_snapshot".into(), ())
        .await
        .expect("snapshot");
    transact(OptioRollup::new(d.rollup, &carol.provider).deposit(new, U256::from(700 * USDC)))
        .await
        .expect("carol deposits");
    round(&settler, &node, 1).await.expect("round");
    assert_eq!(gateway.priority_served(), 2, "not deep enough yet");
    let _: bool = operator
        .raw_request("evm_revert".into(), (snapshot,))
        .await
        .expect("reorg");
    mine(&operator).await;
    mine(&operator).await;
    round(&settler, &node, 1).await.expect("round");
    assert_eq!(gateway.priority_served(), 2, "the reorged deposit is gone");

    // The batches carry the served count to L1: the queue's deadlines cannot freeze it.
    let state = settled(data.path(), &gateway);
    assert_eq!(state.priority_served(), 2);
    assert!(collateral(&state, carol.address).is_empty());
    round(&settler, &node, 0).await.expect("round");
    assert_eq!(
        rollup.priorityServed().call().await.expect("reads"),
        U256::from(2u64),
        "final batches served both deposits"
    );
    let _: serde_json::Value = operator
        .raw_request("evm_increaseTime".into(), (7 * 3_600u64,))
        .await
        .expect("time");
    mine(&operator).await;
    assert!(
        transact(rollup.freeze()).await.is_err(),
        "nothing is overdue: no freeze"
    );

    // Alice forces a withdrawal; once served and final, she is paid on L1 from the batch.
    let account = state
        .accounts()
        .iter()
        .position(|a| a.owner.0 == alice.address.into_array())
        .expect("alice's account") as u32;
    transact(OptioRollup::new(d.rollup, &alice.provider).requestWithdrawal(account))
        .await
        .expect("requests");
    // Bob asks to withdraw from alice's account: served, nothing moves.
    transact(OptioRollup::new(d.rollup, &bob.provider).requestWithdrawal(account))
        .await
        .expect("requests");
    round(&settler, &node, 0).await.expect("round");
    assert_eq!(gateway.priority_served(), 4);
    let state = settled(data.path(), &gateway);
    assert_eq!(collateral(&state, alice.address), vec![0]);
    assert_eq!(collateral(&state, bob.address), vec![500 * USDC as i64]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        round(&settler, &node, 0).await.expect("round");
        let p = settler.progress().await.expect("reads");
        if p.finalized_seq == gateway.next_seq() - 1 {
            break;
        }
        assert!(Instant::now() < deadline, "not finalized: {p:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    round(&settler, &node, 0).await.expect("round");
    assert_eq!(
        deadline_left(gateway.metrics()),
        None,
        "every queued operation is served by a finalized batch"
    );
    // The batch whose withdrawal list is alice's one withdrawal.
    let list = vec![OptioRollup::Withdrawal {
        account,
        owner: alice.address,
        amount: U256::from(1_000 * USDC),
    }];
    let want = optio_state::poseidon::hex(&optio_state::withdrawals_hash(&[(
        account,
        optio_types::Address(alice.address.into_array()),
        optio_types::Amount(1_000 * USDC as i64),
    )]));
    let number = (1..)
        .find(|n| {
            let header = std::fs::read_to_string(data.path().join(format!("batches/{n:08}.json")))
                .expect("every batch up to the withdrawal has a header");
            header.contains(&want)
        })
        .expect("a batch pays it");
    let usdc = TestUSDC::new(d.usdc, &operator);
    let before = usdc.balanceOf(alice.address).call().await.expect("reads");
    transact(rollup.withdraw(U256::from(number), list.clone(), U256::ZERO))
        .await
        .expect("the final batch pays the forced withdrawal");
    assert_eq!(
        usdc.balanceOf(alice.address).call().await.expect("reads") - before,
        U256::from(1_000 * USDC)
    );
    assert!(
        transact(rollup.withdraw(U256::from(number), list, U256::ZERO))
            .await
            .is_err(),
        "paid once"
    );
    // The watchtower agrees with every batch, priority operations included.
    let (verdicts, rebuilt) = verify_l1_rebuilt(&operator, d.rollup)
        .await
        .expect("verifies");
    assert!(
        verdicts.iter().all(|v| matches!(v, Verdict::Agrees(_))),
        "{verdicts:?}"
    );
    // And the vault pays what the state owes, the forced withdrawal paid out of both.
    let vault = optio_settler::audit_vault(&operator, d.rollup, &rebuilt)
        .await
        .expect("audits");
    assert!(vault.problems().is_empty(), "{:?}", vault.problems());
    assert_eq!(vault.paid, U256::from(1_000 * USDC));
    assert_eq!(
        vault.owed.expect("compared").unpaid_withdrawals,
        (0, 0),
        "{vault:?}"
    );

    // A rogue operator's batches: a queued operation that is not a deposit served as one, a
    // queued deposit credited with more than was deposited, a withdrawal paid to someone other
    // than the owner its words name, a forced withdrawal posted as someone else's request
    // (which the proof would let move nothing), and a deposit served twice. The contract reads
    // the posted words and refuses each: nothing is committed.
    let p = settler.progress().await.expect("reads");
    let previous = settler.root(p.committed).await.expect("reads");
    let state = settled(data.path(), &gateway);
    let owner = state.accounts()[0].owner;
    let forge = |ops: &[optio_state::Op], list: &[optio_state::Withdrawal]| {
        let meta = optio_state::blob::BlobMeta {
            number: p.committed + 1,
            first_seq: p.committed_seq + 1,
            last_seq: p.committed_seq + 1,
            // Now: not before the last committed batch's time, nor outside the bounds around
            // L1's (the contract refuses a batch dated so).
            time_ms: optio_gateway::now_ms(),
            accounts: state.accounts().len() as u32,
            instruments: state.instruments().len() as u32,
        };
        // (Without a verifier the contract takes the root on trust: a batch serving the queue
        // out of order, which the ledger and the circuit refuse, posts the old one.)
        let mut after = state.clone();
        let root = match after.apply_batch(ops) {
            Ok(()) => after.commit(),
            Err(_) => state.root(),
        };
        let root = U256::from_be_bytes(optio_state::poseidon::to_bytes(&root));
        let blob = optio_state::encode(&meta, ops).expect("encodes");
        // The queue ids the batch claims to serve: through its last L1 operation.
        let served = ops
            .iter()
            .filter_map(|o| match o {
                optio_state::Op::L1Deposit { priority, .. }
                | optio_state::Op::L1Withdrawal { priority, .. } => Some(priority + 1),
                _ => None,
            })
            .fold(4, u64::max);
        let commitment = optio_state::blob::commitment(
            &optio_state::blob::encode_ops(&meta, ops).expect("encodes"),
        );
        rollup.commitBatch(
            U256::from(p.committed + 1),
            previous,
            root,
            p.committed_seq + 1,
            p.committed_seq + 1,
            served,
            optio_state::withdrawals_hash(list).into(),
            U256::from_be_bytes(optio_state::poseidon::to_bytes(&commitment)),
            blob.into(),
            Default::default(),
        )
    };
    let selector =
        |error: &str| alloy::primitives::hex::encode(&alloy::primitives::keccak256(error)[..4]);
    let deposit = |priority, amount| optio_state::Op::L1Deposit {
        priority,
        account: optio_types::AccountId(0),
        amount: optio_types::Amount(amount),
    };
    let withdrawal = optio_state::Op::Withdraw {
        account: optio_types::AccountId(0),
        amount: optio_types::Amount(USDC as i64),
        owner,
    };
    let operator_address = optio_settler::signer_address(KEY).expect("address");
    // Bob asks again (queue id 4, left unserved).
    transact(OptioRollup::new(d.rollup, &bob.provider).requestWithdrawal(account))
        .await
        .expect("requests");
    let refused = [
        (
            vec![deposit(4, 1_000_000 * USDC as i64)],
            vec![],
            "NotQueued(uint256)",
        ),
        (
            vec![deposit(0, 1_000_000 * USDC as i64)],
            vec![],
            "NotQueued(uint256)",
        ),
        (
            vec![withdrawal.clone()],
            vec![(
                0,
                optio_types::Address(operator_address.0.0),
                optio_types::Amount(USDC as i64),
            )],
            "WrongWithdrawals()",
        ),
        (vec![withdrawal.clone()], vec![], "WrongWithdrawals()"),
        // Bob's forced withdrawal from alice's account (queue id 4) posted as hers.
        (
            vec![optio_state::Op::L1Withdrawal {
                priority: 4,
                account: optio_types::AccountId(account),
                amount: optio_types::Amount(0),
                requester: optio_types::Address(alice.address.into_array()),
            }],
            vec![],
            "NotQueued(uint256)",
        ),
        // Alice's deposit (queue id 0, served in the first batch) served again, with nothing
        // credited (which would return it to her).
        (vec![deposit(0, 0)], vec![], "NotQueued(uint256)"),
    ];
    for (ops, list, error) in refused {
        let Err(err) = forge(&ops, &list).call().await else {
            panic!("{error}: taken");
        };
        assert!(err.to_string().contains(&selector(error)), "{error}: {err}");
    }
    // The same withdrawal with the list its words give is taken.
    let list = optio_state::withdrawals(std::slice::from_ref(&withdrawal));
    assert_eq!(list, vec![(0, owner, optio_types::Amount(USDC as i64))]);
    forge(&[withdrawal], &list)
        .call()
        .await
        .expect("the list the words give");
    assert_eq!(
        rollup.committedBatches().call().await.expect("reads"),
        U256::from(p.committed)
    );

    let metrics = gateway.metrics();
    assert!(metrics.contains("optio_l1_priority_served 4"), "{metrics}");
    // Bob's third request (queue id 4) waits, served by no batch (not deep enough for this
    // round): the metrics count down its 6 hours; with everything served they say nothing.
    round(&settler, &node, 1_000).await.expect("round");
    let left = deadline_left(gateway.metrics()).expect("the request waits");
    assert!((6 * 3_600 - 600..=6 * 3_600).contains(&left), "{left}");
    assert!(
        metrics.contains(&format!(
            "optio_l1_finalized_seq {}",
            gateway.next_seq() - 1
        )),
        "{metrics}"
    );
    // The vault: the token holds the books, and the metrics say so.
    let held = TestUSDC::new(d.usdc, &operator)
        .balanceOf(d.rollup)
        .call()
        .await
        .expect("reads");
    let metrics = gateway.metrics();
    assert!(
        metrics.contains(&format!("optio_l1_vault_held_micro_usdc {held}"))
            && metrics.contains("optio_l1_vault_shortfall_micro_usdc 0\n"),
        "{metrics}"
    );
    // A token that moves money out of the rollup's balance (its owner, impersonated here): the
    // next round's metrics show the shortfall, to the micro-USDC.
    support::take_from_vault(&operator, &anvil.url, d.usdc, d.rollup, me, 7).await;
    round(&settler, &node, 1_000).await.expect("round");
    let metrics = gateway.metrics();
    assert!(
        metrics.contains("optio_l1_vault_shortfall_micro_usdc 7\n"),
        "{metrics}"
    );
    // A token that stops answering (its code now reverts every call) does not stop the rounds:
    // the metrics keep the last reading, and the queue is still served.
    support::set_code(&operator, d.usdc, vec![0x60, 0, 0x60, 0, 0xfd]).await;
    round(&settler, &node, 1_000)
        .await
        .expect("a round without the vault's reading");
    assert!(
        gateway
            .metrics()
            .contains("optio_l1_vault_shortfall_micro_usdc 7\n")
    );
    // The audit names it (`optio verify` prints it as an ALERT), where it used to stop at
    // the failed call.
    let (_, rebuilt) = verify_l1_rebuilt(&operator, d.rollup)
        .await
        .expect("verifies");
    let vault = optio_settler::audit_vault(&operator, d.rollup, &rebuilt)
        .await
        .expect("audits a token that does not answer");
    assert!(vault.held.is_err(), "{vault:?}");
    let problems = vault.problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains(&format!(
            "the token {} does not answer balanceOf(rollup)",
            d.usdc
        )),
        "{problems:?}"
    );
}
