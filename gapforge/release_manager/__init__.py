"""The release manager's side, connected: the TUF repository of releases (repository, create,
releases, maintenance, entry), what crosses the gap to a site (delta, split) and what changed
between two releases (diff/); the site's side of each is gapforge/operator/."""
