//! Splits a database server URL (`scheme://user:password@host:port/database?settings`) into its
//! parts, for the PostgreSQL and MySQL clients' own settings.

use crate::util::percent_decode_url_part;

/// The parts of a URL after its `scheme://`, percent-decoded where the part allows escapes.
#[derive(Debug, PartialEq)]
pub struct UrlParts<'url> {
    pub user: Option<String>,
    pub password: Option<String>,
    /// Empty when the URL names none; an IPv6 address without its brackets.
    pub host: String,
    /// As written (checked by the caller, which knows its default).
    pub port: Option<&'url str>,
    pub database: String,
    /// `key=value` pairs, values decoded.
    pub settings: Vec<(&'url str, String)>,
}

/// Splits `rest`, the URL without its scheme. The error never repeats the URL (it may hold a
/// password).
pub fn split(rest: &str) -> Result<UrlParts<'_>, String> {
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = before_query.split_once('/').unwrap_or((before_query, ""));
    // A password may contain '@' only escaped, but take the last '@' as libpq does.
    let (user_info, host_port) = match authority.rsplit_once('@') {
        Some((user_info, host_port)) => (Some(user_info), host_port),
        None => (None, authority),
    };
    let (user, password) = match user_info {
        Some(user_info) => match user_info.split_once(':') {
            Some((user, password)) => (Some(percent_decode_url_part(user)), Some(percent_decode_url_part(password))),
            None => (Some(percent_decode_url_part(user_info)), None),
        },
        None => (None, None),
    };
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (address, after) = bracketed.split_once(']').ok_or("an IPv6 address without its closing ']'")?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or("unexpected text after the IPv6 address")?),
        };
        (address.to_owned(), port)
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (percent_decode_url_part(host), Some(port)),
            None => (percent_decode_url_part(host_port), None),
        }
    };
    let mut settings = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| format!("setting '{pair}' has no value"))?;
        settings.push((key, percent_decode_url_part(value)));
    }
    Ok(UrlParts { user, password, host, port, database: percent_decode_url_part(path.trim_end_matches('/')), settings })
}

/// `host:port/database` for messages, with an IPv6 address in brackets.
pub fn describe_target(host: &str, port: u16, database: &str) -> String {
    if host.contains(':') && !host.starts_with('/') {
        format!("[{host}]:{port}/{database}")
    } else {
        format!("{host}:{port}/{database}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_is_split_and_decoded() {
        let parts = split("us%40er:p%40ss+w:rd@db.example:6543/stats%2Fdb?a=1&b=x%20y").unwrap();
        assert_eq!(parts.user.as_deref(), Some("us@er"));
        assert_eq!(parts.password.as_deref(), Some("p@ss+w:rd"));
        assert_eq!((parts.host.as_str(), parts.port), ("db.example", Some("6543")));
        assert_eq!(parts.database, "stats/db");
        assert_eq!(parts.settings, vec![("a", "1".to_owned()), ("b", "x y".to_owned())]);
    }

    #[test]
    fn missing_parts_and_ipv6_hosts() {
        let parts = split("host").unwrap();
        assert_eq!((parts.user, parts.password, parts.port), (None, None, None));
        assert_eq!(parts.database, "");
        let parts = split("u@[::1]:5433/d").unwrap();
        assert_eq!((parts.host.as_str(), parts.port), ("::1", Some("5433")));
        assert_eq!(describe_target(&parts.host, 5433, "d"), "[::1]:5433/d");
        assert!(split("u@[::1/d").is_err());
        assert!(split("u@[::1]x/d").is_err());
        assert!(split("u@h/d?novalue").unwrap_err().contains("novalue"));
    }
}
