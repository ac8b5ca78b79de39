"""`ember export`: merge a run into a standalone model directory, or write a GGUF file."""
