// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

import {IERC20} from "./TestUSDC.sol";
import {Field} from "./Poseidon.sol";
import {OptioJudge} from "./OptioJudge.sol";
import {AccountOpening, ExitProof, OptioTrees} from "./OptioTrees.sol";
import {
    BLOB_HEADER,
    FILL,
    Fill,
    FillSides,
    L1_CLOSE,
    L1_DEPOSIT,
    L1_WITHDRAWAL,
    LIST,
    OPEN,
    OPERATOR_DEPOSIT,
    SessionKey,
    WITHDRAW,
    Words
} from "./Words.sol";

/// The batch-proof verifier (`Groth16Verifier.sol`).
interface IGroth16Verifier {
    function verify(uint256[8] calldata proof, uint256[7] calldata input) external view returns (bool);
    function verifyMany(uint256[8][] calldata proofs, uint256[7][] calldata inputs) external view returns (bool);
}

/// Optio's rollup on L1: the collateral vault, the chain of committed and finalized state roots,
/// the priority queue (deposits, forced withdrawal and forced close requests, each with a
/// deadline), the freeze anyone may trigger when the operator leaves one unserved, and the
/// exodus exit by
/// Merkle proof against the last finalized root (leaf layouts: docs/settlement.md).
///
/// The sequencer serves the priority queue in order (each served operation is an op in the posted
/// data, with its queue id); a batch's header says how far it got.
///
/// Validity proofs (issue #9, in part): anyone may submit a batch's Groth16 proof to
/// `verifyBatch` (or many to `verifyBatches`, one pairing check); the verifier checks it against
/// the batch's roots and L1 priority counts as committed here, the ops commitment posted with it,
/// and the evaluation of the posted words (below), and the batch is marked proven. A rollup deployed with a verifier finalizes only
/// proven batches, `finalizationDelay` after their proof; one deployed without (the default
/// devnet's: proving every batch takes more cores than a laptop has) finalizes after the delay
/// alone. The proof is bound to the posted bytes: `commitBatch` takes the Poseidon commitment
/// `C` to the batch's ops with the data, draws `z = keccak256(keccak256(words) || C) mod p` and
/// evaluates `y = z^n + sum w_i z^(n-1-i)` over the data's `n` 32-byte words; `C`, `z` and `y`
/// are public inputs, and the circuit evaluates the same polynomial over the words of the ops it
/// proves (docs/settlement.md, "Binding").
///
/// Authorization challenge (`authorizations` on): signatures stay outside the circuit; each
/// batch posts, beside its data, the signed order behind each side of each fill. Until a batch
/// is final, anyone may show that one fill side's record does not authorize it
/// (`challengeAuthorization`): the batch and every later one are reverted, the operator's bond
/// goes to the challenger and the rollup freezes. Fills of one signed order that add up beyond
/// its amount, or whose fees pass its signed fee cap, over one batch or several, are challenged
/// the same way (`challengeOrder`).
/// A record signed by a session key authorizes when the key is one the account's leaf commits
/// under the batch's root, live at the batch's time (the challenger posts the account's keys,
/// which must hash to the leaf's); `OptioJudge` reads the fills and judges the records.
/// Settlement prices and marks are judged the same way when the rollup names a risk oracle
/// (`challengePrice`): each batch posts the oracle's signature of each of them, and one without
/// it (a mark also one published outside the window before the batch's time) reverts the batch
/// and slashes the bond, as does
/// one published before the mark an earlier batch committed for its instrument
/// (`challengeMarkOrder`: marks only move forward), and one that ends an instrument's trading
/// before the expiry its posted listing dates (`challengeExpiry`). The
/// withdrawal list and the L1 operations a batch
/// serves are checked against its posted words when it is committed (`_checkMoves`), a deposit
/// served with nothing credited goes back to its depositor then, and the operator pays in what
/// its own deposits credit. Accounts' leaves (for the challenges and the exit) are opened by
/// `OptioTrees`, which the rollup creates as it does its judge. There are no admin functions
/// (nothing to change, so nothing to timelock).
contract OptioRollup {
    /// Largest single deposit (micro-USDC): the engine's per-amount limit, so every deposit the
    /// queue holds can be credited.
    uint256 public constant MAX_DEPOSIT = 1e18;
    /// Deposit to this account id (or any id not yet opened) to open a new account owned by the
    /// depositor.
    uint32 public constant NEW_ACCOUNT = type(uint32).max;

    uint8 internal constant DEPOSIT = 1;
    uint8 internal constant FORCED_WITHDRAWAL = 2;
    uint8 internal constant FORCED_CLOSE = 3;
    /// No backstop account yet.
    uint32 internal constant NONE = type(uint32).max;

    struct Batch {
        uint256 root;
        bytes32 dataHash;
        bytes32 withdrawalsHash;
        uint64 lastSeq;
        uint64 committedAt;
        uint64 priorityServed;
        /// The engine time (ms) the batch was cut at, from its data's header: it never goes
        /// back from one batch to the next, so a batch cannot be dated before one already
        /// committed (the marks' window and the session keys' expiry are judged against it),
        /// and it lies within `maxBatchLead` after and `maxBatchLag` before the time of the
        /// block that commits it.
        uint64 time;
        /// keccak256 of the authorization section posted with the batch (the fills' signed
        /// orders, then the oracle's signature of each mark).
        bytes32 authHash;
    }

    /// How far (seconds) a batch's time may lie after (`lead`) and before (`lag`) the time of
    /// the block that commits it.
    struct TimeBounds {
        uint64 lead;
        uint64 lag;
    }

    struct PriorityOp {
        uint8 kind;
        address owner;
        uint32 account;
        /// A deposit's amount; a forced close's instrument.
        uint256 amount;
        uint64 deadline;
    }

    /// A withdrawal a batch pays once final (the batch's `withdrawalsHash` is keccak256 of the
    /// ABI-encoded list).
    struct Withdrawal {
        uint32 account;
        address owner;
        uint256 amount;
    }

    IERC20 public immutable usdc;
    /// The batch-proof verifier (address 0: none, proofs are refused).
    IGroth16Verifier public immutable verifier;
    address public immutable operator;
    uint256 public immutable finalizationDelay;
    uint256 public immutable priorityWindow;
    /// How far (seconds) a batch's time may be ahead of the block that commits it (the
    /// operator's clock against L1's) and how far behind it (how long a cut batch may wait to be
    /// committed): the operator cannot hold its batches' time still for longer than the lag,
    /// nor date them ahead, so the marks' window and the session keys' expiry are judged
    /// against a time within these bounds of L1's.
    uint256 public immutable maxBatchLead;
    uint256 public immutable maxBatchLag;
    uint256 public immutable bond;
    /// Fills carry their orders' signatures (the authorization section), and anyone may
    /// challenge a fill of a batch that is not final whose signature does not authorize it.
    bool public immutable authorizations;
    /// Judges fills against their signed orders for the challenges (created here).
    OptioJudge public immutable judge;
    /// Opens accounts' leaves under committed roots, for the challenges and the exit (created
    /// here).
    OptioTrees public immutable trees;
    bool public slashed;

    Batch[] public batches;
    uint256 public lastFinalized;
    PriorityOp[] public priorityOps;
    uint256 public priorityServed;
    bool public frozen;
    /// Accounts opened and instruments listed by the committed batches (their ops say so:
    /// `_checkMoves` counts them), so that a priority operation can name only what exists.
    uint32 public accountsOpened;
    uint32 public instrumentsListed;
    /// The operator's backstop account, which takes the positions forced closes move: the first
    /// account opened for the operator's address (`NONE` before).
    uint32 public backstop = NONE;
    mapping(uint32 => bool) public exited;
    /// Deposits returned, by priority id: after a freeze, or served with nothing credited.
    mapping(uint256 => bool) public reclaimed;
    /// Batches whose validity proof verified, with the ops commitment the proof binds.
    mapping(uint256 => bool) public proven;
    mapping(uint256 => uint256) public provenCommitment;
    mapping(uint256 => uint256) public provenAt;
    /// Per committed batch: the ops commitment posted with it, and the point and value of the
    /// evaluation of its posted words (public inputs of its proof).
    mapping(uint256 => uint256) public opsCommitment;
    mapping(uint256 => uint256) public evaluationPoint;
    mapping(uint256 => uint256) public evaluation;
    /// Withdrawals paid, by batch and index in its list.
    mapping(uint256 => mapping(uint256 => bool)) public withdrawn;
    uint256 public totalDeposited;
    uint256 public totalPaid;

    event Deposit(uint256 indexed priorityId, address indexed owner, uint32 account, uint256 amount, uint64 deadline);
    event WithdrawalRequested(uint256 indexed priorityId, address indexed owner, uint32 account, uint64 deadline);
    event CloseRequested(uint256 indexed priorityId, address indexed owner, uint32 account, uint32 instrument, uint64 deadline);
    event BatchCommitted(uint256 indexed number, uint256 root, bytes32 dataHash, uint64 lastSeq);
    event BatchFinalized(uint256 indexed number, uint256 root);
    event BatchProven(uint256 indexed number, uint256 commitment);
    event Frozen(uint256 priorityId);
    event Exit(uint32 indexed account, address indexed owner, uint256 amount);
    event Reclaimed(uint256 indexed priorityId, address indexed owner, uint256 amount);
    event Withdrawn(uint256 indexed batch, uint256 index, address indexed owner, uint256 amount);
    event Challenged(uint256 indexed number, uint256 fill, bool taker, address indexed challenger, uint256 reward);
    event ChangeChallenged(uint256 indexed number, uint256 change, address indexed challenger, uint256 reward);
    event PriceChallenged(uint256 indexed number, uint256 price, address indexed challenger, uint256 reward);
    event MarkWentBack(uint256 indexed number, uint256 mark, uint256 earlier, address indexed challenger, uint256 reward);
    event ExpiredEarly(uint256 indexed number, uint256 expiry, uint256 listing, address indexed challenger, uint256 reward);
    event OrderBroken(
        uint256 indexed number, bytes32 order, int256 filled, int256 amount, int256 fees, int256 maxFee, address indexed challenger, uint256 reward
    );

    error NotOperator();
    error IsFrozen();
    error NotFrozen();
    error ZeroAmount();
    error DepositTooLarge(uint256 max);
    error TransferFailed();
    error BadBatch(string why);
    error TooEarly(uint256 finalizableAt);
    error NothingOverdue();
    error AlreadyExited(uint32 account);
    error BadProof(string why);
    error Insolvent(uint256 owed, uint256 held);
    error NotFinal(uint256 batch);
    error WrongWithdrawals();
    /// A batch serves priority operation `priorityId` other than as queued.
    error NotQueued(uint256 priorityId);
    /// A priority operation naming an account or instrument no committed batch has opened or
    /// listed.
    error UnknownAccount(uint32 account);
    error UnknownInstrument(uint32 instrument);
    /// A forced close before the backstop account exists, or of the backstop itself.
    error NoBackstop();
    error IsBackstop();
    error NoVerifier();
    error NotProven(uint256 batch);
    error AlreadyWithdrawn(uint256 batch, uint256 index);
    error NoChallenges();
    error NotReclaimable(uint256 priorityId);
    error Authorized();
    error Attested();
    error MarksInOrder();
    error OnTime();
    error WithinOrder(int256 filled, int256 amount, int256 fees, int256 maxFee);

    modifier onlyOperator() {
        if (msg.sender != operator) revert NotOperator();
        _;
    }

    modifier live() {
        if (frozen) revert IsFrozen();
        _;
    }

    /// `genesisRoot` is the root of the empty state; the value sent is the operator's bond;
    /// `authorizations_` turns on the authorization challenge (every fill must carry its
    /// orders' signatures); `oracle_` (0: none) is the risk oracle whose signature every mark
    /// of a batch needs (the mark challenge); a batch's time must lie within `bounds`
    /// around its commit's block time; `trees_` are the state's trees, deployed just before for
    /// this rollup's address.
    constructor(
        IERC20 usdc_,
        address operator_,
        OptioTrees trees_,
        uint256 genesisRoot,
        uint256 finalizationDelay_,
        uint256 priorityWindow_,
        IGroth16Verifier verifier_,
        bool authorizations_,
        address oracle_,
        TimeBounds memory bounds
    ) payable {
        authorizations = authorizations_;
        judge = new OptioJudge(oracle_);
        if (address(trees_.rollup()) != address(this)) revert BadProof("trees");
        trees = trees_;
        usdc = usdc_;
        verifier = verifier_;
        operator = operator_;
        finalizationDelay = finalizationDelay_;
        priorityWindow = priorityWindow_;
        (maxBatchLead, maxBatchLag) = (bounds.lead, bounds.lag);
        bond = msg.value;
        batches.push(Batch({root: genesisRoot, dataHash: 0, withdrawalsHash: 0, lastSeq: 0, committedAt: uint64(block.timestamp), priorityServed: 0, time: 0, authHash: 0}));
    }

    // ---- priority queue ----------------------------------------------------------------------

    /// Deposits `amount` (token units = micro-USDC) for `account` (an account that does not
    /// exist yet, e.g. `NEW_ACCOUNT`: a new one owned by the sender); the operator must include
    /// it before its deadline.
    function deposit(uint32 account, uint256 amount) external live returns (uint256 id) {
        if (amount == 0) revert ZeroAmount();
        if (amount > MAX_DEPOSIT) revert DepositTooLarge(MAX_DEPOSIT);
        if (!usdc.transferFrom(msg.sender, address(this), amount)) revert TransferFailed();
        totalDeposited += amount;
        uint64 deadline = uint64(block.timestamp + priorityWindow);
        id = priorityOps.length;
        priorityOps.push(PriorityOp({kind: DEPOSIT, owner: msg.sender, account: account, amount: amount, deadline: deadline}));
        emit Deposit(id, msg.sender, account, amount, deadline);
    }

    /// Asks the operator to withdraw `account`'s free collateral before the deadline; if it
    /// does not, anyone may freeze the contract. The account must be committed (an operation
    /// naming one that does not exist could not be served in a provable batch).
    function requestWithdrawal(uint32 account) external live returns (uint256 id) {
        if (account >= accountsOpened) revert UnknownAccount(account);
        uint64 deadline = uint64(block.timestamp + priorityWindow);
        id = priorityOps.length;
        priorityOps.push(PriorityOp({kind: FORCED_WITHDRAWAL, owner: msg.sender, account: account, amount: 0, deadline: deadline}));
        emit WithdrawalRequested(id, msg.sender, account, deadline);
    }

    /// Asks the operator to close `account`'s position in `instrument` before the deadline: the
    /// whole of it moves to the backstop account at the instrument's committed mark (a validity
    /// proof holds the operator to that, and to nothing moving when the sender does not own the
    /// account or the instrument is not active; docs/settlement.md, "Forced close"). If it is
    /// not served in time, anyone may freeze the contract, and every account exits at the marks.
    function requestClose(uint32 account, uint32 instrument) external live returns (uint256 id) {
        uint32 b = backstop;
        if (b == NONE) revert NoBackstop();
        if (account == b) revert IsBackstop();
        if (account >= accountsOpened) revert UnknownAccount(account);
        if (instrument >= instrumentsListed) revert UnknownInstrument(instrument);
        uint64 deadline = uint64(block.timestamp + priorityWindow);
        id = priorityOps.length;
        priorityOps.push(PriorityOp({kind: FORCED_CLOSE, owner: msg.sender, account: account, amount: instrument, deadline: deadline}));
        emit CloseRequested(id, msg.sender, account, instrument, deadline);
    }

    /// Freezes the contract when the oldest unserved priority operation is past its deadline.
    function freeze() external live {
        uint256 next = priorityServed;
        if (next >= priorityOps.length || priorityOps[next].deadline >= block.timestamp) revert NothingOverdue();
        frozen = true;
        emit Frozen(next);
    }

    // ---- batches -----------------------------------------------------------------------------

    /// Commits batch `number` (header fields of docs/settlement.md; the blob and the
    /// authorization section in calldata).
    function commitBatch(
        uint256 number,
        uint256 previousRoot,
        uint256 newRoot,
        uint64 firstSeq,
        uint64 lastSeq,
        uint64 priorityServed_,
        bytes32 withdrawalsHash,
        uint256 commitment,
        bytes calldata data,
        bytes calldata authorizations_
    ) external onlyOperator live {
        _checkContinues(number, previousRoot, firstSeq, lastSeq, priorityServed_);
        Field.check(newRoot);
        _bind(number, commitment, data);
        // Money the operator credits without an L1 deposit (kind 7, a devnet's faucet) is paid
        // in now, so the vault always holds what the state owes.
        uint256 minted = _checkMoves(data, withdrawalsHash, priorityServed_);
        if (minted != 0) {
            if (!usdc.transferFrom(msg.sender, address(this), minted)) revert TransferFailed();
            totalDeposited += minted;
        }
        batches.push(Batch({root: newRoot, dataHash: keccak256(data), withdrawalsHash: withdrawalsHash, lastSeq: lastSeq, committedAt: uint64(block.timestamp), priorityServed: priorityServed_, time: _time(data), authHash: keccak256(authorizations_)}));
        emit BatchCommitted(number, newRoot, keccak256(data), lastSeq);
    }

    /// Walks the ops of a batch's posted words, which its proof binds (docs/settlement.md,
    /// "What L1 pays"): every L1 operation served is the queued one, in queue order within the
    /// ids the batch serves (from where the previous batch stopped to `served`), so none is
    /// served twice (a deposit credits its amount to the account it named, or to the account
    /// opened for its depositor just before it, or nothing: then it goes back to the depositor
    /// now; a forced withdrawal names its requester, whom it pays), and `withdrawalsHash` is
    /// exactly the withdrawals the words name, in order, to the owners they name (keccak256 of
    /// `abi.encode(Withdrawal[])`), so L1 pays what the proven state took out. Returns what the
    /// operator's own deposits (kind 7) credit, which it must pay in.
    function _checkMoves(bytes calldata data, bytes32 withdrawalsHash, uint256 served) internal returns (uint256 minted) {
        uint256 list;
        uint256 cursor;
        uint256 end;
        assembly {
            list := mload(0x40)
            cursor := add(data.offset, 49)
            end := add(data.offset, data.length)
        }
        uint256 n;
        // The next queue id the batch may serve.
        uint256 queued = batches[batches.length - 1].priorityServed;
        // The account the op before opened (none: max) and for whom.
        uint256 opened = type(uint256).max;
        address openedFor;
        // Accounts opened, instruments listed and the backstop, 32 bits each from bit 0.
        uint256 tally = uint256(accountsOpened) | uint256(instrumentsListed) << 32 | uint256(backstop) << 64;
        while (true) {
            // Fills and marks, most of the words, have nothing to check: skipped here (a fill
            // is one word, a mark's length follows from its first word as in `Words.opWords`).
            {
            uint256 from = cursor;
            assembly {
                for {} 1 {} {
                    for {} and(lt(cursor, end), eq(and(calldataload(cursor), 0xff), 16)) {} {
                        cursor := add(cursor, 32)
                    }
                    let w := calldataload(cursor)
                    if or(iszero(lt(cursor, end)), iszero(eq(and(w, 0xff), 24))) { break }
                    // A mark: its word, the mark, and the risk values in chunks of 11, five a word.
                    let chunks := div(add(and(shr(104, w), 0xff), 10), 11)
                    cursor := add(cursor, mul(32, add(2, div(add(mul(chunks, 11), 4), 5))))
                }
            }
            if (cursor >= end) break;
            if (cursor != from) opened = type(uint256).max;
            }
            uint256 w;
            assembly {
                w := calldataload(cursor)
            }
            uint256 kind = w & 0xff;
            uint256 next = cursor + 32 * Words.opWords(kind, w);
            if (next > end) revert BadBatch("op past the end");
            uint256 a = uint32(w >> 8);
            if (kind == L1_DEPOSIT || kind == L1_WITHDRAWAL || kind == L1_CLOSE) {
                uint256 id;
                assembly {
                    id := shr(63, calldataload(add(cursor, 32)))
                }
                if (id < queued || id >= served) revert NotQueued(id);
                queued = id + 1;
                // A forced close: the queued request (account, instrument, requester), the
                // backstop taking the position.
                if (kind == L1_CLOSE) _checkClose(cursor, w, id, a, uint32(tally >> 64));
            }
            if (kind == WITHDRAW || kind == L1_DEPOSIT || kind == L1_WITHDRAWAL) {
                n = _move(list, n, cursor, kind, a, a == opened ? openedFor : address(0));
            } else if (kind == OPERATOR_DEPOSIT) {
                assembly {
                    minted := add(minted, and(calldataload(add(cursor, 32)), 0x7fffffffffffffff))
                }
            }
            opened = type(uint256).max;
            if (kind == OPEN) {
                opened = a;
                assembly {
                    openedFor := and(calldataload(add(cursor, 32)), 0xffffffffffffffffffffffffffffffffffffffff)
                }
                // (The proof holds an opening to the next id.)
                tally = tally >> 32 << 32 | (a + 1);
                if (uint32(tally >> 64) == NONE && openedFor == operator) tally = uint64(tally) | a << 64;
            } else if (kind == LIST) {
                tally += 1 << 32;
            }
            cursor = next;
        }
        if (tally != uint256(accountsOpened) | uint256(instrumentsListed) << 32 | uint256(backstop) << 64) {
            (accountsOpened, instrumentsListed, backstop) = (uint32(tally), uint32(tally >> 32), uint32(tally >> 64));
        }
        bytes32 h;
        assembly {
            mstore(list, 0x20)
            mstore(add(list, 32), n)
            h := keccak256(list, add(64, mul(96, n)))
        }
        if (h != withdrawalsHash) revert WrongWithdrawals();
    }

    /// Refuses a forced close (the op at calldata `cursor`, first word `w`, queue id `id`, first
    /// account `a`) unless queue entry `id` is a close request for its account and instrument by
    /// the requester it names, and `a` is the backstop `b`.
    function _checkClose(uint256 cursor, uint256 w, uint256 id, uint256 a, uint32 b) internal view {
        PriorityOp storage q = priorityOps[id];
        address requester;
        assembly {
            requester := and(calldataload(add(cursor, 64)), 0xffffffffffffffffffffffffffffffffffffffff)
        }
        if (
            q.kind != FORCED_CLOSE || uint32(w >> 40) != q.account || uint32(w >> 72) != q.amount
                || requester != q.owner || a != b
        ) revert NotQueued(id);
    }

    /// Pays queued deposit `id` back to its depositor, once.
    function _return(uint256 id, PriorityOp storage q) internal {
        reclaimed[id] = true;
        totalPaid += q.amount;
        if (!usdc.transfer(q.owner, q.amount)) revert TransferFailed();
        emit Reclaimed(id, q.owner, q.amount);
    }

    /// One op of `kind` (a withdrawal, an L1 deposit or forced withdrawal) at calldata `cursor`
    /// on account `a`, for `_checkMoves`: an L1 operation must be the one queued under its id
    /// (`freshFor` is the depositor an opening just before made `a` for, zero if none); a
    /// withdrawal that moves money joins the list at `list` (`n` entries so far). Returns the
    /// list's length.
    function _move(uint256 list, uint256 n, uint256 cursor, uint256 kind, uint256 a, address freshFor)
        internal
        returns (uint256)
    {
        uint256 w1;
        address owner;
        assembly {
            w1 := calldataload(add(cursor, 32))
            owner := and(calldataload(add(cursor, 64)), 0xffffffffffffffffffffffffffffffffffffffff)
        }
        uint256 amount = w1 & type(uint64).max >> 1;
        if (kind != WITHDRAW) {
            uint256 id = w1 >> 63;
            PriorityOp storage q = priorityOps[id];
            if (kind == L1_DEPOSIT) {
                if (q.kind != DEPOSIT || (amount != 0 && (amount != q.amount || !(a == q.account || freshFor == q.owner)))) revert NotQueued(id);
                // One the engine could not credit goes back to its depositor now (a reclaim
                // after a freeze knows it).
                if (amount == 0) _return(id, q);
                return n;
            }
            // A forced withdrawal names who asked (the proof holds it to the account's owner when
            // money moves, and to all of a flat account).
            if (q.kind != FORCED_WITHDRAWAL || a != q.account || owner != q.owner) revert NotQueued(id);
        }
        if (amount == 0) return n;
        assembly {
            let e := add(list, add(64, mul(96, n)))
            mstore(e, a)
            mstore(add(e, 32), owner)
            mstore(add(e, 64), amount)
        }
        return n + 1;
    }

    /// Refuses a batch that does not continue the chain.
    function _checkContinues(uint256 number, uint256 previousRoot, uint64 firstSeq, uint64 lastSeq, uint64 priorityServed_) internal view {
        Batch storage last = batches[batches.length - 1];
        if (number != batches.length) revert BadBatch("number");
        if (previousRoot != last.root) revert BadBatch("previous root");
        if (firstSeq != last.lastSeq + 1 || lastSeq < firstSeq) revert BadBatch("sequence range");
        if (priorityServed_ < last.priorityServed || priorityServed_ > priorityOps.length) revert BadBatch("priority operations");
    }

    /// The time in `data`'s header (after `_bind`, which checks the header is there), no
    /// earlier than the last committed batch's and within the bounds around this block's time.
    function _time(bytes calldata data) internal view returns (uint64 time) {
        time = uint64(bytes8(data[29:37]));
        if (time < batches[batches.length - 1].time) revert BadBatch("time goes back");
        if (time > (block.timestamp + maxBatchLead) * 1000) revert BadBatch("time ahead of L1");
        if (uint256(time) + maxBatchLag * 1000 < block.timestamp * 1000) revert BadBatch("time behind L1");
    }

    /// Keeps batch `number`'s ops commitment and its words' evaluation (its proof's public
    /// inputs).
    function _bind(uint256 number, uint256 commitment, bytes calldata data) internal {
        (uint256 z, uint256 y) = evaluate(data, Field.check(commitment));
        opsCommitment[number] = commitment;
        evaluationPoint[number] = z;
        evaluation[number] = y;
    }

    /// The point `z = keccak256(keccak256(words) || commitment) mod p` and the evaluation
    /// `y = z^n + sum_i w_i z^(n-1-i)` of a blob's `n` words (each below p), Horner from 1.
    function evaluate(bytes calldata data, uint256 commitment) public pure returns (uint256 z, uint256 y) {
        if (data.length < BLOB_HEADER || (data.length - BLOB_HEADER) % 32 != 0) revert BadBatch("data is not whole words");
        uint256 p = Field.P;
        bytes32 words;
        assembly {
            let len := sub(data.length, 49)
            let ptr := mload(0x40)
            calldatacopy(ptr, add(data.offset, 49), len)
            words := keccak256(ptr, len)
        }
        z = uint256(keccak256(abi.encodePacked(words, commitment))) % p;
        y = 1;
        uint256 from;
        uint256 end;
        assembly {
            from := add(data.offset, 49)
            end := add(data.offset, data.length)
        }
        for (uint256 cursor = from; cursor < end; cursor += 32) {
            uint256 w;
            assembly {
                w := calldataload(cursor)
            }
            if (w >= p) revert BadBatch("a word is not below the field modulus");
            y = addmod(mulmod(y, z, p), w, p);
        }
    }

    /// The verifier's public inputs for batch `number`: the previous and new roots and L1
    /// priority counts, the ops commitment and the words' evaluation, all as committed here
    /// (`commitment` must be the one posted).
    function batchInputs(uint256 number, uint256 commitment) public view returns (uint256[7] memory) {
        if (number == 0 || number >= batches.length) revert BadBatch("number");
        if (commitment != opsCommitment[number]) revert BadProof("not the commitment posted with the batch");
        Batch storage previous = batches[number - 1];
        Batch storage b = batches[number];
        return [
            previous.root, b.root, commitment, previous.priorityServed, b.priorityServed,
            evaluationPoint[number], evaluation[number]
        ];
    }

    /// Verifies batch `number`'s validity proof (anyone may submit it) and marks it proven.
    function verifyBatch(uint256 number, uint256 commitment, uint256[8] calldata proof) external live {
        if (address(verifier) == address(0)) revert NoVerifier();
        if (proven[number]) revert BadBatch("already proven");
        if (!verifier.verify(proof, batchInputs(number, commitment))) revert BadProof("validity proof");
        _proven(number, commitment);
    }

    /// Verifies many batches' proofs in one pairing check and marks them all proven (all or
    /// none).
    function verifyBatches(uint256[] calldata numbers, uint256[] calldata commitments, uint256[8][] calldata proofs) external live {
        if (address(verifier) == address(0)) revert NoVerifier();
        uint256 k = numbers.length;
        if (k == 0 || commitments.length != k || proofs.length != k) revert BadProof("lengths");
        uint256[7][] memory inputs = new uint256[7][](k);
        for (uint256 i = 0; i < k; i++) {
            if (proven[numbers[i]]) revert BadBatch("already proven");
            inputs[i] = batchInputs(numbers[i], commitments[i]);
        }
        if (!verifier.verifyMany(proofs, inputs)) revert BadProof("validity proofs");
        for (uint256 i = 0; i < k; i++) {
            if (proven[numbers[i]]) revert BadBatch("listed twice");
            _proven(numbers[i], commitments[i]);
        }
    }

    function _proven(uint256 number, uint256 commitment) internal {
        proven[number] = true;
        provenCommitment[number] = commitment;
        provenAt[number] = block.timestamp;
        emit BatchProven(number, commitment);
    }

    /// Finalizes the next batch: with a verifier, once it is proven and `finalizationDelay` has
    /// passed since its proof (the window of the authorization challenge, issue #9); without
    /// one, once the delay has passed since its commitment.
    function finalize() external live {
        uint256 number = lastFinalized + 1;
        if (number >= batches.length) revert BadBatch("nothing to finalize");
        Batch storage b = batches[number];
        uint256 from = b.committedAt;
        if (address(verifier) != address(0)) {
            if (!proven[number]) revert NotProven(number);
            from = provenAt[number];
        }
        if (block.timestamp < from + finalizationDelay) revert TooEarly(from + finalizationDelay);
        lastFinalized = number;
        priorityServed = b.priorityServed;
        emit BatchFinalized(number, b.root);
    }

    /// Pays withdrawal `index` of finalized batch `number` to its account's owner (anyone may
    /// call; `list` is the batch's whole withdrawal list). Also after a freeze: a finalized
    /// withdrawal is already out of the state the exits pay from.
    function withdraw(uint256 number, Withdrawal[] calldata list, uint256 index) external {
        if (number == 0 || number > lastFinalized) revert NotFinal(number);
        if (keccak256(abi.encode(list)) != batches[number].withdrawalsHash) revert WrongWithdrawals();
        if (withdrawn[number][index]) revert AlreadyWithdrawn(number, index);
        Withdrawal calldata w = list[index];
        withdrawn[number][index] = true;
        uint256 held = usdc.balanceOf(address(this));
        if (w.amount > held) revert Insolvent(w.amount, held);
        totalPaid += w.amount;
        if (!usdc.transfer(w.owner, w.amount)) revert TransferFailed();
        emit Withdrawn(number, index, w.owner, w.amount);
    }

    // ---- authorization challenge -------------------------------------------------------------


    /// Shows that one side of fill `c.fill` (counted from 0 in the posted words' order; the
    /// taker's side when `c.taker`, else the maker's) of batch `c.number`, not final yet, is
    /// not authorized by the record posted for it: `c.data` and `c.auths` are the batch's posted
    /// data and authorization section, `opening` opens the account's leaf (its owner) under the
    /// batch's root and `keys` are the account's session keys there (they must hash to the
    /// leaf's keys hash). The record authorizes the fill when its signature over the order it
    /// describes (the fill's account, instrument and side with the record's nonce, expiry,
    /// limit price, amount and maximum fee) recovers to its signer, the signer is the owner or
    /// one of `keys` expiring after the batch's time, the fill price is within the limit and
    /// the fill's size within the amount. On success the batch and every
    /// later one are reverted, the operator's bond is paid to the challenger, and the rollup
    /// freezes: everyone exits from the last finalized state.
    function challengeAuthorization(SideChallenge calldata c, AccountOpening calldata opening, SessionKey[] calldata keys)
        external
        live
    {
        if (!authorizations) revert NoChallenges();
        _checkOpen(c.number, c.data, c.auths);
        Fill memory f = judge.fillAt(c.data, c.fill);
        trees.checkOpening(batches[c.number].root, c.taker ? f.taker : f.maker, opening);
        if (trees.keysHash(keys) != opening.keysHash) revert BadProof("keys");
        if (judge.authorizes(c.auths, 2 * c.fill + (c.taker ? 1 : 0), c.data, opening.owner, keys)) revert Authorized();
        emit Challenged(c.number, c.fill, c.taker, msg.sender, address(this).balance);
        _slash(c.number);
    }

    /// The fill side an authorization challenge names: fill `fill` (counted from 0 in the posted
    /// words' order) of batch `number`, the taker's side when `taker`, with the batch's posted
    /// data and authorization section.
    struct SideChallenge {
        uint256 number;
        bytes data;
        bytes auths;
        uint256 fill;
        bool taker;
    }

    /// Shows that fills of one signed order break it: their sizes sum past its amount, or the
    /// fees they paid pass its signed fee cap (`OptioJudge.overcharged`: under Optio's domain
    /// the order's fees in total, under Derive's the fee per contract, each fee at the rates
    /// of the instrument's posted spec). `parts` name fill sides of committed batches, in
    /// ascending batch order, whose posted records all describe the same order (one EIP-712
    /// digest over the owner's account, instrument, side, nonce, expiry, limit, amount and fee
    /// cap); `listing` is the instrument's listing op (its `mark`: the j-th listing of batch
    /// `listing.number`). The last part's batch must not be final; `opening` opens the
    /// account's leaf (its owner) under its root. That batch holds a fill past the order (the
    /// fills shown are some of the order's, so the order was already broken or broke there):
    /// it and every later one are reverted, the operator's bond is paid to the challenger, and
    /// the rollup freezes.
    function challengeOrder(FillSides[] calldata parts, OptioJudge.PostedMark calldata listing, AccountOpening calldata opening)
        external
        live
    {
        if (!authorizations) revert NoChallenges();
        if (parts.length == 0) revert BadBatch("no fills");
        uint256 last = parts[parts.length - 1].number;
        _checkNotFinal(last);
        uint256 previous = 0;
        for (uint256 i = 0; i < parts.length; i++) {
            FillSides calldata p = parts[i];
            if (p.number <= previous) revert BadBatch("batches not ascending");
            previous = p.number;
            _checkPosted(p.number, p.data, p.auths);
        }
        _checkPosted(listing.number, listing.data, listing.auths);
        (OptioJudge.Tally memory t, bool broken) = judge.tally(parts, opening.owner, listing);
        if (!broken) revert WithinOrder(t.filled, t.amount, t.fees, t.maxFee);
        trees.checkOpening(batches[last].root, t.account, opening);
        emit OrderBroken(last, t.order, t.filled, t.amount, t.fees, t.maxFee, msg.sender, address(this).balance);
        _slash(last);
    }

    /// Shows that account change `later.mark` (from 0, in the posted words' order: session key
    /// changes, then margin mode changes) of batch `later.number`, not final, is not the
    /// owner's (`OptioJudge.changeBroken`): with `earlier` empty (no data), its entry in the
    /// batch's authorization section does not hold the account owner's signature of that
    /// change, alive at the batch's time; otherwise it replays change `earlier.mark` of batch
    /// `earlier.number` (an earlier change, both signed by the owner, for the same account
    /// under the same nonce, while the earlier signature lived: the gateway never takes a
    /// nonce twice in that time). `opening` opens the account's leaf (its owner) under
    /// `later`'s batch root. That batch and every later one are reverted, the operator's bond
    /// is paid to the challenger, and the rollup freezes.
    function challengeChange(OptioJudge.PostedMark calldata earlier, OptioJudge.PostedMark calldata later, AccountOpening calldata opening)
        external
        live
    {
        if (!authorizations) revert NoChallenges();
        if (earlier.data.length == 0) _checkOpen(later.number, later.data, later.auths);
        else _checkPair(earlier, later, 0);
        (bool broken, uint32 account) = judge.changeBroken(earlier, later, opening.owner);
        trees.checkOpening(batches[later.number].root, account, opening);
        if (!broken) revert Authorized();
        emit ChangeChallenged(later.number, later.mark, msg.sender, address(this).balance);
        _slash(later.number);
    }

    /// Shows that priced op `price` (from 0, in the posted words' order: settlement prices,
    /// then marks) of batch `number`, not final, is not attested by the risk oracle the rollup
    /// was deployed with: the entry for it at the end of the batch's authorization section does
    /// not hold the oracle's signature of that instrument's settlement price (or mark and risk
    /// array), published no later than the batch's time (a mark: at most `MARK_WINDOW_MS`
    /// before it; `OptioJudge.priceAttested`). The batch and every later one are reverted, the
    /// operator's bond is paid to the challenger, and the rollup freezes.
    function challengePrice(uint256 number, bytes calldata data, bytes calldata auths, uint256 price) external live {
        if (judge.oracle() == address(0)) revert NoChallenges();
        _checkOpen(number, data, auths);
        if (judge.priceAttested(data, auths, price)) revert Attested();
        emit PriceChallenged(number, price, msg.sender, address(this).balance);
        _slash(number);
    }

    /// Shows that batch `later.number`, not final, posts for an instrument a mark the oracle
    /// published before the attested mark an earlier batch posted for it (`earlier`): the
    /// engine takes an oracle's updates only forward in time, so an honest batch never goes
    /// back to an older mark (one signed within the window before its time, but replaced since).
    /// The batch and every later one are reverted, the operator's bond is paid to the
    /// challenger, and the rollup freezes.
    function challengeMarkOrder(OptioJudge.PostedMark calldata earlier, OptioJudge.PostedMark calldata later) external live {
        if (judge.oracle() == address(0)) revert NoChallenges();
        _checkPair(earlier, later, 1);
        if (!judge.wentBack(earlier, later)) revert MarksInOrder();
        emit MarkWentBack(later.number, later.mark, earlier.number, msg.sender, address(this).balance);
        _slash(later.number);
    }

    /// Shows that batch `expiry.number`, not final, ends the trading of an instrument before it
    /// expires: its expiry op `expiry.mark` names the instrument batch `listing.number`'s
    /// listing op `listing.mark` lists, whose posted spec dates its expiry (08:00 UTC; a
    /// perpetual never expires), and the batch's time is before it (`OptioJudge.expiredEarly`).
    /// The batch and every later one are reverted, the operator's bond is paid to the
    /// challenger, and the rollup freezes.
    function challengeExpiry(OptioJudge.PostedMark calldata listing, OptioJudge.PostedMark calldata expiry) external live {
        _checkPair(listing, expiry, 0);
        if (!judge.expiredEarly(listing, expiry)) revert OnTime();
        emit ExpiredEarly(expiry.number, expiry.mark, listing.number, msg.sender, address(this).balance);
        _slash(expiry.number);
    }

    /// Checks that batch `number` is not final (a challenge may still revert it).
    function _checkNotFinal(uint256 number) internal view {
        if (number <= lastFinalized) revert BadBatch("not a committed batch that is not final");
    }

    /// Checks that batch `number` is not final and that `data` and `auths` are what was posted
    /// with it.
    function _checkOpen(uint256 number, bytes calldata data, bytes calldata auths) internal view {
        _checkNotFinal(number);
        _checkPosted(number, data, auths);
    }

    /// Checks that `a` and `b` hold what was posted with their committed batches, and that
    /// `b`'s is not final and at least `gap` after `a`'s.
    function _checkPair(OptioJudge.PostedMark calldata a, OptioJudge.PostedMark calldata b, uint256 gap) internal view {
        _checkPosted(a.number, a.data, a.auths);
        if (b.number <= lastFinalized || b.number < a.number + gap) revert BadBatch("not a later batch that is not final");
        _checkPosted(b.number, b.data, b.auths);
    }

    /// Checks that `data` and `auths` are what was posted with committed batch `number`.
    function _checkPosted(uint256 number, bytes calldata data, bytes calldata auths) internal view {
        if (number == 0 || number >= batches.length) revert BadBatch("not a committed batch");
        if (keccak256(data) != batches[number].dataHash) revert BadBatch("not the posted data");
        if (keccak256(auths) != batches[number].authHash) revert BadBatch("not the posted authorizations");
    }

    /// Reverts batch `number` and every later one, freezes the rollup and pays the operator's
    /// bond to the challenger.
    function _slash(uint256 number) internal {
        while (batches.length > number) {
            uint256 n = batches.length - 1;
            delete proven[n];
            delete provenAt[n];
            delete provenCommitment[n];
            batches.pop();
        }
        frozen = true;
        slashed = true;
        uint256 reward = address(this).balance;
        (bool paid,) = msg.sender.call{value: reward}("");
        if (!paid) revert TransferFailed();
    }

    /// Priority operations ever queued (the next one gets this id).
    function priorityCount() external view returns (uint256) {
        return priorityOps.length;
    }

    /// The last finalized batch's root: after a freeze, the root every exit is paid from.
    function finalRoot() external view returns (uint256) {
        return batches[lastFinalized].root;
    }

    function committedBatches() external view returns (uint256) {
        return batches.length - 1;
    }

    // ---- exodus ------------------------------------------------------------------------------

    /// After a freeze, pays an account's owner what the last finalized state owes it: its
    /// collateral plus each position at its instrument's committed mark; once per account. A
    /// position carries its instrument's leaf (the leaves proven together, one proof for all),
    /// or is `opened` once its instrument is (`OptioTrees.openInstruments`: an account holding
    /// many positions far apart opens them first), and
    /// an account whose positions tree is too costly to rebuild in one call names it built
    /// (`OptioTrees.buildPositions`).
    function exit(ExitProof calldata p) external returns (uint256 amount) {
        if (!frozen) revert NotFrozen();
        if (exited[p.account]) revert AlreadyExited(p.account);
        int256 owed = trees.owed(batches[lastFinalized].root, p, msg.sender);
        exited[p.account] = true;
        amount = owed > 0 ? uint256(owed) : 0;
        uint256 held = usdc.balanceOf(address(this));
        if (amount > held) revert Insolvent(amount, held);
        totalPaid += amount;
        if (amount > 0 && !usdc.transfer(msg.sender, amount)) revert TransferFailed();
        emit Exit(p.account, msg.sender, amount);
    }

    /// After a freeze, returns deposit `id` to its depositor when the last finalized state did
    /// not serve it (queued at or after the finalized batches' served count: no exit pays it);
    /// once. Anyone may call; the money goes to the depositor.
    function reclaimDeposit(uint256 id) external {
        if (!frozen) revert NotFrozen();
        if (id >= priorityOps.length || id < priorityServed || reclaimed[id]) revert NotReclaimable(id);
        PriorityOp storage op = priorityOps[id];
        if (op.kind != DEPOSIT) revert NotReclaimable(id);
        reclaimed[id] = true;
        uint256 held = usdc.balanceOf(address(this));
        if (op.amount > held) revert Insolvent(op.amount, held);
        totalPaid += op.amount;
        if (!usdc.transfer(op.owner, op.amount)) revert TransferFailed();
        emit Reclaimed(id, op.owner, op.amount);
    }
}
