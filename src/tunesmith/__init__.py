"""tunesmith: fine-tune language models on your own data, end to end, and prove that it helped."""

import logging
import os

__version__ = "0.1.0"

# peft imports torchao (tunesmith's int8 export) whenever it is installed; on a CPU torchao then logs that its
# GPU kernels did not load, and torch that torchao registers enums the old way: notices for torchao's authors.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)

# transformers' save_pretrained imports DeepSpeed whenever it is installed (accelerate checks for its engine), and on a
# machine without a GPU DeepSpeed then warns that it "was unable to detect" one: a notice for nobody, in every run.
logging.getLogger("DeepSpeed").addFilter(lambda record: "Setting accelerator to CPU" not in record.getMessage())

# oneDNN keeps every CPU matmul it has built, up to 1,024, each with its own buffers; batches of varying lengths
# build new ones all through training, and on a 2-core Xeon with AMX-BF16 they held about 1 GB of a LoRA run's
# 4.5 GB peak. 64 kept the speed (492 vs 483 tokens/s) at 3,546 MB (benchmarks/sft_levers.py); oneDNN reads this
# when it builds its first primitive, so it counts where tunesmith is imported first. A value the user set stays.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
