//! An upstream's event stream in the antigravity format, arriving in pieces, for one client format
//! (the first byte picks both): usage tracked, transcoded for the client, collected into one
//! response, and the client stream decoded again. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use octopus::protocol::Format;

fuzz_target!(|data: &[u8]| octopus_fuzz::stream_round_trip(Format::Antigravity, data));
