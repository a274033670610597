"""The recipe's `serve:` section: which engine serves the recipe's artefacts, which artefacts it
may serve, and on which port. Absent, the build makes no serving image.

Its model is the recipe schema's (recipe_schema.Recipe holds a ServeSpec, and checks `artefacts`
against the recipe's `quantize` targets, which this section cannot see).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from gapforge_runtime.recipe_sweep import Strict

ServeArtefact = Literal["gguf:f16", "gguf:q8_0", "gguf:q4_k_m"]
"""What llama.cpp's server can load: the recipe's GGUF artefacts."""
NOT_BUILT_YET = {
    "vllm": "vLLM serving is not built yet (issue 26): only 'llama.cpp' serves for now; "
    "use engine: llama.cpp with the recipe's GGUF artefacts"
}


class ServeSpec(Strict):
    """The serving image: llama-cpp-python's OpenAI-compatible server on the recipe's GGUF files,
    built from its own lock (`lockfiles/<profile>.serve-llama.cpp.txt`) and pretested with the
    network cut."""

    engine: Literal["llama.cpp"] = "llama.cpp"
    """The serving engine; `llama.cpp` is the only one built so far."""
    artefacts: Annotated[list[ServeArtefact], Field(min_length=1)]
    """The artefacts the image may serve, each one of the recipe's `quantize` targets."""
    port: Annotated[int, Field(ge=1024, le=65535)] = 8080
    """The port the server listens on inside the container (non-root: 1024 and up)."""

    @field_validator("engine", mode="before")
    @classmethod
    def _engine_built(cls, value: Any) -> Any:
        if isinstance(value, str) and value in NOT_BUILT_YET:
            raise ValueError(NOT_BUILT_YET[value])
        return value

    @field_validator("artefacts")
    @classmethod
    def _no_duplicates(cls, value: list[str]) -> list[str]:
        twice = sorted({a for a in value if value.count(a) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} listed twice: remove the duplicate")
        return value


def unbuilt_artefacts(serve: ServeSpec, quantize: list[str]) -> str:
    """The problem with `serve.artefacts` naming a target the recipe does not build, or ''."""
    missing = [a for a in serve.artefacts if a not in quantize]
    if not missing:
        return ""
    return (
        f"artefacts {', '.join(missing)}: not among this recipe's quantize targets "
        f"({', '.join(quantize)}): add them to quantize or remove them from serve.artefacts"
    )
