//! A node snapshot file of arbitrary bytes (engine and the gateway's views) beside an empty log:
//! opening the node never panics; it refuses the snapshot, or it opens on a state whose engine
//! invariants hold (a restored engine is audited in full) and whose views answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use optio_gateway::{Config, Gateway};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("snapshot.bin"), data).expect("writes");
    let config = Config {
        snapshot_every: 0,
        ..Config::default()
    };
    let Ok(g) = Gateway::open(
        dir.path(),
        [9; 32],
        optio_types::EngineLimits::default(),
        config,
    ) else {
        return;
    };
    g.check_invariants()
        .expect("a snapshot the node accepted holds its invariants");
    for method in ["public/get_instruments", "public/get_time"] {
        let _ = g.call(method, &serde_json::json!({}), &Default::default());
    }
});
