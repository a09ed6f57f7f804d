//! The `iscsi` deploy interface through whole conductors: simulated ramdisks export real
//! iSCSI targets (the `iscsi` crate's) over disk files, call back `pass_deploy_info` with
//! the one-time key, and the conductor writes the image through its initiator. Every disk
//! is read back and compared with the image; every fault ends in `deploy failed` with the
//! cause, no bootable partial image and a ramdisk told to stop.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use conductor_service::testing::iscsi::{pass_deploy_info, run_ramdisks};
use conductor_service::testing::{fast_config, insert_fake_node};
use deploy::iscsi::{DeployInfo, IscsiSession};
use deploy::{ApiVerb, Node, NodeId, PowerState, ProvisionState as S, PublicError};
use iscsi::notify::Outcome;
use sha2::{Digest, Sha256};
use sim::SimIscsiRamdisk;

use super::{Env, env, env_sim, sim_config};

const LONG: Duration = Duration::from_secs(60);

/// An image of `len` bytes with an MBR boot signature and content that differs per block.
fn write_image(dir: &Path, name: &str, len: usize, seed: u8) -> (PathBuf, String) {
    let mut data: Vec<u8> = (0..len)
        .map(|i| ((i / 512) as u8).wrapping_mul(31).wrapping_add(seed ^ (i as u8)))
        .collect();
    data[510] = 0x55;
    data[511] = 0xaa;
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    (path, hex::encode(Sha256::digest(&data)))
}

fn disk_file(dir: &Path, name: &str, len: u64) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(len).unwrap();
    // A previous tenant's boot signature and backup table area, to be wiped.
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x55, 0xaa], 510).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xee; 512], len - 512).unwrap();
    p
}

/// An available fake-hardware node with `deploy_interface: iscsi` and the image.
async fn iscsi_node(env: &Env, image: &Path, sha256: &str) -> Node {
    let mut n = insert_fake_node(env.store(), "iscsi").await.unwrap();
    n.provision_state = S::Available;
    n.instance_info.insert("image_source".into(), format!("file://{}", image.display()).into());
    n.instance_info.remove("image_checksum");
    n.instance_info.insert("image_os_hash_algo".into(), "sha256".into());
    n.instance_info.insert("image_os_hash_value".into(), sha256.into());
    n.instance_info.insert("image_disk_format".into(), "raw".into());
    env.store().node_update(&n).await.unwrap()
}

/// Ask for `active` as a client does: a node briefly locked by a periodic task (power sync)
/// answers NodeLocked, which clients retry.
async fn deploy(env: &Env, id: NodeId) {
    let end = Instant::now() + LONG;
    loop {
        match env.provision(id, ApiVerb::Active).await {
            Ok(_) => return,
            Err(PublicError::NodeLocked { .. }) if Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("deploying {id}: {e:?}"),
        }
    }
}

struct Rig {
    env: Env,
    ramdisk: SimIscsiRamdisk,
    dir: tempfile::TempDir,
}

async fn rig(name: &str) -> Rig {
    let env = env(false).await.unwrap();
    env.start_conductor(fast_config(name, &env.queue)).await;
    env.start_fleet();
    let dir = tempfile::tempdir().unwrap();
    let ramdisk = SimIscsiRamdisk::new(dir.path(), env.token.clone());
    Rig { env, ramdisk, dir }
}

impl Rig {
    fn start_ramdisks(&self) {
        let (s, b, r, t) = (
            self.env.store().clone(),
            self.env.bus.clone(),
            self.ramdisk.clone(),
            self.env.token.clone(),
        );
        tokio::spawn(run_ramdisks(s, b, r, Duration::from_millis(100), t));
    }

    /// Wait until the node waits for `pass_deploy_info` with a key issued.
    async fn waiting(&self, id: NodeId) -> Node {
        let store = self.env.store().clone();
        conductor_service::testing::wait_for(LONG, "the node to wait for pass_deploy_info", || {
            let store = store.clone();
            async move {
                let n = store.node_fetch(id).await.ok()?;
                (n.provision_state == S::WaitCallBack
                    && n.reservation.is_none()
                    && IscsiSession::of(&n).key_pending)
                    .then_some(n)
            }
        })
        .await
    }
}

fn file_sha256(path: &Path, len: u64) -> String {
    let data = std::fs::read(path).unwrap();
    hex::encode(Sha256::digest(&data[..len as usize]))
}

fn head_is_blank(path: &Path) -> bool {
    let data = std::fs::read(path).unwrap();
    data[..1 << 20].iter().all(|b| *b == 0) && data[data.len() - 512..].iter().all(|b| *b == 0)
}

/// Twenty nodes deploy at once over iSCSI; all end `active` and every disk holds the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_twenty_iscsi_deploys_at_once_all_active_and_verified() {
    let r = rig("c-iscsi-20").await;
    r.start_ramdisks();
    let (image, sha) = write_image(r.dir.path(), "image.raw", (6 << 20) + 1234, 7);
    let image_len = std::fs::metadata(&image).unwrap().len();
    let mut nodes = Vec::new();
    for i in 0..20 {
        let n = iscsi_node(&r.env, &image, &sha).await;
        r.ramdisk.set_disk(n.uuid, &disk_file(r.dir.path(), &format!("disk{i}.img"), 16 << 20));
        nodes.push(n.uuid);
    }
    let t0 = Instant::now();
    for id in &nodes {
        deploy(&r.env, *id).await;
    }
    for id in &nodes {
        let n = r.env.wait_state(*id, S::Active, LONG).await;
        assert_eq!(n.power_state, Some(PowerState::On));
        assert_eq!(n.last_error, None);
        assert!(
            n.driver_internal_info.keys().all(|k| !k.starts_with("iscsi_")),
            "the credentials die with the deploy: {:?}",
            n.driver_internal_info
        );
    }
    let elapsed = t0.elapsed();
    for id in &nodes {
        let disk = r.ramdisk.disk(*id).unwrap();
        assert_eq!(file_sha256(&disk, image_len), sha, "disk of {id} differs from the image");
        // Padding to the block and the old backup area at the end are zero.
        let data = std::fs::read(&disk).unwrap();
        assert!(
            data[image_len as usize..].iter().all(|b| *b == 0),
            "stale data behind the image on {id}"
        );
        assert_eq!(r.ramdisk.outcome(*id), Some(Outcome::Done), "the ramdisk of {id} was told");
        assert_eq!(r.ramdisk.exports(*id), 1);
    }
    eprintln!("20 iSCSI deploys of {image_len} bytes: {elapsed:?}");
    r.env.finish().await;
}

/// A wrong key, a replayed key and a callback for a node that is not waiting are refused
/// with a 4xx error and change nothing; the right key goes through once.
#[tokio::test]
async fn test_bad_replayed_and_unexpected_callbacks_are_refused() {
    let r = rig("c-iscsi-keys").await;
    let (image, sha) = write_image(r.dir.path(), "image.raw", 2 << 20, 3);
    let n = iscsi_node(&r.env, &image, &sha).await;
    let (store, bus) = (r.env.store().clone(), r.env.bus.clone());

    // Not waiting: `available`, no key issued.
    let info =
        DeployInfo { address: "127.0.0.1".into(), iqn: "iqn.x".into(), ..Default::default() };
    let e = pass_deploy_info(&store, &bus, n.uuid, "whatever", &info).await.unwrap_err();
    assert!(matches!(e, PublicError::Conflict { .. }), "{e:?}");
    assert!(e.to_string().contains("not waiting"), "{e}");
    assert_eq!(r.env.node(n.uuid).await, n, "nothing changed");

    deploy(&r.env, n.uuid).await;
    let waiting = r.waiting(n.uuid).await;
    let creds = IscsiSession::export_credentials(&waiting).unwrap();
    let exported = r.ramdisk.boot(n.uuid, &creds).await.unwrap();

    let e = pass_deploy_info(&store, &bus, n.uuid, "not-the-key", &exported).await.unwrap_err();
    assert!(matches!(e, PublicError::InvalidRequest { .. }), "{e:?}");
    assert!(e.to_string().contains("deploy key"), "{e}");
    let after = r.env.node(n.uuid).await;
    assert_eq!(after.driver_internal_info, waiting.driver_internal_info, "nothing changed");
    assert_eq!(after.provision_state, S::WaitCallBack);

    pass_deploy_info(&store, &bus, n.uuid, &creds.deploy_key, &exported).await.unwrap();
    // The replay of the same, used, key.
    let e = pass_deploy_info(&store, &bus, n.uuid, &creds.deploy_key, &exported).await.unwrap_err();
    assert!(
        matches!(e, PublicError::InvalidRequest { .. } | PublicError::Conflict { .. }),
        "{e:?}"
    );
    let done = r.env.wait_state(n.uuid, S::Active, LONG).await;
    let disk = r.ramdisk.disk(n.uuid).unwrap();
    assert_eq!(file_sha256(&disk, 2 << 20), sha);
    // Once active, a callback is refused as not waiting.
    let e = pass_deploy_info(&store, &bus, n.uuid, &creds.deploy_key, &exported).await.unwrap_err();
    assert!(matches!(e, PublicError::Conflict { .. }), "{e:?}");
    assert_eq!(r.env.node(n.uuid).await, done);
    r.env.finish().await;
}

async fn failed_deploy(r: &Rig, n: &Node) -> Node {
    deploy(&r.env, n.uuid).await;
    let f = r.env.wait_state(n.uuid, S::DeployFailed, LONG).await;
    assert!(
        f.driver_internal_info.keys().all(|k| !k.starts_with("iscsi_")),
        "{:?}",
        f.driver_internal_info
    );
    f
}

/// The image's digest does not match: the deploy fails, nothing bootable is left.
#[tokio::test]
async fn test_checksum_mismatch_fails_and_leaves_nothing_bootable() {
    let r = rig("c-iscsi-sum").await;
    r.start_ramdisks();
    let (image, _) = write_image(r.dir.path(), "image.raw", 3 << 20, 9);
    let n = iscsi_node(&r.env, &image, &"ab".repeat(32)).await;
    let disk = disk_file(r.dir.path(), "disk.img", 8 << 20);
    r.ramdisk.set_disk(n.uuid, &disk);
    let f = failed_deploy(&r, &n).await;
    let err = f.last_error.unwrap();
    assert!(err.contains("checksum"), "{err}");
    assert!(head_is_blank(&disk), "a failed write leaves no partition table or boot code");
    assert_eq!(r.ramdisk.outcome(n.uuid), Some(Outcome::Stop));
    assert_eq!(f.power_state, Some(PowerState::Off));
    r.env.finish().await;
}

/// The image is larger than the exported disk: refused before anything is written.
#[tokio::test]
async fn test_disk_too_small_fails_with_the_cause() {
    let r = rig("c-iscsi-small").await;
    r.start_ramdisks();
    let (image, sha) = write_image(r.dir.path(), "image.raw", 5 << 20, 1);
    let n = iscsi_node(&r.env, &image, &sha).await;
    let disk = disk_file(r.dir.path(), "disk.img", 4 << 20);
    r.ramdisk.set_disk(n.uuid, &disk);
    let f = failed_deploy(&r, &n).await;
    let err = f.last_error.unwrap();
    assert!(err.contains("disk too small"), "{err}");
    assert_eq!(r.ramdisk.outcome(n.uuid), Some(Outcome::Stop));
    r.env.finish().await;
}

/// The target drops every connection in the middle of the write: the deploy fails cleanly
/// with the cause, and the ramdisk is told to stop.
#[tokio::test]
async fn test_target_dropping_mid_write_fails_cleanly() {
    let r = rig("c-iscsi-drop").await;
    r.start_ramdisks();
    let (image, sha) = write_image(r.dir.path(), "image.raw", 8 << 20, 5);
    let n = iscsi_node(&r.env, &image, &sha).await;
    let disk = disk_file(r.dir.path(), "disk.img", 16 << 20);
    r.ramdisk.set_disk(n.uuid, &disk);
    r.ramdisk.drop_after(n.uuid, 4 << 20);
    let f = failed_deploy(&r, &n).await;
    let err = f.last_error.unwrap();
    assert!(err.contains("iSCSI"), "{err}");
    // The old tenant's boot signature was wiped before the write; the new head never came.
    let data = std::fs::read(&disk).unwrap();
    assert!(data[..1 << 20].iter().all(|b| *b == 0), "nothing bootable at the head");
    r.env.finish().await;
}

/// The ramdisk reports that it could not export: the deploy fails with its error.
#[tokio::test]
async fn test_ramdisk_error_fails_the_deploy() {
    let r = rig("c-iscsi-err").await;
    r.start_ramdisks();
    let (image, sha) = write_image(r.dir.path(), "image.raw", 2 << 20, 2);
    let n = iscsi_node(&r.env, &image, &sha).await;
    r.ramdisk.fail_export(n.uuid, "no disk matches the root device hints");
    let f = failed_deploy(&r, &n).await;
    let err = f.last_error.unwrap();
    assert!(err.contains("no disk matches the root device hints"), "{err}");
    r.env.finish().await;
}

/// The ramdisk never calls back: the deploy fails at the callback timeout (30 minutes,
/// simulated) and the unused key and CHAP credentials expire with it.
#[tokio::test]
async fn test_no_callback_fails_at_timeout_and_the_key_expires() {
    let env = env_sim().await;
    env.start_conductor(sim_config("c-iscsi-timeout", &env.queue)).await;
    let dir = tempfile::tempdir().unwrap();
    let (image, sha) = write_image(dir.path(), "image.raw", 1 << 20, 4);
    let n = iscsi_node(&env, &image, &sha).await;
    deploy(&env, n.uuid).await;
    let waiting = env.wait_state(n.uuid, S::WaitCallBack, Duration::from_secs(600)).await;
    let creds = IscsiSession::export_credentials(&waiting).expect("a key was issued");
    let failed = env.wait_state(n.uuid, S::DeployFailed, Duration::from_secs(7200)).await;
    let err = failed.last_error.clone().unwrap();
    assert!(err.contains("Timeout reached while waiting for callback"), "{err}");
    assert!(
        failed.driver_internal_info.keys().all(|k| !k.starts_with("iscsi_")),
        "{:?}",
        failed.driver_internal_info
    );
    // A late callback with the old key is refused and changes nothing.
    let info = DeployInfo { address: "127.0.0.1".into(), iqn: creds.iqn, ..Default::default() };
    let e = pass_deploy_info(env.store(), &env.bus, n.uuid, &creds.deploy_key, &info)
        .await
        .unwrap_err();
    assert!(matches!(e, PublicError::Conflict { .. }), "{e:?}");
    assert_eq!(env.node(n.uuid).await, failed);
    env.finish().await;
}

/// `raw` converted to qcow2 by qemu-img (`-c`: compressed clusters), or `None` (skipped
/// loudly, or a failure with `FERRIC_REQUIRE_PEERS=1`) without qemu-img.
fn qcow2_of(raw: &Path, out: &Path, compressed: bool) -> Option<String> {
    let mut cmd = std::process::Command::new("qemu-img");
    cmd.args(["convert", "-f", "raw", "-O", "qcow2"]);
    if compressed {
        cmd.arg("-c");
    }
    let ran = cmd.arg(raw).arg(out).output().map_err(|e| format!("qemu-img: {e}"));
    let ran = ran.and_then(|o| {
        o.status
            .success()
            .then_some(())
            .ok_or_else(|| String::from_utf8_lossy(&o.stderr).into_owned())
    });
    common::testing::require_service(common::testing::Need::Peers, "qemu-img", ran)?;
    Some(hex::encode(Sha256::digest(std::fs::read(out).unwrap())))
}

/// A disk whose every byte holds a previous tenant's data.
fn dirty_disk(dir: &Path, name: &str, len: usize) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, vec![0x5a; len]).unwrap();
    p
}

/// qcow2 images over iSCSI, one with plain and one with compressed clusters: the conductor
/// converts while it streams, and each disk holds the guest's bytes, its unallocated ranges
/// as zeros over the previous tenant's data. The checksum is the qcow2 file's. A qcow2
/// whose guest is larger than the disk is refused with the cause, nothing bootable left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_qcow2_images_are_converted_onto_the_disk() {
    let r = rig("c-iscsi-qcow2").await;
    r.start_ramdisks();
    let len = 12 << 20;
    let (raw, _) = write_image(r.dir.path(), "guest.raw", len, 3);
    // A hole the qcow2 leaves unallocated, and zeros in the first MiB past the MBR.
    let mut guest = std::fs::read(&raw).unwrap();
    guest[(3 << 20)..(7 << 20)].fill(0);
    guest[4096..(256 << 10)].fill(0);
    std::fs::write(&raw, &guest).unwrap();
    let mut nodes = Vec::new();
    for (i, compressed) in [false, true].into_iter().enumerate() {
        let image = r.dir.path().join(format!("guest{i}.qcow2"));
        let Some(sha) = qcow2_of(&raw, &image, compressed) else {
            r.env.finish().await;
            return;
        };
        let mut n = iscsi_node(&r.env, &image, &sha).await;
        n.instance_info.insert("image_disk_format".into(), "qcow2".into());
        let n = r.env.store().node_update(&n).await.unwrap();
        let disk = dirty_disk(r.dir.path(), &format!("disk{i}.img"), 16 << 20);
        r.ramdisk.set_disk(n.uuid, &disk);
        deploy(&r.env, n.uuid).await;
        nodes.push((n.uuid, disk));
    }
    for (id, disk) in &nodes {
        let n = r.env.wait_state(*id, S::Active, LONG).await;
        assert_eq!(n.last_error, None);
        let data = std::fs::read(disk).unwrap();
        assert!(data[..len] == guest[..], "disk of {id} differs from the guest");
        assert!(data[data.len() - (1 << 20)..].iter().all(|b| *b == 0), "backup table area");
        assert_eq!(r.ramdisk.outcome(*id), Some(Outcome::Done));
    }

    // A guest larger than the disk (the file itself is small).
    let big = r.dir.path().join("big.raw");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(32 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x55, 0xaa], 510).unwrap();
    let image = r.dir.path().join("big.qcow2");
    let sha = qcow2_of(&big, &image, false).unwrap();
    let mut n = iscsi_node(&r.env, &image, &sha).await;
    n.instance_info.insert("image_disk_format".into(), "qcow2".into());
    let n = r.env.store().node_update(&n).await.unwrap();
    let disk = disk_file(r.dir.path(), "small.img", 16 << 20);
    r.ramdisk.set_disk(n.uuid, &disk);
    let f = failed_deploy(&r, &n).await;
    let err = f.last_error.unwrap();
    assert!(err.contains("disk too small"), "{err}");
    assert!(head_is_blank(&disk), "nothing bootable is left");
    assert_eq!(r.ramdisk.outcome(n.uuid), Some(Outcome::Stop));
    r.env.finish().await;
}

/// A recognisable root filesystem image: an ext4 superblock magic and UUID at the place
/// blkid reads them, content that differs per block after it.
fn root_image(dir: &Path, len: usize, fs_uuid: uuid::Uuid) -> (PathBuf, String) {
    let mut data: Vec<u8> =
        (0..len).map(|i| ((i / 4096) as u8).wrapping_mul(13) ^ (i as u8) | 1).collect();
    data[..2048].fill(0);
    data[1024 + 56] = 0x53;
    data[1024 + 57] = 0xEF;
    data[1024 + 104..1024 + 120].copy_from_slice(fs_uuid.as_bytes());
    let path = dir.join("root.img");
    std::fs::write(&path, &data).unwrap();
    (path, hex::encode(Sha256::digest(&data)))
}

/// An available node with a partition image: root, swap and ephemeral sizes, boot mode.
async fn partition_node(env: &Env, image: &Path, sha: &str, boot_mode: &str, root_mb: u64) -> Node {
    let mut n = iscsi_node(env, image, sha).await;
    let ii = &mut n.instance_info;
    ii.insert("image_type".into(), "partition".into());
    ii.insert("root_mb".into(), root_mb.into());
    ii.insert("swap_mb".into(), 4.into());
    ii.insert("ephemeral_mb".into(), 4.into());
    ii.insert("capabilities".into(), serde_json::json!({"boot_mode": boot_mode}));
    ii.insert(
        "configdrive".into(),
        serde_json::json!({"meta_data": {"hostname": "part-1"}, "user_data": "#cloud-config-iscsi"}),
    );
    env.store().node_update(&n).await.unwrap()
}

/// A partition image over iSCSI (UEFI, GPT): the layout Ironic makes (ESP, ephemeral, swap,
/// root, config-2 at the end), the root partition holds the image, swap has mkswap's
/// signature, the config drive is an ISO labelled config-2 with the user data, and the
/// ramdisk was asked to format the ephemeral partition and install the bootloader with the
/// root filesystem's UUID, which it found on the disk; `root_uuid_or_disk_id` is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_partition_image_is_laid_out_written_and_its_bootloader_installed() {
    let r = rig("c-iscsi-part").await;
    r.start_ramdisks();
    let fs_uuid = uuid::Uuid::new_v4();
    let image_len = (3 << 20) + 4096;
    let (image, sha) = root_image(r.dir.path(), image_len, fs_uuid);
    let n = partition_node(&r.env, &image, &sha, "uefi", 8).await;
    let disk = dirty_disk_sparse(r.dir.path(), "disk.img", 1 << 30);
    r.ramdisk.set_disk(n.uuid, &disk);
    let t0 = Instant::now();
    deploy(&r.env, n.uuid).await;
    let done = r.env.wait_state(n.uuid, S::Active, LONG).await;
    eprintln!("partition image deploy over iSCSI: {:?}", t0.elapsed());
    assert_eq!(done.last_error, None);
    assert_eq!(
        done.driver_internal_info["root_uuid_or_disk_id"].as_str(),
        Some(fs_uuid.to_string().as_str())
    );
    assert!(done.driver_internal_info.keys().all(|k| !k.starts_with("iscsi_")));

    let f = std::fs::File::open(&disk).unwrap();
    let t = image::partition::read_table(&f).unwrap().expect("a partition table");
    assert_eq!(t.label, image::partition::DiskLabel::Gpt);
    let names: Vec<&str> = t.partitions.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["efi-part", "ephemeral0", "swap1", "root", "config-2"]);
    let mib: Vec<u64> = t.partitions.iter().map(|p| p.size >> 20).collect();
    assert_eq!(mib[..4], [550, 4, 4, 8]);
    let cd = &t.partitions[4];
    assert!(cd.start + cd.size > (1 << 30) - (2 << 20), "config-2 at the end of the disk");
    let data = std::fs::read(&disk).unwrap();
    let root = &t.partitions[3];
    let at = |p: &image::partition::Partition, len: usize| &data[p.start as usize..][..len];
    assert_eq!(hex::encode(Sha256::digest(at(root, image_len))), sha, "root holds the image");
    let swap = at(&t.partitions[2], 4096);
    assert_eq!(&swap[4086..], b"SWAPSPACE2");
    assert_eq!(&swap[1024..1028], &1u32.to_le_bytes());
    assert_eq!(&swap[1028..1032], &((4u32 << 20) / 4096 - 1).to_le_bytes(), "last page");
    let iso = at(cd, 1 << 20);
    assert_eq!(&iso[32769..32774], b"CD001");
    assert!(iso.windows(8).any(|w| w == b"config-2"), "labelled config-2");
    assert!(iso.windows(19).any(|w| w == b"#cloud-config-iscsi"), "carries the user data");
    // The ephemeral partition's old bytes are gone; the ramdisk formats it.
    assert!(at(&t.partitions[1], 1 << 20).iter().all(|b| *b == 0));

    let installs = r.ramdisk.bootloader_installs(n.uuid);
    assert_eq!(installs.len(), 1, "{installs:?}");
    let (req, report) = &installs[0];
    assert_eq!(report.result(), Ok(()));
    assert_eq!(req.root_uuid, fs_uuid.to_string());
    assert_eq!(req.root_part_uuid, root.part_uuid);
    assert_eq!(req.efi_system_part_uuid.as_deref(), Some(t.partitions[0].part_uuid.as_str()));
    assert_eq!(req.boot_mode, "uefi");
    let eph = req.ephemeral.as_ref().unwrap();
    assert_eq!(
        (eph.part_uuid.as_str(), eph.format.as_str()),
        (t.partitions[1].part_uuid.as_str(), "ext4")
    );
    // What the ramdisk ran: mkfs on the ephemeral partition, grub into the root it found.
    let plan: serde_json::Value = serde_json::from_slice(
        &std::fs::read(r.ramdisk.fake_root(n.uuid).join("var/lib/ferric/bootloader.json")).unwrap(),
    )
    .unwrap();
    let dev = |k: u32| agent::bootloader::partition_device(&disk.display().to_string(), k);
    assert_eq!(plan["commands"][0][0], "mkfs.ext4");
    assert_eq!(plan["commands"][0][4], dev(2));
    assert_eq!(plan["root_partition"], dev(4));
    assert_eq!(r.ramdisk.outcome(n.uuid), Some(Outcome::Done));
    r.env.finish().await;
}

/// A sparse disk whose first and last MiB hold a previous tenant's bytes.
fn dirty_disk_sparse(dir: &Path, name: &str, len: u64) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(len).unwrap();
    let old = vec![0x5a; 1 << 20];
    std::os::unix::fs::FileExt::write_all_at(&f, &old, 0).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &old, len - (1 << 20)).unwrap();
    p
}

/// The ramdisk fails to install the bootloader: `deploy failed` with its error, the
/// partition table wiped (nothing bootable), the ramdisk told to stop.
#[tokio::test]
async fn test_bootloader_install_failure_fails_the_deploy_and_leaves_nothing_bootable() {
    let r = rig("c-iscsi-part-fail").await;
    r.start_ramdisks();
    let (image, sha) = root_image(r.dir.path(), 2 << 20, uuid::Uuid::new_v4());
    let n = partition_node(&r.env, &image, &sha, "bios", 8).await;
    let disk = dirty_disk_sparse(r.dir.path(), "disk.img", 128 << 20);
    r.ramdisk.set_disk(n.uuid, &disk);
    r.ramdisk.fail_bootloader(n.uuid, "grub-install: error: unknown filesystem");
    let f = failed_deploy(&r, &n).await;
    let err = f.last_error.unwrap();
    assert!(err.contains("grub-install: error: unknown filesystem"), "{err}");
    assert!(err.contains("install the bootloader"), "{err}");
    assert_eq!(r.ramdisk.bootloader_installs(n.uuid).len(), 1);
    assert!(head_is_blank(&disk), "the table is gone");
    let file = std::fs::File::open(&disk).unwrap();
    assert!(image::partition::read_table(&file).unwrap().is_none());
    assert_eq!(r.ramdisk.outcome(n.uuid), Some(Outcome::Stop));
    assert_eq!(f.power_state, Some(PowerState::Off));
    r.env.finish().await;
}

/// A layout larger than the disk fails with "disk too small" before anything is written.
#[tokio::test]
async fn test_partition_layout_too_big_fails_before_writing() {
    let r = rig("c-iscsi-part-small").await;
    r.start_ramdisks();
    let (image, sha) = root_image(r.dir.path(), 1 << 20, uuid::Uuid::new_v4());
    let n = partition_node(&r.env, &image, &sha, "bios", 64).await;
    let disk = dirty_disk_sparse(r.dir.path(), "disk.img", 48 << 20);
    let before = std::fs::read(&disk).unwrap();
    r.ramdisk.set_disk(n.uuid, &disk);
    let f = failed_deploy(&r, &n).await;
    let err = f.last_error.unwrap();
    assert!(err.contains("disk too small"), "{err}");
    assert!(std::fs::read(&disk).unwrap() == before, "the disk is untouched");
    assert!(r.ramdisk.bootloader_installs(n.uuid).is_empty());
    assert_eq!(r.ramdisk.outcome(n.uuid), Some(Outcome::Stop));
    r.env.finish().await;
}

/// A whole-disk image with a config drive: the image's own table gains a config-2
/// partition at the end of the disk holding the ISO, and the disk identifier is recorded.
#[tokio::test]
async fn test_whole_disk_image_gets_a_config_drive_partition() {
    let r = rig("c-iscsi-cd").await;
    r.start_ramdisks();
    let len = 2 << 20;
    let (image, _) = write_image(r.dir.path(), "image.raw", len, 6);
    // An MBR with one partition (type 0x83, the image's second MiB).
    let mut img = std::fs::read(&image).unwrap();
    img[446..510].fill(0);
    img[446 + 4] = 0x83;
    img[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
    img[446 + 12..446 + 16].copy_from_slice(&2048u32.to_le_bytes());
    std::fs::write(&image, &img).unwrap();
    let sha = hex::encode(Sha256::digest(&img));
    let mut n = iscsi_node(&r.env, &image, &sha).await;
    n.instance_info.insert(
        "configdrive".into(),
        serde_json::json!({"meta_data": {"hostname": "wd-1"}, "user_data": "#cloud-config-wd"}),
    );
    let n = r.env.store().node_update(&n).await.unwrap();
    let disk = disk_file(r.dir.path(), "disk.img", 128 << 20);
    r.ramdisk.set_disk(n.uuid, &disk);
    deploy(&r.env, n.uuid).await;
    let done = r.env.wait_state(n.uuid, S::Active, LONG).await;
    assert_eq!(done.last_error, None);
    let data = std::fs::read(&disk).unwrap();
    assert!(data[..462] == img[..462] && data[512..len] == img[512..], "the image is intact");
    let t = image::partition::read_table(&std::fs::File::open(&disk).unwrap()).unwrap().unwrap();
    assert_eq!(t.partitions.len(), 2, "{t:?}");
    let cd = t.partitions.last().unwrap();
    assert!(cd.start + cd.size > (128 << 20) - (2 << 20), "config-2 at the end of the disk");
    let iso = &data[cd.start as usize..][..1 << 20];
    assert_eq!(&iso[32769..32774], b"CD001");
    assert!(iso.windows(16).any(|w| w == b"#cloud-config-wd"));
    assert_eq!(
        done.driver_internal_info["root_uuid_or_disk_id"].as_str(),
        Some(t.disk_id.as_str())
    );
    assert_eq!(r.ramdisk.outcome(n.uuid), Some(Outcome::Done));
    assert!(r.ramdisk.bootloader_installs(n.uuid).is_empty());
    r.env.finish().await;
}
