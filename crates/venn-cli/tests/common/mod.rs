//! Helpers shared by the end-to-end tests (`mod common;` in each test crate). Each test crate
//! uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

pub(crate) mod capture;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

/// The `venn` binary under test.
pub(crate) fn venn_bin() -> &'static str {
    env!("CARGO_BIN_EXE_venn")
}

/// A loopback port free at the time of asking.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The stdout of a command that must have succeeded (else both streams in the panic).
pub(crate) fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `ip` with `args`; true on success.
pub(crate) fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether network namespaces can be tried: root and an `ip` command.
pub(crate) fn can_use_netns() -> bool {
    let is_root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    is_root && ip(&["-V"])
}

/// A CSV file's header and its data rows.
pub(crate) fn csv_rows(path: &Path) -> (String, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines().map(str::to_owned);
    let header = lines.next().unwrap_or_default();
    (header, lines.collect())
}

/// A CSV file's data rows (without the header).
pub(crate) fn rows_of(path: &Path) -> Vec<String> {
    csv_rows(path).1
}

/// The first column of a row (the key in these tests).
pub(crate) fn key(row: &str) -> &str {
    row.split(',').next().unwrap_or_default()
}

/// The naive inner join: each of `own`'s rows whose key `other` has, repeated by `other`'s
/// count of that key, sorted.
pub(crate) fn naive(own: &[String], other: &[String]) -> Vec<String> {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for r in other {
        *count.entry(key(r)).or_default() += 1;
    }
    let mut out: Vec<String> = own
        .iter()
        .flat_map(|r| std::iter::repeat_n(r.clone(), count.get(key(r)).copied().unwrap_or(0)))
        .collect();
    out.sort();
    out
}
