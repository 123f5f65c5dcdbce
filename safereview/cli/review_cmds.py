"""``safereview users ...`` (add, list, disable, enable, reset-password, set-role) and
``safereview queue status``: accounts and review progress.

Whoever runs these commands controls the database already, so they act without a signed-in
user; the same functions called from the app check the signed-in user's role.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from safereview.cli.common import DbOption, config, console, engine_for, err_console, principal

RoleOption = Annotated[str, typer.Option("--role", help="annotator, lead or admin.")]
PasswordStdinOption = Annotated[
    bool,
    typer.Option(
        "--password-stdin",
        help="Read the password from the first line of standard input instead of prompting (for scripts).",
    ),
]
DisplayNameOption = Annotated[str, typer.Option("--display-name", help="Name shown in the app (default: none).")]


def _password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


def _fail(msg: str) -> None:
    err_console.print(f"error: {msg}", highlight=False)
    raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    users = typer.Typer(help="Manage reviewer accounts (annotator, lead, admin).", no_args_is_help=True)
    queue = typer.Typer(help="Review queue status.", no_args_is_help=True)
    app.add_typer(users, name="users")
    app.add_typer(queue, name="queue")

    @users.command("add")
    def users_add(
        username: Annotated[str, typer.Argument(help="Sign-in name (at most 80 characters).")],
        role: RoleOption = "annotator",
        password_stdin: PasswordStdinOption = False,
        display_name: DisplayNameOption = "",
        db: DbOption = None,
    ) -> None:
        """Create a user with a password (prompted, or read with --password-stdin)."""
        from safereview.db.engine import session_scope
        from safereview.workflow.auth import create_user
        from safereview.workflow.errors import WorkflowError

        password = _password(password_stdin)
        try:
            with session_scope(engine_for(config(db))) as s:
                user = create_user(s, username, password, role, display_name, actor=principal())
                name, urole = user.username, user.role
        except WorkflowError as exc:
            _fail(str(exc))
        console.print(f"created {urole} {name!r}", highlight=False)

    @users.command("list")
    def users_list(db: DbOption = None) -> None:
        """List users with role, status and last sign-in."""
        from rich.table import Table
        from rich.text import Text

        from safereview.db.engine import session_scope
        from safereview.workflow.auth import has_usable_password, list_users

        table = Table("username", "role", "status", "display name", "last sign-in")
        with session_scope(engine_for(config(db))) as s:
            for u in list_users(s, actor=principal()):
                status = "disabled" if u.disabled else ("active" if has_usable_password(u) else "no password")
                table.add_row(
                    Text(u.username),
                    u.role,
                    status,
                    Text(u.display_name),
                    u.last_login_at.strftime("%Y-%m-%d %H:%M") if u.last_login_at else "",
                )
        for col in table.columns:
            col.no_wrap = False
        console.print(table, highlight=False)

    def _change_user(db: str | None, change: Callable[[Any], object], done: str) -> None:
        """Run one account change in its own transaction; a refused change prints why and exits 1."""
        from safereview.db.engine import session_scope
        from safereview.workflow.errors import WorkflowError

        try:
            with session_scope(engine_for(config(db))) as s:
                change(s)
        except WorkflowError as exc:
            _fail(str(exc))
        console.print(done, highlight=False)

    def _set_disabled(username: str, disabled: bool, db: str | None) -> None:
        from safereview.workflow.auth import set_disabled

        _change_user(
            db,
            lambda s: set_disabled(s, username, disabled, actor=principal()),
            f"{'disabled' if disabled else 'enabled'} {username!r}",
        )

    @users.command("disable")
    def users_disable(username: Annotated[str, typer.Argument(help="User to disable.")], db: DbOption = None) -> None:
        """Disable a user and sign them out everywhere (their labels stay)."""
        _set_disabled(username, True, db)

    @users.command("enable")
    def users_enable(username: Annotated[str, typer.Argument(help="User to enable.")], db: DbOption = None) -> None:
        """Re-enable a disabled user."""
        _set_disabled(username, False, db)

    @users.command("reset-password")
    def users_reset(
        username: Annotated[str, typer.Argument(help="User whose password to set.")],
        password_stdin: PasswordStdinOption = False,
        db: DbOption = None,
    ) -> None:
        """Set a new password (also for imported users, who have none), sign the user out, lift a lock-out."""
        from safereview.workflow.auth import reset_password

        password = _password(password_stdin)
        _change_user(
            db, lambda s: reset_password(s, username, password, actor=principal()), f"password of {username!r} reset"
        )

    @users.command("set-role")
    def users_set_role(
        username: Annotated[str, typer.Argument(help="User whose role to change.")],
        role: Annotated[str, typer.Argument(help="annotator, lead or admin.")],
        db: DbOption = None,
    ) -> None:
        """Change a user's role; they are signed out everywhere so the new role applies at once."""
        from safereview.workflow.auth import set_role

        _change_user(db, lambda s: set_role(s, username, role, actor=principal()), f"{username!r} is now {role}")

    @queue.command("status")
    def queue_status_cmd(
        collection: Annotated[str, typer.Option("--collection", "-c", help="Collection name.")], db: DbOption = None
    ) -> None:
        """Show review progress of a collection: slots done and leased, items fully covered, per reviewer."""
        from rich.table import Table
        from rich.text import Text

        from safereview.db.engine import session_scope
        from safereview.workflow.collections import get_collection
        from safereview.workflow.errors import NotFound as CollectionNotFound
        from safereview.workflow.progress import queue_status

        try:
            with session_scope(engine_for(config(db))) as s:
                col = get_collection(s, collection)
                st = queue_status(s, principal(), col.id)  # type: ignore[arg-type]
        except CollectionNotFound as exc:
            _fail(str(exc))
        p = st["progress"]
        pct = f"{100 * p.fraction_done:.1f}%"
        console.print(
            f"{collection}: {p.n_items} items × {p.overlap_target} = {p.slots_total} slots; "
            f"{p.everyone_done} done ({pct}), {p.slots_leased} leased, {p.items_fully_covered} items fully covered; "
            "done: "
            + ", ".join(f"{k.removeprefix('done_')} {v}" for k, v in sorted(p.extra.items()) if k.startswith("done_")),
            highlight=False,
        )
        kinds = ("done", "not confirmed", "leased", "skipped", "released")
        table = Table("reviewer", *kinds)
        for name, counts in st["per_user"].items():
            table.add_row(Text(name), *(str(counts.get(k, 0)) for k in kinds))
        console.print(table, highlight=False)
