//! The `fake` power and management interfaces of `fake-hardware`: they succeed at once,
//! after an optional delay (config, or per node `driver_info.fake_power_delay` /
//! `fake_boot_delay` as seconds or `"min,max"`). The power state lives only in the database.

use std::time::Duration;

use deploy::drivers::{BootDevice, DriverError, DriverFuture, ManagementDriver, PowerDriver};
use deploy::{Node, PowerState};
use rand::Rng;
use serde_json::Value;

use crate::config::{FakeConfig, dur};

/// Both fake interfaces.
#[derive(Debug, Clone)]
pub struct FakeDriver {
    cfg: FakeConfig,
}

impl FakeDriver {
    /// A fake driver with default delays from `cfg`.
    pub fn new(cfg: FakeConfig) -> Self {
        Self { cfg }
    }
}

/// The delay of a fake action: the node's `driver_info[key]` (seconds or `"min,max"`),
/// else `default_secs`.
pub fn fake_delay(node: &Node, key: &str, default_secs: f64) -> Result<Duration, DriverError> {
    let bad = || DriverError::InvalidDriverInfo {
        message: format!("driver_info.{key} must be seconds or \"min,max\""),
    };
    let (lo, hi) = match node.driver_info.get(key) {
        None | Some(Value::Null) => (default_secs, default_secs),
        Some(Value::Number(n)) => {
            let v = n.as_f64().ok_or_else(bad)?;
            (v, v)
        }
        Some(Value::String(s)) => match s.split_once(',') {
            Some((a, b)) => (
                a.trim().parse::<f64>().map_err(|_| bad())?,
                b.trim().parse::<f64>().map_err(|_| bad())?,
            ),
            None => {
                let v = s.trim().parse::<f64>().map_err(|_| bad())?;
                (v, v)
            }
        },
        Some(_) => return Err(bad()),
    };
    if !(lo.is_finite() && hi.is_finite()) || lo < 0.0 || hi < lo || hi > 3600.0 {
        return Err(bad());
    }
    let v = if hi > lo { rand::rng().random_range(lo..=hi) } else { lo };
    Ok(dur(v))
}

async fn pause(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

impl PowerDriver for FakeDriver {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn validate(&self, node: &Node) -> Result<(), DriverError> {
        fake_delay(node, "fake_power_delay", self.cfg.power_delay_secs)?;
        fake_delay(node, "fake_boot_delay", self.cfg.boot_delay_secs)?;
        fake_delay(node, "fake_deploy_delay", self.cfg.deploy_delay_secs)?;
        Ok(())
    }

    fn get_power_state<'a>(&'a self, node: &'a Node) -> DriverFuture<'a, PowerState> {
        Box::pin(async move {
            Ok(match node.power_state {
                Some(PowerState::On) => PowerState::On,
                _ => PowerState::Off,
            })
        })
    }

    fn set_power_state<'a>(
        &'a self,
        node: &'a Node,
        target: PowerState,
    ) -> DriverFuture<'a, PowerState> {
        Box::pin(async move {
            pause(fake_delay(node, "fake_power_delay", self.cfg.power_delay_secs)?).await;
            match target {
                PowerState::On | PowerState::Rebooting | PowerState::SoftRebooting => {
                    Ok(PowerState::On)
                }
                PowerState::Off | PowerState::SoftOff => Ok(PowerState::Off),
                PowerState::Error => Err(DriverError::error_state_requested("fake")),
            }
        })
    }
}

impl ManagementDriver for FakeDriver {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn validate(&self, node: &Node) -> Result<(), DriverError> {
        PowerDriver::validate(self, node)
    }

    fn set_boot_device<'a>(
        &'a self,
        node: &'a Node,
        _device: BootDevice,
        _persistent: bool,
    ) -> DriverFuture<'a, ()> {
        Box::pin(async move {
            pause(fake_delay(node, "fake_boot_delay", self.cfg.boot_delay_secs)?).await;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deploy::NodeId;

    fn node() -> Node {
        Node::new(NodeId::new_v4(), "fake-hardware", chrono::Utc::now())
    }

    #[test]
    fn test_fake_delay_parsing() {
        let mut n = node();
        assert_eq!(fake_delay(&n, "fake_power_delay", 0.0).unwrap(), Duration::ZERO);
        n.driver_info.insert("fake_power_delay".into(), "0.1,0.2".into());
        let d = fake_delay(&n, "fake_power_delay", 0.0).unwrap();
        assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(200));
        n.driver_info.insert("fake_power_delay".into(), "nope".into());
        assert!(fake_delay(&n, "fake_power_delay", 0.0).is_err());
        n.driver_info.insert("fake_power_delay".into(), "-1".into());
        assert!(fake_delay(&n, "fake_power_delay", 0.0).is_err());
    }

    #[tokio::test]
    async fn test_fake_power_reports_target() {
        let d = FakeDriver::new(FakeConfig::default());
        let mut n = node();
        assert_eq!(d.get_power_state(&n).await.unwrap(), PowerState::Off);
        assert_eq!(d.set_power_state(&n, PowerState::Rebooting).await.unwrap(), PowerState::On);
        n.power_state = Some(PowerState::On);
        assert_eq!(d.get_power_state(&n).await.unwrap(), PowerState::On);
    }
}
