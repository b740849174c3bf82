//! The README's psql walkthrough, pasted into the real psql client.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

/// The first ```sql block of the README after `heading`.
fn walkthrough(heading: &str) -> String {
    let readme = include_str!("../README.md");
    let start = readme.find(heading).expect("walkthrough heading");
    let rest = &readme[start..];
    let block = rest.find("```sql\n").expect("sql block") + "```sql\n".len();
    let end = rest[block..].find("```").expect("end of block");
    rest[block..block + end].to_string()
}

/// Paste `sql` into psql against a fresh server; its output.
fn paste(sql: &str) -> String {
    let server = common::Server::start();
    let mut psql = Command::new("psql")
        .args([&server.url(), "-X", "-v", "ON_ERROR_STOP=1", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql is installed");
    psql.stdin.take().unwrap().write_all(sql.as_bytes()).unwrap();
    let out = psql.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "psql failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn readme_walkthrough_runs_in_psql() {
    let stdout = paste(&walkthrough("## Five minutes with psql"));
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

#[test]
fn readme_load_generator_walkthrough_runs_in_psql() {
    let stdout = paste(&walkthrough("## Live data without any other system"));
    // A second of bids at 1,000 events/s: the hottest auctions are there,
    // and the source reports what it emitted.
    assert!(stdout.contains("(5 rows)"), "{stdout}");
    assert!(
        stdout.contains(" auction_house | load-generator NEXMARK | running |"),
        "{stdout}"
    );
    assert!(stdout.contains("DROP SOURCE"), "{stdout}");
}
