"""``purenn serve``: an HTTP API and a web page over a model file (the optional extra ``serve``).

Modules: ``model`` (the loaded model and its metadata), ``batcher`` (micro-batching on one
inference thread), ``store`` (the history: SQLite or PostgreSQL), ``metrics`` (Prometheus text),
``app`` (the FastAPI application), ``cli`` (the ``serve`` and ``diagnoses export`` commands).
Nothing here is imported by ``import purenn``; FastAPI is imported only by ``app``.
"""
