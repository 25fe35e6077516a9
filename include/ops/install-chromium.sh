#!/usr/bin/env bash
# Installs the headless Chromium the browser test of the Airflow UI view drives: Debian bookworm's
# chromium-headless-shell (and chromium-common), plus whichever of their shared libraries this
# machine lacks, fetched with `apt-get download` and unpacked with `dpkg -x` into
# <repo>/.tools/chromium/ (nothing installed system-wide, nothing started). Playwright's own browser
# download cannot work here, so the test launches this build through the wrapper
# .tools/chromium/bin/chromium-headless-shell, which puts the unpacked libraries on LD_LIBRARY_PATH.
# Idempotent: does nothing when the wrapper runs already; ~60 MB download the first time.
set -euo pipefail

PACKAGE=chromium-headless-shell

repo="$(cd "$(dirname "$0")/../.." && pwd)"
install_dir="$repo/.tools/chromium"
wrapper="$install_dir/bin/$PACKAGE"
stamp="$install_dir/.installed"

if [[ -x "$wrapper" && -f "$stamp" ]] && "$wrapper" --version >/dev/null 2>&1; then
    exit 0
fi

for tool in apt-get dpkg dpkg-deb; do
    if ! command -v "$tool" >/dev/null; then
        echo "install-chromium: need $tool (Debian/Ubuntu) to fetch the $PACKAGE package;" >&2
        echo "  elsewhere install a headless Chromium yourself and set DRIFTLOOP_TEST_CHROMIUM to it" >&2
        exit 1
    fi
done

echo "==> fetching $PACKAGE (Debian package, browser of the UI test) into .tools/chromium/"
mkdir -p "$repo/.tools"
# download and unpack in a scratch folder and move into place, so an interrupted install never
# leaves a half-unpacked tree that looks installed
scratch="$(mktemp -d "$repo/.tools/chromium-build.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
# apt runs the download as the _apt user where it can: it must be able to write here
chmod 0755 "$scratch"
export DEBIAN_FRONTEND=noninteractive

# apt's own resolver says which packages this machine still lacks (a simulation: installs nothing)
resolve() {
    apt-get install -s --no-install-recommends "$PACKAGE" </dev/null 2>"$scratch/apt.log" \
        | awk '$1 == "Inst" {print $2}' >"$scratch/packages"
    grep -qx "$PACKAGE" "$scratch/packages"
}
download() {
    # shellcheck disable=SC2046
    (cd "$scratch" && apt-get download -q $(cat "$scratch/packages") </dev/null >>"$scratch/apt.log" 2>&1)
}

if ! { resolve && download; }; then
    # stale package lists (a fresh container has none): refresh once and retry
    if [[ "$(id -u)" == 0 ]] && apt-get update -qq </dev/null >>"$scratch/apt.log" 2>&1 && resolve && download; then
        :
    else
        tail -n 20 "$scratch/apt.log" >&2
        echo "install-chromium: could not resolve or download Debian's $PACKAGE (output above)." >&2
        echo "  it needs a bookworm apt source; as root, try: apt-get update && apt-get download $PACKAGE" >&2
        exit 1
    fi
fi

root="$scratch/root"
mkdir -p "$root"
for deb in "$scratch"/*.deb; do
    dpkg -x "$deb" "$root"
done
shell="$root/usr/lib/chromium/$PACKAGE"
if [[ ! -x "$shell" ]]; then
    echo "install-chromium: the $PACKAGE package has no usr/lib/chromium/$PACKAGE" >&2
    exit 1
fi

# libraries unpacked here come first; the machine's own fill in the rest
mkdir -p "$root/bin"
cat >"$root/bin/$PACKAGE" <<'EOF'
#!/usr/bin/env bash
# headless Chromium from Debian's packages, with the libraries unpacked beside it
here="$(cd "$(dirname "$0")/.." && pwd)"
libs="$here/usr/lib/x86_64-linux-gnu:$here/lib/x86_64-linux-gnu:$here/usr/lib/x86_64-linux-gnu/pulseaudio"
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$here/usr/lib/chromium/chromium-headless-shell" "$@"
EOF
chmod 0755 "$root/bin/$PACKAGE"

missing="$(LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu:$root/usr/lib/x86_64-linux-gnu/pulseaudio" \
    ldd "$shell" | awk '/not found/ {print $1}')"
if [[ -n "$missing" ]]; then
    echo "install-chromium: $PACKAGE still lacks: $missing (apt-get install the packages with them)" >&2
    exit 1
fi
if ! "$root/bin/$PACKAGE" --version >"$scratch/version.log" 2>&1; then
    cat "$scratch/version.log" >&2
    echo "install-chromium: the unpacked $PACKAGE does not run (output above)" >&2
    exit 1
fi

rm -rf "$install_dir"
mv "$root" "$install_dir"
cp "$scratch/packages" "$stamp"
echo "==> $(cat "$scratch/version.log") installed in .tools/chromium/bin/$PACKAGE"
