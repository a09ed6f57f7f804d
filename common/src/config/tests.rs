use std::collections::BTreeMap;
use std::io::Write as _;

use super::*;

/// A config shaped like a service's: its own section plus the shared ones.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TestConfig {
    api: ApiSection,
    database: DatabaseConfig,
    bus: BusConfig,
    telemetry: TelemetryConfig,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ApiSection {
    listen: ListenAddr,
    port: u16,
    workers: u32,
    name: String,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            listen: ListenAddr(SocketAddr::from(([127, 0, 0, 1], 6385))),
            port: 6385,
            workers: 4,
            name: "default".to_owned(),
        }
    }
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn file(contents: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(contents.as_bytes()).unwrap();
    f
}

fn load_test(toml: Option<&str>, vars: &[(&str, &str)]) -> Result<TestConfig, ConfigError> {
    let f = toml.map(file);
    load_from(f.as_ref().map(|f| f.path()), ENV_PREFIX, env(vars))
}

fn expect_key(result: Result<TestConfig, ConfigError>, key: &str) -> ConfigError {
    let err = result.expect_err("config should be rejected");
    assert_eq!(err.key(), Some(key), "error {err} should name {key}");
    assert!(err.to_string().contains(key), "message {err} should contain {key}");
    err
}

#[test]
fn test_defaults_without_file_or_env() {
    let cfg = load_test(None, &[]).unwrap();
    assert_eq!(cfg.api.port, 6385);
    assert_eq!(cfg.api.name, "default");
    assert_eq!(cfg.bus, BusConfig::default());
    assert_eq!(cfg.telemetry.format, LogFormat::Pretty);
    assert_eq!(cfg.telemetry.otlp_endpoint, None);
}

#[test]
fn test_precedence_defaults_then_file_then_env() {
    let toml = r#"
        [api]
        port = 7000
        workers = 8
        name = "from-file"
        [telemetry]
        format = "json"
    "#;
    let vars = [
        ("FERRIC_API__PORT", "7001"),
        ("FERRIC_API__LISTEN", "0.0.0.0:9999"),
        ("FERRIC_BUS__URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        // Not config: no section separator, so ignored despite deny_unknown_fields.
        ("FERRIC_REQUIRE_SERVICES", "1"),
        ("OTHER_API__PORT", "1"),
    ];
    let cfg = load_test(Some(toml), &vars).unwrap();
    assert_eq!(cfg.api.port, 7001, "env beats file");
    assert_eq!(cfg.api.workers, 8, "file beats default");
    assert_eq!(cfg.api.name, "from-file");
    assert_eq!(cfg.api.listen.addr(), "0.0.0.0:9999".parse().unwrap(), "env beats default");
    assert_eq!(cfg.bus.url, "amqp://guest:guest@127.0.0.1:5672/%2f");
    assert_eq!(cfg.bus.exchange, "ferric", "default kept inside an overridden section");
    assert_eq!(cfg.telemetry.format, LogFormat::Json);
    assert_eq!(cfg.telemetry.filter, "info");
}

#[test]
fn test_env_sets_optional_and_string_values() {
    let vars = [
        ("FERRIC_TELEMETRY__OTLP_ENDPOINT", "http://127.0.0.1:4317"),
        ("FERRIC_API__NAME", "12345"),
    ];
    let cfg = load_test(None, &vars).unwrap();
    assert_eq!(cfg.telemetry.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4317"));
    assert_eq!(cfg.api.name, "12345", "numeric-looking text stays a string");
}

#[test]
fn test_unknown_key_in_file_is_named() {
    let err = expect_key(load_test(Some("[api]\nprot = 1\n"), &[]), "api.prot");
    assert!(err.to_string().contains("unknown key"), "{err}");
}

#[test]
fn test_unknown_section_is_named() {
    expect_key(load_test(Some("[nope]\nx = 1\n"), &[]), "nope");
}

#[test]
fn test_unknown_key_from_env_names_the_variable() {
    let err = expect_key(load_test(None, &[("FERRIC_API__BOGUS", "1")]), "api.bogus");
    assert!(err.to_string().contains("FERRIC_API__BOGUS"), "{err}");
}

#[test]
fn test_out_of_range_port_is_named() {
    expect_key(load_test(Some("[api]\nport = 99999\n"), &[]), "api.port");
    let err = expect_key(load_test(None, &[("FERRIC_API__LISTEN", "0.0.0.0:99999")]), "api.listen");
    assert!(err.to_string().contains("99999"), "{err}");
    assert!(err.to_string().contains("FERRIC_API__LISTEN"), "{err}");
}

#[test]
fn test_wrong_type_is_named() {
    expect_key(load_test(Some("[api]\nworkers = \"many\"\n"), &[]), "api.workers");
    expect_key(load_test(None, &[("FERRIC_API__WORKERS", "-3")]), "api.workers");
}

#[test]
fn test_malformed_database_url_is_named() {
    let err = expect_key(
        load_test(Some("[database]\nurl = \"mysql://root:hunter2@db/ferric\"\n"), &[]),
        "database.url",
    );
    assert!(!err.to_string().contains("hunter2"), "password leaked: {err}");
    expect_key(load_test(None, &[("FERRIC_DATABASE__URL", "sqlite:")]), "database.url");
}

#[test]
fn test_database_url_forms() {
    for ok in [
        "postgres://postgres@127.0.0.1:5432/ferric",
        "postgresql://u:p@db.example:5432/ferric?sslmode=require",
        "sqlite:ferric.db?mode=rwc",
        "sqlite://ferric.db",
        "sqlite::memory:",
    ] {
        assert!(check_database_url(ok).is_ok(), "{ok}");
    }
    for bad in ["", "postgres://", "postgres:///db", "mysql://x/y", "ferric.db", "sqlite:"] {
        assert!(check_database_url(bad).is_err(), "{bad}");
    }
}

#[test]
fn test_bad_bus_and_telemetry_values_are_named() {
    expect_key(load_test(Some("[bus]\nurl = \"kafka://x\"\n"), &[]), "bus.url");
    expect_key(load_test(Some("[bus]\nexchange = \"\"\n"), &[]), "bus.exchange");
    expect_key(load_test(Some("[telemetry]\nformat = \"xml\"\n"), &[]), "telemetry.format");
    expect_key(load_test(Some("[telemetry]\nfilter = \"info,[=\"\n"), &[]), "telemetry.filter");
    expect_key(
        load_test(Some("[telemetry]\notlp_endpoint = \"127.0.0.1:4317\"\n"), &[]),
        "telemetry.otlp_endpoint",
    );
    let cfg = load_test(None, &[("FERRIC_BUS__URL", "amqps://u:p@rabbit.example/ferric")]).unwrap();
    assert_eq!(cfg.bus.url, "amqps://u:p@rabbit.example/ferric");
}

#[test]
fn test_missing_and_malformed_files() {
    let missing = load_from::<TestConfig, _>(
        Some(Path::new("/nonexistent/ferric.toml")),
        ENV_PREFIX,
        Vec::new(),
    );
    assert!(matches!(missing, Err(ConfigError::File { .. })), "{missing:?}");
    let f = file("[api\nport = 1");
    let err = load_from::<TestConfig, _>(Some(f.path()), ENV_PREFIX, Vec::new()).unwrap_err();
    assert!(matches!(err, ConfigError::File { .. }), "{err:?}");
    // The config crate may render the path relative to the working directory: match the name.
    let name = f.path().file_name().unwrap().to_string_lossy().into_owned();
    assert!(err.to_string().contains(&name), "{err}");
}

#[test]
fn test_missing_required_key_is_named() {
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Strict {
        #[allow(dead_code, reason = "only its absence is tested")]
        required: String,
    }
    let err = load_from::<Strict, _>(None, ENV_PREFIX, Vec::new()).unwrap_err();
    assert_eq!(err.key(), Some("required"), "{err}");
}

#[test]
fn test_secrets_are_redacted_in_debug() {
    let db = DatabaseConfig::with_url("postgres://ferric:s3cret@db:5432/ferric");
    let bus =
        BusConfig { url: "amqp://guest:s3cret@rabbit:5672/%2f".to_owned(), ..BusConfig::default() };
    for shown in [format!("{db:?}"), format!("{bus:?}")] {
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
    }
    assert_eq!(redact_url("sqlite:x.db"), "sqlite:x.db");
    assert_eq!(redact_url("amqp://guest@h/v"), "amqp://guest@h/v");
}

#[test]
fn test_listen_addr_parsing() {
    assert_eq!(parse_listen_addr("a.listen", "[::1]:50051").unwrap().port(), 50051);
    let err = parse_listen_addr("a.listen", "0.0.0.0:99999").unwrap_err();
    assert_eq!(err.key(), Some("a.listen"));
    assert!(err.to_string().contains("0 to 65535"), "{err}");
    assert!(parse_listen_addr("a.listen", "localhost:80").is_err());
    assert!(parse_listen_addr("a.listen", "8080").is_err());
}

#[test]
fn test_example_config_parses() {
    let example = include_str!("../../examples/config.toml");
    let cfg: TestConfig = load_str(example, ENV_PREFIX, Vec::new()).unwrap();
    assert_eq!(cfg.database.url, "postgres://postgres@127.0.0.1:5432/ferric");
    assert_eq!(cfg.bus.url, "amqp://guest:guest@127.0.0.1:5672/%2f");
    assert_eq!(cfg.telemetry.format, LogFormat::Json);
    let _: BTreeMap<String, toml::Value> = toml::from_str(example).unwrap();
}

#[test]
fn test_migrate_on_start_defaults_on_and_env_turns_it_off() {
    assert!(load_test(None, &[]).unwrap().database.migrate_on_start);
    let off = load_test(None, &[("FERRIC_DATABASE__MIGRATE_ON_START", "false")]).unwrap();
    assert!(!off.database.migrate_on_start);
    let file_off = load_test(Some("[database]\nmigrate_on_start = false\n"), &[]).unwrap();
    assert!(!file_off.database.migrate_on_start);
}

#[test]
fn test_database_secret_keys_are_checked_and_never_echoed() {
    let k1 = "MTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTE="; // 32 bytes
    let none = std::iter::empty::<(String, String)>;
    let toml =
        format!("[database]\nactive_secret_key = \"k1\"\nsecret_keys = {{ k1 = \"{k1}\" }}\n");
    let c: TestConfig = load_str(&toml, "FERRIC", none()).unwrap();
    assert_eq!(c.database.secret_keys["k1"].0, [b'1'; 32]);
    assert_eq!(c.database.active_secret_key.as_deref(), Some("k1"));
    let dbg = format!("{:?}", c.database);
    assert!(dbg.contains("k1") && !dbg.contains(k1), "{dbg}");

    // From the environment, one variable per key.
    let env = [
        ("FERRIC_DATABASE__SECRET_KEYS__K2".to_owned(), k1.to_owned()),
        ("FERRIC_DATABASE__ACTIVE_SECRET_KEY".to_owned(), "k2".to_owned()),
    ];
    let c: TestConfig = load_str("", "FERRIC", env).unwrap();
    assert!(c.database.secret_keys.contains_key("k2"));

    for (toml, want) in [
        ("[database]\nactive_secret_key = \"k9\"\nsecret_keys = { k1 = \"K1\" }\n", "k9"),
        ("[database]\nsecret_keys = { k1 = \"K1\" }\n", "active_secret_key"),
        (
            "[database]\nactive_secret_key = \"k1\"\nsecret_keys = { k1 = \"c2hvcnQ=\" }\n",
            "32 bytes",
        ),
        (
            "[database]\nactive_secret_key = \"k1\"\nsecret_keys = { k1 = \"!!not-base64!!\" }\n",
            "base64",
        ),
        ("[database]\nactive_secret_key = \"a$b\"\nsecret_keys = { \"a$b\" = \"K1\" }\n", "a$b"),
    ] {
        let toml = toml.replace("K1", k1);
        let e = load_str::<TestConfig, _>(&toml, "FERRIC", none()).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
        assert!(!e.contains(k1) && !e.contains("!!not-base64!!") && !e.contains("c2hvcnQ="), "{e}");
    }
}
