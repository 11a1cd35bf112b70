"""The study report: how many steps guidance saves, and whether that is stable.

Inputs are self-describing runs (`summary.json` names run, fold and seed; the
`metrics.jsonl` beside it holds the curves) and evaluation JSONs. A replicate is a
(fold, seed) pair: fold `main` without k-fold splits. Outputs:

    summary.csv   one row per run and replicate, with its provenance (config-slice hash,
                  code version, data and tokenizer hashes) and compute (FLOPs)
    comparisons.csv  every run against the baseline, paired by replicate: mean difference,
                  95 % interval, paired-t and bootstrap p-values, minimum detectable effect
    summary.md    per-run mean +- std across replicates, steps saved, FLOPs to baseline,
                  the comparisons, plot index
    *.png         validation / training loss against steps (mean +- std bands),
                  their tails, and the guidance weight; per-fold curves with k folds
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from sdce import stats
from sdce.evaluation.validation import BOUNDS
from sdce.io import atomic_dir, read_json
from sdce.plan import MAIN_PART


def _replicate(record: dict) -> tuple[str, str, int]:
    return record["run"], record.get("fold") or MAIN_PART, record["seed"]


def load_runs(summaries: list[str], eval_files: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(curves, finals): every metrics record with run/fold/seed, and one row per run and
    replicate (fold, seed)."""
    curves, finals = [], []
    evals = {}
    for f in eval_files:
        e = read_json(f)
        evals[_replicate(e)] = e
    for f in summaries:
        s = read_json(f)
        run, fold, seed = _replicate(s)
        metrics = Path(f).with_name("metrics.jsonl")
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line]
        for r in records:
            curves.append({**r, "run": run, "fold": fold, "seed": seed})
        tps = [r["tokens_per_s"] for r in records if r["kind"] == "train"]
        clock = [r["train_seconds"] for r in records if r["kind"] == "train" and "train_seconds" in r]
        e = evals.get((run, fold, seed), {})
        compute = s.get("flops") or {}
        finals.append(
            {
                "run": run,
                "fold": fold,
                "seed": seed,
                "objective": s["objective"],
                "schedule": s.get("schedule", ""),
                # the validation measure: next_token, or elbo / answer_elbo (bounds: not the same quantity)
                "measure": s.get("val_measure", "next_token"),
                "steps": s["steps"],
                "final_val_loss": e.get("val_loss", s["final_val_loss"]),
                # the last point of the training-time validation curve (steps to baseline
                # compare curves with it: the evaluation job may score more tokens)
                "curve_final_val_loss": s["final_val_loss"],
                "perplexity": e.get("perplexity", s["final_val_ppl"]),
                "tokens_per_s": float(np.median(tps)) if tps else float("nan"),
                "train_seconds": clock[-1] if clock else float("nan"),
                "flops": compute.get("total", float("nan")),
                "teacher_flops_fixed": compute.get("teacher_fixed", float("nan")),
                **_provenance(s),
                **{k: v for k, v in e.items() if k.endswith("_accuracy") or k.startswith("babylm2025_")},
            }
        )
    finals = pd.DataFrame(finals).sort_values(["run", "fold", "seed"]).reset_index(drop=True)
    return pd.DataFrame(curves), finals


def _provenance(summary: dict) -> dict:
    """Where a row comes from: the hash of the run's config slice (with the data it trained
    on), the code version, and the hashes of its training shard and tokenizer."""
    versions = summary.get("versions") or {}
    data = summary.get("data") or {}
    return {
        "config_hash": summary.get("config_hash", ""),
        "code_version": versions.get("sdce_commit") or versions.get("sdce", ""),
        "data_hash": data.get("train_shard_hash", ""),
        "tokenizer_hash": data.get("tokenizer_hash", ""),
    }


def steps_to_reach(steps: np.ndarray, losses: np.ndarray, target: float) -> float:
    """First step at which the validation curve reaches `target`, linearly interpolated
    between evaluations; NaN when it never does."""
    below = np.nonzero(losses <= target)[0]
    if below.size == 0:
        return float("nan")
    i = int(below[0])
    if i == 0:
        return float(steps[0])
    s0, s1, l0, l1 = steps[i - 1], steps[i], losses[i - 1], losses[i]
    return float(s0 + (s1 - s0) * (l0 - target) / (l0 - l1)) if l0 != l1 else float(s1)


def attach_grid(finals: pd.DataFrame, grid: dict | None) -> pd.DataFrame:
    """Columns `base` and one per grid axis (dotted key) from the study's grid."""
    finals = finals.copy()
    grid = grid or {}
    finals["base"] = [grid.get(r, {}).get("base", r) for r in finals.run]
    axes = sorted({k for g in grid.values() for k in g.get("axes", {})})
    for key in axes:
        # an axis value of null (e.g. split.train_subset: the full data) is a value of its own,
        # "null"; runs without the axis get None
        values = [grid.get(r, {}).get("axes", {}) for r in finals.run]
        finals[key] = [("null" if v[key] is None else v[key]) if key in v else None for v in values]
    finals.attrs["axes"] = axes
    return finals


def baseline_rows(finals: pd.DataFrame, row, baseline: str) -> pd.DataFrame:
    """The baseline runs a row is compared with: the baseline's expansion that agrees with
    the row on every grid axis the baseline itself varies."""
    base = finals[finals.base == baseline]
    for key in finals.attrs.get("axes", []):
        if base[key].notna().any() and row[key] is not None and not pd.isna(row[key]):
            base = base[base[key] == row[key]]
    return base


def add_steps_to_baseline(curves: pd.DataFrame, finals: pd.DataFrame, baseline: str) -> pd.DataFrame:
    finals = finals.copy()
    if "base" not in finals:
        finals = attach_grid(finals, None)
    if finals[finals.base == baseline].empty:
        raise ValueError(f"report: baseline run '{baseline}' has no results")
    evals = curves[curves.kind == "eval"]
    reach, saved, flops_to, seconds_to = [], [], [], []
    for _, row in finals.iterrows():
        # the baseline of the same replicate: same fold (same validation set) and seed
        base = baseline_rows(finals, row, baseline).set_index(["fold", "seed"])
        if not comparable(row, base):  # an ELBO bound never "reaches" a next-token loss
            reach.append(float("nan"))
            saved.append(float("nan"))
            flops_to.append(float("nan"))
            seconds_to.append(float("nan"))
            continue
        key = (row.fold, row.seed)
        target = base.curve_final_val_loss.get(key, base.curve_final_val_loss.mean())
        c = evals[(evals.run == row.run) & (evals.fold == row.fold) & (evals.seed == row.seed)]
        c = c.sort_values("step")
        s = steps_to_reach(c.step.to_numpy(), c.val_loss.to_numpy(), target)
        reach.append(s)
        saved.append(float(base.steps.get(key, base.steps.mean())) - s if not math.isnan(s) else float("nan"))
        # the run's FLOPs (student, teacher, fixed) when it reaches the baseline's loss, as a
        # fraction of what the baseline spent on its whole run
        spent = c.flops.to_numpy(dtype=float) if "flops" in c else np.array([np.nan])
        reached = np.interp(s, c.step, spent) if not math.isnan(s) and len(spent) == len(c) else np.nan
        flops_to.append(reached / float(base.flops.get(key, base.flops.mean())))
        seconds_to.append(_seconds_at(curves, row, s) / float(base.train_seconds.get(key, np.nan)))
    finals["steps_to_baseline"] = reach
    finals["steps_saved"] = saved
    finals["flops_to_baseline"] = flops_to
    finals["seconds_to_baseline"] = seconds_to
    return finals


def _seconds_at(curves: pd.DataFrame, row, step: float) -> float:
    """The run's training wall seconds at `step` (interpolated between logged steps): a
    measurement of the machine the job ran on, at whatever load it shared it with."""
    if math.isnan(step) or "train_seconds" not in curves:
        return float("nan")
    c = curves[(curves.kind == "train") & (curves.run == row.run) & (curves.fold == row.fold)]
    c = c[(c.seed == row.seed) & c.train_seconds.notna()].sort_values("step")
    if c.empty:
        return float("nan")
    return float(np.interp(step, np.r_[0, c.step], np.r_[0.0, c.train_seconds]))


def comparable(row, base: pd.DataFrame) -> bool:
    """Whether a run's validation loss measures what the baseline's does (a masked-diffusion
    run's ELBO bounds the loss from above and is not compared as if it were one)."""
    return base.empty or bool((base.measure == row.measure).all())


def comparisons(finals: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Every run against the baseline of the same replicate (fold, seed, and the grid axes
    the baseline varies): steps saved (the baseline saves 0 by definition), and the
    difference in final validation loss and in every zero-shot score (run - baseline),
    with the paired statistics of `sdce.stats.paired`."""
    metrics = ["final_val_loss"] + [c for c in finals.columns if c.endswith("_accuracy")]
    metrics += [c for c in finals.columns if c.startswith("babylm2025_")]
    rows = []
    for run, g in finals[finals.base != baseline].groupby("run", sort=False):
        base = pd.concat([baseline_rows(finals, r, baseline) for _, r in g.head(1).iterrows()])
        base = base.set_index(["fold", "seed"])
        mine = g.set_index(["fold", "seed"])
        # steps saved: the baseline's steps to its own final loss (its last step unless its
        # curve dipped below it earlier) minus the run's; an unreached pair is dropped
        pairs = [("steps_saved", mine.steps_to_baseline, base.steps_to_baseline)]
        pairs += [(m, base[m], mine[m]) for m in metrics if mine[m].notna().any()]
        if not comparable(g.iloc[0], base):  # only the zero-shot scores measure the same thing
            pairs = [p for p in pairs if p[0] not in ("steps_saved", "final_val_loss")]
        for metric, reference, value in pairs:
            pair = stats.compare(reference.to_dict(), value.to_dict())
            rows.append({"run": run, "metric": metric, **{k: v for k, v in pair.items() if k != "pairs"}})
    return pd.DataFrame(rows)


def headline(finals: pd.DataFrame, table: pd.DataFrame, baseline: str) -> str:
    """The study's answer in one table (headline.md; `make readme-table` puts it in the
    README): per run, the final validation loss, the steps it saves with their paired 95 %
    interval and p-value, and its FLOPs to reach the baseline's final loss."""
    lines = [
        "| run | final val loss | steps saved [95 % CI] | p (paired t) | FLOPs to baseline | replicates |",
        "|---|---|---|---|---|---|",
    ]
    saved = table[table.metric == "steps_saved"].set_index("run") if not table.empty else pd.DataFrame()
    for run, g in finals.groupby("run", sort=False):
        if run in saved.index:
            r = saved.loc[run]
            ci = f" [{r.t_low:+.0f}, {r.t_high:+.0f}]" if r.n >= 2 else ""
            steps = f"{r['mean']:+.0f}{ci}" if r.n else "not reached"
            p = "-" if pd.isna(r.p_t) else f"{r.p_t:.2g} ({r.verdict})"
        else:
            steps, p = ("baseline" if (g.base == baseline).all() else "-"), "-"
        if g.measure.iloc[0] in BOUNDS:
            steps = "n/a (loss is a bound)"
        lines.append(
            f"| {run} | {_loss(g)} | {steps} | {p} | "
            f"{_mean_std(g.flops_to_baseline, '{:.2f}')} | {_replicates(g)} |"
        )
    return "\n".join(lines) + "\n"


BOOTSTRAP_MIN_PAIRS = 5  # n pairs have at most C(2n-1, n) distinct resamples: 10 at n = 3


def comparisons_markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return ""
    lines = [
        "",
        "## Against the baseline, paired by replicate",
        "",
        "Mean difference (run - baseline; for steps saved, the run's saving) with its 95 % paired-t "
        "interval, the paired t-test's and a paired bootstrap's two-sided p-values (10,000 resamples), "
        "and the smallest difference a paired t-test at this number of pairs detects with 80 % power "
        "(MDE). Unreached runs are left out of steps saved (n says how many pairs remain). With fewer "
        f"than {BOOTSTRAP_MIN_PAIRS} pairs a bootstrap has too few distinct resamples to mean anything "
        "and is not shown (comparisons.csv keeps it).",
        "",
        "| run | metric | mean [95 % CI] | p (t) | p (bootstrap) | n | MDE | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, r in table.iterrows():
        fmt = "{:+.0f}" if r.metric == "steps_saved" else "{:+.4f}"
        ci = f"[{fmt.format(r.t_low)}, {fmt.format(r.t_high)}]" if r.n >= 2 else "(no interval)"
        p = lambda v: "-" if pd.isna(v) else f"{v:.3g}"  # noqa: E731
        mde = "-" if pd.isna(r.mde) else fmt.format(r.mde).lstrip("+")
        lines.append(
            f"| {r.run} | {r.metric} | {fmt.format(r['mean'])} {ci} | {p(r.p_t)} | "
            f"{p(r.p_boot) if r.n >= BOOTSTRAP_MIN_PAIRS else '-'} | "
            f"{r.n} | {mde} | {r.verdict} |"
        )
    return "\n".join(lines) + "\n"


def _loss(g: pd.DataFrame, column: str = "final_val_loss", fmt: str = "{:.4f}") -> str:
    """A run's loss (or perplexity), written `≤ x` when its measure is an upper bound (ELBO)."""
    text = _mean_std(g[column], fmt)
    return f"≤ {text}" if g.measure.iloc[0] in BOUNDS else text


def _mean_std(x: pd.Series, fmt: str = "{:.4f}") -> str:
    x = x.dropna()
    if x.empty:
        return "not reached"
    if len(x) == 1:
        return fmt.format(x.iloc[0])
    return f"{fmt.format(x.mean())} ± {fmt.format(x.std(ddof=1))}"


def axis_tables(finals: pd.DataFrame) -> str:
    """Per grid axis: final validation loss and steps saved by axis value and base run."""
    lines = []
    for key in finals.attrs.get("axes", []):
        lines += [
            "",
            f"## By `{key}`",
            "",
            f"| base run | {key} | replicates | final val loss | steps saved |",
            "|---|---|---|---|---|",
        ]
        for (base, value), g in finals[finals[key].notna()].groupby(["base", key], sort=True):
            lines.append(
                f"| {base} | {value} | {len(g)} | {_mean_std(g.final_val_loss)} | "
                f"{_mean_std(g.steps_saved, '{:.0f}')} |"
            )
    return "\n".join(lines) + ("\n" if lines else "")


def axis_plots(finals: pd.DataFrame, folder: Path) -> list[str]:
    """Final validation loss against each numeric grid axis, one line per base run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for key in finals.attrs.get("axes", []):
        data = finals[finals[key].notna()]
        fig, ax = plt.subplots(figsize=(6, 3.8))
        for base, g in data.groupby("base"):
            stats = g.groupby(key).final_val_loss.agg(["mean", "std"]).fillna(0.0)
            x = list(range(len(stats))) if stats.index.dtype == object else stats.index
            ax.errorbar(x, stats["mean"], yerr=stats["std"], label=base, marker="o", capsize=3)
            if stats.index.dtype == object:
                ax.set_xticks(x, stats.index)
        ax.set_xlabel(key)
        ax.set_ylabel("final validation loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"by_{key.replace('.', '_')}.png"
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
        names.append(name)
    return names


def _replicates(finals: pd.DataFrame) -> str:
    folds, seeds = finals.fold.nunique(), finals.seed.nunique()
    return f"{folds} folds × {seeds} seeds" if folds > 1 else f"{seeds} seeds"


def fold_tables(finals: pd.DataFrame) -> str:
    """With k folds: final validation loss and steps saved per run and fold (mean across
    seeds), and the mean ± std across folds of those fold means."""
    folds = sorted(finals.fold.unique())
    if len(folds) < 2:
        return ""
    lines = []
    for column, label, fmt in (
        ("final_val_loss", "final validation loss", "{:.4f}"),
        ("steps_saved", "steps saved", "{:.0f}"),
    ):
        lines += [
            "",
            f"## By fold: {label}",
            "",
            "Each fold: mean across seeds; last column: mean ± std across folds of the fold means.",
            "",
            "| run | " + " | ".join(folds) + " | across folds |",
            "|---|" + "---|" * (len(folds) + 1),
        ]
        for run, g in finals.groupby("run", sort=False):
            means = g.groupby("fold")[column].mean()
            cells = [_mean_std(pd.Series([means.get(f)], dtype=float), fmt) for f in folds]
            lines.append(f"| {run} | " + " | ".join(cells) + f" | {_mean_std(means, fmt)} |")
    return "\n".join(lines) + "\n"


def source_losses(finals: pd.DataFrame, eval_files: list[str], baseline: str) -> str:
    """Per run, each source's validation loss (the evaluation job's `val_loss_by_source`:
    the validation windows grouped by the source their start falls in), mean over
    replicates, and its mean difference from the baseline of the same replicate (fold,
    seed); "" when no evaluation has per-source losses, one line when the validation set
    has one source."""
    by_replicate, tokens = {}, {}
    for f in eval_files:
        e = read_json(f)
        if e.get("val_loss_by_source"):
            by_replicate[_replicate(e)] = e["val_loss_by_source"]
            tokens = tokens or e.get("val_tokens_by_source", {})
    if not by_replicate:
        return ""
    sources = list(dict.fromkeys(s for losses in by_replicate.values() for s in losses))
    if len(sources) == 1:
        return f"\n## Validation loss by source\n\nThe validation set has one source (`{sources[0]}`).\n"
    lines = [
        "",
        "## Validation loss by source",
        "",
        "Each source's validation loss (the final evaluation's windows, each counted for the source "
        "its first token falls in), mean over replicates; in brackets the mean difference from the "
        "baseline of the same replicate (run - baseline; negative: guidance helps on that source). "
        "Tokens scored: " + ", ".join(f"{s} {tokens[s]:,}" for s in sources if s in tokens) + ".",
        "",
        "| run | " + " | ".join(sources) + " |",
        "|---|" + "---|" * len(sources),
    ]
    for run, g in finals.groupby("run", sort=False):
        base = baseline_rows(finals, g.iloc[0], baseline)
        guided = (g.base != baseline).all() and comparable(g.iloc[0], base)
        cells = []
        for source in sources:
            mine, diffs = [], []
            for _, r in g.iterrows():
                value = by_replicate.get((run, r.fold, r.seed), {}).get(source)
                if value is None:
                    continue
                mine.append(value)
                ref = base[(base.fold == r.fold) & (base.seed == r.seed)]
                ref = by_replicate.get((ref.run.iloc[0], r.fold, r.seed), {}) if len(ref) else {}
                if guided and source in ref:
                    diffs.append(value - ref[source])
            cell = "-" if not mine else ("≤ " if g.measure.iloc[0] in BOUNDS else "") + f"{np.mean(mine):.4f}"
            cells.append(cell + (f" ({np.mean(diffs):+.4f})" if diffs else ""))
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def fold_plot(curves: pd.DataFrame, finals: pd.DataFrame, baseline: str, path: Path) -> list[str]:
    """With k folds: per run, the validation curve of each fold (mean across seeds) and
    the mean ± std across folds."""
    evals = curves[curves.kind == "eval"]
    if evals.empty or evals.fold.nunique() < 2:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = finals.assign(guided=finals.base != baseline).sort_values(["guided", "run"])
    runs = list(dict.fromkeys(order.run))  # the baseline's runs first
    fig, axes = plt.subplots(1, len(runs), figsize=(3.6 * len(runs), 3.2), sharey=True, squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        per_fold = evals[evals.run == run].groupby(["fold", "step"]).val_loss.mean().unstack("fold")
        for fold in per_fold.columns:
            ax.plot(per_fold.index, per_fold[fold], linewidth=0.9, alpha=0.7, label=fold)
        mean, std = per_fold.mean(axis=1), per_fold.std(axis=1).fillna(0.0)
        ax.plot(mean.index, mean, color="black", linewidth=2.0, label="mean across folds")
        ax.fill_between(mean.index, mean - std, mean + std, color="black", alpha=0.15)
        ax.set_title(run, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation loss")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path.name]


def babylm_leaderboard(finals: pd.DataFrame, folder: Path) -> str:
    """The BabyLM 2025 suite's scores in the leaderboard's layout (mean ± std per run) for
    summary.md, and its per-replicate rows in babylm_leaderboard.csv; "" without suite scores."""
    from sdce.evaluation.babylm_suite import leaderboard_report

    rows, text = leaderboard_report(finals)
    if not rows.empty:
        rows.to_csv(folder / "babylm_leaderboard.csv", index=False, float_format="%.6g")
    return text


def load_milestones(files: list[str]) -> pd.DataFrame:
    rows = []
    for f in files:
        e = read_json(f)
        for m in e["milestones"]:
            rows.append(
                {
                    "run": e["run"],
                    "fold": e.get("fold") or MAIN_PART,
                    "seed": e["seed"],
                    **{k: v for k, v in m.items() if not isinstance(v, dict)},
                }
            )
    return pd.DataFrame(rows)


def learning_curves(milestones: pd.DataFrame, curves: pd.DataFrame, baseline: str, path: Path) -> list[str]:
    """Per guided run, its curves against words seen beside the baseline's (mean +- std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("val_loss", curves[curves.kind == "eval"], "validation loss")]
    if not milestones.empty:
        panels += [
            (c, milestones, c.replace("_", " ")) for c in milestones.columns if c.endswith("_accuracy")
        ]
    guided = sorted(r for r in curves.run.unique() if r != baseline)
    if not guided:
        return []
    fig, axes = plt.subplots(
        len(panels), len(guided), figsize=(3.6 * len(guided), 2.8 * len(panels)), squeeze=False
    )
    for i, (col, data, label) in enumerate(panels):
        for j, run in enumerate(guided):
            ax = axes[i][j]
            for name, color in ((baseline, "black"), (run, "tab:blue")):
                g = data[data.run == name].groupby("words")[col].agg(["mean", "std"]).fillna(0.0)
                ax.plot(
                    g.index,
                    g["mean"],
                    color=color,
                    label=name,
                    marker="o" if data is milestones else None,
                    markersize=3,
                )
                ax.fill_between(g.index, g["mean"] - g["std"], g["mean"] + g["std"], color=color, alpha=0.15)
            ax.set_xscale("symlog", linthresh=max(1.0, float(data.words[data.words > 0].min() or 1)))
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(run, fontsize=9)
            if j == 0:
                ax.set_ylabel(label)
            if i == len(panels) - 1:
                ax.set_xlabel("words seen")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path.name]


def markdown(finals: pd.DataFrame, baseline: str, plots: list[str]) -> str:
    lines = [
        "# Study report",
        "",
        f"Baseline: `{baseline}`. Steps to baseline = the first step (interpolated between evaluations) at "
        "which a run's validation curve reaches the last point of the baseline's curve for the same "
        "replicate (fold and seed); steps saved = baseline steps - that. Mean ± sample std across "
        f"replicates ({_replicates(finals)}). FLOPs to baseline = the model FLOPs (`sdce.flops`: "
        "student training, teacher forward, a cache pass and the teacher's own training) a run has "
        "spent when it reaches that loss, over the baseline's FLOPs for its whole run; below 1 guidance "
        "saves compute. Wall to baseline = the same ratio in training wall seconds (validation and "
        "checkpoints excluded); the jobs shared the machine, so it measures that machine's load as much "
        "as the run: for speed see docs/benchmarks.md. A loss "
        "written ≤ is a masked-diffusion run's negative ELBO, an upper bound on its next-token loss "
        "(so its perplexity is a bound too); it is not compared with the baseline's curve.",
        "",
        "| run | objective | schedule | replicates | final val loss | perplexity | steps to baseline "
        "| steps saved "
        "| reached | FLOPs to baseline | wall to baseline |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run, g in finals.groupby("run", sort=False):
        reached = int(g.steps_to_baseline.notna().sum())
        lines.append(
            f"| {run} | {g.objective.iloc[0]} | {g.schedule.iloc[0] or '-'} | {len(g)} | "
            f"{_loss(g)} | {_loss(g, 'perplexity', '{:.2f}')} | "
            f"{_mean_std(g.steps_to_baseline, '{:.0f}')} | {_mean_std(g.steps_saved, '{:.0f}')} | "
            f"{reached}/{len(g)} | {_mean_std(g.flops_to_baseline, '{:.3f}')} | "
            f"{_mean_std(g.seconds_to_baseline, '{:.2f}')} |"
        )
    acc_cols = [c for c in finals.columns if c.endswith("_accuracy") or c.startswith("babylm2025_")]
    if acc_cols:
        lines += [
            "",
            "## Zero-shot evaluation of the final models",
            "",
            "Every column names the protocol that scored it (`sdce.evaluation.protocols`): `sdce_*` "
            "minimal pairs are macro accuracy over paradigms under sdce's own protocol (BOS-conditioned, "
            "ties score 0.5); `babylm2025_*` are the official BabyLM 2025 pipeline's scores. "
            "Mean ± std across replicates.",
            "",
            "| run | " + " | ".join(acc_cols) + " |",
            "|---|" + "---|" * len(acc_cols),
        ]
        for run, g in finals.groupby("run", sort=False):
            lines.append(f"| {run} | " + " | ".join(_mean_std(g[c], "{:.3f}") for c in acc_cols) + " |")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def job_times(folder: str | None, out: Path) -> str:
    """Where the study's time went: Snakemake's benchmark files (`<rule>/<job>.tsv`, one row
    per job: wall seconds `s`, peak resident memory `max_rss` in MB) summed per rule, into
    job_times.csv and a table; "" without benchmark files."""
    files = sorted(Path(folder).glob("*/*.tsv")) if folder else []
    rows = []
    for f in files:
        table = pd.read_csv(f, sep="\t")
        if not table.empty:
            rss = pd.to_numeric(table.get("max_rss", pd.Series([np.nan])), errors="coerce")
            rows.append({"rule": f.parent.name, "job": f.stem, "seconds": float(table.s.iloc[-1]),
                         "max_rss_mb": float(rss.iloc[-1])})  # fmt: skip
    if not rows:
        return ""
    jobs = pd.DataFrame(rows)
    jobs.to_csv(out / "job_times.csv", index=False, float_format="%.6g")
    per_rule = jobs.groupby("rule").agg(
        jobs=("job", "size"), total=("seconds", "sum"), mean=("seconds", "mean"), longest=("seconds", "max"),
        rss=("max_rss_mb", "max"),
    ).sort_values("total", ascending=False)  # fmt: skip
    lines = [
        "",
        "## Where the time went",
        "",
        f"Snakemake's `benchmark:` files of the {len(jobs)} jobs that have run (wall seconds; jobs "
        f"ran side by side, so the sum, {jobs.seconds.sum():.0f} s, exceeds the study's wall time).",
        "",
        "| rule | jobs | total s | mean s | longest s | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for rule, r in per_rule.iterrows():
        rss = "-" if pd.isna(r.rss) else f"{r.rss:.0f}"
        lines.append(
            f"| {rule} | {int(r.jobs)} | {r.total:.1f} | {r['mean']:.1f} | {r.longest:.1f} | {rss} |"
        )
    return "\n".join(lines) + "\n"


def _band_plot(
    curves: pd.DataFrame, kind: str, column: str, path: Path, title: str, tail: float | None, baseline: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = curves[(curves.kind == kind) & curves[column].notna()] if column in curves else curves.iloc[0:0]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    max_step = data.step.max() if not data.empty else 0
    lo = max_step * (1 - tail) if tail else 0
    bounds = set(curves.attrs.get("bounds", ()))
    for run, g in data.groupby("run", sort=True):
        stats = g[g.step >= lo].groupby("step")[column].agg(["mean", "std"]).fillna(0.0)
        style = {"color": "black", "linewidth": 2.0} if run == baseline else {"linewidth": 1.3}
        if run in bounds and kind == "eval":
            style["linestyle"] = "--"
        label = f"{run} (ELBO, a bound)" if run in bounds and kind == "eval" else run
        ax.plot(stats.index, stats["mean"], label=label, **style)
        ax.fill_between(
            stats.index,
            stats["mean"] - stats["std"],
            stats["mean"] + stats["std"],
            alpha=0.2,
            color=style.get("color"),
        )
    ax.set_xlabel("step")
    ax.set_ylabel(column)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_report(
    summaries: list[str],
    eval_files: list[str],
    baseline: str,
    out_dir: str,
    tail_fraction: float,
    milestone_files: list[str] | None = None,
    grid: dict | None = None,
    benchmarks: str | None = None,
    sample_files: list[str] | None = None,
    ppo_files: list[str] | None = None,
) -> pd.DataFrame:
    curves, finals = load_runs(summaries, eval_files)
    finals = attach_grid(finals, grid)
    axes = finals.attrs["axes"]
    finals = add_steps_to_baseline(curves, finals, baseline)
    finals.attrs["axes"] = axes
    curves.attrs["bounds"] = sorted(finals[finals.measure.isin(BOUNDS)].run.unique())
    plots = [
        ("val_loss.png", "eval", "val_loss", "Validation loss (mean ± std across seeds)", None),
        ("val_loss_tail.png", "eval", "val_loss", "Validation loss, tail", tail_fraction),
        ("train_loss.png", "train", "ce", "Training cross-entropy (mean ± std across seeds)", None),
        ("train_loss_tail.png", "train", "ce", "Training cross-entropy, tail", tail_fraction),
        ("guidance_weight.png", "train", "weight", "Guidance weight w(t)", None),
    ]
    with atomic_dir(out_dir) as tmp:
        for name, kind, col, title, tail in plots:
            _band_plot(curves, kind, col, tmp / name, title, tail, baseline)
        milestones = load_milestones(milestone_files or [])
        extra = learning_curves(milestones, curves, baseline, tmp / "learning_curves.png")
        if not milestones.empty:
            milestones.to_csv(tmp / "milestones.csv", index=False, float_format="%.6g")
        finals.to_csv(tmp / "summary.csv", index=False, float_format="%.6g")
        table = comparisons(finals, baseline)
        table.to_csv(tmp / "comparisons.csv", index=False, float_format="%.6g")
        (tmp / "headline.md").write_text(headline(finals, table, baseline))
        extra += axis_plots(finals, tmp)
        extra += fold_plot(curves, finals, baseline, tmp / "val_loss_by_fold.png")
        text = (
            markdown(finals, baseline, [p[0] for p in plots] + extra)
            + comparisons_markdown(table)
            + axis_tables(finals)
            + fold_tables(finals)
            + source_losses(finals, eval_files, baseline)
            + babylm_leaderboard(finals, tmp)
            + job_times(benchmarks, tmp)
            + samples_markdown(sample_files or [], tmp)
            + ppo_markdown(ppo_files or [], tmp)
        )
        (tmp / "summary.md").write_text(text)
    return finals


def samples_markdown(files: list[str], out: Path) -> str:
    """Sample generations per run (`sdce generate` at the final checkpoint, fixed prompts and
    seed), as a section of summary.md and as samples.md."""
    if not files:
        return ""
    intro = "Final checkpoints, the config's fixed prompts and seed (`generation`); the prompt in bold."
    lines = ["", "## Sample generations", "", intro, ""]
    for f in sorted(files):
        path = Path(f)
        run, fold, seed = path.parts[-3], path.parts[-2], path.name.split(".")[0]
        lines.append(f"**{run}** ({fold}, {seed}):")
        lines.append("")
        for line in path.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            completion = " ".join(r["completion"].split())  # one line per sample
            lines.append(f"* **{r['prompt'] or '(document start)'}** {completion}")
        lines.append("")
    text = "\n".join(lines) + "\n"
    (out / "samples.md").write_text(text.lstrip("\n"), encoding="utf-8")
    return text


PPO_PANELS = (("reward", "reward"), ("kl", "KL to the reference"), ("response_length", "response tokens"))


def ppo_plot(curves: dict[str, pd.DataFrame], path: Path) -> None:
    """Reward, KL to the reference and response length over the PPO steps, a line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PPO_PANELS), figsize=(12, 3.6))
    for ax, (column, label) in zip(axes, PPO_PANELS, strict=True):
        for run, df in sorted(curves.items()):
            if column in df and df[column].notna().any():
                ax.plot(df.step, df[column], label=run, linewidth=1.3)
        ax.set_xlabel("PPO step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ppo_window(values: pd.Series, last: bool) -> float:
    """The mean over the first (or last) tenth of the steps, at least one: one step is noisy."""
    n = max(1, len(values) // 10)
    return float((values.iloc[-n:] if last else values.iloc[:n]).mean())


def ppo_markdown(files: list[str], out: Path) -> str:
    """The PPO section of summary.md (`sdce ppo` outputs: <run>/ppo_metrics.jsonl, with
    samples.jsonl beside it) and ppo.png; "" without PPO runs."""
    if not files:
        return ""
    curves = {Path(f).parent.name: pd.read_json(f, lines=True) for f in files}
    ppo_plot(curves, out / "ppo.png")
    lines = ["", "## PPO post-training", ""]
    lines += [
        "Each run's final model (first fold and seed) post-trained with TRL's PPO (`ppo`); reward, "
        "KL and response tokens are means over the first and the last tenth of the steps. Plot: ppo.png.",
        "",
        "| run | steps | reward first | reward last | KL last | response tokens first | last |",
        "|---|---|---|---|---|---|---|",
    ]
    for run, df in sorted(curves.items()):
        lengths = df.get("response_length", pd.Series(dtype=float)).dropna()
        first, last = (f"{_ppo_window(lengths, x):.1f}" if len(lengths) else "-" for x in (False, True))
        lines.append(
            f"| {run} | {len(df)} | {_ppo_window(df.reward, False):.4f} | {_ppo_window(df.reward, True):.4f} "
            f"| {_ppo_window(df.kl, True):.3f} | {first} | {last} |"
        )
    for f in sorted(files):
        samples = Path(f).with_name("samples.jsonl")
        if not samples.is_file():
            continue
        records = [json.loads(x) for x in samples.read_text(encoding="utf-8").splitlines()]
        lines += ["", f"**{Path(f).parent.name}**, the same prompts and seed before and after (reward):", ""]
        for r in records:
            text = f"**{r['prompt'] or '(document start)'}** {' '.join(r['completion'].split())}"
            lines.append(f"* {r['stage']} ({r['reward']:.3f}): {text}")
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- headline: written by `make readme-table` from the report -->", "<!-- /headline -->"


def insert_headline(report_dir: str | Path, document: str | Path) -> None:
    """Replace the block between the headline markers of `document` (the README) with the
    report's headline.md, so the README's table is the report's, not typed by hand."""
    document = Path(document)
    text = document.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise ValueError(f"{document} has no headline markers ({BEGIN} ... {END})")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    table = (Path(report_dir) / "headline.md").read_text(encoding="utf-8")
    document.write_text(f"{head}{BEGIN}\n{table}{END}{tail}", encoding="utf-8")
