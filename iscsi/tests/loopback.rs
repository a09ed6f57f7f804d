//! Our initiator against our target over loopback.

use iscsi::initiator::{self, InitiatorError, Session};
use iscsi::scsi::Sense;

use crate::support::{IQN, creds, initiator, pseudo_random, sha256, start_target, within};

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_chap_write_32mib_qd16_reads_back_and_lands_in_file() {
    within(120, async {
        let fx = start_target(64 * MIB as u64, Some(creds())).await;
        let mut cfg = initiator(Some(creds()));
        cfg.queue_depth = 16;
        let mut s = Session::login(fx.addr(), IQN, cfg).await.unwrap();
        let cap = s.read_capacity().await.unwrap();
        assert_eq!((cap.blocks, cap.block_size), (64 * MIB as u64 / 512, 512));

        let data = pseudo_random(32 * MIB, 7);
        let lba = 2048;
        s.write(lba, &data).await.unwrap();
        s.sync_cache().await.unwrap();
        let back = s.read(lba, (data.len() / 512) as u64).await.unwrap();
        assert!(back == data, "read-back differs");
        s.logout().await.unwrap();
        fx.handle.wait_logouts(1).await;

        let file = fx.contents();
        let start = lba as usize * 512;
        assert_eq!(sha256(&file[start..start + data.len()]), sha256(&data));
        assert!(file[..start].iter().all(|&b| b == 0), "bytes before the write changed");
        assert!(file[start + data.len()..].iter().all(|&b| b == 0), "bytes after changed");
        let stats = fx.handle.stats();
        assert_eq!((stats.logins, stats.logouts), (1, 1));
        // 16 commands of 1 MiB, each waiting for an R2T after its first burst.
        assert!(stats.max_pending_writes >= 8, "writes were not pipelined: {stats:?}");
    })
    .await;
}

#[tokio::test]
async fn test_queue_depth_one_keeps_one_write_in_flight() {
    within(60, async {
        let fx = start_target(8 * MIB as u64, None).await;
        let mut cfg = initiator(None);
        cfg.queue_depth = 1;
        let mut s = Session::login(fx.addr(), IQN, cfg).await.unwrap();
        let data = pseudo_random(4 * MIB, 3);
        s.write(0, &data).await.unwrap();
        s.logout().await.unwrap();
        assert_eq!(fx.handle.stats().max_pending_writes, 1);
        assert_eq!(sha256(&fx.contents()[..data.len()]), sha256(&data));
    })
    .await;
}

#[tokio::test]
async fn test_wrong_chap_secret_is_refused_and_nothing_written() {
    within(30, async {
        let fx = start_target(MIB as u64, Some(creds())).await;
        let mut bad = creds();
        bad.secret = "not-the-secret".into();
        let err = Session::login(fx.addr(), IQN, initiator(Some(bad))).await.unwrap_err();
        assert!(err.is_auth_failure(), "{err:?}");
        assert!(matches!(err, InitiatorError::LoginRefused { class: 2, detail: 1 }));

        // Offering no authentication at all is refused the same way.
        let err = Session::login(fx.addr(), IQN, initiator(None)).await.unwrap_err();
        assert!(err.is_auth_failure(), "{err:?}");
        let mut bad_user = creds();
        bad_user.user = "intruder".into();
        let err = Session::login(fx.addr(), IQN, initiator(Some(bad_user))).await.unwrap_err();
        assert!(err.is_auth_failure(), "{err:?}");

        assert_eq!(fx.handle.stats().logins, 0);
        assert!(fx.contents().iter().all(|&b| b == 0));
    })
    .await;
}

#[tokio::test]
async fn test_unknown_target_name_is_not_found() {
    within(30, async {
        let fx = start_target(MIB as u64, None).await;
        let err = Session::login(fx.addr(), "iqn.2026-12.io.ferric:other", initiator(None))
            .await
            .unwrap_err();
        assert!(matches!(err, InitiatorError::LoginRefused { class: 2, detail: 3 }), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn test_write_beyond_capacity_is_check_condition_and_file_unchanged() {
    within(30, async {
        let fx = start_target(MIB as u64, None).await;
        let mut s = Session::login(fx.addr(), IQN, initiator(None)).await.unwrap();
        let blocks = s.read_capacity().await.unwrap().blocks;
        let data = pseudo_random(8 * 512, 1);
        let err = s.write(blocks - 4, &data).await.unwrap_err();
        match err {
            InitiatorError::CheckCondition { sense } => assert_eq!(sense, Sense::LBA_OUT_OF_RANGE),
            other => panic!("expected CHECK CONDITION, got {other:?}"),
        }
        let err = s.read(blocks, 1).await.unwrap_err();
        assert!(matches!(err, InitiatorError::CheckCondition { sense } if sense == Sense::LBA_OUT_OF_RANGE));
        assert!(fx.contents().iter().all(|&b| b == 0), "the file changed");

        // The session is still in step: the last 4 blocks can be written.
        s.write(blocks - 4, &data[..4 * 512]).await.unwrap();
        s.logout().await.unwrap();
        let file = fx.contents();
        assert_eq!(&file[file.len() - 4 * 512..], &data[..4 * 512]);
    })
    .await;
}

#[tokio::test]
async fn test_large_write_fails_whole_pipeline_cleanly() {
    within(30, async {
        // A write running off the end in its later commands: the earlier ones land, the
        // failing one reports LBA out of range, and the session stays usable.
        let fx = start_target(4 * MIB as u64, None).await;
        let mut s = Session::login(fx.addr(), IQN, initiator(None)).await.unwrap();
        let data = pseudo_random(6 * MIB, 5);
        let err = s.write(0, &data).await.unwrap_err();
        assert!(matches!(err, InitiatorError::CheckCondition { sense } if sense == Sense::LBA_OUT_OF_RANGE));
        s.test_unit_ready().await.unwrap();
        s.logout().await.unwrap();
        assert_eq!(fx.contents().len(), 4 * MIB);
    })
    .await;
}

#[tokio::test]
async fn test_discovery_inquiry_and_sync() {
    within(30, async {
        let fx = start_target(MIB as u64, Some(creds())).await;
        let found = initiator::discover(fx.addr(), initiator(Some(creds()))).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, IQN);
        assert_eq!(found[0].addresses, vec![format!("{},1", fx.addr())]);
        // Discovery sessions are not counted as logins of the disk.
        assert_eq!(fx.handle.stats().logins, 0);

        let mut s = Session::login(fx.addr(), IQN, initiator(Some(creds()))).await.unwrap();
        s.test_unit_ready().await.unwrap();
        let inq = s.inquiry().await.unwrap();
        assert_eq!(inq[0], 0x00, "direct-access device");
        assert_eq!(&inq[8..14], b"FERRIC");
        s.sync_cache().await.unwrap();
        let p = s.params().clone();
        assert!(p.first_burst_length <= p.max_burst_length);
        assert!(!p.initial_r2t && p.immediate_data);
        s.logout().await.unwrap();
        fx.handle.wait_logouts(1).await;
    })
    .await;
}

#[tokio::test]
async fn test_shutdown_stops_serving() {
    within(30, async {
        let fx = start_target(MIB as u64, None).await;
        let addr = fx.addr();
        let s = Session::login(addr, IQN, initiator(None)).await.unwrap();
        assert!(fx.handle.shutdown(std::time::Duration::from_secs(5)).await);
        // The established session was dropped and no new one is accepted.
        assert!(s.logout().await.is_err());
        assert!(Session::login(addr, IQN, initiator(None)).await.is_err());
    })
    .await;
}

#[tokio::test]
async fn test_small_bursts_split_writes_into_r2t_sequences() {
    within(60, async {
        // Tiny limits on both sides: every 1 MiB command needs many R2Ts, each answered
        // with several Data-Out PDUs; reads come back in many Data-In sequences.
        let fx = start_target(8 * MIB as u64, Some(creds())).await;
        let mut cfg = initiator(Some(creds()));
        cfg.preferences.max_burst_length = 64 * 1024;
        cfg.preferences.first_burst_length = 16 * 1024;
        cfg.preferences.max_recv_data_segment_length = 8 * 1024;
        cfg.preferences.initial_r2t = true;
        cfg.queue_depth = 4;
        let mut s = Session::login(fx.addr(), IQN, cfg).await.unwrap();
        let p = s.params().clone();
        assert_eq!((p.max_burst_length, p.first_burst_length), (64 * 1024, 16 * 1024));
        assert!(p.initial_r2t, "InitialR2T is Yes when either side says Yes");
        assert_eq!(p.initiator_max_recv_data_segment_length, 8 * 1024);
        let data = pseudo_random(3 * MIB + 512, 13);
        s.write(7, &data).await.unwrap();
        let back = s.read(7, (data.len() / 512) as u64).await.unwrap();
        assert!(back == data, "read-back differs");
        s.logout().await.unwrap();
        assert_eq!(sha256(&fx.contents()[7 * 512..7 * 512 + data.len()]), sha256(&data));
    })
    .await;
}

#[tokio::test]
async fn test_silent_target_times_out() {
    within(30, async {
        // Accepts the connection, never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _hold = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            drop(s);
        });
        let mut cfg = initiator(None);
        cfg.timeout = std::time::Duration::from_millis(300);
        let err = Session::login(addr, IQN, cfg).await.unwrap_err();
        assert!(matches!(err, InitiatorError::Timeout { .. }), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn test_streaming_writer_accepts_odd_pieces() {
    within(60, async {
        let fx = start_target(16 * MIB as u64, None).await;
        let mut cfg = initiator(None);
        // Half of each command rides as immediate data, the rest waits for an R2T.
        cfg.max_command_bytes = 512 * 1024;
        let mut s = Session::login(fx.addr(), IQN, cfg).await.unwrap();
        let data = pseudo_random(5 * MIB, 17);
        let mut w = s.writer(100).await.unwrap();
        // Pieces that never line up with blocks or commands, as an image stream would be.
        for piece in data.chunks(12_345) {
            w.write(piece).await.unwrap();
        }
        assert_eq!(w.finish().await.unwrap(), data.len() as u64);
        assert!(fx.handle.stats().max_pending_writes > 1, "the writer did not pipeline");

        // A trailing partial block is refused, and the unsent remainder is not written.
        let mut w = s.writer(0).await.unwrap();
        w.write(&[1u8; 700]).await.unwrap();
        assert!(matches!(w.finish().await, Err(InitiatorError::InvalidRequest(_))));
        s.test_unit_ready().await.unwrap();
        s.logout().await.unwrap();

        let file = fx.contents();
        assert_eq!(sha256(&file[100 * 512..100 * 512 + data.len()]), sha256(&data));
        assert!(file[..100 * 512].iter().all(|&b| b == 0));
    })
    .await;
}
