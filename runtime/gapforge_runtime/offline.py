"""Force offline mode and every library's telemetry off, before any of those libraries is imported.

Several libraries read these variables once, at import: `force_offline()` must run first (the CLI's
`main` and each torchrun rank call it before anything else).
"""

import os

OFFLINE_VARIABLES = {
    # Hugging Face: no hub look-ups, no downloads, no telemetry (TRL's ping goes through the hub's).
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_EVALUATE_OFFLINE": "1",  # the `evaluate` library, which lm-eval tasks may load metrics with
    "HF_UPDATE_DOWNLOAD_COUNTS": "0",  # `datasets` pings the hub to count a data set's downloads
    "DISABLE_TELEMETRY": "1",  # the older name huggingface_hub still honours
    # https://donottrack.sh; huggingface_hub honours "1", MLflow 3.x only "true": hence the next line.
    "DO_NOT_TRACK": "1",
    # MLflow 3.x sends usage telemetry unless told not to; no progress bars in a log file either.
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # Libraries the stack may pull in transitively: each phones home or syncs when enabled.
    "GRADIO_ANALYTICS_ENABLED": "False",
    "WANDB_DISABLED": "true",
    "WANDB_MODE": "disabled",  # as the image's environment sets it (gapforge/image.py)
    "SCARF_NO_ANALYTICS": "true",  # packages that report installs through Scarf
    "ANONYMIZED_TELEMETRY": "False",  # chromadb-style telemetry switch
}
"""Set whatever the caller's environment says. Not telemetry, so not here: TOKENIZERS_PARALLELISM
(a fork warning), spaCy (no telemetry), presidio (its network use is a model download and
tldextract's suffix list, which the data step avoids by configuration)."""


def force_offline() -> None:
    """Set the offline variables in this process, whatever the caller's environment says."""
    os.environ.update(OFFLINE_VARIABLES)
