//! Inputs the fuzzers found (`fuzz/`, see DEVELOPERS.md), kept so the bugs stay fixed: every
//! blob in `tests/fuzz-regressions/` decodes or is refused, without a panic, and one that
//! decodes is canonical.

#[test]
fn fuzzer_findings_are_refused_without_a_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("the regressions directory") {
        let path = entry.expect("an entry").path();
        let bytes = std::fs::read(&path).expect("reads");
        // blob-non-ascii-instrument-name.bin: a listed instrument whose name had a multi-byte
        // character where the expiry date goes; the name parser cut it mid-character.
        if let Ok((meta, ops)) = optio_state::decode(&bytes) {
            assert_eq!(
                optio_state::encode(&meta, &ops).expect("decoded ops encode"),
                bytes,
                "{}: accepted, so canonical",
                path.display()
            );
        }
        seen += 1;
    }
    assert!(seen >= 1, "no regression inputs in {}", dir.display());
}
