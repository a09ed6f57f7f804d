//! Indicator LEDs over Redfish, as Ironic's redfish management reads them
//! (`get_supported_indicators`, `get_indicator_state`, `set_indicator_state`): the
//! `IndicatorLED` of the system and of each chassis it links to, named by the resource's
//! `UUID`; `Lit`, `Blinking` and `Off` are Ironic's `on`, `blinking` and `off`.
//!
//! Drive indicators (Ironic's `disk` component, `<storage>:<drive>` names) are not read.

use deploy::Node;
use deploy::drivers::DriverError;
use deploy::indicators::{Indicator, IndicatorState};
use reqwest::Method;
use serde_json::{Value, json};

use super::{RedfishDriver, Target};

/// Every indicator Ironic's redfish driver reports is settable to these.
fn properties(component: &str, name: &str) -> Indicator {
    Indicator {
        component: component.into(),
        name: name.into(),
        readonly: false,
        states: IndicatorState::SETTABLE.to_vec(),
    }
}

/// Redfish `IndicatorLED` → Ironic's state; a value Redfish does not define is `unknown`.
fn from_led(led: &str) -> IndicatorState {
    match led {
        "Lit" => IndicatorState::On,
        "Blinking" => IndicatorState::Blinking,
        "Off" => IndicatorState::Off,
        _ => IndicatorState::Unknown,
    }
}

fn to_led(state: IndicatorState) -> Option<&'static str> {
    match state {
        IndicatorState::On => Some("Lit"),
        IndicatorState::Blinking => Some("Blinking"),
        IndicatorState::Off => Some("Off"),
        IndicatorState::Unknown => None,
    }
}

fn led(resource: &Value) -> Option<&str> {
    resource.get("IndicatorLED").and_then(Value::as_str)
}

fn uuid(resource: &Value) -> Option<&str> {
    resource.get("UUID").and_then(Value::as_str)
}

impl RedfishDriver {
    /// The chassis the system links to, each with its path; one that cannot be read is
    /// skipped, as Ironic skips a chassis sushy fails on.
    async fn linked_chassis(&self, t: &Target, sys: &Value) -> Vec<(String, Value)> {
        let paths: Vec<String> = sys
            .pointer("/Links/Chassis")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.get("@odata.id").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let mut out = Vec::new();
        for p in paths {
            match self.request(t, Method::GET, &p, None).await {
                Ok(c) => out.push((p, c)),
                Err(e) => {
                    tracing::debug!(bmc = %t.base, chassis = %p, error = %e,
                        "chassis indicator not available");
                }
            }
        }
        out
    }

    pub(super) async fn indicators(&self, node: &Node) -> Result<Vec<Indicator>, DriverError> {
        let t = Self::target(node)?;
        let system = self.system_path(&t).await?;
        let sys = self.request(&t, Method::GET, &system, None).await?;
        let mut out = Vec::new();
        for (_, c) in self.linked_chassis(&t, &sys).await {
            if let (Some(_), Some(id)) = (led(&c), uuid(&c)) {
                out.push(properties("chassis", id));
            }
        }
        if let (Some(_), Some(id)) = (led(&sys), uuid(&sys)) {
            out.push(properties("system", id));
        }
        Ok(out)
    }

    /// The path and current body of the resource carrying indicator `name` of `component`.
    async fn indicator_resource(
        &self,
        node: &Node,
        t: &Target,
        component: &str,
        name: &str,
    ) -> Result<(String, Value), DriverError> {
        let system = self.system_path(t).await?;
        let sys = self.request(t, Method::GET, &system, None).await?;
        match component {
            "system" if uuid(&sys) == Some(name) => return Ok((system, sys)),
            "chassis" => {
                let found = self
                    .linked_chassis(t, &sys)
                    .await
                    .into_iter()
                    .find(|(_, c)| uuid(c) == Some(name));
                if let Some(found) = found {
                    return Ok(found);
                }
            }
            _ => {}
        }
        Err(DriverError::InvalidParameter {
            message: format!(
                "Unknown indicator {name} for component {component} of node {}",
                node.uuid
            ),
        })
    }

    pub(super) async fn indicator_state(
        &self,
        node: &Node,
        component: &str,
        name: &str,
    ) -> Result<IndicatorState, DriverError> {
        let t = Self::target(node)?;
        let (_, res) = self.indicator_resource(node, &t, component, name).await?;
        Ok(led(&res).map_or(IndicatorState::Unknown, from_led))
    }

    pub(super) async fn set_indicator(
        &self,
        node: &Node,
        component: &str,
        name: &str,
        state: IndicatorState,
    ) -> Result<(), DriverError> {
        let Some(value) = to_led(state) else {
            return Err(DriverError::InvalidParameter {
                message: format!("Indicator state {state} cannot be set"),
            });
        };
        let t = Self::target(node)?;
        let (path, _) = self.indicator_resource(node, &t, component, name).await?;
        let body = json!({ "IndicatorLED": value });
        self.request(&t, Method::PATCH, &path, Some(&body)).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_led_states_map_both_ways() {
        for s in IndicatorState::SETTABLE {
            assert_eq!(to_led(s).map(from_led), Some(s));
        }
        assert_eq!(from_led("Unknown"), IndicatorState::Unknown);
        assert_eq!(to_led(IndicatorState::Unknown), None);
    }
}
