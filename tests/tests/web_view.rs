//! The fleet web view (`/ui`) in a real browser: Debian's Chromium, headless, driven over
//! WebDriver (chromedriver) with fantoccini, against the built `ferric up` while simulated
//! machines deploy.
//!
//! - The stack runs in `keystone` mode. Two small front proxies stand in for
//!   keystonemiddleware: each passes every request on with the identity headers of one user
//!   (a system admin, a system reader), as a token-validating proxy would. The browser talks
//!   to a proxy only, so the page, its script, its event stream and its REST calls all carry
//!   that user's identity and nothing else.
//! - Images come from a throttled HTTP server, so a write lasts long enough to be watched.
//!
//! Checked: a deploying node's progress bar advances; a node turns `active` on the page
//! without a reload; a deploy started by clicking on a node's page reaches `active`; a reader
//! sees no action buttons; and with 10,000 enrolled nodes the fleet page's load, a scroll
//! through all of them and a filter are timed (printed, not asserted) and checked for
//! correctness. Screenshots go to `$CARGO_TARGET_DIR/web-view-screenshots/` and their paths
//! are printed.
//!
//! Chromium and chromedriver (`apt-get install chromium chromium-driver`) are peers: without
//! them these tests skip loudly, or fail when `FERRIC_REQUIRE_PEERS=1`.

#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "test code: a failed unwrap is a failed test; timings and screenshot paths are printed"
)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::testing::{Need, require_service};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use sim::firmware::NetbootConfig;
use sim::ramdisk::AgentLauncher;
use sim::{Fleet, FleetConfig};
use tests::ferric_up::Up;
use tests::openstack::target_dir;
use tokio_util::sync::CancellationToken;

/// The two tests run one after the other: each starts a stack and a browser, and on a small
/// machine they would slow each other's timings down.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---- the browser ---------------------------------------------------------------------------

/// Chromium and chromedriver, from the environment or where Debian installs them.
fn find_browser() -> Result<(PathBuf, PathBuf), String> {
    let find = |var: &str, names: &[&str]| -> Result<PathBuf, String> {
        if let Some(p) = std::env::var_os(var) {
            let p = PathBuf::from(p);
            return if p.is_file() {
                Ok(p)
            } else {
                Err(format!("{var}={} is no file", p.display()))
            };
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        names
            .iter()
            .find_map(|name| {
                std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
            })
            .ok_or_else(|| format!("no {} on PATH", names.join(" or ")))
    };
    let chromium = find("FERRIC_CHROMIUM", &["chromium", "chromium-browser"])?;
    let driver = find("FERRIC_CHROMEDRIVER", &["chromedriver"])?;
    Ok((chromium, driver))
}

/// A chromedriver on a free loopback port, in its own process group (killed with its
/// browsers when dropped).
struct Driver {
    child: Child,
    url: String,
    chromium: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and any browser a failed test left open.
        let _ =
            Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    /// Starts chromedriver, or `None` (a loud skip, or a failure under
    /// `FERRIC_REQUIRE_PEERS=1`) when Chromium or chromedriver is missing.
    async fn start() -> Option<Driver> {
        let (chromium, chromedriver) = require_service(
            Need::Peers,
            "headless Chromium and chromedriver (apt-get install chromium chromium-driver)",
            find_browser(),
        )?;
        // chromedriver takes no port 0: pick a free port and retry if another process takes
        // it first.
        for attempt in 0..5 {
            let port =
                std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut child = {
                use std::os::unix::process::CommandExt as _;
                Command::new(&chromedriver)
                    .arg(format!("--port={port}"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .process_group(0)
                    .spawn()
                    .expect("starting chromedriver")
            };
            let url = format!("http://127.0.0.1:{port}");
            let http = reqwest::Client::builder().no_proxy().build().unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                let ready = http.get(format!("{url}/status")).send().await;
                if let Ok(r) = ready
                    && let Ok(v) = r.json::<Value>().await
                    && v["value"]["ready"] == true
                {
                    return Some(Driver { child, url, chromium });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
            println!("chromedriver on port {port} did not come up (attempt {attempt}); retrying");
        }
        panic!("chromedriver did not start on any of 5 free ports");
    }

    /// A new headless browser session.
    async fn session(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": self.chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--no-first-run", "--no-proxy-server",
                         "--window-size=1400,900"],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session through chromedriver")
    }
}

/// Run `script` (a function body; `arguments[0]` is `arg`) until it returns something other
/// than `null`/`false`; that value. Panics after `timeout` with the last value.
async fn wait_js(c: &Client, what: &str, timeout: Duration, script: &str, arg: Value) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let v = c.execute(script, vec![arg.clone()]).await.unwrap();
        if !v.is_null() && v != Value::Bool(false) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?} (last {v})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Saves a screenshot under `$CARGO_TARGET_DIR/web-view-screenshots/` and prints its path.
async fn screenshot(c: &Client, name: &str) -> PathBuf {
    let dir = target_dir().join("web-view-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.png"));
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(&path, png).unwrap();
    println!("screenshot: {}", path.display());
    path
}

/// Marks the page; [`assert_not_reloaded`] fails if it was reloaded since.
async fn mark_page(c: &Client) {
    c.execute("window.__ferricTestMark = 'same page'; return true;", vec![]).await.unwrap();
}

async fn assert_not_reloaded(c: &Client) {
    let v = c.execute("return window.__ferricTestMark || null;", vec![]).await.unwrap();
    assert_eq!(v, "same page", "the page was reloaded");
}

// ---- ferric up -------------------------------------------------------------------------------

/// Short timeouts and quick polling, as the other `ferric up` tests use.
const FAST: &str = "[conductor]\ncallback_timeout_secs = 60.0\n[conductor.redfish]\npower_poll_interval_ms = 100\n\
                    [telemetry]\nfilter = \"warn\"\n";

// ---- identities: the headers a token-validating front proxy passes on -----------------------

type Identity = &'static [(&'static str, &'static str)];

const ADMIN: Identity = &[
    ("x-identity-status", "Confirmed"),
    ("x-roles", "admin"),
    ("x-system-scope", "all"),
    ("x-user-id", "alice"),
];
const READER: Identity = &[
    ("x-identity-status", "Confirmed"),
    ("x-roles", "reader"),
    ("x-system-scope", "all"),
    ("x-user-id", "rita"),
];

/// Headers a client may not set itself: the proxy owns them.
const IDENTITY_HEADERS: [&str; 9] = [
    "x-identity-status",
    "x-roles",
    "x-project-id",
    "x-project-name",
    "x-user-id",
    "x-user-name",
    "x-system-scope",
    "openstack-system-scope",
    "x-service-roles",
];

/// A reverse proxy in front of `upstream` that passes every request on as `identity`
/// (stripping identity headers the client sent), streaming the answers (the event stream
/// included). Returns its base URL.
async fn identity_proxy(upstream: String, identity: Identity, token: CancellationToken) -> String {
    use axum::body::Body;
    use axum::extract::Request;
    use axum::response::Response;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    // Idle connections are dropped before the API's own idle timeout closes them (see Api).
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let forward = move |req: Request| {
        let (http, upstream) = (http.clone(), upstream.clone());
        async move {
            let (parts, body) = req.into_parts();
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let mut rb = http.request(parts.method.clone(), format!("{upstream}{path}"));
            for (name, value) in &parts.headers {
                let n = name.as_str();
                if IDENTITY_HEADERS.contains(&n)
                    || matches!(n, "host" | "content-length" | "connection")
                {
                    continue;
                }
                rb = rb.header(name, value);
            }
            for (k, v) in identity {
                rb = rb.header(*k, *v);
            }
            let body = axum::body::to_bytes(body, 64 << 20).await.unwrap_or_default();
            let resp = match rb.body(body).send().await {
                Ok(r) => r,
                Err(e) => {
                    return Response::builder()
                        .status(502)
                        .body(Body::from(format!("upstream: {e}")))
                        .unwrap();
                }
            };
            let mut out = Response::builder().status(resp.status());
            for (name, value) in resp.headers() {
                if !matches!(name.as_str(), "content-length" | "transfer-encoding" | "connection") {
                    out = out.header(name, value);
                }
            }
            out.body(Body::from_stream(resp.bytes_stream())).unwrap()
        }
    };
    let app = axum::Router::new().fallback(forward);
    tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned()).await.unwrap();
    });
    base
}

/// REST calls to the API as `identity` (straight to the API, as the proxy would send them).
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    identity: Identity,
}

impl Api {
    fn new(base: &str, identity: Identity) -> Api {
        // The API closes a keep-alive connection after api.header_read_timeout (10 s) idle;
        // a request sent on one just as it closes is reset, so pooled connections are
        // dropped sooner than that (what any client of a server with an idle timeout does).
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        Api { http, base: base.to_owned(), identity }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut rb = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header("X-OpenStack-Ironic-API-Version", "latest");
        for (k, v) in self.identity {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn node(&self, id: &str) -> Value {
        self.call(reqwest::Method::GET, &format!("/v1/nodes/{id}"), None).await
    }

    async fn provision(&self, id: &str, target: &str) {
        let path = format!("/v1/nodes/{id}/states/provision");
        self.call(reqwest::Method::PUT, &path, Some(json!({"target": target}))).await;
    }

    /// Polls until the node settles in `state` (no target, unlocked); fails on a failure state.
    async fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.node(id).await;
            let s = n["provision_state"].as_str().unwrap_or_default().to_owned();
            assert!(!s.ends_with("failed"), "node {id} failed on the way to {state}: {n}");
            if s == state && n["target_provision_state"].is_null() && n["reservation"].is_null() {
                return n;
            }
            assert!(Instant::now() < deadline, "node {id} not {state} within {timeout:?}: {n}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

// ---- images at a walking pace ----------------------------------------------------------------

/// Serves `image` at `/disk.img` at about `bytes_per_sec` per download, so that a deploy's
/// write can be watched. Returns the URL.
async fn slow_image_server(
    image: Arc<Vec<u8>>,
    bytes_per_sec: usize,
    token: CancellationToken,
) -> String {
    use axum::body::{Body, Bytes};
    use axum::http::header;

    const CHUNK: usize = 64 << 10;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/disk.img", listener.local_addr().unwrap());
    let pause = Duration::from_secs_f64(CHUNK as f64 / bytes_per_sec as f64);
    let serve = move || {
        let image = image.clone();
        async move {
            let len = image.len();
            let chunks = futures::stream::unfold(0usize, move |at| {
                let image = image.clone();
                async move {
                    if at >= image.len() {
                        return None;
                    }
                    tokio::time::sleep(pause).await;
                    let end = (at + CHUNK).min(image.len());
                    Some((Ok::<_, std::io::Error>(Bytes::copy_from_slice(&image[at..end])), end))
                }
            });
            (
                [
                    (header::CONTENT_LENGTH, len.to_string()),
                    (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                ],
                Body::from_stream(chunks),
            )
        }
    };
    let app = axum::Router::new().route("/disk.img", axum::routing::get(serve));
    tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned()).await.unwrap();
    });
    url
}

/// A fleet of simulated machines booting from `up`, running the real agent.
async fn sim_fleet(up: &Up, n: usize, token: &CancellationToken) -> Fleet {
    let netboot = NetbootConfig {
        ipxe_script_url: Some(format!("{}/boot.ipxe", up.http).parse().unwrap()),
        tftp_server: None,
        timeout: Duration::from_secs(30),
    };
    let mut cfg = FleetConfig::new(up.data_dir.path().join("machines"), n, netboot);
    cfg.launcher = Arc::new(AgentLauncher { lookup_interval_ms: Some(300) });
    cfg.seed = u64::from(std::process::id());
    Fleet::start(cfg, token.child_token()).await.unwrap()
}

/// Enrols a machine as a redfish node with its ports; its UUID.
async fn enrol(api: &Api, m: &sim::FleetMachine) -> String {
    let body = json!({"name": m.machine.name(), "driver": "redfish",
                      "driver_info": Value::Object(m.redfish_driver_info()),
                      "deploy_interface": "direct", "owner": "p-fleet"});
    let node = api.call(reqwest::Method::POST, "/v1/nodes", Some(body)).await;
    let uuid = node["uuid"].as_str().unwrap().to_owned();
    for mac in m.machine.macs() {
        let port = json!({"address": mac.to_string(), "node_uuid": uuid});
        api.call(reqwest::Method::POST, "/v1/ports", Some(port)).await;
    }
    uuid
}

/// What a fleet row shows: its state and its progress bar (if visible).
const ROW_JS: &str = "const r = document.querySelector(`.rows .row[data-uuid=\"${arguments[0]}\"]`);
    if (!r) return null;
    const bar = r.querySelector('progress.bar');
    const state = r.querySelector('[data-field=provision_state]');
    return {state: state ? state.textContent : null,
            bar: bar && !bar.hidden && bar.hasAttribute('value') ? {value: bar.value, max: bar.max} : null,
            text: r.querySelector('.prog-text').textContent};";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_web_view_shows_live_deploys_and_hides_actions_from_readers() {
    let _serial = SERIAL.lock().await;
    let Some(driver) = Driver::start().await else { return };
    let up = Up::start(&format!("[api]\nauth_strategy = \"keystone\"\n{FAST}"), &[]);
    let token = CancellationToken::new();
    let admin_url = identity_proxy(up.api.clone(), ADMIN, token.clone()).await;
    let reader_url = identity_proxy(up.api.clone(), READER, token.clone()).await;
    let api = Api::new(&up.api, ADMIN);

    // Three machines, enrolled and made available (manage, then provide: cleaning).
    let fleet = sim_fleet(&up, 3, &token).await;
    let image = sim::disk::build_whole_disk_image(24 << 20, 16 << 20, 23);
    let sha = sim::disk::sha256_hex(&image);
    let image_len = image.len() as u64;
    let image_url = slow_image_server(Arc::new(image), 3 << 20, token.clone()).await;
    let mut uuids = Vec::new();
    for m in fleet.machines() {
        m.machine.expect_image(image_len, &sha);
        uuids.push(enrol(&api, m).await);
    }
    let mut ready = tokio::task::JoinSet::new();
    for id in uuids.clone() {
        let api = api.clone();
        ready.spawn(async move {
            api.provision(&id, "manage").await;
            api.wait_state(&id, "manageable", Duration::from_secs(60)).await;
            api.provision(&id, "provide").await;
            api.wait_state(&id, "available", Duration::from_secs(120)).await;
        });
    }
    while let Some(r) = ready.join_next().await {
        r.unwrap();
    }

    // The admin's fleet page: three available nodes, live.
    let admin = driver.session().await;
    admin.goto(&format!("{admin_url}/ui")).await.unwrap();
    wait_js(
        &admin,
        "three rows and a live event stream",
        Duration::from_secs(30),
        "return document.querySelectorAll('.rows .row[data-uuid]').length === 3
            && document.getElementById('live').dataset.state === 'live';",
        Value::Null,
    )
    .await;
    mark_page(&admin).await;
    let who = admin.find(Locator::Id("who")).await.unwrap().text().await.unwrap();
    assert!(who.contains("alice") && who.contains("admin"), "{who}");

    // Two nodes deploy (started through the REST API, as any client would).
    let (a, b, c) = (&uuids[0], &uuids[1], &uuids[2]);
    for id in [a, b] {
        let ops = json!([
            {"op": "add", "path": "/instance_info/image_source", "value": image_url},
            {"op": "add", "path": "/instance_info/image_os_hash_algo", "value": "sha256"},
            {"op": "add", "path": "/instance_info/image_os_hash_value", "value": sha},
        ]);
        api.call(reqwest::Method::PATCH, &format!("/v1/nodes/{id}"), Some(ops)).await;
        api.provision(id, "active").await;
    }

    // 1. The progress bar of a deploying node advances between two reads.
    let first =
        wait_js(&admin, "a progress bar part-way", Duration::from_secs(120), ROW_JS, json!(a))
            .await;
    let first = if first["bar"]["value"].as_f64().unwrap_or(0.0) > 0.0 {
        first
    } else {
        wait_js(
            &admin,
            "a progress bar past zero",
            Duration::from_secs(60),
            &format!("const v = (() => {{ {ROW_JS} }})(); return v && v.bar && v.bar.value > 0 ? v : null;"),
            json!(a),
        )
        .await
    };
    let v1 = first["bar"]["value"].as_f64().unwrap();
    assert!(v1 < first["bar"]["max"].as_f64().unwrap(), "the write already ended: {first}");
    assert!(first["text"].as_str().unwrap().contains("MiB"), "{first}");
    screenshot(&admin, "fleet-deploying").await;
    let second = wait_js(
        &admin,
        "the progress bar to advance",
        Duration::from_secs(30),
        &format!(
            "const v = (() => {{ {ROW_JS} }})();
             return v && (v.bar ? v.bar.value > {v1} : v.state === 'active') ? v : null;"
        ),
        json!(a),
    )
    .await;
    println!("progress of {a}: {first} then {second}");

    // 2. The node turns active on the page, without a reload.
    wait_js(
        &admin,
        "the deployed nodes active on the fleet page",
        Duration::from_secs(180),
        "const s = (id) => { const r = document.querySelector(`.rows .row[data-uuid=\"${id}\"] [data-field=provision_state]`);
                             return r && r.textContent; };
         return s(arguments[0][0]) === 'active' && s(arguments[0][1]) === 'active';",
        json!([a, b]),
    )
    .await;
    assert_not_reloaded(&admin).await;
    api.wait_state(a, "active", Duration::from_secs(30)).await;
    api.wait_state(b, "active", Duration::from_secs(30)).await;
    screenshot(&admin, "fleet-active").await;

    // 3. A deploy started by clicking: the node's page, its deploy form, its button.
    admin
        .find(Locator::Css(&format!(".rows .row[data-uuid=\"{c}\"] a.node-link")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let form = admin
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("#deploy-form"))
        .await
        .unwrap();
    mark_page(&admin).await;
    let url_input = form.find(Locator::Css("input[name=image_url]")).await.unwrap();
    url_input.clear().await.unwrap();
    url_input.send_keys(&image_url).await.unwrap();
    form.find(Locator::Css("input[name=checksum]"))
        .await
        .unwrap()
        .send_keys(&format!("sha256:{sha}"))
        .await
        .unwrap();
    form.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
    wait_js(
        &admin,
        "the clicked deploy writing the image",
        Duration::from_secs(120),
        "const b = document.getElementById('node-bar'); return b && b.value > 0;",
        Value::Null,
    )
    .await;
    screenshot(&admin, "node-deploying").await;
    let outcome = wait_js(
        &admin,
        "the clicked deploy active on the node's page",
        Duration::from_secs(180),
        "const e = document.getElementById('action-error');
         if (!e.hidden) return 'error: ' + e.textContent;
         return document.getElementById('node-state').dataset.state === 'active';",
        Value::Null,
    )
    .await;
    assert_eq!(outcome, true, "the deploy failed on the page: {outcome}");
    assert_not_reloaded(&admin).await;
    let n = api.wait_state(c, "active", Duration::from_secs(30)).await;
    assert_eq!(n["instance_info"]["image_source"], image_url.as_str(), "{n}");
    assert_eq!(n["instance_info"]["image_os_hash_value"], sha.as_str(), "{n}");
    // The admin is offered the actions of an active node.
    wait_js(
        &admin,
        "the admin's actions for an active node",
        Duration::from_secs(15),
        "const b = document.querySelector('#actions button[data-action=undeploy]'); return b && !b.disabled;",
        Value::Null,
    )
    .await;
    screenshot(&admin, "node-active").await;

    // Maintenance on and off by clicking.
    let click = async |action: &str| {
        let css = format!("#actions button[data-action={action}]");
        admin.find(Locator::Css(&css)).await.unwrap().click().await.unwrap();
    };
    let field =
        "return (document.querySelector('#facts dd[data-field=maintenance]') || {}).textContent
                     === arguments[0];";
    click("maintenance_on").await;
    wait_js(
        &admin,
        "maintenance on",
        Duration::from_secs(30),
        field,
        json!("yes: set from the web view"),
    )
    .await;
    assert_eq!(api.node(c).await["maintenance"], true);
    click("maintenance_off").await;
    wait_js(&admin, "maintenance off", Duration::from_secs(30), field, json!("no")).await;
    assert_eq!(api.node(c).await["maintenance"], false);
    // Meanwhile another operator protects the node: the page still offers an undeploy, the
    // API refuses it, and the page shows the API's own message.
    let protect = |on: bool| json!([{"op": "replace", "path": "/protected", "value": on}]);
    api.call(reqwest::Method::PATCH, &format!("/v1/nodes/{c}"), Some(protect(true))).await;
    click("undeploy").await; // asks for a second click
    click("undeploy").await;
    let refused = wait_js(
        &admin,
        "the API's refusal on the page",
        Duration::from_secs(30),
        "const e = document.getElementById('action-error'); return e.hidden ? null : e.textContent;",
        Value::Null,
    )
    .await;
    let refused = refused.as_str().unwrap();
    assert!(
        refused.starts_with("Undeploy failed: ")
            && refused.contains("is protected and cannot be undeployed")
            && refused.contains("HTTP 403"),
        "{refused}"
    );
    // Refreshed after the refusal: the node shows as protected, and undeploy is off.
    wait_js(
        &admin,
        "the protected node",
        Duration::from_secs(15),
        "const p = document.querySelector('#facts dd[data-field=protected]');
         const b = document.querySelector('#actions button[data-action=undeploy]');
         return p && p.textContent === 'yes' && b && b.disabled;",
        Value::Null,
    )
    .await;
    screenshot(&admin, "node-refused").await;
    api.call(reqwest::Method::PATCH, &format!("/v1/nodes/{c}"), Some(protect(false))).await;
    assert_eq!(api.node(c).await["provision_state"], "active");
    assert_not_reloaded(&admin).await;

    // 4. A reader sees the fleet and the node, and no action buttons.
    let reader = driver.session().await;
    // Straight to the API, past the proxy: no identity, so the page asks for a token.
    reader.goto(&format!("{}/ui", up.api)).await.unwrap();
    wait_js(
        &reader,
        "the sign-in prompt without an identity",
        Duration::from_secs(30),
        "return !document.getElementById('signin').hidden
            && document.getElementById('who').textContent === 'not signed in'
            && document.querySelectorAll('.rows .row[data-uuid]').length === 0;",
        Value::Null,
    )
    .await;
    reader.goto(&format!("{reader_url}/ui")).await.unwrap();
    wait_js(
        &reader,
        "the reader's fleet",
        Duration::from_secs(30),
        "return document.querySelectorAll('.rows .row[data-uuid]').length === 3;",
        Value::Null,
    )
    .await;
    reader.goto(&format!("{reader_url}/ui/nodes/{c}")).await.unwrap();
    let shown = wait_js(
        &reader,
        "the reader's node page",
        Duration::from_secs(30),
        "const f = document.querySelector('#facts dd[data-field=provision_state]');
         const a = document.getElementById('actions');
         return f && f.textContent === 'active' && /may not act/.test(a.textContent)
             ? {buttons: document.querySelectorAll('button[data-action], [data-action]').length,
                actions: document.querySelectorAll('#actions button, #actions form').length,
                who: document.getElementById('who').textContent}
             : null;",
        Value::Null,
    )
    .await;
    assert_eq!(shown["buttons"], 0, "a reader must not see action buttons: {shown}");
    assert_eq!(shown["actions"], 0, "{shown}");
    assert!(shown["who"].as_str().unwrap().contains("rita"), "{shown}");
    screenshot(&reader, "node-reader").await;

    reader.close().await.unwrap();
    admin.close().await.unwrap();
    fleet.shutdown().await;
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_web_view_with_10000_nodes() {
    const NODES: usize = 10_000;
    const OWNERS: usize = 40;
    let _serial = SERIAL.lock().await;
    let Some(driver) = Driver::start().await else { return };
    let up = Up::start(FAST, &[]);
    let api = Api::new(&up.api, &[]);

    // Enrol 10,000 fake-hardware nodes through the REST API, 32 at a time.
    let started = Instant::now();
    let limit = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..NODES {
        let (api, permit) = (api.clone(), limit.clone().acquire_owned().await.unwrap());
        tasks.spawn(async move {
            let body = json!({"name": format!("bulk-{i:05}"), "driver": "fake-hardware",
                              "owner": format!("tenant-{:02}", i % OWNERS),
                              "conductor_group": format!("rack-{}", i % 8)});
            api.call(reqwest::Method::POST, "/v1/nodes", Some(body)).await;
            drop(permit);
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    println!("enrolled {NODES} nodes through the REST API in {:.1?}", started.elapsed());

    let c = driver.session().await;
    // The fleet page: time to the first rows on screen.
    let started = Instant::now();
    c.goto(&format!("{}/ui", up.api)).await.unwrap();
    let first = wait_js(
        &c,
        "the first rows",
        Duration::from_secs(30),
        "const rows = document.querySelectorAll('.rows .row[data-uuid]');
         return rows.length > 0 ? {rows: rows.length, loaded: Number(document.getElementById('count').dataset.count)} : null;",
        Value::Null,
    )
    .await;
    let load = started.elapsed();
    let nav = c
        .execute(
            "const n = performance.getEntriesByType('navigation')[0];
             return n ? Math.round(n.domContentLoadedEventEnd) : null;",
            vec![],
        )
        .await
        .unwrap();
    println!(
        "fleet page with {NODES} nodes: first rows on screen after {load:.1?} (DOMContentLoaded at {nav} ms; {first})"
    );
    screenshot(&c, "fleet-10000").await;

    // Scrolling to the end fetches every page; the DOM keeps only the rows in view.
    let started = Instant::now();
    let mut most_dom_rows = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let v = c
            .execute(
                "const vp = document.getElementById('viewport');
                 vp.scrollTop = vp.scrollHeight;
                 const c = document.getElementById('count');
                 return {count: Number(c.dataset.count), complete: c.dataset.complete === 'true',
                         dom: document.querySelectorAll('.rows .row').length};",
                vec![],
            )
            .await
            .unwrap();
        most_dom_rows = most_dom_rows.max(v["dom"].as_u64().unwrap());
        if v["complete"] == true {
            break v;
        }
        assert!(Instant::now() < deadline, "scrolling did not load every node: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "scrolled through all {} nodes in {:.1?}; at most {most_dom_rows} row elements in the DOM",
        done["count"],
        started.elapsed()
    );
    assert_eq!(done["count"], NODES, "{done}");
    assert!(most_dom_rows < 150, "rows are not virtualised: {most_dom_rows} row elements");
    let last = wait_js(
        &c,
        "the last node on screen",
        Duration::from_secs(10),
        "const rows = [...document.querySelectorAll('.rows .row[data-uuid]')].filter(r => !r.hidden);
         const names = rows.map(r => r.querySelector('a.node-link').textContent);
         return names.includes('bulk-09999') ? names.length : null;",
        Value::Null,
    )
    .await;
    println!("the end of the list shows {last} rows");

    // A filter, applied by the server: one owner's 250 nodes.
    let owner = c.find(Locator::Css("#filters input[name=owner]")).await.unwrap();
    owner.send_keys("tenant-07").await.unwrap();
    let started = Instant::now();
    c.find(Locator::Id("apply")).await.unwrap().click().await.unwrap();
    let filtered = wait_js(
        &c,
        "the filtered fleet",
        Duration::from_secs(30),
        "const c = document.getElementById('count');
         if (c.dataset.complete !== 'true') return null;
         const owners = [...document.querySelectorAll('.rows .row[data-uuid]')].filter(r => !r.hidden)
             .map(r => r.children[3].textContent);
         return {count: Number(c.dataset.count), owners: [...new Set(owners)], url: location.search};",
        Value::Null,
    )
    .await;
    let took = started.elapsed();
    println!(
        "filter owner=tenant-07 over {NODES} nodes: {} nodes listed after {took:.1?}",
        filtered["count"]
    );
    assert_eq!(filtered["count"], NODES / OWNERS, "{filtered}");
    assert_eq!(filtered["owners"], json!(["tenant-07"]), "{filtered}");
    assert!(filtered["url"].as_str().unwrap().contains("owner=tenant-07"), "{filtered}");
    screenshot(&c, "fleet-10000-filtered").await;

    // Failed only, on top: none of these nodes failed.
    c.find(Locator::Css("#filters input[name=failed]")).await.unwrap().click().await.unwrap();
    let started = Instant::now();
    c.find(Locator::Id("apply")).await.unwrap().click().await.unwrap();
    let none = wait_js(
        &c,
        "the failed-only filter",
        Duration::from_secs(30),
        "const c = document.getElementById('count');
         return c.dataset.complete === 'true' && location.search.includes('failed=true')
             ? {count: Number(c.dataset.count), text: c.textContent} : null;",
        Value::Null,
    )
    .await;
    println!("filter failed-only: {} after {:.1?}", none["text"], started.elapsed());
    assert_eq!(none["count"], 0, "{none}");
    c.close().await.unwrap();
}
