//! The `api-service` binary exits with code 2, naming the key, on bad configuration.

use std::process::Command;

fn run_with(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_api-service"))
        .arg("--config")
        .arg(&path)
        .env_remove("FERRIC_CONFIG")
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn test_binary_exits_2_naming_the_key() {
    let cases = [
        ("[api]\nrest_listen = \"127.0.0.1:0\"\nbogus_key = 1\n", "bogus_key"),
        ("[api]\nrest_listen = \"127.0.0.1:99999\"\n", "api.rest_listen"),
        ("[database]\nurl = \"postgres//nope\"\n", "database.url"),
    ];
    for (config, key) in cases {
        let (code, stderr) = run_with(config);
        assert_eq!(code, 2, "{config}: {stderr}");
        assert!(stderr.contains(key), "{config}: stderr does not name {key}: {stderr}");
    }
}
