//! Downloading images that a client referenced by URL, for upstreams that only take inline bytes
//! (Antigravity), without letting a client aim the gateway at its own network (SSRF).
//!
//! A client controls the URL, so every download is checked before anything connects: the host
//! is resolved once, each address is classified (`classify_address`), and the call goes to the
//! checked addresses only (`UpstreamClient::send_to_addresses`), so a second DNS answer cannot
//! move it (DNS rebinding). Redirects are followed here, one hop at a time, and every hop is
//! checked the same way. Loopback, private, link-local and shared (CGNAT) addresses are refused
//! unless the admin sets `relay.allow_private_media_urls`; cloud metadata endpoints,
//! unspecified, multicast and reserved addresses are refused always. Downloads never go
//! through the channel's proxy: the address check only means something for a connection the
//! gateway makes itself.
//!
//! Channel base URLs are a different matter: the admin sets them, and local models on private
//! addresses are a normal use, so they are not checked (see docs/security.md).

use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use ureq::http::Uri;

use crate::upstream::client::{UpstreamClient, UpstreamRequest, UpstreamResponse};
use crate::util::base64_encode;

/// The most bytes downloaded for one request, all its images together (providers' own inline
/// limits are around 20 MB, and this bounds the memory one request can make the gateway hold).
const MAX_BYTES_PER_REQUEST: u64 = 20 * 1024 * 1024;
/// The longest one image may take, redirects and body included.
const DOWNLOAD_TIME_LIMIT: Duration = Duration::from_secs(20);
/// Redirect hops followed per image.
const MAX_REDIRECTS: usize = 5;
/// Distinct image URLs downloaded per request; more is refused rather than fetched one by one.
const MAX_IMAGES_PER_REQUEST: usize = 32;

/// What an address is, for the media fetcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    /// A public unicast address: always fetched.
    Public,
    /// Loopback, private, link-local, unique-local or CGNAT: the gateway's own network, fetched
    /// only with `relay.allow_private_media_urls`. The text says which kind.
    Private(&'static str),
    /// Never fetched: cloud metadata endpoints, unspecified, multicast, broadcast, reserved.
    Forbidden(&'static str),
}

/// Classifies an address. IPv6 forms that carry an IPv4 address (mapped `::ffff:a.b.c.d`,
/// compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by that address,
/// since the packets may end up there.
pub fn classify_address(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(ipv4) => classify_ipv4(ipv4),
        IpAddr::V6(ipv6) => classify_ipv6(ipv6),
    }
}

fn classify_ipv4(ip: Ipv4Addr) -> AddressClass {
    let [first, second, third, fourth] = ip.octets();
    // The metadata services of AWS, GCP, Azure and others (169.254.169.254) and Alibaba Cloud
    // (100.100.100.200) hand out instance credentials: never, whatever the setting says.
    if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(100, 100, 100, 200) {
        return AddressClass::Forbidden("a cloud metadata address");
    }
    match (first, second, third, fourth) {
        (0, ..) => AddressClass::Forbidden("an unspecified (0.0.0.0/8) address"),
        (127, ..) => AddressClass::Private("a loopback address"),
        (10, ..) => AddressClass::Private("a private (RFC 1918) address"),
        (172, 16..=31, ..) => AddressClass::Private("a private (RFC 1918) address"),
        (192, 168, ..) => AddressClass::Private("a private (RFC 1918) address"),
        (169, 254, ..) => AddressClass::Private("a link-local address"),
        (100, 64..=127, ..) => AddressClass::Private("a shared (CGNAT, 100.64.0.0/10) address"),
        (192, 0, 0, _) => AddressClass::Forbidden("a reserved (192.0.0.0/24) address"),
        (198, 18..=19, ..) => AddressClass::Forbidden("a reserved (benchmarking) address"),
        (224..=239, ..) => AddressClass::Forbidden("a multicast address"),
        (240..=255, ..) => AddressClass::Forbidden("a reserved or broadcast address"),
        _ => AddressClass::Public,
    }
}

fn classify_ipv6(ip: Ipv6Addr) -> AddressClass {
    let segments = ip.segments();
    if ip.is_unspecified() {
        return AddressClass::Forbidden("an unspecified (::) address");
    }
    if ip.is_loopback() {
        return AddressClass::Private("a loopback address");
    }
    if let Some(ipv4) = ip.to_ipv4_mapped() {
        return classify_ipv4(ipv4);
    }
    // IPv4-compatible (::a.b.c.d, deprecated) and NAT64 (64:ff9b::a.b.c.d).
    let embeds_ipv4_at_end =
        segments[..6] == [0, 0, 0, 0, 0, 0] || segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    if embeds_ipv4_at_end {
        return classify_ipv4(Ipv4Addr::new(
            (segments[6] >> 8) as u8,
            segments[6] as u8,
            (segments[7] >> 8) as u8,
            segments[7] as u8,
        ));
    }
    // 6to4: 2002:aabb:ccdd::/48 carries a.b.c.d.
    if segments[0] == 0x2002 {
        return classify_ipv4(Ipv4Addr::new(
            (segments[1] >> 8) as u8,
            segments[1] as u8,
            (segments[2] >> 8) as u8,
            segments[2] as u8,
        ));
    }
    // AWS's IPv6 metadata endpoint lies inside fc00::/7.
    if ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) {
        return AddressClass::Forbidden("a cloud metadata address");
    }
    match segments[0] {
        0xfc00..=0xfdff => AddressClass::Private("a unique local (fc00::/7) address"),
        0xfe80..=0xfebf => AddressClass::Private("a link-local (fe80::/10) address"),
        0xfec0..=0xfeff => AddressClass::Private("a site-local (fec0::/10) address"),
        0xff00..=0xffff => AddressClass::Forbidden("a multicast address"),
        _ => AddressClass::Public,
    }
}

/// Why an address may not be fetched under the setting ("a loopback address, which ..."), or
/// None when it may.
fn refusal(ip: IpAddr, allow_private: bool) -> Option<String> {
    match classify_address(ip) {
        AddressClass::Public => None,
        AddressClass::Private(_) if allow_private => None,
        AddressClass::Private(kind) => Some(format!(
            "{kind}, which the gateway does not download from (the admin can allow it with relay.allow_private_media_urls)"
        )),
        AddressClass::Forbidden(kind) => {
            Some(format!("{kind}, which the gateway never downloads from"))
        }
    }
}

/// The outside world a download needs: name lookups, and one GET sent to fixed addresses.
/// Production uses the upstream client; tests put in a resolver that answers what they like.
pub trait MediaNetwork {
    fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String>;
    /// One GET of `url` to exactly `addresses`, redirects not followed, within `time_left`.
    fn get(
        &self,
        url: &str,
        addresses: Vec<SocketAddr>,
        time_left: Duration,
    ) -> Result<UpstreamResponse, String>;
}

/// The real network, through the shared upstream client (may sockets, DNS off-thread).
pub struct UpstreamMediaNetwork<'a> {
    pub client: &'a UpstreamClient,
}

impl MediaNetwork for UpstreamMediaNetwork<'_> {
    fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        self.client
            .resolve_host(host, port)
            .map_err(|error| error.to_string())
    }

    fn get(
        &self,
        url: &str,
        addresses: Vec<SocketAddr>,
        time_left: Duration,
    ) -> Result<UpstreamResponse, String> {
        let request = UpstreamRequest {
            method: "GET".to_string(),
            url: url.to_string(),
            headers: vec![("accept".to_string(), "image/*".to_string())],
            body: Vec::new(),
            proxy: None,
            response_head_timeout: None,
        };
        self.client
            .send_to_addresses(request, addresses, time_left)
            .map_err(|error| error.to_string())
    }
}

/// Fetches images for one request; a URL repeated in the conversation is downloaded once, and
/// all downloads of the request share one byte budget.
pub struct ImageFetcher<'a> {
    network: Box<dyn MediaNetwork + 'a>,
    allow_private: bool,
    bytes_left: u64,
    fetched: HashMap<String, (String, String)>,
}

impl<'a> ImageFetcher<'a> {
    pub fn new(client: &'a UpstreamClient, allow_private: bool) -> ImageFetcher<'a> {
        ImageFetcher::with_network(Box::new(UpstreamMediaNetwork { client }), allow_private)
    }

    pub fn with_network(
        network: Box<dyn MediaNetwork + 'a>,
        allow_private: bool,
    ) -> ImageFetcher<'a> {
        ImageFetcher {
            network,
            allow_private,
            bytes_left: MAX_BYTES_PER_REQUEST,
            fetched: HashMap::new(),
        }
    }

    /// `(media type, base64 data)` of the image at `url`, or why it could not be had.
    pub fn fetch(&mut self, url: &str) -> Result<(String, String), String> {
        if let Some(found) = self.fetched.get(url) {
            return Ok(found.clone());
        }
        if self.fetched.len() >= MAX_IMAGES_PER_REQUEST {
            return Err(format!(
                "the request refers to more than {MAX_IMAGES_PER_REQUEST} image URLs; send the images inline"
            ));
        }
        let deadline = Instant::now() + DOWNLOAD_TIME_LIMIT;
        let (media_type, bytes) = self.download(url, deadline)?;
        self.bytes_left = self.bytes_left.saturating_sub(bytes.len() as u64);
        let result = (media_type, base64_encode(&bytes));
        self.fetched.insert(url.to_string(), result.clone());
        Ok(result)
    }

    fn download(&self, url: &str, deadline: Instant) -> Result<(String, Vec<u8>), String> {
        let mut current = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let (host, port) = host_and_port(&current)?;
            let addresses = self.checked_addresses(&host, port)?;
            let time_left = deadline.saturating_duration_since(Instant::now());
            if time_left.is_zero() {
                return Err(format!(
                    "the download took longer than {} s",
                    DOWNLOAD_TIME_LIMIT.as_secs()
                ));
            }
            let response = self
                .network
                .get(&current, addresses, time_left)
                .map_err(|error| format!("the download failed ({error})"))?;
            if let Some(location) = redirect_location(&response) {
                current = redirect_target(&current, &location)?;
                continue;
            }
            return self.read_image(response);
        }
        Err(format!(
            "the download was redirected more than {MAX_REDIRECTS} times"
        ))
    }

    /// Resolves `host` once and keeps the addresses the policy allows; none left is a refusal
    /// naming the first address and what it is.
    fn checked_addresses(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let literal = host.parse::<IpAddr>().ok();
        let resolved = match literal {
            Some(ip) => vec![SocketAddr::new(ip, port)],
            None => self
                .network
                .resolve(host, port)
                .map_err(|error| format!("the download failed ({error})"))?,
        };
        let mut first_refusal = None;
        let allowed: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|address| match refusal(address.ip(), self.allow_private) {
                None => true,
                Some(reason) => {
                    first_refusal.get_or_insert((address.ip(), reason));
                    false
                }
            })
            .collect();
        match (allowed.is_empty(), first_refusal) {
            (false, _) => Ok(allowed),
            (true, Some((ip, reason))) if literal.is_some() => {
                Err(format!("refused: {ip} is {reason}"))
            }
            (true, Some((ip, reason))) => {
                Err(format!("refused: {host} resolves to {ip}, {reason}"))
            }
            (true, None) => Err(format!("{host} has no address")),
        }
    }

    fn read_image(&self, response: UpstreamResponse) -> Result<(String, Vec<u8>), String> {
        if !(200..300).contains(&response.status) {
            return Err(format!("the download answered {}", response.status));
        }
        let declared = response.header("content-type")
            .map(|value| {
                value
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        if !declared.starts_with("image/") {
            let shown = if declared.is_empty() {
                "no content type"
            } else {
                declared.as_str()
            };
            return Err(format!("the server sent {shown}, not an image"));
        }
        let limit = self.bytes_left;
        let too_large = || {
            format!(
                "the images of this request are larger than {} MiB together",
                MAX_BYTES_PER_REQUEST / (1024 * 1024)
            )
        };
        if response.declared_length().is_some_and(|length| length > limit) {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        response
            .body
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|error| format!("the download broke off ({error})"))?;
        if bytes.len() as u64 > limit {
            return Err(too_large());
        }
        let media_type = sniff_image_type(&bytes)
            .map(str::to_string)
            .or(Some(declared).filter(|declared| SUPPORTED_TYPES.contains(&declared.as_str())))
            .ok_or_else(|| "it is not a png, jpeg, gif or webp image".to_string())?;
        Ok((media_type, bytes))
    }
}

const SUPPORTED_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

/// The bare host (brackets of an IPv6 literal removed) and port of an http(s) URL.
fn host_and_port(url: &str) -> Result<(String, u16), String> {
    let uri: Uri = url
        .parse()
        .map_err(|_| "it is not a valid URL".to_string())?;
    let default_port = match uri.scheme_str() {
        Some(scheme) if scheme.eq_ignore_ascii_case("https") => 443,
        Some(scheme) if scheme.eq_ignore_ascii_case("http") => 80,
        _ => return Err("only http and https URLs can be downloaded".to_string()),
    };
    let host = uri
        .host()
        .filter(|host| !host.is_empty())
        .ok_or_else(|| "the URL has no host".to_string())?;
    let bare_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok((bare_host, uri.port_u16().unwrap_or(default_port)))
}

fn redirect_location(response: &UpstreamResponse) -> Option<String> {
    matches!(response.status, 301 | 302 | 303 | 307 | 308)
        .then(|| response.header("location").map(str::to_string))
        .flatten()
}

/// The absolute URL a `Location` header points to from `current` (absolute, scheme-relative,
/// absolute-path or relative-path forms).
fn redirect_target(current: &str, location: &str) -> Result<String, String> {
    let location = location.trim();
    let lower = location.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Ok(location.to_string());
    }
    let uri: Uri = current
        .parse()
        .map_err(|_| "it is not a valid URL".to_string())?;
    let scheme = uri.scheme_str().unwrap_or("http");
    if let Some(rest) = location.strip_prefix("//") {
        return Ok(format!("{scheme}://{rest}"));
    }
    let authority = uri
        .authority()
        .map(|authority| authority.as_str())
        .unwrap_or("");
    if location.starts_with('/') {
        return Ok(format!("{scheme}://{authority}{location}"));
    }
    if location.contains(':') && !location.starts_with('.') {
        return Err(format!(
            "the download was redirected to {location:?}, which is not an http or https URL"
        ));
    }
    let path = uri.path();
    let directory = &path[..path.rfind('/').map(|index| index + 1).unwrap_or(0)];
    Ok(format!("{scheme}://{authority}{directory}{location}"))
}

/// The image type from the file's first bytes (servers often send a generic image type).
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
    use std::cell::RefCell;
    use std::io::Cursor;

    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\nrest of the image";

    #[test]
    fn image_types_are_recognised_by_their_magic_bytes() {
        assert_eq!(
            sniff_image_type(b"\x89PNG\r\n\x1a\n...."),
            Some("image/png")
        );
        assert_eq!(
            sniff_image_type(&[0xFF, 0xD8, 0xFF, 0xE0]),
            Some("image/jpeg")
        );
        assert_eq!(sniff_image_type(b"GIF89a..."), Some("image/gif"));
        assert_eq!(
            sniff_image_type(b"RIFF\x00\x00\x00\x00WEBPVP8 "),
            Some("image/webp")
        );
        assert_eq!(sniff_image_type(b"<html>"), None);
    }

    fn class(address: &str) -> AddressClass {
        classify_address(address.parse().unwrap())
    }

    #[test]
    fn public_addresses_are_fetched() {
        for address in [
            "93.184.216.34",
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "192.169.0.1",
            "2606:4700::1111",
            "2001:db8::1",
        ] {
            assert_eq!(class(address), AddressClass::Public, "{address}");
        }
    }

    #[test]
    fn the_gateways_own_networks_are_private() {
        for address in [
            "127.0.0.1",
            "127.255.255.254",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
        ] {
            assert!(
                matches!(class(address), AddressClass::Private(_)),
                "{address}: {:?}",
                class(address)
            );
        }
    }

    #[test]
    fn metadata_unspecified_multicast_and_reserved_are_never_fetched() {
        for address in [
            "169.254.169.254",
            "100.100.100.200",
            "fd00:ec2::254",
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "ff02::1",
        ] {
            assert!(
                matches!(class(address), AddressClass::Forbidden(_)),
                "{address}: {:?}",
                class(address)
            );
        }
    }

    #[test]
    fn ipv6_forms_carrying_ipv4_are_judged_by_the_ipv4_address() {
        assert_eq!(
            class("::ffff:127.0.0.1"),
            AddressClass::Private("a loopback address")
        );
        assert_eq!(
            class("::ffff:169.254.169.254"),
            AddressClass::Forbidden("a cloud metadata address")
        );
        assert_eq!(
            class("::ffff:10.1.2.3"),
            AddressClass::Private("a private (RFC 1918) address")
        );
        assert_eq!(
            class("::127.0.0.1"),
            AddressClass::Private("a loopback address")
        );
        assert_eq!(
            class("64:ff9b::192.168.0.1"),
            AddressClass::Private("a private (RFC 1918) address")
        );
        assert_eq!(
            class("2002:7f00:0001::1"),
            AddressClass::Private("a loopback address")
        );
        assert_eq!(class("::ffff:8.8.8.8"), AddressClass::Public);
    }

    #[test]
    fn the_setting_allows_private_addresses_but_never_forbidden_ones() {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let metadata: IpAddr = "169.254.169.254".parse().unwrap();
        let refused = refusal(loopback, false).unwrap();
        assert!(
            refused.contains("loopback") && refused.contains("relay.allow_private_media_urls"),
            "{refused}"
        );
        assert_eq!(refusal(loopback, true), None);
        assert!(refusal(metadata, true).unwrap().contains("never"));
    }

    #[test]
    fn redirect_locations_resolve_against_the_current_url() {
        let base = "https://img.example.com/a/b/pic.png?x=1";
        assert_eq!(
            redirect_target(base, "http://other.example/x.png").unwrap(),
            "http://other.example/x.png"
        );
        assert_eq!(
            redirect_target(base, "//cdn.example/x.png").unwrap(),
            "https://cdn.example/x.png"
        );
        assert_eq!(
            redirect_target(base, "/root.png").unwrap(),
            "https://img.example.com/root.png"
        );
        assert_eq!(
            redirect_target(base, "next.png").unwrap(),
            "https://img.example.com/a/b/next.png"
        );
        assert!(redirect_target(base, "file:///etc/passwd").is_err());
        assert!(redirect_target(base, "gopher://x").is_err());
    }

    /// Status, headers and body of one canned HTTP answer.
    type CannedAnswer = (u16, Vec<(&'static str, &'static str)>, &'static [u8]);

    /// A network where DNS answers from a table (a different answer on each lookup when the
    /// table says so) and each URL has a canned answer; it records where every GET went.
    struct FakeNetwork {
        dns: HashMap<&'static str, Vec<Vec<&'static str>>>,
        lookups: RefCell<HashMap<String, usize>>,
        answers: HashMap<&'static str, CannedAnswer>,
        sent: RefCell<Vec<(String, Vec<SocketAddr>)>>,
    }

    impl FakeNetwork {
        fn new() -> FakeNetwork {
            FakeNetwork {
                dns: HashMap::new(),
                lookups: RefCell::default(),
                answers: HashMap::new(),
                sent: RefCell::default(),
            }
        }
    }

    impl MediaNetwork for &FakeNetwork {
        fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
            let answers = self
                .dns
                .get(host)
                .ok_or_else(|| format!("cannot resolve {host}"))?;
            let mut lookups = self.lookups.borrow_mut();
            let count = lookups.entry(host.to_string()).or_insert(0);
            let answer = &answers[(*count).min(answers.len() - 1)];
            *count += 1;
            Ok(answer
                .iter()
                .map(|ip| SocketAddr::new(ip.parse().unwrap(), port))
                .collect())
        }

        fn get(
            &self,
            url: &str,
            addresses: Vec<SocketAddr>,
            _time_left: Duration,
        ) -> Result<UpstreamResponse, String> {
            self.sent.borrow_mut().push((url.to_string(), addresses));
            let (status, headers, body) = self
                .answers
                .get(url)
                .ok_or_else(|| format!("no answer for {url}"))?;
            Ok(UpstreamResponse {
                status: *status,
                headers: headers
                    .iter()
                    .map(|(name, value)| {
                        (ureq::http::HeaderName::from_bytes(name.as_bytes()).unwrap(), ureq::http::HeaderValue::from_str(value).unwrap())
                    })
                    .collect(),
                body: Box::new(Cursor::new(body.to_vec())),
            })
        }
    }

    #[test]
    fn a_public_image_is_downloaded_from_the_checked_address() {
        let mut network = FakeNetwork::new();
        network
            .dns
            .insert("img.example", vec![vec!["93.184.216.34"]]);
        network.answers.insert(
            "https://img.example/cat.png",
            (200, vec![("content-type", "image/png")], PNG),
        );
        let mut fetcher = ImageFetcher::with_network(Box::new(&network), false);
        let (media_type, data) = fetcher.fetch("https://img.example/cat.png").unwrap();
        assert_eq!(media_type, "image/png");
        assert_eq!(data, base64_encode(PNG));
        assert_eq!(
            *network.sent.borrow(),
            vec![(
                "https://img.example/cat.png".to_string(),
                vec!["93.184.216.34:443".parse().unwrap()]
            )]
        );
        fetcher.fetch("https://img.example/cat.png").unwrap();
        assert_eq!(
            network.sent.borrow().len(),
            1,
            "a repeated URL is downloaded once"
        );
    }

    #[test]
    fn a_name_resolving_to_a_private_address_is_refused_before_connecting() {
        let mut network = FakeNetwork::new();
        network
            .dns
            .insert("intranet.example", vec![vec!["10.0.0.5"]]);
        let mut fetcher = ImageFetcher::with_network(Box::new(&network), false);
        let error = fetcher.fetch("http://intranet.example/x.png").unwrap_err();
        assert!(
            error.contains("refused") && error.contains("10.0.0.5") && error.contains("RFC 1918"),
            "{error}"
        );
        assert!(network.sent.borrow().is_empty(), "nothing may connect");
        let error = ImageFetcher::with_network(Box::new(&network), false)
            .fetch("http://[::ffff:127.0.0.1]:8080/x.png")
            .unwrap_err();
        assert!(error.contains("loopback"), "{error}");
    }

    #[test]
    fn only_the_allowed_addresses_of_a_mixed_answer_are_used() {
        let mut network = FakeNetwork::new();
        network
            .dns
            .insert("mixed.example", vec![vec!["127.0.0.1", "93.184.216.34"]]);
        network.answers.insert(
            "http://mixed.example/x.png",
            (200, vec![("content-type", "image/png")], PNG),
        );
        ImageFetcher::with_network(Box::new(&network), false)
            .fetch("http://mixed.example/x.png")
            .unwrap();
        assert_eq!(
            network.sent.borrow()[0].1,
            vec!["93.184.216.34:80".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn dns_is_asked_once_per_hop_so_a_rebinding_answer_is_never_used() {
        let mut network = FakeNetwork::new();
        // The first answer is public; a second lookup would get loopback.
        network.dns.insert(
            "rebind.example",
            vec![vec!["93.184.216.34"], vec!["127.0.0.1"]],
        );
        network.answers.insert(
            "http://rebind.example/x.png",
            (200, vec![("content-type", "image/png")], PNG),
        );
        ImageFetcher::with_network(Box::new(&network), false)
            .fetch("http://rebind.example/x.png")
            .unwrap();
        assert_eq!(network.lookups.borrow()["rebind.example"], 1);
        assert_eq!(
            network.sent.borrow()[0].1,
            vec!["93.184.216.34:80".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn every_redirect_hop_is_checked() {
        let mut network = FakeNetwork::new();
        network
            .dns
            .insert("public.example", vec![vec!["93.184.216.34"]]);
        network
            .dns
            .insert("internal.example", vec![vec!["192.168.0.10"]]);
        network.answers.insert(
            "https://public.example/a.png",
            (302, vec![("location", "/b.png")], b""),
        );
        network.answers.insert(
            "https://public.example/b.png",
            (
                301,
                vec![("location", "http://internal.example/secret.png")],
                b"",
            ),
        );
        let error = ImageFetcher::with_network(Box::new(&network), false)
            .fetch("https://public.example/a.png")
            .unwrap_err();
        assert!(
            error.contains("internal.example") && error.contains("192.168.0.10"),
            "{error}"
        );
        let sent: Vec<String> = network
            .sent
            .borrow()
            .iter()
            .map(|(url, _)| url.clone())
            .collect();
        assert_eq!(
            sent,
            [
                "https://public.example/a.png",
                "https://public.example/b.png"
            ],
            "the private hop is never contacted"
        );

        network.answers.insert(
            "https://public.example/meta.png",
            (
                307,
                vec![("location", "http://169.254.169.254/latest/meta-data/")],
                b"",
            ),
        );
        let error = ImageFetcher::with_network(Box::new(&network), true)
            .fetch("https://public.example/meta.png")
            .unwrap_err();
        assert!(
            error.contains("metadata"),
            "even with private addresses allowed: {error}"
        );
    }

    #[test]
    fn redirect_loops_end() {
        let mut network = FakeNetwork::new();
        network
            .dns
            .insert("loop.example", vec![vec!["93.184.216.34"]]);
        network.answers.insert(
            "http://loop.example/x.png",
            (302, vec![("location", "/x.png")], b""),
        );
        let error = ImageFetcher::with_network(Box::new(&network), false)
            .fetch("http://loop.example/x.png")
            .unwrap_err();
        assert!(error.contains("redirected more than 5 times"), "{error}");
        assert_eq!(network.sent.borrow().len(), MAX_REDIRECTS + 1);
    }

    #[test]
    fn answers_that_are_not_images_or_too_large_are_refused() {
        let mut network = FakeNetwork::new();
        network
            .dns
            .insert("img.example", vec![vec!["93.184.216.34"]]);
        network.answers.insert(
            "http://img.example/page",
            (200, vec![("content-type", "text/html")], b"<html>"),
        );
        network
            .answers
            .insert("http://img.example/none", (200, vec![], PNG));
        network.answers.insert(
            "http://img.example/huge",
            (
                200,
                vec![
                    ("content-type", "image/png"),
                    ("content-length", "999999999"),
                ],
                PNG,
            ),
        );
        network.answers.insert(
            "http://img.example/svg",
            (200, vec![("content-type", "image/svg+xml")], b"<svg/>"),
        );
        network.answers.insert(
            "http://img.example/gone",
            (404, vec![("content-type", "image/png")], b""),
        );
        let cases = [
            ("http://img.example/page", "text/html, not an image"),
            ("http://img.example/none", "no content type, not an image"),
            ("http://img.example/huge", "larger than 20 MiB"),
            ("http://img.example/svg", "not a png, jpeg, gif or webp"),
            ("http://img.example/gone", "answered 404"),
            ("ftp://img.example/x.png", "only http and https"),
        ];
        for (url, expected) in cases {
            let error = ImageFetcher::with_network(Box::new(&network), false)
                .fetch(url)
                .unwrap_err();
            assert!(error.contains(expected), "{url}: {error}");
        }
    }

    #[test]
    fn the_byte_budget_is_shared_by_the_images_of_a_request() {
        let mut network = FakeNetwork::new();
        network
            .dns
            .insert("img.example", vec![vec!["93.184.216.34"]]);
        network.answers.insert(
            "http://img.example/1.png",
            (200, vec![("content-type", "image/png")], PNG),
        );
        network.answers.insert(
            "http://img.example/2.png",
            (200, vec![("content-type", "image/png")], PNG),
        );
        let mut fetcher = ImageFetcher::with_network(Box::new(&network), false);
        fetcher.bytes_left = PNG.len() as u64 + 5;
        fetcher.fetch("http://img.example/1.png").unwrap();
        let error = fetcher.fetch("http://img.example/2.png").unwrap_err();
        assert!(error.contains("together"), "{error}");
    }
}
