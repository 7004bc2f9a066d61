// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// Minimal stand-in for forge-std (which is not on npm). Cheatcodes are plain
/// external calls to the HEVM cheatcode address; declare only what you use.
interface Vm {
    function prank(address) external;
    function expectRevert(bytes calldata) external;
    function warp(uint256) external;
    function deal(address, uint256) external;
}

abstract contract MiniTest {
    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    // A test fails iff it reverts; custom errors are decoded by forge in the report.
    error AssertEqFailed(string what, uint256 left, uint256 right);
    error AssertEqBytes32Failed(string what, bytes32 left, bytes32 right);
    error AssertFailed(string what);

    function assertTrue(bool c, string memory what) internal pure {
        if (!c) revert AssertFailed(what);
    }

    function assertEq(uint256 a, uint256 b, string memory what) internal pure {
        if (a != b) revert AssertEqFailed(what, a, b);
    }

    function assertEq(bytes32 a, bytes32 b, string memory what) internal pure {
        if (a != b) revert AssertEqBytes32Failed(what, a, b);
    }

    /// forge-std style bound(): map any uint into [lo, hi] without discarding fuzz runs.
    function bound(uint256 x, uint256 lo, uint256 hi) internal pure returns (uint256) {
        require(lo <= hi, "bound: lo > hi");
        uint256 size = hi - lo;
        if (size == type(uint256).max) return x;
        return lo + (x % (size + 1));
    }
}
