"""OpenAI-compatible HTTP serving: `mmdialog serve --checkpoint CKPT` (see app.py)."""

from mmdialog.serve.app import create_app, serve

__all__ = ["create_app", "serve"]
