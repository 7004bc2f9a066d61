//! The vault, as `optio verify` checks it: whether the token balance the rollup holds pays what
//! the state rebuilt from L1 owes. A proof shows that no batch creates money inside the state;
//! this closes the loop at the boundary, where the money is a token the rollup holds.
//!
//! Two checks, each from L1 alone:
//!
//! - **The token holds the rollup's books.** `token.balanceOf(rollup)` is at least the books,
//!   `totalDeposited - totalPaid` (every token the rollup took in, less every one it paid
//!   out). A token that charges a fee on transfer, rebases down, or lets an administrator move
//!   or burn the rollup's balance breaks it, and the last users to withdraw or exit would find
//!   the vault short. More than the books is a surplus (tokens sent to the rollup directly),
//!   which pays no one.
//! - **The books are what the state owes.** `totalDeposited - totalPaid` equals the money in
//!   the state after the last committed batch (every account's collateral, negative ones
//!   included, plus the insurance fund and the fee pool), plus the withdrawals of committed
//!   batches not yet paid on L1 (no `Withdrawn` event for them), plus the deposits queued on L1
//!   and not yet served (the next batches credit them). Every op moves money between those
//!   places and nowhere else: a deposit served moves it from the queue into an account (one the
//!   engine could not credit goes back to its depositor at once, in and out of the books), a
//!   withdrawal from an account to the list its batch pays, the faucet's credits (kind 7) are
//!   paid into the vault by the operator when their batch is committed. So any difference is
//!   money made or lost between the contract and the state.
//!
//! After a freeze the second no longer holds by construction: exits pay from the last
//! finalized state (positions at their marks, not only cash), and the batches after it no longer
//! count. What matters then is whether the vault pays everyone still owed, so the second check
//! becomes: the balance covers every account not yet exited at what its exit pays (collateral
//! plus each position at its committed mark; an account worth less than nothing is paid
//! nothing), the finalized batches' unpaid withdrawals, and the deposits the finalized state
//! never served and not yet reclaimed. Short of that, exits are paid first come first served
//! and the last ones revert (`Insolvent`): a loss no cover spread before the freeze.

use crate::{Address, DynProvider, OptioRollup, Rebuilt, SettlerError, TestUSDC, U256, rpc};

/// What `audit_vault` found; amounts in token units (micro-USDC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultAudit {
    /// The token (`usdc()`).
    pub token: Address,
    /// Its balance of the rollup, or why the token did not answer `balanceOf` (the chain ran the
    /// call and it failed: a token that reverts, has no code or returns no number).
    pub held: Result<U256, String>,
    /// `totalDeposited`: every token the rollup took in.
    pub deposited: U256,
    /// `totalPaid`: every token it paid out.
    pub paid: U256,
    /// The rollup is frozen (exits pay from the last finalized state).
    pub frozen: bool,
    /// What the state owes, when it was rebuilt from every committed batch and the rollup is not
    /// frozen.
    pub owed: Option<Owed>,
    /// What the vault still pays after a freeze (`None` while not frozen).
    pub after_freeze: Option<StillOwed>,
}

/// What a frozen rollup still pays, from its last finalized state; amounts in micro-USDC, each
/// with how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StillOwed {
    /// Exits of the accounts not yet exited (no `Exit` event) that are worth more than nothing.
    pub exits: (u128, usize),
    /// What the accounts worth less than nothing lack (paid by no one: a loss no cover spread).
    pub deficits: (u128, usize),
    /// Withdrawals of finalized batches not yet paid.
    pub unpaid_withdrawals: (u128, usize),
    /// Deposits the finalized state did not serve, not yet reclaimed.
    pub reclaimable_deposits: (u128, usize),
}

impl StillOwed {
    /// All the vault pays.
    pub fn total(&self) -> u128 {
        self.exits.0 + self.unpaid_withdrawals.0 + self.reclaimable_deposits.0
    }
}

/// The money the state rebuilt from L1 owes, by where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owed {
    /// Every account's collateral (a negative one lowers it), the insurance fund and the fee
    /// pool, after the last committed batch.
    pub in_state: i128,
    /// Withdrawals of committed batches that L1 has not paid yet, and how many.
    pub unpaid_withdrawals: (u128, usize),
    /// Deposits queued on L1 that no committed batch served yet, and how many.
    pub queued_deposits: (u128, usize),
}

impl Owed {
    /// All of it.
    pub fn total(&self) -> i128 {
        self.in_state
            .saturating_add_unsigned(self.unpaid_withdrawals.0)
            .saturating_add_unsigned(self.queued_deposits.0)
    }
}

impl VaultAudit {
    /// `totalDeposited - totalPaid` (negative only if the contract paid out more than it took
    /// in, which its own checks refuse).
    pub fn books(&self) -> i128 {
        let wide = |v: U256| i128::try_from(v).unwrap_or(i128::MAX);
        wide(self.deposited).saturating_sub(wide(self.paid))
    }

    /// What is wrong, one line each (empty: the vault pays what the state owes).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let held = match &self.held {
            Ok(held) => *held,
            Err(why) => {
                problems.push(format!(
                    "the token {} does not answer balanceOf(rollup) ({why}): no one can tell what the vault holds, and every withdrawal and exit it pays would revert",
                    self.token
                ));
                return problems;
            }
        };
        let held_wide = u128::try_from(held).unwrap_or(u128::MAX);
        let held = i128::try_from(held).unwrap_or(i128::MAX);
        let books = self.books();
        if held < books {
            problems.push(format!(
                "the token {} holds {held} for the rollup, {} short of its books ({} taken in, {} paid out): the last to withdraw or exit would not be paid",
                self.token,
                books - held,
                self.deposited,
                self.paid
            ));
        }
        if let Some(owed) = self.owed
            && owed.total() != books
        {
            problems.push(format!(
                "the rollup's books ({books}) are not what the state rebuilt from L1 owes ({}: {} in the state, {} in {} unpaid withdrawals, {} in {} queued deposits)",
                owed.total(),
                owed.in_state,
                owed.unpaid_withdrawals.0,
                owed.unpaid_withdrawals.1,
                owed.queued_deposits.0,
                owed.queued_deposits.1
            ));
        }
        if let Some(still) = self.after_freeze
            && held_wide < still.total()
        {
            problems.push(format!(
                "frozen, the token {} holds {} for the rollup, {} short of what it still pays ({}: {} in {} exits, {} in {} unpaid withdrawals, {} in {} reclaimable deposits); the last to exit will not be paid",
                self.token,
                held_wide,
                still.total() - held_wide,
                still.total(),
                still.exits.0,
                still.exits.1,
                still.unpaid_withdrawals.0,
                still.unpaid_withdrawals.1,
                still.reclaimable_deposits.0,
                still.reclaimable_deposits.1
            ));
        }
        problems
    }
}

/// The token `rollup` holds, its balance of it and the rollup's books.
pub(crate) struct Books {
    pub token: Address,
    pub held: Result<U256, String>,
    pub deposited: U256,
    pub paid: U256,
}

/// Reads `Books` (the audit's and, every round, the settler's metrics).
pub(crate) async fn books(provider: &DynProvider, rollup: Address) -> Result<Books, SettlerError> {
    let contract = OptioRollup::new(rollup, provider);
    let token = contract.usdc().call().await.map_err(rpc)?;
    Ok(Books {
        token,
        held: answered(
            TestUSDC::new(token, provider)
                .balanceOf(rollup)
                .call()
                .await,
        )?,
        deposited: contract.totalDeposited().call().await.map_err(rpc)?,
        paid: contract.totalPaid().call().await.map_err(rpc)?,
    })
}

/// A call's result, its failure on the chain (a revert, no code, no number returned) as the
/// reason it gave, or the error if the endpoint did not answer at all (which says nothing of
/// the contract).
fn answered<T>(
    result: Result<T, alloy::contract::Error>,
) -> Result<Result<T, String>, SettlerError> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(alloy::contract::Error::TransportError(alloy::transports::RpcError::Transport(e))) => {
            Err(rpc(e))
        }
        Err(e) => Ok(Err(e.to_string())),
    }
}

/// Reads the vault of `rollup` and what `rebuilt` (`verify_l1_rebuilt`, from the same chain)
/// says it owes.
pub async fn audit_vault(
    provider: &DynProvider,
    rollup: Address,
    rebuilt: &Rebuilt,
) -> Result<VaultAudit, SettlerError> {
    let Books {
        token,
        held,
        deposited,
        paid,
    } = books(provider, rollup).await?;
    let frozen = OptioRollup::new(rollup, provider)
        .frozen()
        .call()
        .await
        .map_err(rpc)?;
    let owed = if rebuilt.complete && !frozen {
        Some(owed(provider, rollup, rebuilt).await?)
    } else {
        None
    };
    let after_freeze = if frozen {
        Some(still_owed(provider, rollup, rebuilt).await?)
    } else {
        None
    };
    Ok(VaultAudit {
        token,
        held,
        deposited,
        paid,
        frozen,
        owed,
        after_freeze,
    })
}

/// The withdrawals of the first `batches` batches that L1 has not paid (no `Withdrawn` event),
/// and how many.
async fn unpaid_withdrawals(
    provider: &DynProvider,
    rollup: Address,
    rebuilt: &Rebuilt,
    batches: usize,
) -> Result<(u128, usize), SettlerError> {
    let mut paid = std::collections::BTreeSet::new();
    for (_, event) in
        crate::rollup_events::<OptioRollup::Withdrawn>(provider, rollup, rebuilt.created).await?
    {
        paid.insert((event.batch, event.index));
    }
    let mut unpaid = (0u128, 0usize);
    for (i, list) in rebuilt.withdrawals.iter().take(batches).enumerate() {
        for (k, (_, _, amount)) in list.iter().enumerate() {
            if !paid.contains(&(U256::from(i + 1), U256::from(k))) {
                unpaid.0 += u128::try_from(amount.0).map_err(rpc)?;
                unpaid.1 += 1;
            }
        }
    }
    Ok(unpaid)
}

/// What a frozen rollup still pays, from the state of its last finalized batch.
async fn still_owed(
    provider: &DynProvider,
    rollup: Address,
    rebuilt: &Rebuilt,
) -> Result<StillOwed, SettlerError> {
    let contract = OptioRollup::new(rollup, provider);
    let finalized = crate::last_finalized(&contract).await?;
    // From the data the watchtower already read, not read from L1 again.
    let state = crate::state_through(&rebuilt.blobs, finalized)?;
    // The accounts that exited, from their `Exit` events (one log scan, not a call an account).
    let mut exited = std::collections::BTreeSet::new();
    for (_, event) in
        crate::rollup_events::<OptioRollup::Exit>(provider, rollup, rebuilt.created).await?
    {
        exited.insert(event.account);
    }

    let (mut exits, mut deficits) = ((0u128, 0usize), (0u128, 0usize));
    for id in 0..state.accounts().len() as u32 {
        if exited.contains(&id) {
            continue;
        }
        let proof = state
            .exit_proof(optio_types::AccountId(id))
            .ok_or_else(|| SettlerError::Rpc(format!("account {id} has no exit proof")))?;
        // What `OptioTrees.owed` pays: each position at its mark, rounded down.
        let worth = i128::from(proof.leaf.collateral.0)
            + proof
                .positions
                .iter()
                .map(|(_, q, _, leaf, _)| {
                    (i128::from(q.0) * i128::from(leaf.mark.0))
                        .div_euclid(i128::from(optio_types::QTY_SCALE))
                })
                .sum::<i128>();
        let (sum, count) = if worth >= 0 {
            &mut exits
        } else {
            &mut deficits
        };
        *sum += worth.unsigned_abs();
        *count += usize::from(worth != 0);
    }
    let unpaid = unpaid_withdrawals(provider, rollup, rebuilt, finalized as usize).await?;
    let mut reclaimable = (0u128, 0usize);
    for op in crate::priority_ops(provider, rollup, state.priority_served(), 0).await? {
        if op.kind == crate::PriorityKind::Deposit
            && !contract
                .reclaimed(U256::from(op.id))
                .call()
                .await
                .map_err(rpc)?
        {
            reclaimable.0 += u128::try_from(op.amount).map_err(rpc)?;
            reclaimable.1 += 1;
        }
    }
    Ok(StillOwed {
        exits,
        deficits,
        unpaid_withdrawals: unpaid,
        reclaimable_deposits: reclaimable,
    })
}

async fn owed(
    provider: &DynProvider,
    rollup: Address,
    rebuilt: &Rebuilt,
) -> Result<Owed, SettlerError> {
    let state = &rebuilt.state;
    let (insurance, fee_pool) = state.funds();
    let in_state = state
        .accounts()
        .iter()
        .map(|a| i128::from(a.collateral.0))
        .sum::<i128>()
        + i128::from(insurance.0)
        + i128::from(fee_pool.0);

    let unpaid = unpaid_withdrawals(provider, rollup, rebuilt, rebuilt.withdrawals.len()).await?;

    let mut queued = (0u128, 0usize);
    for op in crate::priority_ops(provider, rollup, state.priority_served(), 0).await? {
        if op.kind == crate::PriorityKind::Deposit {
            queued.0 += u128::try_from(op.amount).map_err(rpc)?;
            queued.1 += 1;
        }
    }
    Ok(Owed {
        in_state,
        unpaid_withdrawals: unpaid,
        queued_deposits: queued,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault(held: u64, deposited: u64, paid: u64, owed: Option<Owed>) -> VaultAudit {
        VaultAudit {
            token: Address::ZERO,
            held: Ok(U256::from(held)),
            deposited: U256::from(deposited),
            paid: U256::from(paid),
            frozen: owed.is_none(),
            owed,
            after_freeze: None,
        }
    }

    fn owed(in_state: i128, unpaid: u128, queued: u128) -> Option<Owed> {
        Some(Owed {
            in_state,
            unpaid_withdrawals: (unpaid, 1),
            queued_deposits: (queued, 1),
        })
    }

    #[test]
    fn the_vault_pays_what_the_state_owes_or_says_where_it_does_not() {
        // 1,000 in, 100 out: 700 in the state, 100 to pay,
        // 100 queued.
        assert!(
            vault(900, 1_000, 100, owed(700, 100, 100))
                .problems()
                .is_empty()
        );
        assert!(
            vault(950, 1_000, 100, owed(700, 100, 100))
                .problems()
                .is_empty(),
            "a surplus pays no one and is no alert"
        );
        let short = vault(899, 1_000, 100, owed(700, 100, 100)).problems();
        assert_eq!(short.len(), 1);
        assert!(short[0].contains("1 short of its books"), "{short:?}");
        for (in_state, unpaid, queued) in [(701, 100, 100), (700, 99, 100), (700, 100, 101)] {
            let problems = vault(900, 1_000, 100, owed(in_state, unpaid, queued)).problems();
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(
                problems[0].contains("are not what the state"),
                "{problems:?}"
            );
        }
        // Frozen: the books, and what the vault still pays.
        assert!(vault(900, 1_000, 100, None).problems().is_empty());
        assert_eq!(vault(0, 1_000, 100, None).problems().len(), 1);
        let frozen = |held: u64, exits: u128| VaultAudit {
            after_freeze: Some(StillOwed {
                exits: (exits, 2),
                deficits: (500, 1),
                unpaid_withdrawals: (100, 1),
                reclaimable_deposits: (100, 1),
            }),
            ..vault(held, 900, 0, None)
        };
        assert!(frozen(900, 700).problems().is_empty());
        let short = frozen(900, 701).problems();
        assert_eq!(short.len(), 1, "{short:?}");
        assert!(
            short[0].contains("1 short of what it still pays"),
            "{short:?}"
        );
        // A token that does not answer: named, whatever the rest says.
        let silent = VaultAudit {
            held: Err("execution reverted".into()),
            ..vault(900, 1_000, 100, owed(700, 100, 100))
        };
        assert_eq!(
            silent.problems(),
            [
                "the token 0x0000000000000000000000000000000000000000 does not answer balanceOf(rollup) (execution reverted): no one can tell what the vault holds, and every withdrawal and exit it pays would revert"
            ]
        );
    }
}
