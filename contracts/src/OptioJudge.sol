// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

import {BLOB_HEADER, FILL, Fill, FillSides, SessionKey, Words} from "./Words.sol";

/// Judges fills against the orders their accounts signed, for the rollup's authorization and
/// overfill challenges (docs/settlement.md, "Authorization challenge"): stateless, created by
/// the rollup in its constructor (it signs under the rollup's address), and apart from it so
/// that the rollup stays under the EVM's 24,576-byte code limit.
contract OptioJudge {
    /// The rollup whose batches it judges (Optio's signing domain names it).
    address public immutable rollup;

    /// Bytes per record of an authorization section (docs/settlement.md).
    uint256 public constant AUTH_RECORD = 126;
    /// secp256k1's order / 2: signatures with a higher `s` are malleated copies (refused, as the
    /// gateway refuses them).
    uint256 internal constant HALF_ORDER = 0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;
    bytes32 internal constant ACTION_TYPEHASH =
        keccak256("Action(uint256 subaccountId,uint256 nonce,address module,bytes data,uint256 expiry,address owner,address signer)");
    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    /// The `module` of every order (Derive's trade module, as ccxt signs it).
    address internal constant TRADE_MODULE = 0xB8D20c2B7a1Ad2EE33Bc50eF10876eD3035b5e7b;
    /// The verifying contract of the Derive-compatible domain ccxt hard-codes.
    address internal constant DERIVE_MATCHING = 0xeB8d770ec18DB98Db922E9D83260A585b9F0DeAD;

    error BadBatch(string why);

    constructor() {
        rollup = msg.sender;
    }

    /// Fill `k` (from 0) of posted data: the ops are walked from the first word (each op's
    /// length follows from its first word), so a word inside another op is never read as one.
    function fillAt(bytes calldata data, uint256 k) public pure returns (Fill memory f) {
        uint256[] memory sides = new uint256[](1);
        sides[0] = 2 * k;
        return _fillsAt(data, sides)[0];
    }

    /// The fills of fill sides `sides` (`2 * fill + taker`, strictly ascending) of posted data,
    /// in one walk of its ops.
    function _fillsAt(bytes calldata data, uint256[] memory sides) internal pure returns (Fill[] memory fills) {
        if (data.length < BLOB_HEADER || (data.length - BLOB_HEADER) % 32 != 0) revert BadBatch("data is not whole words");
        if (sides.length == 0) revert BadBatch("no fills");
        for (uint256 j = 1; j < sides.length; j++) {
            if (sides[j] <= sides[j - 1]) revert BadBatch("sides not ascending");
        }
        fills = new Fill[](sides.length);
        uint256 next = 0;
        uint256 seen = 0;
        for (uint256 cursor = BLOB_HEADER; cursor < data.length && next < sides.length;) {
            uint256 w = uint256(bytes32(data[cursor:cursor + 32]));
            uint256 kind = w & 0xff;
            if (kind == FILL) {
                while (next < sides.length && sides[next] / 2 == seen) {
                    fills[next++] = Fill({
                        maker: uint32(w >> 8),
                        taker: uint32(w >> 40),
                        instrument: uint32(w >> 72),
                        takerBuys: (w >> 104) & 1 == 1,
                        price: int64(uint64((w >> 105) & type(uint64).max >> 1)),
                        qty: int64(uint64((w >> 168) & type(uint64).max >> 1))
                    });
                }
                seen++;
            }
            cursor += 32 * Words.opWords(kind, w);
        }
        if (next < sides.length) revert BadBatch("no such fill");
    }

    /// Whether fill side `i` (`2 * fill`, plus 1 for the taker's side) of posted `data` is
    /// authorized by its record in `auths`, for an account owned by `owner` with session keys
    /// `keys` (the batch's time is the data's).
    function authorizes(bytes calldata auths, uint256 i, bytes calldata data, address owner, SessionKey[] calldata keys)
        public
        view
        returns (bool)
    {
        return _authorizes(auths, i, fillAt(data, i / 2), Signers(owner, _batchTime(data), keys));
    }

    /// Who may sign for an account in a batch: its owner, and its session keys expiring after
    /// the batch's time (ms).
    struct Signers {
        address owner;
        uint64 time;
        SessionKey[] keys;
    }

    /// Whether record `i` of `auths` authorizes side `i` (the taker's when odd) of fill `f`,
    /// signed by one of `s`.
    function _authorizes(bytes calldata auths, uint256 i, Fill memory f, Signers memory s) internal view returns (bool) {
        (bool found, bytes calldata r) = _record(auths, i);
        bool taker = i % 2 == 1;
        if (!found || !_within(r, f, taker)) return false;
        address signer = address(bytes20(r[16:36]));
        if (signer != s.owner && !_live(s, signer)) return false;
        return _signedBy(r, f, taker, s.owner, signer);
    }

    /// Whether fill side `f` (the taker's when `taker`) is within record `r`'s signed side,
    /// limit price and amount.
    function _within(bytes calldata r, Fill memory f, bool taker) internal pure returns (bool) {
        bool buys = taker == f.takerBuys;
        int64 limit = int64(uint64(bytes8(r[37:45])));
        int64 amount = int64(uint64(bytes8(r[45:53])));
        if (buys ? f.price > limit : f.price < limit) return false;
        return f.qty <= amount && limit >= 0 && amount > 0;
    }

    /// Whether record `r`'s signature (low `s` only) over the order it describes for fill side
    /// `f` recovers to `signer`.
    function _signedBy(bytes calldata r, Fill memory f, bool taker, address owner, address signer) internal view returns (bool) {
        bytes32 digest = _orderDigest(r, f, taker ? f.taker : f.maker, taker == f.takerBuys, owner);
        if (digest == 0 || uint256(bytes32(r[93:125])) > HALF_ORDER) return false;
        uint8 v = uint8(r[125]);
        address who = ecrecover(digest, v < 27 ? v + 27 : v, bytes32(r[61:93]), bytes32(r[93:125]));
        return who != address(0) && who == signer;
    }

    /// Whether `signer` is one of `s`'s session keys expiring after its time.
    function _live(Signers memory s, address signer) internal pure returns (bool) {
        for (uint256 i = 0; i < s.keys.length; i++) {
            if (s.keys[i].key == signer) return s.keys[i].expiryMs > s.time;
        }
        return false;
    }

    /// The record of fill side `i` in an authorization section: the count `n` of its records (4
    /// bytes), the records, then one 4-byte index per fill side; none when the index is `n` or
    /// more or the section lacks the bytes (docs/settlement.md).
    function _record(bytes calldata auths, uint256 i) internal pure returns (bool found, bytes calldata r) {
        r = auths[0:0];
        if (auths.length < 4) return (false, r);
        uint256 n = uint32(bytes4(auths[0:4]));
        uint256 pos = 4 + n * AUTH_RECORD + 4 * i;
        if (pos + 4 > auths.length) return (false, r);
        uint256 k = uint32(bytes4(auths[pos:pos + 4]));
        if (k >= n) return (false, r);
        return (true, auths[4 + k * AUTH_RECORD:4 + (k + 1) * AUTH_RECORD]);
    }

    /// The EIP-712 digest of the order record `r` describes, signed by the record's signer for
    /// an account owned by `owner` (0: a malformed record).
    function _orderDigest(bytes calldata r, Fill memory f, uint32 account, bool buys, address owner) internal view returns (bytes32) {
        int64 maxFee = int64(uint64(bytes8(r[53:61])));
        bytes32 separator = _separator(uint8(r[36]));
        if (maxFee < 0 || separator == 0) return 0;
        bytes32 trade = keccak256(
            abi.encode(
                rollup,
                uint256(f.instrument),
                int256(int64(uint64(bytes8(r[37:45])))) * 1e12,
                int256(int64(uint64(bytes8(r[45:53])))) * 1e10,
                uint256(uint64(maxFee)) * 1e12,
                uint256(account),
                buys
            )
        );
        bytes32 action = _actionHash(r, account, trade, owner);
        return keccak256(abi.encodePacked(hex"1901", separator, action));
    }

    /// The hash of the `Action` record `r` signs for `account` (owned by `owner`) with trade
    /// data hash `trade`: signed by the record's signer.
    function _actionHash(bytes calldata r, uint32 account, bytes32 trade, address owner) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                ACTION_TYPEHASH,
                uint256(account),
                uint256(uint64(bytes8(r[0:8]))),
                TRADE_MODULE,
                trade,
                uint256(uint64(bytes8(r[8:16]))),
                owner,
                address(bytes20(r[16:36]))
            )
        );
    }

    /// The domain separator of a record's domain byte: 0 Optio's own (this chain, this
    /// contract), 1 and 2 the Derive-compatible one ccxt signs under (chain 1, its sandbox).
    function _separator(uint8 d) internal view returns (bytes32) {
        if (d == 0) return keccak256(abi.encode(DOMAIN_TYPEHASH, keccak256("Optio"), keccak256("1"), block.chainid, rollup));
        if (d == 1 || d == 2) {
            return keccak256(abi.encode(DOMAIN_TYPEHASH, keccak256("Matching"), keccak256("1.0"), d == 1 ? 1 : 11155111, DERIVE_MATCHING));
        }
        return 0;
    }

    /// The order fill sides `parts` (of batches whose posted data and authorization sections
    /// the rollup has checked) all describe, signed for an account owned by `owner`: its
    /// EIP-712 digest, the account, its signed amount and what the sides fill in all. Reverts
    /// when a side has no record or describes another order.
    function tally(FillSides[] calldata parts, address owner) external view returns (Tally memory t) {
        for (uint256 i = 0; i < parts.length; i++) {
            _tally(parts[i], t, owner);
        }
    }

    /// The order an overfill challenge follows and what its fills add up to so far.
    struct Tally {
        bytes32 order;
        uint32 account;
        int256 amount;
        int256 filled;
    }

    /// Adds one part's fill sides to `t`; each must describe the order of the first.
    function _tally(FillSides calldata p, Tally memory t, address owner) internal view {
        Fill[] memory fills = _fillsAt(p.data, p.sides);
        for (uint256 j = 0; j < fills.length; j++) {
            (bytes32 digest, uint32 account, int256 amount) = _sideOrder(p.auths, p.sides[j], fills[j], owner);
            if (t.order == 0) {
                (t.order, t.account, t.amount) = (digest, account, amount);
            } else if (digest != t.order) {
                revert BadBatch("fills of different orders");
            }
            t.filled += fills[j].qty;
        }
    }

    /// The order a fill side's record describes: its digest, the side's account and the
    /// order's signed amount.
    function _sideOrder(bytes calldata auths, uint256 side, Fill memory f, address owner)
        internal
        view
        returns (bytes32 digest, uint32 account, int256 amount)
    {
        (bool found, bytes calldata r) = _record(auths, side);
        if (!found) revert BadBatch("no record");
        bool taker = side % 2 == 1;
        account = taker ? f.taker : f.maker;
        digest = _orderDigest(r, f, account, taker == f.takerBuys, owner);
        if (digest == 0) revert BadBatch("malformed record");
        amount = int64(uint64(bytes8(r[45:53])));
    }

    /// A batch's time: the engine time (ms) at its cut, from its posted data's header.
    function _batchTime(bytes calldata data) internal pure returns (uint64) {
        return uint64(bytes8(data[29:37]));
    }
}
