"""Alembic environment: one metadata for SQLite and PostgreSQL."""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import engine_from_config, pool

from quaymirror.models import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    """The URL given by the caller, else QUAYMIRROR_DATABASE_URL or the embedded default.

    Only the URL is read: running ``alembic`` must not generate a secret key as a side effect.
    """
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from quaymirror.settings import PREFIX, database_url_from_env, instance_path_from_env

    if not os.environ.get(PREFIX + "DATABASE_URL"):  # the embedded default lives in the instance folder
        instance_path_from_env().mkdir(parents=True, exist_ok=True)
    return database_url_from_env()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = engine_from_config({"sqlalchemy.url": _url()}, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
