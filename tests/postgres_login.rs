//! The PostgreSQL client's login against the real server, with each password method
//! pg_hba.conf can ask for: scram-sha-256 (the default since PostgreSQL 14), md5 and password.
//! scripts/test-databases adds the pg_hba.conf lines for this test's roles.
#![cfg(feature = "postgres")]

mod support;

use octopus::store::postgres_client;
use octopus::store::{self, StoreError};
use support::databases;

/// The roles and the pg_hba.conf method each is bound to, with the `password_encryption` its
/// password is stored with (an md5 line also accepts a SCRAM-stored password; test the MD5
/// exchange itself with an MD5-stored one).
const ROLES: [(&str, &str, &str); 3] = [
    ("octopus_login_scram", "scram-sha-256", "scram-sha-256"),
    ("octopus_login_md5", "md5", "md5"),
    ("octopus_login_plain", "password", "scram-sha-256"),
];

/// A password with characters a URL must escape, and a non-ASCII one (already in NFKC form,
/// as SASLprep wants it).
const PASSWORD: &str = "p@ss w:rd+ü/1";
const PASSWORD_IN_URL: &str = "p%40ss%20w%3Ard+%C3%BC%2F1";

fn running_in_ci() -> bool {
    matches!(std::env::var("CI"), Ok(value) if !value.is_empty() && value != "false" && value != "0")
}

#[test]
fn logs_in_with_each_password_method_postgres_can_ask_for() {
    let Some(admin_url) = databases::server_admin_url("postgres") else {
        return;
    };
    let server = postgres_client::parse_config(&admin_url).expect("TEST_POSTGRES_URL parses");
    let mut admin = postgres_client::connect(&admin_url).expect("connect as the administrator");
    let roles: Vec<String> = ROLES.iter().map(|(role, _, _)| format!("'{role}'")).collect();
    let rules_in_force: i64 = admin
        .query_one(
            &format!(
                "SELECT count(*) FROM pg_hba_file_rules WHERE user_name && ARRAY[{}]::text[] AND error IS NULL",
                roles.join(",")
            ),
            &[],
        )
        .and_then(|row| row.get(0))
        .expect("read pg_hba_file_rules");
    if rules_in_force < ROLES.len() as i64 {
        let message = "pg_hba.conf lacks the octopus_login_* lines scripts/test-databases adds";
        assert!(!running_in_ci(), "{message}");
        eprintln!("\nNOTICE: {message}; the PostgreSQL login test did NOT run.\n");
        return;
    }

    for (role, method, stored_as) in ROLES {
        admin
            .batch_execute(&format!(
                "DROP ROLE IF EXISTS {role}; SET password_encryption = '{stored_as}'; \
                 CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'; RESET password_encryption"
            ))
            .unwrap_or_else(|error| panic!("create {role}: {error}"));
        let url_with = |password: &str| {
            format!("postgres://{role}:{password}@{}:{}/postgres", server.host, server.port)
        };

        let mut client = postgres_client::connect(&url_with(PASSWORD_IN_URL))
            .unwrap_or_else(|error| panic!("{method} login of {role}: {error}"));
        let row = client.query_one("SELECT current_user, $1::text", &[&"echo"]).expect("query after login");
        assert_eq!(row.get::<String>(0).unwrap(), role, "{method}");
        assert_eq!(row.get::<String>(1).unwrap(), "echo", "{method}");

        let error = postgres_client::connect(&url_with("wrong-secret")).err().expect("a wrong password is refused");
        match &error {
            postgres_client::Error::Server(database_error) => assert_eq!(database_error.code, "28P01", "{method}: {error}"),
            other => panic!("{method}: expected the server's refusal, got {other}"),
        }
        assert!(!error.to_string().contains("wrong-secret"), "{method}: {error}");

        // Through the store, as the gateway opens it: the error names the server and the
        // reason, never the password.
        match store::open("postgres", &url_with("wrong-secret")) {
            Err(StoreError::Backend(message)) => {
                assert!(message.contains("password authentication failed"), "{method}: {message}");
                assert!(message.contains(&format!("{}:{}/postgres", server.host, server.port)), "{message}");
                assert!(!message.contains("wrong-secret"), "{message}");
            }
            other => panic!("{method}: expected a Backend error, got {:?}", other.map(|_| ())),
        }

        let no_password = format!("postgres://{role}@{}:{}/postgres", server.host, server.port);
        let error = postgres_client::connect(&no_password).err().expect("no password is refused");
        assert!(error.to_string().contains("has none"), "{method}: {error}");
    }

    admin
        .batch_execute(&ROLES.map(|(role, _, _)| format!("DROP ROLE IF EXISTS {role};")).concat())
        .expect("drop the login roles");
}
