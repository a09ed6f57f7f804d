"""A test hardware manager for ironic-python-agent.

Everything it reports comes from the JSON file named by ``FERRIC_TEST_HWM_CONFIG``:

    {"device": "/path/to/disk.img", "size": 1073741824,
     "interface": "veth-name", "mac": "aa:bb:cc:dd:ee:ff", "ipv4": "10.0.0.2",
     "report": "/path/to/report.json", "gate": "/path/to/released",
     "steps_log": "/path/to/steps.jsonl"}

It ranks above the generic manager (``SERVICE_PROVIDER`` > ``GENERIC``), so every call the
agent dispatches to "the best manager" ends here, and it answers the whole inventory itself
(no lshw, lsblk, dmidecode or ipmitool). Each time it lists block devices it rewrites
``report`` with the managers the agent ranked and the devices it handed out. With ``gate``
set, ``initialize`` (which the agent runs before it sends anything) reports once and then
waits until that file exists, so the test checks what the agent was told before the agent
may talk to the API.

Deploy: it runs IPA's ``write_image`` deploy step itself only to record it (and, with
``hold_write_secs`` set, to wait that long before writing), then hands it to the generic
manager. With ``without_write_image`` set, the generic manager's deploy steps are listed
without ``write_image``, as an agent from before deploy steps offered them; the conductor
must then use the ``standby.prepare_image`` command, which this agent still has.

Clean steps: it implements ``erase_devices_metadata`` itself (zeroing the partition-table
areas at both ends of ``device``, which must be a regular file, or a block device when
``loop_device`` says the test attached it to a file of its own) and offers
``ferric_record_args``, which only records its arguments (and, when asked to, runs a while
or fails); each run of either appends a JSON
line to ``steps_log``. Every other step of the generic manager that would reach the host
(whole-disk erases, pstore, UEFI NVRAM, RAID, burn-in) is answered here with an error, so
the agent never dispatches it further down to the generic manager.
"""

import json
import os
import stat
import time

from ironic_python_agent import hardware

CONFIG_ENV = "FERRIC_TEST_HWM_CONFIG"

# What erase_devices_metadata zeroes at each end of the disk: the protective MBR and the
# primary GPT at the start, the backup GPT at the end (and more, as IPA's wipe does).
METADATA_BYTES = 1 << 20

# Generic-manager steps that would touch the host (its disks, pstore, EFI variables, md
# RAID, CPU/memory/network burn-in): refused here, before the agent can fall through to the
# generic manager.
REFUSED_STEPS = (
    "erase_devices", "erase_devices_express", "erase_pstore", "clean_uefi_nvram",
    "delete_configuration", "create_configuration", "apply_configuration",
    "burnin_cpu", "burnin_gpu", "burnin_disk", "burnin_memory", "burnin_network",
)


def _config():
    with open(os.environ[CONFIG_ENV]) as f:
        return json.load(f)


def _write_report(cfg, devices):
    managers = [
        {"name": m["name"], "support": m["support"]}
        for m in hardware.get_managers_detail()
    ]
    report = {
        "managers": managers,
        "block_devices": [d.serialize() for d in devices],
    }
    tmp = cfg["report"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f)
    # Atomic, so the test never reads half a file.
    os.replace(tmp, cfg["report"])


def _record(cfg, step, node, args):
    log = cfg.get("steps_log")
    if not log:
        return
    line = json.dumps({"step": step, "node": (node or {}).get("uuid"), "args": args})
    with open(log, "a") as f:
        f.write(line + "\n")


def _refuse(name):
    def refused(self, *args, **kwargs):
        raise RuntimeError(
            "%s is not run under the Ferric test: it would reach the host" % name)
    refused.__name__ = name
    return refused


class FerricTestHardwareManager(hardware.HardwareManager):
    HARDWARE_MANAGER_NAME = "ferric_test_hardware_manager"
    HARDWARE_MANAGER_VERSION = "1.0"

    def evaluate_hardware_support(self):
        return hardware.HardwareSupport.SERVICE_PROVIDER

    def initialize(self):
        # The agent initializes its managers before it sends anything. Report the devices
        # now and, with a "gate" file configured, hold the agent here until the test has
        # checked them (bounded: the agent exits if the test never answers).
        self.list_block_devices()
        cfg = _config()
        gate = cfg.get("gate")
        if not gate:
            return
        deadline = time.monotonic() + float(cfg.get("gate_timeout", 120))
        while not os.path.exists(gate):
            if time.monotonic() > deadline:
                raise RuntimeError("the test never released %s" % gate)
            time.sleep(0.1)

    def list_block_devices(self, include_partitions=False):
        cfg = _config()
        devices = [
            hardware.BlockDevice(
                name=cfg["device"],
                model="ferric-test-disk",
                size=int(cfg["size"]),
                rotational=False,
                serial="ferric-test-0",
                vendor="ferric",
            )
        ]
        _write_report(cfg, devices)
        return devices

    def list_block_devices_check_skip_list(self, node, include_partitions=False,
                                           all_serial_and_wwn=False):
        return self.list_block_devices(include_partitions=include_partitions)

    def get_os_install_device(self, permit_refresh=False):
        return self.list_block_devices()[0].name

    def wait_for_disks(self):
        # The one device is a file the test created before starting the agent.
        return None

    def list_network_interfaces(self):
        cfg = _config()
        return [
            hardware.NetworkInterface(
                cfg["interface"],
                cfg["mac"],
                ipv4_address=cfg.get("ipv4"),
                has_carrier=True,
            )
        ]

    def get_cpus(self):
        return hardware.CPU(model_name="ferric-test-cpu", frequency="1000",
                            count=1, architecture="x86_64")

    def get_memory(self):
        return hardware.Memory(total=1073741824, physical_mb=1024)

    def get_bmc_address(self):
        return "0.0.0.0"

    def get_bmc_v6address(self):
        return "::/0"

    def get_bmc_mac(self):
        return None

    def get_system_vendor_info(self):
        return hardware.SystemVendorInfo(
            product_name="ferric-test", serial_number="ferric-test-0",
            manufacturer="ferric",
            firmware=hardware.SystemFirmware(vendor="ferric", version="1.0",
                                             build_date="2026-01-01"))

    def get_boot_info(self):
        cfg = _config()
        return hardware.BootInfo(current_boot_mode=cfg.get("boot_mode", "uefi"),
                                 pxe_interface=cfg["mac"])

    def get_clean_steps(self, node, ports):
        return [
            {"step": "erase_devices_metadata", "priority": 99, "interface": "deploy",
             "reboot_requested": False, "abortable": True},
            {"step": "ferric_record_args", "priority": 0, "interface": "deploy",
             "reboot_requested": False, "abortable": True,
             "argsinfo": {
                 "note": {"description": "recorded as given", "required": False},
                 "fail": {"description": "fail the step after recording", "required": False},
                 "hold_secs": {"description": "run this long (at most 30 s)", "required": False},
             }},
        ]

    def erase_devices_metadata(self, node, ports):
        cfg = _config()
        path = cfg["device"]
        # Only ever the test's own file, or the loop device the test attached to its file
        # ("loop_device"); never created here.
        mode = os.stat(path).st_mode
        if not (stat.S_ISREG(mode) or (cfg.get("loop_device") and stat.S_ISBLK(mode))):
            raise RuntimeError("%s is not the test's disk; refusing to erase it" % path)
        size = int(cfg["size"])
        n = min(METADATA_BYTES, size)
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, bytes(n), 0)
            os.pwrite(fd, bytes(n), size - n)
            os.fsync(fd)
        finally:
            os.close(fd)
        _record(cfg, "erase_devices_metadata", node, {})

    def ferric_record_args(self, node, ports, **kwargs):
        _record(_config(), "ferric_record_args", node, kwargs)
        # Keeps the agent busy for a while (bounded), as a long step would.
        time.sleep(min(float(kwargs.get("hold_secs") or 0), 30.0))
        if kwargs.get("fail"):
            # A step failing in the ramdisk, without touching anything.
            raise RuntimeError("asked to fail: %s" % kwargs.get("note"))
        return {"recorded": sorted(kwargs)}

    def write_image(self, node, ports, image_info, configdrive=None):
        cfg = _config()
        hold = min(float(cfg.get("hold_write_secs") or 0), 120.0)
        _record(cfg, "write_image", node, {"hold_secs": hold})
        time.sleep(hold)
        return hardware.GenericHardwareManager.write_image(
            self, node, ports, image_info, configdrive=configdrive)

    def list_hardware_info(self):
        return {
            "interfaces": self.list_network_interfaces(),
            "cpu": self.get_cpus(),
            "disks": self.list_block_devices(),
            "memory": self.get_memory(),
            "bmc_address": self.get_bmc_address(),
            "bmc_v6address": self.get_bmc_v6address(),
            "system_vendor": self.get_system_vendor_info(),
            "boot": self.get_boot_info(),
            "hostname": "ferric-test-ipa",
        }


for _name in REFUSED_STEPS:
    setattr(FerricTestHardwareManager, _name, _refuse(_name))


_generic_deploy_steps = hardware.GenericHardwareManager.get_deploy_steps


def _deploy_steps(self, node, ports):
    steps = _generic_deploy_steps(self, node, ports)
    if _config().get("without_write_image"):
        steps = [s for s in steps if s.get("step") != "write_image"]
    return steps


hardware.GenericHardwareManager.get_deploy_steps = _deploy_steps
