"""Every role × action, written out by hand so a change to the policy table must be deliberate."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from safereview.workflow.errors import Forbidden
from safereview.workflow.policies import ACTIONS, can, require

EXPECTED = {  # action: (annotator, lead, admin)
    "review": (True, True, True),
    "view_own_history": (True, True, True),
    "set_own_preferences": (True, True, True),
    "view_others_labels": (False, True, True),
    "adjudicate": (False, True, True),
    "audit": (False, True, True),
    "view_agreement": (False, True, True),
    "calibrate": (False, True, True),
    "export": (False, True, True),
    "tag_errors": (False, True, True),
    "view_queue_status": (False, True, True),
    "set_review_defaults": (False, True, True),
    "import": (False, False, True),
    "judge": (False, False, True),
    "manage_users": (False, False, True),
    "manage_collections": (False, False, True),
}
ROLES = ("annotator", "lead", "admin")


def test_policy_table_covers_exactly_the_expected_actions() -> None:
    assert set(ACTIONS) == set(EXPECTED)


@pytest.mark.parametrize("action", sorted(EXPECTED))
@pytest.mark.parametrize("role_index", range(3), ids=ROLES)
def test_role_action(action: str, role_index: int) -> None:
    user = SimpleNamespace(role=ROLES[role_index], disabled=False)
    allowed = EXPECTED[action][role_index]
    assert can(user, action) is allowed
    if allowed:
        require(user, action)
    else:
        with pytest.raises(Forbidden):
            require(user, action)


@pytest.mark.parametrize("action", sorted(EXPECTED))
def test_disabled_and_unknown_roles_are_denied(action: str) -> None:
    assert not can(SimpleNamespace(role="admin", disabled=True), action)
    assert not can(SimpleNamespace(role="superuser", disabled=False), action)
    assert not can(None, action)


def test_unknown_action_is_denied_even_for_admin() -> None:
    admin = SimpleNamespace(role="admin", disabled=False)
    assert not can(admin, "drop_database")
    with pytest.raises(Forbidden):
        require(admin, "drop_database")


@pytest.mark.parametrize("action", sorted(EXPECTED))
def test_the_system_principal_may_do_everything_but_a_persons_own_work(action: str) -> None:
    from safereview.workflow.policies import PERSONAL_ACTIONS
    from safereview.workflow.principals import SystemPrincipal, cli_principal

    system = SystemPrincipal("test")
    assert can(system, action) is (action not in PERSONAL_ACTIONS)
    assert not can(SystemPrincipal("test", disabled=True), action)
    assert cli_principal().username.startswith("cli:")
    with pytest.raises(Forbidden):  # None is always "signed out", never the trusted CLI
        require(None, action)
