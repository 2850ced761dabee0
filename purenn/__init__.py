"""purenn: a deep-learning library written from first principles in NumPy."""

__version__ = "0.1.0"
