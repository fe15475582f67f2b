"""`heldout_text`: held-out text for the forgetting probe when the LM is a given checkpoint (paper scale).

At demo scale the `pretrain` stage keeps part of its corpus out of training and writes it as shards; a
released checkpoint (model.checkpoint) comes with no such text. This stage tokenizes
`pretrain.heldout_text_path` (a .txt of documents separated by blank lines, or a .jsonl with a `text` field
per line) with the run's text tokenizer into `heldout/` shards of data.seq_len tokens, the form the
text-ability probe reads, so held-out perplexity and the prompt completions run at paper scale exactly as
at demo scale. The file is read as a stream; at most `pretrain.heldout_max_tokens` tokens are kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ablate.errors import AssetMissingError, DataError
from ablate.schema import RunConfig
from ablate.splits import HELDOUT
from ablate.stages import names
from ablate.stages.context import StageContext
from ablate.stages.inputs import open_text_tokenizer
from ablate.stages.stage import Stage

SPLIT = HELDOUT  # the shard directory under the stage's output, as pretrain's data/heldout
DOC_SEPARATOR = "\n\n"


def read_documents(path: Path) -> Iterator[str]:
    """Documents of a .txt (blank-line separated) or .jsonl (`text` field) file, streamed."""
    if not path.is_file():
        raise AssetMissingError(
            f"held-out text not found: {path}. Give pretrain.heldout_text_path=<a .txt or .jsonl of text the "
            "language model was not trained on> (e.g. a slice of the Pile's validation set)"
        )
    with path.open(encoding="utf-8") as f:
        if path.suffix == ".jsonl":
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise DataError(f'{path}:{n}: expected a JSON object with a "text" field') from None
                if isinstance(text, str) and text.strip():
                    yield text
            return
        doc: list[str] = []
        for line in f:
            if line.strip():
                doc.append(line)
            elif doc:
                yield "".join(doc)
                doc = []
        if doc:
            yield "".join(doc)


def pack(
    docs: Iterator[str],
    encode: Callable[[str], list[int]],
    separator: list[int],
    seq_len: int,
    max_tokens: int,
) -> np.ndarray:
    """Concatenate tokenized documents (separator between them), cut into (N, seq_len) rows, at most
    max_tokens tokens; a last partial row is dropped."""
    stream: list[int] = []
    for doc in docs:
        stream.extend(encode(doc))
        stream.extend(separator)
        if len(stream) >= max_tokens:
            break
    n = min(len(stream), max_tokens) // seq_len
    return np.asarray(stream[: n * seq_len], dtype=np.int64).reshape(n, seq_len)


def run(ctx: StageContext) -> None:
    cfg = ctx.cfg
    path = Path(str(cfg.pretrain.heldout_text_path))
    tok = open_text_tokenizer(ctx.inputs[names.TEXT_TOKENIZER])
    seq_len = cfg.data.seq_len
    rows = pack(
        read_documents(path), tok.encode, tok.encode(DOC_SEPARATOR), seq_len, cfg.pretrain.heldout_max_tokens
    )
    if not len(rows):
        raise DataError(
            f"{path}: fewer than data.seq_len={seq_len} tokens of text; the probe needs at least one"
        )
    from ablate.data.shards import ShardWriter  # torch: loaded when the stage runs (ablate.stages.common)

    writer = ShardWriter(
        ctx.out_dir / SPLIT, seq_len=seq_len, vocab_size=cfg.model.text_vocab_size, overwrite=True
    )
    writer.add_many(rows)
    writer.finish({"split": SPLIT, "text_tokenizer": tok.fingerprint, "source": str(path)})
    ctx.log_metrics({"heldout_sequences": float(len(rows)), "heldout_tokens": float(rows.size)}, 0)
    ctx.log(f"{len(rows)} held-out sequences of {seq_len} tokens from {path}")


def config(cfg: RunConfig) -> dict:
    """What the key hashes: the file (path, size and modification time: reading it all to hash it would
    cost as much as the stage), how much of it, and the sequence layout."""
    p = cfg.pretrain
    path = Path(str(p.heldout_text_path))
    stat = path.stat() if path.is_file() else None
    return {
        "path": str(path.resolve()) if stat else str(path),
        "size": stat.st_size if stat else None,
        "mtime_ns": stat.st_mtime_ns if stat else None,
        "max_tokens": p.heldout_max_tokens,
        "seq_len": cfg.data.seq_len,
        "text_vocab_size": cfg.model.text_vocab_size,
    }


def applies(cfg: RunConfig) -> bool:
    """A given checkpoint (no demo pretrain, whose corpus split already holds held-out text) and a file."""
    return (
        cfg.model.init == "pretrained" and bool(cfg.model.checkpoint) and bool(cfg.pretrain.heldout_text_path)
    )


STAGE = Stage(
    names.HELDOUT_TEXT,
    version=1,
    config=config,
    run=run,
    inputs=(names.TEXT_TOKENIZER,),
    applies=applies,
    params=("pretrain.heldout_text_path", "pretrain.heldout_max_tokens"),
)
