"""The inbox/outbox key layout (table-driven)."""

from __future__ import annotations

import hashlib

import pytest

from pipelines.layout import (
    OPERATOR,
    Arrival,
    archive_key,
    archive_key_candidates,
    error_report_key,
    is_temporary_name,
    make_arrival,
    outbox_key,
    parse_arrival_key,
    parse_processing_key,
    processing_key,
)
from pipelines.storage import InvalidKey

SHA = hashlib.sha256(b"payload").hexdigest()


@pytest.mark.parametrize(("key", "expected"), [
    ("ACME/device.req", ("ACME", "device.req")),
    ("ACME/sub/dir/device.req", ("ACME", "sub/dir/device.req")),
    ("acme-2_b/x.zip", ("acme-2_b", "x.zip")),
    ("A/x", ("A", "x")),
    ("A" * 32 + "/x", ("A" * 32, "x")),
    ("_operator/refresh.req", (OPERATOR, "refresh.req")),
    ("ACME/name with spaces.req", ("ACME", "name with spaces.req")),
    # reserved areas
    ("_processing/ACME/x.req", None),
    ("_processed/ACME/x.req", None),
    ("_rejected/ACME/x.req", None),
    ("_quarantine/ACME/x.req", None),
    ("_anything/x", None),
    # not a tenant code, or no tenant folder at all
    ("A" * 33 + "/x", None),
    ("-ACME/x", None),
    ("AC ME/x", None),
    ("ÄCME/x", None),
    ("device.req", None),
    ("ACME", None),
    # temporary names, hidden folders, reports
    ("ACME/x.req.part", None),
    ("ACME/x.req.tmp", None),
    ("ACME/x.req.filepart", None),
    ("ACME/x.req.crdownload", None),
    ("ACME/x.req.PART", None),
    ("ACME/.x.req.Ab12Cd", None),
    ("ACME/.hidden", None),
    ("ACME/x.req~", None),
    ("ACME/~$x.docx", None),
    ("ACME/x.req.error.json", None),
    ("ACME/.staging/x.req", None),
    # invalid keys
    ("ACME/../x", None),
    ("/ACME/x", None),
    ("ACME//x", None),
    ("ACME/x\n", None),
    ("ACME\n/x", None),
    ("", None),
])
def test_parse_arrival_key(key: str, expected: tuple[str, str] | None) -> None:
    assert parse_arrival_key(key) == expected


@pytest.mark.parametrize(("name", "temporary"), [
    ("x.req", False),
    ("x.partition", False),
    ("sub/x.req", False),
    ("x.req.part", True),
    ("x.req.partial", True),
    ("x.TMP", True),
    ("x.filepart", True),
    ("x.crdownload", True),
    (".x.req.a1B2c3", True),
    (".DS_Store", True),
    ("sub/.x", True),
    ("x~", True),
    ("~$lock.xlsx", True),
    ("x.req.error.json", True),
    ("x.json", False),
    ("", True),
])
def test_is_temporary_name(name: str, temporary: bool) -> None:
    assert is_temporary_name(name) is temporary


@pytest.mark.parametrize(("area", "name", "expected"), [
    ("ACME", "x.req", "_processing/ACME/x.req"),
    (OPERATOR, "r.req", "_processing/_operator/r.req"),
    ("ACME", "sub/x.req", "_processing/ACME/sub/x.req"),
])
def test_processing_key_round_trips(area: str, name: str, expected: str) -> None:
    assert processing_key(area, name) == expected
    assert parse_processing_key(expected) == (area, name)


@pytest.mark.parametrize("key", ["ACME/x", "_processed/ACME/x", "_processing/ACME",
                                 "_processing/_x/y", "_processing/../x"])
def test_parse_processing_key_rejects_others(key: str) -> None:
    assert parse_processing_key(key) is None


@pytest.mark.parametrize(("disposition", "area", "expected"), [
    ("processed", "ACME", "_processed/ACME/x.req"),
    ("rejected", "ACME", "_rejected/ACME/x.req"),
    ("quarantine", "ACME", "_quarantine/ACME/x.req"),
    ("processed", OPERATOR, "_processed/_operator/x.req"),
])
def test_archive_key(disposition: str, area: str, expected: str) -> None:
    assert archive_key(disposition, area, "x.req") == expected
    assert parse_arrival_key(expected) is None  # archives are never arrivals again


def test_error_report_sits_beside_the_archived_file() -> None:
    archived = archive_key("rejected", "ACME", "x.req")
    assert error_report_key(archived) == "_rejected/ACME/x.req.error.json"


@pytest.mark.parametrize(("call", "error"), [
    (lambda: archive_key("deleted", "ACME", "x"), ValueError),
    (lambda: archive_key("processed", "_processed", "x"), InvalidKey),
    (lambda: archive_key("processed", "ACME", "../x"), InvalidKey),
    (lambda: processing_key("AC/ME", "x"), InvalidKey),
    (lambda: processing_key("ACME", ""), InvalidKey),
    (lambda: processing_key("ACME\n", "x"), InvalidKey),
    (lambda: outbox_key("_processed", "x"), InvalidKey),
    (lambda: outbox_key("ACME", "/x"), InvalidKey),
    (lambda: error_report_key("a//b"), InvalidKey),
])
def test_builders_reject_bad_parts(call, error: type[Exception]) -> None:
    with pytest.raises(error):
        call()


@pytest.mark.parametrize(("tenant", "name", "expected"), [
    ("ACME", "device-42.lic", "ACME/device-42.lic"),
    ("acme_2", "batch/1.zip", "acme_2/batch/1.zip"),
])
def test_outbox_key(tenant: str, name: str, expected: str) -> None:
    assert outbox_key(tenant, name) == expected


def test_archive_key_candidates_go_plain_then_hashed_then_counted() -> None:
    names = archive_key_candidates("processed", "ACME", "x.req", SHA)
    assert [next(names) for _ in range(4)] == [
        "_processed/ACME/x.req", f"_processed/ACME/x.req.{SHA[:12]}",
        f"_processed/ACME/x.req.{SHA[:12]}.2", f"_processed/ACME/x.req.{SHA[:12]}.3"]
    assert next(archive_key_candidates("rejected", "ACME", "x.req", SHA)) == \
        "_rejected/ACME/x.req"


@pytest.mark.parametrize("bad", ["", "ABC", SHA.upper(), SHA[:-1] + "g"])
def test_archive_key_candidates_need_a_sha256(bad: str) -> None:
    with pytest.raises(ValueError):
        next(archive_key_candidates("processed", "ACME", "x", bad))


def test_make_arrival() -> None:
    arrival = make_arrival("ACME/sub/x.req", b"payload")
    assert arrival == Arrival("ACME", "sub/x.req", "ACME/sub/x.req", b"payload", SHA, 7)
    assert "payload" not in repr(arrival)
    with pytest.raises(ValueError):
        make_arrival("_processed/ACME/x.req", b"")
