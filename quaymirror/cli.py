"""The ``quaymirror`` command. Commands that create something print only what a script needs."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from quaymirror.settings import Settings, SettingsError

log = logging.getLogger("quaymirror")


# Commands that log while they run; the others report only through stdout, stderr and the exit code.
LONG_RUNNING = {"serve", "worker"}


class CliError(Exception):
    """An error for the user: printed on stderr, exit code 1, no traceback."""


@contextmanager
def _database(settings: Settings) -> Iterator:
    """The database for one command, disposed of afterwards."""
    from quaymirror import db

    if settings.is_sqlite:
        # The embedded default needs no separate step: keep its schema current.
        settings.instance_path.mkdir(parents=True, exist_ok=True)
        db.upgrade(settings.database_url)
    database = db.Database(settings.database_url)
    try:
        yield database
    finally:
        database.dispose()


def _user(session, name: str):
    from quaymirror.accounts import service as accounts

    user = accounts.get_by_name(session, name)
    if user is None:
        raise CliError(f"no such user, organization or robot: {name}")
    return user


def _run_service(action):
    """Run a service call, turning its API errors into CLI errors."""
    from quaymirror.errors import ApiError, PlainError

    try:
        return action()
    except ApiError as error:
        raise CliError(error.detail) from None
    except PlainError as error:
        raise CliError(error.message) from None


def cmd_db_upgrade(args, settings: Settings) -> None:
    from quaymirror import db

    settings.instance_path.mkdir(parents=True, exist_ok=True)
    db.upgrade(settings.database_url)
    print("database is at the latest revision", file=sys.stderr)


def cmd_user_create(args, settings: Settings) -> None:
    from quaymirror.accounts import service as accounts

    with _database(settings) as database, database.transaction() as session:
        _run_service(lambda: accounts.create_user(session, args.name, args.email, args.superuser))
    print(args.name)


def cmd_org_create(args, settings: Settings) -> None:
    from quaymirror.accounts import service as accounts

    with _database(settings) as database, database.transaction() as session:
        owner = _user(session, args.owner)
        _run_service(lambda: accounts.create_organization(session, args.name, owner))
    print(args.name)


def cmd_repo_create(args, settings: Settings) -> None:
    from quaymirror.repositories import service as repositories
    from quaymirror.repositories.models import RepositoryState

    if args.path.count("/") != 1:
        raise CliError("repository must be given as NAMESPACE/NAME")
    namespace_name, name = args.path.split("/")
    with _database(settings) as database, database.transaction() as session:
        namespace = _user(session, namespace_name)
        if namespace.is_robot:
            raise CliError("robots cannot own repositories")
        _run_service(
            lambda: repositories.create(session, namespace, name, state=RepositoryState[args.state])
        )
    print(args.path)


def cmd_robot_create(args, settings: Settings) -> None:
    from quaymirror.accounts import service as accounts
    from quaymirror.security.secrets import SecretBox

    if args.name.count("+") != 1:
        raise CliError("robot must be given as NAMESPACE+SHORTNAME")
    namespace_name, short = args.name.split("+")
    with _database(settings) as database, database.transaction() as session:
        namespace = _user(session, namespace_name)
        _robot, token = _run_service(
            lambda: accounts.create_robot(session, SecretBox(settings.secret_key), namespace, short)
        )
    print(token)


def cmd_permission_grant(args, settings: Settings) -> None:
    from quaymirror.repositories import service as repositories

    if args.repository.count("/") != 1:
        raise CliError("repository must be given as NAMESPACE/NAME")
    namespace_name, name = args.repository.split("/")
    with _database(settings) as database, database.transaction() as session:
        user = _user(session, args.user)
        namespace = _user(session, namespace_name)
        repository = repositories.get(session, namespace, name)
        if repository is None:
            raise CliError(f"no such repository: {args.repository}")
        _run_service(lambda: repositories.set_permission(session, repository, user, args.role))
    print(f"granted {args.role} on {args.repository} to {args.user}", file=sys.stderr)


def cmd_token_create(args, settings: Settings) -> None:
    from quaymirror.auth import scopes
    from quaymirror.auth.tokens import issue

    try:
        granted = scopes.parse(" ".join(args.scope))
    except scopes.UnknownScope as error:
        raise CliError(f"{error}; known scopes: {', '.join(scopes.ALL_SCOPES)}") from None
    if not granted:
        raise CliError(f"give at least one --scope; known scopes: {', '.join(scopes.ALL_SCOPES)}")
    if args.expires_in is not None and args.expires_in <= 0:
        raise CliError("--expires-in must be a positive number of seconds")
    with _database(settings) as database, database.transaction() as session:
        user = _user(session, args.user)
        if user.is_organization:
            raise CliError("tokens belong to users or robots, not organizations")
        raw = issue(session, user, granted, args.expires_in)
    print(raw)


def cmd_serve(args, settings: Settings) -> None:
    from quaymirror.server import serve

    serve(settings, host=args.host, port=args.port, with_worker=not args.no_worker)


def cmd_worker(args, settings: Settings) -> None:
    from quaymirror.server import run_worker

    run_worker(settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quaymirror", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    db_parser = commands.add_parser("db", help="database schema")
    db_commands = db_parser.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("upgrade", help="apply migrations").set_defaults(func=cmd_db_upgrade)

    user = commands.add_parser("user", help="users").add_subparsers(dest="sub", required=True)
    user_create = user.add_parser("create", help="create a user")
    user_create.add_argument("name")
    user_create.add_argument("--email")
    user_create.add_argument("--superuser", action="store_true")
    user_create.set_defaults(func=cmd_user_create)

    org = commands.add_parser("org", help="organizations").add_subparsers(dest="sub", required=True)
    org_create = org.add_parser("create", help="create an organization")
    org_create.add_argument("name")
    org_create.add_argument("--owner", required=True)
    org_create.set_defaults(func=cmd_org_create)

    repo = commands.add_parser("repo", help="repositories").add_subparsers(dest="sub", required=True)
    repo_create = repo.add_parser("create", help="create a repository")
    repo_create.add_argument("path", metavar="NAMESPACE/NAME")
    repo_create.add_argument("--state", choices=["NORMAL", "READ_ONLY", "MIRROR"], default="NORMAL")
    repo_create.set_defaults(func=cmd_repo_create)

    robot = commands.add_parser("robot", help="robot accounts").add_subparsers(dest="sub", required=True)
    robot_create = robot.add_parser("create", help="create a robot and print its token")
    robot_create.add_argument("name", metavar="NAMESPACE+SHORT")
    robot_create.set_defaults(func=cmd_robot_create)

    permission = commands.add_parser("permission", help="repository permissions").add_subparsers(
        dest="sub", required=True
    )
    grant = permission.add_parser("grant", help="grant a role on a repository")
    grant.add_argument("user", metavar="USER_OR_ROBOT")
    grant.add_argument("repository", metavar="NAMESPACE/NAME")
    grant.add_argument("role", choices=["read", "write", "admin"])
    grant.set_defaults(func=cmd_permission_grant)

    token = commands.add_parser("token", help="OAuth access tokens").add_subparsers(dest="sub", required=True)
    token_create = token.add_parser("create", help="create a token and print it")
    token_create.add_argument("--user", required=True)
    token_create.add_argument("--scope", action="append", required=True)
    token_create.add_argument("--expires-in", type=int, metavar="SECONDS")
    token_create.set_defaults(func=cmd_token_create)

    serve = commands.add_parser("serve", help="run the API (and the worker) with gunicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--no-worker", action="store_true", help="run the API only")
    serve.set_defaults(func=cmd_serve)

    worker = commands.add_parser("worker", help="run the mirror worker alone")
    worker.set_defaults(func=cmd_worker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (2 for usage errors, 1 for other errors)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # usage errors (already printed on stderr) and --help
        return exit_.code if isinstance(exit_.code, int) else 2
    if args.command in LONG_RUNNING:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            stream=sys.stderr)
    try:
        settings = Settings.from_env()
        args.func(args, settings)
    except (CliError, SettingsError) as error:
        print(f"quaymirror: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # a database that is down, a port in use, ...
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(error, SQLAlchemyError | OSError):
            first_line = (str(error).splitlines() or [""])[0]
            print(f"quaymirror: error: {type(error).__name__}: {first_line}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
