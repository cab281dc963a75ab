//! Identity (PROTOCOL section 1): JWT verification and minting, roles, and where a token is
//! found in a request. The token's `sub` is the only user id the server trusts.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A signing secret. It never prints: not in logs, not in `Debug` output.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Taker,
    Auditor,
    Admin,
}

/// `role` may be one role or a list of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum RoleClaim {
    One(Role),
    Many(Vec<Role>),
}

/// `aud` may be one audience or a list (identity providers often issue a list); the
/// configured audience is checked by jsonwebtoken either way.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum AudienceClaim {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: RoleClaim,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<AudienceClaim>,
}

/// Who is calling, as proven by their token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub roles: Vec<Role>,
}

impl Identity {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    pub fn has_any(&self, roles: &[Role]) -> bool {
        roles.iter().any(|r| self.has(*r))
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("malformed Authorization header")]
    Malformed,
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
    #[error("token has no usable subject")]
    BadSubject,
}

/// Longest accepted `sub`; user ids are stream ids and appear in URLs.
const MAX_SUBJECT_LEN: usize = 256;

/// Verifies tokens, and mints them when it holds a secret. HS256 with a shared secret by
/// default; RS256 or EdDSA with an identity provider's public key. Exactly one algorithm
/// is accepted, so `alg: none` and algorithm confusion (an HS256 token "signed" with the
/// public key) are refused by construction.
#[derive(Clone)]
pub struct JwtKeys {
    /// Only with a shared secret: a public key cannot sign.
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    algorithm: Algorithm,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKeys")
            .field("algorithm", &self.algorithm)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl JwtKeys {
    pub fn hs256(secret: &Secret, issuer: Option<String>, audience: Option<String>) -> Self {
        Self::build(
            Some(EncodingKey::from_secret(secret.expose().as_bytes())),
            DecodingKey::from_secret(secret.expose().as_bytes()),
            Algorithm::HS256,
            issuer,
            audience,
        )
    }

    /// Verifies tokens signed by the holder of this public key (PEM): RS256 for an RSA key,
    /// EdDSA for an Ed25519 key.
    ///
    /// # Errors
    /// When the PEM holds neither an RSA nor an Ed25519 public key.
    pub fn public_key(
        pem: &[u8],
        issuer: Option<String>,
        audience: Option<String>,
    ) -> anyhow::Result<Self> {
        let (decoding, algorithm) = if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            (key, Algorithm::RS256)
        } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            (key, Algorithm::EdDSA)
        } else {
            anyhow::bail!("the JWT public key must be an RSA or Ed25519 public key in PEM form");
        };
        Ok(Self::build(None, decoding, algorithm, issuer, audience))
    }

    fn build(
        encoding: Option<EncodingKey>,
        decoding: DecodingKey,
        algorithm: Algorithm,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.leeway = 5;
        // A configured issuer or audience must be present, not merely match when present.
        let mut required = vec!["exp", "sub"];
        if issuer.is_some() {
            required.push("iss");
        }
        if audience.is_some() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        match &issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Self {
            encoding,
            decoding,
            algorithm,
            validation,
            issuer,
            audience,
        }
    }

    /// Checks a token's signature, expiry, issuer and audience.
    ///
    /// # Errors
    /// [`AuthError`] saying why the token is refused; never the token itself.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match classify(e.kind()) {
                Refusal::Expired => AuthError::Expired,
                Refusal::BadSignature => {
                    // The usual cause in development is a token minted by `assessd token`
                    // with another secret than the server's; the client learns only
                    // "invalid token", so say it where the operator looks.
                    tracing::warn!(
                        algorithm = ?self.algorithm,
                        "token refused: its signature does not match (signed with a different secret? \
                         `assessd token` and the server must use the same ASSESSD_JWT_SECRET, \
                         or the same development secret file)"
                    );
                    AuthError::Invalid
                }
                Refusal::Other => AuthError::Invalid,
            })?;
        let claims = data.claims;
        let sub = claims.sub;
        if sub.trim().is_empty() || sub.len() > MAX_SUBJECT_LEN || sub.chars().any(char::is_control)
        {
            return Err(AuthError::BadSubject);
        }
        let roles = match claims.role {
            RoleClaim::One(role) => vec![role],
            RoleClaim::Many(roles) => roles,
        };
        Ok(Identity {
            user_id: sub,
            roles,
        })
    }

    /// Mints a token for `sub` with `roles`, valid for `ttl`.
    pub fn mint(&self, sub: &str, roles: &[Role], ttl: Duration) -> anyhow::Result<String> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: sub.to_string(),
            role: match roles {
                [one] => RoleClaim::One(*one),
                many => RoleClaim::Many(many.to_vec()),
            },
            exp: now + ttl.as_secs(),
            iat: Some(now),
            iss: self.issuer.clone(),
            aud: self.audience.clone().map(AudienceClaim::One),
        };
        let Some(encoding) = &self.encoding else {
            anyhow::bail!(
                "this server verifies tokens with a public key; they are issued by your identity provider"
            );
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, encoding)
            .context("Failed to sign the token")
    }
}

/// What the server does differently depending on why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Expired,
    /// Well formed, but signed with another key.
    BadSignature,
    Other,
}

fn classify(kind: &jsonwebtoken::errors::ErrorKind) -> Refusal {
    use jsonwebtoken::errors::ErrorKind;
    match kind {
        ErrorKind::ExpiredSignature => Refusal::Expired,
        ErrorKind::InvalidSignature => Refusal::BadSignature,
        _ => Refusal::Other,
    }
}

/// The bearer token of a request: the `Authorization` header, or (for WebSockets, which
/// browsers cannot give headers) the `access_token` query parameter.
pub fn bearer_token(parts: &Parts, allow_query: bool) -> Result<String, AuthError> {
    if let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| AuthError::Malformed)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(AuthError::Malformed)?
            .trim();
        if token.is_empty() {
            return Err(AuthError::Malformed);
        }
        return Ok(token.to_string());
    }
    if allow_query {
        if let Some(query) = parts.uri.query() {
            for (key, value) in url_pairs(query) {
                if key == "access_token" && !value.is_empty() {
                    return Ok(value);
                }
            }
        }
    }
    Err(AuthError::Missing)
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query).unwrap_or_default()
}

/// The development secret's file name in the data directory.
pub const DEV_SECRET_FILE: &str = ".assessd-dev-secret";

/// Where the signing secret came from, so a command can say which one it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `ASSESSD_JWT_SECRET` (or `--jwt-secret`).
    Configured,
    /// The development secret file (an absolute path); `created` when this call made it.
    DevelopmentFile { path: PathBuf, created: bool },
}

/// The configured secret, or the development secret kept in `data_dir` (created on first
/// use, readable by the owner only).
///
/// # Errors
/// When the configured secret is too short, or the development secret file cannot be read
/// or written, or holds something that is not a development secret.
pub fn resolve_secret(
    configured: Option<Secret>,
    data_dir: &Path,
) -> anyhow::Result<(Secret, SecretSource)> {
    if let Some(secret) = configured {
        if secret.expose().len() < 16 {
            anyhow::bail!("ASSESSD_JWT_SECRET must be at least 16 characters");
        }
        return Ok((secret, SecretSource::Configured));
    }
    let path = std::path::absolute(data_dir.join(DEV_SECRET_FILE))
        .with_context(|| "Failed to read the working directory")?;
    let existing = |path: &Path| -> anyhow::Result<(Secret, SecretSource)> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("Failed to read the development secret {}", path.display()))?;
        let text = text.trim();
        // Replacing a file that is not ours would silently invalidate whatever it signed.
        if text.len() < 32 {
            anyhow::bail!(
                "{} is not a development secret (too short); delete it to have a new one generated",
                path.display()
            );
        }
        let source = SecretSource::DevelopmentFile {
            path: path.to_path_buf(),
            created: false,
        };
        Ok((Secret::new(text), source))
    };
    if path.exists() {
        return existing(&path);
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("Failed to create the data directory {}", data_dir.display()))?;
    let secret = Secret::generate();
    match write_new_private(&path, secret.expose()) {
        Ok(()) => {
            let source = SecretSource::DevelopmentFile {
                path,
                created: true,
            };
            Ok((secret, source))
        }
        // A server and `assessd token` started together: the first one's secret wins.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => existing(&path),
        Err(e) => Err(e).with_context(|| {
            format!(
                "Failed to write the development secret to {}",
                path.display()
            )
        }),
    }
}

impl Secret {
    /// 32 random bytes, hex encoded.
    fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Secret(hex::encode(bytes))
    }

    /// A random secret that is never stored: the placeholder when tokens are verified with
    /// a public key and no secret is configured.
    pub fn ephemeral() -> Self {
        Self::generate()
    }
}

/// Creates `path` with `contents`, readable by the owner only; `AlreadyExists` when it is
/// there. The file appears with its contents in place (written aside, then hard-linked), so
/// a process that loses the race never reads it half written.
fn write_new_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let aside = path.with_file_name(format!("{DEV_SECRET_FILE}.{}.tmp", std::process::id()));
    // Left over by a crashed run that had the same process id.
    let _ = std::fs::remove_file(&aside);
    create_private(&aside, contents)?;
    let linked = std::fs::hard_link(&aside, path);
    let _ = std::fs::remove_file(&aside);
    match linked {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            // A file system without hard links: create in place, accepting the instant in
            // which the file exists but is still empty.
            create_private(path, contents)
        }
        other => other,
    }
}

fn create_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> JwtKeys {
        JwtKeys::hs256(&Secret::new("0123456789abcdef0123456789abcdef"), None, None)
    }

    #[test]
    fn a_minted_token_verifies() {
        let token = keys()
            .mint("alice", &[Role::Taker], Duration::from_secs(60))
            .unwrap();
        let id = keys().verify(&token).unwrap();
        assert_eq!(id.user_id, "alice");
        assert_eq!(id.roles, vec![Role::Taker]);
    }

    #[test]
    fn another_secret_is_refused() {
        let token = keys()
            .mint("alice", &[Role::Taker], Duration::from_secs(60))
            .unwrap();
        let other = JwtKeys::hs256(&Secret::new("another-secret-another-secret"), None, None);
        assert_eq!(other.verify(&token), Err(AuthError::Invalid));
    }

    #[test]
    fn refusals_are_classified_by_kind() {
        use jsonwebtoken::errors::ErrorKind;
        assert_eq!(
            classify(&ErrorKind::InvalidSignature),
            Refusal::BadSignature
        );
        assert_eq!(classify(&ErrorKind::ExpiredSignature), Refusal::Expired);
        for other in [
            ErrorKind::InvalidToken,
            ErrorKind::InvalidAlgorithm,
            ErrorKind::InvalidIssuer,
        ] {
            assert_eq!(classify(&other), Refusal::Other, "{other:?}");
        }
    }

    /// The log names the likely cause, never the token; the caller still gets `Invalid`.
    #[test]
    fn a_token_signed_with_another_secret_is_logged_as_such() {
        let token = keys()
            .mint("alice", &[Role::Taker], Duration::from_secs(60))
            .unwrap();
        let other = JwtKeys::hs256(&Secret::new("another-secret-another-secret"), None, None);
        let (result, log) = logged(|| other.verify(&token));
        assert_eq!(result, Err(AuthError::Invalid));
        assert!(log.contains("signed with a different secret?"), "{log}");
        assert!(!log.contains(&token), "{log}");
        let (result, log) = logged(|| keys().verify("not.a.token"));
        assert_eq!(result, Err(AuthError::Invalid));
        assert!(!log.contains("different secret"), "{log}");
    }

    /// Runs `f` with a subscriber that records every event, and returns what it logged.
    fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .finish();
        let result = tracing::subscriber::with_default(subscriber, f);
        let log = String::from_utf8_lossy(&buffer.0.lock().unwrap()).into_owned();
        (result, log)
    }

    #[test]
    fn the_development_secret_is_kept_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("nested");
        let (first, source) = resolve_secret(None, &data).unwrap();
        let path = data.join(DEV_SECRET_FILE);
        assert_eq!(
            source,
            SecretSource::DevelopmentFile {
                path: path.clone(),
                created: true
            }
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again, source) = resolve_secret(None, &data).unwrap();
        assert_eq!(again.expose(), first.expose());
        assert_eq!(
            source,
            SecretSource::DevelopmentFile {
                path: path.clone(),
                created: false
            }
        );
        let leftovers: Vec<_> = std::fs::read_dir(&data).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "only the secret itself: {leftovers:?}");
        // A file that is not a secret is reported, not replaced.
        std::fs::write(&path, "short").unwrap();
        let err = resolve_secret(None, &data).unwrap_err().to_string();
        assert!(err.contains("not a development secret"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "short");
        let (_, source) =
            resolve_secret(Some(Secret::new("configured-secret-0123")), &data).unwrap();
        assert_eq!(source, SecretSource::Configured);
    }

    #[test]
    fn alg_none_is_refused() {
        use base64_like::encode;
        let header = encode(r#"{"alg":"none","typ":"JWT"}"#);
        let body = encode(r#"{"sub":"alice","role":"admin","exp":99999999999}"#);
        assert_eq!(
            keys().verify(&format!("{header}.{body}.")),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn expired_tokens_are_refused() {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: "alice".into(),
            role: RoleClaim::One(Role::Taker),
            exp: now - 3600,
            iat: None,
            iss: None,
            aud: None,
        };
        let secret = EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
        let token = jsonwebtoken::encode(&Header::default(), &claims, &secret).unwrap();
        assert_eq!(keys().verify(&token), Err(AuthError::Expired));
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let secret = Secret::new("0123456789abcdef0123456789abcdef");
        let strict = JwtKeys::hs256(&secret, Some("idp".into()), Some("assessd".into()));
        let plain = keys()
            .mint("alice", &[Role::Taker], Duration::from_secs(60))
            .unwrap();
        assert_eq!(strict.verify(&plain), Err(AuthError::Invalid));
        let good = strict
            .mint("alice", &[Role::Taker], Duration::from_secs(60))
            .unwrap();
        assert!(strict.verify(&good).is_ok());
        // An audience list, as identity providers issue, is accepted when it names ours.
        let listed = |aud: &[&str]| {
            let claims = serde_json::json!({"sub": "alice", "role": "taker", "iss": "idp",
                "aud": aud, "exp": jsonwebtoken::get_current_timestamp() + 60});
            let key = EncodingKey::from_secret(secret.expose().as_bytes());
            jsonwebtoken::encode(&Header::default(), &claims, &key).unwrap()
        };
        assert!(strict.verify(&listed(&["other", "assessd"])).is_ok());
        assert_eq!(strict.verify(&listed(&["other"])), Err(AuthError::Invalid));
    }

    fn sign(algorithm: Algorithm, key: &EncodingKey, sub: &str) -> String {
        let claims = Claims {
            sub: sub.into(),
            role: RoleClaim::Many(vec![Role::Taker, Role::Auditor]),
            exp: jsonwebtoken::get_current_timestamp() + 60,
            iat: None,
            iss: None,
            aud: None,
        };
        jsonwebtoken::encode(&Header::new(algorithm), &claims, key).unwrap()
    }

    const ED_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/ed25519-private.pem");
    const ED_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/ed25519-public.pem");
    const RSA_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/rsa-private.pem");
    const RSA_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/rsa-public.pem");

    #[test]
    fn eddsa_and_rs256_tokens_verify_with_the_public_key() {
        let ed = JwtKeys::public_key(ED_PUBLIC, None, None).unwrap();
        let token = sign(
            Algorithm::EdDSA,
            &EncodingKey::from_ed_pem(ED_PRIVATE).unwrap(),
            "eve",
        );
        let id = ed.verify(&token).unwrap();
        assert_eq!((id.user_id.as_str(), id.roles.len()), ("eve", 2));
        let rsa = JwtKeys::public_key(RSA_PUBLIC, None, None).unwrap();
        let token = sign(
            Algorithm::RS256,
            &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
            "ron",
        );
        assert_eq!(rsa.verify(&token).unwrap().user_id, "ron");
        // a key of the other kind does not verify
        assert_eq!(ed.verify(&token), Err(AuthError::Invalid));
        assert!(JwtKeys::public_key(b"not a key", None, None).is_err());
        assert!(
            ed.mint("x", &[Role::Taker], Duration::from_secs(1))
                .is_err(),
            "a public key cannot sign"
        );
    }

    #[test]
    fn algorithm_confusion_is_refused() {
        // The classic attack: an HS256 token whose "secret" is the server's public key.
        let forged = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(RSA_PUBLIC),
            "mallory",
        );
        let rsa = JwtKeys::public_key(RSA_PUBLIC, None, None).unwrap();
        assert_eq!(rsa.verify(&forged), Err(AuthError::Invalid));
        // and an HS256 server refuses asymmetric tokens
        let ed_token = sign(
            Algorithm::EdDSA,
            &EncodingKey::from_ed_pem(ED_PRIVATE).unwrap(),
            "eve",
        );
        assert_eq!(keys().verify(&ed_token), Err(AuthError::Invalid));
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }

    /// Unpadded base64url, enough to forge an unsigned token in a test.
    mod base64_like {
        pub fn encode(s: &str) -> String {
            const T: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let b = s.as_bytes();
            let mut out = String::new();
            for chunk in b.chunks(3) {
                let n = chunk
                    .iter()
                    .enumerate()
                    .fold(0u32, |acc, (i, &x)| acc | (x as u32) << (16 - 8 * i));
                for i in 0..=chunk.len() {
                    out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                }
            }
            out
        }
    }
}
