"""The llama.cpp serving image's entrypoint: llama-cpp-python's own OpenAI-compatible server app,
plus the `/health` route that its server lacks and that probes and the sealed pretest ask.

The builder copies this one file into the serving image's config layer (the runtime package is
not in that image), so it imports nothing of gapforge_runtime: only llama_cpp's server and uvicorn,
from the serving lock. Usage: `python serve_llama.py CONFIG.json` (llama_cpp.server's config-file
format: host, port and the models, each with its alias).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> int:
    """Load the models named in the config (llama_cpp's app loads the first at once), then serve."""
    if len(argv) != 1:
        print("usage: serve_llama.py CONFIG.json", file=sys.stderr)
        return 2
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ConfigFileSettings, ServerSettings

    config = ConfigFileSettings.model_validate_json(Path(argv[0]).read_bytes())
    missing = [m.model for m in config.models[:1] if not Path(m.model).is_file()]
    if missing:
        print(
            f"{missing[0]}: no such file: mount the GGUF to serve there, read-only "
            f"(docker run -v FILE:{missing[0]}:ro ...)",
            file=sys.stderr,
        )
        return 2
    app = create_app(
        server_settings=ServerSettings.model_validate(config), model_settings=config.models
    )
    aliases = [m.model_alias or m.model for m in config.models]

    # The model is loaded before the server answers at all, so an answer means ready.
    def health() -> dict[str, Any]:
        return {"status": "ok", "models": aliases}

    app.add_api_route("/health", health, methods=["GET"])

    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
