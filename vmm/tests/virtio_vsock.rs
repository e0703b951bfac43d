//! virtio-vsock with the hybrid Unix-socket backend, driven by a simulated guest driver
//! and real host sockets: handshakes both ways, data both ways, credit exhaustion and
//! recovery, RST to closed ports, half-close, malformed packets, many streams.

mod common;

use common::vsock_guest::{Guest, Hdr, Pkt, CID};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

const REQUEST: u16 = 1;
const RESPONSE: u16 = 2;
const RST: u16 = 3;
const SHUTDOWN: u16 = 4;
const RW: u16 = 5;
const CREDIT_UPDATE: u16 = 6;

fn setup(rx: usize) -> (tempfile::TempDir, std::path::PathBuf, Guest) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vsock.sock");
    let guest = Guest::new(&path, rx);
    (dir, path, guest)
}

fn client(path: &std::path::Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

fn only(pkts: Vec<Pkt>, op: u16) -> Pkt {
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    assert_eq!(pkts[0].hdr.op, op, "{pkts:?}");
    pkts.into_iter().next().unwrap()
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

/// Host connects to guest port `port` and the guest accepts: returns the client and the
/// host-side port.
fn host_connect(g: &mut Guest, path: &std::path::Path, port: u32) -> (UnixStream, u32) {
    let mut c = client(path);
    c.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let req = only(g.recv(), REQUEST);
    assert_eq!(
        (
            req.hdr.src_cid,
            req.hdr.dst_cid,
            req.hdr.dst_port,
            req.hdr.type_
        ),
        (2, CID, port, 1)
    );
    assert!(req.hdr.src_port >= 1 << 30);
    g.send(Hdr::to_host(port, req.hdr.src_port, RESPONSE), &[]);
    assert_eq!(read_line(&mut c), format!("OK {}", req.hdr.src_port));
    (c, req.hdr.src_port)
}

#[test]
fn host_initiated_connection_carries_data_both_ways() {
    let (_d, path, mut g) = setup(16);
    let (mut c, local) = host_connect(&mut g, &path, 1024);
    c.write_all(b"hello guest").unwrap();
    let p = only(g.recv(), RW);
    assert_eq!(p.data, b"hello guest");
    assert_eq!((p.hdr.src_port, p.hdr.dst_port), (local, 1024));
    g.send(Hdr::to_host(1024, local, RW), b"hello host");
    let mut buf = [0u8; 10];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello host");
    // The guest closes both directions: the client sees EOF and the guest gets RST.
    let mut h = Hdr::to_host(1024, local, SHUTDOWN);
    h.flags = 3;
    g.send(h, &[]);
    only(g.recv(), RST);
    assert_eq!(
        c.read(&mut buf).unwrap(),
        0,
        "EOF after the guest's shutdown"
    );
    assert_eq!(g.d.device.lock().unwrap().connection_count(), 0);
}

#[test]
fn host_connect_to_a_guest_port_nobody_listens_on_closes_the_client() {
    let (_d, path, mut g) = setup(16);
    let mut c = client(&path);
    c.write_all(b"CONNECT 9\n").unwrap();
    let req = only(g.recv(), REQUEST);
    g.send(Hdr::to_host(9, req.hdr.src_port, RST), &[]);
    let mut b = [0u8; 8];
    assert_eq!(c.read(&mut b).unwrap(), 0, "no OK, just EOF");
}

#[test]
fn bad_handshakes_are_closed() {
    let (_d, path, mut g) = setup(4);
    for line in ["CONNECT\n", "HELLO 5\n", "CONNECT -1\n"] {
        let mut c = client(&path);
        c.write_all(line.as_bytes()).unwrap();
        g.pump();
        let mut b = [0u8; 8];
        assert_eq!(c.read(&mut b).unwrap(), 0, "{line:?} closed");
    }
    let mut c = client(&path);
    c.write_all(&[b'x'; 64]).unwrap();
    g.pump();
    // Closed with unread bytes: EOF or a reset, but never an answer.
    let r = c.read(&mut [0u8; 8]);
    assert!(
        matches!(r, Ok(0))
            || r.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{r:?}"
    );
    assert!(g.recv().is_empty(), "the guest heard nothing");
}

#[test]
fn guest_initiated_connection_reaches_the_host_listener() {
    let (_d, path, mut g) = setup(16);
    let listener = UnixListener::bind(format!("{}_5000", path.display())).unwrap();
    g.send(Hdr::to_host(777, 5000, REQUEST), &[]);
    let resp = only(g.recv(), RESPONSE);
    assert_eq!((resp.hdr.src_port, resp.hdr.dst_port), (5000, 777));
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    g.send(Hdr::to_host(777, 5000, RW), b"ping");
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    s.write_all(b"pong").unwrap();
    assert_eq!(only(g.recv(), RW).data, b"pong");
}

#[test]
fn guest_connect_to_a_closed_host_port_gets_rst() {
    let (_d, _path, mut g) = setup(8);
    g.send(Hdr::to_host(778, 6000, REQUEST), &[]);
    let rst = only(g.recv(), RST);
    assert_eq!((rst.hdr.src_port, rst.hdr.dst_port), (6000, 778));
    // Data for a connection that does not exist is answered with RST too.
    g.send(Hdr::to_host(779, 6001, RW), b"x");
    only(g.recv(), RST);
}

#[test]
fn credit_exhaustion_stops_reads_and_credit_updates_resume_them() {
    let (_d, path, mut g) = setup(16);
    let mut c = client(&path);
    c.write_all(b"CONNECT 2000\n").unwrap();
    let req = only(g.recv(), REQUEST);
    let local = req.hdr.src_port;
    let mut resp = Hdr::to_host(2000, local, RESPONSE);
    resp.buf_alloc = 8; // the guest can hold 8 bytes
    g.send(resp, &[]);
    assert!(read_line(&mut c).starts_with("OK "));
    c.write_all(b"0123456789abcdefghij").unwrap();
    let p = only(g.recv(), RW);
    assert_eq!(p.data, b"01234567", "only what the credit allows");
    assert!(g.recv().is_empty(), "nothing more without credit");
    let mut upd = Hdr::to_host(2000, local, CREDIT_UPDATE);
    upd.buf_alloc = 8;
    upd.fwd_cnt = 8;
    g.send(upd, &[]);
    assert_eq!(only(g.recv(), RW).data, b"89abcdef");
    upd.fwd_cnt = 1000; // a lying guest cannot make the device underflow
    upd.buf_alloc = 4;
    g.send(upd, &[]);
    let rest: Vec<u8> = g.recv().into_iter().flat_map(|p| p.data).collect();
    assert!(rest.len() <= 4, "{rest:?}");
}

#[test]
fn guest_sending_beyond_its_credit_is_reset() {
    let (_d, path, mut g) = setup(16);
    let listener = UnixListener::bind(format!("{}_5001", path.display())).unwrap();
    g.send(Hdr::to_host(780, 5001, REQUEST), &[]);
    only(g.recv(), RESPONSE);
    let (_s, _) = listener.accept().unwrap(); // never reads
                                              // Fill the host socket and our 256 KiB buffer, then overflow it.
    let chunk = vec![7u8; 60 << 10];
    let mut reset = false;
    for _ in 0..64 {
        g.send(Hdr::to_host(780, 5001, RW), &chunk);
        if g.recv().iter().any(|p| p.hdr.op == RST) {
            reset = true;
            break;
        }
    }
    assert!(
        reset,
        "a guest ignoring credit gets RST instead of unbounded buffering"
    );
}

#[test]
fn half_close_behaves_like_a_pipe() {
    let (_d, path, mut g) = setup(16);
    let (mut c, local) = host_connect(&mut g, &path, 1025);
    // Guest stops sending: the host reads EOF but can still write.
    let mut h = Hdr::to_host(1025, local, SHUTDOWN);
    h.flags = 2; // SEND
    g.send(h, &[]);
    let mut b = [0u8; 4];
    assert_eq!(c.read(&mut b).unwrap(), 0);
    c.write_all(b"late").unwrap();
    assert_eq!(only(g.recv(), RW).data, b"late");
    // Host closes its side: the guest gets SHUTDOWN(SEND).
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let s = only(g.recv(), SHUTDOWN);
    assert_eq!(s.hdr.flags & 2, 2);
}

#[test]
fn malformed_packets_are_dropped_and_the_device_keeps_working() {
    let (_d, path, mut g) = setup(16);
    g.send_raw(&[0u8; 10], &[]); // header too short
    let mut wrong_cid = Hdr::to_host(1, 5000, REQUEST);
    wrong_cid.src_cid = 99;
    g.send(wrong_cid, &[]);
    let mut bad_len = Hdr::to_host(1, 5000, RW).bytes();
    bad_len[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
    g.send_raw(&bad_len, b"abc");
    let mut dgram = Hdr::to_host(2, 5000, REQUEST);
    dgram.type_ = 2;
    g.send(dgram, &[]);
    let mut unknown = Hdr::to_host(3, 5000, 99);
    unknown.len = 0;
    g.send(unknown, &[]);
    let replies = g.recv();
    assert!(
        replies.iter().all(|p| p.hdr.op == RST),
        "only RSTs: {replies:?}"
    );
    // Still works.
    let (mut c, local) = host_connect(&mut g, &path, 1026);
    c.write_all(b"ok").unwrap();
    let p = only(g.recv(), RW);
    assert_eq!((p.data.as_slice(), p.hdr.src_port), (&b"ok"[..], local));
}

#[test]
fn hundreds_of_concurrent_streams() {
    let (_d, path, mut g) = setup(64);
    const N: usize = 300;
    let mut clients = Vec::new();
    for i in 0..N {
        let mut c = client(&path);
        c.write_all(format!("CONNECT {}\n", 10_000 + i).as_bytes())
            .unwrap();
        clients.push(c);
    }
    let mut requests = Vec::new();
    while requests.len() < N {
        let got = g.recv();
        assert!(!got.is_empty(), "stalled at {} requests", requests.len());
        requests.extend(got.into_iter().filter(|p| p.hdr.op == REQUEST));
    }
    let mut local_of = std::collections::HashMap::new();
    for r in &requests {
        g.send(Hdr::to_host(r.hdr.dst_port, r.hdr.src_port, RESPONSE), &[]);
        local_of.insert(r.hdr.dst_port, r.hdr.src_port);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert!(read_line(c).starts_with("OK "));
        c.write_all(format!("stream {i}").as_bytes()).unwrap();
    }
    let mut seen = std::collections::HashMap::new();
    for _ in 0..50 {
        for p in g.recv() {
            assert_eq!(p.hdr.op, RW);
            seen.insert(p.hdr.dst_port, String::from_utf8(p.data).unwrap());
        }
        if seen.len() == N {
            break;
        }
    }
    assert_eq!(seen.len(), N);
    for i in 0..N {
        assert_eq!(seen[&(10_000 + i as u32)], format!("stream {i}"));
    }
    assert_eq!(g.d.device.lock().unwrap().connection_count(), N);
}
