"""One entry point to every data set: `read(data_config, split)` -> list of Examples.

`data.name` is a reader of the original files (`webnlg`, `e2e`, `dart`: paths in
`train_path` / `dev_path` / `test_path`; `xsum`: the directory of `{train,val,test}.{source,target}`), a TFDS builder (`tfds:web_nlg`, ...: prepared under
`tfds_data_dir`), or the synthetic `copy` task. Plain-text pre-training corpora (`text`) are read by
`pipeline.encode_split`, not as Examples.
"""

import dataclasses

import ml_collections

from prefix_jax.data import dart, e2e, synthetic, tfds_sources, webnlg, xsum
from prefix_jax.data.records import Example
from prefix_jax.errors import ConfigError

SOURCES = ("webnlg", "e2e", "dart", "xsum", "copy") + tuple(f"tfds:{name}" for name in tfds_sources.BUILDERS)
SPLITS = ("train", "dev", "test")


def path_and_limit(config: ml_collections.ConfigDict, split: str) -> tuple[str, int]:
    """(file, how many items to keep; 0 = all) of `split`: 'train', 'dev' or 'test'."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    return config[f"{split}_path"], config[f"num_{split}"]


def read(config: ml_collections.ConfigDict, split: str) -> list[Example]:
    """Examples of `split` ('train', 'dev' or 'test'), cut to num_<split> when that is > 0,
    with `data.heldout_categories` held out of training (`hold_out`)."""
    path, limit = path_and_limit(config, split)
    if config.name != "webnlg" and heldout_categories(config):
        raise ConfigError(f"data.heldout_categories needs WebNLG-format data (data.name=webnlg), not {config.name!r}.")
    if config.name == "webnlg":
        # Li & Liang train on texts marked "good" only and evaluate against all of them.
        examples = hold_out(config, split, webnlg.read(path, split, only_good=split == "train"))
    elif config.name == "e2e":
        examples = e2e.read(path)
    elif config.name == "dart":
        examples = dart.read(path)
    elif config.name == "xsum":
        examples = xsum.read(path, split)
    elif config.name.startswith("tfds:"):
        examples = tfds_sources.read(config.name.removeprefix("tfds:"), split, config.tfds_data_dir)
    elif config.name == "copy":
        if limit <= 0:
            raise ValueError(f"The copy task needs data.num_{split} > 0 examples to generate.")
        examples = synthetic.copy_examples(limit, seed=SPLITS.index(split))
    else:
        raise ValueError(f"Unknown data set {config.name!r}; expected one of {SOURCES}.")
    return examples[:limit] if limit > 0 else examples


def heldout_categories(config: ml_collections.ConfigDict) -> frozenset[str]:
    return frozenset(name.strip() for name in config.get("heldout_categories", "").split(",") if name.strip())


def hold_out(config: ml_collections.ConfigDict, split: str, examples: list[Example]) -> list[Example]:
    """The paper's seen/unseen contrast built from any WebNLG-format data: the categories in
    `data.heldout_categories` leave training entirely; their training entries (all texts as
    references) join dev after its own entries, and in every evaluation split they count as
    unseen (WebNLG 2017's dev set has seen categories only, and its test set is not shipped)."""
    heldout = heldout_categories(config)
    if not heldout:
        return examples
    if split == "train":
        missing = heldout - {e.category for e in examples}
        if missing:
            raise ConfigError(
                f"data.heldout_categories names {sorted(missing)}, not categories of {config.train_path}; "
                f"it has {sorted({e.category for e in examples})}."
            )
        return [e for e in examples if e.category not in heldout]
    marked = [dataclasses.replace(e, seen=e.seen and e.category not in heldout) for e in examples]
    if split == "dev":
        marked += [dataclasses.replace(e, seen=False) for e in webnlg.read(config.train_path, "train")
                   if e.category in heldout]
    return marked
