"""Checks the load harness's count of context switches against real processes.

Run by `cargo test -p meshgate-bench` (tests/harness.rs). A child sleeps a
known number of times on request (voluntary switches, in a second thread
too); then it and a second process spin on one CPU, where the scheduler
must take turns between them (involuntary switches).
"""

import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from loadbench import procs  # noqa: E402
from child import Child  # noqa: E402

CHILD = r"""
import sys, threading, time

def naps(n):
    for _ in range(n):
        time.sleep(0.001)

def spin(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass

print("ready", flush=True)
sys.stdin.readline()
t = threading.Thread(target=naps, args=(40,))
t.start()
naps(40)
t.join()
print("napped", flush=True)
sys.stdin.readline()
spin(0.4)
print("spun", flush=True)
sys.stdin.readline()
"""

SPINNER = "import time\nend = time.monotonic() + 0.6\nwhile time.monotonic() < end: pass\n"


def main():
    spinner = None
    with Child(CHILD) as child:
        child.expect("ready")
        vol0, invol0 = procs.switches_by_kind([child.pid])
        child.step("napped")
        vol1, invol1 = procs.switches_by_kind([child.pid])
        # 40 naps in the main thread are 40 voluntary switches at least
        # (the second thread's have gone with it, as /proc keeps only live
        # threads': the harness reads long-lived workers).
        assert vol1 - vol0 >= 40, f"40 sleeps counted as {vol1 - vol0} voluntary switches"
        assert procs.context_switches([child.pid]) == vol1 + invol1

        # Two spinners on one CPU: the child is preempted, and does not
        # sleep for it.
        cpu = {min(os.sched_getaffinity(0))}
        procs.set_affinity([child.pid], cpu)
        try:
            spinner = subprocess.Popen([sys.executable, "-c", SPINNER])
            procs.set_affinity([spinner.pid], cpu)
            child.step("spun")
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
        vol2, invol2 = procs.switches_by_kind([child.pid])
        assert invol2 - invol1 >= 1, "spinning beside another spinner was never preempted"
        assert vol2 - vol1 <= 10, f"spinning counted {vol2 - vol1} sleeps"

        # A process that has gone counts as nothing, without an error.
        child.exit()
        assert procs.switches_by_kind([child.pid]) == (0, 0)
    print("ok")


if __name__ == "__main__":
    main()
