"""Memory, timing and result-header helpers shared by the benchmarks (stdlib only, Linux /proc).

Both worker interpreters (.venv and .venv-celltypist) import this file from benchmarks/, so
it must not import numpy, sclabel or celltypist.

Memory terms used in the results:
  rss        resident set size now (VmRSS)
  hwm        peak RSS since the last `reset_peak()` (VmHWM; Linux resets it on
             `echo 5 > /proc/self/clear_refs`), i.e. the peak of one phase
  maxrss     resource.getrusage(RUSAGE_SELF).ru_maxrss: the peak over the process life so far.
             Linux resets it together with VmHWM on clear_refs, so the workers read it
             before `reset_peak()` and report the larger of the two readings
  tree peak  the largest sum of RSS over this process and all its descendants, sampled every
             50 ms (CellTypist's logistic regression fits one-vs-rest classes in joblib worker
             processes, whose memory RUSAGE_SELF does not see; shared pages count twice)
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import threading
import time
from datetime import date
from pathlib import Path

MiB = 1024 * 1024


def _status_kib(field: str, pid: int | str = "self") -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0
    return 0


def rss_mib() -> float:
    return _status_kib("VmRSS") / 1024


def hwm_mib() -> float:
    return _status_kib("VmHWM") / 1024


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def children_maxrss_mib() -> float:
    """Largest peak RSS of any terminated, waited-for child process."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS so `hwm_mib()` measures the next phase alone."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _descendants(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        for child in parents.get(pid, []):
            out.append(child)
            todo.append(child)
    return out


class TreePeak:
    """Samples the summed RSS of this process and its descendants in a background thread."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_mib = 0.0
        self.max_children = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        pids = _descendants(os.getpid())
        total = _status_kib("VmRSS") + sum(_status_kib("VmRSS", pid) for pid in pids)
        self.peak_mib = max(self.peak_mib, total / 1024)
        self.max_children = max(self.max_children, len(pids))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> TreePeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


def timed_repeats(fn, *, min_calls: int = 3, max_calls: int = 20, min_total_s: float = 2.0):
    """Call fn() at least `min_calls` times (more while the total is under `min_total_s`).

    Returns (first result, list of seconds per call). The first call is included.
    """
    times, first = [], None
    while len(times) < max_calls:
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
        if first is None:
            first = result
        if len(times) >= min_calls and sum(times) >= min_total_s:
            break
    return first, times


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def machine(device: str = "no GPU") -> str:
    """The machine line every result file and RESULTS.md table starts from."""
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {device}"


def run_header(script: str, device: str = "no GPU") -> dict:
    """machine, command (this run's, as typed from the project root) and date of a result."""
    command = f"python benchmarks/{Path(script).name} " + " ".join(sys.argv[1:])
    return {"machine": machine(device), "command": command, "date": str(date.today())}


def write_json(path: str | Path, value: dict) -> None:
    Path(path).write_text(json.dumps(value, indent=2, default=str) + "\n")


def import_baseline(modules: list[list[str]]) -> dict:
    """RSS after importing each group of modules in turn (cumulative), from a bare interpreter."""
    import importlib

    steps = [{"after": "python", "rss_mib": rss_mib()}]
    for group in modules:
        start = time.perf_counter()
        for name in group:
            importlib.import_module(name)
        steps.append(
            {
                "after": "+ " + ", ".join(group),
                "rss_mib": rss_mib(),
                "seconds": time.perf_counter() - start,
            }
        )
    return {"python": sys.version.split()[0], "steps": steps, "maxrss_mib": maxrss_mib()}


RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"


def update_results(block: str, start: str, end: str, heading: str | None = None) -> Path:
    """Put a generated `block` (which begins with `start` and ends with `end`) into
    RESULTS.md in place of the previous one, or append it under `heading` the first time;
    hand-written text around the markers is kept."""
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else "# Benchmark results\n"
    block = block.rstrip("\n")
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + (f"## {heading}\n\n" if heading else "") + block + "\n"
    RESULTS_MD.write_text(text)
    return RESULTS_MD
