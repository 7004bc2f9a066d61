//! The settler: posts the batcher's batches (`<data>/batches/NNNNNNNN.{json,blob}`) to the
//! `OptioRollup` contract in order, waits for each to be mined, and asks the chain, not its own
//! memory, what is committed: after a reorg dropped commitments it simply posts from the first
//! missing one again. Also deploys the contracts (tests, devnets).
//!
//! Each round it also submits the validity proofs `optio prove run` wrote beside the batches
//! (`NNNNNNNN.proof.json`, many in one `verifyBatches` transaction) when the rollup has a
//! verifier, finalizes what is due and reports how far L1 has come (the intent status API's
//! committed, proven and finalized), and `priority_ops` reads the L1 priority queue (deposits,
//! forced withdrawals) for the node to sequence, only as deep as the configured confirmations
//! so that a reorg cannot take back an operation already credited.

use std::path::{Path, PathBuf};

use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{B256, Bytes};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolConstructor;

/// Bindings generated from the contracts' ABI (the subset the settler calls).
#[allow(clippy::too_many_arguments, missing_docs)]
mod bindings {
    use alloy::sol;

    sol! {
        #[sol(rpc)]
        contract OptioRollup {
            struct Position {
                uint32 instrument;
                int64 qty;
                bool opened;
                uint256 specHash;
                uint64 status;
                int64 mark;
                uint256 riskHash;
                int64 settlementPrice;
            }
            struct StateOpening {
                uint256 accountsRoot;
                uint256 instrumentsRoot;
                int64 insurance;
                int64 feePool;
                uint32 accounts;
                uint32 instruments;
                uint64 oracleMs;
            }
            struct ExitProof {
                uint32 account;
                StateOpening state;
                uint8 mode;
                uint256 keysHash;
                uint64 nonce;
                uint160 liability;
                int64 collateral;
                uint64 since;
                uint256[] accountProof;
                Position[] positions;
                uint256[] instrumentSiblings;
                uint256 positionsRoot;
            }
            struct AccountOpening {
                StateOpening state;
                address owner;
                uint8 mode;
                uint256 keysHash;
                uint64 nonce;
                uint32 positions;
                uint160 liability;
                int64 collateral;
                uint256 positionsRoot;
                uint64 since;
                uint256[] proof;
            }
            struct Fill {
                uint32 maker;
                uint32 taker;
                uint32 instrument;
                bool takerBuys;
                int64 price;
                int64 qty;
            }
            event BatchCommitted(uint256 indexed number, uint256 root, bytes32 dataHash, uint64 lastSeq);
            event Challenged(uint256 indexed number, uint256 fill, bool taker, address indexed challenger, uint256 reward);
            struct FillSides {
                uint256 number;
                bytes data;
                bytes auths;
                uint256[] sides;
            }
            event OrderBroken(uint256 indexed number, bytes32 order, int256 filled, int256 amount, int256 fees, int256 maxFee, address indexed challenger, uint256 reward);
            function challengeOrder(FillSides[] calldata parts, PostedMark calldata listing, AccountOpening calldata opening) external;
            struct SessionKey {
                address key;
                uint64 expiryMs;
            }
            struct SideChallenge {
                uint256 number;
                bytes data;
                bytes auths;
                uint256 fill;
                bool taker;
            }
            function challengeAuthorization(SideChallenge calldata c, AccountOpening calldata opening, SessionKey[] calldata keys) external;
            function challengePrice(uint256 number, bytes calldata data, bytes calldata auths, uint256 price) external;
            event MarkWentBack(uint256 indexed number, uint256 mark, uint256 earlier, address indexed challenger, uint256 reward);
            event PriceChallenged(uint256 indexed number, uint256 price, address indexed challenger, uint256 reward);
            function challengeChange(PostedMark calldata earlier, PostedMark calldata later, AccountOpening calldata opening) external;
            event ChangeChallenged(uint256 indexed number, uint256 change, address indexed challenger, uint256 reward);
            function judge() external view returns (address);
            function authorizations() external view returns (bool);
            function slashed() external view returns (bool);
            function reclaimDeposit(uint256 id) external;
            function reclaimed(uint256 id) external view returns (bool);
            event Exit(uint32 indexed account, address indexed owner, uint256 amount);
            function bond() external view returns (uint256);
            event Deposit(uint256 indexed priorityId, address indexed owner, uint32 account, uint256 amount, uint64 deadline);
            function usdc() external view returns (address);
            function totalDeposited() external view returns (uint256);
            function totalPaid() external view returns (uint256);
            event Withdrawn(uint256 indexed batch, uint256 index, address indexed owner, uint256 amount);
            function operator() external view returns (address);
            function exit(ExitProof calldata p) external returns (uint256 amount);
            function frozen() external view returns (bool);
            function freeze() external;
            function deposit(uint32 account, uint256 amount) external returns (uint256 id);
            function requestWithdrawal(uint32 account) external returns (uint256 id);
            function requestClose(uint32 account, uint32 instrument) external returns (uint256 id);
            event CloseRequested(uint256 indexed priorityId, address indexed owner, uint32 account, uint32 instrument, uint64 deadline);
            event WithdrawalRequested(uint256 indexed priorityId, address indexed owner, uint32 account, uint64 deadline);
            function backstop() external view returns (uint32);
            function accountsOpened() external view returns (uint32);
            function instrumentsListed() external view returns (uint32);
            struct TimeBounds {
                uint64 lead;
                uint64 lag;
            }
            constructor(address usdc, address operator, address trees, uint256 genesisRoot, uint256 finalizationDelay, uint256 priorityWindow, address verifier, bool authorizations, address oracle, TimeBounds bounds) payable;
            function maxBatchLead() external view returns (uint256);
            struct PostedMark {
                uint256 number;
                bytes data;
                bytes auths;
                uint256 mark;
            }
            function challengeMarkOrder(PostedMark calldata earlier, PostedMark calldata later) external;
            function challengeExpiry(PostedMark calldata listing, PostedMark calldata expiry) external;
            event ExpiredEarly(uint256 indexed number, uint256 expiry, uint256 listing, address indexed challenger, uint256 reward);
            function maxBatchLag() external view returns (uint256);
            event BatchProven(uint256 indexed number, uint256 commitment);
            function verifyBatch(uint256 number, uint256 commitment, uint256[8] calldata proof) external;
            function verifyBatches(uint256[] calldata numbers, uint256[] calldata commitments, uint256[8][] calldata proofs) external;
            function batchInputs(uint256 number, uint256 commitment) external view returns (uint256[7] memory);
            function proven(uint256 number) external view returns (bool);
            function verifier() external view returns (address);
            function provenAt(uint256 number) external view returns (uint256);
            function provenCommitment(uint256 number) external view returns (uint256);
            function opsCommitment(uint256 number) external view returns (uint256);
            function evaluationPoint(uint256 number) external view returns (uint256);
            function evaluation(uint256 number) external view returns (uint256);
            function commitBatch(uint256 number, uint256 previousRoot, uint256 newRoot, uint64 firstSeq, uint64 lastSeq, uint64 priorityServed, bytes32 withdrawalsHash, uint256 commitment, bytes calldata data, bytes calldata authorizations) external;
            function finalize() external;
            function committedBatches() external view returns (uint256);
            function lastFinalized() external view returns (uint256);
            function priorityCount() external view returns (uint256);
            function priorityServed() external view returns (uint256);
            function NEW_ACCOUNT() external view returns (uint32);
            function priorityOps(uint256) external view returns (uint8 kind, address owner, uint32 account, uint256 amount, uint64 deadline);
            function finalizationDelay() external view returns (uint256);
            function priorityWindow() external view returns (uint256);
            function withdraw(uint256 number, Withdrawal[] calldata list, uint256 index) external;
            struct Withdrawal {
                uint32 account;
                address owner;
                uint256 amount;
            }
            function batches(uint256) external view returns (uint256 root, bytes32 dataHash, bytes32 withdrawalsHash, uint64 lastSeq, uint64 committedAt, uint64 priorityServed, uint64 time, bytes32 authHash);
            function trees() external view returns (address);
            function finalRoot() external view returns (uint256);
        }

        #[sol(rpc)]
        contract OptioTrees {
            constructor(address rollup, address h3, address h4, address h5, address h6);
            struct InstrumentLeaf {
                uint32 instrument;
                uint256 specHash;
                uint64 status;
                int64 mark;
                uint256 riskHash;
                int64 settlementPrice;
            }
            struct InstrumentsOpening {
                OptioRollup.StateOpening state;
                InstrumentLeaf[] leaves;
                uint256[] siblings;
            }
            function openInstruments(InstrumentsOpening calldata o) external;
            struct PositionsNode {
                uint8 height;
                uint32 index;
                uint256[4] children;
            }
            function buildPositions(PositionsNode[] calldata nodes) external;
            function builtNodes(bytes32 key) external view returns (bool built, uint32 positions, int216 worth);
            function openedMarks(uint32 instrument) external view returns (bool opened, int64 mark);
            function openedAt() external view returns (uint256);
            function rollup() external view returns (address);
            function h3() external view returns (address);
            function h4() external view returns (address);
            function h5() external view returns (address);
            function h6() external view returns (address);
        }

        #[sol(rpc)]
        contract OptioJudge {
            function rollup() external view returns (address);
            function oracle() external view returns (address);
            function priceAttested(bytes calldata data, bytes calldata auths, uint256 k) external view returns (bool);
            function changeSigned(bytes calldata data, bytes calldata auths, uint256 k, address owner) external view returns (bool, uint32);
            function changeBroken(OptioRollup.PostedMark calldata earlier, OptioRollup.PostedMark calldata later, address owner) external view returns (bool, uint32);
            function expiredEarly(OptioRollup.PostedMark calldata listing, OptioRollup.PostedMark calldata expiry) external pure returns (bool);
            function fillAt(bytes calldata data, uint256 k) external pure returns (OptioRollup.Fill memory f);
            function authorizes(bytes calldata auths, uint256 i, bytes calldata data, address owner, OptioRollup.SessionKey[] calldata keys) external view returns (bool);
            function overcharged(int256 fees, int256 maxFee, uint8 domain, int256 filled, uint256 sides) external pure returns (bool);
        }

        #[sol(rpc)]
        contract TestUSDC {
            function mint(address to, uint256 amount) external;
            function approve(address spender, uint256 amount) external returns (bool);
            function balanceOf(address who) external view returns (uint256);
            function transfer(address to, uint256 amount) external returns (bool);
            function allowance(address owner, address spender) external view returns (uint256);
        }

        #[sol(rpc)]
        contract Groth16Verifier {
            constructor(uint256[30] vk);
            function verify(uint256[8] calldata proof, uint256[7] calldata input) external view returns (bool);
            function verifyMany(uint256[8][] calldata proofs, uint256[7][] calldata inputs) external view returns (bool);
            function verifyingKey() external view returns (uint256[30] memory vk);
        }
    }
}

pub use bindings::{Groth16Verifier, OptioJudge, OptioRollup, OptioTrees, TestUSDC};

mod audit;
pub use audit::{
    AcceptedProof, AuditedCode, CheckedContract, DeploymentAudit, ProofRead, accepted_proofs,
    audit_deployment, key_difference, verifying_key_word,
};
mod vault;
pub use vault::{Owed, StillOwed, VaultAudit, audit_vault};

/// Why the settler stopped.
#[derive(Debug, thiserror::Error)]
pub enum SettlerError {
    /// The chain or the node answered with an error.
    #[error("L1: {0}")]
    Rpc(String),
    /// A batch file is missing or malformed.
    #[error("batch {0}: {1}")]
    Batch(u64, String),
    /// Contract artifacts are missing (build them with forge).
    #[error("artifacts: {0}")]
    Artifacts(String),
}

fn rpc<E: std::fmt::Display>(e: E) -> SettlerError {
    SettlerError::Rpc(e.to_string())
}

/// The last finalized batch the rollup holds.
pub(crate) async fn last_finalized(
    contract: &OptioRollup::OptioRollupInstance<&DynProvider>,
) -> Result<u64, SettlerError> {
    u64::try_from(contract.lastFinalized().call().await.map_err(rpc)?).map_err(rpc)
}

pub use alloy::primitives::{Address, U256};

pub use alloy::providers::DynProvider;

/// The chain id `provider`'s chain reports.
pub async fn chain_id(provider: &DynProvider) -> Result<u64, SettlerError> {
    provider.get_chain_id().await.map_err(rpc)
}

/// How many times a call an endpoint refused for its rate is sent again, and the first wait
/// (alloy's `RetryBackoffLayer`: the wait grows with the calls queued, or follows the
/// endpoint's own hint, at most 60 s).
const RATE_RETRIES: u32 = 12;
const RATE_BACKOFF_MS: u64 = 500;
/// The compute units a second the layer paces queued calls against (a free public plan's
/// order, 330 at Alchemy; about 16 calls a second at its average cost of 20).
const RATE_UNITS_PER_S: u64 = 330;

/// Which failed calls are sent again: what alloy counts as an endpoint's rate limit or a
/// passing fault (HTTP 429 and 503, JSON-RPC 429 and -32005, "header not found", ...), but not
/// a refusal of the query itself. Infura answers both "project rate limit exceeded" and "query
/// returned more than 10000 results" with -32005; the second is `rollup_logs`' cue to halve its
/// window, and would only come back the same.
#[derive(Debug, Clone, Copy)]
struct Transient;

impl alloy::transports::layers::RetryPolicy for Transient {
    fn should_retry(&self, error: &alloy::transports::TransportError) -> bool {
        use alloy::transports::layers::RateLimitRetryPolicy;
        RateLimitRetryPolicy::default().should_retry(error)
            && !refuses_the_query(&error.to_string())
    }

    fn backoff_hint(
        &self,
        error: &alloy::transports::TransportError,
    ) -> Option<std::time::Duration> {
        use alloy::transports::layers::RateLimitRetryPolicy;
        RateLimitRetryPolicy::default().backoff_hint(error)
    }
}

/// Whether an endpoint's error refuses the query for its size (a log range or result count
/// over its cap), as the common endpoints word it, rather than the caller's rate.
fn refuses_the_query(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "range",
        "returned more than",
        "results",
        "response size",
        "too large",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// An RPC client for `url` that sends a call the endpoint refused for its rate again
/// (`Transient`), so that a public endpoint's limits slow the watchtower, the audit and the
/// escape hatch down instead of stopping them.
fn client(url: &str) -> Result<alloy::rpc::client::RpcClient, String> {
    let url: alloy::transports::http::reqwest::Url = url.parse().map_err(|e| format!("{e}"))?;
    Ok(alloy::rpc::client::ClientBuilder::default()
        .layer(
            alloy::transports::layers::RetryBackoffLayer::new_with_policy(
                RATE_RETRIES,
                RATE_BACKOFF_MS,
                RATE_UNITS_PER_S,
                Transient,
            ),
        )
        .http(url))
}

/// A read-only provider (for the watchtower), patient with an endpoint's rate limits.
pub fn reader(url: &str) -> Result<DynProvider, String> {
    Ok(ProviderBuilder::new().connect_client(client(url)?).erased())
}

/// The address of a hex private key.
pub fn signer_address(key: &str) -> Result<Address, String> {
    key.parse::<PrivateKeySigner>()
        .map(|s| s.address())
        .map_err(|e| e.to_string())
}

/// A provider that signs with the operator's key. Nonces are asked of the chain for every
/// transaction (a cached nonce is wrong after a reorg). Calls refused for the endpoint's rate
/// are sent again (`client`); a signed transaction sent again is the same transaction.
pub fn connect(url: &str, key: &str) -> Result<DynProvider, SettlerError> {
    let signer: PrivateKeySigner = key.parse().map_err(rpc)?;
    Ok(ProviderBuilder::new()
        .disable_recommended_fillers()
        .with_gas_estimation()
        .with_simple_nonce_management()
        .fetch_chain_id()
        .wallet(EthereumWallet::from(signer))
        .connect_client(client(url).map_err(SettlerError::Rpc)?)
        .erased())
}

/// Where the deployed contracts are.
#[derive(Debug, Clone, Copy)]
pub struct Deployment {
    /// The collateral token.
    pub usdc: Address,
    /// The rollup.
    pub rollup: Address,
}

/// A forge artifact (`contracts/out/<file>/<name>.json`), parsed.
fn artifact_json(
    contracts: &Path,
    file: &str,
    name: &str,
) -> Result<serde_json::Value, SettlerError> {
    let path = contracts
        .join("out")
        .join(file)
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).map_err(|e| {
        SettlerError::Artifacts(format!(
            "{}: {e} (run forge build in contracts/)",
            path.display()
        ))
    })?;
    serde_json::from_str(&text)
        .map_err(|e| SettlerError::Artifacts(format!("{}: {e}", path.display())))
}

/// A Poseidon hasher's creation code (`contracts/poseidon/poseidon<inputs>.hex`, generated by
/// circomlibjs).
fn hasher_creation(contracts: &Path, inputs: usize) -> Result<Bytes, SettlerError> {
    let path = contracts.join(format!("poseidon/poseidon{inputs}.hex"));
    let hex = std::fs::read_to_string(&path)
        .map_err(|e| SettlerError::Artifacts(format!("{}: {e}", path.display())))?;
    hex.trim()
        .parse()
        .map_err(|e| SettlerError::Artifacts(format!("poseidon{inputs}: {e}")))
}

fn artifact(contracts: &Path, file: &str, name: &str) -> Result<Bytes, SettlerError> {
    let json = artifact_json(contracts, file, name)?;
    let hex = json["bytecode"]["object"]
        .as_str()
        .ok_or_else(|| SettlerError::Artifacts(format!("{name}: no bytecode")))?;
    hex.parse()
        .map_err(|e| SettlerError::Artifacts(format!("{name}: {e}")))
}

/// Sends a contract call and waits for it to be mined; its receipt, or an error if it reverted.
pub async fn transact<P: Provider, C: alloy::sol_types::SolCall>(
    call: alloy::contract::SolCallBuilder<P, C>,
) -> Result<alloy::rpc::types::TransactionReceipt, SettlerError> {
    let pending = call.send().await.map_err(rpc)?;
    let hash = *pending.tx_hash();
    let provider = pending.provider().clone().erased();
    let receipt = mined(&provider, hash).await?;
    if receipt.status() {
        Ok(receipt)
    } else {
        Err(SettlerError::Rpc(format!("transaction {hash} reverted")))
    }
}

/// Waits for a sent transaction's receipt by asking for it (no block subscription, so it also
/// works across a node's snapshots and reverts); gives up after a minute.
async fn mined(
    provider: &DynProvider,
    hash: B256,
) -> Result<alloy::rpc::types::TransactionReceipt, SettlerError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(receipt) = provider.get_transaction_receipt(hash).await.map_err(rpc)? {
            return Ok(receipt);
        }
        if std::time::Instant::now() > deadline {
            let tx = provider.get_transaction_by_hash(hash).await.map_err(rpc)?;
            return Err(SettlerError::Rpc(format!(
                "transaction {hash} not mined within a minute: {tx:?}"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn deploy_code(
    provider: &DynProvider,
    code: Bytes,
    value: U256,
) -> Result<Address, SettlerError> {
    deploy_code_from(provider, code, value, None)
        .await
        .map(|(address, _)| address)
}

/// `deploy_code` with the transaction's nonce (`None`: the provider's next), returning the
/// contract and the deployer.
async fn deploy_code_from(
    provider: &DynProvider,
    code: Bytes,
    value: U256,
    nonce: Option<u64>,
) -> Result<(Address, Address), SettlerError> {
    let mut tx = TransactionRequest::default()
        .with_deploy_code(code)
        .with_value(value);
    if let Some(n) = nonce {
        tx = tx.with_nonce(n);
    }
    let hash = *provider.send_transaction(tx).await.map_err(rpc)?.tx_hash();
    let receipt = mined(provider, hash).await?;
    let address = receipt
        .contract_address
        .ok_or_else(|| SettlerError::Rpc("deployment produced no contract".into()))?;
    Ok((address, receipt.from))
}

/// How a rollup is deployed: its constructor's arguments beyond the operator and the genesis
/// root.
#[derive(Debug, Clone)]
pub struct RollupConfig {
    /// Seconds from a batch's proof to its finalization (the challenge window).
    pub finalization_delay: u64,
    /// Seconds the operator has to serve an L1 deposit or forced withdrawal.
    pub priority_window: u64,
    /// The operator's bond (wei), paid to a successful challenger.
    pub bond: U256,
    /// The batch-proof verifier (`deploy_verifier`; `Address::ZERO`: none, proofs are refused).
    pub verifier: Address,
    /// The authorization challenge: every batch must post its fills' signed orders
    /// (`optio_state::auth`).
    pub authorizations: bool,
    /// The risk oracle whose signature every mark needs (the mark challenge; `Address::ZERO`:
    /// none).
    pub oracle: Address,
    /// Seconds a batch's time (its engine time) may lie ahead of the block that commits it.
    pub max_batch_lead: u64,
    /// Seconds a batch's time may lie behind the block that commits it: how long a cut batch
    /// may wait to be committed, and so how long an operator could hold its batches' time
    /// still.
    pub max_batch_lag: u64,
    /// A contract to create the trees and the rollup through (`Address::ZERO`: the deployer's
    /// own transactions): a factory that creates its call's input as creation code with its
    /// call's value (`CREATE`), as a multisig's or a deterministic deployer's would. Their
    /// creation is then no transaction of its own, and the audit finds it in a call trace.
    pub factory: Address,
}

impl RollupConfig {
    /// A batch's time may be this far ahead of L1's by default (Arbitrum's `futureSeconds`).
    pub const MAX_BATCH_LEAD_S: u64 = 3_600;
    /// A batch's time may be this far behind L1's by default (Arbitrum's `delaySeconds`).
    pub const MAX_BATCH_LAG_S: u64 = 86_400;

    /// The given delays, no bond, no verifier, no challenges, the default time bounds.
    pub fn new(finalization_delay: u64, priority_window: u64) -> Self {
        Self {
            finalization_delay,
            priority_window,
            bond: U256::ZERO,
            verifier: Address::ZERO,
            authorizations: false,
            oracle: Address::ZERO,
            max_batch_lead: Self::MAX_BATCH_LEAD_S,
            max_batch_lag: Self::MAX_BATCH_LAG_S,
            factory: Address::ZERO,
        }
    }
}

/// Deploys the Poseidon hashers, a `TestUSDC`, the state's trees and the rollup (operator:
/// `operator`) from the forge artifacts under `contracts/out` and the hasher bytecode under
/// `contracts/poseidon`.
pub async fn deploy(
    provider: &DynProvider,
    operator: Address,
    genesis_root: U256,
    config: &RollupConfig,
) -> Result<Deployment, SettlerError> {
    let contracts: PathBuf = optio_contracts::contracts_dir();
    let mut hashers = Vec::new();
    for n in [4, 3, 5, 6] {
        let code = hasher_creation(&contracts, n)?;
        hashers.push(deploy_code(provider, code, U256::ZERO).await?);
    }
    let (usdc, deployer) = deploy_code_from(
        provider,
        artifact(&contracts, "TestUSDC.sol", "TestUSDC")?,
        U256::ZERO,
        None,
    )
    .await?;
    // The trees first, naming the rollup at the address the next creation makes (the
    // rollup's constructor checks it): the deployer's next transaction's, or the factory's next
    // (a contract's nonce counts its creations).
    let creator = if config.factory.is_zero() {
        deployer
    } else {
        config.factory
    };
    let nonce = provider.get_transaction_count(creator).await.map_err(rpc)?;
    let mut code = artifact(&contracts, "OptioTrees.sol", "OptioTrees")?.to_vec();
    code.extend_from_slice(
        &OptioTrees::constructorCall {
            rollup: creator.create(nonce + 1),
            h3: hashers[1],
            h4: hashers[0],
            h5: hashers[2],
            h6: hashers[3],
        }
        .abi_encode(),
    );
    let create = |code: Vec<u8>, value: U256, nonce: u64| async move {
        if config.factory.is_zero() {
            return Ok(deploy_code_from(provider, code.into(), value, Some(nonce))
                .await?
                .0);
        }
        let tx = TransactionRequest::default()
            .with_to(config.factory)
            .with_input(code)
            .with_value(value);
        let hash = *provider.send_transaction(tx).await.map_err(rpc)?.tx_hash();
        mined(provider, hash).await?;
        let created = config.factory.create(nonce);
        if provider.get_code_at(created).await.map_err(rpc)?.is_empty() {
            return Err(SettlerError::Rpc(format!(
                "the factory {} created nothing at {created}",
                config.factory
            )));
        }
        Ok(created)
    };
    let trees = create(code, U256::ZERO, nonce).await?;
    let args = OptioRollup::constructorCall {
        usdc,
        operator,
        trees,
        genesisRoot: genesis_root,
        finalizationDelay: U256::from(config.finalization_delay),
        priorityWindow: U256::from(config.priority_window),
        verifier: config.verifier,
        authorizations: config.authorizations,
        oracle: config.oracle,
        bounds: OptioRollup::TimeBounds {
            lead: config.max_batch_lead,
            lag: config.max_batch_lag,
        },
    };
    let mut code = artifact(&contracts, "OptioRollup.sol", "OptioRollup")?.to_vec();
    code.extend_from_slice(&args.abi_encode());
    let rollup = create(code, config.bond, nonce + 1).await?;
    Ok(Deployment { usdc, rollup })
}

/// Deploys the batch-proof verifier with its verifying key (the 30 words of
/// `optio_prover::solidity::verifying_key`).
pub async fn deploy_verifier(
    provider: &DynProvider,
    vk: [U256; 30],
) -> Result<Address, SettlerError> {
    let contracts: PathBuf = optio_contracts::contracts_dir();
    let mut code = artifact(&contracts, "Groth16Verifier.sol", "Groth16Verifier")?.to_vec();
    code.extend_from_slice(&Groth16Verifier::constructorCall { vk }.abi_encode());
    deploy_code(provider, code.into(), U256::ZERO).await
}

/// One batch as the node wrote it.
#[derive(Debug, Clone)]
pub struct PostedBatch {
    /// Number.
    pub number: u64,
    /// Root before.
    pub previous_root: U256,
    /// Root after.
    pub new_root: U256,
    /// The ops commitment posted with it (the header's `ops_commitment`).
    pub commitment: U256,
    /// Sequence range.
    pub first_seq: u64,
    /// Sequence range.
    pub last_seq: u64,
    /// Hash of the withdrawal list.
    pub withdrawals_hash: B256,
    /// L1 priority operations served by its end.
    pub priority_served: u64,
    /// The data blob.
    pub blob: Bytes,
    /// The authorization section (`NNNNNNNN.auth`; empty when the node wrote none).
    pub authorizations: Bytes,
}

/// A batch's validity proof as `optio prove run` wrote it (`NNNNNNNN.proof.json`): the ops
/// commitment it proves and its eight proof words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchProof {
    /// Batch number.
    pub number: u64,
    /// The ops commitment (public input 3).
    pub commitment: U256,
    /// `A.x, A.y, B.x.c1, B.x.c0, B.y.c1, B.y.c0, C.x, C.y`.
    pub proof: [U256; 8],
}

/// Reads batch `number`'s proof from a batches directory: `None` while there is none.
pub fn read_proof(dir: &Path, number: u64) -> Result<Option<BatchProof>, SettlerError> {
    let path = dir.join(format!("{number:08}.proof.json"));
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let bad = |what: &str| SettlerError::Batch(number, format!("proof file: {what}"));
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
    if v["batch"].as_u64() != Some(number) {
        return Err(bad("another batch's proof"));
    }
    let word = |w: &serde_json::Value| w.as_str().and_then(|s| s.parse::<U256>().ok());
    let commitment = word(&v["public"]["commitment"]).ok_or_else(|| bad("commitment"))?;
    let words: Vec<U256> = v["proof"]
        .as_array()
        .map(|a| a.iter().filter_map(word).collect())
        .unwrap_or_default();
    let proof: [U256; 8] = words.try_into().map_err(|_| bad("proof words"))?;
    Ok(Some(BatchProof {
        number,
        commitment,
        proof,
    }))
}

/// Most proofs the settler aggregates into one `verifyBatches` transaction.
pub const PROOFS_PER_TX: usize = 16;

/// Reads batch `number` from a batches directory.
pub fn read_batch(dir: &Path, number: u64) -> Result<Option<PostedBatch>, SettlerError> {
    let stem = dir.join(format!("{number:08}"));
    let (Ok(header), Ok(blob)) = (
        std::fs::read_to_string(stem.with_extension("json")),
        std::fs::read(stem.with_extension("blob")),
    ) else {
        return Ok(None);
    };
    let bad = |what: &str| SettlerError::Batch(number, format!("header field {what}"));
    let h: serde_json::Value =
        serde_json::from_str(&header).map_err(|e| SettlerError::Batch(number, e.to_string()))?;
    let u256 = |k: &str| {
        h[k].as_str()
            .and_then(|s| s.parse::<U256>().ok())
            .ok_or_else(|| bad(k))
    };
    let u64_ = |k: &str| h[k].as_u64().ok_or_else(|| bad(k));
    Ok(Some(PostedBatch {
        number,
        previous_root: u256("previous_root")?,
        new_root: u256("new_root")?,
        commitment: u256("ops_commitment")?,
        first_seq: u64_("first_seq")?,
        last_seq: u64_("last_seq")?,
        priority_served: u64_("priority_served")?,
        withdrawals_hash: h["withdrawals_hash"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("withdrawals_hash"))?,
        blob: blob.into(),
        authorizations: std::fs::read(stem.with_extension("auth"))
            .unwrap_or_default()
            .into(),
    }))
}

/// The data blobs of the batches `rollup` holds, from L1 alone (the `BatchCommitted` events and
/// the calldata of the transactions that emitted them), in batch order, up to and including
/// batch `upto`.
pub async fn blobs_from_l1(
    provider: &DynProvider,
    rollup: Address,
    upto: u64,
) -> Result<Vec<Vec<u8>>, SettlerError> {
    Ok(posted_from_l1(provider, rollup, upto)
        .await?
        .into_iter()
        .map(|(blob, _)| blob)
        .collect())
}

/// The transaction that emitted `log`.
pub(crate) async fn logged_transaction(
    provider: &DynProvider,
    log: &alloy::rpc::types::Log,
) -> Result<alloy::rpc::types::Transaction, SettlerError> {
    let hash = log
        .transaction_hash
        .ok_or_else(|| SettlerError::Rpc("a log without its transaction".into()))?;
    provider
        .get_transaction_by_hash(hash)
        .await
        .map_err(rpc)?
        .ok_or_else(|| SettlerError::Rpc(format!("transaction {hash} not found")))
}

/// The block `rollup` was created in, as far as its logs go: the first block of the second
/// its constructor recorded as the genesis batch's time (a binary search over block times,
/// about log2(head) header reads: read it once and pass it to every scan, `Rebuilt::created`).
pub async fn creation_block(provider: &DynProvider, rollup: Address) -> Result<u64, SettlerError> {
    let created = OptioRollup::new(rollup, provider)
        .batches(U256::ZERO)
        .call()
        .await
        .map_err(rpc)?
        .committedAt;
    audit::first_block_at(provider, created).await
}

/// Transaction `hash`'s call trace (`debug_traceTransaction` with the call tracer: a frame with
/// its `type`, `to`, `input`, `value`, `error` when it reverted, and the frames it made under
/// `calls`); `None` when the endpoint gives no trace (public endpoints often do not).
pub(crate) async fn call_trace(
    provider: &DynProvider,
    hash: alloy::primitives::B256,
) -> Option<serde_json::Value> {
    provider
        .raw_request("debug_traceTransaction".into(), (hash, call_tracer()))
        .await
        .ok()
}

/// The call trace of every transaction of block `number` (`debug_traceBlockByNumber`, call
/// tracer), in order; `None` where the endpoint gives none, or not one for each transaction.
pub(crate) async fn block_traces(
    provider: &DynProvider,
    number: u64,
) -> Option<Vec<serde_json::Value>> {
    let traces: Vec<serde_json::Value> = provider
        .raw_request(
            "debug_traceBlockByNumber".into(),
            (format!("{number:#x}"), call_tracer()),
        )
        .await
        .ok()?;
    traces
        .into_iter()
        .map(|t| t.get("result").filter(|r| r.is_object()).cloned())
        .collect()
}

/// The tracer configuration of `call_trace` and `block_traces`: geth's call tracer.
fn call_tracer() -> serde_json::Value {
    serde_json::json!({ "tracer": "callTracer" })
}

/// The frames of a call trace that were kept, in the order they ran: a frame that reverted is
/// passed over with everything under it (its effects, events and creations included, were
/// undone with it).
pub(crate) fn kept_frames<'a>(frame: &'a serde_json::Value, kept: &mut Vec<&'a serde_json::Value>) {
    if frame.get("error").is_some() {
        return;
    }
    kept.push(frame);
    for call in frame["calls"].as_array().into_iter().flatten() {
        kept_frames(call, kept);
    }
}

/// A frame's `to` address.
pub(crate) fn frame_to(frame: &serde_json::Value) -> Option<Address> {
    frame["to"].as_str().and_then(|a| a.parse().ok())
}

/// A frame's `input` bytes.
pub(crate) fn frame_input(frame: &serde_json::Value) -> Option<Vec<u8>> {
    frame["input"]
        .as_str()
        .and_then(|hex| alloy::primitives::hex::decode(hex).ok())
}

/// The inputs of the calls to `to` that transaction `hash` ran and kept, in the order it made
/// them, from its call trace: what a contract (a multisig, a smart account) passed to the
/// rollup, however it built those bytes. `None` when the endpoint gives no trace.
pub(crate) async fn traced_calls(
    provider: &DynProvider,
    hash: alloy::primitives::B256,
    to: Address,
) -> Option<Vec<Vec<u8>>> {
    let trace = call_trace(provider, hash).await?;
    Some(kept_calls(&trace, to))
}

/// The inputs of the kept calls to `to` in a call trace (`kept_frames`).
pub(crate) fn kept_calls(trace: &serde_json::Value, to: Address) -> Vec<Vec<u8>> {
    let mut kept = Vec::new();
    kept_frames(trace, &mut kept);
    kept.into_iter()
        .filter(|f| frame_to(f) == Some(to))
        .filter_map(frame_input)
        .collect()
}

/// Every log `rollup` emitted with event signature `signature`, in chain order, from block
/// `from` (its creation, `creation_block`) to the head.
///
/// Public endpoints cap how many blocks or results one `eth_getLogs` may span (10,000 blocks is
/// common) and refuse a wider query outright, and the escape hatch and the watchtower must work
/// through any of them. So the range is asked for in windows: a refused window is halved until
/// the provider answers (a single block it still refuses is an error), and the window that
/// answered is kept for the rest (more than half the cap), so a provider's cap is
/// found without knowing it.
pub(crate) async fn rollup_logs(
    provider: &DynProvider,
    rollup: Address,
    from: u64,
    signature: alloy::primitives::B256,
) -> Result<Vec<alloy::rpc::types::Log>, SettlerError> {
    use alloy::rpc::types::Filter;
    let mut start = from;
    let head = provider.get_block_number().await.map_err(rpc)?;
    let mut window = head.saturating_sub(start) + 1;
    let mut logs = Vec::new();
    while start <= head {
        let end = head.min(start.saturating_add(window - 1));
        let filter = Filter::new()
            .address(rollup)
            .event_signature(signature)
            .from_block(start)
            .to_block(end);
        match provider.get_logs(&filter).await {
            Ok(found) => {
                logs.extend(found);
                start = end + 1;
            }
            Err(e) if window == 1 => {
                return Err(SettlerError::Rpc(format!("logs of block {start}: {e}")));
            }
            Err(_) => window = window.div_ceil(2),
        }
    }
    Ok(logs)
}

/// Every event `E` that `rollup` emitted from block `from` (`rollup_logs`), decoded, each with
/// its log (its transaction, block).
pub(crate) async fn rollup_events<E: alloy::sol_types::SolEvent>(
    provider: &DynProvider,
    rollup: Address,
    from: u64,
) -> Result<Vec<(alloy::rpc::types::Log, E)>, SettlerError> {
    rollup_logs(provider, rollup, from, E::SIGNATURE_HASH)
        .await?
        .into_iter()
        .map(|log| {
            let event = log.log_decode::<E>().map_err(rpc)?.inner.data;
            Ok((log, event))
        })
        .collect()
}

/// What L1 holds of a committed batch that identifies its `commitBatch` call: its number and
/// the hashes of its data (the `BatchCommitted` event's) and of its authorization section (the
/// batch's `authHash`).
#[derive(Debug, Clone, Copy)]
struct Committed {
    number: U256,
    data_hash: alloy::primitives::B256,
    auth_hash: alloy::primitives::B256,
}

impl Committed {
    /// Whether `call` posted exactly this batch: its number, data and authorization section (a
    /// call with the same data and another section, say a contract's decoy, would have the
    /// watchtower judge the fills against records L1 does not hold).
    fn is(&self, call: &OptioRollup::commitBatchCall) -> bool {
        call.number == self.number
            && alloy::primitives::keccak256(&call.data) == self.data_hash
            && alloy::primitives::keccak256(&call.authorizations) == self.auth_hash
    }
}

/// The `commitBatch` call of the `committed` batch in the input of the transaction that
/// committed it: the input itself when the operator sent the transaction, or a call inside it
/// when the operator is a contract (a multisig or a smart account carries the call's bytes in
/// its own transaction's input), found at an occurrence of the function's selector. The hashes
/// make a match the committed bytes, wherever they lie.
fn commit_call_in(input: &[u8], committed: &Committed) -> Option<OptioRollup::commitBatchCall> {
    use alloy::sol_types::SolCall;
    let selector = OptioRollup::commitBatchCall::SELECTOR;
    (0..input.len().saturating_sub(3))
        .filter(|&at| input[at..at + 4] == selector)
        .find_map(|at| {
            OptioRollup::commitBatchCall::abi_decode(&input[at..])
                .ok()
                .filter(|call| committed.is(call))
        })
}

/// `blobs_from_l1` with each batch's authorization section.
pub async fn posted_from_l1(
    provider: &DynProvider,
    rollup: Address,
    upto: u64,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>, SettlerError> {
    let from = creation_block(provider, rollup).await?;
    posted_from_l1_from(provider, rollup, from, upto).await
}

/// `posted_from_l1` with the rollup's creation block known (`creation_block`).
async fn posted_from_l1_from(
    provider: &DynProvider,
    rollup: Address,
    from: u64,
    upto: u64,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>, SettlerError> {
    let contract = OptioRollup::new(rollup, provider);
    let mut found: std::collections::BTreeMap<u64, (Vec<u8>, Vec<u8>)> =
        std::collections::BTreeMap::new();
    for (log, event) in rollup_events::<OptioRollup::BatchCommitted>(provider, rollup, from).await?
    {
        let tx = logged_transaction(provider, &log).await?;
        let input = alloy::consensus::Transaction::input(&tx);
        let committed = Committed {
            number: event.number,
            data_hash: event.dataHash,
            auth_hash: contract
                .batches(event.number)
                .call()
                .await
                .map_err(rpc)?
                .authHash,
        };
        let mut call = commit_call_in(input, &committed);
        // A contract that built the call rather than passing its bytes on: its trace shows it.
        let hash = tx.inner.tx_hash();
        let mut traced = false;
        if call.is_none()
            && let Some(calls) = traced_calls(provider, *hash, rollup).await
        {
            traced = true;
            call = calls.iter().find_map(|c| {
                use alloy::sol_types::SolCall;
                OptioRollup::commitBatchCall::abi_decode(c)
                    .ok()
                    .filter(|c| committed.is(c))
            });
        }
        let call = call.ok_or_else(|| {
            SettlerError::Rpc(format!(
                "batch {}: its commitment's transaction {hash} carries no commitBatch call with the committed data and authorizations{}",
                event.number,
                if traced {
                    ", nor does its trace"
                } else {
                    " (a contract that builds the call itself needs an endpoint that traces transactions, debug_traceTransaction)"
                }
            ))
        })?;
        let number = u64::try_from(call.number).map_err(rpc)?;
        if number <= upto {
            found.insert(number, (call.data.to_vec(), call.authorizations.to_vec()));
        }
    }
    if found.len() as u64 != upto || found.keys().next().is_some_and(|k| *k != 1) {
        return Err(SettlerError::Rpc(format!(
            "found {} of {upto} batches on L1",
            found.len()
        )));
    }
    Ok(found.into_values().collect())
}

/// What the watchtower found for one committed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The root rebuilt from the posted data equals the committed root.
    Agrees(u64),
    /// The committed root is not what the posted data gives.
    Differs {
        /// Batch.
        number: u64,
        /// Committed on L1.
        committed: U256,
        /// Rebuilt from the data.
        rebuilt: U256,
    },
    /// The roots agree, but the batch misreports the L1 priority queue: an operation served
    /// other than the user asked on L1 (amount, account, owner), or a served count in the header
    /// that is not what the data serves.
    Priority {
        /// Batch.
        number: u64,
        /// What differs.
        why: String,
    },
    /// The root agrees, but the ops commitment posted with the batch is not its data's: no
    /// proof can verify against it (the proof's words must evaluate at the point drawn from the
    /// posted commitment and words), so on a rollup with a verifier the batch never finalizes.
    CommitmentMismatch {
        /// Batch.
        number: u64,
        /// The commitment posted with it.
        posted: U256,
        /// The one its data gives (`optio_state::blob::commitment`).
        data: U256,
    },
    /// The posted data does not decode or apply: the state cannot be rebuilt past it.
    BadData {
        /// Batch.
        number: u64,
        /// Why.
        why: String,
    },
    /// The roots agree, but a fill is not authorized by the signed order posted for it (on a
    /// rollup with the authorization challenge): `challenge` is ready to file while the batch
    /// is not final (`file_challenge`).
    Unauthorized {
        /// Batch.
        number: u64,
        /// The fill (from 0, in the posted order) and its side.
        fill: u64,
        /// The taker's side (else the maker's).
        taker: bool,
        /// The account.
        account: u32,
        /// Why.
        why: String,
        /// The challenge to file.
        challenge: Box<Challenge>,
    },
    /// The roots agree, but an account change (a session key registered, extended, shortened
    /// or revoked, or a margin mode chosen) is not signed by the account's owner (on a rollup
    /// with the authorization challenge): its posted signature does not recover to the owner
    /// over that change, or had expired at the batch's time. `challenge` is ready to file
    /// while the batch is not final (`file_change_challenge`).
    UnsignedChange {
        /// Batch.
        number: u64,
        /// The change (from 0, in the posted order: session keys, then margin modes).
        change: u64,
        /// The account.
        account: u32,
        /// Why.
        why: String,
        /// The challenge to file.
        challenge: Box<ChangeChallenge>,
    },
    /// The roots agree and every account change is signed by its owner, but one replays an
    /// earlier one: the same account under the same nonce while the earlier signature lived
    /// (`optio_state::auth::replays`; the gateway never takes a nonce twice in that time).
    /// `challenge` is ready to file while the batch is not final (`file_replay_challenge`).
    ChangeReplayed {
        /// Batch.
        number: u64,
        /// The change (from 0, in the posted order: session keys, then margin modes).
        change: u64,
        /// The account.
        account: u32,
        /// Why.
        why: String,
        /// The challenge to file.
        challenge: Box<ReplayChallenge>,
    },
    /// The roots agree, but a settlement price or mark is not attested by the rollup's risk
    /// oracle (its posted signature does not recover to the oracle over that price, or it was
    /// published after the batch's time, a mark also before the window): `challenge` is ready
    /// to file while the batch is not final (`file_price_challenge`).
    Unattested {
        /// Batch.
        number: u64,
        /// The priced op (from 0, in the posted order: settlement prices, then marks).
        price: u64,
        /// Its instrument.
        instrument: u32,
        /// Why.
        why: String,
        /// The challenge to file.
        challenge: Box<PostedOp>,
    },
    /// The roots agree and every price is attested, but a mark was published before the mark
    /// an earlier batch committed for its instrument (the operator went back to an older
    /// signed mark): `challenge` (the earlier mark, then this one) is ready to file while the
    /// batch is not final (`file_mark_order_challenge`).
    MarkWentBack {
        /// Batch.
        number: u64,
        /// The mark (from 0, among the posted priced ops: settlement prices, then marks).
        mark: u64,
        /// Its instrument.
        instrument: u32,
        /// Why.
        why: String,
        /// The challenge to file.
        challenge: Box<(PostedOp, PostedOp)>,
    },
    /// The roots agree, but an instrument's trading ends (its expiry op) before it expires: an
    /// option before 08:00 UTC on its date, or a perpetual. `challenge` (the instrument's
    /// listing, then the expiry) is ready to file while the batch is not final
    /// (`file_expiry_challenge`).
    ExpiredEarly {
        /// Batch.
        number: u64,
        /// The instrument.
        instrument: u32,
        /// Why.
        why: String,
        /// The challenge to file.
        challenge: Box<(PostedOp, PostedOp)>,
    },
    /// The roots agree, but the fills of one signed order, over this batch and earlier ones,
    /// break it (on a rollup with the authorization challenge): they add up beyond its signed
    /// amount, or the fees they paid pass its signed fee cap (`optio_state::auth::overcharged`).
    /// `challenge` is ready to file while the batch is not final (`file_order_challenge`).
    OrderBroken {
        /// Batch (where the fills went past the order).
        number: u64,
        /// The account whose order it is.
        account: u32,
        /// Why.
        why: String,
        /// The challenge to file.
        challenge: Box<OrderChallenge>,
    },
}

/// One op of a committed batch, with the batch's posted data and section: a filed-ready price
/// challenge (`challengePrice`'s arguments), or one side of a mark order or expiry challenge.
#[derive(Clone, PartialEq, Eq)]
pub struct PostedOp {
    /// Batch.
    pub number: u64,
    /// Its posted data.
    pub data: Vec<u8>,
    /// Its posted authorization section.
    pub auths: Vec<u8>,
    /// The op, from 0 in the posted order among its kind: a priced op (settlement prices, then
    /// marks), a listing or an expiry.
    pub op: u64,
}

impl std::fmt::Debug for PostedOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PostedOp {{ batch {}, op {}, {} data bytes, {} authorization bytes }}",
            self.number,
            self.op,
            self.data.len(),
            self.auths.len()
        )
    }
}

/// Files `c` with the provider's signer as the challenger (who is paid the operator's bond).
pub async fn file_price_challenge(
    provider: &DynProvider,
    rollup: Address,
    c: &PostedOp,
) -> Result<alloy::rpc::types::TransactionReceipt, SettlerError> {
    let contract = OptioRollup::new(rollup, provider);
    transact(contract.challengePrice(
        U256::from(c.number),
        c.data.clone().into(),
        c.auths.clone().into(),
        U256::from(c.op),
    ))
    .await
}

/// Files a mark order challenge: `later`'s mark goes back before `earlier`'s attested one for
/// the same instrument.
pub async fn file_mark_order_challenge(
    provider: &DynProvider,
    rollup: Address,
    earlier: &PostedOp,
    later: &PostedOp,
) -> Result<alloy::rpc::types::TransactionReceipt, SettlerError> {
    let contract = OptioRollup::new(rollup, provider);
    transact(contract.challengeMarkOrder(earlier.on_l1(), later.on_l1())).await
}

/// Files an expiry challenge: `expiry`'s expiry op ends the trading of the instrument
/// `listing`'s listing op lists before it expires.
pub async fn file_expiry_challenge(
    provider: &DynProvider,
    rollup: Address,
    listing: &PostedOp,
    expiry: &PostedOp,
) -> Result<alloy::rpc::types::TransactionReceipt, SettlerError> {
    let contract = OptioRollup::new(rollup, provider);
    transact(contract.challengeExpiry(listing.on_l1(), expiry.on_l1())).await
}

impl PostedOp {
    /// As the rollup takes it.
    pub fn on_l1(&self) -> OptioRollup::PostedMark {
        OptioRollup::PostedMark {
            number: U256::from(self.number),
            data: self.data.clone().into(),
            auths: self.auths.clone().into(),
            mark: U256::from(self.op),
        }
    }
}

/// Records where each instrument batch `number` (decoded as `ops`, its first listing taking id
/// `first`) lists was listed: the batch, the listing's index among its listings, and the
/// instrument's expiry in ms (`None`: a perpetual).
fn record_listings(
    number: u64,
    first: u32,
    ops: &[optio_state::Op],
    listings: &mut std::collections::BTreeMap<u32, (u64, u64, Option<u64>)>,
) {
    let listed = ops.iter().filter_map(|op| match op {
        optio_state::Op::ListInstrument { spec } => Some(spec.expiry_ms()),
        _ => None,
    });
    for (j, expires) in listed.enumerate() {
        listings.insert(first + j as u32, (number, j as u64, expires));
    }
}

/// The first expiry op of batch `number` (decoded as `ops`, cut at `time_ms`) that ends an
/// instrument's trading before it expires (an option at 08:00 UTC on its date, a perpetual
/// never), with the instrument's listing (`record_listings`); the challenge is built from
/// `data_posted`.
fn audit_expiries(
    number: u64,
    time_ms: u64,
    ops: &[optio_state::Op],
    data_posted: &[(Vec<u8>, Vec<u8>)],
    listings: &std::collections::BTreeMap<u32, (u64, u64, Option<u64>)>,
) -> Option<Verdict> {
    let expired = ops.iter().filter_map(|op| match op {
        optio_state::Op::ExpireInstrument { instrument } => Some(instrument.0),
        _ => None,
    });
    for (k, instrument) in expired.enumerate() {
        let &(listed, j, expires) = listings.get(&instrument)?;
        if expires.is_some_and(|e| e <= time_ms) {
            continue;
        }
        return Some(Verdict::ExpiredEarly {
            number,
            instrument,
            why: match expires {
                Some(e) => format!("it expires at {e} ms, after the batch's time {time_ms} ms"),
                None => "a perpetual never expires".into(),
            },
            challenge: Box::new((
                posted_op(data_posted, listed, j),
                posted_op(data_posted, number, k as u64),
            )),
        });
    }
    None
}

/// The first mark of an attested batch (`number`, decoded as `ops`, with section `auths`)
/// published before the latest attested mark earlier batches committed for its instrument
/// (`latest`: instrument to that mark's publication time, batch and priced op), then `latest`
/// moved on to this batch's marks. The challenge is built from `data_posted`.
fn audit_mark_order(
    number: u64,
    ops: &[optio_state::Op],
    auths: &[u8],
    data_posted: &[(Vec<u8>, Vec<u8>)],
    latest: &mut std::collections::BTreeMap<u32, (u64, u64, u64)>,
) -> Option<Verdict> {
    let priced = ops.iter().filter(|op| optio_state::auth::is_priced(op));
    for (k, op) in priced.enumerate() {
        let optio_state::Op::Mark { instrument, .. } = op else {
            continue;
        };
        let instrument = instrument.0;
        let published = optio_state::auth::price_attestation(auths, k)?.published_ms;
        match latest.get(&instrument) {
            Some(&(before, batch, mark)) if published < before => {
                return Some(Verdict::MarkWentBack {
                    number,
                    mark: k as u64,
                    instrument,
                    why: format!(
                        "published at {published} ms, before the mark batch {batch} committed \
                         (published at {before} ms)"
                    ),
                    challenge: Box::new((
                        posted_op(data_posted, batch, mark),
                        posted_op(data_posted, number, k as u64),
                    )),
                });
            }
            _ => {
                latest.insert(instrument, (published, number, k as u64));
            }
        }
    }
    None
}

/// Op `op` of committed batch `number` with the data and section posted for it.
fn posted_op(data_posted: &[(Vec<u8>, Vec<u8>)], number: u64, op: u64) -> PostedOp {
    let (data, auths) = &data_posted[number as usize - 1];
    PostedOp {
        number,
        data: data.clone(),
        auths: auths.clone(),
        op,
    }
}

/// One committed batch as the watchtower audits it: its number, its time (ms, the engine's at
/// its cut), its posted data (`blob`, decoded as `ops`) and authorization section, the state
/// rebuilt through it, and the venue its signatures are made for.
struct Audited<'a> {
    number: u64,
    time_ms: u64,
    blob: &'a [u8],
    ops: &'a [optio_state::Op],
    auths: &'a [u8],
    state: &'a optio_state::SettlementState,
    venue: &'a optio_state::auth::Venue,
}

impl Audited<'_> {
    /// Op `op` (among its kind) of this batch, with its posted data and section.
    fn posted_op(&self, op: u64) -> PostedOp {
        PostedOp {
            number: self.number,
            data: self.blob.to_vec(),
            auths: self.auths.to_vec(),
            op,
        }
    }
}

/// The first priced op (settlement price or mark) of a batch (`blob`, decoded as `ops`, cut at
/// `time_ms`) that its posted authorization section does not attest for the oracle at
/// `oracle`.
fn audit_prices(b: &Audited<'_>, oracle: optio_types::Address) -> Option<Verdict> {
    let Audited {
        number,
        time_ms,
        ops,
        auths,
        venue,
        ..
    } = *b;
    use optio_state::auth::{self, Unattested};
    let priced = ops.iter().filter(|op| auth::is_priced(op));
    for (k, op) in priced.enumerate() {
        let checked = match auth::price_attestation(auths, k) {
            Some(a) => a.check(op, time_ms, oracle, venue),
            None => Err(Unattested::Missing),
        };
        let (what, instrument) = match op {
            optio_state::Op::Mark { instrument, .. } => ("mark", instrument.0),
            optio_state::Op::SettleInstrument { instrument, .. } => {
                ("settlement price", instrument.0)
            }
            _ => continue,
        };
        if let Err(why) = checked {
            return Some(Verdict::Unattested {
                number,
                price: k as u64,
                instrument,
                why: format!("{what}: {why}"),
                challenge: Box::new(b.posted_op(k as u64)),
            });
        }
    }
    None
}

/// A filed-ready change challenge: `challengeChange`'s arguments without an earlier change.
#[derive(Clone, PartialEq, Eq)]
pub struct ChangeChallenge {
    /// The change (`op`: its index among the batch's account changes), with the batch's posted
    /// data and section.
    pub posted: PostedOp,
    /// The account's leaf opened under the batch's root (its owner).
    pub opening: optio_state::ExitProof,
}

impl std::fmt::Debug for ChangeChallenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ChangeChallenge {{ {:?}, account {} }}",
            self.posted, self.opening.account.0
        )
    }
}

/// Files `c` with the provider's signer as the challenger (who is paid the operator's bond).
pub async fn file_change_challenge(
    provider: &DynProvider,
    rollup: Address,
    c: &ChangeChallenge,
) -> Result<alloy::rpc::types::TransactionReceipt, SettlerError> {
    let contract = OptioRollup::new(rollup, provider);
    let none = OptioRollup::PostedMark {
        number: U256::ZERO,
        data: Default::default(),
        auths: Default::default(),
        mark: U256::ZERO,
    };
    transact(contract.challengeChange(none, c.posted.on_l1(), opening_call(&c.opening))).await
}

/// A filed-ready replay challenge: `challengeChange`'s arguments with an earlier change.
#[derive(Clone, PartialEq, Eq)]
pub struct ReplayChallenge {
    /// The earlier change (`op`: its index among its batch's account changes).
    pub earlier: PostedOp,
    /// The change that replays it.
    pub later: PostedOp,
    /// The account's leaf opened under the later change's batch root (its owner).
    pub opening: optio_state::ExitProof,
}

impl std::fmt::Debug for ReplayChallenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ReplayChallenge {{ {:?} replayed by {:?}, account {} }}",
            self.earlier, self.later, self.opening.account.0
        )
    }
}

/// Files `c` with the provider's signer as the challenger (who is paid the operator's bond).
pub async fn file_replay_challenge(
    provider: &DynProvider,
    rollup: Address,
    c: &ReplayChallenge,
) -> Result<alloy::rpc::types::TransactionReceipt, SettlerError> {
    let contract = OptioRollup::new(rollup, provider);
    transact(contract.challengeChange(c.earlier.on_l1(), c.later.on_l1(), opening_call(&c.opening)))
        .await
}

/// Each signed account change seen so far, by account and nonce: its batch, its index among
/// the batch's changes, and its signature's expiry (s).
type SignedChanges = std::collections::BTreeMap<(u32, u64), (u64, u64, u64)>;

/// The first account change of a batch (`blob`, decoded as `ops`, cut at `time_ms`, already
/// applied to `state`) that its posted authorization section does not sign by the account's
/// owner, or that replays a signed change of an earlier batch (`seen`, which records this
/// batch's; `posted`: every batch's data and section) or of this one.
fn audit_changes(
    b: &Audited<'_>,
    seen: &mut SignedChanges,
    posted: &[(Vec<u8>, Vec<u8>)],
) -> Option<Verdict> {
    let Audited {
        number,
        time_ms,
        ops,
        auths,
        state,
        venue,
        ..
    } = *b;
    use optio_state::auth::{self, Unsigned};
    let changes: Vec<&optio_state::Op> = ops.iter().filter(|op| auth::is_change(op)).collect();
    for (k, op) in changes.iter().enumerate() {
        let account = op.accounts()[0];
        let owner = state.accounts().get(account.0 as usize)?.owner;
        let entry = auth::change_attestation(auths, k);
        let checked = match entry {
            Some(a) => a.check(op, owner, time_ms, venue),
            None => Err(Unsigned::Missing),
        };
        if let (Ok(()), Some(a)) = (&checked, entry) {
            let earlier = seen.insert((account.0, a.nonce), (number, k as u64, a.expiry_s));
            if let Some((n, j, expiry_s)) = earlier
                && u128::from(time_ms) <= u128::from(expiry_s) * 1_000
            {
                return Some(Verdict::ChangeReplayed {
                    number,
                    change: k as u64,
                    account: account.0,
                    why: format!(
                        "it replays change {j} of batch {n} (nonce {}, its signature live until {expiry_s} s)",
                        a.nonce
                    ),
                    challenge: Box::new(ReplayChallenge {
                        earlier: posted_op(posted, n, j),
                        later: b.posted_op(k as u64),
                        opening: state.exit_proof(account).expect("the account exists"),
                    }),
                });
            }
        }
        if let Err(why) = checked {
            let what = match op {
                optio_state::Op::SessionKey { .. } => "session key change",
                _ => "margin mode change",
            };
            return Some(Verdict::UnsignedChange {
                number,
                change: k as u64,
                account: account.0,
                why: format!("{what}: {why}"),
                challenge: Box::new(ChangeChallenge {
                    posted: b.posted_op(k as u64),
                    opening: state.exit_proof(account).expect("the account exists"),
                }),
            });
        }
    }
    None
}

/// A filed-ready order challenge: `challengeOrder`'s arguments.
#[derive(Clone, PartialEq, Eq)]
pub struct OrderChallenge {
    /// Fill sides of the order by batch, ascending.
    pub parts: Vec<FillSides>,
    /// The listing of the order's instrument (its fee rates).
    pub listing: PostedOp,
    /// The account's leaf opened under the last part's batch root.
    pub opening: optio_state::ExitProof,
}

/// One batch's share of an order challenge.
#[derive(Clone, PartialEq, Eq)]
pub struct FillSides {
    /// Batch.
    pub number: u64,
    /// Its posted data.
    pub data: Vec<u8>,
    /// Its posted authorization section.
    pub auths: Vec<u8>,
    /// Fill sides there (`2 * fill`, plus 1 for the taker's side), ascending.
    pub sides: Vec<u64>,
}

impl std::fmt::Debug for OrderChallenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sides: Vec<String> = self
            .parts
            .iter()
            .map(|p| format!("batch {} sides {:?}", p.number, p.sides))
            .collect();
        write!(
            f,
            "OrderChallenge {{ {}, listing in batch {}, account {} }}",
            sides.join(", "),
            self.listing.number,
            self.opening.account.0
        )
    }
}

/// A filed-ready authorization challenge: `challengeAuthorization`'s arguments.
#[derive(Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Batch.
    pub number: u64,
    /// Its posted data.
    pub data: Vec<u8>,
    /// Its posted authorization section.
    pub auths: Vec<u8>,
    /// Fill index.
    pub fill: u64,
    /// Which side.
    pub taker: bool,
    /// The account's leaf opened under the batch's root.
    pub opening: optio_state::ExitProof,
    /// The account's session keys there, in address order, with their expiry (ms).
    pub keys: Vec<(optio_types::Address, u64)>,
}

impl std::fmt::Debug for Challenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Challenge {{ batch {}, fill {} ({}), {} data bytes, {} authorization bytes, account {} }}",
            self.number,
            self.fill,
            if self.taker { "taker" } else { "maker" },
            self.data.len(),
            self.auths.len(),
            self.opening.account.0
        )
    }
}

/// What the state root of an exit proof hashes (the `state` of every opening against it).
pub fn state_opening(proof: &optio_state::ExitProof) -> OptioRollup::StateOpening {
    let u = field_word;
    OptioRollup::StateOpening {
        accountsRoot: u(&proof.accounts_root),
        instrumentsRoot: u(&proof.instruments_root),
        insurance: proof.insurance.0,
        feePool: proof.fee_pool.0,
        accounts: proof.accounts,
        instruments: proof.instruments,
        oracleMs: proof.oracle_ms,
    }
}

/// The `AccountOpening` argument of a challenge: the account's leaf and its proof from an exit
/// proof (the positions are not needed).
pub fn opening_call(proof: &optio_state::ExitProof) -> OptioRollup::AccountOpening {
    let u = field_word;
    OptioRollup::AccountOpening {
        state: state_opening(proof),
        owner: Address::from(proof.leaf.owner.0),
        mode: proof.leaf.mode.code(),
        keysHash: u(&proof.leaf.keys_hash),
        nonce: proof.leaf.nonce,
        positions: proof.leaf.positions,
        liability: alloy::primitives::U160::from(proof.leaf.liability),
        collateral: proof.leaf.collateral.0,
        positionsRoot: u(&proof.leaf.positions_root),
        since: proof.leaf.since,
        proof: proof.account_proof.siblings.iter().map(u).collect(),
    }
}

/// The `SessionKey[]` argument of a challenge: an account's session keys as its leaf commits
/// them (address order).
pub fn keys_call(keys: &[(optio_types::Address, u64)]) -> Vec<OptioRollup::SessionKey> {
    keys.iter()
        .map(|(key, expiry)| OptioRollup::SessionKey {
            key: Address::from(key.0),
            expiryMs: *expiry,
        })
        .collect()
}

/// Files `c` with the provider's signer as the challenger (who is paid the operator's bond).
pub async fn file_challenge(
    provider: &DynProvider,
    rollup: Address,
    c: &Challenge,
) -> Result<alloy::rpc::types::TransactionReceipt, SettlerError> {
    let contract = OptioRollup::new(rollup, provider);
    transact(contract.challengeAuthorization(
        OptioRollup::SideChallenge {
            number: U256::from(c.number),
            data: c.data.clone().into(),
            auths: c.auths.clone().into(),
            fill: U256::from(c.fill),
            taker: c.taker,
        },
        opening_call(&c.opening),
        keys_call(&c.keys),
    ))
    .await
}

/// Files `c` with the provider's signer as the challenger (who is paid the operator's bond).
pub async fn file_order_challenge(
    provider: &DynProvider,
    rollup: Address,
    c: &OrderChallenge,
) -> Result<alloy::rpc::types::TransactionReceipt, SettlerError> {
    let contract = OptioRollup::new(rollup, provider);
    let parts = c
        .parts
        .iter()
        .map(|p| OptioRollup::FillSides {
            number: U256::from(p.number),
            data: p.data.clone().into(),
            auths: p.auths.clone().into(),
            sides: p.sides.iter().map(|&s| U256::from(s)).collect(),
        })
        .collect();
    transact(contract.challengeOrder(parts, c.listing.on_l1(), opening_call(&c.opening))).await
}

/// What one signed order (by digest) has filled so far: its size and fees in all, and its fill
/// sides (batch, side, size, fee).
#[derive(Debug, Default)]
struct OrderFill {
    filled: i64,
    fees: i128,
    sides: Vec<(u64, u64, i64, i64)>,
}

/// Per signed order, by EIP-712 digest.
type OrderFills = std::collections::BTreeMap<[u8; 32], OrderFill>;

/// The order challenge for an order whose fill sides (`sides`, oldest first) break it: the
/// latest of them that break it by themselves (`breaks(filled, fees, count)`), grouped by batch.
fn order_challenge(
    sides: &[(u64, u64, i64, i64)],
    breaks: impl Fn(i64, i128, u64) -> bool,
    posted: &[(Vec<u8>, Vec<u8>)],
    listing: PostedOp,
    opening: optio_state::ExitProof,
) -> OrderChallenge {
    let (mut filled, mut fees) = (0, 0);
    let mut take = Vec::new();
    for &(batch, side, qty, fee) in sides.iter().rev() {
        take.push((batch, side));
        (filled, fees) = (filled + qty, fees + i128::from(fee));
        if breaks(filled, fees, take.len() as u64) {
            break;
        }
    }
    take.reverse();
    let mut parts: Vec<FillSides> = Vec::new();
    for (batch, side) in take {
        match parts.last_mut() {
            Some(p) if p.number == batch => p.sides.push(side),
            _ => {
                let (data, auths) = &posted[batch as usize - 1];
                parts.push(FillSides {
                    number: batch,
                    data: data.clone(),
                    auths: auths.clone(),
                    sides: vec![side],
                });
            }
        }
    }
    OrderChallenge {
        parts,
        listing,
        opening,
    }
}

/// The first fill side of a batch (`blob`, decoded as `ops`, applied to `state`) that its posted
/// authorization section does not authorize, or whose order's fills over all batches so far
/// (`filled`, by order digest; `posted`: every batch's data and section) break it: add up
/// beyond its signed amount, or pay fees (at the rates of the instrument's spec) past its
/// signed fee cap. `listings` gives each instrument's listing (`record_listings`), whose posted
/// spec the contract reads the rates from.
fn audit_authorizations(
    b: &Audited<'_>,
    filled: &mut OrderFills,
    posted: &[(Vec<u8>, Vec<u8>)],
    listings: &std::collections::BTreeMap<u32, (u64, u64, Option<u64>)>,
) -> Option<Verdict> {
    let Audited {
        number,
        time_ms,
        blob,
        ops,
        auths,
        state,
        venue,
    } = *b;
    use optio_state::auth::{self, Unauthorized};
    let sides = auth::fill_sides(ops);
    for (i, side) in sides.iter().enumerate() {
        let account = state.accounts().get(side.account.0 as usize)?;
        let (owner, keys) = (account.owner, &account.keys);
        let opening = || state.exit_proof(side.account).expect("the account exists");
        let checked = match auth::record(auths, i) {
            Some(r) => r.check(side, owner, keys, time_ms, venue).map(|()| r),
            None => Err(Unauthorized::Missing),
        };
        let r = match checked {
            Err(why) => {
                return Some(Verdict::Unauthorized {
                    number,
                    fill: i as u64 / 2,
                    taker: i % 2 == 1,
                    account: side.account.0,
                    why: why.to_string(),
                    challenge: Box::new(Challenge {
                        number,
                        data: blob.to_vec(),
                        auths: auths.to_vec(),
                        fill: i as u64 / 2,
                        taker: i % 2 == 1,
                        opening: opening(),
                        keys: keys.iter().map(|(k, e)| (*k, *e)).collect(),
                    }),
                });
            }
            Ok(r) => r,
        };
        let spec = &state.instruments().get(side.instrument.0 as usize)?.spec;
        let fee = auth::side_fee(spec, side, i % 2 == 1);
        let digest = r.digest(side, owner, venue).unwrap_or_default();
        let order = filled.entry(digest).or_default();
        order.filled += side.qty.0;
        order.fees += i128::from(fee);
        order.sides.push((number, i as u64, side.qty.0, fee));
        let overcharged = |filled, fees, n| auth::overcharged(fees, r.max_fee, r.domain, filled, n);
        let why = if order.filled > r.amount.0 {
            format!(
                "its order (nonce {}) is filled {} over {} fills, beyond its signed amount {}",
                r.nonce,
                optio_types::Qty(order.filled),
                order.sides.len(),
                r.amount
            )
        } else if overcharged(order.filled, order.fees, order.sides.len() as u64) {
            format!(
                "its order (nonce {}) paid fees of {} over {} fills ({} filled), beyond its signed fee cap {} ({})",
                r.nonce,
                optio_types::Amount(i64::try_from(order.fees).unwrap_or(i64::MAX)),
                order.sides.len(),
                optio_types::Qty(order.filled),
                optio_types::Amount(r.max_fee),
                if r.domain == auth::domain::OPTIO {
                    "in total"
                } else {
                    "per contract"
                }
            )
        } else {
            continue;
        };
        let amount = r.amount.0;
        let breaks = |q, f, n| q > amount || overcharged(q, f, n);
        let &(listed, j, _) = listings.get(&side.instrument.0)?;
        return Some(Verdict::OrderBroken {
            number,
            account: side.account.0,
            why,
            challenge: Box::new(order_challenge(
                &order.sides,
                breaks,
                posted,
                posted_op(posted, listed, j),
                opening(),
            )),
        });
    }
    None
}

/// What a rollup judges on challenge besides its proofs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judging {
    /// Every fill against its orders' posted signatures.
    pub authorizations: bool,
    /// Every mark against this oracle's posted signature.
    pub oracle: Option<Address>,
    /// Seconds a batch's time may lie ahead of (`.0`) and behind (`.1`) the block committing it
    /// (checked at commit).
    pub time_bounds: (u64, u64),
}

/// What `rollup` judges.
pub async fn judging(provider: &DynProvider, rollup: Address) -> Result<Judging, SettlerError> {
    let contract = OptioRollup::new(rollup, provider);
    let authorizations = contract.authorizations().call().await.map_err(rpc)?;
    let judge = contract.judge().call().await.map_err(rpc)?;
    let oracle = OptioJudge::new(judge, provider)
        .oracle()
        .call()
        .await
        .map_err(rpc)?;
    let lead = contract.maxBatchLead().call().await.map_err(rpc)?;
    let lag = contract.maxBatchLag().call().await.map_err(rpc)?;
    let seconds = |v: U256| u64::try_from(v).unwrap_or(u64::MAX);
    Ok(Judging {
        authorizations,
        oracle: (oracle != Address::ZERO).then_some(oracle),
        time_bounds: (seconds(lead), seconds(lag)),
    })
}

/// The watchtower: follows L1 alone, rebuilds the state from every committed batch's posted
/// data and compares each committed root, checks every priority operation the data serves
/// against the L1 queue and the header's served count, and checks the ops commitment posted
/// with each batch against the one its data gives; on a rollup with the challenges, every fill
/// against its signed orders, every account change against its owner's signature and every
/// mark against the oracle's signature. Stops at the first
/// batch whose data is unusable.
pub async fn verify_l1(
    provider: &DynProvider,
    rollup: Address,
) -> Result<Vec<Verdict>, SettlerError> {
    Ok(verify_l1_rebuilt(provider, rollup).await?.0)
}

/// The state `verify_l1` rebuilt from L1 data, for the checks that read it afterwards
/// (`audit_vault`).
pub struct Rebuilt {
    /// After the last batch applied.
    pub state: optio_state::SettlementState,
    /// Each batch's withdrawals as L1 derives them from its words (`optio_state::withdrawals`),
    /// batch 1 first.
    pub withdrawals: Vec<Vec<optio_state::Withdrawal>>,
    /// Every committed batch was applied (none's data was unusable).
    pub complete: bool,
    /// Every committed batch's posted data, batch 1 first (read once from L1; the checks that
    /// need an earlier state rebuild it from these, `state_through`).
    pub blobs: Vec<Vec<u8>>,
    /// The block the rollup was created in (`creation_block`), where the later log scans of the
    /// same rollup start (`audit_vault`, `accepted_proofs`) instead of searching for it again.
    pub created: u64,
}

/// `verify_l1`, with the state it rebuilt.
pub async fn verify_l1_rebuilt(
    provider: &DynProvider,
    rollup: Address,
) -> Result<(Vec<Verdict>, Rebuilt), SettlerError> {
    let contract = OptioRollup::new(rollup, provider);
    let committed =
        u64::try_from(contract.committedBatches().call().await.map_err(rpc)?).map_err(rpc)?;
    let created = creation_block(provider, rollup).await?;
    let data_posted = posted_from_l1_from(provider, rollup, created, committed).await?;
    let Judging {
        authorizations: checks_authorizations,
        oracle,
        ..
    } = judging(provider, rollup).await?;
    let oracle = oracle.map(|o| optio_types::Address(o.into_array()));
    let venue = optio_state::auth::Venue {
        chain_id: provider.get_chain_id().await.map_err(rpc)?,
        rollup: optio_types::Address(rollup.into_array()),
    };
    let mut filled = std::collections::BTreeMap::new();
    let mut signed_changes = SignedChanges::new();
    let mut latest_marks = std::collections::BTreeMap::new();
    let mut listings = std::collections::BTreeMap::new();
    let mut state = optio_state::SettlementState::new();
    let mut verdicts = Vec::new();
    let mut withdrawals = Vec::new();
    let mut after = (0u64, 0u64);
    for (i, (blob, auths)) in data_posted.iter().enumerate() {
        let number = i as u64 + 1;
        let mut header = None;
        match optio_state::rebuild_after([blob.as_slice()], &mut state, after, |h| {
            header = Some(*h)
        }) {
            Ok(end) => after = end,
            Err(e) => {
                verdicts.push(Verdict::BadData {
                    number,
                    why: e.to_string(),
                });
                break;
            }
        }
        let rebuilt = header
            .map(|h| U256::from_be_bytes(optio_state::poseidon::to_bytes(&h.new_root)))
            .unwrap_or_default();
        let on_chain = contract
            .batches(U256::from(number))
            .call()
            .await
            .map_err(rpc)?;
        // Decoded once for both audits (the rebuild above has applied it).
        let (meta, ops) = optio_state::decode(blob).map_err(rpc)?;
        withdrawals.push(optio_state::withdrawals(&ops));
        record_listings(number, meta.instruments, &ops, &mut listings);
        let audit = audit_priority(&contract, &ops, &state, on_chain.priorityServed).await?;
        let on_chain = on_chain.root;
        let data = header
            .map(|h| U256::from_be_bytes(optio_state::poseidon::to_bytes(&h.ops_commitment)))
            .unwrap_or_default();
        let posted = contract
            .opsCommitment(U256::from(number))
            .call()
            .await
            .map_err(rpc)?;
        let audited = Audited {
            number,
            time_ms: meta.time_ms,
            blob,
            ops: &ops,
            auths,
            state: &state,
            venue: &venue,
        };
        verdicts.push(if on_chain != rebuilt {
            Verdict::Differs {
                number,
                committed: on_chain,
                rebuilt,
            }
        } else if let Some(why) = audit {
            Verdict::Priority { number, why }
        } else if posted != data {
            Verdict::CommitmentMismatch {
                number,
                posted,
                data,
            }
        } else if let Some(v) = checks_authorizations
            .then(|| audit_authorizations(&audited, &mut filled, &data_posted, &listings))
            .flatten()
        {
            v
        } else if let Some(v) = checks_authorizations
            .then(|| audit_changes(&audited, &mut signed_changes, &data_posted))
            .flatten()
        {
            v
        } else if let Some(v) = oracle.and_then(|o| audit_prices(&audited, o)) {
            v
        } else if let Some(v) = oracle
            .is_some()
            .then(|| audit_mark_order(number, &ops, auths, &data_posted, &mut latest_marks))
            .flatten()
        {
            v
        } else if let Some(v) = audit_expiries(number, meta.time_ms, &ops, &data_posted, &listings)
        {
            v
        } else {
            Verdict::Agrees(number)
        });
    }
    let complete = withdrawals.len() == data_posted.len();
    Ok((
        verdicts,
        Rebuilt {
            state,
            withdrawals,
            complete,
            blobs: data_posted.into_iter().map(|(blob, _)| blob).collect(),
            created,
        },
    ))
}

/// What is wrong with how batch data `blob` (already applied to `state`) serves the L1 priority
/// queue, if anything: each served operation must be the queued one, with its amount and
/// account (a deposit to an account that did not exist opens one for the depositor), and the
/// header's served count must be where the data leaves the queue.
async fn audit_priority(
    contract: &OptioRollup::OptioRollupInstance<&DynProvider>,
    ops: &[optio_state::Op],
    state: &optio_state::SettlementState,
    header_served: u64,
) -> Result<Option<String>, SettlerError> {
    for op in ops {
        if let optio_state::Op::L1Close {
            priority,
            backstop,
            account,
            instrument,
            requester,
            ..
        } = *op
        {
            let queued = contract.priorityOps(U256::from(priority)).call().await;
            let recorded = contract.backstop().call().await.map_err(rpc)?;
            let as_queued = queued.is_ok_and(|q| {
                PriorityKind::from_l1(q.kind) == Some(PriorityKind::ForcedClose)
                    && q.account == account.0
                    && q.amount == U256::from(instrument.0)
                    && q.owner.into_array() == requester.0
            });
            if !as_queued || recorded != backstop.0 {
                return Ok(Some(format!(
                    "priority operation {priority} served as a close of account {} in instrument {} for {requester} against account {}; L1 queued another, or its backstop is account {recorded}",
                    account.0, instrument.0, backstop.0
                )));
            }
            continue;
        }
        let (priority, account, amount, kind) = match *op {
            optio_state::Op::L1Deposit {
                priority,
                account,
                amount,
            } => (priority, account.0, amount.0, PriorityKind::Deposit),
            optio_state::Op::L1Withdrawal {
                priority,
                account,
                amount,
                ..
            } => (
                priority,
                account.0,
                amount.0,
                PriorityKind::ForcedWithdrawal,
            ),
            _ => continue,
        };
        let queued = contract
            .priorityOps(U256::from(priority))
            .call()
            .await
            .map_err(|_| SettlerError::Rpc(format!("priority operation {priority} not on L1")));
        let Ok(queued) = queued else {
            return Ok(Some(format!(
                "serves priority operation {priority}, which L1 never queued"
            )));
        };
        let owner_of = |a: u32| {
            state
                .accounts()
                .get(a as usize)
                .map(|x| Address::from(x.owner.0))
        };
        let wrong = PriorityKind::from_l1(queued.kind) != Some(kind)
            || match kind {
                PriorityKind::Deposit => {
                    U256::from(amount.max(0) as u64) != queued.amount
                        || (account != queued.account && owner_of(account) != Some(queued.owner))
                }
                PriorityKind::ForcedWithdrawal => {
                    account != queued.account
                        || (amount > 0 && owner_of(account) != Some(queued.owner))
                }
                PriorityKind::ForcedClose => true,
            };
        if wrong {
            return Ok(Some(format!(
                "priority operation {priority} served as account {account}, amount {amount}; L1 queued kind {}, account {}, amount {}, from {}",
                queued.kind, queued.account, queued.amount, queued.owner
            )));
        }
    }
    if header_served != state.priority_served() {
        return Ok(Some(format!(
            "header says {header_served} priority operations served, the data serves {}",
            state.priority_served()
        )));
    }
    Ok(None)
}

/// A field element as a contract word.
fn field_word(f: &optio_state::Fr) -> U256 {
    U256::from_be_bytes(optio_state::poseidon::to_bytes(f))
}

/// Gas an exit call may plan for (under EIP-7825's 2^24 cap with room), by `exit_gas`'s
/// count: past it, the account's instruments not opened yet are opened first
/// (`OptioTrees.openInstruments`), and past it again with every instrument opened, its
/// positions tree is built first (`OptioTrees.buildPositions`).
pub const EXIT_GAS: u64 = 14_000_000;
/// An exit's gas besides its positions (the account's proof, the payment), about 1.2M.
pub const EXIT_BASE_GAS: u64 = 1_300_000;
/// Per node of the positions tree an exit rebuilds (a Poseidon(4), about 77k).
pub const TREE_NODE_GAS: u64 = 80_000;
/// Gas one `openInstruments` call may plan for (under the 2^24 cap with room): per leaf its
/// Poseidon(5), its stored mark and event and its calldata (`OPEN_LEAF_GAS`), per node of the
/// opening's shared paths a Poseidon(4) and its siblings' calldata (`OPEN_NODE_GAS`).
pub const OPEN_GAS: u64 = 12_000_000;
/// See `OPEN_GAS`.
pub const OPEN_LEAF_GAS: u64 = 130_000;
/// See `OPEN_GAS`.
pub const OPEN_NODE_GAS: u64 = 82_000;

/// The nodes a sparse tree of the instruments' depth over leaves at `ids` (strictly increasing)
/// hashes, one per parent per level: what an opening of those leaves hashes with their paths
/// shared, and what an exit's positions tree over them rebuilds (`positions_nodes` without
/// the hashing).
fn tree_nodes(ids: impl Iterator<Item = u64>) -> u64 {
    let mut level: Vec<u64> = ids.collect();
    let mut nodes = 0;
    for _ in 0..optio_state::leaf::INSTRUMENT_DEPTH / 2 {
        level.dedup_by_key(|i| *i >> 2);
        level.iter_mut().for_each(|i| *i >>= 2);
        nodes += level.len() as u64;
    }
    nodes
}

/// The gas of proving the instrument leaves of `positions` (indices into `proof.positions`, by
/// instrument id) together, by `OPEN_LEAF_GAS` and `OPEN_NODE_GAS`.
fn leaves_gas(proof: &optio_state::ExitProof, positions: &[usize]) -> u64 {
    positions.len() as u64 * OPEN_LEAF_GAS
        + tree_nodes(positions.iter().map(|&k| u64::from(proof.positions[k].0.0))) * OPEN_NODE_GAS
}

/// `positions` (indices into `proof.positions`, by instrument id) cut into openings that each
/// fit `OPEN_GAS`: adjacent instruments share their paths, so a run of them opens in one call
/// (the devnet's 58 in one, about 9.5M gas), instruments far apart about 35 a call.
pub fn opening_chunks(proof: &optio_state::ExitProof, positions: &[usize]) -> Vec<Vec<usize>> {
    let mut chunks: Vec<Vec<usize>> = Vec::new();
    for &k in positions {
        match chunks.last_mut() {
            Some(chunk) if leaves_gas(proof, &[chunk.as_slice(), &[k]].concat()) <= OPEN_GAS => {
                chunk.push(k)
            }
            _ => chunks.push(vec![k]),
        }
    }
    chunks
}

/// The gas `exit_call_opened(proof, opened)` plans for: its base, the leaves of the
/// instruments not opened, and the positions tree it rebuilds.
pub fn exit_gas(proof: &optio_state::ExitProof, opened: &[bool]) -> u64 {
    let proven: Vec<usize> = (0..opened.len()).filter(|&k| !opened[k]).collect();
    let ids = proof.positions.iter().map(|(i, ..)| u64::from(i.0));
    EXIT_BASE_GAS + leaves_gas(proof, &proven) + tree_nodes(ids) * TREE_NODE_GAS
}

/// `ExitProof::instrument_siblings` as contract words.
pub fn instrument_siblings(proof: &optio_state::ExitProof, positions: &[usize]) -> Vec<U256> {
    proof
        .instrument_siblings(positions)
        .iter()
        .map(field_word)
        .collect()
}

/// The call that opens `positions` (indices into `proof.positions`, by instrument id) of an
/// exit proof's instruments together against its root.
pub fn opening_of(
    proof: &optio_state::ExitProof,
    positions: &[usize],
) -> OptioTrees::InstrumentsOpening {
    let u = field_word;
    OptioTrees::InstrumentsOpening {
        state: state_opening(proof),
        leaves: positions
            .iter()
            .map(|&k| {
                let (instrument, _, _, leaf, _) = &proof.positions[k];
                OptioTrees::InstrumentLeaf {
                    instrument: instrument.0,
                    specHash: u(&leaf.spec_hash),
                    status: leaf.status,
                    mark: leaf.mark.0,
                    riskHash: u(&leaf.risk_hash),
                    settlementPrice: leaf.settlement_price.0,
                }
            })
            .collect(),
        siblings: instrument_siblings(proof, positions),
    }
}

/// The exit call for `proof` (the Rust exit proof in the contract's ABI), every position with
/// its instrument's proof.
pub fn exit_call(proof: &optio_state::ExitProof) -> OptioRollup::ExitProof {
    exit_call_opened(proof, &vec![false; proof.positions.len()])
}

/// The exit call for `proof`, position `i` valued at its instrument's opened mark when
/// `opened[i]` (the instrument was opened on L1), the others' leaves proven together.
pub fn exit_call_opened(proof: &optio_state::ExitProof, opened: &[bool]) -> OptioRollup::ExitProof {
    let u = field_word;
    let positions = proof
        .positions
        .iter()
        .zip(opened)
        .map(
            |((instrument, qty, _, leaf, _), &opened)| OptioRollup::Position {
                instrument: instrument.0,
                qty: qty.0,
                opened,
                specHash: u(&leaf.spec_hash),
                status: leaf.status,
                mark: leaf.mark.0,
                riskHash: u(&leaf.risk_hash),
                settlementPrice: leaf.settlement_price.0,
            },
        )
        .collect();
    let proven: Vec<usize> = (0..opened.len()).filter(|&k| !opened[k]).collect();
    exit_call_with(
        proof,
        positions,
        instrument_siblings(proof, &proven),
        U256::ZERO,
    )
}

/// The exit call for `proof` naming its account's positions root, built on L1 beforehand
/// (`OptioTrees.buildPositions`, every node of `positions_nodes`): it carries no position.
pub fn exit_call_built(proof: &optio_state::ExitProof) -> OptioRollup::ExitProof {
    exit_call_with(
        proof,
        Vec::new(),
        Vec::new(),
        field_word(&proof.leaf.positions_root),
    )
}

fn exit_call_with(
    proof: &optio_state::ExitProof,
    positions: Vec<OptioRollup::Position>,
    instrument_siblings: Vec<U256>,
    positions_root: U256,
) -> OptioRollup::ExitProof {
    let u = field_word;
    OptioRollup::ExitProof {
        account: proof.account.0,
        state: state_opening(proof),
        mode: proof.leaf.mode.code(),
        keysHash: u(&proof.leaf.keys_hash),
        nonce: proof.leaf.nonce,
        liability: alloy::primitives::U160::from(proof.leaf.liability),
        collateral: proof.leaf.collateral.0,
        since: proof.leaf.since,
        accountProof: proof.account_proof.siblings.iter().map(u).collect(),
        positions,
        instrumentSiblings: instrument_siblings,
        positionsRoot: positions_root,
    }
}

/// Positions-tree nodes built per transaction (a hash and a stored record each: 9.9M gas).
pub const BUILD_CHUNK: usize = 96;

/// Every non-empty node of the positions tree of `proof`'s account, bottom up: what L1 builds
/// for an exit that names its positions root.
pub fn positions_nodes(proof: &optio_state::ExitProof) -> Vec<optio_state::Node> {
    let leaves: Vec<(u64, optio_state::Fr)> = proof
        .positions
        .iter()
        .map(|(instrument, qty, ..)| {
            (
                u64::from(instrument.0),
                optio_state::poseidon::from_i64(qty.0),
            )
        })
        .collect();
    optio_state::sparse_nodes(optio_state::leaf::INSTRUMENT_DEPTH, &leaves)
        .expect("instrument ids lie in the instruments tree")
}

/// Where `OptioTrees` records a built node: `keccak256(abi.encode(height, index, hash))`.
pub fn built_node_key(node: &optio_state::Node) -> alloy::primitives::B256 {
    let mut words = [0u8; 96];
    words[..32].copy_from_slice(&U256::from(node.height).to_be_bytes::<32>());
    words[32..64].copy_from_slice(&U256::from(node.index).to_be_bytes::<32>());
    words[64..].copy_from_slice(&field_word(&node.hash).to_be_bytes::<32>());
    alloy::primitives::keccak256(words)
}

/// The call that builds `nodes` on L1.
pub fn build_call(nodes: &[optio_state::Node]) -> Vec<OptioTrees::PositionsNode> {
    nodes
        .iter()
        .map(|n| OptioTrees::PositionsNode {
            height: n.height,
            index: u32::try_from(n.index).expect("a positions-tree index fits 32 bits"),
            children: n.children.map(|c| field_word(&c)),
        })
        .collect()
}

/// The escape hatch from L1 data alone: reads the finalized batches' blobs from the chain,
/// rebuilds the state, builds `account`'s exit proof against the last finalized root and
/// submits it from `owner` (the account's owner; `provider` must be able to send for it).
/// Returns the amount paid.
pub async fn exit_from_l1(
    provider: &DynProvider,
    rollup: Address,
    account: u32,
    owner: Address,
) -> Result<U256, SettlerError> {
    let state = finalized_state(provider, rollup).await?;
    exit_account(provider, rollup, &state, account, owner).await
}

/// `exit_from_l1` for every account `owner` holds in the last finalized state; returns each
/// account with the amount paid (an error if it holds none).
pub async fn exit_all_from_l1(
    provider: &DynProvider,
    rollup: Address,
    owner: Address,
) -> Result<Vec<(u32, U256)>, SettlerError> {
    let state = finalized_state(provider, rollup).await?;
    let mine: Vec<u32> = (0..state.accounts().len() as u32)
        .filter(|a| Address::from(state.accounts()[*a as usize].owner.0) == owner)
        .collect();
    if mine.is_empty() {
        return Err(SettlerError::Rpc(format!(
            "{owner} holds no account in the finalized state"
        )));
    }
    let mut paid = Vec::new();
    for account in mine {
        paid.push((
            account,
            exit_account(provider, rollup, &state, account, owner).await?,
        ));
    }
    Ok(paid)
}

/// After a freeze: returns `owner`'s deposits that the finalized state never served (the
/// contract's `reclaimDeposit`), each once; the ids and amounts returned.
pub async fn reclaim_deposits_from_l1(
    provider: &DynProvider,
    rollup: Address,
    owner: Address,
) -> Result<Vec<(u64, U256)>, SettlerError> {
    let contract = OptioRollup::new(rollup, provider);
    if !contract.frozen().call().await.map_err(rpc)? {
        return Ok(Vec::new());
    }
    let served =
        u64::try_from(contract.priorityServed().call().await.map_err(rpc)?).map_err(rpc)?;
    let count = u64::try_from(contract.priorityCount().call().await.map_err(rpc)?).map_err(rpc)?;
    let mut returned = Vec::new();
    for id in served..count {
        let op = contract
            .priorityOps(U256::from(id))
            .call()
            .await
            .map_err(rpc)?;
        if PriorityKind::from_l1(op.kind) != Some(PriorityKind::Deposit)
            || op.owner != owner
            || contract
                .reclaimed(U256::from(id))
                .call()
                .await
                .map_err(rpc)?
        {
            continue;
        }
        transact(contract.reclaimDeposit(U256::from(id)).from(owner))
            .await
            .map_err(|e| SettlerError::Rpc(format!("reclaiming deposit {id}: {e}")))?;
        returned.push((id, op.amount));
    }
    Ok(returned)
}

/// The state after the last finalized batch, rebuilt from L1 data alone.
async fn finalized_state(
    provider: &DynProvider,
    rollup: Address,
) -> Result<optio_state::SettlementState, SettlerError> {
    let finalized = last_finalized(&OptioRollup::new(rollup, provider)).await?;
    state_through(
        &blobs_from_l1(provider, rollup, finalized).await?,
        finalized,
    )
}

/// The state after the first `batches` of `blobs` (batch 1 first).
pub(crate) fn state_through(
    blobs: &[Vec<u8>],
    batches: u64,
) -> Result<optio_state::SettlementState, SettlerError> {
    let mut state = optio_state::SettlementState::new();
    let first = blobs.get(..batches as usize).ok_or_else(|| {
        SettlerError::Batch(batches, format!("only {} batches posted", blobs.len()))
    })?;
    optio_state::rebuild(first.iter().map(Vec::as_slice), &mut state, |_| {})
        .map_err(|e| SettlerError::Batch(batches, e.to_string()))?;
    Ok(state)
}

async fn exit_account(
    provider: &DynProvider,
    rollup: Address,
    state: &optio_state::SettlementState,
    account: u32,
    owner: Address,
) -> Result<U256, SettlerError> {
    let proof = state
        .exit_proof(optio_types::AccountId(account))
        .ok_or_else(|| SettlerError::Rpc(format!("no account {account} in the finalized state")))?;
    let contract = OptioRollup::new(rollup, provider);
    let trees = OptioTrees::new(contract.trees().call().await.map_err(rpc)?, provider);
    let mut opened = Vec::with_capacity(proof.positions.len());
    for (instrument, ..) in &proof.positions {
        opened.push(
            trees
                .openedMarks(instrument.0)
                .call()
                .await
                .map_err(rpc)?
                .opened,
        );
    }
    let unopened: Vec<usize> = (0..opened.len()).filter(|&i| !opened[i]).collect();
    // Instruments first when the exit cannot prove their leaves itself; the positions tree
    // first when the exit cannot rebuild it even with every instrument opened.
    let open = exit_gas(&proof, &opened) > EXIT_GAS;
    let build = open && exit_gas(&proof, &vec![true; opened.len()]) > EXIT_GAS;
    if open {
        for chunk in opening_chunks(&proof, &unopened) {
            let receipt = transact(
                trees
                    .openInstruments(opening_of(&proof, &chunk))
                    .from(owner),
            )
            .await
            .map_err(|e| SettlerError::Rpc(format!("opening instruments: {e}")))?;
            tracing::info!(
                account,
                instruments = chunk.len(),
                gas = receipt.gas_used,
                "opened instruments for the exit (their marks, once for every account)"
            );
        }
        opened.iter_mut().for_each(|o| *o = true);
    }
    let exit = if build {
        // Nodes another exit built (the same subtree under the same index) are not built again,
        // nor those of an earlier, interrupted run.
        let mut missing = Vec::new();
        for node in positions_nodes(&proof) {
            if !trees
                .builtNodes(built_node_key(&node))
                .call()
                .await
                .map_err(rpc)?
                .built
            {
                missing.push(node);
            }
        }
        for chunk in missing.chunks(BUILD_CHUNK) {
            let receipt = transact(trees.buildPositions(build_call(chunk)).from(owner))
                .await
                .map_err(|e| SettlerError::Rpc(format!("building the positions tree: {e}")))?;
            tracing::info!(
                account,
                nodes = chunk.len(),
                gas = receipt.gas_used,
                "built positions-tree nodes for the exit"
            );
        }
        exit_call_built(&proof)
    } else {
        exit_call_opened(&proof, &opened)
    };
    let call = contract.exit(exit).from(owner);
    let paid = call.call().await.map_err(rpc)?;
    let pending = call.send().await.map_err(rpc)?;
    let receipt = mined(provider, *pending.tx_hash()).await?;
    if !receipt.status() {
        return Err(SettlerError::Rpc("exit reverted".into()));
    }
    Ok(paid)
}

/// What an L1 priority operation asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriorityKind {
    /// Credit `amount` to the account (a new one for the depositor if it does not exist).
    Deposit,
    /// Withdraw all free collateral of the account, if the requester owns it.
    ForcedWithdrawal,
    /// Close the account's position in an instrument against the backstop account at the
    /// mark, if the requester owns it.
    ForcedClose,
}

/// One L1 priority operation, as the rollup contract queued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriorityOp {
    /// Queue id.
    pub id: u64,
    /// Deposit or forced withdrawal.
    pub kind: PriorityKind,
    /// The L1 sender.
    pub owner: Address,
    /// The account it names.
    pub account: u32,
    /// Deposited amount (micro-USDC; zero for a withdrawal); a forced close's instrument.
    pub amount: U256,
    /// The backstop account L1 recorded (`u32::MAX`: none yet), which takes a forced close's
    /// position.
    pub backstop: u32,
}

impl PriorityKind {
    /// The kind the rollup contract stores (`DEPOSIT = 1`, `FORCED_WITHDRAWAL = 2`,
    /// `FORCED_CLOSE = 3`).
    pub fn from_l1(kind: u8) -> Option<Self> {
        match kind {
            1 => Some(Self::Deposit),
            2 => Some(Self::ForcedWithdrawal),
            3 => Some(Self::ForcedClose),
            _ => None,
        }
    }
}

impl PriorityOp {
    /// The sequencer input that serves it.
    pub fn command(&self) -> optio_types::Command {
        let (owner, account) = (
            optio_types::Address(self.owner.into_array()),
            optio_types::AccountId(self.account),
        );
        match self.kind {
            PriorityKind::Deposit => optio_types::Command::L1Deposit {
                priority: self.id,
                owner,
                account,
                // The contract caps a deposit at 1e18, inside i64.
                amount: optio_types::Amount(i64::try_from(self.amount).unwrap_or(i64::MAX)),
            },
            PriorityKind::ForcedWithdrawal => optio_types::Command::L1Withdrawal {
                priority: self.id,
                owner,
                account,
            },
            PriorityKind::ForcedClose => optio_types::Command::L1Close {
                priority: self.id,
                owner,
                account,
                // The contract takes a `uint32` instrument.
                instrument: optio_types::InstrumentId(
                    u32::try_from(self.amount).unwrap_or(u32::MAX),
                ),
                counterparty: optio_types::AccountId(self.backstop),
            },
        }
    }
}

/// The priority operations with ids from `from` on that sit at least `confirmations` blocks
/// below the chain head (read from the contract's state at that depth, so an operation a reorg
/// could still take back is not returned yet), in queue order.
pub async fn priority_ops(
    provider: &DynProvider,
    rollup: Address,
    from: u64,
    confirmations: u64,
) -> Result<Vec<PriorityOp>, SettlerError> {
    let head = provider.get_block_number().await.map_err(rpc)?;
    let Some(at) = head.checked_sub(confirmations) else {
        return Ok(Vec::new());
    };
    let at = alloy::eips::BlockId::number(at);
    let contract = OptioRollup::new(rollup, provider);
    let count = u64::try_from(
        contract
            .priorityCount()
            .block(at)
            .call()
            .await
            .map_err(rpc)?,
    )
    .map_err(rpc)?;
    let mut ops = Vec::new();
    let backstop = if from < count {
        contract.backstop().block(at).call().await.map_err(rpc)?
    } else {
        u32::MAX
    };
    for id in from..count {
        let op = contract
            .priorityOps(U256::from(id))
            .block(at)
            .call()
            .await
            .map_err(rpc)?;
        ops.push(PriorityOp {
            id,
            kind: PriorityKind::from_l1(op.kind)
                .ok_or_else(|| SettlerError::Rpc(format!("priority op {id}: kind {}", op.kind)))?,
            owner: op.owner,
            account: op.account,
            amount: op.amount,
            backstop,
        });
    }
    Ok(ops)
}

/// How far L1 has come: the last sequence number covered by the committed batches and by the
/// finalized ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Batches committed.
    pub committed: u64,
    /// Their last sequence number.
    pub committed_seq: u64,
    /// Batches proven with every one before them (0 when the rollup has no verifier).
    pub proven: u64,
    /// Their last sequence number.
    pub proven_seq: u64,
    /// Batches finalized.
    pub finalized: u64,
    /// Their last sequence number.
    pub finalized_seq: u64,
}

/// Posts batches to one rollup contract.
pub struct Settler {
    provider: DynProvider,
    rollup: Address,
    batches: PathBuf,
    /// The rollup's verifier once read (immutable in the contract: read once, not thrice a
    /// round).
    verifier: std::sync::OnceLock<Option<Address>>,
}

impl Settler {
    /// A settler for `rollup`, posting from `batches`.
    pub fn new(provider: DynProvider, rollup: Address, batches: &Path) -> Self {
        Self {
            provider,
            rollup,
            batches: batches.to_owned(),
            verifier: std::sync::OnceLock::new(),
        }
    }

    /// Batches the contract holds now (after any reorg).
    pub async fn committed(&self) -> Result<u64, SettlerError> {
        let n = OptioRollup::new(self.rollup, &self.provider)
            .committedBatches()
            .call()
            .await
            .map_err(rpc)?;
        u64::try_from(n).map_err(rpc)
    }

    /// The root the contract holds for batch `number`.
    pub async fn root(&self, number: u64) -> Result<U256, SettlerError> {
        Ok(OptioRollup::new(self.rollup, &self.provider)
            .batches(U256::from(number))
            .call()
            .await
            .map_err(rpc)?
            .root)
    }

    /// Seconds of L1 time (the latest block's) until the oldest priority operation no finalized
    /// batch has served is overdue and anyone may freeze the rollup (negative: already), or
    /// `None` when every queued operation is served by a finalized batch.
    pub async fn priority_deadline(&self) -> Result<Option<i64>, SettlerError> {
        let rollup = OptioRollup::new(self.rollup, &self.provider);
        let served = rollup.priorityServed().call().await.map_err(rpc)?;
        if served >= rollup.priorityCount().call().await.map_err(rpc)? {
            return Ok(None);
        }
        let deadline = rollup
            .priorityOps(served)
            .call()
            .await
            .map_err(rpc)?
            .deadline;
        let now_s = self.latest_time_s().await?;
        Ok(Some(deadline as i64 - now_s as i64))
    }

    /// The token balance the rollup holds and its books (`totalDeposited - totalPaid`), in
    /// micro-USDC: the first below the second means the token took money from the vault
    /// (`audit_vault` says more).
    pub async fn vault_books(&self) -> Result<(u128, u128), SettlerError> {
        let books = vault::books(&self.provider, self.rollup).await?;
        let narrow = |v: U256| u128::try_from(v).unwrap_or(u128::MAX);
        let held = books.held.map_err(|why| {
            SettlerError::Rpc(format!(
                "the token {} does not answer balanceOf: {why}",
                books.token
            ))
        })?;
        Ok((
            narrow(held),
            narrow(books.deposited).saturating_sub(narrow(books.paid)),
        ))
    }

    /// The latest block's timestamp (L1 time, seconds).
    async fn latest_time_s(&self) -> Result<u64, SettlerError> {
        Ok(self
            .provider
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await
            .map_err(rpc)?
            .ok_or_else(|| SettlerError::Rpc("no latest block".into()))?
            .header
            .timestamp)
    }

    /// How far L1 has come (batch 0 is genesis, covering nothing).
    pub async fn progress(&self) -> Result<Progress, SettlerError> {
        let contract = OptioRollup::new(self.rollup, &self.provider);
        let committed = self.committed().await?;
        let finalized = last_finalized(&contract).await?;
        // With a verifier, a finalized batch is proven; the proven run may reach further.
        let mut proven = 0;
        if self.verifier().await?.is_some() {
            proven = finalized;
            while proven < committed
                && contract
                    .proven(U256::from(proven + 1))
                    .call()
                    .await
                    .map_err(rpc)?
            {
                proven += 1;
            }
        }
        let last_seq = |n: u64| {
            let contract = &contract;
            async move {
                Ok::<u64, SettlerError>(
                    contract
                        .batches(U256::from(n))
                        .call()
                        .await
                        .map_err(rpc)?
                        .lastSeq,
                )
            }
        };
        Ok(Progress {
            committed,
            committed_seq: last_seq(committed).await?,
            proven,
            proven_seq: last_seq(proven).await?,
            finalized,
            finalized_seq: last_seq(finalized).await?,
        })
    }

    /// The rollup's verifier, if it has one.
    pub async fn verifier(&self) -> Result<Option<Address>, SettlerError> {
        if let Some(v) = self.verifier.get() {
            return Ok(*v);
        }
        let v = OptioRollup::new(self.rollup, &self.provider)
            .verifier()
            .call()
            .await
            .map_err(rpc)?;
        Ok(*self
            .verifier
            .get_or_init(|| (v != Address::ZERO).then_some(v)))
    }

    /// Submits the proofs on disk of committed, unfinalized batches the rollup does not hold as
    /// proven yet, in batch order, up to `PROOFS_PER_TX` in one `verifyBatches` transaction (one
    /// pairing check). If the aggregate is refused (one bad proof fails them all), each is
    /// submitted alone so that the good ones still land; the bad ones are logged and left for
    /// the next round. Returns how many batches were proven; 0 when the rollup has no verifier.
    pub async fn prove_pending(&self) -> Result<u64, SettlerError> {
        if self.verifier().await?.is_none() {
            return Ok(0);
        }
        let contract = OptioRollup::new(self.rollup, &self.provider);
        let committed = self.committed().await?;
        let mut ready = Vec::new();
        for number in last_finalized(&contract).await? + 1..=committed {
            if ready.len() == PROOFS_PER_TX {
                break;
            }
            if contract
                .proven(U256::from(number))
                .call()
                .await
                .map_err(rpc)?
            {
                continue;
            }
            // A damaged proof file is skipped (logged), not fatal: the round's other work
            // (finality, the priority queue) must not wait on it.
            match read_proof(&self.batches, number) {
                Ok(Some(p)) => ready.push(p),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "proof file skipped"),
            }
        }
        if ready.is_empty() {
            return Ok(0);
        }
        let all = contract.verifyBatches(
            ready.iter().map(|p| U256::from(p.number)).collect(),
            ready.iter().map(|p| p.commitment).collect(),
            ready.iter().map(|p| p.proof).collect(),
        );
        if transact(all).await.is_ok() {
            return Ok(ready.len() as u64);
        }
        let mut proven = 0;
        for p in ready {
            match transact(contract.verifyBatch(U256::from(p.number), p.commitment, p.proof)).await
            {
                Ok(_) => proven += 1,
                Err(e) => tracing::warn!(batch = p.number, error = %e, "proof refused on L1"),
            }
        }
        Ok(proven)
    }

    /// Finalizes, in order, every committed batch whose delay has passed at the head block
    /// (anyone may; the operator does it as a service); returns how many. With a verifier the
    /// delay runs from the batch's proof, and an unproven batch waits.
    pub async fn finalize_due(&self) -> Result<u64, SettlerError> {
        let contract = OptioRollup::new(self.rollup, &self.provider);
        let delay = contract.finalizationDelay().call().await.map_err(rpc)?;
        let verified = self.verifier().await?.is_some();
        let mut done = 0;
        loop {
            let next = last_finalized(&contract).await? + 1;
            if next > self.committed().await? {
                return Ok(done);
            }
            let now_s = self.latest_time_s().await?;
            let since = if verified {
                let at = contract
                    .provenAt(U256::from(next))
                    .call()
                    .await
                    .map_err(rpc)?;
                if at.is_zero() {
                    return Ok(done);
                }
                at
            } else {
                U256::from(
                    contract
                        .batches(U256::from(next))
                        .call()
                        .await
                        .map_err(rpc)?
                        .committedAt,
                )
            };
            if U256::from(now_s) < since + delay {
                return Ok(done);
            }
            transact(contract.finalize())
                .await
                .map_err(|e| SettlerError::Batch(next, format!("finalize: {e}")))?;
            done += 1;
        }
    }

    /// Refuses to post batch `number`, dated `time_ms`, when it is already more than the
    /// rollup's `maxBatchLag` behind the latest block (the next block is no earlier, so the
    /// rollup would refuse it), saying what that means for the operator. (A batch dated past
    /// the lead is left to the rollup: the next block may be far later than the latest one.)
    async fn check_lag(&self, number: u64, time_ms: u64) -> Result<(), SettlerError> {
        let rollup = OptioRollup::new(self.rollup, &self.provider);
        let seconds = |v: U256| u64::try_from(v).unwrap_or(u64::MAX);
        let lag = seconds(rollup.maxBatchLag().call().await.map_err(rpc)?);
        let now_s = self.latest_time_s().await?;
        let (time, now) = (u128::from(time_ms), u128::from(now_s) * 1_000);
        if time + u128::from(lag) * 1_000 < now {
            return Err(SettlerError::Batch(
                number,
                format!(
                    "dated {} s before L1's time, past the rollup's {lag} s lag: it can no longer \
                     be committed, nor any batch after it (the rollup's users exit through the \
                     priority queue once a request is overdue)",
                    (now - time) / 1_000
                ),
            ));
        }
        Ok(())
    }

    /// Posts every batch on disk the contract does not hold yet, in order, each mined before the
    /// next; returns how many were posted. A batch dated more than the rollup's lag before
    /// L1's time is not sent: the error says so and what it means.
    pub async fn post_pending(&self) -> Result<u64, SettlerError> {
        let rollup = OptioRollup::new(self.rollup, &self.provider);
        let mut posted = 0;
        let mut next = self.committed().await? + 1;
        while let Some(b) = read_batch(&self.batches, next)? {
            let (meta, ops) = optio_state::decode(&b.blob)
                .map_err(|e| SettlerError::Batch(next, format!("data: {e}")))?;
            self.check_lag(next, meta.time_ms).await?;
            back_operator_deposits(&self.provider, self.rollup, &ops)
                .await
                .map_err(|e| SettlerError::Batch(next, e.to_string()))?;
            let pending = rollup
                .commitBatch(
                    U256::from(b.number),
                    b.previous_root,
                    b.new_root,
                    b.first_seq,
                    b.last_seq,
                    b.priority_served,
                    b.withdrawals_hash,
                    b.commitment,
                    b.blob,
                    b.authorizations,
                )
                .send()
                .await
                .map_err(rpc)?;
            let receipt = mined(&self.provider, *pending.tx_hash()).await?;
            if !receipt.status() {
                return Err(SettlerError::Batch(next, "commitBatch reverted".into()));
            }
            posted += 1;
            next += 1;
        }
        Ok(posted)
    }
}

/// What the operator's own deposits among `ops` credit (kind 7, a devnet's faucet: money no L1
/// deposit brought), which the contract takes from the operator when the batch is committed.
pub fn operator_deposits(ops: &[optio_state::Op]) -> U256 {
    ops.iter()
        .filter_map(|op| match op {
            optio_state::Op::Deposit { amount, .. } => Some(U256::from(amount.0.max(0) as u64)),
            _ => None,
        })
        .fold(U256::ZERO, |a, b| a + b)
}

/// Lets the operator (the provider's signer) pay in what its deposits among `ops` credit when
/// the batch is committed: approves the rollup, and on a devnet token (`TestUSDC`, which anyone
/// may mint) mints what the operator lacks. With real USDC the operator must hold it: the mint
/// reverts and the error says how much is missing.
pub async fn back_operator_deposits(
    provider: &DynProvider,
    rollup: Address,
    ops: &[optio_state::Op],
) -> Result<(), SettlerError> {
    let amount = operator_deposits(ops);
    if amount.is_zero() {
        return Ok(());
    }
    let contract = OptioRollup::new(rollup, provider);
    let operator = contract.operator().call().await.map_err(rpc)?;
    let usdc = TestUSDC::new(contract.usdc().call().await.map_err(rpc)?, provider);
    let held = usdc.balanceOf(operator).call().await.map_err(rpc)?;
    if held < amount {
        transact(usdc.mint(operator, amount - held))
            .await
            .map_err(|e| {
                SettlerError::Rpc(format!(
                    "the operator holds {held} USDC units, its deposits in the batch credit \
                     {amount}, and the token mints none ({e})"
                ))
            })?;
    }
    if usdc.allowance(operator, rollup).call().await.map_err(rpc)? < amount {
        transact(usdc.approve(rollup, U256::MAX)).await?;
    }
    Ok(())
}

/// What the settler tells the node it serves, and asks of it. The node's calls block (they wait
/// for the sequencer's fsync), so the settler makes them off the async workers.
pub trait NodeLink: Send + Sync + 'static {
    /// The id of the next L1 priority operation the node has not served.
    fn priority_served(&self) -> u64;
    /// Sequences one priority operation: `Ok(false)` when it was served before.
    fn serve(&self, op: &PriorityOp) -> Result<bool, String>;
    /// How far L1 has come (for the intent status API).
    fn progress(&self, progress: Progress);
    /// Seconds (L1 time) until the oldest priority operation no finalized batch has served is
    /// overdue (negative: anyone may freeze now), or `None` when none waits (for the metrics).
    fn priority_deadline(&self, _seconds: Option<i64>) {}
    /// The token balance the rollup holds and its books, micro-USDC (`Settler::vault_books`; for
    /// the metrics).
    fn vault(&self, _held: u128, _books: u128) {}
}

/// What one settler round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoundReport {
    /// Batches committed.
    pub posted: u64,
    /// Batches proven on L1.
    pub proven: u64,
    /// Batches finalized.
    pub finalized: u64,
    /// Priority operations the node sequenced.
    pub served: u64,
}

/// One settler round: post what the chain lacks, submit the proofs on disk, finalize what is
/// due, report progress, then feed the node the priority operations `confirmations` deep that
/// it has not served.
pub async fn round(
    settler: &Settler,
    node: &std::sync::Arc<dyn NodeLink>,
    confirmations: u64,
) -> Result<RoundReport, SettlerError> {
    let posted = settler.post_pending().await?;
    let proven = settler.prove_pending().await?;
    let finalized = settler.finalize_due().await?;
    let progress = settler.progress().await?;
    let link = node.clone();
    let from = tokio::task::spawn_blocking(move || {
        link.progress(progress);
        link.priority_served()
    })
    .await
    .map_err(rpc)?;
    // Before serving (a refused operation ends the round): how long the queue's oldest
    // unfinalized operation has.
    let left = settler.priority_deadline().await?;
    let link = node.clone();
    tokio::task::spawn_blocking(move || link.priority_deadline(left))
        .await
        .map_err(rpc)?;
    // For the metrics only: a token that will not answer does not stop the round (the
    // priority queue after it must be served whatever the token does).
    match settler.vault_books().await {
        Ok((held, books)) => {
            let link = node.clone();
            tokio::task::spawn_blocking(move || link.vault(held, books))
                .await
                .map_err(rpc)?;
        }
        Err(e) => tracing::warn!(error = %e, "the vault's balance and books were not read"),
    }
    let ops = priority_ops(&settler.provider, settler.rollup, from, confirmations).await?;
    let mut served = 0;
    for op in ops {
        let link = node.clone();
        if tokio::task::spawn_blocking(move || link.serve(&op))
            .await
            .map_err(rpc)?
            .map_err(|e| SettlerError::Rpc(format!("serving priority operation {}: {e}", op.id)))?
        {
            served += 1;
        }
    }
    Ok(RoundReport {
        posted,
        proven,
        finalized,
        served,
    })
}

/// Runs `settler` for `node` on the current tokio runtime: a `round` every `every`. The settler
/// asks the chain what is committed and the node what is served each time, so a failed round
/// (or a reorg, or a restart) is made good by the next; failures are logged, never fatal.
pub fn spawn(
    settler: Settler,
    node: std::sync::Arc<dyn NodeLink>,
    every: std::time::Duration,
    confirmations: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            match round(&settler, &node, confirmations).await {
                Ok(r) if r == RoundReport::default() => {}
                Ok(r) => tracing::info!(
                    posted = r.posted,
                    proven = r.proven,
                    finalized = r.finalized,
                    served = r.served,
                    "L1 round"
                ),
                Err(e) => tracing::warn!(error = %e, "L1 round failed; retrying"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::sol_types::{SolCall, SolValue};

    fn commit(number: u64, data: &[u8]) -> OptioRollup::commitBatchCall {
        OptioRollup::commitBatchCall {
            number: U256::from(number),
            previousRoot: U256::from(1u64),
            newRoot: U256::from(2u64),
            firstSeq: 3,
            lastSeq: 4,
            priorityServed: 0,
            withdrawalsHash: Default::default(),
            commitment: U256::from(5u64),
            data: data.to_vec().into(),
            authorizations: vec![6u8; 40].into(),
        }
    }

    #[test]
    fn a_commitment_is_found_in_its_transaction_or_inside_a_contracts_call() {
        let data = vec![7u8; 100];
        let hash = alloy::primitives::keccak256(&data);
        let two = U256::from(2u64);
        let call = commit(2, &data).abi_encode();
        let committed = |number: U256, data_hash| Committed {
            number,
            data_hash,
            auth_hash: alloy::primitives::keccak256(commit(2, &data).authorizations),
        };
        let found =
            |input: &[u8]| commit_call_in(input, &committed(two, hash)).map(|c| c.abi_encode());

        // Sent by the operator itself.
        assert_eq!(found(&call), Some(call.clone()));
        // Through a forwarder: the target's 20 bytes, then the call.
        let forwarded = [&[0x11u8; 20][..], &call].concat();
        assert_eq!(found(&forwarded), Some(call.clone()));
        // Through a multisig: the call is a `bytes` argument among others, and more follows it
        // (the signatures), after calls that are not this batch's: another number, other data,
        // the same data with another authorization section.
        let decoy = commit(1, &data).abi_encode();
        let other_data = commit(2, &[8u8; 100]).abi_encode();
        let other_auths = OptioRollup::commitBatchCall {
            authorizations: vec![7u8; 40].into(),
            ..commit(2, &data)
        }
        .abi_encode();
        let multisig = [
            &[0xaa, 0xbb, 0xcc, 0xdd][..],
            &(
                Address::repeat_byte(0x22),
                U256::ZERO,
                alloy::primitives::Bytes::from(decoy),
                alloy::primitives::Bytes::from(other_data),
                alloy::primitives::Bytes::from(other_auths.clone()),
                alloy::primitives::Bytes::from(call.clone()),
                alloy::primitives::Bytes::from(vec![9u8; 130]),
            )
                .abi_encode_params(),
        ]
        .concat();
        assert_eq!(found(&multisig), Some(call.clone()));
        // Nowhere: another batch's number, or other data than was committed.
        assert!(commit_call_in(&call, &committed(U256::from(3u64), hash)).is_none());
        assert!(
            commit_call_in(&call, &committed(two, alloy::primitives::keccak256([0u8]))).is_none()
        );
        assert_eq!(found(&other_auths), None, "the data with another section");
        assert_eq!(found(&call[..call.len() - 100]), None, "a call cut short");
    }
}
