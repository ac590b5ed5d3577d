//! Parses a PostgreSQL connection string: a `postgres://` URL or libpq's `key=value` form.

use std::time::Duration;

use crate::store::database_url;

/// Where and as whom to connect.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectionConfig {
    /// A host name or address, or a directory holding the server's Unix socket (starts with `/`).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub application_name: Option<String>,
    /// Server settings for the session (`-c name=value ...`), as libpq's `options`.
    pub options: Option<String>,
    pub connect_timeout: Duration,
}

const DEFAULT_PORT: u16 = 5432;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl ConnectionConfig {
    /// `host:port/database` for messages (never the password).
    pub fn describe_target(&self) -> String {
        database_url::describe_target(&self.host, self.port, &self.database)
    }

    pub fn uses_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }
}

/// The settings read so far; defaults are applied once the whole string is read.
#[derive(Default)]
struct Settings {
    host: Option<String>,
    port: Option<String>,
    user: Option<String>,
    password: Option<String>,
    database: Option<String>,
    application_name: Option<String>,
    options: Option<String>,
    connect_timeout: Option<String>,
}

impl Settings {
    /// Applies one `key=value` setting, from the URL's query or the `key=value` form.
    fn set(&mut self, key: &str, value: String) -> Result<(), String> {
        let slot = match key {
            "host" | "hostaddr" => &mut self.host,
            "port" => &mut self.port,
            "user" => &mut self.user,
            "password" => &mut self.password,
            "dbname" => &mut self.database,
            "application_name" => &mut self.application_name,
            "options" => &mut self.options,
            "connect_timeout" => &mut self.connect_timeout,
            "sslmode" => {
                // This client speaks plain TCP, as the gateway always has; a setting that only
                // allows or prefers TLS is satisfied by it, one that requires TLS is not.
                return match value.as_str() {
                    "disable" | "allow" | "prefer" => Ok(()),
                    _ => Err(format!(
                        "sslmode={value} needs TLS to PostgreSQL, which octopus does not speak; use sslmode=disable \
                         (or a local or tunnelled connection)"
                    )),
                };
            }
            other => return Err(format!("unknown setting '{other}'")),
        };
        *slot = Some(value);
        Ok(())
    }

    fn finish(self) -> Result<ConnectionConfig, String> {
        let host = self.host.filter(|host| !host.is_empty()).unwrap_or_else(|| "localhost".to_owned());
        if host.contains(',') {
            return Err("several hosts are not supported; give one host".to_owned());
        }
        let port = match self.port.as_deref() {
            None | Some("") => DEFAULT_PORT,
            Some(text) => text.parse::<u16>().ok().filter(|port| *port != 0).ok_or(format!("invalid port '{text}'"))?,
        };
        let user = self.user.filter(|user| !user.is_empty()).ok_or("no user name (postgres://USER:PASSWORD@host/database)")?;
        let database = self.database.filter(|database| !database.is_empty()).unwrap_or_else(|| user.clone());
        let connect_timeout = match self.connect_timeout.as_deref() {
            None | Some("") | Some("0") => DEFAULT_CONNECT_TIMEOUT,
            Some(text) => Duration::from_secs(
                text.parse::<u64>().map_err(|_| format!("invalid connect_timeout '{text}' (whole seconds)"))?,
            ),
        };
        Ok(ConnectionConfig {
            host,
            port,
            user,
            password: self.password,
            database,
            application_name: self.application_name,
            options: self.options,
            connect_timeout,
        })
    }
}

/// Parses `postgres://user:password@host:port/database?setting=value` (or `postgresql://`), or
/// libpq's `host=... user=... dbname=...`. The error never repeats the string (it may hold a
/// password).
pub fn parse(text: &str) -> Result<ConnectionConfig, String> {
    let text = text.trim();
    let rest = text.strip_prefix("postgres://").or_else(|| text.strip_prefix("postgresql://"));
    match rest {
        Some(rest) => parse_url(rest),
        None if text.contains('=') => parse_key_values(text),
        None => Err("expected postgres://user:password@host:port/database".to_owned()),
    }
}

fn parse_url(rest: &str) -> Result<ConnectionConfig, String> {
    let parts = database_url::split(rest)?;
    let mut settings = Settings {
        host: Some(parts.host),
        port: parts.port.map(str::to_owned),
        user: parts.user,
        password: parts.password,
        database: Some(parts.database).filter(|database| !database.is_empty()),
        ..Settings::default()
    };
    for (key, value) in parts.settings {
        settings.set(key, value)?;
    }
    settings.finish()
}

/// libpq's `key=value` form: values may be single-quoted, with `\'` and `\\` inside.
fn parse_key_values(text: &str) -> Result<ConnectionConfig, String> {
    let mut settings = Settings::default();
    let mut characters = text.chars().peekable();
    loop {
        while characters.next_if(|character| character.is_whitespace()).is_some() {}
        if characters.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(character) = characters.next_if(|character| *character != '=' && !character.is_whitespace()) {
            key.push(character);
        }
        while characters.next_if(|character| character.is_whitespace()).is_some() {}
        if characters.next() != Some('=') {
            return Err(format!("setting '{key}' has no value"));
        }
        while characters.next_if(|character| character.is_whitespace()).is_some() {}
        let mut value = String::new();
        if characters.next_if_eq(&'\'').is_some() {
            loop {
                match characters.next() {
                    Some('\\') => value.push(characters.next().ok_or("a quoted value ends in '\\'")?),
                    Some('\'') => break,
                    Some(character) => value.push(character),
                    None => return Err(format!("the value of '{key}' has no closing quote")),
                }
            }
        } else {
            while let Some(character) = characters.next_if(|character| !character.is_whitespace()) {
                value.push(if character == '\\' { characters.next().unwrap_or('\\') } else { character });
            }
        }
        settings.set(&key, value)?;
    }
    settings.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_url_is_read() {
        let config = parse("postgres://octo%40pus:p%40ss+w:rd@db.example:6543/stats%2Fdb?application_name=gw&connect_timeout=3").unwrap();
        assert_eq!(config.host, "db.example");
        assert_eq!(config.port, 6543);
        assert_eq!(config.user, "octo@pus");
        assert_eq!(config.password.as_deref(), Some("p@ss+w:rd"));
        assert_eq!(config.database, "stats/db");
        assert_eq!(config.application_name.as_deref(), Some("gw"));
        assert_eq!(config.connect_timeout, Duration::from_secs(3));
        assert_eq!(config.describe_target(), "db.example:6543/stats/db");
    }

    #[test]
    fn defaults_fill_what_a_url_leaves_out() {
        let config = parse("postgresql://postgres@127.0.0.1").unwrap();
        assert_eq!((config.host.as_str(), config.port, config.database.as_str()), ("127.0.0.1", 5432, "postgres"));
        assert_eq!(config.password, None);
        assert_eq!(config.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    }

    #[test]
    fn ipv6_hosts_and_unix_socket_directories_are_read() {
        let config = parse("postgres://u@[::1]:5433/d").unwrap();
        assert_eq!((config.host.as_str(), config.port), ("::1", 5433));
        assert_eq!(config.describe_target(), "[::1]:5433/d");
        let config = parse("postgres://u@%2Fvar%2Frun%2Fpostgresql/d").unwrap();
        assert!(config.uses_unix_socket());
        let config = parse("postgres://u@/d?host=/run/postgresql").unwrap();
        assert_eq!(config.host, "/run/postgresql");
    }

    #[test]
    fn the_key_value_form_is_read() {
        let config = parse("host=10.0.0.2  port = 5433 user=octopus password='a \\'b\\\\' dbname=gw sslmode=prefer").unwrap();
        assert_eq!((config.host.as_str(), config.port, config.user.as_str()), ("10.0.0.2", 5433, "octopus"));
        assert_eq!(config.password.as_deref(), Some("a 'b\\"));
        assert_eq!(config.database, "gw");
    }

    #[test]
    fn bad_strings_get_errors_that_do_not_repeat_the_password() {
        for (text, expected) in [
            ("mysql://u@h/d", "expected postgres://"),
            ("postgres://h/d", "no user name"),
            ("postgres://u:secret@h:99999/d", "invalid port"),
            ("postgres://u:secret@h/d?sslmode=require", "needs TLS"),
            ("postgres://u:secret@h/d?colour=blue", "unknown setting 'colour'"),
            ("postgres://u:secret@h1,h2/d", "several hosts"),
            ("postgres://u:secret@h/d?connect_timeout=soon", "connect_timeout"),
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
            assert!(!error.contains("secret"), "{text}: {error}");
        }
    }
}
