#!/usr/bin/env python3
"""Boot to the agent serving: ember's VMM against QEMU's microvm machine, same guest.

Both boot the guest kernel of `make guest` with the agent's initramfs (1 vCPU, 256 MiB,
virtio-rng, vsock), and the time taken is from spawning the VMM to the agent accepting a
vsock connection on its port: for ember-vmm through its hybrid vsock socket (`CONNECT
1024` answered `OK`), for QEMU through vhost-vsock (AF_VSOCK to the guest's CID). Runs are
interleaved; prints the medians, the ratio, and each VMM's RSS at that moment.

Needs hardware KVM (vmx/svm), root, the `vhost_vsock` module for QEMU, and a release
build of ember-vmm. On hosts without hardware virtualization run it in the nested KVM test
host, where the numbers are only meaningful as ratios:

    scripts/kvm-host.sh run -- python3 scripts/bench-boot.py
"""

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORT = 1024


def rss_kib(pid):
    """The process's resident set size, in KiB (0 when gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def wait_ready(proc, connect, timeout):
    """Polls `connect` until it succeeds; returns seconds since start or raises."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the VMM exited with {proc.returncode} before the agent answered")
        if connect():
            return time.monotonic() - start
        time.sleep(0.005)
    raise RuntimeError(f"the agent did not answer within {timeout} s")


def ember_connect(sock_path):
    def connect():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect(sock_path)
            s.sendall(f"CONNECT {PORT}\n".encode())
            return s.recv(64).startswith(b"OK ")
        except OSError:
            return False
        finally:
            s.close()
    return connect


def vsock_connect(cid):
    def connect():
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect((cid, PORT))
            return True
        except OSError:
            return False
        finally:
            s.close()
    return connect


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


def run_ember(vmm, kernel, initrd, tmp, timeout):
    sock = os.path.join(tmp, "v.sock")
    if os.path.exists(sock):
        os.unlink(sock)
    start = time.monotonic()
    proc = subprocess.Popen(
        [vmm, "--kernel", kernel, "--initrd", initrd, "--vcpus", "1", "--memory-mib", "256",
         "--rng", "--vsock", sock, "--serial", "none",
         "--cmdline", "console=ttyS0 reboot=k panic=1 quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # The socket appears once the VMM is up; connecting before then just fails.
        t = wait_ready(proc, ember_connect(sock), timeout)
        return t, rss_kib(proc.pid), time.monotonic() - start
    finally:
        stop(proc)


def run_qemu(kernel, initrd, cid, timeout):
    # acpi=off: QEMU then names its virtio-mmio devices on the kernel command line, as
    # ember's VMM does (the guest kernel has no ACPI).
    start = time.monotonic()
    proc = subprocess.Popen(
        ["qemu-system-x86_64", "-M", "microvm,acpi=off", "-accel", "kvm", "-cpu", "host",
         "-smp", "1", "-m", "256", "-nodefaults", "-no-user-config", "-display", "none",
         "-serial", "null",
         "-kernel", kernel, "-initrd", initrd,
         "-append", "console=ttyS0 reboot=k panic=1 quiet",
         "-device", "virtio-rng-device",
         "-device", f"vhost-vsock-device,guest-cid={cid}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t = wait_ready(proc, vsock_connect(cid), timeout)
        return t, rss_kib(proc.pid), time.monotonic() - start
    finally:
        stop(proc)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--vmm", default=os.path.join(ROOT, "target/release/ember-vmm"))
    p.add_argument("--kernel", default=os.path.join(ROOT, "build/guest/vmlinux"))
    p.add_argument("--initrd", default=os.path.join(ROOT, "build/guest/initramfs.cpio"))
    a = p.parse_args()
    for f in (a.vmm, a.kernel, a.initrd):
        if not os.path.isfile(f):
            sys.exit(f"bench-boot: {f} is missing (cargo build --release -p ember-vmm; make guest)")
    with open("/proc/cpuinfo") as f:
        flags = f.read().split()
    if "vmx" not in flags and "svm" not in flags:
        sys.exit("bench-boot: no hardware virtualization here: run it in the nested KVM "
                 "test host (scripts/kvm-host.sh run -- python3 scripts/bench-boot.py)")
    if not os.path.exists("/dev/vhost-vsock"):
        subprocess.run(["modprobe", "vhost_vsock"], check=False)
    nested = os.environ.get("EMBER_IN_KVM_HOST") is not None
    ember, qemu = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.runs):
            ember.append(run_ember(a.vmm, a.kernel, a.initrd, tmp, a.timeout))
            qemu.append(run_qemu(a.kernel, a.initrd, 100 + i, a.timeout))
            print(f"run {i + 1}: ember {ember[-1][0]:.2f} s, qemu {qemu[-1][0]:.2f} s", flush=True)
    e = statistics.median(r[0] for r in ember)
    q = statistics.median(r[0] for r in qemu)
    er = statistics.median(r[1] for r in ember)
    qr = statistics.median(r[1] for r in qemu)
    where = "nested KVM test host (emulated: ratios only)" if nested else "this host"
    print(f"boot to agent serving, median of {a.runs}, {where}:")
    print(f"  ember-vmm        {e:8.3f} s   RSS at ready {er / 1024:6.1f} MiB")
    print(f"  qemu -M microvm  {q:8.3f} s   RSS at ready {qr / 1024:6.1f} MiB")
    print(f"  ratio ember/qemu {e / q:8.2f}x  RSS {er / qr:.2f}x")


if __name__ == "__main__":
    main()
