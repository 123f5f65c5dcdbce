"""``safereview judge``, ``import-verdicts`` and ``stats``: automated verdicts and benchmark metrics."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from safereview.cli.common import DbOption, MediaRootOption, config, console, engine_for, err_console, principal
from safereview.wording import count


def _print_summary(summary: Any) -> None:
    from rich.table import Table

    t = Table(title=f"judge run: {summary.judge_id}", show_header=True)
    t.add_column("measure")
    t.add_column("value", justify="right")
    rows = [
        ("items judged", summary.items),
        ("items already complete (skipped)", summary.skipped),
        ("HTTP calls", summary.calls),
        ("cache hits", summary.cache_hits),
        ("retries", summary.retries),
        ("failed requests", summary.failures),
        ("verdicts written", summary.verdicts),
        ("  ok", summary.ok),
        ("  by rule (refused / empty)", summary.rule),
        ("  unparseable", summary.unparseable),
        ("  errors (retried next run)", summary.errors),
        ("prompt tokens", summary.prompt_tokens),
        ("completion tokens", summary.completion_tokens),
        ("seconds", f"{summary.seconds:.1f}"),
    ]
    if summary.logprobs_asked:
        rows.insert(-3, ("  with a probability", summary.with_probability))
    if summary.parse_rate is not None:
        rows.insert(-3, ("answers parsed (ok / ok + unparseable)", f"{summary.parse_rate:.1%}"))
    for k, v in rows:
        t.add_row(k, str(v))
    console.print(t)
    if len(summary.servers) > 1:
        _print_servers(summary.servers)
    for note in summary.notes:
        console.print(f"note: {note}", highlight=False)


def _print_servers(servers: list[dict[str, Any]]) -> None:
    """Per-server counts, for a run over several servers (answered adds up to the HTTP calls)."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title="servers", show_header=True)
    t.add_column("server", overflow="fold")
    for name in ("answered", "refused", "failed", "back-offs", "sent elsewhere"):
        t.add_column(name, justify="right")
    t.add_column("at the end")
    for srv in servers:
        t.add_row(
            Text(srv["url"]),
            *(str(srv[k]) for k in ("answered", "refused", "failed", "backoffs", "sent_elsewhere")),
            "backed off" if srv["backed_off"] else "ok",
        )
    console.print(t)


def register(app: typer.Typer) -> None:
    @app.command("judge")
    def judge(
        protocol: Annotated[
            str,
            typer.Option("--protocol", help="Judging protocol: uni-judger, vlsu, or template (with --protocol-file)."),
        ],
        base_url: Annotated[
            list[str],
            typer.Option(
                "--base-url",
                help="OpenAI-compatible server, e.g. http://127.0.0.1:8000 or https://host/v1. Repeat it to spread "
                "the requests over several servers (a failing one is backed off, the others go on).",
            ),
        ],
        model: Annotated[str, typer.Option("--model", help="Model name the server knows the judge model by.")],
        collection: Annotated[
            str | None,
            typer.Option(
                "--collection",
                "-c",
                help="Collection to judge (default: every collection whose taxonomy fits the protocol).",
                show_default=False,
            ),
        ] = None,
        protocol_file: Annotated[
            Path | None,
            typer.Option(
                "--protocol-file",
                help="Judge template (TOML: prompts, answer pattern, labels); required with --protocol template.",
                show_default=False,
            ),
        ] = None,
        concurrency: Annotated[
            int, typer.Option("--concurrency", min=1, max=1024, help="Requests in flight at once, per server.")
        ] = 8,
        limit: Annotated[
            int | None,
            typer.Option(
                "--limit", min=1, help="Judge at most this many items (dry run default: 2).", show_default=False
            ),
        ] = None,
        timeout: Annotated[
            float, typer.Option("--timeout", min=0.1, help="Wall-clock limit per request attempt, seconds.")
        ] = 120.0,
        max_retries: Annotated[
            int,
            typer.Option(
                "--max-retries",
                min=0,
                help="Retries per request (on any server) on 429, 5xx, connection errors, time-outs.",
            ),
        ] = 5,
        logprobs: Annotated[
            bool,
            typer.Option(
                "--logprobs/--no-logprobs",
                help="Ask for token log-probabilities and store label probabilities (for calibration).",
            ),
        ] = False,
        api_key_env: Annotated[
            str, typer.Option("--api-key-env", help="Environment variable holding the API key.")
        ] = "SAFEREVIEW_JUDGE_API_KEY",
        dry_run: Annotated[
            bool,
            typer.Option(
                "--dry-run",
                help="Print the exact request bodies (base64 shortened in the print only) and make no call.",
            ),
        ] = False,
        cache: Annotated[
            bool, typer.Option("--cache/--no-cache", help="Answer repeated identical requests from the response cache.")
        ] = True,
        batch_size: Annotated[
            int,
            typer.Option(
                "--batch-size",
                min=1,
                help="Commit verdicts after this many items (a killed run loses at most one batch).",
            ),
        ] = 10,
        max_image_side: Annotated[
            int,
            typer.Option(
                "--max-image-side",
                min=64,
                help="Downscale images whose long side exceeds this many pixels before sending.",
            ),
        ] = 1536,
        max_tokens: Annotated[
            int | None,
            typer.Option(
                "--max-tokens",
                min=16,
                help="Answer length limit for "
                "every call (default: 300 for intent, 400 for verdicts; "
                "raise it for reasoning models).",
                show_default=False,
            ),
        ] = None,
        give_up_after: Annotated[
            float,
            typer.Option(
                "--give-up-after",
                min=0,
                help="Stop the run when no server has answered at all for this many seconds "
                "(refused connections, time-outs); the verdicts made so far are kept. 0: never.",
            ),
        ] = 300.0,
        structured: Annotated[
            bool,
            typer.Option(
                "--structured",
                help="Ask for verdicts as JSON constrained by a response_format schema "
                "(falls back when the server refuses it; part of the judge id).",
            ),
        ] = False,
        json_out: Annotated[bool, typer.Option("--json", help="Print the run summary as JSON.")] = False,
        db: DbOption = None,
        media_root: MediaRootOption = None,
    ) -> None:
        """Judge items with an OpenAI-compatible model server (resumable, cached, retried)."""
        from safereview.db.deployment import media_root as db_media_root
        from safereview.judge.runner import JudgeSetupError, RunOptions, run_judge
        from safereview.workflow.errors import NotFound

        cfg = config(db, media_root)
        engine = engine_for(cfg)
        opts = RunOptions(
            protocol=protocol,
            base_url=base_url,
            model=model,
            collection=collection,
            protocol_file=protocol_file,
            concurrency=concurrency,
            limit=limit,
            timeout=timeout,
            max_retries=max_retries,
            give_up_after=give_up_after,
            logprobs=logprobs,
            api_key=os.environ.get(api_key_env, ""),
            dry_run=dry_run,
            cache=cache,
            batch_size=batch_size,
            max_image_side=max_image_side,
            max_tokens=max_tokens,
            structured=structured,
            progress=not json_out,
        )
        try:
            summary = run_judge(engine, db_media_root(cfg, engine), opts, console=err_console, actor=principal())
        except (JudgeSetupError, NotFound) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        if dry_run:
            typer.echo(json.dumps(summary.requests, indent=2, ensure_ascii=False))
            typer.echo(
                f"dry run: {count(len(summary.requests), 'request')} for judge {summary.judge_id}; "
                "no call made, nothing written",
                err=True,
            )
            return
        if json_out:
            typer.echo(json.dumps(summary.as_dict()))
        else:
            _print_summary(summary)
        if summary.stopped:
            n = summary.verdicts
            kept = (
                "No verdict was made."
                if not n
                else f"The {n} verdict{'s' if n != 1 else ''} made {'are' if n != 1 else 'is'} stored."
            )
            typer.echo(
                f"stopped: {summary.stopped}. {kept} Run the same command again to go on where this run stopped.",
                err=True,
            )
            raise typer.Exit(1)

    @app.command("import-verdicts")
    def import_verdicts_cmd(
        path: Annotated[Path, typer.Argument(help="Verdict file: JSONL (uni-judger, generic) or CSV (generic).")],
        fmt: Annotated[
            str,
            typer.Option(
                "--format", help="uni-judger (Uni-Judger's detail or _numeric JSONL; alias unijudger) or generic."
            ),
        ],
        collection: Annotated[str, typer.Option("--collection", "-c", help="Collection whose items the ids refer to.")],
        judge_id: Annotated[
            str | None,
            typer.Option(
                "--judge-id",
                help="Judge id to store the verdicts under "
                "(default: imported:<format>:<file name>; a generic row's "
                "judge_id column wins).",
                show_default=False,
            ),
        ] = None,
        update: Annotated[
            bool,
            typer.Option(
                "--update",
                help="Replace stored verdicts that differ from the file's (default: refuse them, as `import` does).",
            ),
        ] = False,
        task_type: Annotated[
            str | None,
            typer.Option(
                "--task-type",
                help="uni-judger: the task whose ids the file holds (default: from the file or folder name).",
                show_default=False,
            ),
        ] = None,
        db: DbOption = None,
    ) -> None:
        """Import verdicts made elsewhere; all-or-nothing, every problem reported as FILE:LINE: field: message."""
        from safereview.db.engine import session_scope
        from safereview.judge.importing import VerdictImportError, import_verdicts
        from safereview.workflow.errors import NotFound

        cfg = config(db)
        engine = engine_for(cfg)
        try:
            with session_scope(engine) as s:
                result = import_verdicts(
                    s,
                    path,
                    fmt,
                    collection,
                    actor=principal(),
                    judge_id=judge_id,
                    update=update,
                    task_type=task_type,
                )
        except VerdictImportError as exc:
            for p in exc.problems:
                typer.echo(p, err=True)
            typer.echo(f"{count(len(exc.problems), 'problem')}; nothing imported", err=True)
            raise typer.Exit(1) from None
        except NotFound as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        console.print(
            f"imported {count(result.verdicts, 'verdict')} as {', '.join(result.judge_ids)}"
            + (f" (import batch {result.batch_id})" if result.batch_id else "")
            + f": {result.verdicts - result.replaced} new, {result.replaced} replaced, {result.unchanged} unchanged",
            highlight=False,
        )

    @app.command("stats")
    def stats(
        collection: Annotated[str, typer.Option("--collection", "-c", help="Collection to report on.")],
        by: Annotated[
            str | None, typer.Option("--by", help="Break down by model, task_type or category.", show_default=False)
        ] = None,
        judge_id: Annotated[
            list[str] | None,
            typer.Option(
                "--judge-id",
                help="Judge whose verdicts to use (default: the one with most labels). Repeat to merge several "
                "judges' verdicts per item by the benchmark's rule (any unsafe -> unsafe, all refusal -> refusal, "
                "else safe; Uni-SafeBench only).",
                show_default=False,
            ),
        ] = None,
        per_metric_denominator: Annotated[
            bool,
            typer.Option(
                "--per-metric-denominator",
                help="Uni-SafeBench metrics: each metric over the items with the labels it needs, instead of the "
                "benchmark's rule (drop an item with an NA verdict on either dimension; one shared denominator).",
            ),
        ] = False,
        json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
        db: DbOption = None,
    ) -> None:
        """Benchmark metrics (C-Unsafe, C-Reject, I-Unsafe, Both-Safe or label shares): judge, human and corrected."""
        from safereview.agreement.data import AgreementError, scope
        from safereview.agreement.verdicts import resolve_judge
        from safereview.db.engine import session_scope
        from safereview.judge.metrics import PER_METRIC_DENOMINATOR
        from safereview.judge.stats import collection_stats
        from safereview.workflow.errors import NotFound

        cfg = config(db)
        engine = engine_for(cfg)
        rule = PER_METRIC_DENOMINATOR if per_metric_denominator else None
        try:
            sc = scope(engine, [collection])
            dims = sc.dimensions()
            if judge_id:  # ids or unique prefixes, each (an id without verdicts is reported as such below)

                def full_id(j: str) -> str:
                    try:
                        return resolve_judge(engine, sc.collection_ids, dims, j) or j
                    except AgreementError:
                        return j

                named = [full_id(j) for j in judge_id]
            else:  # the only judge there is, or an error naming them: never a silent pick
                named = [j for j in [resolve_judge(engine, sc.collection_ids, dims, None)] if j]
            with session_scope(engine) as s:
                result = collection_stats(s, collection, by=by, judge_id=[j for j in named if j] or None, rule=rule)
        except (NotFound, ValueError, AgreementError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        if json_out:
            typer.echo(json.dumps(result, indent=2))
            return
        _print_stats(result)


def _print_stats(result: dict[str, Any]) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    pop = result["population"]
    title = f"{result['collection']} — judge {result['judge_id'] or '(none)'}"
    t = Table(
        title=Text(title),
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        caption="per cent, 95% interval in brackets; judge: its own share, uncorrected (n: its records)",
    )
    t.add_column(result["by"] or "group", overflow="fold", min_width=10, max_width=18)
    t.add_column("metric", overflow="fold", min_width=9)
    t.add_column("n", justify="right")
    t.add_column("judge", justify="right", no_wrap=True)
    t.add_column("human", justify="right", no_wrap=True)
    t.add_column("corrected", justify="right", no_wrap=True)
    rule = result.get("rule")

    def pct(value: Any, low: Any, high: Any) -> str:
        if value is None or value != value:
            return "—"
        return f"{100 * value:.1f} [{100 * low:.0f}–{100 * high:.0f}]"  # full precision: --json

    def est(e: dict[str, Any] | None) -> str:
        return pct(e.get("value"), e.get("low"), e.get("high")) if e else "—"

    def share(s: dict[str, Any] | None) -> tuple[str, str]:
        if s is None:
            return "", "—"
        d = s.as_dict() if hasattr(s, "as_dict") else s
        return str(d["n"]), pct(d["p"], d["lo"], d["hi"])

    def dropped(g: dict[str, Any] | None) -> str:
        if g is None:
            return "—"
        if rule == "shared-denominator":
            return f"{g['n_dropped_na']} of {g['n_records']}"
        return f"{g['n_records_na']} of {g['n_records']}"

    for g in result["judge"]:
        first = True
        people = pop["groups"].get(g["group"], {})
        for m in result["metrics"]:
            p = people.get(m) or {}
            n, judge = share(g["metrics"].get(m))
            t.add_row(
                Text(g["group"] if first else ""),
                Text(m),
                n,
                Text(judge),
                Text(est(p.get("human"))),
                Text(est(p.get("corrected"))),
            )
            first = False
        if rule:
            what = "NA dropped" if rule == "shared-denominator" else "NA (kept)"
            t.add_row(Text(""), Text(what), "", Text(dropped(g)), Text(""), Text(""))
        t.add_section()
    console.print(t)
    sample = pop["sample"]
    console.print(
        Text(
            "judge: its share of its records (the benchmark's number), exact for these items; its Wilson "
            "interval is the benchmark's sampling error, as if the items were a random draw of prompts like "
            "them. Neither says anything about the judge's bias. human and corrected: the people's rate over "
            f"the collection from the review sample ({sample['n_in_sample']} of {sample['n_items']} items), "
            "95% intervals"
            + (
                f"; corrected uses {pop['predictor']}'s verdicts as its predictor."
                if len(result["judge_ids"]) > 1
                else "."
            )
        )
    )
    for note in sample["notes"]:
        console.print(Text(f"note: {note}"))
    for warning in pop.get("warnings", []):
        console.print(Text(f"warning: {warning}"))
    if rule:
        console.print(f"rule: {rule} ({result['rule_text']})", highlight=False)
    if result["verdict_status"]:
        console.print(
            "verdict status: " + ", ".join(f"{k} {v}" for k, v in sorted(result["verdict_status"].items())),
            highlight=False,
        )
