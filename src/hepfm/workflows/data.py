"""The one data entry point of every workflow: files -> checked sources -> loaders.

Every workflow reads jets the same way: open the files (bad files and jets are refused or skipped
there), check that they provide the feature set's per-particle fields, check their classes, and wrap
them in loaders. :func:`open_data` does that for the training workflows (train, pretrain, finetune)
and :func:`open_inputs` for the ones that only read (evaluate, embed), so a check added here holds
for every command.

Events (sets of reconstructed objects) are read the same way, with the ``data.events`` options
(:class:`~hepfm.data.formats.nanoaod_events.EventOptions`) given to NanoAOD files and the event
selection to any file of events. What a model was trained on is part of its checkpoint
(:func:`input_spec`: ``input_kind``, ``object_types``, ``events``), and data a model was not trained
on is refused with one line (:func:`check_input`): events for a jet model, jets for an event model,
and events holding an object type that the model's training events never held. "Trained on" is
about the types because the ``objects`` features encode each object's type as a one-hot column of
the fixed vocabulary :data:`~hepfm.data.jets.OBJECT_TYPES`: a column that was zero in every training
event has weights that never learned anything, so an event using it would be scored by noise.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from hepfm.configs.sections import DataConfig
from hepfm.data.features import FeatureSet
from hepfm.data.formats import ArraySource, detect_format, expand_patterns, open_source
from hepfm.data.formats.base import read_selected
from hepfm.data.formats.nanoaod import split_selector
from hepfm.data.formats.nanoaod_events import EventOptions, SelectedEvents
from hepfm.data.jets import OBJECT_TYPES, JetChunk
from hepfm.data.loader import JetLoader, make_loader
from hepfm.errors import HepfmInputError

log = logging.getLogger(__name__)

#: Jets read per block when scanning labels.
READ_CHUNK = 50_000

#: What a training workflow does with labels: ``required`` (classifiers, supervised pretraining) or
#: ``dropped`` (self-supervised objectives never see them).
Labels = Literal["required", "dropped"]


@dataclass(frozen=True)
class ModelInput:
    """What a model was trained on (from its checkpoint spec): ``kind`` ``jets`` or ``events`` and,
    for events, the object types its training events held (None: not recorded, as in checkpoints
    from before hepfm recorded them). ``origin`` names the checkpoint in messages."""

    kind: str
    object_types: tuple[str, ...] | None
    origin: str

    @classmethod
    def of_spec(cls, spec: dict[str, Any], origin: Any) -> ModelInput:
        kind = spec.get("input_kind")
        if kind is None:  # older checkpoints: events are what the features need object types for
            needs = FeatureSet.from_dict(spec["features"]).requires
            kind = "events" if "object_type" in needs else "jets"
        types = spec.get("object_types")
        return cls(str(kind), tuple(types) if types is not None else None, str(origin))


@dataclass
class TrainingData:
    """Loaders and what they hold. ``class_names`` is ``()`` where labels are dropped; ``kind`` is
    ``jets`` or ``events``, ``object_types`` the types the training events can hold (() for jets)."""

    train: Any  # a JetLoader (or the label-dropping wrapper around one)
    val: Any | None
    train_sources: list[Any]
    val_sources: list[Any]
    class_names: tuple[str, ...]
    per_class: dict[str, int]  # jets per class of a --n-labels subset, else {}
    kind: str = "jets"
    object_types: tuple[str, ...] = ()


def input_spec(kind: str, object_types: tuple[str, ...], events: EventOptions) -> dict[str, Any]:
    """The checkpoint spec entries saying what a model was trained on (see :class:`ModelInput`) and,
    for events, how NanoAOD was read (``evaluate`` and ``embed`` read their data the same way)."""
    if kind != "events":
        return {"input_kind": kind}
    return {"input_kind": kind, "object_types": list(object_types), "events": events.reader_options()}


def reading_of(spec: dict[str, Any]) -> EventOptions:
    """The :class:`EventOptions` a checkpoint's events were read with (the defaults if not recorded)."""
    return EventOptions.from_options(**spec.get("events", {}))


def open_data(cfg: DataConfig, fs: FeatureSet, *, seed: int, labels: Labels, num_workers: int = 0,
              n_labels: int | None = None, features_origin: str | None = None,
              expect: ModelInput | None = None) -> TrainingData:
    """Open, check and load a training workflow's data.

    ``n_labels`` draws a class-balanced, seeded subset of the training jets (few-label finetuning).
    ``features_origin`` names where the feature set came from (a pretrained backbone), for the message
    when the data cannot provide it; ``expect`` is what that backbone was trained on (:func:`check_input`).
    """
    if not cfg.train:
        raise HepfmInputError("no training files given (--data)")
    train_src = open_inputs(cfg.train, fs, cfg.max_particles, cfg.skip_bad, features_origin,
                            events=cfg.events, expect=expect)
    val_src = open_inputs(cfg.val, fs, cfg.max_particles, cfg.skip_bad, features_origin, events=cfg.events,
                          expect=expect) if cfg.val else []
    kind = data_kind(train_src)
    types = object_types_of(train_src) if kind == "events" else ()
    if val_src:
        check_input(ModelInput(kind, types, "the training files"), val_src, training_files=True)
    names: tuple[str, ...] = ()
    if labels == "required":
        names = class_names(train_src, "training")
        if val_src and class_names(val_src, "validation") != names:
            raise HepfmInputError("validation classes differ from the training classes", val_src[0].path)
    per_class: dict[str, int] = {}
    sources, n_jets, streaming = train_src, cfg.n_train, cfg.streaming
    if n_labels is not None:
        subset, per_class = balanced_subset(train_src, n_labels, seed)
        sources = [ArraySource(subset, path=f"{train_src[0].path}[{n_labels} labels]")]
        n_jets, streaming = None, False
    if labels == "required":
        check_train_classes(sources, n_jets)
    # a few-label subset smaller than a batch still trains (one short batch per epoch)
    drop_last = n_labels is None or len(sources[0]) > cfg.batch_size
    train: JetLoader | WithoutLabels
    val: JetLoader | WithoutLabels | None
    train = make_loader(sources, fs, cfg.batch_size, streaming=streaming, shuffle=True, seed=seed,
                        num_workers=num_workers, max_particles=cfg.max_particles, n_jets=n_jets,
                        drop_last=drop_last)
    val = (make_loader(val_src, fs, cfg.batch_size, shuffle=False, max_particles=cfg.max_particles,
                       n_jets=cfg.n_val, rank=0, world_size=1) if val_src else None)
    if labels == "required" and val is not None:
        check_val_classes(val, len(names), val_src[0].path)
    elif labels == "dropped":
        train, val = WithoutLabels(train), (WithoutLabels(val) if val is not None else None)
    return TrainingData(train, val, train_src, val_src, names, per_class, kind, types)


def open_inputs(patterns: list[str], fs: FeatureSet, max_particles: int, skip_bad: bool = False,
                features_origin: str | None = None, *, events: EventOptions | None = None,
                expect: ModelInput | None = None, settable: bool = True) -> list[Any]:
    """Sources for ``patterns`` that provide every per-particle field ``fs`` needs (checked from headers).

    ``events``: how to read events (NanoAOD files get all of it, other files of events the event
    selection); ``expect``: what the model the data is for was trained on (:func:`check_input`);
    ``settable``: whether the user sets ``events`` (a training run) or it is the model's (evaluate).
    """
    events = events or EventOptions()
    paths = expand_patterns(patterns)
    if not paths:
        raise HepfmInputError("no input files given")
    sources, jets_given_events = [], []
    for path in paths:
        text, collection = split_selector(os.path.expanduser(str(path)))
        fmt = detect_format(text) if collection is None else None  # a selector names its reader itself
        common = {"max_particles": max_particles, "skip_bad": skip_bad}
        if fmt == "nanoaod-events" or collection == "Events":
            sources.append(open_source(path, fmt, **common, **events.reader_options()))
            continue
        src = open_source(path, fmt, **common)
        if holds_events(src):
            if events.min_objects.active:
                src = SelectedEvents(src, events.min_objects, skip_bad=skip_bad)
            if events.cuts() or events.photons or not events.taus:
                log.warning("%s: data.events photons/taus/cuts choose objects when NanoAOD is read; this "
                            "file holds objects chosen when it was written", src.path)
        elif not events.is_default:
            jets_given_events.append(src)
        sources.append(src)
    data_kind(sources)  # jets and events do not mix
    if expect is not None:
        check_input(expect, sources, hints=settable)
    if jets_given_events:
        raise HepfmInputError("data.events (how events of objects are read) is set, but the file holds jets",
                              jets_given_events[0].path)
    for s in sources:
        try:
            fs.check_fields(available_fields(s), s.path)
        except HepfmInputError as err:
            if features_origin is None:
                raise
            raise HepfmInputError(
                f"the pretrained backbone ({features_origin}) was trained on feature set "
                f"{fs.name!r}, which this data cannot provide: {err.problem}",
                s.path,
            ) from None
    return sources


def evaluation_loader(patterns: list[str], fs: FeatureSet, max_particles: int, *, batch_size: int = 256,
                      skip_bad: bool = False, n_jets: int | None = None,
                      class_names: tuple[str, ...] | None = None, events: EventOptions | None = None,
                      expect: ModelInput | None = None) -> tuple[Any, list[Any]]:
    """An unshuffled loader over test files for a trained model (evaluate, embed) and its sources.

    ``class_names`` (a classifier's) makes labels required and equal to the model's classes. ``events``:
    how events are read (a model's: :func:`reading_of`); ``expect``: what the model was trained on, data
    it was not trained on is refused (:func:`check_input`).
    """
    if batch_size < 1:
        raise HepfmInputError(f"--batch-size must be >= 1, got {batch_size}")
    sources = open_inputs(patterns, fs, max_particles, skip_bad, events=events, expect=expect, settable=False)
    if class_names is not None:
        for s in sources:
            if not s.has_labels:
                raise HepfmInputError("evaluation needs labels, but the file has none", s.path)
            if tuple(s.class_names) != tuple(class_names):
                raise HepfmInputError(
                    f"the file's classes {list(s.class_names)} differ from the model's {list(class_names)}",
                    s.path,
                )
    loader = make_loader(sources, fs, batch_size, streaming=n_jets is None, shuffle=False,
                         max_particles=max_particles, n_jets=n_jets)
    return loader, sources


def holds_events(source: Any) -> bool:
    """Whether a source holds events of reconstructed objects (it says so, or its entries have types)."""
    return getattr(source, "item", "jet") == "event" or "object_type" in available_fields(source)


def kind_of(source: Any) -> str:
    """``events`` or ``jets``: what one source holds."""
    return "events" if holds_events(source) else "jets"


def data_kind(sources: list[Any]) -> str:
    """``events`` or ``jets``: what the files hold, all of them alike (a mixture names the odd file)."""
    kinds = [kind_of(s) for s in sources]
    odd = next((s for s, k in zip(sources, kinds, strict=True) if k != kinds[0]), None)
    if odd is not None:
        raise HepfmInputError(f"the files mix jets and events: {sources[0].path} holds {kinds[0]}, this one "
                              f"{'jets' if kinds[0] == 'events' else 'events'}", odd.path)
    return kinds[0]


def object_types_of(sources: list[Any], block: int = READ_CHUNK) -> tuple[str, ...]:
    """The object types events of ``sources`` can hold, in :data:`OBJECT_TYPES` order: what a reader
    declares (NanoAOD: the collections its options keep), else the types found in the file (one pass
    over its ``object_type`` field, for events already read into another format; remembered per
    source, so checking a file twice reads it once)."""
    found: set[str] = set()
    for s in sources:
        declared = getattr(s, "object_types", None) or _SCANNED.get(s)
        if declared is None:
            seen: set[int] = set()
            for start in range(0, len(s), block):
                c = read_selected(s, start, min(start + block, len(s)), ("object_type",), ())
                seen |= set(np.unique(c.particles["object_type"][c.mask]).tolist())
            declared = tuple(OBJECT_TYPES[i] for i in sorted(seen) if 0 <= i < len(OBJECT_TYPES))
            _SCANNED[s] = declared
        found |= set(declared)
    return tuple(t for t in OBJECT_TYPES if t in found)


#: Object types found in sources that do not declare them (see :func:`object_types_of`).
_SCANNED: weakref.WeakKeyDictionary[Any, tuple[str, ...]] = weakref.WeakKeyDictionary()


#: How to read without an object type, where a reading option can drop it.
_DROP = {"photon": "read without photons (data.events.photons: false)",
         "tau": "read without taus (data.events.taus: false)"}


def check_input(model: ModelInput, sources: list[Any], *, training_files: bool = False,
                hints: bool = True) -> None:
    """Refuse data ``model`` was not trained on, naming the file: events for a jet model, jets for an
    event model, events with object types its training events never held. ``training_files``: the
    "model" is the training files and ``sources`` are validation files (worded so); ``hints``: say
    which ``data.events`` option reads without an extra type (where the user sets them)."""
    for s in sources:
        kind = kind_of(s)
        if kind != model.kind:
            held = "events (sets of reconstructed objects)" if kind == "events" else "jets"
            whose = ("the training files hold" if training_files
                     else f"the model {model.origin} was trained on")
            raise HepfmInputError(f"the file holds {held}, but {whose} {model.kind}", s.path)
    if model.kind != "events" or model.object_types is None:
        return
    for s in sources:
        extra = [t for t in object_types_of([s]) if t not in model.object_types]
        if extra:
            nanoaod = getattr(s, "format", "") == "nanoaod-events"
            drop = [_DROP[t] for t in extra if t in _DROP and nanoaod and hints]
            whose = ("no training file holds" if training_files
                     else f"the model {model.origin} was never trained on")
            raise HepfmInputError(
                f"the events hold {', '.join(extra)} objects, which {whose} (its events held "
                f"{', '.join(model.object_types)})" + (f"; {'; '.join(drop)}" if drop else ""), s.path)


def available_fields(source: Any) -> set[str]:
    """Per-particle fields a source provides, from its header (no jets are read)."""
    fields = getattr(source, "particle_fields", None)
    if fields is None:  # a third-party JetSource without the attribute: look at one jet
        return set(source.read(0, min(1, len(source))).particles)
    return set(fields)


def class_names(sources: list[Any], what: str) -> tuple[str, ...]:
    """The classes the files share; labels are required. A file whose classes differ from the first's is
    named."""
    names = {tuple(s.class_names) for s in sources}
    if len(names) > 1:
        odd = next(s for s in sources if tuple(s.class_names) != tuple(sources[0].class_names))
        raise HepfmInputError(f"{what} files have different classes: {sorted(names)}", odd.path)
    unlabeled = [str(s.path) for s in sources if not s.has_labels]
    if unlabeled:
        raise HepfmInputError(f"supervised training needs labels, but {what} file has none", unlabeled[0])
    return names.pop()


def check_train_classes(sources: list[Any], n_jets: int | None, block: int = 65536) -> None:
    """Refuse training files whose (first ``n_jets``) jets all carry one label: a classifier learns
    nothing from them. Stops at the second class seen, so a normal file costs one block's read."""
    seen: set[int] = set()
    left = n_jets if n_jets is not None else sum(len(s) for s in sources)
    for s in sources:
        for start in range(0, len(s), block):
            if left <= 0:
                break
            # labels only: no per-particle or per-jet fields are read
            label = s.read(start, min(len(s), start + block, start + left), fields=(), jet_fields=()).label
            left -= len(label)
            seen |= set(np.unique(label).tolist())
            if len(seen) > 1:
                return
    raise HepfmInputError(
        f"the training set holds a single class ({sorted(seen)}): "
        "a classifier needs jets of at least two classes",
        ", ".join(str(s.path) for s in sources),
    )


def check_val_classes(loader: Any, n_classes: int, path: Any) -> None:
    """Model selection on one class is meaningless: refuse validation data without two classes."""
    seen: set[int] = set()
    for batch in loader:
        seen |= set(batch.label.unique().tolist())
        if len(seen) > 1:
            return
    raise HepfmInputError(
        f"the validation set holds a single class ({sorted(seen)}): "
        f"model selection needs at least two of {n_classes}",
        path,
    )


def balanced_subset(sources: list[Any], n_labels: int, seed: int) -> tuple[JetChunk, dict[str, int]]:
    """``n_labels`` jets, as equal per class as the data allow, drawn with ``seed`` (reads labels in
    chunks). Every class needs at least one of the labels."""
    names = tuple(sources[0].class_names)
    if n_labels < max(1, len(names)):
        raise HepfmInputError(f"--n-labels {n_labels} is fewer than the {len(names)} classes "
                              f"({', '.join(names)}): every class needs at least one label")
    labels = []
    for s in sources:
        for start in range(0, len(s), READ_CHUNK):
            labels.append(s.read(start, min(start + READ_CHUNK, len(s)), fields=(), jet_fields=()).label)
    y = np.concatenate(labels)
    total = len(y)
    if n_labels > total:
        raise HepfmInputError(f"--n-labels {n_labels} is larger than the {total} labeled jets available",
                              sources[0].path)
    classes = np.unique(y)
    rng = np.random.default_rng(seed)
    per_class = {int(c): rng.permutation(np.flatnonzero(y == c)) for c in classes}
    quota = {c: 0 for c in per_class}
    left = n_labels
    while left > 0:  # fill classes round-robin so small classes are not over-asked
        open_classes = [c for c in per_class if quota[c] < len(per_class[c])]
        for c in open_classes[:left]:
            quota[c] += 1
            left -= 1
    chosen = np.sort(np.concatenate([per_class[c][: quota[c]] for c in per_class]))
    chunks, offset = [], 0
    for s in sources:
        mine = chosen[(chosen >= offset) & (chosen < offset + len(s))] - offset
        for start in range(0, len(s), READ_CHUNK):
            rows = mine[(mine >= start) & (mine < start + READ_CHUNK)] - start
            if len(rows):
                chunks.append(s.read(start, min(start + READ_CHUNK, len(s))).take(rows))
        offset += len(s)
    subset = JetChunk.concat(chunks)
    subset = subset.take(rng.permutation(len(subset)))
    return subset, {names[c]: int(quota[c]) for c in per_class}


class WithoutLabels:
    """A loader that drops labels, so that no self-supervised objective can use them by accident."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.sampler = getattr(loader, "sampler", None)
        self.dataset = getattr(loader, "dataset", None)
        self.batch_size = getattr(loader, "batch_size", None)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            batch.label = None
            yield batch
