"""Load a CRM's REST API into a warehouse with dlt, orchestrated by Dagster."""

import os

# dlt sends anonymous usage telemetry unless it is disabled. The project's .dlt/config.toml turns it
# off too, but that file is only read when dlt runs from the project root.
os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
