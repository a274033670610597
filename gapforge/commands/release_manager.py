"""The release manager's commands, on the connected side: none yet. This is where they will live.

What the release manager needs (docs/architecture.md, "Commands by user"): digests that mean something,
releases with channels, revocation and expiry, what changed between two releases, and transfers sized
to the site and its media. The coming commands, by where each will live:

    here (gapforge.commands.release_manager), connected side:
      release    publish a built, verified bundle's digests in a TUF repository of releases: channels,
                 revocation, expiry (the targets role says which digests are released where)
      diff       what changed between two releases or bundles: layers, packages, model, locks
      delta      a delta bundle against a site's signed inventory: only the blobs it lacks
      split      a bundle cut into parts sized to the medium, each hashed, with a signed parts
                 manifest and parity that covers at least one medium

    gapforge.commands.operator, inside the gap (their counterparts):
      trust      pin the release repository's TUF root.json once, out of band
      inventory  export the signed inventory of the blobs the site already holds (what `delta` reads)
      join       rebuild the identical bundle from parts or a delta and the site's own blobs, read-only
                 sources, then verify it like a full bundle

A command is added as in the other modules: `<name>_arguments(parser)` and `cmd_<name>(args)` here, one
row in gapforge.cli.COMMANDS.
"""
