"""Exported models: the whole MNC model as one ONNX / TorchScript graph (``graph``, ``exporter``:
need Detectron2) and the runtimes that run it without Detectron2 (``bundle``, ``runtime``)."""
