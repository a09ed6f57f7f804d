//! Authentication, shared by REST and gRPC: one [`Auth::authenticate`] turns the request
//! headers (HTTP headers or gRPC metadata, which are the same map) into an [`Identity`] or
//! an [`AuthError`].
//!
//! Strategies:
//! - `noauth`: everyone is an unrestricted administrator. Only for loopback listeners unless
//!   `api.noauth_allow_remote` says otherwise (checked in [`crate::config`]).
//! - `http_basic`: an htpasswd file of bcrypt entries. As in Ironic, an authenticated user is
//!   unrestricted (Ironic applies its policy only in `keystone` mode).
//! - `keystone`: trusted identity headers, as keystonemiddleware passes them to Ironic behind
//!   a front proxy that validated the token: `X-Identity-Status`, `X-Roles`, `X-Project-Id`,
//!   `X-Project-Name`, `X-User-Id`, `X-System-Scope` (or `OpenStack-System-Scope`). The
//!   caller's rights are then decided by Ironic's default policy ([`crate::policy`]).
//!
//! The version documents, the agent endpoints (lookup, heartbeat and continue_inspection;
//! heartbeat is guarded by the agent token instead, and lookup and continue_inspection hand
//! out a node's token only once) and the health/metrics endpoints stay reachable without
//! credentials, as in Ironic (its `public_routes`; a ramdisk holds no user credentials).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use http::HeaderMap;
use thiserror::Error;

use crate::error::ApiError;
use crate::service::ApiState;

/// The configured authentication strategy.
#[derive(Clone, Default)]
pub enum Auth {
    /// Everyone is an unrestricted administrator (embedded mode, tests).
    #[default]
    NoAuth,
    /// HTTP basic against bcrypt hashes, user → hash.
    HttpBasic(Arc<HashMap<String, String>>),
    /// Identity headers set by a trusted front proxy (Keystone's middleware).
    TrustedHeaders,
}

impl std::fmt::Debug for Auth {
    // Hand-written so hashes never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::NoAuth => f.write_str("NoAuth"),
            Auth::HttpBasic(users) => write!(f, "HttpBasic({} users)", users.len()),
            Auth::TrustedHeaders => f.write_str("TrustedHeaders"),
        }
    }
}

/// A role as Keystone grants it. Keystone's default hierarchy is expanded on the way in:
/// admin implies manager, manager implies member, member implies reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// `admin`
    Admin = 1,
    /// `manager`
    Manager = 2,
    /// `member`
    Member = 4,
    /// `reader`
    Reader = 8,
    /// `service` (other services; implies nothing)
    Service = 16,
}

/// Who is calling, as the policy sees it.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// Whether the policy applies at all (`keystone` mode); `false` = unrestricted.
    enforced: bool,
    roles: u8,
    /// The project the token is scoped to.
    pub project_id: Option<String>,
    /// The project's name (for Ironic's `service_role` rule).
    pub project_name: Option<String>,
    /// Whether the token is system-scoped (`all`).
    pub system_scope: bool,
    /// The user, for logs.
    pub user: Option<String>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("enforced", &self.enforced)
            .field("roles", &self.role_names())
            .field("project_id", &self.project_id)
            .field("system_scope", &self.system_scope)
            .field("user", &self.user)
            .finish()
    }
}

impl Identity {
    /// An unrestricted caller (`noauth`, `http_basic`, and the service's own work).
    pub fn unrestricted(user: Option<String>) -> Self {
        Self {
            enforced: false,
            roles: Role::Admin as u8
                | Role::Manager as u8
                | Role::Member as u8
                | Role::Reader as u8,
            project_id: None,
            project_name: None,
            system_scope: true,
            user,
        }
    }

    /// A caller without credentials (only the exempt endpoints serve it).
    pub fn anonymous() -> Self {
        Self {
            enforced: true,
            roles: 0,
            project_id: None,
            project_name: None,
            system_scope: false,
            user: None,
        }
    }

    /// A policy-checked caller with these roles (names as Keystone sends them; unknown
    /// names are ignored) and scope.
    pub fn scoped<'a>(
        roles: impl IntoIterator<Item = &'a str>,
        project_id: Option<String>,
        system_scope: bool,
    ) -> Self {
        let mut bits = 0u8;
        for r in roles {
            bits |= match r.trim().to_ascii_lowercase().as_str() {
                "admin" => {
                    Role::Admin as u8
                        | Role::Manager as u8
                        | Role::Member as u8
                        | Role::Reader as u8
                }
                "manager" => Role::Manager as u8 | Role::Member as u8 | Role::Reader as u8,
                "member" => Role::Member as u8 | Role::Reader as u8,
                "reader" => Role::Reader as u8,
                "service" => Role::Service as u8,
                _ => 0,
            };
        }
        Self {
            enforced: true,
            roles: bits,
            project_id: project_id.filter(|p| !p.is_empty()),
            project_name: None,
            system_scope,
            user: None,
        }
    }

    /// Whether the policy is applied to this caller.
    pub fn enforced(&self) -> bool {
        self.enforced
    }

    /// Whether the caller holds `role` (directly or implied).
    pub fn has(&self, role: Role) -> bool {
        self.roles & role as u8 != 0
    }

    /// The roles held, as Keystone names them.
    pub(crate) fn role_names(&self) -> Vec<&'static str> {
        [
            (Role::Admin, "admin"),
            (Role::Manager, "manager"),
            (Role::Member, "member"),
            (Role::Reader, "reader"),
            (Role::Service, "service"),
        ]
        .into_iter()
        .filter(|(r, _)| self.has(*r))
        .map(|(_, n)| n)
        .collect()
    }
}

/// Why a caller was not authenticated, or the htpasswd file could not be used.
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
    /// No credentials, or credentials that do not check out.
    #[error("authentication required")]
    Unauthenticated,
}

impl From<AuthError> for ApiError {
    fn from(_: AuthError) -> Self {
        // Which part failed is not told to the caller.
        ApiError::Unauthorized
    }
}

/// A header's value as text, if present and printable.
fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
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

    /// The strategy's name as configured.
    pub fn name(&self) -> &'static str {
        match self {
            Auth::NoAuth => "noauth",
            Auth::HttpBasic(_) => "http_basic",
            Auth::TrustedHeaders => "keystone",
        }
    }

    /// Authenticate a request from its headers (REST) or metadata (gRPC).
    ///
    /// # Errors
    /// [`AuthError::Unauthenticated`] for missing or wrong credentials.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Identity, AuthError> {
        match self {
            Auth::NoAuth => Ok(Identity::unrestricted(None)),
            Auth::HttpBasic(users) => {
                let user = check_basic(users, header(headers, "authorization"))
                    .await
                    .ok_or(AuthError::Unauthenticated)?;
                Ok(Identity::unrestricted(Some(user)))
            }
            Auth::TrustedHeaders => trusted_identity(headers).ok_or(AuthError::Unauthenticated),
        }
    }
}

/// Check `Basic base64(user:pass)` against the bcrypt entries; the user on success.
async fn check_basic(
    users: &HashMap<String, String>,
    authorization: Option<&str>,
) -> Option<String> {
    let creds = authorization?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(creds.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, pass) = decoded.split_once(':')?;
    // An unknown user costs a bcrypt check too, so timing does not tell which users exist.
    let (known, hash) = match users.get(user) {
        Some(h) => (true, h.clone()),
        None => (false, DUMMY_HASH.to_owned()),
    };
    let pass = pass.to_owned();
    // bcrypt is deliberately slow: keep it off the async workers.
    let ok = tokio::task::spawn_blocking(move || bcrypt::verify(pass, &hash).unwrap_or(false))
        .await
        .unwrap_or(false);
    (ok && known).then(|| user.to_owned())
}

/// A bcrypt hash of a random string, checked against when the user is unknown.
const DUMMY_HASH: &str = "$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";

/// The identity keystonemiddleware passed on, if the token was valid.
fn trusted_identity(h: &HeaderMap) -> Option<Identity> {
    if let Some(status) = header(h, "x-identity-status")
        && !status.eq_ignore_ascii_case("confirmed")
    {
        return None;
    }
    let roles = header(h, "x-roles")?;
    let system = header(h, "x-system-scope")
        .or_else(|| header(h, "openstack-system-scope"))
        .is_some_and(|s| s.eq_ignore_ascii_case("all"));
    let project = header(h, "x-project-id").map(str::to_owned);
    if !system && project.is_none() {
        return None;
    }
    let mut id = Identity::scoped(roles.split(','), project, system);
    id.project_name = header(h, "x-project-name").map(str::to_owned);
    id.user = header(h, "x-user-id").or_else(|| header(h, "x-user-name")).map(str::to_owned);
    Some(id)
}

/// Paths reachable without user credentials.
pub fn is_exempt(path: &str) -> bool {
    matches!(
        path,
        "/" | "/v1"
            | "/v1/"
            | "/healthz"
            | "/metrics"
            | "/v1/lookup"
            | "/v1/continue_inspection"
            | "/v1/openapi.json"
    ) || path.starts_with("/v1/heartbeat/")
        // The iSCSI ramdisk's callback: its one-time deploy key is the credential.
        || (path.starts_with("/v1/nodes/") && path.ends_with("/vendor_passthru/pass_deploy_info"))
}

/// Middleware: authenticate, record the [`Identity`] for the handlers, and apply the
/// route's policy ([`crate::policy::guard_request`]) before the handler runs.
pub async fn layer(State(state): State<ApiState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let identity = match state.auth.authenticate(req.headers()).await {
        Ok(id) => id,
        Err(_) if is_exempt(&path) => Identity::anonymous(),
        Err(e) => {
            tracing::info!(path = %path, "request refused: not authenticated");
            return ApiError::from(e).into_response();
        }
    };
    if !is_exempt(&path)
        && let Err(e) = crate::policy::guard_request(&state, &identity, req.method(), &path).await
    {
        return e.into_response();
    }
    req.extensions_mut().insert(identity);
    next.run(req).await
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

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[tokio::test]
    async fn test_http_basic_checks_bcrypt() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let auth = Auth::parse_htpasswd(&format!("# comment\nadmin:{hash}\n"), "x").unwrap();
        let ok = |u: &str, p: &str| headers(&[("authorization", &basic(u, p))]);
        let id = auth.authenticate(&ok("admin", "s3cret")).await.unwrap();
        assert!(!id.enforced() && id.user.as_deref() == Some("admin"));
        assert!(auth.authenticate(&ok("admin", "wrong")).await.is_err());
        assert!(auth.authenticate(&ok("nobody", "s3cret")).await.is_err());
        assert!(auth.authenticate(&HeaderMap::new()).await.is_err());
        assert!(auth.authenticate(&headers(&[("authorization", "Bearer x")])).await.is_err());
        assert!(Auth::parse_htpasswd("admin:{SHA}abc", "x").is_err());
        assert!(is_exempt("/v1/heartbeat/abc") && !is_exempt("/v1/nodes"));
    }

    #[tokio::test]
    async fn test_trusted_headers_identity() {
        let auth = Auth::TrustedHeaders;
        let id = auth
            .authenticate(&headers(&[
                ("x-identity-status", "Confirmed"),
                ("x-roles", "member,reader"),
                ("x-project-id", "p1"),
            ]))
            .await
            .unwrap();
        assert!(id.enforced() && id.has(Role::Member) && !id.has(Role::Admin));
        assert_eq!(id.project_id.as_deref(), Some("p1"));
        assert!(!id.system_scope);
        let id = auth
            .authenticate(&headers(&[("x-roles", "admin"), ("openstack-system-scope", "all")]))
            .await
            .unwrap();
        assert!(id.system_scope && id.has(Role::Admin) && id.has(Role::Reader));
        // Invalid token, no roles, no scope: refused.
        for bad in [
            headers(&[
                ("x-identity-status", "Invalid"),
                ("x-roles", "admin"),
                ("x-project-id", "p"),
            ]),
            headers(&[("x-project-id", "p1")]),
            headers(&[("x-roles", "admin")]),
            HeaderMap::new(),
        ] {
            assert!(auth.authenticate(&bad).await.is_err(), "{bad:?}");
        }
    }

    #[test]
    fn test_roles_imply_as_keystone() {
        let id = Identity::scoped(["manager"], Some("p".into()), false);
        assert!(id.has(Role::Manager) && id.has(Role::Member) && id.has(Role::Reader));
        assert!(!id.has(Role::Admin) && !id.has(Role::Service));
        let id = Identity::scoped(["service"], Some("p".into()), false);
        assert!(id.has(Role::Service) && !id.has(Role::Reader));
    }
}
