//! The deploy ramdisk needs a static agent. This builds it for musl and checks `file`/`ldd`.
//! It shares its build with `scripts/build-ramdisk.sh` (same target dir, profile and flags).

#[test]
fn test_static_musl_build_is_static() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-static.sh");
    let out = std::process::Command::new("sh").arg(script).output().expect("run build-static.sh");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("OK: static agent"), "{text}");
}
