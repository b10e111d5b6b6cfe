"""Every run of the small-scale WebNLG comparison (experiments/webnlg_small_row.py), one command each.

  python -m experiments.webnlg_small_table                 # prints the commands, one a line
  python -m experiments.webnlg_small_table --run           # runs them in turn; finished ones are skipped
  python -m experiments.webnlg_small_table --run --only=prefix-kv   # those whose name starts so
  python -m prefix_jax.report --runs=workdir/webnlg_small_table --out=reports/webnlg_small

Runs (WebNLG dev; 37 in all):
  table    every method of webnlg_small_row.py on all training data        (Table 1; sections 7.2, 7.3)
  length   prefix-kv with prefix lengths 1, 5, 10, 20, 40                  (section 7.1)
  size     prefix-kv and ft on 50, 100, 200, 500 training inputs, seeds 0-2 (section 6.3)
Killed runs resume when their command is rerun (the loop restores the latest checkpoint).
Result: all 37 ran on 2 CPU cores, two at a time pinned to one core each (taskset),
about 23-29 min per full-data run and 5 min per low-data run; reports/webnlg_small has
the report, plots and per-run times.
"""

from experiments import table, webnlg_small_row

CONFIG = "experiments/webnlg_small_row.py"
LENGTHS = (1, 5, 10, 20, 40)
SIZES = (50, 100, 200, 500)
SEEDS = (0, 1, 2)


def runs() -> dict[str, str]:
    """{run name: config argument}; the name is also the run's workdir under the root."""
    rows = {method: method for method in webnlg_small_row.METHODS}
    lengths = {f"prefix-kv_length{n}": f"prefix-kv,length={n}" for n in LENGTHS if n != 10}  # 10: the table's row.
    sizes = {
        f"{method}_size{size}_seed{seed}": f"{method},size={size},seed={seed}"
        for method in ("prefix-kv", "ft") for size in SIZES for seed in SEEDS
    }
    return {**rows, **lengths, **sizes}


if __name__ == "__main__":
    table.main(None, doc=__doc__, config_file=CONFIG, runs=runs(), root="workdir/webnlg_small_table")
