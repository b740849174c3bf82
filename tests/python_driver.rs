//! A Python application's view: psycopg 3 against the real server.

mod common;

use std::process::Command;

#[test]
fn psycopg_works() {
    let available = Command::new("python3")
        .args(["-c", "import psycopg"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        available,
        "psycopg is missing: scripts/test installs it (pip install 'psycopg[binary]')"
    );
    let server = common::Server::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/driver.py");
    common::run_client("python3", &[script, &server.url()]);
}
