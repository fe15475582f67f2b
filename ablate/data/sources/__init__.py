"""Readers of real image-caption data: img2dataset tar shards (webdataset layout) and plain image folders.

Both readers yield `RawSample`s: the undecoded image bytes, the caption and any metadata of one sample.
Decoding, resizing and the accounting of bad samples live in `ablate.data.preprocess`; a sample the reader
could not read carries its `BadSample` in `RawSample.error`, so a caller handles every kind of bad sample
in one place (`prepare_sample` raises it) and can count it and go on.

Why plain `tarfile` and not the `webdataset` package: the only access pattern needed is one sequential pass
over each shard, which the standard library's stream mode ('r|*') already gives without holding a shard in
memory or seeking; it adds no dependency; and it keeps the error accounting exact: every corrupt or cut
region of a shard becomes exactly one counted `unreadable_member` naming the shard, key and byte offset,
where webdataset's handlers either raise out of the pipeline or drop samples silently.

Splits: `split_of` assigns each sample to train, val or heldout by a hash of its key alone, never by its
position, so adding, removing or reordering shards never moves a sample between splits.

Modules: `sample` (RawSample), `paths` (shard lists), `webdataset`, `folder`, `split`.
"""

from ablate.data.sources.folder import CAPTIONS_FILE, folder_units, iter_folder, list_images
from ablate.data.sources.paths import expand_pattern, expand_shards
from ablate.data.sources.sample import IMAGE_EXTS, RawSample
from ablate.data.sources.split import Split, hash_unit, split_of
from ablate.data.sources.webdataset import iter_webdataset, sample_keys, split_member_name

__all__ = [
    "CAPTIONS_FILE",
    "IMAGE_EXTS",
    "RawSample",
    "Split",
    "expand_pattern",
    "expand_shards",
    "folder_units",
    "hash_unit",
    "iter_folder",
    "iter_webdataset",
    "list_images",
    "sample_keys",
    "split_member_name",
    "split_of",
]
