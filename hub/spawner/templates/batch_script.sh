#!/bin/bash
#SBATCH --job-name={{job_name}}
#SBATCH --output={{output_file}}
#SBATCH --chdir={{homedir}}
#SBATCH --export={{keepvars}}
#SBATCH --partition={{partition}}
#SBATCH --time={{runtime}}
#SBATCH --cpus-per-task={{nprocs}}
#SBATCH --mem={{memory}}
{% if gres %}#SBATCH --gres={{gres}}
{% endif %}{% if account %}#SBATCH --account={{account}}
{% endif %}{% if qos %}#SBATCH --qos={{qos}}
{% endif %}{% if reservation %}#SBATCH --reservation={{reservation}}
{% endif %}{% if options %}#SBATCH {{options}}
{% endif %}
set -euo pipefail
# what the session and its benchmark jobs create is the user's alone (project spaces share
# through their default ACL, see `aif project create`)
umask 077
# what the session knows about its own job (shown by the session-info extension)
export {{aif.SLURM_JOB_ID}}="$SLURM_JOB_ID" {{aif.SLURM_NODE}}="$SLURMD_NODENAME"
export {{aif.GPUS}}="${CUDA_VISIBLE_DEVICES:-}"
# bash's own clock (4.2+), not two `date` processes in every session's start
printf -v aif_now '%(%s)T' -1
TZ=UTC0 printf -v {{aif.WALLTIME_END}} '%(%Y-%m-%dT%H:%M:%SZ)T' "$(( aif_now + {{walltime_seconds}} ))"
export {{aif.WALLTIME_END}}
{{environment}}
{{prologue}}
{% if srun %}{{srun}} {% endif %}{{image_prefix}}{{cmd}}
{{epilogue}}
