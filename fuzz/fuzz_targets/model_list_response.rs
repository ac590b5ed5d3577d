//! A provider's model-list answer (model sync): the first input byte picks the channel format,
//! the rest is the body. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use octopus::protocol::models_list::parse_model_page;
use octopus_fuzz::ALL_FORMATS;

fuzz_target!(|data: &[u8]| {
    let [format_byte, body @ ..] = data else {
        return;
    };
    let format = ALL_FORMATS[usize::from(*format_byte) % ALL_FORMATS.len()];
    let _ = parse_model_page(format, body);
});
