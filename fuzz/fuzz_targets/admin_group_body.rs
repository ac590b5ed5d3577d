//! `POST /api/v1/groups` and `PUT /api/v1/groups/{id}` bodies: with an even first input byte the
//! rest creates a group, with an odd one it updates a stored group with two items.
//!
//! Property: a group the API accepted, sent back as the API shows it, is unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use octopus::api::groups::group_json;
use octopus::fuzz_entry::{group_create, group_update};
use octopus::store::entities::{Group, GroupItem, GroupMode};

fn stored_group() -> Group {
    Group {
        id: 3,
        name: "stored".to_string(),
        mode: GroupMode::Weighted,
        items: vec![
            GroupItem {
                channel_id: 1,
                model: "a".to_string(),
                priority: 0,
                weight: 5,
            },
            GroupItem {
                channel_id: 2,
                model: "b".to_string(),
                priority: -1,
                weight: 0,
            },
        ],
        max_attempts: 4,
        first_byte_timeout_ms: 1000,
        total_timeout_ms: 0,
        sticky_seconds: 60,
        match_regex: "^a".to_string(),
        created_at: 1,
        updated_at: 2,
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, body @ ..] = data else { return };
    let group = if mode % 2 == 0 {
        let Ok(group) = group_create(body) else {
            return;
        };
        group
    } else {
        let mut group = stored_group();
        if group_update(&mut group, body).is_err() {
            return;
        }
        group
    };
    let mut again = group.clone();
    group_update(&mut again, group_json(&group).to_string().as_bytes())
        .expect("a group as the API shows it is accepted back");
    assert_eq!(again, group, "sending a group back as shown changed it");
});
