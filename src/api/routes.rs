//! The admin route table and its dispatcher. The table is data so that the OpenAPI test can
//! compare it with the published document.

use serde_json::{json, Value};

use crate::api::error::ApiError;
use crate::api::{api_keys, auth, backup, body, channels, group_trial, groups, logs, openapi, prices, settings, stats, AdminContext};
use crate::http::{Request, Response};
use crate::store::entities::{AdminUser, ChannelType};

/// What a route handler receives.
pub struct RouteCall<'a> {
    pub context: &'a AdminContext,
    pub request: &'a Request,
    /// The value of `{id}` in the pattern, when it has one.
    pub id: Option<i64>,
    /// The logged-in admin, for routes that require one.
    pub user: Option<AdminUser>,
}

type RouteHandler = fn(&RouteCall) -> Result<Response, ApiError>;

/// One route: method, path pattern (`{id}` matches a path segment), whether it needs a login.
pub struct Route {
    pub method: &'static str,
    pub pattern: &'static str,
    pub requires_login: bool,
    handler: RouteHandler,
}

const fn route(method: &'static str, pattern: &'static str, requires_login: bool, handler: RouteHandler) -> Route {
    Route { method, pattern, requires_login, handler }
}

pub static ROUTES: &[Route] = &[
    route("GET", "/healthz", false, |_| Ok(Response::json(200, &json!({"status": "ok"})))),
    route("GET", "/api/v1/openapi.json", false, |call| Ok(openapi::document_response(call.request))),
    route("POST", "/api/v1/auth/login", false, |call| auth::login(call.context, call.request)),
    route("POST", "/api/v1/auth/password", true, |call| auth::change_password(call.context, call.request, logged_in(call))),
    route("GET", "/api/v1/auth/me", true, |call| auth::me(logged_in(call))),
    route("GET", "/api/v1/channel-types", true, |_| Ok(channel_types())),
    route("GET", "/api/v1/channels", true, |call| channels::list(call.context)),
    route("POST", "/api/v1/channels", true, |call| channels::create(call.context, call.request)),
    // Before the `{id}` routes, so "fetch-models" is never read as an id.
    route("POST", "/api/v1/channels/fetch-models", true, |call| channels::fetch_models(call.context, call.request)),
    route("GET", "/api/v1/channels/{id}", true, |call| channels::get(call.context, id(call))),
    route("PUT", "/api/v1/channels/{id}", true, |call| channels::update(call.context, call.request, id(call))),
    route("DELETE", "/api/v1/channels/{id}", true, |call| channels::delete(call.context, id(call))),
    route("POST", "/api/v1/channels/{id}/sync-models", true, |call| channels::sync_models(call.context, id(call))),
    route("POST", "/api/v1/channels/{id}/test", true, |call| channels::test(call.context, call.request, id(call))),
    route("GET", "/api/v1/groups", true, |call| groups::list(call.context)),
    route("POST", "/api/v1/groups", true, |call| groups::create(call.context, call.request)),
    route("GET", "/api/v1/groups/{id}", true, |call| groups::get(call.context, id(call))),
    route("PUT", "/api/v1/groups/{id}", true, |call| groups::update(call.context, call.request, id(call))),
    route("DELETE", "/api/v1/groups/{id}", true, |call| groups::delete(call.context, id(call))),
    route("POST", "/api/v1/groups/{id}/test", true, |call| group_trial::test(call.context, call.request, id(call))),
    route("GET", "/api/v1/api-keys", true, |call| api_keys::list(call.context)),
    route("POST", "/api/v1/api-keys", true, |call| api_keys::create(call.context, call.request)),
    route("GET", "/api/v1/api-keys/{id}", true, |call| api_keys::get(call.context, id(call))),
    route("PUT", "/api/v1/api-keys/{id}", true, |call| api_keys::update(call.context, call.request, id(call))),
    route("DELETE", "/api/v1/api-keys/{id}", true, |call| api_keys::delete(call.context, id(call))),
    route("GET", "/api/v1/stats/summary", true, |call| stats::summary(call.context, call.request)),
    route("GET", "/api/v1/stats/daily", true, |call| stats::daily(call.context, call.request)),
    route("GET", "/api/v1/stats/hourly", true, |call| stats::hourly(call.context, call.request)),
    route("GET", "/api/v1/stats/channels", true, |call| stats::by_channel(call.context, call.request)),
    route("GET", "/api/v1/stats/api-keys", true, |call| stats::by_api_key(call.context, call.request)),
    route("GET", "/api/v1/stats/groups", true, |call| stats::by_group(call.context, call.request)),
    route("GET", "/api/v1/stats/models", true, |call| stats::by_model(call.context, call.request)),
    route("GET", "/api/v1/logs", true, |call| logs::list(call.context, call.request)),
    // Authenticates itself: the token may come as ?token= (EventSource sends no headers).
    route("GET", "/api/v1/logs/tail", false, |call| logs::tail(call.context, call.request)),
    route("GET", "/api/v1/logs/{id}", true, |call| logs::get(call.context, id(call))),
    route("GET", "/api/v1/prices", true, |call| prices::list(call.context, call.request)),
    route("POST", "/api/v1/prices", true, |call| prices::create(call.context, call.request)),
    route("GET", "/api/v1/prices/effective", true, |call| prices::effective(call.context, call.request)),
    route("GET", "/api/v1/prices/sync", true, |call| prices::sync_status(call.context)),
    route("POST", "/api/v1/prices/sync", true, |call| prices::sync_now(call.context)),
    route("PUT", "/api/v1/prices/{id}", true, |call| prices::update(call.context, call.request, id(call))),
    route("DELETE", "/api/v1/prices/{id}", true, |call| prices::delete(call.context, id(call))),
    route("GET", "/api/v1/settings", true, |call| settings::get(call.context)),
    route("PUT", "/api/v1/settings", true, |call| settings::update(call.context, call.request)),
    route("GET", "/api/v1/jobs", true, |call| settings::jobs(call.context)),
    route("GET", "/api/v1/version", true, |_| settings::version()),
    route("GET", "/api/v1/export", true, |call| backup::export(call.context, call.request)),
    route("POST", "/api/v1/import", true, |call| backup::import(call.context, call.request)),
];

/// Finds the route for a request, checks the login when needed and runs it.
pub fn dispatch(context: &AdminContext, request: &Request) -> Result<Response, ApiError> {
    let mut allowed_methods: Vec<&str> = Vec::new();
    for route in ROUTES {
        let Some(raw_id) = match_pattern(route.pattern, &request.path) else { continue };
        allowed_methods.push(route.method);
        if route.method == "GET" {
            allowed_methods.push("HEAD");
        }
        let method_matches = route.method == request.method || (route.method == "GET" && request.method == "HEAD");
        if !method_matches {
            continue;
        }
        let id = raw_id.map(body::path_id).transpose()?;
        let user = if route.requires_login { Some(auth::authenticate(context, request)?) } else { None };
        return (route.handler)(&RouteCall { context, request, id, user });
    }
    if !allowed_methods.is_empty() {
        return Err(ApiError::MethodNotAllowed {
            message: format!("{} is not allowed on {}", request.method, request.path),
            allow: allowed_methods.join(", "),
        });
    }
    Err(ApiError::NotFound(format!("no route {} {}", request.method, request.path)))
}

/// Matches a path against a pattern; on success returns the `{id}` segment if the pattern has one.
fn match_pattern<'a>(pattern: &str, path: &'a str) -> Option<Option<&'a str>> {
    let path = if path.len() > 1 { path.trim_end_matches('/') } else { path };
    let mut pattern_segments = pattern.split('/');
    let mut path_segments = path.split('/');
    let mut id = None;
    loop {
        match (pattern_segments.next(), path_segments.next()) {
            (None, None) => return Some(id),
            // Ids are whole numbers, so `/prices/sync` never reads as price "sync" (a PUT there
            // is then a 405 listing the methods of `/prices/sync`, not a 404 for a missing price).
            (Some("{id}"), Some(segment)) if !segment.is_empty() && segment.bytes().all(|byte| byte.is_ascii_digit()) => id = Some(segment),
            (Some(expected), Some(segment)) if expected == segment => {}
            _ => return None,
        }
    }
}

fn logged_in<'a>(call: &'a RouteCall) -> &'a AdminUser {
    call.user.as_ref().expect("the dispatcher authenticates routes that require a login")
}

fn id(call: &RouteCall) -> i64 {
    call.id.expect("routes with {id} in the pattern always have an id")
}

fn channel_types() -> Response {
    let types: Vec<Value> = ChannelType::ALL
        .iter()
        .map(|channel_type| {
            json!({
                "type": channel_type.as_str(),
                "name": channel_type.display_name(),
                "path": channel_type.path_template(),
                "default_base_url": channel_type.default_base_url(),
            })
        })
        .collect();
    Response::json(200, &Value::Array(types))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_ids_and_trailing_slashes() {
        assert_eq!(match_pattern("/api/v1/channels", "/api/v1/channels"), Some(None));
        assert_eq!(match_pattern("/api/v1/channels", "/api/v1/channels/"), Some(None));
        assert_eq!(match_pattern("/api/v1/channels/{id}", "/api/v1/channels/12"), Some(Some("12")));
        assert_eq!(match_pattern("/api/v1/channels/{id}", "/api/v1/channels"), None);
        assert_eq!(match_pattern("/api/v1/channels/{id}", "/api/v1/channels/1/x"), None);
        assert_eq!(match_pattern("/healthz", "/healthzz"), None);
        assert_eq!(match_pattern("/api/v1/prices/{id}", "/api/v1/prices/sync"), None, "ids are numbers");
        assert_eq!(match_pattern("/api/v1/prices/{id}", "/api/v1/prices/-1"), None);
    }
}
