//! `GET|PUT /api/v1/settings`: the runtime settings, validated and applied live; plus the job
//! list and the version, which the panel's settings page shows.

use serde_json::json;

use crate::api::error::ApiError;
use crate::api::{body, store_call, AdminContext};
use crate::http::{Request, Response};
use crate::settings::SETTING_NAMES;
use crate::sync::jobs;

pub fn get(context: &AdminContext) -> Result<Response, ApiError> {
    Ok(Response::json(200, &context.settings.get().to_json()))
}

/// Takes any subset of the settings; every value is checked before anything is stored, and a bad
/// one is a 400 naming the field.
pub fn update(context: &AdminContext, request: &Request) -> Result<Response, ApiError> {
    let changes = body::json_object(request, &SETTING_NAMES, &[]).map_err(|error| match error {
        ApiError::Invalid(message) => ApiError::Malformed(message),
        other => other,
    })?;
    let _change = context.settings.begin_change();
    let previous = context.settings.get();
    let updated = previous.with_changes(&changes).map_err(ApiError::Malformed)?;
    let to_store = updated.clone();
    let before = (*previous).clone();
    store_call(context, move |store| to_store.save_changes(&before, store))?;
    let retention_changed =
        updated.log_retention_days != previous.log_retention_days || updated.log_max_rows != previous.log_max_rows;
    let catalogue_moved = updated.models_dev_url != previous.models_dev_url;
    context.settings.set(updated.clone());
    if catalogue_moved {
        context.scheduler.run_soon(jobs::PRICE_SYNC);
    }
    if retention_changed {
        // Pruned within seconds rather than at the next ten-minute pass.
        context.scheduler.run_soon(jobs::PRUNE_LOGS);
    }
    Ok(Response::json(200, &updated.to_json()))
}

pub fn jobs(context: &AdminContext) -> Result<Response, ApiError> {
    Ok(Response::json(200, &context.scheduler.status_json()))
}

pub fn version() -> Result<Response, ApiError> {
    Ok(Response::json(200, &json!({ "version": env!("CARGO_PKG_VERSION"), "name": "octopus" })))
}

