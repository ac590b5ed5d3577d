//! An upstream's complete response body in the anthropic format: usage read from it, converted for
//! every client format, and through the IR into each client format and back. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use octopus::protocol::Format;

fuzz_target!(|data: &[u8]| octopus_fuzz::response_round_trip(Format::Anthropic, data));
