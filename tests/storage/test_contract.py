"""One contract, two back ends: every test runs on a LocalStore and on an S3Store (moto)."""

from __future__ import annotations

import io
import os
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.storage import (
    InvalidKey,
    LocalStore,
    ObjectTooLarge,
    S3Store,
    Store,
    check_key,
    open_store,
)
from tests.s3fixtures import (  # noqa: F401
    MotoEndpoint,
    create_bucket,
    make_s3_store,
    moto_server,
    seed_objects,
)

StoreFactory = Callable[..., Store]

BAD_KEYS = [
    "", "/abs", "a/../b", "..", ".", "a/./b", "a//b", "a/", "a\\b", "a\x00b", "a\nb",
    "a\x7fb", "x" * 1025, "é" * 513,
]


@pytest.fixture(params=["local", "s3"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """A factory of empty stores of one kind; `name` picks a sibling root/prefix."""
    if request.param == "local":
        def local(name: str = "root", page_size: int = 1000) -> Store:
            return LocalStore(tmp_path / name)
        return local

    endpoint: MotoEndpoint = request.getfixturevalue("moto_server")
    bucket = create_bucket(endpoint)
    client = endpoint.client("s3")

    def s3(name: str = "root", page_size: int = 1000) -> Store:
        return S3Store(bucket, f"tenant-data/{name}", client=client, page_size=page_size)
    return s3


@pytest.fixture
def store(make_store: StoreFactory) -> Store:
    return make_store()


def keys(store: Store, prefix: str = "") -> list[str]:
    return [info.key for info in store.list(prefix)]


# --- reading and writing ------------------------------------------------------------------


@pytest.mark.parametrize("key", ["ACME/a.req", "ACME/sub/deep/b.bin", "top",
                                 "ACME/name with spaces+plus&amp;.req", "ACME/Ünïcødé-名前.req"])
def test_put_then_get_returns_the_same_bytes(store: Store, key: str) -> None:
    data = bytes(range(256)) * 3
    store.put(key, data)
    assert store.get(key) == data
    assert store.exists(key)
    assert keys(store) == [key]


def test_empty_object(store: Store) -> None:
    store.put("ACME/empty", b"")
    assert store.get("ACME/empty") == b""
    assert store.head("ACME/empty").size == 0


def test_put_overwrites_the_same_object(store: Store) -> None:
    store.put("ACME/a.req", b"first version, longer")
    store.put("ACME/a.req", b"second")
    assert store.get("ACME/a.req") == b"second"
    assert keys(store) == ["ACME/a.req"]


def test_head_reports_size_and_utc_mtime(store: Store) -> None:
    store.put("ACME/a.req", b"12345")
    info = store.head("ACME/a.req")
    assert (info.key, info.size) == ("ACME/a.req", 5)
    assert info.modified.tzinfo is not None
    assert info.modified.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - info.modified) < timedelta(minutes=2)
    [listed] = store.list()
    assert (listed.key, listed.size) == ("ACME/a.req", 5)
    assert listed.modified.utcoffset() == timedelta(0)


def test_put_file_streams_a_file_into_one_object(store: Store, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    source = tmp_path / "source.bin"
    source.write_bytes(b"skipped" + data)
    with source.open("rb") as handle:
        handle.seek(len(b"skipped"))  # from the file's position to its end
        store.put_file("ACME/big.bin", handle)
    store.put("ACME/old.bin", b"old")
    with source.open("rb") as handle:
        handle.seek(len(source.read_bytes()) - 3)
        store.put_file("ACME/old.bin", handle)
    assert store.get("ACME/big.bin") == data
    assert store.get("ACME/old.bin") == data[-3:]
    assert keys(store) == ["ACME/big.bin", "ACME/old.bin"]


def test_which_exist_is_the_stored_subset(store: Store) -> None:
    for name in ("a", "c", "sub/e"):
        store.put(f"ACME/{name}", b"x")
    asked = [f"ACME/{name}" for name in ("a", "b", "c", "sub/d", "sub/e")]
    assert store.which_exist(asked) == {"ACME/a", "ACME/c", "ACME/sub/e"}
    assert store.which_exist([]) == set()


def test_put_if_absent_writes_once(store: Store) -> None:
    assert store.put_if_absent("ACME/claim", b"one") is True
    assert store.put_if_absent("ACME/claim", b"two") is False
    assert store.get("ACME/claim") == b"one"
    assert keys(store) == ["ACME/claim"]


def test_put_if_absent_has_one_winner_under_contention(store: Store) -> None:
    barrier = threading.Barrier(6)
    results: list[bool] = []

    def contender(n: int) -> None:
        barrier.wait()
        results.append(store.put_if_absent("ACME/claim", f"writer {n}".encode()))

    threads = [threading.Thread(target=contender, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 5 + [True]
    assert store.get("ACME/claim").startswith(b"writer ")
    assert keys(store) == ["ACME/claim"]


# --- missing objects ----------------------------------------------------------------------


def test_missing_objects_raise_file_not_found(store: Store) -> None:
    store.put("ACME/other", b"x")
    for call in (lambda: store.get("ACME/missing"), lambda: store.head("ACME/missing"),
                 lambda: store.move("ACME/missing", "ACME/elsewhere"),
                 lambda: store.get("ACME")):  # a "folder" is not an object
        with pytest.raises(FileNotFoundError):
            call()
    assert not store.exists("ACME/missing")
    assert not store.exists("ACME")
    assert not store.exists("ACME/other/below-a-file")


def test_delete_is_idempotent(store: Store) -> None:
    store.put("ACME/a", b"x")
    store.delete("ACME/a")
    store.delete("ACME/a")
    store.delete("never/existed")
    assert not store.exists("ACME/a")
    assert keys(store) == []


# --- move ---------------------------------------------------------------------------------


def test_move_renames_into_new_folders(store: Store) -> None:
    store.put("ACME/a.req", b"payload")
    store.move("ACME/a.req", "_processing/ACME/a.req")
    assert not store.exists("ACME/a.req")
    assert store.get("_processing/ACME/a.req") == b"payload"
    assert keys(store) == ["_processing/ACME/a.req"]


def test_move_replaces_the_destination(store: Store) -> None:
    store.put("a", b"new")
    store.put("b", b"old")
    store.move("a", "b")
    assert store.get("b") == b"new"
    assert keys(store) == ["b"]


def test_move_onto_itself_keeps_the_object(store: Store) -> None:
    store.put("ACME/a", b"x")
    store.move("ACME/a", "ACME/a")
    assert store.get("ACME/a") == b"x"


# --- listing ------------------------------------------------------------------------------


def test_list_is_recursive_sorted_and_filtered_by_prefix(store: Store) -> None:
    wanted = ["ACME/b", "ACME/a", "ACME/sub/c", "ACME/subway", "ACX/d", "BETA/e", "_operator/f"]
    for key in wanted:
        store.put(key, key.encode())
    assert keys(store) == sorted(wanted)
    assert keys(store, "ACME/") == ["ACME/a", "ACME/b", "ACME/sub/c", "ACME/subway"]
    assert keys(store, "AC") == ["ACME/a", "ACME/b", "ACME/sub/c", "ACME/subway", "ACX/d"]
    assert keys(store, "ACME/sub/") == ["ACME/sub/c"]
    assert keys(store, "ACME/sub") == ["ACME/sub/c", "ACME/subway"]
    assert keys(store, "NOPE/") == []


def test_list_of_an_empty_store(store: Store) -> None:
    assert keys(store) == []


def test_list_paginates(make_store: StoreFactory) -> None:
    store = make_store(page_size=4)
    calls: list[str] = []
    if isinstance(store, S3Store):
        store.client.meta.events.register(
            "before-call.s3.ListObjectsV2", lambda **kw: calls.append("list"))
    wanted = [f"ACME/{i:03d}" for i in range(11)]
    for key in reversed(wanted):
        store.put(key, b"x")
    assert keys(store) == wanted
    if isinstance(store, S3Store):
        assert len(calls) == 3  # 4 + 4 + 3


def test_sibling_roots_are_isolated(make_store: StoreFactory) -> None:
    """A store never lists or reads its sibling's objects, even with a shared name prefix."""
    first, second = make_store("root"), make_store("root-2")
    first.put("ACME/a", b"1")
    second.put("ACME/b", b"2")
    assert keys(first) == ["ACME/a"]
    assert keys(second) == ["ACME/b"]
    assert not first.exists("ACME/b")


# --- keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_KEYS, ids=repr)
def test_every_method_rejects_invalid_keys(store: Store, bad: str) -> None:
    calls = [
        lambda: store.put(bad, b"x"), lambda: store.put_if_absent(bad, b"x"),
        lambda: store.get(bad), lambda: store.head(bad), lambda: store.exists(bad),
        lambda: store.put_file(bad, io.BytesIO(b"x")), lambda: store.which_exist([bad]),
        lambda: store.delete(bad), lambda: store.move(bad, "ok"), lambda: store.move("ok", bad),
    ]
    store.put("ok", b"x")
    for call in calls:
        with pytest.raises(InvalidKey):
            call()
    assert keys(store) == ["ok"]


@pytest.mark.parametrize("bad", ["/x", "../", "a//", "a/../"])
def test_list_rejects_invalid_prefixes(store: Store, bad: str) -> None:
    with pytest.raises(InvalidKey):
        store.list(bad)


def test_invalid_key_is_a_value_error() -> None:
    assert issubclass(InvalidKey, ValueError)
    assert check_key("ACME/a.req") == "ACME/a.req"
    assert check_key("x" * 1024) == "x" * 1024


def test_location(make_store: StoreFactory, tmp_path: Path) -> None:
    store = make_store()
    if isinstance(store, LocalStore):
        assert store.location == (tmp_path / "root").resolve().as_uri()
    else:
        assert store.location.startswith("s3://") and store.location.endswith("/root")


# --- back-end specifics -------------------------------------------------------------------


def test_s3_list_over_a_thousand_keys(moto_server: MotoEndpoint) -> None:  # noqa: F811
    bucket = create_bucket(moto_server)
    wanted = [f"ACME/{i:05d}.req" for i in range(1234)]
    seed_objects(moto_server, bucket, [f"in/{k}" for k in wanted] + ["other/ACME/x"])
    store = make_s3_store(moto_server, bucket, "in")
    pages: list[int] = []
    store.client.meta.events.register("after-call.s3.ListObjectsV2",
                                      lambda parsed, **kw: pages.append(parsed["KeyCount"]))
    assert keys(store) == wanted
    assert pages == [1000, 234]


def test_s3_list_skips_folder_markers_and_unsafe_keys(moto_server: MotoEndpoint) -> None:  # noqa: F811
    store = make_s3_store(moto_server, prefix="in")
    for raw in ("in/ACME/", "in/ACME//x", "in/ACME/../escape", "in/ACME/ok"):
        store.client.put_object(Bucket=store.bucket, Key=raw, Body=b"x")
    assert keys(store) == ["ACME/ok"]


def test_local_put_replaces_rather_than_rewrites(tmp_path: Path) -> None:
    """A reader holding the old file keeps reading complete old content (os.replace)."""
    store = LocalStore(tmp_path)
    store.put("ACME/a", b"old content")
    with open(tmp_path / "ACME" / "a", "rb") as reader:
        store.put("ACME/a", b"new")
        assert reader.read() == b"old content"
    assert store.get("ACME/a") == b"new"
    assert sorted(os.listdir(tmp_path / "ACME")) == ["a"]  # no temp files left behind


def test_local_list_ignores_its_own_temp_files_and_symlinks(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    store.put("ACME/a", b"x")
    (tmp_path / "root" / "ACME" / ".a.airlock-0123456789abcdef.tmp").write_bytes(b"partial")
    (tmp_path / "outside").write_bytes(b"secret")
    os.symlink(tmp_path / "outside", tmp_path / "root" / "ACME" / "link")
    assert keys(store) == ["ACME/a"]


def test_local_refuses_paths_through_symlinks_out_of_the_root(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(b"secret")
    (tmp_path / "root").mkdir()
    os.symlink(tmp_path / "outside", tmp_path / "root" / "evil")
    store = LocalStore(tmp_path / "root")
    with pytest.raises(InvalidKey):
        store.get("evil/secret")
    with pytest.raises(InvalidKey):
        store.put("evil/planted", b"x")
    assert keys(store) == []
    assert keys(store, "evil/") == []
    assert sorted(os.listdir(tmp_path / "outside")) == ["secret"]
    os.symlink(tmp_path / "outside" / "secret", tmp_path / "root" / "leaf")  # a file link
    with pytest.raises(InvalidKey):
        store.get("leaf")
    (tmp_path / "root" / "inside").mkdir()
    os.symlink(tmp_path / "root" / "inside", tmp_path / "root" / "alias")  # stays inside
    store.put("alias/ok", b"fine")
    assert store.get("inside/ok") == b"fine"


def test_local_head_mtime_follows_the_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a", b"x")
    past = time.time() - 3600
    os.utime(tmp_path / "a", (past, past))
    assert abs(store.head("a").modified.timestamp() - past) < 1


_SEGMENTS = st.sampled_from(["..", ".", "", "a", "b", "ACME", "...", "..a", "x.req", " ", "~"])


@settings(max_examples=300, deadline=None)
@given(segments=st.lists(_SEGMENTS, min_size=1, max_size=6), absolute=st.booleans(),
       noise=st.text(max_size=8))
def test_local_keys_never_escape_the_root(segments: list[str], absolute: bool,
                                          noise: str) -> None:
    key = ("/" if absolute else "") + "/".join(segments) + noise
    with tempfile.TemporaryDirectory() as tmp:
        box = Path(tmp).resolve()
        root = box / "root"
        store = LocalStore(root)
        try:
            path = store.path_for(key)
        except InvalidKey:
            with pytest.raises(InvalidKey):
                check_key(key)
            return
        assert ".." not in key.split("/")
        assert path.resolve().is_relative_to(root)
        store.put(key, b"x")
        assert store.get(key) == b"x"
        assert [p for p in box.rglob("*") if not p.is_relative_to(root)] == []


# --- open_store ---------------------------------------------------------------------------


def test_open_store_picks_the_back_end(tmp_path: Path, moto_server: MotoEndpoint) -> None:  # noqa: F811
    local = open_store(str(tmp_path / "inbox"), moto_server.settings())
    assert isinstance(local, LocalStore) and local.root == (tmp_path / "inbox").resolve()
    uri = open_store((tmp_path / "x y").as_uri())
    assert isinstance(uri, LocalStore) and uri.root == (tmp_path / "x y").resolve()

    bucket = create_bucket(moto_server)
    remote = open_store(f"s3://{bucket}/drop/in/", moto_server.settings())
    assert isinstance(remote, S3Store)
    assert (remote.bucket, remote.prefix, remote.location) == (bucket, "drop/in",
                                                                 f"s3://{bucket}/drop/in")
    remote.put("ACME/a", b"x")
    assert remote.client.get_object(Bucket=bucket, Key="drop/in/ACME/a")["Body"].read() == b"x"
    assert isinstance(open_store(f"s3://{bucket}", moto_server.settings()), S3Store)
    with pytest.raises(ValueError):
        open_store("")


def test_put_many_writes_each_object_and_refuses_an_unsafe_key(store: Store) -> None:
    items = [(f"ACME/r{i}.lic", f"result {i}".encode()) for i in range(5)]
    store.put_many(items)
    assert [store.get(key) for key, _ in items] == [data for _, data in items]
    store.put_many([("ACME/r0.lic", b"again")])  # a retry rewrites the same object
    assert store.get("ACME/r0.lic") == b"again" and len(keys(store)) == 5
    with pytest.raises(InvalidKey):
        store.put_many([("../escape", b"x")])
    assert len(keys(store)) == 5


def test_make_folder_accepts_a_prefix_and_refuses_an_unsafe_one(store: Store) -> None:
    store.make_folder("ACME")
    with pytest.raises(InvalidKey):
        store.make_folder("../escape")
    assert keys(store) == []  # a folder is not an object


def test_open_streams_the_object_and_refuses_one_over_the_limit(store: Store) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)  # several blocks of the S3 spool
    store.put("ACME/big.zip", data)
    with store.open("ACME/big.zip") as handle:
        assert handle.read(10) == data[:10]
        handle.seek(0)
        assert handle.read() == data
    with store.open("ACME/big.zip", limit=len(data)) as handle:
        assert len(handle.read()) == len(data)
    with pytest.raises(ObjectTooLarge) as refused:
        with store.open("ACME/big.zip", limit=len(data) - 1):
            pytest.fail("an object over the limit must not be opened")
    assert refused.value.size == len(data) and refused.value.limit == len(data) - 1
    with pytest.raises(FileNotFoundError):
        with store.open("ACME/missing.zip"):
            pass
    with pytest.raises(InvalidKey):
        with store.open("../escape"):
            pass


def test_move_without_replace_keeps_the_existing_object(store: Store) -> None:
    store.put("ACME/a", b"first")
    store.put("ACME/b", b"second")
    with pytest.raises(FileExistsError):
        store.move("ACME/b", "ACME/a", replace=False)
    assert store.get("ACME/a") == b"first" and store.get("ACME/b") == b"second"
    store.move("ACME/b", "_processed/ACME/b", replace=False, durable=False)
    store.sync()
    assert keys(store) == ["ACME/a", "_processed/ACME/b"]


def test_lazy_writes_are_there_after_sync(store: Store) -> None:
    store.put_many([("ACME/x", b"1"), ("ACME/y", b"2")], durable=False)
    assert store.put_if_absent("ACME/z", b"3", durable=False)
    assert not store.put_if_absent("ACME/z", b"other", durable=False)
    store.sync()
    assert [store.get(k) for k in ("ACME/x", "ACME/y", "ACME/z")] == [b"1", b"2", b"3"]


def test_a_local_open_never_reads_a_fifo_or_follows_a_symlink(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    store.put("ACME/real", b"secret elsewhere")
    os.mkfifo(tmp_path / "root/ACME/pipe")  # no writer: a blocking open would hang
    os.symlink(tmp_path / "root/ACME/real", tmp_path / "root/ACME/link")
    for name in ("pipe", "link"):
        with pytest.raises(FileNotFoundError):
            with store.open(f"ACME/{name}"):
                pytest.fail(f"{name} must not be opened")


def test_stale_temp_files_of_a_killed_writer_are_removed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    store.put("ACME/done.lic", b"kept")
    folder = tmp_path / "root/ACME/deep"
    folder.mkdir(parents=True)
    stale = folder / ".x.lic.airlock-0123456789abcdef.tmp"
    fresh = folder / ".y.lic.airlock-fedcba9876543210.tmp"
    foreign = folder / ".upload.tmp"  # not ours: a customer's in-flight upload
    for path in (stale, fresh, foreign):
        path.write_bytes(b"half")
    old = time.time() - 600
    for path in (stale, foreign):
        os.utime(path, (old, old))
    assert store.remove_stale_temp(older_than=300) == 1
    assert not stale.exists() and fresh.exists() and foreign.exists()
    assert store.get("ACME/done.lic") == b"kept"


def test_s3_has_no_temp_files_to_remove(make_store: StoreFactory) -> None:
    assert make_store().remove_stale_temp(older_than=0) == 0


def _key_by_the_rules(key: str) -> bool:
    """The key rules written out plainly, to hold the one-match fast path to."""
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    segments = key.split("/")
    return (0 < size <= 1024 and "\\" not in key
            and not any(unicodedata.category(ch) == "Cc" for ch in key)
            and not key.startswith("/") and "" not in segments
            and "." not in segments and ".." not in segments)


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(["a", "B", "0", ".", "..", "/", "_", "-", "\\", "\x00",
                                 "\x7f", "é", "~", "+", " ", "\ud800", "x" * 300]),
                max_size=12).map("".join))
def test_check_key_agrees_with_the_rules(key: str) -> None:
    try:
        accepted = check_key(key) == key
    except InvalidKey:
        accepted = False
    assert accepted == _key_by_the_rules(key)
