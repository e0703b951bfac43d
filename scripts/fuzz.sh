#!/usr/bin/env bash
# Coverage-guided fuzzing of what a guest reaches in ember-vmm (not run in CI; CI replays
# the corpus through `cargo test -p ember-vmm-testing --test corpus`).
#
#   scripts/fuzz.sh [TARGET|all] [SECONDS]    fuzz
#   scripts/fuzz.sh min [TARGET|all]           minimize the corpus before committing it
#
# TARGET is one of: mmio virtqueue blk vsock net fuse (default: all, one after the other);
# SECONDS is how long each runs (default 600). Builds with cargo-fuzz on the stable
# toolchain (`--sanitizer none`: the sanitizers need nightly); installs cargo-fuzz if
# missing. New corpus entries go to fuzz/corpus/<target>/, crashes to
# fuzz/artifacts/<target>/ (keep a reproducer in fuzz/regressions/<target>/). `min` keeps
# the fewest inputs that reach the same edges (`cargo fuzz cmin`, greedy set cover, hit
# counts ignored): a few dozen files per target.
set -euo pipefail

cd "$(dirname "$0")/.."
targets=(mmio virtqueue blk vsock net fuse)
mode=fuzz
if [ "${1:-}" = min ]; then
    mode=min
    shift
fi
target=${1:-all}
seconds=${2:-600}

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

if [ "$target" = all ]; then
    run=("${targets[@]}")
else
    case " ${targets[*]} " in
    *" $target "*) run=("$target") ;;
    *)
        echo "unknown target '$target'; the targets are: ${targets[*]}" >&2
        exit 2
        ;;
    esac
fi

cargo fuzz build --sanitizer none
for t in "${run[@]}"; do
    if [ "$mode" = min ]; then
        cargo fuzz cmin --sanitizer none "$t" "fuzz/corpus/$t" -- -set_cover_merge=1 -use_counters=0
        continue
    fi
    mkdir -p "fuzz/corpus/$t"
    echo "== $t for ${seconds}s"
    # One process (the machine is shared); -timeout flags a request that hangs.
    cargo fuzz run --sanitizer none "$t" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
