# Shared by scripts/fuzz-run and scripts/fuzz-smoke (sourced, not run): where the fuzz build
# lives, which toolchain builds it, and cargo-fuzz itself.
#
# After sourcing: FUZZ_TOOLCHAIN names the toolchain, `"${CARGO_FUZZ[@]}" ARGS...` runs
# cargo-fuzz with it (an array rather than a function, so that `nice` can run it), FUZZ_BUILD_FLAGS are the build flags every fuzz script uses (so they share one build), and
# FUZZ_TARGETS lists every target.

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# The fuzz build lives under the repository's target/ (gitignored, removed by `cargo clean`),
# apart from the normal builds because its compiler flags differ.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo_root/target}/fuzz"
# libFuzzer's input cap; scripts/fuzz-seed cuts its seeds to fit.
FUZZ_MAX_LEN=16384
# No sanitizer: the code under test is safe Rust, so a panic is what we look for, and
# AddressSanitizer would halve the executions per second. Debug assertions and overflow checks
# stay on (cargo-fuzz's default), so an integer overflow is a crash too.
FUZZ_BUILD_FLAGS=(--sanitizer none --debug-assertions)

fail_or_skip() {
  # Without CI a missing tool skips the fuzz scripts with a note; under CI=true it fails them.
  if [[ "${CI:-}" == "true" ]]; then
    echo "fuzz: $1 (CI=true: failing)" >&2
    exit 1
  fi
  echo "fuzz: $1; skipping" >&2
  exit 0
}

# libFuzzer needs the nightly compiler's sanitizer-coverage support: use a nightly toolchain when
# rustup has one, else the stable compiler with RUSTC_BOOTSTRAP=1 (which unlocks the same flags).
if command -v rustup >/dev/null && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  FUZZ_TOOLCHAIN="nightly ($(rustc +nightly --version | cut -d" " -f2-))"
  CARGO_FUZZ=(cargo +nightly fuzz)
else
  command -v cargo >/dev/null || fail_or_skip "no cargo found"
  FUZZ_TOOLCHAIN="stable ($(rustc --version 2>/dev/null | cut -d' ' -f2)) with RUSTC_BOOTSTRAP=1"
  CARGO_FUZZ=(env RUSTC_BOOTSTRAP=1 cargo fuzz)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz from crates.io" >&2
  cargo install --locked cargo-fuzz >&2 || fail_or_skip "cargo-fuzz could not be installed"
fi

# The libFuzzer dictionary (fuzz/dict/) of a target: tokens its inputs are made of.
fuzz_dictionary() {
  case "$1" in
    http_*) echo "$repo_root/fuzz/dict/http.dict" ;;
    sse_decoder|*_stream) echo "$repo_root/fuzz/dict/sse.dict" ;;
    *) echo "$repo_root/fuzz/dict/json.dict" ;;
  esac
}

mapfile -t FUZZ_TARGETS < <(cd "$repo_root/fuzz/fuzz_targets" && ls ./*.rs | sed 's|^\./||; s|\.rs$||')
