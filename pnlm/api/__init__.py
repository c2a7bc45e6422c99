"""The workflow as functions (re-exported by `pnlm`): data (tokenizer, stores, clusters), models (init,
instantiate, fuse, Hugging Face), training (pretrain, finetune, distill, evaluate)."""
