// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// Poseidon over BN254 with circomlib's parameters, the hash of Optio's settlement state
/// (docs/settlement.md). The hashers are circomlibjs's generated contracts
/// (contracts/poseidon/poseidonN.hex, deployed once each); test-vectors/ pins them to the Rust
/// implementation.
interface IPoseidon1 {
    function poseidon(uint256[1] calldata) external pure returns (uint256);
}

interface IPoseidon2 {
    function poseidon(uint256[2] calldata) external pure returns (uint256);
}

interface IPoseidon3 {
    function poseidon(uint256[3] calldata) external pure returns (uint256);
}

interface IPoseidon4 {
    function poseidon(uint256[4] calldata) external pure returns (uint256);
}

interface IPoseidon5 {
    function poseidon(uint256[5] calldata) external pure returns (uint256);
}

interface IPoseidon6 {
    function poseidon(uint256[6] calldata) external pure returns (uint256);
}

/// The six hashers, and the field conventions of the Rust side.
library Field {
    /// The BN254 scalar field modulus.
    uint256 internal constant P = 21888242871839275222246405745257275088548364400416034343698204186575808495617;

    error NotAFieldElement(uint256 value);

    /// A signed 64-bit value as the Rust side encodes it: negatives as `P - |v|`.
    function fromInt(int256 v) internal pure returns (uint256) {
        return v >= 0 ? uint256(v) : P - uint256(-v);
    }

    /// Refuses values at or above the modulus (the hashers would reduce them silently, so two
    /// encodings would hash alike).
    function check(uint256 v) internal pure returns (uint256) {
        if (v >= P) revert NotAFieldElement(v);
        return v;
    }
}
