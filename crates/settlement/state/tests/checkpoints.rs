//! Checkpoints and pruning of a batches directory: a checkpoint rebuilds exactly the state it
//! was taken of and continues like it; a damaged one is refused; pruning leaves a directory
//! that a walk can start over at every step, and the walk ends at the batcher's root.

use std::path::Path;

use optio_state::checkpoint::{self, CheckpointError, Start};
use optio_state::{Batch, SettlementState, decode, rebuild_after};
use optio_types::AccountId;

mod support;

use support::{history, run};

/// Writes each batch's blob and the files a node and its provers put beside it.
fn write_dir(dir: &Path, batches: &[Batch]) {
    for b in batches {
        let stem = dir.join(format!("{:08}", b.header.number));
        std::fs::write(stem.with_extension("blob"), &b.blob).expect("writes");
        for ext in ["json", "auth", "orders", "proof.json", "claim"] {
            std::fs::write(stem.with_extension(ext), b"x").expect("writes");
        }
    }
}

/// The state after each batch, from genesis, in memory.
fn states(batches: &[Batch]) -> Vec<SettlementState> {
    let mut state = SettlementState::new();
    let mut out = Vec::new();
    for b in batches {
        state
            .apply_batch(&decode(&b.blob).expect("decodes").1)
            .expect("applies");
        state.commit();
        out.push(state.clone());
    }
    out
}

/// Walks `dir` from where `start` says to its last blob; the state and the last batch.
fn walk(dir: &Path) -> (SettlementState, u64) {
    let Start { after, blobs } = checkpoint::start(dir).expect("a start");
    let (mut state, last_seq) = checkpoint::open(dir, after).expect("opens");
    let bytes: Vec<Vec<u8>> = blobs
        .iter()
        .map(|(_, p)| std::fs::read(p).expect("reads"))
        .collect();
    let (number, _) = rebuild_after(
        bytes.iter().map(Vec::as_slice),
        &mut state,
        (after, last_seq),
        |_| {},
    )
    .expect("the blobs after the start apply");
    (state, number)
}

#[test]
fn a_checkpoint_rebuilds_the_state_it_was_taken_of_and_continues_like_it() {
    let (batches, _, batcher) = run(&history(5, 500), 15);
    assert!(batches.len() >= 8, "{} batches", batches.len());
    let states = states(&batches);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut checked = 0;
    for (i, state) in states.iter().enumerate() {
        let number = i as u64 + 1;
        let header = &batches[i].header;
        checkpoint::write(dir.path(), state, number, header.last_seq).expect("writes");
        let (mut opened, last_seq) = checkpoint::open(dir.path(), number).expect("opens");
        assert_eq!(last_seq, header.last_seq);
        assert_eq!(opened.root(), header.new_root, "batch {number}");
        assert_eq!(opened.funds(), state.funds());
        assert_eq!(opened.oracle_ms(), state.oracle_ms());
        assert_eq!(opened.priority_served(), state.priority_served());
        for a in 0..state.accounts().len() as u32 {
            assert_eq!(
                opened.exit_proof(AccountId(a)),
                state.exit_proof(AccountId(a)),
                "batch {number}, account {a}"
            );
            checked += usize::from(!state.accounts()[a as usize].positions.is_empty());
        }
        // It continues exactly as the state it was taken of.
        for b in &batches[i + 1..] {
            opened
                .apply_batch(&decode(&b.blob).expect("decodes").1)
                .expect("applies");
            assert_eq!(
                opened.commit(),
                b.header.new_root,
                "batch {}",
                b.header.number
            );
        }
        assert_eq!(opened.root(), batcher.state().root());
    }
    assert!(checked > 0, "no checkpoint held an account with positions");
}

#[test]
fn a_damaged_checkpoint_or_one_under_another_number_is_refused() {
    let (batches, _, _) = run(&history(6, 300), 15);
    let states = states(&batches);
    let dir = tempfile::tempdir().expect("temp dir");
    let n = batches.len() as u64 - 1;
    let state = &states[n as usize - 1];
    checkpoint::write(
        dir.path(),
        state,
        n,
        batches[n as usize - 1].header.last_seq,
    )
    .expect("writes");
    let good = std::fs::read(checkpoint::path(dir.path(), n)).expect("reads");
    // A byte flipped anywhere (every seventh, and the last), truncations, a byte more: each
    // refused.
    let refused = |bytes: &[u8]| {
        std::fs::write(checkpoint::path(dir.path(), n), bytes).expect("writes");
        matches!(
            checkpoint::open(dir.path(), n),
            Err(CheckpointError::Corrupt { .. })
        )
    };
    for at in (0..good.len()).step_by(7).chain([good.len() - 1]) {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        assert!(
            refused(&bad),
            "a flipped byte at {at} of {} was taken",
            good.len()
        );
    }
    for len in [0, 7, 39, 60, good.len() - 1] {
        assert!(refused(&good[..len]), "{len} bytes were taken");
    }
    let mut longer = good.clone();
    longer.push(0);
    assert!(refused(&longer), "a trailing byte was taken");
    // The right bytes under another batch's name.
    std::fs::write(checkpoint::path(dir.path(), n + 1), &good).expect("writes");
    assert!(matches!(
        checkpoint::open(dir.path(), n + 1),
        Err(CheckpointError::Corrupt { .. })
    ));
    std::fs::write(checkpoint::path(dir.path(), n), &good).expect("writes");
    assert_eq!(
        checkpoint::open(dir.path(), n).expect("opens").0.root(),
        state.root()
    );
    // Format 1 (the records alone, written before checkpoints carried the batcher's signed
    // orders: a state in memory carries none, two empty lists) still opens; a state file is not
    // made from it, and nothing is created.
    let body = &good[8..good.len() - 32 - 8];
    let mut first = b"OPTIOCK1".to_vec();
    first.extend_from_slice(body);
    let sum: [u8; 32] = {
        use sha3::Digest;
        sha3::Keccak256::digest(&first).into()
    };
    first.extend_from_slice(&sum);
    std::fs::write(checkpoint::path(dir.path(), n), &first).expect("writes");
    assert_eq!(
        checkpoint::open(dir.path(), n).expect("opens").0.root(),
        state.root()
    );
    let file = dir.path().join("state.redb");
    let Err(err) = checkpoint::restore(dir.path(), n, &file) else {
        panic!("refused")
    };
    assert!(err.to_string().contains("format 1"), "{err}");
    assert!(!file.exists());
}

#[test]
fn pruning_leaves_a_directory_a_walk_starts_over_at_every_step() {
    let (batches, _, batcher) = run(&history(7, 500), 12);
    let total = batches.len() as u64;
    assert!(total >= 10, "{total} batches");
    let states = states(&batches);
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    write_dir(d, &batches);
    let end = (batcher.state().root(), total);
    let walked = |d: &Path| {
        let (state, number) = walk(d);
        (state.root(), number)
    };
    // No checkpoint yet: from genesis.
    assert_eq!(checkpoint::start(d).expect("starts").after, 0);
    assert_eq!(walked(d), end);
    let (c1, c2) = (4, 8);
    for c in [c1, c2] {
        let seq = batches[c as usize - 1].header.last_seq;
        checkpoint::write(d, &states[c as usize - 1], c, seq).expect("writes");
    }
    // Batch 1's blob is there: still from genesis.
    assert_eq!(checkpoint::start(d).expect("starts").after, 0);
    // Pruning to a batch without a checkpoint deletes nothing.
    let files = std::fs::read_dir(d).expect("lists").count();
    assert!(checkpoint::prune(d, 6).is_err());
    assert_eq!(std::fs::read_dir(d).expect("lists").count(), files);
    // Every moment of a prune to c2, one file at a time in its order: blob, then the files
    // beside it, batch by batch; the older checkpoint last.
    for n in 1..=c2 {
        let stem = d.join(format!("{n:08}"));
        std::fs::remove_file(stem.with_extension("blob")).expect("removes");
        let start = checkpoint::start(d).expect("a start mid-prune");
        assert_eq!(
            start.after,
            if n <= c1 { c1 } else { c2 },
            "blobs from {}",
            n + 1
        );
        assert_eq!(walked(d), end, "blobs from {}", n + 1);
        for ext in ["json", "auth", "orders", "proof.json", "claim"] {
            std::fs::remove_file(stem.with_extension(ext)).expect("removes");
        }
    }
    // What the prune itself does from there (the older checkpoint), and that it is the end.
    assert_eq!(checkpoint::prune(d, c2).expect("prunes").files, 1);
    assert_eq!(checkpoint::checkpoints(d).expect("lists"), vec![c2]);
    assert_eq!(checkpoint::start(d).expect("starts").after, c2);
    assert_eq!(walked(d), end);
    // Pruning again to a later checkpoint, in calls of at most 3 batches each (`prune_some`,
    // as the node does a long history), the checkpoint in between too: each call goes 3
    // batches further and leaves a directory the walk starts over.
    let c3 = total - 1;
    let between = c2 + 2;
    for c in [between, c3] {
        checkpoint::write(
            d,
            &states[c as usize - 1],
            c,
            batches[c as usize - 1].header.last_seq,
        )
        .expect("writes");
    }
    let mut removed = checkpoint::Pruned::default();
    let mut reached = c2;
    while reached < c3 {
        let p = checkpoint::prune_some(d, c3, 3).expect("prunes");
        assert_eq!(p.reached, (reached + 3).min(c3), "after {reached}");
        reached = p.reached;
        assert_eq!(walked(d), end, "pruned to {reached}");
        removed.files += p.files;
        removed.proofs += p.proofs;
        removed.unprovable += p.unprovable;
        removed.reached = p.reached;
    }
    assert_eq!(
        removed,
        checkpoint::Pruned {
            files: (c3 - c2) as usize * 6 + 2,
            proofs: c3 - c2,
            unprovable: 0,
            reached: c3,
        }
    );
    let left: Vec<String> = {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .expect("lists")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let last = format!("{total:08}");
    let mut expected = vec![format!("{c3:08}.checkpoint")];
    expected.extend(
        ["auth", "blob", "claim", "json", "orders", "proof.json"].map(|x| format!("{last}.{x}")),
    );
    expected.sort();
    assert_eq!(left, expected);
    assert_eq!(walked(d), end);
    // A gap no checkpoint covers is an error that names it.
    std::fs::remove_file(checkpoint::path(d, c3)).expect("removes");
    let err = checkpoint::start(d).expect_err("uncovered");
    assert!(
        matches!(err, CheckpointError::Uncovered { first, .. } if first == total),
        "{err}"
    );
}
