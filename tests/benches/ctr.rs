//! `ctr run --rm` through each shim, against one private containerd: the median wall time
//! of `ctr run --rm --runtime R IMAGE id /bin/true` over `EMBER_BENCH_RUNS` runs (default
//! 10, runtimes interleaved), and the stdout throughput of a container writing 1 GiB
//! (`dd if=/dev/zero bs=1M count=1024`) through ctr to a reader on the host
//! (`EMBER_BENCH_TP_RUNS` runs, default 3; 0 skips it). Prints a table and the ember/runc ratios.
//!
//! Runtimes: containerd's runc shim (`io.containerd.runc.v2`) always, and ember's
//! (`io.containerd.ember.v2`) when `containerd-shim-ember-v2` is built (see
//! [`ember_tests::containerd::ember_shim_dir`]); otherwise a note says it was skipped.
//! `EMBER_CONFIG` is passed to the ember runtime as `--runtime-config-path`.
//!
//! Run: `cargo bench -p ember-tests --bench ctr`.

use std::io::Read;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ember_tests::containerd::{self, Containerd, Options, EMBER_RUNTIME, RUNC_RUNTIME};
use ember_tests::image::busybox_image_tar;
use ember_tests::{fixtures, skip};

const IMAGE: &str = "docker.io/library/busybox:ember";
const GIB: u64 = 1 << 30;
const BENCH: &str = "ctr bench";

struct Runtime {
    name: &'static str,
    runtime_type: &'static str,
    extra: Vec<String>,
    runs: Vec<Duration>,
    throughput: Vec<f64>,
}

/// `name`'s value as a count, `default` when unset or not a number. Zero is kept when
/// `zero_ok` (the stdout part is skipped with `EMBER_BENCH_TP_RUNS=0`); otherwise it
/// means the default, as a median of nothing means nothing.
fn env_usize(name: &str, default: usize, zero_ok: bool) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| zero_ok || n > 0)
        .unwrap_or(default)
}

fn median<T: PartialOrd + Copy + Default>(v: &[T]) -> T {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ctr_args<'a>(rt: &'a Runtime, id: &'a str, cmd: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "--rm", "--runtime", rt.runtime_type];
    args.extend(rt.extra.iter().map(String::as_str));
    args.extend([IMAGE, id]);
    args.extend(cmd);
    args
}

/// One `ctr run --rm ... /bin/true`, timed. Under emulated virtualization (the nested KVM
/// test host) a microVM guest now and then triple-faults at boot (README, testing section):
/// such a run is not timed but run once more under another id, and says so.
fn run_true(ctrd: &Containerd, rt: &Runtime, id: &str) -> Duration {
    match try_run_true(ctrd, rt, id) {
        Ok(took) => took,
        Err(why) if why.contains("triple-fault") || why.contains("triple fault") => {
            println!("RETRY {id}: the microVM guest triple-faulted; once more as {id}-b");
            try_run_true(ctrd, rt, &format!("{id}-b")).unwrap_or_else(|why| panic!("{why}"))
        }
        Err(why) => panic!("{why}"),
    }
}

/// [`run_true`]'s one try: its time, or what failed (ctr's stderr, containerd's log).
fn try_run_true(ctrd: &Containerd, rt: &Runtime, id: &str) -> Result<Duration, String> {
    let args = ctr_args(rt, id, &["/bin/true"]);
    let start = Instant::now();
    let out = ctrd.ctr(&args).expect("running ctr");
    let took = start.elapsed();
    if !out.status.success() {
        return Err(format!(
            "ctr {} failed: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            ctrd.log_tail(20)
        ));
    }
    Ok(took)
}

/// MiB/s of 1 GiB of container stdout, first byte to end of stream.
fn throughput(ctrd: &Containerd, rt: &Runtime, id: &str) -> f64 {
    let args = ctr_args(rt, id, &["dd", "if=/dev/zero", "bs=1M", "count=1024"]);
    let mut child = ctrd
        .ctr_command(containerd::DEFAULT_NAMESPACE)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning ctr");
    let mut stdout = child.stdout.take().expect("piped");
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let mut first = None;
    loop {
        let n = stdout.read(&mut buf).expect("reading ctr's stdout");
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        total += n as u64;
    }
    let secs = first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(0.0);
    let status = child.wait().expect("waiting for ctr");
    assert!(status.success(), "ctr {} failed: {status}", args.join(" "));
    assert_eq!(total, GIB, "{} stdout bytes, expected 1 GiB", rt.name);
    (total as f64 / (1 << 20) as f64) / secs.max(1e-9)
}

fn main() {
    if let Some(why) = containerd::unavailable() {
        skip(BENCH, &why);
        return;
    }
    if !fixtures::busybox_available() {
        skip(BENCH, "busybox-static is not installed");
        return;
    }
    let runs = env_usize("EMBER_BENCH_RUNS", 10, false);
    let tp_runs = env_usize("EMBER_BENCH_TP_RUNS", 3, true);

    let mut runtimes = vec![Runtime {
        name: "runc",
        runtime_type: RUNC_RUNTIME,
        extra: vec![],
        runs: vec![],
        throughput: vec![],
    }];
    let shim_dir = containerd::ember_shim_dir();
    // The config and state dir this bench makes for itself, removed at the end.
    let mut own_files: Vec<PathBuf> = Vec::new();
    match &shim_dir {
        Some(dir) => {
            // The reference measurement is the process backend; a microVM config
            // can be given with EMBER_CONFIG.
            let cfg = match std::env::var_os("EMBER_CONFIG") {
                Some(cfg) => PathBuf::from(cfg),
                None => {
                    let p = std::env::temp_dir()
                        .join(format!("ember-bench-{}.toml", std::process::id()));
                    std::fs::write(
                        &p,
                        format!(
                            "[sandbox]\nbackend = \"process\"\nstate_dir = \"/run/ember-bench-{}\"\n",
                            std::process::id()
                        ),
                    )
                    .expect("writing the bench config");
                    own_files.push(p.clone());
                    own_files.push(PathBuf::from(format!(
                        "/run/ember-bench-{}",
                        std::process::id()
                    )));
                    p
                }
            };
            println!("ember config: {}", cfg.display());
            let extra = vec![
                "--runtime-config-path".into(),
                cfg.to_string_lossy().into_owned(),
            ];
            println!("ember shim: {}", dir.join(containerd::EMBER_SHIM).display());
            runtimes.push(Runtime {
                name: "ember",
                runtime_type: EMBER_RUNTIME,
                extra,
                runs: vec![],
                throughput: vec![],
            });
        }
        None => println!(
            "note: {} not built (target/debug, target/release, $EMBER_SHIM_DIR, PATH); \
             measuring runc only",
            containerd::EMBER_SHIM
        ),
    }

    let ctrd = Containerd::start(Options {
        path_prepend: shim_dir.into_iter().collect(),
        ..Options::default()
    })
    .expect("starting containerd");
    let tar = ctrd.scratch().join("busybox.tar");
    busybox_image_tar(&tar, IMAGE).expect("building the image");
    ctrd.import_image(&tar, containerd::DEFAULT_NAMESPACE)
        .expect("importing the image");

    let pid = std::process::id();
    for rt in &runtimes {
        run_true(&ctrd, rt, &format!("warm-{}-{pid}", rt.name));
    }
    // Each run is printed as it ends: a long run (under emulation) still shows its progress.
    for i in 0..runs {
        for rt in &mut runtimes {
            let d = run_true(&ctrd, rt, &format!("true-{}-{pid}-{i}", rt.name));
            println!("run {i}: {} {:.1} ms", rt.name, d.as_secs_f64() * 1e3);
            rt.runs.push(d);
        }
    }
    for i in 0..tp_runs {
        for rt in &mut runtimes {
            let t = throughput(&ctrd, rt, &format!("dd-{}-{pid}-{i}", rt.name));
            println!("stdout run {i}: {} {t:.0} MiB/s", rt.name);
            rt.throughput.push(t);
        }
    }
    drop(ctrd);
    for f in &own_files {
        if f.is_dir() {
            // Only the empty `sandboxes/` folder is left once every sandbox was deleted.
            let _ = std::fs::remove_dir(f.join("sandboxes"));
            let _ = std::fs::remove_dir(f);
        } else {
            let _ = std::fs::remove_file(f);
        }
    }

    println!();
    println!("ctr run --rm /bin/true ({runs} runs) and 1 GiB stdout ({tp_runs} runs), medians");
    println!(
        "{:<8} {:<24} {:>10} {:>10} {:>12}",
        "runtime", "type", "run ms", "min ms", "stdout MiB/s"
    );
    for rt in &runtimes {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let min = rt.runs.iter().min().copied().unwrap_or_default();
        println!(
            "{:<8} {:<24} {:>10.1} {:>10.1} {:>12.0}",
            rt.name,
            rt.runtime_type,
            ms(median(&rt.runs)),
            ms(min),
            median(&rt.throughput)
        );
    }
    if let [runc, ember] = runtimes.as_slice() {
        let run = median(&ember.runs).as_secs_f64() / median(&runc.runs).as_secs_f64();
        if tp_runs == 0 {
            println!("ratio ember/runc: run {run:.2}x (stdout throughput not measured)");
        } else {
            println!(
                "ratio ember/runc: run {run:.2}x, stdout throughput {:.2}x",
                median(&ember.throughput) / median(&runc.throughput)
            );
        }
    }
}
