"""Models on disk: the canonical weight names and safetensors I/O (weights.py), checkpoint folders with
their manifest (checkpoint.py), LoRA adapter folders (adapter_checkpoint.py), what a run was started
with (run_identity.py); and the exchange formats: Hugging Face Llama folders (hf.py), PEFT adapters
(peft_adapters.py), model folders pnlm runs as they are (model_folder.py)."""
