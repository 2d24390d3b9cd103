//! The dashboard: a page and its script embedded in the binary, gzipped at build time
//! (`build.rs`) and served as they are with `Content-Encoding: gzip`, so no
//! decompressor is linked in (every browser takes gzip). No requests go anywhere but
//! the port that served it (an edge board may have no internet): the Content Security
//! Policy says so too. It logs in with the API credentials and uses the API, which the
//! dashboard's port serves as well.

use super::http::Response;

const PAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/dashboard.html.gz"));
const SCRIPT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/dashboard.js.gz"));

const POLICY: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'";

/// The file for `path`; nothing else is a file, so there is no path to traverse.
pub fn page(path: &str) -> Option<Response> {
    let (body, content_type) = match path {
        "" | "/" | "/index.html" => (PAGE, "text/html; charset=utf-8"),
        "/dashboard.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        _ => return None,
    };
    let mut response = Response::new(200, content_type, body);
    response.headers.push(("Content-Encoding", "gzip".into()));
    response
        .headers
        .push(("Content-Security-Policy", POLICY.into()));
    response
        .headers
        .push(("X-Content-Type-Options", "nosniff".into()));
    Some(response)
}
