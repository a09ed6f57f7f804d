//! The client against a fake agent that records what it is sent and answers canned
//! bodies. The answers are written from IPA's documentation and source (ironic_python_agent
//! `api/app.py`, `extensions/base.py`, `errors.py`, `extensions/clean.py`, and reference
//! §4.3–4.5), not captured from a running agent; tests/tests/ipa.rs checks the client
//! against the real one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpListener;

use super::*;

const TOKEN: &str = "tok-0123456789abcdef0123456789abcdef-xyz";

/// One request the fake agent received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    body: Value,
}

type Answers = Arc<Mutex<Vec<(u16, String)>>>;

/// A fake agent: answers each request with the next canned `(status, body)` (the last one
/// again once they run out; status 0 closes the connection without an answer), one request
/// per connection.
struct Fake {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    async fn start(answers: Vec<(u16, Value)>) -> Self {
        Self::start_with(answers, None).await
    }

    async fn start_with(
        answers: Vec<(u16, Value)>,
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    ) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answers: Answers =
            Arc::new(Mutex::new(answers.into_iter().map(|(s, b)| (s, b.to_string())).collect()));
        let (s, a) = (seen.clone(), answers.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else { return };
                let (s, a, tls) = (s.clone(), a.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(cfg) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                serve_one(stream, &s, &a).await;
                            }
                        }
                        None => serve_one(tcp, &s, &a).await,
                    }
                });
            }
        });
        Self { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    seen: &Mutex<Vec<Seen>>,
    answers: &Mutex<Vec<(u16, String)>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let Ok(n) = stream.read(&mut chunk).await else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let Ok(n) = stream.read(&mut chunk).await else { return };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or_default().to_owned();
    let target = words.next().unwrap_or_default().to_owned();
    let body = serde_json::from_slice(&buf[head_end..]).unwrap_or(Value::Null);
    seen.lock().unwrap().push(Seen { method, target, body });
    let (status, body) = {
        let mut a = answers.lock().unwrap();
        if a.len() > 1 { a.remove(0) } else { a[0].clone() }
    };
    if status == 0 {
        // The connection breaks before the answer.
        return;
    }
    let location = if (300..400).contains(&status) {
        "Location: http://198.51.100.7:9999/v1/commands/\r\n"
    } else {
        ""
    };
    let resp = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{location}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn client(url: &str) -> IpaClient {
    IpaClient::new(url, TOKEN, None, &AgentClientConfig::default()).unwrap()
}

/// A command result as IPA serializes one (`BaseCommandResult.serializable_fields`).
fn result(name: &str, status: &str, error: Value, result: Value) -> Value {
    json!({
        "id": "7d3c6b6e-49a1-4b6a-9c1c-3b0f2f7f2d10",
        "command_name": name,
        "command_status": status,
        "command_error": error,
        "command_result": result,
    })
}

/// IPA's error body for a refused request (`format_exception`).
fn fault(code: &str, text: &str) -> Value {
    json!({"faultcode": code, "faultstring": text})
}

fn node() -> Value {
    json!({"uuid": "1be26c0b-03f2-4d2e-ae87-c02d7f33c123", "driver_internal_info": {}})
}

#[tokio::test]
async fn test_command_posts_name_and_params_with_the_token_as_query_parameter() {
    let fake =
        Fake::start(vec![(200, result("sync", "SUCCEEDED", Value::Null, Value::Null))]).await;
    let c = client(&fake.url());
    let done = c.command("standby.sync", json!({"a": 1}), true).await.unwrap();
    assert_eq!(done.command_status, CommandStatus::Succeeded);
    assert!(done.is_done());
    let seen = fake.seen();
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].target, format!("/v1/commands/?wait=true&agent_token={TOKEN}"));
    assert_eq!(seen[0].body, json!({"name": "standby.sync", "params": {"a": 1}}));

    // Asynchronous: `wait=false`, the agent answers RUNNING.
    let fake =
        Fake::start(vec![(200, result("power_off", "RUNNING", Value::Null, Value::Null))]).await;
    let started = client(&fake.url()).power_off().await.unwrap();
    assert_eq!(started.command_status, CommandStatus::Running);
    assert!(!started.is_done());
    assert_eq!(fake.seen()[0].target, format!("/v1/commands/?wait=false&agent_token={TOKEN}"));
    assert_eq!(fake.seen()[0].body["name"], "standby.power_off");

    // Params must be an object: refused before anything is sent.
    let err = c.command("standby.sync", json!([1]), true).await.unwrap_err();
    assert!(matches!(err, IpaError::NotConfigured(_)), "{err:?}");
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn test_refusals_map_to_typed_errors() {
    let cases = [
        (401, fault("Client", "Token invalid."), "Unauthorized"),
        (409, fault("Client", "Agent is busy: executing command execute_clean_step"), "Busy"),
        (400, fault("Client", "Invalid command: Unknown command: make_coffee"), "Rejected"),
        (404, fault("Client", "Not found: Extension with id nope not found."), "Rejected"),
        (500, fault("Server", "boom"), "Server"),
        (302, json!({}), "Redirected"),
        (200, json!({"not": "a result"}), "InvalidResponse"),
    ];
    for (status, body, want) in cases {
        let fake = Fake::start(vec![(status, body.clone())]).await;
        let err = client(&fake.url()).command("x.y", json!({}), false).await.unwrap_err();
        let got = format!("{err:?}");
        assert!(got.starts_with(want), "HTTP {status}: {got}");
        assert!(!err.to_string().contains(TOKEN), "{err}");
        if let Some(text) = body.get("faultstring").filter(|_| status != 401) {
            assert!(err.to_string().contains(text.as_str().unwrap()), "{err}");
        }
        // Redirects are never followed: one request only.
        assert_eq!(fake.seen().len(), 1, "HTTP {status}");
    }
    let busy = IpaError::Busy { url: String::new(), fault: String::new() };
    assert!(busy.retryable());
    assert!(!IpaError::Unauthorized { url: String::new() }.retryable());
}

#[tokio::test]
async fn test_command_list_and_status_by_id() {
    let first = result("get_clean_steps", "SUCCEEDED", Value::Null, json!({}));
    let last = result("execute_clean_step", "RUNNING", Value::Null, Value::Null);
    let fake = Fake::start(vec![
        (200, json!({"commands": [first, last.clone()]})),
        (200, last),
        (404, fault("Client", "Not found: Command with id abc not found.")),
    ])
    .await;
    let c = client(&fake.url());
    let last = c.last_command().await.unwrap().unwrap();
    assert_eq!(last.command_name, "execute_clean_step");
    let by_id = c.command_status(&last.id).await.unwrap();
    assert_eq!(by_id, last);
    let err = c.command_status("abc").await.unwrap_err();
    assert!(matches!(err, IpaError::UnknownCommand { ref id, .. } if id == "abc"), "{err:?}");
    let seen = fake.seen();
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].target, format!("/v1/commands/?agent_token={TOKEN}"));
    assert_eq!(seen[1].target, format!("/v1/commands/{}?agent_token={TOKEN}", last.id));
}

#[tokio::test]
async fn test_wait_for_polls_until_the_command_is_done() {
    let running = result("install_bootloader", "RUNNING", Value::Null, Value::Null);
    let done = result("install_bootloader", "SUCCEEDED", Value::Null, json!({}));
    let fake = Fake::start(vec![(200, running.clone()), (200, running.clone()), (200, done)]).await;
    let c = client(&fake.url());
    let ms = Duration::from_millis;
    let r = c.wait_for("7d3c", ms(10), Duration::from_secs(10)).await.unwrap();
    assert_eq!(r.command_status, CommandStatus::Succeeded);
    assert_eq!(fake.seen().len(), 3);

    let fake = Fake::start(vec![(200, running)]).await;
    let err = client(&fake.url()).wait_for("7d3c", ms(10), ms(50)).await.unwrap_err();
    assert!(matches!(err, IpaError::StillRunning { .. }), "{err:?}");
    assert!(err.retryable());
}

#[test]
fn test_failed_results_carry_the_agent_error_as_ironic_reports_it() {
    // An async command that raised: `CommandExecutionError` serialized (errors.py).
    let failed: CommandResult = serde_json::from_value(result(
        "execute_clean_step",
        "FAILED",
        json!({"type": "CleaningError", "code": 500, "message": "Clean step failed",
               "details": "Unexpected exception performing clean step erase_devices"}),
        Value::Null,
    ))
    .unwrap();
    assert_eq!(
        failed.error_message().unwrap(),
        "Unexpected exception performing clean step erase_devices"
    );
    let err = failed.into_succeeded().unwrap_err();
    assert!(matches!(err, IpaError::CommandFailed { version_mismatch: false, .. }), "{err:?}");
    assert!(err.to_string().contains("erase_devices"), "{err}");

    // A sync command that failed with a string: `{"error": "..."}`; a bare string too.
    let wrapped: CommandResult = serde_json::from_value(result(
        "sync",
        "FAILED",
        json!({"message": "sync failed", "details": ""}),
        Value::Null,
    ))
    .unwrap();
    assert_eq!(wrapped.error_message().unwrap(), "sync failed");
    let bare: CommandResult =
        serde_json::from_value(result("sync", "FAILED", json!("it broke"), Value::Null)).unwrap();
    assert_eq!(bare.error_message().unwrap(), "it broke");

    // Hardware managers changed: both spellings.
    for status in ["CLEAN_VERSION_MISMATCH", "VERSION_MISMATCH"] {
        let vm: CommandResult = serde_json::from_value(result(
            "execute_clean_step",
            status,
            json!({"type": "VersionMismatch", "code": 409, "message": "Hardware managers \
                   version mismatch", "details": "..."}),
            Value::Null,
        ))
        .unwrap();
        assert_eq!(vm.command_status, CommandStatus::VersionMismatch);
        let err = vm.into_succeeded().unwrap_err();
        assert!(matches!(err, IpaError::CommandFailed { version_mismatch: true, .. }), "{err:?}");
    }
}

/// `clean.get_clean_steps`' result as clean.py builds it: steps per hardware manager after
/// de-duplication, and the managers' versions (hardware.py `get_current_versions`).
fn clean_steps_result() -> Value {
    json!({
        "clean_steps": {
            "GenericHardwareManager": [
                {"step": "erase_devices", "priority": 10, "interface": "deploy",
                 "reboot_requested": false, "abortable": true},
                {"step": "erase_pstore", "priority": 0, "interface": "deploy",
                 "reboot_requested": false, "abortable": true},
                {"step": "delete_configuration", "priority": 0, "interface": "raid",
                 "reboot_requested": false, "abortable": true, "requires_ramdisk": true}
            ],
            "SiteHardwareManager": [
                {"step": "erase_devices_metadata", "priority": 99, "interface": "deploy",
                 "reboot_requested": false, "abortable": true,
                 "argsinfo": {"force": {"description": "even if", "required": false}}}
            ]
        },
        "hardware_manager_version": {"generic_hardware_manager": "1.2", "site": "3"}
    })
}

#[tokio::test]
async fn test_clean_steps_are_listed_and_run_with_the_versions_they_came_with() {
    let listed = result("get_clean_steps", "SUCCEEDED", Value::Null, clean_steps_result());
    let started = result("execute_clean_step", "RUNNING", Value::Null, Value::Null);
    let fake = Fake::start(vec![(200, listed), (200, started)]).await;
    let c = client(&fake.url());
    let ports = [json!({"address": "52:54:00:12:34:56"})];
    let steps = c.get_clean_steps(&node(), &ports).await.unwrap();
    assert_eq!(steps.all().count(), 4);
    let step = steps.find("deploy", "erase_devices_metadata").unwrap().clone();
    assert_eq!(step.priority, 99);
    assert!(step.argsinfo.is_some());
    // Unknown step fields are kept as sent.
    let raid = steps.find("raid", "delete_configuration").unwrap();
    assert_eq!(raid.extra["requires_ramdisk"], true);
    assert_eq!(steps.hardware_manager_version["site"], "3");

    let mut run = step.clone();
    run.args = Some(serde_json::from_value(json!({"force": true})).unwrap());
    let r = c
        .execute_clean_step(&run, &node(), &ports, Some(&steps.hardware_manager_version))
        .await
        .unwrap();
    assert_eq!(r.command_status, CommandStatus::Running);
    let seen = fake.seen();
    assert_eq!(seen[0].body["name"], "clean.get_clean_steps");
    assert_eq!(seen[0].body["params"], json!({"node": node(), "ports": ports}));
    assert!(seen[0].target.contains("wait=true"));
    let sent = &seen[1].body;
    assert_eq!(sent["name"], "clean.execute_clean_step");
    assert!(seen[1].target.contains("wait=false"));
    assert_eq!(sent["params"]["step"]["step"], "erase_devices_metadata");
    assert_eq!(sent["params"]["step"]["args"], json!({"force": true}));
    assert_eq!(sent["params"]["clean_version"], clean_steps_result()["hardware_manager_version"]);
    assert_eq!(sent["params"]["node"], node());

    // What the finished step reports.
    let finished: CommandResult = serde_json::from_value(result(
        "execute_clean_step",
        "SUCCEEDED",
        Value::Null,
        json!({"clean_result": null, "clean_step": sent["params"]["step"]}),
    ))
    .unwrap();
    let (reported, res) = finished.executed_step(StepKind::Clean);
    assert_eq!(reported.unwrap(), run);
    assert!(res.is_none());
}

#[tokio::test]
async fn test_deploy_steps_use_the_deploy_names() {
    let listed = result(
        "get_deploy_steps",
        "SUCCEEDED",
        Value::Null,
        json!({"deploy_steps": {"GenericHardwareManager": [
            {"step": "write_image", "priority": 0, "interface": "deploy",
             "reboot_requested": false, "argsinfo": {"image_info": {}, "configdrive": {}}}]},
            "hardware_manager_version": {"generic_hardware_manager": "1.2"}}),
    );
    let started = result("execute_deploy_step", "RUNNING", Value::Null, Value::Null);
    let fake = Fake::start(vec![(200, listed), (200, started)]).await;
    let c = client(&fake.url());
    let steps = c.get_deploy_steps(&node(), &[]).await.unwrap();
    let write = steps.find("deploy", "write_image").unwrap();
    c.execute_deploy_step(write, &node(), &[], None).await.unwrap();
    let seen = fake.seen();
    assert_eq!(seen[0].body["name"], "deploy.get_deploy_steps");
    assert_eq!(seen[1].body["name"], "deploy.execute_deploy_step");
    assert_eq!(seen[1].body["params"]["deploy_version"], Value::Null);
}

#[tokio::test]
async fn test_standby_image_log_and_rescue_commands() {
    let uuids = json!({"root uuid": "4c1f2a4e-0000-4000-8000-000000000001",
                       "efi system partition uuid": "ABCD-1234",
                       "partitions": {"root": "4c1f2a4e-0000-4000-8000-000000000001"}});
    let fake = Fake::start(vec![
        (200, result("get_partition_uuids", "SUCCEEDED", Value::Null, uuids)),
        (200, result("install_bootloader", "RUNNING", Value::Null, Value::Null)),
        (
            200,
            result(
                "collect_system_logs",
                "SUCCEEDED",
                Value::Null,
                json!({"system_logs": "H4sIAAAAAAAAA+3BAQ0AAADCoPdPbQ8HFAAAAAAAAAAAAAAAAAA="}),
            ),
        ),
        (200, result("finalize_rescue", "SUCCEEDED", Value::Null, Value::Null)),
        (200, result("sync", "FAILED", json!({"message": "sync: I/O error"}), Value::Null)),
    ])
    .await;
    let c = client(&fake.url());
    let p = c.get_partition_uuids().await.unwrap();
    assert_eq!(p.root.as_deref(), Some("4c1f2a4e-0000-4000-8000-000000000001"));
    assert_eq!(p.efi_system_partition.as_deref(), Some("ABCD-1234"));
    assert_eq!(p.prep_boot_partition, None);
    let params = InstallBootloader {
        root_uuid: "4c1f2a4e-0000-4000-8000-000000000001".into(),
        efi_system_part_uuid: Some("ABCD-1234".into()),
        prep_boot_part_uuid: None,
        target_boot_mode: TargetBootMode::Uefi,
        ignore_bootloader_failure: None,
    };
    let started = c.install_bootloader(&params).await.unwrap();
    assert_eq!(started.command_status, CommandStatus::Running);
    assert!(c.collect_system_logs().await.unwrap().starts_with("H4sI"));
    c.finalize_rescue("$6$salt$hash").await.unwrap();
    let err = c.sync().await.unwrap_err();
    assert!(err.to_string().contains("sync: I/O error"), "{err}");

    let seen = fake.seen();
    let names: Vec<&str> = seen.iter().map(|s| s.body["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "standby.get_partition_uuids",
            "image.install_bootloader",
            "log.collect_system_logs",
            "rescue.finalize_rescue",
            "standby.sync"
        ]
    );
    assert!(seen[0].target.contains("wait=true"));
    assert!(seen[1].target.contains("wait=false"));
    assert_eq!(
        seen[1].body["params"],
        json!({"root_uuid": "4c1f2a4e-0000-4000-8000-000000000001",
               "efi_system_part_uuid": "ABCD-1234", "prep_boot_part_uuid": null,
               "target_boot_mode": "uefi"})
    );
    assert_eq!(seen[3].body["params"], json!({"rescue_password": "$6$salt$hash", "hashed": true}));
}

#[test]
fn test_agent_url_validation() {
    for ok in ["http://10.0.0.5:9999", "https://[fd00::5]:9999/", "http://agent.example:9999/ipa"] {
        validate_agent_url(ok).unwrap();
    }
    let c = client("http://10.0.0.5:9999/");
    assert_eq!(c.commands.as_str(), "http://10.0.0.5:9999/v1/commands/");
    let c = client("http://10.0.0.5:9999/ipa/");
    assert_eq!(c.commands.as_str(), "http://10.0.0.5:9999/ipa/v1/commands/");
    for (bad, why) in [
        ("file:///etc/passwd", "only http and https"),
        ("ftp://10.0.0.5", "only http and https"),
        ("http://user:pw@10.0.0.5:9999", "user info"),
        ("http://user@10.0.0.5:9999", "user info"),
        ("http://10.0.0.5:9999/?x=1", "query"),
        ("http://10.0.0.5:9999/#x", "fragment"),
        ("not a url", "not a URL"),
        ("http://", "not a URL"),
    ] {
        let err = validate_agent_url(bad).unwrap_err();
        assert!(err.to_string().contains(why), "{bad}: {err}");
        let err = IpaClient::new(bad, TOKEN, None, &AgentClientConfig::default()).unwrap_err();
        assert!(matches!(err, IpaError::InvalidUrl { .. }), "{bad}: {err:?}");
    }
    let err = IpaClient::new("http://10.0.0.5:9999", "", None, &AgentClientConfig::default())
        .unwrap_err();
    assert!(matches!(err, IpaError::NotConfigured(_)), "{err:?}");
}

#[tokio::test]
async fn test_transport_errors_name_the_agent_but_never_the_token() {
    // Nothing listens on a port just released.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let err = client(&format!("http://{addr}")).commands().await.unwrap_err();
    assert!(matches!(err, IpaError::Unreachable { .. }), "{err:?}");
    assert!(err.retryable());
    assert!(!err.to_string().contains(TOKEN), "{err}");
    assert!(!format!("{err:?}").contains(TOKEN), "{err:?}");
    assert!(!format!("{:?}", client(&format!("http://{addr}"))).contains(TOKEN));

    // An agent that accepts and never answers: the command timeout.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            open.push(s);
        }
    });
    let cfg = AgentClientConfig { command_timeout_secs: 0.3, ..AgentClientConfig::default() };
    let c = IpaClient::new(&format!("http://{addr}"), TOKEN, None, &cfg).unwrap();
    let err = c.sync().await.unwrap_err();
    assert!(matches!(err, IpaError::Timeout { ref call, .. } if call == "standby.sync"), "{err:?}");
    hold.abort();
}

#[tokio::test]
async fn test_pinned_tls_trusts_only_the_heartbeated_certificate() {
    let tls = common::tls::SelfSigned::generate("127.0.0.1").unwrap();
    let server = tls.server_config(ALPN_HTTP1).unwrap();
    let answer = result("sync", "SUCCEEDED", Value::Null, Value::Null);
    let fake = Fake::start_with(vec![(200, answer)], Some(server)).await;
    let cfg = AgentClientConfig::default();

    // The pinned certificate: works over an https URL, and an http one is called over TLS.
    for url in [format!("https://{}", fake.addr), fake.url()] {
        let c = IpaClient::new(&url, TOKEN, Some(&tls.cert_pem), &cfg).unwrap();
        c.sync().await.unwrap();
    }
    assert_eq!(fake.seen().len(), 2);

    // Another certificate pinned: refused, naming the mismatch; not retryable.
    let other = common::tls::SelfSigned::generate("127.0.0.1").unwrap();
    let url = format!("https://{}", fake.addr);
    let c = IpaClient::new(&url, TOKEN, Some(&other.cert_pem), &cfg).unwrap();
    let err = c.sync().await.unwrap_err();
    assert!(matches!(err, IpaError::CertificateMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("agent_verify_ca"), "{err}");
    assert!(!err.retryable());
    assert_eq!(fake.seen().len(), 2, "nothing reached the agent");

    // No pin for an https agent, or none while TLS is required: no fall back.
    let err = IpaClient::new(&url, TOKEN, None, &cfg).unwrap_err();
    assert!(matches!(err, IpaError::NotConfigured(_)), "{err:?}");
    let strict = AgentClientConfig { require_tls: true, ..AgentClientConfig::default() };
    let err = IpaClient::new(&fake.url(), TOKEN, None, &strict).unwrap_err();
    assert!(err.to_string().contains("require_tls"), "{err}");
    let err = IpaClient::new(&url, TOKEN, Some("not a certificate"), &cfg).unwrap_err();
    assert!(matches!(err, IpaError::NotConfigured(_)), "{err:?}");
}

#[tokio::test]
async fn test_a_lost_answer_is_found_on_the_command_list_when_the_command_runs() {
    let running = result("execute_clean_step", "RUNNING", Value::Null, Value::Null);
    let fake =
        Fake::start(vec![(0, json!({})), (200, json!({"commands": [running.clone()]}))]).await;
    let c = client(&fake.url());
    let step: IpaStep = serde_json::from_value(
        json!({"step": "erase_devices_metadata", "priority": 99, "interface": "deploy"}),
    )
    .unwrap();
    let r = c.execute_clean_step(&step, &node(), &[], None).await.unwrap();
    assert_eq!(r, serde_json::from_value(running).unwrap());
    let seen = fake.seen();
    assert_eq!((seen[0].method.as_str(), seen[1].method.as_str()), ("POST", "GET"));

    // The last command is another one (or finished): the connection error stands.
    let other = result("get_clean_steps", "SUCCEEDED", Value::Null, json!({}));
    let fake = Fake::start(vec![(0, json!({})), (200, json!({"commands": [other]}))]).await;
    let err = client(&fake.url()).execute_clean_step(&step, &node(), &[], None).await.unwrap_err();
    assert!(matches!(err, IpaError::Unreachable { .. }), "{err:?}");
    assert!(err.retryable());
}

#[test]
fn test_client_for_a_session_needs_a_called_back_agent() {
    let mut session = deploy::internal_info::AgentSession::default();
    let cfg = AgentClientConfig::default();
    let err = IpaClient::for_session(&session, &cfg).unwrap_err();
    assert!(err.to_string().contains("agent_url"), "{err}");
    session.url = Some("http://10.0.0.5:9999".into());
    let err = IpaClient::for_session(&session, &cfg).unwrap_err();
    assert!(err.to_string().contains("token"), "{err}");
    session.token = Some(TOKEN.into());
    assert_eq!(IpaClient::for_session(&session, &cfg).unwrap().url(), "http://10.0.0.5:9999");
}
