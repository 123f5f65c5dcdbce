"""The review workbench's keyboard glue, served as a same-origin script (the CSP allows no inline code).

Streamlit's button shortcuts cover labels, submit, flag, skip, undo and reveal; they are
ignored while a text field or select has focus. This script adds what they cannot do:

- ``N`` puts the cursor in the rationale box (``[class*=st-key-rv_rationale_]``), and the
  reason box after a reveal when it is shown;
- ``Escape`` leaves any text field or select, so the label keys work again;
- picking a collection (any single select in the sidebar) hands the keyboard back to the
  review panel instead of leaving focus in the select, where label keys would type.

It is idempotent (Streamlit may insert it again on a rerun) and touches nothing but focus.
"""

from __future__ import annotations

SCRIPT = r"""
(() => {
  if (window.__safereviewKeys) return;
  window.__safereviewKeys = true;
  const doc = document;
  const typing = (el) => !!el && (el.tagName === "TEXTAREA" || el.isContentEditable ||
    (el.tagName === "INPUT" && !["checkbox", "radio", "button", "range"].includes(el.type)));
  const sidebarSelect = (el) => !!el && !!el.closest &&
    !!el.closest('[data-testid="stSidebar"] [data-testid="stSelectbox"]');
  const release = () => setTimeout(() => {
    const a = doc.activeElement;
    if (sidebarSelect(a)) a.blur();
  }, 60);
  doc.addEventListener("keydown", (e) => {
    const a = doc.activeElement;
    if (e.key === "Escape" && typing(a)) { a.blur(); return; }
    if (e.key === "Enter" && sidebarSelect(a)) { release(); return; }
    if (e.ctrlKey || e.metaKey || e.altKey || typing(a)) return;
    if (e.key === "n" || e.key === "N") {
      const box = doc.querySelector('[class*="st-key-rv_reason_"] input, [class*="st-key-rv_reason_"] textarea') ||
        doc.querySelector('[class*="st-key-rv_rationale_"] textarea');
      if (box) { e.preventDefault(); e.stopImmediatePropagation(); box.focus(); }
    }
  }, true);
  doc.addEventListener("click", (e) => {
    const t = e.target;
    if (t && t.closest && t.closest('[role="option"]')) release();
  }, true);
})();
"""
