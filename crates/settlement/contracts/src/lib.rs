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

/// Builds the contracts with the native forge (artifacts under `contracts/out`).
pub fn forge_build() -> Result<(), String> {
    let dir = contracts_dir();
    let forge = forge().ok_or("forge is not installed: run `npm ci --prefix contracts`")?;
    let out = std::process::Command::new(forge)
        .arg("build")
        .current_dir(&dir)
        .env("FOUNDRY_SOLC", dir.join("tools/solc"))
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A local anvil (from npm) on a free port of 127.0.0.1, stopped when dropped.
pub struct Anvil {
    child: std::process::Child,
    /// Its JSON-RPC URL.
    pub url: String,
}

impl Anvil {
    /// Starts anvil (mining a block per transaction) and waits until it accepts connections.
    pub fn start() -> Result<Anvil, String> {
        Self::start_with(&[])
    }

    /// Starts anvil with extra arguments (e.g. `--block-time 1`) and waits until it accepts
    /// connections.
    pub fn start_with(extra: &[&str]) -> Result<Anvil, String> {
        let bin = std::fs::read_dir(contracts_dir().join("node_modules/@foundry-rs"))
            .map_err(|_| "anvil is not installed: run `npm ci --prefix contracts`".to_owned())?
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin/anvil"))
            .find(|p| p.is_file())
            .ok_or("anvil is not installed: run `npm ci --prefix contracts`")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let child = std::process::Command::new(bin)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--silent",
            ])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let anvil = Anvil {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if std::time::Instant::now() > deadline {
                return Err("anvil did not come up within 30 s".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(anvil)
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
