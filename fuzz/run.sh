#!/usr/bin/env bash
# The fuzz campaign: each target (all, or those named) for 10 million executions, one after
# another, single job, then its corpus minimized. Needs a nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz`); see fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(sse_splitter spool_segment price_import openai_request anthropic_request
           upstream_body openai_stream anthropic_stream responses_request responses_stream)
fi
runs=${FUZZ_RUNS:-10000000}
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  # --sanitizer none: the harnessed code is safe Rust (unsafe_code is denied workspace-wide), so
  # AddressSanitizer would only slow it; overflow checks and debug assertions stay on.
  cargo +nightly fuzz run --sanitizer none "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -runs="$runs" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1
  cargo +nightly fuzz cmin --sanitizer none "$t" "fuzz/corpus/$t" -- -max_len=65536
done
