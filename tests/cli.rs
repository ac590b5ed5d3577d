//! The `octopus` binary as a user runs it: commands, exit codes, first start in an empty
//! directory, config errors that name the file, key and problem, and the headless admin
//! commands (`reset-password`, `export`, `import`, `healthcheck`) on every database.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::binary::{start_on_any_port, BINARY};
use support::databases::{self, temp_dir, TestDatabase};
use support::gateway::TestGateway;
use support::http_client::{json_request, request};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn version_help_and_bad_arguments() {
    let version = Command::new(BINARY).arg("version").output().unwrap();
    assert!(version.status.success());
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("octopus {}", env!("CARGO_PKG_VERSION")));
    let help = Command::new(BINARY).arg("--help").output().unwrap();
    assert!(help.status.success());
    let help_text = String::from_utf8_lossy(&help.stdout);
    assert!(help_text.contains("octopus start [--config PATH]"));
    for command in ["reset-password", "export", "import", "healthcheck"] {
        assert!(help_text.contains(&format!("octopus {command} [--config PATH]")), "{help_text}");
    }
    let wrong = [
        &["frobnicate"][..],
        &["start", "--nope"],
        &[],
        &["start", "extra"],
        &["import"],
        &["import", "a.json", "b.json"],
        &["export", "--url", "http://127.0.0.1/"],
        &["healthcheck", "--username", "x"],
        &["version", "--config", "x.json"],
        &["reset-password", "--username"],
    ];
    for arguments in wrong {
        let output = Command::new(BINARY).args(arguments).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{arguments:?}");
        assert!(String::from_utf8_lossy(&output.stderr).contains("Usage:"), "{arguments:?}");
    }
}

#[test]
fn first_start_creates_config_and_database_and_serves_the_admin_api() {
    let dir = temp_dir("first-start");
    let mut command = Command::new(BINARY);
    command.arg("start").current_dir(&dir);
    // A permissive umask, as on most systems, so the permission checks below can fail.
    // SAFETY: umask is async-signal-safe and touches only the child's own process state.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    let (mut child, address) = start_on_any_port(command, &dir.join("gateway.log"));
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

/// The voluntary context switches of each of a process's threads with this name, by thread id.
fn context_switches_of_threads_named(pid: u32, name: &str) -> std::collections::BTreeMap<String, u64> {
    let mut switches = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap();
        let thread_id = task.file_name().to_string_lossy().into_owned();
        let task = task.path();
        if std::fs::read_to_string(task.join("comm")).is_ok_and(|comm| comm.trim_end() == name) {
            let status = std::fs::read_to_string(task.join("status")).unwrap();
            let count = status.lines().find_map(|line| line.strip_prefix("voluntary_ctxt_switches:")).unwrap();
            switches.insert(thread_id, count.trim().parse().unwrap());
        }
    }
    switches
}

/// An idle gateway should let a router's CPU sleep. may's workers used to leave epoll every
/// 10 ms whatever the load: a hundred wake-ups a second each; `app::IDLE_POLL_TIMEOUT` makes it
/// ten. The stats writer looked for counted requests ten times a second; after a second without
/// any it now sleeps until the next one or its next deadline.
#[test]
fn an_idle_gateway_wakes_its_threads_rarely() {
    let dir = temp_dir("idle-wake-ups");
    let mut command = Command::new(BINARY);
    command.arg("start").current_dir(&dir);
    let (child, address) = start_on_any_port(command, &dir.join("gateway.log"));
    assert_eq!(request(address, "GET", "/healthz", &[], b"").status, 200);
    std::thread::sleep(Duration::from_millis(1_500));

    let pid = child.0.id();
    let coroutines_before = context_switches_of_threads_named(pid, "coroutines");
    let writer_before = context_switches_of_threads_named(pid, "stats-writer");
    assert!(coroutines_before.len() >= 2, "may's worker and timer threads are named `coroutines`: {coroutines_before:?}");
    assert_eq!(writer_before.len(), 1, "one stats writer");
    std::thread::sleep(Duration::from_secs(2));
    let coroutines_after = context_switches_of_threads_named(pid, "coroutines");
    let writer_after = context_switches_of_threads_named(pid, "stats-writer");
    assert!(coroutines_after.keys().eq(coroutines_before.keys()), "no coroutine thread started or ended while idle");
    let wake_ups: Vec<u64> = coroutines_after.iter().map(|(thread_id, after)| after - coroutines_before[thread_id]).collect();
    // Twenty per worker in two seconds, with room for a stray one; at may's default a worker
    // wakes two hundred times.
    assert!(wake_ups.iter().all(|&count| count <= 30), "wake-ups per coroutine thread in 2 s of idling: {wake_ups:?}");
    let writer_wake_ups: Vec<u64> = writer_after.iter().map(|(thread_id, after)| after - writer_before[thread_id]).collect();
    // Its tick would be twenty; an hour boundary or the first statistics flush may fall inside.
    assert!(writer_wake_ups.iter().all(|&count| count <= 3), "stats-writer wake-ups in 2 s of idling: {writer_wake_ups:?}");
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

/// Runs the binary with `stdin` piped in (and closed), in `dir`, with no `OCTOPUS_*` variables.
fn run_with_stdin(dir: &Path, arguments: &[&str], stdin: &[u8]) -> Output {
    let mut command = Command::new(BINARY);
    command
        .args(arguments)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OCTOPUS_") {
            command.env_remove(name);
        }
    }
    let mut child = command.spawn().unwrap();
    // A command that fails before reading its input (a bad config, say) closes the pipe first:
    // that is its answer, not a test failure.
    match child.stdin.take().unwrap().write_all(stdin) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(error) => panic!("cannot write the command's input: {error}"),
    }
    child.wait_with_output().unwrap()
}

fn run(dir: &Path, arguments: &[&str]) -> Output {
    run_with_stdin(dir, arguments, b"")
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A config file for `database`, listening where `port` says, in a fresh directory.
fn config_file_for(database: &TestDatabase, port: u16) -> (PathBuf, PathBuf) {
    let dir = temp_dir("cli-config");
    let path = dir.join("config.json");
    let config = json!({
        "server": {"host": "127.0.0.1", "port": port},
        "database": {"type": database.database_type, "path": database.path},
        "log": {"level": "warn"},
    });
    std::fs::write(&path, config.to_string()).unwrap();
    (dir, path)
}

fn login(gateway: &TestGateway, password: &str) -> (u16, Value) {
    let response = json_request(
        gateway.address,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(&json!({"username": "admin", "password": password})),
    );
    (response.status, response.json())
}

fn without_export_time(mut document: Value) -> Value {
    assert!(
        document["exported_at"]
            .as_str()
            .is_some_and(|time| time.ends_with('Z')),
        "{document}"
    );
    document.as_object_mut().unwrap().remove("exported_at");
    document
}

/// Every headless command against a running gateway's database: the password reset ends the
/// sessions and takes effect at the next login, the CLI export is the API's export, an import
/// restores a deleted channel, and the health check follows the gateway up and down.
#[test]
fn headless_admin_commands_work_on_every_database() {
    for database in databases::all() {
        let database_type = database.database_type;
        let mut gateway = TestGateway::start(database);
        let (dir, config_path) = config_file_for(&gateway.database, gateway.address.port());
        let config = config_path.to_str().unwrap();

        let healthy = run(&dir, &["healthcheck", "--config", config]);
        assert_eq!(
            healthy.status.code(),
            Some(0),
            "{database_type}: {}",
            stderr_of(&healthy)
        );

        let token = gateway.login_token();
        let channel = gateway.create_channel(
            &token,
            json!({"name": "cli-channel", "type": "openai_chat", "base_urls": ["http://127.0.0.1:9/v1"], "keys": ["sk-cli-upstream-key-0001"]}),
        );
        gateway.create_group(
            &token,
            json!({"name": "cli-group", "items": [{"channel_id": channel, "model": "m"}]}),
        );

        let too_short = run_with_stdin(&dir, &["reset-password", "--config", config], b"short\n");
        assert_eq!(too_short.status.code(), Some(1), "{database_type}");
        assert!(
            stderr_of(&too_short).contains("at least 8 characters"),
            "{}",
            stderr_of(&too_short)
        );
        let unknown = run_with_stdin(
            &dir,
            &["reset-password", "--config", config, "--username", "root"],
            b"long-enough-password\n",
        );
        assert_eq!(unknown.status.code(), Some(1), "{database_type}");
        assert!(
            stderr_of(&unknown).contains("no admin account named \"root\""),
            "{}",
            stderr_of(&unknown)
        );
        assert_eq!(
            json_request(
                gateway.address,
                "GET",
                "/api/v1/auth/me",
                Some(&token),
                None
            )
            .status,
            200
        );

        let reset = run_with_stdin(
            &dir,
            &["reset-password", "--config", config],
            b"the-new-cli-password\n",
        );
        assert_eq!(
            reset.status.code(),
            Some(0),
            "{database_type}: {}",
            stderr_of(&reset)
        );
        assert!(
            stderr_of(&reset).contains("ended 1 session"),
            "{}",
            stderr_of(&reset)
        );
        assert_eq!(
            json_request(
                gateway.address,
                "GET",
                "/api/v1/auth/me",
                Some(&token),
                None
            )
            .status,
            401,
            "{database_type}"
        );
        assert_eq!(login(&gateway, "admin").0, 401, "{database_type}");
        let (status, body) = login(&gateway, "the-new-cli-password");
        assert_eq!(status, 200, "{database_type}: {body}");
        assert_eq!(body["must_change_password"], false, "{database_type}");
        let token = body["token"].as_str().unwrap().to_string();

        let backup_path = dir.join("backup.json");
        let exported = run(
            &dir,
            &[
                "export",
                "--config",
                config,
                "--output",
                backup_path.to_str().unwrap(),
            ],
        );
        assert_eq!(
            exported.status.code(),
            Some(0),
            "{database_type}: {}",
            stderr_of(&exported)
        );
        let mode = std::fs::metadata(&backup_path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(
            mode, 0o600,
            "{database_type}: the backup holds channel keys in clear"
        );
        let cli_document: Value =
            serde_json::from_slice(&std::fs::read(&backup_path).unwrap()).unwrap();
        assert_eq!(
            cli_document["channels"][0]["keys"][0]["key"], "sk-cli-upstream-key-0001",
            "{database_type}"
        );
        let api_document =
            json_request(gateway.address, "GET", "/api/v1/export", Some(&token), None).json();
        assert_eq!(
            without_export_time(cli_document.clone()),
            without_export_time(api_document),
            "{database_type}"
        );
        let to_stdout = run(&dir, &["export", "--config", config, "--include-stats"]);
        assert_eq!(
            to_stdout.status.code(),
            Some(0),
            "{database_type}: {}",
            stderr_of(&to_stdout)
        );
        let stdout_document: Value = serde_json::from_slice(&to_stdout.stdout).unwrap();
        assert!(
            stdout_document["stats"].is_array(),
            "{database_type}: --include-stats adds the statistics"
        );

        for group in json_request(gateway.address, "GET", "/api/v1/groups", Some(&token), None)
            .json()
            .as_array()
            .unwrap()
        {
            let path = format!("/api/v1/groups/{}", group["id"]);
            assert_eq!(
                json_request(gateway.address, "DELETE", &path, Some(&token), None).status,
                200
            );
        }
        let path = format!("/api/v1/channels/{channel}");
        assert_eq!(
            json_request(gateway.address, "DELETE", &path, Some(&token), None).status,
            200
        );
        let imported = run(
            &dir,
            &["import", "--config", config, backup_path.to_str().unwrap()],
        );
        assert_eq!(
            imported.status.code(),
            Some(0),
            "{database_type}: {}",
            stderr_of(&imported)
        );
        assert!(
            stderr_of(&imported).contains("\"channels\":1"),
            "{}",
            stderr_of(&imported)
        );
        let channels = json_request(
            gateway.address,
            "GET",
            "/api/v1/channels",
            Some(&token),
            None,
        )
        .json();
        assert_eq!(
            channels[0]["name"], "cli-channel",
            "{database_type}: {channels}"
        );
        assert_eq!(channels[0]["id"], channel, "{database_type}: ids are kept");

        gateway
            .gateway
            .take()
            .expect("the gateway is running")
            .shutdown();
        let down = run(&dir, &["healthcheck", "--config", config]);
        assert_eq!(down.status.code(), Some(1), "{database_type}");
        assert!(
            stderr_of(&down).contains("cannot connect"),
            "{}",
            stderr_of(&down)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// `reset-password` on a database no gateway has opened yet creates the account, so a host can
/// be provisioned before its first start; the gateway then does not seed admin/admin.
#[test]
fn reset_password_before_the_first_start_provisions_the_account() {
    let database = databases::sqlite();
    let (dir, config_path) = config_file_for(&database, 8080);
    let config = config_path.to_str().unwrap();
    let reset = run_with_stdin(
        &dir,
        &["reset-password", "--config", config],
        b"provisioned-password\r\n",
    );
    assert_eq!(reset.status.code(), Some(0), "{}", stderr_of(&reset));
    let gateway = TestGateway::start(database);
    assert_eq!(login(&gateway, "admin").0, 401);
    let (status, body) = login(&gateway, "provisioned-password");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["must_change_password"], false);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each command's errors name the file, key or database and the problem, exit 1 and change nothing.
#[test]
fn headless_command_errors_name_the_file_and_the_problem() {
    let dir = temp_dir("cli-errors");
    for command in ["reset-password", "export"] {
        let output = run_with_stdin(
            &dir,
            &[command, "--config", "missing.json"],
            b"long-enough-password\n",
        );
        assert_eq!(output.status.code(), Some(1), "{command}");
        assert!(
            stderr_of(&output).contains("missing.json: the file does not exist"),
            "{}",
            stderr_of(&output)
        );
    }
    assert!(
        !dir.join("missing.json").exists(),
        "the commands never write a config"
    );

    std::fs::write(dir.join("typo.json"), r#"{"database": {"paht": "x.db"}}"#).unwrap();
    let output = run(&dir, &["export", "--config", "typo.json"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr_of(&output).contains("typo.json: database.paht: unknown key"),
        "{}",
        stderr_of(&output)
    );

    std::fs::write(
        dir.join("config.json"),
        r#"{"database": {"path": "nowhere/data.db"}}"#,
    )
    .unwrap();
    let output = run(&dir, &["export", "--config", "config.json"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = stderr_of(&output);
    assert!(stderr.contains("SQLite database nowhere/data.db (database.path in config.json): the file does not exist"), "{stderr}");
    assert!(
        !dir.join("nowhere").exists(),
        "export must not create a database"
    );

    let output = run_with_stdin(&dir, &["reset-password", "--config", "config.json"], b"");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr_of(&output).contains("no new password on stdin"),
        "{}",
        stderr_of(&output)
    );
    let output = run_with_stdin(
        &dir,
        &["reset-password", "--config", "config.json"],
        b"first-line-password\nsecond\n",
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr_of(&output).contains("one line"),
        "{}",
        stderr_of(&output)
    );

    std::fs::write(dir.join("bad-backup.json"), r#"{"format": "octopus-backup", "version": 1, "channels": [{"id": 1, "name": "x", "type": "smtp"}]}"#).unwrap();
    let output = run(
        &dir,
        &["import", "--config", "config.json", "bad-backup.json"],
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("bad-backup.json: channels[0].type \"smtp\" is not a channel type"),
        "{stderr}"
    );
    assert!(
        !dir.join("nowhere").exists(),
        "a refused document opens no database"
    );
    let output = run_with_stdin(
        &dir,
        &["import", "--config", "config.json", "-"],
        b"{not json",
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr_of(&output).contains("stdin: the document is not valid JSON"),
        "{}",
        stderr_of(&output)
    );
    let output = run(&dir, &["import", "--config", "config.json", "absent.json"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr_of(&output).contains("absent.json: cannot read the backup"),
        "{}",
        stderr_of(&output)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `healthcheck --url` exits 1 on a non-200 answer, on a refused connection and on a URL it
/// cannot probe; without a config file it uses the environment, like a container's gateway.
#[test]
fn healthcheck_fails_on_errors_and_uses_the_environment_without_a_config() {
    let dir = temp_dir("cli-health");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        for answer in [
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}",
        ] {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut buffer = [0u8; 1024];
            while !head.windows(4).any(|window| window == b"\r\n\r\n") {
                let read = stream.read(&mut buffer).unwrap();
                assert!(read > 0, "the probe closed before its request head ended");
                head.extend_from_slice(&buffer[..read]);
            }
            assert!(
                head.starts_with(b"GET /healthz HTTP/1.1\r\n"),
                "{}",
                String::from_utf8_lossy(&head)
            );
            stream.write_all(answer.as_bytes()).unwrap();
        }
    });
    let url = format!("http://127.0.0.1:{port}/healthz");
    let unhealthy = run(&dir, &["healthcheck", "--url", &url]);
    assert_eq!(unhealthy.status.code(), Some(1));
    assert!(
        stderr_of(&unhealthy).contains("answered HTTP 503"),
        "{}",
        stderr_of(&unhealthy)
    );
    // No data/config.json here: the port comes from the environment.
    let healthy = Command::new(BINARY)
        .arg("healthcheck")
        .current_dir(&dir)
        .env("OCTOPUS_SERVER_PORT", port.to_string())
        .output()
        .unwrap();
    assert_eq!(healthy.status.code(), Some(0), "{}", stderr_of(&healthy));
    server.join().unwrap();
    assert!(
        !dir.join("data").exists(),
        "healthcheck never writes a config"
    );

    let refused = run(
        &dir,
        &[
            "healthcheck",
            "--url",
            &format!("http://127.0.0.1:{}/healthz", free_port()),
        ],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr_of(&refused).contains("cannot connect"),
        "{}",
        stderr_of(&refused)
    );
    let https = run(&dir, &["healthcheck", "--url", "https://127.0.0.1/healthz"]);
    assert_eq!(https.status.code(), Some(1));
    assert!(
        stderr_of(&https).contains("only http:// URLs"),
        "{}",
        stderr_of(&https)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
