//! The MySQL client against the real MariaDB server: logins with and without a password, and
//! values that must survive being written into statements as literals (quotes, backslashes,
//! NUL, non-ASCII text, doubles at their extremes), in both of the server's string modes.
#![cfg(feature = "mysql")]

mod support;

use octopus::store::mysql_client::{self, Value};
use octopus::store::{self, StoreError};
use support::databases;

const ROLE: &str = "octopus_login_native";
/// A password with characters a URL must escape, and a non-ASCII one.
const PASSWORD: &str = "p@ss w:rd+ü/1'\\";
const PASSWORD_IN_URL: &str = "p%40ss%20w%3Ard+%C3%BC%2F1%27%5C";

#[test]
fn logs_in_with_a_password_and_refuses_a_wrong_one() {
    let Some(admin_url) = databases::server_admin_url("mysql") else {
        return;
    };
    let server = mysql_client::parse_config(&admin_url).expect("TEST_MYSQL_URL parses");
    let mut admin = mysql_client::connect(&admin_url).expect("connect as the administrator");
    admin.query_drop(format!("DROP USER IF EXISTS '{ROLE}'@'%'")).expect("drop the old user");
    admin
        .exec_drop(format!("CREATE USER '{ROLE}'@'%' IDENTIFIED BY ?"), (PASSWORD,))
        .expect("create the login user");
    let url_with = |password: &str| format!("mysql://{ROLE}:{password}@{}:{}/information_schema", server.host, server.port);

    let mut connection = mysql_client::connect(&url_with(PASSWORD_IN_URL)).expect("log in with the password");
    let user: Option<String> = connection.query_first("SELECT CURRENT_USER()").expect("query after login");
    assert_eq!(user.as_deref(), Some(&*format!("{ROLE}@%")));
    let plugin: Option<String> = admin
        .exec_first("SELECT plugin FROM mysql.user WHERE user = ?", (ROLE,))
        .expect("read the user's login method");
    assert_eq!(plugin.as_deref(), Some("mysql_native_password"));

    let error = mysql_client::connect(&url_with("wrong-secret")).err().expect("a wrong password is refused");
    assert!(matches!(&error, mysql_client::Error::Server(server_error) if server_error.code == 1045), "{error}");
    assert!(!error.to_string().contains("wrong-secret"), "{error}");

    match store::open("mysql", &url_with("wrong-secret")) {
        Err(StoreError::Backend(message)) => {
            assert!(message.contains("Access denied"), "{message}");
            assert!(message.contains(&format!("{}:{}/information_schema", server.host, server.port)), "{message}");
            assert!(!message.contains("wrong-secret"), "{message}");
        }
        other => panic!("expected a Backend error, got {:?}", other.map(|_| ())),
    }
    admin.query_drop(format!("DROP USER '{ROLE}'@'%'")).expect("drop the login user");
}

#[test]
fn values_survive_as_literals_in_both_string_modes() {
    let Some(database) = databases::mysql() else {
        return;
    };
    let mut connection = mysql_client::connect(&database.path).expect("connect");
    connection
        .query_drop("CREATE TABLE round_trip (id BIGINT PRIMARY KEY, text_value LONGTEXT, number DOUBLE) CHARACTER SET utf8mb4")
        .expect("create the table");
    let texts = [
        "plain",
        "it's \"quoted\"",
        "back\\slash \\' and \\\\",
        "line\nbreak\r\ttab",
        "nul \0 and ctrl-z \x1a",
        "ünïcödé 中文 🐙",
        "? not a placeholder",
        "",
    ];
    let numbers = [0.1 + 0.2, 1e-300, f64::MAX, -f64::MIN_POSITIVE, 123456789.125, -0.5];
    for mode in ["", "NO_BACKSLASH_ESCAPES"] {
        connection.exec_drop("SET SESSION sql_mode = ?", (mode,)).expect("set sql_mode");
        connection.query_drop("DELETE FROM round_trip").expect("empty the table");
        for (id, (text, number)) in texts.iter().zip(numbers.iter().cycle()).enumerate() {
            connection
                .exec_drop(
                    "INSERT INTO round_trip (id, text_value, number) VALUES (?, ?, ?)",
                    (id as i64, *text, *number),
                )
                .unwrap_or_else(|error| panic!("insert {text:?} with sql_mode '{mode}': {error}"));
            let row: Option<(String, f64)> = connection
                .exec_first("SELECT text_value, number FROM round_trip WHERE id = ? AND text_value = ?", (id as i64, *text))
                .expect("read back");
            assert_eq!(row, Some((text.to_string(), *number)), "sql_mode '{mode}'");
        }
        let null_row: Option<Option<String>> = connection
            .exec_first("SELECT ? FROM DUAL", (Value::NULL,))
            .expect("select NULL");
        assert_eq!(null_row, Some(None));
    }
    let error = connection.exec_drop("SELECT ?, ?", (1i64,)).unwrap_err();
    assert!(error.to_string().contains("do not match"), "{error}");
    let error = connection.exec_drop("SELECT ?", (f64::INFINITY,)).unwrap_err();
    assert!(error.to_string().contains("infinite"), "{error}");
}
