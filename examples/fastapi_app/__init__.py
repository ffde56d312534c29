"""An asyncio service: FastAPI, an AsyncEngine, Alembic migrations and sa_stockpyle.

``app.py`` builds the application (:func:`app.create_app`); ``models.py`` holds its one
mapped class; ``migrations/`` is its Alembic environment, run at startup.  Serve it with
``uvicorn examples.fastapi_app.app:app`` (uvicorn is not a dependency of sa_stockpyle),
with ``DATABASE_URL`` and ``REDIS_URL`` set; docs/asyncio.md walks through it.
"""
