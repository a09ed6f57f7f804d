//! [`Metered`]: a power and management driver that times every BMC call of the driver it
//! wraps. [`crate::drivers::Drivers`] hands out only metered drivers, so every call a
//! workflow, a step or a periodic task makes is counted in one place, whatever the driver.

use std::sync::Arc;
use std::time::Instant;

use deploy::drivers::{
    BootDevice, BootDeviceInfo, BootMode, DriverError, DriverFuture, ManagementDriver, PowerDriver,
};
use deploy::indicators::{Indicator, IndicatorState};
use deploy::vmedia::{VirtualMedia, VmediaDevice};
use deploy::{Node, PowerState};

/// A driver whose BMC calls are timed (`ferric_conductor_bmc_call_duration_seconds`) and
/// whose failures are counted by kind (`ferric_conductor_bmc_call_errors_total`).
pub struct Metered<D: ?Sized>(pub Arc<D>);

/// The label of a driver error (no BMC address, no message).
fn error_label(e: &DriverError) -> &'static str {
    match e {
        DriverError::InvalidDriverInfo { .. } => "invalid_driver_info",
        DriverError::AuthFailed { .. } => "auth_failed",
        DriverError::Unreachable { .. } => "unreachable",
        DriverError::Timeout { .. } => "timeout",
        DriverError::Bmc { .. } => "bmc_error",
        DriverError::PowerStateTimeout { .. } => "power_state_timeout",
        DriverError::InvalidParameter { .. } => "invalid_parameter",
        DriverError::Unsupported { .. } => "unsupported",
    }
}

/// Time `call` as `operation` of `driver`.
fn timed<'a, T: Send + 'a>(
    driver: &'static str,
    operation: &'static str,
    call: DriverFuture<'a, T>,
) -> DriverFuture<'a, T> {
    Box::pin(async move {
        let started = Instant::now();
        let res = call.await;
        if let Some(m) = super::get() {
            m.bmc_duration
                .with_label_values(&[driver, operation])
                .observe(started.elapsed().as_secs_f64());
            if let Err(e) = &res {
                m.bmc_errors.with_label_values(&[driver, operation, error_label(e)]).inc();
            }
        }
        res
    })
}

impl<D: PowerDriver + ?Sized> PowerDriver for Metered<D> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn validate(&self, node: &Node) -> Result<(), DriverError> {
        self.0.validate(node)
    }

    fn get_power_state<'a>(&'a self, node: &'a Node) -> DriverFuture<'a, PowerState> {
        timed(self.0.name(), "get_power_state", self.0.get_power_state(node))
    }

    fn set_power_state<'a>(
        &'a self,
        node: &'a Node,
        target: PowerState,
    ) -> DriverFuture<'a, PowerState> {
        timed(self.0.name(), "set_power_state", self.0.set_power_state(node, target))
    }
}

impl<D: ManagementDriver + ?Sized> ManagementDriver for Metered<D> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn validate(&self, node: &Node) -> Result<(), DriverError> {
        self.0.validate(node)
    }

    fn set_boot_device<'a>(
        &'a self,
        node: &'a Node,
        device: BootDevice,
        persistent: bool,
    ) -> DriverFuture<'a, ()> {
        timed(self.0.name(), "set_boot_device", self.0.set_boot_device(node, device, persistent))
    }

    fn get_boot_device<'a>(&'a self, node: &'a Node) -> DriverFuture<'a, BootDeviceInfo> {
        timed(self.0.name(), "get_boot_device", self.0.get_boot_device(node))
    }

    fn supported_boot_devices<'a>(&'a self, node: &'a Node) -> DriverFuture<'a, Vec<BootDevice>> {
        timed(self.0.name(), "supported_boot_devices", self.0.supported_boot_devices(node))
    }

    fn inject_nmi<'a>(&'a self, node: &'a Node) -> DriverFuture<'a, ()> {
        timed(self.0.name(), "inject_nmi", self.0.inject_nmi(node))
    }

    fn set_boot_mode<'a>(&'a self, node: &'a Node, mode: BootMode) -> DriverFuture<'a, ()> {
        timed(self.0.name(), "set_boot_mode", self.0.set_boot_mode(node, mode))
    }

    fn set_secure_boot<'a>(&'a self, node: &'a Node, enabled: bool) -> DriverFuture<'a, ()> {
        timed(self.0.name(), "set_secure_boot", self.0.set_secure_boot(node, enabled))
    }

    fn supported_indicators<'a>(&'a self, node: &'a Node) -> DriverFuture<'a, Vec<Indicator>> {
        timed(self.0.name(), "supported_indicators", self.0.supported_indicators(node))
    }

    fn get_indicator_state<'a>(
        &'a self,
        node: &'a Node,
        component: &'a str,
        name: &'a str,
    ) -> DriverFuture<'a, IndicatorState> {
        timed(
            self.0.name(),
            "get_indicator_state",
            self.0.get_indicator_state(node, component, name),
        )
    }

    fn set_indicator_state<'a>(
        &'a self,
        node: &'a Node,
        component: &'a str,
        name: &'a str,
        state: IndicatorState,
    ) -> DriverFuture<'a, ()> {
        timed(
            self.0.name(),
            "set_indicator_state",
            self.0.set_indicator_state(node, component, name, state),
        )
    }

    fn get_virtual_media<'a>(&'a self, node: &'a Node) -> DriverFuture<'a, Vec<VirtualMedia>> {
        timed(self.0.name(), "get_virtual_media", self.0.get_virtual_media(node))
    }

    fn attach_virtual_media<'a>(
        &'a self,
        node: &'a Node,
        device: VmediaDevice,
        image_url: &'a str,
    ) -> DriverFuture<'a, ()> {
        timed(
            self.0.name(),
            "attach_virtual_media",
            self.0.attach_virtual_media(node, device, image_url),
        )
    }

    fn detach_virtual_media<'a>(
        &'a self,
        node: &'a Node,
        devices: Option<&'a [VmediaDevice]>,
    ) -> DriverFuture<'a, ()> {
        timed(self.0.name(), "detach_virtual_media", self.0.detach_virtual_media(node, devices))
    }

    fn unsupported(&self, operation: &str) -> DriverError {
        self.0.unsupported(operation)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use deploy::NodeId;

    use super::*;
    use crate::config::FakeConfig;
    use crate::drivers::fake::FakeDriver;

    #[tokio::test]
    async fn test_calls_and_failures_are_counted_by_driver_and_operation() {
        let d = Metered(Arc::new(FakeDriver::new(FakeConfig::default())));
        let n = Node::new(NodeId::new_v4(), "fake-hardware", Utc::now());
        assert_eq!(PowerDriver::name(&d), "fake");
        d.set_power_state(&n, PowerState::On).await.unwrap();
        let text = super::super::render();
        assert!(
            text.contains(
                "ferric_conductor_bmc_call_duration_seconds_count{driver=\"fake\",operation=\"set_power_state\"}"
            ),
            "{text}"
        );
        assert!(d.set_power_state(&n, PowerState::Error).await.is_err());
        let text = super::super::render();
        assert!(text.contains("ferric_conductor_bmc_call_errors_total{driver=\"fake\",error=\"unsupported\",operation=\"set_power_state\"}"), "{text}");
    }
}
