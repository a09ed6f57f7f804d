//! The typed commands the workflows send to ironic-python-agent (reference §4.5), with the
//! calling style Ironic uses for each (§4.6): listing steps, syncing, partition UUIDs and
//! system logs wait for the answer; running a step, writing an image, installing the
//! bootloader and powering off return at once and are picked up later (on the next
//! heartbeat, or by [`IpaClient::wait_for`]).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{CommandResult, IpaClient, IpaError, ManagerVersions};

/// Which step family a call is about; IPA names its commands and result keys after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// `clean.*_clean_step(s)`.
    Clean,
    /// `deploy.*_deploy_step(s)`.
    Deploy,
    /// `service.*_service_step(s)`.
    Service,
}

impl StepKind {
    /// The extension and the word in its command and key names.
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Clean => "clean",
            StepKind::Deploy => "deploy",
            StepKind::Service => "service",
        }
    }
}

/// One step as the agent offers it, and as it is sent back to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpaStep {
    /// The hardware-manager method (`erase_devices_metadata`).
    pub step: String,
    /// The agent's priority; 0 runs only when asked for.
    #[serde(default)]
    pub priority: i64,
    /// The Ironic interface the step belongs to (`deploy`, `raid`, …).
    pub interface: String,
    /// The node must reboot after the step.
    #[serde(default)]
    pub reboot_requested: bool,
    /// The step may be aborted.
    #[serde(default)]
    pub abortable: bool,
    /// The arguments the step takes (name → `{"description", "required"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argsinfo: Option<Value>,
    /// The arguments to run it with (sent only when running it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Map<String, Value>>,
    /// Anything else the agent or a hardware manager put in the step, kept as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The agent's answer to `get_<kind>_steps`.
#[derive(Debug, Clone, PartialEq)]
pub struct Steps {
    /// Steps per hardware manager (after the agent's own de-duplication).
    pub by_manager: std::collections::BTreeMap<String, Vec<IpaStep>>,
    /// The managers' versions, to pass back with every step of this run.
    pub hardware_manager_version: ManagerVersions,
}

impl Steps {
    /// Every step, whichever manager offers it.
    pub fn all(&self) -> impl Iterator<Item = (&str, &IpaStep)> {
        self.by_manager.iter().flat_map(|(m, steps)| steps.iter().map(move |s| (m.as_str(), s)))
    }

    /// The step named `interface.step`, if offered.
    pub fn find(&self, interface: &str, step: &str) -> Option<&IpaStep> {
        self.all().map(|(_, s)| s).find(|s| s.interface == interface && s.step == step)
    }
}

/// `standby.get_partition_uuids`: what the image write left (empty before any).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionUuids {
    /// The root partition's UUID (partition images) or the disk identifier (whole disks).
    #[serde(rename = "root uuid", default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// The EFI system partition's UUID.
    #[serde(
        rename = "efi system partition uuid",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub efi_system_partition: Option<String>,
    /// The PReP boot partition's UUID (ppc64).
    #[serde(rename = "PReP Boot partition uuid", default, skip_serializing_if = "Option::is_none")]
    pub prep_boot_partition: Option<String>,
    /// Partition name → UUID, when the agent reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<Map<String, Value>>,
}

/// The boot mode the bootloader is installed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetBootMode {
    /// Legacy BIOS.
    Bios,
    /// UEFI.
    Uefi,
}

/// `image.install_bootloader`'s parameters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstallBootloader {
    /// The root partition's UUID.
    pub root_uuid: String,
    /// The EFI system partition's UUID (UEFI).
    pub efi_system_part_uuid: Option<String>,
    /// The PReP boot partition's UUID (ppc64).
    pub prep_boot_part_uuid: Option<String>,
    /// The boot mode.
    pub target_boot_mode: TargetBootMode,
    /// Go on when the bootloader cannot be installed (the image brings its own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignore_bootloader_failure: Option<bool>,
}

impl CommandResult {
    /// For a finished `execute_<kind>_step`: the step the agent reports having run
    /// (`<kind>_step`) and its result (`<kind>_result`). Heartbeat processing compares the
    /// step with the node's current one before moving on.
    pub fn executed_step(&self, kind: StepKind) -> (Option<IpaStep>, Option<&Value>) {
        let result = self.command_result.as_ref();
        let key = |suffix: &str| format!("{}_{suffix}", kind.as_str());
        let step = result
            .and_then(|r| r.get(key("step")))
            .and_then(|s| serde_json::from_value(s.clone()).ok());
        (step, result.and_then(|r| r.get(key("result"))).filter(|v| !v.is_null()))
    }
}

impl IpaClient {
    /// The steps the agent offers for `kind` (`<kind>.get_<kind>_steps`, waited for).
    /// `node` is the node as Ironic hands it to the agent (its `as_dict`, secrets masked),
    /// `ports` its ports; the agent's hardware managers may read both.
    ///
    /// # Errors
    /// [`IpaError::CommandFailed`] when the agent cannot list them; as
    /// [`IpaClient::command`] otherwise; [`IpaError::InvalidResponse`] for a result that is
    /// no step list.
    pub async fn get_steps(
        &self,
        kind: StepKind,
        node: &Value,
        ports: &[Value],
    ) -> Result<Steps, IpaError> {
        let k = kind.as_str();
        let name = format!("{k}.get_{k}_steps");
        let params = json!({"node": node, "ports": ports});
        let done = self.command(&name, params, true).await?.into_succeeded()?;
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            hardware_manager_version: ManagerVersions,
            #[serde(flatten)]
            rest: Map<String, Value>,
        }
        let invalid = |detail: String| IpaError::InvalidResponse {
            url: self.url().to_owned(),
            call: name.clone(),
            detail,
        };
        let raw: Raw = serde_json::from_value(done.command_result.unwrap_or(Value::Null))
            .map_err(|e| invalid(e.to_string()))?;
        let steps = raw.rest.get(&format!("{k}_steps")).cloned().unwrap_or(Value::Null);
        let by_manager =
            serde_json::from_value(steps).map_err(|e| invalid(format!("{k}_steps: {e}")))?;
        Ok(Steps { by_manager, hardware_manager_version: raw.hardware_manager_version })
    }

    /// Start one step (`<kind>.execute_<kind>_step`, not waited for: the agent answers
    /// `RUNNING` and reports the end on the command list). `versions` is what
    /// [`Self::get_steps`] returned for this run, so the agent can refuse to run a step
    /// of managers that changed since ([`super::CommandStatus::VersionMismatch`]).
    ///
    /// # Errors
    /// As [`IpaClient::command`]; a step the agent refuses before running it (bad
    /// arguments) is [`IpaError::Rejected`].
    pub async fn execute_step(
        &self,
        kind: StepKind,
        step: &IpaStep,
        node: &Value,
        ports: &[Value],
        versions: Option<&ManagerVersions>,
    ) -> Result<CommandResult, IpaError> {
        let k = kind.as_str();
        let mut params = json!({"step": step, "node": node, "ports": ports});
        params[format!("{k}_version")] = json!(versions);
        self.command(&format!("{k}.execute_{k}_step"), params, false).await
    }

    /// [`Self::get_steps`] for cleaning.
    ///
    /// # Errors
    /// As [`Self::get_steps`].
    pub async fn get_clean_steps(&self, node: &Value, ports: &[Value]) -> Result<Steps, IpaError> {
        self.get_steps(StepKind::Clean, node, ports).await
    }

    /// [`Self::execute_step`] for cleaning.
    ///
    /// # Errors
    /// As [`Self::execute_step`].
    pub async fn execute_clean_step(
        &self,
        step: &IpaStep,
        node: &Value,
        ports: &[Value],
        versions: Option<&ManagerVersions>,
    ) -> Result<CommandResult, IpaError> {
        self.execute_step(StepKind::Clean, step, node, ports, versions).await
    }

    /// [`Self::get_steps`] for deploying.
    ///
    /// # Errors
    /// As [`Self::get_steps`].
    pub async fn get_deploy_steps(&self, node: &Value, ports: &[Value]) -> Result<Steps, IpaError> {
        self.get_steps(StepKind::Deploy, node, ports).await
    }

    /// [`Self::execute_step`] for deploying (IPA's `write_image` deploy step included).
    ///
    /// # Errors
    /// As [`Self::execute_step`].
    pub async fn execute_deploy_step(
        &self,
        step: &IpaStep,
        node: &Value,
        ports: &[Value],
        versions: Option<&ManagerVersions>,
    ) -> Result<CommandResult, IpaError> {
        self.execute_step(StepKind::Deploy, step, node, ports, versions).await
    }

    /// `standby.prepare_image` (agents without the `write_image` deploy step): start
    /// writing `image_info` (reference §4.9) and the optional config drive.
    ///
    /// # Errors
    /// As [`IpaClient::command`].
    pub async fn prepare_image(
        &self,
        image_info: &Value,
        configdrive: Option<&str>,
    ) -> Result<CommandResult, IpaError> {
        let params = json!({"image_info": image_info, "configdrive": configdrive});
        self.command("standby.prepare_image", params, false).await
    }

    /// `standby.get_partition_uuids` (waited for).
    ///
    /// # Errors
    /// As [`IpaClient::command`]; [`IpaError::CommandFailed`] when the agent fails it.
    pub async fn get_partition_uuids(&self) -> Result<PartitionUuids, IpaError> {
        const NAME: &str = "standby.get_partition_uuids";
        let done = self.command(NAME, json!({}), true).await?.into_succeeded()?;
        let result = done.command_result.unwrap_or_else(|| json!({}));
        serde_json::from_value(result).map_err(|e| IpaError::InvalidResponse {
            url: self.url().to_owned(),
            call: NAME.into(),
            detail: e.to_string(),
        })
    }

    /// Start `image.install_bootloader`; wait for it with [`IpaClient::wait_for`] (it runs
    /// for minutes on real hardware).
    ///
    /// # Errors
    /// As [`IpaClient::command`].
    pub async fn install_bootloader(
        &self,
        params: &InstallBootloader,
    ) -> Result<CommandResult, IpaError> {
        let params = serde_json::to_value(params)
            .map_err(|e| IpaError::NotConfigured(format!("install_bootloader parameters: {e}")))?;
        self.command("image.install_bootloader", params, false).await
    }

    /// `standby.sync`: flush the ramdisk's buffers to disk (waited for).
    ///
    /// # Errors
    /// As [`IpaClient::command`]; [`IpaError::CommandFailed`] when the agent fails it.
    pub async fn sync(&self) -> Result<CommandResult, IpaError> {
        self.command("standby.sync", json!({}), true).await?.into_succeeded()
    }

    /// Start `standby.power_off`: the ramdisk shuts the machine down.
    ///
    /// # Errors
    /// As [`IpaClient::command`].
    pub async fn power_off(&self) -> Result<CommandResult, IpaError> {
        self.command("standby.power_off", json!({}), false).await
    }

    /// Start `standby.run_image`: the ramdisk reboots the machine (Ironic's agent reboot).
    ///
    /// # Errors
    /// As [`IpaClient::command`].
    pub async fn reboot(&self) -> Result<CommandResult, IpaError> {
        self.command("standby.run_image", json!({}), false).await
    }

    /// `rescue.finalize_rescue` with the crypt(3) hash of the rescue password: the agent
    /// sets it and stops.
    ///
    /// # Errors
    /// As [`IpaClient::command`]; [`IpaError::CommandFailed`] when the agent fails it.
    pub async fn finalize_rescue(&self, hashed_password: &str) -> Result<CommandResult, IpaError> {
        let params = json!({"rescue_password": hashed_password, "hashed": true});
        self.command("rescue.finalize_rescue", params, false).await?.into_succeeded()
    }

    /// `log.collect_system_logs` (waited for): the ramdisk's logs as the agent sends them,
    /// base64 of a gzipped tar, which is what Ironic stores.
    ///
    /// # Errors
    /// As [`IpaClient::command`]; [`IpaError::CommandFailed`] when the agent fails it;
    /// [`IpaError::InvalidResponse`] without `system_logs`.
    pub async fn collect_system_logs(&self) -> Result<String, IpaError> {
        const NAME: &str = "log.collect_system_logs";
        let done = self.command(NAME, json!({}), true).await?.into_succeeded()?;
        done.command_result
            .as_ref()
            .and_then(|r| r.get("system_logs"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| IpaError::InvalidResponse {
                url: self.url().to_owned(),
                call: NAME.into(),
                detail: "no system_logs in the result".into(),
            })
    }
}
