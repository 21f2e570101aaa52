"""Ship a fine-tune: export a run as a merged model or a PEFT adapter, after a parity check.

export.py writes the directory (temp dir, then rename), parity.py checks that the written files
answer exactly as the run's model does, model_card.py writes the README.md that records where
the model came from, and commands.py is the `tuneforge export` command's parser and entry point.
"""
