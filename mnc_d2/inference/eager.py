"""The training run's model in eager PyTorch + Detectron2, one batch of tiles at a time.

Kept apart from :mod:`.predictor` (which reads scenes with rasterio and writes polygons with
shapely/geopandas) so that what needs only the model (the benchmarks, a GPU machine with
Detectron2 but no geospatial stack) imports only torch and Detectron2.
"""

from __future__ import annotations

import contextlib

import numpy as np


class EagerModel:
    """``cfg``'s model (MODEL.WEIGHTS loaded, on MODEL.DEVICE): tiles -> Instances on the CPU.

    ``autocast``: a torch dtype (e.g. ``torch.float16``) to run the forward under
    ``torch.autocast`` on the model's device, or None for the model's own precision.
    """

    def __init__(self, cfg, autocast=None):
        from detectron2.data import transforms as T
        from detectron2.modeling import build_model

        from ..modeling.checkpoint import load_trained_weights

        from ..modeling.tta import with_test_time_augmentation

        model = build_model(cfg).eval()
        load_trained_weights(cfg, model, cfg.MODEL.WEIGHTS)
        self.model = with_test_time_augmentation(cfg, model).eval()  # TEST.AUG.ENABLED
        self.resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        self.autocast = autocast

    def __call__(self, images: list[np.ndarray]) -> list:
        """images: (H, W, C) float32 band values each -> one Instances per image (CPU)."""
        import torch

        inputs = []
        for image in images:
            resized = self.resize.get_transform(image).apply_image(image)
            inputs.append({"image": torch.as_tensor(resized.transpose(2, 0, 1).copy()),
                           "height": image.shape[0], "width": image.shape[1]})
        device = next(self.model.parameters()).device.type
        mixed = (torch.autocast(device, dtype=self.autocast) if self.autocast is not None
                 else contextlib.nullcontext())
        with torch.no_grad(), mixed:
            return [out["instances"].to("cpu") for out in self.model(inputs)]
