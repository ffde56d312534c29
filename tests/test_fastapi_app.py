"""examples/fastapi_app, served through its ASGI app (httpx), on PostgreSQL with both
asyncio drivers and a real Redis: migrations at startup, reads that cost no SQL once
cached, writes that reach the cache at commit, concurrent requests for one missing key
that cost one SELECT."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from examples.fastapi_app.app import create_app
from examples.fastapi_app.models import Account
from tests.asyncio_helpers import PATIENT
from tests.helpers import Statements


@pytest.fixture(params=["asyncpg", "psycopg"])
def database_url(request: pytest.FixtureRequest, postgres_url: str) -> Iterator[str]:
    """The test database for an asyncio driver, without the service's tables."""

    def drop() -> None:
        engine = create_engine(postgres_url)
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE IF EXISTS fastapi_accounts"))
            connection.execute(text("DROP TABLE IF EXISTS fastapi_alembic_version"))
        engine.dispose()

    drop()
    yield (
        make_url(postgres_url)
        .set(drivername=f"postgresql+{request.param}")
        .render_as_string(hide_password=False)
    )
    drop()


def test_the_service_reads_through_and_writes_through(database_url: str, redis_url: str) -> None:
    app = create_app(database_url, redis_url, **PATIENT)

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                email = f"{uuid.uuid4().hex}@example.com"
                created = await client.post("/accounts", json={"email": email, "name": "Ada"})
                assert created.status_code == 201
                ident = created.json()["id"]
                statements = Statements(app.state.engine.sync_engine)
                # Written through at the commit: served without SQL.
                for path in (f"/accounts/{ident}", f"/accounts?email={email}"):
                    reply = await client.get(path)
                    assert reply.status_code == 200
                assert reply.json() == [{"id": ident, "email": email, "name": "Ada"}]
                assert statements.count == 0
                renamed = await client.patch(f"/accounts/{ident}", json={"name": "Grace"})
                assert renamed.json()["name"] == "Grace"
                statements.count = 0
                assert (await client.get(f"/accounts/{ident}")).json()["name"] == "Grace"
                assert statements.count == 0  # the versioned update was written through
                # Twenty concurrent requests for a row no cache holds: one SELECT.
                app.state.store.stores[0].clear()
                await app.state.store.stores[1].invalidate_class(Account)
                statements.kinds.clear()
                replies = await asyncio.gather(
                    *(client.get(f"/accounts/{ident}") for _ in range(20))
                )
                assert {reply.json()["name"] for reply in replies} == {"Grace"}
                assert statements.kinds.count("SELECT") == 1
                assert (await client.get(f"/accounts?ids={ident},0")).json() == [
                    {"id": ident, "email": email, "name": "Grace"},
                    None,
                ]
                assert (await client.delete(f"/accounts/{ident}")).status_code == 204
                assert (await client.get(f"/accounts/{ident}")).status_code == 404
                assert (await client.get(f"/accounts?email={email}")).json() == []

    asyncio.run(scenario())
