"""Sign-in form: username and password checked by ``workflow.auth`` (rate-limited there)."""

from __future__ import annotations

import time

import streamlit as st

from safereview.review_app import ui

FAILED_SIGNIN_PAUSE_S = 1.0


def _pause(seconds: float) -> None:
    time.sleep(seconds)


def render() -> None:
    from safereview.workflow import auth
    from safereview.workflow.errors import AuthError

    _left, mid, _right = st.columns([1, 1.2, 1])
    with mid:
        st.title("safereview")
        st.caption("Human review of multimodal AI-safety judgments")
        with st.form("sign_in_form", border=True):
            username = st.text_input("Username", key="signin_username", autocomplete="username")
            password = st.text_input(
                "Password", type="password", key="signin_password", autocomplete="current-password"
            )
            submitted = st.form_submit_button("Sign in", type="primary", icon=":material/login:", width="stretch")
        if submitted:
            try:
                user = auth.authenticate_and_record(ui.get_engine(), username, password, address=ui.client_address())
            except AuthError as exc:
                # A failed attempt answers after a pause: this browser session's script thread waits
                # (no CPU), so one connection cannot drive sign-in faster than one try a second.
                _pause(FAILED_SIGNIN_PAUSE_S)
                st.error(ui.md_literal(str(exc)), icon=":material/lock:")
                return
            with ui.session() as s:
                token = auth.start_session(s, user, config=ui.config())
            ui.sign_in(user, token)
            st.rerun()
