"""Dagster resources: the CRM connection, which contains the API key."""

from __future__ import annotations

from dagster import ConfigurableResource
from dlt.sources import DltSource
from pydantic import Field

from crm_dagster.contract import CrmContract, load_contract
from crm_dagster.errors import CrmSettingsError
from crm_dagster.source import crm_source
from crm_dagster.transport import LoadStats


class CrmResource(ConfigurableResource):
    """Connection to the CRM. Definitions set each field from an environment variable.

    Attributes:
        base_url: CRM base URL (``CRM_BASE_URL``).
        api_key: CRM API key (``CRM_API_KEY``). Never logged.
        contract_file: TOML file with contract settings (``CRM_CONTRACT_FILE``); empty for
            the defaults.
    """

    base_url: str | None = Field(default=None, description="CRM base URL.")
    api_key: str | None = Field(default=None, description="CRM API key, a secret.")
    contract_file: str | None = Field(default=None, description="Contract TOML file.")

    def contract(self) -> CrmContract:
        """Load the contract that this resource points at."""
        return load_contract(self.contract_file or None)

    def build_source(self, stats: LoadStats, full_refresh: bool = False) -> DltSource:
        """Build the ``crm`` dlt source for one run.

        ``full_refresh`` fetches every record even when the contract loads incrementally.

        Raises:
            CrmSettingsError: the base URL, the key or a contract setting is missing or invalid.
        """
        if not self.base_url:
            raise CrmSettingsError(
                "CRM base URL is missing. Set the environment variable CRM_BASE_URL, for example "
                "CRM_BASE_URL=https://crm.example.com."
            )
        if not self.api_key:
            raise CrmSettingsError(
                "CRM API key is missing. Set the environment variable CRM_API_KEY."
            )
        return crm_source(self.base_url, self.api_key, self.contract(), stats, full_refresh)
