"""What makes a `fastrnn bench` figure doubtful. Found once here, shown alike in bench.md,
bench.json and bench.png.

- A noisy row: its samples' max/min exceeds ``NOISY_SPREAD``. Something else took the cores
  during some samples, so the median may be off as well.
- A row above the sgemm peak: a host implementation's GFLOP/s above the large float32 matmul
  measured in the same run, which no recurrent layer reaches on the same cores. Either the peak
  was measured while the machine was busy or the row's time is wrong; neither is a result.
- A speedup over a noisy row: x ref or x torch divides the reference's or PyTorch's median,
  which is no better than that row.
- A loaded machine: the 1-minute load average before or during the run above the machine's
  CPUs. The load average counts runnable threads on the whole machine, so it is compared with
  all of its CPUs, not only those this process may use; the bench's own threads count too, at
  most ``threads`` of it.
- ``--threads`` above the cores: the threads take turns on the cores.

A noisy case is timed again while ``RetryBudget`` has time for it (``bench.time_case``).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Callable, Optional

from .machine import load_average

# Above this max/min a row is flagged and its case retried: the slowest sample lost a third of
# its time or more to something other than the call.
NOISY_SPREAD = 1.5
# A case is timed at most this many times, however much budget is left: a machine that stays
# busy for three attempts is busy, and the report says so.
MAX_ATTEMPTS = 3
# How often LoadWatch reads the load average during a run (the kernel updates it every 5 s).
LOAD_INTERVAL_S = 5.0


def spread(samples) -> float:
    """max/min of a row's samples (infinite when a sample read 0 s and another did not)."""
    low, high = min(samples), max(samples)
    return high / low if low > 0 else (1.0 if high == 0 else float("inf"))


def row_flags(record, peak_gflops: float) -> list:
    """Why ``record`` (one row of the report) is doubtful; empty when it is not."""
    flags = []
    row_spread = spread((record["min_ms"], record["max_ms"]))
    if row_spread > NOISY_SPREAD:
        flags.append(f"noisy: max/min {row_spread:.2f}x")
    if record["host"] and record["gflops"] > peak_gflops:
        flags.append(f"above the sgemm peak: {100 * record['gflops'] / peak_gflops:.0f} %")
    return flags


# The speedup columns, by the implementation whose median they divide.
SPEEDUP_COLUMNS = {"numpy": ("speedup_vs_reference", "x ref"),
                   "torch": ("speedup_vs_torch", "x torch")}


def flag_rows(records, peak_gflops: float):
    """Set every record's ``flags``: its own (``row_flags``), and a speedup column divided by a
    noisy row of the same case, which is no better than that row."""
    for r in records:
        r["flags"] = row_flags(r, peak_gflops)
    noisy = {(r["mode"], r["cell"], r["shape"], r["impl"]) for r in records
             if any(f.startswith("noisy") for f in r["flags"])}
    for r in records:
        for peer, (key, column) in SPEEDUP_COLUMNS.items():
            if (r["impl"] != peer and r.get(key) is not None
                    and (r["mode"], r["cell"], r["shape"], peer) in noisy):
                r["flags"].append(f"{column}: the {peer} row is noisy")


def threads_warning(threads: int, cores: int) -> Optional[str]:
    if threads <= cores:
        return None
    return (f"--threads {threads} is above the {cores} cores this process may run on: the "
            "threads take turns on the cores, so the times measure that rather than the "
            "implementations.")


def load_warning(load: dict) -> Optional[str]:
    """A warning when the load average (``LoadWatch.summary``) before or during the run
    exceeded the machine's CPUs."""
    before, during, cpus = load["before"], load["max_during"], load["cpus"]
    if max((v for v in (before, during) if v is not None), default=0.0) <= cpus:
        return None
    seen = [f"{before:.2f} before the run" if before is not None else None,
            f"up to {during:.2f} during it" if during is not None else None]
    return (f"The machine was busy: the 1-minute load average was "
            f"{' and '.join(s for s in seen if s)}, above its {cpus} CPUs. Other processes "
            "competed for the cores, so the times are slower and noisier than on an idle "
            "machine and the ratios less certain; run again when it is quiet.")


def report_warnings(report) -> list:
    """The warnings that head the report: threads and load, a changing sgemm peak, and how
    many rows are flagged. Needs the rows' ``flags``."""
    m = report["machine"]
    warnings = [threads_warning(m["threads"], m["cores"]),
                load_warning(report["load_average"])]
    peaks = report["sgemm_peaks_gflops"]
    if max(peaks) / min(peaks) > NOISY_SPREAD:
        warnings.append(f"The sgemm peak changed during the run ({peaks[0]:.1f} GFLOP/s before "
                        f"the cases, {peaks[1]:.1f} after): the machine's load changed. "
                        "GFLOP/s are compared with the higher.")
    flagged = [r for r in report["results"] if r["flags"]]
    if flagged:
        warnings.append(f"{len(flagged)} of {len(report['results'])} rows are flagged (the "
                        "flags column): their figures are not reliable.")
    return [w for w in warnings if w]


@dataclass
class RetryBudget:
    """Seconds a run may spend timing noisy cases again."""

    seconds: float
    used: float = 0.0

    def allows(self, cost_s: float) -> bool:
        return self.used + cost_s <= self.seconds

    def spend(self, seconds: float):
        self.used += seconds


class LoadWatch:
    """The 1-minute load average before a run and during it, read every ``interval_s`` on a
    daemon thread (one read of /proc/loadavg, a few microseconds) and once more at the end.
    ``read`` returns the load average or None (the OS does not say)."""

    def __init__(self, read: Callable = load_average, interval_s: float = LOAD_INTERVAL_S):
        self._read = read
        self.interval_s = interval_s
        self.before = None
        self.during = []
        self._stop = threading.Event()
        self._thread = None

    def sample(self):
        value = self._read()
        if value is not None:
            self.during.append(value)

    def _loop(self):
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self):
        self.before = self._read()
        self._thread = threading.Thread(target=self._loop, name="fastrnn-load-watch",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()
        return False

    def summary(self) -> dict:
        return {"before": self.before, "max_during": max(self.during, default=None),
                "after": self.during[-1] if self.during else None, "samples": len(self.during),
                "cpus": os.cpu_count()}
