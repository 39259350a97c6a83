"""``attnscope serve``: a trained run behind a JSON API and a web viewer.

:class:`ModelService` computes (predictions, maps, similar cases) for decoded
images; :func:`create_app` puts it behind FastAPI with dynamic batching and the
safety limits. FastAPI, uvicorn and python-multipart are the ``serve`` extra
(``pip install 'attnscope[serve]'``); importing this package needs only the service.
"""

from attnscope.serve.service import ModelService, Upload

__all__ = ["ModelService", "Upload"]
