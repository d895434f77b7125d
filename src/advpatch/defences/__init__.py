"""Defences against patches, each one self-describing object of :mod:`.base`'s registry:
preprocessing defences in front of a classifier (:mod:`.preprocessing`, :mod:`.feature_squeezing`),
training defences (:mod:`.training`) and certified ones (:mod:`.certified`: derandomized smoothing,
:mod:`.smoothing`, and PatchCleanser, :mod:`.patchcleanser`)."""
