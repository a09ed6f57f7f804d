//! The deploy ramdisk needs a static agent. This builds it for musl and checks `file`/`ldd`.
//! Slow (a full release build), so it is ignored by default:
//! `cargo test -p agent --test static_build -- --ignored`.

#[test]
#[ignore = "full release build for x86_64-unknown-linux-musl; run explicitly"]
fn test_static_musl_build_is_static() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-static.sh");
    let out = std::process::Command::new("sh").arg(script).output().expect("run build-static.sh");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("OK: static agent"), "{text}");
}
