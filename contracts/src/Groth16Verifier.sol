// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// Groth16 verifier over BN254 for Optio's batch circuit, on the EIP-196/197 precompiles (ecAdd
/// 0x06, ecMul 0x07, pairing 0x08).
///
/// The verifying key is fixed at deployment (immutables: nothing can change it afterwards, and
/// `verifyingKey()` shows it, so anyone can compare it with the published key file that
/// `optio prove setup` wrote). One audited contract serves every key instead of a generated
/// source file per key.
///
/// `verify` checks one proof: e(-A, B) e(alpha, beta) e(vk_x, gamma) e(C, delta) == 1 with
/// vk_x = IC0 + sum input_j IC_j. `verifyMany` checks k proofs in one pairing of k + 3 pairs:
/// with random weights r_i (r_0 = 1, the others from keccak of every proof and input, fixed only
/// after the proofs are), prod e(-r_i A_i, B_i) e(sum r_i alpha, beta) e(sum r_i vk_x_i, gamma)
/// e(sum r_i C_i, delta) == 1. A batch of proofs with one invalid proof passes with probability
/// at most about 1/r (the scalar field's size).
contract Groth16Verifier {
    /// BN254 base field modulus.
    uint256 internal constant Q = 21888242871839275222246405745257275088696311157297823662689037894645226208583;
    /// BN254 scalar field modulus (public inputs are below it).
    uint256 internal constant R = 21888242871839275222246405745257275088548364400416034343698204186575808495617;
    /// Public inputs per proof: old root, new root, ops commitment, L1 operations served before
    /// and after, and the point and value of the posted words' evaluation.
    uint256 public constant INPUTS = 7;

    // G1 points as (x, y); G2 points as (x.c1, x.c0, y.c1, y.c0), the precompile's order.
    uint256 internal immutable alphaX;
    uint256 internal immutable alphaY;
    uint256 internal immutable betaX1;
    uint256 internal immutable betaX0;
    uint256 internal immutable betaY1;
    uint256 internal immutable betaY0;
    uint256 internal immutable gammaX1;
    uint256 internal immutable gammaX0;
    uint256 internal immutable gammaY1;
    uint256 internal immutable gammaY0;
    uint256 internal immutable deltaX1;
    uint256 internal immutable deltaX0;
    uint256 internal immutable deltaY1;
    uint256 internal immutable deltaY0;
    uint256 internal immutable ic0X;
    uint256 internal immutable ic0Y;
    uint256 internal immutable ic1X;
    uint256 internal immutable ic1Y;
    uint256 internal immutable ic2X;
    uint256 internal immutable ic2Y;
    uint256 internal immutable ic3X;
    uint256 internal immutable ic3Y;
    uint256 internal immutable ic4X;
    uint256 internal immutable ic4Y;
    uint256 internal immutable ic5X;
    uint256 internal immutable ic5Y;
    uint256 internal immutable ic6X;
    uint256 internal immutable ic6Y;
    uint256 internal immutable ic7X;
    uint256 internal immutable ic7Y;

    /// `vk`: alpha (2), beta (4), gamma (4), delta (4), IC0..IC7 (16), in the orders above.
    constructor(uint256[30] memory vk) {
        for (uint256 i = 0; i < 30; i++) {
            require(vk[i] < Q, "verifying key: coordinate out of range");
        }
        (alphaX, alphaY) = (vk[0], vk[1]);
        (betaX1, betaX0, betaY1, betaY0) = (vk[2], vk[3], vk[4], vk[5]);
        (gammaX1, gammaX0, gammaY1, gammaY0) = (vk[6], vk[7], vk[8], vk[9]);
        (deltaX1, deltaX0, deltaY1, deltaY0) = (vk[10], vk[11], vk[12], vk[13]);
        (ic0X, ic0Y, ic1X, ic1Y) = (vk[14], vk[15], vk[16], vk[17]);
        (ic2X, ic2Y, ic3X, ic3Y) = (vk[18], vk[19], vk[20], vk[21]);
        (ic4X, ic4Y, ic5X, ic5Y) = (vk[22], vk[23], vk[24], vk[25]);
        (ic6X, ic6Y, ic7X, ic7Y) = (vk[26], vk[27], vk[28], vk[29]);
    }

    /// The verifying key, in the constructor's order.
    function verifyingKey() external view returns (uint256[30] memory vk) {
        vk = [
            alphaX, alphaY, betaX1, betaX0, betaY1, betaY0, gammaX1, gammaX0, gammaY1, gammaY0,
            deltaX1, deltaX0, deltaY1, deltaY0, ic0X, ic0Y, ic1X, ic1Y, ic2X, ic2Y, ic3X, ic3Y,
            ic4X, ic4Y, ic5X, ic5Y, ic6X, ic6Y, ic7X, ic7Y
        ];
    }

    /// One proof `(A.x, A.y, B.x.c1, B.x.c0, B.y.c1, B.y.c0, C.x, C.y)` against its inputs.
    function verify(uint256[8] calldata proof, uint256[INPUTS] calldata input) public view returns (bool) {
        uint256[INPUTS] memory weighted;
        for (uint256 j = 0; j < INPUTS; j++) {
            if (input[j] >= R) return false;
            weighted[j] = input[j];
        }
        (bool ok, uint256 x, uint256 y) = _vkx(1, weighted);
        if (!ok) return false;
        uint256[] memory p = new uint256[](24);
        _pair(p, 0, proof[0], _neg(proof[1]), proof[2], proof[3], proof[4], proof[5]);
        _pair(p, 6, alphaX, alphaY, betaX1, betaX0, betaY1, betaY0);
        _pair(p, 12, x, y, gammaX1, gammaX0, gammaY1, gammaY0);
        _pair(p, 18, proof[6], proof[7], deltaX1, deltaX0, deltaY1, deltaY0);
        return _pairing(p);
    }

    /// Sums over the proofs of `verifyMany`.
    struct Sums {
        uint256 weights;
        uint256[INPUTS] inputs;
        uint256 cx;
        uint256 cy;
    }

    /// Many proofs at once (see the contract's comment); false if any is invalid.
    function verifyMany(uint256[8][] calldata proofs, uint256[INPUTS][] calldata inputs) public view returns (bool) {
        uint256 k = proofs.length;
        if (k == 0 || inputs.length != k) return false;
        uint256 seed = uint256(keccak256(abi.encode(proofs, inputs)));
        uint256[] memory pairs = new uint256[](6 * (k + 3));
        Sums memory sums;
        for (uint256 i = 0; i < k; i++) {
            uint256 r = i == 0 ? 1 : uint256(keccak256(abi.encode(seed, i))) % R;
            if (!_absorb(sums, pairs, i, r, proofs[i], inputs[i])) return false;
        }
        (bool ok, uint256 vx, uint256 vy) = _vkx(sums.weights, sums.inputs);
        if (!ok) return false;
        (bool okA, uint256 ax, uint256 ay) = _mul(alphaX, alphaY, sums.weights);
        if (!okA) return false;
        uint256 o = 6 * k;
        _pair(pairs, o, ax, ay, betaX1, betaX0, betaY1, betaY0);
        _pair(pairs, o + 6, vx, vy, gammaX1, gammaX0, gammaY1, gammaY0);
        _pair(pairs, o + 12, sums.cx, sums.cy, deltaX1, deltaX0, deltaY1, deltaY0);
        return _pairing(pairs);
    }

    /// Adds proof `i` with weight `r`: its pair (-r A, B), and r C and r * input to the sums.
    function _absorb(Sums memory sums, uint256[] memory pairs, uint256 i, uint256 r, uint256[8] calldata proof, uint256[INPUTS] calldata input) internal view returns (bool) {
        sums.weights = addmod(sums.weights, r, R);
        for (uint256 j = 0; j < INPUTS; j++) {
            if (input[j] >= R) return false;
            sums.inputs[j] = addmod(sums.inputs[j], mulmod(r, input[j], R), R);
        }
        (bool ok, uint256 x, uint256 y) = _scale(proof[0], proof[1], r);
        if (!ok) return false;
        uint256 o = 6 * i;
        _pair(pairs, o, x, _neg(y), proof[2], proof[3], proof[4], proof[5]);
        (ok, x, y) = _scale(proof[6], proof[7], r);
        if (!ok) return false;
        (ok, sums.cx, sums.cy) = i == 0 ? (true, x, y) : _add(sums.cx, sums.cy, x, y);
        return ok;
    }

    /// `s0 * IC0 + sum w_j * IC_(j+1)`.
    function _vkx(uint256 s0, uint256[INPUTS] memory w) internal view returns (bool, uint256, uint256) {
        uint256[2][8] memory ic = [[ic0X, ic0Y], [ic1X, ic1Y], [ic2X, ic2Y], [ic3X, ic3Y], [ic4X, ic4Y], [ic5X, ic5Y], [ic6X, ic6Y], [ic7X, ic7Y]];
        (bool ok, uint256 x, uint256 y) = _scale(ic[0][0], ic[0][1], s0);
        for (uint256 j = 0; j < INPUTS && ok; j++) {
            (bool okm, uint256 px, uint256 py) = _mul(ic[j + 1][0], ic[j + 1][1], w[j]);
            if (!okm) return (false, 0, 0);
            (ok, x, y) = _add(x, y, px, py);
        }
        return (ok, x, y);
    }

    function _pair(uint256[] memory p, uint256 o, uint256 x, uint256 y, uint256 x1, uint256 x0, uint256 y1, uint256 y0) internal pure {
        p[o] = x;
        p[o + 1] = y;
        p[o + 2] = x1;
        p[o + 3] = x0;
        p[o + 4] = y1;
        p[o + 5] = y0;
    }

    function _neg(uint256 y) internal pure returns (uint256) {
        return y == 0 ? 0 : Q - (y % Q);
    }

    function _add(uint256 x1, uint256 y1, uint256 x2, uint256 y2) internal view returns (bool ok, uint256 x, uint256 y) {
        uint256[4] memory input = [x1, y1, x2, y2];
        uint256[2] memory out;
        assembly {
            ok := staticcall(gas(), 0x06, input, 128, out, 64)
        }
        return (ok, out[0], out[1]);
    }

    /// `s * P`, without the precompile when `s` is 1 (one proof's IC0, the first proof's weight
    /// in `verifyMany`: 6,000 gas each). A point not on the curve is still refused: the pairing
    /// or the addition that takes it fails.
    function _scale(uint256 px, uint256 py, uint256 s) internal view returns (bool, uint256, uint256) {
        if (s == 1) return (true, px, py);
        return _mul(px, py, s);
    }

    function _mul(uint256 px, uint256 py, uint256 s) internal view returns (bool ok, uint256 x, uint256 y) {
        uint256[3] memory input = [px, py, s];
        uint256[2] memory out;
        assembly {
            ok := staticcall(gas(), 0x07, input, 96, out, 64)
        }
        return (ok, out[0], out[1]);
    }

    function _pairing(uint256[] memory input) internal view returns (bool) {
        uint256[1] memory out;
        bool ok;
        uint256 len = input.length * 32;
        assembly {
            ok := staticcall(gas(), 0x08, add(input, 32), len, out, 32)
        }
        return ok && out[0] == 1;
    }
}
