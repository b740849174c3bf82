//! The README's psql walkthrough, pasted into the real psql client.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

/// The first ```sql block of the README after the "Five minutes" heading.
fn walkthrough() -> String {
    let readme = include_str!("../README.md");
    let start = readme
        .find("## Five minutes with psql")
        .expect("walkthrough heading");
    let rest = &readme[start..];
    let block = rest.find("```sql\n").expect("sql block") + "```sql\n".len();
    let end = rest[block..].find("```").expect("end of block");
    rest[block..block + end].to_string()
}

#[test]
fn readme_walkthrough_runs_in_psql() {
    let server = common::Server::start();
    let mut psql = Command::new("psql")
        .args([&server.url(), "-X", "-v", "ON_ERROR_STOP=1", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql is installed");
    psql.stdin
        .take()
        .unwrap()
        .write_all(walkthrough().as_bytes())
        .unwrap();
    let out = psql.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "psql failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The view before and after the writes, as the README promises.
    assert!(
        stdout.contains(" east   |      3 |  137.24 |   99.99"),
        "{stdout}"
    );
    assert!(
        stdout.contains(" east   |      2 |   37.25 |   25.00"),
        "{stdout}"
    );
    assert!(
        stdout.contains(" west   |      2 |  104.99 |   99.99"),
        "{stdout}"
    );
    assert!(stdout.contains("Reduce"), "{stdout}");
}
