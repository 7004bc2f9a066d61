"""Generates test-vectors/intents.json: EIP-712 `Action` intents in Optio's native domain, signed
by Python's eth-account (pip eth-account==0.13.7), an implementation independent of Optio's.
Run: python3 tools/vectors/intents.py"""
import json
import random

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak

N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
rng = random.Random(7)
TYPES = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ],
    "Action": [
        {"name": "subaccountId", "type": "uint256"},
        {"name": "nonce", "type": "uint256"},
        {"name": "module", "type": "address"},
        {"name": "data", "type": "bytes"},
        {"name": "expiry", "type": "uint256"},
        {"name": "owner", "type": "address"},
        {"name": "signer", "type": "address"},
    ],
}


def word(v):
    return (v % (1 << 256)).to_bytes(32, "big")


cases = []
for i in range(24):
    owner = Account.create(extra_entropy=str(rng.random()))
    signer = owner if i % 3 else Account.create(extra_entropy=str(rng.random()))  # a session key now and then
    chain_id = rng.choice([1, 31337, 11155111, 8453])
    contract = "0x" + bytes(rng.getrandbits(8) for _ in range(20)).hex()
    module = "0x" + bytes(rng.getrandbits(8) for _ in range(20)).hex()
    data = (word(int(contract, 16)) + word(rng.getrandbits(96)) + word(rng.randint(1, 10**6) * 10**17)
            + word(rng.randint(1, 10**4) * 10**16) + word(10**20) + word(rng.randint(1, 10**6)) + word(i % 2))
    domain = {"name": "Optio", "version": "1", "chainId": chain_id, "verifyingContract": contract}
    message = {"subaccountId": rng.randint(1, 10**9), "nonce": rng.getrandbits(63), "module": module, "data": data,
               "expiry": rng.randint(1_700_000_000, 1_900_000_000), "owner": owner.address, "signer": signer.address}
    full = {"types": TYPES, "primaryType": "Action", "domain": domain, "message": message}
    signable = encode_typed_data(full_message=full)
    signed = signer.sign_message(signable)
    digest = keccak(b"\x19\x01" + signable.header + signable.body)
    r, s, v = signed.r, signed.s, signed.v
    high = r.to_bytes(32, "big") + (N - s).to_bytes(32, "big") + bytes([55 - v])
    cases.append({
        "chain_id": chain_id, "verifying_contract": contract, "domain_separator": "0x" + signable.header.hex(),
        "subaccount_id": message["subaccountId"], "nonce": str(message["nonce"]), "module": module, "data": "0x" + data.hex(),
        "expiry": message["expiry"], "owner": owner.address, "signer": signer.address, "digest": "0x" + digest.hex(),
        "signature": "0x" + signed.signature.hex(), "high_s_signature": "0x" + high.hex(),
    })

with open("test-vectors/intents.json", "w") as out:
    json.dump({"source": "eth-account 0.13.7", "cases": cases}, out, indent=1)
print(len(cases), "cases")
