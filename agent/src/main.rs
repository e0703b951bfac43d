//! `ember-agent`: the agent that runs as PID 1 inside an ember microVM (or as a host
//! process for the `process` sandbox backend).
//!
//! It owns the guest's init duties (mounting /proc, /sys, /dev, reaping zombies), the
//! ttrpc server of `ember-agent-protocol`, the container lifecycle (through youki's
//! `libcontainer`) and the stdio streams of container processes.

fn main() {
    eprintln!("ember-agent: the agent is not built yet (see the agent issue)");
    std::process::exit(1);
}
