"""Drives a running Optio node with the unmodified ccxt 4.5.90 `derive` class, and checks every
order signature ccxt sent independently with eth-account. Exits non-zero on any mismatch.

Usage: python3 tools/ccxt/flow.py http://127.0.0.1:PORT 0x<private key> 0x<wallet address>"""
import json
import time
import sys

import ccxt
from eth_account import Account
from eth_account.messages import encode_typed_data

URL, KEY, WALLET = sys.argv[1], sys.argv[2], sys.argv[3]
ex = ccxt.derive({
    "walletAddress": WALLET,
    "privateKey": KEY,
    "urls": {"api": {"public": URL + "/public", "private": URL + "/private"}},
    "options": {"max_fee": "100"},
})

ACTION_TYPES = {
    "EIP712Domain": [
        {"name": "name", "type": "string"}, {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"},
    ],
    "Action": [
        {"name": "subaccountId", "type": "uint256"}, {"name": "nonce", "type": "uint256"},
        {"name": "module", "type": "address"}, {"name": "data", "type": "bytes"},
        {"name": "expiry", "type": "uint256"}, {"name": "owner", "type": "address"},
        {"name": "signer", "type": "address"},
    ],
}


def check_signature(body, market):
    """Rebuild what ccxt signed (its own exact decimal scaling) and recover it with eth-account."""
    from decimal import Decimal
    amount = ex.amount_to_precision(market["symbol"], body["amount"])
    to18 = lambda x: int(Decimal(str(x)) * 10**18)

    word = lambda v: (v % (1 << 256)).to_bytes(32, "big")
    info = market["info"]
    data = (word(int(info["base_asset_address"], 16)) + word(int(info["base_asset_sub_id"])) + word(to18(body["limit_price"]))
            + word(to18(amount)) + word(to18(body["max_fee"])) + word(int(body["subaccount_id"]))
            + word(1 if body["direction"] == "buy" else 0))
    message = {
        "types": ACTION_TYPES, "primaryType": "Action",
        "domain": {"name": "Matching", "version": "1.0", "chainId": 1, "verifyingContract": "0xeB8d770ec18DB98Db922E9D83260A585b9F0DeAD"},
        "message": {"subaccountId": int(body["subaccount_id"]), "nonce": int(body["nonce"]), "module": "0xB8D20c2B7a1Ad2EE33Bc50eF10876eD3035b5e7b",
                    "data": data, "expiry": int(body["signature_expiry_sec"]), "owner": WALLET, "signer": body["signer"]},
    }
    signer = Account.recover_message(encode_typed_data(full_message=message), signature=body["signature"])
    assert signer.lower() == WALLET.lower(), (signer, WALLET)


markets = ex.load_markets()
options = [m for m in markets.values() if m["type"] == "option" and m["base"] == "BTC"]
perp = next(m for m in markets.values() if m["type"] == "swap" and m["base"] == "BTC")
assert options and perp, "markets listed"
print("markets", len(markets))
assert ex.fetch_time() > 0
accounts = ex.fetch_accounts()
sub = int(accounts[0]["id"])
ex.options["subaccount_id"] = sub
print("subaccount", sub)

option = options[len(options) // 2]
ticker = ex.fetch_ticker(option["symbol"])
assert ticker["markPrice"] and ticker["indexPrice"], ticker
greeks = ex.fetch_greeks(option["symbol"])
assert greeks["markImpliedVolatility"] and greeks["delta"] is not None, greeks
print("ticker", option["id"], ticker["markPrice"], "iv", greeks["markImpliedVolatility"], "delta", greeks["delta"])

# A resting bid far below the market, listed, then cancelled.
tick = option["precision"]["price"]
low = float(ex.price_to_precision(option["symbol"], max(tick, ticker["markPrice"] * 0.5)))
order = ex.create_order(option["symbol"], "limit", "buy", 0.1, low, {"subaccount_id": sub})
check_signature(json.loads(ex.last_request_body), option)
assert order["status"] == "open", order
open_orders = ex.fetch_open_orders(option["symbol"], params={"subaccount_id": sub})
assert any(o["id"] == order["id"] for o in open_orders), open_orders
fetched = ex.fetch_order(order["id"], option["symbol"], {"subaccount_id": sub})
assert fetched["id"] == order["id"]
cancelled = ex.cancel_order(order["id"], option["symbol"], {"subaccount_id": sub})
assert cancelled["status"] == "canceled", cancelled
assert cancelled["info"]["cancel_reason"] == "user_request", cancelled
fetched = ex.fetch_order(order["id"], option["symbol"], {"subaccount_id": sub})
assert fetched["status"] == "canceled" and fetched["info"]["cancel_reason"] == "user_request", fetched
print("placed, listed and cancelled", order["id"])

# Buy the perpetual through the market makers' quotes: an IOC limit a little above the best
# ask (it fills at the resting price). The makers requote all the time, so a quote can move
# between the ticker and the order: a few tries, as a client would.
for attempt in range(5):
    perp_ticker = ex.fetch_ticker(perp["symbol"])
    ask = float(perp_ticker["info"]["a"])
    assert ask > 0, perp_ticker
    limit = float(ex.price_to_precision(perp["symbol"], ask * 1.002))
    took = ex.create_order(perp["symbol"], "limit", "buy", 0.01, limit, {"subaccount_id": sub, "timeInForce": "IOC"})
    check_signature(json.loads(ex.last_request_body), perp)
    if took["filled"] > 0:
        break
    assert took["info"]["cancel_reason"] == "ioc_or_market_partial_fill", took
    time.sleep(0.2)
assert took["filled"] == 0.01, took
assert 0 < float(took["info"]["average_price"]) <= limit, took
trades = ex.fetch_my_trades(perp["symbol"], params={"subaccount_id": sub})
assert trades and trades[-1]["side"] == "buy", trades
positions = ex.fetch_positions(params={"subaccount_id": sub})
held = [p for p in positions if p["symbol"] == perp["symbol"]]
assert held and held[0]["contracts"] == 0.01, positions
# Its margin is the engine's (a fully funded long perpetual needs nothing more), not a blank.
assert held[0]["initialMargin"] is not None and held[0]["maintenanceMargin"] is not None, held
# A resting bid holds its premium: the balance shows it used.
resting = ex.create_order(option["symbol"], "limit", "buy", 0.1, low, {"subaccount_id": sub})
balance = ex.fetch_balance()
assert balance["USDC"]["total"] > 0, balance
assert balance["USDC"]["used"] >= 0.1 * low, (balance["USDC"], low)
# ... as the open orders' margin, apart from the positions' (Derive writes requirements negative).
mine = [p for p in balance["info"] if p["subaccount_id"] == sub]
assert mine and float(mine[0]["open_orders_margin"]) <= -0.1 * low, mine
print("margin: perpetual", held[0]["initialMargin"], "used with a resting bid", balance["USDC"]["used"])
# editOrder is Derive's private/replace: the resting bid cancelled and a larger one placed, as
# one input. Replacing the order now gone places nothing (OrderNotFound, Derive's 11006).
edited = ex.edit_order(resting["id"], option["symbol"], "limit", "buy", 0.2, low, {"subaccount_id": sub, "max_fee": "100"})
check_signature(json.loads(ex.last_request_body), option)
assert edited["id"] != resting["id"] and edited["status"] == "open" and edited["amount"] == 0.2, edited
assert ex.fetch_order(resting["id"], option["symbol"], {"subaccount_id": sub})["status"] == "canceled"
assert [o["id"] for o in ex.fetch_open_orders(option["symbol"], params={"subaccount_id": sub})] == [edited["id"]]
try:
    ex.edit_order(resting["id"], option["symbol"], "limit", "buy", 0.3, low, {"subaccount_id": sub, "max_fee": "100"})
    raise SystemExit("a replace of a cancelled order was accepted")
except ccxt.OrderNotFound as e:
    print("replace of a cancelled order refused:", str(e)[:80])
assert [o["id"] for o in ex.fetch_open_orders(option["symbol"], params={"subaccount_id": sub})] == [edited["id"]]
print("edited", resting["id"], "into", edited["id"])
ex.cancel_all_orders(params={"subaccount_id": sub})

# A tampered body: the signature no longer matches, ccxt raises InvalidOrder.
try:
    ex.create_order(option["symbol"], "limit", "buy", 0.1, low, {"subaccount_id": sub, "limit_price": ex.price_to_precision(option["symbol"], low * 2)})
    raise SystemExit("a tampered order was accepted")
except ccxt.InvalidOrder as e:
    print("tampered order refused:", str(e)[:80])

# A nonce dated 20 minutes back (a client whose nonces lag its clock): Derive's 11018, which
# ccxt raises as InvalidOrder; the order is not placed.
fresh = ex.nonce_string
ex.nonce_string = lambda: str(ex.milliseconds() - 20 * 60 * 1000) + "123456"
try:
    ex.create_order(option["symbol"], "limit", "buy", 0.1, low, {"subaccount_id": sub})
    raise SystemExit("an order with a stale nonce was accepted")
except ccxt.InvalidOrder as e:
    assert "11018" in str(e) and "nonce date not recent" in str(e), e
    print("stale nonce refused:", str(e)[:80])
ex.nonce_string = fresh
assert not ex.fetch_open_orders(option["symbol"], params={"subaccount_id": sub})

print("ccxt flow ok")
