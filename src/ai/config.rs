//! AI provider configuration: the default profile from `OPENAI_API_KEY`, `OPENAI_BASE_URL`
//! and `ASSESSD_AI_MODEL`, and named profiles (one per course that pays for its own use)
//! from `ASSESSD_AI_PROFILES=course-a,course-b` plus `ASSESSD_AI_PROFILE_COURSE_A_API_KEY`,
//! `..._BASE_URL` and `..._MODEL` (the name upper-cased, `-` as `_`).
//!
//! A profile exists when its key or its base URL is set; with neither for the default
//! profile and no named ones, the server is offline exactly as before. Everything is
//! checked at start, and a mistake stops the server with the variable's name: a typo must
//! not silently turn a paid tutor off.

use std::collections::BTreeMap;
use std::time::Duration;

use thiserror::Error;

use crate::auth::Secret;

/// The name of the profile built from `OPENAI_*`; test definitions that name no profile
/// use it.
pub const DEFAULT_PROFILE: &str = "default";

/// Where OpenAI itself is, for a key without a base URL.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

/// One provider profile: an OpenAI-compatible server, its key and the model to ask.
#[derive(Clone, Debug)]
pub struct ProfileConfig {
    pub name: String,
    /// The API base, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:11434/v1`.
    pub base_url: String,
    /// `None` for servers that need no key (a local one). Never printed: see [`Secret`].
    pub api_key: Option<Secret>,
    pub model: String,
}

/// Everything the AI provider needs; [`AiConfig::default`] is offline.
#[derive(Clone, Debug)]
pub struct AiConfig {
    /// The profile from `OPENAI_*`, if configured.
    pub default: Option<ProfileConfig>,
    /// Named profiles, by name.
    pub profiles: BTreeMap<String, ProfileConfig>,
    /// Bounds one whole model call, retries included.
    pub timeout: Duration,
    /// Retries after a 429 or 5xx answer, before any text has streamed.
    pub retries: u32,
    /// The first retry waits about this long (plus jitter), each next one twice as long.
    pub retry_base: Duration,
    /// Model calls in flight at once on this node, all users together.
    pub max_concurrent: usize,
    /// Model calls in flight at once for one user.
    pub max_per_user: usize,
}

pub mod defaults {
    pub const MODEL: &str = "gpt-4o-mini";
    pub const TIMEOUT_SECS: u64 = 20;
    pub const RETRIES: u32 = 2;
    pub const RETRY_BASE_MS: u64 = 250;
    pub const MAX_CONCURRENT: usize = 32;
    pub const MAX_PER_USER: usize = 1;
}

impl Default for AiConfig {
    fn default() -> Self {
        Self {
            default: None,
            profiles: BTreeMap::new(),
            timeout: Duration::from_secs(defaults::TIMEOUT_SECS),
            retries: defaults::RETRIES,
            retry_base: Duration::from_millis(defaults::RETRY_BASE_MS),
            max_concurrent: defaults::MAX_CONCURRENT,
            max_per_user: defaults::MAX_PER_USER,
        }
    }
}

impl AiConfig {
    /// True when no profile is configured: the tutor stays offline.
    pub fn is_offline(&self) -> bool {
        self.default.is_none() && self.profiles.is_empty()
    }

    /// The profile named `name`, or the default profile for `None`.
    pub fn profile(&self, name: Option<&str>) -> Option<&ProfileConfig> {
        match name {
            None | Some(DEFAULT_PROFILE) => self.default.as_ref(),
            Some(name) => self.profiles.get(name),
        }
    }
}

#[derive(Debug, Error, PartialEq)]
pub enum AiConfigError {
    #[error("{variable}: {message}")]
    Invalid { variable: String, message: String },
}

fn invalid(variable: impl Into<String>, message: impl Into<String>) -> AiConfigError {
    AiConfigError::Invalid {
        variable: variable.into(),
        message: message.into(),
    }
}

/// The `OPENAI_*` values and the list of named profiles, as given (clap reads them).
#[derive(Clone, Debug, Default)]
pub struct AiSources {
    pub api_key: Option<String>,
    pub base_url: Option<String>,
    pub model: Option<String>,
    /// `ASSESSD_AI_PROFILES`: comma-separated names.
    pub profiles: Option<String>,
}

/// The variable prefix of a named profile: `ASSESSD_AI_PROFILE_COURSE_A_` for `course-a`.
pub fn profile_prefix(name: &str) -> String {
    format!(
        "ASSESSD_AI_PROFILE_{}_",
        name.to_ascii_uppercase().replace('-', "_")
    )
}

/// Builds the profiles from `sources` and, for named profiles, from `env` (a lookup of
/// environment variables, so tests need not touch the process environment). Timeouts,
/// retries and caps are left at their defaults for the caller to set.
///
/// # Errors
/// [`AiConfigError`] naming the variable at fault.
pub fn profiles_from(
    sources: &AiSources,
    env: impl Fn(&str) -> Option<String>,
) -> Result<AiConfig, AiConfigError> {
    let default_model = non_empty(sources.model.clone()).unwrap_or(defaults::MODEL.to_string());
    let mut config = AiConfig {
        default: profile(
            DEFAULT_PROFILE,
            non_empty(sources.api_key.clone()),
            non_empty(sources.base_url.clone()),
            default_model.clone(),
            ("OPENAI_API_KEY", "OPENAI_BASE_URL"),
        )?,
        ..AiConfig::default()
    };
    let listed = sources.profiles.as_deref().unwrap_or("");
    // Every name is checked before any profile is read, so a typo in the list is reported
    // as such and not as a missing variable.
    let mut prefixes = BTreeMap::new();
    for name in listed.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !domain::test_definition::is_valid_profile_name(name) || name == DEFAULT_PROFILE {
            return Err(invalid(
                "ASSESSD_AI_PROFILES",
                format!(
                    "{name:?} is not a profile name: 1 to 32 characters of a-z 0-9 _ -, \
                     starting with a letter or digit, and not \"{DEFAULT_PROFILE}\""
                ),
            ));
        }
        if let Some(other) = prefixes.insert(profile_prefix(name), name) {
            return Err(invalid(
                "ASSESSD_AI_PROFILES",
                format!("{other:?} and {name:?} both read {}*", profile_prefix(name)),
            ));
        }
    }
    for (prefix, name) in prefixes {
        let key_var = format!("{prefix}API_KEY");
        let url_var = format!("{prefix}BASE_URL");
        let model = non_empty(env(&format!("{prefix}MODEL"))).unwrap_or(default_model.clone());
        let profile = profile(
            name,
            non_empty(env(&key_var)),
            non_empty(env(&url_var)),
            model,
            (&key_var, &url_var),
        )?
        .ok_or_else(|| {
            invalid(
                &url_var,
                format!("profile {name:?} is listed in ASSESSD_AI_PROFILES but neither {key_var} nor {url_var} is set"),
            )
        })?;
        config.profiles.insert(name.to_string(), profile);
    }
    Ok(config)
}

fn profile(
    name: &str,
    api_key: Option<String>,
    base_url: Option<String>,
    model: String,
    (key_var, url_var): (&str, &str),
) -> Result<Option<ProfileConfig>, AiConfigError> {
    if api_key.is_none() && base_url.is_none() {
        return Ok(None);
    }
    let base_url = base_url.unwrap_or_else(|| OPENAI_BASE_URL.to_string());
    let base_url = base_url.trim_end_matches('/').to_string();
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        return Err(invalid(url_var, "must start with http:// or https://"));
    }
    if api_key
        .as_deref()
        .is_some_and(|k| k.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        // Say where, never what: the value is a secret.
        return Err(invalid(
            key_var,
            "must not contain spaces or control characters",
        ));
    }
    Ok(Some(ProfileConfig {
        name: name.to_string(),
        base_url,
        api_key: api_key.map(Secret::new),
        model,
    }))
}

fn non_empty(value: Option<String>) -> Option<String> {
    value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(sources: AiSources, env: &[(&str, &str)]) -> Result<AiConfig, AiConfigError> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        profiles_from(&sources, |k| env.get(k).cloned())
    }

    #[test]
    fn nothing_set_is_offline() {
        let config = parse(AiSources::default(), &[]).unwrap();
        assert!(config.is_offline());
        let blank = AiSources {
            api_key: Some(" ".into()),
            base_url: Some(String::new()),
            ..Default::default()
        };
        assert!(parse(blank, &[]).unwrap().is_offline());
    }

    #[test]
    fn a_key_alone_talks_to_openai_and_a_base_url_alone_to_a_local_server() {
        let key = AiSources {
            api_key: Some("sk-test".into()),
            ..Default::default()
        };
        let config = parse(key, &[]).unwrap();
        let default = config.profile(None).unwrap();
        assert_eq!(default.base_url, OPENAI_BASE_URL);
        assert_eq!(default.model, defaults::MODEL);
        assert_eq!(default.api_key.as_ref().unwrap().expose(), "sk-test");

        let local = AiSources {
            base_url: Some("http://127.0.0.1:9/v1/".into()),
            model: Some("llama".into()),
            ..Default::default()
        };
        let config = parse(local, &[]).unwrap();
        let default = config.profile(Some(DEFAULT_PROFILE)).unwrap();
        assert_eq!(default.base_url, "http://127.0.0.1:9/v1");
        assert_eq!(default.model, "llama");
        assert!(default.api_key.is_none());
    }

    #[test]
    fn named_profiles_read_their_own_variables() {
        let sources = AiSources {
            profiles: Some("course-a, b2".into()),
            model: Some("base-model".into()),
            ..Default::default()
        };
        let config = parse(
            sources,
            &[
                ("ASSESSD_AI_PROFILE_COURSE_A_API_KEY", "sk-a"),
                ("ASSESSD_AI_PROFILE_COURSE_A_MODEL", "model-a"),
                ("ASSESSD_AI_PROFILE_B2_BASE_URL", "http://localhost:1/v1"),
            ],
        )
        .unwrap();
        assert!(config.default.is_none());
        let a = config.profile(Some("course-a")).unwrap();
        assert_eq!(
            (a.model.as_str(), a.base_url.as_str()),
            ("model-a", OPENAI_BASE_URL)
        );
        let b = config.profile(Some("b2")).unwrap();
        assert_eq!(b.model, "base-model");
        assert!(config.profile(Some("nope")).is_none());
    }

    #[test]
    fn mistakes_name_their_variable_and_never_the_key() {
        let err = |sources: AiSources, env: &[(&str, &str)]| match parse(sources, env) {
            Err(AiConfigError::Invalid { variable, message }) => (variable, message),
            Ok(_) => panic!("accepted"),
        };
        let listed = |names: &str| AiSources {
            profiles: Some(names.into()),
            ..Default::default()
        };
        assert_eq!(err(listed("Course"), &[]).0, "ASSESSD_AI_PROFILES");
        assert_eq!(err(listed("default"), &[]).0, "ASSESSD_AI_PROFILES");
        assert_eq!(err(listed("a-b,a_b"), &[]).0, "ASSESSD_AI_PROFILES");
        assert_eq!(err(listed("x"), &[]).0, "ASSESSD_AI_PROFILE_X_BASE_URL");
        assert_eq!(
            err(listed("x"), &[("ASSESSD_AI_PROFILE_X_BASE_URL", "ftp://h")]).0,
            "ASSESSD_AI_PROFILE_X_BASE_URL"
        );
        let (variable, message) = err(
            AiSources {
                api_key: Some("sk-secret value".into()),
                ..Default::default()
            },
            &[],
        );
        assert_eq!(variable, "OPENAI_API_KEY");
        assert!(!message.contains("sk-secret"), "{message}");
    }

    #[test]
    fn keys_never_print() {
        let config = parse(
            AiSources {
                api_key: Some("sk-do-not-print".into()),
                ..Default::default()
            },
            &[],
        )
        .unwrap();
        assert!(!format!("{config:?}").contains("sk-do-not-print"));
    }
}
