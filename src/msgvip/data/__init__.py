"""Input clips: the MSG_VIP reader, clip discovery (folders or manifest) and synthetic demo data."""

from .clip import Clip, ClipError, read_clip
from .sources import ClipSource, discover_clips

__all__ = ["Clip", "ClipError", "ClipSource", "discover_clips", "read_clip"]
