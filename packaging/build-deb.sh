#!/usr/bin/env bash
# Builds the meshgate Debian package into target/debian/ (what `make deb`
# runs). A small dpkg-deb script rather than cargo-deb: the package is two
# binaries, a conffile, two units and three maintainer scripts, and this
# needs only dpkg-dev, which a Debian build machine has.
#
#   packaging/build-deb.sh                 build release binaries, then the .deb
#   VERSION_SUFFIX=+local1 packaging/build-deb.sh
#                                          the same with version 0.1.0+local1
#   MESHGATE_SKIP_BUILD=1 ...              package target/release as it is
#
# Prints the path of the .deb on its last line.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"

if [[ "${MESHGATE_SKIP_BUILD:-0}" != "1" ]]; then
    "${CARGO:-cargo}" build --release -p meshgate -p meshgate-sidecar >&2
fi
for bin in meshgate meshgate-sidecar; do
    if [[ ! -x "$target/release/$bin" ]]; then
        echo "error: $target/release/$bin is missing (cargo build --release -p meshgate -p meshgate-sidecar)" >&2
        exit 1
    fi
done

# The workspace version, from [workspace.package] in Cargo.toml.
base_version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)"
version="${base_version}${VERSION_SUFFIX:-}"
arch="$(dpkg --print-architecture)"

stage="$target/debian/stage"
rm -rf "$stage"
mkdir -p "$stage/DEBIAN"

# Stripped, as Debian ships binaries: the release profile's line tables
# quadruple their size.
install -D -s -m 0755 "$target/release/meshgate" "$stage/usr/bin/meshgate"
install -D -s -m 0755 "$target/release/meshgate-sidecar" "$stage/usr/bin/meshgate-sidecar"
install -D -m 0640 packaging/meshgate.toml "$stage/etc/meshgate/meshgate.toml"
install -D -m 0644 packaging/systemd/meshgate.service "$stage/lib/systemd/system/meshgate.service"
install -D -m 0644 packaging/systemd/meshgate-sidecar@.service "$stage/lib/systemd/system/meshgate-sidecar@.service"
doc="$stage/usr/share/doc/meshgate"
install -D -m 0644 README.md "$doc/README.md"
install -D -m 0644 config/README.md "$doc/config.md"
install -D -m 0644 packaging/copyright "$doc/copyright"
install -d "$doc/examples"
install -m 0644 config/examples/*.toml "$doc/examples/"
install -m 0644 packaging/compose.yaml "$doc/examples/compose.yaml"

cp packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$stage/DEBIAN/"
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"
# Everything under /etc is a conffile: dpkg keeps the admin's edits.
(cd "$stage" && find etc -type f -printf '/%p\n') > "$stage/DEBIAN/conffiles"

# Shared-library dependencies of the binaries, as dpkg-shlibdeps sees them;
# passwd for useradd in postinst, procps for the unit's /bin/kill,
# ca-certificates for the roots pingora's TLS client loads at start-up.
depends="libc6"
if command -v dpkg-shlibdeps >/dev/null 2>&1; then
    work="$(mktemp -d)"
    mkdir -p "$work/debian"
    printf 'Source: meshgate\n\nPackage: meshgate\nArchitecture: any\n' > "$work/debian/control"
    if found="$(cd "$work" && dpkg-shlibdeps -O "$stage/usr/bin/meshgate" "$stage/usr/bin/meshgate-sidecar" 2>/dev/null)"; then
        depends="${found#shlibs:Depends=}"
    fi
    rm -rf "$work"
fi

installed_size="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
cat > "$stage/DEBIAN/control" <<CONTROL
Package: meshgate
Version: $version
Architecture: $arch
Maintainer: meshgate developers <dev@meshgate.invalid>
Installed-Size: $installed_size
Depends: $depends, passwd, procps, ca-certificates
Section: net
Priority: optional
Homepage: https://example.invalid/meshgate
Description: edge gateway and service mesh appliance
 meshgate terminates HTTP/1.1 and HTTP/2 at the edge, authenticates users
 with JWTs and routes requests into a service mesh with retries, budgets,
 timeouts, circuit breaking, outlier ejection and canary splits. One TOML
 file (/etc/meshgate/meshgate.toml) configures it all.
 .
 This package ships the appliance (meshgate, systemd unit meshgate.service)
 and the mesh sidecar (meshgate-sidecar, template unit
 meshgate-sidecar@.service).
CONTROL

(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) > "$stage/DEBIAN/md5sums"

out="$target/debian/meshgate_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$out" >&2
echo "$out"
