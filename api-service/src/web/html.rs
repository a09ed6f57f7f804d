//! The two pages: `web/index.html` with its `{{slots}}` filled on the server. Every value
//! that comes from a request or the database is escaped ([`escape`]); the only markup put
//! into a slot is built here from escaped parts ([`Markup`]).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use deploy::ProvisionState;

use super::assets;
use crate::auth::{Auth, Identity};
use crate::error::ApiError;
use crate::service::ApiState;

/// The page template (both views; the script shows the one named by `data-page`).
const INDEX: &str = include_str!("../../web/index.html");

/// What the pages may load and talk to: only this origin, no inline script or style.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Escape text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// HTML that may go into a slot as it is: escaped text, or markup built from escaped parts.
#[derive(Debug, Clone, Default)]
struct Markup(String);

impl Markup {
    /// Text, escaped.
    fn text(s: &str) -> Self {
        Markup(escape(s))
    }

    /// A fixed piece of markup written in this file.
    fn fixed(s: &'static str) -> Self {
        Markup(s.to_owned())
    }
}

/// Fill the `{{name}}` slots of `template` in one pass (a value is never scanned for slots
/// itself); a slot without a value renders empty.
fn render(template: &str, slots: &[(&str, Markup)]) -> String {
    let mut out = String::with_capacity(template.len() + 1024);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = after[..end].trim();
        if let Some((_, v)) = slots.iter().find(|(k, _)| *k == name) {
            out.push_str(&v.0);
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// The filters of the fleet page, as its form sends them (empty = no filter).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct FleetFilters {
    pub provision_state: Option<String>,
    pub owner: Option<String>,
    pub conductor_group: Option<String>,
    pub failed: bool,
    pub maintenance: Option<bool>,
}

impl FleetFilters {
    /// From the query string; unknown keys are ignored, empty values are no filter.
    pub fn from_query(q: &HashMap<String, String>) -> Self {
        let get = |k: &str| q.get(k).map(|v| v.trim()).filter(|v| !v.is_empty()).map(str::to_owned);
        let flag = |k: &str| get(k).and_then(|v| crate::service::parse_bool(k, &v).ok());
        Self {
            provision_state: get("provision_state"),
            owner: get("owner"),
            conductor_group: get("conductor_group"),
            failed: flag("failed").unwrap_or(false),
            maintenance: flag("maintenance"),
        }
    }
}

/// The `<option>`s of the provision-state filter, the chosen one selected.
fn state_options(chosen: Option<&str>) -> Markup {
    let mut out = String::from("<option value=\"\">any state</option>");
    for s in deploy::state::ALL_STATES.iter().filter(|s| !s.is_pseudo()) {
        let name = s.as_str();
        let sel = if chosen == Some(name) { " selected" } else { "" };
        let name = escape(name);
        out.push_str(&format!("<option value=\"{name}\"{sel}>{name}</option>"));
    }
    // A state that is not one (a hand-edited URL) stays visible, so the empty result explains
    // itself; the server refuses it with its own message.
    if let Some(c) = chosen.filter(|c| c.parse::<ProvisionState>().is_err()) {
        let c = escape(c);
        out.push_str(&format!("<option value=\"{c}\" selected>{c}</option>"));
    }
    Markup(out)
}

/// The three-way maintenance filter.
fn maintenance_options(chosen: Option<bool>) -> Markup {
    let opt = |v: &str, label: &str, sel: bool| {
        format!("<option value=\"{v}\"{}>{label}</option>", if sel { " selected" } else { "" })
    };
    Markup(
        [
            opt("", "any", chosen.is_none()),
            opt("true", "in maintenance", chosen == Some(true)),
            opt("false", "not in maintenance", chosen == Some(false)),
        ]
        .concat(),
    )
}

/// Who is signed in, in words.
pub(super) fn who(auth: &Auth, id: Option<&Identity>) -> String {
    let Some(id) = id else { return "not signed in".into() };
    if !id.enforced() {
        return match (&id.user, auth) {
            (Some(u), _) => format!("{u} (administrator)"),
            (None, Auth::NoAuth) => "no authentication: everyone is an administrator".into(),
            (None, _) => "administrator".into(),
        };
    }
    let roles = id.role_names().join(", ");
    let scope = match (&id.project_id, id.system_scope) {
        (_, true) => "system".to_owned(),
        (Some(p), false) => format!("project {p}"),
        (None, false) => "no scope".to_owned(),
    };
    match &id.user {
        Some(u) => format!("{u} ({roles}; {scope})"),
        None => format!("{roles} ({scope})"),
    }
}

/// The identity behind a page request. In `http_basic` mode a page needs credentials (the
/// browser asks for them and sends them with the script's calls too); otherwise the page
/// shell, which holds no data, is served to anyone and the script signs in.
async fn page_identity(
    state: &ApiState,
    headers: &HeaderMap,
) -> Result<Option<Identity>, Response> {
    match state.auth.authenticate(headers).await {
        Ok(id) => Ok(Some(id)),
        Err(_) if matches!(state.auth, Auth::HttpBasic(_)) => {
            Err(ApiError::Unauthorized.into_response())
        }
        Err(_) => Ok(None),
    }
}

/// An HTML answer with the page headers.
fn page(body: String) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    super::harden(&mut resp, "no-store");
    resp
}

/// The slots both pages fill.
fn common_slots(state: &ApiState, id: Option<&Identity>) -> Vec<(&'static str, Markup)> {
    vec![
        ("version", Markup::text(assets::version())),
        ("auth", Markup::text(state.auth.name())),
        ("who", Markup::text(&who(&state.auth, id))),
    ]
}

/// `GET /ui`: the fleet page, its filter form filled from the query.
pub(super) async fn fleet_page(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let id = match page_identity(&state, &headers).await {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let f = FleetFilters::from_query(&q);
    let mut slots = common_slots(&state, id.as_ref());
    slots.extend([
        ("title", Markup::fixed("Fleet")),
        ("page", Markup::fixed("fleet")),
        ("node", Markup::default()),
        ("node_hidden", Markup::fixed("hidden")),
        ("fleet_hidden", Markup::default()),
        ("state_options", state_options(f.provision_state.as_deref())),
        ("maintenance_options", maintenance_options(f.maintenance)),
        ("owner", Markup::text(f.owner.as_deref().unwrap_or_default())),
        ("conductor_group", Markup::text(f.conductor_group.as_deref().unwrap_or_default())),
        ("failed_checked", if f.failed { Markup::fixed("checked") } else { Markup::default() }),
    ]);
    page(render(INDEX, &slots))
}

/// `GET /ui/nodes/{ident}`: one node's page (its data comes from the REST API).
pub(super) async fn node_page(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(ident): Path<String>,
) -> Response {
    let id = match page_identity(&state, &headers).await {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let mut slots = common_slots(&state, id.as_ref());
    slots.extend([
        ("title", Markup::text(&ident)),
        ("page", Markup::fixed("node")),
        ("node", Markup::text(&ident)),
        ("node_hidden", Markup::default()),
        ("fleet_hidden", Markup::fixed("hidden")),
        ("state_options", state_options(None)),
        ("maintenance_options", maintenance_options(None)),
    ]);
    page(render(INDEX, &slots))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(escape("plain-node_01"), "plain-node_01");
    }

    #[test]
    fn test_render_fills_slots_once_and_escapes_text() {
        let t = "<p title=\"{{a}}\">{{ b }}</p>{{missing}}{{unterminated";
        let out = render(t, &[("a", Markup::text("\"><img src=x>")), ("b", Markup::text("{{a}}"))]);
        assert_eq!(out, "<p title=\"&quot;&gt;&lt;img src=x&gt;\">{{a}}</p>{{unterminated");
    }

    #[test]
    fn test_template_slots_are_all_known() {
        let known = [
            "version",
            "auth",
            "who",
            "title",
            "page",
            "node",
            "node_hidden",
            "fleet_hidden",
            "state_options",
            "maintenance_options",
            "owner",
            "conductor_group",
            "failed_checked",
        ];
        let mut rest = INDEX;
        while let Some(start) = rest.find("{{") {
            let after = &rest[start + 2..];
            let end = after.find("}}").expect("every slot is closed");
            let name = after[..end].trim();
            assert!(known.contains(&name), "unknown slot {name} in index.html");
            rest = &after[end + 2..];
        }
    }

    #[test]
    fn test_state_options_select_and_escape() {
        let o = state_options(Some("active")).0;
        assert!(o.contains("<option value=\"active\" selected>active</option>"), "{o}");
        assert!(!o.contains("deploy complete"), "pseudo states are not offered: {o}");
        let o = state_options(Some("<b>")).0;
        assert!(o.contains("<option value=\"&lt;b&gt;\" selected>&lt;b&gt;</option>"), "{o}");
    }

    #[test]
    fn test_filters_from_query() {
        let q: HashMap<String, String> = [
            ("provision_state", "active"),
            ("owner", " "),
            ("failed", "1"),
            ("maintenance", "false"),
            ("other", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let f = FleetFilters::from_query(&q);
        assert_eq!(f.provision_state.as_deref(), Some("active"));
        assert_eq!(f.owner, None);
        assert!(f.failed);
        assert_eq!(f.maintenance, Some(false));
    }

    #[test]
    fn test_who_names_roles_and_scope() {
        let id = Identity::scoped(["member"], Some("p1".into()), false);
        assert_eq!(who(&Auth::TrustedHeaders, Some(&id)), "member, reader (project p1)");
        assert_eq!(who(&Auth::TrustedHeaders, None), "not signed in");
        let admin = Identity::unrestricted(None);
        assert!(who(&Auth::NoAuth, Some(&admin)).contains("everyone is an administrator"));
    }
}
