//! Authentication: `noauth` or `http_basic` against an htpasswd file of bcrypt entries.
//!
//! The version documents, the agent endpoints (lookup/heartbeat; heartbeat is guarded by
//! the agent token instead) and the health/metrics endpoints stay reachable without
//! credentials, as in Ironic.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use thiserror::Error;

use crate::error::ApiError;

/// The configured authentication strategy.
#[derive(Clone, Default)]
pub enum Auth {
    /// Everyone is admin (embedded mode, tests).
    #[default]
    NoAuth,
    /// HTTP basic against bcrypt hashes, user → hash.
    HttpBasic(Arc<HashMap<String, String>>),
}

impl std::fmt::Debug for Auth {
    // Hand-written so hashes never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::NoAuth => f.write_str("NoAuth"),
            Auth::HttpBasic(users) => write!(f, "HttpBasic({} users)", users.len()),
        }
    }
}

/// The htpasswd file could not be used.
#[derive(Debug, Error)]
pub enum AuthError {
    /// Reading the file failed.
    #[error("cannot read htpasswd file {path}")]
    Read {
        /// File path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A line is not `user:$2…bcrypt`.
    #[error("htpasswd file {path} line {line}: expected 'user:<bcrypt hash>'")]
    BadLine {
        /// File path.
        path: String,
        /// 1-based line number.
        line: usize,
    },
}

impl Auth {
    /// Load an htpasswd file; only bcrypt (`$2a$`, `$2b$`, `$2y$`) entries are accepted.
    ///
    /// # Errors
    /// [`AuthError`] when the file cannot be read or a line is not a bcrypt entry.
    pub fn from_htpasswd(path: &Path) -> Result<Self, AuthError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| AuthError::Read { path: p.clone(), source })?;
        Self::parse_htpasswd(&text, &p)
    }

    fn parse_htpasswd(text: &str, path: &str) -> Result<Self, AuthError> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || AuthError::BadLine { path: path.to_owned(), line: i + 1 };
            let (user, hash) = line.split_once(':').ok_or_else(bad)?;
            if user.is_empty()
                || !(hash.starts_with("$2a$")
                    || hash.starts_with("$2b$")
                    || hash.starts_with("$2y$"))
            {
                return Err(bad());
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        Ok(Auth::HttpBasic(Arc::new(users)))
    }

    /// Check an `Authorization` header value.
    pub async fn check(&self, authorization: Option<&str>) -> bool {
        let Auth::HttpBasic(users) = self else { return true };
        let Some(creds) = authorization.and_then(|a| a.strip_prefix("Basic ")) else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(creds.trim()) else {
            return false;
        };
        let Ok(decoded) = String::from_utf8(decoded) else { return false };
        let Some((user, pass)) = decoded.split_once(':') else { return false };
        let Some(hash) = users.get(user).cloned() else { return false };
        let pass = pass.to_owned();
        // bcrypt is deliberately slow: keep it off the async workers.
        tokio::task::spawn_blocking(move || bcrypt::verify(pass, &hash).unwrap_or(false))
            .await
            .unwrap_or(false)
    }
}

/// Paths reachable without user credentials.
fn is_exempt(path: &str) -> bool {
    matches!(
        path,
        "/" | "/v1" | "/v1/" | "/healthz" | "/metrics" | "/v1/lookup" | "/v1/openapi.json"
    ) || path.starts_with("/v1/heartbeat/")
}

/// Middleware enforcing the configured strategy.
pub async fn layer(State(auth): State<Auth>, req: Request, next: Next) -> Response {
    if matches!(auth, Auth::NoAuth) || is_exempt(req.uri().path()) {
        return next.run(req).await;
    }
    let header_value =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if auth.check(header_value.as_deref()).await {
        next.run(req).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
    }

    #[tokio::test]
    async fn test_http_basic_checks_bcrypt() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let auth = Auth::parse_htpasswd(&format!("# comment\nadmin:{hash}\n"), "x").unwrap();
        assert!(auth.check(Some(&basic("admin", "s3cret"))).await);
        assert!(!auth.check(Some(&basic("admin", "wrong"))).await);
        assert!(!auth.check(Some(&basic("nobody", "s3cret"))).await);
        assert!(!auth.check(None).await);
        assert!(!auth.check(Some("Bearer x")).await);
        assert!(Auth::parse_htpasswd("admin:{SHA}abc", "x").is_err());
        assert!(is_exempt("/v1/heartbeat/abc") && !is_exempt("/v1/nodes"));
    }
}
