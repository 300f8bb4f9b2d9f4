"""Run the benchmark matrix and write docs/benchmarks.md with its table, goals and plots.

Usage::

    python bench/suite.py                 # run everything (about 20 minutes on 2 cores)
    python bench/suite.py --from-results  # rewrite the page from bench/results/*.json

Each configuration (record count and latency) is one ``bench/run.py`` command, whose JSON goes
to ``bench/results/``. The page states those commands, the machine, and every number that
``bench/run.py`` measured. Nothing on the page is typed in by hand.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from report import DOC_PATH, write_page

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

# dlt's default INSERT file format peaked at about 3.5 GB for 100,000 and for 1,000,000 records
# here. The cap stops a variant that needs far more on another machine or dlt version before it
# exhausts the machine, and the page then reports how far it got.
MILLION_MEMORY_CAP_MB = 8000


@dataclass(frozen=True)
class Config:
    """One bench/run.py command: a record count, a latency and the variants to run."""

    records: int
    latency_ms: int
    variants: tuple[str, ...]
    max_rss_mb: int | None = None
    repeat: int = 1
    """Runs of each variant; the page shows the fastest, which other processes slowed least."""

    @property
    def name(self) -> str:
        return f"{self.records}_{self.latency_ms}ms"

    @property
    def json_path(self) -> Path:
        return RESULTS_DIR / f"{self.name}.json"

    def command(self) -> list[str]:
        """Return the bench/run.py command line, relative to the project root."""
        command = ["python", "bench/run.py", "--records", str(self.records)]
        command += ["--latency-ms", str(self.latency_ms)]
        command += ["--json", str(self.json_path.relative_to(PROJECT_ROOT))]
        command += ["--variants", ",".join(self.variants)]
        if self.max_rss_mb:
            command += ["--max-rss-mb", str(self.max_rss_mb)]
        if self.repeat > 1:
            command += ["--repeat", str(self.repeat)]
        return command


BASE = (
    "http_floor",
    "dlt_defaults",
    "asset_in_process",
    "asset_rerun",
    "asset_rerun_full",
    "asset_sequential",
)
CONFIGS = (
    Config(10_000, 0, (*BASE, "asset_cli"), repeat=3),
    Config(
        100_000,
        0,
        (
            *BASE,
            "asset_cli",
            "asset_cli_multiprocess",
            "asset_without_arrow",
            "asset_without_jsonl",
            "asset_without_uncompressed",
            "asset_without_compiled_selector",
            "asset_without_memory_limit",
            "asset_without_insertion_order",
            "asset_without_system_allocator",
            "asset_without_frozen_gc",
            "asset_without_all",
        ),
        repeat=3,
    ),
    Config(
        1_000_000,
        0,
        (
            "http_floor",
            "dlt_defaults",
            "asset_in_process",
            "asset_rerun",
            "asset_cli",
            "asset_without_arrow",
            "asset_without_memory_limit",
            "asset_without_insertion_order",
            "asset_without_system_allocator",
            "asset_without_frozen_gc",
        ),
        max_rss_mb=MILLION_MEMORY_CAP_MB,
    ),
    Config(10_000, 50, (*BASE, "asset_in_flight_4", "asset_cli"), repeat=3),
    Config(100_000, 50, (*BASE, "asset_in_flight_4", "asset_without_arrow", "asset_cli"), repeat=2),
)


def machine_info() -> dict[str, Any]:
    """Describe the machine and the library versions the benchmarks ran with."""
    model = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in ("dlt", "dagster", "dagster-dlt", "duckdb", "pyarrow", "requests", "psutil"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "cpu_model": model,
        "logical_cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def run_config(config: Config) -> dict[str, Any]:
    """Run one configuration with bench/run.py and return its run record."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    started = time.time()
    command = config.command()
    print("$ " + shlex.join(command), flush=True)  # noqa: T201
    completed = subprocess.run([sys.executable, *command[1:]], cwd=PROJECT_ROOT, check=False)
    return {
        "command": shlex.join(command),
        "exit_code": completed.returncode,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
        "minutes": round((time.time() - started) / 60, 1),
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
    }


def load_results() -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Read the results of every configuration and the suite record from bench/results/."""
    results = {}
    for config in CONFIGS:
        if config.json_path.exists():
            results[config.name] = json.loads(config.json_path.read_text())
    suite_file = RESULTS_DIR / "suite.json"
    suite = json.loads(suite_file.read_text()) if suite_file.exists() else {}
    return results, suite


def main(argv: list[str] | None = None) -> int:
    """Run the configurations (unless --from-results) and write the page; return the status."""
    parser = argparse.ArgumentParser(description="Run the benchmark matrix, write the docs page.")
    parser.add_argument(
        "--from-results",
        action="store_true",
        help="skip the runs and rewrite the page from bench/results/*.json",
    )
    parser.add_argument(
        "--configs",
        help="comma-separated configuration names to run, e.g. 10000_0ms,100000_50ms "
        f"(default all: {', '.join(config.name for config in CONFIGS)})",
    )
    args = parser.parse_args(argv)

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    suite_file = RESULTS_DIR / "suite.json"
    suite = json.loads(suite_file.read_text()) if suite_file.exists() else {}
    if not args.from_results:
        selected = set(args.configs.split(",")) if args.configs else None
        suite["machine"] = machine_info()
        runs = suite.setdefault("runs", {})
        for config in CONFIGS:
            if selected is None or config.name in selected:
                runs[config.name] = run_config(config)
                suite_file.write_text(json.dumps(suite, indent=2) + "\n")

    results, suite = load_results()
    write_page(results, suite)
    print(f"Wrote {DOC_PATH.relative_to(PROJECT_ROOT)}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
