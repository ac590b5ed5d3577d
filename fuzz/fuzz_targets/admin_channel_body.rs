//! `POST /api/v1/channels` and `PUT /api/v1/channels/{id}` bodies: with an even first input byte
//! the rest creates a channel, with an odd one it updates a stored channel (three keys, a header,
//! a proxy with a password).
//!
//! Property: a channel the API accepted, shown as the API shows it (keys masked) and sent back as
//! an update, is unchanged: the masked keys keep their secrets, ids and flags. The proxy is left
//! out of what is sent back, as the panel does, because its password is shown as `***`.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use octopus::api::channels::channel_json;
use octopus::fuzz_entry::{channel_create, channel_update};
use octopus::store::entities::{AutoGroup, Channel, ChannelKey, ChannelType};

fn stored_channel() -> Channel {
    let key = |id: i64, key: &str, enabled: bool, remark: &str| ChannelKey {
        id,
        key: key.to_string(),
        enabled,
        remark: remark.to_string(),
    };
    Channel {
        id: 7,
        name: "stored".to_string(),
        channel_type: ChannelType::Anthropic,
        enabled: true,
        base_urls: vec![
            "https://api.example.com/v1".to_string(),
            "http://10.0.0.2:8080".to_string(),
        ],
        keys: vec![
            key(1, "sk-ant-0123456789abcdef", true, "main"),
            key(2, "short", false, ""),
            key(3, "sk-ant-0123xxxxxxxxcdef", true, "same mask as key 1"),
        ],
        models: vec!["claude-a".to_string(), "claude-b".to_string()],
        headers: BTreeMap::from([("x-extra".to_string(), "1".to_string())]),
        proxy: "http://user:secret@proxy.example:3128".to_string(),
        auto_sync: true,
        match_regex: "^claude-".to_string(),
        auto_group: AutoGroup::Exact,
        created_at: 1,
        updated_at: 2,
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, body @ ..] = data else { return };
    let channel = if mode % 2 == 0 {
        let Ok(channel) = channel_create(body) else {
            return;
        };
        channel
    } else {
        let mut channel = stored_channel();
        if channel_update(&mut channel, body).is_err() {
            return;
        }
        channel
    };
    let mut shown = channel_json(&channel);
    shown
        .as_object_mut()
        .expect("a channel is shown as an object")
        .remove("proxy");
    let mut again = channel.clone();
    channel_update(&mut again, shown.to_string().as_bytes())
        .expect("a channel as the API shows it is accepted back");
    assert_eq!(again, channel, "sending a channel back as shown changed it");
});
