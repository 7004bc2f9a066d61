// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

import {MiniTest} from "./MiniTest.sol";
import {IGroth16Verifier, OptioRollup} from "../src/OptioRollup.sol";
import {ExitProof, IFrozenRollup, InstrumentLeaf, InstrumentsOpening, OptioTrees, Position, PositionsNode} from "../src/OptioTrees.sol";
import {TestUSDC} from "../src/TestUSDC.sol";
import {Words} from "../src/Words.sol";
import {Field, IPoseidon1, IPoseidon2, IPoseidon3, IPoseidon4, IPoseidon5, IPoseidon6} from "../src/Poseidon.sol";

/// The cheatcodes these tests use (forge-std's signatures).
interface VmExt {
    function readFile(string calldata) external view returns (string memory);
    function parseBytes(string calldata) external pure returns (bytes memory);
    function parseJsonUint(string calldata, string calldata) external pure returns (uint256);
    function parseJsonInt(string calldata, string calldata) external pure returns (int256);
    function parseJsonUintArray(string calldata, string calldata) external pure returns (uint256[] memory);
    function parseJsonAddress(string calldata, string calldata) external pure returns (address);
    function parseJsonBytes(string calldata, string calldata) external pure returns (bytes memory);
    function warp(uint256) external;
    function getNonce(address) external view returns (uint64);
    function computeCreateAddress(address, uint256) external pure returns (address);
    function prank(address) external;
    function expectRevert(bytes calldata) external;
    function expectRevert() external;
}

/// Deploys the Poseidon hashers from contracts/poseidon/*.hex.
abstract contract WithHashers is MiniTest {
    VmExt internal constant hevm = VmExt(address(uint160(uint256(keccak256("hevm cheat code")))));

    function deployHasher(uint256 n) internal returns (address addr) {
        bytes memory code = hevm.parseBytes(hevm.readFile(string.concat("poseidon/poseidon", _digit(n), ".hex")));
        assembly {
            addr := create(0, add(code, 0x20), mload(code))
        }
        require(addr != address(0), "hasher deployment failed");
    }

    /// The state's trees for the rollup this contract creates right after them (at the address
    /// its next nonce gives), with fresh hashers.
    function deployTrees() internal returns (OptioTrees) {
        IPoseidon3 h3 = IPoseidon3(deployHasher(3));
        IPoseidon4 h4 = IPoseidon4(deployHasher(4));
        IPoseidon5 h5 = IPoseidon5(deployHasher(5));
        IPoseidon6 h6 = IPoseidon6(deployHasher(6));
        address next = hevm.computeCreateAddress(address(this), hevm.getNonce(address(this)) + 1);
        return new OptioTrees(IFrozenRollup(next), h3, h4, h5, h6);
    }

    function _digit(uint256 n) internal pure returns (string memory) {
        bytes memory b = new bytes(1);
        b[0] = bytes1(uint8(48 + n));
        return string(b);
    }
}

/// Poseidon on the EVM equals the Rust side: the published values and the settlement vectors'
/// leaf hashes.
contract PoseidonTest is WithHashers {
    function test_hashers_match_the_reference_values() public {
        IPoseidon1 h1 = IPoseidon1(deployHasher(1));
        IPoseidon2 h2 = IPoseidon2(deployHasher(2));
        IPoseidon4 h4 = IPoseidon4(deployHasher(4));
        assertEq(h2.poseidon([uint256(1), 2]), 7853200120776062878684798364095072458815029376092732009249414926327459813530, "Poseidon([1,2])");
        assertEq(h1.poseidon([uint256(1)]), 18586133768512220936620570745912940619677854269274689475585506675881198879027, "Poseidon([1])");
        assertEq(h4.poseidon([uint256(1), 2, 3, 4]), 18821383157269793795438455681495246036402687001665670618754263018637548127333, "Poseidon([1,2,3,4])");
    }

    function test_leaf_hashes_match_the_settlement_vectors() public {
        string memory v = hevm.readFile("../test-vectors/settlement.json");
        IPoseidon3 h3 = IPoseidon3(deployHasher(3));
        IPoseidon6 h6 = IPoseidon6(deployHasher(6));
        uint256 account = h6.poseidon(
            [
                uint256(uint160(hevm.parseJsonAddress(v, ".leaves.account.owner"))),
                hevm.parseJsonUint(v, ".leaves.account.keys_hash"),
                hevm.parseJsonUint(v, ".leaves.account.nonce") | (hevm.parseJsonUint(v, ".leaves.account.positions") << 64)
                    | (hevm.parseJsonUint(v, ".leaves.account.mode") << 96) | (hevm.parseJsonUint(v, ".leaves.account.liability") << 98),
                _field(hevm.parseJsonInt(v, ".leaves.account.collateral")),
                hevm.parseJsonUint(v, ".leaves.account.positions_root"),
                hevm.parseJsonUint(v, ".leaves.account.since")
            ]
        );
        assertEq(account, hevm.parseJsonUint(v, ".leaves.account.hash"), "account leaf");
        uint256 counts = hevm.parseJsonUint(v, ".leaves.funds.accounts") | (hevm.parseJsonUint(v, ".leaves.funds.instruments") << 32)
            | (hevm.parseJsonUint(v, ".leaves.funds.oracle_ms") << 64);
        uint256 funds = h3.poseidon([uint256(hevm.parseJsonUint(v, ".leaves.funds.insurance")), hevm.parseJsonUint(v, ".leaves.funds.fee_pool"), counts]);
        assertEq(funds, hevm.parseJsonUint(v, ".leaves.funds.hash"), "funds leaf");
    }

    function _field(int256 x) internal pure returns (uint256) {
        uint256 p = 21888242871839275222246405745257275088548364400416034343698204186575808495617;
        return x >= 0 ? uint256(x) : p - uint256(-x);
    }
}

/// The escape hatch against the shared vectors: the operator commits two batches and then
/// stops serving the priority queue; anyone freezes; the account exits with the proof the Rust
/// side produced, once, for exactly what the state owes it.
contract RollupTest is WithHashers {
    uint256 constant DELAY = 1 hours;
    uint256 constant WINDOW = 6 hours;
    uint64 constant LEAD = 1 hours;
    uint64 constant LAG = 1 days;

    TestUSDC usdc;
    OptioRollup rollup;
    string v;
    address owner;
    address funder = address(0xF00D);

    function setUp() public {
        v = hevm.readFile("../test-vectors/settlement.json");
        usdc = new TestUSDC();
        rollup = new OptioRollup(
            usdc,
            address(this),
            deployTrees(),
            hevm.parseJsonUint(v, ".genesis_root"),
            DELAY,
            WINDOW,
            IGroth16Verifier(address(0)),
            true,
            address(0),
            OptioRollup.TimeBounds(LEAD, LAG)
        );
        owner = hevm.parseJsonAddress(v, ".exit_proof.owner");
        // The vault holds what users deposited.
        usdc.mint(funder, 500_000e6);
        hevm.prank(funder);
        usdc.approve(address(rollup), type(uint256).max);
        hevm.prank(funder);
        rollup.deposit(7, 400_000e6);
        // The operator (this test) pays in what its own deposits credit when it commits.
        usdc.mint(address(this), 1_000_000e6);
        usdc.approve(address(rollup), type(uint256).max);
    }

    /// Commits the vectors' batch `i`, at its time on L1 if the chain is behind it.
    function commit(uint256 i, uint64 served) internal {
        string memory b = string.concat(".batches[", _digit(i), "]");
        bytes memory blob = hevm.parseJsonBytes(v, string.concat(b, ".blob"));
        uint256 time;
        for (uint256 k = 29; k < 37; k++) {
            time = (time << 8) | uint8(blob[k]);
        }
        if (time / 1000 > block.timestamp) hevm.warp(time / 1000);
        rollup.commitBatch(
            i + 1,
            hevm.parseJsonUint(v, string.concat(b, ".previous_root")),
            hevm.parseJsonUint(v, string.concat(b, ".new_root")),
            i == 0 ? 1 : 8,
            i == 0 ? 7 : 20,
            served,
            bytes32(hevm.parseJsonUint(v, string.concat(b, ".withdrawals_hash"))),
            hevm.parseJsonUint(v, string.concat(b, ".commitment")),
            blob,
            ""
        );
    }

    /// Batch 1 credits 100,000 and 250,000 USDC by the operator's own deposits (no L1 deposit
    /// brought them): the commitment takes them from the operator, or is refused.
    function test_the_operator_pays_in_what_its_deposits_credit() public {
        uint256 before = usdc.balanceOf(address(rollup));
        usdc.approve(address(rollup), 0);
        hevm.expectRevert(abi.encodeWithSelector(TestUSDC.Insufficient.selector));
        commit(0, 0);
        assertEq(rollup.committedBatches(), 0, "nothing committed");
        usdc.approve(address(rollup), type(uint256).max);
        commit(0, 0);
        assertEq(usdc.balanceOf(address(rollup)) - before, 350_000e6, "the vault holds what the state credits");
        assertEq(rollup.totalDeposited(), 400_000e6 + 350_000e6, "counted as deposited");
    }

    function test_the_posted_words_evaluate_as_the_rust_side_computes() public {
        commit(0, 0);
        commit(1, 0);
        for (uint256 i = 0; i < 2; i++) {
            string memory b = string.concat(".batches[", _digit(i), "]");
            require(rollup.opsCommitment(i + 1) == hevm.parseJsonUint(v, string.concat(b, ".commitment")), "commitment");
            require(rollup.evaluationPoint(i + 1) == hevm.parseJsonUint(v, string.concat(b, ".z")), "z");
            require(rollup.evaluation(i + 1) == hevm.parseJsonUint(v, string.concat(b, ".y")), "y");
        }
    }

    function test_data_that_is_not_whole_field_words_is_refused() public {
        bytes memory blob = hevm.parseJsonBytes(v, ".batches[0].blob");
        uint256 c = hevm.parseJsonUint(v, ".batches[0].commitment");
        uint256 root = hevm.parseJsonUint(v, ".batches[0].new_root");
        bytes memory cut = new bytes(blob.length - 1);
        for (uint256 i = 0; i < cut.length; i++) cut[i] = blob[i];
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.BadBatch.selector, "data is not whole words"));
        rollup.commitBatch(1, hevm.parseJsonUint(v, ".genesis_root"), root, 1, 7, 0, 0, c, cut, "");
        // A word at or above the modulus.
        for (uint256 i = 49; i < 81; i++) blob[i] = 0xff;
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.BadBatch.selector, "a word is not below the field modulus"));
        rollup.commitBatch(1, hevm.parseJsonUint(v, ".genesis_root"), root, 1, 7, 0, 0, c, blob, "");
    }

    function proof() internal view returns (ExitProof memory p) {
        string memory e = ".exit_proof";
        p.account = uint32(hevm.parseJsonUint(v, ".exit_proof.account"));
        p.state.accountsRoot = hevm.parseJsonUint(v, ".exit_proof.accounts_root");
        p.state.instrumentsRoot = hevm.parseJsonUint(v, ".exit_proof.instruments_root");
        p.state.insurance = int64(hevm.parseJsonInt(v, ".exit_proof.insurance"));
        p.state.feePool = int64(hevm.parseJsonInt(v, ".exit_proof.fee_pool"));
        p.state.accounts = uint32(hevm.parseJsonUint(v, ".exit_proof.accounts"));
        p.state.instruments = uint32(hevm.parseJsonUint(v, ".exit_proof.instruments"));
        p.state.oracleMs = uint64(hevm.parseJsonUint(v, ".exit_proof.oracle_ms"));
        p.mode = uint8(hevm.parseJsonUint(v, ".exit_proof.mode"));
        p.keysHash = hevm.parseJsonUint(v, ".exit_proof.keys_hash");
        p.nonce = uint64(hevm.parseJsonUint(v, ".exit_proof.nonce"));
        p.liability = uint160(hevm.parseJsonUint(v, ".exit_proof.liability"));
        p.collateral = int64(hevm.parseJsonInt(v, ".exit_proof.collateral"));
        p.since = uint64(hevm.parseJsonUint(v, ".exit_proof.since"));
        p.accountProof = hevm.parseJsonUintArray(v, ".exit_proof.account_proof");
        p.positions = new Position[](2);
        for (uint256 i = 0; i < 2; i++) {
            string memory x = string.concat(e, ".positions[", _digit(i), "]");
            p.positions[i] = Position({
                instrument: uint32(hevm.parseJsonUint(v, string.concat(x, ".instrument"))),
                qty: int64(hevm.parseJsonInt(v, string.concat(x, ".qty"))),
                specHash: hevm.parseJsonUint(v, string.concat(x, ".spec_hash")),
                status: uint64(hevm.parseJsonUint(v, string.concat(x, ".status"))),
                mark: int64(hevm.parseJsonInt(v, string.concat(x, ".mark"))),
                riskHash: hevm.parseJsonUint(v, string.concat(x, ".risk_hash")),
                settlementPrice: int64(hevm.parseJsonInt(v, string.concat(x, ".settlement_price"))),
                opened: false
            });
        }
        p.instrumentSiblings = bothSiblings();
    }

    /// Position `i`'s instrument proof (its 30 siblings), as the Rust side wrote it.
    function instrumentProof(uint256 i) internal view returns (uint256[] memory) {
        return hevm.parseJsonUintArray(v, string.concat(".exit_proof.positions[", _digit(i), "].instrument_proof"));
    }

    /// One proof for both positions' instruments, as the Rust side computed it
    /// (`ExitProof::instrument_siblings`). The ids are 0 and 1, slots 0 and 1 of one parent, so
    /// it is the first's siblings but the second: checked here, so that the vectors cannot
    /// drift from the rule.
    function bothSiblings() internal view returns (uint256[] memory siblings) {
        siblings = hevm.parseJsonUintArray(v, ".exit_proof.instrument_siblings");
        uint256[] memory path = instrumentProof(0);
        require(siblings.length == path.length - 1, "one node fewer than a leaf's path");
        for (uint256 k = 1; k < path.length; k++) {
            require(siblings[k - 1] == path[k], "the first leaf's path but the second");
        }
    }

    /// Commits and finalizes both batches, lets the deposit go unserved past its deadline and
    /// freezes.
    function operatorDisappears() internal {
        commit(0, 0);
        commit(1, 0);
        hevm.warp(block.timestamp + DELAY);
        rollup.finalize();
        rollup.finalize();
        hevm.warp(block.timestamp + WINDOW);
        rollup.freeze();
    }

    function test_the_account_exits_once_with_exactly_what_it_is_owed() public {
        operatorDisappears();
        // Collateral plus 0.6 contracts at the committed mark 4,205 (the perpetual has no mark).
        uint256 expected = uint256(int256(hevm.parseJsonInt(v, ".exit_proof.collateral"))) + 2_523e6;
        ExitProof memory p = proof();
        hevm.prank(owner);
        uint256 paid = rollup.exit(p);
        assertEq(paid, expected, "paid");
        assertEq(usdc.balanceOf(owner), expected, "received");
        hevm.prank(owner);
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.AlreadyExited.selector, uint32(0)));
        rollup.exit(p);
    }

    function test_wrong_exits_revert() public {
        operatorDisappears();
        ExitProof memory p = proof();
        // Someone else cannot take the account's money.
        hevm.prank(funder);
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.BadProof.selector, "account"));
        rollup.exit(p);
        // More collateral than committed.
        p.collateral += 1;
        hevm.prank(owner);
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.BadProof.selector, "account"));
        rollup.exit(p);
        p.collateral -= 1;
        // Another margin mode than committed (the leaf's third field differs).
        p.mode += 1;
        hevm.prank(owner);
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.BadProof.selector, "account"));
        rollup.exit(p);
        p.mode -= 1;
        // A liability past 2^155 (its top bits would fall out of the word, aliasing a smaller one).
        p.liability += uint160(1) << 158;
        hevm.prank(owner);
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.BadProof.selector, "counts"));
        rollup.exit(p);
        p.liability -= uint160(1) << 158;
        // A position left out (the positions root no longer matches).
        Position[] memory one = new Position[](1);
        one[0] = p.positions[1];
        Position[] memory all = p.positions;
        p.positions = one;
        p.instrumentSiblings = instrumentProof(1);
        hevm.prank(owner);
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.BadProof.selector, "account"));
        rollup.exit(p);
        p.positions = all;
        p.instrumentSiblings = bothSiblings();
        // The instruments' proof a node short.
        uint256[] memory siblings = p.instrumentSiblings;
        p.instrumentSiblings = instrumentProof(1);
        hevm.prank(owner);
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.BadProof.selector, "siblings"));
        rollup.exit(p);
        p.instrumentSiblings = siblings;
        // A higher mark than committed.
        p.positions[1].mark += 1;
        hevm.prank(owner);
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.BadProof.selector, "instrument"));
        rollup.exit(p);
        p.positions[1].mark -= 1;
        // Another account id whose low 24 bits are this account's: the id is beyond the tree,
        // and would otherwise alias the leaf (and exit it twice).
        p.account += uint32(1) << 24;
        hevm.prank(owner);
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.BadProof.selector, "account"));
        rollup.exit(p);
        p.account -= uint32(1) << 24;
        // The same for an instrument id beyond the instruments tree.
        p.positions[1].instrument += uint32(1) << 20;
        hevm.prank(owner);
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.BadProof.selector, "instrument"));
        rollup.exit(p);
    }

    /// The exit proof's two instruments (ids 0 and 1: slots 0 and 1 of one parent) opened
    /// together against the final root (the funds and roots of `p`): the nodes they do not give
    /// are the first's siblings but the second.
    function opening(ExitProof memory p) internal view returns (InstrumentsOpening memory o) {
        o.state = p.state;
        o.leaves = new InstrumentLeaf[](2);
        for (uint256 i = 0; i < 2; i++) {
            o.leaves[i] = leafOf(p.positions[i]);
        }
        o.siblings = bothSiblings();
    }

    /// Position `i`'s instrument opened alone: its siblings are its proof.
    function openingOf(ExitProof memory p, uint256 i) internal view returns (InstrumentsOpening memory o) {
        o.state = p.state;
        o.leaves = new InstrumentLeaf[](1);
        o.leaves[0] = leafOf(p.positions[i]);
        o.siblings = instrumentProof(i);
    }

    function leafOf(Position memory x) internal pure returns (InstrumentLeaf memory) {
        return InstrumentLeaf(x.instrument, x.specHash, x.status, x.mark, x.riskHash, x.settlementPrice);
    }

    /// Openings `openInstruments` refuses (of `p`'s two adjacent instruments, each built
    /// afresh: memory structs are references): a leaf other than the committed one, funds other
    /// than the final root's, leaves out of order or repeated, an id beyond the tree, a node
    /// short or one too many, no leaf at all.
    function refusedOpenings(OptioTrees trees, ExitProof memory p) internal {
        InstrumentsOpening memory o = opening(p);
        o.leaves[1].mark += 1;
        hevm.expectRevert(abi.encodeWithSelector(OptioTrees.BadProof.selector, "instrument"));
        trees.openInstruments(o);
        o = opening(p);
        o.state.insurance += 1;
        hevm.expectRevert(abi.encodeWithSelector(OptioTrees.BadProof.selector, "root"));
        trees.openInstruments(o);
        // `p.state` itself, which `o.state` refers to.
        o.state.insurance -= 1;
        o = opening(p);
        (o.leaves[0], o.leaves[1]) = (o.leaves[1], o.leaves[0]);
        hevm.expectRevert(abi.encodeWithSelector(OptioTrees.BadProof.selector, "instrument order"));
        trees.openInstruments(o);
        o = opening(p);
        o.leaves[0] = leafOf(p.positions[1]);
        hevm.expectRevert(abi.encodeWithSelector(OptioTrees.BadProof.selector, "instrument order"));
        trees.openInstruments(o);
        o = opening(p);
        o.leaves[1].instrument += uint32(1) << 20;
        hevm.expectRevert(abi.encodeWithSelector(OptioTrees.BadProof.selector, "instrument order"));
        trees.openInstruments(o);
        o = opening(p);
        uint256[] memory all = o.siblings;
        uint256[] memory short = new uint256[](all.length - 1);
        uint256[] memory long = new uint256[](all.length + 1);
        for (uint256 k = 0; k < all.length; k++) {
            if (k < short.length) short[k] = all[k];
            long[k] = all[k];
        }
        o.siblings = short;
        hevm.expectRevert(abi.encodeWithSelector(OptioTrees.BadProof.selector, "siblings"));
        trees.openInstruments(o);
        o.siblings = long;
        hevm.expectRevert(abi.encodeWithSelector(OptioTrees.BadProof.selector, "siblings"));
        trees.openInstruments(o);
        o = opening(p);
        o.leaves = new InstrumentLeaf[](0);
        hevm.expectRevert(abi.encodeWithSelector(OptioTrees.BadProof.selector, "instrument"));
        trees.openInstruments(o);
    }

    /// An exit in parts: the instruments are opened first (anyone may, after the freeze and
    /// against the final root only), and the exit then carries no instrument proofs and is paid
    /// exactly what the one-call exit pays; a position whose instrument is not opened, or whose
    /// proof is left out before any opening, is refused.
    function test_an_account_exits_after_its_instruments_are_opened() public {
        ExitProof memory p = proof();
        InstrumentsOpening memory o = opening(p);
        OptioTrees trees = rollup.trees();
        hevm.expectRevert(abi.encodeWithSelector(OptioTrees.NotFrozen.selector));
        trees.openInstruments(o);
        operatorDisappears();
        uint256 expected = uint256(int256(hevm.parseJsonInt(v, ".exit_proof.collateral"))) + 2_523e6;
        Position[] memory proved = proof().positions;
        for (uint256 i = 0; i < 2; i++) {
            p.positions[i].opened = true;
            // What the leaf says is not read once the instrument is opened.
            p.positions[i].mark = 1;
        }
        p.instrumentSiblings = new uint256[](0);
        hevm.prank(owner);
        hevm.expectRevert(abi.encodeWithSelector(OptioTrees.NotOpened.selector, p.positions[0].instrument));
        rollup.exit(p);
        refusedOpenings(trees, proof());
        // Only the second instrument: the first still needs its proof.
        hevm.prank(funder);
        trees.openInstruments(openingOf(proof(), 1));
        (bool opened, int64 mark) = trees.openedMarks(o.leaves[1].instrument);
        assertTrue(opened, "opened");
        assertEq(uint256(int256(mark)), uint256(int256(proved[1].mark)), "the committed mark");
        hevm.prank(owner);
        hevm.expectRevert(abi.encodeWithSelector(OptioTrees.NotOpened.selector, p.positions[0].instrument));
        rollup.exit(p);
        // The first position with its proof, the second from the opening.
        p.positions[0] = proved[0];
        p.instrumentSiblings = instrumentProof(0);
        hevm.prank(owner);
        assertEq(rollup.exit(p), expected, "paid as the one-call exit");
        assertEq(usdc.balanceOf(owner), expected, "received");
    }

    /// Every node of the positions tree holding `p`'s positions, bottom up (what `optio exit`
    /// builds for an account whose tree is too costly to rebuild in one call), and its root.
    function positionsNodes(ExitProof memory p) internal view returns (PositionsNode[] memory nodes, uint256 root) {
        IPoseidon4 h4 = rollup.trees().h4();
        uint256 n = p.positions.length;
        uint256[] memory idx = new uint256[](n);
        uint256[] memory val = new uint256[](n);
        for (uint256 i = 0; i < n; i++) {
            idx[i] = p.positions[i].instrument;
            val[i] = Field.fromInt(p.positions[i].qty);
        }
        nodes = new PositionsNode[](10 * n);
        uint256 count = 0;
        uint256 z = 0;
        for (uint256 h = 1; h <= 10; h++) {
            uint256 m = 0;
            uint256 i = 0;
            while (i < n) {
                uint256 parent = idx[i] >> 2;
                uint256[4] memory c = [z, z, z, z];
                while (i < n && idx[i] >> 2 == parent) {
                    c[idx[i] & 3] = val[i];
                    i++;
                }
                nodes[count++] = PositionsNode(uint8(h), uint32(parent), c);
                idx[m] = parent;
                val[m] = h4.poseidon(c);
                m++;
            }
            n = m;
            z = h4.poseidon([z, z, z, z]);
        }
        root = val[0];
        assembly {
            mstore(nodes, count)
        }
    }

    /// A copy of `nodes[from..to]` (memory structs are references: a change to the copy leaves
    /// `nodes` as it was).
    function slice(PositionsNode[] memory nodes, uint256 from, uint256 to) internal pure returns (PositionsNode[] memory part) {
        part = new PositionsNode[](to - from);
        for (uint256 i = from; i < to; i++) {
            uint256[4] memory c = nodes[i].children;
            part[i - from] = PositionsNode(nodes[i].height, nodes[i].index, [c[0], c[1], c[2], c[3]]);
        }
    }

    /// Builds `buildPositions` refuses: a parent before its children, a node beyond the tree,
    /// a leaf no quantity encodes (`nodes` bottom up, the first holding `first`).
    function refusedBuilds(OptioTrees trees, PositionsNode[] memory nodes, uint32 first) internal {
        // A parent before its children.
        hevm.expectRevert(abi.encodeWithSelector(OptioTrees.BadProof.selector, "child"));
        trees.buildPositions(slice(nodes, 2, 4));
        // Beyond the tree: height 0, height 11, an index past the nodes of its height.
        PositionsNode[] memory bad = slice(nodes, 0, 1);
        bad[0].height = 0;
        hevm.expectRevert(abi.encodeWithSelector(OptioTrees.BadProof.selector, "node"));
        trees.buildPositions(bad);
        bad[0].height = 11;
        hevm.expectRevert(abi.encodeWithSelector(OptioTrees.BadProof.selector, "node"));
        trees.buildPositions(bad);
        bad = slice(nodes, 9, 10);
        bad[0].index = 1;
        hevm.expectRevert(abi.encodeWithSelector(OptioTrees.BadProof.selector, "node"));
        trees.buildPositions(bad);
        // A leaf no 64-bit quantity encodes.
        bad = slice(nodes, 0, 1);
        uint256 slot = first & 3;
        bad[0].children[slot] = uint256(1) << 64;
        hevm.expectRevert(abi.encodeWithSelector(OptioTrees.BadProof.selector, "quantity"));
        trees.buildPositions(bad);

    }

    /// An exit naming its positions root built on L1: after the freeze and the instruments'
    /// openings anyone builds the tree's nodes, over as many calls as they need, each from
    /// children built before; the exit then carries no position and is paid exactly what the
    /// one-call exit pays. Refused: building before the freeze, a quantity whose instrument is
    /// not opened, a child not built yet, a node beyond the tree, a leaf that is no quantity;
    /// an exit naming a root not built, or a root and positions both, or the root of other
    /// quantities (built, but not the account's).
    function test_an_account_exits_with_its_positions_tree_built_on_l1() public {
        ExitProof memory p = proof();
        OptioTrees trees = rollup.trees();
        (PositionsNode[] memory nodes, uint256 root) = positionsNodes(p);
        assertEq(nodes.length, 10, "both positions under one node at height 1: a node a height");
        hevm.expectRevert(abi.encodeWithSelector(OptioTrees.NotFrozen.selector));
        trees.buildPositions(nodes);
        operatorDisappears();
        hevm.expectRevert(abi.encodeWithSelector(OptioTrees.NotOpened.selector, p.positions[0].instrument));
        trees.buildPositions(nodes);
        trees.openInstruments(opening(p));
        refusedBuilds(trees, nodes, p.positions[0].instrument);

        // Built in two calls (anyone may), the exit names the root and carries no position.
        hevm.prank(funder);
        trees.buildPositions(slice(nodes, 0, 4));
        hevm.prank(funder);
        trees.buildPositions(slice(nodes, 4, nodes.length));
        (bool built, uint32 positions, int216 worth) = trees.builtNodes(keccak256(abi.encode(uint256(10), uint256(0), root)));
        assertTrue(built, "the root is built");
        assertEq(uint256(positions), 2, "it holds both positions");
        assertEq(uint256(int256(worth)), 2_523e6, "worth 0.6 contracts at the mark 4,205");
        Position[] memory carried = p.positions;
        p.positions = new Position[](0);
        p.positionsRoot = root;
        // An instruments' proof with no leaf to prove.
        hevm.prank(owner);
        hevm.expectRevert(abi.encodeWithSelector(OptioTrees.BadProof.selector, "instrument"));
        rollup.exit(p);
        p.instrumentSiblings = new uint256[](0);
        p.positionsRoot = root + 1;
        hevm.prank(owner);
        hevm.expectRevert(abi.encodeWithSelector(OptioTrees.BadProof.selector, "positions root"));
        rollup.exit(p);
        p.positions = carried;
        p.instrumentSiblings = bothSiblings();
        p.positionsRoot = root;
        hevm.prank(owner);
        hevm.expectRevert(abi.encodeWithSelector(OptioTrees.BadProof.selector, "positions root"));
        rollup.exit(p);
        p.instrumentSiblings = new uint256[](0);
        // Another tree (a contract more of the second position) builds, and is not the account's.
        ExitProof memory more = proof();
        more.positions[1].qty += 1e8;
        (PositionsNode[] memory other, uint256 otherRoot) = positionsNodes(more);
        trees.buildPositions(other);
        p.positions = new Position[](0);
        p.positionsRoot = otherRoot;
        hevm.prank(owner);
        hevm.expectRevert(abi.encodeWithSelector(OptioTrees.BadProof.selector, "account"));
        rollup.exit(p);
        p.positionsRoot = root;
        hevm.prank(owner);
        uint256 expected = uint256(int256(hevm.parseJsonInt(v, ".exit_proof.collateral"))) + 2_523e6;
        assertEq(rollup.exit(p), expected, "paid as the one-call exit");
        assertEq(usdc.balanceOf(owner), expected, "received");
    }

    function test_no_exit_before_a_freeze_and_no_freeze_while_the_operator_serves() public {
        commit(0, 1);
        hevm.warp(block.timestamp + DELAY);
        rollup.finalize();
        hevm.warp(block.timestamp + WINDOW + 1);
        // The deposit was served in a finalized batch: nothing is overdue.
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.NothingOverdue.selector));
        rollup.freeze();
        ExitProof memory p = proof();
        hevm.prank(owner);
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.NotFrozen.selector));
        rollup.exit(p);
    }

    /// After a freeze, a deposit the finalized state never served goes back to its depositor,
    /// once; a served deposit, a forced withdrawal request, an unknown id and any reclaim before
    /// the freeze are refused.
    function test_after_a_freeze_unserved_deposits_are_returned_once() public {
        commit(0, 1);
        hevm.warp(block.timestamp + DELAY);
        rollup.finalize();
        hevm.prank(funder);
        uint256 late = rollup.deposit(type(uint32).max, 25_000e6);
        assertTrue(rollup.accountsOpened() > 0, "batch 0 opens accounts");
        hevm.prank(funder);
        uint256 request = rollup.requestWithdrawal(0);
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.NotFrozen.selector));
        rollup.reclaimDeposit(late);
        hevm.warp(block.timestamp + WINDOW + 1);
        rollup.freeze();
        uint256 before = usdc.balanceOf(funder);
        rollup.reclaimDeposit(late);
        assertEq(usdc.balanceOf(funder), before + 25_000e6, "returned to the depositor");
        assertEq(rollup.totalPaid(), 25_000e6, "counted as paid");
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.NotReclaimable.selector, late));
        rollup.reclaimDeposit(late);
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.NotReclaimable.selector, 0));
        rollup.reclaimDeposit(0);
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.NotReclaimable.selector, request));
        rollup.reclaimDeposit(request);
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.NotReclaimable.selector, 99));
        rollup.reclaimDeposit(99);
    }

    /// A batch serving the funder's deposit (queue id 0: 400,000 USDC to account 7) as the words
    /// `kind 25, account 7` and `amount 0, id 0`, after the header.
    function depositServed(uint256 amount, uint256 id) internal pure returns (bytes memory) {
        return abi.encodePacked(new bytes(49), uint256(25 | (7 << 8)), amount | (id << 63));
    }

    function commitServing(bytes memory data, uint64 served) internal {
        rollup.commitBatch(
            1, hevm.parseJsonUint(v, ".genesis_root"), 1, 1, 7, served, keccak256(abi.encode(new OptioRollup.Withdrawal[](0))), 1, data, ""
        );
    }

    /// A deposit served with nothing credited (the engine could not credit it) goes back to its
    /// depositor when the batch is committed, once: a reclaim after a freeze refuses it. L1
    /// operations are served in queue order, each once: an id outside the ids the batch serves
    /// is refused.
    function test_a_deposit_served_with_nothing_credited_goes_back_at_commit() public {
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.NotQueued.selector, 0));
        commitServing(depositServed(0, 0), 0);
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.NotQueued.selector, 0));
        commitServing(abi.encodePacked(depositServed(0, 0), uint256(25 | (7 << 8)), uint256(0)), 1);
        uint256 before = usdc.balanceOf(funder);
        commitServing(depositServed(0, 0), 1);
        assertEq(usdc.balanceOf(funder) - before, 400_000e6, "returned at commit");
        assertEq(rollup.totalPaid(), 400_000e6, "counted as paid");
        assertTrue(rollup.reclaimed(0), "marked returned");
        hevm.warp(block.timestamp + WINDOW + 1);
        hevm.prank(funder);
        rollup.deposit(7, 1e6);
        hevm.warp(block.timestamp + WINDOW + 1);
        rollup.freeze();
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.NotReclaimable.selector, 0));
        rollup.reclaimDeposit(0);
    }

    /// A forced close (docs/settlement.md, "Forced close"): refused until a committed batch
    /// opens the operator's first account (the backstop), for the backstop itself, and for an
    /// account or instrument no committed batch has opened or listed (a forced withdrawal too:
    /// the operator could not serve it in a provable batch). A batch serves the request only as
    /// queued: its account, instrument and requester, with the backstop taking the position.
    function test_a_forced_close_is_served_only_as_queued() public {
        address user = address(0xB0B);
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.NoBackstop.selector));
        rollup.requestClose(0, 0);
        // Batch 1: accounts 0 (the operator's: the backstop) and 1 (the user's), instrument 0,
        // and the funder's deposit (queue id 0).
        commitServing(
            abi.encodePacked(
                new bytes(49),
                abi.encodePacked(uint256(6), uint256(uint160(address(this))), uint256(6 | (1 << 8)), uint256(uint160(user))),
                abi.encodePacked(uint256(1 | (31 << 104)), uint256(0)),
                abi.encodePacked(uint256(25 | (7 << 8)), uint256(400_000e6))
            ),
            1
        );
        assertEq(rollup.accountsOpened(), 2, "two accounts opened");
        assertEq(rollup.instrumentsListed(), 1, "one instrument listed");
        assertEq(rollup.backstop(), 0, "the operator's first account");
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.IsBackstop.selector));
        rollup.requestClose(0, 0);
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.UnknownAccount.selector, 2));
        rollup.requestClose(2, 0);
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.UnknownInstrument.selector, 1));
        rollup.requestClose(1, 1);
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.UnknownAccount.selector, 2));
        rollup.requestWithdrawal(2);
        hevm.prank(user);
        uint256 id = rollup.requestClose(1, 0);
        assertEq(id, 1, "after the deposit");

        // Served: `[27, a = backstop, b = account, instrument]`, the queue id, the requester.
        commitClose(closeServed(1, 1, 0, user), true); // the backstop is not account 1
        commitClose(closeServed(0, 0, 0, user), true); // another account
        commitClose(closeServed(0, 1, 1, user), true); // another instrument
        commitClose(closeServed(0, 1, 0, funder), true); // another requester
        commitClose(closeServed(0, 1, 0, user), false);
        assertEq(rollup.committedBatches(), 2, "served");
    }

    function commitClose(bytes memory data, bool refused) internal {
        if (refused) hevm.expectRevert(abi.encodeWithSelector(OptioRollup.NotQueued.selector, 1));
        rollup.commitBatch(2, 1, 2, 8, 9, 2, keccak256(abi.encode(new OptioRollup.Withdrawal[](0))), 1, data, "");
    }

    function closeServed(uint256 a, uint256 b, uint256 instrument, address requester) internal pure returns (bytes memory) {
        return abi.encodePacked(
            new bytes(49), uint256(27 | (a << 8) | (b << 40) | (instrument << 72)), uint256(1) << 63, uint256(uint160(requester))
        );
    }

    /// The same deposit credited in full stays in the vault.
    function test_a_deposit_credited_stays_in_the_vault() public {
        uint256 before = usdc.balanceOf(address(rollup));
        commitServing(depositServed(400_000e6, 0), 1);
        assertEq(usdc.balanceOf(address(rollup)), before, "held for the account");
        assertTrue(!rollup.reclaimed(0), "not returned");
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.NotQueued.selector, 0));
        rollup.commitBatch(
            2, 1, 2, 8, 9, 1, keccak256(abi.encode(new OptioRollup.Withdrawal[](0))), 1, depositServed(0, 0), ""
        );
    }

    /// A batch's time (its data's header) never goes back from the batch before: a batch
    /// cannot be dated before one already committed.
    function test_a_batch_dated_before_the_last_one_is_refused() public {
        bytes memory first = depositServed(400_000e6, 0);
        first[36] = 0x05; // time 5 ms (big-endian, header bytes 29..37)
        commitServing(first, 1);
        bytes memory earlier = new bytes(49);
        earlier[36] = 0x04;
        bytes32 none = keccak256(abi.encode(new OptioRollup.Withdrawal[](0)));
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.BadBatch.selector, "time goes back"));
        rollup.commitBatch(2, 1, 2, 8, 9, 1, none, 1, earlier, "");
        bytes memory same = new bytes(49);
        same[36] = 0x05;
        rollup.commitBatch(2, 1, 2, 8, 9, 1, none, 1, same, "");
        assertEq(rollup.committedBatches(), 2, "the same time is taken");
    }

    /// An empty batch's words dated `time` ms (big-endian, header bytes 29..37).
    function dated(uint256 time) internal pure returns (bytes memory data) {
        data = new bytes(49);
        for (uint256 i = 0; i < 8; i++) {
            data[36 - i] = bytes1(uint8(time >> (8 * i)));
        }
    }

    /// A batch's time lies within `maxBatchLead` after and `maxBatchLag` before the block that
    /// commits it: the operator can neither date a batch ahead of L1 nor hold its time still.
    function test_a_batch_dated_outside_the_bounds_around_l1_time_is_refused() public {
        commitServing(depositServed(400_000e6, 0), 1);
        hevm.warp(10 days);
        uint256 nowMs = 10 days * 1000;
        bytes32 none = keccak256(abi.encode(new OptioRollup.Withdrawal[](0)));
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.BadBatch.selector, "time behind L1"));
        rollup.commitBatch(2, 1, 2, 8, 9, 1, none, 1, dated(nowMs - LAG * 1000 - 1), "");
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.BadBatch.selector, "time ahead of L1"));
        rollup.commitBatch(2, 1, 2, 8, 9, 1, none, 1, dated(nowMs + LEAD * 1000 + 1), "");
        assertEq(rollup.committedBatches(), 1, "neither is taken");
        rollup.commitBatch(2, 1, 2, 8, 9, 1, none, 1, dated(nowMs - LAG * 1000), "");
        rollup.commitBatch(3, 2, 3, 10, 10, 1, none, 1, dated(nowMs + LEAD * 1000), "");
        assertEq(rollup.committedBatches(), 3, "both bounds are taken");
    }

    function test_an_exit_against_a_stale_root_reverts() public {
        commit(0, 0);
        commit(1, 0);
        hevm.warp(block.timestamp + DELAY);
        rollup.finalize(); // only batch 1: the proof is against batch 2's root
        hevm.warp(block.timestamp + WINDOW);
        rollup.freeze();
        ExitProof memory p = proof();
        hevm.prank(owner);
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.BadProof.selector, "root"));
        rollup.exit(p);
    }

    function test_batches_must_continue_the_chain_and_finalize_after_the_delay() public {
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.BadBatch.selector, "number"));
        rollup.commitBatch(2, 0, 1, 1, 7, 0, 0, 0, "", "");
        commit(0, 0);
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.BadBatch.selector, "previous root"));
        rollup.commitBatch(2, 12345, 1, 8, 20, 0, 0, 0, "", "");
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.TooEarly.selector, block.timestamp + DELAY));
        rollup.finalize();
        hevm.prank(funder);
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.NotOperator.selector));
        rollup.commitBatch(2, 0, 1, 8, 20, 0, 0, 0, "", "");
    }

    function batch2Withdrawals() internal pure returns (OptioRollup.Withdrawal[] memory list) {
        list = new OptioRollup.Withdrawal[](1);
        list[0] = OptioRollup.Withdrawal({account: 1, owner: address(0x2222222222222222222222222222222222222222), amount: 1_000e6});
    }

    function test_withdrawals_are_paid_once_from_finalized_batches_only() public {
        OptioRollup.Withdrawal[] memory list = batch2Withdrawals();
        // The Rust side's hash of the list is the ABI encoding's.
        assertEq(keccak256(abi.encode(list)), bytes32(hevm.parseJsonUint(v, ".batches[1].withdrawals_hash")), "withdrawals hash");
        commit(0, 0);
        // The list must be the withdrawals the posted words name, to the owners they name.
        OptioRollup.Withdrawal[] memory toFunder = batch2Withdrawals();
        toFunder[0].owner = funder;
        bytes32[2] memory wrong = [keccak256(abi.encode(toFunder)), keccak256(abi.encode(new OptioRollup.Withdrawal[](0)))];
        for (uint256 i = 0; i < 2; i++) {
            hevm.expectRevert(abi.encodeWithSelector(OptioRollup.WrongWithdrawals.selector));
            rollup.commitBatch(
                2,
                hevm.parseJsonUint(v, ".batches[1].previous_root"),
                hevm.parseJsonUint(v, ".batches[1].new_root"),
                8,
                20,
                0,
                wrong[i],
                hevm.parseJsonUint(v, ".batches[1].commitment"),
                hevm.parseJsonBytes(v, ".batches[1].blob"),
                ""
            );
        }
        commit(1, 0);
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.NotFinal.selector, uint256(2)));
        rollup.withdraw(2, list, 0);
        hevm.warp(block.timestamp + DELAY);
        rollup.finalize();
        rollup.finalize();
        OptioRollup.Withdrawal[] memory forged = batch2Withdrawals();
        forged[0].owner = funder;
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.WrongWithdrawals.selector));
        rollup.withdraw(2, forged, 0);
        rollup.withdraw(2, list, 0);
        assertEq(usdc.balanceOf(list[0].owner), 1_000e6, "paid to the account's owner");
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.AlreadyWithdrawn.selector, uint256(2), uint256(0)));
        rollup.withdraw(2, list, 0);
    }

    /// A rollup deployed without a verifier refuses every proof (real proofs against a real
    /// verifier: crates/settlement/prover/tests/evm_verifier.rs).
    /// The trees are deployed apart, naming the rollup they serve: a rollup refuses trees made
    /// for another address (they would read another rollup's final root).
    function test_a_rollup_refuses_trees_made_for_another_rollup() public {
        IPoseidon4 h4 = IPoseidon4(deployHasher(4));
        OptioTrees other = new OptioTrees(IFrozenRollup(address(0xBEEF)), IPoseidon3(address(0)), h4, IPoseidon5(address(0)), IPoseidon6(address(0)));
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.BadProof.selector, "trees"));
        new OptioRollup(usdc, address(this), other, 0, DELAY, WINDOW, IGroth16Verifier(address(0)), true, address(0), OptioRollup.TimeBounds(LEAD, LAG));
    }

    function test_verify_batch_refuses_without_a_verifier() public {
        commit(0, 0);
        uint256[8] memory noProof;
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.NoVerifier.selector));
        rollup.verifyBatch(1, 0, noProof);
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.BadBatch.selector, "number"));
        rollup.batchInputs(2, 0);
    }

    /// A deposit above the engine's per-amount limit is refused on L1 (the queue only holds
    /// deposits the sequencer can credit).
    function test_deposit_above_cap_reverts() public {
        usdc.mint(funder, 2e18);
        hevm.prank(funder);
        hevm.expectRevert(abi.encodeWithSelector(OptioRollup.DepositTooLarge.selector, uint256(1e18)));
        rollup.deposit(9, 1e18 + 1);
        assertEq(rollup.priorityCount(), 1, "nothing queued");
    }

    /// Fuzz: any deposit is held and counted; amounts beyond the balance revert and change
    /// nothing.
    function testFuzz_deposits_are_held(uint256 amount) public {
        amount = bound(amount, 1, 100_000e6);
        uint256 before = usdc.balanceOf(address(rollup));
        hevm.prank(funder);
        rollup.deposit(9, amount);
        assertEq(usdc.balanceOf(address(rollup)), before + amount, "held");
        assertEq(rollup.totalDeposited(), 400_000e6 + amount, "counted");
    }
}

/// Drives the rollup with random deposits, forced withdrawal requests, time and freezes.
contract Handler is MiniTest {
    VmExt internal constant hevm = VmExt(address(uint160(uint256(keccak256("hevm cheat code")))));
    OptioRollup public rollup;
    TestUSDC public usdc;
    uint256 public deposited;

    constructor(OptioRollup rollup_, TestUSDC usdc_) {
        rollup = rollup_;
        usdc = usdc_;
        usdc.approve(address(rollup_), type(uint256).max);
    }

    function deposit(uint32 account, uint256 amount) external {
        if (rollup.frozen()) return;
        amount = bound(amount, 1, 1_000_000e6);
        usdc.mint(address(this), amount);
        rollup.deposit(account, amount);
        deposited += amount;
    }

    function requestWithdrawal(uint32 account) external {
        if (rollup.frozen()) return;
        try rollup.requestWithdrawal(account) {} catch {}
    }

    function wait(uint256 seconds_) external {
        hevm.warp(block.timestamp + bound(seconds_, 0, 12 hours));
    }

    function freeze() external {
        if (rollup.frozen()) return;
        try rollup.freeze() {} catch {}
    }

    function reclaim(uint256 id) external {
        if (!rollup.frozen() || rollup.priorityCount() == 0) return;
        try rollup.reclaimDeposit(bound(id, 0, rollup.priorityCount() - 1)) {} catch {}
    }
}

/// Whatever users do, the vault holds every deposit and has paid out nothing it does not hold.
contract RollupInvariants is WithHashers {
    OptioRollup rollup;
    TestUSDC usdc;
    Handler handler;

    function setUp() public {
        usdc = new TestUSDC();
        OptioTrees trees = deployTrees();
        rollup = new OptioRollup(usdc, address(this), trees, 0, 1 hours, 6 hours, IGroth16Verifier(address(0)), true, address(0), OptioRollup.TimeBounds(1 hours, 1 days));
        handler = new Handler(rollup, usdc);
    }

    function targetContracts() public view returns (address[] memory t) {
        t = new address[](1);
        t[0] = address(handler);
    }

    function invariant_the_vault_covers_every_claim() public view {
        assertEq(rollup.totalDeposited(), handler.deposited(), "every deposit counted");
        assertTrue(rollup.totalPaid() <= rollup.totalDeposited(), "paid no more than deposited");
        assertEq(usdc.balanceOf(address(rollup)), rollup.totalDeposited() - rollup.totalPaid(), "vault holds the rest");
    }
}

/// The word walk the L1 judges take over a batch's posted words (docs/settlement.md, "Words"):
/// an auction's start (kind 29, since format 8), its end (30, since format 9) and a margin mode
/// (28) take their one word, and a kind past them is refused.
contract WordsTest is MiniTest {
    function test_one_word_kinds_and_an_unknown_kind() public {
        assertEq(Words.opWords(29, 29 | (uint256(3) << 8)), 1, "an auction's start");
        assertEq(Words.opWords(30, 30 | (uint256(3) << 8)), 1, "an auction's end");
        assertEq(Words.opWords(28, 28 | (uint256(3) << 8)), 1, "a margin mode");
        try this.walk(31) returns (uint256) {
            revert("kind 31 walked");
        } catch (bytes memory why) {
            assertEq(keccak256(why), keccak256(abi.encodeWithSelector(Words.BadBatch.selector, "unknown op")), "kind 31 refused");
        }
    }

    function walk(uint256 kind) external pure returns (uint256) {
        return Words.opWords(kind, kind);
    }
}
