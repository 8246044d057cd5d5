"""The training run's model in eager PyTorch + Detectron2, one batch of tiles at a time.

Kept apart from :mod:`.predictor` (which reads scenes with rasterio and writes polygons with
shapely/geopandas) so that what needs only the model (the benchmarks, a GPU machine with
Detectron2 but no geospatial stack) imports only torch and Detectron2.
"""

from __future__ import annotations

import contextlib

import numpy as np

from .input_size import scaled_shape, tile_scale


class EagerModel:
    """``cfg``'s model (MODEL.WEIGHTS loaded, on MODEL.DEVICE): tiles -> Instances on the CPU.

    ``autocast``: a torch dtype (e.g. ``torch.float16``) to run the forward under
    ``torch.autocast`` on the model's device, or None for the model's own precision.
    ``tile_size``: the side of a whole tile (tools/predict.py's --tile-size): every tile, an
    edge tile or a scene smaller than one included, is resized by the one factor the test
    resizing (INPUT.MIN/MAX_SIZE_TEST) gives an INPUT.TRAIN_TILE_SIZE tile (else a
    ``tile_size`` one), as the exported graph resizes; None: each image to MIN_SIZE_TEST
    (Detectron2's evaluation resize).
    """

    def __init__(self, cfg, autocast=None, tile_size: int | None = None):
        from detectron2.data import transforms as T
        from detectron2.modeling import build_model

        from ..modeling.checkpoint import load_trained_weights

        from ..modeling.tta import with_test_time_augmentation

        model = build_model(cfg).eval()
        load_trained_weights(cfg, model, cfg.MODEL.WEIGHTS)
        self.model = with_test_time_augmentation(cfg, model).eval()  # TEST.AUG.ENABLED
        self.resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        self.factor = tile_scale(cfg, tile_size)
        self.autocast = autocast

    def _resized(self, image: np.ndarray) -> np.ndarray:
        """(H, W, C) -> the model's input: by the fixed factor, else to MIN_SIZE_TEST."""
        from detectron2.data import transforms as T

        if self.factor is None:
            return self.resize.get_transform(image).apply_image(image)
        h, w = image.shape[:2]
        new_h, new_w = scaled_shape(h, w, self.factor)
        if (new_h, new_w) == (h, w):
            return image
        return T.ResizeTransform(h, w, new_h, new_w).apply_image(image)

    def __call__(self, images: list[np.ndarray]) -> list:
        """images: (H, W, C) float32 band values each -> one Instances per image (CPU)."""
        import torch

        inputs = []
        for image in images:
            resized = self._resized(image)
            inputs.append({"image": torch.as_tensor(resized.transpose(2, 0, 1).copy()),
                           "height": image.shape[0], "width": image.shape[1]})
        device = next(self.model.parameters()).device.type
        mixed = (torch.autocast(device, dtype=self.autocast) if self.autocast is not None
                 else contextlib.nullcontext())
        with torch.no_grad(), mixed:
            return [out["instances"].to("cpu") for out in self.model(inputs)]
