"""Import FastJet without its banner: the C++ library prints it on stdout at the first clustering,
which would corrupt machine-readable output (``--json``). One tiny clustering with stdout redirected
at the file-descriptor level takes the banner out once per process."""

from __future__ import annotations

import os
import sys
from typing import Any

_silenced = False


def quiet_fastjet() -> Any:
    """The ``fastjet`` module, banner already printed into /dev/null."""
    global _silenced
    import fastjet

    if not _silenced:
        import awkward as ak

        sys.stdout.flush()
        saved = os.dup(1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 1)
            one = ak.Array([[{"px": 1.0, "py": 0.0, "pz": 0.0, "E": 1.0}]])
            fastjet.ClusterSequence(
                one, fastjet.JetDefinition(fastjet.antikt_algorithm, 0.4)
            ).inclusive_jets()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(devnull)
        _silenced = True
    return fastjet
