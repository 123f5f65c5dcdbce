"""Stable judge ids: the same protocol, model, prompt version and parameters → the same id.

The id is stored on every verdict, so a re-run with the same configuration resumes and a
changed prompt or parameter starts a new, separately comparable judge instead of mixing
labels from two different judges under one name.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from sqlmodel import Session

from safereview.db.models import JudgeConfig

MAX_ID = 80


def judge_id(protocol: str, model: str, prompt_version: str, params: dict[str, Any] | None = None) -> str:
    """``<protocol>:<model>:<8 hex>`` where the hex is a hash of everything that matters."""
    canonical = json.dumps(
        {"protocol": protocol, "model": model, "prompt_version": prompt_version, "params": params or {}},
        sort_keys=True,
        separators=(",", ":"),
    )
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:8]
    short_model = re.sub(r"[^A-Za-z0-9._/@+-]", "_", model) or "model"
    room = MAX_ID - len(protocol) - len(digest) - 2
    if len(short_model) > room:
        short_model = short_model[: max(room - 1, 1)] + "~"
    return f"{protocol}:{short_model}:{digest}"


def ensure_judge_config(
    session: Session,
    protocol: str,
    model: str,
    prompt_version: str,
    params: dict[str, Any] | None = None,
    *,
    jid: str | None = None,
) -> JudgeConfig:
    """Store the configuration row once (idempotent) and return it."""
    jid = jid or judge_id(protocol, model, prompt_version, params)
    row = session.get(JudgeConfig, jid)
    if row is None:
        row = JudgeConfig(id=jid, protocol=protocol, model=model, prompt_version=prompt_version, params=params or {})
        session.add(row)
        session.flush()
    return row
