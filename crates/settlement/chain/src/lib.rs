//! An embedded Ethereum development chain: `revm` executes the transactions, an in-memory
//! ledger keeps blocks, receipts and logs, and the standard Ethereum JSON-RPC (the subset a
//! wallet, the settler, the watchtower and `optio exit` use) is served on 127.0.0.1 so that the
//! same code runs against it, against anvil and against any Ethereum node.
//!
//! Blocks: every accepted transaction is mined at once in its own block (like anvil's automine),
//! and an empty block is mined every `block_time` so that time moves on L1 (finalization delays,
//! priority deadlines) while nobody sends anything. The base fee is fixed at 1 gwei.
//!
//! What it is not: a consensus client. There is no pending pool (a transaction is mined or
//! refused with its reason when sent), no blob transactions, no tracing, and state is kept for
//! the last 64 blocks only (`eth_call` at an older block is refused with a clear error). State
//! lives in memory: it ends with the process. Reorgs happen only when its owner asks
//! (`Chain::reorg`, for the simulator and tests): the last blocks are replaced by a longer fork
//! of empty blocks and their transactions are gone, as if the fork's builder had never seen
//! them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::consensus::transaction::SignerRecoverable;
use alloy::consensus::{Receipt, ReceiptEnvelope, ReceiptWithBloom, Transaction as _, TxEnvelope};
use alloy::eips::Decodable2718;
use alloy::primitives::{Address, B256, Bloom, Bytes, TxKind, U256, keccak256};
use alloy::rpc::types::{Log, TransactionReceipt, TransactionRequest};
use axum::extract::State;
use axum::routing::post;
use revm::context::result::{EVMError, ExecutionResult, Output};
use revm::context::{BlockEnv, TxEnv};
use revm::database::{CacheDB, EmptyDB};
use revm::state::AccountInfo;
use revm::{Context, ExecuteCommitEvm, ExecuteEvm, MainBuilder, MainContext};
use serde_json::{Value, json};

/// The fixed base fee, wei.
pub const BASE_FEE: u64 = 1_000_000_000;
/// Gas per block.
pub const BLOCK_GAS_LIMIT: u64 = 60_000_000;
/// Gas per transaction (EIP-7825's cap, which revm's default spec enforces).
pub const TX_GAS_CAP: u64 = 1 << 24;
/// Blocks whose state `eth_call` can still read.
const KEPT_STATES: usize = 64;

type Db = CacheDB<EmptyDB>;

struct Block {
    hash: B256,
    parent: B256,
    timestamp: u64,
    gas_used: u64,
    txs: Vec<B256>,
}

struct Mined {
    tx: alloy::rpc::types::Transaction,
    receipt: TransactionReceipt,
}

struct Ledger {
    chain_id: u64,
    db: Db,
    blocks: Vec<Block>,
    /// States after the most recent blocks, oldest first: (block number, state). An empty
    /// block shares the snapshot of the block before it.
    history: VecDeque<(u64, Arc<Db>)>,
    txs: BTreeMap<B256, Mined>,
    logs: Vec<Log>,
    /// Reorgs so far: part of every later block's hash, so a fork's blocks never share a hash
    /// with the blocks they replaced.
    forks: u64,
    /// Block timestamps step by exactly this many seconds (a simulation's logical time), not
    /// by the wall clock.
    logical_step: Option<u64>,
    /// With `logical_step`: a clock (seconds) block timestamps never fall behind (a
    /// simulation's engine clock, so that L1 time keeps up with the batches' time).
    floor: Option<Box<dyn Fn() -> u64 + Send>>,
}

/// A JSON-RPC error: code, message, optional data.
type RpcError = (i64, String, Option<Value>);

fn invalid(message: impl Into<String>) -> RpcError {
    (-32602, message.into(), None)
}

fn quantity(v: u64) -> Value {
    Value::String(format!("{v:#x}"))
}

impl Ledger {
    fn new(chain_id: u64, funded: &[(Address, U256)]) -> Self {
        let mut db = Db::default();
        for (address, balance) in funded {
            db.insert_account_info(
                *address,
                AccountInfo {
                    balance: *balance,
                    ..AccountInfo::default()
                },
            );
        }
        let genesis = Block {
            hash: keccak256(chain_id.to_be_bytes()),
            parent: B256::ZERO,
            timestamp: now_s(),
            gas_used: 0,
            txs: Vec::new(),
        };
        let history = VecDeque::from([(0, Arc::new(db.clone()))]);
        Self {
            chain_id,
            db,
            blocks: vec![genesis],
            history,
            txs: BTreeMap::new(),
            logs: Vec::new(),
            forks: 0,
            logical_step: None,
            floor: None,
        }
    }

    fn head(&self) -> u64 {
        self.blocks.len() as u64 - 1
    }

    /// The environment of the next block.
    fn next_block(&self) -> BlockEnv {
        let last = self.blocks.last().expect("genesis");
        BlockEnv {
            number: U256::from(self.head() + 1),
            timestamp: U256::from(match self.logical_step {
                Some(step) => (last.timestamp + step).max(self.floor.as_ref().map_or(0, |f| f())),
                None => now_s().max(last.timestamp + 1),
            }),
            gas_limit: BLOCK_GAS_LIMIT,
            basefee: BASE_FEE,
            prevrandao: Some(B256::ZERO),
            ..BlockEnv::default()
        }
    }

    /// Seals the next block with `txs` (already executed against `self.db`).
    fn seal(&mut self, env: &BlockEnv, txs: Vec<B256>, gas_used: u64) -> (u64, B256) {
        let number = self.head() + 1;
        let parent = self.blocks.last().expect("genesis").hash;
        let timestamp = env.timestamp.to::<u64>();
        let mut preimage = Vec::with_capacity(80 + 32 * txs.len());
        preimage.extend_from_slice(parent.as_slice());
        preimage.extend_from_slice(&number.to_be_bytes());
        preimage.extend_from_slice(&timestamp.to_be_bytes());
        if self.forks > 0 {
            preimage.extend_from_slice(&self.forks.to_be_bytes());
        }
        for t in &txs {
            preimage.extend_from_slice(t.as_slice());
        }
        let hash = keccak256(&preimage);
        let txs_empty = txs.is_empty();
        self.blocks.push(Block {
            hash,
            parent,
            timestamp,
            gas_used,
            txs,
        });
        // Only a block with transactions changed the state: an empty one shares the snapshot.
        let snapshot = match self.history.back() {
            Some((_, last)) if txs_empty => last.clone(),
            _ => Arc::new(self.db.clone()),
        };
        self.history.push_back((number, snapshot));
        while self.history.len() > KEPT_STATES {
            self.history.pop_front();
        }
        (number, hash)
    }

    /// Mines an empty block.
    fn mine_empty(&mut self) {
        let env = self.next_block();
        self.seal(&env, Vec::new(), 0);
    }

    /// Replaces the last `depth` blocks with a fork of `depth + 1` empty blocks; returns the
    /// transactions that were in the replaced blocks (now unknown to the chain).
    fn reorg(&mut self, depth: u64) -> Result<Vec<B256>, String> {
        let head = self.head();
        if depth == 0 || depth >= head || depth >= KEPT_STATES as u64 {
            return Err(format!(
                "a reorg of {depth} blocks at head {head} (1 to {} and below the head)",
                KEPT_STATES - 1
            ));
        }
        let keep = head - depth;
        let state = self
            .history
            .iter()
            .find(|(at, _)| *at == keep)
            .map(|(_, db)| db.as_ref().clone())
            .ok_or_else(|| format!("state at block {keep} is not kept"))?;
        self.db = state;
        self.history.retain(|(at, _)| *at <= keep);
        let gone: Vec<B256> = self
            .blocks
            .drain(keep as usize + 1..)
            .flat_map(|b| b.txs)
            .collect();
        for hash in &gone {
            self.txs.remove(hash);
        }
        self.logs
            .retain(|l| l.block_number.is_some_and(|n| n <= keep));
        self.forks += 1;
        for _ in 0..=depth {
            self.mine_empty();
        }
        Ok(gone)
    }

    fn send_raw(&mut self, raw: &[u8]) -> Result<B256, RpcError> {
        let envelope = TxEnvelope::decode_2718(&mut &raw[..])
            .map_err(|e| invalid(format!("not a signed transaction: {e}")))?;
        let from = envelope
            .recover_signer()
            .map_err(|e| invalid(format!("bad signature: {e}")))?;
        if envelope.chain_id().is_some_and(|c| c != self.chain_id) {
            return Err(invalid(format!(
                "chain id {:?}, this chain is {}",
                envelope.chain_id(),
                self.chain_id
            )));
        }
        let hash = *envelope.tx_hash();
        let tx = TxEnv::builder()
            .tx_type(Some(envelope.tx_type() as u8))
            .caller(from)
            .gas_limit(envelope.gas_limit())
            .gas_price(envelope.max_fee_per_gas())
            .gas_priority_fee(envelope.max_priority_fee_per_gas())
            .kind(envelope.kind())
            .value(envelope.value())
            .data(envelope.input().clone())
            .nonce(envelope.nonce())
            .chain_id(envelope.chain_id())
            .access_list(envelope.access_list().cloned().unwrap_or_default())
            .build()
            .map_err(|e| invalid(format!("transaction: {e:?}")))?;
        let env = self.next_block();
        let chain_id = self.chain_id;
        let result = Context::mainnet()
            .modify_cfg_chained(|c| c.chain_id = chain_id)
            .with_block(env.clone())
            .with_db(&mut self.db)
            .build_mainnet()
            .transact_commit(tx)
            .map_err(|e| match e {
                EVMError::Transaction(t) => (-32003, format!("transaction refused: {t}"), None),
                other => (-32603, format!("execution failed: {other}"), None),
            })?;
        let gas_used = result.tx_gas_used();
        let (number, block_hash) = self.seal(&env, vec![hash], gas_used);
        let timestamp = env.timestamp.to::<u64>();
        let effective = u128::from(BASE_FEE)
            + envelope.max_priority_fee_per_gas().unwrap_or(0).min(
                envelope
                    .max_fee_per_gas()
                    .saturating_sub(u128::from(BASE_FEE)),
            );
        let created = result.created_address();
        let success = result.is_success();
        let first_index = self.logs.len() as u64;
        let logs: Vec<Log> = result
            .into_logs()
            .into_iter()
            .enumerate()
            .map(|(i, inner)| Log {
                inner,
                block_hash: Some(block_hash),
                block_number: Some(number),
                block_timestamp: Some(timestamp),
                transaction_hash: Some(hash),
                transaction_index: Some(0),
                log_index: Some(first_index + i as u64),
                removed: false,
            })
            .collect();
        let mut bloom = Bloom::default();
        for log in &logs {
            bloom.accrue_log(&log.inner);
        }
        let with_bloom = ReceiptWithBloom {
            receipt: Receipt {
                status: success.into(),
                cumulative_gas_used: gas_used,
                logs: logs.clone(),
            },
            logs_bloom: bloom,
        };
        let inner = match &envelope {
            TxEnvelope::Legacy(_) => ReceiptEnvelope::Legacy(with_bloom),
            TxEnvelope::Eip2930(_) => ReceiptEnvelope::Eip2930(with_bloom),
            TxEnvelope::Eip4844(_) => ReceiptEnvelope::Eip4844(with_bloom),
            TxEnvelope::Eip7702(_) => ReceiptEnvelope::Eip7702(with_bloom),
            _ => ReceiptEnvelope::Eip1559(with_bloom),
        };
        let to = match envelope.kind() {
            TxKind::Call(to) => Some(to),
            TxKind::Create => None,
        };
        let receipt = TransactionReceipt {
            inner,
            transaction_hash: hash,
            transaction_index: Some(0),
            block_hash: Some(block_hash),
            block_number: Some(number),
            gas_used,
            effective_gas_price: effective,
            blob_gas_used: None,
            blob_gas_price: None,
            from,
            to,
            contract_address: created,
        };
        self.logs.extend(logs);
        let tx = alloy::rpc::types::Transaction {
            inner: alloy::consensus::transaction::Recovered::new_unchecked(envelope, from),
            block_hash: Some(block_hash),
            block_number: Some(number),
            transaction_index: Some(0),
            effective_gas_price: Some(effective),
            block_timestamp: Some(timestamp),
        };
        self.txs.insert(hash, Mined { tx, receipt });
        Ok(hash)
    }

    /// The state at a block tag, borrowed: the head's, or one of the last `KEPT_STATES` blocks'.
    fn state_at(&self, tag: Option<&Value>) -> Result<&Db, RpcError> {
        match self.block_number(tag)? {
            n if n == self.head() => Ok(&self.db),
            n => self
                .history
                .iter()
                .find(|(at, _)| *at == n)
                .map(|(_, db)| db.as_ref())
                .ok_or_else(|| {
                    invalid(format!(
                        "state at block {n} is not kept (only the last {KEPT_STATES} blocks)"
                    ))
                }),
        }
    }

    fn block_number(&self, tag: Option<&Value>) -> Result<u64, RpcError> {
        let head = self.head();
        let n = match tag.and_then(Value::as_str) {
            None | Some("latest" | "pending" | "safe" | "finalized") => head,
            Some("earliest") => 0,
            Some(hex) => u64::from_str_radix(hex.trim_start_matches("0x"), 16)
                .map_err(|_| invalid(format!("block tag {hex}")))?,
        };
        if n > head {
            return Err(invalid(format!("block {n} is beyond the head {head}")));
        }
        Ok(n)
    }

    /// Executes a call without committing; returns its result.
    fn simulate(&self, request: &Value, tag: Option<&Value>) -> Result<ExecutionResult, RpcError> {
        let request: TransactionRequest =
            serde_json::from_value(request.clone()).map_err(|e| invalid(format!("call: {e}")))?;
        let db = self.state_at(tag)?;
        let from = request.from.unwrap_or_default();
        let nonce = revm::DatabaseRef::basic_ref(db, from)
            .ok()
            .flatten()
            .map_or(0, |a| a.nonce);
        let tx = TxEnv::builder()
            .caller(from)
            .gas_limit(request.gas.unwrap_or(TX_GAS_CAP).min(TX_GAS_CAP))
            .gas_price(0)
            .kind(request.to.unwrap_or(TxKind::Create))
            .value(request.value.unwrap_or_default())
            .data(request.input.input().cloned().unwrap_or_default())
            .nonce(nonce)
            .chain_id(Some(self.chain_id))
            .build()
            .map_err(|e| invalid(format!("call: {e:?}")))?;
        let env = BlockEnv {
            basefee: 0,
            ..self.next_block()
        };
        let chain_id = self.chain_id;
        Context::mainnet()
            .modify_cfg_chained(|c| c.chain_id = chain_id)
            .with_block(env)
            .with_db(revm::database_interface::WrapDatabaseRef(db))
            .build_mainnet()
            .transact(tx)
            .map(|r| r.result)
            .map_err(|e| (-32603, format!("call failed: {e}"), None))
    }

    fn call(&self, request: &Value, tag: Option<&Value>) -> Result<Value, RpcError> {
        match self.simulate(request, tag)? {
            ExecutionResult::Success { output, .. } => Ok(Value::String(
                match output {
                    Output::Call(b) | Output::Create(b, _) => b,
                }
                .to_string(),
            )),
            ExecutionResult::Revert { output, .. } => Err(reverted(&output)),
            ExecutionResult::Halt { reason, .. } => {
                Err((-32000, format!("halted: {reason:?}"), None))
            }
        }
    }

    fn estimate(&self, request: &Value) -> Result<Value, RpcError> {
        match self.simulate(request, None)? {
            // A margin above what it used: gas forwarded to calls (63/64) is needed up front.
            ExecutionResult::Success { gas, .. } => {
                // What execution spent before refunds, or the calldata floor (EIP-7623) when
                // that is higher: the limit must cover both.
                let used = gas.total_gas_spent().max(gas.floor_gas());
                Ok(quantity((used + used / 4 + 10_000).min(TX_GAS_CAP)))
            }
            ExecutionResult::Revert { output, .. } => Err(reverted(&output)),
            ExecutionResult::Halt { reason, .. } => {
                Err((-32000, format!("halted: {reason:?}"), None))
            }
        }
    }

    fn block_json(&self, number: u64) -> Value {
        let b = &self.blocks[number as usize];
        let header = alloy::consensus::Header {
            parent_hash: b.parent,
            number,
            timestamp: b.timestamp,
            gas_limit: BLOCK_GAS_LIMIT,
            gas_used: b.gas_used,
            base_fee_per_gas: Some(BASE_FEE),
            ..alloy::consensus::Header::default()
        };
        let block: alloy::rpc::types::Block = alloy::rpc::types::Block {
            header: alloy::rpc::types::Header {
                hash: b.hash,
                inner: header,
                total_difficulty: Some(U256::ZERO),
                size: None,
            },
            uncles: Vec::new(),
            transactions: alloy::rpc::types::BlockTransactions::Hashes(b.txs.clone()),
            withdrawals: None,
        };
        serde_json::to_value(block).unwrap_or(Value::Null)
    }

    fn logs(&self, filter: &Value) -> Result<Value, RpcError> {
        let head = self.head();
        let from = self.block_number(filter.get("fromBlock").or(Some(&json!("earliest"))))?;
        let to = self.block_number(filter.get("toBlock"))?.min(head);
        let addresses: Vec<Address> = match filter.get("address") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => list
                .iter()
                .map(|a| serde_json::from_value(a.clone()))
                .collect::<Result<_, _>>()
                .map_err(|e| invalid(format!("address: {e}")))?,
            Some(one) => vec![
                serde_json::from_value(one.clone())
                    .map_err(|e| invalid(format!("address: {e}")))?,
            ],
        };
        // Each position: any of the listed topics (null: anything).
        let topics: Vec<Vec<B256>> = filter
            .get("topics")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .map(|t| match t {
                        Value::Null => Ok(Vec::new()),
                        Value::Array(any) => any
                            .iter()
                            .map(|x| serde_json::from_value(x.clone()))
                            .collect(),
                        one => serde_json::from_value(one.clone()).map(|x| vec![x]),
                    })
                    .collect::<Result<_, _>>()
            })
            .transpose()
            .map_err(|e| invalid(format!("topics: {e}")))?
            .unwrap_or_default();
        let found: Vec<&Log> = self
            .logs
            .iter()
            .filter(|l| l.block_number.is_some_and(|n| (from..=to).contains(&n)))
            .filter(|l| addresses.is_empty() || addresses.contains(&l.inner.address))
            .filter(|l| {
                topics.iter().enumerate().all(|(i, any)| {
                    any.is_empty()
                        || l.inner
                            .data
                            .topics()
                            .get(i)
                            .is_some_and(|t| any.contains(t))
                })
            })
            .collect();
        serde_json::to_value(found).map_err(|e| (-32603, e.to_string(), None))
    }

    fn dispatch(&mut self, method: &str, params: &Value) -> Result<Value, RpcError> {
        let p = |i: usize| params.get(i);
        let address = |i: usize| -> Result<Address, RpcError> {
            serde_json::from_value(p(i).cloned().unwrap_or(Value::Null))
                .map_err(|e| invalid(format!("address: {e}")))
        };
        match method {
            "eth_chainId" => Ok(quantity(self.chain_id)),
            "net_version" => Ok(Value::String(self.chain_id.to_string())),
            "eth_blockNumber" => Ok(quantity(self.head())),
            "eth_gasPrice" => Ok(quantity(2 * BASE_FEE)),
            "eth_maxPriorityFeePerGas" => Ok(quantity(BASE_FEE)),
            "eth_accounts" => Ok(json!([])),
            "eth_feeHistory" => {
                let count = p(0)
                    .and_then(|v| {
                        v.as_u64().or_else(|| {
                            v.as_str().and_then(|s| {
                                u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()
                            })
                        })
                    })
                    .unwrap_or(1)
                    .clamp(1, 1_024);
                let head = self.head();
                let oldest = head.saturating_sub(count - 1);
                let n = (head - oldest + 1) as usize;
                let percentiles = p(2).and_then(Value::as_array).map_or(0, Vec::len);
                Ok(json!({
                    "oldestBlock": quantity(oldest),
                    "baseFeePerGas": vec![quantity(BASE_FEE); n + 1],
                    "gasUsedRatio": vec![0.0; n],
                    "reward": vec![vec![quantity(BASE_FEE); percentiles]; n],
                }))
            }
            "eth_getBalance" | "eth_getTransactionCount" | "eth_getCode" => {
                let who = address(0)?;
                let db = self.state_at(p(1))?;
                let info = revm::DatabaseRef::basic_ref(db, who)
                    .map_err(|e| (-32603, format!("{e:?}"), None))?
                    .unwrap_or_default();
                Ok(match method {
                    "eth_getBalance" => Value::String(format!("{:#x}", info.balance)),
                    "eth_getTransactionCount" => quantity(info.nonce),
                    _ => {
                        let code = match info.code {
                            Some(c) => c.original_bytes(),
                            None => revm::DatabaseRef::code_by_hash_ref(db, info.code_hash)
                                .map(|c| c.original_bytes())
                                .unwrap_or_default(),
                        };
                        Value::String(code.to_string())
                    }
                })
            }
            "eth_getStorageAt" => {
                let who = address(0)?;
                let slot: U256 = serde_json::from_value(p(1).cloned().unwrap_or(Value::Null))
                    .map_err(|e| invalid(format!("slot: {e}")))?;
                let db = self.state_at(p(2))?;
                let v = revm::DatabaseRef::storage_ref(db, who, slot)
                    .map_err(|e| (-32603, format!("{e:?}"), None))?;
                Ok(Value::String(format!("{:#066x}", v)))
            }
            "eth_call" => self.call(p(0).unwrap_or(&Value::Null), p(1)),
            "eth_estimateGas" => self.estimate(p(0).unwrap_or(&Value::Null)),
            "eth_sendRawTransaction" => {
                let raw: Bytes = serde_json::from_value(p(0).cloned().unwrap_or(Value::Null))
                    .map_err(|e| invalid(format!("raw transaction: {e}")))?;
                self.send_raw(&raw).map(|h| Value::String(h.to_string()))
            }
            "eth_getTransactionReceipt" | "eth_getTransactionByHash" => {
                let hash: B256 = serde_json::from_value(p(0).cloned().unwrap_or(Value::Null))
                    .map_err(|e| invalid(format!("hash: {e}")))?;
                Ok(match self.txs.get(&hash) {
                    None => Value::Null,
                    Some(m) if method == "eth_getTransactionReceipt" => {
                        serde_json::to_value(&m.receipt).unwrap_or(Value::Null)
                    }
                    Some(m) => serde_json::to_value(&m.tx).unwrap_or(Value::Null),
                })
            }
            "eth_getBlockByNumber" => {
                let n = self.block_number(p(0))?;
                Ok(self.block_json(n))
            }
            "eth_getBlockByHash" => {
                let hash: B256 = serde_json::from_value(p(0).cloned().unwrap_or(Value::Null))
                    .map_err(|e| invalid(format!("hash: {e}")))?;
                Ok(self
                    .blocks
                    .iter()
                    .position(|b| b.hash == hash)
                    .map_or(Value::Null, |n| self.block_json(n as u64)))
            }
            "eth_getLogs" => self.logs(p(0).unwrap_or(&Value::Null)),
            "evm_mine" => {
                self.mine_empty();
                Ok(quantity(self.head()))
            }
            _ => Err((-32601, format!("method {method} not supported"), None)),
        }
    }
}

fn reverted(output: &Bytes) -> RpcError {
    (
        3,
        "execution reverted".into(),
        Some(Value::String(output.to_string())),
    )
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

type Shared = Arc<Mutex<Ledger>>;

fn answer(ledger: &Shared, request: &Value) -> Value {
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let method = request.get("method").and_then(Value::as_str).unwrap_or("");
    let params = request.get("params").cloned().unwrap_or(json!([]));
    let result = match ledger.lock() {
        Ok(mut l) => l.dispatch(method, &params),
        Err(_) => Err((-32603, "chain state poisoned".into(), None)),
    };
    match result {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err((code, message, data)) => {
            let mut error = json!({"code": code, "message": message});
            if let Some(d) = data {
                error["data"] = d;
            }
            json!({"jsonrpc": "2.0", "id": id, "error": error})
        }
    }
}

/// Answers on tokio's blocking threads: a transaction runs the EVM under the ledger's lock
/// (a batch's proofs verified on L1 take tens of milliseconds of pairings), which on the async
/// workers would stall every task sharing the runtime (in the devnet, the exchange's API).
async fn rpc(State(ledger): State<Shared>, body: axum::body::Bytes) -> axum::Json<Value> {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return axum::Json(
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "parse error"}}),
        );
    };
    let answered = tokio::task::spawn_blocking(move || match request {
        Value::Array(batch) => Value::Array(batch.iter().map(|r| answer(&ledger, r)).collect()),
        one => answer(&ledger, &one),
    })
    .await;
    axum::Json(answered.unwrap_or_else(
        |_| json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32603, "message": "the chain's handler stopped"}}),
    ))
}

/// A running chain: its JSON-RPC URL; it stops when dropped.
pub struct Chain {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    ledger: Shared,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Chain {
    /// Starts a chain on the current tokio runtime: `chain_id`, the accounts funded at genesis,
    /// and the interval of empty blocks.
    pub async fn start(
        chain_id: u64,
        funded: &[(Address, U256)],
        block_time: Duration,
    ) -> std::io::Result<Chain> {
        let ledger: Shared = Arc::new(Mutex::new(Ledger::new(chain_id, funded)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let app = axum::Router::new()
            .route("/", post(rpc))
            .with_state(ledger.clone());
        let timed = ledger.clone();
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "embedded chain stopped");
            }
        });
        let timer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(block_time);
            tick.tick().await;
            loop {
                tick.tick().await;
                // Off the async workers: the lock may wait for a transaction's EVM run.
                let timed = timed.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    if let Ok(mut l) = timed.lock() {
                        l.mine_empty();
                    }
                })
                .await;
            }
        });
        Ok(Chain {
            url,
            ledger,
            tasks: vec![server, timer],
        })
    }

    /// From now on, each block's timestamp is the previous one's plus `step_s` seconds, whatever
    /// the wall clock says: L1 time becomes a function of the blocks mined (the simulator's
    /// runs then repeat exactly).
    pub fn logical_time(&self, step_s: u64) {
        if let Ok(mut l) = self.ledger.lock() {
            l.logical_step = Some(step_s.max(1));
        }
    }

    /// With `logical_time`: block timestamps also never fall behind `clock` (seconds), a
    /// simulation's clock (still a function of the run, so its runs repeat).
    pub fn logical_floor(&self, clock: impl Fn() -> u64 + Send + 'static) {
        if let Ok(mut l) = self.ledger.lock() {
            l.floor = Some(Box::new(clock));
        }
    }

    /// The head block's timestamp (seconds).
    pub fn head_time(&self) -> u64 {
        self.ledger
            .lock()
            .map_or(0, |l| l.blocks.last().map_or(0, |b| b.timestamp))
    }

    /// The head block's number.
    pub fn head(&self) -> u64 {
        self.ledger.lock().map_or(0, |l| l.head())
    }

    /// Mines `blocks` empty blocks now (time moves on L1: each is at least a second after the
    /// one before).
    pub fn mine(&self, blocks: u64) {
        if let Ok(mut l) = self.ledger.lock() {
            for _ in 0..blocks {
                l.mine_empty();
            }
        }
    }

    /// A reorg: the last `depth` blocks (1 to 63, below the head) are replaced by `depth + 1`
    /// empty ones; returns the hashes of the transactions that were in them, which the chain no
    /// longer knows (their senders' nonces are free again).
    pub fn reorg(&self, depth: u64) -> Result<Vec<B256>, String> {
        self.ledger
            .lock()
            .map_err(|_| "the chain's ledger is poisoned".to_owned())?
            .reorg(depth)
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
