"""Image listing, robust decoding and atomic writes."""

from copydistill.io.atomic import atomic_write, atomic_write_text
from copydistill.io.images import IMAGE_EXTENSIONS, list_images, load_image

__all__ = ["IMAGE_EXTENSIONS", "atomic_write", "atomic_write_text", "list_images", "load_image"]
