"""The engine's lowest floor: pure array functions and process settings, NumPy only.

Modules: ``ops`` (window arithmetic, im2col/col2im, softmax and log-softmax), ``winograd`` (the
F(2x2, 3x3) transforms and their adjoints), ``normalization`` (batch normalization's per-channel
moments and affine maps), ``parallel`` (purenn's thread pool over samples and
row ranges), ``runtime`` (BLAS thread limits and the C allocator's treatment of large arrays).
Nothing here knows a layer, a model or a file.
"""
