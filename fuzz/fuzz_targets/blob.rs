//! A settlement data blob of arbitrary bytes: decoding never panics, and a blob it accepts is
//! canonical (encoding what it decoded gives the same bytes back), and applying it to a state
//! either applies all of it or nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((meta, ops)) = optio_state::decode(data) else {
        return;
    };
    assert_eq!(
        optio_state::encode(&meta, &ops),
        data,
        "an accepted blob is canonical"
    );
    let mut state = optio_state::SettlementState::new();
    let before = state.root();
    if state.apply_batch(&ops).is_err() {
        assert_eq!(state.commit(), before, "a refused batch changes nothing");
    }
});
