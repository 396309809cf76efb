"""How the package is layered: every module imports only from its own part or from the layers below it.

A *part* is a subpackage (``diffmem.dynamics``, ``diffmem.metrics`` ...) or a top-level module
(``diffmem.io``, ``diffmem.cli`` ...). From the bottom up:

=====  ==================================================  ===============================================
layer  parts                                               what they are
=====  ==================================================  ===============================================
0      layers, lazy, io, schedule, state, validation       foundations: they import nothing else of diffmem
1      config, cliutils, figures, sampling, data, models   building blocks: configurations and flags,
                                                           pictures and reports, samplers, data sets,
                                                           networks and the one diffusers layer
                                                           (:mod:`diffmem.models.diffusers`)
2      metrics                                             memorization fraction, Fréchet distance, KID,
                                                           losses, the measurement record
3      dynamics, theory, audit, monitor, external          the parts a user runs: none imports another,
                                                           except where :data:`SIDEWAYS` says
4      cli, diffmem                                        the ``diffmem`` command (``measure`` spans the
                                                           dynamics and external parts, so it is
                                                           registered here) and the package's lazy exports
=====  ==================================================  ===============================================

Imports inside functions count, and so do the modules named in a package's lazy-export table
(``_WHERE``). Importing the root package itself (``from diffmem import __version__``) is always
allowed: Python runs it before any of its submodules. ``tests/test_layers.py`` walks every module and
fails on an import that goes upward or sideways.
"""

from __future__ import annotations

__all__ = ["LAYERS", "SIDEWAYS"]

LAYERS: tuple[tuple[str, ...], ...] = (
    ("layers", "lazy", "io", "schedule", "state", "validation"),
    ("config", "cliutils", "figures", "sampling", "data", "models"),
    ("metrics",),
    ("dynamics", "theory", "audit", "monitor", "external"),
    ("cli", "diffmem"),
)
"""The parts of each layer, lowest first (``"diffmem"`` is the root package's ``__init__``)."""

SIDEWAYS: dict[str, tuple[str, ...]] = {"external": ("diffmem.audit.sscd",)}
"""The only imports between two parts of one layer: a part, and the modules of a sibling it may import.
``diffmem measure --model --space sscd:PATH`` embeds images with the audit's SSCD copy-detection
descriptor; nothing else of the audit is reachable from ``external``."""
