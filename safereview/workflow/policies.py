"""Who may do what: roles annotator < lead < admin and the minimum role per action.

Every service function that needs a role calls :func:`require` itself, so access control
holds whatever the UI shows or hides.
"""

from __future__ import annotations

from typing import Any

from safereview.workflow.errors import Forbidden, InvalidInput
from safereview.workflow.principals import SystemPrincipal

ROLES: tuple[str, ...] = ("annotator", "lead", "admin")
ROLE_RANK: dict[str, int] = {r: i for i, r in enumerate(ROLES)}

ACTIONS: dict[str, str] = {
    "review": "annotator",
    "view_own_history": "annotator",
    "set_own_preferences": "annotator",
    "view_others_labels": "lead",
    "adjudicate": "lead",
    "audit": "lead",
    "view_agreement": "lead",
    "calibrate": "lead",
    "export": "lead",
    "tag_errors": "lead",
    "view_queue_status": "lead",
    "set_review_defaults": "lead",  # media protection, break reminders, reveal reason of a collection
    "import": "admin",
    "judge": "admin",
    "manage_users": "admin",
    "manage_collections": "admin",
}
# Actions only a person's account can take: a review, an adjudication or an error tag is
# someone's decision and is stored under their user id; the system principal is refused them.
PERSONAL_ACTIONS: frozenset[str] = frozenset(
    {"review", "view_own_history", "set_own_preferences", "adjudicate", "tag_errors"}
)


def role_rank(role: str) -> int:
    """Rank of a role; unknown roles rank below every real one (deny by default)."""
    return ROLE_RANK.get(role, -1)


def can(user: Any, action: str) -> bool:
    """True when ``user`` (anything with ``role`` and ``disabled``) may perform ``action``.

    Unknown actions, unknown roles, disabled users and ``None`` (signed out) are all denied;
    a :class:`SystemPrincipal` (the trusted command line) may do every known action.
    """
    if user is None or getattr(user, "disabled", False):
        return False
    minimum = ACTIONS.get(action)
    if minimum is None:
        return False
    if isinstance(user, SystemPrincipal):
        return action not in PERSONAL_ACTIONS
    return role_rank(getattr(user, "role", "")) >= ROLE_RANK[minimum]


def require(user: Any, action: str) -> None:
    """Raise :class:`Forbidden` unless ``user`` may perform ``action``."""
    if action not in ACTIONS:
        raise Forbidden(f"unknown action {action!r}")
    if not can(user, action):
        raise Forbidden(f"your role may not {action.replace('_', ' ')}")


def validate_role(role: str) -> str:
    """Return ``role`` if it is one of :data:`ROLES`, else raise InvalidInput naming them."""
    if role not in ROLE_RANK:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return role
