"""The project's definitions with Dagster's default multiprocess executor, for one benchmark.

``bench/run.py`` materializes ``crm_data`` through the ``dagster`` CLI with this file
(``-f bench/multiprocess_definitions.py``) to measure what the in-process executor of
``crm_dagster.definitions`` saves per run.
"""

from dagster import Definitions, multiprocess_executor

# The module, not its Definitions object: the CLI rejects a file with two Definitions objects.
import crm_dagster.definitions as project

defs = Definitions(
    assets=list(project.defs.assets or []),
    asset_checks=list(project.defs.asset_checks or []),
    resources=dict(project.defs.resources or {}),
    executor=multiprocess_executor,
)
