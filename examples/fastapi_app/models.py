"""The service's mapped class: accounts, looked up by id or by email."""

from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "fastapi_accounts"
    __stockpyle_keys__ = ["id", "email"]

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    #: Each committed update is written through with its version (see docs/orm.md).
    version: Mapped[int] = mapped_column(default=1)

    __mapper_args__ = {"version_id_col": version}

    def as_dict(self) -> dict[str, object]:
        return {"id": self.id, "email": self.email, "name": self.name}
