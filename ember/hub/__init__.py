"""Model hubs: where a model id is downloaded from (Hugging Face, ModelScope), and where a finished model is
uploaded with its generated model card. Below `models` (which resolves ids through it) and above `config`."""
