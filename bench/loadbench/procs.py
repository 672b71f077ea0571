"""Processes the harness starts, and what /proc says about them.

Every server is started in its own session (process group), so stopping it
also stops its workers, and every one is registered so that `stop_all`
(called on exit, on an error and on SIGINT/SIGTERM) leaves nothing behind.
"""

import os
import random
import signal
import socket
import subprocess
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
_LIVE = []
_USED_PORTS = set()
_LOCK = threading.Lock()


class Proc:
    """One started server (and whatever it forks), logging to files."""

    def __init__(self, name, argv, workdir, cpus=None, env=None):
        self.name = name
        self.argv = argv
        self.log_path = os.path.join(workdir, f"{name}.log")
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        self.pid = self.popen.pid
        with _LOCK:
            _LIVE.append(self)

    def alive(self):
        return self.popen.poll() is None

    def tree(self):
        """This process and all its descendants."""
        return process_tree(self.pid) if self.alive() else []

    def log_tail(self, lines=20):
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()[-8192:]
        except OSError:
            return ""
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

    def stop(self, timeout=5.0):
        """SIGTERM the whole process group, SIGKILL what is left after `timeout`."""
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Workers may outlive a master that exited; the group catches them.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(2)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()
        with _LOCK:
            if self in _LIVE:
                _LIVE.remove(self)


def stop_all():
    with _LOCK:
        live = list(_LIVE)
    for p in reversed(live):
        p.stop(timeout=3.0)


def run(argv, timeout, cpus=None, check=False):
    """Run a client to completion with a hard time limit; returns (rc, stdout, stderr)."""
    p = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        return (-9, out.decode(errors="replace"), err.decode(errors="replace") + "\n(killed: time limit)")
    except BaseException:
        # Ctrl-C or SIGTERM while a load generator runs: it is in its own
        # session, so it has to be stopped here.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
        raise
    if check and p.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {p.returncode}: {err.decode(errors='replace')[-2000:]}")
    return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")


class Client:
    """A load generator started in the background (its own session, pinned
    like `run`'s), collected later with `finish`. Used for oha over HTTP/3,
    which can stay up to its QUIC idle timeout after its last request (see
    generators.oha_start). Registered so that `stop_all` kills it too."""

    def __init__(self, argv, cpus=None):
        self.argv = argv
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        self.pid = self.popen.pid
        self.name = os.path.basename(argv[0])
        with _LOCK:
            _LIVE.append(self)

    def finish(self, timeout):
        """(rc, stdout, stderr), killing the client after `timeout` seconds."""
        p = self.popen
        try:
            out, err = p.communicate(timeout=max(0.1, timeout))
            killed = False
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, err = p.communicate()
            killed = True
        with _LOCK:
            if self in _LIVE:
                _LIVE.remove(self)
        err = err.decode(errors="replace") + ("\n(killed: time limit)" if killed else "")
        return (-9 if killed else p.returncode), out.decode(errors="replace"), err

    def stop(self, timeout=0):
        self.finish(0.1)


def free_port():
    """A free loopback port below the ephemeral range (TCP and UDP both free,
    so an HTTP/3 listener can later share the number), never handed out twice
    in one run."""
    lo, hi = 20000, 32000
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            eph_lo = int(f.read().split()[0])
        hi = min(hi, eph_lo - 1)
    except (OSError, ValueError):
        pass
    for _ in range(500):
        port = random.randint(lo, hi)
        if port in _USED_PORTS:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t, socket.socket(
                socket.AF_INET, socket.SOCK_DGRAM
            ) as u:
                t.bind(("127.0.0.1", port))
                u.bind(("127.0.0.1", port))
        except OSError:
            continue
        _USED_PORTS.add(port)
        return port
    raise RuntimeError("no free loopback port found in 500 tries")


def wait_port(port, proc, timeout=15.0):
    """Wait until something accepts on 127.0.0.1:port, or fail with the log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited at start:\n{proc.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.name if proc else 'server'} did not listen on {port} within {timeout}s")


# ---------------------------------------------------------------- /proc

def _children_map():
    kids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # comm may contain spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(")") + 2:].split()
        kids.setdefault(int(fields[1]), []).append(int(entry))
    return kids


def process_tree(pid):
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def process_cpu_clock(pid):
    """The kernel's CPU-time clock of a whole process, for
    `time.clock_gettime`: the sum of every thread's time on a CPU, threads
    that have exited included, in nanoseconds. Linux numbers it
    `~pid << 3 | 2` (CPUCLOCK_SCHED on the process, not one thread); glibc's
    clock_getcpuclockid computes the same."""
    return ((~pid) << 3) | 2


def cpu_seconds(pids):
    """CPU time of the processes, plus the utime+stime of the children they
    have already reaped (nginx and haproxy workers replaced by a reload).

    A process's own time comes from its CPU-time clock, which the kernel
    keeps in nanoseconds. utime+stime in /proc/PID/stat count whole clock
    ticks (10 ms): on a run of 2,000 requests at 100 us each that is 20
    ticks, a 5% step, where the clock is exact. The ticks are the fallback
    when the clock cannot be read (the process is going away)."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        # fields[0] is field 3 (state): utime=14, stime=15, cutime=16, cstime=17
        reaped = (int(fields[13]) + int(fields[14])) / CLK_TCK
        try:
            own = time.clock_gettime(process_cpu_clock(pid))
        except OSError:
            own = (int(fields[11]) + int(fields[12])) / CLK_TCK
        total += own + reaped
    return total


def _threads(pids):
    """(pid, tid) of every thread of the processes that still run."""
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            yield pid, tid


def context_switches(pids):
    """Voluntary and involuntary context switches of every thread of the
    processes so far (each thread counts its own in /proc/PID/task)."""
    return sum(switches_by_kind(pids))


def switches_by_kind(pids):
    """(voluntary, involuntary) context switches of every thread of the
    processes so far. A voluntary one is a thread going to sleep (waiting
    for I/O); an involuntary one is a runnable thread made to give up its
    CPU, as when a process it woke on the same core preempts it."""
    vol = invol = 0
    for pid, tid in _threads(pids):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        invol += int(line.split()[1])
        except OSError:
            continue
    return vol, invol


def rss_kib(pids):
    """Sum of VmRSS over the processes (shared pages of a master and its
    workers are counted in each, as `ps` would)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def set_affinity(pids, cpus):
    """Pin every thread of every process (new threads inherit the mask)."""
    for _, tid in _threads(pids):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass


class PeakRss:
    """Samples the RSS of a process tree in the background; `peak` is the
    largest sum seen, `end` the sum when the load stopped. Used for the
    memory under load: the peak includes what earlier runs left in the
    allocator, the end is closer to what this load itself holds."""

    def __init__(self, tree_fn, interval=0.25):
        self.tree_fn = tree_fn
        self.interval = interval
        self.peak = 0
        self.end = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.tree_fn()))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(2)
        self.end = rss_kib(self.tree_fn())
        self.peak = max(self.peak, self.end)
