#!/usr/bin/env bash
# Installs the S3-compatible object store the integration tests start on 127.0.0.1:
# Versity S3 Gateway (versitygw, Apache-2.0) with its posix backend, built from source through
# the Go module proxy into <repo>/.tools/bin/. Idempotent: does nothing when the pinned version
# is already there. About 3 minutes on 2 cores the first time (~340 MB of modules); seconds when
# the Go module and build caches are warm.
set -euo pipefail

VERSITYGW_MODULE=github.com/versity/versitygw
VERSITYGW_VERSION=v1.8.0

repo="$(cd "$(dirname "$0")/../.." && pwd)"
bin_dir="$repo/.tools/bin"
binary="$bin_dir/versitygw"
stamp="$bin_dir/.versitygw-$VERSITYGW_VERSION"

if [[ -x "$binary" && -f "$stamp" ]]; then
    exit 0
fi

if ! command -v go >/dev/null; then
    echo "install-object-store: need the Go toolchain (go >= 1.21; a newer one is fetched as needed) on PATH to build versitygw" >&2
    exit 1
fi

echo "==> building versitygw $VERSITYGW_VERSION (S3 server for the integration tests) into .tools/bin/"
mkdir -p "$bin_dir"
# build into a scratch GOBIN and move into place, so an interrupted build never leaves a
# half-written binary that looks installed
scratch="$(mktemp -d "$repo/.tools/build.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
start=$SECONDS
# GOFLAGS=-modcacherw: the module cache stays deletable; GOTOOLCHAIN=auto fetches a newer Go
# from the module proxy if the installed one is older than versitygw's go.mod asks for
if ! GOBIN="$scratch" GOFLAGS=-modcacherw GOTOOLCHAIN=auto CGO_ENABLED=0 \
    go install -trimpath -ldflags="-s -w" "$VERSITYGW_MODULE/cmd/versitygw@$VERSITYGW_VERSION" \
    >"$scratch/build.log" 2>&1; then
    tail -n 40 "$scratch/build.log" >&2
    echo "install-object-store: building versitygw failed (output above); it needs the Go module proxy" >&2
    exit 1
fi
mv -f "$scratch/versitygw" "$binary"
rm -f "$bin_dir"/.versitygw-*
touch "$stamp"
echo "==> versitygw $VERSITYGW_VERSION installed in $((SECONDS - start)) s"
