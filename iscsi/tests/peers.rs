//! Real peers: libiscsi's command-line initiators against our target, and our initiator
//! against tgtd (Debian packages `libiscsi-bin` and `tgt`). A missing peer skips loudly,
//! or fails when FERRIC_REQUIRE_PEERS=1 (the rule of `common::testing`, restated here so
//! this crate does not pull the services' TLS and telemetry stack into its tests).

use iscsi::initiator::{InitiatorError, Session};

use crate::support::{IQN, creds, initiator, pseudo_random, sha256, start_target, within};
use crate::tgtd::{find_binary, run, start_tgtd};

/// `Some(v)` when found; otherwise a failure under FERRIC_REQUIRE_PEERS=1, else a loud skip.
#[track_caller]
fn require_peer<T>(what: &str, found: Result<T, String>) -> Option<T> {
    match found {
        Ok(v) => Some(v),
        Err(why) => {
            let required = std::env::var("FERRIC_REQUIRE_PEERS").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "{what} is required (FERRIC_REQUIRE_PEERS=1) but not available: {why}"
            );
            eprintln!(
                "SKIPPED: {what} not available ({why}); set FERRIC_REQUIRE_PEERS=1 to fail instead"
            );
            None
        }
    }
}

const LIBISCSI_INITIATOR: &str = "iqn.2026-12.io.ferric:libiscsi";

#[tokio::test]
async fn test_libiscsi_tools_against_our_target() {
    let Some(bins) = require_peer(
        "libiscsi's tools",
        ["iscsi-inq", "iscsi-readcapacity16", "iscsi-ls", "iscsi-test-cu", "iscsi-perf"]
            .into_iter()
            .map(find_binary)
            .collect::<Result<Vec<_>, _>>(),
    ) else {
        return;
    };
    let [inq, cap, ls, cu, perf] = &bins[..] else { unreachable!() };
    within(300, async {
        let fx = start_target(16 << 20, Some(creds())).await;
        // Known content, to tell reads of real data from zeros.
        let pattern = pseudo_random(16 << 20, 11);
        std::fs::write(&fx.path, &pattern).unwrap();
        let c = creds();
        let portal = format!("iscsi://{}%{}@{}", c.user, c.secret, fx.addr());
        let lun = format!("{portal}/{IQN}/1");
        let i = ["-i", LIBISCSI_INITIATOR];

        let (ok, out) = run(inq, &[&i[..], &[lun.as_str()]].concat()).await;
        assert!(ok, "iscsi-inq failed: {out}");
        assert!(out.contains("FERRIC") && out.contains("DEPLOY DISK"), "{out}");

        let (ok, out) = run(inq, &[&i[..], &["-e", "1", "-c", "128", lun.as_str()]].concat()).await;
        assert!(ok, "iscsi-inq VPD 0x80 failed: {out}");
        assert!(out.contains("ferric0001"), "{out}");

        let (ok, out) = run(cap, &[&i[..], &[lun.as_str()]].concat()).await;
        assert!(ok, "iscsi-readcapacity16 failed: {out}");
        assert!(out.contains("512"), "{out}");
        let (ok, out) = run(cap, &[&i[..], &["-s", lun.as_str()]].concat()).await;
        assert!(ok, "{out}");
        assert_eq!(out.trim(), (16u64 << 20).to_string());

        let (ok, out) = run(ls, &[&i[..], &["-s", portal.as_str()]].concat()).await;
        assert!(ok, "iscsi-ls failed: {out}");
        assert!(out.contains(IQN), "{out}");
        assert!(out.contains(&format!("{},1", fx.addr())), "{out}");
        assert!(out.contains("Lun:1"), "{out}");

        // Wrong CHAP secret: libiscsi must fail to log in.
        let bad = format!("iscsi://{}%wrong-secret-0@{}/{IQN}/1", c.user, fx.addr());
        let (ok, out) = run(inq, &[&i[..], &[bad.as_str()]].concat()).await;
        assert!(!ok, "login with a wrong secret succeeded: {out}");

        // libiscsi's conformance suite: every SCSI test (commands we do not implement are
        // skipped by the suite itself, after it sees ILLEGAL REQUEST), and the iSCSI-layer
        // tests of command numbering, residuals and task management (223 tests with
        // Debian 12's libiscsi 1.19).
        let tests = "SCSI.*,iSCSI.iSCSIcmdsn.*,iSCSI.iSCSIResiduals.Read10Residuals,\
                     iSCSI.iSCSIResiduals.Read16Residuals,iSCSI.iSCSIResiduals.Write10Residuals,\
                     iSCSI.iSCSIResiduals.Write16Residuals,iSCSI.iSCSITMF.*";
        let (ok, out) =
            run(cu, &[&i[..], &["--dataloss", "--test", tests, lun.as_str()]].concat()).await;
        assert!(ok, "iscsi-test-cu failed: {out}");
        // CUnit's summary row: "tests  Total  Ran  Passed  Failed  Inactive".
        let row: Vec<u32> = out
            .lines()
            .find(|l| l.trim_start().starts_with("tests "))
            .map(|l| l.split_whitespace().skip(1).filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_default();
        let [total, ran, passed, failed, _] = row[..] else { panic!("no CUnit summary: {out}") };
        assert!(total >= 200 && ran == total && passed == total && failed == 0, "{row:?}\n{out}");
        assert_ne!(fx.contents(), pattern, "libiscsi's writes did not reach the file");

        // Reads at depth (a few seconds of iscsi-perf; it stops on its own via -t).
        let (ok, out) = run(perf, &[&i[..], &["-m", "16", "-t", "2", lun.as_str()]].concat()).await;
        assert!(ok, "iscsi-perf failed: {out}");
        assert!(out.contains("capacity is 32768 blocks"), "{out}");
        assert!(out.contains("iops average") && out.contains("finished."), "{out}");
    })
    .await;
}

/// QEMU's iSCSI block driver (Debian's `qemu-block-extra`, through `qemu-img`) against our
/// target with CHAP: it writes an image into the exported disk (the backing file then holds
/// it) and reads the disk back into a file equal to what our initiator wrote; a wrong secret
/// is refused.
#[tokio::test]
async fn test_qemu_block_driver_against_our_target() {
    let qemu_img = match find_binary("qemu-img") {
        Ok(bin) => {
            let driver = std::path::Path::new("/usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so");
            if driver.exists() {
                Ok(bin)
            } else {
                Err(format!("{} is missing (apt-get install qemu-block-extra)", driver.display()))
            }
        }
        Err(e) => Err(e),
    };
    let Some(qemu_img) = require_peer("qemu-img with QEMU's iSCSI driver", qemu_img) else {
        return;
    };
    within(120, async {
        let fx = start_target(16 << 20, Some(creds())).await;
        let c = creds();
        let lun = format!("iscsi://{}%{}@{}/{IQN}/1", c.user, c.secret, fx.addr());
        let dir = tempfile::tempdir().unwrap();

        // QEMU writes: a raw image converted onto the exported disk.
        let image = pseudo_random(16 << 20, 31);
        let src = dir.path().join("image.raw");
        std::fs::write(&src, &image).unwrap();
        let src = src.to_string_lossy().into_owned();
        let (ok, out) =
            run(&qemu_img, &["convert", "-n", "-f", "raw", "-O", "raw", &src, &lun]).await;
        assert!(ok, "qemu-img convert onto our target failed: {out}");
        assert_eq!(sha256(&fx.contents()), sha256(&image), "the backing file holds the image");

        // QEMU reads back what our initiator wrote.
        let ours = pseudo_random(16 << 20, 32);
        let mut s = Session::login(fx.addr(), IQN, initiator(Some(creds()))).await.unwrap();
        s.write(0, &ours).await.unwrap();
        s.sync_cache().await.unwrap();
        s.logout().await.unwrap();
        let back = dir.path().join("back.raw");
        let back_s = back.to_string_lossy().into_owned();
        let (ok, out) = run(&qemu_img, &["convert", "-f", "raw", "-O", "raw", &lun, &back_s]).await;
        assert!(ok, "qemu-img convert from our target failed: {out}");
        assert_eq!(sha256(&std::fs::read(&back).unwrap()), sha256(&ours));
        let (ok, out) = run(&qemu_img, &["info", "--output=json", &lun]).await;
        assert!(ok && out.contains(&format!("\"virtual-size\": {}", 16u64 << 20)), "{out}");

        let bad = format!("iscsi://{}%wrong-secret-0@{}/{IQN}/1", c.user, fx.addr());
        let (ok, out) = run(&qemu_img, &["info", &bad]).await;
        assert!(!ok, "a wrong CHAP secret must be refused: {out}");
    })
    .await;
}

#[tokio::test]
async fn test_our_initiator_against_tgtd() {
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("tgt.img");
    let size = 32u64 << 20;
    std::fs::File::create(&backing).unwrap().set_len(size).unwrap();
    let Some((_tgtd, addr)) = require_peer(
        "tgtd",
        start_tgtd(&backing, &dir.path().join("tgtd.log"), IQN, Some(&creds())).await,
    ) else {
        return;
    };
    within(120, async {
        // Wrong secret first: tgtd must refuse with an authentication failure.
        let mut bad = creds();
        bad.secret = "wrong-secret-000".into();
        let err = Session::login(addr, IQN, initiator(Some(bad))).await.unwrap_err();
        assert!(err.is_auth_failure(), "{err:?}");

        let found = iscsi::initiator::discover(addr, initiator(Some(creds()))).await;
        // tgtd asks no CHAP for discovery unless configured; either way IQN is listed.
        let found = match found {
            Ok(f) => f,
            Err(InitiatorError::LoginRefused { .. }) => {
                iscsi::initiator::discover(addr, initiator(None)).await.unwrap()
            }
            Err(e) => panic!("discovery against tgtd: {e:?}"),
        };
        assert!(found.iter().any(|t| t.name == IQN), "{found:?}");

        let mut cfg = initiator(Some(creds()));
        cfg.queue_depth = 16;
        let mut s = Session::login(addr, IQN, cfg).await.unwrap();
        let cap = s.read_capacity().await.unwrap();
        assert_eq!(cap.bytes(), size);
        let data = pseudo_random(16 << 20, 21);
        s.write(4096, &data).await.unwrap();
        s.sync_cache().await.unwrap();
        let back = s.read(4096, (data.len() / 512) as u64).await.unwrap();
        assert!(back == data, "read-back from tgtd differs");
        s.logout().await.unwrap();

        let file = std::fs::read(&backing).unwrap();
        let at = 4096 * 512;
        assert_eq!(sha256(&file[at..at + data.len()]), sha256(&data));
    })
    .await;
}

#[test]
fn test_required_peer_rule() {
    // Present values pass through whatever the environment says.
    assert_eq!(require_peer("nothing", Ok::<_, String>(3)), Some(3));
    // Under FERRIC_REQUIRE_PEERS=1 a missing peer is a failure.
    let required = std::env::var("FERRIC_REQUIRE_PEERS").is_ok_and(|v| v == "1");
    let r = std::panic::catch_unwind(|| require_peer::<()>("ghost", Err("absent".into())));
    assert_eq!(r.is_err(), required);
}
