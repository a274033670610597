"""The sealed image's contract between the builder and the runtime: where the image puts things,
who runs it, and the environment variables that point the runtime at them.

The builder lays the image out by these names and the runtime finds its inputs by them, so they
are defined once, here; the module imports nothing, so the builder can import it too.
"""

PREFIX = "/opt/gapforge"
MODEL_DIR = f"{PREFIX}/model"
"""The recipe's base model (Hugging Face layout, safetensors)."""
MODELS_DIR = f"{PREFIX}/models"
"""The recipe's `models:` entries (a judge, a teacher), one folder per name."""
RECIPE_DIR = f"{PREFIX}/recipe"
"""recipe.json as the builder wrote it, with the sample data, the locks and any lm-eval tasks."""
RECIPE_FILE = f"{RECIPE_DIR}/recipe.json"
LLAMA_CPP_DIR = f"{PREFIX}/llama.cpp"
"""llama.cpp's conversion scripts, from the locked llama-cpp-python sdist."""
TRITON_LAUNCHER_DIR = f"{PREFIX}/triton"
"""Triton's CUDA launcher, built into the cuda image (triton_launcher.py)."""
FEATURES_FILE = f"{PREFIX}/features.json"
"""The image's record of its feature sets and their wheels (gapforge_runtime.features reads it)."""
OUT_DIR = "/outputs"
"""Where the image's runs write (a volume the operator mounts)."""

USER_NAME = "gapforge"
USER_ID = 1000
HOME = f"/home/{USER_NAME}"
IMAGE_USER = f"{USER_ID}:{USER_ID}"
"""The image's non-root user as `docker run --user` and the image config spell it."""

RECIPE_ENV = "GAPFORGE_RECIPE"
FEATURES_ENV = "GAPFORGE_FEATURES"
"""Set in every image to FEATURES_FILE; unset in a plain venv or on a GPU machine."""
MODEL_ENV = "GAPFORGE_MODEL_DIR"
MODELS_ENV = "GAPFORGE_MODELS_DIR"
LLAMA_CPP_ENV = "GAPFORGE_LLAMA_CPP"
OUT_ENV = "GAPFORGE_OUT"
PROFILE_ENV = "GAPFORGE_PROFILE"
CPU_BASELINE_ENV = "GAPFORGE_LLAMA_CPP_CPU_BASELINE"
"""The x86 features the image's llama.cpp was built for (`AVX,AVX2,F16C,FMA`), set by the builder."""
TRITON_LAUNCHER_ENV = "GAPFORGE_TRITON_LAUNCHER"
IMAGE_DIGEST_ENV = "GAPFORGE_IMAGE_DIGEST"
"""Set by `gapforge run`: the image's config digest, recorded in the run's manifest."""
BUNDLE_SUMS_ENV = "GAPFORGE_BUNDLE_SHA256SUMS"
"""Set by `gapforge run`: the sha256 of the bundle's SHA256SUMS, recorded in the manifest."""
