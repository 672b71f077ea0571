"""Checks the load harness's CPU accounting against a real process.

Run by `cargo test -p meshgate-bench` (tests/harness.rs). The child burns
CPU in a thread that then exits, and later burns a few milliseconds more on
request; the harness must count the exited thread and see the few
milliseconds, which clock ticks (10 ms) cannot.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from loadbench import procs  # noqa: E402
from child import Child  # noqa: E402

CHILD = r"""
import sys, threading, time

def burn(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass

t = threading.Thread(target=burn, args=(0.2,))
t.start()
t.join()
print("ready", flush=True)
sys.stdin.readline()
burn(0.003)
print("done", flush=True)
sys.stdin.readline()
"""


def main():
    with Child(CHILD) as child:
        child.expect("ready")
        first = procs.cpu_seconds([child.pid])
        with open(f"/proc/{child.pid}/stat") as f:
            stat = f.read()
        fields = stat[stat.rfind(")") + 2:].split()
        ticks = (int(fields[11]) + int(fields[12])) / procs.CLK_TCK
        # The thread that burned 0.2 s has exited; its time still counts.
        assert first >= 0.2, f"exited thread's CPU time missing: {first:.4f} s"
        # The same time /proc/PID/stat counts, to within its tick.
        assert abs(first - ticks) <= 0.02, f"clock {first:.4f} s, ticks {ticks:.2f} s"

        child.step("done")
        spent = procs.cpu_seconds([child.pid]) - first
        # 3 ms of burning (plus a read and a print) shows as that, not as
        # zero or a whole 10 ms tick.
        assert 0.003 <= spent < 0.009, f"3 ms of CPU measured as {spent * 1000:.3f} ms"
        # A process that has gone counts as nothing, without an error.
        child.exit()
        assert procs.cpu_seconds([child.pid]) == 0.0
    print("ok")


if __name__ == "__main__":
    main()
