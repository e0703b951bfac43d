//! Task stats: the agent's cgroup numbers as containerd's cgroup v1 `Metrics` message (the
//! type `ctr task metrics` and the CRI plugin decode).

use containerd_shim_protos::cgroups::metrics::{
    BlkIOEntry, BlkIOStat, CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat, Throttle,
};
use ember_agent_protocol::agent::StatsContainerResponse;
use protobuf::well_known_types::any::Any;
use protobuf::Message;

/// The type URL containerd registers for cgroup v1 metrics.
pub const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";

/// Converts the agent's stats.
pub fn to_metrics(s: &StatsContainerResponse) -> Metrics {
    let mut m = Metrics::new();
    if let Some(cpu) = s.cpu.as_ref() {
        let mut usage = CPUUsage::new();
        usage.total = cpu.usage_total_ns;
        usage.user = cpu.usage_user_ns;
        usage.kernel = cpu.usage_kernel_ns;
        let mut thr = Throttle::new();
        thr.throttled_periods = cpu.throttled_periods;
        thr.throttled_time = cpu.throttled_time_ns;
        let mut c = CPUStat::new();
        c.usage = Some(usage).into();
        c.throttling = Some(thr).into();
        m.cpu = Some(c).into();
    }
    if let Some(mem) = s.memory.as_ref() {
        let mut e = MemoryEntry::new();
        e.usage = mem.usage_bytes;
        e.max = mem.max_usage_bytes;
        e.limit = mem.limit_bytes;
        e.failcnt = mem.failcnt;
        let mut ms = MemoryStat::new();
        ms.cache = mem.cache_bytes;
        ms.usage = Some(e).into();
        m.memory = Some(ms).into();
    }
    if let Some(p) = s.pids.as_ref() {
        let mut ps = PidsStat::new();
        ps.current = p.current;
        ps.limit = p.limit;
        m.pids = Some(ps).into();
    }
    if let Some(io) = s.io.as_ref() {
        let entry = |op: &str, value: u64| {
            let mut e = BlkIOEntry::new();
            e.op = op.into();
            e.value = value;
            e
        };
        let mut b = BlkIOStat::new();
        b.io_service_bytes_recursive =
            vec![entry("Read", io.read_bytes), entry("Write", io.write_bytes)];
        b.io_serviced_recursive = vec![entry("Read", io.read_ops), entry("Write", io.write_ops)];
        m.blkio = Some(b).into();
    }
    m
}

/// The metrics packed for StatsResponse.
pub fn to_any(m: &Metrics) -> Any {
    Any {
        type_url: METRICS_TYPE_URL.into(),
        value: m.write_to_bytes().expect("metrics encode"),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_agent_protocol::agent::{CpuStats, MemoryStats, PidsStats};

    #[test]
    fn agent_stats_map_to_cgroup_metrics() {
        let mut s = StatsContainerResponse::new();
        let mut cpu = CpuStats::new();
        cpu.usage_total_ns = 5;
        s.cpu = Some(cpu).into();
        let mut mem = MemoryStats::new();
        mem.usage_bytes = 4096;
        mem.limit_bytes = 1 << 20;
        s.memory = Some(mem).into();
        let mut p = PidsStats::new();
        p.current = 2;
        s.pids = Some(p).into();
        let m = to_metrics(&s);
        assert_eq!(m.cpu.usage.total, 5);
        assert_eq!(m.memory.usage.usage, 4096);
        assert_eq!(m.memory.usage.limit, 1 << 20);
        assert_eq!(m.pids.current, 2);
        let any = to_any(&m);
        assert_eq!(any.type_url, METRICS_TYPE_URL);
        assert_eq!(Metrics::parse_from_bytes(&any.value).unwrap(), m);
    }
}
