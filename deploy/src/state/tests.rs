//! Walks every (state, event) pair and compares [`next`] with reference §2.2, written here
//! a second time in the reference's own notation so the two encodings check each other.

use std::collections::HashMap;

use super::*;

/// Reference §2.2, verbatim rows: `from | events | targets` (events and targets paired by
/// position, separated by " / ").
const TABLE: &str = "
enroll | manage | verifying
verifying | done / fail | manageable / enroll
manageable | provide | cleaning
manageable | clean | cleaning
manageable | inspect | inspecting
manageable | adopt | adopting
inspecting | done / fail / wait | manageable / inspect failed / inspect wait
inspect wait | done / fail / abort / resume | manageable / inspect failed / inspect failed / inspecting
inspect failed | manage / inspect | manageable / inspecting
cleaning | done / fail / wait / hold / manage | available / clean failed / clean wait / clean hold / manageable
clean wait | resume / fail / abort / hold | cleaning / clean failed / clean failed / clean hold
clean hold | unhold / abort | clean wait / clean failed
clean failed | manage | manageable
available | deploy | deploying
available | manage | manageable
deploying | wait / done / fail / hold | wait call-back / active / deploy failed / deploy hold
wait call-back | resume / fail / abort / hold / delete | deploying / deploy failed / deploy failed / deploy hold / deleting
deploy hold | unhold / abort | wait call-back / deploy failed
deploy failed | rebuild / deploy / delete | deploying / deploying / deleting
active | rebuild / delete / rescue / service | deploying / deleting / rescuing / servicing
deleting | clean / fail | cleaning / error
error | rebuild / delete | deploying / deleting
adopting | done / fail | active / adopt failed
adopt failed | adopt / manage | adopting / manageable
rescuing | done / wait / fail | rescue / rescue wait / rescue failed
rescue wait | resume / fail / abort / delete | rescuing / rescue failed / rescue failed / deleting
rescue | rescue / unrescue / delete | rescuing / unrescuing / deleting
rescue failed | rescue / unrescue / delete | rescuing / unrescuing / deleting
unrescuing | done / fail | active / unrescue failed
unrescue failed | rescue / unrescue / delete | rescuing / unrescuing / deleting
servicing | done / fail / wait / hold | active / service failed / service wait / service hold
service wait | resume / fail / abort / hold / delete | servicing / service failed / service failed / service hold / deleting
service hold | service / unhold / fail / abort | servicing / service wait / service failed / service failed
service failed | service / rescue / wait / hold / delete / abort | servicing / rescuing / service wait / service hold / deleting / active
";

fn reference_table() -> HashMap<(ProvisionState, ProvisionEvent), ProvisionState> {
    let events: HashMap<&str, ProvisionEvent> =
        ALL_EVENTS.iter().map(|e| (e.as_str(), *e)).collect();
    let mut out = HashMap::new();
    for line in TABLE.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let cols: Vec<&str> = line.split(" | ").collect();
        assert_eq!(cols.len(), 3, "{line}");
        let from: ProvisionState = cols[0].parse().unwrap();
        let evs: Vec<&str> = cols[1].split(" / ").collect();
        let tos: Vec<&str> = cols[2].split(" / ").collect();
        assert_eq!(evs.len(), tos.len(), "{line}");
        for (e, t) in evs.iter().zip(tos) {
            let prev = out.insert((from, events[e]), t.parse().unwrap());
            assert!(prev.is_none(), "duplicate row for {from} {e}");
        }
    }
    out
}

#[test]
fn test_every_state_event_pair_matches_reference() {
    let table = reference_table();
    let mut allowed = 0;
    for state in ALL_STATES {
        for event in ALL_EVENTS {
            let expected = table.get(&(state, event)).copied();
            let got = next(state, event).ok();
            assert_eq!(got, expected, "{state} --{event}-->");
            if let Err(e) = next(state, event) {
                assert_eq!(e, TransitionError { state, event });
            } else {
                allowed += 1;
            }
        }
    }
    assert_eq!(allowed, table.len());
}

#[test]
fn test_state_strings_round_trip() {
    for s in ALL_STATES {
        assert_eq!(s.as_str().parse::<ProvisionState>().unwrap(), s);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<ProvisionState>(&json).unwrap(), s);
    }
    assert!("bogus".parse::<ProvisionState>().is_err());
}

#[test]
fn test_state_sets_are_consistent() {
    for s in ALL_STATES {
        // Every non-pseudo state is exactly one kind.
        if s.is_pseudo() {
            continue;
        }
        let kinds =
            [s.is_stable(), s.is_failed(), s.is_wait(), s.is_hold(), s.is_transient_working()];
        assert_eq!(kinds.iter().filter(|k| **k).count(), 1, "{s}");
        // Heartbeats act only in wait states.
        if s.heartbeat_acts() {
            assert!(s.is_wait());
        }
        // Stable states show no target; failed states keep theirs.
        assert_eq!(s.fsm_target().is_none(), s.is_stable(), "{s}");
        // No state both acts on and merely records a heartbeat.
        assert!(!(s.heartbeat_acts() && s.heartbeat_recorded()));
    }
    // Pseudo states are never reachable as a stored state.
    for s in ALL_STATES {
        for e in ALL_EVENTS {
            if let Ok(to) = next(s, e) {
                assert!(!to.is_pseudo());
            }
        }
    }
}

#[test]
fn test_api_verbs_map_to_events() {
    let (v, alias) = ApiVerb::parse("deploy").unwrap();
    assert_eq!((v, alias), (ApiVerb::Active, true));
    assert_eq!(v.min_version(alias), 73);
    assert_eq!(ApiVerb::parse("active").unwrap().0.event(), ProvisionEvent::Deploy);
    assert_eq!(ApiVerb::parse("undeploy").unwrap().0.event(), ProvisionEvent::Delete);
    assert_eq!(ApiVerb::parse("provide").unwrap().0.min_version(false), 4);
    assert!(ApiVerb::parse("fly").is_none());
    // The happy path of reference §2.5 is a sequence of allowed transitions.
    use ProvisionEvent as E;
    use ProvisionState as S;
    let mut s = S::Enroll;
    for e in [
        E::Manage,
        E::Done,
        E::Provide,
        E::Wait,
        E::Resume,
        E::Done,
        E::Deploy,
        E::Wait,
        E::Resume,
        E::Done,
        E::Delete,
        E::Clean,
        E::Wait,
        E::Resume,
        E::Done,
    ] {
        s = next(s, e).unwrap();
    }
    assert_eq!(s, S::Available);
}

#[test]
fn test_transition_error_names_state() {
    let e = next(ProvisionState::Enroll, ProvisionEvent::Deploy).unwrap_err();
    assert!(e.to_string().contains("\"enroll\""), "{e}");
}
