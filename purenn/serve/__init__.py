"""``purenn serve``: an HTTP API and a web page over a model file (the optional extra ``serve``).

Modules: ``model`` (the loaded model, its metadata and id, image preparation), ``batcher``
(micro-batching on one inference thread), ``store`` (the history: SQLite or PostgreSQL),
``images`` (uploads and thumbnails kept by SHA-256), ``metrics`` (Prometheus text), ``limits``
(ASGI middleware: upload cap, header limits, security headers, request metrics), ``tokens``
(the access tokens file, hashing, roles), ``ratelimit`` (token buckets in bounded memory),
``access`` (ASGI middleware: who may call what, rate limits), ``app`` (the FastAPI application),
``feedback``
(``diagnoses export``), ``cli`` (the two commands), ``page/`` (the HTML, JS and CSS served at
``/``). Nothing here is imported by ``import purenn``; FastAPI is imported only by ``app``.
"""
