//! The config file with environment overrides: the input up to the first NUL byte is the file's
//! text, each line after it one `NAME=value` variable. A config that loads, written out as a file
//! and loaded again without the environment, is the same config.
#![no_main]

use libfuzzer_sys::fuzz_target;
use octopus::config;

fuzz_target!(|data: &[u8]| {
    let (file, environment_text) = match data.iter().position(|&byte| byte == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &[][..]),
    };
    let file = String::from_utf8_lossy(file);
    let environment: Vec<(String, String)> = String::from_utf8_lossy(environment_text)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    let Ok(loaded) = config::from_text(&file, "fuzz.json", &environment) else {
        return;
    };
    let written = serde_json::to_string_pretty(&loaded).expect("a config serializes");
    let reloaded =
        config::from_text(&written, "fuzz.json", &[]).expect("a written config loads again");
    assert_eq!(
        loaded, reloaded,
        "writing the config out and loading it changed it"
    );
});
