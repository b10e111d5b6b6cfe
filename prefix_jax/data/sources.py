"""One entry point to every data set: `read(data_config, split)` -> list of Examples.

`data.name` is a reader of the original files (`webnlg`, `e2e`, `dart`: paths in
`train_path` / `dev_path` / `test_path`; `xsum`: the directory of `{train,val,test}.{source,target}`), a TFDS builder (`tfds:web_nlg`, ...: prepared under
`tfds_data_dir`), or the synthetic `copy` task. Plain-text pre-training corpora (`text`) are read by
`pipeline.encode_split`, not as Examples.
"""

import ml_collections

from prefix_jax.data import dart, e2e, synthetic, tfds_sources, webnlg, xsum
from prefix_jax.data.records import Example

SOURCES = ("webnlg", "e2e", "dart", "xsum", "copy") + tuple(f"tfds:{name}" for name in tfds_sources.BUILDERS)
SPLITS = ("train", "dev", "test")


def path_and_limit(config: ml_collections.ConfigDict, split: str) -> tuple[str, int]:
    """(file, how many items to keep; 0 = all) of `split`: 'train', 'dev' or 'test'."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    return config[f"{split}_path"], config[f"num_{split}"]


def read(config: ml_collections.ConfigDict, split: str) -> list[Example]:
    """Examples of `split` ('train', 'dev' or 'test'), cut to num_<split> when that is > 0."""
    path, limit = path_and_limit(config, split)
    if config.name == "webnlg":
        # Li & Liang train on texts marked "good" only and evaluate against all of them.
        examples = webnlg.read(path, split, only_good=split == "train")
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
