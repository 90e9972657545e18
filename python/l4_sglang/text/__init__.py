"""Text and token ids, shared by the router and the emulated worker (neither owns it).

builtin.py   the built-in deterministic tokenizer (arithmetic vocabulary, Llama 3's size)
tokens.py    the `Tokenizer` interface over it and over a model's `tokenizer.json`,
             incremental decoding, stop-string trimming
"""
