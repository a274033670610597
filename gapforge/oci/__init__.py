"""OCI images as bytes: deterministic tars (tar.py, through sink.py), the config, manifest and
archive (image.py), and an archive streamed with its tags taken out (untag.py); nothing here knows
of recipes."""
