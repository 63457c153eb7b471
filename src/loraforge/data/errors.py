"""The data layer's user error (defined with the others in `loraforge.errors`)."""

from ..errors import DataError

__all__ = ["DataError"]
