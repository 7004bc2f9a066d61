//! `optio devnet --prove-keys`: keys from `optio prove setup` (a small shape, so that the test
//! is quick), the devnet cuts its batches to fit them, proves them in its own process, and its
//! settler gets the proofs verified by the embedded rollup's verifier; `/metrics` shows the
//! batches proven and the sequence numbers proven on L1; `optio prove check` then checks every
//! proof against the blobs alone.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

/// The shape: 4 op slots and account registers, 8 listing slots, a read-only position register
/// (its keys named with the seventeenth size, which the node, the settler's verifier and
/// `optio prove check` must all read alike), nothing else.
const SHAPE: [&str; 26] = [
    "--slots",
    "4",
    "--accounts",
    "4",
    "--positions",
    "1",
    "--readonly",
    "1",
    "--instruments",
    "1",
    "--listings",
    "8",
    "--expiries",
    "0",
    "--settlements",
    "0",
    "--holders",
    "0",
    "--marks",
    "0",
    "--session-keys",
    "0",
    "--prices",
    "0",
    "--solvency",
    "0",
];

/// A child process killed when dropped (also when the test fails half way).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.trim().parse().ok())
}

/// Keys of `SHAPE`, made by `optio prove setup` in a fresh directory.
fn small_keys() -> tempfile::TempDir {
    let keys = tempfile::tempdir().expect("tempdir");
    let setup = Command::new(env!("CARGO_BIN_EXE_optio"))
        .args(["prove", "setup", "--keys"])
        .arg(keys.path())
        .args(SHAPE)
        .status()
        .expect("runs");
    assert!(setup.success(), "optio prove setup");
    keys
}

/// Linux's `SCHED_IDLE` policy number.
#[cfg(target_os = "linux")]
const SCHED_IDLE: u32 = 5;

/// The scheduling policy of each of a process's `optio-prover-N` threads (the prover's pool),
/// from /proc: field 41 of each thread's stat.
#[cfg(target_os = "linux")]
fn prover_policies(pid: u32) -> Vec<u32> {
    optio_prover::worker::thread_scheduling(pid, "optio-prover-")
        .into_iter()
        .map(|t| t.policy)
        .collect()
}

#[test]
fn the_devnet_proves_its_batches_and_l1_verifies_them() {
    let optio = env!("CARGO_BIN_EXE_optio");
    let keys = small_keys();
    let data = tempfile::tempdir().expect("tempdir");
    let keys_dir = keys.path().to_str().expect("utf-8");

    let mut child = Killed(
        Command::new(optio)
            .args([
                "devnet",
                "--no-flow",
                "--listen",
                "127.0.0.1:0",
                "--duration-s",
                "300",
                "--prove-keys",
                keys_dir,
                "--data",
                data.path().to_str().expect("utf-8"),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("starts"),
    );
    let mut lines = BufReader::new(child.0.stdout.take().expect("stdout")).lines();
    let (chain_url, rollup) =
        common::chain_of(lines.by_ref().map_while(Result::ok)).expect("starts its embedded chain");
    let addr = common::api_url(lines.by_ref().map_while(Result::ok)).expect("prints the API URL");
    // It prints the watchtower's command, with the keys' verifying key.
    let audit = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.trim_start().starts_with("audit "))
        .expect("prints the audit command");
    assert_eq!(
        audit.split_whitespace().collect::<Vec<_>>(),
        [
            "audit", "optio", "verify", "--rpc", &chain_url, "--rollup", &rollup, "--vk", keys_dir
        ]
    );
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});

    // 58 instruments listed and activated at start: 15 batches of at most 8 listing slots.
    // Wait for the first to be proven on L1.
    let deadline = Instant::now() + Duration::from_secs(240);
    let metrics = loop {
        let text = common::get_text(&addr, "/metrics").unwrap_or_default();
        if metric(&text, "optio_l1_proven_seq").is_some_and(|s| s > 0) {
            break text;
        }
        assert!(Instant::now() < deadline, "nothing proven on L1:\n{text}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(metric(&metrics, "optio_batches_proven_total").is_some_and(|n| n >= 1));
    assert_eq!(metric(&metrics, "optio_batches_unprovable_total"), Some(0));
    // The threads that proved it are in the idle scheduling class, so that the exchange's
    // threads take a core from them the moment they wake.
    #[cfg(target_os = "linux")]
    {
        let policies = prover_policies(child.0.id());
        assert!(!policies.is_empty(), "no optio-prover-N thread found");
        assert!(
            policies.iter().all(|&p| p == SCHED_IDLE),
            "the prover's threads' policies: {policies:?}"
        );
    }
    assert!(
        metric(&metrics, "optio_l1_committed_seq") >= metric(&metrics, "optio_l1_proven_seq"),
        "{metrics}"
    );
    // The watchtower agrees from L1 alone, proofs included, and the rollup's verifier holds
    // the published key (and runs the audited code, as every contract of the deployment).
    let verify = |vk: &std::path::Path| {
        Command::new(optio)
            .args(["verify", "--rpc", &chain_url, "--rollup", &rollup, "--vk"])
            .arg(vk)
            .output()
            .expect("runs")
    };
    let out = verify(keys.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "optio verify: {text}");
    assert!(
        text.contains("proven on L1, each with its posted data's ops commitment"),
        "{text}"
    );
    assert!(
        text.contains(
            "deployment: rollup, judge, trees, 4 Poseidon hashers and verifier run this tree's audited build"
        ),
        "{text}"
    );
    assert!(text.contains("verifying key: the verifier"), "{text}");
    // Every proof L1 accepted checks natively against the published key too.
    let line = text
        .lines()
        .find(|l| l.starts_with("proofs: "))
        .unwrap_or_default();
    let (ok, of) = line
        .strip_prefix("proofs: ")
        .and_then(|l| l.split_once(" of the "))
        .expect("the proofs' line");
    let of: u64 = of
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .parse()
        .expect("a count");
    assert!(of >= 1 && ok == of.to_string(), "{text}");
    // Keys of the same shape from another setup: not the key L1 checks proofs with.
    let other = small_keys();
    let out = verify(other.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "optio verify: {text}");
    assert!(
        text.contains("verifying key: ALERT the verifier")
            && text.contains("holds another key than"),
        "{text}"
    );
    // And none of the proofs L1 accepted checks against that key.
    assert!(
        text.contains("ALERT L1 accepted a proof that does not check against the key in")
            && text.contains("proofs: 0 of the"),
        "{text}"
    );
    assert!(
        text.contains("1 alerts about the deployment")
            || String::from_utf8_lossy(&out.stderr).contains("1 alerts about the deployment"),
        "{text}"
    );
    // No key there: a clear error, nothing checked.
    let out = verify(&other.path().join("missing.vk"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing.vk"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(child);

    // Every proof written checks against the blobs alone (the last batch may be unproven).
    let check = Command::new(optio)
        .args([
            "prove",
            "check",
            "--batches",
            data.path().join("batches").to_str().expect("utf-8"),
            "--keys",
            keys_dir,
        ])
        .args(SHAPE)
        .output()
        .expect("runs");
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "optio prove check: {out}");
    assert!(out.contains("every proof checks"), "{out}");
}

/// The files directly in `dir`, by name, with their bytes.
fn files_in(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| {
            let path = e.ok()?.path();
            path.is_file().then(|| {
                let name = path
                    .file_name()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned();
                (name, std::fs::read(&path).expect("reads"))
            })
        })
        .collect();
    files.sort();
    files
}

/// A node's configuration in `dir` (its data under `dir/data`) with the prover keys in `keys`
/// (none: a node that cuts its batches for no circuit):
/// the perpetual and `instruments` (more `[[instrument]]` tables).
fn node_config(
    dir: &std::path::Path,
    keys: Option<&std::path::Path>,
    instruments: &str,
) -> std::path::PathBuf {
    let config = dir.join("optio.toml");
    let keys = keys.map_or(String::new(), |k| {
        format!("prove_keys = \"{}\"\n", k.display())
    });
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata = \"{}\"\n{keys}\n[[instrument]]\nname = \"BTC-PERPETUAL\"\nunderlying_cap = \"400000\"\n{instruments}",
            dir.join("data").display(),
        ),
    )
    .expect("write config");
    config
}

/// `optio node` with `prove_keys` in its file: its batches are cut to the keys' shape (12
/// listings and activations, at most 8 listing slots a batch), so that `optio prove run`
/// workers, run apart from the node, prove every one of them.
#[test]
fn a_node_cuts_its_batches_for_external_provers() {
    let optio = env!("CARGO_BIN_EXE_optio");
    let keys = small_keys();
    let dir = tempfile::tempdir().expect("tempdir");
    let keys_dir = keys.path().to_str().expect("utf-8");
    let instruments: String = [1000, 2000, 3000, 4000, 5000]
        .iter()
        .map(|k| {
            format!("[[instrument]]\nname = \"ETH-26MAR27-{k}-C\"\nunderlying_cap = \"20000\"\n")
        })
        .collect();
    let run_node = |config: &std::path::Path| {
        Command::new(optio)
            .args(["node", "--config"])
            .arg(config)
            .args(["--duration-s", "4"])
            .env("OPTIO_SEQUENCER_KEY", format!("0x{}", "11".repeat(32)))
            .output()
            .expect("runs")
    };
    let node = run_node(&node_config(dir.path(), Some(keys.path()), &instruments));
    assert!(node.status.success(), "{node:?}");

    let batches = dir.path().join("data").join("batches");
    let blobs = std::fs::read_dir(&batches)
        .expect("batches")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "blob"))
        })
        .count();
    assert_eq!(blobs, 2, "12 listing ops in batches of at most 8");
    let batches = batches.to_str().expect("utf-8");
    let run = Command::new(optio)
        .args([
            "prove",
            "run",
            "--once",
            "--batches",
            batches,
            "--keys",
            keys_dir,
        ])
        .args(SHAPE)
        .output()
        .expect("runs");
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{out}");
    assert_eq!(out.matches("proven in").count(), 2, "{out}");
    assert!(!out.contains("not provable"), "{out}");
    // Without the shape flags: the one set of keys in the directory.
    let check = Command::new(optio)
        .args(["prove", "check", "--batches", batches, "--keys", keys_dir])
        .output()
        .expect("runs");
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{out}");
    assert!(out.contains("(the one set in"), "{out}");
    assert!(out.contains("2 batches proven"), "{out}");

    // The same data directory without the keys would cut batches the provers cannot prove:
    // refused before anything is sequenced, the log as it was.
    let data = dir.path().join("data");
    let before = files_in(&data);
    let out = run_node(&node_config(dir.path(), None, &instruments));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("shape_mismatch: the batches in")
            && stderr.contains("would now be cut without proving"),
        "{stderr}"
    );
    assert_eq!(files_in(&data), before);
}

/// A mark or solvency window that is not a power of four (a whole subtree of the arity-4 tree)
/// is refused before any key is made, with a message
/// that says what is allowed, and the keys directory stays empty.
#[test]
fn a_mark_window_that_is_not_a_power_of_four_is_refused() {
    let keys = tempfile::tempdir().expect("tempdir");
    let windows = ["3", "0", "2", "32", "4194304", "x"];
    for (flag, window) in ["--mark-window", "--solvency-window"]
        .into_iter()
        .flat_map(|flag| windows.map(|w| (flag, w)))
    {
        let out = Command::new(env!("CARGO_BIN_EXE_optio"))
            .args(["prove", "setup", "--keys"])
            .arg(keys.path())
            .args(SHAPE)
            .args([flag, window])
            .output()
            .expect("runs");
        assert!(!out.status.success(), "{flag} {window}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("is not a power of four up to 2^20"),
            "{stderr}"
        );
        assert_eq!(
            std::fs::read_dir(keys.path()).expect("dir").count(),
            0,
            "no keys written for {flag} {window}"
        );
    }
}

/// A shape with settlement slots that pay fewer than two positions could settle nothing (a
/// part pays at least a long and a short): its node would cut, at the first expiry with
/// holders, a batch no proof holds. Refused before any key is made, saying why.
#[test]
fn a_shape_whose_settlements_could_pay_no_part_is_refused() {
    let keys = tempfile::tempdir().expect("tempdir");
    let mut args: Vec<&str> = SHAPE.to_vec();
    for (flag, value) in [("--settlements", "1"), ("--holders", "1")] {
        let at = args
            .iter()
            .position(|a| *a == flag)
            .expect("a flag of the shape");
        args[at + 1] = value;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_optio"))
        .args(["prove", "setup", "--keys"])
        .arg(keys.path())
        .args(&args)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("shape_unusable: a settlement slot pays at least a long and a short"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(keys.path()).expect("dir").count(), 0);
}

/// Keys named for such a shape (made by another tool, or by hand) are refused the same way by
/// `optio node` and `optio devnet --prove-keys`, from the files' name, before anything starts
/// or any key is read: the files here are empty.
#[test]
fn a_node_or_devnet_with_keys_of_an_unusable_shape_refuses_to_start() {
    let keys = tempfile::tempdir().expect("tempdir");
    let unusable = "quad-8x8x8x4x2x2x1x1x2x3x2x0x2x2x4x6";
    for ext in ["pk", "vk"] {
        std::fs::write(keys.path().join(format!("{unusable}.{ext}")), b"").expect("writes");
    }
    let data = tempfile::tempdir().expect("tempdir");
    let config = node_config(data.path(), Some(keys.path()), "");
    let runs = [
        vec![
            "node".into(),
            "--config".into(),
            config.display().to_string(),
            "--duration-s".into(),
            "4".into(),
        ],
        vec![
            "devnet".into(),
            "--prove-keys".into(),
            keys.path().display().to_string(),
            "--duration-s".into(),
            "4".into(),
        ],
    ];
    for args in runs {
        let out = Command::new(env!("CARGO_BIN_EXE_optio"))
            .args(&args)
            .env("OPTIO_SEQUENCER_KEY", format!("0x{}", "11".repeat(32)))
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains("shape_unusable: a settlement slot pays at least a long and a short"),
            "{args:?}: {stderr}"
        );
    }
    assert!(
        !data.path().join("data").exists(),
        "the node created no data directory"
    );
}

/// Keys made for another version of the circuit (`optio_prover::CIRCUIT_VERSION`, recorded
/// beside them) would give proofs that do not verify: a node or devnet given them refuses to
/// start, naming both versions, before it creates anything.
#[test]
fn a_node_or_devnet_with_keys_of_another_circuit_version_refuses_to_start() {
    let keys = tempfile::tempdir().expect("tempdir");
    let shape = "quad-16x16x16x12x4x4x2x16x1x3x4x6x2x2x4x6";
    for (ext, bytes) in [("pk", &b""[..]), ("vk", b""), ("circuit", b"0\n")] {
        std::fs::write(keys.path().join(format!("{shape}.{ext}")), bytes).expect("writes");
    }
    let data = tempfile::tempdir().expect("tempdir");
    let config = node_config(data.path(), Some(keys.path()), "");
    for args in [
        vec![
            "node".to_owned(),
            "--config".into(),
            config.display().to_string(),
        ],
        vec![
            "devnet".to_owned(),
            "--prove-keys".into(),
            keys.path().display().to_string(),
        ],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_optio"))
            .args(&args)
            .args(["--duration-s", "4"])
            .env("OPTIO_SEQUENCER_KEY", format!("0x{}", "11".repeat(32)))
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        let said = format!(
            "another circuit version (0; this binary's is {})",
            optio_prover::CIRCUIT_VERSION
        );
        assert!(stderr.contains(&said), "{args:?}: {stderr}");
    }
    assert!(
        !data.path().join("data").exists(),
        "the node created no data directory"
    );
}

/// `optio devnet` on its embedded chain proves by default, with keys of its own shape
/// (`Shape::DEVNET`) in its keys cache: keys there of another circuit version are remade (the
/// test stops it once it says so: generating takes a minute), `--no-prove` starts without
/// keys or a prover, and a data directory whose batches were cut without proving is refused
/// before any key is made or read.
#[test]
fn the_devnet_proves_by_default_with_keys_it_makes_in_its_cache() {
    let cache = tempfile::tempdir().expect("tempdir");
    let devnet = optio_prover::Shape::DEVNET.name();
    let seeded = [("pk", &b""[..]), ("vk", b""), ("circuit", b"0\n")];
    for (ext, bytes) in seeded {
        std::fs::write(cache.path().join(format!("{devnet}.{ext}")), bytes).expect("writes");
    }
    let before = files_in(cache.path());

    // Batches cut without proving: refused, the cache untouched.
    let data = tempfile::tempdir().expect("tempdir");
    std::fs::write(data.path().join("prove-shape"), "none\n").expect("writes");
    std::fs::create_dir_all(data.path().join("batches")).expect("mkdir");
    std::fs::write(data.path().join("batches/00000001.blob"), b"cut").expect("writes");
    let out = Command::new(env!("CARGO_BIN_EXE_optio"))
        .args(["devnet", "--listen", "127.0.0.1:0", "--duration-s", "4"])
        .arg("--data")
        .arg(data.path())
        .arg("--keys-cache")
        .arg(cache.path())
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "shape_mismatch: the batches in {} were cut without proving, and would now be cut for circuit {devnet}",
            data.path().display()
        )),
        "{stderr}"
    );
    assert_eq!(files_in(cache.path()), before);

    // `--no-prove`: no keys, no prover, the cache untouched.
    let out = Command::new(env!("CARGO_BIN_EXE_optio"))
        .args([
            "devnet",
            "--listen",
            "127.0.0.1:0",
            "--duration-s",
            "3",
            "--no-prove",
        ])
        .env("OPTIO_KEYS_CACHE", cache.path())
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("JSON-RPC  http://127.0.0.1:"), "{stdout}");
    assert!(!stdout.contains("prover"), "{stdout}");
    assert!(!stdout.contains("generating"), "{stdout}");
    assert_eq!(files_in(cache.path()), before);

    // By default: the stale keys are named and remade for the devnet's shape.
    let mut child = Command::new(env!("CARGO_BIN_EXE_optio"))
        .args(["devnet", "--listen", "127.0.0.1:0", "--duration-s", "60"])
        .env("OPTIO_KEYS_CACHE", cache.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starts");
    let first = BufReader::new(child.stdout.take().expect("stdout"))
        .lines()
        .map_while(Result::ok)
        .next()
        .unwrap_or_default();
    child.kill().expect("stops");
    child.wait().expect("stopped");
    let said = format!(
        "optio devnet: generating the proving keys of circuit {devnet} in {} (those there are unusable: ",
        cache.path().display()
    );
    assert!(first.starts_with(&said), "{first}");
    assert!(
        first.contains(&format!(
            "another circuit version (0; this binary's is {})",
            optio_prover::CIRCUIT_VERSION
        )),
        "{first}"
    );
}
