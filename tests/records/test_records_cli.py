"""``voicestack records``: export with a verified recording, purge by caller, retention, list,
show, and clean errors, over a temporary SQLite store."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from worker.cli import main
from worker.config.records import RecordsConfig
from worker.records.caller_key import caller_key, key_path, load_secret, normalize_number
from worker.records.record import CallRecord, Recording
from worker.records.store import RecordStore
from worker.stack.ports import free_port

Factory = Callable[..., CallRecord]
KEY_ENV = "VOICESTACK_TEST_RECORDS_KEY"
SECRET = "test-secret"
ALICE, BOB = "+1 (555) 123-4567", "+44 20 7946 0000"


class Env:
    """A config file, its store and recordings directory."""

    def __init__(self, root: Path, store_url: str | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.db = root / "records.db"
        self.audio = root / "audio"
        self.config = root / "agent.yaml"
        records = {
            "store_url": store_url or f"sqlite:///{self.db}",
            "spool_dir": str(root / "spool"),
            "recordings_dir": str(self.audio),
            "caller_key_env": KEY_ENV,
        }
        persona = {"system_prompt": "You help.", "greeting": "Hello."}
        self.config.write_text(yaml.safe_dump({"persona": persona, "records": records}))

    def run(self, *args: str) -> int:
        return main(["records", *args, "--config", str(self.config)])

    def store(self) -> RecordStore:
        return RecordStore(f"sqlite:///{self.db}")

    def seed(self, *records: CallRecord) -> None:
        with self.store() as store:
            store.migrate()
            for record in records:
                store.save(record)

    def recording(self, call_id: str, data: bytes) -> Recording:
        relative = f"2024/{call_id}.ogg"
        path = self.audio / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        return Recording(path=relative, format="ogg", sha256=digest, bytes=len(data), duration_s=2)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    monkeypatch.setenv(KEY_ENV, SECRET)
    return Env(tmp_path)


def _key(number: str) -> str:
    return caller_key(number, SECRET.encode())


def test_export_writes_the_record_and_the_verified_recording(
    env: Env, make: Factory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    audio = b"OggS" + bytes(range(256)) * 40
    record = make("call-1", recording=env.recording("call-1", audio))
    env.seed(record)
    out = tmp_path / "export"
    assert env.run("export", "call-1", "--out", str(out)) == 0
    assert CallRecord.model_validate_json((out / "call-1.json").read_text()) == record
    assert (out / "call-1.ogg").read_bytes() == audio
    assert "sha256 verified" in capsys.readouterr().out

    # A recording that changed on disk is not exported as if it were the call's.
    (env.audio / "2024/call-1.ogg").write_bytes(audio[:-1] + b"!")
    again = tmp_path / "again"
    assert env.run("export", "call-1", "--out", str(again)) == 1
    err = capsys.readouterr().err
    assert "does not match its record" in err and record.recording is not None
    assert record.recording.sha256 in err
    assert not (again / "call-1.ogg").exists() and not (again / "call-1.json").exists()

    assert env.run("export", "nobody", "--out", str(again)) == 1
    assert "no call 'nobody'" in capsys.readouterr().err


def test_purge_removes_only_that_callers_calls(
    env: Env, make: Factory, capsys: pytest.CaptureFixture[str]
) -> None:
    alice = [
        make(f"alice-{i}", caller_key=_key(ALICE), recording=env.recording(f"alice-{i}", b"a"))
        for i in range(2)
    ]
    bob = make("bob-0", caller_key=_key(BOB), recording=env.recording("bob-0", b"b"))
    env.seed(*alice, bob)

    assert env.run("purge", "--caller", "+15551234567") == 0  # a dry run without --yes
    out = capsys.readouterr().out
    assert "alice-0" in out and "alice-1" in out and "bob-0" not in out
    assert "2 call(s) would be removed" in out
    assert (env.audio / "2024/alice-0.ogg").exists()

    assert env.run("purge", "--caller", "1-555-123-4567", "--yes") == 0
    out = capsys.readouterr().out
    assert "removed 2 call(s)" in out and "2024/alice-1.ogg" in out
    with env.store() as store:
        assert store.get("alice-0") is None and store.get("alice-1") is None
        assert store.get("bob-0") == bob
    assert not (env.audio / "2024/alice-0.ogg").exists()
    assert (env.audio / "2024/bob-0.ogg").exists()


def test_purge_without_any_caller_key_says_so(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(KEY_ENV)
    assert env.run("purge", "--caller", ALICE, "--yes") == 1
    assert "no caller key" in capsys.readouterr().err


def test_retention_removes_old_calls_and_their_recordings(
    env: Env, make: Factory, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    now = datetime.now(UTC)
    old = make("old", started=now - timedelta(days=40), recording=env.recording("old", b"o"))
    recent = make("recent", started=now - timedelta(days=5), recording=env.recording("new", b"n"))
    env.seed(old, recent)
    with caplog.at_level(logging.INFO, logger="worker.records"):
        assert env.run("retention", "--days", "30") == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "worker.records.retention"]
    assert any(
        line.startswith("retention: removed call old (ended ") and "recording 2024/old.ogg" in line
        for line in lines
    )
    assert any("removed 1 call(s)" in line for line in lines)
    assert "old" in capsys.readouterr().out
    with env.store() as store:
        assert store.get("old") is None and store.get("recent") == recent
    assert not (env.audio / "2024/old.ogg").exists() and (env.audio / "2024/new.ogg").exists()

    assert env.run("retention") == 0  # the configured 90 days: nothing more to do
    with env.store() as store:
        assert store.get("recent") == recent


def test_list_and_show(env: Env, make: Factory, capsys: pytest.CaptureFixture[str]) -> None:
    start = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
    env.seed(
        make("a", started=start, texts=("my card was declined",), flow="billing"),
        make("b", started=start + timedelta(hours=1), outcome="transferred"),
    )
    assert env.run("list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["STARTED", "(UTC)", "CALL"]
    assert [line.split()[2] for line in lines[1:]] == ["b", "a"]
    assert "2024-05-01 10:00:00" in lines[1]

    assert env.run("list", "--text", "CARD", "--since", "2024-05-01") == 0
    assert [line.split()[2] for line in capsys.readouterr().out.splitlines()[1:]] == ["a"]
    assert env.run("list", "--outcome", "transferred", "--until", "2024-05-01T09:30") == 0
    assert capsys.readouterr().out.splitlines()[1:] == []

    assert env.run("show", "b") == 0
    assert json.loads(capsys.readouterr().out)["outcome"] == "transferred"


def test_migrate_then_errors_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = Env(tmp_path)
    assert env.run("migrate") == 0
    assert "schema revision 0001" in capsys.readouterr().out

    down = Env(tmp_path / "down", f"postgresql+psycopg://u:pw@127.0.0.1:{free_port()}/r")
    assert down.run("list") == 2
    err = capsys.readouterr().err
    assert err.startswith("records: error: records store postgresql+psycopg://u:***@")
    assert "Traceback" not in err and ":pw@" not in err

    unset = Env(tmp_path / "unset", "postgresql+psycopg://u:${VOICESTACK_UNSET_TEST_PW}@h/r")
    assert unset.run("migrate") == 2
    assert "VOICESTACK_UNSET_TEST_PW" in capsys.readouterr().err

    bad = tmp_path / "bad.yaml"
    bad.write_text("persona: {system_prompt: x, greeting: y}\nrecords: {retention_days: 0}\n")
    assert main(["records", "list", "--config", str(bad)]) == 2
    assert "retention_days" in capsys.readouterr().err
    assert main(["records", "list", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_caller_keys_hash_the_normalized_number() -> None:
    assert normalize_number("+1 (555) 123-4567") == normalize_number("1.555.123.4567")
    assert normalize_number("1.555.123.4567") == "+15551234567"
    assert _key(ALICE) == _key("+15551234567") != _key(BOB)
    assert _key(ALICE) != caller_key(ALICE, b"another secret")
    assert len(_key(ALICE)) == 64 and int(_key(ALICE), 16) >= 0
    with pytest.raises(ValueError, match="digit"):
        caller_key("anonymous", b"s")


def test_the_secret_comes_from_the_environment_or_one_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = RecordsConfig(spool_dir=str(tmp_path / "records" / "spool"), caller_key_env=KEY_ENV)
    monkeypatch.setenv(KEY_ENV, SECRET)
    assert load_secret(cfg) == SECRET.encode()
    assert not key_path(cfg).exists()

    monkeypatch.delenv(KEY_ENV)
    # Processes starting together all end up with the same, whole key.
    with ProcessPoolExecutor(4) as pool:
        keys = set(pool.map(load_secret, [cfg] * 8))
    assert len(keys) == 1
    [key] = keys
    assert len(key) == 32 and key_path(cfg) == tmp_path / "records" / "caller.key"
    assert key_path(cfg).stat().st_mode & 0o777 == 0o600
    assert load_secret(cfg) == key
    assert [p.name for p in key_path(cfg).parent.iterdir()] == ["caller.key"]

    key_path(cfg).write_bytes(b"short")
    with pytest.raises(ValueError, match="32-byte"):
        load_secret(cfg)
