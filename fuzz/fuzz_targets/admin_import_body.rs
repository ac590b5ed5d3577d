//! `POST /api/v1/import` bodies (a whole backup document). Property: a document the import
//! accepted, exported again (`document_json`, what `GET /api/v1/export` sends), is accepted by
//! the import and describes the same configuration: a backup can always be restored.
#![no_main]

use libfuzzer_sys::fuzz_target;
use octopus::api::backup::document_json;
use octopus::fuzz_entry::import_document;

/// A fixed export time, so both documents carry the same `exported_at`.
const EXPORTED_AT_MS: i64 = 1_700_000_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok((backup, settings)) = import_document(data) else {
        return;
    };
    let exported = document_json(&backup, &settings, EXPORTED_AT_MS);
    let (backup_again, settings_again) = import_document(exported.to_string().as_bytes())
        .expect("an exported document imports again");
    let exported_again = document_json(&backup_again, &settings_again, EXPORTED_AT_MS);
    assert!(
        octopus_fuzz::json_close(&exported, &exported_again),
        "exporting an imported document changed it"
    );
});
