//! virtio-net on a real tap inside a test network namespace: a frame the guest sends
//! comes out of the tap, and a frame sent into the tap reaches the guest's RX queue; with
//! rate limiters, frames beyond the budget wait (in the ring, or in the tap) for the
//! limiter's timer.
//! Needs root (CAP_NET_ADMIN) and iproute2; skips saying so otherwise.

mod common;

use common::driver::{Desc, Driver, DATA, F_WRITE};
use ember_vmm::devices::virtio::net::tap::Tap;
use ember_vmm::devices::virtio::net::{Net, RXQ, TXQ};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;

const ETHERTYPE: u16 = 0x88b5; // IEEE local experimental
const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x42];

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Option<Self> {
        let name = format!("ember-net-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .ok()?
            .success();
        ok.then(|| Self(name))
    }
    fn path(&self) -> std::path::PathBuf {
        std::path::Path::new("/var/run/netns").join(&self.0)
    }
    fn ip(&self, args: &[&str]) {
        let st = Command::new("ip")
            .arg("-n")
            .arg(&self.0)
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "ip -n {} {args:?}", self.0);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// An AF_PACKET socket on `ifname` inside the namespace at `ns`.
/// A tap `ifname`, up, in a new network namespace tagged `tag`, and a packet socket on it
/// there; `None` (after a SKIP line for `test`) without root or `ip netns`.
fn tap_in_netns(test: &str, tag: &str, ifname: &str) -> Option<(Netns, Tap, OwnedFd)> {
    if !ember_tests::is_root() {
        common::skip(
            test,
            "needs root (CAP_NET_ADMIN) to create a tap and a network namespace",
        );
        return None;
    }
    let Some(ns) = Netns::new(tag) else {
        common::skip(test, "`ip netns add` failed (apt-get install iproute2)");
        return None;
    };
    let tap = Tap::open(ifname, Some(&ns.path())).expect("tap in the test namespace");
    ns.ip(&["link", "set", ifname, "up"]);
    let sock = packet_socket(ns.path(), ifname);
    Some((ns, tap, sock))
}

/// Posts `n` 2 KiB RX buffers to the device and kicks the RX queue.
fn post_rx_buffers(d: &mut Driver<Net>, n: u64) {
    for i in 0..n {
        d.submit_q(
            RXQ,
            &[Desc {
                addr: DATA + 0x10000 * (i + 1),
                len: 2048,
                flags: F_WRITE,
                next: 0,
            }],
        );
    }
    d.kick_q(RXQ);
}

fn packet_socket(ns: std::path::PathBuf, ifname: &str) -> OwnedFd {
    let ifname = std::ffi::CString::new(ifname).unwrap();
    ember_sys::netns::run_in(&ns, move || {
        // SAFETY: plain socket calls with valid arguments; the fd is owned at once.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                (libc::ETH_P_ALL as u16).to_be() as i32,
            );
            assert!(fd >= 0);
            let owned = OwnedFd::from_raw_fd(fd);
            let index = libc::if_nametoindex(ifname.as_ptr());
            assert!(index > 0);
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
            addr.sll_ifindex = index as i32;
            let rc = libc::bind(
                fd,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of_val(&addr) as u32,
            );
            assert_eq!(rc, 0);
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 200_000,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of_val(&tv) as u32,
            );
            owned
        }
    })
    .unwrap()
}

fn frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend(src);
    f.extend(ETHERTYPE.to_be_bytes());
    f.extend(payload);
    f.resize(f.len().max(60), 0);
    f
}

#[test]
fn frames_cross_the_tap_in_both_directions() {
    const TEST: &str = "frames_cross_the_tap_in_both_directions";
    let Some((_ns, tap, sock)) = tap_in_netns(TEST, "test", "embt0") else {
        return;
    };
    let mut d = Driver::new(Net::new(tap, GUEST_MAC).unwrap(), 64);
    assert_eq!(d.init_queues(2) & 0x40, 0);
    // The device runs on a thread confined by the device seccomp filter.
    let mut em = common::confined::ConfinedLoop::new(vec![d.device.clone()]);
    let pump = |em: &mut common::confined::ConfinedLoop| {
        em.pump(20, 1);
    };

    // Guest → tap.
    let out = frame([0xff; 6], GUEST_MAC, b"ember-out");
    let mut pkt = vec![0u8; 12];
    pkt.extend(&out);
    d.poke(DATA, &pkt);
    d.submit_q(
        TXQ,
        &[Desc {
            addr: DATA,
            len: pkt.len() as u32,
            flags: 0,
            next: 0,
        }],
    );
    d.kick_q(TXQ);
    pump(&mut em);
    assert_eq!(d.used_q(TXQ).len(), 1);
    let mut buf = [0u8; 2048];
    let mut seen = false;
    for _ in 0..50 {
        // SAFETY: reads into buf.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            break;
        }
        if buf[..n as usize] == out[..] {
            seen = true;
            break;
        }
    }
    assert!(seen, "the guest's frame came out of the tap");

    // Tap → guest.
    post_rx_buffers(&mut d, 4);
    pump(&mut em);
    let inbound = frame(GUEST_MAC, [0x02, 0, 0, 0, 0, 0xee], b"ember-in");
    // SAFETY: sends the frame from a valid buffer.
    let sent = unsafe { libc::send(sock.as_raw_fd(), inbound.as_ptr().cast(), inbound.len(), 0) };
    assert_eq!(sent as usize, inbound.len());
    let mut got = None;
    for _ in 0..50 {
        pump(&mut em);
        for (_id, len) in d.used_q(RXQ) {
            let found = (1..=4u64)
                .map(|i| d.peek(DATA + 0x10000 * i, len as usize))
                .find(|b| b.len() > 12 && b[12..] == inbound[..]);
            if found.is_some() {
                got = found;
            }
        }
        if got.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let b = got.expect("the frame sent into the tap reached an RX buffer");
    assert_eq!(u16::from_le_bytes([b[10], b[11]]), 1, "num_buffers = 1");
    assert!(b[..10].iter().all(|x| *x == 0), "no offload flags");
}

#[test]
fn rate_limits_hold_frames_until_the_timer_in_both_directions() {
    const TEST: &str = "rate_limits_hold_frames_until_the_timer_in_both_directions";
    let Some((_ns, tap, sock)) = tap_in_netns(TEST, "limit", "embt1") else {
        return;
    };
    // 1000 bytes per 500 ms each way: frames of 1000 bytes go one per refill.
    let limits: ember_vmm::config::RateLimitConfig = "bandwidth=1000/500".parse().unwrap();
    let limiter = || ember_vmm::rate_limiter::RateLimiter::new(&limits).unwrap();
    let net = Net::new(tap, GUEST_MAC)
        .unwrap()
        .with_rate_limiters(limiter(), limiter());
    let mut d = Driver::new(net, 64);
    assert_eq!(d.init_queues(2) & 0x40, 0);
    let em = common::confined::ConfinedLoop::new(vec![d.device.clone()]);
    let mut payload = b"ember-limited".to_vec();
    payload.resize(1000 - 14, 0x5a);

    // Guest → tap: three frames; one goes at once, the others wait in the ring.
    let t0 = std::time::Instant::now();
    for i in 0..3u64 {
        let mut pkt = vec![0u8; 12];
        pkt.extend(frame([0xff; 6], GUEST_MAC, &payload));
        assert_eq!(pkt.len(), 1012);
        d.poke(DATA + 0x1000 * i, &pkt);
        d.submit_q(
            TXQ,
            &[Desc {
                addr: DATA + 0x1000 * i,
                len: pkt.len() as u32,
                flags: 0,
                next: 0,
            }],
        );
    }
    d.kick_q(TXQ);
    em.pump(10, 1);
    let mut sent = d.used_q(TXQ).len();
    assert_eq!(sent, 1, "only the budget is sent");
    let deadline = t0 + std::time::Duration::from_secs(20);
    while sent < 3 && std::time::Instant::now() < deadline {
        em.run(100);
        sent += d.used_q(TXQ).len();
    }
    assert_eq!(sent, 3, "the timer resumed TX");
    assert!(
        t0.elapsed() >= std::time::Duration::from_millis(990),
        "{:?}",
        t0.elapsed()
    );

    // Tap → guest: three frames into the tap; one reaches the guest at once, the others
    // wait (one in the device, the rest in the tap, which is not read meanwhile).
    // Buffers to spare: the kernel's own frames on a new link take some.
    post_rx_buffers(&mut d, 12);
    em.pump(10, 1);
    let inbound = frame(GUEST_MAC, [0x02, 0, 0, 0, 0, 0xee], &payload);
    let t1 = std::time::Instant::now();
    for _ in 0..3 {
        // SAFETY: sends the frame from a valid buffer.
        let n = unsafe { libc::send(sock.as_raw_fd(), inbound.as_ptr().cast(), inbound.len(), 0) };
        assert_eq!(n as usize, inbound.len());
    }
    // Frames of our own, among whatever else the kernel sends on a new link (IPv6
    // router solicitations and such, which count against the budget too).
    let ours = |d: &mut Driver<Net>| {
        d.used_q(RXQ)
            .into_iter()
            .filter(|(id, _)| {
                let at = DATA + 0x10000 * (u64::from(*id) + 1);
                d.peek(at + 12, inbound.len()) == inbound
            })
            .count()
    };
    em.pump(10, 1);
    let mut got = ours(&mut d);
    assert!(got <= 1, "at most the budget is delivered at once: {got}");
    let deadline = t1 + std::time::Duration::from_secs(20);
    while got < 3 && std::time::Instant::now() < deadline {
        em.run(100);
        got += ours(&mut d);
    }
    assert_eq!(got, 3, "the timer resumed RX and the tap was read again");
    assert!(
        t1.elapsed() >= std::time::Duration::from_millis(990),
        "{:?}",
        t1.elapsed()
    );
}
