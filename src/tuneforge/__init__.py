"""tuneforge: take a pretrained language model and a dataset, come out with a better model for a job."""

__version__ = "0.1.0"
