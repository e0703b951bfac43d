//! `ember-config`: ember's configuration.
//!
//! It owns the TOML schema ([`Config`] and its sections), the built-in defaults, the load
//! order (`EMBER_CONFIG` → explicit path → `/etc/ember/config.toml` → defaults, see
//! [`load`]) and validation whose errors name the file, the line and the key, suggest the
//! nearest valid key for a typo, and state the allowed range of a value.

mod error;
mod load;
mod schema;
mod spans;

pub use error::{ConfigError, Location};
pub use load::{
    load, locate, parse, AssetCheck, LoadOptions, Loaded, Source, AGENT_PORT_RANGE,
    BLOCK_SLOTS_RANGE, CONSOLE_LOG_MAX_BYTES_RANGE, DIAL_TIMEOUT_MS_RANGE, ENV_VAR,
    MEMORY_MIB_RANGE, RATE_LIMIT_REFILL_TIME_MS_RANGE, RATE_LIMIT_SIZE_MAX, SYSTEM_CONFIG,
    VCPUS_RANGE,
};
pub use schema::{
    AgentConfig, Backend, Config, CpuProfile, HypervisorConfig, LogConfig, LogFormat, LogLevel,
    NetRateLimit, RateLimit, RateLimitBucket, SandboxConfig, DEFAULT_AGENT_PORT,
    DEFAULT_BLOCK_SLOTS, DEFAULT_CONSOLE_LOG_MAX_BYTES, DEFAULT_INITRD, DEFAULT_KERNEL,
    DEFAULT_STATE_DIR,
};
