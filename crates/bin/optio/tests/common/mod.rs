//! HTTP helpers shared by the binary's process-level tests (plain sockets, no client library).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// POSTs a JSON body to `/api/v2` and parses the JSON reply; `None` if the node is gone.
pub fn post(addr: &str, body: &str) -> Option<serde_json::Value> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "POST /api/v2 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.split("\r\n\r\n").nth(1)?).ok()
}

/// GETs a path and returns the body as text.
pub fn get_text(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

/// GETs a path and parses the JSON reply.
pub fn get(addr: &str, path: &str) -> Option<serde_json::Value> {
    serde_json::from_str(&get_text(addr, path)?).ok()
}

/// The API address (`127.0.0.1:port`) a starting devnet or node prints on its `JSON-RPC` line.
pub fn api_url(lines: impl Iterator<Item = String>) -> Option<String> {
    lines.into_iter().find_map(|l| {
        l.trim()
            .strip_prefix("JSON-RPC  http://")
            .map(|u| u.trim_end_matches("/api/v2").to_owned())
    })
}

/// The embedded chain's URL and the rollup's address, from the `L1 chain` line a starting
/// devnet prints.
pub fn chain_of(lines: impl Iterator<Item = String>) -> Option<(String, String)> {
    let line = lines
        .into_iter()
        .find(|l| l.contains("L1 chain  http://127.0.0.1:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let rollup = words[words.iter().position(|w| *w == "rollup")? + 1];
    Some((words.get(2)?.to_string(), rollup.to_owned()))
}
