"""The service: endpoints that read through the cache and write through sessions.

* Reads go through ``store``, an ``AsyncChainedStore`` of process memory, Redis and the
  database (``AsyncSqlAlchemyStore`` on the request's session).
* Writes go through an ``AsyncSession`` as usual; ``attach()``, called in the lifespan,
  writes every commit through memory and Redis, and tells the other workers' memory
  layers what changed.
* The lifespan runs the Alembic migrations first, and invalidates what they changed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from alembic import command
from alembic.config import Config
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import (
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
    create_async_engine,
)

from sa_stockpyle import attach
from sa_stockpyle.asyncio import AsyncChainedStore, AsyncRedisStore, AsyncSqlAlchemyStore
from sa_stockpyle.stores import ProcessMemoryStore

from .models import Account

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class NewAccount(BaseModel):
    email: str
    name: str = ""


class Rename(BaseModel):
    name: str


def migrate(connection: Connection, store: Any) -> None:
    """Upgrade the database to head on ``connection`` (Alembic's programmatic recipe for
    an async engine), invalidating in ``store`` what the migrations change."""
    config = Config(MIGRATIONS / "alembic.ini")
    config.attributes["connection"] = connection
    config.attributes["store"] = store
    command.upgrade(config, "head")


async def request_store(request: Request) -> AsyncIterator[AsyncChainedStore]:
    """The application's store, for one request; the request's session ends with it."""
    try:
        yield request.app.state.store
    finally:
        await request.app.state.scoped.remove()


async def request_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session for one request's writes."""
    async with request.app.state.sessions() as session:
        yield session


Store = Annotated[AsyncChainedStore, Depends(request_store)]
Session = Annotated[AsyncSession, Depends(request_session)]
router = APIRouter()


@router.get("/accounts/{account_id}")
async def get_account(account_id: int, store: Store) -> dict[str, object]:
    account = await store.get(Account, account_id)
    if account is None:
        raise HTTPException(404, f"no account {account_id}")
    return account.as_dict()


@router.get("/accounts")
async def get_accounts(store: Store, ids: str = "", email: str = "") -> list[Any]:
    """``?ids=1,2,3`` (null for each missing one), or ``?email=...``."""
    if email:
        account = await store.get(Account, {"email": email})
        return [] if account is None else [account.as_dict()]
    found = await store.batch_get(Account, [int(i) for i in ids.split(",") if i])
    return [None if account is None else account.as_dict() for account in found]


@router.post("/accounts", status_code=201)
async def create_account(new: NewAccount, session: Session) -> dict[str, object]:
    account = Account(email=new.email, name=new.name)
    session.add(account)
    await session.commit()  # written through memory and Redis before it returns
    return account.as_dict()


@router.patch("/accounts/{account_id}")
async def rename_account(account_id: int, rename: Rename, session: Session) -> dict[str, object]:
    account = await session.get(Account, account_id)
    if account is None:
        raise HTTPException(404, f"no account {account_id}")
    account.name = rename.name
    await session.commit()
    return account.as_dict()


@router.delete("/accounts/{account_id}", status_code=204)
async def delete_account(account_id: int, session: Session) -> None:
    account = await session.get(Account, account_id)
    if account is None:
        raise HTTPException(404, f"no account {account_id}")
    await session.delete(account)
    await session.commit()


def create_app(database_url: str, redis_url: str, **redis_options: Any) -> FastAPI:
    """The application for a database (an asyncio driver: ``postgresql+asyncpg://``,
    ``postgresql+psycopg://``) and a Redis server (``redis_options``: more arguments of
    ``AsyncRedisStore``, such as its timeouts)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_async_engine(database_url)
        factory = async_sessionmaker(engine, expire_on_commit=False)
        scoped = async_scoped_session(factory, scopefunc=asyncio.current_task)
        memory = ProcessMemoryStore(max_items=100_000)
        redis = AsyncRedisStore(url=redis_url, **redis_options)
        writes = AsyncChainedStore([memory, redis])
        # The attached chain's broadcast keeps the shared memory layer coherent with the
        # other workers' commits: the reading chain needs no second subscription.
        store = AsyncChainedStore(
            [memory, redis, AsyncSqlAlchemyStore(session=scoped)], broadcast=False
        )
        async with engine.begin() as connection:
            await connection.run_sync(migrate, writes.sync)
        handle = attach(factory, writes)
        app.state.engine, app.state.sessions, app.state.store = engine, factory, store
        app.state.scoped = scoped
        try:
            yield
        finally:
            handle.detach()
            await writes.aclose()
            await store.aclose()
            await engine.dispose()

    app = FastAPI(lifespan=lifespan)
    app.include_router(router)
    return app


app = create_app(
    os.environ.get("DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"),
    os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
)
