//! Hostile and broken clients get an error packet or a clean timeout, and a concurrent good
//! transfer still completes.

use std::time::Duration;

use pxe_service::tftp::TftpSettings;
use pxe_service::tftp::packet::{self, Mode};
use sim::tftp::{self as client, FetchOptions};
use tokio::net::UdpSocket;

use crate::harness::{TftpHarness, head, recv};

const WAIT: Duration = Duration::from_secs(5);

fn rrq(name: &str, opts: &[(&str, &str)]) -> Vec<u8> {
    let opts: Vec<(String, String)> =
        opts.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect();
    packet::encode_rrq(name, Mode::Octet, &opts)
}

/// Send `pkt` from a fresh socket and return the first reply's (opcode, code/block).
async fn exchange(h: &TftpHarness, pkt: &[u8]) -> (u16, u16) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(pkt, h.addr).await.unwrap();
    let (reply, _) = recv(&s, WAIT).await.expect("no reply");
    head(&reply)
}

#[tokio::test]
async fn test_bad_requests_get_error_packets() {
    let h = TftpHarness::start(TftpSettings::default()).await;
    h.write_random("ok.bin", 3000);
    std::fs::create_dir(h.root.path().join("dir")).unwrap();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("too short", b"\x00".to_vec(), 4),
        ("unknown opcode", b"\x00\x09hello\x00".to_vec(), 4),
        ("unterminated name", b"\x00\x01ok.bin".to_vec(), 4),
        ("mail mode", b"\x00\x01ok.bin\x00mail\x00".to_vec(), 4),
        (
            "write request",
            packet::encode_rrq("x", Mode::Octet, &[])
                .iter()
                .enumerate()
                .map(|(i, b)| if i == 1 { 2 } else { *b })
                .collect(),
            2,
        ),
        ("dot-dot", rrq("../etc/passwd", &[]), 2),
        ("nested dot-dot", rrq("dir/../../x", &[]), 2),
        ("absolute", rrq("/etc/passwd", &[]), 2),
        ("directory", rrq("dir", &[]), 2),
        ("missing", rrq("nope.bin", &[]), 1),
        ("blksize too small", rrq("ok.bin", &[("blksize", "4")]), 8),
        ("blksize not a number", rrq("ok.bin", &[("blksize", "big")]), 8),
        ("stray ack", packet::encode_ack(3).to_vec(), 5),
    ];
    for (what, pkt, code) in cases {
        assert_eq!(exchange(&h, &pkt).await, (5, code), "{what}");
    }
    h.stop().await;
}

#[tokio::test]
async fn test_out_of_range_window_and_timeout_are_ignored() {
    let h = TftpHarness::start(TftpSettings::default()).await;
    let data = h.write_random("ok.bin", 3000);
    // Only ignorable options: no OACK, plain DATA 1 straight away.
    assert_eq!(
        exchange(&h, &rrq("ok.bin", &[("windowsize", "0"), ("timeout", "999")])).await,
        (3, 1)
    );
    // Oversized blksize is lowered to the maximum, not refused.
    let opts = FetchOptions { blksize: Some(65535), ..Default::default() };
    let mut got = Vec::new();
    let f =
        client::fetch_with(h.addr, "ok.bin", &opts, |b| got.extend_from_slice(b)).await.unwrap();
    assert_eq!(got, data);
    assert!(f.oack.contains(&("blksize".into(), "65464".into())), "{:?}", f.oack);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_silent_client_times_out_cleanly_while_good_transfer_completes() {
    let settings =
        TftpSettings { timeout: Duration::from_millis(200), retries: 3, ..TftpSettings::default() };
    let h = TftpHarness::start(settings).await;
    let data = h.write_random("big.bin", 4 * 1024 * 1024);

    // The silent client: asks, receives DATA 1, never acknowledges.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    silent.send_to(&rrq("big.bin", &[]), h.addr).await.unwrap();
    let good = tokio::spawn({
        let addr = h.addr;
        async move {
            let opts = FetchOptions { blksize: Some(1428), ..Default::default() };
            client::fetch(addr, "big.bin", &opts).await
        }
    });
    let mut data1 = 0;
    let started = tokio::time::Instant::now();
    while let Some((p, _)) = recv(&silent, Duration::from_secs(2)).await {
        assert_eq!(head(&p), (3, 1), "only DATA 1 retransmissions expected");
        data1 += 1;
    }
    // First send + `retries` retransmissions, then the transfer is abandoned.
    assert_eq!(data1, 4, "DATA 1 sent {data1} times");
    assert!(started.elapsed() < Duration::from_secs(5));
    let got = good.await.unwrap().unwrap();
    assert!(got == data, "good transfer content differs");
    h.stop().await;
}

#[tokio::test]
async fn test_duplicate_acks_do_not_duplicate_data() {
    // A long timeout so that any second DATA 2 could only come from the duplicate ACK.
    let settings = TftpSettings { timeout: Duration::from_secs(3), ..TftpSettings::default() };
    let h = TftpHarness::start(settings).await;
    h.write_random("ok.bin", 2000);
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(&rrq("ok.bin", &[]), h.addr).await.unwrap();
    let (p, tid) = recv(&s, WAIT).await.unwrap();
    assert_eq!(head(&p), (3, 1));
    assert_ne!(tid, h.addr, "transfer must come from a new port");
    s.send_to(&packet::encode_ack(1), tid).await.unwrap();
    s.send_to(&packet::encode_ack(1), tid).await.unwrap();
    let (p, _) = recv(&s, WAIT).await.unwrap();
    assert_eq!(head(&p), (3, 2));
    assert!(recv(&s, Duration::from_millis(500)).await.is_none(), "duplicate ACK caused a resend");
    // A non-ACK on the transfer port ends the transfer with error 4.
    s.send_to(b"\x00\x03\x00\x01junk", tid).await.unwrap();
    let (p, _) = recv(&s, WAIT).await.unwrap();
    assert_eq!(head(&p), (5, 4));
    h.stop().await;
}

#[tokio::test]
async fn test_retransmitted_request_does_not_start_second_transfer() {
    let h = TftpHarness::start(TftpSettings {
        timeout: Duration::from_secs(3),
        ..TftpSettings::default()
    })
    .await;
    h.write_random("ok.bin", 2000);
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(&rrq("ok.bin", &[]), h.addr).await.unwrap();
    s.send_to(&rrq("ok.bin", &[]), h.addr).await.unwrap();
    let (p, _) = recv(&s, WAIT).await.unwrap();
    assert_eq!(head(&p), (3, 1));
    assert!(recv(&s, Duration::from_millis(500)).await.is_none(), "second transfer started");
    h.stop().await;
}

/// With one transfer slot and no room to wait, a second client is refused "server busy" at
/// once; once the first transfer finishes, the second client's retry is served.
#[tokio::test]
async fn test_transfers_past_the_limit_are_refused_busy_then_served() {
    let h = TftpHarness::start(TftpSettings {
        max_transfers: 1,
        max_waiting: 0,
        timeout: Duration::from_secs(3),
        ..TftpSettings::default()
    })
    .await;
    let data = h.write_random("small.bin", 100);
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    a.send_to(&rrq("small.bin", &[]), h.addr).await.unwrap();
    // A's transfer runs (block 1 sent, not yet acknowledged).
    let (p, a_tid) = recv(&a, WAIT).await.unwrap();
    assert_eq!(head(&p), (3, 1));

    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    b.send_to(&rrq("small.bin", &[]), h.addr).await.unwrap();
    let (p, _) = recv(&b, WAIT).await.expect("an answer at once");
    assert_eq!(head(&p), (5, 0), "error, code 0");
    assert!(String::from_utf8_lossy(&p[4..]).contains("server busy"));

    // A acknowledges its one block: the transfer ends and frees the slot.
    a.send_to(&[0, 4, 0, 1], a_tid).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "the slot never came free");
        b.send_to(&rrq("small.bin", &[]), h.addr).await.unwrap();
        let (p, _) = recv(&b, WAIT).await.expect("an answer");
        if head(&p) == (3, 1) {
            assert_eq!(&p[4..], &data[..]);
            break;
        }
        assert_eq!(head(&p), (5, 0), "only busy while A's transfer winds down");
    }
    h.stop().await;
}
