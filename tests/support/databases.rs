//! Fresh databases for tests: SQLite in a temp dir always, PostgreSQL and MariaDB on the local
//! servers when `TEST_POSTGRES_URL` / `TEST_MYSQL_URL` are set (scripts/test-databases sets them).
//! With `CI` set, a missing server URL fails the test instead of skipping it. Each database is
//! removed again when its `TestDatabase` is dropped.

#![allow(dead_code)]

use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;

use octopus::util::{hex, os_random_bytes};

/// A database a gateway or store can be pointed at: (type, path or URL).
pub struct TestDatabase {
    pub database_type: &'static str,
    pub path: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Directory(PathBuf),
    /// The caller owns the file and removes it.
    Nothing,
    ServerDatabase { admin_url: String, name: String },
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Directory(directory) => {
                let _ = std::fs::remove_dir_all(directory);
            }
            Cleanup::Nothing => {}
            Cleanup::ServerDatabase { admin_url, name } => {
                // FORCE ends connections a pool thread may still be closing.
                let statement = match self.database_type {
                    "postgres" => format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                    _ => format!("DROP DATABASE IF EXISTS {name}"),
                };
                if !std::thread::panicking() {
                    run_admin_statement(self.database_type, admin_url, &statement);
                } else {
                    // Do not turn a failing test into a double panic; leave the database behind.
                    let _ = panic::catch_unwind(AssertUnwindSafe(|| {
                        run_admin_statement(self.database_type, admin_url, &statement)
                    }));
                }
            }
        }
    }
}

/// `prefix_<pid>_<random>`: valid as a file name and as an unquoted database name.
pub fn unique_name(prefix: &str) -> String {
    let mut random = [0u8; 5];
    os_random_bytes(&mut random);
    format!("{prefix}_{}_{}", std::process::id(), hex(&random))
}

/// A new, empty directory under the system temp dir.
pub fn temp_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name(&format!("octopus-test-{label}")));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Replaces the database (path) part of a server URL, keeping any `?query`.
pub fn url_with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.find('?') {
        Some(index) => url.split_at(index),
        None => (url, ""),
    };
    let authority_start = base.find("://").map(|index| index + 3).unwrap_or(0);
    let path_start = base[authority_start..].find('/').map(|index| authority_start + index).unwrap_or(base.len());
    format!("{}/{database}{query}", &base[..path_start])
}

/// The admin URL of the `postgres` or `mysql` test server, or None (after a loud notice) when
/// it is unset outside CI.
pub fn server_admin_url(database_type: &str) -> Option<String> {
    let (variable, server, compiled_in) = match database_type {
        "postgres" => ("TEST_POSTGRES_URL", "PostgreSQL", cfg!(feature = "postgres")),
        _ => ("TEST_MYSQL_URL", "MySQL/MariaDB", cfg!(feature = "mysql")),
    };
    if !compiled_in {
        // A build without this server's client (the router build's `--features sqlite`) cannot
        // use it, whatever the environment says.
        eprintln!("NOTICE: this build has no {server} client (feature off), so this {server} test did NOT run.");
        return None;
    }
    match std::env::var(variable) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if running_in_ci() => panic!(
            "{variable} is not set: {server} is required when CI is set (run through scripts/test, or eval \"$(scripts/test-databases)\" first)"
        ),
        _ => {
            eprintln!(
                "\n********************************************************************************\n\
                 NOTICE: {variable} is not set, so this {server} test did NOT run.\n\
                 Run eval \"$(scripts/test-databases)\" to test against {server}.\n\
                 ********************************************************************************\n"
            );
            None
        }
    }
}

fn running_in_ci() -> bool {
    matches!(std::env::var("CI"), Ok(value) if !value.is_empty() && value != "false" && value != "0")
}

fn run_admin_statement(database_type: &str, admin_url: &str, statement: &str) {
    match database_type {
        #[cfg(feature = "postgres")]
        "postgres" => {
            let mut client = octopus::store::postgres_client::connect(admin_url)
                .unwrap_or_else(|error| panic!("cannot reach PostgreSQL through TEST_POSTGRES_URL: {error}"));
            client.batch_execute(statement).unwrap_or_else(|error| panic!("{statement}: {error}"));
        }
        #[cfg(feature = "mysql")]
        "mysql" => {
            let mut connection = octopus::store::mysql_client::connect(admin_url)
                .unwrap_or_else(|error| panic!("cannot reach MySQL through TEST_MYSQL_URL: {error}"));
            connection.query_drop(statement).unwrap_or_else(|error| panic!("{statement}: {error}"));
        }
        // server_admin_url gives no URL for a server this build has no client for.
        other => unreachable!("no {other} client in this build, so no {other} test database: {admin_url} {statement}"),
    }
}

pub fn sqlite() -> TestDatabase {
    let dir = temp_dir("sqlite");
    TestDatabase { database_type: "sqlite", path: dir.join("data.db").display().to_string(), cleanup: Cleanup::Directory(dir) }
}

/// SQLite at a path the caller owns and cleans up (e.g. on a file system mounted for the test).
pub fn sqlite_at(path: String) -> TestDatabase {
    TestDatabase { database_type: "sqlite", path, cleanup: Cleanup::Nothing }
}

fn server_database(database_type: &'static str) -> Option<TestDatabase> {
    let admin_url = server_admin_url(database_type)?;
    let name = unique_name("octopus_test");
    run_admin_statement(database_type, &admin_url, &format!("CREATE DATABASE {name}"));
    Some(TestDatabase {
        database_type,
        path: url_with_database(&admin_url, &name),
        cleanup: Cleanup::ServerDatabase { admin_url, name },
    })
}

pub fn postgres() -> Option<TestDatabase> {
    server_database("postgres")
}

pub fn mysql() -> Option<TestDatabase> {
    server_database("mysql")
}

/// SQLite always, plus whichever servers are configured.
pub fn all() -> Vec<TestDatabase> {
    let mut databases = vec![sqlite()];
    databases.extend(postgres());
    databases.extend(mysql());
    databases
}

impl TestDatabase {
    /// Ends every server connection to this database from the outside, as a server restart
    /// would (the server itself stays up, so other tests are not disturbed).
    pub fn cut_connections(&self) {
        let Cleanup::ServerDatabase { admin_url, name } = &self.cleanup else { return };
        if self.database_type == "postgres" {
            run_admin_statement(
                "postgres",
                admin_url,
                &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"),
            );
        } else {
            #[cfg(feature = "mysql")]
            {
                let mut connection = octopus::store::mysql_client::connect(admin_url).expect("reach MySQL");
                let ids: Vec<i64> = connection
                    .query(format!("SELECT id FROM information_schema.processlist WHERE db = '{name}' AND id <> CONNECTION_ID()"))
                    .expect("list connections");
                for id in ids {
                    let _ = connection.query_drop(format!("KILL {id}"));
                }
            }
        }
    }
}
