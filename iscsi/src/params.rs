//! Login key negotiation (RFC 7143 §6.2 and §13), shared by target and initiator so that
//! both sides apply the same rule: whoever receives an offer answers it with [`answer`], and
//! both record the outcome with [`SessionParams::record`].
//!
//! Only what this crate implements can be agreed: no digests, one connection,
//! ErrorRecoveryLevel 0, in-order data. Anything else is answered with the value that keeps
//! us inside that subset, or `NotUnderstood`/`Irrelevant` as the RFC prescribes.

/// The operational parameters in force for a session once login completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    /// Largest data segment the target accepts (declared by the target).
    pub target_max_recv_data_segment_length: u32,
    /// Largest data segment the initiator accepts (declared by the initiator).
    pub initiator_max_recv_data_segment_length: u32,
    /// Largest solicited (or unsolicited) burst of Data-Out / Data-In sequence.
    pub max_burst_length: u32,
    /// Largest amount of unsolicited data per command.
    pub first_burst_length: u32,
    /// Whether the initiator must wait for R2T before sending (non-immediate) data.
    pub initial_r2t: bool,
    /// Whether data may ride in the SCSI Command PDU.
    pub immediate_data: bool,
    /// R2Ts that may be outstanding per task.
    pub max_outstanding_r2t: u32,
}

impl Default for SessionParams {
    /// The RFC 7143 defaults, in force for any key that was not negotiated.
    fn default() -> Self {
        Self {
            target_max_recv_data_segment_length: 8192,
            initiator_max_recv_data_segment_length: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            initial_r2t: true,
            immediate_data: true,
            max_outstanding_r2t: 1,
        }
    }
}

/// One side's wishes for the operational keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preferences {
    /// MaxRecvDataSegmentLength this side declares.
    pub max_recv_data_segment_length: u32,
    /// MaxBurstLength this side offers (the result is the minimum).
    pub max_burst_length: u32,
    /// FirstBurstLength this side offers (the result is the minimum).
    pub first_burst_length: u32,
    /// InitialR2T this side wants (the result is Yes if either side says Yes).
    pub initial_r2t: bool,
    /// ImmediateData this side wants (the result is Yes only if both say Yes).
    pub immediate_data: bool,
}

impl Default for Preferences {
    fn default() -> Self {
        Self {
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1_048_576,
            first_burst_length: 262_144,
            initial_r2t: false,
            immediate_data: true,
        }
    }
}

/// Why a key could not be agreed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot agree on {key}={value}")]
pub struct NegotiationError {
    /// The key.
    pub key: String,
    /// The offending value.
    pub value: String,
}

/// How to answer an offered key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Send `key=value` back; `value` is also the outcome.
    Reply(String),
    /// Declarative key: nothing to send back.
    None,
}

fn yes_no(v: bool) -> String {
    if v { "Yes".into() } else { "No".into() }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn parse_num(key: &str, v: &str, lo: u32, hi: u32) -> Result<u32, NegotiationError> {
    v.parse::<u32>()
        .ok()
        .filter(|n| (lo..=hi).contains(n))
        .ok_or_else(|| NegotiationError { key: key.into(), value: v.into() })
}

/// Largest value of the length keys (2^24 - 1).
const MAX_LEN: u32 = 16_777_215;

/// The answer to `key=offered` given our `prefs`, for the operational keys and the
/// security keys that are plain declarations. Session-identity and authentication keys
/// (`TargetName`, `AuthMethod`, `CHAP_*`, ...) are handled by the login code, not here.
///
/// # Errors
/// When the offer cannot be agreed (a digest list without `None`, out-of-range numbers),
/// so login must fail.
pub fn answer(key: &str, offered: &str, prefs: &Preferences) -> Result<Answer, NegotiationError> {
    let err = || NegotiationError { key: key.into(), value: offered.into() };
    let reply = |v: String| Ok(Answer::Reply(v));
    match key {
        "HeaderDigest" | "DataDigest" => {
            if offered.split(',').any(|v| v == "None") {
                reply("None".into())
            } else {
                Err(err())
            }
        }
        "MaxConnections" => {
            parse_num(key, offered, 1, 65_535)?;
            reply("1".into())
        }
        "ErrorRecoveryLevel" => {
            parse_num(key, offered, 0, 2)?;
            reply("0".into())
        }
        "MaxBurstLength" => {
            let n = parse_num(key, offered, 512, MAX_LEN)?;
            reply(n.min(prefs.max_burst_length).to_string())
        }
        "FirstBurstLength" => {
            let n = parse_num(key, offered, 512, MAX_LEN)?;
            reply(n.min(prefs.first_burst_length).min(prefs.max_burst_length).to_string())
        }
        "MaxOutstandingR2T" => {
            parse_num(key, offered, 1, 65_535)?;
            reply("1".into())
        }
        "InitialR2T" => reply(yes_no(parse_bool(offered).ok_or_else(err)? || prefs.initial_r2t)),
        "ImmediateData" => {
            reply(yes_no(parse_bool(offered).ok_or_else(err)? && prefs.immediate_data))
        }
        // In-order delivery is all we implement; OR semantics let us insist on Yes.
        "DataPDUInOrder" | "DataSequenceInOrder" => {
            parse_bool(offered).ok_or_else(err)?;
            reply("Yes".into())
        }
        "DefaultTime2Wait" => reply(parse_num(key, offered, 0, 3600)?.to_string()),
        "DefaultTime2Retain" => {
            parse_num(key, offered, 0, 3600)?;
            reply("0".into())
        }
        // RFC 3720 markers (removed in 7143): AND semantics, so No.
        "IFMarker" | "OFMarker" => reply("No".into()),
        "IFMarkInt" | "OFMarkInt" => reply("Irrelevant".into()),
        "TaskReporting" => reply("RFC3720".into()),
        "iSCSIProtocolLevel" => reply(parse_num(key, offered, 0, 31)?.min(1).to_string()),
        "MaxRecvDataSegmentLength" => {
            parse_num(key, offered, 512, MAX_LEN)?;
            Ok(Answer::None)
        }
        "InitiatorName"
        | "InitiatorAlias"
        | "TargetName"
        | "TargetAlias"
        | "SessionType"
        | "TargetPortalGroupTag"
        | "TargetAddress" => Ok(Answer::None),
        _ => reply("NotUnderstood".into()),
    }
}

impl SessionParams {
    /// Records the outcome `key=value` of a negotiated key (answers like `NotUnderstood`
    /// leave the default in force). `MaxRecvDataSegmentLength` is declarative and is stored
    /// by the caller, which knows who declared it.
    ///
    /// # Errors
    /// When the outcome is malformed.
    pub fn record(&mut self, key: &str, value: &str) -> Result<(), NegotiationError> {
        if matches!(value, "NotUnderstood" | "Irrelevant" | "Reject") {
            return Ok(());
        }
        let err = || NegotiationError { key: key.into(), value: value.into() };
        match key {
            "MaxBurstLength" => self.max_burst_length = parse_num(key, value, 512, MAX_LEN)?,
            "FirstBurstLength" => self.first_burst_length = parse_num(key, value, 512, MAX_LEN)?,
            "InitialR2T" => self.initial_r2t = parse_bool(value).ok_or_else(err)?,
            "ImmediateData" => self.immediate_data = parse_bool(value).ok_or_else(err)?,
            "MaxOutstandingR2T" => {
                self.max_outstanding_r2t = parse_num(key, value, 1, 65_535)?;
            }
            "HeaderDigest" | "DataDigest" if value != "None" => return Err(err()),
            "ErrorRecoveryLevel" if value != "0" => return Err(err()),
            "MaxConnections" if value != "1" => return Err(err()),
            "DataPDUInOrder" | "DataSequenceInOrder" if value != "Yes" => return Err(err()),
            _ => {}
        }
        Ok(())
    }

    /// Enforces FirstBurstLength ≤ MaxBurstLength once every key is in.
    pub fn finish(&mut self) {
        self.first_burst_length = self.first_burst_length.min(self.max_burst_length);
    }
}

/// The operational keys an initiator offers, from its preferences.
pub fn initiator_offer(prefs: &Preferences) -> Vec<(String, String)> {
    [
        ("HeaderDigest", "None".to_string()),
        ("DataDigest", "None".to_string()),
        ("MaxRecvDataSegmentLength", prefs.max_recv_data_segment_length.to_string()),
        ("MaxBurstLength", prefs.max_burst_length.to_string()),
        ("FirstBurstLength", prefs.first_burst_length.to_string()),
        ("InitialR2T", yes_no(prefs.initial_r2t)),
        ("ImmediateData", yes_no(prefs.immediate_data)),
        ("MaxOutstandingR2T", "1".to_string()),
        ("DataPDUInOrder", "Yes".to_string()),
        ("DataSequenceInOrder", "Yes".to_string()),
        ("ErrorRecoveryLevel", "0".to_string()),
        ("MaxConnections", "1".to_string()),
        ("DefaultTime2Wait", "2".to_string()),
        ("DefaultTime2Retain", "0".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]
    use super::*;

    #[test]
    fn test_answers_follow_rfc_semantics() {
        let p = Preferences { max_burst_length: 4096, ..Preferences::default() };
        let r = |k, v| answer(k, v, &p).unwrap();
        assert_eq!(r("HeaderDigest", "CRC32C,None"), Answer::Reply("None".into()));
        assert!(answer("HeaderDigest", "CRC32C", &p).is_err());
        assert_eq!(r("MaxBurstLength", "262144"), Answer::Reply("4096".into()));
        assert_eq!(r("FirstBurstLength", "65536"), Answer::Reply("4096".into()));
        assert_eq!(r("InitialR2T", "Yes"), Answer::Reply("Yes".into()));
        assert_eq!(r("InitialR2T", "No"), Answer::Reply("No".into()));
        assert_eq!(r("ImmediateData", "No"), Answer::Reply("No".into()));
        assert_eq!(r("ErrorRecoveryLevel", "2"), Answer::Reply("0".into()));
        assert_eq!(r("MaxConnections", "8"), Answer::Reply("1".into()));
        assert_eq!(r("X-com.example.Foo", "1"), Answer::Reply("NotUnderstood".into()));
        assert_eq!(r("MaxRecvDataSegmentLength", "65536"), Answer::None);
        assert!(answer("MaxBurstLength", "12", &p).is_err());
        assert!(answer("MaxBurstLength", "99999999999", &p).is_err());
    }

    #[test]
    fn test_record_keeps_defaults_for_non_answers() {
        let mut s = SessionParams::default();
        s.record("MaxBurstLength", "4096").unwrap();
        s.record("FirstBurstLength", "NotUnderstood").unwrap();
        s.record("InitialR2T", "No").unwrap();
        s.finish();
        assert_eq!(s.max_burst_length, 4096);
        assert_eq!(s.first_burst_length, 4096);
        assert!(!s.initial_r2t);
        assert!(s.record("ErrorRecoveryLevel", "1").is_err());
        assert!(s.record("DataDigest", "CRC32C").is_err());
    }
}
