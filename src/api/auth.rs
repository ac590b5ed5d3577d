//! Admin authentication: argon2id passwords, bearer session tokens and login throttling.
//!
//! Tokens are 32 random bytes (hex) handed out once; only their SHA-256 is stored, so a database
//! leak does not leak sessions. Changing the password deletes every session of the account.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde_json::json;

use crate::api::body;
use crate::api::error::ApiError;
use crate::api::{store_call, AdminContext};
use crate::http::{Request, Response};
use crate::store::entities::{AdminSession, AdminUser};
use crate::store::{Store, StoreResult};
use crate::util;

/// The account created on first start; its password must be changed.
pub const DEFAULT_ADMIN_USERNAME: &str = "admin";
pub const DEFAULT_ADMIN_PASSWORD: &str = "admin";
const MIN_PASSWORD_LENGTH: usize = 8;

/// Hashes a password into a PHC string with argon2id and a random salt.
pub fn hash_password(password: &str) -> String {
    let mut salt_bytes = [0u8; 16];
    util::os_random_bytes(&mut salt_bytes);
    let salt = SaltString::encode_b64(&salt_bytes).expect("16 bytes make a valid salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters accepts any password")
        .to_string()
}

/// The rules every new admin password follows, from the API or `octopus reset-password`.
pub fn check_new_password(new_password: &str) -> Result<(), String> {
    if new_password.chars().count() < MIN_PASSWORD_LENGTH {
        return Err(format!("the new password must have at least {MIN_PASSWORD_LENGTH} characters"));
    }
    if new_password == DEFAULT_ADMIN_PASSWORD {
        return Err("choose a new password different from the default one".to_string());
    }
    Ok(())
}

/// Stores a checked new password for an account and ends all of its sessions, so tokens issued
/// under the old password die with it. The account's owner chose this password, so it no longer
/// has to be changed. Shared by `POST /api/v1/auth/password` and `octopus reset-password`.
/// Returns how many sessions ended.
pub fn replace_password(store: &mut dyn Store, user_id: i64, new_password: &str) -> StoreResult<u64> {
    let new_hash = hash_password(new_password);
    store.update_admin_password(user_id, &new_hash, false)?;
    store.delete_sessions_of_user(user_id)
}

/// Checks a password against a stored PHC string; a malformed hash never verifies.
pub fn verify_password(password: &str, stored_hash: &str) -> bool {
    PasswordHash::new(stored_hash)
        .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
        .unwrap_or(false)
}

/// Counts failed logins per client address in a sliding window.
#[derive(Default)]
pub struct LoginThrottle {
    failures: HashMap<IpAddr, Vec<Instant>>,
}

impl LoginThrottle {
    /// Seconds until this address may try again, when it is blocked.
    pub fn blocked_for(&mut self, address: IpAddr, max_failures: u32, window: Duration, now: Instant) -> Option<u64> {
        let failures = self.failures.get_mut(&address)?;
        failures.retain(|failed_at| now.duration_since(*failed_at) < window);
        if failures.len() < max_failures as usize {
            return None;
        }
        let oldest = failures.first().copied()?;
        let remaining = window.saturating_sub(now.duration_since(oldest));
        Some(remaining.as_secs().max(1))
    }

    pub fn record_failure(&mut self, address: IpAddr, now: Instant) {
        // Bound the table so a flood of spoofed addresses cannot grow it without limit.
        if self.failures.len() > 10_000 {
            self.failures.clear();
        }
        self.failures.entry(address).or_default().push(now);
    }

    pub fn record_success(&mut self, address: IpAddr) {
        self.failures.remove(&address);
    }
}

/// `POST /api/v1/auth/login` `{username, password}`.
pub fn login(context: &AdminContext, request: &Request) -> Result<Response, ApiError> {
    let address = request.peer.ip();
    let auth_config = &context.config.auth;
    let window = Duration::from_secs(auth_config.login_window_seconds);
    if let Some(retry_after_seconds) = lock_throttle(context).blocked_for(
        address,
        auth_config.max_failed_logins,
        window,
        Instant::now(),
    ) {
        return Err(ApiError::TooManyRequests {
            message: format!("too many failed logins; try again in {retry_after_seconds} s"),
            retry_after_seconds,
        });
    }
    let map = body::json_object(request, &["username", "password"], &[])?;
    let username = body::required_string(&map, "username")?;
    let password = body::required_string(&map, "password")?;
    // Password hashing is deliberately slow CPU work: it runs on a store thread, like every
    // other blocking job, so it never holds up the coroutines sharing this worker.
    let verified = store_call(context, move |store| {
        let user = store.admin_by_username(&username)?;
        Ok(user.filter(|user| verify_password(&password, &user.password_hash)))
    })?;
    let Some(user) = verified else {
        lock_throttle(context).record_failure(address, Instant::now());
        return Err(ApiError::Unauthenticated("wrong username or password".to_string()));
    };
    lock_throttle(context).record_success(address);
    let (token, expires_at) = open_session(context, user.id)?;
    Ok(Response::json(
        200,
        &json!({"token": token, "expires_at": expires_at, "must_change_password": user.must_change_password}),
    ))
}

/// `POST /api/v1/auth/password` `{old_password, new_password}`: ends every session and returns a
/// fresh token, so the caller stays logged in while stolen tokens die.
pub fn change_password(context: &AdminContext, request: &Request, user: &AdminUser) -> Result<Response, ApiError> {
    let map = body::json_object(request, &["old_password", "new_password"], &[])?;
    let old_password = body::required_string(&map, "old_password")?;
    let new_password = body::required_string(&map, "new_password")?;
    if !verify_password_off_worker(context, &old_password, &user.password_hash) {
        return Err(ApiError::Unauthenticated("the old password is wrong".to_string()));
    }
    check_new_password(&new_password).map_err(ApiError::Invalid)?;
    if new_password == old_password {
        return Err(ApiError::Invalid("choose a new password different from the old one".to_string()));
    }
    let user_id = user.id;
    store_call(context, move |store| replace_password(store, user_id, &new_password))?;
    let (token, expires_at) = open_session(context, user_id)?;
    Ok(Response::json(200, &json!({"token": token, "expires_at": expires_at, "must_change_password": false})))
}

/// Checks a password on a store thread (see `login` for why).
fn verify_password_off_worker(context: &AdminContext, password: &str, stored_hash: &str) -> bool {
    let (password, stored_hash) = (password.to_string(), stored_hash.to_string());
    context.store.call(move |_| verify_password(&password, &stored_hash))
}

/// `GET /api/v1/auth/me`: who is logged in.
pub fn me(user: &AdminUser) -> Result<Response, ApiError> {
    Ok(Response::json(200, &json!({"username": user.username, "must_change_password": user.must_change_password})))
}

/// Resolves the bearer token of a request to the admin account.
pub fn authenticate(context: &AdminContext, request: &Request) -> Result<AdminUser, ApiError> {
    let token = request
        .header("authorization")
        .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| ApiError::Unauthenticated("log in first: send Authorization: Bearer <token>".to_string()))?;
    authenticate_token(context, token)
}

/// Checks a session token however it arrived (a header, or `?token=` where a browser cannot set
/// headers, as with `EventSource`).
pub fn authenticate_token(context: &AdminContext, token: &str) -> Result<AdminUser, ApiError> {
    let token_hash = util::sha256_hex(token.as_bytes());
    let now = util::unix_seconds();
    let user = store_call(context, move |store| {
        let Some(session) = store.session_by_token_hash(&token_hash)? else { return Ok(None) };
        if session.expires_at <= now {
            return Ok(None);
        }
        store.admin_by_id(session.user_id)
    })?;
    user.ok_or_else(|| ApiError::Unauthenticated("the token is unknown or has expired; log in again".to_string()))
}

fn open_session(context: &AdminContext, user_id: i64) -> Result<(String, i64), ApiError> {
    let mut token_bytes = [0u8; 32];
    util::os_random_bytes(&mut token_bytes);
    let token = util::hex(&token_bytes);
    let now = util::unix_seconds();
    let expires_at = now + context.config.auth.token_ttl_seconds as i64;
    let session = AdminSession { token_hash: util::sha256_hex(token.as_bytes()), user_id, expires_at, created_at: now };
    store_call(context, move |store| {
        store.delete_expired_sessions(now)?;
        store.create_session(&session)
    })?;
    Ok((token, expires_at))
}

fn lock_throttle(context: &AdminContext) -> std::sync::MutexGuard<'_, LoginThrottle> {
    // A poisoned lock only means another request panicked mid-update; the counts are still usable.
    context.login_throttle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hashes_verify_and_are_salted() {
        let first = hash_password("correct horse");
        let second = hash_password("correct horse");
        assert!(first.starts_with("$argon2id$"));
        assert_ne!(first, second);
        assert!(verify_password("correct horse", &first));
        assert!(!verify_password("wrong horse", &first));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[test]
    fn throttle_blocks_after_the_limit_and_forgets_after_the_window() {
        let mut throttle = LoginThrottle::default();
        let address: IpAddr = "127.0.0.1".parse().unwrap();
        let start = Instant::now();
        let window = Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(throttle.blocked_for(address, 3, window, start), None);
            throttle.record_failure(address, start);
        }
        assert_eq!(throttle.blocked_for(address, 3, window, start + Duration::from_secs(10)), Some(50));
        assert_eq!(throttle.blocked_for(address, 3, window, start + Duration::from_secs(61)), None);
        throttle.record_failure(address, start);
        throttle.record_success(address);
        assert_eq!(throttle.blocked_for(address, 1, window, start), None);
    }
}
