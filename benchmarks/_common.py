"""What the benchmark scripts share: the CPU's name for a table's header, timing a call, and
writing a script's own section of RESULTS.md. Imported by the scripts in this folder (they
run as ``python benchmarks/<script>.py``, which puts this folder on ``sys.path``)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (every table says which CPU it ran on).

    >>> cpu_name()
    'AMD EPYC'
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def median_seconds(fn: Callable[[], object], calls: int) -> float:
    """The median wall-clock time of ``calls`` consecutive calls of ``fn``.

    >>> median_seconds(lambda: sum(range(1000)), 20) < 1.0
    True
    """
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_section(path: str, name: str, text: str, *, first: bool = False) -> None:
    """Put ``text`` between the markers ``<!-- name begin -->`` and ``<!-- name end -->`` of
    ``path``, replacing an earlier run's and leaving the rest of the file as it is; without
    the markers, add the section at the end (or at the top with ``first``). Rerunning with
    the same text leaves the file unchanged.

    >>> write_section("benchmarks/RESULTS.md", "bench_load", "# Under load ...")
    """
    begin, end = f"<!-- {name} begin -->", f"<!-- {name} end -->"
    old = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    block = f"{begin}\n{text.strip(chr(10))}\n{end}"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1]
    elif first:
        new = block + "\n\n" + old
    else:
        new = (old.rstrip("\n") + "\n\n" if old.strip() else "") + block + "\n"
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(new)
