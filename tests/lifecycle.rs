//! Starting, stopping, and the command line.

mod common;

use std::process::Command;

#[tokio::test]
async fn sigterm_stops_the_server_cleanly() {
    let mut server = common::Server::start();
    let c = server.connect().await;
    common::exec(&c, "CREATE TABLE t (k int); INSERT INTO t VALUES (1)").await;
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn help_documents_every_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["start", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--pg-addr", "--workers", "--state", "--log-format"] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["start", "--pg-addr", &addr.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("cannot listen on {addr}")));
}

#[test]
fn an_unusable_state_location_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "start",
            "--pg-addr",
            "127.0.0.1:0",
            "--state",
            "ftp://example.com/x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid state location \"ftp://example.com/x\"")
            && stderr.contains("file:// or s3://"),
        "{stderr}"
    );
}
