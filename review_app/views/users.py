"""Users (admins): add, disable/enable, reset password, change role."""

from __future__ import annotations

import streamlit as st

from safereview.review_app import ui


def page() -> None:
    from safereview.workflow import auth, policies
    from safereview.workflow.errors import WorkflowError

    user = ui.require("manage_users")
    st.subheader("Users")
    with ui.session() as s:
        users = auth.list_users(s, actor=user)
        rows = [
            {
                "username": u.username,
                "name": u.display_name,
                "role": u.role,
                "disabled": u.disabled,
                "last sign-in": u.last_login_at,
                "created": u.created_at,
            }
            for u in users
        ]
    minute = "YYYY-MM-DD HH:mm"  # to the minute, in UTC as stored (seconds and "+00:00" crowded the column out)
    st.dataframe(
        rows,
        hide_index=True,
        width="stretch",
        column_config={
            "last sign-in": st.column_config.DatetimeColumn("last sign-in (UTC)", format=minute),
            "created": st.column_config.DatetimeColumn("created (UTC)", format=minute),
        },
    )
    names = [r["username"] for r in rows]

    add, manage = st.columns(2, gap="large")
    if st.session_state.pop("users_add_done", False):  # cleared only after a user was added
        for key in ("ua_username", "ua_display", "ua_role", "ua_password"):
            st.session_state.pop(key, None)
    # not clear_on_submit: a refused form (a taken name, a short password) keeps what was typed
    with add, st.form("user_add", border=True):
        st.markdown("**Add a user**")
        username = st.text_input("Username", max_chars=80, key="ua_username")
        display = st.text_input("Display name", max_chars=200, key="ua_display")
        role = st.selectbox("Role", policies.ROLES, key="ua_role")
        password = st.text_input("Initial password", type="password", help="At least 8 characters.", key="ua_password")
        if st.form_submit_button("Add user", type="primary", icon=":material/person_add:"):
            try:
                policies.require(user, "manage_users")
                with ui.session() as s:
                    auth.create_user(s, username, password, role, display_name=display, actor=user)
                st.session_state["users_msg"] = f"Added {username}."
                st.session_state["users_add_done"] = True
                st.rerun()
            except (WorkflowError, ValueError) as exc:
                st.error(ui.md_literal(str(exc), max_chars=300))
    with manage, st.container(border=True):
        st.markdown("**Change a user**")
        target = st.selectbox("User", names, format_func=ui.plain, key="users_target")
        if target:
            current = next(r for r in rows if r["username"] == target)
            c1, c2 = st.columns(2)
            new_role = c1.selectbox(
                "Role",
                policies.ROLES,
                index=policies.ROLES.index(current["role"]) if current["role"] in policies.ROLES else 0,
                key=f"users_role_{target}",
            )
            if c2.button("Set role", key="users_set_role", width="stretch"):
                try:
                    with ui.session() as s:
                        auth.set_role(s, target, new_role, actor=user)
                    st.session_state["users_msg"] = f"{target} is now {new_role}; their sessions were ended."
                    st.rerun()
                except (WorkflowError, ValueError) as exc:
                    st.error(ui.md_literal(str(exc), max_chars=300))
            label = "Enable" if current["disabled"] else "Disable"
            if st.button(f"{label} this user", key="users_toggle", icon=":material/block:"):
                try:
                    with ui.session() as s:
                        auth.set_disabled(s, target, not current["disabled"], actor=user)
                    st.session_state["users_msg"] = f"{target} {'enabled' if current['disabled'] else 'disabled'}."
                    st.rerun()
                except WorkflowError as exc:
                    st.error(ui.md_literal(str(exc), max_chars=300))
            with st.form("users_reset", border=False, clear_on_submit=True):
                new_pw = st.text_input("New password", type="password", key="users_new_pw")
                if st.form_submit_button("Reset password", icon=":material/key:"):
                    try:
                        with ui.session() as s:
                            auth.reset_password(s, target, new_pw, actor=user)
                        st.session_state["users_msg"] = f"Password of {target} reset; their sessions were ended."
                        st.rerun()
                    except WorkflowError as exc:
                        st.error(ui.md_literal(str(exc), max_chars=300))
    msg = st.session_state.pop("users_msg", None)
    if msg:
        st.toast(ui.md_literal(msg, max_chars=200), icon=":material/check:")


page()
