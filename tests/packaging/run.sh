#!/usr/bin/env bash
# The packaging test (tests/tests/packaging.rs runs it from `make test`;
# it also runs alone). Needs root: it builds Debian roots with debootstrap
# and chroots into them. What it checks:
#   1. packaging/build-deb.sh builds the .deb; a second build with a version
#      suffix is the upgrade; the conffile list names the config.
#   2. systemd-analyze verify passes on both units.
#   3. Into a fresh debootstrap root (--variant=minbase, cached under
#      target/packaging/): dpkg -i; the user, the 0700 state directory,
#      --help of both binaries, `meshgate check` of the installed config.
#   4. In a network namespace of its own (so the stock ports never clash
#      with anything on this machine): the installed config edited to add a
#      mesh service; `meshgate run` as user meshgate tells $NOTIFY_SOCKET
#      READY=1; a demo service behind the installed meshgate-sidecar joins
#      the mesh; curl through gateway and sidecar; STOPPING=1 on SIGTERM.
#   5. dpkg -i of the rebuilt package keeps the edited config and the CA;
#      dpkg -r keeps config and state, dpkg -P removes them (the user stays).
#   6. The container image's root filesystem, built from the runtime stage
#      of packaging/Containerfile (its RUN, COPY, USER, WORKDIR, HEALTHCHECK
#      and ENTRYPOINT/CMD lines) on a fresh debootstrap root: the
#      entrypoint runs as the image's user, curl gets the status page, and
#      the HEALTHCHECK command passes.
#   7. packaging/compose.yaml parses as YAML and names the appliance and
#      three services with sidecars.
# Environment: MESHGATE_SKIP_BUILD=1 packages target/release as it is
# (what the Rust test does; `make test` builds it first).
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
script="$repo/tests/packaging/run.sh"
target="${CARGO_TARGET_DIR:-$repo/target}"
work="$target/packaging"
suite="${DEBIAN_SUITE:-bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
    local limit=$1 start=$SECONDS
    shift
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS - start >= limit)); then
            return 1
        fi
        sleep 0.2
    done
}

# Unmounts everything under a root, deepest first.
unmount_all() {
    local root=$1
    findmnt -rn -o TARGET | { grep -F "$root/" || true; } | sort -r | while read -r m; do
        umount -l "$m" || true
    done
}

# A fresh copy of the cached debootstrap root at $1.
fresh_root() {
    local root=$1
    if [[ -e "$root" ]]; then
        unmount_all "$root"
        rm -rf --one-file-system "$root"
    fi
    cp -a "$base" "$root"
    mount -t proc proc "$root/proc"
}

# ---------------------------------------------------------------- phases
# The phases that start servers run inside `unshare --net` (see the bottom
# of this file), where only their own loopback exists.

phase_run_installed() {
    local root=$1
    ip link set lo up
    # Global, not local: the EXIT trap runs after this function returned.
    pids=()
    trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
    local sock=/run/meshgate-test-notify.sock
    # A stand-in for systemd's notify socket: records every datagram.
    python3 - "$root$sock" "$root/run/notify.log" >/dev/null 2>&1 <<'PY' &
import socket, sys
path, log = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
import os
os.chmod(path, 0o666)
while True:
    data = s.recv(4096)
    with open(log, "ab") as f:
        f.write(data + b"\n")
PY
    pids+=($!)
    wait_for 10 test -S "$root$sock" || fail "the notify listener did not start"

    chroot --userspec=meshgate:meshgate "$root" env NOTIFY_SOCKET="$sock" \
        /usr/bin/meshgate run --config /etc/meshgate/meshgate.toml >"$work/meshgate.log" 2>&1 &
    local gw=$!
    pids+=($gw)
    wait_for 30 grep -qx READY=1 "$root/run/notify.log" \
        || { cat "$work/meshgate.log"; fail "meshgate never sent READY=1"; }
    ok "meshgate run (as user meshgate) sent READY=1 to NOTIFY_SOCKET"
    curl -fsS http://127.0.0.1:8080/ -o "$work/status.html" || fail "no status page on :8080"
    ok "curl http://127.0.0.1:8080/ answered 200"
    curl -fsS http://127.0.0.1:9901/ready >/dev/null || fail "admin /ready did not answer 200"
    # Into a file first: `grep -q` stops reading at its first match, and
    # curl, still writing, would then fail the pipeline.
    curl -fsS http://127.0.0.1:9901/metrics -o "$work/metrics.txt" \
        && grep -q '^# HELP' "$work/metrics.txt" || fail "admin /metrics has no metrics"
    ok "admin /ready and /metrics"

    wait_for 20 test -s "$root/var/lib/meshgate/ca/trust-bundle.pem" \
        || { cat "$work/meshgate.log"; fail "no trust bundle in /var/lib/meshgate/ca"; }
    [[ "$(chroot "$root" stat -c '%U %a' /var/lib/meshgate/ca/ca-key.pem)" == "meshgate 600" ]] \
        || fail "the CA key is not meshgate's, mode 0600"
    ok "the mesh CA is in /var/lib/meshgate, key mode 0600"
    chroot --userspec=meshgate:meshgate "$root" /usr/bin/meshgate demo service \
        --name echo --version v1 --instance echo-1 --listen 127.0.0.1:9101 \
        >"$work/echo.log" 2>&1 &
    pids+=($!)
    chroot --userspec=meshgate:meshgate "$root" /usr/bin/meshgate-sidecar \
        --ca-file /var/lib/meshgate/ca/trust-bundle.pem --service echo \
        --app 127.0.0.1:9101 --inbound 127.0.0.1:15101 --outbound 127.0.0.1:15001 \
        >"$work/sidecar.log" 2>&1 &
    pids+=($!)
    if ! wait_for 30 curl -fsS -o "$work/echo.json" http://127.0.0.1:8080/echo/hello; then
        cat "$work/meshgate.log" "$work/sidecar.log"
        fail "no answer from the echo service through gateway and sidecar"
    fi
    grep -q '"service":"echo"' "$work/echo.json" || fail "unexpected answer: $(cat "$work/echo.json")"
    grep -q 'spiffe://meshgate.local/gateway' "$work/echo.json" \
        || fail "the sidecar did not see the gateway's mesh identity: $(cat "$work/echo.json")"
    ok "curl /echo/hello: gateway -> installed meshgate-sidecar (mTLS) -> demo service"

    kill -TERM "$gw"
    wait_for 20 grep -qx STOPPING=1 "$root/run/notify.log" || fail "meshgate never sent STOPPING=1"
    ok "SIGTERM: meshgate sent STOPPING=1"
    wait "$gw" || fail "meshgate did not exit 0 after SIGTERM"
}

phase_run_container() {
    local root=$1 user=$2 health=$3
    shift 3
    ip link set lo up
    chroot --userspec="$user:$user" "$root" "$@" >"$work/container.log" 2>&1 &
    image_pid=$!
    trap 'kill "$image_pid" 2>/dev/null || true' EXIT
    wait_for 30 curl -fsS -o /dev/null http://127.0.0.1:8080/ \
        || { cat "$work/container.log"; fail "the image's entrypoint serves nothing on :8080"; }
    ok "the image's entrypoint ($*) as $user: curl :8080 answered 200"
    wait_for 10 chroot --userspec="$user:$user" "$root" bash -c "$health" \
        || fail "the HEALTHCHECK command fails"
    ok "the HEALTHCHECK command passes"
}

if [[ "${1:-}" == "--in-netns" ]]; then
    shift
    "$@"
    exit $?
fi

# ---------------------------------------------------------------- main

if [[ "$(id -u)" != "0" ]]; then
    fail "the packaging test needs root (debootstrap, chroot, dpkg -i, network namespaces); run it as root, as CI does"
fi
for cmd in debootstrap dpkg-deb dpkg-shlibdeps systemd-analyze curl unshare ip python3; do
    command -v "$cmd" >/dev/null || fail "$cmd is missing: run scripts/prereqs.sh test"
done
started=$SECONDS
mkdir -p "$work"
trap 'unmount_all "$work"' EXIT

# minbase plus what the package depends on beyond it (procps: /bin/kill;
# ca-certificates: the upstream TLS client loads the system roots).
includes=procps,ca-certificates
base="$work/base-$suite-${includes//,/-}"
step "a Debian $suite minbase root (cached in $base)"
if [[ ! -d "$base" ]]; then
    rm -rf --one-file-system "$base.tmp"
    debootstrap --variant=minbase --include="$includes" "$suite" "$base.tmp" "$mirror" >"$work/debootstrap.log" 2>&1 \
        || { tail -20 "$work/debootstrap.log"; fail "debootstrap failed"; }
    mv "$base.tmp" "$base"
fi
ok "base root ready"

step "build the packages"
export MESHGATE_SKIP_BUILD="${MESHGATE_SKIP_BUILD:-0}"
deb1="$("$repo/packaging/build-deb.sh" | tail -n 1)"
deb2="$(MESHGATE_SKIP_BUILD=1 VERSION_SUFFIX=+upgrade1 "$repo/packaging/build-deb.sh" | tail -n 1)"
[[ "$deb1" == "$target/debian/"*.deb && -f "$deb1" && -f "$deb2" ]] || fail "no .deb in target/debian"
ok "built $(basename "$deb1") and $(basename "$deb2")"
dpkg-deb -I "$deb1" conffiles | grep -qx /etc/meshgate/meshgate.toml || fail "the config is not a conffile"
ok "/etc/meshgate/meshgate.toml is a conffile"

step "systemd-analyze verify"
units="$work/units"
rm -rf "$units"
mkdir -p "$units"
cp "$repo/packaging/systemd/meshgate.service" "$units/"
cp "$repo/packaging/systemd/meshgate-sidecar@.service" "$units/meshgate-sidecar@demo.service"
# The units name /usr/bin binaries and /bin/kill; verify them against a
# root that has them, plus systemd's own units (sysinit.target and the
# like) from the systemd that provides systemd-analyze here.
fresh_root "$work/verify-root"
cp -an /lib/systemd/system/. "$work/verify-root/lib/systemd/system/"
cp "$deb1" "$work/verify-root/tmp/"
chroot "$work/verify-root" dpkg -i "/tmp/$(basename "$deb1")" >"$work/verify-dpkg.log" 2>&1 \
    || { cat "$work/verify-dpkg.log"; fail "dpkg -i failed"; }
if ! SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --root="$work/verify-root" \
    --man=no "$units/meshgate.service" "$units/meshgate-sidecar@demo.service" >"$work/verify.log" 2>&1; then
    cat "$work/verify.log"
    fail "systemd-analyze verify"
fi
if [[ -s "$work/verify.log" ]]; then
    cat "$work/verify.log"
    fail "systemd-analyze verify printed warnings"
fi
ok "systemd-analyze verify: both units clean"

step "install into a fresh root"
root="$work/root"
fresh_root "$root"
cp "$deb1" "$deb2" "$root/tmp/"
chroot "$root" dpkg -i "/tmp/$(basename "$deb1")" >"$work/dpkg-install.log" 2>&1 \
    || { cat "$work/dpkg-install.log"; fail "dpkg -i failed"; }
ok "dpkg -i $(basename "$deb1")"
for f in /usr/bin/meshgate /usr/bin/meshgate-sidecar /lib/systemd/system/meshgate.service \
    /lib/systemd/system/meshgate-sidecar@.service /usr/share/doc/meshgate/copyright; do
    [[ -f "$root$f" ]] || fail "$f is not installed"
done
chroot "$root" getent passwd meshgate >/dev/null || fail "no user meshgate"
# stat inside the root: the owner names are the root's, not this machine's.
[[ "$(chroot "$root" stat -c '%U %G %a' /var/lib/meshgate)" == "meshgate meshgate 700" ]] \
    || fail "/var/lib/meshgate is $(chroot "$root" stat -c '%U %G %a' /var/lib/meshgate), not meshgate meshgate 700"
[[ "$(chroot "$root" stat -c '%U %G %a' /etc/meshgate/meshgate.toml)" == "root meshgate 640" ]] \
    || fail "/etc/meshgate/meshgate.toml is not root:meshgate 0640"
ok "files, user meshgate, /var/lib/meshgate meshgate:meshgate 0700, config root:meshgate 0640"
chroot "$root" /usr/bin/meshgate --help | grep -q "Usage" || fail "meshgate --help"
chroot "$root" /usr/bin/meshgate-sidecar --help | grep -q "Usage" || fail "meshgate-sidecar --help"
chroot "$root" /usr/bin/meshgate check /etc/meshgate/meshgate.toml || fail "the installed config does not check"
ok "meshgate check /etc/meshgate/meshgate.toml passes on a fresh install"

step "edit the config: add a mesh service behind a route"
python3 - "$root/etc/meshgate/meshgate.toml" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
anchor = '[[route]]\nname = "status-page"'
assert anchor in text, "the status-page route moved; update this test"
route = ('# edited by the packaging test\n[[route]]\nname = "echo"\n'
         'match = { path_prefix = "/echo" }\nservice = "echo"\n'
         'rewrite = { path_prefix = "/" }\n\n')
text = text.replace(anchor, route + anchor, 1)
text += '\n[[service]]\nname = "echo"\ndiscovery = "mesh"\n'
open(path, "w").write(text)
PY
chroot "$root" /usr/bin/meshgate check /etc/meshgate/meshgate.toml || fail "the edited config does not check"
ok "edited config checks"

step "run the installed binaries (own network namespace)"
unshare --net "$script" --in-netns phase_run_installed "$root" || fail "running the installed package"

step "upgrade to $(basename "$deb2")"
chroot "$root" dpkg -i "/tmp/$(basename "$deb2")" >"$work/dpkg-upgrade.log" 2>&1 \
    || { cat "$work/dpkg-upgrade.log"; fail "the upgrade failed"; }
[[ "$(chroot "$root" dpkg-query -W -f '${Version}' meshgate)" == *+upgrade1 ]] || fail "not upgraded"
grep -q "edited by the packaging test" "$root/etc/meshgate/meshgate.toml" || fail "the upgrade lost the edited config"
[[ -s "$root/var/lib/meshgate/ca/ca-key.pem" ]] || fail "the upgrade lost the mesh CA"
ok "upgraded; the edited config and the mesh CA survived"

step "remove, then purge"
chroot "$root" dpkg -r meshgate >"$work/dpkg-remove.log" 2>&1 || { cat "$work/dpkg-remove.log"; fail "dpkg -r"; }
[[ ! -e "$root/usr/bin/meshgate" && ! -e "$root/usr/bin/meshgate-sidecar" ]] || fail "binaries left after remove"
[[ -f "$root/etc/meshgate/meshgate.toml" ]] || fail "remove deleted the conffile"
[[ -d "$root/var/lib/meshgate/ca" ]] || fail "remove deleted the mesh state"
ok "dpkg -r: binaries gone, config and mesh state kept"
chroot "$root" dpkg -P meshgate >"$work/dpkg-purge.log" 2>&1 || { cat "$work/dpkg-purge.log"; fail "dpkg -P"; }
[[ ! -e "$root/etc/meshgate" ]] || fail "purge left /etc/meshgate"
[[ ! -e "$root/var/lib/meshgate" ]] || fail "purge left /var/lib/meshgate"
[[ -z "$(chroot "$root" dpkg-query -W -f '${Status}' meshgate 2>/dev/null | grep -v not-installed || true)" ]] \
    || fail "dpkg still knows meshgate"
chroot "$root" getent passwd meshgate >/dev/null || fail "purge removed the system user (Debian keeps it)"
ok "dpkg -P: /etc/meshgate and /var/lib/meshgate gone; the system user stays"

step "the container image's root filesystem (packaging/Containerfile)"
croot="$work/image-root"
fresh_root "$croot"
plan="$work/image-plan.sh"
python3 - "$repo/packaging/Containerfile" "$target" "$repo" "$croot" >"$plan" <<'PY'
import json, shlex, sys
path, target, repo, root = sys.argv[1:]
lines, cur = [], ""
for raw in open(path):
    line = raw.rstrip("\n")
    if line.lstrip().startswith("#") and not cur:
        continue
    if line.endswith("\\") and not line.endswith("\\\\"):
        cur += line[:-1] + " "
        continue
    cur += line
    if cur.strip():
        lines.append(cur.strip())
    cur = ""
stages, stage = {}, None
for l in lines:
    word = l.split(None, 1)[0].upper()
    if word == "FROM":
        stage = l.split()[-1]
        stages[stage] = []
    elif stage:
        stages[stage].append(l)
run = stages.get("runtime")
assert run, "no `FROM ... AS runtime` stage"
out = ["set -e"]
user, workdir, entry, cmd, health = "root", "/", [], [], None
for l in run:
    word, rest = l.split(None, 1)
    word = word.upper()
    if word == "RUN":
        out.append("chroot %s sh -c %s" % (shlex.quote(root), shlex.quote(rest)))
    elif word == "COPY":
        args = shlex.split(rest)
        src, dst = args[-2], args[-1]
        if args[0].startswith("--from=build"):
            assert src.startswith("/src/target/release/"), src
            src = target + "/release/" + src[len("/src/target/release/"):]
        else:
            src = repo + "/" + src
        out.append("install -D -m 0755 %s %s" % (shlex.quote(src), shlex.quote(root + dst))
                   if "/bin/" in dst else
                   "install -D -m 0644 %s %s" % (shlex.quote(src), shlex.quote(root + dst)))
    elif word == "USER":
        user = rest.strip()
    elif word == "WORKDIR":
        workdir = rest.strip()
    elif word == "ENTRYPOINT":
        entry = json.loads(rest)
    elif word == "CMD":
        cmd = json.loads(rest)
    elif word == "HEALTHCHECK":
        h = json.loads(rest[rest.index("CMD") + 3:])
        assert h[:2] == ["bash", "-c"], h
        health = h[2]
    elif word == "EXPOSE":
        assert rest.split() == ["8080", "8443", "9901", "15012"], rest
    elif word in ("ENV", "LABEL"):
        pass
    else:
        raise SystemExit("unhandled Containerfile instruction in runtime stage: " + word)
assert entry and health and user != "root", "runtime stage needs ENTRYPOINT, HEALTHCHECK and a non-root USER"
print("\n".join(out))
print("IMAGE_USER=%s" % shlex.quote(user))
print("IMAGE_WORKDIR=%s" % shlex.quote(workdir))
print("IMAGE_HEALTH=%s" % shlex.quote(health))
print("IMAGE_CMD=(%s)" % " ".join(shlex.quote(a) for a in entry + cmd))
PY
# shellcheck disable=SC1090
source "$plan"
ok "runtime stage applied: user $IMAGE_USER, command ${IMAGE_CMD[*]}"
unshare --net "$script" --in-netns phase_run_container "$croot" "$IMAGE_USER" "$IMAGE_HEALTH" "${IMAGE_CMD[@]}" \
    || fail "running the image's root filesystem"

step "packaging/compose.yaml"
python3 - "$repo/packaging/compose.yaml" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
services = doc["services"]
assert "appliance" in services, "no appliance service"
apps = [n for n in services if n != "appliance" and not n.endswith("-sidecar")]
assert len(apps) == 3, apps
for a in apps:
    assert a + "-sidecar" in services, "no sidecar for " + a
    assert services[a]["network_mode"] == "service:appliance"
print("ok: compose.yaml parses: appliance, %s, each with a sidecar" % ", ".join(apps))
PY

unmount_all "$work"
echo
echo "packaging test passed in $((SECONDS - started))s"
