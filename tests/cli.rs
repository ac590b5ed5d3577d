//! The `octopus` binary as a user runs it: commands, exit codes, first start in an empty
//! directory, and config errors that name the file, key and problem.

mod support;

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use support::databases::temp_dir;
use support::http_client::{json_request, request};

const BINARY: &str = env!("CARGO_BIN_EXE_octopus");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct RunningBinary(Child);

impl Drop for RunningBinary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn version_help_and_bad_arguments() {
    let version = Command::new(BINARY).arg("version").output().unwrap();
    assert!(version.status.success());
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("octopus {}", env!("CARGO_PKG_VERSION")));
    let help = Command::new(BINARY).arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("octopus start [--config PATH]"));
    for arguments in [&["frobnicate"][..], &["start", "--nope"], &[], &["start", "extra"]] {
        let output = Command::new(BINARY).args(arguments).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{arguments:?}");
        assert!(String::from_utf8_lossy(&output.stderr).contains("Usage:"), "{arguments:?}");
    }
}

#[test]
fn first_start_creates_config_and_database_and_serves_the_admin_api() {
    let dir = temp_dir("first-start");
    let port = free_port();
    let mut command = Command::new(BINARY);
    command
        .arg("start")
        .current_dir(&dir)
        .env("OCTOPUS_SERVER_HOST", "127.0.0.1")
        .env("OCTOPUS_SERVER_PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // A permissive umask, as on most systems, so the permission checks below can fail.
    // SAFETY: umask is async-signal-safe and touches only the child's own process state.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    let mut child = RunningBinary(command.spawn().unwrap());
    let address = format!("127.0.0.1:{port}").parse().unwrap();
    let started = Instant::now();
    loop {
        if std::net::TcpStream::connect(address).is_ok() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the gateway did not start listening");
        assert!(child.0.try_wait().unwrap().is_none(), "the gateway exited early");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(request(address, "GET", "/healthz", &[], b"").status, 200);
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("data/config.json")).unwrap()).unwrap();
    assert_eq!(config["server"]["port"], 8080, "the file holds the defaults; the environment only overrides");
    assert_eq!(config["database"]["type"], "sqlite");
    assert!(dir.join("data/data.db").exists());
    // The data directory, the config and the database hold every provider key: owner only,
    // whatever the umask of whoever started the gateway.
    let mode = |name: &str| std::fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("data"), 0o700, "the data directory");
    assert_eq!(mode("data/config.json"), 0o600, "the config file");
    assert_eq!(mode("data/data.db"), 0o600, "the database file");
    assert!(dir.join("data/data.db-wal").exists(), "the database runs in WAL mode");
    assert_eq!(mode("data/data.db-wal"), 0o600, "SQLite's write-ahead log follows the database file");
    let login = json_request(address, "POST", "/api/v1/auth/login", None, Some(&json!({"username": "admin", "password": "admin"})));
    assert_eq!(login.status, 200);
    assert_eq!(login.json()["must_change_password"], true);

    // SIGTERM shuts down cleanly with exit code 0.
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.0.id() as i32, libc::SIGTERM);
    }
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn config_errors_exit_non_zero_name_file_key_problem_and_keep_the_file() {
    let cases = [
        (r#"{"server": {"port": "x"}}"#, "server.port: expected a whole number"),
        (r#"{"database": {"type": "oracle"}}"#, "database.type: unknown database type"),
        (r#"{"server": {"prot": 1}}"#, "server.prot: unknown key"),
        ("{oops", "not valid JSON"),
    ];
    for (text, expected) in cases {
        let dir = temp_dir("bad-config");
        let path = dir.join("custom.json");
        std::fs::write(&path, text).unwrap();
        let output = Command::new(BINARY).args(["start", "--config"]).arg(&path).current_dir(&dir).output().unwrap();
        assert_eq!(output.status.code(), Some(1), "{text}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&path.display().to_string()), "{stderr}");
        assert!(stderr.contains(expected), "{stderr} should contain {expected}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }
    let dir = temp_dir("bad-env");
    let output = Command::new(BINARY).arg("start").current_dir(&dir).env("OCTOPUS_SERVER_PORT", "eighty").output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("OCTOPUS_SERVER_PORT"));
}

#[test]
fn an_unreachable_database_server_is_a_clear_startup_error() {
    let dir = temp_dir("bad-db");
    let port = free_port();
    let mut child = Command::new(BINARY)
        .arg("start")
        .current_dir(&dir)
        .env("OCTOPUS_SERVER_PORT", free_port().to_string())
        .env("OCTOPUS_DATABASE_TYPE", "postgres")
        .env("OCTOPUS_DATABASE_PATH", format!("postgres://postgres:hunter2@127.0.0.1:{port}/octopus"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no exit for an unreachable database");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("database"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the password must not be printed: {stderr}");
}
