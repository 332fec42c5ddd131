"""Split learning's room: the split shapes and the client's step through the server
(``shapes/``), the cut's codec (``cut.py``), and the server: its RPC entry points
(``server.py``), admission (``admission.py``) and serving modes (``serving.py``,
``batching.py``). Nothing is imported here, so the schema can import ``cut`` and ``shapes``
without pulling in the server."""
