"""Runs a table of experiment rows, one `prefix_jax.main` command each: the runner behind
experiments/webnlg_small_table.py and experiments/webnlg_smollm2_table.py.

Without --run it prints the commands; with --run it runs them in turn, skipping finished
ones (a workdir with summary.json); a killed run resumes from its latest checkpoint when
rerun. --only picks the runs whose name starts with the given text, --names the runs named
(comma-separated, exact); --options appends to every run's config argument (paper=1).
--export=DIR writes the trained prefix of every finished prefix run to DIR/<name> (`export`:
a PEFT adapter, or prefix_file's format for EMB and infix); --collect=DIR copies what the
report reads (config, summary, curves, generations; no checkpoints) to DIR/<name>;
--verify=DIR imports each finished prefix run's exported prefix from DIR/<name> into a new
temporary workdir, decodes it, and fails unless its generations are the run's (the run may
be a collected copy: only its generations are read).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from prefix_jax import prefix_file

REPORT_FILES = ("config.json", "summary.json", "metrics.jsonl", "generations")


def command(config_file: str, name: str, arg: str, root: str, overrides=(), action=()) -> list[str]:
    return [sys.executable, "-m", "prefix_jax.main", *action, f"--config={config_file}:{arg}",
            f"--workdir={os.path.join(root, name)}", *overrides]


def _is_prefix_run(workdir: str) -> bool:
    with open(os.path.join(workdir, "config.json")) as f:
        return json.load(f)["train"]["mode"] == "prefix"


def _collect(workdir: str, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    for name in REPORT_FILES:
        source = os.path.join(workdir, name)
        if os.path.isdir(source):
            shutil.copytree(source, os.path.join(out, name), dirs_exist_ok=True)
        elif os.path.isfile(source):
            shutil.copy2(source, out)


def _scores(workdir: str) -> dict:
    with open(os.path.join(workdir, "generations", "dev_metrics.json")) as f:
        return json.load(f)["scores"]


def _generations(workdir: str) -> str:
    with open(os.path.join(workdir, "generations", "dev.txt")) as f:
        return f.read()


def verify(config_file: str, name: str, arg: str, root: str, overrides, prefix_dir: str) -> dict:
    """Imports `prefix_dir` (what `export` wrote for run `name`) into a new workdir and decodes
    it as the run was decoded; returns the scores, after checking that the generations (and so
    the scores) are the run's."""
    kind = "kv"  # PEFT holds K/V: kv as is, hidden compiled.
    if prefix_file.is_prefix_dir(prefix_dir):
        with open(os.path.join(prefix_dir, prefix_file.CONFIG)) as f:
            kind = json.load(f)["kind"]
    imported_root = tempfile.mkdtemp(prefix="verify_")
    flags = [*overrides, f"--config.prefix.kind={kind}", "--config.prefix.reparam_dim=0"]
    for action, extra in ((["import"], [f"--adapter={prefix_dir}"]), (["decode"], [])):
        subprocess.run(command(config_file, name, arg, imported_root, [*flags, *extra], action),
                       check=True, stdout=subprocess.DEVNULL)
    run, imported = os.path.join(root, name), os.path.join(imported_root, name)
    want, got = _scores(run), _scores(imported)
    if got != want or _generations(run) != _generations(imported):
        raise SystemExit(f"{name}: the prefix in {prefix_dir} decodes otherwise than the run did (scores {got}, "
                         f"the run's {want}; generations in {imported}).")
    print(f"{name}: {prefix_dir} reproduces the run's generations and scores {want} ({imported}).")
    return got


def main(argv, *, doc: str, config_file: str, runs: dict[str, str], root: str) -> None:
    """runs: {run name (its workdir under the root): config argument}."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=root, help="Each run's workdir is <root>/<name>.")
    parser.add_argument("--run", action="store_true", help="Run the commands instead of printing them.")
    parser.add_argument("--only", default="", help="Only the runs whose name starts with this.")
    parser.add_argument("--names", default="", help="Only these runs (comma-separated names).")
    parser.add_argument("--options", default="", help="Appended to every run's config argument (e.g. paper=1).")
    parser.add_argument("--export", default="", help="Export each finished prefix run's prefix to <DIR>/<name>.")
    parser.add_argument("--collect", default="", help="Copy each finished run's report files to <DIR>/<name>.")
    parser.add_argument("--verify", default="", help="Check that <DIR>/<name> (exported prefixes) decode to the runs' scores.")
    parser.add_argument("overrides", nargs="*", help="--config.x=y flags passed to every run (after --).")
    args = parser.parse_args(argv)
    names = set(filter(None, args.names.split(",")))
    if names - set(runs):
        parser.error(f"--names: no run called {sorted(names - set(runs))}; the runs are {sorted(runs)}.")
    for name, arg in runs.items():
        if not name.startswith(args.only) or (names and name not in names):
            continue
        arg = f"{arg},{args.options}" if args.options else arg
        workdir, cmd = os.path.join(args.root, name), command(config_file, name, arg, args.root, args.overrides)
        finished = os.path.exists(os.path.join(workdir, "summary.json"))
        if not args.run:
            print(" ".join(cmd))
            continue
        if finished:
            print(f"{name}: finished, skipped.")
        else:
            subprocess.run(cmd, check=True)
        prefix_run = bool(args.export or args.verify) and _is_prefix_run(workdir)
        if args.export and prefix_run:
            out = os.path.join(args.export, name)
            subprocess.run(command(config_file, name, arg, args.root, [*args.overrides, f"--out={out}"], ["export"]),
                           check=True, stdout=subprocess.DEVNULL)
        if args.collect:
            _collect(workdir, os.path.join(args.collect, name))
        if args.verify and prefix_run:
            verify(config_file, name, arg, args.root, args.overrides, os.path.join(args.verify, name))
