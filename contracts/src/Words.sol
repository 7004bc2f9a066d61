// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

// Bytes of a batch blob before its words (docs/settlement.md).
uint256 constant BLOB_HEADER = 49;
// Op kinds (docs/settlement.md, "Words") the contracts read.
uint256 constant OPEN = 6;
uint256 constant OPERATOR_DEPOSIT = 7;
uint256 constant WITHDRAW = 8;
uint256 constant FILL = 16;
uint256 constant MARK = 24;
uint256 constant SETTLE = 4;
uint256 constant LIST = 1;
uint256 constant EXPIRE = 3;
uint256 constant L1_DEPOSIT = 25;
uint256 constant L1_WITHDRAWAL = 26;
uint256 constant L1_CLOSE = 27;

/// The posted words of a batch, read op by op.
library Words {
    /// Words of an op, from its first word `w` (docs/settlement.md, "Words").
    function opWords(uint256 kind, uint256 w) internal pure returns (uint256) {
        if (kind == FILL || kind == 2 || kind == 3) return 1; // fill, activation, expiry
        if (kind == SETTLE) return 3; // instrument settlement: its word, the price, the insurance credit
        if (kind == 1) return 1 + (((w >> 104) & 0xffff) + 30) / 31; // listing: spec chunks
        if (kind == MARK) {
            // mark: the mark word and the risk values, padded to chunks of 11, five per word
            uint256 padded = ((((w >> 104) & 0xff) + 10) / 11) * 11;
            return 2 + (padded + 4) / 5;
        }
        if (kind == WITHDRAW || kind == L1_WITHDRAWAL) return 3; // and the owner paid
        if (kind == L1_CLOSE) return 3; // its word, the queue id, the requester
        if (kind == 5) return 3; // a settled position: its word, the cash, the quantity settled
        if ((kind >= 5 && kind <= 9) || (kind >= 20 && kind <= 23) || kind == 25) return 2;
        if (kind == 28) return 1; // a margin mode: account and mode in its word
        if (kind == 29 || kind == 30) return 1; // an auction's start or end: the account in its word
        revert BadBatch("unknown op");
    }

    error BadBatch(string why);
}

/// One fill as the posted words say it (docs/settlement.md, "Words").
struct Fill {
    uint32 maker;
    uint32 taker;
    uint32 instrument;
    bool takerBuys;
    int64 price;
    int64 qty;
}

/// A session key as an account's leaf commits it: the leaf's keys hash folds
/// `Poseidon(h, key, expiryMs)` over them in address order, from 0 (docs/settlement.md).
struct SessionKey {
    address key;
    uint64 expiryMs;
}

/// One batch's share of an overfill challenge: the batch, its posted data and authorization
/// section, and fill sides there (`2 * fill`, plus 1 for the taker's side), ascending.
struct FillSides {
    uint256 number;
    bytes data;
    bytes auths;
    uint256[] sides;
}
