"""Every run of the WebNLG comparison on SmolLM2-135M (experiments/webnlg_smollm2_row.py), one command each.

  python -m experiments.webnlg_smollm2_table                 # prints the commands, one a line
  python -m experiments.webnlg_smollm2_table --run           # runs them in turn; finished ones are skipped
  python -m experiments.webnlg_smollm2_table --run --only=prefix-kv   # those whose name starts so
  python -m experiments.webnlg_smollm2_table --run --names=ft,emb-10  # those named
  python -m prefix_jax.report --runs=workdir/webnlg_smollm2_table --out=reports/webnlg_smollm2

Runs (seen + unseen evaluation; 37 in all), in the order they are worth running:
  table    every method of webnlg_smollm2_row.py on all training data   (Table 1; Table 5: EMB, infix)
  length   prefix-kv with prefix lengths 1, 5, 20, 40 (10 is the table's) (Fig. 4)
  size     prefix-kv and ft on 50, 100, 200, 500 training inputs, seeds 0-1 (Fig. 3)
  words    prefix-kv on those sizes and seeds, initialised from "table-to-text:" (Fig. 5)
A GPU runs the full-data rows at the paper's epochs with launch/webnlg_smollm2_gpu.sh.
Result: all 37 ran (2 CPU cores, one at a time, 3 to 14 minutes of training each plus
~2.5 to 4 minutes of loading and decoding; prefix-kv_size500_seed1 diverged);
reports/webnlg_smollm2 has their report, the commands that made it, and the paper's claims
against them.
"""

from experiments import table, webnlg_smollm2_row

CONFIG = "experiments/webnlg_smollm2_row.py"
LENGTHS = (1, 5, 20, 40)
SIZES = (50, 100, 200, 500)
SEEDS = (0, 1)
# The paper's headline contrast first, so that a partial table still answers its claims.
ORDER = ("prefix-kv", "ft", "adapter-0.1", "emb-10", "ft-top2", "adapter-3", "prefix-hidden", "infix", "emb-1")


def runs() -> dict[str, str]:
    """{run name: config argument}; the name is also the run's workdir under the root."""
    assert sorted(ORDER) == sorted(webnlg_smollm2_row.METHODS), "ORDER must list every method once"
    rows = {method: method for method in ORDER}
    lengths = {f"prefix-kv_length{n}": f"prefix-kv,length={n}" for n in LENGTHS}
    sizes = {
        f"{method}_size{size}_seed{seed}": f"{method},size={size},seed={seed}"
        for size in SIZES for seed in SEEDS for method in ("prefix-kv", "ft")
    }
    words = {f"prefix-kv_words_size{size}_seed{seed}": f"prefix-kv,size={size},seed={seed},words=1"
             for size in SIZES for seed in SEEDS}
    return {**rows, **lengths, **sizes, **words}


if __name__ == "__main__":
    table.main(None, doc=__doc__, config_file=CONFIG, runs=runs(), root="workdir/webnlg_smollm2_table")
