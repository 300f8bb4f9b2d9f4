"""Contract settings: defaults, TOML files, and errors that name the invalid setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from crm_dagster.contract import CrmContract, load_contract, validate_base_url
from crm_dagster.errors import CrmSettingsError
from crm_dagster.transport import parse_retry_after

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_default_contract() -> None:
    contract = CrmContract()
    assert contract.path == "/v1/resource"
    assert contract.api_key_param == "api_key"
    assert contract.data_selector == "data"
    assert contract.limit == 100
    assert contract.primary_key == "id"
    assert contract.write_disposition == "merge"
    assert contract.retry_statuses == (429, 500, 502, 503, 504)
    assert contract.max_retries == 3
    assert contract.backoff_factor == 2.0


def test_pipedrive_example_loads() -> None:
    contract = load_contract(EXAMPLES / "pipedrive.toml")
    assert contract.api_key_param == "api_token"
    assert contract.offset_param == "start"
    assert contract.total_path is None
    assert contract.has_more_path == "additional_data.pagination.more_items_in_collection"


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ("limit = 0", "limit=0"),
        ('paginator = "cursor"', "paginator='cursor'"),
        ('path = "v1/resource"', "path='v1/resource'"),
        ("retry_statuses = [200]", "retry_statuses"),
        ("unknown_setting = 1", "unknown_setting"),
    ],
)
def test_invalid_setting_is_named(tmp_path: Path, toml: str, named: str) -> None:
    file = tmp_path / "contract.toml"
    file.write_text(toml)
    with pytest.raises(CrmSettingsError) as error:
        load_contract(file)
    assert named in str(error.value)
    assert str(file) in str(error.value)


def test_missing_contract_file(tmp_path: Path) -> None:
    with pytest.raises(CrmSettingsError, match="CRM_CONTRACT_FILE"):
        load_contract(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (None, "CRM_BASE_URL"),
        ("crm.example.com", "needs an http:// or https:// scheme"),
        ("ftp://crm.example.com", "needs an http:// or https:// scheme"),
    ],
)
def test_invalid_base_url(url: str | None, message: str) -> None:
    with pytest.raises(CrmSettingsError, match=message):
        validate_base_url(url)


def test_base_url_query_is_not_echoed() -> None:
    with pytest.raises(CrmSettingsError) as error:
        validate_base_url("https://crm.example.com/?api_key=secret-value")
    assert "secret-value" not in str(error.value)
    assert "https://crm.example.com/" in str(error.value)


def test_base_url_trailing_slash() -> None:
    assert validate_base_url("https://crm.example.com/") == "https://crm.example.com"


def test_retry_after_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after(None) == 0.0
    assert parse_retry_after("soon") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2026 07:28:10 GMT", now=1792567680.0) == 10.0
