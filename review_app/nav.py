"""Which pages exist and who sees them: the single registry ``main.py`` builds navigation from.

A page is a script in ``review_app/views/``; it is registered for a user when
``workflow.policies.can(user, action)`` holds. Each page still checks its own policy at the
top (``ui.require(action)``), so hiding a page is never the only guard.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safereview.workflow import policies

VIEWS_DIR = Path(__file__).resolve().parent / "views"


@dataclass(frozen=True)
class PageSpec:
    file: str  # under review_app/views/
    title: str
    icon: str
    action: str  # workflow.policies action the page needs
    section: str
    default: bool = False


PAGES: tuple[PageSpec, ...] = (
    PageSpec("review.py", "Review", ":material/rate_review:", "review", "Review", default=True),
    PageSpec("history.py", "My history", ":material/history:", "view_own_history", "Review"),
    PageSpec("queue_status.py", "Queue status", ":material/monitoring:", "view_queue_status", "Lead"),
    PageSpec("agreement.py", "Agreement", ":material/groups:", "view_agreement", "Lead"),
    PageSpec("audit.py", "Judge audit", ":material/fact_check:", "audit", "Lead"),
    PageSpec("calibration.py", "Calibration", ":material/tune:", "calibrate", "Lead"),
    PageSpec("gold.py", "Gold & adjudication", ":material/verified:", "adjudicate", "Lead"),
    PageSpec("users.py", "Users", ":material/manage_accounts:", "manage_users", "Admin"),
    PageSpec("collections.py", "Collections", ":material/folder_managed:", "manage_collections", "Admin"),
    PageSpec("import_data.py", "Import", ":material/upload_file:", "import", "Admin"),
)


# Streamlit serves the landing page at "/" and keys pages by their URL name, so the landing
# page is registered under this key and its own name (/review, /queue_status) goes to a hidden
# alias that switches to it: without one, a shared link to a person's landing page opened on a
# "Page not found" dialog.
HOME_KEY = "home"


def url_name(spec: PageSpec) -> str:
    """The page's name in URLs (``/agreement``): its script's name."""
    return Path(spec.file).stem


def refused_page(user: Any, url_path: str) -> PageSpec | None:
    """The page a URL names when this user may not open it (e.g. an annotator following a lead's
    link to /agreement), so the app can say why it shows another page instead."""
    name = url_path.strip("/").rsplit("/", 1)[-1]
    allowed = {p.file for p in pages_for(user)}
    for spec in PAGES:
        if url_name(spec) == name and spec.file not in allowed:
            return spec
    return None


def home_for(user: Any) -> str:
    """The page a user lands on: Review for annotators; Queue status for leads and admins, so
    opening the app to audit or manage never leases a review item (they open Review to review)."""
    pages = pages_for(user)
    for spec in pages:
        if spec.action == "view_queue_status":
            return spec.file
    return next((p.file for p in pages if p.default), pages[0].file if pages else "review.py")


def pages_for(user: Any) -> list[PageSpec]:
    """Pages this user may open, in menu order."""
    return [p for p in PAGES if policies.can(user, p.action)]
