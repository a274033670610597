"""`gapforge diff A B`: what changed between two bundles, for release notes and transfer planning.

Recipe keys and hyper-parameters, Python and Debian packages, model files (and, for .safetensors,
which tensors), image layers and the bytes that must cross the gap to deliver B to a site holding A,
and the pretest's figures side by side. It reads what the bundles say about themselves; the command
(gapforge.commands.diff) passes both through the trust gate first, so nothing is diffed
before its check passes, and every name it takes from bundle.json is parsed (gapforge.names).
"""

from __future__ import annotations

from gapforge.release_manager.diff.compare import compare_bundles
from gapforge.release_manager.diff.render import diff_json, render_markdown, render_text
from gapforge.release_manager.diff.results import BundleDiff
from gapforge.release_manager.diff.safetensors import TensorDigest, tensor_digests

__all__ = [
    "BundleDiff",
    "TensorDigest",
    "compare_bundles",
    "diff_json",
    "render_markdown",
    "render_text",
    "tensor_digests",
]
