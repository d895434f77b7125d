"""Files and object storage: atomic writes and safe archives (:mod:`.files`), S3-compatible storage
with bounded retries (:mod:`.storage`)."""
