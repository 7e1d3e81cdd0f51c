"""``arsel serve``: the ``arsel.v1`` stream server (ASGI app, sessions, protocol) and its Python client.

FastAPI/uvicorn (``pip install 'arsel[serve]'``) are imported only by ``app`` and ``cli`` when run;
``protocol``, ``rle`` and ``client`` need only numpy, OpenCV, jsonschema and ``websockets``.
``ray_encoder`` (a batching Ray Serve keyframe encoder and the backend that calls it) needs
``pip install 'arsel[ray]'``.
"""
