"""Collects finished runs into a markdown report in Li & Liang's (2021) layout, with PNG plots.

  python -m prefix_jax.report --runs=workdir/webnlg_small_table --out=reports/webnlg_small

Every directory under --runs with a `config.json` (training writes it) is a run. Read
when present: `summary.json` (parameter counts, best dev loss), `metrics.jsonl` (loss
curves) and `generations/<split>_metrics.json` (scores, `metrics.paper`). What a run
lacks shows as "–" and is left out of plots; nothing is required beyond the config.

  report.md                    per data set: a table (columns as metrics.paper lays
                               them out) for the full-data runs and one per training-set
                               size, one row per method, the mean over seeds (and how many
                               diverged: dev loss higher after training than before); then its plots:
  <data>_prefix_length.png     dev metric against prefix length, a line per prefix kind (section 7.1)
  <data>_training_size.png     dev metric against training-set size, mean and spread over
                               seeds, a line per method (section 6.3: prefix vs fine-tuning)
  <data>_training_curves.png   train and dev loss against step of the full-data runs
  sample generations           with --samples=RUN,RUN: those runs' outputs side by side on
                               inputs of unseen categories
The plots show dev BLEU (all categories) where runs have it, and the best dev loss.
"""

import argparse
import collections
import dataclasses
import json
import os
from typing import Callable, Optional

import numpy as np

from prefix_jax.data import pipeline
from prefix_jax.metrics import paper


@dataclasses.dataclass
class Run:
    name: str
    config: dict
    summary: dict  # {} before the run finished.
    result: Optional[dict]  # metrics.paper.evaluate's output; None before decoding.
    curve: list  # metrics.jsonl records.
    generations: list = dataclasses.field(default_factory=list)  # generations/<split>.jsonl records.

    @property
    def size(self) -> int:
        """Training inputs (0 = all)."""
        return self.config["data"]["num_train"]

    @property
    def layout(self) -> str:
        return self.result["layout"] if self.result else paper.layout_name(self.config["data"]["name"])

    @property
    def diverged(self) -> bool:
        """Kept in the means; the tables count such runs."""
        return diverged(self.summary)

    def score(self, key: str, subset: str = "all") -> Optional[float]:
        """A metric as stored (the data set's script's scale), or None where absent."""
        if not self.result:
            return None
        scores = self.result["scores"]
        if paper.LAYOUTS[self.result["layout"]].by_seen:
            scores = scores.get(subset)
        return None if scores is None else scores.get(key)


def diverged(summary: dict) -> bool:
    """A run's summary.json says its dev loss rose in training (a resumed run has no "before")."""
    before, after = summary.get("dev_loss_before"), summary.get("dev_loss_after")
    return before is not None and after is not None and after > before


def _read_json(path: str, default):
    if not os.path.isfile(path):
        return default
    with open(path) as f:
        return json.load(f)


def _read_jsonl(path: str) -> list:
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def load_runs(runs_dir: str, split: str = "dev") -> list[Run]:
    """Every run under `runs_dir` (any depth), sorted by name."""
    runs = []
    for directory, _, files in sorted(os.walk(runs_dir)):
        if "config.json" not in files:
            continue
        runs.append(Run(
            name=os.path.relpath(directory, runs_dir),
            config=_read_json(os.path.join(directory, "config.json"), None),
            summary=_read_json(os.path.join(directory, "summary.json"), {}),
            result=_read_json(os.path.join(directory, "generations", f"{split}_metrics.json"), None),
            curve=_read_jsonl(os.path.join(directory, "metrics.jsonl")),
            generations=_read_jsonl(os.path.join(directory, "generations", f"{split}.jsonl")),
        ))
    if not runs:
        raise FileNotFoundError(f"No runs under {runs_dir!r}: no directory there holds a config.json.")
    return runs


def family(config: dict) -> str:
    """The method without its length: FT, FT-top2, Adapter (r=32), Prefix (kv), EMB, Infix;
    a prefix initialised from words says so: Prefix (kv, words)."""
    train, prefix = config["train"], config["prefix"]
    if train["mode"] == "full":
        return "FT"
    if train["mode"] == "top_k":
        return f"FT-top{train['top_k']}"
    if train["mode"] == "adapter":
        return f"Adapter (r={config['model']['adapter_dim']})"
    name = {"kv": "Prefix (kv)", "hidden": "Prefix (hidden)", "prompt": "EMB", "infix": "Infix"}[prefix["kind"]]
    if prefix.get("init") == "words":  # Li & Liang's Fig. 5: initialised from real words' activations.
        name = name[:-1] + ", words)" if name.endswith(")") else name + " (words)"
    return name


def method(config: dict) -> str:
    """A table row's name: the family, with the length for prefix kinds (Prefix-10 (kv), EMB-1)."""
    name = family(config)
    if config["train"]["mode"] != "prefix":
        return name
    word, _, rest = name.partition(" ")
    return f"{word}-{config['prefix']['length']}" + (f" {rest}" if rest else "")


_ORDER = ("FT", "FT-top", "Adapter", "Prefix", "EMB", "Infix")


def _row_order(config: dict) -> tuple:
    """The paper's order of methods, then shorter prefixes first."""
    name = family(config)
    rank = next(i for i, start in enumerate(_ORDER + ("",)) if name.startswith(start))
    return rank, name, config["prefix"]["length"] if config["train"]["mode"] == "prefix" else 0


def _mean(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _format(value: Optional[float], digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _share(summary: dict) -> float:
    """% of the base's parameters a run adds or changes: for prefixes what is served (Li &
    Liang's count; the reparameterisation MLP only exists during training), else what trains."""
    if "prefix_params" in summary:
        return 100 * summary["prefix_params"]["served_share_of_base"]
    return 100 * summary["trainable_params"] / summary["base_params"]


def table(runs: list[Run], layout: str) -> str:
    """Markdown: one row per method (mean over its runs), columns as the paper lays them out,
    after the share of parameters, the training time (minutes, mean) and the best dev loss.
    The runs column says how many of them diverged, so a mean pulled down by one shows why."""
    spec = paper.LAYOUTS[layout]
    subsets = (("S", "seen"), ("U", "unseen"), ("A", "all")) if spec.by_seen else (("", "all"),)
    columns = [(f"{c.header} {s}".strip(), c, subset) for c in spec.columns for s, subset in subsets]
    header = ["Method", "runs", "% params", "train min", "dev loss"] + [name for name, _, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    groups = collections.defaultdict(list)
    for run in runs:
        groups[method(run.config)].append(run)
    for name in sorted(groups, key=lambda name: _row_order(groups[name][0].config)):
        members = groups[name]
        share = _mean([_share(r.summary) for r in members if r.summary])
        minutes = _mean(r.summary.get("train_seconds", 0) / 60 if r.summary else None for r in members)
        diverged = sum(r.diverged for r in members)
        count = f"{len(members)}" + (f" ({diverged} diverged)" if diverged else "")
        cells = [name, count, _format(share, 2), _format(minutes, 1),
                 _format(_mean(r.summary.get("best_dev_loss") for r in members), 3)]
        for _, column, subset in columns:
            value = _mean(r.score(column.key, subset) for r in members)
            cells.append(_format(None if value is None else value * column.scale, column.digits))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


Metric = tuple[str, Callable[[Run], Optional[float]]]  # (label, a run's value or None)


def dev_metrics(runs: list[Run]) -> list[Metric]:
    """What the plots show: BLEU over all inputs where any run has it, and the best dev loss
    (at small scale BLEU sits near its floor and is noisy; the loss still ranks runs)."""
    loss = ("best dev loss", lambda r: r.summary.get("best_dev_loss"))
    if any(r.score("bleu") is not None for r in runs):
        return [("dev BLEU", lambda r: r.score("bleu")), loss]
    return [loss]


def _lines(runs: list[Run], x: Callable[[Run], float], metric: Metric) -> tuple[str, dict]:
    """(metric label, {family: (xs, means, stds)}) over runs that have the metric."""
    label, value = metric
    points = collections.defaultdict(lambda: collections.defaultdict(list))
    for run in runs:
        if (v := value(run)) is not None:
            points[family(run.config)][x(run)].append(v)
    lines = {}
    for name, by_x in sorted(points.items()):
        xs = sorted(by_x)
        lines[name] = (xs, [np.mean(by_x[k]) for k in xs], [np.std(by_x[k]) for k in xs])
    return label, lines


def _plot(path: str, panels: list[tuple[str, dict]], xlabel: str, title: str, log_x: bool = False) -> None:
    """One panel per (metric label, lines) that has lines: mean, spread over seeds as error bars."""
    panels = [(label, lines) for label, lines in panels if lines]
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for axis, (label, lines) in zip(axes[0], panels):
        for name, (xs, means, stds) in lines.items():
            axis.errorbar(xs, means, yerr=stds if any(stds) else None, marker="o", capsize=3, label=name)
        if log_x:
            axis.set_xscale("log")
        axis.set(xlabel=xlabel, ylabel=label, title=label)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_curves(runs: list[Run], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for run in runs:
        for axis, key in zip(axes, ("train/loss", "dev/loss")):
            points = [(r["step"], r[key]) for r in run.curve if key in r]
            if points:
                axis.plot(*zip(*points), label=run.name, marker="." if key == "dev/loss" else None)
    for axis, key in zip(axes, ("train loss", "dev loss")):
        axis.set(xlabel="step", ylabel=key, title=key)
    axes[1].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def samples(runs: list[Run], count: int) -> str:
    """Markdown: `count` inputs of unseen categories (all inputs where none is unseen) that
    every run decoded, evenly spaced, each with its first reference and every run's output."""
    by_run = [{g["source"]: g for g in run.generations} for run in runs]
    shared = [g for g in runs[0].generations if all(g["source"] in generations for generations in by_run)]
    pool = [g for g in shared if g.get("seen") is False] or shared
    lines = []
    for g in pipeline.spread(pool, count):
        lines += [f"* **{g.get('category') or 'input'}**: `{g['source'].strip()}`",
                  f"  * reference: {g['references'][0]}" if g["references"] else "  * reference: –"]
        lines += [f"  * {run.name}: {generations[g['source']]['generation']}" for run, generations in zip(runs, by_run)]
    return "\n".join(lines) + "\n"


def _section(runs: list[Run], layout: str, out_dir: str, sample_runs: tuple = ()) -> list[str]:
    """Markdown parts for one data set: tables by training-set size, then plots."""
    full, sizes = [r for r in runs if r.size == 0], [r for r in runs if r.size > 0]
    parts = [f"## {layout}\n"]
    if full:
        parts += ["### Full training data\n", table(full, layout)]
    for size in sorted({r.size for r in sizes}):
        parts += [f"### {size} training inputs\n", table([r for r in sizes if r.size == size], layout)]
    prefixes = [r for r in full if r.config["train"]["mode"] == "prefix"]
    panels = [_lines(prefixes, lambda r: r.config["prefix"]["length"], m) for m in dev_metrics(prefixes)]
    if any(len(xs) > 1 for _, lines in panels for xs, _, _ in lines.values()):
        _plot(os.path.join(out_dir, f"{layout}_prefix_length.png"), panels, "prefix length",
              f"{layout}: dev metrics vs prefix length")
        parts.append(f"### Prefix length\n\n![dev metric vs prefix length]({layout}_prefix_length.png)\n")
    panels = [_lines(sizes, lambda r: r.size, m) for m in dev_metrics(sizes)]
    if any(lines for _, lines in panels):
        _plot(os.path.join(out_dir, f"{layout}_training_size.png"), panels, "training inputs",
              f"{layout}: dev metrics vs training-set size (mean and std over seeds)", log_x=True)
        parts.append(f"### Training-set size\n\n![dev metric vs training-set size]({layout}_training_size.png)\n")
    if curves := [r for r in full if r.curve]:
        plot_curves(curves, os.path.join(out_dir, f"{layout}_training_curves.png"))
        parts.append(f"### Training curves\n\n![train and dev loss]({layout}_training_curves.png)\n")
    named = {r.name: r for r in runs if r.generations}
    if chosen := [named[name] for name in sample_runs if name in named]:
        parts += ["### Sample generations\n", samples(chosen, count=6)]
    return parts


def write(runs_dir: str, out_dir: str, split: str = "dev", sample_runs: tuple = ()) -> str:
    """Writes report.md and its plots into `out_dir`; returns report.md's path. `sample_runs`:
    the runs whose generations are shown side by side (`samples`)."""
    runs = load_runs(runs_dir, split)
    os.makedirs(out_dir, exist_ok=True)
    parts = [f"# Report: {os.path.normpath(runs_dir)} ({split})\n",
             f"{len(runs)} runs. Scores are means over each method's runs; \"–\": not available "
             "(not decoded, or the metric was not computed). % params: served prefix / base for prefixes, "
             "trainable / base otherwise.\n"]
    for layout in sorted({r.layout for r in runs}):
        parts += _section([r for r in runs if r.layout == layout], layout, out_dir, sample_runs)
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(parts))
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, help="Directory holding run workdirs (any depth).")
    parser.add_argument("--out", required=True, help="Directory for report.md and its PNG plots.")
    parser.add_argument("--split", default="dev", help="Which generations/<split>_metrics.json to read.")
    parser.add_argument("--samples", default="", help="Runs (comma-separated names) whose generations are shown "
                        "side by side on unseen inputs.")
    args = parser.parse_args(argv)
    print(write(args.runs, args.out, args.split, tuple(filter(None, args.samples.split(",")))))


if __name__ == "__main__":
    main()
