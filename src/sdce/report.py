"""The study report: how many steps guidance saves, and whether that is stable.

Inputs are self-describing runs (`summary.json` names run, fold and seed; the
`metrics.jsonl` beside it holds the curves) and evaluation JSONs. A replicate is a
(fold, seed) pair: fold `main` without k-fold splits. Outputs:

    summary.csv   one row per run and replicate
    summary.md    per-run mean +- std across replicates, steps saved, plot index
    *.png         validation / training loss against steps (mean +- std bands),
                  their tails, and the guidance weight; per-fold curves with k folds
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

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
        e = evals.get((run, fold, seed), {})
        finals.append(
            {
                "run": run,
                "fold": fold,
                "seed": seed,
                "objective": s["objective"],
                "schedule": s.get("schedule", ""),
                "steps": s["steps"],
                "final_val_loss": e.get("val_loss", s["final_val_loss"]),
                # the last point of the training-time validation curve (steps to baseline
                # compare curves with it: the evaluation job may score more tokens)
                "curve_final_val_loss": s["final_val_loss"],
                "perplexity": e.get("perplexity", s["final_val_ppl"]),
                "tokens_per_s": float(np.median(tps)) if tps else float("nan"),
                **{k: v for k, v in e.items() if k.endswith("_accuracy") or k.startswith("babylm_")},
            }
        )
    finals = pd.DataFrame(finals).sort_values(["run", "fold", "seed"]).reset_index(drop=True)
    return pd.DataFrame(curves), finals


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
    reach, saved = [], []
    for _, row in finals.iterrows():
        # the baseline of the same replicate: same fold (same validation set) and seed
        base = baseline_rows(finals, row, baseline).set_index(["fold", "seed"])
        key = (row.fold, row.seed)
        target = base.curve_final_val_loss.get(key, base.curve_final_val_loss.mean())
        c = evals[(evals.run == row.run) & (evals.fold == row.fold) & (evals.seed == row.seed)]
        c = c.sort_values("step")
        s = steps_to_reach(c.step.to_numpy(), c.val_loss.to_numpy(), target)
        reach.append(s)
        saved.append(float(base.steps.get(key, base.steps.mean())) - s if not math.isnan(s) else float("nan"))
    finals["steps_to_baseline"] = reach
    finals["steps_saved"] = saved
    return finals


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
    base_tps = finals[finals.base == baseline].tokens_per_s.mean()
    lines = [
        "# Study report",
        "",
        f"Baseline: `{baseline}`. Steps to baseline = the first step (interpolated between evaluations) at "
        "which a run's validation curve reaches the last point of the baseline's curve for the same "
        "replicate (fold and seed); steps saved = baseline steps - that. Mean ± sample std across "
        f"replicates ({_replicates(finals)}).",
        "",
        "| run | objective | schedule | replicates | final val loss | perplexity | steps to baseline "
        "| steps saved "
        "| reached | tokens/s vs baseline |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run, g in finals.groupby("run", sort=False):
        reached = int(g.steps_to_baseline.notna().sum())
        lines.append(
            f"| {run} | {g.objective.iloc[0]} | {g.schedule.iloc[0] or '-'} | {len(g)} | "
            f"{_mean_std(g.final_val_loss)} | {_mean_std(g.perplexity, '{:.2f}')} | "
            f"{_mean_std(g.steps_to_baseline, '{:.0f}')} | {_mean_std(g.steps_saved, '{:.0f}')} | "
            f"{reached}/{len(g)} | {g.tokens_per_s.mean() / base_tps:.3f} |"
        )
    acc_cols = [c for c in finals.columns if c.endswith("_accuracy") or c.startswith("babylm_")]
    if acc_cols:
        lines += [
            "",
            "## Zero-shot evaluation of the final models",
            "",
            "Minimal pairs: macro accuracy over paradigms (ties score 0.5). Mean ± std across replicates.",
            "",
            "| run | " + " | ".join(acc_cols) + " |",
            "|---|" + "---|" * len(acc_cols),
        ]
        for run, g in finals.groupby("run", sort=False):
            lines.append(f"| {run} | " + " | ".join(_mean_std(g[c], "{:.3f}") for c in acc_cols) + " |")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


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
    for run, g in data.groupby("run", sort=True):
        stats = g[g.step >= lo].groupby("step")[column].agg(["mean", "std"]).fillna(0.0)
        style = {"color": "black", "linewidth": 2.0} if run == baseline else {"linewidth": 1.3}
        ax.plot(stats.index, stats["mean"], label=run, **style)
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
) -> pd.DataFrame:
    curves, finals = load_runs(summaries, eval_files)
    finals = attach_grid(finals, grid)
    axes = finals.attrs["axes"]
    finals = add_steps_to_baseline(curves, finals, baseline)
    finals.attrs["axes"] = axes
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
        extra += axis_plots(finals, tmp)
        extra += fold_plot(curves, finals, baseline, tmp / "val_loss_by_fold.png")
        text = (
            markdown(finals, baseline, [p[0] for p in plots] + extra)
            + axis_tables(finals)
            + fold_tables(finals)
            + babylm_leaderboard(finals, tmp)
        )
        (tmp / "summary.md").write_text(text)
    return finals
