//! `${VAR}` and `${VAR:-default}` references in connection URLs, resolved at run time.

/// Replaces every `${VAR}` / `${VAR:-default}` with the variable's value (or the default when it
/// is unset or empty). An unset variable without default is an error naming it.
pub fn interpolate(
    template: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("${") {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed `${{` in `{template}`"))?;
        let inner = &rest[open + 2..open + close];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        match (lookup(name).filter(|v| !v.is_empty()), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (needed by `{template}`)"
                ));
            }
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Creates the folder of a `sqlite:PATH` (or `sqlite://PATH?...`) database file, so that a
/// fresh checkout can open `.baton/warehouse.db` or `.baton/ledger.db` without setup.
pub fn create_sqlite_folder(url: &str) -> Result<(), String> {
    let path = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    match std::path::Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        Some(parent) => std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display())),
        None => Ok(()),
    }
}

/// Connects once, directly, to the Postgres database at `url`, before a pool is built for it.
/// sqlx's pool reports a server it cannot reach only as "pool timed out", after retrying for the
/// whole acquire timeout (sqlx issues #744 and #3808): a database that was down cost every
/// attempt 30 seconds and named no cause. A direct connection fails at once with the real one
/// (refused, unknown host, rejected password). Used by the warehouse and the ledger.
pub(crate) async fn reach_postgres(url: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let connection = sqlx::PgConnection::connect(url).await?;
    // Closing tells the server goodbye; if that fails, the connection is gone anyway.
    let _ = connection.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::interpolate;

    #[test]
    fn defaults_apply_when_unset_or_empty() {
        let lookup = |name: &str| match name {
            "SET" => Some("value".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        assert_eq!(interpolate("a/${SET:-x}/b", lookup).unwrap(), "a/value/b");
        assert_eq!(
            interpolate("${EMPTY:-fallback}", lookup).unwrap(),
            "fallback"
        );
        assert_eq!(interpolate("${UNSET:-./lake}", lookup).unwrap(), "./lake");
        assert!(
            interpolate("${UNSET}", lookup)
                .unwrap_err()
                .contains("UNSET")
        );
        assert_eq!(interpolate("plain", lookup).unwrap(), "plain");
    }
}
