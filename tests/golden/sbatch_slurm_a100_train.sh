#!/bin/bash

# Parameters
#SBATCH --array=0-18%8
#SBATCH --cpus-per-task=12
#SBATCH --dependency=afterok:1001:1002
#SBATCH --error=<jobs>/%A_%a/%A_%a_0_log.err
#SBATCH --gpus-per-node=8
#SBATCH --job-name=ablate-train
#SBATCH --kill-on-invalid-dep=yes
#SBATCH --mem=0GB
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=8
#SBATCH --open-mode=append
#SBATCH --output=<jobs>/%A_%a/%A_%a_0_log.out
#SBATCH --signal=USR2@120
#SBATCH --time=4320
#SBATCH --wckey=submitit

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output <jobs>/%A_%a/%A_%a_%t_log.out --error <jobs>/%A_%a/%A_%a_%t_log.err <python> -u -m submitit.core._submit <jobs>/%j
