#!/usr/bin/env bash
# Makes sure PostgreSQL server binaries (initdb, postgres, pg_isready, psql) exist for the fixtures,
# which run a throwaway cluster on 127.0.0.1 (tests/services.py). Idempotent: exits 0 when they are in
# /usr/lib/postgresql/*/bin or on PATH; otherwise installs Debian's postgresql package.
set -euo pipefail

have_server_binaries() {
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        [[ -x "$dir/initdb" && -x "$dir/postgres" && -x "$dir/pg_isready" && -x "$dir/psql" ]] && return 0
    done
    local tool
    for tool in initdb postgres pg_isready psql; do
        command -v "$tool" >/dev/null || return 1
    done
}

if have_server_binaries; then
    exit 0
fi

if [[ "$(id -u)" != 0 ]]; then
    echo "install-postgres: PostgreSQL server binaries (initdb, postgres) not found and not running as root." >&2
    echo "  install them yourself, e.g.: sudo apt-get install -y postgresql" >&2
    echo "  (or put a directory holding initdb, postgres, pg_isready and psql on PATH," >&2
    echo "   or set DRIFTLOOP_PG_BIN_DIR to it)" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null; then
    echo "install-postgres: no apt-get here; install PostgreSQL server binaries (initdb, postgres) yourself" >&2
    exit 1
fi

echo "==> installing PostgreSQL server binaries (apt-get install postgresql)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d 101: the package must not start (and leave running) a system-wide cluster;
# the tests start their own throwaway one
policy=/usr/sbin/policy-rc.d
created_policy=false
if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created_policy=true
fi
trap '$created_policy && rm -f "$policy"' EXIT
apt-get install -y -qq --no-install-recommends postgresql >/dev/null
have_server_binaries || { echo "install-postgres: postgresql installed but initdb/postgres not found" >&2; exit 1; }
echo "==> PostgreSQL server binaries installed"
