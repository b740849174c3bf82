//! A Java application's view: the PostgreSQL JDBC driver against the real
//! server (prepared statements, typed results, SQLSTATEs, autocommit off).

mod common;

const JAR: &str = "/usr/share/java/postgresql.jar";

#[test]
fn jdbc_works() {
    assert!(
        std::path::Path::new(JAR).exists(),
        "{JAR} missing: scripts/test installs libpostgresql-jdbc-java"
    );
    let server = common::Server::start();
    let url = format!("jdbc:postgresql://127.0.0.1:{}/weir", server.port);
    let program = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/java/JdbcSmoke.java");
    common::run_client("java", &["-cp", JAR, program, &url]);
}
