"""History search, filters and paging, and the call page, over a temp SQLite store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from console_support import PASSWORD, dead_redis_url, sample_record, settings

from worker.console import pages
from worker.console.app import create_app
from worker.records.store import RecordStore


async def test_history_filters_and_paging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = RecordStore(f"sqlite:///{tmp_path / 'records.db'}")
    store.migrate()
    for i in range(5):
        record = sample_record(f"call-{i}", caller=f"***000{i}", text=f"order number {i}")
        if i == 4:
            old = datetime(2025, 1, 2, 12, tzinfo=UTC)
            record = record.model_copy(
                update={"started_at": old, "ended_at": old + timedelta(seconds=30)}
            )
        await asyncio.to_thread(store.save, record)
    await asyncio.to_thread(store.close)
    monkeypatch.setattr(pages, "PAGE_SIZE", 2)
    client = TestClient(TestServer(create_app(settings(tmp_path, dead_redis_url()))))
    await client.start_server()
    try:
        await client.post("/login", data={"password": PASSWORD})

        async def ids(query: str) -> list[str]:
            page = await (await client.get("/calls" + query)).text()
            return [p.split('"')[0] for p in page.split('data-call-id="')[1:]]

        assert await ids("?text=number 3") == ["call-3"]
        assert await ids("?caller=0002") == ["call-2"]
        assert await ids("?until=2025-01-02") == ["call-4"]
        assert "call-4" not in await ids("?since=2025-01-03")
        first = await ids("")
        page = await (await client.get("/calls")).text()
        assert len(first) == 2 and 'id="next-page"' in page
        second = await ids("?page=1")
        assert len(second) == 2 and not set(first) & set(second)
        assert (await client.get("/calls?outcome=bogus")).status == 400
        assert (await client.get("/calls?since=yesterday")).status == 400
        assert (await client.get("/calls/nope")).status == 404
        api = await (await client.get("/api/calls?flow=support")).json()
        assert [row["call_id"] for row in api] == first
    finally:
        await client.close()
