"""Judge ids are stable, short and change exactly when what determines the answers changes."""

from __future__ import annotations

import re

import sqlalchemy as sa
from sqlmodel import Session

from safereview.db.engine import init_db
from safereview.db.models import JudgeConfig
from safereview.judge.config import ensure_judge_config, judge_id
from safereview.judge.protocols.uni_judger import PROMPT_VERSION as UJ_VERSION
from safereview.judge.protocols.vlsu import PROMPT_VERSION as VLSU_VERSION
from safereview.judge.runner import RunOptions, params_for


def test_judge_id_is_stable_and_sensitive() -> None:
    params = {"temperature": 0.0, "max_image_side": 1536}
    a = judge_id("uni-judger", "Qwen/Qwen2.5-VL-7B-Instruct", UJ_VERSION, params)
    assert a == judge_id("uni-judger", "Qwen/Qwen2.5-VL-7B-Instruct", UJ_VERSION, dict(reversed(params.items())))
    assert re.fullmatch(r"uni-judger:Qwen/Qwen2\.5-VL-7B-Instruct:[0-9a-f]{8}", a)
    others = {
        judge_id("vlsu", "Qwen/Qwen2.5-VL-7B-Instruct", VLSU_VERSION, params),
        judge_id("uni-judger", "Qwen/Qwen2.5-VL-72B-Instruct", UJ_VERSION, params),
        judge_id("uni-judger", "Qwen/Qwen2.5-VL-7B-Instruct", UJ_VERSION + "x", params),
        judge_id("uni-judger", "Qwen/Qwen2.5-VL-7B-Instruct", UJ_VERSION, {**params, "max_image_side": 768}),
    }
    assert a not in others and len(others) == 4


def test_judge_id_survives_odd_model_names() -> None:
    jid = judge_id("uni-judger", "llava:13b q4 (local)", "v1")
    assert jid.count(":") == 2 and " " not in jid  # the colon stays a separator
    long = judge_id("uni-judger", "x" * 300, "v1")
    assert len(long) <= 80 and long.endswith(long.rsplit(":", 1)[1]) and "~" in long


def test_run_options_that_do_not_change_answers_do_not_change_the_id() -> None:
    base = RunOptions(protocol="uni-judger", base_url="http://a", model="m")
    other = RunOptions(
        protocol="uni-judger", base_url="http://b", model="m", concurrency=99, timeout=3, logprobs=True, max_retries=0
    )
    assert params_for(base) == params_for(other)
    assert params_for(base) != params_for(
        RunOptions(protocol="uni-judger", base_url="x", model="m", max_image_side=512)
    )
    assert params_for(base) != params_for(RunOptions(protocol="uni-judger", base_url="x", model="m", max_tokens=4096))


def test_config_row_is_stored_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = init_db(f"sqlite:///{tmp_path / 'c.db'}")
    for _ in range(2):
        with Session(engine) as s:
            jid = ensure_judge_config(s, "vlsu", "m", VLSU_VERSION, {"temperature": 0.0}).id
            s.commit()
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(JudgeConfig)).scalar_one() == 1
    assert jid.startswith("vlsu:m:")
