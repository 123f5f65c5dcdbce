"""``run_judge``: judge every item of a collection that lacks a verdict, resumably.

Items are processed by ``concurrency`` workers per server (``ChatClient`` spreads their
requests over the servers and fails over between them); finished verdicts (and new cache entries)
are committed in small batches, so a run killed at any moment loses at most one batch and
the next run skips every (item, dimension, judge) that already has a finished verdict
(status ok, rule or unparseable; errors are retried).
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from safereview.db.engine import read_only, session_scope
from safereview.db.models import Collection, Item, Media
from safereview.db.taxonomy import dimension_names
from safereview.judge.client import ChatClient, MediaEncoder, MediaError, MediaRef, ResponseCache, ServersSilent
from safereview.judge.config import ensure_judge_config, judge_id
from safereview.judge.protocols import get_protocol
from safereview.judge.protocols.base import Answer, Draft, ItemView, JudgeContext
from safereview.judge.store import cache_get, cache_put_many, missing_work, write_verdicts
from safereview.wording import count, noun
from safereview.workflow.policies import require

DRY_RUN_INTENT = "<dry run: the intent-extraction answer goes here>"


class JudgeSetupError(ValueError):
    """The run cannot start (unknown protocol, collection without the protocol's dimensions)."""


@dataclass
class RunOptions:
    """Everything ``safereview judge`` can set (see ``docs/judge.md``)."""

    protocol: str
    base_url: str | list[str]  # one server, or several to spread the requests over (not part of the judge id)
    model: str
    collection: str | None = None
    protocol_file: Path | None = None  # the judge template, for protocol "template"
    concurrency: int = 8  # per server
    limit: int | None = None
    timeout: float = 120.0
    max_retries: int = 5
    logprobs: bool = False
    api_key: str = ""
    dry_run: bool = False
    cache: bool = True
    batch_size: int = 10
    flush_seconds: float = 2.0
    max_image_side: int = 1536
    max_tokens: int | None = None
    structured: bool = False  # constrain verdict answers to JSON (judge.structured)
    backoff_base: float = 1.0
    give_up_after: float = 300.0  # stop when no server has answered for this long (0: never)
    progress: bool = True

    @property
    def base_urls(self) -> list[str]:
        return [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)


@dataclass
class RunSummary:
    judge_id: str
    items: int = 0  # items judged in this run
    skipped: int = 0  # items that already had every verdict
    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    verdicts: int = 0
    ok: int = 0
    rule: int = 0
    unparseable: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    logprobs_asked: bool = False
    with_probability: int = 0  # verdicts with a probability (from log-probabilities or a stated one)
    error_reasons: dict[str, int] = field(default_factory=dict)  # why verdicts failed, most common first
    structured: str = ""  # --structured: the response_format shape the server took (json_schema | json_object | off)
    structured_refused: list[str] = field(default_factory=list)  # shapes the server refused, with its answer
    servers: list[dict[str, Any]] = field(default_factory=list)  # per server: client.ServerStats.as_dict()
    requests: list[dict[str, Any]] = field(default_factory=list)  # dry run only
    # why the run stopped before its end ("" when it finished): every server silent too long
    stopped: str = ""

    @property
    def notes(self) -> list[str]:
        """What the run summary must say in words (a table of counts hides it)."""
        out = []
        if self.logprobs_asked and self.ok and not self.with_probability:
            out.append(
                "the server returned no usable log-probabilities: no verdict has a probability, so calibration "
                "and the queue's borderline order fall back to the labels (check the server supports logprobs)"
            )
        for reason, n in sorted(self.error_reasons.items(), key=lambda kv: -kv[1])[:5]:
            out.append(f"{count(n, 'verdict')} failed: {reason}")
        if len(self.servers) > 1:
            for srv in self.servers:
                if srv["backed_off"]:
                    out.append(
                        f"server {srv['url']} was backed off at the end ({count(srv['failed'], 'failed attempt')}, "
                        f"{srv['answered']} answered): the other servers took its requests"
                    )
        if self.structured:
            refused = "; ".join(self.structured_refused)
            out.append(
                f"structured answers: response_format {self.structured}"
                + (f" (the server refused: {refused})" if refused else "")
                + (
                    " -- no shape was accepted, so answers were only asked for as JSON"
                    if self.structured == "off"
                    else ""
                )
            )
        return out

    @property
    def parse_rate(self) -> float | None:
        """Share of the model's verdicts that parsed (ok of ok + unparseable); None without any."""
        asked = self.ok + self.unparseable
        return self.ok / asked if asked else None

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("requests")
        d["notes"] = self.notes
        d["parse_rate"] = self.parse_rate
        return d


class DbCache(ResponseCache):
    """Reads hit the database; writes wait in memory and are committed with the next batch."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.pending: dict[str, dict[str, Any]] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        if key in self.pending:
            return self.pending[key]
        with Session(self.engine) as s:
            return cache_get(s, key)

    def put(self, key: str, response: dict[str, Any]) -> None:
        self.pending[key] = response


def params_for(opts: RunOptions) -> dict[str, Any]:
    """Parameters that can change a judge's answers, hence part of its id."""
    params: dict[str, Any] = {"temperature": 0.0, "max_image_side": opts.max_image_side}
    if opts.max_tokens is not None:
        params["max_tokens"] = opts.max_tokens
    if opts.structured:  # another question (JSON asked for) and constrained decoding: another judge
        params["structured"] = True
    return params


LOAD_CHUNK = 256  # items read from the database per query while judging


def load_views(
    engine: Engine, chunk: list[tuple[int, tuple[str, ...]]], refs: dict[str, MediaRef]
) -> list[tuple[ItemView, tuple[str, ...]]]:
    """The items of ``chunk`` as protocol views (in chunk order), their media added to ``refs``."""
    with Session(read_only(engine)) as s:  # reads only: no SQLite write lock while reviewers submit
        items = {i.id: i for i in s.exec(select(Item).where(Item.id.in_([iid for iid, _ in chunk]))).all()}  # type: ignore[union-attr]
        out = [(_view(items[iid]), missing) for iid, missing in chunk if iid in items]
        shas = sorted({str(p["media"]) for v, _ in out for p in [*v.prompt, *v.response] if p.get("media")} - set(refs))
        for i in range(0, len(shas), 500):
            for m in s.exec(select(Media).where(Media.sha256.in_(shas[i : i + 500]))).all():  # type: ignore[attr-defined]
                refs[m.sha256] = MediaRef(m.sha256, m.kind, m.mime, m.relpath)
    return out


def _view(item: Item) -> ItemView:
    return ItemView(
        id=item.id or 0,
        external_id=item.external_id,
        task_type=item.task_type,
        category=item.category,
        subcategory=item.subcategory,
        prompt=list(item.prompt or []),
        response=list(item.response or []),
        refused=bool(item.refused),
        output_modalities=item.output_modalities,
    )


def _collections(
    session: Session, name: str | None, dims: tuple[str, ...], check: Callable[[dict[str, Any]], None] | None = None
) -> list[Collection]:
    """The named collection (checked against the protocol) or every compatible one.

    ``check(taxonomy)`` (a judge template's) raises ValueError when the taxonomy does not
    have the dimensions and labels the protocol names."""
    from safereview.db.collections import taxonomy_of
    from safereview.workflow.collections import get_collection

    def checked(col: Collection) -> Collection:
        if check is not None:
            try:
                check(taxonomy_of(session, col))
            except ValueError as exc:
                raise JudgeSetupError(f"collection {col.name!r}: {exc}") from None
        return col

    if name is not None:
        col = checked(get_collection(session, name))
        have = dimension_names(taxonomy_of(session, col))
        missing = [d for d in dims if d not in have]
        if missing:
            raise JudgeSetupError(
                f"collection {name!r} has no {noun(len(missing), 'dimension')} {', '.join(missing)} "
                f"(its taxonomy has {', '.join(have)}); pick the other protocol"
            )
        return [col]
    cols = [
        c
        for c in session.exec(select(Collection).order_by(Collection.id)).all()
        if all(d in dimension_names(taxonomy_of(session, c)) for d in dims)
    ]
    if not cols:
        raise JudgeSetupError("no collection has this protocol's dimensions: " + ", ".join(dims))
    return [checked(c) for c in cols]


def truncate_media(body: dict[str, Any], keep: int = 48) -> dict[str, Any]:
    """A copy of a request body with base64 payloads shortened, for printing only."""
    out = copy.deepcopy(body)
    for msg in out.get("messages", []):
        content = msg.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if part.get("type") == "image_url":
                url = part["image_url"]["url"]
                if len(url) > keep + 40:
                    head, _, b64 = url.partition(",")
                    part["image_url"]["url"] = f"{head},{b64[:keep]}…[{len(b64)} base64 chars]"
            elif part.get("type") == "input_audio":
                data = part["input_audio"]["data"]
                if len(data) > keep:
                    part["input_audio"]["data"] = f"{data[:keep]}…[{len(data)} base64 chars]"
    return out


def run_judge(
    engine: Engine,
    media_root: Path,
    opts: RunOptions,
    *,
    actor: Any,
    console: Any = None,
    on_batch: Callable[[int], None] | None = None,
) -> RunSummary:
    """Judge what is missing and return a summary (synchronous wrapper).

    ``actor`` must be allowed to ``judge`` (an admin, or the CLI's system principal): a run
    writes verdicts into collections and sends their content to a model server.
    """
    require(actor, "judge")
    return asyncio.run(run_judge_async(engine, media_root, opts, console=console, on_batch=on_batch))


async def run_judge_async(
    engine: Engine,
    media_root: Path,
    opts: RunOptions,
    *,
    console: Any = None,
    on_batch: Callable[[int], None] | None = None,
) -> RunSummary:
    try:
        protocol = get_protocol(opts.protocol, opts.protocol_file)
    except ValueError as exc:
        raise JudgeSetupError(str(exc)) from None
    if opts.structured and opts.protocol == "template":  # a template states its own answer format
        raise JudgeSetupError(
            "--structured applies to the uni-judger and vlsu protocols; a template's answer pattern is its own"
        )
    urls = opts.base_urls
    if not urls:
        raise JudgeSetupError("no server: give --base-url")
    # the server(s) are not part of the judge id: the same model at temperature 0 is the same judge
    jid = judge_id(protocol.name, opts.model, protocol.prompt_version, params_for(opts))
    summary = RunSummary(judge_id=jid, logprobs_asked=bool(opts.logprobs))
    started = time.perf_counter()

    with session_scope(engine) as s:
        cols = _collections(s, opts.collection, protocol.dimensions, getattr(protocol, "check_taxonomy", None))
        col_ids = [c.id for c in cols]
        if not opts.dry_run:
            ensure_judge_config(s, protocol.name, opts.model, protocol.prompt_version, params_for(opts), jid=jid)
        todo, summary.skipped = missing_work(s, jid, col_ids, protocol.dimensions)
        limit = opts.limit if opts.limit is not None else (2 if opts.dry_run else None)
        if limit is not None:
            todo = todo[:limit]

    refs: dict[str, MediaRef] = {}  # filled chunk by chunk as the items are loaded
    encoder = MediaEncoder(media_root, refs, max_image_side=opts.max_image_side)
    cache = DbCache(engine) if opts.cache and not opts.dry_run else None
    recorded: list[dict[str, Any]] = []

    def record(question: str, body: dict[str, Any]) -> Answer | None:
        recorded.append({"question": question, "body": body})
        # a stand-in intent lets the dry run show the contextual requests that depend on it
        return Answer(text=DRY_RUN_INTENT) if question == "intent" else None

    try:
        client = ChatClient(
            base_url=urls,
            model=opts.model,
            api_key=opts.api_key,
            concurrency=opts.concurrency,
            timeout=opts.timeout,
            max_retries=opts.max_retries,
            logprobs=opts.logprobs,
            cache=cache,
            backoff_base=opts.backoff_base,
            give_up_after=opts.give_up_after,
            max_tokens=opts.max_tokens,
            structured=opts.structured,
            on_request=record if opts.dry_run else None,
        )
    except ValueError as exc:  # e.g. the same server twice
        raise JudgeSetupError(str(exc)) from None

    buffer: list[Draft] = []
    buffered_items = 0
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal buffered_items, last_flush
        if opts.dry_run or (not buffer and not (cache and cache.pending)):
            return
        with session_scope(engine) as s:
            write_verdicts(s, buffer, judge_id=jid, judge_version=protocol.prompt_version)
            if cache is not None:
                cache_put_many(s, cache.pending)
        for d in buffer:
            summary.verdicts += 1
            counter = d.status if d.status in ("ok", "rule", "unparseable") else "errors"
            setattr(summary, counter, getattr(summary, counter) + 1)
            if d.probability is not None:
                summary.with_probability += 1
            if counter == "errors":
                reason = (d.rationale or d.raw_output or "no reason given")[:200]
                summary.error_reasons[reason] = summary.error_reasons.get(reason, 0) + 1
        if on_batch is not None:
            on_batch(len(buffer))
        buffer.clear()
        if cache is not None:
            cache.pending.clear()
        buffered_items = 0
        last_flush = time.monotonic()

    # Items are loaded LOAD_CHUNK at a time into a bounded queue, so memory holds a few chunks
    # of prompts however large the collection (the plan above is ids and dimension names only).
    # enough workers to keep every server's connections busy (--concurrency is per server)
    n_workers = max(1, min(opts.concurrency * len(urls), len(todo)))
    queue: asyncio.Queue[tuple[ItemView, tuple[str, ...]] | None] = asyncio.Queue(maxsize=2 * LOAD_CHUNK)

    async def producer() -> None:
        try:
            for start in range(0, len(todo), LOAD_CHUNK):
                chunk = todo[start : start + LOAD_CHUNK]
                for entry in load_views(engine, chunk, refs):
                    await queue.put(entry)
        finally:
            for _ in range(n_workers):
                await queue.put(None)  # one stop signal per worker

    progress = None
    task_id = None
    if opts.progress and console is not None and not opts.dry_run:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class Rate(ProgressColumn):
            def render(self, task: Any) -> Text:
                return Text("–  items/s" if task.speed is None else f"{task.speed:.1f} items/s")

        progress = Progress(
            TextColumn("[bold]judging"),
            BarColumn(),
            MofNCompleteColumn(),
            Rate(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        progress.start()
        task_id = progress.add_task("judge", total=len(todo))

    async def worker() -> None:
        nonlocal buffered_items
        while True:
            entry = await queue.get()
            if entry is None:
                return
            view, missing = entry
            ctx = JudgeContext(content=encoder.content, ask=client.ask)
            try:
                drafts = await protocol.judge(view, ctx, missing)
            except MediaError as exc:
                drafts = [Draft(view.id, d, None, "error", "", f"media problem: {exc}") for d in missing]
            buffer.extend(drafts)
            buffered_items += 1
            summary.items += 1
            if progress is not None and task_id is not None:
                progress.advance(task_id)
            if buffered_items >= opts.batch_size or time.monotonic() - last_flush >= opts.flush_seconds:
                flush()

    try:
        async with client:
            workers = [asyncio.create_task(worker()) for _ in range(n_workers)]
            feeder = asyncio.create_task(producer())
            try:
                await asyncio.gather(feeder, *workers)
            except ServersSilent as exc:  # the verdicts made so far are flushed below; a re-run resumes
                summary.stopped = str(exc)
            finally:
                for t in (feeder, *workers):
                    t.cancel()
    finally:
        if progress is not None:
            progress.stop()
        flush()

    st = client.stats
    summary.calls, summary.cache_hits, summary.retries = st.calls, st.cache_hits, st.retries
    summary.failures = st.failures
    summary.servers = [srv.as_dict() for srv in client.server_stats()]
    if opts.structured:
        summary.structured = client.structured_mode
        summary.structured_refused = list(st.structured_refused)
    summary.prompt_tokens, summary.completion_tokens = st.prompt_tokens, st.completion_tokens
    summary.seconds = time.perf_counter() - started
    if opts.dry_run:
        summary.requests = [{"question": r["question"], "body": truncate_media(r["body"])} for r in recorded]
    elif summary.verdicts:  # the queue re-ranks the items whose verdicts changed
        from safereview.workflow.ordering import refresh_priorities

        touched = [iid for iid, _ in todo]
        for cid in (c for c in col_ids if c is not None):
            with session_scope(engine) as s:
                refresh_priorities(s, cid, touched)
    return summary
