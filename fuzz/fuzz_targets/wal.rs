//! A write-ahead log of one segment file of arbitrary bytes: opening it never panics; it either refuses the
//! file or returns consecutive records from 1, and reopening after its truncation of a torn
//! tail returns the same records.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("wal.log");
    std::fs::write(&path, data).expect("writes");
    let Ok((_, records)) = optio_sequencer::Wal::open(dir.path()) else {
        return;
    };
    for (i, (seq, _, _)) in records.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1, "records are consecutive from 1");
    }
    let (_, again) = optio_sequencer::Wal::open(dir.path()).expect("a log it accepted reopens");
    assert_eq!(
        again.len(),
        records.len(),
        "reopening returns the same records"
    );
});
