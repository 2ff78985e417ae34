"""The serving application, for `serve run` / `serve deploy` (see serve/config.yaml).

    UNIME_API_KEY=... serve run serve/config.yaml

The application is built by ``unime_ray.serving.app.build_app`` from the config's
``args``; this module only names it, so a checkout can run it by import path as well:
``serve run serve.app:build_app index.path=...``.
"""

from unime_ray.serving.app import build_app

__all__ = ["build_app"]
