"""Defences against patches: preprocessing defences in front of a classifier (:mod:`.preprocessing`),
and two certified ones, derandomized smoothing (:mod:`.smoothing`) and PatchCleanser
(:mod:`.patchcleanser`)."""
