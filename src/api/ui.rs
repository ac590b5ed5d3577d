//! The embedded web panel: static files from `vendor-ui/`, compiled into the binary.

use std::collections::HashMap;
use std::sync::OnceLock;

use include_dir::{include_dir, Dir};

use crate::http::{Request, Response};

static ASSETS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/vendor-ui");

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
    let etag = etag_of(file);
    if request.header("if-none-match") == Some(etag.as_str()) {
        return Some(Response { status: 304, headers: vec![("etag".to_string(), etag)], body: crate::http::Body::Bytes(Vec::new()) });
    }
    let content_type = content_type_for(file.path().to_str().unwrap_or(""));
    Some(Response::bytes(200, content_type, file.contents().to_vec()).with_header("etag", &etag).with_header("cache-control", "no-cache"))
}

/// The ETag of an embedded file, hashed once: the files never change while the binary runs.
fn etag_of(file: &'static include_dir::File<'static>) -> String {
    static ETAGS: OnceLock<HashMap<&'static str, String>> = OnceLock::new();
    let etags = ETAGS.get_or_init(|| {
        let mut etags = HashMap::new();
        collect_etags(&ASSETS, &mut etags);
        etags
    });
    etags.get(file.path().to_str().unwrap_or("")).cloned().unwrap_or_default()
}

fn collect_etags(dir: &'static Dir<'static>, etags: &mut HashMap<&'static str, String>) {
    for entry in dir.entries() {
        match entry {
            include_dir::DirEntry::Dir(subdir) => collect_etags(subdir, etags),
            include_dir::DirEntry::File(file) => {
                let etag = format!("\"{}\"", &crate::util::sha256_hex(file.contents())[..16]);
                etags.insert(file.path().to_str().unwrap_or(""), etag);
            }
        }
    }
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
        "webmanifest" => "application/manifest+json",
        _ => "application/octet-stream",
    }
}
