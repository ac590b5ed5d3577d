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

/// Starts `octopus start` in `dir` on 127.0.0.1:`port`, stdout and stderr in `dir/gateway.log`,
/// with `environment` added, and waits until it listens. The price sync at start is pointed at
/// the discard port first, so it stays on loopback.
pub fn start_logged(dir: &Path, port: u16, environment: &[(&str, &str)]) -> RunningBinary {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let mut store = octopus::store::open("sqlite", dir.join("data/data.db").to_str().unwrap()).unwrap();
    store.set_setting("setting.models_dev_url", "\"http://127.0.0.1:9\"").unwrap();
    drop(store);
    let log_file = std::fs::File::create(dir.join("gateway.log")).unwrap();
    let mut command = Command::new(BINARY);
    command
        .arg("start")
        .current_dir(dir)
        .env("OCTOPUS_SERVER_HOST", "127.0.0.1")
        .env("OCTOPUS_SERVER_PORT", port.to_string())
        .env("OCTOPUS_RELAY_PROBE_INTERVAL_SECONDS", "0")
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file);
    for (name, value) in environment {
        command.env(name, value);
    }
    let mut child = RunningBinary(command.spawn().unwrap());
    wait_until_listening(&mut child, format!("127.0.0.1:{port}").parse().unwrap());
    child
}

/// Waits (20 s at most) until the binary accepts connections on `address`, failing at once if
/// it exits first.
pub fn wait_until_listening(child: &mut RunningBinary, address: SocketAddr) {
    let started = Instant::now();
    while std::net::TcpStream::connect(address).is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "the gateway did not start listening");
        assert!(child.0.try_wait().unwrap().is_none(), "the gateway exited early");
        std::thread::sleep(Duration::from_millis(50));
    }
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
