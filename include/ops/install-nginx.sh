#!/usr/bin/env bash
# Installs the nginx binary the local deploy target runs as its traffic splitter: Debian bookworm's
# nginx package, fetched with `apt-get download` and unpacked with `dpkg -x` into <repo>/.tools/nginx/
# (no system service, no /etc/nginx, nothing started). driftloop runs it with -p/-c/-e and every
# temp, pid and log path under its data folder. Idempotent: does nothing when the pinned version is
# there already; about a second the first time (~0.5 MB download).
set -euo pipefail

NGINX_VERSION=1.22.1

repo="$(cd "$(dirname "$0")/../.." && pwd)"
install_dir="$repo/.tools/nginx"
binary="$install_dir/usr/sbin/nginx"
stamp="$install_dir/.nginx-$NGINX_VERSION"

if [[ -x "$binary" && -f "$stamp" ]]; then
    exit 0
fi

for tool in apt-get dpkg; do
    if ! command -v "$tool" >/dev/null; then
        echo "install-nginx: need $tool (Debian/Ubuntu) to fetch the nginx package;" >&2
        echo "  elsewhere install nginx $NGINX_VERSION or newer yourself and put it on PATH" >&2
        exit 1
    fi
done

echo "==> fetching nginx $NGINX_VERSION (Debian package, traffic splitter of the local deploy target) into .tools/nginx/"
mkdir -p "$repo/.tools"
# download and unpack in a scratch folder and move into place, so an interrupted install never
# leaves a half-unpacked tree that looks installed
scratch="$(mktemp -d "$repo/.tools/nginx-build.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
# apt runs the download as the _apt user where it can; a scratch folder it may write to avoids
# the "download is performed unsandboxed" warning
chmod 0755 "$scratch"
export DEBIAN_FRONTEND=noninteractive

download() {
    (cd "$scratch" && apt-get download -q "nginx=$NGINX_VERSION*" </dev/null >"$scratch/apt.log" 2>&1)
}

if ! download; then
    # stale package lists (a fresh container has none): refresh once and retry
    if [[ "$(id -u)" == 0 ]] && apt-get update -qq </dev/null >>"$scratch/apt.log" 2>&1 && download; then
        :
    else
        tail -n 20 "$scratch/apt.log" >&2
        echo "install-nginx: could not download Debian's nginx $NGINX_VERSION package (output above)." >&2
        echo "  it needs a bookworm apt source; as root, try: apt-get update && apt-get download nginx" >&2
        exit 1
    fi
fi

deb="$(find "$scratch" -maxdepth 1 -name 'nginx_*.deb' | head -n 1)"
if [[ -z "$deb" ]]; then
    echo "install-nginx: apt-get download reported success but left no nginx_*.deb in $scratch" >&2
    exit 1
fi
dpkg -x "$deb" "$scratch/root"
if ! "$scratch/root/usr/sbin/nginx" -v >"$scratch/version.log" 2>&1; then
    cat "$scratch/version.log" >&2
    echo "install-nginx: the unpacked nginx does not run (output above); it needs libpcre2-8-0, libssl3," >&2
    echo "  zlib1g and libcrypt1 from the system (apt-get install them)" >&2
    exit 1
fi
if ! grep -q "nginx/$NGINX_VERSION" "$scratch/version.log"; then
    echo "install-nginx: expected nginx $NGINX_VERSION, got: $(cat "$scratch/version.log")" >&2
    exit 1
fi

rm -rf "$install_dir"
mv "$scratch/root" "$install_dir"
touch "$stamp"
echo "==> $(cat "$scratch/version.log") installed in .tools/nginx/usr/sbin/nginx"
