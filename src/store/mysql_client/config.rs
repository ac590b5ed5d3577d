//! Parses a MySQL connection URL: `mysql://user:password@host:port/database?setting=value`.

use std::time::Duration;

use crate::store::database_url;

/// Where and as whom to connect.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectionConfig {
    pub host: String,
    pub port: u16,
    /// A Unix socket path to use instead of TCP (`?socket=/run/mysqld/mysqld.sock`).
    pub socket: Option<String>,
    pub user: String,
    pub password: String,
    pub database: String,
    pub connect_timeout: Duration,
}

const DEFAULT_PORT: u16 = 3306;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl ConnectionConfig {
    /// `host:port/database` for messages (never the password).
    pub fn describe_target(&self) -> String {
        match &self.socket {
            Some(socket) => format!("{socket}/{}", self.database),
            None => database_url::describe_target(&self.host, self.port, &self.database),
        }
    }
}

/// Parses `mysql://user:password@host:port/database`. The settings the `mysql` crate's URLs
/// took that still mean something here are accepted (`socket`, `tcp_connect_timeout_ms`, and
/// `prefer_socket` and `ssl-mode=DISABLED`, which change nothing); any other is an error. The
/// error never repeats the URL (it may hold a password).
pub fn parse(text: &str) -> Result<ConnectionConfig, String> {
    let text = text.trim();
    let rest = text.strip_prefix("mysql://").ok_or("expected mysql://user:password@host:port/database")?;
    let parts = database_url::split(rest)?;
    if !parts.host.is_ascii() {
        return Err("write an international host name in its ASCII (xn--) form".to_owned());
    }
    let port = match parts.port {
        None | Some("") => DEFAULT_PORT,
        Some(text) => text.parse::<u16>().ok().filter(|port| *port != 0).ok_or(format!("invalid port '{text}'"))?,
    };
    let mut config = ConnectionConfig {
        host: if parts.host.is_empty() { "localhost".to_owned() } else { parts.host },
        port,
        socket: None,
        user: parts.user.unwrap_or_default(),
        password: parts.password.unwrap_or_default(),
        database: parts.database,
        connect_timeout: DEFAULT_CONNECT_TIMEOUT,
    };
    if config.user.is_empty() {
        return Err("no user name (mysql://USER:PASSWORD@host:3306/database)".to_owned());
    }
    for (key, value) in parts.settings {
        match key {
            "socket" => config.socket = Some(value),
            "tcp_connect_timeout_ms" => {
                let milliseconds: u64 =
                    value.parse().map_err(|_| format!("invalid tcp_connect_timeout_ms '{value}'"))?;
                config.connect_timeout = Duration::from_millis(milliseconds.max(1));
            }
            "prefer_socket" => {}
            "ssl-mode" | "ssl_mode" | "require_ssl" => {
                // This client speaks plain TCP, as the gateway always has.
                if !matches!(value.to_ascii_lowercase().as_str(), "disabled" | "false" | "preferred") {
                    return Err(format!(
                        "{key}={value} needs TLS to MySQL, which octopus does not speak; remove it (or use a local \
                         or tunnelled connection)"
                    ));
                }
            }
            other => {
                return Err(format!(
                    "unknown setting '{other}' (known: socket, tcp_connect_timeout_ms, prefer_socket, ssl-mode)"
                ));
            }
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_url_is_read() {
        let config = parse("mysql://octo%40pus:p%40ss+w:rd@db.example:3307/gateway?tcp_connect_timeout_ms=2500").unwrap();
        assert_eq!((config.host.as_str(), config.port), ("db.example", 3307));
        assert_eq!(config.user, "octo@pus");
        assert_eq!(config.password, "p@ss+w:rd");
        assert_eq!(config.database, "gateway");
        assert_eq!(config.connect_timeout, Duration::from_millis(2500));
        assert_eq!(config.describe_target(), "db.example:3307/gateway");
    }

    #[test]
    fn defaults_and_sockets() {
        let config = parse("mysql://root@127.0.0.1/mysql").unwrap();
        assert_eq!((config.port, config.password.as_str()), (3306, ""));
        let config = parse("mysql://root@localhost/gw?socket=%2Frun%2Fmysqld%2Fmysqld.sock&prefer_socket=true").unwrap();
        assert_eq!(config.socket.as_deref(), Some("/run/mysqld/mysqld.sock"));
        assert_eq!(config.describe_target(), "/run/mysqld/mysqld.sock/gw");
        let config = parse("mysql://u@[::1]:3310/d").unwrap();
        assert_eq!(config.describe_target(), "[::1]:3310/d");
    }

    #[test]
    fn bad_urls_get_errors_that_do_not_repeat_the_password() {
        for (text, expected) in [
            ("postgres://u:secret@h/d", "expected mysql://"),
            ("mysql://h/d", "no user name"),
            ("mysql://u:secret@h:70000/d", "invalid port"),
            ("mysql://u:secret@h/d?ssl-mode=REQUIRED", "needs TLS"),
            ("mysql://u:secret@h/d?pool_max=4", "unknown setting 'pool_max'"),
            ("mysql://u:secret@h/d?tcp_connect_timeout_ms=soon", "tcp_connect_timeout_ms"),
            ("mysql://u:secret@bücher.example/d", "xn--"),
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
            assert!(!error.contains("secret"), "{text}: {error}");
        }
    }
}
