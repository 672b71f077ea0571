"""The programs the benchmark needs: install what is missing, report versions.

Debian packages are installed with apt-get when running as root; otherwise
the exact command is printed and the run stops. oha comes from crates.io
(`cargo install oha --locked`) into a cache directory, so a second run does
not rebuild it. It is built with `--features http3` (see `OHA_FEATURES`),
the load generator of the HTTP/3 rows.
"""

import os
import re
import shutil
import subprocess
import sys

# command -> Debian package. nginx-light is enough (return, proxy, ssl, http2);
# `nginx` is the fallback on releases without it.
APT = {
    "nginx": ["nginx-light", "nginx"],
    "haproxy": ["haproxy"],
    "wrk": ["wrk"],
    "h2load": ["nghttp2-client"],
    "openssl": ["openssl"],
    "taskset": ["util-linux"],
    # Only the HTTP/3 peer (issue 4); Debian's caddy is built with quic-go.
    "caddy": ["caddy"],
}

# oha is built with HTTP/3 (`--http-version 3`); the cache key includes the
# features, so changing them makes the next run build oha again.
OHA_FEATURES = ["http3"]


def cache_dir():
    base = os.environ.get("MESHGATE_BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "meshgate-bench"
    )
    os.makedirs(base, exist_ok=True)
    return base


def _apt_candidate(pkgs):
    """The first of `pkgs` that apt knows about (apt-cache policy shows a candidate)."""
    for pkg in pkgs:
        r = subprocess.run(["apt-cache", "policy", pkg], capture_output=True, text=True)
        m = re.search(r"Candidate:\s*(\S+)", r.stdout)
        if m and m.group(1) != "(none)":
            return pkg
    return pkgs[0]


def ensure_debian_tools(log):
    missing = [cmd for cmd in APT if shutil.which(cmd) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pkgs = " ".join(APT[c][0] for c in missing)
        sys.exit(
            f"missing: {', '.join(missing)}. Install them with:\n"
            f"  sudo apt-get update && sudo apt-get install -y {pkgs}\n"
            "and run the benchmark again."
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log(f"installing {', '.join(missing)} with apt-get")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    pkgs = sorted({_apt_candidate(APT[c]) for c in missing})
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *pkgs],
        check=True,
        env=env,
        timeout=900,
    )
    still = [cmd for cmd in APT if shutil.which(cmd) is None]
    if still:
        sys.exit(f"apt-get ran but these are still missing: {', '.join(still)}")


def ensure_oha(log):
    """Path of an oha binary: $OHA, else the cached build, else build it."""
    if os.environ.get("OHA"):
        return os.environ["OHA"]
    tag = "oha" + "".join(f"+{f}" for f in OHA_FEATURES)
    root = os.path.join(cache_dir(), tag)
    binary = os.path.join(root, "bin", "oha")
    if os.access(binary, os.X_OK):
        return binary
    cargo = shutil.which("cargo")
    if cargo is None:
        sys.exit("oha is missing and cargo is not on PATH to build it (cargo install oha --locked)")
    argv = [cargo, "install", "oha", "--locked", "--root", root]
    if OHA_FEATURES:
        argv += ["--features", ",".join(OHA_FEATURES)]
    log(f"building oha once into {root} (a few minutes): {' '.join(argv)}")
    subprocess.run(argv, check=True, timeout=1800)
    return binary


def _first_line(argv):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (r.stdout + r.stderr).strip()
    return text.splitlines()[0].strip() if text else None


def versions(oha, meshgate):
    return {
        "nginx": _first_line(["nginx", "-v"]),
        "haproxy": _first_line(["haproxy", "-v"]),
        "wrk": _first_line(["wrk", "-v"]),
        "h2load": _first_line(["h2load", "--version"]),
        "caddy": _first_line(["caddy", "version"]),
        "oha": _first_line([oha, "--version"]),
        "openssl": _first_line(["openssl", "version"]),
        "meshgate": _first_line([meshgate, "--version"]),
        "rustc": _first_line(["rustc", "--version"]),
        "python": sys.version.split()[0],
    }


def machine():
    model, mhz = None, None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model is None:
                    model = line.split(":", 1)[1].strip()
                if line.startswith("cpu MHz") and mhz is None:
                    mhz = float(line.split(":", 1)[1])
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return {
        "nproc": os.cpu_count(),
        "cpus_allowed": sorted(os.sched_getaffinity(0)),
        "cpu_model": model,
        "cpu_mhz": mhz,
        "mem_mib": mem,
        "kernel": os.uname().release,
    }


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:
        return None
