// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

import {BLOB_HEADER, EXPIRE, FILL, LIST, MARK, SETTLE, Fill, FillSides, SessionKey, Words} from "./Words.sol";

/// Judges fills against the orders their accounts signed, for the rollup's authorization and
/// overfill challenges (docs/settlement.md, "Authorization challenge"), and settlement prices
/// and marks against the risk oracle's signatures, for its price challenges ("Price
/// challenge"): stateless, created by
/// the rollup in its constructor (it signs under the rollup's address), and apart from it so
/// that the rollup stays under the EVM's 24,576-byte code limit.
contract OptioJudge {
    /// The rollup whose batches it judges (Optio's signing domain names it).
    address public immutable rollup;
    /// The risk oracle whose signature a batch's marks need (0: marks are not judged).
    address public immutable oracle;

    /// Bytes per record of an authorization section (docs/settlement.md).
    uint256 public constant AUTH_RECORD = 126;
    /// Bytes per price attestation at an authorization section's end: publication time (ms, 8)
    /// and the oracle's signature (65).
    uint256 public constant MARK_RECORD = 73;
    /// How long before its batch's time (ms) a mark may have been published.
    uint256 public constant MARK_WINDOW_MS = 60_000;
    /// Bytes per account change attestation, before the price attestations: the owner's nonce
    /// (8), signature expiry in seconds (8) and the owner's signature (65).
    uint256 public constant CHANGE_RECORD = 81;
    /// Op kinds of the account changes (session keys, margin modes), as an `_nthOp` set.
    uint256 internal constant CHANGES = (1 << 23) | (1 << 28);
    /// The `module` of an owner's signed session key change: "optio:session-key", zero-padded.
    address internal constant SESSION_KEY_MODULE = 0x6f7074696F3A73657373696F6e2d6B6579000000;
    /// The `module` of an owner's signed margin mode change: "optio:margin-mode", zero-padded.
    address internal constant MARGIN_MODE_MODULE = 0x6F7074696f3a6D617267696e2D6D6f6465000000;
    /// The kinds of the priced ops (settlement prices and marks), as an `_nthOp` set.
    uint256 internal constant PRICED = (1 << SETTLE) | (1 << MARK);
    /// The BN254 scalar field modulus (a posted negative value is `P - |v|`).
    uint256 internal constant P = 21888242871839275222246405745257275088548364400416034343698204186575808495617;
    /// secp256k1's order / 2: signatures with a higher `s` are malleated copies (refused, as the
    /// gateway refuses them).
    uint256 internal constant HALF_ORDER = 0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;
    bytes32 internal constant ACTION_TYPEHASH =
        keccak256("Action(uint256 subaccountId,uint256 nonce,address module,bytes data,uint256 expiry,address owner,address signer)");
    bytes32 internal constant MARK_TYPEHASH =
        keccak256("OracleMark(uint32 instrument,int64 mark,int64 index,int64[] risk,uint64 publishedMs)");
    bytes32 internal constant SETTLEMENT_TYPEHASH =
        keccak256("OracleSettlement(uint32 instrument,int64 price,uint64 publishedMs)");
    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    /// The `module` of every order (Derive's trade module, as ccxt signs it).
    address internal constant TRADE_MODULE = 0xB8D20c2B7a1Ad2EE33Bc50eF10876eD3035b5e7b;
    /// The verifying contract of the Derive-compatible domain ccxt hard-codes.
    address internal constant DERIVE_MATCHING = 0xeB8d770ec18DB98Db922E9D83260A585b9F0DeAD;

    error BadBatch(string why);

    constructor(address oracle_) {
        rollup = msg.sender;
        oracle = oracle_;
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
        return digest != 0 && _signs(r[61:126], digest, signer);
    }

    /// Whether `sig` (`r || s || v`, low `s` only, as the gateway takes them) over `digest`
    /// recovers to `signer` (never the zero address).
    function _signs(bytes calldata sig, bytes32 digest, address signer) internal pure returns (bool) {
        if (uint256(bytes32(sig[32:64])) > HALF_ORDER) return false;
        uint8 v = uint8(sig[64]);
        address who = ecrecover(digest, v < 27 ? v + 27 : v, bytes32(sig[0:32]), bytes32(sig[32:64]));
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
    /// the rollup has checked) all describe, signed for an account owned by `owner`, in the
    /// instrument `listing`'s listing op lists (its `mark`: the j-th listing of its batch):
    /// its EIP-712 digest, the account, its signed amount and fee cap, what the sides fill in
    /// all and the fees they paid at the posted spec's rates; and whether they break the order
    /// (`broken`): a size past the amount, or fees past the cap (`overcharged`). Reverts when a
    /// side has no record, describes another order or trades another instrument.
    function tally(FillSides[] calldata parts, address owner, PostedMark calldata listing)
        external
        view
        returns (Tally memory t, bool broken)
    {
        (t.instrument, t.makerRate, t.takerRate) = _rates(listing);
        for (uint256 i = 0; i < parts.length; i++) {
            _tally(parts[i], t, owner);
        }
        broken = t.filled > t.amount || overcharged(t.fees, t.maxFee, t.domain, t.filled, t.sides);
    }

    /// The order an order challenge follows, what its fills add up to so far and the fees they
    /// paid.
    struct Tally {
        bytes32 order;
        uint32 account;
        int256 amount;
        int256 filled;
        int256 maxFee;
        uint8 domain;
        uint256 sides;
        int256 fees;
        uint32 instrument;
        int256 makerRate;
        int256 takerRate;
    }

    /// Whether `sides` fill sides of one signed order, `filled` contracts (1e-8) in all, paid
    /// `fees` past what the order's signed cap `maxFee` allows: under Optio's domain (0) the cap
    /// bounds the order's fees in total, under Derive's (1, 2) the fee per contract, Derive's
    /// meaning. Each fee is rounded up from the exact rate of its notional, so honest fills may
    /// pass the exact bound by less than a micro-USDC each: fees are past the cap when
    /// `fees * s >= maxFee * u + sides * s` (`s = 1, u = 1` under Optio's domain, `s = 1e8, u =
    /// filled` under Derive's), as `optio_state::auth::overcharged`.
    function overcharged(int256 fees, int256 maxFee, uint8 domain, int256 filled, uint256 sides) public pure returns (bool) {
        (int256 s, int256 u) = domain == 0 ? (int256(1), int256(1)) : (int256(1e8), filled);
        return fees * s >= maxFee * u + int256(sides) * s;
    }

    /// The instrument `listing`'s listing op lists and its maker and taker fee rates (1e-6),
    /// read from its posted spec bytes (docs/settlement.md: 31 bytes a word after the op's
    /// first; the maker's rate at bytes 28 to 31, the taker's at 32 to 35).
    function _rates(PostedMark calldata listing) internal pure returns (uint32, int256, int256) {
        (uint256 w, uint256 c) = _nthOp(listing.data, 1 << LIST, listing.mark);
        uint256 w0 = uint256(bytes32(listing.data[c + 32:c + 64]));
        uint256 w1 = uint256(bytes32(listing.data[c + 64:c + 96]));
        int32 maker = int32(uint32(((w0 & 0xffffff) << 8) | ((w1 >> 240) & 0xff)));
        int32 taker = int32(uint32(w1 >> 208));
        return (uint32(w >> 72), maker, taker);
    }

    /// The fee (a rebate when negative) at `rate` (1e-6) on the notional of `qty` (1e-8
    /// contracts) at `price`: a charge rounds up, a rebate down (`FeeRate::fee_on`).
    function _fee(int64 price, int64 qty, int256 rate) internal pure returns (int256) {
        int256 n = int256(price) * int256(qty) / 1e8;
        return rate >= 0 ? (n * rate + 1e6 - 1) / 1e6 : -((n * -rate) / 1e6);
    }

    /// Adds one part's fill sides to `t`; each must describe the order of the first, in the
    /// listed instrument.
    function _tally(FillSides calldata p, Tally memory t, address owner) internal view {
        Fill[] memory fills = _fillsAt(p.data, p.sides);
        for (uint256 j = 0; j < fills.length; j++) {
            if (fills[j].instrument != t.instrument) revert BadBatch("another instrument");
            bool taker = p.sides[j] % 2 == 1;
            (bytes32 digest, uint32 account, bytes calldata r) = _sideOrder(p.auths, p.sides[j], fills[j], owner);
            if (t.order == 0) {
                (t.order, t.account) = (digest, account);
                t.amount = int64(uint64(bytes8(r[45:53])));
                t.maxFee = int64(uint64(bytes8(r[53:61])));
                t.domain = uint8(r[36]);
            } else if (digest != t.order) {
                revert BadBatch("fills of different orders");
            }
            t.filled += fills[j].qty;
            t.fees += _fee(fills[j].price, fills[j].qty, taker ? t.takerRate : t.makerRate);
            t.sides++;
        }
    }

    /// The order a fill side's record describes: its digest, the side's account and the
    /// record.
    function _sideOrder(bytes calldata auths, uint256 side, Fill memory f, address owner)
        internal
        view
        returns (bytes32 digest, uint32 account, bytes calldata r)
    {
        bool found;
        (found, r) = _record(auths, side);
        if (!found) revert BadBatch("no record");
        bool taker = side % 2 == 1;
        account = taker ? f.taker : f.maker;
        digest = _orderDigest(r, f, account, taker == f.takerBuys, owner);
        if (digest == 0) revert BadBatch("malformed record");
    }

    /// Whether priced op `k` (from 0, in the posted words' order: settlement prices and marks)
    /// of posted `data` is attested by its entry at the end of `auths`: the oracle signed its
    /// instrument and price (a mark: its mark and risk array) with the entry's publication
    /// time, no later than the batch's time (a mark: at most `MARK_WINDOW_MS` before it, and
    /// the time the mark op posts, which the state commits the latest of, is that time).
    function priceAttested(bytes calldata data, bytes calldata auths, uint256 k) external view returns (bool) {
        (bool found, bytes calldata a) = _attestation(auths, k);
        uint64 published = found ? uint64(bytes8(a[0:8])) : 0;
        // Reverts when the data has no priced op `k` (a challenge must name one that is there).
        (bytes32 price, bool mark) = _priceHash(data, k, published);
        if (!found || oracle == address(0)) return false;
        if (mark && _postedTime(data, k) != published) return false;
        uint64 time = _batchTime(data);
        if (published > time || (mark && time - published > MARK_WINDOW_MS)) return false;
        bytes32 digest = keccak256(abi.encodePacked(hex"1901", _separator(0), price));
        return _signs(a[8:73], digest, oracle);
    }

    /// Whether account change `k` (from 0, in the posted words' order: session key changes,
    /// then margin mode changes) of posted `data` is signed by `owner`, its account's owner, by
    /// its entry in `auths`: an `Action` under Optio's domain with the entry's nonce and expiry,
    /// `SESSION_KEY_MODULE` and `abi.encode(key, expiryMs)` or `MARGIN_MODE_MODULE` and
    /// `abi.encode(mode)` as data, signed by the owner, not expired at the batch's time. Also
    /// returns the change's account (the caller opens its leaf for `owner`). Reverts when the
    /// data has no change `k`.
    function changeSigned(bytes calldata data, bytes calldata auths, uint256 k, address owner)
        external
        view
        returns (bool, uint32)
    {
        (uint256 w, uint256 cursor) = _nthOp(data, CHANGES, k);
        bytes calldata op = data[cursor:cursor + 32 * Words.opWords(w & 0xff, w)];
        return (_changeSigned(op, _batchTime(data), auths, k, owner), uint32(w >> 8));
    }

    /// `changeSigned` for the change whose words are `op`, in a batch cut at `time` (ms).
    function _changeSigned(bytes calldata op, uint64 time, bytes calldata auths, uint256 k, address owner)
        internal
        view
        returns (bool)
    {
        (bool found, bytes calldata a) = _change(auths, k);
        if (!found || time > uint256(uint64(bytes8(a[8:16]))) * 1000) return false;
        return _signs(a[16:81], _changeDigest(op, a, owner), owner);
    }

    /// The EIP-712 digest (Optio's domain) of the change whose words are `op` (a session key's
    /// two, a margin mode's one), as its account's `owner` signs it with entry `a`'s nonce and
    /// expiry. The session key is the op's second word; its
    /// expiry and the mode's code sit at bit 104 of the first.
    function _changeDigest(bytes calldata op, bytes calldata a, address owner) internal view returns (bytes32) {
        uint256 w = uint256(bytes32(op[0:32]));
        bool key = w & 0xff == 23;
        bytes32 change = key
            ? keccak256(abi.encode(uint160(uint256(bytes32(op[32:64]))), uint64(w >> 104)))
            : keccak256(abi.encode(uint8(w >> 104)));
        bytes32 action = keccak256(
            abi.encode(
                ACTION_TYPEHASH,
                uint256(uint32(w >> 8)),
                uint256(uint64(bytes8(a[0:8]))),
                key ? SESSION_KEY_MODULE : MARGIN_MODE_MODULE,
                change,
                uint256(uint64(bytes8(a[8:16]))),
                owner,
                owner
            )
        );
        return keccak256(abi.encodePacked(hex"1901", _separator(0), action));
    }

    /// Whether account change `later.mark` (from 0, in the posted words' order) of batch
    /// `later.number` is not its owner's: with `earlier` empty (no data), not signed by `owner`
    /// (`changeSigned`); otherwise signed, but a replay of change `earlier.mark` of batch
    /// `earlier.number` (an earlier change: of an earlier batch, or before it in the same one),
    /// also signed by `owner`, of the same account under the same nonce, `later`'s batch no
    /// later than `earlier`'s signature's expiry. The gateway takes an owner's nonce once for
    /// as long as its signature lives, so an honest batch never posts that. Also returns the
    /// account.
    function changeBroken(PostedMark calldata earlier, PostedMark calldata later, address owner)
        external
        view
        returns (bool, uint32)
    {
        (bool signed, uint32 account) = this.changeSigned(later.data, later.auths, later.mark, owner);
        if (earlier.data.length == 0) return (!signed, account);
        if (later.number == earlier.number && later.mark <= earlier.mark) revert BadBatch("not a later change");
        (bool first, uint32 same) = this.changeSigned(earlier.data, earlier.auths, earlier.mark, owner);
        return (signed && first && same == account && _sameNonceWhileLive(earlier, later), account);
    }

    /// Whether `later`'s change entry carries the nonce of `earlier`'s, and `later`'s batch is
    /// no later than `earlier`'s signature's expiry.
    function _sameNonceWhileLive(PostedMark calldata earlier, PostedMark calldata later) internal pure returns (bool) {
        (, bytes calldata a) = _change(earlier.auths, earlier.mark);
        (, bytes calldata b) = _change(later.auths, later.mark);
        return bytes8(a[0:8]) == bytes8(b[0:8]) && _batchTime(later.data) <= uint256(uint64(bytes8(a[8:16]))) * 1000;
    }

    /// Account change attestation `k` of an authorization section: before the price
    /// attestations and their count, the change count `c` (4 bytes), the `c` entries before it.
    /// An all-zero entry stands for none.
    function _change(bytes calldata auths, uint256 k) internal pure returns (bool found, bytes calldata a) {
        a = auths[0:0];
        (bool ok,, uint256 prices) = _tail(auths, auths.length, MARK_RECORD);
        uint256 c;
        uint256 start;
        if (ok) (ok, c, start) = _tail(auths, prices, CHANGE_RECORD);
        if (!ok || k >= c) return (false, a);
        a = auths[start + k * CHANGE_RECORD:start + (k + 1) * CHANGE_RECORD];
        return (uint256(bytes32(a[16:48])) != 0 || uint256(bytes32(a[48:80])) != 0, a);
    }

    /// The part of an authorization section that ends at `end`, read back from there: its count
    /// in the 4 bytes before `end`, its entries of `size` bytes before the count. The count and
    /// where the entries start (`ok` false: bytes the section lacks).
    function _tail(bytes calldata auths, uint256 end, uint256 size) internal pure returns (bool ok, uint256 count, uint256 start) {
        if (end < 4 || end > auths.length) return (false, 0, 0);
        end -= 4;
        count = uint32(bytes4(auths[end:end + 4]));
        if (count * size > end) return (false, count, 0);
        return (true, count, end - count * size);
    }

    /// Priced op `mark` (from 0, in the posted words' order), a mark, of committed batch
    /// `number`, with the batch's posted data and authorization section.
    struct PostedMark {
        uint256 number;
        bytes data;
        bytes auths;
        uint256 mark;
    }

    /// Whether `later`'s mark is for the instrument of `earlier`'s attested mark and was
    /// published before it (its own attestation's time). Reverts when either names no mark.
    function wentBack(PostedMark calldata earlier, PostedMark calldata later) external view returns (bool) {
        if (!this.priceAttested(earlier.data, earlier.auths, earlier.mark)) return false;
        (uint32 a, uint64 aPublished) = _markOf(earlier.data, earlier.auths, earlier.mark);
        (uint32 b, uint64 bPublished) = _markOf(later.data, later.auths, later.mark);
        return a == b && bPublished < aPublished;
    }

    /// The instrument of priced op `k` of `data`, a mark, and the publication time its entry in
    /// `auths` states (0 if none).
    function _markOf(bytes calldata data, bytes calldata auths, uint256 k) internal pure returns (uint32 instrument, uint64 published) {
        (bool found, bytes calldata a) = _attestation(auths, k);
        if (found) published = uint64(bytes8(a[0:8]));
        (uint256 w,) = _nthOp(data, PRICED, k);
        if (w & 0xff == MARK) return (uint32(w >> 72), published);
        revert BadBatch("no such mark");
    }

    /// The publication time mark op `k` (priced op `k`) posts: 64 bits from bit 8 of its first
    /// word.
    function _postedTime(bytes calldata data, uint256 k) internal pure returns (uint64) {
        (uint256 w,) = _nthOp(data, PRICED, k);
        return uint64(w >> 8);
    }

    /// The EIP-712 struct hash of priced op `k` published at `published` (ms), from the op's
    /// words, and whether it is a mark. A settlement's first word names the instrument, the next
    /// holds the price. A mark's first word names the instrument, the risk array's length and
    /// the underlying's index (63 bits from bit 168), the next holds the mark (a negative one as
    /// `P - |v|`), then five risk values a word, 48 bits each, stored as `v + 2^47`.
    function _priceHash(bytes calldata data, uint256 k, uint64 published) internal pure returns (bytes32, bool) {
        (uint256 w, uint256 cursor) = _nthOp(data, PRICED, k);
        uint256 n = Words.opWords(w & 0xff, w);
        if (cursor + 32 * n > data.length) revert BadBatch("data is not whole words");
        uint256 m = uint256(bytes32(data[cursor + 32:cursor + 64]));
        int256 price = m < P / 2 ? int256(m) : -int256(P - m);
        uint256 instrument = uint32(w >> 72);
        if (w & 0xff == SETTLE) {
            return (keccak256(abi.encode(SETTLEMENT_TYPEHASH, instrument, price, uint256(published))), false);
        }
        bytes32 risk = _riskHash(data[cursor + 64:cursor + 32 * n], (w >> 104) & 0xff);
        uint256 index = (w >> 168) & ((1 << 63) - 1);
        return (keccak256(abi.encode(MARK_TYPEHASH, instrument, price, index, risk, uint256(published))), true);
    }

    /// Whether `expiry`'s expiry op (its `mark`: the k-th, from 0, in the posted words) ends the
    /// trading of the instrument `listing`'s listing op lists (its `mark`: the j-th) before the
    /// instrument expires, by the expiry batch's time: an option expires at 08:00 UTC on the
    /// date its posted spec bytes give, a perpetual never. Reverts when either op is not there
    /// or the two name different instruments.
    function expiredEarly(PostedMark calldata listing, PostedMark calldata expiry) external pure returns (bool) {
        (uint256 w, uint256 cursor) = _nthOp(listing.data, 1 << LIST, listing.mark);
        (uint256 v,) = _nthOp(expiry.data, 1 << EXPIRE, expiry.mark);
        if (uint32(w >> 72) != uint32(v >> 72)) revert BadBatch("another instrument");
        // The spec's first 31 bytes fill the word after the listing's: payoff (0 perpetual),
        // year - 2000, month, day.
        uint256 spec = uint256(bytes32(listing.data[cursor + 32:cursor + 64]));
        if ((spec >> 240) & 0xff == 0) return true;
        uint256 expires = _daysFromCivil(2000 + ((spec >> 232) & 0xff), (spec >> 224) & 0xff, (spec >> 216) & 0xff)
            * 86_400_000 + 8 * 3_600_000;
        return _batchTime(expiry.data) < expires;
    }

    /// The first word and offset of op `k` (from 0) among the ops of posted `data` whose kind
    /// is in `kinds` (bit `kind` set), in the posted words' order; the ops are walked from the
    /// first word, so a word inside another op is never read as one.
    function _nthOp(bytes calldata data, uint256 kinds, uint256 k) internal pure returns (uint256, uint256) {
        if (data.length < BLOB_HEADER || (data.length - BLOB_HEADER) % 32 != 0) revert BadBatch("data is not whole words");
        uint256 seen = 0;
        for (uint256 cursor = BLOB_HEADER; cursor < data.length;) {
            uint256 w = uint256(bytes32(data[cursor:cursor + 32]));
            if ((kinds >> (w & 0xff)) & 1 == 1 && seen++ == k) return (w, cursor);
            cursor += 32 * Words.opWords(w & 0xff, w);
        }
        revert BadBatch("no such op");
    }

    /// Days from 1970-01-01 to a date from 2000 on (H. Hinnant's `days_from_civil`).
    function _daysFromCivil(uint256 y, uint256 m, uint256 d) internal pure returns (uint256) {
        if (m <= 2) y -= 1;
        uint256 era = y / 400;
        uint256 yoe = y - era * 400;
        uint256 doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
        return era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    }

    /// keccak256 of the first `len` risk values of `words` as signed words.
    function _riskHash(bytes calldata words, uint256 len) internal pure returns (bytes32) {
        bytes memory out = new bytes(32 * len);
        for (uint256 j = 0; j < len; j++) {
            uint256 w = uint256(bytes32(words[32 * (j / 5):32 * (j / 5) + 32]));
            int256 v = int256((w >> (48 * (j % 5))) & (2 ** 48 - 1)) - int256(2 ** 47);
            assembly {
                mstore(add(out, add(32, mul(32, j))), v)
            }
        }
        return keccak256(out);
    }

    /// Price attestation `k` of an authorization section: the count `m` is the section's last 4
    /// bytes, the `m` entries come before it.
    function _attestation(bytes calldata auths, uint256 k) internal pure returns (bool found, bytes calldata a) {
        a = auths[0:0];
        (bool ok, uint256 m, uint256 start) = _tail(auths, auths.length, MARK_RECORD);
        if (!ok || k >= m) return (false, a);
        return (true, auths[start + k * MARK_RECORD:start + (k + 1) * MARK_RECORD]);
    }

    /// A batch's time: the engine time (ms) at its cut, from its posted data's header.
    function _batchTime(bytes calldata data) internal pure returns (uint64) {
        return uint64(bytes8(data[29:37]));
    }
}
