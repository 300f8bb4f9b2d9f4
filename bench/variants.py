"""One benchmark load, run in its own process by ``bench/run.py``.

``python bench/variants.py RUNNER --base-url URL --api-key KEY --workdir DIR --result FILE``
runs one load against the sandbox CRM and writes a JSON object to FILE with the rows the load
saw, the seconds of dlt's steps where there are any, and the seconds spent after imports
(``load_s``). The parent process measures wall time, memory and requests.

Runners:

* ``http_floor``: a plain ``requests`` loop over the same pages, parsing each page's JSON and
  nothing more. It is the lower bound for any loader.
* ``dlt_defaults``: a plain dlt pipeline with dlt's defaults: ``rest_api_source`` with the
  offset paginator, limit 100, ``total`` read from the response, a merge on ``id``, into
  DuckDB. ``bench/run.py`` starts it in a working directory without a ``.dlt`` folder, so none
  of this project's dlt settings apply.
* ``asset``: ``dagster.materialize`` of this project's ``crm_data`` asset.

``--revert`` undoes one of the project's speed changes for this process only, to measure what
the change is worth. The other changes are reverted through settings by ``bench/run.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

PAGE_SIZE = 100
REVERTS = ("jsonl", "compiled_selector", "insertion_order", "environment_once", "frozen_gc")


def run_http_floor(base_url: str, api_key: str, args: argparse.Namespace) -> dict[str, Any]:
    """Fetch every page with one ``requests.Session`` and count the records."""
    import requests

    session = requests.Session()
    rows = 0
    pages = 0
    offset = 0
    while True:
        response = session.get(
            f"{base_url}/v1/resource",
            params={"api_key": api_key, "offset": offset, "limit": PAGE_SIZE},
            timeout=60,
        )
        response.raise_for_status()
        body = response.json()
        rows += len(body["data"])
        pages += 1
        offset += PAGE_SIZE
        if offset >= body["total"] or not body["data"]:
            break
    return {"rows": rows, "pages": pages}


def run_dlt_defaults(base_url: str, api_key: str, args: argparse.Namespace) -> dict[str, Any]:
    """Load the CRM with a plain dlt pipeline and every dlt setting left at its default."""
    import dlt
    from dlt.sources.rest_api import rest_api_source

    source = rest_api_source(
        {
            "client": {
                "base_url": base_url,
                "auth": {
                    "type": "api_key",
                    "name": "api_key",
                    "api_key": api_key,
                    "location": "query",
                },
                "paginator": {"type": "offset", "limit": PAGE_SIZE, "total_path": "total"},
            },
            "resource_defaults": {"primary_key": "id", "write_disposition": "merge"},
            "resources": [
                {
                    "name": "crm_data",
                    "endpoint": {
                        "path": "/v1/resource",
                        "params": {"limit": PAGE_SIZE},
                        "data_selector": "data",
                    },
                }
            ],
        },
        name="crm",
    )
    pipeline = dlt.pipeline(
        pipeline_name="bench_dlt_defaults",
        destination=dlt.destinations.duckdb(str(args.workdir / "warehouse.duckdb")),
        dataset_name="crm",
    )
    pipeline.run(source)
    rows = pipeline.last_trace.last_normalize_info.row_counts.get("crm_data", 0)
    return {"rows": rows, "steps_s": dlt_step_seconds(pipeline)}


def run_asset(base_url: str, api_key: str, args: argparse.Namespace) -> dict[str, Any]:
    """Materialize this project's ``crm_data`` asset with ``dagster.materialize``."""
    from dagster import materialize
    from dagster_dlt import DagsterDltResource

    from crm_dagster.assets import crm_assets
    from crm_dagster.pipeline import crm_pipeline
    from crm_dagster.resources import CrmResource

    revert_changes(args.revert)
    resources = {
        "dlt": DagsterDltResource(),
        "crm": CrmResource(base_url=base_url, api_key=api_key),
    }
    run_config = None
    if args.full_refresh:
        run_config = {"ops": {"crm": {"config": {"full_refresh": True}}}}
    result = materialize([crm_assets], resources=resources, run_config=run_config)
    materialization = result.asset_materializations_for_node("crm")[0]
    metadata = {name: value.value for name, value in materialization.metadata.items()}
    return {
        "rows_loaded": metadata.get("rows_loaded"),
        "client_requests": metadata.get("http_requests"),
        "pages": metadata.get("pages_fetched"),
        "steps_s": dlt_step_seconds(crm_pipeline()),
    }


def revert_changes(names: list[str]) -> None:
    """Undo speed changes of ``crm_dagster`` in this process.

    ``jsonl`` drops the resource's ``file_format`` hint, so dlt writes its default INSERT
    statements. ``compiled_selector`` passes the data selector as a string again.
    ``insertion_order`` leaves DuckDB's ``preserve_insertion_order`` on. ``environment_once``
    lets requests read the proxy settings from the environment on every request again.
    ``frozen_gc`` leaves the garbage collector tracing the objects that exist before the load.
    """
    if not names:
        return
    import crm_dagster.pipeline as pipeline_module
    import crm_dagster.source as source_module

    if "frozen_gc" in names:
        import crm_dagster.assets as assets_module

        assets_module.frozen_gc = contextlib.nullcontext
    if "insertion_order" in names:
        pipeline_module.DUCKDB_SETTINGS = {}
    if "environment_once" in names:
        build_session = source_module.build_session

        def session_per_request_environment(*session_args: Any, **session_kwargs: Any) -> Any:
            session = build_session(*session_args, **session_kwargs)
            session.trust_env = True
            return session

        source_module.build_session = session_per_request_environment

    build_config = source_module.rest_api_config

    def reverted_config(*config_args: Any, **config_kwargs: Any) -> Any:
        config = build_config(*config_args, **config_kwargs)
        resource = config["resources"][0]
        if "jsonl" in names:
            resource.pop("file_format", None)
        if "compiled_selector" in names:
            resource["endpoint"]["data_selector"] = str(resource["endpoint"]["data_selector"])
        return config

    source_module.rest_api_config = reverted_config


def dlt_step_seconds(pipeline: Any) -> dict[str, float]:
    """Return the seconds of each step (extract, normalize, load) of the pipeline's last run."""
    trace = pipeline.last_trace
    if trace is None:
        return {}
    return {
        step.step: round((step.finished_at - step.started_at).total_seconds(), 3)
        for step in trace.steps
        if step.step != "run"
    }


RUNNERS = {
    "http_floor": run_http_floor,
    "dlt_defaults": run_dlt_defaults,
    "asset": run_asset,
}


def main(argv: list[str] | None = None) -> int:
    """Run one load and write its result file; return the exit status."""
    parser = argparse.ArgumentParser(description="Run one benchmark load.")
    parser.add_argument("runner", choices=sorted(RUNNERS))
    parser.add_argument("--base-url", required=True, help="sandbox CRM base URL")
    parser.add_argument("--api-key", required=True, help="sandbox CRM API key")
    parser.add_argument("--workdir", required=True, type=Path, help="folder for this load's files")
    parser.add_argument("--result", required=True, type=Path, help="JSON file to write")
    parser.add_argument(
        "--revert", action="append", default=[], choices=REVERTS, help="undo one speed change"
    )
    parser.add_argument(
        "--full-refresh", action="store_true", help="run the asset with full_refresh = true"
    )
    parser.add_argument("--profile", type=Path, help="write a cProfile file of the load here")
    args = parser.parse_args(argv)

    run = RUNNERS[args.runner]
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    result = run(args.base_url, args.api_key, args)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    result["load_s"] = round(time.perf_counter() - started, 3)
    args.result.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    sys.exit(main())
