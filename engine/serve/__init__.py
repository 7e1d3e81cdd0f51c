"""``arsel serve``: the ``arsel.v1`` stream server (ASGI app, sessions, protocol) and its Python client.

FastAPI/uvicorn (``pip install 'arsel[serve]'``) are imported only by ``app`` and ``cli`` when run;
``protocol``, ``rle`` and ``client`` need only numpy, OpenCV, jsonschema and ``websockets``.
"""
