"""Weak supervision as seed 004 runs it: Classification Without Labels (CWoLa, arXiv:1708.02949).

Two mixed samples stand in for labels: sample 1 holds background jets only, sample 2 the same kind of
background plus a fraction ``x`` of signal jets. A classifier trained to tell sample 2 from sample 1
is, in the limit of infinite data, a monotonic function of the signal/background likelihood ratio,
so it is evaluated on the *true* labels of clean test jets. The mixed samples are written with the
task's own class names (sample 1 carries the background's name, sample 2 the signal's) so that the
finetuned model's score reads as p(signal) on the test files like any other tagger's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hepfm.data.formats import open_sources, write_jets
from hepfm.data.jets import JetChunk
from hepfm.errors import HepfmInputError
from hepfm.io import file_identity, write_json_atomic


def read_all(patterns: list[str]) -> JetChunk:
    return JetChunk.concat([s.read(0, len(s)) for s in open_sources(patterns)])


def mix(chunk: JetChunk, fraction: float, signal: int, rng: np.random.Generator) -> JetChunk:
    """Sample 1 (background only, labelled background) + sample 2 (background + ``fraction`` signal,
    labelled signal), shuffled. The background is split in two halves; sample 2's background half is
    trimmed if there are too few signal jets for the fraction."""
    assert chunk.label is not None
    bkg = rng.permutation(np.flatnonzero(chunk.label != signal))
    sig = rng.permutation(np.flatnonzero(chunk.label == signal))
    half_a, half_b = bkg[: len(bkg) // 2], bkg[len(bkg) // 2 :]
    n_sig = round(fraction / (1 - fraction) * len(half_b))
    if n_sig > len(sig):  # too few signal jets: shrink sample 2's background to keep the fraction
        n_sig = len(sig)
        half_b = half_b[: round(n_sig * (1 - fraction) / fraction)]
    if n_sig == 0 or len(half_b) == 0 or len(half_a) == 0:
        raise HepfmInputError(f"signal fraction {fraction:g} leaves an empty mixed sample "
                              f"({len(bkg)} background, {len(sig)} signal jets)")
    background_label = int(chunk.label[bkg[0]])
    index = np.concatenate([half_a, half_b, sig[:n_sig]])
    sample = np.concatenate([np.full(len(half_a), background_label), np.full(len(half_b) + n_sig, signal)])
    order = rng.permutation(len(index))
    mixed = chunk.take(index[order])
    mixed.label = sample[order].astype(np.int64)
    return mixed


def mixed_samples(task: Any, fraction: float, out: Path,
                  seed: int) -> tuple[tuple[str, int], tuple[str, int]]:
    """Write the mixed training and validation samples of a CWoLa task at signal ``fraction``;
    ((train path, jets), (val path, jets)). Files already written from the same inputs are reused."""
    inputs = {"train": [file_identity(p) for p in task.train], "val": [file_identity(p) for p in task.val],
              "fraction": fraction, "seed": seed, "signal_class": task.signal_class}
    record = out / "mixture.json"
    saved = json.loads(record.read_text()) if record.exists() else {}
    if saved.get("inputs") == inputs:
        return (saved["train"], saved["n_train"]), (saved["val"], saved["n_val"])
    rng = np.random.default_rng([seed, round(fraction * 1e6)])
    paths: dict[str, Any] = {}
    for split in ("train", "val"):
        chunk = read_all(getattr(task, split))
        names = chunk.class_names
        signal = names.index(task.signal_class) if task.signal_class else len(names) - 1
        try:
            mixed = mix(chunk, fraction, signal, rng)
        except HepfmInputError as err:
            raise HepfmInputError(f"tasks.{task.name}: {err.problem}", getattr(task, split)[0]) from None
        path = out / f"{split}.h5"
        n = write_jets(path, [mixed], "hepfm", metadata={"cwola": {"signal_fraction": fraction, "seed": seed,
                                                                   "signal_class": names[signal],
                                                                   "from": getattr(task, split)}})
        paths[split], paths[f"n_{split}"] = str(path), n
    write_json_atomic(record, {"inputs": inputs, **paths})
    return (paths["train"], paths["n_train"]), (paths["val"], paths["n_val"])
