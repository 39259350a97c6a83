"""Processes for the tests of locks and of what killed processes leave behind."""

import subprocess
import sys


def exited_pid() -> int:
    """The pid of a process that has exited and been reaped: a killed run's, as far as a lock can tell."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid
