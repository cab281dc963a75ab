//! Tokens signed with the server's HS256 secret, as `assessd token` mints them: `sub`,
//! `role`, `exp`, `iat` (docs/protocol.md section 2).

use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    role: &'a str,
    exp: u64,
    iat: u64,
}

/// Signs tokens for any user with one secret.
#[derive(Clone)]
pub struct Signer {
    key: EncodingKey,
}

impl Signer {
    pub fn new(secret: &str) -> Self {
        Signer {
            key: EncodingKey::from_secret(secret.as_bytes()),
        }
    }

    /// A token for `sub` with one role, valid for `ttl`.
    pub fn sign(&self, sub: &str, role: &str, ttl: Duration) -> anyhow::Result<String> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub,
            role,
            exp: now + ttl.as_secs(),
            iat: now,
        };
        jsonwebtoken::encode(&Header::default(), &claims, &self.key)
            .context("Failed to sign a token")
    }
}
