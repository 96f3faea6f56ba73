#!/usr/bin/env bash
# The native beam search's fuzz and parity tests against a build of the engine under
# AddressSanitizer and UndefinedBehaviorSanitizer: any out-of-bounds access, use after free or
# undefined behaviour in beam_search.cpp fails the run with the sanitizer's report.
# Builds in a copy of the tracked tree (the project's own library stays as it is), reusing
# KenLM's compiled objects; run after `make test` has made .venv (about 2 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-$ROOT/.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
git ls-files -z --cached --others --exclude-standard | xargs -0 tar -c | tar -x -C "$WORK"
mkdir -p "$WORK/third_party"
ln -s "$ROOT/third_party/kenlm" "$WORK/third_party/kenlm"
cd "$WORK"
"$PY" -m engine.decoder.native.build --sanitize
# ASan must be loaded before anything else in an uninstrumented Python, and libstdc++ with it (its
# exception interceptors look for C++'s throw when ASan starts); Python itself leaks by design.
export LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
"$PY" -m pytest -q -p no:cacheprovider tests/test_beam_search_fuzz.py \
    "tests/test_native_decoder.py::test_native_and_python_decoders_agree_on_recorded_model_outputs" \
    "tests/test_native_decoder.py::test_a_batch_decoded_in_one_call_on_two_threads_is_decoded_as_one_by_one"
echo "sanitizers: clean"
