"""Sandbox CRM API for development, tests and benchmarks.

Run it with ``python -m crm_dagster.sandbox --port 0 --records 1000 --api-key KEY`` or in
process with :class:`SandboxServer`.
"""

from crm_dagster.sandbox.records import generate_record
from crm_dagster.sandbox.server import SandboxServer

__all__ = ["SandboxServer", "generate_record"]
