"""Entry script of the review app: sign-in gate, then navigation built for the user's role."""

from __future__ import annotations

import streamlit as st

from safereview.review_app import nav, ui

st.set_page_config(page_title="safereview", page_icon=ui.favicon(), layout="wide", initial_sidebar_state="expanded")
ui.page_style()

user = ui.current_user()
if user is None:
    from safereview.review_app.views import sign_in

    page = st.navigation(
        [st.Page(sign_in.render, title="Sign in", icon=":material/login:", url_path="signin", default=True)],
        position="hidden",
    )
    ui.cookie_bridge()
    page.run()
    st.stop()

sections: dict[str, list[st.Page]] = {}
home = nav.home_for(user)
for spec in nav.pages_for(user):
    is_home = spec.file == home
    built = st.Page(
        f"views/{spec.file}",
        title=spec.title,
        icon=spec.icon,
        default=is_home,
        url_path=nav.HOME_KEY if is_home else None,  # frees the page's own name for the alias below
    )
    sections.setdefault(spec.section, []).append(built)
    if is_home:  # the landing page is served at "/"; a link by its name (/review) must land there too
        sections[spec.section].append(
            st.Page(
                lambda target=built: st.switch_page(target),
                title=spec.title,
                url_path=nav.url_name(spec),
                visibility="hidden",
            )
        )
page = st.navigation(sections)
refused = nav.refused_page(user, ui.requested_path())
if refused is not None:
    st.warning(
        f"{refused.title} is not open to your role ({user.role}); here is {page.title} instead.",
        icon=":material/lock:",
    )

with st.sidebar:
    ui.cookie_bridge()
    ui.keyboard_glue()
ui.wait_for_cookie()
with st.sidebar:
    st.caption(f"Signed in as **{ui.md_literal(user.display_name or user.username)}** · {user.role}")
    if st.button("Sign out", icon=":material/logout:", key="sign_out", type="tertiary"):
        ui.sign_out()
        st.rerun()

page.run()
