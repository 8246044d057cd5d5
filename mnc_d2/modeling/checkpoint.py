"""``MultiBandCheckpointer``: load a 3-band (RGB) checkpoint into an N-band model.

Where a checkpoint tensor and the model's parameter differ only in input channels (3 in the
checkpoint, N in the model: the stem's first convolution), the weight is inflated: for each
model input band that is one of the checkpoint's bands, that band's filter is copied; every
other band gets the mean of the checkpoint's filters. Which file band each checkpoint channel
was trained on is ``INPUT.CHECKPOINT_BANDS`` (1-based file band indices, in the checkpoint's
channel order; empty = the first three entries of INPUT.BANDS). A log line says what was done.
"""

from __future__ import annotations

import logging

import torch
from detectron2.checkpoint import DetectionCheckpointer

logger = logging.getLogger(__name__)


def inflate_input_channels(weight: torch.Tensor, input_bands: list[int],
                           checkpoint_bands: list[int]) -> torch.Tensor:
    """(O, 3, k, k) weight -> (O, N, k, k) for an N-band input (see module docstring)."""
    if weight.shape[1] != len(checkpoint_bands):
        raise ValueError(f"checkpoint weight has {weight.shape[1]} input channels but "
                         f"INPUT.CHECKPOINT_BANDS lists {len(checkpoint_bands)}")
    mean = weight.mean(dim=1)
    columns = []
    for band in input_bands:
        if band in checkpoint_bands:
            columns.append(weight[:, checkpoint_bands.index(band)])
        else:
            columns.append(mean)
    return torch.stack(columns, dim=1).contiguous()


class MultiBandCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that inflates 3-channel input filters to the model's band count."""

    def __init__(self, model, save_dir: str = "", *, input_bands: list[int],
                 checkpoint_bands: list[int] | None = None, **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.input_bands = [int(b) for b in input_bands]
        self.checkpoint_bands = [int(b) for b in (checkpoint_bands or self.input_bands[:3])]

    def _convert_ndarray_to_tensor(self, state_dict: dict) -> None:
        # fvcore calls this on the (name-aligned) checkpoint dict right before comparing shapes
        # with the model, which is the one place where inflation sees final parameter names.
        super()._convert_ndarray_to_tensor(state_dict)
        model_state = self.model.state_dict()
        for key, value in list(state_dict.items()):
            target = model_state.get(key)
            if (target is None or value.dim() != 4 or target.dim() != 4
                    or value.shape[1] == target.shape[1] or value.shape[1] != 3
                    or value.shape[0] != target.shape[0] or value.shape[2:] != target.shape[2:]):
                continue
            if len(self.input_bands) != target.shape[1]:
                raise ValueError(f"{key}: the model takes {target.shape[1]} bands but "
                                 f"INPUT.BANDS lists {len(self.input_bands)}")
            state_dict[key] = inflate_input_channels(value, self.input_bands,
                                                     self.checkpoint_bands)
            copied = [b for b in self.input_bands if b in self.checkpoint_bands]
            logger.info("%s: inflated a 3-band checkpoint filter to %d bands: copied RGB filters "
                        "to bands %s, initialised bands %s from their mean", key,
                        target.shape[1], copied,
                        [b for b in self.input_bands if b not in self.checkpoint_bands])
