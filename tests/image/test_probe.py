"""The test probe (tests/vmprobe) and its initramfs overlay, without booting: the image
stays free of test tools, the probe runs on the libraries the image already carries,
and the overlay adds exactly the probe and the image's own services file with one
service appended. The tests that boot it are in test_layer4.py, test_datafs_vm.py and
test_vm.py."""

import subprocess

from lab.binaries import binary
from lab.programs import program
from lab.vm import PROBE_PORT, initrd_file, kernel_cmdline, probe_boot_args, probe_service, run, with_probe_port


def cpio_list(path, zstd=True):
    cat = f"{program('zstd')} -dc {path}" if zstd else f"{program('cat')} {path}"
    return subprocess.run(f"{cat} | {program('cpio')} -it --quiet", shell=True, check=True,
                          capture_output=True, text=True).stdout.split()


def test_the_image_carries_no_test_tool(image):
    files = cpio_list(image / "slot" / "initrd.img")
    assert not any(f.endswith("vmprobe") for f in files), "the probe is never part of the image"
    assert "vmprobe" not in initrd_file(image, "etc/init/services.toml")


def test_probe_needs_only_libraries_the_image_carries(image):
    names = set()
    for line in run(program("ldd"), binary("vmprobe")).stdout.splitlines():
        first = line.split()[0]
        if first.startswith("linux-vdso"):
            continue
        names.add(first.rsplit("/", 1)[-1])
    assert names and "libc.so.6" in names, names
    have = {f.rsplit("/", 1)[-1] for f in cpio_list(image / "slot" / "initrd.img")
            if f.startswith(("usr/lib/x86_64-linux-gnu/", "usr/lib64/"))}
    assert names <= have, f"the probe needs {sorted(names - have)}, which the image does not carry"


def test_overlay_adds_the_probe_and_the_image_services_file_plus_one_service(image, tmp_path):
    args = probe_boot_args(image, tmp_path)
    assert args[0::2] == ("--kernel", "--initrd", "--append")
    assert args[1] == str(image / "slot" / "vmlinuz")
    assert args[5] == kernel_cmdline("a") and args[5].endswith(" lb.slot=a")
    overlay = tmp_path / "overlay.cpio"
    files = cpio_list(overlay, zstd=False)
    assert sorted(files) == ["etc", "etc/init", "etc/init/services.toml", "usr", "usr/bin", "usr/bin/vmprobe"]
    services = (tmp_path / "overlay" / "etc" / "init" / "services.toml").read_text()
    assert services == with_probe_port(initrd_file(image, "etc/init/services.toml")) + probe_service()
    assert '"--management-port", "7999"' in services
    assert f'args = ["--port", "{PROBE_PORT}"]' in services
    # the image's initramfs, zero padding to 4 bytes (where the kernel looks for the
    # next archive), then the overlay
    base = (image / "slot" / "initrd.img").read_bytes()
    combined = (tmp_path / "initrd-with-probe.img").read_bytes()
    pad = -len(base) % 4
    assert combined == base + b"\0" * pad + overlay.read_bytes()
