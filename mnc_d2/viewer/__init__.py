"""A web map of a prediction folder: footprints over the imagery, in the browser, offline.

``tools/view.py`` builds it (:func:`.site.build_site`) and serves it (:func:`.serve.serve`).
Torch-free. The map library (MapLibre GL JS) is vendored from the npm registry at install time
(:mod:`.assets`), so the page needs no network.
"""
