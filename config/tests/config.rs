//! Tests of the schema, defaults, error messages and load order of `ember-config`.

use ember_config::*;
use std::fs;
use std::path::{Path, PathBuf};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).unwrap();
    p
}

fn err(src: &str) -> String {
    parse(src, Some(Path::new("/etc/ember/test.toml")))
        .expect_err("config should be rejected")
        .to_string()
}

fn opts(env: Option<&Path>, explicit: Option<&Path>, system: &Path) -> LoadOptions {
    LoadOptions {
        env: env.map(|p| p.as_os_str().to_owned()),
        explicit: explicit.map(Path::to_path_buf),
        system_path: system.to_path_buf(),
        assets: AssetCheck::Skip,
    }
}

#[test]
fn defaults_are_documented_values() {
    let c = Config::default();
    assert_eq!(c.hypervisor.kernel, Path::new(DEFAULT_KERNEL));
    assert_eq!(
        c.hypervisor.initrd.as_deref(),
        Some(Path::new(DEFAULT_INITRD))
    );
    assert_eq!(c.hypervisor.image, None);
    assert_eq!(c.hypervisor.vcpus, 1);
    assert_eq!(c.hypervisor.memory_mib, 256);
    assert_eq!(c.hypervisor.cpu_profile, CpuProfile::Auto);
    assert_eq!(c.hypervisor.block_slots, DEFAULT_BLOCK_SLOTS);
    assert_eq!(DEFAULT_BLOCK_SLOTS, 4);
    assert!(
        c.hypervisor.seccomp,
        "the VMM's seccomp filters are on by default"
    );
    assert_eq!(c.sandbox.backend, Backend::Microvm);
    assert_eq!(c.sandbox.state_dir, Path::new(DEFAULT_STATE_DIR));
    assert_eq!(c.agent.port, 1024);
    assert_eq!(c.agent.dial_timeout_ms, 60_000);
    assert_eq!(c.agent.log_level, LogLevel::Info);
    assert!(!c.agent.debug_console);
    assert_eq!(c.log.format, LogFormat::Text);
    // An empty file means all defaults.
    assert_eq!(parse("", None).unwrap(), c);
}

#[test]
fn example_config_parses_to_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("ember.toml.example");
    let text = fs::read_to_string(&path).unwrap();
    let parsed = parse(&text, Some(&path)).unwrap();
    assert_eq!(
        parsed,
        Config::default(),
        "the example must show the real defaults"
    );
}

#[test]
fn values_are_read() {
    let c = parse(
        "[hypervisor]\nvcpus = 4\nmemory_mib = 1024\ncpu_profile = \"emulation-safe\"\n\
         kernel_params = \"quiet\"\n[sandbox]\nbackend = \"process\"\n\
         [agent]\nport = 2000\nlog_level = \"debug\"\ndebug_console = true\n[log]\nformat = \"json\"\n",
        None,
    )
    .unwrap();
    assert_eq!(c.hypervisor.vcpus, 4);
    assert_eq!(c.hypervisor.memory_mib, 1024);
    assert_eq!(c.hypervisor.cpu_profile, CpuProfile::EmulationSafe);
    assert_eq!(c.hypervisor.kernel_params, "quiet");
    assert_eq!(c.sandbox.backend, Backend::Process);
    assert_eq!(c.agent.port, 2000);
    assert_eq!(c.agent.log_level, LogLevel::Debug);
    assert!(c.agent.debug_console);
    assert_eq!(c.log.format, LogFormat::Json);
}

#[test]
fn unknown_key_names_key_file_line_and_suggestion() {
    let msg = err("[hypervisor]\nvcpus = 2\n\nmemory_mb = 512\n");
    assert!(msg.contains("/etc/ember/test.toml:4"), "{msg}");
    assert!(msg.contains("unknown key `hypervisor.memory_mb`"), "{msg}");
    assert!(msg.contains("[hypervisor]"), "{msg}");
    assert!(msg.contains("did you mean `memory_mib`?"), "{msg}");
}

#[test]
fn unknown_key_without_near_match_lists_valid_keys() {
    let msg = err("[agent]\nzzzzzzzzzz = 1\n");
    assert!(msg.contains("test.toml:2"), "{msg}");
    assert!(
        msg.contains("valid keys: port, dial_timeout_ms, log_level, debug_console"),
        "{msg}"
    );
}

#[test]
fn unknown_section_is_named_with_suggestion() {
    let msg = err("# hello\n[hypervsor]\nvcpus = 2\n");
    assert!(msg.contains("test.toml:2"), "{msg}");
    assert!(msg.contains("unknown key `hypervsor`"), "{msg}");
    assert!(msg.contains("did you mean `hypervisor`?"), "{msg}");
}

#[test]
fn unknown_key_in_inline_table() {
    let msg = err("sandbox = { backend = \"process\", statedir = \"/x\" }\n");
    assert!(msg.contains("test.toml:1"), "{msg}");
    assert!(msg.contains("`sandbox.statedir`"), "{msg}");
    assert!(msg.contains("did you mean `state_dir`?"), "{msg}");
}

#[test]
fn zero_vcpus_is_out_of_range_with_line() {
    let msg = err("[hypervisor]\n\nvcpus = 0\n");
    assert!(msg.contains("test.toml:3"), "{msg}");
    assert!(
        msg.contains("hypervisor.vcpus = 0 is out of range: allowed 1 to 254"),
        "{msg}"
    );
}

#[test]
fn tiny_memory_is_out_of_range() {
    let msg = err("[hypervisor]\nmemory_mib = 1\n");
    assert!(msg.contains("test.toml:2"), "{msg}");
    assert!(
        msg.contains("hypervisor.memory_mib = 1 is out of range: allowed 64 to 1048576 MiB"),
        "{msg}"
    );
}

#[test]
fn block_slots_are_read_and_range_checked() {
    let c = parse("[hypervisor]\nblock_slots = 0\n", None).unwrap();
    assert_eq!(c.hypervisor.block_slots, 0);
    let c = parse("[hypervisor]\nblock_slots = 14\n", None).unwrap();
    assert_eq!(c.hypervisor.block_slots, 14);
    let msg = err("[hypervisor]\nvcpus = 1\nblock_slots = 15\n");
    assert!(msg.contains("test.toml:3"), "{msg}");
    assert!(
        msg.contains("hypervisor.block_slots = 15 is out of range: allowed 0 to 14"),
        "{msg}"
    );
    let msg = err("[hypervisor]\nblock_slot = 2\n");
    assert!(msg.contains("did you mean `block_slots`?"), "{msg}");
}

#[test]
fn console_log_cap_is_read_and_range_checked() {
    let c = parse("", None).unwrap();
    assert_eq!(
        c.hypervisor.console_log_max_bytes,
        ember_config::DEFAULT_CONSOLE_LOG_MAX_BYTES
    );
    let c = parse("[hypervisor]\nconsole_log_max_bytes = 65536\n", None).unwrap();
    assert_eq!(c.hypervisor.console_log_max_bytes, 65536);
    let msg = err("[hypervisor]\nconsole_log_max_bytes = 10\n");
    assert!(
        msg.contains(
            "hypervisor.console_log_max_bytes = 10 is out of range: allowed 4096 to 1073741824 bytes"
        ),
        "{msg}"
    );
}

#[test]
fn dial_timeout_and_port_ranges() {
    let msg = err("[agent]\ndial_timeout_ms = 5\n");
    assert!(
        msg.contains("agent.dial_timeout_ms = 5 is out of range: allowed 100 to 600000 ms"),
        "{msg}"
    );
    let msg = err("[agent]\nport = 0\n");
    assert!(msg.contains("agent.port = 0 is out of range"), "{msg}");
}

#[test]
fn wrong_type_names_key_and_line() {
    let msg = err("[hypervisor]\nvcpus = \"two\"\n");
    assert!(msg.contains("test.toml:2"), "{msg}");
    assert!(msg.contains("hypervisor.vcpus"), "{msg}");
    assert!(msg.contains("invalid type"), "{msg}");
}

#[test]
fn unknown_variant_suggests_nearest() {
    let msg = err("[hypervisor]\ncpu_profile = \"emulation_safe\"\n");
    assert!(msg.contains("test.toml:2"), "{msg}");
    assert!(msg.contains("hypervisor.cpu_profile"), "{msg}");
    assert!(msg.contains("did you mean `emulation-safe`?"), "{msg}");
    let msg = err("[sandbox]\nbackend = \"vm\"\n");
    assert!(msg.contains("expected `microvm` or `process`"), "{msg}");
}

#[test]
fn syntax_error_names_line() {
    let msg = err("[hypervisor]\nvcpus = = 2\n");
    assert!(msg.contains("test.toml:2"), "{msg}");
    assert!(msg.contains("not valid TOML"), "{msg}");
}

#[test]
fn initrd_and_image_conflict_but_image_alone_replaces_default_initrd() {
    let msg = err("[hypervisor]\ninitrd = \"/a\"\nimage = \"/b\"\n");
    assert!(
        msg.contains("hypervisor.initrd and hypervisor.image are both set"),
        "{msg}"
    );
    let c = parse("[hypervisor]\nimage = \"/b.ext4\"\n", None).unwrap();
    assert_eq!(c.hypervisor.initrd, None);
    assert_eq!(c.hypervisor.image.as_deref(), Some(Path::new("/b.ext4")));
}

#[test]
fn relative_paths_resolve_against_the_config_folder() {
    let c = parse(
        "[hypervisor]\nkernel = \"guest/vmlinux\"\n",
        Some(Path::new("/opt/ember/config.toml")),
    )
    .unwrap();
    assert_eq!(c.hypervisor.kernel, Path::new("/opt/ember/guest/vmlinux"));
}

#[test]
fn missing_kernel_is_an_error_for_microvm_only() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "c.toml",
        "[hypervisor]\nvcpus = 1\nkernel = \"nope/vmlinux\"\n",
    );
    let o = opts(None, Some(&cfg), &dir.path().join("none.toml")).assets(AssetCheck::Require);
    let msg = load(&o).unwrap_err().to_string();
    assert!(msg.contains("c.toml:3"), "{msg}");
    assert!(msg.contains("hypervisor.kernel"), "{msg}");
    assert!(msg.contains("nope/vmlinux: file does not exist"), "{msg}");
    assert!(msg.contains("sandbox.backend = \"microvm\""), "{msg}");

    // With every asset present it loads.
    write(dir.path(), "vmlinux", "k");
    write(dir.path(), "initramfs.cpio", "i");
    write(
        dir.path(),
        "ok.toml",
        "[hypervisor]\nkernel = \"vmlinux\"\ninitrd = \"initramfs.cpio\"\n",
    );
    let o = opts(
        None,
        Some(&dir.path().join("ok.toml")),
        &dir.path().join("none.toml"),
    )
    .assets(AssetCheck::Require);
    load(&o).unwrap();

    // A missing initrd is named too.
    write(
        dir.path(),
        "noinitrd.toml",
        "[hypervisor]\nkernel = \"vmlinux\"\ninitrd = \"gone.cpio\"\n",
    );
    let o = opts(
        None,
        Some(&dir.path().join("noinitrd.toml")),
        &dir.path().join("none.toml"),
    )
    .assets(AssetCheck::Require);
    let msg = load(&o).unwrap_err().to_string();
    assert!(
        msg.contains("hypervisor.initrd") && msg.contains("gone.cpio"),
        "{msg}"
    );

    // The process backend boots no guest and needs no kernel.
    write(
        dir.path(),
        "p.toml",
        "[hypervisor]\nkernel = \"nope\"\n[sandbox]\nbackend = \"process\"\n",
    );
    let o = opts(
        None,
        Some(&dir.path().join("p.toml")),
        &dir.path().join("none.toml"),
    )
    .assets(AssetCheck::Require);
    assert_eq!(load(&o).unwrap().config.sandbox.backend, Backend::Process);
}

#[test]
fn load_order_env_then_explicit_then_system_then_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let env = write(dir.path(), "env.toml", "[hypervisor]\nvcpus = 3\n");
    let explicit = write(dir.path(), "explicit.toml", "[hypervisor]\nvcpus = 2\n");
    let system = write(dir.path(), "system.toml", "[hypervisor]\nvcpus = 5\n");
    let absent = dir.path().join("absent.toml");

    let l = load(&opts(Some(&env), Some(&explicit), &system)).unwrap();
    assert_eq!(
        (l.source.clone(), l.config.hypervisor.vcpus),
        (Source::Env(env.clone()), 3)
    );

    let l = load(&opts(None, Some(&explicit), &system)).unwrap();
    assert_eq!(
        (l.source.clone(), l.config.hypervisor.vcpus),
        (Source::Explicit(explicit), 2)
    );

    let l = load(&opts(None, None, &system)).unwrap();
    assert_eq!(
        (l.source.clone(), l.config.hypervisor.vcpus),
        (Source::System(system.clone()), 5)
    );

    let l = load(&opts(None, None, &absent)).unwrap();
    assert_eq!(l.source, Source::Defaults);
    assert_eq!(l.config, Config::default());
}

#[test]
fn missing_env_or_explicit_file_is_an_error_not_a_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let system = write(dir.path(), "system.toml", "");
    let gone = dir.path().join("gone.toml");
    let msg = load(&opts(Some(&gone), None, &system))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("EMBER_CONFIG") && msg.contains("gone.toml"),
        "{msg}"
    );
    let msg = load(&opts(None, Some(&gone), &system))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("gone.toml does not exist"), "{msg}");
}

#[test]
fn a_bad_file_anywhere_in_the_order_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let system = write(
        dir.path(),
        "system.toml",
        "[sandbox]\nbackedn = \"process\"\n",
    );
    let msg = load(&opts(None, None, &system)).unwrap_err().to_string();
    assert!(msg.contains("system.toml:2"), "{msg}");
    assert!(msg.contains("did you mean `backend`?"), "{msg}");
}

#[test]
fn from_env_reads_ember_config() {
    // The only test that touches the process environment.
    std::env::set_var(ENV_VAR, "/some/where.toml");
    let o = LoadOptions::from_env(None);
    std::env::remove_var(ENV_VAR);
    assert_eq!(
        o.env.as_deref(),
        Some(std::ffi::OsStr::new("/some/where.toml"))
    );
    assert_eq!(o.system_path, Path::new(SYSTEM_CONFIG));
    assert_eq!(o.assets, AssetCheck::Require);
}

#[test]
fn seccomp_can_be_turned_off_and_must_be_a_boolean() {
    let c = parse("[hypervisor]\nseccomp = false\n", None).unwrap();
    assert!(!c.hypervisor.seccomp);
    let msg = err("[hypervisor]\nseccomp = \"off\"\n");
    assert!(msg.contains("/etc/ember/test.toml:2"), "{msg}");
    assert!(msg.contains("seccomp"), "{msg}");
}

#[test]
fn rate_limits_are_unlimited_by_default_and_read_as_written() {
    let d = Config::default().hypervisor;
    assert_eq!(d.block_rate_limit, RateLimit::default());
    assert_eq!(d.net_rate_limit, NetRateLimit::default());
    let c = parse(
        "[hypervisor.block_rate_limit]\n\
         bandwidth = { size = 10485760, refill_time = 1000 }\n\
         [hypervisor.block_rate_limit.ops]\nsize = 100\none_time_burst = 50\nrefill_time = 500\n\
         [hypervisor.net_rate_limit.rx.bandwidth]\nsize = 1250000\nrefill_time = 100\n\
         [hypervisor.net_rate_limit.tx]\nops = { size = 1000, refill_time = 1000 }\n",
        None,
    )
    .unwrap();
    let h = c.hypervisor;
    assert_eq!(
        h.block_rate_limit,
        RateLimit {
            bandwidth: RateLimitBucket {
                size: 10 << 20,
                one_time_burst: 0,
                refill_time: 1000
            },
            ops: RateLimitBucket {
                size: 100,
                one_time_burst: 50,
                refill_time: 500
            },
        }
    );
    assert_eq!(h.net_rate_limit.rx.bandwidth.size, 1_250_000);
    assert_eq!(h.net_rate_limit.rx.ops, RateLimitBucket::default());
    assert_eq!(h.net_rate_limit.tx.ops.size, 1000);
    assert_eq!(h.net_rate_limit.tx.bandwidth, RateLimitBucket::default());
    // An all-zero bucket is the same as none.
    let c = parse(
        "[hypervisor.block_rate_limit.ops]\nsize = 0\nrefill_time = 0\n",
        None,
    )
    .unwrap();
    assert_eq!(c.hypervisor.block_rate_limit, RateLimit::default());
}

#[test]
fn nonsense_rate_limits_are_refused_naming_the_key_and_line() {
    let msg = err(
        "[hypervisor]\nvcpus = 1\n[hypervisor.block_rate_limit.bandwidth]\nrefill_time = 1000\n",
    );
    assert!(msg.contains("test.toml:3"), "{msg}");
    assert!(
        msg.contains("hypervisor.block_rate_limit.bandwidth.size: must be 1 to 1125899906842624"),
        "{msg}"
    );
    let msg = err("[hypervisor.net_rate_limit.tx.ops]\nsize = 10\n");
    assert!(msg.contains("test.toml:1"), "{msg}");
    assert!(
        msg.contains("hypervisor.net_rate_limit.tx.ops.refill_time: must be 1 to 3600000 ms"),
        "{msg}"
    );
    let msg = err(
        "[hypervisor.net_rate_limit.rx.bandwidth]\nrefill_time = 10\nsize = 2000000000000000000\n",
    );
    assert!(msg.contains("test.toml:3"), "{msg}");
    assert!(
        msg.contains(
            "hypervisor.net_rate_limit.rx.bandwidth.size = 2000000000000000000 is out of range: allowed 1 to 1125899906842624"
        ),
        "{msg}"
    );
    let msg = err("[hypervisor.block_rate_limit.ops]\nsize = 1\nrefill_time = 3600001\n");
    assert!(
        msg.contains("hypervisor.block_rate_limit.ops.refill_time = 3600001 is out of range: allowed 1 to 3600000 ms"),
        "{msg}"
    );
    let msg = err("[hypervisor.block_rate_limit.ops]\nsize = 1\nrefill_time = 1\none_time_burst = 2000000000000000000\n");
    assert!(
        msg.contains("hypervisor.block_rate_limit.ops.one_time_burst = 2000000000000000000 is out of range: allowed 0 to"),
        "{msg}"
    );
    let msg = err("[hypervisor.block_rate_limit.ops]\nsize = -1\nrefill_time = 1\n");
    assert!(msg.contains("test.toml:2"), "{msg}");
    assert!(
        msg.contains("hypervisor.block_rate_limit.ops.size"),
        "{msg}"
    );
    let msg = err("[hypervisor.block_rate_limit.bandwidth]\nsize = 1\nrefil_time = 5\n");
    assert!(msg.contains("test.toml:3"), "{msg}");
    assert!(
        msg.contains("unknown key `hypervisor.block_rate_limit.bandwidth.refil_time`"),
        "{msg}"
    );
    assert!(msg.contains("did you mean `refill_time`?"), "{msg}");
    let msg = err("[hypervisor.net_rate_limit]\nrxx = { ops = { size = 1, refill_time = 1 } }\n");
    assert!(
        msg.contains("unknown key `hypervisor.net_rate_limit.rxx`"),
        "{msg}"
    );
    assert!(msg.contains("did you mean `rx`?"), "{msg}");
    let msg = err("[hypervisor.block_rate_limit]\nbandwith = { size = 1, refill_time = 1 }\n");
    assert!(msg.contains("did you mean `bandwidth`?"), "{msg}");
}

#[test]
fn fs_rate_limit_is_off_by_default_read_as_written_and_validated() {
    assert_eq!(
        Config::default().hypervisor.fs_rate_limit,
        RateLimit::default()
    );
    let c = parse(
        "[hypervisor.fs_rate_limit]\n\
         bandwidth = { size = 52428800, refill_time = 1000, one_time_burst = 1048576 }\n\
         [hypervisor.fs_rate_limit.ops]\nsize = 2000\nrefill_time = 1000\n",
        None,
    )
    .unwrap();
    assert_eq!(
        c.hypervisor.fs_rate_limit,
        RateLimit {
            bandwidth: RateLimitBucket {
                size: 50 << 20,
                one_time_burst: 1 << 20,
                refill_time: 1000
            },
            ops: RateLimitBucket {
                size: 2000,
                one_time_burst: 0,
                refill_time: 1000
            },
        }
    );
    assert_eq!(c.hypervisor.block_rate_limit, RateLimit::default());

    let msg = err("[hypervisor]\nvcpus = 1\n[hypervisor.fs_rate_limit.ops]\nrefill_time = 100\n");
    assert!(msg.contains("/etc/ember/test.toml:3"), "{msg}");
    assert!(
        msg.contains("hypervisor.fs_rate_limit.ops.size: must be 1 to 1125899906842624"),
        "{msg}"
    );
    let msg = err("[hypervisor.fs_rate_limit.bandwidth]\nsize = 4096\n");
    assert!(msg.contains("test.toml:1"), "{msg}");
    assert!(
        msg.contains("hypervisor.fs_rate_limit.bandwidth.refill_time: must be 1 to 3600000 ms"),
        "{msg}"
    );
    let msg = err("[hypervisor.fs_rate_limit.ops]\nsize = 10\nrefill_time = 3600001\n");
    assert!(msg.contains("test.toml:3"), "{msg}");
    assert!(
        msg.contains("hypervisor.fs_rate_limit.ops.refill_time = 3600001 is out of range: allowed 1 to 3600000 ms"),
        "{msg}"
    );
    let msg = err("[hypervisor.fs_rate_limit]\nops = { size = 1, refill_time = 1, burst = 5 }\n");
    assert!(
        msg.contains("unknown key `hypervisor.fs_rate_limit.ops.burst`"),
        "{msg}"
    );
    let msg = err("[hypervisor.fs_rate_limit]\nbandwith = { size = 1, refill_time = 1 }\n");
    assert!(msg.contains("test.toml:2"), "{msg}");
    assert!(msg.contains("did you mean `bandwidth`?"), "{msg}");
}
