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

/// How many failed logins are allowed within one window, per client address and per username.
#[derive(Clone, Copy, Debug)]
pub struct ThrottleLimits {
    pub per_address: u32,
    pub per_username: u32,
    pub window: Duration,
}

/// Whose failures a count belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ThrottleKey {
    Address(IpAddr),
    Username(String),
}

/// At most this many addresses and usernames are tracked; see `record_failure`.
const MAX_TRACKED: usize = 10_000;
/// Usernames are tracked by at most this many bytes, so a huge made-up name costs no memory.
const MAX_TRACKED_USERNAME_BYTES: usize = 128;

/// Counts failed logins in a sliding window, per client address and per username. Pure: the
/// caller passes the time in, so the tests step a clock of their own.
///
/// The address limit stops one machine guessing; the username limit stops guessing spread over
/// many addresses. The username limit also lets anyone keep that account locked out by failing
/// on purpose, which is why it is higher than the address limit and why `server.admin_listen`
/// on a private address is the real protection for an exposed gateway.
#[derive(Default)]
pub struct LoginThrottle {
    failures: HashMap<ThrottleKey, Vec<Instant>>,
}

impl LoginThrottle {
    /// Seconds until a login for `username` from `address` may be tried again, when either is
    /// blocked (the longer wait of the two).
    pub fn blocked_for(&mut self, address: IpAddr, username: &str, limits: ThrottleLimits, now: Instant) -> Option<u64> {
        let by_address = self.blocked_key_for(&ThrottleKey::Address(address), limits.per_address, limits.window, now);
        let by_username = self.blocked_key_for(&username_key(username), limits.per_username, limits.window, now);
        by_address.max(by_username)
    }

    fn blocked_key_for(&mut self, key: &ThrottleKey, max_failures: u32, window: Duration, now: Instant) -> Option<u64> {
        let failures = self.failures.get_mut(key)?;
        failures.retain(|failed_at| now.saturating_duration_since(*failed_at) < window);
        if failures.len() < max_failures as usize {
            return None;
        }
        // Only the newest `max_failures` matter: the wait ends when the oldest of them leaves.
        let first_counted = failures[failures.len() - max_failures as usize];
        let remaining = window.saturating_sub(now.saturating_duration_since(first_counted));
        Some(remaining.as_secs().max(1))
    }

    /// Counts a failure for both the address and the username. The table is bounded: when it
    /// is full, expired entries go first, and if that is not enough everything is forgotten
    /// (a flood of made-up addresses or names must not grow memory without limit).
    pub fn record_failure(&mut self, address: IpAddr, username: &str, window: Duration, now: Instant) {
        if self.failures.len() >= MAX_TRACKED {
            self.failures.retain(|_, failures| failures.last().is_some_and(|last| now.saturating_duration_since(*last) < window));
            if self.failures.len() >= MAX_TRACKED {
                self.failures.clear();
            }
        }
        for key in [ThrottleKey::Address(address), username_key(username)] {
            let failures = self.failures.entry(key).or_default();
            failures.push(now);
            // Older failures than the largest limit could ever need are dropped as they come.
            if failures.len() > 1_000 {
                failures.remove(0);
            }
        }
    }

    /// A successful login clears the address's and the username's failures.
    pub fn record_success(&mut self, address: IpAddr, username: &str) {
        self.failures.remove(&ThrottleKey::Address(address));
        self.failures.remove(&username_key(username));
    }
}

fn username_key(username: &str) -> ThrottleKey {
    let mut end = username.len().min(MAX_TRACKED_USERNAME_BYTES);
    while !username.is_char_boundary(end) {
        end -= 1;
    }
    ThrottleKey::Username(username[..end].to_string())
}

/// `POST /api/v1/auth/login` `{username, password}`.
pub fn login(context: &AdminContext, request: &Request) -> Result<Response, ApiError> {
    let address = request.peer.ip();
    let auth_config = &context.config.auth;
    let limits = ThrottleLimits {
        per_address: auth_config.max_failed_logins,
        per_username: auth_config.max_failed_logins_per_user,
        window: Duration::from_secs(auth_config.login_window_seconds),
    };
    let map = body::json_object(request, &["username", "password"], &[])?;
    let username = body::required_string(&map, "username")?;
    let password = body::required_string(&map, "password")?;
    if let Some(retry_after_seconds) = lock_throttle(context).blocked_for(address, &username, limits, Instant::now()) {
        return Err(ApiError::TooManyRequests {
            message: format!("too many failed logins; try again in {retry_after_seconds} s"),
            retry_after_seconds,
        });
    }
    // Password hashing is deliberately slow CPU work: it runs on a store thread, like every
    // other blocking job, so it never holds up the coroutines sharing this worker.
    let throttled_username = username.clone();
    let verified = store_call(context, move |store| {
        let user = store.admin_by_username(&username)?;
        Ok(user.filter(|user| verify_password(&password, &user.password_hash)))
    })?;
    let Some(user) = verified else {
        lock_throttle(context).record_failure(address, &throttled_username, limits.window, Instant::now());
        return Err(ApiError::Unauthenticated("wrong username or password".to_string()));
    };
    lock_throttle(context).record_success(address, &throttled_username);
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

    fn limits(per_address: u32, per_username: u32) -> ThrottleLimits {
        ThrottleLimits { per_address, per_username, window: Duration::from_secs(900) }
    }

    #[test]
    fn an_address_is_blocked_after_its_limit_and_freed_after_the_window() {
        let mut throttle = LoginThrottle::default();
        let address: IpAddr = "192.0.2.1".parse().unwrap();
        let limits = limits(5, 100);
        let start = Instant::now();
        for failure_index in 0..5 {
            assert_eq!(throttle.blocked_for(address, "admin", limits, start), None, "failure {failure_index}");
            throttle.record_failure(address, &format!("user{failure_index}"), limits.window, start + Duration::from_secs(failure_index));
        }
        // Five failures at 0..4 s: blocked until the first leaves the 900 s window.
        assert_eq!(throttle.blocked_for(address, "anyone", limits, start + Duration::from_secs(10)), Some(890));
        assert_eq!(throttle.blocked_for(address, "anyone", limits, start + Duration::from_secs(899)), Some(1));
        assert_eq!(throttle.blocked_for(address, "anyone", limits, start + Duration::from_secs(900)), None, "one failure left the window");
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(throttle.blocked_for(other, "anyone", limits, start + Duration::from_secs(10)), None, "other addresses are not affected");
    }

    #[test]
    fn a_username_is_blocked_after_failures_from_many_addresses() {
        let mut throttle = LoginThrottle::default();
        let limits = limits(5, 3);
        let start = Instant::now();
        for address_index in 1..=3u8 {
            let address = IpAddr::from([198, 51, 100, address_index]);
            assert_eq!(throttle.blocked_for(address, "admin", limits, start), None);
            throttle.record_failure(address, "admin", limits.window, start);
        }
        let fresh_address = IpAddr::from([203, 0, 113, 9]);
        assert_eq!(throttle.blocked_for(fresh_address, "admin", limits, start + Duration::from_secs(60)), Some(840));
        assert_eq!(throttle.blocked_for(fresh_address, "someone-else", limits, start + Duration::from_secs(60)), None);
        assert_eq!(throttle.blocked_for(fresh_address, "admin", limits, start + Duration::from_secs(900)), None);
    }

    #[test]
    fn the_longer_of_the_two_waits_is_reported_and_success_clears_both() {
        let mut throttle = LoginThrottle::default();
        let address: IpAddr = "::1".parse().unwrap();
        let limits = limits(2, 2);
        let start = Instant::now();
        throttle.record_failure(address, "admin", limits.window, start);
        throttle.record_failure(address, "admin", limits.window, start + Duration::from_secs(100));
        throttle.record_failure(IpAddr::from([10, 0, 0, 1]), "root", limits.window, start + Duration::from_secs(300));
        throttle.record_failure(IpAddr::from([10, 0, 0, 2]), "root", limits.window, start + Duration::from_secs(400));
        // The address is free at 900 s, the username "root" only at 1200 s.
        assert_eq!(throttle.blocked_for(address, "root", limits, start + Duration::from_secs(500)), Some(700));
        throttle.record_success(address, "admin");
        assert_eq!(throttle.blocked_for(address, "admin", limits, start + Duration::from_secs(500)), None);
    }

    #[test]
    fn huge_usernames_are_tracked_by_a_bounded_prefix() {
        let mut throttle = LoginThrottle::default();
        let limits = limits(100, 1);
        let start = Instant::now();
        let long_name = "é".repeat(1000);
        throttle.record_failure(IpAddr::from([10, 0, 0, 1]), &long_name, limits.window, start);
        assert!(matches!(username_key(&long_name), ThrottleKey::Username(kept) if kept.len() <= MAX_TRACKED_USERNAME_BYTES));
        assert_eq!(throttle.blocked_for(IpAddr::from([10, 0, 0, 2]), &long_name, limits, start), Some(900));
    }
}
