//! The OpenAPI 3 document of the admin API, served at `/api/v1/openapi.json`.

use crate::api::embedded::{self, OPENAPI_DOCUMENT};
use crate::http::{Request, Response};

/// The document is kept as `openapi.json` beside this file, so it reads like the spec it is;
/// build.rs embeds it gzipped, and a test keeps it in step with the route table.
pub fn document_response(request: &Request) -> Response {
    embedded::response_for(&OPENAPI_DOCUMENT, request, "application/json")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;
    use crate::api::routes::ROUTES;

    fn document() -> Value {
        serde_json::from_slice(embedded::original_contents(&OPENAPI_DOCUMENT)).expect("the OpenAPI document is valid JSON")
    }

    #[test]
    fn every_route_is_documented_and_every_documented_route_exists() {
        let document = document();
        assert_eq!(document["openapi"], "3.0.3");
        let mut documented = BTreeSet::new();
        for (path, operations) in document["paths"].as_object().unwrap() {
            for method in operations.as_object().unwrap().keys() {
                if method != "parameters" {
                    documented.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        let routed: BTreeSet<(String, String)> =
            ROUTES.iter().map(|route| (route.method.to_string(), route.pattern.to_string())).collect();
        assert_eq!(routed, documented);
    }

    #[test]
    fn public_routes_are_the_ones_documented_without_security() {
        let document = document();
        for route in ROUTES {
            let operation = &document["paths"][route.pattern][route.method.to_lowercase()];
            let public = operation.get("security").map(|security| security == &Value::Array(vec![])).unwrap_or(false);
            // The live tail checks the session itself (it also takes ?token=), so the dispatcher
            // treats it as public although it is not.
            if route.pattern == "/api/v1/logs/tail" {
                continue;
            }
            assert_eq!(public, !route.requires_login, "{} {}", route.method, route.pattern);
        }
    }
}
