//! Fresh databases for tests: SQLite in a temp dir always, PostgreSQL and MariaDB on the local
//! servers when `TEST_POSTGRES_URL` / `TEST_MYSQL_URL` are set (scripts/test-databases sets them).
//! With `CI` set, a missing server URL fails the test instead of skipping it.

#![allow(dead_code)]

use std::path::PathBuf;

/// A database a gateway or store can be pointed at: (type, path or URL).
pub struct TestDatabase {
    pub database_type: &'static str,
    pub path: String,
    cleanup: Option<Box<dyn FnOnce() + Send>>,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some(cleanup) = self.cleanup.take() {
            cleanup();
        }
    }
}

pub fn temp_dir(label: &str) -> PathBuf {
    let mut random = [0u8; 6];
    getrandom::fill(&mut random).unwrap();
    let suffix: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    let dir = std::env::temp_dir().join(format!("octopus-test-{label}-{}-{suffix}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn unique_name() -> String {
    let mut random = [0u8; 6];
    getrandom::fill(&mut random).unwrap();
    let suffix: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("octopus_test_{}_{suffix}", std::process::id())
}

pub fn sqlite() -> TestDatabase {
    let dir = temp_dir("sqlite");
    TestDatabase { database_type: "sqlite", path: dir.join("data.db").display().to_string(), cleanup: None }
}

/// The server URL from the environment, or None (after a loud notice) when it is unset outside CI.
fn server_url(variable: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("CI").is_ok() {
                panic!("{variable} is not set: CI requires the database server (run through scripts/test)");
            }
            eprintln!("NOTICE: {variable} is not set; skipping this backend (run through scripts/test to include it)");
            None
        }
    }
}

/// Replaces the database name at the end of a URL (`scheme://user@host:port/name?query`).
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|index| index + 3).unwrap_or(0);
    let path_start = base[scheme_end..].find('/').map(|index| index + scheme_end).unwrap_or(base.len());
    format!("{}/{database}{query}", &base[..path_start])
}

pub fn postgres() -> Option<TestDatabase> {
    let admin_url = server_url("TEST_POSTGRES_URL")?;
    let name = unique_name();
    let mut client = postgres::Client::connect(&admin_url, postgres::NoTls).expect("connect to the test PostgreSQL server");
    client.batch_execute(&format!("CREATE DATABASE {name}")).expect("create the test database");
    let drop_url = admin_url.clone();
    let drop_name = name.clone();
    Some(TestDatabase {
        database_type: "postgres",
        path: with_database(&admin_url, &name),
        cleanup: Some(Box::new(move || {
            if let Ok(mut client) = postgres::Client::connect(&drop_url, postgres::NoTls) {
                let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {drop_name} WITH (FORCE)"));
            }
        })),
    })
}

pub fn mysql() -> Option<TestDatabase> {
    use mysql::prelude::Queryable;
    let admin_url = server_url("TEST_MYSQL_URL")?;
    let name = unique_name();
    let mut connection = mysql::Conn::new(mysql::Opts::from_url(&admin_url).expect("a valid MySQL URL")).expect("connect to the test MariaDB server");
    connection.query_drop(format!("CREATE DATABASE {name} CHARACTER SET utf8mb4")).expect("create the test database");
    let drop_url = admin_url.clone();
    let drop_name = name.clone();
    Some(TestDatabase {
        database_type: "mysql",
        path: with_database(&admin_url, &name),
        cleanup: Some(Box::new(move || {
            let connection = mysql::Opts::from_url(&drop_url).ok().and_then(|opts| mysql::Conn::new(opts).ok());
            if let Some(mut connection) = connection {
                let _ = connection.query_drop(format!("DROP DATABASE IF EXISTS {drop_name}"));
            }
        })),
    })
}

/// SQLite always, plus whichever servers are configured.
pub fn all() -> Vec<TestDatabase> {
    let mut databases = vec![sqlite()];
    databases.extend(postgres());
    databases.extend(mysql());
    databases
}
