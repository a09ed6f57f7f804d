//! A scripted target on a raw socket, for initiator behaviour our own target never
//! provokes: WRITE commands answered with UNIT ATTENTION.

use std::sync::{Arc, Mutex};

use iscsi::initiator::{InitiatorError, Session};
use iscsi::pdu::{self, Pdu, op};
use iscsi::scsi::{STATUS_CHECK_CONDITION, Sense, opcode, sense_key};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{IQN, initiator, pseudo_random, within};

const POWER_ON: Sense = Sense { key: sense_key::UNIT_ATTENTION, asc: 0x29, ascq: 0 };

/// What the scripted target saw: every WRITE as (LBA, data), in arrival order.
type Writes = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

struct Script {
    stat_sn: u32,
    exp_cmd_sn: u32,
}

impl Script {
    async fn reply(&mut self, s: &mut TcpStream, mut p: Pdu) {
        p.set_u32(24, self.stat_sn);
        self.stat_sn += 1;
        p.set_u32(28, self.exp_cmd_sn);
        p.set_u32(32, self.exp_cmd_sn + 31);
        pdu::write_pdu(s, &p).await.unwrap();
    }
}

/// Serves one session: login without negotiation (RFC defaults stay in force), READ
/// CAPACITY(16) of 1024 blocks, WRITE(16) with immediate data only, answering the first
/// `unit_attentions` writes with UNIT ATTENTION, and logout.
async fn scripted_target(listener: TcpListener, unit_attentions: usize, writes: Writes) {
    let (mut s, _) = listener.accept().await.unwrap();
    let mut sc = Script { stat_sn: 1, exp_cmd_sn: 0 };
    let mut attentions = unit_attentions;
    loop {
        let Ok(req) = pdu::read_pdu(&mut s, 1 << 20).await else { return };
        let mut r;
        match req.opcode() {
            op::LOGIN => {
                sc.exp_cmd_sn = req.u32_at(24);
                let csg = (req.flags() >> 2) & 3;
                r = Pdu::new(op::LOGIN_RESP);
                r.bhs[1] = req.flags() & 0x8f;
                r.bhs[8..14].copy_from_slice(&req.bhs[8..14]);
                r.set_itt(req.itt());
                if csg == 0 {
                    r.data = pdu::encode_text(&[("AuthMethod", "None")]);
                } else {
                    r.set_u16(14, 1);
                }
            }
            op::SCSI_CMD => {
                sc.exp_cmd_sn += 1;
                let cdb = &req.bhs[32..48];
                let lba = u64::from_be_bytes(cdb[2..10].try_into().unwrap());
                match cdb[0] {
                    opcode::SERVICE_ACTION_IN_16 => {
                        r = Pdu::new(op::DATA_IN);
                        r.bhs[1] = 0x81;
                        let mut d = vec![0u8; 32];
                        d[..8].copy_from_slice(&1023u64.to_be_bytes());
                        d[8..12].copy_from_slice(&512u32.to_be_bytes());
                        r.data = d;
                    }
                    opcode::WRITE_16 => {
                        assert!(req.final_bit(), "expected all data immediate");
                        writes.lock().unwrap().push((lba, req.data.clone()));
                        r = Pdu::new(op::SCSI_RESP);
                        r.bhs[1] = 0x80;
                        if attentions > 0 {
                            attentions -= 1;
                            r.bhs[3] = STATUS_CHECK_CONDITION;
                            r.data = vec![0, 18];
                            r.data.extend_from_slice(&POWER_ON.to_fixed());
                        }
                    }
                    other => panic!("unexpected opcode {other:#x}"),
                }
                r.set_itt(req.itt());
            }
            op::LOGOUT => {
                r = Pdu::new(op::LOGOUT_RESP);
                r.bhs[1] = 0x80;
                r.set_itt(req.itt());
                sc.reply(&mut s, r).await;
                return;
            }
            other => panic!("unexpected PDU {other:#x}"),
        }
        sc.reply(&mut s, r).await;
    }
}

async fn run(unit_attentions: usize) -> (Result<(), InitiatorError>, Vec<u8>, Writes) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let writes: Writes = Arc::default();
    let target = tokio::spawn(scripted_target(listener, unit_attentions, writes.clone()));
    let mut cfg = initiator(None);
    // Each command fits the 8 KiB default segment as immediate data: no R2T to script.
    cfg.max_command_bytes = 4096;
    cfg.queue_depth = 4;
    let mut s = Session::login(addr, IQN, cfg).await.unwrap();
    let data = pseudo_random(64 * 1024, 23);
    let res = s.write(8, &data).await;
    s.logout().await.unwrap();
    target.await.unwrap();
    (res, data, writes)
}

#[tokio::test]
async fn test_writes_answered_with_unit_attention_are_sent_again() {
    within(30, async {
        let (res, data, writes) = run(2).await;
        res.unwrap();
        let writes = writes.lock().unwrap();
        // 16 commands of 4 KiB, two of them twice.
        assert_eq!(writes.len(), 18);
        let mut disk = vec![0u8; 1024 * 512];
        for (lba, d) in writes.iter() {
            let at = *lba as usize * 512;
            disk[at..at + d.len()].copy_from_slice(d);
        }
        assert_eq!(&disk[8 * 512..8 * 512 + data.len()], &data[..]);
    })
    .await;
}

#[tokio::test]
async fn test_unit_attention_that_persists_fails_the_write() {
    within(30, async {
        let (res, _, _) = run(usize::MAX).await;
        match res {
            Err(InitiatorError::CheckCondition { sense }) => assert_eq!(sense, POWER_ON),
            other => panic!("expected UNIT ATTENTION, got {other:?}"),
        }
    })
    .await;
}
