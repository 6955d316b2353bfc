"""The finetune stage: a base model + training data -> a fine-tuned model folder.

``trainer`` is the stage (``finetune``: sentence-transformers' trainer with NVIDIA's group loss, the LoRA
merge); its parts are the losses' in-batch negatives (``inbatch``), teacher distillation (``distill``), the
general-text anchor (``anchor``) and the memory check run before training (``train_memory``).
"""

from embedforge.finetune.trainer import finetune

__all__ = ["finetune"]
