"""A Python child process driven line by line, for the harness checks.

The child runs `code`, which prints a word when it reaches each step and
reads a line from stdin before going on; `Child.step` sends that line and
checks the word that comes back.
"""

import subprocess
import sys


class Child:
    def __init__(self, code):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pid = self.proc.pid

    def expect(self, word):
        got = self.proc.stdout.readline().strip()
        assert got == word, f"child said {got!r}, not {word!r}"

    def step(self, word):
        """Let the child go on to its next step and wait until it says `word`."""
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        self.expect(word)

    def exit(self):
        """Let the child run to its end and reap it."""
        self.proc.stdin.write("exit\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
