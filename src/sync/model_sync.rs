//! Model sync: fetching a channel's model list from its upstream and applying it to the channel
//! and its groups, for `POST /api/v1/channels/{id}/sync-models` and the scheduled `model_sync` job.
//!
//! Applying a fetched list does three things, in one store call so nothing edits the channel or
//! its groups in between:
//!
//! 1. The channel's `models` become the fetched list.
//! 2. Group items of this channel whose model the upstream no longer lists are removed, because a
//!    request routed to a vanished model can only fail and cost a failover attempt.
//! 3. Models that are new since the last sync are added to groups by the channel's `auto_group`
//!    rule (`exact`, `fuzzy` or `regex`). Only new models are considered: a model the admin took
//!    out of a group by hand stays out, sync after sync.
//!
//! A new item is appended after the group's existing items, with priority one above the group's
//! current highest and weight 1. Groups in failover mode try items in priority order, which the
//! admin arranged on purpose (the trusted channel first, the cheap fallback last); a model that
//! just appeared on some channel must not jump ahead of that order, so it goes last, where it can
//! only help once everything the admin put before it has failed. An item already present for
//! the same channel and model is never added twice.

use std::collections::HashSet;
use std::io::Read;
use std::time::Duration;

use crate::protocol::models_list::parse_model_page;
use crate::relay::outbound::channel_format;
use crate::store::entities::{AutoGroup, Channel, ChannelType, Group, GroupItem};
use crate::store::pool::StorePool;
use crate::store::StoreError;
use crate::upstream::client::{UpstreamClient, UpstreamRequest};
use crate::upstream::endpoint::models_list_request;
use crate::util::percent_encode;

/// Pages followed at most, so a provider that keeps answering "more" cannot loop us forever.
const MAX_PAGES: usize = 50;
const MODEL_LIST_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_MODEL_LIST_BYTES: u64 = 16 * 1024 * 1024;

/// The channel's models as the upstream lists them, filtered by `match_regex`, in listed order
/// without duplicates. Tries each base URL until one answers.
pub fn fetch_channel_models(client: &UpstreamClient, channel: &Channel) -> Result<Vec<String>, String> {
    if channel.channel_type == ChannelType::Antigravity {
        return Err("model sync for Antigravity channels is not supported yet".to_string());
    }
    let key = channel
        .keys
        .iter()
        .find(|key| key.enabled)
        .ok_or_else(|| "the channel has no enabled key to ask with".to_string())?;
    let filter = if channel.match_regex.is_empty() {
        None
    } else {
        Some(regex_lite::Regex::new(&channel.match_regex).map_err(|error| format!("match_regex is invalid: {error}"))?)
    };
    let mut last_error = "the channel has no base URL".to_string();
    for base_url in &channel.base_urls {
        match fetch_all_pages(client, channel, base_url, &key.key) {
            Ok(ids) => {
                let mut seen = std::collections::HashSet::new();
                return Ok(ids
                    .into_iter()
                    .filter(|id| filter.as_ref().is_none_or(|filter| filter.is_match(id)))
                    .filter(|id| seen.insert(id.clone()))
                    .collect());
            }
            Err(error) => last_error = format!("{base_url}: {error}"),
        }
    }
    Err(last_error)
}

fn fetch_all_pages(client: &UpstreamClient, channel: &Channel, base_url: &str, key: &str) -> Result<Vec<String>, String> {
    let (first_url, headers) = models_list_request(channel.channel_type, base_url, key);
    let format = channel_format(channel.channel_type);
    let mut ids = Vec::new();
    let mut url = first_url.clone();
    for _ in 0..MAX_PAGES {
        let response = client
            .send(UpstreamRequest {
                method: "GET".to_string(),
                url: url.clone(),
                headers: headers.clone(),
                body: Vec::new(),
                proxy: (!channel.proxy.is_empty()).then(|| channel.proxy.clone()),
                response_head_timeout: Some(MODEL_LIST_TIMEOUT),
            })
            .map_err(|error| error.to_string())?;
        let status = response.status;
        let mut body = Vec::new();
        response.body.take(MAX_MODEL_LIST_BYTES).read_to_end(&mut body).map_err(|error| error.to_string())?;
        if !(200..300).contains(&status) {
            let detail = crate::protocol::error::parse_upstream_error(format, status, &body).message;
            return Err(format!("the upstream answered {status}: {detail}"));
        }
        let page = parse_model_page(format, &body)?;
        ids.extend(page.ids);
        let Some(next) = page.next_page else { return Ok(ids) };
        let parameter = if channel.channel_type == ChannelType::Gemini { "pageToken" } else { "after_id" };
        let separator = if first_url.contains('?') { '&' } else { '?' };
        url = format!("{first_url}{separator}{parameter}={}", percent_encode(&next));
    }
    Ok(ids)
}

/// What one sync changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncOutcome {
    /// The channel as stored after the sync.
    pub channel: Option<Channel>,
    /// Models listed now that were not before.
    pub added: Vec<String>,
    /// Models listed before that the upstream no longer lists.
    pub removed: Vec<String>,
    /// Names of the groups whose items changed (items added or removed).
    pub groups_changed: Vec<String>,
}

/// Why a sync failed.
#[derive(Debug)]
pub enum SyncError {
    /// There is no channel with this id (deleted meanwhile).
    ChannelMissing(i64),
    /// The upstream could not be asked or refused; the message says which base URL and why.
    Upstream(String),
    Store(StoreError),
}

impl std::fmt::Display for SyncError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncError::ChannelMissing(id) => write!(formatter, "no channel with id {id}"),
            SyncError::Upstream(message) => write!(formatter, "model sync failed: {message}"),
            SyncError::Store(error) => write!(formatter, "{error}"),
        }
    }
}

/// Fetches the channel's models and applies them to the channel and its groups (see the module
/// documentation). The caller reloads the relay snapshot afterwards.
pub fn sync_channel(client: &UpstreamClient, store: &StorePool, channel_id: i64) -> Result<SyncOutcome, SyncError> {
    let channel = store
        .call(move |store| store.channel_by_id(channel_id))
        .map_err(SyncError::Store)?
        .ok_or(SyncError::ChannelMissing(channel_id))?;
    let fetched = fetch_channel_models(client, &channel).map_err(SyncError::Upstream)?;
    store
        .call(move |store| -> Result<SyncOutcome, SyncError> {
            // Read again: the fetch may have taken long enough for an admin edit to land, and
            // writing back the copy from before it would undo that edit.
            let mut channel = store
                .channel_by_id(channel_id)
                .map_err(SyncError::Store)?
                .ok_or(SyncError::ChannelMissing(channel_id))?;
            let groups = store.list_groups().map_err(SyncError::Store)?;
            let added: Vec<String> = fetched.iter().filter(|model| !channel.models.contains(model)).cloned().collect();
            let removed: Vec<String> = channel.models.iter().filter(|model| !fetched.contains(model)).cloned().collect();
            let changed_groups = plan_group_changes(&channel, &fetched, &added, &groups);
            channel.models = fetched;
            let stored = store
                .update_channel(&channel)
                .map_err(SyncError::Store)?
                .ok_or(SyncError::ChannelMissing(channel_id))?;
            let mut groups_changed = Vec::with_capacity(changed_groups.len());
            for group in &changed_groups {
                // A group deleted meanwhile has nothing left to change.
                if store.update_group(group).map_err(SyncError::Store)?.is_some() {
                    groups_changed.push(group.name.clone());
                }
            }
            Ok(SyncOutcome { channel: Some(stored), added, removed, groups_changed })
        })
}

/// The groups that change when `channel` now lists `listed`, of which `new_models` are new:
/// items of vanished models go, new models join the groups the channel's `auto_group` rule
/// picks. Returns only the groups that changed, with their complete new item lists.
pub fn plan_group_changes(channel: &Channel, listed: &[String], new_models: &[String], groups: &[Group]) -> Vec<Group> {
    let listed: HashSet<&str> = listed.iter().map(String::as_str).collect();
    let mut changed = Vec::new();
    for group in groups {
        let mut items: Vec<GroupItem> = group
            .items
            .iter()
            .filter(|item| item.channel_id != channel.id || listed.contains(item.model.as_str()))
            .cloned()
            .collect();
        let mut group_changed = items.len() != group.items.len();
        let group_regex = compiled_group_regex(channel.auto_group, group);
        for model in new_models {
            if !auto_group_matches(channel.auto_group, group, group_regex.as_ref(), model) {
                continue;
            }
            if items.iter().any(|item| item.channel_id == channel.id && &item.model == model) {
                continue;
            }
            let priority = items.iter().map(|item| item.priority).max().map_or(0, |highest| highest.saturating_add(1));
            items.push(GroupItem { channel_id: channel.id, model: model.clone(), priority, weight: 1 });
            group_changed = true;
        }
        if group_changed {
            changed.push(Group { items, ..group.clone() });
        }
    }
    changed
}

/// The group's `match_regex`, compiled, when the rule is `regex` and the pattern is set. A
/// pattern that does not compile (the API refuses those, but a backup or an old row may hold
/// one) matches nothing rather than failing the whole sync.
fn compiled_group_regex(rule: AutoGroup, group: &Group) -> Option<regex_lite::Regex> {
    if rule != AutoGroup::Regex || group.match_regex.is_empty() {
        return None;
    }
    match regex_lite::Regex::new(&group.match_regex) {
        Ok(compiled) => Some(compiled),
        Err(error) => {
            log::warn!("group {:?} has an invalid match_regex, skipped by model sync: {error}", group.name);
            None
        }
    }
}

/// Whether `rule` puts `model` into `group`.
fn auto_group_matches(rule: AutoGroup, group: &Group, group_regex: Option<&regex_lite::Regex>, model: &str) -> bool {
    match rule {
        AutoGroup::None => false,
        AutoGroup::Exact => group.name == model,
        AutoGroup::Fuzzy => {
            let group_name = group.name.to_lowercase();
            let model = model.to_lowercase();
            model.contains(&group_name) || group_name.contains(&model)
        }
        AutoGroup::Regex => group_regex.is_some_and(|compiled| compiled.is_match(model)),
    }
}

/// The scheduled job: syncs every enabled channel with `auto_sync`, going on past a failing one.
/// A disabled channel is skipped: its admin switched it off, often because its key or upstream is
/// broken, and asking that upstream every interval would only add failures. The error names every
/// channel that failed, so the scheduler's status shows which to look at.
pub fn sync_all_auto_channels(client: &UpstreamClient, store: &StorePool) -> Result<String, String> {
    let channels = store.call(|store| store.list_channels()).map_err(|error| error.to_string())?;
    let mut synced = 0usize;
    let mut groups_changed = 0usize;
    let mut failures = Vec::new();
    for channel in channels.iter().filter(|channel| channel.enabled && channel.auto_sync) {
        match sync_channel(client, store, channel.id) {
            Ok(outcome) => {
                synced += 1;
                groups_changed += outcome.groups_changed.len();
            }
            // Deleted between the listing and its turn: nothing to sync, nothing failed.
            Err(SyncError::ChannelMissing(_)) => {}
            Err(error) => failures.push(format!("{} (id {}): {error}", channel.name, channel.id)),
        }
    }
    if failures.is_empty() {
        Ok(format!("synced the models of {synced} channels; {groups_changed} group changes"))
    } else {
        Err(format!(
            "model sync failed for {} of {} channels: {}",
            failures.len(),
            failures.len() + synced,
            failures.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::entities::GroupMode;

    fn channel(auto_group: AutoGroup) -> Channel {
        Channel {
            id: 7,
            name: "upstream".to_string(),
            channel_type: ChannelType::OpenaiChat,
            enabled: true,
            base_urls: Vec::new(),
            keys: Vec::new(),
            models: Vec::new(),
            headers: BTreeMap::new(),
            proxy: String::new(),
            auto_sync: true,
            match_regex: String::new(),
            auto_group,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn group(name: &str, match_regex: &str, items: Vec<GroupItem>) -> Group {
        Group {
            id: 1,
            name: name.to_string(),
            mode: GroupMode::Failover,
            items,
            max_attempts: 0,
            first_byte_timeout_ms: 0,
            total_timeout_ms: 0,
            sticky_seconds: 0,
            match_regex: match_regex.to_string(),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn item(channel_id: i64, model: &str, priority: i32) -> GroupItem {
        GroupItem { channel_id, model: model.to_string(), priority, weight: 1 }
    }

    fn names(models: &[&str]) -> Vec<String> {
        models.iter().map(|model| model.to_string()).collect()
    }

    #[test]
    fn exact_adds_after_the_existing_items_and_never_twice() {
        let groups = vec![group("gpt-4o", "", vec![item(2, "gpt-4o", 0), item(3, "gpt-4o", 5)])];
        let listed = names(&["gpt-4o", "gpt-4o-mini"]);
        let changed = plan_group_changes(&channel(AutoGroup::Exact), &listed, &listed, &groups);
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].items.last(), Some(&item(7, "gpt-4o", 6)));
        assert_eq!(changed[0].items.len(), 3);
        let again = plan_group_changes(&channel(AutoGroup::Exact), &listed, &listed, &changed);
        assert!(again.is_empty(), "a second sync must not add a duplicate: {again:?}");
    }

    #[test]
    fn fuzzy_matches_either_way_ignoring_case() {
        let groups = vec![group("GPT-4o", "", Vec::new()), group("claude", "", Vec::new())];
        let listed = names(&["gpt-4o-2024-08-06", "gpt"]);
        let changed = plan_group_changes(&channel(AutoGroup::Fuzzy), &listed, &listed, &groups);
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].items, vec![item(7, "gpt-4o-2024-08-06", 0), item(7, "gpt", 1)]);
    }

    #[test]
    fn regex_uses_the_group_pattern_and_none_adds_nothing() {
        let groups = vec![group("fast", "-mini$", Vec::new()), group("broken", "([", Vec::new())];
        let listed = names(&["gpt-4o", "gpt-4o-mini"]);
        let changed = plan_group_changes(&channel(AutoGroup::Regex), &listed, &listed, &groups);
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].items, vec![item(7, "gpt-4o-mini", 0)]);
        assert!(plan_group_changes(&channel(AutoGroup::None), &listed, &listed, &groups).is_empty());
    }

    /// The pattern language is regex-lite's: the usual syntax (anchors, classes, alternation,
    /// repetition counts, case-insensitive flags) on ASCII model ids. Unicode classes are refused
    /// when a pattern is saved (`api::groups::valid_match_regex`), and here match nothing.
    #[test]
    fn regex_patterns_use_the_usual_syntax_on_model_ids() {
        let groups = vec![
            group("sonnets", "(?i)^claude-.*sonnet", Vec::new()),
            group("dated", r"-\d{4}-\d{2}-\d{2}$|-\d{8}$", Vec::new()),
            group("small", r"\b(mini|nano|flash)\b", Vec::new()),
            group("letters", r"\p{L}", Vec::new()),
        ];
        let listed = names(&["Claude-3-7-SONNET-20250219", "gpt-4o-2024-08-06", "gpt-4.1-nano", "gemini-2.0-flash-lite", "gpt-4o"]);
        let changed = plan_group_changes(&channel(AutoGroup::Regex), &listed, &listed, &groups);
        let members = |name: &str| -> Vec<String> {
            changed.iter().find(|group| group.name == name).map(|group| group.items.iter().map(|item| item.model.clone()).collect()).unwrap_or_default()
        };
        assert_eq!(members("sonnets"), ["Claude-3-7-SONNET-20250219"]);
        assert_eq!(members("dated"), ["Claude-3-7-SONNET-20250219", "gpt-4o-2024-08-06"]);
        assert_eq!(members("small"), ["gpt-4.1-nano", "gemini-2.0-flash-lite"]);
        assert!(members("letters").is_empty());
    }

    #[test]
    fn vanished_models_leave_only_this_channels_items() {
        let groups = vec![group("smart", "", vec![item(7, "old", 0), item(2, "old", 1), item(7, "kept", 2)])];
        let changed = plan_group_changes(&channel(AutoGroup::None), &names(&["kept"]), &[], &groups);
        assert_eq!(changed[0].items, vec![item(2, "old", 1), item(7, "kept", 2)]);
    }
}
