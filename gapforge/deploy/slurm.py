"""The sbatch script of `gapforge deploy --slurm`, every value shell-quoted.

Jinja renders with autoescape off, so the environment's `finalize` does the quoting: every `{{ }}`
expression comes out through `shlex.quote`, after a check that refuses any control character
(gapforge.deploy.values), and the template never puts an expression inside quotes of its own (a
test holds it to that). The task that srun runs on each node is a constant single-quoted script
that holds no value at all: the values reach it as exported variables and as positional arguments
after the script, so no value is ever spliced into a quoted string.
"""

from __future__ import annotations

import shlex

from gapforge.deploy import DATA, OUTPUTS, RDZV_PORT, USER_ID, Deployment, runtime_command
from gapforge.deploy.values import line_value

SLURM_TEMPLATE = """\
#!/bin/bash
# {{ d.recipe }} {{ d.version }}: training across {{ d.nnodes }} node(s), written by `gapforge deploy --slurm`.
# The image by digest: {{ d.image }} (image ID {{ d.image_id }})
# Submit from a shared folder: sbatch {{ script_name }}  (DATA and OUT below must be on storage every node sees)
#SBATCH --job-name={{ d.name }}
#SBATCH --nodes={{ d.nnodes }}
#SBATCH --ntasks-per-node=1
{% if d.gpu %}#SBATCH --gpus-per-node={{ d.gpus_per_node }}
{% endif %}#SBATCH --exclusive
#SBATCH --time={{ d.time_limit }}
{% if d.partition %}#SBATCH --partition={{ d.partition }}
{% endif %}#SBATCH --output={{ d.name }}-%j.log
set -euo pipefail

# Every value is assigned here, shell-quoted; the task script below holds none of its own.
JOB_NAME={{ d.name }}
IMAGE={{ d.image }}
IMAGE_USER={{ user }}
DATA_FILE={{ d.data_file }}
DATA_IN_IMAGE={{ data_in_image }}
OUTPUTS_IN_IMAGE={{ outputs }}
RDZV_PORT={{ port }}
DATA="${DATA:-$PWD/data/$DATA_FILE}"
OUT="${OUT:-$PWD/outputs/$JOB_NAME}"
{% if d.slurm_runtime == "apptainer" %}# Convert once on the connected side or a login node: apptainer build {{ sif }} docker://{{ d.image }}
SIF="${SIF:-$PWD/$JOB_NAME.sif}"
{% endif %}
head_node="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
export RDZV_ENDPOINT="${head_node}:$RDZV_PORT"
mkdir -p "$OUT"
export JOB_NAME IMAGE IMAGE_USER DATA OUT DATA_IN_IMAGE OUTPUTS_IN_IMAGE{% if d.slurm_runtime == "apptainer" %} SIF{% endif %}

# One task per node; each runs torchrun (through the runtime) over its {{ d.nproc }} process(es).
# A node that stops ends the job on every node; run this script again, adding --resume, to continue.
# The task's script is in single quotes on purpose: $SLURM_NODEID and the rest expand on each node;
# the runtime's arguments follow it ("$@" inside).
# shellcheck disable=SC2016
srun --kill-on-bad-exit=1 bash -c '
set -euo pipefail
rank="$SLURM_NODEID"
mkdir -p "$OUT/node-$rank"
{% if d.nnodes > 1 %}set -- "$@" --node-rank "$rank" --rdzv-endpoint "$RDZV_ENDPOINT"
{% endif %}{% if d.slurm_runtime == "apptainer" %}exec apptainer run --containall --cleanenv --writable-tmpfs {% if d.gpu %}--nv {% endif %}\\
  --bind "$DATA:$DATA_IN_IMAGE:ro" --bind "$OUT/node-$rank:$OUTPUTS_IN_IMAGE" \\
  "$SIF" "$@"
{% elif d.slurm_runtime == "enroot" %}exec enroot start --rw \\
  --mount "$DATA:$DATA_IN_IMAGE" --mount "$OUT/node-$rank:$OUTPUTS_IN_IMAGE" \\
  "$JOB_NAME" "$@"
{% else %}exec docker run --rm --read-only --user "$IMAGE_USER" --network host --cap-drop ALL \\
  --security-opt no-new-privileges {% if d.gpu %}--gpus all {% endif %}--tmpfs /tmp --tmpfs /home/gapforge --shm-size 16g \\
  -v "$DATA:$DATA_IN_IMAGE:ro" -v "$OUT/node-$rank:$OUTPUTS_IN_IMAGE" \\
  "$IMAGE" "$@"
{% endif %}' gapforge-task{% for arg in args %} {{ arg }}{% endfor %}
"""


def shell_word(value: object) -> str:
    """Jinja's finalize: one value as one shell word, or UnsafeValue if it holds a control character."""
    return shlex.quote(line_value(str(value), "a value of the sbatch script"))


def slurm_script(d: Deployment, script_name: str) -> str:
    """The sbatch script (Jinja2), run through `bash -n` and shellcheck in the tests."""
    from jinja2 import Environment, StrictUndefined

    data_in_image = f"{DATA}/{d.data_file}"
    args = runtime_command(d, OUTPUTS, data_in_image)
    if d.slurm_runtime == "enroot":
        args = ["gapforge-runtime", *args]  # enroot start runs a command, not the entrypoint
    env = Environment(
        undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False, finalize=shell_word
    )
    return env.from_string(SLURM_TEMPLATE).render(
        d=d,
        script_name=line_value(script_name, "--slurm's file name"),
        port=RDZV_PORT,
        data_in_image=data_in_image,
        outputs=OUTPUTS,
        user=f"{USER_ID}:{USER_ID}",
        sif=f"{d.name}.sif",
        args=args,
    )
