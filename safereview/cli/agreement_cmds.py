"""``safereview agreement``, ``audit``, ``calibrate`` and ``export gold``: the statistics.

Whoever runs these commands controls the database already, so they act without a signed-in
user; the same functions called from the app check the signed-in user's role. ``--json``
prints every figure the tables show (and more), for scripts. numpy, scipy and pyarrow are
imported inside the commands so ``safereview --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from safereview.cli.common import DbOption, config, console, engine_for, err_console, principal

CollectionsOpt = Annotated[
    list[str] | None,
    typer.Option("--collection", "-c", help="Only this collection (repeat for several; default: all active)."),
]
DimensionsOpt = Annotated[
    list[str] | None,
    typer.Option("--dimension", "-d", help="Only this dimension (repeat for several; default: every dimension)."),
]
ByOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--by",
        help="Also break down by this slice: collection, task_type, category, subcategory, "
        "model or modality (repeatable).",
    ),
]
ResamplesOpt = Annotated[
    int, typer.Option("--resamples", help="Bootstrap resamples for the 95% intervals (0 = no intervals).", min=0)
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed of the bootstrap (same seed, same intervals).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the full result as JSON instead of tables.")]
JudgeOpt = Annotated[
    str | None,
    typer.Option(
        "--judge",
        help="Judge id or a unique prefix of one; required when several judges have verdicts (no silent pick).",
    ),
]


def _judge(engine: Any, collection: list[str] | None, dimensions: list[str] | None, given: str | None) -> str | None:
    """The named judge, or the only one there is; an AgreementError lists them when several exist."""
    from safereview.agreement.data import scope
    from safereview.agreement.verdicts import resolve_judge

    sc = scope(engine, collection)
    return resolve_judge(engine, sc.collection_ids, dimensions or sc.dimensions(), given)


def _fail(msg: str, code: int = 1) -> None:
    err_console.print(f"error: {msg}", highlight=False)
    raise typer.Exit(code)


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _est(e: dict[str, Any] | None) -> str:
    """'0.743 [0.42, 1.00]' or 'undefined: reason'."""
    if not e:
        return "-"
    if e.get("value") is None:
        return "undefined: " + str(e.get("undefined_reason", ""))
    if isinstance(e["value"], float) and e["value"] != e["value"]:  # NaN: nothing to estimate from
        return "-"
    s = _fmt(e["value"])
    low, high = e.get("ci_low", e.get("low")), e.get("ci_high", e.get("high"))
    if low is not None:
        s += f" [{_fmt(low)}, {_fmt(high)}]"
    elif e.get("no_interval"):
        s += f" (no interval: {e['no_interval']})"
    return s


def _dump(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str, allow_nan=False))


_COEFFICIENTS = (
    ("alpha", "alpha"),
    ("alpha_nominal", "alpha (nominal)"),
    ("percent_agreement", "percent agreement"),
    ("gwet_ac1", "Gwet AC1"),
    ("fleiss_kappa", "Fleiss kappa"),
)


def _stats_row(s: dict[str, Any], coefficients: list[tuple[str, str]], undefined: dict[str, list[str]]) -> list[str]:
    """A slice's cells; an undefined coefficient is "-" and its reason goes to ``undefined``
    (reason -> coefficient names), printed once under the table: the reasons are sentences,
    and repeated in every narrow cell they buried the figures."""
    cells = [str(s["n_units"]), str(s["n_units_pairable"]), str(s["n_pairable_values"])]
    for key, name in coefficients:
        e = s.get(key)
        if e and e.get("value") is None:
            names = undefined.setdefault(str(e.get("undefined_reason") or "no value"), [])
            if name not in names:
                names.append(name)
            cells.append("-")
        else:
            cells.append(_est(e))
    return cells


def _print_agreement(rep: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    from safereview.agreement.report import FEW_PAIRABLE_UNITS

    console.print(
        Text(
            f"collections: {', '.join(rep['collections'])}; {rep['resamples']} bootstrap resamples, "
            f"seed {rep['seed']}, 95% intervals"
        )
    )
    console.print(Text(f"these figures: {rep['describes']}"))
    for d in rep["dimensions"]:
        if d["overall"]["n_ratings"] == 0:
            console.print(Text(f"{d['dimension']}: no ratings"))
            continue
        shown = " < ".join(d["labels"]) if d["ordered"] else ", ".join(d["labels"])
        t = Table(title=Text(f"{d['dimension']} ({d['level']}; labels {shown})"))
        # alpha (nominal) beside an ordinal alpha only: for a nominal dimension it is alpha itself
        coefficients = [(k, name) for k, name in _COEFFICIENTS if k != "alpha_nominal" or d["ordered"]]
        slices = [(f"{by}: {row['value']}", row) for by, rows in d.get("slices", {}).items() for row in rows]
        # "by: value" wraps at the space and a long value folds; "overall" stays whole
        t.add_column("slice", overflow="fold", min_width=len("overall"))
        for col in ("units", "pairable units", "pairable values", *(name for _, name in coefficients)):
            t.add_column(col)
        undefined: dict[str, list[str]] = {}
        t.add_row("overall", *[Text(x) for x in _stats_row(d["overall"], coefficients, undefined)])
        for name, row in slices:
            t.add_row(Text(name), *[Text(x) for x in _stats_row(row, coefficients, undefined)])
        console.print(t)
        for reason, names in undefined.items():
            console.print(Text(f"-: {', '.join(names)} undefined: {reason}"))
        warnings = d["overall"].get("warnings") or []
        if d["overall"].get("few_units") and not warnings:
            warnings = [
                f"only {d['overall']['n_units_pairable']} items carry two or more labels; "
                f"below {FEW_PAIRABLE_UNITS} one item can swing these figures"
            ]
        for w in warnings:
            console.print(Text(f"note: {w}", style="yellow"))
        sa = d["overall"]["specific_agreement"]
        console.print(Text("specific agreement: " + ", ".join(f"{k} {_fmt(v)}" for k, v in sa.items())))
        if d.get("judge"):
            j = d["judge"]
            console.print(
                Text(
                    f"judge {j['judge_id']} as one more rater: alpha {_est(j['alpha_with_judge'])} "
                    f"(people only {_est(j['alpha_without_judge'])})"
                )
            )
            diff = j.get("alpha_difference") or {}
            if diff.get("difference") is not None:
                console.print(
                    Text(
                        f"  with minus without: {_fmt(diff['difference'])} [{_fmt(diff.get('ci_low'))}, "
                        f"{_fmt(diff.get('ci_high'))}] (paired bootstrap over the same items)"
                    )
                )
        from safereview.agreement.tables import pairwise_rows, rater_rows

        for title, rows in (
            ("pairwise Cohen's kappa (95% intervals over the items both labelled)", pairwise_rows(d)),
            ("each annotator vs the majority of the others (95% intervals over the items compared)", rater_rows(d)),
        ):
            if not rows:
                continue
            tab = Table(title=title)
            cols = [c for c in rows[0] if c != "note" or any(row["note"] for row in rows)]
            for col in cols:
                tab.add_column(col)
            for row in rows:
                tab.add_row(*[Text(_fmt(row[c])) for c in cols])
            console.print(tab)


def _print_audit(res: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    from safereview.agreement.tables import confusion_rows, confusion_shares_note

    console.print(Text(f"{res['dimension']}: judge {res.get('judge_id')} vs people; {res.get('estimator', '')}"))
    if res.get("undefined_reason"):
        console.print(Text(res["undefined_reason"]))
        return
    console.print(
        Text(
            f"review sample: {res['n_sample_items']} items (compared {res['n']}; without labels "
            f"{res['n_sample_without_labels']}, without verdict {res['n_sample_without_verdict']}); "
            f"reference: {res['reference']}"
        )
    )
    for note in res["sample"]["notes"]:
        console.print(Text(f"note: {note}"))
    for warning in res.get("warnings", []):
        console.print(Text(f"warning: {warning}"))
    t = Table(title="judge error rates (95% intervals)")
    for col in ("slice", "n", "accuracy", "over-blocking", "under-blocking"):
        t.add_column(col)
    t.add_row("overall", str(res["n"]), *[Text(_est(res[k])) for k in ("accuracy", "over_blocking", "under_blocking")])
    for by, rows in res.get("slices", {}).items():
        for row in rows:
            t.add_row(
                Text(f"{by}={row['value']}"),
                str(row["n"]),
                *[Text(_est(row[k])) for k in ("accuracy", "over_blocking", "under_blocking")],
            )
    console.print(t)
    weights = res["kappa"].get("weights")
    kind = f" ({weights} weights)" if weights not in (None, "unweighted") else ""
    console.print(Text(f"Cohen's kappa{kind}: {_est(res['kappa'])}"))
    c = Table(title="confusion (rows: people, columns: judge; sample items)")
    c.add_column("")
    for lab in res["labels"]:
        c.add_column(Text(lab))
    for lab, row in zip(res["labels"], res["confusion"]["counts"], strict=True):
        c.add_row(Text(lab), *[str(x) for x in row])
    console.print(c)
    shares = Table(title="confusion as shares of the collection (design-weighted, 95% intervals)")
    shares.add_column("")
    for lab in res["labels"]:
        shares.add_column(Text(lab))
    for row in confusion_rows(res, shares=True):
        shares.add_row(*[Text(str(v)) for v in row.values()])
    console.print(shares)
    if note := confusion_shares_note(res):
        console.print(Text(note))
    ja = res["judge_as_rater"]
    console.print(Text(f"alpha with judge {_est(ja['alpha_with_judge'])}, without {_est(ja['alpha_without_judge'])}"))
    if res.get("annotators"):
        console.print(
            Text(
                "annotators vs the others (share of the others' labels matching theirs, shared items): "
                + ", ".join(
                    f"{a['annotator']} {_fmt(a['agreement_with_others'])} (n={a['items_shared']})"
                    for a in res["annotators"]
                )
            )
        )
    ar = res["all_reviewed"]
    console.print(
        Text(
            f"all reviewed items, unweighted (describes the reviewed items, not the collection): accuracy "
            f"{_fmt(ar['accuracy_unweighted'])} over {ar['n']} items; disagreements "
            f"{res['disagreements']['n']}"
        )
    )


def _interval(e: dict[str, Any] | None) -> str:
    """'0.101 [0.043–0.220]': compact enough for three columns in 80."""
    if not e or e.get("value") is None:
        return "-"
    if e.get("low") is None:
        return _fmt(e["value"])
    return f"{e['value']:.3f} [{e['low']:.3f}–{e['high']:.3f}]"


def _print_population(pop: dict[str, Any]) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    hw = pop["half_width"]
    t = Table(
        title=Text(f"rates over the collection ({', '.join(pop['collections'])})"),
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        caption=f"judge: its own share, uncorrected; human: design-weighted; corrected: PPI++; 95% intervals; "
        f"more: sample items to review for ±{hw}",
    )
    t.add_column("metric", overflow="fold", min_width=10)
    t.add_column("judge", justify="right", no_wrap=True)
    t.add_column("human", justify="right", no_wrap=True)
    t.add_column("corrected", justify="right", no_wrap=True)
    t.add_column("more", justify="right", no_wrap=True)
    for m in pop["metrics"]:
        more = m["more_reviews"]["corrected"]
        t.add_row(
            Text(m["metric"]),
            Text(_fmt(m["judge"]["value"])),
            Text(_interval(m["human"])),
            Text(_interval(m["corrected"])),
            Text("-" if more < 0 else str(more)),
        )
    console.print(t)
    sample = pop["sample"]
    console.print(
        Text(
            f"review sample: {sample['n_in_sample']} of {sample['n_items']} items "
            f"({sample['n_reviewed']} reviewed, {sample['n_reviewed_outside_sample']} outside the sample); "
            f"reference: {pop['reference']}"
        )
    )
    for note in sample["notes"]:
        console.print(Text(f"note: {note}"))
    for warning in pop.get("warnings", []):
        console.print(Text(f"warning: {warning}"))


def register(app: typer.Typer) -> None:
    @app.command("agreement")
    def agreement_cmd(
        collection: CollectionsOpt = None,
        dimension: DimensionsOpt = None,
        by: ByOpt = None,
        resamples: ResamplesOpt = 1000,
        seed: SeedOpt = 0,
        judge: JudgeOpt = None,
        blind: Annotated[
            bool, typer.Option("--blind", help="Use the labels committed before the verdict was revealed.")
        ] = False,
        as_json: JsonOpt = False,
        db: DbOption = None,
    ) -> None:
        """Inter-annotator agreement: Krippendorff's alpha, percent agreement, AC1, Fleiss and Cohen's kappa."""
        from safereview.agreement.data import AgreementError
        from safereview.agreement.report import agreement_report

        engine = engine_for(config(db))
        try:
            judge = _judge(engine, collection, dimension, judge)
            rep = agreement_report(
                engine,
                collection,
                dimension,
                by=by or (),
                resamples=resamples,
                seed=seed,
                judge_id=judge,
                field_name="blind_labels" if blind else "labels",
            )
        except AgreementError as exc:
            _fail(str(exc))
        finally:
            engine.dispose()
        _dump(rep) if as_json else _print_agreement(rep)

    @app.command("audit")
    def audit_cmd(
        collection: CollectionsOpt = None,
        dimension: DimensionsOpt = None,
        by: ByOpt = None,
        judge: JudgeOpt = None,
        resamples: ResamplesOpt = 1000,
        seed: SeedOpt = 0,
        min_n: Annotated[int, typer.Option("--min-n", help="Fewest sample items for an estimate.", min=2)] = 20,
        method: Annotated[
            str,
            typer.Option(
                "--method",
                help="The people's reference: majority (reviews averaged) or dawid-skene (fitted with the design's "
                "weights; intervals widened for the fit; worth it with 3+ reviews per item).",
            ),
        ] = "majority",
        labels: Annotated[
            str,
            typer.Option(
                "--labels",
                help="The people's labels to measure the judge against: final (after the reveal in blind review) "
                "or blind (committed before the judge's verdict was revealed).",
            ),
        ] = "final",
        as_json: JsonOpt = False,
        db: DbOption = None,
    ) -> None:
        """Judge vs the people over the collection: accuracy, over/under-blocking, kappa, and every rate
        as judge / human / corrected, all from the review sample with its design weights."""
        from safereview.agreement.audit import audit, compositional_error
        from safereview.agreement.data import AgreementError, scope
        from safereview.agreement.population import population_rates
        from safereview.agreement.sample import load_design_sample

        engine = engine_for(config(db))
        results: dict[str, Any] = {"dimensions": []}
        try:
            sc = scope(engine, collection)
            dims = dimension or sc.dimensions()
            judge = _judge(engine, collection, dims, judge)
            sample = load_design_sample(engine, sc.collection_ids)  # one read for every figure below
            for dim in dims:
                results["dimensions"].append(
                    audit(
                        engine,
                        dim,
                        collection,
                        judge_id=judge,
                        by=by or (),
                        min_n=min_n,
                        resamples=resamples,
                        seed=seed,
                        method=method,
                        sample=sample,
                        labels=labels,
                    )
                )
            if {"image", "text", "joint"} <= set(dims):
                results["compositional_error"] = compositional_error(
                    engine, collection, judge_id=judge, min_n=min_n, sample=sample
                )
            results["population"] = population_rates(
                engine, collection, judge_id=judge, method=method, sample=sample, labels=labels
            )
        except AgreementError as exc:
            _fail(str(exc))
        finally:
            engine.dispose()
        if as_json:
            _dump(results)
            return
        for res in results["dimensions"]:
            _print_audit(res)
        _print_population(results["population"])
        if "compositional_error" in results:
            ce = results["compositional_error"]
            console.print(
                f"compositional error (joint wrong although image and text right): {_est(ce)} (n={ce.get('n')})",
                highlight=False,
            )

    @app.command("calibrate")
    def calibrate_cmd(
        dimension: Annotated[str, typer.Option("--dimension", "-d", help="Dimension to calibrate.")],
        collection: CollectionsOpt = None,
        judge: JudgeOpt = None,
        method: Annotated[str, typer.Option("--method", help="isotonic or platt.")] = "isotonic",
        target: Annotated[
            float,
            typer.Option(
                "--target-under-blocking",
                help="Largest share of people-unsafe items the calibrated judge may let through.",
            ),
        ] = 0.05,
        delta: Annotated[
            float,
            typer.Option(
                "--delta",
                help="Allowed chance that the collection's true under-blocking exceeds the target.",
                min=0.001,
                max=0.5,
            ),
        ] = 0.1,
        min_n: Annotated[
            int,
            typer.Option(
                "--min-items",
                "--min-n",
                help="Fewest sample items with a probability to calibrate on (fewer gives a wide, honest interval).",
                min=2,
            ),
        ] = 20,
        bins: Annotated[int, typer.Option("--bins", help="Reliability-diagram bins.", min=2)] = 10,
        seed: SeedOpt = 0,
        labels: Annotated[
            str,
            typer.Option(
                "--labels",
                help="The people's labels to calibrate against: final (after the reveal in blind review) or blind "
                "(committed before the judge's verdict was revealed).",
            ),
        ] = "final",
        apply: Annotated[
            bool, typer.Option("--apply", help="Also write calibrated verdicts beside the raw ones.")
        ] = False,
        as_json: JsonOpt = False,
        db: DbOption = None,
    ) -> None:
        """Fit a calibration of the judge's P(unsafe) to the people's labels; store it (and apply it)."""
        from safereview.agreement.calibration import apply_calibration, fit_calibration
        from safereview.agreement.data import AgreementError
        from safereview.db.engine import session_scope

        engine = engine_for(config(db))
        try:
            judge = _judge(engine, collection, [dimension], judge)
            with session_scope(engine) as s:
                row, metrics = fit_calibration(
                    s,
                    principal(),
                    dimension,
                    collection,
                    judge_id=judge,
                    method=method,
                    target_under_blocking=target,
                    delta=delta,
                    min_n=min_n,
                    bins=bins,
                    seed=seed,
                    labels=labels,
                )
                out: dict[str, Any] = {
                    "calibration_id": row.id,
                    "judge_id": row.judge_id,
                    "dimension": dimension,
                    "method": method,
                    "params": row.params,
                    "metrics": metrics,
                }
                if apply:
                    out["applied"] = apply_calibration(s, principal(), int(row.id), collection)
        except AgreementError as exc:
            _fail(str(exc))
        finally:
            engine.dispose()
        if as_json:
            _dump(out)
            return
        cv = metrics["cross_validated"]
        thr = metrics["threshold"]
        ub = thr.get("under_blocking") or {}
        ob = thr.get("over_blocking") or {}
        lines = [
            f"calibration {out['calibration_id']} of judge {out['judge_id']} on {dimension} ({method}), "
            f"{metrics['n']} sample items, design-weighted",
            f"ECE raw {_fmt(metrics['ece_raw'])} -> {_fmt(cv.get('ece_calibrated'))} cross-fitted ({cv.get('folds')} "
            f"folds; {_fmt(metrics['ece_calibrated_in_sample'])} in sample, optimistic)",
            f"Brier raw {_est(cv.get('brier_raw'))} -> {_est(cv.get('brier_calibrated'))} cross-fitted; "
            f"change {_est(cv.get('brier_change'))}",
        ]
        if thr.get("under_blocking") is None:
            lines.append(f"threshold: {thr.get('undefined_reason', 'none')}")
        else:
            lines.append(
                f"threshold: block when raw P(unsafe) >= {_fmt(thr['raw_threshold'], 4)} (calibrated "
                f"{_fmt(thr.get('calibrated_threshold'), 4)}); under-blocking over the collection <= {target} with "
                f"probability >= {1 - thr['delta']:.0%} (upper bound {_fmt(thr['under_blocking_upper_bound'])}); "
                f"on the reviews that chose the cut (so under-blocking leans low; report the guarantee): "
                f"under-blocking {_est(ub)}, over-blocking {_est(ob)}"
            )
        lines += [f"warning: {w}" for w in metrics.get("warnings", [])]
        if apply:
            lines.append(f"wrote {out['applied']['written']} calibrated verdicts as judge {out['applied']['judge_id']}")
        for line in lines:
            console.print(line, highlight=False)

    from safereview.cli.dataio_cmds import export_app

    @export_app.command("gold")
    def export_gold_cmd(
        out: Annotated[Path, typer.Option("--out", "-o", help="Output file, or folder for --format hf.")],
        fmt: Annotated[
            str | None,
            typer.Option(
                "--format", "-f", help="jsonl, csv, parquet or hf (Hugging Face dataset folder); default from --out."
            ),
        ] = None,
        collection: CollectionsOpt = None,
        dimension: DimensionsOpt = None,
        method: Annotated[str, typer.Option("--method", help="majority or dawid-skene.")] = "majority",
        threshold: Annotated[
            float, typer.Option("--threshold", help="Agreement below which an item needs adjudication.")
        ] = 0.6,
        judge: JudgeOpt = None,
        raw_csv: Annotated[
            bool,
            typer.Option("--raw-csv", help="CSV: keep text cells that start with = + - @ as they are (machine use)."),
        ] = False,
        snapshot: Annotated[
            int | None, typer.Option("--snapshot", help="Re-export this stored snapshot instead of making a new one.")
        ] = None,
        db: DbOption = None,
    ) -> None:
        """Gold labels: a new numbered, reproducible snapshot (one row per item and dimension) exported."""
        from safereview.agreement.data import AgreementError
        from safereview.agreement.gold import (
            FORMATS,
            changed_since,
            create_snapshot,
            dimension_labels,
            snapshot_table,
            write,
        )
        from safereview.db.engine import session_scope
        from safereview.db.models import GoldSnapshot

        fmt_ = fmt or {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}.get(out.suffix.lower(), "hf")
        if fmt_ not in FORMATS:
            _fail(f"--format must be one of {', '.join(FORMATS)}", 2)
        engine = engine_for(config(db))
        try:
            with session_scope(engine) as s:
                if snapshot is not None:
                    snap = s.get(GoldSnapshot, snapshot)
                    if snap is None:
                        _fail(f"no gold snapshot {snapshot}")
                    table = snapshot_table(s, snapshot)
                    warning = changed_since(table, snap)
                    if warning:
                        err_console.print(f"warning: {warning}", highlight=False)
                else:
                    judge = _judge(engine, collection, dimension, judge)
                    snap, table = create_snapshot(
                        s,
                        principal(),
                        collection,
                        dimension,
                        method=method,
                        threshold=threshold,
                        judge_id=judge,
                    )
                labels = dimension_labels(s, snap) if fmt_ == "hf" else None  # the hf folder's class labels
                paths = write(table, out, fmt_, snap, raw_csv=raw_csv, labels=labels)
                sid, digest = snap.id, snap.checksum
        except AgreementError as exc:
            _fail(str(exc))
        finally:
            engine.dispose()
        console.print(
            f"gold snapshot {sid}: {table.num_rows} rows, checksum {digest}; wrote "
            f"{', '.join(str(p) for p in paths)} [{fmt_}]",
            highlight=False,
        )
        from safereview.agreement.gold import ROWS_ARE_NOT_A_RANDOM_SAMPLE

        console.print(f"note: {ROWS_ARE_NOT_A_RANDOM_SAMPLE}", highlight=False)
