"""The ``quaymirror`` command. Commands that create something print only what a script needs."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import version
from typing import Any, NoReturn

from quaymirror.settings import Settings, SettingsError

log = logging.getLogger("quaymirror")

DESCRIPTION = """\
Repository mirroring that speaks Quay's mirror REST API. Commands that create something print only
what a script needs on stdout (a name or a token); everything else goes to stderr. Settings come from
QUAYMIRROR_* environment variables; none is needed for the embedded default (./instance)."""

# Commands that log while they run; the others report only through stdout, stderr and the exit code.
LONG_RUNNING = {"serve", "worker"}


class CliError(Exception):
    """An error for the user: printed on stderr, exit code 1, no traceback."""


class UsageError(Exception):
    """A command line argparse refuses: printed as one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (with where to find the usage) instead of the usage."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


@contextmanager
def _database(settings: Settings) -> Iterator:
    """The database for one command, disposed of afterwards."""
    from quaymirror import db

    db.ensure_embedded_schema(settings)
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


def _split(value: str, separator: str, usage: str) -> tuple[str, str]:
    """``NAMESPACE<separator>NAME`` as its two parts; ``usage`` is the error for anything else."""
    first, found, second = value.partition(separator)
    if not found or separator in second:
        raise CliError(usage)
    return first, second


def cmd_org_create(args, settings: Settings) -> None:
    from quaymirror.accounts import service as accounts

    with _database(settings) as database, database.transaction() as session:
        owner = _user(session, args.owner)
        _run_service(lambda: accounts.create_organization(session, args.name, owner))
    print(args.name)


def cmd_repo_create(args, settings: Settings) -> None:
    from quaymirror.repositories import service as repositories
    from quaymirror.repositories.models import RepositoryState

    namespace_name, name = _split(args.path, "/", "repository must be given as NAMESPACE/NAME")
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

    namespace_name, short = _split(args.name, "+", "robot must be given as NAMESPACE+SHORTNAME")
    with _database(settings) as database, database.transaction() as session:
        namespace = _user(session, namespace_name)
        _robot, token = _run_service(
            lambda: accounts.create_robot(session, SecretBox(settings.secret_key), namespace, short)
        )
    print(token)


def cmd_permission_grant(args, settings: Settings) -> None:
    from quaymirror.repositories import service as repositories

    namespace_name, name = _split(args.repository, "/", "repository must be given as NAMESPACE/NAME")
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
    from quaymirror import server

    if not args.no_worker:
        settings = settings.with_skopeo_resolved()
    try:
        listener = server.listen(args.host, args.port)
    except OSError as error:
        address = server.address(args.host, args.port)
        if error.errno == errno.EADDRINUSE:
            raise CliError(f"{address} is in use (another process listens there); choose another --port") from None
        # create_server's message repeats the address; getaddrinfo's errors (a name that does not resolve)
        # have negative numbers
        code = error.errno or 0
        reason = os.strerror(code) if code > 0 else (error.strerror or str(error))
        raise CliError(f"cannot listen on {address}: {reason}") from None
    server.serve(settings, listener, with_worker=not args.no_worker)


def cmd_worker(args, settings: Settings) -> None:
    from quaymirror.server import run_worker

    run_worker(settings.with_skopeo_resolved())


def port_number(raw: str) -> int:
    """argparse type of ``--port``: 0 (any free port, which the listening line names) to 65535."""
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a port number (0-65535)")
    return port


def _group(commands: Any, name: str, help: str, description: str) -> Any:
    """A command with subcommands (``quaymirror NAME COMMAND``); argparse's subparsers action."""
    return commands.add_parser(name, help=help, description=description).add_subparsers(
        dest="sub", required=True, metavar="COMMAND")


def _command(group: Any, name: str, help: str, description: str,
             func: Callable[[argparse.Namespace, Settings], None]) -> argparse.ArgumentParser:
    """A subcommand of ``group`` that runs ``func(args, settings)``; its arguments are added by the caller."""
    parser: argparse.ArgumentParser = group.add_parser(name, help=help, description=description)
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    from quaymirror.auth.scopes import ALL_SCOPES
    from quaymirror.repositories.models import ROLES, RepositoryState

    parser = _Parser(prog="quaymirror", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"quaymirror {version('quaymirror')}",
                        help="print the version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db_parser = commands.add_parser("db", help="database schema", description="The database schema.")
    db_commands = db_parser.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    db_commands.add_parser("upgrade", help="apply the migrations (PostgreSQL: before starting a new version)",
                           description="Apply the migrations up to this version's schema.",
                           ).set_defaults(func=cmd_db_upgrade)

    user_create = _command(_group(commands, "user", "users", "Users."), "create", "create a user",
                           "Create a user; prints its name.", cmd_user_create)
    user_create.add_argument("name", help="the user name")
    user_create.add_argument("--email", help="the user's e-mail address (default: none)")
    user_create.add_argument("--superuser", action="store_true", help="make the user a superuser (default: not)")

    org_create = _command(_group(commands, "org", "organizations", "Organizations."), "create",
                          "create an organization", "Create an organization; prints its name.", cmd_org_create)
    org_create.add_argument("name", help="the organization name")
    org_create.add_argument("--owner", required=True, metavar="USER",
                            help="the user who owns it (required: there is no default)")

    states = [state.name for state in (RepositoryState.NORMAL, RepositoryState.READ_ONLY, RepositoryState.MIRROR)]
    repo_create = _command(_group(commands, "repo", "repositories", "Repositories."), "create",
                           "create a repository", "Create a repository; prints NAMESPACE/NAME.", cmd_repo_create)
    repo_create.add_argument("path", metavar="NAMESPACE/NAME", help="the owning user or organization and the name")
    repo_create.add_argument("--state", choices=states, default=RepositoryState.NORMAL.name,
                             help="the repository's state: %(choices)s (default: %(default)s)")

    robot_create = _command(_group(commands, "robot", "robot accounts", "Robot accounts."), "create",
                            "create a robot and print its token", "Create a robot account; prints its token.",
                            cmd_robot_create)
    robot_create.add_argument("name", metavar="NAMESPACE+SHORT", help="the owning namespace and the robot's name")

    grant = _command(_group(commands, "permission", "repository permissions", "Repository permissions."), "grant",
                     "grant a role on a repository",
                     "Grant a user or robot a role on a repository (replacing its role).", cmd_permission_grant)
    grant.add_argument("user", metavar="USER_OR_ROBOT", help="the user, or the robot as NAMESPACE+SHORT")
    grant.add_argument("repository", metavar="NAMESPACE/NAME", help="the repository")
    grant.add_argument("role", choices=ROLES, help="the role: %(choices)s")

    token_create = _command(_group(commands, "token", "OAuth access tokens", "OAuth access tokens."), "create",
                            "create a token and print it", "Create an OAuth access token; prints it.",
                            cmd_token_create)
    token_create.add_argument("--user", required=True, help="the user or robot the token acts as (required)")
    token_create.add_argument("--scope", action="append", required=True,
                              help=f"a scope to grant, repeatable (required): {', '.join(ALL_SCOPES)}")
    token_create.add_argument("--expires-in", type=int, metavar="SECONDS",
                              help="seconds until the token expires (default: never)")

    serve = commands.add_parser("serve", help="run the API (and the worker) with gunicorn",
                                description="Run the API with gunicorn, with the mirror worker in its process "
                                            "unless --no-worker. Runs until SIGTERM or SIGINT.")
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=port_number, default=8080,
                       help="the port to listen on, 0 for any free one (default: %(default)s)")
    serve.add_argument("--no-worker", action="store_true",
                       help="run the API only, in QUAYMIRROR_API_WORKERS processes (default: API and worker)")
    serve.set_defaults(func=cmd_serve)

    worker = commands.add_parser("worker", help="run the mirror worker alone",
                                 description="Run the mirror worker alone, until SIGTERM or SIGINT.")
    worker.set_defaults(func=cmd_worker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (2 for usage and setting errors, 1 for other errors)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help and --version, already printed
        return exit_.code if isinstance(exit_.code, int) else 2
    except UsageError as error:
        print(f"quaymirror: error: {error}", file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env()
        if args.command in LONG_RUNNING:
            from quaymirror.server import configure_logging

            configure_logging(settings.log_level)
        args.func(args, settings)
    except SettingsError as error:  # from the environment, or one only the command needs, found at its start
        print(f"quaymirror: error: {error}", file=sys.stderr)
        return 2
    except CliError as error:
        print(f"quaymirror: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # a database that is down, an instance folder that cannot be created, ...
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(error, SQLAlchemyError | OSError):
            first_line = (str(error).splitlines() or [""])[0]
            print(f"quaymirror: error: {type(error).__name__}: {first_line}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
