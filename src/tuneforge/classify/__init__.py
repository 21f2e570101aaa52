"""`task: classify`: a classification head on an encoder or decoder, trained on text + label records."""
