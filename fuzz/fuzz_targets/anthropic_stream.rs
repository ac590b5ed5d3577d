//! An upstream's event stream in the anthropic format, arriving in pieces, for one client format
//! (the first byte picks the client, the relay path and the split): usage tracked, then either
//! transcoded for the client and our output decoded again, or collected into one response.
//! Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use octopus::protocol::Format;

fuzz_target!(|data: &[u8]| octopus_fuzz::stream_round_trip(Format::Anthropic, data));
