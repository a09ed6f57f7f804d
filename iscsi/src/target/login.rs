//! Target side of the login phase (RFC 7143 §6): identity checks, security negotiation
//! with one-way CHAP when credentials are configured, and operational negotiation.
//!
//! Failures are answered with a Login Response carrying the status class and detail the
//! RFC assigns (§11.13.5), after which the connection closes.

use rand::RngCore;

use super::Shared;
use super::conn::{Conn, ConnEnd};
use crate::chap;
use crate::params::{self, Answer, SessionParams};
use crate::pdu::{self, LOGIN_DATA_LIMIT, Pdu, op};

/// Login status: initiator error, miscellaneous.
pub const STATUS_INITIATOR_ERROR: (u8, u8) = (0x02, 0x00);
/// Login status: authentication failure.
pub const STATUS_AUTH_FAILURE: (u8, u8) = (0x02, 0x01);
/// Login status: target not found.
pub const STATUS_NOT_FOUND: (u8, u8) = (0x02, 0x03);
/// Login status: unsupported version.
pub const STATUS_UNSUPPORTED_VERSION: (u8, u8) = (0x02, 0x05);
/// Login status: missing parameter.
pub const STATUS_MISSING_PARAMETER: (u8, u8) = (0x02, 0x07);
/// Login status: session does not exist.
pub const STATUS_NO_SESSION: (u8, u8) = (0x02, 0x0a);

const STAGE_SECURITY: u8 = 0;
const STAGE_OPERATIONAL: u8 = 1;
const STAGE_FULL_FEATURE: u8 = 3;

/// What a successful login settled.
pub(super) struct LoginOutcome {
    /// The initiator's iSCSI name.
    pub initiator_name: String,
    /// A discovery session (SendTargets only).
    pub discovery: bool,
    /// The negotiated parameters.
    pub params: SessionParams,
}

enum Auth {
    /// Nothing agreed yet.
    Pending,
    /// AuthMethod=CHAP agreed; waiting for CHAP_A.
    ChapChosen,
    /// Challenge sent.
    Challenged { id: u8, challenge: [u8; 16] },
    /// Authenticated (or no authentication required).
    Done,
}

struct State {
    stage: u8,
    auth: Auth,
    first: bool,
    declared_mrdsl: bool,
    isid: [u8; 6],
    itt: u32,
    outcome: LoginOutcome,
}

/// Runs the login phase; on success the connection is in the Full Feature Phase.
pub(super) async fn login(conn: &mut Conn, shared: &Shared) -> Result<LoginOutcome, ConnEnd> {
    let wait = shared.config.login_timeout;
    let mut st = State {
        stage: STAGE_SECURITY,
        auth: if shared.config.chap.is_some() { Auth::Pending } else { Auth::Done },
        first: true,
        declared_mrdsl: false,
        isid: [0; 6],
        itt: 0,
        outcome: LoginOutcome {
            initiator_name: String::new(),
            discovery: false,
            params: SessionParams::default(),
        },
    };
    let mut text = Vec::new();
    loop {
        let req = conn.recv(LOGIN_DATA_LIMIT, wait).await?;
        if req.opcode() != op::LOGIN {
            return Err(ConnEnd::Protocol(format!("opcode {:#04x} during login", req.opcode())));
        }
        if st.first {
            st.isid.copy_from_slice(&req.bhs[8..14]);
            st.itt = req.itt();
            conn.exp_cmd_sn = req.u32_at(24);
            conn.stat_sn = req.u32_at(28);
            // Only version 0 exists; Version-min above it cannot be served.
            if req.bhs[3] > 0 {
                return refuse(conn, &st, STATUS_UNSUPPORTED_VERSION).await;
            }
            // A TSIH names an existing session to add a connection to or reinstate; with
            // one connection per session there is never one to join.
            if req.u16_at(14) != 0 {
                return refuse(conn, &st, STATUS_NO_SESSION).await;
            }
        }
        if text.len() + req.data.len() > LOGIN_DATA_LIMIT {
            return refuse(conn, &st, STATUS_INITIATOR_ERROR).await;
        }
        text.extend_from_slice(&req.data);
        let flags = req.flags();
        let (transit, cont) = (flags & 0x80 != 0, flags & 0x40 != 0);
        let (csg, nsg) = ((flags >> 2) & 3, flags & 3);
        if cont {
            // More text follows: acknowledge with an empty response in the same stage.
            let mut resp = response(&st, csg << 2);
            conn.stamp(&mut resp, true);
            conn.send(&resp).await?;
            continue;
        }
        let Ok(keys) = pdu::parse_text(&std::mem::take(&mut text)) else {
            return refuse(conn, &st, STATUS_INITIATOR_ERROR).await;
        };
        // The first request may skip security negotiation; later ones stay in step.
        let stage_ok = csg == st.stage || (st.first && csg == STAGE_OPERATIONAL);
        if !stage_ok || csg == 2 || csg == STAGE_FULL_FEATURE {
            return refuse(conn, &st, STATUS_INITIATOR_ERROR).await;
        }
        st.stage = csg;
        let mut reply: Vec<(String, String)> = Vec::new();
        if st.first {
            if let Err(status) = check_identity(&keys, shared, &mut st) {
                return refuse(conn, &st, status).await;
            }
            if !st.outcome.discovery {
                reply.push(("TargetPortalGroupTag".into(), "1".into()));
            }
            st.first = false;
        }
        let step = if st.stage == STAGE_SECURITY {
            security(&keys, shared, &mut st, &mut reply)
        } else {
            operational(&keys, shared, &mut st, &mut reply)
        };
        if let Err(status) = step {
            return refuse(conn, &st, status).await;
        }
        // Transit only once authenticated, and only forwards.
        let authed = matches!(st.auth, Auth::Done);
        let can_transit = transit && authed && nsg > st.stage && nsg != 2;
        if transit && !authed && matches!(st.auth, Auth::Pending) {
            // Asked to leave security negotiation without even choosing CHAP.
            return refuse(conn, &st, STATUS_AUTH_FAILURE).await;
        }
        let flag_bits = if can_transit { 0x80 | (st.stage << 2) | nsg } else { st.stage << 2 };
        let mut resp = response(&st, flag_bits);
        if can_transit && nsg == STAGE_FULL_FEATURE {
            // A non-zero TSIH names the new session.
            resp.set_u16(14, 1 + (rand::rng().next_u32() % 0xfffe) as u16);
        }
        resp.data = pdu::encode_text(&reply);
        conn.stamp(&mut resp, true);
        conn.send(&resp).await?;
        if can_transit {
            st.stage = nsg;
            if nsg == STAGE_FULL_FEATURE {
                st.outcome.params.finish();
                if !st.declared_mrdsl {
                    // We never declared ours, so the initiator assumes the default.
                    st.outcome.params.target_max_recv_data_segment_length = 8192;
                }
                return Ok(st.outcome);
            }
        }
    }
}

fn check_identity(
    keys: &[(String, String)],
    shared: &Shared,
    st: &mut State,
) -> Result<(), (u8, u8)> {
    let get = |k: &str| keys.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.as_str());
    st.outcome.initiator_name = get("InitiatorName").ok_or(STATUS_MISSING_PARAMETER)?.to_string();
    match get("SessionType").unwrap_or("Normal") {
        "Normal" => {
            let name = get("TargetName").ok_or(STATUS_MISSING_PARAMETER)?;
            if name != shared.config.target_name {
                return Err(STATUS_NOT_FOUND);
            }
        }
        "Discovery" => st.outcome.discovery = true,
        _ => return Err(STATUS_INITIATOR_ERROR),
    }
    Ok(())
}

fn security(
    keys: &[(String, String)],
    shared: &Shared,
    st: &mut State,
    reply: &mut Vec<(String, String)>,
) -> Result<(), (u8, u8)> {
    let mut chap_n = None;
    let mut chap_r = None;
    for (k, v) in keys {
        match k.as_str() {
            "AuthMethod" => {
                let offered: Vec<&str> = v.split(',').collect();
                let want = if shared.config.chap.is_some() { "CHAP" } else { "None" };
                if !offered.contains(&want) {
                    return Err(STATUS_AUTH_FAILURE);
                }
                reply.push((k.clone(), want.into()));
                st.auth = if want == "CHAP" { Auth::ChapChosen } else { Auth::Done };
            }
            "CHAP_A" => {
                if !matches!(st.auth, Auth::ChapChosen)
                    || !v.split(',').any(|a| a == chap::CHAP_MD5)
                {
                    return Err(STATUS_AUTH_FAILURE);
                }
                let mut rng = rand::rng();
                let mut challenge = [0u8; 16];
                rng.fill_bytes(&mut challenge);
                let id = (rng.next_u32() & 0xff) as u8;
                reply.push(("CHAP_A".into(), chap::CHAP_MD5.into()));
                reply.push(("CHAP_I".into(), id.to_string()));
                reply.push(("CHAP_C".into(), chap::encode_binary(&challenge)));
                st.auth = Auth::Challenged { id, challenge };
            }
            "CHAP_N" => chap_n = Some(v.as_str()),
            "CHAP_R" => chap_r = Some(v.as_str()),
            // Mutual CHAP (the initiator challenging us) is not offered.
            "CHAP_I" | "CHAP_C" => return Err(STATUS_AUTH_FAILURE),
            _ => answer_key(k, v, shared, st, reply)?,
        }
    }
    if chap_n.is_some() || chap_r.is_some() {
        let (Auth::Challenged { id, challenge }, Some(creds)) = (&st.auth, &shared.config.chap)
        else {
            return Err(STATUS_AUTH_FAILURE);
        };
        let got = chap_r.and_then(chap::decode_binary).ok_or(STATUS_AUTH_FAILURE)?;
        let name_ok = chap_n == Some(creds.user.as_str());
        if !(chap::verify(*id, creds.secret.as_bytes(), challenge, &got) && name_ok) {
            return Err(STATUS_AUTH_FAILURE);
        }
        st.auth = Auth::Done;
    }
    Ok(())
}

fn operational(
    keys: &[(String, String)],
    shared: &Shared,
    st: &mut State,
    reply: &mut Vec<(String, String)>,
) -> Result<(), (u8, u8)> {
    if !matches!(st.auth, Auth::Done) {
        // Credentials are configured but the initiator skipped authentication.
        return Err(STATUS_AUTH_FAILURE);
    }
    for (k, v) in keys {
        if k.starts_with("CHAP_") || k == "AuthMethod" {
            return Err(STATUS_INITIATOR_ERROR);
        }
        answer_key(k, v, shared, st, reply)?;
    }
    if !st.declared_mrdsl {
        let ours = shared.config.preferences.max_recv_data_segment_length;
        reply.push(("MaxRecvDataSegmentLength".into(), ours.to_string()));
        st.outcome.params.target_max_recv_data_segment_length = ours;
        st.declared_mrdsl = true;
    }
    Ok(())
}

fn answer_key(
    k: &str,
    v: &str,
    shared: &Shared,
    st: &mut State,
    reply: &mut Vec<(String, String)>,
) -> Result<(), (u8, u8)> {
    let p = &mut st.outcome.params;
    match params::answer(k, v, &shared.config.preferences) {
        Ok(Answer::Reply(r)) => {
            p.record(k, &r).map_err(|_| STATUS_INITIATOR_ERROR)?;
            reply.push((k.to_string(), r));
        }
        Ok(Answer::None) => {
            if k == "MaxRecvDataSegmentLength" {
                // Checked to be within 512..2^24 by `answer`.
                p.initiator_max_recv_data_segment_length = v.parse().unwrap_or(8192);
            }
        }
        Err(_) => return Err(STATUS_INITIATOR_ERROR),
    }
    Ok(())
}

fn response(st: &State, flags: u8) -> Pdu {
    let mut resp = Pdu::new(op::LOGIN_RESP);
    resp.bhs[1] = flags;
    // Version-max and Version-active are both 0.
    resp.bhs[8..14].copy_from_slice(&st.isid);
    resp.set_itt(st.itt);
    resp
}

async fn refuse<T>(conn: &mut Conn, st: &State, (class, detail): (u8, u8)) -> Result<T, ConnEnd> {
    let mut resp = response(st, st.stage << 2);
    resp.bhs[36] = class;
    resp.bhs[37] = detail;
    conn.stamp(&mut resp, true);
    conn.send(&resp).await?;
    conn.flush().await?;
    Err(ConnEnd::LoginRefused { class, detail })
}
