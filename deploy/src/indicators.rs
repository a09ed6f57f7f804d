//! Hardware indicators (LEDs) as Ironic's management interface exposes them (API 1.63,
//! `/v1/nodes/{ident}/management/indicators`): each belongs to a component (`system`,
//! `chassis`, `disk`, …), has a driver-chosen name unique within it, may be read-only, and
//! is in one of a few states.
//!
//! The API names one indicator `<name>@<component>` ([`IndicatorId`]); the split and its
//! error live here so the API and the drivers read it the same way. The `fake` management
//! interface's indicators ([`fake_indicators`], [`fake_indicator_state`]) are here too,
//! because the API answers them without a conductor as Ironic's `FakeManagement` does.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An indicator's state, spelled as Ironic's `indicator_states` (lower case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndicatorState {
    /// Off.
    Off,
    /// On (Redfish `Lit`).
    On,
    /// Blinking.
    Blinking,
    /// The hardware cannot tell (Redfish `Unknown`); never settable.
    Unknown,
}

impl IndicatorState {
    /// Ironic's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            IndicatorState::Off => "off",
            IndicatorState::On => "on",
            IndicatorState::Blinking => "blinking",
            IndicatorState::Unknown => "unknown",
        }
    }

    /// The states a client may ask for, in Ironic's order.
    pub const SETTABLE: [IndicatorState; 3] =
        [IndicatorState::Blinking, IndicatorState::Off, IndicatorState::On];

    /// The settable state Ironic spells `s`.
    pub fn parse_settable(s: &str) -> Option<IndicatorState> {
        IndicatorState::SETTABLE.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for IndicatorState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One indicator a management interface reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Indicator {
    /// The component it belongs to (`system`, `chassis`, `disk`).
    pub component: String,
    /// Its name within the component (Redfish: the system's or chassis' UUID).
    pub name: String,
    /// Whether its state can only be read.
    pub readonly: bool,
    /// The states it can be in.
    pub states: Vec<IndicatorState>,
}

impl Indicator {
    /// The id the API uses for it: `<name>@<component>`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.component)
    }
}

/// `<name>@<component>`, as the API's `{indicator}` path segment names an indicator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndicatorId {
    /// The indicator's name.
    pub name: String,
    /// Its component.
    pub component: String,
}

impl IndicatorId {
    /// Split at the first `@`, as Ironic's `IndicatorAtComponent` does (so a name cannot
    /// hold one, a component may).
    ///
    /// # Errors
    /// Ironic's message for an id without `@`.
    pub fn parse(s: &str) -> Result<IndicatorId, String> {
        match s.split_once('@') {
            Some((name, component)) => {
                Ok(IndicatorId { name: name.to_owned(), component: component.to_owned() })
            }
            None => Err(format!("Malformed indicator name \"{s}\"")),
        }
    }
}

/// The indicators of Ironic's `fake` management interface: a read-only chassis LED and a
/// settable system LED, in Ironic's order.
pub fn fake_indicators() -> Vec<Indicator> {
    vec![
        Indicator {
            component: "chassis".into(),
            name: "led-0".into(),
            readonly: true,
            states: vec![IndicatorState::Off, IndicatorState::On],
        },
        Indicator {
            component: "system".into(),
            name: "led".into(),
            readonly: false,
            states: IndicatorState::SETTABLE.to_vec(),
        },
    ]
}

/// What Ironic's `fake` management interface reads from an indicator: always `on`.
///
/// # Errors
/// Ironic's message naming an unknown component or indicator.
pub fn fake_indicator_state(id: &IndicatorId) -> Result<IndicatorState, String> {
    let all = fake_indicators();
    if !all.iter().any(|i| i.component == id.component) {
        return Err(format!("Invalid component {} specified.", id.component));
    }
    if !all.iter().any(|i| i.component == id.component && i.name == id.name) {
        return Err(format!("Invalid indicator {} specified.", id.name));
    }
    Ok(IndicatorState::On)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_indicator_id_splits_at_the_first_at() {
        let id = IndicatorId::parse("led@system").unwrap();
        assert_eq!((id.name.as_str(), id.component.as_str()), ("led", "system"));
        let id = IndicatorId::parse("a@b@c").unwrap();
        assert_eq!((id.name.as_str(), id.component.as_str()), ("a", "b@c"));
        assert_eq!(IndicatorId::parse("led").unwrap_err(), "Malformed indicator name \"led\"");
    }

    #[test]
    fn test_states_spelled_as_ironic() {
        assert_eq!(serde_json::to_value(IndicatorState::Blinking).unwrap(), "blinking");
        assert_eq!(IndicatorState::parse_settable("off"), Some(IndicatorState::Off));
        assert_eq!(IndicatorState::parse_settable("unknown"), None);
        assert_eq!(IndicatorState::parse_settable("ON"), None);
    }

    #[test]
    fn test_fake_indicators() {
        let ids: Vec<String> = fake_indicators().iter().map(Indicator::id).collect();
        assert_eq!(ids, ["led-0@chassis", "led@system"]);
        let on = fake_indicator_state(&IndicatorId::parse("led-0@chassis").unwrap());
        assert_eq!(on, Ok(IndicatorState::On));
        let e = fake_indicator_state(&IndicatorId::parse("led@disk").unwrap()).unwrap_err();
        assert_eq!(e, "Invalid component disk specified.");
        let e = fake_indicator_state(&IndicatorId::parse("led-0@system").unwrap()).unwrap_err();
        assert_eq!(e, "Invalid indicator led-0 specified.");
    }
}
