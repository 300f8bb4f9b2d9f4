"""Write docs/benchmarks.md and its plots from the JSON that bench/run.py wrote.

Every number on the page comes from those files: ``bench/suite.py`` calls :func:`write_page`
after its runs, or alone with ``--from-results``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DOC_PATH = PROJECT_ROOT / "docs" / "benchmarks.md"
IMAGES_DIR = PROJECT_ROOT / "docs" / "images"
SCALING_PLOT = IMAGES_DIR / "bench_scaling.png"
LATENCY_PLOT = IMAGES_DIR / "bench_latency.png"

# (what the change is, the variant that reverts it, the configuration it is measured in, and
# the variant that has it).
ARROW = "Pages as Arrow tables, written as parquet"
CHANGES = (
    (ARROW, "asset_without_arrow", "100000_0ms", "asset_in_process"),
    (ARROW, "asset_without_arrow", "1000000_0ms", "asset_in_process"),
    (ARROW, "asset_without_arrow", "100000_50ms", "asset_in_process"),
    (
        "JSON lines instead of INSERT statements, pages as dictionaries",
        "asset_without_jsonl",
        "100000_0ms",
        "asset_without_arrow",
    ),
    ("Uncompressed intermediate files", "asset_without_uncompressed", "100000_0ms", None),
    ("Data selector compiled once", "asset_without_compiled_selector", "100000_0ms", None),
    ("DuckDB memory_limit 128MB", "asset_without_memory_limit", "100000_0ms", None),
    ("DuckDB memory_limit 128MB", "asset_without_memory_limit", "1000000_0ms", None),
    ("DuckDB preserve_insertion_order off", "asset_without_insertion_order", "100000_0ms", None),
    ("DuckDB preserve_insertion_order off", "asset_without_insertion_order", "1000000_0ms", None),
    ("Arrow on the system allocator", "asset_without_system_allocator", "100000_0ms", None),
    ("Arrow on the system allocator", "asset_without_system_allocator", "1000000_0ms", None),
    ("Garbage collector off older objects", "asset_without_frozen_gc", "100000_0ms", None),
    ("Garbage collector off older objects", "asset_without_frozen_gc", "1000000_0ms", None),
    ("All of the above, and 8 requests in flight", "asset_without_all", "100000_0ms", None),
    ("8 requests in flight (max_in_flight), not 1", "asset_sequential", "100000_50ms", None),
    ("8 requests in flight, not 4", "asset_in_flight_4", "100000_50ms", None),
)
VARIANT_ORDER = (
    "http_floor",
    "dlt_defaults",
    "asset_in_process",
    "asset_sequential",
    "asset_in_flight_4",
    "asset_rerun",
    "asset_rerun_full",
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
)
PAGE_SIZE = 100
DEFAULT_MAX_IN_FLIGHT = 8


def write_page(results: dict[str, dict[str, Any]], suite: dict[str, Any]) -> None:
    """Write docs/benchmarks.md and the two plots from ``results`` (by configuration name)."""
    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    plot_scaling(results)
    plot_latency(results)
    sections = [
        header(results),
        goals_section(results),
        results_section(results),
        changes_section(results),
        history_section(results),
        notes_section(results),
        claims_section(results),
        sandbox_section(results),
        machine_section(suite),
        commands_section(suite),
        variants_section(results),
    ]
    text = "\n\n".join(section.strip() for section in sections if section.strip())
    DOC_PATH.write_text(text + "\n")


# asset_in_process in the suite run before Arrow pages, adaptive read-ahead, the frozen
# garbage collector and max_in_flight 8 (2026-12-04, same kind of machine and commands):
# configuration, wall seconds, peak MB.
EARLIER_RUN = (
    ("100000_0ms", 9.80, 296),
    ("1000000_0ms", 92.21, 357),
    ("100000_50ms", 22.96, 297),
)


def history_section(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "## Before and after",
        "",
        "`asset_in_process` in the suite run before pages became Arrow tables, the read-ahead "
        "adapted to latency, the garbage collector was frozen during loads and `max_in_flight` "
        "went from 4 to 8, against this run. Both ran on this kind of machine (2 cores) with "
        "the same commands.",
        "",
        "| records, latency | before | now | peak before | peak now |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for config, wall, peak in EARLIER_RUN:
        now = get(results, config, "asset_in_process")
        records, latency = config.split("_")
        where = f"{int(records):,}, {latency}"
        if now is None:
            lines.append(f"| {where} | {seconds(wall)} | not measured | {peak:,} MB | |")
            continue
        lines.append(
            f"| {where} | {seconds(wall)} | {seconds(now['wall_s'])} | {peak:,} MB "
            f"| {megabytes(now['peak_rss_mb'])} |"
        )
    return "\n".join(lines)


def get(results: dict[str, Any], config: str, variant: str) -> dict[str, Any] | None:
    """Return one variant's result, or None when it was not measured or did not finish."""
    result = results.get(config, {}).get(variant)
    return result if result and result.get("ok") else None


def seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


def megabytes(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} MB"


def verdict(met: bool | None) -> str:
    if met is None:
        return "not measured"
    return "met" if met else "**missed**"


def header(results: dict[str, dict[str, Any]]) -> str:
    text = """
# Benchmarks

How long a full load of the CRM takes, how much memory it needs, and how both grow with the
number of records. `make bench` runs `python bench/suite.py`, which starts the sandbox CRM in
its own process and runs `bench/run.py` once per record count and latency (the commands are
listed at the end). Every number on this page was measured by those commands and written here
by `bench/report.py`. CI does not run them.

Each variant runs in a fresh process against the same sandbox data. **wall** is the time from
process start to exit, so it includes Python start-up and imports. Where a variant ran more than
once (**all runs**, in seconds), wall is the fastest run: other processes on the machine only
add time. A first load starts from an empty warehouse each time. **peak** is the highest
resident memory of the variant's whole process tree over all its runs, sampled every 10 ms with
psutil.
**requests** is what the sandbox served. **extract / normalize / load** are dlt's own step
times. The variants are described at the end of the page.
"""
    rerun = get(results, "10000_0ms", "asset_rerun")
    if rerun:
        text += (
            f"\nThe fixed cost of one Dagster run (start-up, imports, Dagster and dlt set-up) "
            f"shows in `asset_rerun` at 10,000 records, which made {rerun['requests']} "
            f"request(s) and took {seconds(rerun['wall_s'])}.\n"
        )
    return text


def goals_section(results: dict[str, dict[str, Any]]) -> str:
    rows = []
    floor = get(results, "100000_0ms", "http_floor")
    defaults = get(results, "100000_0ms", "dlt_defaults")
    asset = get(results, "100000_0ms", "asset_in_process")
    cli = get(results, "100000_0ms", "asset_cli")

    if asset and defaults:
        ratio = asset["wall_s"] / defaults["wall_s"]
        rows.append(
            (
                "100,000 records: asset at most 0.3 of dlt_defaults",
                f"{seconds(asset['wall_s'])} / {seconds(defaults['wall_s'])} = {ratio:.2f}",
                verdict(ratio <= 0.3),
            )
        )

    if asset and floor:
        ratio = asset["wall_s"] / floor["wall_s"]
        rows.append(
            (
                "100,000 records: asset within 3x of http_floor",
                f"{seconds(asset['wall_s'])} / {seconds(floor['wall_s'])} = {ratio:.1f}x",
                verdict(ratio <= 3),
            )
        )

    if asset and cli:
        extra = cli["wall_s"] - asset["wall_s"]
        rows.append(
            (
                "100,000 records: CLI at most 1.5 s more than in process",
                f"{seconds(cli['wall_s'])} - {seconds(asset['wall_s'])} = {extra:+.1f} s",
                verdict(extra <= 1.5),
            )
        )

    rows.extend(memory_goal_rows(results))
    rows.extend(latency_goal_rows(results))

    rerun = get(results, "100000_0ms", "asset_rerun")
    rerun_full = get(results, "100000_0ms", "asset_rerun_full")
    if rerun and rerun_full:
        rows.append(
            (
                "Second run, nothing changed (100,000 records)",
                f"incremental {seconds(rerun['wall_s'])}, {rerun['requests']} request(s); "
                f"full_refresh {seconds(rerun_full['wall_s'])}, "
                f"{rerun_full['requests']} requests",
                "reported",
            )
        )

    table = ["| Goal | Measured | Result |", "| --- | --- | --- |"]
    table += [f"| {goal} | {measured} | {result} |" for goal, measured, result in rows]
    return "## Goals\n\n" + "\n".join(table)


def memory_goal_rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    rows = []
    for variant in ("asset_in_process", "asset_cli"):
        million = get(results, "1000000_0ms", variant)
        hundred = get(results, "100000_0ms", variant)
        if million is None:
            continue
        peak = million["peak_rss_mb"]
        rows.append(
            (
                f"1,000,000 records: {variant} peak at most 500 MB",
                megabytes(peak),
                verdict(peak <= 500),
            )
        )
        if hundred:
            ratio = peak / hundred["peak_rss_mb"]
            rows.append(
                (
                    f"{variant} peak at 1,000,000 at most 1.3x the peak at 100,000",
                    f"{megabytes(peak)} / {megabytes(hundred['peak_rss_mb'])} = {ratio:.2f}x",
                    verdict(ratio <= 1.3),
                )
            )
    return rows


def latency_goal_rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    concurrent = get(results, "100000_50ms", "asset_in_process")
    sequential = get(results, "100000_50ms", "asset_sequential")

    if not concurrent or not sequential:
        return []
    rows = []
    speedup = sequential["wall_s"] / concurrent["wall_s"]
    rows.append(
        (
            "50 ms per request, 100,000 records: whole load at least 4x faster than sequential",
            f"{seconds(sequential['wall_s'])} / {seconds(concurrent['wall_s'])} = {speedup:.1f}x",
            verdict(speedup >= 4),
        )
    )

    paging = concurrent.get("steps_s", {}).get("extract")
    sequential_paging = sequential.get("steps_s", {}).get("extract")

    if paging and sequential_paging:
        speedup = sequential_paging / paging
        rows.append(
            (
                "Same, paging only (dlt's extract step)",
                f"{seconds(sequential_paging)} / {seconds(paging)} = {speedup:.1f}x",
                verdict(speedup >= 4),
            )
        )

    pages = concurrent["records"] // PAGE_SIZE
    ideal = pages * concurrent["latency_ms"] / 1000 / DEFAULT_MAX_IN_FLIGHT

    for label, value in (("whole load", concurrent["wall_s"]), ("paging only", paging)):
        if value is None:
            continue
        rows.append(
            (
                f"Same, {label} within 1.5x of pages x latency / in flight "
                f"= {pages} x 50 ms / {DEFAULT_MAX_IN_FLIGHT} = {ideal:.1f} s",
                f"{seconds(value)} = {value / ideal:.2f}x",
                verdict(value <= 1.5 * ideal),
            )
        )
    return rows


def results_section(results: dict[str, dict[str, Any]]) -> str:
    parts = ["## Results"]
    for config, title in (
        ("10000_0ms", "10,000 records, no added latency"),
        ("100000_0ms", "100,000 records, no added latency"),
        ("1000000_0ms", "1,000,000 records, no added latency"),
        ("10000_50ms", "10,000 records, 50 ms per request"),
        ("100000_50ms", "100,000 records, 50 ms per request"),
    ):
        if config not in results:
            parts.append(f"### {title}\n\nNot measured: no results file for {config}.")
            continue
        parts.append(f"### {title}\n\n" + results_table(results[config]))
    parts.append(
        "![Wall time and peak memory against record count](images/bench_scaling.png)\n\n"
        "![Wall time at 50 ms per request](images/bench_latency.png)"
    )
    return "\n\n".join(parts)


def results_table(config_results: dict[str, Any]) -> str:
    header_row = (
        "| variant | wall | all runs | records/s | peak | requests | rows | extract | normalize "
        "| load | sandbox CPU |"
    )
    lines = [
        header_row,
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    names = [name for name in VARIANT_ORDER if name in config_results]
    for name in names:
        result = config_results[name]
        steps = result.get("steps_s", {})
        if not result.get("ok"):
            lines.append(f"| {name} | {failure_text(result)} | | | | | | | | | |")
            continue
        runs = " / ".join(f"{wall:.1f}" for wall in result.get("wall_s_runs", []))
        lines.append(
            f"| {name} | {result['wall_s']:.2f} s | {runs} | {result['records_per_s']:,} "
            f"| {megabytes(result['peak_rss_mb'])} | {result['requests']:,} "
            f"| {result['rows']:,} | {step_text(steps, 'extract')} "
            f"| {step_text(steps, 'normalize')} | {step_text(steps, 'load')} "
            f"| {result['sandbox_cpu_s']:.2f} s |"
        )
    return "\n".join(lines)


def step_text(steps: dict[str, float], step: str) -> str:
    return f"{steps[step]:.2f} s" if step in steps else ""


def failure_text(result: dict[str, Any]) -> str:
    if result.get("memory_capped"):
        return (
            f"stopped after {result['wall_s']:.0f} s when its memory passed the cap of "
            f"{megabytes(result['peak_rss_mb'])} (see notes)"
        )
    if result.get("timed_out"):
        return f"stopped at the time limit after {result['wall_s']:.0f} s"
    return f"failed: {result.get('error') or 'exit code ' + str(result.get('exit_code'))}"


def changes_section(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "## What each change is worth",
        "",
        "Each row compares the project's defaults (`asset_in_process`; for JSON lines "
        "`asset_without_arrow`; `asset_cli` and `asset_rerun` where named) with a variant that "
        "reverts one change, in the same run against the same sandbox. A variant that "
        "reverts a change sets it back to the library's default for its own process only "
        "(see `bench/variants.py` and `bench/run.py`).",
        "",
        "| change | records, latency | without it | with it | peak without | peak with |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for description, variant, config, with_it in CHANGES:
        before = get(results, config, variant)
        after = get(results, config, with_it or "asset_in_process")
        lines.append(change_row(description, config, before, after))
    lines.append(
        change_row(
            "In-process executor for the CLI",
            "100000_0ms",
            get(results, "100000_0ms", "asset_cli_multiprocess"),
            get(results, "100000_0ms", "asset_cli"),
        )
    )
    lines.append(
        change_row(
            "Incremental second run (nothing changed)",
            "100000_0ms",
            get(results, "100000_0ms", "asset_rerun_full"),
            get(results, "100000_0ms", "asset_rerun"),
        )
    )
    return "\n".join(lines)


def change_row(
    description: str, config: str, before: dict[str, Any] | None, after: dict[str, Any] | None
) -> str:
    records, latency = config.split("_")
    where = f"{int(records):,}, {latency}"
    if before is None or after is None:
        return f"| {description} | {where} | not measured | | | |"
    return (
        f"| {description} | {where} | {seconds(before['wall_s'])} | {seconds(after['wall_s'])} "
        f"| {megabytes(before['peak_rss_mb'])} | {megabytes(after['peak_rss_mb'])} |"
    )


def notes_section(results: dict[str, dict[str, Any]]) -> str:
    notes = []
    capped = results.get("1000000_0ms", {}).get("dlt_defaults")
    hundred_defaults = get(results, "100000_0ms", "dlt_defaults")
    if capped and capped.get("memory_capped"):
        text = (
            f"- `dlt_defaults` at 1,000,000 records was measured once and stopped after "
            f"{capped['wall_s']:.0f} s, when its memory passed the suite's cap "
            f"({megabytes(capped['peak_rss_mb'])} at the last sample)."
        )
        if hundred_defaults:
            per_record_kb = hundred_defaults["peak_rss_mb"] * 1024 / hundred_defaults["records"]
            text += (
                f" At 100,000 records it peaked at {megabytes(hundred_defaults['peak_rss_mb'])}, "
                f"about {per_record_kb:.0f} KB per record, so a complete run would need roughly "
                f"{per_record_kb * 1_000_000 / 1024**2:.0f} GB (an estimate from that ratio)."
            )
        notes.append(text)
    elif capped and capped.get("ok"):
        load_step = capped.get("steps_s", {}).get("load")
        notes.append(
            f"- `dlt_defaults` at 1,000,000 records was measured once: it finished in "
            f"{seconds(capped['wall_s'])} with a peak of {megabytes(capped['peak_rss_mb'])}, "
            f"{seconds(load_step)} of it in the load step, where DuckDB runs dlt's INSERT "
            "statements."
        )

    asset = get(results, "100000_0ms", "asset_in_process")
    floor = get(results, "100000_0ms", "http_floor")
    without_arrow = get(results, "100000_0ms", "asset_without_arrow")
    rerun = get(results, "100000_0ms", "asset_rerun")
    if asset and floor and without_arrow and "normalize" in asset.get("steps_s", {}):
        steps = asset["steps_s"]
        dict_normalize = without_arrow.get("steps_s", {}).get("normalize")
        notes.append(
            f"- At 100,000 records the load spends {steps['extract']:.1f} s in dlt's extract "
            f"step, {steps['normalize']:.1f} s in normalize and {steps['load']:.1f} s in load. "
            f"With pages as dictionaries (`asset_without_arrow`), normalize took "
            f"{seconds(dict_normalize)}: dlt flattens and type-checks every record in Python, "
            "parsing two timestamps and a decimal per record. Arrow tables built from the "
            "declared columns skip that work."
        )
    if asset and floor and rerun:
        notes.append(
            f"- A run that loads nothing (`asset_rerun`) takes {seconds(rerun['wall_s'])}, "
            f"{rerun['wall_s'] / floor['wall_s']:.1f}x the whole `http_floor` run: Python "
            "start-up, importing Dagster, dlt and pyarrow, and setting up a Dagster run and a dlt "
            "pipeline. The rest of the gap to the plain HTTP loop is dlt's work per page in the "
            "extract step (its incremental cursor, its paginator and its writers) and the "
            "DuckDB merge."
        )

    sequential = get(results, "100000_0ms", "asset_sequential")
    if asset and sequential:
        difference = asset["wall_s"] - sequential["wall_s"]
        notes.append(
            f"- Without added latency, reading ahead (`max_in_flight` {DEFAULT_MAX_IN_FLIGHT}) "
            f"took {difference:+.1f} s against sequential paging at 100,000 records "
            f"({seconds(asset['wall_s'])} and {seconds(sequential['wall_s'])}). The sandbox "
            "responds within a millisecond, about as long as dlt spends per page, so the "
            "read-ahead keeps about two requests in flight: more worker threads would only "
            "compete with dlt for Python's global interpreter lock. Real CRMs take longer to "
            "respond, and the read-ahead then keeps more requests in flight."
        )

    concurrent = get(results, "100000_50ms", "asset_in_process")
    four = get(results, "100000_50ms", "asset_in_flight_4")
    if concurrent and four:
        notes.append(
            "- At 50 ms per request, 4 requests in flight, the earlier default, took "
            f"{seconds(four['wall_s'])} (extract {seconds(four['steps_s'].get('extract'))}) "
            f"against {seconds(concurrent['wall_s'])} (extract "
            f"{seconds(concurrent['steps_s'].get('extract'))}) with the default of 8. With 4, "
            "the whole load could not be 4x faster than sequential paging, because start-up, "
            "normalize and load do not shrink with requests in flight. A CRM that limits "
            "concurrent requests can lower `max_in_flight` in the contract."
        )
    if concurrent and "extract" in concurrent.get("steps_s", {}):
        rest = concurrent["wall_s"] - concurrent["steps_s"]["extract"]
        notes.append(
            f"- Outside paging, the 50 ms run at 100,000 records spent {rest:.1f} s in "
            "start-up, normalize and load, which do not depend on the latency. Requests in "
            "flight shorten only the paging, so the whole load speeds up by less than the "
            "number of requests in flight."
        )
    runs = (asset or {}).get("wall_s_runs", [])
    if len(runs) > 1:
        notes.append(
            f"- At 100,000 records, `asset_in_process` took from {min(runs):.1f} s to "
            f"{max(runs):.1f} s over its {len(runs)} runs (**all runs**), and other variants "
            "varied as much. Changes worth less than that spread are within the noise at that "
            "size. DuckDB's settings, the allocator and the garbage collector also have rows at "
            "1,000,000 records, where their effect is larger than the noise."
        )
    if not notes:
        return ""
    return "## Notes\n\n" + "\n".join(notes)


def claims_section(results: dict[str, dict[str, Any]]) -> str:
    floor = get(results, "100000_0ms", "http_floor")
    defaults = get(results, "100000_0ms", "dlt_defaults")
    jsonl_only = get(results, "100000_0ms", "asset_without_arrow")
    cli = get(results, "100000_0ms", "asset_cli")
    cli_multi = get(results, "100000_0ms", "asset_cli_multiprocess")
    asset = get(results, "100000_0ms", "asset_in_process")
    sequential_floor = get(results, "100000_50ms", "http_floor")

    lines = [
        "## Reported numbers, checked",
        "",
        "Numbers reported for this kind of machine before this page existed, against what the "
        "suite measured here (100,000 records, 1,000 pages).",
        "",
        "| reported | measured here |",
        "| --- | --- |",
    ]

    if defaults:
        lines.append(
            f"| dlt defaults: 33 to 43 s, 3.7 GB peak | {seconds(defaults['wall_s'])}, "
            f"{megabytes(defaults['peak_rss_mb'])} (`dlt_defaults`) |"
        )

    if floor:
        lines.append(
            f"| plain `requests` loop: 2.5 s | {seconds(floor['wall_s'])} (`http_floor`) |"
        )

    if jsonl_only:
        lines.append(
            "| jsonl or parquet: about 8 to 12 s and 300 MB | jsonl from dictionaries: "
            f"{seconds(jsonl_only['wall_s'])}, {megabytes(jsonl_only['peak_rss_mb'])} "
            "(`asset_without_arrow`); parquet from Arrow tables: "
            f"{seconds(asset['wall_s']) if asset else 'not measured'}, "
            f"{megabytes(asset['peak_rss_mb']) if asset else ''} (`asset_in_process`) |"
        )

    if cli_multi and asset:
        lines.append(
            "| CLI with the multiprocess executor: about 5.5 s more | "
            f"{cli_multi['wall_s'] - asset['wall_s']:+.1f} s (`asset_cli_multiprocess` "
            "against `asset_in_process`) |"
        )

    if cli and asset:
        lines.append(
            "| CLI in process: about 2.3 s more | "
            f"{cli['wall_s'] - asset['wall_s']:+.1f} s (`asset_cli` against "
            "`asset_in_process`) |"
        )

    if sequential_floor:
        lines.append(
            "| pages fetched one after another, so latency dominates | "
            f"`http_floor` at 50 ms per request: {seconds(sequential_floor['wall_s'])} for "
            "1,000 pages |"
        )
    return "\n".join(lines)


def sandbox_section(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "## Is the sandbox the bottleneck?",
        "",
        "The sandbox sets TCP_NODELAY, keeps connections alive and serves pages from "
        "pre-encoded JSON, and `bench/run.py` generates all records before the first variant. "
        "The sandbox's CPU seconds during every variant are in the tables above. Here they are "
        "set against the fastest client, the plain HTTP loop:",
        "",
        "| records, latency | http_floor pages/s | sandbox CPU | http_floor wall | share |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    shares = []
    for config in ("10000_0ms", "100000_0ms", "1000000_0ms"):
        floor = get(results, config, "http_floor")
        if floor is None:
            continue
        share = floor["sandbox_cpu_s"] / floor["wall_s"]
        shares.append(share)
        records, latency = config.split("_")
        lines.append(
            f"| {int(records):,}, {latency} | {floor.get('pages_per_s', 0):,} "
            f"| {floor['sandbox_cpu_s']:.2f} s | {floor['wall_s']:.2f} s | {share:.0%} |"
        )
    if shares and max(shares) < 0.5:
        lines += [
            "",
            f"The sandbox was busy for at most {max(shares):.0%} of the plain loop's wall time, "
            "so the client sets the pace, and the asset variants spend far longer per page.",
        ]
    return "\n".join(lines)


def machine_section(suite: dict[str, Any]) -> str:
    machine = suite.get("machine", {})
    versions = ", ".join(
        f"{name} {version}" for name, version in machine.get("versions", {}).items()
    )
    return f"""
## Machine

| | |
| --- | --- |
| CPU | {machine.get("cpu_model", "unknown")} |
| logical cores | {machine.get("logical_cores", "unknown")} |
| memory | {machine.get("memory_gb", "unknown")} GB |
| OS | {machine.get("os", "unknown")} |
| Python | {machine.get("python", "unknown")} |
| libraries | {versions} |

The load average before and after each command is listed under Commands. On 2 cores, a load
average above 2 means that other processes competed with the suite for CPU, which makes its
times longer than on an idle machine.
"""


def commands_section(suite: dict[str, Any]) -> str:
    lines = [
        "## Commands",
        "",
        "Run from the project root (`make bench` runs all of them and rewrites this page):",
        "",
        "| command | started | minutes | load average before / after (1, 5, 15 min) |",
        "| --- | --- | ---: | --- |",
    ]
    for run in suite.get("runs", {}).values():
        before = ", ".join(f"{value:.1f}" for value in run["load_average_before"])
        after = ", ".join(f"{value:.1f}" for value in run["load_average_after"])
        lines.append(
            f"| `{run['command']}` | {run['started']} | {run['minutes']} | {before} / {after} |"
        )
    return "\n".join(lines)


def variants_section(results: dict[str, dict[str, Any]]) -> str:
    descriptions: dict[str, str] = {}
    for config_results in results.values():
        for name, result in config_results.items():
            descriptions.setdefault(name, result.get("description", ""))
    lines = ["## Variants", "", "| variant | what it runs |", "| --- | --- |"]
    lines += [
        f"| `{name}` | {descriptions[name]} |" for name in VARIANT_ORDER if name in descriptions
    ]
    lines += [
        "",
        "`dlt_defaults` is `rest_api_source` with the offset paginator, limit 100, `total` read "
        "from each page, a merge on `id`, into DuckDB, run from a folder without `.dlt`, so "
        "every dlt setting is dlt's default. The asset variants run from the project root, so "
        "the project's `.dlt/config.toml` applies, as it does under Dagster.",
    ]
    return "\n".join(lines)


def plot_scaling(results: dict[str, dict[str, Any]]) -> None:
    """Plot wall time and peak memory against record count at 0 ms latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = ("10000_0ms", "100000_0ms", "1000000_0ms")
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for variant in ("http_floor", "dlt_defaults", "asset_in_process", "asset_cli"):
        points = []
        for config in configs:
            result = get(results, config, variant)
            if result:
                points.append((result["records"], result["wall_s"], result["peak_rss_mb"]))
        if not points:
            continue
        records = [point[0] for point in points]
        time_axis.plot(records, [point[1] for point in points], marker="o", label=variant)
        memory_axis.plot(records, [point[2] for point in points], marker="o", label=variant)
    for axis, label in ((time_axis, "wall time (s)"), (memory_axis, "peak memory (MB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("records")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
    time_axis.legend()
    figure.suptitle("Full load at 0 ms latency")
    figure.tight_layout()
    figure.savefig(SCALING_PLOT, dpi=110)
    plt.close(figure)


def plot_latency(results: dict[str, dict[str, Any]]) -> None:
    """Plot wall time of each variant at 100,000 records and 50 ms per request."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = results.get("100000_50ms", {})
    names = [
        name
        for name in (
            "http_floor",
            "dlt_defaults",
            "asset_sequential",
            "asset_in_flight_4",
            "asset_in_process",
            "asset_without_arrow",
            "asset_cli",
            "asset_rerun",
        )
        if config.get(name, {}).get("ok")
    ]
    figure, axis = plt.subplots(figsize=(9, 4))
    bars = axis.barh(names, [config[name]["wall_s"] for name in names], color="tab:blue")
    axis.bar_label(bars, fmt="%.1f s", padding=3)
    axis.invert_yaxis()
    axis.set_xlabel("wall time (s)")
    axis.set_title("100,000 records, 50 ms per request")
    figure.tight_layout()
    figure.savefig(LATENCY_PLOT, dpi=110)
    plt.close(figure)
