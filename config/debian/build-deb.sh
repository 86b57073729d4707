#!/usr/bin/env bash
# Builds the swapd Debian package with dpkg-deb alone (no debhelper, no source package):
#
#   config/debian/build-deb.sh BINARY OUTDIR      (what `make deb` runs)
#
# Contents: /usr/bin/swapd, /usr/lib/systemd/system/swapd.{service,socket},
# /etc/swapd/config.yaml (a conffile: kept on upgrade and remove, deleted on purge), and
# /usr/share/doc/swapd/{README.md,example.yaml,grafana-dashboard.json,copyright}.
# The maintainer scripts here create the swapd account (postinst) and remove it with the
# state directories on purge (postrm). Prints the path of the .deb as its last line.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BINARY="${1:?usage: build-deb.sh BINARY OUTDIR}"
OUTDIR="${2:?usage: build-deb.sh BINARY OUTDIR}"

VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/Cargo.toml" | head -n 1)"
ARCH="$(dpkg --print-architecture)"
[[ -n "$VERSION" ]] || { echo "build-deb.sh: no version in Cargo.toml" >&2; exit 1; }
[[ -x "$BINARY" ]] || { echo "build-deb.sh: $BINARY is not an executable" >&2; exit 1; }

# Dependencies from the libraries the binary links, so the package cannot install where the
# binary would not run. Anything unexpected stops the build rather than being left out.
depends=()
glibc="$(objdump -T "$BINARY" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -Vu | tail -n 1)"
for library in $(objdump -p "$BINARY" | awk '$1 == "NEEDED" { print $2 }'); do
  case "$library" in
    libc.so.6 | libm.so.6 | libpthread.so.0 | libdl.so.2 | librt.so.1 | ld-linux*.so.*)
      depends+=("libc6 (>= ${glibc:-2.17})") ;;
    libgcc_s.so.1) depends+=("libgcc-s1") ;;
    *) echo "build-deb.sh: $BINARY needs $library; add its package to build-deb.sh" >&2; exit 1 ;;
  esac
done
# postinst uses groupadd/useradd, postrm userdel/groupdel.
depends+=("passwd")
DEPENDS="$(printf '%s\n' "${depends[@]}" | sort -u | paste -sd ',' | sed 's/,/, /g')"

STAGE="$(mktemp -d)"
chmod 0755 "$STAGE"
trap 'rm -rf "$STAGE"' EXIT
install -d -m 0755 "$STAGE/DEBIAN" "$STAGE/usr/bin" "$STAGE/usr/lib/systemd/system" \
  "$STAGE/etc/swapd" "$STAGE/usr/share/doc/swapd"
install -m 0755 "$BINARY" "$STAGE/usr/bin/swapd"
install -m 0644 "$REPO/config/swapd.service" "$REPO/config/swapd.socket" \
  "$STAGE/usr/lib/systemd/system/"
install -m 0644 "$REPO/config/swapd.yaml" "$STAGE/etc/swapd/config.yaml"
install -m 0644 "$REPO/README.md" "$REPO/config/example.yaml" "$HERE/copyright" \
  "$STAGE/usr/share/doc/swapd/"
if [[ -f "$REPO/config/grafana-dashboard.json" ]]; then
  install -m 0644 "$REPO/config/grafana-dashboard.json" "$STAGE/usr/share/doc/swapd/"
fi
install -m 0644 "$HERE/conffiles" "$STAGE/DEBIAN/conffiles"
install -m 0755 "$HERE/postinst" "$HERE/prerm" "$HERE/postrm" "$STAGE/DEBIAN/"
SIZE="$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)"
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$SIZE/" \
  -e "s/@DEPENDS@/$DEPENDS/" "$HERE/control.in" >"$STAGE/DEBIAN/control"

mkdir -p "$OUTDIR"
DEB="$(cd "$OUTDIR" && pwd)/swapd_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$DEB" >&2
echo "$DEB"
