//! Initiator side of login (security with optional one-way CHAP, then operational
//! negotiation) and of discovery (a Discovery session asking SendTargets=All).

use std::net::SocketAddr;

use rand::RngCore;

use super::{InitiatorConfig, InitiatorError, Session};
use crate::chap;
use crate::params::{self, Answer};
use crate::pdu::{self, Pdu, RESERVED_TAG, op};

/// Login rounds allowed before giving up on a target that never lets us transit.
const MAX_ROUNDS: usize = 16;

/// A target found by discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredTarget {
    /// Its iSCSI name.
    pub name: String,
    /// Its portals as `address:port,tag` strings, as the target reported them.
    pub addresses: Vec<String>,
}

struct Exchange {
    isid: [u8; 6],
    itt: u32,
    tsih: u16,
}

impl Session {
    async fn login_round(
        &mut self,
        ex: &Exchange,
        stages: (u8, u8),
        transit: bool,
        keys: &[(String, String)],
    ) -> Result<(Pdu, Vec<(String, String)>), InitiatorError> {
        let (csg, nsg) = stages;
        let mut req = Pdu::new(op::LOGIN);
        req.set_immediate();
        req.bhs[1] = (csg << 2) | if transit { 0x80 | nsg } else { 0 };
        req.bhs[8..14].copy_from_slice(&ex.isid);
        req.set_u16(14, ex.tsih);
        req.set_itt(ex.itt);
        req.set_u32(24, self.cmd_sn);
        req.set_u32(28, self.exp_stat_sn);
        req.data = pdu::encode_text(keys);
        self.send(&req).await?;
        let resp = self.recv("login response").await?;
        if resp.opcode() != op::LOGIN_RESP {
            return Err(InitiatorError::Protocol(format!(
                "opcode {:#04x} during login",
                resp.opcode()
            )));
        }
        if resp.bhs[36] != 0 {
            return Err(InitiatorError::LoginRefused { class: resp.bhs[36], detail: resp.bhs[37] });
        }
        if resp.flags() & 0x40 != 0 {
            // Continued responses would only carry more keys than we ever ask for.
            return Err(InitiatorError::Protocol("multi-PDU login response".into()));
        }
        let keys = pdu::parse_text(&resp.data).map_err(InitiatorError::Protocol)?;
        Ok((resp, keys))
    }
}

/// Logs in: a Normal session to `target`, or a Discovery session when `None`.
pub(super) async fn login(
    portal: SocketAddr,
    target: Option<&str>,
    config: InitiatorConfig,
) -> Result<Session, InitiatorError> {
    let mut s = Session::open(portal, config).await?;
    let mut isid = [0u8; 6];
    rand::rng().fill_bytes(&mut isid);
    // ISID type "random" (T=10b, RFC 7143 §11.12.5).
    isid[0] = 0x80 | (isid[0] & 0x3f);
    let ex = Exchange { isid, itt: s.itt(), tsih: 0 };

    let mut keys = vec![("InitiatorName".to_string(), s.config.initiator_name.clone())];
    match target {
        Some(t) => {
            keys.push(("SessionType".into(), "Normal".into()));
            keys.push(("TargetName".into(), t.to_string()));
        }
        None => keys.push(("SessionType".into(), "Discovery".into())),
    }
    let method = if s.config.chap.is_some() { "CHAP" } else { "None" };
    keys.push(("AuthMethod".into(), method.into()));

    // Security negotiation.
    let mut stage = 0u8;
    let creds = s.config.chap.clone();
    let mut rounds = 0;
    while stage == 0 {
        rounds += 1;
        if rounds > MAX_ROUNDS {
            return Err(InitiatorError::Protocol("security negotiation does not end".into()));
        }
        // Without CHAP we may leave right away; with it, only after sending the response.
        let transit = creds.is_none() || keys.iter().any(|(k, _)| k == "CHAP_R");
        let (resp, got) = s.login_round(&ex, (0, 1), transit, &keys).await?;
        keys.clear();
        let get = |k: &str| got.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.as_str());
        if let Some(m) = get("AuthMethod")
            && m != method
        {
            return Err(InitiatorError::Protocol(format!("target chose AuthMethod={m}")));
        }
        if let Some(c) = &creds {
            match (get("CHAP_A"), get("CHAP_I"), get("CHAP_C")) {
                (Some(a), Some(id), Some(challenge)) => {
                    if a != chap::CHAP_MD5 {
                        return Err(InitiatorError::Protocol(format!("CHAP_A={a}")));
                    }
                    let id: u8 =
                        id.parse().map_err(|_| InitiatorError::Protocol(format!("CHAP_I={id}")))?;
                    let challenge = chap::decode_binary(challenge)
                        .ok_or_else(|| InitiatorError::Protocol("bad CHAP_C".into()))?;
                    let r = chap::response(id, c.secret.as_bytes(), &challenge);
                    keys.push(("CHAP_N".into(), c.user.clone()));
                    keys.push(("CHAP_R".into(), chap::encode_binary(&r)));
                }
                _ if get("AuthMethod").is_some() => {
                    keys.push(("CHAP_A".into(), chap::CHAP_MD5.into()));
                }
                _ => {}
            }
        }
        if resp.final_bit() {
            stage = resp.flags() & 3;
        }
    }

    // Operational negotiation: offer everything, answer whatever the target offers back.
    let prefs = s.config.preferences.clone();
    let mut offer = params::initiator_offer(&prefs);
    let offered: Vec<String> = offer.iter().map(|(k, _)| k.clone()).collect();
    s.params.initiator_max_recv_data_segment_length = prefs.max_recv_data_segment_length;
    let mut rounds = 0;
    let mut last = None;
    while stage == 1 {
        rounds += 1;
        if rounds > MAX_ROUNDS {
            return Err(InitiatorError::Protocol("operational negotiation does not end".into()));
        }
        let (resp, got) = s.login_round(&ex, (1, 3), true, &offer).await?;
        offer.clear();
        for (k, v) in got {
            if k == "MaxRecvDataSegmentLength" {
                s.params.target_max_recv_data_segment_length = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (512..=pdu::MAX_DATA_SEGMENT).contains(n))
                    .ok_or(params::NegotiationError { key: k, value: v })?;
            } else if offered.contains(&k) {
                s.params.record(&k, &v)?;
            } else if let Answer::Reply(r) = params::answer(&k, &v, &prefs)? {
                s.params.record(&k, &r)?;
                offer.push((k, r));
            }
        }
        if resp.final_bit() {
            stage = resp.flags() & 3;
        }
        last = Some(resp);
    }
    if stage != 3 {
        return Err(InitiatorError::Protocol(format!("login ended in stage {stage}")));
    }
    if last.is_some_and(|r| r.u16_at(14) == 0) {
        return Err(InitiatorError::Protocol("final login response without TSIH".into()));
    }
    s.params.finish();
    Ok(s)
}

/// Asks the target at `portal` for its targets (a Discovery session with
/// `SendTargets=All`), then logs out.
///
/// # Errors
/// As [`Session::login`], plus a malformed Text response.
pub async fn discover(
    portal: SocketAddr,
    config: InitiatorConfig,
) -> Result<Vec<DiscoveredTarget>, InitiatorError> {
    let mut s = login(portal, None, config).await?;
    let itt = s.itt();
    let mut ttt = RESERVED_TAG;
    let mut data = Vec::new();
    let mut first = true;
    loop {
        let mut t = Pdu::new(op::TEXT);
        t.bhs[1] = 0x80;
        t.set_itt(itt);
        t.set_u32(20, ttt);
        t.set_u32(24, s.cmd_sn);
        t.set_u32(28, s.exp_stat_sn);
        if first {
            t.data = pdu::encode_text(&[("SendTargets", "All")]);
            first = false;
        }
        s.cmd_sn = s.cmd_sn.wrapping_add(1);
        s.send(&t).await?;
        let p = loop {
            let p = s.recv("text response").await?;
            if let Some(p) = s.background(p).await? {
                break p;
            }
        };
        if p.opcode() != op::TEXT_RESP || p.itt() != itt {
            return Err(InitiatorError::Protocol("expected a Text response".into()));
        }
        if data.len() + p.data.len() > pdu::LOGIN_DATA_LIMIT {
            return Err(InitiatorError::Protocol("SendTargets answer too long".into()));
        }
        data.extend_from_slice(&p.data);
        // The C bit: more text follows; ask for it with the target's TTT.
        if p.flags() & 0x40 == 0 {
            break;
        }
        ttt = p.u32_at(20);
    }
    let mut out: Vec<DiscoveredTarget> = Vec::new();
    for (k, v) in pdu::parse_text(&data).map_err(InitiatorError::Protocol)? {
        match (k.as_str(), out.last_mut()) {
            ("TargetName", _) => out.push(DiscoveredTarget { name: v, addresses: Vec::new() }),
            ("TargetAddress", Some(t)) => t.addresses.push(v),
            _ => {}
        }
    }
    s.logout().await?;
    Ok(out)
}
