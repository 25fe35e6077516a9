#!/usr/bin/env bash
# Installs the HAProxy binary the local deploy target runs as its traffic splitter: Debian bookworm's
# haproxy package and the shared libraries it links that a base system lacks (Lua 5.3, OpenTracing),
# fetched with `apt-get download` and unpacked with `dpkg -x` into <repo>/.tools/haproxy/ (no system
# service, no /etc/haproxy use, nothing started). driftloop runs it with
# LD_LIBRARY_PATH=<repo>/.tools/haproxy/usr/lib/x86_64-linux-gnu, its own configuration and every pid,
# socket and log path under its data folder. Idempotent: does nothing when the pinned version is
# there already; about a second the first time (~2.5 MB download).
set -euo pipefail

HAPROXY_VERSION=2.6.12
# bookworm's own revision and its security updates (2.6.12-1+deb12u4 when this was written)
HAPROXY_PACKAGE="haproxy=$HAPROXY_VERSION-1+deb12u*"
# linked by the haproxy binary and missing from a base system (checked with ldd below)
LIBRARY_PACKAGES=(liblua5.3-0 libopentracing-c-wrapper0 libopentracing1)

repo="$(cd "$(dirname "$0")/../.." && pwd)"
install_dir="$repo/.tools/haproxy"
binary="$install_dir/usr/sbin/haproxy"
stamp="$install_dir/.haproxy-$HAPROXY_VERSION"

if [[ -x "$binary" && -f "$stamp" ]]; then
    exit 0
fi

for tool in apt-get dpkg ldd; do
    if ! command -v "$tool" >/dev/null; then
        echo "install-haproxy: need $tool (Debian/Ubuntu) to fetch the haproxy package;" >&2
        echo "  elsewhere install HAProxy $HAPROXY_VERSION or newer (2.6 LTS) yourself and set" >&2
        echo "  DRIFTLOOP_HAPROXY_BINARY to it" >&2
        exit 1
    fi
done

echo "==> fetching haproxy $HAPROXY_VERSION (Debian package, traffic splitter of the local deploy target) into .tools/haproxy/"
mkdir -p "$repo/.tools"
# download and unpack in a scratch folder and move into place, so an interrupted install never
# leaves a half-unpacked tree that looks installed
scratch="$(mktemp -d "$repo/.tools/haproxy-build.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
# apt runs the download as the _apt user where it can; a scratch folder it may write to avoids
# the "download is performed unsandboxed" warning
chmod 0755 "$scratch"
export DEBIAN_FRONTEND=noninteractive

download() {
    (cd "$scratch" && apt-get download -q "$HAPROXY_PACKAGE" "${LIBRARY_PACKAGES[@]}" \
        </dev/null >"$scratch/apt.log" 2>&1)
}

if ! download; then
    # stale package lists (a fresh container has none): refresh once and retry
    if [[ "$(id -u)" == 0 ]] && apt-get update -qq </dev/null >>"$scratch/apt.log" 2>&1 && download; then
        :
    else
        tail -n 20 "$scratch/apt.log" >&2
        echo "install-haproxy: could not download Debian's haproxy $HAPROXY_VERSION and ${LIBRARY_PACKAGES[*]}" >&2
        echo "  (output above); it needs a bookworm apt source; as root, try: apt-get update &&" >&2
        echo "  apt-get download haproxy ${LIBRARY_PACKAGES[*]}" >&2
        exit 1
    fi
fi

for package in haproxy "${LIBRARY_PACKAGES[@]}"; do
    deb="$(find "$scratch" -maxdepth 1 -name "${package}_*.deb" | head -n 1)"
    if [[ -z "$deb" ]]; then
        echo "install-haproxy: apt-get download reported success but left no ${package}_*.deb in $scratch" >&2
        exit 1
    fi
    dpkg -x "$deb" "$scratch/root"
done

libraries="$scratch/root/usr/lib/x86_64-linux-gnu"
missing="$(LD_LIBRARY_PATH="$libraries" ldd "$scratch/root/usr/sbin/haproxy" | grep 'not found' || true)"
if [[ -n "$missing" ]]; then
    echo "install-haproxy: the unpacked haproxy still lacks shared libraries:" >&2
    echo "$missing" >&2
    echo "  install them from the system's packages (apt-get install ...), or add their packages to" >&2
    echo "  LIBRARY_PACKAGES in $0" >&2
    exit 1
fi
if ! LD_LIBRARY_PATH="$libraries" "$scratch/root/usr/sbin/haproxy" -v >"$scratch/version.log" 2>&1; then
    cat "$scratch/version.log" >&2
    echo "install-haproxy: the unpacked haproxy does not run (output above); it needs libssl3, libpcre2-8-0," >&2
    echo "  libcrypt1 and libsystemd0 from the system (apt-get install them)" >&2
    exit 1
fi
if ! grep -q "HAProxy version $HAPROXY_VERSION-" "$scratch/version.log"; then
    echo "install-haproxy: expected HAProxy $HAPROXY_VERSION, got: $(head -n 1 "$scratch/version.log")" >&2
    exit 1
fi

rm -rf "$install_dir"
mv "$scratch/root" "$install_dir"
touch "$stamp"
echo "==> $(head -n 1 "$scratch/version.log") installed in .tools/haproxy/usr/sbin/haproxy"
