"""Image listing, robust decoding, image records, the embeddings store and atomic writes."""

from copydistill.io.atomic import atomic_write, atomic_write_text
from copydistill.io.embeddings import Embeddings
from copydistill.io.images import IMAGE_EXTENSIONS, list_images, load_image
from copydistill.io.records import ImageRecord, folder_records

__all__ = ["IMAGE_EXTENSIONS", "Embeddings", "ImageRecord", "atomic_write", "atomic_write_text",
           "folder_records", "list_images", "load_image"]
