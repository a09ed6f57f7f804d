use std::collections::BTreeMap;
use std::process::Command;

use super::*;

/// What a reader finds: path (identifiers joined by `/`) → bytes, and the volume label.
struct Read {
    label: String,
    files: BTreeMap<String, Vec<u8>>,
    dirs: Vec<String>,
}

fn u32_both(b: &[u8]) -> u32 {
    let le = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let be = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    assert_eq!(le, be, "both-endian fields disagree");
    le
}

/// An independent reader that walks the directory records and checks the path tables.
fn read(img: &[u8]) -> Read {
    assert_eq!(img.len() % SECTOR, 0);
    let pvd = &img[16 * SECTOR..17 * SECTOR];
    assert_eq!(&pvd[..7], b"\x01CD001\x01");
    assert_eq!(&img[17 * SECTOR..17 * SECTOR + 7], b"\xffCD001\x01");
    assert_eq!(u32_both(&pvd[80..88]) as usize * SECTOR, img.len());
    let label = String::from_utf8(pvd[40..72].to_vec()).unwrap().trim_end().to_owned();
    let root = &pvd[156..190];
    let mut out = Read { label, files: BTreeMap::new(), dirs: Vec::new() };
    let mut stack = vec![(String::new(), u32_both(&root[2..10]), u32_both(&root[10..18]))];
    let mut dir_lbas = Vec::new();
    while let Some((path, lba, size)) = stack.pop() {
        dir_lbas.push((path.clone(), lba));
        let ext = &img[lba as usize * SECTOR..lba as usize * SECTOR + size as usize];
        let mut at = 0;
        let mut n = 0;
        while at < ext.len() {
            let len = usize::from(ext[at]);
            if len == 0 {
                at = (at / SECTOR + 1) * SECTOR;
                continue;
            }
            let r = &ext[at..at + len];
            let id = &r[33..33 + usize::from(r[32])];
            let (clba, csize) = (u32_both(&r[2..10]), u32_both(&r[10..18]));
            if n == 0 {
                assert_eq!((id, clba), (&[0u8][..], lba), "first record is '.'");
            } else if n > 1 {
                let name = String::from_utf8(id.to_vec()).unwrap();
                let full = if path.is_empty() { name } else { format!("{path}/{name}") };
                if r[25] & 2 != 0 {
                    out.dirs.push(full.clone());
                    stack.push((full, clba, csize));
                } else {
                    let s = clba as usize * SECTOR;
                    out.files.insert(full, img[s..s + csize as usize].to_vec());
                }
            }
            n += 1;
            at += len;
        }
    }
    // The L path table lists every directory with its extent.
    let pt_len = u32_both(&pvd[132..140]) as usize;
    let l = u32::from_le_bytes(pvd[140..144].try_into().unwrap()) as usize * SECTOR;
    let mut at = 0;
    let mut in_table = Vec::new();
    while at < pt_len {
        let idl = usize::from(img[l + at]);
        let lba = u32::from_le_bytes(img[l + at + 2..l + at + 6].try_into().unwrap());
        in_table.push(lba);
        at += 8 + idl + idl % 2;
    }
    let mut walked: Vec<u32> = dir_lbas.iter().map(|d| d.1).collect();
    walked.sort_unstable();
    in_table.sort_unstable();
    assert_eq!(walked, in_table, "path table and directory tree disagree");
    out
}

#[test]
fn test_tree_reads_back_with_identifiers_and_contents() {
    let big = vec![0xa5u8; 5000];
    let img = build(
        "config-2",
        &[
            ("openstack/latest/meta_data.json", b"{\"uuid\":\"x\"}"),
            ("openstack/latest/user_data", b"#cloud-config\n"),
            ("openstack/2012-08-10/meta_data.json", b"{}"),
            ("openstack/2012-08-10/big.bin", &big),
            ("empty", b""),
        ],
        1_700_000_000,
    )
    .unwrap();
    let r = read(&img);
    assert_eq!(r.label, "config-2");
    assert_eq!(r.files["openstack/latest/meta_data.json;1"], b"{\"uuid\":\"x\"}");
    assert_eq!(r.files["openstack/latest/user_data.;1"], b"#cloud-config\n");
    assert_eq!(r.files["openstack/2012-08-10/big.bin;1"], big);
    assert_eq!(r.files["empty.;1"], b"");
    assert_eq!(r.dirs.len(), 3);
    // Same input, same bytes.
    let again = build(
        "config-2",
        &[
            ("empty", b""),
            ("openstack/2012-08-10/big.bin", &big),
            ("openstack/2012-08-10/meta_data.json", b"{}"),
            ("openstack/latest/user_data", b"#cloud-config\n"),
            ("openstack/latest/meta_data.json", b"{\"uuid\":\"x\"}"),
        ],
        1_700_000_000,
    )
    .unwrap();
    assert_eq!(img, again);
}

#[test]
fn test_large_directory_keeps_records_inside_sectors() {
    let names: Vec<String> =
        (0..200).map(|i| format!("d/file-with-long-name-{i:04}.json")).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
    let img = build("config-2", &files, 0).unwrap();
    let r = read(&img);
    assert_eq!(r.files.len(), 200);
    assert!(r.files.keys().all(|k| k.starts_with("d/file-with-long-name-")));
}

#[test]
fn test_bad_inputs_are_refused() {
    let e = build("config-2", &[("a/b c", b"x")], 0).unwrap_err();
    assert!(matches!(e, IsoError::InvalidName { .. }), "{e}");
    assert!(matches!(build("config-2", &[("..", b"x")], 0), Err(IsoError::InvalidName { .. })));
    assert!(matches!(build("config-2", &[("a//b", b"x")], 0), Err(IsoError::InvalidName { .. })));
    let long = "x".repeat(31);
    assert!(matches!(build("config-2", &[(&long, b"x")], 0), Err(IsoError::InvalidName { .. })));
    assert!(matches!(
        build("config-2", &[("a", b"x"), ("a/b", b"y")], 0),
        Err(IsoError::Conflict(_))
    ));
    assert!(matches!(
        build("config-2", &[("a", b"x"), ("a", b"y")], 0),
        Err(IsoError::Conflict(_))
    ));
    assert!(matches!(
        build("config-2", &[("a/b/c/d/e/f/g/h/i", b"x")], 0),
        Err(IsoError::TooDeep(_))
    ));
    assert!(matches!(build(&"L".repeat(33), &[("a", b"x")], 0), Err(IsoError::InvalidLabel(_))));
}

#[test]
fn test_identifier_order_is_iso9660s() {
    let mut ids = vec!["b.;1", "a.json;1", "a_b.;1", "a.;1", "ab.x;1"];
    ids.sort_by(|a, b| compare_identifiers(a, b));
    // "a" < "a_b" < "ab" < "b" by name padded with spaces; then extensions.
    assert_eq!(ids, ["a.;1", "a.json;1", "a_b.;1", "ab.x;1", "b.;1"]);
}

#[test]
fn test_timestamps() {
    let t = Timestamp::from_unix(1_700_000_000); // 2023-11-14T22:13:20Z
    assert_eq!(t.record(), [123, 11, 14, 22, 13, 20, 0]);
    assert_eq!(&t.volume()[..16], b"2023111422132000");
    assert_eq!(Timestamp::from_unix(0).record(), [70, 1, 1, 0, 0, 0, 0]);
    assert_eq!(Timestamp::from_unix(951_782_400).record()[..3], [100, 2, 29]); // 2000-02-29
    assert_eq!(Timestamp::from_unix(i64::MIN).record()[..3], [0, 1, 1]);
}

fn need(tool: &str) {
    assert!(
        Command::new(tool).arg("-version").output().is_ok(),
        "{tool} is required for this test (apt-get install genisoimage xorriso)"
    );
}

/// The whole tree of `iso`, extracted by xorriso the way a mount shows it, into `to`.
fn extract_all(iso: &std::path::Path, to: &std::path::Path) -> std::path::PathBuf {
    let out = Command::new("xorriso")
        .args(["-abort_on", "WARNING", "-osirrox", "on", "-indev"])
        .arg(iso)
        .args(["-extract", "/"])
        .arg(to)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    to.to_path_buf()
}

/// isoinfo (genisoimage) and xorriso, two independent readers, list and extract the files.
#[test]
fn test_isoinfo_and_xorriso_read_the_image() {
    need("isoinfo");
    need("xorriso");
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("cd.iso");
    let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let img = build(
        "config-2",
        &[
            ("openstack/latest/meta_data.json", b"{\"uuid\":\"u\"}"),
            ("openstack/latest/user_data", &big),
            ("openstack/2012-08-10/meta_data.json", b"{\"uuid\":\"u\"}"),
        ],
        1_700_000_000,
    )
    .unwrap();
    std::fs::write(&iso, &img).unwrap();

    let out = Command::new("isoinfo").arg("-d").arg("-i").arg(&iso).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Volume id: config-2"), "{text}");
    let out = Command::new("isoinfo").arg("-l").arg("-i").arg(&iso).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && out.stderr.is_empty(), "{text}");
    for want in ["/openstack/latest/", "/openstack/2012-08-10/", "meta_data.json;1", "user_data.;1"]
    {
        assert!(text.contains(want), "isoinfo -l lacks {want}: {text}");
    }
    let out = Command::new("isoinfo")
        .args(["-x", "/openstack/latest/user_data.;1", "-i"])
        .arg(&iso)
        .output()
        .unwrap();
    assert_eq!(out.stdout, big);

    // xorriso extracts the tree the way a mount shows it.
    let x = extract_all(&iso, &dir.path().join("x"));
    let got = |p: &str| std::fs::read(x.join(p)).unwrap();
    assert_eq!(got("openstack/latest/user_data"), big);
    assert_eq!(got("openstack/latest/meta_data.json"), b"{\"uuid\":\"u\"}");
    assert_eq!(got("openstack/2012-08-10/meta_data.json"), b"{\"uuid\":\"u\"}");
}

/// The El Torito catalog of a UEFI boot image, as xorriso reports it, and the refusal of a
/// boot image that is not among the files.
#[test]
fn test_efi_boot_catalog_is_read_by_xorriso() {
    need("xorriso");
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("boot.iso");
    let esp: Vec<u8> = (0..40_000u32).map(|i| (i % 241) as u8).collect();
    let img = build_efi_bootable(
        "FERRIC_VMEDIA",
        &[("ferric/cmdline", b"ferric.api_url=http://a/ quiet"), ("efiboot.img", &esp)],
        "efiboot.img",
        1_700_000_000,
    )
    .unwrap();
    std::fs::write(&iso, &img).unwrap();
    let out = Command::new("xorriso")
        .args(["-indev"])
        .arg(&iso)
        .args(["-report_el_torito", "plain"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    // e.g. "El Torito boot img :   1  UEFI  y   none  0x0000  0x00      79        NN"
    let line = text.lines().find(|l| l.starts_with("El Torito boot img")).unwrap_or_default();
    assert!(line.contains("UEFI"), "{text}");
    assert!(line.contains(" 79 "), "40000 bytes are 79 sectors of 512: {text}");
    let lba: usize = line.split_whitespace().last().unwrap().parse().unwrap();
    assert_eq!(
        &img[lba * SECTOR..lba * SECTOR + esp.len()],
        &esp[..],
        "the entry points at the image"
    );
    // The files stay readable.
    let x = extract_all(&iso, &dir.path().join("x"));
    assert_eq!(std::fs::read(x.join("efiboot.img")).unwrap(), esp);

    assert_eq!(
        build_efi_bootable("L", &[("a", b"x")], "efiboot.img", 0),
        Err(IsoError::NoBootImage("efiboot.img".into()))
    );
}
