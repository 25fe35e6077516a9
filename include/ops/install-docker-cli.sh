#!/usr/bin/env bash
# Installs the docker client and its compose plugin that `make test` uses to check docker/compose.yaml
# (`docker compose config`); no Docker engine is installed or needed. Debian's docker-cli and
# docker-compose packages, fetched with `apt-get download` and unpacked with `dpkg -x` into
# <repo>/.tools/docker/: bin/docker, and config/cli-plugins/docker-compose (run docker with
# DOCKER_CONFIG=<repo>/.tools/docker/config to find the plugin). Compose v2 is packaged from Debian 13
# (trixie) on; bookworm has only the Python compose v1. So the packages come from trixie through a
# scratch apt state (its own sources list and package lists in a temporary folder): the system's
# apt configuration is neither read for sources nor changed. Both binaries are static Go programs
# needing only libc6 >= 2.34 (bookworm has 2.36). Idempotent: does nothing when the pinned versions
# are there already; a few seconds the first time (~15 MB of package lists, ~20 MB of packages).
set -euo pipefail

DOCKER_CLI_VERSION=26.1.5
COMPOSE_VERSION=2.26.1
DEBIAN_SUITE=trixie

repo="$(cd "$(dirname "$0")/../.." && pwd)"
install_dir="$repo/.tools/docker"
stamp="$install_dir/.docker-cli-$DOCKER_CLI_VERSION-compose-$COMPOSE_VERSION"

if [[ -x "$install_dir/bin/docker" && -x "$install_dir/config/cli-plugins/docker-compose" && -f "$stamp" ]]; then
    exit 0
fi

for tool in apt-get dpkg; do
    if ! command -v "$tool" >/dev/null; then
        echo "install-docker-cli: need $tool (Debian/Ubuntu) to fetch the docker-cli and docker-compose packages;" >&2
        echo "  elsewhere put a docker client with the compose v2 plugin ($COMPOSE_VERSION or newer) in" >&2
        echo "  .tools/docker/bin/docker and .tools/docker/config/cli-plugins/docker-compose" >&2
        exit 1
    fi
done

echo "==> fetching docker-cli $DOCKER_CLI_VERSION and docker-compose $COMPOSE_VERSION (Debian $DEBIAN_SUITE packages, compose file checks) into .tools/docker/"
mkdir -p "$repo/.tools"
# download and unpack in a scratch folder and move into place, so an interrupted install never
# leaves a half-unpacked tree that looks installed
scratch="$(mktemp -d "$repo/.tools/docker-build.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
# apt runs downloads as the _apt user where it can: give it folders it may write to
chmod 0755 "$scratch"
mkdir -p "$scratch/lists/partial" "$scratch/cache/archives/partial" "$scratch/debs"
chmod 0755 "$scratch/debs"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $DEBIAN_SUITE main" \
    >"$scratch/sources.list"
apt_options=(
    -o "Dir::Etc::SourceList=$scratch/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$scratch/lists"
    -o "Dir::Cache=$scratch/cache"
    -o "Debug::NoLocking=1"
)
export DEBIAN_FRONTEND=noninteractive

if ! apt-get -q "${apt_options[@]}" update </dev/null >"$scratch/apt.log" 2>&1 ||
    ! (cd "$scratch/debs" && apt-get -q "${apt_options[@]}" download \
        "docker-cli=$DOCKER_CLI_VERSION*" "docker-compose=$COMPOSE_VERSION*" </dev/null >>"$scratch/apt.log" 2>&1); then
    tail -n 20 "$scratch/apt.log" >&2
    echo "install-docker-cli: could not download Debian $DEBIAN_SUITE's docker-cli $DOCKER_CLI_VERSION and" >&2
    echo "  docker-compose $COMPOSE_VERSION packages (output above); it needs Debian's package mirror and" >&2
    echo "  /usr/share/keyrings/debian-archive-keyring.gpg (package debian-archive-keyring)" >&2
    exit 1
fi

for deb in "$scratch"/debs/*.deb; do
    dpkg -x "$deb" "$scratch/root"
done
mkdir -p "$scratch/install/bin" "$scratch/install/config/cli-plugins"
mv "$scratch/root/usr/bin/docker" "$scratch/install/bin/docker"
mv "$scratch/root/usr/libexec/docker/cli-plugins/docker-compose" "$scratch/install/config/cli-plugins/docker-compose"

version="$(DOCKER_CONFIG="$scratch/install/config" "$scratch/install/bin/docker" compose version 2>&1 || true)"
if [[ "$version" != *"version $COMPOSE_VERSION"* ]]; then
    echo "install-docker-cli: expected compose $COMPOSE_VERSION from the unpacked docker client, got: $version" >&2
    exit 1
fi

rm -rf "$install_dir"
mv "$scratch/install" "$install_dir"
touch "$stamp"
echo "==> $("$install_dir/bin/docker" --version) with $version installed in .tools/docker/"
