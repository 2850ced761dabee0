"""The ``purenn`` command: ``main`` and every subcommand's parser. Nothing imports this package.

Modules: ``main`` (the command, train/evaluate/predict/summary/demo), ``arguments`` (argument types
shared by the subcommands), ``cache``, ``serve`` (serve and diagnoses), ``explain``, ``export``.
"""
