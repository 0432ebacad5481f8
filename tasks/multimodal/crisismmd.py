"""``crisismmd``: CrisisMMD v2.0 humanitarian task, tweet image + tweet text, 8 classes.

Reads ``<data-dir>/crismmd_datasplit_all/task_humanitarian_text_img_{train,dev,test}.tsv``
(tab-separated, header ``event_name tweet_id image_id tweet_text image label label_text
label_image label_text_image``) and the images they name (``image`` is relative to
data-dir, ``data_image/<event>/<d_m_yyyy>/<tweet_id>_<k>.jpg``). The class is ``label``.

No pretrained weights are available offline, so the features differ from the paper's
(MobileNetV2 image / MobileBERT text features): the image modality is the picture resized to
32 x 32 RGB (ImageNet-normalised) through a small CNN encoder, the text modality the tweet's
word unigrams and bigrams hashed into 1024 L2-normalised counts (scikit-learn's stateless
HashingVectorizer) through an MLP. Train + dev form the pool (Dirichlet label skew, as in
the FedAPM code; there are no natural clients), test is the server test set.
"""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

import numpy as np

from tasks.base import DataOptions
from tasks.data import TaskData
from tasks.multimodal.common import MultimodalTask, assemble
from tasks.multimodal.features import hashed_text, image_thumbnail, normalize_rgb
from tasks.multimodal.layout import Layout, Modality

SPLIT_DIR = "crismmd_datasplit_all"
SPLITS = ("train", "dev", "test")
COLUMNS = (
    "event_name",
    "tweet_id",
    "image_id",
    "tweet_text",
    "image",
    "label",
    "label_text",
    "label_image",
    "label_text_image",
)
LABELS = (
    "affected_individuals",
    "infrastructure_and_utility_damage",
    "injured_or_dead_people",
    "missing_or_found_people",
    "rescue_volunteering_or_donation_effort",
    "vehicle_damage",
    "other_relevant_information",
    "not_humanitarian",
)
IMAGE_SIDE = 32
TEXT_FEATURES = 1024


def split_file(split: str) -> str:
    """Path of one split's TSV, relative to data-dir."""
    return f"{SPLIT_DIR}/task_humanitarian_text_img_{split}.tsv"


def read_split(path: Path) -> list[dict[str, str]]:
    """The rows of one split file, checking the header."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"header {reader.fieldnames}, expected {list(COLUMNS)}")
        rows = list(reader)
    if any(None in row or None in row.values() for row in rows):
        raise ValueError(f"a row does not have the {len(COLUMNS)} tab-separated fields")
    return rows


class CrisisMMDTask(MultimodalTask):
    """Image (32x32 CNN) + hashed text (MLP); official test split as the server test set."""

    name = "crisismmd"
    title = "CrisisMMD"
    num_classes = len(LABELS)
    default_partitioner = "dirichlet"
    layout = Layout(
        (
            Modality("image", "cnn", (3, IMAGE_SIDE, IMAGE_SIDE)),
            Modality("text", "mlp", (TEXT_FEATURES,)),
        )
    )
    paper_preset = ("encoders.image", "encoders.text")
    expected = (
        f"<data-dir>/{split_file('{train,dev,test}')} (tab-separated, header "
        f"{' '.join(COLUMNS)}) and the images they name under <data-dir>/data_image/, as in "
        "the unpacked CrisisMMD_v2.0 archive"
    )

    def load(self, options: DataOptions) -> TaskData:
        """Read the three splits and their images; train + dev are pooled."""
        root = self.data_root(options)
        rows: list[dict[str, str]] = []
        split_of: list[str] = []
        for split in SPLITS:
            path = root / split_file(split)
            if not path.is_file():
                raise self.unavailable(path, "split file not found")
            part = self.read(path, read_split)
            rows += part
            split_of += [split] * len(part)
        if not rows:
            raise self.unavailable(root / SPLIT_DIR, "the split files have no rows")
        unknown = sorted({r["label"] for r in rows} - set(LABELS))
        if unknown:
            raise self.unavailable(root / SPLIT_DIR, f"unknown labels {unknown}")
        images = np.stack(
            [self.read(root / r["image"], partial(image_thumbnail, side=IMAGE_SIDE)) for r in rows]
        )
        return assemble(
            self.layout,
            {
                "image": normalize_rgb(images),
                "text": hashed_text([r["tweet_text"] for r in rows], TEXT_FEATURES),
            },
            {},
            np.asarray([LABELS.index(r["label"]) for r in rows], dtype=np.int64),
            self.num_classes,
            options.seed,
            test=np.asarray(split_of) == "test",
        )
