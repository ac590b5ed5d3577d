//! Fetching a channel's model list from its upstream (`POST /api/v1/channels/{id}/sync-models`).

use std::io::Read;
use std::time::Duration;

use crate::protocol::models_list::parse_model_page;
use crate::relay::outbound::channel_format;
use crate::store::entities::{Channel, ChannelType};
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
