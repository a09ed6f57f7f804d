//! End-to-end tests of the image pipeline against file-backed disks and a local HTTP server
//! that honours `Range` and can drop or truncate connections.
//!
//! Needs `qemu-img` (qemu-utils) and `sfdisk` (fdisk) on PATH.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use image::checksum::{ExpectedChecksum, HashAlgo};
use image::partition::{BootMode, DiskLabel};
use image::{
    ChecksumSpec, DiskFormat, ImageError, ImageLayout, ImageProgress, ImageRequest,
    IronicImageInfo, PipelineOptions, WriteOutcome, write_image,
};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

const MIB: u64 = 1 << 20;

#[derive(Clone, Copy, Debug)]
enum Fault {
    None,
    /// Close the connection after this many body bytes, for the first `n` requests.
    DropAfter {
        bytes: u64,
        times: u32,
    },
    /// Promise the full length but never send more than this many bytes in total.
    Truncate {
        at: u64,
    },
}

#[derive(Clone, Default)]
struct Files {
    files: Arc<Mutex<HashMap<String, (Bytes, FaultCell)>>>,
}

#[derive(Clone)]
struct FaultCell {
    fault: Fault,
    served: Arc<AtomicU32>,
}

async fn serve_file(
    State(st): State<Files>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let Some((data, cell)) = st.files.lock().unwrap().get(&name).cloned() else {
        return Response::builder().status(StatusCode::NOT_FOUND).body(Body::empty()).unwrap();
    };
    let total = data.len() as u64;
    let start = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<u64>().ok());
    let n = cell.served.fetch_add(1, Ordering::SeqCst);
    let from = start.unwrap_or(0).min(total);
    let mut to = total;
    let mut fail = false;
    match cell.fault {
        Fault::None => {}
        Fault::DropAfter { bytes, times } if n < times => {
            to = (from + bytes).min(total);
            fail = true;
        }
        Fault::DropAfter { .. } => {}
        Fault::Truncate { at } => {
            to = at.max(from).min(total);
            fail = true;
        }
    }
    let body_bytes = data.slice(from as usize..to as usize);
    // Send in 64 KiB pieces, then fail the stream so hyper aborts the connection.
    let pieces: Vec<Result<Bytes, std::io::Error>> =
        body_bytes.chunks(64 * 1024).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    use futures::StreamExt;
    // Let the client read what was sent before the connection is torn down.
    let tail = futures::stream::once(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Err(std::io::Error::other("connection dropped by the test server"))
    })
    .filter(move |_| futures::future::ready(fail));
    let body = Body::from_stream(futures::stream::iter(pieces).chain(tail));
    let mut b = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, (total - from).to_string())
        .header(header::ETAG, "\"v1\"");
    if start.is_some() {
        b = b
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {from}-{}/{total}", total - 1));
    }
    b.body(body).unwrap()
}

struct Server {
    base: String,
    files: Files,
}

impl Server {
    async fn start() -> Self {
        let files = Files::default();
        let app = axum::Router::new()
            .route("/{name}", axum::routing::get(serve_file))
            .with_state(files.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        Self { base: format!("http://{addr}"), files }
    }
    fn put(&self, name: &str, data: Vec<u8>, fault: Fault) -> String {
        self.files.lock().unwrap_or_else(|e| e.into_inner()).insert(
            name.to_owned(),
            (Bytes::from(data), FaultCell { fault, served: Arc::new(AtomicU32::new(0)) }),
        );
        format!("{}/{name}", self.base)
    }
}

impl std::ops::Deref for Files {
    type Target = Mutex<HashMap<String, (Bytes, FaultCell)>>;
    fn deref(&self) -> &Self::Target {
        &self.files
    }
}

fn sha256(d: &[u8]) -> String {
    hex::encode(Sha256::digest(d))
}

fn need(tool: &str) {
    assert!(
        Command::new(tool).arg("--version").output().is_ok(),
        "{tool} is required for this test (apt-get install qemu-utils fdisk)"
    );
}

/// A raw whole-disk image: GPT with one partition, mixed data and long zero runs.
fn make_raw_image(dir: &Path, size: u64) -> Vec<u8> {
    need("sfdisk");
    let p = dir.join("src.raw");
    let mut data = vec![0u8; size as usize];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for (i, chunk) in data.chunks_mut(64 * 1024).enumerate() {
        if i % 3 == 1 {
            continue; // zero cluster
        }
        for b in chunk.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    std::fs::write(&p, &data).unwrap();
    let out = Command::new("sfdisk")
        .arg("--no-reread")
        .arg("--no-tell-kernel")
        .arg(&p)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(b"label: gpt\nstart=2048, size=4096, name=\"root\"\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    std::fs::read(&p).unwrap()
}

fn qcow2_of(dir: &Path, raw: &[u8], compressed: bool) -> Vec<u8> {
    need("qemu-img");
    let src = dir.join("q.raw");
    let dst = dir.join(if compressed { "c.qcow2" } else { "u.qcow2" });
    std::fs::write(&src, raw).unwrap();
    let mut c = Command::new("qemu-img");
    c.args(["convert", "-f", "raw", "-O", "qcow2"]);
    if compressed {
        c.arg("-c");
    }
    let st = c.arg(&src).arg(&dst).status().unwrap();
    assert!(st.success());
    std::fs::read(dst).unwrap()
}

fn disk(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    p
}

fn opts() -> PipelineOptions {
    let mut o = PipelineOptions::default();
    o.fetch.retry_delay = Duration::from_millis(20);
    o.fetch.max_attempts = 4;
    o.fetch.read_timeout = Duration::from_secs(10);
    o
}

fn req(url: &str, sha: &str, fmt: Option<DiskFormat>, layout: ImageLayout) -> ImageRequest {
    ImageRequest {
        source: url.to_owned(),
        checksum: ChecksumSpec::Value(ExpectedChecksum::new(Some(HashAlgo::Sha256), sha).unwrap()),
        disk_format: fmt,
        layout,
        configdrive: None,
    }
}

async fn write(r: &ImageRequest, disk: &Path) -> Result<WriteOutcome, ImageError> {
    write_image(r, disk, &opts(), Arc::new(ImageProgress::default()), CancellationToken::new())
        .await
}

fn head_sha(disk: &Path, len: usize) -> String {
    let d = std::fs::read(disk).unwrap();
    sha256(&d[..len])
}

fn sfdisk_dump(disk: &Path) -> Result<String, String> {
    let o = Command::new("sfdisk").arg("--dump").arg(disk).output().unwrap();
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

#[tokio::test]
async fn test_raw_image_written_range_matches_and_table_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start().await;
    let raw = make_raw_image(dir.path(), 4 * MIB);
    let url = srv.put("disk.raw", raw.clone(), Fault::None);
    let d = disk(dir.path(), "sda", 64 * MIB);
    // Stale data that must not show through skipped zero blocks.
    std::fs::write(&d, vec![0xEEu8; (64 * MIB) as usize]).unwrap();
    let o = write(&req(&url, &sha256(&raw), Some(DiskFormat::Raw), ImageLayout::WholeDisk), &d)
        .await
        .unwrap();
    assert_eq!(o.format, DiskFormat::Raw);
    assert_eq!(head_sha(&d, raw.len()), sha256(&raw));
    let dump = sfdisk_dump(&d).unwrap();
    assert!(dump.contains("label: gpt"), "{dump}");
    assert!(!o.root_uuid_or_disk_id.is_empty());
}

#[tokio::test]
async fn test_qcow2_compressed_and_plain_stream_convert_to_the_raw_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start().await;
    let raw = make_raw_image(dir.path(), 6 * MIB + 12345 / 512 * 512);
    for compressed in [false, true] {
        let q = qcow2_of(dir.path(), &raw, compressed);
        let name = format!("img-{compressed}.qcow2");
        let url = srv.put(&name, q.clone(), Fault::None);
        let d = disk(dir.path(), &format!("disk-{compressed}"), 32 * MIB);
        std::fs::write(&d, vec![0x5Au8; (32 * MIB) as usize]).unwrap();
        let o = write(&req(&url, &sha256(&q), None, ImageLayout::WholeDisk), &d).await.unwrap();
        assert_eq!(o.format, DiskFormat::Qcow2);
        assert_eq!(head_sha(&d, raw.len()), sha256(&raw), "compressed={compressed}");
    }
}

#[tokio::test]
async fn test_partition_image_gets_a_table_sfdisk_reads_and_a_config2_partition() {
    use base64::Engine;
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start().await;
    let fs_img: Vec<u8> = (0..(3 * MIB) as usize).map(|i| (i / 4096) as u8).collect();
    let url = srv.put("root.img", fs_img.clone(), Fault::None);
    let mut iso = vec![0u8; 512 * 1024];
    iso[32768 + 1..32768 + 6].copy_from_slice(b"CD001");
    iso[32768 + 40..32768 + 48].copy_from_slice(b"config-2");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&iso).unwrap();
    let cd = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
    for label in [DiskLabel::Gpt, DiskLabel::Msdos] {
        let d = disk(dir.path(), &format!("pd-{label:?}"), 256 * MIB);
        let mut r = req(
            &url,
            &sha256(&fs_img),
            Some(DiskFormat::Raw),
            ImageLayout::Partition {
                root_mb: 16,
                swap_mb: 8,
                ephemeral_mb: 0,
                boot_mode: BootMode::Bios,
                label,
            },
        );
        r.configdrive = Some(cd.clone());
        let o = write(&r, &d).await.unwrap();
        let dump = sfdisk_dump(&d).unwrap();
        let t = o.table.unwrap();
        let root = t.by_role(image::partition::PartRole::Root).unwrap();
        let cdp = t.by_role(image::partition::PartRole::ConfigDrive).unwrap();
        let bytes = std::fs::read(&d).unwrap();
        assert_eq!(
            sha256(&bytes[root.start as usize..root.start as usize + fs_img.len()]),
            sha256(&fs_img)
        );
        assert_eq!(&bytes[cdp.start as usize..cdp.start as usize + iso.len()], &iso[..]);
        assert!(cdp.start + cdp.size > 256 * MIB - 2 * MIB, "config drive must sit at the end");
        match label {
            DiskLabel::Gpt => {
                assert!(dump.contains("label: gpt"), "{dump}");
                assert!(dump.contains("name=\"config-2\""), "{dump}");
                assert_eq!(dump.matches("start=").count(), 4, "{dump}"); // bios_grub, swap, root, config-2
            }
            DiskLabel::Msdos => {
                assert!(dump.contains("label: dos"), "{dump}");
                assert_eq!(dump.matches("start=").count(), 3, "{dump}");
                assert!(dump.contains("type=82"), "{dump}");
            }
        }
        // The ISO inside the partition is labelled config-2 (what blkid would show).
        assert_eq!(
            &bytes[cdp.start as usize + 32768 + 40..cdp.start as usize + 32768 + 48],
            b"config-2"
        );
    }
}

/// The object form end to end on the agent's side: a drive built by
/// [`image::configdrive::build`], passed gzipped and base64-encoded as the conductor passes
/// it, lands in the disk's config-2 partition, where isoinfo finds Ironic's files.
#[tokio::test]
async fn test_built_configdrive_files_are_in_the_config2_partition() {
    use image::configdrive::{ConfigDriveFiles, build, encode};
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start().await;
    let raw = make_raw_image(dir.path(), 4 * MIB);
    let url = srv.put("wd.raw", raw.clone(), Fault::None);
    let files = ConfigDriveFiles {
        meta_data: br#"{"uuid":"2f0b1c4e","name":"node-1"}"#.to_vec(),
        user_data: Some(b"#cloud-config\nhostname: node-1\n".to_vec()),
        network_data: Some(br#"{"links":[],"networks":[],"services":[]}"#.to_vec()),
        vendor_data: None,
    };
    let iso = build(&files, 1_700_000_000).unwrap();
    let d = disk(dir.path(), "wd-cd", 128 * MIB);
    let mut r = req(&url, &sha256(&raw), None, ImageLayout::WholeDisk);
    r.configdrive = Some(encode(&iso));
    write(&r, &d).await.unwrap();
    let t = image::partition::read_table(&std::fs::File::open(&d).unwrap()).unwrap().unwrap();
    let cdp = t.by_role(image::partition::PartRole::ConfigDrive).unwrap();
    let bytes = std::fs::read(&d).unwrap();
    let part = dir.path().join("config-2.img");
    std::fs::write(&part, &bytes[cdp.start as usize..(cdp.start + cdp.size) as usize]).unwrap();
    let isoinfo = |args: &[&str]| {
        let o = Command::new("isoinfo")
            .args(args)
            .arg("-i")
            .arg(&part)
            .output()
            .expect("isoinfo is required for this test (apt-get install genisoimage)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    };
    let info = String::from_utf8(isoinfo(&["-d"])).unwrap();
    assert!(info.contains("Volume id: config-2"), "{info}");
    for v in ["latest", "2012-08-10"] {
        let get = |f: &str| isoinfo(&["-x", &format!("/openstack/{v}/{f}")]);
        assert_eq!(get("meta_data.json;1"), files.meta_data);
        assert_eq!(Some(get("user_data.;1")), files.user_data);
        assert_eq!(Some(get("network_data.json;1")), files.network_data);
    }
}

#[tokio::test]
async fn test_whole_disk_configdrive_is_added_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start().await;
    let raw = make_raw_image(dir.path(), 4 * MIB);
    let url = srv.put("wd.raw", raw.clone(), Fault::None);
    let cd_url = srv.put("cd.iso", vec![0xC3u8; 200_000], Fault::None);
    let d = disk(dir.path(), "wd", 128 * MIB);
    let mut r = req(&url, &sha256(&raw), None, ImageLayout::WholeDisk);
    r.configdrive = Some(cd_url);
    r.checksum = ChecksumSpec::Value(ExpectedChecksum::new(None, &sha256(&raw)).unwrap());
    write(&r, &d).await.unwrap();
    let dump = sfdisk_dump(&d).unwrap();
    assert!(dump.contains("name=\"config-2\""), "{dump}");
    assert!(dump.contains("name=\"root\""), "{dump}");
    let bytes = std::fs::read(&d).unwrap();
    let t = image::partition::read_table(&std::fs::File::open(&d).unwrap()).unwrap().unwrap();
    let cdp = t.by_role(image::partition::PartRole::ConfigDrive).unwrap();
    assert!(cdp.start + cdp.size > 126 * MIB);
    assert!(bytes[cdp.start as usize..cdp.start as usize + 200_000].iter().all(|b| *b == 0xC3));
    // The image's own bytes before the table area are untouched (boot code, partition data).
    assert_eq!(
        sha256(&bytes[1024 * 1024..raw.len() - 64 * 1024]),
        sha256(&raw[1024 * 1024..raw.len() - 64 * 1024])
    );
}

#[tokio::test]
async fn test_dropped_connection_resumes_with_range_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start().await;
    let raw = make_raw_image(dir.path(), 8 * MIB);
    let url = srv.put("flaky.raw", raw.clone(), Fault::DropAfter { bytes: 1_500_000, times: 3 });
    let d = disk(dir.path(), "flaky", 32 * MIB);
    let o = write(&req(&url, &sha256(&raw), None, ImageLayout::WholeDisk), &d).await.unwrap();
    assert!(o.resumes >= 2, "expected resumes, got {}", o.resumes);
    assert_eq!(head_sha(&d, raw.len()), sha256(&raw));
    // The qcow2 path resumes too.
    let q = qcow2_of(dir.path(), &raw, true);
    let url = srv.put("flaky.qcow2", q.clone(), Fault::DropAfter { bytes: 300_000, times: 2 });
    let d2 = disk(dir.path(), "flaky2", 32 * MIB);
    let o = write(&req(&url, &sha256(&q), None, ImageLayout::WholeDisk), &d2).await.unwrap();
    let served =
        srv.files.lock().unwrap().get("flaky.qcow2").unwrap().1.served.load(Ordering::SeqCst);
    assert!(o.resumes >= 1, "qcow2 resumes {} of {} bytes, served {served}", o.resumes, q.len());
    assert_eq!(head_sha(&d2, raw.len()), sha256(&raw));
}

/// Write a good image first so the disk holds a valid table, then the bad one.
async fn assert_fails_cleanly(
    srv: &Server,
    dir: &Path,
    r: ImageRequest,
    disk_size: u64,
    want: &str,
) {
    let raw = make_raw_image(dir, 4 * MIB);
    let good = srv.put("good.raw", raw.clone(), Fault::None);
    let d = disk(dir, "victim", disk_size);
    if disk_size >= 4 * MIB {
        write(&req(&good, &sha256(&raw), None, ImageLayout::WholeDisk), &d).await.unwrap();
        assert!(sfdisk_dump(&d).is_ok());
    }
    let err = write(&r, &d).await.expect_err("bad input must fail");
    let msg = err.to_string();
    assert!(msg.to_lowercase().contains(want), "error {msg:?} should mention {want:?}");
    assert!(sfdisk_dump(&d).is_err(), "no valid partition table may remain after: {msg}");
    let bytes = std::fs::read(&d).unwrap();
    assert!(bytes[..(MIB as usize).min(bytes.len())].iter().all(|b| *b == 0), "boot area wiped");
}

#[tokio::test]
async fn test_bad_inputs_fail_cleanly_and_leave_no_partition_table() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start().await;
    let raw = make_raw_image(dir.path(), 6 * MIB);
    let q = qcow2_of(dir.path(), &raw, true);

    // Checksum mismatch.
    let url = srv.put("ok.raw", raw.clone(), Fault::None);
    let wrong = "0".repeat(64);
    assert_fails_cleanly(
        &srv,
        dir.path(),
        req(&url, &wrong, None, ImageLayout::WholeDisk),
        32 * MIB,
        "checksum mismatch",
    )
    .await;

    // Corrupted qcow2 header (backing file offset garbage / bad version).
    let mut bad = q.clone();
    bad[4..8].copy_from_slice(&9u32.to_be_bytes());
    let url = srv.put("bad.qcow2", bad.clone(), Fault::None);
    assert_fails_cleanly(
        &srv,
        dir.path(),
        req(&url, &sha256(&bad), None, ImageLayout::WholeDisk),
        32 * MIB,
        "qcow2",
    )
    .await;

    // Truncated download: the server always stops at 2 MiB of a promised 6 MiB.
    let url = srv.put("trunc.raw", raw.clone(), Fault::Truncate { at: 2 * MIB });
    assert_fails_cleanly(
        &srv,
        dir.path(),
        req(&url, &sha256(&raw), None, ImageLayout::WholeDisk),
        32 * MIB,
        "download",
    )
    .await;

    // Truncated qcow2 file served completely (the file itself is short).
    let short = q[..q.len() / 2].to_vec();
    let url = srv.put("short.qcow2", short.clone(), Fault::None);
    assert_fails_cleanly(
        &srv,
        dir.path(),
        req(&url, &sha256(&short), None, ImageLayout::WholeDisk),
        32 * MIB,
        "truncated",
    )
    .await;

    // Disk too small, raw and qcow2.
    let url = srv.put("big.raw", raw.clone(), Fault::None);
    assert_fails_cleanly(
        &srv,
        dir.path(),
        req(&url, &sha256(&raw), None, ImageLayout::WholeDisk),
        4 * MIB,
        "disk too small",
    )
    .await;
    let url = srv.put("big.qcow2", q.clone(), Fault::None);
    assert_fails_cleanly(
        &srv,
        dir.path(),
        req(&url, &sha256(&q), None, ImageLayout::WholeDisk),
        4 * MIB,
        "disk too small",
    )
    .await;

    // Declared raw but the data is qcow2.
    assert_fails_cleanly(
        &srv,
        dir.path(),
        req(&url, &sha256(&q), Some(DiskFormat::Raw), ImageLayout::WholeDisk),
        32 * MIB,
        "format mismatch",
    )
    .await;

    // 404.
    let missing = format!("{}/nope.raw", srv.base);
    assert_fails_cleanly(
        &srv,
        dir.path(),
        req(&missing, &sha256(&raw), None, ImageLayout::WholeDisk),
        32 * MIB,
        "404",
    )
    .await;
}

#[tokio::test]
async fn test_checksum_url_and_os_hash_fields() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start().await;
    let raw = make_raw_image(dir.path(), 4 * MIB);
    let url = srv.put("img.raw", raw.clone(), Fault::None);
    let sha512 = hex::encode(sha2::Sha512::digest(&raw));
    let sums = srv.put(
        "SHA512SUMS",
        format!("{}  other.raw\n{sha512}  img.raw\n", "a".repeat(128)).into_bytes(),
        Fault::None,
    );
    let info = IronicImageInfo {
        image_source: url.clone(),
        image_os_hash_algo: "sha512".into(),
        image_os_hash_value: sums,
        ..IronicImageInfo::default()
    };
    let r = ImageRequest::from_ironic(&info, false).unwrap();
    let d = disk(dir.path(), "cs", 16 * MIB);
    let o = write(&r, &d).await.unwrap();
    assert_eq!(o.digest, sha512);
    // Legacy md5 by length, refused when md5 is disabled.
    let md5 = "d41d8cd98f00b204e9800998ecf8427e";
    let info = IronicImageInfo {
        image_source: url,
        image_checksum: md5.into(),
        ..IronicImageInfo::default()
    };
    assert!(ImageRequest::from_ironic(&info, false).is_err());
    assert!(ImageRequest::from_ironic(&info, true).is_ok());
    let none = IronicImageInfo { image_source: "http://x/y".into(), ..IronicImageInfo::default() };
    assert!(ImageRequest::from_ironic(&none, true).unwrap_err().to_string().contains("checksum"));
}

#[tokio::test]
async fn test_erase_metadata_removes_tables_at_both_ends() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start().await;
    let raw = make_raw_image(dir.path(), 4 * MIB);
    let url = srv.put("e.raw", raw.clone(), Fault::None);
    let d = disk(dir.path(), "e", 4 * MIB);
    write(&req(&url, &sha256(&raw), None, ImageLayout::WholeDisk), &d).await.unwrap();
    assert!(sfdisk_dump(&d).is_ok());
    image::erase_metadata(&d).unwrap();
    assert!(sfdisk_dump(&d).is_err());
    let bytes = std::fs::read(&d).unwrap();
    assert!(bytes[bytes.len() - 64 * 1024..].iter().all(|b| *b == 0), "backup GPT wiped");
    image::erase_full(&d, &CancellationToken::new()).unwrap();
    assert!(std::fs::read(&d).unwrap().iter().all(|b| *b == 0));
}
