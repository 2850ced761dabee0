"""The one exception type of the data pipeline."""


class DataError(ValueError):
    """A problem with the user's data or data options.

    The message always names the offending path or value, e.g.
    ``"class folder has no image files: /data/pv/Apple___healthy"`` or
    ``"image_size must be an int >= 8, received: image_size=4"``.
    """
