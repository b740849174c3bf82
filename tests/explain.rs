//! Golden plans: `EXPLAIN` of representative queries, pinned in
//! `tests/explain/plans.txt`. Run with `REWRITE=1` to regenerate, then
//! review the diff.

mod common;

use common::{exec, rows};

#[tokio::test]
async fn plans_match_golden_file() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/explain/plans.txt");
    let golden = std::fs::read_to_string(path).unwrap();
    let server = common::Server::start();
    let c = server.connect().await;
    exec(&c, include_str!("explain/schema.sql")).await;
    let mut rewritten = String::new();
    let mut mismatches = Vec::new();
    for case in golden.split("\n\n").filter(|c| !c.trim().is_empty()) {
        let (head, expected) = case
            .split_once("----\n")
            .unwrap_or((case.trim_end_matches("----"), ""));
        let query: String = head
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        let actual: String = rows(&c, &format!("EXPLAIN {query}"))
            .await
            .into_iter()
            .map(|r| r[0].clone().unwrap_or_default() + "\n")
            .collect();
        if actual.trim_end() != expected.trim_end() {
            mismatches.push(format!("{query}\n--- expected\n{expected}\n--- actual\n{actual}"));
        }
        rewritten.push_str(&format!(
            "{}\n----\n{}\n\n",
            head.trim_end_matches("----").trim_end(),
            actual.trim_end()
        ));
    }
    if std::env::var("REWRITE").is_ok() {
        std::fs::write(path, rewritten.trim_end().to_string() + "\n").unwrap();
        return;
    }
    assert!(
        mismatches.is_empty(),
        "plans changed (REWRITE=1 to accept):\n{}",
        mismatches.join("\n\n")
    );
}
