//! `optio node --config`: the file lists instruments, the environment supplies the sequencer key
//! and overrides the file's address, flags win over both; bad configuration fails clearly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

mod common;

fn post(addr: &str, body: &str) -> serde_json::Value {
    common::post(addr, body).expect("the node answers")
}

#[test]
fn node_reads_file_environment_and_flags() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("optio.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:1\"\ndata = \"{}\"\nchain_id = 8453\ncompat_domain = \"off\"\n\n[[instrument]]\nname = \"BTC-PERPETUAL\"\nunderlying_cap = \"400000\"\n\n[[instrument]]\nname = \"ETH-26MAR27-4000-C\"\nunderlying_cap = \"20000\"\n",
            dir.path().join("data").display()
        ),
    )
    .expect("write config");
    let mut node = Command::new(env!("CARGO_BIN_EXE_optio"))
        .args(["node", "--config"])
        .arg(&config)
        .args(["--duration-s", "5"])
        .env("OPTIO_SEQUENCER_KEY", format!("0x{}", "11".repeat(32)))
        .env("OPTIO_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .spawn()
        .expect("starts");
    let line = BufReader::new(node.stdout.take().expect("stdout"))
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("optio node on"))
        .expect("serving");
    let addr = line
        .split("http://")
        .nth(1)
        .expect("url")
        .trim_end_matches("/api/v2")
        .to_owned();
    let list = post(
        &addr,
        r#"{"jsonrpc":"2.0","id":1,"method":"public/get_instruments","params":{}}"#,
    );
    let names: Vec<&str> = list["result"]
        .as_array()
        .expect("instruments")
        .iter()
        .filter_map(|i| i["instrument_name"].as_str())
        .collect();
    assert_eq!(names, ["BTC-PERPETUAL", "ETH-26MAR27-4000-C"]);
    assert!(node.wait().expect("exits").success());

    // A data directory the node will not start from: refused with the code first, the files
    // left as they were. Engine rules the binary does not apply, then (the rules restored) a
    // damaged settlement state file.
    let data = dir.path().join("data");
    let refused = |want: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_optio"))
            .args(["node", "--config"])
            .arg(&config)
            .args(["--duration-s", "1"])
            .env("OPTIO_SEQUENCER_KEY", format!("0x{}", "11".repeat(32)))
            .env("OPTIO_LISTEN", "127.0.0.1:0")
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(&format!("start-up refused ({want}): ")),
            "expected {want}, got: {err}"
        );
    };
    let rules = std::fs::read(data.join("rules")).expect("rules");
    std::fs::write(data.join("rules"), "1\n").expect("writes");
    refused("rules_mismatch");
    assert_eq!(std::fs::read(data.join("rules")).expect("rules"), b"1\n");
    std::fs::write(data.join("rules"), &rules).expect("writes");
    let state_file = data.join("batches").join("state.redb");
    let mut damaged = std::fs::read(&state_file).expect("state file");
    let n = damaged.len().min(4096);
    damaged[..n].fill(0x5a);
    std::fs::write(&state_file, &damaged).expect("writes");
    refused("state_file_corrupt");
    assert_eq!(std::fs::read(&state_file).expect("state file"), damaged);

    // Missing key, unknown field, bad instrument, empty log segments: each refused with a
    // message.
    for (body, key, want) in [
        ("data = \"/tmp/x\"\n", None, "sequencer key is required"),
        (
            "data = \"/tmp/x\"\nlisen = \"x\"\n",
            Some("11"),
            "unknown field",
        ),
        (
            "data = \"/tmp/x\"\n[[instrument]]\nname = \"BTC-PERP\"\nunderlying_cap = \"1\"\n",
            Some("11"),
            "instrument BTC-PERP",
        ),
        (
            "data = \"/tmp/x\"\nlog_segment_mb = 0\n",
            Some("11"),
            "log_segment_mb must be at least 1",
        ),
        (
            "data = \"/tmp/x\"\nnonce_window_s = 0\n",
            Some("11"),
            "nonce_window_s must be 1 to 86400",
        ),
    ] {
        std::fs::write(&config, body).expect("write");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_optio"));
        cmd.args(["node", "--config"])
            .arg(&config)
            .env_remove("OPTIO_SEQUENCER_KEY");
        if let Some(k) = key {
            cmd.env("OPTIO_SEQUENCER_KEY", format!("0x{}", k.repeat(32)));
        }
        let out = cmd.output().expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "expected {want:?}, got: {err}"
        );
    }
}
