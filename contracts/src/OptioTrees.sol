// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

import {Field, IPoseidon3, IPoseidon4, IPoseidon5, IPoseidon6} from "./Poseidon.sol";
import {SessionKey} from "./Words.sol";

/// What a state root hashes (docs/settlement.md, "Hash and trees"): the two trees' roots, the
/// funds, how many accounts were opened and instruments listed (the next ids), and the
/// committed oracle time (the latest publication time, ms, of the marks committed).
struct StateOpening {
    uint256 accountsRoot;
    uint256 instrumentsRoot;
    int64 insurance;
    int64 feePool;
    uint32 accounts;
    uint32 instruments;
    uint64 oracleMs;
}

/// One open position of an exiting account, with its instrument's leaf (proven with the
/// others' in `ExitProof.instrumentSiblings`), or valued at its instrument's opened mark.
struct Position {
    uint32 instrument;
    int64 qty;
    /// Valued at the mark its instrument was opened with (`OptioTrees.openInstruments`): the
    /// leaf's fields are not read.
    bool opened;
    uint256 specHash;
    uint64 status;
    int64 mark;
    uint256 riskHash;
    int64 settlementPrice;
}

/// An account's leaf opened against a batch's root: the state root's parts, the leaf's fields
/// and its proof in the accounts tree.
struct AccountOpening {
    StateOpening state;
    address owner;
    /// The margin mode's code (docs/settlement.md: the leaf's third field is nonce + 2^64
    /// positions + 2^96 mode + 2^98 liability).
    uint8 mode;
    uint256 keysHash;
    uint64 nonce;
    /// Open positions (in the leaf's third field, with the nonce, the mode and the liability).
    uint32 positions;
    /// What its shorts can owe at worst (sum |q| * W, 1e-8 micro-USDC).
    uint160 liability;
    int64 collateral;
    uint256 positionsRoot;
    /// The committed oracle time its latest liquidation auction started at (0: none did).
    uint64 since;
    uint256[] proof;
}

/// An instrument's leaf fields.
struct InstrumentLeaf {
    uint32 instrument;
    uint256 specHash;
    uint64 status;
    int64 mark;
    uint256 riskHash;
    int64 settlementPrice;
}

/// Instruments' leaves opened together against a state root: the root's parts, the leaves by
/// id (strictly increasing) and one proof for them all: the tree's nodes the leaves do not
/// give, level by level from the leaves up, within a level by parent, within a parent in slot
/// order (for one leaf, its 30 siblings). Adjacent leaves share their paths: the devnet's 58
/// instruments take 27 Poseidon(4) and 12 siblings, against 580 and 1,740 one by one.
struct InstrumentsOpening {
    StateOpening state;
    InstrumentLeaf[] leaves;
    uint256[] siblings;
}

/// What an account proves to exit (docs/settlement.md, "Exit proof").
struct ExitProof {
    uint32 account;
    StateOpening state;
    /// The margin mode's code, as `AccountOpening.mode`.
    uint8 mode;
    uint256 keysHash;
    uint64 nonce;
    /// The leaf's liability (sum |q| * W over its shorts): it hashes in the leaf's third field.
    uint160 liability;
    int64 collateral;
    /// The committed oracle time its latest liquidation auction started at (0: none did).
    uint64 since;
    uint256[] accountProof;
    /// Every open position, by instrument id, strictly increasing: the positions root is
    /// rebuilt from exactly these, so none can be left out. Empty when `positionsRoot` is
    /// given.
    Position[] positions;
    /// One proof for the leaves of the positions not `opened`, as `InstrumentsOpening.siblings`
    /// (for one leaf, its 30 siblings; adjacent leaves share their paths).
    uint256[] instrumentSiblings;
    /// Zero: the positions root is rebuilt from `positions`. Otherwise the account's positions
    /// root, built on L1 beforehand (`OptioTrees.buildPositions`), which brings its count of
    /// positions and their value at the opened marks.
    uint256 positionsRoot;
}

/// A node of a positions tree, built on L1 (`OptioTrees.buildPositions`): its height (1: its
/// children are quantities, of instruments `4 * index` to `4 * index + 3`), its index among the
/// nodes of that height, and its four children (below height 1, each an empty subtree's hash
/// or a node built before).
struct PositionsNode {
    uint8 height;
    uint32 index;
    uint256[4] children;
}

/// What `OptioTrees` reads of its rollup.
interface IFrozenRollup {
    function frozen() external view returns (bool);
    /// The last finalized batch's root (after a freeze, the root every exit is paid from).
    function finalRoot() external view returns (uint256);
}

/// Opens the settlement state's trees against a state root (docs/settlement.md, "Hash and
/// trees"): an account's leaf for the rollup's challenges, and a whole account with its
/// positions for the exodus exit; after a freeze it records instruments' marks opened against
/// the final root, so that an account holding many positions exits within a transaction's gas
/// (`openInstruments`). Deployed just before the rollup (naming the rollup's address, which the
/// rollup's constructor checks), and apart from it so that the rollup stays under the EVM's
/// 24,576-byte code limit and its creation code under EIP-3860's 49,152 bytes. Every check reverts with `BadProof` and
/// what did not open.
contract OptioTrees {
    /// Index bits of the trees (arity 4: two bits per level, docs/settlement.md).
    uint256 internal constant ACCOUNT_BITS = 24;
    uint256 internal constant INSTRUMENT_BITS = 20;
    uint256 internal constant POSITIONS_LEVELS = 10;
    int256 internal constant QTY_SCALE = 1e8;

    /// The rollup whose final root instruments are opened against (it uses this contract).
    IFrozenRollup public immutable rollup;
    IPoseidon3 public immutable h3;
    IPoseidon4 public immutable h4;
    IPoseidon5 public immutable h5;
    IPoseidon6 public immutable h6;
    /// Hashes of empty subtrees of the positions tree, by height.
    uint256[POSITIONS_LEVELS + 1] internal zeros;

    /// The final root the instruments were opened against (set by the first opening).
    uint256 public openedAt;
    /// The committed marks of the instruments opened for the exits, by id.
    mapping(uint32 => OpenedMark) public openedMarks;

    /// Positions-tree nodes built after the freeze, by height, index and hash
    /// (`buildPositions`): what positions they hold and their worth at the opened marks.
    mapping(bytes32 => BuiltNode) public builtNodes;

    /// An instrument's mark in the final state, once its leaf was opened.
    struct OpenedMark {
        bool opened;
        int64 mark;
    }

    /// A positions-tree node built on L1: its open positions and their worth (micro-USDC, each
    /// position's rounded down as an exit rounds it) at the opened marks.
    struct BuiltNode {
        bool built;
        uint32 positions;
        int216 worth;
    }

    event InstrumentOpened(uint32 indexed instrument, int64 mark);

    error BadProof(string why);
    error NotFrozen();
    /// An exit values a position at its instrument's opened mark, and the instrument is not
    /// opened.
    error NotOpened(uint32 instrument);

    /// `rollup_` is the rollup that will use these trees, deployed next at the address its
    /// deployer predicts (the rollup's constructor checks it).
    constructor(IFrozenRollup rollup_, IPoseidon3 h3_, IPoseidon4 h4_, IPoseidon5 h5_, IPoseidon6 h6_) {
        rollup = rollup_;
        (h3, h4, h5, h6) = (h3_, h4_, h5_, h6_);
        for (uint256 h = 0; h < POSITIONS_LEVELS; h++) {
            zeros[h + 1] = h4_.poseidon([zeros[h], zeros[h], zeros[h], zeros[h]]);
        }
    }

    /// Checks that `o` opens `account`'s leaf under state root `root`.
    function checkOpening(uint256 root, uint32 account, AccountOpening calldata o) external view {
        if (stateRoot(o.state) != root) revert BadProof("root");
        uint256 leaf = h6.poseidon([uint256(uint160(o.owner)), Field.check(o.keysHash), _countsWord(o.nonce, o.positions, o.mode, o.liability), Field.fromInt(o.collateral), Field.check(o.positionsRoot), uint256(o.since)]);
        if (!_member(o.state.accountsRoot, leaf, account, o.proof, ACCOUNT_BITS)) revert BadProof("account");
    }

    /// The keys hash of an account's session keys (as `AccountLeaf.keys_hash`).
    function keysHash(SessionKey[] calldata keys) external view returns (uint256 h) {
        for (uint256 i = 0; i < keys.length; i++) {
            h = h3.poseidon([h, uint256(uint160(keys[i].key)), uint256(keys[i].expiryMs)]);
        }
    }

    /// Checks exit proof `p` for `owner` against state root `root`; returns what the account is
    /// owed there (negative: nothing): its collateral plus each position at its instrument's
    /// committed mark. An `opened` position is valued at the mark its instrument was opened
    /// with (`openInstruments`, against the rollup's final root: the rollup's exit passes that
    /// root).
    function owed(uint256 root, ExitProof calldata p, address owner) external view returns (int256 total) {
        if (stateRoot(p.state) != root) revert BadProof("root");
        (int256 worth, uint256 positionsRoot, uint256 n) = _positions(root, p);
        total = p.collateral + worth;
        uint256 accountLeaf = h6.poseidon([uint256(uint160(owner)), Field.check(p.keysHash), _countsWord(p.nonce, n, p.mode, p.liability), Field.fromInt(p.collateral), positionsRoot, uint256(p.since)]);
        if (!_member(p.state.accountsRoot, accountLeaf, p.account, p.accountProof, ACCOUNT_BITS)) revert BadProof("account");
    }

    /// An exit's positions: their worth at the committed marks, the positions root they make
    /// and their count (or the built root's, `ExitProof.positionsRoot`).
    function _positions(uint256 root, ExitProof calldata p) internal view returns (int256 worth, uint256 positionsRoot, uint256 n) {
        n = p.positions.length;
        uint256[] memory idx = new uint256[](n);
        uint256[] memory val = new uint256[](n);
        // The leaves of the instruments not opened, proven together.
        uint256[] memory leafIdx = new uint256[](n);
        uint256[] memory leafVal = new uint256[](n);
        uint256 leaves = 0;
        for (uint256 i = 0; i < n; i++) {
            Position calldata x = p.positions[i];
            if (i > 0 && x.instrument <= p.positions[i - 1].instrument) revert BadProof("positions order");
            if (x.qty == 0) revert BadProof("flat position");
            int256 mark;
            if (x.opened) {
                OpenedMark memory m = openedMarks[x.instrument];
                if (!m.opened || root != openedAt) revert NotOpened(x.instrument);
                mark = m.mark;
            } else {
                // An id beyond the tree would alias one in it.
                if (uint256(x.instrument) >> INSTRUMENT_BITS != 0) revert BadProof("instrument");
                leafIdx[leaves] = x.instrument;
                leafVal[leaves++] = _instrumentHash(x.specHash, x.status, x.mark, x.riskHash, x.settlementPrice);
                mark = x.mark;
            }
            idx[i] = x.instrument;
            val[i] = Field.fromInt(x.qty);
            worth += _worth(x.qty, mark);
        }
        if (leaves > 0 ? _multiRoot(leafIdx, leafVal, leaves, p.instrumentSiblings) != p.state.instrumentsRoot : p.instrumentSiblings.length != 0) revert BadProof("instrument");
        positionsRoot = p.positionsRoot;
        if (positionsRoot == 0) {
            positionsRoot = _sparseRoot(idx, val, n);
        } else {
            // Built at the marks opened against the final root.
            BuiltNode memory b = builtNodes[_nodeKey(POSITIONS_LEVELS, 0, positionsRoot)];
            if (!b.built || n != 0 || root != openedAt) revert BadProof("positions root");
            n = b.positions;
            worth += b.worth;
        }
    }

    /// After the rollup froze, records the marks of instruments whose leaves `o` opens against
    /// its final root (the last finalized batch's), so that an exit values its positions in
    /// them without their proofs. An instrument's proof costs about 880k gas and a transaction
    /// may use at most 2^24 (EIP-7825), so an account holding many positions could not exit
    /// in one transaction: its instruments are opened first, together (their paths shared), in
    /// as many calls as they need, and each once for every account that holds it. Anyone may
    /// call.
    function openInstruments(InstrumentsOpening calldata o) external {
        if (!rollup.frozen()) revert NotFrozen();
        uint256 root = rollup.finalRoot();
        if (stateRoot(o.state) != root) revert BadProof("root");
        uint256 n = o.leaves.length;
        uint256[] memory idx = new uint256[](n);
        uint256[] memory val = new uint256[](n);
        for (uint256 i = 0; i < n; i++) {
            InstrumentLeaf calldata x = o.leaves[i];
            // Strictly increasing, and within the tree (an id beyond it would alias one in it).
            if ((i > 0 && x.instrument <= o.leaves[i - 1].instrument) || uint256(x.instrument) >> INSTRUMENT_BITS != 0) revert BadProof("instrument order");
            idx[i] = x.instrument;
            val[i] = _instrumentHash(x.specHash, x.status, x.mark, x.riskHash, x.settlementPrice);
        }
        if (n == 0 || _multiRoot(idx, val, n, o.siblings) != o.state.instrumentsRoot) revert BadProof("instrument");
        openedAt = root;
        for (uint256 i = 0; i < n; i++) {
            InstrumentLeaf calldata x = o.leaves[i];
            openedMarks[x.instrument] = OpenedMark(true, x.mark);
            emit InstrumentOpened(x.instrument, x.mark);
        }
    }

    /// The instruments tree's root from leaves `val` at ids `idx` (strictly increasing) and the
    /// nodes they do not give (`InstrumentsOpening.siblings`: every one used, none left over).
    function _multiRoot(uint256[] memory idx, uint256[] memory val, uint256 n, uint256[] calldata siblings) internal view returns (uint256) {
        uint256 k = 0;
        for (uint256 h = 0; h < INSTRUMENT_BITS / 2; h++) {
            uint256 m = 0;
            uint256 i = 0;
            while (i < n) {
                uint256 parent = idx[i] >> 2;
                uint256[4] memory c;
                for (uint256 j = 0; j < 4; j++) {
                    if (i < n && idx[i] == 4 * parent + j) {
                        c[j] = val[i++];
                    } else {
                        if (k == siblings.length) revert BadProof("siblings");
                        c[j] = Field.check(siblings[k++]);
                    }
                }
                idx[m] = parent;
                val[m] = h4.poseidon(c);
                m++;
            }
            n = m;
        }
        if (k != siblings.length) revert BadProof("siblings");
        return val[0];
    }

    /// After the rollup froze, builds positions-tree nodes from their children, each child an
    /// empty subtree or a node built before (in this call or an earlier one) and at height 1 a
    /// quantity, whose instrument must be opened (`openInstruments`); records each node with the
    /// positions it holds and their worth at the opened marks. An exit then names its account's
    /// positions root instead of carrying every position (`ExitProof.positionsRoot`): rebuilding
    /// the tree costs up to 10 hashes a position when they lie far apart, so an account holding
    /// many could not exit within a transaction's gas. A node is keyed by its height, index and
    /// hash, so it stands for the same positions wherever it is used, and the same subtree is
    /// built once for every account that holds it. Anyone may call.
    function buildPositions(PositionsNode[] calldata nodes) external {
        if (!rollup.frozen()) revert NotFrozen();
        for (uint256 i = 0; i < nodes.length; i++) {
            PositionsNode calldata x = nodes[i];
            uint256 h = x.height;
            if (h == 0 || h > POSITIONS_LEVELS || uint256(x.index) >> (2 * (POSITIONS_LEVELS - h)) != 0) revert BadProof("node");
            uint256 positions;
            int256 worth;
            for (uint256 j = 0; j < 4; j++) {
                uint256 c = Field.check(x.children[j]);
                uint256 child = 4 * uint256(x.index) + j;
                if (h == 1) {
                    if (c == 0) continue;
                    OpenedMark memory m = openedMarks[uint32(child)];
                    if (!m.opened) revert NotOpened(uint32(child));
                    positions++;
                    worth += _worth(_quantity(c), m.mark);
                } else if (c != zeros[h - 1]) {
                    BuiltNode memory b = builtNodes[_nodeKey(h - 1, child, c)];
                    if (!b.built) revert BadProof("child");
                    positions += b.positions;
                    worth += b.worth;
                }
            }
            // No truncation: a node holds at most 4^10 positions, each worth under 2^100.
            builtNodes[_nodeKey(h, x.index, h4.poseidon(x.children))] = BuiltNode(true, uint32(positions), int216(worth));
        }
    }

    /// An instrument's leaf hash from its fields (`InstrumentLeaf::hash` on the Rust side).
    function _instrumentHash(uint256 specHash, uint64 status, int64 mark, uint256 riskHash, int64 settlementPrice) internal view returns (uint256) {
        return h5.poseidon([Field.check(specHash), uint256(status), Field.fromInt(mark), Field.check(riskHash), Field.fromInt(settlementPrice)]);
    }

    /// Where a built node is recorded: its height, index and hash.
    function _nodeKey(uint256 height, uint256 index, uint256 hash) internal pure returns (bytes32) {
        return keccak256(abi.encode(height, index, hash));
    }

    /// A position's worth at a mark in micro-USDC, rounded down: a short position's liability is
    /// never rounded in the owner's favour.
    function _worth(int256 qty, int256 mark) internal pure returns (int256) {
        int256 value = qty * mark;
        return value >= 0 ? value / QTY_SCALE : -((-value + QTY_SCALE - 1) / QTY_SCALE);
    }

    /// The signed 64-bit quantity a positions-tree leaf encodes (`Field.fromInt`).
    function _quantity(uint256 leaf) internal pure returns (int256) {
        if (leaf <= uint256(uint64(type(int64).max))) return int256(leaf);
        uint256 negated = Field.P - leaf;
        if (negated > uint256(uint64(type(int64).max)) + 1) revert BadProof("quantity");
        return -int256(negated);
    }

    /// The state root over the two trees' roots and the funds leaf.
    function stateRoot(StateOpening calldata s) public view returns (uint256) {
        uint256 counts = uint256(s.accounts) | (uint256(s.instruments) << 32) | (uint256(s.oracleMs) << 64);
        uint256 funds = h3.poseidon([Field.fromInt(s.insurance), Field.fromInt(s.feePool), counts]);
        return h3.poseidon([Field.check(s.accountsRoot), Field.check(s.instrumentsRoot), funds]);
    }

    /// An account leaf's third field: the nonce, the open-position count above its 64 bits,
    /// the margin mode's code above the count's 32 and the liability (below 2^155) above the
    /// mode's 2, a field element (it splits one way only).
    function _countsWord(uint64 nonce, uint256 positions, uint8 mode, uint160 liability) internal pure returns (uint256) {
        if (mode > 3 || liability >> 155 != 0) revert BadProof("counts");
        return Field.check(uint256(nonce) | (positions << 64) | (uint256(mode) << 96) | (uint256(liability) << 98));
    }

    /// Whether `leaf` sits at `index` (below `2^bits`) under `root` in an arity-4 tree: per
    /// level, the node's slot is two bits of the index and `siblings` holds the three other
    /// children in slot order (leaf level first).
    function _member(uint256 root, uint256 leaf, uint256 index, uint256[] calldata siblings, uint256 bits) internal view returns (bool) {
        uint256 levels = bits / 2;
        // An index beyond the tree would alias the leaf at its low bits.
        if (index >> bits != 0 || siblings.length != 3 * levels) return false;
        uint256 node = leaf;
        uint256 k = 0;
        for (uint256 h = 0; h < levels; h++) {
            uint256 slot = (index >> (2 * h)) & 3;
            uint256[4] memory c;
            for (uint256 j = 0; j < 4; j++) {
                c[j] = j == slot ? node : Field.check(siblings[k++]);
            }
            node = h4.poseidon(c);
        }
        return node == root;
    }

    /// Root of a positions tree holding exactly the given leaves (indices strictly increasing).
    function _sparseRoot(uint256[] memory idx, uint256[] memory val, uint256 n) internal view returns (uint256) {
        if (n == 0) return zeros[POSITIONS_LEVELS];
        for (uint256 h = 0; h < POSITIONS_LEVELS; h++) {
            uint256 m = 0;
            uint256 i = 0;
            while (i < n) {
                uint256 parent = idx[i] >> 2;
                uint256 z = zeros[h];
                uint256[4] memory c = [z, z, z, z];
                while (i < n && idx[i] >> 2 == parent) {
                    c[idx[i] & 3] = val[i];
                    i++;
                }
                idx[m] = parent;
                val[m] = h4.poseidon(c);
                m++;
            }
            n = m;
        }
        return val[0];
    }
}
