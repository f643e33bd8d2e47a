"""Tiny GPT-2 models built locally: random init, pretrained on a synthetic arithmetic corpus.

They stand in for real LLMs where tests and CPU demos need a model that trains and samples
in seconds. Each is a normal HF folder (`from_pretrained` works) with a character tokenizer.

Example:
    >>> path = tiny_model("tiny")           # built once, then cached
    >>> train(path, {"add": addition_examples(500, seed=1)}, {"add": 1.0}, "out")
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import string
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # transformers and the training loop load only where a model is built
    from transformers import PreTrainedTokenizerFast

    from tools.train import Example

Size = Literal["tiny", "small", "base"]
SHIPPED = Path(__file__).with_name("zoo_models")  # `tiny_model` builds made once, shipped
log = logging.getLogger(__name__)

SIZES: dict[str, dict[str, int]] = {
    "tiny": {"n_layer": 2, "n_embd": 64, "n_head": 4},
    "small": {"n_layer": 2, "n_embd": 128, "n_head": 4},
    "base": {"n_layer": 4, "n_embd": 128, "n_head": 4},
}
# Pretraining of `tiny_model` (lr 3e-3; steps x batch name the cache folder). Built on a busy
# 2-core CPU: tiny 320 s, small 770 s. They learn the corpus's characters and formats, not yet
# its sums (small: ~1% on 2-digit additions); fine-tuning does that (envs/live/tasks).
DEFAULT_STEPS = {"tiny": 800, "small": 800, "base": 1000}
DEFAULT_BATCH = {"tiny": 64, "small": 128, "base": 128}
N_POSITIONS = 128  # prompt + completion + prompt-tuning virtual tokens must fit

_CHARS = sorted(set(string.printable) - set("\t\r\x0b\x0c"))
_NAMES = ["ann", "bob", "eve", "tom", "kim", "sam"]
_ITEMS = ["pens", "cards", "coins", "books"]


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer with one token per printable ASCII character plus <pad>, <eos>, <unk>."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["<pad>", "<eos>", "<unk>", *_CHARS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()  # join characters without WordLevel's spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )


def addition_examples(n: int, seed: int, digits: int = 3) -> list[Example]:
    """`n` examples like {"prompt": "12+345=", "completion": "357"} with up to `digits` digits."""
    rng = random.Random(seed)
    top = 10**digits - 1
    pairs = [(rng.randint(0, top), rng.randint(0, top)) for _ in range(n)]
    return [{"prompt": f"{a}+{b}=", "completion": str(a + b)} for a, b in pairs]


def extraction_examples(n: int, seed: int, digits: int = 3) -> list[Example]:
    """`n` word problems to parse into a sum, e.g. "kim got 12 pens, then 345. sum:" -> "12+345";
    the first stage of a parse -> solve pipeline."""
    rng = random.Random(seed)
    top = 10**digits - 1
    examples = []
    for _ in range(n):
        a, b = rng.randint(0, top), rng.randint(0, top)
        prompt = f"{rng.choice(_NAMES)} got {a} {rng.choice(_ITEMS)}, then {b}. sum:"
        examples.append({"prompt": prompt, "completion": f"{a}+{b}"})
    return examples


def synthetic_corpus(n: int, seed: int) -> list[str]:
    """`n` lines, 3/4 additions and 1/4 word problems, each prompt followed by its answer."""
    quarter = n // 4
    examples = addition_examples(n - quarter, seed) + extraction_examples(quarter, seed + 1)
    return [ex["prompt"] + ex["completion"] for ex in examples]


def build_tiny_model(
    size: Size,
    corpus: list[str],
    out_dir: str | Path,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
) -> Path:
    """Build a GPT-2 of `size` from random init and pretrain it on `corpus` (loss on every
    token, each line ended by eos). Returns `out_dir`, an HF model folder."""
    from transformers import GPT2Config, GPT2LMHeadModel, set_seed

    from tools.train import TrainConfig, train

    tokenizer = char_tokenizer()
    config = GPT2Config(
        **SIZES[size],
        vocab_size=len(tokenizer),
        n_positions=N_POSITIONS,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    set_seed(seed)
    with tempfile.TemporaryDirectory() as init_dir:
        GPT2LMHeadModel(config).save_pretrained(init_dir)
        tokenizer.save_pretrained(init_dir)
        lines = [{"prompt": "", "completion": line} for line in corpus]
        config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                             max_length=N_POSITIONS)
        train(init_dir, {"corpus": lines}, {"corpus": 1.0}, out_dir, config)  # every weight
    return Path(out_dir)


def tiny_model(size: Size = "tiny", cache_dir: str | Path | None = None) -> Path:
    """Path of a pretrained tiny model (`DEFAULT_STEPS[size]` steps of `DEFAULT_BATCH[size]`
    lines of `synthetic_corpus`), cached under `cache_dir` (default `$PLANNER_CACHE/zoo`,
    with `PLANNER_CACHE` defaulting to `~/.cache/planner`) in a folder named by size and
    build settings, so a build with other settings is never reused. On first use it is
    copied from the builds shipped in `SHIPPED` (tiny and small: 2.2 MB, so a first live
    run starts at once), else built, which takes minutes on a CPU and says so."""
    if cache_dir is None:
        cache_dir = Path(os.environ.get("PLANNER_CACHE", "~/.cache/planner")).expanduser() / "zoo"
    steps, batch_size = DEFAULT_STEPS[size], DEFAULT_BATCH[size]
    path = Path(cache_dir) / f"{size}-{steps}x{batch_size}"
    if (path / "config.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # Copy or build beside the cache and move into place, so a half-made folder is never used.
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        shipped = SHIPPED / path.name
        if (shipped / "config.json").exists():
            shutil.copytree(shipped, Path(tmp) / size)
        else:
            log.warning("building zoo model %s (%d steps of %d lines; first use only, minutes "
                        "on a CPU) into %s", size, steps, batch_size, path)
            corpus = synthetic_corpus(20_000, seed=0)
            build_tiny_model(size, corpus, Path(tmp) / size, steps=steps, batch_size=batch_size)
        if not path.exists():  # another process may have finished first
            shutil.move(Path(tmp) / size, path)
    return path
