//! The node's HTTP API from outside: arbitrary bodies POSTed to the JSON-RPC endpoint, the
//! method-in-path endpoint and the Derive-compatible routes of one long-lived node (state
//! carries over between inputs). Nothing may panic, and every answer is JSON.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::Request;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

struct Node {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    _dir: tempfile::TempDir,
}

fn node() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let sequencer = optio_sequencer::Sequencer::open(
            dir.path(),
            [0x42; 32],
            optio_types::EngineLimits::default(),
        )
        .expect("sequencer");
        let gateway = Arc::new(optio_gateway::Gateway::new(
            sequencer,
            optio_gateway::Config::default(),
        ));
        gateway
            .fund([0x11; 20], optio_types::Amount(1_000_000_000_000))
            .expect("funds");
        Node {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            router: optio_gateway::router(gateway),
            _dir: dir,
        }
    })
}

const PATHS: [&str; 6] = [
    "/api/v2",
    "/api/v2/private/order",
    "/api/v2/public/get_order_book",
    "/private/order",
    "/public/get_ticker",
    "/api/v2/oracle/submit_update",
];

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let node = node();
    let request = Request::post(PATHS[usize::from(which) % PATHS.len()])
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
        .expect("request");
    let response = node
        .runtime
        .block_on(node.router.clone().oneshot(request))
        .expect("infallible");
    let bytes = node
        .runtime
        .block_on(axum::body::to_bytes(response.into_body(), 1 << 24))
        .expect("body");
    assert!(
        bytes.is_empty() || std::str::from_utf8(&bytes).is_ok(),
        "a non-UTF-8 answer"
    );
});
