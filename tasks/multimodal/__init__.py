"""Multimodal tasks (FedAPM's KU-HAR, Crema-D, CrisisMMD, and the offline UCI mfeat).

Data representation: the project's pipeline carries one 2-D float32 array per dataset, so a
multimodal sample is packed into one row (``layout.Layout``): every modality is padded or
truncated to a fixed shape (``D`` for a static vector, ``T x D`` for a sequence,
``C x H x W`` for an image), flattened and concatenated in the layout's order, followed by
one length column per sequence modality (its valid steps; the rest is zero padding). The
model (``model.MultimodalNet``) knows the layout, splits each row back into modalities,
encodes each one into tokens, masks padding by length, fuses all tokens by multi-head
attention pooling and classifies (ALGORITHMS.md §1.8).

Modules: ``layout`` (packing), ``model`` (network and personalization presets),
``features`` (log-mel, thumbnails, hashed text), ``common`` (shared task base and helpers),
and one module per dataset: ``mfeat``, ``kuhar``, ``cremad``, ``crisismmd``.
"""

from __future__ import annotations

from tasks.base import Task
from tasks.multimodal.cremad import CremaDTask
from tasks.multimodal.crisismmd import CrisisMMDTask
from tasks.multimodal.kuhar import KUHARSubsamplesTask, KUHARTask
from tasks.multimodal.mfeat import MultipleFeaturesTask

MULTIMODAL_TASKS: dict[str, type[Task]] = {
    task.name: task
    for task in (MultipleFeaturesTask, KUHARTask, KUHARSubsamplesTask, CremaDTask, CrisisMMDTask)
}
"""Task name -> task class, looked up lazily by ``tasks.registry``."""
