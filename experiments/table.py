"""Runs a table of experiment rows, one `prefix_jax.main` command each: the runner behind
experiments/webnlg_small_table.py and experiments/webnlg_smollm2_table.py.

Without --run it prints the commands; with --run it runs them in turn, skipping finished
ones (a workdir with summary.json); a killed run resumes from its latest checkpoint when
rerun. --only picks the runs whose name starts with the given text, --names the runs named
(comma-separated, exact).
"""

import argparse
import os
import subprocess
import sys


def command(config_file: str, name: str, arg: str, root: str, overrides=()) -> list[str]:
    return [sys.executable, "-m", "prefix_jax.main", f"--config={config_file}:{arg}",
            f"--workdir={os.path.join(root, name)}", *overrides]


def main(argv, *, doc: str, config_file: str, runs: dict[str, str], root: str) -> None:
    """runs: {run name (its workdir under the root): config argument}."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=root, help="Each run's workdir is <root>/<name>.")
    parser.add_argument("--run", action="store_true", help="Run the commands instead of printing them.")
    parser.add_argument("--only", default="", help="Only the runs whose name starts with this.")
    parser.add_argument("--names", default="", help="Only these runs (comma-separated names).")
    parser.add_argument("overrides", nargs="*", help="--config.x=y flags passed to every run (after --).")
    args = parser.parse_args(argv)
    names = set(filter(None, args.names.split(",")))
    if names - set(runs):
        parser.error(f"--names: no run called {sorted(names - set(runs))}; the runs are {sorted(runs)}.")
    for name, arg in runs.items():
        if not name.startswith(args.only) or (names and name not in names):
            continue
        cmd = command(config_file, name, arg, args.root, args.overrides)
        if not args.run:
            print(" ".join(cmd))
        elif os.path.exists(os.path.join(args.root, name, "summary.json")):
            print(f"{name}: finished, skipped.")
        else:
            subprocess.run(cmd, check=True)
