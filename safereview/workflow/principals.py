"""Who acts: a signed-in :class:`~safereview.db.models.User`, or a named trusted system caller.

The command line acts as a :class:`SystemPrincipal`: whoever runs it can already open the
database, so the policy lets it do every action. It is named (``cli:<OS user>``) so that the
rows it writes say who acted; ``None`` always means signed out and is refused everywhere.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass


@dataclass(frozen=True)
class SystemPrincipal:
    """A trusted caller that is not a person's account (the CLI, the demo builder, a migration)."""

    name: str
    role: str = "system"
    disabled: bool = False
    id: None = None  # no user row: never matched as the owner of an annotation or assignment

    @property
    def username(self) -> str:
        """What ``created_by`` columns and logs record for this caller."""
        return self.name


def cli_principal() -> SystemPrincipal:
    """The principal of this command-line process: ``cli:<OS user>``."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        who = "unknown"
    return SystemPrincipal(f"cli:{who}")


def is_system(actor: object) -> bool:
    return isinstance(actor, SystemPrincipal)
