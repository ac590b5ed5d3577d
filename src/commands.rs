//! The headless admin commands of the `octopus` binary (`reset-password`, `export`, `import`,
//! `healthcheck`), for routers, containers and systemd hosts where nobody opens the panel.
//!
//! They read the same config file and `OCTOPUS_*` overrides as `octopus start`, but never write
//! the file: a command pointed at a missing config would otherwise create one whose defaults lead
//! it to an empty database. Each one opens the database directly on the main thread (no gateway
//! needs to run) and calls the same code as the admin API, so a backup written here imports
//! there and the other way round. Every error names the file, key or database and the problem.

use std::io::{IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use crate::api::{auth, backup};
use crate::config::{self, Config};
use crate::store::{self, Store};
use crate::util;

/// The config path every command uses when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "data/config.json";

/// A password typed or piped in is one line; more is surely a mistake (a file piped in whole).
const MAX_PASSWORD_INPUT_BYTES: u64 = 4096;

/// How long `healthcheck` waits to connect and for the answer: container engines run it every
/// few seconds, and a gateway that cannot answer `/healthz` this fast is not healthy.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// `octopus reset-password`: sets the password of an admin account from stdin (or a prompt on a
/// terminal) and ends its sessions. The operator chose the password, so the account no longer
/// has to change it at the next login. A database with no admin account yet (never started)
/// gets this one, so a host can be provisioned before its first start.
pub fn reset_password(config_path: &Path, username: &str) -> Result<String, String> {
    let config = read_config(config_path)?;
    let password = read_new_password(username)?;
    auth::check_new_password(&password)?;
    let mut store = open_store(&config, config_path, StoreUse::MayCreate)?;
    let database = database_label(&config, config_path);
    // The placeholder never verifies (it is not a PHC string); it is replaced just below.
    store
        .seed_admin(username, "!")
        .map_err(|error| format!("{database}: {error}"))?;
    let user = store
        .admin_by_username(username)
        .map_err(|error| format!("{database}: {error}"))?
        .ok_or_else(|| {
            format!("{database}: there is no admin account named {username:?} (see --username)")
        })?;
    let ended_sessions = auth::replace_password(store.as_mut(), user.id, &password)
        .map_err(|error| format!("{database}: {error}"))?;
    Ok(format!(
        "changed the password of {username:?}; ended {ended_sessions} session(s)"
    ))
}

/// `octopus export`: the backup document, to stdout (`-` or no `--output`) or to a file that only
/// its owner may read (it carries the channel keys in clear).
pub fn export(
    config_path: &Path,
    output: Option<&Path>,
    include_stats: bool,
) -> Result<String, String> {
    let config = read_config(config_path)?;
    let mut store = open_store(&config, config_path, StoreUse::MustExist)?;
    let database = database_label(&config, config_path);
    let document = backup::export_document(store.as_mut(), include_stats, util::unix_millis())
        .map_err(|error| format!("{database}: {error}"))?;
    let mut text = serde_json::to_vec_pretty(&document).expect("a JSON value serializes");
    text.push(b'\n');
    match output.filter(|path| path.as_os_str() != "-") {
        None => {
            std::io::stdout()
                .write_all(&text)
                .map_err(|error| format!("cannot write the backup to stdout: {error}"))?;
            Ok(String::new())
        }
        Some(path) => {
            write_private_file(path, &text)
                .map_err(|error| format!("{}: cannot write the backup: {error}", path.display()))?;
            Ok(format!(
                "wrote the backup ({} bytes) to {}",
                text.len(),
                path.display()
            ))
        }
    }
}

/// `octopus import FILE`: checks the whole document first (nothing is written when any field is
/// wrong), then replaces the configuration in one transaction.
pub fn import(config_path: &Path, file: &Path) -> Result<String, String> {
    let config = read_config(config_path)?;
    let shown = if file.as_os_str() == "-" {
        "stdin".to_string()
    } else {
        file.display().to_string()
    };
    let mut bytes = Vec::new();
    let read = if file.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut bytes).map(|_| ())
    } else {
        std::fs::File::open(file)
            .and_then(|mut opened| opened.read_to_end(&mut bytes))
            .map(|_| ())
    };
    read.map_err(|error| format!("{shown}: cannot read the backup: {error}"))?;
    let checked =
        backup::check_document(&bytes).map_err(|problem| format!("{shown}: {problem}"))?;
    let counts = checked.counts();
    let mut store = open_store(&config, config_path, StoreUse::MayCreate)?;
    let database = database_label(&config, config_path);
    store
        .replace_configuration(&checked.backup)
        .map_err(|error| format!("{database}: {error}"))?;
    // A running gateway keeps its settings, prices and unwritten statistics in memory.
    Ok(format!(
        "imported {counts}; restart running gateways on this database to put everything in force"
    ))
}

/// `octopus healthcheck`: `GET /healthz` on the gateway of this config (or `--url`), plain HTTP,
/// exit 0 on a 200. Tiny on purpose: container engines and procd run it every few seconds.
pub fn healthcheck(
    config_path: &Path,
    config_path_given: bool,
    url: Option<&str>,
) -> Result<String, String> {
    let (host, port, path) = match url {
        Some(url) => parse_http_url(url)?,
        None => {
            let config = if config_path_given || config_path.exists() {
                read_config(config_path)?
            } else {
                // The gateway may run from the environment alone (a container); then so do we.
                config::from_environment(&config::environment_overrides())
                    .map_err(|error| format!("config error: {error}"))?
            };
            (
                loopback_for(&config.server.host),
                config.server.port,
                "/healthz".to_string(),
            )
        }
    };
    let status = http_get_status(&host, port, &path)?;
    if status == 200 {
        Ok(String::new())
    } else {
        Err(format!(
            "http://{}{path} answered HTTP {status}",
            host_and_port(&host, port)
        ))
    }
}

/// Whether opening a SQLite database may create it.
#[derive(Clone, Copy, PartialEq)]
enum StoreUse {
    /// Reading commands: a missing file means a wrong config, not an empty gateway.
    MustExist,
    /// Writing commands may prepare a database before the gateway's first start.
    MayCreate,
}

fn read_config(config_path: &Path) -> Result<Config, String> {
    config::read_existing(config_path, &config::environment_overrides())
        .map_err(|error| format!("config error: {error}"))
}

/// Names the database for error messages without its URL, which may carry a password.
fn database_label(config: &Config, config_path: &Path) -> String {
    let database = &config.database;
    if database.database_type == "sqlite" {
        format!(
            "SQLite database {} (database.path in {})",
            database.path,
            config_path.display()
        )
    } else {
        format!(
            "{} database (database.path in {})",
            database.database_type,
            config_path.display()
        )
    }
}

fn open_store(
    config: &Config,
    config_path: &Path,
    store_use: StoreUse,
) -> Result<Box<dyn Store>, String> {
    let database = &config.database;
    let label = database_label(config, config_path);
    if database.database_type == "sqlite"
        && store_use == StoreUse::MustExist
        && !Path::new(&database.path).exists()
    {
        return Err(format!(
            "{label}: the file does not exist (is this the gateway's config, run from its directory?)"
        ));
    }
    store::open(&database.database_type, &database.path)
        .map_err(|error| format!("{label}: {error}"))
}

/// Reads the new password: twice at a prompt without echo on a terminal, else one line of stdin.
fn read_new_password(username: &str) -> Result<String, String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let first = prompt_without_echo(&format!("New password for {username}: "))?;
        let second = prompt_without_echo("Repeat it: ")?;
        if first != second {
            return Err("the two passwords differ; nothing was changed".to_string());
        }
        return Ok(first);
    }
    let mut input = String::new();
    stdin
        .lock()
        .take(MAX_PASSWORD_INPUT_BYTES + 1)
        .read_to_string(&mut input)
        .map_err(|error| format!("cannot read the new password from stdin: {error}"))?;
    if input.len() as u64 > MAX_PASSWORD_INPUT_BYTES {
        return Err(format!(
            "stdin holds more than {MAX_PASSWORD_INPUT_BYTES} bytes; send the new password on one line"
        ));
    }
    let line = input.strip_suffix('\n').unwrap_or(&input);
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.contains('\n') {
        return Err("stdin holds several lines; send the new password on one line".to_string());
    }
    if line.is_empty() {
        return Err(
            "no new password on stdin (pipe it in, or run on a terminal to be asked)".to_string(),
        );
    }
    Ok(line.to_string())
}

/// Asks on stderr and reads one line from the terminal with echo turned off (restored after).
fn prompt_without_echo(prompt: &str) -> Result<String, String> {
    eprint!("{prompt}");
    // SAFETY: termios calls on stdin (a terminal, checked by the caller) with a zeroed struct that
    // tcgetattr fills in before it is read.
    let saved = unsafe {
        let mut saved: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(libc::STDIN_FILENO, &mut saved) != 0 {
            return Err("cannot read the terminal settings to hide the password".to_string());
        }
        let mut hidden = saved;
        hidden.c_lflag &= !libc::ECHO;
        libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &hidden);
        saved
    };
    let mut line = String::new();
    let read = std::io::stdin().read_line(&mut line);
    // SAFETY: restores the settings read above on the same descriptor.
    unsafe {
        libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &saved);
    }
    eprintln!();
    read.map_err(|error| format!("cannot read the password: {error}"))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Creates or truncates `path` readable by its owner only, before any secret is written to it.
fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The address to probe for a listening host: the wildcard addresses are reached on loopback.
fn loopback_for(listen_host: &str) -> String {
    match listen_host {
        "" | "0.0.0.0" => "127.0.0.1".to_string(),
        "::" | "[::]" => "::1".to_string(),
        other => other
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    }
}

fn host_and_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Splits `http://host[:port][/path]`; https is refused because the probe speaks plain HTTP.
fn parse_http_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--url {url:?}: only http:// URLs can be checked"))?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], rest[slash..].to_string()),
        None => (rest, "/healthz".to_string()),
    };
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| format!("--url {url:?}: unclosed [ in the host"))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("--url {url:?}: the host is missing"));
    }
    let port = match port {
        None => 80,
        Some(port) => port.parse::<u16>().map_err(|_| {
            format!("--url {url:?}: the port {port:?} is not a number from 0 to 65535")
        })?,
    };
    Ok((host.to_string(), port, path))
}

/// One `GET` over a fresh connection; returns the status code of the answer.
fn http_get_status(host: &str, port: u16, path: &str) -> Result<u16, String> {
    let target = host_and_port(host, port);
    let addresses: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve {host}: {error}"))?
        .collect();
    let mut last_error = format!("{host} resolved to no address");
    for address in addresses {
        match TcpStream::connect_timeout(&address, HEALTHCHECK_TIMEOUT) {
            Ok(mut stream) => {
                let _ = stream.set_read_timeout(Some(HEALTHCHECK_TIMEOUT));
                let _ = stream.set_write_timeout(Some(HEALTHCHECK_TIMEOUT));
                let request = format!(
                    "GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: octopus-healthcheck\r\nConnection: close\r\n\r\n"
                );
                stream
                    .write_all(request.as_bytes())
                    .map_err(|error| format!("http://{target}{path}: cannot send: {error}"))?;
                return read_status(&mut stream)
                    .map_err(|problem| format!("http://{target}{path}: {problem}"));
            }
            Err(error) => last_error = format!("cannot connect to {address}: {error}"),
        }
    }
    Err(last_error)
}

/// Reads the status line (`HTTP/1.x NNN ...`) of an answer.
fn read_status(stream: &mut TcpStream) -> Result<u16, String> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 512];
    while !head.windows(2).any(|pair| pair == b"\r\n") {
        let read = stream
            .read(&mut buffer)
            .map_err(|error| format!("no answer: {error}"))?;
        if read == 0 || head.len() > 4096 {
            return Err("the connection closed before a status line".to_string());
        }
        head.extend_from_slice(&buffer[..read]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    match (
        words.next(),
        words.next().and_then(|code| code.parse::<u16>().ok()),
    ) {
        (Some(version), Some(status)) if version.starts_with("HTTP/1.") => Ok(status),
        _ => Err(format!(
            "not an HTTP answer: {:?}",
            line.lines().next().unwrap_or_default()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_port_and_path() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:8080/healthz").unwrap(),
            ("127.0.0.1".to_string(), 8080, "/healthz".to_string())
        );
        assert_eq!(
            parse_http_url("http://localhost").unwrap(),
            ("localhost".to_string(), 80, "/healthz".to_string())
        );
        assert_eq!(
            parse_http_url("http://[::1]:9/x").unwrap(),
            ("::1".to_string(), 9, "/x".to_string())
        );
        assert!(
            parse_http_url("https://127.0.0.1/healthz")
                .unwrap_err()
                .contains("only http://")
        );
        assert!(
            parse_http_url("http://127.0.0.1:http/")
                .unwrap_err()
                .contains("port \"http\"")
        );
        assert!(
            parse_http_url("http://:80/")
                .unwrap_err()
                .contains("host is missing")
        );
    }

    #[test]
    fn wildcard_listen_addresses_are_probed_on_loopback() {
        assert_eq!(loopback_for("0.0.0.0"), "127.0.0.1");
        assert_eq!(loopback_for("::"), "::1");
        assert_eq!(loopback_for("192.168.1.1"), "192.168.1.1");
        assert_eq!(host_and_port("::1", 80), "[::1]:80");
    }
}
