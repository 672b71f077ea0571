#!/usr/bin/env bash
# Profile-guided release build of meshgate and meshgate-sidecar (what
# `make release-pgo` runs; `make deb-pgo` packages the result).
#
#   scripts/pgo-build.sh        binaries in target/pgo/release/
#
# 1. builds both binaries instrumented (target/pgo-gen);
# 2. trains them: the quick load benchmark (bench/run.py --quick) with only
#    meshgate's targets, which sends HTTP/1.1, h2c, HTTP/2 and HTTP/3 over
#    TLS, full TLS handshakes, the mTLS sidecar pair (HTTP/1.1, HTTP/2,
#    gRPC) and a config reload through them; each process writes its
#    counts when it exits, counted from when its start-up settled (the
#    binaries reset the counters then: gateway/src/memory.rs);
# 3. merges the counts with llvm-profdata (rustup's llvm-tools component,
#    added if missing);
# 4. builds again with the profile (target/pgo);
# 5. links each binary again with the functions its training ran placed
#    side by side at the start of its code (scripts/pgo-order.py), so a
#    process maps the code it runs and little else: a sidecar's resident
#    code is a fraction of the binary's (bench/README.md has the figures).
#
# The training needs what the bench needs (nginx, wrk, h2load, oha; the
# bench installs them, a few minutes the first time) and takes under a
# minute; each build is a full release build in its own target directory
# (about 15 minutes in all on two cores), so the usual target/release and
# its cache stay as they are. bench/README.md has the gain.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cargo="${CARGO:-cargo}"
base="${CARGO_TARGET_DIR:-$root/target}"
gen="$base/pgo-gen"
out="$base/pgo"
profiles="$gen/profiles"
host="$(rustc -vV | sed -n 's/^host: //p')"

profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [[ ! -x "$profdata" ]]; then
    echo "pgo: adding rustup's llvm-tools component (llvm-profdata)" >&2
    rustup component add llvm-tools >&2
fi

# --target keeps the flags off build scripts and proc macros, which run on
# the build machine and are not what we profile.
build() {
    local dir=$1 flags=$2
    mkdir -p "$dir"
    CARGO_TARGET_DIR="$dir" RUSTFLAGS="$flags" "$cargo" build --release --locked \
        --target "$host" --bin meshgate --bin meshgate-sidecar 2>&1 | tee "$dir/pgo-build.log" >&2
}

echo "pgo: 1/5 instrumented build ($gen)" >&2
rm -rf "$profiles"
build "$gen" "-Cprofile-generate=$profiles"
# The training counts from when start-up has settled: the binaries call the
# profiling runtime's reset then, and in every other build a do-nothing
# stand-in of ours (gateway/src/memory.rs). Here the runtime's must be the
# one linked, or the order would mix start-up's code into the request path.
for bin in meshgate meshgate-sidecar; do
    if ! "$(dirname "$profdata")/llvm-nm" "$gen/$host/release/$bin" \
            | grep -E ' [tT] __llvm_profile_reset_counters$' >/dev/null; then
        echo "pgo: $bin does not link the profiling runtime's counter reset" >&2
        exit 1
    fi
done

echo "pgo: 2/5 training (bench/run.py --quick, meshgate's targets)" >&2
# One profile per process (%p), so the link order can tell which processes
# ran a function; each process resets its counters once its start-up has
# settled (MESHGATE_PGO_TRAINING; gateway/src/memory.rs).
MESHGATE_PGO_TRAINING=1 LLVM_PROFILE_FILE="$profiles/%p.profraw" python3 bench/run.py --quick \
    --targets meshgate,meshgate-sidecar,meshgate-sidecar-grpc \
    --meshgate "$gen/$host/release/meshgate" --out "$gen/training" >&2
if ! compgen -G "$profiles/*.profraw" >/dev/null; then
    echo "pgo: the training wrote no profiles to $profiles" >&2
    exit 1
fi

echo "pgo: 3/5 merging $(find "$profiles" -name '*.profraw' | wc -l) profiles" >&2
"$profdata" merge -o "$gen/merged.profdata" "$profiles"
# Named by its content: cargo sees RUSTFLAGS, not the file they name, so a
# new profile must change the flags for every crate to be built with it.
merged="$gen/meshgate-$(sha256sum "$gen/merged.profdata" | cut -c1-16).profdata"
mv "$gen/merged.profdata" "$merged"

echo "pgo: 4/5 optimized build ($out)" >&2
flags="-Cprofile-use=$merged"
build "$out" "$flags"
# A function whose code differs from the instrumented build's loses its
# profile; the two builds must compile the same code.
lost=$(grep -c "function control flow change detected" "$out/pgo-build.log" || true)
if [[ "$lost" != 0 ]]; then
    echo "pgo: $lost functions lost their profile (hash mismatch); see $out/pgo-build.log" >&2
    exit 1
fi

# Only the binary's own crate is built again: the extra arguments of
# `cargo rustc` go to it alone, and the same RUSTFLAGS keep every
# dependency as step 4 built it, so the symbols the order names stay.
echo "pgo: 5/5 linking with the trained functions first" >&2
mkdir -p "$out/release"
for pkg_bin in meshgate:meshgate meshgate-sidecar:meshgate-sidecar; do
    pkg=${pkg_bin%%:*} bin=${pkg_bin##*:}
    order="$out/$bin.order"
    python3 scripts/pgo-order.py "$profiles" "$gen/$host/release/$bin" "$out/$host/release/$bin" "$order"
    CARGO_TARGET_DIR="$out" RUSTFLAGS="$flags" "$cargo" rustc --release --locked --target "$host" \
        -p "$pkg" --bin "$bin" -- -Clink-arg=-Wl,--symbol-ordering-file="$order" >&2
    python3 scripts/pgo-order.py --check "$order" "$out/$host/release/$bin"
    # Copied beside and renamed over: a running copy of the previous
    # build keeps its file, where a copy over it would fail ("text file
    # busy").
    cp "$out/$host/release/$bin" "$out/release/$bin.new"
    mv -f "$out/release/$bin.new" "$out/release/$bin"
done
echo "$out/release/meshgate"
