//! `optio rebuild` and `optio exit-proof`: the settlement state from the data blobs alone.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use optio_state::poseidon::{hex, to_hex};
use optio_types::AccountId;
use serde_json::{Value, json};

/// Where the blobs are.
#[derive(clap::Args)]
pub struct RebuildArgs {
    /// Directory of `NNNNNNNN.blob` files (a node writes them under `<data>/batches`).
    #[arg(long, default_value = "optio-data/batches")]
    batches: PathBuf,
}

/// Which account, against the state the blobs build.
#[derive(clap::Args)]
pub struct ExitProofArgs {
    /// Directory of `NNNNNNNN.blob` files.
    #[arg(long, default_value = "optio-data/batches")]
    batches: PathBuf,
    /// Account (subaccount) id.
    #[arg(long)]
    account: u32,
}

/// Rebuilds from genesis (or, where the node pruned the finalized batches, from the checkpoint
/// it kept) and the blobs, printing every batch's root and, where the node wrote a header
/// beside the blob, checking that root against it.
pub fn rebuild(args: RebuildArgs) -> Result<()> {
    let start = optio_state::checkpoint::start(&args.batches)
        .with_context(|| format!("reading {}", args.batches.display()))?;
    let files: Vec<PathBuf> = start.blobs.iter().map(|(_, f)| f.clone()).collect();
    if files.is_empty() {
        bail!("no .blob files in {}", args.batches.display());
    }
    let blobs: Vec<Vec<u8>> = files.iter().map(std::fs::read).collect::<Result<_, _>>()?;
    let (mut state, last_seq) = optio_state::checkpoint::open(&args.batches, start.after)?;
    if start.after > 0 {
        println!(
            "from the checkpoint of batch {} (the batches up to it are pruned; L1 holds their data): root {}",
            start.after,
            to_hex(&state.root())
        );
    }
    let total = (start.after as usize) + blobs.len();
    let (mut bytes, mut fills, mut mismatches) = (0usize, 0usize, Vec::new());
    let result = optio_state::rebuild_after(
        blobs.iter().map(Vec::as_slice),
        &mut state,
        (start.after, last_seq),
        |h| {
            let i = (h.number - start.after - 1) as usize;
            bytes += blobs[i].len();
            let n = optio_state::decode(&blobs[i]).map_or(0, |(_, ops)| {
                ops.iter()
                    .filter(|o| matches!(o, optio_state::Op::Fill { .. }))
                    .count()
            });
            fills += n;
            let committed = std::fs::read_to_string(files[i].with_extension("json"))
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok());
            let check = match committed
                .as_ref()
                .and_then(|c| c["new_root"].as_str().map(str::to_owned))
            {
                Some(root) if root == to_hex(&h.new_root) => "= committed",
                Some(_) => {
                    mismatches.push(h.number);
                    "DIFFERS from the committed root"
                }
                None => "(no header to compare)",
            };
            println!(
                "batch {:>6}  seq {:>9}..{:<9} {:>7} bytes {:>6} fills  root {} {check}",
                h.number,
                h.first_seq,
                h.last_seq,
                blobs[i].len(),
                n,
                to_hex(&h.new_root)
            );
            if total >= 50
                && ((h.number as usize).is_multiple_of((total / 50).max(1))
                    || h.number as usize == total)
            {
                let done = h.number as usize * 40 / total;
                eprint!(
                    "\r[{}{}] {}/{total}",
                    "=".repeat(done),
                    " ".repeat(40 - done),
                    h.number
                );
            }
        },
    );
    if total >= 50 {
        eprintln!();
    }
    let (number, last_seq) = result?;
    println!(
        "rebuilt {number} batches up to seq {last_seq}: {} accounts, {} instruments, root {}",
        state.accounts().len(),
        state.instruments().len(),
        to_hex(&state.root())
    );
    if fills > 0 {
        println!(
            "data: {bytes} bytes for {fills} fills = {:.1} bytes per fill (all ops included)",
            bytes as f64 / fills as f64
        );
    }
    if !mismatches.is_empty() {
        bail!(
            "{} batches rebuild to a root other than the one committed: {mismatches:?}",
            mismatches.len()
        );
    }
    Ok(())
}

/// Prints the exit proof of one account as JSON (the layout of docs/settlement.md).
pub fn exit_proof(args: ExitProofArgs) -> Result<()> {
    let (state, number, _) =
        optio_gateway::batching::rebuild_dir(&args.batches, |_| {}).map_err(anyhow::Error::msg)?;
    let p = state
        .exit_proof(AccountId(args.account))
        .with_context(|| format!("no account {} after batch {number}", args.account))?;
    if !p.verify() {
        bail!("the proof does not verify against its own root (a bug: please report)");
    }
    let siblings =
        |proof: &optio_state::Proof| -> Vec<String> { proof.siblings.iter().map(to_hex).collect() };
    let out = json!({
        "batch": number,
        "root": to_hex(&p.root),
        "accounts_root": to_hex(&p.accounts_root),
        "instruments_root": to_hex(&p.instruments_root),
        "insurance": p.insurance.0,
        "fee_pool": p.fee_pool.0,
        "accounts": p.accounts,
        "instruments": p.instruments,
        "account": p.account.0,
        "leaf": {
            "owner": hex(&p.leaf.owner.0),
            "keys_hash": to_hex(&p.leaf.keys_hash),
            "nonce": p.leaf.nonce,
            "positions": p.leaf.positions,
            "liability": p.leaf.liability.to_string(),
            "collateral": p.leaf.collateral.0,
            "positions_root": to_hex(&p.leaf.positions_root),
        },
        "account_proof": siblings(&p.account_proof),
        "positions": p.positions.iter().map(|(instrument, qty, proof, leaf, inst_proof)| json!({
            "instrument": instrument.0,
            "qty": qty.0,
            "proof": siblings(proof),
            "instrument_leaf": {
                "spec_hash": to_hex(&leaf.spec_hash),
                "status": leaf.status,
                "mark": leaf.mark.0,
                "risk_hash": to_hex(&leaf.risk_hash),
                "settlement_price": leaf.settlement_price.0,
            },
            "instrument_proof": siblings(inst_proof),
        })).collect::<Vec<_>>(),
        // The exit proves its instrument leaves together (`ExitProof.instrumentSiblings`): this
        // is that proof for every position, none opened.
        "instrument_siblings": p.instrument_siblings(&(0..p.positions.len()).collect::<Vec<_>>())
            .iter()
            .map(to_hex)
            .collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// Where the rollup is and whose account exits.
#[derive(clap::Args)]
pub struct ExitArgs {
    /// Ethereum JSON-RPC endpoint.
    #[arg(long, env = "OPTIO_L1_RPC")]
    rpc: String,
    /// The rollup contract's address.
    #[arg(long)]
    rollup: String,
    /// Account (subaccount) id; every account the key owns if not given.
    #[arg(long)]
    account: Option<u32>,
    /// The owner's private key (hex); the environment keeps it out of the shell history.
    #[arg(long, env = "OPTIO_EXIT_KEY", hide_env_values = true)]
    key: String,
}

/// Submits an exodus exit built from L1 data alone, and takes back the key's deposits the
/// finalized state never served.
pub fn exit(args: ExitArgs) -> Result<()> {
    // Tells on stderr what an exit in parts sends before it (the instruments it opens); stdout
    // keeps the results.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let provider = optio_settler::connect(&args.rpc, &args.key)?;
        let owner = alloy_owner(&args.key)?;
        let rollup = args.rollup.parse().context("rollup address")?;
        let returned = optio_settler::reclaim_deposits_from_l1(&provider, rollup, owner).await?;
        for (id, amount) in &returned {
            println!("deposit {id} (never served) returned: {amount} micro-USDC to {owner}");
        }
        let paid = match args.account {
            Some(account) => vec![(
                account,
                optio_settler::exit_from_l1(&provider, rollup, account, owner).await?,
            )],
            None => match optio_settler::exit_all_from_l1(&provider, rollup, owner).await {
                Ok(paid) => paid,
                // Only unserved deposits: nothing else to exit.
                Err(_) if !returned.is_empty() => Vec::new(),
                Err(e) => return Err(e.into()),
            },
        };
        for (account, amount) in paid {
            println!("account {account} exited: paid {amount} micro-USDC to {owner}");
        }
        Ok(())
    })
}

/// A forced withdrawal or a forced close, requested on L1 by the account's owner.
#[derive(clap::Args)]
pub struct ForceArgs {
    /// Ethereum JSON-RPC endpoint.
    #[arg(long, env = "OPTIO_L1_RPC")]
    rpc: String,
    /// The rollup contract's address.
    #[arg(long)]
    rollup: String,
    /// Account (subaccount) id.
    #[arg(long)]
    account: u32,
    /// Close the account's position in this instrument (its name, e.g. BTC-PERPETUAL, looked up
    /// in the state the committed batches build, or its id) instead of withdrawing.
    #[arg(long)]
    close: Option<String>,
    /// The owner's private key (hex); the environment keeps it out of the shell history.
    #[arg(long, env = "OPTIO_EXIT_KEY", hide_env_values = true)]
    key: String,
}

/// Queues a forced withdrawal or close on L1 and prints its queue id and deadline. Only the
/// owner's request moves anything (L1 takes anyone's: a proof holds the operator to moving
/// nothing for someone else).
pub fn force(args: ForceArgs) -> Result<()> {
    use optio_settler::{OptioRollup, transact};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let provider = optio_settler::connect(&args.rpc, &args.key)?;
        let rollup_address = args.rollup.parse().context("rollup address")?;
        let rollup = OptioRollup::new(rollup_address, &provider);
        let Some(name) = &args.close else {
            let receipt = transact(rollup.requestWithdrawal(args.account))
                .await
                .context("requesting a forced withdrawal")?;
            let e = receipt
                .decoded_log::<OptioRollup::WithdrawalRequested>()
                .context("the request's event")?;
            println!(
                "forced withdrawal of account {} queued: priority operation {}, to be served by {} (unix s)",
                args.account, e.priorityId, e.deadline
            );
            return Ok(());
        };
        let instrument = match name.parse::<u32>() {
            Ok(id) => id,
            Err(_) => {
                let committed = rollup.committedBatches().call().await?;
                let upto = u64::try_from(committed).context("batch count")?;
                let blobs =
                    optio_settler::blobs_from_l1(&provider, rollup_address, upto).await?;
                let mut state = optio_state::SettlementState::new();
                optio_state::rebuild(blobs.iter().map(Vec::as_slice), &mut state, |_| {})
                    .map_err(|e| anyhow::anyhow!("L1 data does not rebuild: {e}"))?;
                state
                    .instruments()
                    .iter()
                    .position(|i| i.spec.name.to_string() == *name)
                    .with_context(|| format!("no instrument {name} in the committed batches"))?
                    as u32
            }
        };
        let receipt = transact(rollup.requestClose(args.account, instrument))
            .await
            .context("requesting a forced close")?;
        let e = receipt
            .decoded_log::<OptioRollup::CloseRequested>()
            .context("the request's event")?;
        println!(
            "forced close of account {} in instrument {instrument} ({name}) queued: priority operation {}, to be served by {} (unix s)",
            args.account, e.priorityId, e.deadline
        );
        Ok(())
    })
}

/// A secp256k1 key from its 0x-hex (an L1 key, such as the operator's).
pub(crate) fn secret_key(hex: &str) -> Result<secp256k1::SecretKey> {
    let bytes: [u8; 32] = optio_intents::parse_hex(hex)
        .and_then(|k| k.try_into().ok())
        .context("a 32-byte hex key")?;
    Ok(secp256k1::SecretKey::from_secret_bytes(bytes)?)
}

fn alloy_owner(key: &str) -> Result<optio_settler::Address> {
    optio_settler::signer_address(key).map_err(anyhow::Error::msg)
}

/// Which rollup to watch.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Ethereum JSON-RPC endpoint.
    #[arg(long, env = "OPTIO_L1_RPC")]
    rpc: String,
    /// The rollup contract's address.
    #[arg(long)]
    rollup: String,
    /// Key (0x-hex) to file authorization challenges with: a fill whose posted signed order
    /// does not authorize it (or an account change its owner did not sign, a price the oracle
    /// did not sign), in a batch not final yet, is challenged on L1 (the batch and all
    /// later ones are reverted and the operator's bond is paid to this key's address).
    #[arg(long, env = "OPTIO_CHALLENGER_KEY")]
    challenger_key: Option<String>,
    /// The published verifying key (a `.vk` file as `optio prove setup` wrote it, or its keys
    /// directory): the rollup's verifier must hold exactly this key, so that every proof L1
    /// accepted is a proof for the circuit those keys were made for.
    #[arg(long)]
    vk: Option<std::path::PathBuf>,
}

/// Checks every committed root against the posted data, every fill against its signed orders
/// and every mark against the oracle's signature, and files the challenges it can.
pub fn verify(args: VerifyArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let provider = alloy_reader(&args.rpc)?;
        let rollup = args.rollup.parse().context("rollup address")?;
        let published = match args.vk.as_deref() {
            Some(path) => Some((path, optio_prover::read_verifying_key(path)?)),
            None => None,
        };
        let deployment_bad = audit_deployment(&provider, rollup, published.as_ref()).await?;
        let (verdicts, rebuilt) = optio_settler::verify_l1_rebuilt(&provider, rollup).await?;
        let mut bad = 0;
        for v in &verdicts {
            match v {
                optio_settler::Verdict::Agrees(n) => println!("batch {n:>6}: root agrees with its data"),
                optio_settler::Verdict::Differs { number, committed, rebuilt } => {
                    bad += 1;
                    println!("batch {number:>6}: ALERT committed root {committed:#x} but the data gives {rebuilt:#x}");
                }
                optio_settler::Verdict::Priority { number, why } => {
                    bad += 1;
                    println!("batch {number:>6}: ALERT it misreports the L1 priority queue: {why}");
                }
                optio_settler::Verdict::CommitmentMismatch { number, posted, data } => {
                    bad += 1;
                    println!("batch {number:>6}: ALERT posted with ops commitment {posted:#x} but its data gives {data:#x}: no proof can verify it");
                }
                optio_settler::Verdict::BadData { number, why } => {
                    bad += 1;
                    println!("batch {number:>6}: ALERT its data cannot be rebuilt: {why}");
                }
                optio_settler::Verdict::Unauthorized { number, fill, taker, account, why, challenge } => {
                    bad += 1;
                    let side = if *taker { "taker" } else { "maker" };
                    println!("batch {number:>6}: ALERT fill {fill}'s {side} side (account {account}) is not authorized: {why}");
                    if let Some(key) = &args.challenger_key {
                        let signer = optio_settler::connect(&args.rpc, key)?;
                        let filed = optio_settler::file_challenge(&signer, rollup, challenge).await.map(|r| r.transaction_hash);
                        report_challenge(*number, filed, key)?;
                    }
                }
                optio_settler::Verdict::UnsignedChange { number, change, account, why, challenge } => {
                    bad += 1;
                    println!("batch {number:>6}: ALERT account change {change} (account {account}) is not the owner's: {why}");
                    if let Some(key) = &args.challenger_key {
                        let signer = optio_settler::connect(&args.rpc, key)?;
                        let filed = optio_settler::file_change_challenge(&signer, rollup, challenge).await.map(|r| r.transaction_hash);
                        report_challenge(*number, filed, key)?;
                    }
                }
                optio_settler::Verdict::ChangeReplayed { number, change, account, why, challenge } => {
                    bad += 1;
                    println!("batch {number:>6}: ALERT account change {change} (account {account}) is posted again: {why}");
                    if let Some(key) = &args.challenger_key {
                        let signer = optio_settler::connect(&args.rpc, key)?;
                        let filed = optio_settler::file_replay_challenge(&signer, rollup, challenge).await.map(|r| r.transaction_hash);
                        report_challenge(*number, filed, key)?;
                    }
                }
                optio_settler::Verdict::Unattested { number, price, instrument, why, challenge } => {
                    bad += 1;
                    println!("batch {number:>6}: ALERT priced op {price} (instrument {instrument}) is not the oracle's: {why}");
                    if let Some(key) = &args.challenger_key {
                        let signer = optio_settler::connect(&args.rpc, key)?;
                        let filed = optio_settler::file_price_challenge(&signer, rollup, challenge).await.map(|r| r.transaction_hash);
                        report_challenge(*number, filed, key)?;
                    }
                }
                optio_settler::Verdict::MarkWentBack { number, mark, instrument, why, challenge } => {
                    bad += 1;
                    println!("batch {number:>6}: ALERT mark {mark} (instrument {instrument}) goes back to an older one: {why}");
                    if let Some(key) = &args.challenger_key {
                        let signer = optio_settler::connect(&args.rpc, key)?;
                        let (earlier, later) = challenge.as_ref();
                        let filed = optio_settler::file_mark_order_challenge(&signer, rollup, earlier, later).await.map(|r| r.transaction_hash);
                        report_challenge(*number, filed, key)?;
                    }
                }
                optio_settler::Verdict::ExpiredEarly { number, instrument, why, challenge } => {
                    bad += 1;
                    println!("batch {number:>6}: ALERT instrument {instrument} stops trading before it expires: {why}");
                    if let Some(key) = &args.challenger_key {
                        let signer = optio_settler::connect(&args.rpc, key)?;
                        let (listing, expiry) = challenge.as_ref();
                        let filed = optio_settler::file_expiry_challenge(&signer, rollup, listing, expiry).await.map(|r| r.transaction_hash);
                        report_challenge(*number, filed, key)?;
                    }
                }
                optio_settler::Verdict::OrderBroken { number, account, why, challenge } => {
                    bad += 1;
                    println!("batch {number:>6}: ALERT a fill of account {account}'s order is not authorized: {why}");
                    if let Some(key) = &args.challenger_key {
                        let signer = optio_settler::connect(&args.rpc, key)?;
                        let filed = optio_settler::file_order_challenge(&signer, rollup, challenge).await.map(|r| r.transaction_hash);
                        report_challenge(*number, filed, key)?;
                    }
                }
            }
        }
        if let Some((path, vk)) = &published {
            bad += check_accepted_proofs(&provider, rollup, rebuilt.created, path, vk).await?;
        }
        let vault_bad = check_vault(&provider, rollup, &rebuilt).await?;
        if bad > 0 || deployment_bad + vault_bad > 0 {
            bail!(
                "{bad} of {} committed batches fail verification; {} alerts about the deployment and its vault",
                verdicts.len(),
                deployment_bad + vault_bad
            );
        }
        println!("all {} committed batches verified from L1 data", verdicts.len());
        let judging = optio_settler::judging(&provider, rollup).await?;
        println!(
            "  fills: {}; settlement prices and marks: {}",
            if judging.authorizations {
                "each within what its orders' posted signatures authorize (signer, side, limit, amount over all fills, fee cap); each session key and margin mode change signed by the account's owner, none posted twice while its signature lives"
            } else {
                "not judged (the rollup was deployed without the authorization challenge)"
            },
            match judging.oracle {
                Some(o) => format!("each signed by the oracle {o} by its batch's time (a mark within the window before it, never older than the last one committed for its instrument)"),
                None => "not judged (the rollup was deployed without an oracle)".into(),
            }
        );
        let (lead, lag) = judging.time_bounds;
        println!("  batch times: each at most {lead} s after and {lag} s before the L1 block that committed it; no instrument stops trading before its expiry");
        // How far validity proofs reach (a rollup without a verifier proves nothing).
        let progress = optio_settler::Settler::new(provider.clone(), rollup, std::path::Path::new(""))
            .progress()
            .await?;
        if progress.proven > 0 {
            println!(
                "batches 1 to {} proven on L1, each with its posted data's ops commitment; {} finalized",
                progress.proven, progress.finalized
            );
        } else {
            println!("no batch proven on L1 yet; {} finalized", progress.finalized);
        }
        Ok(())
    })
}

/// Checks that the token balance the rollup holds pays what the state rebuilt from L1 owes
/// (`optio_settler::audit_vault`); prints what it found and returns the number of alerts.
async fn check_vault(
    provider: &optio_settler::DynProvider,
    rollup: optio_settler::Address,
    rebuilt: &optio_settler::Rebuilt,
) -> Result<usize> {
    let vault = optio_settler::audit_vault(provider, rollup, rebuilt).await?;
    let problems = vault.problems();
    for why in &problems {
        println!("vault: ALERT {why}");
    }
    if problems.is_empty() {
        let books = format!(
            "the token {} holds {} micro-USDC for the rollup, at least its books ({} taken in less {} paid out)",
            vault.token,
            vault
                .held
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            vault.deposited,
            vault.paid
        );
        match vault.owed {
            Some(owed) => println!(
                "vault: {books}, which are what the state rebuilt from L1 owes: {} in accounts and funds, {} in {} unpaid withdrawals, {} in {} queued deposits",
                owed.in_state,
                owed.unpaid_withdrawals.0,
                owed.unpaid_withdrawals.1,
                owed.queued_deposits.0,
                owed.queued_deposits.1
            ),
            None => match vault.after_freeze {
                Some(still) => println!(
                    "vault: {books}; frozen, it covers what it still pays from the last finalized state: {} in {} exits, {} in {} unpaid withdrawals, {} in {} reclaimable deposits ({} lacking in {} accounts worth less than nothing, which no one pays)",
                    still.exits.0,
                    still.exits.1,
                    still.unpaid_withdrawals.0,
                    still.unpaid_withdrawals.1,
                    still.reclaimable_deposits.0,
                    still.reclaimable_deposits.1,
                    still.deficits.0,
                    still.deficits.1
                ),
                None => println!(
                    "vault: {books}; not compared with the state, whose data could not be rebuilt"
                ),
            },
        }
    }
    Ok(problems.len())
}

/// Checks that the rollup and every contract it relies on run this repository's audited build
/// (`optio_settler::audit_deployment`) and, given the published verifying key, that the
/// verifier holds it; prints what it found and returns the number of alerts.
async fn audit_deployment(
    provider: &optio_settler::DynProvider,
    rollup: optio_settler::Address,
    published: Option<&(&std::path::Path, optio_prover::VerifyingKey)>,
) -> Result<usize> {
    let audit = optio_settler::audit_deployment(provider, rollup).await?;
    let mut alerts = 0;
    for c in audit.differing() {
        alerts += 1;
        let why = c.differs.as_deref().unwrap_or_default();
        println!(
            "deployment: ALERT {} at {} is not the audited build: {why}",
            c.name, c.address
        );
    }
    if alerts == 0 {
        println!(
            "deployment: rollup, judge, trees, 4 Poseidon hashers{} run this tree's audited build (contracts/out), byte for byte but their immutables; the rollup and trees were created by its creation code with the arguments their getters read, from the empty state's root",
            if audit.verifier.is_some() {
                " and verifier"
            } else {
                ""
            }
        );
    }
    match (published, audit.verifier, audit.verifying_key) {
        (Some((path, vk)), _, Some(held)) => {
            let words = optio_prover::solidity::verifying_key(vk);
            let published: [optio_settler::U256; 30] =
                std::array::from_fn(|i| optio_settler::U256::from_be_bytes(words[i]));
            match optio_settler::key_difference(&held, &published) {
                None => println!(
                    "verifying key: the verifier {} holds the key in {}",
                    audit.verifier.unwrap_or_default(),
                    path.display()
                ),
                Some(why) => {
                    alerts += 1;
                    println!(
                        "verifying key: ALERT the verifier {} holds another key than {}: {why}",
                        audit.verifier.unwrap_or_default(),
                        path.display()
                    );
                }
            }
        }
        (Some((path, _)), None, _) => {
            alerts += 1;
            println!(
                "verifying key: ALERT the rollup has no verifier (its batches finalize unproven), so not the key in {}",
                path.display()
            );
        }
        // The verifier's code already alerted: its key cannot be read faithfully.
        (Some(_), Some(_), None) => {}
        (None, Some(v), _) => {
            println!("verifying key: the verifier {v}'s not compared with a published one (--vk)")
        }
        (None, None, _) => println!(
            "verifier: none (batches finalize unproven, the finalization delay after their commitment)"
        ),
    }
    Ok(alerts)
}

/// Checks every proof the rollup accepted natively against the published key (with the inputs
/// the rollup checked it against), so that the verdict does not rest on the chain's verifier;
/// prints what it found and returns the number of proofs that do not check.
async fn check_accepted_proofs(
    provider: &optio_settler::DynProvider,
    rollup: optio_settler::Address,
    created: u64,
    path: &std::path::Path,
    vk: &optio_prover::VerifyingKey,
) -> Result<usize> {
    let accepted = optio_settler::accepted_proofs(provider, rollup, created).await?;
    let words = |ws: &[optio_settler::U256]| -> Vec<optio_prover::solidity::Word> {
        ws.iter().map(|w| w.to_be_bytes::<32>()).collect()
    };
    let (mut checked, mut failed, mut untraced) = (0, 0, 0);
    for p in &accepted {
        match (&p.proof, &p.inputs) {
            (Some(proof), Some(inputs)) => {
                let from_input = p.read == optio_settler::ProofRead::Input;
                if optio_prover::solidity::verify_words(vk, &words(proof), &words(inputs)) {
                    checked += 1;
                    untraced += usize::from(from_input);
                } else {
                    failed += 1;
                    println!(
                        "batch {:>6}: ALERT L1 accepted a proof that does not check against the key in {}{}",
                        p.number,
                        path.display(),
                        if from_input {
                            " (read from the input of the contract transaction that proved it, which the endpoint could not trace: a contract that builds its call otherwise needs a tracing endpoint to tell)"
                        } else {
                            ""
                        }
                    );
                }
            }
            (None, _) => println!(
                "batch {:>6}: proof not checked natively: {}",
                p.number,
                match &p.read {
                    optio_settler::ProofRead::Unread(why) => why.as_str(),
                    _ => "not read",
                }
            ),
            (_, None) => println!(
                "batch {:>6}: proof not checked natively: the batch is no longer committed",
                p.number
            ),
        }
    }
    println!(
        "proofs: {checked} of the {} L1 accepted check natively against the key in {}{}",
        accepted.len(),
        path.display(),
        if untraced > 0 {
            format!(
                " ({untraced} read from a contract transaction's input, the endpoint giving no trace)"
            )
        } else {
            String::new()
        }
    );
    Ok(failed)
}

/// Prints how a challenge against batch `number`, filed with `key`, went.
fn report_challenge(
    number: u64,
    filed: Result<impl std::fmt::Display, optio_settler::SettlerError>,
    key: &str,
) -> Result<()> {
    match filed {
        Ok(tx) => println!(
            "batch {number:>6}: challenged in transaction {tx}: batches from {number} reverted, the operator's bond paid to {}",
            alloy_owner(key)?
        ),
        Err(e) => println!("batch {number:>6}: the challenge failed: {e}"),
    }
    Ok(())
}

/// Whether the rollup at `rollup` judges every fill by its orders' posted signatures
/// (deployed with `authorizations`): the gateway must then refuse what it could not justify.
pub(crate) fn judges_signatures(rpc: &str, rollup: &str) -> Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let provider = alloy_reader(rpc)?;
        let rollup: optio_settler::Address = rollup.parse().context("rollup address")?;
        optio_settler::OptioRollup::new(rollup, &provider)
            .authorizations()
            .call()
            .await
            .context("reading the rollup's authorizations flag")
    })
}

pub(crate) fn alloy_reader(url: &str) -> Result<optio_settler::DynProvider> {
    optio_settler::reader(url).map_err(anyhow::Error::msg)
}

/// The gateway as the settler sees it.
pub(crate) struct Link(pub(crate) std::sync::Arc<optio_gateway::Gateway>);

impl optio_settler::NodeLink for Link {
    fn priority_served(&self) -> u64 {
        self.0.priority_served()
    }

    fn serve(&self, op: &optio_settler::PriorityOp) -> Result<bool, String> {
        self.0.submit_l1(op.command()).map_err(|e| format!("{e:?}"))
    }

    fn progress(&self, p: optio_settler::Progress) {
        self.0.record_finalized_batch(p.finalized);
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

/// Starts the settler for `gateway` on the current runtime: posts its batches to `rollup`,
/// finalizes them, and sequences the L1 priority queue `confirmations` blocks deep.
pub fn spawn_settler(
    gateway: std::sync::Arc<optio_gateway::Gateway>,
    rpc: &str,
    rollup: &str,
    key: &str,
    batches: &std::path::Path,
    confirmations: u64,
) -> Result<optio_settler::Address> {
    let provider = optio_settler::connect(rpc, key)?;
    let rollup: optio_settler::Address = rollup.parse().context("rollup address")?;
    optio_settler::spawn(
        optio_settler::Settler::new(provider, rollup, batches),
        std::sync::Arc::new(Link(gateway)),
        std::time::Duration::from_secs(1),
        confirmations,
    );
    Ok(rollup)
}
