//! Model sync: a channel's model list fetched from its upstream, stored, and spread over groups
//! by the channel's `auto_group` (`POST /api/v1/channels/{id}/sync-models` and job `model_sync`).

use std::io::Read;
use std::time::Duration;

use crate::protocol::models_list::parse_model_page;
use crate::relay::outbound::channel_format;
use crate::store::entities::{Channel, ChannelType, Group, GroupItem};
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
        Some(regex::Regex::new(&channel.match_regex).map_err(|error| format!("match_regex is invalid: {error}"))?)
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

/// What one channel's sync changed.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelSyncOutcome {
    /// The channel as stored after the sync.
    pub channel: Channel,
    /// Models the upstream lists now that the channel did not have.
    pub added: Vec<String>,
    /// Models the channel had that the upstream no longer lists.
    pub removed: Vec<String>,
    /// Names of the groups whose items changed, in group id order.
    pub groups_changed: Vec<String>,
}

/// Why a channel could not be synced.
#[derive(Debug)]
pub enum ModelSyncError {
    NoSuchChannel(i64),
    Upstream(String),
    Store(StoreError),
}

impl std::fmt::Display for ModelSyncError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelSyncError::NoSuchChannel(id) => write!(formatter, "no channel with id {id}"),
            ModelSyncError::Upstream(message) => write!(formatter, "model sync failed: {message}"),
            ModelSyncError::Store(error) => write!(formatter, "{error}"),
        }
    }
}

/// Syncs one channel: fetches its models, stores them, removes the group items of models that
/// vanished and adds its models to groups by its `auto_group`. The caller reloads the relay
/// snapshot afterwards (the admin API through `notify_change`, the job directly).
pub fn sync_channel(store: &StorePool, client: &UpstreamClient, channel_id: i64) -> Result<ChannelSyncOutcome, ModelSyncError> {
    let channel = store
        .call(move |store| store.channel_by_id(channel_id))
        .map_err(ModelSyncError::Store)?
        .ok_or(ModelSyncError::NoSuchChannel(channel_id))?;
    // The upstream is asked outside the store thread, so a slow provider never holds a connection.
    let fetched = fetch_channel_models(client, &channel).map_err(ModelSyncError::Upstream)?;
    store
        .call(move |store| -> Result<Result<ChannelSyncOutcome, ModelSyncError>, StoreError> {
            // Read again right before writing, so an admin edit made during the fetch is kept.
            let Some(mut channel) = store.channel_by_id(channel_id)? else {
                return Ok(Err(ModelSyncError::NoSuchChannel(channel_id)));
            };
            let added: Vec<String> = fetched.iter().filter(|model| !channel.models.contains(model)).cloned().collect();
            let removed: Vec<String> = channel.models.iter().filter(|model| !fetched.contains(model)).cloned().collect();
            channel.models = fetched;
            let Some(stored) = store.update_channel(&channel)? else {
                return Ok(Err(ModelSyncError::NoSuchChannel(channel_id)));
            };
            let groups = store.list_groups()?;
            let changed = plan_group_changes(&stored, &removed, &groups);
            let mut groups_changed = Vec::with_capacity(changed.len());
            for group in &changed {
                if store.update_group(group)?.is_some() {
                    groups_changed.push(group.name.clone());
                }
            }
            Ok(Ok(ChannelSyncOutcome { channel: stored, added, removed, groups_changed }))
        })
        .map_err(ModelSyncError::Store)?
}

/// The groups that change after `channel` was synced, with their new items: items of the channel
/// whose model is in `removed` leave, and each of the channel's models joins the groups its
/// `auto_group` selects unless the group already has an item for (channel, model). New items
/// come after the existing ones (priority = highest + 1, weight 1). Every current model is
/// considered, not only the newly listed ones, so a channel saved with models from the panel
/// and then synced gets its groups too; the duplicate check keeps repeated syncs a no-op.
pub fn plan_group_changes(channel: &Channel, removed: &[String], groups: &[Group]) -> Vec<Group> {
    let fuzzy_models: Vec<String> = channel.models.iter().map(|model| model.to_lowercase()).collect();
    let mut changed = Vec::new();
    for group in groups {
        let mut items: Vec<GroupItem> = group
            .items
            .iter()
            .filter(|item| !(item.channel_id == channel.id && removed.contains(&item.model)))
            .cloned()
            .collect();
        let group_regex = match (channel.auto_group.as_str(), group.match_regex.is_empty()) {
            ("regex", false) => match regex::Regex::new(&group.match_regex) {
                Ok(regex) => Some(regex),
                Err(error) => {
                    // The API refuses bad expressions; one from an older import is skipped, not fatal.
                    log::warn!("group {:?} has an invalid match_regex, skipped by auto-group: {error}", group.name);
                    None
                }
            },
            _ => None,
        };
        let group_name_lower = group.name.to_lowercase();
        for (model, model_lower) in channel.models.iter().zip(&fuzzy_models) {
            let selected = match channel.auto_group.as_str() {
                "exact" => group.name == *model,
                "fuzzy" => model_lower.contains(&group_name_lower) || group_name_lower.contains(model_lower.as_str()),
                "regex" => group_regex.as_ref().is_some_and(|regex| regex.is_match(model)),
                _ => false,
            };
            if !selected || items.iter().any(|item| item.channel_id == channel.id && item.model == *model) {
                continue;
            }
            let priority = items.iter().map(|item| item.priority).max().map_or(0, |highest| highest.saturating_add(1));
            items.push(GroupItem { channel_id: channel.id, model: model.clone(), priority, weight: 1 });
        }
        if items != group.items {
            changed.push(Group { items, ..group.clone() });
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::entities::GroupMode;

    fn channel(auto_group: &str, models: &[&str]) -> Channel {
        Channel {
            id: 5,
            name: "c".to_string(),
            channel_type: ChannelType::OpenaiChat,
            enabled: true,
            base_urls: vec!["http://127.0.0.1:1".to_string()],
            keys: Vec::new(),
            models: models.iter().map(|model| model.to_string()).collect(),
            headers: BTreeMap::new(),
            proxy: String::new(),
            auto_sync: true,
            match_regex: String::new(),
            auto_group: auto_group.to_string(),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn group(id: i64, name: &str, match_regex: &str, items: Vec<GroupItem>) -> Group {
        Group {
            id,
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

    fn models_of(groups: &[Group], name: &str) -> Vec<(i64, String, i32)> {
        groups
            .iter()
            .find(|group| group.name == name)
            .map(|group| group.items.iter().map(|item| (item.channel_id, item.model.clone(), item.priority)).collect())
            .unwrap_or_default()
    }

    #[test]
    fn exact_adds_only_to_the_group_named_like_the_model_after_existing_items() {
        let groups = vec![group(1, "gpt-4o", "", vec![item(9, "other", 3)]), group(2, "gpt", "", Vec::new())];
        let changed = plan_group_changes(&channel("exact", &["gpt-4o", "gpt-4o-mini"]), &[], &groups);
        assert_eq!(changed.len(), 1);
        assert_eq!(models_of(&changed, "gpt-4o"), vec![(9, "other".to_string(), 3), (5, "gpt-4o".to_string(), 4)]);
    }

    #[test]
    fn fuzzy_matches_both_ways_ignoring_case() {
        let groups = vec![group(1, "GPT-4o", "", Vec::new()), group(2, "claude-sonnet-4-latest", "", Vec::new())];
        let changed = plan_group_changes(&channel("fuzzy", &["gpt-4o-mini", "claude-sonnet-4", "gemini"]), &[], &groups);
        assert_eq!(models_of(&changed, "GPT-4o"), vec![(5, "gpt-4o-mini".to_string(), 0)]);
        assert_eq!(models_of(&changed, "claude-sonnet-4-latest"), vec![(5, "claude-sonnet-4".to_string(), 0)]);
    }

    #[test]
    fn regex_uses_the_group_expression_and_skips_empty_or_invalid_ones() {
        let groups = vec![group(1, "small", "mini$", Vec::new()), group(2, "none", "", Vec::new()), group(3, "bad", "(", Vec::new())];
        let changed = plan_group_changes(&channel("regex", &["gpt-4o", "gpt-4o-mini", "o4-mini"]), &[], &groups);
        assert_eq!(changed.len(), 1);
        assert_eq!(
            models_of(&changed, "small"),
            vec![(5, "gpt-4o-mini".to_string(), 0), (5, "o4-mini".to_string(), 1)]
        );
    }

    #[test]
    fn vanished_models_leave_and_existing_items_are_never_duplicated() {
        let groups = vec![group(1, "gpt-4o", "", vec![item(5, "gpt-4o", 0), item(5, "gpt-3", 1), item(7, "gpt-3", 2)])];
        let changed = plan_group_changes(&channel("exact", &["gpt-4o"]), &["gpt-3".to_string()], &groups);
        assert_eq!(models_of(&changed, "gpt-4o"), vec![(5, "gpt-4o".to_string(), 0), (7, "gpt-3".to_string(), 2)]);
        let unchanged = plan_group_changes(&channel("exact", &["gpt-4o"]), &[], &changed);
        assert!(unchanged.is_empty());
    }

    #[test]
    fn none_adds_nothing() {
        let groups = vec![group(1, "gpt-4o", "gpt", Vec::new())];
        assert!(plan_group_changes(&channel("none", &["gpt-4o"]), &[], &groups).is_empty());
    }
}
