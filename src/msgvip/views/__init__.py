"""Seeing a run: annotated clip renders (`msgvip show`) and a static HTML report (`msgvip report`)."""

from .report import write_report
from .show import Rendered, RenderedClip, show_clip

__all__ = ["Rendered", "RenderedClip", "show_clip", "write_report"]
