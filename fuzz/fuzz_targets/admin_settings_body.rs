//! `PUT /api/v1/settings` bodies, applied to the defaults. Property: settings the API accepted,
//! sent back as the API shows them, are unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use octopus::fuzz_entry::settings_update;
use octopus::settings::Settings;

fuzz_target!(|data: &[u8]| {
    let Ok(updated) = settings_update(&Settings::default(), data) else {
        return;
    };
    let again = settings_update(&updated, updated.to_json().to_string().as_bytes())
        .expect("settings as the API shows them are accepted back");
    assert_eq!(
        again, updated,
        "sending the settings back as shown changed them"
    );
});
