"""Serving: KServe v2 HTTP over ONNX Runtime, with dynamic batching and Prometheus metrics.

Needs the ``serve`` extra (starlette, uvicorn, prometheus-client, pillow); those are imported
inside the modules that use them, so importing this package alone stays cheap.
"""

from __future__ import annotations

__all__: list[str] = []
