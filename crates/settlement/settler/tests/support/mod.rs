//! Helpers the anvil tests share.

use alloy::primitives::{Address, U256};
use alloy::providers::{DynProvider, Provider};

/// Replaces the code at `address` on anvil with `code` (runtime code, no constructor).
pub async fn set_code(provider: &DynProvider, address: Address, code: Vec<u8>) {
    let _: serde_json::Value = provider
        .raw_request(
            "anvil_setCode".into(),
            (address, alloy::primitives::Bytes::from(code)),
        )
        .await
        .expect("sets code");
}

/// A provider that sends as `who` on the anvil at `url` (impersonated, with gas money): a
/// contract's own address, or an owner whose key the test does not know.
pub async fn impersonated(provider: &DynProvider, url: &str, who: Address) -> DynProvider {
    let _: serde_json::Value = provider
        .raw_request("anvil_impersonateAccount".into(), (who,))
        .await
        .expect("impersonate");
    let _: serde_json::Value = provider
        .raw_request(
            "anvil_setBalance".into(),
            (who, U256::from(10u64).pow(U256::from(18u64))),
        )
        .await
        .expect("gas money");
    alloy::providers::ProviderBuilder::new()
        .connect_http(url.parse().expect("url"))
        .erased()
}

/// What a token whose owner can move anyone's balance (a seizure, a burn) does to the vault:
/// `amount` of `rollup`'s balance of `token` goes to `to`.
pub async fn take_from_vault(
    provider: &DynProvider,
    url: &str,
    token: Address,
    rollup: Address,
    to: Address,
    amount: u64,
) {
    let as_rollup = impersonated(provider, url, rollup).await;
    let token = optio_settler::TestUSDC::new(token, &as_rollup);
    optio_settler::transact(token.transfer(to, U256::from(amount)).from(rollup))
        .await
        .expect("the token moves it");
}
