//! The shared Poseidon vectors (test-vectors/poseidon.json, the values circomlibjs, light-poseidon
//! and the EVM agree on), and the tree: proofs verify for every leaf, tampered leaves and proofs
//! fail, absence is provable, and the root is independent of insertion order.

use std::str::FromStr;

use optio_state::poseidon::{from_address, from_bytes, from_i64, to_bytes};
use optio_state::{Fr, NodeStore, SparseMerkleTree, hash1, hash2, hash4, sparse_nodes, verify};
use proptest::prelude::*;
use serde_json::Value;

fn fr(s: &str) -> Fr {
    Fr::from_str(s).unwrap_or_else(|_| panic!("decimal field element {s}"))
}

#[test]
fn poseidon_matches_the_shared_vectors() {
    let v: Value =
        serde_json::from_str(include_str!("../../../../test-vectors/poseidon.json")).expect("json");
    for case in v["hashes"].as_array().expect("hashes") {
        let inputs: Vec<Fr> = case["inputs"]
            .as_array()
            .expect("inputs")
            .iter()
            .map(|x| fr(x.as_str().expect("decimal")))
            .collect();
        let got = match inputs.as_slice() {
            [a] => hash1(*a),
            [a, b] => hash2(*a, *b),
            [a, b, c, d] => hash4(*a, *b, *c, *d),
            _ => panic!("unexpected arity"),
        };
        assert_eq!(got, fr(case["output"].as_str().expect("decimal")), "{case}");
    }
}

#[test]
fn encodings_round_trip() {
    assert_eq!(from_i64(-5) + from_i64(5), Fr::from(0u64));
    let b = to_bytes(&from_address(&[0xab; 20]));
    assert_eq!(from_bytes(&b), Some(from_address(&[0xab; 20])));
    assert_eq!(from_bytes(&[0xff; 32]), None, "above the modulus");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn proofs_verify_and_tampering_fails(leaves in prop::collection::btree_map(0u64..(1 << 20), 1u64..u64::MAX, 1..24), absent in 0u64..(1 << 20)) {
        let mut tree = SparseMerkleTree::new(20);
        let mut reversed = SparseMerkleTree::new(20);
        for (i, v) in &leaves {
            tree.set(*i, Fr::from(*v)).expect("in range");
        }
        for (i, v) in leaves.iter().rev() {
            reversed.set(*i, Fr::from(*v)).expect("in range");
        }
        prop_assert_eq!(tree.root(), reversed.root());
        let root = tree.root();
        for (i, v) in &leaves {
            let proof = tree.prove(*i).expect("in range");
            prop_assert!(verify(root, Fr::from(*v), &proof));
            prop_assert!(!verify(root, Fr::from(*v) + Fr::from(1u64), &proof), "a tampered leaf fails");
            let mut bad = proof.clone();
            bad.siblings[3] += Fr::from(1u64);
            prop_assert!(!verify(root, Fr::from(*v), &bad), "a tampered proof fails");
        }
        if !leaves.contains_key(&absent) {
            let proof = tree.prove(absent).expect("in range");
            prop_assert!(verify(root, Fr::from(0u64), &proof), "absence is provable");
        }
        // Clearing every leaf returns the empty root.
        for i in leaves.keys() {
            tree.set(*i, Fr::from(0u64)).expect("in range");
        }
        prop_assert_eq!(tree.root(), SparseMerkleTree::new(20).root());
    }

    /// The nodes L1 builds one at a time (`OptioTrees.buildPositions`) are exactly the tree's
    /// non-empty nodes, each after its children, each hashing its children, the last the root.
    #[test]
    fn sparse_nodes_are_the_trees_nodes_bottom_up(leaves in prop::collection::btree_map(0u64..(1 << 20), 1u64..u64::MAX, 1..24)) {
        let mut tree = SparseMerkleTree::new(20);
        for (i, v) in &leaves {
            tree.set(*i, Fr::from(*v)).expect("in range");
        }
        let list: Vec<(u64, Fr)> = leaves.iter().map(|(i, v)| (*i, Fr::from(*v))).collect();
        let nodes = sparse_nodes(20, &list).expect("in range");
        prop_assert_eq!(nodes.last().map(|n| n.hash), Some(tree.root()));
        let stored = tree.store().keys().filter(|(height, _)| *height >= 1).count();
        prop_assert_eq!(nodes.len(), stored, "one node per non-empty node of the tree");
        for (k, n) in nodes.iter().enumerate() {
            prop_assert_eq!(NodeStore::get(tree.store(), n.height, n.index), Some(n.hash));
            prop_assert_eq!(hash4(n.children[0], n.children[1], n.children[2], n.children[3]), n.hash);
            prop_assert!(nodes[..k].iter().all(|m| m.height < n.height || (m.height == n.height && m.index < n.index)), "children first");
        }
    }
}

#[test]
fn out_of_range_indices_are_refused() {
    let mut tree = SparseMerkleTree::new(8);
    assert!(tree.set(256, Fr::from(1u64)).is_err());
    assert!(tree.prove(1 << 9).is_err());
    assert!(sparse_nodes(8, &[(256, Fr::from(1u64))]).is_err());
}

#[test]
fn the_tree_has_four_children_per_node_in_index_order() {
    // 16 leaves, two levels, written out by hand: the convention the circuit and Solidity share.
    let leaves: Vec<Fr> = (0..16u64).map(|i| Fr::from(i * i + 3)).collect();
    let mut tree = SparseMerkleTree::new(4);
    let mut many = SparseMerkleTree::new(4);
    for (i, v) in leaves.iter().enumerate() {
        tree.set(i as u64, *v).expect("in range");
    }
    let updates: Vec<(u64, Fr)> = leaves
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u64, *v))
        .collect();
    many.set_many(&updates).expect("in range");
    let node = |k: usize| {
        hash4(
            leaves[4 * k],
            leaves[4 * k + 1],
            leaves[4 * k + 2],
            leaves[4 * k + 3],
        )
    };
    let root = hash4(node(0), node(1), node(2), node(3));
    assert_eq!(tree.root(), root);
    assert_eq!(many.root(), root);
    // Leaf 6 sits in slot 2 of node 1, node 1 in slot 1: siblings in slot order per level.
    let proof = tree.prove(6).expect("in range");
    assert_eq!(
        proof.siblings,
        vec![leaves[4], leaves[5], leaves[7], node(0), node(2), node(3)]
    );
    // An empty subtree of height 1 is H(0, 0, 0, 0).
    let z1 = hash4(
        Fr::from(0u64),
        Fr::from(0u64),
        Fr::from(0u64),
        Fr::from(0u64),
    );
    assert_eq!(SparseMerkleTree::new(2).root(), z1);
    assert_eq!(optio_state::smt::empty_root(4), hash4(z1, z1, z1, z1));
    // An odd number of index bits is no arity-4 tree.
    assert!(std::panic::catch_unwind(|| SparseMerkleTree::new(5)).is_err());
}
