"""Force offline mode before any Hugging Face library is imported."""

import os

OFFLINE_VARIABLES = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}


def force_offline() -> None:
    """Set the offline variables in this process, whatever the caller's environment says."""
    os.environ.update(OFFLINE_VARIABLES)
