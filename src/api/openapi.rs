//! The OpenAPI 3 document of the admin API, served at `/api/v1/openapi.json`.

use crate::http::Response;

/// The document, kept as a file so it reads like the spec it is; a test keeps it in step with
/// the route table.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub fn document_response() -> Response {
    Response::bytes(200, "application/json", DOCUMENT.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;
    use crate::api::routes::ROUTES;

    #[test]
    fn every_route_is_documented_and_every_documented_route_exists() {
        let document: Value = serde_json::from_str(DOCUMENT).expect("the OpenAPI document is valid JSON");
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
        let document: Value = serde_json::from_str(DOCUMENT).unwrap();
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
