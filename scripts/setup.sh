#!/usr/bin/env bash
# Idempotent setup for dev and CI: Debian packages, LiveKit binaries built from the Go module
# proxy, and a virtualenv with voicestack installed. Every step checks first and is skipped when
# already done, so a warm machine finishes in seconds.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

LIVEKIT_SERVER_VERSION=v1.13.5
LIVEKIT_SIP_VERSION=v1.11.0
GO_MIN=1.26
PY_MIN=3.11
TOOLS="$root/.tools"
VENV="$root/.venv"
APT_PACKAGES=(
  redis-server    # LiveKit SIP needs Redis
  sip-tester      # sipp: SIP signaling tests
  kamailio        # the SIP edge in front of livekit-sip (sip-edge.cfg, docs/security.md)
  rtpengine-daemon  # the media relay the edge drives (RTP only from each side's own address)
  baresip         # the demo's scripted caller, a real SIP user agent
  sox             # audio conversion for the demo's recordings
  espeak-ng       # Piper's phonemizer data; also a second voice for test utterances
  tshark          # the zero-egress test watches every packet the stack sends
  iproute2        # ... from a network namespace (ip netns) whose only link out it captures
  chromium chromium-driver  # the supervisor console's browser tests (headless, via selenium)
  postgresql      # the call-record store's PostgreSQL tests (initdb/pg_ctl of a throwaway cluster)
  pkg-config libopus-dev libopusfile-dev libsoxr-dev  # cgo deps of livekit-sip
  gcc g++ make cmake  # llama-cpp-python builds from source
)

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

# --- Debian packages: install only what is missing -------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  [[ $pkg == \#* ]] && continue
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ $status == "install ok installed" ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Go toolchain and LiveKit binaries ----------------------------------------------------------
command -v go >/dev/null || die "Go >= $GO_MIN is required to build livekit-server and livekit-sip"
go_version=$(go env GOVERSION | sed 's/^go//')
if [[ $(printf '%s\n%s\n' "$GO_MIN" "$go_version" | sort -V | head -1) != "$GO_MIN" ]]; then
  die "Go >= $GO_MIN is required (found $go_version)"
fi
mkdir -p "$TOOLS/bin"
stamp="$TOOLS/versions"
touch "$stamp"
build_tool() {  # name module version [cgo]
  local name=$1 module=$2 version=$3 cgo=${4:-0}
  if [[ -x "$TOOLS/bin/$name" ]] && grep -qx "$name $version" "$stamp"; then
    return
  fi
  log "go install $module@$version (minutes on a cold Go cache)"
  local tmp
  tmp=$(mktemp -d)
  CGO_ENABLED=$cgo GOBIN="$tmp" go install -trimpath "$module@$version"
  local built
  built=$(find "$tmp" -type f -perm -u+x | head -1)
  [[ -n $built ]] || die "go install $module@$version produced no binary"
  mv -f "$built" "$TOOLS/bin/$name"
  rm -rf "$tmp"
  grep -v "^$name " "$stamp" >"$stamp.tmp" || true
  echo "$name $version" >>"$stamp.tmp"
  mv "$stamp.tmp" "$stamp"
}
build_tool livekit-server github.com/livekit/livekit-server/cmd/server "$LIVEKIT_SERVER_VERSION" 0
# livekit-sip: `go install` first (how operators elsewhere get it). The Go module proxy reachable
# from our dev and CI machines refuses github.com/livekit/sip, so then the prebuilt, unmodified
# v1.11.0 in ../shared/tools is installed after its sha256 and --version are checked
# (build facts: ../shared/tools/README.md). Runtime libraries: libopus0 libopusfile0 libsoxr0,
# pulled in by the -dev packages above.
SIP_PREBUILT=${VOICESTACK_SIP_PREBUILT:-$root/../shared/tools/livekit-sip}
SIP_PREBUILT_SHA256=1801e73abeb9c91f713ab6685172953068dd1f5c5879c9da305c3a388e895684
install_prebuilt_sip() {
  [[ -f $SIP_PREBUILT ]] || { log "no prebuilt livekit-sip at $SIP_PREBUILT"; return 1; }
  local sum
  sum=$(sha256sum "$SIP_PREBUILT" | cut -d' ' -f1)
  [[ $sum == "$SIP_PREBUILT_SHA256" ]] \
    || { log "prebuilt livekit-sip sha256 $sum != $SIP_PREBUILT_SHA256"; return 1; }
  install -m 0755 "$SIP_PREBUILT" "$TOOLS/bin/livekit-sip.new"
  local version
  version=$("$TOOLS/bin/livekit-sip.new" --version 2>&1 | head -1) || true
  [[ $version == "SIP version ${LIVEKIT_SIP_VERSION#v}" ]] \
    || { log "prebuilt livekit-sip says '$version', want 'SIP version ${LIVEKIT_SIP_VERSION#v}'"; rm -f "$TOOLS/bin/livekit-sip.new"; return 1; }
  mv -f "$TOOLS/bin/livekit-sip.new" "$TOOLS/bin/livekit-sip"
  grep -v "^livekit-sip " "$stamp" >"$stamp.tmp" || true
  echo "livekit-sip $LIVEKIT_SIP_VERSION prebuilt" >>"$stamp.tmp"
  mv "$stamp.tmp" "$stamp"
}
sip_source=""
if [[ -x "$TOOLS/bin/livekit-sip" ]] && grep -q "^livekit-sip $LIVEKIT_SIP_VERSION prebuilt$" "$stamp"; then
  sip_source="prebuilt $SIP_PREBUILT (installed earlier, sha256 checked)"
elif (build_tool livekit-sip github.com/livekit/sip/cmd/livekit-sip "$LIVEKIT_SIP_VERSION" 1) 2>"$TOOLS/livekit-sip.err"; then
  sip_source="go install github.com/livekit/sip/cmd/livekit-sip@$LIVEKIT_SIP_VERSION"
else
  refusal=$(grep -m1 -E 'Forbidden|not available|error' "$TOOLS/livekit-sip.err" || tail -1 "$TOOLS/livekit-sip.err")
  if install_prebuilt_sip; then
    sip_source="prebuilt $SIP_PREBUILT (sha256 and --version checked; go install refused: $refusal)"
  else
    rm -f "$TOOLS/bin/livekit-sip"
    [[ ${CI:-} == true ]] && die "livekit-sip $LIVEKIT_SIP_VERSION: go install refused ($refusal) and no valid prebuilt binary; CI needs the SIP leg"
    log "warning: livekit-sip $LIVEKIT_SIP_VERSION unavailable (go install refused: $refusal; no valid prebuilt binary): the SIP leg is disabled"
  fi
fi
[[ -n $sip_source ]] && log "livekit-sip from: $sip_source"

# --- Python virtualenv --------------------------------------------------------------------------
python=${PYTHON:-python3}
"$python" -c "import sys; sys.exit(sys.version_info < tuple(map(int, '$PY_MIN'.split('.'))))" \
  || die "Python >= $PY_MIN is required"
[[ -x "$VENV/bin/python" ]] || { log "creating $VENV"; "$python" -m venv "$VENV"; }
# llama-cpp-python ships only as an sdist and builds with -march=native by default: a wheel built
# on an AMX/AVX-512 machine crashes (SIGILL) or misbehaves on one without, and llama.cpp's AMX
# repack buffers crashed the server on AMX machines (SIGSEGV). It is built once, portable
# (GGML_NATIVE=OFF: the AVX2/FMA/F16C x86-64 baseline, no AVX-512, no AMX), into a wheel cache
# keyed by version and flags, and installed from there, so pip's own cache can never hand back a
# native build. CTranslate2 and onnxruntime wheels pick their kernels at run time by CPUID.
LLAMA_CPP_VERSION=$(sed -n 's/.*"llama-cpp-python==\([^"]*\)".*/\1/p' pyproject.toml)
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
wheel_key=$(printf '%s %s' "$LLAMA_CPP_VERSION" "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-16)
WHEELS="${XDG_CACHE_HOME:-$HOME/.cache}/voicestack/wheels/llama-cpp-python-$wheel_key"
want=$( { sha256sum pyproject.toml; echo "$wheel_key"; } | sha256sum | cut -d' ' -f1)
have=$(cat "$VENV/.voicestack-installed" 2>/dev/null || true)
if [[ $want != "$have" ]]; then
  "$VENV/bin/pip" install -q --upgrade pip >"$VENV/pip-install.log" 2>&1 \
    || { tail -40 "$VENV/pip-install.log" >&2; die "pip upgrade failed"; }
  if ! compgen -G "$WHEELS/llama_cpp_python-$LLAMA_CPP_VERSION-*.whl" >/dev/null; then
    log "building llama-cpp-python $LLAMA_CPP_VERSION portable ($LLAMA_CMAKE_ARGS); minutes, once per machine"
    mkdir -p "$WHEELS"
    if ! CMAKE_ARGS="$LLAMA_CMAKE_ARGS" FORCE_CMAKE=1 "$VENV/bin/pip" wheel -q --no-deps \
        --no-cache-dir --no-binary llama-cpp-python -w "$WHEELS" \
        "llama-cpp-python==$LLAMA_CPP_VERSION" >>"$VENV/pip-install.log" 2>&1; then
      tail -40 "$VENV/pip-install.log" >&2
      die "building llama-cpp-python failed (full log: $VENV/pip-install.log)"
    fi
  fi
  log "installing voicestack and its pinned dependencies into $VENV"
  # pip's output goes to a log (setuptools' editable-install banner is noise); shown on failure.
  if ! { "$VENV/bin/pip" install -q --force-reinstall --no-deps "$WHEELS"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl \
      && "$VENV/bin/pip" install -q --find-links "$WHEELS" -e ".[dev]"; } \
      >>"$VENV/pip-install.log" 2>&1; then
    tail -40 "$VENV/pip-install.log" >&2
    die "pip install failed (full log: $VENV/pip-install.log)"
  fi
  echo "$want" >"$VENV/.voicestack-installed"
fi

sip_state="livekit-sip: not installed (SIP leg disabled)"
[[ -x "$TOOLS/bin/livekit-sip" ]] && sip_state="livekit-sip: $TOOLS/bin/livekit-sip"
log "ready: $("$TOOLS/bin/livekit-server" --version 2>&1 | head -1); $sip_state; $("$VENV/bin/python" --version)"
