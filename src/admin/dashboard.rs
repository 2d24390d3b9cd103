//! The dashboard: one page embedded in the binary, no requests to anywhere but the
//! port that served it (an edge board may have no internet). It logs in with the API
//! credentials and uses the API, which the dashboard's port serves too.

use super::http::Response;

const PAGE: &str = include_str!("dashboard.html");

/// The page for `/` (and `/index.html`); nothing else is a file, so there is no path
/// to traverse.
pub fn page(path: &str) -> Option<Response> {
    match path {
        "" | "/" | "/index.html" => Some(Response::new(200, "text/html; charset=utf-8", PAGE)),
        _ => None,
    }
}
