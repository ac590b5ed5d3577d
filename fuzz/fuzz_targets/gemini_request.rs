//! A client's request body in the gemini format: parsed into the IR, converted to every upstream
//! format (streamed or not, with image URLs inlined), and each result parsed again and written
//! back. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use octopus::protocol::Format;

fuzz_target!(|data: &[u8]| octopus_fuzz::request_round_trip(Format::Gemini, data));
