//! Packet captures for the transit tests: `tcpdump` on every interface of a network namespace,
//! and a search of the capture for plaintext keys.

use std::collections::{BTreeSet, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `tcpdump` in a namespace, writing a pcap file.
pub(crate) struct Capture {
    child: Child,
    file: PathBuf,
    /// Drains tcpdump's stderr (a closed pipe would kill it with SIGPIPE); gives the text.
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Capture {
    /// Starts capturing everything on every interface of `ns` into `file`, and returns once
    /// tcpdump reports that it listens. Panics if tcpdump is missing (CI installs it).
    pub(crate) fn start(ns: &str, file: &Path) -> Capture {
        assert!(
            Command::new("tcpdump").arg("--version").output().is_ok(),
            "tcpdump is needed for the capture (apt-get install tcpdump)"
        );
        let mut child = Command::new("ip")
            .args([
                "netns", "exec", ns, "tcpdump", "-i", "any", "-s", "0", "-U", "-w",
            ])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = child.stderr.take().unwrap();
        let mut seen = Vec::new();
        let mut b = [0u8; 256];
        let t0 = Instant::now();
        while !String::from_utf8_lossy(&seen).contains("listening on") {
            let n = err.read(&mut b).unwrap_or(0);
            assert!(
                n > 0 && t0.elapsed() < Duration::from_secs(10),
                "tcpdump did not start: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&b[..n]);
        }
        let stderr = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = err.read_to_string(&mut rest);
            String::from_utf8_lossy(&seen).into_owned() + &rest
        });
        Capture {
            child,
            file: file.to_owned(),
            stderr: Some(stderr),
        }
    }

    /// Stops tcpdump (SIGTERM, so it flushes) and returns the capture.
    pub(crate) fn stop(mut self) -> Vec<u8> {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        if let Some(t) = self.stderr.take() {
            println!("tcpdump: {}", t.join().unwrap_or_default().trim());
        }
        std::fs::read(&self.file).unwrap()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The keys (ASCII digit strings) that occur anywhere in `hay`: every run of digits is cut into
/// windows of each key length and looked up, so a key inside a longer run is found too.
pub(crate) fn digit_windows_in(hay: &[u8], keys: &HashSet<&str>) -> Vec<String> {
    let lens: BTreeSet<usize> = keys.iter().map(|k| k.len()).collect();
    let mut found = Vec::new();
    for run in hay.split(|b| !b.is_ascii_digit()) {
        for &l in &lens {
            for w in run.windows(l) {
                let w = std::str::from_utf8(w).unwrap_or_default();
                if keys.contains(w) {
                    found.push(w.to_owned());
                }
            }
        }
    }
    found
}

/// Asserts that none of `keys` (digit strings of at least 12 characters) appears in the
/// capture, after checking that the search finds a key planted in binary bytes and that the
/// capture is large enough to have carried the job (`min_bytes`).
pub(crate) fn assert_no_plaintext(
    capture: &[u8],
    keys: &HashSet<&str>,
    min_bytes: usize,
    at: &str,
) {
    assert!(
        keys.iter()
            .all(|k| k.len() >= 12 && k.bytes().all(|b| b.is_ascii_digit())),
        "keys must be digit strings of 12+ characters for a meaningful search"
    );
    let probe = *keys.iter().next().expect("keys");
    let mut planted = b"\x00\x17,9".to_vec();
    planted.extend_from_slice(probe.as_bytes());
    planted.extend_from_slice(b"7\xff");
    assert_eq!(digit_windows_in(&planted, keys), vec![probe.to_owned()]);
    assert!(
        capture.len() > min_bytes,
        "the capture at {at} holds only {} bytes: did the traffic pass there?",
        capture.len()
    );
    let found = digit_windows_in(capture, keys);
    assert!(
        found.is_empty(),
        "{at}'s interfaces carried {} plaintext keys, e.g. {:?}",
        found.len(),
        &found[..found.len().min(3)]
    );
    println!(
        "capture at {at}: {} bytes, none of {} keys in plaintext",
        capture.len(),
        keys.len()
    );
}
