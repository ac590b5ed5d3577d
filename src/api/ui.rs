//! The embedded web panel: static files from `vendor-ui/`, compiled into the binary, served with ETags and gzip.

use std::collections::HashMap;
use std::io::Write;
use std::sync::OnceLock;

use include_dir::{include_dir, Dir, File};

use crate::http::{Body, Request, Response};

static ASSETS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/vendor-ui");

/// What the panel knows about one embedded file, computed once: the files never change while
/// the binary runs, so hashing and compressing them on every request would be wasted work.
struct PreparedFile {
    etag: String,
    /// The gzip form, kept only when it is actually smaller than the original.
    gzipped: Option<Vec<u8>>,
}

/// Serves a panel file, `index.html` for `/` and for unknown paths without an extension (so a
/// single-page app can route on the client). Returns None when nothing matches.
pub fn serve(request: &Request) -> Option<Response> {
    if request.method != "GET" && request.method != "HEAD" {
        return None;
    }
    let relative = request.path.trim_start_matches('/');
    let file = match relative {
        "" => ASSETS.get_file("index.html"),
        path => ASSETS.get_file(path).or_else(|| {
            let looks_like_route = !path.rsplit('/').next().unwrap_or("").contains('.');
            if looks_like_route { ASSETS.get_file("index.html") } else { None }
        }),
    }?;
    let path = file.path().to_str().unwrap_or("");
    let prepared = prepared_file(file);
    let cache_control = cache_control_for(path);
    if request.header("if-none-match") == Some(prepared.etag.as_str()) {
        return Some(Response {
            status: 304,
            headers: vec![
                ("etag".to_string(), prepared.etag.clone()),
                ("cache-control".to_string(), cache_control.to_string()),
                ("vary".to_string(), "accept-encoding".to_string()),
            ],
            body: Body::Bytes(Vec::new()),
        });
    }
    let content_type = content_type_for(path);
    let response = match (&prepared.gzipped, accepts_gzip(request)) {
        (Some(gzipped), true) => Response::bytes(200, content_type, gzipped.clone()).with_header("content-encoding", "gzip"),
        _ => Response::bytes(200, content_type, file.contents().to_vec()),
    };
    Some(response.with_header("etag", &prepared.etag).with_header("cache-control", cache_control).with_header("vary", "accept-encoding"))
}

/// Files under `vendor/` carry their version in the name, so a browser may keep them for a
/// year; everything else (index.html and the app modules) is revalidated with the ETag on each
/// load so that a new binary's panel shows up at once.
fn cache_control_for(path: &str) -> &'static str {
    if path.starts_with("vendor/") { "public, max-age=31536000, immutable" } else { "no-cache" }
}

/// True when the client lists gzip in `accept-encoding` without refusing it with `q=0`.
fn accepts_gzip(request: &Request) -> bool {
    let Some(header) = request.header("accept-encoding") else { return false };
    header.split(',').any(|entry| {
        let mut parts = entry.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let refused = parts.any(|parameter| {
            let parameter = parameter.trim().replace(' ', "");
            parameter == "q=0" || parameter == "q=0.0" || parameter == "q=0.00" || parameter == "q=0.000"
        });
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
    })
}

fn prepared_file(file: &'static File<'static>) -> &'static PreparedFile {
    static PREPARED: OnceLock<HashMap<&'static str, PreparedFile>> = OnceLock::new();
    let prepared = PREPARED.get_or_init(|| {
        // The compressor's state is too big for a request coroutine's small stack, so the one-time
        // preparation runs on an ordinary thread with a full-size stack.
        std::thread::spawn(|| {
            let mut prepared = HashMap::new();
            prepare_directory(&ASSETS, &mut prepared);
            prepared
        })
        .join()
        .expect("preparing the panel files does not panic")
    });
    prepared.get(file.path().to_str().unwrap_or("")).expect("every embedded file is prepared")
}

fn prepare_directory(dir: &'static Dir<'static>, prepared: &mut HashMap<&'static str, PreparedFile>) {
    for entry in dir.entries() {
        match entry {
            include_dir::DirEntry::Dir(subdir) => prepare_directory(subdir, prepared),
            include_dir::DirEntry::File(file) => {
                let path = file.path().to_str().unwrap_or("");
                let etag = format!("\"{}\"", &crate::util::sha256_hex(file.contents())[..16]);
                let gzipped = if is_compressible(path) { gzip(file.contents()).filter(|compressed| compressed.len() < file.contents().len()) } else { None };
                prepared.insert(path, PreparedFile { etag, gzipped });
            }
        }
    }
}

/// Images and fonts are already compressed; text formats shrink by two thirds or more.
fn is_compressible(path: &str) -> bool {
    matches!(path.rsplit('.').next().unwrap_or(""), "html" | "js" | "mjs" | "css" | "json" | "map" | "svg" | "txt" | "webmanifest")
}

fn gzip(contents: &[u8]) -> Option<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(contents).ok()?;
    encoder.finish().ok()
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
        fn total(dir: &Dir) -> usize {
            dir.entries().iter().map(|entry| match entry {
                include_dir::DirEntry::Dir(subdir) => total(subdir),
                include_dir::DirEntry::File(file) => file.contents().len(),
            }).sum()
        }
        assert!(total(&ASSETS) <= 300 * 1024, "the panel is {} bytes; the budget is 300 KB", total(&ASSETS));
    }
}
