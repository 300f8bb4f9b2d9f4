"""Measure one record count and latency: each variant against one sandbox CRM.

Usage::

    python bench/run.py --records 100000 --latency-ms 0 --json results.json

The sandbox CRM runs in its own process (``python -m crm_dagster.sandbox``). Each variant runs
in a fresh subprocess, one after another, so that its memory is measured on its own. See
``VARIANTS`` below for what each one runs.

For each variant the JSON file has an object with:

* ``wall_s``: seconds from process start to exit, interpreter start-up and imports included.
* ``load_s``: seconds inside the variant after imports (not for the CLI variants).
* ``steps_s``: seconds of dlt's extract, normalize and load steps, where dlt runs.
* ``records_per_s``: records served by the sandbox divided by ``wall_s``.
* ``peak_rss_mb``: highest sum of resident memory over the variant's process tree, sampled
  every 10 ms, and at least the largest single process's peak as the kernel reports it.
* ``requests``: ``/v1`` requests the sandbox served during the variant.
* ``rows``: rows in the warehouse table ``crm.crm_data`` afterwards, or the records that the
  HTTP loop counted.
* ``sandbox_cpu_s``: CPU seconds the sandbox process used during the variant. Compared with
  ``wall_s`` it shows whether the sandbox was the bottleneck.
* ``ok``, ``exit_code``, ``timed_out``, ``memory_capped``, ``error``: how the run ended. A
  variant is ``ok`` when it exited with status 0 and, for a first load, the table has one row
  per record.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
API_KEY = "bench-key-not-secret"
SEED = 0
SAMPLE_INTERVAL_S = 0.01
MB = 1024 * 1024


@dataclass(frozen=True)
class Variant:
    """One way of loading the CRM, and what it changes against the project's defaults."""

    runner: str
    """``http_floor``, ``dlt_defaults`` or ``asset`` (see bench/variants.py), or ``cli``."""
    description: str
    contract: dict[str, Any] = field(default_factory=dict)
    """Contract settings written to a CRM_CONTRACT_FILE for this variant."""
    env: dict[str, str] = field(default_factory=dict)
    reverts: tuple[str, ...] = ()
    """Changes that bench/variants.py undoes in process (--revert)."""
    state_of: str | None = None
    """Variant whose warehouse and dlt state this one continues from."""
    full_refresh: bool = False
    definitions: tuple[str, ...] = ("-m", "crm_dagster.definitions")
    """Dagster CLI arguments that name the code location, for the CLI variants."""


# Every speed change reverted at once: pages as dictionaries, dlt's INSERT statements, gzip, a
# string data selector, DuckDB's default memory limit (80% of RAM) and insertion order, Arrow's
# default allocator, proxy settings read per request, and sequential paging.
ALL_REVERTED_ENV = {
    "DATA_WRITER__DISABLE_COMPRESSION": "false",
    "CRM_DUCKDB_MEMORY_LIMIT": "80%",
    "ARROW_DEFAULT_MEMORY_POOL": "mimalloc",
}

VARIANTS: dict[str, Variant] = {
    "http_floor": Variant("http_floor", "plain requests loop over the pages, no processing"),
    "dlt_defaults": Variant("dlt_defaults", "plain dlt rest_api pipeline, dlt's defaults"),
    "asset_in_process": Variant("asset", "dagster.materialize of crm_data"),
    "asset_rerun": Variant(
        "asset",
        "crm_data again, nothing changed in the CRM (incremental)",
        state_of="asset_in_process",
    ),
    "asset_rerun_full": Variant(
        "asset",
        "crm_data again, nothing changed, full_refresh = true",
        state_of="asset_in_process",
        full_refresh=True,
    ),
    "asset_sequential": Variant(
        "asset", "crm_data with max_in_flight = 1", contract={"max_in_flight": 1}
    ),
    "asset_in_flight_4": Variant(
        "asset", "crm_data with max_in_flight = 4", contract={"max_in_flight": 4}
    ),
    "asset_cli": Variant("cli", "dagster asset materialize, in-process executor"),
    "asset_without_arrow": Variant(
        "asset",
        "crm_data with pages as dictionaries, written as JSON lines",
        contract={"arrow_batch_records": 0},
    ),
    "asset_without_jsonl": Variant(
        "asset",
        "crm_data with pages as dictionaries and dlt's default INSERT file format",
        contract={"arrow_batch_records": 0},
        reverts=("jsonl",),
    ),
    "asset_without_uncompressed": Variant(
        "asset",
        "crm_data with gzip-compressed intermediate files",
        env={"DATA_WRITER__DISABLE_COMPRESSION": "false"},
    ),
    "asset_without_compiled_selector": Variant(
        "asset", "crm_data with the data selector as a string", reverts=("compiled_selector",)
    ),
    "asset_without_memory_limit": Variant(
        "asset",
        "crm_data with DuckDB's default memory limit (80% of RAM)",
        env={"CRM_DUCKDB_MEMORY_LIMIT": "80%"},
    ),
    "asset_without_insertion_order": Variant(
        "asset",
        "crm_data with DuckDB's preserve_insertion_order left on",
        reverts=("insertion_order",),
    ),
    "asset_without_system_allocator": Variant(
        "asset",
        "crm_data with Arrow's default allocator (mimalloc)",
        env={"ARROW_DEFAULT_MEMORY_POOL": "mimalloc"},
    ),
    "asset_without_frozen_gc": Variant(
        "asset",
        "crm_data with Python's garbage collector tracing every object during the load",
        reverts=("frozen_gc",),
    ),
    "asset_without_all": Variant(
        "asset",
        "crm_data with every speed change reverted",
        contract={"max_in_flight": 1, "arrow_batch_records": 0},
        env=ALL_REVERTED_ENV,
        reverts=(
            "jsonl",
            "compiled_selector",
            "insertion_order",
            "environment_once",
            "frozen_gc",
        ),
    ),
    "asset_cli_multiprocess": Variant(
        "cli",
        "dagster asset materialize, Dagster's default multiprocess executor",
        definitions=("-f", str(BENCH_DIR / "multiprocess_definitions.py")),
    ),
}
DEFAULT_VARIANTS = (
    "http_floor",
    "dlt_defaults",
    "asset_in_process",
    "asset_rerun",
    "asset_sequential",
    "asset_cli",
)


@dataclass
class Sandbox:
    """The sandbox CRM process and its base URL."""

    process: subprocess.Popen[str]
    base_url: str

    def cpu_seconds(self) -> float:
        """Return the user plus system CPU seconds the sandbox process has used so far."""
        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    def take_request_count(self) -> int:
        """Return the number of ``/v1`` requests logged since the last call, and clear the log."""
        response = requests.delete(f"{self.base_url}/_sandbox/requests", timeout=30)
        response.raise_for_status()
        return int(response.json()["cleared"])


@contextmanager
def running_sandbox(records: int, latency_ms: float) -> Iterator[Sandbox]:
    """Start the sandbox CRM, generate all its records, and yield it; stop it afterwards."""
    command = [sys.executable, "-m", "crm_dagster.sandbox", "--port", "0"]
    command += ["--records", str(records), "--api-key", API_KEY, "--seed", str(SEED)]
    command += ["--latency-ms", str(latency_ms)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+", line)
        if match is None:
            raise RuntimeError(f"The sandbox CRM did not start: it printed {line!r}.")
        sandbox = Sandbox(process, match.group(0))
        # The sandbox generates records on first access. Reading the last record generates them
        # all now, so that no variant pays for generation.
        response = requests.get(
            f"{sandbox.base_url}/v1/resource",
            params={"api_key": API_KEY, "offset": max(records - 1, 0), "limit": 1},
            timeout=600,
        )
        response.raise_for_status()
        sandbox.take_request_count()
        yield sandbox
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


class TreeMemorySampler:
    """Sample the summed resident memory of a process and all its descendants.

    When ``cap_mb`` is set and the sum exceeds it, the process group is killed.
    """

    def __init__(self, pid: int, cap_mb: float | None = None) -> None:
        self.pid = pid
        self.cap_bytes = cap_mb * MB if cap_mb else None
        self.peak_bytes = 0
        self.capped = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            try:
                processes = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for process in processes:
                # A process that exited between listing and reading counts as zero.
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    total += process.memory_info().rss
            self.peak_bytes = max(self.peak_bytes, total)
            if self.cap_bytes is not None and total > self.cap_bytes and not self.capped:
                self.capped = True
                kill_group(self.pid)
            self._stop.wait(SAMPLE_INTERVAL_S)


def kill_group(pid: int) -> None:
    """Kill the process group that ``pid`` leads; ignore it if it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def measure(
    command: list[str],
    env: dict[str, str],
    cwd: Path,
    log_path: Path,
    timeout_s: float,
    max_rss_mb: float | None,
) -> dict[str, Any]:
    """Run ``command`` in a new process group and return its wall seconds, memory and status.

    The command is killed with its process group after ``timeout_s``, or as soon as its
    process tree uses more than ``max_rss_mb`` of resident memory.
    """
    with log_path.open("w") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        timed_out = threading.Event()

        def stop_on_timeout() -> None:
            timed_out.set()
            kill_group(process.pid)

        with TreeMemorySampler(process.pid, max_rss_mb) as sampler:
            timer = threading.Timer(timeout_s, stop_on_timeout)
            timer.start()
            try:
                _, status, usage = os.wait4(process.pid, 0)
            except BaseException:
                # Interrupted (Ctrl-C or SIGTERM): take the variant's process group down too.
                kill_group(process.pid)
                raise
            finally:
                timer.cancel()
        wall_s = time.perf_counter() - started
    # os.wait4 reaped the process, so Popen must not wait for it again.
    process.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in KiB on Linux: the peak of this process or of a descendant it waited for.
    own_peak_mb = usage.ru_maxrss * 1024 / MB
    return {
        "wall_s": round(wall_s, 3),
        "peak_rss_mb": round(max(sampler.peak_bytes / MB, own_peak_mb), 1),
        "max_process_rss_mb": round(own_peak_mb, 1),
        "exit_code": process.returncode,
        "timed_out": timed_out.is_set(),
        "memory_capped": sampler.capped,
        "log": str(log_path),
    }


def variant_env(variant: Variant, state_dir: Path, sandbox: Sandbox) -> dict[str, str]:
    """Return the environment of one variant: its own dlt, Dagster and DuckDB locations."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CRM_")}
    env.pop("DESTINATION_TYPE", None)
    dagster_home = state_dir / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / ".dagster_home" / "dagster.yaml", dagster_home / "dagster.yaml")
    env.update(
        {
            "DLT_DATA_DIR": str(state_dir / "dlt"),
            "CRM_DUCKDB_PATH": str(state_dir / "warehouse.duckdb"),
            "DAGSTER_HOME": str(dagster_home),
            "RUNTIME__DLTHUB_TELEMETRY": "false",
            "CRM_BASE_URL": sandbox.base_url,
            "CRM_API_KEY": API_KEY,
        }
    )
    env.update(variant.env)
    if variant.contract:
        contract_file = state_dir / "contract.toml"
        lines = [f"{key} = {json.dumps(value)}" for key, value in variant.contract.items()]
        contract_file.write_text("\n".join(lines) + "\n")
        env["CRM_CONTRACT_FILE"] = str(contract_file)
    return env


def variant_command(
    name: str, variant: Variant, sandbox: Sandbox, state_dir: Path, profile: bool
) -> list[str]:
    """Return the command line of one variant."""
    if variant.runner == "cli":
        dagster = shutil.which("dagster", path=str(Path(sys.executable).parent)) or "dagster"
        return [dagster, "asset", "materialize", *variant.definitions, "--select", "crm_data"]

    command = [sys.executable, str(BENCH_DIR / "variants.py"), variant.runner]
    command += ["--base-url", sandbox.base_url, "--api-key", API_KEY]
    command += ["--workdir", str(state_dir), "--result", str(state_dir / f"{name}.json")]
    for change in variant.reverts:
        command += ["--revert", change]
    if variant.full_refresh:
        command.append("--full-refresh")
    if profile:
        command += ["--profile", str(state_dir / f"{name}.prof")]
    return command


def count_warehouse_rows(path: Path) -> int | None:
    """Return the rows of ``crm.crm_data`` in a DuckDB file, or None when it has no such table."""
    import duckdb

    if not path.exists():
        return None
    with duckdb.connect(str(path), read_only=True) as connection:
        try:
            return int(connection.execute("select count(*) from crm.crm_data").fetchone()[0])
        except duckdb.CatalogException:
            return None


def run_variant(
    name: str,
    sandbox: Sandbox,
    workdir: Path,
    records: int,
    timeout_s: float,
    max_rss_mb: float | None,
    profile: bool,
) -> dict[str, Any]:
    """Run one variant against ``sandbox`` and return its measurements."""
    variant = VARIANTS[name]
    state_dir = workdir / (variant.state_of or name)
    if variant.state_of is None:
        # A first load starts from an empty warehouse, also when it is repeated.
        shutil.rmtree(state_dir, ignore_errors=True)
    env = variant_env(variant, state_dir, sandbox)
    # dlt_defaults and http_floor run outside the project, so the project's .dlt settings do
    # not apply to them. The asset variants run from the project root, as Dagster does.
    cwd = state_dir if variant.runner in ("http_floor", "dlt_defaults") else PROJECT_ROOT
    command = variant_command(name, variant, sandbox, state_dir, profile)
    cpu_before = sandbox.cpu_seconds()
    sandbox.take_request_count()

    result = measure(command, env, cwd, state_dir / f"{name}.log", timeout_s, max_rss_mb)

    result["requests"] = sandbox.take_request_count()
    result["sandbox_cpu_s"] = round(sandbox.cpu_seconds() - cpu_before, 3)
    result_file = state_dir / f"{name}.json"
    if result_file.exists():
        result.update(json.loads(result_file.read_text()))
    if variant.runner != "http_floor":
        result["rows"] = count_warehouse_rows(state_dir / "warehouse.duckdb")
    if variant.runner == "http_floor" and result.get("load_s"):
        result["pages_per_s"] = round(result["requests"] / result["load_s"])
    result["records"] = records
    result["records_per_s"] = round(records / result["wall_s"]) if result["wall_s"] else None
    result["description"] = variant.description
    result["command"] = " ".join(command)
    result["ok"] = result["exit_code"] == 0
    if result["ok"] and result.get("rows") != records:
        result["ok"] = False
        result["error"] = f"expected {records} rows in the table, found {result.get('rows')}"
    return result


def print_table(results: dict[str, dict[str, Any]]) -> None:
    """Write a short text table of the results to stdout."""
    columns = ("wall_s", "load_s", "peak_rss_mb", "requests", "rows", "sandbox_cpu_s")
    print(f"{'variant':<34}" + "".join(f"{column:>14}" for column in columns) + "  ok")  # noqa: T201
    for name, result in results.items():
        cells = "".join(f"{format_cell(result.get(column)):>14}" for column in columns)
        print(f"{name:<34}{cells}  {result['ok']}")  # noqa: T201


def format_cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return "-" if value is None else str(value)


def build_parser() -> argparse.ArgumentParser:
    """Build the command line parser of this script."""
    parser = argparse.ArgumentParser(
        description="Load the sandbox CRM with each variant and measure time, memory and requests."
    )
    parser.add_argument("--records", type=int, required=True, help="records the sandbox serves")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="sandbox delay per request, in ms"
    )
    parser.add_argument("--json", type=Path, required=True, help="JSON file to write")
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help="comma-separated variants to run, in order; one of "
        f"{', '.join(VARIANTS)} (default {','.join(DEFAULT_VARIANTS)})",
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=1800.0,
        help="kill a variant after this many seconds and record it as timed out (default 1800)",
    )
    parser.add_argument(
        "--max-rss-mb",
        type=float,
        help="kill a variant whose process tree uses more resident memory than this, in MB",
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep each variant's files here (default: a temporary folder)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="write a cProfile file per variant to the workdir"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each variant this many times and keep the fastest run (default 1)",
    )
    return parser


def combine_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge repeated runs of one variant: the fastest run, with the highest peak of all runs.

    Other processes on the machine only ever add time, so the fastest run is the best estimate
    of the variant's own time. Memory varies less, and the highest peak is the safe figure.
    """
    fastest = min(runs, key=lambda run: run["wall_s"])
    combined = dict(fastest)
    combined["wall_s_runs"] = [run["wall_s"] for run in runs]
    combined["peak_rss_mb"] = max(run["peak_rss_mb"] for run in runs)
    combined["peak_rss_mb_runs"] = [run["peak_rss_mb"] for run in runs]
    combined["ok"] = all(run["ok"] for run in runs)
    return combined


def main(argv: list[str] | None = None) -> int:
    """Run the variants, write the JSON file and print a table; return the exit status."""
    args = build_parser().parse_args(argv)
    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"Unknown variants {unknown}: choose from {', '.join(VARIANTS)}.")
    for name in names:
        state_of = VARIANTS[name].state_of
        if state_of and (state_of not in names or names.index(state_of) > names.index(name)):
            raise SystemExit(f"Variant {name} needs {state_of} before it in --variants.")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="crm-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with running_sandbox(args.records, args.latency_ms) as sandbox:
        # Rounds of every variant, not all runs of one variant and then the next, so that a
        # machine that slows down for a while slows all variants alike.
        for _ in range(args.repeat):
            for name in names:
                runs[name].append(
                    run_variant(
                        name,
                        sandbox,
                        workdir,
                        args.records,
                        args.timeout_s,
                        args.max_rss_mb,
                        args.profile,
                    )
                )
                result = combine_runs(runs[name])
                result["latency_ms"] = args.latency_ms
                results[name] = result
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(result["ok"] for result in results.values()) else 1


def exit_on_sigterm(signum: int, frame: Any) -> None:
    """Turn SIGTERM into SystemExit, so that the sandbox and the running variant are stopped."""
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    sys.exit(main())
