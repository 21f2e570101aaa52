"""Read training data in its source format, convert it to canonical records, tokenize and batch it."""
