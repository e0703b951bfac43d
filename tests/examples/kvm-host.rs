//! `kvm-host`: the nested KVM test host on the command line (`scripts/kvm-host.sh`).
//!
//! ```text
//! kvm-host prepare                      prepare (or find) the cached assets, print them
//! kvm-host run [OPTIONS] -- COMMAND...  run COMMAND inside; exit with its status
//! kvm-host test [OPTIONS] [-- CARGO-ARGS] run every `hw_kvm::` test of the workspace inside
//! ```
//!
//! `test` builds the test binaries (`cargo test --no-run CARGO-ARGS`), keeps those with
//! tests named `hw_kvm::...`, and runs each binary's `hw_kvm::` tests in its own outer VM
//! (per binary `--timeout`, default 900 s, cut down so that nothing runs past `--deadline
//! UNIX-SECS` when given; `--test-threads N` tests at a time in each, default 1; `--jobs N` outer VMs at
//! once, default 1; `--cpus N` vCPUs for each, default 2; `--cgroups` as for `run`, and a list such as
//! `unified,hybrid` runs every binary under each; `--filter hw_kvm::NAME` runs only the
//! tests whose names contain it). It prints each binary's test output
//! (libtest's `test result:` lines included) and `nested: ... reruns N`; exit 0 when every
//! binary passed.
//!
//! Options of `run`: `--timeout SECS` (default 600), `--memory-mib N` (4096), `--cpus N`
//! (2), `--cgroups unified|hybrid` (unified), `--cwd DIR` (the current folder),
//! `--env K=V` (repeat), `--console FILE` (keep the outer VM's console there).
//! The command's output is printed as it comes; on a timeout or a crash of the outer VM
//! the last lines of both consoles are. Exit status: the command's; 124 timeout; 125 the
//! nested host could not run (a SKIP line names what is missing); 126 the outer VM
//! failed twice.

use ember_tests::kvm_host::{print_block, Cgroups, Job, KvmHost, TestBinary};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const USAGE: &str = "usage: kvm-host prepare | kvm-host test [--timeout SECS] [--deadline UNIX-SECS] [--test-threads N] [--jobs N] [--cpus N] [--cgroups unified,hybrid] [--filter hw_kvm::NAME] [-- CARGO-ARGS] | kvm-host run [--timeout SECS] [--memory-mib N] [--cpus N] [--cgroups unified|hybrid] [--cwd DIR] [--env K=V]... [--console FILE] -- COMMAND...";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("prepare") => match KvmHost::prepare() {
            Ok(h) => {
                println!("kernel    {}", h.assets.kernel.display());
                println!("modules   {}", h.assets.modules.display());
                println!("initramfs {}", h.assets.initramfs.display());
                println!("release   {}", h.assets.release);
                ExitCode::SUCCESS
            }
            Err(e) if e.is_unavailable() => {
                eprintln!("SKIP kvm-host: {e}");
                ExitCode::from(125)
            }
            Err(e) => {
                eprintln!("kvm-host: {e}");
                ExitCode::from(125)
            }
        },
        Some("run") => run(&args[1..]),
        Some("test") => test(&args[1..]),
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> ExitCode {
    let mut job = Job::new(String::new());
    let mut memory = None;
    let mut cpus = None;
    let mut cgroups = None;
    let mut console = None::<PathBuf>;
    let mut i = 0;
    let value = |i: usize| -> Result<&String, String> {
        args.get(i + 1)
            .ok_or_else(|| format!("{} needs a value", args[i]))
    };
    let parsed: Result<(), String> = (|| {
        while i < args.len() {
            match args[i].as_str() {
                "--" => {
                    let words: Vec<String> = args[i + 1..]
                        .iter()
                        .map(|w| ember_tests::kvm_host::shell_quote(w))
                        .collect();
                    job.command = words.join(" ");
                    return Ok(());
                }
                "--timeout" => {
                    let s: u64 = value(i)?.parse().map_err(|_| "--timeout takes seconds")?;
                    job.timeout = Duration::from_secs(s);
                }
                "--memory-mib" => {
                    memory = Some(
                        value(i)?
                            .parse()
                            .map_err(|_| "--memory-mib takes a number")?,
                    )
                }
                "--cpus" => cpus = Some(value(i)?.parse().map_err(|_| "--cpus takes a number")?),
                "--cgroups" => cgroups = Some(value(i)?.parse()?),
                "--cwd" => job.cwd = PathBuf::from(value(i)?),
                "--console" => console = Some(PathBuf::from(value(i)?)),
                "--env" => {
                    let (k, v) = value(i)?.split_once('=').ok_or("--env takes K=V")?;
                    job.env.push((k.into(), v.into()));
                }
                other => return Err(format!("unknown option {other}")),
            }
            i += 2;
        }
        Err("no command: put it after --".into())
    })();
    if let Err(e) = parsed {
        eprintln!("kvm-host: {e}\n{USAGE}");
        return ExitCode::from(2);
    }
    let mut host = match KvmHost::prepare() {
        Ok(h) => h,
        Err(e) if e.is_unavailable() => {
            eprintln!("SKIP kvm-host: {e}");
            return ExitCode::from(125);
        }
        Err(e) => {
            eprintln!("kvm-host: {e}");
            return ExitCode::from(125);
        }
    };
    if let Some(m) = memory {
        host.memory_mib = m;
    }
    if let Some(c) = cpus {
        host.cpus = c;
    }
    if let Some(c) = cgroups {
        host.cgroups = c;
    }
    job.echo = true;
    match host.run_with_rerun(&job) {
        Ok((outcome, reruns)) => {
            if let Some(path) = console {
                let _ = std::fs::write(path, &outcome.console);
            }
            eprintln!(
                "kvm-host: finished in {:.1} s, status {}, reruns {reruns}",
                outcome.elapsed.as_secs_f64(),
                outcome
                    .status
                    .map_or_else(|| "none".to_string(), |s| s.to_string())
            );
            match (outcome.status, &outcome.outer_failure) {
                (Some(s), None) => ExitCode::from(u8::try_from(s).unwrap_or(1)),
                _ => {
                    eprintln!(
                        "kvm-host: the outer VM failed twice: {}\n{}",
                        outcome
                            .outer_failure
                            .as_deref()
                            .unwrap_or("no status recorded"),
                        outcome.tails(30)
                    );
                    ExitCode::from(126)
                }
            }
        }
        Err(e) if e.is_unavailable() => {
            eprintln!("SKIP kvm-host: {e}");
            ExitCode::from(125)
        }
        Err(e @ ember_tests::kvm_host::KvmHostError::Timeout { .. }) => {
            eprintln!("kvm-host: {e}");
            ExitCode::from(124)
        }
        Err(e) => {
            eprintln!("kvm-host: {e}");
            ExitCode::from(1)
        }
    }
}

/// What every test that needs hardware KVM has in its name.
const FILTER: &str = "hw_kvm::";

fn test(args: &[String]) -> ExitCode {
    let mut timeout = Duration::from_secs(900);
    let mut layouts = vec![ember_tests::kvm_host::Cgroups::Unified];
    let mut cargo_args = Vec::new();
    let mut filter = FILTER.to_string();
    let mut deadline = None;
    let mut threads = 1;
    let mut jobs = 1usize;
    let mut cpus = None;
    let mut i = 0;
    while i < args.len() {
        match (args[i].as_str(), args.get(i + 1)) {
            ("--", _) => {
                cargo_args = args[i + 1..].to_vec();
                break;
            }
            ("--timeout", Some(v)) => match v.parse() {
                Ok(s) => timeout = Duration::from_secs(s),
                Err(_) => return usage("--timeout takes seconds"),
            },
            ("--deadline", Some(v)) => match v.parse::<u64>() {
                Ok(at) => {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs();
                    deadline = Some(Instant::now() + Duration::from_secs(at.saturating_sub(now)));
                }
                Err(_) => return usage("--deadline takes a time in seconds since 1970"),
            },
            ("--test-threads", Some(v)) => match v.parse() {
                Ok(n) if n > 0 => threads = n,
                _ => return usage("--test-threads takes a number above 0"),
            },
            ("--jobs", Some(v)) => match v.parse() {
                Ok(n) if n > 0 => jobs = n,
                _ => return usage("--jobs takes a number above 0"),
            },
            ("--cpus", Some(v)) => match v.parse() {
                Ok(n) if n > 0 => cpus = Some(n),
                _ => return usage("--cpus takes a number above 0"),
            },
            ("--filter", Some(v)) if v.starts_with(FILTER) => filter = v.clone(),
            ("--filter", Some(_)) => return usage(&format!("--filter must start with {FILTER}")),
            ("--cgroups", Some(v)) => match v.split(',').map(str::parse).collect() {
                Ok(l) => layouts = l,
                Err(e) => return usage(&e),
            },
            (other, _) => return usage(&format!("unknown option or missing value: {other}")),
        }
        i += 2;
    }
    let mut host = match KvmHost::prepare() {
        Ok(h) => h,
        Err(e) if e.is_unavailable() => {
            eprintln!("SKIP nested KVM test host: {e}");
            return ExitCode::from(125);
        }
        Err(e) => {
            eprintln!("kvm-host: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(c) = cpus {
        host.cpus = c;
    }
    let binaries = match ember_tests::kvm_host::test_binaries(&cargo_args, &filter) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("kvm-host: {e}");
            return ExitCode::from(1);
        }
    };
    // Every (layout, binary) pair is one outer VM; `jobs` of them run at once, taken in
    // order from a shared queue. The binaries come longest first (most hw_kvm tests), so
    // the last one to start is a short one.
    let queue: Vec<(Cgroups, &TestBinary)> = layouts
        .iter()
        .flat_map(|l| binaries.iter().map(move |b| (*l, b)))
        .collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let reruns = AtomicU32::new(0);
    let one = |layout: Cgroups, b: &TestBinary| {
        let name = b
            .exe
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let mut host = host.clone();
        host.cgroups = layout;
        eprintln!("nested: {name} ({layout:?} cgroups)");
        let env = [("EMBER_NESTED_CGROUPS".to_string(), format!("{layout:?}"))];
        if deadline.is_some_and(|d| Instant::now() >= d) {
            failed.fetch_add(1, Ordering::Relaxed);
            print_block(&format!(
                "nested: {name} FAILED: not run, the --deadline has passed\n"
            ));
            return;
        }
        match host.run_tests(b, &filter, &env, timeout, deadline, threads) {
            Ok((outcome, r)) => {
                reruns.fetch_add(r, Ordering::Relaxed);
                let mut block = outcome.output.clone();
                if !outcome.success() || outcome.outer_failure.is_some() {
                    failed.fetch_add(1, Ordering::Relaxed);
                    block += &format!(
                        "nested: {name} FAILED (status {:?}, {:.0} s)\n{}\n",
                        outcome.status,
                        outcome.elapsed.as_secs_f64(),
                        outcome.tails(40)
                    );
                    print_block(&block);
                } else {
                    print_block(&block);
                    eprintln!(
                        "nested: {name} ({layout:?} cgroups) passed in {:.0} s",
                        outcome.elapsed.as_secs_f64()
                    );
                }
            }
            Err(e) => {
                failed.fetch_add(1, Ordering::Relaxed);
                print_block(&format!("nested: {name} FAILED: {e}\n"));
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 0..jobs.min(queue.len()) {
            s.spawn(|| {
                while let Some((layout, b)) = queue.get(next.fetch_add(1, Ordering::Relaxed)) {
                    one(*layout, b);
                }
            });
        }
    });
    let failed = failed.into_inner();
    println!(
        "nested: {} test binaries x {} cgroup layouts, {failed} failed, reruns {}",
        binaries.len(),
        layouts.len(),
        reruns.into_inner()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn usage(e: &str) -> ExitCode {
    eprintln!("kvm-host: {e}\n{USAGE}");
    ExitCode::from(2)
}
