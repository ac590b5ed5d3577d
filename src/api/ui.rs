//! The embedded web panel: the files of `vendor-ui/`, compiled into the binary gzipped by
//! build.rs, served with ETags.

use crate::api::embedded::{self, EmbeddedFile, PANEL_FILES};
use crate::http::{Body, Request, Response};

/// Serves a panel file, `index.html` for `/` and for unknown paths without an extension (so a
/// single-page app can route on the client). Returns None when nothing matches.
pub fn serve(request: &Request) -> Option<Response> {
    if request.method != "GET" && request.method != "HEAD" {
        return None;
    }
    let relative = request.path.trim_start_matches('/');
    let file = match relative {
        "" => panel_file("index.html"),
        path => panel_file(path).or_else(|| {
            let looks_like_route = !path.rsplit('/').next().unwrap_or("").contains('.');
            if looks_like_route { panel_file("index.html") } else { None }
        }),
    }?;
    let cache_control = cache_control_for(file.path);
    if request.header("if-none-match") == Some(file.etag) {
        return Some(Response {
            status: 304,
            headers: vec![
                ("etag".to_string(), file.etag.to_string()),
                ("cache-control".to_string(), cache_control.to_string()),
                ("vary".to_string(), "accept-encoding".to_string()),
            ],
            body: Body::Bytes(Vec::new()),
        });
    }
    let response = embedded::response_for(file, request, content_type_for(file.path));
    Some(response.with_header("etag", file.etag).with_header("cache-control", cache_control))
}

fn panel_file(path: &str) -> Option<&'static EmbeddedFile> {
    PANEL_FILES.binary_search_by(|file| file.path.cmp(path)).ok().map(|index| &PANEL_FILES[index])
}

/// Files under `vendor/` carry their version in the name, so a browser may keep them for a
/// year; everything else (index.html and the app modules) is revalidated with the ETag on each
/// load so that a new binary's panel shows up at once.
fn cache_control_for(path: &str) -> &'static str {
    if path.starts_with("vendor/") { "public, max-age=31536000, immutable" } else { "no-cache" }
}

fn content_type_for(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        "webmanifest" => "application/manifest+json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A bare request as the server would hand it over; built here so the HTTP module needs no test-only constructor.
    fn request(method: &str, path: &str) -> Request {
        Request {
            method: method.to_string(),
            path: path.to_string(),
            query: String::new(),
            headers: Vec::new(),
            body: Vec::new(),
            peer: "127.0.0.1:1".parse().unwrap(),
            client: crate::http::ClientProbe::detached(),
        }
    }

    fn get(path: &str, headers: &[(&str, &str)]) -> Response {
        let mut request = request("GET", path);
        for (name, value) in headers {
            request.headers.push((name.to_string(), value.to_string()));
        }
        serve(&request).expect("the panel serves this path")
    }

    fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
        response.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    fn body_bytes(response: &Response) -> Vec<u8> {
        match &response.body {
            Body::Bytes(bytes) => bytes.clone(),
            _ => panic!("the panel answers with whole bodies"),
        }
    }

    #[test]
    fn index_is_revalidated_and_has_an_etag() {
        let response = get("/", &[]);
        assert_eq!(response.status, 200);
        assert_eq!(header(&response, "content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(header(&response, "cache-control"), Some("no-cache"));
        assert_eq!(header(&response, "vary"), Some("accept-encoding"));
        let etag = header(&response, "etag").expect("an etag").to_string();
        assert!(etag.starts_with('"') && etag.ends_with('"'), "a strong etag: {etag}");
        let again = get("/", &[("if-none-match", &etag)]);
        assert_eq!(again.status, 304);
    }

    #[test]
    fn gzip_only_when_the_client_accepts_it_and_it_round_trips() {
        let plain = get("/index.html", &[]);
        assert_eq!(header(&plain, "content-encoding"), None);
        let compressed = get("/index.html", &[("accept-encoding", "br, gzip;q=0.8")]);
        assert_eq!(header(&compressed, "content-encoding"), Some("gzip"));
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&body_bytes(&compressed)[..]).read_to_end(&mut decoded).unwrap();
        assert_eq!(decoded, body_bytes(&plain));
        let refused = get("/index.html", &[("accept-encoding", "gzip;q=0")]);
        assert_eq!(header(&refused, "content-encoding"), None);
    }

    #[test]
    fn vendor_files_are_cached_long_and_typed() {
        let response = get("/vendor/htm-3.1.1.js", &[]);
        assert_eq!(header(&response, "content-type"), Some("text/javascript; charset=utf-8"));
        assert!(header(&response, "cache-control").unwrap().contains("max-age=31536000"));
        assert_eq!(header(&get("/app/app.css", &[]), "content-type"), Some("text/css; charset=utf-8"));
    }

    #[test]
    fn routes_fall_back_to_index_and_missing_files_do_not() {
        assert_eq!(header(&get("/channels", &[]), "content-type"), Some("text/html; charset=utf-8"));
        assert!(serve(&request("GET", "/missing.js")).is_none());
        assert!(serve(&request("POST", "/")).is_none());
    }

    #[test]
    fn all_panel_assets_fit_the_budget() {
        let total: usize = PANEL_FILES.iter().map(|file| file.length).sum();
        assert!(total <= 300 * 1024, "the panel is {total} bytes; the budget is 300 KB");
    }
}
