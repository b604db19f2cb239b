"""Run a command and report its peak RSS, measured right.

A child's ru_maxrss survives exec, so a process forked from a large parent (the benchmark holds a big
backlog in memory) would report the parent's size. This small wrapper forks the measured command itself
and prints its peak RSS in kB on stderr's last line, as `peak_rss_kb=N`.
"""

from __future__ import annotations

import os
import subprocess
import sys


def main() -> int:
    process = subprocess.Popen(sys.argv[1:])
    _, status, usage = os.wait4(process.pid, 0)
    print(f"peak_rss_kb={usage.ru_maxrss}", file=sys.stderr)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    raise SystemExit(main())
