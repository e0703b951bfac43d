//! Device-model throughput against the host's own I/O, in one run:
//!
//! * vsock: a host client streams 256 MiB through the hybrid vsock device to a simulated
//!   guest driver that returns its 4 KiB RX buffers (Linux's size) and credit, against
//!   the same bytes through a plain Unix socket pair read in 4 KiB chunks;
//! * virtio-fs: sequential read of a 256 MiB file through the FUSE server in 128 KiB
//!   READ requests (the guest's max_read) into guest memory, against `read(2)` of the same
//!   file in 128 KiB chunks into one buffer. The page cache is warm for both.
//!
//! Run: `cargo bench -p ember-vmm --bench devices`.

#[allow(unused_imports)]
#[path = "../tests/common/mod.rs"]
mod common;

use common::fuse_client::FuseClient;
use common::vsock_guest::{Guest, Hdr};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

const TOTAL: usize = 256 << 20;
const RUNS: usize = 5;

fn mib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn writer(mut s: UnixStream) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let chunk = vec![0x5au8; 64 << 10];
        let mut sent = 0;
        while sent < TOTAL {
            s.write_all(&chunk).unwrap();
            sent += chunk.len();
        }
    })
}

fn vsock_once() -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let mut g = Guest::new(&path, 60);
    let mut c = UnixStream::connect(&path).unwrap();
    c.write_all(b"CONNECT 1234\n").unwrap();
    let req = g
        .recv()
        .into_iter()
        .find(|p| p.hdr.op == 1)
        .expect("REQUEST");
    let local = req.hdr.src_port;
    let mut resp = Hdr::to_host(1234, local, 2);
    resp.buf_alloc = 256 << 10;
    g.send(resp, &[]);
    let mut ok = [0u8; 1];
    while ok[0] != b'\n' {
        c.read_exact(&mut ok).unwrap();
    }
    let start = Instant::now();
    let w = writer(c.try_clone().unwrap());
    let (mut got, mut credited) = (0usize, 0usize);
    while got < TOTAL {
        let n = g.drain_rx_bytes();
        if n == 0 {
            g.step(100); // nothing ready: let the device work
            continue;
        }
        got += n;
        if got - credited >= 64 << 10 {
            let mut upd = Hdr::to_host(1234, local, 6);
            upd.buf_alloc = 256 << 10;
            upd.fwd_cnt = got as u32;
            g.queue_tx(upd, &[]);
            credited = got;
        }
        g.step(0);
    }
    let d = start.elapsed();
    w.join().unwrap();
    d
}

fn unix_pair_once() -> Duration {
    let (a, mut b) = UnixStream::pair().unwrap();
    let start = Instant::now();
    let w = writer(a);
    let mut buf = vec![0u8; 4096];
    let mut got = 0;
    while got < TOTAL {
        got += b.read(&mut buf).unwrap();
    }
    let d = start.elapsed();
    w.join().unwrap();
    d
}

fn fs_once(dir: &std::path::Path) -> Duration {
    let mut c = FuseClient::new(dir, true);
    c.init();
    let e = c.lookup(1, "big").unwrap();
    let fh = c.open(e.nodeid, libc::O_RDONLY, false).unwrap();
    let start = Instant::now();
    let mut off = 0u64;
    while (off as usize) < TOTAL {
        let n = c.read_in_place(e.nodeid, fh, off, 128 << 10);
        assert!(n > 0);
        off += n as u64;
    }
    start.elapsed()
}

fn host_read_once(file: &std::path::Path) -> Duration {
    let mut f = std::fs::File::open(file).unwrap();
    let mut buf = vec![0u8; 128 << 10];
    let start = Instant::now();
    let mut got = 0;
    while got < TOTAL {
        let n = f.read(&mut buf).unwrap();
        assert!(n > 0);
        got += n;
    }
    start.elapsed()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `cargo bench --bench devices -- vsock` (or `fs`) runs one of the two.
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if only.as_deref() != Some("fs") {
        bench_vsock();
    }
    if only.as_deref() != Some("vsock") {
        bench_fs();
    }
}

fn bench_vsock() {
    let (mut v, mut u) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        v.push(mib_per_s(TOTAL, vsock_once()));
        u.push(mib_per_s(TOTAL, unix_pair_once()));
    }
    let (v, u) = (median(v), median(u));
    println!("vsock host->guest, 256 MiB, 4 KiB RX buffers, median of {RUNS}:");
    println!(
        "  ember vsock device {v:>8.0} MiB/s   unix socket pair {u:>8.0} MiB/s   ratio {:.2}x",
        v / u
    );
}

fn bench_fs() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    std::fs::write(&big, vec![0xa5u8; TOTAL]).unwrap();
    host_read_once(&big); // warm the page cache
    let (mut f, mut h) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        f.push(mib_per_s(TOTAL, fs_once(dir.path())));
        h.push(mib_per_s(TOTAL, host_read_once(&big)));
    }
    let (f, h) = (median(f), median(h));
    println!("virtio-fs sequential read, 256 MiB, 128 KiB requests, median of {RUNS}:");
    println!(
        "  ember virtio-fs    {f:>8.0} MiB/s   host read(2)     {h:>8.0} MiB/s   ratio {:.2}x",
        f / h
    );
}
