//! Files compiled into the binary by build.rs (the web panel and the OpenAPI document), stored
//! gzipped where that is smaller, and served in whichever encoding the client accepts.

use std::io::Read;
use std::sync::OnceLock;

use crate::http::{Request, Response};

/// One embedded file as build.rs wrote it.
pub struct EmbeddedFile {
    /// The path under its root, `/`-separated (`app/main.js`).
    pub path: &'static str,
    /// A strong ETag over the original contents, quotes included.
    pub etag: &'static str,
    /// The length of the original contents.
    pub length: usize,
    /// True when `stored` is the gzip form; false when it is the original (images, fonts and
    /// anything gzip would not shrink).
    pub gzipped: bool,
    pub stored: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/embedded_files.rs"));

/// A 200 with the file's contents: the stored gzip as is when the client accepts gzip, otherwise
/// the original. The caller adds caching headers; `vary: accept-encoding` is set here because
/// the body depends on it.
pub fn response_for(file: &'static EmbeddedFile, request: &Request, content_type: &str) -> Response {
    let response = if file.gzipped && accepts_gzip(request) {
        Response::bytes(200, content_type, file.stored.to_vec()).with_header("content-encoding", "gzip")
    } else {
        Response::bytes(200, content_type, original_contents(file).to_vec())
    };
    response.with_header("vary", "accept-encoding")
}

/// The original contents of a file. The first call inflates every gzipped file at once and
/// keeps them: only clients that refuse gzip (curl without `--compressed`, say) ever need this.
pub fn original_contents(file: &'static EmbeddedFile) -> &'static [u8] {
    if !file.gzipped {
        return file.stored;
    }
    // Keyed by the entry itself, not its path: panel paths and the OpenAPI document's name come
    // from different roots.
    static INFLATED: OnceLock<Vec<(&'static EmbeddedFile, Vec<u8>)>> = OnceLock::new();
    let inflated = INFLATED.get_or_init(|| {
        // miniz_oxide's inflate state (about 43 KB) is built with `Box::default()`, which an
        // unoptimised build assembles on the stack first; a request coroutine's stack is small,
        // so the one-time work runs on an ordinary thread.
        std::thread::spawn(|| {
            PANEL_FILES
                .iter()
                .chain(std::iter::once(&OPENAPI_DOCUMENT))
                .filter(|file| file.gzipped)
                .map(|file| (file, inflate(file)))
                .collect()
        })
        .join()
        .expect("inflating the embedded files does not panic")
    });
    let found = inflated.iter().find(|(entry, _)| std::ptr::eq(*entry, file));
    found.map(|(_, contents)| contents.as_slice()).expect("every gzipped embedded file is inflated")
}

fn inflate(file: &EmbeddedFile) -> Vec<u8> {
    let mut contents = Vec::with_capacity(file.length);
    flate2::read::GzDecoder::new(file.stored)
        .read_to_end(&mut contents)
        .expect("build.rs wrote valid gzip");
    contents
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gzipped_file_inflates_to_its_recorded_length_and_etag() {
        for file in PANEL_FILES.iter().chain(std::iter::once(&OPENAPI_DOCUMENT)) {
            let contents = original_contents(file);
            assert_eq!(contents.len(), file.length, "{}", file.path);
            let etag = format!("\"{}\"", &crate::util::sha256_hex(contents)[..16]);
            assert_eq!(etag, file.etag, "{}", file.path);
        }
    }

    #[test]
    fn text_files_are_stored_gzipped_and_smaller() {
        let index = PANEL_FILES.iter().find(|file| file.path == "index.html").expect("index.html is embedded");
        assert!(index.gzipped && index.stored.len() < index.length);
        assert!(OPENAPI_DOCUMENT.gzipped && OPENAPI_DOCUMENT.stored.len() * 4 < OPENAPI_DOCUMENT.length);
    }

    #[test]
    fn the_panel_table_is_sorted_for_binary_search() {
        assert!(PANEL_FILES.windows(2).all(|pair| pair[0].path < pair[1].path));
    }
}
