#!/usr/bin/env bash
# Staging log throughput beside fio on the same directory, 3 runs each, alternating.
#
#   scripts/bench/staging.sh DIR
#
# Reference: fio sequential 1 MiB O_DIRECT writes, io_uring, queue depth 32, one
# fsync at the end. Ours: examples/bench_staging (1 MiB write records from 32
# appenders, each acknowledged only after its group-commit barrier). Prints both
# medians and the ratio staging/fio (target >= 0.8).
#
# Two more references show what the device gives when writes must be durable:
# fio with an fdatasync after every 8 writes (the barrier cadence of an 8 MiB
# group commit), and after every 512 writes (as few barriers as a 4 GiB run
# can have while still being durable every half GiB). Their ratios are printed
# too: where both are alike, flushing itself costs the difference, whatever
# the cadence, and no durable log can pass them.
#
# Env: BENCH_SIZE (default 4G, fio syntax), STAGING_BENCH_* (see the example),
#      CARGO_TARGET_DIR (where the example is built), RUNS (default 3),
#      STAGING_BENCH_BIN (a prebuilt bench_staging; skips the build).
set -euo pipefail

dir=${1:?usage: scripts/bench/staging.sh DIR}
size=${BENCH_SIZE:-4G}
runs=${RUNS:-3}
root=$(cd "$(dirname "$0")/../.." && pwd)

command -v fio >/dev/null || { echo "fio missing: apt-get install -y fio" >&2; exit 1; }
mkdir -p "$dir"

bytes=$(numfmt --from=iec "$size")
if [[ -n ${STAGING_BENCH_BIN:-} ]]; then
    example=$STAGING_BENCH_BIN
else
    (cd "$root" && cargo build --release --quiet -p drgw-staging --example bench_staging)
    example="${CARGO_TARGET_DIR:-$root/target}/release/examples/bench_staging"
fi

fio_mbs() {
    fio --name=seq --ioengine=io_uring --direct=1 --rw=write --bs=1M --size="$size" \
        --iodepth=32 --filename="$dir/fio.dat" "$@" --output-format=json |
        python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["write"]["bw_bytes"]/1e6, 1))'
    rm -f "$dir/fio.dat"
}

staging_mbs() {
    STAGING_BENCH_BYTES=$bytes "$example" "$dir" | tee /dev/stderr |
        sed -n 's/.* = \([0-9.]*\) MB\/s.*/\1/p'
}

median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

fio_runs=() dsync_runs=() dsync512_runs=() staging_runs=()
for i in $(seq "$runs"); do
    fio_runs+=("$(fio_mbs --end_fsync=1)")
    echo "run $i: fio ${fio_runs[-1]} MB/s" >&2
    dsync_runs+=("$(fio_mbs --fdatasync=8)")
    echo "run $i: fio --fdatasync=8 ${dsync_runs[-1]} MB/s" >&2
    dsync512_runs+=("$(fio_mbs --fdatasync=512)")
    echo "run $i: fio --fdatasync=512 ${dsync512_runs[-1]} MB/s" >&2
    staging_runs+=("$(staging_mbs)")
    echo "run $i: staging ${staging_runs[-1]} MB/s" >&2
done

fio_median=$(printf '%s\n' "${fio_runs[@]}" | median)
dsync_median=$(printf '%s\n' "${dsync_runs[@]}" | median)
dsync512_median=$(printf '%s\n' "${dsync512_runs[@]}" | median)
staging_median=$(printf '%s\n' "${staging_runs[@]}" | median)
fs=$(df -T "$dir" | awk 'NR==2 {print $2}')
echo "directory $dir ($fs), nproc $(nproc), size $size, runs $runs"
echo "fio      median ${fio_median} MB/s  (runs: ${fio_runs[*]})"
echo "fio --fdatasync=8 median ${dsync_median} MB/s  (runs: ${dsync_runs[*]})"
echo "fio --fdatasync=512 median ${dsync512_median} MB/s  (runs: ${dsync512_runs[*]})"
echo "staging  median ${staging_median} MB/s  (runs: ${staging_runs[*]})"
echo "ratio    $(python3 -c "print(round($staging_median/$fio_median, 2))") staging/fio (target >= 0.8)"
echo "ratio    $(python3 -c "print(round($staging_median/$dsync_median, 2))") staging/fio --fdatasync=8"
echo "ratio    $(python3 -c "print(round($staging_median/$dsync512_median, 2))") staging/fio --fdatasync=512"
echo "ratio    $(python3 -c "print(round($dsync512_median/$fio_median, 2))") fio --fdatasync=512/fio (the most a durable log can reach here)"
