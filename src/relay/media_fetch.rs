//! Downloading images that a client referenced by URL, for upstreams that only take inline bytes
//! (Antigravity). The bytes are checked to be an image type every provider accepts.

use std::collections::HashMap;
use std::io::Read;
use std::time::Duration;

use crate::upstream::client::{UpstreamClient, UpstreamRequest};
use crate::util::base64_encode;

/// The largest image downloaded (providers' own inline limits are around 20 MB).
const MAX_IMAGE_BYTES: u64 = 20 * 1024 * 1024;
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(20);

/// Fetches images for one request; a URL repeated in the conversation is downloaded once.
pub struct ImageFetcher<'a> {
    client: &'a UpstreamClient,
    proxy: Option<String>,
    fetched: HashMap<String, (String, String)>,
}

impl<'a> ImageFetcher<'a> {
    pub fn new(client: &'a UpstreamClient, proxy: Option<String>) -> ImageFetcher<'a> {
        ImageFetcher { client, proxy, fetched: HashMap::new() }
    }

    /// `(media type, base64 data)` of the image at `url`.
    pub fn fetch(&mut self, url: &str) -> Result<(String, String), String> {
        if let Some(found) = self.fetched.get(url) {
            return Ok(found.clone());
        }
        let response = self
            .client
            .send(UpstreamRequest {
                method: "GET".to_string(),
                url: url.to_string(),
                headers: vec![("accept".to_string(), "image/*".to_string())],
                body: Vec::new(),
                proxy: self.proxy.clone(),
                response_head_timeout: Some(DOWNLOAD_TIMEOUT),
            })
            .map_err(|error| format!("the download failed ({error})"))?;
        if !(200..300).contains(&response.status) {
            return Err(format!("the download answered {}", response.status));
        }
        let declared = response
            .headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
            .map(|(_, value)| value.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
        let mut bytes = Vec::new();
        response
            .body
            .take(MAX_IMAGE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|error| format!("the download broke off ({error})"))?;
        if bytes.len() as u64 > MAX_IMAGE_BYTES {
            return Err(format!("the image is larger than {} MiB", MAX_IMAGE_BYTES / (1024 * 1024)));
        }
        let media_type = sniff_image_type(&bytes)
            .map(str::to_string)
            .or(declared.filter(|declared| SUPPORTED_TYPES.contains(&declared.as_str())))
            .ok_or_else(|| "it is not a png, jpeg, gif or webp image".to_string())?;
        let result = (media_type, base64_encode(&bytes));
        self.fetched.insert(url.to_string(), result.clone());
        Ok(result)
    }
}

const SUPPORTED_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

/// The image type from the file's first bytes (servers often send a generic content type).
pub fn sniff_image_type(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_types_are_recognised_by_their_magic_bytes() {
        assert_eq!(sniff_image_type(b"\x89PNG\r\n\x1a\n...."), Some("image/png"));
        assert_eq!(sniff_image_type(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("image/jpeg"));
        assert_eq!(sniff_image_type(b"GIF89a..."), Some("image/gif"));
        assert_eq!(sniff_image_type(b"RIFF\x00\x00\x00\x00WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff_image_type(b"<html>"), None);
    }
}
