//! The real gateway binary as a child process: started on a loopback port with its output
//! captured in a file, stopped with SIGTERM so that it writes everything, killed if a test ends
//! early.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub const BINARY: &str = env!("CARGO_BIN_EXE_octopus");

/// A started binary; dropping it kills the process.
pub struct RunningBinary(pub Child);

impl Drop for RunningBinary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `octopus start` in `dir` on a loopback port of its own choosing, stdout and stderr in
/// `dir/gateway.log`, with `environment` added, and returns it with the address it listens on.
/// The price sync at start is pointed at the discard port first, so it stays on loopback.
pub fn start_logged(dir: &Path, environment: &[(&str, &str)]) -> (RunningBinary, SocketAddr) {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let mut store = octopus::store::open("sqlite", dir.join("data/data.db").to_str().unwrap()).unwrap();
    store.set_setting("setting.models_dev_url", "\"http://127.0.0.1:9\"").unwrap();
    drop(store);
    let mut command = Command::new(BINARY);
    command.arg("start").current_dir(dir).env("OCTOPUS_RELAY_PROBE_INTERVAL_SECONDS", "0");
    for (name, value) in environment {
        command.env(name, value);
    }
    start_on_any_port(command, &dir.join("gateway.log"))
}

/// Spawns `command` (an `octopus start`) on a free loopback port, with its output in
/// `log_path`, and waits until the binary logs that it listens there.
///
/// Why wait for the log line rather than for the port to answer: a port found free and released
/// can be taken before the binary binds it, by another test's gateway among others. A test would
/// then talk to the wrong gateway, perhaps one that is shutting down. Once the binary says it
/// listens, the port is its own; if it lost the race, it exits saying so and is started again
/// on another port.
pub fn start_on_any_port(mut command: Command, log_path: &Path) -> (RunningBinary, SocketAddr) {
    // The address line is logged at info; a test asking for more detail keeps its level.
    let quieter_than_info = command
        .get_envs()
        .any(|(name, value)| name == "OCTOPUS_LOG_LEVEL" && value.is_some_and(|level| level == "warn" || level == "error"));
    assert!(!quieter_than_info, "the listening address is logged at info level");
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log_file = std::fs::File::create(log_path).unwrap();
        command
            .env("OCTOPUS_SERVER_HOST", "127.0.0.1")
            .env("OCTOPUS_SERVER_PORT", port.to_string())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        let mut child = RunningBinary(command.spawn().unwrap());
        let started = Instant::now();
        loop {
            let log = std::fs::read_to_string(log_path).unwrap_or_default();
            if let Some(address) = listening_address_in(&log) {
                assert_eq!(address.port(), port, "{log}");
                return (child, address);
            }
            if child.0.try_wait().unwrap().is_some() {
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                assert!(log.contains("Address already in use"), "the gateway exited early: {log}");
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "the gateway did not start listening: {log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("five free ports in a row were taken before the gateway could bind them");
}

/// The address in the gateway's "octopus listening on ADDRESS (...)" line, once it is whole.
fn listening_address_in(log: &str) -> Option<SocketAddr> {
    let (_, rest) = log.lines().find_map(|line| line.split_once("octopus listening on "))?;
    // The " (" after the address shows the line was not caught half written.
    rest.split_once(" (")?.0.parse().ok()
}

/// Stops the binary with SIGTERM, waits for it to exit (15 s at most) and returns what it logged.
pub fn stop_and_read_log(child: &mut RunningBinary, dir: &Path) -> String {
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.0.id() as i32, libc::SIGTERM);
    }
    let started = Instant::now();
    while child.0.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(15), "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::read_to_string(dir.join("gateway.log")).unwrap()
}
