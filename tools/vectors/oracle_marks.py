"""Generates test-vectors/oracle_marks.json and test-vectors/oracle_settlements.json: the risk
oracle's EIP-712 `OracleMark` and `OracleSettlement` signatures in Optio's native domain, hashed and signed by Python's eth-account (pip eth-account==0.13.7), an
implementation independent of Optio's (`optio_intents::OracleMark` and `OracleSettlement`, and
`OptioJudge` on L1).
Run: python3 tools/vectors/oracle_marks.py"""
import json
import random

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak

rng = random.Random(11)
TYPES = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ],
    "OracleMark": [
        {"name": "instrument", "type": "uint32"},
        {"name": "mark", "type": "int64"},
        {"name": "index", "type": "int64"},
        {"name": "risk", "type": "int64[]"},
        {"name": "publishedMs", "type": "uint64"},
    ],
    "OracleSettlement": [
        {"name": "instrument", "type": "uint32"},
        {"name": "price", "type": "int64"},
        {"name": "publishedMs", "type": "uint64"},
    ],
}

cases = []
for i in range(16):
    oracle = Account.from_key(bytes(rng.getrandbits(8) for _ in range(31)) + bytes([i + 1]))
    chain_id = rng.choice([1, 31337, 8453])
    contract = "0x" + bytes(rng.getrandbits(8) for _ in range(20)).hex()
    # Marks and risk values across the signed range, negatives included; arrays of 0 to 64.
    mark = rng.choice([1, rng.randint(1, 10**12), 2**63 - 1, -rng.randint(1, 10**9)])
    # The underlying's index with the mark: positive, up to the word's top.
    index = rng.choice([1, rng.randint(1, 10**12), 2**63 - 1])
    risk = [rng.randint(-(2**47), 2**47 - 1) for _ in range(rng.choice([0, 1, 13, 31, 64]))]
    message = {"instrument": rng.getrandbits(32), "mark": mark, "index": index, "risk": risk,
               "publishedMs": rng.randint(1_700_000_000_000, 1_900_000_000_000)}
    domain = {"name": "Optio", "version": "1", "chainId": chain_id, "verifyingContract": contract}
    full = {"types": {k: TYPES[k] for k in ("EIP712Domain", "OracleMark")}, "primaryType": "OracleMark", "domain": domain, "message": message}
    signable = encode_typed_data(full_message=full)
    signed = oracle.sign_message(signable)
    cases.append({
        "chain_id": chain_id, "verifying_contract": contract, "instrument": message["instrument"],
        "mark": str(mark), "index": str(index), "risk": [str(v) for v in risk], "published_ms": message["publishedMs"],
        "oracle": oracle.address, "digest": "0x" + keccak(b"\x19\x01" + signable.header + signable.body).hex(),
        "signature": "0x" + signed.signature.hex(),
    })

with open("test-vectors/oracle_marks.json", "w") as out:
    json.dump({"source": "eth-account 0.13.7", "cases": cases}, out, indent=1)
print(len(cases), "mark cases")

# Settlement prices (their own generator, so the marks' file above stays as it was).
rng = random.Random(12)
cases = []
for i in range(16):
    oracle = Account.from_key(bytes(rng.getrandbits(8) for _ in range(31)) + bytes([i + 1]))
    chain_id = rng.choice([1, 31337, 8453])
    contract = "0x" + bytes(rng.getrandbits(8) for _ in range(20)).hex()
    price = rng.choice([1, rng.randint(1, 10**12), 2**63 - 1, -rng.randint(1, 10**9)])
    message = {"instrument": rng.getrandbits(32), "price": price,
               "publishedMs": rng.randint(1_700_000_000_000, 1_900_000_000_000)}
    domain = {"name": "Optio", "version": "1", "chainId": chain_id, "verifyingContract": contract}
    full = {"types": {k: TYPES[k] for k in ("EIP712Domain", "OracleSettlement")},
            "primaryType": "OracleSettlement", "domain": domain, "message": message}
    signable = encode_typed_data(full_message=full)
    signed = oracle.sign_message(signable)
    cases.append({
        "chain_id": chain_id, "verifying_contract": contract, "instrument": message["instrument"],
        "price": str(price), "published_ms": message["publishedMs"], "oracle": oracle.address,
        "digest": "0x" + keccak(b"\x19\x01" + signable.header + signable.body).hex(),
        "signature": "0x" + signed.signature.hex(),
    })

with open("test-vectors/oracle_settlements.json", "w") as out:
    json.dump({"source": "eth-account 0.13.7", "cases": cases}, out, indent=1)
print(len(cases), "settlement cases")
