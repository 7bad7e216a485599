"""Other programs' names for bertkit's flags (Hugging Face's Trainer and run_qa.py, Google's and NVIDIA's scripts,
torchrun), for the command line's one-line answer to an unknown flag (`--lr` -> "did you mean --learning_rate?")."""

from __future__ import annotations

import difflib

# flag -> the names bertkit's commands give it, in order of preference: the first the command has is suggested
ALIASES: dict[str, tuple[str, ...]] = {
    "--lr": ("--learning_rate",),
    "--model_name_or_path": ("--init_checkpoint", "--model_load_dir"),
    "--model_name": ("--init_checkpoint", "--model_load_dir"),
    "--checkpoint": ("--init_checkpoint", "--model_load_dir"),
    "--init_checkpoint": ("--model_load_dir",),
    "--resume_from_checkpoint": ("--resume",),
    "--per_device_train_batch_size": ("--batch_size_per_device",),
    "--per_gpu_train_batch_size": ("--batch_size_per_device",),
    "--train_batch_size": ("--batch_size_per_device",),
    "--batch_size": ("--batch_size_per_device",),
    "--per_device_eval_batch_size": ("--eval_batch_size_per_device", "--predict_batch_size", "--batch_size_per_device"),
    "--per_gpu_eval_batch_size": ("--eval_batch_size_per_device", "--predict_batch_size", "--batch_size_per_device"),
    "--num_train_epochs": ("--num_epochs", "--iter_num"),
    "--epochs": ("--num_train_epochs", "--num_epochs", "--iter_num"),
    "--max_steps": ("--iter_num",),
    "--num_train_steps": ("--iter_num",),
    "--warmup_steps": ("--warmup_batches",),
    "--num_warmup_steps": ("--warmup_batches",),
    "--warmup_ratio": ("--warmup_proportion", "--warmup_batches"),
    "--weight_decay": ("--weight_decay_rate",),
    "--output_dir": ("--model_save_dir",),
    "--logging_dir": ("--log_dir",),
    "--overwrite_output_dir": ("--force",),
    "--logging_steps": ("--loss_print_every_n_iter",),
    "--save_steps": ("--model_save_every_n_iter",),
    "--save_checkpoints_steps": ("--model_save_every_n_iter",),
    "--save_total_limit": ("--keep_last_n",),
    "--eval_steps": ("--eval_every_n_iter",),
    "--gradient_accumulation_steps": ("--num_accumulation_steps",),
    "--max_seq_length": ("--seq_length",),
    "--max_predictions_per_seq": ("--max_predictions_per_seq",),
    "--fp16": ("--precision", "--use_fp16"),
    "--bf16": ("--precision",),
    "--amp": ("--precision",),
    "--seed": ("--random_seed",),
    "--input_file": ("--data_dir", "--train_file"),
    "--train_file": ("--train_data_dir", "--data_dir"),
    "--validation_file": ("--predict_file", "--eval_data_dir"),
    "--dataset_name": ("--train_file", "--data_dir"),
    "--nproc_per_node": ("--gpu_num_per_node",),
    "--num_gpus": ("--gpu_num_per_node",),
    "--nnodes": ("--node_num",),
    "--threads": ("--num_threads",),
    "--dropout": ("--hidden_dropout_prob",),
}


def suggest(flag: str, known: list[str]) -> list[str]:
    """The command's flags an unknown `flag` probably means: its other names (ALIASES), else the closest spelling."""
    named = [k for k in ALIASES.get(flag, ()) if k in known]
    if named:
        return named[:2]
    return difflib.get_close_matches(flag, known, n=1, cutoff=0.75)
