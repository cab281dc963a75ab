//! Reading test definitions from JSON (the admin API and `assessd tests import`), and the
//! demo test that ships with the server.

use domain::{TestDefinition, ValidationError};

use crate::store::catalog::Catalog;

/// The demo test, loaded on first start so a new user can take a test at once.
pub const DEMO_TEST: &str = include_str!("demo_test.json");

/// Parses and validates a definition. `id` (from the URL or the file name) names the test
/// when the body has no `id`; a body `id` that disagrees with it is refused.
///
/// # Errors
/// A [`ValidationError`] naming the offending field, for bad JSON as for bad values.
pub fn parse(json: &[u8], id: Option<&str>) -> Result<TestDefinition, ValidationError> {
    let deserializer = &mut serde_json::Deserializer::from_slice(json);
    let mut definition: TestDefinition =
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            ValidationError {
                // serde_path_to_error says "." or "?" when no field is to blame.
                field: if matches!(path.as_str(), "." | "?" | "") {
                    "body".into()
                } else {
                    path
                },
                message: e.into_inner().to_string(),
            }
        })?;
    if let Some(id) = id {
        if !definition.id.is_empty() && definition.id != id {
            return Err(ValidationError {
                field: "id".into(),
                message: format!("body says {:?} but the test is {id:?}", definition.id),
            });
        }
        definition.id = id.to_string();
    }
    // The version is the store's to assign.
    definition.version = 0;
    definition.validate()?;
    Ok(definition)
}

/// Stores the demo test unless a test with its id already exists.
pub async fn ensure_demo_loaded(catalog: &Catalog) -> anyhow::Result<()> {
    let demo = parse(DEMO_TEST.as_bytes(), None)
        .map_err(|e| anyhow::anyhow!("the bundled demo test is invalid: {e}"))?;
    if catalog.latest(&demo.id).await?.is_none() {
        let stored = catalog.put(demo).await?;
        tracing::info!(version = stored.version, "loaded the demo test \"demo\"");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_test_is_valid() {
        let demo = parse(DEMO_TEST.as_bytes(), None).unwrap();
        assert_eq!(demo.id, "demo");
        assert_eq!(demo.questions.len(), 4);
    }

    #[test]
    fn json_errors_name_the_field() {
        let err = parse(
            br#"{"title":"t","questions":[{"id":"q1","kind":"essay"}]}"#,
            Some("t"),
        )
        .unwrap_err();
        assert_eq!(err.field, "questions[0].kind");
        let err = parse(
            br#"{"title":"t","max_attempts":"two","questions":[]}"#,
            Some("t"),
        )
        .unwrap_err();
        assert_eq!(err.field, "max_attempts");
        let err = parse(b"{", Some("t")).unwrap_err();
        assert_eq!(err.field, "body");
    }

    #[test]
    fn the_url_id_wins_and_a_contradicting_body_id_is_refused() {
        let body = DEMO_TEST.as_bytes();
        assert_eq!(parse(body, Some("demo")).unwrap().id, "demo");
        assert_eq!(parse(body, Some("other")).unwrap_err().field, "id");
    }
}
