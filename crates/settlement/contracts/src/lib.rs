//! Optio's L1 contracts live in `contracts/` (Solidity, built and tested offline with Foundry
//! and solc-js from npm: `npm ci --prefix contracts`, then `npm test --prefix contracts`). This
//! crate finds them and the native Foundry binaries, so that `cargo test` runs the Solidity
//! suite too; the settler will deploy and call them from here.

use std::path::PathBuf;

/// The `contracts/` directory of the repository.
pub fn contracts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../contracts")
}

/// The native `forge` binary installed by `npm ci --prefix contracts` (the launcher in
/// `node_modules/.bin` exits 0 even when tests fail, so it is never used).
pub fn forge() -> Option<PathBuf> {
    let packages = contracts_dir().join("node_modules/@foundry-rs");
    std::fs::read_dir(packages)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin/forge"))
        .find(|p| p.is_file())
}
