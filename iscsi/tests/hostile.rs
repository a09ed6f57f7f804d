//! Malformed, truncated and oversized PDUs on raw sockets: the target answers with a
//! Reject or closes the connection, and keeps serving the next one.

use std::time::Duration;

use iscsi::initiator::Session;
use iscsi::pdu::{self, Pdu, op};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{INITIATOR, IQN, initiator, pseudo_random, start_target, within};

/// Reads until the target closes the connection (bounded), discarding what it sends.
async fn expect_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the target kept the connection open");
}

fn header(opcode: u8, dsl: u32) -> [u8; 48] {
    let mut h = [0u8; 48];
    h[0] = opcode;
    let b = dsl.to_be_bytes();
    h[5..8].copy_from_slice(&b[1..]);
    h
}

/// Logs in by hand (no CHAP, straight to the operational stage) on a raw stream.
async fn raw_login(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut p = Pdu::new(op::LOGIN);
    p.set_immediate();
    p.bhs[1] = 0x80 | (1 << 2) | 3;
    p.bhs[8] = 0x80;
    p.set_itt(1);
    p.set_u32(24, 10);
    p.data = pdu::encode_text(&[
        ("InitiatorName", INITIATOR),
        ("TargetName", IQN),
        ("SessionType", "Normal"),
    ]);
    pdu::write_pdu(&mut s, &p).await.unwrap();
    let r = pdu::read_pdu(&mut s, 65_536).await.unwrap();
    assert_eq!(r.opcode(), op::LOGIN_RESP);
    assert_eq!((r.bhs[36], r.bhs[37]), (0, 0), "raw login refused");
    assert_eq!(r.flags() & 0x83, 0x83, "no transit to full feature phase");
    s
}

async fn assert_still_serving(addr: std::net::SocketAddr) {
    let mut s = Session::login(addr, IQN, initiator(None)).await.unwrap();
    let data = pseudo_random(64 * 1024, 9);
    s.write(0, &data).await.unwrap();
    assert_eq!(s.read(0, 128).await.unwrap(), data);
    s.logout().await.unwrap();
}

#[tokio::test]
async fn test_absurd_length_and_truncation_close_connection() {
    within(60, async {
        let fx = start_target(1 << 20, None).await;
        let addr = fx.addr();

        // A login PDU announcing a 16 MiB data segment: refused before allocating.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&header(0x43, 0xff_ffff)).await.unwrap();
        expect_closed(&mut s).await;

        // Half a header, then silence closed by us.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&[0x43, 0x87, 0, 0, 0, 0]).await.unwrap();
        s.shutdown().await.unwrap();
        expect_closed(&mut s).await;

        // A SCSI command before login.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&header(op::SCSI_CMD, 0)).await.unwrap();
        expect_closed(&mut s).await;

        // A login with text that is not key=value.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut p = Pdu::new(op::LOGIN);
        p.bhs[1] = 0x87;
        p.data = b"garbage-without-equals\0".to_vec();
        pdu::write_pdu(&mut s, &p).await.unwrap();
        let r = pdu::read_pdu(&mut s, 65_536).await.unwrap();
        assert_eq!(r.opcode(), op::LOGIN_RESP);
        assert_eq!(r.bhs[36], 0x02, "expected an initiator-error status class");
        expect_closed(&mut s).await;

        // Random bytes, many times over.
        for seed in 0..40 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let junk = pseudo_random(48 + (seed as usize * 37) % 400, seed);
            let _ = s.write_all(&junk).await;
            let _ = s.shutdown().await;
            expect_closed(&mut s).await;
        }
        assert_still_serving(addr).await;
    })
    .await;
}

#[tokio::test]
async fn test_bad_pdus_in_full_feature_phase_are_rejected() {
    within(60, async {
        let fx = start_target(1 << 20, None).await;
        let addr = fx.addr();
        let mut s = raw_login(addr).await;

        // An opcode that does not exist: Reject "command not supported", carrying our header.
        let mut bogus = Pdu::new(0x1c);
        bogus.set_immediate();
        bogus.set_itt(77);
        pdu::write_pdu(&mut s, &bogus).await.unwrap();
        let r = pdu::read_pdu(&mut s, 65_536).await.unwrap();
        assert_eq!(r.opcode(), op::REJECT);
        assert_eq!(r.bhs[2], pdu::reject::NOT_SUPPORTED);
        assert_eq!(r.data.len(), 48);
        assert_eq!(u32::from_be_bytes([r.data[16], r.data[17], r.data[18], r.data[19]]), 77);

        // Data-Out for a task that does not exist: Reject "invalid PDU field".
        let mut d = Pdu::new(op::DATA_OUT);
        d.bhs[1] = 0x80;
        d.set_itt(12345);
        d.data = vec![0; 512];
        pdu::write_pdu(&mut s, &d).await.unwrap();
        let r = pdu::read_pdu(&mut s, 65_536).await.unwrap();
        assert_eq!(r.opcode(), op::REJECT);
        assert_eq!(r.bhs[2], pdu::reject::INVALID_FIELD);

        // An unknown SCSI opcode: CHECK CONDITION, ILLEGAL REQUEST / invalid opcode.
        let mut c = Pdu::new(op::SCSI_CMD);
        c.bhs[1] = 0x80;
        c.set_lun(1);
        c.set_itt(5);
        c.set_u32(24, 10);
        c.bhs[32] = 0xc7;
        pdu::write_pdu(&mut s, &c).await.unwrap();
        let r = pdu::read_pdu(&mut s, 65_536).await.unwrap();
        assert_eq!(r.opcode(), op::SCSI_RESP);
        assert_eq!(r.bhs[3], iscsi::scsi::STATUS_CHECK_CONDITION);
        let sense = iscsi::scsi::Sense::parse(&r.data[2..]).unwrap();
        assert_eq!(sense, iscsi::scsi::Sense::INVALID_OPCODE);
        // The window moved on by one command.
        assert_eq!(r.u32_at(28), 11);

        // A command far outside the window is ignored silently (RFC 7143 §4.2.2.1); the
        // NOP-Out after it, with the expected CmdSN, is answered.
        let mut tur = Pdu::new(op::SCSI_CMD);
        tur.bhs[1] = 0x80;
        tur.set_lun(1);
        tur.set_itt(6);
        tur.set_u32(24, 5000);
        pdu::write_pdu(&mut s, &tur).await.unwrap();
        let mut ping = Pdu::new(op::NOP_OUT);
        ping.bhs[1] = 0x80;
        ping.set_itt(7);
        ping.set_u32(20, pdu::RESERVED_TAG);
        ping.set_u32(24, 11);
        ping.data = b"ping".to_vec();
        pdu::write_pdu(&mut s, &ping).await.unwrap();
        let r = pdu::read_pdu(&mut s, 65_536).await.unwrap();
        assert_eq!((r.opcode(), r.itt()), (op::NOP_IN, 7), "{r:?}");
        assert_eq!(r.data, b"ping");
        assert_eq!(r.u32_at(28), 12);

        // A Data-Out announcing more than the negotiated segment size: connection closed.
        s.write_all(&header(op::DATA_OUT, 0x80_0000)).await.unwrap();
        expect_closed(&mut s).await;

        assert_still_serving(addr).await;
        assert_eq!(fx.handle.stats().logins, 2);
    })
    .await;
}

#[tokio::test]
async fn test_login_status_for_missing_name_and_unknown_session() {
    within(30, async {
        let fx = start_target(1 << 20, None).await;
        let login = |tsih: u16, keys: &[(&str, &str)]| {
            let mut p = Pdu::new(op::LOGIN);
            p.set_immediate();
            p.bhs[1] = 0x87;
            p.bhs[8] = 0x80;
            p.set_u16(14, tsih);
            p.data = pdu::encode_text(keys);
            p
        };
        for (p, want) in [
            // No InitiatorName: missing parameter.
            (login(0, &[("TargetName", IQN)]), (2, 7)),
            // Joining a session that does not exist.
            (login(9, &[("InitiatorName", INITIATOR), ("TargetName", IQN)]), (2, 0x0a)),
            // A digest we do not offer: initiator error.
            (
                login(
                    0,
                    &[
                        ("InitiatorName", INITIATOR),
                        ("TargetName", IQN),
                        ("HeaderDigest", "CRC32C"),
                    ],
                ),
                (2, 0),
            ),
        ] {
            let mut s = TcpStream::connect(fx.addr()).await.unwrap();
            pdu::write_pdu(&mut s, &p).await.unwrap();
            let r = pdu::read_pdu(&mut s, 65_536).await.unwrap();
            assert_eq!(r.opcode(), op::LOGIN_RESP);
            assert_eq!((r.bhs[36], r.bhs[37]), want);
            expect_closed(&mut s).await;
        }
        assert_eq!(fx.handle.stats().logins, 0);
    })
    .await;
}

#[tokio::test]
async fn test_login_text_split_over_continued_pdus() {
    within(30, async {
        let fx = start_target(1 << 20, None).await;
        let mut s = TcpStream::connect(fx.addr()).await.unwrap();
        let keys = pdu::encode_text(&[
            ("InitiatorName", INITIATOR),
            ("TargetName", IQN),
            ("SessionType", "Normal"),
            ("MaxRecvDataSegmentLength", "65536"),
        ]);
        // The text is cut mid-key: the target must join the pieces before parsing.
        let (a, b) = keys.split_at(30);
        let mut p = Pdu::new(op::LOGIN);
        p.set_immediate();
        p.bhs[8] = 0x80;
        p.bhs[1] = 0x40 | (1 << 2);
        p.data = a.to_vec();
        pdu::write_pdu(&mut s, &p).await.unwrap();
        let r = pdu::read_pdu(&mut s, 65_536).await.unwrap();
        assert_eq!((r.opcode(), r.bhs[36], r.flags() & 0x80), (op::LOGIN_RESP, 0, 0));
        assert!(r.data.is_empty());
        p.bhs[1] = 0x80 | (1 << 2) | 3;
        p.data = b.to_vec();
        pdu::write_pdu(&mut s, &p).await.unwrap();
        let r = pdu::read_pdu(&mut s, 65_536).await.unwrap();
        assert_eq!((r.bhs[36], r.bhs[37]), (0, 0));
        assert_eq!(r.flags() & 0x83, 0x83, "no transit to full feature phase");
        let text = pdu::parse_text(&r.data).unwrap();
        assert!(text.iter().any(|(k, _)| k == "MaxRecvDataSegmentLength"), "{text:?}");
        assert_eq!(fx.handle.stats().logins, 1);
    })
    .await;
}

#[tokio::test]
async fn test_solicited_data_with_wrong_datasn_ends_connection() {
    within(30, async {
        let fx = start_target(1 << 20, None).await;
        for data_sn in [0u32, 5] {
            let mut s = raw_login(fx.addr()).await;
            // WRITE(16) of 2 blocks at LBA 4, no immediate data: the target must ask.
            let mut c = Pdu::new(op::SCSI_CMD);
            c.bhs[1] = 0x80 | 0x20;
            c.set_lun(1);
            c.set_itt(3);
            c.set_u32(20, 1024);
            c.set_u32(24, 10);
            c.bhs[32..48].copy_from_slice(&iscsi::scsi::cdb::write16(4, 2));
            pdu::write_pdu(&mut s, &c).await.unwrap();
            let r2t = pdu::read_pdu(&mut s, 65_536).await.unwrap();
            assert_eq!(r2t.opcode(), op::R2T);
            assert_eq!((r2t.itt(), r2t.u32_at(40), r2t.u32_at(44)), (3, 0, 1024));
            let mut d = Pdu::new(op::DATA_OUT);
            d.bhs[1] = 0x80;
            d.set_itt(3);
            d.set_u32(20, r2t.u32_at(20));
            d.set_u32(36, data_sn);
            d.data = vec![0xab; 1024];
            pdu::write_pdu(&mut s, &d).await.unwrap();
            if data_sn == 0 {
                let r = pdu::read_pdu(&mut s, 65_536).await.unwrap();
                assert_eq!((r.opcode(), r.bhs[3]), (op::SCSI_RESP, 0));
                assert_eq!(r.u32_at(36), 1, "ExpDataSN counts the one R2T");
            } else {
                expect_closed(&mut s).await;
            }
        }
        let file = std::fs::read(&fx.path).unwrap();
        assert!(file[4 * 512..6 * 512].iter().all(|&b| b == 0xab));
    })
    .await;
}
