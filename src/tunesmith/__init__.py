"""tunesmith: fine-tune language models on your own data, end to end, and prove that it helped."""

import logging

__version__ = "0.1.0"

# peft imports torchao (tunesmith's int8 export) whenever it is installed; on a CPU torchao then logs that its
# GPU kernels did not load, and torch that torchao registers enums the old way: notices for torchao's authors.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)

# transformers' save_pretrained imports DeepSpeed whenever it is installed (accelerate checks for its engine), and on a
# machine without a GPU DeepSpeed then warns that it "was unable to detect" one: a notice for nobody, in every run.
logging.getLogger("DeepSpeed").addFilter(lambda record: "Setting accelerator to CPU" not in record.getMessage())
