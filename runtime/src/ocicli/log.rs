//! `--log FILE` and `--log-format text|json`: where errors go for callers that read them
//! back (containerd's runc shim and conmon read the last `"level":"error"` JSON line of the
//! log file to explain a failed command).

use std::io::Write;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// The format of `--log` lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// logrus-style text: `time="..." level=error msg="..."`.
    #[default]
    Text,
    /// One JSON object a line: `{"level":"error","msg":"...","time":"..."}`.
    Json,
}

/// Appends log lines to `--log` (nothing without it).
#[derive(Debug, Clone, Default)]
pub struct Logger {
    /// The `--log` file.
    pub file: Option<PathBuf>,
    /// The `--log-format`.
    pub format: LogFormat,
}

impl Logger {
    /// The line for one message at `level`.
    pub fn line(&self, level: &str, msg: &str) -> String {
        let time = rfc3339(SystemTime::now());
        match self.format {
            LogFormat::Json => {
                serde_json::json!({"level": level, "msg": msg, "time": time}).to_string()
            }
            LogFormat::Text => format!(
                "time={} level={level} msg={}",
                serde_json::Value::String(time),
                serde_json::Value::String(msg.to_string())
            ),
        }
    }

    /// Appends one line at `level` to the log file; failures to write are ignored (the
    /// message also goes to stderr).
    pub fn log(&self, level: &str, msg: &str) {
        let Some(path) = &self.file else { return };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{}", self.line(level, msg));
        }
    }

    /// Logs an error.
    pub fn error(&self, msg: &str) {
        self.log("error", msg);
    }
}

/// `t` as RFC 3339 in UTC with nanoseconds (`2026-11-28T12:00:00.123456789Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_709_210_096, 5);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.000000005Z");
    }

    #[test]
    fn json_lines_carry_level_and_message() {
        let l = Logger {
            file: None,
            format: LogFormat::Json,
        };
        let v: serde_json::Value = serde_json::from_str(&l.line("error", "a \"b\"")).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "a \"b\"");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }
}
