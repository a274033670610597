"""The release manager's side of carrying a bundle into the gap: delta.py (only the blobs a site
lacks) and split.py (parts sized to the medium, with parity). The site's side (inventory, join,
rebuild) is gapforge/operator/; the formats both read are in gapforge/bundle/ (transfer.py,
archivemap.py, split_manifest.py, parity.py)."""
