//! The sequencer's input encoding (every WAL record's body) and the oracle's signed update
//! bytes (`oracle/submit_update`) from arbitrary bytes: decoding never panics, and an input it
//! accepts encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(input) = optio_types::Input::decode(data) {
        assert_eq!(input.encode(), data, "an accepted input is canonical");
    }
    let _ = optio_types::OracleUpdate::decode(data, 100_000, 1_024);
    if data.len() >= 32 {
        let digest: [u8; 32] = data[..32].try_into().expect("32 bytes");
        let _ = optio_intents::recover(&digest, &data[32..]);
    }
});
