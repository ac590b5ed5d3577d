//! The gateway under test as a subprocess: a private temp dir with its config and SQLite file,
//! start and health wait, configuration over the admin API, and teardown that always runs.

use std::fs::File;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::http_client::one_shot;
use crate::mock_upstream::Dialect;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const HEALTH_POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Polling this often adds at most this much to a measured cold start.
const COLD_START_POLL_INTERVAL: Duration = Duration::from_micros(200);
const ADMIN_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// After SIGTERM the gateway gets this long to exit before SIGKILL.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How much of the gateway's stderr to show when something goes wrong.
const LOG_TAIL_BYTES: usize = 4000;

/// A directory removed (with its contents) when dropped.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn create(prefix: &str) -> Result<TempDir, String> {
        let unique = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|since| since.as_nanos())
                .unwrap_or(0)
        );
        let path = std::env::temp_dir().join(unique);
        std::fs::create_dir(&path)
            .map_err(|error| format!("cannot create temp dir {}: {error}", path.display()))?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A running gateway. Dropping it stops the process, then removes its temp dir.
pub struct Gateway {
    // `Drop::drop` runs before the fields are dropped, so the process is gone before its temp
    // dir (config, SQLite file, log) is removed.
    child: Child,
    address: SocketAddr,
    temp_dir: TempDir,
    launch: Launch,
}

/// How the gateway process is started, kept to start it again (`Gateway::cold_starts`).
struct Launch {
    /// A program that runs the gateway in its own process (taskset, valgrind), or nothing.
    prefix: Vec<String>,
    binary: PathBuf,
    config_path: PathBuf,
    environment: Vec<(String, String)>,
    directory: PathBuf,
}

impl Launch {
    /// Starts `binary start --config ...` with stdout and stderr appended to `gateway.log`.
    fn spawn(&self) -> Result<Child, String> {
        let log_path = self.directory.join("gateway.log");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|error| format!("cannot open {}: {error}", log_path.display()))?;
        let log_for_stderr = log.try_clone().map_err(|error| format!("cannot clone log handle: {error}"))?;
        let mut command = match self.prefix.split_first() {
            Some((program, arguments)) => {
                let mut command = Command::new(program);
                command.args(arguments).arg(&self.binary);
                command
            }
            None => Command::new(&self.binary),
        };
        command
            .arg("start")
            .arg("--config")
            .arg(&self.config_path)
            .envs(self.environment.iter().map(|(name, value)| (name, value)))
            .current_dir(&self.directory)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_for_stderr));
        // SAFETY: the closure runs between fork and exec and only calls prctl, which is
        // async-signal-safe. PDEATHSIG kills the gateway if the bench dies without running its
        // destructors (Ctrl-C, kill), so no gateway outlives a run.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command.spawn().map_err(|error| format!("cannot start {}: {error}", self.binary.display()))
    }
}

/// Benchmarks talk only to 127.0.0.1, and a new gateway syncs prices from models.dev as soon
/// as it starts: so before the first start, `octopus import` creates the database with the
/// price sync pointed at the discard port, and no start of the run looks up models.dev.
fn point_price_sync_at_loopback(binary: &Path, config_path: &Path) -> Result<(), String> {
    let document = json!({
        "format": "octopus-backup", "version": 1,
        "channels": [], "groups": [], "api_keys": [], "prices": [],
        "settings": {"models_dev_url": "http://127.0.0.1:9"},
    });
    let mut import = Command::new(binary)
        .arg("import")
        .arg("--config")
        .arg(config_path)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot run {} import: {error}", binary.display()))?;
    let mut stdin = import.stdin.take().ok_or("the import's stdin is not piped")?;
    stdin
        .write_all(document.to_string().as_bytes())
        .map_err(|error| format!("cannot send the settings to {} import: {error}", binary.display()))?;
    drop(stdin);
    let output = import.wait_with_output().map_err(|error| format!("{} import: {error}", binary.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} import of the bench's settings failed ({}): {}",
            binary.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(())
}

impl Gateway {
    /// Writes a config (127.0.0.1, a free port, SQLite in a temp dir, log level warn), starts
    /// `binary start --config ...`, optionally under `taskset -c CPU`, and waits for
    /// `GET /healthz` to answer 200. `environment` is added to the gateway's environment.
    pub fn start(binary: &Path, pin_to_cpu: Option<u32>, environment: &[(&str, &str)]) -> Result<Gateway, String> {
        // taskset execs the gateway, so the child's pid is the gateway's own.
        let prefix = match pin_to_cpu {
            Some(cpu) => vec!["taskset".to_string(), "-c".to_string(), cpu.to_string()],
            None => Vec::new(),
        };
        Gateway::start_under(&prefix, binary, environment, STARTUP_TIMEOUT)
    }

    /// `start` with the gateway run by another program (`prefix`, e.g. taskset or valgrind,
    /// which must run it in its own process so the child's pid stays the gateway's) and a
    /// startup timeout to match (valgrind makes startup many times slower).
    pub fn start_under(prefix: &[String], binary: &Path, environment: &[(&str, &str)], startup_timeout: Duration) -> Result<Gateway, String> {
        let temp_dir = TempDir::create("octopus-bench")?;
        let port = free_port()?;
        let config_path = temp_dir.path().join("config.json");
        let config = json!({
            "server": {"host": "127.0.0.1", "port": port},
            "database": {"type": "sqlite", "path": temp_dir.path().join("data.db")},
            "log": {"level": "warn"},
            // Trusts the TLS mock's test certificate; one more root beside the compiled-in ones.
            "relay": {"extra_ca_file": crate::mock_upstream::TEST_CA_FILE},
        });
        std::fs::write(&config_path, config.to_string())
            .map_err(|error| format!("cannot write {}: {error}", config_path.display()))?;
        point_price_sync_at_loopback(binary, &config_path)?;

        let launch = Launch {
            prefix: prefix.to_vec(),
            binary: binary.to_path_buf(),
            config_path,
            environment: environment.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect(),
            directory: temp_dir.path().to_path_buf(),
        };
        let child = launch.spawn()?;
        let mut gateway = Gateway {
            child,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            temp_dir,
            launch,
        };
        gateway.wait_until_healthy(startup_timeout)?;
        Ok(gateway)
    }

    /// Cold starts: `runs` times, stops the gateway (SIGTERM) and starts it again on the same
    /// database, timing from the spawn to the first `GET /healthz` answered 200 (polled every
    /// 200 µs). The database then holds the run's configuration, statistics and logs, as a
    /// restarted gateway's would; the first admin password was hashed at the first start, so
    /// these times leave argon2 out. The gateway runs again afterwards, with a new pid.
    pub fn cold_starts(&mut self, runs: usize) -> Result<Vec<Duration>, String> {
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            self.stop();
            let started = Instant::now();
            self.child = self.launch.spawn()?;
            loop {
                if let Ok(Some(exit)) = self.child.try_wait() {
                    return Err(format!("the gateway exited during a cold start ({exit}); its log:\n{}", self.log_tail()));
                }
                let health = one_shot(self.address, "GET", "/healthz", None, None, Duration::from_secs(2));
                if matches!(health, Ok(ref response) if response.status == 200) {
                    times.push(started.elapsed());
                    break;
                }
                if started.elapsed() > STARTUP_TIMEOUT {
                    return Err(format!("a cold start did not answer GET /healthz within {STARTUP_TIMEOUT:?}; its log:\n{}", self.log_tail()));
                }
                std::thread::sleep(COLD_START_POLL_INTERVAL);
            }
        }
        Ok(times)
    }

    /// SIGTERM, then SIGKILL after `SHUTDOWN_GRACE`; returns once the process is gone.
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill has no memory preconditions; the pid is our own live child.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + SHUTDOWN_GRACE;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// How the gateway ended if it is no longer running (exit code or signal), for error
    /// messages: a measurement that fails because the gateway died must say so.
    pub fn exit_status(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    /// The end of the gateway's combined stdout and stderr, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read(self.temp_dir.path().join("gateway.log")).unwrap_or_default();
        let tail_start = log.len().saturating_sub(LOG_TAIL_BYTES);
        String::from_utf8_lossy(&log[tail_start..]).into_owned()
    }

    fn wait_until_healthy(&mut self, startup_timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + startup_timeout;
        while Instant::now() < deadline {
            if let Ok(Some(exit)) = self.child.try_wait() {
                return Err(format!(
                    "the gateway exited during startup ({exit}); its log:\n{}",
                    self.log_tail()
                ));
            }
            let health = one_shot(
                self.address,
                "GET",
                "/healthz",
                None,
                None,
                Duration::from_secs(2),
            );
            if matches!(health, Ok(ref response) if response.status == 200) {
                return Ok(());
            }
            std::thread::sleep(HEALTH_POLL_INTERVAL);
        }
        Err(format!(
            "the gateway did not answer GET /healthz with 200 within {startup_timeout:?}; its log:\n{}",
            self.log_tail()
        ))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Asks the kernel for a free port by binding port 0 and releasing it. Another process could
/// take it in between, but on a loopback-only bench box that race is theoretical.
fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|error| format!("cannot find a free port: {error}"))?;
    listener
        .local_addr()
        .map(|address| address.port())
        .map_err(|error| format!("cannot find a free port: {error}"))
}

/// One group the bench routes to: client-facing name, the channel type behind it and the
/// upstream model it asks that channel for.
#[derive(Debug, Clone, Copy)]
pub struct GroupSpec {
    pub group_name: &'static str,
    pub channel: Dialect,
    pub upstream_model: &'static str,
    /// Served by the TLS mock through an https channel instead of the plain one.
    pub over_tls: bool,
}

/// Logs in as the seeded admin, creates one channel to the mock per channel type the groups
/// use (`openai_chat`, `anthropic`, `gemini`; and per type again, over https to `tls_mock`, for
/// groups `over_tls`), one round-robin group per entry of `groups`, and a client API key;
/// returns that key.
pub fn configure(
    gateway: SocketAddr,
    mock_upstream: SocketAddr,
    tls_mock: Option<SocketAddr>,
    groups: &[GroupSpec],
) -> Result<String, String> {
    let login = admin_call(
        gateway,
        "/api/v1/auth/login",
        None,
        &json!({"username": "admin", "password": "admin"}),
    )?;
    let token = string_field(&login, "token", "login")?;

    let mut channel_ids: Vec<((Dialect, bool), Value)> = Vec::new();
    for group in groups {
        let channel_key = (group.channel, group.over_tls);
        if channel_ids.iter().any(|(key, _)| *key == channel_key) {
            continue;
        }
        let (channel_type, base_path) = channel_type_and_base_path(group.channel);
        let (name_prefix, base_url) = match (group.over_tls, tls_mock) {
            (false, _) => ("mock", format!("http://{mock_upstream}{base_path}")),
            (true, Some(tls_mock)) => ("mock-tls", format!("https://{tls_mock}{base_path}")),
            (true, None) => return Err(format!("group {} is served over TLS, but no TLS mock was started", group.group_name)),
        };
        let mut upstream_models: Vec<&str> = Vec::new();
        for other in groups.iter().filter(|other| (other.channel, other.over_tls) == channel_key) {
            if !upstream_models.contains(&other.upstream_model) {
                upstream_models.push(other.upstream_model);
            }
        }
        let channel = admin_call(
            gateway,
            "/api/v1/channels",
            Some(&token),
            &json!({
                "name": format!("{name_prefix}-{channel_type}"),
                "type": channel_type,
                "base_urls": [base_url],
                "keys": ["sk-mock-1", "sk-mock-2"],
                "models": upstream_models,
            }),
        )?;
        let channel_id = channel
            .get("id")
            .cloned()
            .ok_or_else(|| format!("channel creation answered without an id: {channel}"))?;
        channel_ids.push((channel_key, channel_id));
    }

    for group in groups {
        let channel_id = channel_ids
            .iter()
            .find(|(key, _)| *key == (group.channel, group.over_tls))
            .map(|(_, id)| id.clone())
            .expect("a channel was created for every dialect the groups use");
        admin_call(
            gateway,
            "/api/v1/groups",
            Some(&token),
            &json!({
                "name": group.group_name,
                "mode": "round_robin",
                "items": [{"channel_id": channel_id, "model": group.upstream_model, "priority": 0, "weight": 1}],
            }),
        )?;
    }

    let api_key = admin_call(
        gateway,
        "/api/v1/api-keys",
        Some(&token),
        &json!({"name": "bench"}),
    )?;
    string_field(&api_key, "key", "api key creation")
}

/// The gateway's channel type for an upstream dialect, and the path its base URL ends with
/// (the gateway appends `/chat/completions`, `/messages` or `/models/{m}:generateContent`).
fn channel_type_and_base_path(dialect: Dialect) -> (&'static str, &'static str) {
    match dialect {
        Dialect::OpenAiChat => ("openai_chat", "/v1"),
        Dialect::Anthropic => ("anthropic", "/v1"),
        Dialect::Gemini => ("gemini", "/v1beta"),
    }
}

/// Requests the gateway counted and request logs it holds, from its admin API (statistics
/// merged with what is not written yet; logs as written). A gateway that keeps up writes a log for
/// every request it counted, so the two should match once its writer caught up.
pub fn counted_and_logged(gateway: SocketAddr) -> Result<(u64, u64), String> {
    let login = admin_call(gateway, "/api/v1/auth/login", None, &json!({"username": "admin", "password": "admin"}))?;
    let token = string_field(&login, "token", "login")?;
    let get = |path: &str| -> Result<Value, String> {
        let response = one_shot(gateway, "GET", path, Some(&token), None, ADMIN_CALL_TIMEOUT).map_err(|error| format!("GET {path} failed: {error}"))?;
        if response.status != 200 {
            return Err(format!("GET {path} answered {}: {}", response.status, String::from_utf8_lossy(&response.body)));
        }
        serde_json::from_slice(&response.body).map_err(|error| format!("GET {path} answered with a body that is not JSON: {error}"))
    };
    let number = |object: &Value, field: &str| object.get(field).and_then(Value::as_u64).ok_or_else(|| format!("no number `{field}` in {object}"));
    let requests = number(&get("/api/v1/stats/summary")?, "requests")?;
    let logs = number(&get("/api/v1/logs?page_size=1")?, "total")?;
    Ok((requests, logs))
}

/// POSTs JSON to the admin API and returns the parsed answer, or the status and body as error.
fn admin_call(
    gateway: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> Result<Value, String> {
    admin_request(gateway, "POST", path, token, body)
}

/// `admin_call` with another method.
fn admin_request(
    gateway: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> Result<Value, String> {
    let body_bytes = body.to_string().into_bytes();
    let response = one_shot(
        gateway,
        method,
        path,
        token,
        Some(&body_bytes),
        ADMIN_CALL_TIMEOUT,
    )
    .map_err(|error| format!("{method} {path} failed: {error}"))?;
    if !(200..300).contains(&response.status) {
        return Err(format!(
            "{method} {path} answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        ));
    }
    serde_json::from_slice(&response.body)
        .map_err(|error| format!("{method} {path} answered with a body that is not JSON: {error}"))
}

fn string_field(object: &Value, field: &str, call: &str) -> Result<String, String> {
    object
        .get(field)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("{call} answered without a string `{field}`"))
}
