# shellcheck shell=bash
# Shared by the benchmark scripts; sourced, not run.

# bench_drgw_bin REPO: prints the drgw binary to measure: $DRGW_BIN when set,
# else a release build of REPO (into CARGO_TARGET_DIR, or REPO/target).
bench_drgw_bin() {
  if [[ -n ${DRGW_BIN:-} ]]; then
    printf '%s\n' "$DRGW_BIN"
    return
  fi
  (cd "$1" && cargo build --release --quiet --bin drgw) >&2
  printf '%s\n' "${CARGO_TARGET_DIR:-$1/target}/release/drgw"
}
