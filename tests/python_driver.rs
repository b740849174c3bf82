//! A Python application's view: psycopg 3 against the real server.

mod common;

use std::process::Command;

#[test]
fn psycopg_works() {
    let available = Command::new("python3")
        .args(["-c", "import psycopg"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        available,
        "psycopg is missing: scripts/test installs it (pip install 'psycopg[binary]')"
    );
    let server = common::Server::start();
    let out = Command::new("python3")
        .args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/driver.py"),
            &server.url(),
        ])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "ok");
}
