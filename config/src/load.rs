//! Finding, parsing and validating the configuration.
//!
//! Load order (the first that applies wins; files are not merged):
//! 1. the file named by the `EMBER_CONFIG` environment variable;
//! 2. an explicit path (`--config`, or containerd's runtime option `ConfigPath`);
//! 3. `/etc/ember/config.toml`, when it exists;
//! 4. ember's built-in defaults.

use crate::error::{ConfigError, Location};
use crate::schema::{
    AgentConfig, Backend, Config, HypervisorConfig, LogConfig, NetRateLimit, RateLimit,
    RateLimitBucket, SandboxConfig,
};
use crate::spans::{line_in, KeyIndex};
use serde_aux::serde_introspection::serde_introspect;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The system-wide config file.
pub const SYSTEM_CONFIG: &str = "/etc/ember/config.toml";
/// The environment variable that names a config file and overrides everything else.
pub const ENV_VAR: &str = "EMBER_CONFIG";

/// Accepted number of vCPUs.
pub const VCPUS_RANGE: (u32, u32) = (1, 254);
/// Accepted guest memory in MiB (the VMM also refuses more than the host has).
pub const MEMORY_MIB_RANGE: (u32, u32) = (64, 1 << 20);
/// Accepted number of empty virtio-blk slots per VM: the 19 IRQs the VMM gives virtio
/// devices, less the 5 a sandbox VM may use itself (see `HypervisorConfig::block_slots`).
pub const BLOCK_SLOTS_RANGE: (u32, u32) = (0, 14);
/// Accepted agent vsock ports (`0xffffffff` is VMADDR_PORT_ANY).
pub const AGENT_PORT_RANGE: (u32, u32) = (1, 0xffff_fffe);
/// Accepted caps of a sandbox VM's console log, in bytes (4 KiB to 1 GiB).
pub const CONSOLE_LOG_MAX_BYTES_RANGE: (u64, u64) = (4096, 1 << 30);
/// Largest `size` and `one_time_burst` of a rate limiter's bucket: 2^50 (a PiB, or 10^15
/// requests: beyond any real limit, and small enough for exact arithmetic in the VMM).
pub const RATE_LIMIT_SIZE_MAX: u64 = 1 << 50;
/// Accepted `refill_time` of a rate limiter's bucket, in milliseconds (up to an hour).
pub const RATE_LIMIT_REFILL_TIME_MS_RANGE: (u64, u64) = (1, 3_600_000);
/// The rate limiters' sections.
const RATE_LIMITS: [&str; 4] = [
    "hypervisor.block_rate_limit",
    "hypervisor.net_rate_limit.rx",
    "hypervisor.net_rate_limit.tx",
    "hypervisor.fs_rate_limit",
];
/// Accepted agent dial timeouts in milliseconds.
pub const DIAL_TIMEOUT_MS_RANGE: (u64, u64) = (100, 600_000);

/// Which source a configuration was loaded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The file named by `EMBER_CONFIG`.
    Env(PathBuf),
    /// An explicitly given file.
    Explicit(PathBuf),
    /// The system-wide file.
    System(PathBuf),
    /// No file: built-in defaults.
    Defaults,
}

impl Source {
    /// The file, unless the defaults were used.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Source::Env(p) | Source::Explicit(p) | Source::System(p) => Some(p),
            Source::Defaults => None,
        }
    }

    /// A short human description (`/x.toml (from EMBER_CONFIG)`).
    pub fn describe(&self) -> String {
        match self {
            Source::Env(p) => format!("{} (from {ENV_VAR})", p.display()),
            Source::Explicit(p) => format!("{} (given explicitly)", p.display()),
            Source::System(p) => format!("{} (system config)", p.display()),
            Source::Defaults => "built-in defaults (no config file found)".to_string(),
        }
    }
}

/// Whether loading also checks that the files the config points at exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssetCheck {
    /// Fail when the kernel/initrd/image needed by the backend is missing (what a
    /// sandbox start wants).
    Require,
    /// Do not look at the files (what `ember check` wants: it reports them itself).
    Skip,
}

/// The inputs of the load order. [`LoadOptions::from_env`] fills them from the process.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The value of `EMBER_CONFIG`, if set and non-empty.
    pub env: Option<OsString>,
    /// An explicit path (`--config` or containerd's `ConfigPath`).
    pub explicit: Option<PathBuf>,
    /// The system-wide config file (normally [`SYSTEM_CONFIG`]).
    pub system_path: PathBuf,
    /// Whether to check asset files.
    pub assets: AssetCheck,
}

impl LoadOptions {
    /// Options from this process's environment, with an optional explicit path.
    pub fn from_env(explicit: Option<PathBuf>) -> Self {
        Self {
            env: std::env::var_os(ENV_VAR).filter(|v| !v.is_empty()),
            explicit,
            system_path: PathBuf::from(SYSTEM_CONFIG),
            assets: AssetCheck::Require,
        }
    }

    /// The same options with a different asset check.
    pub fn assets(mut self, assets: AssetCheck) -> Self {
        self.assets = assets;
        self
    }
}

/// A loaded, validated configuration and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The configuration, with relative paths resolved against the file's folder.
    pub config: Config,
    /// Where it came from.
    pub source: Source,
}

/// Find the configuration by the load order, parse and validate it.
pub fn load(opts: &LoadOptions) -> Result<Loaded, ConfigError> {
    let source = locate(opts)?;
    let (config, src) = match source.path() {
        None => {
            let config = Config::default();
            validate(&config, None, None)?;
            (config, None)
        }
        Some(path) => {
            let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            (parse(&src, Some(path))?, Some(src))
        }
    };
    if opts.assets == AssetCheck::Require {
        let index = src.as_deref().and_then(KeyIndex::build);
        check_assets(&config, source.path(), index.as_ref())?;
    }
    Ok(Loaded { config, source })
}

/// Apply the load order: which source will be used.
pub fn locate(opts: &LoadOptions) -> Result<Source, ConfigError> {
    if let Some(env) = &opts.env {
        let path = PathBuf::from(env);
        if !path.exists() {
            return Err(ConfigError::EnvFileMissing { path });
        }
        return Ok(Source::Env(path));
    }
    if let Some(path) = &opts.explicit {
        if !path.exists() {
            return Err(ConfigError::ExplicitFileMissing { path: path.clone() });
        }
        return Ok(Source::Explicit(path.clone()));
    }
    if opts.system_path.exists() {
        return Ok(Source::System(opts.system_path.clone()));
    }
    Ok(Source::Defaults)
}

/// Parse and validate `src` (the text of `file`, if it came from one). Relative paths
/// are resolved against `file`'s folder. Asset files are not checked.
pub fn parse(src: &str, file: Option<&Path>) -> Result<Config, ConfigError> {
    let at = |line| Location {
        file: file.map(Path::to_path_buf),
        line,
    };
    let index = KeyIndex::build(src);
    if let Some(index) = &index {
        check_unknown_keys(index, &at)?;
    }
    let mut config: Config = toml::from_str(src).map_err(|e| {
        let offset = e.span().map(|s| s.start);
        let line = offset.map(|o| line_in(src, o));
        let entry = offset.and_then(|o| index.as_ref().and_then(|i| i.at(o)));
        match entry {
            Some(entry) => ConfigError::InvalidValue {
                at: at(line),
                key: entry.path.clone(),
                message: with_variant_hint(e.message()),
            },
            None => ConfigError::Syntax {
                at: at(line),
                message: e.message().trim().to_string(),
            },
        }
    })?;
    // `initrd` has a default; an `image` written in the file replaces it.
    let written = |key| index.as_ref().is_some_and(|i| i.get(key).is_some());
    if written("hypervisor.image") && !written("hypervisor.initrd") {
        config.hypervisor.initrd = None;
    }
    if let Some(dir) = file.and_then(Path::parent) {
        resolve_paths(&mut config, dir);
    }
    validate(&config, file, index.as_ref())?;
    Ok(config)
}

/// The valid keys of each section, taken from the schema structs themselves.
fn known_keys(section: &str) -> Option<&'static [&'static str]> {
    Some(match section {
        "" => serde_introspect::<Config>(),
        "hypervisor" => serde_introspect::<HypervisorConfig>(),
        "sandbox" => serde_introspect::<SandboxConfig>(),
        "agent" => serde_introspect::<AgentConfig>(),
        "log" => serde_introspect::<LogConfig>(),
        "hypervisor.net_rate_limit" => serde_introspect::<NetRateLimit>(),
        s if RATE_LIMITS.contains(&s) => serde_introspect::<RateLimit>(),
        s if s.rsplit_once('.').is_some_and(|(limit, bucket)| {
            RATE_LIMITS.contains(&limit) && ["bandwidth", "ops"].contains(&bucket)
        }) =>
        {
            serde_introspect::<RateLimitBucket>()
        }
        _ => return None,
    })
}

fn check_unknown_keys(
    index: &KeyIndex,
    at: &dyn Fn(Option<usize>) -> Location,
) -> Result<(), ConfigError> {
    for entry in index.entries() {
        // Keys below an unknown section were reported with the section itself.
        let Some(valid) = known_keys(&entry.section) else {
            continue;
        };
        if valid.contains(&entry.key.as_str()) {
            continue;
        }
        return Err(ConfigError::UnknownKey {
            at: at(Some(index.line_of(entry.key_span.start))),
            key: entry.path.clone(),
            section: entry.section.clone(),
            hint: match nearest(&entry.key, valid) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("valid keys: {}", valid.join(", ")),
            },
        });
    }
    Ok(())
}

/// The candidate closest to `word`, if it is close enough to be a plausible typo.
fn nearest(word: &str, candidates: &[&str]) -> Option<String> {
    let word = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(&word, c), *c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_string())
}

/// serde says "unknown variant `x`, expected one of `a`, `b`"; add the nearest one.
fn with_variant_hint(message: &str) -> String {
    let message = message.trim().to_string();
    let Some(rest) = message.strip_prefix("unknown variant `") else {
        return message;
    };
    let Some((given, expected)) = rest.split_once('`') else {
        return message;
    };
    let options: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    match nearest(given, &options) {
        Some(s) => format!("{message}; did you mean `{s}`?"),
        None => message,
    }
}

fn resolve_paths(config: &mut Config, dir: &Path) {
    let fix = |p: &mut PathBuf| {
        if p.is_relative() && !p.as_os_str().is_empty() {
            *p = dir.join(&*p);
        }
    };
    fix(&mut config.hypervisor.kernel);
    if let Some(p) = config.hypervisor.initrd.as_mut() {
        fix(p);
    }
    if let Some(p) = config.hypervisor.image.as_mut() {
        fix(p);
    }
    fix(&mut config.sandbox.state_dir);
}

fn validate(
    config: &Config,
    file: Option<&Path>,
    index: Option<&KeyIndex>,
) -> Result<(), ConfigError> {
    let at = |key: &str| location(file, index, key);
    let range = |key: &str, value: u64, (lo, hi): (u64, u64), unit: &str| {
        if (lo..=hi).contains(&value) {
            Ok(())
        } else {
            Err(ConfigError::OutOfRange {
                at: at(key),
                key: key.to_string(),
                value: value.to_string(),
                allowed: format!("{lo} to {hi}{unit}"),
            })
        }
    };
    let h = &config.hypervisor;
    range("hypervisor.vcpus", h.vcpus.into(), widen(VCPUS_RANGE), "")?;
    range(
        "hypervisor.memory_mib",
        h.memory_mib.into(),
        widen(MEMORY_MIB_RANGE),
        " MiB",
    )?;
    range(
        "hypervisor.block_slots",
        h.block_slots.into(),
        widen(BLOCK_SLOTS_RANGE),
        "",
    )?;
    range(
        "hypervisor.console_log_max_bytes",
        h.console_log_max_bytes,
        CONSOLE_LOG_MAX_BYTES_RANGE,
        " bytes",
    )?;
    range(
        "agent.port",
        config.agent.port.into(),
        widen(AGENT_PORT_RANGE),
        "",
    )?;
    range(
        "agent.dial_timeout_ms",
        config.agent.dial_timeout_ms,
        DIAL_TIMEOUT_MS_RANGE,
        " ms",
    )?;
    // As long as RATE_LIMITS, so that no section goes unchecked.
    let limits: [&RateLimit; RATE_LIMITS.len()] = [
        &h.block_rate_limit,
        &h.net_rate_limit.rx,
        &h.net_rate_limit.tx,
        &h.fs_rate_limit,
    ];
    for (section, limit) in RATE_LIMITS.iter().zip(limits) {
        for (name, bucket) in [("bandwidth", &limit.bandwidth), ("ops", &limit.ops)] {
            validate_bucket(&format!("{section}.{name}"), bucket, file, index)?;
        }
    }
    if h.initrd.is_some() && h.image.is_some() {
        return Err(ConfigError::Conflict {
            at: at("hypervisor.image"),
            message: "hypervisor.initrd and hypervisor.image are both set; the guest boots \
                      from one of them, so remove the other"
                .to_string(),
        });
    }
    if h.kernel_params.contains(['\n', '\0']) {
        return Err(ConfigError::InvalidValue {
            at: at("hypervisor.kernel_params"),
            key: "hypervisor.kernel_params".to_string(),
            message: "must be one line without NUL bytes".to_string(),
        });
    }
    if config.sandbox.state_dir.as_os_str().is_empty() {
        return Err(ConfigError::InvalidValue {
            at: at("sandbox.state_dir"),
            key: "sandbox.state_dir".to_string(),
            message: "must not be empty".to_string(),
        });
    }
    Ok(())
}

/// A rate limiter's bucket: all zero (no limit), or a size and a refill time in range.
fn validate_bucket(
    prefix: &str,
    bucket: &RateLimitBucket,
    file: Option<&Path>,
    index: Option<&KeyIndex>,
) -> Result<(), ConfigError> {
    if *bucket == RateLimitBucket::default() {
        return Ok(());
    }
    // The line of the key, or of the bucket's table when the key is not written.
    let at = |key: &str| {
        let written = index.is_some_and(|i| i.get(key).is_some());
        location(file, index, if written { key } else { prefix })
    };
    let (lo, hi) = RATE_LIMIT_REFILL_TIME_MS_RANGE;
    for (field, value, min, max, unit) in [
        ("size", bucket.size, 1, RATE_LIMIT_SIZE_MAX, ""),
        (
            "one_time_burst",
            bucket.one_time_burst,
            0,
            RATE_LIMIT_SIZE_MAX,
            "",
        ),
        ("refill_time", bucket.refill_time, lo, hi, " ms"),
    ] {
        if value > max {
            let key = format!("{prefix}.{field}");
            return Err(ConfigError::OutOfRange {
                at: at(&key),
                key,
                value: value.to_string(),
                allowed: format!("{min} to {max}{unit}"),
            });
        }
    }
    if bucket.size == 0 {
        let key = format!("{prefix}.size");
        return Err(ConfigError::InvalidValue {
            at: at(&key),
            key,
            message: format!(
                "must be 1 to {RATE_LIMIT_SIZE_MAX} when refill_time or one_time_burst is set \
                 (the bucket's capacity: bytes for bandwidth, requests or frames for ops); \
                 leave the whole bucket out for no limit"
            ),
        });
    }
    if bucket.refill_time == 0 {
        let key = format!("{prefix}.refill_time");
        return Err(ConfigError::InvalidValue {
            at: at(&key),
            key,
            message: format!(
                "must be {lo} to {hi} ms when size is set: the time to refill the bucket \
                 from empty to full"
            ),
        });
    }
    Ok(())
}

/// Where `key` is written: the file, and the line when the index has the key.
fn location(file: Option<&Path>, index: Option<&KeyIndex>, key: &str) -> Location {
    Location {
        file: file.map(Path::to_path_buf),
        line: index.and_then(|i| i.get(key).map(|e| i.line_of(e.value_span.start))),
    }
}

fn widen((lo, hi): (u32, u32)) -> (u64, u64) {
    (lo.into(), hi.into())
}

/// Check that the files the configured backend needs exist.
///
/// With `backend = "microvm"` that is the kernel and the initrd or image; the process
/// backend boots no guest and needs neither.
fn check_assets(
    config: &Config,
    file: Option<&Path>,
    index: Option<&KeyIndex>,
) -> Result<(), ConfigError> {
    if config.sandbox.backend != Backend::Microvm {
        return Ok(());
    }
    let missing = |key: &str, path: &Path| ConfigError::MissingFile {
        at: location(file, index, key),
        key: key.to_string(),
        path: path.to_path_buf(),
        why: "required when sandbox.backend = \"microvm\"; build the guest assets with \
              `make guest && make install`, set the path, or use sandbox.backend = \"process\""
            .to_string(),
    };
    let h = &config.hypervisor;
    if !h.kernel.is_file() {
        return Err(missing("hypervisor.kernel", &h.kernel));
    }
    if let Some(image) = &h.image {
        if !image.is_file() {
            return Err(missing("hypervisor.image", image));
        }
    } else if let Some(initrd) = &h.initrd {
        if !initrd.is_file() {
            return Err(missing("hypervisor.initrd", initrd));
        }
    }
    Ok(())
}
