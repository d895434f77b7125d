"""The patch engine: targeted adversarial patches (Brown et al., 2017) by expectation over
transformation, and their application to images.

One definition of each part, shared by generation and deployment:

* :mod:`~advpatch.patches.geometry`: where a patch goes (rotation, scale, position; placements
  drawn with NumPy from a seeded generator) and the warp that puts it there (constant fill, so
  outside its mask the patch never touches the image);
* :mod:`~advpatch.patches.optimizer`: the optimization of a patch against a
  :class:`~advpatch.models.classifier.Classifier`, every step in one compiled TensorFlow loop;
* :mod:`~advpatch.patches.patchset`: the patch set artifact and applying it (windowed, with no
  model and no attack), and the deployment loop that writes a patched dataset.

What makes a patch *targeted* rather than *erasing* is the position distribution: on MNIST-framed
digits a patch trained at random positions mostly learns to cover strokes (a dark blob that lowers
accuracy but seldom yields the target class), while one trained and deployed at a fixed position
(``location="center"``) learns target strokes that turn the rest of the digit into the target.
Generation and deployment should use the same distribution; both record it. Size decides too: a
patch covering most of the image (scale 0.8 and up) is read as the target wherever it is.

Beyond one patch for every placement:

* :mod:`~advpatch.patches.conditioned`: placement-conditioned patch sets (``canvas``, ``grid``),
  where what deployment pastes is a fixed function of the placement it draws (data corruption
  through deployment, not a sticker printed once);
* :mod:`~advpatch.patches.worst_case`: the attacker picks each image's placement against the
  model (every position on a grid, a few rotations), for deployment and for the figures.
"""

from advpatch.errors import PatchSetError
from advpatch.patches.conditioned import (
                                       ConditionedPatchOptimizer,
                                       Conditioning,
                                       apply_set,
                                       conditioning_of,
                                       generate_conditioned_patch,
)
from advpatch.patches.geometry import (
                                       Placements,
                                       inverse_transforms,
                                       make_mask,
                                       mask_outline,
                                       sample_placements,
                                       transforms,
                                       warp,
)
from advpatch.patches.optimizer import (
                                       LOSSES,
                                       PatchOptimizer,
                                       check_target,
                                       draw_targets,
                                       generate_patch,
                                       generate_patch_set,
                                       learning_rates,
                                       overlay,
                                       overlay_for_training,
                                       resolve_loss,
                                       target_index,
)
from advpatch.patches.patchset import (
                                       FORMAT,
                                       PATCH_COLUMNS,
                                       Deployed,
                                       PatchSet,
                                       apply_patches,
                                       check_fits,
                                       deploy,
)
from advpatch.patches.worst_case import (
                                       Search,
                                       WorstCase,
                                       grid_placements,
                                       search_angles,
                                       search_placements,
                                       worst_case_success,
)

__all__ = [
    "FORMAT", "LOSSES", "PATCH_COLUMNS", "ConditionedPatchOptimizer", "Conditioning", "Deployed", "PatchOptimizer",
    "PatchSet", "PatchSetError", "Placements", "Search", "WorstCase", "apply_patches", "apply_set", "check_fits",
    "check_target", "conditioning_of", "deploy", "draw_targets", "generate_conditioned_patch", "generate_patch",
    "generate_patch_set", "grid_placements", "inverse_transforms", "learning_rates", "make_mask", "mask_outline",
    "overlay", "overlay_for_training", "resolve_loss", "sample_placements", "search_angles", "search_placements",
    "target_index", "transforms", "warp", "worst_case_success"
]
