"""Load a CRM's REST API into a warehouse with dlt, orchestrated by Dagster."""

import os

# dlt sends anonymous usage telemetry unless it is disabled. The project's .dlt/config.toml turns it
# off too, but that file is only read when dlt runs from the project root.
os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")

# Arrow's default allocator keeps freed memory for reuse, which added about 70 MB to the peak of
# a 1,000,000-record load (docs/benchmarks.md). Arrow reads the variable when first imported.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
