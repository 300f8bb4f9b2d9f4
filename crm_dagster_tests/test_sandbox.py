"""Tests of the sandbox CRM API: records, pagination, faults, control endpoints and the CLI."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from crm_dagster.sandbox import SandboxServer, generate_record
from crm_dagster.sandbox.faults import Fault, FaultQueue, parse_fault

API_KEY = "test-key-5f2a"
RECORDS = 250
REPO_ROOT = Path(__file__).resolve().parents[1]
TIMESTAMP_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


@pytest.fixture
def sandbox() -> Any:
    with SandboxServer(records=RECORDS, api_key=API_KEY, seed=7) as server:
        yield server


def get_resource(server: SandboxServer, **params: Any) -> requests.Response:
    return requests.get(
        f"{server.base_url}/v1/resource", params={"api_key": API_KEY, **params}, timeout=10
    )


def get_persons(server: SandboxServer, **params: Any) -> requests.Response:
    return requests.get(
        f"{server.base_url}/v1/persons", params={"api_token": API_KEY, **params}, timeout=10
    )


def fetch_all_ids(server: SandboxServer, limit: int, **params: Any) -> tuple[list[int], set[int]]:
    """Page through /v1/resource and return the ids in order and the totals seen."""
    ids: list[int] = []
    totals: set[int] = set()
    offset = 0
    while True:
        response = get_resource(server, offset=offset, limit=limit, **params)
        assert response.status_code == 200
        page = response.json()
        totals.add(page["total"])
        ids.extend(record["id"] for record in page["data"])
        if len(page["data"]) < limit:
            return ids, totals
        offset += limit


# Records


def test_generate_record_is_deterministic() -> None:
    assert generate_record(42, seed=3) == generate_record(42, seed=3)
    assert generate_record(42, seed=3) != generate_record(42, seed=4)
    assert generate_record(42, seed=3) != generate_record(43, seed=3)


def test_generate_record_fields() -> None:
    for index in range(1, 301):
        record = generate_record(index, seed=0)
        assert record["id"] == index
        assert record["customer_id"] == f"CUST-{index:06d}"
        assert isinstance(record["first_name"], str)
        assert isinstance(record["last_name"], str)
        assert record["company_name"] is None or isinstance(record["company_name"], str)
        contact = record["contact_info"]
        assert "@" in contact["email"]
        assert contact["phone"] is None or isinstance(contact["phone"], str)
        address = contact["address"]
        assert set(address) == {"street", "city", "postal_code", "country"}
        assert re.fullmatch(r"[A-Z]{2}", address["country"])
        assert record["lifecycle_stage"] in {"lead", "prospect", "customer", "churned"}
        assert isinstance(record["annual_revenue"], float)
        assert round(record["annual_revenue"], 2) == record["annual_revenue"]
        assert isinstance(record["is_active"], bool)
        if record["churn_reason"] is not None:
            assert record["lifecycle_stage"] == "churned"
        assert TIMESTAMP_PATTERN.fullmatch(record["created_at"])
        assert TIMESTAMP_PATTERN.fullmatch(record["updated_at"])
        assert record["updated_at"] >= record["created_at"]


def test_generate_record_null_frequencies() -> None:
    records = [generate_record(index, seed=11) for index in range(1, 5001)]
    without_company = sum(record["company_name"] is None for record in records)
    with_churn_reason = sum(record["churn_reason"] is not None for record in records)
    # About 1 in 5 and 1 in 50, with wide margins for sampling noise.
    assert 750 <= without_company <= 1250
    assert 50 <= with_churn_reason <= 160


def test_revenue_has_two_decimals(sandbox: SandboxServer) -> None:
    body = get_resource(sandbox, limit=200).text
    revenues = re.findall(r'"annual_revenue":([^,}]+)', body)
    assert len(revenues) == 200
    for text in revenues:
        assert re.fullmatch(r"\d+\.\d{2}", text), text


# /v1/resource


def test_resource_pages_cover_all_records(sandbox: SandboxServer) -> None:
    ids, totals = fetch_all_ids(sandbox, limit=70)
    assert ids == list(range(1, RECORDS + 1))
    assert totals == {RECORDS}


def test_resource_records_match_generator(sandbox: SandboxServer) -> None:
    page = get_resource(sandbox, offset=10, limit=5).json()
    assert page["data"] == [generate_record(index, seed=7) for index in range(11, 16)]


def test_resource_defaults_and_past_end(sandbox: SandboxServer) -> None:
    response = get_resource(sandbox)
    assert response.headers["Content-Type"] == "application/json"
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert [record["id"] for record in response.json()["data"]] == list(range(1, 101))
    past_end = get_resource(sandbox, offset=RECORDS + 10).json()
    assert past_end == {"data": [], "total": RECORDS}


def test_resource_limit_capped_at_1000() -> None:
    with SandboxServer(records=1200, api_key=API_KEY) as server:
        page = get_resource(server, limit=5000).json()
    assert len(page["data"]) == 1000
    assert page["total"] == 1200


@pytest.mark.parametrize(
    "params",
    [
        {"offset": "-1"},
        {"offset": "abc"},
        {"limit": "0"},
        {"limit": "1.5"},
        {"updated_since": "yesterday"},
    ],
)
def test_resource_invalid_parameters_return_400(
    sandbox: SandboxServer, params: dict[str, str]
) -> None:
    response = get_resource(sandbox, **params)
    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/json"
    assert next(iter(params)) in response.json()["error"]


@pytest.mark.parametrize(
    "path,key_name", [("/v1/resource", "api_key"), ("/v1/persons", "api_token")]
)
def test_wrong_key_returns_401_without_echo(
    sandbox: SandboxServer, path: str, key_name: str
) -> None:
    wrong_key = "wrong-key-93xq"
    response = requests.get(f"{sandbox.base_url}{path}", params={key_name: wrong_key}, timeout=10)
    assert response.status_code == 401
    assert response.json() == {"error": "invalid api key"}
    assert wrong_key not in response.text
    assert all(wrong_key not in value for value in response.headers.values())

    missing = requests.get(f"{sandbox.base_url}{path}", timeout=10)
    assert missing.status_code == 401


def test_updated_since_filter(sandbox: SandboxServer) -> None:
    records = sandbox.records
    threshold = sorted(record["updated_at"] for record in records)[RECORDS // 2]
    expected = [record["id"] for record in records if record["updated_at"] >= threshold]

    ids, totals = fetch_all_ids(sandbox, limit=40, updated_since=threshold)
    assert ids == expected
    assert totals == {len(expected)}

    with_offset = threshold.replace("Z", "+00:00")
    page = get_resource(sandbox, limit=1000, updated_since=with_offset).json()
    assert [record["id"] for record in page["data"]] == expected


def test_keep_alive_reuses_connection(sandbox: SandboxServer) -> None:
    with requests.Session() as session:
        first = session.get(f"{sandbox.base_url}/v1/resource", params={"api_key": API_KEY})
        second = session.get(f"{sandbox.base_url}/v1/resource", params={"api_key": API_KEY})
    assert first.raw.version == 11
    assert "close" not in first.headers.get("Connection", "").lower()
    assert second.status_code == 200


def test_no_total_option_and_setting() -> None:
    with SandboxServer(records=30, api_key=API_KEY, include_total=False) as server:
        assert "total" not in get_resource(server).json()
        response = requests.post(
            f"{server.base_url}/_sandbox/settings", json={"include_total": True}, timeout=10
        )
        assert response.json() == {"include_total": True, "latency_ms": 0.0}
        assert get_resource(server).json()["total"] == 30


def test_settings_reject_invalid_values(sandbox: SandboxServer) -> None:
    url = f"{sandbox.base_url}/_sandbox/settings"
    for payload in ({"latency_ms": -5}, {"include_total": "no"}, {"speed": 1}):
        assert requests.post(url, json=payload, timeout=10).status_code == 400
    response = requests.post(url, json={"latency_ms": 50}, timeout=10)
    assert response.json()["latency_ms"] == 50.0
    assert sandbox.latency_ms == 50.0


# /v1/persons


def test_persons_pagination_shape(sandbox: SandboxServer) -> None:
    pages = [get_persons(sandbox, start=start, limit=100).json() for start in (0, 100, 200)]
    ids = [record["id"] for page in pages for record in page["data"]]
    assert ids == list(range(1, RECORDS + 1))
    for page in pages:
        assert page["success"] is True
        assert "total" not in page

    first, second, last = (page["additional_data"]["pagination"] for page in pages)
    assert first == {"start": 0, "limit": 100, "more_items_in_collection": True, "next_start": 100}
    assert second["next_start"] == 200
    assert last == {"start": 200, "limit": 100, "more_items_in_collection": False}


def test_persons_full_last_page_ends(sandbox: SandboxServer) -> None:
    pagination = get_persons(sandbox, start=150, limit=100).json()["additional_data"]
    assert pagination["pagination"]["more_items_in_collection"] is False
    assert "next_start" not in pagination["pagination"]


# Faults


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("drop", Fault(kind="drop")),
        ("status:503x3", Fault(kind="status", count=3, status=503)),
        (
            "status:429,retry_after=1x2",
            Fault(kind="status", count=2, status=429, retry_after="1"),
        ),
        ("status:429,retry_after=date+2", Fault(kind="status", status=429, retry_after="date+2")),
        ("delay:2.5@100", Fault(kind="delay", offset=100, delay_seconds=2.5)),
        ("reset_mid_bodyx2@0", Fault(kind="reset_mid_body", count=2, offset=0)),
    ],
)
def test_parse_fault(spec: str, expected: Fault) -> None:
    fault = parse_fault(spec)
    assert fault == expected
    assert parse_fault(fault.spec) == expected


@pytest.mark.parametrize(
    "spec",
    ["", "explode", "status", "status:abc", "status:99", "status:503x0", "drop:1", "delay:-1",
     "delay:soon", "status:429,retry_after=later", "html@-1"],
)  # fmt: skip
def test_parse_fault_rejects_invalid_spec(spec: str) -> None:
    with pytest.raises(ValueError, match="invalid fault spec"):
        parse_fault(spec)


def test_fault_queue_uses_first_matching_fault() -> None:
    queue = FaultQueue(["status:500@100", "total_string", "drop"])
    assert queue.take("persons", 0).kind == "drop"
    assert queue.take("resource", 0).kind == "total_string"
    assert queue.take("resource", 0) is None
    assert queue.remaining() == ["status:500@100"]
    assert queue.take("resource", 100).kind == "status"
    assert queue.remaining() == []


def test_status_fault_applies_count_times(sandbox: SandboxServer) -> None:
    sandbox.set_faults(["status:503x3"])
    statuses = [get_resource(sandbox).status_code for _ in range(4)]
    assert statuses == [503, 503, 503, 200]
    assert sandbox.faults == []


def test_status_fault_retry_after_seconds(sandbox: SandboxServer) -> None:
    sandbox.set_faults(["status:429,retry_after=1x2"])
    first = get_resource(sandbox)
    assert first.status_code == 429
    assert first.headers["Retry-After"] == "1"
    assert first.json() == {"error": "injected fault: 429 Too Many Requests"}
    assert sandbox.faults == ["status:429,retry_after=1"]
    assert get_resource(sandbox).status_code == 429
    assert get_resource(sandbox).status_code == 200


def test_status_fault_retry_after_http_date(sandbox: SandboxServer) -> None:
    sandbox.set_faults(["status:429,retry_after=date+2"])
    response = get_resource(sandbox)
    assert response.status_code == 429
    retry_at = parsedate_to_datetime(response.headers["Retry-After"])
    sent_at = parsedate_to_datetime(response.headers["Date"])
    assert 1 <= (retry_at - sent_at).total_seconds() <= 3


def test_drop_fault_closes_without_response(sandbox: SandboxServer) -> None:
    sandbox.set_faults(["drop"])
    with pytest.raises(requests.ConnectionError):
        get_resource(sandbox)
    assert get_resource(sandbox).status_code == 200
    assert [entry["status"] for entry in sandbox.requests] == [None, 200]


def test_reset_mid_body_sends_half_then_resets(sandbox: SandboxServer) -> None:
    sandbox.set_faults(["reset_mid_body"])
    request = f"GET /v1/resource?api_key={API_KEY}&limit=50 HTTP/1.1\r\nHost: sandbox\r\n\r\n"
    received = b""
    with socket.create_connection(("127.0.0.1", sandbox.port), timeout=10) as connection:
        connection.sendall(request.encode())
        with pytest.raises(ConnectionResetError):
            while chunk := connection.recv(65536):
                received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
    assert len(body) == length // 2
    assert sandbox.faults == []


def test_reset_mid_body_fails_requests_client(sandbox: SandboxServer) -> None:
    sandbox.set_faults(["reset_mid_body"])
    with pytest.raises(requests.RequestException):
        get_resource(sandbox)
    assert get_resource(sandbox).status_code == 200


def test_delay_fault_causes_read_timeout(sandbox: SandboxServer) -> None:
    sandbox.set_faults(["delay:3"])
    with pytest.raises(requests.ReadTimeout):
        requests.get(
            f"{sandbox.base_url}/v1/resource", params={"api_key": API_KEY}, timeout=(5, 0.2)
        )
    assert sandbox.faults == []
    assert get_resource(sandbox).status_code == 200


def test_html_fault(sandbox: SandboxServer) -> None:
    sandbox.set_faults(["html"])
    response = get_resource(sandbox)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.text.startswith("<!DOCTYPE html>")
    assert "data" in get_resource(sandbox).json()


def test_bad_json_fault(sandbox: SandboxServer) -> None:
    sandbox.set_faults(["bad_json"])
    response = get_resource(sandbox, limit=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert int(response.headers["Content-Length"]) == len(response.content)
    with pytest.raises(ValueError):
        json.loads(response.content)
    assert len(get_resource(sandbox, limit=10).json()["data"]) == 10


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("missing_data", {"total": RECORDS}),
        ("null_data", {"data": None, "total": RECORDS}),
        ("total_string", {"total": str(RECORDS)}),
        ("no_total", {}),
    ],
)
def test_body_shape_faults(sandbox: SandboxServer, spec: str, expected: dict[str, Any]) -> None:
    sandbox.set_faults([spec])
    page = get_resource(sandbox, limit=3).json()
    data = page.pop("data", "absent")
    if spec in {"total_string", "no_total"}:
        assert [record["id"] for record in data] == [1, 2, 3]
    else:
        assert data == expected.pop("data", "absent")
    assert page == expected
    assert get_resource(sandbox, limit=3).json()["total"] == RECORDS


def test_persons_null_data_fault(sandbox: SandboxServer) -> None:
    sandbox.set_faults(["null_data"])
    page = get_persons(sandbox, limit=3).json()
    assert page["data"] is None
    assert page["additional_data"]["pagination"]["more_items_in_collection"] is True


def test_total_faults_skip_persons(sandbox: SandboxServer) -> None:
    sandbox.set_faults(["total_string"])
    assert get_persons(sandbox).status_code == 200
    assert sandbox.faults == ["total_string"]
    assert get_resource(sandbox).json()["total"] == str(RECORDS)


@pytest.mark.parametrize("spec", ["null_id", "missing_id"])
def test_id_faults_change_first_record(sandbox: SandboxServer, spec: str) -> None:
    sandbox.set_faults([spec])
    data = get_resource(sandbox, limit=3).json()["data"]
    if spec == "null_id":
        assert data[0]["id"] is None
    else:
        assert "id" not in data[0]
    assert data[0]["customer_id"] == "CUST-000001"
    assert [record["id"] for record in data[1:]] == [2, 3]
    assert get_resource(sandbox, limit=1).json()["data"][0]["id"] == 1


def test_add_fault_appends_records(sandbox: SandboxServer) -> None:
    sandbox.set_faults(["add:5@100"])
    assert get_resource(sandbox, offset=0).json()["total"] == RECORDS
    page = get_resource(sandbox, offset=100).json()
    assert page["total"] == RECORDS + 5
    assert sandbox.records[-1]["id"] == RECORDS + 5
    assert sandbox.faults == []


def test_prepend_fault_shifts_existing_records(sandbox: SandboxServer) -> None:
    sandbox.set_faults(["prepend:3@0"])
    page = get_resource(sandbox, limit=5).json()
    assert page["total"] == RECORDS + 3
    assert [record["id"] for record in page["data"]] == [-2, -1, 0, 1, 2]
    assert parse_fault("prepend:3").spec == "prepend:3"


def test_api_key_param_on_both_endpoints() -> None:
    with SandboxServer(records=5, api_key=API_KEY, api_key_param="token") as server:
        for path in ("/v1/resource", "/v1/persons"):
            url = f"{server.base_url}{path}"
            assert requests.get(url, params={"token": API_KEY}, timeout=10).status_code == 200
            default_name = "api_key" if path == "/v1/resource" else "api_token"
            rejected = requests.get(url, params={default_name: API_KEY}, timeout=10)
            assert rejected.status_code == 401
        logged = json.dumps(server.requests)
    assert API_KEY not in logged
    assert '"token": "***"' in logged


def test_fault_offset_restricts_match(sandbox: SandboxServer) -> None:
    sandbox.set_faults(["status:500@100", "status:502@50"])
    assert get_resource(sandbox, offset=0).status_code == 200
    assert get_resource(sandbox, offset=100).status_code == 500
    assert get_resource(sandbox, offset=100).status_code == 200
    assert get_persons(sandbox, start=50).status_code == 502
    assert sandbox.faults == []


def test_rejected_requests_take_no_fault(sandbox: SandboxServer) -> None:
    sandbox.set_faults(["status:503"])
    wrong_key = requests.get(
        f"{sandbox.base_url}/v1/resource", params={"api_key": "nope"}, timeout=10
    )
    assert wrong_key.status_code == 401
    assert get_resource(sandbox, limit=0).status_code == 400
    assert sandbox.faults == ["status:503"]


def test_faults_control_endpoint(sandbox: SandboxServer) -> None:
    url = f"{sandbox.base_url}/_sandbox/faults"
    response = requests.post(url, json={"faults": ["status:503x2", "drop@100"]}, timeout=10)
    assert response.json() == {"faults": ["status:503x2", "drop@100"]}
    assert get_resource(sandbox).status_code == 503
    assert requests.get(url, timeout=10).json() == {"faults": ["status:503", "drop@100"]}

    invalid = requests.post(url, json={"faults": ["status:503", "bogus"]}, timeout=10)
    assert invalid.status_code == 400
    assert "bogus" in invalid.json()["error"]
    assert requests.get(url, timeout=10).json() == {"faults": ["status:503", "drop@100"]}


def test_constructor_faults_are_queued() -> None:
    with SandboxServer(records=5, api_key=API_KEY, faults=["status:503"]) as server:
        assert get_resource(server).status_code == 503
        assert get_resource(server).status_code == 200


# Request log and control endpoints


def test_request_log_redacts_key(sandbox: SandboxServer) -> None:
    get_resource(sandbox, offset=5, limit=2)
    get_persons(sandbox, start=3)
    requests.get(f"{sandbox.base_url}/v1/resource", params={"api_key": "leaked?"}, timeout=10)

    log = requests.get(f"{sandbox.base_url}/_sandbox/requests", timeout=10).json()
    assert log == [
        {
            "method": "GET",
            "path": "/v1/resource",
            "query": {"api_key": "***", "offset": "5", "limit": "2"},
            "status": 200,
            "fault": None,
        },
        {
            "method": "GET",
            "path": "/v1/persons",
            "query": {"api_token": "***", "start": "3"},
            "status": 200,
            "fault": None,
        },
        {
            "method": "GET",
            "path": "/v1/resource",
            "query": {"api_key": "***"},
            "status": 401,
            "fault": None,
        },
    ]
    assert API_KEY not in json.dumps(log)
    assert "leaked" not in json.dumps(log)
    assert sandbox.requests == log

    cleared = requests.delete(f"{sandbox.base_url}/_sandbox/requests", timeout=10)
    assert cleared.json() == {"cleared": 3}
    assert sandbox.requests == []


def test_request_log_file(tmp_path: Path) -> None:
    log_path = tmp_path / "requests.jsonl"
    with SandboxServer(records=5, api_key=API_KEY, request_log=log_path) as server:
        server.set_faults(["status:500"])
        get_resource(server)
        get_resource(server, limit=2)
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [line["status"] for line in lines] == [500, 200]
    assert [line["fault"] for line in lines] == ["status", None]
    assert lines[1]["query"] == {"api_key": "***", "limit": "2"}
    assert API_KEY not in log_path.read_text()


def test_health_and_unknown_paths(sandbox: SandboxServer) -> None:
    health = requests.get(f"{sandbox.base_url}/_sandbox/health", timeout=10)
    assert health.json() == {"status": "ok"}
    assert requests.get(f"{sandbox.base_url}/v2/other", timeout=10).status_code == 404
    assert requests.get(f"{sandbox.base_url}/_sandbox/nothing", timeout=10).status_code == 404
    not_allowed = requests.post(f"{sandbox.base_url}/_sandbox/health", timeout=10)
    assert not_allowed.status_code == 405
    assert not_allowed.headers["Allow"] == "GET"


def test_records_control_changes_records(sandbox: SandboxServer) -> None:
    url = f"{sandbox.base_url}/_sandbox/records"
    payload = {
        "upsert": [
            {"id": 3, "first_name": "Renamed", "contact_info": {"phone": "+1-555-000-0000"}},
            {"id": 500, "last_name": "Inserted"},
        ],
        "touch": [5],
        "delete": [7, 8],
        "add": 2,
    }
    response = requests.post(url, json=payload, timeout=10)
    assert response.json() == {"total": RECORDS + 1 - 2 + 2}

    records = {record["id"]: record for record in sandbox.records}
    original = generate_record(3, seed=7)
    assert records[3]["first_name"] == "Renamed"
    assert records[3]["contact_info"]["phone"] == "+1-555-000-0000"
    assert records[3]["contact_info"]["email"] == original["contact_info"]["email"]
    assert records[500]["last_name"] == "Inserted"
    assert records[500]["first_name"] == generate_record(500, seed=7)["first_name"]
    assert 7 not in records
    assert 8 not in records
    assert sorted(records)[-2:] == [501, 502]

    ids, totals = fetch_all_ids(sandbox, limit=100)
    assert ids == sorted(records)
    assert totals == {len(records)}

    # Touched and added records are newer than every generated record.
    newest = max(generate_record(index, seed=7)["updated_at"] for index in range(1, RECORDS + 1))
    page = get_resource(sandbox, updated_since=newest, limit=1000).json()
    changed_ids = [record["id"] for record in page["data"]]
    assert set(changed_ids) >= {5, 501, 502}


def test_records_control_rejects_invalid_change(sandbox: SandboxServer) -> None:
    url = f"{sandbox.base_url}/_sandbox/records"
    for payload in (
        {"delete": [9999]},
        {"touch": [9999]},
        {"upsert": [{"first_name": "no id"}]},
        {"add": -1},
        {"replace": []},
        {"upsert": [{"id": 1, "first_name": "changed"}], "delete": [9999]},
    ):
        response = requests.post(url, json=payload, timeout=10)
        assert response.status_code == 400, payload
    assert sandbox.total == RECORDS
    assert sandbox.records[0] == generate_record(1, seed=7)


def test_python_api_changes_records(sandbox: SandboxServer) -> None:
    assert sandbox.upsert([{"id": 1, "is_active": False}]) == RECORDS
    assert sandbox.add(3) == RECORDS + 3
    assert sandbox.delete([2]) == RECORDS + 2
    assert sandbox.touch([1]) == RECORDS + 2
    first = get_resource(sandbox, limit=1).json()["data"][0]
    assert first["is_active"] is False
    assert first["updated_at"] > generate_record(1, seed=7)["updated_at"]
    with pytest.raises(ValueError, match="not found"):
        sandbox.delete([2])


def test_records_are_deterministic_per_seed() -> None:
    with SandboxServer(records=20, api_key=API_KEY, seed=5) as first:
        first_page = get_resource(first).json()
    with SandboxServer(records=20, api_key=API_KEY, seed=5) as second:
        second_page = get_resource(second).json()
    with SandboxServer(records=20, api_key=API_KEY, seed=6) as other:
        other_page = get_resource(other).json()
    assert first_page == second_page
    assert first_page != other_page


def test_server_lifecycle() -> None:
    server = SandboxServer(records=1, api_key=API_KEY)
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.base_url
    server.start()
    assert server.base_url == f"http://127.0.0.1:{server.port}"
    with pytest.raises(RuntimeError, match="already running"):
        server.start()
    server.stop()
    server.stop()
    with pytest.raises(ValueError, match="invalid fault spec"):
        SandboxServer(faults=["bogus"])


# Command line


@pytest.mark.parametrize("stop_signal,verbose", [(signal.SIGTERM, True), (signal.SIGINT, False)])
def test_cli_serves_and_exits_cleanly(
    stop_signal: signal.Signals, verbose: bool, tmp_path: Path
) -> None:
    log_path = tmp_path / "requests.jsonl"
    command = [sys.executable, "-m", "crm_dagster.sandbox", "--port", "0", "--records", "20"]
    command += ["--api-key", API_KEY, "--no-total", "--fault", "status:503"]
    command += ["--request-log", str(log_path)]
    if verbose:
        command.append("--verbose")
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        first_line = process.stdout.readline()
        match = re.fullmatch(r"CRM sandbox serving (http://127\.0\.0\.1:\d+)\n", first_line)
        assert match, first_line
        url = match.group(1)
        params = {"api_key": API_KEY, "limit": 5}
        assert requests.get(f"{url}/v1/resource", params=params, timeout=10).status_code == 503
        page = requests.get(f"{url}/v1/resource", params=params, timeout=10).json()
        assert [record["id"] for record in page["data"]] == [1, 2, 3, 4, 5]
        assert "total" not in page
        process.send_signal(stop_signal)
        _, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 0
    assert "Traceback" not in stderr
    assert API_KEY not in stderr
    request_line = "GET /v1/resource?api_key=***&limit=5 200"
    if verbose:
        assert request_line in stderr
    else:
        assert stderr == ""
    logged = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [entry["status"] for entry in logged] == [503, 200]
    assert API_KEY not in log_path.read_text()
